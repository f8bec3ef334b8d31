"""Server-rendered HTML of each page. Every value that comes from spans or from the request goes through
`e()` (HTML-escaped, quotes too) or `q()` (a URL query, then escaped); chart data goes to the page's JS as a
JSON block whose `<`, `>` and `&` are \\u-escaped, so no span name or attribute can close it. No inline script
or style: the Content-Security-Policy forbids both."""

from __future__ import annotations

import datetime
import html
import json
import urllib.parse

from autoinstr.ui.queries import RANGE_LABELS

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any, Dict, List, Optional, Sequence, Tuple

ASSET_VERSION = "2"
NAV = (("services", "/", "Services"), ("search", "/search", "Search"), ("queries", "/queries", "Slow queries"),
       ("map", "/map", "Service map"))


def e(value: Any) -> str:
    return html.escape("" if value is None else str(value), quote=True)


def q(base: str, path: str, **params: Any) -> str:
    """An escaped href: base + path + the non-empty params as a query string."""
    items = [(k.rstrip("_"), v) for k, v in params.items() if v not in (None, "", False)]
    query = urllib.parse.urlencode(items, quote_via=urllib.parse.quote)
    return e(base + path + ("?" + query if query else ""))


def data_json(data: Any) -> str:
    text = json.dumps(data, ensure_ascii=False, separators=(",", ":"), default=str)
    return (text.replace("&", "\\u0026").replace("<", "\\u003c").replace(">", "\\u003e")
            .replace("\u2028", "\\u2028").replace("\u2029", "\\u2029"))


def fmt_ms(value: Optional[float]) -> str:
    if value is None:
        return "–"
    if value >= 1000:
        return "%.2f s" % (value / 1000)
    if value >= 100:
        return "%.0f ms" % value
    if value >= 10:
        return "%.1f ms" % value
    if value >= 1:
        return "%.2f ms" % value
    return "%.3f ms" % value


def fmt_rate(value: Optional[float]) -> str:
    if not value:
        return "0/s"
    if value >= 10:
        return "%.0f/s" % value
    if value >= 0.1:
        return "%.2f/s" % value
    return "%.1f/min" % (value * 60)


def fmt_pct(value: Optional[float]) -> str:
    if value is None:
        return "–"
    return "%.1f%%" % value if value else "0%"


def fmt_int(value: Any) -> str:
    return f"{int(value or 0):,}"


def fmt_time_ms(ms: Any) -> str:
    when = datetime.datetime.fromtimestamp(int(ms) / 1000.0, tz=datetime.timezone.utc)
    return when.strftime("%Y-%m-%d %H:%M:%S.") + "%03d UTC" % (int(ms) % 1000)


def fmt_clock_ms(ms: Any) -> str:
    """The time of day (UTC) with its milliseconds, in a <time> element whose title has the date."""
    when = datetime.datetime.fromtimestamp(int(ms) / 1000.0, tz=datetime.timezone.utc)
    clock = when.strftime("%H:%M:%S.") + "%03d" % (int(ms) % 1000)
    return '<time title="%s">%s</time>' % (e(fmt_time_ms(ms)), e(clock))


def fmt_time_s(s: int) -> str:
    return datetime.datetime.fromtimestamp(s, tz=datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")


class Page:
    """One page being built: its title, the nav entry it belongs to, the chart data for ui.js, and its body."""

    def __init__(self, base: str, page: str, title: str, nav: str, status: Optional[Dict[str, Any]] = None) -> None:
        self.base = base
        self.page = page
        self.title = title
        self.nav = nav
        self.status = status or {}
        self.parts: List[str] = []
        self.data: Dict[str, Any] = {}

    def add(self, *html_parts: str) -> Page:
        self.parts.extend(html_parts)
        return self

    def render(self) -> str:
        b = self.base
        nav = "".join('<a href="%s"%s>%s</a>' % (e(b + path), ' class="active" aria-current="page"'
                                                  if key == self.nav else "", e(label)) for key, path, label in NAV)
        banner = ""
        behind = self.status.get("behind") or 0
        if behind:
            banner = ('<div class="banner" role="status">Indexing: %s of %s spans read so far; the figures below '
                      'grow as it goes on (reload).</div>' % (fmt_int(self.status.get("indexed")),
                                                              fmt_int(self.status.get("stored"))))
        if self.status.get("error"):
            banner += '<div class="banner error" role="status">Indexer: %s</div>' % e(self.status["error"])
        return (
            '<!doctype html>\n<html lang="en"><head><meta charset="utf-8">'
            '<meta name="viewport" content="width=device-width, initial-scale=1">'
            '<meta name="referrer" content="no-referrer">'
            "<title>%s · autoinstr</title>"
            '<link rel="icon" href="%s" type="image/svg+xml"><link rel="stylesheet" href="%s">'
            '<script src="%s" defer></script><script src="%s" defer></script>'
            '</head><body data-page="%s" data-base="%s">'
            '<header class="top"><a class="brand" href="%s">autoinstr</a><nav>%s</nav></header>'
            "%s<main>%s"
            '<script type="application/json" id="page-data">%s</script>'
            "</main></body></html>\n" % (
                e(self.title), e(b + "/static/favicon.svg"), e(b + "/static/ui.css?v=" + ASSET_VERSION),
                e(b + "/static/echarts/echarts.min.js?v=5.6.0"), e(b + "/static/ui.js?v=" + ASSET_VERSION),
                e(self.page), e(b), e(b + "/"), nav, banner, "".join(self.parts), data_json(self.data)))


# ------------------------------------------------------------------------------------ pieces

def range_bar(base: str, path: str, tr: Dict[str, Any], keep: Dict[str, Any]) -> str:
    links = []
    for key, label in RANGE_LABELS.items():
        cls = ' class="active"' if tr["range"] == key else ""
        links.append('<a%s href="%s">%s</a>' % (cls, q(base, path, range=key, **keep), e(label)))
    hidden = "".join('<input type="hidden" name="%s" value="%s">' % (e(k.rstrip("_")), e(v))
                     for k, v in keep.items() if v not in (None, "", False))
    from_v = datetime.datetime.fromtimestamp(tr["from"], tz=datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M")
    to_v = datetime.datetime.fromtimestamp(tr["to"], tz=datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M")
    note = '<p class="note">%s</p>' % e(tr["note"]) if tr.get("note") else ""
    return ('<div class="rangebar"><span class="label">Time range:</span> %s'
            '<form method="get" action="%s" class="custom">%s'
            '<label>from (UTC) <input type="datetime-local" name="from" value="%s"></label> '
            '<label>to <input type="datetime-local" name="to" value="%s"></label> <button>Show</button></form>'
            '<span class="shown">%s – %s, %s per point</span></div>%s' % (
                " ".join(links), e(base + path), hidden, e(from_v), e(to_v), e(fmt_time_s(tr["from"])),
                e(fmt_time_s(tr["to"])), e(_step_label(tr["step"])), note))


def _step_label(step: int) -> str:
    if step % 86400 == 0:
        return "%d day%s" % (step // 86400, "s" if step > 86400 else "")
    if step % 3600 == 0:
        return "%d hour%s" % (step // 3600, "s" if step > 3600 else "")
    if step % 60 == 0:
        return "%d minute%s" % (step // 60, "s" if step > 60 else "")
    return "%d seconds" % step


def swatch(service: str) -> str:
    return '<span class="swatch" data-service="%s" aria-hidden="true"></span>' % e(service)


def chart(chart_id: str, title: str, kind: str = "", height: str = "") -> str:
    return ('<section class="chart-box"><h3>%s</h3><div class="chart%s" id="%s" data-chart="%s"></div></section>'
            % (e(title), " " + height if height else "", e(chart_id), e(kind or chart_id)))


def table(headers: Sequence[Tuple[str, str]], rows: Sequence[Sequence[str]], table_id: str = "",
          empty: str = "Nothing in this time range.") -> str:
    """headers: (html, css class); rows: cells already rendered as HTML."""
    if not rows:
        return '<p class="empty">%s</p>' % e(empty)
    head = "".join('<th class="%s">%s</th>' % (cls, h) for h, cls in headers)
    body = "".join("<tr>%s</tr>" % "".join('<td class="%s">%s</td>' % (headers[i][1], c) for i, c in enumerate(r))
                   for r in rows)
    return '<table%s><thead><tr>%s</tr></thead><tbody>%s</tbody></table>' % (
        ' id="%s"' % e(table_id) if table_id else "", head, body)


def sort_header(base: str, path: str, label: str, key: str, current: str, desc: bool, keep: Dict[str, Any]) -> str:
    is_current = key == current
    new_desc = not desc if is_current else key != "name"
    arrow = (" ▼" if desc else " ▲") if is_current else ""
    return '<a class="sort%s" href="%s">%s%s</a>' % (" current" if is_current else "", q(
        base, path, sort=key, dir="desc" if new_desc else "asc", **keep), e(label), arrow)


def stat_cards(items: Sequence[Tuple[str, str]]) -> str:
    return '<div class="cards">%s</div>' % "".join(
        '<div class="card"><div class="v">%s</div><div class="k">%s</div></div>' % (e(v), e(k)) for k, v in items)


def trace_link(base: str, trace_id: str, span_id: str = "", text: str = "") -> str:
    return '<a class="trace" href="%s" title="%s">%s</a>' % (
        q(base, "/trace/" + trace_id, span=span_id), e(trace_id), e(text or trace_id[:12] + "…"))


def empty_store_hint() -> str:
    return ('<p class="empty">No spans stored yet. Run an app under the agent (<code>autoinstr-run python app.py'
            '</code>) with the same store, then reload.</p>')


# ------------------------------------------------------------------------------------ pages

def services_page(base: str, data: Dict[str, Any], status: Dict[str, Any]) -> str:
    tr = data["range"]
    page = Page(base, "services", "Services", "services", status)
    page.data = {"t": data["t"], "series": data["series"]}
    page.add("<h1>Services</h1>", range_bar(base, "/", tr, {}))
    if not data["services"]:
        return page.add(empty_store_hint()).render()
    page.add('<div class="charts two">', chart("chart-rate", "Requests per second", "services-rate"),
             chart("chart-errors", "Error rate (%)", "services-errors"), "</div>",
             '<div class="charts three">', chart("chart-p50", "p50 latency (ms)", "services-p50"),
             chart("chart-p95", "p95 latency (ms)", "services-p95"),
             chart("chart-p99", "p99 latency (ms)", "services-p99"), "</div>")
    rows = []
    for r in data["services"]:
        rows.append([swatch(r["service"]) + '<a href="%s">%s</a>' % (
            q(base, "/service", service=r["service"], range=_keep_range(tr)), e(r["service"])),
            fmt_int(r["count"]), e(fmt_rate(r["rate"])), e(fmt_pct(r["error_pct"])), e(fmt_ms(r["p50_ms"])),
            e(fmt_ms(r["p95_ms"])), e(fmt_ms(r["p99_ms"])), e(fmt_ms(r["total_ms"])), fmt_int(r["endpoints"])])
    page.add("<h2>All services</h2>", table(
        [("service", "name"), ("requests", "num"), ("rate", "num"), ("errors", "num"), ("p50", "num"),
         ("p95", "num"), ("p99", "num"), ("total time", "num"), ("endpoints", "num")], rows, "services-table"))
    return page.render()


def _keep_range(tr: Dict[str, Any]) -> Optional[str]:
    return tr["range"] if tr["range"] not in ("custom",) else None


def _range_keep(tr: Dict[str, Any]) -> Dict[str, Any]:
    if tr["range"] == "custom":
        return {"from_": tr["from"], "to": tr["to"]}
    return {"range": tr["range"]}


def service_page(base: str, data: Dict[str, Any], status: Dict[str, Any]) -> str:
    tr = data["range"]
    service = data["service"]
    page = Page(base, "service", "Service %s" % service, "services", status)
    page.data = {"t": data["t"], "series": data["series"], "service": service}
    s = data["summary"]
    page.add('<p class="crumbs"><a href="%s">Services</a> ›</p>' % q(base, "/", **_range_keep(tr)),
             "<h1>%s%s</h1>" % (swatch(service), e(service)),
             range_bar(base, "/service", tr, {"service": service}),
             stat_cards([("requests", fmt_int(s["count"])), ("rate", fmt_rate(s["rate"])),
                         ("errors", fmt_pct(s["error_pct"])), ("p50", fmt_ms(s["p50_ms"])),
                         ("p95", fmt_ms(s["p95_ms"])), ("p99", fmt_ms(s["p99_ms"]))]),
             '<div class="charts two">', chart("chart-rate", "Requests per second and error rate", "rate-errors"),
             chart("chart-latency", "Latency percentiles (ms)", "latency"), "</div>")
    keep = dict(_range_keep(tr), service=service)
    cols = [("endpoint", "name", "name"), ("requests", "count", "num"), ("rate", "rate", "num"),
            ("errors", "error_pct", "num"), ("p50", "p50_ms", "num"), ("p95", "p95_ms", "num"),
            ("p99", "p99_ms", "num"), ("total time", "total_ms", "num")]
    headers = [(sort_header(base, "/service", label, key, data["sort"], data["desc"], keep), cls)
               for label, key, cls in cols]
    total_all = sum(r["total_ms"] or 0 for r in data["endpoints"]) or 1
    rows = []
    for r in data["endpoints"]:
        share = 100.0 * (r["total_ms"] or 0) / total_all
        rows.append(['<a href="%s">%s</a>%s' % (
            q(base, "/endpoint", service=service, op=r["name"], kind=r["kind"] if r["kind"] != "server" else None,
              **_range_keep(tr)), e(r["name"]), ' <span class="kind">%s</span>' % e(r["kind"])
            if r["kind"] != "server" else ""),
            fmt_int(r["count"]), e(fmt_rate(r["rate"])), e(fmt_pct(r["error_pct"])), e(fmt_ms(r["p50_ms"])),
            e(fmt_ms(r["p95_ms"])), e(fmt_ms(r["p99_ms"])),
            '%s <span class="share" title="share of the service\'s time">%s</span>' % (
                e(fmt_ms(r["total_ms"])), e("%.0f%%" % share))])
    page.add("<h2>Endpoints</h2><p class=\"hint\">Where the time goes: sort by total time, p95, count or error "
             "rate.</p>", table(headers, rows, "endpoints-table"))
    return page.render()


def endpoint_page(base: str, data: Dict[str, Any], status: Dict[str, Any]) -> str:
    tr = data["range"]
    service, name = data["service"], data["name"]
    page = Page(base, "endpoint", "%s · %s" % (name, service), "services", status)
    page.data = {"t": data["t"], "series": data["series"], "histogram": data["histogram"], "service": service}
    s = data["summary"]
    keep = dict(_range_keep(tr))
    page.add('<p class="crumbs"><a href="%s">Services</a> › <a href="%s">%s</a> ›</p>' % (
        q(base, "/", **keep), q(base, "/service", service=service, **keep), e(service)),
        '<h1>%s<span class="op">%s</span> <span class="kind">%s</span></h1>' % (swatch(service), e(name),
                                                                                e(data["kind"])),
        range_bar(base, "/endpoint", tr, {"service": service, "op": name,
                                          "kind": data["kind"] if data["kind"] != "server" else None}),
        stat_cards([("requests", fmt_int(s["count"])), ("rate", fmt_rate(s["rate"])),
                    ("errors", fmt_pct(s["error_pct"])), ("p50", fmt_ms(s["p50_ms"])), ("p95", fmt_ms(s["p95_ms"])),
                    ("p99", fmt_ms(s["p99_ms"])), ("total time", fmt_ms(s["total_ms"]))]),
        '<div class="charts two">', chart("chart-hist", "Latency histogram", "histogram"),
        chart("chart-latency", "Latency percentiles over time (ms)", "latency"), "</div>")
    rows = [[trace_link(base, r["trace_id"], r["span_id"]), fmt_clock_ms(r["start_ms"]), e(fmt_ms(r["duration_ms"])),
             '<span class="err">error</span>' if r["error"] else "ok"] for r in data["slowest"]]
    page.add('<div class="cols"><section><h2>Slowest traces</h2>',
             table([("trace", "name"), ("start (UTC)", ""), ("duration", "num"), ("status", "")], rows,
                   "slowest-table"),
             "</section>")

    def call_rows(items: List[Dict[str, Any]], sql: bool) -> List[List[str]]:
        out = []
        for r in items:
            label = '<code class="sql">%s</code>' % e(r["label"]) if sql else e(r["label"])
            if sql and r["type"] == "db":
                label = "%s <span class=\"kind\">%s</span>" % (e(r["label"]), e(r["system"]))
            out.append([label, fmt_int(r["count"]), e("%.1f" % r["per_request"] if r["per_request"] is not None
                                                      else "–"),
                        e(fmt_ms(r["total_ms"])), e("%s%%" % r["share_pct"] if r["share_pct"] is not None else "–"),
                        e(fmt_ms(r["mean_ms"])), str(r["errors"]),
                        trace_link(base, r["example_trace"], text="slowest") if r["example_trace"] else ""])
        return out

    heads = [("statement", "name"), ("calls", "num"), ("per request", "num"), ("total", "num"),
             ("of endpoint time", "num"), ("mean", "num"), ("errors", "num"), ("example", "")]
    page.add('<section><h2>SQL by total time inside this endpoint</h2>',
             table(heads, call_rows(data["sql"], True), "sql-table", "No SQL in this time range."),
             '<h2>Outgoing calls by total time</h2>',
             table([("call", "name")] + heads[1:], call_rows(data["calls"], False), "calls-table",
                   "No outgoing calls in this time range."), "</section></div>")
    return page.render()


def trace_page(base: str, data: Dict[str, Any], status: Dict[str, Any], selected: str = "") -> str:
    page = Page(base, "trace", "Trace %s" % data["trace_id"], "", status)
    spans = data["spans"]
    root = spans[0] if spans else {}
    page.data = {"spans": [{k: v for k, v in s.items() if k != "start_ns"} for s in spans],
                 "duration_ms": data["duration_ms"], "services": data["services"], "selected": selected}
    legend = " ".join('<span class="legend-item">%s%s</span>' % (swatch(s), e(s)) for s in data["services"])
    warn = ('<p class="note">This trace has more than %s spans: the first %s (by start) are shown.</p>'
            % (fmt_int(data["limit"]), fmt_int(data["limit"])) if data["truncated"] else "")
    page.add('<p class="crumbs"><a href="%s">Search</a> ›</p>' % q(base, "/search"),
             '<h1>Trace <code class="tid">%s</code></h1>' % e(data["trace_id"]),
             stat_cards([("root", "%s · %s" % (root.get("service", ""), root.get("name", ""))),
                         ("duration", fmt_ms(data["duration_ms"])), ("spans", fmt_int(len(spans))),
                         ("services", str(len(data["services"]))), ("errors", fmt_int(data["errors"])),
                         ("start", fmt_time_ms(data["start_ns"] // 10**6))]),
             warn,
             '<div class="toolbar"><span class="legend">%s</span>'
             '<span class="modes" role="group" aria-label="highlight">Highlight: '
             '<button type="button" data-mode="critical" class="active">critical path</button>'
             '<button type="button" data-mode="self">self time</button>'
             '<button type="button" data-mode="none">none</button></span></div>' % legend,
             '<div class="trace-view"><div class="waterfall-box"><div id="waterfall" class="waterfall" '
             'data-spans="%d"></div><p class="hint">Scroll or drag the bar on the right to move through the spans; '
             'click a span for its details.</p></div>'
             '<aside id="span-panel" class="panel" aria-live="polite"><p class="hint">Click a span to see its '
             'attributes, SQL, error and stack.</p></aside></div>' % len(spans))
    return page.render()


def search_page(base: str, form: Dict[str, Any], data: Optional[Dict[str, Any]], services: List[str],
                ops: List[str], status: Dict[str, Any]) -> str:
    page = Page(base, "search", "Search", "search", status)
    opts = '<option value="">any</option>' + "".join(
        '<option%s>%s</option>' % (" selected" if s == form.get("service") else "", e(s)) for s in services)
    range_opts = "".join('<option value="%s"%s>%s</option>' % (e(k), " selected" if k == (form.get("range") or "all")
                                                              else "", e(v)) for k, v in RANGE_LABELS.items())
    datalist = "".join('<option value="%s"></option>' % e(o) for o in ops)
    page.add("<h1>Search spans</h1>",
             '<form method="get" action="%s" class="search" id="search-form">'
             '<label>service <select name="service">%s</select></label>'
             '<label>operation <input name="op" list="ops" value="%s" size="28"></label><datalist id="ops">%s'
             '</datalist>'
             '<label>min duration (ms) <input name="min_ms" inputmode="decimal" value="%s" size="6"></label>'
             '<label class="check"><input type="checkbox" name="errors" value="1"%s> errors only</label>'
             '<label>time range <select name="range">%s</select></label>'
             '<label>attribute <input name="attr" value="%s" size="26" placeholder="key=value, or any text"></label>'
             '<label>trace id <input name="trace" value="%s" size="34" placeholder="32 hex digits"></label>'
             '<button type="submit">Search</button></form>' % (
                 e(base + "/search"), opts, e(form.get("op") or ""), datalist,
                 e(form.get("min_ms") if form.get("min_ms") is not None else ""),
                 " checked" if form.get("errors") else "", range_opts, e(form.get("attr") or ""),
                 e(form.get("trace") or "")))
    if data is None:
        page.add('<p class="hint">Every field is optional: the newest matching spans come first.</p>')
        return page.render()
    rows = []
    for r in data["results"]:
        rows.append([trace_link(base, r["trace_id"], r["span_id"]), fmt_clock_ms(r["start_ms"]),
                     swatch(r["service"]) + e(r["service"]), e(r["name"]), e(r["kind"]), e(fmt_ms(r["duration_ms"])),
                     '<span class="err">error</span>' if r["status"] == "error" else "ok"])
    count = len(data["results"])
    page.add('<p class="count" id="result-count">%s span%s found%s.</p>' % (
        fmt_int(count), "" if count == 1 else "s", " (the newest %d)" % data["limit"] if data["more_before"]
        and count >= data["limit"] else ""))
    page.add(table([("trace", "name"), ("start (UTC)", ""), ("service", ""), ("operation", "name"), ("kind", ""),
                    ("duration", "num"), ("status", "")], rows, "results-table", "No span matches."))
    if data["more_before"]:
        keep = {k: v for k, v in form.items() if k != "before" and v not in (None, "", False)}
        why = "" if count >= data["limit"] else " The search stopped at its time budget."
        page.add('<p class="more">%s<a href="%s">Older matches…</a></p>' % (
            e(why.strip() + " " if why else ""), q(base, "/search", before=data["more_before"], **keep)))
    return page.render()


def queries_page(base: str, data: Dict[str, Any], services: List[str], status: Dict[str, Any]) -> str:
    tr = data["range"]
    page = Page(base, "queries", "Slow queries", "queries", status)
    keep = {"service": data["service"]}
    opts = '<option value="">all services</option>' + "".join(
        '<option%s>%s</option>' % (" selected" if s == data["service"] else "", e(s)) for s in services)
    hidden = "".join('<input type="hidden" name="%s" value="%s">' % (e(k.rstrip("_")), e(v))
                     for k, v in _range_keep(tr).items())
    page.add("<h1>Slow queries</h1>", range_bar(base, "/queries", tr, keep),
             '<form method="get" action="%s" class="inline">%s<label>service <select name="service">%s</select>'
             '</label> <button>Filter</button></form>' % (e(base + "/queries"), hidden, opts),
             '<p class="hint">SQL statements as the agent normalized them (literals replaced by ?), by the time they '
             'took in all.</p>')
    keep_all = dict(_range_keep(tr), service=data["service"])
    cols = [("statement", None, "name"), ("service", None, ""), ("database", None, ""), ("count", "count", "num"),
            ("total", "total_ms", "num"), ("mean", "mean_ms", "num"), ("p95", "p95_ms", "num"),
            ("errors", "errors", "num"), ("example", None, "")]
    headers = [(sort_header(base, "/queries", label, key, data["sort"], True, keep_all) if key else e(label), cls)
               for label, key, cls in cols]
    rows = [['<code class="sql">%s</code>' % e(r["statement"]), swatch(r["service"]) + e(r["service"]),
             e(r["system"]), fmt_int(r["count"]), e(fmt_ms(r["total_ms"])), e(fmt_ms(r["mean_ms"])),
             e(fmt_ms(r["p95_ms"])), fmt_int(r["errors"]),
             trace_link(base, r["example_trace"], text="slowest run") if r["example_trace"] else ""]
            for r in data["statements"]]
    page.add(table(headers, rows, "queries-table", "No SQL statements in this time range."))
    return page.render()


def map_page(base: str, data: Dict[str, Any], status: Dict[str, Any]) -> str:
    tr = data["range"]
    page = Page(base, "map", "Service map", "map", status)
    page.data = {"nodes": data["nodes"], "edges": data["edges"]}
    page.add("<h1>Service map</h1>", range_bar(base, "/map", tr, {}))
    if not data["nodes"]:
        return page.add(empty_store_hint()).render()
    page.add('<div id="chart-map" class="chart map" data-chart="map"></div>',
             '<p class="hint">Services are circles, databases squares, peers that sent no spans triangles; an arrow '
             'is calls from a client span to what served it, labelled with rate, error rate and p95 (as the caller '
             'measured it).</p>')
    rows = [[swatch(r["src"]) + '<a href="%s">%s</a>' % (q(base, "/service", service=r["src"], **_range_keep(tr)),
                                                        e(r["src"])),
             e(r["dst"]) + ' <span class="kind">%s</span>' % e(r["dst_type"]), fmt_int(r["count"]),
             e(fmt_rate(r["rate"])), e(fmt_pct(r["error_pct"])), e(fmt_ms(r["p95_ms"])), e(fmt_ms(r["mean_ms"]))]
            for r in data["edges"]]
    page.add("<h2>Calls</h2>", table([("from", "name"), ("to", "name"), ("calls", "num"), ("rate", "num"),
                                       ("errors", "num"), ("p95", "num"), ("mean", "num")], rows, "edges-table",
                                      "No calls between services in this time range."))
    return page.render()


def error_page(base: str, status: int, title: str, message: str) -> str:
    page = Page(base, "error", title, "")
    page.add('<h1>%s</h1><p class="error-message" id="error-message">%s</p><p><a href="%s">Back to the services'
             '</a></p>' % (e("%d %s" % (status, title)), e(message), e(base + "/")))
    return page.render()
