"""Zipkin v2 JSON: every span valid against the official Zipkin API schema, fields mapped from the record."""

from __future__ import annotations

import functools
import json
import os

import jsonschema
import pytest
import yaml
from hypothesis import given, settings
from hypothesis import strategies as st

from autoinstr.config import Config
from autoinstr.export import zipkin

# the official Zipkin v2 API definition (Apache 2.0, OpenZipkin), vendored: CI has nothing outside the repo
SPEC = os.path.join(os.path.dirname(os.path.abspath(__file__)), "specs", "zipkin2-api.yaml")
SPEC = os.environ.get("AUTOINSTR_ZIPKIN_SPEC", SPEC)


def _anchor(node):
    if isinstance(node, dict):
        out = {}
        for k, v in node.items():
            if k == "pattern" and isinstance(v, str):
                v = "^(?:%s)$" % v.strip("^$")
            out[k] = _anchor(v)
        return out
    if isinstance(node, list):
        return [_anchor(x) for x in node]
    return node


@functools.cache
def zipkin_validator(strict: bool = True) -> jsonschema.Validator:
    """ListOfSpans from the official spec, id patterns anchored; `strict` also refuses unknown properties."""
    with open(SPEC) as f:
        spec = yaml.safe_load(f)
    definitions = _anchor(spec["definitions"])
    if strict:
        for name in ("Span", "Endpoint", "Annotation"):
            definitions[name]["additionalProperties"] = False
    schema = {"$ref": "#/definitions/ListOfSpans", "definitions": definitions}
    cls = jsonschema.Draft4Validator
    return cls(schema, format_checker=cls.FORMAT_CHECKER)


def rec(**kw) -> dict:
    r = {"trace_id": "4bf92f3577b34da6a3ce929d0e0e4736", "span_id": "00f067aa0ba902b7", "parent_id": None,
         "name": "GET /users/<int:id>", "kind": "server", "service": "shop", "start_ns": 1764158400000001999,
         "duration_ns": 1834499, "status": "ok",
         "attributes": {"http.request.method": "GET", "http.response.status_code": 200, "server.port": 8080,
                        "client.address": "10.1.2.3", "ok": True, "ratio": 0.5, "list": ["a", 1]},
         "events": []}
    r.update(kw)
    return r


def test_schema_itself_is_anchored():
    v = zipkin_validator()
    assert not v.is_valid([{"traceId": "x4bf92f3577b34da6", "id": "00f067aa0ba902b7"}])
    assert not v.is_valid([{"traceId": "4bf92f3577b34da6", "id": "00F067AA0BA902B7"}])
    assert v.is_valid([{"traceId": "4bf92f3577b34da6", "id": "00f067aa0ba902b7"}])


def test_server_span():
    span = zipkin.to_zipkin(rec())
    assert span == {
        "traceId": "4bf92f3577b34da6a3ce929d0e0e4736", "id": "00f067aa0ba902b7", "name": "GET /users/<int:id>",
        "kind": "SERVER", "timestamp": 1764158400000001, "duration": 1835,
        "localEndpoint": {"serviceName": "shop", "port": 8080},
        "remoteEndpoint": {"ipv4": "10.1.2.3"},
        "tags": {"http.request.method": "GET", "http.response.status_code": "200", "server.port": "8080",
                 "client.address": "10.1.2.3", "ok": "true", "ratio": "0.5", "list": '["a",1]'}}
    zipkin_validator().validate([span])


def test_client_internal_error_and_events():
    records = [
        rec(span_id="00f067aa0ba902b8", parent_id="00f067aa0ba902b7", kind="client", duration_ns=0,
            attributes={"server.address": "inventory.local", "server.port": 5001, "url.full": "http://x/"}),
        rec(span_id="00f067aa0ba902b9", parent_id="00f067aa0ba902b7", kind="client", duration_ns=999,
            attributes={"server.address": "::1", "server.port": 0, "db.system": "postgresql"}),
        rec(span_id="00f067aa0ba902ba", kind="internal", status="error",
            attributes={"exception.message": "boom", "error.type": "ValueError"},
            events=[{"name": "exception", "time_ns": 1764158400000005000,
                     "attributes": {"exception.type": "ValueError", "exception.escaped": True}},
                    {"name": "mark", "time_ns": 1764158400000006000, "attributes": {}}]),
        rec(span_id="00f067aa0ba902bb", kind="producer", status="error", attributes={"peer.service": "queue"}),
        rec(span_id="00f067aa0ba902bc", kind="consumer", attributes={"network.peer.address": "::ffff:10.0.0.1",
                                                                     "network.peer.port": 5672}),
    ]
    spans = json.loads(zipkin.encode(records))
    zipkin_validator().validate(spans)
    client, client6, internal, producer, consumer = spans
    assert client["kind"] == "CLIENT" and client["parentId"] == "00f067aa0ba902b7" and client["duration"] == 1
    assert client["remoteEndpoint"] == {"serviceName": "inventory.local", "port": 5001}
    assert client6["remoteEndpoint"] == {"ipv6": "::1"} and client6["duration"] == 1
    assert "kind" not in internal and "remoteEndpoint" not in internal and "parentId" not in internal
    assert internal["tags"]["error"] == "boom" and internal["tags"]["otel.status_code"] == "ERROR"
    assert internal["annotations"] == [
        {"timestamp": 1764158400000005,
         "value": '{"exception":{"exception.type":"ValueError","exception.escaped":true}}'},
        {"timestamp": 1764158400000006, "value": "mark"}]
    assert producer["kind"] == "PRODUCER" and producer["remoteEndpoint"] == {"serviceName": "queue"}
    assert producer["tags"]["error"] == "true"
    assert consumer["remoteEndpoint"] == {"ipv4": "10.0.0.1", "port": 5672}


hex_id = st.integers(1, (1 << 64) - 1).map(lambda n: "%016x" % n)
values = st.text(max_size=10) | st.booleans() | st.integers(-(1 << 63), (1 << 63) - 1) | st.floats(
    allow_nan=False, allow_infinity=False) | st.lists(st.text(max_size=3) | st.integers(), max_size=3)
attrs = st.dictionaries(st.sampled_from(["server.address", "server.port", "client.address", "network.peer.address",
                                         "network.peer.port", "peer.service", "exception.message"]) | st.text(
    max_size=8), values, max_size=6)


@settings(max_examples=200)
@given(st.builds(lambda t, s, p, n, k, svc, start, d, status, a, ev: rec(
    trace_id="%032x" % t, span_id=s, parent_id=p, name=n, kind=k, service=svc, start_ns=start, duration_ns=d,
    status=status, attributes=a, events=ev),
    st.integers(1, (1 << 128) - 1), hex_id, st.none() | hex_id, st.text(min_size=1, max_size=10),
    st.sampled_from(["internal", "server", "client", "producer", "consumer"]), st.text(min_size=1, max_size=5),
    st.integers(0, 1 << 62), st.integers(0, 1 << 40), st.sampled_from(["ok", "error"]), attrs,
    st.lists(st.builds(lambda n, t, a: {"name": n, "time_ns": t, "attributes": a}, st.text(max_size=5),
                       st.integers(0, 1 << 62), attrs), max_size=2)))
def test_generated_spans_are_valid(record):
    [span] = json.loads(zipkin.encode([record]))
    zipkin_validator().validate([span])
    assert all(isinstance(v, str) for v in span.get("tags", {}).values())
    assert span["duration"] >= 1 and span["timestamp"] == record["start_ns"] // 1000
    assert ("kind" in span) == (record["kind"] != "internal")


def test_exporter_settings():
    exp = zipkin.ZipkinExporter(Config({"AUTOINSTR_ZIPKIN_URL": "http://127.0.0.1:1/api/v2/spans",
                                        "AUTOINSTR_EXPORT_TIMEOUT": "0.5"}, emit_warnings=False))
    assert exp.url == "http://127.0.0.1:1/api/v2/spans" and exp.timeout == 0.5
    assert exp.probe()[0] is False
    from autoinstr.export._http_post import ExportError

    with pytest.raises(ExportError) as info:
        exp.export([rec()])
    assert info.value.retryable


def test_valid_per_openapi_schema_validator_too():
    oas = pytest.importorskip("openapi_schema_validator")
    with open(SPEC) as f:
        definitions = _anchor(yaml.safe_load(f)["definitions"])
    checker = getattr(oas, "oas30_format_checker", None) or oas.OAS30Validator.FORMAT_CHECKER
    validator = oas.OAS30Validator({"definitions": definitions, "$ref": "#/definitions/ListOfSpans"},
                                   format_checker=checker)
    records = [rec(), rec(span_id="00f067aa0ba902b8", parent_id="00f067aa0ba902b7", kind="client", status="error",
                          attributes={"server.address": "10.0.0.1", "server.port": 80, "exception.message": "x"},
                          events=[{"name": "e", "time_ns": 5000, "attributes": {"k": [1, 2]}}] * 2)]
    validator.validate(json.loads(zipkin.encode(records)))
