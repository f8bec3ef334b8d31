"""The shared WSGI mechanism, driven in-process through wsgiref's own validator-free handler calls: one
server span per request, ended with the body, WSGI semantics untouched."""

from __future__ import annotations

import io
import wsgiref.util

import pytest

from autoinstr.integrations import _wsgi
from autoinstr.integrations._wsgi import NamePool, TracedApp, redact_query, set_route, wrap_app
from autoinstr.trace.span import Sampling


def environ_for(path: str = "/x", query: str = "", headers: dict = None, method: str = "GET") -> dict:
    env: dict = {"REQUEST_METHOD": method, "PATH_INFO": path, "QUERY_STRING": query,
                 "SERVER_PROTOCOL": "HTTP/1.1", "REMOTE_ADDR": "10.1.2.3"}
    wsgiref.util.setup_testing_defaults(env)
    for k, v in (headers or {}).items():
        env["HTTP_" + k.upper().replace("-", "_")] = v
    return env


class Recorder:
    def __init__(self) -> None:
        self.calls: list = []

    def __call__(self, status, headers, exc_info=None):
        self.calls.append((status, headers, exc_info))
        return lambda data: None


def run(app, env):
    sr = Recorder()
    result = app(env, sr)
    body = b"".join(result)
    if hasattr(result, "close"):
        result.close()
    return sr, body


def one_server_span(collected):
    spans = [s for batch in collected for s in batch if s.kind == "server"]
    assert len(spans) == 1, spans
    return spans[0]


def test_server_span_attributes_and_status(collected):
    def app(environ, start_response):
        start_response("200 OK", [("Content-Type", "text/plain"), ("Content-Length", "2")])
        return [b"ok"]

    sr, body = run(wrap_app(app), environ_for("/users/7", "id=7&password=hunter2&api_key=k1", {"User-Agent": "ua/1"}))
    assert body == b"ok" and sr.calls[0][0] == "200 OK"
    span = one_server_span(collected)
    a = span.attributes
    assert span.name == "GET" and span.status == "ok" and span.parent_id is None
    assert a["http.request.method"] == "GET" and a["url.path"] == "/users/7" and a["url.scheme"] == "http"
    assert a["url.query"] == "id=7&password=REDACTED&api_key=REDACTED"
    assert a["http.response.status_code"] == 200 and a["http.response.body.size"] == 2
    assert a["client.address"] == "10.1.2.3" and a["user_agent.original"] == "ua/1"
    assert a["server.address"] == "127.0.0.1" and a["server.port"] == 80


def test_5xx_is_an_error_and_app_exceptions_reraise_unchanged(collected):
    def five(environ, start_response):
        start_response("503 Service Unavailable", [])
        return [b""]

    run(wrap_app(five), environ_for())
    assert one_server_span(collected).status == "error"
    collected.clear()

    class Boom(Exception):
        pass

    def broken(environ, start_response):
        raise Boom("no")

    with pytest.raises(Boom):
        wrap_app(broken)(environ_for(), Recorder())
    span = one_server_span(collected)
    assert span.status == "error" and span.attributes["error.type"].endswith("Boom")


def test_span_ends_when_the_body_is_closed_and_close_is_forwarded(collected):
    closed = []

    class Body:
        def __iter__(self):
            yield b"a"
            yield b"b"

        def close(self):
            closed.append(True)

    def app(environ, start_response):
        start_response("200 OK", [])
        return Body()

    result = wrap_app(app)(environ_for(), Recorder())
    assert collected == []  # not ended when the app returned
    assert next(iter(result)) == b"a"
    assert collected == []  # nor while the body is being sent
    result.close()
    assert closed == [True]
    one_server_span(collected)


def test_len_and_file_wrapper_are_kept(collected):
    def listing(environ, start_response):
        start_response("200 OK", [])
        return [b"one block"]

    result = wrap_app(listing)(environ_for(), Recorder())
    assert len(result) == 1  # servers use it to set Content-Length
    list(result)

    class FileWrapper:
        def __init__(self, f, blksize=8192):
            self.f = f
            self.closed = False

        def __iter__(self):
            return iter([self.f.read()])

        def close(self):
            self.closed = True

    def sender(environ, start_response):
        start_response("200 OK", [])
        return environ["wsgi.file_wrapper"](io.BytesIO(b"file body"))

    env = environ_for()
    env["wsgi.file_wrapper"] = FileWrapper
    collected.clear()
    result = wrap_app(sender)(env, Recorder())
    assert isinstance(result, FileWrapper)  # the server's sendfile path stays open
    assert list(result) == [b"file body"]
    result.close()
    assert result.closed
    one_server_span(collected)


def test_start_response_with_exc_info_reaches_the_server(collected):
    def app(environ, start_response):
        try:
            raise ValueError("late")
        except ValueError:
            import sys

            start_response("500 Internal Server Error", [], sys.exc_info())
        return [b"err"]

    sr, _ = run(wrap_app(app), environ_for())
    assert sr.calls[0][2] is not None and sr.calls[0][2][0] is ValueError


def test_incoming_traceparent_is_continued_and_unsampled_obeyed(collected):
    def app(environ, start_response):
        start_response("200 OK", [])
        return [b""]

    tid, sid = "4bf92f3577b34da6a3ce929d0e0e4736", "00f067aa0ba902b7"
    run(wrap_app(app), environ_for(headers={"traceparent": "00-%s-%s-01" % (tid, sid)}))
    span = one_server_span(collected)
    assert "%032x" % span.trace_id == tid and "%016x" % span.parent_id == sid
    collected.clear()
    run(wrap_app(app), environ_for(headers={"traceparent": "00-%s-%s-00" % (tid, sid)}))
    assert collected == []
    run(wrap_app(app), environ_for(headers={"traceparent": "00-" + "0" * 32 + "-" + sid + "-01"}))
    assert one_server_span(collected).parent_id is None  # invalid: a new trace


def test_nested_wrappers_make_one_span_and_wrap_is_idempotent(collected):
    def app(environ, start_response):
        start_response("200 OK", [])
        return [b""]

    traced = wrap_app(app)
    assert wrap_app(traced) is traced and isinstance(traced, TracedApp)
    run(wrap_app(TracedApp(traced)), environ_for())
    one_server_span(collected)


def test_a_server_serves_a_framework_app_unwrapped_when_the_framework_makes_the_span(collected, monkeypatch):
    """An app whose class __call__ wsgi_method replaced (Flask's, Django's) makes its own server span: a
    server's wrapper would only pass through, so wrap_app hands it back as is. A subclass whose own __call__
    comes first is wrapped (its __call__ may do anything before the framework's)."""
    import types

    from autoinstr.integrations._wrapping import replace, unwrap

    class Framework:
        def __call__(self, environ, start_response):
            start_response("200 OK", [])
            return [b"ok"]

    class Customised(Framework):
        def __call__(self, environ, start_response):
            return super().__call__(environ, start_response)

    module = types.ModuleType("framework_for_test")
    module.Framework = Framework  # type: ignore[attr-defined]
    plain = Framework()
    assert isinstance(wrap_app(plain), TracedApp)  # not replaced yet: a server wraps it
    replace(module, "Framework.__call__", _wsgi.wsgi_method)
    try:
        app, custom = Framework(), Customised()
        assert wrap_app(app) is app
        assert isinstance(wrap_app(custom), TracedApp)
        _, body = run(wrap_app(app), environ_for())
        assert body == b"ok"
        one_server_span(collected)
        collected.clear()
        run(wrap_app(custom), environ_for())  # the two wrappers nest: one span
        one_server_span(collected)
    finally:
        unwrap(module, "Framework.__call__")
    assert isinstance(wrap_app(app), TracedApp)  # unpatched: wrapped again


def test_each_request_gets_its_own_connections_attributes(collected, monkeypatch):
    """What a connection's requests share is worked out once per connection (the compiled path also keeps the last
    one at hand): requests alternating between connections each get their own; once the cache is full, each is
    worked out afresh (a request without Host: the server's own name and port)."""
    def app(environ, start_response):
        start_response("200 OK", [])
        return [b""]

    traced = wrap_app(app)

    def serve(host, client, port="80"):
        env = environ_for(headers={"Host": host} if host else None)
        env.update(REMOTE_ADDR=client, SERVER_PORT=port, SERVER_NAME="srv")
        if not host:
            env.pop("HTTP_HOST", None)
        collected.clear()
        run(traced, env)
        attrs = one_server_span(collected).attributes
        return attrs.get("server.address"), attrs.get("server.port"), attrs.get("client.address")

    for _ in range(3):
        assert serve("a.example:8001", "10.0.0.1") == ("a.example", 8001, "10.0.0.1")
        assert serve("b.example:8002", "10.0.0.2") == ("b.example", 8002, "10.0.0.2")
        assert serve("b.example:8002", "10.0.0.3") == ("b.example", 8002, "10.0.0.3")
    monkeypatch.setattr(_wsgi, "_connections", {("x", i): {} for i in range(1024)})
    assert serve(None, "10.0.0.9", "81") == ("srv", 81, "10.0.0.9")
    assert serve(None, "10.0.0.9", "82") == ("srv", 82, "10.0.0.9")  # (full: not kept, worked out again)
    assert len(_wsgi._connections) == 1024


def test_routes_name_spans_from_a_bounded_pool(collected, monkeypatch):
    monkeypatch.setattr(NamePool, "names", set())
    monkeypatch.setattr(NamePool, "limit", 2)
    monkeypatch.setattr(NamePool, "overflow", 0)

    def app(environ, start_response):
        set_route("/r/%s" % environ["PATH_INFO"][-1], environ)
        start_response("200 OK", [])
        return [b""]

    for path in ("/a", "/b", "/a", "/c", "/d"):
        run(wrap_app(app), environ_for(path))
    names = [s.name for batch in collected for s in batch]
    assert names == ["GET /r/a", "GET /r/b", "GET /r/a", "other", "other"]
    assert NamePool.overflow == 2


def test_unsampled_requests_still_answer(collected):
    Sampling.configure(0.0)

    def app(environ, start_response):
        start_response("200 OK", [])
        return [b"fine"]

    _, body = run(wrap_app(app), environ_for())
    assert body == b"fine" and collected == []


def test_redact_query_and_server_of():
    assert redact_query("") == ""
    assert redact_query("a=1&session_id=x&sig=y&plain") == "a=1&session_id=REDACTED&sig=REDACTED&plain"
    env = environ_for(headers={"Host": "[::1]:8443"})
    assert _wsgi._server_of(env) == ("::1", 8443)
    env = environ_for(headers={"Host": "shop.example"})
    env["wsgi.url_scheme"] = "https"
    assert _wsgi._server_of(env) == ("shop.example", 443)


def test_trace_response_headers_when_asked(collected, monkeypatch):
    monkeypatch.setattr(_wsgi, "_RESPONSE_HEADERS", True)

    def app(environ, start_response):
        start_response("200 OK", [("Content-Type", "text/plain")])
        return [b""]

    sr, _ = run(wrap_app(app), environ_for())
    headers = dict(sr.calls[0][1])
    span = one_server_span(collected)
    assert headers["traceresponse"] == "00-%032x-%016x-01" % (span.trace_id, span.span_id)
    assert headers["Server-Timing"].startswith("app;dur=") and "%032x" % span.trace_id in headers["Server-Timing"]
    monkeypatch.setattr(_wsgi, "_RESPONSE_HEADERS", False)
    collected.clear()
    sr, _ = run(wrap_app(app), environ_for())
    assert "traceresponse" not in dict(sr.calls[0][1])


def test_headers_recorded_only_when_allow_listed(collected, monkeypatch):
    def app(environ, start_response):
        start_response("200 OK", [("X-Served-By", "node-1"), ("Set-Cookie", "s=1"), ("Set-Cookie", "t=2")])
        return [b""]

    env = environ_for(headers={"X-Request-Id": "r-1", "Authorization": "Bearer secret", "Accept": "*/*"})
    run(wrap_app(app), dict(env))
    attrs = one_server_span(collected).attributes
    assert not any(k.startswith(("http.request.header.", "http.response.header.")) for k in attrs)
    collected.clear()
    monkeypatch.setattr(_wsgi, "_CAPTURE_REQUEST", (("x-request-id", "HTTP_X_REQUEST_ID"),
                                                    ("authorization", "HTTP_AUTHORIZATION")))
    monkeypatch.setattr(_wsgi, "_CAPTURE_RESPONSE", frozenset(("x-served-by", "set-cookie")))
    run(wrap_app(app), dict(env))
    attrs = one_server_span(collected).attributes
    assert attrs["http.request.header.x-request-id"] == ["r-1"]
    assert attrs["http.request.header.authorization"] == ["REDACTED"]  # credentials never, even if listed
    assert attrs["http.response.header.x-served-by"] == ["node-1"]
    assert attrs["http.response.header.set-cookie"] == ["REDACTED", "REDACTED"]
    assert "http.request.header.accept" not in attrs


def test_spans_made_while_streaming_are_children_and_context_is_restored(collected):
    from autoinstr.trace.span import Span, current_span

    def app(environ, start_response):
        start_response("200 OK", [])

        def body():
            with Span("chunk-work"):
                yield b"a"
            yield b"b"
        return body()

    assert current_span() is None
    result = wrap_app(app)(environ_for(), Recorder())
    assert b"".join(result) == b"ab"
    result.close()
    assert current_span() is None  # the request's span is not left current once its body is done
    spans = {s.name: s for batch in collected for s in batch}
    assert spans["chunk-work"].parent_id == spans["GET"].span_id


def test_body_sent_from_another_thread(collected):
    """A server that sends the body from a thread of its own: the span still ends, contexts stay clean."""
    import threading

    from autoinstr.trace.span import current_span

    def app(environ, start_response):
        start_response("200 OK", [])
        return iter([b"x", b"y"])

    result = wrap_app(app)(environ_for(), Recorder())
    seen = []

    def writer():
        seen.append(b"".join(result))
        result.close()
        seen.append(current_span())

    t = threading.Thread(target=writer)
    t.start()
    t.join(5)
    assert seen == [b"xy", None]
    one_server_span(collected)
