"""`traced` over the real Span: plain functions, coroutines, generators and async generators."""

from __future__ import annotations

import asyncio
import inspect

import pytest

from autoinstr.trace.span import NoopSpan, Span, current_span
from autoinstr.trace.tracer import activate, make_traced

traced = make_traced(Span)


def spans_of(collected):
    return [s for call in collected for s in call]


def by_name(collected):
    return {s.name: s for s in spans_of(collected)}


# --------------------------------------------------------------------------------------- plain


def test_plain_function(collected):
    @traced
    def add(a, b):
        assert current_span().name == add.__qualname__
        return a + b

    assert add(2, b=3) == 5
    (s,) = spans_of(collected)
    assert s.name == "test_plain_function.<locals>.add"
    assert s.status == "ok"


def top_level():
    return current_span()


def test_name_defaults_to_qualname(collected):
    class Service:
        @traced
        def handle(self):
            return current_span().name

    assert Service().handle() == "test_name_defaults_to_qualname.<locals>.Service.handle"
    assert traced(top_level)().name == "top_level"


def test_custom_name_and_attributes(collected):
    @traced("checkout", cart_size=3, kind="server")
    def checkout():
        return current_span()

    s = checkout()
    assert s.name == "checkout"
    assert s.kind == "server"
    assert s.attributes == {"cart_size": 3}

    @traced()
    def empty_parens():
        return current_span().name

    assert empty_parens() == "test_custom_name_and_attributes.<locals>.empty_parens"


def test_each_call_gets_its_own_span(collected):
    @traced("op", tag="x")
    def op():
        current_span().set_attribute("extra", 1)

    op()
    op()
    a, b = spans_of(collected)
    assert a is not b and a.span_id != b.span_id
    assert a.attributes == {"tag": "x", "extra": 1}
    assert b.attributes == {"tag": "x", "extra": 1}


def test_wraps_metadata_kept(collected):
    def original(x: int, *, y: str = "a") -> str:
        """Docstring."""
        return str(x) + y

    original.custom = "attr"
    wrapped = traced(original)
    assert wrapped.__name__ == "original"
    assert wrapped.__qualname__ == original.__qualname__
    assert wrapped.__doc__ == "Docstring."
    assert wrapped.__module__ == __name__
    assert wrapped.__wrapped__ is original
    assert wrapped.custom == "attr"
    assert inspect.signature(wrapped) == inspect.signature(original)
    assert wrapped(1, y="b") == "1b"


def test_nested_traced_functions(collected):
    @traced
    def inner():
        return current_span()

    @traced
    def outer():
        return current_span(), inner()

    o, i = outer()
    assert i.parent_id == o.span_id
    assert len(collected) == 1


def test_exception_reraised_unchanged_and_recorded(collected):
    err = KeyError("missing")

    @traced
    def fails():
        raise err

    with pytest.raises(KeyError) as info:
        fails()
    assert info.value is err
    (s,) = spans_of(collected)
    assert s.status == "error"
    assert s.attributes["error.type"] == "KeyError"
    assert current_span() is None


def test_methods_static_and_class(collected):
    class C:
        @staticmethod
        @traced
        def st(x):
            return x

        @classmethod
        @traced
        def cm(cls, x):
            return cls, x

    assert C.st(1) == 1
    assert C.cm(2) == (C, 2)
    assert len(collected) == 2


# ------------------------------------------------------------------------------------ coroutine


def test_coroutine(collected):
    @traced
    async def fetch(x):
        await asyncio.sleep(0)
        return current_span(), x * 2

    assert inspect.iscoroutinefunction(fetch)

    async def main():
        with Span("request") as root:
            s, value = await fetch(21)
        return root, s, value

    root, s, value = asyncio.run(main())
    assert value == 42
    assert s.name.endswith("fetch") and s.parent_id == root.span_id
    assert len(collected) == 1 and len(collected[0]) == 2


def test_coroutine_exception(collected):
    @traced("async-fail")
    async def fail():
        await asyncio.sleep(0)
        raise ValueError("nope")

    with pytest.raises(ValueError, match="nope"):
        asyncio.run(fail())
    assert by_name(collected)["async-fail"].status == "error"


def test_coroutine_concurrent_tasks(collected):
    @traced
    async def leaf(i):
        await asyncio.sleep(0.001 * (3 - i))
        return current_span()

    async def main():
        with Span("root") as root:
            leaves = await asyncio.gather(*(leaf(i) for i in range(3)))
        return root, leaves

    root, leaves = asyncio.run(main())
    assert all(s.parent_id == root.span_id for s in leaves)
    assert len({s.span_id for s in leaves}) == 3


# ------------------------------------------------------------------------------------ generator


def test_generator_span_covers_iteration_and_is_not_current_between_yields(collected):
    seen_inside = []

    @traced("numbers")
    def numbers(n):
        for i in range(n):
            seen_inside.append(current_span())
            yield i

    with Span("caller") as caller:
        gen = numbers(3)
        assert inspect.isgenerator(gen)
        assert collected == [] and current_span() is caller
        out = []
        for value in gen:
            assert current_span() is caller  # the generator's span is not current in the caller
            out.append(value)
        assert current_span() is caller
    assert out == [0, 1, 2]
    s = by_name(collected)["numbers"]
    assert all(x is s for x in seen_inside)
    assert s.parent_id == caller.span_id
    assert s.end_ns and s.status == "ok"


def test_generator_is_lazy(collected):
    calls = []

    @traced
    def gen():
        calls.append("started")
        yield 1

    g = gen()
    assert calls == [] and collected == []
    assert next(g) == 1
    assert calls == ["started"]
    with pytest.raises(StopIteration):
        next(g)
    assert len(spans_of(collected)) == 1


def test_generator_span_duration_covers_iteration(collected):
    import time

    @traced("slow")
    def slow():
        yield 1
        time.sleep(0.02)
        yield 2

    assert list(slow()) == [1, 2]
    assert by_name(collected)["slow"].duration_ns >= 15_000_000


def test_generator_children_nest_under_generator_span(collected):
    @traced("step")
    def step():
        return current_span()

    @traced("pipeline")
    def pipeline():
        yield step()
        yield step()

    with Span("caller"):
        children = list(pipeline())
    s = by_name(collected)["pipeline"]
    assert all(c.parent_id == s.span_id for c in children)


def test_generator_send(collected):
    @traced
    def echo():
        received = []
        value = yield "ready"
        while value is not None:
            received.append(value)
            value = yield value * 2
        return received

    g = echo()
    assert next(g) == "ready"
    assert g.send(1) == 2
    assert g.send(5) == 10
    with pytest.raises(StopIteration) as stop:
        g.send(None)
    assert stop.value.value == [1, 5]


def test_generator_return_value_via_yield_from(collected):
    @traced("inner")
    def inner():
        yield 1
        yield 2
        return "result"

    def outer():
        result = yield from inner()
        yield result

    assert list(outer()) == [1, 2, "result"]
    assert by_name(collected)["inner"].status == "ok"


def test_generator_close(collected):
    cleaned = []

    @traced("closable")
    def closable():
        try:
            yield 1
            yield 2
        finally:
            cleaned.append(current_span())

    g = closable()
    assert next(g) == 1
    g.close()
    s = by_name(collected)["closable"]
    assert len(cleaned) == 1  # the generator's own cleanup ran
    assert s.status == "ok" and s.end_ns
    assert current_span() is None
    g.close()  # closing twice is harmless
    assert len(spans_of(collected)) == 1


def test_generator_cleanup_on_close_runs_in_its_span(collected):
    cleaned = []

    @traced("closable")
    def closable():
        try:
            yield 1
        finally:
            cleaned.append(current_span())

    g = closable()
    next(g)
    g.close()
    assert cleaned == [by_name(collected)["closable"]]


def test_generator_close_before_start(collected):
    @traced
    def never():
        yield 1

    never().close()
    assert current_span() is None


def test_generator_throw_handled_inside(collected):
    @traced("resilient")
    def resilient():
        while True:
            try:
                yield "ok"
            except ValueError:
                yield "handled"
                return

    g = resilient()
    assert next(g) == "ok"
    assert g.throw(ValueError("x")) == "handled"
    with pytest.raises(StopIteration):
        next(g)
    s = by_name(collected)["resilient"]
    assert s.status == "ok"


def test_generator_throw_not_handled(collected):
    @traced("fragile")
    def fragile():
        yield 1
        yield 2

    g = fragile()
    next(g)
    err = RuntimeError("thrown in")
    with pytest.raises(RuntimeError) as info:
        g.throw(err)
    assert info.value is err
    s = by_name(collected)["fragile"]
    assert s.status == "error" and s.attributes["error.type"] == "RuntimeError"
    assert current_span() is None


def test_generator_exception_inside(collected):
    @traced("broken")
    def broken():
        yield 1
        raise OSError("disk")

    g = broken()
    assert next(g) == 1
    with pytest.raises(OSError, match="disk"):
        next(g)
    assert by_name(collected)["broken"].status == "error"


def test_generator_interleaved_with_other_spans(collected):
    """The caller opens spans between the generator's steps: they are not children of the generator."""

    @traced("producer")
    def producer():
        yield 1
        yield 2

    g = producer()
    next(g)
    with Span("between") as between:
        pass
    next(g)
    with pytest.raises(StopIteration):
        next(g)
    p = by_name(collected)["producer"]
    assert between.parent_id is None
    assert between.trace_id != p.trace_id


# ---------------------------------------------------------------------------------- async gen


def test_async_generator(collected):
    seen = []

    @traced("ticks")
    async def ticks(n):
        for i in range(n):
            await asyncio.sleep(0)
            seen.append(current_span())
            yield i

    assert inspect.isasyncgenfunction(ticks) or inspect.isasyncgen(ticks(0))

    async def main():
        with Span("consumer") as consumer:
            out = []
            async for v in ticks(3):
                assert current_span() is consumer
                out.append(v)
        return consumer, out

    consumer, out = asyncio.run(main())
    assert out == [0, 1, 2]
    s = by_name(collected)["ticks"]
    assert all(x is s for x in seen)
    assert s.parent_id == consumer.span_id
    assert s.end_ns and s.status == "ok"


def test_async_generator_asend_athrow_aclose(collected):
    @traced("agen")
    async def agen():
        total = 0
        try:
            while True:
                try:
                    value = yield total
                except ValueError:
                    total = -1
                    continue
                total += value or 0
        finally:
            pass

    async def main():
        g = agen()
        assert await g.asend(None) == 0
        assert await g.asend(5) == 5
        assert await g.athrow(ValueError("reset")) == -1
        await g.aclose()

    asyncio.run(main())
    s = by_name(collected)["agen"]
    assert s.status == "ok"


def test_async_generator_exception(collected):
    @traced("agen-fail")
    async def agen():
        yield 1
        raise LookupError("gone")

    async def main():
        return [x async for x in agen()]

    with pytest.raises(LookupError):
        asyncio.run(main())
    assert by_name(collected)["agen-fail"].status == "error"


# ----------------------------------------------------------------------------------- helpers


def test_activate(collected):
    s = Span("long-lived").start()
    with activate(s) as active:
        assert active is s and current_span() is s
        with Span("child") as child:
            pass
    assert current_span() is None
    s.finish()
    assert child.parent_id == s.span_id


def test_traced_over_noop_span_keeps_behaviour():
    noop_traced = make_traced(NoopSpan)

    @noop_traced("x")
    def gen():
        value = yield 1
        return value

    @noop_traced
    async def coro():
        return 7

    g = gen()
    assert next(g) == 1
    with pytest.raises(StopIteration) as stop:
        g.send("back")
    assert stop.value.value == "back"
    assert asyncio.run(coro()) == 7


def test_abandoned_generator_finishes_its_span_when_collected(collected):
    import gc

    @traced("abandoned")
    def abandoned():
        yield 1
        yield 2

    g = abandoned()
    next(g)
    assert collected == []
    del g
    gc.collect()
    s = by_name(collected)["abandoned"]
    assert s.end_ns and s.status == "ok"
    assert current_span() is None
