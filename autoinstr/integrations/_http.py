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
import weakref
from contextvars import ContextVar

from autoinstr.export import statsd as _statsd
from autoinstr.integrations import _suppressed
from autoinstr.integrations._wsgi import KNOWN_METHODS, NamePool, redact_query
from autoinstr.trace.propagation import Propagators, format_traceparent, inject
from autoinstr.trace.span import Span, SpanContext, _clock, current_span_var

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
_NONE: FrozenSet[str] = frozenset()
# propagator lists that write a traceparent alone for a new trace's root (no tracestate, no baggage to carry)
_TRACEPARENT_ONLY = (("tracecontext", "baggage"), ("tracecontext",), ("baggage", "tracecontext"))

_active: ContextVar[Optional[Call]] = ContextVar("autoinstr.http_call", default=None)
_active_get = _active.get
_active_set = _active.set
_active_reset = _active.reset
_suppressed_get = _suppressed.get
_current_get = current_span_var.get


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

class _CallCore:
    """Call's slots, __init__ and answered, in Python: its base class where autoinstr._speedups is not built or
    is turned off (AUTOINSTR_SPEEDUPS=false); CallCore (autoinstr/_client_call.c) otherwise."""

    __slots__ = ("span", "attempts", "fresh")

    def __init__(self, method: str, url: str) -> None:
        self.attempts = 0
        known = method in KNOWN_METHODS
        parent = _current_get()
        self.fresh = parent is None  # the span is the root of a new trace: no tracestate, no baggage to pass on
        span = self.span = Span(method if known else "HTTP", kind="client", parent=parent)
        if span._sampled:
            full, host, port = _urls.get(url) or describe_url(url)  # the cache, without a call, when it hits
            if known and host and port:  # the common case, on every request: one dict, built at once
                span.attributes = {"http.request.method": method, "url.full": full, "server.address": host,
                                   "server.port": port}
                span.name = _names.get((method, host)) or span_name(method, host)
            else:
                _rare_attributes(span, method, known, full, host, port)
            span.end_ns = 0  # what start() and finish() would otherwise look up through Span.__getattr__
            span.start_ns = _clock()
        elif _statsd.enabled:  # statsd counts unsampled requests too: their clock and host
            _statsd.client_start(span, describe_url(url)[1])

    def answered(self, status: Any, resends: int = -1) -> None:
        """respond() and end() at once, for a response whose body was read inside the call (the common case).
        A plain success is recorded inline: this runs on every request, where each call made costs several
        times its hot-loop price (the client library's own code has pushed ours out of the caches)."""
        span = self.span
        if span._sampled and status.__class__ is int and status < 400 and (
                resends == 0 or resends < 0 and self.attempts <= 1):
            span.attributes["http.response.status_code"] = status  # all that respond() records then
        else:
            self.respond(status, resends)  # type: ignore[attr-defined]
        if _statsd.enabled:
            _statsd.client_end(span)
        span.finish()


def _rare_attributes(span: Span, method: str, known: bool, full: str, host: str, port: int) -> None:
    """A sampled client span's attributes and name when the method is not a known one or the URL has no host
    or port (Call.__init__'s uncommon case)."""
    attrs = span.attributes
    attrs["http.request.method"] = method if known else "_OTHER"
    if not known:
        attrs["http.request.method_original"] = method
    attrs["url.full"] = full
    if host:
        attrs["server.address"] = host
        name = method if known else "HTTP"
        span.name = _names.get((name, host)) or span_name(name, host)
    if port:
        attrs["server.port"] = port


def _call_base() -> type:
    """CallCore where the compiled span core is in use (the same switch, AUTOINSTR_SPEEDUPS), else _CallCore."""
    from autoinstr.trace.span import compiled

    return compiled("CallCore", _CallCore)  # type: ignore[no-any-return]


class Call(_call_base()):  # type: ignore[misc]
    """One logical request: its client span (started, not made current: nothing below it makes spans) and
    the number of requests put on the wire for it. __init__ and answered() are the base class's."""

    __slots__ = ()

    def respond(self, status: Any, resends: int = -1) -> None:
        """The final response's status (4xx/5xx: an error, error.type the code) and the resend count."""
        span = self.span
        if not span._sampled:
            if _statsd.enabled and isinstance(status, int) and status >= 400:  # statsd counts errors of all calls
                span.attributes["error.type"] = str(status)
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
        if _statsd.enabled:
            _statsd.client_end(span, True)  # finishes the span (once) and records it
        span.finish()

    def end(self) -> None:
        if _statsd.enabled:
            _statsd.client_end(self.span)
        self.span.finish()  # a second call does nothing

    def context(self) -> SpanContext:
        """The span's context, for inject() (see span_context)."""
        span = self.span
        if self.fresh:
            if span._sampled:  # a sampled new trace's root: its own ids are set
                return SpanContext(span._trace_id, span.span_id, True, "", None)
            return SpanContext(span.trace_id, span.span_id, False, "", None)
        return span_context(span)


def hook_method(cls: Any, name: str, describe: Describe, settle: Settle, prepare: Optional[Prepare] = None,
                error_status: Optional[ErrorStatus] = None) -> None:
    """Put on `cls`, in place of its method `name`, a plain function that makes each call one logical request
    in a client span, unless it is the agent's own traffic or an inner layer of a request traced already.

    describe(self, args, kwargs) -> (method, url), or None for what is not HTTP; prepare(call, self, args,
    kwargs) -> (args, kwargs) with the trace headers added (for clients not built on http.client);
    settle(call, result) records the response and ends the span (now, or when the body is done);
    error_status(exc) -> the status an exception carries (urllib's HTTPError), or None.

    A plain function rather than a wrapt wrapper, and all in one frame: these run on every request an app
    makes, and wrapt's bound-wrapper objects and argument repacking cost about two microseconds more per call
    here. It carries the method's name, docstring and `__wrapped__` (inspect.signature sees the real one)."""
    own = name in cls.__dict__  # else inherited: the hook goes on `cls` alone, its bases keep theirs
    real = cls.__dict__[name] if own else getattr(cls, name)
    if getattr(real, "__autoinstr_real__", None) is not None:
        return  # hooked already

    if _compiled is not None:
        hook = _compiled.method_hook(real, describe, settle, prepare, error_status)
    else:
        hook = _python_hook(real, describe, settle, prepare, error_status)
    functools.update_wrapper(hook, real)
    hook.__autoinstr_real__ = real
    hook.__autoinstr_own__ = own
    setattr(cls, name, hook)


def _python_hook(real: Callable[..., Any], describe: Describe, settle: Settle, prepare: Optional[Prepare],
                 error_status: Optional[ErrorStatus]) -> Callable[..., Any]:
    """hook_method's function in Python (the compiled one is _client_call.c's method_hook)."""

    def hook(self: Any, *args: Any, **kwargs: Any) -> Any:
        if _suppressed_get() or _active_get() is not None:  # the agent's own traffic, or an inner layer
            return real(self, *args, **kwargs)
        try:
            what = describe(self, args, kwargs)
            if what is None:
                return real(self, *args, **kwargs)
            call = Call(*what)
        except Exception:
            return real(self, *args, **kwargs)
        if prepare is not None:
            try:
                args, kwargs = prepare(call, self, args, kwargs)
            except Exception:
                pass
        token = _active_set(call)
        try:
            result = real(self, *args, **kwargs)
        except BaseException as exc:
            _reset(token)
            _fail(call, exc, error_status)
            raise
        try:
            _active_reset(token)
        except ValueError:  # reset from another context than it was set in: forget the call there
            _active_set(None)
        try:
            settle(call, result)
        except Exception:
            call.end()
        return result

    return hook


def unhook_method(cls: Any, name: str) -> None:
    """Undo hook_method; does nothing if the method is not hooked (or was replaced again since)."""
    hook = cls.__dict__.get(name)
    real = getattr(hook, "__autoinstr_real__", None)
    if real is not None:
        if hook.__autoinstr_own__:
            setattr(cls, name, real)
        else:
            delattr(cls, name)


async def traced_call_async(wrapped: Callable[..., Awaitable[Any]], instance: Any, args: tuple, kwargs: dict,
                            describe: Describe, settle: Settle, prepare: Optional[Prepare] = None,
                            error_status: Optional[ErrorStatus] = None) -> Any:
    """hook_method's logic for a coroutine method wrapped with wrapt (`wrapped` is bound already): the span
    starts when the request is awaited, in the awaiting task."""
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

# a slot read that raises in C, without Span.__getattr__
_slot_baggage = Span._baggage.__get__  # type: ignore[attr-defined]


def span_context(span: Span) -> SpanContext:
    """What `span.context` gives, for inject(), cheaper on the request path. Span.context reads the root's
    tracestate and baggage with getattr and a default: for the root of a new trace, whose slots are unset, that
    raises and catches through Span.__getattr__ twice, more than the rest of the injection together. A root
    that continues a remote trace (parent_id set) has both slots set; another root has no tracestate, and
    baggage only if the trace began from incoming baggage alone."""
    root = span.root
    if root.parent_id is not None:
        tracestate, baggage = root._tracestate, root._baggage
    else:
        tracestate = ""
        try:
            baggage = _slot_baggage(root)
        except AttributeError:
            baggage = None
    return SpanContext(root._trace_id, span.span_id, root._sampled, tracestate, baggage)


def headers_to_add(call: Call, present_names: Iterable[str] = ()) -> Dict[str, str]:
    """The configured propagators' headers for the call's span, less the families the app already sets."""
    headers = inject({}, call.context())
    present = {_FAMILY[n] for n in (name.lower() for name in present_names) if n in _FAMILY}
    if present and headers:
        headers = {k: v for k, v in headers.items() if _FAMILY.get(k.lower()) not in present}
    return headers


# --------------------------------------------------------------------- http.client: the wire level

_OWNED = "_autoinstr_call"  # on a connection: its own call (http.client used directly), until getresponse()


class Wire:
    """The http.client hook, shared: whichever of the requests, urllib3 and httpclient integrations is patched
    first installs it, so injection works whatever the app disables. Only with the httpclient integration on
    does a connection used directly (no outer layer) make a span of its own.

    One hook on the class, HTTPConnection.endheaders: the request line and the app's headers are buffered and
    nothing is sent yet, so it counts the attempt, adds the trace headers and starts a span of its own. It runs
    on every request an app makes: a plain function put on the class (a wrapt wrapper costs about a
    microsecond more per call), calling the one it replaced, marks read and set with getattr/setattr, never
    through `__dict__` (that would turn an object's compact attribute storage into a dict for good).

    What only some requests need is put on those objects alone, as instance attributes that shadow the class's
    method once: getresponse() on a connection with a span of its own (its status), and _close_conn() on a
    response whose body the app has still to read (http.client calls it when the body has been read to its
    end, and close() does, and so the garbage collector's close of a response dropped unread)."""

    installed = False
    own_spans = False
    response_class: Any = None
    hook: Any = None


def install_wire() -> None:
    """Hook http.client's HTTPConnection.endheaders (once per process)."""
    if Wire.installed:
        return
    # from sys.modules: when http.client's own post-import hook runs, `http.client` is not yet an attribute
    # of the `http` package
    module = importlib.import_module("http.client")
    global _real_endheaders
    conn = module.HTTPConnection
    _real_endheaders = conn.__dict__["endheaders"]
    hook = _compiled.wire_hook(_real_endheaders) if _compiled is not None else _endheaders
    functools.update_wrapper(hook, _real_endheaders)  # name, docstring, __wrapped__ (the signature)
    conn.endheaders = hook
    Wire.hook = (conn, "endheaders", hook)
    Wire.response_class = module.HTTPResponse
    Wire.installed = True


def uninstall_wire() -> None:
    """Undo install_wire (tests, benchmarks); a hook someone else has replaced since is left alone."""
    if not Wire.installed:
        return
    cls, name, hook = Wire.hook
    if cls.__dict__.get(name) is hook:
        setattr(cls, name, hook.__wrapped__)
    Wire.installed = False


def end_with_body(call: Call, response: Any) -> None:
    """End `call` when this http.client response's body has been read to its end or the response closed;
    now if it already is, or if the object is not an http.client response (then its body cannot be watched)."""
    cls = Wire.response_class
    if cls is not None and isinstance(response, cls) and response.fp is not None and response.length != 0:
        response._close_conn = _BodyWatch(response, call)
    else:
        call.end()


class _BodyWatch:
    """A response's own _close_conn until it runs: the class's one, then the end of the call. It holds the
    response weakly: an instance attribute referring back to its object would leave it to the cyclic garbage
    collector (its socket closed later than without the agent)."""

    __slots__ = ("response", "call")

    def __init__(self, response: Any, call: Call) -> None:
        self.response = weakref.ref(response)
        self.call = call

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        response = self.response()
        try:
            if response is None:  # cannot happen for a response closing itself; the span ends all the same
                return None
            try:
                del response._close_conn  # the class's method again
            except AttributeError:
                pass
            return type(response)._close_conn(response, *args, **kwargs)
        finally:
            try:
                self.call.end()
            except Exception:
                pass


class _ResponseWatch:
    """The getresponse() of a connection with a span of its own, until it runs: the status, then the body."""

    __slots__ = ("conn", "call")

    def __init__(self, conn: Any, call: Call) -> None:
        self.conn = weakref.ref(conn)
        self.call = call

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        conn, call = self.conn(), self.call
        if conn is None:
            call.end()
            raise ReferenceError("connection gone")  # not reachable: the app calls this on its connection
        _forget(conn)
        try:
            response = type(conn).getresponse(conn, *args, **kwargs)
        except TypeError:  # a caller trying a signature first (urllib3 1.26: getresponse(buffering=True))
            setattr(conn, _OWNED, call)
            conn.getresponse = self  # still waiting for the real call
            raise
        except BaseException as exc:  # timeouts waiting for the answer land here
            call.fail(exc)
            raise
        try:
            call.respond(response.status)
            end_with_body(call, response)
        except Exception:
            call.end()
        return response


def _forget(conn: Any) -> None:
    """The connection's own call is over (or superseded): its plain getresponse() again."""
    setattr(conn, _OWNED, None)
    try:
        del conn.getresponse
    except AttributeError:
        pass


def _real_endheaders(self: Any, *args: Any, **kwargs: Any) -> Any:  # replaced by install_wire
    raise NotImplementedError


def _endheaders(self: Any, *args: Any, **kwargs: Any) -> Any:
    if _suppressed_get():
        return _real_endheaders(self, *args, **kwargs)
    call = _active_get()
    own = call is None
    if not own:  # one attempt of an outer layer's logical request
        call.attempts += 1
    elif not Wire.own_spans:
        return _real_endheaders(self, *args, **kwargs)
    else:  # http.client used directly: the connection's own call, until getresponse()
        stale = getattr(self, _OWNED, None)
        if stale is not None:  # the previous request on this connection never got to getresponse()
            _forget(self)
            stale.end()
        try:
            call = Call(*_buffered_request(self))
        except Exception:
            return _real_endheaders(self, *args, **kwargs)
    try:
        _inject(self, call)
    except Exception:
        pass
    if not own:
        return _real_endheaders(self, *args, **kwargs)
    try:
        result = _real_endheaders(self, *args, **kwargs)  # connects and sends: a refused connection fails here
    except BaseException as exc:
        call.fail(exc)
        raise
    try:
        setattr(self, _OWNED, call)
        self.getresponse = _ResponseWatch(self, call)
    except Exception:
        call.end()
    return result


def _inject(conn: Any, call: Call) -> None:
    """The trace headers into the request `conn` has buffered."""
    span = call.span
    buffer = getattr(conn, "_buffer", None)  # (a connection without one: _inject_buffered uses putheader)
    trace_id = _traceparent_alone(call) if buffer.__class__ is list else None
    if trace_id is not None:
        # the commonest cases: the default propagators write a traceparent alone (a test holds this equal to
        # inject()), straight into the buffered head as one header line, unless the app put trace headers of
        # its own
        head = b"\n".join(buffer).lower()
        if head.find(b"\ntraceparent:") < 0 and head.find(b"\ntracestate:") < 0:
            buffer.append(b"traceparent: 00-%032x-%016x-01" % (trace_id, span.span_id))
    else:
        _inject_buffered(conn, call)


def _traceparent_alone(call: Call) -> Optional[int]:
    """The trace id, where inject() would give a sampled traceparent alone for the call's span: the propagators
    are tracecontext (and baggage), and the trace carries no tracestate and no baggage (a new trace's root, or a
    span of a trace begun here or continued without either). None otherwise. Its compiled twin is
    _client_call.c's traceparent_alone_trace_id (the endheaders hook decides there without this frame)."""
    span = call.span
    if not span._sampled or Propagators.names not in _TRACEPARENT_ONLY:
        return None
    if call.fresh:
        return span._trace_id
    root = span.root
    try:  # (what span_context() reads; a root continuing a remote trace has both slots set)
        if root._sampled and not root._baggage and (root.parent_id is None or not root._tracestate):
            return root._trace_id
    except AttributeError:  # (a slot never set: the general path knows what that means)
        pass
    return None


def _buffered_request(conn: Any) -> Tuple[str, str]:
    """(method, absolute URL) of the request putrequest() buffered: b"GET /path HTTP/1.1"."""
    method, target = conn._buffer[0].decode("latin-1").split(" ", 2)[:2]
    tunnel = getattr(conn, "_tunnel_host", None)  # through a proxy's CONNECT: the real destination
    host, port = (tunnel, getattr(conn, "_tunnel_port", None)) if tunnel else (conn.host, conn.port)
    scheme = "https" if getattr(conn, "default_port", 80) == 443 else "http"
    return method, join_url(scheme, str(host), port, target)


def _inject_buffered(conn: Any, call: Call) -> None:
    """Add the trace headers to the request being built, unless the app put a header of the same family (looked
    for in one lowercased copy of the buffered head, with C loops, not Python ones)."""
    span = call.span
    if call.fresh and span._sampled:  # Call.context(), inline (_endheaders has the traceparent-only case)
        if Propagators.names in _TRACEPARENT_ONLY:  # what inject() gives then (a test holds them equal)
            headers = {"traceparent": format_traceparent(span._trace_id, span.span_id, True)}
        else:
            headers = inject({}, SpanContext(span._trace_id, span.span_id, True, "", None))
    else:
        headers = inject({}, call.context())
    if not headers:
        return
    buffer = getattr(conn, "_buffer", None)
    present = _NONE
    if buffer:
        head = b"\n".join(buffer).lower()
        # find(), not `in`: bytes.__contains__ first tries its argument as an int, and fails, raising inside
        if head.find(b"\nt") >= 0 or head.find(b"\nb") >= 0 or head.find(b"\nx-b3") >= 0:
            present = frozenset(family for marker, family in _MARKERS if head.find(marker) >= 0)
    # straight into the buffer, as putheader() would put them (our names and values are plain ASCII tokens,
    # checked when they were parsed or made): putheader's checks cost more than the rest of the injection
    add = buffer.append if buffer.__class__ is list else None
    for name, value in headers.items():
        if not present or _FAMILY.get(name.lower()) not in present:
            if add is not None:
                add(("%s: %s" % (name, value)).encode("latin-1"))
            else:
                conn.putheader(name, value)


_MARKERS = tuple((("\n%s:" % name).encode(), family) for name, family in _FAMILY.items())


def _buffered_families(buffer: Any) -> FrozenSet[str]:
    """Families of the trace headers among the header lines http.client has buffered (b"Name: value")."""
    if not buffer:
        return _NONE
    head = b"\n".join(buffer).lower()
    return frozenset(family for marker, family in _MARKERS if head.find(marker) >= 0)


def _configure_compiled() -> Any:
    """autoinstr._speedups, configured for this module, where the compiled span core is in use and Call is
    built on its CallCore; None otherwise."""
    from autoinstr.trace import span as span_module

    core = span_module._compiled_core
    if core is None or Call.__mro__[1] is _CallCore:
        return None
    core.configure_http(globals(), _active, _suppressed, _statsd, KNOWN_METHODS, Propagators, _TRACEPARENT_ONLY, Wire)
    return core


_compiled: Any = _configure_compiled()
