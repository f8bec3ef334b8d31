"""In-process cost per request: drive the reference app's WSGI callable directly, route by route.

Run by run.py in one agent's venv under that agent's launcher (`python inproc.py`, `autoinstr-run python
inproc.py`, `ddtrace-run python inproc.py`, `opentelemetry-instrument python inproc.py`), so the app is
instrumented exactly as the launcher instruments any app. No server and no socket on the request path
(except /outgoing's own call): what is left is the app plus the agent.

Each timed block is BENCH_REQUESTS requests to one route followed by the agent's own flush (export of what
those requests made), and starts after an untimed flush: so each route carries exactly its own export work,
not whatever batch happened to fill up during it (the agents export in bursts, every second or batch).

Environment: BENCH_AGENT (none, autoinstr, ddtrace, otel: whose flush to call), BENCH_ROUTES (comma list of
paths), BENCH_REQUESTS (per block), BENCH_REPEATS (blocks per route, routes interleaved), BENCH_WARMUP (per
route). Prints one line `RESULT {json}`: per route the mean ns per request over its blocks, requests made,
peak RSS (ru_maxrss) at the end.

With BENCH_SERVE=1 it times what it is told instead (run.py's agents taking turns: several of these processes
up at once, each stopped outside its turn), once warmed up and `READY`: one answer line per command line on
stdin: `turn PATH MS` (requests until MS milliseconds have passed: `requests ns`), `flush` (the agent's flush:
`0 ns`), `result` (the RESULT line, without timings, then it exits).
"""

from __future__ import annotations

import io
import json
import os
import resource
import statistics
import sys
import time
from typing import Any, Callable, Dict, List

AGENT = os.environ.get("BENCH_AGENT", "none")
ROUTES = os.environ.get("BENCH_ROUTES", "/hello,/users/42,/db,/outgoing").split(",")
REQUESTS = int(os.environ.get("BENCH_REQUESTS", "500"))
REPEATS = int(os.environ.get("BENCH_REPEATS", "5"))
WARMUP = int(os.environ.get("BENCH_WARMUP", "200"))

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
rss_before_app_kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
environment_size = len(os.environ)  # (run.py pads every agent's to the same size)
import refapp  # noqa: E402  (after the launcher has set up its agent, as an app's own import would be)

app: Callable[..., Any] = refapp.app

TEMPLATE: Dict[str, Any] = {
    "REQUEST_METHOD": "GET", "SCRIPT_NAME": "", "QUERY_STRING": "", "SERVER_NAME": "127.0.0.1",
    "SERVER_PORT": "8000", "SERVER_PROTOCOL": "HTTP/1.1", "REMOTE_ADDR": "127.0.0.1", "REMOTE_PORT": "50000",
    "HTTP_HOST": "127.0.0.1:8000", "HTTP_USER_AGENT": "bench/1.0", "HTTP_ACCEPT": "*/*",
    "wsgi.version": (1, 0), "wsgi.url_scheme": "http", "wsgi.errors": sys.stderr, "wsgi.multithread": False,
    "wsgi.multiprocess": False, "wsgi.run_once": False,
}
statuses: List[str] = []


def start_response(status: str, headers: List[Any], exc_info: Any = None) -> Callable[[bytes], None]:
    statuses.append(status)
    return lambda data: None


def request(path: str) -> bytes:
    environ = dict(TEMPLATE)
    environ["PATH_INFO"] = path
    environ["wsgi.input"] = io.BytesIO(b"")
    body = app(environ, start_response)
    try:
        return b"".join(body)
    finally:
        close = getattr(body, "close", None)
        if close is not None:
            close()  # servers call it; agents finish their server span here


def flush_agent() -> None:
    """Export now what the agent holds, with its own API, returning when it is sent."""
    if AGENT == "autoinstr":
        import autoinstr

        autoinstr.flush(timeout=60)
    elif AGENT == "ddtrace":
        from ddtrace.trace import tracer

        tracer.flush()
    elif AGENT == "otel":
        from opentelemetry import trace

        trace.get_tracer_provider().force_flush(60000)  # type: ignore[attr-defined]


def timed(path: str, n: int) -> float:
    flush_agent()  # leftovers of the previous block are not this block's cost
    pc = time.perf_counter_ns
    t0 = pc()
    for _ in range(n):
        request(path)
    flush_agent()  # this block's export work is
    return (pc() - t0) / n


def warmed_up() -> None:
    for path in ROUTES:  # each page answers 200 with a body before anything is timed
        statuses.clear()
        body = request(path)
        if not statuses or not statuses[0].startswith("200") or not body:
            raise SystemExit("route %s answered %r %r" % (path, statuses[:1], body[:200]))
    for path in ROUTES:
        timed(path, WARMUP)
    # The first full collection after start-up (of everything imported) is a one-off: left to come when it will,
    # it fell into whichever route was timed first (in turns: /hello +23 to +31 us over no agent, /users/42 +4 to
    # +9; collected here, +13 to +15 and +17 to +20). The collections of the requests themselves are still timed.
    import gc

    gc.collect()


def result(requests: Dict[str, int], **timings: Any) -> str:
    return "RESULT " + json.dumps(dict(
        timings, requests=requests, maxrss_kb=resource.getrusage(resource.RUSAGE_SELF).ru_maxrss,
        maxrss_before_app_kb=rss_before_app_kb, environment_size=environment_size,
        non_200=sum(1 for s in statuses if not s.startswith("200"))))


def main() -> None:
    warmed_up()
    samples: Dict[str, List[float]] = {p: [] for p in ROUTES}
    for _ in range(REPEATS):
        for path in ROUTES:
            samples[path].append(timed(path, REQUESTS))
    print(result({p: 1 + WARMUP + REQUESTS * REPEATS for p in ROUTES},
                 ns_per_request={p: statistics.fmean(v) for p, v in samples.items()}, samples=samples), flush=True)


def serve() -> None:
    warmed_up()
    requests = {p: 1 + WARMUP for p in ROUTES}
    pc = time.perf_counter_ns
    print("READY", flush=True)
    for line in sys.stdin:
        words = line.split()
        if words == ["result"]:
            print(result(requests), flush=True)
            return
        t0 = pc()
        n = 0
        if words == ["flush"]:
            flush_agent()
        elif len(words) == 3 and words[0] == "turn" and words[1] in requests:
            path, until = words[1], t0 + int(float(words[2]) * 1e6)
            while True:  # (a turn of a given time, not of a given count: a slow agent's must not span the others')
                request(path)
                n += 1
                if pc() >= until:
                    break
            requests[path] += n
        else:
            raise SystemExit("unknown command %r" % line)
        print(n, pc() - t0, flush=True)


if os.environ.get("BENCH_SERVE") == "1":
    serve()
else:
    main()
