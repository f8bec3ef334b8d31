"""Concurrency: many requests at once, each running a plan hypothesis draws (nested spans, work on a thread
pool shared by all requests, asyncio tasks interleaving at every await, plain threads, a real HTTP call
back into the server): no span is ever attached to another request's trace. And many requests handled as
tasks of one event loop (as an async server runs them), interleaving nested spans, sub-tasks and real HTTP
calls (httpx's and aiohttp's async clients) into a traced server: the same holds, across both processes.

Each request arrives with a traceparent of its own trace id; every span the app makes for it carries the
request's id. Spans in the request's context must be in its trace; spans made on a plain thread (no
context travels there) start traces of their own, which no other request's spans may share.
"""

from __future__ import annotations

import collections
import http.client
import json
import os
import threading
import time
import urllib.parse
import uuid

import pytest
from fleet import Server

hypothesis = pytest.importorskip("hypothesis")
from hypothesis import HealthCheck, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

APP = '''
import asyncio, http.client, json, os, threading, urllib.parse
from concurrent.futures import ThreadPoolExecutor
import autoinstr

POOL = ThreadPoolExecutor(4)  # shared by every request: its threads must not carry one request's context


def nested(req, depth, where):
    if depth <= 0:
        return
    with autoinstr.span("nested", req=req, where=where, depth=depth):
        nested(req, depth - 1, where)


async def task(req, depth, i):
    for d in range(depth):
        with autoinstr.span("task", req=req, task=i, depth=d):
            await asyncio.sleep(0)  # every await lets the other tasks run, interleaved


async def tasks(req, counts):
    await asyncio.gather(*(task(req, depth, i) for i, depth in enumerate(counts)))


def run(req, plan, port):
    for step, arg in plan:
        if step == "span":
            nested(req, arg, "inline")
        elif step == "pool":
            POOL.submit(nested, req, arg, "pool").result()
        elif step == "tasks":
            asyncio.run(tasks(req, arg))
        elif step == "thread":  # no context travels to a plain thread: a trace of its own
            t = threading.Thread(target=nested, args=(req + ":detached", arg, "thread"))
            t.start()
            t.join()
        elif step == "call":
            conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
            conn.request("GET", "/leaf?req=" + urllib.parse.quote(req))
            conn.getresponse().read()
            conn.close()


def app(environ, start_response):
    query = urllib.parse.parse_qs(environ.get("QUERY_STRING") or "")
    req = query["req"][0]
    if environ["PATH_INFO"] == "/leaf":
        nested(req, 2, "leaf")
    else:
        run(req, json.loads(query["plan"][0]), int(environ["SERVER_PORT"]))
    body = req.encode()
    start_response("200 OK", [("Content-Type", "text/plain"), ("Content-Length", str(len(body)))])
    return [body]
'''


class Member:
    name = "concurrency"
    agent = True

    def argv(self, port: int, bindir: str) -> list:
        return [os.path.join(bindir, "waitress-serve"), "--listen=127.0.0.1:%d" % port, "--threads=12", "app:app"]


@pytest.fixture(scope="module")
def server(sandbox_factory):
    box = sandbox_factory("concurrency")
    box.write("app.py", APP)
    srv = Server(box, Member())
    srv.wait_ready(time.monotonic() + 30)
    yield srv
    srv.stop()
    srv.reap(time.monotonic() + 15)


def read_spans(path: str) -> list:
    if not os.path.exists(path):
        return []
    with open(path, encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.strip()]


steps = st.one_of(
    st.tuples(st.just("span"), st.integers(1, 4)),
    st.tuples(st.just("pool"), st.integers(1, 3)),
    st.tuples(st.just("tasks"), st.lists(st.integers(1, 4), min_size=1, max_size=5)),
    st.tuples(st.just("thread"), st.integers(1, 2)),
    st.tuples(st.just("call"), st.just(0)),
)
plans = st.lists(st.lists(steps, min_size=1, max_size=5), min_size=2, max_size=10)


@settings(max_examples=int(os.environ.get("AUTOINSTR_CONCURRENCY_EXAMPLES", "12")), deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(plans=plans)
def test_no_span_is_attached_to_another_requests_trace(server, plans):
    batch = uuid.uuid4().hex[:8]
    requests = []
    for i, plan in enumerate(plans):
        requests.append({"req": "%s-%d" % (batch, i), "trace_id": uuid.uuid4().hex, "plan": plan})

    def send(r: dict) -> None:
        conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=30)
        query = urllib.parse.urlencode({"req": r["req"], "plan": json.dumps(r["plan"])})
        conn.request("GET", "/work?" + query, headers={"traceparent": "00-%s-%s-01" % (r["trace_id"], "ab" * 8)})
        resp = conn.getresponse()
        assert resp.read().decode() == r["req"]
        conn.close()

    threads = [threading.Thread(target=send, args=(r,)) for r in requests]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    expected_traces = {r["trace_id"] for r in requests}
    deadline = time.monotonic() + 20
    while True:
        spans = [s for s in read_spans(server.jsonl) if str(s["attributes"].get("req", "")).startswith(batch)
                 or s["trace_id"] in expected_traces]
        server_spans = {s["trace_id"] for s in spans if s["kind"] == "server" and s["parent_id"] == "ab" * 8}
        if server_spans >= expected_traces or time.monotonic() > deadline:
            break
        time.sleep(0.2)
    time.sleep(0.3)  # the last flush of the spans that ended with the requests
    spans = [s for s in read_spans(server.jsonl) if str(s["attributes"].get("req", "")).startswith(batch)
             or s["trace_id"] in expected_traces]
    trace_of = {r["req"]: r["trace_id"] for r in requests}
    owners = collections.defaultdict(set)  # trace id -> requests whose spans it holds
    for s in spans:
        req = str(s["attributes"].get("req", ""))
        if req.endswith(":detached"):
            owners[s["trace_id"]].add(req)
            assert s["trace_id"] not in expected_traces, ("a plain thread's span joined a request's trace", s)
        elif req:
            assert s["trace_id"] == trace_of[req], ("span attached to another request's trace", s)
    for trace_id, reqs in owners.items():
        assert len(reqs) == 1, ("detached spans of several requests share a trace", trace_id, reqs)
    # and nothing is missing: every planned span arrived
    want = collections.Counter()
    for r in requests:
        for step, arg in r["plan"]:
            if step in ("span", "pool"):
                want[r["req"]] += arg
            elif step == "tasks":
                want[r["req"]] += sum(arg)
            elif step == "call":
                want[r["req"]] += 2
            elif step == "thread":
                want[r["req"] + ":detached"] += arg
    got = collections.Counter(str(s["attributes"].get("req")) for s in spans if s["attributes"].get("req"))
    assert got == want, (got - want, want - got)
    leaf_servers = [s for s in spans if s["kind"] == "server" and s["trace_id"] in expected_traces
                    and s["parent_id"] != "ab" * 8]
    calls = sum(1 for r in requests for step, _ in r["plan"] if step == "call")
    assert len(leaf_servers) == calls


# ------------------------------------------------------------------ one event loop, many requests as tasks

LOOP_SCRIPT = '''
import asyncio, json, sys
import aiohttp, httpx
import autoinstr


def nested(req, depth, where):
    if depth <= 0:
        return
    with autoinstr.span("nested", req=req, where=where, depth=depth):
        nested(req, depth - 1, where)


async def sub(req, depth):
    for d in range(depth):
        with autoinstr.span("sub", req=req, depth=d):
            await asyncio.sleep(0)


async def handle(req, plan, leaf, clients, traces):
    with autoinstr.span("request", kind="server", req=req) as root:
        traces[req] = root.context.trace_id_hex
        for step, arg in plan:
            if step == "span":
                nested(req, arg, "inline")
            elif step == "await":  # a span open across awaits, while the other requests' tasks run
                with autoinstr.span("across", req=req):
                    for _ in range(arg):
                        await asyncio.sleep(0)
            elif step == "gather":
                await asyncio.gather(*(sub(req, d) for d in arg))
            elif step == "httpx":
                r = await clients["httpx"].get(leaf, params={"req": req})
                assert r.text == req
            elif step == "aiohttp":
                async with clients["aiohttp"].get(leaf, params={"req": req}) as r:
                    assert await r.text() == req


async def main(requests, leaf):
    traces = {}
    async with httpx.AsyncClient() as hx, aiohttp.ClientSession() as aio:
        clients = {"httpx": hx, "aiohttp": aio}
        await asyncio.gather(*(handle(r["req"], r["plan"], leaf, clients, traces) for r in requests))
    return traces


requests, leaf = json.loads(sys.argv[1]), sys.argv[2]
print("TRACES " + json.dumps(asyncio.run(main(requests, leaf))))
autoinstr.flush(10)
'''

loop_steps = st.one_of(
    st.tuples(st.just("span"), st.integers(1, 3)),
    st.tuples(st.just("await"), st.integers(1, 4)),
    st.tuples(st.just("gather"), st.lists(st.integers(1, 3), min_size=1, max_size=4)),
    st.tuples(st.just("httpx"), st.just(0)),
    st.tuples(st.just("aiohttp"), st.just(0)),
)
loop_plans = st.lists(st.lists(loop_steps, min_size=1, max_size=5), min_size=2, max_size=12)


@settings(max_examples=int(os.environ.get("AUTOINSTR_CONCURRENCY_EXAMPLES", "12")), deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(plans=loop_plans)
def test_requests_sharing_one_event_loop_never_share_a_trace(server, sandbox_factory, plans):
    box = sandbox_factory("loop")
    script = box.write("loop.py", LOOP_SCRIPT)
    batch = uuid.uuid4().hex[:8]
    requests = [{"req": "%s-%d" % (batch, i), "plan": plan} for i, plan in enumerate(plans)]
    leaf = "http://127.0.0.1:%d/leaf" % server.port
    done = box.run(["python", script, json.dumps(requests), leaf], env=box.env(AUTOINSTR_EXPORTER="jsonl"),
                   service="loop", timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    line = [x for x in done.stdout.splitlines() if x.startswith("TRACES ")][-1]
    trace_of = json.loads(line[len("TRACES "):])
    assert sorted(trace_of) == sorted(r["req"] for r in requests)
    assert len(set(trace_of.values())) == len(requests)  # a trace of its own for each request
    mine = [s for s in read_spans(box.jsonl) if str(s["attributes"].get("req", "")).startswith(batch)]
    calls = sum(1 for r in requests for step, _ in r["plan"] if step in ("httpx", "aiohttp"))
    deadline = time.monotonic() + 20
    while True:  # the leaf's spans, in the server's own file
        leaf_spans = [s for s in read_spans(server.jsonl) if str(s["attributes"].get("req", "")).startswith(batch)]
        if len(leaf_spans) >= 2 * calls or time.monotonic() > deadline:
            break
        time.sleep(0.2)
    for s in mine + leaf_spans:
        assert s["trace_id"] == trace_of[s["attributes"]["req"]], ("span attached to another request's trace", s)
    want = collections.Counter()
    for r in requests:
        n = 1  # the request's own span
        for step, arg in r["plan"]:
            n += {"span": arg, "await": 1, "gather": sum(arg) if step == "gather" else 0}.get(step, 0)
        want[r["req"]] = n
    assert collections.Counter(s["attributes"]["req"] for s in mine) == want
    assert collections.Counter(s["attributes"]["req"] for s in leaf_spans) == collections.Counter(
        {r["req"]: 2 * sum(1 for step, _ in r["plan"] if step in ("httpx", "aiohttp")) for r in requests
         if any(step in ("httpx", "aiohttp") for step, _ in r["plan"])})
    # each call: a client span in the request's trace, the parent of the leaf's server span
    clients = {s["span_id"]: s for s in read_spans(box.jsonl) if s["kind"] == "client"
               and s["trace_id"] in set(trace_of.values())}
    leaf_servers = [s for s in read_spans(server.jsonl) if s["kind"] == "server"
                    and s["trace_id"] in set(trace_of.values())]
    assert len(clients) == calls and len(leaf_servers) == calls
    for s in leaf_servers:
        assert s["parent_id"] in clients and clients[s["parent_id"]]["trace_id"] == s["trace_id"]
