"""The web UI in a real headless Chromium (Debian's, driven by Playwright for Python), against a store filled
by the example (the Flask shop calling the Bottle inventory service, each under autoinstr-run) plus a script
whose custom spans carry XSS payloads in their names, attributes, SQL and service name; then the UI that
`autoinstr collector` serves at its root, fed by an agent; then a trace of several thousand spans.

Every page loads without console errors and shows what the store holds; an endpoint leads to its slowest
trace, whose waterfall has one row per stored span; search filters work; after every page load the payloads
have not run and are no elements (no <img>, <i> or inline <script> from them): they show as text.

Screenshots go to artifacts/screenshots/ at the repository's root (AUTOINSTR_ARTIFACTS_DIR/screenshots when
that is set, or AUTOINSTR_SCREENSHOTS): CI keeps that folder. The README's images in docs/screenshots/ are
refreshed from it, when wanted, by

    python integration/test_ui_browser.py --update-readme-images

Skipped when Chromium or Playwright is missing, unless AUTOINSTR_REQUIRE_BROWSER=1 (test.sh sets it once
Debian's chromium is in): then they fail.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import socket
import sqlite3
import subprocess
import sys
import time
import urllib.parse
from typing import Iterator

import pytest
from fleet import free_port

CHROMIUM = os.environ.get("AUTOINSTR_CHROMIUM", "/usr/bin/chromium")
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
ARTIFACTS = os.environ.get("AUTOINSTR_ARTIFACTS_DIR") or os.path.join(ROOT, "artifacts")
SHOTS = os.environ.get("AUTOINSTR_SCREENSHOTS") or os.path.join(ARTIFACTS, "screenshots")
README_SHOTS = os.path.join(ROOT, "docs", "screenshots")
README_IMAGES = ("services", "service", "endpoint", "trace", "search", "queries", "map")
XSS_NAME = "<script>window.__xss=1</script>"
XSS_ATTR = '<img src=x onerror="window.__xss=2">'
XSS_SERVICE = "xss<i>svc</i>"
XSS_SQL = 'SELECT * FROM "<img src=x onerror=window.__xss=3>"'  # a quoted name: obfuscation keeps it
# after every page load: no payload ran, and none became an element (the UI itself has no <img> nor <i>, and
# no inline script but its JSON block)
XSS_PROBE = """() => ({
    ran: window.__xss === undefined ? null : window.__xss,
    elements: document.querySelectorAll('img, i, script:not([src]):not([type="application/json"])').length,
})"""


def _missing() -> str:
    if not os.path.exists(CHROMIUM):
        return "no Chromium at %s (Debian package chromium)" % CHROMIUM
    try:
        import playwright.sync_api  # noqa: F401
    except ImportError:
        return "Playwright for Python is not installed"
    return ""


@pytest.fixture(scope="module")
def browser():
    reason = _missing()
    if reason:
        if os.environ.get("AUTOINSTR_REQUIRE_BROWSER") == "1":
            pytest.fail("AUTOINSTR_REQUIRE_BROWSER=1, but " + reason, pytrace=False)
        pytest.skip(reason)
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, args=[
            "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking",
            "--disable-component-update", "--disable-sync"])
        try:
            yield b
        finally:
            b.close()


@contextlib.contextmanager
def serving(sb, argv: list) -> Iterator[str]:
    """A server process (`autoinstr ui` or `autoinstr collector` on a free port): yields its base URL once it
    answers; terminated (then killed) at the end. Its output goes to a log file in the sandbox."""
    port = free_port()
    log_path = os.path.join(sb.dir, "server-%d.log" % port)
    with open(log_path, "wb") as log:
        server = subprocess.Popen(argv + ["--host", "127.0.0.1", "--port", str(port)], env=sb.env(),
                                  stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT, cwd=sb.dir)
    try:
        deadline = time.monotonic() + 30
        while True:
            assert server.poll() is None, _read(log_path)
            try:
                socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
                break
            except OSError:
                assert time.monotonic() < deadline, "%s did not listen: %s" % (argv, _read(log_path))
                time.sleep(0.1)
        yield "http://127.0.0.1:%d" % port
    finally:
        server.terminate()
        try:
            server.wait(10)
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait()


def _read(path: str) -> str:
    with open(path, "rb") as f:
        return f.read().decode("utf-8", "replace")


@pytest.fixture(scope="module")
def ui(sandbox_factory, browser):
    """The example run under the agent into a store, an XSS script, then `autoinstr ui` over that store."""
    sb = sandbox_factory("ui")
    data = os.path.join(sb.dir, "demo")
    env = sb.env(AUTOINSTR_FLUSH_INTERVAL="0.2")
    proc = subprocess.run([sb.PYTHON, os.path.join(ROOT, "examples", "run_demo.py"), "150", data, "25"], env=env,
                          capture_output=True, text=True, timeout=180, cwd=sb.dir)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    sb.write("xss.py", """
        import autoinstr
        with autoinstr.span(%r, kind="server", **{"evil": %r, "http.route": %r}):
            with autoinstr.span("child of " + %r, note=%r):
                with autoinstr.span("SELECT evil", kind="client", **{"db.system": "sqlite",
                                                                     "db.query.text": %r}):
                    pass
    """ % (XSS_NAME, XSS_ATTR, XSS_NAME, XSS_NAME, XSS_ATTR, XSS_SQL))
    sb.ok(["python", "xss.py"], service=XSS_SERVICE)
    os.makedirs(SHOTS, exist_ok=True)
    with serving(sb, [sb.CLI, "ui", "--store", sb.store]) as url:
        db = sqlite3.connect(sb.store)
        try:
            yield {"url": url, "store": sb.store, "db": db}
        finally:
            db.close()


class Tab:
    """A page with its console errors collected."""

    def __init__(self, browser, base: str) -> None:
        self.page = browser.new_page(viewport={"width": 1400, "height": 900})
        self.base = base
        self.errors: list = []
        self.pages_checked = 0
        self.page.on("console", lambda m: self.errors.append(m.text) if m.type == "error" else None)
        self.page.on("pageerror", lambda e: self.errors.append(str(e)))

    def open(self, path: str):
        response = self.page.goto(self.base + path)
        self.ready()
        return response

    def ready(self) -> None:
        self.page.wait_for_selector("body[data-ready='1']", timeout=15000)
        self.pages_checked += 1
        assert self.page.evaluate(XSS_PROBE) == {"ran": None, "elements": 0}, self.page.url

    def shot(self, name: str) -> None:
        self.page.screenshot(path=os.path.join(SHOTS, name + ".png"), full_page=True)

    def cells(self, table: str, column: int) -> list:
        return self.page.eval_on_selector_all(
            "#%s tbody tr" % table, "(rows, c) => rows.map(r => r.cells[c].innerText.trim())", column)

    def close(self) -> None:
        assert not self.errors, self.errors
        self.page.close()


@pytest.fixture
def tab(browser, ui):
    t = Tab(browser, ui["url"])
    yield t
    t.close()


def one(db, sql, *args):
    return db.execute(sql, args).fetchone()[0]


def test_services_page(tab, ui):
    tab.open("/?range=15m")
    shop = one(ui["db"], "SELECT count(*) FROM spans WHERE service = 'shop' AND kind = 'server'")
    inventory = one(ui["db"], "SELECT count(*) FROM spans WHERE service = 'inventory' AND kind = 'server'")
    names = tab.cells("services-table", 0)
    counts = dict(zip(names, tab.cells("services-table", 1)))
    assert shop == 150 and counts["shop"] == "150" and counts["inventory"] == str(inventory)
    assert XSS_SERVICE in names  # the service name is text
    assert tab.page.locator("canvas").count() >= 5
    # rate, errors and p50/p95/p99 over time, one line per service; at every point p50 <= p95 <= p99
    lines = tab.page.evaluate("""() => {
        const out = {};
        for (const node of document.querySelectorAll('[data-chart^="services-"]')) {
            const option = echarts.getInstanceByDom(node).getOption();
            out[node.dataset.chart] = Object.fromEntries(option.series.map(s => [s.name, s.data.map(p => p[1])]));
        }
        const t = JSON.parse(document.getElementById('page-data').textContent).t;
        out.step = (t[1] - t[0]) / 1000;
        return out; }""")
    step = lines.pop("step")
    assert set(lines) == {"services-rate", "services-errors", "services-p50", "services-p95", "services-p99"}
    for service in ("shop", "inventory"):
        p50, p95, p99 = (lines["services-p%d" % p][service] for p in (50, 95, 99))
        points = [i for i, v in enumerate(p50) if v is not None]
        assert len(points) >= 2  # the requests were spread over 25 s: several points (10 s apart)
        for i in points:
            assert 0 < p50[i] <= p95[i] <= p99[i] < 10000, (service, i, p50[i], p95[i], p99[i])
        served = sum(r * step for r in lines["services-rate"][service] if r)  # req/s per point
        assert round(served) == (150 if service == "shop" else inventory)
    tab.shot("services")


def test_service_page_sorts_endpoints(tab, ui):
    tab.open("/service?service=shop&range=1h")
    routes = dict(ui["db"].execute("SELECT name, count(*) FROM spans WHERE service = 'shop' AND kind = 'server' "
                                   "GROUP BY name").fetchall())
    names = tab.cells("endpoints-table", 0)
    assert set(names) == set(routes)
    assert dict(zip(names, tab.cells("endpoints-table", 1))) == {k: str(v) for k, v in routes.items()}
    tab.page.click("#endpoints-table thead a:text('p95')")
    tab.ready()
    assert "sort=p95_ms" in tab.page.url
    p95 = [_ms(v) for v in tab.cells("endpoints-table", 5)]
    assert p95 == sorted(p95, reverse=True)
    tab.open("/service?service=shop&range=15m")
    tab.shot("service")


def _ms(text: str) -> float:
    value, unit = text.split()
    return float(value) * (1000 if unit == "s" else 1)


def test_endpoint_leads_to_its_slowest_trace(tab, ui):
    tab.open("/endpoint?" + urllib.parse.urlencode({"service": "shop", "op": "GET /orders", "range": "15m"}))
    statements = tab.cells("sql-table", 0)
    assert "SELECT email FROM customers WHERE id = ?" in statements
    row = statements.index("SELECT email FROM customers WHERE id = ?")
    assert tab.cells("sql-table", 2)[row] == "30.0"  # the N+1 pattern: 30 calls per request
    assert tab.page.locator("#chart-hist canvas").count() == 1
    tab.shot("endpoint")
    tab.page.click("#slowest-table tbody tr:first-child a.trace")
    tab.ready()
    trace_id = tab.page.url.split("/trace/")[1].split("?")[0]
    stored = one(ui["db"], "SELECT count(*) FROM spans WHERE trace_id = ?", trace_id)
    slowest = one(ui["db"], "SELECT trace_id FROM spans WHERE service = 'shop' AND name = 'GET /orders' "
                            "ORDER BY duration_ns DESC LIMIT 1")
    assert trace_id == slowest and stored > 30
    assert tab.page.get_attribute("#waterfall", "data-rows") == str(stored)
    drawn = tab.page.evaluate(
        "echarts.getInstanceByDom(document.getElementById('waterfall')).getOption().series[0].data.length")
    assert drawn == stored


def test_trace_waterfall_and_span_panel(tab, ui):
    trace_id = one(ui["db"], "SELECT trace_id FROM spans WHERE name = 'payment.charge' AND status = 'error' LIMIT 1")
    tab.open("/trace/" + trace_id)
    stored = one(ui["db"], "SELECT count(*) FROM spans WHERE trace_id = ?", trace_id)
    assert tab.page.get_attribute("#waterfall", "data-rows") == str(stored)
    panel = tab.page.inner_text("#span-panel")
    assert "RuntimeError: payment provider timed out" in panel and "Traceback" in panel
    # click the row of the inventory's UPDATE: the panel shows its SQL, obfuscated
    row = tab.page.evaluate("""() => {
        const data = JSON.parse(document.getElementById('page-data').textContent);
        return data.spans.findIndex(s => s.name === 'UPDATE stock'); }""")
    assert row > 0
    x, y = tab.page.evaluate("""(row) => {
        const chart = echarts.getInstanceByDom(document.getElementById('waterfall'));
        const s = JSON.parse(document.getElementById('page-data').textContent).spans[row];
        return chart.convertToPixel({seriesIndex: 0}, [s.offset_ms + s.duration_ms / 2, row]); }""", row)
    box = tab.page.locator("#waterfall").bounding_box()
    tab.page.mouse.click(box["x"] + x, box["y"] + y)
    tab.page.wait_for_function("document.querySelector('#span-panel h2').textContent === 'UPDATE stock'")
    assert "UPDATE stock SET quantity = quantity - ? WHERE sku = ? AND quantity > ?" in tab.page.inner_text(
        "#span-panel pre.sql")
    tab.page.click(".modes button[data-mode='self']")
    assert "self" in tab.page.get_attribute(".modes button.active", "data-mode")
    tab.page.click(".modes button[data-mode='critical']")
    tab.page.mouse.move(0, 0)  # no tooltip in the picture
    tab.page.evaluate("echarts.getInstanceByDom(document.getElementById('waterfall'))"
                      ".dispatchAction({type: 'hideTip'})")
    tab.page.wait_for_timeout(500)
    tab.shot("trace")


def test_search_filters(tab, ui):
    tab.open("/search")
    tab.page.select_option("select[name=service]", "inventory")
    tab.page.click("#search-form button[type=submit]")
    tab.ready()
    services = tab.cells("results-table", 2)
    assert services and set(services) == {"inventory"}
    tab.open("/search?errors=1")
    errors = one(ui["db"], "SELECT count(*) FROM spans WHERE status = 'error'")
    assert set(tab.cells("results-table", 6)) == {"error"} and len(tab.cells("results-table", 6)) == min(errors, 100)
    tab.open("/search?service=shop&min_ms=10")
    durations = [_ms(v) for v in tab.cells("results-table", 5)]
    assert durations and min(durations) >= 10
    tab.open("/search?" + urllib.parse.urlencode({"attr": "http.route=/cart"}))
    carts = one(ui["db"], "SELECT count(*) FROM spans WHERE name = 'GET /cart'")
    assert set(tab.cells("results-table", 3)) == {"GET /cart"} and len(tab.cells("results-table", 3)) == min(carts, 100)
    trace_id = one(ui["db"], "SELECT trace_id FROM spans LIMIT 1")
    tab.open("/search")
    tab.page.fill("input[name=trace]", trace_id)
    tab.page.click("#search-form button[type=submit]")
    tab.ready()
    assert tab.page.url.endswith("/trace/" + trace_id)
    tab.open("/search?service=shop&op=GET+%2Forders&range=1h")
    tab.shot("search")


def test_slow_queries(tab, ui):
    tab.open("/queries?range=1h")
    statements = tab.cells("queries-table", 0)
    row = statements.index("SELECT email FROM customers WHERE id = ?")
    orders = one(ui["db"], "SELECT count(*) FROM spans WHERE name = 'GET /orders'")
    assert tab.cells("queries-table", 3)[row] == f"{30 * orders:,}"
    totals = [_ms(v) for v in tab.cells("queries-table", 4)]
    assert totals == sorted(totals, reverse=True)  # by total time, where the time goes
    slowest = one(ui["db"], "SELECT json_extract(attributes, '$.\"db.query.text\"') AS q FROM spans WHERE "
                            "kind = 'client' AND q IS NOT NULL GROUP BY q ORDER BY sum(duration_ns) DESC LIMIT 1")
    assert statements[0] == slowest
    tab.shot("queries")
    # the N+1 statement's example trace is an /orders request, with its 30 lookups; which statement ranks
    # first by total time depends on this machine's timings, so the link is taken from the N+1 row itself
    tab.page.click(f"#queries-table tbody tr:nth-child({row + 1}) a.trace")
    tab.ready()
    assert int(tab.page.get_attribute("#waterfall", "data-rows")) > 30


def test_service_map(tab, ui):
    tab.open("/map?range=1h")
    pairs = list(zip(tab.cells("edges-table", 0), tab.cells("edges-table", 1), tab.cells("edges-table", 2)))
    calls = one(ui["db"], "SELECT count(*) FROM spans WHERE service = 'inventory' AND kind = 'server'")
    assert ("shop", "inventory service", str(calls)) in pairs
    assert any(src == "shop" and dst.startswith("sqlite:shop.db") for src, dst, _ in pairs)
    assert tab.page.locator("#chart-map canvas").count() == 1
    tab.page.wait_for_timeout(600)  # the force layout settles
    tab.shot("map")


def test_xss_payloads_render_as_text(tab, ui):
    """Each page shows a payload as text; Tab.ready() checked after every load that none ran or became an
    element (XSS_PROBE)."""
    trace_id = one(ui["db"], "SELECT trace_id FROM spans WHERE name = ?", XSS_NAME)
    stored_sql = one(ui["db"], "SELECT json_extract(attributes, '$.\"db.query.text\"') FROM spans WHERE "
                               "trace_id = ? AND kind = 'client'", trace_id)
    assert stored_sql == XSS_SQL
    range_1h = {"range": "1h"}
    tab.open("/?range=1h")  # services
    assert XSS_SERVICE in tab.cells("services-table", 0)
    tab.open("/service?" + urllib.parse.urlencode(dict(range_1h, service=XSS_SERVICE)))
    assert tab.page.inner_text("h1") == XSS_SERVICE
    assert tab.cells("endpoints-table", 0) == [XSS_NAME]
    tab.open("/endpoint?" + urllib.parse.urlencode(dict(range_1h, service=XSS_SERVICE, op=XSS_NAME)))
    assert XSS_NAME in tab.page.inner_text("h1")
    assert tab.cells("sql-table", 0) == [stored_sql]
    tab.open("/trace/" + trace_id)
    assert XSS_NAME in tab.page.inner_text("main .cards")
    assert tab.page.inner_text("#span-panel h2") == XSS_NAME
    assert XSS_ATTR in tab.page.inner_text("#span-panel table.attrs")
    tab.open("/search?" + urllib.parse.urlencode({"op": XSS_NAME}))
    assert tab.cells("results-table", 3) == [XSS_NAME]
    assert tab.cells("results-table", 2) == [XSS_SERVICE]
    tab.open("/search?" + urllib.parse.urlencode({"attr": "evil=" + XSS_ATTR}))
    assert tab.cells("results-table", 3) == [XSS_NAME]
    assert tab.page.input_value("input[name=attr]") == "evil=" + XSS_ATTR
    tab.open("/queries?" + urllib.parse.urlencode(dict(range_1h, service=XSS_SERVICE)))
    assert tab.cells("queries-table", 0) == [stored_sql]
    tab.open("/map?range=1h")
    assert XSS_SERVICE in tab.cells("edges-table", 0)
    assert tab.pages_checked == 8


def test_bad_input_is_a_400_page(browser, ui):
    page = browser.new_page()
    try:
        response = page.goto(ui["url"] + "/trace/not-hex")
        assert response.status == 400
        page.wait_for_selector("body[data-ready='1']")
        assert page.evaluate(XSS_PROBE) == {"ran": None, "elements": 0}
        assert "a trace id is 32" in page.inner_text("#error-message")
        response = page.goto(ui["url"] + "/?range=forever")
        assert response.status == 400 and "range must be one of" in page.inner_text("#error-message")
        assert "Content-Security-Policy" in {k.title(): v for k, v in response.headers.items()} or \
            "content-security-policy" in response.headers
    finally:
        page.close()


# ------------------------------------------------------------------------------------ the collector's UI

COLLECTED = """
import autoinstr
for i in range(12):
    try:
        with autoinstr.span("GET /checkout", kind="server", **{"http.route": "/checkout"}):
            with autoinstr.span("SELECT carts", kind="client", **{"db.system": "sqlite",
                                                                   "db.query.text": "SELECT * FROM carts"}):
                pass
            if i % 4 == 0:
                raise RuntimeError("card declined")
    except RuntimeError:
        pass
print("sent")
"""


def test_collector_serves_the_ui_at_its_root(browser, sandbox):
    """A real `autoinstr collector`; an agent (autoinstr-run, AUTOINSTR_EXPORTER=collector) sends it spans;
    its root path in Chromium is the services page, listing that service."""
    store = os.path.join(sandbox.dir, "collector.db")
    with serving(sandbox, [sandbox.CLI, "collector", "--store", store]) as url:
        script = sandbox.write("checkout.py", COLLECTED)
        agent = sandbox.env(AUTOINSTR_EXPORTER="collector", AUTOINSTR_COLLECTOR_URL=url, AUTOINSTR_STORE=None)
        proc = sandbox.ok(["python", script], service="checkout-api", env=agent)
        assert "sent" in proc.stdout and "autoinstr warning" not in proc.stderr, proc.stderr
        db = sqlite3.connect(store)
        try:  # the agent's exit flush sent everything before it ended
            assert one(db, "SELECT count(*) FROM spans WHERE service = 'checkout-api' AND kind = 'server'") == 12
        finally:
            db.close()
        tab = Tab(browser, url)
        try:
            response = tab.open("/")  # Chromium asks for text/html: the UI, not the collector's JSON index
            assert response.status == 200 and tab.page.inner_text("h1") == "Services"
            deadline = time.monotonic() + 20  # the collector's UI indexes in the background
            while "checkout-api" not in tab.cells("services-table", 0) and time.monotonic() < deadline:
                time.sleep(0.3)
                tab.open("/")
            counts = dict(zip(tab.cells("services-table", 0), tab.cells("services-table", 1)))
            assert counts == {"checkout-api": "12"}
            errors = dict(zip(tab.cells("services-table", 0), tab.cells("services-table", 3)))
            assert errors["checkout-api"] == "25.0%"
            tab.shot("collector")
            tab.page.click("#services-table a:text('checkout-api')")
            tab.ready()
            assert tab.cells("endpoints-table", 0) == ["GET /checkout"]
        finally:
            tab.close()


# ------------------------------------------------------------------------------------ a big trace

BIG_TRACE = """
import autoinstr
with autoinstr.span("GET /report", kind="server", **{"http.route": "/report"}):
    for b in range(40):
        with autoinstr.span("batch %d" % b, batch=b):
            for i in range(99):
                with autoinstr.span("row", i=i):
                    pass
        autoinstr.flush()
print("done")
"""
BIG_SPANS = 1 + 40 + 40 * 99  # 4001


def test_trace_of_thousands_of_spans_scrolls(browser, sandbox):
    """A trace of 4001 spans (a traced script under autoinstr-run): the page carries them all, the waterfall
    draws the rows in its window (36 at a time) and scrolls to the last one, without console errors, quickly."""
    proc = sandbox.ok(["python", sandbox.write("big.py", BIG_TRACE)], service="reports")
    assert "done" in proc.stdout
    db = sqlite3.connect(sandbox.store)
    try:
        trace_id, stored = db.execute("SELECT trace_id, count(*) FROM spans GROUP BY trace_id").fetchone()
    finally:
        db.close()
    assert stored == BIG_SPANS
    with serving(sandbox, [sandbox.CLI, "ui", "--store", sandbox.store]) as url:
        tab = Tab(browser, url)
        try:
            began = time.monotonic()
            tab.open("/trace/" + trace_id)
            took = time.monotonic() - began
            assert took < 10, "the page took %.1f s" % took
            assert tab.page.get_attribute("#waterfall", "data-spans") == str(BIG_SPANS)
            assert tab.page.get_attribute("#waterfall", "data-rows") == str(BIG_SPANS)
            assert "4,001" in tab.page.inner_text("main .cards")
            assert tab.page.locator("main p.note").count() == 0  # not truncated
            window = """() => {
                const chart = echarts.getInstanceByDom(document.getElementById('waterfall'));
                const data = chart.getModel().getSeriesByIndex(0).getData();
                const rows = [];
                for (let i = 0; i < data.count(); i++) { rows.push(data.getRawIndex(i)); }
                return {total: chart.getOption().series[0].data.length, drawn: rows}; }"""
            seen = tab.page.evaluate(window)
            assert seen["total"] == BIG_SPANS
            # the rows drawn are the window's (36), not all 4001: that is what keeps the page fast
            assert 30 <= len(seen["drawn"]) <= 40 and seen["drawn"][0] == 0, seen["drawn"]
            tab.page.evaluate("""() => echarts.getInstanceByDom(document.getElementById('waterfall'))
                .dispatchAction({type: 'dataZoom', dataZoomIndex: 0, startValue: %d, endValue: %d})"""
                              % (BIG_SPANS - 36, BIG_SPANS - 1))
            tab.page.wait_for_timeout(200)
            seen = tab.page.evaluate(window)
            assert BIG_SPANS - 1 in seen["drawn"] and 0 not in seen["drawn"], seen["drawn"]
            # the last row is the last batch's last row, and clicking it opens its panel
            last = tab.page.evaluate("""() => JSON.parse(document.getElementById('page-data').textContent)
                .spans.slice(-1)[0]""")
            assert last["name"] == "row" and last["attributes"]["i"] == 98 and last["depth"] == 2
            x, y = tab.page.evaluate("""(row) => {
                const chart = echarts.getInstanceByDom(document.getElementById('waterfall'));
                const s = JSON.parse(document.getElementById('page-data').textContent).spans[row];
                return chart.convertToPixel({seriesIndex: 0}, [s.offset_ms + s.duration_ms / 2, row]); }""",
                                     BIG_SPANS - 1)
            tab.page.locator("#waterfall").scroll_into_view_if_needed()  # the last row is below the fold
            box = tab.page.locator("#waterfall").bounding_box()
            tab.page.mouse.click(box["x"] + x + 1, box["y"] + y)  # its bar is 2 px wide from its start
            title = ""
            deadline = time.monotonic() + 5
            while title != "row" and time.monotonic() < deadline:  # (wait_for_function would need unsafe-eval)
                title = tab.page.evaluate("() => (document.querySelector('#span-panel h2') || {}).textContent")
                time.sleep(0.05)
            assert title == "row", tab.page.inner_text("#span-panel")
            assert "i\n98" in tab.page.inner_text("#span-panel table.attrs").replace("\t", "\n")
            tab.page.mouse.move(0, 0)  # no tooltip in the picture
            tab.shot("trace-4001-spans")
        finally:
            tab.close()


# ------------------------------------------------------------------------------------ README images

def update_readme_images(src: str = SHOTS, dst: str = README_SHOTS) -> list:
    """Copy the README's screenshots from the artifacts folder (where the tests above put them) to
    docs/screenshots/; -> the files copied. Fails when one is missing: run the browser tests first."""
    missing = [n for n in README_IMAGES if not os.path.exists(os.path.join(src, n + ".png"))]
    if missing:
        raise SystemExit("no %s in %s: run `python -m pytest integration/test_ui_browser.py` first"
                         % (", ".join(n + ".png" for n in missing), src))
    os.makedirs(dst, exist_ok=True)
    copied = []
    for name in README_IMAGES:
        target = os.path.join(dst, name + ".png")
        shutil.copyfile(os.path.join(src, name + ".png"), target)
        copied.append(target)
    return copied


if __name__ == "__main__":
    if sys.argv[1:] != ["--update-readme-images"]:
        raise SystemExit("usage: python integration/test_ui_browser.py --update-readme-images\n"
                         "  copies %s/{%s}.png to %s/" % (SHOTS, ",".join(README_IMAGES), README_SHOTS))
    for path in update_readme_images():
        print(path)
