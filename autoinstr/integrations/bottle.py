"""Bottle: the server span is named after the matched route (`GET /items/<id>`), the route's callback runs
in a child span of its own; a Bottle app served by a server autoinstr does not know is traced through
Bottle.__call__."""

from __future__ import annotations

from types import ModuleType
from typing import Any, Callable

from autoinstr.integrations._wrapping import replace, unwrap, wrap
from autoinstr.integrations._wsgi import run_view, set_route, wsgi_method
from autoinstr.trace.span import current_span_var


def _match(wrapped: Callable[..., Any], instance: Any, args: tuple, kwargs: dict) -> Any:
    result = wrapped(*args, **kwargs)
    try:
        route = result[0]
        environ = args[0] if args else kwargs.get("environ")
        rule = getattr(route, "rule", None)
        if isinstance(rule, str) and isinstance(environ, dict):
            set_route(rule, environ)
    except Exception:
        pass
    return result


def _make_callback(wrapped: Callable[..., Any], instance: Any, args: tuple, kwargs: dict) -> Any:
    """Route.call (cached per route) is the callback with the app's plugins applied: run it in a span."""
    callback = wrapped(*args, **kwargs)
    try:
        name = getattr(instance.callback, "__qualname__", None) or str(instance.rule)
    except Exception:
        return callback

    def traced_callback(*a: Any, **kw: Any) -> Any:
        parent = current_span_var.get()
        if parent is None or not parent.sampled:  # only inside a recorded request
            return callback(*a, **kw)
        return run_view(name, _is_answer, parent, callback, *a, **kw)

    return traced_callback


def _is_answer(exc: BaseException) -> bool:
    """bottle answers with HTTPResponse/HTTPError raised: below 500, an answer the app chose, not a failure."""
    status = getattr(exc, "status_code", 500)
    return isinstance(status, int) and status < 500


def patch(module: ModuleType) -> None:  # bottle
    replace(module, "Bottle.__call__", wsgi_method)
    wrap(module, "Router.match", _match)
    wrap(module, "Route._make_callback", _make_callback)


def unpatch(module: ModuleType) -> None:
    unwrap(module, "Bottle.__call__")
    unwrap(module, "Router.match")
    unwrap(module, "Route._make_callback")
