"""Head sampling: ratio from the trace id, parent-based decisions, per-process rate limit."""

from __future__ import annotations

import gc
import random
import time

from autoinstr.trace import propagation
from autoinstr.trace.span import Sampling, Span, SpanContext, current_span, unsampled_count

MASK64 = (1 << 64) - 1


def test_decision_is_deterministic_from_trace_id():
    Sampling.configure(0.5)
    low = (1 << 62)  # low 64 bits well under half of the space
    high = (3 << 62)  # well over half
    for upper in (0, 0x1234, (1 << 64) - 1):
        assert Sampling.decide((upper << 64) | low) is True
        assert Sampling.decide((upper << 64) | high) is False
    rng = random.Random(7)
    for _ in range(500):
        tid = rng.getrandbits(128) or 1
        first = Sampling.decide(tid)
        assert all(Sampling.decide(tid) is first for _ in range(3))


def test_ratio_is_roughly_respected(collected):
    Sampling.configure(0.25)
    n = 4000
    for _ in range(n):
        with Span("s"):
            pass
    sampled = sum(len(c) for c in collected)
    assert 0.18 * n < sampled < 0.32 * n
    assert unsampled_count() == n - sampled


def test_same_trace_id_same_decision_in_every_service(collected):
    """Two 'services' receiving the same trace id with no sampling decision decide alike."""
    Sampling.configure(0.5)
    rng = random.Random(11)
    for _ in range(200):
        tid = rng.getrandbits(128) or 1
        ctx = SpanContext(tid, 1, None)
        a = Span("svc-a", parent=ctx).start()
        b = Span("svc-b", parent=ctx).start()
        assert a.sampled == b.sampled == ((tid & MASK64) < (1 << 63))
        a.finish()
        b.finish()


def test_ratio_zero_unsampled_spans_have_ids_and_are_not_submitted(collected):
    Sampling.configure(0.0)
    with Span("root") as root, Span("child") as child:
        assert current_span() is child
        headers = propagation.inject({}, child, ("tracecontext",))
    assert collected == []
    assert unsampled_count() == 2
    assert root.sampled is False and child.sampled is False
    assert root.trace_id and root.span_id and child.span_id
    # unsampled spans keep no parent id (nothing is exported); the trace id is shared all the same
    assert child.trace_id == root.trace_id
    tp = propagation.parse_traceparent(headers["traceparent"])
    assert tp == (root.trace_id, child.span_id, False)
    assert headers["traceparent"].endswith("-00")


def test_ratio_one_samples_everything(collected):
    Sampling.configure(1.0)
    for _ in range(200):
        with Span("s"):
            pass
    assert len(collected) == 200 and unsampled_count() == 0


def test_child_follows_root_decision(collected):
    Sampling.configure(1.0)
    with Span("root") as root:
        Sampling.configure(0.0)  # a config change mid-trace does not split the trace
        with Span("child") as child:
            pass
    assert root.sampled and child.sampled
    assert [len(c) for c in collected] == [2]


def test_remote_parent_sampled_flag_obeyed(collected):
    Sampling.configure(0.0)
    with Span("in", parent=SpanContext(0x1111, 0x2222, True)) as s, Span("child") as c:
        pass
    assert s.sampled and c.sampled
    assert len(collected) == 1

    Sampling.configure(1.0)
    with Span("in", parent=SpanContext(0x3333, 0x4444, False)) as u, Span("child"):
        pass
    assert u.sampled is False
    assert len(collected) == 1
    assert unsampled_count() == 2


def test_remote_parent_without_decision_uses_ratio(collected):
    Sampling.configure(0.5)
    yes = SpanContext((0xAB << 64) | 5, 1, None)
    no = SpanContext((0xAB << 64) | (MASK64 - 5), 1, None)
    with Span("a", parent=yes) as a:
        pass
    with Span("b", parent=no) as b:
        pass
    assert a.sampled is True and b.sampled is False


def test_remote_parent_sampled_flag_bypasses_rate_limit(collected):
    Sampling.configure(1.0, rate_limit=1)
    for i in range(20):
        with Span("in", parent=SpanContext(0x10 + i, 0x20, True)):
            pass
    assert len(collected) == 20


def test_rate_limiter_lets_through_about_n_per_second(collected):
    rate = 40
    Sampling.configure(1.0, rate_limit=rate)
    start = time.monotonic()
    while time.monotonic() - start < 0.5:
        with Span("burst"):
            pass
    elapsed = time.monotonic() - start
    sampled = len(collected)
    expected = rate + rate * elapsed  # a full bucket to start with, then `rate` per second
    assert expected * 0.7 <= sampled <= expected * 1.3 + 2, (sampled, expected)
    assert unsampled_count() > sampled  # the rest were not sampled, but counted


def test_rate_limit_zero_means_no_limit(collected):
    Sampling.configure(1.0, rate_limit=0)
    for _ in range(500):
        with Span("s"):
            pass
    assert len(collected) == 500


def test_fractional_rate_limit_allows_at_least_one(collected):
    Sampling.configure(1.0, rate_limit=0.5)
    for _ in range(10):
        with Span("s"):
            pass
    assert len(collected) == 1


def test_unsampled_spans_make_no_reference_cycle(collected):
    """With sampling off, a span must be freed by reference counting alone: a self-reference (root is
    self) would leave every span to the cyclic GC, which cost more than the span itself."""
    Sampling.configure(0.0)
    gc.collect()
    gc.disable()
    try:
        for _ in range(200):
            with Span("root"), Span("child"):
                pass
        assert gc.collect() == 0
    finally:
        gc.enable()
    with Span("root") as root:
        assert root.root is root and root.trace_id == Span("child").trace_id
