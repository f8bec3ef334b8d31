#!/usr/bin/env python3
"""Database benchmark: the traced cost of one sqlite3 `execute` of an already seen statement, plain against
autoinstr, ddtrace and OpenTelemetry (their dbapi-based sqlite3 integrations), in one run.

    python benchmarks/db_bench.py [--out benchmarks/results/db.md] [--quick] [--rounds 7] [--queries 20000]

Target (issue 4): the traced `execute` costs at most 10 us more than untraced, same process kind, same run.

Not a test: it asserts nothing. The venvs, the loopback sink and the round runner are core_bench's:

- variants, each its own process, alternated plain, autoinstr, ddtrace, otel, plain, ... for several rounds:
  plain is the autoinstr venv's `python` with the agent off; autoinstr is `autoinstr-run python` with its default
  local store exporter (to a temp store file per round); ddtrace is `ddtrace-run` (sqlite3 integration on) and
  OpenTelemetry is `opentelemetry-instrument` with opentelemetry-instrumentation-sqlite3, both exporting to
  core_bench's loopback sink, which counts the spans that really arrived;
- OpenTelemetry's sqlite3 instrumentation lives in its own venv (benchmarks/.venvs/otel-sqlite3): installed into
  core_bench's otel venv, opentelemetry-instrument would also instrument sqlite3 in core_bench's start-up runs,
  and its newest release may pin an older OpenTelemetry than core_bench's venv has;
- each process: an in-memory database with a 100-row table, one cursor; the same parameterized SELECT run
  through `cur.execute(SQL, (i % 100,))` then `cur.fetchall()` in every variant (OpenTelemetry's connection
  proxy does not trace `conn.execute`, so the cursor call is the one all three trace). Two shapes, each warmed up
  (the statement is seen many times before timing), then timed as: the tracer's flush (an empty export queue to
  start from), the loop, the tracer's flush again:
  *in a parent*: one parent span per 50 queries, made with each tracer's own API, as in a web request; its cost
  (1/50 of a span start and finish, and for ddtrace the trace's processing at root finish) is included in the
  per-query figure; plain runs the same batched loop without a parent. This is the headline.
  *no parent*: each query its own trace.
  The order of the two shapes flips every round.
- two figures per shape: *in loop* (the latency a query gains; the exporters' threads run as they do) and *incl.
  export* (loop + the flush after it: the CPU per query, export work included). One shape's spans fit in
  autoinstr's default queue, so ours drops none and its export work is all counted;
- added cost = variant minus plain *in the same round*, then the median over rounds (and best minus best).
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import shutil
import sqlite3
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

import core_bench as core
from core_bench import (
    AUTOINSTR_SETTINGS,
    DD_SETTINGS,
    OTEL_SETTINGS,
    Sink,
    Venv,
    best,
    fmt,
    log,
    med,
    one_line,
    tail,
    verdict,
)

HERE = Path(__file__).resolve().parent
DEFAULT_OUT = HERE / "results" / "db.md"
TARGET_US = 10.0
BATCH = 50  # queries per parent span
OURS_QUEUE = 10_000  # AUTOINSTR_MAX_QUEUE_SPANS's default: one shape's spans fit, so ours drops none
SHAPES = ("parent", "root")
SHAPE_LABEL = {"parent": "inside a parent span (1 per 50 queries)", "root": "no parent (each query its own trace)"}

SQLITE3_INSTRUMENTATION = "opentelemetry-instrumentation-sqlite3"

# Appended to core_bench's PROLOGUE (N, WARMUP, VARIANT, pc) and a variant's body (which defines `parent`).
DB_SCRIPT = """
import sqlite3
BATCH = int(os.environ["BENCH_BATCH"])
ORDER = os.environ["BENCH_ORDER"].split(",")
SQL = "SELECT id, name FROM users WHERE id = ?"

conn = sqlite3.connect(":memory:")
cur = conn.cursor()
cur.execute("CREATE TABLE users (id INTEGER PRIMARY KEY, name TEXT NOT NULL)")
cur.executemany("INSERT INTO users (id, name) VALUES (?, ?)", [(i, "user%d" % i) for i in range(100)])
conn.commit()
cur.execute(SQL, (7,))
assert cur.fetchall() == [(7, "user7")]

def run_root(n):
    for i in range(n):
        cur.execute(SQL, (i % 100,))
        cur.fetchall()

def run_parent(n):
    if parent is None:
        for b in range(0, n, BATCH):
            for i in range(b, b + BATCH):
                cur.execute(SQL, (i % 100,))
                cur.fetchall()
        return
    for b in range(0, n, BATCH):
        with parent("request"):
            for i in range(b, b + BATCH):
                cur.execute(SQL, (i % 100,))
                cur.fetchall()

shapes = {"parent": run_parent, "root": run_root}
for shape in ORDER:
    shapes[shape](WARMUP)
out = {"variant": VARIANT, "spans": N, "warmup": WARMUP, "order": ORDER}
for shape in ORDER:
    flush()  # start from an empty export queue: the warm-up's (or the other shape's) export is not timed here
    t0 = pc()
    shapes[shape](N)
    t1 = pc()
    flush()  # the export of this loop's spans, done now rather than at exit
    t2 = pc()
    out[shape + "_ns"] = (t1 - t0) / N
    out[shape + "_flush_ns"] = (t2 - t1) / N
    out[shape + "_incl_ns"] = (t2 - t0) / N
out["ns_per_span"] = out["parent_ns"]
out["executes"] = len(ORDER) * (N + WARMUP)
out["parents"] = 0 if parent is None else (N + WARMUP) // BATCH
out["connection_type"] = type(conn).__module__ + "." + type(conn).__qualname__
out["cursor_type"] = type(cur).__module__ + "." + type(cur).__qualname__
out["cursor_mro"] = [c.__module__ + "." + c.__qualname__ for c in type(cur).__mro__[:3]]  # ours: a subclass
out.update(extra())
out["end_mono_ns"] = time.monotonic_ns()
print("RESULT " + json.dumps(out, default=repr), flush=True)
"""

# core_bench's bodies import each tracer and define extra() (agent loaded, tracer enabled, OTel's provider and
# exporters); their span loop() is unused here. Each adds the tracer's own way to open a parent span.
PLAIN_BODY = """
parent = None
def flush():
    pass
def extra():
    return {"autoinstr_loaded": any(m.split(".")[0] == "autoinstr" for m in sys.modules)}
"""
OURS_BODY = (
    core.OURS_BODY
    + """
parent = autoinstr.span
def flush():
    autoinstr.flush(30.0)
"""
)
DDTRACE_BODY = (
    core.DDTRACE_BODY
    + """
parent = tracer.trace
flush = tracer.flush
"""
)
OTEL_BODY = (
    core.OTEL_BODY
    + """
parent = tracer.start_as_current_span
def flush():
    trace.get_tracer_provider().force_flush(30000)
"""
)


@dataclass
class DbVariant(core.Variant):
    def command(self, script: Path) -> list[str]:
        if self.launcher == "python" and self.venv is not None:  # plain: the venv's python, no launcher
            return [self.venv.python, str(script)]
        return super().command(script)


# ------------------------------------------------------------------------------------------------------ venvs


def setup_otel_sqlite3(base: Venv) -> Venv:
    """core_bench's otel requirements plus the sqlite3 instrumentation, in a venv of their own.

    The instrumentation pins opentelemetry-instrumentation to its own version, and its newest release can lag the
    distro's: so it is installed first and the distro pinned to the version it brought (left to itself, pip
    backtracks through every old distro for minutes)."""
    venv = Venv(
        "otel-sqlite3",
        [*base.requirements, SQLITE3_INSTRUMENTATION],
        [*base.dists, "opentelemetry-instrumentation-dbapi", SQLITE3_INSTRUMENTATION],
    )
    marker = json.dumps(venv.requirements)
    if core.create_venv(venv, marker):
        core.pip(venv, SQLITE3_INSTRUMENTATION)
        r = subprocess.run(
            [venv.python, "-c", f"import importlib.metadata as m; print(m.version({SQLITE3_INSTRUMENTATION!r}))"],
            capture_output=True,
            text=True,
            env=venv.env(),
        )
        version = r.stdout.strip()
        if r.returncode != 0 or not version:
            raise RuntimeError(f"{SQLITE3_INSTRUMENTATION} not importable after install: {tail(r.stderr, 400)}")
        rest = [req for req in base.requirements if req != "opentelemetry-distro"]
        core.pip(venv, f"{SQLITE3_INSTRUMENTATION}=={version}", f"opentelemetry-distro=={version}", *rest)
        core.mark(venv, marker)
    core.read_versions(venv)
    return venv


def setup_venvs(workdir: Path) -> tuple[Venv, Venv, Venv]:
    ours, dd, base_otel = core.setup_venvs(workdir)
    if base_otel.error:
        otel = Venv("otel-sqlite3", [], [], error=f"base otel venv failed: {base_otel.error}")
    else:
        try:
            log("[venv] otel-sqlite3")
            otel = setup_otel_sqlite3(base_otel)
        except (RuntimeError, subprocess.SubprocessError, OSError) as e:
            otel = Venv("otel-sqlite3", [], [], error=str(e))
            log(f"[venv] otel-sqlite3 FAILED: {tail(str(e), 800)}")
    return ours, dd, otel


# ------------------------------------------------------------------------------------------------------ rounds


def run_rounds(variants: list[DbVariant], workdir: Path, rounds: int, queries: int, warmup: int) -> None:
    script_of: dict[str, Path] = {}
    for v in variants:
        script_of[v.key] = workdir / f"db_{v.key}.py"
        script_of[v.key].write_text(core.PROLOGUE + v.body + DB_SCRIPT)
        v.env["BENCH_BATCH"] = str(BATCH)
        if v.venv is not None and v.venv.error:
            v.error = f"venv {v.venv.name} not available: {v.venv.error}"
    log("[db] warm-up round (byte-compiles, weeds out variants that cannot run)")
    for v in variants:
        if v.error:
            continue
        v.env["BENCH_ORDER"] = ",".join(SHAPES)
        try:
            core.run_span_round(v, script_of[v.key], workdir, BATCH * 20, BATCH * 4)
        except RuntimeError as e:
            v.error = str(e)
            log(f"[db] {v.key} FAILED: {tail(str(e), 800)}")
    for i in range(rounds):
        order = SHAPES if i % 2 == 0 else SHAPES[::-1]
        for v in variants:
            if v.error:
                continue
            v.env["BENCH_ORDER"] = ",".join(order)
            try:
                r = core.run_span_round(v, script_of[v.key], workdir, queries, warmup)
            except RuntimeError as e:
                v.error = str(e)
                log(f"[db] {v.key} FAILED in round {i + 1}: {tail(str(e), 800)}")
                continue
            r["round"] = i
            r["created"] = r["executes"] + r["parents"]  # the spans these calls should make (setup not counted)
            v.runs.append(r)
        cells = []
        for v in variants:
            last = v.runs[-1] if v.runs and v.runs[-1]["round"] == i else None
            cells.append(f"{v.key} " + (f"{fmt(last['parent_ns'])}/{fmt(last['root_ns'])}" if last else "-"))
        log(f"[db] round {i + 1}/{rounds} (ns per query, parent/root): " + "  ".join(cells))


def store_span_names(v: DbVariant, script: Path, workdir: Path) -> dict[str, Any]:
    """One small untimed run of ours whose store is kept and read by span name: shows the SELECTs themselves (and
    their parent) reached the store, not just some spans."""
    rundir = Path(tempfile.mkdtemp(prefix="names-", dir=workdir))
    store = rundir / "store.db"
    env = dict(v.env, BENCH_SPANS=str(BATCH * 2), BENCH_WARMUP=str(BATCH), BENCH_VARIANT=v.key,
               BENCH_ORDER=",".join(SHAPES), AUTOINSTR_STORE=str(store))  # fmt: skip
    try:
        r = subprocess.run(v.command(script), env=env, cwd=rundir, capture_output=True, text=True, timeout=120)
        if r.returncode != 0:
            return {"error": f"exit {r.returncode}: {tail(r.stderr, 400)}"}
        con = sqlite3.connect(str(store), timeout=5)
        try:
            rows = con.execute("SELECT name, kind, count(*) FROM spans GROUP BY name, kind ORDER BY 3 DESC").fetchall()
        finally:
            con.close()
        return {
            "names": {f"{name} ({kind})": n for name, kind, n in rows},
            "expected_selects": 2 * (BATCH * 3) + 1,
        }  # both shapes, plus the setup check
    except (sqlite3.Error, OSError, subprocess.SubprocessError) as e:
        return {"error": repr(e)}
    finally:
        shutil.rmtree(rundir, ignore_errors=True)


# ------------------------------------------------------------------------------------------------------ report


def by_round(v: DbVariant, key: str) -> dict[int, float]:
    return {r["round"]: r[key] for r in v.runs}


def compare(v: DbVariant, plain: DbVariant, key: str) -> dict[str, Any]:
    """ns per query for one figure (`parent_ns`, `root_incl_ns`, ...): best and median over rounds, and the
    added us against plain in the same round (median over rounds), best minus best, median per-round ratio."""
    ns, base = by_round(v, key), by_round(plain, key)
    paired = [r for r in ns if r in base]
    added = [(ns[r] - base[r]) / 1000 for r in paired]
    return {
        "median_ns": med(list(ns.values())),
        "best_ns": best(list(ns.values())),
        "added_us_per_round": added,
        "added_us_median": med(added),
        "added_us_best_vs_best": (best(list(ns.values())) - best(list(base.values()))) / 1000,
        "ratio_median": med([ns[r] / base[r] for r in paired]),
        "rounds": len(paired),
    }


def summarize(variants: list[DbVariant]) -> dict[str, dict[str, dict[str, Any]]]:
    """{figure: {variant: compare()}} for the in-loop and the export-included figures of both shapes."""
    plain = next(v for v in variants if v.key == "plain")
    keys = [f"{shape}{suffix}" for shape in SHAPES for suffix in ("_ns", "_incl_ns")]
    return {key: {v.key: compare(v, plain, key) for v in variants} for key in keys}


def headline(summary: dict[str, Any], variants: list[DbVariant], key: str, root_key: str, name: str) -> dict[str, Any]:
    """The verdict on ours in a parent (figure `key`), with the no-parent figure beside it."""
    head, root = summary[key]["ours"], summary[root_key]["ours"]
    ours = next(v for v in variants if v.key == "ours")
    if not head["rounds"]:
        return {"name": name, "met": None, "measured": "n/a (a variant failed)"}
    exported = export_state(ours) is True
    measured = (
        f"in a parent: {head['added_us_median']:+.2f} us per execute, median of {head['rounds']} per-round "
        f"differences (best - best {head['added_us_best_vs_best']:+.2f} us); no parent: "
        f"{root['added_us_median']:+.2f} us"
    )
    if not exported:
        measured += "; ours did NOT export (or the agent was not loaded)"
    return {"name": name, "met": head["added_us_median"] <= TARGET_US and exported, "measured": measured}


def export_state(v: DbVariant) -> Optional[bool]:
    if v.key == "plain":
        if not v.runs:
            return None
        return not any(r.get("autoinstr_loaded") for r in v.runs)  # plain must run without the agent
    return core.export_ok(v)


def build_report(ctx: dict[str, Any], variants: list[DbVariant], summary: dict[str, Any]) -> str:
    lines = ["# autoinstr database benchmark (sqlite3)", ""]
    for h in ctx["verdicts"]:
        lines += [f"**{h['name']}: {verdict(h['met'])}** ({h['measured']})", ""]
    lines += [
        "- date: {}".format(ctx["date"]),
        "- machine: {}, {} CPUs, Python {} ({})".format(ctx["platform"], ctx["cpus"], ctx["python"], core.BASE_PYTHON),
        f"- command: `{ctx['command']}` ({ctx['mode']}; {ctx['seconds']:.0f} s including venv checks)",
        f"- {ctx['rounds']} rounds; each round one process per variant, alternated in table order; per process "
        f"{fmt(ctx['warmup'])} warm-up queries per shape, then per shape: the tracer's flush, {fmt(ctx['queries'])} "
        "timed queries, the tracer's flush, timed (the order of the two shapes flips every round)",
        '- query: `cur.execute("SELECT id, name FROM users WHERE id = ?", (i % 100,))` then `cur.fetchall()` on '
        "one cursor of an in-memory database (100 rows), the same code in every variant",
        f"- load average (1, 5, 15 min) at start: {ctx['loadavg']}; at end: {ctx['loadavg_end']}",
        "",
        "*in loop*: ns per query (execute + fetchall) of the timed loop, the tracers' background exporters running "
        "as they do; this is the latency a query gains. *incl. export*: the loop plus the tracer's flush right after "
        "it (autoinstr.flush(), ddtrace's tracer.flush(), OpenTelemetry's force_flush()), spread over the queries: "
        "the CPU the tracer spends per query, export work included (for the spans it did not drop). *added* is the "
        "variant minus plain in the same round, median over rounds (and best minus best); *ratio* the median of "
        "per-round ratios.",
        "",
        "Reading the in-loop figures: a tracer's export thread shares the GIL with the loop, so how much of its "
        "export it does during the loop shows in the loop's time (autoinstr rations early flushes to a quarter of "
        "wall time and may leave the rest for the next flush); hence the spread between rounds, and why the incl. "
        "export figure is given too.",
        "",
    ]
    for shape in SHAPES:
        lines += [
            f"## {SHAPE_LABEL[shape].capitalize()}" + (" (headline)" if shape == "parent" else ""),
            "",
        ]
        if shape == "parent":
            lines += ["The parent span's own cost (1/50 of a span per query) is included; plain has no parent.", ""]
        lines += [
            "| variant | launcher | in loop: median ns | best ns | added us (median of rounds) | added us "
            "(best - best) | ratio | incl. export: median ns | added us | spans exported (process) |",
            "|---|---|---:|---:|---:|---:|---:|---:|---:|---|",
        ]
        for v in variants:
            if not v.runs:
                lines.append(f"| {v.label} | {v.launcher} | failed | | | | | | | {one_line(v.error)} |")
                continue
            s, incl = summary[shape + "_ns"][v.key], summary[shape + "_incl_ns"][v.key]
            plain = v.key == "plain"
            lines.append(
                "| {} | {} | {} | {} | {} | {} | {} | {} | {} | {} |".format(
                    v.label,
                    v.launcher,
                    fmt(s["median_ns"]),
                    fmt(s["best_ns"]),
                    "-" if plain else f"{s['added_us_median']:+.2f}",
                    "-" if plain else f"{s['added_us_best_vs_best']:+.2f}",
                    "1" if plain else f"{s['ratio_median']:.2f}x",
                    fmt(incl["median_ns"]),
                    "-" if plain else f"{incl['added_us_median']:+.2f}",
                    "-" if plain else core.export_cell(v),
                )
            )
        lines.append("")

    for key, what in (("parent_ns", "in loop"), ("parent_incl_ns", "incl. export")):
        lines += [
            f"Per round, in a parent, {what} (ns per query; plain's own spread shows this machine's noise):",
            "",
            "| round | " + " | ".join(v.key for v in variants) + " |",
            "|---" * (len(variants) + 1) + "|",
        ]
        for i in range(ctx["rounds"]):
            cells = [fmt(by_round(v, key).get(i)) for v in variants]
            lines.append(f"| {i + 1} | " + " | ".join(cells) + " |")
        lines.append("")

    lines += [
        "## Export verification",
        "",
        "Spans per process: the timed and warm-up queries of both shapes plus the parents (the setup statements, a "
        "handful, are not counted in *created*). Each tracer keeps its default queue limits, so a share below 100% "
        "is what it dropped by design. ddtrace and OpenTelemetry: spans decoded from what reached the loopback "
        "sink; ours: rows in the round's local store file.",
        "",
        "| variant | exported | detail (last round) |",
        "|---|---|---|",
    ]
    for v in variants:
        state = {True: "yes", False: "NO", None: "n/a"}[export_state(v)]
        if not v.runs:
            lines.append(f"| {v.label} | {state} | {one_line(v.error, 400)} |")
            continue
        last = v.runs[-1]
        detail = f"connection `{last['connection_type']}`, cursor `{last['cursor_type']}` (MRO "
        detail += ", ".join(f"`{c}`" for c in last.get("cursor_mro", [])) + ")"
        if v.key == "plain":
            state = "none expected" if state == "yes" else "agent LOADED in plain"
            detail += f"; autoinstr loaded: {last.get('autoinstr_loaded')}"
        elif v.sink is not None:
            detail += "; sink {}: {} requests, {} bytes, {} spans decoded".format(
                v.sink.name, sum(last.get("requests", {}).values()), fmt(last.get("bytes", 0)),
                fmt(last.get("exported", 0)),
            )  # fmt: skip
            if last.get("decode_errors"):
                detail += "; decode errors: {}".format("; ".join(last["decode_errors"]))
        else:
            detail += "; store: {} spans, tables {}".format(
                fmt(last.get("exported", 0)), json.dumps(last.get("tables"))
            )
        for key in ("stats", "tracer", "enabled", "provider", "processors", "exporters", "agent_modules_at_start"):
            if key in last:
                detail += f"; {key}: `{json.dumps(last[key], default=repr)}`"
        lines.append("| {} | {} | {} |".format(v.label, state, detail.replace("|", "/")))
    names = ctx.get("ours_span_names") or {}
    if names:
        lines += [
            "",
            "Ours, by span name, from a small untimed run (its store kept): "
            + (
                names["error"]
                if "error" in names
                else ", ".join(f"`{k}` x{n}" for k, n in names["names"].items())
                + f" (SELECTs run: {names['expected_selects']})"
            ),
        ]

    lines += ["", "## Versions", "", "| venv | package | version |", "|---|---|---|"]
    for name, versions in ctx["versions"].items():
        for dist, ver in versions.items():
            lines.append(f"| {name} | {dist} | {ver} |")
    for name, err in ctx["venv_errors"].items():
        lines.append(f"| {name} | (install failed) | {one_line(err)} |")

    lines += ["", "## Settings", ""]
    for name, settings in ctx["settings"].items():
        lines.append("- {}: `{}`".format(name, " ".join("{}={}".format(*kv) for kv in settings.items()) or "-"))
    lines += [
        "- ours: default exporter (local store), AUTOINSTR_STORE a temp file per round; AUTOINSTR_* not listed are "
        "defaults",
        "- plain: the autoinstr venv's `python`, AUTOINSTR_ENABLED unset (the agent is not loaded; checked)",
        "- otel: configured by `opentelemetry-instrument` from the variables above; the sqlite3 instrumentation "
        "wraps `sqlite3.connect` (a connection proxy whose cursors are proxies)",
        "- ddtrace: `ddtrace-run` patches sqlite3 (a connection proxy whose cursors are proxies)",
        "",
    ]
    return "\n".join(lines)


# -------------------------------------------------------------------------------------------------------- main


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    ap.add_argument("--out", type=Path, default=DEFAULT_OUT, help="markdown report (JSON goes beside it)")
    ap.add_argument("--quick", action="store_true", help="fewer rounds, fewer queries: under a minute")
    ap.add_argument("--rounds", type=int, help="rounds (default 7, quick 3)")
    ap.add_argument("--queries", type=int, help="timed queries per shape and process (default 8000, quick 2000)")
    args = ap.parse_args(argv)
    rounds = args.rounds or (3 if args.quick else 7)
    queries = max(BATCH, (args.queries or (2_000 if args.quick else 8_000)) // BATCH * BATCH)
    warmup = max(BATCH, queries // 10 // BATCH * BATCH)
    if queries + queries // BATCH > OURS_QUEUE:
        log(
            f"[db] note: {queries} queries + parents per shape exceed autoinstr's default queue ({OURS_QUEUE}): "
            "it drops the excess, and its export share and incl. export figure fall with it"
        )
    t_start = time.monotonic()
    loadavg_start = " ".join(f"{x:.2f}" for x in os.getloadavg())

    workdir = Path(tempfile.mkdtemp(prefix="autoinstr-db-bench-"))
    dd_sink, otel_sink = Sink("ddtrace"), Sink("otel")
    try:
        ours, dd, otel = setup_venvs(workdir)
        dd_env = dict(DD_SETTINGS, DD_TRACE_AGENT_URL=dd_sink.url, DD_TRACE_SQLITE3_ENABLED="true")
        otel_env = dict(OTEL_SETTINGS, OTEL_EXPORTER_OTLP_TRACES_ENDPOINT=otel_sink.url + "/v1/traces")
        settings = {"plain": {}, "ours": dict(AUTOINSTR_SETTINGS), "ddtrace": dd_env, "otel": otel_env}
        for name, s in settings.items():
            log(f"[settings] {name}: " + (" ".join(f"{k}={v}" for k, v in s.items()) or "-"))
        variants = [
            DbVariant("plain", "plain (no agent)", "python", PLAIN_BODY, ours, ours.env()),
            DbVariant("ours", "autoinstr (local store)", "autoinstr-run", OURS_BODY, ours,
                      ours.env(settings["ours"]), output="store"),
            DbVariant("ddtrace", "ddtrace", "ddtrace-run", DDTRACE_BODY, dd, dd.env(dd_env), sink=dd_sink),
            DbVariant("otel", "OpenTelemetry", "opentelemetry-instrument", OTEL_BODY, otel, otel.env(otel_env),
                      sink=otel_sink),
        ]  # fmt: skip
        run_rounds(variants, workdir, rounds, queries, warmup)
        ours_v = variants[1]
        names = store_span_names(ours_v, workdir / "db_ours.py", workdir) if ours_v.runs else {}
    finally:
        dd_sink.close()
        otel_sink.close()
        shutil.rmtree(workdir, ignore_errors=True)

    summary = summarize(variants)
    verdicts = [
        headline(summary, variants, "parent_ns", "root_ns", "traced sqlite3 execute <= +10 us over untraced"),
        headline(summary, variants, "parent_incl_ns", "root_incl_ns", "the same with the export work included"),
    ]
    ctx: dict[str, Any] = {
        "date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M:%S UTC"),
        "platform": platform.platform(),
        "cpus": os.cpu_count(),
        "python": platform.python_version(),
        "command": "python3 benchmarks/db_bench.py" + (" " + " ".join(argv or sys.argv[1:])).rstrip(),
        "mode": "quick" if args.quick else "full",
        "rounds": rounds,
        "queries": queries,
        "warmup": warmup,
        "batch": BATCH,
        "loadavg": loadavg_start,
        "loadavg_end": " ".join(f"{x:.2f}" for x in os.getloadavg()),
        "seconds": time.monotonic() - t_start,
        "versions": {v.name: v.versions for v in (ours, dd, otel) if v.versions},
        "venv_errors": {v.name: v.error for v in (ours, dd, otel) if v.error},
        "settings": settings,
        "ours_span_names": names,
        "verdicts": verdicts,
    }
    out_md = args.out.resolve()
    out_md.parent.mkdir(parents=True, exist_ok=True)
    out_md.write_text(build_report(ctx, variants, summary))
    raw = {
        "context": ctx,
        "summary": summary,
        "variants": {
            v.key: {
                "label": v.label,
                "launcher": v.launcher,
                "error": v.error,
                "exported_ok": export_state(v),
                "runs": v.runs,
            }
            for v in variants
        },  # fmt: skip
    }
    out_json = out_md.with_suffix(".json")
    out_json.write_text(json.dumps(raw, indent=1, default=repr) + "\n")

    print(f"\nsqlite3 execute + fetchall, ns per query (median of {rounds} rounds); added vs plain (per-round median):")
    for shape in SHAPES:
        print(f"  {SHAPE_LABEL[shape]}:")
        for v in variants:
            if v.error and not v.runs:
                print(f"    {v.key:<8} FAILED: {one_line(v.error)}")
                continue
            s, incl = summary[shape + "_ns"][v.key], summary[shape + "_incl_ns"][v.key]
            line = f"    {v.key:<8} {fmt(s['median_ns']):>7} ns in loop, {fmt(incl['median_ns']):>7} ns incl. export"
            if v.key != "plain":
                line += (
                    f"; added {s['added_us_median']:+.2f} us ({s['ratio_median']:.2f}x), "
                    f"incl. export {incl['added_us_median']:+.2f} us; exported {core.export_cell(v)}"
                )
            print(line)
    print()
    for h in verdicts:
        print(f"{verdict(h['met'])}: {h['name']} ({h['measured']})")
    print(f"wrote {out_md} and {out_json} in {time.monotonic() - t_start:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
