"""Outgoing HTTP: the mechanics shared by the client integrations (requests, urllib3, http.client and
urllib.request, httpx, aiohttp).

One *logical request* (what the app asked for: `requests.get`, `urlopen`, `client.send`, `session.get`) is
one client span, made by the outermost instrumented layer. While that layer runs, `_active` holds its
`Call`; the layers it calls (requests -> urllib3 -> http.client) see it and make no span of their own.

- **Redirects and retries** followed inside the logical request are part of its one span (its status is the
  final response's); `http.request.resend_count` says how many extra requests went on the wire. Every attempt
  carries the same trace context (the logical span's id), so the callee's server spans are all its children.
  Documented in the README.
- **Injection**: the configured propagators (autoinstr.trace.propagation.inject, the code that also serves
  `autoinstr.inject`) write their headers into every attempt, sampled or not. For everything built on
  http.client the headers are added on the wire (`HTTPConnection.endheaders`), never into a mapping the app
  owns; httpx and aiohttp get a copy of the request's headers with them added. A propagator whose headers the
  app set itself is skipped: the app's own values go out unchanged.
- **The span ends** with the response body: at once when it was read inside the call, else when the app has
  read it to the end or closed the response (a streamed body is timed whole, and reading it still works).
- **Status**: http.response.status_code; 4xx and 5xx make the span an error with error.type = the status code
  (OpenTelemetry's HTTP client rules); an exception (connection refused, timeout) is recorded with its type and
  reaches the app unchanged.
- **The agent's own traffic** (the export thread marks its context suppressed) is neither traced nor injected.

Every wrapper keeps the agent's failures to itself: if describing or starting the span fails, the wrapped call
runs untouched.
"""

from __future__ import annotations

import functools
import importlib
from contextvars import ContextVar

from autoinstr.integrations import _suppressed
from autoinstr.integrations._wsgi import KNOWN_METHODS, NamePool, redact_query
from autoinstr.trace.propagation import inject
from autoinstr.trace.span import Span, _clock

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any, Awaitable, Callable, Dict, FrozenSet, Iterable, Optional, Tuple

    Describe = Callable[[Any, tuple, dict], Optional[Tuple[str, str]]]
    Settle = Callable[["Call", Any], None]
    Prepare = Callable[["Call", Any, tuple, dict], Tuple[tuple, dict]]
    ErrorStatus = Callable[[BaseException], Optional[int]]

DEFAULT_PORTS = {"http": 80, "https": 443, "ws": 80, "wss": 443}
# every header a propagator writes, lowercased -> its family; the app setting any header of a family means
# it propagates that family itself (B3 single and multi are one family: two B3 contexts would conflict)
_FAMILY = {"traceparent": "w3c", "tracestate": "w3c", "baggage": "baggage", "b3": "b3", "x-b3-traceid": "b3",
           "x-b3-spanid": "b3", "x-b3-sampled": "b3", "x-b3-flags": "b3", "x-b3-parentspanid": "b3"}
_FAMILY_BYTES = {k.encode(): v for k, v in _FAMILY.items()}
_LONGEST = max(len(k) for k in _FAMILY)
_NONE: FrozenSet[str] = frozenset()

_active: ContextVar[Optional[Call]] = ContextVar("autoinstr.http_call", default=None)
_active_get = _active.get
_active_set = _active.set
_active_reset = _active.reset
_suppressed_get = _suppressed.get


# ------------------------------------------------------------------------------------ URLs, names

_netlocs: Dict[Tuple[str, str], Tuple[str, str, int]] = {}


_urls: Dict[str, Tuple[str, str, int]] = {}


def describe_url(url: str) -> Tuple[str, str, int]:
    """-> (url.full, server.address, server.port): credentials (user:password@) removed, the values of
    secret-looking query keys replaced by REDACTED (autoinstr.integrations._wsgi.redact_query). The URLs an
    app calls again and again are looked up, not parsed (a bounded cache)."""
    found = _urls.get(url)
    if found is None:
        found = _describe_url(url)
        if len(_urls) < 1024:
            _urls[url] = found
    return found


def _describe_url(url: str) -> Tuple[str, str, int]:
    scheme, sep, rest = url.partition("://")
    if not sep:
        return _redact_tail(url), "", 0
    scheme = scheme.lower()
    end = len(rest)
    for ch in "/?#":
        i = rest.find(ch)
        if 0 <= i < end:
            end = i
    netloc, tail = rest[:end], rest[end:]
    key = (scheme, netloc)
    found = _netlocs.get(key)
    if found is None:
        found = _parse_netloc(scheme, netloc)
        if len(_netlocs) < 256:  # bounded: a crawler's hosts cannot grow it
            _netlocs[key] = found
    clean, host, port = found
    return scheme + "://" + clean + (_redact_tail(tail) if tail else ""), host, port


def _redact_tail(tail: str) -> str:
    """Path, query and fragment with the query's secret values redacted."""
    q = tail.find("?")
    if q < 0:
        return tail
    h = tail.find("#")
    if 0 <= h < q:  # the "?" is in the fragment
        return tail
    query = tail[q + 1:h] if h >= 0 else tail[q + 1:]
    redacted = redact_query(query)
    if redacted == query:
        return tail
    return tail[:q + 1] + redacted + (tail[h:] if h >= 0 else "")


def _parse_netloc(scheme: str, netloc: str) -> Tuple[str, str, int]:
    hostport = netloc.rpartition("@")[2]  # credentials never leave this function
    if hostport.startswith("["):  # [v6 address]:port
        close = hostport.find("]")
        host = hostport[1:close] if close > 0 else hostport[1:]
        rest = hostport[close + 1:] if close > 0 else ""
        port_text = rest[1:] if rest.startswith(":") else ""
    else:
        host, _, port_text = hostport.partition(":")
    port = int(port_text) if port_text.isdigit() else DEFAULT_PORTS.get(scheme, 0)
    return hostport, host.lower(), port


def join_url(scheme: str, host: str, port: Optional[int], target: str) -> str:
    """An absolute URL from a connection's parts and a request target (kept as is if already absolute)."""
    if target[:7].lower() == "http://" or target[:8].lower() == "https://":
        return target
    if ":" in host and not host.startswith("["):
        host = "[%s]" % host
    if port and port != DEFAULT_PORTS.get(scheme):
        host = "%s:%d" % (host, port)
    if target and not target.startswith("/") and target != "*":
        target = "/" + target
    return "%s://%s%s" % (scheme, host, target)


_names: Dict[Tuple[str, str], str] = {}


def span_name(method: str, host: str) -> str:
    """`METHOD host` (`HTTP host` for an unknown method), from the process's bounded name pool."""
    key = (method, host)
    name = _names.get(key)
    if name is None:
        name = NamePool.name("%s %s" % (method, host) if host else method)
        if len(_names) < NamePool.limit:
            _names[key] = name
    return name


# ------------------------------------------------------------------------------------------ a call

class Call:
    """One logical request: its client span (started, not made current: nothing below it makes spans) and
    the number of requests put on the wire for it."""

    __slots__ = ("span", "attempts")

    def __init__(self, method: str, url: str) -> None:
        self.attempts = 0
        known = method in KNOWN_METHODS
        span = self.span = Span(method if known else "HTTP", kind="client")
        if span._sampled:
            full, host, port = describe_url(url)
            attrs = span.attributes
            attrs["http.request.method"] = method if known else "_OTHER"
            if not known:
                attrs["http.request.method_original"] = method
            attrs["url.full"] = full
            if host:
                attrs["server.address"] = host
                span.name = span_name(method if known else "HTTP", host)
            if port:
                attrs["server.port"] = port
            span.end_ns = 0  # what start() and finish() would otherwise look up through Span.__getattr__
            span.start_ns = _clock()

    def respond(self, status: Any, resends: int = -1) -> None:
        """The final response's status (4xx/5xx: an error, error.type the code) and the resend count."""
        span = self.span
        if not span._sampled:
            return
        attrs = span.attributes
        if isinstance(status, int):
            attrs["http.response.status_code"] = status
            if status >= 400:
                span._status = "error"
                attrs["error.type"] = str(status)
        count = resends if resends >= 0 else self.attempts - 1
        if count > 0:
            attrs["http.request.resend_count"] = count

    def fail(self, exc: BaseException, status: Optional[int] = None) -> None:
        """The request ended in an exception (the app gets it unchanged): record it and end the span. An
        exception that carries an error response (urllib's HTTPError) is recorded as that status."""
        span = self.span
        if span._sampled:
            if status is not None and status >= 400:
                self.respond(status)
            else:
                span.record_exception(exc)
                if self.attempts > 1:
                    span.attributes["http.request.resend_count"] = self.attempts - 1
        span.finish()

    def end(self) -> None:
        self.span.finish()  # a second call does nothing


def traced_call(wrapped: Callable[..., Any], instance: Any, args: tuple, kwargs: dict, describe: Describe,
                settle: Settle, prepare: Optional[Prepare] = None, error_status: Optional[ErrorStatus] = None) -> Any:
    """Run one logical request in a client span, unless the agent's own traffic or an outer layer's.

    describe(instance, args, kwargs) -> (method, url), or None for what is not HTTP; prepare(call, instance,
    args, kwargs) -> (args, kwargs) with the trace headers added (for clients not built on http.client);
    settle(call, result) records the response and ends the span (now, or when the body is done)."""
    if _suppressed_get() or _active_get() is not None:
        return wrapped(*args, **kwargs)
    try:
        what = describe(instance, args, kwargs)
        if what is None:
            return wrapped(*args, **kwargs)
        call = Call(*what)
    except Exception:
        return wrapped(*args, **kwargs)
    if prepare is not None:
        try:
            args, kwargs = prepare(call, instance, args, kwargs)
        except Exception:
            pass
    token = _active_set(call)
    try:
        result = wrapped(*args, **kwargs)
    except BaseException as exc:
        _reset(token)
        _fail(call, exc, error_status)
        raise
    _reset(token)
    try:
        settle(call, result)
    except Exception:
        call.end()
    return result


async def traced_call_async(wrapped: Callable[..., Awaitable[Any]], instance: Any, args: tuple, kwargs: dict,
                            describe: Describe, settle: Settle, prepare: Optional[Prepare] = None,
                            error_status: Optional[ErrorStatus] = None) -> Any:
    """traced_call for a coroutine method: the span starts when the request is awaited, in the awaiting task."""
    if _suppressed_get() or _active_get() is not None:
        return await wrapped(*args, **kwargs)
    try:
        what = describe(instance, args, kwargs)
        call = Call(*what) if what is not None else None
    except Exception:
        call = None
    if call is None:
        return await wrapped(*args, **kwargs)
    if prepare is not None:
        try:
            args, kwargs = prepare(call, instance, args, kwargs)
        except Exception:
            pass
    token = _active_set(call)
    try:
        result = await wrapped(*args, **kwargs)
    except BaseException as exc:
        _reset(token)
        _fail(call, exc, error_status)
        raise
    _reset(token)
    try:
        settle(call, result)
    except Exception:
        call.end()
    return result


def _reset(token: Any) -> None:
    try:
        _active_reset(token)
    except ValueError:  # reset from another context than it was set in: forget the call there
        _active_set(None)


def _fail(call: Call, exc: BaseException, error_status: Optional[ErrorStatus]) -> None:
    try:
        status = error_status(exc) if error_status is not None else None
        call.fail(exc, status)
    except Exception:
        call.end()


# ----------------------------------------------------------------------------------- header helpers

def headers_to_add(span: Span, present_names: Iterable[str] = ()) -> Dict[str, str]:
    """The configured propagators' headers for `span`, less the families the app already sets itself."""
    headers = inject({}, span)
    present = {_FAMILY[n] for n in (name.lower() for name in present_names) if n in _FAMILY}
    if present and headers:
        headers = {k: v for k, v in headers.items() if _FAMILY.get(k.lower()) not in present}
    return headers


# --------------------------------------------------------------------- http.client: the wire level

_OWNED = "_autoinstr_call"  # on a connection: its own call (http.client used directly), until getresponse()
_BODY = "_autoinstr_body"  # on a response: the call that ends with this body


class Wire:
    """The http.client hooks, shared: whichever of the requests, urllib3 and httpclient integrations is
    patched first installs them, so injection works whatever the app disables. Only with the httpclient
    integration on does a connection used directly (no outer layer) make a span of its own.

    Three hooks, each an attribute lookup or two when there is nothing to do: endheaders() (the request line
    and the app's headers are buffered, nothing is sent yet: count the attempt, add the trace headers, start a
    span of its own), getresponse() (the status of a span of its own) and HTTPResponse._close_conn() (the body
    was read to its end, or the response closed: close() and the garbage collector go through it).

    They run on every request an app makes, so they are plain functions put on the classes (a wrapt
    wrapper costs about a microsecond more per call here), each calling the function it replaced; and they
    read and set their marks with getattr/setattr, never through `__dict__` (which would turn the objects'
    compact attribute storage into a dict for good, slowing every later attribute access on them)."""

    installed = False
    own_spans = False
    response_class: Any = None
    replaced: Dict[Tuple[Any, str], Any] = {}


def install_wire() -> None:
    """Hook http.client's request and response steps (once per process)."""
    if Wire.installed:
        return
    # from sys.modules: when http.client's own post-import hook runs, `http.client` is not yet an attribute
    # of the `http` package
    module = importlib.import_module("http.client")
    global _real_endheaders, _real_getresponse, _real_close_conn
    conn, resp = module.HTTPConnection, module.HTTPResponse
    _real_endheaders = conn.__dict__["endheaders"]
    _real_getresponse = conn.__dict__["getresponse"]
    _real_close_conn = resp.__dict__["_close_conn"]
    for cls, name, hook, real in ((conn, "endheaders", _endheaders, _real_endheaders),
                                  (conn, "getresponse", _getresponse, _real_getresponse),
                                  (resp, "_close_conn", _close_conn, _real_close_conn)):
        functools.update_wrapper(hook, real)  # name, docstring, __wrapped__ (and so the signature) of the real one
        Wire.replaced[(cls, name)] = hook
        setattr(cls, name, hook)
    Wire.response_class = resp
    Wire.installed = True


def uninstall_wire() -> None:
    """Undo install_wire (tests, benchmarks); a hook someone else has replaced since is left alone."""
    if not Wire.installed:
        return
    for (cls, name), hook in list(Wire.replaced.items()):
        if cls.__dict__.get(name) is hook:
            setattr(cls, name, hook.__wrapped__)
    Wire.replaced.clear()
    Wire.installed = False


def end_with_body(call: Call, response: Any) -> None:
    """End `call` when this http.client response's body has been read to its end or the response closed;
    now if it already is, or if the object is not an http.client response (then its body cannot be watched)."""
    cls = Wire.response_class
    if (cls is not None and isinstance(response, cls) and response.fp is not None and response.length != 0
            and Wire.installed):
        setattr(response, _BODY, call)
    else:
        call.end()


def _real_endheaders(self: Any, *args: Any, **kwargs: Any) -> Any:  # replaced by install_wire
    raise NotImplementedError


_real_getresponse = _real_close_conn = _real_endheaders


def _endheaders(self: Any, *args: Any, **kwargs: Any) -> Any:
    if _suppressed_get():
        return _real_endheaders(self, *args, **kwargs)
    call = _active_get()
    if call is not None:  # one attempt of an outer layer's logical request
        call.attempts += 1
        try:
            _inject_buffered(self, call.span)
        except Exception:
            pass
        return _real_endheaders(self, *args, **kwargs)
    if not Wire.own_spans:
        return _real_endheaders(self, *args, **kwargs)
    stale = getattr(self, _OWNED, None)
    if stale is not None:  # the previous request on this connection never got to getresponse()
        setattr(self, _OWNED, None)
        stale.end()
    try:
        call = Call(*_buffered_request(self))
    except Exception:
        return _real_endheaders(self, *args, **kwargs)
    try:
        _inject_buffered(self, call.span)
    except Exception:
        pass
    try:
        result = _real_endheaders(self, *args, **kwargs)  # connects and sends: a refused connection fails here
    except BaseException as exc:
        call.fail(exc)
        raise
    setattr(self, _OWNED, call)
    return result


def _buffered_request(conn: Any) -> Tuple[str, str]:
    """(method, absolute URL) of the request putrequest() buffered: b"GET /path HTTP/1.1"."""
    method, target = conn._buffer[0].decode("latin-1").split(" ", 2)[:2]
    tunnel = getattr(conn, "_tunnel_host", None)  # through a proxy's CONNECT: the real destination
    host, port = (tunnel, getattr(conn, "_tunnel_port", None)) if tunnel else (conn.host, conn.port)
    scheme = "https" if getattr(conn, "default_port", 80) == 443 else "http"
    return method, join_url(scheme, str(host), port, target)


def _inject_buffered(conn: Any, span: Span) -> None:
    """Add the trace headers to the request being built, unless the app put a header of the same family."""
    headers = inject({}, span)
    if not headers:
        return
    buffer = getattr(conn, "_buffer", None)
    present = _buffered_families(buffer)
    # straight into the buffer, as putheader() would put them (our names and values are plain ASCII tokens,
    # checked when they were parsed or made): putheader's checks cost more than the rest of the injection
    add = buffer.append if buffer.__class__ is list else None
    for name, value in headers.items():
        if present is _NONE or _FAMILY.get(name.lower()) not in present:
            if add is not None:
                add(("%s: %s" % (name, value)).encode("latin-1"))
            else:
                conn.putheader(name, value)


_MARKERS = tuple((("\n%s:" % name).encode(), family) for name, family in _FAMILY.items())


def _buffered_families(buffer: Any) -> FrozenSet[str]:
    """Families of the trace headers among the header lines http.client has buffered (b"Name: value"),
    searched in one lowercased copy of the head (C loops, not Python ones)."""
    if not buffer:
        return _NONE
    head = b"\n".join(buffer).lower()
    if b"\nt" not in head and b"\nb" not in head and b"\nx-b3" not in head:
        return _NONE
    found = {family for marker, family in _MARKERS if marker in head}
    return frozenset(found) if found else _NONE


def _getresponse(self: Any, *args: Any, **kwargs: Any) -> Any:
    call = getattr(self, _OWNED, None)
    if call is None:
        return _real_getresponse(self, *args, **kwargs)
    setattr(self, _OWNED, None)
    try:
        response = _real_getresponse(self, *args, **kwargs)
    except BaseException as exc:  # timeouts waiting for the answer land here
        call.fail(exc)
        raise
    try:
        call.respond(response.status)
        end_with_body(call, response)
    except Exception:
        call.end()
    return response


def _close_conn(self: Any, *args: Any, **kwargs: Any) -> Any:
    """HTTPResponse._close_conn: the body was read to its end, or the response closed (by the app, or by the
    garbage collector): the call watching it ends."""
    try:
        return _real_close_conn(self, *args, **kwargs)
    finally:
        try:
            call = getattr(self, _BODY, None)
            if call is not None:
                setattr(self, _BODY, None)
                call.end()
        except Exception:  # also runs from the garbage collector, at interpreter exit too
            pass
