"""concurrent.futures thread pools: work submitted inside a span runs with that span as its parent
(and so does asyncio's run_in_executor, which submits to a pool).

Only the agent's own contextvar travels with the work: the app's contextvars behave exactly as without
the agent.
"""

from __future__ import annotations

from types import ModuleType
from typing import Any, Callable

from autoinstr.integrations._wrapping import unwrap, wrap
from autoinstr.trace.span import current_span_var

_get = current_span_var.get
_set = current_span_var.set
_reset = current_span_var.reset


def _run_in_span(span: Any, fn: Callable[..., Any], /, *args: Any, **kwargs: Any) -> Any:
    token = _set(span)
    try:
        return fn(*args, **kwargs)
    finally:
        _reset(token)


def _submit(wrapped: Callable[..., Any], instance: Any, args: tuple, kwargs: dict) -> Any:
    span = _get()
    if span is None or not args:
        return wrapped(*args, **kwargs)
    return wrapped(_run_in_span, span, *args, **kwargs)


def patch(module: ModuleType) -> None:
    wrap(module, "ThreadPoolExecutor.submit", _submit)


def unpatch(module: ModuleType) -> None:
    unwrap(module, "ThreadPoolExecutor.submit")
