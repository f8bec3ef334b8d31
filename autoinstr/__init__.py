"""autoinstr: zero-code auto-instrumentation for Python web applications.

The public API. It works the same with or without the agent loaded; without it, every call is a cheap
no-op (`span` is then a stand-in whose methods do nothing).

    with autoinstr.span("checkout", cart_size=3) as s:
        s.set_attribute("cart.total", 12.5)

    @autoinstr.traced                 # or @autoinstr.traced("name", key=value)
    def work(): ...

    headers = autoinstr.inject({})    # carry the trace over a queue or custom RPC...
    ctx = autoinstr.extract(headers)  # ...and continue it on the other side:
    with autoinstr.span("consume", kind="consumer", parent=ctx): ...

    autoinstr.metrics.increment("orders.placed", country="fr")   # custom statsd metrics (AUTOINSTR_STATSD)

Importing this module imports no instrumented library and starts no thread.
"""

from __future__ import annotations

from autoinstr.trace.noop import NoopSpan as _NoopSpan

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any, Callable, Dict, MutableMapping, Optional

    from autoinstr import metrics
    from autoinstr.trace.span import SpanContext


def __getattr__(name: str) -> Any:
    # `autoinstr.metrics` is imported when first used: an app that never records a metric never loads it
    if name == "metrics":
        import importlib

        return importlib.import_module("autoinstr.metrics")
    # and SpanContext: the span module is the agent's (its import costs the launcher and agent-less apps)
    if name == "SpanContext":
        from autoinstr.trace.span import SpanContext

        return SpanContext
    raise AttributeError("module 'autoinstr' has no attribute %r" % name)

__version__ = "0.1.0"
__all__ = ["span", "traced", "current_span", "inject", "extract", "stats", "flush", "metrics", "SpanContext",
           "__version__"]

#: The span class: `autoinstr.span(name, *, kind="internal", parent=None, **attributes)`. The real one once
#: the agent is loaded (autoinstr-run, or AUTOINSTR_ENABLED=true), a free stand-in otherwise.
span: Any = _NoopSpan
_enabled = False
_traced: Optional[Callable[..., Any]] = None


def _span_factory(name: str, **attributes: Any) -> Any:
    return span(name, **attributes)


def traced(name_or_fn: Any = None, **attributes: Any) -> Any:
    """Decorator: `@traced`, `@traced()` or `@traced("name", key=value)` on plain functions, async functions,
    generators and async generators; one span per call, named after the function by default."""
    global _traced
    if _traced is None:
        from autoinstr.trace.tracer import make_traced

        _traced = make_traced(_span_factory)
    return _traced(name_or_fn, **attributes)


def current_span() -> Any:
    """The span active in this thread or task, or None."""
    if not _enabled:
        return None
    from autoinstr.trace.span import current_span_var

    return current_span_var.get()


def inject(carrier: MutableMapping[str, str], span: Any = None) -> MutableMapping[str, str]:
    """Write trace context headers (the configured propagators) for the current span, or `span`, into
    `carrier`; returns it. Does nothing without the agent or without a current span."""
    if not _enabled:
        return carrier
    from autoinstr.trace.propagation import inject as _inject

    return _inject(carrier, span)


def extract(carrier: Any, getter: Optional[Callable[[Any, str], Optional[str]]] = None) -> Optional[SpanContext]:
    """The trace context found in `carrier` (a headers mapping; `getter(carrier, key)` for other shapes),
    or None. Pass it as `parent=` to continue that trace."""
    if not _enabled:
        return None
    from autoinstr.trace.propagation import extract as _extract

    return _extract(carrier, getter)


def stats() -> Dict[str, Any]:
    """The agent's health counters: spans created, sampled, exported, dropped by reason, export errors."""
    from autoinstr import bootstrap

    return bootstrap.stats()


def flush(timeout: float = 5.0) -> bool:
    """Export everything finished so far, waiting up to `timeout` seconds. Not needed at exit (the agent
    flushes then); useful before a process is frozen or killed."""
    from autoinstr import bootstrap

    return bootstrap.flush(timeout)
