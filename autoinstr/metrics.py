"""Custom metrics, sent to statsd with the agent's own (AUTOINSTR_STATSD), through the same batching:

    autoinstr.metrics.increment("orders.placed", 1, country="fr")
    autoinstr.metrics.gauge("queue.depth", 42)
    autoinstr.metrics.timing("payment.latency", 12.5)      # milliseconds
    autoinstr.metrics.histogram("cart.size", 3)

    @autoinstr.metrics.timed("checkout")                    # or @autoinstr.metrics.timed
    def checkout(): ...

    with autoinstr.metrics.timer("render"):
        ...

Keywords are tags (DogStatsD tags, or folded into the name path: AUTOINSTR_STATSD_TAGS). Without the agent,
or without AUTOINSTR_STATSD, every call is a cheap no-op (`timer` then returns a shared stand-in that reads
no clock). The calls only record in memory; the agent's flush thread aggregates and sends.
"""

from __future__ import annotations

from time import perf_counter_ns as _clock

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any, Callable, Optional

__all__ = ["increment", "gauge", "timing", "histogram", "timed", "timer"]

#: autoinstr.export.statsd.custom(kind, name, value, tags) once statsd is enabled, else None.
_sink: Optional[Callable[[str, Any, Any, Any], None]] = None


def increment(name: str, value: float = 1, **tags: Any) -> None:
    """Add `value` to the counter `name`."""
    if _sink is not None:
        _sink("c", name, value, tags)


def gauge(name: str, value: float, **tags: Any) -> None:
    """Set the gauge `name` (the last value of an interval is sent)."""
    if _sink is not None:
        _sink("g", name, value, tags)


def timing(name: str, value: float, **tags: Any) -> None:
    """One duration, in milliseconds, for the timer `name`."""
    if _sink is not None:
        _sink("ms", name, value, tags)


def histogram(name: str, value: float, **tags: Any) -> None:
    """One value of the histogram `name`."""
    if _sink is not None:
        _sink("h", name, value, tags)


class _Timer:
    """`with timer(name):` records the block's duration (milliseconds, also in `.elapsed_ms`), raised or not."""

    __slots__ = ("name", "tags", "start", "elapsed_ms")

    def __init__(self, name: str, tags: Any) -> None:
        self.name = name
        self.tags = tags
        self.start = 0
        self.elapsed_ms = 0.0

    def __enter__(self) -> _Timer:
        self.start = _clock()
        return self

    def __exit__(self, exc_type: Any, exc: Any, tb: Any) -> bool:
        self.elapsed_ms = (_clock() - self.start) / 1e6
        sink = _sink
        if sink is not None:
            sink("ms", self.name, self.elapsed_ms, self.tags)
        return False


class _NoopTimer:
    """What `timer` returns while metrics are off: no clock, nothing recorded."""

    __slots__ = ()
    elapsed_ms = 0.0

    def __enter__(self) -> _NoopTimer:
        return self

    def __exit__(self, exc_type: Any, exc: Any, tb: Any) -> bool:
        return False


_NOOP_TIMER = _NoopTimer()


def timer(name: str, **tags: Any) -> Any:
    """A context manager timing its block into the timer `name`."""
    if _sink is None:
        return _NOOP_TIMER
    return _Timer(name, tags)


def timed(name: Any = None, **tags: Any) -> Any:
    """Decorator: `@timed("name", key=value)` or bare `@timed` (named after the function) times every call
    (plain or async functions) into a timer. Whether metrics are on is checked at each call."""
    if callable(name):
        return _timed(name, _default_name(name), tags)

    def decorate(fn: Callable[..., Any]) -> Callable[..., Any]:
        return _timed(fn, name if name is not None else _default_name(fn), tags)

    return decorate


def _default_name(fn: Any) -> str:
    return "%s.%s" % (getattr(fn, "__module__", None) or "fn", getattr(fn, "__qualname__", None) or "call")


def _timed(fn: Callable[..., Any], name: str, tags: Any) -> Callable[..., Any]:
    from functools import wraps

    code = getattr(fn, "__code__", None)
    if code is not None and code.co_flags & 0x80:  # CO_COROUTINE: time the awaited call

        @wraps(fn)
        async def async_wrapper(*args: Any, **kwargs: Any) -> Any:
            if _sink is None:
                return await fn(*args, **kwargs)
            start = _clock()
            try:
                return await fn(*args, **kwargs)
            finally:
                sink = _sink
                if sink is not None:
                    sink("ms", name, (_clock() - start) / 1e6, tags)

        return async_wrapper

    @wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        if _sink is None:
            return fn(*args, **kwargs)
        start = _clock()
        try:
            return fn(*args, **kwargs)
        finally:
            sink = _sink
            if sink is not None:
                sink("ms", name, (_clock() - start) / 1e6, tags)

    return wrapper
