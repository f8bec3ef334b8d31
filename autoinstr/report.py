"""`autoinstr report`: latency per service and operation, and the slowest traces as terminal waterfalls."""

from __future__ import annotations

import sys
import time

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any, Dict, List, Sequence, TextIO, Tuple


MAX_WATERFALL_LINES = 200


def percentile(sorted_values: Sequence[float], q: float) -> float:
    """Nearest-rank percentile of an ascending sequence (q in 0..100)."""
    if not sorted_values:
        return 0.0
    rank = max(1, int(-(-q * len(sorted_values) // 100)))  # ceil(q/100 * n)
    return sorted_values[min(rank, len(sorted_values)) - 1]


def operation_table(rows: List[Sequence[Any]]) -> List[Dict[str, Any]]:
    """rows of (service, name, kind, duration_ns, status) -> one summary per (service, name, kind)."""
    groups: Dict[Tuple[str, str, str], List[Tuple[int, bool]]] = {}
    for service, name, kind, duration, status in rows:
        groups.setdefault((service, name, kind), []).append((duration, status == "error"))
    table = []
    for (service, name, kind), items in groups.items():
        durations = sorted(d for d, _ in items)
        errors = sum(1 for _, e in items if e)
        table.append({"service": service, "name": name, "kind": kind, "count": len(items),
                      "error_rate": errors / len(items), "total_ms": sum(durations) / 1e6,
                      "p50_ms": percentile(durations, 50) / 1e6, "p95_ms": percentile(durations, 95) / 1e6,
                      "p99_ms": percentile(durations, 99) / 1e6})
    table.sort(key=lambda r: (r["service"], -r["total_ms"]))
    return table


def statement_table(rows: List[Sequence[Any]], limit: int = 10) -> List[Dict[str, Any]]:
    """rows of (service, db.system, statement, duration_ns, trace_id) -> the normalized statements that
    take most time: count, total, mean, p95, calls per trace (an N+1 pattern shows as many calls per
    trace), and the trace of its slowest run as an example."""
    groups: Dict[Tuple[str, str, str], List[Tuple[int, str]]] = {}
    for service, system, statement, duration, trace_id in rows:
        groups.setdefault((service, system or "", statement), []).append((duration, trace_id))
    table = []
    for (service, system, statement), items in groups.items():
        durations = sorted(d for d, _ in items)
        total = sum(durations)
        table.append({"service": service, "db.system": system, "statement": statement, "count": len(items),
                      "total_ms": total / 1e6, "mean_ms": total / len(items) / 1e6,
                      "p95_ms": percentile(durations, 95) / 1e6,
                      "per_trace": len(items) / len({t for _, t in items}),
                      "example_trace": max(items)[1]})
    table.sort(key=lambda r: -r["total_ms"])
    return table[:limit]


def waterfall(spans: List[Dict[str, Any]], width: int = 40) -> List[str]:
    """One line per span: offset, a bar on the trace's time axis, duration, name; children indented."""
    if not spans:
        return []
    ids = {s["span_id"] for s in spans}
    children: Dict[Any, List[Dict[str, Any]]] = {}
    for s in spans:
        parent = s["parent_id"] if s["parent_id"] in ids else None
        children.setdefault(parent, []).append(s)
    for kids in children.values():
        kids.sort(key=lambda s: s["start_ns"])
    t0 = min(s["start_ns"] for s in spans)
    t1 = max(s["start_ns"] + s["duration_ns"] for s in spans)
    total = max(t1 - t0, 1)
    lines: List[str] = []
    services = {s["service"] for s in spans}

    def walk(span: Dict[str, Any], depth: int) -> None:
        begin = int((span["start_ns"] - t0) * width / total)
        length = max(1, int(round(span["duration_ns"] * width / total)))
        bar = " " * begin + "#" * min(length, width - begin) if begin < width else " " * (width - 1) + "#"
        mark = " !" if span["status"] == "error" else ""
        where = " [%s]" % span["service"] if len(services) > 1 else ""
        lines.append("%9.2f ms |%-*s| %9.2f ms %s%s%s%s" % (
            (span["start_ns"] - t0) / 1e6, width, bar[:width], span["duration_ns"] / 1e6, "  " * depth,
            _one_line(span["name"]), where, mark))
        for kid in children.get(span["span_id"], []):
            if len(lines) >= MAX_WATERFALL_LINES:
                return
            walk(kid, depth + 1)

    for root in children.get(None, []):
        if len(lines) >= MAX_WATERFALL_LINES:
            break
        walk(root, 0)
    if len(lines) >= MAX_WATERFALL_LINES and len(spans) > len(lines):
        lines.append("... (%d spans in all, %d shown)" % (len(spans), len(lines)))
    return lines


def _one_line(text: Any, limit: int = 80) -> str:
    text = " ".join(str(text).split())
    text = "".join(ch if ch.isprintable() else "?" for ch in text)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def print_report(store_path: str, traces: int = 3, since_minutes: float = 0, width: int = 40,
                 out: TextIO = sys.stdout) -> int:
    from autoinstr.store import Store

    store = Store(store_path, create=False, readonly=True)
    since_ns = time.time_ns() - int(since_minutes * 60e9) if since_minutes else None
    table = operation_table(store.operations(since_ns))
    out.write("autoinstr report: %s (%d spans)\n\n" % (store.path, sum(r["count"] for r in table)))
    if not table:
        out.write("no spans stored yet\n")
        return 0
    header = "%-16s %-40s %-8s %7s %7s %10s %10s %10s %11s" % (
        "service", "operation", "kind", "count", "errors", "p50 ms", "p95 ms", "p99 ms", "total ms")
    out.write(header + "\n" + "-" * len(header) + "\n")
    for r in table:
        out.write("%-16s %-40s %-8s %7d %6.1f%% %10.2f %10.2f %10.2f %11.1f\n" % (
            _one_line(r["service"], 16), _one_line(r["name"], 40), r["kind"], r["count"], 100 * r["error_rate"],
            r["p50_ms"], r["p95_ms"], r["p99_ms"], r["total_ms"]))
    statements = statement_table(store.statements(since_ns))
    if statements:
        out.write("\nslowest statements (by total time; calls/trace shows N+1 patterns):\n")
        header = "%-16s %7s %10s %9s %9s %11s  %-32s %s" % (
            "service", "count", "total ms", "mean ms", "p95 ms", "calls/trace", "example trace", "statement")
        out.write(header + "\n" + "-" * len(header) + "\n")
        for r in statements:
            out.write("%-16s %7d %10.1f %9.2f %9.2f %11.1f  %-32s %s\n" % (
                _one_line(r["service"], 16), r["count"], r["total_ms"], r["mean_ms"], r["p95_ms"], r["per_trace"],
                r["example_trace"], _one_line(r["statement"], 100)))
    roots = store.slowest_roots(traces, since_ns)
    if roots:
        out.write("\nslowest traces:\n")
    for root in roots:
        spans = list(store.spans(trace_id=root["trace_id"], limit=5000))
        out.write("\ntrace %s  %.2f ms  %s  %s\n" % (root["trace_id"], root["duration_ns"] / 1e6,
                                                   _one_line(root["service"], 30), _one_line(root["name"])))
        for line in waterfall(spans, width):
            out.write("  " + line + "\n")
    out.flush()
    return 0
