"""Bottle: the server span is named after the matched route (`GET /items/<id>`), the route's callback runs
in a child span of its own; a Bottle app served by a server autoinstr does not know is traced through
Bottle.__call__."""

from __future__ import annotations

from types import ModuleType
from typing import Any, Callable

from autoinstr.integrations._wrapping import replace, unwrap, wrap
from autoinstr.integrations._wsgi import set_route, wsgi_method
from autoinstr.trace.span import Span, current_span_var


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
        view_span = Span(name, **{"code.function": name}).__enter__()
        try:
            result = callback(*a, **kw)
        except Exception as exc:
            status = getattr(exc, "status_code", 500)  # bottle answers with HTTPResponse/HTTPError raises
            if not (isinstance(status, int) and status < 500):
                view_span.record_exception(exc)
                parent.record_exception(exc)
            view_span.__exit__(None, None, None)
            raise
        view_span.__exit__(None, None, None)
        return result

    return traced_callback


def patch(module: ModuleType) -> None:  # bottle
    replace(module, "Bottle.__call__", wsgi_method)
    wrap(module, "Router.match", _match)
    wrap(module, "Route._make_callback", _make_callback)


def unpatch(module: ModuleType) -> None:
    unwrap(module, "Bottle.__call__")
    unwrap(module, "Router.match")
    unwrap(module, "Route._make_callback")
