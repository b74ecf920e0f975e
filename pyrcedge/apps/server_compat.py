"""Where pyrcedge serve reaches into llama_cpp.server, in one place.

llama_cpp.server builds its model holder from the module-level name LlamaProxy, and answers
every exception that no pattern of its own matches with a 500 (RouteErrorHandler). pyrcedge
serve hands the proxy its own budgeted Llama and answers the client's errors with 400. Both
touch names that are not llama_cpp.server's public API: tests/test_server.py checks that they
still exist (COMPAT_NAMES), so an upstream rename fails a test rather than a user's server.
"""

from __future__ import annotations

import contextlib
from typing import Any, Callable, Iterator

# (module, attribute) of llama_cpp.server that this module relies on
COMPAT_NAMES = (
    ("llama_cpp.server.app", "LlamaProxy"),
    ("llama_cpp.server.app", "create_app"),
    ("llama_cpp.server.model", "LlamaProxy.load_llama_from_model_settings"),
    ("llama_cpp.server.model", "LlamaProxy.__call__"),
    ("llama_cpp.server.errors", "RouteErrorHandler.error_message_wrapper"),
    ("llama_cpp.server.errors", "ErrorResponse"),
    ("llama_cpp.server.settings", "ServerSettings"),
    ("llama_cpp.server.settings", "ModelSettings"),
)


@contextlib.contextmanager
def serving(llm: Any, on_request: Callable[[], None] | None = None) -> Iterator[None]:
    """While active, llama_cpp.server.app.create_app builds a model proxy that hands out `llm`
    for every model it is configured with (it loads nothing itself). on_request is called each
    time a request takes the model (llama_cpp.server calls the proxy holding its lock)."""
    import llama_cpp.server.app as app_module

    class BudgetedProxy(app_module.LlamaProxy):
        """llama_cpp.server's model holder, handing out the budgeted Llama loaded already."""

        @staticmethod
        def load_llama_from_model_settings(settings: Any) -> Any:
            return llm

        def __call__(self, model: str | None = None) -> Any:
            out = super().__call__(model)
            if on_request is not None:
                on_request()
            return out

    stock = app_module.LlamaProxy
    app_module.LlamaProxy = BudgetedProxy  # type: ignore[misc]
    try:
        yield
    finally:
        app_module.LlamaProxy = stock  # type: ignore[misc]


def map_client_errors(to_response: Callable[[Exception], tuple[int, Any] | None]) -> None:
    """Route errors that to_response maps (it returns (status, ErrorResponse) or None) before
    llama_cpp.server's own mapping; installed once per process (idempotent)."""
    from llama_cpp.server.errors import RouteErrorHandler

    stock = RouteErrorHandler.error_message_wrapper
    if getattr(stock, "pyrcedge", False):
        return

    def error_message_wrapper(self: Any, error: Exception, body: Any = None) -> Any:
        mapped = to_response(error)
        return mapped if mapped is not None else stock(self, error, body)

    error_message_wrapper.pyrcedge = True  # type: ignore[attr-defined]
    RouteErrorHandler.error_message_wrapper = error_message_wrapper  # type: ignore[method-assign]
