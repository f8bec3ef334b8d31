"""concurrent.futures thread pools keep the submitting span as parent once the `futures` integration is on."""

from __future__ import annotations

import asyncio
import concurrent.futures
import concurrent.futures.thread
import contextvars

import pytest
import wrapt

from autoinstr.integrations import futures as futures_integration
from autoinstr.trace.span import Span, current_span

app_var: contextvars.ContextVar = contextvars.ContextVar("app_var", default="default")


@pytest.fixture
def patched_pools(registry):
    module = concurrent.futures.thread
    registry.INTEGRATIONS["futures"] = (("concurrent.futures.thread",), "autoinstr.integrations.futures", None)
    assert registry.apply("futures", module) is True
    assert _is_wrapped(module)
    yield module
    futures_integration.unpatch(module)
    if _is_wrapped(module):  # see test_unpatch_restores_submit
        module.ThreadPoolExecutor.submit = module.ThreadPoolExecutor.__dict__["submit"].__wrapped__
    assert not _is_wrapped(module)


def _is_wrapped(module) -> bool:
    return isinstance(module.ThreadPoolExecutor.__dict__["submit"], wrapt.FunctionWrapper)


def test_pool_work_gets_the_submitting_span_as_parent(collected, patched_pools):
    def work(i):
        with Span(f"work-{i}") as s:
            return current_span() is s, s

    with concurrent.futures.ThreadPoolExecutor(max_workers=3) as pool, Span("request") as root:
        results = [f.result() for f in [pool.submit(work, i) for i in range(6)]]
    for ok, s in results:
        assert ok
        assert s.parent_id == root.span_id and s.trace_id == root.trace_id
    assert len(collected) == 1 and len(collected[0]) == 7


def test_pool_current_span_inside_work_and_reset_after(collected, patched_pools):
    with concurrent.futures.ThreadPoolExecutor(max_workers=1) as pool:
        with Span("request") as root:
            inside = pool.submit(current_span).result()
        after = pool.submit(current_span).result()  # the same worker thread, no span now
    assert inside is root
    assert after is None


def test_pool_map_and_kwargs(collected, patched_pools):
    def work(x, *, scale=1):
        return current_span(), x * scale

    with concurrent.futures.ThreadPoolExecutor(max_workers=2) as pool, Span("request") as root:
        spans = [s for s, _ in pool.map(work, range(4))]
        s, value = pool.submit(work, 5, scale=3).result()
    assert all(x is root for x in spans)
    assert s is root and value == 15


def test_app_contextvars_not_propagated(collected, patched_pools):
    """Only the agent's span travels: the app's contextvars behave exactly as without the agent."""
    token = app_var.set("set-in-caller")
    try:
        with concurrent.futures.ThreadPoolExecutor(max_workers=1) as pool, Span("request") as root:
            value, span = pool.submit(lambda: (app_var.get(), current_span())).result()
    finally:
        app_var.reset(token)
    assert value == "default"
    assert span is root


def test_without_span_submit_is_untouched(collected, patched_pools):
    with concurrent.futures.ThreadPoolExecutor(max_workers=1) as pool:
        assert pool.submit(current_span).result() is None
        assert pool.submit(lambda a, b=0: a + b, 1, b=2).result() == 3


def test_exception_in_work_propagates_through_future(collected, patched_pools):
    def boom():
        with Span("failing"):
            raise ValueError("in pool")

    with concurrent.futures.ThreadPoolExecutor(max_workers=1) as pool, Span("request"):
        fut = pool.submit(boom)
        with pytest.raises(ValueError, match="in pool"):
            fut.result()
    failing = [s for c in collected for s in c if s.name == "failing"][0]
    assert failing.status == "error"


def test_work_finishing_after_root_is_submitted_alone(collected, patched_pools):
    import threading

    gate = threading.Event()

    def slow():
        gate.wait(5)
        with Span("late") as s:
            return s

    with concurrent.futures.ThreadPoolExecutor(max_workers=1) as pool:
        with Span("request") as root:
            fut = pool.submit(slow)
        gate.set()
        late = fut.result()
    assert late.parent_id == root.span_id
    assert [[s.name for s in c] for c in collected] == [["request"], ["late"]]


def test_asyncio_run_in_executor(collected, patched_pools):
    def blocking():
        with Span("blocking") as s:
            return s

    async def main():
        loop = asyncio.get_running_loop()
        with Span("handler") as root:
            s = await loop.run_in_executor(None, blocking)
            assert current_span() is root
        return root, s

    root, s = asyncio.run(main())
    assert s.parent_id == root.span_id
    assert len(collected) == 1


def test_not_patched_twice(collected, patched_pools, registry):
    before = patched_pools.ThreadPoolExecutor.__dict__["submit"]
    assert registry.apply("futures", patched_pools) is False
    assert patched_pools.ThreadPoolExecutor.__dict__["submit"] is before
    assert not isinstance(before.__wrapped__, wrapt.FunctionWrapper)


def test_unpatch_restores_submit(registry):
    module = concurrent.futures.thread
    original = module.ThreadPoolExecutor.__dict__["submit"]
    futures_integration.patch(module)
    try:
        futures_integration.unpatch(module)
        assert module.ThreadPoolExecutor.__dict__["submit"] is original
    finally:
        if _is_wrapped(module):
            module.ThreadPoolExecutor.submit = original
