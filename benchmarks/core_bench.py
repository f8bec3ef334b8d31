#!/usr/bin/env python3
"""Core speed benchmark: span cost and start-up of autoinstr against a pure-Python floor, ddtrace and OpenTelemetry.

    python benchmarks/core_bench.py [--out benchmarks/results/core.md] [--quick]

Not a test: it asserts nothing. It writes a markdown report and a JSON file beside it, and prints for each target
whether it is met. Every measurement runs in its own subprocess under its own launcher and virtual environment:

- venvs are cached in benchmarks/.venvs/ (autoinstr, ddtrace, otel); autoinstr is reinstalled from a clean copy of
  the repository on every run (--force-reinstall --no-deps) so the newest agent code is measured;
- span cost: rounds alternate floor, ours (sampled, jsonl), ours (sampled, local store), ours (unsampled), ddtrace,
  otel, floor, ...; each round is one process that warms up, times M spans and prints one `RESULT {...}` line;
- ddtrace and OTel export to a loopback HTTP sink in this process that answers 200 `{}` and counts requests, bytes
  and decoded spans, so "export included" is checked, not assumed; ours is checked through its jsonl file / store;
- start-up: `python -c pass` plain and under each launcher, alternated; peak RSS in separate runs through a small
  spawner (/usr/bin/time when present).

Only the standard library is used here; the peers' packages live only in their venvs.
"""

from __future__ import annotations

import argparse
import datetime
import gzip
import hashlib
import http.server
import json
import os
import platform
import re
import shutil
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import textwrap
import threading
import time
import zlib
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE / "peers"))
from sink import DD_TRACING_ONLY, count_datadog, count_otlp  # noqa: E402  (the peer suite's sink decoding)

REPO = HERE.parent
VENVS = HERE / ".venvs"
DEFAULT_OUT = HERE / "results" / "core.md"

# The interpreter outside any venv: the venvs are built from it and the "bare python" start-up row runs it, so every
# row uses the same binary.
BASE_PYTHON = os.path.realpath(getattr(sys, "_base_executable", None) or sys.executable)

HEAVY_MODULES = ("flask", "requests", "sqlite3", "psycopg2", "sqlparse")
EXTRA_HEAVY = ("urllib3", "django")  # recorded only: the acceptance check looks at them too
RUN_TIMEOUT = 600.0
RSS_RUNS = 3  # peak RSS barely varies between runs

# Peers get the same loopback sink and everything but tracing switched off, so we compare tracers, not products.
DD_SETTINGS = dict(DD_TRACING_ONLY, DD_SERVICE="bench")
OTEL_SETTINGS = {
    "OTEL_SERVICE_NAME": "bench",
    "OTEL_TRACES_EXPORTER": "otlp",
    "OTEL_EXPORTER_OTLP_PROTOCOL": "http/protobuf",
    "OTEL_METRICS_EXPORTER": "none",
    "OTEL_LOGS_EXPORTER": "none",
}
AUTOINSTR_SETTINGS = {"AUTOINSTR_SERVICE_NAME": "bench"}

# Inherited variables that would change what a child does; every child starts from a clean environment.
_STRIP_PREFIXES = ("AUTOINSTR_", "DD_", "OTEL_")
_STRIP_NAMES = (
    "PYTHONPATH",
    "PYTHONHOME",
    "PYTHONSTARTUP",
    "VIRTUAL_ENV",
    "PYTHONPROFILEIMPORTTIME",
    "PYTHONTRACEMALLOC",
)


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def tail(text: str, limit: int = 1500) -> str:
    text = text.strip()
    return text if len(text) <= limit else "..." + text[-limit:]


def one_line(err: str, limit: int = 240) -> str:
    """A table cell for an error: the last line naming an exception (pip and tracebacks end there), else the last."""
    lines = [ln.strip() for ln in err.splitlines() if ln.strip()]
    named = [ln for ln in lines if re.search(r"\w(Error|Exception|Errno)\b", ln)]
    pick = (named or lines or [""])[-1]
    return pick.replace("|", "/")[:limit]


def clean_env() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if not k.startswith(_STRIP_PREFIXES) and k not in _STRIP_NAMES}


# ------------------------------------------------------------------------------------------------------------ venvs


@dataclass
class Venv:
    name: str
    requirements: list[str]
    dists: list[str]  # distributions whose versions go into the results
    versions: dict[str, str] = field(default_factory=dict)
    error: str = ""

    @property
    def path(self) -> Path:
        return VENVS / self.name

    @property
    def python(self) -> str:
        return str(self.path / "bin" / "python")

    def exe(self, name: str) -> str:
        return str(self.path / "bin" / name)

    def env(self, extra: dict[str, str] | None = None) -> dict[str, str]:
        # Launchers exec `python` from PATH, so the venv's bin must come first.
        env = clean_env()
        env["PATH"] = str(self.path / "bin") + os.pathsep + env.get("PATH", "")
        env["VIRTUAL_ENV"] = str(self.path)
        env.update(extra or {})
        return env


def pip(venv: Venv, *args: str) -> None:
    cmd = [venv.python, "-m", "pip", "install", "-q", "--disable-pip-version-check", *args]
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=1800)
    if r.returncode != 0:
        noise = "is ignored: it is neither a file nor a directory"  # local mirror warnings of this machine's pip
        err = "\n".join(ln for ln in (r.stdout + r.stderr).splitlines() if noise not in ln)
        raise RuntimeError(f"pip install {' '.join(args)} failed (exit {r.returncode}): {tail(err, 4000)}")


def _stamp(marker: str) -> str:
    # A new interpreter means new venvs: the floor and the tracers must run on the same Python.
    return f"{BASE_PYTHON} {platform.python_version()}\n{marker}"


def create_venv(venv: Venv, marker: str) -> bool:
    """Make sure venv exists for this marker (its requirements); True when it was (re)built."""
    stamp = venv.path / ".bench-marker"
    if Path(venv.python).exists() and stamp.exists() and stamp.read_text() == _stamp(marker):
        return False
    log(f"[venv] building {venv.path} ...")
    shutil.rmtree(venv.path, ignore_errors=True)
    subprocess.run([BASE_PYTHON, "-m", "venv", str(venv.path)], check=True, capture_output=True)
    return True


def mark(venv: Venv, marker: str) -> None:
    (venv.path / ".bench-marker").write_text(_stamp(marker))


def setup_peer(venv: Venv) -> None:
    marker = json.dumps(venv.requirements)
    if create_venv(venv, marker):
        pip(venv, *venv.requirements)
        mark(venv, marker)


def _copy_ignore(src: str, names: list[str]) -> set[str]:
    # A clean copy: no VCS, venvs, caches or stale build output that could leak into the wheel or slow the copy.
    skip = {".git", ".venv", ".venvs", "__pycache__", ".pytest_cache", ".ruff_cache", "build", "dist", "results"}
    return {n for n in names if n in skip or n.endswith(".egg-info")}


def setup_autoinstr(venv: Venv, workdir: Path) -> None:
    """Install the repository non-editable; reinstall without deps on every run so the newest code is measured.

    pip builds from a copy so that no build artefact is ever written into the repository the agent lives in."""
    src = workdir / "autoinstr-src"
    shutil.copytree(REPO, src, ignore=_copy_ignore)
    pyproject = (REPO / "pyproject.toml").read_bytes() if (REPO / "pyproject.toml").exists() else b""
    marker = "autoinstr deps " + hashlib.sha256(pyproject).hexdigest()  # dependencies change only with pyproject
    if create_venv(venv, marker):
        pip(venv, str(src))
        mark(venv, marker)
    else:
        pip(venv, "--force-reinstall", "--no-deps", str(src))


def read_versions(venv: Venv) -> None:
    code = textwrap.dedent(
        """
        import importlib.metadata as md, json, sys
        out = {"python": sys.version.split()[0]}
        for d in sys.argv[1:]:
            try:
                out[d] = md.version(d)
            except md.PackageNotFoundError:
                out[d] = "not installed"
        print(json.dumps(out))
        """
    )
    r = subprocess.run([venv.python, "-c", code, *venv.dists], capture_output=True, text=True, env=venv.env())
    venv.versions = json.loads(r.stdout) if r.returncode == 0 else {"error": tail(r.stderr, 300)}


# ------------------------------------------------------------------------------------------------------------- sink


@dataclass
class SinkTake:
    requests: Counter = field(default_factory=Counter)  # "METHOD path" -> count
    bytes: int = 0
    spans: int = 0
    decode_errors: list[str] = field(default_factory=list)


class Sink:
    """Loopback HTTP server that accepts anything and answers 200 `{}`, like a trace agent / collector that keeps up.

    Bodies are only stored while a child runs and decoded afterwards (take()), so that counting spans does not
    compete for CPU with the process being measured."""

    def __init__(self, name: str) -> None:
        self.name = name
        self._lock = threading.Lock()
        self._requests: Counter = Counter()
        self._bodies: list[tuple[str, str, bytes]] = []
        sink = self

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"  # keep-alive, as both peers' HTTP clients expect

            def _read_body(self) -> bytes:
                if "chunked" in (self.headers.get("Transfer-Encoding") or "").lower():
                    parts = []
                    while True:
                        size = int(self.rfile.readline().split(b";")[0].strip() or b"0", 16)
                        if size == 0:
                            while self.rfile.readline() not in (b"\r\n", b"\n", b""):
                                pass
                            return b"".join(parts)
                        parts.append(self.rfile.read(size))
                        self.rfile.readline()
                return self.rfile.read(int(self.headers.get("Content-Length") or 0))

            def _answer(self) -> None:
                body = self._read_body()
                with sink._lock:
                    sink._requests["{} {}".format(self.command, self.path.split("?")[0])] += 1
                    if body:
                        sink._bodies.append((self.path, self.headers.get("Content-Encoding") or "", body))
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", "2")
                self.end_headers()
                self.wfile.write(b"{}")

            do_POST = do_PUT = do_GET = _answer

            def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - signature of the base class
                pass

        self._server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        self.port = self._server.server_address[1]
        self.url = f"http://127.0.0.1:{self.port}"
        threading.Thread(target=self._server.serve_forever, name="sink-" + name, daemon=True).start()

    def take(self) -> SinkTake:
        with self._lock:
            requests, bodies = self._requests, self._bodies
            self._requests, self._bodies = Counter(), []
        out = SinkTake(requests=requests)
        for path, encoding, body in bodies:
            out.bytes += len(body)
            try:
                if encoding == "gzip":
                    body = gzip.decompress(body)
                elif encoding == "deflate":
                    body = zlib.decompress(body)
                if path.split("?")[0].endswith("/traces") and "/v0." in path:
                    out.spans += count_datadog(body, path)
                elif path.split("?")[0].endswith("/v1/traces"):
                    out.spans += count_otlp(body)
            except (ValueError, IndexError, OSError, zlib.error) as e:
                out.decode_errors.append(f"{path}: {e}")
        return out

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()


# ------------------------------------------------------------------------------------------------- span scripts

# Shared by every variant so that only the span body differs: warm up, time one loop, report, exit.
PROLOGUE = """
import json, os, sys, time
N = int(os.environ["BENCH_SPANS"])
WARMUP = int(os.environ["BENCH_WARMUP"])
VARIANT = os.environ["BENCH_VARIANT"]
pc = time.perf_counter_ns
"""

EPILOGUE = """
loop(WARMUP)
total_ns = loop(N)
out = {"variant": VARIANT, "spans": N, "warmup": WARMUP, "ns_per_span": total_ns / N, "loop_ns": total_ns}
out.update(extra())
out["end_mono_ns"] = time.monotonic_ns()  # the parent measures the exit drain (final flush + shutdown) from here
print("RESULT " + json.dumps(out, default=repr), flush=True)
"""

# The floor: what any span must do at least (two clocks, a small object, a contextvar set and reset).
FLOOR_BODY = """
import contextvars
cv = contextvars.ContextVar("floor", default=None)

class FloorSpan:
    __slots__ = ("name", "start", "end")

    def __init__(self, name, start):
        self.name, self.start, self.end = name, start, 0

def loop(n):
    t0 = pc()
    for _ in range(n):
        s = FloorSpan("x", pc())
        tok = cv.set(s)
        s.end = pc()
        cv.reset(tok)
    return pc() - t0

def extra():
    return {}
"""

OURS_BODY = """
agent_modules_at_start = sorted(m for m in sys.modules if m.split(".")[0] == "autoinstr")
import autoinstr

def loop(n):
    span = autoinstr.span
    t0 = pc()
    for _ in range(n):
        with span("x"):
            pass
    return pc() - t0

def extra():
    try:
        stats = autoinstr.stats()
    except Exception as e:
        stats = {"error": repr(e)}
    return {"stats": stats, "agent_modules_at_start": len(agent_modules_at_start)}
"""

DDTRACE_BODY = """
try:
    from ddtrace.trace import tracer  # ddtrace >= 2.x
except ImportError:
    from ddtrace import tracer

def loop(n):
    trace = tracer.trace
    t0 = pc()
    for _ in range(n):
        with trace("x"):
            pass
    return pc() - t0

def extra():
    return {"tracer": type(tracer).__module__ + "." + type(tracer).__name__, "enabled": bool(tracer.enabled)}
"""

OTEL_BODY = """
from opentelemetry import trace
tracer = trace.get_tracer("bench")

def loop(n):
    start = tracer.start_as_current_span
    t0 = pc()
    for _ in range(n):
        with start("x"):
            pass
    return pc() - t0

def extra():
    # Show what opentelemetry-instrument configured, so a no-op ProxyTracerProvider cannot pass for a real run.
    provider = trace.get_tracer_provider()
    multi = getattr(provider, "_active_span_processor", None)
    procs = list(getattr(multi, "_span_processors", ()) or ())
    exporters = []
    for p in procs:
        exp = getattr(p, "span_exporter", None) or getattr(getattr(p, "_batch_processor", None), "_exporter", None)
        exporters.append(type(exp).__name__)
    return {"provider": type(provider).__name__, "processors": [type(p).__name__ for p in procs],
            "exporters": exporters}
"""


@dataclass
class Variant:
    key: str
    label: str
    launcher: str  # the venv's launcher command that starts `python script.py` (floor: plain python)
    body: str
    venv: Venv | None
    env: dict[str, str]
    sink: Sink | None = None
    output: str = ""  # "jsonl" or "store": where our agent's spans land
    expect_export: bool = True
    runs: list[dict[str, Any]] = field(default_factory=list)
    error: str = ""

    def command(self, script: Path) -> list[str]:
        if self.venv is None:
            return [BASE_PYTHON, str(script)]
        return [self.venv.exe(self.launcher), "python", str(script)]


def count_jsonl(path: Path) -> int:
    if not path.exists():
        return 0
    n = 0
    with path.open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            n += chunk.count(b"\n")
    return n


def count_store(path: Path) -> tuple[int, dict[str, int]]:
    """Rows per table of the agent's SQLite store; spans = the table named like spans, else the biggest."""
    if not path.exists():
        return 0, {}
    tables: dict[str, int] = {}
    con = sqlite3.connect(str(path), timeout=5)
    try:
        names = [r[0] for r in con.execute("SELECT name FROM sqlite_master WHERE type='table'")]
        for name in names:
            tables[name] = con.execute('SELECT count(*) FROM "{}"'.format(name.replace('"', '""'))).fetchone()[0]
    finally:
        con.close()
    spans = tables.get("spans", max(tables.values(), default=0))
    return spans, tables


def run_span_round(variant: Variant, script: Path, workdir: Path, spans: int, warmup: int) -> dict[str, Any]:
    rundir = Path(tempfile.mkdtemp(prefix=variant.key + "-", dir=workdir))
    env = dict(variant.env, BENCH_SPANS=str(spans), BENCH_WARMUP=str(warmup), BENCH_VARIANT=variant.key)
    jsonl, store = rundir / "spans.jsonl", rundir / "store.db"
    if variant.venv is not None and variant.venv.name == "autoinstr":
        env["AUTOINSTR_STORE"] = str(store)  # also for the jsonl runs, so nothing lands in a default path
        if variant.output == "jsonl":
            env["AUTOINSTR_EXPORTER"] = "jsonl"
            env["AUTOINSTR_JSONL_PATH"] = str(jsonl)
    if variant.sink is not None:
        variant.sink.take()  # drop anything left from an earlier process
    try:
        r = subprocess.run(
            variant.command(script),
            env=env,
            cwd=rundir,
            capture_output=True,
            text=True,
            timeout=RUN_TIMEOUT,
            stdin=subprocess.DEVNULL,
        )
    except subprocess.TimeoutExpired:
        shutil.rmtree(rundir, ignore_errors=True)
        raise RuntimeError(f"timed out after {RUN_TIMEOUT:.0f} s") from None
    exit_mono = time.monotonic_ns()
    result = next((json.loads(ln[7:]) for ln in r.stdout.splitlines() if ln.startswith("RESULT ")), None)
    if r.returncode != 0 or result is None:
        shutil.rmtree(rundir, ignore_errors=True)
        raise RuntimeError(f"exit {r.returncode}, no RESULT line; stderr: {tail(r.stderr)}")
    result["drain_ms"] = (exit_mono - result.pop("end_mono_ns")) / 1e6
    result["created"] = spans + warmup
    result["stderr_tail"] = tail(r.stderr, 400)
    if variant.sink is not None:
        got = variant.sink.take()
        result.update(
            exported=got.spans, requests=dict(got.requests), bytes=got.bytes, decode_errors=got.decode_errors[:3]
        )
    elif variant.output == "jsonl":
        result.update(exported=count_jsonl(jsonl), bytes=jsonl.stat().st_size if jsonl.exists() else 0)
    elif variant.output == "store":
        try:
            n, tables = count_store(store)
            result.update(exported=n, tables=tables)
        except sqlite3.Error as e:
            result.update(exported=0, store_error=str(e))
        result["bytes"] = sum(p.stat().st_size for p in rundir.glob("store.db*"))
    shutil.rmtree(rundir, ignore_errors=True)  # a jsonl of 100k spans is tens of MB per round
    return result


# ---------------------------------------------------------------------------------------------------- start-up


@dataclass
class StartCase:
    key: str
    label: str
    cmd: list[str]
    env: dict[str, str]
    ms: list[float] = field(default_factory=list)
    rss_mb: list[float] = field(default_factory=list)
    cpu_ms: list[float] = field(default_factory=list)
    error: str = ""
    venv: Venv | None = None


def run_timed(case: StartCase, errfile: Path, cwd: Path) -> tuple[float, float]:
    """Wall time of one run in ms, from spawn to exit as seen by this process, and the CPU time (user + sys) the
    command used. On this VM wall times come in steps of ~16 ms under load; CPU time does not, so it is kept too."""
    with errfile.open("wb") as err:
        t0 = time.perf_counter()
        p = subprocess.Popen(
            case.cmd, env=case.env, cwd=cwd, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=err
        )
        try:
            _, status, usage = os.wait4(p.pid, 0)  # wait4, not wait(): the rusage is this child's (and its children's)
        except BaseException:
            p.kill()
            p.wait()
            raise
        dt = (time.perf_counter() - t0) * 1000
    p.returncode = os.waitstatus_to_exitcode(status)
    if p.returncode != 0:
        raise RuntimeError(f"exit {p.returncode}: {tail(errfile.read_text(errors='replace'), 600)}")
    return dt, (usage.ru_utime + usage.ru_stime) * 1000


TIME_BIN = "/usr/bin/time"
# Fallback spawner: a child's ru_maxrss also counts the pages its parent had when it forked, so the process that forks
# must be small; `python -S` with only `os` is a few MB, which then is the floor of what can be seen.
RSS_WRAPPER = (
    "import os, sys\n"
    "pid = os.fork()\n"
    "if pid == 0:\n"
    "    os.execvp(sys.argv[1], sys.argv[1:])\n"
    "_, status, usage = os.wait4(pid, 0)\n"
    "print(usage.ru_maxrss, os.waitstatus_to_exitcode(status))\n"
)


def rss_method() -> str:
    if os.access(TIME_BIN, os.X_OK):
        return "GNU time %M (/usr/bin/time)"
    return "a python -S fork+wait4 wrapper (its own few MB are the floor)"


def peak_rss_mb(case: StartCase, workdir: Path) -> float:
    """Peak RSS of one run in MB. Not measured from this process: its children inherit its RSS at fork, and this
    process holds tens of MB (seen as ~32 MB for every command), so a small spawner forks the command instead."""
    out = workdir / "rss.out"
    if os.access(TIME_BIN, os.X_OK):
        cmd = [TIME_BIN, "-f", "%M", "-o", str(out), *case.cmd]
        r = subprocess.run(
            cmd,
            env=case.env,
            cwd=workdir,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            timeout=120,
        )
        text = out.read_text() if out.exists() else ""
    else:
        cmd = [BASE_PYTHON, "-S", "-c", RSS_WRAPPER, *case.cmd]
        r = subprocess.run(
            cmd,
            env=case.env,
            cwd=workdir,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            text=True,
            timeout=120,
        )
        text = r.stdout.split()[0] if r.stdout.strip() else ""
    lines = text.strip().splitlines()
    if r.returncode != 0 or not lines or not lines[-1].strip().isdigit():
        raise RuntimeError(f"RSS run failed (exit {r.returncode}): {text.strip()[:200]}")
    return int(lines[-1]) / 1024  # KiB on Linux, for both methods


def heavy_imports(venv: Venv, workdir: Path) -> dict[str, Any]:
    """Which heavy modules `import autoinstr` drags in: plain, with the .pth hook on, and under the launcher."""
    probe = textwrap.dedent(
        """
        import json, sys
        at_start = sorted(m for m in sys.modules if m.split(".")[0] == "autoinstr")
        import autoinstr
        names = sys.argv[1:]
        print("RESULT " + json.dumps({"agent_modules_at_start": len(at_start),
                                      "found": [m for m in names if m in sys.modules]}))
        """
    )
    script = workdir / "heavy_probe.py"
    script.write_text(probe)
    base = venv.env(dict(AUTOINSTR_SETTINGS, AUTOINSTR_STORE=str(workdir / "heavy-store.db")))
    modes = {
        "import autoinstr": ([venv.python, str(script)], base),
        "AUTOINSTR_ENABLED=true": ([venv.python, str(script)], dict(base, AUTOINSTR_ENABLED="true")),
        "autoinstr-run": ([venv.exe("autoinstr-run"), "python", str(script)], base),
    }
    out: dict[str, Any] = {}
    for mode, (cmd, env) in modes.items():
        r = subprocess.run(
            [*cmd, *HEAVY_MODULES, *EXTRA_HEAVY], env=env, cwd=workdir, capture_output=True, text=True, timeout=120
        )
        res = next((json.loads(ln[7:]) for ln in r.stdout.splitlines() if ln.startswith("RESULT ")), None)
        if r.returncode != 0 or res is None:
            out[mode] = {"error": f"exit {r.returncode}: {tail(r.stderr, 400)}"}
        else:
            res["heavy"] = [m for m in res["found"] if m in HEAVY_MODULES]
            res["extra"] = [m for m in res["found"] if m in EXTRA_HEAVY]
            out[mode] = res
    return out


# ------------------------------------------------------------------------------------------------------ report


def best(xs: list[float]) -> float:
    return min(xs) if xs else float("nan")


def med(xs: list[float]) -> float:
    return statistics.median(xs) if xs else float("nan")


def fmt(x: float | None, digits: int = 0) -> str:
    if x is None or x != x:  # None or NaN
        return "n/a"
    return "{:,.{}f}".format(x, digits)


@dataclass
class Target:
    name: str
    measured: str
    limit: str
    met: bool | None  # None: could not be measured


def verdict(met: bool | None) -> str:
    return {True: "MET", False: "NOT MET", None: "n/a"}[met]


def ratio_target(
    name: str, num: list[float], den: list[float], limit: float, strict: bool = False, inverse_label: str = ""
) -> Target:
    """Verdict on the ratio of best-of values, as timeit advises for noisy machines. Also shown: the ratio of medians,
    and the median of per-round ratios, which pairs runs that were adjacent in time and so cancels slow drifts of
    this VM's CPU speed (seen here: the same loop taking 13 to 24 ms minutes apart)."""
    if not num or not den:
        return Target(name, "n/a (variant failed)", inverse_label or f"<= {limit:g}x", None)
    r_best, r_med = best(num) / best(den), med(num) / med(den)
    r_paired = med([a / b for a, b in zip(num, den)])  # lists are in round order; a failed variant stops early
    met = r_best < limit if strict else r_best <= limit
    measured = f"{r_best:.2f}x (median {r_med:.2f}x, per-round median {r_paired:.2f}x)"
    return Target(name, measured, inverse_label or ("{} {:g}x".format("<" if strict else "<=", limit)), met)


def export_cell(v: Variant) -> str:
    if v.key == "floor":
        return "-"
    if not v.runs:
        return "n/a"
    created = sum(r["created"] for r in v.runs)
    exported = sum(r.get("exported", 0) for r in v.runs)
    return f"{fmt(exported)} / {fmt(created)} ({100.0 * exported / created if created else 0:.0f}%)"


def export_ok(v: Variant) -> bool | None:
    if not v.runs:
        return None
    if not agent_loaded(v):
        return False
    if not v.expect_export:
        return all(r.get("exported", 0) == 0 for r in v.runs)
    return all(r.get("exported", 0) > 0 and (v.sink is None or r.get("bytes", 0) > 0) for r in v.runs)


def agent_loaded(v: Variant) -> bool:
    """Ours only: the launcher must have loaded the agent before the script ran, else `autoinstr.span` is the free
    no-op stand-in and its cost means nothing."""
    return all(r.get("agent_modules_at_start", 1) > 0 for r in v.runs)


def build_report(
    ctx: dict[str, Any], variants: list[Variant], cases: list[StartCase], heavy: dict[str, Any], targets: list[Target]
) -> str:
    lines = ["# autoinstr core benchmark", ""]
    lines += [
        "- date: {}".format(ctx["date"]),
        "- machine: {}, {} CPUs, Python {} ({})".format(ctx["platform"], ctx["cpus"], ctx["python"], BASE_PYTHON),
        f"- mode: {ctx['mode']}; span cost: {ctx['rounds']} rounds x {fmt(ctx['spans'])} spans "
        f"(+{fmt(ctx['warmup'])} warm-up spans per process), each round one process per variant, alternated in "
        "table order",
        f"- start-up: {ctx['startup_runs']} runs per command, alternated, after one warm-up run each",
        f"- load average (1, 5, 15 min) at start: {ctx['loadavg']}; at end: {ctx['loadavg_end']}",
        "",
        "## Versions",
        "",
        "| venv | package | version |",
        "|---|---|---|",
    ]
    for name, versions in ctx["versions"].items():
        for dist, ver in versions.items():
            lines.append(f"| {name} | {dist} | {ver} |")
    for name, err in ctx["venv_errors"].items():
        lines.append(f"| {name} | (install failed) | {one_line(err)} |")

    floor = next((v for v in variants if v.key == "floor"), None)
    floor_best = best([r["ns_per_span"] for r in floor.runs]) if floor else float("nan")
    floor_med = med([r["ns_per_span"] for r in floor.runs]) if floor else float("nan")
    floor_drain = med([r["drain_ms"] for r in floor.runs]) if floor else float("nan")
    lines += [
        "",
        "## Span cost",
        "",
        "ns per span of the timed loop (exporter running); `x floor` compares best with best and median with median. "
        "*exit drain* is the time from the end of the loop to process exit (final flush + interpreter shutdown); "
        "*incl. drain* adds the drain beyond the floor's to the loop, spread over the spans.",
        "",
        "| variant | launcher | best ns | median ns | best x floor | median x floor | exit drain ms (median) "
        "| incl. drain ns (median) | spans exported |",
        "|---|---|---:|---:|---:|---:|---:|---:|---|",
    ]
    for v in variants:
        if not v.runs:
            lines.append(f"| {v.label} | {v.launcher} | failed | | | | | | {one_line(v.error)} |")
            continue
        ns = [r["ns_per_span"] for r in v.runs]
        incl = [(r["loop_ns"] + (r["drain_ms"] - floor_drain) * 1e6) / r["spans"] for r in v.runs]
        lines.append(
            "| {} | {} | {} | {} | {:.2f} | {:.2f} | {} | {} | {} |".format(
                v.label,
                v.launcher,
                fmt(best(ns)),
                fmt(med(ns)),
                best(ns) / floor_best,
                med(ns) / floor_med,
                fmt(med([r["drain_ms"] for r in v.runs]), 1),
                fmt(med(incl)),
                export_cell(v),
            )
        )

    lines += [
        "",
        "## Export verification",
        "",
        "Every tracer runs with its default queue limits. What a tracer drops (OTel's BatchSpanProcessor holds 2048 "
        "spans, ours AUTOINSTR_MAX_QUEUE_SPANS) it does not export, so a low exported share also means less export "
        "work inside the timed loop: read the span cost together with the share.",
        "",
        "| variant | exported | detail (last round) |",
        "|---|---|---|",
    ]
    for v in variants:
        if v.key == "floor":
            continue
        ok = export_ok(v)
        state = {True: "yes", False: "NO", None: "n/a"}[ok]
        if not v.expect_export and v.runs:
            state = f"none expected (unsampled): {export_cell(v)}"
        detail = ""
        if v.runs:
            last = v.runs[-1]
            if v.sink is not None:
                detail = "sink {}: {} requests, {} bytes, {} spans decoded; paths {}".format(
                    v.sink.name,
                    sum(last.get("requests", {}).values()),
                    fmt(last.get("bytes", 0)),
                    fmt(last.get("exported", 0)),
                    ", ".join(f"{k} x{n}" for k, n in sorted(last["requests"].items())),
                )
                if last.get("decode_errors"):
                    detail += "; decode errors: {}".format("; ".join(last["decode_errors"]))
            else:
                detail = "{}: {} spans, {} bytes".format(
                    v.output, fmt(last.get("exported", 0)), fmt(last.get("bytes", 0))
                )
                if "tables" in last:
                    detail += ", tables {}".format(json.dumps(last["tables"]))
            for key in ("stats", "provider", "processors", "exporters", "tracer", "agent_modules_at_start"):
                if key in last:
                    detail += f"; {key}: `{json.dumps(last[key], default=repr)}`"
        else:
            detail = one_line(v.error, 400)
        lines.append("| {} | {} | {} |".format(v.label, state, detail.replace("|", "/")))

    plain = next((c for c in cases if c.key == "plain"), None)
    lines += [
        "",
        "## Start-up (`-c pass`)",
        "",
        f"Peak RSS: median of {RSS_RUNS} separate runs, measured with {rss_method()}.",
        "",
        "Wall time from spawn to exit; CPU is the user + sys time of the command (and its children), which is not "
        "subject to scheduling delays and so is the steadier figure on a loaded machine.",
        "",
        "| command | min ms | median ms | +min vs plain | +median vs plain | CPU ms (median) | +CPU vs plain "
        "| peak RSS MB |",
        "|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for c in cases:
        if not c.ms:
            lines.append(f"| {c.label} | failed | | | | | | {one_line(c.error)} |")
            continue
        ok = plain is not None and bool(plain.ms)
        dmin = best(c.ms) - best(plain.ms) if ok else float("nan")
        dmed = med(c.ms) - med(plain.ms) if ok else float("nan")
        dcpu = med(c.cpu_ms) - med(plain.cpu_ms) if ok else float("nan")
        lines.append(
            f"| {c.label} | {fmt(best(c.ms), 1)} | {fmt(med(c.ms), 1)} | {fmt(dmin, 1)} | {fmt(dmed, 1)} "
            f"| {fmt(med(c.cpu_ms), 1)} | {fmt(dcpu, 1)} | {fmt(med(c.rss_mb), 1)} |"
        )

    lines += [
        "",
        "## Heavy imports",
        "",
        "Checked: {} (required absent), plus {} (recorded only).".format(
            ", ".join(HEAVY_MODULES), ", ".join(EXTRA_HEAVY)
        ),
        "",
        "| mode | agent modules loaded at start | heavy found | others found |",
        "|---|---:|---|---|",
    ]
    for mode, res in heavy.items():
        if "error" in res:
            lines.append(f"| {mode} | failed | {one_line(res['error'])} | |")
        else:
            lines.append(
                f"| {mode} | {res['agent_modules_at_start']} | {res['heavy'] or 'none'} | {res['extra'] or 'none'} |"
            )

    lines += ["", "## Targets", "", "| target | measured | limit | verdict |", "|---|---|---|---|"]
    for t in targets:
        lines.append(f"| {t.name} | {t.measured} | {t.limit} | {verdict(t.met)} |")

    lines += ["", "## Settings", ""]
    for name, settings in ctx["settings"].items():
        lines.append("- {}: `{}`".format(name, " ".join("{}={}".format(*kv) for kv in settings.items())))
    lines += [
        "- ours: the sink/jsonl/store paths are per round in a temp dir; AUTOINSTR_* not listed are defaults",
        "- otel: configured by `opentelemetry-instrument` from the variables above (the distro's "
        "TracerProvider + BatchSpanProcessor + OTLPSpanExporter over http/protobuf), not in the script",
        "",
    ]
    return "\n".join(lines)


# -------------------------------------------------------------------------------------------------------- main


def compute_targets(variants: list[Variant], cases: list[StartCase], heavy: dict[str, Any]) -> list[Target]:
    ns = {v.key: [r["ns_per_span"] for r in v.runs] for v in variants}
    targets = [
        ratio_target("sampled span, jsonl export <= 5x floor", ns["ours_jsonl"], ns["floor"], 5.0),
        ratio_target("sampled span, local store <= 5x floor", ns["ours_store"], ns["floor"], 5.0),
        ratio_target(
            "sampled span, jsonl export < 1/8 of ddtrace",
            ns["ours_jsonl"],
            ns["ddtrace"],
            0.125,
            strict=True,
            inverse_label="< 0.125x",
        ),
        ratio_target(
            "sampled span, local store < 1/8 of ddtrace",
            ns["ours_store"],
            ns["ddtrace"],
            0.125,
            strict=True,
            inverse_label="< 0.125x",
        ),
        ratio_target("unsampled span <= 2x floor", ns["ours_unsampled"], ns["floor"], 2.0),
    ]
    for t, key in zip(targets, ("ours_jsonl", "ours_store", "ours_jsonl", "ours_store", "ours_unsampled")):
        v = next(v for v in variants if v.key == key)
        if v.runs and v.expect_export:
            # a tracer that drops most spans does less export work in the loop: say so next to the ratio
            t.measured += f"; {export_cell(v).split('(')[-1].rstrip(')')} of spans exported"
        if not agent_loaded(v):
            t.measured += "; agent NOT loaded at start, so this timed the no-op stand-in"
            t.met = None
    by_key = {c.key: c for c in cases}
    plain = by_key["plain"].ms
    for key, name, limit in (
        ("enabled", "AUTOINSTR_ENABLED=true start-up", 10.0),
        ("run", "autoinstr-run start-up", 30.0),
    ):
        ms = by_key[key].ms
        if plain and ms:
            d_min, d_med = best(ms) - best(plain), med(ms) - med(plain)
            d_cpu = med(by_key[key].cpu_ms) - med(by_key["plain"].cpu_ms)
            targets.append(
                Target(
                    name + f" <= +{limit:g} ms",
                    f"{d_min:+.1f} ms wall, min (median {d_med:+.1f} ms; CPU median {d_cpu:+.1f} ms)",
                    f"<= +{limit:g} ms",
                    d_min <= limit,
                )
            )
        else:
            targets.append(Target(name + f" <= +{limit:g} ms", "n/a (failed)", f"<= +{limit:g} ms", None))
    found = {m for res in heavy.values() for m in res.get("heavy", [])}
    failed = [mode for mode, res in heavy.items() if "error" in res]
    targets.append(
        Target(
            "`import autoinstr` (and agent start) imports none of " + ", ".join(HEAVY_MODULES),
            (f"found: {sorted(found)}" if found else "none found") + (f"; failed: {failed}" if failed else ""),
            "none",
            None if len(failed) == len(heavy) else not found,
        )
    )
    for v in variants:
        if v.key != "floor":
            targets.append(
                Target(
                    f"{v.label} really exported" if v.expect_export else f"{v.label} exported nothing",
                    export_cell(v),
                    "> 0 per round" if v.expect_export else "0",
                    export_ok(v),
                )
            )
    return targets


def setup_venvs(workdir: Path) -> tuple[Venv, Venv, Venv]:
    """The three cached venvs; a venv that cannot be set up keeps its error and its variants are reported failed."""
    VENVS.mkdir(parents=True, exist_ok=True)
    ours = Venv("autoinstr", [str(REPO)], ["autoinstr", "wrapt", "msgpack", "sqlparse"])
    dd = Venv("ddtrace", ["ddtrace"], ["ddtrace"])
    otel = Venv(
        "otel",
        ["opentelemetry-sdk", "opentelemetry-distro", "opentelemetry-exporter-otlp-proto-http"],
        [
            "opentelemetry-api",
            "opentelemetry-sdk",
            "opentelemetry-distro",
            "opentelemetry-instrumentation",
            "opentelemetry-exporter-otlp-proto-http",
            "opentelemetry-proto",
        ],
    )
    for venv in (dd, otel, ours):
        log(f"[venv] {venv.name}")
        try:
            if venv is ours:
                setup_autoinstr(venv, workdir)
            else:
                setup_peer(venv)
            read_versions(venv)
        except (RuntimeError, subprocess.SubprocessError, OSError) as e:
            venv.error = str(e)
            log(f"[venv] {venv.name} FAILED: {tail(str(e), 800)}")
    return ours, dd, otel


def bench_spans(variants: list[Variant], workdir: Path, rounds: int, spans: int, warmup: int) -> None:
    scripts: dict[str, Path] = {}
    for v in variants:
        scripts[v.key] = workdir / f"span_{v.key}.py"
        scripts[v.key].write_text(PROLOGUE + v.body + EPILOGUE)
        if v.venv is not None and v.venv.error:
            v.error = f"venv {v.venv.name} not available: {v.venv.error}"
    # One discarded round first (byte-compiles, warms caches) that also weeds out variants that cannot run at all.
    log("[span] warm-up round")
    for v in variants:
        if v.error:
            continue
        try:
            run_span_round(v, scripts[v.key], workdir, max(spans // 10, 1000), 100)
        except RuntimeError as e:
            v.error = str(e)
            log(f"[span] {v.key} FAILED: {tail(str(e), 800)}")
    for i in range(rounds):
        for v in variants:
            if v.error:
                continue
            try:
                v.runs.append(run_span_round(v, scripts[v.key], workdir, spans, warmup))
            except RuntimeError as e:
                v.error = str(e)
                log(f"[span] {v.key} FAILED in round {i + 1}: {tail(str(e), 800)}")
        done = "  ".join(f"{v.key} {fmt(v.runs[-1]['ns_per_span']) if len(v.runs) == i + 1 else '-'}" for v in variants)
        log(f"[span] round {i + 1}/{rounds} (ns/span): {done}")


def bench_startup(cases: list[StartCase], workdir: Path, runs: int) -> None:
    errfile = workdir / "startup.stderr"
    for c in cases:  # one warm-up run each, which also weeds out commands that fail
        if c.venv is not None and c.venv.error:
            c.error = f"venv {c.venv.name} not available: {c.venv.error}"
            continue
        try:
            run_timed(c, errfile, workdir)
        except (RuntimeError, OSError, subprocess.TimeoutExpired) as e:
            c.error = str(e)
            log(f"[startup] {c.key} FAILED: {tail(str(e), 600)}")
    log(f"[startup] {runs} runs x {len(cases)} commands")
    for _ in range(runs):
        for c in cases:
            if c.error:
                continue
            try:
                wall, cpu = run_timed(c, errfile, workdir)
                c.ms.append(wall)
                c.cpu_ms.append(cpu)
            except (RuntimeError, OSError, subprocess.TimeoutExpired) as e:
                c.error = str(e)
    for _ in range(RSS_RUNS):
        for c in cases:
            if c.error:
                continue
            try:
                c.rss_mb.append(peak_rss_mb(c, workdir))
            except (RuntimeError, OSError, subprocess.TimeoutExpired) as e:
                log(f"[startup] {c.key} RSS FAILED: {e}")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    ap.add_argument("--out", type=Path, default=DEFAULT_OUT, help="markdown report (JSON goes beside it)")
    ap.add_argument("--quick", action="store_true", help="fewer rounds, smaller loops: well under a minute")
    ap.add_argument("--rounds", type=int, help="span-cost rounds (default 9, quick 3)")
    ap.add_argument("--spans", type=int, help="timed spans per round (default 100000, quick 20000)")
    ap.add_argument("--startup-runs", type=int, help="runs per start-up command (default 15, quick 5)")
    args = ap.parse_args(argv)
    rounds = args.rounds or (3 if args.quick else 9)
    spans = args.spans or (20_000 if args.quick else 100_000)
    warmup = max(spans // 10, 1000)
    startup_runs = args.startup_runs or (5 if args.quick else 15)
    t_start = time.monotonic()
    loadavg_start = " ".join(f"{x:.2f}" for x in os.getloadavg())  # other work on this small machine skews results

    workdir = Path(tempfile.mkdtemp(prefix="autoinstr-core-bench-"))
    dd_sink, otel_sink = Sink("ddtrace"), Sink("otel")
    try:
        ours, dd, otel = setup_venvs(workdir)
        dd_env = dict(DD_SETTINGS, DD_TRACE_AGENT_URL=dd_sink.url)
        otel_env = dict(OTEL_SETTINGS, OTEL_EXPORTER_OTLP_TRACES_ENDPOINT=otel_sink.url + "/v1/traces")
        settings = {
            "ddtrace": dd_env,
            "otel": otel_env,
            "ours (sampled, jsonl)": dict(AUTOINSTR_SETTINGS, AUTOINSTR_EXPORTER="jsonl"),
            "ours (sampled, store)": dict(AUTOINSTR_SETTINGS),
            "ours (unsampled)": dict(AUTOINSTR_SETTINGS, AUTOINSTR_EXPORTER="jsonl", AUTOINSTR_SAMPLE_RATE="0"),
        }
        for name in ("ddtrace", "otel"):
            log(f"[settings] {name}: " + " ".join(f"{k}={v}" for k, v in settings[name].items()))

        # Table order is run order within a round: floor, ours x3, ddtrace, otel.
        variants = [
            Variant("floor", "floor (pure Python)", "python", FLOOR_BODY, None, clean_env()),
            Variant("ours_jsonl", "autoinstr sampled, jsonl", "autoinstr-run", OURS_BODY, ours,
                    ours.env(settings["ours (sampled, jsonl)"]), output="jsonl"),
            Variant("ours_store", "autoinstr sampled, local store", "autoinstr-run", OURS_BODY, ours,
                    ours.env(settings["ours (sampled, store)"]), output="store"),
            Variant("ours_unsampled", "autoinstr unsampled (rate 0)", "autoinstr-run", OURS_BODY, ours,
                    ours.env(settings["ours (unsampled)"]), output="jsonl", expect_export=False),
            Variant("ddtrace", "ddtrace", "ddtrace-run", DDTRACE_BODY, dd, dd.env(dd_env), sink=dd_sink),
            Variant("otel", "OpenTelemetry SDK", "opentelemetry-instrument", OTEL_BODY, otel, otel.env(otel_env),
                    sink=otel_sink),
        ]  # fmt: skip
        bench_spans(variants, workdir, rounds, spans, warmup)

        # The venv's own python is the baseline, so the deltas are the agent's alone.
        ours_env = dict(AUTOINSTR_SETTINGS, AUTOINSTR_STORE=str(workdir / "startup-store.db"))
        cases = [
            StartCase("bare", "python, no venv (base interpreter + its site-packages)",
                      [BASE_PYTHON, "-c", "pass"], clean_env()),
            StartCase("plain", "python (autoinstr venv, agent off) = plain", [ours.python, "-c", "pass"],
                      ours.env(ours_env), venv=ours),
            StartCase("enabled", "AUTOINSTR_ENABLED=true python", [ours.python, "-c", "pass"],
                      ours.env(dict(ours_env, AUTOINSTR_ENABLED="true")), venv=ours),
            StartCase("run", "autoinstr-run python", [ours.exe("autoinstr-run"), "python", "-c", "pass"],
                      ours.env(ours_env), venv=ours),
            StartCase("ddtrace", "ddtrace-run python", [dd.exe("ddtrace-run"), "python", "-c", "pass"],
                      dd.env(dd_env), venv=dd),
            StartCase("otel", "opentelemetry-instrument python",
                      [otel.exe("opentelemetry-instrument"), "python", "-c", "pass"], otel.env(otel_env), venv=otel),
        ]  # fmt: skip
        bench_startup(cases, workdir, startup_runs)
        heavy = heavy_imports(ours, workdir) if not ours.error else {"import autoinstr": {"error": ours.error}}
    finally:
        dd_sink.close()
        otel_sink.close()
        shutil.rmtree(workdir, ignore_errors=True)

    targets = compute_targets(variants, cases, heavy)
    ctx: dict[str, Any] = {
        "date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M:%S UTC"),
        "platform": platform.platform(),
        "cpus": os.cpu_count(),
        "python": platform.python_version(),
        "mode": "quick" if args.quick else "full",
        "rounds": rounds,
        "spans": spans,
        "warmup": warmup,
        "startup_runs": startup_runs,
        "loadavg": loadavg_start,
        "loadavg_end": " ".join(f"{x:.2f}" for x in os.getloadavg()),
        "versions": {v.name: v.versions for v in (ours, dd, otel) if v.versions},
        "venv_errors": {v.name: v.error for v in (ours, dd, otel) if v.error},
        "settings": settings,
    }
    out_md = args.out.resolve()
    out_md.parent.mkdir(parents=True, exist_ok=True)
    out_md.write_text(build_report(ctx, variants, cases, heavy, targets))
    raw = {
        "context": ctx,
        "span_cost": {
            v.key: {"label": v.label, "launcher": v.launcher, "error": v.error, "runs": v.runs} for v in variants
        },
        "startup": {
            c.key: {
                "label": c.label,
                "cmd": c.cmd,
                "ms": c.ms,
                "cpu_ms": c.cpu_ms,
                "rss_mb": c.rss_mb,
                "error": c.error,
            }
            for c in cases
        },
        "heavy_imports": heavy,
        "targets": [t.__dict__ for t in targets],
    }
    out_json = out_md.with_suffix(".json")
    out_json.write_text(json.dumps(raw, indent=1, default=repr) + "\n")

    print(f"\nTargets (same run; verdict on the ratio of best-of-{rounds}):")
    for t in targets:
        print(f"  {verdict(t.met):<8} {t.name}: {t.measured} (limit {t.limit})")
    print(f"\nwrote {out_md} and {out_json} in {time.monotonic() - t_start:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
