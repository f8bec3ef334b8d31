"""Finished spans -> the span record of DESIGN.md (autoinstr.export.records)."""

from __future__ import annotations

import json
import math
import time

import pytest

from autoinstr.export.records import (
    MAX_LIST_ITEMS,
    MAX_NAME_LENGTH,
    clean_attributes,
    clean_value,
    records_of,
    to_record,
    wall_offset_ns,
)
from autoinstr.trace.span import Span, SpanContext

RECORD_KEYS = {"trace_id", "span_id", "parent_id", "name", "kind", "service", "start_ns", "duration_ns",
               "status", "attributes", "events"}


def _is_hex(s, n):
    return isinstance(s, str) and len(s) == n and s == s.lower() and all(c in "0123456789abcdef" for c in s)


def test_record_shape(collected):
    before = time.time_ns()
    with Span("GET /users/<int:id>", kind="server", **{"http.request.method": "GET"}) as root, \
            Span("SELECT users", kind="client") as child:
        time.sleep(0.002)
    after = time.time_ns()
    records = records_of(collected, "shop", 128, 4096)
    assert len(records) == 2
    by_name = {r["name"]: r for r in records}
    r, c = by_name["GET /users/<int:id>"], by_name["SELECT users"]
    for rec in records:
        assert set(rec) == RECORD_KEYS
        assert _is_hex(rec["trace_id"], 32)
        assert _is_hex(rec["span_id"], 16)
        assert rec["service"] == "shop"
        assert rec["status"] == "ok"
        assert rec["events"] == []
        assert isinstance(rec["duration_ns"], int) and rec["duration_ns"] >= 0
        assert before - 50_000_000 <= rec["start_ns"] <= after + 50_000_000  # wall clock, ns
        json.dumps(rec, allow_nan=False)  # JSON-safe as is
    assert r["parent_id"] is None
    assert c["parent_id"] == r["span_id"]
    assert r["trace_id"] == c["trace_id"] == f"{root.trace_id:032x}"
    assert c["span_id"] == f"{child.span_id:016x}"
    assert r["kind"] == "server" and c["kind"] == "client"
    assert r["attributes"] == {"http.request.method": "GET"}
    assert c["duration_ns"] >= 2_000_000
    assert r["start_ns"] <= c["start_ns"]
    assert c["start_ns"] + c["duration_ns"] <= r["start_ns"] + r["duration_ns"] + 1000


def test_record_remote_parent_and_ids_with_leading_zeros(collected):
    with Span("s", parent=SpanContext(0x1, 0x2, True)):
        pass
    (rec,) = records_of(collected, "svc", 128, 4096)
    assert rec["trace_id"] == "0" * 31 + "1"
    assert rec["parent_id"] == "0" * 15 + "2"


def test_record_error_status_and_exception_event(collected):
    with pytest.raises(ValueError), Span("boom"):
        raise ValueError("bad")
    (rec,) = records_of(collected, "svc", 128, 4096)
    assert rec["status"] == "error"
    assert rec["attributes"]["error.type"] == "ValueError"
    assert rec["attributes"]["exception.message"] == "bad"
    (ev,) = rec["events"]
    assert ev["name"] == "exception"
    assert abs(ev["time_ns"] - rec["start_ns"]) < 10_000_000_000
    assert "Traceback" in ev["attributes"]["exception.stacktrace"]


def test_exception_event_time_within_span(collected):
    with pytest.raises(ValueError), Span("boom"):
        raise ValueError("bad")
    (rec,) = records_of(collected, "svc", 128, 4096)
    (ev,) = rec["events"]
    assert rec["start_ns"] <= ev["time_ns"] <= rec["start_ns"] + rec["duration_ns"]


def test_unknown_kind_becomes_internal_and_empty_name_unnamed(collected):
    with Span("", kind="weird"):
        pass
    (rec,) = records_of(collected, "svc", 128, 4096)
    assert rec["kind"] == "internal"
    assert rec["name"] == "unnamed"


def test_long_and_odd_names(collected):
    with Span("x" * (MAX_NAME_LENGTH + 50)):
        pass
    with Span(12345):
        pass
    a, b = records_of(collected, "svc", 128, 4096)
    assert len(a["name"]) == MAX_NAME_LENGTH
    assert b["name"] == "12345"


def test_open_span_record_has_zero_duration():
    s = Span("open").start()
    rec = to_record(s, "svc", wall_offset_ns(), 128, 4096)
    assert rec["duration_ns"] == 0
    s.finish()


def test_spans_before_not_before_are_skipped(collected):
    with Span("old"):
        pass
    cut = time.perf_counter_ns()
    with Span("new"):
        pass
    records = records_of(collected, "svc", 128, 4096, not_before_ns=cut)
    assert [r["name"] for r in records] == ["new"]


def test_unconvertible_span_is_skipped_and_reported(collected):
    with Span("good"):
        pass
    with Span("broken") as broken:
        broken.add_event("bad-time", time_ns="not a number")  # cannot be converted to wall-clock time
    errors: list = []
    records = records_of(collected, "svc", 128, 4096, errors=errors)
    assert [r["name"] for r in records] == ["good"]
    assert len(errors) == 1


# ------------------------------------------------------------------------------- clean_value


class Unprintable:
    def __str__(self):
        raise RuntimeError("no")

    def __repr__(self):
        raise RuntimeError("no either")


class Printable:
    def __str__(self):
        return "printable!"


@pytest.mark.parametrize("value,expected", [
    ("plain", "plain"),
    (True, True),
    (False, False),
    (0, 0),
    (-5, -5),
    ((1 << 63) - 1, (1 << 63) - 1),
    (-(1 << 63), -(1 << 63)),
    (1.5, 1.5),
    (b"bytes", "bytes"),
    (Printable(), "printable!"),
    ([1, "a", 2.5, True], [1, "a", 2.5, True]),
    ((1, 2), [1, 2]),
])
def test_clean_value_plain(value, expected):
    out = clean_value(value, 100)
    assert out == expected and type(out) is type(expected)


def test_clean_value_non_utf8_bytes():
    out = clean_value(b"ok\xff\xfe", 100)
    assert isinstance(out, str)
    out.encode("utf-8")
    assert out.startswith("ok")


def test_clean_value_lone_surrogates():
    out = clean_value("a\ud800b", 100)
    out.encode("utf-8")  # encodable
    assert out.startswith("a") and out.endswith("b")
    lst = clean_value(["x\udcff"], 100)
    lst[0].encode("utf-8")


def test_clean_value_huge_ints():
    assert clean_value(1 << 64, 100) == str(1 << 64)
    assert clean_value(-(1 << 63) - 1, 100) == str(-(1 << 63) - 1)
    # beyond Python's int-to-str digit limit: still no crash where attributes are cleaned
    out = clean_attributes({"huge": 10 ** 5000, "ok": 1}, 128, 100000)
    assert isinstance(out["huge"], str) and out["ok"] == 1


def test_clean_value_non_finite_floats():
    for v in (math.nan, math.inf, -math.inf):
        out = clean_value(v, 100)
        assert isinstance(out, str)
        json.dumps(out, allow_nan=False)


def test_clean_value_recursive_list():
    lst: list = [1]
    lst.append(lst)
    out = clean_value(lst, 100)
    assert out[0] == 1 and isinstance(out[1], str)
    json.dumps(out)


def test_clean_value_nested_and_long_lists():
    out = clean_value([[1, 2], {"a": 1}, None], 100)
    assert all(isinstance(x, (str, int)) for x in out)
    assert len(clean_value(list(range(MAX_LIST_ITEMS + 100)), 100)) == MAX_LIST_ITEMS


def test_clean_value_unprintable_object():
    out = clean_value(Unprintable(), 100)
    assert isinstance(out, str) and out


def test_clean_value_truncates_long_strings():
    assert clean_value("a" * 1000, 64) == "a" * 64
    assert clean_value("\u00e9" * 1000, 64) == "\u00e9" * 64
    assert len(clean_value(b"b" * 1000, 64)) == 64
    assert len(clean_value(["c" * 1000], 64)[0]) == 64
    assert len(clean_value(Printable(), 4)) == 4


def test_clean_value_subclasses():
    import enum

    class Color(enum.IntEnum):
        RED = 1

    class Ratio(float):
        pass

    assert clean_value(Color.RED, 100) == 1 and type(clean_value(Color.RED, 100)) is int
    assert clean_value(Ratio(0.5), 100) == 0.5 and type(clean_value(Ratio(0.5), 100)) is float


def test_clean_attributes_limits():
    attrs = {f"k{i:03d}": i for i in range(50)}
    out = clean_attributes(attrs, 10, 100)
    assert len(out) == 10
    assert list(out) == [f"k{i:03d}" for i in range(10)]


def test_clean_attributes_drops_none_and_stringifies_keys():
    out = clean_attributes({"a": None, 5: "five", "k" * 1000: 1, "ok": Unprintable()}, 100, 100)
    assert "a" not in out
    assert out["5"] == "five"
    assert all(isinstance(k, str) and len(k) <= 256 for k in out)
    assert isinstance(out["ok"], str)
    json.dumps(out, allow_nan=False)


def test_records_respect_attribute_limits(collected):
    with Span("s", **{f"a{i:02d}": "v" * 500 for i in range(20)}):
        pass
    (rec,) = records_of(collected, "svc", 5, 32)
    assert len(rec["attributes"]) == 5
    assert all(len(v) == 32 for v in rec["attributes"].values())


def test_record_is_json_serializable_with_hostile_values(collected):
    lst: list = []
    lst.append(lst)
    with Span("hostile") as s:
        s.set_attribute("bytes", b"\xff\x00")
        s.set_attribute("surrogate", "\ud800")
        s.set_attribute("nan", float("nan"))
        s.set_attribute("big", 1 << 100)
        s.set_attribute("rec", lst)
        s.set_attribute("obj", Unprintable())
        s.set_attribute("dict", {"a": 1})
        s.add_event("ev", {"inf": float("inf"), "b": b"\xfe"})
    (rec,) = records_of(collected, "svc", 128, 4096)
    text = json.dumps(rec, allow_nan=False, ensure_ascii=False)
    text.encode("utf-8")


@pytest.mark.parametrize("compiled", [True, False], ids=["compiled", "python"])
def test_converted_local_roots_leave_no_reference_cycle(collected, monkeypatch, compiled):
    """A local root refers to itself until it is converted: after records_of, the trace is freed by
    reference counting alone (the queue held it long enough to reach an old GC generation). The same with
    the compiled conversion (autoinstr._speedups) as with the Python one."""
    import gc

    from autoinstr.export import records

    if compiled and records.speedups() is None:
        pytest.skip("autoinstr._speedups is not built here")
    if not compiled:
        monkeypatch.setattr(records, "_speedups", None)
    gc.collect()
    gc.disable()
    try:
        for _ in range(50):
            with Span("root"), Span("child"):
                pass
        roots = [batch[-1] for batch in collected]
        assert all(r.root is r for r in roots)
        assert len(records_of(collected, "svc", 128, 4096)) == 100
        assert all(r.root is r for r in roots)  # still answered, through __getattr__
        del roots
        collected.clear()
        assert gc.collect() == 0
    finally:
        gc.enable()


def test_names_whose_attributes_never_repeat_skip_the_attribute_cache(monkeypatch):
    """A route's server spans carry their own url.path: after MISSES_TO_BYPASS misses in a row their name skips
    the cache (cleaned directly, the same record), and is tried on it again after BYPASS_SPANS spans."""
    from autoinstr.export import records

    monkeypatch.setattr(records, "_prepared", {})
    monkeypatch.setattr(records, "_misses", {})
    monkeypatch.setattr(records, "BYPASS_SPANS", 20)

    def record(i: int, name: str = "GET /users/<int:id>") -> dict:
        s = Span(name, kind="server")
        s.attributes.update({"url.path": "/users/%d" % i, "http.route": "/users/<int:id>", "n": i})
        return to_record(s, "svc", 0, 128, 4096)

    for i in range(records.MISSES_TO_BYPASS):
        assert record(i)["attributes"]["url.path"] == "/users/%d" % i
    assert len(records._prepared) == records.MISSES_TO_BYPASS
    for i in range(100, 110):  # bypassed: the same records, nothing more cached
        assert record(i)["attributes"] == {"url.path": "/users/%d" % i, "http.route": "/users/<int:id>", "n": i}
    assert len(records._prepared) == records.MISSES_TO_BYPASS
    assert records._misses["GET /users/<int:id>"] == records.MISSES_TO_BYPASS + 10
    for _ in range(20):  # then the cache is tried again: span 7 (cached before the bypass) is a hit there
        record(7)
    assert records._misses["GET /users/<int:id>"] == 0 and len(records._prepared) == records.MISSES_TO_BYPASS
    for _ in range(3):  # a name whose spans repeat stays on the cache
        record(1, name="GET /hello")
    assert records._misses["GET /hello"] == 0
    unhashable = Span("x")
    unhashable.name = ["not", "hashable"]
    assert to_record(unhashable, "svc", 0, 128, 4096)["name"]
