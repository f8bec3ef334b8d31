"""The web UI in a real headless Chromium (Debian's, driven by Playwright for Python), against a store filled
by the example (the Flask shop calling the Bottle inventory service, each under autoinstr-run) plus a script
whose custom span carries XSS payloads in its name, attributes and service name.

Every page loads without console errors and shows what the store holds; an endpoint leads to its slowest
trace, whose waterfall has one row per stored span; search filters work; the payloads show as text and never
run. Screenshots go to docs/screenshots/ (or AUTOINSTR_SCREENSHOTS): the README's images are these.

Skipped when Chromium or Playwright is missing, unless AUTOINSTR_REQUIRE_BROWSER=1 (test.sh sets it once
Debian's chromium is in): then they fail.
"""

from __future__ import annotations

import os
import socket
import sqlite3
import subprocess
import time
import urllib.parse

import pytest

CHROMIUM = os.environ.get("AUTOINSTR_CHROMIUM", "/usr/bin/chromium")
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SHOTS = os.environ.get("AUTOINSTR_SCREENSHOTS") or os.path.join(ROOT, "docs", "screenshots")
XSS_NAME = "<script>window.__xss=1</script>"
XSS_ATTR = '<img src=x onerror="window.__xss=2">'
XSS_SERVICE = "xss<i>svc</i>"


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


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


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
                pass
    """ % (XSS_NAME, XSS_ATTR, XSS_NAME, XSS_NAME, XSS_ATTR))
    sb.ok(["python", "xss.py"], service=XSS_SERVICE)
    port = free_port()
    server = subprocess.Popen([sb.CLI, "ui", "--store", sb.store, "--port", str(port)], env=sb.env(),
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, cwd=sb.dir)
    try:
        deadline = time.monotonic() + 30
        while True:
            assert server.poll() is None, server.stdout.read()
            try:
                socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
                break
            except OSError:
                assert time.monotonic() < deadline, "autoinstr ui did not listen"
                time.sleep(0.1)
        os.makedirs(SHOTS, exist_ok=True)
        yield {"url": "http://127.0.0.1:%d" % port, "store": sb.store, "db": sqlite3.connect(sb.store)}
    finally:
        server.terminate()
        try:
            server.wait(10)
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait()


class Tab:
    """A page with its console errors collected."""

    def __init__(self, browser, base: str) -> None:
        self.page = browser.new_page(viewport={"width": 1400, "height": 900})
        self.base = base
        self.errors: list = []
        self.page.on("console", lambda m: self.errors.append(m.text) if m.type == "error" else None)
        self.page.on("pageerror", lambda e: self.errors.append(str(e)))

    def open(self, path: str):
        response = self.page.goto(self.base + path)
        self.ready()
        return response

    def ready(self) -> None:
        self.page.wait_for_selector("body[data-ready='1']", timeout=15000)

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
    assert tab.page.locator("canvas").count() >= 3
    assert tab.page.evaluate("window.__xss") is None
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
    tab.page.click("#queries-table tbody tr:first-child a.trace")
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
    trace_id = one(ui["db"], "SELECT trace_id FROM spans WHERE name = ?", XSS_NAME)
    tab.open("/trace/" + trace_id)
    assert XSS_NAME in tab.page.inner_text("main .cards")
    assert tab.page.inner_text("#span-panel h2") == XSS_NAME
    assert XSS_ATTR in tab.page.inner_text("#span-panel table.attrs")
    tab.open("/search?" + urllib.parse.urlencode({"op": XSS_NAME}))
    assert tab.cells("results-table", 3) == [XSS_NAME]
    tab.open("/service?" + urllib.parse.urlencode({"service": XSS_SERVICE, "range": "1h"}))
    assert tab.cells("endpoints-table", 0) == [XSS_NAME]
    tab.open("/endpoint?" + urllib.parse.urlencode({"service": XSS_SERVICE, "op": XSS_NAME, "range": "1h"}))
    for path in ("/?range=1h", "/map?range=1h"):
        tab.open(path)
    assert tab.page.evaluate("window.__xss") is None
    assert tab.page.locator("img[src=x]").count() == 0


def test_bad_input_is_a_400_page(browser, ui):
    page = browser.new_page()
    try:
        response = page.goto(ui["url"] + "/trace/not-hex")
        assert response.status == 400
        assert "a trace id is 32" in page.inner_text("#error-message")
        response = page.goto(ui["url"] + "/?range=forever")
        assert response.status == 400 and "range must be one of" in page.inner_text("#error-message")
        assert "Content-Security-Policy" in {k.title(): v for k, v in response.headers.items()} or \
            "content-security-policy" in response.headers
    finally:
        page.close()
