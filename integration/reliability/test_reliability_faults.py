"""Faults at the destination: the collector and OTLP endpoints (refused, never answering, answering after
10 s, 500, 429 with Retry-After, garbage), statsd (refused, never read, garbage back), the local store (a
read-only disk, a full disk, a database locked by another connection).

Each test runs the same small WSGI app under waitress without and with the agent, alternating the same
requests between them: the responses must be identical, no request may block (1 s bound), the agent's
RSS growth stays bounded, its counters account for every span (sampled = exported + dropped + pending),
and once the destination recovers, spans of new requests arrive without anything being restarted.
Figures (requests, p99 of both, their ratio, spans, drops, RSS) go to results/faults-*.json.
"""

from __future__ import annotations

import ast
import os
import signal
import sqlite3
import threading
import time

import pytest
from destinations import FaultyHTTP, FaultyStatsd, SmallDisk
from fleet import Server
from harness import APP, Member, Pair, agent_warnings, dropped_total, write_result

FAULT_PHASE_S = 2.5
RSS_GROWTH_BOUND_KB = 40 * 1024  # queue bound 2000 spans: a few MB at most; this leaves room for noise
RECOVERY_TIMEOUT_S = 45.0
QUEUE = {"AUTOINSTR_MAX_QUEUE_SPANS": "2000", "AUTOINSTR_MAX_BATCH_SPANS": "500"}
TOKEN = "tok-0123456789-secret"
API_KEY = "key-abcdef-SECRET"


@pytest.fixture(scope="module")
def baseline(sandbox_factory):
    """The app without the agent, shared by the module's tests."""
    box = sandbox_factory("baseline")
    box.write("app.py", APP)
    server = Server(box, Member("baseline", agent=False))
    server.wait_ready(time.monotonic() + 30)
    yield server
    server.stop()
    server.reap(time.monotonic() + 10)


def account(stats: dict) -> None:
    """Every span sampled is exported, dropped (counted, by reason) or still pending."""
    pending = sum(e["pending"] for e in stats["exporters"].values()) + stats["spans_queued"]
    assert stats["spans_sampled"] == stats["spans_exported"] + dropped_total(stats) + pending, stats


def wait_for(condition, timeout: float, pair: Pair, what: str, describe=lambda: ""):
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        pair.agent_state(flush=1)
        if condition():
            return
        time.sleep(0.3)
    raise AssertionError("%s did not happen within %ss; agent: %s; %s\n%s" % (
        what, timeout, pair.agent_state()["stats"], describe(), pair.agent.tail()))


def run_fault(pair: Pair, name: str, start_fault, end_fault, received_paths, phase_s: float = FAULT_PHASE_S,
              warm: bool = True, describe=lambda: "") -> dict:
    """warm-up -> fault for phase_s -> recovery; returns the figures (also written to results/)."""
    if warm:
        warm_paths = pair.drive("warm", count=20)
        wait_for(lambda: set(p for p in warm_paths if not p.startswith("/missing")) <= received_paths(), 20, pair,
                 "warm-up spans arriving")
    before = pair.agent_state()
    start_fault()
    fault_started = time.monotonic()
    pair.drive("fault", seconds=phase_s)
    during = pair.agent_state()
    end_fault()
    fault_s = time.monotonic() - fault_started
    # Recovery: spans made while the queue is still full of the fault's backlog may be dropped (counted);
    # keep sending small batches until one arrives whole, then every request after it must arrive.
    recovered_at = time.monotonic()
    sent: list = []
    end = recovered_at + RECOVERY_TIMEOUT_S
    while True:
        sent.append(pair.drive("after%d" % len(sent), count=5))
        pair.agent_state(flush=1)
        got = received_paths()
        if any(set(batch) <= got for batch in sent):
            break
        if time.monotonic() > end:
            raise AssertionError("export did not resume within %ss; agent: %s; %s\n%s" % (
                RECOVERY_TIMEOUT_S, pair.agent_state()["stats"], describe(), pair.agent.tail()))
        time.sleep(0.2)
    recovery_s = time.monotonic() - recovered_at
    final_paths = pair.drive("final", count=30)
    wait_for(lambda: set(final_paths) <= received_paths(), 20, pair, "every span after recovery arriving",
             describe)
    final = pair.agent_state(flush=5)
    stats = final["stats"]
    pair.assert_app_unharmed()
    account(stats)
    rss_growth = during["rss_kb"] - before["rss_kb"]
    assert rss_growth < RSS_GROWTH_BOUND_KB, (before["rss_kb"], during["rss_kb"])
    figures = pair.figures()
    figures.update({"fault": name, "fault_s": round(fault_s, 1), "recovery_s": round(recovery_s, 1),
                    "spans_sampled": stats["spans_sampled"], "spans_exported": stats["spans_exported"],
                    "spans_dropped": stats["spans_dropped"], "export_errors": stats["export_errors"],
                    "rss_kb_before": before["rss_kb"], "rss_kb_during": during["rss_kb"],
                    "rss_kb_end": final["rss_kb"], "agent_warnings": len(agent_warnings(pair.agent))})
    write_result("faults-" + name, figures)
    return figures


def assert_quiet_and_secret_free(pair: Pair) -> None:
    warnings = agent_warnings(pair.agent)
    assert len(warnings) <= 2, warnings  # one per failure kind at most, never one per batch
    output = "".join(pair.agent.output["stderr"] + pair.agent.output["stdout"])
    assert TOKEN not in output and API_KEY not in output


# ------------------------------------------------------------------------ collector and OTLP

HTTP_FAULTS = ["refuse", "blackhole", "slow", "500", "429", "garbage"]


def http_env(kind: str, dest: FaultyHTTP) -> dict:
    env = dict(QUEUE)
    if kind == "collector":
        env.update(AUTOINSTR_EXPORTER="collector", AUTOINSTR_COLLECTOR_URL=dest.url, AUTOINSTR_COLLECTOR_TOKEN=TOKEN)
    else:
        env.update(AUTOINSTR_EXPORTER="otlp", AUTOINSTR_OTLP_ENDPOINT=dest.url,
                   OTEL_EXPORTER_OTLP_HEADERS="api-key=" + API_KEY)
    return env


@pytest.mark.parametrize("kind,fault", [(k, f) for k in ("collector", "otlp") for f in HTTP_FAULTS]
                         + [("collector", "none")])
def test_http_destination_fault(sandbox, baseline, kind, fault):
    dest = FaultyHTTP("ok")
    pair = Pair(sandbox, http_env(kind, dest), baseline=baseline)
    try:
        phase = 11.0 if fault == "slow" else FAULT_PHASE_S  # a whole 10 s export timeout elapses
        mode = "ok" if fault == "none" else fault  # "none": the control, a healthy destination throughout
        figures = run_fault(pair, "%s-%s" % (kind, fault), lambda: dest.set_mode(mode), lambda: dest.set_mode("ok"),
                            dest.paths, phase_s=phase, describe=lambda: "destination answers: %s" % dest.requests)
        assert not dest.rejected, dest.rejected[:3]
        if fault == "none":
            assert figures["export_errors"] == 0 and dropped_total(figures) == 0, figures
            return
        assert figures["export_errors"] > 0, "the fault was never met: %s" % figures
        if fault in ("refuse", "500", "garbage"):  # retried with backoff: far fewer attempts than flushes
            assert sum(dest.requests.get(m, 0) for m in (fault,)) <= 20, dest.requests
        if fault == "429":  # Retry-After: 1 is honoured (flushes every 0.2 s would otherwise ask 12 times)
            assert dest.requests.get("429", 0) <= FAULT_PHASE_S + 2, dest.requests
        stored = len(dest.span_ids())
        assert stored >= figures["spans_exported"] or fault == "slow", (stored, figures)
        assert_quiet_and_secret_free(pair)
    finally:
        pair.stop()
        dest.close()


def test_sigterm_exit_is_bounded_while_the_destination_hangs(sandbox, baseline):
    """At exit, a destination that never answers holds the process no longer than the shutdown deadline;
    what could not be sent is counted (AUTOINSTR_DEBUG prints the exit stats)."""
    dest = FaultyHTTP("blackhole")
    env = http_env("collector", dest)
    env.update(AUTOINSTR_SHUTDOWN_TIMEOUT="2", AUTOINSTR_DEBUG="1")
    pair = Pair(sandbox, env, baseline=baseline)
    try:
        pair.drive("hang", count=100)
        pair.assert_app_unharmed()
        started = time.monotonic()
        pair.agent.proc.send_signal(signal.SIGTERM)
        pair.agent.proc.wait(20)
        exit_s = time.monotonic() - started
        pair.agent.reap(time.monotonic() + 5)
        assert exit_s < 2 + 3, exit_s
        exit_lines = [line for line in pair.agent.output["stderr"] if "exit stats: " in line]
        assert exit_lines, pair.agent.tail()
        exit_stats = ast.literal_eval(exit_lines[-1].split("exit stats: ", 1)[1].strip())
        assert exit_stats["spans_sampled"] > 0 and exit_stats["spans_exported"] == 0
        # nothing was sent: at the deadline, every span is counted as dropped (what was still pending included)
        assert exit_stats["spans_sampled"] == dropped_total(exit_stats), exit_stats
        write_result("faults-exit-blackhole", {"exit_s": round(exit_s, 2), "requests": pair.requests,
                                               "spans_sampled": exit_stats["spans_sampled"],
                                               "spans_dropped": exit_stats["spans_dropped"]})
    finally:
        pair.stop()
        dest.close()


# ----------------------------------------------------------------------------------- statsd


@pytest.mark.parametrize("fault", ["refuse", "blackhole", "garbage"])
def test_statsd_destination_fault(sandbox, baseline, fault):
    dest = FaultyStatsd("ok")
    env = {"AUTOINSTR_EXPORTER": "none", "AUTOINSTR_STATSD": "127.0.0.1:%d" % dest.port}
    pair = Pair(sandbox, env, baseline=baseline)
    prefix = "autoinstr.agent.http.server.requests."
    try:
        pair.drive("warm", count=20)
        deadline = time.monotonic() + 20
        while dest.counter_total(prefix) < 20 and time.monotonic() < deadline:
            time.sleep(0.2)
        assert dest.counter_total(prefix) >= 20, dest.lines[:20]
        before = pair.agent_state()
        dest.set_mode(fault)
        pair.drive("fault", seconds=FAULT_PHASE_S)
        during = pair.agent_state()
        dest.set_mode("ok")
        time.sleep(0.5)  # a flush interval and more: the datagrams of the fault phase are gone
        with dest.lock:
            dest.lines.clear()
        after = pair.drive("after", count=40)
        deadline = time.monotonic() + 20
        while dest.counter_total(prefix) < len(after) and time.monotonic() < deadline:
            time.sleep(0.2)
        assert dest.counter_total(prefix) >= len(after), "metrics did not resume"
        pair.assert_app_unharmed()
        statsd = pair.agent_state()["stats"]["statsd"]
        if fault == "refuse":  # the kernel's port-unreachable surfaces as send errors: counted
            assert statsd["send_errors"] > 0, statsd
        assert during["rss_kb"] - before["rss_kb"] < RSS_GROWTH_BOUND_KB
        figures = pair.figures()
        figures.update({"fault": "statsd-" + fault, "statsd": statsd, "rss_kb_before": before["rss_kb"],
                        "rss_kb_during": during["rss_kb"]})
        write_result("faults-statsd-" + fault, figures)
        assert len(agent_warnings(pair.agent)) <= 1, agent_warnings(pair.agent)
    finally:
        pair.stop()
        dest.close()


# ------------------------------------------------------------------------------ local store

def store_paths(path: str):
    def read() -> set:
        if not os.path.exists(path):
            return set()
        try:
            db = sqlite3.connect("file:%s?mode=ro" % path, uri=True, timeout=1)
            try:
                rows = db.execute("SELECT json_extract(attributes, '$.\"url.path\"') FROM spans "
                                  "WHERE kind = 'server'").fetchall()
            finally:
                db.close()
        except sqlite3.Error:
            return set()
        return {r[0] for r in rows}
    return read


@pytest.fixture
def small_disk(sandbox):
    reason = SmallDisk.unavailable()
    if reason:
        pytest.skip(reason)
    disk = SmallDisk(os.path.join(sandbox.dir, "disk"), size="4m")
    yield disk
    disk.unmount()


def local_env(store: str) -> dict:
    env = dict(QUEUE)
    env.update(AUTOINSTR_EXPORTER="local", AUTOINSTR_STORE=store)
    return env


def test_store_on_a_full_disk(sandbox, baseline, small_disk):
    store = os.path.join(small_disk.path, "spans.db")
    pair = Pair(sandbox, local_env(store), baseline=baseline)
    try:
        figures = run_fault(pair, "local-full-disk", small_disk.fill, small_disk.unfill, store_paths(store))
        assert figures["export_errors"] > 0, figures
        assert len(agent_warnings(pair.agent)) <= 2, agent_warnings(pair.agent)
    finally:
        pair.stop()


def test_store_on_a_read_only_disk(sandbox, baseline, small_disk):
    """The store cannot even be created at first; once the disk is writable, spans are stored."""
    store = os.path.join(small_disk.path, "spans.db")
    small_disk.remount(readonly=True)
    pair = Pair(sandbox, local_env(store), baseline=baseline)
    try:
        figures = run_fault(pair, "local-read-only-disk", lambda: None, lambda: small_disk.remount(readonly=False),
                            store_paths(store), warm=False)
        assert figures["export_errors"] > 0, figures
        assert os.stat(store).st_mode & 0o777 == 0o600
        assert len(agent_warnings(pair.agent)) <= 2, agent_warnings(pair.agent)
    finally:
        pair.stop()


def test_store_locked_by_another_connection(sandbox, baseline):
    """Another process's connection holds BEGIN EXCLUSIVE for longer than the busy timeout (5 s)."""
    store = os.path.join(sandbox.dir, "spans.db")
    pair = Pair(sandbox, local_env(store), baseline=baseline)
    holder: dict = {}
    release = threading.Event()

    def lock() -> None:
        db = sqlite3.connect(store, isolation_level=None, check_same_thread=False)
        db.execute("BEGIN EXCLUSIVE")
        holder["db"] = db

    def unlock() -> None:
        db = holder.pop("db")
        db.execute("COMMIT")
        db.close()
        release.set()

    try:
        figures = run_fault(pair, "local-locked", lock, unlock, store_paths(store), phase_s=7.0)
        assert figures["export_errors"] > 0, figures
        assert len(agent_warnings(pair.agent)) <= 2, agent_warnings(pair.agent)
    finally:
        if "db" in holder:
            holder["db"].close()
        pair.stop()
