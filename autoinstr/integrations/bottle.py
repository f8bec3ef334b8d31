"""Bottle: the server span is named after the matched route (`GET /items/<id>`); a Bottle app served by a
server autoinstr does not know is traced through Bottle.__call__."""

from __future__ import annotations

from types import ModuleType
from typing import Any, Callable

from autoinstr.integrations._wrapping import unwrap, wrap
from autoinstr.integrations._wsgi import set_route, wsgi_call_wrapper


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


def patch(module: ModuleType) -> None:  # bottle
    wrap(module, "Bottle.__call__", wsgi_call_wrapper)
    wrap(module, "Router.match", _match)


def unpatch(module: ModuleType) -> None:
    unwrap(module, "Bottle.__call__")
    unwrap(module, "Router.match")
