"""Shared fixtures: every test starts from the agent's default global state and leaves it as it found it.

The span model keeps a few class-level globals (the sink, the sampling threshold, the attribute limits, the
configured propagators); the integration registry keeps its tables at module level. The fixtures here save
and restore them so tests can run in any order.
"""

from __future__ import annotations

import importlib
import os
import sys
import uuid

import pytest
from hypothesis import settings
from hypothesis.configuration import set_hypothesis_home_dir

from autoinstr import integrations
from autoinstr.trace import propagation
from autoinstr.trace import span as span_module
from autoinstr.trace.span import Limits, Sampling, Sink

# no example database, and hypothesis' caches under .pytest_cache (git-ignored), not in a new .hypothesis/
set_hypothesis_home_dir(os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), ".pytest_cache",
                                     "hypothesis"))
settings.register_profile("autoinstr-unit", database=None, deadline=None)
settings.load_profile("autoinstr-unit")


@pytest.fixture(autouse=True)
def _restore_trace_globals():
    """Sampling, limits, propagators and the sink back to their defaults after each test, and no span left
    current (a response whose body another thread sent leaves its span current in the app's thread)."""
    saved_submit = Sink.__dict__["submit"]
    saved_submit_one = Sink.__dict__.get("submit_one")
    saved_limits = Limits.max_attributes
    saved_propagators = propagation.Propagators.names
    Sampling.configure(1.0, 0.0)
    yield
    Sampling.configure(1.0, 0.0)
    Sink.submit = saved_submit
    if saved_submit_one is not None:
        Sink.submit_one = saved_submit_one
    span_module.unsampled_count(reset=True)
    Limits.max_attributes = saved_limits
    propagation.Propagators.names = saved_propagators
    span_module.current_span_var.set(None)


@pytest.fixture
def collected():
    """Sink.submit replaced by a list.append: each item of the list is one hand-over (a list of spans).

    A local trace of a single span may be handed over through Sink.submit_one (no list around it); it is
    recorded here as a one-span list, so tests see every hand-over the same way.
    """
    calls: list = []
    Sink.submit = calls.append
    if "submit_one" in Sink.__dict__:
        Sink.submit_one = lambda span: calls.append([span])
    span_module.unsampled_count(reset=True)
    return calls


@pytest.fixture
def clean_env(monkeypatch):
    """No AUTOINSTR_* / OTEL_* variables from the outer environment."""
    for key in list(os.environ):
        if key.startswith(("AUTOINSTR_", "OTEL_")):
            monkeypatch.delenv(key, raising=False)
    return monkeypatch


@pytest.fixture
def registry(monkeypatch):
    """An isolated integration registry: empty table, fresh state, its own post-import finder.

    Everything is put back afterwards (the finder is removed from sys.meta_path), so a test's integrations
    never leak into another test.
    """
    monkeypatch.setattr(integrations, "INTEGRATIONS", {})
    monkeypatch.setattr(integrations, "_patched", set())
    monkeypatch.setattr(integrations, "_failed", {})
    monkeypatch.setattr(integrations, "_disabled", set())
    monkeypatch.setattr(integrations, "_installed", False)
    old_finder = integrations._finder
    integrations._finder = None
    yield integrations
    new_finder = integrations._finder
    if new_finder is not None and new_finder in sys.meta_path:
        sys.meta_path.remove(new_finder)
    integrations._finder = old_finder


@pytest.fixture
def modules_dir(tmp_path, monkeypatch):
    """tmp_path on sys.path, plus a helper that writes a module there and returns a unique module name.

    The modules written are removed from sys.modules afterwards.
    """
    monkeypatch.syspath_prepend(str(tmp_path))
    written: list = []

    def write(source: str, name: str = "", package: bool = False) -> str:
        name = name or f"ai_test_{uuid.uuid4().hex[:12]}"
        parts = name.split(".")
        folder = tmp_path.joinpath(*parts[:-1])
        folder.mkdir(parents=True, exist_ok=True)
        if package:
            target = folder / parts[-1]
            target.mkdir(exist_ok=True)
            (target / "__init__.py").write_text(source)
        else:
            (folder / (parts[-1] + ".py")).write_text(source)
        written.append(name)
        importlib.invalidate_caches()
        return name

    yield write
    for name in written:
        for mod in [m for m in sys.modules if m == name or m.startswith(name + ".")]:
            sys.modules.pop(mod, None)
