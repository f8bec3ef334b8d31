"""Hostile input, property-based (hypothesis): the trace-context headers (traceparent, tracestate,
baggage, B3), SQL normalization, and the collector's msgpack, JSON and OTLP ingest.

Properties: parsers never raise; what they accept is valid and round-trips; what the agent writes back on
the wire never carries CR/LF or more than the limits; SQL normalization never raises and never lets a
quoted literal (or a comment) through while obfuscating; the collector's decoders refuse bad bodies only
with its own Rejected (a 4xx), never another exception, and what they accept is a valid batch.
"""

from __future__ import annotations

import json
import os
import re
import string

import pytest

hypothesis = pytest.importorskip("hypothesis")
from hypothesis import HealthCheck, assume, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

from autoinstr import sql  # noqa: E402
from autoinstr.collector import ingest  # noqa: E402
from autoinstr.trace import propagation as prop  # noqa: E402

EXAMPLES = int(os.environ.get("AUTOINSTR_FUZZ_EXAMPLES", "100"))
fuzz = settings(max_examples=EXAMPLES, deadline=None, suppress_health_check=[HealthCheck.too_slow])

HEX = "0123456789abcdef"
hexes = lambda n: st.text(HEX + "ABCDEF", min_size=n, max_size=n)  # noqa: E731
header_text = st.text(max_size=600) | st.text(
    string.printable + "\x00\x7f\u00e9\u2028", max_size=300)


def near_traceparent():
    parts = st.tuples(st.sampled_from(["00", "01", "ff", "cc", "0", "000"]), hexes(32) | st.text(HEX, max_size=34),
                      hexes(16) | st.text(HEX, max_size=18), st.sampled_from(["00", "01", "ff", "1", "0g"]),
                      st.sampled_from(["", "-", "-x", "-00", "\r\nX-Evil: 1"]))
    return parts.map(lambda p: "%s-%s-%s-%s%s" % p) | header_text


def no_line_breaks(value: str) -> bool:
    return "\r" not in value and "\n" not in value and "\x00" not in value


# ------------------------------------------------------------------------------ trace context

@fuzz
@given(near_traceparent())
def test_traceparent_never_raises_and_accepts_only_valid_ids(value):
    parsed = prop.parse_traceparent(value)
    if parsed is not None:
        trace_id, span_id, sampled = parsed
        assert 0 < trace_id < 1 << 128 and 0 < span_id < 1 << 64 and isinstance(sampled, bool)
        again = prop.format_traceparent(trace_id, span_id, sampled)
        assert prop.parse_traceparent(again) == parsed and no_line_breaks(again)


member = st.tuples(st.text(string.ascii_lowercase + string.digits + "_-*/@", min_size=1, max_size=20),
                   st.text(string.printable, max_size=30)).map(lambda kv: "%s=%s" % kv)


@fuzz
@given(st.lists(member, max_size=40).map(",".join) | header_text)
def test_tracestate_never_raises_and_what_is_kept_is_safe_to_send(value):
    state = prop.parse_tracestate(value)
    assert isinstance(state, str) and len(state) <= 512 and no_line_breaks(state)
    assert prop.parse_tracestate(state) == state  # normalized: parsing again keeps it


@fuzz
@given(st.lists(st.tuples(st.text(max_size=20), st.text(max_size=40)), max_size=30).map(
    lambda kvs: ",".join("%s=%s" % kv for kv in kvs)) | header_text)
def test_baggage_never_raises_and_round_trips_within_limits(value):
    baggage = prop.parse_baggage(value)
    assert all(isinstance(k, str) and isinstance(v, str) for k, v in baggage.items())
    wire = prop.format_baggage(baggage)
    assert no_line_breaks(wire) and len(wire.encode()) <= 8192
    assert wire.isascii()
    again = prop.parse_baggage(wire)
    assert again == {k: v for k, v in baggage.items() if k in again}  # members kept are intact
    assert len(again) == len(baggage) or len(wire) > 7000 or len(baggage) > 180


@fuzz
@given(st.tuples(hexes(32) | hexes(16) | st.text(HEX, max_size=33), hexes(16) | st.text(HEX, max_size=17),
                 st.sampled_from(["", "-0", "-1", "-d", "-x", "-1-" + "a" * 16, "-1-\r\n"])).map(
    lambda p: "%s-%s%s" % p) | header_text)
def test_b3_single_never_raises(value):
    parsed = prop.parse_b3_single(value)
    if parsed is not None:
        trace_id, span_id, sampled = parsed
        assert 0 < trace_id < 1 << 128 and 0 < span_id < 1 << 64 and sampled in (True, False, None)


headers = st.dictionaries(st.sampled_from(["traceparent", "tracestate", "baggage", "b3", "X-B3-TraceId",
                                           "X-B3-SpanId", "X-B3-Sampled", "X-B3-Flags", "TRACEPARENT", "other"]),
                          header_text | near_traceparent(), max_size=8)


@fuzz
@given(headers)
def test_extract_then_inject_never_raises_nor_writes_unsafe_headers(carrier):
    names = ("tracecontext", "baggage", "b3", "b3multi")
    ctx = prop.extract(carrier, propagators=names)
    if ctx is None or not ctx.trace_id:
        return
    out: dict = {}
    prop.inject(out, ctx, propagators=names)
    for key, value in out.items():
        assert isinstance(value, str) and no_line_breaks(value) and value.isascii(), (key, value)
        value.encode("latin-1")


def test_hostile_carriers_are_ignored():
    class Hostile:
        def get(self, key):
            raise RuntimeError("boom")

    assert prop.extract(Hostile()) is None
    assert prop.extract({"traceparent": ["00-" + "1" * 32 + "-" + "2" * 16 + "-01", "x"]}) is not None
    assert prop.extract({"traceparent": b"\xff\xfe"}) is None
    assert prop.extract(None) is None


# --------------------------------------------------------------------------------------- SQL

SECRET_ALPHABET = string.ascii_letters + string.digits + " _-.,;:!?()*+/=<>@#%&|~^[]{}\"`$\\'\n\t"


def secret_text():
    # a marker no keyword, identifier or number of the statement contains, then anything at all
    return st.text(SECRET_ALPHABET, max_size=20).map(lambda s: "Zq9" + s)


def sql_literal(dialect: str):
    """A string literal of `dialect` holding a secret, written as that dialect reads it."""
    def standard(s):
        return "'%s'" % s.replace("'", "''")

    def escaped(s):
        return "'%s'" % s.replace("\\", "\\\\").replace("'", "\\'")

    def estring(s):
        return "E'%s'" % s.replace("\\", "\\\\").replace("'", "\\'")

    def dollar(s):
        tag = "$q$" if "$" in s else "$$"
        return "%s%s%s" % (tag, s.replace("$q$", ""), tag)

    def mysql_double(s):
        return '"%s"' % s.replace("\\", "\\\\").replace('"', '\\"')

    styles = {"generic": [standard], "sqlite": [standard], "postgresql": [standard, estring, dollar],
              "mysql": [escaped, mysql_double]}[dialect]
    return st.tuples(st.sampled_from(styles), secret_text()).map(lambda p: p[0](p[1]))


def statement(dialect: str):
    """SQL-shaped statements: keywords, identifiers, numbers, placeholders, operators, comments and
    string literals, each literal holding a secret."""
    other = st.sampled_from(["SELECT", "FROM", "WHERE", "AND", "OR", "IN", "(", ")", ",", "=", "<>", "+", "*",
                             "users", "t.name", "42", "3.5e2", "0x1F", "?", "%s", ":name", "$1", "NULL", "TRUE",
                             "INSERT INTO t VALUES", "UPDATE t SET a =", "LIKE", "-- note Zq9cmt\n",
                             "/* Zq9block */", "::text", "ORDER BY 1", "LIMIT 10", ";"])
    return st.lists(sql_literal(dialect) | other, min_size=1, max_size=25).map(" ".join)


@fuzz
@given(st.text(max_size=400) | st.binary(max_size=200), st.sampled_from(["generic", "sqlite", "postgresql", "mysql",
                                                                         "mariadb", "nonsense"]), st.booleans())
def test_sql_normalization_never_raises(text, dialect, obfuscate):
    summary = sql.summarize(text, dialect, obfuscate)
    assert isinstance(summary.text, str) and isinstance(summary.operation, str)
    assert isinstance(summary.collection, str)


@pytest.mark.parametrize("dialect", ["generic", "sqlite", "postgresql", "mysql"])
def test_sql_obfuscation_never_lets_a_literal_or_comment_through(dialect):
    @fuzz
    @given(statement(dialect))
    def check(text):
        summary = sql.summarize(text, dialect, obfuscate=True)
        assert "Zq9" not in summary.text, (text, summary)
        assert "Zq9" not in summary.collection, (text, summary)

    check()


def test_sql_literal_inside_oversized_statement_is_not_leaked():
    text = "SELECT * FROM t WHERE a = '" + "x" * 20000 + "Zq9secret'"
    assert "Zq9" not in sql.summarize(text).text
    cut = "SELECT 1 WHERE b = 'Zq9" + "y" * 5000  # unterminated: runs to the end
    assert "Zq9" not in sql.summarize(cut).text


# -------------------------------------------------------------------------- collector ingest

def valid_record(i: int = 0) -> dict:
    return {"trace_id": "%032x" % (i + 1), "span_id": "%016x" % (i + 1), "parent_id": None, "name": "op",
            "kind": "server", "service": "svc", "start_ns": 1_700_000_000_000_000_000 + i, "duration_ns": 1000,
            "status": "ok", "attributes": {"a": 1, "b": "x", "c": [1, 2]}, "events": []}


wire_ints = st.integers(-(1 << 63), (1 << 64) - 1)  # what msgpack can carry
json_values = st.recursive(st.none() | st.booleans() | wire_ints | st.floats() | st.text(max_size=20),
                           lambda children: st.lists(children, max_size=5)
                           | st.dictionaries(st.text(max_size=10), children, max_size=5), max_leaves=30)
record_like = st.fixed_dictionaries({}, optional={
    "trace_id": st.sampled_from(["%032x" % 1, "0" * 32, "x" * 32, "%016x" % 5]) | st.text(max_size=33) | json_values,
    "span_id": st.sampled_from(["%016x" % 1, "0" * 16]) | json_values,
    "parent_id": st.none() | st.sampled_from(["%016x" % 2]) | json_values,
    "name": st.text(max_size=30) | json_values, "kind": st.sampled_from(["server", "client", "x"]) | json_values,
    "service": st.text(max_size=10) | json_values, "start_ns": wire_ints | json_values,
    "duration_ns": wire_ints | json_values, "status": st.sampled_from(["ok", "error", "?"]) | json_values,
    "attributes": st.dictionaries(st.text(max_size=10), json_values, max_size=5) | json_values,
    "events": st.lists(st.dictionaries(st.text(max_size=6), json_values, max_size=4), max_size=3) | json_values,
})
batches = st.lists(record_like, max_size=5) | json_values


def assert_only_rejected(decode, body, *args):
    try:
        records = decode(body, *args)
    except ingest.Rejected as exc:
        assert 400 <= exc.status < 500
        return None
    for rec in records:  # accepted: a valid record, nothing more
        assert re.fullmatch(r"[0-9a-f]{32}", rec["trace_id"]) and re.fullmatch(r"[0-9a-f]{16}", rec["span_id"])
        assert rec["kind"] in ingest.KINDS and rec["status"] in ingest.STATUSES
        assert isinstance(rec["attributes"], dict) and isinstance(rec["events"], list)
    return records


@fuzz
@given(batches)
def test_msgpack_batches_are_stored_valid_or_refused(doc):
    import msgpack

    body = msgpack.packb(doc, use_bin_type=True)
    assert_only_rejected(ingest.decode_spans_body, body, "application/msgpack")


@fuzz
@given(batches)
def test_json_batches_are_stored_valid_or_refused(doc):
    body = json.dumps(doc, allow_nan=True).encode()
    assert_only_rejected(ingest.decode_spans_body, body, "application/json")


def _mutations():
    return st.lists(st.tuples(st.integers(0, 10_000), st.integers(0, 255)), min_size=1, max_size=8)


def _mutate(body: bytes, edits) -> bytes:
    data = bytearray(body)
    for position, value in edits:
        if data:
            data[position % len(data)] = value
    return bytes(data)


@fuzz
@given(_mutations(), st.integers(0, 400))
def test_mutated_msgpack_bodies_are_refused_cleanly(edits, cut):
    import msgpack

    body = _mutate(msgpack.packb([valid_record(i) for i in range(3)], use_bin_type=True), edits)
    assert_only_rejected(ingest.decode_spans_body, body[:len(body) - cut] if cut < len(body) else body,
                         "application/msgpack")


@fuzz
@given(st.binary(max_size=600), st.sampled_from(["application/msgpack", "application/json", "text/plain", ""]))
def test_random_bytes_are_refused_cleanly(body, content_type):
    assert_only_rejected(ingest.decode_spans_body, body, content_type)


@fuzz
@given(_mutations(), st.integers(0, 300), st.sampled_from(["protobuf", "json"]))
def test_mutated_otlp_bodies_are_refused_cleanly(edits, cut, kind):
    from autoinstr.export import otlp

    records = [valid_record(i) for i in range(3)]
    records[0]["events"] = [{"name": "ev", "time_ns": 1_700_000_000_000_000_100, "attributes": {"k": "v"}}]
    if kind == "protobuf":
        body, ctype = otlp.encode_protobuf(records, {"host.name": "h"}), "application/x-protobuf"
    else:
        body, ctype = otlp.encode_json(records, {"host.name": "h"}), "application/json"
    assert len(assert_only_rejected(ingest.decode_otlp_body, body, ctype)) == 3  # the intact body is accepted
    body = _mutate(body, edits)
    assert_only_rejected(ingest.decode_otlp_body, body[:len(body) - cut] if cut < len(body) else body, ctype)


@fuzz
@given(st.binary(max_size=600), st.sampled_from(["application/x-protobuf", "application/json"]))
def test_random_otlp_bytes_are_refused_cleanly(body, content_type):
    assume(body)
    assert_only_rejected(ingest.decode_otlp_body, body, content_type)


def test_gzip_bombs_and_bad_encodings_are_refused():
    import gzip

    bomb = gzip.compress(b"\0" * (8 << 20))
    with pytest.raises(ingest.Rejected) as info:
        ingest.decompress(bomb, "gzip", 1 << 20)
    assert info.value.status == 413
    for encoding, body in (("gzip", b"not gzip"), ("br", b"x"), ("gzip", gzip.compress(b"x")[:-4])):
        with pytest.raises(ingest.Rejected):
            ingest.decompress(body, encoding, 1 << 20)
