"""Per-request cost of the web integrations, in-process: each framework's app driven through its WSGI
callable, with and without the agent, in one run (rounds alternated), written to a results file.

    python benchmarks/web_bench.py [--out benchmarks/results/web.md] [--rounds 5] [--requests 5000]

Runs in the interpreter that runs it (the project's .venv, where the frameworks are installed): "without"
is plain `python`, "with" is `autoinstr-run python` exporting (by default to the embedded store, the agent's
default exporter; --exporter jsonl for a file) into a temporary folder. The
target (issue 3): a traced GET /hello costs at most 25 us more than untraced, judged all-in: the export work
that follows on the flush thread is reported beside it and summed, not hidden.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from typing import Dict, List

import _cachegrind  # benchmarks/_cachegrind.py (run as a script: its folder is on sys.path)

HERE = os.path.dirname(os.path.abspath(__file__))
BIN = os.path.dirname(sys.executable)

APPS = {
    "flask": """
from flask import Flask
app = Flask(__name__)
@app.route("/hello")
def hello():
    return "hello"
""",
    "bottle": """
import bottle
app = bottle.Bottle()
@app.route("/hello")
def hello():
    return "hello"
""",
    "falcon": """
import falcon
class Hello:
    def on_get(self, req, resp):
        resp.text = "hello"
app = falcon.App()
app.add_route("/hello", Hello())
""",
    "pyramid": """
from pyramid.config import Configurator
from pyramid.response import Response
def hello(request):
    return Response("hello")
with Configurator() as config:
    config.add_route("hello", "/hello")
    config.add_view(hello, route_name="hello")
    app = config.make_wsgi_app()
""",
    "django": """
from django.conf import settings
settings.configure(DEBUG=False, SECRET_KEY="bench", ROOT_URLCONF=__name__, ALLOWED_HOSTS=["*"],
                   MIDDLEWARE=["django.middleware.common.CommonMiddleware"])
import django
django.setup()
from django.http import HttpResponse
from django.urls import path
def hello(request):
    return HttpResponse("hello")
urlpatterns = [path("hello", hello)]
from django.core.wsgi import get_wsgi_application
app = get_wsgi_application()
""",
    "bare-wsgi": """
def app(environ, start_response):
    start_response("200 OK", [("Content-Type", "text/plain"), ("Content-Length", "5")])
    return [b"hello"]
""",
}

DRIVER = """
import json, sys, time
{app}
N = int(sys.argv[1])
TEMPLATE = {{"REQUEST_METHOD": "GET", "PATH_INFO": "/hello", "QUERY_STRING": "", "SERVER_NAME": "127.0.0.1",
            "SERVER_PORT": "8000", "SERVER_PROTOCOL": "HTTP/1.1", "HTTP_HOST": "127.0.0.1:8000",
            "REMOTE_ADDR": "127.0.0.1", "wsgi.url_scheme": "http", "wsgi.version": (1, 0), "wsgi.errors": sys.stderr,
            "wsgi.multithread": False, "wsgi.multiprocess": False, "wsgi.run_once": False}}
import io
def start_response(status, headers, exc_info=None):
    assert status.startswith("200"), status
    return None
def one():
    environ = dict(TEMPLATE)
    environ["wsgi.input"] = io.BytesIO(b"")
    body = app(environ, start_response)
    for _ in body:
        pass
    close = getattr(body, "close", None)
    if close:
        close()
try:
    import autoinstr
except ImportError:
    autoinstr = None
for _ in range(500):
    one()
if autoinstr is not None:
    autoinstr.flush(60)  # the warm-up's spans exported before the clock starts
# The request path and the export are timed apart (the flush thread does not run during the loop: its
# interval and batch are set out of reach), then added up: the export is the flush thread's CPU, on the GIL
# the app shares, so it is a cost of the requests too, paid off their path.
t0 = time.perf_counter_ns()
for _ in range(N):
    one()
t1 = time.perf_counter_ns()
if autoinstr is not None:
    autoinstr.flush(120)
t2 = time.perf_counter_ns()
stats = autoinstr.stats() if autoinstr is not None else {{}}
print("RESULT " + json.dumps({{"us": (t1 - t0) / N / 1000, "export_us": (t2 - t1) / N / 1000, "stats": stats}}))
"""


def run_variant(framework: str, traced: bool, n: int, folder: str, exporter: str = "local") -> Dict[str, object]:
    script = os.path.join(folder, "drive_%s.py" % framework.replace("-", "_"))
    with open(script, "w") as f:
        f.write(DRIVER.format(app=APPS[framework]))
    env = {k: v for k, v in os.environ.items() if not k.startswith(("AUTOINSTR_", "OTEL_"))}
    env.pop("PYTHONPATH", None)
    queue = str(8 * n + 10000)  # every span of the timed loop waits in the queue: no flush during the loop
    env.update(AUTOINSTR_FLUSH_INTERVAL="3600", AUTOINSTR_MAX_QUEUE_SPANS=queue, AUTOINSTR_MAX_BATCH_SPANS=queue)
    env.update(AUTOINSTR_EXPORTER=exporter, AUTOINSTR_JSONL_PATH=os.path.join(folder, "%s.jsonl" % framework),
               AUTOINSTR_STORE=os.path.join(folder, "%s.db" % framework),
               AUTOINSTR_SERVICE_NAME="bench")
    cmd = ([os.path.join(BIN, "autoinstr-run")] if traced else []) + [sys.executable, script, str(n)]
    out = subprocess.run(cmd, env=env, cwd=folder, capture_output=True, text=True, timeout=600)
    lines = [ln[7:] for ln in out.stdout.splitlines() if ln.startswith("RESULT ")]
    if out.returncode != 0 or not lines:
        raise RuntimeError("%s (%s) failed: %s" % (framework, "traced" if traced else "plain", out.stderr[-800:]))
    return json.loads(lines[-1])


INSTRUCTION_REQUESTS = (200, 1200)


def count_instructions(framework: str, folder: str) -> Dict[str, float]:
    """Instructions per request (cachegrind, user space, the whole process: the flush thread too; the
    difference of runs of 1200 and 200 requests after the warm-up, divided by 1000): plain, traced with no
    exporter (the request path), traced with the local store (all-in: the export included). Counts do not
    depend on the machine's load, which the timings do."""
    from autoinstr.cli import hook_dir

    script = os.path.join(folder, "drive_%s.py" % framework.replace("-", "_"))
    with open(script, "w") as f:
        f.write(DRIVER.format(app=APPS[framework]))
    base = {k: v for k, v in os.environ.items() if not k.startswith(("AUTOINSTR_", "OTEL_"))}
    base.pop("PYTHONPATH", None)
    base["PYTHONHASHSEED"] = "0"
    out: Dict[str, float] = {}
    for variant, exporter in (("plain", None), ("path", "none"), ("all-in", "local")):
        env = dict(base)
        if exporter is not None:  # (as autoinstr-run sets it up, without a launcher process under valgrind)
            queue = str(8 * INSTRUCTION_REQUESTS[1] + 10000)
            env.update(PYTHONPATH=hook_dir(), AUTOINSTR_EXPORTER=exporter, AUTOINSTR_FLUSH_INTERVAL="3600",
                       AUTOINSTR_MAX_QUEUE_SPANS=queue, AUTOINSTR_MAX_BATCH_SPANS=queue, AUTOINSTR_SERVICE_NAME="bench",
                       AUTOINSTR_STORE=os.path.join(folder, "instructions-%s.db" % framework))
        totals = []
        for n in INSTRUCTION_REQUESTS:
            store = env.get("AUTOINSTR_STORE")
            for suffix in ("", "-wal", "-shm"):  # each run stores into a fresh store
                if store and os.path.exists(store + suffix):
                    os.remove(store + suffix)
            totals.append(_cachegrind.instructions([sys.executable, script, str(n)], env, folder))
        out[variant] = (totals[1] - totals[0]) / (INSTRUCTION_REQUESTS[1] - INSTRUCTION_REQUESTS[0])
    return out


def count_server_spans(folder: str, framework: str) -> int:
    """Server spans the traced runs exported (to the store or the jsonl file): none lost."""
    store = os.path.join(folder, "%s.db" % framework)
    if os.path.exists(store):
        import sqlite3

        with sqlite3.connect(store) as db:
            return int(db.execute("SELECT count(*) FROM spans WHERE kind = 'server'").fetchone()[0])
    try:
        with open(os.path.join(folder, "%s.jsonl" % framework)) as f:
            return sum(1 for line in f if '"kind":"server"' in line)
    except FileNotFoundError:  # no integration for it (yet): nothing traced
        return 0


def available(framework: str) -> bool:
    module = {"bare-wsgi": "json"}.get(framework, framework)
    try:
        __import__(module)
        return True
    except ImportError:
        return False


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", default=os.path.join(HERE, "results", "web.md"))
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--requests", type=int, default=5000)
    ap.add_argument("--frameworks", default=",".join(APPS), help="comma-separated subset of: " + ", ".join(APPS))
    ap.add_argument("--instructions", default="flask", help="comma-separated frameworks whose instructions per "
                    "request are counted under cachegrind where valgrind is installed (empty: none)")
    ap.add_argument("--exporter", default="local", help="AUTOINSTR_EXPORTER for the traced runs (default: local, "
                    "the default exporter: the embedded store)")
    args = ap.parse_args()
    frameworks = [f for f in args.frameworks.split(",") if f in APPS and available(f)]
    results: Dict[str, Dict[str, List[float]]] = {f: {"plain": [], "traced": [], "export": []} for f in frameworks}
    exported: Dict[str, int] = {}
    with tempfile.TemporaryDirectory(prefix="autoinstr-web-bench-") as folder:
        for r in range(args.rounds):
            for framework in frameworks:
                for traced in (False, True):
                    res = run_variant(framework, traced, args.requests, folder, args.exporter)
                    results[framework]["traced" if traced else "plain"].append(float(res["us"]))  # type: ignore
                    if traced:
                        results[framework]["export"].append(float(res["export_us"]))  # type: ignore
            print("[web] round %d/%d done" % (r + 1, args.rounds), file=sys.stderr)
        for framework in frameworks:
            exported[framework] = count_server_spans(folder, framework)
        counted = [f for f in args.instructions.split(",") if f in frameworks] if _cachegrind.available() else []
        instructions = {framework: count_instructions(framework, folder) for framework in counted}
    rows = []
    for framework in frameworks:
        plain, traced, export = (results[framework][k] for k in ("plain", "traced", "export"))
        added_best = min(traced) - min(plain)
        added_median = statistics.median(traced) - statistics.median(plain)
        rows.append((framework, min(plain), min(traced), added_best, added_median, min(export),
                     added_best + min(export), exported[framework]))
    total = args.rounds * (args.requests + 500)
    lines = [
        "# autoinstr web benchmark",
        "",
        "- date: %s UTC" % time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime()),
        "- machine: %s, %d CPUs, Python %s" % (platform.platform(), os.cpu_count() or 0, platform.python_version()),
        "- method: each framework's app called through its WSGI callable, %d requests per process after 500 warm-up "
        "requests, %d rounds, plain and traced processes alternated; traced = `autoinstr-run`, exporter `%s`. "
        "The request path is timed with the flush thread idle (its interval and batch out of reach), then the "
        "export of those requests' spans (autoinstr.flush(): conversion and writing on the flush thread, which "
        "shares the GIL with the app) is timed on its own and reported per request beside it; all-in is the sum"
        % (args.requests, args.rounds, args.exporter),
        "- command: `.venv/bin/python benchmarks/web_bench.py --rounds %d --requests %d`"
        % (args.rounds, args.requests),
        "",
        "| framework | plain us/request (best) | traced us/request (best) | added us, request path (best) | "
        "added us, request path (median) | export us/request, flush thread (best) | all-in added us | "
        "server spans exported | all-in <= 25 us (issue 3) |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---|",
    ]
    for framework, plain_best, traced_best, added_best, added_median, export, all_in, spans in rows:
        lines.append("| %s | %.1f | %.1f | %.1f | %.1f | %.1f | %.1f | %d / %d | %s |" % (
            framework, plain_best, traced_best, added_best, added_median, export, all_in, spans, total,
            "MET" if all_in <= 25 else "NOT MET"))
    if instructions:
        lines += [
            "",
            "Instructions per request (cachegrind, user space, the whole process, the flush thread included; "
            "%d requests minus %d): they do not move with the machine's load, which the times above do. "
            "`us, scaled` = the plain request's best time x added instructions / plain instructions: what the "
            "added work costs at the app's own instructions per second (cache misses the agent causes are not in "
            "it)." % (INSTRUCTION_REQUESTS[1], INSTRUCTION_REQUESTS[0]),
            "",
            "| framework | plain | traced, request path (exporter none) | traced, all-in (local store) | "
            "added, path | added, all-in | added all-in, us scaled |",
            "|---|---:|---:|---:|---:|---:|---:|",
        ]
        for framework, counts in instructions.items():
            plain_best = min(results[framework]["plain"])
            added = counts["all-in"] - counts["plain"]
            lines.append("| %s | %s | %s | %s | +%s (%.0f%%) | +%s (%.0f%%) | %.1f |" % (
                framework, format(round(counts["plain"]), ","), format(round(counts["path"]), ","),
                format(round(counts["all-in"]), ","), format(round(counts["path"] - counts["plain"]), ","),
                100 * (counts["path"] - counts["plain"]) / counts["plain"], format(round(added), ","),
                100 * added / counts["plain"], plain_best * added / counts["plain"]))
    os.makedirs(os.path.dirname(args.out), exist_ok=True)
    with open(args.out, "w") as f:
        f.write("\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
