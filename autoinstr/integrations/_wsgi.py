"""The shared WSGI mechanism: one server span per request, for any WSGI app on any server.

Servers and frameworks wrap their application with `wrap_app` (idempotent: the outermost wrapper makes the
span, inner ones pass through). The span:
- continues the trace of the incoming headers (the configured propagators), or starts a new one;
- is named `METHOD` until a framework integration names it after its route (`set_route`), never after
  the raw path; names are drawn from a bounded pool per process (overflow: `other`, counted);
- ends when the response body is exhausted or closed, not when the app returns, so streaming responses
  are timed whole; close() is forwarded, len() kept (servers use it for Content-Length), and a
  wsgi.file_wrapper response is returned as is (servers send it with sendfile) with its close() hooked;
- records an exception from the app (re-raised unchanged), and marks 5xx responses as errors.
"""

from __future__ import annotations

import re
from _thread import get_ident
from typing import Any, Callable, Dict, Iterable, Iterator, List, Optional, Tuple
from urllib.parse import unquote_plus

from autoinstr import config
from autoinstr.export import statsd as _statsd
from autoinstr.integrations import is_suppressed
from autoinstr.trace.propagation import extract
from autoinstr.trace.span import Span, current_span_var

ENVIRON_KEY = "autoinstr.span"
KNOWN_METHODS = frozenset(("GET", "HEAD", "POST", "PUT", "DELETE", "CONNECT", "OPTIONS", "TRACE", "PATCH"))
_SECRET_KEY = re.compile(r"pass|pwd|token|key|secret|auth|session|credential|signature|sig$|code", re.I)
_RESPONSE_HEADERS = config.get().trace_response_header
# headers recorded only when allow-listed (AUTOINSTR_HTTP_REQUEST_HEADERS / _RESPONSE_HEADERS); credentials
# among them are recorded as REDACTED even then
_CAPTURE_REQUEST = tuple((name, "CONTENT_TYPE" if name == "content-type" else "CONTENT_LENGTH"
                          if name == "content-length" else "HTTP_" + name.upper().replace("-", "_"))
                         for name in config.get().http_request_headers)
_CAPTURE_RESPONSE = frozenset(config.get().http_response_headers)
_SECRET_HEADERS = frozenset(("authorization", "proxy-authorization", "cookie", "set-cookie", "x-api-key",
                             "x-auth-token", "x-csrf-token", "x-xsrf-token"))
_get_current = current_span_var.get
_set_current = current_span_var.set
_reset_current = current_span_var.reset


_ENVIRON_KEYS: Dict[str, str] = {}


def _environ_header(environ: Dict[str, Any], name: str) -> Optional[str]:
    """A request header from the WSGI environ, for the propagators (header name -> HTTP_ key, cached)."""
    key = _ENVIRON_KEYS.get(name)
    if key is None:
        key = _ENVIRON_KEYS[name] = "HTTP_" + name.upper().replace("-", "_")
    value = environ.get(key)
    return value if value.__class__ is str else None


def redact_query(query: str) -> str:
    """The query string with the values of secret-looking keys replaced by REDACTED."""
    if not query:
        return query
    parts = []
    for part in query.split("&"):
        key, eq, _value = part.partition("=")
        if eq and (_SECRET_KEY.search(key) or ("%" in key or "+" in key) and _SECRET_KEY.search(unquote_plus(key))):
            parts.append(key + "=REDACTED")
        else:
            parts.append(part)
    return "&".join(parts)


# ----------------------------------------------------------------------------------- names

class NamePool:
    """At most `limit` distinct span names per process: a route template explosion (or a framework that
    puts ids in routes) cannot flood the backend. Overflow is named `other` and counted."""

    limit = config.get().max_span_names
    names: set = set()
    overflow = 0

    @classmethod
    def name(cls, candidate: str) -> str:
        names = cls.names
        if candidate in names:
            return candidate
        if len(names) < cls.limit:
            names.add(candidate)
            return candidate
        cls.overflow += 1
        return "other"


_route_names: Dict[Tuple[str, str], str] = {}


def set_route(route: str, environ: Optional[Dict[str, Any]] = None, span: Any = None) -> None:
    """A framework matched `route` (the template, e.g. /users/<int:id>): name the server span after it."""
    try:
        if span is None:
            span = environ.get(ENVIRON_KEY) if environ is not None else None
        if span.__class__ is not Span or not span._sampled:
            if _statsd.enabled and span.__class__ is Span:  # statsd counts unsampled requests per route too
                span.attributes["http.route"] = route
            return
        attrs = span.attributes
        method = attrs.get("http.request.method", "GET")
        key = (method, route)
        name = _route_names.get(key)
        if name is None:  # once per route: bounded by the name pool (beyond it, `other`)
            name = NamePool.name("%s %s" % ("HTTP" if method == "_OTHER" else method, route))
            if len(_route_names) < NamePool.limit:
                _route_names[key] = name
        span.name = name
        attrs["http.route"] = route
    except Exception:
        pass


def server_span(environ: Optional[Dict[str, Any]]) -> Optional[Span]:
    span = environ.get(ENVIRON_KEY) if isinstance(environ, dict) else None
    return span if isinstance(span, Span) else None


# -------------------------------------------------------------------------------- the wrapper

def wrap_app(app: Any) -> Any:
    """`app` traced (the same object back if it already is)."""
    if app is None or isinstance(app, TracedApp) or getattr(app, "__autoinstr_wsgi__", False):
        return app
    return TracedApp(app)


class TracedApp:
    """A WSGI app that makes the server span; everything else is the wrapped app's (attributes pass
    through, so `app.config` and the like still work on the wrapper)."""

    __autoinstr_wsgi__ = True

    def __init__(self, app: Any) -> None:
        self.__dict__["_autoinstr_app"] = app

    def __getattr__(self, name: str) -> Any:
        return getattr(self.__dict__["_autoinstr_app"], name)

    def __setattr__(self, name: str, value: Any) -> None:
        setattr(self.__dict__["_autoinstr_app"], name, value)

    def __repr__(self) -> str:
        return "<autoinstr traced %r>" % (self.__dict__["_autoinstr_app"],)

    def __call__(self, environ: Dict[str, Any], start_response: Callable[..., Any]) -> Any:
        return call_traced(self.__dict__["_autoinstr_app"], environ, start_response)


def call_traced(app: Callable[..., Any], environ: Dict[str, Any], start_response: Callable[..., Any]) -> Any:
    """Run one WSGI call of `app` inside a server span (unless an outer wrapper already made one)."""
    if ENVIRON_KEY in environ or is_suppressed():
        return app(environ, start_response)
    try:
        token, state = _begin(environ, start_response)
    except Exception:  # the agent failing must not fail the request
        return app(environ, start_response)
    try:
        result = app(environ, state.start_response)
    except BaseException as exc:
        _reset(token)
        state.fail(exc)
        raise
    # The span stays current until the body is done (see _Request.finish): the server sends the body in
    # this same context, and every contextvar write would also cost the app's own contextvars (Flask's)
    # their lookup cache.
    state.token = token
    return state.body(result, environ)


def wsgi_call_wrapper(wrapped: Callable[..., Any], instance: Any, args: tuple, kwargs: dict) -> Any:
    """A wrapt wrapper for a framework's `__call__(environ, start_response)`: apps served by a server we
    do not know still get their server span."""
    if len(args) != 2 or kwargs:
        return wrapped(*args, **kwargs)
    return call_traced(wrapped, args[0], args[1])


def wrap_app_argument(position: int, name: str) -> Callable[..., Any]:
    """A wrapt wrapper that wraps the WSGI app passed to a server function at `position` (or as `name`)."""

    def wrapper(wrapped: Callable[..., Any], instance: Any, args: tuple, kwargs: dict) -> Any:
        try:
            if name in kwargs:
                kwargs = dict(kwargs, **{name: wrap_app(kwargs[name])})
            elif len(args) > position:
                args = args[:position] + (wrap_app(args[position]),) + args[position + 1:]
        except Exception:
            pass
        return wrapped(*args, **kwargs)

    return wrapper


def _reset(token: Any) -> None:
    try:
        _reset_current(token)
    except ValueError:
        _set_current(None)


def _begin(environ: Dict[str, Any], start_response: Callable[..., Any]) -> Tuple[Any, _Request]:
    # most requests carry no trace context: four dict lookups instead of the propagators' parsing
    carries = ("HTTP_TRACEPARENT" in environ or "HTTP_B3" in environ or "HTTP_X_B3_TRACEID" in environ
               or "HTTP_BAGGAGE" in environ)
    ctx = extract(environ, _environ_header) if carries else None
    raw_method = environ.get("REQUEST_METHOD") or "GET"
    method = raw_method if raw_method in KNOWN_METHODS else "_OTHER"
    span = Span(method if method != "_OTHER" else "HTTP", kind="server", parent=ctx)
    environ[ENVIRON_KEY] = span
    if span._sampled:
        attrs = span.attributes
        attrs["http.request.method"] = method
        if method == "_OTHER":
            attrs["http.request.method_original"] = raw_method
        attrs["url.path"] = environ.get("PATH_INFO") or "/"
        attrs["url.scheme"] = environ.get("wsgi.url_scheme") or "http"
        query = environ.get("QUERY_STRING")
        if query:
            attrs["url.query"] = redact_query(query)
        host, port = _server_of(environ)
        if host:
            attrs["server.address"] = host
        if port:
            attrs["server.port"] = port
        client = environ.get("REMOTE_ADDR")
        if client:
            attrs["client.address"] = client
        agent = environ.get("HTTP_USER_AGENT")
        if agent:
            attrs["user_agent.original"] = agent
        length = environ.get("CONTENT_LENGTH")
        if length and length.isdigit():
            attrs["http.request.body.size"] = int(length)
        protocol = environ.get("SERVER_PROTOCOL") or ""
        if protocol.startswith("HTTP/"):
            attrs["network.protocol.version"] = protocol[5:]
        for name, key in _CAPTURE_REQUEST:
            value = environ.get(key)
            if isinstance(value, str):
                attrs["http.request.header." + name] = ["REDACTED" if name in _SECRET_HEADERS else value]
    state = _Request(span, start_response)
    span.start()
    token = _set_current(span)
    return token, state


_hosts: Dict[Tuple[str, str], Tuple[str, int]] = {}


def _server_of(environ: Dict[str, Any]) -> Tuple[str, int]:
    """server.address and server.port as the client addressed them (Host header), else the server's own;
    parsed once per distinct Host (a bounded cache: hostile Host headers cannot grow it past 256)."""
    key = (environ.get("HTTP_HOST") or "", environ.get("wsgi.url_scheme") or "")
    found = _hosts.get(key)
    if found is None:
        found = _parse_server(environ)
        if len(_hosts) < 256:
            _hosts[key] = found
    return found


def _parse_server(environ: Dict[str, Any]) -> Tuple[str, int]:
    host = environ.get("HTTP_HOST") or ""
    if host:
        if host.startswith("["):  # [v6 address]:port
            name, _, rest = host[1:].partition("]")
            port = rest[1:] if rest.startswith(":") else ""
        elif host.count(":") == 1:
            name, _, port = host.partition(":")
        else:
            name, port = host, ""
        return name, int(port) if port.isdigit() else _default_port(environ)
    port = str(environ.get("SERVER_PORT") or "")
    return str(environ.get("SERVER_NAME") or ""), int(port) if port.isdigit() else 0


def _default_port(environ: Dict[str, Any]) -> int:
    return 443 if environ.get("wsgi.url_scheme") == "https" else 80


class _Request:
    """One request's span bookkeeping: the status from start_response, the end of the body."""

    __slots__ = ("span", "real_start_response", "status_code", "done", "token", "thread")

    def __init__(self, span: Span, start_response: Callable[..., Any]) -> None:
        self.span = span
        self.real_start_response = start_response
        self.status_code = 0
        self.done = False
        self.token: Any = None
        self.thread = get_ident()

    def start_response(self, status: str, headers: List[Tuple[str, str]], exc_info: Any = None) -> Any:
        try:
            code = int(str(status)[:3])
            self.status_code = code
            span = self.span
            if span._sampled:
                span.attributes["http.response.status_code"] = code
                if code >= 500:
                    span.set_status("error")
                    span.attributes.setdefault("error.type", str(code))
                for name, value in headers:
                    lower = name.lower()
                    if lower == "content-length" and str(value).isdigit():
                        span.attributes["http.response.body.size"] = int(value)
                    if lower in _CAPTURE_RESPONSE:
                        key = "http.response.header." + lower
                        shown = "REDACTED" if lower in _SECRET_HEADERS else str(value)
                        span.attributes[key] = span.attributes.get(key, []) + [shown]
        except Exception:
            pass
        if _RESPONSE_HEADERS:
            headers = self._with_trace_headers(headers)
        if exc_info is not None:  # as the server's own start_response would: re-raise if already sent
            return self.real_start_response(status, headers, exc_info)
        return self.real_start_response(status, headers)

    def _with_trace_headers(self, headers: List[Tuple[str, str]]) -> List[Tuple[str, str]]:
        """AUTOINSTR_TRACE_RESPONSE_HEADER: `traceresponse` (W3C Trace Context level 2) and Server-Timing,
        so a browser's developer tools show the trace id and the server's time to the first byte."""
        try:
            span = self.span
            context = span.context
            value = "00-%032x-%016x-%s" % (context.trace_id, context.span_id, "01" if context.sampled else "00")
            elapsed_ms = span.duration_ns / 1e6 if span.sampled else 0.0
            timing = 'app;dur=%.1f;desc="trace %032x"' % (elapsed_ms, context.trace_id)
            return list(headers) + [("traceresponse", value), ("Server-Timing", timing)]
        except Exception:
            return headers

    def fail(self, exc: BaseException) -> None:
        span = self.span
        span.record_exception(exc)
        if span.sampled and not self.status_code:
            span.attributes["http.response.status_code"] = 500
        self.finish()

    def finish(self) -> None:
        if not self.done:
            self.done = True
            token, self.token = self.token, None
            if token is not None:
                try:
                    _reset_current(token)
                except ValueError:  # finished from another context (a server's writer thread): its own
                    pass
            self.span.finish()
            if _statsd.enabled:
                _statsd.server_request(self.span, self.status_code)

    def body(self, result: Any, environ: Dict[str, Any]) -> Any:
        file_wrapper = environ.get("wsgi.file_wrapper")
        if isinstance(file_wrapper, type) and isinstance(result, file_wrapper):
            return self._hook_close(result)  # keep the server's sendfile path
        if hasattr(result, "__len__"):
            return _SizedBody(result, self)
        return _Body(result, self)

    def _hook_close(self, result: Any) -> Any:
        original = getattr(result, "close", None)

        def close() -> None:
            try:
                if original is not None:
                    original()
            finally:
                self.finish()
        try:
            result.close = close
        except Exception:
            self.finish()  # cannot know when it ends: end the span now rather than never
        return result


class _Body:
    """The app's response iterable, timed: the span ends when it is exhausted or closed. While the
    server pulls chunks, the request's span is current, so spans made by a streaming generator are its
    children."""

    __slots__ = ("_result", "_request", "_iterator")

    def __init__(self, result: Iterable[bytes], request: _Request) -> None:
        self._result = result
        self._request = request
        self._iterator: Optional[Iterator[bytes]] = None

    def __iter__(self) -> _Body:
        return self

    def __next__(self) -> bytes:
        request = self._request
        # The request's span is current here already (the app's generator may have made one of its own
        # spans current across a yield: that is its business), unless the server sends the body from
        # another thread: then the span is made current around each chunk.
        token = _set_current(request.span) if get_ident() != request.thread else None
        try:
            if self._iterator is None:
                self._iterator = iter(self._result)
            return next(self._iterator)
        except StopIteration:
            request.finish()
            raise
        except BaseException as exc:
            request.span.record_exception(exc)
            request.finish()
            raise
        finally:
            if token is not None:
                _reset(token)

    def close(self) -> None:
        try:
            close = getattr(self._result, "close", None)
            if close is not None:
                close()
        finally:
            self._request.finish()

    def __getattr__(self, name: str) -> Any:
        return getattr(self._result, name)


class _SizedBody(_Body):
    __slots__ = ()

    def __len__(self) -> int:
        return len(self._result)  # type: ignore[arg-type]
