"""The web UI on a big store: builds a store of 1,000,000 spans (a realistic mix of services, routes, SQL
statements, calls between services, errors, spread over the last 6 hours), then times the UI's catch-up
(its sidecar rollups, built once from the store) and each page, first load and warm, through the WSGI app.
Writes benchmarks/results/ui.md.

    python benchmarks/ui_bench.py [--spans 1000000] [--store PATH] [--keep]
"""

from __future__ import annotations

import argparse
import io
import os
import platform
import random
import sys
import tempfile
import time
import urllib.parse

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(HERE))

from autoinstr.store import Store  # noqa: E402

SERVICES = {
    "web": ["GET /", "GET /products/<int:id>", "GET /cart", "POST /checkout", "GET /orders", "GET /search",
            "GET /account", "POST /login"],
    "api": ["GET /v1/items/{id}", "GET /v1/items", "POST /v1/orders", "GET /v1/users/{id}", "GET /v1/recommend"],
    "inventory": ["GET /stock/<sku:int>", "POST /reserve/<sku:int>", "GET /warehouses"],
    "payments": ["POST /charge", "POST /refund"],
    "auth": ["POST /token", "GET /userinfo"],
}
CALLS = {"web": ["api", "auth"], "api": ["inventory", "payments"], "inventory": [], "payments": [], "auth": []}
TABLES = ["products", "orders", "customers", "stock", "sessions", "payments", "carts", "users", "reviews", "prices"]


def statements(rng: random.Random) -> list:
    out = []
    for table in TABLES:
        out += ["SELECT id, name, price FROM %s WHERE id = ?" % table,
                "SELECT * FROM %s WHERE owner_id = ? ORDER BY created DESC LIMIT ?" % table,
                "UPDATE %s SET updated = ? WHERE id = ?" % table,
                "INSERT INTO %s (a, b, c) VALUES (?)" % table,
                "SELECT count(*) FROM %s WHERE status IN (?)" % table]
    rng.shuffle(out)
    return out


class Gen:
    def __init__(self, seed: int, end_ns: int, hours: float, traces: int) -> None:
        self.rng = random.Random(seed)
        self.end_ns = end_ns
        self.span_ns = int(hours * 3600e9)
        self.cursor = end_ns - self.span_ns
        self.gap = self.span_ns // max(1, traces)  # traces start in time order, as they are written
        self.sql = statements(self.rng)
        self.sql_by_service = {s: self.sql[i * 9:(i + 1) * 9] for i, s in enumerate(SERVICES)}

    def ids(self) -> str:
        return "%016x" % self.rng.getrandbits(64)

    def trace(self) -> list:
        rng = self.rng
        trace_id = "%032x" % rng.getrandbits(128)
        self.cursor += self.gap
        start = self.cursor - rng.randrange(2 * 10**9)  # requests overlap: written a little out of order
        spans: list = []
        self._server(spans, trace_id, None, rng.choice(["web", "web", "web", "api"]), start, 0)
        return spans

    def _server(self, spans: list, trace_id: str, parent: str, service: str, start: int, depth: int) -> int:
        rng = self.rng
        route = rng.choice(SERVICES[service])
        span_id = self.ids()
        t = start + rng.randrange(50_000, 200_000)
        handler_id = self.ids()
        error = rng.random() < 0.02
        children = []
        for _ in range(rng.choice([1, 2, 3, 3, 4, 6, 12]) if "orders" not in route else 25):
            d = int(rng.lognormvariate(12.5, 0.8))  # ~270 us median
            statement = rng.choice(self.sql_by_service[service])
            children.append(self._span(trace_id, handler_id, statement.split(" ")[0] + " " + route.split("/")[-1],
                                       "client", service, t, d, "ok",
                                       {"db.system": "postgresql", "db.namespace": "main",
                                        "db.query.text": statement, "db.operation.name": statement.split(" ")[0]}))
            t += d + rng.randrange(10_000, 60_000)
        if depth < 2 and CALLS[service] and rng.random() < 0.6:
            callee = rng.choice(CALLS[service])
            client_id = self.ids()
            t0 = t
            t_end = self._server(spans, trace_id, client_id, callee, t0 + 300_000, depth + 1)
            d = t_end - t0 + 200_000
            children.append(self._span(trace_id, handler_id, "POST %s" % callee, "client", service, t0, d,
                                       "ok", {"http.request.method": "POST", "server.address": callee + ".internal",
                                              "server.port": 8080, "url.full": "http://%s.internal:8080/x" % callee,
                                              "http.response.status_code": 200}, client_id))
            t += d
        if rng.random() < 0.1:
            d = int(rng.lognormvariate(14, 1.0))
            children.append(self._span(trace_id, handler_id, "render", "internal", service, t, d, "ok",
                                       {"template": "page.html"}))
            t += d
        end = t + rng.randrange(20_000, 100_000)
        attrs = {"http.request.method": route.split(" ")[0], "http.route": route.split(" ")[1],
                 "url.path": route.split(" ")[1].replace("<int:id>", str(rng.randrange(100))),
                 "http.response.status_code": 500 if error else 200, "server.address": "127.0.0.1"}
        events = []
        if error:
            attrs.update({"error.type": "RuntimeError", "exception.message": "boom"})
            events = [{"name": "exception", "time_ns": end, "attributes": {
                "exception.type": "RuntimeError", "exception.message": "boom",
                "exception.stacktrace": "Traceback (most recent call last):\n  File \"app.py\", line 1\n"
                                        "RuntimeError: boom\n"}}]
        handler = self._span(trace_id, span_id, route.split(" ")[1].strip("/") or "index", "internal", service,
                             start + 40_000, end - start - 80_000, "error" if error else "ok", {}, handler_id)
        root = self._span(trace_id, parent, route, "server", service, start, end - start,
                          "error" if error else "ok", attrs, span_id, events)
        spans.extend(children)
        spans.append(handler)
        spans.append(root)
        return end

    def _span(self, trace_id, parent, name, kind, service, start, duration, status, attrs, span_id=None,
              events=None) -> dict:
        return {"trace_id": trace_id, "span_id": span_id or self.ids(), "parent_id": parent, "name": name,
                "kind": kind, "service": service, "start_ns": start, "duration_ns": max(1000, duration),
                "status": status, "attributes": attrs, "events": events or []}


def build_store(path: str, spans: int, seed: int = 7, hours: float = 6.0, end_ns: int = 0) -> int:
    store = Store(path)
    gen = Gen(seed, end_ns or time.time_ns(), hours, spans // 16)
    written = 0
    batch: list = []
    while written + len(batch) < spans:
        batch.extend(gen.trace())
        if len(batch) >= 5000:
            written += store.insert(batch)
            batch = []
    if batch:
        written += store.insert(batch[: spans - written])
    store.close()
    return written


def add_big_trace(path: str, spans: int = 5000) -> str:
    """One trace of `spans` spans (a batch job walking a tree of steps, with SQL), newest in the store."""
    store = Store(path)
    row = store.db.execute("SELECT trace_id FROM spans WHERE name = 'POST /reports/rebuild' LIMIT 1").fetchone()
    if row:
        store.close()
        return row[0]
    rng = random.Random(11)
    trace_id = "%032x" % rng.getrandbits(128)
    start = time.time_ns() - 60 * 10**9
    root = "%016x" % rng.getrandbits(64)
    rows = [{"trace_id": trace_id, "span_id": root, "parent_id": None, "name": "POST /reports/rebuild",
             "kind": "server", "service": "api", "start_ns": start, "duration_ns": spans * 200_000,
             "status": "ok", "attributes": {"http.route": "/reports/rebuild"}, "events": []}]
    parent = root
    for i in range(spans - 1):
        span_id = "%016x" % rng.getrandbits(64)
        step = i % 20 == 0
        rows.append({"trace_id": trace_id, "span_id": span_id, "parent_id": root if step else parent,
                     "name": "step %d" % (i // 20) if step else "SELECT reports", "kind": "internal" if step
                     else "client", "service": "api", "start_ns": start + i * 200_000, "duration_ns": 150_000,
                     "status": "ok", "attributes": {} if step else {
                         "db.system": "postgresql", "db.query.text": "SELECT * FROM reports WHERE id = ?"},
                     "events": []})
        if step:
            parent = span_id
    store.insert(rows)
    store.close()
    return trace_id


def call(app, path: str):
    environ = {"REQUEST_METHOD": "GET", "PATH_INFO": urllib.parse.unquote(path.split("?")[0]),
               "QUERY_STRING": path.split("?", 1)[1] if "?" in path else "", "wsgi.input": io.BytesIO(b""),
               "SERVER_NAME": "bench", "SERVER_PORT": "80", "wsgi.url_scheme": "http",
               "HTTP_ACCEPT": "text/html"}
    seen = {}

    def start_response(status, headers, exc_info=None):
        seen["status"] = status

    body = b"".join(app(environ, start_response))
    assert seen["status"].startswith(("200", "302")), (path, seen["status"], body[:500])
    return body


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--spans", type=int, default=1_000_000)
    parser.add_argument("--store", default="")
    parser.add_argument("--keep", action="store_true", help="keep the store (and its sidecar) afterwards")
    parser.add_argument("--out", default=os.path.join(HERE, "results", "ui.md"))
    args = parser.parse_args()
    from autoinstr.ui.app import UIApp

    folder = tempfile.mkdtemp(prefix="autoinstr-ui-bench-")
    path = args.store or os.path.join(folder, "spans.db")
    lines = []
    if not os.path.exists(path):
        t = time.perf_counter()
        n = build_store(path, args.spans)
        lines.append("built a store of %d spans in %.1f s (%.1f MB)" % (n, time.perf_counter() - t,
                                                                        os.path.getsize(path) / 1e6))
        print(lines[-1], flush=True)
    big_trace = add_big_trace(path)
    for suffix in (".ui", ".ui-wal", ".ui-shm"):
        if os.path.exists(path + suffix):
            os.remove(path + suffix)
    app = UIApp(path, start_indexer=False)
    t = time.perf_counter()
    indexed = app.rollup.catch_up()
    catch_up_s = time.perf_counter() - t
    lines.append("catch-up (rollups built from scratch): %d spans in %.1f s (%.0f spans/s); sidecar %.1f MB"
                 % (indexed, catch_up_s, indexed / max(catch_up_s, 1e-9), os.path.getsize(app.rollup.path) / 1e6))
    print(lines[-1], flush=True)
    from autoinstr import store as store_mod

    st = Store(path, create=False, readonly=True)
    row = st.db.execute("SELECT trace_id FROM spans WHERE name = 'GET /orders' ORDER BY id DESC LIMIT 1").fetchone()
    trace = row[0]
    big = st.db.execute("SELECT trace_id, count(*) c FROM spans WHERE id > ? AND trace_id != ? GROUP BY trace_key "
                        "ORDER BY c DESC LIMIT 1", (store_mod.last_span_id(st) - 20000, big_trace)).fetchone()
    st.close()
    pages = [
        ("services, last 6 h", "/?range=6h"),
        ("services, last 24 h", "/?range=24h"),
        ("service web", "/service?service=web&range=6h"),
        ("service web, sorted by p95", "/service?service=web&range=6h&sort=p95_ms"),
        ("endpoint web GET /orders", "/endpoint?service=web&op=GET+%2Forders&range=6h"),
        ("endpoint api POST /v1/orders, 1 h", "/endpoint?service=api&op=POST+%2Fv1%2Forders&range=1h"),
        ("trace of 5,000 spans", "/trace/" + big_trace),
        ("trace (%d spans)" % big[1], "/trace/" + big[0]),
        ("trace of GET /orders", "/trace/" + trace),
        ("search: service + operation", "/search?service=api&op=GET+%2Fv1%2Fitems&range=6h"),
        ("search: errors, min 5 ms", "/search?errors=1&min_ms=5&range=6h"),
        ("search: attribute value", "/search?attr=http.route%3D%2Fcharge&range=6h"),
        ("search: attribute, no match (full scan)", "/search?attr=no-such-value&range=6h"),
        ("search: trace id (a redirect)", "/search?trace=" + trace),
        ("slow queries", "/queries?range=6h"),
        ("slow queries, 24 h", "/queries?range=24h"),
        ("service map", "/map?range=6h"),
        ("api: endpoint JSON", "/api/endpoint?service=web&op=GET+%2Forders&range=6h"),
    ]
    results = []
    for label, url in pages:
        t = time.perf_counter()
        body = call(app, url)
        first = time.perf_counter() - t
        warm = []
        for _ in range(3):
            t = time.perf_counter()
            call(app, url)
            warm.append(time.perf_counter() - t)
        results.append((label, url, first, min(warm), len(body)))
        print("%-40s first %7.1f ms  warm %7.1f ms  %8d bytes" % (label, first * 1e3, min(warm) * 1e3, len(body)),
              flush=True)
    app.close()
    worst = max(r[2] for r in results)
    with open(args.out, "w") as f:
        f.write("# Web UI on a store of 1,000,000 spans\n\n")
        f.write("The store: 5 services (web, api, inventory, payments, auth), 20 routes, 50 SQL statements, calls "
                "between services, 2% errors, spread over the last ~4 hours in write order, plus one trace of "
                "5,000 spans.\n\n")
        f.write("`python benchmarks/ui_bench.py` on %s, Python %s, SQLite %s, %d CPUs. Pages are called through the "
                "WSGI app (no network), timed from request to the last byte; first = first load after the "
                "catch-up, warm = best of 3 more.\n\n" % (platform.platform(), platform.python_version(),
                                                          __import__("sqlite3").sqlite_version, os.cpu_count()))
        for line in lines:
            f.write("- %s\n" % line)
        f.write("\n| page | URL | first load ms | warm ms | bytes |\n|---|---|---:|---:|---:|\n")
        for label, url, first, warm, size in results:
            shown = url if len(url) < 70 else url[:67] + "..."
            f.write("| %s | `%s` | %.1f | %.1f | %d |\n" % (label, shown, first * 1e3, warm * 1e3, size))
        f.write("\nSlowest first load: %.1f ms (bound: 1000 ms).\n" % (worst * 1e3))
    print("wrote", args.out)
    if not args.keep and not args.store:
        import shutil

        shutil.rmtree(folder, ignore_errors=True)
    return 0 if worst < 1.0 else 1


if __name__ == "__main__":
    sys.exit(main())
