"""Where a budgeted read's time goes, call by call: cProfile over pyrcedge.Llama.eval of the
first 4 of the 1k needle prompts (eval niah's, seed 0), after a warm-up read, for each cache
named; prints the CPU seconds, the probe's passes and tokens, and the functions by own time
(llama_decode's calls among them). For docs/probe.md's "where the time goes".

    .venv/bin/python bench/read_calls.py MODEL SHARE CACHE...    # qwen2.5-coder-0.5b 12.5% a2sf default
"""

from __future__ import annotations

import cProfile
import pstats
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "bench"))

from probe_cost import open_cache  # noqa: E402

from pyrcedge.evaluation.cli import tokenizer  # noqa: E402
from pyrcedge.evaluation.niah import make_needles  # noqa: E402


def main() -> None:
    model, share, caches = sys.argv[1], sys.argv[2], sys.argv[3:]
    tok = tokenizer(model)
    needles = make_needles(4, 1024, [0.1, 0.3, 0.5, 0.7, 0.9],
                           lambda t: len(tok.tokenize(t.encode("utf-8"), False, False)), 0)
    for cache in caches:
        llm = open_cache(model, cache, share, 1024, 1)
        prompts = [llm.tokenize(nd.prompt.encode("utf-8"), add_bos=True, special=False)
                   for nd in needles]
        llm.reset()
        llm.eval(prompts[0])            # warm-up
        profile, cpu = cProfile.Profile(), 0.0
        for tokens in prompts:
            llm.reset()
            c0 = time.process_time()
            profile.enable()
            llm.eval(tokens)
            profile.disable()
            cpu += time.process_time() - c0
        st = llm.kv_stats()
        print(f"== {cache}@{share}: CPU {cpu:.2f} s, probe passes {st.probe_passes}, "
              f"probe tokens {st.probe_tokens}")
        pstats.Stats(profile).sort_stats("tottime").print_stats(18)
        llm.close()


if __name__ == "__main__":
    main()
