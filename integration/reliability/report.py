"""Writes docs/RELIABILITY.md from the figures the reliability tests left in results/*.json.

    .venv/bin/python -m pytest integration/reliability      # AUTOINSTR_SOAK=1 for the 60 s load and flood
    .venv/bin/python integration/reliability/report.py      # -> docs/RELIABILITY.md
"""

from __future__ import annotations

import glob
import json
import os

HERE = os.path.dirname(os.path.abspath(__file__))
DOC = os.path.join(os.path.dirname(os.path.dirname(HERE)), "docs", "RELIABILITY.md")
FAULTS = "test_reliability_faults.py"
# the bounds the tests assert (test_reliability_faults.RSS_GROWTH_BOUND_KB, test_reliability_load.FLOOD_RSS_*)
RSS_BOUND_MB = 12
NOT_CONVERTING = ("exporter-none", "local-locked", "otlp-blackhole", "collector-blackhole")
FLOOD_BOUND_MB = 48
FLOOD_LATE_BOUND_MB = 8

# result name -> (fault, what the agent does, test)
ROWS = [
    ("exporter-none", "none (control): no exporter (AUTOINSTR_EXPORTER=none), the instrumentation alone",
     "makes the spans, exports nothing", FAULTS),
    ("local-none", "none (control): the local store (the default exporter), healthy throughout", "stores everything",
     FAULTS),
    ("collector-none", "none (control): a healthy collector throughout", "exports everything", FAULTS),
    ("collector-refuse", "collector: connection refused",
     "retries with backoff (per destination, up to 10 s apart), then drops the batch: `export_failed`", FAULTS),
    ("collector-blackhole", "collector: accepts, never answers",
     "the send thread waits up to the export timeout; the queue fills, new spans dropped: `queue_full`", FAULTS),
    ("collector-slow", "collector: answers after 10.5 s",
     "times out at 10 s, retries (the collector de-duplicates a batch it got twice)", FAULTS),
    ("collector-500", "collector: 500", "retried with backoff, then dropped: `export_failed`", FAULTS),
    ("collector-429", "collector: 429, Retry-After: 1", "waits at least Retry-After, then retries", FAULTS),
    ("collector-garbage", "collector: answers non-HTTP bytes", "a network error: retried, then dropped", FAULTS),
    ("otlp-refuse", "OTLP: connection refused", "as the collector", FAULTS),
    ("otlp-blackhole", "OTLP: accepts, never answers", "as the collector", FAULTS),
    ("otlp-slow", "OTLP: answers after 10.5 s", "as the collector", FAULTS),
    ("otlp-500", "OTLP: 500", "as the collector", FAULTS),
    ("otlp-429", "OTLP: 429, Retry-After: 1", "as the collector", FAULTS),
    ("otlp-garbage", "OTLP: answers non-HTTP bytes", "as the collector", FAULTS),
    ("local-full-disk", "store on a full disk (tmpfs)",
     "insert fails, retried, dropped; stores again once space is back", FAULTS),
    ("local-read-only-disk", "store on a read-only disk", "the store cannot be created; retried until it can", FAULTS),
    ("local-read-only-while-open", "the store's disk turns read-only under the open store (ext4 image, "
     "errors=remount-ro, a filesystem error reported through ext4's sysfs), then is repaired (e2fsck) and "
     "mounted again", "every write fails (disk I/O error): retried, dropped (counted); a failed write closes "
     "the connection, each retry opens the store afresh at its path, so it stores again once the disk is back",
     FAULTS),
    ("local-locked", "store locked (another connection's BEGIN EXCLUSIVE, 7 s)",
     "waits the 5 s busy timeout off the request path, retries; the queue bounds memory", FAULTS),
    ("statsd-refuse", "statsd: nothing listening", "connected UDP socket: each refused send counted (`send_errors`)",
     FAULTS),
    ("statsd-blackhole", "statsd: bound, never reads", "the kernel drops datagrams (UDP: not observable, not counted)",
     FAULTS),
    ("statsd-garbage", "statsd: answers garbage datagrams", "never read; no effect", FAULTS),
]


def test_of(name: str) -> str:
    kind, _, fault = name.partition("-")
    if fault == "none" and kind in ("exporter", "local"):
        return "`test_no_fault_control[%s]`" % ("none" if kind == "exporter" else kind)
    if kind in ("collector", "otlp"):
        return "`test_http_destination_fault[%s-%s]`" % (kind, fault)
    if kind == "statsd":
        return "`test_statsd_destination_fault[%s]`" % fault
    return {"full-disk": "`test_store_on_a_full_disk`", "read-only-disk": "`test_store_on_a_read_only_disk`",
            "read-only-while-open": "`test_store_disk_turns_read_only_while_the_store_is_open`",
            "locked": "`test_store_locked_by_another_connection`"}[fault]


def load(name: str) -> dict:
    path = os.path.join(HERE, "results", name + ".json")
    if not os.path.exists(path):
        return {}
    with open(path) as f:
        return json.load(f)


def dropped(d: dict) -> str:
    parts = ["%s %d" % (k, v) for k, v in sorted((d.get("spans_dropped") or {}).items()) if v]
    return ", ".join(parts) or "0"


def mb(kb: float) -> str:
    return "%.1f" % (kb / 1024)


def bug_types() -> str:
    """The exception types that disable an exporter, as the installed agent has them (pipeline._BUGS)."""
    try:
        from autoinstr.export.pipeline import _BUGS

        return ", ".join(e.__name__ for e in _BUGS)
    except Exception:  # the report is still written without the package installed
        return "TypeError, AttributeError, KeyError, IndexError, NameError, AssertionError, RecursionError"


def p99_cell(d: dict) -> str:
    return "%.2f / %.2f / %.2f" % (d["baseline"]["p99_ms"], d.get("baseline2", {}).get("p99_ms", 0),
                                  d["agent"]["p99_ms"])


def ratio(value: object) -> str:
    return "%.2f" % value if isinstance(value, (int, float)) else ""


def within(d: dict) -> str:
    if "p99_bound_ms" not in d:
        return ""
    ok = d["agent"]["p99_ms"] <= d["p99_bound_ms"]
    return ("yes" if ok else "**no**") + " (%.2f)" % d["p99_bound_ms"]


def spread(values: list) -> str:
    values = sorted(values)
    if not values:
        return ""
    return "%.2f-%.2f (median %.2f)" % (values[0], values[-1], values[len(values) // 2])


def last_run_outside() -> str:
    """The fault rows whose last run was outside the p99 rule, in words."""
    outside = [name for name, _, _, _ in ROWS if load("faults-" + name).get("p99_bound_ms") is not None
               and load("faults-" + name)["agent"]["p99_ms"] > load("faults-" + name)["p99_bound_ms"]]
    if not outside:
        return "every row was within it"
    return "%d of %d rows were outside it: %s" % (len(outside), len(ROWS), ", ".join(outside))


def max_aa(rows: dict) -> float:
    aa = [r["p99_ratio_aa"] for runs in rows.values() for r in runs if r.get("p99_ratio_aa")]
    return max([1.0] + aa + [1 / x for x in aa])


def calibration(w) -> None:
    cal = load("p99-calibration")
    if not cal:
        return
    rule = cal.get("rule", {})
    k, c = rule.get("k", "?"), rule.get("c_ms", "?")
    w("### p99 within noise: the rule, and how it was calibrated")
    w("")
    w("The rule: **agent p99 <= max(p99 no agent, p99 no agent again) x %s + %s ms**, asserted by every row. The "
      "second "
      "server without the agent is an A/A control: the ratio of the two no-agent p99s (`A/A`) is what this "
      "run's noise alone does to a p99. Each row was run %d times (`integration/reliability/calibrate.py`, "
      "results/p99-calibration.json; Python %s, %s); per row, the spread of the A/A ratio, of the agent's "
      "ratio to the larger no-agent p99 (what the rule bounds), and how many runs met the rule:"
      % (k, c, cal.get("runs", 0), cal.get("python", "?"), cal.get("machine", "?")))
    w("")
    w("| row | runs | p99 no agent (ms) | A/A ratio | agent / larger no-agent p99 | within the rule |")
    w("|---|---|---|---|---|---|")
    both_ways: list = []
    for name, runs in sorted(cal.get("rows", {}).items()):
        aa = [r["p99_ratio_aa"] for r in runs if r.get("p99_ratio_aa")]
        both_ways += aa + [1 / x for x in aa]
        base = [r["baseline"]["p99_ms"] for r in runs] + [r["baseline2"]["p99_ms"] for r in runs]
        ok = sum(1 for r in runs if r["agent"]["p99_ms"] <= r["p99_bound_ms"])
        w("| %s | %d | %.2f-%.2f | %s | %s | %d of %d |" % (
            name, len(runs), min(base), max(base), spread(aa), spread([r["p99_ratio_max"] for r in runs]), ok,
            len(runs)))
    w("")
    both_ways.sort()
    if both_ways:
        n = len(both_ways)
        rows = cal.get("rows", {})
        gap = max([abs(r["baseline"]["p99_ms"] - r["baseline2"]["p99_ms"]) for runs in rows.values() for r in runs]
                  or [0.0])
        alone = [r["p99_ratio_max"] for r in rows.get("exporter-none", [])]
        w("A/A ratios, both ways (%d): median %.2f, 90th percentile %.2f, largest %.2f. K = %s is above the largest "
          "A/A ratio measured here (and 1.41, the largest of an earlier series of 48 runs); C = %s ms is a floor "
          "for sub-millisecond p99s, where half of the p99 is only a few hundred microseconds (the two no-agent "
          "p99s of one run differed by up to %.2f ms). The "
          "agent's own per-request cost (`exporter-none`: the instrumentation without any export) shows as about "
          "+0.06 ms at p50 and a ratio of %s at p99, within the rule. An agent stalling 2%% of its requests by "
          "5 ms holding the GIL (a temporary experiment, not committed: the pipeline's submit sleeping in C "
          "through ctypes.PyDLL) made every row it was tried on fail: agent p99 4.6-5.3 ms against bounds of "
          "1.2-2.0 ms (12 of 12 runs of 4 rows). With another process spinning on one of the two cores, every "
          "p99 rose to 3-4 ms and the A/A ratio reached 2.04 once (in 30 runs), yet the agent's ratio to the "
          "larger of the two no-agent p99s stayed within 0.80-1.18 on the rows that convert no spans."
          % (n, both_ways[n // 2], both_ways[int(n * 0.9)], both_ways[-1], k, c, gap,
             spread(alone) if alone else "?"))
        w("")
        converting = sorted(name for name in rows if name not in NOT_CONVERTING and not name.startswith("statsd"))
        medians = [sorted(r["p99_ratio_max"] for r in rows[name])[len(rows[name]) // 2] for name in converting]
        if medians:
            w("The rows whose agent converts and exports every span (%s) keep a p99 ratio above the A/A one "
              "(medians %.2f-%.2f, against A/A medians near 1.0), within the rule in every run above. Until "
              "2026-11-27 they were not held to it: the flush thread's Python conversion (about 12 us of CPU a "
              "span for the collector, holding the GIL in slices of 128 spans) put them outside it in some runs "
              "(medians 1.33-1.51; local-none within it in 5 of 6 runs, the collector control failing 3 of 5 in "
              "an earlier series). The compiled conversion (autoinstr/_speedups.c: about 0.4 us a span, the "
              "collector's msgpack and the store's JSON written in C) took most of that work off the GIL; with "
              "AUTOINSTR_SPEEDUPS=false (or no C compiler at install) those rows are back to the older figures. "
              "The OTLP rows outside the calibration sat near the bound until OTLP's protobuf was written in C "
              "too: the Python encoder took about 23.5 us a span, holding the GIL about 10 ms for a batch of 500 "
              "at each export attempt, and one CI run put otlp-garbage at 1.91 times the no-agent p99 (bound: "
              "1.5 times + 0.25 ms). With the compiled Spans (0.9 us a span) and a GIL pause between the batches "
              "of a backlog, the OTLP rows measured 1.12-1.26 in the run that followed."
              % (", ".join(converting), min(medians), max(medians)))
            w("")


def main() -> None:
    lines: list = []
    w = lines.append
    w("# Reliability and security")
    w("")
    w("What the agent does when things go wrong, which test proves it, and what was measured (figures of the")
    w("last run on the shared 2-core machine: `.venv/bin/python integration/reliability/report.py` rewrites this")
    w("file from `integration/reliability/results/`). All tests run with `./test.sh` (`pytest tests integration`);")
    w("`AUTOINSTR_SOAK=1` runs the 60 s load and flood variants.")
    w("")
    pythons = sorted({load(os.path.basename(f)[:-5]).get("python", "?")
                      for f in glob.glob(os.path.join(HERE, "results", "*.json"))})
    w("Figures measured with Python %s." % ", ".join(pythons))
    w("")
    w("## Faults at the destination")
    w("")
    w("Each row: the same WSGI app under waitress three times, twice without the agent (the second one an A/A")
    w("control: it measures the run's own noise) and once with it, the same requests sent to the three in")
    w("rotation (the order changes every round: none always goes first; `rounds`). The fake destinations run in")
    w("processes of their own, not in the test process that times the requests. The fault lasts 2.5 s (10 s for")
    w("the collector refusing and never answering, 11 s for 10.5 s answers, 7 s for the lock), then the")
    w("destination recovers by itself. Every row asserts: identical responses; no request over 1 s; the agent's")
    w("p99 within the run's noise (see the rule below; `within` gives the bound in ms); every span accounted for")
    w("(sampled = exported + dropped + pending); export resumed without a restart (`resumed`: seconds until a")
    w("request made after recovery was received); the agent's RSS (from /proc, every 0.25 s) at most %d MB above"
      % RSS_BOUND_MB)
    w("its value just before the fault, at every sample during the fault and at the end of the run. The queue")
    w("bound in these tests is 2000 spans (AUTOINSTR_MAX_QUEUE_SPANS): what may grow is that queue, the")
    w("exporter's backlog (records of up to twice as many spans) and the allocator's arenas; a 10 s fault")
    w("with a leak of 1 MB/s exceeds the bound (a temporary experiment, an agent process keeping 1 MB more")
    w("each second, failed both 10 s rows: +24.2 MB refused, +13.2 MB never answering). The first three rows")
    w("are controls, without a fault.")
    w("")
    w("| fault | what the agent does | test (%s) | rounds | p99 ms: no agent / A/A / agent | A/A ratio | "
      "agent ratio | within | spans | exported | dropped (counted) | RSS MB: before, max during, end | resumed |"
      % FAULTS)
    w("|---|---|---|---|---|---|---|---|---|---|---|---|---|")
    for name, fault, does, _ in ROWS:
        d = load("faults-" + name)
        if not d:
            w("| %s | %s | %s | (not run) | | | | | | | | | |" % (fault, does, test_of(name)))
            continue
        rss = "%s, %s, %s" % (mb(d.get("rss_kb_before", 0)), mb(d.get("rss_kb_during", 0)),
                              mb(d.get("rss_kb_end", 0)) if d.get("rss_kb_end") else "")
        spans = d.get("spans_sampled", "")
        exported = d.get("spans_exported", "")
        drops = dropped(d)
        if name.startswith("statsd"):
            st = d.get("statsd", {})
            spans, exported, drops = "-", "%d datagrams" % st.get("datagrams_sent", 0), "send_errors %d" % st.get(
                "send_errors", 0)
        resumed = ("%s s" % d["recovery_s"]) if "recovery_s" in d else ("-" if name == "exporter-none" else "yes")
        w("| %s | %s | %s | %s | %s | %s | %s | %s | %s | %s | %s | %s | %s |" % (
            fault, does, test_of(name), d.get("requests", ""), p99_cell(d), ratio(d.get("p99_ratio_aa")),
            ratio(d.get("p99_ratio_max")), within(d), spans, exported, drops, rss, resumed))
    w("")
    w("`A/A ratio`: p99 of the second no-agent server over the first's. `agent ratio`: the agent's p99 over the "
      "larger of the two no-agent p99s.")
    exit_d = load("faults-exit-blackhole")
    if exit_d:
        w("")
        w("SIGTERM while the collector never answers: the process exited %.2f s after the signal "
          "(AUTOINSTR_SHUTDOWN_TIMEOUT=2); %d spans, all counted as dropped (%s)."
          % (exit_d["exit_s"], exit_d["spans_sampled"], dropped(exit_d)))
    w("")
    calibration(w)
    w("### Exporter errors: disabled or retried")
    w("")
    w("An exporter raising %s has a bug of its own (`_BUGS` in autoinstr/export/pipeline.py): it is disabled at "
      "once, with one warning (`exporter X failed (...); it is disabled`), its spans are dropped and counted from "
      "then on, and the other exporters go on. Any other exception is taken for a failing destination and "
      "retried: OSError (refused, reset, timed out, a full or read-only disk, an I/O error), the HTTP exporters' "
      "ExportError (an error status, a garbage answer, 429/503 with Retry-After), sqlite3's errors (locked, disk "
      "full, read-only, disk I/O error) and the store's StoreError, and anything else. A retried batch waits "
      "0.5, 1, 2 s (at least the server's Retry-After), the destination itself at most 10 s between attempts; "
      "after 3 retries the batch is dropped and counted (`export_failed`), with one warning per exporter "
      "(`exporter X failed (...); dropping a batch ...`), never one per batch. An ExportError that says "
      "retrying cannot help (a 4xx other than 408 and 429, a redirect) drops its batch at once. Proved by "
      "`test_exporter_raising_is_counted_with_one_warning_and_the_other_keeps_exporting` (OSError: exactly one "
      "warning, not disabled) and `test_exporter_with_a_bug_is_disabled_with_one_warning_and_the_other_keeps_"
      "exporting` (TypeError) in test_reliability_isolation.py." % bug_types())
    w("")
    w("## Load")
    w("")
    for name in sorted(glob.glob(os.path.join(HERE, "results", "load-*.json"))):
        d = load(os.path.basename(name)[:-5])
        w("gunicorn, 4 sync workers, `--max-requests 300 --max-requests-jitter 100`, under `wrk -t2 -c16` for %d s, "
          "shipping to a real `autoinstr collector`, then SIGTERM (`%s`): wrk counted %d responses, the app "
          "answered %d (wrk does not count the ones in flight when it stops), **%d server spans stored, each "
          "exactly one of those responses** (matched by trace and span id; none missing, none twice), through "
          "%d worker processes (recycled every ~%.1f s). %s."
          % (d["load_s"], os.path.basename(name), d["wrk_completed"], d["answered"], d["server_spans_stored"],
             d["workers_seen"], d["load_s"] * 4.0 / max(1, d["workers_seen"]), d["wrk"][0].strip()))
        w("")
    for name in sorted(glob.glob(os.path.join(HERE, "results", "flood*.json"))):
        d = load(os.path.basename(name)[:-5])
        late = next((k for k in d if k.startswith("rss_growth_after_") and k.endswith("s_mb")
                     and k != "rss_growth_after_first_s_mb"), None)
        late_text = (" and %.1f MB after its first %s s (a leak would show there; bound asserted: %d MB)"
                     % (d[late], late[len("rss_growth_after_"):-len("s_mb")], FLOOD_LATE_BOUND_MB)) if late else ""
        per_second = d.get("rss_kb_per_second", [])
        step = 1 if len(per_second) <= 12 else 5
        w("Span flood (`%s`): %d threads making spans as fast as they can for %d s: %d spans made, %d exported, "
          "%s; RSS %.1f MB before the flood, %.1f MB after its first second, at most %.1f MB: **growth %.1f MB "
          "from before the flood** (bound asserted: %d MB), %.1f MB of it after the first second%s. RSS (MB) "
          "at %s: %s. The flush thread takes at most a quarter of the time on early flushes, so a flood is "
          "mostly dropped (counted), not queued." % (
              os.path.basename(name), d["threads"], d["seconds"], d["spans_made"], d["spans_exported"], dropped(d),
              d["rss_start_kb"] / 1024, d["rss_settled_kb"] / 1024, d["rss_max_kb"] / 1024,
              d.get("rss_growth_mb", 0), FLOOD_BOUND_MB, d["rss_growth_after_first_s_mb"], late_text,
              "each second" if step == 1 else "1 s and every 5 s after",
              " ".join(mb(kb) for kb in per_second[::step]) or "-"))
        w("")
    w("## Concurrency, isolation, hostile input, secrets")
    w("")
    w("| property | what the agent does | test |")
    w("|---|---|---|")
    for row in (
        ("threads, a shared thread pool, asyncio tasks interleaving at every await, plain threads, calls back "
         "into the server, many requests at once; and many requests run as tasks of one event loop (spans open "
         "across awaits, sub-tasks, httpx and aiohttp async calls into a traced server)", "no span ever lands "
         "in another request's trace, in either process (plain threads start traces of their own); every "
         "planned span arrives", "test_reliability_concurrency.py (hypothesis)"),
        ("an integration's wrapper raising (before or after the call it wraps)", "the call completes as without "
         "the agent (its result or exception unchanged, not called twice); the integration is disabled with "
         "one warning; the others go on", "test_reliability_isolation.py"),
        ("an exporter raising", "a bug (%s) disables it with one warning; anything else (OSError, ExportError, "
         "sqlite3 errors...) is retried, then dropped and counted, with exactly one warning; the other exporters "
         "get every span (see \"Exporter errors\" above)" % bug_types(), "test_reliability_isolation.py"),
        ("attribute values the encoder cannot take (non-UTF-8 bytes, lone surrogates, recursive lists and "
         "dicts, str() raising, huge ints, NaN)", "escaped or replaced by text; the span and the others exported",
         "test_reliability_isolation.py"),
        ("traceparent, tracestate, baggage, B3 (single, multi) headers", "never raise; only valid ids accepted; "
         "what is sent on carries no CR/LF, stays within the limits", "tests/test_fuzz_hostile_input.py, "
         "tests/test_fuzz_atheris.py"),
        ("SQL normalization", "never raises; with obfuscation no quoted literal or comment survives "
         "(standard, E'', $$, MySQL double quotes, escapes)", "tests/test_fuzz_hostile_input.py, "
         "tests/test_fuzz_atheris.py"),
        ("collector ingest: msgpack, JSON, OTLP protobuf/JSON, mutated and random bodies, gzip bombs",
         "refused with a 4xx (Rejected), never another exception; what is accepted is valid",
         "tests/test_fuzz_hostile_input.py, tests/test_fuzz_atheris.py"),
        ("UI query parameters", "a page or a 4xx, never a 500; no markup echoed unescaped",
         "tests/test_fuzz_ui_params.py"),
        ("credentials in URLs, query and form values, headers, SQL", "userinfo removed, secret-looking query "
         "values REDACTED, bodies never recorded, headers only by allow-list (credentials REDACTED even then), "
         "SQL obfuscated: none of 9 planted secrets is in the store file", "test_reliability_secrets.py"),
        ("the store file", "created 0600 (its folder 0700)", "test_reliability_secrets.py, faults (read-only)"),
        ("the collector", "binds 127.0.0.1 by default; token compared with hmac.compare_digest over digests",
         "test_reliability_secrets.py"),
        ("received data", "no pickle, marshal, eval, exec or yaml.load anywhere in the package",
         "test_reliability_secrets.py"),
        ("handing finished spans over fails at every span end", "the span is lost (one warning), the call "
         "returns what it would without the agent: the span end guards itself (Span.__exit__/finish)",
         "test_reliability_isolation.py"),
        ("the agent's own output", "`--info`, warnings and debug lines print no token, API key or URL "
         "credentials", "test_reliability_secrets.py, faults"),
    ):
        w("| %s | %s | %s |" % row)
    w("")
    w("## Known gaps")
    w("")
    cal = load("p99-calibration")
    if cal:
        rows = cal.get("rows", {})
        # the rows where spans are converted and exported throughout (not: no exporter, statsd only, a queue
        # kept full by a locked store or a destination that never answers)
        converting = sorted(name for name in rows if name not in NOT_CONVERTING and not name.startswith("statsd"))
        medians = [sorted(r["p99_ratio_max"] for r in rows[name])[len(rows[name]) // 2] for name in converting]
        failing = [name for name in converting if any(r["agent"]["p99_ms"] > r["p99_bound_ms"] for r in rows[name])]
        if failing:
            ratios = [r["p99_ratio_max"] for name in failing for r in rows[name]]
            runs_failed = sum(1 for name in failing for r in rows[name] if r["agent"]["p99_ms"] > r["p99_bound_ms"])
            runs_all = sum(len(rows[name]) for name in failing)
            w("- **The agent's p99 is outside the run's noise whenever it converts and exports spans**: agent "
              "ratio %.2f-%.2f (medians of the rows %.2f-%.2f) on %s, against A/A ratios of %.2f-%.2f. The "
              "rule catches it in some runs (%d of %d calibration runs of those rows; in an earlier series the "
              "collector control failed 3 of 5; in the run of the table above, %s), when the machine is quiet "
              "enough that the no-agent p99 stays near 1-1.5 ms: the agent adds 0.5-1 ms to its p99, more than "
              "the rule's allowance there. So the suite holds only the rows whose agent exports nothing to the rule "
              "(`p99_asserted` in their results); the exporting rows are measured against it and reported here, "
              "not asserted, until this is fixed. Rows where no span is converted (no "
              "exporter, statsd only, a locked store: the queue is full and spans are dropped before conversion) "
              "stay within it. The cause is on the agent's side: the flush thread's Python work "
              "(converting spans to records and rows, encoding them: about 12 us of CPU a span, 5-6 ms every "
              "0.2 s flush at these rates) holds the GIL in slices of 128 spans, and every GIL hand-over of a "
              "request that arrives meanwhile (socket reads, the worker's wake-up, each SQLite call) waits for "
              "the current slice. Measured by logging each flush's start and end (CLOCK_MONOTONIC) in the agent "
              "and each request's in the test: the 1.7-3.7%% of the agent's requests that overlap a flush take "
              "1-2.3 ms at p50 and 5-8 ms at p99, the others have the p99 of the no-agent servers (1.01 against "
              "1.09 ms); 47 of the 68 agent requests above the no-agent p99 overlapped a flush. Slices of 16 "
              "spans halve the wait of an overlapping request (p50 0.8 ms) but stretch each flush, so more "
              "requests overlap: the p99 did not move." % (min(ratios), max(ratios), min(medians), max(medians),
                                                           ", ".join(failing),
                                                           1 / max_aa(rows), max_aa(rows), runs_failed, runs_all,
                                                           last_run_outside()))
    w("- statsd over UDP: datagrams a server never reads are dropped by the kernel, unseen by the sender.")
    w("- Spans made while the queue is full of a fault's backlog are dropped (counted); export resumes with the "
      "next ones.")
    w("")
    os.makedirs(os.path.dirname(DOC), exist_ok=True)
    with open(DOC, "w") as f:
        f.write("\n".join(lines))
    print("wrote", DOC)


if __name__ == "__main__":
    main()
