"""The integration registry: lazy post-import patching, once only, disabled and failing integrations."""

from __future__ import annotations

import importlib
import sys

PATCH_SOURCE = """
calls = []
unpatched = []

def patch(module):
    calls.append(module.__name__)
    module.PATCHED = getattr(module, "PATCHED", 0) + 1

def unpatch(module):
    unpatched.append(module.__name__)
"""

FAILING_PATCH_SOURCE = """
unpatched = []

def patch(module):
    raise RuntimeError("library changed its internals")

def unpatch(module):
    unpatched.append(module.__name__)
"""

TARGET_SOURCE = "VALUE = 42\n"


def make_integration(modules_dir, patch_source=PATCH_SOURCE):
    target = modules_dir(TARGET_SOURCE)
    patcher = modules_dir(patch_source)
    return target, patcher


def test_patch_runs_when_module_is_imported_not_before(registry, modules_dir):
    target, patcher = make_integration(modules_dir)
    registry.install()
    registry.register("testlib", [target], patcher)
    assert target not in sys.modules
    assert patcher not in sys.modules  # the patch module itself is imported lazily too
    mod = importlib.import_module(target)
    patch_mod = sys.modules[patcher]
    assert patch_mod.calls == [target]
    assert mod.PATCHED == 1 and mod.VALUE == 42
    assert registry.is_enabled("testlib")
    row = [r for r in registry.status() if r["name"] == "testlib"][0]
    assert row["state"] == "enabled" and row["patched"] == [target] and row["version"] == "stdlib"


def test_registered_before_install_is_hooked_by_install(registry, modules_dir):
    target, patcher = make_integration(modules_dir)
    registry.register("testlib", [target], patcher)
    importlib.import_module(target)
    assert patcher not in sys.modules  # not installed yet: nothing happens
    registry.install()  # the target is already imported: patched at once
    assert sys.modules[patcher].calls == [target]


def test_already_imported_module_is_patched_at_once(registry, modules_dir):
    target, patcher = make_integration(modules_dir)
    mod = importlib.import_module(target)
    registry.install()
    registry.register("testlib", [target], patcher)
    assert mod.PATCHED == 1
    assert sys.modules[patcher].calls == [target]


def test_never_patched_twice(registry, modules_dir):
    target, patcher = make_integration(modules_dir)
    registry.install()
    registry.register("testlib", [target], patcher)
    mod = importlib.import_module(target)
    importlib.import_module(target)
    import_again = __import__(target)
    assert import_again is mod
    assert registry.apply("testlib", mod) is False
    registry.install()  # a second install is harmless
    registry.register("testlib", [target], patcher)  # registering again adds a hook, which fires at once...
    assert mod.PATCHED == 1  # ...but the module is patched once only
    assert sys.modules[patcher].calls == [target]


def test_reimported_module_not_patched_twice(registry, modules_dir):
    target, patcher = make_integration(modules_dir)
    registry.install()
    registry.register("testlib", [target], patcher)
    importlib.import_module(target)
    del sys.modules[target]
    importlib.import_module(target)
    assert sys.modules[patcher].calls == [target]


def test_several_triggers(registry, modules_dir):
    target_a, patcher = make_integration(modules_dir)
    target_b = modules_dir(TARGET_SOURCE)
    registry.install()
    registry.register("testlib", [target_a, target_b], patcher)
    importlib.import_module(target_b)
    importlib.import_module(target_a)
    assert sys.modules[patcher].calls == [target_b, target_a]


def test_disabled_integration_not_applied(registry, modules_dir):
    target, patcher = make_integration(modules_dir)
    registry.register("testlib", [target], patcher)
    registry.install(disabled={"testlib"})
    mod = importlib.import_module(target)
    assert not hasattr(mod, "PATCHED")
    assert patcher not in sys.modules
    assert registry.is_enabled("testlib") is False
    assert registry.apply("testlib", mod) is False
    row = [r for r in registry.status() if r["name"] == "testlib"][0]
    assert "disabled" in row["state"] and row["patched"] == []


def test_disabled_integration_registered_after_install(registry, modules_dir):
    target, patcher = make_integration(modules_dir)
    registry.install(disabled=["testlib"])
    registry.register("testlib", [target], patcher)
    mod = importlib.import_module(target)
    assert not hasattr(mod, "PATCHED")


def test_disabled_from_configuration(registry, modules_dir):
    from autoinstr.config import Config

    target, patcher = make_integration(modules_dir)
    cfg = Config({"AUTOINSTR_DISABLED_INTEGRATIONS": " TestLib , other"}, emit_warnings=False)
    registry.register("testlib", [target], patcher)
    registry.install(cfg.disabled_integrations)
    assert not hasattr(importlib.import_module(target), "PATCHED")


def test_failing_patch_disables_with_one_warning(registry, modules_dir, capsys):
    target, patcher = make_integration(modules_dir, FAILING_PATCH_SOURCE)
    target_b = modules_dir(TARGET_SOURCE)
    registry.install()
    registry.register("brokenlib", [target, target_b], patcher)
    mod = importlib.import_module(target)  # the import still succeeds
    assert mod.VALUE == 42
    importlib.import_module(target_b)  # a second trigger: no second attempt, no second warning
    err = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    assert len(err) == 1
    assert "brokenlib" in err[0] and "library changed its internals" in err[0]
    assert err[0].startswith("autoinstr warning:")
    assert registry.is_enabled("brokenlib") is False
    assert sys.modules[patcher].unpatched == [target]  # a half-applied patch is undone
    row = [r for r in registry.status() if r["name"] == "brokenlib"][0]
    assert row["state"].startswith("failed")


def test_missing_patch_module_disables(registry, modules_dir, capsys):
    target = modules_dir(TARGET_SOURCE)
    registry.install()
    registry.register("ghost", [target], "autoinstr_no_such_patch_module_xyz")
    assert importlib.import_module(target).VALUE == 42
    assert registry.is_enabled("ghost") is False
    assert capsys.readouterr().err.count("ghost") == 1


def test_disable_at_run_time(registry, capsys):
    registry.disable("runtime-lib", "wrapper raised TypeError")
    registry.disable("runtime-lib", "again")
    assert registry.is_enabled("runtime-lib") is False
    err = capsys.readouterr().err
    assert err.count("runtime-lib") == 1 and "wrapper raised TypeError" in err


# ---------------------------------------------------------------------------- when_imported


def test_when_imported_fires_for_submodules(registry, modules_dir):
    pkg = modules_dir("", package=True)
    sub = modules_dir("X = 1\n", name=pkg + ".sub")
    seen = []
    registry.when_imported(pkg + ".sub", lambda m: seen.append(m.__name__))
    registry.when_imported(pkg, lambda m: seen.append(m.__name__))
    assert seen == []
    importlib.import_module(sub)
    assert seen == [pkg, sub]  # the package first, as Python imports it first
    assert sys.modules[sub].X == 1


def test_when_imported_from_import_statement(registry, modules_dir):
    pkg = modules_dir("", package=True)
    modules_dir("Y = 2\n", name=pkg + ".inner")
    seen = []
    registry.when_imported(pkg + ".inner", lambda m: seen.append(m))
    ns: dict = {}
    exec(f"from {pkg} import inner", ns)
    assert len(seen) == 1 and seen[0] is ns["inner"]


def test_when_imported_at_once_if_imported(registry, modules_dir):
    name = modules_dir(TARGET_SOURCE)
    mod = importlib.import_module(name)
    seen = []
    registry.when_imported(name, seen.append)
    assert seen == [mod]


def test_hooked_module_keeps_its_real_loader(registry, modules_dir):
    name = modules_dir(TARGET_SOURCE)
    registry.when_imported(name, lambda m: None)
    mod = importlib.import_module(name)
    loader_type = type(mod.__loader__).__name__
    assert loader_type == "SourceFileLoader"
    assert type(mod.__spec__.loader).__name__ == "SourceFileLoader"
    assert importlib.reload(mod) is mod


def test_hook_that_raises_does_not_break_import(registry, modules_dir, capsys):
    name = modules_dir(TARGET_SOURCE)
    seen = []

    def bad_hook(module):
        raise ValueError("hook bug")

    registry.when_imported(name, bad_hook)
    registry.when_imported(name, seen.append)
    mod = importlib.import_module(name)
    assert mod.VALUE == 42
    assert seen == [mod]  # later hooks still run
    assert "hook bug" in capsys.readouterr().err


def test_failed_import_fires_no_hook(registry, modules_dir):
    name = modules_dir("raise ImportError('broken module')\n")
    seen = []
    registry.when_imported(name, seen.append)
    try:
        importlib.import_module(name)
    except ImportError:
        pass
    assert seen == []
    assert name not in sys.modules


def test_unwatched_modules_are_untouched(registry, modules_dir):
    watched = modules_dir(TARGET_SOURCE)
    other = modules_dir(TARGET_SOURCE)
    registry.when_imported(watched, lambda m: None)
    mod = importlib.import_module(other)
    assert type(mod.__spec__.loader).__name__ == "SourceFileLoader"


def test_finder_installed_once(registry, modules_dir):
    registry.when_imported(modules_dir(TARGET_SOURCE), lambda m: None)
    registry.when_imported(modules_dir(TARGET_SOURCE), lambda m: None)
    finders = [f for f in sys.meta_path if type(f).__name__ == "_PostImportFinder"]
    assert finders.count(registry._finder) == 1


def test_registry_default_table_has_futures():
    from autoinstr import integrations

    triggers, patch_module, _ = integrations.INTEGRATIONS["futures"]
    assert "concurrent.futures.thread" in triggers
    assert patch_module == "autoinstr.integrations.futures"
