"""Django end to end: a one-file Django project served by gunicorn (2 workers) and by wsgiref under the
launcher, real HTTP requests, spans read back from each server's jsonl file.

The servers start once for the module, in parallel; every server gets the same probes (one request each,
marked by a unique User-Agent so its server span can be found), then is stopped with SIGTERM so the agent's
exit flush writes everything. Two more servers run the same project without the agent, for the check that
the agent changes nothing a client sees, and one wsgiref server runs with the wsgiref integration disabled:
its server spans then come from Django's own WSGIHandler.__call__ (a server autoinstr does not know).
"""

from __future__ import annotations

import collections
import concurrent.futures
import http.client
import importlib.util
import os
from dataclasses import dataclass, field

import pytest
from fleet import Server, drive_fleet

pytestmark = pytest.mark.skipif(importlib.util.find_spec("django") is None, reason="django not installed")

START_TIMEOUT = 40.0
STOP_TIMEOUT = 20.0
BURST = 20

DJANGO_APP = """
import os

from django.conf import settings

settings.configure(
    DEBUG=False,
    SECRET_KEY="autoinstr-integration-test",
    ALLOWED_HOSTS=["*"],
    ROOT_URLCONF=__name__,
    INSTALLED_APPS=[],
    DATABASES={},
    MIDDLEWARE=[
        "django.middleware.security.SecurityMiddleware",
        "django.contrib.sessions.middleware.SessionMiddleware",
        "django.middleware.common.CommonMiddleware",
        "django.middleware.csrf.CsrfViewMiddleware",
        __name__ + ".AppHeaderMiddleware",
    ],
    SESSION_ENGINE="django.contrib.sessions.backends.signed_cookies",
    TEMPLATES=[{
        "BACKEND": "django.template.backends.django.DjangoTemplates",
        "OPTIONS": {"loaders": [("django.template.loaders.locmem.Loader", {
            "user.html": "<h1>user {{ pk }}</h1>{% include 'footer.html' %}",
            "footer.html": "<footer>shop</footer>",
        })]},
    }],
)

from django.core.wsgi import get_wsgi_application  # noqa: E402
from django.http import HttpResponse  # noqa: E402
from django.shortcuts import render  # noqa: E402
from django.urls import path, re_path  # noqa: E402


class AppHeaderMiddleware:
    def __init__(self, get_response):
        self.get_response = get_response

    def __call__(self, request):
        response = self.get_response(request)
        response["X-App"] = "django"
        return response


def hello(request):
    return HttpResponse("hello", headers={"X-View": "hello"})


def user(request, pk):
    return render(request, "user.html", {"pk": pk})


def article(request, year):
    return HttpResponse("article %s" % year, content_type="text/plain")


def boom(request):
    return HttpResponse(str(1 / 0))


def fail(request):
    return HttpResponse("unavailable", status=503)


def pid(request):
    return HttpResponse(str(os.getpid()))


urlpatterns = [
    path("hello/", hello),
    path("users/<int:pk>/", user),
    re_path(r"^articles/(?P<year>[0-9]{4})/$", article),
    path("boom/", boom),
    path("fail/", fail),
    path("pid/", pid),
]

application = get_wsgi_application()
"""

MIDDLEWARE = [
    "django.middleware.security.SecurityMiddleware",
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "djangoapp.AppHeaderMiddleware",
]
TRACE_ID = "4bf92f3577b34da6a3ce929d0e0e4736"
SPAN_ID = "00f067aa0ba902b7"


@dataclass
class Probe:
    key: str
    method: str = "GET"
    path: str = "/hello/"
    headers: list = field(default_factory=list)

    @property
    def user_agent(self) -> str:
        return "autoinstr-django-test probe-%s-z" % self.key


PROBES = [
    Probe("hello"),
    Probe("user", path="/users/42/"),
    Probe("article", path="/articles/2024/"),
    Probe("notfound", path="/no/such/page/"),
    Probe("boom", path="/boom/"),
    Probe("fail", path="/fail/"),
    Probe("redirect", path="/hello"),  # CommonMiddleware's APPEND_SLASH: 301
    Probe("csrf", method="POST", path="/hello/"),  # CsrfViewMiddleware refuses it: 403
    Probe("traceparent", path="/users/7/", headers=[("traceparent", "00-%s-%s-01" % (TRACE_ID, SPAN_ID))]),
]


@dataclass
class Member:
    name: str
    server: str  # gunicorn or wsgiref
    agent: bool = True
    env: dict = field(default_factory=dict)

    def argv(self, port: int, bindir: str) -> list:
        if self.server == "gunicorn":
            return [os.path.join(bindir, "gunicorn"), "-w", "2", "-b", "127.0.0.1:%d" % port,
                    "--graceful-timeout", "5", "djangoapp:application"]
        return ["python", "-c", "from wsgiref.simple_server import make_server; from djangoapp import application; "
                "make_server('127.0.0.1', %d, application).serve_forever()" % port]


FLEET = [
    Member("gunicorn", "gunicorn"),
    Member("wsgiref", "wsgiref"),
    # no server integration: the server span comes from Django's WSGIHandler.__call__
    Member("wsgiref-django-only", "wsgiref", env={"AUTOINSTR_DISABLED_INTEGRATIONS": "wsgiref"}),
    Member("gunicorn-noagent", "gunicorn", agent=False),
    Member("wsgiref-noagent", "wsgiref", agent=False),
]
TRACED = [m.name for m in FLEET if m.agent]
PAIRS = [("gunicorn", "gunicorn-noagent"), ("wsgiref", "wsgiref-noagent")]


@dataclass
class Response:
    status: int
    reason: str
    headers: list
    body: bytes

    def comparable(self) -> tuple:
        headers = sorted((k.lower(), v) for k, v in self.headers if k.lower() != "date")
        return self.status, self.reason, headers, self.body


def request(port: int, probe: Probe) -> Response:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        conn.putrequest(probe.method, probe.path, skip_accept_encoding=True)
        conn.putheader("User-Agent", probe.user_agent)
        for key, value in probe.headers:
            conn.putheader(key, value)
        if probe.method == "POST":
            conn.putheader("Content-Length", "0")
        conn.endheaders()
        resp = conn.getresponse()
        return Response(resp.status, resp.reason, resp.getheaders(), resp.read())
    finally:
        conn.close()


@dataclass
class Result:
    responses: dict  # probe key -> Response
    spans: list
    server: Server

    def server_span(self, key: str) -> dict:
        marker = "probe-%s-z" % key
        found = [s for s in self.spans if s["kind"] == "server"
                 and marker in str(s["attributes"].get("user_agent.original", ""))]
        assert len(found) == 1, "%s: %d server spans for probe %s\n%s" % (
            self.server.member.name, len(found), key, self.server.tail())
        return found[0]

    def trace_of(self, key: str) -> list:
        trace_id = self.server_span(key)["trace_id"]
        return [s for s in self.spans if s["trace_id"] == trace_id]


def _drive(server: Server) -> dict:
    responses = {probe.key: request(server.port, probe) for probe in PROBES}
    if server.member.server == "gunicorn":
        burst = Probe("burst", path="/pid/")
        with concurrent.futures.ThreadPoolExecutor(4) as pool:
            responses["burst"] = list(pool.map(lambda _: request(server.port, burst), range(BURST)))
    return responses


@pytest.fixture(scope="module")
def fleet(sandbox_factory):
    sandbox = sandbox_factory("django")
    sandbox.write("djangoapp.py", DJANGO_APP)
    servers = [Server(sandbox, member, env=member.env) for member in FLEET]
    results = {}
    driven = drive_fleet(servers, _drive, START_TIMEOUT, STOP_TIMEOUT)
    for server in servers:
        results[server.member.name] = Result(driven[server.member.name], sandbox.jsonl_spans(server.jsonl), server)
    return results


@pytest.fixture(params=TRACED)
def traced(request, fleet):
    return fleet[request.param]


# -------------------------------------------------------------------------------------------- tests

def test_route_template_names_the_server_span(traced):
    span = traced.server_span("user")
    assert span["name"] == "GET users/<int:pk>/"
    assert span["attributes"]["http.route"] == "users/<int:pk>/"
    assert span["attributes"]["url.path"] == "/users/42/"
    assert span["attributes"]["http.response.status_code"] == 200 and span["status"] == "ok"
    assert span["parent_id"] is None
    regex = traced.server_span("article")
    assert regex["name"] == "GET ^articles/(?P<year>[0-9]{4})/$"
    assert regex["attributes"]["http.route"] == "^articles/(?P<year>[0-9]{4})/$"


def test_unresolved_requests_keep_the_method_name(traced):
    for key in ("notfound", "redirect"):  # no route: 404, and APPEND_SLASH's redirect of /hello
        span = traced.server_span(key)
        assert span["name"] == "GET" and "http.route" not in span["attributes"], span
        assert span["status"] == "ok"
    assert traced.server_span("notfound")["attributes"]["http.response.status_code"] == 404
    assert traced.server_span("redirect")["attributes"]["http.response.status_code"] == 301
    csrf = traced.server_span("csrf")
    assert csrf["name"] == "POST hello/" and csrf["attributes"]["http.response.status_code"] == 403
    assert csrf["status"] == "ok"


def test_view_exception_is_a_500_with_status_error(traced):
    assert traced.responses["boom"].status == 500
    span = traced.server_span("boom")
    assert span["name"] == "GET boom/" and span["status"] == "error"
    assert span["attributes"]["error.type"] == "ZeroDivisionError"
    assert span["attributes"]["http.response.status_code"] == 500
    assert [e["name"] for e in span["events"]] == ["exception"]
    assert "ZeroDivisionError" in span["events"][0]["attributes"]["exception.stacktrace"]
    view = [s for s in traced.trace_of("boom") if s["name"] == "djangoapp.boom"]
    assert len(view) == 1 and view[0]["status"] == "error"
    fail = traced.server_span("fail")  # a 5xx the view chose is an error too
    assert fail["status"] == "error" and fail["attributes"]["http.response.status_code"] == 503


def test_middleware_view_and_template_spans(traced):
    trace = traced.trace_of("user")
    server = traced.server_span("user")
    by_name = {s["name"]: s for s in trace}
    parent = server
    for name in MIDDLEWARE:  # each middleware in a span, nested in settings order under the server span
        span = by_name.get(name)
        assert span is not None, (name, sorted(by_name))
        assert span["kind"] == "internal" and span["parent_id"] == parent["span_id"], name
        assert span["start_ns"] >= parent["start_ns"] and span["duration_ns"] <= parent["duration_ns"]
        parent = span
    view = by_name["djangoapp.user"]
    assert view["parent_id"] == parent["span_id"] and view["attributes"]["code.function"] == "user"
    render = by_name["render user.html"]
    assert render["parent_id"] == view["span_id"] and render["kind"] == "internal"
    assert by_name["render footer.html"]["parent_id"] == render["span_id"]
    assert len(trace) == 1 + len(MIDDLEWARE) + 3
    assert {s["service"] for s in trace} == {traced.server.member.name}


def test_traceparent_is_continued(traced):
    span = traced.server_span("traceparent")
    assert span["trace_id"] == TRACE_ID and span["parent_id"] == SPAN_ID
    assert span["name"] == "GET users/<int:pk>/"
    assert all(s["trace_id"] == TRACE_ID for s in traced.trace_of("traceparent"))


def test_every_request_has_one_server_span(traced):
    traced_spans = traced.spans
    servers = [s for s in traced_spans if s["kind"] == "server"]
    expected = len(PROBES) + (BURST if traced.server.member.server == "gunicorn" else 0)
    assert len(servers) == expected, collections.Counter(s["name"] for s in servers)
    counts = collections.Counter((s["trace_id"], s["span_id"]) for s in traced_spans)
    assert max(counts.values()) == 1


def test_gunicorn_workers_each_export_their_requests(fleet):
    result = fleet["gunicorn"]
    pids = collections.Counter(r.body.decode() for r in result.responses["burst"])
    assert all(r.status == 200 for r in result.responses["burst"])
    burst = [s for s in result.spans if s["kind"] == "server" and s["name"] == "GET pid/"]
    assert len(burst) == BURST, result.server.tail()
    assert sum(pids.values()) == BURST


@pytest.mark.parametrize("with_agent, without_agent", PAIRS)
def test_responses_identical_with_and_without_the_agent(fleet, with_agent, without_agent):
    traced, plain = fleet[with_agent].responses, fleet[without_agent].responses
    for probe in PROBES:
        assert traced[probe.key].comparable() == plain[probe.key].comparable(), probe.key
    assert traced["user"].body == b"<h1>user 42</h1><footer>shop</footer>"
    assert ("X-App", "django") in traced["hello"].headers
    assert plain["boom"].status == 500 and plain["notfound"].status == 404
