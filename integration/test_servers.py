"""Real servers under the launcher: every worker process gunicorn or `flask run` starts loads the agent.

Each request makes a custom span in whichever process serves it, under the server span the agent makes;
the stored spans must come from the worker processes, each exactly once.
"""

from __future__ import annotations

import collections
import os
import signal
import socket
import time

import pytest
from fleet import free_port, get_ok

APP = """
import os
import autoinstr

def app(environ, start_response):
    with autoinstr.span("handle " + environ["PATH_INFO"], pid=os.getpid()):
        body = ("served by %d" % os.getpid()).encode()
    start_response("200 OK", [("Content-Type", "text/plain"), ("Content-Length", str(len(body)))])
    return [body]
"""

FLASK_APP = """
import os
import autoinstr
from flask import Flask

app = Flask(__name__)

@app.route("/hello")
def hello():
    with autoinstr.span("flask-hello", pid=os.getpid()):
        return "served by %d" % os.getpid()
"""


def get(port: int, path: str) -> str:
    return get_ok(port, path, timeout=10)


def wait_ready(proc, port: int, timeout: float = 30.0) -> None:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        assert proc.poll() is None, "server exited: %s" % proc.stderr.read()
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return
        except OSError:
            time.sleep(0.1)
    raise AssertionError("server did not listen on %d" % port)


def stop(proc) -> None:
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(20)
    except Exception:
        proc.kill()
        raise


@pytest.mark.parametrize("preload", [False, True], ids=["no-preload", "preload"])
def test_gunicorn_workers_load_the_agent(sandbox, preload):
    sandbox.write("wsgiapp.py", APP)
    port = free_port()
    gunicorn = os.path.join(os.path.dirname(sandbox.PYTHON), "gunicorn")
    args = [gunicorn, "-w", "2", "-b", "127.0.0.1:%d" % port, "--graceful-timeout", "5"]
    args += ["--preload"] if preload else []
    proc = sandbox.popen(args + ["wsgiapp:app"], env=sandbox.env(AUTOINSTR_SERVICE_NAME="gunicorn-app"))
    try:
        wait_ready(proc, port)
        served = collections.Counter(get(port, "/r%d" % (i % 3)).split()[-1] for i in range(40))
    finally:
        stop(proc)
    spans = sandbox.store_spans()
    sandbox.assert_unique(spans)
    assert {s["service"] for s in spans} == {"gunicorn-app"}
    custom = [s for s in spans if s["kind"] == "internal"]
    servers = {s["span_id"]: s for s in spans if s["kind"] == "server"}
    assert len(custom) == 40 and len(servers) == 40, [s["name"] for s in spans]
    by_pid = collections.Counter(str(s["attributes"]["pid"]) for s in custom)
    assert by_pid == served  # each worker exported exactly the requests it served
    assert str(proc.pid) not in by_pid  # the master serves nothing; its workers do
    assert {s["name"] for s in custom} == {"handle /r0", "handle /r1", "handle /r2"}
    # a bare WSGI app has no routes: its server spans are named by method alone, never by raw path
    assert {s["name"] for s in servers.values()} == {"GET"}
    assert all(c["parent_id"] in servers and servers[c["parent_id"]]["attributes"]["url.path"] == c["name"][7:]
               for c in custom)


def test_flask_run_loads_the_agent(sandbox):
    sandbox.write("flaskapp.py", FLASK_APP)
    port = free_port()
    env = sandbox.env(AUTOINSTR_EXPORTER="jsonl", AUTOINSTR_FLUSH_INTERVAL="0.2")
    proc = sandbox.popen(["flask", "--app", "flaskapp", "run", "--port", str(port)], env=env)
    try:
        wait_ready(proc, port)
        for _ in range(5):
            assert get(port, "/hello").startswith("served by")
        # werkzeug closes a response body (which ends its span) after the client has it: wait for the
        # spans rather than race a SIGTERM against the last request's thread
        deadline = time.monotonic() + 10
        while len(sandbox.jsonl_spans()) < 15 and time.monotonic() < deadline:
            time.sleep(0.1)
    finally:
        stop(proc)
    spans = sandbox.jsonl_spans()
    names = collections.Counter(s["name"] for s in spans)
    assert names == {"GET /hello": 5, "hello": 5, "flask-hello": 5}, names  # server, view, custom spans
    assert {s["service"] for s in spans} == {"flask"}  # the command's name, by default


SLEEPER = """
import sys, time
import autoinstr
for i in range(50):
    with autoinstr.span("before-sigterm", i=i):
        pass
print("ready", flush=True)
time.sleep(60)
"""


@pytest.mark.parametrize("flush", ["true", "false"])
def test_sigterm_flushes_then_dies_of_sigterm(sandbox, flush):
    """With no SIGTERM handler of the app's, the agent flushes what is queued, then the process still
    dies of SIGTERM (same exit status as without the agent). AUTOINSTR_FLUSH_ON_SIGTERM=false opts out."""
    sandbox.write("sleeper.py", SLEEPER)
    proc = sandbox.popen(["python", "sleeper.py"], env=sandbox.env(AUTOINSTR_FLUSH_INTERVAL="3600",
                                                                   AUTOINSTR_FLUSH_ON_SIGTERM=flush))
    assert proc.stdout.readline().strip() == "ready"
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(20) == -signal.SIGTERM
    spans = sandbox.store_spans() if os.path.exists(sandbox.store) else []
    assert len(spans) == (50 if flush == "true" else 0)
