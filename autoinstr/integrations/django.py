"""Django (4.2+): the server span is named after the resolved route (`GET users/<int:pk>/`), each middleware,
the view and each template rendering get a child span, and an unhandled exception that Django turns into a
500 response is recorded on the server span.

- Server span: the shared WSGI mechanism, through `WSGIHandler.__call__` (so any WSGI server serving a
  Django app traces it; under a server autoinstr knows, the outer wrapper makes the span and this one
  passes through).
- Route: after `BaseHandler.resolve_request`, `request.resolver_match.route` is the template (`path()`
  routes) or the regular expression (`re_path()` routes), prefixes of `include()` joined in; the root route
  (the empty string in Django) is named `/`. A request that resolves nothing (404) keeps the method alone.
- Middleware: `convert_exception_to_response`, which `load_middleware` applies to every middleware instance
  once at start-up, is wrapped in django.core.handlers.base only: each layer of the chain it returns runs in
  a span named after the middleware class (`django.contrib.sessions.middleware.SessionMiddleware`; the
  factory's name for a function middleware). The spans nest as the middleware do.
- View: `BaseHandler.make_view_atomic` hands back the view Django is about to call; a sync view is called
  through a span named after its dotted name (`shop.views.user_detail`, the class for a class-based view).
  Async views are handed back untouched (Django decides how to run them by inspecting that callable).
- Templates: `django.template.base.Template.render`, as `render <template name>`.
- Errors: `response_for_exception` (Django's conversion of an exception into a response): when the
  response it makes is a 5xx, the exception goes on the server span (status error, error.type). Http404,
  PermissionDenied and the other 4xx exceptions are answers, not failures.

Nothing here changes what Django does: every wrapper returns what it wrapped returned, re-raises what it
raised, and makes spans only under a sampled span of this process (a Django test client call, which has no
server span, records nothing). Any failure of the agent's own code falls back to the plain call.
"""

from __future__ import annotations

import inspect
from functools import partial
from types import FunctionType, ModuleType
from typing import Any, Callable, Dict, Optional, Tuple

from autoinstr.export import statsd as _statsd
from autoinstr.integrations._wrapping import replace, unwrap, wrap
from autoinstr.integrations._wsgi import server_span, set_route, wsgi_method
from autoinstr.trace.span import Span, current_span_var

try:
    from asgiref.sync import iscoroutinefunction as _asgiref_iscoroutinefunction
except Exception:  # pragma: no cover - asgiref is a Django dependency
    _asgiref_iscoroutinefunction = None

_current = current_span_var.get
_NAME_CACHE_LIMIT = 2048
_view_names: Dict[Any, Tuple[str, Dict[str, str]]] = {}
_template_names: Dict[Any, str] = {}


def _is_async(fn: Any) -> bool:
    """As Django decides (asgiref's check, markers included), erring on the side of "async": an async
    callable is never wrapped, so Django keeps seeing it as it is."""
    try:
        if inspect.iscoroutinefunction(fn) or getattr(fn, "_is_coroutine", None) is not None:
            return True
        return bool(_asgiref_iscoroutinefunction is not None and _asgiref_iscoroutinefunction(fn))
    except Exception:
        return True


def _sampled_parent() -> Optional[Span]:
    span = _current()
    return span if span is not None and span.sampled else None


def _end(span: Span, exc: Optional[BaseException]) -> None:
    try:
        span.__exit__(None if exc is None else type(exc), exc, None)
    except Exception:
        pass


# ----------------------------------------------------------------------------------------- route

def _route_of(match: Any) -> Optional[str]:
    route = getattr(match, "route", None)
    if not isinstance(route, str):
        return None
    return route or "/"


def _resolve_request(wrapped: Callable[..., Any], instance: Any, args: tuple, kwargs: dict) -> Any:
    match = wrapped(*args, **kwargs)  # Resolver404 propagates as is: the span keeps the method-only name
    try:
        request = args[0] if args else kwargs.get("request")
        span = server_span(getattr(request, "META", None))
        if span is not None and (span.sampled or _statsd.enabled):  # statsd: routes of unsampled requests too
            route = _route_of(match)
            if route is not None:
                set_route(route, span=span)
    except Exception:
        pass
    return match


# ------------------------------------------------------------------------------------ middleware

def _middleware_name(middleware: Any) -> str:
    if isinstance(middleware, FunctionType):  # a function middleware: the factory's closure
        qualname = middleware.__qualname__
        factory, sep, _ = qualname.rpartition(".<locals>.")
        return "%s.%s" % (middleware.__module__, factory if sep else qualname)
    cls = type(middleware)
    return "%s.%s" % (cls.__module__, cls.__qualname__)


def _traced_layer(handler: Callable[[Any], Any], name: str) -> Callable[[Any], Any]:
    """One layer of the middleware chain, in a span (when there is a sampled span to parent it)."""

    def middleware_span(request: Any) -> Any:
        parent = _current()
        if parent is None or not parent.sampled:
            return handler(request)
        try:
            span = Span(name, parent=parent).__enter__()
        except Exception:
            return handler(request)
        try:
            response = handler(request)
        except BaseException as exc:
            _end(span, exc)
            raise
        _end(span, None)
        return response

    middleware_span.__wrapped__ = handler  # type: ignore[attr-defined]
    return middleware_span


def _convert_exception_to_response(base_handler: type) -> Callable[..., Any]:
    def wrapper(wrapped: Callable[..., Any], instance: Any, args: tuple, kwargs: dict) -> Any:
        handler = wrapped(*args, **kwargs)
        try:
            target = args[0] if args else kwargs.get("get_response")
            if isinstance(getattr(target, "__self__", None), base_handler):  # the innermost _get_response
                return handler
            if _is_async(handler):  # an async chain (ASGI) is left as Django built it
                return handler
            return _traced_layer(handler, _middleware_name(target))
        except Exception:
            return handler

    return wrapper


# ------------------------------------------------------------------------------------------ view

def _view_info(view: Any) -> Tuple[str, Dict[str, str]]:
    try:
        cached = _view_names.get(view)
    except TypeError:  # unhashable callable
        cached = None
    if cached is not None:
        return cached
    target = getattr(view, "view_class", None) or getattr(view, "cls", None)  # class-based views, DRF
    if not isinstance(target, type):
        target = view.func if isinstance(view, partial) else view
        target = getattr(target, "__func__", target)  # a bound method: its function
    qualname = getattr(target, "__qualname__", None)
    if not isinstance(qualname, str):
        qualname = type(target).__qualname__
    module = getattr(target, "__module__", None)
    attrs = {"code.function": qualname}
    if isinstance(module, str) and module:
        attrs["code.namespace"] = module
        name = "%s.%s" % (module, qualname)
    else:
        name = qualname
    info = (name, attrs)
    try:
        if len(_view_names) < _NAME_CACHE_LIMIT:
            _view_names[view] = info
    except TypeError:
        pass
    return info


def _is_client_error(exc: BaseException) -> bool:
    """Http404, PermissionDenied, BadRequest, SuspiciousOperation...: Django answers them with a 4xx."""
    try:
        from django.core.exceptions import BadRequest, PermissionDenied, SuspiciousOperation
        from django.http import Http404

        return isinstance(exc, (Http404, PermissionDenied, BadRequest, SuspiciousOperation))
    except Exception:
        return False


def _traced_view(view: Callable[..., Any], name: str, attrs: Dict[str, str]) -> Callable[..., Any]:
    def view_span(*args: Any, **kwargs: Any) -> Any:
        try:
            span = Span(name, **attrs).__enter__()
        except Exception:
            return view(*args, **kwargs)
        try:
            response = view(*args, **kwargs)
        except BaseException as exc:
            _end(span, None if _is_client_error(exc) else exc)
            raise
        _end(span, None)
        return response

    return view_span


def _make_view_atomic(wrapped: Callable[..., Any], instance: Any, args: tuple, kwargs: dict) -> Any:
    view = wrapped(*args, **kwargs)
    try:
        if _sampled_parent() is None or _is_async(view):
            return view
        callback = args[0] if args else kwargs.get("view", view)
        name, attrs = _view_info(callback)
        return _traced_view(view, name, attrs)
    except Exception:
        return view


# ------------------------------------------------------------------------------------- templates

def _render_name(template: Any) -> str:
    name = getattr(template, "name", None)
    try:
        cached = _template_names.get(name)
        if cached is None:
            cached = "render %s" % (name if name else "<unknown source>")
            if len(_template_names) < _NAME_CACHE_LIMIT:
                _template_names[name] = cached
        return cached
    except TypeError:
        return "render <unknown source>"


def _template_render(wrapped: Callable[..., Any], instance: Any, args: tuple, kwargs: dict) -> Any:
    parent = _current()
    if parent is None or not parent.sampled:
        return wrapped(*args, **kwargs)
    try:
        span = Span(_render_name(instance), parent=parent)
        name = getattr(instance, "name", None)
        if isinstance(name, str):
            span.attributes["django.template.name"] = name
        span.__enter__()
    except Exception:
        return wrapped(*args, **kwargs)
    try:
        result = wrapped(*args, **kwargs)
    except BaseException as exc:
        _end(span, exc)
        raise
    _end(span, None)
    return result


# ---------------------------------------------------------------------------------------- errors

def _response_for_exception(wrapped: Callable[..., Any], instance: Any, args: tuple, kwargs: dict) -> Any:
    response = wrapped(*args, **kwargs)
    try:
        status = getattr(response, "status_code", 0)
        if isinstance(status, int) and status >= 500:
            request = args[0] if args else kwargs.get("request")
            exc = args[1] if len(args) > 1 else kwargs.get("exc")
            span = server_span(getattr(request, "META", None))
            if span is not None and span.sampled and isinstance(exc, BaseException):
                span.record_exception(exc)
    except Exception:
        pass
    return response


# ------------------------------------------------------------------------------------ patch table

def patch(module: ModuleType) -> None:
    name = module.__name__
    if name == "django.core.handlers.wsgi":
        replace(module, "WSGIHandler.__call__", wsgi_method)
    elif name == "django.core.handlers.base":
        wrap(module, "BaseHandler.resolve_request", _resolve_request)
        wrap(module, "BaseHandler.make_view_atomic", _make_view_atomic)
        # the name load_middleware calls, in its own module: other users of the function are not touched
        wrap(module, "convert_exception_to_response", _convert_exception_to_response(module.BaseHandler))
    elif name == "django.core.handlers.exception":
        wrap(module, "response_for_exception", _response_for_exception)
    elif name == "django.template.base":
        wrap(module, "Template.render", _template_render)


def unpatch(module: ModuleType) -> None:
    name = module.__name__
    if name == "django.core.handlers.wsgi":
        unwrap(module, "WSGIHandler.__call__")
    elif name == "django.core.handlers.base":
        unwrap(module, "BaseHandler.resolve_request")
        unwrap(module, "BaseHandler.make_view_atomic")
        unwrap(module, "convert_exception_to_response")
    elif name == "django.core.handlers.exception":
        unwrap(module, "response_for_exception")
    elif name == "django.template.base":
        unwrap(module, "Template.render")
