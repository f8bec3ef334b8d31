"""Calibrates the p99 rule of the fault tests (harness.p99_bound_ms): runs fault rows several times, and
records each run's three p99s (no agent, no agent again: the A/A control, agent) in
results/p99-calibration.json, from which docs/RELIABILITY.md shows the spread of the A/A ratio (the run's
own noise) beside the agent's ratio, and how often each row met the rule.

    .venv/bin/python integration/reliability/calibrate.py                 # the default rows, 6 runs
    .venv/bin/python integration/reliability/calibrate.py --runs 5 ID...  # pytest ids of fault tests

Each run is one pytest process over all the rows (a failing row still leaves its figures); it rewrites those
rows' results/faults-*.json, as the suite does.
"""

from __future__ import annotations

import argparse
import glob
import json
import os
import subprocess
import sys
import time
from typing import Dict, List

HERE = os.path.dirname(os.path.abspath(__file__))
RESULTS = os.path.join(HERE, "results")
FAULTS = "integration/reliability/test_reliability_faults.py"
DEFAULT_ROWS = [
    FAULTS + "::test_no_fault_control[none]",
    FAULTS + "::test_no_fault_control[local]",
    FAULTS + "::test_http_destination_fault[collector-none]",
    FAULTS + "::test_http_destination_fault[collector-refuse]",
    FAULTS + "::test_http_destination_fault[otlp-500]",
    FAULTS + "::test_http_destination_fault[otlp-blackhole]",
    FAULTS + "::test_store_on_a_full_disk",
    FAULTS + "::test_store_locked_by_another_connection",
    FAULTS + "::test_statsd_destination_fault[refuse]",
]
KEEP = ("requests", "baseline", "baseline2", "agent", "p99_ratio", "p99_ratio_aa", "p99_ratio_max", "p99_bound_ms")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--runs", type=int, default=6)
    parser.add_argument("ids", nargs="*", default=DEFAULT_ROWS)
    args = parser.parse_args()
    root = os.path.dirname(os.path.dirname(HERE))
    rows: Dict[str, List[dict]] = {}
    rule: dict = {}
    for run in range(args.runs):
        started = time.time()
        proc = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider"] + args.ids,
                              cwd=root, capture_output=True, text=True)
        print("run %d/%d: %s" % (run + 1, args.runs, (proc.stdout.strip().splitlines() or ["?"])[-1]), flush=True)
        for path in sorted(glob.glob(os.path.join(RESULTS, "faults-*.json"))):
            if os.path.getmtime(path) < started:
                continue
            with open(path) as f:
                figures = json.load(f)
            if "baseline2" not in figures:
                continue
            rule = figures.get("p99_rule", rule)
            rows.setdefault(os.path.basename(path)[len("faults-"):-len(".json")], []).append(
                {k: figures[k] for k in KEEP if k in figures})
    import platform

    out = {"runs": args.runs, "rule": rule, "rows": rows, "python": platform.python_version(),
           "machine": "%d cores" % (os.cpu_count() or 0)}
    with open(os.path.join(RESULTS, "p99-calibration.json"), "w") as f:
        json.dump(out, f, indent=1, sort_keys=True)
        f.write("\n")
    print("wrote", os.path.join(RESULTS, "p99-calibration.json"))


if __name__ == "__main__":
    main()
