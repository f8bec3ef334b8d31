"""Hostile UI query parameters (hypothesis): every page and API route of the web UI, over a real store,
answers anything a browser can send with a page or a 4xx, never a 500, and never echoes markup unescaped
(span names, attribute values and parameters alike) in its HTML."""

from __future__ import annotations

import io
import os
import urllib.parse

import pytest

hypothesis = pytest.importorskip("hypothesis")
ui_app = pytest.importorskip("autoinstr.ui.app")
from hypothesis import HealthCheck, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

from autoinstr.store import Store  # noqa: E402

MARKUP = "<script>zq9()</script>"
ROUTES = ["/", "/service", "/endpoint", "/search", "/queries", "/map", "/trace/" + "a" * 32, "/api/services",
          "/api/service", "/api/endpoint", "/api/search", "/api/queries", "/api/map", "/api/status", "/nope"]
PARAMS = ["range", "from", "to", "service", "op", "kind", "sort", "dir", "min_ms", "errors", "attr", "trace",
          "before", "span", "unknown"]
values = st.one_of(
    st.text(max_size=40),
    st.sampled_from(["15m", "1h", "all", "7d", "-1", "0", "1e308", "nan", "2024-01-01T00:00:00Z", "9" * 20,
                     "svc", "GET /x", "server", "asc", "desc", "true", "1", "http.route=/x", "a" * 32, "b" * 16,
                     MARKUP, "%00", "' OR 1=1 --", "\u202e", "../../etc/passwd"]),
)


@pytest.fixture(scope="module")
def app(tmp_path_factory):
    if not hasattr(ui_app, "UIApp"):
        pytest.skip("the UI has no UIApp yet")
    folder = tmp_path_factory.mktemp("ui-fuzz")
    path = os.path.join(str(folder), "spans.db")
    store = Store(path)
    import time

    now = time.time_ns()
    records = []
    for i in range(30):
        records.append({"trace_id": "%032x" % (i + 1), "span_id": "%016x" % (i + 1), "parent_id": None,
                        "name": "GET " + (MARKUP if i % 3 == 0 else "/x"), "kind": "server",
                        "service": "svc" if i % 2 else MARKUP, "start_ns": now - i * 1_000_000_000,
                        "duration_ns": 1_000_000 * (i + 1), "status": "error" if i % 5 == 0 else "ok",
                        "attributes": {"http.route": "/x", "note": MARKUP}, "events": []})
        records.append({"trace_id": "%032x" % (i + 1), "span_id": "%016x" % (1000 + i), "parent_id": "%016x" % (i + 1),
                        "name": "SELECT t", "kind": "client", "service": "svc", "start_ns": now - i * 1_000_000_000,
                        "duration_ns": 500_000, "status": "ok",
                        "attributes": {"db.system": "sqlite", "db.query.text": "SELECT " + MARKUP}, "events": []})
    store.insert(records)
    store.close()
    application = ui_app.UIApp(path, start_indexer=False)
    yield application
    application.close()


def call(app, path: str, query: str):
    environ = {"REQUEST_METHOD": "GET", "PATH_INFO": path, "QUERY_STRING": query, "SERVER_NAME": "127.0.0.1",
               "SERVER_PORT": "80", "wsgi.input": io.BytesIO(), "wsgi.errors": io.StringIO(), "wsgi.url_scheme": "http",
               "HTTP_ACCEPT": "text/html"}
    seen = []
    body = b"".join(app(environ, lambda status, headers, exc_info=None: seen.append((status, headers))))
    return int(seen[0][0].split()[0]), dict(seen[0][1]), body


@settings(max_examples=int(os.environ.get("AUTOINSTR_FUZZ_EXAMPLES", "100")), deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(st.sampled_from(ROUTES), st.dictionaries(st.sampled_from(PARAMS), values, max_size=6))
def test_ui_answers_hostile_parameters_without_500_or_unescaped_markup(app, route, params):
    status, headers, body = call(app, route, urllib.parse.urlencode(params))
    assert status in (200, 302, 400, 404), (route, params, status, body[:300])
    if headers.get("Content-Type", "").startswith("text/html"):  # JSON carries data as data (nosniff)
        assert b"<script>zq9" not in body, (route, params)
    else:
        assert headers.get("X-Content-Type-Options") == "nosniff"
    assert "Content-Security-Policy" in headers
