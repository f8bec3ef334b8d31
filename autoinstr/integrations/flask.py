"""Flask: the server span is named after the matched route (`GET /users/<int:id>`), the view function
runs in a child span of its own, and an exception from the view is recorded (Flask then answers 500).
A Flask app served by a server autoinstr does not know is traced through Flask.__call__."""

from __future__ import annotations

from types import ModuleType
from typing import Any, Callable, Dict, Tuple

from autoinstr.integrations._wrapping import unwrap, wrap
from autoinstr.integrations._wsgi import ENVIRON_KEY, set_route, wsgi_call_wrapper
from autoinstr.trace.span import Span

_request_context_var: Any = None  # flask.globals._cv_request (Flask >= 2.2), looked up once at patch time


def _current_request() -> Any:
    """The request object itself: through flask.request (a proxy) every attribute read costs a lookup."""
    if _request_context_var is not None:
        try:
            return _request_context_var.get().request
        except (LookupError, AttributeError):
            pass
    from flask import request

    return request._get_current_object()


def _dispatch_request(wrapped: Callable[..., Any], instance: Any, args: tuple, kwargs: dict) -> Any:
    try:
        request = _current_request()
        span = request.environ.get(ENVIRON_KEY)
        if span.__class__ is not Span:  # no server span: nothing to name
            return wrapped(*args, **kwargs)
        rule = request.url_rule
        if rule is None or request.routing_exception is not None:  # 404/405: no route, no view
            return wrapped(*args, **kwargs)
        set_route(rule.rule, span=span)
        if not span._sampled:
            return wrapped(*args, **kwargs)
        name = _view_name(instance, rule.endpoint)
        view_span = Span(name)
        view_span.attributes["code.function"] = name
        view_span.__enter__()
    except Exception:
        return wrapped(*args, **kwargs)
    try:
        result = wrapped(*args, **kwargs)
    except Exception as exc:
        if not _is_client_error(exc):
            view_span.record_exception(exc)
            span.record_exception(exc)
        view_span.__exit__(None, None, None)
        raise
    view_span.__exit__(None, None, None)
    return result


_view_names: Dict[Tuple[int, Any], str] = {}


def _view_name(app: Any, endpoint: Any) -> str:
    """The view function's qualified name, looked up once per (app, endpoint)."""
    key = (id(app), endpoint)
    name = _view_names.get(key)
    if name is None:
        view = app.view_functions.get(endpoint)
        name = getattr(view, "__qualname__", None) or str(endpoint or "view")
        if len(_view_names) < 4096:
            _view_names[key] = name
    return name


def _is_client_error(exc: BaseException) -> bool:
    """abort(404) and friends: an HTTP answer the app chose, not a failure."""
    code = getattr(exc, "code", None)
    return isinstance(code, int) and code < 500


def patch(module: ModuleType) -> None:  # flask.app
    global _request_context_var
    try:
        from flask.globals import _cv_request

        _request_context_var = _cv_request
    except ImportError:  # older Flask: the proxy it is
        _request_context_var = None
    wrap(module, "Flask.__call__", wsgi_call_wrapper)
    wrap(module, "Flask.dispatch_request", _dispatch_request)


def unpatch(module: ModuleType) -> None:
    unwrap(module, "Flask.__call__")
    unwrap(module, "Flask.dispatch_request")
