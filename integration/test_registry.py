"""The integration registry end to end, with a library and a patch module of the test's own (fakelib),
registered from the app with `autoinstr.integrations.register` (no sitecustomize involved)."""

from __future__ import annotations

import json
import os

import pytest

FAKELIB = """
def greet(name):
    return "hello " + name
"""

FAKELIB_PATCH = """
import os
import autoinstr

def patch(module):
    with open(os.environ["PATCH_LOG"], "a") as f:
        f.write(module.__name__ + "\\n")
    original = module.greet

    def greet(name):
        with autoinstr.span("fakelib.greet", kind="client", who=name):
            return original(name)

    greet.patched_by_test = True
    module.greet = greet
"""

BAD_PATCH = """
def patch(module):
    raise RuntimeError("patch exploded")
"""

APP = """
import importlib, json, os, sys
import autoinstr
from autoinstr import integrations

mode, patch_module = sys.argv[1], sys.argv[2]
out = {}
if mode == "imported-first":  # a target already imported is patched at once
    import fakelib
integrations.register("fakelib", ["fakelib", "fakelib2"], patch_module)
integrations.register("fakelib", ["fakelib", "fakelib2"], patch_module)  # twice: still one patch
out["patch_module_loaded_early"] = patch_module in sys.modules and mode != "imported-first"
import fakelib
importlib.import_module("fakelib")
import fakelib2
with autoinstr.span("use-fakelib"):
    out["result"] = fakelib.greet("ann") + "/" + fakelib2.greet("bob")
out["patched"] = [getattr(m.greet, "patched_by_test", False) for m in (fakelib, fakelib2)]
out["loaders"] = [type(m.__loader__).__name__ for m in (fakelib, fakelib2)]
print(json.dumps(out))
"""


def _setup(sandbox):
    sandbox.write("fakelib.py", FAKELIB)
    sandbox.write("fakelib2.py", FAKELIB)
    sandbox.write("fakelib_patch.py", FAKELIB_PATCH)
    sandbox.write("bad_patch.py", BAD_PATCH)
    sandbox.write("registry_app.py", APP)
    return os.path.join(sandbox.dir, "patch-log.txt")


def _run(sandbox, mode, patch_module="fakelib_patch", launcher=True, **extra):
    log = _setup(sandbox)
    env = sandbox.env(PATCH_LOG=log, PYTHONPATH=sandbox.dir, **extra)
    proc = sandbox.ok(["python", "registry_app.py", mode, patch_module], env=env, launcher=launcher)
    lines = []
    if os.path.exists(log):
        with open(log) as f:
            lines = f.read().split()
    return json.loads(proc.stdout), proc.stderr, lines


@pytest.mark.parametrize("mode", ["imported-later", "imported-first"])
def test_registered_integration_patches_once(sandbox, mode):
    out, err, patched = _run(sandbox, mode)
    assert err == ""
    assert out["result"] == "hello ann/hello bob"
    assert out["patched"] == [True, True]
    assert out["patch_module_loaded_early"] is False, "the patch module must be imported only with its target"
    assert sorted(patched) == ["fakelib", "fakelib2"], "each target patched exactly once"
    assert out["loaders"] == ["SourceFileLoader", "SourceFileLoader"], "the module must see its real loader"
    spans = sandbox.store_spans()
    use = sandbox.one(spans, "use-fakelib")
    greets = [s for s in spans if s["name"] == "fakelib.greet"]
    assert sorted(s["attributes"]["who"] for s in greets) == ["ann", "bob"]
    assert {s["parent_id"] for s in greets} == {use["span_id"]}
    assert {s["kind"] for s in greets} == {"client"}


@pytest.mark.parametrize("value", ["fakelib", "other, FakeLib "])
def test_disabled_integration_is_not_patched(sandbox, value):
    out, err, patched = _run(sandbox, "imported-later", AUTOINSTR_DISABLED_INTEGRATIONS=value)
    assert err == ""
    assert out["result"] == "hello ann/hello bob"
    assert out["patched"] == [False, False]
    assert patched == []
    assert [s["name"] for s in sandbox.store_spans()] == ["use-fakelib"]


def test_registry_does_nothing_without_the_agent(sandbox):
    out, err, patched = _run(sandbox, "imported-later", launcher=False)
    assert err == ""
    assert out["patched"] == [False, False]
    assert patched == []
    assert not os.path.exists(sandbox.store)


@pytest.mark.parametrize("patch_module", ["bad_patch", "no_such_patch_module"])
def test_failing_patch_warns_once_and_the_app_runs(sandbox, patch_module):
    out, err, _ = _run(sandbox, "imported-later", patch_module=patch_module)
    assert out["result"] == "hello ann/hello bob"
    assert out["patched"] == [False, False]
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1, err
    assert "fakelib" in lines[0]
    if patch_module == "bad_patch":
        assert "patch exploded" in lines[0]
    assert [s["name"] for s in sandbox.store_spans()] == ["use-fakelib"]


def test_builtin_futures_integration_can_be_disabled(sandbox):
    sandbox.write("pool_app.py", """
        from concurrent.futures import ThreadPoolExecutor
        import autoinstr

        def work():
            with autoinstr.span("pool-work"):
                pass

        with autoinstr.span("pool-root"):
            with ThreadPoolExecutor(1) as ex:
                ex.submit(work).result()
    """)
    off = os.path.join(sandbox.dir, "off.db")
    procs = [sandbox.popen(["python", "pool_app.py"]),
             sandbox.popen(["python", "pool_app.py"],
                           env=sandbox.env(AUTOINSTR_STORE=off, AUTOINSTR_DISABLED_INTEGRATIONS="futures"))]
    for rc, _, err in sandbox.wait_all(procs):
        assert rc == 0, err
    on_spans = sandbox.store_spans()
    assert sandbox.one(on_spans, "pool-work")["parent_id"] == sandbox.one(on_spans, "pool-root")["span_id"]
    off_spans = sandbox.store_spans(off)
    assert sandbox.one(off_spans, "pool-work")["parent_id"] is None
