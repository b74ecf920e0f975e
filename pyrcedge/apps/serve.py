"""`pyrcedge serve`: llama-cpp-python's OpenAI-compatible server on a budgeted pyrcedge.Llama.

The routes, request types, streaming and error replies are llama_cpp.server's own
(/v1/chat/completions, /v1/completions, /v1/models, ...), so clients that work with
`python -m llama_cpp.server` work here. What changes is the model behind them: a pyrcedge.Llama
inside a fixed KV budget, so a conversation longer than the cache evicts instead of failing
with "Requested tokens exceed context window". One model serves one request at a time;
concurrent requests wait in llama_cpp.server's lock (queued, never interrupted: the server's
interrupt_requests setting, on by default upstream, is turned off). Since nothing fills inside a
budget, each request is capped (serve_limits.RequestLimits: generated tokens, prompt tokens,
body bytes), so that one request cannot hold the queue for ever.
"""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path
from typing import Any, Awaitable, Callable

import llama_cpp

from ..assets.gguf import check_gguf, resolve_model
from ..errors import PyrcedgeError
from . import server_compat, server_usage
from .options import (
    budget_kwargs,
    budget_options,
    max_tokens_option,
    model_options,
    open_llama,
    positive_int,
    seconds,
    size,
)
from .serve_limits import CHAT, COMPLETIONS, RequestLimits, RequestRefused, check_request, encode

SERVER_EXTRA = "pip install 'pyrcedge[server]'"
# a body over the limit is read on up to this many times the limit before the 413 goes out
DRAIN_FACTOR = 32


def create_app(model: str | os.PathLike[str] | None, alias: str | None = None,
               llama_kwargs: dict[str, Any] | None = None, prompt_cache_bytes: int = 0,
               limits: RequestLimits | None = None) -> Any:
    """A FastAPI app serving `model` through a budgeted pyrcedge.Llama (loaded now, so that a
    bad model or budget fails here rather than at the first request). prompt_cache_bytes > 0
    keeps the states of recent conversations (llama_cpp.LlamaRAMCache of pyrcedge states).
    limits: what one request may ask (RequestLimits' defaults when None)."""
    try:
        import llama_cpp.server.app as app_module
        from llama_cpp.server.settings import ModelSettings, ServerSettings
    except ImportError as e:
        raise PyrcedgeError(f"pyrcedge serve needs llama-cpp-python's server dependencies "
                            f"({e.name} is missing): {SERVER_EXTRA}") from e

    path = resolve_model(model)
    check_gguf(path)
    llm = open_llama(path, **(llama_kwargs or {}))
    if prompt_cache_bytes > 0:
        llm.set_cache(llama_cpp.LlamaRAMCache(capacity_bytes=prompt_cache_bytes))
    name = alias or Path(path).name
    limits = limits or RequestLimits()
    with server_compat.serving(llm, on_request=lambda: llm.limit_generation(limits.request_seconds)):
        app = app_module.create_app(
            server_settings=ServerSettings(interrupt_requests=False),
            model_settings=[ModelSettings(model=str(path), model_alias=name)])
    app.title = "pyrcedge: llama.cpp inside a KV budget (OpenAI-compatible API)"
    server_compat.map_client_errors(client_error)
    app.add_middleware(server_usage.KVUsageReporter, llm=llm)
    app.add_middleware(JSONBodyGuard, limits=limits, llm=llm)
    return app


def invalid_request(message: str, param: str | None = None) -> dict[str, Any]:
    """An OpenAI-style error body for a request the client must fix."""
    return {"error": {"message": message, "type": "invalid_request_error", "param": param,
                      "code": None}}


class JSONBodyGuard:
    """ASGI middleware: a POST whose body is not a JSON object gets a 400 JSON error, one larger
    than the limits allow a 413, and a completion request the limits refuse
    (pyrcedge.apps.serve_limits) a 400, before it is queued for the model.

    llama_cpp.server's route error handler re-reads the body as JSON while handling an error,
    so a body that is not JSON made it fail with a plain-text 500."""

    def __init__(self, app: Any, limits: RequestLimits | None = None, llm: Any = None) -> None:
        self.app = app
        self.limits = limits or RequestLimits()
        self.llm = llm

    async def __call__(self, scope: dict[str, Any], receive: Callable[[], Awaitable[dict[str, Any]]],
                       send: Callable[[dict[str, Any]], Awaitable[None]]) -> None:
        if scope["type"] != "http" or scope["method"] != "POST":
            await self.app(scope, receive, send)
            return
        chunks, more, size = [], True, 0
        while more:
            message = await receive()
            if message["type"] == "http.disconnect":
                return
            chunks.append(message.get("body", b""))
            size += len(chunks[-1])
            more = message.get("more_body", False)
            if size > self.limits.max_body_bytes:
                # read the rest (up to a bound) and drop it, so that the client, still sending,
                # reads the 413 rather than a connection reset
                while more and size <= DRAIN_FACTOR * self.limits.max_body_bytes:
                    message = await receive()
                    size += len(message.get("body", b""))
                    more = message["type"] != "http.disconnect" and message.get("more_body", False)
                await _reply(scope, receive, send, 413, invalid_request(
                    f"the request body is larger than this server's limit of "
                    f"{self.limits.max_body_bytes} bytes (pyrcedge serve --max-body)"))
                return
        body = b"".join(chunks)
        try:
            parsed = json.loads(body)
        except ValueError:
            parsed = None
        if not isinstance(parsed, dict):
            await _reply(scope, receive, send, 400,
                         invalid_request("the request body must be a JSON object"))
            return
        if self.llm is not None and scope["path"] in (CHAT, COMPLETIONS):
            try:
                body = encode(check_request(scope["path"], parsed, self.limits, self.llm))
            except RequestRefused as e:
                await _reply(scope, receive, send, 400, invalid_request(str(e), e.param))
                return
            scope = dict(scope, headers=[(k, v) for k, v in scope["headers"]
                                         if k.lower() != b"content-length"]
                         + [(b"content-length", str(len(body)).encode())])
        replayed = False

        async def replay() -> dict[str, Any]:
            nonlocal replayed
            if replayed:
                return await receive()
            replayed = True
            return {"type": "http.request", "body": body, "more_body": False}

        await self.app(scope, replay, send)


async def _reply(scope: dict[str, Any], receive: Any, send: Any, status: int,
                 content: dict[str, Any]) -> None:
    from starlette.responses import JSONResponse

    await JSONResponse(content, status_code=status)(scope, receive, send)


def client_error(error: Exception) -> tuple[int, Any] | None:
    """llama_cpp.server answers every exception that no pattern of its own matches with a 500,
    request validation errors and invalid arguments included. Those are the client's: 400."""
    from fastapi.exceptions import RequestValidationError
    from llama_cpp.server.errors import ErrorResponse

    if isinstance(error, RequestValidationError):
        first = error.errors()[0] if error.errors() else {}
        where = ".".join(str(x) for x in first.get("loc", ()) if x != "body") or None
        body = invalid_request(f"invalid request: {where}: {first.get('msg', error)}", where)
        return 400, ErrorResponse(**body["error"])  # type: ignore[typeddict-item]
    if isinstance(error, ValueError):
        return 400, ErrorResponse(**invalid_request(str(error))["error"])  # type: ignore[typeddict-item]
    return None


def serve(model: str | os.PathLike[str] | None, host: str = "127.0.0.1", port: int = 8000,
          alias: str | None = None, llama_kwargs: dict[str, Any] | None = None,
          prompt_cache_bytes: int = 0, limits: RequestLimits | None = None) -> None:
    try:
        import uvicorn
    except ImportError as e:
        raise PyrcedgeError(f"pyrcedge serve needs uvicorn: {SERVER_EXTRA}") from e
    app = create_app(model, alias, llama_kwargs, prompt_cache_bytes, limits)
    name = alias or resolve_model(model).name
    print(f"pyrcedge serve: http://{host}:{port}/v1, model {name}", flush=True)
    uvicorn.run(app, host=host, port=port, log_level="warning")


def cmd_serve(args: argparse.Namespace) -> int:
    limits = RequestLimits(max_tokens=args.max_tokens, max_prompt_tokens=args.max_prompt_tokens,
                           max_body_bytes=args.max_body, request_seconds=args.request_timeout)
    serve(args.model, host=args.host, port=args.port, alias=args.alias,
          prompt_cache_bytes=args.prompt_cache, limits=limits,
          llama_kwargs={**budget_kwargs(args), "n_threads": args.threads,
                        "n_threads_batch": args.threads, "flash_attn": True, "seed": args.seed})
    return 0


def register(sub: Any) -> None:
    srv = sub.add_parser("serve", help="an OpenAI-compatible HTTP server on the budgeted cache",
                         parents=[model_options(), budget_options(), max_tokens_option(
                             RequestLimits.max_tokens, help="the most tokens one request may "
                             "generate, and what a chat without max_tokens gets (default "
                             "%(default)s; a request asking for more gets a 400)")])
    srv.add_argument("--alias", help="the model's name in /v1/models (default: the file name)")
    srv.add_argument("--host", default="127.0.0.1")
    srv.add_argument("--port", type=int, default=8000)
    srv.add_argument("--seed", type=int, default=0)
    srv.add_argument("--prompt-cache", type=size, default=0, metavar="SIZE",
                     help="keep each conversation's evicted cache (256MiB, 1GB; default 0: off), "
                          "so that interleaved conversations continue instead of re-reading")
    srv.add_argument("--max-prompt-tokens", type=positive_int,
                     default=RequestLimits.max_prompt_tokens,
                     help="the most prompt tokens one request may send (default %(default)s)")
    srv.add_argument("--max-body", type=size, default=RequestLimits.max_body_bytes, metavar="SIZE",
                     help="the largest request body (default %(default)s bytes: 2MiB)")
    srv.add_argument("--request-timeout", type=seconds, default=RequestLimits.request_seconds,
                     metavar="SECONDS", help="seconds a request may hold the model; then its "
                     "generation ends as max_tokens ends it (default %(default)s)")
    srv.add_argument("--n-ctx", type=positive_int, default=2048, help=argparse.SUPPRESS)
    srv.set_defaults(func=cmd_serve, budget="64MiB")
