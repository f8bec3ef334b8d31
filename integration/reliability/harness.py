"""A small real app run twice, without and with the agent, driven with the same requests in alternation, so
one run measures both: responses compared byte for byte, latency percentiles of each, the agent's RSS and
its own counters (`autoinstr.stats()`, which the app serves at /__agent). Figures go to results/*.json,
from which docs/RELIABILITY.md is written."""

from __future__ import annotations

import http.client
import json
import os
import time
from typing import Dict, List, Optional

from fleet import Server

HERE = os.path.dirname(os.path.abspath(__file__))
RESULTS = os.path.join(HERE, "results")
START_TIMEOUT = 30.0
STOP_TIMEOUT = 20.0
SLOW_REQUEST_S = 1.0  # no request may take this long, agent or not (a generous bound: timings are noisy)

APP = '''
import json, os, sqlite3, urllib.parse
import autoinstr


def rss_kb():
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return 0


def app(environ, start_response):
    path = environ.get("PATH_INFO") or "/"
    query = urllib.parse.parse_qs(environ.get("QUERY_STRING") or "")
    if path == "/__agent":  # the test's window on the agent: its counters, and the process's memory
        flushed = autoinstr.flush(float(query["flush"][0])) if "flush" in query else None
        body = json.dumps({"stats": autoinstr.stats(), "rss_kb": rss_kb(), "flushed": flushed}).encode()
        start_response("200 OK", [("Content-Type", "application/json"), ("Content-Length", str(len(body)))])
        return [body]
    n = sum(map(ord, path))
    with autoinstr.span("compute", n=n):
        db = sqlite3.connect(":memory:")
        try:
            doubled = db.execute("SELECT ? * 2", (n,)).fetchone()[0]
        finally:
            db.close()
    body = ("%s %d %d\\n" % (path, n, doubled)).encode() * 8
    status = "404 Not Found" if path.startswith("/missing") else "200 OK"
    start_response(status, [("Content-Type", "text/plain"), ("Content-Length", str(len(body))),
                            ("X-Path", path)])
    return [body]
'''


class Member:
    """What fleet.Server runs: the app under waitress, under autoinstr-run or not."""

    def __init__(self, name: str, agent: bool) -> None:
        self.name = name
        self.agent = agent

    def argv(self, port: int, bindir: str) -> list:
        return [os.path.join(bindir, "waitress-serve"), "--listen=127.0.0.1:%d" % port, "--threads=4", "app:app"]


class Client:
    """Keep-alive HTTP/1.1 connection to one server; reconnects when the server closes."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.conn: Optional[http.client.HTTPConnection] = None

    def get(self, path: str, timeout: float = 30.0):
        for attempt in (0, 1):
            if self.conn is None:
                self.conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=timeout)
            try:
                self.conn.request("GET", path)
                resp = self.conn.getresponse()
                body = resp.read()
                return resp.status, resp.getheader("X-Path"), resp.getheader("Content-Type"), body
            except (http.client.HTTPException, ConnectionError):
                self.conn.close()
                self.conn = None
                if attempt:
                    raise
        raise AssertionError("unreachable")

    def close(self) -> None:
        if self.conn is not None:
            self.conn.close()


def percentile(values: List[float], q: float) -> float:
    if not values:
        return 0.0
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(q * (len(ordered) - 1))))]


class Pair:
    """The app without the agent (`baseline`) and with it (`agent`), started together."""

    def __init__(self, sandbox, agent_env: Dict[str, object], baseline: Optional[Server] = None) -> None:
        sandbox.write("app.py", APP)
        self.sandbox = sandbox
        self.own_baseline = baseline is None
        self.baseline = baseline or Server(sandbox, Member("baseline", agent=False))
        env = {"AUTOINSTR_FLUSH_INTERVAL": "0.2"}
        env.update(agent_env)
        self.agent = Server(sandbox, Member("agent", agent=True), env=env)
        deadline = time.monotonic() + START_TIMEOUT
        self.baseline.wait_ready(deadline)
        self.agent.wait_ready(deadline)
        self.clients = {"baseline": Client(self.baseline.port), "agent": Client(self.agent.port)}
        self.latency: Dict[str, List[float]] = {"baseline": [], "agent": []}
        self.requests = 0
        self.mismatches: List[tuple] = []

    def drive(self, prefix: str, count: int = 0, seconds: float = 0.0) -> List[str]:
        """Alternate the same requests between both servers (`count` of them, or for `seconds`); responses
        must be identical. Returns the paths sent."""
        paths = []
        end = time.monotonic() + seconds
        i = 0
        while (count and i < count) or (seconds and time.monotonic() < end):
            path = "/%s/%d%s" % (prefix, i, "" if i % 10 else "?token=hunter2")
            if i % 25 == 7:
                path = "/missing/%s/%d" % (prefix, i)
            answers = {}
            order = ("baseline", "agent") if i % 2 else ("agent", "baseline")
            for who in order:
                started = time.perf_counter()
                answers[who] = self.clients[who].get(path)
                self.latency[who].append(time.perf_counter() - started)
            if answers["baseline"] != answers["agent"]:
                self.mismatches.append((path, answers["baseline"], answers["agent"]))
            paths.append(path.split("?")[0])
            i += 1
        self.requests += i
        return paths

    def agent_state(self, flush: float = 0.0) -> dict:
        status, _, _, body = self.clients["agent"].get("/__agent" + ("?flush=%s" % flush if flush else ""))
        assert status == 200
        return json.loads(body)

    def figures(self) -> dict:
        out = {"requests": self.requests}
        for who, values in self.latency.items():
            out[who] = {"p50_ms": round(percentile(values, 0.5) * 1e3, 3),
                        "p99_ms": round(percentile(values, 0.99) * 1e3, 3),
                        "max_ms": round(max(values or [0]) * 1e3, 3)}
        base = out["baseline"]["p99_ms"]
        out["p99_ratio"] = round(out["agent"]["p99_ms"] / base, 2) if base else None
        return out

    def assert_app_unharmed(self) -> None:
        assert not self.mismatches, "responses differ with the agent: %r" % (self.mismatches[:3],)
        slow = [round(t, 3) for t in self.latency["agent"] if t > SLOW_REQUEST_S]
        assert not slow, "requests blocked with the agent: %s s (p99 baseline %s)" % (slow[:10], self.figures())

    def stop(self) -> None:
        for client in self.clients.values():
            client.close()
        servers = [self.agent] + ([self.baseline] if self.own_baseline else [])
        for server in servers:
            server.stop()
        deadline = time.monotonic() + STOP_TIMEOUT
        for server in servers:
            server.reap(deadline)


def agent_warnings(server: Server) -> List[str]:
    return [line.rstrip("\n") for line in server.output["stderr"] if line.startswith("autoinstr warning")]


def write_result(name: str, figures: dict) -> None:
    import platform

    figures = dict(figures, python=platform.python_version())
    os.makedirs(RESULTS, exist_ok=True)
    with open(os.path.join(RESULTS, name + ".json"), "w") as f:
        json.dump(figures, f, indent=1, sort_keys=True)
        f.write("\n")


def dropped_total(stats: dict) -> int:
    return sum(stats.get("spans_dropped", {}).values())
