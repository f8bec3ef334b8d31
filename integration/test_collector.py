"""`autoinstr collector` as a real process: agents on "many hosts" (several processes) send to it, every span
arrives exactly once, `autoinstr report` reads its store; a fuzz of malformed bodies over HTTP leaves it
serving and its store untouched; a token is enforced; OTLP/HTTP bodies are ingested; it is never traced
when it runs under the agent itself.

The collector listens on port 0 (the kernel picks a free loopback port; its log line says which), writes
its log to a file, and is always killed at the end.
"""

from __future__ import annotations

import contextlib
import gzip
import http.client
import json
import os
import random
import re
import signal
import socket
import sqlite3
import subprocess
import time

import msgpack
import pytest

LISTENING = re.compile(r"listening on http://127\.0\.0\.1:(\d+)")
TOKEN = "t0ken-for-tests"


class Collector:
    def __init__(self, sandbox, store: str, *extra: str, launcher: bool = False, env: dict = None) -> None:
        self.store = store
        self.log_path = os.path.join(sandbox.dir, "collector-%d.log" % time.monotonic_ns())
        self.log = open(self.log_path, "wb")  # noqa: SIM115  (closed in stop() or by collector())
        argv = [sandbox.CLI, "collector", "--host", "127.0.0.1", "--port", "0", "--store", store] + list(extra)
        if launcher:
            argv = [sandbox.RUN] + argv
        self.proc = subprocess.Popen(argv, env=env or sandbox.env(), stdin=subprocess.DEVNULL, stdout=self.log,
                                     stderr=subprocess.STDOUT, cwd=sandbox.dir)
        self.port = 0
        end = time.monotonic() + 30
        while time.monotonic() < end and not self.port:
            assert self.proc.poll() is None, "collector exited: %s" % self.output()
            m = LISTENING.search(self.output())
            if m:
                self.port = int(m.group(1))
            else:
                time.sleep(0.05)
        assert self.port, "collector did not start: %s" % self.output()

    @property
    def url(self) -> str:
        return "http://127.0.0.1:%d" % self.port

    def output(self) -> str:
        with open(self.log_path, "rb") as f:
            return f.read().decode("utf-8", "replace")

    def request(self, method: str, path: str, body: bytes = None, headers: dict = None, timeout: float = 10):
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=timeout)
        try:
            conn.request(method, path, body=body, headers=headers or {})
            resp = conn.getresponse()
            data = resp.read()
            return resp.status, {k.lower(): v for k, v in resp.getheaders()}, data
        finally:
            conn.close()

    def stats(self, token: str = None) -> dict:
        st, _, data = self.request("GET", "/v1/stats", headers={"Authorization": "Bearer " + token} if token else {})
        assert st == 200, data
        return json.loads(data)

    def count(self) -> int:
        db = sqlite3.connect(self.store)
        try:
            return db.execute("SELECT count(*) FROM spans").fetchone()[0]
        finally:
            db.close()

    def stop(self) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        self.log.close()
        return self.proc.returncode


@contextlib.contextmanager
def collector(sandbox, *extra, store: str = None, **kw):
    c = Collector(sandbox, store or os.path.join(sandbox.dir, "collector.db"), *extra, **kw)
    try:
        yield c
    finally:
        if c.proc.poll() is None:
            c.proc.kill()
        c.proc.wait(10)
        if not c.log.closed:
            c.log.close()


AGENT = """
import sys
import autoinstr
name, traces, depth = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
for t in range(traces):
    with autoinstr.span(name + "-root", t=t, payload="x" * 300):
        for d in range(depth):
            with autoinstr.span(name + "-child", d=d):
                pass
    if t % 10 == 0:
        autoinstr.flush()          # several batches per agent
print("done")
"""


def agent_env(sandbox, c, jsonl: str, service: str, **extra) -> dict:
    return sandbox.env(AUTOINSTR_EXPORTER="collector,jsonl", AUTOINSTR_COLLECTOR_URL=c.url,
                       AUTOINSTR_JSONL_PATH=jsonl, AUTOINSTR_SERVICE_NAME=service, **extra)


def run_agents(sandbox, c, n: int, traces: int = 30, depth: int = 4, stderr: list = None, **extra) -> list:
    script = sandbox.write("agent.py", AGENT)
    jsonls, procs = [], []
    for i in range(n):
        jsonl = os.path.join(sandbox.dir, "agent-%d-%d.jsonl" % (time.monotonic_ns(), i))
        jsonls.append(jsonl)
        procs.append(sandbox.popen(["python", script, "a%d" % i, str(traces), str(depth)],
                                   env=agent_env(sandbox, c, jsonl, "host-%d" % i, **extra)))
    for rc, out, err in sandbox.wait_all(procs):
        assert rc == 0 and "done" in out, err
        if stderr is not None:
            stderr.append(err)
    return jsonls


def wait_for(fn, timeout: float = 20.0, interval: float = 0.1):
    end = time.monotonic() + timeout
    value = fn()
    while not value and time.monotonic() < end:
        time.sleep(interval)
        value = fn()
    return value


# ---------------------------------------------------------------------------------------- ingest

def test_agents_spans_arrive_exactly_once_and_report_reads_them(sandbox):
    with collector(sandbox) as c:
        jsonls = run_agents(sandbox, c, 4)
        expected = [r for path in jsonls for r in sandbox.jsonl_spans(path)]
        assert len(expected) == 4 * 30 * 5
        stored = sandbox.store_spans(c.store)  # agents flush at exit: all of it is in before they end
        sandbox.assert_unique(stored)
        key = lambda r: (r["trace_id"], r["span_id"])  # noqa: E731
        assert sorted(map(key, stored)) == sorted(map(key, expected))
        by_key = {key(r): r for r in expected}
        for r in stored:
            assert r == by_key[key(r)]  # field for field, as the agent made it
        stats = c.stats()
        assert stats["stored_spans"] == len(expected) and stats["rejected_batches"] == 0
        assert stats["received_batches"] >= 4 * 3
        report = sandbox.cli("report", "--store", c.store)
        assert report.returncode == 0, report.stderr
        for i in range(4):
            assert "host-%d" % i in report.stdout and "a%d-root" % i in report.stdout
        assert c.stop() == 0
        assert "%d stored" % stats["stored_batches"] in c.output()  # the counters are logged at exit


def test_token_refuses_wrong_and_missing(sandbox):
    with collector(sandbox, "--token", TOKEN) as c:
        good = msgpack.packb([_record(1)])
        for headers in ({}, {"Authorization": "Bearer nope"}, {"Authorization": TOKEN}):
            st, h, body = c.request("POST", "/v1/spans", good, dict(headers, **{"Content-Type": "application/msgpack"}))
            assert st == 401 and h["www-authenticate"].startswith("Bearer")
            assert json.loads(body)["error"] == "unauthorized"
        assert c.request("GET", "/v1/stats")[0] == 401
        # an agent with the wrong token: refused, dropped with one warning, the app unharmed
        errs: list = []
        jsonls = run_agents(sandbox, c, 1, traces=3, stderr=errs, AUTOINSTR_COLLECTOR_TOKEN="wrong")
        assert c.count() == 0
        assert sandbox.jsonl_spans(jsonls[0])
        warnings = [line for line in errs[0].splitlines() if "autoinstr warning" in line]
        assert len(warnings) == 1 and "401" in warnings[0] and "AUTOINSTR_COLLECTOR_TOKEN" in warnings[0], errs[0]
        assert "wrong" not in warnings[0]
        # agents with the right one (from the environment, as the collector reads it too) succeed
        jsonls = run_agents(sandbox, c, 2, traces=3, AUTOINSTR_COLLECTOR_TOKEN=TOKEN)
        assert c.count() == sum(len(sandbox.jsonl_spans(p)) for p in jsonls) == 2 * 3 * 5
        stats = c.stats(TOKEN)
        assert stats["rejected_by_reason"]["unauthorized"] >= 5


def test_token_from_environment(sandbox):
    with collector(sandbox, env=sandbox.env(AUTOINSTR_COLLECTOR_TOKEN=TOKEN)) as c:
        assert c.request("GET", "/v1/stats")[0] == 401
        assert c.stats(TOKEN)["stored_spans"] == 0


def test_concurrent_batches_each_stored_once_in_one_transaction(sandbox):
    import concurrent.futures

    with collector(sandbox, "--threads", "8") as c:
        def send(worker: int) -> list:
            statuses = []
            for b in range(15):
                batch = [_record(worker * 100_000 + b * 100 + i, service="w%d" % worker) for i in range(50)]
                body = msgpack.packb(batch)
                for _ in range(2):  # every batch twice, as a retry would
                    statuses.append(c.request("POST", "/v1/spans", gzip.compress(body),
                                              {"Content-Type": "application/msgpack", "Content-Encoding": "gzip"})[0])
            return statuses

        with concurrent.futures.ThreadPoolExecutor(8) as pool:
            results = [s for r in pool.map(send, range(8)) for s in r]
        assert set(results) == {200}
        assert c.count() == 8 * 15 * 50
        stats = c.stats()
        assert stats["stored_spans"] == 8 * 15 * 50 and stats["duplicate_spans"] == 8 * 15 * 50
        assert stats["stored_batches"] == 8 * 15 * 2


# ------------------------------------------------------------------------------------------ fuzz

def _record(i: int, **over) -> dict:
    r = {"trace_id": "%032x" % (0xF00 + i), "span_id": "%016x" % (0xBA0 + i), "parent_id": None, "name": "fuzz",
         "kind": "internal", "service": "fuzz", "start_ns": time.time_ns(), "duration_ns": 1000, "status": "ok",
         "attributes": {"k": "v"}, "events": []}
    r.update(over)
    return r


def fuzz_bodies(rng: random.Random, n: int) -> list:
    """n malformed (content_type, headers, body): none holds a batch that is valid as a whole."""
    good = msgpack.packb([_record(i) for i in range(5)])
    good_json = json.dumps([_record(i) for i in range(5)]).encode()
    bad_records = [
        _record(0, trace_id=12345), _record(0, span_id=None), _record(0, start_ns="yesterday"),
        _record(0, kind="SERVER"), _record(0, status="unset"), _record(0, trace_id="ZZ" * 16),
        _record(0, start_ns=-1), _record(0, duration_ns=1 << 63), _record(0, attributes={"a": {"b": 1}}),
        _record(0, attributes=[1]), _record(0, events=[{"name": 1}]), _record(0, name=""),
        _record(0, attributes={"x": "y" * (1 << 20 + 1)}), _record(0, name="n" * 5000),
        _record(0, attributes={"k%d" % i: i for i in range(5000)}), {"name": "only"}, [1, 2], "span", None,
    ]
    kinds = ["random", "trunc_msgpack", "trunc_json", "wrong_types", "mixed_batch", "huge", "deep", "gzip_bomb",
             "bad_gzip", "content_type", "protobuf", "otlp_json", "bad_length"]
    out = []
    for i in range(n):
        kind = kinds[i % len(kinds)]
        ctype, headers = rng.choice(["application/msgpack", "application/x-msgpack"]), {}
        if kind == "random":
            body = bytes(rng.getrandbits(8) for _ in range(rng.randint(1, 3000)))
            ctype = rng.choice(["application/msgpack", "application/json", "application/x-protobuf"])
            if ctype == "application/msgpack" and body[:1] in (b"\x90", b"\xdc", b"\xdd"):
                body = b"\xc1" + body  # 0xc1 is never valid msgpack: an empty array must not be "valid"
        elif kind == "trunc_msgpack":
            body = good[: rng.randint(1, len(good) - 1)]
        elif kind == "trunc_json":
            body, ctype = good_json[: rng.randint(1, len(good_json) - 1)], "application/json"
        elif kind == "wrong_types":
            body = msgpack.packb(rng.choice([12345, "spans", [1, 2, 3], {"spans": "nope"}, {"other": []}, True,
                                             [rng.choice(bad_records)]]))
        elif kind == "mixed_batch":  # good records and one bad one: nothing of it may be stored
            recs = [_record(j) for j in range(rng.randint(1, 20))]
            recs.insert(rng.randint(0, len(recs)), rng.choice(bad_records))
            body = msgpack.packb(recs) if rng.random() < 0.7 else json.dumps(recs).encode()
            ctype = "application/msgpack" if body[:1] != b"[" else "application/json"
        elif kind == "huge":
            body = msgpack.packb([_record(0, name="A" * rng.choice([2000, 200_000, 3 << 20]))])
        elif kind == "deep":
            depth = rng.choice([600, 5000, 100_000])
            if rng.random() < 0.5:
                body = b"\x91" * depth + b"\xc0"
            else:
                body, ctype = b"[" * depth + b"]" * depth, "application/json"
        elif kind == "gzip_bomb":
            body, headers = _BOMB, {"Content-Encoding": "gzip"}
        elif kind == "bad_gzip":
            body = rng.choice([b"\x1f\x8b\x08\x00" + bytes(rng.getrandbits(8) for _ in range(64)),
                               gzip.compress(good)[:-8], b"plain"])
            headers = {"Content-Encoding": rng.choice(["gzip", "br", "deflate"])}
        elif kind == "content_type":
            body, ctype = good, rng.choice(["text/plain", "application/octet-stream", "", "multipart/form-data",
                                            "application/msgpack-ish"])
        elif kind == "protobuf":
            body = b"\x0a\xff\xff\xff\xff\x0f" + bytes(rng.getrandbits(8) for _ in range(32))
            ctype = "application/x-protobuf"
        elif kind == "otlp_json":
            body = rng.choice([b'{"resourceSpans": "x"}', b'{"resourceSpans": [{"scopeSpans": [{"spans": '
                               b'[{"traceId": 5, "spanId": true}]}]}]}', b"[" * 50000, b'{"resourceSpans": [1]}'])
            ctype = "application/json"
        else:  # bad_length: says more than it sends (the server sees the connection end) or garbage
            body = good
            headers = {"Content-Length": rng.choice(["-5", "abc", "99999999999999999999"])}
        out.append((kind, ctype, headers, body))
    return out


_BOMB = gzip.compress(b"\0" * (64 * 1024 * 1024), compresslevel=9)  # 64 MiB of zeros in ~64 KiB


def test_fuzz_malformed_bodies_get_4xx_and_store_nothing(sandbox):
    rng = random.Random(0xA5)
    bodies = fuzz_bodies(rng, 1300)
    with collector(sandbox, "--max-body-mb", "2") as c:
        run_agents(sandbox, c, 1, traces=2, depth=1)
        before = c.count()
        assert before == 4
        statuses, paths = {}, ["/v1/spans", "/v1/traces"]
        for i, (kind, ctype, headers, body) in enumerate(bodies):
            path = paths[i % 2] if kind in ("random", "deep", "gzip_bomb", "bad_gzip", "bad_length") else (
                "/v1/traces" if kind in ("protobuf", "otlp_json") else "/v1/spans")
            h = dict(headers)
            if ctype:
                h["Content-Type"] = ctype
            if len(body) > 2 * 1024 * 1024:
                # beyond waitress' max_request_body_size: it answers 413 at once and closes, without reading
                # the rest; the client may see the answer, or only the connection reset
                status = _raw_post(c.port, path, dict(h, **{"Content-Length": str(len(body))}), body, tolerant=True)
                if status is None:
                    status = 413
            elif "Content-Length" in h:
                status = _raw_post(c.port, path, h, body)
            else:
                status = c.request("POST", path, body, h)[0]
            assert 400 <= status < 500, (kind, ctype, headers, body[:60], status)
            statuses[status] = statuses.get(status, 0) + 1
            if i % 100 == 0:
                assert c.proc.poll() is None, c.output()
                assert c.request("GET", "/healthz")[0] == 200
        assert c.proc.poll() is None, c.output()
        assert c.count() == before, "a malformed body was stored"
        assert {400, 413, 415} <= set(statuses)
        stats = c.stats()
        # waitress refuses bad framing and bodies over the limit itself, before the app counts them
        framing = sum(1 for b in bodies if b[0] == "bad_length" or len(b[3]) > 2 * 1024 * 1024)
        assert stats["rejected_batches"] >= len(bodies) - framing  # every other one counted
        assert stats["stored_spans"] == before
        # still serving, and still ingesting
        run_agents(sandbox, c, 1, traces=2, depth=1)
        assert c.count() == before + 4
        sandbox.assert_unique(sandbox.store_spans(c.store))


def _raw_post(port: int, path: str, headers: dict, body: bytes, tolerant: bool = False):
    """A request whose framing http.client would not send (a bad Content-Length), or one the server may cut
    short (tolerant: the status, or None when the connection was reset before an answer could be read)."""
    head = "POST %s HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n" % path
    head += "".join("%s: %s\r\n" % kv for kv in headers.items()) + "\r\n"
    data = b""
    with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
        try:
            s.sendall(head.encode("latin-1") + body)
            s.shutdown(socket.SHUT_WR)
        except OSError:
            if not tolerant:
                raise
        try:
            while len(data) < 64 * 1024:
                chunk = s.recv(65536)
                if not chunk:
                    break
                data += chunk
        except OSError:
            if not tolerant:
                raise
    m = re.match(rb"HTTP/1\.[01] (\d{3})", data)
    if tolerant and not m:
        return None
    assert m, data[:200]
    return int(m.group(1))


def test_truncated_and_unframed_bodies(sandbox):
    with collector(sandbox) as c:
        good = msgpack.packb([_record(1)])
        # Content-Length larger than the body, connection then closed: no answer or a 4xx, nothing stored
        with socket.create_connection(("127.0.0.1", c.port), timeout=10) as s:
            s.sendall(b"POST /v1/spans HTTP/1.1\r\nHost: x\r\nContent-Type: application/msgpack\r\n"
                      b"Content-Length: %d\r\n\r\n" % (len(good) + 100) + good)
            s.shutdown(socket.SHUT_WR)
            data = s.recv(4096)
        assert not data or data.startswith(b"HTTP/1.1 4")
        # chunked: the server frames it, the collector reads it (bounded)
        with socket.create_connection(("127.0.0.1", c.port), timeout=10) as s:
            s.sendall(b"POST /v1/spans HTTP/1.1\r\nHost: x\r\nContent-Type: application/msgpack\r\n"
                      b"Transfer-Encoding: chunked\r\nConnection: close\r\n\r\n"
                      b"%x\r\n%s\r\n0\r\n\r\n" % (len(good), good))
            data = s.recv(4096)
        assert data.startswith(b"HTTP/1.1 200"), data
        assert c.count() == 1
        # no body at all
        st, _, body = c.request("POST", "/v1/spans", None, {"Content-Type": "application/msgpack"})
        assert st in (400, 411), body
        assert c.proc.poll() is None and c.count() == 1


# ------------------------------------------------------------------------------------------ OTLP

def test_otlp_protobuf_and_json(sandbox):
    otlp = pytest.importorskip("autoinstr.export.otlp")
    if not hasattr(otlp, "decode_protobuf") or not hasattr(otlp, "encode_protobuf"):
        pytest.skip("autoinstr.export.otlp has no encoders/decoders yet")
    with collector(sandbox) as c:
        pb = [_record(i, service="go-svc", kind="server") for i in range(10)]
        js = [_record(100 + i, service="js-svc", kind="client", status="error",
                      attributes={"error.type": "Boom", "exception.message": "bad"}) for i in range(10)]
        st, h, body = c.request("POST", "/v1/traces", otlp.encode_protobuf(pb),
                                {"Content-Type": "application/x-protobuf"})
        assert st == 200 and h["content-type"] == "application/x-protobuf", body
        st, h, body = c.request("POST", "/v1/traces", gzip.compress(otlp.encode_json(js)),
                                {"Content-Type": "application/json", "Content-Encoding": "gzip"})
        assert st == 200 and json.loads(body) == {}, body
        stored = {r["span_id"]: r for r in sandbox.store_spans(c.store)}
        assert len(stored) == 20
        for r in pb + js:
            s = stored[r["span_id"]]
            assert (s["trace_id"], s["service"], s["kind"], s["status"], s["start_ns"], s["duration_ns"]) == (
                r["trace_id"], r["service"], r["kind"], r["status"], r["start_ns"], r["duration_ns"])
        report = sandbox.cli("report", "--store", c.store)
        assert report.returncode == 0 and "go-svc" in report.stdout and "js-svc" in report.stdout


# ------------------------------------------------------------------------------ under the agent

def test_collector_under_the_agent_is_not_traced(sandbox):
    jsonl = os.path.join(sandbox.dir, "collector-own.jsonl")
    env = sandbox.env(AUTOINSTR_EXPORTER="jsonl", AUTOINSTR_JSONL_PATH=jsonl)
    with collector(sandbox, launcher=True, env=env) as c:
        for i in range(5):
            assert c.request("POST", "/v1/spans", msgpack.packb([_record(i)]),
                             {"Content-Type": "application/msgpack"})[0] == 200
        assert c.request("GET", "/healthz")[0] == 200
        assert c.request("POST", "/v1/spans", b"junk", {"Content-Type": "application/msgpack"})[0] == 400
        assert c.stop() == 0
        assert c.count() == 5
    assert sandbox.jsonl_spans(jsonl) == []
