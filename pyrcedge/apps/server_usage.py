"""pyrcedge serve's responses say what the KV budget did: `usage.kv_cache`.

llama_cpp.server serialises a completion through its response model, which keeps only the
fields OpenAI defines, so the `kv_cache` entry pyrcedge.Llama adds to a completion's usage
(pyrcedge/llama/usage.py) would be dropped, and a client could not tell that its conversation
was cut. This ASGI middleware puts it back: into the JSON body of /v1/completions and
/v1/chat/completions, and, for a streamed completion whose request asks for usage
(`stream_options: {"include_usage": true}`, as OpenAI's API has it), in a last chunk before
`data: [DONE]` (choices empty, usage holding kv_cache alone: the shape of OpenAI's usage chunk;
clients that did not ask get no such chunk, since they read choices[0] of every chunk).
Each completion's figures are found by its id, so concurrent requests cannot mix them.
"""

from __future__ import annotations

import json
from typing import Any, Awaitable, Callable

Message = dict[str, Any]
Send = Callable[[Message], Awaitable[None]]
Receive = Callable[[], Awaitable[Message]]

PATHS = ("/v1/completions", "/v1/chat/completions")
DONE = b"data: [DONE]"


def wants_stream_usage(body: bytes) -> bool:
    """Whether a request's JSON body has stream_options.include_usage true."""
    try:
        options = json.loads(body).get("stream_options")
    except (ValueError, AttributeError):
        return False
    return isinstance(options, dict) and options.get("include_usage") is True


class KVUsageReporter:
    """ASGI middleware: adds usage.kv_cache of `llm` (a pyrcedge.Llama) to completions."""

    def __init__(self, app: Any, llm: Any) -> None:
        self.app = app
        self.log = llm.kv_usage_log

    async def __call__(self, scope: dict[str, Any], receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["method"] != "POST" or scope["path"] not in PATHS:
            await self.app(scope, receive, send)
            return
        kind: list[str] = []          # the response's content type, once it starts
        start: list[Message] = []     # a JSON response's start, held until its body is known
        body: list[bytes] = []
        last_id: list[Any] = []       # id, object, model, created of the last streamed chunk
        request: list[bytes] = []

        async def recording_receive() -> Message:
            message = await receive()
            if message["type"] == "http.request":
                request.append(message.get("body", b""))
            return message

        async def reporting_send(message: Message) -> None:
            if message["type"] == "http.response.start":
                types = [v for k, v in message.get("headers", []) if k.lower() == b"content-type"]
                kind.append(types[0].decode("latin-1") if types else "")
                if kind[0].startswith("application/json"):
                    start.append(message)
                    return
                await send(message)
                return
            if message["type"] != "http.response.body" or not kind:
                await send(message)
                return
            if start:
                body.append(message.get("body", b""))
                if message.get("more_body", False):
                    return
                data = self.with_usage(b"".join(body))
                headers = [(k, v) for k, v in start[0].get("headers", [])
                           if k.lower() != b"content-length"]
                headers.append((b"content-length", str(len(data)).encode()))
                await send({**start[0], "headers": headers})
                await send({"type": "http.response.body", "body": data, "more_body": False})
                return
            if kind[0].startswith("text/event-stream") and wants_stream_usage(b"".join(request)):
                message = {**message, "body": self.stream_with_usage(message.get("body", b""),
                                                                     last_id)}
            await send(message)

        await self.app(scope, recording_receive, reporting_send)

    def with_usage(self, data: bytes) -> bytes:
        """A completion's JSON body with usage.kv_cache added (unchanged if not one of ours)."""
        try:
            doc = json.loads(data)
        except ValueError:
            return data
        if not isinstance(doc, dict) or not isinstance(doc.get("id"), str):
            return data
        kv = self.log.pop(doc["id"])
        if kv is None:
            return data
        usage = doc.get("usage")
        doc["usage"] = {**(usage if isinstance(usage, dict) else {}), "kv_cache": kv}
        return json.dumps(doc).encode("utf-8")

    def stream_with_usage(self, data: bytes, last_id: list[Any]) -> bytes:
        """A piece of an event stream, with a usage chunk inserted before `data: [DONE]`."""
        for line in data.splitlines():
            if line.startswith(b"data: {"):
                try:
                    chunk = json.loads(line[len(b"data: "):])
                except ValueError:
                    continue
                if isinstance(chunk, dict) and isinstance(chunk.get("id"), str):
                    last_id[:] = [chunk["id"], chunk.get("object", ""), chunk.get("model", ""),
                                  chunk.get("created", 0)]
        at = data.find(DONE)
        if at < 0 or not last_id:
            return data
        kv = self.log.pop(last_id[0])
        if kv is None:
            return data
        chunk_id, obj, model, created = last_id
        extra = {"id": chunk_id, "object": obj, "created": created, "model": model,
                 "choices": [], "usage": {"kv_cache": kv}}
        sep = b"\r\n" if b"\r\n" in data else b"\n"
        event = b"data: " + json.dumps(extra).encode("utf-8") + sep + sep
        return data[:at] + event + data[at:]
