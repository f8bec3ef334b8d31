"""Concurrency: many requests at once, each running a plan hypothesis draws (nested spans, work on a thread
pool shared by all requests, asyncio tasks interleaving at every await, plain threads, a real HTTP call
back into the server): no span is ever attached to another request's trace.

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
