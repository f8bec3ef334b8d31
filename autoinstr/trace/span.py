"""Spans: the hot path of the agent.

Everything here runs on the application's own threads, so it does only cheap work: two clock reads,
two random draws, a contextvar set/reset and a few slot assignments. Hex ids, wall-clock times, attribute
limits and encoding are produced later, on the flush thread (see autoinstr.export.records).

A *local trace* is the part of a trace that lives in this process. Its spans collect in one list that is
handed to the pipeline, in one call, when the local root ends (or in pieces, for very long traces).
"""

from __future__ import annotations

import os
import sys
import time
from _random import Random  # the C generator alone: `random` costs a millisecond at start-up
from contextvars import ContextVar
from itertools import count

# the agent-less stand-in (autoinstr.span without the agent) lives apart, so `import autoinstr` stays light
from autoinstr.trace.noop import NoopSpan  # noqa: F401  (re-exported)

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any, Callable, Dict, List, Optional, Union

    Parent = Union["Span", "SpanContext", None]

KINDS = ("internal", "server", "client", "producer", "consumer")
PARTIAL_FLUSH_SPANS = 500  # a local trace this long is handed over in pieces, bounding memory
MAX_EVENTS = 128
MAX_STACK_CHARS = 8192

current_span_var: ContextVar[Optional[Span]] = ContextVar("autoinstr.current_span", default=None)
_get_current = current_span_var.get
_set_current = current_span_var.set
_reset_current = current_span_var.reset
_clock = time.perf_counter_ns
_UNSET: Any = object()


class _Ids:
    """Fast random ids (Mersenne Twister seeded from os.urandom), reseeded after fork so that parent
    and child never draw the same ids. Not for secrets: ids only need to be unique."""

    rng = Random(int.from_bytes(os.urandom(32), "big"))
    bits = rng.getrandbits

    @classmethod
    def reseed(cls) -> None:
        cls.rng.seed(int.from_bytes(os.urandom(32), "big"))


_bits = _Ids.bits


def new_trace_id() -> int:
    return _bits(128) or 1


def new_span_id() -> int:
    return _bits(64) or 1


# -------------------------------------------------------------------------------- sampling hooks

_MASK64 = (1 << 64) - 1


class Sampling:
    """Head sampling: a ratio decided from the trace id's low 64 bits (every service decides alike for
    the same trace), then an optional per-process limit of new sampled traces per second."""

    threshold = 1 << 64  # sampled when (trace_id & MASK64) < threshold; 1 << 64 means always
    limiter: Optional[Callable[[], bool]] = None

    @classmethod
    def configure(cls, ratio: float, rate_limit: float = 0.0) -> None:
        global _threshold, _limiter, _never
        cls.threshold = _threshold = 1 << 64 if ratio >= 1.0 else int(max(ratio, 0.0) * (1 << 64))
        cls.limiter = _limiter = _RateLimiter(rate_limit).allow if rate_limit > 0 else None
        _never = _threshold == 0
        _configure_compiled_sampling()

    @classmethod
    def decide(cls, trace_id: int) -> bool:
        if (trace_id & _MASK64) >= cls.threshold:
            return False
        limiter = cls.limiter
        return limiter() if limiter is not None else True


# The same settings as module globals: the span path reads these (a global is the cheapest lookup)
_threshold = Sampling.threshold
_limiter = Sampling.limiter
_never = False  # ratio 0: a new trace is known unsampled before its id is drawn


class _RateLimiter:
    """Token bucket; races between threads can only let a token or two more through, never block."""

    def __init__(self, per_second: float) -> None:
        self.rate = per_second
        self.capacity = max(per_second, 1.0)
        self.tokens = self.capacity
        self.last = time.monotonic()

    def allow(self) -> bool:
        now = time.monotonic()
        self.tokens = min(self.capacity, self.tokens + (now - self.last) * self.rate)
        self.last = now
        if self.tokens >= 1.0:
            self.tokens -= 1.0
            return True
        return False


# ------------------------------------------------------------------------------ the span sink

def _discard(spans: Any) -> None:
    pass


class Sink:
    """Where finished local traces go: the pipeline's submit (a list of spans) and submit_one (a span
    alone, the common case, without a list around it), once the agent is loaded."""

    submit: Callable[[List[Span]], None] = staticmethod(_discard)  # type: ignore[assignment]
    submit_one: Callable[[Span], None] = staticmethod(_discard)  # type: ignore[assignment]


# Spans not recorded (sampling). A counter object, not `global += 1`: storing a module global (or a
# class attribute) on every span would invalidate the interpreter's lookup caches for all the others.
_unsampled = count()


def unsampled_count(reset: bool = False) -> int:
    global _unsampled
    value = int(repr(_unsampled)[6:-1])  # "count(N)": the only public way to read a count
    if reset:
        _unsampled = count()
    return value


# ---------------------------------------------------------------------------------- the model

class SpanContext:
    """A span's identity as carried between processes (extracted from headers), or as handed to
    `autoinstr.inject`. sampled is None when the sender left the decision to us."""

    __slots__ = ("trace_id", "span_id", "sampled", "tracestate", "baggage")

    def __init__(self, trace_id: int, span_id: int, sampled: Optional[bool] = True, tracestate: str = "",
                 baggage: Optional[Dict[str, str]] = None) -> None:
        self.trace_id = trace_id
        self.span_id = span_id
        self.sampled = sampled
        self.tracestate = tracestate
        self.baggage = baggage

    @property
    def trace_id_hex(self) -> str:
        return "%032x" % self.trace_id

    @property
    def span_id_hex(self) -> str:
        return "%016x" % self.span_id

    def __repr__(self) -> str:
        return "SpanContext(trace_id=%032x, span_id=%016x, sampled=%r)" % (self.trace_id, self.span_id, self.sampled)


class _SpanCore:
    """The span's slots and hot methods, in Python: the base class of Span where autoinstr._speedups is not
    built or AUTOINSTR_SPEEDUPS is false; elsewhere its compiled twin, _speedups.SpanCore (autoinstr/_span.c),
    is. tests/test_span_core.py holds the two to the same behaviour."""

    __slots__ = ("name", "attributes", "kind", "root", "span_id", "parent_id", "start_ns", "end_ns",
                 "_status", "_events", "_token",
                 "_trace_id", "_sampled", "_finished", "_tracestate", "_baggage")

    def __init__(self, name: str, *, kind: str = "internal", parent: Parent = _UNSET, **attributes: Any) -> None:
        self.name = name
        self.attributes = attributes
        self.kind = kind
        if parent is _UNSET:
            parent = _get_current()
        if parent is None:  # a new trace: this span is its local root
            # An unsampled local root keeps `root` unset (__getattr__ answers self): a self-reference
            # would leave each span to the cyclic GC, which costs more than the span itself.
            if _never:  # ratio 0: the trace id, if ever asked for, is drawn then (__getattr__)
                self._sampled = False
                return
            trace_id = self._trace_id = _bits(128) or 1
            if (trace_id & _MASK64) >= _threshold or (_limiter is not None and not _limiter()):
                self._sampled = False
                return
            self.root = self
            self._sampled = True
            self._finished = None
            self.parent_id = None
            self._tracestate = ""  # set: `context` (injected into every outgoing call) reads them
            self._baggage = None
        elif parent.__class__ is Span:
            root = self.root = parent.root
            if not root._sampled:  # every span keeps the decision: one load, not two, in enter and exit
                self._sampled = False
                return
            self._sampled = True
            self.parent_id = parent.span_id
        else:
            self._adopt(parent)
            if not self._sampled:
                return
        self.span_id = _bits(64) or 1
        self._status = "ok"
        self._events = None
        self.start_ns = self.end_ns = 0  # set: reads of a recorded span never take __getattr__'s detour

    def __enter__(self) -> Span:
        self._token = _set_current(self)
        if self._sampled:  # an unsampled span takes no clock readings
            self.start_ns = _clock()
        return self

    def __exit__(self, exc_type: Any, exc: Any, tb: Any) -> bool:
        if self._sampled:
            self.end_ns = _clock()
            try:
                _reset_current(self._token)
            except ValueError:
                self._restore_previous()
            self._token = None  # a queued span keeps no Token alive: half the objects for the GC to scan
            if exc is not None:
                self.record_exception(exc, time_ns=self.end_ns)
            try:  # (a try costs nothing until it catches: the span is lost, never the app's call)
                if self.root is self and self._finished is None:  # a trace of one span: the common case
                    Sink.submit_one(self)
                else:
                    self._on_end()
            except Exception:
                _handover_failed()
        else:
            try:
                _reset_current(self._token)
            except ValueError:
                self._restore_previous()
            next(_unsampled)
        return False

    def start(self) -> Span:
        """Start the clock without making this span the current one (use `with` for that, or
        autoinstr.trace.tracer.activate). Starting twice does nothing the second time."""
        if self._sampled and self.start_ns:
            return self
        self.start_ns = _clock()  # unsampled spans too: the statsd metrics time every request
        return self

    def finish(self, end_ns: int = 0) -> None:
        """End a span started with start() (not needed with `with`); a second call does nothing."""
        if self._sampled:
            if self.end_ns:
                return
            self.end_ns = end_ns or _clock()
            try:
                if self.root is self and self._finished is None:  # a trace of one span (an outgoing call)
                    Sink.submit_one(self)
                else:
                    self._on_end()
            except Exception:
                _handover_failed()
        else:
            self.end_ns = end_ns or _clock()
            next(_unsampled)

    def _on_end(self) -> None:
        # The local root hands over the whole local trace; a span ending after its root (detached work)
        # goes alone. `end_ns` of the root tells which: no extra state per trace.
        root = self.root
        spans = root._finished
        if root is self:
            if spans is None:
                Sink.submit_one(self)
            else:
                root._finished = None
                spans.append(self)
                Sink.submit(spans)
        elif root.end_ns:
            Sink.submit_one(self)
        elif spans is None:
            root._finished = [self]
        else:
            spans.append(self)
            if len(spans) >= PARTIAL_FLUSH_SPANS:
                root._finished = None
                Sink.submit(spans)


def _span_base() -> type:
    """SpanCore from autoinstr._speedups where it is built and not turned off (AUTOINSTR_SPEEDUPS read as the
    configuration reads it: a value that is not false keeps them on); else _SpanCore."""
    from autoinstr.config import _FALSE

    if os.environ.get("AUTOINSTR_SPEEDUPS", "").strip().lower() in _FALSE:
        return _SpanCore
    try:
        from autoinstr import _speedups

        return _speedups.SpanCore  # type: ignore[no-any-return]
    except (ImportError, AttributeError):
        return _SpanCore


class Span(_span_base()):  # type: ignore[misc]
    """A timed operation. Use it as a context manager (`with autoinstr.span("name", key=value) as s:`),
    or call start()/finish() when the operation does not fit one block (a WSGI response, a stream).

    `kind` and `parent` are keyword-only and reserved; every other keyword becomes an attribute. The
    parent (the current span unless `parent=` is given; `parent=None` starts a new trace) is chosen
    when the span is created, as in OpenTelemetry's start_span and ddtrace's tracer.trace; the clock
    starts when it is entered (or start() is called).

    The local root (the first span of a trace in this process) also holds what its local trace shares:
    the trace id, the sampling decision, the finished spans waiting for the root to end, the incoming
    tracestate and baggage. Other spans reach it through `root`: no extra object per trace.

    An unsampled span sets only what propagation needs; its id is drawn if it is ever asked for
    (__getattr__), and it takes no clock readings.
    """

    __slots__ = ()

    def _adopt(self, parent: Any) -> None:
        """A parent that is not a Span (nor None): a remote one (a SpanContext), or none at all."""
        if isinstance(parent, SpanContext):
            self._continue_remote(parent)
        else:
            self._bad_parent(parent, self.name)

    def _bad_parent(self, parent: Any, name: Any) -> None:
        """`parent=` got something that is neither a span, a SpanContext nor None: start a new trace
        (with one warning) rather than raise into the app."""
        from autoinstr import _log

        _log.warn_once("bad-parent", "span %r: parent=%r is not a span, a SpanContext or None; a new trace is "
                       "started instead" % (name, type(parent).__name__))
        self._continue_remote(SpanContext(0, 0))

    def _continue_remote(self, ctx: SpanContext) -> None:
        """This span starts the local part of a trace continued from `ctx` (extracted from headers); a
        context with baggage but no trace id starts a new trace that carries the baggage."""
        self._finished = None
        self.end_ns = 0
        self._baggage = ctx.baggage
        if not ctx.trace_id:
            trace_id = self._trace_id = _bits(128) or 1
            self.parent_id = None
            self._tracestate = ""
            self._sampled = Sampling.decide(trace_id)
        else:
            self._trace_id = ctx.trace_id
            self._sampled = ctx.sampled if ctx.sampled is not None else Sampling.decide(ctx.trace_id)
            self._tracestate = ctx.tracestate
            self.parent_id = ctx.span_id
        if self._sampled:  # unsampled: `root` stays unset, as in __init__
            self.root = self

    @property
    def status(self) -> str:
        """"ok" or "error"."""
        try:
            return self._status
        except AttributeError:
            return "ok"

    @status.setter
    def status(self, value: str) -> None:
        self._status = "error" if value == "error" else "ok"

    @property
    def events(self) -> Optional[List[Dict[str, Any]]]:
        try:
            return self._events
        except AttributeError:
            return None

    # --------------------------------------------------------------------------- lifecycle

    def _restore_previous(self) -> None:
        """The span is left in another context than it entered (a generator resumed elsewhere)."""
        previous = self._token.old_value
        _set_current(None if previous is self._token.MISSING else previous)

    def __getattr__(self, name: str) -> Any:
        # Only reached for slots never set: those an unsampled span skips. Its id is drawn on demand
        # (to propagate it); it has no parent id worth keeping.
        if name == "span_id":
            value = self.span_id = _bits(64) or 1
            return value
        if name == "root":  # an unsampled local root made while sampling is off: not stored, a
            return self       # self-reference would leave the span to the cyclic GC
        if name == "_trace_id" and self.root is self:
            value = self._trace_id = _bits(128) or 1
            return value
        if name in ("start_ns", "end_ns"):
            return 0
        if name == "parent_id":
            return None
        raise AttributeError(name)

    # ------------------------------------------------------------------------- annotation

    @property
    def sampled(self) -> bool:
        return self._sampled

    @property
    def trace_id(self) -> int:
        return self.root._trace_id

    @property
    def context(self) -> SpanContext:
        r = self.root
        return SpanContext(r._trace_id, self.span_id, r._sampled, getattr(r, "_tracestate", ""),
                           getattr(r, "_baggage", None))

    @property
    def duration_ns(self) -> int:
        return (self.end_ns or _clock()) - self.start_ns

    def set_attribute(self, key: str, value: Any) -> None:
        """Set an attribute (kept up to AUTOINSTR_MAX_ATTRIBUTES; values are made exportable later, on the
        flush thread). A key that cannot be one (unhashable) is ignored, never raised to the app."""
        attrs = self.attributes
        try:
            if key in attrs or len(attrs) < Limits.max_attributes:
                attrs[key] = value
        except TypeError:
            pass

    def set_attributes(self, attributes: Dict[str, Any]) -> None:
        try:
            items = list(attributes.items())
        except Exception:
            return
        for key, value in items:
            self.set_attribute(key, value)

    def set_status(self, status: str, description: Optional[str] = None) -> None:
        self._status = "error" if status == "error" else "ok"
        if description is not None and status == "error":
            self.set_attribute("exception.message", description)

    def add_event(self, name: str, attributes: Optional[Dict[str, Any]] = None, time_ns: int = 0) -> None:
        try:
            events = self._events
        except AttributeError:
            events = None
        if events is None:
            events = self._events = []
        if len(events) < MAX_EVENTS:
            try:
                attrs = dict(attributes or {})
            except Exception:  # not a mapping: the event is kept, its attributes are not
                attrs = {}
            events.append({"name": name, "time_mono_ns": time_ns or _clock(), "attributes": attrs})

    def record_exception(self, exc: BaseException, escaped: bool = True, time_ns: int = 0) -> None:
        """Status error, error.type and exception.message attributes, and an `exception` event with the stack."""
        try:
            if isinstance(exc, SystemExit) and exc.code in (None, 0):
                return
            if isinstance(exc, GeneratorExit):
                return
            etype = type(exc)
            qualname = etype.__qualname__
            module = etype.__module__
            type_name = qualname if module in ("builtins", "__main__", None) else "%s.%s" % (module, qualname)
            try:
                message = str(exc)
            except Exception:
                message = "<unprintable %s>" % qualname
            self._status = "error"
            attrs = self.attributes
            attrs["error.type"] = type_name
            attrs["exception.message"] = message
            self.add_event("exception", {
                "exception.type": type_name,
                "exception.message": message,
                "exception.stacktrace": _format_stack(exc),
                "exception.escaped": escaped,
            }, time_ns)
        except Exception:  # never let the agent's bookkeeping replace the app's exception
            pass

    def __repr__(self) -> str:
        return "Span(%r, kind=%s, span_id=%016x)" % (self.name, self.kind, getattr(self, "span_id", 0))


def _handover_failed() -> None:
    """A finished span could not be handed to the pipeline (an agent bug): it is lost, the app goes on."""
    try:
        from autoinstr import _log

        _log.warn_once("span-handover", "a finished span could not be queued for export; it is lost (the app "
                       "is not affected)")
    except Exception:
        pass


def _format_stack(exc: BaseException) -> str:
    import traceback  # only on errors: keeps start-up light

    text = "".join(traceback.format_exception(type(exc), exc, exc.__traceback__))
    if len(text) <= MAX_STACK_CHARS:
        return text
    return text[: MAX_STACK_CHARS // 4] + "\n...\n" + text[-MAX_STACK_CHARS * 3 // 4:]


_compiled_core: Any = None if Span.__mro__[1] is _SpanCore else sys.modules["autoinstr._speedups"]


def compiled(name: str, default: Any = None) -> Any:
    """autoinstr._speedups.<name> where the compiled span core is in use (the one switch for every compiled path:
    AUTOINSTR_SPEEDUPS), else `default`."""
    return default if _compiled_core is None else getattr(_compiled_core, name, default)


def _configure_compiled_sampling() -> None:
    """The compiled span core reads the sampling settings from its own copy of these globals."""
    if _compiled_core is not None:
        _compiled_core.configure_sampling(None if _threshold >= 1 << 64 else _threshold, _limiter, _never)


if _compiled_core is not None:  # what the compiled core reads of this module
    _compiled_core.configure_span(Span, current_span_var, _bits, _clock, Sink, globals(), _UNSET, _handover_failed)
    _configure_compiled_sampling()


class Limits:
    """What set_attribute enforces on the request path (value lengths are bounded at export)."""

    max_attributes = 128


def current_span() -> Optional[Span]:
    """The span active in this thread or task, or None."""
    return _get_current()
