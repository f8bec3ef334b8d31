"""Outgoing HTTP's hot path has two implementations, compiled (autoinstr/_client_call.c: CallCore, method_hook,
wire_hook, where the speedups are built) and in Python (_CallCore, _python_hook and _endheaders in
autoinstr.integrations._http, with AUTOINSTR_SPEEDUPS=false or no compiler at install): they must behave alike.

Random calls (requests, a requests session, urllib3, urllib.request, http.client used directly, httpx) with
random methods, URLs (credentials, secret query values, redirects, 4xx and 5xx, a streamed body, a refused
connection), header dicts of the app's own (trace headers among them), parents (none, sampled, unsampled,
remote with tracestate and baggage), propagators and sampling ratios, go to a real server on 127.0.0.1 in one
process per implementation. What the server received (the trace headers, as sent), what the app got (status,
body, exception) and what the pipeline received (every field of every span) must be identical.
"""

from __future__ import annotations

import pytest
from _twins import HANDED_SPANS, assert_same, compiled_has, pass_on_the_other_side, require_compiled, run_driver

from autoinstr.integrations import _http

CALLS = 300

DRIVER = HANDED_SPANS + r'''
import http.client, http.server, json, random, socket, sys, threading, urllib.error, urllib.request
import requests, urllib3, httpx
import requests.sessions, urllib3.connectionpool, urllib3.poolmanager
from autoinstr.integrations import _http, httpclient, requests as i_requests, urllib3 as i_urllib3, httpx as i_httpx
from autoinstr.trace.propagation import Propagators
from autoinstr.trace.span import Sampling, Span, SpanContext, current_span

TRACE_HEADERS = ("traceparent", "tracestate", "baggage", "b3", "x-b3-traceid", "x-b3-spanid", "x-b3-sampled",
                 "x-b3-flags", "x-b3-parentspanid")


class Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, *args):
        pass

    def do_GET(self):
        seen.append([self.command, self.path, [(k, v) for k, v in self.headers.items() if k.lower() in TRACE_HEADERS]])
        length = int(self.headers.get("Content-Length") or 0)
        if length:
            self.rfile.read(length)
        path = self.path.partition("?")[0]
        if path == "/redirect":
            self.send_response(302)
            self.send_header("Location", "/ok")
            self.send_header("Content-Length", "0")
            self.end_headers()
            return
        if path == "/stream":
            self.send_response(200)
            self.send_header("Transfer-Encoding", "chunked")
            self.end_headers()
            for i in range(3):
                self.wfile.write(b"6\r\nchunk%d\r\n" % i)
            self.wfile.write(b"0\r\n\r\n")
            return
        code = int(path.rsplit("/", 1)[1]) if path.startswith("/status/") else 200
        body = b"answer"
        self.send_response(code)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    do_POST = do_PUT = do_BREW = do_GET


seen = []
server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
server.daemon_threads = True
threading.Thread(target=server.serve_forever, daemon=True).start()
PORT = server.server_address[1]
with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    CLOSED = s.getsockname()[1]  # nothing listens there: a refused connection

for integration, module in [(httpclient, http.client), (httpclient, urllib.request),
                            (i_urllib3, urllib3.connectionpool), (i_urllib3, urllib3.poolmanager),
                            (i_requests, requests.sessions), (i_httpx, httpx)]:
    integration.patch(module)
_http.Wire.own_spans = True
out = {"compiled": _http._compiled is not None, "calls": []}
session, pool, client = requests.Session(), urllib3.PoolManager(retries=False), httpx.Client()


def call(rnd, kind, method, url, headers):
    if kind == "requests":
        stream = rnd.random() < 0.3
        r = requests.request(method, url, headers=headers, stream=stream, timeout=5, allow_redirects=rnd.random() < 0.5)
        if stream and rnd.random() < 0.5:
            r.close()
            return r.status_code, "closed"
        return r.status_code, r.content.decode()
    if kind == "session":
        r = session.request(method, url, headers=headers, timeout=5)
        return r.status_code, r.text
    if kind == "urllib3":
        r = pool.request(method, url, headers=headers, timeout=5, redirect=rnd.random() < 0.5)
        return r.status, r.data.decode()
    if kind == "urllib":
        request = urllib.request.Request(url, headers=headers, method=method)
        try:
            with urllib.request.urlopen(request, timeout=5) as r:
                return r.status, r.read().decode()
        except urllib.error.HTTPError as e:
            return e.code, "HTTPError"
    if kind == "http.client":
        netloc = url.split("//", 1)[1].split("/", 1)[0].rpartition("@")[2]
        path = "/" + url.split("//", 1)[1].split("/", 1)[1]
        conn = http.client.HTTPConnection(netloc, timeout=5)
        try:
            conn.request(method, path, headers=headers)
            r = conn.getresponse()
            return r.status, r.read().decode()
        finally:
            conn.close()
    r = client.request(method, url, headers=headers, timeout=5)
    return r.status_code, r.text


def ports(value):
    """The servers' ports, which differ from process to process, named."""
    if value == PORT or value == CLOSED:
        return "<port>" if value == PORT else "<closed>"
    if isinstance(value, str):
        for port, name in ((PORT, "<port>"), (CLOSED, "<closed>")):
            value = value.replace(":%d" % port, ":" + name).replace("port=%d" % port, "port=" + name)
        return value
    return value


def describe(s):
    return {"name": s.name, "kind": s.kind,
            "attributes": sorted((k, repr(ports(v))) for k, v in s.attributes.items()),
            "sampled": s.sampled, "status": s.status, "ended": bool(s.end_ns), "started": bool(s.start_ns),
            "events": [e["name"] for e in s.events or []], "parent": "%x" % s.parent_id if s.parent_id else None,
            "trace": "%032x" % s.trace_id, "span": "%016x" % s.span_id}


def one(seed):
    rnd = random.Random(seed)
    m._Ids.rng.seed(seed)
    Sampling.configure(rnd.choice([1.0, 1.0, 0.0, 0.5]), 0)
    Propagators.names = rnd.choice([("tracecontext", "baggage"), ("tracecontext",), ("b3",), ("b3multi",),
                                    ("tracecontext", "b3multi", "baggage"), ()])
    del handed[:], seen[:]
    kind = rnd.choice(["requests", "session", "urllib3", "urllib", "http.client", "httpx"])
    method = rnd.choice(["GET", "GET", "POST", "BREW"] if kind != "urllib3" else ["GET", "POST"])
    host = rnd.choice(["127.0.0.1:%d" % PORT, "user:secret@127.0.0.1:%d" % PORT, "127.0.0.1:%d" % CLOSED])
    path = rnd.choice(["/ok", "/ok?token=abc&x=1", "/status/404", "/status/503", "/redirect", "/stream"])
    if kind == "http.client" and "@" in host:
        host = host.rpartition("@")[2]
    headers = rnd.choice([{}, {"X-App": "1"}, {"traceparent": "00-%032x-%016x-01" % (7, 9)},
                          {"X-B3-TraceId": "%032x" % 5, "X-B3-SpanId": "%016x" % 6}, {"baggage": "k=v"}])
    before = dict(headers)
    parent_kind = rnd.choice(["none", "sampled", "unsampled", "remote"])
    log = [kind, method, path, parent_kind, list(Propagators.names)]
    parent = None
    if parent_kind == "sampled":
        parent = Span("outer")
    elif parent_kind == "unsampled":
        Sampling.configure(0.0, 0)
        parent = Span("outer")
        Sampling.configure(1.0, 0)
    elif parent_kind == "remote":
        parent = Span("outer", parent=SpanContext(rnd.getrandbits(128) or 1, rnd.getrandbits(64) or 1,
                                                  rnd.choice([True, False]), "vendor=x", {"k2": "v2"}))
    try:
        if parent is not None:
            with parent:
                log.append(["answer", call(rnd, kind, method, "http://%s%s" % (host, path), headers)])
        else:
            log.append(["answer", call(rnd, kind, method, "http://%s%s" % (host, path), headers)])
    except Exception as exc:
        log.append(["raised", type(exc).__name__])
    log.append(["headers unchanged", headers == before])
    log.append(["current after", current_span() is not None])
    out["calls"].append({"log": log, "seen": list(seen), "handed": [[describe(s) for s in g] for g in handed]})

import contextvars
for seed in range(int(sys.argv[1])):
    contextvars.Context().run(one, seed)
print(json.dumps(out))
'''


def test_both_client_paths_do_the_same_to_random_calls():
    require_compiled("CallCore")
    pytest.importorskip("requests")
    pytest.importorskip("httpx")
    compiled, python = run_driver(DRIVER, CALLS, True, 300), run_driver(DRIVER, CALLS, False, 300)
    assert compiled["compiled"] and not python["compiled"]
    assert_same(compiled["calls"], python["calls"], "call")
    calls = python["calls"]
    # the calls do cover what they are meant to: every client, errors, spans sampled or not, headers injected
    assert {c["log"][0] for c in calls} == {"requests", "session", "urllib3", "urllib", "http.client", "httpx"}
    events = [entry for c in calls for entry in c["log"][5:]]  # (after the call's kind, method, path, parent...)
    assert any(entry[0] == "raised" for entry in events)
    spans = [s for c in calls for g in c["handed"] for s in g if s["kind"] == "client"]
    assert len(spans) > CALLS / 3 and any(s["status"] == "error" for s in spans)
    assert any(s["name"] == "HTTP 127.0.0.1" for s in spans)  # an unknown method
    sent = {name.lower() for c in calls for _, _, headers in c["seen"] for name, _ in headers}
    assert {"traceparent", "tracestate", "baggage", "b3", "x-b3-traceid"} <= sent
    assert all(entry[1] for entry in events if entry[0] == "headers unchanged")


def test_the_http_tests_pass_on_the_other_path():
    """This process runs one implementation; the HTTP client and statsd tests run on the other."""
    require_compiled("CallCore")
    pass_on_the_other_side(["tests/test_http_inprocess.py", "tests/test_http_urls.py", "tests/test_metrics.py"],
                           _http._compiled is not None)


def test_the_compiled_path_serves_where_the_compiled_span_core_does():
    from autoinstr.trace import span as span_module

    compiled = span_module._compiled_core is not None and compiled_has("CallCore")
    assert (_http._compiled is not None) == compiled
    assert (_http.Call.__mro__[1] is not _http._CallCore) == compiled
