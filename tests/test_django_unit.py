"""The Django integration in-process: a Django app (settings configured once for this process) driven through
its WSGIHandler, patched by autoinstr.integrations.django for each test and unpatched afterwards."""

from __future__ import annotations

import io
import sys
import types
import wsgiref.util

import pytest

django = pytest.importorskip("django")

from autoinstr.integrations import django as integration  # noqa: E402
from autoinstr.trace.span import Span  # noqa: E402

URLCONF = "autoinstr_test_django_urls"
MIDDLEWARE = [
    "django.middleware.security.SecurityMiddleware",
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.common.CommonMiddleware",
    URLCONF + ".timing_middleware",
]
TEMPLATES = {"user.html": "<p>user {{ pk }}</p>{% include 'footer.html' %}", "footer.html": "<footer/>"}
PATCHED = ("django.core.handlers.wsgi", "django.core.handlers.base", "django.core.handlers.exception",
           "django.template.base")


def timing_middleware(get_response):
    def middleware(request):
        response = get_response(request)
        response["X-Timing"] = "1"
        return response
    return middleware


def _urls_module() -> types.ModuleType:
    from django.core.exceptions import PermissionDenied
    from django.http import Http404, HttpResponse
    from django.shortcuts import render
    from django.urls import include, path, re_path
    from django.views import View

    mod = types.ModuleType(URLCONF)

    def user_detail(request, pk):
        return render(request, "user.html", {"pk": pk})

    def article(request, year):
        return HttpResponse("article %s" % year)

    def index(request):
        return HttpResponse("index")

    def boom(request):
        return HttpResponse(str(1 / 0))

    def missing(request):
        raise Http404("no such thing")

    def forbidden(request):
        raise PermissionDenied

    async def async_view(request):
        return HttpResponse("async")

    class Items(View):
        def get(self, request, pk):
            return HttpResponse("item %d" % pk, headers={"X-Item": str(pk)})

    api = [path("items/<int:pk>/", Items.as_view())]
    mod.timing_middleware = timing_middleware
    mod.user_detail = user_detail
    mod.urlpatterns = [
        path("", index),
        path("users/<int:pk>/", user_detail),
        re_path(r"^articles/(?P<year>[0-9]{4})/$", article),
        path("boom/", boom),
        path("missing/", missing),
        path("forbidden/", forbidden),
        path("async/", async_view),
        path("api/", include(api)),
    ]
    return mod


@pytest.fixture(scope="module")
def configured():
    from django.conf import settings

    if not settings.configured:
        settings.configure(
            DEBUG=False, SECRET_KEY="unit-test", ALLOWED_HOSTS=["*"], ROOT_URLCONF=URLCONF, INSTALLED_APPS=[],
            MIDDLEWARE=MIDDLEWARE, DATABASES={},
            SESSION_ENGINE="django.contrib.sessions.backends.signed_cookies",
            TEMPLATES=[{"BACKEND": "django.template.backends.django.DjangoTemplates",
                        "OPTIONS": {"loaders": [("django.template.loaders.locmem.Loader", TEMPLATES)]}}],
            LOGGING_CONFIG=None,
        )
    elif settings.ROOT_URLCONF != URLCONF:
        pytest.skip("Django settings already configured by another test")
    sys.modules[URLCONF] = _urls_module()
    django.setup(set_prefix=False)
    yield
    sys.modules.pop(URLCONF, None)


def _modules():
    import importlib

    return [importlib.import_module(name) for name in PATCHED]


@pytest.fixture
def patched(configured):
    modules = _modules()
    for module in modules:
        integration.patch(module)
    yield
    for module in modules:
        integration.unpatch(module)


def _handler():
    from django.core.handlers.wsgi import WSGIHandler

    return WSGIHandler()


def environ_for(path: str, headers: dict = None) -> dict:
    env: dict = {"REQUEST_METHOD": "GET", "PATH_INFO": path, "QUERY_STRING": "", "SERVER_PROTOCOL": "HTTP/1.1",
                 "wsgi.input": io.BytesIO(b""), "wsgi.errors": io.StringIO()}
    wsgiref.util.setup_testing_defaults(env)
    for k, v in (headers or {}).items():
        env["HTTP_" + k.upper().replace("-", "_")] = v
    return env


def call(handler, path: str, headers: dict = None):
    seen = []

    def start_response(status, response_headers, exc_info=None):
        seen.append((status, sorted(response_headers)))

    result = handler(environ_for(path, headers), start_response)
    try:
        body = b"".join(result)
    finally:
        result.close()
    return seen[0][0], seen[0][1], body


def spans_of(collected):
    return [s for batch in collected for s in batch]


def server_of(spans):
    servers = [s for s in spans if s.kind == "server"]
    assert len(servers) == 1, spans
    return servers[0]


MW_NAMES = ["django.middleware.security.SecurityMiddleware",
            "django.contrib.sessions.middleware.SessionMiddleware",
            "django.middleware.common.CommonMiddleware",
            timing_middleware.__module__ + ".timing_middleware"]


def test_route_middleware_view_and_template_spans(patched, collected):
    status, headers, body = call(_handler(), "/users/7/")
    assert status == "200 OK" and body == b"<p>user 7</p><footer/>"
    spans = spans_of(collected)
    server = server_of(spans)
    assert server.name == "GET users/<int:pk>/" and server.attributes["http.route"] == "users/<int:pk>/"
    by_name = {s.name: s for s in spans}
    # the middleware spans nest in settings order, the outermost under the server span
    parent = server
    for name in MW_NAMES:
        assert by_name[name].parent_id == parent.span_id, name
        assert by_name[name].kind == "internal"
        parent = by_name[name]
    fn = sys.modules[URLCONF].user_detail
    view = by_name["%s.%s" % (fn.__module__, fn.__qualname__)]
    assert view.parent_id == parent.span_id and view.attributes["code.function"].endswith("user_detail")
    render = by_name["render user.html"]
    assert render.parent_id == view.span_id and render.attributes["django.template.name"] == "user.html"
    assert by_name["render footer.html"].parent_id == render.span_id  # {% include %}
    assert all(s.status == "ok" for s in spans)


@pytest.mark.parametrize("path, name", [
    ("/articles/2024/", "GET ^articles/(?P<year>[0-9]{4})/$"),
    ("/", "GET /"),
    ("/api/items/3/", "GET api/items/<int:pk>/"),
    ("/nope/", "GET"),
])
def test_route_names(patched, collected, path, name):
    call(_handler(), path)
    server = server_of(spans_of(collected))
    assert server.name == name
    assert ("http.route" in server.attributes) == (name != "GET")


def test_class_based_view_named_after_its_class(patched, collected):
    status, headers, body = call(_handler(), "/api/items/3/")
    assert body == b"item 3" and ("X-Item", "3") in headers
    names = {s.name for s in spans_of(collected)}
    assert any(n.endswith(".Items") for n in names), names


def test_unresolved_request_has_no_view_span(patched, collected):
    status, _, _ = call(_handler(), "/nope/")
    assert status.startswith("404")
    spans = spans_of(collected)
    server = server_of(spans)
    assert server.name == "GET" and server.status == "ok"
    # Django's default 404 page is an inline template
    assert {s.name for s in spans} == {"GET", *MW_NAMES, "render <unknown source>"}


def test_unhandled_exception_recorded_on_server_span(patched, collected):
    status, _, body = call(_handler(), "/boom/")
    assert status.startswith("500")
    spans = spans_of(collected)
    server = server_of(spans)
    assert server.status == "error" and server.attributes["error.type"] == "ZeroDivisionError"
    assert server.attributes["http.response.status_code"] == 500
    assert [e["name"] for e in server.events] == ["exception"]
    view = next(s for s in spans if s.name.endswith(".boom"))
    assert view.status == "error"


@pytest.mark.parametrize("path, code", [("/missing/", "404"), ("/forbidden/", "403")])
def test_client_error_exceptions_are_not_failures(patched, collected, path, code):
    status, _, _ = call(_handler(), path)
    assert status.startswith(code)
    spans = spans_of(collected)
    assert all(s.status == "ok" for s in spans), [(s.name, s.status) for s in spans]
    assert server_of(spans).attributes["http.response.status_code"] == int(code)


def test_async_view_left_to_django(patched, collected):
    status, _, body = call(_handler(), "/async/")
    assert status == "200 OK" and body == b"async"
    names = {s.name for s in spans_of(collected)}
    assert names == {"GET async/", *MW_NAMES}  # no view span: Django runs it as it would


def test_traceparent_continued(patched, collected):
    call(_handler(), "/users/1/", {"traceparent": "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"})
    server = server_of(spans_of(collected))
    assert server.trace_id == 0x4bf92f3577b34da6a3ce929d0e0e4736 and server.parent_id == 0x00f067aa0ba902b7


def test_no_spans_without_a_server_span(patched, collected):
    """Django's test client calls the handler without WSGI: nothing recorded, nothing orphaned."""
    from django.test import Client

    response = Client().get("/users/2/")
    assert response.status_code == 200 and response.content == b"<p>user 2</p><footer/>"
    assert spans_of(collected) == []


PATHS = ["/users/7/", "/articles/2024/", "/", "/api/items/3/", "/nope/", "/boom/", "/missing/", "/forbidden/",
         "/async/", "/users/7"]


def test_responses_identical_with_and_without_the_integration(configured, collected):
    plain = [call(_handler(), p) for p in PATHS]
    modules = _modules()
    for module in modules:
        integration.patch(module)
    try:
        traced = [call(_handler(), p) for p in PATHS]
    finally:
        for module in modules:
            integration.unpatch(module)
    assert traced == plain
    assert len([s for s in spans_of(collected) if s.kind == "server"]) == len(PATHS)


class _Broken(Span):
    __slots__ = ()

    def __init__(self, *args, **kwargs):
        raise RuntimeError("agent bug")


def test_agent_failure_never_reaches_the_app(patched, collected, monkeypatch):
    expected = {}
    for p in PATHS:
        expected[p] = call(_handler(), p)
    monkeypatch.setattr(integration, "Span", _Broken)
    monkeypatch.setattr(integration, "set_route", lambda *a, **k: 1 / 0)
    for p in PATHS:
        assert call(_handler(), p) == expected[p]


def test_unpatch_restores_django(configured):
    from django.core.handlers import base, exception, wsgi
    from django.template import base as template_base

    originals = (wsgi.WSGIHandler.__dict__["__call__"], base.BaseHandler.__dict__["resolve_request"],
                 base.BaseHandler.__dict__["make_view_atomic"], base.convert_exception_to_response,
                 exception.response_for_exception, template_base.Template.__dict__["render"])
    modules = _modules()
    for module in modules:
        integration.patch(module)
    assert base.convert_exception_to_response is not originals[3]
    for module in modules:
        integration.unpatch(module)
    assert (wsgi.WSGIHandler.__dict__["__call__"], base.BaseHandler.__dict__["resolve_request"],
            base.BaseHandler.__dict__["make_view_atomic"], base.convert_exception_to_response,
            exception.response_for_exception, template_base.Template.__dict__["render"]) == originals
