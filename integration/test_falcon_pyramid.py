"""Falcon and Pyramid end to end: real servers (waitress, gunicorn with two workers) under the launcher, real
HTTP requests on 127.0.0.1, server spans read back from each server's jsonl file.

The apps are plain Falcon and Pyramid apps (no autoinstr import, no tween, no middleware): the agent names the
server span after the route template, keeps 404s at the method alone, records exceptions, continues an
incoming trace. The same apps run without the agent on the same servers, to check the agent changes nothing a
client can see. Every server starts once for the module, in parallel; each gets the same probes, then SIGTERM
so the agent's exit flush writes every span; the tests only look at the recorded responses and spans.
"""

from __future__ import annotations

import http.client
import importlib.util
import os
from dataclasses import dataclass, field

import pytest
from fleet import Server, drive_fleet

START_TIMEOUT = 40.0
STOP_TIMEOUT = 20.0
REQUEST_TIMEOUT = 10.0

FALCON_APP = """
import falcon

class Hello:
    def on_get(self, req, resp):
        resp.text = "hello"
        resp.content_type = "text/plain"
        resp.set_header("X-App", "falcon")

class User:
    def on_get(self, req, resp, id):
        resp.media = {"user": id}

class Boom:
    def on_get(self, req, resp):
        resp.text = str(1 / 0)

class Bad:
    def on_get(self, req, resp):
        raise ValueError("bad input")

class Handled:
    def on_get(self, req, resp):
        raise KeyError("backend gone")

class Fail:
    def on_get(self, req, resp):
        resp.status = falcon.HTTP_503
        resp.text = "unavailable"

def value_error(req, resp, ex, params):  # the app's own choice: a 400, not a failure
    resp.status = falcon.HTTP_400
    resp.text = "bad: %s" % ex

def key_error(req, resp, ex, params):  # handled, but still a server failure
    resp.status = falcon.HTTP_503
    resp.text = "handled: %s" % ex

app = falcon.App()
app.add_route("/hello", Hello())
app.add_route("/users/{id}", User())
app.add_route("/boom", Boom())
app.add_route("/bad", Bad())
app.add_route("/handled", Handled())
app.add_route("/fail", Fail())
app.add_error_handler(ValueError, value_error)
app.add_error_handler(KeyError, key_error)
"""

PYRAMID_APP = """
from pyramid.config import Configurator
from pyramid.response import Response

def hello(request):
    return Response("hello", content_type="text/plain", headers={"X-App": "pyramid"})

def user(request):
    return {"user": request.matchdict["id"]}

def boom(request):
    return Response(str(1 / 0))

def bad(request):
    raise ValueError("bad input")

def handled(request):
    raise KeyError("backend gone")

def fail(request):
    return Response("unavailable", status=503)

def value_error(exc, request):  # the app's own choice: a 400, not a failure
    return Response("bad: %s" % exc, status=400)

def key_error(exc, request):  # handled, but still a server failure
    return Response("handled: %s" % exc, status=503)

with Configurator() as config:
    config.add_route("hello", "/hello")
    config.add_view(hello, route_name="hello")
    config.add_route("user", "/users/{id}")
    config.add_view(user, route_name="user", renderer="json", request_method="GET")
    config.add_route("boom", "/boom")
    config.add_view(boom, route_name="boom")
    config.add_route("bad", "/bad")
    config.add_view(bad, route_name="bad")
    config.add_route("handled", "handled")  # no leading slash: Pyramid matches it as /handled
    config.add_view(handled, route_name="handled")
    config.add_route("fail", "/fail")
    config.add_view(fail, route_name="fail")
    config.add_view(value_error, context=ValueError)
    config.add_view(key_error, context=KeyError)
    app = config.make_wsgi_app()
"""

APPS = {"falcon": ("falconapp", FALCON_APP), "pyramid": ("pyramidapp", PYRAMID_APP)}


@dataclass
class Member:
    name: str
    server: str  # waitress, gunicorn
    app: str  # falcon, pyramid
    agent: bool = True
    preload: bool = False

    def argv(self, port: int, bindir: str) -> list:
        module = APPS[self.app][0]
        if self.server == "gunicorn":
            args = [os.path.join(bindir, "gunicorn"), "-w", "2", "-b", "127.0.0.1:%d" % port, "--graceful-timeout", "5"]
            return args + (["--preload"] if self.preload else []) + ["%s:app" % module]
        return ["python", "-c", "from waitress import serve; from %s import app; "
                "serve(app, host='127.0.0.1', port=%d, threads=4)" % (module, port)]


FLEET = [
    Member("waitress-falcon", "waitress", "falcon"),
    Member("gunicorn-falcon", "gunicorn", "falcon"),
    Member("waitress-pyramid", "waitress", "pyramid"),
    Member("gunicorn-pyramid", "gunicorn", "pyramid", preload=True),
    Member("waitress-falcon-noagent", "waitress", "falcon", agent=False),
    Member("gunicorn-falcon-noagent", "gunicorn", "falcon", agent=False),
    Member("waitress-pyramid-noagent", "waitress", "pyramid", agent=False),
    Member("gunicorn-pyramid-noagent", "gunicorn", "pyramid", agent=False, preload=True),
]
TRACED = [m.name for m in FLEET if m.agent]
PAIRS = [(m.name[:-len("-noagent")], m.name) for m in FLEET if not m.agent]

TRACE_ID = "4bf92f3577b34da6a3ce929d0e0e4736"
SPAN_ID = "00f067aa0ba902b7"


@dataclass
class Probe:
    key: str
    path: str
    method: str = "GET"
    headers: list = field(default_factory=list)

    @property
    def target(self) -> str:
        return "%s?probe=%s" % (self.path, self.key)


PROBES = [
    Probe("hello", "/hello"),
    Probe("user", "/users/42"),
    Probe("user-again", "/users/7"),
    Probe("notfound", "/nothing-here/9931"),
    Probe("notfound-deeper", "/nothing/else/here"),
    Probe("boom", "/boom"),
    Probe("bad", "/bad"),
    Probe("handled", "/handled"),
    Probe("fail", "/fail"),
    Probe("traceparent", "/users/5", headers=[("traceparent", "00-%s-%s-01" % (TRACE_ID, SPAN_ID))]),
    Probe("post-user", "/users/42", method="POST"),  # Falcon: 405 on the route; Pyramid: 404 (no view)
    Probe("head", "/hello", method="HEAD"),
]


def _missing(member: Member) -> str:
    for name in (member.server, member.app):
        if importlib.util.find_spec(name) is None:
            return name
    return ""


@dataclass
class Response:
    status: int
    headers: list
    body: bytes

    def comparable(self) -> tuple:
        """Status, body and headers but Date (the clock moves)."""
        headers = sorted((k.lower(), v) for k, v in self.headers if k.lower() != "date")
        return self.status, headers, self.body


def http_request(port: int, probe: Probe) -> Response:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=REQUEST_TIMEOUT)
    try:
        conn.putrequest(probe.method, probe.target, skip_accept_encoding=True)
        for key, value in probe.headers:
            conn.putheader(key, value)
        conn.putheader("User-Agent", "autoinstr-test/1.0")
        conn.endheaders()
        resp = conn.getresponse()
        body = resp.read() if probe.method != "HEAD" else b""
        return Response(resp.status, resp.getheaders(), body)
    finally:
        conn.close()


@dataclass
class Result:
    member: Member
    responses: dict
    spans: list
    stderr: str
    skipped: str = ""


@pytest.fixture(scope="module")
def fleet(sandbox_factory):
    sandbox = sandbox_factory("falcon-pyramid")
    for module, code in APPS.values():
        sandbox.write(module + ".py", code)
    members = [m for m in FLEET if not _missing(m)]
    results = {m.name: Result(m, {}, [], "", skipped="%s is not installed" % _missing(m))
               for m in FLEET if _missing(m)}
    servers = [Server(sandbox, m) for m in members]
    def drive(server: Server) -> dict:
        return {probe.key: http_request(server.port, probe) for probe in PROBES}

    responses = drive_fleet(servers, drive, START_TIMEOUT, STOP_TIMEOUT)
    for server in servers:
        results[server.member.name] = Result(server.member, responses[server.member.name],
                                             sandbox.jsonl_spans(server.jsonl), server.tail(200))
    return results


@pytest.fixture
def get(fleet):
    def get(name: str) -> Result:
        result = fleet[name]
        if result.skipped:
            pytest.skip(result.skipped)
        return result
    return get


def server_spans(result: Result) -> dict:
    """probe key -> its server spans (the probe's key is in url.query)."""
    out: dict = {}
    for span in result.spans:
        if span["kind"] == "server":
            query = span["attributes"].get("url.query", "")
            out.setdefault(query[len("probe="):], []).append(span)
    return out


def span_of(result: Result, key: str) -> dict:
    found = server_spans(result).get(key, [])
    assert len(found) == 1, "%s: %d server spans for probe %r" % (result.member.name, len(found), key)
    return found[0]


# -------------------------------------------------------------------------------------------- tests

@pytest.mark.parametrize("name", TRACED)
def test_every_request_gets_exactly_one_server_span(get, name):
    result = get(name)
    spans = server_spans(result)
    assert sorted(spans) == sorted(p.key for p in PROBES), result.stderr
    assert all(len(v) == 1 for v in spans.values())
    assert len({(s["trace_id"], s["span_id"]) for s in result.spans}) == len(result.spans)
    assert {s["service"] for s in result.spans} == {name}
    # the integration patched cleanly: no warning from the agent
    assert "could not patch" not in result.stderr and "failed at run time" not in result.stderr, result.stderr


@pytest.mark.parametrize("name", TRACED)
def test_route_template_names_the_span(get, name):
    result = get(name)
    for key, path in (("user", "/users/42"), ("user-again", "/users/7"), ("traceparent", "/users/5")):
        span = span_of(result, key)
        assert result.responses[key].status == 200
        assert span["name"] == "GET /users/{id}", span
        attrs = span["attributes"]
        assert attrs["http.route"] == "/users/{id}"
        assert attrs["url.path"] == path and attrs["http.request.method"] == "GET"
        assert attrs["http.response.status_code"] == 200 and span["status"] == "ok"
    hello = span_of(result, "hello")
    assert hello["name"] == "GET /hello" and hello["attributes"]["http.route"] == "/hello"
    assert span_of(result, "head")["name"] == "HEAD /hello"


def test_pyramid_pattern_without_leading_slash(get):
    span = span_of(get("waitress-pyramid"), "handled")
    assert span["name"] == "GET /handled" and span["attributes"]["http.route"] == "/handled"


@pytest.mark.parametrize("name", TRACED)
def test_not_found_named_by_method_alone(get, name):
    result = get(name)
    for key in ("notfound", "notfound-deeper"):
        span = span_of(result, key)
        assert result.responses[key].status == 404
        assert span["name"] == "GET", span
        assert "http.route" not in span["attributes"]
        assert span["attributes"]["http.response.status_code"] == 404 and span["status"] == "ok"


@pytest.mark.parametrize("name", TRACED)
def test_unhandled_exception_is_a_500_and_an_error(get, name):
    result = get(name)
    span = span_of(result, "boom")
    assert result.responses["boom"].status == 500
    assert span["name"] == "GET /boom" and span["status"] == "error"
    attrs = span["attributes"]
    assert attrs["http.response.status_code"] == 500
    assert attrs["error.type"] == "ZeroDivisionError" and "division by zero" in attrs["exception.message"]
    events = [e for e in span["events"] if e["name"] == "exception"]
    assert len(events) == 1, span["events"]  # recorded once, not once per layer
    assert "ZeroDivisionError" in events[0]["attributes"]["exception.stacktrace"]


@pytest.mark.parametrize("name", TRACED)
def test_exception_handled_by_the_app(get, name):
    result = get(name)
    # mapped to a 400 by the app's own handler: an answer, not a failure
    bad = span_of(result, "bad")
    assert result.responses["bad"].status == 400
    assert bad["name"] == "GET /bad" and bad["status"] == "ok" and "error.type" not in bad["attributes"]
    # handled, but answered 503: an error, with the exception that caused it
    handled = span_of(result, "handled")
    assert result.responses["handled"].status == 503
    assert handled["status"] == "error" and handled["attributes"]["error.type"] == "KeyError"
    assert len([e for e in handled["events"] if e["name"] == "exception"]) == 1
    # a 503 the view chose: an error without an exception
    fail = span_of(result, "fail")
    assert result.responses["fail"].status == 503
    assert fail["status"] == "error" and fail["attributes"]["http.response.status_code"] == 503
    assert not fail["events"]


@pytest.mark.parametrize("name", TRACED)
def test_traceparent_continues_the_trace(get, name):
    result = get(name)
    span = span_of(result, "traceparent")
    assert span["trace_id"] == TRACE_ID and span["parent_id"] == SPAN_ID
    others = [s for key, s in server_spans(result).items() if key != "traceparent"]
    assert all(s[0]["trace_id"] != TRACE_ID and s[0]["parent_id"] is None for s in others)


@pytest.mark.parametrize("name", TRACED)
def test_method_not_matching_the_route(get, name):
    result = get(name)
    span = span_of(result, "post-user")
    if result.member.app == "falcon":  # the route matched, the method did not: Falcon's 405
        assert result.responses["post-user"].status == 405
    else:  # Pyramid: the route matched, no view for POST: 404
        assert result.responses["post-user"].status == 404
    assert span["name"] == "POST /users/{id}" and span["status"] == "ok"


@pytest.mark.parametrize("traced,untraced", PAIRS)
def test_responses_identical_without_the_agent(get, traced, untraced):
    with_agent, without = get(traced), get(untraced)
    assert not without.spans
    for probe in PROBES:
        a, b = with_agent.responses[probe.key].comparable(), without.responses[probe.key].comparable()
        assert a == b, "%s differs:\nwith agent:    %r\nwithout agent: %r" % (probe.key, a, b)
