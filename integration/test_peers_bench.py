"""The peer benchmark suite's own pieces (benchmarks/peers/), with this venv's agent and tiny counts.

Not a speed check: it checks that what the suite measures is real. The sink must count exactly what the
agent exported (the same workload counted through two protocols, and against the local store), the flood's
books must balance (produced = received + dropped) when the queue overflows, and wrk's output must parse.
The peers' venvs are not built here (minutes of installs): `python3 benchmarks/peers/run.py --quick` does that.
"""

from __future__ import annotations

import json
import os
import shutil
import sqlite3
import subprocess
import sys

import pytest

PEERS = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "benchmarks", "peers")
sys.path.insert(0, PEERS)

from sink import Sink, Stub  # noqa: E402


def result_of(proc: subprocess.CompletedProcess) -> dict:
    assert proc.returncode == 0, proc.stderr[-3000:]
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT ")]
    assert lines, proc.stdout[-2000:] + proc.stderr[-2000:]
    return json.loads(lines[-1][len("RESULT "):])


@pytest.fixture
def servers():
    sink, stub = Sink(), Stub()
    yield sink, stub
    sink.close()
    stub.close()


def inproc(sandbox, stub: Stub, **agent_env: object) -> dict:
    env = sandbox.env(REFAPP_DB=os.path.join(sandbox.dir, "refapp.db"), REFAPP_STUB_URL=stub.url + "/stub",
                      BENCH_REQUESTS=5, BENCH_REPEATS=2, BENCH_WARMUP=3, AUTOINSTR_SERVICE_NAME="refapp",
                      BENCH_AGENT="autoinstr",
                      **agent_env)
    return result_of(sandbox.run(["python", os.path.join(PEERS, "inproc.py")], env=env))


def test_sink_counts_what_the_agent_exported_through_either_protocol(sandbox, servers):
    sink, stub = servers
    inproc(sandbox, stub, AUTOINSTR_EXPORTER="none")  # creates the app's database: each run below does the same
    by_collector = inproc(sandbox, stub, AUTOINSTR_EXPORTER="collector", AUTOINSTR_COLLECTOR_URL=sink.url)
    collector = sink.take()
    by_otlp = inproc(sandbox, stub, AUTOINSTR_EXPORTER="otlp", AUTOINSTR_OTLP_ENDPOINT=sink.url)
    otlp = sink.take()
    by_store = inproc(sandbox, stub, AUTOINSTR_EXPORTER="local")
    with sqlite3.connect(sandbox.store) as db:
        stored = db.execute("SELECT count(*) FROM spans").fetchone()[0]

    for res in (by_collector, by_otlp, by_store):
        assert res["non_200"] == 0
        assert set(res["ns_per_request"]) == {"/hello", "/users/42", "/db", "/outgoing"}
        assert all(ns > 0 for ns in res["ns_per_request"].values())
    requests = sum(by_collector["requests"].values())
    assert requests == 4 * (1 + 3 + 5 * 2)
    assert stub.hits["GET"] >= 4 * (1 + 3 + 5 * 2)  # /outgoing really went out, in every run
    # one workload, counted three ways: msgpack batches, OTLP protobuf, rows in the store
    assert not collector.errors and not otlp.errors
    assert set(collector.requests) == {"POST /v1/spans"} and set(otlp.requests) == {"POST /v1/traces"}
    assert collector.spans == otlp.spans == stored
    assert collector.spans >= 2 * requests  # a server span and a view span at least per request


def test_flood_books_balance_when_the_queue_overflows(sandbox, servers):
    sink, _ = servers
    env = sandbox.env(BENCH_TRACER="autoinstr", BENCH_FLOOD_SPANS=3000, BENCH_FLOOD_RATE=0,
                      AUTOINSTR_EXPORTER="otlp", AUTOINSTR_OTLP_ENDPOINT=sink.url, AUTOINSTR_MAX_QUEUE_SPANS=200,
                      AUTOINSTR_MAX_BATCH_SPANS=100)
    res = result_of(sandbox.run(["python", os.path.join(PEERS, "flood.py")], env=env))
    got = sink.take()
    dropped = sum(res["stats"]["spans_dropped"].values())
    assert res["produced"] == 3000 and res["flushed"]
    assert dropped > 0  # a queue of 200 cannot hold an unpaced flood of 3000
    assert got.spans + dropped == res["produced"]
    assert got.spans == res["stats"]["spans_exported"]


def test_pipeline_bench_writes_every_span_to_the_store(sandbox):
    store = os.path.join(sandbox.dir, "pipeline.db")
    env = sandbox.env(AUTOINSTR_EXPORTER="local", AUTOINSTR_STORE=store, AUTOINSTR_MAX_QUEUE_SPANS=10000,
                      AUTOINSTR_FLUSH_INTERVAL=3600, BENCH_PIPELINE_SPANS=1500,
                      REFAPP_DB=os.path.join(sandbox.dir, "refapp.db"))
    res = result_of(sandbox.run(["python", os.path.join(PEERS, "pipeline_bench.py")], env=env))
    with sqlite3.connect(store) as db:
        stored = db.execute("SELECT count(*) FROM spans").fetchone()[0]
    assert res["flushed"] and res["spans"] >= 1400 and res["spans_per_s"] > 0
    assert res["exported"] == res["spans"] and not any(res["dropped"].values())
    assert stored == res["spans"] + res["warm_spans"] + res["other_spans"]


def need_wrk() -> None:
    if shutil.which("wrk") is None:
        if os.environ.get("AUTOINSTR_REQUIRE_WRK") == "1":
            pytest.fail("AUTOINSTR_REQUIRE_WRK=1 but wrk is not installed", pytrace=False)
        pytest.skip("wrk is not installed")


def test_wrk_output_parses(servers):
    need_wrk()
    from run import run_wrk

    _, stub = servers
    res = run_wrk(stub.url + "/stub", 1, connections=2)
    assert res["requests"] > 0 and res["rps"] > 0
    assert res["p50_ms"] is not None and res["p99_ms"] is not None and res["p50_ms"] <= res["p99_ms"]
    assert stub.hits["GET"] >= res["requests"]


def test_the_stub_runs_in_a_process_of_its_own():
    """The suite's stub answers from its own process (no GIL shared with the sink) and ends when closed."""
    import urllib.request

    from sink import StubProcess

    stub = StubProcess()
    try:
        with urllib.request.urlopen(stub.url + "/stub", timeout=10) as resp:
            assert resp.status == 200 and json.loads(resp.read()) == {"stub": True}
        assert stub._proc.pid != os.getpid() and stub._proc.poll() is None
    finally:
        stub.close()
    assert stub._proc.returncode == 0


def test_the_stub_answers_each_request_of_a_kept_alive_connection():
    """One answer per request head, however the head arrives: split over several sends, or two heads in one
    send; a closed connection or an endless head does not stop it answering others."""
    import socket
    import time

    stub = Stub()
    try:
        def answers(conn: socket.socket, count: int) -> bytes:
            got = b""
            deadline = time.monotonic() + 10
            while got.count(b"HTTP/1.1 200 OK") < count or not got.endswith(b'{"stub": true}'):
                assert time.monotonic() < deadline, got
                got += conn.recv(65536)
            return got

        with socket.create_connection(("127.0.0.1", stub.port), timeout=10) as conn:
            conn.sendall(b"GET /stub HTTP/1.1\r\nHost: x\r\ntrace")
            time.sleep(0.05)
            conn.sendall(b"parent: 00-abc\r\n\r\n")
            assert answers(conn, 1).count(b"200 OK") == 1
            conn.sendall(b"GET /stub HTTP/1.1\r\nHost: x\r\n\r\nGET /stub HTTP/1.1\r\nHost: x\r\n\r\n")
            assert answers(conn, 2).count(b"200 OK") == 2
        with socket.create_connection(("127.0.0.1", stub.port), timeout=10) as endless:
            endless.sendall(b"GET /stub HTTP/1.1\r\n" + b"X-Long: " + b"a" * (Stub.MAX_HEAD + 10))
            endless.settimeout(10)
            assert endless.recv(100) == b""  # closed by the stub, unanswered
        import urllib.request

        with urllib.request.urlopen(stub.url + "/stub", timeout=10) as resp:
            assert resp.status == 200 and json.loads(resp.read()) == {"stub": True}
        assert stub.hits["GET"] == 4
    finally:
        stub.close()


def test_in_process_overhead_is_taken_against_no_agent_in_the_same_round():
    """Each round's processes take turns: every variant is compared with no agent's processes of its own round (the
    machine's speed drifts from round to round), and the no-agent processes' spread is kept for the report."""
    from run import INPROC_VARIANTS, ROUTES, summarize_inproc

    def run(ns: float) -> dict:
        return {"ns_per_request": {r: ns for r in ROUTES}, "replica_ns": {r: [ns - 500, ns + 500] for r in ROUTES},
                "maxrss_kb": 1024, "export": {"ok": True, "spans": 1, "expected_min": 1, "detail": ""}}

    # no agent drifts by 100 ns a round; every agent costs 7 ns over it
    runs = {v: [run(1000.0 + 100 * r + (0 if v == "none" else 7)) for r in range(4)] for v in INPROC_VARIANTS}
    summary = summarize_inproc(runs)
    for v in INPROC_VARIANTS:
        expected = 0.0 if v == "none" else 7.0
        assert abs(summary["routes"]["/hello"][v]["overhead_us"] * 1e3 - expected) < 1e-6, (v, summary)
    assert summary["routes"]["/hello"]["none"]["replica_gaps_us"] == [1.0] * 4


def test_in_process_agents_take_turns(tmp_path, servers, monkeypatch):
    """The in-process step: every variant's inproc.py up at once (no agent twice), on one CPU, each stopped but in
    its turns; a route's time includes the agent's flush after its last turn. Here no agent, autoinstr with its
    collector exporter, its request path alone (exporter none) and the local store, each checked at the sink or the
    store."""
    import dataclasses

    import run

    ctx = suite_context(tmp_path, servers)
    run.pad_environments(ctx, ["none", "autoinstr"])
    variants = ["none", "autoinstr", run.NO_EXPORT, run.LOCAL]
    monkeypatch.setattr(run, "INPROC_VARIANTS", variants)
    monkeypatch.setattr(run, "spans_per_request", lambda ctx: {})  # (counted in a test of its own)
    ctx.mode = dataclasses.replace(run.QUICK, rounds=1, inproc_cycles=2, inproc_warmup=2)
    states = []
    ask = run.TurnTaker.ask

    def ask_and_look(self, command):  # a process between two turns is stopped, its threads too
        got = ask(self, command)
        if command != "result":
            with open("/proc/%d/stat" % self.proc.pid) as f:
                states.append(f.read().rsplit(")", 1)[1].split()[0])
        return got

    monkeypatch.setattr(run.TurnTaker, "ask", ask_and_look)
    summary = run.bench_inproc(ctx)
    turns = len(run.ROUTES) * 2 * (len(variants) + 1) + len(run.ROUTES) * (len(variants) + 1)  # runs, then flushes
    assert len(states) == turns and set(states) == {"T"}, states
    for v in variants:
        for route in run.ROUTES:
            assert summary["routes"][route][v]["us"] > 0, (v, route, summary)
        assert summary["export"][v]["ok"], (v, summary["export"])
    assert summary["routes"]["/hello"]["none"]["overhead_us"] == 0.0
    assert len(summary["routes"]["/hello"]["none"]["replica_gaps_us"]) == 1
    # every request of each process counted (warm-up and turns), each making 2 to 6 spans
    (requests,) = summary["export"]["autoinstr"]["expected_min"]
    assert requests > len(run.ROUTES) * (1 + ctx.mode.inproc_warmup + 2)  # (at least a request a turn)
    assert 2 * requests <= summary["export"]["autoinstr"]["spans"][0] <= 6 * requests
    assert summary["export"][run.NO_EXPORT]["spans"] == [0] and summary["export"][run.LOCAL]["spans"][0] >= requests


def test_the_in_process_step_pins_the_app_and_the_stub_to_one_cpu(tmp_path):
    """The app process, the threads it starts later (an agent's export thread), and the stub process: on one CPU."""
    from run import STUB_CPU, run_child
    from sink import StubProcess

    assert STUB_CPU in os.sched_getaffinity(0)
    child = ("import json, os, threading\n"
             "seen = {}\n"
             "t = threading.Thread(target=lambda: seen.update(thread=sorted(os.sched_getaffinity(0))))\n"
             "t.start(); t.join()\n"
             "print('RESULT ' + json.dumps(dict(seen, main=sorted(os.sched_getaffinity(0)))))\n")
    assert run_child([sys.executable, "-c", child], dict(os.environ), tmp_path, cpu=STUB_CPU) == {
        "main": [STUB_CPU], "thread": [STUB_CPU], "stderr_tail": ""}
    stub = StubProcess(cpu=STUB_CPU)
    try:
        assert os.sched_getaffinity(stub._proc.pid) == {STUB_CPU}
    finally:
        stub.close()


def test_cpu_and_steal_readings():
    """The wrk step's steadier view: a process's CPU ticks grow with work done (a process gone counts 0), and the
    machine's steal is a share of its CPU time."""
    import time

    from run import cpu_ticks, machine_ticks

    child = subprocess.Popen([sys.executable, "-c", "import time\nend = time.process_time() + 0.3\n"
                              "while time.process_time() < end: pass\nimport sys; sys.stdin.read()"],
                             stdin=subprocess.PIPE)
    try:
        before = machine_ticks()
        deadline = time.monotonic() + 30
        while cpu_ticks([child.pid]) < 0.25 * os.sysconf("SC_CLK_TCK") and time.monotonic() < deadline:
            time.sleep(0.05)
        assert cpu_ticks([child.pid]) >= 0.25 * os.sysconf("SC_CLK_TCK")
        after = machine_ticks()
    finally:
        child.communicate(b"", timeout=30)
    assert cpu_ticks([child.pid]) == 0  # reaped: nothing to read
    assert after[0] > before[0] > 0 and 0 <= after[1] - before[1] <= after[0] - before[0]


def suite_context(tmp_path, servers) -> object:
    """run.py's context for the no-agent and autoinstr runs, both in this test's own venv (it has flask, requests
    and autoinstr), exporting to the test's sink."""
    from pathlib import Path

    import run

    class ThisVenv(run.Venv):
        @property
        def path(self) -> Path:
            return Path(sys.prefix)

    sink, stub = servers
    venvs = {agent: ThisVenv(agent, [], []) for agent in ("none", "autoinstr")}
    return run.Ctx(venvs, sink, stub, run.peer_settings(sink.url), tmp_path, run.QUICK)


def test_every_measured_process_sees_an_environment_of_one_size(tmp_path, servers):
    """run.py pads each agent's environment (requests reads all of it on every call), so that the no-agent run
    and autoinstr's under its launcher (which adds PYTHONPATH), with their different settings and the variants'
    own, all see the same number of variables."""
    import run

    ctx = suite_context(tmp_path, servers)
    unpadded = run.pad_environments(ctx, ["none", "autoinstr"])
    assert unpadded["autoinstr"] > unpadded["none"]  # its three settings and the launcher's PYTHONPATH
    assert ctx.launcher_adds["none"] == 0 and ctx.launcher_adds["autoinstr"] >= 1
    assert ctx.environment_size >= max(unpadded.values())
    extra = {"BENCH_ROUTES": "/hello", "BENCH_REQUESTS": "5", "BENCH_REPEATS": "1", "BENCH_WARMUP": "1"}
    seen = []
    for agent, more in (("none", {}), ("autoinstr", {}), ("autoinstr", {"AUTOINSTR_EXPORTER": "none"}),
                        ("autoinstr", {"AUTOINSTR_EXPORTER": "local", "AUTOINSTR_STORE": str(tmp_path / "s.db")})):
        env = ctx.padded(agent, dict(ctx.env(agent, dict(extra, BENCH_AGENT=agent)), **more))
        proc = subprocess.run(ctx.command(agent, ["python", os.path.join(PEERS, "inproc.py")]), env=env,
                              cwd=str(tmp_path), capture_output=True, text=True, timeout=120)
        seen.append(result_of(proc)["environment_size"])
    assert seen == [ctx.environment_size] * 4, seen


def test_the_spans_each_agent_records_are_counted_route_by_route(tmp_path, servers):
    """The suite reports, beside the overheads, how many spans each agent records a request on each route (the
    work each overhead pays for), counted at the sink from a run of each route alone: here autoinstr's, under its
    launcher, with its collector exporter."""
    import run

    ctx = suite_context(tmp_path, servers)
    run.pad_environments(ctx, ["none", "autoinstr"])
    recorded = run.spans_per_request(ctx, ["autoinstr"])["autoinstr"]
    assert set(recorded) == set(run.ROUTES)
    # the server span and the view's on every page; /db adds its connect and its 3 queries; /outgoing its client call
    assert recorded["/hello"] == recorded["/users/42"] == 2.0, recorded
    assert recorded["/db"] == 6.0, recorded
    assert recorded["/outgoing"] >= 3.0, recorded


def test_gunicorn_workers_time_their_garbage_collections(tmp_path):
    """The wrk step's garbage-collection pass: gc_hooks.py, as gunicorn's config, makes each worker count the
    requests it served and time its collections by generation, and write both as it exits (SIGTERM, as the suite
    stops gunicorn); the report shows them per agent."""
    import signal
    import time
    import urllib.request

    import run

    out = tmp_path / "gc"
    out.mkdir()
    # the suite's hooks, with collections made frequent (how often a few hundred requests trigger one depends on
    # the Python version's thresholds: 700 young objects in 3.11, 2000 in 3.13), and every collection of the
    # worker counted beside them, loading the app included
    config = tmp_path / "gc_config.py"
    config.write_text(
        "import gc, json, os\nimport gc_hooks\nfrom gc_hooks import pre_request, post_request\n"
        "every = [0]\n\n\ndef count(phase, info):\n    every[0] += phase == 'stop'\n\n\n"
        "def post_fork(server, worker):\n    gc.set_threshold(20, 5, 5)\n    gc.callbacks.append(count)\n"
        "    gc_hooks.post_fork(server, worker)\n\n\n"
        "def worker_exit(server, worker):\n    gc_hooks.worker_exit(server, worker)\n"
        "    with open(os.path.join(os.environ['BENCH_GC_OUT'], 'every.json'), 'w') as f:\n"
        "        json.dump(every[0], f)\n")
    port = run.free_port()
    env = dict(os.environ, BENCH_GC_OUT=str(out), REFAPP_DB=str(tmp_path / "refapp.db"),
               PYTHONPATH=os.pathsep.join(filter(None, [PEERS, os.environ.get("PYTHONPATH")])))
    proc = subprocess.Popen([os.path.join(os.path.dirname(sys.executable), "gunicorn"), "-c",
                             str(config), "-w", "1", "-b", "127.0.0.1:%d" % port, "--chdir",
                             PEERS, "--log-level", "warning", "refapp:app"], env=env, cwd=str(tmp_path),
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, start_new_session=True)
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                with urllib.request.urlopen("http://127.0.0.1:%d/hello" % port, timeout=5) as resp:
                    resp.read()
                break
            except OSError:
                assert proc.poll() is None and time.monotonic() < deadline, proc.stderr.read()[-2000:]
                time.sleep(0.1)
        for _ in range(300):
            with urllib.request.urlopen("http://127.0.0.1:%d/users/7" % port, timeout=5) as resp:
                assert resp.status == 200
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(30)
    files = list(out.glob("gc-*.json"))
    assert len(files) == 1
    stats = json.loads(files[0].read_text())
    assert stats["requests"] == 301
    assert stats["collections"][0] > 0 and stats["collections"][1] > 0
    every = json.loads((out / "every.json").read_text())
    assert sum(stats["collections"]) < every  # those of loading the app (after the fork) are not counted
    assert all(s >= 0 for s in stats["seconds"]) and stats["seconds"][0] > 0

    gc_pass = {"rounds": 2}
    for i, agent in enumerate(run.AGENTS):
        gc_pass[agent] = {"us_by_generation": [1.0 + i, 0.5, 0.25], "us": 1.75 + i, "over_us": float(i),
                          "full_per_10k": 0.5 * i, "requests": 1000}
    with open(os.path.join(PEERS, "last-run.json")) as f:
        results = json.load(f)  # a committed run's figures, with these in its wrk step
    results["wrk"]["gc"] = gc_pass
    report = run.write_report(results, False)
    assert "Garbage collection in the worker" in report
    assert "| autoinstr | 2.00 | 0.50 | 0.25 | 2.75 | +1.00 | 0.50 |" in report, report


def test_gunicorn_servers_take_turns(tmp_path, servers, monkeypatch):
    """The wrk step's turn-taking pass: every agent's gunicorn up at once under its own wrk, one running at a
    time. Each server's requests/s is taken over the time it ran, and its worker used no more CPU than that time:
    it was stopped during the others' turns. Here no agent and autoinstr (from this venv, under its launcher)."""
    import dataclasses
    import time

    import run

    need_wrk()
    ctx = suite_context(tmp_path, servers)
    run.pad_environments(ctx, ["none", "autoinstr"])
    monkeypatch.setattr(run, "AGENTS", ["none", "autoinstr"])
    ctx.mode = dataclasses.replace(run.QUICK, turn_cycles=24)
    started = time.monotonic()
    out = run.gunicorn_turns(ctx, 1)
    took = time.monotonic() - started
    for agent in ("none", "autoinstr"):
        got = out[agent]
        servers = run.TURN_REPLICAS.get(agent, 1)
        assert got["requests"] > 0 and got["errors"] == 0, got
        # 24 turns of TURN_S each, for each of its servers (a turn's sleep may overrun a little, never fall short)
        assert 24 * servers * run.TURN_S <= got["ran_s"] < 48 * servers * run.TURN_S, got
        assert got["rps"] == pytest.approx(got["requests"] / got["ran_s"])
        assert len(got["server_rps"]) == servers and all(rps > 0 for rps in got["server_rps"]), got
        # stopped outside its turns: at most the time it ran, and a clock tick of the CPU counters per server
        assert got["cpu_s"] <= got["ran_s"] + 0.03 * servers, got
    assert run.TURN_REPLICAS["none"] >= 2  # (what divides every ratio: more than one server's luck)
    assert took > out["none"]["ran_s"] + out["autoinstr"]["ran_s"]
    assert out["autoinstr"]["exported"] > 0 and out["none"]["exported"] == 0
    row = run.summarize_turns([out, out])
    assert row["none"]["ratio"] == 1.0 and row["autoinstr"]["ratio"] == pytest.approx(
        out["autoinstr"]["rps"] / out["none"]["rps"])
    assert row["none"]["export_ok"] and row["autoinstr"]["export_ok"]
    rps = out["none"]["server_rps"]
    assert row["none"]["replica_gaps"] == [pytest.approx(max(rps) / min(rps) - 1)] * 2

    with open(os.path.join(PEERS, "last-run.json")) as f:
        results = json.load(f)  # a committed run's figures, with these turns in its wrk step
    peers = {peer: dict(row["autoinstr"], ratio=0.5) for peer in run.PEERS}  # (the headline quotes them)
    results["wrk"].update(turns={"1": dict(row, **peers)}, turn_s=run.TURN_S, turn_replicas=run.TURN_REPLICAS)
    results["meta"]["mode"].update(turn_cycles=6, turn_runs=2)
    report = run.write_report(results, False)
    assert "**Taking turns.**" in report, report
    assert "no agent and autoinstr run 2 servers each" in report, report
    assert "| 1 | autoinstr | %s |" % run.fmt(row["autoinstr"]["rps"], 0) in report, report
    item = next(i for i in run.budget(results) if i["item"].startswith("gunicorn 1 worker"))
    assert item["met"] == (row["autoinstr"]["ratio"] >= 0.95) and "taking turns" in item["figure"], item


def test_a_turn_taker_outlasts_a_chatty_child_and_reports_its_exit(tmp_path):
    """An in-process child's stderr goes to a file, not to a pipe read only at its end: a child that writes more
    than a pipe holds (an agent's warnings) carries on; when it exits mid-run, its stderr's tail is in the error."""
    child = ("import sys; sys.stderr.write('x' * 200000); sys.stderr.flush(); print('READY', flush=True); "
             "sys.stdin.readline(); print('1 2', flush=True); sys.stdin.readline(); sys.stderr.write('boom'); "
             "sys.exit(3)")
    driver = ("import os, sys, pathlib; sys.path.insert(0, %r); import run\n"
              "t = run.TurnTaker([sys.executable, '-c', %r], dict(os.environ), pathlib.Path(%r), None)\n"
              "t.ready(); print(t.turn('flush'))\n"
              "try:\n    t.ask('flush')\nexcept RuntimeError as e:\n    print('error', str(e)[-40:])\n"
              "t.kill()\n" % (PEERS, child, str(tmp_path)))
    out = subprocess.run([sys.executable, "-c", driver], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr[-2000:]
    lines = out.stdout.splitlines()
    assert lines[0] == "(1, 2)" and lines[1].startswith("error") and lines[1].endswith("xxboom"), lines
