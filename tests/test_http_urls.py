"""The pure parts of the HTTP client mechanics: url.full without credentials or secrets, server address and
port, span names, which header families the app already sets."""

from __future__ import annotations

import pytest

from autoinstr.integrations import _http
from autoinstr.integrations._http import _buffered_families, describe_url, join_url, span_name


@pytest.mark.parametrize("url,full,host,port", [
    ("http://inventory.local/items/7", "http://inventory.local/items/7", "inventory.local", 80),
    ("https://Inventory.Local:8443/x?y=1", "https://Inventory.Local:8443/x?y=1", "inventory.local", 8443),
    ("HTTPS://api.example.com", "https://api.example.com", "api.example.com", 443),
    ("http://user:secret@127.0.0.1:5000/data?via=requests", "http://127.0.0.1:5000/data?via=requests",
     "127.0.0.1", 5000),
    ("http://user@host/p", "http://host/p", "host", 80),
    ("http://us%40er:p%40ss@host/p", "http://host/p", "host", 80),
    ("http://[::1]:8080/v6", "http://[::1]:8080/v6", "::1", 8080),
    ("http://u:p@[fe80::1]/v6", "http://[fe80::1]/v6", "fe80::1", 80),
    ("http://host/search?q=shoes&token=abc123&api_key=k&page=2",
     "http://host/search?q=shoes&token=REDACTED&api_key=REDACTED&page=2", "host", 80),
    ("http://host/p?%70assword=hunter2#frag", "http://host/p?%70assword=REDACTED#frag", "host", 80),
    ("http://host/p#frag?token=x", "http://host/p#frag?token=x", "host", 80),  # a fragment, not a query
    ("http://host?password=x", "http://host?password=REDACTED", "host", 80),
    ("http://host:notaport/", "http://host:notaport/", "host", 80),
])
def test_describe_url(url, full, host, port):
    assert describe_url(url) == (full, host, port)
    assert describe_url(url) == (full, host, port)  # from the cache, the same


def test_describe_url_never_keeps_credentials_anywhere():
    full, host, port = describe_url("https://alice:Sup3rS3cret@db.example.com:4443/a?session=abc")
    assert "alice" not in full and "Sup3rS3cret" not in full and "abc" not in full
    assert (host, port) == ("db.example.com", 4443)


def test_describe_url_caches_are_bounded():
    for i in range(3000):
        describe_url("http://h%d.example/p?id=%d" % (i, i))
    assert len(_http._urls) <= 1024 and len(_http._netlocs) <= 256


@pytest.mark.parametrize("parts,url", [
    (("http", "127.0.0.1", 80, "/a"), "http://127.0.0.1/a"),
    (("http", "127.0.0.1", 8080, "/a?b=1"), "http://127.0.0.1:8080/a?b=1"),
    (("https", "example.com", 443, "/"), "https://example.com/"),
    (("https", "example.com", None, "/"), "https://example.com/"),
    (("http", "::1", 9000, "/x"), "http://[::1]:9000/x"),
    (("http", "proxy", 3128, "http://elsewhere/x"), "http://elsewhere/x"),  # absolute form through a proxy
    (("http", "h", 80, "x"), "http://h/x"),
    (("http", "h", 80, "*"), "http://h*"),
])
def test_join_url(parts, url):
    assert join_url(*parts) == url


def test_span_names_are_method_and_host_and_bounded(monkeypatch):
    assert span_name("GET", "inventory.local") == "GET inventory.local"
    assert span_name("POST", "") == "POST"
    monkeypatch.setattr(_http.NamePool, "names", set())
    monkeypatch.setattr(_http.NamePool, "limit", 3)
    monkeypatch.setattr(_http, "_names", {})
    names = [span_name("GET", "h%d" % i) for i in range(6)]
    assert names[:3] == ["GET h0", "GET h1", "GET h2"] and set(names[3:]) == {"other"}


def test_call_attributes_and_unknown_method(collected):
    call = _http.Call("GET", "http://u:p@inventory.local:8080/items?token=t")
    call.respond(200)
    call.end()
    odd = _http.Call("PURGE", "http://cache.local/x")
    odd.respond(404)
    odd.end()
    first, second = (batch[0] for batch in collected)
    assert first.name == "GET inventory.local" and first.kind == "client" and first.status == "ok"
    assert first.attributes == {"http.request.method": "GET", "url.full": "http://inventory.local:8080/items?token=REDACTED",
                                "server.address": "inventory.local", "server.port": 8080,
                                "http.response.status_code": 200}
    assert second.name == "HTTP cache.local" and second.status == "error"
    assert second.attributes["http.request.method"] == "_OTHER"
    assert second.attributes["http.request.method_original"] == "PURGE"
    assert second.attributes["error.type"] == "404"


@pytest.mark.parametrize("status,error", [(200, False), (302, False), (399, False), (400, True), (404, True),
                                          (500, True), (503, True)])
def test_client_status_rules(collected, status, error):
    call = _http.Call("GET", "http://h/")
    call.respond(status)
    call.end()
    span = collected[0][0]
    assert (span.status == "error") is error
    assert span.attributes.get("error.type") == (str(status) if error else None)


def test_call_fail_records_the_exception_and_resends(collected):
    call = _http.Call("GET", "http://h/")
    call.attempts = 3
    call.fail(ConnectionRefusedError(111, "Connection refused"))
    call.end()  # a second end does nothing
    assert len(collected) == 1
    span = collected[0][0]
    assert span.status == "error" and span.attributes["error.type"] == "ConnectionRefusedError"
    assert span.attributes["http.request.resend_count"] == 2
    assert [e["name"] for e in span.events] == ["exception"]


@pytest.mark.parametrize("lines,families", [
    ([b"GET / HTTP/1.1", b"Host: h"], frozenset()),
    ([b"GET / HTTP/1.1", b"TraceParent: 00-x"], {"w3c"}),
    ([b"GET / HTTP/1.1", b"tracestate: a=b", b"X-B3-Sampled: 1"], {"w3c", "b3"}),
    ([b"GET / HTTP/1.1", b"baggage: k=v", b"b3: 1"], {"baggage", "b3"}),
    ([b"GET http://traceparent:80/ HTTP/1.1", b"X-Traceparent-Not: 1"], frozenset()),
    ([], frozenset()),
])
def test_buffered_families(lines, families):
    assert _buffered_families(lines) == families


def test_headers_to_add_skips_the_families_the_app_sets(collected):
    from autoinstr.trace.propagation import Propagators
    from autoinstr.trace.span import Span

    Propagators.names = ("tracecontext", "baggage", "b3", "b3multi")
    with Span("request"):
        call = _http.Call("GET", "http://h/")
    everything = _http.headers_to_add(call)
    assert set(everything) == {"traceparent", "b3", "X-B3-TraceId", "X-B3-SpanId", "X-B3-Sampled"}
    assert set(_http.headers_to_add(call, ["TRACEPARENT", "content-type"])) == {"b3", "X-B3-TraceId", "X-B3-SpanId",
                                                                              "X-B3-Sampled"}
    assert set(_http.headers_to_add(call, ["x-b3-traceid"])) == {"traceparent"}
    assert everything["traceparent"] == "00-%032x-%016x-01" % (call.span.trace_id, call.span.span_id)


def test_span_context_is_what_span_context_gives(collected):
    from autoinstr.trace.propagation import extract
    from autoinstr.trace.span import Sampling, Span

    def same(span):
        a, b = _http.span_context(span), span.context
        assert (a.trace_id, a.span_id, a.sampled, a.tracestate, a.baggage) == (
            b.trace_id, b.span_id, b.sampled, b.tracestate, b.baggage)

    remote = extract({"traceparent": "00-%032x-%016x-01" % (5, 6), "tracestate": "a=b", "baggage": "k=v"})
    unsampled = extract({"traceparent": "00-%032x-%016x-00" % (7, 8), "baggage": "k=w"})
    baggage_only = extract({"baggage": "only=this"})
    with Span("local-root") as root:
        same(root)
        with Span("child") as child:
            same(child)
    for parent in (remote, unsampled, baggage_only):
        with Span("continued", kind="server", parent=parent) as root:
            same(root)
            with Span("child", kind="client") as child:
                same(child)
    Sampling.configure(0.0)  # unsampled local roots: ids drawn on demand
    with Span("never") as root:
        same(root)
        with Span("child") as child:
            same(child)
    for sampled in (0.0, 1.0):  # a client span that starts a new trace: Call.context() knows it has no parent
        Sampling.configure(sampled)
        call = _http.Call("GET", "http://h/")
        a, b = call.context(), call.span.context
        assert call.fresh and (a.trace_id, a.span_id, a.sampled, a.tracestate, a.baggage) == (
            b.trace_id, b.span_id, b.sampled, b.tracestate, b.baggage)


# the parents a client span can have: none (a new trace), a local root, remote ones (with tracestate and baggage,
# with neither, unsampled, baggage alone)
WIRE_PARENTS = {"none": None, "local": "local", "remote": {"traceparent": "00-%032x-%016x-01" % (5, 6),
                                                           "tracestate": "a=b", "baggage": "k=v"},
                "remote-bare": {"traceparent": "00-%032x-%016x-01" % (9, 10)},
                "remote-tracestate": {"traceparent": "00-%032x-%016x-01" % (9, 10), "tracestate": "c=d"},
                "remote-baggage": {"traceparent": "00-%032x-%016x-01" % (9, 10), "baggage": "k=v"},
                "unsampled": {"traceparent": "00-%032x-%016x-00" % (7, 8)}, "baggage-only": {"baggage": "only=this"}}


def end_headers_inside(path: str, conn: object, call: _http.Call) -> None:
    """The endheaders hook, in Python ("endheaders") or compiled, on `conn` while `call` is the logical request
    being made (as inside requests' Session.send)."""
    endheaders = _http._endheaders if path == "endheaders" else _http._compiled.wire_hook(lambda conn: None)
    token = _http._active_set(call)
    try:
        endheaders(conn)
    finally:
        _http._active_reset(token)


@pytest.mark.parametrize("names", _http._TRACEPARENT_ONLY + (("b3", "tracecontext", "baggage"), ("b3multi",)))
@pytest.mark.parametrize("path", ["endheaders", "compiled", "inject_buffered"])
@pytest.mark.parametrize("parent", sorted(WIRE_PARENTS))
@pytest.mark.parametrize("sampled", [1.0, 0.0])
def test_the_wire_adds_what_inject_gives(collected, names, path, parent, sampled, monkeypatch):
    """The endheaders hook's shortcut for a traceparent alone (the default propagators, a trace without
    tracestate or baggage), in Python and compiled, and the general path (_inject_buffered), put on the wire
    exactly the headers propagation.inject() gives for the span, whatever its parent. The compiled hook leaves
    the common cases to no Python function."""
    import contextlib

    from autoinstr.trace.propagation import Propagators, extract, inject
    from autoinstr.trace.span import Sampling, Span

    class Conn:  # what http.client has buffered when endheaders() runs
        def __init__(self) -> None:
            self._buffer = [b"GET /x HTTP/1.1", b"Host: h", b"Accept-Encoding: identity"]

    monkeypatch.setattr(_http, "_real_endheaders", lambda conn, *args, **kwargs: None)  # nothing sent
    if path == "compiled" and _http._compiled is None:
        pytest.skip("the compiled client path is not built or is turned off")
    python_injections = []
    real_inject = _http._inject
    monkeypatch.setattr(_http, "_inject", lambda conn, call: python_injections.append(call) or real_inject(conn, call))
    Propagators.names = names
    Sampling.configure(sampled)
    given = WIRE_PARENTS[parent]
    outer = contextlib.nullcontext() if given is None else Span(
        "request", kind="server", parent=None if given == "local" else extract(given))
    with outer:
        call = _http.Call("GET", "http://h/x")
    assert call.fresh == (given is None)
    conn = Conn()
    if path in ("endheaders", "compiled"):
        end_headers_inside(path, conn, call)
        assert call.attempts == 1
    else:
        _http._inject_buffered(conn, call)
    expected = inject({}, call.span.context)
    assert expected.get("traceparent") or expected.get("b3") or expected.get("X-B3-TraceId")
    alone = _http._traceparent_alone(call)  # the shortcut is taken where it gives what inject() gives...
    assert alone is None or (list(expected) == ["traceparent"] and expected["traceparent"].endswith("-01"))
    if sampled and parent in ("none", "local", "remote-bare") and names in _http._TRACEPARENT_ONLY:
        assert alone is not None  # ...and in the common cases
    if path == "compiled":
        assert python_injections == ([] if alone is not None else [call])
    assert conn._buffer[3:] == [("%s: %s" % kv).encode() for kv in expected.items()]


@pytest.mark.parametrize("path", ["endheaders", "compiled"])
@pytest.mark.parametrize("own", [[b"TraceParent: 00-%032x-%016x-01" % (1, 2)], [b"TRACESTATE: a=b"],
                                 [b"X-Two: 1\r\ntraceparent: 00-%032x-%016x-01" % (1, 2)],
                                 [b"X-Two: 1\ntracestate: c=d"], [b"X-Traceparent: 1"], [b"Tracestatex: 1"]])
@pytest.mark.parametrize("parent", ["none", "local"])
def test_the_wire_leaves_the_apps_own_trace_headers(collected, path, own, parent, monkeypatch):
    """A traceparent or tracestate the app has put among its headers (any case, or after a line break inside a
    buffered line) is left as it is, and nothing is added; headers that only look alike do not count."""
    import contextlib

    from autoinstr.trace.propagation import Propagators
    from autoinstr.trace.span import Span

    if path == "compiled" and _http._compiled is None:
        pytest.skip("the compiled client path is not built or is turned off")
    monkeypatch.setattr(_http, "_real_endheaders", lambda conn, *args, **kwargs: None)
    Propagators.names = ("tracecontext", "baggage")

    class Conn:
        def __init__(self) -> None:
            self._buffer = [b"GET /x HTTP/1.1", b"Host: h"] + own

    with contextlib.nullcontext() if parent == "none" else Span("request", kind="server"):
        call = _http.Call("GET", "http://h/x")
    conn = Conn()
    end_headers_inside(path, conn, call)
    lookalike = own[0].startswith((b"X-Traceparent", b"Tracestatex"))
    assert conn._buffer[:2 + len(own)] == [b"GET /x HTTP/1.1", b"Host: h"] + own
    assert conn._buffer[2 + len(own):] == ([b"traceparent: 00-%032x-%016x-01" % (call.span.trace_id, call.span.span_id)]
                                           if lookalike else [])


@pytest.mark.parametrize("status, resends, attempts", [(200, -1, 1), (204, 0, 1), (302, -1, 0), (200, -1, 3),
                                                      (200, 2, 1), (404, -1, 1), (503, 0, 1), (None, -1, 1),
                                                      ("200", -1, 1)])
@pytest.mark.parametrize("sampled", [1.0, 0.0])
def test_answered_records_what_respond_and_end_record(collected, status, resends, attempts, sampled):
    """Call.answered() (the shortcut for a response read inside the call) leaves the span as respond() then
    end() would, for plain successes, errors, resends, odd statuses, sampled or not."""
    from autoinstr.trace.span import Sampling

    Sampling.configure(sampled)
    spans = []
    for shortcut in (False, True):
        call = _http.Call("GET", "http://h/x")
        call.attempts = attempts
        if shortcut:
            call.answered(status, resends)
        else:
            call.respond(status, resends)
            call.end()
        spans.append(call.span)
    plain, short = spans
    assert short.end_ns and plain.end_ns
    assert (short.attributes, short.status, short.name) == (plain.attributes, plain.status, plain.name)
    assert len(collected) == (2 if sampled else 0)
