"""Throughput of autoinstr's export pipeline alone: spans/s converted, encoded and written by one exporter.

Run by run.py under `autoinstr-run` with AUTOINSTR_EXPORTER set to local (the SQLite store), collector (a real
`autoinstr collector` process) or otlp (the suite's sink), a queue large enough for every span and a flush
interval longer than the run, so the flush thread works only when asked.

1. The reference app is driven through its WSGI callable (/hello, /users/<id>, /db in turn) until
   BENCH_PIPELINE_SPANS real finished spans exist; while this runs, finished local traces are held back in a
   list instead of being handed to the pipeline (the hand-off point the agent itself uses).
2. A small first part goes through the pipeline to build the exporter (imports, connection, schema).
3. Timed: the rest is submitted as the request threads would submit it and `flush()` waits until the exporter
   has written all of it. Wall time and the process's CPU time (one busy thread: the flush thread) are reported.
"""

from __future__ import annotations

import io
import json
import os
import sys
import time
from typing import Any, Dict, List

import autoinstr
from autoinstr import bootstrap
from autoinstr.trace.span import Sink

SPANS = int(os.environ.get("BENCH_PIPELINE_SPANS", "50000"))
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))


def generate() -> List[Any]:
    import refapp

    held: List[Any] = []
    count = [0]

    def hold_many(spans: List[Any]) -> None:
        held.append(spans)
        count[0] += len(spans)

    def hold_one(span: Any) -> None:
        held.append(span)
        count[0] += 1

    real_submit, real_submit_one = Sink.submit, Sink.submit_one
    Sink.submit, Sink.submit_one = hold_many, hold_one  # type: ignore[assignment]
    template = {"REQUEST_METHOD": "GET", "SCRIPT_NAME": "", "QUERY_STRING": "", "SERVER_NAME": "127.0.0.1",
                "SERVER_PORT": "8000", "SERVER_PROTOCOL": "HTTP/1.1", "HTTP_HOST": "127.0.0.1:8000",
                "wsgi.version": (1, 0), "wsgi.url_scheme": "http", "wsgi.errors": sys.stderr}
    paths = ["/hello", "/users/7", "/db"]
    i = 0
    try:
        while count[0] < SPANS:
            environ = dict(template)
            environ["PATH_INFO"] = paths[i % 3]
            environ["wsgi.input"] = io.BytesIO(b"")
            body = refapp.app(environ, lambda status, headers, exc_info=None: None)
            b"".join(body)
            getattr(body, "close", lambda: None)()
            i += 1
    finally:
        Sink.submit, Sink.submit_one = real_submit, real_submit_one  # type: ignore[assignment]
    return held


def submit(items: List[Any]) -> None:
    for item in items:
        if item.__class__ is list:
            Sink.submit(item)
        else:
            Sink.submit_one(item)


def size(items: List[Any]) -> int:
    return sum(len(x) if x.__class__ is list else 1 for x in items)


def main() -> None:
    if not autoinstr._enabled:
        raise SystemExit("autoinstr is not loaded (run under autoinstr-run)")
    pipeline = bootstrap._get_pipeline()  # (made at the first finished span: here, before any)
    import refapp  # noqa: F401  (its set-up queries, when it creates its database, are spans too: not counted)

    pipeline.flush(timeout=60)
    other = autoinstr.stats()["spans_exported"]
    items = generate()
    warm = max(1, len(items) // 50)
    warm_spans = size(items[:warm])  # (counted first: the pipeline takes the lists it is given, and empties them)
    submit(items[:warm])
    if not pipeline.flush(timeout=120):
        raise SystemExit("warm-up flush did not finish")
    before: Dict[str, Any] = autoinstr.stats()
    timed = items[warm:]
    n = size(timed)
    cpu0, t0 = time.process_time(), time.perf_counter()
    submit(timed)
    flushed = pipeline.flush(timeout=600)
    wall, cpu = time.perf_counter() - t0, time.process_time() - cpu0
    after: Dict[str, Any] = autoinstr.stats()
    out = {
        "exporter": os.environ.get("AUTOINSTR_EXPORTER"), "spans": n, "warm_spans": warm_spans,
        "other_spans": other,
        "flushed": flushed, "wall_s": wall, "cpu_s": cpu, "spans_per_s": n / wall,
        "spans_per_cpu_s": n / cpu if cpu > 0 else None,
        "exported": after["spans_exported"] - before["spans_exported"],
        "dropped": {k: after["spans_dropped"][k] - before["spans_dropped"].get(k, 0) for k in after["spans_dropped"]},
        "export_errors": after["export_errors"] - before["export_errors"],
    }
    print("RESULT " + json.dumps(out), flush=True)


main()
