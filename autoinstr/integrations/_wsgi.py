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

from _thread import get_ident
from time import perf_counter_ns as _clock  # the spans' clock (autoinstr.trace.span)
from typing import Any, Callable, Dict, Iterator, List, Optional, Tuple
from urllib.parse import unquote_plus

from autoinstr import config
from autoinstr.export import statsd as _statsd
from autoinstr.integrations import _suppressed
from autoinstr.trace.propagation import extract
from autoinstr.trace.span import Span, current_span_var

ENVIRON_KEY = "autoinstr.span"
KNOWN_METHODS = frozenset(("GET", "HEAD", "POST", "PUT", "DELETE", "CONNECT", "OPTIONS", "TRACE", "PATCH"))
_SECRET_KEY: Any = None  # compiled at the first query string (re.compile at import: start-up time for all)
_RESPONSE_HEADERS = config.get().trace_response_header
# headers recorded only when allow-listed (AUTOINSTR_HTTP_REQUEST_HEADERS / _RESPONSE_HEADERS); credentials
# among them are recorded as REDACTED even then
_CAPTURE_REQUEST = tuple((name, "CONTENT_TYPE" if name == "content-type" else "CONTENT_LENGTH"
                          if name == "content-length" else "HTTP_" + name.upper().replace("-", "_"))
                         for name in config.get().http_request_headers)
_CAPTURE_RESPONSE = frozenset(config.get().http_response_headers)
_SECRET_HEADERS = frozenset(("authorization", "proxy-authorization", "cookie", "set-cookie", "x-api-key",
                             "x-auth-token", "x-csrf-token", "x-xsrf-token"))
_suppressed_get = _suppressed.get  # is_suppressed(), without the call
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
    global _SECRET_KEY
    if _SECRET_KEY is None:
        import re

        _SECRET_KEY = re.compile(r"pass|pwd|token|key|secret|auth|session|credential|signature|sig$|code", re.I)
    secret = _SECRET_KEY.search
    parts = []
    for part in query.split("&"):
        key, eq, _value = part.partition("=")
        if eq and (secret(key) or ("%" in key or "+" in key) and secret(unquote_plus(key))):
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
    """`app` traced (the same object back if it already is, or if its framework makes the span itself)."""
    if app is None or isinstance(app, TracedApp) or getattr(app, "__autoinstr_wsgi__", False) \
            or _makes_its_span(app):
        return app
    return TracedApp(app)


# The framework __call__s that wsgi_method made: their apps make the server span themselves, so a server
# serves them unwrapped (a wrapper would only pass through, at a frame and a lookup per request).
_span_making_calls: List[Any] = []


def _makes_its_span(app: Any) -> bool:
    for klass in type(app).__mro__:
        call = klass.__dict__.get("__call__")
        if call is not None:
            return any(call is made for made in _span_making_calls)
    return False


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


def _call_traced(app: Callable[..., Any], environ: Dict[str, Any], start_response: Callable[..., Any]) -> Any:
    """Run one WSGI call of `app` inside a server span (unless an outer wrapper already made one)."""
    if ENVIRON_KEY in environ or _suppressed_get():
        return app(environ, start_response)
    try:  # (the span's start, inline: this runs on every request)
        span = _server_span(environ)
        response = _Response(span, start_response)
        span.start_ns = _clock()  # (span.start() without its checks: a new span; unsampled too, for statsd)
        token = _set_current(span)
    except Exception:  # the agent failing must not fail the request
        return app(environ, start_response)
    try:
        result = app(environ, response._start_response)
    except BaseException as exc:
        _reset(token)
        _fail_response(response, exc)
        raise
    # The span stays current until the body is done (see _Response._finish): the server sends the body in
    # this same context, and every contextvar write would also cost the app's own contextvars (Flask's)
    # their lookup cache.
    response._token = token
    return response._answer(result, environ)


def wsgi_method(original: Callable[..., Any]) -> Callable[..., Any]:
    """A framework's `__call__(self, environ, start_response)` that makes the server span, so apps served
    by a server we do not know are traced too. A plain function (see _wrapping.replace): a wrapt wrapper
    costs more than half a microsecond on every request."""

    def __call__(self: Any, environ: Any, start_response: Any, *args: Any, **kwargs: Any) -> Any:
        if args or kwargs:
            return original(self, environ, start_response, *args, **kwargs)
        return call_traced(original.__get__(self), environ, start_response)

    hook = _compiled("wsgi_method_hook") if call_traced is not _call_traced else None
    made = hook(__call__, original) if hook is not None else __call__  # (compiled: the same without the frame)
    _span_making_calls.append(made)
    return made


def serving_app_argument(position: int, name: str) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """For _wrapping.replace: a server's function or method (`self` counted in `position`) whose WSGI app,
    passed at `position` or as `name`, is served traced."""

    def make(original: Callable[..., Any]) -> Callable[..., Any]:
        def serve(*args: Any, **kwargs: Any) -> Any:
            try:
                if name in kwargs:
                    kwargs[name] = wrap_app(kwargs[name])  # (a dict of this call's own)
                elif len(args) > position:
                    args = args[:position] + (wrap_app(args[position]),) + args[position + 1:]
            except Exception:
                pass
            return original(*args, **kwargs)

        return serve

    return make


def _reset(token: Any) -> None:
    try:
        _reset_current(token)
    except ValueError:
        _set_current(None)


def _server_span(environ: Dict[str, Any]) -> Span:
    """The request's server span, not started: the incoming trace context continued, the attributes set."""
    # most requests carry no trace context: four dict lookups instead of the propagators' parsing
    carries = ("HTTP_TRACEPARENT" in environ or "HTTP_B3" in environ or "HTTP_X_B3_TRACEID" in environ
               or "HTTP_BAGGAGE" in environ)
    ctx = extract(environ, _environ_header) if carries else None
    raw_method = environ.get("REQUEST_METHOD") or "GET"
    method = raw_method if raw_method in KNOWN_METHODS else "_OTHER"
    span = Span(method if method != "_OTHER" else "HTTP", kind="server", parent=ctx)
    environ[ENVIRON_KEY] = span
    if span._sampled:
        # one dict built at once: the method, the path, then what every request of its connection shares
        attrs = span.attributes = {"http.request.method": method, "url.path": environ.get("PATH_INFO") or "/",
                                   **_connection_attributes(environ)}
        if method == "_OTHER":
            attrs["http.request.method_original"] = raw_method
        query = environ.get("QUERY_STRING")
        if query:
            attrs["url.query"] = redact_query(query)
        agent = environ.get("HTTP_USER_AGENT")
        if agent:
            attrs["user_agent.original"] = agent
        length = environ.get("CONTENT_LENGTH")
        if length and length.isdigit():
            attrs["http.request.body.size"] = int(length)
        for name, key in _CAPTURE_REQUEST:
            value = environ.get(key)
            if isinstance(value, str):
                attrs["http.request.header." + name] = ["REDACTED" if name in _SECRET_HEADERS else value]
    return span


_connections: Dict[Tuple[Any, Any, Any, Any], Dict[str, Any]] = {}


def _connection_attributes(environ: Dict[str, Any]) -> Dict[str, Any]:
    """url.scheme, server.address and server.port (as the client addressed them: the Host header, else
    the server's own), network.protocol.version and client.address: the same for every request of a
    (Host, scheme, protocol, client), so worked out once each (a bounded cache: hostile Host headers or many
    clients cannot grow it past 1024; beyond that, worked out each time)."""
    key = (environ.get("HTTP_HOST"), environ.get("wsgi.url_scheme"), environ.get("SERVER_PROTOCOL"),
           environ.get("REMOTE_ADDR"))
    found = _connections.get(key)
    if found is None:
        host, port = _parse_server(environ)
        found = {"url.scheme": environ.get("wsgi.url_scheme") or "http"}
        if host:
            found["server.address"] = host
        if port:
            found["server.port"] = port
        protocol = environ.get("SERVER_PROTOCOL") or ""
        if protocol.__class__ is str and protocol.startswith("HTTP/"):
            found["network.protocol.version"] = protocol[5:]
        client = environ.get("REMOTE_ADDR")
        if client:
            found["client.address"] = client
        if len(_connections) < 1024:
            _connections[key] = found
    return found


def _server_of(environ: Dict[str, Any]) -> Tuple[str, int]:
    """server.address and server.port as the client addressed them (Host header), else the server's own."""
    found = _connection_attributes(environ)
    return found.get("server.address", ""), found.get("server.port", 0)


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


# ------------------------------------------------ shared by _Response and its compiled twin (rare paths)

def _record_response(span: Span, code: int, headers: List[Tuple[str, str]]) -> None:
    """A sampled span's part of start_response: the status (5xx: an error), the body size, allow-listed
    headers."""
    attrs = span.attributes
    attrs["http.response.status_code"] = code
    if code >= 500:
        span.set_status("error")
        attrs.setdefault("error.type", str(code))
    for name, value in headers:
        # most headers are neither Content-Length nor allow-listed: no lower() for them
        if len(name) == 14 and name.lower() == "content-length" and str(value).isdigit():
            attrs["http.response.body.size"] = int(value)
        if _CAPTURE_RESPONSE:
            lower = name.lower()
            if lower in _CAPTURE_RESPONSE:
                key = "http.response.header." + lower
                shown = "REDACTED" if lower in _SECRET_HEADERS else str(value)
                attrs[key] = attrs.get(key, []) + [shown]


def _trace_headers(span: Span, headers: List[Tuple[str, str]]) -> List[Tuple[str, str]]:
    """AUTOINSTR_TRACE_RESPONSE_HEADER: `traceresponse` (W3C Trace Context level 2) and Server-Timing, so a
    browser's developer tools show the trace id and the server's time to the first byte."""
    try:
        context = span.context
        value = "00-%032x-%016x-%s" % (context.trace_id, context.span_id, "01" if context.sampled else "00")
        elapsed_ms = span.duration_ns / 1e6 if span.sampled else 0.0
        timing = 'app;dur=%.1f;desc="trace %032x"' % (elapsed_ms, context.trace_id)
        return list(headers) + [("traceresponse", value), ("Server-Timing", timing)]
    except Exception:
        return headers


def _fail_response(response: Any, exc: BaseException) -> None:
    """The app raised: the exception on the span (a 500 if no status was sent), the span ended."""
    span = response._span
    span.record_exception(exc)
    if span.sampled and not response._status_code:
        span.attributes["http.response.status_code"] = 500
    response._finish()


def _hook_close(response: Any, result: Any) -> Any:
    """A wsgi.file_wrapper result, returned as is (servers send it with sendfile): its close() ends the span."""
    original = getattr(result, "close", None)

    def close() -> None:
        try:
            if original is not None:
                original()
        finally:
            response._finish()
    try:
        result.close = close
    except Exception:
        response._finish()  # cannot know when it ends: end the span now rather than never
    return result


class _Response:
    """One request's span bookkeeping (the status from start_response, the end of the body) and, once the
    app has answered, its response iterable, timed: the span ends when it is exhausted or closed. One
    object per request. Its own names start with `_`: any other attribute is the app's result's.
    While the server pulls chunks, the request's span is current, so spans made by a streaming
    generator are its children."""

    __slots__ = ("_span", "_real_start_response", "_status_code", "_done", "_token", "_thread", "_result")

    def __init__(self, span: Span, start_response: Callable[..., Any]) -> None:
        self._span = span
        self._real_start_response = start_response
        self._status_code = 0
        self._done = False
        self._token: Any = None
        self._thread = get_ident()

    def _start_response(self, status: str, headers: List[Tuple[str, str]], exc_info: Any = None) -> Any:
        try:
            code = int(status[:3] if status.__class__ is str else str(status)[:3])
            self._status_code = code
            span = self._span
            if span._sampled:
                _record_response(span, code, headers)
        except Exception:
            pass
        if _RESPONSE_HEADERS:
            headers = _trace_headers(self._span, headers)
        if exc_info is not None:  # as the server's own start_response would: re-raise if already sent
            return self._real_start_response(status, headers, exc_info)
        return self._real_start_response(status, headers)

    def _finish(self) -> None:
        if not self._done:
            self._done = True
            token, self._token = self._token, None
            if token is not None:
                try:
                    _reset_current(token)
                except ValueError:  # finished from another context (a server's writer thread): its own
                    pass
            self._span.finish()
            if _statsd.enabled:
                _statsd.server_request(self._span, self._status_code)

    def _answer(self, result: Any, environ: Dict[str, Any]) -> Any:
        """What the server gets: this object around `result`, or a wsgi.file_wrapper result itself."""
        file_wrapper = environ.get("wsgi.file_wrapper")
        if file_wrapper is not None and isinstance(file_wrapper, type) and isinstance(result, file_wrapper):
            return _hook_close(self, result)  # keep the server's sendfile path
        self._result = result
        if hasattr(result, "__len__"):  # servers use len() for Content-Length: keep it
            self.__class__ = _SizedResponse
        return self

    def __iter__(self) -> Iterator[bytes]:
        # A generator: the chunks pass through `yield from` without a Python call of ours per chunk, and
        # the end of the body is its return, not a StopIteration raised through our code.
        # The request's span is current here already (the app's generator may have made one of its own
        # spans current across a yield: that is its business), unless the server sends the body from
        # another thread (see _chunks_elsewhere).
        if get_ident() != self._thread:
            yield from self._chunks_elsewhere()
            return
        try:
            yield from self._result
        except GeneratorExit:  # the server stopped iterating: the span ends at close(), as servers must call it
            raise
        except BaseException as exc:
            self._span.record_exception(exc)
            self._finish()
            raise
        self._finish()

    def _chunks_elsewhere(self) -> Iterator[bytes]:
        """The body sent from another thread than the app's: the span is made current around each chunk."""
        iterator = iter(self._result)
        while True:
            token = _set_current(self._span)
            try:
                chunk = next(iterator)
            except GeneratorExit:
                raise
            except StopIteration:
                self._finish()
                return
            except BaseException as exc:
                self._span.record_exception(exc)
                self._finish()
                raise
            finally:
                _reset(token)
            yield chunk

    def close(self) -> None:
        try:
            close = getattr(self._result, "close", None)
            if close is not None:
                close()
        finally:
            self._finish()

    def __getattr__(self, name: str) -> Any:
        if name.startswith("_") and name in _Response.__slots__:  # a slot not set yet: not the result's
            raise AttributeError(name)
        return getattr(self._result, name)


class _SizedResponse(_Response):
    __slots__ = ()

    def __len__(self) -> int:
        return len(self._result)  # type: ignore[arg-type]


def _run_view(name: str, answered: Callable[[BaseException], bool], parent: Any, call: Callable[..., Any],
              *args: Any, **kwargs: Any) -> Any:
    """call(*args, **kwargs), a framework's view, in a child span of the current one named `name` (code.function
    too); an exception is recorded on it and on the server span `parent`, unless `answered(exc)` (an HTTP answer
    the app chose: abort(404)). Where the span cannot be made, the view runs without it."""
    try:
        view_span = Span(name)
        view_span.attributes["code.function"] = name
        view_span.__enter__()
    except Exception:
        return call(*args, **kwargs)
    try:
        result = call(*args, **kwargs)
    except BaseException as exc:
        _view_failed(view_span, parent, exc, answered)
        _exit_quietly(view_span)
        raise
    _exit_quietly(view_span)
    return result


def _view_failed(view_span: Span, parent: Any, exc: BaseException, answered: Callable[[BaseException], bool]) -> None:
    try:
        if isinstance(exc, Exception) and not answered(exc):
            view_span.record_exception(exc)
            parent.record_exception(exc)
    except Exception:
        pass


def _exit_quietly(span: Span) -> None:
    try:
        span.__exit__(None, None, None)
    except Exception:
        pass


def _compiled(name: str) -> Any:
    """autoinstr._speedups.<name> (_wsgi_call.c), configured, where the compiled span core is in use (the
    same switch: AUTOINSTR_SPEEDUPS); None where it is not."""
    from autoinstr.trace.span import compiled

    found = compiled(name)
    if found is not None:
        compiled("configure_wsgi")(globals(), ENVIRON_KEY, KNOWN_METHODS, _suppressed, _statsd)
    return found


# call_traced(app, environ, start_response): run one WSGI call of `app` inside a server span (unless an outer
# wrapper already made one); compiled where it can be, _call_traced otherwise
call_traced: Callable[[Callable[..., Any], Dict[str, Any], Callable[..., Any]], Any] = (_compiled("wsgi_call")
                                                                                       or _call_traced)
# run_view(name, answered, parent, call, *args, **kwargs): a framework's view in a span of its own (_run_view)
run_view: Callable[..., Any] = _compiled("view_run") or _run_view
