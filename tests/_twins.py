"""What the tests of the compiled request path's Python twins share (test_span_core, test_wsgi_core,
test_http_core, test_db_core): a driver program run once per implementation, the fixture that requires the
compiled one where it is built, and the test files run on the implementation this process does not use."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from typing import Any, Dict, List

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# What every driver program starts with: `m` is autoinstr.trace.span, and `handed` collects the groups of spans
# the pipeline would receive (the sink patched); describe(span) is every field of a span, as JSON.
HANDED_SPANS = """
from autoinstr.trace import span as m
handed = []
m.Sink.submit = staticmethod(lambda spans: handed.append(list(spans)))
m.Sink.submit_one = staticmethod(lambda span: handed.append([span]))


def describe(s):
    return {"name": s.name, "kind": s.kind, "attributes": sorted((k, repr(v)) for k, v in s.attributes.items()),
            "sampled": s.sampled, "status": s.status, "ended": bool(s.end_ns), "started": bool(s.start_ns),
            "events": [(e["name"], sorted((k, repr(v)) for k, v in (e.get("attributes") or {}).items()
                                          if k != "exception.stacktrace")) for e in s.events or []],
            "parent": "%016x" % s.parent_id if s.parent_id else None, "trace": "%032x" % s.trace_id,
            "span": "%016x" % s.span_id}
"""


def run_driver(driver: str, argument: int, speedups: bool, timeout: float = 120) -> Dict[str, Any]:
    """The JSON a driver program prints, run with the compiled code (speedups) or without."""
    env = dict(os.environ, AUTOINSTR_SPEEDUPS="true" if speedups else "false", PYTHONPATH=ROOT)
    out = subprocess.run([sys.executable, "-c", driver, str(argument)], env=env, capture_output=True, text=True,
                         timeout=timeout)
    assert out.returncode == 0, out.stderr[-3000:]
    return json.loads(out.stdout)  # type: ignore[no-any-return]


def run_both_ways(driver: str, argument: int, key: str, timeout: float = 120) -> List[Any]:
    """out[key] of the driver run with the compiled code and without (each run saying which it was, in
    out["compiled"]), which must be identical: the Python run's, for the test's own checks."""
    compiled, python = run_driver(driver, argument, True, timeout), run_driver(driver, argument, False, timeout)
    assert compiled["compiled"] and not python["compiled"]
    assert_same(compiled[key], python[key], key)
    return python[key]  # type: ignore[no-any-return]


def compiled_has(name: str) -> bool:
    """autoinstr._speedups is built here and has `name`."""
    try:
        from autoinstr import _speedups
    except ImportError:
        return False
    return hasattr(_speedups, name)


def require_compiled(name: str) -> None:
    """Skip where the compiled module is not built, unless the suite requires it (AUTOINSTR_REQUIRE_SPEEDUPS)."""
    if not compiled_has(name):
        if os.environ.get("AUTOINSTR_REQUIRE_SPEEDUPS"):
            pytest.fail("autoinstr._speedups is not built (python hatch_build.py)")
        pytest.skip("autoinstr._speedups is not built here")


def assert_same(compiled: List[Any], python: List[Any], what: str) -> None:
    """Each item the compiled run gave equals the Python run's."""
    assert len(compiled) == len(python)
    for n, (a, b) in enumerate(zip(compiled, python)):
        assert a == b, "%s %d differs:\ncompiled %s\npython   %s" % (what, n, a, b)


def pass_on_the_other_side(tests: List[str], compiled_here: bool) -> None:
    """The test files pass on the implementation this process does not use."""
    env = dict(os.environ, AUTOINSTR_SPEEDUPS="false" if compiled_here else "true", PYTHONPATH=ROOT)
    out = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider"] + tests, cwd=ROOT, env=env,
                         capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stdout[-3000:]
