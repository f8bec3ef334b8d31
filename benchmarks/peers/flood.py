"""The flood: many spans produced fast, paced at one rate, and what reaches the sink.

Run by run.py under `opentelemetry-instrument` (its BatchSpanProcessor with default settings, OTLP/HTTP to
the sink) or `autoinstr-run` (our pipeline, default settings, OTLP/HTTP to the sink). BENCH_TRACER is otel or
autoinstr; BENCH_FLOOD_SPANS spans are produced in bursts of BENCH_FLOOD_BURST, paced at BENCH_FLOOD_RATE
spans/s (0: as fast as the tracer goes). At the end the tracer is flushed (what its queue still holds is sent)
and `RESULT {json}` gives produced, the production time and, for autoinstr, its own drop counters
(autoinstr.stats()); the suite compares with what the sink received.
"""

from __future__ import annotations

import json
import os
import time
from typing import Any, Callable, Dict

TRACER = os.environ["BENCH_TRACER"]
SPANS = int(os.environ.get("BENCH_FLOOD_SPANS", "50000"))
RATE = float(os.environ.get("BENCH_FLOOD_RATE", "0"))
BURST = int(os.environ.get("BENCH_FLOOD_BURST", "100"))


def setup() -> tuple[Callable[..., Any], Callable[[], Dict[str, Any]]]:
    if TRACER == "autoinstr":
        import autoinstr

        if not autoinstr._enabled:
            raise SystemExit("autoinstr is not loaded (run under autoinstr-run)")

        def finish() -> Dict[str, Any]:
            flushed = autoinstr.flush(timeout=60)
            return {"flushed": flushed, "stats": autoinstr.stats()}

        return autoinstr.span, finish
    if TRACER == "otel":
        from opentelemetry import trace

        provider: Any = trace.get_tracer_provider()
        if not hasattr(provider, "force_flush"):
            raise SystemExit("no OpenTelemetry SDK configured (run under opentelemetry-instrument)")

        def finish_otel() -> Dict[str, Any]:
            return {"flushed": provider.force_flush(60000), "stats": None}

        return trace.get_tracer("flood").start_as_current_span, finish_otel
    raise SystemExit("unknown BENCH_TRACER %r" % TRACER)


def main() -> None:
    span, finish = setup()
    produced = 0
    t0 = time.perf_counter()
    while produced < SPANS:
        for i in range(min(BURST, SPANS - produced)):
            with span("flood.item") as s:
                s.set_attribute("item.index", produced + i)
                s.set_attribute("item.kind", "bench")
        produced += min(BURST, SPANS - produced)
        if RATE > 0:
            ahead = t0 + produced / RATE - time.perf_counter()
            if ahead > 0:
                time.sleep(ahead)
    produce_s = time.perf_counter() - t0
    out = {"tracer": TRACER, "produced": produced, "produce_s": produce_s, "rate_target": RATE}
    t1 = time.perf_counter()
    out.update(finish())
    out["flush_s"] = time.perf_counter() - t1
    print("RESULT " + json.dumps(out, default=repr), flush=True)


main()
