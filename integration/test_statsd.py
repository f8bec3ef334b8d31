"""statsd metrics end to end: traced apps under `autoinstr-run` send to Etsy's statsd daemon (node), which
flushes into Graphite's carbon-cache; the counters and timers are read back from carbon's whisper files.
Both servers run on 127.0.0.1 free ports for the session (see statsd_servers.py); without node, statsd,
carbon or whisper these tests skip, unless AUTOINSTR_REQUIRE_STATSD_SERVERS=1 (test.sh sets it once the
packages are in): then they fail."""

from __future__ import annotations

import http.client
import http.server
import json
import os
import socket
import threading
import time
import uuid

import pytest
from fleet import Server

TIMEOUT = 60


@pytest.fixture(scope="session")
def graphite(tmp_path_factory):
    import statsd_servers

    reason = statsd_servers.missing()
    if reason:
        if os.environ.get("AUTOINSTR_REQUIRE_STATSD_SERVERS") == "1":
            pytest.fail("AUTOINSTR_REQUIRE_STATSD_SERVERS=1, but " + reason, pytrace=False)
        pytest.skip("statsd/Graphite servers unavailable: " + reason)
    servers = statsd_servers.StatsdGraphite(str(tmp_path_factory.mktemp("graphite")))
    try:
        servers.start()
    except Exception as exc:
        servers.stop()
        pytest.fail("could not start statsd and carbon: %s" % exc, pytrace=False)
    yield servers
    servers.stop()


@pytest.fixture
def prefix() -> str:
    """A prefix of its own per test: metrics of different tests never mix in the one Graphite."""
    return "t%s" % uuid.uuid4().hex[:10]


@pytest.fixture
def target():
    """A plain (untraced) HTTP server in this process, for the apps' outgoing requests."""

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self):
            body = b"pong"
            self.send_response(200)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args):
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server.server_address[1]
    server.shutdown()
    server.server_close()
    thread.join(5)


def request(port: int, method: str, path: str) -> int:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        conn.request(method, path)
        resp = conn.getresponse()
        resp.read()
        return resp.status
    finally:
        conn.close()


class App:
    def __init__(self, name: str, code: str, argv) -> None:
        self.name = name
        self.agent = True
        self.code = code
        self._argv = argv

    def argv(self, port: int, bindir: str) -> list:
        return self._argv(port)


def serve(sandbox, app: App, env: dict, drive) -> None:
    """Run the app under autoinstr-run, drive it, stop it with SIGTERM (the agent's exit flush sends the
    last metrics), and check it exited cleanly."""
    sandbox.write(app.name + ".py", app.code)
    server = Server(sandbox, app, env=env)
    try:
        server.wait_ready(time.monotonic() + TIMEOUT)
        drive(server.port)
        # a single-threaded server may still be closing the last response after the client has it;
        # SIGTERM right then would interrupt that request's bookkeeping (its metrics and its span)
        time.sleep(0.5)
    finally:
        server.stop()
        server.reap(time.monotonic() + TIMEOUT)
    assert "autoinstr warning" not in server.tail(200), server.tail()


FLASK_APP = """
import os, sqlite3, sys, urllib.request
from wsgiref.simple_server import WSGIRequestHandler, make_server

import autoinstr
from flask import Flask

DB = os.path.join(os.path.dirname(os.path.abspath(__file__)), "shop.db")
with sqlite3.connect(DB) as conn:
    conn.execute("CREATE TABLE IF NOT EXISTS users (id INTEGER PRIMARY KEY, name TEXT)")
    conn.executemany("INSERT OR REPLACE INTO users VALUES (?, ?)", [(i, "u%d" % i) for i in range(1, 50)])

app = Flask(__name__)


@app.route("/users/<int:user_id>")
def user(user_id):
    conn = sqlite3.connect(DB)
    try:
        row = conn.execute("SELECT name FROM users WHERE id = ?", (user_id,)).fetchone()
    finally:
        conn.close()
    autoinstr.metrics.increment("shop.views", kind="user")
    return row[0]


@app.route("/items", methods=["POST"])
def items():
    with autoinstr.metrics.timer("shop.insert"):
        conn = sqlite3.connect(DB)
        with conn:
            conn.execute("INSERT INTO users (name) VALUES ('x')")
        conn.close()
    return "created"


@app.route("/fail")
def fail():
    return "no", 500


@app.route("/boom")
def boom():
    raise RuntimeError("boom")


@app.route("/proxy")
def proxy():
    with urllib.request.urlopen("http://127.0.0.1:%s/ping" % os.environ["TARGET_PORT"], timeout=10) as resp:
        return resp.read()


class Quiet(WSGIRequestHandler):
    def log_message(self, *args):
        pass


make_server("127.0.0.1", int(sys.argv[1]), app, handler_class=Quiet).serve_forever()
"""


@pytest.mark.parametrize("sample_rate", ["1", "0.3"])
def test_flask_sqlite_requests_queries_and_calls_reach_graphite(graphite, sandbox, prefix, target, sample_rate):
    app = App("shop", FLASK_APP, lambda port: ["python", "shop.py", str(port)])
    env = {"AUTOINSTR_STATSD": graphite.statsd_address, "AUTOINSTR_STATSD_PREFIX": prefix,
           "AUTOINSTR_SAMPLE_RATE": sample_rate, "TARGET_PORT": target}
    counts = {"users": 23, "fail": 3, "boom": 2, "items": 4, "proxy": 5}

    def drive(port: int) -> None:
        for i in range(counts["users"]):
            assert request(port, "GET", "/users/%d" % (i % 40 + 1)) == 200
        for _ in range(counts["fail"]):
            assert request(port, "GET", "/fail") == 500
        for _ in range(counts["boom"]):
            assert request(port, "GET", "/boom") == 500
        for _ in range(counts["items"]):
            assert request(port, "POST", "/items") == 200
        for _ in range(counts["proxy"]):
            assert request(port, "GET", "/proxy") == 200

    serve(sandbox, app, env, drive)
    c = "stats_counts.%s.shop." % prefix
    t = "stats.timers.%s.shop." % prefix
    n = sum(counts.values())
    expected = {
        c + "http.server.requests.users_int_user_id.GET.2xx": counts["users"],
        c + "http.server.errors.users_int_user_id.GET.2xx": 0,
        c + "http.server.requests.fail.GET.5xx": counts["fail"],
        c + "http.server.errors.fail.GET.5xx": counts["fail"],
        c + "http.server.requests.boom.GET.5xx": counts["boom"],
        c + "http.server.errors.boom.GET.5xx": counts["boom"],
        c + "http.server.requests.items.POST.2xx": counts["items"],
        c + "http.server.requests.proxy.GET.2xx": counts["proxy"],
        t + "http.server.duration.users_int_user_id.GET.2xx.count": counts["users"],
        t + "http.server.duration.fail.GET.5xx.count": counts["fail"],
        c + "db.queries.sqlite.SELECT": counts["users"],
        c + "db.queries.sqlite.INSERT": counts["items"] + 1,  # + the start-up executemany
        t + "db.duration.sqlite.SELECT.count": counts["users"],
        c + "http.client.requests.127_0_0_1": counts["proxy"],
        t + "http.client.duration.127_0_0_1.count": counts["proxy"],
        c + "shop.views.user": counts["users"],
        t + "shop.insert.count": counts["items"],
    }
    seen = graphite.wait_for(expected)
    assert seen == pytest.approx(expected), graphite.logs()
    # every request once, whatever its route: the sum of the request counters is the number sent
    requests = [m for m in graphite.metrics(c[:-1]) if ".http.server.requests." in m]
    assert sum(graphite.total(m) for m in requests) == n
    errors = [m for m in graphite.metrics(c[:-1]) if ".http.server.errors." in m]
    assert sum(graphite.total(m) for m in errors) == counts["fail"] + counts["boom"]
    # timers: real durations (milliseconds), the slowest above the fastest
    upper = graphite.points(t + "http.server.duration.users_int_user_id.GET.2xx.upper")
    lower = graphite.points(t + "http.server.duration.users_int_user_id.GET.2xx.lower")
    assert upper and all(0 < v < 5000 for _, v in upper)
    assert max(v for _, v in upper) >= min(v for _, v in lower)
    proxied = graphite.points(t + "http.client.duration.127_0_0_1.upper")
    assert proxied and all(0 < v < 5000 for _, v in proxied)
    # runtime metrics and agent health, sent at the first flush and at exit
    g = "stats.gauges.%s.shop." % prefix
    rss = graphite.points(g + "runtime.memory.rss")
    assert rss and all(v > 5_000_000 for _, v in rss)
    assert graphite.points(g + "runtime.threads") and graphite.points(g + "runtime.fds")
    assert graphite.points(g + "runtime.cpu.user")
    for name in ("runtime.gc.collections.gen0", "agent.spans_dropped", "agent.export_errors"):
        assert os.path.exists(graphite.path(c + name)), (name, graphite.metrics(c[:-1]))
    assert graphite.total(c + "agent.spans_dropped") == 0
    assert graphite.total("stats_counts.statsd.bad_lines_seen") == 0  # the daemon took every line


WSGI_APP = """
import sys
from wsgiref.simple_server import WSGIRequestHandler, make_server


def app(environ, start_response):
    code = environ["PATH_INFO"].strip("/") or "200"
    start_response(code + " X", [("Content-Type", "text/plain")])
    return [b"ok"]


class Quiet(WSGIRequestHandler):
    def log_message(self, *args):
        pass


make_server("127.0.0.1", int(sys.argv[1]), app, handler_class=Quiet).serve_forever()
"""


def test_plain_wsgi_unsampled_requests_and_status_classes(graphite, sandbox, prefix):
    """No framework (no route: `none`), nothing sampled, no exporter: the metrics are all there is."""
    app = App("plain", WSGI_APP, lambda port: ["python", "plain.py", str(port)])
    env = {"AUTOINSTR_STATSD": graphite.statsd_address, "AUTOINSTR_STATSD_PREFIX": prefix + ".apps",
           "AUTOINSTR_SAMPLE_RATE": "0", "AUTOINSTR_EXPORTER": "none"}
    codes = {"200": 7, "201": 2, "302": 3, "404": 4, "503": 5}

    def drive(port: int) -> None:
        for code, times in codes.items():
            for _ in range(times):
                assert request(port, "GET", "/" + code) == int(code)
        assert request(port, "DELETE", "/204") == 204

    serve(sandbox, app, env, drive)
    c = "stats_counts.%s.apps.plain.http.server." % prefix
    expected = {c + "requests.none.GET.2xx": 9, c + "requests.none.GET.3xx": 3, c + "requests.none.GET.4xx": 4,
                c + "requests.none.GET.5xx": 5, c + "errors.none.GET.5xx": 5, c + "errors.none.GET.4xx": 0,
                c + "requests.none.DELETE.2xx": 1,
                "stats.timers.%s.apps.plain.http.server.duration.none.GET.5xx.count" % prefix: 5}
    assert graphite.wait_for(expected) == pytest.approx(expected), graphite.logs()


def test_dogstatsd_tags_reach_graphite_as_tagged_series(graphite, sandbox, prefix):
    """AUTOINSTR_STATSD_TAGS=dogstatsd: Etsy's statsd takes the `|#k:v` tags into Graphite tagged series."""
    app = App("tagged", WSGI_APP, lambda port: ["python", "tagged.py", str(port)])
    env = {"AUTOINSTR_STATSD": graphite.statsd_address, "AUTOINSTR_STATSD_PREFIX": prefix,
           "AUTOINSTR_STATSD_TAGS": "dogstatsd", "AUTOINSTR_SAMPLE_RATE": "0.5"}

    def drive(port: int) -> None:
        for code in ["200"] * 6 + ["500"] * 2:
            assert request(port, "GET", "/" + code) == int(code)

    serve(sandbox, app, env, drive)
    tags = {"service": "tagged", "route": "none", "method": "GET"}
    ok, failed = dict(tags, status_class="2xx"), dict(tags, status_class="5xx")
    expected = {graphite.tagged("stats_counts.%s.http.server.requests" % prefix, ok): 6,
                graphite.tagged("stats_counts.%s.http.server.requests" % prefix, failed): 2,
                graphite.tagged("stats_counts.%s.http.server.errors" % prefix, failed): 2,
                graphite.tagged("stats.timers.%s.http.server.duration.count" % prefix, ok): 6}
    assert graphite.wait_for(expected) == pytest.approx(expected), graphite.logs()
    assert graphite.total("stats_counts.statsd.bad_lines_seen") == 0


def test_a_missing_statsd_server_costs_nothing(sandbox):
    """Nobody listens on the statsd port (and a name that does not resolve): the app serves as usual, no
    warning beyond the unresolvable name's one line, and the agent counts what it could not send."""
    import statsd_servers

    probe = SCRIPT_MISSING
    sandbox.write("probe.py", probe)
    for address in ("127.0.0.1:%d" % statsd_servers.free_port(socket.SOCK_DGRAM),
                    "no-such-host.invalid:8125"):
        env = sandbox.env(AUTOINSTR_STATSD=address, AUTOINSTR_EXPORTER="none", AUTOINSTR_FLUSH_INTERVAL="0.05")
        started = time.monotonic()
        proc = sandbox.ok(["python", "probe.py"], env=env)
        assert time.monotonic() - started < 20
        assert "RESULT " in proc.stdout, proc.stdout + proc.stderr
        stats = json.loads(proc.stdout.split("RESULT ", 1)[1])
        if address.startswith("127."):  # the socket is connected: the kernel's "port unreachable" fails the
            assert stats["datagrams_sent"] > 0  # next send, so what is lost after the first one is counted
            assert stats["datagrams_sent"] + stats["send_errors"] >= 2, stats
        else:
            assert stats["datagrams_sent"] == 0 and stats["send_errors"] > 0
        warnings = [x for x in proc.stderr.splitlines() if x.startswith("autoinstr warning")]
        assert len(warnings) == (0 if address.startswith("127.") else 1), proc.stderr


SCRIPT_MISSING = """
import time
import autoinstr
from autoinstr import metrics

start = time.perf_counter()
for i in range(2000):
    metrics.increment("x")
    metrics.timing("t", i)
spent = time.perf_counter() - start
time.sleep(0.3)  # a few flushes towards nobody
assert autoinstr.flush(5)
stats = autoinstr.stats()["statsd"]
assert spent < 2.0, spent
import json
print("RESULT " + json.dumps(stats))
"""


SCRIPT = """
import time
import autoinstr
from autoinstr import metrics

@metrics.timed("jobs.run", queue="default")
def job(i):
    time.sleep(0.002)
    return i

for i in range(12):
    job(i)
    metrics.increment("jobs.done", 2, queue="default")
    metrics.histogram("jobs.size", i)
metrics.gauge("jobs.backlog", 42)
metrics.timing("jobs.wait", 250)
assert autoinstr.stats()["statsd"]["send_errors"] == 0
"""


def test_custom_metrics_from_a_script(graphite, sandbox, prefix):
    sandbox.write("jobs.py", SCRIPT)
    env = sandbox.env(AUTOINSTR_STATSD=graphite.statsd_address, AUTOINSTR_STATSD_PREFIX=prefix,
                      AUTOINSTR_SERVICE_NAME="worker", AUTOINSTR_EXPORTER="none")
    sandbox.ok(["python", "jobs.py"], env=env)
    c, t, g = ("%s.%s.worker." % (kind, prefix) for kind in ("stats_counts", "stats.timers", "stats.gauges"))
    expected = {c + "jobs.done.default": 24, t + "jobs.run.default.count": 12, t + "jobs.size.count": 12,
                t + "jobs.size.upper": 11, t + "jobs.wait.upper": 250, g + "jobs.backlog": 42}
    assert graphite.wait_for(expected) == pytest.approx(expected), graphite.logs()
    runs = graphite.points(t + "jobs.run.default.lower")
    assert runs and all(v >= 2 for _, v in runs)


GUNICORN_APP = """
def app(environ, start_response):
    start_response("200 OK", [("Content-Type", "text/plain")])
    return [b"ok"]
"""


def test_forked_workers_each_count_their_own_requests(graphite, sandbox, prefix):
    """gunicorn --preload: the agent loads in the master, workers fork from it; every request counted once."""
    pytest.importorskip("gunicorn")
    app = App("web", GUNICORN_APP, lambda port: [os.path.join(os.path.dirname(sandbox.PYTHON), "gunicorn"),
                                                   "--preload", "-w", "3", "-b", "127.0.0.1:%d" % port,
                                                   "--graceful-timeout", "5", "web:app"])
    env = {"AUTOINSTR_STATSD": graphite.statsd_address, "AUTOINSTR_STATSD_PREFIX": prefix,
           "AUTOINSTR_SAMPLE_RATE": "0.5"}
    n = 60

    def drive(port: int) -> None:
        for _ in range(n):
            assert request(port, "GET", "/") == 200

    serve(sandbox, app, env, drive)
    name = "stats_counts.%s.web.http.server.requests.none.GET.2xx" % prefix
    seen = graphite.wait_for({name: n})
    assert seen[name] == n, graphite.logs()
