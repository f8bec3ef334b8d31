"""Web requests end to end: real WSGI servers under the launcher, real HTTP requests, server spans read back.

A fleet of servers (gunicorn sync and gthread workers with two workers, with and without --preload, waitress,
wsgiref.simple_server, werkzeug's dev server through `flask run`) serving a Flask app, a Bottle app and a
bare WSGI app starts once for the module, in parallel. Every server gets the same list of probes (one HTTP
request each, marked by a unique `probe=` query value and User-Agent), then is stopped with SIGTERM so the
agent's exit flush writes every span to that server's jsonl file. The tests below only look at the recorded
responses and spans, so the whole file costs one start and one stop of each server.

Two Flask servers run the same app without the agent, to check that the agent changes nothing a client
can see (status, body, headers).
"""

from __future__ import annotations

import collections
import concurrent.futures
import http.client
import importlib.util
import json
import os
import re
import threading
import time
from dataclasses import dataclass, field

import pytest
from fleet import Server

HEX32 = re.compile(r"[0-9a-f]{32}\Z")
HEX16 = re.compile(r"[0-9a-f]{16}\Z")
START_TIMEOUT = 40.0
STOP_TIMEOUT = 20.0
REQUEST_TIMEOUT = 10.0
BURST = 30  # requests per gunicorn server for the exactly-once check

# --------------------------------------------------------------------------------------------- apps

FLASK_APP = """
import os, time
from flask import Flask, Response, request

app = Flask(__name__)

@app.route("/hello")
def hello():
    return "hello", 200, {"X-App": "flask"}

@app.route("/users/<int:id>")
def user(id):
    return "user %d" % id

@app.route("/boom")
def boom():
    return str(1 / 0)

@app.route("/fail")
def fail():
    return "unavailable", 503

@app.route("/stream")
def stream():
    def chunks():
        for i in range(3):
            time.sleep(0.05)
            yield "chunk%d;" % i
    return Response(chunks(), mimetype="text/plain")

@app.route("/echo", methods=["POST"])
def echo():
    return request.get_data()

@app.route("/pid")
def pid():
    time.sleep(0.02)
    return str(os.getpid())
"""

BOTTLE_APP = """
import os, time
import bottle

app = bottle.Bottle()

@app.route("/hello")
def hello():
    bottle.response.set_header("X-App", "bottle")
    return "hello"

@app.route("/items/<id>")
def item(id):
    return "item %s" % id

@app.route("/boom")
def boom():
    return str(1 / 0)

@app.route("/fail")
def fail():
    bottle.response.status = 503
    return "unavailable"

@app.route("/stream")
def stream():
    bottle.response.content_type = "text/plain"
    def chunks():
        for i in range(3):
            time.sleep(0.05)
            yield "chunk%d;" % i
    return chunks()

@app.post("/echo")
def echo():
    return bottle.request.body.read()

@app.route("/pid")
def pid():
    time.sleep(0.02)
    return str(os.getpid())
"""

BARE_APP = """
import os, time

def app(environ, start_response):
    method, path = environ["REQUEST_METHOD"], environ.get("PATH_INFO", "")
    if path == "/hello":
        start_response("200 OK", [("Content-Type", "text/plain"), ("X-App", "bare")])
        return [b"hello"]
    if path.startswith("/users/"):
        start_response("200 OK", [("Content-Type", "text/plain")])
        return [("user %s" % path[len("/users/"):]).encode()]
    if path == "/boom":
        return [str(1 / 0).encode()]
    if path == "/fail":
        start_response("503 Service Unavailable", [("Content-Type", "text/plain")])
        return [b"unavailable"]
    if path == "/stream":
        def chunks():
            for i in range(3):
                time.sleep(0.05)
                yield ("chunk%d;" % i).encode()
        start_response("200 OK", [("Content-Type", "text/plain")])
        return chunks()
    if path == "/echo" and method == "POST":
        body = environ["wsgi.input"].read(int(environ.get("CONTENT_LENGTH") or 0))
        start_response("200 OK", [("Content-Type", "application/octet-stream")])
        return [body]
    if path == "/pid":
        time.sleep(0.02)
        start_response("200 OK", [("Content-Type", "text/plain")])
        return [str(os.getpid()).encode()]
    start_response("404 Not Found", [("Content-Type", "text/plain")])
    return [b"not found"]
"""

APPS = {"flask": ("flaskapp", FLASK_APP), "bottle": ("bottleapp", BOTTLE_APP), "bare": ("bareapp", BARE_APP)}
# the request path for the parametrized route, and the route template the framework knows it by
USER_ROUTE = {"flask": ("/users/42", "/users/<int:id>"), "bottle": ("/items/42", "/items/<id>"),
              "bare": ("/users/42", None)}


def expected_name(app: str, method: str, route: str) -> str:
    """`METHOD route` for a framework; the method alone for a bare WSGI app (it has no routes)."""
    return method if app == "bare" or route is None else "%s %s" % (method, route)


# ------------------------------------------------------------------------------------------ servers

@dataclass
class Member:
    name: str
    server: str  # gunicorn-sync, gunicorn-gthread, waitress, wsgiref, flask-run
    app: str  # flask, bottle, bare
    preload: bool = False
    agent: bool = True
    b3: bool = True  # AUTOINSTR_PROPAGATORS=b3,b3multi,tracecontext (else the default propagators)

    @property
    def workers(self) -> int:
        return 2 if self.server.startswith("gunicorn") else 1

    def argv(self, port: int, bindir: str) -> list:
        module = APPS[self.app][0]
        if self.server.startswith("gunicorn"):
            args = [os.path.join(bindir, "gunicorn"), "-w", "2", "-b", "127.0.0.1:%d" % port,
                    "--graceful-timeout", "5", "--limit-request-field_size", "32768"]
            if self.server == "gunicorn-gthread":
                args += ["-k", "gthread", "--threads", "4"]
            if self.preload:
                args.append("--preload")
            return args + ["%s:app" % module]
        if self.server == "waitress":
            return ["python", "-c", "from waitress import serve; from %s import app; "
                    "serve(app, host='127.0.0.1', port=%d, threads=4)" % (module, port)]
        if self.server == "wsgiref":
            return ["python", "-c", "from wsgiref.simple_server import make_server; from %s import app; "
                    "make_server('127.0.0.1', %d, app).serve_forever()" % (module, port)]
        if self.server == "flask-run":
            return ["flask", "--app", module, "run", "--host", "127.0.0.1", "--port", str(port)]
        raise ValueError(self.server)


FLEET = [
    Member("gunicorn-sync-flask", "gunicorn-sync", "flask"),
    Member("gunicorn-sync-bottle", "gunicorn-sync", "bottle", preload=True),
    Member("gunicorn-sync-bare", "gunicorn-sync", "bare"),
    Member("gunicorn-gthread-flask", "gunicorn-gthread", "flask", preload=True),
    Member("gunicorn-gthread-bottle", "gunicorn-gthread", "bottle"),
    Member("gunicorn-gthread-bare", "gunicorn-gthread", "bare", preload=True),
    Member("waitress-flask", "waitress", "flask"),
    Member("waitress-bottle", "waitress", "bottle"),
    Member("waitress-bare", "waitress", "bare"),
    Member("wsgiref-flask", "wsgiref", "flask"),
    Member("wsgiref-bottle", "wsgiref", "bottle"),
    Member("wsgiref-bare", "wsgiref", "bare"),
    Member("flask-run-flask", "flask-run", "flask", b3=False),  # default propagators: B3 must be ignored
    # the same Flask app without the agent, for the transparency check
    Member("gunicorn-gthread-flask-noagent", "gunicorn-gthread", "flask", preload=True, agent=False),
    Member("waitress-flask-noagent", "waitress", "flask", agent=False),
    Member("wsgiref-flask-noagent", "wsgiref", "flask", agent=False),
    Member("flask-run-flask-noagent", "flask-run", "flask", agent=False, b3=False),
]
TRACED = [m for m in FLEET if m.agent]
PAIRS = [(m.name[:-len("-noagent")], m.name) for m in FLEET if not m.agent]


def _missing(member: Member) -> str:
    """The library this member needs that the test venv lacks (the 3.9/3.13 venvs of test.sh may)."""
    for name in ("gunicorn" if member.server.startswith("gunicorn") else None,
                 "waitress" if member.server == "waitress" else None, member.app if member.app != "bare" else None):
        if name and importlib.util.find_spec(name) is None:
            return name
    return ""


B3_ENV = {"AUTOINSTR_PROPAGATORS": "b3,b3multi,tracecontext"}


@dataclass
class Response:
    status: int
    reason: str
    headers: list
    body: bytes
    elapsed: float

    def comparable_headers(self) -> list:
        """Headers but Date; Allow as a set (Flask builds it from a set: its order varies per process)."""
        out = []
        for key, value in self.headers:
            key = key.lower()
            if key == "allow":
                value = ", ".join(sorted(v.strip() for v in value.split(",")))
            if key != "date":
                out.append((key, value))
        return sorted(out)


def http_request(port: int, method: str, target: str, headers=(), body: bytes = None, conn=None) -> Response:
    """One request, on a fresh connection unless `conn` is given (then it stays open for the next one);
    `headers` is a list of pairs, so a header may repeat."""
    own = conn is None
    if own:
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=REQUEST_TIMEOUT)
    try:
        started = time.monotonic()
        conn.putrequest(method, target, skip_accept_encoding=True)
        for key, value in headers:
            conn.putheader(key, value)
        if body is not None:
            conn.putheader("Content-Length", str(len(body)))
        conn.endheaders(body)
        resp = conn.getresponse()
        data = resp.read() if method != "HEAD" else b""
        return Response(resp.status, resp.reason, resp.getheaders(), data, time.monotonic() - started)
    finally:
        if own:
            conn.close()


@dataclass
class Probe:
    key: str
    method: str = "GET"
    path: str = "/hello"
    query: str = ""
    headers: list = field(default_factory=list)
    body: bytes = None

    @property
    def marker(self) -> str:
        return "pk-%s-z" % self.key

    @property
    def user_agent(self) -> str:
        return "autoinstr-test/1.0 %s" % self.marker

    @property
    def target(self) -> str:
        return "%s?probe=%s%s" % (self.path, self.marker, "&" + self.query if self.query else "")


TRACE_ID = "4bf92f3577b34da6a3ce929d0e0e4736"
SPAN_ID = "00f067aa0ba902b7"
B3_TRACE_ID = "80f198ee56343ba864fe8b2a57d3eff7"
B3_SPAN_ID = "e457b5a2e4d86bd1"
B3_MULTI_TRACE_ID = "463ac35c9f6413ad48485a3953bb6124"
B3_MULTI_SPAN_ID = "a2fb4a1d1a96d312"
B3_64_TRACE_ID = "a3ce929d0e0e4736"

SECRETS = {"password": "Pw0rdXq81", "token": "TkXq82zz", "key": "KyXq83zz", "secret": "ScXq84zz",
           "auth": "AuXq85zz", "session": "SsXq86zz"}
COMPOUND_SECRETS = {"api_key": "ApiXq91zz", "access_token": "AtXq92zz", "client_secret": "CsXq93zz",
                    "Authorization": "AzXq94zz", "sessionid": "SidXq95zz", "PASSWORD": "UpXq96zz"}
# the same keys percent-encoded (the app sees `password`, `token`, `secret` once the query is decoded)
ENCODED_SECRETS = {"%70assword": "EncXq97zz", "%74oken": "EncXq98zz", "se%63ret": "EncXq99zz"}

UNKNOWN_METHOD = "PURGEZQ"

# hostile or malformed trace headers: each must give a 200 and a brand new trace
HOSTILE = {
    "overlong-10k": [("traceparent", "00-%s-%s-01-%s" % (TRACE_ID, SPAN_ID, "a" * 10240))],
    "garbage-10k": [("traceparent", "z" * 10240)],
    "bad-hex": [("traceparent", "00-%s-%s-01" % ("g" * 32, SPAN_ID))],
    "zero-trace-id": [("traceparent", "00-%s-%s-01" % ("0" * 32, SPAN_ID))],
    "zero-span-id": [("traceparent", "00-%s-%s-01" % (TRACE_ID, "0" * 16))],
    "version-ff": [("traceparent", "ff-%s-%s-01" % (TRACE_ID, SPAN_ID))],
    "uppercase-hex": [("traceparent", "00-%s-%s-01" % (TRACE_ID.upper(), SPAN_ID.upper()))],
    "short-trace-id": [("traceparent", "00-%s-%s-01" % (TRACE_ID[:-2], SPAN_ID))],
    "no-dashes": [("traceparent", "00%s%s01" % (TRACE_ID, SPAN_ID))],
    "empty": [("traceparent", "")],
    "latin1-bytes": [("traceparent", "00-%s\xe9\xff-%s-01" % (TRACE_ID[:-2], SPAN_ID))],
    "duplicated": [("traceparent", "00-%s-%s-01" % (TRACE_ID, SPAN_ID)),
                   ("traceparent", "00-%s-%s-01" % (B3_TRACE_ID, B3_SPAN_ID))],
    "b3-garbage": [("b3", "not-a-b3-header-at-all")],
    "b3-zero-ids": [("b3", "%s-%s-1" % ("0" * 32, "0" * 16))],
    "b3-overlong": [("b3", "%s-%s-1" % ("f" * 10240, B3_SPAN_ID))],
    "b3multi-bad-hex": [("X-B3-TraceId", "x" * 32), ("X-B3-SpanId", B3_SPAN_ID), ("X-B3-Sampled", "1")],
}
# trace ids hostile headers carry (lower case): none of them may be continued
HOSTILE_IDS = {TRACE_ID, B3_TRACE_ID, B3_MULTI_TRACE_ID, "0" * 32}


def probes_for(member: Member) -> list:
    user_path = USER_ROUTE[member.app][0]
    probes = [
        Probe("hello"),
        Probe("user", path=user_path, query="q=1&lang=en"),
        Probe("secrets", path=user_path, query="q=visible&" + "&".join("%s=%s" % kv for kv in SECRETS.items())),
        Probe("secrets-compound", path=user_path,
              query="q=visible&" + "&".join("%s=%s" % kv for kv in COMPOUND_SECRETS.items())),
        Probe("secrets-encoded", path=user_path,
              query="q=visible&" + "&".join("%s=%s" % kv for kv in ENCODED_SECRETS.items())),
        Probe("notfound", path="/nothing-herezq/deeper-zq7/9931"),
        Probe("boom", path="/boom"),
        Probe("fail", path="/fail"),
        Probe("stream", path="/stream"),
        Probe("echo", method="POST", path="/echo", body=b"posted body \x00\xff" * 100),
        Probe("head", method="HEAD"),
        Probe("unknown-method", method=UNKNOWN_METHOD),
        Probe("tp-continue", headers=[("traceparent", "00-%s-%s-01" % (TRACE_ID, SPAN_ID))]),
        Probe("tp-unsampled", headers=[("traceparent", "00-%s-%s-00" % ("1" * 32, "2" * 16))]),
        Probe("tp-hostile-tracestate", headers=[
            ("traceparent", "00-%s-%s-01" % ("3" * 32, "4" * 16)),
            ("tracestate", "=,,bad key=v,Upper=1," + "x" * 10240), ("baggage", "%%%;;==," * 1200)]),
        Probe("b3-single", headers=[("b3", "%s-%s-1" % (B3_TRACE_ID, B3_SPAN_ID))]),
        Probe("b3-single-64", headers=[("b3", "%s-%s-1" % (B3_64_TRACE_ID, B3_SPAN_ID))]),
        Probe("b3-multi", headers=[("X-B3-TraceId", B3_MULTI_TRACE_ID), ("X-B3-SpanId", B3_MULTI_SPAN_ID),
                                   ("X-B3-Sampled", "1")]),
        Probe("b3-single-unsampled", headers=[("b3", "%s-%s-0" % ("5" * 32, "6" * 16))]),
        Probe("b3-multi-unsampled", headers=[("X-B3-TraceId", "7" * 32), ("X-B3-SpanId", "8" * 16),
                                             ("X-B3-Sampled", "0")]),
    ]
    probes += [Probe("hostile-" + name, headers=headers) for name, headers in HOSTILE.items()]
    return probes


KEEPALIVE_TRACE_ID = "9" * 32
KEEPALIVE = [
    Probe("ka-0", headers=[("traceparent", "00-%s-%s-01" % (KEEPALIVE_TRACE_ID, "a" * 16))]),
    Probe("ka-1"),
    Probe("ka-2", headers=[("traceparent", "00-%s-%s-00" % ("b" * 32, "c" * 16))]),
    Probe("ka-3"),
    Probe("ka-4", path="/stream"),
    Probe("ka-5", headers=[("b3", "%s-%s-1" % ("d" * 32, "e" * 16))]),
    Probe("ka-6"),
]
UNSAMPLED_TRACES = {"tp-unsampled": "1" * 32, "ka-2": "b" * 32, "b3-single-unsampled": "5" * 32,
                    "b3-multi-unsampled": "7" * 32}


def sends_span(member: Member, key: str) -> bool:
    return not (key in ("tp-unsampled", "ka-2") or (member.b3 and key in UNSAMPLED_TRACES))


@dataclass
class Result:
    member: Member
    port: int = 0
    responses: dict = field(default_factory=dict)
    errors: dict = field(default_factory=dict)  # probe key -> exception text
    burst: list = field(default_factory=list)  # (probe, Response)
    spans: list = field(default_factory=list)
    failure: str = ""
    output: str = ""
    returncode: object = None

    def check(self) -> None:
        if self.failure:
            raise AssertionError("%s: %s" % (self.member.name, self.failure))

    def response(self, key: str) -> Response:
        self.check()
        assert key in self.responses, "%s: request %s failed: %s" % (self.member.name, key, self.errors.get(key))
        return self.responses[key]

    def server_spans(self, marker: str) -> list:
        found = []
        for s in self.spans:
            if s.get("kind") != "server":
                continue
            attrs = s.get("attributes") or {}
            if (marker in str(attrs.get("user_agent.original", "")) or "probe=" + marker in
                    str(attrs.get("url.query", ""))):
                found.append(s)
        return found

    def span(self, key: str) -> dict:
        """The one server span of probe `key`."""
        self.check()
        found = self.server_spans(Probe(key).marker)
        assert len(found) == 1, "%s: expected one server span for probe %r, found %d\n%s" % (
            self.member.name, key, len(found), self.describe())
        return found[0]

    def describe(self) -> str:
        names = collections.Counter((s.get("kind"), s.get("name")) for s in self.spans)
        return "spans: %d %s\nserver output (tail):\n%s" % (len(self.spans), dict(names), self.output[-3000:])


def _drive(server: Server, result: Result) -> None:
    member = server.member
    for probe in probes_for(member):
        headers = [("User-Agent", probe.user_agent)] + list(probe.headers)
        try:
            result.responses[probe.key] = http_request(server.port, probe.method, probe.target, headers, probe.body)
        except Exception as exc:
            result.errors[probe.key] = "%s: %s" % (type(exc).__name__, exc)
    # one keep-alive connection (where the server keeps it): no request may inherit the previous one's context
    conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=REQUEST_TIMEOUT)
    try:
        for probe in KEEPALIVE:
            headers = [("User-Agent", probe.user_agent)] + list(probe.headers)
            try:
                result.responses[probe.key] = http_request(server.port, probe.method, probe.target, headers,
                                                           conn=conn)
            except Exception as exc:
                result.errors[probe.key] = "%s: %s" % (type(exc).__name__, exc)
                conn.close()
    finally:
        conn.close()
    if member.workers > 1 and member.agent:
        burst = [Probe("burst-%d" % i, path="/pid") for i in range(BURST)]

        def one(probe: Probe):
            return probe, http_request(server.port, "GET", probe.target, [("User-Agent", probe.user_agent)])

        with concurrent.futures.ThreadPoolExecutor(6) as pool:
            for future in [pool.submit(one, p) for p in burst]:
                try:
                    result.burst.append(future.result())
                except Exception as exc:
                    result.errors.setdefault("burst", "%s: %s" % (type(exc).__name__, exc))


@pytest.fixture(scope="module")
def fleet(sandbox_factory) -> dict:
    sandbox = sandbox_factory("web")
    for module, code in APPS.values():
        sandbox.write(module + ".py", code)
    results = {m.name: Result(m) for m in FLEET}
    servers = {}
    try:
        for member in FLEET:
            missing = _missing(member)
            if missing:
                results[member.name].failure = "SKIP: %s is not installed" % missing
                continue
            try:
                servers[member.name] = Server(sandbox, member, env=B3_ENV if member.b3 else None)
            except Exception as exc:  # one server that cannot start fails its own tests only
                results[member.name].failure = "could not start: %s: %s" % (type(exc).__name__, exc)
                continue
            results[member.name].port = servers[member.name].port
        deadline = time.monotonic() + START_TIMEOUT
        ready = {}
        for name, server in servers.items():
            try:
                server.wait_ready(deadline)
                ready[name] = server
            except AssertionError as exc:
                results[name].failure = str(exc)
        threads = [threading.Thread(target=_drive, args=(server, results[name]), daemon=True)
                   for name, server in ready.items()]
        for t in threads:
            t.start()
        for t in threads:
            t.join(60)
    finally:
        for server in servers.values():
            server.stop()  # SIGTERM: the agent's exit flush writes what is still queued
        deadline = time.monotonic() + STOP_TIMEOUT
        for server in servers.values():
            server.reap(deadline)
    for name, server in servers.items():
        result = results[name]
        result.output = server.tail(200)
        result.returncode = server.proc.returncode
        if os.path.exists(server.jsonl):
            with open(server.jsonl, encoding="utf-8") as f:
                for line in f:
                    if line.strip():
                        result.spans.append(json.loads(line))
    return results


@pytest.fixture
def get(fleet):
    def lookup(name: str) -> Result:
        result = fleet[name]
        if result.failure.startswith("SKIP: "):
            pytest.skip(result.failure[6:])
        return result
    return lookup


def traced(xfail: dict = None, **filters) -> list:
    """Params of the traced members matching `filters`; `xfail` maps an app to the mark its members get."""
    members = [m for m in TRACED if all(getattr(m, k) == v for k, v in filters.items())]
    xfail = xfail or {}
    return [pytest.param(m.name, id=m.name, marks=[xfail[m.app]] if m.app in xfail else []) for m in members]


ALL = traced()


def path_parts(path: str) -> list:
    return [p for p in re.split(r"[/?&=]", path) if len(p) >= 3]


# -------------------------------------------------------------------------------------------- tests

@pytest.mark.parametrize("name", ALL)
def test_every_request_gets_exactly_one_server_span(get, name):
    result = get(name)
    result.check()
    problems = []
    for probe in probes_for(result.member) + KEEPALIVE:
        if probe.key not in result.responses:
            problems.append("%s: request failed: %s" % (probe.key, result.errors.get(probe.key)))
            continue
        count = len(result.server_spans(probe.marker))
        expected = 1 if sends_span(result.member, probe.key) else 0
        if count != expected:
            problems.append("%s: %d server spans, expected %d" % (probe.key, count, expected))
    assert not problems, "%s\n%s" % ("\n".join(problems), result.describe())
    assert {s["service"] for s in result.spans} == {name}


@pytest.mark.parametrize("name", ALL)
def test_spans_are_well_formed(get, name):
    result = get(name)
    result.check()
    assert result.spans, result.describe()
    for s in result.spans:
        assert HEX32.match(s["trace_id"]) and int(s["trace_id"], 16), s
        assert HEX16.match(s["span_id"]) and int(s["span_id"], 16), s
        assert s["parent_id"] is None or HEX16.match(s["parent_id"]), s
        assert s["kind"] in ("server", "client", "internal", "producer", "consumer"), s
        assert s["status"] in ("ok", "error"), s
        assert isinstance(s["duration_ns"], int) and s["duration_ns"] >= 0, s
    counts = collections.Counter((s["trace_id"], s["span_id"]) for s in result.spans)
    assert not [k for k, n in counts.items() if n > 1], "spans exported twice"


@pytest.mark.parametrize("name", ALL)
def test_route_name_and_attributes(get, name):
    result = get(name)
    app = result.member.app
    path, route = USER_ROUTE[app]
    resp = result.response("user")
    assert resp.status == 200 and resp.body == ("user 42" if app != "bottle" else "item 42").encode()
    span = result.span("user")
    attrs = span["attributes"]
    assert span["name"] == expected_name(app, "GET", route)
    assert span["status"] == "ok"
    assert span["parent_id"] is None
    if route:
        assert attrs.get("http.route") == route
    else:
        assert "http.route" not in attrs  # a bare WSGI app has no route: never the raw path
    assert attrs.get("http.request.method") == "GET"
    assert attrs.get("url.path") == path
    assert attrs.get("url.scheme") == "http"
    assert attrs.get("url.query") == "probe=%s&q=1&lang=en" % Probe("user").marker
    status = attrs.get("http.response.status_code")
    assert status == 200 and isinstance(status, int)
    assert attrs.get("server.address") == "127.0.0.1"
    port = attrs.get("server.port")
    assert port == result.port and isinstance(port, int)
    assert attrs.get("client.address") == "127.0.0.1"
    assert attrs.get("user_agent.original") == Probe("user").user_agent


@pytest.mark.parametrize("name", ALL)
def test_route_names_of_other_routes(get, name):
    result = get(name)
    app = result.member.app
    assert result.response("hello").body == b"hello"
    assert result.span("hello")["name"] == expected_name(app, "GET", "/hello")
    echo = result.span("echo")
    assert echo["name"] == expected_name(app, "POST", "/echo")
    assert echo["attributes"].get("http.request.method") == "POST"


@pytest.mark.parametrize("name", traced(app="flask") + traced(app="bottle"))
def test_view_function_gets_a_child_span(get, name):
    """Flask and Bottle: the view function runs in an internal span, child of the server span."""
    result = get(name)
    span = result.span("user")
    children = [s for s in result.spans if s["parent_id"] == span["span_id"]]
    assert len(children) == 1, [(s["kind"], s["name"]) for s in children]
    assert children[0]["kind"] == "internal" and children[0]["trace_id"] == span["trace_id"]
    assert children[0]["start_ns"] >= span["start_ns"]
    assert children[0]["start_ns"] + children[0]["duration_ns"] <= span["start_ns"] + span["duration_ns"]


@pytest.mark.parametrize("name", ALL)
def test_request_body_reaches_the_app(get, name):
    result = get(name)
    resp = result.response("echo")
    assert resp.status == 200
    assert resp.body == b"posted body \x00\xff" * 100


def _assert_redacted(result: Result, key: str, secrets: dict) -> None:
    resp = result.response(key)
    assert resp.status == 200
    span = result.span(key)
    query = span["attributes"].get("url.query")
    assert query is not None, "url.query missing"
    assert "q=visible" in query and "probe=" + Probe(key).marker in query, query
    for name in secrets:
        assert name + "=" in query, "key %r dropped from url.query: %s" % (name, query)
    # nothing of the trace (server span and its children) may carry a secret value
    text = json.dumps([s for s in result.spans if s["trace_id"] == span["trace_id"]])
    leaked = sorted(name for name, value in secrets.items() if value in text)
    assert not leaked, "secret values of %s leaked: %s" % (leaked, query)


@pytest.mark.parametrize("name", ALL)
def test_query_secrets_redacted(get, name):
    _assert_redacted(get(name), "secrets", SECRETS)


@pytest.mark.parametrize("name", ALL)
def test_query_secrets_redacted_compound_keys(get, name):
    """api_key, access_token, client_secret, Authorization, sessionid, PASSWORD: secret-looking too."""
    _assert_redacted(get(name), "secrets-compound", COMPOUND_SECRETS)


@pytest.mark.parametrize("name", ALL)
def test_query_secrets_redacted_percent_encoded_keys(get, name):
    """`%70assword=...` is `password=...` to the app: its value is a secret all the same."""
    _assert_redacted(get(name), "secrets-encoded", ENCODED_SECRETS)


@pytest.mark.parametrize("name", ALL)
def test_not_found_named_without_the_path(get, name):
    result = get(name)
    probe = Probe("notfound", path="/nothing-herezq/deeper-zq7/9931")
    assert result.response("notfound").status == 404
    span = result.span("notfound")
    for part in path_parts(probe.path):
        assert part not in span["name"], span["name"]
    assert span["name"] == "GET"
    assert span["status"] == "ok"
    assert span["attributes"].get("http.response.status_code") == 404
    assert span["attributes"].get("url.path") == probe.path
    assert "http.route" not in span["attributes"]


@pytest.mark.parametrize("name", traced())
def test_unhandled_exception(get, name):
    result = get(name)
    assert result.response("boom").status == 500
    span = result.span("boom")
    assert span["name"] == expected_name(result.member.app, "GET", "/boom")
    assert span["status"] == "error"
    assert "ZeroDivisionError" in span["attributes"].get("error.type", ""), span["attributes"]
    if result.member.app != "bare":  # a bare app's exception goes to the server, which writes the 500
        assert span["attributes"].get("http.response.status_code") == 500


@pytest.mark.parametrize("name", ALL)
def test_explicit_5xx_is_an_error(get, name):
    result = get(name)
    resp = result.response("fail")
    assert resp.status == 503 and resp.body == b"unavailable"
    span = result.span("fail")
    assert span["name"] == expected_name(result.member.app, "GET", "/fail")
    assert span["status"] == "error"
    assert span["attributes"].get("http.response.status_code") == 503
    assert span["attributes"].get("error.type"), span["attributes"]


@pytest.mark.parametrize("name", ALL)
def test_streaming_response_lasts_until_consumed(get, name):
    result = get(name)
    resp = result.response("stream")
    assert resp.status == 200
    assert resp.body == b"chunk0;chunk1;chunk2;"
    assert resp.elapsed >= 0.15
    span = result.span("stream")
    assert span["name"] == expected_name(result.member.app, "GET", "/stream")
    assert span["duration_ns"] >= 150_000_000, span["duration_ns"]
    assert span["status"] == "ok"


@pytest.mark.parametrize("name", ALL)
def test_traceparent_continues_the_trace(get, name):
    result = get(name)
    assert result.response("tp-continue").status == 200
    span = result.span("tp-continue")
    assert span["trace_id"] == TRACE_ID
    assert span["parent_id"] == SPAN_ID
    assert span["span_id"] != SPAN_ID


@pytest.mark.parametrize("name", ALL)
def test_traceparent_unsampled_is_not_exported(get, name):
    result = get(name)
    assert result.response("tp-unsampled").status == 200
    assert not result.server_spans(Probe("tp-unsampled").marker)
    assert not [s for s in result.spans if s["trace_id"] == UNSAMPLED_TRACES["tp-unsampled"]]


@pytest.mark.parametrize("name", ALL)
def test_hostile_tracestate_and_baggage_keep_the_trace(get, name):
    """Invalid tracestate and baggage are dropped, but the valid traceparent beside them still counts."""
    result = get(name)
    assert result.response("tp-hostile-tracestate").status == 200
    span = result.span("tp-hostile-tracestate")
    assert (span["trace_id"], span["parent_id"]) == ("3" * 32, "4" * 16)


@pytest.mark.parametrize("name", ALL)
def test_keep_alive_requests_do_not_inherit_context(get, name):
    """Requests one after another on one connection (one server thread): each has only its own context."""
    result = get(name)
    for probe in KEEPALIVE:
        assert result.response(probe.key).status == 200, probe.key
    first = result.span("ka-0")
    assert (first["trace_id"], first["parent_id"]) == (KEEPALIVE_TRACE_ID, "a" * 16)
    assert not [s for s in result.spans if s["trace_id"] == "b" * 32]  # ka-2: unsampled
    fresh = [result.span(key) for key in ("ka-1", "ka-3", "ka-4", "ka-6")]
    for span in fresh:
        assert span["parent_id"] is None
        assert span["trace_id"] not in (KEEPALIVE_TRACE_ID, "b" * 32, "d" * 32)
    assert len({s["trace_id"] for s in fresh}) == len(fresh)
    if result.member.b3:
        assert result.span("ka-5")["trace_id"] == "d" * 32


@pytest.mark.parametrize("name", ALL)
def test_head_request(get, name):
    result = get(name)
    resp = result.response("head")
    assert resp.status == 200
    span = result.span("head")
    assert span["name"] == expected_name(result.member.app, "HEAD", "/hello")
    assert span["attributes"].get("http.request.method") == "HEAD"


@pytest.mark.parametrize("name", ALL)
def test_unknown_method_keeps_names_bounded(get, name):
    """An unknown method is `_OTHER` (the raw one kept aside), and never part of the span name."""
    result = get(name)
    result.response("unknown-method")
    span = result.span("unknown-method")
    attrs = span["attributes"]
    assert attrs.get("http.request.method") == "_OTHER"
    assert attrs.get("http.request.method_original") == UNKNOWN_METHOD
    assert UNKNOWN_METHOD not in span["name"]


@pytest.mark.parametrize("name", ALL)
def test_unknown_method_span_named_http(get, name):
    """OpenTelemetry HTTP span names: when the method is not one the instrumentation knows, `{method}` in
    the name MUST be `HTTP` (so `HTTP`, or `HTTP route`), not `_OTHER`."""
    result = get(name)
    result.response("unknown-method")
    span = result.span("unknown-method")
    assert span["name"] == "HTTP" or span["name"].startswith("HTTP /"), span["name"]


@pytest.mark.parametrize("variant,trace_id,parent_id", [
    ("b3-single", B3_TRACE_ID, B3_SPAN_ID),
    ("b3-single-64", "0" * 16 + B3_64_TRACE_ID, B3_SPAN_ID),
    ("b3-multi", B3_MULTI_TRACE_ID, B3_MULTI_SPAN_ID),
])
@pytest.mark.parametrize("name", traced(b3=True))
def test_b3_continues_the_trace(get, name, variant, trace_id, parent_id):
    result = get(name)
    assert result.response(variant).status == 200
    span = result.span(variant)
    assert (span["trace_id"], span["parent_id"]) == (trace_id, parent_id)


@pytest.mark.parametrize("variant", ["b3-single-unsampled", "b3-multi-unsampled"])
@pytest.mark.parametrize("name", traced(b3=True))
def test_b3_unsampled_is_not_exported(get, name, variant):
    result = get(name)
    assert result.response(variant).status == 200
    assert not result.server_spans(Probe(variant).marker)
    assert not [s for s in result.spans if s["trace_id"] == UNSAMPLED_TRACES[variant]]


@pytest.mark.parametrize("name", traced(b3=False))
def test_b3_ignored_with_default_propagators(get, name):
    result = get(name)
    for variant in ("b3-single", "b3-multi", "b3-single-unsampled", "b3-multi-unsampled"):
        assert result.response(variant).status == 200
        span = result.span(variant)
        assert span["parent_id"] is None, variant
        assert span["trace_id"] not in (B3_TRACE_ID, B3_MULTI_TRACE_ID, "5" * 32, "7" * 32), variant


@pytest.mark.parametrize("kind", sorted(HOSTILE))
@pytest.mark.parametrize("name", ALL)
def test_hostile_headers_start_a_new_trace(get, name, kind):
    result = get(name)
    key = "hostile-" + kind
    resp = result.response(key)
    assert resp.status == 200 and resp.body == b"hello", (resp.status, resp.body[:200])
    span = result.span(key)
    assert span["parent_id"] is None
    assert span["trace_id"] not in HOSTILE_IDS
    assert HEX32.match(span["trace_id"])
    assert span["status"] == "ok"


@pytest.mark.parametrize("name", traced(workers=2))
def test_gunicorn_workers_export_each_span_exactly_once(get, name):
    """Two workers (with and without --preload, sync and gthread): every request's span arrives once."""
    result = get(name)
    result.check()
    assert "burst" not in result.errors, result.errors["burst"]
    assert len(result.burst) == BURST
    pids = collections.Counter(resp.body.decode() for _, resp in result.burst)
    assert len(pids) == 2, "the burst should reach both workers: %s" % dict(pids)
    spans = []
    for probe, resp in result.burst:
        assert resp.status == 200
        found = result.server_spans(probe.marker)
        assert len(found) == 1, "%s: %d spans\n%s" % (probe.key, len(found), result.describe())
        spans += found
    assert len({s["span_id"] for s in spans}) == BURST
    assert all(s["parent_id"] is None for s in spans)  # no context leaks from one request to the next
    assert len({s["trace_id"] for s in spans}) == BURST
    assert {s["name"] for s in spans} == {expected_name(result.member.app, "GET", "/pid")}


TRANSPARENT = ["hello", "user", "notfound", "boom", "fail", "stream", "echo", "head", "unknown-method",
               "tp-continue", "tp-unsampled", "hostile-overlong-10k", "hostile-bad-hex", "b3-single", "ka-0", "ka-4"]


@pytest.mark.parametrize("traced_name,plain_name", PAIRS, ids=[p[0] for p in PAIRS])
def test_agent_is_transparent(get, traced_name, plain_name):
    """The same Flask app with and without the agent: identical status, body and headers (but Date)."""
    with_agent, without = get(traced_name), get(plain_name)
    for key in TRANSPARENT:
        a, b = with_agent.response(key), without.response(key)
        assert (a.status, a.reason) == (b.status, b.reason), key
        assert a.body == b.body, key
        assert a.comparable_headers() == b.comparable_headers(), key
    assert with_agent.spans and not without.spans
