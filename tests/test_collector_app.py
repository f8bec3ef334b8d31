"""The collector in-process: strict validation of records, and the WSGI app called with environ dicts."""

from __future__ import annotations

import contextvars
import gzip
import io
import json
import os

import msgpack
import pytest

from autoinstr.collector import ingest
from autoinstr.collector.app import CollectorApp
from autoinstr.collector.ingest import Rejected, validate_batch, validate_record
from autoinstr.integrations import is_suppressed
from autoinstr.store import Store

TOKEN = "s3cret-token"


def rec(i: int = 0, **over) -> dict:
    r = {"trace_id": "%032x" % (0xABC000 + i), "span_id": "%016x" % (i + 1), "parent_id": None,
         "name": "op-%d" % i, "kind": "server", "service": "svc", "start_ns": 1_700_000_000_000_000_000 + i,
         "duration_ns": 1000, "status": "ok", "attributes": {"http.response.status_code": 200, "x": "y",
                                                              "f": 1.5, "b": True, "l": [1, "a"]},
         "events": [{"name": "exception", "time_ns": 5, "attributes": {"exception.type": "E"}}]}
    r.update(over)
    return r


# ------------------------------------------------------------------------------------ validation

def test_valid_record_is_rebuilt_without_unknown_fields():
    r = rec(trace_state="k=v", extra={"nested": 1})
    out = validate_record(r)
    assert set(out) == {"trace_id", "span_id", "parent_id", "name", "kind", "service", "start_ns", "duration_ns",
                        "status", "attributes", "events"}
    assert out["attributes"] == r["attributes"] and out["events"] == r["events"]
    assert validate_record(rec(parent_id="00f067aa0ba902b7", attributes=None, events=None))["attributes"] == {}


BAD = [
    ("trace_id", "ABC" + "0" * 29), ("trace_id", "0" * 32), ("trace_id", "a" * 31), ("trace_id", 5),
    ("trace_id", "g" * 32), ("trace_id", "a" * 32 + "\n"), ("span_id", "0" * 16), ("span_id", b"a" * 16),
    ("span_id", None), ("parent_id", "xyz"), ("parent_id", 0), ("parent_id", "0" * 16),
    ("name", ""), ("name", "n" * 1025), ("name", 3), ("kind", "SERVER"), ("kind", "weird"), ("kind", None),
    ("status", "unset"), ("status", 1), ("service", ""), ("service", "s" * 257), ("service", None),
    ("start_ns", -1), ("start_ns", 1 << 63), ("start_ns", "1"), ("start_ns", 1.0), ("start_ns", True),
    ("duration_ns", -5), ("duration_ns", None),
    ("attributes", []), ("attributes", {"k": {"nested": 1}}), ("attributes", {"k": [[1]]}),
    ("attributes", {"k": 1 << 64}), ("attributes", {"k": float("nan")}), ("attributes", {"k": float("inf")}),
    ("attributes", {"": 1}), ("attributes", {"k" * 257: 1}), ("attributes", {"k": b"bytes"}),
    ("attributes", {"k": "v" * (ingest.MAX_STRING_LENGTH + 1)}), ("attributes", {"k": None}),
    ("attributes", {"k%d" % i: i for i in range(ingest.MAX_ATTRIBUTES + 1)}),
    ("attributes", {"k": list(range(ingest.MAX_LIST_ITEMS + 1))}),
    ("events", {}), ("events", [1]), ("events", [{"name": "e"}]), ("events", [{"name": "", "time_ns": 1}]),
    ("events", [{"name": "e", "time_ns": 1, "attributes": {"k": {}}}]),
    ("events", [{"name": "e", "time_ns": 1}] * (ingest.MAX_EVENTS + 1)),
]


@pytest.mark.parametrize("field,value", BAD, ids=[f"{f}-{i}" for i, (f, _) in enumerate(BAD)])
def test_invalid_field_rejects(field, value):
    with pytest.raises(Rejected) as info:
        validate_record(rec(**{field: value}))
    assert info.value.status == 400 and info.value.reason == "invalid_record"


@pytest.mark.parametrize("missing", ["trace_id", "span_id", "name", "kind", "service", "start_ns", "duration_ns",
                                     "status"])
def test_missing_field_rejects(missing):
    r = rec()
    del r[missing]
    with pytest.raises(Rejected):
        validate_record(r)


def test_non_dict_and_too_many_fields():
    for bad in (None, [], "x", 1, {**rec(), **{"f%d" % i: 1 for i in range(80)}}):
        with pytest.raises(Rejected):
            validate_record(bad)


def test_batch_is_all_or_nothing():
    with pytest.raises(Rejected) as info:
        validate_batch([rec(0), rec(1), rec(2, kind="bogus")])
    assert "span 2" in info.value.detail


def test_decode_bodies():
    assert ingest.decode_spans_body(msgpack.packb([rec()]), "application/msgpack")[0]["name"] == "op-0"
    assert ingest.decode_spans_body(msgpack.packb({"spans": [rec()]}), "application/x-msgpack; v=1")
    assert ingest.decode_spans_body(json.dumps([rec()]).encode(), "application/json; charset=utf-8")
    for body, ctype, reason in [
        (b"\x91" * 100000 + b"\xc0", "application/msgpack", "malformed"),
        (msgpack.packb([rec()])[:-3], "application/msgpack", "malformed"),
        (msgpack.packb([rec()]) + b"\x00", "application/msgpack", "malformed"),
        (b"\xdd\xff\xff\xff\xff", "application/msgpack", "too_many_spans"),   # announces 4 billion items
        (b"\x91\xdd\xff\xff\xff\xff", "application/msgpack", "malformed"),   # a record announcing as many
        (b"\x81\xa5spans\x91\xc0", "application/msgpack", "invalid_record"),
        (b"\x81\xa5other\x90", "application/msgpack", "invalid_batch"),
        (b"\x91\xa3\xff\xfe\xfd", "application/msgpack", "malformed"),    # invalid UTF-8
        (msgpack.packb(12), "application/msgpack", "invalid_batch"),
        (b"\x90\x90", "application/msgpack", "malformed"),  # data after the batch
        (msgpack.packb({"spans": 1}), "application/msgpack", "invalid_batch"),
        (b"[" * 100000 + b"]" * 100000, "application/json", "malformed"),
        (b"[NaN]", "application/json", "malformed"),
        (b"\xff", "application/json", "malformed"),
        (b"[]", "text/plain", "unsupported_media_type"),
        (b"[]", None, "unsupported_media_type"),
    ]:
        with pytest.raises(Rejected) as info:
            ingest.decode_spans_body(body, ctype)
        assert info.value.reason == reason, (body[:20], ctype)


def test_ext_types_and_bin_are_invalid_records():
    body = msgpack.packb([rec(name=msgpack.ExtType(5, b"x"))])
    with pytest.raises(Rejected):
        validate_batch(ingest.decode_spans_body(body, "application/msgpack"))
    body = msgpack.packb([rec(name=b"bytes")], use_bin_type=True)
    with pytest.raises(Rejected):
        validate_batch(ingest.decode_spans_body(body, "application/msgpack"))


def test_container_budget_stops_amplification():
    # a few KiB that would unpack into millions of empty maps and lists: refused while unpacking
    for filler in (b"\x80", b"\x90"):
        attrs = b"\xde\x10\x00" + b"".join(msgpack.packb("k%d" % i) + b"\xdc\x04\x00" + filler * 1024
                                           for i in range(4096))
        body = b"\x91\x81\xaaattributes" + attrs
        with pytest.raises(Rejected) as info:
            ingest.decode_spans_body(body, "application/msgpack")
        assert info.value.status == 400
    many = [rec(i) for i in range(300)]
    assert len(ingest.decode_spans_body(msgpack.packb(many), "application/msgpack")) == 300


def test_decompress_bounds():
    data = b"x" * 10000
    assert ingest.decompress(gzip.compress(data), "gzip", 10000) == data
    assert ingest.decompress(data, None, 10) == data  # identity is bounded by the body limit, not here
    bomb = gzip.compress(b"\0" * (50 * 1024 * 1024))
    with pytest.raises(Rejected) as info:
        ingest.decompress(bomb, "gzip", 1024 * 1024)
    assert info.value.status == 413
    with pytest.raises(Rejected) as info:
        ingest.decompress(gzip.compress(data)[:-10], "gzip", 100000)
    assert info.value.reason == "bad_gzip"
    with pytest.raises(Rejected) as info:
        ingest.decompress(b"\x1f\x8b\x08\x00garbage", "gzip", 100000)
    assert info.value.reason == "bad_gzip"
    with pytest.raises(Rejected) as info:
        ingest.decompress(data, "br", 100000)
    assert info.value.status == 415


# ------------------------------------------------------------------------------------ the app

def call(app, method="GET", path="/", body=b"", ctype=None, token=None, headers=None, length=True, **environ):
    env = {"REQUEST_METHOD": method, "PATH_INFO": path, "wsgi.input": io.BytesIO(body), "REMOTE_ADDR": "127.0.0.1"}
    if length:
        env["CONTENT_LENGTH"] = str(len(body))
    if ctype:
        env["CONTENT_TYPE"] = ctype
    if token:
        env["HTTP_AUTHORIZATION"] = "Bearer " + token
    for k, v in (headers or {}).items():
        env["HTTP_" + k.upper().replace("-", "_")] = v
    env.update(environ)
    seen = {}

    def start_response(status, hdrs, exc_info=None):
        seen["status"] = int(status.split()[0])
        seen["headers"] = dict(hdrs)

    # a copied context: the app turns instrumentation off in its (request) thread, not in the test's
    out = b"".join(contextvars.copy_context().run(app, env, start_response))
    assert seen["headers"]["Content-Length"] == str(len(out))
    ctype_out = seen["headers"].get("Content-Type", "")
    return seen["status"], seen["headers"], json.loads(out) if ctype_out == "application/json" else out


@pytest.fixture
def app(tmp_path):
    a = CollectorApp(str(tmp_path / "c.db"), max_body=1024 * 1024)
    yield a
    a.close()


@pytest.fixture
def secured(tmp_path):
    a = CollectorApp(str(tmp_path / "s.db"), token=TOKEN, max_body=1024 * 1024)
    yield a
    a.close()


def stored(app) -> list:
    return list(Store(app.store_path).spans())


def test_ingest_msgpack_and_stats(app):
    batch = [rec(i) for i in range(20)]
    st, _, out = call(app, "POST", "/v1/spans", msgpack.packb(batch), "application/msgpack")
    assert (st, out) == (200, {"accepted": 20, "stored": 20, "duplicates": 0})
    got = sorted(stored(app), key=lambda r: r["span_id"])
    assert [{k: r[k] for k in got[0]} for r in sorted(batch, key=lambda r: r["span_id"])] == got
    st, _, out = call(app, "POST", "/v1/spans", gzip.compress(msgpack.packb(batch)), "application/msgpack",
                      headers={"Content-Encoding": "gzip"})
    assert (st, out["stored"], out["duplicates"]) == (200, 0, 20)  # a retried batch is stored once
    st, _, stats = call(app, "GET", "/v1/stats")
    assert st == 200
    assert stats["received_batches"] == 2 and stats["stored_batches"] == 2 and stats["stored_spans"] == 20
    assert stats["duplicate_spans"] == 20 and stats["rejected_batches"] == 0
    assert len(stored(app)) == 20


def test_ingest_json(app):
    st, _, out = call(app, "POST", "/v1/spans", json.dumps({"spans": [rec(1)]}).encode(), "application/json")
    assert st == 200 and out["stored"] == 1


def test_refusals_store_nothing(app):
    good = msgpack.packb([rec(0)])
    cases = [
        (dict(method="POST", path="/v1/spans", body=msgpack.packb([rec(0), rec(1, kind="x")]),
              ctype="application/msgpack"), 400, "invalid_record"),
        (dict(method="POST", path="/v1/spans", body=b"\xc1garbage", ctype="application/msgpack"), 400,
         "invalid_batch"),
        (dict(method="POST", path="/v1/spans", body=b"\x91\xc1garbage", ctype="application/msgpack"), 400,
         "malformed"),
        (dict(method="POST", path="/v1/spans", body=good, ctype="text/plain"), 415, "unsupported_media_type"),
        (dict(method="POST", path="/v1/spans", body=good, ctype="application/msgpack", length=False), 411,
         "length_required"),
        (dict(method="POST", path="/v1/spans", body=good[:-2], ctype="application/msgpack",
              CONTENT_LENGTH=str(len(good))), 400, "truncated"),
        (dict(method="POST", path="/v1/spans", body=b"", ctype="application/msgpack"), 400, "empty"),
        (dict(method="POST", path="/v1/spans", body=good, ctype="application/msgpack", CONTENT_LENGTH="-1"), 400,
         "bad_content_length"),
        (dict(method="POST", path="/v1/spans", body=good, ctype="application/msgpack",
              CONTENT_LENGTH=str(2 * 1024 * 1024)), 413, "too_large"),
        (dict(method="POST", path="/v1/spans", body=gzip.compress(b"\0" * (8 * 1024 * 1024)),
              ctype="application/msgpack", headers={"Content-Encoding": "gzip"}), 413, "too_large"),
        (dict(method="POST", path="/v1/spans", body=good, ctype="application/msgpack",
              headers={"Content-Encoding": "deflate"}), 415, "unsupported_encoding"),
        (dict(method="POST", path="/v1/traces", body=b"{}", ctype="application/msgpack"), 415,
         "unsupported_media_type"),
        (dict(method="GET", path="/v1/spans"), 405, "method_not_allowed"),
        (dict(method="POST", path="/", body=good), 405, "method_not_allowed"),
        (dict(method="GET", path="/nope"), 404, "not_found"),
    ]
    for kw, status, reason in cases:
        st, headers, out = call(app, **kw)
        assert (st, out["error"]) == (status, reason), kw
        assert isinstance(out["detail"], str)
    assert stored(app) == []
    stats = call(app, "GET", "/v1/stats")[2]
    assert stats["stored_spans"] == 0 and stats["rejected_by_reason"]["too_large"] == 2


def test_terminated_input_without_length(app):
    body = msgpack.packb([rec(3)])
    st, _, out = call(app, "POST", "/v1/spans", body, "application/msgpack", length=False,
                      **{"wsgi.input_terminated": True})
    assert st == 200 and out["stored"] == 1
    big = b"\x00" * (1024 * 1024 + 10)
    st, _, out = call(app, "POST", "/v1/spans", big, "application/msgpack", length=False,
                      **{"wsgi.input_terminated": True})
    assert st == 413


def test_token(secured):
    body = msgpack.packb([rec(0)])
    for token in (None, "wrong", TOKEN + "x", TOKEN[:-1]):
        st, headers, out = call(secured, "POST", "/v1/spans", body, "application/msgpack", token=token)
        assert st == 401 and headers["WWW-Authenticate"].startswith("Bearer") and out["error"] == "unauthorized"
    st, _, _ = call(secured, "POST", "/v1/spans", body, "application/msgpack",
                    headers={"Authorization": "Basic " + TOKEN})
    assert st == 401
    assert call(secured, "GET", "/v1/stats")[0] == 401
    assert call(secured, "GET", "/healthz")[0] == 200
    assert stored(secured) == []
    st, _, out = call(secured, "POST", "/v1/spans", body, "application/msgpack", token=TOKEN)
    assert st == 200 and out["stored"] == 1
    stats = call(secured, "GET", "/v1/stats", token=TOKEN)[2]
    assert stats["rejected_by_reason"]["unauthorized"] == 6


def test_store_failure_is_503_and_stores_nothing(app, monkeypatch):
    def boom(records):
        raise RuntimeError("disk full")

    monkeypatch.setattr(app.store, "insert", boom)
    st, headers, out = call(app, "POST", "/v1/spans", msgpack.packb([rec(0)]), "application/msgpack")
    assert st == 503 and headers["Retry-After"] == "1" and out["error"] == "store_unavailable"


def test_internal_error_is_500_not_a_crash(app, monkeypatch):
    monkeypatch.setattr(app, "ingest", lambda environ, otlp: 1 / 0)
    st, _, out = call(app, "POST", "/v1/spans", b"x", "application/msgpack")
    assert st == 500 and out["error"] == "internal"


def test_requests_are_not_traced(app):
    seen = []

    def probe(environ, start_response):
        seen.append(is_suppressed())
        return []

    # the agent's WSGI wrappers leave the app alone, and the app turns instrumentation off while it runs
    from autoinstr.integrations._wsgi import wrap_app

    assert wrap_app(app) is app
    original = app.handle
    app.handle = lambda environ: (probe(environ, None), original(environ))[1]
    call(app, "GET", "/healthz")
    assert seen == [True] and not is_suppressed()


def test_index_lists_endpoints(app):
    st, _, out = call(app)
    assert st == 200 and {"POST /v1/spans", "POST /v1/traces", "GET /v1/stats", "GET /healthz"} <= set(out["endpoints"])


# ------------------------------------------------------------------------------------ OTLP

otlp = pytest.importorskip("autoinstr.export.otlp")


@pytest.mark.skipif(not hasattr(otlp, "decode_protobuf"), reason="autoinstr.export.otlp has no decoders yet")
@pytest.mark.parametrize("kind", ["protobuf", "json"])
def test_otlp_ingest(app, kind):
    batch = [rec(i, service="other-lang") for i in range(5)]
    for r in batch:
        r["attributes"] = {"k": "v", "n": 3}
        r["events"] = []
    encode = otlp.encode_protobuf if kind == "protobuf" else otlp.encode_json
    ctype = "application/x-protobuf" if kind == "protobuf" else "application/json"
    st, headers, out = call(app, "POST", "/v1/traces", gzip.compress(encode(batch)), ctype,
                            headers={"Content-Encoding": "gzip"})
    assert st == 200 and headers["Content-Type"] == ctype
    got = {r["span_id"]: r for r in stored(app)}
    assert set(got) == {r["span_id"] for r in batch}
    for r in batch:
        g = got[r["span_id"]]
        assert (g["trace_id"], g["name"], g["kind"], g["service"], g["start_ns"], g["duration_ns"]) == (
            r["trace_id"], r["name"], r["kind"], r["service"], r["start_ns"], r["duration_ns"])
        assert g["attributes"] == r["attributes"]
    st, _, out = call(app, "POST", "/v1/traces", b"\x0a\xff\xff\xff\xff\x0f" + os.urandom(20), "application/x-protobuf")
    assert st == 400 and out["error"] == "malformed"
    st, _, out = call(app, "POST", "/v1/traces", b'{"resourceSpans": "x"}', "application/json")
    assert st == 400
    assert len(stored(app)) == 5


# ------------------------------------------------------------------------------------ config

def test_collector_settings():
    from autoinstr.config import Config

    cfg = Config({"AUTOINSTR_COLLECTOR_TOKEN": " tok ", "AUTOINSTR_COLLECTOR_MAX_BODY_MB": "2.5"}, emit_warnings=False)
    assert cfg.collector_token == "tok" and cfg.collector_max_body_mb == 2.5 and not cfg.warnings
    assert dict(cfg.items())["AUTOINSTR_COLLECTOR_TOKEN"] == "(hidden)"  # --info never shows it
    cfg = Config({"AUTOINSTR_COLLECTOR_MAX_BODY_MB": "lots"}, emit_warnings=False)
    assert cfg.collector_max_body_mb == 16.0 and len(cfg.warnings) == 1
    assert "AUTOINSTR_COLLECTOR_MAX_BODY_MB" in cfg.warnings[0]
    cfg = Config({}, emit_warnings=False)
    assert cfg.collector_token == "" and dict(cfg.items())["AUTOINSTR_COLLECTOR_TOKEN"] == "(none)"
