"""The HTTP client integrations in-process: real clients (requests, urllib3, urllib.request, http.client,
httpx sync and async, aiohttp) against a real server on 127.0.0.1 in a thread of this process, the
integrations patched as the agent patches them. The server records the headers each request arrived with."""

from __future__ import annotations

import asyncio
import contextvars
import http.client
import http.server
import json
import socket
import threading
import time
import urllib.error
import urllib.request

import pytest

from autoinstr.integrations import _http, suppress_instrumentation
from autoinstr.trace.propagation import Propagators, extract
from autoinstr.trace.span import Sampling, Span

requests = pytest.importorskip("requests")
urllib3 = pytest.importorskip("urllib3")
httpx = pytest.importorskip("httpx")
aiohttp = pytest.importorskip("aiohttp")

CLIENTS = ["requests", "urllib3", "urllib", "http.client", "httpx", "httpx-async", "aiohttp"]
TRACEPARENT = "traceparent"


# -------------------------------------------------------------------------------------------- server

class Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, *args):
        pass

    def do_GET(self):
        self.server.seen.append((self.path, list(self.headers.items())))
        path, _, query = self.path.partition("?")
        if path == "/echo":
            return self._send(200, json.dumps(list(self.headers.items())).encode(), "application/json")
        if path.startswith("/status/"):
            return self._send(int(path.rsplit("/", 1)[1]), b"status")
        if path == "/redirect":
            self.send_response(302)
            self.send_header("Location", "/echo")
            self.send_header("Content-Length", "0")
            self.end_headers()
            return None
        if path == "/slow":
            time.sleep(float(query or "1"))
            return self._send(200, b"slow")
        if path == "/stream":
            self.send_response(200)
            self.send_header("Transfer-Encoding", "chunked")
            self.end_headers()
            for i in range(4):
                data = b"chunk%d;" % i
                self.wfile.write(b"%x\r\n%s\r\n" % (len(data), data))
                self.wfile.flush()
                time.sleep(0.05)
            self.wfile.write(b"0\r\n\r\n")
            return None
        return self._send(404, b"nope")

    do_POST = do_GET

    def _send(self, code, body, ctype="text/plain"):
        length = int(self.headers.get("Content-Length") or 0)
        if length:
            self.rfile.read(length)
        self.send_response(code)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)


@pytest.fixture(scope="module")
def server():
    srv = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    srv.daemon_threads = True
    srv.seen = []
    thread = threading.Thread(target=srv.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    srv.url = "http://127.0.0.1:%d" % srv.server_address[1]
    yield srv
    srv.shutdown()
    srv.server_close()


@pytest.fixture
def seen(server):
    server.seen.clear()
    return server.seen


@pytest.fixture
def closed_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]  # nothing listens there once the socket is closed


@pytest.fixture
def patched():
    """Every HTTP client integration patched, as the registry does when the app imports the libraries."""
    import aiohttp.client
    import requests.sessions
    import urllib3.connectionpool
    import urllib3.poolmanager

    from autoinstr.integrations import aiohttp as i_aiohttp
    from autoinstr.integrations import httpclient as i_httpclient
    from autoinstr.integrations import httpx as i_httpx
    from autoinstr.integrations import requests as i_requests
    from autoinstr.integrations import urllib3 as i_urllib3

    targets = [(i_httpclient, http.client), (i_httpclient, urllib.request), (i_urllib3, urllib3.connectionpool),
               (i_urllib3, urllib3.poolmanager), (i_requests, requests.sessions), (i_httpx, httpx),
               (i_aiohttp, aiohttp.client)]
    for integration, module in targets:
        integration.patch(module)
    yield
    for integration, module in reversed(targets):
        integration.unpatch(module)
    _http.uninstall_wire()


def spans_of(collected, kind="client"):
    return [s for batch in collected for s in batch if s.kind == kind]


# ------------------------------------------------------------------------------------ the clients

def call(client, url, headers=None, timeout=5.0, stream=False):
    """One GET with `client`; -> (status, body bytes). Exceptions are the client's own."""
    if client == "requests":
        r = requests.get(url, headers=headers, timeout=timeout)
        return r.status_code, r.content
    if client == "urllib3":
        r = urllib3.PoolManager().request("GET", url, headers=headers, timeout=timeout, retries=False)
        return r.status, r.data
    if client == "urllib":
        req = urllib.request.Request(url, headers=headers or {})
        try:
            with urllib.request.urlopen(req, timeout=timeout) as resp:
                return resp.status, resp.read()
        except urllib.error.HTTPError as exc:
            with exc:
                return exc.code, exc.read()
    if client == "http.client":
        scheme_host, _, path = url.partition("//")[2].partition("/")
        host, _, port = scheme_host.partition(":")
        conn = http.client.HTTPConnection(host, int(port), timeout=timeout)
        try:
            conn.request("GET", "/" + path, headers=headers or {})
            resp = conn.getresponse()
            return resp.status, resp.read()
        finally:
            conn.close()
    if client == "httpx":
        with httpx.Client(timeout=timeout, follow_redirects=True) as c:
            r = c.get(url, headers=headers)
            return r.status_code, r.content
    if client == "httpx-async":
        async def go():
            async with httpx.AsyncClient(timeout=timeout, follow_redirects=True) as c:
                r = await c.get(url, headers=headers)
                return r.status_code, r.content
        return asyncio.run(go())
    if client == "aiohttp":
        async def go():
            session = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=timeout))
            async with session as s, s.get(url, headers=headers) as r:
                return r.status, await r.read()
        return asyncio.run(go())
    raise ValueError(client)


def received(seen, path="/echo"):
    hits = [dict((k.lower(), v) for k, v in headers) for p, headers in seen if p.startswith(path)]
    assert hits, "the server saw no %s" % path
    return hits


# ---------------------------------------------------------------------------------------- tests

@pytest.mark.parametrize("client", CLIENTS)
def test_one_client_span_and_the_context_it_sends(collected, patched, server, seen, client):
    with Span("request") as root:
        status, body = call(client, server.url + "/echo?token=s3cr3t&x=1")
    assert status == 200 and json.loads(body)
    spans = spans_of(collected)
    assert len(spans) == 1, [s.name for s in spans]  # requests -> urllib3 -> http.client: one span, not three
    span = spans[0]
    port = server.server_address[1]
    assert span.name == "GET 127.0.0.1" and span.parent_id == root.span_id and span.trace_id == root.trace_id
    assert span.status == "ok"
    assert span.attributes == {"http.request.method": "GET",
                               "url.full": "http://127.0.0.1:%d/echo?token=REDACTED&x=1" % port,
                               "server.address": "127.0.0.1", "server.port": port,
                               "http.response.status_code": 200}
    sent = received(seen)
    assert len(sent) == 1
    assert sent[0][TRACEPARENT] == "00-%032x-%016x-01" % (root.trace_id, span.span_id)
    assert span.end_ns >= span.start_ns > root.start_ns


@pytest.mark.parametrize("client", CLIENTS)
def test_the_apps_header_dict_is_left_alone_and_its_own_context_wins(collected, patched, server, seen, client):
    mine = "00-%032x-%016x-01" % (0xABC, 0xDEF)
    headers = {"X-Request-Id": "r-1", "TraceParent": mine}
    frozen = dict(headers)
    with Span("request"):
        assert call(client, server.url + "/echo", headers=headers)[0] == 200
        plain = {"Accept": "text/plain"}
        assert call(client, server.url + "/echo", headers=plain)[0] == 200
    assert headers == frozen and list(headers) == list(frozen)  # not a key added, not a value changed
    assert plain == {"Accept": "text/plain"}
    first, second = received(seen)
    assert first[TRACEPARENT] == mine and first["x-request-id"] == "r-1"
    assert second[TRACEPARENT] != mine and second["accept"] == "text/plain"
    assert len(spans_of(collected)) == 2


@pytest.mark.parametrize("client", CLIENTS)
def test_5xx_and_4xx_are_error_spans_with_the_clients_own_answer(collected, patched, server, client):
    with Span("request"):
        assert call(client, server.url + "/status/503")[0] == 503
        assert call(client, server.url + "/status/404")[0] == 404
    s503, s404 = spans_of(collected)
    for span, code in ((s503, 503), (s404, 404)):
        assert span.status == "error" and span.attributes["error.type"] == str(code)
        assert span.attributes["http.response.status_code"] == code


EXPECTED_REFUSED = {"requests": requests.exceptions.ConnectionError, "urllib3": urllib3.exceptions.NewConnectionError,
                    "urllib": urllib.error.URLError, "http.client": ConnectionRefusedError,
                    "httpx": httpx.ConnectError, "httpx-async": httpx.ConnectError,
                    "aiohttp": aiohttp.ClientConnectorError}


def _qualified(cls):
    return cls.__qualname__ if cls.__module__ == "builtins" else "%s.%s" % (cls.__module__, cls.__qualname__)


@pytest.mark.parametrize("client", CLIENTS)
def test_connection_refused_reaches_the_app_unchanged(collected, patched, closed_port, client):
    with Span("request"), pytest.raises(Exception) as info:
        call(client, "http://127.0.0.1:%d/x" % closed_port)
    assert isinstance(info.value, EXPECTED_REFUSED[client])
    assert "autoinstr" not in "".join(str(info.value))
    (span,) = spans_of(collected)
    assert span.status == "error" and span.attributes["error.type"] == _qualified(type(info.value))
    assert "http.response.status_code" not in span.attributes
    assert span.attributes["server.port"] == closed_port


EXPECTED_TIMEOUT = {"requests": requests.exceptions.ReadTimeout, "urllib3": urllib3.exceptions.ReadTimeoutError,
                    "urllib": TimeoutError, "http.client": TimeoutError, "httpx": httpx.ReadTimeout,
                    "httpx-async": httpx.ReadTimeout, "aiohttp": asyncio.TimeoutError}


@pytest.mark.parametrize("client", CLIENTS)
def test_timeout_reaches_the_app_unchanged(collected, patched, server, client):
    with Span("request"), pytest.raises(Exception) as info:
        call(client, server.url + "/slow?0.6", timeout=0.2)
    assert isinstance(info.value, (EXPECTED_TIMEOUT[client], socket.timeout)), type(info.value)
    (span,) = spans_of(collected)
    assert span.status == "error" and span.attributes["error.type"] == _qualified(type(info.value))


@pytest.mark.parametrize("client", ["requests", "urllib3", "urllib", "httpx", "httpx-async", "aiohttp"])
def test_a_redirect_is_part_of_the_logical_request(collected, patched, server, seen, client):
    with Span("request"):
        if client == "urllib3":  # call() turns retries off, and redirects with them
            r = urllib3.PoolManager().request("GET", server.url + "/redirect")
            status, body = r.status, r.data
        else:
            status, body = call(client, server.url + "/redirect")
    assert status == 200 and json.loads(body)
    (span,) = spans_of(collected)
    assert span.attributes["http.response.status_code"] == 200
    assert span.attributes["http.request.resend_count"] == 1
    assert span.attributes["url.full"].endswith("/redirect")
    hops = [dict((k.lower(), v) for k, v in h) for _, h in seen]
    assert len(hops) == 2
    assert {h[TRACEPARENT] for h in hops} == {"00-%032x-%016x-01" % (span.trace_id, span.span_id)}


def test_http_client_used_directly_gets_a_span_per_request_and_redirects_are_not_followed(collected, patched,
                                                                                         server, seen):
    conn = http.client.HTTPConnection("127.0.0.1", server.server_address[1], timeout=5)
    with Span("request"):
        for path in ("/redirect", "/echo", "/status/500"):
            conn.request("GET", path)
            resp = conn.getresponse()
            resp.read()
    conn.close()
    spans = spans_of(collected)
    assert [s.attributes["http.response.status_code"] for s in spans] == [302, 200, 500]
    assert [s.status for s in spans] == ["ok", "ok", "error"]
    assert [h[TRACEPARENT] for h in (dict((k.lower(), v) for k, v in h) for _, h in seen)] == [
        "00-%032x-%016x-01" % (s.trace_id, s.span_id) for s in spans]


def test_urllib3_retries_are_one_span_with_the_resend_count(collected, patched, server, seen):
    pool = urllib3.PoolManager(retries=urllib3.Retry(total=2, status_forcelist=[503], backoff_factor=0,
                                                     raise_on_status=False))
    with Span("request"):
        assert pool.request("GET", server.url + "/status/503").status == 503
    (span,) = spans_of(collected)
    assert span.attributes["http.request.resend_count"] == 2 and span.status == "error"
    assert len({dict(h)["traceparent"] for _, h in seen}) == 1 and len(seen) == 3


# --------------------------------------------------------------------------------------- streaming

def test_requests_stream_ends_with_the_body(collected, patched, server):
    with Span("request") as root:
        r = requests.get(server.url + "/stream", stream=True, timeout=5)
        assert spans_of(collected) == [] and root._finished is None  # the body is still to come
        chunks = list(r.iter_content(chunk_size=3))
    assert b"".join(chunks) == b"chunk0;chunk1;chunk2;chunk3;"
    (span,) = spans_of(collected)
    assert span.duration_ns >= 150_000_000  # the chunks came 50 ms apart: the span covers the whole body
    assert type(r) is requests.Response and r.raw.__class__.__module__.startswith("urllib3")


def test_requests_stream_closed_unread_still_ends_the_span(collected, patched, server):
    with Span("request") as root:
        with requests.get(server.url + "/stream", stream=True, timeout=5) as r:
            assert r.status_code == 200
            assert root._finished is None
        assert len(root._finished) == 1  # closing the response ended the client span
    (span,) = spans_of(collected)
    assert span.attributes["http.response.status_code"] == 200


def test_urllib3_preload_false_and_http_client_partial_reads(collected, patched, server):
    with Span("request"):
        r = urllib3.PoolManager().request("GET", server.url + "/stream", preload_content=False)
        data = b"".join(r.stream(4))
        r.release_conn()
        conn = http.client.HTTPConnection("127.0.0.1", server.server_address[1], timeout=5)
        conn.request("GET", "/stream")
        resp = conn.getresponse()
        parts = []
        while True:
            part = resp.read(5)
            if not part:
                break
            parts.append(part)
        conn.close()
    assert data == b"".join(parts) == b"chunk0;chunk1;chunk2;chunk3;"
    spans = spans_of(collected)
    assert len(spans) == 2 and all(s.duration_ns >= 150_000_000 for s in spans)


def test_httpx_stream_and_aiohttp_stream(collected, patched, server):
    with Span("request"):
        with httpx.Client() as c, c.stream("GET", server.url + "/stream") as r:
            got = b"".join(r.iter_bytes())

        async def go():
            async with httpx.AsyncClient() as c, c.stream("GET", server.url + "/stream") as r:
                a = b"".join([part async for part in r.aiter_bytes()])
            async with aiohttp.ClientSession() as s, s.get(server.url + "/stream") as r:
                b = b""
                async for part in r.content.iter_chunked(3):
                    b += part
            return a, b

        a, b = asyncio.run(go())
    assert got == a == b == b"chunk0;chunk1;chunk2;chunk3;"
    spans = spans_of(collected)
    assert len(spans) == 3 and all(s.duration_ns >= 150_000_000 for s in spans)


def test_unread_http_client_response_ends_when_collected(collected, patched, server):
    import gc

    with Span("request"):
        conn = http.client.HTTPConnection("127.0.0.1", server.server_address[1], timeout=5)
        conn.request("GET", "/echo")
        resp = conn.getresponse()
        assert resp.status == 200
        del resp
        gc.collect()
        assert len(spans_of(collected)) == 0  # still waiting for the root
        conn.close()
    assert len(spans_of(collected)) == 1


# ------------------------------------------------------------------------------ context and config

@pytest.mark.parametrize("client", CLIENTS)
def test_unsampled_trace_sends_flag_zero_and_records_nothing(collected, patched, server, seen, client):
    Sampling.configure(0.0)
    with Span("request") as root:
        assert call(client, server.url + "/echo")[0] == 200
    assert collected == []
    header = received(seen)[0][TRACEPARENT]
    version, trace_id, span_id, flags = header.split("-")
    assert (version, flags) == ("00", "00") and int(trace_id, 16) == root.trace_id
    assert span_id != "%016x" % root.span_id  # the client span's own id (not recorded, still propagated)


@pytest.mark.parametrize("client", CLIENTS)
def test_b3_and_baggage_and_tracestate_propagate(collected, patched, server, seen, client):
    Propagators.names = ("b3", "b3multi", "tracecontext", "baggage")
    parent = extract({"traceparent": "00-%032x-%016x-01" % (0x1234, 0x5678), "tracestate": "vendor=abc,o=1",
                      "baggage": "user=alice,tier=gold%20plus"})
    with Span("request", kind="server", parent=parent):
        assert call(client, server.url + "/echo")[0] == 200
    (span,) = spans_of(collected)
    got = received(seen)[0]
    ids = "%032x-%016x" % (0x1234, span.span_id)
    assert got["b3"] == ids + "-1"
    assert (got["x-b3-traceid"], got["x-b3-spanid"], got["x-b3-sampled"]) == ("%032x" % 0x1234,
                                                                                "%016x" % span.span_id, "1")
    assert got[TRACEPARENT] == "00-%s-01" % ids
    assert got["tracestate"] == "vendor=abc,o=1" and got["baggage"] == "user=alice,tier=gold%20plus"


@pytest.mark.parametrize("client", CLIENTS)
def test_the_agents_own_traffic_is_neither_traced_nor_injected(collected, patched, server, seen, client):
    def agent_thread_work():
        suppress_instrumentation()  # what the export thread does first
        return call(client, server.url + "/echo")[0]

    with Span("request"):
        assert contextvars.copy_context().run(agent_thread_work) == 200
    assert spans_of(collected) == []
    assert TRACEPARENT not in received(seen)[0]


def test_without_a_current_span_the_client_span_is_a_root(collected, patched, server, seen):
    assert requests.get(server.url + "/echo", timeout=5).status_code == 200
    (span,) = spans_of(collected)
    assert span.parent_id is None
    assert received(seen)[0][TRACEPARENT] == "00-%032x-%016x-01" % (span.trace_id, span.span_id)


def test_results_and_types_are_the_clients_own(collected, patched, server):
    with Span("request"):
        with urllib.request.urlopen(server.url + "/echo", timeout=5) as resp:
            assert isinstance(resp, http.client.HTTPResponse)
        assert type(httpx.get(server.url + "/echo")) is httpx.Response
        assert type(urllib3.PoolManager().request("GET", server.url + "/echo")) is urllib3.response.HTTPResponse
        r = requests.Session().get(server.url + "/echo")
        assert type(r) is requests.Response and isinstance(r.request, requests.PreparedRequest)
        assert TRACEPARENT not in r.request.headers  # added on the wire, not into the PreparedRequest

        async def go():
            async with aiohttp.ClientSession() as s:
                resp = await s.get(server.url + "/echo")
                assert type(resp) is aiohttp.ClientResponse
                resp.release()
        asyncio.run(go())
        assert urllib.request.urlopen("data:,hello").read() == b"hello"  # not HTTP: untouched
    assert len(spans_of(collected)) == 5


def test_httpx_request_object_is_sent_as_is_and_reusable(collected, patched, server, seen):
    with httpx.Client() as c:
        req = c.build_request("GET", server.url + "/echo", headers={"X-A": "1"})
        with Span("one"):
            r1 = c.send(req)
        with Span("two"):
            c.send(req)
    assert TRACEPARENT not in req.headers and dict(req.headers)["x-a"] == "1"
    assert TRACEPARENT in r1.request.headers  # response.request: what went on the wire
    one, two = received(seen)
    assert one[TRACEPARENT] != two[TRACEPARENT]


def test_aiohttp_session_default_headers_count_as_the_apps(collected, patched, server, seen):
    mine = "00-%032x-%016x-01" % (0x77, 0x88)

    async def go():
        async with aiohttp.ClientSession(headers={"traceparent": mine}) as s, s.get(server.url + "/echo") as r:
            await r.read()
    with Span("request"):
        asyncio.run(go())
    assert received(seen)[0][TRACEPARENT] == mine


def test_an_agent_failure_never_reaches_the_app(collected, patched, server, seen, monkeypatch):
    def broken(*args, **kwargs):
        raise RuntimeError("agent bug")

    monkeypatch.setattr(_http, "inject", broken)
    monkeypatch.setattr(_http, "describe_url", broken)
    with Span("request"):
        for client in CLIENTS:
            assert call(client, server.url + "/echo")[0] == 200
    assert len(received(seen)) == len(CLIENTS)


def test_patching_twice_through_the_registry_wraps_once(registry, server, seen, collected):
    import requests.sessions

    registry.INTEGRATIONS["requests"] = (("requests.sessions",), "autoinstr.integrations.requests", "requests")
    try:
        assert registry.apply("requests", requests.sessions) is True
        assert registry.apply("requests", requests.sessions) is False
        with Span("request"):
            requests.get(server.url + "/echo", timeout=5)
        assert len(spans_of(collected)) == 1 and len(received(seen)) == 1
    finally:
        from autoinstr.integrations import requests as i_requests

        i_requests.unpatch(requests.sessions)
        _http.uninstall_wire()


def test_aiohttp_params_and_base_url_make_the_full_url(collected, patched, server, seen):
    async def go():
        async with aiohttp.ClientSession(base_url=server.url) as s, s.get("/echo", params={"q": "1"}) as r:
            await r.read()
    with Span("request"):
        asyncio.run(go())
    (span,) = spans_of(collected)
    assert span.attributes["url.full"] == server.url + "/echo?q=1"
    assert seen[0][0] == "/echo?q=1"


def test_urllib3_pool_request_is_one_span_and_urlopen_leaves_it_to_http_client(collected, patched, server, seen):
    pool = urllib3.HTTPConnectionPool("127.0.0.1", server.server_address[1],
                                      retries=urllib3.Retry(total=2, status_forcelist=[503], backoff_factor=0,
                                                            raise_on_status=False))
    with Span("request"):
        assert pool.request("GET", "/echo", fields={"q": "1"}).status == 200
        assert pool.request("GET", "/status/503").status == 503
    first, retried = spans_of(collected)
    port = server.server_address[1]
    assert first.attributes["url.full"] == "http://127.0.0.1:%d/echo" % port  # fields= are not in it
    assert retried.attributes["http.request.resend_count"] == 2 and retried.name == "GET 127.0.0.1"
    collected.clear()
    with Span("request"):
        assert pool.urlopen("GET", "/status/503").status == 503  # a pool's urlopen: what requests calls
    spans = spans_of(collected)
    assert len(spans) == 3 and all(s.attributes["http.response.status_code"] == 503 for s in spans)
    assert len({dict(h)["traceparent"] for _, h in seen[-3:]}) == 3  # one span per attempt, via http.client


def test_with_an_integration_off_the_layer_below_takes_over(collected, server, seen):
    """AUTOINSTR_DISABLED_INTEGRATIONS: httpclient off, requests still makes its span and sends the context;
    requests off, http.client makes one span per request it sends."""
    import requests.sessions

    from autoinstr.integrations import httpclient as i_httpclient
    from autoinstr.integrations import requests as i_requests

    i_requests.patch(requests.sessions)  # installs the wire hook; http.client makes no span of its own
    try:
        with Span("request"):
            requests.get(server.url + "/redirect", timeout=5)
        (span,) = spans_of(collected)
        assert span.attributes["http.request.resend_count"] == 1
        assert {dict(h)["traceparent"].split("-")[2] for _, h in seen} == {"%016x" % span.span_id}
        i_requests.unpatch(requests.sessions)
        i_httpclient.patch(http.client)
        collected.clear()
        seen.clear()
        with Span("request"):
            requests.get(server.url + "/redirect", timeout=5)
        spans = spans_of(collected)
        assert [s.attributes["http.response.status_code"] for s in spans] == [302, 200]
        assert [dict(h)["traceparent"].split("-")[2] for _, h in seen] == ["%016x" % s.span_id for s in spans]
    finally:
        i_requests.unpatch(requests.sessions)
        i_httpclient.unpatch(http.client)
        _http.uninstall_wire()
