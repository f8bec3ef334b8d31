"""What each page shows, as plain dicts: read from the sidecar's rollups (autoinstr.ui.rollup) and, for traces
and search, from the span store by spans.id ranges (the sidecar's). No HTML here."""

from __future__ import annotations

import json
import re
import time

from autoinstr import store as store_mod
from autoinstr.ui.rollup import ENTRY_KINDS, bin_bounds_ns, percentiles, trace_ranges

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any, Dict, List, Optional, Sequence, Tuple

RANGES = {"15m": 900, "1h": 3600, "6h": 6 * 3600, "24h": 86400, "7d": 7 * 86400, "30d": 30 * 86400, "all": 0}
RANGE_LABELS = {"15m": "15 minutes", "1h": "1 hour", "6h": "6 hours", "24h": "24 hours", "7d": "7 days",
                "30d": "30 days", "all": "all stored"}
STEPS = (10, 20, 30, 60, 120, 300, 600, 900, 1800, 3600, 7200, 10800, 21600, 43200, 86400, 172800, 604800)
MAX_POINTS = 120
TEN_S_RES_MAX_S = 3600  # ranges up to an hour read the 10 s rollups of endpoints
MINUTE_RES_MAX_S = 6 * 3600  # up to 6 hours the per-minute ones; longer ranges the hourly ones
TRACE_SPAN_LIMIT = 20000
SEARCH_LIMIT = 100
SEARCH_BUDGET_S = 0.6
SEARCH_CHUNK = 250000
ATTR_KEY = re.compile(r"^[A-Za-z0-9_.:/@\-]{1,200}$")


class BadRequest(Exception):
    """A query parameter or path value that cannot be used: the page answers 400 with this message."""


# ------------------------------------------------------------------------------------ time ranges

class TimeRange:
    """[from_s, to_s) in epoch seconds, with the rollup resolution (res) and the chart step to read it at.
    Calls and edges have no 10 s rollups: they are read per minute at least, over [call_from, call_to)."""

    def __init__(self, from_s: int, to_s: int, key: str, note: str = "") -> None:
        duration = max(10, to_s - from_s)
        self.res = 10 if duration <= TEN_S_RES_MAX_S else 60 if duration <= MINUTE_RES_MAX_S else 3600
        self.from_s = from_s - from_s % self.res
        self.to_s = to_s + (-to_s) % self.res
        if self.to_s <= self.from_s:
            self.to_s = self.from_s + self.res
        self.call_res = max(60, self.res)
        self.call_from = self.from_s - self.from_s % self.call_res
        self.call_to = self.to_s + (-self.to_s) % self.call_res
        span = self.to_s - self.from_s
        self.step = next((s for s in STEPS if s >= self.res and span / s <= MAX_POINTS), STEPS[-1])
        self.key = key
        self.note = note

    @property
    def seconds(self) -> int:
        return self.to_s - self.from_s

    def points(self) -> List[int]:
        first = self.from_s - self.from_s % self.step
        return list(range(first, self.to_s, self.step))

    def as_dict(self) -> Dict[str, Any]:
        return {"from": self.from_s, "to": self.to_s, "res": self.res, "step": self.step, "range": self.key,
                "note": self.note}


def data_bounds(db: Any) -> Tuple[Optional[int], Optional[int]]:
    """(first, last) minute of the entry spans indexed, in epoch seconds."""
    row = db.execute("SELECT min(t), max(t) FROM stats WHERE res = 60").fetchone()
    lo = db.execute("SELECT min(t) FROM id_ranges").fetchone()[0]
    hi = db.execute("SELECT max(t) FROM id_ranges").fetchone()[0]
    first = min(x for x in (row[0], lo) if x is not None) if (row[0] is not None or lo is not None) else None
    last = max(x for x in (row[1], hi) if x is not None) if (row[1] is not None or hi is not None) else None
    return first, last


def parse_time(value: str, name: str) -> int:
    """Epoch seconds (or ms) as digits, or an ISO 8601 date-time (UTC unless it says otherwise)."""
    import datetime

    value = value.strip()
    if re.fullmatch(r"\d{1,13}", value):
        n = int(value)
        return n // 1000 if n > 10**11 else n
    text = value[:-1] + "+00:00" if value.endswith(("Z", "z")) else value
    try:
        when = datetime.datetime.fromisoformat(text.replace(" ", "T", 1))
    except ValueError:
        raise BadRequest("%s must be an ISO 8601 date-time (2026-01-31T12:00) or epoch seconds" % name)
    if when.tzinfo is None:
        when = when.replace(tzinfo=datetime.timezone.utc)
    return int(when.timestamp())


def time_range(db: Any, range_key: Optional[str], from_v: Optional[str], to_v: Optional[str],
               default: str = "1h", now: Optional[float] = None) -> TimeRange:
    now_s = int(time.time() if now is None else now) + 1
    first, last = data_bounds(db)
    if from_v or to_v:
        to_s = parse_time(to_v, "to") if to_v else now_s
        from_s = parse_time(from_v, "from") if from_v else to_s - 3600
        if from_s >= to_s:
            raise BadRequest("from must be before to")
        if to_s - from_s > 366 * 86400:
            raise BadRequest("a time range is at most 366 days")
        return TimeRange(from_s, to_s, "custom")
    key = range_key or default
    if key not in RANGES:
        raise BadRequest("range must be one of %s" % ", ".join(RANGES))
    if key == "all":
        if first is None:
            return TimeRange(now_s - 3600, now_s, key)
        return TimeRange(first, max(last + 60, first + 60), key)
    seconds = RANGES[key]
    note = ""
    end = now_s
    if last is not None and last + 60 < now_s - seconds:
        end = last + 60  # nothing that recent: show the last stretch of what is stored
        note = "No spans in the last %s; showing the %s up to the newest span stored." % (
            RANGE_LABELS[key], RANGE_LABELS[key])
    return TimeRange(end - seconds, end, key, note)


# ------------------------------------------------------------------------------------ helpers

def _ms(ns: Optional[float]) -> Optional[float]:
    return None if ns is None else round(ns / 1e6, 4)


def _pcts(counts: Dict[int, int]) -> Dict[str, Optional[float]]:
    p50, p95, p99 = percentiles(counts, (50, 95, 99))
    return {"p50_ms": _ms(p50), "p95_ms": _ms(p95), "p99_ms": _ms(p99)}


def _in(ids: Sequence[int]) -> str:
    return ",".join(str(int(i)) for i in ids) or "NULL"


def services(db: Any) -> List[str]:
    return [r[0] for r in db.execute("SELECT DISTINCT service FROM ops ORDER BY service")]


def entry_ops(db: Any, service: Optional[str] = None) -> List[Tuple[int, str, str, str]]:
    sql = "SELECT op_id, service, name, kind FROM ops WHERE entry = 1"
    args: List[Any] = []
    if service is not None:
        sql += " AND service = ?"
        args.append(service)
    return db.execute(sql + " ORDER BY service, name", args).fetchall()


def operation_names(db: Any, service: Optional[str] = None, limit: int = 500) -> List[str]:
    sql = "SELECT DISTINCT name FROM ops"
    args: List[Any] = []
    if service:
        sql += " WHERE service = ?"
        args.append(service)
    return [r[0] for r in db.execute(sql + " ORDER BY name LIMIT ?", args + [limit])]


def _series(db: Any, tr: TimeRange, op_ids: Sequence[int], group_by_service: bool = False
            ) -> Dict[Any, Dict[str, List[Optional[float]]]]:
    """Per chart step: rate (per s), error %, p50/p95/p99 (ms) of the entry spans of op_ids; by service when
    group_by_service, else under the key None."""
    points = tr.points()
    index = {t: i for i, t in enumerate(points)}
    n = len(points)
    step = tr.step
    ids = _in(op_ids)
    # summed per chart step (and service) in SQL: a few thousand rows reach Python whatever the range
    group = "o.service" if group_by_service else "NULL"
    counts: Dict[Any, List[List[int]]] = {}
    for key, t, count, errors in db.execute(
            "SELECT %s, s.t - s.t %% ?, sum(s.count), sum(s.errors) FROM stats s JOIN ops o ON o.op_id = s.op_id "
            "WHERE s.res = ? AND s.t >= ? AND s.t < ? AND s.op_id IN (%s) GROUP BY 1, 2" % (group, ids),
            (step, tr.res, tr.from_s, tr.to_s)):
        slot = counts.get(key)
        if slot is None:
            slot = counts[key] = [[0, 0] for _ in range(n)]
        i = index.get(t)
        if i is not None:
            slot[i][0] += count
            slot[i][1] += errors
    hists: Dict[Any, List[Dict[int, int]]] = {}
    for key, t, b, count in db.execute(
            "SELECT %s, h.t - h.t %% ?, h.bin, sum(h.count) FROM hist h JOIN ops o ON o.op_id = h.op_id "
            "WHERE h.res = ? AND h.t >= ? AND h.t < ? AND h.op_id IN (%s) GROUP BY 1, 2, 3" % (group, ids),
            (step, tr.res, tr.from_s, tr.to_s)):
        slot_h = hists.get(key)
        if slot_h is None:
            slot_h = hists[key] = [{} for _ in range(n)]
        i = index.get(t)
        if i is not None:
            slot_h[i][b] = count
    out: Dict[Any, Dict[str, List[Optional[float]]]] = {}
    for key, slot in counts.items():
        series: Dict[str, List[Optional[float]]] = {"rate": [], "error_pct": [], "p50_ms": [], "p95_ms": [],
                                                     "p99_ms": []}
        per_hist = hists.get(key) or [{} for _ in range(n)]
        for i in range(n):
            count, errors = slot[i]
            series["rate"].append(round(count / step, 4))
            series["error_pct"].append(round(100.0 * errors / count, 3) if count else None)
            for name, value in _pcts(per_hist[i]).items():
                series[name].append(value)
        out[key] = series
    return out


def _op_totals(db: Any, tr: TimeRange, op_ids: Sequence[int]) -> Dict[int, Dict[str, Any]]:
    ids = _in(op_ids)
    out: Dict[int, Dict[str, Any]] = {}
    for op_id, count, errors, sum_ns, max_ns in db.execute(
            "SELECT op_id, sum(count), sum(errors), sum(sum_ns), max(max_ns) FROM stats WHERE res = ? AND t >= ? "
            "AND t < ? AND op_id IN (%s) GROUP BY op_id" % ids, (tr.res, tr.from_s, tr.to_s)):
        out[op_id] = {"count": count, "errors": errors, "total_ms": _ms(sum_ns), "max_ms": _ms(max_ns),
                      "error_pct": round(100.0 * errors / count, 3) if count else 0.0,
                      "rate": round(count / tr.seconds, 4), "mean_ms": _ms(sum_ns / count) if count else None}
    hists: Dict[int, Dict[int, int]] = {}
    for op_id, b, count in db.execute(
            "SELECT op_id, bin, sum(count) FROM hist WHERE res = ? AND t >= ? AND t < ? AND op_id IN (%s) "
            "GROUP BY op_id, bin" % ids, (tr.res, tr.from_s, tr.to_s)):
        hists.setdefault(op_id, {})[b] = count
    for op_id, row in out.items():
        row.update(_pcts(hists.get(op_id, {})))
        row["hist"] = hists.get(op_id, {})
    return out


def _merge(rows: Sequence[Dict[str, Any]], seconds: int) -> Dict[str, Any]:
    count = sum(r["count"] for r in rows)
    errors = sum(r["errors"] for r in rows)
    total = sum(r["total_ms"] or 0 for r in rows)
    hist: Dict[int, int] = {}
    for r in rows:
        for b, n in r["hist"].items():
            hist[b] = hist.get(b, 0) + n
    out = {"count": count, "errors": errors, "total_ms": round(total, 3), "rate": round(count / seconds, 4),
           "error_pct": round(100.0 * errors / count, 3) if count else 0.0}
    out.update(_pcts(hist))
    return out


# ------------------------------------------------------------------------------------ pages

def overview(db: Any, tr: TimeRange) -> Dict[str, Any]:
    ops = entry_ops(db)
    totals = _op_totals(db, tr, [o[0] for o in ops])
    by_service: Dict[str, List[Dict[str, Any]]] = {}
    endpoints: Dict[str, int] = {}
    for op_id, service, _name, _kind in ops:
        endpoints[service] = endpoints.get(service, 0) + 1
        if op_id in totals:
            by_service.setdefault(service, []).append(totals[op_id])
    rows = []
    for service in services(db):
        row = _merge(by_service.get(service, []), tr.seconds)
        row["service"] = service
        row["endpoints"] = endpoints.get(service, 0)
        rows.append(row)
    rows.sort(key=lambda r: (-r["count"], r["service"]))
    series = _series(db, tr, [o[0] for o in ops], group_by_service=True)
    return {"range": tr.as_dict(), "services": rows, "t": [p * 1000 for p in tr.points()],
            "series": {k: v for k, v in series.items() if k is not None}}


ENDPOINT_SORTS = ("name", "count", "rate", "error_pct", "p50_ms", "p95_ms", "p99_ms", "total_ms")


def service_page(db: Any, tr: TimeRange, service: str, sort: str = "total_ms", desc: bool = True
                 ) -> Dict[str, Any]:
    if sort not in ENDPOINT_SORTS:
        raise BadRequest("sort must be one of %s" % ", ".join(ENDPOINT_SORTS))
    if service not in services(db):
        raise NotFound("no service named %r in this store" % service)
    ops = entry_ops(db, service)
    totals = _op_totals(db, tr, [o[0] for o in ops])
    rows = []
    for op_id, _service, name, kind in ops:
        row = dict(totals.get(op_id) or {"count": 0, "errors": 0, "total_ms": 0.0, "rate": 0.0, "error_pct": 0.0,
                                          "p50_ms": None, "p95_ms": None, "p99_ms": None, "hist": {}})
        row.pop("hist", None)
        row.update({"name": name, "kind": kind})
        rows.append(row)

    def key(r: Dict[str, Any]) -> Any:
        value = r.get(sort)
        if sort == "name":
            return value
        return -1e300 if value is None else value

    rows.sort(key=lambda r: r["name"])
    rows.sort(key=key, reverse=desc)
    summary = _merge([t for t in totals.values()], tr.seconds)
    series = _series(db, tr, [o[0] for o in ops]).get(None) or {}
    return {"range": tr.as_dict(), "service": service, "summary": summary, "endpoints": rows, "sort": sort,
            "desc": desc, "t": [p * 1000 for p in tr.points()], "series": series}


class NotFound(Exception):
    """Nothing by that name or id: the page answers 404 with this message."""


def find_entry_op(db: Any, service: str, name: str, kind: Optional[str]) -> Tuple[int, str]:
    sql = "SELECT op_id, kind FROM ops WHERE service = ? AND name = ? AND entry = 1"
    args: List[Any] = [service, name]
    if kind:
        sql += " AND kind = ?"
        args.append(kind)
    rows = db.execute(sql + " ORDER BY kind = 'server' DESC, op_id", args).fetchall()
    if not rows:
        raise NotFound("no endpoint %r of service %r in this store" % (name, service))
    return rows[0][0], rows[0][1]


def endpoint_page(db: Any, tr: TimeRange, service: str, name: str, kind: Optional[str] = None) -> Dict[str, Any]:
    op_id, kind = find_entry_op(db, service, name, kind)
    totals = _op_totals(db, tr, [op_id]).get(op_id)
    hist = totals.pop("hist") if totals else {}
    summary = totals or {"count": 0, "errors": 0, "total_ms": 0.0, "rate": 0.0, "error_pct": 0.0,
                         "p50_ms": None, "p95_ms": None, "p99_ms": None, "max_ms": None, "mean_ms": None}
    histogram = []
    for b in sorted(hist):
        lo, hi = bin_bounds_ns(b)
        histogram.append({"lo_ms": round(lo / 1e6, 4), "hi_ms": round(hi / 1e6, 4), "count": hist[b]})
    series = _series(db, tr, [op_id]).get(None) or {}
    lo_ns, hi_ns = tr.from_s * 10**9, tr.to_s * 10**9
    slowest = [{"trace_id": r[0], "span_id": r[1], "start_ms": r[2] // 10**6, "duration_ms": _ms(r[3]),
                "error": bool(r[4])} for r in db.execute(
        "SELECT trace_id, span_id, start_ns, duration_ns, error FROM entries WHERE op_id = ? AND start_ns >= ? "
        "AND start_ns < ? ORDER BY duration_ns DESC LIMIT 20", (op_id, lo_ns, hi_ns))]
    calls = {"sql": [], "http": []}  # type: Dict[str, List[Dict[str, Any]]]
    count = summary["count"] or 0
    for _call_id, type_, system, label, n, errors, sum_ns, max_ns, max_trace in db.execute(
            "SELECT c.call_id, c.type, c.system, c.label, sum(s.count), sum(s.errors), sum(s.sum_ns), "
            "max(s.max_ns), s.max_trace FROM call_stats s JOIN calls c ON c.call_id = s.call_id WHERE s.res = ? "
            "AND s.t >= ? AND s.t < ? AND s.entry_op = ? GROUP BY c.call_id ORDER BY sum(s.sum_ns) DESC LIMIT 200",
            (tr.call_res, tr.call_from, tr.call_to, op_id)):
        row = {"type": type_, "system": system, "label": label, "count": n, "errors": errors,
               "total_ms": _ms(sum_ns), "mean_ms": _ms(sum_ns / n) if n else None, "max_ms": _ms(max_ns),
               "per_request": round(n / count, 2) if count else None, "example_trace": max_trace,
               "share_pct": round(100.0 * (sum_ns / 1e6) / summary["total_ms"], 1) if summary["total_ms"] else None}
        calls["sql" if type_ in ("sql", "db") else "http"].append(row)
    return {"range": tr.as_dict(), "service": service, "name": name, "kind": kind, "summary": summary,
            "histogram": histogram, "t": [p * 1000 for p in tr.points()], "series": series, "slowest": slowest,
            "sql": calls["sql"][:50], "calls": calls["http"][:50]}


QUERY_SORTS = ("count", "total_ms", "mean_ms", "p95_ms", "errors")


def queries_page(db: Any, tr: TimeRange, service: Optional[str] = None, sort: str = "total_ms",
                 limit: int = 100) -> Dict[str, Any]:
    if sort not in QUERY_SORTS:
        raise BadRequest("sort must be one of %s" % ", ".join(QUERY_SORTS))
    sql = ("SELECT c.call_id, c.service, c.system, c.label, sum(s.count), sum(s.errors), sum(s.sum_ns), "
           "max(s.max_ns), s.max_trace FROM call_stats s JOIN calls c ON c.call_id = s.call_id WHERE s.res = ? "
           "AND s.t >= ? AND s.t < ? AND c.type = 'sql'")
    args: List[Any] = [tr.call_res, tr.call_from, tr.call_to]
    if service:
        sql += " AND c.service = ?"
        args.append(service)
    rows = []
    for call_id, svc, system, label, n, errors, sum_ns, max_ns, max_trace in db.execute(
            sql + " GROUP BY c.call_id", args):
        rows.append({"call_id": call_id, "service": svc, "system": system, "statement": label, "count": n,
                     "errors": errors, "total_ms": _ms(sum_ns), "mean_ms": _ms(sum_ns / n) if n else None,
                     "max_ms": _ms(max_ns), "example_trace": max_trace})
    rows.sort(key=lambda r: -r["total_ms"])
    if sort != "p95_ms":
        rows.sort(key=lambda r: -(r[sort] or 0))
        rows = rows[:limit]
    hists: Dict[int, Dict[int, int]] = {}
    if rows:
        for call_id, b, n in db.execute(
                "SELECT call_id, bin, sum(count) FROM call_hist WHERE res = ? AND t >= ? AND t < ? AND call_id IN "
                "(%s) GROUP BY call_id, bin" % _in([r["call_id"] for r in rows]),
                (tr.call_res, tr.call_from, tr.call_to)):
            hists.setdefault(call_id, {})[b] = n
    for r in rows:
        r["p95_ms"] = _ms(percentiles(hists.get(r.pop("call_id"), {}), (95,))[0])
    if sort == "p95_ms":
        rows.sort(key=lambda r: -(r["p95_ms"] or 0))
        rows = rows[:limit]
    return {"range": tr.as_dict(), "service": service, "sort": sort, "statements": rows}


def map_page(db: Any, tr: TimeRange) -> Dict[str, Any]:
    edges = []
    edge_rows = db.execute(
        "SELECT e.edge_id, e.src, e.dst, e.dst_type, sum(s.count), sum(s.errors), sum(s.sum_ns) FROM edge_stats s "
        "JOIN edges e ON e.edge_id = s.edge_id WHERE s.res = ? AND s.t >= ? AND s.t < ? GROUP BY e.edge_id",
        (tr.call_res, tr.call_from, tr.call_to)).fetchall()
    hists: Dict[int, Dict[int, int]] = {}
    if edge_rows:
        for edge_id, b, n in db.execute(
                "SELECT edge_id, bin, sum(count) FROM edge_hist WHERE res = ? AND t >= ? AND t < ? "
                "GROUP BY edge_id, bin", (tr.call_res, tr.call_from, tr.call_to)):
            hists.setdefault(edge_id, {})[b] = n
    for edge_id, src, dst, dst_type, n, errors, sum_ns in edge_rows:
        seconds = tr.call_to - tr.call_from
        edges.append({"src": src, "dst": dst, "dst_type": dst_type, "count": n, "rate": round(n / seconds, 4),
                      "error_pct": round(100.0 * errors / n, 3) if n else 0.0,
                      "mean_ms": _ms(sum_ns / n) if n else None,
                      "p95_ms": _ms(percentiles(hists.get(edge_id, {}), (95,))[0])})
    edges.sort(key=lambda e: (e["src"], -e["count"]))
    over = overview_totals(db, tr)
    nodes: Dict[str, Dict[str, Any]] = {}
    for service, row in over.items():
        nodes[service] = dict(row, name=service, type="service")
    for service in services(db):
        nodes.setdefault(service, {"name": service, "type": "service", "count": 0, "rate": 0.0, "error_pct": 0.0,
                                   "p95_ms": None})
    for e in edges:
        nodes.setdefault(e["src"], {"name": e["src"], "type": "service", "count": 0, "rate": 0.0,
                                    "error_pct": 0.0, "p95_ms": None})
        if e["dst"] not in nodes or nodes[e["dst"]]["type"] != "service":
            nodes.setdefault(e["dst"], {"name": e["dst"], "type": e["dst_type"], "count": 0, "rate": 0.0,
                                        "error_pct": 0.0, "p95_ms": None})
            if e["dst_type"] != "service":
                node = nodes[e["dst"]]
                node["count"] += e["count"]
                node["rate"] = round(node["count"] / tr.seconds, 4)
    return {"range": tr.as_dict(), "nodes": sorted(nodes.values(), key=lambda n: (n["type"] != "service", n["name"])),
            "edges": edges}


def overview_totals(db: Any, tr: TimeRange) -> Dict[str, Dict[str, Any]]:
    ops = entry_ops(db)
    totals = _op_totals(db, tr, [o[0] for o in ops])
    by_service: Dict[str, List[Dict[str, Any]]] = {}
    for op_id, service, _name, _kind in ops:
        if op_id in totals:
            by_service.setdefault(service, []).append(totals[op_id])
    return {s: _merge(rows, tr.seconds) for s, rows in by_service.items()}


# ------------------------------------------------------------------------------------ traces

TRACE_ID = re.compile(r"^[0-9a-fA-F]{16}([0-9a-fA-F]{16})?$")


def parse_trace_id(value: str) -> str:
    value = (value or "").strip()
    if not TRACE_ID.match(value):
        raise BadRequest("a trace id is 32 (or 16) hexadecimal digits")
    value = value.lower()
    return value.rjust(32, "0")


def trace_page(store: Any, trace_id: str, limit: int = TRACE_SPAN_LIMIT, sidecar: Any = None,
               indexed_id: int = 0) -> Dict[str, Any]:
    """A trace's waterfall; with the sidecar (and how far it has indexed the store), read from the trace's id
    range and the spans not indexed yet, else from a scan of the store."""
    trace_id = parse_trace_id(trace_id)
    ranges = trace_ranges(sidecar, trace_id, indexed_id) if sidecar is not None else None
    spans = store_mod.trace_spans(store, trace_id, limit + 1, ranges)
    if not spans:
        raise NotFound("no spans of trace %s in this store" % trace_id)
    truncated = len(spans) > limit
    spans = spans[:limit]
    return dict(layout(spans), trace_id=trace_id, truncated=truncated, limit=limit)


def layout(spans: List[Dict[str, Any]]) -> Dict[str, Any]:
    """Waterfall rows: depth-first (children by start), each with its depth, offset, self time (its duration
    less what its children cover) and whether it is on the critical path (the chain of spans that the
    trace's end waited on, as Jaeger draws it)."""
    by_id: Dict[str, int] = {}
    for i, s in enumerate(spans):
        by_id.setdefault(s["span_id"], i)
    children: Dict[int, List[int]] = {}
    roots: List[int] = []
    for i, s in enumerate(spans):
        p = by_id.get(s["parent_id"]) if s["parent_id"] else None
        if p is None or p == i:
            roots.append(i)
        else:
            children.setdefault(p, []).append(i)
    start = [s["start_ns"] for s in spans]
    end = [s["start_ns"] + max(0, s["duration_ns"]) for s in spans]
    for kids in children.values():
        kids.sort(key=lambda k: (start[k], k))
    roots.sort(key=lambda k: (start[k], k))
    t0 = min(start)
    t1 = max(end)
    order: List[Tuple[int, int]] = []
    seen = set()
    stack = [(r, 0) for r in reversed(roots)]
    while stack:
        i, depth = stack.pop()
        if i in seen:  # a cycle in bad data: each span once
            continue
        seen.add(i)
        order.append((i, depth))
        for k in reversed(children.get(i, [])):
            stack.append((k, depth + 1))
    for i in range(len(spans)):  # spans in a parent cycle, never reached from a root
        if i not in seen:
            order.append((i, 0))
            seen.add(i)
    # self time: duration less the union of the children's intervals within the span
    self_ns = []
    for i in range(len(spans)):
        covered = 0
        cursor = start[i]
        for k in sorted(children.get(i, []), key=lambda k: start[k]):
            a, b = max(start[k], cursor), min(end[k], end[i])
            if b > a:
                covered += b - a
                cursor = b
        self_ns.append(max(0, end[i] - start[i] - covered))
    # critical path: from the root that ends last, walk back from its end through the child that ends last
    # before the point reached, then the one before that child's start, and so on, recursively
    critical = set()
    if roots:
        work = [(max(roots, key=lambda r: end[r]), None)]
        while work:
            i, until = work.pop()
            if i in critical:  # a cycle in bad data
                continue
            critical.add(i)
            cursor = end[i] if until is None else min(until, end[i])
            for k in sorted(children.get(i, []), key=lambda k: end[k], reverse=True):
                if start[k] >= cursor:  # wholly after the point reached: not waited on
                    continue
                work.append((k, cursor))
                cursor = start[k]
                if cursor <= start[i]:
                    break
    services_seen: List[str] = []
    rows = []
    position = {}
    for row, (i, _depth) in enumerate(order):
        position[i] = row
    for i, depth in order:
        s = spans[i]
        if s["service"] not in services_seen:
            services_seen.append(s["service"])
        error = None
        if s["status"] == "error":
            attrs = s["attributes"] or {}
            error = {"type": attrs.get("error.type"), "message": attrs.get("exception.message"), "stack": None}
            for ev in s["events"] or []:
                if isinstance(ev, dict) and ev.get("name") == "exception":
                    ea = ev.get("attributes") or {}
                    error["type"] = error["type"] or ea.get("exception.type")
                    error["message"] = error["message"] or ea.get("exception.message")
                    error["stack"] = ea.get("exception.stacktrace")
                    break
        parent = by_id.get(s["parent_id"]) if s["parent_id"] else None
        rows.append({"span_id": s["span_id"], "parent_id": s["parent_id"],
                     "parent_row": position.get(parent) if parent is not None else None, "depth": depth,
                     "name": s["name"], "service": s["service"], "kind": s["kind"], "status": s["status"],
                     "offset_ms": round((start[i] - t0) / 1e6, 4), "duration_ms": round((end[i] - start[i]) / 1e6, 4),
                     "self_ms": round(self_ns[i] / 1e6, 4), "critical": i in critical,
                     "start_ns": start[i], "attributes": s["attributes"], "events": s["events"], "error": error})
    return {"spans": rows, "services": services_seen, "duration_ms": round((t1 - t0) / 1e6, 4), "start_ns": t0,
            "errors": sum(1 for r in rows if r["status"] == "error")}


# ------------------------------------------------------------------------------------ search

def search(store: Any, db: Any, indexed_id: int, tr: Optional[TimeRange], service: Optional[str] = None,
           op: Optional[str] = None, min_ms: Optional[float] = None, errors: bool = False,
           attr: Optional[str] = None, before: Optional[int] = None, limit: int = SEARCH_LIMIT,
           budget_s: float = SEARCH_BUDGET_S) -> Dict[str, Any]:
    """Spans matching every filter, newest first: a scan of the store's primary key, newest ids first, within
    the id range of the time range (from the rollups' per-minute id ranges), for at most budget_s; what was not
    reached is offered as `more_before` (a spans.id to go on from)."""
    where: List[str] = []
    args: List[Any] = []
    if service:
        where.append("service = ?")
        args.append(service)
    if op:
        where.append("name = ?")
        args.append(op)
    if min_ms is not None and min_ms > 0:
        where.append("duration_ns >= ?")
        args.append(int(min_ms * 1e6))
    if errors:
        where.append("status = 'error'")
    if attr:
        key, eq, value = attr.partition("=")
        if eq:
            key = key.strip()
            if not ATTR_KEY.match(key):
                raise BadRequest("an attribute name has letters, digits and . _ - : / @ only (at most 200)")
            needle = json.dumps(value, ensure_ascii=False)[1:-1]
            where.append("instr(attributes, ?) > 0 AND json_valid(attributes) AND "
                         "CAST(json_extract(attributes, ?) AS TEXT) = ?")
            args.extend([needle, '$."%s"' % key, value])
        else:
            where.append("instr(attributes, ?) > 0")
            args.append(json.dumps(attr, ensure_ascii=False)[1:-1])
    top = store_mod.last_span_id(store)
    lo_id, hi_id = 1, top
    if tr is not None:
        where.append("start_ns >= ? AND start_ns < ?")
        args.extend([tr.from_s * 10**9, tr.to_s * 10**9])
        row = db.execute("SELECT min(min_id), max(max_id) FROM id_ranges WHERE t >= ? AND t < ?",
                         (tr.from_s - 600, tr.to_s + 600)).fetchone()
        lo_id = row[0] if row[0] is not None else indexed_id + 1
        if row[1] is not None and row[1] < indexed_id:
            hi_id = row[1]
        lo_id = min(lo_id, indexed_id + 1)
    if before is not None:
        hi_id = min(hi_id, before - 1)
    results: List[Dict[str, Any]] = []
    deadline = time.monotonic() + budget_s
    hi = hi_id
    more_before = None
    while hi >= lo_id and len(results) < limit:
        lo = max(lo_id, hi - SEARCH_CHUNK + 1)
        for r in store_mod.search_spans(store, lo, hi, where, args, limit - len(results)):
            results.append({"id": r[0], "trace_id": r[1], "span_id": r[2], "parent_id": r[3], "name": r[4],
                            "kind": r[5], "service": r[6], "start_ms": r[7] // 10**6, "duration_ms": _ms(r[8]),
                            "status": r[9]})
        hi = lo - 1
        if len(results) >= limit:
            more_before = results[-1]["id"]
            break
        if hi >= lo_id and time.monotonic() >= deadline:
            more_before = hi + 1
            break
    return {"range": tr.as_dict() if tr else None, "results": results, "more_before": more_before,
            "scanned_to_id": hi + 1 if more_before else lo_id, "limit": limit}


def status(rollup_last_id: int, store_top: int, error: Optional[str]) -> Dict[str, Any]:
    return {"indexed": rollup_last_id, "stored": store_top, "behind": max(0, store_top - rollup_last_id),
            "error": error}


__all__ = ["BadRequest", "NotFound", "TimeRange", "time_range", "overview", "service_page", "endpoint_page",
           "queries_page", "map_page", "trace_page", "search", "layout", "parse_trace_id", "ENTRY_KINDS"]
