"""Flask: the server span is named after the matched route (`GET /users/<int:id>`), the view function
runs in a child span of its own, and an exception from the view is recorded (Flask then answers 500).
A Flask app served by a server autoinstr does not know is traced through Flask.__call__."""

from __future__ import annotations

from types import ModuleType
from typing import Any, Callable, Dict, Tuple

from autoinstr.integrations import _wsgi
from autoinstr.integrations._wrapping import replace, unwrap
from autoinstr.integrations._wsgi import ENVIRON_KEY, run_view, set_route, wsgi_method
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


def _traced_dispatch(original: Callable[..., Any]) -> Callable[..., Any]:
    """Flask.dispatch_request (a plain function, see _wrapping.replace): names the server span after the
    matched rule and runs the view in a span of its own."""

    def dispatch_request(self: Any, *args: Any, **kwargs: Any) -> Any:
        try:
            request = _current_request()
            span = request.environ.get(ENVIRON_KEY)
            if span.__class__ is not Span:  # no server span: nothing to name
                return original(self, *args, **kwargs)
            rule = request.url_rule
            if rule is None or request.routing_exception is not None:  # 404/405: no route, no view
                return original(self, *args, **kwargs)
            if not span._sampled:
                set_route(rule.rule, span=span)
                return original(self, *args, **kwargs)
            attrs = span.attributes
            known = _rules.get(id(rule))
            name = known[4].get(attrs.get("http.request.method")) if known is not None and known[1] is rule \
                else None
            if name is None:  # (once per rule and method: set_route names the span and sets http.route)
                route, view = _rule_names(self, rule)
                set_route(route, span=span)
                known = _rules.get(id(rule))
                if known is not None and known[1] is rule and span.name != "other":
                    known[4][attrs.get("http.request.method")] = span.name
            else:
                span.name = name
                attrs["http.route"] = known[2]
                view = known[3]
        except Exception:
            return original(self, *args, **kwargs)
        return run_view(view, _is_client_error, span, original, self, *args, **kwargs)

    # compiled where the view span is: a route and method named before, without this frame (_wsgi_method.c)
    hook = _wsgi._compiled("flask_dispatch_hook") if run_view is not _wsgi._run_view else None
    if hook is None:
        return dispatch_request
    return hook(dispatch_request, original, _rules, _request_context_var, _is_client_error)  # type: ignore[no-any-return]


# id(rule) -> (app, rule, route template, view name, {method: span name}); the entry keeps the rule alive,
# so its id cannot be another's
_rules: Dict[int, Tuple[Any, Any, str, str, Dict[Any, str]]] = {}


def _rule_names(app: Any, rule: Any) -> Tuple[str, str]:
    """A rule's template and its view function's qualified name, looked up once per rule."""
    known = _rules.get(id(rule))
    if known is None or known[0] is not app or known[1] is not rule:
        view = app.view_functions.get(rule.endpoint)
        name = getattr(view, "__qualname__", None) or str(rule.endpoint or "view")
        known = (app, rule, str(rule.rule), name, {})
        if len(_rules) < 4096:
            _rules[id(rule)] = known
    return known[2], known[3]


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
    replace(module, "Flask.__call__", wsgi_method)
    replace(module, "Flask.dispatch_request", _traced_dispatch)


def unpatch(module: ModuleType) -> None:
    unwrap(module, "Flask.__call__")
    unwrap(module, "Flask.dispatch_request")
