"""The export pipeline in real processes: fork, exit, an exporter that hangs, queue overflow, and several
processes writing to one store and one jsonl file at once."""

from __future__ import annotations

import collections
import json
import os
import sqlite3
import sys
import time

import pytest

# ------------------------------------------------------------------------------------------------ fork

FORK_APP = """
import json, os, sys
import autoinstr

def spans(prefix, n=20):
    for i in range(n):
        with autoinstr.span(prefix, pid=os.getpid(), i=i):
            with autoinstr.span(prefix + "-inner", pid=os.getpid()):
                pass

spans("before-fork")
autoinstr.flush()  # the flush thread and the exporters' files/connections are live when we fork

# 1. fork outside any span, with spans still queued (the parent exports them, the child must not);
#    the child exits normally (atexit flush)
spans("queued-at-fork")
pid = os.fork()
if pid == 0:
    spans("child-a")
    sys.exit(0)
os.waitpid(pid, 0)

# 2. fork outside any span; the child flushes, then leaves with os._exit (no atexit)
pid = os.fork()
if pid == 0:
    spans("child-b")
    ok = autoinstr.flush(10)
    os._exit(0 if ok else 7)
_, status = os.waitpid(pid, 0)
assert os.WEXITSTATUS(status) == 0, "flush in the forked child did not finish"

# 3. fork inside an open span: the child continues the trace, the parent ends the span
with autoinstr.span("open-at-fork", pid=os.getpid()) as outer:
    with autoinstr.span("done-before-fork", pid=os.getpid()):
        pass
    pid = os.fork()
    if pid == 0:
        with autoinstr.span("child-in-open", pid=os.getpid()):
            pass
        sys.exit(0)
    os.waitpid(pid, 0)
    with autoinstr.span("parent-after-fork", pid=os.getpid()):
        pass

spans("after-fork")
print(json.dumps({"pid": os.getpid()}))
"""


def test_fork_parent_and_child_export_their_own_spans_once(sandbox):
    sandbox.write("fork_app.py", FORK_APP)
    proc = sandbox.ok(["python", "fork_app.py"], env=sandbox.env(AUTOINSTR_EXPORTER="local,jsonl",
                                                                  AUTOINSTR_FLUSH_INTERVAL="3600"))
    parent_pid = json.loads(proc.stdout.splitlines()[-1])["pid"]
    assert proc.stderr == ""
    for spans in (sandbox.store_spans(), sandbox.jsonl_spans()):
        sandbox.assert_unique(spans)
        counts = collections.Counter(s["name"] for s in spans)
        assert counts == {
            "before-fork": 20, "before-fork-inner": 20, "child-a": 20, "child-a-inner": 20,
            "child-b": 20, "child-b-inner": 20, "after-fork": 20, "after-fork-inner": 20,
            "queued-at-fork": 20, "queued-at-fork-inner": 20,
            "open-at-fork": 1, "done-before-fork": 1, "child-in-open": 1, "parent-after-fork": 1,
        }, counts
        pids = collections.defaultdict(set)
        for s in spans:
            pids[s["name"]].add(s["attributes"].get("pid"))
        for name in ("before-fork", "queued-at-fork", "after-fork", "open-at-fork", "done-before-fork",
                     "parent-after-fork"):
            assert pids[name] == {parent_pid}, name
        children = [pids["child-a"], pids["child-b"], pids["child-in-open"]]
        assert all(len(p) == 1 and parent_pid not in p for p in children)
        assert len(set.union(*children)) == 3
        # the child's span continues the trace of the span open at fork
        outer = sandbox.one(spans, "open-at-fork")
        in_open = sandbox.one(spans, "child-in-open")
        assert in_open["trace_id"] == outer["trace_id"]
        assert in_open["parent_id"] == outer["span_id"]
        assert sandbox.one(spans, "parent-after-fork")["parent_id"] == outer["span_id"]
        # parent and child draw different ids after fork (the generator is reseeded)
        assert len({s["trace_id"] for s in spans if s["parent_id"] is None}) == 20 * 5 + 1


FORK_DURING_EXPORTER_START = """
import importlib.machinery, json, os, sys, time
import autoinstr

SLOW = {"autoinstr.store", "autoinstr.export.jsonl", "autoinstr.export.local"}

class SlowLoader:
    def __init__(self, real):
        self.real = real
    def create_module(self, spec):
        return self.real.create_module(spec)
    def exec_module(self, module):
        time.sleep(0.5)  # a slow disk: the module sits half-imported in sys.modules for a while
        self.real.exec_module(module)

class SlowFinder:
    def find_spec(self, name, path=None, target=None):
        if name not in SLOW:
            return None
        spec = importlib.machinery.PathFinder.find_spec(name, path)
        if spec is not None:
            spec.loader = SlowLoader(spec.loader)
        return spec

sys.meta_path.insert(0, SlowFinder())
with autoinstr.span("parent-first"):
    pass
autoinstr.flush(0.05)  # the flush thread now builds its exporters (lazy imports, on that thread)
time.sleep(0.2)
started = time.monotonic()
pid = os.fork()        # e.g. a pre-forking server starting its workers just then
if pid == 0:
    with autoinstr.span("child-span"):
        pass
    sys.exit(0)
os.waitpid(pid, 0)
child_secs = time.monotonic() - started
with autoinstr.span("parent-after"):
    pass
print(json.dumps({"child_secs": child_secs}))
"""


@pytest.mark.parametrize("exporter", ["local", "jsonl"])
def test_fork_while_parent_starts_its_exporters(sandbox, exporter):
    sandbox.write("fork_race.py", FORK_DURING_EXPORTER_START)
    proc = sandbox.ok(["python", "fork_race.py"], env=sandbox.env(AUTOINSTR_EXPORTER=exporter,
                                                                   AUTOINSTR_SHUTDOWN_TIMEOUT="1"))
    spans = sandbox.store_spans() if exporter == "local" else sandbox.jsonl_spans()
    assert sorted(s["name"] for s in spans) == ["child-span", "parent-after", "parent-first"], proc.stderr
    assert proc.stderr == ""


FORK_WITH_JSONL_FILE_OPEN = """
import fcntl, json, os, sys, threading, time
import autoinstr

path = os.environ["AUTOINSTR_JSONL_PATH"]
fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND)
fcntl.flock(fd, fcntl.LOCK_EX)  # another writer process holds the file for a moment...
threading.Timer(0.3, fcntl.flock, (fd, fcntl.LOCK_UN)).start()  # ...and lets go of it
with autoinstr.span("parent-first"):
    pass
autoinstr.flush(0.05)  # the flush thread has the file open and waits for the lock
started = time.monotonic()
pid = os.fork()        # the child inherits that open file
if pid == 0:
    time.sleep(0.6)    # by now the parent has written its batch and closed its copy
    with autoinstr.span("child-span"):
        pass
    sys.exit(0)
os.waitpid(pid, 0)
child_secs = time.monotonic() - started
with autoinstr.span("parent-after"):
    pass
print(json.dumps({"child_secs": child_secs}))
"""


def test_fork_while_jsonl_exporter_has_its_file_open(sandbox):
    sandbox.write("fork_flock.py", FORK_WITH_JSONL_FILE_OPEN)
    proc = sandbox.ok(["python", "fork_flock.py"], env=sandbox.env(AUTOINSTR_EXPORTER="jsonl",
                                                                    AUTOINSTR_SHUTDOWN_TIMEOUT="1"))
    spans = sandbox.jsonl_spans()
    assert sorted(s["name"] for s in spans) == ["child-span", "parent-after", "parent-first"], proc.stderr
    assert json.loads(proc.stdout)["child_secs"] < 1.5, "the child's exit waited for its flush deadline"
    # the app runs a thread of its own (the Timer) when it forks: Python 3.12+ warns about that, rightly
    assert [ln for ln in proc.stderr.splitlines() if "multi-threaded" not in ln and "os.fork()" not in ln] == []


# ------------------------------------------------------------------------------------------------ exit

EXIT_APP = """
import atexit, sys, threading, time
import autoinstr

def in_atexit():  # registered after the agent's own exit handler: runs before it
    with autoinstr.span("in-atexit"):
        pass

atexit.register(in_atexit)

def late():
    time.sleep(0.3)
    with autoinstr.span("from-thread"):
        pass

threading.Thread(target=late).start()  # a non-daemon thread that ends after the main code
with autoinstr.span("root"):
    for i in range(2000):
        with autoinstr.span("item", i=i):
            pass
"""


def test_script_ending_right_after_its_last_span_loses_nothing(sandbox):
    sandbox.write("exit_app.py", EXIT_APP)
    jsonl_only = os.path.join(sandbox.dir, "only.jsonl")
    procs = [
        sandbox.popen(["python", "exit_app.py"], env=sandbox.env(AUTOINSTR_EXPORTER="local,jsonl")),
        # a long flush interval: only the exit flush can have exported them
        sandbox.popen(["python", "exit_app.py"], env=sandbox.env(AUTOINSTR_EXPORTER="jsonl",
                                                                  AUTOINSTR_JSONL_PATH=jsonl_only,
                                                                  AUTOINSTR_FLUSH_INTERVAL="3600")),
        sandbox.popen(["python", "exit_app.py"], launcher=False,
                      env=sandbox.env(AUTOINSTR_ENABLED="true", AUTOINSTR_EXPORTER="jsonl",
                                      AUTOINSTR_JSONL_PATH=os.path.join(sandbox.dir, "enabled.jsonl"))),
    ]
    for rc, _, err in sandbox.wait_all(procs):
        assert rc == 0, err
        assert err == ""
    for spans in (sandbox.store_spans(), sandbox.jsonl_spans(), sandbox.jsonl_spans(jsonl_only),
                  sandbox.jsonl_spans(os.path.join(sandbox.dir, "enabled.jsonl"))):
        sandbox.assert_unique(spans)
        assert len(spans) == 2003
        root = sandbox.one(spans, "root")
        items = [s for s in spans if s["name"] == "item"]
        assert sorted(s["attributes"]["i"] for s in items) == list(range(2000))
        assert {s["parent_id"] for s in items} == {root["span_id"]}
        assert {s["trace_id"] for s in items} == {root["trace_id"]}
        assert sandbox.one(spans, "from-thread")["parent_id"] is None
        assert sandbox.one(spans, "in-atexit")["parent_id"] is None


# ------------------------------------------------------------------------------------ hanging exporter

HANG_APP = """
import json, time
import autoinstr
with autoinstr.span("last"):
    pass
started = time.monotonic()
ok = autoinstr.flush(0.3)  # an explicit flush is bounded by its timeout too
print(json.dumps({"flushed": ok, "flush_secs": time.monotonic() - started}), flush=True)
"""


def test_hanging_exporter_does_not_hold_exit_past_the_deadline(sandbox):
    sandbox.write("hang_app.py", HANG_APP)
    fifo = os.path.join(sandbox.dir, "nobody-reads.fifo")
    os.mkfifo(fifo)  # opening it for writing blocks for ever: nobody opens it for reading
    locked = os.path.join(sandbox.dir, "locked.db")
    sandbox.ok(["python", "hang_app.py"], env=sandbox.env(AUTOINSTR_STORE=locked))  # creates the store
    db = sqlite3.connect(locked, isolation_level=None)
    db.execute("BEGIN EXCLUSIVE")  # another process keeps the store locked (its busy timeout is 5 s)
    try:
        hang = {"AUTOINSTR_EXPORTER": "jsonl", "AUTOINSTR_JSONL_PATH": fifo}
        cases = [(dict(hang, AUTOINSTR_SHUTDOWN_TIMEOUT="1"), 1.0),
                 (hang, 2.0),  # the default deadline
                 (dict(hang, AUTOINSTR_SHUTDOWN_TIMEOUT="0.2"), 0.2),
                 ({"AUTOINSTR_STORE": locked, "AUTOINSTR_SHUTDOWN_TIMEOUT": "1"}, 1.0)]
        procs, starts = [], []
        for extra, _ in cases:
            starts.append(time.monotonic())
            procs.append(sandbox.popen(["python", "hang_app.py"], env=sandbox.env(**extra)))
        ends = {}
        deadline = time.monotonic() + 20
        while len(ends) < len(procs) and time.monotonic() < deadline:
            for i, p in enumerate(procs):
                if i not in ends and p.poll() is not None:
                    ends[i] = time.monotonic()
            time.sleep(0.01)
        results = sandbox.wait_all(procs, timeout=5)
    finally:
        db.execute("ROLLBACK")
        db.close()
    for i, ((extra, limit), (rc, out, err)) in enumerate(zip(cases, results)):
        assert i in ends, f"the process with {extra} did not exit in 20 s"
        elapsed = ends[i] - starts[i]
        assert rc == 0, err
        app = json.loads(out)
        assert app["flushed"] is False
        assert app["flush_secs"] < 0.3 + 1.0
        assert elapsed < app["flush_secs"] + limit + 2.5, f"exit took {elapsed:.2f}s with a {limit}s deadline"
        assert len(err.splitlines()) <= 1, err


# -------------------------------------------------------------------------------------- queue overflow

FLOOD_APP = """
import json, resource, sys
import autoinstr
N = 100_000
with autoinstr.span("flood-root"):
    pass
for i in range(N):
    with autoinstr.span("flood", i=i, payload="x" * 1000 + str(i)):
        pass
if sys.argv[1:] == ["flush"]:
    autoinstr.flush(20)
st = autoinstr.stats()
# peak RSS of this image: ru_maxrss also counts the forking parent's (pytest's) RSS before exec on Linux,
# VmHWM starts afresh at exec
peak = [int(line.split()[1]) for line in open("/proc/self/status") if line.startswith("VmHWM:")]
st["maxrss_kb"] = peak[0] if peak else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
print(json.dumps(st))
"""


def test_queue_overflow_drops_are_counted_and_memory_bounded(sandbox):
    sandbox.write("flood.py", FLOOD_APP)
    fifo = os.path.join(sandbox.dir, "blocked.fifo")
    os.mkfifo(fifo)
    store2 = os.path.join(sandbox.dir, "flood.db")
    procs = [
        # control: the same work, agent off
        sandbox.popen(["python", "flood.py"], launcher=False),
        # destination that never accepts anything
        sandbox.popen(["python", "flood.py"], env=sandbox.env(AUTOINSTR_EXPORTER="jsonl", AUTOINSTR_JSONL_PATH=fifo,
                                                               AUTOINSTR_MAX_QUEUE_SPANS="100",
                                                               AUTOINSTR_SHUTDOWN_TIMEOUT="0.5")),
        # a real store that cannot keep up with a tight loop
        sandbox.popen(["python", "flood.py", "flush"], env=sandbox.env(AUTOINSTR_STORE=store2,
                                                                        AUTOINSTR_MAX_QUEUE_SPANS="100")),
    ]
    results = sandbox.wait_all(procs, timeout=60)
    for rc, _, err in results:
        assert rc == 0, err
    control, blocked, local = (json.loads(out.splitlines()[-1]) for _, out, _ in results)
    assert control["enabled"] is False

    assert blocked["spans_sampled"] == 100_001
    assert blocked["spans_dropped"]["queue_full"] >= 100_001 - 1000, blocked
    assert blocked["spans_exported"] == 0
    assert blocked["maxrss_kb"] < control["maxrss_kb"] + 30 * 1024, (blocked["maxrss_kb"], control["maxrss_kb"])

    dropped = local["spans_dropped"]
    assert dropped["queue_full"] > 0, local
    assert local["maxrss_kb"] < control["maxrss_kb"] + 30 * 1024, (local["maxrss_kb"], control["maxrss_kb"])
    stored = sandbox.store_spans(store2)
    sandbox.assert_unique(stored)
    # every span is either stored or counted as dropped
    assert local["spans_exported"] == len(stored)
    assert len(stored) + sum(dropped.values()) == 100_001, (len(stored), local)


# ------------------------------------------------------------------------------ several writers at once

WRITER = """
import os, sys, time
import autoinstr
start = float(sys.argv[2])
while time.time() < start:
    time.sleep(0.001)
for i in range(250):
    with autoinstr.span("write", writer=sys.argv[1], i=2 * i):
        with autoinstr.span("write-child", writer=sys.argv[1], i=2 * i + 1):
            pass
    if i % 50 == 0:
        time.sleep(0.02)  # let the flush thread run while the others write
"""


def test_several_processes_write_one_store_and_one_jsonl(sandbox):
    sandbox.write("writer.py", WRITER)
    env = sandbox.env(AUTOINSTR_EXPORTER="local,jsonl", AUTOINSTR_FLUSH_INTERVAL="0.02")
    start = time.time() + 1.0  # all four begin together, on a store none has created yet
    procs = [sandbox.popen(["python", "writer.py", f"w{n}", repr(start)], env=env) for n in range(4)]
    for rc, _, err in sandbox.wait_all(procs):
        assert rc == 0, err
        assert err == "", err
    for spans in (sandbox.store_spans(), sandbox.jsonl_spans()):
        sandbox.assert_unique(spans)
        assert len(spans) == 2000
        per_writer = collections.defaultdict(list)
        for s in spans:
            per_writer[s["attributes"]["writer"]].append(s["attributes"]["i"])
        assert sorted(per_writer) == ["w0", "w1", "w2", "w3"]
        for values in per_writer.values():
            assert sorted(values) == list(range(500))


OPENER = """
import sys, time
import autoinstr
with autoinstr.span("opener", writer=sys.argv[1]):
    pass
start = float(sys.argv[2])
while time.time() < start:
    pass
# exit now: the exit flush is every process's first export, all at the same instant (as gunicorn
# workers do at shutdown), with one chance each within the exit deadline
"""


@pytest.mark.parametrize("round_", range(3))
def test_processes_creating_a_new_store_at_the_same_instant(sandbox, round_):
    """Store creation (WAL switch, schema) races between processes exiting together: every one must
    get its span in."""
    sandbox.write("opener.py", OPENER)
    store = os.path.join(sandbox.dir, "fresh-%d.db" % round_)
    env = sandbox.env(AUTOINSTR_STORE=store, AUTOINSTR_FLUSH_INTERVAL="3600")
    start = time.time() + 1.5  # all eight export their first batch together, to a store none has made
    procs = [sandbox.popen(["python", "opener.py", f"w{n}", repr(start)], env=env) for n in range(8)]
    for rc, _, err in sandbox.wait_all(procs):
        assert rc == 0, err
        assert err == "", err
    spans = sandbox.store_spans(store)
    assert sorted(s["attributes"]["writer"] for s in spans) == sorted(f"w{n}" for n in range(8))


C_FORK = """
import ctypes, os, sys, time
import autoinstr

libc = ctypes.CDLL(None, use_errno=True)
for i in range(30):
    with autoinstr.span("parent-before", i=i):
        pass
autoinstr.flush()          # the flush thread is running when we fork
for i in range(30):
    with autoinstr.span("parent-queued", i=i):  # queued, not yet exported, at fork time
        pass
time.sleep(0.05)
pid = libc.fork()          # fork() from C, as a server written in C may: no os.register_at_fork hooks
if pid == 0:
    for i in range(20):
        with autoinstr.span("c-child", i=i):
            pass
    sys.exit(0)
os.waitpid(pid, 0)
# (no new spans in the parent: its id generator was not reseeded either, see the pipeline's pid check)
"""


def test_fork_from_c_is_caught_by_the_pid_check(sandbox):
    """A fork that skips Python's at-fork hooks: the child still exports its own spans (and none of the
    parent's), and exits without waiting out the shutdown deadline on a flush thread it does not have."""
    sandbox.write("cfork.py", C_FORK)
    started = time.monotonic()
    proc = sandbox.run(["python", "cfork.py"], env=sandbox.env(AUTOINSTR_FLUSH_INTERVAL="3600"))
    elapsed = time.monotonic() - started
    assert proc.returncode == 0, proc.stderr
    spans = sandbox.store_spans()
    sandbox.assert_unique(spans)
    counts = collections.Counter(s["name"] for s in spans)
    assert counts == {"parent-before": 30, "parent-queued": 30, "c-child": 20}, counts
    assert elapsed < 2.0 + 3.0  # no wait of the full shutdown deadline (2 s) in the child on top


FORK_WITH_APP_THREAD = """
import os, sys, threading, time
import autoinstr
with autoinstr.span("before"):
    pass
autoinstr.flush()                      # the agent's flush thread is running
if sys.argv[1] == "app-thread":
    stop = threading.Event()
    threading.Thread(target=stop.wait, name="app-worker", daemon=True).start()
pid = os.fork()
if pid == 0:
    os._exit(0)
os.waitpid(pid, 0)
"""


@pytest.mark.skipif(sys.version_info < (3, 12), reason="Python 3.12+ warns about fork with threads")
@pytest.mark.parametrize("threads", ["agent-only", "app-thread"])
def test_fork_warning_is_the_apps_own(sandbox, threads):
    """The agent's own thread does not make Python warn about fork; the app's own threads still do."""
    sandbox.write("forkwarn.py", FORK_WITH_APP_THREAD)
    proc = sandbox.ok(["python", "forkwarn.py", threads])
    warned = "multi-threaded, use of fork()" in proc.stderr
    assert warned == (threads == "app-thread"), proc.stderr
