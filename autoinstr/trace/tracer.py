"""`traced`: a decorator that wraps plain functions, coroutine functions, generators and async generators
in a span, keeping each one's nature (a coroutine stays awaitable, a generator stays lazy).

Generators need care: their body runs in the caller's context between yields, so the span is made
current only while the generator body runs, never while the caller holds the yielded value.
"""

from __future__ import annotations

import functools
import inspect

from autoinstr.trace.span import Span, current_span_var

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any, Callable, Optional, TypeVar, Union

    F = TypeVar("F", bound=Callable[..., Any])

_set_current = current_span_var.set
_reset_current = current_span_var.reset


def _default_name(fn: Callable[..., Any]) -> str:
    return getattr(fn, "__qualname__", None) or getattr(fn, "__name__", None) or repr(fn)


def make_traced(span_factory: Callable[..., Any]) -> Callable[..., Any]:
    """Build `traced` over a span factory (the real Span, or NoopSpan when the agent is not loaded)."""

    def traced(name_or_fn: Union[str, Callable[..., Any], None] = None, **attributes: Any) -> Any:
        """`@traced`, `@traced()` or `@traced("name", key=value)`: one span per call (per iteration, for
        generators: from first next() to exhaustion or close)."""
        if callable(name_or_fn):
            return _wrap(name_or_fn, _default_name(name_or_fn), attributes, span_factory)

        def decorator(fn: F) -> F:
            return _wrap(fn, name_or_fn or _default_name(fn), attributes, span_factory)

        return decorator

    return traced


def _wrap(fn: Any, name: str, attributes: dict, factory: Callable[..., Any]) -> Any:
    if inspect.isasyncgenfunction(fn):
        @functools.wraps(fn)
        def async_gen_wrapper(*args: Any, **kwargs: Any) -> Any:
            return _traced_async_gen(fn(*args, **kwargs), factory(name, **attributes))
        return async_gen_wrapper

    if inspect.iscoroutinefunction(fn):
        @functools.wraps(fn)
        async def coroutine_wrapper(*args: Any, **kwargs: Any) -> Any:
            with factory(name, **attributes):
                return await fn(*args, **kwargs)
        return coroutine_wrapper

    if inspect.isgeneratorfunction(fn):
        @functools.wraps(fn)
        def gen_wrapper(*args: Any, **kwargs: Any) -> Any:
            return _traced_gen(fn(*args, **kwargs), factory(name, **attributes))
        return gen_wrapper

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        with factory(name, **attributes):
            return fn(*args, **kwargs)
    return wrapper


def _traced_gen(gen: Any, span: Any) -> Any:
    """Drive `gen`, with `span` current only while gen's own code runs."""
    if not isinstance(span, Span):  # agent not loaded
        return (yield from gen)
    span.start()
    to_send: Any = None
    to_throw: Optional[BaseException] = None
    try:
        while True:
            token = _set_current(span)
            try:
                item = gen.throw(to_throw) if to_throw is not None else gen.send(to_send)
            finally:
                _reset_current(token)
            to_throw = None
            try:
                to_send = yield item
            except GeneratorExit:
                token = _set_current(span)  # the generator's cleanup runs inside its span
                try:
                    gen.close()
                finally:
                    _reset_current(token)
                raise
            except BaseException as exc:  # thrown in by the caller: pass it on to the generator
                to_throw = exc
    except StopIteration as stop:
        return stop.value
    except GeneratorExit:
        raise
    except BaseException as exc:
        span.record_exception(exc)
        raise
    finally:
        span.finish()


async def _traced_async_gen(agen: Any, span: Any) -> Any:
    """Drive an async generator, with `span` current only while agen's own code runs."""
    if not isinstance(span, Span):
        async for item in agen:
            yield item
        return
    span.start()
    to_send: Any = None
    to_throw: Optional[BaseException] = None
    try:
        while True:
            token = _set_current(span)
            try:
                item = await (agen.athrow(to_throw) if to_throw is not None else agen.asend(to_send))
            finally:
                try:
                    _reset_current(token)
                except ValueError:
                    pass
            to_throw = None
            try:
                to_send = yield item
            except GeneratorExit:
                token = _set_current(span)
                try:
                    await agen.aclose()
                finally:
                    try:
                        _reset_current(token)
                    except ValueError:
                        pass
                raise
            except BaseException as exc:
                to_throw = exc
    except StopAsyncIteration:
        return
    except GeneratorExit:
        raise
    except BaseException as exc:
        span.record_exception(exc)
        raise
    finally:
        span.finish()


class activate:
    """Make a span (started with start()) the current one for a block, without ending it:
    `with activate(span): ...`. Integrations use it where a span outlives the block."""

    __slots__ = ("span", "_token")

    def __init__(self, span: Any) -> None:
        self.span = span

    def __enter__(self) -> Any:
        self._token = _set_current(self.span)
        return self.span

    def __exit__(self, *exc: Any) -> None:
        try:
            _reset_current(self._token)
        except ValueError:
            pass
