"""OTLP/HTTP and Zipkin from a real traced app (under autoinstr-run) to a real loopback HTTP receiver.

The app exports to otlp (or zipkin) and jsonl in the same run; what the receiver gets is decoded with the
official definitions (opentelemetry-proto's generated classes; the Zipkin API schema with jsonschema) and
every field is compared with the jsonl span records."""

from __future__ import annotations

import base64
import gzip
import json
import os
import sys

import pytest

pb = pytest.importorskip("opentelemetry.proto.collector.trace.v1.trace_service_pb2")
from google.protobuf import json_format  # noqa: E402
from google.protobuf import unknown_fields as pb_unknown  # noqa: E402

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "tests"))
from ai_test_helpers import loopback_receivers  # noqa: E402
from test_zipkin import zipkin_validator  # noqa: E402

from autoinstr.export import otlp  # noqa: E402
from autoinstr.export.zipkin import tag_value  # noqa: E402

APP = """
import http.client, os, sqlite3, threading, time
from wsgiref.simple_server import make_server, WSGIRequestHandler
import autoinstr

class Quiet(WSGIRequestHandler):
    def log_message(self, *args):
        pass

def app(environ, start_response):
    db = sqlite3.connect(":memory:")
    db.execute("create table items (id integer, name text)")
    db.execute("insert into items values (1, 'secret')")
    db.execute("select name from items where id = 1").fetchall()
    if environ["PATH_INFO"] == "/fail":
        raise ValueError("kaput")
    start_response("200 OK", [("Content-Type", "text/plain")])
    return [b"ok"]

server = make_server("127.0.0.1", 0, app, handler_class=Quiet)
threading.Thread(target=server.serve_forever, daemon=True).start()
with autoinstr.span("batch", items=3, ratio=0.5, ok=True, tags=["a", "b"], big=-(1 << 62)) as s:
    s.add_event("started", {"n": 1, "why": "test"})
    for path in ("/hello", "/fail"):
        conn = http.client.HTTPConnection("127.0.0.1", server.server_port, timeout=10)
        conn.request("GET", path)
        conn.getresponse().read()
        conn.close()
    try:
        raise KeyError("missing")
    except KeyError as exc:
        s.record_exception(exc)
with autoinstr.span("publish", kind="producer", **{"server.address": "10.0.0.7", "server.port": 5672}):
    pass
time.sleep(float(os.environ.get("APP_LINGER", "0")))
server.shutdown()
"""


receiver = pytest.fixture(loopback_receivers)


def run_app(sandbox, exporter, **env):
    sandbox.write("app.py", APP)
    extra = {"AUTOINSTR_EXPORTER": exporter + ",jsonl", "AUTOINSTR_SERVICE_NAME": "shopapp",
             "AUTOINSTR_FLUSH_INTERVAL": "0.2", "AUTOINSTR_SHUTDOWN_TIMEOUT": "5"}
    extra.update(env)
    proc = sandbox.ok(["python", "app.py"], env=sandbox.env(**extra))
    assert "autoinstr warning" not in proc.stderr, proc.stderr
    records = sandbox.jsonl_spans()
    sandbox.assert_unique(records)
    names = {r["name"] for r in records}
    assert {"batch", "publish"} <= names, names
    assert {r["kind"] for r in records} == {"internal", "server", "client", "producer"}, records
    assert any(r["attributes"].get("db.system") == "sqlite" for r in records)
    return records


# ------------------------------------------------------------------------ official decoding -> records

def any_value(v):
    which = v.WhichOneof("value")
    if which == "array_value":
        return [any_value(x) for x in v.array_value.values]
    assert which in ("string_value", "bool_value", "int_value", "double_value"), which
    return getattr(v, which)


def attrs_of(kvs):
    out = {}
    for kv in kvs:
        assert kv.key not in out
        out[kv.key] = any_value(kv.value)
    return out


def assert_no_unknown_fields(msg, path="request"):
    assert len(pb_unknown.UnknownFieldSet(msg)) == 0, "unknown fields in " + path
    for field, value in msg.ListFields():
        if field.message_type is None:
            continue
        for i, item in enumerate(value if field.is_repeated else [value]):
            assert_no_unknown_fields(item, "%s.%s[%d]" % (path, field.name, i))


KINDS = {1: "internal", 2: "server", 3: "client", 4: "producer", 5: "consumer"}


def records_from_official(msg):
    """The request decoded with opentelemetry-proto, in the record shape (independent of otlp.py)."""
    out = []
    for rs in msg.resource_spans:
        resource = attrs_of(rs.resource.attributes)
        assert resource["telemetry.sdk.name"] == "autoinstr" and resource["telemetry.sdk.language"] == "python"
        assert resource["telemetry.sdk.version"] and resource["host.name"] and resource["process.pid"] > 0
        assert resource["process.runtime.name"] == sys.implementation.name
        assert resource["process.runtime.version"]
        assert resource["deployment.environment"] == "it"
        for ss in rs.scope_spans:
            assert ss.scope.name == "autoinstr"
            for s in ss.spans:
                assert len(s.trace_id) == 16 and len(s.span_id) == 8 and len(s.parent_span_id) in (0, 8)
                assert s.flags & 0xFF == 1
                attributes = attrs_of(s.attributes)
                if s.status.code == 2:
                    assert s.status.message == attributes.get("exception.message", "")
                else:
                    assert s.status.code == 0 and s.status.message == ""
                out.append({
                    "trace_id": s.trace_id.hex(), "span_id": s.span_id.hex(),
                    "parent_id": s.parent_span_id.hex() or None, "name": s.name, "kind": KINDS[s.kind],
                    "service": resource["service.name"], "start_ns": s.start_time_unix_nano,
                    "duration_ns": s.end_time_unix_nano - s.start_time_unix_nano,
                    "status": "error" if s.status.code == 2 else "ok", "attributes": attributes,
                    "events": [{"name": e.name, "time_ns": e.time_unix_nano, "attributes": attrs_of(e.attributes)}
                               for e in s.events]})
    return out


def typed(x):
    """Compare values with their types (True is not 1, 1 is not 1.0)."""
    if isinstance(x, dict):
        return {k: typed(v) for k, v in x.items()}
    if isinstance(x, list):
        return [typed(v) for v in x]
    return (type(x).__name__, x)


def assert_same(received, records):
    by_id = {r["span_id"]: r for r in records}
    assert sorted(r["span_id"] for r in received) == sorted(by_id), "span sets differ"
    for r in received:
        assert typed(r) == typed(by_id[r["span_id"]]), r["name"]


def hex_ids_to_base64(doc):
    if isinstance(doc, dict):
        return {k: (base64.b64encode(bytes.fromhex(v)).decode() if k in ("traceId", "spanId", "parentSpanId")
                    else hex_ids_to_base64(v)) for k, v in doc.items()}
    if isinstance(doc, list):
        return [hex_ids_to_base64(x) for x in doc]
    return doc


def no_export_spans(records, port):
    """The agent's own export traffic is never traced."""
    for r in records:
        a = r["attributes"]
        assert a.get("server.port") != port and str(port) not in str(a.get("url.full", "")), r


# ---------------------------------------------------------------------------------------------- OTLP

def test_otlp_protobuf_gzip_headers(sandbox, receiver):
    rcv = receiver()
    records = run_app(sandbox, "otlp", AUTOINSTR_OTLP_ENDPOINT=rcv.url, OTEL_EXPORTER_OTLP_COMPRESSION="gzip",
                      OTEL_EXPORTER_OTLP_HEADERS="x-api-key=k%3D1,x-tenant=shop",
                      OTEL_RESOURCE_ATTRIBUTES="deployment.environment=it")
    assert rcv.requests
    received = []
    mine = []
    for _, path, headers, body, status in rcv.requests:
        assert path == "/v1/traces" and status == 200
        assert headers["content-type"] == "application/x-protobuf" and headers["content-encoding"] == "gzip"
        assert headers["x-api-key"] == "k=1" and headers["x-tenant"] == "shop"
        raw = gzip.decompress(body)
        msg = pb.ExportTraceServiceRequest()
        msg.ParseFromString(raw)
        assert_no_unknown_fields(msg)
        assert msg.SerializeToString(deterministic=True) == raw  # field order and encodings as protobuf's own
        received += records_from_official(msg)
        mine += otlp.decode_protobuf(raw)
    assert_same(received, records)
    assert_same(mine, records)
    no_export_spans(records, rcv.port)
    assert {r["kind"] for r in records} >= {"internal", "server", "client", "producer"}
    batch = sandbox.one(records, "batch")
    assert batch["status"] == "error" and [e["name"] for e in batch["events"]] == ["started", "exception"]


def test_otlp_json(sandbox, receiver):
    rcv = receiver()
    records = run_app(sandbox, "otlp", AUTOINSTR_OTLP_ENDPOINT=rcv.url, AUTOINSTR_OTLP_PROTOCOL="http/json",
                      OTEL_RESOURCE_ATTRIBUTES="deployment.environment=it")
    received = []
    mine = []
    for _, path, headers, body, _status in rcv.requests:
        assert path == "/v1/traces" and headers["content-type"] == "application/json"
        assert "content-encoding" not in headers
        doc = json.loads(body)
        for rs in doc["resourceSpans"]:
            for s in rs["scopeSpans"][0]["spans"]:
                assert len(s["traceId"]) == 32 and s["traceId"] == s["traceId"].lower()
                assert isinstance(s["kind"], int) and isinstance(s["startTimeUnixNano"], str)
                assert isinstance(s["endTimeUnixNano"], str)
                for kv in s["attributes"]:
                    if "intValue" in kv["value"]:
                        assert isinstance(kv["value"]["intValue"], str)
        msg = json_format.Parse(json.dumps(hex_ids_to_base64(doc)), pb.ExportTraceServiceRequest())
        received += records_from_official(msg)
        mine += otlp.decode_json(body)
    assert_same(received, records)
    assert_same(mine, records)


def test_otlp_retry_after(sandbox, receiver):
    rcv = receiver([(429, {"Retry-After": "1"})])
    records = run_app(sandbox, "otlp", AUTOINSTR_OTLP_ENDPOINT=rcv.url, APP_LINGER="2.5",
                      OTEL_RESOURCE_ATTRIBUTES="deployment.environment=it")
    first, *rest = rcv.requests
    assert first[4] == 429 and rest and all(r[4] == 200 for r in rest)
    assert rest[0][0] - first[0] >= 0.95, "retried before Retry-After"
    refused = {s["span_id"] for s in otlp.decode_protobuf(first[3])}
    received = [s for r in rest for s in otlp.decode_protobuf(r[3])]
    assert refused <= {s["span_id"] for s in received}
    assert_same(received, records)  # each span exactly once


def test_otlp_bad_request_drops_with_one_warning(sandbox, receiver):
    rcv = receiver([(400, {})] * 50)
    sandbox.write("app.py", APP)
    proc = sandbox.run(["python", "app.py"], env=sandbox.env(
        AUTOINSTR_EXPORTER="otlp,jsonl", AUTOINSTR_OTLP_ENDPOINT=rcv.url, AUTOINSTR_FLUSH_INTERVAL="0.2",
        OTEL_EXPORTER_OTLP_HEADERS="x-api-key=topsecret"))
    assert proc.returncode == 0, proc.stderr
    warnings = [line for line in proc.stderr.splitlines() if "autoinstr warning" in line]
    assert len(warnings) == 1 and "HTTP 400" in warnings[0] and "topsecret" not in proc.stderr
    assert all(r[4] == 400 for r in rcv.requests)
    bodies = [r[3] for r in rcv.requests]
    assert bodies and len(set(bodies)) == len(bodies)  # each batch sent once, not retried
    assert sandbox.jsonl_spans()  # the other exporter is unaffected


# -------------------------------------------------------------------------------------------- Zipkin

def test_zipkin(sandbox, receiver):
    rcv = receiver()
    records = run_app(sandbox, "zipkin", AUTOINSTR_ZIPKIN_URL=rcv.url + "/api/v2/spans")
    validator = zipkin_validator()
    spans = []
    for _, path, headers, body, _status in rcv.requests:
        assert path == "/api/v2/spans" and headers["content-type"] == "application/json"
        doc = json.loads(body)
        validator.validate(doc)
        spans += doc
    no_export_spans(records, rcv.port)
    by_id = {r["span_id"]: r for r in records}
    assert sorted(s["id"] for s in spans) == sorted(by_id)
    for s in spans:
        r = by_id[s["id"]]
        assert s["traceId"] == r["trace_id"] and s.get("parentId") == r["parent_id"] and s["name"] == r["name"]
        assert s.get("kind") == (None if r["kind"] == "internal" else r["kind"].upper())
        assert s["timestamp"] == r["start_ns"] // 1000
        assert s["duration"] == max(1, -(-r["duration_ns"] // 1000))
        assert s["localEndpoint"]["serviceName"] == "shopapp" == r["service"]
        tags = {k: tag_value(v) for k, v in r["attributes"].items()}
        if r["status"] == "error":
            tags["otel.status_code"] = "ERROR"
            tags["error"] = r["attributes"].get("exception.message") or "true"
        assert s.get("tags", {}) == tags
        assert all(isinstance(v, str) for v in s.get("tags", {}).values())
        annotations = [{"timestamp": e["time_ns"] // 1000,
                        "value": json.dumps({e["name"]: e["attributes"]}, separators=(",", ":"), ensure_ascii=False)
                        if e["attributes"] else e["name"]} for e in r["events"]]
        assert s.get("annotations", []) == annotations
        a = r["attributes"]
        if r["kind"] in ("client", "producer") and a.get("server.address"):
            remote = s["remoteEndpoint"]
            assert remote.get("ipv4", remote.get("serviceName")) == a["server.address"]
            assert remote["port"] == a["server.port"]
        if r["kind"] == "server":
            assert s["localEndpoint"].get("port") == a.get("server.port")
            if a.get("client.address"):
                assert s["remoteEndpoint"]["ipv4"] == a["client.address"]
        if r["kind"] == "client" and not a.get("server.address"):  # sqlite: no peer
            assert "remoteEndpoint" not in s
    assert any(s.get("kind") == "CLIENT" and "remoteEndpoint" in s for s in spans)
    publish = [s for s in spans if s["name"] == "publish"][0]
    assert publish["remoteEndpoint"] == {"ipv4": "10.0.0.7", "port": 5672}
