"""uWSGI under the launcher: a real uwsgi (2 worker processes) on 127.0.0.1, real HTTP requests, spans read
back from the jsonl file once uwsgi has stopped.

Every request gets exactly one server span, exported by the worker that served it, none lost and none
twice: with and without --master, --lazy-apps and --enable-threads; the app loaded by --wsgi-file (which
no import hook sees) and by --module; through SIGINT shutdown, --die-on-term SIGTERM and a SIGHUP reload.
The agent warns at start-up exactly when uWSGI's Python threads are off, which uWSGI itself reports in its
log; recent uWSGI releases (the pip one) always enable them, older ones (Debian's 2.0.21, used when
installed: apt-get install uwsgi-core uwsgi-plugin-python3) only with --enable-threads or --threads.
"""

from __future__ import annotations

import collections
import concurrent.futures
import http.client
import os
import signal
import socket
import subprocess
import sys
import sysconfig
import time

import pytest
from fleet import free_port, get_ok

UWSGI = os.path.join(os.path.dirname(sys.executable), "uwsgi")
if not os.path.exists(UWSGI):
    pytest.skip("uwsgi is not installed in this venv (`pip install uwsgi` compiles it: needs a C compiler and "
                "the Python headers)", allow_module_level=True)

# a uWSGI whose Python threads are off by default, to see the warning and the thread-less export for real
DEBIAN_UWSGI = "/usr/bin/uwsgi-core"
DEBIAN_PLUGINS = "/usr/lib/uwsgi/plugins"
DEBIAN_PYTHON = "python%d%d" % sys.version_info[:2]
HAS_DEBIAN = all(os.path.exists(p) for p in (
    DEBIAN_UWSGI, os.path.join(DEBIAN_PLUGINS, DEBIAN_PYTHON + "_plugin.so"),
    os.path.join(DEBIAN_PLUGINS, "http_plugin.so")))

WARNING = "autoinstr warning: uWSGI runs without --enable-threads"
THREADS_OFF = "Python threads support is disabled"  # uWSGI's own start-up line
REQUESTS = 24
FLUSH_INTERVAL = 0.3

APP = """
import os
import sys
import time

import autoinstr
import uwsgi


def _bye():  # the app's own uwsgi.atexit: the agent chains it with its exit flush, never replaces it
    with open(os.environ["MARKS"], "a") as f:
        f.write("atexit %d\\n" % os.getpid())


uwsgi.atexit = _bye


def application(environ, start_response):
    # traced: whether a trace function is set (the agent's, which follows the app module as uWSGI runs
    # it, must be gone by now)
    with autoinstr.span("handle", pid=os.getpid(), traced=sys.gettrace() is not None):
        time.sleep(0.01)
        body = ("served by %d" % os.getpid()).encode()
    start_response("200 OK", [("Content-Type", "text/plain"), ("Content-Length", str(len(body)))])
    return [body]


def make_app():  # for --module wsgiapp:make_app()
    return application
"""

FLASK_APP = """
import os
from flask import Flask

app = Flask(__name__)


@app.route("/hello/<int:n>")
def hello(n):
    return "served by %d" % os.getpid()
"""


def get(port: int, path: str) -> str:
    return get_ok(port, path, timeout=15)


def get_many(port: int, paths) -> collections.Counter:
    """Concurrent requests (so that both workers serve); how many each worker pid served."""
    with concurrent.futures.ThreadPoolExecutor(4) as pool:
        bodies = list(pool.map(lambda p: get(port, p), paths))
    return collections.Counter(b.split()[-1] for b in bodies)


class Uwsgi:
    """One uwsgi process tree, in its own session: stopped like a terminal's Ctrl-C would (SIGINT to the
    whole group) when it has no master, through the master otherwise; killed whatever happens."""

    def __init__(self, sandbox, args, debian: bool = False, **env) -> None:
        self.sandbox = sandbox
        self.port = free_port()
        self.log = os.path.join(sandbox.dir, "uwsgi-%d.log" % self.port)
        self.master = "--master" in args
        binary = [DEBIAN_UWSGI, "--plugins", "http," + DEBIAN_PYTHON] if debian else [UWSGI]
        extra = {"AUTOINSTR_EXPORTER": "jsonl", "AUTOINSTR_FLUSH_INTERVAL": FLUSH_INTERVAL,
                 "MARKS": os.path.join(sandbox.dir, "marks")}
        if debian:  # Debian's libpython, this venv's packages (same Python version)
            extra["PYTHONPATH"] = os.pathsep.join(sorted({sysconfig.get_paths()["purelib"],
                                                          sysconfig.get_paths()["platlib"]}))
        extra.update(env)
        argv = sandbox.argv(binary + ["--http", "127.0.0.1:%d" % self.port, "--processes", "2"] + list(args))
        with open(self.log, "w") as log:
            self.proc = subprocess.Popen(argv, env=sandbox.env(**extra), cwd=sandbox.dir, stdin=subprocess.DEVNULL,
                                         stdout=log, stderr=subprocess.STDOUT, start_new_session=True)

    def __enter__(self) -> Uwsgi:
        end = time.monotonic() + 30
        while time.monotonic() < end:
            assert self.proc.poll() is None, "uwsgi exited:\n" + self.output()
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.5):
                    return self
            except OSError:
                time.sleep(0.05)
        raise AssertionError("uwsgi did not listen on %d:\n%s" % (self.port, self.output()))

    def __exit__(self, *exc) -> None:
        if self.proc.poll() is None:
            self.kill()

    def send(self, signum: int) -> None:
        if self.master:
            self.proc.send_signal(signum)
        else:
            os.killpg(self.proc.pid, signum)

    def stop(self, signum: int = signal.SIGINT) -> str:
        self.send(signum)
        end = time.monotonic() + 20
        while time.monotonic() < end:  # the whole group: workers and the http router too
            try:
                os.killpg(self.proc.pid, 0)
            except ProcessLookupError:
                break
            self.proc.poll()
            time.sleep(0.05)
        else:
            self.kill()
            raise AssertionError("uwsgi did not stop:\n" + self.output())
        return self.output()

    def kill(self) -> None:
        try:
            os.killpg(self.proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        self.proc.wait(10)

    def output(self) -> str:
        with open(self.log, errors="replace") as f:
            return f.read()


def server_spans(sandbox, running: bool = False) -> list:
    try:
        spans = sandbox.jsonl_spans()
    except ValueError:  # uwsgi still runs: a line half written
        if not running:
            raise
        return []
    sandbox.assert_unique(spans)
    return [s for s in spans if s["kind"] == "server"]


def check_run(sandbox, served: collections.Counter, output: str, requests: int = REQUESTS) -> None:
    """Exactly one server span per request, each exported by the worker that served it."""
    spans = sandbox.jsonl_spans()
    servers = {s["span_id"]: s for s in server_spans(sandbox)}
    assert len(servers) == requests, "%d server spans for %d requests\n%s" % (len(servers), requests, output[-3000:])
    assert {s["name"] for s in servers.values()} == {"GET"}  # a bare WSGI app: named by method alone
    assert {s["service"] for s in spans} == {"uwsgi"}
    handles = [s for s in spans if s["name"] == "handle"]
    assert all(h["parent_id"] in servers for h in handles)
    assert not any(h["attributes"]["traced"] for h in handles)
    by_pid = collections.Counter(str(h["attributes"]["pid"]) for h in handles)
    assert by_pid == served, (by_pid, served)
    assert len(served) == 2, served  # both workers served, and both exported


def check_warning(output: str, enable_threads: bool) -> None:
    """One warning line exactly when uWSGI itself says its Python threads are off."""
    threads_off = THREADS_OFF in output
    assert not (enable_threads and threads_off)
    assert output.count(WARNING) == (1 if threads_off else 0), output[-3000:]
    if threads_off:
        assert "--enable-threads" in next(line for line in output.splitlines() if WARNING in line)


def exercise(server: Uwsgi, sandbox) -> collections.Counter:
    """REQUESTS requests, then a pause and a few more: spans must arrive while uwsgi still runs (with
    threads off, from the request path), not only at exit."""
    served = get_many(server.port, ["/r%d" % i for i in range(REQUESTS - 4)])
    time.sleep(FLUSH_INTERVAL * 2)
    served += get_many(server.port, ["/late%d" % i for i in range(4)])
    end = time.monotonic() + 5
    while not server_spans(sandbox, running=True) and time.monotonic() < end:
        time.sleep(0.05)
    assert server_spans(sandbox, running=True), "no span exported while uwsgi runs:\n" + server.output()[-3000:]
    return served


MATRIX = [(master, lazy, threads) for master in (True, False) for lazy in (False, True) for threads in (True, False)]


@pytest.mark.parametrize("master,lazy,threads", MATRIX, ids=[
    "-".join(name for name, on in zip(("master", "lazy", "threads"), case) if on) or "plain" for case in MATRIX])
def test_wsgi_file_every_request_one_span(sandbox, master, lazy, threads):
    sandbox.write("wsgiapp.py", APP)
    args = ["--wsgi-file", "wsgiapp.py"] + ["--master"] * master + ["--lazy-apps"] * lazy
    args += ["--enable-threads"] * threads
    with Uwsgi(sandbox, args) as server:
        served = exercise(server, sandbox)
        output = server.stop()
    check_run(sandbox, served, output)
    check_warning(output, threads)
    with open(os.path.join(sandbox.dir, "marks")) as f:
        marks = f.read().split()
    assert set(served) <= set(marks[1::2])  # the app's own uwsgi.atexit still ran in every worker


@pytest.mark.skipif(not HAS_DEBIAN, reason="needs a uWSGI with threads off by default: Debian's uwsgi-core and "
                    "uwsgi-plugin-python3 for Python %d.%d" % sys.version_info[:2])
@pytest.mark.parametrize("master,lazy,threads", [(True, False, False), (True, True, False), (False, False, False),
                                                 (True, False, True)],
                         ids=["master", "master-lazy", "plain", "master-threads"])
def test_threads_off_warns_and_still_exports(sandbox, master, lazy, threads):
    """Without --enable-threads (uWSGI 2.0.21): one warning line; spans exported after requests and at exit."""
    sandbox.write("wsgiapp.py", APP)
    args = ["--wsgi-file", "wsgiapp.py"] + ["--master"] * master + ["--lazy-apps"] * lazy
    args += ["--enable-threads"] * threads
    with Uwsgi(sandbox, args, debian=True) as server:
        served = exercise(server, sandbox)
        output = server.stop()
    assert (THREADS_OFF in output) == (not threads)
    check_run(sandbox, served, output)
    check_warning(output, threads)


@pytest.mark.parametrize("target", ["wsgiapp", "wsgiapp:make_app()"])
@pytest.mark.parametrize("lazy", [False, True], ids=["prefork", "lazy"])
def test_module_app(sandbox, target, lazy):
    """--module: the app module is imported through the import system (a factory `callable()` too)."""
    sandbox.write("wsgiapp.py", APP)
    args = ["--module", target, "--master"] + ["--lazy-apps"] * lazy
    with Uwsgi(sandbox, args) as server:
        served = exercise(server, sandbox)
        output = server.stop()
    check_run(sandbox, served, output)


def test_flask_app_one_span_named_by_route(sandbox):
    """Flask traces its own __call__ too: still one server span per request, named after the route."""
    sandbox.write("flaskapp.py", FLASK_APP)
    with Uwsgi(sandbox, ["--wsgi-file", "flaskapp.py", "--callable", "app", "--master"]) as server:
        for i in range(6):
            assert get(server.port, "/hello/%d" % i).startswith("served by")
        # the client has its answer before uWSGI closes the response (which ends the span): wait for the
        # periodic export rather than stop in that window (an in-flight request at shutdown is lost)
        end = time.monotonic() + 10
        while len(server_spans(sandbox, running=True)) < 6 and time.monotonic() < end:
            time.sleep(0.05)
        server.stop()
    names = collections.Counter(s["name"] for s in sandbox.jsonl_spans())
    assert names == {"GET /hello/<int:n>": 6, "hello": 6}, names


def test_die_on_term_sigterm(sandbox):
    sandbox.write("wsgiapp.py", APP)
    with Uwsgi(sandbox, ["--wsgi-file", "wsgiapp.py", "--master", "--die-on-term"]) as server:
        served = get_many(server.port, ["/r%d" % i for i in range(REQUESTS)])
        output = server.stop(signal.SIGTERM)
    check_run(sandbox, served, output)


@pytest.mark.parametrize("lazy", [False, True], ids=["prefork", "lazy"])
def test_reload_flushes_at_worker_exit(sandbox, lazy):
    """A SIGHUP reload replaces every worker: what they queued is exported by their exit flush (no
    periodic flush here: AUTOINSTR_FLUSH_INTERVAL=3600)."""
    sandbox.write("wsgiapp.py", APP)
    args = ["--wsgi-file", "wsgiapp.py", "--master"] + ["--lazy-apps"] * lazy
    with Uwsgi(sandbox, args, AUTOINSTR_FLUSH_INTERVAL=3600) as server:
        served = get_many(server.port, ["/before%d" % i for i in range(REQUESTS // 2)])
        server.send(signal.SIGHUP)
        end = time.monotonic() + 20
        while len(server_spans(sandbox, running=True)) < REQUESTS // 2 and time.monotonic() < end:
            time.sleep(0.05)
        assert len(server_spans(sandbox, running=True)) == REQUESTS // 2, server.output()[-3000:]
        while True:  # the reload may still be under way: probe until uwsgi answers (probes are not counted)
            try:
                get(server.port, "/probe")
                break
            except (OSError, http.client.HTTPException, AssertionError):
                assert time.monotonic() < end, server.output()[-3000:]
                time.sleep(0.1)
        after = get_many(server.port, ["/after%d" % i for i in range(REQUESTS // 2)])
        output = server.stop()
    paths = sorted(s["attributes"]["url.path"] for s in server_spans(sandbox))
    expected = ["/before%d" % i for i in range(REQUESTS // 2)] + ["/after%d" % i for i in range(REQUESTS // 2)]
    assert [p for p in paths if p != "/probe"] == sorted(expected), output[-3000:]
    assert sum(served.values()) + sum(after.values()) == REQUESTS
