#!/usr/bin/env python3
"""autoinstr beside ddtrace and OpenTelemetry on one reference app, in one run.

    python3 benchmarks/peers/run.py [--quick] [--only inproc,wrk,startup,spancost,pipeline,flood] [--no-write]

Not a test: it asserts nothing, it measures and writes docs/PERFORMANCE.md (+ docs/performance-overhead.png
and benchmarks/peers/last-run.json), printing each budget item as met or not.

- Four virtual environments under benchmarks/.venvs/ (git-ignored), cached between runs: peers-none (flask,
  requests, gunicorn), peers-autoinstr (the same + this repository, reinstalled on every run so the newest code is
  measured), peers-ddtrace, peers-otel (opentelemetry-distro, the OTLP/HTTP exporter and the flask, wsgi, sqlite3,
  requests and urllib3 instrumentations); and peers-chart (matplotlib) for the chart only.
- Every agent exports to a loopback sink in this process that counts the spans it receives (Datadog agent API,
  OTLP/HTTP, autoinstr's collector protocol); a run whose agent exported nothing is reported as invalid, so no
  disabled tracer is measured. Features beyond tracing are off in the peers; the settings are printed.
- Agents run alternately (none, autoinstr, ddtrace, otel, then the next round in a rotated order); figures are
  medians over rounds with their spread, and ratios to the no-agent run of the same round. In-process and under
  gunicorn, every agent's processes are up at once and take turns by a few milliseconds (bench_inproc,
  gunicorn_turns): this machine's speed drifts too fast for runs one after the other.

Standard library only: the agents' packages live in their venvs.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import re
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any, Callable, Dict, List, Optional, Sequence, Tuple

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from sink import DD_TRACING_ONLY, Received, Sink, StubProcess, pinned_to  # noqa: E402

REPO = HERE.parent.parent
VENVS = HERE.parent / ".venvs"
DOC = REPO / "docs" / "PERFORMANCE.md"
CHART = REPO / "docs" / "performance-overhead.png"
LAST_RUN = HERE / "last-run.json"
WRK = shutil.which("wrk") or "/usr/bin/wrk"
# Every venv is built from the interpreter running the suite, so every agent runs on the same Python.
BASE_PYTHON = os.path.realpath(getattr(sys, "_base_executable", None) or sys.executable)

APP_DEPS = ["flask", "requests", "gunicorn"]
ROUTES = ["/hello", "/users/42", "/db", "/outgoing"]
ROUTE_LABELS = {"/hello": "/hello", "/users/42": "/users/<int:id>", "/db": "/db (3 SQLite queries)",
                "/outgoing": "/outgoing (1 requests call)"}
# In markdown the paths go in code spans: `<int:id>` would otherwise be read as an HTML tag and vanish.
ROUTE_MD = {"/hello": "`/hello`", "/users/42": "`/users/<int:id>`", "/db": "`/db` (3 SQLite queries)",
            "/outgoing": "`/outgoing` (1 requests call)"}
WRK_CONNECTIONS = 8
# The in-process step's app and the stub its /outgoing calls share one CPU (the sink, receiving exports, keeps the
# other). Left to the scheduler (one core or two, an idle core woken for every answer), 8 no-agent processes
# differed on /outgoing by 75 us (sd; 52 pinned) and on /hello by 13.7 us (3.3 pinned). The agents' export threads
# share that CPU too, as they share the GIL.
STUB_CPU = max(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None
CHILD_TIMEOUT = 600.0


@dataclass
class Mode:
    # in-process rounds: fresh processes for every variant each, taking turns (see bench_inproc). Processes differ
    # (each its own memory layout): on /outgoing, two no-agent processes stood up to 74 us apart in a round. So
    # several rounds, and no agent twice in each.
    rounds: int
    inproc_cycles: int  # turns of every in-process agent on each route, a round (see bench_inproc)
    inproc_warmup: int
    wrk_rounds: int
    wrk_seconds: int
    turn_runs: int  # runs of the turn-taking step (see gunicorn_turns), and turns of every agent in one
    turn_cycles: int
    # start-up runs of every case: plain `import flask, requests` alone spread from 219 to 352 ms over 20 runs, so
    # the median of 20 differences could still land 20 ms off
    startup_runs: int
    span_rounds: int
    span_count: int
    pipeline_rounds: int
    pipeline_spans: int
    flood_spans: int


QUICK = Mode(rounds=2, inproc_cycles=4, inproc_warmup=50, wrk_rounds=1, wrk_seconds=2,
             turn_runs=1, turn_cycles=20,
             startup_runs=4, span_rounds=1, span_count=20000, pipeline_rounds=1, pipeline_spans=20000,
             flood_spans=20000)
FULL = Mode(rounds=12, inproc_cycles=40, inproc_warmup=200, wrk_rounds=7, wrk_seconds=5,
            turn_runs=8, turn_cycles=120,
            startup_runs=40, span_rounds=3, span_count=50000, pipeline_rounds=3, pipeline_spans=50000,
            flood_spans=100000)


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def tail(text: str, limit: int = 1200) -> str:
    text = text.strip()
    return text if len(text) <= limit else "..." + text[-limit:]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def median(xs: Sequence[float]) -> float:
    return statistics.median(xs) if xs else float("nan")


def spread(xs: Sequence[float]) -> Tuple[float, float]:
    return (min(xs), max(xs)) if xs else (float("nan"), float("nan"))


# ------------------------------------------------------------------------------------------------------ venvs

# Inherited variables that would change what a child does: every child starts from a clean environment.
_STRIP_PREFIXES = ("AUTOINSTR_", "DD_", "OTEL_", "PYTHON")
_STRIP_NAMES = ("VIRTUAL_ENV",)


@dataclass
class Venv:
    name: str
    requirements: List[str]
    dists: List[str]  # whose versions go into the results
    versions: Dict[str, str] = field(default_factory=dict)

    @property
    def path(self) -> Path:
        return VENVS / ("peers-" + self.name)

    @property
    def python(self) -> str:
        return str(self.path / "bin" / "python")

    def exe(self, name: str) -> str:
        return str(self.path / "bin" / name)

    def env(self, extra: Optional[Dict[str, str]] = None) -> Dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith(_STRIP_PREFIXES) and k not in _STRIP_NAMES}
        env["PATH"] = str(self.path / "bin") + os.pathsep + env.get("PATH", "")  # launchers exec `python` from PATH
        env["VIRTUAL_ENV"] = str(self.path)
        env.update(extra or {})
        return env


def pip_install(venv: Venv, args: List[str]) -> None:
    cmd = [venv.python, "-m", "pip", "install", "-q", "--disable-pip-version-check", *args]
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=1800)
    if r.returncode != 0:
        noise = "is ignored: it is neither a file nor a directory"  # this machine's local index mirrors
        err = "\n".join(ln for ln in (r.stdout + r.stderr).splitlines() if noise not in ln)
        raise RuntimeError("pip install %s failed: %s" % (" ".join(args), tail(err, 3000)))


def ensure_venv(venv: Venv) -> bool:
    """Create the venv with its requirements unless an identical one exists; True when it was (re)built."""
    marker = venv.path / ".peers-marker"
    stamp = json.dumps({"python": BASE_PYTHON, "version": platform.python_version(), "req": venv.requirements})
    if Path(venv.python).exists() and marker.exists() and marker.read_text() == stamp:
        return False
    log("[venv] building %s ..." % venv.path)
    shutil.rmtree(venv.path, ignore_errors=True)
    subprocess.run([BASE_PYTHON, "-m", "venv", str(venv.path)], check=True, capture_output=True)
    pip_install(venv, venv.requirements)
    marker.write_text(stamp)
    return True


def read_versions(venv: Venv) -> None:
    code = ("import importlib.metadata as m, json, sys\n"
            "out = {'python': sys.version.split()[0]}\n"
            "for d in sys.argv[1:]:\n"
            "    try: out[d] = m.version(d)\n"
            "    except m.PackageNotFoundError: out[d] = 'not installed'\n"
            "print(json.dumps(out))\n")
    r = subprocess.run([venv.python, "-c", code, *venv.dists], capture_output=True, text=True, env=venv.env())
    venv.versions = json.loads(r.stdout) if r.returncode == 0 else {"error": tail(r.stderr, 300)}


OTEL_INSTRUMENTATIONS = ["opentelemetry-instrumentation-flask", "opentelemetry-instrumentation-wsgi",
                         "opentelemetry-instrumentation-sqlite3", "opentelemetry-instrumentation-requests",
                         "opentelemetry-instrumentation-urllib3"]
VENV_SPECS = {
    "none": Venv("none", APP_DEPS, ["flask", "requests", "gunicorn", "werkzeug", "urllib3"]),
    "autoinstr": Venv("autoinstr", APP_DEPS + ["wrapt", "msgpack", "sqlparse", "waitress"],
                      ["autoinstr", "wrapt", "msgpack", "sqlparse", "flask", "requests", "gunicorn"]),
    "ddtrace": Venv("ddtrace", APP_DEPS + ["ddtrace"], ["ddtrace", "flask", "requests", "gunicorn"]),
    "otel": Venv("otel", APP_DEPS + ["opentelemetry-distro", "opentelemetry-exporter-otlp-proto-http"]
                 + OTEL_INSTRUMENTATIONS,
                 ["opentelemetry-sdk", "opentelemetry-distro", "opentelemetry-exporter-otlp-proto-http",
                  *OTEL_INSTRUMENTATIONS, "flask", "requests", "gunicorn"]),
    "chart": Venv("chart", ["matplotlib"], ["matplotlib"]),
}


def setup_venvs() -> Dict[str, Venv]:
    VENVS.mkdir(parents=True, exist_ok=True)
    for venv in VENV_SPECS.values():
        ensure_venv(venv)
    # The agent under test: this repository as it is now (non-editable, as users install it).
    log("[venv] installing autoinstr from %s ..." % REPO)
    pip_install(VENV_SPECS["autoinstr"], ["--force-reinstall", "--no-deps", str(REPO)])
    pip_install(VENV_SPECS["autoinstr"], [str(REPO)])  # its dependencies as it declares them now (wrapt < 2...)
    for venv in VENV_SPECS.values():
        read_versions(venv)
    return VENV_SPECS


# ----------------------------------------------------------------------------------------------------- agents

def peer_settings(sink_url: str) -> Dict[str, Dict[str, str]]:
    """Each agent's environment: tracing on, exported to the sink; everything else the peers offer off."""
    return {
        "none": {},
        "autoinstr": {
            "AUTOINSTR_SERVICE_NAME": "refapp",
            "AUTOINSTR_EXPORTER": "collector",  # msgpack over HTTP, to the sink standing in for the collector
            "AUTOINSTR_COLLECTOR_URL": sink_url,
        },
        "ddtrace": dict(DD_TRACING_ONLY, DD_SERVICE="refapp", DD_TRACE_AGENT_URL=sink_url, DD_TRACE_ENABLED="true"),
        "otel": {
            "OTEL_SERVICE_NAME": "refapp",
            "OTEL_TRACES_EXPORTER": "otlp",
            "OTEL_EXPORTER_OTLP_PROTOCOL": "http/protobuf",
            "OTEL_EXPORTER_OTLP_ENDPOINT": sink_url,
            "OTEL_METRICS_EXPORTER": "none",
            "OTEL_LOGS_EXPORTER": "none",
        },
    }


LAUNCHERS = {"none": [], "autoinstr": ["autoinstr-run"], "ddtrace": ["ddtrace-run"],
             "otel": ["opentelemetry-instrument"]}
AGENTS = ["none", "autoinstr", "ddtrace", "otel"]
PEERS = ["ddtrace", "otel"]
PEERS_AND_US = ["autoinstr"] + PEERS
LABELS = {"none": "no agent", "autoinstr": "autoinstr", "ddtrace": "ddtrace", "otel": "OpenTelemetry",
          "floor": "pure-Python floor", "autoinstr-noexport": "autoinstr, AUTOINSTR_EXPORTER=none",
          "autoinstr-local": "autoinstr, default local store"}


@dataclass
class Ctx:
    venvs: Dict[str, Venv]
    sink: Sink
    stub: StubProcess
    settings: Dict[str, Dict[str, str]]
    work: Path
    mode: Mode
    # variables each agent's launcher adds to what it is given (PYTHONPATH...), and the size every measured
    # process's environment is padded to (see pad_environments)
    launcher_adds: Dict[str, int] = field(default_factory=dict)
    environment_size: int = 0

    def command(self, agent: str, argv: List[str]) -> List[str]:
        """argv (starting with `python` or a venv script name) under the agent's launcher, from its venv."""
        venv = self.venvs[agent]
        head = [venv.exe(argv[0])] if not LAUNCHERS[agent] else [venv.exe(LAUNCHERS[agent][0]), argv[0]]
        return head + argv[1:]

    def env(self, agent: str, extra: Optional[Dict[str, str]] = None) -> Dict[str, str]:
        env = self.venvs[agent].env(self.settings[agent])
        env["REFAPP_DB"] = str(self.work / "refapp.db")
        env["REFAPP_STUB_URL"] = self.stub.url + "/stub"
        env.update(extra or {})
        return self.padded(agent, env)

    def padded(self, agent: str, env: Dict[str, str]) -> Dict[str, str]:
        """env with padding variables, so that the agent's process sees environment_size of them."""
        env = {k: v for k, v in env.items() if not k.startswith(ENV_PAD_PREFIX)}
        missing = self.environment_size - len(env) - self.launcher_adds.get(agent, 0)
        env.update((ENV_PAD_PREFIX + "%02d" % i, ENV_PAD_VALUE) for i in range(max(missing, 0)))
        return env


# requests reads the whole environment on every call (its proxy settings: os.environ decoded item by item, several
# times), about 30,000 instructions a variable a call here. So the settings an agent is configured with, and the
# PYTHONPATH its launcher adds, would count as that agent's per-request cost on /outgoing (ddtrace's twenty
# settings most). Every measured process sees an environment of the same size instead: the others are padded
# with neutral variables.
ENV_PAD_PREFIX = "BENCH_ENV_PAD_"
ENV_PAD_VALUE = "an environment variable of the machine"
_ENV_SIZE_CODE = "import os; print(len(os.environ))"


def pad_environments(ctx: Ctx, agents: Sequence[str] = tuple(AGENTS)) -> Dict[str, int]:
    """Measure what each launcher adds to its environment, and set the size every measured process gets: the
    largest an agent's own process has (plus room for the variants' extra settings). {agent: variables it sees
    unpadded}."""
    seen: Dict[str, int] = {}
    for agent in agents:
        env = ctx.env(agent)
        r = subprocess.run(ctx.command(agent, ["python", "-c", _ENV_SIZE_CODE]), env=env, cwd=ctx.work,
                           capture_output=True, text=True, timeout=120, stdin=subprocess.DEVNULL)
        if r.returncode != 0:
            raise RuntimeError("%s: %s" % (agent, tail(r.stderr)))
        seen[agent] = int(r.stdout.split()[-1])
        ctx.launcher_adds[agent] = seen[agent] - len(env)
    ctx.environment_size = max(seen.values()) + 12  # (room for the steps' own: BENCH_*, AUTOINSTR_STORE...)
    return seen


def rotated(items: List[str], round_index: int) -> List[str]:
    k = round_index % len(items)
    return items[k:] + items[:k]


def run_child(cmd: List[str], env: Dict[str, str], cwd: Path, timeout: float = CHILD_TIMEOUT,
              cpu: Optional[int] = None) -> Dict[str, Any]:
    """Run a measuring child to its end (on one CPU if given: its threads too); its `RESULT {json}` line."""
    r = subprocess.run(cmd, env=env, cwd=cwd, capture_output=True, text=True, timeout=timeout,
                       stdin=subprocess.DEVNULL, preexec_fn=None if cpu is None else pinned_to(cpu))
    result = next((json.loads(ln[7:]) for ln in r.stdout.splitlines() if ln.startswith("RESULT ")), None)
    if r.returncode != 0 or result is None:
        raise RuntimeError("%s: exit %d, no result; stderr: %s" % (" ".join(cmd[:3]), r.returncode, tail(r.stderr)))
    result["stderr_tail"] = tail(r.stderr, 300)
    return result


def export_check(agent: str, got: Received, expected_min: int) -> Dict[str, Any]:
    """The sink's count for one run: a tracer that exported nothing (or far too little) is not measured."""
    ok = got.spans == 0 if agent == "none" else (got.spans >= expected_min > 0 and not got.errors)
    return {"spans": got.spans, "requests": sum(got.requests.values()), "expected_min": expected_min, "ok": ok,
            "detail": got.describe()}


# -------------------------------------------------------------------------------------- in-process per route

# The in-process step also runs autoinstr with AUTOINSTR_EXPORTER=none: the request path alone, so the report
# can tell how much of our overhead is the wrappers and how much the export work sharing the GIL.
NO_EXPORT = "autoinstr-noexport"
# ...and with the default exporter (the local SQLite store), checked by counting the store's rows.
LOCAL = "autoinstr-local"
INPROC_VARIANTS = AGENTS + [LOCAL, NO_EXPORT]


# In-process, the agents take turns too (see gunicorn_turns): every variant's process up at once, all on one CPU, each
# running requests to one route for INPROC_TURN_S in its turn while the others are stopped (SIGSTOP: an agent's own
# threads wait too). One process per variant run one after the other gave /users/42 overheads of 17.9 and 34.9 us in
# two runs of the same code. Turns of a fixed count of requests were no better: ddtrace's took 70 ms, over which
# this machine's speed moved by half, between two turns of no agent. No agent runs two processes, whose mean every
# other variant is compared with.
INPROC_TURN_S = 0.004
INPROC_REPLICAS = {"none": 2}


class TurnTaker:
    """One inproc.py process in its serve mode (env has BENCH_SERVE=1): stopped but for each command it is given."""

    def __init__(self, cmd: List[str], env: Dict[str, str], cwd: Path, cpu: Optional[int]) -> None:
        # (stderr to a file: a pipe nobody reads until the end would block a chatty agent once full)
        self.errors = tempfile.TemporaryFile(dir=cwd)  # noqa: SIM115 (closed by kill(), after the process)
        self.proc = subprocess.Popen(cmd, env=env, cwd=cwd, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                     stderr=self.errors, text=True, preexec_fn=None if cpu is None else pinned_to(cpu))

    def answer(self) -> str:
        line = self.proc.stdout.readline() if self.proc.stdout else ""
        if not line:
            self.proc.wait(30)
            self.errors.seek(0)
            err = self.errors.read().decode("utf-8", "replace")
            raise RuntimeError("inproc.py: exit %s, no answer; stderr: %s" % (self.proc.returncode, tail(err)))
        return line.strip()

    def ready(self) -> None:
        while not self.answer().startswith("READY"):  # (an agent may print its own lines first)
            pass
        self.stop()

    def stop(self) -> None:
        """Stopped, and known to be before the next turn starts (the signal takes effect a moment later)."""
        self.proc.send_signal(signal.SIGSTOP)
        _, status = os.waitpid(self.proc.pid, os.WUNTRACED)
        if not os.WIFSTOPPED(status):  # it exited instead: reaped here, so Popen is told
            self.proc.returncode = os.waitstatus_to_exitcode(status)

    def ask(self, command: str) -> str:
        """Run one command in a turn of its own: continued, told, answered, stopped again."""
        self.proc.send_signal(signal.SIGCONT)
        assert self.proc.stdin is not None
        self.proc.stdin.write(command + "\n")
        self.proc.stdin.flush()
        got = self.answer()
        while command != "result" and not re.fullmatch(r"\d+ \d+", got):  # (an agent's own line on stdout)
            got = self.answer()
        if command != "result":
            self.stop()
        return got

    def turn(self, command: str) -> Tuple[int, int]:
        """(requests, ns) of a `turn` or `flush` command."""
        requests, ns = self.ask(command).split()
        return int(requests), int(ns)

    def close(self) -> Dict[str, Any]:
        """The RESULT of the process (its RSS, requests made), as it exits."""
        got = self.ask("result")
        while not got.startswith("RESULT "):
            got = self.answer()
        self.proc.wait(60)
        return json.loads(got[len("RESULT "):])  # type: ignore[no-any-return]

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGCONT)
            self.proc.kill()
            self.proc.wait(10)
        self.errors.close()


def bench_inproc(ctx: Ctx) -> Dict[str, Any]:
    m = ctx.mode
    runs: Dict[str, List[Dict[str, Any]]] = {a: [] for a in INPROC_VARIANTS}
    slots = [(v, i) for v in INPROC_VARIANTS for i in range(INPROC_REPLICAS.get(v, 1))]
    extra = {"BENCH_ROUTES": ",".join(ROUTES), "BENCH_WARMUP": str(m.inproc_warmup), "BENCH_SERVE": "1"}
    store = ctx.work / "inproc-store.db"
    for r in range(m.rounds):
        log("[inproc] round %d/%d: %d processes taking turns" % (r + 1, m.rounds, len(slots)))
        takers: Dict[Tuple[str, int], TurnTaker] = {}
        ctx.sink.take()
        try:
            for variant, i in slots:
                agent = "autoinstr" if variant in (NO_EXPORT, LOCAL) else variant
                env = ctx.env(agent, dict(extra, BENCH_AGENT=agent))
                if variant in (NO_EXPORT, LOCAL):  # (what they posted, were it anything, would arrive apart)
                    env = ctx.padded(agent, dict(env, AUTOINSTR_COLLECTOR_URL=ctx.sink.url + "/" + variant,
                                                 **({"AUTOINSTR_EXPORTER": "none"} if variant == NO_EXPORT else
                                                    {"AUTOINSTR_EXPORTER": "local", "AUTOINSTR_STORE": str(store)})))
                takers[(variant, i)] = TurnTaker(ctx.command(agent, ["python", str(HERE / "inproc.py")]), env,
                                                 ctx.work, STUB_CPU)
                takers[(variant, i)].ready()  # (one at a time: start-up and warm-up alone on the CPU)
            ns = {slot: {route: 0 for route in ROUTES} for slot in slots}
            made = {slot: {route: 0 for route in ROUTES} for slot in slots}
            for route in ROUTES:
                for cycle in range(m.inproc_cycles):
                    for slot in rotated(slots, cycle):
                        n, took = takers[slot].turn("turn %s %g" % (route, INPROC_TURN_S * 1000))
                        made[slot][route] += n
                        ns[slot][route] += took
                for slot in slots:  # what the route's requests left to export is part of their cost
                    ns[slot][route] += takers[slot].turn("flush")[1]
            results = {slot: takers[slot].close() for slot in slots}
        finally:
            for taker in takers.values():
                taker.kill()
        got = ctx.sink.take()
        for variant in INPROC_VARIANTS:
            mine = [slot for slot in slots if slot[0] == variant]
            res = dict(results[mine[0]])
            res["ns_per_request"] = {route: sum(ns[slot][route] for slot in mine) /
                                     max(1, sum(made[slot][route] for slot in mine)) for route in ROUTES}
            res["replica_ns"] = {route: [ns[slot][route] / max(1, made[slot][route]) for slot in mine]
                                 for route in ROUTES}
            res["timed_requests"] = {route: sum(made[slot][route] for slot in mine) for route in ROUTES}
            res["maxrss_kb"] = statistics.fmean(results[slot]["maxrss_kb"] for slot in mine)
            if ctx.environment_size and res.get("environment_size") != ctx.environment_size:
                raise RuntimeError("%s saw %s environment variables, not %d" % (
                    variant, res.get("environment_size"), ctx.environment_size))
            requests = sum(res["requests"].values())
            agent = "autoinstr" if variant in (NO_EXPORT, LOCAL) else variant
            paths = ("/%s/v1/spans" % variant,) if variant in (NO_EXPORT, LOCAL) else EXPORT_PATHS.get(agent, ())
            exported = got.at(paths)
            # at least one span per request: every route has a server span
            res["export"] = export_check("none" if variant in (NO_EXPORT, LOCAL) else agent, exported, requests)
            if variant == LOCAL:
                stored = store_count(ctx, store)
                res["export"] = {"spans": stored, "requests": 0, "expected_min": requests,
                                 "ok": stored >= requests and res["export"]["ok"],
                                 "detail": "%d spans in the local store" % stored}
                for path in ctx.work.glob(store.name + "*"):
                    path.unlink()
            res["round"] = r
            runs[variant].append(res)
            log("  %s: %s; RSS %.1f MB; sink: %s" % (variant, ", ".join(
                "%s %.1f us" % (p, ns_ / 1e3) for p, ns_ in res["ns_per_request"].items()), res["maxrss_kb"] / 1024,
                res["export"]["detail"]))
    summary = summarize_inproc(runs)
    summary["cycles"], summary["turn_s"], summary["replicas"] = m.inproc_cycles, INPROC_TURN_S, INPROC_REPLICAS
    log("[inproc] spans each agent records per request, route by route ...")
    summary["spans_per_request"] = spans_per_request(ctx)
    return summary


COVERAGE_REQUESTS = 50


def spans_per_request(ctx: Ctx, agents: Sequence[str] = tuple(PEERS_AND_US)) -> Dict[str, Dict[str, float]]:
    """What each agent records on each route, spans a request: the sink's counts for two runs of that route alone,
    COVERAGE_REQUESTS requests apart (the overheads compare agents that may not do the same work: a tracer that
    misses a library's calls has less to do)."""
    out: Dict[str, Dict[str, float]] = {}
    # the app fills its database on its first start ever (an executemany span more): done here, not counted
    run_child(ctx.command("none", ["python", str(HERE / "inproc.py")]), ctx.env("none", {
        "BENCH_REQUESTS": "1", "BENCH_REPEATS": "1", "BENCH_WARMUP": "1", "BENCH_AGENT": "none",
        "BENCH_ROUTES": "/hello"}), ctx.work)
    for agent in agents:
        out[agent] = {}
        for route in ROUTES:
            counted = []  # (requests, spans) of a short run and a longer one: the app's start-up spans cancel out
            for requests in (1, 1 + COVERAGE_REQUESTS):
                env = ctx.env(agent, {"BENCH_REQUESTS": str(requests), "BENCH_REPEATS": "1", "BENCH_WARMUP": "1",
                                      "BENCH_AGENT": agent, "BENCH_ROUTES": route})
                ctx.sink.take()
                res = run_child(ctx.command(agent, ["python", str(HERE / "inproc.py")]), env, ctx.work)
                counted.append((res["requests"][route], ctx.sink.take().spans))
            (r1, s1), (r2, s2) = counted
            out[agent][route] = (s2 - s1) / max(1, r2 - r1)
    return out


def summarize_inproc(runs: Dict[str, List[Dict[str, Any]]]) -> Dict[str, Any]:
    rounds = min(len(v) for v in runs.values())
    out: Dict[str, Any] = {"routes": {}, "rss": {}, "export": {}, "rounds": rounds}
    for route in ROUTES:
        row: Dict[str, Any] = {}
        for agent in runs:
            ns = [runs[agent][i]["ns_per_request"][route] for i in range(rounds)]
            base = [runs["none"][i]["ns_per_request"][route] for i in range(rounds)]  # (the same round's)
            over = [a - b for a, b in zip(ns, base)]
            ratio = [a / b for a, b in zip(ns, base)]
            row[agent] = {"us": median(ns) / 1e3, "us_spread": [x / 1e3 for x in spread(ns)],
                          "overhead_us": median(over) / 1e3, "overhead_spread": [x / 1e3 for x in spread(over)],
                          "ratio": median(ratio), "ratio_spread": list(spread(ratio))}
            replicas = [runs[agent][i].get("replica_ns", {}).get(route, []) for i in range(rounds)]
            if all(len(r) > 1 for r in replicas):  # how far apart its identical processes stood, round by round
                row[agent]["replica_gaps_us"] = [(max(r) - min(r)) / 1e3 for r in replicas]
        out["routes"][route] = row
    for agent in runs:
        rss = [runs[agent][i]["maxrss_kb"] / 1024 for i in range(rounds)]
        base = [runs["none"][i]["maxrss_kb"] / 1024 for i in range(rounds)]
        out["rss"][agent] = {"mb": median(rss), "over_mb": median([a - b for a, b in zip(rss, base)]),
                             "spread": list(spread(rss))}
        checks = [runs[agent][i]["export"] for i in range(rounds)]
        out["export"][agent] = {"ok": all(c["ok"] for c in checks), "spans": [c["spans"] for c in checks],
                                "expected_min": [c["expected_min"] for c in checks],
                                "detail": checks[-1]["detail"]}
    return out


# ------------------------------------------------------------------------------------------- gunicorn + wrk

_WRK_UNITS = {"us": 1e-3, "ms": 1.0, "s": 1e3, "m": 6e4}


def parse_wrk(text: str) -> Dict[str, Any]:
    """Requests/s, p50 and p99 latency (ms), requests and errors from `wrk --latency` output."""
    rps = re.search(r"Requests/sec:\s+([\d.]+)", text)
    total = re.search(r"(\d+) requests in", text)
    if not rps or not total:
        raise ValueError("unexpected wrk output: %s" % tail(text, 400))
    lat = {}
    for pct, value, unit in re.findall(r"^\s+(50|99)(?:\.0+)?%\s+([\d.]+)(us|ms|s|m)\s*$", text, re.M):
        lat[pct] = float(value) * _WRK_UNITS[unit]
    errors = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", text)
    non2xx = re.search(r"Non-2xx or 3xx responses: (\d+)", text)
    return {"rps": float(rps.group(1)), "requests": int(total.group(1)), "p50_ms": lat.get("50"),
            "p99_ms": lat.get("99"), "socket_errors": sum(int(x) for x in errors.groups()) if errors else 0,
            "non_2xx": int(non2xx.group(1)) if non2xx else 0}


def worker_pids(master: int) -> List[int]:
    pids = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open("/proc/%s/stat" % entry) as f:
                    stat = f.read().rsplit(")", 1)[1].split()
                if int(stat[1]) == master:
                    pids.append(int(entry))
            except (OSError, IndexError, ValueError):
                continue
    return pids


def vm_hwm_mb(pid: int) -> Optional[float]:
    try:
        with open("/proc/%d/status" % pid) as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        return None
    return None


def wait_ready(url: str, proc: subprocess.Popen, seconds: float = 60.0) -> None:
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        if proc.poll() is not None:
            raise RuntimeError("server exited with %s before answering" % proc.returncode)
        try:
            with urllib.request.urlopen(url, timeout=2) as resp:
                if resp.status == 200:
                    return
        except OSError:
            time.sleep(0.1)
    raise RuntimeError("server did not answer %s within %.0f s" % (url, seconds))


def stop_group(proc: subprocess.Popen, seconds: float = 20.0) -> None:
    """SIGTERM (gunicorn's graceful stop: workers exit and their agents flush), SIGKILL past the deadline."""
    if proc.poll() is None:
        try:
            os.killpg(proc.pid, signal.SIGTERM)
        except ProcessLookupError:
            return
        try:
            proc.wait(seconds)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(10)


def cpu_ticks(pids: List[int]) -> int:
    """utime + stime of these processes, in clock ticks (the ones gone meanwhile count 0)."""
    total = 0
    for pid in pids:
        try:
            with open("/proc/%d/stat" % pid) as f:
                fields = f.read().rsplit(")", 1)[1].split()
            total += int(fields[11]) + int(fields[12])
        except (OSError, IndexError, ValueError):
            continue
    return total


def machine_ticks() -> Tuple[int, int]:
    """(all CPU ticks, steal ticks) of the machine so far (/proc/stat): the share of time the hypervisor gave
    this machine's CPUs to others, which slows whatever runs meanwhile."""
    try:
        with open("/proc/stat") as f:
            values = [int(x) for x in f.readline().split()[1:]]
        return sum(values[:8]), values[7]
    except (OSError, ValueError, IndexError):
        return 0, 0


def run_wrk(url: str, seconds: int, connections: int = WRK_CONNECTIONS) -> Dict[str, Any]:
    cmd = [WRK, "-t1", "-c%d" % connections, "-d%ds" % seconds, "--latency", url]
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=seconds + 60)
    if r.returncode != 0:
        raise RuntimeError("wrk failed: %s" % tail(r.stderr + r.stdout, 400))
    return parse_wrk(r.stdout)


def start_gunicorn(ctx: Ctx, agent: str, workers: int, path: str, gc_out: Optional[Path] = None,
                   replica: int = 0) -> Tuple[subprocess.Popen, str, IO[bytes]]:
    """gunicorn serving the reference app under the agent's launcher: (its process, the url of path, its log).
    `replica`: which of an agent's servers up at once (each its own log)."""
    port = free_port()
    config = ["-c", str(HERE / "gc_hooks.py")] if gc_out is not None else []
    cmd = ctx.command(agent, ["gunicorn", "-w", str(workers), "-b", "127.0.0.1:%d" % port, "--chdir", str(HERE),
                              "--log-level", "warning"] + config + ["refapp:app"])
    errlog = (ctx.work / ("gunicorn-%s%s.log" % (agent, "-%d" % replica if replica else ""))).open("wb")
    env = ctx.env(agent, None if gc_out is None else {"BENCH_GC_OUT": str(gc_out)})
    proc = subprocess.Popen(cmd, env=env, cwd=ctx.work, stdin=subprocess.DEVNULL,
                            stdout=errlog, stderr=errlog, start_new_session=True)
    return proc, "http://127.0.0.1:%d%s" % (port, path), errlog


def gunicorn_once(ctx: Ctx, agent: str, workers: int, path: str, gc_out: Optional[Path] = None) -> Dict[str, Any]:
    """One gunicorn run under wrk. With gc_out, its workers time their garbage collections (gc_hooks.py) and
    write them there as they exit."""
    ctx.sink.take()
    proc, url, errlog = start_gunicorn(ctx, agent, workers, path, gc_out)
    try:
        wait_ready(url, proc)
        run_wrk(url, 1)  # warm-up: every worker has served, imported and patched what it needs
        workers = worker_pids(proc.pid)
        cpu_before, (all_before, steal_before) = cpu_ticks(workers), machine_ticks()
        res = run_wrk(url, ctx.mode.wrk_seconds)
        cpu_after, (all_after, steal_after) = cpu_ticks(workers), machine_ticks()
        # the workers' CPU time per request: the same cost as req/s shows, less shaken by the machine's noise
        res["cpu_us"] = (cpu_after - cpu_before) / os.sysconf("SC_CLK_TCK") / max(1, res["requests"]) * 1e6
        res["steal_pct"] = 100.0 * (steal_after - steal_before) / max(1, all_after - all_before)
        res["worker_rss_mb"] = [x for x in (vm_hwm_mb(p) for p in workers) if x is not None]
    finally:
        stop_group(proc)
        errlog.close()
    # warm-up requests are exported too, so the measured run's count is a lower bound
    res["export"] = export_check(agent, ctx.sink.take(), res["requests"] // 2)
    if proc.returncode not in (0, -signal.SIGTERM):
        res["exit"] = proc.returncode
    log("  %.0f req/s, p50 %s ms, p99 %s ms, worker CPU %.0f us/request, steal %.1f%%, worker RSS %s MB; sink: %s" % (
        res["rps"], res["p50_ms"], res["p99_ms"], res["cpu_us"], res["steal_pct"], res["worker_rss_mb"],
        res["export"]["detail"]))
    return res


# This machine's speed drifts: a CPU-bound loop timed by 25 ms steps varies by 27% (sd), and its steps are
# correlated (0.85 at 25 ms, 0.63 at 100 ms, 0.2 to 0.3 past 500 ms). Runs of seconds one after the other
# differ by 15% and more, which is more than the 5% the budget asks to resolve. Taking turns by 25 ms, the
# agents see the same machine. Three no-agent servers taking turns by 100 ms still differed by -6 to +19% in a
# run; by 25 ms, -5 to +2%; by 25 ms with every wrk on one CPU (the workers go to the other), -2 to +4%. What
# is left differs from process to process (its layout, its placement): hence several runs, each with fresh ones.
TURN_S = 0.025
LOAD_CPU = min(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") and len(os.sched_getaffinity(0)) > 1 \
    else None
# Identical servers differ by up to 5% and more from process to process (two no-agent ones in one run: 0.93 to 1.06
# over 8 runs), the more so than the machine's drift now that they take turns: no agent, whose figure divides every
# other, and autoinstr, whose ratio the budget reads, run two servers each, and the ratio is of their sums.
TURN_REPLICAS = {"none": 2, "autoinstr": 2}
EXPORT_PATHS = {"autoinstr": ("/v1/spans",), "ddtrace": ("/v0.4/traces", "/v0.5/traces"), "otel": ("/v1/traces",)}


def gunicorn_turns(ctx: Ctx, workers: int, path: str = "/hello") -> Dict[str, Any]:
    """Every agent's gunicorn up at once (TURN_REPLICAS of some), each under its own wrk, taking turns by TURN_S: the
    turn's workers run, every other worker is stopped (SIGSTOP; its wrk waits on its connections). {agent:
    requests/s while running, over all its servers}. Only throughput: a stopped worker's pending requests wait out
    the others' turns, so latencies mean nothing."""
    slots = [(agent, i) for agent in AGENTS for i in range(TURN_REPLICAS.get(agent, 1))]
    servers: Dict[Tuple[str, int], Tuple[subprocess.Popen, str, IO[bytes]]] = {}
    loads: Dict[Tuple[str, int], subprocess.Popen] = {}
    ran = {slot: 0.0 for slot in slots}
    pids: Dict[Tuple[str, int], List[int]] = {}

    def signal_workers(slot: Tuple[str, int], sig: int) -> None:
        for pid in pids.get(slot, []):
            try:
                os.kill(pid, sig)
            except ProcessLookupError:
                pass

    ctx.sink.take()
    try:
        for slot in slots:
            servers[slot] = start_gunicorn(ctx, slot[0], workers, path, replica=slot[1])
        for slot, (proc, url, _) in servers.items():
            wait_ready(url, proc)
            run_wrk(url, 1)  # warm-up, as in gunicorn_once
            pids[slot] = worker_pids(proc.pid)
            signal_workers(slot, signal.SIGSTOP)
        for slot, (_, url, _) in servers.items():  # (ended by SIGINT, on which wrk reports what it did)
            loads[slot] = subprocess.Popen([WRK, "-t1", "-c%d" % WRK_CONNECTIONS, "-d3600s", url],
                                           stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                                           preexec_fn=None if LOAD_CPU is None else pinned_to(LOAD_CPU))
        time.sleep(0.3)  # every wrk connected, its first requests waiting
        cpu_before = {slot: cpu_ticks(pids[slot]) for slot in slots}
        for cycle in range(ctx.mode.turn_cycles):
            for slot in rotated(slots, cycle):
                signal_workers(slot, signal.SIGCONT)
                started = time.monotonic()
                time.sleep(TURN_S)
                signal_workers(slot, signal.SIGSTOP)
                ran[slot] += time.monotonic() - started
        cpu = {slot: (cpu_ticks(pids[slot]) - cpu_before[slot]) / os.sysconf("SC_CLK_TCK") for slot in slots}
        done: Dict[Tuple[str, int], Dict[str, Any]] = {}
        for slot, load in loads.items():
            load.send_signal(signal.SIGINT)
            done[slot] = parse_wrk(load.communicate(timeout=60)[0])
    finally:
        for load in loads.values():
            if load.poll() is None:
                load.kill()
                load.wait(10)
        for slot, (proc, _, errlog) in servers.items():
            signal_workers(slot, signal.SIGCONT)
            stop_group(proc)
            errlog.close()
    out: Dict[str, Any] = {}
    for agent in AGENTS:
        mine = [slot for slot in slots if slot[0] == agent]
        requests = sum(done[slot]["requests"] for slot in mine)
        ran_s, cpu_s = sum(ran[slot] for slot in mine), sum(cpu[slot] for slot in mine)
        out[agent] = {"rps": requests / ran_s, "requests": requests, "ran_s": ran_s, "cpu_s": cpu_s,
                      "errors": sum(done[slot]["socket_errors"] + done[slot]["non_2xx"] for slot in mine),
                      "cpu_us": cpu_s / max(1, requests) * 1e6,
                      "server_rps": [done[slot]["requests"] / ran[slot] for slot in mine]}
    got = ctx.sink.take()
    for agent in AGENTS:  # (one sink for all: told apart by the path each agent posts to)
        paths = EXPORT_PATHS.get(agent, ())
        out[agent]["exported"] = got.at(paths).spans
    return out


def inproc_processes_text(inproc: Dict[str, Any]) -> str:
    """For the report: the in-process step's processes a round, the no-agent ones and how far apart they stood."""
    n = (inproc.get("replicas") or {}).get("none", 1)
    gaps = [g for route in ROUTES for g in inproc["routes"][route]["none"].get("replica_gaps_us", [])]
    if n < 2 or not gaps:
        return "no agent in one process"
    return "no agent in %d processes: their mean is its figure; they stood %.1f us apart, median over routes and " \
        "rounds" % (n, median(gaps))


def replicas_text(replicas: Dict[str, int], turns: Dict[str, Any]) -> str:
    """For the report: which agents ran several servers in the turn-taking runs, and how far apart they stood."""
    several = [a for a in AGENTS if replicas.get(a, 1) > 1]
    gaps = [100 * g for row in turns.values() for a in several for g in row[a].get("replica_gaps", [])]
    if not several or not gaps:
        return ""
    counts = {replicas[a] for a in several}
    who = " and ".join(LABELS[a] if len(counts) == 1 else "%s (%d)" % (LABELS[a], replicas[a]) for a in several)
    return (": %s run %s servers each, and their requests/s are over all of them (the faster of an agent's "
            "identical servers served %.1f%% more than the slower, median over the runs, up to %.1f%%)"
            % (who, counts.pop() if len(counts) == 1 else "several", median(gaps), max(gaps)))


def summarize_turns(runs: List[Dict[str, Any]]) -> Dict[str, Any]:
    """Per agent: median requests/s, and the median (spread) of each run's ratio to no agent's."""
    row: Dict[str, Any] = {}
    for agent in AGENTS:
        ratios = [run[agent]["rps"] / run["none"]["rps"] for run in runs]
        rps = [run[agent]["rps"] for run in runs]
        row[agent] = {"rps": median(rps), "ratio": median(ratios), "ratio_spread": list(spread(ratios)),
                      "run_ratios": ratios, "errors": sum(run[agent]["errors"] for run in runs),
                      "cpu_us": median([run[agent]["cpu_us"] for run in runs]),
                      "export_ok": all((run[agent]["exported"] == 0) == (agent == "none") for run in runs)}
        if TURN_REPLICAS.get(agent, 1) > 1:  # how far its identical servers stood apart, each run (max / min - 1)
            row[agent]["replica_gaps"] = [max(run[agent]["server_rps"]) / min(run[agent]["server_rps"]) - 1
                                          for run in runs if min(run[agent].get("server_rps") or [0]) > 0]
    return row


def bench_wrk(ctx: Ctx) -> Dict[str, Any]:
    out: Dict[str, Any] = {"connections": WRK_CONNECTIONS, "seconds": ctx.mode.wrk_seconds, "by_workers": {}}
    for workers in (1, 2):
        runs: Dict[str, List[Dict[str, Any]]] = {a: [] for a in AGENTS}
        for r in range(ctx.mode.wrk_rounds):
            for agent in rotated(AGENTS, r):
                log("[wrk] %d worker(s), round %d/%d %s" % (workers, r + 1, ctx.mode.wrk_rounds, agent))
                runs[agent].append(gunicorn_once(ctx, agent, workers, "/hello"))
        rounds = ctx.mode.wrk_rounds
        row: Dict[str, Any] = {}
        for agent in AGENTS:
            rps = [runs[agent][i]["rps"] for i in range(rounds)]
            ratio = [runs[agent][i]["rps"] / runs["none"][i]["rps"] for i in range(rounds)]
            rss = [max(runs[agent][i]["worker_rss_mb"] or [float("nan")]) for i in range(rounds)]
            base_rss = [max(runs["none"][i]["worker_rss_mb"] or [float("nan")]) for i in range(rounds)]
            cpu = [runs[agent][i]["cpu_us"] for i in range(rounds)]
            row[agent] = {
                "rps": median(rps), "rps_spread": list(spread(rps)), "ratio": median(ratio),
                "ratio_spread": list(spread(ratio)), "round_ratios": ratio,
                "cpu_us": median(cpu),
                "cpu_over_us": median([c - runs["none"][i]["cpu_us"] for i, c in enumerate(cpu)]),
                "steal_pct": median([runs[agent][i]["steal_pct"] for i in range(rounds)]),
                "p50_ms": median([runs[agent][i]["p50_ms"] for i in range(rounds)]),
                "p99_ms": median([runs[agent][i]["p99_ms"] for i in range(rounds)]),
                "worker_rss_mb": median(rss), "worker_rss_over_mb": median([a - b for a, b in zip(rss, base_rss)]),
                "errors": sum(runs[agent][i]["socket_errors"] + runs[agent][i]["non_2xx"] for i in range(rounds)),
                "export_ok": all(runs[agent][i]["export"]["ok"] for i in range(rounds)),
                "export": [runs[agent][i]["export"]["detail"] for i in range(rounds)][-1],
                "spans_per_request": median([runs[agent][i]["export"]["spans"] / max(1, runs[agent][i]["requests"])
                                             for i in range(rounds)]),
            }
        out["by_workers"][str(workers)] = row
        turns = []
        for r in range(ctx.mode.turn_runs):
            log("[wrk] %d worker(s), taking turns by %.0f ms, run %d/%d" % (
                workers, TURN_S * 1000, r + 1, ctx.mode.turn_runs))
            turns.append(gunicorn_turns(ctx, workers))
            log("  " + ", ".join("%s %.0f req/s" % (a, turns[-1][a]["rps"]) for a in AGENTS))
        out.setdefault("turns", {})[str(workers)] = summarize_turns(turns)
    out["turn_s"] = TURN_S
    out["turn_replicas"] = dict(TURN_REPLICAS)
    out["gc"] = bench_gc(ctx)
    return out


GC_ROUNDS = 2


def bench_gc(ctx: Ctx) -> Dict[str, Any]:
    """The garbage collector's share of a gunicorn worker's work, per agent: 1 worker, wrk on /hello, with
    gc_hooks.py timing every collection (not in the req/s rounds: the timing costs a little per collection).
    Per request: microseconds in each generation's collections, and full collections per 10,000 requests. The
    agents' queued spans are objects the collector would walk (and promote, and walk again in full
    collections) until exported."""
    runs: Dict[str, List[Dict[str, Any]]] = {a: [] for a in AGENTS}
    for r in range(GC_ROUNDS):
        for agent in rotated(AGENTS, r):
            log("[wrk] garbage collection, round %d/%d %s" % (r + 1, GC_ROUNDS, agent))
            gc_out = Path(tempfile.mkdtemp(dir=ctx.work))
            gunicorn_once(ctx, agent, 1, "/hello", gc_out)
            files = sorted(gc_out.glob("gc-*.json"))
            if not files:
                raise RuntimeError("%s: the gunicorn worker wrote no garbage-collection figures" % agent)
            stats = json.loads(files[-1].read_text())
            requests = max(1, stats["requests"])
            runs[agent].append({"us": [s * 1e6 / requests for s in stats["seconds"]],
                                "full_per_10k": stats["collections"][2] * 1e4 / requests,
                                "requests": stats["requests"]})
            shutil.rmtree(gc_out, ignore_errors=True)
    out: Dict[str, Any] = {"rounds": GC_ROUNDS}
    for agent in AGENTS:
        total = [sum(x["us"]) for x in runs[agent]]
        out[agent] = {"us_by_generation": [median([x["us"][g] for x in runs[agent]]) for g in range(3)],
                      "us": median(total),
                      "over_us": median([t - sum(runs["none"][i]["us"]) for i, t in enumerate(total)]),
                      "full_per_10k": median([x["full_per_10k"] for x in runs[agent]]),
                      "requests": sum(x["requests"] for x in runs[agent])}
        log("  %s: %.1f us a request in collections (gen0 %.2f, gen1 %.2f, gen2 %.2f), %.2f full per 10k requests"
            % (agent, out[agent]["us"], *out[agent]["us_by_generation"], out[agent]["full_per_10k"]))
    return out


# ---------------------------------------------------------------------------------------------------- start-up

STARTUP_CODES = {"pass": "pass", "import flask, requests": "import flask, requests"}


def startup_cases(ctx: Ctx) -> List[Tuple[str, str, List[str], Dict[str, str]]]:
    """(key, label, argv without the code, env) for each way of starting python."""
    v = ctx.venvs
    return [
        ("none", "python (no agent)", [v["none"].python, "-c"], ctx.env("none")),
        ("autoinstr-inproc", "autoinstr in-process (AUTOINSTR_ENABLED=true python)", [v["autoinstr"].python, "-c"],
         ctx.env("autoinstr", {"AUTOINSTR_ENABLED": "true"})),
        ("autoinstr-run", "autoinstr-run python", ctx.command("autoinstr", ["python", "-c"]), ctx.env("autoinstr")),
        ("ddtrace", "ddtrace-run python", ctx.command("ddtrace", ["python", "-c"]), ctx.env("ddtrace")),
        ("otel", "opentelemetry-instrument python", ctx.command("otel", ["python", "-c"]), ctx.env("otel")),
    ]


def timed_run(argv: List[str], env: Dict[str, str], cwd: Path) -> float:
    """Wall ms from spawn to exit, as a hyperfine-like loop would see it."""
    t0 = time.perf_counter()
    p = subprocess.Popen(argv, env=env, cwd=cwd, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                         stderr=subprocess.PIPE)
    _, err = p.communicate(timeout=120)
    ms = (time.perf_counter() - t0) * 1e3
    if p.returncode != 0:
        raise RuntimeError("%s: exit %d: %s" % (" ".join(argv[:3]), p.returncode, tail(err.decode(errors="replace"))))
    return ms


def bench_startup(ctx: Ctx) -> Dict[str, Any]:
    cases = startup_cases(ctx)
    out: Dict[str, Any] = {}
    for code_label, code in STARTUP_CODES.items():
        samples: Dict[str, List[float]] = {c[0]: [] for c in cases}
        for argv_env in cases:  # one untimed run each: caches (pyc, page cache) warm for everyone
            timed_run(argv_env[2] + [code], argv_env[3], ctx.work)
        for r in range(ctx.mode.startup_runs):
            order = cases[r % len(cases):] + cases[:r % len(cases)]
            for key, _, argv, env in order:
                samples[key].append(timed_run(argv + [code], env, ctx.work))
        log("[startup] %s done" % code_label)
        # over plain: the median of each round's difference (a round runs every case back to back, so a busy
        # minute slows its plain run too), as the in-process figures are; not a difference of two medians
        out[code_label] = {key: {"label": label, "ms": median(samples[key]), "spread": list(spread(samples[key])),
                                 "over_ms": median([a - b for a, b in zip(samples[key], samples["none"])])}
                           for key, label, _, _ in cases}
    return out


# ---------------------------------------------------------------------------------------------- manual spans

def bench_spancost(ctx: Ctx) -> Dict[str, Any]:
    tracers = ["floor", "autoinstr", "ddtrace", "otel"]
    samples: Dict[str, List[float]] = {t: [] for t in tracers}
    exported: Dict[str, List[Dict[str, Any]]] = {t: [] for t in tracers}
    for r in range(ctx.mode.span_rounds):
        for tracer in rotated(tracers, r):
            agent = "none" if tracer == "floor" else tracer
            extra = {"BENCH_TRACER": tracer, "BENCH_SPANS": str(ctx.mode.span_count), "BENCH_REPEATS": "5"}
            ctx.sink.take()
            res = run_child(ctx.command(agent, ["python", str(HERE / "spancost.py")]), ctx.env(agent, extra), ctx.work)
            samples[tracer].append(res["ns_per_span"])
            # a span flood overflows every tracer's buffer: what matters here is that export really ran
            exported[tracer].append(export_check(agent, ctx.sink.take(), 1))
            log("  %s: %.0f ns per span; sink: %s" % (tracer, res["ns_per_span"], exported[tracer][-1]["detail"]))
        log("[spancost] round %d/%d done" % (r + 1, ctx.mode.span_rounds))
    return {t: {"ns": median(samples[t]), "spread": list(spread(samples[t])),
                "export_ok": all(e["ok"] for e in exported[t]), "exported": [e["spans"] for e in exported[t]]}
            for t in tracers}


# ------------------------------------------------------------------------------------------ our pipeline alone

def start_collector(ctx: Ctx, store: Path) -> Tuple[subprocess.Popen, str]:
    port = free_port()
    venv = ctx.venvs["autoinstr"]
    proc = subprocess.Popen([venv.exe("autoinstr"), "collector", "--port", str(port), "--store", str(store)],
                            env=venv.env(), cwd=ctx.work, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                            stderr=(ctx.work / "collector.log").open("wb"), start_new_session=True)
    url = "http://127.0.0.1:%d" % port
    wait_ready(url + "/healthz", proc)
    return proc, url


def store_count(ctx: Ctx, store: Path) -> int:
    code = "import sys; from autoinstr.store import Store; print(Store(sys.argv[1], create=False).count())"
    venv = ctx.venvs["autoinstr"]
    r = subprocess.run([venv.python, "-c", code, str(store)], env=venv.env(), capture_output=True, text=True,
                       timeout=120)
    if r.returncode != 0:
        raise RuntimeError("cannot count the store %s: %s" % (store, tail(r.stderr, 300)))
    return int(r.stdout.strip())


def bench_pipeline(ctx: Ctx) -> Dict[str, Any]:
    out: Dict[str, Any] = {}
    n = ctx.mode.pipeline_spans
    for target in ("local", "collector", "otlp"):
        rates, cpu_rates, checks = [], [], []
        for r in range(ctx.mode.pipeline_rounds):
            extra = {"AUTOINSTR_EXPORTER": target, "AUTOINSTR_MAX_QUEUE_SPANS": str(n * 2),
                     "AUTOINSTR_FLUSH_INTERVAL": "3600", "BENCH_PIPELINE_SPANS": str(n),
                     "AUTOINSTR_SHUTDOWN_TIMEOUT": "60"}
            store = ctx.work / ("pipeline-%s-%d.db" % (target, r))
            extra["AUTOINSTR_STORE"] = str(store)
            collector = None
            if target == "collector":
                coll_store = ctx.work / ("collector-%d.db" % r)
                collector, url = start_collector(ctx, coll_store)
                extra["AUTOINSTR_COLLECTOR_URL"] = url
            if target == "otlp":
                extra["AUTOINSTR_OTLP_ENDPOINT"] = ctx.sink.url
            ctx.sink.take()
            try:
                res = run_child(ctx.command("autoinstr", ["python", str(HERE / "pipeline_bench.py")]),
                                ctx.env("autoinstr", extra), ctx.work)
            finally:
                if collector is not None:
                    stop_group(collector)
            total = res["spans"] + res["warm_spans"] + res["other_spans"]
            if target == "local":
                received = store_count(ctx, store)
            elif target == "collector":
                received = store_count(ctx, coll_store)
            else:
                received = ctx.sink.take().spans
            dropped = sum(res["dropped"].values())
            checks.append({"received": received, "written": total, "dropped": dropped, "flushed": res["flushed"],
                           "ok": received == total and dropped == 0 and res["flushed"]})
            rates.append(res["spans_per_s"])
            cpu_rates.append(res["spans_per_cpu_s"] or float("nan"))
            for p in ctx.work.glob(store.name + "*"):
                p.unlink()
        log("[pipeline] %s: %.0f spans/s, %.0f per CPU-second" % (target, median(rates), median(cpu_rates)))
        out[target] = {"spans_per_s": median(rates), "spread": list(spread(rates)),
                       "spans_per_cpu_s": median(cpu_rates), "spans": n, "checks": checks,
                       "ok": all(c["ok"] for c in checks)}
    return out


# ----------------------------------------------------------------------------------------------------- flood

def bench_flood(ctx: Ctx) -> Dict[str, Any]:
    """One flood (count and pace) into OTel's BatchSpanProcessor and into our pipeline, both with default
    settings, exporting OTLP/HTTP to the sink. OTel goes first, as fast as its tracer makes spans in one thread;
    ours then runs at the pace OTel reached. Then ours into a sink too slow to keep up, and ours unpaced (far
    faster than the exporter): there every drop must be counted, produced = received + dropped."""
    slow = Sink("slow-sink", delay_s=0.25)
    out: Dict[str, Any] = {"spans": ctx.mode.flood_spans, "slow_sink_delay_s": slow.delay_s, "cases": {}}
    cases = [("otel", "otel", ctx.sink), ("autoinstr", "autoinstr", ctx.sink),
             ("autoinstr-collector", "autoinstr", ctx.sink), ("autoinstr-slow-exporter", "autoinstr", slow),
             ("autoinstr-unpaced", "autoinstr", ctx.sink)]
    try:
        for key, agent, sink in cases:
            pace = 0.0 if key in ("otel", "autoinstr-unpaced") else out["rate"]
            extra = {"BENCH_TRACER": agent, "BENCH_FLOOD_SPANS": str(ctx.mode.flood_spans),
                     "BENCH_FLOOD_RATE": str(pace)}
            if key == "autoinstr-collector":  # our own protocol (msgpack) instead of OTLP, same pace
                extra.update(AUTOINSTR_EXPORTER="collector", AUTOINSTR_COLLECTOR_URL=sink.url)
            elif agent == "autoinstr":
                extra.update(AUTOINSTR_EXPORTER="otlp", AUTOINSTR_OTLP_ENDPOINT=sink.url)
            else:
                extra["OTEL_EXPORTER_OTLP_ENDPOINT"] = sink.url
            sink.take()
            res = run_child(ctx.command(agent, ["python", str(HERE / "flood.py")]), ctx.env(agent, extra), ctx.work)
            if key == "otel":
                out["rate"] = res["produced"] / res["produce_s"]
            got = sink.take()
            row = {"produced": res["produced"], "received": got.spans, "produce_s": res["produce_s"],
                   "rate": res["produced"] / res["produce_s"], "lost": res["produced"] - got.spans,
                   "flushed": res["flushed"]}
            stats = res.get("stats")
            if stats:
                dropped = stats["spans_dropped"]
                row["dropped_reported"] = sum(dropped.values())
                row["dropped_by_reason"] = {k: v for k, v in dropped.items() if v}
                row["pending"] = stats["spans_queued"] + sum(e["pending"] for e in stats["exporters"].values())
                row["accounted"] = row["received"] + row["dropped_reported"] == row["produced"]
            else:
                row["dropped_reported"] = None  # OTel's processor only logs "Queue full" (and a metric, not exported)
            out["cases"][key] = row
            log("[flood] %s: produced %d at %.0f spans/s, received %d, drops reported %s" % (
                key, row["produced"], row["rate"], row["received"], row["dropped_reported"]))
    finally:
        slow.close()
    return out


# ----------------------------------------------------------------------------------------------------- budget

def share(ours: float, peer: float) -> str:
    """Our overhead as a fraction of the peer's: `1/12`, or `3.1x` where ours is the larger."""
    if ours <= 0:
        return "within noise of no agent"
    return "1/%.1f" % (peer / ours) if peer >= ours else "%.1fx the peer's" % (ours / peer)


def budget(results: Dict[str, Any]) -> List[Dict[str, Any]]:
    items: List[Dict[str, Any]] = []

    def add(name: str, met: Optional[bool], figure: str) -> None:
        items.append({"item": name, "met": met, "figure": figure})

    inproc = results.get("inproc")
    if inproc:
        for route in ROUTES:
            row = inproc["routes"][route]
            ours = row["autoinstr"]["overhead_us"]
            better = min(row[p]["overhead_us"] for p in PEERS)
            comparable = better > 0  # a peer's overhead within noise cannot be divided by ten
            recorded = inproc.get("spans_per_request")
            spans = "" if not recorded else "; spans recorded a request: %s" % ", ".join(
                "%s %s" % (LABELS[a], fmt(recorded[a][route])) for a in PEERS_AND_US if a in recorded)
            add("overhead %s <= 1/10 of the better peer" % ROUTE_MD[route], ours <= better / 10 if comparable else None,
                "%.1f us vs %.1f us (%s%s)" % (ours, better, share(ours, better) if comparable else "too noisy", spans))
        rss = inproc["rss"]["autoinstr"]["over_mb"]
        add("peak RSS (in-process run) <= +8 MB", rss <= 8, "%+.1f MB (peers: %s)" % (
            rss, ", ".join("%s %+.1f MB" % (LABELS[p], inproc["rss"][p]["over_mb"]) for p in PEERS)))
        if LOCAL in inproc["rss"]:  # the default exporter keeps its own memory (SQLite)
            rss = inproc["rss"][LOCAL]["over_mb"]
            add("peak RSS (in-process run) with the default local store <= +8 MB", rss <= 8, "%+.1f MB" % rss)
    wrk = results.get("wrk")
    if wrk:
        for workers, row in wrk["by_workers"].items():
            turns = wrk.get("turns", {}).get(workers)
            if turns:  # the agents taking turns (TURN_S): the figure this machine's drift moves least
                ratio = turns["autoinstr"]["ratio"]
                add("gunicorn %s worker(s) /hello req/s >= 95%% of no agent" % workers, ratio >= 0.95,
                    "%.1f%% taking turns (runs %s); %.1f%% in runs one after the other" % (
                        ratio * 100, rng([100 * x for x in turns["autoinstr"]["ratio_spread"]]),
                        row["autoinstr"]["ratio"] * 100))
                continue
            ratio = row["autoinstr"]["ratio"]
            add("gunicorn %s worker(s) /hello req/s >= 95%% of no agent" % workers, ratio >= 0.95,
                "%.1f%% (%.0f vs %.0f req/s)" % (ratio * 100, row["autoinstr"]["rps"], row["none"]["rps"]))
        row = wrk["by_workers"]["1"]
        add("gunicorn worker peak RSS <= +8 MB", row["autoinstr"]["worker_rss_over_mb"] <= 8,
            "%+.1f MB" % row["autoinstr"]["worker_rss_over_mb"])
    startup = results.get("startup")
    if startup:
        for code, row in startup.items():
            add("start-up in-process (%s) <= +10 ms" % code, row["autoinstr-inproc"]["over_ms"] <= 10,
                "%+.1f ms" % row["autoinstr-inproc"]["over_ms"])
            add("start-up via autoinstr-run (%s) <= +30 ms" % code, row["autoinstr-run"]["over_ms"] <= 30,
                "%+.1f ms (ddtrace-run %+.0f ms, opentelemetry-instrument %+.0f ms)" % (
                    row["autoinstr-run"]["over_ms"], row["ddtrace"]["over_ms"], row["otel"]["over_ms"]))
    pipeline = results.get("pipeline")
    if pipeline:
        local = pipeline["local"]
        add(">= 100,000 spans/s into the local store (one core)", local["spans_per_s"] >= 100_000 and local["ok"],
            "%.0f spans/s wall, %.0f per CPU-second" % (local["spans_per_s"], local["spans_per_cpu_s"]))
    flood = results.get("flood")
    if flood:
        ours = flood["cases"]["autoinstr"]
        add("flood, same pace as OpenTelemetry, OTLP to a sink that keeps up: no drop",
            ours["lost"] == 0 and ours["dropped_reported"] == 0,
            "produced %d, received %d, dropped %d (OpenTelemetry lost %d = %.0f%%)" % (
                ours["produced"], ours["received"], ours["dropped_reported"], flood["cases"]["otel"]["lost"],
                100.0 * flood["cases"]["otel"]["lost"] / max(1, flood["cases"]["otel"]["produced"])))
        if "autoinstr-collector" in flood["cases"]:
            c = flood["cases"]["autoinstr-collector"]
            add("flood, same pace, collector exporter: no drop", c["lost"] == 0 and c["dropped_reported"] == 0,
                "produced %d, received %d, dropped %d" % (c["produced"], c["received"], c["dropped_reported"]))
        slow = [flood["cases"][k] for k in ("autoinstr-slow-exporter", "autoinstr-unpaced")]
        add("flood, exporter not keeping up: every drop counted", all(c["accounted"] for c in slow),
            "; ".join("produced %d = received %d + dropped %d" % (c["produced"], c["received"], c["dropped_reported"])
                      for c in slow))
    validity = []
    if inproc:
        validity += [check["ok"] for check in inproc["export"].values()]
    if wrk:
        validity += [row[a]["export_ok"] for row in wrk["by_workers"].values() for a in AGENTS]
        validity += [row[a]["export_ok"] for row in wrk.get("turns", {}).values() for a in AGENTS]
    if validity:
        add("every agent exported (sink counts; none from the no-agent runs)", all(validity),
            "all runs checked" if all(validity) else "see the export columns")
    return items


# ----------------------------------------------------------------------------------------------------- report

def machine() -> Dict[str, Any]:
    cpu = ""
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next((ln.split(":", 1)[1].strip() for ln in f if ln.startswith("model name")), "")
    except OSError:
        pass
    mem = ""
    try:
        with open("/proc/meminfo") as f:
            mem = "%.1f GB" % (int(f.readline().split()[1]) / 1024 / 1024)
    except (OSError, ValueError, IndexError):
        pass
    return {"platform": platform.platform(), "cpu": cpu, "cores": os.cpu_count(), "memory": mem,
            "load_avg_at_start": "%.2f %.2f %.2f" % os.getloadavg(), "python": platform.python_version(),
            "python_path": BASE_PYTHON, "wrk": wrk_version()}


def wrk_version() -> str:
    try:
        r = subprocess.run([WRK, "-v"], capture_output=True, text=True, timeout=10)
        return (r.stdout + r.stderr).strip().splitlines()[0].split(" Copyright")[0]
    except (OSError, IndexError, subprocess.SubprocessError):
        return "not found"


def fmt(x: Optional[float], digits: int = 1) -> str:
    if x is None or x != x:
        return "n/a"
    return "{:,.{}f}".format(x, digits)


def rng(pair: Sequence[float], digits: int = 1) -> str:
    return "%s to %s" % (fmt(pair[0], digits), fmt(pair[1], digits))


def headline(results: Dict[str, Any]) -> List[str]:
    """The few figures the README quotes: a markdown table, our figure beside each peer's."""
    rows = ["| | autoinstr | ddtrace | OpenTelemetry |", "|---|---:|---:|---:|"]
    inproc, wrk, startup = results.get("inproc"), results.get("wrk"), results.get("startup")
    if inproc:
        for route in ROUTES:
            row = inproc["routes"][route]
            rows.append("| added per request, %s (in-process) | %s | %s | %s |" % (ROUTE_MD[route], *(
                "%+.1f us (x%s)" % (row[a]["overhead_us"], fmt(row[a]["ratio"], 2)) for a in ("autoinstr", *PEERS))))
        rows.append("| peak RSS over no agent (in-process run) | %s |" % " | ".join(
            "%+.1f MB" % inproc["rss"][a]["over_mb"] for a in ("autoinstr", *PEERS)))
    if wrk:
        for workers, row in (wrk.get("turns") or wrk["by_workers"]).items():
            rows.append("| gunicorn %s worker(s), /hello req/s vs no agent%s | %s |" % (
                workers, ", taking turns" if "turns" in wrk else "", " | ".join(
                    "%s%%" % fmt(row[a]["ratio"] * 100) for a in ("autoinstr", *PEERS))))
    if startup:
        for code, row in startup.items():
            rows.append("| start-up `%s` through the launcher | %s |" % (code, " | ".join(
                "%+.0f ms" % row[k]["over_ms"] for k in ("autoinstr-run", "ddtrace", "otel"))))
    spancost = results.get("spancost")
    if spancost:
        rows.append("| one manual span (floor %s ns) | %s |" % (fmt(spancost["floor"]["ns"], 0), " | ".join(
            "%s ns" % fmt(spancost[t]["ns"], 0) for t in ("autoinstr", *PEERS))))
    flood = results.get("flood")
    if flood:
        rows.append("| flood of %s spans at %s spans/s: lost | %s | | %s |" % (
            fmt(flood["spans"], 0), fmt(flood["rate"], 0), fmt(flood["cases"]["autoinstr"]["lost"], 0),
            fmt(flood["cases"]["otel"]["lost"], 0)))
    return rows


def write_report(results: Dict[str, Any], chart_ok: bool) -> str:
    meta = results["meta"]
    lines = ["# Performance: autoinstr beside ddtrace and OpenTelemetry", "",
             "Written by `python3 benchmarks/peers/run.py%s` on %s. Re-run it to refresh this page; `--quick` "
             "gives rough figures in a few minutes." % (" --quick" if meta["quick"] else "", meta["date"]), ""]
    if meta["quick"]:
        lines += ["**Quick mode**: few samples, figures are rough.", ""]
    lines += ["## Headline", ""] + headline(results) + [""]
    lines += ["How to read it: every figure comes from one run in which the agents took turns (A B C D, then the "
              "next round rotated), so a busy machine slows them alike; ratios are to the no-agent run of the same "
              "round. In-process and under gunicorn, the agents' processes are up at once and take turns by a few "
              "milliseconds, the others stopped meanwhile. In-process figures include each tracer's own export "
              "work: its background thread shares the GIL with the requests. A tracer whose buffer overflows "
              "exports less and so costs less: the sink counts are shown beside each figure (OpenTelemetry's batch "
              "processor holds 2048 spans and drops the rest silently; ours holds 10,000 and counts what it "
              "drops).", ""]
    environment = results.get("environment")
    if environment:
        lines += ["Every measured process sees the same number of environment variables (%d here; unpadded: %s): "
                  "`requests` reads the whole environment on every call (its proxy settings), so without padding the "
                  "settings an agent is configured with, and the PYTHONPATH its launcher adds, would count as its "
                  "per-request cost on `/outgoing`." % (environment["size"], ", ".join(
                      "%s %d" % (LABELS.get(a, a), n) for a, n in environment["unpadded"].items())), ""]
    lines += ["## Budget", "", "| item | met | figure |", "|---|---|---|"]
    for item in results["budget"]:
        met = {True: "yes", False: "**no**", None: "n/a"}[item["met"]]
        lines.append("| %s | %s | %s |" % (item["item"], met, item["figure"]))
    lines.append("")
    inproc = results.get("inproc")
    if inproc:
        lines += ["## In-process cost per request", "",
                  "The reference app's WSGI callable driven directly, in one process per agent under its launcher "
                  "(%s), all up at once and taking turns: in its turn a process runs requests to one route for "
                  "%s ms, while every other is stopped (SIGSTOP, its agent's threads too); %s turns each per "
                  "route, and after a route's last turn each agent's own flush (autoinstr.flush, ddtrace's "
                  "tracer.flush, OpenTelemetry's force_flush) is timed as part of it, so each route carries its "
                  "own export work. Each process ends its warm-up with a full garbage collection: the first one "
                  "after start-up, of everything imported, otherwise fell into whichever route was timed first. "
                  "%d rounds, fresh processes each; medians over rounds (spread = min to max). "
                  "Overhead = time per request minus no agent's in the same round. Taking turns, every agent sees "
                  "the same moments of this machine, whose speed drifts by a quarter within tens of milliseconds: "
                  "one process per agent run one after the other read `/users/<int:id>` at +17.9 and +34.9 us in "
                  "two runs of the same code. The app and the stub its `/outgoing` calls run on one CPU, the same "
                  "for every agent (the sink receiving the exports has the other): left to the scheduler, their "
                  "placement changed `/outgoing`'s time by about 100 us from one process to the next."
                  % (inproc_processes_text(inproc), fmt(1000 * inproc["turn_s"]) if "turn_s" in inproc else "n/a",
                     inproc.get("cycles", "n/a"), inproc["rounds"]), ""]
        if chart_ok:
            lines += ["![overhead per route per agent](performance-overhead.png)", ""]
        lines += ["| route | no agent (us) | autoinstr overhead (us) | ddtrace overhead (us) | "
                  "OpenTelemetry overhead (us) | autoinstr / better peer | autoinstr, default local store (us) | "
                  "autoinstr, request path only (us) |", "|---|---|---|---|---|---|---|---|"]
        for route in ROUTES:
            row = inproc["routes"][route]
            better = min(row[p]["overhead_us"] for p in PEERS)
            cells = ["%s (%s; x%s)" % (fmt(row[a]["overhead_us"]), rng(row[a]["overhead_spread"]),
                                        fmt(row[a]["ratio"], 2)) for a in ("autoinstr", "ddtrace", "otel")]
            extras = ["%s (%s)" % (fmt(row[v]["overhead_us"]), rng(row[v]["overhead_spread"])) if v in row else "n/a"
                      for v in (LOCAL, NO_EXPORT)]
            lines.append("| %s | %s | %s | %s | %s |" % (
                ROUTE_MD[route], fmt(row["none"]["us"]), " | ".join(cells),
                share(row["autoinstr"]["overhead_us"], better), " | ".join(extras)))
        recorded = inproc.get("spans_per_request")
        if recorded:
            agents = [a for a in PEERS_AND_US if a in recorded]
            lines += ["", "What each agent records on each route, spans a request (runs of the route alone, %d "
                      "requests apart, counted at the sink). The overheads above are for that work: a tracer that "
                      "does not see a library's calls has less to do (OpenTelemetry's sqlite3 instrumentation "
                      "traces cursors, not the connection's `execute` shortcut: the `/db` page queries through a "
                      "cursor, so that every agent traces its queries; none but autoinstr traces the connect)." %
                      COVERAGE_REQUESTS, "",
                      "| route | %s |" % " | ".join(LABELS[a] for a in agents), "|---|%s" % ("---|" * len(agents))]
            for route in ROUTES:
                lines.append("| %s | %s |" % (ROUTE_MD[route], " | ".join(fmt(recorded[a][route]) for a in agents)))
        lines += ["", "x = time per request relative to no agent. autoinstr exports to the sink with its "
                  "collector exporter (msgpack over HTTP, like the peers' agent protocols); the next column is the "
                  "default exporter (the local SQLite store), the last `AUTOINSTR_EXPORTER=none`: spans are made "
                  "and queued, nothing is converted or sent, so the rest of our overhead is the export work. "
                  "Peak RSS of these processes (ru_maxrss) and the spans exported:", "",
                  "| agent | peak RSS (MB) | over no agent (MB) | exported | check |",
                  "|---|---|---|---|---|"]
        for a in inproc["rss"]:
            rss, ex = inproc["rss"][a], inproc["export"][a]
            lines.append("| %s | %s | %+.1f | %s | %s |" % (LABELS[a], fmt(rss["mb"]), rss["over_mb"],
                                                          ex["detail"], "ok" if ex["ok"] else "**FAILED**"))
        lines.append("")
    wrk = results.get("wrk")
    if wrk:
        lines += ["## gunicorn under load", "",
                  "`gunicorn -w N refapp:app` (sync workers) under each launcher; `wrk -t1 -c%d -d%ds --latency` "
                  "on /hello after a 1 s warm-up; medians over rounds (vs no agent: the median of each round's "
                  "ratio to that round's no-agent run). Worker CPU: the workers' user + system time per request "
                  "during the measured run (over no agent: the median of the rounds' differences), a steadier view "
                  "of the same cost. Steal: the share of the machine's CPU time its hypervisor gave to others "
                  "meanwhile (it slows whatever runs then). Worker RSS = VmHWM of the largest worker after the load."
                  % (wrk["connections"], wrk["seconds"]), "",
                  "| workers | agent | req/s (spread) | vs no agent | p50 (ms) | p99 (ms) | worker CPU per request "
                  "(us) | over no agent | steal | worker RSS (MB) | spans per request (sink) | errors |",
                  "|---|---|---|---|---|---|---|---|---|---|---|---|"]
        for workers, row in wrk["by_workers"].items():
            for a in AGENTS:
                c = row[a]
                lines.append("| %s | %s | %s (%s) | %s%% | %s | %s | %s | %s | %s%% | %s | %s%s | %d |" % (
                    workers, LABELS[a], fmt(c["rps"], 0), rng(c["rps_spread"], 0), fmt(c["ratio"] * 100),
                    fmt(c["p50_ms"], 2), fmt(c["p99_ms"], 2), fmt(c.get("cpu_us"), 0),
                    "" if a == "none" else "%+.0f" % c.get("cpu_over_us", float("nan")), fmt(c.get("steal_pct")),
                    fmt(c["worker_rss_mb"]), fmt(c["spans_per_request"], 2),
                    "" if c["export_ok"] else " **FAILED**", c["errors"]))
        lines.append("")
        lines += ["autoinstr's ratio to no agent, round by round: %s." % "; ".join(
            "%s worker(s) %s" % (workers, ", ".join("%.1f%%" % (100 * r)
                                                    for r in row["autoinstr"].get("round_ratios", [])))
            for workers, row in wrk["by_workers"].items()), ""]
        turns = wrk.get("turns")
        if turns:
            lines += ["**Taking turns.** The same servers, every agent's up at once, each under its own "
                      "`wrk -t1 -c%d` (every wrk on one CPU); they take turns by %.0f ms, the other agents' workers "
                      "stopped meanwhile (SIGSTOP), for %d turns each a run. Requests/s = requests served / the time "
                      "the server ran. This machine's speed drifts by a quarter within tens of milliseconds and its "
                      "runs of seconds differ by 15%%: sharing every moment, the agents share its drift. Identical "
                      "servers still differ from process to process%s. Medians (spread) over %d runs (fresh servers "
                      "each) of each run's ratio to no agent's; latencies are not measured this way (a stopped "
                      "worker's requests wait)."
                      % (wrk["connections"], wrk["turn_s"] * 1000, results["meta"]["mode"]["turn_cycles"],
                         replicas_text(wrk.get("turn_replicas") or {}, turns),
                         results["meta"]["mode"]["turn_runs"]), "",
                      "| workers | agent | req/s | vs no agent (spread) | each run | worker CPU per request (us) "
                      "| exported (sink) |", "|---|---|---|---|---|---|---|"]
            for workers, row in turns.items():
                for a in AGENTS:
                    c = row[a]
                    lines.append("| %s | %s | %s | %s%% (%s) | %s | %s | %s |" % (
                        workers, LABELS[a], fmt(c["rps"], 0), fmt(c["ratio"] * 100),
                        rng([100 * x for x in c["ratio_spread"]]),
                        ", ".join("%.1f%%" % (100 * x) for x in c["run_ratios"]), fmt(c["cpu_us"], 0),
                        "ok" if c["export_ok"] else "**FAILED**"))
            lines.append("")
        gc_pass = wrk.get("gc")
        if gc_pass:
            lines += ["Garbage collection in the worker (1 worker, %d more runs per agent with each collection timed "
                      "through gc.callbacks; per request served, medians over the runs). Spans an agent holds until "
                      "it exports them are objects the collector walks, and promotes, and walks again in full "
                      "collections of the whole heap." % gc_pass["rounds"], "",
                      "| agent | gen0 (us) | gen1 (us) | gen2, full (us) | total (us) | over no agent | "
                      "full collections per 10,000 requests |", "|---|---|---|---|---|---|---|"]
            for a in AGENTS:
                c = gc_pass[a]
                lines.append("| %s | %s | %s | %s | %s | %s | %s |" % (
                    LABELS[a], *(fmt(x, 2) for x in c["us_by_generation"]), fmt(c["us"], 2),
                    "" if a == "none" else "%+.2f" % c["over_us"], fmt(c["full_per_10k"], 2)))
            lines.append("")
    startup = results.get("startup")
    if startup:
        lines += ["## Start-up", "", "Wall time from spawn to exit, %d rounds of every case, in a rotating order, "
                  "medians (spread); over plain: the median of each round's difference from the round's plain run."
                  % meta["mode"]["startup_runs"], "", "| command | `python -c pass` (ms) | over plain | "
                  "`import flask, requests` (ms) | over plain |", "|---|---|---|---|---|"]
        keys = list(next(iter(startup.values())).keys())
        for key in keys:
            cells = []
            for code in STARTUP_CODES:
                c = startup[code][key]
                cells += ["%s (%s)" % (fmt(c["ms"]), rng(c["spread"])), "%+.1f" % c["over_ms"]]
            lines.append("| %s | %s |" % (startup["pass"][key]["label"], " | ".join(cells)))
        lines.append("")
    spancost = results.get("spancost")
    if spancost:
        lines += ["## One manual span", "", "`with <api>(\"work\"): pass` in a loop under each launcher (exporting "
                  "to the sink), medians over rounds; the floor is a trivial context manager in plain Python.", "",
                  "| API | ns per span (spread) | x floor |", "|---|---|---|"]
        floor = spancost["floor"]["ns"]
        apis = {"floor": "class with `__enter__`/`__exit__`", "autoinstr": "`autoinstr.span`",
                "ddtrace": "`ddtrace.trace.tracer.trace`", "otel": "`tracer.start_as_current_span`"}
        for t, c in spancost.items():
            lines.append("| %s: %s | %s (%s) | %s |" % (LABELS[t], apis[t], fmt(c["ns"], 0), rng(c["spread"], 0),
                                                        fmt(c["ns"] / floor, 1)))
        lines.append("")
    pipeline = results.get("pipeline")
    if pipeline:
        lines += ["## Our pipeline alone", "",
                  "Real spans of the reference app (/hello, /users, /db in turn; %s spans) held back, then handed to "
                  "the pipeline at once; timed until `flush()` returns with all written. One busy thread (the "
                  "flush thread); the per-CPU-second figure is the process's CPU time." % fmt(
                      pipeline["local"]["spans"], 0), "",
                  "| exporter | spans/s (spread) | spans per CPU-second | all received, none dropped |",
                  "|---|---|---|---|"]
        names = {"local": "local SQLite store", "collector": "`autoinstr collector` (real process, msgpack/HTTP)",
                 "otlp": "OTLP/HTTP protobuf to the sink"}
        for target, c in pipeline.items():
            lines.append("| %s | %s (%s) | %s | %s |" % (names[target], fmt(c["spans_per_s"], 0),
                                                         rng(c["spread"], 0), fmt(c["spans_per_cpu_s"], 0),
                                                         "yes" if c["ok"] else "**no**: " + "; ".join(
                                                             "received %d of %d, %d dropped" % (
                                                                 k["received"], k["written"], k["dropped"])
                                                             for k in c["checks"])))
        lines.append("")
    flood = results.get("flood")
    if flood:
        lines += ["## The flood", "",
                  "%s spans with two attributes each, produced in bursts of 100: by OpenTelemetry as fast as its "
                  "tracer goes in one thread (%s spans/s here), by autoinstr paced at that same rate; both export "
                  "OTLP/HTTP to the sink with their default batching, then flush. The slow exporter case uses a "
                  "sink answering each batch after %.2f s; the unpaced case produces as fast as autoinstr can." % (
                      fmt(flood["spans"], 0), fmt(flood["rate"], 0), flood["slow_sink_delay_s"]), "",
                  "| case | produced | received | lost | drops reported | spans/s produced |",
                  "|---|---|---|---|---|---|"]
        names = {"otel": "OpenTelemetry BatchSpanProcessor (defaults)", "autoinstr": "autoinstr (defaults), same pace",
                 "autoinstr-collector": "autoinstr, same pace, collector exporter (msgpack) instead of OTLP",
                 "autoinstr-slow-exporter": "autoinstr, slow exporter",
                 "autoinstr-unpaced": "autoinstr, unpaced (as fast as it makes spans)"}
        for key, c in flood["cases"].items():
            reported = "not counted (one log line)" if c["dropped_reported"] is None else "%d %s" % (
                c["dropped_reported"], c.get("dropped_by_reason") or "")
            lines.append("| %s | %d | %d | %d (%s%%) | %s | %s |" % (
                names[key], c["produced"], c["received"], c["lost"], fmt(100.0 * c["lost"] / max(1, c["produced"])),
                reported, fmt(c["rate"], 0)))
        lines.append("")
    lines += ["## Settings", "", "Every agent exports to a loopback HTTP sink in the suite's process that counts the "
              "spans it receives (`<sink>` below); peers' features beyond tracing are off.", ""]
    for agent in AGENTS[1:]:
        lines.append("- %s (`%s`): %s" % (LABELS[agent], " ".join(LAUNCHERS[agent]) or "-", ", ".join(
            "`%s=%s`" % (k, v) for k, v in results["settings"][agent].items()) or "defaults"))
    lines += ["- OpenTelemetry instrumentations installed (and so loaded): %s" % ", ".join(
        x.replace("opentelemetry-instrumentation-", "") for x in OTEL_INSTRUMENTATIONS), ""]
    lines += ["## Versions and machine", "", "| venv | packages |", "|---|---|"]
    for name, versions in meta["versions"].items():
        lines.append("| %s | %s |" % (name, ", ".join("%s %s" % kv for kv in versions.items())))
    m = meta["machine"]
    lines += ["", "Machine: %s; CPU %s, %s cores, %s memory; load average at start %s; Python %s (%s); %s." % (
        m["platform"], m["cpu"] or "?", m["cores"], m["memory"] or "?", m["load_avg_at_start"], m["python"],
        m["python_path"], m["wrk"]), "", "Total run time: %.1f min." % (meta["seconds"] / 60), ""]
    return "\n".join(lines)


def make_chart(ctx: Ctx, results: Dict[str, Any]) -> bool:
    data = ctx.work / "chart.json"
    data.write_text(json.dumps({"routes": [ROUTE_LABELS[r] for r in ROUTES],
                                "agents": [LABELS[a] for a in ("autoinstr", "ddtrace", "otel")],
                                "overhead_us": [[results["inproc"]["routes"][r][a]["overhead_us"] for r in ROUTES]
                                                for a in ("autoinstr", "ddtrace", "otel")],
                                "title": "Overhead per request over no agent (in-process, median of %d rounds)"
                                         % results["inproc"]["rounds"]}))
    venv = ctx.venvs["chart"]
    r = subprocess.run([venv.python, str(HERE / "chart.py"), str(data), str(CHART)], env=venv.env(),
                       capture_output=True, text=True, timeout=300)
    if r.returncode != 0:
        log("[chart] failed: %s" % tail(r.stderr))
        return False
    return True


# ------------------------------------------------------------------------------------------------------- main

STEPS: Dict[str, Callable[[Ctx], Dict[str, Any]]] = {
    "inproc": bench_inproc, "wrk": bench_wrk, "startup": bench_startup, "spancost": bench_spancost,
    "pipeline": bench_pipeline, "flood": bench_flood,
}


def main(argv: Optional[List[str]] = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="few samples per measurement, to validate the suite")
    ap.add_argument("--only", default=",".join(STEPS), help="comma list of steps (default: all): " + ",".join(STEPS))
    ap.add_argument("--no-write", action="store_true", help="print the report, write nothing under docs/")
    ap.add_argument("--from-json", metavar="PATH", help="measure nothing: rewrite docs/PERFORMANCE.md from a "
                    "saved run (benchmarks/peers/last-run.json), e.g. after a change to the report")
    args = ap.parse_args(argv)
    if args.from_json:
        with open(args.from_json) as f:
            saved = json.load(f)
        saved["budget"] = budget(saved)
        DOC.write_text(write_report(saved, CHART.exists()))
        log("wrote %s from %s" % (DOC, args.from_json))
        return 0
    steps = [s for s in args.only.split(",") if s]
    unknown = [s for s in steps if s not in STEPS]
    if unknown:
        ap.error("unknown step(s): %s" % ", ".join(unknown))
    if "wrk" in steps and not os.access(WRK, os.X_OK):
        ap.error("wrk not found (Debian: apt-get install wrk); or leave it out with --only")
    mode = QUICK if args.quick else FULL
    started = time.monotonic()
    venvs = setup_venvs()
    sink, stub = Sink(), StubProcess(cpu=STUB_CPU)
    settings = peer_settings(sink.url)
    print("Settings (the sink is %s):" % sink.url)
    for agent in AGENTS[1:]:
        print("  %-10s %s %s" % (agent, " ".join(LAUNCHERS[agent]),
                                 " ".join("%s=%s" % kv for kv in settings[agent].items())))
    sys.stdout.flush()
    shown = {agent: {k: ("<sink>" if v == sink.url else v) for k, v in s.items()} for agent, s in settings.items()}
    results: Dict[str, Any] = {"settings": shown}
    with tempfile.TemporaryDirectory(prefix="peers-bench-") as tmp:
        ctx = Ctx(venvs, sink, stub, settings, Path(tmp), mode)
        unpadded = pad_environments(ctx)
        results["environment"] = {"size": ctx.environment_size, "unpadded": unpadded,
                                  "launcher_adds": dict(ctx.launcher_adds)}
        print("Environment: every measured process sees %d variables (unpadded: %s)" % (
            ctx.environment_size, ", ".join("%s %d" % kv for kv in unpadded.items())))
        for step in steps:
            t0 = time.monotonic()
            try:
                results[step] = STEPS[step](ctx)
            except Exception as exc:  # one broken step must not cost the others' figures
                log("[%s] FAILED: %s" % (step, exc))
                results.setdefault("errors", {})[step] = "%s: %s" % (type(exc).__name__, tail(str(exc), 2000))
            log("[%s] %.0f s" % (step, time.monotonic() - t0))
        results["budget"] = budget(results)
        results["meta"] = {
            "date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
            "quick": args.quick, "mode": mode.__dict__, "machine": machine(),
            "versions": {name: v.versions for name, v in venvs.items()},
            "seconds": time.monotonic() - started,
        }
        if not args.no_write:
            DOC.parent.mkdir(parents=True, exist_ok=True)
        chart_ok = bool(results.get("inproc")) and not args.no_write and make_chart(ctx, results)
    sink.close()
    stub.close()
    report = write_report(results, chart_ok)
    if results.get("errors"):
        report += "\n## Steps that failed\n\n" + "\n".join("- %s: %s" % kv for kv in results["errors"].items()) + "\n"
    if not args.no_write:
        DOC.parent.mkdir(parents=True, exist_ok=True)
        DOC.write_text(report)
        LAST_RUN.write_text(json.dumps(results, indent=1, default=repr))
        log("wrote %s%s and %s" % (DOC, " (+ chart)" if chart_ok else "", LAST_RUN))
    print()
    print("\n".join(headline(results)))
    print()
    for item in results["budget"]:
        print("%-4s %s: %s" % ({True: "MET", False: "NOT", None: "n/a"}[item["met"]], item["item"], item["figure"]))
    return 1 if results.get("errors") else 0


if __name__ == "__main__":
    sys.exit(main())
