"""Custom spans end to end: what a script does with the API, read back from the SQLite store (through
`autoinstr spans --json`) and from the jsonl file; context across asyncio, thread pools and processes;
sampling; the record format and `autoinstr report`."""

from __future__ import annotations

import json
import os
import re
import time

import pytest

HEX32 = re.compile(r"[0-9a-f]{32}\Z")
HEX16 = re.compile(r"[0-9a-f]{16}\Z")

API_SCRIPT = r"""
import asyncio, os, sys
from concurrent.futures import ThreadPoolExecutor
import autoinstr

class PaymentDeclined(Exception):
    pass

# -- parent / child links and attribute types
with autoinstr.span("root", kind="server", route="/checkout") as root:
    with autoinstr.span("child", kind="client") as child:
        with autoinstr.span("grandchild"):
            pass
        assert autoinstr.current_span() is child
    assert autoinstr.current_span() is root
    with autoinstr.span("attrs", i=42, f=1.5, f2=2.0, b=True, b0=False, s="text", neg=-7,
                        l=[1, 2, 3], ls=["a", "b"], lf=[0.5, 1.5], lb=[True, False]) as s:
        s.set_attribute("late.int", 7)
        s.set_attribute("late.str", "later")
        s.set_attributes({"many.a": 1, "many.b": "two"})
        s.add_event("checkpoint", {"step": 3})
assert autoinstr.current_span() is None

# -- exceptions
try:
    with autoinstr.span("boom"):
        raise ValueError("bad thing happened")
except ValueError:
    pass

def charge():
    raise PaymentDeclined("card 4242 declined")

try:
    with autoinstr.span("declined"):
        charge()
except PaymentDeclined:
    pass

with autoinstr.span("recorded") as s:
    try:
        1 / 0
    except ZeroDivisionError as exc:
        s.record_exception(exc)

with autoinstr.span("status-only") as s:
    s.set_status("error", "went wrong")

# -- @traced on plain, named, async and generator functions
@autoinstr.traced
def plain(x):
    with autoinstr.span("plain-inner"):
        return x * 2

@autoinstr.traced("named-op", component="billing")
def named():
    return "n"

@autoinstr.traced()
def empty_parens():
    return "e"

@autoinstr.traced
async def fetch(i):
    await asyncio.sleep(0.01)
    with autoinstr.span("fetch-inner", i=i):
        await asyncio.sleep(0)
    return i

@autoinstr.traced
def numbers(n):
    for i in range(n):
        with autoinstr.span("gen-item", i=i):
            pass
        yield i

@autoinstr.traced
def failing_gen():
    yield 1
    raise KeyError("gen broke")

with autoinstr.span("traced-root"):
    assert plain(21) == 42
    assert named() == "n"
    assert empty_parens() == "e"
    got = []
    for value in numbers(3):
        with autoinstr.span("consumer-step", value=value):  # the caller's span, not the generator's
            got.append(value)
    assert got == [0, 1, 2]
    try:
        list(failing_gen())
    except KeyError:
        pass

@autoinstr.traced
async def agen(n):
    for i in range(n):
        await asyncio.sleep(0)
        with autoinstr.span("agen-item", i=i):
            pass
        yield i

class Cart:
    @autoinstr.traced
    def total(self):
        return 3

# -- asyncio: gather and tasks keep their parent
async def main():
    with autoinstr.span("agen-root"):
        assert [i async for i in agen(2)] == [0, 1]
        assert Cart().total() == 3
    with autoinstr.span("gather-root"):
        assert await asyncio.gather(fetch(1), fetch(2)) == [1, 2]
    with autoinstr.span("task-root"):
        task = asyncio.create_task(fetch(3))
        await task
    with autoinstr.span("executor-root"):
        loop = asyncio.get_running_loop()
        await loop.run_in_executor(None, pool_work, 99)

# -- thread pools keep their parent
def pool_work(i):
    with autoinstr.span("pool-work", i=i):
        return i

with autoinstr.span("pool-root"):
    with ThreadPoolExecutor(max_workers=2) as ex:
        assert list(ex.map(pool_work, range(4))) == [0, 1, 2, 3]
        assert ex.submit(pool_work, 10).result() == 10
with ThreadPoolExecutor(max_workers=1) as ex:  # no span around: a root of its own
    ex.submit(pool_work, 20).result()

asyncio.run(main())
print("api done")
"""


@pytest.fixture(scope="module")
def api_spans(sandbox_factory):
    """Run API_SCRIPT once under the launcher with both the local store and jsonl; both record lists."""
    box = sandbox_factory("api")
    box.write("api_app.py", API_SCRIPT)
    proc = box.ok(["python", "api_app.py"], env=box.env(AUTOINSTR_EXPORTER="local,jsonl"))
    assert proc.stdout == "api done\n"
    assert proc.stderr == ""
    return box, box.store_spans(), box.jsonl_spans()


def _index(spans):
    return {s["span_id"]: s for s in spans}


def test_store_and_jsonl_hold_the_same_spans(api_spans):
    box, stored, lines = api_spans
    box.assert_unique(stored)
    box.assert_unique(lines)
    assert len(stored) == len(lines) == 43
    by_id = {(s["trace_id"], s["span_id"]): s for s in stored}
    assert by_id == {(s["trace_id"], s["span_id"]): s for s in lines}


def test_parent_child_links(api_spans):
    box, stored, _ = api_spans
    root, child, grand = (box.one(stored, n) for n in ("root", "child", "grandchild"))
    attrs = box.one(stored, "attrs")
    assert root["parent_id"] is None
    assert child["parent_id"] == root["span_id"]
    assert grand["parent_id"] == child["span_id"]
    assert attrs["parent_id"] == root["span_id"]
    assert root["trace_id"] == child["trace_id"] == grand["trace_id"] == attrs["trace_id"]
    assert (root["kind"], child["kind"], grand["kind"]) == ("server", "client", "internal")
    assert root["attributes"] == {"route": "/checkout"}
    # a child lies within its parent
    for parent, kid in ((root, child), (child, grand)):
        assert parent["start_ns"] <= kid["start_ns"]
        assert kid["start_ns"] + kid["duration_ns"] <= parent["start_ns"] + parent["duration_ns"]
    # separate top-level blocks are separate traces
    roots = [s for s in stored if s["parent_id"] is None]
    assert len({s["trace_id"] for s in roots}) == len(roots)


def test_attribute_types_are_preserved(api_spans):
    box, stored, lines = api_spans
    for spans in (stored, lines):
        a = box.one(spans, "attrs")["attributes"]
        expected = {"i": 42, "f": 1.5, "f2": 2.0, "b": True, "b0": False, "s": "text", "neg": -7,
                    "l": [1, 2, 3], "ls": ["a", "b"], "lf": [0.5, 1.5], "lb": [True, False],
                    "late.int": 7, "late.str": "later", "many.a": 1, "many.b": "two"}
        assert a == expected
        for key, value in expected.items():
            assert type(a[key]) is type(value), (key, a[key])
        assert type(a["f2"]) is float
        assert [type(x) for x in a["lb"]] == [bool, bool]
        events = box.one(spans, "attrs")["events"]
        assert [e["name"] for e in events] == ["checkpoint"]
        assert events[0]["attributes"] == {"step": 3}
        assert isinstance(events[0]["time_ns"], int)


def test_exceptions_make_error_spans_with_an_event_and_stack(api_spans):
    box, stored, _ = api_spans
    boom = box.one(stored, "boom")
    assert boom["status"] == "error"
    assert boom["attributes"]["error.type"] == "ValueError"
    assert boom["attributes"]["exception.message"] == "bad thing happened"
    (event,) = boom["events"]
    assert event["name"] == "exception"
    assert event["attributes"]["exception.type"] == "ValueError"
    assert event["attributes"]["exception.message"] == "bad thing happened"
    stack = event["attributes"]["exception.stacktrace"]
    assert "Traceback" in stack and "ValueError: bad thing happened" in stack and "api_app.py" in stack

    declined = box.one(stored, "declined")
    assert declined["status"] == "error"
    assert declined["attributes"]["error.type"].endswith("PaymentDeclined")
    assert declined["attributes"]["exception.message"] == "card 4242 declined"
    assert "in charge" in declined["events"][0]["attributes"]["exception.stacktrace"]

    recorded = box.one(stored, "recorded")
    assert recorded["status"] == "error"
    assert recorded["attributes"]["error.type"] == "ZeroDivisionError"
    assert [e["name"] for e in recorded["events"]] == ["exception"]

    status_only = box.one(stored, "status-only")
    assert status_only["status"] == "error"
    assert status_only["attributes"]["exception.message"] == "went wrong"

    ok = [s for s in stored if s["name"] not in ("boom", "declined", "recorded", "status-only", "failing_gen")]
    assert {s["status"] for s in ok} == {"ok"}


def test_traced_functions(api_spans):
    box, stored, _ = api_spans
    troot = box.one(stored, "traced-root")
    plain, named, empty = (box.one(stored, n) for n in ("plain", "named-op", "empty_parens"))
    for s in (plain, named, empty):
        assert s["parent_id"] == troot["span_id"]
        assert s["trace_id"] == troot["trace_id"]
    assert named["attributes"] == {"component": "billing"}
    assert box.one(stored, "plain-inner")["parent_id"] == plain["span_id"]

    gen = box.one(stored, "numbers")
    assert gen["parent_id"] == troot["span_id"]
    items = [s for s in stored if s["name"] == "gen-item"]
    assert sorted(s["attributes"]["i"] for s in items) == [0, 1, 2]
    assert {s["parent_id"] for s in items} == {gen["span_id"]}
    steps = [s for s in stored if s["name"] == "consumer-step"]
    assert len(steps) == 3
    assert {s["parent_id"] for s in steps} == {troot["span_id"]}, "the caller's spans are not the generator's"
    # the generator span covers its whole iteration
    assert gen["start_ns"] + gen["duration_ns"] >= max(s["start_ns"] + s["duration_ns"] for s in items)

    failing = box.one(stored, "failing_gen")
    assert failing["status"] == "error"
    assert failing["attributes"]["error.type"] == "KeyError"


def test_traced_async_generator_and_method(api_spans):
    box, stored, _ = api_spans
    agen_root, agen = box.one(stored, "agen-root"), box.one(stored, "agen")
    assert agen["parent_id"] == agen_root["span_id"]
    items = [s for s in stored if s["name"] == "agen-item"]
    assert sorted(s["attributes"]["i"] for s in items) == [0, 1]
    assert {s["parent_id"] for s in items} == {agen["span_id"]}
    assert box.one(stored, "Cart.total")["parent_id"] == agen_root["span_id"]


def test_asyncio_gather_and_tasks_keep_their_parent(api_spans):
    box, stored, _ = api_spans
    fetches = [s for s in stored if s["name"] == "fetch"]
    inners = {s["attributes"]["i"]: s for s in stored if s["name"] == "fetch-inner"}
    assert sorted(inners) == [1, 2, 3]
    fetch_of = {}
    for f in fetches:
        kids = [s for s in inners.values() if s["parent_id"] == f["span_id"]]
        assert len(kids) == 1, "each fetch span has its own inner span"
        fetch_of[kids[0]["attributes"]["i"]] = f
    gather_root, task_root = box.one(stored, "gather-root"), box.one(stored, "task-root")
    assert fetch_of[1]["parent_id"] == fetch_of[2]["parent_id"] == gather_root["span_id"]
    assert fetch_of[3]["parent_id"] == task_root["span_id"]
    assert fetch_of[1]["trace_id"] == fetch_of[2]["trace_id"] == gather_root["trace_id"]
    # gathered coroutines overlap in time
    a, b = fetch_of[1], fetch_of[2]
    assert a["start_ns"] < b["start_ns"] + b["duration_ns"] and b["start_ns"] < a["start_ns"] + a["duration_ns"]


def test_thread_pool_work_keeps_its_parent(api_spans):
    box, stored, _ = api_spans
    pool_root = box.one(stored, "pool-root")
    work = {s["attributes"]["i"]: s for s in stored if s["name"] == "pool-work"}
    assert sorted(work) == [0, 1, 2, 3, 10, 20, 99]
    for i in (0, 1, 2, 3, 10):
        assert work[i]["parent_id"] == pool_root["span_id"], i
        assert work[i]["trace_id"] == pool_root["trace_id"]
    assert work[20]["parent_id"] is None
    executor_root = box.one(stored, "executor-root")
    assert work[99]["parent_id"] == executor_root["span_id"]


# --------------------------------------------------------------------------- propagation between processes

PRODUCER = """
import json, os, subprocess, sys
import autoinstr
with autoinstr.span("produce", kind="producer") as s:
    headers = autoinstr.inject({})
    print(json.dumps({"headers": headers, "trace_id": "%032x" % s.trace_id, "span_id": "%016x" % s.span_id}),
          flush=True)
    subprocess.run([sys.executable, "consumer.py", "argv", json.dumps(headers)], check=True)
    subprocess.run([sys.executable, "consumer.py", "stdin"], input=json.dumps(headers), text=True, check=True)
"""

CONSUMER = """
import json, sys
import autoinstr
headers = json.loads(sys.argv[2] if sys.argv[1] == "argv" else sys.stdin.read())
ctx = autoinstr.extract(headers)
with autoinstr.span("consume", kind="consumer", parent=ctx, via=sys.argv[1]):
    with autoinstr.span("consume-step"):
        pass
"""


def test_inject_extract_across_processes(sandbox):
    sandbox.write("producer.py", PRODUCER)
    sandbox.write("consumer.py", CONSUMER)
    proc = sandbox.ok(["python", "producer.py"], env=sandbox.env(AUTOINSTR_EXPORTER="local,jsonl"))
    sent = json.loads(proc.stdout.splitlines()[0])
    tp = sent["headers"]["traceparent"]
    assert tp == "00-{}-{}-01".format(sent["trace_id"], sent["span_id"])

    for spans in (sandbox.store_spans(), sandbox.jsonl_spans()):
        sandbox.assert_unique(spans)
        produce = sandbox.one(spans, "produce")
        assert produce["service"] == "producer"
        assert produce["kind"] == "producer"
        assert (produce["trace_id"], produce["span_id"]) == (sent["trace_id"], sent["span_id"])
        consumes = [s for s in spans if s["name"] == "consume"]
        assert sorted(s["attributes"]["via"] for s in consumes) == ["argv", "stdin"]
        for c in consumes:
            assert c["service"] == "consumer"
            assert c["kind"] == "consumer"
            assert c["trace_id"] == produce["trace_id"]
            assert c["parent_id"] == produce["span_id"]
        steps = [s for s in spans if s["name"] == "consume-step"]
        assert sorted(s["parent_id"] for s in steps) == sorted(c["span_id"] for c in consumes)
        assert {s["trace_id"] for s in spans} == {produce["trace_id"]}


# ------------------------------------------------------------------------------------------ sampling

SAMPLING = """
import json, sys
import autoinstr
out = {}
with autoinstr.span("local-root") as s:
    with autoinstr.span("local-child"):
        out["local"] = autoinstr.inject({})
    out["sampled_attr"] = s.sampled
remote_on = autoinstr.extract({"traceparent": "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"})
with autoinstr.span("remote-sampled", parent=remote_on):
    with autoinstr.span("remote-sampled-child"):
        out["remote_on"] = autoinstr.inject({})
remote_off = autoinstr.extract({"traceparent": "00-1af7651916cd43dd8448eb211c80319c-c7ad6b7169203331-00"})
with autoinstr.span("remote-unsampled", parent=remote_off):
    out["remote_off"] = autoinstr.inject({})
out["no_span"] = autoinstr.inject({})
out["garbage"] = repr(autoinstr.extract({"traceparent": "00-garbage-01"}))
incoming = autoinstr.extract({"traceparent": "00-2af7651916cd43dd8448eb211c80319c-d7ad6b7169203331-01",
                              "baggage": "user.id=42,tier=gold"})
with autoinstr.span("with-baggage", parent=incoming):
    with autoinstr.span("with-baggage-child"):
        out["baggage"] = autoinstr.inject({})
for i in range(2000):
    with autoinstr.span("ratio", i=i):
        pass
st = autoinstr.stats()
out["stats"] = {k: st[k] for k in ("spans_created", "spans_sampled", "spans_unsampled")}
print(json.dumps(out))
"""


def _sampling_run(sandbox, rate):
    sandbox.write("sampling.py", SAMPLING)
    proc = sandbox.ok(["python", "sampling.py"], env=sandbox.env(AUTOINSTR_EXPORTER="local,jsonl",
                                                                  AUTOINSTR_SAMPLE_RATE=rate))
    assert proc.stderr == ""
    return json.loads(proc.stdout)


def test_sample_rate_zero_exports_nothing_but_still_propagates(sandbox):
    out = _sampling_run(sandbox, "0")
    local = out["local"]["traceparent"]
    assert re.fullmatch(r"00-[0-9a-f]{32}-[0-9a-f]{16}-00", local), local
    assert local.split("-")[1] != "0" * 32 and local.split("-")[2] != "0" * 16
    assert out["sampled_attr"] is False
    # a remote parent's sampled flag is obeyed either way
    assert out["remote_on"]["traceparent"].startswith("00-0af7651916cd43dd8448eb211c80319c-")
    assert out["remote_on"]["traceparent"].endswith("-01")
    assert out["remote_off"]["traceparent"].endswith("-00")
    assert out["no_span"] == {}
    assert out["garbage"] == "None"
    assert out["baggage"]["traceparent"].startswith("00-2af7651916cd43dd8448eb211c80319c-")
    assert out["baggage"]["baggage"] in ("user.id=42,tier=gold", "tier=gold,user.id=42")
    assert out["stats"]["spans_created"] == 2 + 2 + 1 + 2 + 2000
    assert out["stats"]["spans_sampled"] == 4
    for spans in (sandbox.store_spans(), sandbox.jsonl_spans()):
        assert sorted(s["name"] for s in spans) == ["remote-sampled", "remote-sampled-child", "with-baggage",
                                                    "with-baggage-child"]
        remote = sandbox.one(spans, "remote-sampled")
        assert remote["trace_id"] == "0af7651916cd43dd8448eb211c80319c"
        assert remote["parent_id"] == "b7ad6b7169203331"
        child = sandbox.one(spans, "remote-sampled-child")
        assert child["parent_id"] == remote["span_id"]
        assert out["remote_on"]["traceparent"] == "00-{}-{}-01".format(child["trace_id"], child["span_id"])


def test_sample_rate_one_obeys_unsampled_remote_parent(sandbox):
    out = _sampling_run(sandbox, "1")
    assert out["local"]["traceparent"].endswith("-01")
    names = [s["name"] for s in sandbox.store_spans()]
    assert "remote-unsampled" not in names
    assert names.count("ratio") == 2000
    assert {"local-root", "local-child", "remote-sampled", "remote-sampled-child"} <= set(names)


def test_sample_ratio_is_decided_from_the_trace_id(sandbox):
    out = _sampling_run(sandbox, "0.25")
    ratio = [s for s in sandbox.store_spans() if s["name"] == "ratio"]
    assert 300 < len(ratio) < 700, len(ratio)  # 25% of 2000, generously
    assert out["stats"]["spans_sampled"] == len(ratio) + 4 + (2 if out["sampled_attr"] else 0)
    # every service decides alike for a trace: the decision is a function of the trace id
    # (OpenTelemetry's TraceIdRatioBased rule: the low 64 bits below ratio * 2**64)
    assert all(int(s["trace_id"][16:], 16) < 0.25 * 2**64 for s in ratio)


def test_rate_limit_caps_new_sampled_traces(sandbox):
    sandbox.write("limited.py", """
        import autoinstr
        for i in range(500):
            with autoinstr.span("limited", i=i):
                with autoinstr.span("limited-child"):
                    pass
    """)
    started = time.monotonic()
    sandbox.ok(["python", "limited.py"], env=sandbox.env(AUTOINSTR_RATE_LIMIT="5"))
    elapsed = time.monotonic() - started
    spans = sandbox.store_spans()
    roots = [s for s in spans if s["name"] == "limited"]
    assert 1 <= len(roots) <= 5 + 5 * elapsed + 1, len(roots)
    # whole traces are kept or dropped: every kept root has its child
    assert len([s for s in spans if s["name"] == "limited-child"]) == len(roots)


def test_propagators_setting_is_applied(sandbox):
    sandbox.write("b3.py", """
        import json
        import autoinstr
        ctx = autoinstr.extract({"b3": "80f198ee56343ba864fe8b2a57d3eff7-e457b5a2e4d86bd1-1"})
        with autoinstr.span("b3-child", parent=ctx):
            print(json.dumps(autoinstr.inject({})))
    """)
    proc = sandbox.ok(["python", "b3.py"], env=sandbox.env(AUTOINSTR_PROPAGATORS="b3"))
    headers = json.loads(proc.stdout)
    assert "traceparent" not in headers
    assert headers["b3"].startswith("80f198ee56343ba864fe8b2a57d3eff7-")
    span = sandbox.one(sandbox.store_spans(), "b3-child")
    assert span["trace_id"] == "80f198ee56343ba864fe8b2a57d3eff7"
    assert span["parent_id"] == "e457b5a2e4d86bd1"


# ----------------------------------------------------------------------------- record format and report

REPORT_APP = """
import time
import autoinstr
for i in range(20):
    with autoinstr.span("GET /fast", kind="server"):
        with autoinstr.span("SELECT fast", kind="client"):
            pass
with autoinstr.span("GET /slow", kind="server", **{"http.route": "/slow"}):
    with autoinstr.span("slow-step-1", kind="client"):
        time.sleep(0.03)
    with autoinstr.span("slow-step-2"):
        with autoinstr.span("slow-step-2a", kind="producer"):
            time.sleep(0.02)
with autoinstr.span("consume", kind="consumer"):
    pass
with autoinstr.span("odd-kind", kind="weird"):
    pass
try:
    with autoinstr.span("GET /fail", kind="server"):
        raise RuntimeError("nope")
except RuntimeError:
    pass
"""


def test_spans_json_matches_the_span_record(sandbox):
    sandbox.write("report_app.py", REPORT_APP)
    before = time.time_ns()
    sandbox.ok(["python", "report_app.py"], service="shop")
    after = time.time_ns()
    spans = sandbox.store_spans()
    assert len(spans) == 20 * 2 + 4 + 3
    for s in spans:
        assert set(s) == set(sandbox.RECORD_FIELDS), sorted(s)
        assert HEX32.match(s["trace_id"]) and int(s["trace_id"], 16) != 0
        assert HEX16.match(s["span_id"]) and int(s["span_id"], 16) != 0
        assert s["parent_id"] is None or HEX16.match(s["parent_id"])
        assert s["kind"] in ("server", "client", "internal", "producer", "consumer")
        assert s["status"] in ("ok", "error")
        assert s["service"] == "shop"
        for key in ("start_ns", "duration_ns"):
            assert type(s[key]) is int, (key, s[key])
        assert before <= s["start_ns"] <= after
        assert 0 <= s["duration_ns"] <= after - before
        assert isinstance(s["attributes"], dict) and isinstance(s["events"], list)
    kinds = {s["name"]: s["kind"] for s in spans}
    assert (kinds["GET /slow"], kinds["slow-step-1"], kinds["slow-step-2"], kinds["slow-step-2a"],
            kinds["consume"], kinds["odd-kind"]) == ("server", "client", "internal", "producer", "consumer",
                                                     "internal")
    slow = sandbox.one(spans, "GET /slow")
    assert slow["duration_ns"] >= 50_000_000
    assert slow["attributes"] == {"http.route": "/slow"}
    # filters of `autoinstr spans`
    proc = sandbox.cli("spans", "--json", "--store", sandbox.store, "--trace", slow["trace_id"])
    assert sorted(json.loads(x)["name"] for x in proc.stdout.splitlines()) == [
        "GET /slow", "slow-step-1", "slow-step-2", "slow-step-2a"]
    proc = sandbox.cli("spans", "--json", "--store", sandbox.store, "--service", "nobody")
    assert proc.returncode == 0 and proc.stdout == ""
    proc = sandbox.cli("spans", "--store", sandbox.store)
    assert proc.returncode == 0 and len(proc.stdout.splitlines()) == len(spans)
    proc = sandbox.cli("spans", "--json", "--store", os.path.join(sandbox.dir, "missing.db"))
    assert proc.returncode != 0 and "missing.db" in proc.stderr
    assert not os.path.exists(os.path.join(sandbox.dir, "missing.db"))
    proc = sandbox.cli("report", "--store", os.path.join(sandbox.dir, "missing.db"))
    assert proc.returncode != 0 and "missing.db" in proc.stderr


def test_report_prints_operations_and_slowest_waterfall(sandbox):
    sandbox.write("report_app.py", REPORT_APP)
    sandbox.ok(["python", "report_app.py"], service="shop")
    proc = sandbox.cli("report", "--store", sandbox.store)
    assert proc.returncode == 0, proc.stderr
    out = proc.stdout
    header = next(line for line in out.splitlines() if "p50" in line)
    for col in ("service", "count", "p50", "p95", "p99"):
        assert col in header, header
    rows = {}
    for line in out.splitlines():
        m = re.match(r"shop\s+(.+?)\s+(server|client|internal|producer|consumer)\s+(\d+)\s+([\d.]+)%"
                     r"\s+([\d.]+)\s+([\d.]+)\s+([\d.]+)", line)
        if m:
            rows[m.group(1)] = (int(m.group(3)), float(m.group(4)), *map(float, m.group(5, 6, 7)))
    assert rows["GET /fast"][0] == 20 and rows["SELECT fast"][0] == 20
    assert rows["GET /slow"][0] == 1
    assert rows["GET /fail"][1] == 100.0
    for _count, _, p50, p95, p99 in rows.values():
        assert p50 <= p95 <= p99
    assert rows["GET /slow"][2] >= 50.0  # ms
    # slowest trace first, drawn as an indented waterfall
    waterfall = out[out.index("slowest"):]
    first_trace = waterfall.split("\ntrace ")[1]
    lines = first_trace.splitlines()
    assert "GET /slow" in lines[0]
    names = {n: line for line in lines[1:] for n in ("GET /slow", "slow-step-1", "slow-step-2", "slow-step-2a")
             if line.rstrip().endswith(n)}
    assert set(names) == {"GET /slow", "slow-step-1", "slow-step-2", "slow-step-2a"}, lines
    indent = {n: len(re.match(r".*\|\s*[\d.]+ ms ( *)", line).group(1)) for n, line in names.items()}
    assert indent["GET /slow"] < indent["slow-step-1"] == indent["slow-step-2"] < indent["slow-step-2a"]
    assert all("#" in line for line in names.values())


# ------------------------------------------------------------------------------------- bounds and pieces

def test_long_trace_is_exported_in_pieces_before_its_root_ends(sandbox):
    sandbox.write("long_trace.py", """
        import json, os
        import autoinstr
        path = os.environ["AUTOINSTR_JSONL_PATH"]
        with autoinstr.span("long-root"):
            for i in range(1200):
                with autoinstr.span("step", i=i):
                    pass
            autoinstr.flush(10)
            with open(path) if os.path.exists(path) else open(os.devnull) as f:
                seen = sum(1 for _ in f)
        print(json.dumps({"exported_while_root_open": seen}))
    """)
    proc = sandbox.ok(["python", "long_trace.py"], env=sandbox.env(AUTOINSTR_EXPORTER="jsonl"))
    assert json.loads(proc.stdout)["exported_while_root_open"] >= 500
    spans = sandbox.jsonl_spans()
    sandbox.assert_unique(spans)
    root = sandbox.one(spans, "long-root")
    steps = [s for s in spans if s["name"] == "step"]
    assert sorted(s["attributes"]["i"] for s in steps) == list(range(1200))
    assert {(s["trace_id"], s["parent_id"]) for s in steps} == {(root["trace_id"], root["span_id"])}


def test_attributes_events_and_names_are_bounded(sandbox):
    sandbox.write("bounded.py", """
        import autoinstr
        with autoinstr.span("n" * 5000, huge="x" * 100_000, **{"k%03d" % i: i for i in range(300)}) as s:
            for i in range(300):
                s.set_attribute("late%03d" % i, i)
            for i in range(1000):
                s.add_event("ev", {"i": i})
        with autoinstr.span("limited-by-env") as s:
            s.set_attribute("long", "y" * 10_000)
            for i in range(50):
                s.set_attribute("a%02d" % i, i)
        def deep(n):
            if n == 0:
                raise ValueError("z" * 100_000)
            deep(n - 1)
        try:
            with autoinstr.span("deep-error"):
                deep(200)
        except ValueError:
            pass
    """)
    procs = [sandbox.popen(["python", "bounded.py"], env=sandbox.env(AUTOINSTR_EXPORTER="local,jsonl")),
             sandbox.popen(["python", "bounded.py"],
                           env=sandbox.env(AUTOINSTR_EXPORTER="jsonl", AUTOINSTR_MAX_ATTRIBUTES="10",
                                           AUTOINSTR_MAX_ATTRIBUTE_LENGTH="100",
                                           AUTOINSTR_JSONL_PATH=os.path.join(sandbox.dir, "small.jsonl")))]
    for rc, _, err in sandbox.wait_all(procs):
        assert rc == 0, err
        assert err == ""
    for spans in (sandbox.store_spans(), sandbox.jsonl_spans()):
        assert len(spans) == 3
        big = next(s for s in spans if s["name"].startswith("nnn"))
        assert len(big["name"]) <= 1024
        assert len(big["attributes"]) <= 128
        assert all(len(str(v)) <= 4096 for v in big["attributes"].values())
        assert len(big["events"]) <= 128
        err = sandbox.one(spans, "deep-error")
        assert len(err["events"][0]["attributes"]["exception.stacktrace"]) <= 16_384
        assert len(json.dumps(err)) < 64_000
    small = sandbox.jsonl_spans(os.path.join(sandbox.dir, "small.jsonl"))
    limited = sandbox.one(small, "limited-by-env")
    assert len(limited["attributes"]) <= 10
    assert all(len(str(v)) <= 100 for v in limited["attributes"].values())
    assert all(len(str(v)) <= 100 for s in small for v in s["attributes"].values())
