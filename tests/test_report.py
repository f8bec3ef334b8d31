"""`autoinstr report`: percentiles, the operation table, waterfalls, the printed report."""

from __future__ import annotations

import io
import re
import time

import pytest

from autoinstr.report import operation_table, percentile, print_report, waterfall
from autoinstr.store import Store, StoreError

MS = 1_000_000


@pytest.mark.parametrize("values,q,expected", [
    ([], 50, 0.0),
    ([7], 50, 7),
    ([7], 99, 7),
    (list(range(1, 101)), 50, 50),
    (list(range(1, 101)), 95, 95),
    (list(range(1, 101)), 99, 99),
    (list(range(1, 101)), 100, 100),
    (list(range(1, 101)), 0, 1),
    ([1, 2, 3, 4], 50, 2),
    ([1, 2, 3, 4], 75, 3),
    ([1, 2, 3, 4], 76, 4),
    ([10, 20], 95, 20),
    (list(range(1, 11)), 99, 10),
])
def test_percentile_nearest_rank(values, q, expected):
    assert percentile(values, q) == expected


def test_operation_table():
    rows = [("shop", "GET /", "server", d * MS, "ok") for d in range(1, 101)]
    rows += [("shop", "SELECT", "client", 2 * MS, "error"), ("shop", "SELECT", "client", 4 * MS, "ok")]
    rows += [("other", "job", "internal", 1 * MS, "ok")]
    table = operation_table(rows)
    assert [(r["service"], r["name"]) for r in table] == [("other", "job"), ("shop", "GET /"), ("shop", "SELECT")]
    get = table[1]
    assert get["count"] == 100 and get["kind"] == "server"
    assert get["error_rate"] == 0.0
    assert (get["p50_ms"], get["p95_ms"], get["p99_ms"]) == (50.0, 95.0, 99.0)
    assert get["total_ms"] == pytest.approx(5050.0)
    sel = table[2]
    assert sel["count"] == 2 and sel["error_rate"] == 0.5
    assert sel["p50_ms"] == 2.0 and sel["p99_ms"] == 4.0
    assert operation_table([]) == []


def span(span_id, parent, name, start_ms, dur_ms, status="ok", service="svc", trace="t"):
    return {"trace_id": trace, "span_id": span_id, "parent_id": parent, "name": name, "kind": "internal",
            "service": service, "start_ns": 10**18 + int(start_ms * MS), "duration_ns": int(dur_ms * MS),
            "status": status, "attributes": {}, "events": []}


def bar_of(line: str) -> str:
    return line.split("|")[1]


def test_waterfall_shape():
    spans = [
        span("c2", "r", "second", 60, 40),
        span("r", None, "root", 0, 100),
        span("c1", "r", "first", 0, 50),
        span("g", "c1", "grandchild", 10, 20, status="error"),
    ]
    lines = waterfall(spans, width=20)
    assert len(lines) == 4
    names = [re.search(r"ms (\s*)(\S+)", line.split("|")[2]).groups() for line in lines]
    # depth-first, children sorted by start, each level indented two more spaces
    assert [(len(indent), n) for indent, n in names] == [(0, "root"), (2, "first"), (4, "grandchild"), (2, "second")]
    bars = [bar_of(line) for line in lines]
    assert all(len(b) == 20 for b in bars)
    assert bars[0] == "#" * 20  # the root spans the whole axis
    assert bars[1] == "#" * 10 + " " * 10  # first half
    assert bars[2].index("#") == 2 and bars[2].count("#") == 4
    assert bars[3].index("#") == 12 and bars[3].rstrip().endswith("#")
    assert lines[2].endswith(" !")  # errors marked
    assert not lines[0].endswith("!")
    assert lines[0].lstrip().startswith("0.00 ms")
    assert "100.00 ms" in lines[0]
    assert "[svc]" not in "".join(lines)  # one service: not repeated on each line


def test_waterfall_tiny_span_gets_a_mark_and_services_shown():
    spans = [span("r", None, "root", 0, 1000, service="front"),
             span("c", "r", "quick", 999.9, 0.001, service="back")]
    lines = waterfall(spans, width=40)
    assert bar_of(lines[1]).count("#") == 1
    assert "[front]" in lines[0] and "[back]" in lines[1]


def test_waterfall_orphans_are_roots_and_names_one_line():
    spans = [span("a", "missing", "orphan\nwith newline", 0, 5), span("b", None, "root", 1, 1)]
    lines = waterfall(spans)
    assert len(lines) == 2
    assert all("\n" not in line for line in lines)
    assert "orphan with newline" in lines[0]
    assert waterfall([]) == []


def test_waterfall_is_bounded():
    spans = [span("r", None, "root", 0, 1000)] + [span(f"c{i}", "r", "c", i, 1) for i in range(500)]
    lines = waterfall(spans)
    assert len(lines) <= 202
    assert lines[-1].startswith("...") and "501" in lines[-1]


def test_waterfall_deep_trace_is_bounded():
    spans = [span("s0", None, "root", 0, 1000)] + [span(f"s{i}", f"s{i - 1}", "c", i, 1) for i in range(1, 400)]
    lines = waterfall(spans)
    assert len(lines) <= 202
    assert lines[-1].startswith("...")


def _record(trace, span_id, parent, name, start_ns, dur_ms, status="ok", service="shop", kind="server"):
    return {"trace_id": f"{trace:032x}", "span_id": f"{span_id:016x}",
            "parent_id": f"{parent:016x}" if parent else None, "name": name, "kind": kind, "service": service,
            "start_ns": start_ns, "duration_ns": int(dur_ms * MS), "status": status, "attributes": {},
            "events": []}


def test_print_report(tmp_path):
    path = str(tmp_path / "spans.db")
    store = Store(path)
    now = time.time_ns()
    records = []
    for i in range(20):
        t = i + 1
        records.append(_record(t, 1, None, "GET /users/<int:id>", now + i * 10**8, 10 + i,
                               status="error" if i % 4 == 0 else "ok"))
        records.append(_record(t, 2, 1, "SELECT users", now + i * 10**8 + MS, 5, kind="client"))
    store.insert(records)
    store.close()
    out = io.StringIO()
    assert print_report(path, traces=2, out=out) == 0
    text = out.getvalue()
    assert "(40 spans)" in text
    header = [line for line in text.splitlines() if "p50 ms" in line][0]
    for col in ("service", "operation", "count", "errors", "p50 ms", "p95 ms", "p99 ms"):
        assert col in header
    get = [line for line in text.splitlines() if "GET /users/<int:id>" in line and "server" in line][0]
    cols = get.split()
    assert cols[0] == "shop"
    assert "20" in cols and "25.0%" in cols
    assert "19.00" in cols and "28.00" in cols and "29.00" in cols  # p50, p95, p99 of 10..29 ms
    sel = [line for line in text.splitlines() if "SELECT users" in line and "client" in line][0]
    assert "0.0%" in sel.split() and "5.00" in sel.split()
    assert "slowest traces:" in text
    traces = re.findall(r"^trace ([0-9a-f]{32})", text, re.M)
    assert traces == [f"{20:032x}", f"{19:032x}"]  # the two slowest roots, slowest first
    wf = [line for line in text.splitlines() if "|" in line]
    assert len(wf) == 4
    assert wf[0].endswith(" ms GET /users/<int:id>")
    assert wf[1].endswith(" ms   SELECT users")  # the child is indented under its root


def test_print_report_empty_store(tmp_path):
    path = str(tmp_path / "empty.db")
    Store(path).close()
    out = io.StringIO()
    assert print_report(path, out=out) == 0
    assert "no spans stored yet" in out.getvalue()


def test_print_report_since(tmp_path):
    path = str(tmp_path / "spans.db")
    store = Store(path)
    now = time.time_ns()
    store.insert([_record(1, 1, None, "recent", now, 1), _record(2, 1, None, "ancient", now - 3600 * 10**9, 1)])
    store.close()
    out = io.StringIO()
    print_report(path, since_minutes=5, out=out)
    assert "recent" in out.getvalue() and "ancient" not in out.getvalue()


def test_print_report_missing_store(tmp_path):
    with pytest.raises(StoreError):
        print_report(str(tmp_path / "nope.db"), out=io.StringIO())
    assert not (tmp_path / "nope.db").exists()
