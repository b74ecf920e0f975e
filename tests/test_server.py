"""`pyrcedge serve`, exercised with the official openai client over loopback."""

from __future__ import annotations

import concurrent.futures as cf
import json
import urllib.error
import urllib.request

import openai
import pytest
from conftest import serving

BUDGET = 256


@pytest.fixture(scope="module")
def server():
    with serving("--budget", str(BUDGET), "--threads", "2", "--alias", "smol") as running:
        yield running


@pytest.fixture
def client(server):
    return openai.OpenAI(base_url=server[0], api_key="unused", max_retries=0, timeout=600)


def post(base: str, path: str, body: bytes) -> tuple[int, dict]:
    req = urllib.request.Request(base + path, data=body, headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=120) as r:
            return r.status, json.loads(r.read())
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read())


def test_models_lists_the_alias(client):
    assert [m.id for m in client.models.list().data] == ["smol"]


def test_chat_completion_plain_and_streaming(client):
    messages = [{"role": "user", "content": "Name three colours."}]
    r = client.chat.completions.create(model="smol", messages=messages, max_tokens=16, temperature=0)
    text = r.choices[0].message.content
    assert text and r.usage.completion_tokens > 0
    chunks = client.chat.completions.create(model="smol", messages=messages, max_tokens=16,
                                            temperature=0, stream=True)
    streamed = "".join(c.choices[0].delta.content or "" for c in chunks)
    assert streamed == text


def test_text_completion(client):
    r = client.completions.create(model="smol", prompt="The capital of France is", max_tokens=8,
                                  temperature=0)
    assert r.choices[0].text and r.choices[0].finish_reason in ("stop", "length")


def test_a_conversation_longer_than_the_budget_never_fails(client):
    """Stock llama-cpp-python with n_ctx=256 fails such a chat at its fourth turn."""
    messages = [{"role": "system", "content": "You are a helpful assistant."}]
    prompt_tokens, kv = [], []
    for i in range(8):
        messages.append({"role": "user", "content": f"Tell me one fact about the number {i + 1}."})
        r = client.chat.completions.create(model="smol", messages=messages, max_tokens=40,
                                           temperature=0)
        messages.append({"role": "assistant", "content": r.choices[0].message.content})
        prompt_tokens.append(r.usage.prompt_tokens)
        kv.append(r.usage.kv_cache)         # what the budget did: pyrcedge's usage field
    assert prompt_tokens[-1] > BUDGET      # the history outgrew the cache: it evicted
    assert all(k["budget_cells"] == BUDGET and 0 < k["cached_tokens"] <= BUDGET for k in kv)
    assert kv[0]["evicted_tokens"] == 0 and sum(k["evicted_tokens"] for k in kv) > 0
    assert kv[-1]["history_tokens"] > BUDGET


def test_a_streamed_completion_reports_the_budget_when_asked(client):
    doc = " ".join(f"Item {i} is a {['red', 'green', 'blue'][i % 3]} box." for i in range(60))
    chunks = list(client.completions.create(model="smol", prompt=doc, max_tokens=4,
                                            temperature=0, stream=True,
                                            stream_options={"include_usage": True}))
    last = chunks[-1]
    assert last.choices == [] and last.usage.kv_cache["evicted_tokens"] > 0
    assert all(c.choices for c in chunks[:-1]) and last.id == chunks[0].id
    plain = list(client.completions.create(model="smol", prompt="Hello", max_tokens=4,
                                           temperature=0, stream=True))
    assert all(c.choices for c in plain)        # no usage chunk unless the client asks


def test_a_prompt_longer_than_the_budget_is_read_through_it(client):
    doc = " ".join(f"Item {i} is a {['red', 'green', 'blue'][i % 3]} box." for i in range(120))
    r = client.completions.create(model="smol", prompt=doc + " The last item is", max_tokens=8,
                                  temperature=0)
    assert r.usage.prompt_tokens > 2 * BUDGET and r.choices[0].finish_reason in ("stop", "length")


@pytest.mark.parametrize("body,status", [
    (b"{not json", 400),
    (b"[1, 2]", 400),
    (b'{"messages": "hello"}', 400),
    (b'{"messages": [{"role": "user", "content": "hi"}], "temperature": "hot"}', 400),
    (b'{"messages": [{"role": "user", "content": "hi"}], "max_tokens": "many"}', 400),
    (b'{"prompt": "hi", "max_tokens": 4, "logprobs": 2}', 400),   # needs logits_all
])
def test_malformed_requests_get_a_4xx_json_error_and_serving_goes_on(server, client, body, status):
    path = "/completions" if b"prompt" in body else "/chat/completions"
    code, reply = post(server[0], path, body)
    assert code == status and reply["error"]["message"]
    r = client.chat.completions.create(model="smol", messages=[{"role": "user", "content": "Hi"}],
                                       max_tokens=4, temperature=0)
    assert r.choices[0].finish_reason in ("stop", "length")
    assert server[1].poll() is None


def test_eight_clients_fifty_requests_each_all_answered(client):
    """Requests queue behind the one model: none is dropped or interrupted."""

    def one_client(i: int) -> list[str]:
        out = []
        for j in range(50):
            stream = j % 5 == 0
            messages = [{"role": "system", "content": "Answer in one word."},
                        {"role": "user", "content": f"Client {i}, request {j}: name a fruit."}]
            r = client.chat.completions.create(model="smol", messages=messages, max_tokens=3,
                                               temperature=0, stream=stream)
            if stream:
                reasons = [c.choices[0].finish_reason for c in r]
                out.append(reasons[-1])
            else:
                out.append(r.choices[0].finish_reason)
        return out

    with cf.ThreadPoolExecutor(8) as ex:
        results = list(ex.map(one_client, range(8)))
    assert sum(len(r) for r in results) == 400
    assert all(reason in ("stop", "length") for r in results for reason in r)


def test_the_llama_cpp_server_names_pyrcedge_reaches_into_still_exist():
    """pyrcedge.apps.server_compat replaces llama_cpp.server's model proxy and wraps its error
    mapper: an upstream rename must fail here, not in a user's server."""
    import importlib

    from pyrcedge.apps.server_compat import COMPAT_NAMES

    for module, attr in COMPAT_NAMES:
        obj = importlib.import_module(module)
        for part in attr.split("."):
            assert hasattr(obj, part), f"llama_cpp.server changed: {module}.{attr} is gone"
            obj = getattr(obj, part)
