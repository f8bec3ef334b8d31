"""The span model, used directly (autoinstr.trace.span.Span), with the sink replaced by a list."""

from __future__ import annotations

import asyncio
import sys
import threading

import pytest

from autoinstr.trace import span as span_mod
from autoinstr.trace.span import (
    KINDS,
    MAX_EVENTS,
    PARTIAL_FLUSH_SPANS,
    Limits,
    NoopSpan,
    Span,
    SpanContext,
    current_span,
    current_span_var,
    new_span_id,
    new_trace_id,
)


def all_spans(calls):
    return [s for call in calls for s in call]


# ---------------------------------------------------------------------------------- structure


def test_parent_child_links_and_shared_trace_id(collected):
    with Span("root") as root:
        with Span("child") as child, Span("grandchild") as grandchild:
            pass
        with Span("sibling") as sibling:
            pass
    assert root.parent_id is None
    assert child.parent_id == root.span_id
    assert grandchild.parent_id == child.span_id
    assert sibling.parent_id == root.span_id
    assert {s.trace_id for s in (root, child, grandchild, sibling)} == {root.trace_id}
    assert len({s.span_id for s in (root, child, grandchild, sibling)}) == 4
    assert child.root is root and grandchild.root is root


def test_local_root_hands_over_whole_trace_in_one_call(collected):
    with Span("root") as root:
        for i in range(5):
            with Span(f"child-{i}"):
                pass
        assert collected == []  # nothing handed over before the root ends
    assert len(collected) == 1
    names = [s.name for s in collected[0]]
    assert names == ["child-0", "child-1", "child-2", "child-3", "child-4", "root"]
    assert collected[0][-1] is root


def test_separate_traces_are_separate_calls(collected):
    with Span("a") as a:
        pass
    with Span("b") as b:
        pass
    assert [[s.name for s in call] for call in collected] == [["a"], ["b"]]
    assert a.trace_id != b.trace_id


def test_child_ending_after_root_is_submitted_alone(collected):
    root = Span("root").start()
    child = Span("late-child", parent=root).start()
    root.finish()
    assert [[s.name for s in c] for c in collected] == [["root"]]
    child.finish()
    assert [[s.name for s in c] for c in collected] == [["root"], ["late-child"]]
    assert child.parent_id == root.span_id and child.trace_id == root.trace_id


def test_partial_flush_for_long_traces(collected):
    n = PARTIAL_FLUSH_SPANS * 2 + 7
    with Span("root"):
        for _ in range(n):
            with Span("child"):
                pass
        assert len(collected) == 2  # two pieces handed over while the root is still open
        assert all(len(c) == PARTIAL_FLUSH_SPANS for c in collected)
    assert len(collected) == 3
    assert len(collected[-1]) == 8  # 7 children + root
    spans = all_spans(collected)
    assert len(spans) == n + 1
    assert len({id(s) for s in spans}) == n + 1  # none twice


def test_explicit_parent_none_starts_a_new_trace(collected):
    with Span("outer") as outer, Span("detached", parent=None) as detached:
        pass
    assert detached.parent_id is None
    assert detached.trace_id != outer.trace_id
    assert len(collected) == 2


def test_explicit_span_parent(collected):
    with Span("a") as a:
        pass
    with Span("b", parent=a) as b:
        pass
    assert b.parent_id == a.span_id and b.trace_id == a.trace_id


def test_remote_parent_context(collected):
    ctx = SpanContext(0xABC, 0xDEF, True, "k=v", {"user": "u1"})
    with Span("server", kind="server", parent=ctx) as s, Span("inner") as inner:
        pass
    assert s.trace_id == 0xABC
    assert s.parent_id == 0xDEF
    assert inner.trace_id == 0xABC and inner.parent_id == s.span_id
    assert s.root is s  # the local root, though not the trace's root
    c = inner.context
    assert (c.trace_id, c.span_id, c.sampled, c.tracestate, c.baggage) == (0xABC, inner.span_id, True, "k=v",
                                                                           {"user": "u1"})
    assert len(collected) == 1


def test_context_with_only_baggage_starts_new_trace_keeping_baggage(collected):
    ctx = SpanContext(0, 0, None, "", {"k": "v"})
    with Span("s", parent=ctx) as s:
        pass
    assert s.trace_id != 0 and s.parent_id is None
    assert s.context.baggage == {"k": "v"}


def test_kind_and_attributes_from_keywords(collected):
    with Span("q", kind="client", **{"db.system": "sqlite"}, rows=3) as s:
        pass
    assert s.kind == "client"
    assert s.attributes == {"db.system": "sqlite", "rows": 3}
    assert "client" in KINDS


def test_timing(collected):
    with Span("t") as s:
        assert s.duration_ns >= 0  # live duration while open
    assert s.end_ns >= s.start_ns
    assert s.duration_ns == s.end_ns - s.start_ns


# ------------------------------------------------------------------------------- exceptions


def test_exception_is_recorded_and_propagates(collected):
    with pytest.raises(ValueError, match="bad input"), Span("failing") as s:
        raise ValueError("bad input")
    assert s.status == "error"
    assert s.attributes["error.type"] == "ValueError"
    assert s.attributes["exception.message"] == "bad input"
    assert len(s.events) == 1
    ev = s.events[0]
    assert ev["name"] == "exception"
    assert ev["attributes"]["exception.type"] == "ValueError"
    assert ev["attributes"]["exception.message"] == "bad input"
    assert "Traceback" in ev["attributes"]["exception.stacktrace"]
    assert "test_exception_is_recorded_and_propagates" in ev["attributes"]["exception.stacktrace"]
    assert ev["attributes"]["exception.escaped"] is True
    assert collected and collected[0][0] is s


class CustomError(Exception):
    pass


def test_exception_type_is_qualified_outside_builtins(collected):
    with pytest.raises(CustomError), Span("x") as s:
        raise CustomError("boom")
    assert s.attributes["error.type"] == f"{__name__}.CustomError"


def test_system_exit_zero_is_not_an_error(collected):
    for code in (0, None):
        with pytest.raises(SystemExit), Span("exit") as s:
            raise SystemExit(code)
        assert s.status == "ok"
        assert "error.type" not in s.attributes
        assert not s.events


def test_system_exit_nonzero_is_an_error(collected):
    with pytest.raises(SystemExit), Span("exit") as s:
        raise SystemExit(3)
    assert s.status == "error"
    assert s.attributes["error.type"] == "SystemExit"


def test_unprintable_exception_message(collected):
    class Weird(Exception):
        def __str__(self):
            raise RuntimeError("no str for you")

    with pytest.raises(Weird), Span("w") as s:
        raise Weird()
    assert s.status == "error"
    assert "unprintable" in s.attributes["exception.message"]


def test_record_exception_without_raising(collected):
    with Span("handled") as s:
        try:
            raise KeyError("k")
        except KeyError as exc:
            s.record_exception(exc, escaped=False)
    assert s.status == "error"
    assert s.events[0]["attributes"]["exception.escaped"] is False


def test_long_stack_is_bounded(collected):
    def recurse(n):
        if n == 0:
            raise RuntimeError("deep")
        recurse(n - 1)

    with pytest.raises(RuntimeError), Span("deep") as s:
        recurse(300)
    assert len(s.events[0]["attributes"]["exception.stacktrace"]) <= span_mod.MAX_STACK_CHARS + 10


def test_set_status_and_events(collected):
    with Span("s") as s:
        s.set_status("error", "it broke")
        s.add_event("retry", {"attempt": 2})
    assert s.status == "error"
    assert s.attributes["exception.message"] == "it broke"
    assert s.events[0]["name"] == "retry" and s.events[0]["attributes"] == {"attempt": 2}
    with Span("t") as t:
        for i in range(MAX_EVENTS + 20):
            t.add_event(f"e{i}")
    assert len(t.events) == MAX_EVENTS


# ----------------------------------------------------------------------------- attributes


def test_attribute_count_limit(collected):
    Limits.max_attributes = 5
    with Span("s") as s:
        for i in range(10):
            s.set_attribute(f"k{i}", i)
        s.set_attribute("k0", "overwritten")  # existing keys may still change
        s.set_attributes({"x": 1, "k1": "again"})
    assert len(s.attributes) == 5
    assert s.attributes["k0"] == "overwritten"
    assert s.attributes["k1"] == "again"
    assert "x" not in s.attributes and "k9" not in s.attributes


# ------------------------------------------------------------------------------ lifecycle


def test_finish_twice_submits_once(collected):
    s = Span("manual").start()
    s.finish()
    end = s.end_ns
    s.finish()
    assert s.end_ns == end
    assert len(collected) == 1


def test_finish_with_explicit_end(collected):
    s = Span("manual").start()
    s.finish(s.start_ns + 12345)
    assert s.duration_ns == 12345


def test_start_twice_is_idempotent(collected):
    s = Span("manual").start()
    ids = (s.span_id, s.trace_id, s.start_ns)
    s.start()
    assert (s.span_id, s.trace_id, s.start_ns) == ids


def test_start_does_not_make_span_current(collected):
    s = Span("manual").start()
    assert current_span() is None
    s.finish()


def test_contextvar_restored_after_with(collected):
    assert current_span() is None
    with Span("a") as a:
        assert current_span() is a
        with Span("b") as b:
            assert current_span() is b
        assert current_span() is a
    assert current_span() is None


def test_contextvar_restored_after_exception(collected):
    with pytest.raises(ZeroDivisionError), Span("a"):
        1 / 0  # noqa: B018
    assert current_span() is None


def test_with_exit_in_another_context_restores_by_hand(collected):
    """A span entered in one context and left in another (a generator resumed elsewhere) must not raise."""
    import contextvars

    s = Span("moved")
    contextvars.copy_context().run(s.__enter__)
    s.__exit__(None, None, None)  # token from another context: reset by hand, no ValueError
    assert current_span() is None
    assert len(collected) == 1


def test_threads_have_their_own_current_span(collected):
    seen = {}

    def work():
        seen["in_thread"] = current_span()
        with Span("thread-root") as t:
            seen["thread_span"] = t

    with Span("main"):
        th = threading.Thread(target=work)
        th.start()
        th.join()
    assert seen["in_thread"] is None  # plain threads do not inherit (only pools do, via the integration)
    assert seen["thread_span"].parent_id is None


def test_asyncio_tasks_keep_their_parent(collected):
    async def child(name):
        await asyncio.sleep(0.001)
        with Span(name) as s:
            await asyncio.sleep(0.001)
            return s

    async def main():
        with Span("request") as root:
            kids = await asyncio.gather(child("a"), child("b"), asyncio.create_task(child("c")))
            assert current_span() is root
        return root, kids

    root, kids = asyncio.run(main())
    for k in kids:
        assert k.parent_id == root.span_id
        assert k.trace_id == root.trace_id
    assert len(collected) == 1
    assert {s.name for s in collected[0]} == {"request", "a", "b", "c"}


def test_asyncio_task_ending_after_root(collected):
    async def main():
        started = asyncio.Event()
        release = asyncio.Event()

        async def background():
            with Span("background") as s:
                started.set()
                await release.wait()
            return s

        with Span("request") as root:
            task = asyncio.create_task(background())
            await started.wait()
        release.set()
        return root, await task

    root, bg = asyncio.run(main())
    assert bg.parent_id == root.span_id
    assert [[s.name for s in c] for c in collected] == [["request"], ["background"]]


# ------------------------------------------------------------------------------------ ids


def test_ids_nonzero_and_unique():
    trace_ids = {new_trace_id() for _ in range(20000)}
    span_ids = {new_span_id() for _ in range(20000)}
    assert len(trace_ids) == 20000 and 0 not in trace_ids
    assert len(span_ids) == 20000 and 0 not in span_ids
    assert all(0 < t < (1 << 128) for t in trace_ids)
    assert all(0 < s < (1 << 64) for s in span_ids)
    assert any(t >= (1 << 64) for t in trace_ids)  # really 128 bits


def test_span_ids_unique_over_many_spans(collected):
    for _ in range(2000):
        with Span("root"), Span("child"):
            pass
    spans = all_spans(collected)
    assert len({s.span_id for s in spans}) == len(spans) == 4000
    assert len({s.trace_id for s in spans}) == 2000
    assert all(s.span_id and s.trace_id for s in spans)


def test_context_hex_forms(collected):
    with Span("s") as s:
        ctx = s.context
    assert len(ctx.trace_id_hex) == 32 and ctx.trace_id_hex == ctx.trace_id_hex.lower()
    assert len(ctx.span_id_hex) == 16
    assert int(ctx.trace_id_hex, 16) == s.trace_id
    assert "SpanContext(" in repr(ctx)
    assert "Span('s'" in repr(s)


# ---------------------------------------------------------------------------- no-op stand-in


def test_noop_span_interface():
    with NoopSpan("x", kind="server", parent=None, a=1) as s:
        s.set_attribute("k", "v")
        s.set_attributes({"a": 1})
        s.set_status("error", "x")
        s.add_event("e")
        s.record_exception(ValueError())
    assert s.start() is s
    s.finish()
    assert s.sampled is False and s.trace_id == 0 and s.span_id == 0
    assert current_span_var.get() is None
    assert NoopSpan.attributes == {}


def test_public_api_without_agent_is_noop():
    import autoinstr

    if autoinstr._enabled:  # pragma: no cover - only when the test run itself is traced
        pytest.skip("agent loaded in the test process")
    with autoinstr.span("checkout", cart_size=3) as s:
        s.set_attribute("k", 1)
        assert autoinstr.current_span() is None
    headers = {}
    assert autoinstr.inject(headers) is headers and headers == {}
    assert autoinstr.extract({"traceparent": "00-" + "a" * 32 + "-" + "b" * 16 + "-01"}) is None

    @autoinstr.traced
    def f(x):
        return x + 1

    @autoinstr.traced("named")
    def g():
        yield from (1, 2)

    assert f(1) == 2 and list(g()) == [1, 2]
    assert f.__name__ == "f"
    st = autoinstr.stats()
    assert st["enabled"] is False
    assert autoinstr.flush() is True


def test_import_autoinstr_imports_no_heavy_modules():
    import subprocess

    code = ("import sys, autoinstr\n"
            "heavy = [m for m in ('flask', 'requests', 'sqlite3', 'psycopg2', 'sqlparse') if m in sys.modules]\n"
            "import threading\n"
            "print(heavy, threading.active_count())\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=30,
                         env={"PATH": "/usr/bin:/bin"})
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[] 1"


def test_misuse_of_the_api_never_raises(collected):
    """Bad input to the span API is dropped (one warning at most), never raised into the app."""
    with Span("bad-parent", parent=object()) as s:  # neither a span, a SpanContext nor None
        s.set_attribute(["unhashable"], 1)
        s.set_attributes(None)  # type: ignore[arg-type]
        s.add_event("ev", attributes=42)  # type: ignore[arg-type]
        s.set_attribute("ok", 1)
    assert s.parent_id is None and s.trace_id  # a new trace was started
    assert s.attributes == {"ok": 1}
    assert s.events and s.events[0]["name"] == "ev" and s.events[0]["attributes"] == {}
    assert len(collected) == 1


def test_span_times_are_perf_counter_ns_readings():
    """The compiled core reads CLOCK_MONOTONIC itself where perf_counter_ns does (Linux): the same clock, so span
    times order with perf_counter_ns() readings taken around them (the export's wall offset relies on it)."""
    import time

    before = time.perf_counter_ns()
    with Span("timed") as s:
        inside = time.perf_counter_ns()
    after = time.perf_counter_ns()
    assert before <= s.start_ns <= inside <= s.end_ns <= after
    assert after - before < 10_000_000_000  # (nanoseconds of the same clock, not another scale)


def test_ids_are_the_seeded_generators_draws(collected):
    """Span ids come from span._Ids.rng as its getrandbits(128) and getrandbits(64) give them (the compiled core
    draws the words itself, from the generator's own state): seeding it seeds them, across the generator's
    regenerations (624 words), and trace ids and span ids interleave as drawn."""
    from _random import Random

    span_mod._Ids.rng.seed(20261127)
    expected = Random()
    expected.seed(20261127)  # (as seeded: on 3.9, Random(n) is not seeded as seed(n) seeds)
    try:
        for _ in range(500):  # 3,000 words
            with Span("root", parent=None) as root, Span("child") as child:
                pass
            assert root._trace_id == (expected.getrandbits(128) or 1)
            assert root.span_id == (expected.getrandbits(64) or 1)
            assert child.span_id == (expected.getrandbits(64) or 1)
            assert child.parent_id == root.span_id
    finally:
        span_mod._Ids.reseed()
