"""The export pipeline (autoinstr.export.pipeline.Pipeline) with in-memory exporters."""

from __future__ import annotations

import json
import os
import threading
import time

import pytest
from ai_test_helpers import BlockingExporter, MemoryExporter

from autoinstr import integrations
from autoinstr.export import pipeline as pipeline_mod
from autoinstr.export.pipeline import MAX_RETRIES, Pipeline
from autoinstr.trace.span import Span


def finished_spans(n: int, name: str = "span") -> list:
    """n finished one-span traces (the sink discards them; we keep the objects)."""
    out = []
    for i in range(n):
        with Span(f"{name}-{i}") as s:
            pass
        out.append(s)
    return out


def finished_trace(children: int, name: str = "root") -> list:
    spans = []
    with Span(name) as root:
        for i in range(children):
            with Span(f"{name}-child-{i}") as c:
                pass
            spans.append(c)
    spans.append(root)
    return spans


def wait_for(predicate, timeout: float = 5.0) -> bool:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if predicate():
            return True
        time.sleep(0.01)
    return predicate()


@pytest.fixture
def make_pipeline():
    made: list = []

    def make(*exporters, **kwargs) -> Pipeline:
        kwargs.setdefault("flush_interval", 60.0)
        kwargs.setdefault("shutdown_timeout", 2.0)
        p = Pipeline(lambda: list(exporters), "test-svc", **kwargs)
        made.append((p, exporters))
        return p

    yield make
    for p, exporters in made:
        for e in exporters:
            if isinstance(e, BlockingExporter):
                e.release.set()
        p.shutdown(timeout=2.0)


# ------------------------------------------------------------------------------------ flushing


def test_flush_exports_records(make_pipeline):
    mem = MemoryExporter()
    p = make_pipeline(mem)
    for s in finished_spans(3):
        p.submit([s])
    p.submit(finished_trace(2))
    assert p.flush(timeout=5) is True
    names = sorted(r["name"] for r in mem.records)
    assert names == ["root", "root-child-0", "root-child-1", "span-0", "span-1", "span-2"]
    assert all(r["service"] == "test-svc" for r in mem.records)
    st = p.stats()
    assert st["spans_exported"] == 6
    assert st["spans_sampled"] == 6
    assert st["spans_queued"] == 0
    assert st["spans_dropped"] == {"queue_full": 0, "export_failed": 0, "conversion": 0, "shutdown": 0}
    assert st["export_errors"] == 0
    assert st["exporters"][mem.name]["exported"] == 6
    assert st["pid"] == os.getpid()


def test_submit_one_if_available(make_pipeline):
    mem = MemoryExporter()
    p = make_pipeline(mem)
    (s,) = finished_spans(1, "single")
    if hasattr(p, "submit_one"):
        p.submit_one(s)
    else:  # pragma: no cover - older pipelines take lists only
        p.submit([s])
    assert p.flush(timeout=5)
    assert [r["name"] for r in mem.records] == ["single-0"]


def test_flush_with_nothing_queued_starts_no_thread(make_pipeline):
    mem = MemoryExporter()
    p = make_pipeline(mem)
    before = threading.active_count()
    assert p.flush(timeout=1) is True
    assert threading.active_count() <= before
    assert mem.calls == 0


def test_periodic_flush_without_being_asked(make_pipeline):
    mem = MemoryExporter()
    p = make_pipeline(mem, flush_interval=0.05)
    p.submit(finished_spans(2))
    assert wait_for(lambda: len(mem.records) == 2, 5)


def test_full_batch_wakes_flush_thread_early(make_pipeline):
    mem = MemoryExporter()
    p = make_pipeline(mem, flush_interval=60.0, max_batch_spans=5)
    for s in finished_spans(5):
        p.submit([s])
    assert wait_for(lambda: len(mem.records) == 5, 5)


class _CpuHeavyExporter(MemoryExporter):
    """Its second export burns `burn_s` of the flush thread's CPU time (what early-flush rationing measures)."""

    def __init__(self, burn_s: float) -> None:
        super().__init__()
        self.burn_s = burn_s
        self.burnt = threading.Event()

    def export(self, records):
        super().export(records)
        if self.calls == 2:
            end = time.thread_time() + self.burn_s
            while time.thread_time() < end:
                pass
            self.burnt.set()


def test_early_flushes_are_rationed_until_the_queue_is_half_full(make_pipeline):
    # An early flush that cost 0.6 s of CPU holds the next batch-full wake-up back for 1.8 s (duty 0.25); once
    # half the queue is taken, rationing ends: spans the exporter can take are not dropped to save CPU.
    assert pipeline_mod.EARLY_FLUSH_DUTY == 0.25
    heavy = _CpuHeavyExporter(burn_s=0.6)
    p = make_pipeline(heavy, flush_interval=60.0, max_batch_spans=5, max_queue_spans=100)
    for expected in (5, 10):  # the first flush (never rationed), then the heavy one
        for s in finished_spans(5):
            p.submit([s])
        assert wait_for(lambda n=expected: len(heavy.records) == n, 10)
    assert heavy.burnt.wait(10)
    time.sleep(0.05)  # the flush thread reads its CPU time and opens the window
    rationed_from = time.monotonic()
    for s in finished_spans(5):
        p.submit([s])
    time.sleep(0.2)
    assert len(heavy.records) == 10  # a batch-full wake-up inside the window waits
    for s in finished_spans(45):  # 50 queued: half the queue
        p.submit([s])
    assert wait_for(lambda: len(heavy.records) == 60, 10)
    assert time.monotonic() - rationed_from < 1.5  # well inside the 1.8 s window: not rationed any more
    assert p.dropped_queue_full == 0


def test_the_flush_thread_lends_the_gil_between_slices_of_conversion(make_pipeline, monkeypatch):
    """Every PAUSE_EVERY spans converted on the flush thread, a short sleep hands the GIL to an app thread
    waiting for it (else it waits a switch interval); never on an app's own thread (autoinstr.flush() with
    no flush thread, the exit flush), nor while the queue is half full."""
    from autoinstr.export import records as records_mod

    monkeypatch.setattr(records_mod, "PAUSE_EVERY", 10)
    sleeps: list = []
    real_sleep = time.sleep

    def recording_sleep(seconds):
        if seconds == pipeline_mod.GIL_PAUSE_S:
            sleeps.append(threading.current_thread().name)
        real_sleep(seconds)

    monkeypatch.setattr(pipeline_mod.time, "sleep", recording_sleep)
    exporter = MemoryExporter()
    p = make_pipeline(exporter, max_batch_spans=100, max_queue_spans=1000)
    for s in finished_spans(100):  # a batch: the flush thread wakes and converts it
        p.submit([s])
    assert wait_for(lambda: len(exporter.records) == 100)
    assert sleeps == ["autoinstr-flush"] * 10
    del sleeps[:]
    p._queued = 600  # as if the queue were over half full: keeping up comes first
    p._lend_gil()
    p._queued = 0
    p._flush_requests += 1  # as if a thread waited in autoinstr.flush(): it wants the flush done
    p._lend_gil()
    p._flush_requests -= 1
    assert sleeps == []
    p.flush_once()  # on this (an app's) thread: never a pause
    for s in finished_spans(50):
        p.submit([s])
    p.flush_once()
    assert len(exporter.records) == 150 and sleeps == []


def test_a_backlog_of_batches_is_sent_with_a_pause_between_two_batches():
    """After an outage the retry queue holds several batches, sent in one go: the flush thread lends the
    GIL between two of them (each may be milliseconds of encoding), not before the first nor after the last."""
    exporter = MemoryExporter()
    slot = pipeline_mod._ExporterSlot(exporter, max_pending_spans=1000)
    calls: list = []
    for i in range(3):
        slot.offer([{"n": i}, {"n": i}])
    slot.pump(time.monotonic(), pause=lambda: calls.append(len(exporter.records)))
    assert len(exporter.records) == 6 and calls == [2, 4]


def test_flush_thread_is_suppressed(make_pipeline):
    seen = []

    class Probe(MemoryExporter):
        def export(self, records):
            seen.append(integrations.is_suppressed())
            super().export(records)

    p = make_pipeline(Probe("probe"))
    p.submit(finished_spans(1))
    assert p.flush(timeout=5)
    assert seen == [True]
    assert integrations.is_suppressed() is False  # only the flush thread


def test_conversion_failure_is_counted_and_others_exported(make_pipeline, capsys):
    mem = MemoryExporter()
    p = make_pipeline(mem)
    with Span("broken") as broken:
        broken.add_event("bad", time_ns="not a number")
    p.submit([broken])
    p.submit(finished_spans(2))
    assert p.flush(timeout=5)
    assert sorted(r["name"] for r in mem.records) == ["span-0", "span-1"]
    assert p.stats()["spans_dropped"]["conversion"] == 1


# ------------------------------------------------------------------------------------ overflow


def test_queue_overflow_drops_new_spans_and_counts_them(make_pipeline):
    mem = MemoryExporter()
    p = make_pipeline(mem, max_queue_spans=10, max_batch_spans=100)
    first = finished_spans(8, "first")
    second = finished_spans(8, "second")
    first_names = sorted(s.name for s in first)  # (the pipeline takes the list: it may be emptied)
    p.submit(first)
    p.submit(second)  # 16 > 10: this whole trace is dropped, the queued one kept
    st = p.stats()
    assert st["spans_dropped"]["queue_full"] == 8
    assert p.flush(timeout=5)
    assert sorted(r["name"] for r in mem.records) == first_names
    st = p.stats()
    assert st["spans_sampled"] == 16
    assert st["spans_exported"] == 8


def test_overflow_never_blocks_even_with_hung_exporter(make_pipeline):
    hung = BlockingExporter("hung-overflow")
    p = make_pipeline(hung, max_queue_spans=100, max_batch_spans=50)
    p.submit(finished_spans(1))
    threading.Thread(target=p.flush, kwargs={"timeout": 0.1}, daemon=True).start()
    assert hung.entered.wait(5)  # the flush thread is now stuck in export()
    spans = finished_spans(50)
    start = time.monotonic()
    for _ in range(100):
        for s in spans:
            p.submit([s])
    elapsed = time.monotonic() - start
    assert elapsed < 2.0  # 5000 submits; a blocking submit would hang here
    st = p.stats()
    assert st["spans_dropped"]["queue_full"] >= 5000 - 100
    assert st["spans_queued"] <= 100


# ------------------------------------------------------------------------------ failing export


def test_failing_exporter_retried_then_dropped_and_counted(make_pipeline, monkeypatch, capsys):
    monkeypatch.setattr(pipeline_mod, "BACKOFF_BASE", 0.01)
    bad = MemoryExporter("always-failing-1", always_fail=True)
    p = make_pipeline(bad)
    p.submit(finished_spans(2))
    for _ in range(MAX_RETRIES + 3):
        assert p.flush(timeout=5)
        time.sleep(0.05)  # let each retry's backoff pass
    assert bad.calls == MAX_RETRIES + 1
    st = p.stats()
    assert st["export_errors"] == MAX_RETRIES + 1
    assert st["spans_dropped"]["export_failed"] == 2
    assert st["exporters"]["always-failing-1"]["pending"] == 0
    assert "collector unreachable" in st["exporters"]["always-failing-1"]["last_error"]
    err = capsys.readouterr().err
    assert err.count("always-failing-1") == 1  # one warning, later failures only counted


def test_retry_backoff_is_respected(make_pipeline, monkeypatch):
    monkeypatch.setattr(pipeline_mod, "BACKOFF_BASE", 10.0)
    bad = MemoryExporter("slow-retry", always_fail=True)
    p = make_pipeline(bad)
    p.submit(finished_spans(1))
    assert p.flush(timeout=5)
    assert p.flush(timeout=5)
    assert p.flush(timeout=5)
    assert bad.calls == 1  # the retry is not due yet


def test_failing_exporter_recovers(make_pipeline, monkeypatch):
    monkeypatch.setattr(pipeline_mod, "BACKOFF_BASE", 0.01)
    flaky = MemoryExporter("flaky", fail_times=2)
    p = make_pipeline(flaky)
    p.submit(finished_spans(3))
    for _ in range(4):
        assert p.flush(timeout=5)
        time.sleep(0.03)
    assert len(flaky.records) == 3
    st = p.stats()
    assert st["spans_dropped"]["export_failed"] == 0
    assert st["export_errors"] == 2
    assert st["spans_exported"] == 3


def test_one_failing_exporter_does_not_affect_another(make_pipeline, monkeypatch):
    monkeypatch.setattr(pipeline_mod, "BACKOFF_BASE", 0.01)
    bad = MemoryExporter("always-failing-2", always_fail=True)
    good = MemoryExporter("good")
    p = make_pipeline(bad, good)
    p.submit(finished_spans(2, "a"))
    assert p.flush(timeout=5)
    assert sorted(r["name"] for r in good.records) == ["a-0", "a-1"]
    p.submit(finished_spans(1, "b"))
    assert p.flush(timeout=5)
    assert sorted(r["name"] for r in good.records) == ["a-0", "a-1", "b-0"]
    assert len(good.batches) == 2  # each batch sent once to the good exporter, no re-sends
    st = p.stats()["exporters"]
    assert st["good"]["exported"] == 3 and st["good"]["errors"] == 0
    assert st["always-failing-2"]["errors"] >= 1


def test_hung_exporter_does_not_delay_another(make_pipeline):
    good = MemoryExporter("good-sibling")
    hung = BlockingExporter("hung-sibling")
    p = make_pipeline(good, hung)
    p.submit(finished_spans(1, "first"))
    threading.Thread(target=p.flush, kwargs={"timeout": 0.1}, daemon=True).start()
    assert hung.entered.wait(5)  # the first batch reached both; the hung exporter now holds its thread
    assert wait_for(lambda: [r["name"] for r in good.records] == ["first-0"], 1.0)
    p.submit(finished_spans(1, "second"))
    threading.Thread(target=p.flush, kwargs={"timeout": 0.1}, daemon=True).start()
    assert wait_for(lambda: len(good.records) == 2, 1.0)


# ------------------------------------------------------------------------------------ shutdown


def test_shutdown_exports_everything_and_stops(make_pipeline):
    mem = MemoryExporter()
    p = make_pipeline(mem)
    p.submit(finished_spans(4))
    assert p.shutdown(timeout=5) is True
    assert len(mem.records) == 4
    assert mem.shutdown_calls == 1
    p.submit(finished_spans(1))  # after shutdown: dropped (counted), never raises
    assert p.stats()["spans_dropped"]["queue_full"] == 1


def test_shutdown_when_nothing_was_ever_queued(make_pipeline):
    p = make_pipeline(MemoryExporter())
    start = time.monotonic()
    assert p.shutdown(timeout=5) is True
    assert time.monotonic() - start < 0.5


def test_shutdown_with_hung_exporter_returns_within_deadline(make_pipeline, capsys):
    hung = BlockingExporter("hung-at-exit")
    p = make_pipeline(hung, shutdown_timeout=0.5)
    p.submit(finished_spans(3))
    start = time.monotonic()
    assert p.shutdown() is False
    elapsed = time.monotonic() - start
    assert elapsed < 0.5 + 1.5
    assert elapsed >= 0.4
    assert "AUTOINSTR_SHUTDOWN_TIMEOUT" in capsys.readouterr().err


def test_shutdown_explicit_timeout_overrides_default(make_pipeline):
    hung = BlockingExporter("hung-explicit")
    p = make_pipeline(hung, shutdown_timeout=30.0)
    p.submit(finished_spans(1))
    start = time.monotonic()
    assert p.shutdown(timeout=0.2) is False
    assert time.monotonic() - start < 0.2 + 1.5


def test_spans_lost_at_exit_deadline_are_counted(make_pipeline):
    hung = BlockingExporter("hung-count")
    p = make_pipeline(hung, shutdown_timeout=0.3)
    p.submit(finished_spans(3))
    assert p.shutdown() is False
    assert p.stats()["spans_dropped"]["shutdown"] == 3


# ---------------------------------------------------------------------------------------- fork


def test_after_fork_in_child_starts_empty(make_pipeline, tmp_path):
    mem = MemoryExporter("forked")
    p = make_pipeline(mem)
    p.submit(finished_spans(1, "exported-before-fork"))
    assert p.flush(timeout=5)
    p.submit(finished_spans(2, "queued-in-parent"))
    open_span = Span("open-across-fork").start()
    result = tmp_path / "child.json"
    pid = os.fork()
    if pid == 0:  # the child
        code = 1
        try:
            p.after_fork_in_child()
            out = {"queued_after_reset": p.stats()["spans_queued"],
                   "sampled_after_reset": p.stats()["spans_sampled"],
                   "fork_calls": mem.fork_calls}
            mem.batches.clear()
            open_span.finish()  # inherited from the parent: the parent's to export, skipped here
            p.submit([open_span])
            p.submit(finished_spans(1, "child-span"))
            out["flushed"] = p.flush(timeout=5)
            out["names"] = sorted(r["name"] for r in mem.records)
            out["exported"] = p.stats()["spans_exported"]
            result.write_text(json.dumps(out))
            code = 0
        finally:
            os._exit(code)
    _, status = os.waitpid(pid, 0)
    assert os.WIFEXITED(status) and os.WEXITSTATUS(status) == 0
    out = json.loads(result.read_text())
    assert out["queued_after_reset"] == 0
    assert out["sampled_after_reset"] == 0
    assert out["fork_calls"] == 1
    assert out["flushed"] is True
    assert out["names"] == ["child-span-0"]
    assert out["exported"] == 1
    # the parent is untouched: its queued spans are still exported, by the parent
    open_span.finish()
    p.submit([open_span])
    assert p.flush(timeout=5)
    assert sorted(r["name"] for r in mem.records) == ["exported-before-fork-0", "open-across-fork",
                                                      "queued-in-parent-0", "queued-in-parent-1"]


def test_take_groups_local_traces_in_chunks_without_losing_any(make_pipeline):
    """A flush takes the queue in chunks of at most a batch: a trace is never split unless it alone is longer
    than a batch; spans queued alone go together; every span is taken once and counted."""
    p = make_pipeline(MemoryExporter(), max_batch_spans=1000, max_queue_spans=10000)
    traces = [["a"] * 3, ["b"] * 4, ["c"] * 2500, ["d"] * 1, ["e"] * 998]
    for spans in traces[:2]:
        p._buffer.append(spans)
    p._buffer.append("s1")  # (a span queued alone)
    for spans in traces[2:]:
        p._buffer.append(spans)
    p._buffer.append("s2")
    chunks = p._take()
    flat = [x for chunk, _ in chunks for spans in chunk for x in spans]
    assert sorted(flat) == sorted([x for spans in traces for x in spans] + ["s1", "s2"])
    assert all(size == sum(len(s) for s in chunk) <= 1000 for chunk, size in chunks)
    whole = [spans for chunk, _ in chunks for spans in chunk if spans[0] in "abde"]
    assert sorted(map(tuple, whole)) == sorted(tuple(t) for t in traces if t[0] != "c")  # (not split)
    assert [spans for chunk, _ in chunks for spans in chunk if spans[0] in ("s1", "s2")] == [["s1", "s2"]]
    assert p.submitted == len(flat) and p._queued == 0
    assert p._take() == []


def test_exit_flush_of_a_large_backlog_exports_in_chunks(make_pipeline):
    """A backlog far larger than a batch reaches the exporter batch by batch, so an exit deadline that
    cuts it short loses only the part it did not reach."""
    mem = MemoryExporter()
    p = make_pipeline(mem)
    for i in range(30):
        p.submit(finished_spans(100, "b%d" % i))
    assert p.shutdown(timeout=10)
    assert len(mem.records) == 3000
    assert max(len(b) for b in mem.batches) <= p.batch


@pytest.mark.parametrize("exporting", [True, False], ids=["exported", "exporter-none"])
def test_queued_spans_wait_untracked_by_the_collector_and_are_tracked_again_when_taken(make_pipeline, monkeypatch,
                                                                                      exporting):
    """The compiled core untracks a handed-over span that cannot be in a cycle (its queue alone holds it), so the
    collections of the youngest generations neither traverse nor promote it; what the flush thread takes is
    tracked again as it converts it (or at once with no exporter). A span with a container among its attributes
    stays tracked; a cycle made through a span after it was queued is collected once the span is exported."""
    import gc
    import weakref

    from autoinstr.trace.span import Sink, compiled

    if compiled("track_again") is None:
        pytest.skip("the compiled span core is not in use")
    mem = MemoryExporter()
    p = make_pipeline(*([mem] if exporting else []))
    monkeypatch.setattr(Sink, "submit", p.submit)
    monkeypatch.setattr(Sink, "submit_one", p.submit_one)
    with Span("alone") as alone:
        alone.set_attribute("n", 1)
    with Span("root") as root, Span("child") as child:
        child.set_attribute("tags", ["a", "b"])  # a list: a container, so the child stays tracked
    assert not gc.is_tracked(alone) and not gc.is_tracked(root) and gc.is_tracked(child)
    trace = p._buffer[-1]
    assert trace == [child, root] and not gc.is_tracked(trace)

    class Holder:
        pass

    holder = Holder()
    holder.span = alone
    alone.attributes["holder"] = holder  # a cycle made after the hand-over (nothing stops a user doing so)
    gone = weakref.ref(holder)
    del holder
    assert p.flush(timeout=5)
    assert gc.is_tracked(alone) and gc.is_tracked(root)
    assert sorted(r["name"] for r in mem.records) == (["alone", "child", "root"] if exporting else [])
    del trace, alone
    gc.collect()
    # collected: no leak through the untracked wait, nor through the cache of cleaned attributes (an app's object
    # as a value is not kept in its keys)
    assert gone() is None

    p._limit = 0  # full: dropped, and tracked again on the way out
    with Span("dropped") as dropped:
        pass
    assert gc.is_tracked(dropped) and p.dropped_queue_full == 1


def test_let_go_tracks_taken_spans_again_and_empties_the_list_in_one_call(make_pipeline, monkeypatch):
    """What the flush thread lets go without converting (exporter `none`, dropped chunks) and each converted slice:
    tracked again and released in one call, so no collection on another thread meets them tracked and still held
    (it would promote them all: with exporter `none` a CPU-bound app's collections met hundreds so)."""
    import gc

    from autoinstr.export.records import let_go
    from autoinstr.trace.span import Sink, compiled

    p = make_pipeline()
    monkeypatch.setattr(Sink, "submit", p.submit)
    monkeypatch.setattr(Sink, "submit_one", p.submit_one)
    with Span("root") as root, Span("child") as child:
        pass
    with Span("alone") as alone:
        pass
    taken = p._take()
    if compiled("let_go") is not None:
        assert not any(gc.is_tracked(s) for s in (root, child, alone))
    let_go(taken)
    assert taken == [] and all(gc.is_tracked(s) for s in (root, child, alone))
    with pytest.raises(TypeError):
        let_go(("not", "a", "list"))  # type: ignore[arg-type]
