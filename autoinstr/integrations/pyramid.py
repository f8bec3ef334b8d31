"""Pyramid (2.x): the server span is named after the matched route pattern (`GET /users/{id}`), and an
exception an exception view turns into a 5xx response is recorded on it. A Pyramid app served by a server
autoinstr does not know is traced through Router.__call__.

No app change is needed (no tween, no subscriber): `Router.invoke_request(request)` runs the tweens, URL
dispatch, traversal and the view; once it returns (or raises), `request.matched_route` is the route URL
dispatch matched, if any. A request no route matched (a 404, or a traversal-only app) keeps the method-only
name. A route pattern is given with its leading slash, as Pyramid matches it (`users/{id}` is `/users/{id}`).

An exception that leaves the app unhandled is recorded by the WSGI wrapper itself
(autoinstr.integrations._wsgi); one the excview tween renders is in `request.exception`, recorded when the
response it rendered is a 5xx (an HTTPNotFound rendered as 404 is an answer, not a failure). Subrequests
(`request.invoke_subrequest`) go through invoke_request too: only the outermost call names the span.
"""

from __future__ import annotations

from contextvars import ContextVar
from types import ModuleType
from typing import Any, Callable, Optional

from autoinstr.export import statsd as _statsd
from autoinstr.integrations._wrapping import replace, unwrap, wrap
from autoinstr.integrations._wsgi import server_span, set_route, wsgi_method

_in_request: ContextVar[bool] = ContextVar("autoinstr.pyramid.in_request", default=False)


def _invoke_request(wrapped: Callable[..., Any], instance: Any, args: tuple, kwargs: dict) -> Any:
    if _in_request.get():  # a subrequest: the outermost request names the span
        return wrapped(*args, **kwargs)
    try:
        token = _in_request.set(True)
    except Exception:
        return wrapped(*args, **kwargs)
    response = None
    try:
        response = wrapped(*args, **kwargs)
        return response
    finally:
        try:
            _in_request.reset(token)
        except Exception:
            _in_request.set(False)
        try:
            _after_request(args[0] if args else kwargs.get("request"), response)
        except Exception:
            pass


def _after_request(request: Any, response: Any) -> None:
    attrs = getattr(request, "__dict__", None)
    if not isinstance(attrs, dict):
        return
    span = server_span(attrs.get("environ") or getattr(request, "environ", None))
    if span is None or not (span.sampled or _statsd.enabled):  # statsd: routes of unsampled requests too
        return
    route = attrs.get("matched_route")
    pattern = getattr(route, "pattern", None) if route is not None else None
    if isinstance(pattern, str):
        set_route(pattern if pattern.startswith("/") else "/" + pattern, span=span)
    if not span.sampled:
        return
    exc = attrs.get("exception")
    if response is not None and isinstance(exc, BaseException):
        code = _status_code(response)
        if code is not None and code >= 500:
            span.record_exception(exc)


def _status_code(response: Any) -> Optional[int]:
    code = getattr(response, "status_code", None)
    if isinstance(code, int):
        return code
    status = getattr(response, "status", None)
    if isinstance(status, str) and status[:3].isdigit():
        return int(status[:3])
    return None


def patch(module: ModuleType) -> None:  # pyramid.router
    replace(module, "Router.__call__", wsgi_method)
    wrap(module, "Router.invoke_request", _invoke_request)


def unpatch(module: ModuleType) -> None:
    unwrap(module, "Router.__call__")
    unwrap(module, "Router.invoke_request")
