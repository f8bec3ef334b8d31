"""The web UI without a browser: the rollups (counts, attribution of SQL and calls to endpoints, service map
edges, incremental and shared catch-up, a replaced store), the trace layout (self time, critical path), search,
validation (400 pages, never a stack trace), escaping, the CSP, static files, and the collector's root path."""

from __future__ import annotations

import base64
import contextvars
import io
import json
import os
import re
import sqlite3
import time

import pytest

from autoinstr.store import Store
from autoinstr.ui import queries, rollup
from autoinstr.ui.app import UIApp, parse_params
from autoinstr.ui.queries import BadRequest

T0 = (int(time.time()) - 600) * 10**9  # ten minutes ago: inside the default range (last hour)
_ids = iter(range(1, 10**9))


def sid() -> str:
    return "%016x" % next(_ids)


def span(trace, name, kind="internal", service="shop", parent=None, start=0, dur=1_000_000, status="ok",
         span_id=None, **attrs):
    return {"trace_id": trace, "span_id": span_id or sid(), "parent_id": parent, "name": name, "kind": kind,
            "service": service, "start_ns": T0 + start, "duration_ns": dur, "status": status, "attributes": attrs,
            "events": []}


def request_trace(n: int, error: bool = False, slow: int = 0) -> tuple:
    """A shop request (server span, a handler, 3 SQL spans, one HTTP call to inventory) and inventory's side
    (its server span and one SQL span): the two local traces, as two processes would flush them."""
    trace = "%032x" % (0xABC000 + n)
    root, handler, client = sid(), sid(), sid()
    shop = [span(trace, "GET /orders", "server", span_id=root, start=n * 10**7, dur=9_000_000 + slow,
                 status="error" if error else "ok", **{"http.route": "/orders", "user.tag": "t%d" % n}),
            span(trace, "orders", parent=root, span_id=handler, start=n * 10**7 + 100, dur=8_000_000 + slow)]
    for i in range(3):
        shop.append(span(trace, "SELECT customers", "client", parent=handler, start=n * 10**7 + 200 + i, dur=1_000_000,
                         **{"db.system": "sqlite", "db.query.text": "SELECT email FROM customers WHERE id = ?"}))
    shop.append(span(trace, "GET 127.0.0.1", "client", parent=handler, span_id=client, start=n * 10**7 + 300,
                     dur=3_000_000, **{"http.request.method": "GET", "server.address": "127.0.0.1",
                                       "server.port": 8081}))
    inv_root = sid()
    inventory = [span(trace, "GET /stock/<sku>", "server", service="inventory", parent=client, span_id=inv_root,
                      start=n * 10**7 + 400, dur=2_000_000),
                 span(trace, "SELECT stock", "client", service="inventory", parent=inv_root, start=n * 10**7 + 500,
                      dur=500_000, **{"db.system": "sqlite",
                                      "db.query.text": "SELECT quantity FROM stock WHERE sku = ?"})]
    return trace, shop, inventory


@pytest.fixture
def store_path(tmp_path):
    return str(tmp_path / "spans.db")


def fill(path: str, n: int = 10, errors=(3,)) -> list:
    st = Store(path)
    traces = []
    for i in range(n):
        trace, shop, inventory = request_trace(i, error=i in errors, slow=50_000_000 if i == 7 else 0)
        st.insert(shop)
        st.insert(inventory)
        traces.append(trace)
    st.close()
    return traces


def call(app, path, method="GET", accept="text/html", environ=None):
    path, _, query = path.partition("?")
    env = {"REQUEST_METHOD": method, "PATH_INFO": path, "QUERY_STRING": query, "wsgi.input": io.BytesIO(b""),
           "HTTP_ACCEPT": accept}
    env.update(environ or {})
    seen = {}

    def start_response(status, headers, exc_info=None):
        seen["status"] = int(status.split()[0])
        seen["headers"] = dict(headers)

    body = b"".join(contextvars.copy_context().run(app, env, start_response))
    return seen["status"], seen["headers"], body.decode("utf-8")


@pytest.fixture
def app(store_path):
    fill(store_path)
    a = UIApp(store_path, start_indexer=False)
    yield a
    a.close()


# ------------------------------------------------------------------------------------ rollups

def test_rollup_counts_attribution_and_edges(store_path):
    fill(store_path)
    r = rollup.Rollup(store_path)
    assert r.catch_up() == 10 * 8
    db = r.db
    ops = {(s, n, k): (op, e) for op, s, n, k, e in db.execute("SELECT op_id, service, name, kind, entry FROM ops")}
    assert ops[("shop", "GET /orders", "server")][1] == 1 and ops[("inventory", "GET /stock/<sku>", "server")][1] == 1
    assert ops[("shop", "orders", "internal")][1] == 0
    orders = ops[("shop", "GET /orders", "server")][0]
    count, errors = db.execute("SELECT sum(count), sum(errors) FROM stats WHERE res = 60 AND op_id = ?",
                               (orders,)).fetchone()
    assert (count, errors) == (10, 1)
    for res in (10, 3600):  # every resolution holds the same totals
        assert db.execute("SELECT sum(count) FROM stats WHERE res = ? AND op_id = ?", (res, orders)).fetchone()[0] == 10
    # the SQL and the HTTP call inside GET /orders are attributed to it, through the handler span
    calls = {(t, label): (n, total) for t, label, n, total in db.execute(
        "SELECT c.type, c.label, sum(s.count), sum(s.sum_ns) FROM call_stats s JOIN calls c USING (call_id) "
        "WHERE s.res = 60 AND s.entry_op = ? GROUP BY c.call_id", (orders,))}
    assert calls[("sql", "SELECT email FROM customers WHERE id = ?")] == (30, 30_000_000)
    assert calls[("http", "GET 127.0.0.1:8081")][0] == 10
    edges = {(s, d, t): n for s, d, t, n in db.execute(
        "SELECT e.src, e.dst, e.dst_type, sum(s.count) FROM edge_stats s JOIN edges e USING (edge_id) "
        "WHERE s.res = 60 GROUP BY e.edge_id")}
    assert edges == {("shop", "sqlite", "db"): 30, ("shop", "inventory", "service"): 10,
                     ("inventory", "sqlite", "db"): 10}
    assert db.execute("SELECT count(*) FROM entries").fetchone()[0] == 20
    r.close()


def test_rollup_is_incremental_and_shared_without_double_counting(store_path):
    fill(store_path, 4)
    a, b = rollup.Rollup(store_path), rollup.Rollup(store_path)
    assert a.catch_up() == 32
    assert b.catch_up() == 0  # the same sidecar: b sees a's last_id inside its transaction
    st = Store(store_path)
    trace, shop, inventory = request_trace(50)
    st.insert(shop)  # the client span's server side is not stored yet: pending
    assert b.catch_up() == 6
    assert a.db.execute("SELECT count(*) FROM pending").fetchone()[0] == 1
    st.insert(inventory)
    assert a.catch_up() == 2
    assert a.db.execute("SELECT count(*) FROM pending").fetchone()[0] == 0
    n = a.db.execute("SELECT sum(s.count) FROM edge_stats s JOIN edges e USING (edge_id) WHERE s.res = 60 AND "
                     "e.dst = 'inventory'").fetchone()[0]
    assert n == 5
    total = a.db.execute("SELECT sum(count) FROM stats WHERE res = 60").fetchone()[0]
    assert total == 10  # 5 shop + 5 inventory endpoint spans, each counted once
    st.close()
    a.close()
    b.close()


def _rollup_figures(r) -> tuple:
    db = r.db
    stats = db.execute("SELECT o.service, o.name, o.kind, o.entry, sum(s.count) FROM stats s JOIN ops o USING (op_id) "
                       "WHERE s.res = 60 GROUP BY o.op_id ORDER BY 1, 2, 3").fetchall()
    calls = db.execute("SELECT o.name, c.label, sum(s.count) FROM call_stats s JOIN calls c USING (call_id) JOIN ops o "
                       "ON o.op_id = s.entry_op WHERE s.res = 60 GROUP BY 1, 2 ORDER BY 1, 2").fetchall()
    edges = db.execute("SELECT e.src, e.dst, e.dst_type, sum(s.count) FROM edge_stats s JOIN edges e USING (edge_id) "
                       "WHERE s.res = 60 GROUP BY e.edge_id ORDER BY 1, 2, 3").fetchall()
    return stats, calls, edges


@pytest.mark.parametrize("chunk", [1, 3, 7])
def test_traces_cut_by_chunks_are_attributed_as_in_one_chunk(tmp_path, chunk):
    """The store has no trace index: a span whose parent or child was indexed chunks ago is found through the
    trace's spans.id range in the sidecar, one written just after the chunk through the look-ahead. Every
    chunk size gives the figures of one big chunk."""
    whole, cut = str(tmp_path / "whole.db"), str(tmp_path / "cut.db")
    for path in (whole, cut):
        st = Store(path)
        for i in range(6):  # inventory's side stored first for half of them (another process flushed first),
            # and children before their parents for some (the agent writes a trace's spans as they ended)
            trace, shop, inventory = request_trace(i)
            for part in ((inventory, shop) if i % 2 else (shop, inventory)):
                st.insert(part[::-1] if i % 3 else part)
        st.close()
    a = rollup.Rollup(whole)
    assert a.catch_up() == 48
    b = rollup.Rollup(cut)
    monkeypatch = pytest.MonkeyPatch()
    monkeypatch.setattr(rollup, "LOOKAHEAD", 2)
    try:
        assert b.catch_up(chunk=chunk) == 48
    finally:
        monkeypatch.undo()
    figures = _rollup_figures(a)
    assert figures == _rollup_figures(b)
    stats = {(svc, name): (entry, n) for svc, name, _kind, entry, n in figures[0]}
    assert stats[("shop", "GET /orders")] == (1, 6) and ("shop", "SELECT customers") not in stats
    assert ("shop", "inventory", "service", 6) in figures[2]
    # each trace's id range: exactly its 8 spans, and the trace page reads them through it
    for _key, lo, hi in b.db.execute("SELECT trace_key, min_id, max_id FROM traces"):
        assert hi - lo == 7
    a.close()
    b.close()


def test_trace_page_reads_the_trace_range_and_the_unindexed_spans(store_path):
    traces = fill(store_path, 3)
    ui = UIApp(store_path, start_indexer=False)
    try:
        ui.rollup.catch_up()
        st = Store(store_path)
        trace, shop, inventory = request_trace(1)  # more spans of an indexed trace, stored after the catch-up
        for s in shop + inventory:
            s["trace_id"] = traces[1]
        st.insert(shop + inventory)
        st.close()
        status, _, body = call(ui, "/trace/" + traces[1])
        assert status == 200 and len(page_data(body)["spans"]) == 16
        assert call(ui, "/trace/" + "%032x" % 12345)[0] == 404
    finally:
        ui.close()


def test_unanswered_call_becomes_an_external_peer(store_path, monkeypatch):
    st = Store(store_path)
    trace = "%032x" % 77
    root = sid()
    st.insert([span(trace, "GET /", "server", span_id=root),
               span(trace, "GET api.example.com", "client", parent=root, **{
                   "http.request.method": "GET", "server.address": "api.example.com", "server.port": 443})])
    r = rollup.Rollup(store_path)
    r.catch_up()
    assert r.db.execute("SELECT count(*) FROM pending").fetchone()[0] == 1
    monkeypatch.setattr(rollup, "PENDING_TTL_S", 0.0)
    r.catch_up()
    assert r.db.execute("SELECT src, dst, dst_type FROM edges").fetchall() == [("shop", "api.example.com:443",
                                                                                "external")]
    r.close()
    st.close()


def test_replaced_store_starts_the_sidecar_over(store_path):
    fill(store_path, 3)
    r = rollup.Rollup(store_path)
    assert r.catch_up() == 24
    r.close()
    for suffix in ("", "-wal", "-shm"):
        if os.path.exists(store_path + suffix):
            os.remove(store_path + suffix)
    fill(store_path, 4)  # a new store with more spans than the old one: same ids, other spans
    r = rollup.Rollup(store_path)
    assert r.catch_up() == 32
    assert r.db.execute("SELECT sum(count) FROM stats WHERE res = 60").fetchone()[0] == 8
    r.close()


def test_store_write_path_is_untouched(app, store_path):
    """The UI adds no index or trigger to the spans table: Store.insert costs what it did."""
    call(app, "/")
    db = sqlite3.connect(store_path)
    objects = sorted(r[0] for r in db.execute("SELECT name FROM sqlite_master WHERE tbl_name = 'spans' AND "
                                              "type IN ('index', 'trigger') AND name NOT LIKE 'sqlite_%'"))
    assert objects == ["spans_identity"]
    tables = sorted(r[0] for r in db.execute("SELECT name FROM sqlite_master WHERE type = 'table'"))
    assert tables == ["meta", "spans"]
    assert os.path.exists(store_path + ".ui")
    assert os.stat(store_path + ".ui").st_mode & 0o077 == 0


def test_latency_bins_and_percentiles():
    for d in (1_500, 10_000, 2_345_678, 10**9, 3 * 10**11):
        lo, hi = rollup.bin_bounds_ns(rollup.latency_bin(d))
        assert lo <= d < hi * 1.0001
        assert abs(rollup.bin_value_ns(rollup.latency_bin(d)) - d) / d < 0.1
    counts = {}
    for ms in range(1, 101):
        b = rollup.latency_bin(ms * 1_000_000)
        counts[b] = counts.get(b, 0) + 1
    p50, p95, p99 = rollup.percentiles(counts)
    assert abs(p50 / 1e6 - 50) < 5 and abs(p95 / 1e6 - 95) < 9 and abs(p99 / 1e6 - 99) < 9
    assert rollup.percentiles({}) == [None, None, None]


# ------------------------------------------------------------------------------------ trace layout

def test_layout_depth_self_time_and_critical_path():
    t = "%032x" % 1
    spans = [
        {"span_id": "a", "parent_id": None, "start_ns": 0, "duration_ns": 100},
        {"span_id": "b", "parent_id": "a", "start_ns": 10, "duration_ns": 5},    # a waits on it first
        {"span_id": "c", "parent_id": "a", "start_ns": 20, "duration_ns": 70},   # ends last: critical
        {"span_id": "d", "parent_id": "c", "start_ns": 30, "duration_ns": 10},
        {"span_id": "x", "parent_id": "a", "start_ns": 30, "duration_ns": 20},   # runs beside c: not waited on
        {"span_id": "e", "parent_id": "zz", "start_ns": 5, "duration_ns": 1},   # parent not stored: a root
    ]
    for s in spans:
        s["start_ns"] *= 1000
        s["duration_ns"] *= 1000
        s.update(trace_id=t, name=s["span_id"], kind="internal", service="x", status="ok", attributes={}, events=[])
    out = queries.layout(spans)
    order = [(r["span_id"], r["depth"]) for r in out["spans"]]
    assert order == [("a", 0), ("b", 1), ("c", 1), ("d", 2), ("x", 1), ("e", 0)]
    rows = {r["span_id"]: r for r in out["spans"]}
    assert rows["a"]["self_ms"] == pytest.approx((100 - 75) / 1e3)  # b, c and x cover 10..15 and 20..90 us
    assert rows["c"]["self_ms"] == pytest.approx(60 / 1e3)
    assert {k for k, r in rows.items() if r["critical"]} == {"a", "b", "c", "d"}
    assert rows["d"]["parent_row"] == 2
    # a cycle in bad data does not hang nor drop spans
    cyc = [dict(spans[0], span_id="p", parent_id="q"), dict(spans[1], span_id="q", parent_id="p")]
    assert len(queries.layout(cyc)["spans"]) == 2


def test_trace_page_of_thousands_of_spans(store_path):
    st = Store(store_path)
    trace = "%032x" % 999
    root = sid()
    rows = [span(trace, "GET /big", "server", span_id=root, dur=10**9)]
    parent = root
    for i in range(4999):
        s = span(trace, "step %d" % i, parent=parent if i % 50 else root, start=i * 100_000, dur=90_000)
        rows.append(s)
        parent = s["span_id"] if i % 50 else root
    st.insert(rows)
    st.close()
    a = UIApp(store_path, start_indexer=False)
    status, _, body = call(a, "/trace/" + trace)  # its speed is measured by benchmarks/ui_bench.py
    assert status == 200
    data = json.loads(re.search(r'<script type="application/json" id="page-data">(.*?)</script>', body, re.S).group(1))
    assert len(data["spans"]) == 5000 and 'data-spans="5000"' in body
    a.close()


# ------------------------------------------------------------------------------------ pages and validation

def page_data(body: str) -> dict:
    return json.loads(re.search(r'id="page-data">(.*?)</script>', body, re.S).group(1))


def test_pages_answer_with_the_expected_figures(app):
    status, headers, body = call(app, "/")
    assert status == 200 and "shop" in body and "inventory" in body
    assert "script-src 'self'" in headers["Content-Security-Policy"] and "unsafe-inline" not in headers[
        "Content-Security-Policy"]
    assert re.search(r"<script(?![^>]*\bsrc=)(?![^>]*application/json)[^>]*>", body) is None  # no inline script
    status, _, body = call(app, "/service?service=shop")
    assert status == 200 and "GET /orders" in body and ">10<" in body
    status, _, body = call(app, "/endpoint?service=shop&op=GET%20/orders")
    assert status == 200 and "SELECT email FROM customers WHERE id = ?" in body and "3.0" in body
    assert "/trace/%032x" % (0xABC000 + 7) in body  # the slowest trace is listed
    data = json.loads(call(app, "/api/endpoint?service=shop&op=GET%20/orders")[2])
    assert data["summary"]["count"] == 10 and data["summary"]["errors"] == 1
    assert data["slowest"][0]["trace_id"] == "%032x" % (0xABC000 + 7)
    assert data["sql"][0]["per_request"] == 3.0 and sum(b["count"] for b in data["histogram"]) == 10
    status, _, body = call(app, "/queries")
    assert status == 200 and "SELECT quantity FROM stock WHERE sku = ?" in body
    data = json.loads(call(app, "/api/map")[2])
    assert {(e["src"], e["dst"]) for e in data["edges"]} == {("shop", "sqlite"), ("shop", "inventory"),
                                                               ("inventory", "sqlite")}
    status, _, body = call(app, "/trace/%032x" % (0xABC000 + 3))
    assert status == 200 and len(page_data(body)["spans"]) == 8
    status, _, body = call(app, "/api/status", accept="application/json")
    assert json.loads(body)["behind"] == 0


def test_services_page_charts_p50_p95_p99_over_time(store_path):
    # 100 requests of 1..100 ms, one every 5 s: each chart point (a minute or so, over the last hour) holds several
    st = Store(store_path)
    durations: dict = {}
    for i in range(100):
        s = span("%032x" % (0xD000 + i), "GET /lat", "server", service="lat", start=i * 5 * 10**9,
                 dur=(i + 1) * 10**6)
        durations[s["start_ns"]] = s["duration_ns"] / 1e6
        st.insert([s])
    st.close()
    a = UIApp(store_path, start_indexer=False)
    try:
        status, _, body = call(a, "/?range=1h")
        assert status == 200
        for chart_kind in ("services-rate", "services-errors", "services-p50", "services-p95", "services-p99"):
            assert 'data-chart="%s"' % chart_kind in body
        data = json.loads(call(a, "/api/services?range=1h", accept="application/json")[2])
    finally:
        a.close()
    series = data["series"]["lat"]
    step = data["range"]["step"]
    assert step <= 60 and set(series) >= {"rate", "error_pct", "p50_ms", "p95_ms", "p99_ms"}
    points = 0
    for i, t_ms in enumerate(data["t"]):
        inside = [d for start, d in durations.items() if t_ms * 10**6 <= start < (t_ms + step * 1000) * 10**6]
        p50, p95, p99 = series["p50_ms"][i], series["p95_ms"][i], series["p99_ms"][i]
        assert round(series["rate"][i] * step) == len(inside)
        if not inside:
            assert p50 is None and p95 is None and p99 is None
            continue
        points += 1
        # within a histogram bin (9% wide) of what was stored, and ordered
        assert min(inside) * 0.9 <= p50 <= p95 <= p99 <= max(inside) * 1.1, (inside, p50, p95, p99)
    assert points >= 500 // step - 1
    row = data["services"][0]
    assert row["service"] == "lat" and row["count"] == 100
    assert abs(row["p50_ms"] - 50) < 5 and abs(row["p95_ms"] - 95) < 9 and abs(row["p99_ms"] - 99) < 9


def test_search_filters(app, monkeypatch):
    def results(q):
        status, _, body = call(app, "/api/search?" + q)
        assert status == 200, body
        return json.loads(body)["results"]

    assert {r["service"] for r in results("service=inventory")} == {"inventory"}
    assert len(results("service=inventory&op=GET%20/stock/%3Csku%3E")) == 10
    assert [r["trace_id"] for r in results("errors=1")] == ["%032x" % (0xABC000 + 3)]
    slow = results("min_ms=20")
    assert {r["name"] for r in slow} == {"GET /orders", "orders"} and all(r["duration_ms"] >= 20 for r in slow)
    assert len(results("attr=user.tag%3Dt4")) == 1 and results("attr=user.tag%3Dt4")[0]["name"] == "GET /orders"
    assert len(results("attr=t4")) == 1
    assert results("range=15m&service=shop") and not results("from=2000-01-01T00:00&to=2000-01-02T00:00")
    status, headers, _ = call(app, "/search?trace=%032X" % (0xABC000 + 5))
    assert status == 302 and headers["Location"] == "/trace/%032x" % (0xABC000 + 5)
    # a scan that runs out of its time budget says where to go on from
    store = app._store()
    monkeypatch.setattr(queries, "SEARCH_CHUNK", 10)
    out = queries.search(store, app._db(), app.rollup.last_id, None, attr="no such thing", budget_s=0.0)
    assert out["results"] == [] and out["more_before"] is not None


@pytest.mark.parametrize("path, says", [
    ("/?range=2y", "range must be one of"),
    ("/?from=yesterday", "from must be an ISO 8601"),
    ("/?from=2026-01-02T00:00&to=2026-01-01T00:00", "from must be before to"),
    ("/service", "parameter service is required"),
    ("/service?service=shop&sort=%3Cx%3E", "sort must be one of"),
    ("/service?service=shop&dir=up", "dir must be asc or desc"),
    ("/endpoint?service=shop&op=x&kind=weird", "kind must be one of"),
    ("/trace/not-a-trace", "a trace id is 32"),
    ("/trace/" + "a" * 33, "a trace id is 32"),
    ("/trace/%s?span=xyz" % ("a" * 32), "span must be a span id"),
    ("/search?min_ms=abc", "min_ms must be a number"),
    ("/search?min_ms=-1", "min_ms must be between"),
    ("/search?errors=maybe", "errors must be 1 or 0"),
    ("/search?trace=123", "a trace id is 32"),
    ("/search?attr=a%22b%3D1", "an attribute name has"),
    ("/search?before=-3", "before must be a positive"),
    ("/?range=1h&range=6h", "given more than once"),
    ("/?service=%ff", "query string cannot be read"),
    ("/queries?sort=nope", "sort must be one of"),
])
def test_bad_input_is_a_clear_400(app, path, says):
    status, headers, body = call(app, path)
    assert status == 400, body
    assert headers["Content-Type"].startswith("text/html") and says in body and "Traceback" not in body
    status, headers, body = call(app, "/api" + path if not path.startswith("/trace") else "/api" + path)
    assert status == 400 and json.loads(body)["error"] == "bad_request"


def test_unknown_things_are_404_and_methods_405(app):
    assert call(app, "/service?service=nobody")[0] == 404
    assert call(app, "/endpoint?service=shop&op=nope")[0] == 404
    assert call(app, "/trace/" + "f" * 32)[0] == 404
    assert call(app, "/nowhere")[0] == 404
    assert call(app, "/", method="POST")[0] == 405
    status, _, body = call(app, "/", method="HEAD")
    assert status == 200 and body == ""


def test_internal_error_is_a_500_page_without_a_stack(app, monkeypatch):
    monkeypatch.setattr(queries, "overview", lambda *a: 1 / 0)
    status, _, body = call(app, "/")
    assert status == 500 and "ZeroDivisionError" not in body and "Traceback" not in body


def test_span_names_and_attributes_are_escaped(store_path):
    evil = '<script>window.__xss=1</script>"\'&'
    st = Store(store_path)
    trace = "%032x" % 4242
    root = sid()
    st.insert([span(trace, evil, "server", service="<b>svc</b>", span_id=root, **{"note": evil, "http.route": evil}),
               span(trace, "SELECT 1", "client", service="<b>svc</b>", parent=root,
                    **{"db.system": "sqlite", "db.query.text": "SELECT '</script><script>x()</script>'"})])
    st.close()
    a = UIApp(store_path, start_indexer=False)
    for path in ("/", "/service?service=%3Cb%3Esvc%3C/b%3E", "/trace/" + trace, "/queries", "/map",
                 "/search?service=%3Cb%3Esvc%3C/b%3E", "/endpoint?service=%3Cb%3Esvc%3C/b%3E&op=" +
                 "%3Cscript%3Ewindow.__xss%3D1%3C/script%3E%22%27%26"):
        status, _, body = call(a, path)
        assert status == 200, (path, body)
        assert "<script>window" not in body and "<b>svc" not in body and "</script><script>x()" not in body, path
    status, _, body = call(a, "/trace/" + trace)
    assert "&lt;script&gt;window.__xss=1&lt;/script&gt;" in body
    assert page_data(body)["spans"][0]["name"] == evil  # the JSON block decodes to the real text
    a.close()


def test_static_files_and_no_traversal(app):
    status, headers, body = call(app, "/static/echarts/echarts.min.js")
    assert status == 200 and headers["Content-Type"].startswith("text/javascript") and len(body) > 900_000
    assert call(app, "/static/echarts/LICENSE")[0] == 200
    assert call(app, "/static/ui.js")[0] == 200 and call(app, "/static/ui.css")[0] == 200
    for bad in ("/static/../app.py", "/static/%2e%2e/app.py", "/static/echarts/../../app.py", "/static/nope.js"):
        assert call(app, bad)[0] == 404


def test_parse_params_ignores_unknown_names():
    assert parse_params("utm_source=x&range=1h&_=123") == {"range": "1h"}
    with pytest.raises(BadRequest):
        parse_params("service=" + "x" * 2000)


def test_time_range_falls_back_to_the_newest_data(store_path):
    fill(store_path, 2)
    r = rollup.Rollup(store_path)
    r.catch_up()
    later = time.time() + 5 * 86400
    tr = queries.time_range(r.db, "1h", None, None, now=later)
    assert tr.note and tr.from_s <= T0 // 10**9 < tr.to_s
    assert queries.time_range(r.db, "15m", None, None).res == 10
    assert queries.time_range(r.db, "6h", None, None).res == 60
    assert queries.time_range(r.db, "7d", None, None).res == 3600
    r.close()


# ------------------------------------------------------------------------------------ the collector

def test_collector_serves_the_ui_at_its_root(tmp_path):
    from autoinstr.collector.app import CollectorApp

    path = str(tmp_path / "c.db")
    fill(path, 2)
    c = CollectorApp(path)
    status, headers, body = call(c, "/", accept="text/html,application/xhtml+xml")
    assert status == 200 and "<h1>Services</h1>" in body and "Content-Security-Policy" in headers
    status, headers, body = call(c, "/", accept="application/json")
    assert status == 200 and "POST /v1/spans" in json.loads(body)["endpoints"]
    assert "POST /v1/spans" in json.loads(call(c, "/v1/", accept="text/html")[2])["endpoints"]
    assert call(c, "/service?service=shop")[0] == 200
    assert call(c, "/static/ui.js")[0] == 200
    assert call(c, "/nope")[0] == 404
    c.close()
    secured = CollectorApp(path, token="s3cret")
    status, headers, _ = call(secured, "/", accept="text/html")
    assert status == 401 and headers["WWW-Authenticate"].startswith("Basic")
    good = "Basic " + base64.b64encode(b"me:s3cret").decode()
    bad = "Basic " + base64.b64encode(b"me:wrong").decode()
    assert call(secured, "/", accept="text/html", environ={"HTTP_AUTHORIZATION": bad})[0] == 401
    assert call(secured, "/", accept="text/html", environ={"HTTP_AUTHORIZATION": good})[0] == 200
    assert call(secured, "/map", environ={"HTTP_AUTHORIZATION": "Bearer s3cret"})[0] == 200
    secured.close()


def test_cli_ui_refuses_a_missing_store(tmp_path, capsys):
    from autoinstr.cli import main

    # in a copied context: `autoinstr ui` turns instrumentation off for the thread it runs in
    assert contextvars.copy_context().run(main, ["ui", "--store", str(tmp_path / "none.db"), "--port", "0"]) == 1
    assert "no span store" in capsys.readouterr().err
    assert main(["ui", "--port", "70000", "--store", str(tmp_path / "none.db")]) == 2


def test_a_damaged_sidecar_is_rebuilt(store_path):
    fill(store_path, 2)
    with open(store_path + ".ui", "wb") as f:
        f.write(b"this is not a database" * 100)
    r = rollup.Rollup(store_path)
    assert r.catch_up() == 16
    r.close()


def test_a_big_backlog_shows_a_banner_while_the_indexer_reads(store_path, monkeypatch):
    from autoinstr.ui import app as app_module

    fill(store_path, 3)
    monkeypatch.setattr(app_module, "SYNC_BACKLOG", 5)  # more than this: pages do not wait for the indexer
    a = UIApp(store_path, start_indexer=False)
    status, _, body = call(a, "/")
    assert status == 200 and "Indexing: 0 of 24 spans" in body
    a.rollup.catch_up()
    assert "Indexing" not in call(a, "/")[2]
    a.close()
    a = UIApp(store_path)  # with its indexer thread: the backlog is read in the background
    assert a.indexer.sync(24, 10.0) and json.loads(call(a, "/api/status")[2])["behind"] == 0
    a.close()
