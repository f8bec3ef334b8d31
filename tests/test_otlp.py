"""OTLP wire format: our hand-written protobuf and JSON encoders checked against the official
opentelemetry-proto definitions, our decoders round-tripping them, and the decoders' robustness."""

from __future__ import annotations

import base64
import gzip
import json

import pytest
from ai_test_helpers import loopback_receivers
from google.protobuf import json_format
from google.protobuf import unknown_fields as pb_unknown
from google.protobuf.message import Message
from hypothesis import given, settings
from hypothesis import strategies as st
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest

from autoinstr.export import otlp

TRACE = "4bf92f3577b34da6a3ce929d0e0e4736"


def rec(**kw) -> dict:
    r = {"trace_id": TRACE, "span_id": "00f067aa0ba902b7", "parent_id": None, "name": "GET /users/<int:id>",
         "kind": "server", "service": "shop", "start_ns": 1764158400000000000, "duration_ns": 1834000,
         "status": "ok", "attributes": {"http.request.method": "GET", "http.response.status_code": 200},
         "events": []}
    r.update(kw)
    return r


RECORDS = [
    rec(status="error", trace_state="congo=t61rcWkgMzE,rojo=00f067aa0ba902b7",
        attributes={"s": "x", "t": True, "f": False, "i": -5, "big": (1 << 63) - 1, "small": -(1 << 63), "d": 1.5,
                    "z": 0, "empty": "", "arr": ["a", 1, 2.5, False], "none": [], "unicode": "héllo ✓",
                    "exception.message": "boom", "error.type": "ValueError"},
        events=[{"name": "exception", "time_ns": 1764158400000000001,
                 "attributes": {"exception.type": "ValueError", "exception.message": "boom",
                                "exception.stacktrace": "Traceback...", "exception.escaped": True}},
                {"name": "note", "time_ns": 1764158400000000002, "attributes": {}}]),
    rec(span_id="00f067aa0ba902b8", parent_id="00f067aa0ba902b7", name="SELECT users", kind="client",
        service="shop", duration_ns=0, attributes={}),
    rec(span_id="00f067aa0ba902ba", kind="producer", status="error",
        attributes={"otel.status_description": "queue full", "exception.message": "other"}),
    rec(span_id="00f067aa0ba902bb", kind="consumer", status="error", attributes={}),
    rec(span_id="00f067aa0ba902b9", parent_id="00f067aa0ba902b7", kind="internal", service="inventory"),
]
RESOURCE = {"host.name": "box", "process.pid": 42, "process.runtime.name": "cpython",
            "telemetry.sdk.name": "autoinstr", "telemetry.sdk.language": "python", "telemetry.sdk.version": "0.1.0"}


def assert_no_unknown_fields(msg: Message, path: str = "") -> None:
    assert len(pb_unknown.UnknownFieldSet(msg)) == 0, "unknown fields in %s" % (path or type(msg).__name__)
    for field, value in msg.ListFields():
        if field.message_type is None:
            continue
        items = value if getattr(field, "is_repeated", None) or getattr(field, "label", 1) == 3 else [value]
        for i, item in enumerate(items):
            assert_no_unknown_fields(item, "%s.%s[%d]" % (path, field.name, i))


def parse_pb(body: bytes) -> ExportTraceServiceRequest:
    msg = ExportTraceServiceRequest()
    msg.ParseFromString(body)
    assert_no_unknown_fields(msg)
    return msg


def otlp_json_to_proto_json(doc):
    """OTLP/JSON (hex ids) -> protobuf's canonical JSON mapping (base64 bytes), for json_format.Parse."""
    if isinstance(doc, dict):
        out = {}
        for k, v in doc.items():
            if k in ("traceId", "spanId", "parentSpanId") and isinstance(v, str):
                out[k] = base64.b64encode(bytes.fromhex(v)).decode()
            else:
                out[k] = otlp_json_to_proto_json(v)
        return out
    if isinstance(doc, list):
        return [otlp_json_to_proto_json(x) for x in doc]
    return doc


# -------------------------------------------------------------------------------------- round trips

def test_protobuf_round_trip():
    assert otlp.decode_protobuf(otlp.encode_protobuf(RECORDS, RESOURCE)) == RECORDS


def test_json_round_trip():
    assert otlp.decode_json(otlp.encode_json(RECORDS, RESOURCE)) == RECORDS


def test_empty_request():
    assert otlp.decode_protobuf(b"") == []
    assert otlp.decode_protobuf(otlp.encode_protobuf([])) == []
    assert otlp.decode_json(b"{}") == []
    assert otlp.decode_json(otlp.encode_json([])) == []


# ------------------------------------------------------------------------- against opentelemetry-proto

def test_protobuf_parses_with_official_definitions():
    msg = parse_pb(otlp.encode_protobuf(RECORDS, RESOURCE))
    assert [rs.resource.attributes[0].value.string_value for rs in msg.resource_spans] == ["shop", "inventory"]
    rs = msg.resource_spans[0]
    res = {kv.key: kv.value for kv in rs.resource.attributes}
    assert res["host.name"].string_value == "box" and res["process.pid"].int_value == 42
    assert rs.scope_spans[0].scope.name == "autoinstr"
    span = rs.scope_spans[0].spans[0]
    assert span.trace_id.hex() == TRACE and span.span_id.hex() == "00f067aa0ba902b7" and span.parent_span_id == b""
    assert span.trace_state == RECORDS[0]["trace_state"]
    assert span.kind == span.SPAN_KIND_SERVER
    assert span.start_time_unix_nano == 1764158400000000000
    assert span.end_time_unix_nano == 1764158400000000000 + 1834000
    assert span.status.code == span.status.STATUS_CODE_ERROR and span.status.message == "boom"
    attrs = {kv.key: kv.value for kv in span.attributes}
    assert attrs["s"].WhichOneof("value") == "string_value"
    assert attrs["t"].bool_value is True and attrs["f"].WhichOneof("value") == "bool_value"
    assert attrs["i"].int_value == -5 and attrs["big"].int_value == (1 << 63) - 1
    assert attrs["small"].int_value == -(1 << 63)
    assert attrs["z"].WhichOneof("value") == "int_value" and attrs["empty"].WhichOneof("value") == "string_value"
    assert attrs["d"].double_value == 1.5
    assert [v.WhichOneof("value") for v in attrs["arr"].array_value.values] == [
        "string_value", "int_value", "double_value", "bool_value"]
    assert attrs["none"].WhichOneof("value") == "array_value"
    assert attrs["unicode"].string_value == "héllo ✓"
    assert [e.name for e in span.events] == ["exception", "note"]
    assert span.events[0].time_unix_nano == 1764158400000000001
    assert span.flags & 0xFF == 1
    kinds = [s.kind for rs in msg.resource_spans for s in rs.scope_spans[0].spans]
    assert kinds == [2, 3, 4, 5, 1]
    client = rs.scope_spans[0].spans[1]
    assert client.parent_span_id.hex() == "00f067aa0ba902b7" and not client.HasField("status")
    producer = rs.scope_spans[0].spans[2]
    assert producer.status.message == "queue full"
    consumer = rs.scope_spans[0].spans[3]
    assert consumer.status.code == 2 and consumer.status.message == ""


def test_protobuf_matches_official_serialization():
    """Field order and encodings as protobuf writes them: our bytes re-serialize identically."""
    body = otlp.encode_protobuf(RECORDS, RESOURCE)
    assert parse_pb(body).SerializeToString(deterministic=True) == body


def test_json_matches_official_json_mapping():
    body = otlp.encode_json(RECORDS, RESOURCE)
    doc = json.loads(body)
    msg = json_format.Parse(json.dumps(otlp_json_to_proto_json(doc)), ExportTraceServiceRequest())
    assert msg == parse_pb(otlp.encode_protobuf(RECORDS, RESOURCE))
    span = doc["resourceSpans"][0]["scopeSpans"][0]["spans"][0]
    assert span["traceId"] == TRACE and span["spanId"] == "00f067aa0ba902b7"
    assert span["kind"] == 2 and span["status"] == {"message": "boom", "code": 2}
    assert span["startTimeUnixNano"] == "1764158400000000000"
    assert span["endTimeUnixNano"] == str(1764158400000000000 + 1834000)
    attrs = {kv["key"]: kv["value"] for kv in span["attributes"]}
    assert attrs["i"] == {"intValue": "-5"} and attrs["d"] == {"doubleValue": 1.5}
    assert attrs["t"] == {"boolValue": True}
    assert attrs["arr"] == {"arrayValue": {"values": [{"stringValue": "a"}, {"intValue": "1"},
                                                      {"doubleValue": 2.5}, {"boolValue": False}]}}
    assert span["events"][0]["timeUnixNano"] == "1764158400000000001"
    assert "parentSpanId" not in span
    child = doc["resourceSpans"][0]["scopeSpans"][0]["spans"][1]
    assert child["parentSpanId"] == "00f067aa0ba902b7" and child["kind"] == 3 and "status" not in child


def test_decoders_read_official_encodings():
    """What the official library writes (e.g. another language's agent), our decoders read."""
    req = ExportTraceServiceRequest()
    rs = req.resource_spans.add()
    kv = rs.resource.attributes.add()
    kv.key, kv.value.string_value = "service.name", "other-lang"
    span = rs.scope_spans.add().spans.add()
    span.trace_id, span.span_id = bytes(range(1, 17)), bytes(range(1, 9))
    span.name, span.kind = "work", span.SPAN_KIND_CONSUMER
    span.start_time_unix_nano, span.end_time_unix_nano = 100, 50  # end before start: duration 0
    span.status.code, span.status.message = span.status.STATUS_CODE_ERROR, "bad"
    a = span.attributes.add()
    a.key = "kv"
    inner = a.value.kvlist_value.values.add()
    inner.key, inner.value.int_value = "n", 7
    a = span.attributes.add()
    a.key, a.value.bytes_value = "raw", b"\x00\xff"
    a = span.attributes.add()
    a.key, a.value.double_value = "nan", float("nan")
    a = span.attributes.add()
    a.key = "nested"
    a.value.array_value.values.add().array_value.values.add().int_value = 1
    a = span.attributes.add()
    a.key = "unset"  # an AnyValue with nothing set: dropped
    a.value.SetInParent()
    link = span.links.add()
    link.trace_id, link.span_id = bytes(16), bytes(8)
    span.dropped_attributes_count = 3
    expected = [{"trace_id": bytes(range(1, 17)).hex(), "span_id": bytes(range(1, 9)).hex(), "parent_id": None,
                 "name": "work", "kind": "consumer", "service": "other-lang", "start_ns": 100, "duration_ns": 0,
                 "status": "error", "attributes": {"kv": '{"n":7}', "raw": "AP8=", "nan": "nan", "nested": ["[1]"],
                                                   "otel.status_description": "bad"},
                 "events": []}]
    assert otlp.decode_protobuf(req.SerializeToString()) == expected
    as_json = json.loads(json_format.MessageToJson(req))  # canonical mapping: base64 ids -> make them hex
    s = as_json["resourceSpans"][0]["scopeSpans"][0]["spans"][0]
    s["traceId"], s["spanId"] = bytes(range(1, 17)).hex(), bytes(range(1, 9)).hex()
    s.pop("links")
    assert otlp.decode_json(json.dumps(as_json).encode()) == expected


def test_json_decoder_accepts_variants():
    doc = {"resource_spans": [{"resource": {"attributes": [{"key": "service.name", "value": {"stringValue": "s"}}]},
                               "scope_spans": [{"spans": [{
                                   "trace_id": TRACE.upper(), "span_id": "00F067AA0BA902B7", "parent_span_id": "",
                                   "name": "n", "kind": "SPAN_KIND_SERVER", "start_time_unix_nano": 5,
                                   "end_time_unix_nano": "9", "status": {"code": "STATUS_CODE_OK"},
                                   "attributes": [{"key": "i", "value": {"intValue": 3}},
                                                  {"key": "d", "value": {"doubleValue": "Infinity"}},
                                                  {"key": "x", "value": {}}]}]}]}]}
    [r] = otlp.decode_json(json.dumps(doc).encode())
    assert r["trace_id"] == TRACE and r["span_id"] == "00f067aa0ba902b7" and r["parent_id"] is None
    assert r["kind"] == "server" and r["start_ns"] == 5 and r["duration_ns"] == 4 and r["status"] == "ok"
    assert r["attributes"] == {"i": 3, "d": "inf"}
    assert r["service"] == "s"


def test_missing_service_name():
    body = otlp.encode_protobuf([rec(service="")])
    assert otlp.decode_protobuf(body)[0]["service"] == otlp.UNKNOWN_SERVICE
    doc = {"resourceSpans": [{"scopeSpans": [{"spans": [{"traceId": TRACE, "spanId": "00f067aa0ba902b7"}]}]}]}
    [r] = otlp.decode_json(json.dumps(doc))
    assert r["service"] == otlp.UNKNOWN_SERVICE and r["name"] == "unnamed" and r["kind"] == "internal"


# ------------------------------------------------------------------------------------ malformed input

MALFORMED_PB = [
    b"\x0a",                                  # truncated length
    b"\x0a\x05\x01",                          # length past the end
    b"\x08" + b"\xff" * 11,                   # varint too long
    b"\x0b",                                  # group start (wire type 3)
    b"\x00\x00",                              # field 0
    b"\x09\x00\x00",                          # truncated fixed64
    b"\x08\x01",                              # resource_spans as a varint
]


@pytest.mark.parametrize("body", MALFORMED_PB)
def test_protobuf_malformed(body):
    with pytest.raises(ValueError):
        otlp.decode_protobuf(body)


def span_body(span_fields: bytes, resource: bytes = b"") -> bytes:
    def ld(tag: bytes, data: bytes) -> bytes:
        return tag + otlp._varint(len(data)) + data
    rs = (ld(b"\x0a", resource) if resource else b"") + ld(b"\x12", ld(b"\x12", span_fields))
    return ld(b"\x0a", rs)


IDS = b"\x0a\x10" + bytes(range(1, 17)) + b"\x12\x08" + bytes(range(1, 9))


def test_protobuf_span_checks():
    assert otlp.decode_protobuf(span_body(IDS))[0]["name"] == "unnamed"
    for bad in (b"\x0a\x0f" + bytes(15) + b"\x12\x08" + bytes(range(1, 9)),  # short trace id
                b"\x0a\x10" + bytes(16) + b"\x12\x08" + bytes(range(1, 9)),  # all-zero trace id
                b"\x12\x08" + bytes(range(1, 9)),                            # no trace id
                IDS + b"\x22\x03abc",                                        # bad parent id
                IDS + b"\x2a\x02\xff\xfe",                                   # name not UTF-8
                IDS + b"\x30\x00\x00",                                       # kind ok, then a field 0
                IDS + b"\x31" + bytes(8),                                    # kind as fixed64
                IDS + b"\x3a\x00"):                                          # start time as bytes
        with pytest.raises(ValueError):
            otlp.decode_protobuf(span_body(bad))
    # unknown fields are skipped, as protobuf does
    assert otlp.decode_protobuf(span_body(IDS + b"\xf8\x07\x05" + b"\x92\x08\x00"))[0]["span_id"] == "0102030405060708"


def test_protobuf_nesting_is_bounded():
    def ld(tag: bytes, data: bytes) -> bytes:
        return tag + otlp._varint(len(data)) + data
    value = b"\x18\x01"
    for _ in range(otlp.MAX_DEPTH + 5):
        value = ld(b"\x2a", ld(b"\x0a", value))  # array_value { values { ... } }
    attr = ld(b"\x4a", ld(b"\x0a", b"k") + ld(b"\x12", value))
    with pytest.raises(ValueError, match="nested"):
        otlp.decode_protobuf(span_body(IDS + attr))
    deep = b"[" * 100_000 + b"]" * 100_000
    with pytest.raises(ValueError):
        otlp.decode_json(deep)
    doc = {"stringValue": "x"}
    for _ in range(otlp.MAX_DEPTH + 5):
        doc = {"arrayValue": {"values": [doc]}}
    body = {"resourceSpans": [{"scopeSpans": [{"spans": [
        {"traceId": TRACE, "spanId": "00f067aa0ba902b7", "attributes": [{"key": "k", "value": doc}]}]}]}]}
    with pytest.raises(ValueError, match="nested"):
        otlp.decode_json(json.dumps(body))


MALFORMED_JSON = [
    b"", b"not json", b"[]", b"\xff\xfe\x00", b'{"resourceSpans": 3}', b'{"resourceSpans": [1]}',
    b'{"resourceSpans": [{"scopeSpans": [{"spans": [{"traceId": "xyz", "spanId": "00f067aa0ba902b7"}]}]}]}',
    b'{"resourceSpans": [{"scopeSpans": [{"spans": [{"traceId": "4bf92f3577b34da6a3ce929d0e0e4736"}]}]}]}',
    ('{"resourceSpans": [{"scopeSpans": [{"spans": [{"traceId": "%s", "spanId": "00f067aa0ba902b7", '
     '"startTimeUnixNano": "-1"}]}]}]}' % TRACE).encode(),
    ('{"resourceSpans": [{"scopeSpans": [{"spans": [{"traceId": "%s", "spanId": "00f067aa0ba902b7", '
     '"kind": true}]}]}]}' % TRACE).encode(),
    ('{"resourceSpans": [{"scopeSpans": [{"spans": [{"traceId": "%s", "spanId": "00f067aa0ba902b7", '
     '"attributes": [{"key": "a", "value": {"intValue": "1e99"}}]}]}]}]}' % TRACE).encode(),
    ('{"resourceSpans": [{"scopeSpans": [{"spans": [{"traceId": "%s", "spanId": "00f067aa0ba902b7", '
     '"attributes": [{"key": "a", "value": {"intValue": "99999999999999999999"}}]}]}]}]}' % TRACE).encode(),
    ('{"resourceSpans": [{"scopeSpans": [{"spans": [{"traceId": "%s", "spanId": "00f067aa0ba902b7", '
     '"attributes": [{"key": "a", "value": {"bytesValue": "!!"}}]}]}]}]}' % TRACE).encode(),
    ('{"resourceSpans": [{"scopeSpans": [{"spans": [{"traceId": "%s", "spanId": "00f067aa0ba902b7", '
     '"name": 5}]}]}]}' % TRACE).encode(),
    b'{"a": ' + b"1" * 5000 + b"}",
]


@pytest.mark.parametrize("body", MALFORMED_JSON)
def test_json_malformed(body):
    with pytest.raises(ValueError):
        otlp.decode_json(body)


def test_json_lone_surrogates_are_escaped():
    body = ('{"resourceSpans": [{"scopeSpans": [{"spans": [{"traceId": "%s", "spanId": "00f067aa0ba902b7", '
            '"name": "a\\ud800b"}]}]}]}' % TRACE).encode()
    [r] = otlp.decode_json(body)
    assert r["name"] == "a\\ud800b"
    r["name"].encode("utf-8")


@settings(max_examples=400)
@given(st.binary(max_size=300))
def test_protobuf_decoder_random_bytes(body):
    try:
        otlp.decode_protobuf(body)
    except ValueError:
        pass


@settings(max_examples=300)
@given(st.integers(0, 10_000), st.integers(0, 255), st.integers(1, 4))
def test_protobuf_decoder_mutations(pos, byte, cut):
    """Valid bodies with a byte changed, or truncated: ValueError or records, nothing else."""
    body = bytearray(otlp.encode_protobuf(RECORDS, RESOURCE))
    body[pos % len(body)] = byte
    for candidate in (bytes(body), bytes(body[: len(body) * cut // 5])):
        try:
            otlp.decode_protobuf(candidate)
        except ValueError:
            pass


json_values = st.recursive(st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=5),
                           lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.sampled_from(
                               ["resourceSpans", "scopeSpans", "spans", "traceId", "spanId", "attributes", "key",
                                "value", "intValue", "arrayValue", "values", "kvlistValue", "events", "status",
                                "code", "kind", "name", "startTimeUnixNano", "bytesValue", "doubleValue"]) | st.text(
                                   max_size=3), inner, max_size=4), max_leaves=30)


@settings(max_examples=400)
@given(json_values)
def test_json_decoder_random_documents(doc):
    try:
        otlp.decode_json(json.dumps(doc).encode())
    except ValueError:
        pass


@settings(max_examples=200)
@given(st.binary(max_size=200))
def test_json_decoder_random_bytes(body):
    for candidate in (body, gzip.compress(body)):
        try:
            otlp.decode_json(candidate)
        except ValueError:
            pass


# ------------------------------------------------------------------------------ generated round trips

scalars = (st.text(max_size=20) | st.booleans() | st.integers(-(1 << 63), (1 << 63) - 1)
           | st.floats(allow_nan=False, allow_infinity=False))
attr_values = scalars | st.lists(st.text(max_size=5) | st.booleans() | st.integers(-(1 << 63), (1 << 63) - 1)
                                 | st.floats(allow_nan=False, allow_infinity=False), max_size=4)
attributes = st.dictionaries(st.text(max_size=12), attr_values, max_size=6)
hex_id = st.integers(1, (1 << 64) - 1).map(lambda n: "%016x" % n)
records = st.builds(
    lambda trace, span, parent, name, kind, service, start, dur, status, attrs, events: {
        "trace_id": "%032x" % trace, "span_id": span, "parent_id": parent, "name": name, "kind": kind,
        "service": service, "start_ns": start, "duration_ns": dur, "status": status, "attributes": attrs,
        "events": events},
    st.integers(1, (1 << 128) - 1), hex_id, st.none() | hex_id, st.text(min_size=1, max_size=20),
    st.sampled_from(["internal", "server", "client", "producer", "consumer"]), st.text(min_size=1, max_size=8),
    st.integers(0, 1 << 62), st.integers(0, 1 << 40), st.sampled_from(["ok", "error"]),
    attributes.filter(lambda a: "otel.status_description" not in a),
    st.lists(st.builds(lambda n, t, a: {"name": n, "time_ns": t, "attributes": a},
                       st.text(max_size=10), st.integers(0, 1 << 63), attributes), max_size=3))


def _normalized(rs):
    """What decoding gives back by design: the status message kept apart from exception.message."""
    out = []
    for r in rs:
        r = json.loads(json.dumps(r))
        a = r["attributes"]
        message = a.get("otel.status_description") or a.get("exception.message")
        if r["status"] == "error" and isinstance(message, str) and message and a.get("exception.message") != message:
            a["otel.status_description"] = message
        out.append(r)
    return out


@settings(max_examples=150)
@given(st.lists(records, max_size=5))
def test_generated_round_trips(rs):
    rs = [dict(r, attributes={k: v for k, v in r["attributes"].items()
                              if not (k == "exception.message" and not isinstance(v, str))}) for r in rs]
    body = otlp.encode_protobuf(rs, RESOURCE)
    parse_pb(body)
    by_service = sorted(_normalized(rs), key=lambda r: list(dict.fromkeys(x["service"] for x in rs)).index(
        r["service"]))
    assert otlp.decode_protobuf(body) == by_service
    assert otlp.decode_json(otlp.encode_json(rs, RESOURCE)) == by_service


# ------------------------------------------------------------------------ exporter, HTTP and pipeline

receiver = pytest.fixture(loopback_receivers)


def otlp_exporter(env):
    from autoinstr.config import Config
    from autoinstr.export.otlp_exporter import OtlpExporter

    return OtlpExporter(Config(env, emit_warnings=False))


def test_exporter_protobuf_gzip_headers(receiver):
    r = receiver()
    exp = otlp_exporter({"AUTOINSTR_OTLP_ENDPOINT": r.url, "OTEL_EXPORTER_OTLP_COMPRESSION": "gzip",
                         "OTEL_EXPORTER_OTLP_HEADERS": "x-api-key=se%20cret,Authorization=Bearer abc",
                         "OTEL_RESOURCE_ATTRIBUTES": "deployment.environment=test,service.name=ignored"})
    exp.export(RECORDS)
    [(_, path, headers, body, _)] = r.requests
    assert path == "/v1/traces"
    assert headers["content-type"] == "application/x-protobuf" and headers["content-encoding"] == "gzip"
    assert headers["x-api-key"] == "se cret" and headers["authorization"] == "Bearer abc"
    msg = parse_pb(gzip.decompress(body))
    res = {kv.key: kv.value for kv in msg.resource_spans[0].resource.attributes}
    assert res["service.name"].string_value == "shop"
    assert res["deployment.environment"].string_value == "test"
    for key in ("host.name", "process.runtime.name", "process.runtime.version", "telemetry.sdk.version"):
        assert res[key].string_value
    assert res["process.pid"].int_value > 0
    assert res["telemetry.sdk.name"].string_value == "autoinstr"
    assert res["telemetry.sdk.language"].string_value == "python"
    assert otlp.decode_protobuf(gzip.decompress(body)) == RECORDS
    assert exp.probe()[0] is True and exp.destination().endswith("/v1/traces (http/protobuf, gzip)")


def test_exporter_json_and_traces_endpoint(receiver):
    r = receiver()
    exp = otlp_exporter({"OTEL_EXPORTER_OTLP_TRACES_ENDPOINT": r.url + "/custom/path",
                         "OTEL_EXPORTER_OTLP_PROTOCOL": "http/json"})
    exp.export(RECORDS)
    [(_, path, headers, body, _)] = r.requests
    assert path == "/custom/path" and headers["content-type"] == "application/json"
    assert "content-encoding" not in headers
    assert otlp.decode_json(body) == RECORDS


def test_exporter_status_handling(receiver):
    from autoinstr.export._http_post import ExportError

    r = receiver([(429, {"Retry-After": "7"}), (503, {}), (500, {}), (400, {}), (401, {}), (200, {})])
    exp = otlp_exporter({"AUTOINSTR_OTLP_ENDPOINT": r.url})
    expected = [(7.0, True), (None, True), (None, True), (None, False), (None, False)]
    for retry_after, retryable in expected:
        with pytest.raises(ExportError) as info:
            exp.export(RECORDS)
        assert (info.value.retry_after, info.value.retryable) == (retry_after, retryable)
    exp.export(RECORDS)
    exp = otlp_exporter({"AUTOINSTR_OTLP_ENDPOINT": "http://127.0.0.1:1"})
    with pytest.raises(ExportError) as info:
        exp.export(RECORDS)
    assert info.value.retryable and exp.probe()[0] is False


def test_retry_after_parsing():
    from email.utils import formatdate

    from autoinstr.export._http_post import parse_retry_after

    assert parse_retry_after("3") == 3.0 and parse_retry_after(None) is None and parse_retry_after("x") is None
    assert parse_retry_after("99999999999999") == 3600.0
    assert 55 <= parse_retry_after(formatdate(1_000_060, usegmt=True), now=1_000_000) <= 60
    assert parse_retry_after(formatdate(1_000_000, usegmt=True), now=1_000_060) == 0.0


class FlakyExporter:
    name = "flaky"

    def __init__(self, errors):
        self.errors = list(errors)
        self.calls = []
        self.got = []

    def export(self, records):
        self.calls.append(__import__("time").monotonic())
        if self.errors:
            raise self.errors.pop(0)
        self.got.extend(records)

    def shutdown(self):
        pass


def test_pipeline_honours_retry_after_and_drops_permanent_failures():
    from autoinstr.export._http_post import ExportError
    from autoinstr.export.pipeline import _ExporterSlot

    exp = FlakyExporter([ExportError("slow down", 429, retry_after=5.0)])
    slot = _ExporterSlot(exp, 1000)
    slot.offer(RECORDS)
    slot.pump(100.0)
    assert slot.pending and slot.pending[0][2] >= 105.0  # not before Retry-After
    slot.pump(104.9)
    assert len(exp.calls) == 1
    slot.pump(105.0)
    assert exp.got == RECORDS and not slot.pending and slot.exported == len(RECORDS)

    exp = FlakyExporter([ExportError("HTTP 400", 400, retryable=False)])
    slot = _ExporterSlot(exp, 1000)
    slot.offer(RECORDS)
    slot.pump(100.0)
    assert len(exp.calls) == 1 and not slot.pending and slot.dropped == len(RECORDS)

    exp = FlakyExporter([ExportError("boom", 503, retry_after=0.2)])  # at exit: waits, then retries
    slot = _ExporterSlot(exp, 1000)
    slot.offer(RECORDS)
    slot.pump(__import__("time").monotonic(), final=True)
    assert exp.got == RECORDS and exp.calls[1] - exp.calls[0] >= 0.2


# ------------------------------------------------------------------------------------------ settings

def test_config_otlp_settings(capsys):
    from autoinstr.config import Config

    c = Config({}, emit_warnings=False)
    assert (c.otlp_protocol, c.otlp_compression, c.otlp_headers, c.export_timeout, c.otlp_traces_endpoint) == (
        "http/protobuf", "none", (), 10.0, "")
    c = Config({"OTEL_EXPORTER_OTLP_PROTOCOL": "http/json", "OTEL_EXPORTER_OTLP_COMPRESSION": "gzip",
                "OTEL_EXPORTER_OTLP_HEADERS": "api-key=a%2Cb%3Dc, x-other = 1 ",
                "OTEL_EXPORTER_OTLP_TIMEOUT": "2500", "OTEL_RESOURCE_ATTRIBUTES": "service.name=from-res,team=core",
                "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT": "http://h:1/x/traces"})
    assert c.otlp_protocol == "http/json" and c.otlp_compression == "gzip"
    assert c.otlp_headers == (("api-key", "a,b=c"), ("x-other", "1"))
    assert c.export_timeout == 2.5 and c.otlp_traces_endpoint == "http://h:1/x/traces"
    assert c.resource_attributes == (("service.name", "from-res"), ("team", "core"))
    assert c.service_name == "from-res"
    assert Config({"OTEL_RESOURCE_ATTRIBUTES": "service.name=a", "OTEL_SERVICE_NAME": "b"}).service_name == "b"
    assert Config({"AUTOINSTR_OTLP_PROTOCOL": "http/protobuf", "OTEL_EXPORTER_OTLP_PROTOCOL": "http/json"}
                  ).otlp_protocol == "http/protobuf"
    assert Config({"AUTOINSTR_EXPORT_TIMEOUT": "3", "OTEL_EXPORTER_OTLP_TIMEOUT": "100"}).export_timeout == 3.0
    items = dict(c.items())
    assert items["OTEL_EXPORTER_OTLP_TRACES_HEADERS"] == "api-key=(set),x-other=(set)"
    assert c.sources["OTEL_EXPORTER_OTLP_TRACES_HEADERS"] == "OTEL_EXPORTER_OTLP_HEADERS"
    assert "a,b=c" not in str(c.items())
    assert capsys.readouterr().err == ""


def test_config_bad_values_warn_once_without_secrets(capsys):
    from autoinstr.config import Config

    c = Config({"OTEL_EXPORTER_OTLP_PROTOCOL": "grpc", "OTEL_EXPORTER_OTLP_COMPRESSION": "zstd",
                "OTEL_EXPORTER_OTLP_HEADERS": "good=s3cret,noequals-s3cret,bad name=s3cret,inj=a%0Ab",
                "OTEL_EXPORTER_OTLP_TIMEOUT": "soon"})
    assert c.otlp_protocol == "http/protobuf" and c.otlp_compression == "none"
    assert c.otlp_headers == (("good", "s3cret"),) and c.export_timeout == 10.0
    lines = [line for line in capsys.readouterr().err.splitlines() if line]
    assert len(lines) == 4 and all(line.startswith("autoinstr warning: ") for line in lines)
    assert not any("s3cret" in line for line in lines)
    assert any("OTEL_EXPORTER_OTLP_HEADERS" in line and "3 entries" in line for line in lines)


def test_exporters_registered():
    from autoinstr.config import Config
    from autoinstr.export.base import create_exporters

    exporters = create_exporters(Config({"AUTOINSTR_EXPORTER": "otlp,zipkin"}, emit_warnings=False))
    assert [e.name for e in exporters] == ["otlp", "zipkin"]
    assert [e.name for e in create_exporters(Config({"OTEL_TRACES_EXPORTER": "otlp_proto_http"}))] == ["otlp"]


def test_decoders_bound_what_a_request_decodes_to():
    many = [rec(span_id="%016x" % (i + 1)) for i in range(20)]
    for encode, decode in ((otlp.encode_protobuf, otlp.decode_protobuf), (otlp.encode_json, otlp.decode_json)):
        body = encode(many)
        assert len(decode(body, max_spans=20)) == 20
        with pytest.raises(ValueError, match="too many spans"):
            decode(body, max_spans=19)
        with pytest.raises(ValueError, match="too many"):
            decode(body, max_items=50)
        wide = encode([rec(attributes={"a": list(range(1000))})])
        with pytest.raises(ValueError, match="too many"):
            decode(wide, max_items=500)
    # a body of many tiny fields is refused without building a list of them first
    junk = b"\x08\x00" * 500_000
    with pytest.raises(ValueError):
        otlp.decode_protobuf(junk)


def test_post_is_never_traced(receiver, monkeypatch):
    """Whatever thread sends (the exit flush may run on the main one), integrations see a suppressed context."""
    import http.client

    from autoinstr.export import _http_post
    from autoinstr.integrations import is_suppressed

    seen = []
    original = http.client.HTTPConnection.request

    def spy(self, *args, **kwargs):
        seen.append(is_suppressed())
        return original(self, *args, **kwargs)

    monkeypatch.setattr(http.client.HTTPConnection, "request", spy)
    r = receiver()
    assert not is_suppressed()
    status, _, _ = _http_post.post(r.url + "/x", b"{}", {"Content-Type": "application/json"}, 5.0)
    assert status == 200 and seen == [True] and not is_suppressed()
