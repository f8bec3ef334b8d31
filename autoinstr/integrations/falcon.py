"""Falcon (3.x, 4.x; the WSGI `falcon.App`): the server span is named after the matched route template
(`GET /users/{id}`), and an exception Falcon turns into a 5xx response (its default handler answers 500)
is recorded on it. A Falcon app served by a server autoinstr does not know is traced through App.__call__.

The route is read where Falcon resolves it: `App._get_responder(req)` returns (responder, params, resource,
uri_template); the template is None for a 404, a sink or a static route, which keep the method-only name.
An exception that leaves the app unhandled is recorded by the WSGI wrapper itself (autoinstr.integrations._wsgi);
one that an error handler turns into a 4xx answer is the app's choice, not a failure, and is not recorded.
The ASGI `falcon.asgi.App` overrides both hooked methods and is left alone.
"""

from __future__ import annotations

from types import ModuleType
from typing import Any, Callable, Optional

from autoinstr.integrations._wrapping import replace, unwrap, wrap
from autoinstr.integrations._wsgi import server_span, set_route, wsgi_method


def _get_responder(wrapped: Callable[..., Any], instance: Any, args: tuple, kwargs: dict) -> Any:
    result = wrapped(*args, **kwargs)
    try:
        template = result[3] if len(result) > 3 else None
        if isinstance(template, str):
            req = args[0] if args else kwargs.get("req")
            environ = getattr(req, "env", None)
            if isinstance(environ, dict):
                set_route(template, environ)
    except Exception:
        pass
    return result


def _handle_exception(wrapped: Callable[..., Any], instance: Any, args: tuple, kwargs: dict) -> Any:
    handled = wrapped(*args, **kwargs)
    # not handled: Falcon re-raises it and the WSGI wrapper records it as it leaves the app
    if handled:
        try:
            _record_if_server_error(args, kwargs)
        except Exception:
            pass
    return handled


def _record_if_server_error(args: tuple, kwargs: dict) -> None:
    req = args[0] if len(args) > 0 else kwargs.get("req")
    resp = args[1] if len(args) > 1 else kwargs.get("resp")
    exc = args[2] if len(args) > 2 else kwargs.get("ex")
    if not isinstance(exc, BaseException):
        return
    span = server_span(getattr(req, "env", None))
    if span is None or not span.sampled:
        return
    code = _status_code(getattr(resp, "status", None))
    if code is not None and code >= 500:
        span.record_exception(exc)


def _status_code(status: Any) -> Optional[int]:
    """resp.status as an int: Falcon accepts '500 Internal Server Error', 500 and http.HTTPStatus."""
    if isinstance(status, int):  # int and http.HTTPStatus
        return int(status)
    if isinstance(status, bytes):
        status = status.decode("latin-1", "replace")
    if isinstance(status, str) and status[:3].isdigit():
        return int(status[:3])
    return None


def patch(module: ModuleType) -> None:  # falcon.app
    replace(module, "App.__call__", wsgi_method)
    wrap(module, "App._get_responder", _get_responder)
    wrap(module, "App._handle_exception", _handle_exception)


def unpatch(module: ModuleType) -> None:
    unwrap(module, "App.__call__")
    unwrap(module, "App._get_responder")
    unwrap(module, "App._handle_exception")
