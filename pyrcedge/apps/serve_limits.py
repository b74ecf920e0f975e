"""What one request may ask of `pyrcedge serve`, checked before it is queued.

One model serves one request at a time, so a request is also a claim on everyone else's time.
Stock llama_cpp.server is bounded by its context: generation ends when n_ctx fills and a prompt
longer than n_ctx is refused. Inside a budget nothing fills, so without caps one request of
max_tokens = min_tokens = 10**9, or a 20 MB prompt, would hold the queue for ever. The caps here
bound both; a request that asks for more, or for what the server cannot honour (n != 1, no
messages, a negative max_tokens on chat, a grammar that does not parse, a logit_bias outside
the vocabulary), gets a 400 before it waits for the model.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from ..errors import GenerationInputError
from ..llama import inputs

CHAT, COMPLETIONS = "/v1/chat/completions", "/v1/completions"


@dataclass(frozen=True)
class RequestLimits:
    """Per-request caps (pyrcedge serve --max-tokens, --max-prompt-tokens, --max-body,
    --request-timeout)."""

    # tokens one request may generate; what a chat without max_tokens gets, or one with
    # max_tokens null or 0 ("until the context fills" upstream, which a budget never does)
    max_tokens: int = 2048
    # tokens of the prompt: of a completion's prompt, or of the text of a chat's messages
    max_prompt_tokens: int = 16384
    # bytes of a request body (answered 413 as soon as more arrives)
    max_body_bytes: int = 2 * 2**20
    # seconds a request may hold the model (its prompt read and its answer generated); past
    # them generation ends as max_tokens ends it (finish_reason "length")
    request_seconds: float = 120.0


class RequestRefused(Exception):
    """A request the server refuses (answered 400 with an OpenAI-style error)."""

    def __init__(self, message: str, param: str | None = None) -> None:
        super().__init__(message)
        self.param = param


def check_request(path: str, body: dict[str, Any], limits: RequestLimits,
                  llm: Any) -> dict[str, Any]:
    """The body to serve (max_tokens set within the cap), or RequestRefused."""
    if path not in (CHAT, COMPLETIONS):
        return body
    chat = path == CHAT
    body = dict(body)
    if chat and (not isinstance(body.get("messages"), list) or not body["messages"]):
        raise RequestRefused("messages is required: a non-empty list of chat messages",
                             "messages")
    for key in ("n",) if chat else ("n", "best_of"):
        if body.get(key) not in (None, 1):
            raise RequestRefused(f"{key} = {body[key]!r}: this server returns one choice per "
                                 "request (n = 1)", key)
    if chat or "max_tokens" in body:    # a completion without it gets upstream's 16
        body["max_tokens"] = _max_tokens(body.get("max_tokens"), chat, limits)
    _check_inputs(body, chat, llm)
    n = prompt_tokens_beyond(body, chat, limits.max_prompt_tokens, llm)
    if n is not None:
        raise RequestRefused(f"the prompt has {n} tokens, more than this server's cap of "
                             f"{limits.max_prompt_tokens} (pyrcedge serve --max-prompt-tokens)",
                             "messages" if chat else "prompt")
    return body


def _check_inputs(body: dict[str, Any], chat: bool, llm: Any) -> None:
    """What llama.cpp would crash on (pyrcedge.llama.inputs), refused before the queue."""
    vocab, param = llm.n_vocab(), "grammar"
    try:
        if isinstance(body.get("grammar"), str):
            inputs.check_grammar(llm._model.vocab, body["grammar"])
        param = "logit_bias"
        if body.get("logit_bias_type") != "tokens" and isinstance(body.get("logit_bias"), dict):
            inputs.check_logit_bias(body["logit_bias"], vocab)
        param = "prompt"
        for ids in [] if chat else _token_prompts(body.get("prompt")):
            inputs.check_token_ids(ids, vocab, "the prompt")
    except GenerationInputError as e:
        raise RequestRefused(str(e), param) from None


def _max_tokens(value: Any, chat: bool, limits: RequestLimits) -> Any:
    cap = limits.max_tokens
    if value is None:
        return cap
    if isinstance(value, bool) or not isinstance(value, int):
        return value        # llama_cpp.server's validation answers it (400)
    if chat and value < 0:
        raise RequestRefused(f"max_tokens must be >= 0, got {value}", "max_tokens")
    if value <= 0:
        return cap
    if value > cap:
        raise RequestRefused(f"max_tokens = {value} is more than this server's cap of {cap} "
                             "tokens per request (pyrcedge serve --max-tokens)", "max_tokens")
    return value


def _token_prompts(prompt: Any) -> list[list[Any]]:
    """A completion prompt's lists of token ids (a prompt of ids, or a list of them)."""
    if not isinstance(prompt, list) or not prompt:
        return []
    if all(isinstance(p, list) for p in prompt):
        return prompt
    return [prompt] if not any(isinstance(p, str) for p in prompt) else []


def _texts(body: dict[str, Any], chat: bool) -> list[str]:
    if not chat:
        prompt = body.get("prompt")
        items = prompt if isinstance(prompt, list) else [prompt]
        return [p for p in items if isinstance(p, str)] + [s for s in [body.get("suffix")]
                                                           if isinstance(s, str)]
    out = []
    for m in body.get("messages") or []:
        content = m.get("content") if isinstance(m, dict) else None
        parts = content if isinstance(content, list) else [content]
        for p in parts:
            text = p.get("text") if isinstance(p, dict) else p
            if isinstance(text, str):
                out.append(text)
    return out


def prompt_tokens_beyond(body: dict[str, Any], chat: bool, cap: int, llm: Any) -> int | None:
    """The prompt's tokens when they are more than cap, else None (a chat's: of its messages'
    text, the template's tokens aside). Text of fewer bytes than the cap is not tokenized: no
    token is shorter than a byte (one more per text for a tokenizer's leading space)."""
    texts = _texts(body, chat)
    ids = sum(len(p) for p in ([] if chat else _token_prompts(body.get("prompt"))))
    if sum(len(t.encode("utf-8")) + 1 for t in texts) + ids <= cap:
        return None
    n = ids + sum(len(llm.tokenize(t.encode("utf-8"), add_bos=False, special=False))
                  for t in texts)
    return n if n > cap else None


def encode(body: dict[str, Any]) -> bytes:
    return json.dumps(body).encode("utf-8")
