"""`pyrcedge serve`: llama-cpp-python's OpenAI-compatible server on a budgeted pyrcedge.Llama.

The routes, request types, streaming and error replies are llama_cpp.server's own
(/v1/chat/completions, /v1/completions, /v1/models, ...), so clients that work with
`python -m llama_cpp.server` work here. What changes is the model behind them: a pyrcedge.Llama
inside a fixed KV budget, so a conversation longer than the cache evicts instead of failing
with "Requested tokens exceed context window". One model serves one request at a time;
concurrent requests wait in llama_cpp.server's lock (queued, never interrupted: the server's
interrupt_requests setting, on by default upstream, is turned off).
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
from .options import budget_kwargs, budget_options, model_options, open_llama, positive_int, size

SERVER_EXTRA = "pip install 'pyrcedge[server]'"


def create_app(model: str | os.PathLike[str] | None, alias: str | None = None,
               llama_kwargs: dict[str, Any] | None = None, prompt_cache_bytes: int = 0) -> Any:
    """A FastAPI app serving `model` through a budgeted pyrcedge.Llama (loaded now, so that a
    bad model or budget fails here rather than at the first request). prompt_cache_bytes > 0
    keeps the states of recent conversations (llama_cpp.LlamaRAMCache of pyrcedge states)."""
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
    with server_compat.serving(llm):
        app = app_module.create_app(
            server_settings=ServerSettings(interrupt_requests=False),
            model_settings=[ModelSettings(model=str(path), model_alias=name)])
    app.title = "pyrcedge: llama.cpp inside a KV budget (OpenAI-compatible API)"
    server_compat.map_client_errors(client_error)
    app.add_middleware(server_usage.KVUsageReporter, llm=llm)
    app.add_middleware(JSONBodyGuard)
    return app


def invalid_request(message: str, param: str | None = None) -> dict[str, Any]:
    """An OpenAI-style error body for a request the client must fix."""
    return {"error": {"message": message, "type": "invalid_request_error", "param": param,
                      "code": None}}


class JSONBodyGuard:
    """ASGI middleware: a POST whose body is not a JSON object gets a 400 JSON error.

    llama_cpp.server's route error handler re-reads the body as JSON while handling an error,
    so a body that is not JSON made it fail with a plain-text 500."""

    def __init__(self, app: Any) -> None:
        self.app = app

    async def __call__(self, scope: dict[str, Any], receive: Callable[[], Awaitable[dict[str, Any]]],
                       send: Callable[[dict[str, Any]], Awaitable[None]]) -> None:
        if scope["type"] != "http" or scope["method"] != "POST":
            await self.app(scope, receive, send)
            return
        chunks, more = [], True
        while more:
            message = await receive()
            if message["type"] == "http.disconnect":
                return
            chunks.append(message.get("body", b""))
            more = message.get("more_body", False)
        body = b"".join(chunks)
        try:
            ok = isinstance(json.loads(body), dict)
        except ValueError:
            ok = False
        if not ok:
            from starlette.responses import JSONResponse

            await JSONResponse(invalid_request("the request body must be a JSON object"),
                               status_code=400)(scope, receive, send)  # type: ignore[arg-type]
            return
        replayed = False

        async def replay() -> dict[str, Any]:
            nonlocal replayed
            if replayed:
                return await receive()
            replayed = True
            return {"type": "http.request", "body": body, "more_body": False}

        await self.app(scope, replay, send)


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
          prompt_cache_bytes: int = 0) -> None:
    try:
        import uvicorn
    except ImportError as e:
        raise PyrcedgeError(f"pyrcedge serve needs uvicorn: {SERVER_EXTRA}") from e
    app = create_app(model, alias, llama_kwargs, prompt_cache_bytes)
    name = alias or resolve_model(model).name
    print(f"pyrcedge serve: http://{host}:{port}/v1, model {name}", flush=True)
    uvicorn.run(app, host=host, port=port, log_level="warning")


def cmd_serve(args: argparse.Namespace) -> int:
    serve(args.model, host=args.host, port=args.port, alias=args.alias,
          prompt_cache_bytes=args.prompt_cache,
          llama_kwargs={**budget_kwargs(args), "n_threads": args.threads,
                        "n_threads_batch": args.threads, "flash_attn": True, "seed": args.seed})
    return 0


def register(sub: Any) -> None:
    srv = sub.add_parser("serve", help="an OpenAI-compatible HTTP server on the budgeted cache",
                         parents=[model_options(), budget_options()])
    srv.add_argument("--alias", help="the model's name in /v1/models (default: the file name)")
    srv.add_argument("--host", default="127.0.0.1")
    srv.add_argument("--port", type=int, default=8000)
    srv.add_argument("--seed", type=int, default=0)
    srv.add_argument("--prompt-cache", type=size, default=0, metavar="SIZE",
                     help="keep each conversation's evicted cache (256MiB, 1GB; default 0: off), "
                          "so that interleaved conversations continue instead of re-reading")
    srv.add_argument("--n-ctx", type=positive_int, default=2048, help=argparse.SUPPRESS)
    srv.set_defaults(func=cmd_serve, budget="64MiB")
