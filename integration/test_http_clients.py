"""Outgoing HTTP end to end: service A calls service B, each a real waitress process under the agent, with
every client (requests, urllib3, urllib.request, http.client, httpx sync and async, aiohttp). The spans both
services stored must form one tree per call: A's server span, A's client span, B's server span whose parent
is A's client span. Three pairs run at once, with the default propagators (W3C trace context and baggage;
they also store to the local SQLite store), W3C trace context alone, and B3 alone.

Then a plain, untraced server reads the bytes a client under the agent sends, checked against the W3C and B3
specifications; and the agent's own traffic (a suppressed context, as the export thread's) carries nothing.
"""

from __future__ import annotations

import json
import os
import re
import time
import urllib.parse
from dataclasses import dataclass, field

import pytest
from fleet import Server, free_port, get_ok
from http_services import CALLEE_APP, CALLER_APP, CLIENTS, WIRE_SCRIPT, RawServer

for _name in ("requests", "urllib3", "httpx", "aiohttp", "waitress"):
    pytest.importorskip(_name)

START_TIMEOUT = 40.0
STOP_TIMEOUT = 20.0
SLOW_SECONDS = 1.5  # B's /slow, for the timeout probes (the client gives up after 0.4 s)
UNSAMPLED_TRACE = "5e0b5ab9c1c3a2f10000000000000aaa"
UNSAMPLED_PARENT = "00f067aa0ba902b7"
OWN_TRACEPARENT = "00-%s-%s-01" % ("0af7651916cd43dd8448eb211c80319c", "b7ad6b7169203331")
HEX16 = re.compile(r"[0-9a-f]{16}\Z")


@dataclass
class Member:
    """One waitress process; `callee` is B's port for A (set once B has its port)."""
    name: str
    module: str
    agent: bool = True
    env: dict = field(default_factory=dict)

    def argv(self, port: int, bindir: str) -> list:
        return ["python", "-c", "from waitress import serve; from %s import app; "
                "serve(app, host='127.0.0.1', port=%d, threads=8)" % (self.module, port)]


PAIRS = {  # config -> environment of both services
    "default": {"AUTOINSTR_EXPORTER": "jsonl,local"},
    "w3c": {"AUTOINSTR_PROPAGATORS": "tracecontext"},
    "b3": {"AUTOINSTR_PROPAGATORS": "b3"},
}


@dataclass
class Probe:
    key: str
    client: str
    path: str
    config: str = "default"
    extra: dict = field(default_factory=dict)
    headers: list = field(default_factory=list)  # sent to A
    report: dict = None

    @property
    def marker(self) -> str:
        return "pk-%s-z" % self.key


def _probes() -> list:
    probes = []
    for client in CLIENTS:
        c = client.replace(".", "")
        probes += [
            Probe("ok-%s" % c, client, "/echo", extra={"headers": "user"}),
            Probe("own-%s" % c, client, "/echo", extra={"headers": "own", "own": OWN_TRACEPARENT}),
            Probe("fail-%s" % c, client, "/status?code=503"),
            Probe("missing-%s" % c, client, "/status?code=404"),
            Probe("refused-%s" % c, client, "/echo", extra={"port": "CLOSED"}),
            Probe("timeout-%s" % c, client, "/slow?seconds=%s" % SLOW_SECONDS, extra={"timeout": "0.4"}),
            Probe("stream-%s" % c, client, "/stream", extra={"stream": "1"}),
            Probe("unsampled-%s" % c, client, "/echo",
                  headers=[("traceparent", "00-%s-%s-00" % (UNSAMPLED_TRACE, UNSAMPLED_PARENT)),
                           ("baggage", "tenant=t1")]),
            Probe("w3c-%s" % c, client, "/echo", config="w3c", headers=[("baggage", "tenant=t2")]),
            Probe("b3-%s" % c, client, "/echo", config="b3"),
        ]
        if client != "http.client":  # http.client follows no redirects: each hop is the app's own request
            probes.append(Probe("redirect-%s" % c, client, "/redirect"))
    return probes


PROBES = sorted(_probes(), key=lambda p: not p.key.startswith("timeout-"))  # B's slow answers end meanwhile


def _call(port: int, target: str, headers) -> dict:
    import http.client

    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    try:
        conn.request("GET", target, headers=dict(headers))
        resp = conn.getresponse()
        body = resp.read()
        assert resp.status == 200, (resp.status, body[:300])
        return json.loads(body)
    finally:
        conn.close()


@pytest.fixture(scope="module")
def run(sandbox_factory):
    """Start the three pairs, send every probe to its A, stop everything; -> (probes by key, spans per
    service name, the sandbox)."""
    box = sandbox_factory("http-clients")
    box.write("callee_app.py", CALLEE_APP)
    box.write("caller_app.py", CALLER_APP)
    closed = free_port()
    servers = {}
    try:
        for config, env in PAIRS.items():
            b = servers["b-" + config] = Server(box, Member("b-" + config, "callee_app"), env=env)
            servers["a-" + config] = Server(box, Member("a-" + config, "caller_app"),
                                            env=dict(env, B_PORT=str(b.port)))
        deadline = time.monotonic() + START_TIMEOUT
        for server in servers.values():
            server.wait_ready(deadline)
        for config in PAIRS:  # the first request of each A pays its imports
            get_ok(servers["a-" + config].port, "/call?client=urllib&path=/echo&probe=warmup", timeout=30)
        slow_done = 0.0
        for probe in PROBES:
            query = dict(client=probe.client, path=probe.path, probe=probe.marker, **probe.extra)
            if query.get("port") == "CLOSED":
                query["port"] = str(closed)
            target = "/call?" + urllib.parse.urlencode(query)
            probe.report = _call(servers["a-" + probe.config].port, target, probe.headers)
            if probe.key.startswith("timeout-"):
                slow_done = time.monotonic() + SLOW_SECONDS + 0.3
        time.sleep(max(0.0, slow_done - time.monotonic()))  # B's server spans for the timed-out calls end
    finally:
        for server in servers.values():
            server.stop()
        deadline = time.monotonic() + STOP_TIMEOUT
        for server in servers.values():
            server.reap(deadline)
    spans = {name: box.jsonl_spans(server.jsonl) for name, server in servers.items()}
    for name, server in servers.items():
        assert server.proc.returncode in (0, -15), (name, server.proc.returncode, server.tail())
        assert "Traceback" not in server.tail(200), (name, server.tail(200))
    return {p.key: p for p in PROBES}, spans, box


def _marked(spans: list, marker: str, kind: str) -> list:
    return [s for s in spans if s["kind"] == kind and marker in json.dumps(s["attributes"])]


def _tree(spans: dict, probe: Probe):
    """A's server span, A's client span under it, and B's server spans (for the probe's marker)."""
    a, b = spans["a-" + probe.config], spans["b-" + probe.config]
    (a_server,) = _marked(a, probe.marker, "server")
    clients = [s for s in a if s["kind"] == "client" and s["parent_id"] == a_server["span_id"]]
    assert len(clients) == 1, "one client span per logical request, saw %s" % [s["name"] for s in clients]
    b_servers = _marked(b, probe.marker, "server")
    return a_server, clients[0], b_servers


def _echo(probe: Probe) -> dict:
    assert probe.report["status"] == 200 and probe.report["error"] is None, probe.report
    return json.loads(probe.report["body"])


@pytest.mark.parametrize("client", CLIENTS)
def test_one_trace_across_two_services(run, client):
    probes, spans, _ = run
    probe = probes["ok-" + client.replace(".", "")]
    echo = _echo(probe)
    a_server, a_client, b_servers = _tree(spans, probe)
    (b_server,) = b_servers
    assert a_client["trace_id"] == a_server["trace_id"] == b_server["trace_id"]
    assert b_server["parent_id"] == a_client["span_id"]
    assert a_client["name"] == "GET 127.0.0.1" and a_client["status"] == "ok" and a_client["service"] == "a-default"
    attrs = a_client["attributes"]
    assert attrs["http.request.method"] == "GET" and attrs["http.response.status_code"] == 200
    assert attrs["server.address"] == "127.0.0.1" and attrs["url.full"].startswith("http://127.0.0.1:")
    assert echo["headers"]["traceparent"] == "00-%s-%s-01" % (a_client["trace_id"], a_client["span_id"])
    assert echo["x-user"] == "u-1" and probe.report["unchanged"] is True
    # the client span starts within A's server span, before B's (two processes' clocks: 5 ms of slack); B's
    # may end after it (waitress closes the body once it is sent, the client may be done reading by then)
    assert a_server["start_ns"] <= a_client["start_ns"] <= b_server["start_ns"] + 5_000_000


def test_the_local_store_holds_the_same_tree(run):
    probes, spans, box = run
    stored = box.store_spans()
    for client in CLIENTS:
        probe = probes["ok-" + client.replace(".", "")]
        a_server, a_client, (b_server,) = _tree(spans, probe)
        trace = {(s["service"], s["kind"], s["span_id"], s["parent_id"]) for s in stored
                 if s["trace_id"] == a_server["trace_id"]}
        assert trace == {("a-default", "server", a_server["span_id"], None),
                         ("a-default", "client", a_client["span_id"], a_server["span_id"]),
                         ("b-default", "server", b_server["span_id"], a_client["span_id"])}


@pytest.mark.parametrize("client", CLIENTS)
def test_the_apps_own_traceparent_is_sent_unchanged(run, client):
    probes, spans, _ = run
    probe = probes["own-" + client.replace(".", "")]
    echo = _echo(probe)
    assert echo["headers"]["traceparent"] == OWN_TRACEPARENT and echo["x-user"] == "u-2"
    assert probe.report["unchanged"] is True
    _, a_client, b_servers = _tree(spans, probe)
    assert a_client["status"] == "ok"
    assert [s["parent_id"] for s in b_servers] == [OWN_TRACEPARENT.split("-")[2]]  # the app's context won


@pytest.mark.parametrize("client", CLIENTS)
@pytest.mark.parametrize("code", [503, 404])
def test_error_statuses(run, client, code):
    probes, spans, _ = run
    probe = probes[("fail-" if code == 503 else "missing-") + client.replace(".", "")]
    assert probe.report["status"] == code and probe.report["error"] is None  # the client's normal answer
    _, a_client, (b_server,) = _tree(spans, probe)
    assert a_client["status"] == "error" and a_client["attributes"]["error.type"] == str(code)
    assert a_client["attributes"]["http.response.status_code"] == code
    assert b_server["parent_id"] == a_client["span_id"]


@pytest.mark.parametrize("client", CLIENTS)
@pytest.mark.parametrize("kind", ["refused", "timeout"])
def test_connection_refused_and_timeout(run, client, kind):
    probes, spans, _ = run
    probe = probes["%s-%s" % (kind, client.replace(".", ""))]
    error = probe.report["error"]
    assert error, probe.report  # the client's own exception reached the app
    assert "autoinstr" not in error
    _, a_client, b_servers = _tree(spans, probe)
    assert a_client["status"] == "error" and a_client["attributes"]["error.type"] == error
    assert "http.response.status_code" not in a_client["attributes"]
    if kind == "timeout":
        assert 300_000_000 <= a_client["duration_ns"] < 1_400_000_000
        assert [s["parent_id"] for s in b_servers] == [a_client["span_id"]]  # B saw it, and answered late
    else:
        assert b_servers == [] and a_client["events"][0]["name"] == "exception"


@pytest.mark.parametrize("client", CLIENTS)
def test_streamed_body_is_timed_whole_and_read_unchanged(run, client):
    probes, spans, _ = run
    probe = probes["stream-" + client.replace(".", "")]
    assert probe.report["status"] == 200 and probe.report["body"] == "chunk0;chunk1;chunk2;chunk3;"
    assert probe.report["chunks"] >= 2
    _, a_client, (b_server,) = _tree(spans, probe)
    assert a_client["duration_ns"] >= 300_000_000  # B sent its 4 chunks 100 ms apart: the whole body is timed
    assert b_server["duration_ns"] >= 300_000_000 and b_server["parent_id"] == a_client["span_id"]


@pytest.mark.parametrize("client", [c for c in CLIENTS if c != "http.client"])
def test_redirect_is_one_client_span_over_both_hops(run, client):
    probes, spans, _ = run
    probe = probes["redirect-" + client.replace(".", "")]
    echo = _echo(probe)
    _, a_client, b_servers = _tree(spans, probe)
    assert a_client["attributes"]["http.request.resend_count"] == 1
    assert a_client["attributes"]["http.response.status_code"] == 200
    assert len(b_servers) == 2 and {s["parent_id"] for s in b_servers} == {a_client["span_id"]}
    assert echo["headers"]["traceparent"].split("-")[2] == a_client["span_id"]


@pytest.mark.parametrize("client", CLIENTS)
def test_unsampled_trace_propagates_unsampled_and_stores_nothing(run, client):
    probes, spans, _ = run
    probe = probes["unsampled-" + client.replace(".", "")]
    headers = _echo(probe)["headers"]
    version, trace_id, span_id, flags = headers["traceparent"].split("-")
    assert (version, trace_id, flags) == ("00", UNSAMPLED_TRACE, "00")
    assert HEX16.match(span_id) and span_id != UNSAMPLED_PARENT  # A's (unrecorded) client span
    assert headers["baggage"] == "tenant=t1"
    for name in ("a-default", "b-default"):
        assert not [s for s in spans[name] if s["trace_id"] == UNSAMPLED_TRACE or probe.marker in json.dumps(s)]


@pytest.mark.parametrize("client", CLIENTS)
def test_w3c_only_and_b3_only_configurations(run, client):
    probes, spans, _ = run
    w3c, b3 = probes["w3c-" + client.replace(".", "")], probes["b3-" + client.replace(".", "")]
    _, w_client, (w_server,) = _tree(spans, w3c)
    assert _echo(w3c)["headers"] == {"traceparent": "00-%s-%s-01" % (w_client["trace_id"], w_client["span_id"])}
    assert w_server["parent_id"] == w_client["span_id"]  # and no baggage: that propagator is off
    _, b_client, (b_server,) = _tree(spans, b3)
    assert _echo(b3)["headers"] == {"b3": "%s-%s-1" % (b_client["trace_id"], b_client["span_id"])}
    assert b_server["parent_id"] == b_client["span_id"] and b_server["trace_id"] == b_client["trace_id"]


def test_every_service_stored_each_span_once_and_nothing_else_leaked(run):
    _, spans, _ = run
    for name, records in spans.items():
        ids = [(s["trace_id"], s["span_id"]) for s in records]
        assert len(ids) == len(set(ids)), name
        if name.startswith("b-"):
            assert {s["kind"] for s in records} == {"server"}, name
        assert not [s for s in records if "u-1" in json.dumps(s)]  # the app's headers are not recorded


# ------------------------------------------------------------------------------------ on the wire

W3C_LINE = re.compile(rb"traceparent: 00-([0-9a-f]{32})-([0-9a-f]{16})-(0[01])\Z")
B3_SINGLE_LINE = re.compile(rb"b3: ([0-9a-f]{32})-([0-9a-f]{16})-([01])\Z")


def _header_lines(head: bytes) -> list:
    lines = head.split(b"\r\n")
    assert lines[-2:] == [b"", b""], head  # the head ends with one blank line
    return lines[1:-2]


def _only(lines: list, name: bytes) -> list:
    return [ln for ln in lines if ln.split(b":", 1)[0].lower() == name.lower()]


@pytest.fixture(scope="module")
def wire(sandbox_factory):
    """The wire script under the agent, against the raw server, once per configuration."""
    box = sandbox_factory("http-wire")
    script = box.write("wire.py", WIRE_SCRIPT)
    raw = RawServer()
    parent_trace, parent_span = "4bf92f3577b34da6a3ce929d0e0e4736", "00f067aa0ba902b7"
    runs = {}
    try:
        for name, propagators, flag in (("w3c", "tracecontext,baggage", "01"), ("b3", "b3", "01"),
                                        ("b3multi", "b3multi", "01"), ("w3c-unsampled", "tracecontext", "00"),
                                        ("b3-unsampled", "b3,b3multi", "00")):
            jsonl = os.path.join(box.dir, name + ".jsonl")
            parent = {"traceparent": "00-%s-%s-%s" % (parent_trace, parent_span, flag),
                      "b3": "%s-%s-%s" % (parent_trace, parent_span, flag[1]),
                      "tracestate": "congo=t61rcWkgMzE,rojo=00f067aa0ba902b7",
                      "baggage": "userId=alice,isProduction=false"}
            before = len(raw.heads)
            proc = box.run(["python", script, str(raw.port), json.dumps(parent), ",".join(CLIENTS)],
                           env=box.env(AUTOINSTR_PROPAGATORS=propagators, AUTOINSTR_EXPORTER="jsonl",
                                       AUTOINSTR_JSONL_PATH=jsonl, AUTOINSTR_SERVICE_NAME="wire-" + name))
            assert proc.returncode == 0 and "wire-done" in proc.stdout, proc.stderr
            assert proc.stderr == "", proc.stderr
            runs[name] = (raw.heads[before:], box.jsonl_spans(jsonl))
    finally:
        raw.close()
    return runs, parent_trace, parent_span


def _client_span(spans: list, client: str) -> dict:
    found = [s for s in spans if s["kind"] == "client" and s["attributes"]["url.full"].endswith("client=" + client)]
    assert len(found) == 1, (client, [s["attributes"].get("url.full") for s in spans])
    return found[0]


def _head(heads: list, path: str) -> bytes:
    found = [h for h in heads if h.split(b"\r\n", 1)[0].split(b" ")[1] == path.encode()]
    assert len(found) == 1, (path, len(found))
    return found[0]


@pytest.mark.parametrize("client", CLIENTS)
def test_w3c_headers_on_the_wire(wire, client):
    runs, trace, _ = wire
    heads, spans = runs["w3c"]
    lines = _header_lines(_head(heads, "/wire?client=" + client))
    span = _client_span(spans, client)
    (tp,) = _only(lines, b"traceparent")
    assert tp == b"traceparent: 00-%s-%s-01" % (trace.encode(), span["span_id"].encode())
    assert W3C_LINE.match(tp)
    assert _only(lines, b"tracestate") == [b"tracestate: congo=t61rcWkgMzE,rojo=00f067aa0ba902b7"]
    assert _only(lines, b"baggage") == [b"baggage: userId=alice,isProduction=false"]
    assert not _only(lines, b"b3") and not _only(lines, b"x-b3-traceid")


@pytest.mark.parametrize("client", CLIENTS)
def test_b3_headers_on_the_wire(wire, client):
    runs, trace, _ = wire
    heads, spans = runs["b3"]
    lines = _header_lines(_head(heads, "/wire?client=" + client))
    span = _client_span(spans, client)
    (b3,) = _only(lines, b"b3")
    assert b3 == b"b3: %s-%s-1" % (trace.encode(), span["span_id"].encode()) and B3_SINGLE_LINE.match(b3)
    assert not _only(lines, b"traceparent") and not _only(lines, b"baggage")
    heads, spans = runs["b3multi"]
    lines = _header_lines(_head(heads, "/wire?client=" + client))
    span = _client_span(spans, client)
    assert _only(lines, b"X-B3-TraceId") == [b"X-B3-TraceId: " + trace.encode()]
    assert _only(lines, b"X-B3-SpanId") == [b"X-B3-SpanId: " + span["span_id"].encode()]
    assert _only(lines, b"X-B3-Sampled") == [b"X-B3-Sampled: 1"]
    assert not _only(lines, b"b3") and not _only(lines, b"traceparent")


@pytest.mark.parametrize("client", CLIENTS)
def test_unsampled_headers_on_the_wire(wire, client):
    runs, trace, parent = wire
    heads, spans = runs["w3c-unsampled"]
    assert spans == []
    (tp,) = _only(_header_lines(_head(heads, "/wire?client=" + client)), b"traceparent")
    m = W3C_LINE.match(tp)
    assert m and m.group(1) == trace.encode() and m.group(3) == b"00" and m.group(2) != parent.encode()
    heads, spans = runs["b3-unsampled"]
    assert spans == []
    lines = _header_lines(_head(heads, "/wire?client=" + client))
    (b3,) = _only(lines, b"b3")
    m = B3_SINGLE_LINE.match(b3)
    assert m and m.group(1) == trace.encode() and m.group(3) == b"0"
    assert _only(lines, b"X-B3-Sampled") == [b"X-B3-Sampled: 0"]
    assert _only(lines, b"X-B3-SpanId") == [b"X-B3-SpanId: " + m.group(2)]


@pytest.mark.parametrize("client", CLIENTS)
def test_the_agents_own_traffic_carries_nothing_and_is_not_traced(wire, client):
    runs, _, _ = wire
    for name, (heads, spans) in runs.items():
        lines = _header_lines(_head(heads, "/agent?client=" + client))
        names = {ln.split(b":", 1)[0].lower() for ln in lines}
        assert not names & {b"traceparent", b"tracestate", b"baggage", b"b3", b"x-b3-traceid"}, (name, lines)
        assert not [s for s in spans if "/agent?" in s["attributes"].get("url.full", "")]
