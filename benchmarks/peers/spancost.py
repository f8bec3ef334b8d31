"""Raw cost of one manual span with each tracer's own API, beside the pure-Python floor.

Run by run.py in each agent's venv under its launcher, so each tracer is set up as its launcher sets it up
(exporting to the suite's sink). BENCH_TRACER picks the API: floor (a trivial context manager: the least a
`with` block costs), autoinstr (`autoinstr.span`), ddtrace (`tracer.trace`), otel
(`tracer.start_as_current_span`). BENCH_SPANS spans per repeat, BENCH_REPEATS repeats; prints
`RESULT {json}` with the median ns per span.
"""

from __future__ import annotations

import json
import os
import statistics
import time
from typing import Any, Callable, List

TRACER = os.environ["BENCH_TRACER"]
SPANS = int(os.environ.get("BENCH_SPANS", "20000"))
REPEATS = int(os.environ.get("BENCH_REPEATS", "5"))


class FloorSpan:
    """What any span API costs at least: an object made, entered and left."""

    __slots__ = ("name",)

    def __init__(self, name: str) -> None:
        self.name = name

    def __enter__(self) -> FloorSpan:
        return self

    def __exit__(self, *exc: Any) -> None:
        return None


def make_span() -> Callable[[str], Any]:
    if TRACER == "floor":
        return FloorSpan
    if TRACER == "autoinstr":
        import autoinstr

        if not autoinstr._enabled:
            raise SystemExit("autoinstr is not loaded (run under autoinstr-run)")
        return autoinstr.span
    if TRACER == "ddtrace":
        from ddtrace.trace import tracer

        return tracer.trace
    if TRACER == "otel":
        from opentelemetry import trace

        provider = trace.get_tracer_provider()
        if type(provider).__name__ in ("ProxyTracerProvider", "NoOpTracerProvider"):
            raise SystemExit("no OpenTelemetry SDK configured (run under opentelemetry-instrument)")
        return trace.get_tracer("bench").start_as_current_span
    raise SystemExit("unknown BENCH_TRACER %r" % TRACER)


def loop(span: Callable[[str], Any], n: int) -> float:
    pc = time.perf_counter_ns
    t0 = pc()
    for _ in range(n):
        with span("work"):
            pass
    return (pc() - t0) / n


def main() -> None:
    span = make_span()
    loop(span, min(SPANS, 2000))
    samples: List[float] = [loop(span, SPANS) for _ in range(REPEATS)]
    print("RESULT " + json.dumps({"tracer": TRACER, "ns_per_span": statistics.median(samples), "samples": samples,
                                  "spans": SPANS * REPEATS + min(SPANS, 2000)}), flush=True)


main()
