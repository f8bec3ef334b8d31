"""Instruction counts under valgrind's cachegrind: machine-independent figures beside the noisy timings.

    instructions(argv, env, cwd) -> int    user-space instructions of the whole process (its threads included)

Where valgrind is not installed, `available()` is False and the benchmarks leave the counts out.
"""

from __future__ import annotations

import re
import shutil
import subprocess
from typing import Dict, List


def available() -> bool:
    return shutil.which("valgrind") is not None


def instructions(argv: List[str], env: Dict[str, str], cwd: str, timeout: float = 1200) -> int:
    valgrind = shutil.which("valgrind")
    if valgrind is None:
        raise RuntimeError("valgrind is not installed")
    out = subprocess.run([valgrind, "--tool=cachegrind", "--cache-sim=no", "--cachegrind-out-file=/dev/null"] + argv,
                         env=env, cwd=cwd, capture_output=True, text=True, timeout=timeout)
    found = re.search(r"I\s+refs:\s+([\d,]+)", out.stderr)
    if out.returncode != 0 or found is None:
        raise RuntimeError("cachegrind run failed: %s" % out.stderr[-600:])
    return int(found.group(1).replace(",", ""))
