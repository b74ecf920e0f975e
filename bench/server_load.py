"""Load on `pyrcedge serve`: N concurrent openai clients x M chat requests on loopback.

Writes docs/bench/server-load.{md,json}: answered requests, errors, throughput, latency
percentiles, and the server's peak RSS (sampled every 0.2 s).

    .venv/bin/python bench/server_load.py [--clients 8] [--requests 50] [--budget 256]
    .venv/bin/python bench/server_load.py --mode conversation --requests 10 [--prompt-cache 512MiB]

--mode independent: every request is a system and a user message; --mode conversation: each
client holds one conversation and sends all of it with every request (it outgrows the budget).
--hostile: one more client sends, until the others are done, the requests of issue 16 that held
the queue or killed the server: no max_tokens with min_tokens 10**9 (generation runs to the
server's cap), max_tokens = min_tokens = 10**9, a 20 MB prompt, a grammar that does not parse,
a logit_bias for token 10**9; the report gives what each got.
"""

from __future__ import annotations

import argparse
import concurrent.futures as cf
import json
import shlex
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path

import numpy as np
import openai
import psutil

from common import command, machine

OUT = Path(__file__).resolve().parent.parent / "docs" / "bench"


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--clients", type=int, default=8)
    ap.add_argument("--requests", type=int, default=50)
    ap.add_argument("--budget", default="256")  # tokens or a size
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--max-tokens", type=int, default=8)
    ap.add_argument("--name", default="server-load")
    ap.add_argument("--note", default="", help="a line for the report (e.g. what else ran)")
    ap.add_argument("--mode", choices=("independent", "conversation"), default="independent")
    ap.add_argument("--prompt-cache", default="0", help="pyrcedge serve --prompt-cache")
    ap.add_argument("--hostile", action="store_true", help="one more client sends hostile requests")
    ap.add_argument("--serve-args", default="", help="more pyrcedge serve options, one string "
                    "('--max-tokens 256 --request-timeout 10')")
    args = ap.parse_args()

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    proc = subprocess.Popen([sys.executable, "-m", "pyrcedge", "serve", "--port", str(port),
                             "--budget", args.budget, "--threads", str(args.threads),
                             "--prompt-cache", args.prompt_cache, *shlex.split(args.serve_args)])
    base = f"http://127.0.0.1:{port}/v1"
    for _ in range(600):
        try:
            urllib.request.urlopen(f"{base}/models", timeout=5).read()
            break
        except OSError:
            time.sleep(0.2)
    peak = [0]
    stop = threading.Event()

    def sample() -> None:
        p = psutil.Process(proc.pid)
        while not stop.is_set():
            peak[0] = max(peak[0], p.memory_info().rss)
            time.sleep(0.2)

    threading.Thread(target=sample, daemon=True).start()
    client = openai.OpenAI(base_url=base, api_key="unused", max_retries=0, timeout=3600)

    fed: list[int] = []   # prompt tokens of every request (usage)

    def one_client(i: int) -> list[tuple[float, str]]:
        out = []
        chat = [{"role": "system", "content": "You are a concise assistant."}]
        for j in range(args.requests):
            ask = {"role": "user", "content": f"Request {j} of client {i}: say something about "
                                              f"the number {j}."}
            messages = chat + [ask] if args.mode == "conversation" else [chat[0], ask]
            t0 = time.perf_counter()
            reply = ""
            try:
                if j % 5 == 0:     # every fifth request streams
                    chunks = list(client.chat.completions.create(
                        model="m", messages=messages, max_tokens=args.max_tokens,
                        temperature=0.7, stream=True))
                    reply = "".join(c.choices[0].delta.content or "" for c in chunks)
                    status = chunks[-1].choices[0].finish_reason or "no finish"
                else:
                    r = client.chat.completions.create(model="m", messages=messages,
                                                       max_tokens=args.max_tokens, temperature=0.7)
                    reply, status = r.choices[0].message.content or "", r.choices[0].finish_reason
                    fed.append(r.usage.prompt_tokens)
            except openai.APIError as e:
                status = f"error: {e}"
            out.append((time.perf_counter() - t0, status))
            if args.mode == "conversation":
                chat += [ask, {"role": "assistant", "content": reply}]
        return out

    done = threading.Event()
    hostile: list[tuple[str, float, str]] = []

    def hostile_client() -> None:
        hi = [{"role": "user", "content": "Tell me a long story."}]
        kinds = [("never-ending", {"messages": hi, "min_tokens": 10**9}),
                 ("max_tokens 10**9", {"messages": hi, "max_tokens": 10**9, "min_tokens": 10**9}),
                 ("20 MB prompt", {"messages": [{"role": "user", "content": "word " * 4_000_000}]}),
                 ("bad grammar", {"messages": hi, "grammar": 'root ::= ( "x" '}),
                 ("logit_bias 10**9", {"messages": hi, "logit_bias": {"1000000000": 5}})]
        while not done.is_set():
            for kind, body in kinds:
                if done.is_set():
                    break
                req = urllib.request.Request(f"{base}/chat/completions", data=json.dumps(body).encode(),
                                             headers={"Content-Type": "application/json"})
                t = time.perf_counter()
                try:
                    with urllib.request.urlopen(req, timeout=3600) as r:
                        got = str(r.status) + " " + json.loads(r.read())["choices"][0]["finish_reason"]
                except urllib.error.HTTPError as e:
                    got = str(e.code)
                except OSError as e:
                    got = f"error {e}"
                hostile.append((kind, time.perf_counter() - t, got))

    t0 = time.perf_counter()
    if args.hostile:
        threading.Thread(target=hostile_client, daemon=True).start()
    with cf.ThreadPoolExecutor(args.clients) as ex:
        results = [x for r in ex.map(one_client, range(args.clients)) for x in r]
    wall = time.perf_counter() - t0
    done.set()
    alive = proc.poll() is None
    stop.set()
    proc.terminate()
    proc.wait(timeout=30)

    lat = np.array([r[0] for r in results])
    errors = [r[1] for r in results if r[1].startswith("error")]
    record = {"command": command(), "machine": machine(), "clients": args.clients,
              "requests_per_client": args.requests, "budget": args.budget,
              "threads": args.threads, "max_tokens": args.max_tokens, "mode": args.mode,
              "prompt_cache": args.prompt_cache, "serve_args": args.serve_args,
              "prompt_tokens_max": max(fed, default=0),
              "answered": len(results) - len(errors), "errors": len(errors),
              "error_samples": errors[:3], "wall_s": round(wall, 1),
              "requests_per_s": round(len(results) / wall, 2),
              "latency_s": {q: round(float(np.percentile(lat, p)), 2)
                            for q, p in (("p50", 50), ("p95", 95), ("max", 100))},
              "server_peak_rss_mib": round(peak[0] / 2**20, 1),
              "hostile": {kind: {"sent": sum(1 for h in hostile if h[0] == kind),
                                 "answers": sorted({h[2] for h in hostile if h[0] == kind}),
                                 "seconds_max": round(max((h[1] for h in hostile if h[0] == kind),
                                                          default=0.0), 1)}
                          for kind in dict.fromkeys(h[0] for h in hostile)},
              "server_alive_at_end": alive}
    OUT.mkdir(parents=True, exist_ok=True)
    (OUT / f"{args.name}.json").write_text(json.dumps(record, indent=2) + "\n")
    L = record["latency_s"]
    (OUT / f"{args.name}.md").write_text(f"""# Load on pyrcedge serve

Command: `{record['command']}`

Machine: {record['machine']['cpu']}, {record['machine']['cores']} cores.

{args.clients} concurrent clients (the official openai client, one thread each), each sending
{args.requests} chat requests one after the other ({"a system and a user message" if args.mode == "independent" else "the whole conversation so far: it reaches " + str(max(fed, default=0)) + " prompt tokens"};
every fifth request streams), max_tokens {args.max_tokens}, temperature 0.7, KV budget
{args.budget} tokens, prompt cache {args.prompt_cache} (`pyrcedge serve --prompt-cache`){", serve options `" + args.serve_args + "`" if args.serve_args else ""}. The
server has one model, so requests queue and run one at a time.

| answered | errors | wall | requests/s | latency p50 | p95 | max | server peak RSS |
|---|---|---|---|---|---|---|---|
| {record['answered']} / {len(results)} | {record['errors']} | {record['wall_s']} s | {record['requests_per_s']} | {L['p50']} s | {L['p95']} s | {L['max']} s | {record['server_peak_rss_mib']} MiB |

Latency includes the wait in the queue behind the other clients' requests (up to
{args.clients - 1} of them).
{hostile_table(record["hostile"]) if args.hostile else ""}
{args.note}
""")
    print(json.dumps(record))


def hostile_table(hostile: dict) -> str:
    rows = "".join(f"| {k} | {v['sent']} | {', '.join(v['answers'])} | {v['seconds_max']} s |\n"
                   for k, v in hostile.items())
    return ("\nMeanwhile one more client sent hostile requests, one after the other, until the "
            "others were done:\n\n| request | sent | answered | longest |\n|---|---|---|---|\n"
            + rows)


if __name__ == "__main__":
    main()
