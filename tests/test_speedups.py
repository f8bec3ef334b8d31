"""The optional compiled conversion (autoinstr._speedups) gives exactly what the pure-Python code gives.

It is built with the wheel where a C compiler is found (hatch_build.py; test.sh builds it in place for these
tests, and sets AUTOINSTR_REQUIRE_SPEEDUPS so that a failed build fails here rather than skipping).
"""

from __future__ import annotations

import math
import os

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from autoinstr.export import records
from autoinstr.export.records import FIELDS, records_of, span_fields
from autoinstr.store import _attributes_json, python_values, to_json
from autoinstr.trace.span import Span, SpanContext


def built_speedups():
    """records.speedups(), or a skip where they are not built or are turned off (AUTOINSTR_SPEEDUPS=false). test.sh
    sets AUTOINSTR_REQUIRE_SPEEDUPS: there a missing build fails, unless the setting turns them off. (A function, so
    that the tests @given runs can call it: a function-scoped fixture would not reset between examples.)"""
    from autoinstr import config

    module = records.speedups()
    if module is None:
        if os.environ.get("AUTOINSTR_REQUIRE_SPEEDUPS") and config.get().speedups:
            pytest.fail("autoinstr._speedups is not built (python hatch_build.py)")
        pytest.skip("autoinstr._speedups is not built here, or turned off")
    return module


@pytest.fixture
def compiled(monkeypatch):
    monkeypatch.setattr(records, "_speedups", False)  # looked for afresh
    return built_speedups()




class Odd:
    def __str__(self):
        return "odd"


ascii_text = st.text(alphabet=st.characters(min_codepoint=0, max_codepoint=127), max_size=40)
any_text = st.one_of(ascii_text, st.text(max_size=20), st.just("\ud800x"), st.just("é" * 3),
                     st.text(alphabet="ab", min_size=4090, max_size=4100))
plain_values = st.one_of(ascii_text, st.booleans(), st.integers(-(1 << 63), (1 << 63) - 1),
                         st.floats(allow_nan=False, allow_infinity=False), st.sampled_from([-0.0, 1e16, 5e-324, 1e300]))
odd_values = st.one_of(any_text, st.none(), st.integers(), st.floats(), st.binary(max_size=5),
                       st.lists(st.integers(), max_size=3), st.builds(Odd))
keys = st.one_of(ascii_text, st.text(max_size=10), st.text(min_size=250, max_size=260), st.integers(0, 3))


@st.composite
def span_specs(draw):
    plain = draw(st.booleans())
    attrs = draw(st.dictionaries(ascii_text if plain else keys, plain_values if plain else odd_values, max_size=12))
    return {
        "name": draw(st.one_of(st.sampled_from(["GET /users/<int:id>", "SELECT users", "db"]), any_text,
                               st.integers(0, 9))),
        "kind": draw(st.sampled_from(["internal", "server", "client", "producer", "consumer", "weird"])),
        "attrs": attrs,
        "statement": draw(st.one_of(st.none(), st.sampled_from(["SELECT * FROM t WHERE a = 'x'", "UPDATE t SET a=1"]))),
        "error": draw(st.booleans()),
        "event": draw(st.booleans()),
        "parent": draw(st.sampled_from(["new", "child", "remote", "remote-zero-span"])),
        "span_id": draw(st.one_of(st.none(), st.sampled_from([1, (1 << 64) - 1, 1 << 64, 7]))),
        "trace_id": draw(st.sampled_from([1, (1 << 128) - 1, 1 << 128, 0xABC])),
    }


def make_spans(specs):
    """Finished local traces (as the pipeline takes them) from the specs: each spec one span, children under
    the previous root when asked."""
    batches = []
    root = None
    for spec in specs:
        if spec["parent"] == "child" and root is not None:
            span = Span(spec["name"], kind=spec["kind"], parent=root)
        elif spec["parent"].startswith("remote"):
            span_id = 0 if spec["parent"] == "remote-zero-span" else 0x1234
            span = Span(spec["name"], kind=spec["kind"], parent=SpanContext(spec["trace_id"], span_id, True))
            root = span
        else:
            span = Span(spec["name"], kind=spec["kind"], parent=None)
            root = span
        span.attributes.update(spec["attrs"])
        if spec["statement"] is not None:
            span.attributes["db.query.text"] = spec["statement"]
            span.attributes["db.system"] = "sqlite"
        if spec["span_id"] is not None:
            span.span_id = spec["span_id"]
        span.start()
        if spec["event"]:
            span.add_event("ev", {"k": "v"})
        if spec["error"]:
            span.set_status("error")
        span.end_ns = span.start_ns + 1000
        batches.append([span])
    return batches


@settings(max_examples=300, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(span_specs(), min_size=1, max_size=8))
def test_fields_equal_span_fields_for_every_span_they_convert(specs):
    module = built_speedups()
    spans = [s for batch in make_spans(specs) for s in batch]
    offset = 1_700_000_000_000_000_000
    expected = [span_fields(s, "svc", offset, 8, 64) for s in spans]  # (unlinks the roots first: C copes)
    got = module.fields(spans, "svc", offset, 8, 64)
    assert len(got) == len(spans)
    for span, want, have in zip(spans, expected, got):
        if have is not None:
            assert have == want
            assert type(have[9]) in (dict, records.SharedAttributes)
        else:  # left to Python: something span_fields changes or must look at
            attrs = span.attributes
            assert (span._status == "error" or span._events or "db.query.text" in attrs or span.kind not in
                    records._KINDS or want[9] != attrs or want[3] != span.name or span.span_id >= 1 << 64
                    or (span.parent_id or 0) >= 1 << 64
                    or span.root._trace_id >= 1 << 128 or not isinstance(span.name, str)
                    or any(type(v) not in (str, int, bool, float) or type(v) is str and not v.isascii()
                           for v in attrs.values()) or any(type(k) is not str for k in attrs))


@settings(max_examples=200, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(span_specs(), min_size=1, max_size=8), st.booleans())
def test_records_of_gives_the_same_records_either_way(specs, as_fields):
    built_speedups()
    batches = make_spans(specs)
    saved = records._speedups, records.wall_offset_ns
    records.wall_offset_ns = lambda: 1_700_000_000_000_000_000  # (each call would read the clocks afresh)
    try:
        records._speedups = None  # pure Python
        python = records_of(batches, "svc", 8, 64, fields=as_fields)
        records._speedups = saved[0]
        compiled = records_of(batches, "svc", 8, 64, fields=as_fields)
    finally:
        records._speedups, records.wall_offset_ns = saved
    if as_fields:
        python, compiled = [dict(zip(FIELDS, f)) for f in python], [dict(zip(FIELDS, f)) for f in compiled]
    assert python == compiled


@settings(max_examples=300, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(st.tuples(st.one_of(st.dictionaries(ascii_text, plain_values, max_size=10),
                                    st.dictionaries(keys, odd_values, max_size=4)),
                          st.booleans(), st.sampled_from([1, (1 << 128) - 1, 1 << 63, (1 << 63) - 1])),
                max_size=12))
def test_store_values_equal_the_python_rows(items):
    module = built_speedups()
    rows = []
    for attrs, shared, trace in items:
        cleaned = records.clean_attributes(attrs, 128, 4096)
        attributes = records.SharedAttributes(cleaned) if shared else cleaned
        events = [{"name": "e", "time_ns": 1, "attributes": {"a": 1}}] if shared else []
        rows.append(("%032x" % trace, "%016x" % 5, None, "n", "internal", "svc", 1, 2, "ok", attributes, events,
                     trace))
    assert module.store_values(rows, to_json.c_encoder, to_json, _attributes_json) == python_values(rows)


def test_json_of_plain_attributes_is_the_stores_json_text(compiled):
    """The compiled writer of plain attribute dicts against json (through the store's encoder), on the values
    where writers differ: escapes, control characters, float formatting, the int64 bounds."""
    attrs = {"quote\"back\\slash": "a\"b\\c", "ctl": "".join(map(chr, range(32))) + "\x7f", "empty": "",
             "min": -(1 << 63), "max": (1 << 63) - 1, "zero": 0, "t": True, "f": False, "neg0": -0.0, "tiny": 5e-324,
             "big": 1e300, "e16": 1e16, "third": 1 / 3, "int-float": 2.0, "": "key empty"}
    row = ("0" * 32, "0" * 16, None, "n", "internal", "svc", 1, 2, "ok", attrs, [], 1)
    values = compiled.store_values([row], to_json.c_encoder, to_json, _attributes_json)
    assert values[10] == to_json(attrs)
    assert values == python_values([row])


def test_fields_leave_what_they_cannot_convert_to_python(compiled):
    records._prepared.clear()  # (nothing cleaned before: fields() would find these in the cache)
    plain = Span("plain", parent=None)
    plain.start().finish()
    others = []
    for attrs in ({"x": None}, {"x": "é"}, {"x": 1 << 70}, {"x": math.nan}, {"x": [1]}, {1: "k"}, {"x": "v" * 65}):
        span = Span("odd", parent=None)
        span.attributes.update(attrs)
        span.start().finish()
        others.append(span)
    converted = compiled.fields([plain] + others, "svc", 0, 128, 64)
    assert converted[0] is not None
    assert converted[1:] == [None] * len(others)


def test_fields_convert_spans_whose_cleaned_attributes_records_cache_holds(compiled):
    """A span whose attributes need cleaning (a statement to summarize, a value to bound) is converted in C once
    records' cache holds them cleaned: the row span_fields() gives, with the statement's summary and name. The
    Python code keeps the cache's bookkeeping: a name that just missed goes through it once more."""
    records._prepared.clear()
    records._misses.clear()

    def finished(attrs):
        span = Span("sqlite", kind="client", parent=None)
        span.attributes.update(attrs)
        span.start()
        span.end_ns = span.start_ns + 1000
        return span

    statement = {"db.system": "sqlite", "db.query.text": "SELECT * FROM t WHERE a = 'secret'"}
    long_value = {"x": "v" * 65}
    for attrs in (statement, long_value):
        first, second, third = finished(attrs), finished(attrs), finished(attrs)
        assert compiled.fields([first], "svc", 0, 128, 64) == [None]  # not cleaned yet
        span_fields(first, "svc", 0, 128, 64)  # (cleans, caches, counts the name's miss)
        assert compiled.fields([second], "svc", 0, 128, 64) == [None]  # the miss counted: Python resets it
        span_fields(second, "svc", 0, 128, 64)
        have = compiled.fields([third], "svc", 0, 128, 64)[0]
        assert have is not None and have == span_fields(third, "svc", 0, 128, 64)
        assert type(have[9]) is records.SharedAttributes
    assert have[3] == "sqlite" and have[9]["x"] == "v" * 64  # (bounded to 64 characters)
    assert records.speedups().fields([finished(statement)], "svc", 0, 128, 64)[0][3] == "SELECT t"
    assert [f[9]["db.query.text"] for f in compiled.fields([finished(statement)], "svc", 0, 128, 64)] == [
        "SELECT * FROM t WHERE a = ?"]


def test_fields_times_out_of_c_range_and_traces_side_by_side(compiled):
    """Start and duration are computed in C while they fit in 62 bits, with ints beyond; an end before the start is
    a duration of 0. The last trace id's text is reused only for that same id object."""
    spans = []
    for start, end, offset in ((5, 1005, 10), (1 << 62, (1 << 62) + 7, 0), (1 << 70, (1 << 70) + 3, 1),
                               (100, 90, 1 << 62), (100, 200, -(1 << 63)), (7, 8, -5)):
        span = Span("t", parent=None)
        span.start()
        span.start_ns, span.end_ns = start, end
        spans.append((span, offset))
    for span, offset in spans:
        assert compiled.fields([span], "svc", offset, 128, 64) == [span_fields(span, "svc", offset, 128, 64)]
    a, b = Span("a", parent=None), Span("b", parent=None)
    children = [Span("c", parent=root) for root in (a, b, a, b)]
    batch = [s.start().finish() or s for s in children + [a.start().finish() or a, b.start().finish() or b]]
    want = [span_fields(s, "svc", 0, 128, 64) for s in batch]
    assert compiled.fields(batch, "svc", 0, 128, 64) == want
    assert [f[0] for f in want] == ["%032x" % r._trace_id for r in (a, b, a, b, a, b)]


def test_configure_refuses_a_class_without_the_slots(compiled):
    class NotASpan:
        __slots__ = ("name",)

    with pytest.raises(TypeError):
        compiled.configure(NotASpan)
    compiled.configure(Span)


def test_the_agent_runs_without_the_compiled_module(monkeypatch, collected):
    from autoinstr import config

    monkeypatch.setattr(records, "_speedups", False)
    config.reset({"AUTOINSTR_SPEEDUPS": "false"})
    try:
        assert records.speedups() is None
    finally:
        config.reset()
    with Span("a"), Span("b"):
        pass
    assert [r["name"] for r in records_of(collected, "svc", 128, 4096)] == ["b", "a"]


def test_a_bad_speedups_setting_warns_once_and_keeps_them_on():
    from autoinstr import config

    cfg = config.reset({"AUTOINSTR_SPEEDUPS": "perhaps"})
    try:
        assert cfg.speedups is True
        assert len([w for w in cfg.warnings if "AUTOINSTR_SPEEDUPS" in w]) == 1
    finally:
        config.reset()



msgpack_values = st.one_of(st.none(), st.booleans(), st.integers(-(1 << 63), (1 << 64) - 1), st.floats(),
                           st.text(max_size=40), st.text(min_size=250, max_size=70000).filter(lambda t: len(t) > 255),
                           st.just("\ud800"), st.binary(max_size=4), st.lists(st.integers(), max_size=3))


@settings(max_examples=300, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(st.lists(st.tuples(st.dictionaries(st.one_of(st.text(max_size=20), st.integers(0, 3)), msgpack_values,
                                          max_size=20),
                          st.booleans(), st.one_of(st.none(), st.text(max_size=20)), msgpack_values),
                max_size=20))
def test_pack_records_is_what_msgpack_packs(items):
    """The collector's body from span_fields() tuples equals msgpack.packb of their records, byte for byte, for
    every value msgpack packs (ints of every width and sign, floats, str of every length, the odd ones that
    go through msgpack itself); a value msgpack refuses is refused alike."""
    import msgpack

    module = built_speedups()
    from autoinstr.export.collector import _pack_one

    rows = []
    for attrs, with_events, parent, start in items:
        events = [{"name": "e", "time_ns": 1, "attributes": {}}] if with_events else []
        rows.append(("%032x" % 7, "%016x" % 5, parent, "GET /x", "server", "svc", start, 12, "ok", attrs, events, 7))
    try:
        expected = msgpack.packb([dict(zip(FIELDS, f)) for f in rows], use_bin_type=True)
    except (UnicodeEncodeError, OverflowError, TypeError, ValueError) as exc:
        with pytest.raises(type(exc)):
            module.pack_records(rows, _pack_one)
        return
    assert module.pack_records(rows, _pack_one) == expected


@settings(max_examples=300, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(span_specs(), min_size=1, max_size=8), st.sampled_from([0, 1_700_000_000_000_000_000, -(1 << 62),
                                                                          1 << 63]))
def test_packed_is_the_msgpack_of_span_fields_for_every_span_it_packs(specs, offset):
    """packed() writes each span's record as msgpack straight from the span: the bytes msgpack.packb gives for
    its span_fields() record, for exactly the spans fields() converts (a statement's too, once records' cache
    holds it); an offset past int64 arithmetic, or text msgpack refuses, leaves the span to Python."""
    import msgpack

    module = built_speedups()
    spans = [s for batch in make_spans(specs) for s in batch]
    expected = [span_fields(s, "svc", offset, 8, 64) for s in spans]  # (fills records' cache, unlinks the roots)
    as_fields = module.fields(spans, "svc", offset, 8, 64)
    got = module.packed(spans, "svc", offset, 8, 64)
    assert len(got) == len(spans)
    fits = abs(offset) < 1 << 62  # (the C arithmetic's bounds, as times_of's)
    for want, fields, have in zip(expected, as_fields, got):
        try:
            want_bytes = msgpack.packb(dict(zip(FIELDS, want)), use_bin_type=True)
        except UnicodeEncodeError:  # a lone surrogate: left to Python, which reports the span and drops it
            want_bytes = None
        assert (have is not None) == (fields is not None and fits and want_bytes is not None)
        if have is not None:
            assert type(have) is bytes
            assert have == want_bytes
    # again: a statement's attributes, remembered by identity, are now copied as packed the first time
    assert module.packed(spans, "svc", offset, 8, 64) == got


@settings(max_examples=150, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(span_specs(), min_size=1, max_size=8))
def test_records_of_packed_gives_the_same_records_as_python(specs):
    import msgpack

    built_speedups()
    batches = make_spans(specs)
    saved = records._speedups, records.wall_offset_ns
    records.wall_offset_ns = lambda: 1_700_000_000_000_000_000
    try:
        records._speedups = None  # pure Python: span_fields() tuples
        python = records_of(batches, "svc", 8, 64, packed=True)
        records._speedups = saved[0]
        compiled = records_of(batches, "svc", 8, 64, packed=True)
    finally:
        records._speedups, records.wall_offset_ns = saved
    assert all(type(f) is tuple for f in python) and all(type(b) is bytes for b in compiled)
    packable = []
    for f in python:
        try:
            packable.append(msgpack.packb(dict(zip(FIELDS, f)), use_bin_type=True))
        except UnicodeEncodeError:  # (compiled: reported and dropped at conversion; Python: at packing)
            pass
    assert [msgpack.unpackb(b) for b in compiled] == [msgpack.unpackb(b) for b in packable]


@pytest.mark.parametrize("count", [1, 15, 16, 600, 65535, 65536, 70000])
def test_the_collector_body_of_packed_records_is_one_msgpack_array(count):
    import msgpack

    from autoinstr.export import collector

    items = [msgpack.packb({"i": i}) for i in range(count)]
    body = collector.packed_batch(items)
    assert body == msgpack.packb([{"i": i} for i in range(count)])


def six_hundred_server_spans(collected) -> list:
    """span_fields() tuples of 600 server spans (past msgpack's array16 and map16 headers), the 8th with an event
    (which the compiled writers leave to Python)."""
    for i in range(600):
        with Span("GET /users/<int:id>", kind="server", **{"http.route": "/users/<int:id>", "n": i}) as s:
            if i == 7:
                s.add_event("retry", {"attempt": 2})
    return records_of(collected, "svc", 128, 4096, fields=True)


def test_the_collector_body_is_the_same_with_or_without_the_compiled_module(compiled, collected, monkeypatch):
    import msgpack

    from autoinstr.export import collector

    fields = six_hundred_server_spans(collected)
    with_module = collector.packed_batch(fields)
    monkeypatch.setattr(collector, "speedups", lambda: None)
    assert collector.packed_batch(fields) == with_module
    assert msgpack.unpackb(with_module)[7]["events"][0]["name"] == "retry"


otlp_values = st.one_of(st.none(), st.booleans(), st.integers(-(1 << 64), 1 << 64), st.floats(), st.text(max_size=30),
                        st.text(min_size=120, max_size=300), st.just("\ud800"), st.binary(max_size=4),
                        st.lists(st.integers(), max_size=3),
                        st.dictionaries(st.text(max_size=3), st.integers(), max_size=2))
hex_ids = st.one_of(st.integers(0, (1 << 64) - 1).map("{:016x}".format), st.just(""), st.just("zz" * 8),
                    st.just("AB" * 8), st.none())


@settings(max_examples=300, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(st.lists(st.tuples(st.dictionaries(st.one_of(st.text(max_size=20), st.just("\udc80"), st.integers(0, 3)),
                                          otlp_values, max_size=20),
                          st.booleans(), hex_ids,
                          st.one_of(st.text(max_size=12), st.just("x" * 200), st.just("\ud800")),
                          st.sampled_from(["internal", "server", "client", "producer", "consumer", "weird", None]),
                          st.sampled_from(["svc", "other", "", None]),
                          st.one_of(st.integers(-5, 1 << 64), st.just(1 << 62)),
                          st.one_of(st.none(), st.integers(-5, 1 << 63)),
                          st.sampled_from(["ok", "error", None])),
                max_size=12))
def test_otlp_spans_are_what_the_python_encoder_writes(items):
    """The OTLP exporter's protobuf body from span_fields() tuples equals encode_protobuf() of their records,
    byte for byte: every attribute value kind (ints of every varint width and sign, beyond int64 as text,
    floats, long and non-ASCII text, None left out), ids in hex or not, kinds known or not, services grouped,
    and the rows the compiled code leaves to Python (events, errors, odd values, times beyond 2^62)."""
    from autoinstr.export import otlp

    module = built_speedups()
    rows = []
    for i, (attrs, with_events, parent, name, kind, service, start, duration, status) in enumerate(items):
        events = [{"name": "e", "time_ns": 1, "attributes": {"a": 1}}] if with_events else []
        rows.append(("%032x" % (i + 1), "%016x" % (i + 1), parent, name, kind, service, start, duration, status,
                     attrs, events, i + 1))
    resource = {"host.name": "h", "process.pid": 7}
    try:
        expected = otlp.encode_protobuf([dict(zip(FIELDS, f)) for f in rows], resource)
    except (TypeError, ValueError, AttributeError) as exc:
        with pytest.raises(type(exc)):
            otlp.encode_protobuf_fields(rows, resource)
        return
    assert otlp.encode_protobuf_fields(rows, resource) == expected
    declined = []
    module.pb_spans(rows, lambda row: declined.append(row) or otlp._pb_framed_span_of_fields(row))
    assert declined == [row for row in rows if not otlp_plain(row)]  # Python writes only what it must


def encodable(text) -> bool:
    try:
        text.encode("utf-8")
        return True
    except UnicodeEncodeError:
        return False


def otlp_plain(row) -> bool:
    """What the compiled Span writer takes: the rest is left to Python."""
    _, _, parent, name, kind, _, start, duration, status, attrs, events, _ = row
    hex16 = parent is None or parent == "" or (len(parent) == 16 and all(c in "0123456789abcdefABCDEF" for c in parent))
    small = [v for v in (start, duration) if v is not None]
    values_plain = all(type(k) is str and (v is None or encodable(k)) and (
        v is None or type(v) in (bool, float) or (type(v) is int and -(1 << 63) <= v < (1 << 63))
        or (type(v) is str and encodable(v))) for k, v in attrs.items())
    return (hex16 and type(name) is str and encodable(name) and kind in (None, "internal", "server", "client",
            "producer", "consumer", "weird") and all(0 <= v < (1 << 62) for v in small) and start is not None
            and status in ("ok", None) and values_plain and events == [])


def test_the_otlp_body_is_the_same_with_or_without_the_compiled_module(compiled, collected, monkeypatch):
    from autoinstr.export import otlp

    fields = six_hundred_server_spans(collected)
    with_module = otlp.encode_protobuf_fields(fields)
    monkeypatch.setattr(records, "speedups", lambda: None)
    assert otlp.encode_protobuf_fields(fields) == with_module
    decoded = otlp.decode_protobuf(with_module)
    assert len(decoded) == 600 and decoded[7]["events"][0]["name"] == "retry"
    assert decoded[8]["attributes"] == {"http.route": "/users/<int:id>", "n": 8}


def test_remembered_attributes_follow_the_obfuscation_setting_and_the_limits(compiled, collected, monkeypatch):
    """The compiled conversion remembers a statement span's cleaned attributes by the identity of its values; the
    same objects under another SqlPolicy.obfuscate or other limits are cleaned for those, each time."""
    import msgpack

    statement = "SELECT name FROM users WHERE email = 'a@example.com'"
    note = "n" * 40

    def convert(obfuscate: bool, max_length: int = 4096) -> dict:
        monkeypatch.setattr(records.SqlPolicy, "obfuscate", obfuscate)
        with Span("SELECT", kind="client", **{"db.system": "sqlite", "db.query.text": statement,
                                             "db.response.returned_rows": 1, "note": note}):
            pass
        spans = [s for batch in collected for s in batch]
        del collected[:]
        for _ in range(2):  # (Python fills records' cache first: a miss, then a hit that clears the name's misses)
            records.span_fields(spans[0], "svc", 0, 128, max_length)
        (packed,) = compiled.packed(spans, "svc", 0, 128, max_length)
        assert packed is not None
        return msgpack.unpackb(packed)["attributes"]

    for obfuscate in (True, True, False, False, True):
        text = convert(obfuscate)["db.query.text"]
        assert ("a@example.com" in text) is not obfuscate, (obfuscate, text)
    assert len(convert(False, max_length=16)["note"]) <= 16
    assert convert(False) == {**convert(False), "db.query.text": statement, "note": note}


PACKED_BOUNDS = r"""
import msgpack
from autoinstr.export import records
from autoinstr.export.records import FIELDS, span_fields
from autoinstr.trace.span import Span

module = records.speedups()
assert module is not None, "not built"
for name_len in (1, 100, 900, 1000, 1024):
    for service_len in range(1, 300):
        service = "s" * service_len
        with Span("n" * name_len, parent=None, **{"k": "v" * (service_len % 41)}) as s:
            pass
        want = msgpack.packb(dict(zip(FIELDS, span_fields(s, service, 0, 128, 4096))), use_bin_type=True)
        (got,) = module.packed([s], service, 0, 128, 4096)
        assert got == want, (name_len, service_len)
print("ok")
"""


def test_packed_writes_within_its_buffer(compiled):
    """packed() writes each record into a buffer it grows as it goes: with Python's debug allocator (guard bytes
    checked when the buffer is freed), records of every length around the buffer's first size end cleanly. (A
    reservation four bytes short wrote past the end for records of about 1,230 bytes.)"""
    import subprocess
    import sys

    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    env = dict(os.environ, PYTHONMALLOC="debug", PYTHONPATH=root)
    out = subprocess.run([sys.executable, "-c", PACKED_BOUNDS], cwd=root, env=env, capture_output=True, text=True,
                         timeout=300)
    assert out.returncode == 0 and out.stdout.strip() == "ok", out.stderr[-2000:]


def test_each_remembered_statement_packs_its_own_attributes(compiled, collected):
    """Statement spans' cleaned attributes are remembered by identity in 256 slots, and packed once per entry: 600
    statements replace one another's entries, and each record is still its own span's, on the first pass and the
    next."""
    import msgpack

    for i in range(600):  # (each its own name: records' cache stops trying a name that misses 16 times in a row)
        with Span("SELECT %d" % i, kind="client", **{"db.system": "sqlite", "db.query.text": "SELECT a FROM t%d" % i,
                                             "db.response.returned_rows": i % 7}):
            pass
    spans = [s for batch in collected for s in batch]
    for span in spans:  # (Python fills records' cache: a miss, then a hit that clears the name's misses)
        records.span_fields(span, "svc", 0, 128, 4096)
    expected = [msgpack.packb(dict(zip(FIELDS, records.span_fields(s, "svc", 0, 128, 4096))), use_bin_type=True)
                for s in spans]
    for _ in range(3):
        assert compiled.packed(spans, "svc", 0, 128, 4096) == expected


def test_a_float_zero_is_exported_as_records_cache_gives_it(compiled, collected):
    """records' cache finds 0.0 and -0.0 as the same key; the compiled conversion must give what Python gives for
    a span, even where its own remembered entry (by identity) was made when the cache held the other sign."""
    import msgpack

    negative = -0.0

    def span_with(value):
        with Span("GET /zero", kind="client", **{"db.system": "sqlite", "db.query.text": "SELECT 0", "x": value}):
            pass
        (span,) = [s for batch in collected for s in batch]
        del collected[:]
        for _ in range(2):  # (a miss, then a hit: records' cache holds it)
            records.span_fields(span, "svc", 0, 128, 4096)
        return span

    compiled.packed([span_with(negative)], "svc", 0, 128, 4096)  # (remembered, were it by identity, with -0.0)
    records._prepared.clear()  # (records' cache full: emptied)
    span_with(0.0)  # now it holds +0.0 for both
    span = span_with(negative)
    want = msgpack.packb(dict(zip(FIELDS, records.span_fields(span, "svc", 0, 128, 4096))), use_bin_type=True)
    assert compiled.packed([span], "svc", 0, 128, 4096) == [want]
