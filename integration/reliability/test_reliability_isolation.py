"""Isolation: faults injected inside the agent never reach the app.

One script does real work through the instrumented libraries (sqlite3, http.client, urllib, requests
against a local server, a Bottle app called through WSGI, a thread pool, custom spans with odd attribute
values) and prints what every call returned or raised. It runs without the agent, then under
autoinstr-run with a fault injected into the agent itself: an integration's wrapper raising (its code
swapped for one that raises, before or after the call it wraps), an exporter raising, attribute values the
encoder cannot take as they are (non-UTF-8 bytes, recursive structures, objects whose str() raises).
What the app sees must be identical; the failing part is turned off with one warning; the rest goes on.
"""

from __future__ import annotations

import json
import sqlite3

import pytest

APP = r'''
import io, json, os, sys, threading, http.server, sqlite3
from concurrent.futures import ThreadPoolExecutor
import autoinstr

FAULT = os.environ.get("FAULT", "")
BEFORE, AFTER = "before", "after"


def raising_before(wrapped, instance, args, kwargs):
    raise RuntimeError("injected: the wrapper fails before the call")


def raising_after(wrapped, instance, args, kwargs):
    wrapped(*args, **kwargs)
    raise RuntimeError("injected: the wrapper fails after the call")


def inject(target, when):
    """Swap the code of an integration's wrapper function: every reference to it now runs the fault."""
    import importlib
    module, _, name = target.rpartition(".")
    fn = getattr(importlib.import_module(module), name)
    fn.__code__ = (raising_before if when == BEFORE else raising_after).__code__


if FAULT.startswith("wrapper:"):
    _, when, *targets = FAULT.split(":")
    import sqlite3 as _s, concurrent.futures.thread as _t, bottle as _b  # patched now: their wrappers exist
    for target in targets:
        inject(target, when)
elif FAULT in ("exporter", "exporter-bug"):
    from autoinstr.export import local as _local

    def export(self, records):
        raise OSError("injected: the local exporter fails")

    def export_bug(self, records):
        raise TypeError("injected: a bug in the local exporter")
    _local.LocalStoreExporter.export = export if FAULT == "exporter" else export_bug

out = {}


class Handler(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        body = ("hello " + self.path).encode()
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *a):
        pass


server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
threading.Thread(target=server.serve_forever, daemon=True).start()
port = server.server_address[1]


def attempt(name, fn):
    try:
        out[name] = ["ok", fn()]
    except Exception as exc:
        out[name] = ["raised", type(exc).__module__ + "." + type(exc).__name__, str(exc)]


def db():
    c = sqlite3.connect(":memory:")
    c.execute("CREATE TABLE t (a INTEGER, b TEXT)")
    c.executemany("INSERT INTO t VALUES (?, ?)", [(i, "x%d" % i) for i in range(5)])
    rows = c.execute("SELECT a, b FROM t WHERE a > ?", (1,)).fetchall()
    c.commit()
    c.close()
    return rows


def db_error():
    sqlite3.connect(":memory:").execute("SELECT * FROM nope")


def http_get():
    import http.client
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
    conn.request("GET", "/a?b=1")
    r = conn.getresponse()
    return [r.status, r.read().decode()]


def requests_get():
    import requests
    r = requests.get("http://127.0.0.1:%d/req" % port, timeout=5)
    return [r.status_code, r.text]


def requests_refused():
    import requests
    requests.get("http://127.0.0.1:1/", timeout=2)


def urlopen():
    import urllib.request
    return urllib.request.urlopen("http://127.0.0.1:%d/u" % port, timeout=5).read().decode()


def bottle_app():
    import bottle
    app = bottle.Bottle()

    @app.route("/items/<n:int>")
    def item(n):
        return "item %d" % n

    @app.route("/fail")
    def fail():
        raise ValueError("app error")

    res = []
    for path in ("/items/3", "/fail", "/nothing"):
        env = {"REQUEST_METHOD": "GET", "PATH_INFO": path, "SERVER_NAME": "x", "SERVER_PORT": "80",
               "wsgi.input": io.BytesIO(), "wsgi.errors": io.StringIO(), "wsgi.url_scheme": "http",
               "QUERY_STRING": ""}
        seen = []
        body = b"".join(app(env, lambda s, h, e=None: seen.append(s)))
        res.append([seen[0], body.decode()[:40]])
    return res


def pool():
    with ThreadPoolExecutor(2) as ex:
        return list(ex.map(lambda x: x * 2, range(5)))


def odd_attributes():
    class Odd:
        def __str__(self):
            raise RuntimeError("no str")
        __repr__ = __str__

    loop = []
    loop.append(loop)
    d = {}
    d["self"] = d
    with autoinstr.span("odd", raw=b"\xff\xfe\x00bad", loop=loop, d=d, odd=Odd(), surrogate="\udc80x",
                        big=10 ** 30, nan=float("nan")) as s:
        s.set_attribute("more", b"\x80")
        s.add_event("ev", {"x": b"\xff", "r": loop})
    with autoinstr.span("plain", n=1):
        pass
    return "done"


for name, fn in [("db", db), ("db_error", db_error), ("http", http_get), ("requests", requests_get),
                 ("requests_refused", requests_refused), ("urlopen", urlopen), ("bottle", bottle_app),
                 ("pool", pool), ("odd_attributes", odd_attributes)]:
    attempt(name, fn)
result = {"calls": out}
if os.environ.get("AUTOINSTR_EXPORTER"):
    autoinstr.flush(10)
    result["stats"] = autoinstr.stats()
print(json.dumps(result, default=str))
'''


@pytest.fixture(scope="module")
def baseline(sandbox_factory):
    """What the app's calls give without the agent."""
    box = sandbox_factory("isolation-baseline")
    box.write("iso_app.py", APP)
    proc = box.ok(["python", "iso_app.py"], launcher=False)
    return json.loads(proc.stdout.strip().splitlines()[-1])["calls"]


def run_with_agent(sandbox, fault: str, exporters: str = "jsonl") -> tuple:
    sandbox.write("iso_app.py", APP)
    proc = sandbox.ok(["python", "iso_app.py"], env=sandbox.env(FAULT=fault, AUTOINSTR_EXPORTER=exporters))
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    warnings = [line for line in proc.stderr.splitlines() if line.startswith("autoinstr warning")]
    return result["calls"], result.get("stats", {}), warnings, proc.stderr


def test_baseline_is_meaningful(baseline):
    assert baseline["db"][0] == "ok" and baseline["db"][1] == [[2, "x2"], [3, "x3"], [4, "x4"]]
    assert baseline["db_error"][:2] == ["raised", "sqlite3.OperationalError"]
    assert baseline["requests_refused"][:2] == ["raised", "requests.exceptions.ConnectionError"]
    assert [row[0] for row in baseline["bottle"][1]] == ["200 OK", "500 Internal Server Error", "404 Not Found"]


def test_odd_attribute_values_are_encoded_and_nothing_else_is_lost(sandbox, baseline):
    calls, stats, warnings, stderr = run_with_agent(sandbox, "", exporters="local,jsonl")
    assert calls == baseline
    assert warnings == [], stderr
    assert stats["spans_dropped"] == {"queue_full": 0, "export_failed": 0, "conversion": 0, "shutdown": 0}
    for spans in (sandbox.jsonl_spans(), sandbox.store_spans()):
        odd = sandbox.one(spans, "odd")
        attrs = odd["attributes"]
        assert attrs["raw"] == "\\xff\\xfe\x00bad" and attrs["more"] == "\\x80"  # bytes: escaped, not lost
        assert attrs["surrogate"] == "\\udc80x"  # a lone surrogate cannot be UTF-8: escaped
        assert isinstance(attrs["loop"], list) and isinstance(attrs["d"], str)  # recursion cut, as text
        assert "odd" in attrs  # str() raising: a placeholder, the span kept
        assert sandbox.one(spans, "plain")["attributes"] == {"n": 1}
        names = {s["name"] for s in spans}
        assert {"SELECT t", "GET", "GET 127.0.0.1"} <= names or "SELECT t" in names, names


# an integration's wrapper raising: (fault spec, the integrations it disables)
WRAPPER_FAULTS = {
    "sqlite3-before": ("wrapper:before:autoinstr.integrations.sqlite3._connect", ["sqlite3"]),
    "sqlite3-after": ("wrapper:after:autoinstr.integrations.sqlite3._connect", ["sqlite3"]),
    "futures-before": ("wrapper:before:autoinstr.integrations.futures._submit", ["futures"]),
    "bottle-before": ("wrapper:before:autoinstr.integrations.bottle._match:autoinstr.integrations.bottle."
                      "_make_callback", ["bottle"]),
    "bottle-after": ("wrapper:after:autoinstr.integrations.bottle._match:autoinstr.integrations.bottle."
                     "_make_callback", ["bottle"]),
}


@pytest.mark.parametrize("case", sorted(WRAPPER_FAULTS))
def test_integration_wrapper_raising_is_disabled_with_one_warning(sandbox, baseline, case):
    fault, integrations = WRAPPER_FAULTS[case]
    calls, stats, warnings, stderr = run_with_agent(sandbox, fault)
    assert calls == baseline, {k: (baseline[k], calls[k]) for k in baseline if calls.get(k) != baseline[k]}
    assert len(warnings) == len(integrations), stderr
    for name, line in zip(integrations, warnings):
        assert "integration %s failed at run time" % name in line and "disabled" in line, line
    spans = sandbox.jsonl_spans()
    names = {s["name"] for s in spans}
    assert "GET 127.0.0.1" in names or "GET" in names, names  # the HTTP integrations go on
    assert "odd" in names and "plain" in names
    if "sqlite3" in integrations:
        assert not any(s["name"].startswith(("SELECT", "INSERT", "CREATE")) for s in spans), names
    else:
        assert "SELECT t" in names, names


def test_exporter_raising_is_counted_with_one_warning_and_the_other_keeps_exporting(sandbox, baseline):
    """An OSError is a failing destination, not a bug: retried with backoff, then the batch is dropped and
    counted, with exactly one warning (at the latest when the exit flush gives up on it), never disabled."""
    calls, stats, warnings, stderr = run_with_agent(sandbox, "exporter", exporters="local,jsonl")
    assert calls == baseline
    assert len(warnings) == 1, stderr
    assert "exporter local failed (OSError: injected" in warnings[0] and "dropping a batch" in warnings[0], stderr
    assert "disabled" not in warnings[0], stderr
    assert "injected: the local exporter fails" in stats["exporters"]["local"]["last_error"]
    assert stats["exporters"]["local"]["errors"] >= 1 and stats["exporters"]["local"]["exported"] == 0
    assert stats["exporters"]["jsonl"]["exported"] == stats["spans_sampled"] > 0
    spans = sandbox.jsonl_spans()
    assert len(spans) == stats["spans_sampled"]
    assert "odd" in {s["name"] for s in spans}
    store = sqlite3.connect(sandbox.store)
    try:
        stored = store.execute("SELECT count(*) FROM spans").fetchone()[0]
    except sqlite3.Error:
        stored = 0
    finally:
        store.close()
    assert stored == 0


SPAN_END_FAULT = '''
from autoinstr.trace import span as _span_module


def _fails(*args, **kwargs):
    raise RuntimeError("injected: handing a finished span over fails")


# every span end, of every integration and of the public API, hands its span (or its local trace) over
# here: the agent failing there, at every single span end
_span_module.Sink.submit = staticmethod(_fails)
_span_module.Sink.submit_one = staticmethod(_fails)
'''


def test_agent_failing_at_every_span_end_never_reaches_the_app(sandbox, baseline):
    sandbox.write("sitecustomize_fault.py", SPAN_END_FAULT)
    app = APP.replace("out = {}\n", "import sitecustomize_fault  # noqa\nout = {}\n", 1)
    sandbox.write("iso_app.py", app)
    proc = sandbox.ok(["python", "iso_app.py"], env=sandbox.env(AUTOINSTR_EXPORTER="jsonl"))
    calls = json.loads(proc.stdout.strip().splitlines()[-1])["calls"]
    assert calls == baseline, {k: calls[k] for k in baseline if calls.get(k) != baseline[k]}


def test_exporter_with_a_bug_is_disabled_with_one_warning_and_the_other_keeps_exporting(sandbox, baseline):
    """A TypeError is the exporter's own bug, not a failing destination: called once, then disabled."""
    calls, stats, warnings, stderr = run_with_agent(sandbox, "exporter-bug", exporters="local,jsonl")
    assert calls == baseline
    assert len(warnings) == 1 and "exporter local failed" in warnings[0] and "disabled" in warnings[0], stderr
    local = stats["exporters"]["local"]
    assert local["errors"] == 1 and local["exported"] == 0 and local["dropped"] == stats["spans_sampled"], local
    assert stats["exporters"]["jsonl"]["exported"] == stats["spans_sampled"] == len(sandbox.jsonl_spans()) > 0
