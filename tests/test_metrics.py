"""statsd metrics and the custom metrics API, in-process: names, batching, aggregation, the integrations'
hooks (sampled and unsampled), the no-op API, fork. Lines are read back from a UDP socket on 127.0.0.1."""

from __future__ import annotations

import os
import socket
import sqlite3

import pytest
from hypothesis import given
from hypothesis import strategies as st
from test_wsgi import environ_for, run

import autoinstr
from autoinstr import config, metrics
from autoinstr.export import statsd
from autoinstr.integrations import _dbapi, _http
from autoinstr.integrations._wsgi import set_route, wrap_app
from autoinstr.trace.span import Sampling, Span


class Receiver:
    """A UDP socket standing in for the statsd daemon."""

    def __init__(self) -> None:
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.bind(("127.0.0.1", 0))
        self.sock.settimeout(0.2)
        self.port = self.sock.getsockname()[1]
        self.datagrams: list = []
        self.last: list = []

    def lines(self) -> list:
        while True:
            try:
                data = self.sock.recv(65535)
            except (socket.timeout, BlockingIOError):
                break
            self.datagrams.append(data)
        out = [x for d in self.datagrams for x in d.decode().split("\n")]
        self.last, self.datagrams = self.datagrams, []
        return out

    def close(self) -> None:
        self.sock.close()


@pytest.fixture
def receiver():
    r = Receiver()
    yield r
    r.close()


@pytest.fixture
def on(receiver):
    """statsd enabled towards `receiver` (names only, prefix `t`, service `svc`); off again after."""
    statsd.disable()
    statsd.enable(("127.0.0.1", receiver.port), "svc", "t", "none", None)
    yield receiver
    statsd.disable()


@pytest.fixture
def dog(receiver):
    statsd.disable()
    statsd.enable(("127.0.0.1", receiver.port), "svc", "t", "dogstatsd", None)
    yield receiver
    statsd.disable()


def counters(lines: list) -> dict:
    out: dict = {}
    for text in lines:
        name, _, rest = text.partition(":")
        value, kind = rest.split("|")[:2]
        if kind == "c":
            out[name] = out.get(name, 0) + float(value)
    return out


def timers(lines: list, name: str) -> list:
    return [float(x.split(":")[1].split("|")[0]) for x in lines if x.startswith(name + ":") and "|ms" in x]


# ------------------------------------------------------------------------------------------- names

@pytest.mark.parametrize("raw, safe", [
    ("GET", "GET"), ("/users/<int:id>", "users_int_id"), ("a b.c", "a_b_c"), ("", "none"), ("...", "none"),
    ("héllo wörld", "h_llo_w_rld"), ("x" * 200, "x" * statsd.MAX_COMPONENT), ("db-1_a", "db-1_a"),
])
def test_components_are_graphite_safe(raw, safe):
    assert statsd.component(raw) == safe


def test_dotted_names_and_routes():
    assert statsd.dotted("orders.placed") == "orders.placed"
    assert statsd.dotted("..a..b c.") == "a.b_c"
    assert statsd.dotted("") == "none"
    assert statsd.route_component("/") == "root"
    assert statsd.route_component("") == "none"
    assert statsd.route_component("/api/v1/items/{id}") == "api_v1_items_id"


@given(st.text(max_size=300), st.lists(st.tuples(st.text(max_size=50), st.text(max_size=300)), max_size=4))
def test_any_name_and_tags_make_a_safe_line(name, tags):
    for dogstatsd in (False, True):
        statsd.Naming.dogstatsd = dogstatsd
        try:
            text = statsd.line(statsd.metric_name(statsd.dotted(name), tags), 1.5, "ms", 0.25)
        finally:
            statsd.Naming.dogstatsd = False
        base, _, rest = text.partition(":")
        parts = base.split(".")
        assert all(p and all(c.isascii() and (c.isalnum() or c in "_-") for c in p) for p in parts), base
        fields = rest.split("|")
        assert fields[0] == "1.5" and fields[1] == "ms" and fields[2] == "@0.25"
        if dogstatsd:
            assert fields[3].startswith("#") and len(fields) == 4
            for pair in fields[3][1:].split(","):
                assert ":" in pair and not any(c in pair for c in " \n|#,")
        else:
            assert len(fields) == 3
        assert "\n" not in text and " " not in text


def test_metric_names_in_both_modes():
    tags = [("route", "/users/<id>"), ("method", "GET"), ("status_class", "2xx")]
    assert statsd.metric_name("http.server.requests", tags) == "autoinstr.python.http.server.requests.users_id.GET.2xx"
    statsd.Naming.dogstatsd = True
    try:
        line = statsd.line(statsd.metric_name("http.server.requests", tags), 3, "c")
    finally:
        statsd.Naming.dogstatsd = False
    assert line == "autoinstr.http.server.requests:3|c|#service:python,route:/users/<id>,method:GET,status_class:2xx"


def test_numbers():
    assert statsd._number(3) == "3"
    assert statsd._number(1.5) == "1.5"
    assert statsd._number(2.0) == "2"
    assert statsd._number(1e-9) == "0"
    assert statsd._number(-0.0) == "0"
    assert statsd._number(123456.1234567) == "123456.123457"


# ----------------------------------------------------------------------------------------- batching

@given(st.lists(st.integers(1, 1500), max_size=200))
def test_batches_never_exceed_a_datagram_and_keep_every_line(sizes):
    lines = ["m%d:%s|c" % (i, "1" * n) for i, n in enumerate(sizes)]
    datagrams, dropped = statsd.batch(lines)
    assert all(len(d) <= statsd.MAX_DATAGRAM for d in datagrams)
    kept = [x for d in datagrams for x in d.decode().split("\n")]
    assert kept == [x for x in lines if len(x) <= statsd.MAX_DATAGRAM]
    assert dropped == len(lines) - len(kept)
    if len(datagrams) > 1:  # packed: no two neighbours would have fitted in one
        for a, b in zip(datagrams, datagrams[1:]):
            assert len(a) + 1 + len(b.split(b"\n")[0]) > statsd.MAX_DATAGRAM


def test_many_lines_go_in_few_full_datagrams(on):
    for i in range(300):
        metrics.increment("c%03d" % i)
    statsd.flush()
    on.lines()
    datagrams = on.last
    assert len(datagrams) >= 2 and all(len(d) <= 1432 for d in datagrams)
    assert all(len(d) > 1200 for d in datagrams[:-1])
    lines = [x for d in datagrams for x in d.decode().split("\n")]
    assert sum(1 for x in lines if x.startswith("t.svc.c")) == 300


# -------------------------------------------------------------------------------------- aggregation

def test_counts_errors_and_bounded_timer_samples(on):
    for i in range(1000):
        statsd._record(statsd._server, ("/a", "GET", 2), statsd._OTHER_SERVER, 1_000_000 + i, False)
    for _ in range(7):
        statsd._record(statsd._server, ("/a", "GET", 5), statsd._OTHER_SERVER, 5_000_000, True)
    assert len(statsd._server[("/a", "GET", 2)][1]) == statsd.TIMER_SAMPLES
    statsd.flush()
    lines = on.lines()
    c = counters(lines)
    assert c["t.svc.http.server.requests.a.GET.2xx"] == 1000
    assert c["t.svc.http.server.errors.a.GET.2xx"] == 0
    assert c["t.svc.http.server.requests.a.GET.5xx"] == 7
    assert c["t.svc.http.server.errors.a.GET.5xx"] == 7
    sampled = [x for x in lines if x.startswith("t.svc.http.server.duration.a.GET.2xx:")]
    assert len(sampled) == statsd.TIMER_SAMPLES
    assert all(x.endswith("|ms|@0.1") for x in sampled)  # 100 of 1000: statsd counts 1/0.1 each
    assert sorted(timers(lines, "t.svc.http.server.duration.a.GET.5xx")) == [5.0] * 7
    values = timers(lines, "t.svc.http.server.duration.a.GET.2xx")
    assert all(1.0 <= v < 1.001 for v in values)
    statsd.flush()  # nothing new
    assert not [x for x in on.lines() if x.startswith("t.svc.http")]


def test_increments_that_land_after_a_flush_are_sent_at_the_next(on):
    table = statsd._db
    statsd._record(table, ("sqlite", "SELECT"), statsd._OTHER_DB, 1000, False)
    statsd.flush()
    assert counters(on.lines())["t.svc.db.queries.sqlite.SELECT"] == 1
    # a request thread that fetched the table before the swap counts into it afterwards
    statsd._record(table, ("sqlite", "SELECT"), statsd._OTHER_DB, 1000, True)
    statsd.flush()
    c = counters(on.lines())
    assert c["t.svc.db.queries.sqlite.SELECT"] == 1 and c["t.svc.db.errors.sqlite.SELECT"] == 1
    statsd.flush()
    assert "t.svc.db.queries.sqlite.SELECT" not in counters(on.lines())
    # a key first made in a table after it was read: sent whole at the next flush, then no more
    table = statsd._db  # fetched by a request thread just before the flush swaps it out
    statsd.flush()
    statsd._record(table, ("sqlite", "DELETE"), statsd._OTHER_DB, 2_000_000, False)
    statsd.flush()
    lines = on.lines()
    assert counters(lines)["t.svc.db.queries.sqlite.DELETE"] == 1
    assert timers(lines, "t.svc.db.duration.sqlite.DELETE") == [2.0]
    statsd.flush()
    assert "t.svc.db.queries.sqlite.DELETE" not in counters(on.lines())


def test_distinct_keys_are_capped_overflow_folded_and_counted(on, monkeypatch):
    monkeypatch.setattr(statsd, "MAX_KEYS", 10)
    for i in range(25):
        statsd._record(statsd._client, ("host%d" % i,), statsd._OTHER_CLIENT, 1000, False)
    assert len(statsd._client) == 11
    assert statsd.stats()["keys_overflow"] == 15
    statsd.flush(final=True)
    lines = on.lines()
    c = counters(lines)
    assert c["t.svc.http.client.requests.other"] == 15
    assert sum(v for k, v in c.items() if k.startswith("t.svc.http.client.requests.")) == 25
    assert c["t.svc.agent.metrics_dropped"] == 15


def test_memory_is_bounded_per_interval(on):
    for i in range(20000):
        statsd._record(statsd._server, ("/r%d" % (i % 2000), "GET", 2), statsd._OTHER_SERVER, i, False)
    assert len(statsd._server) <= statsd.MAX_KEYS + 1
    assert all(len(e[1]) <= statsd.TIMER_SAMPLES for e in statsd._server.values())


# ----------------------------------------------------------------------------------- the hooks

def app(environ, start_response):
    path = environ["PATH_INFO"]
    if path.startswith("/users/"):
        set_route("/users/<id>", environ)
    if path == "/boom":
        raise RuntimeError("boom")
    status = "500 Internal Server Error" if path == "/fail" else "404 Not Found" if path == "/nope" else "200 OK"
    start_response(status, [("Content-Type", "text/plain")])
    return [b"ok"]


@pytest.mark.parametrize("ratio", [1.0, 0.0])
def test_server_requests_sampled_or_not(on, collected, ratio):
    Sampling.configure(ratio)
    traced = wrap_app(app)
    for path in ("/users/1", "/users/2", "/users/3", "/fail", "/nope", "/"):
        run(traced, environ_for(path))
    with pytest.raises(RuntimeError):
        run(traced, environ_for("/boom"))
    run(traced, environ_for("/", method="POST"))
    run(traced, environ_for("/", method="BREW"))
    statsd.flush()
    lines = on.lines()
    c = counters(lines)
    p = "t.svc.http.server."
    assert c[p + "requests.users_id.GET.2xx"] == 3
    assert c[p + "requests.none.GET.5xx"] == 2  # /fail and /boom (raised before start_response)
    assert c[p + "errors.none.GET.5xx"] == 2
    assert c[p + "requests.none.GET.4xx"] == 1 and c[p + "errors.none.GET.4xx"] == 0
    assert c[p + "requests.none.GET.2xx"] == 1
    assert c[p + "requests.none.POST.2xx"] == 1
    assert c[p + "requests.none.OTHER.2xx"] == 1
    assert sum(v for k, v in c.items() if k.startswith(p + "requests.")) == 9
    durations = timers(lines, p + "duration.users_id.GET.2xx")
    assert len(durations) == 3 and all(0 < d < 1000 for d in durations)
    assert len(collected) == (9 if ratio else 0)


def test_disabled_hooks_record_nothing(collected):
    statsd.disable()
    Sampling.configure(0.0)
    run(wrap_app(app), environ_for("/users/1"))
    assert statsd._server == {} and statsd._db == {}


def test_queries_sampled_or_not(on, collected):
    attrs = {"db.system": "sqlite"}
    conn = sqlite3.connect(":memory:")
    cur = conn.cursor()

    def query(sql):
        return _dbapi.run(attrs, "sqlite", sql, cur, cur.execute, sql)

    for ratio in (1.0, 0.0):
        Sampling.configure(ratio)
        query("CREATE TABLE IF NOT EXISTS t (x)")
        query("insert into t values (1)")
        query("  /* c */ SELECT * FROM t")
        query("WITH a AS (SELECT 1) SELECT * FROM a")
        with pytest.raises(sqlite3.OperationalError):
            query("SELECT * FROM missing")
        commit_attrs = dict(attrs, **{"db.operation.name": "commit"})
        _dbapi.run(commit_attrs, "commit", None, None, conn.commit)
    statsd.flush()
    lines = on.lines()
    c = counters(lines)
    p = "t.svc.db."
    assert c[p + "queries.sqlite.CREATE"] == 2
    assert c[p + "queries.sqlite.INSERT"] == 2
    assert c[p + "queries.sqlite.SELECT"] == 6
    assert c[p + "errors.sqlite.SELECT"] == 2
    assert c[p + "queries.sqlite.commit"] == 2
    assert len(timers(lines, p + "duration.sqlite.SELECT")) == 6


def test_untraced_queries_inside_an_unsampled_request_are_counted_once(on, collected):
    Sampling.configure(0.0)
    attrs = {"db.system": "sqlite"}
    calls = []

    def inner():
        calls.append(1)
        return _dbapi.run(attrs, "sqlite", "SELECT 1", None, lambda: None)

    with Span("request"):
        _dbapi.run(attrs, "sqlite", "UPDATE t SET x = 1", None, inner)  # executemany -> execute
    statsd.flush()
    c = counters(on.lines())
    assert c["t.svc.db.queries.sqlite.UPDATE"] == 1 and "t.svc.db.queries.sqlite.SELECT" not in c


def test_the_agents_own_queries_are_not_counted(on):
    from autoinstr.integrations import _suppressed, suppress_instrumentation

    Sampling.configure(0.0)
    token = _suppressed.set(True)
    try:
        _dbapi.run({"db.system": "sqlite"}, "sqlite", "SELECT 1", None, lambda: None)
    finally:
        _suppressed.reset(token)
    assert suppress_instrumentation
    assert statsd._db == {}


@pytest.mark.parametrize("ratio", [1.0, 0.0])
def test_outgoing_calls_sampled_or_not(on, collected, ratio):
    Sampling.configure(ratio)
    for url, status in (("http://api.example.com/a", 200), ("https://api.example.com:8443/b", 503),
                        ("http://10.0.0.1:81/", 404), ("http://10.0.0.1:81/", 302)):
        call = _http.Call("GET", url)
        call.respond(status)
        call.end()
        call.end()  # a second end does nothing
    failing = _http.Call("POST", "http://api.example.com/x")
    failing.fail(ConnectionError("refused"))
    statsd.flush()
    lines = on.lines()
    c = counters(lines)
    p = "t.svc.http.client."
    assert c[p + "requests.api_example_com"] == 3
    assert c[p + "requests.10_0_0_1"] == 2
    assert c[p + "errors.api_example_com"] == 2  # the 503 and the exception
    assert c[p + "errors.10_0_0_1"] == 1  # the 404
    assert len(timers(lines, p + "duration.api_example_com")) == 3
    assert len([s for batch in collected for s in batch]) == (5 if ratio else 0)


# ----------------------------------------------------------------------------------- custom metrics

def test_api_is_a_no_op_without_statsd():
    statsd.disable()
    assert metrics._sink is None
    assert metrics.increment("a") is None
    assert metrics.gauge("a", 1) is None
    assert metrics.timing("a", 1.0) is None
    assert metrics.histogram("a", 1, tag="x") is None
    assert metrics.timer("a") is metrics._NOOP_TIMER
    with metrics.timer("a") as t:
        pass
    assert t.elapsed_ms == 0.0

    @metrics.timed("f")
    def f(x):
        return x * 2

    @metrics.timed
    def g():
        raise ValueError("v")

    assert f(2) == 4 and f.__name__ == "f"
    with pytest.raises(ValueError):
        g()
    assert statsd._custom == {}
    assert autoinstr.metrics is metrics


def test_custom_metrics_aggregate_and_send(on):
    for _ in range(3):
        metrics.increment("orders.placed", country="fr")
    metrics.increment("orders.placed", 2.5, country="de")
    metrics.increment("orders placed!")
    metrics.gauge("queue.depth", 5)
    metrics.gauge("queue.depth", 7)
    metrics.gauge("temp", -3)
    metrics.timing("pay", 12.5)
    metrics.histogram("size", 3, shop="a b")
    metrics.increment("bad", float("nan"))

    @metrics.timed("work", kind="x")
    def work():
        return 1

    @metrics.timed()
    def bare():
        return 2

    assert work() == 1 and bare() == 2
    with metrics.timer("block") as t:
        pass
    assert t.elapsed_ms >= 0
    statsd.flush()
    lines = on.lines()
    assert "t.svc.orders.placed.fr:3|c" in lines
    assert "t.svc.orders.placed.de:2.5|c" in lines
    assert "t.svc.orders_placed:1|c" in lines
    assert "t.svc.queue.depth:7|g" in lines
    assert lines.index("t.svc.temp:0|g") + 1 == lines.index("t.svc.temp:-3|g")
    assert "t.svc.pay:12.5|ms" in lines
    assert "t.svc.size.a_b:3|ms" in lines  # plain statsd: a timer (DogStatsD: |h)
    assert not [x for x in lines if x.startswith("t.svc.bad")]
    assert len(timers(lines, "t.svc.work.x")) == 1 and len(timers(lines, "t.svc.block")) == 1
    assert [x for x in lines if ".test_metrics." in x and ".locals.bare:" in x]


def test_custom_timed_async(on):
    import asyncio

    @metrics.timed("co")
    async def co():
        await asyncio.sleep(0.01)
        return 3

    assert asyncio.run(co()) == 3
    statsd.flush()
    assert timers(on.lines(), "t.svc.co")[0] >= 9


def test_dogstatsd_tags(dog):
    metrics.increment("orders", country="fr", shop="a|b,c")
    metrics.histogram("size", 4)
    Sampling.configure(0.0)
    run(wrap_app(app), environ_for("/users/7"))
    statsd.flush()
    lines = dog.lines()
    assert "t.orders:1|c|#service:svc,country:fr,shop:a_b_c" in lines
    assert "t.size:4|h|#service:svc" in lines
    assert "t.http.server.requests:1|c|#service:svc,route:/users/<id>,method:GET,status_class:2xx" in lines
    assert [x for x in lines if x.startswith("t.http.server.duration:") and x.endswith(
        "|ms|#service:svc,route:/users/<id>,method:GET,status_class:2xx")]


def test_custom_keys_are_capped(on, monkeypatch):
    monkeypatch.setattr(statsd, "MAX_CUSTOM_KEYS", 5)
    for i in range(8):
        metrics.increment("k%d" % i)
    assert statsd.stats()["custom_dropped"] == 3


# -------------------------------------------------------------------------------- runtime, health

def test_runtime_and_health_metrics(on):
    import gc

    gc.collect()
    statsd.flush()
    lines = on.lines()
    names = {x.split(":")[0] for x in lines}
    for name in ("runtime.cpu.user", "runtime.cpu.system", "runtime.memory.rss", "runtime.threads", "runtime.fds",
                 "runtime.gc.collections.gen0", "runtime.gc.collections.gen2", "runtime.gc.pause",
                 "agent.spans_dropped", "agent.export_errors", "agent.metrics_dropped"):
        assert "t.svc." + name in names, name
    rss = [float(x.split(":")[1].split("|")[0]) for x in lines if x.startswith("t.svc.runtime.memory.rss:")][0]
    assert rss > 1_000_000
    statsd.flush()  # within RUNTIME_INTERVAL: no second sample
    assert not [x for x in on.lines() if ".runtime." in x]
    statsd._State.next_runtime = 0
    gc.collect()
    statsd.flush()
    lines = on.lines()
    assert [x for x in lines if x.startswith("t.svc.runtime.cpu.percent:")]
    assert counters(lines)["t.svc.runtime.gc.collections.gen2"] >= 1
    assert counters(lines)["t.svc.runtime.gc.pause"] > 0


def test_a_missing_server_costs_nothing():
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    sock.close()  # nobody listens there now
    statsd.disable()
    statsd.enable(("127.0.0.1", port), "svc", "t", "none", None)
    try:
        for _ in range(3):
            metrics.increment("x")
            statsd.flush()
        statsd.enable(("no-such-host.invalid", 8125), "svc", "t", "none", None)
        statsd._State.sock = None
        metrics.increment("x")
        statsd.flush()
        assert statsd.stats()["send_errors"] >= 1
    finally:
        statsd.disable()


def test_child_starts_with_empty_aggregates(on):
    metrics.increment("before.fork")
    statsd._record(statsd._server, ("/a", "GET", 2), statsd._OTHER_SERVER, 1000, False)
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child
        try:
            ok = statsd._server == {} and statsd._custom == {} and statsd._kicked is False
            os.write(write, b"1" if ok else b"0")
        finally:
            os._exit(0)
    os.close(write)
    assert os.read(read, 1) == b"1"
    os.waitpid(pid, 0)
    os.close(read)
    assert statsd._custom and statsd._server


# ---------------------------------------------------------------------------------------- config

def test_configuration():
    cfg = config.Config({"AUTOINSTR_STATSD": "127.0.0.1:8125"}, emit_warnings=False)
    assert (cfg.statsd, cfg.statsd_prefix, cfg.statsd_tags) == (("127.0.0.1", 8125), "autoinstr", "none")
    cfg = config.Config({"AUTOINSTR_STATSD_PREFIX": "apps.shop-1", "AUTOINSTR_STATSD_TAGS": "DogStatsD"},
                        emit_warnings=False)
    assert (cfg.statsd_prefix, cfg.statsd_tags, cfg.warnings) == ("apps.shop-1", "dogstatsd", [])
    cfg = config.Config({"AUTOINSTR_STATSD_PREFIX": "my app..x", "AUTOINSTR_STATSD_TAGS": "influx"},
                        emit_warnings=False)
    assert cfg.statsd_prefix == "my_app.x" and cfg.statsd_tags == "none"
    assert len(cfg.warnings) == 2 and all(w.startswith("AUTOINSTR_STATSD_") for w in cfg.warnings)
    assert ("AUTOINSTR_STATSD_TAGS", "none") in cfg.items()


@pytest.mark.parametrize("sql, op", [
    ("select 1", "SELECT"), ("  -- hi\n insert into t values (1)", "INSERT"), ("/* x */ (SELECT 1)", "SELECT"),
    ("WITH a AS (SELECT 1), b AS (SELECT 2) DELETE FROM t WHERE x IN (SELECT * FROM a)", "DELETE"),
    ("with recursive r(n) as (select 1 union all select n+1 from r) select * from r", "SELECT"),
    ("", "other"), (b"UPDATE t SET x = 1", "UPDATE"), ("begin", "BEGIN"),
])
def test_operations(sql, op):
    assert statsd.operation_of(sql) == op
