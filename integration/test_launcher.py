"""The launcher and the start-up hooks, end to end: `autoinstr-run COMMAND` behaves like COMMAND, every Python
process it starts loads the agent, `AUTOINSTR_ENABLED=true` does the same without it, the user's own
sitecustomize still runs, a bad variable warns once, and start-up imports and starts nothing it need not."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import pytest

SPAN_SCRIPT = """
import os, sys
import autoinstr
with autoinstr.span("work", pid=os.getpid()) as s:
    with autoinstr.span("inner"):
        pass
print("service-script done")
"""


# ----------------------------------------------------------------------------------------- transparency

def test_exit_code_stdout_stderr_pass_through(sandbox):
    sandbox.write("exits.py", """
        import sys
        import autoinstr
        with autoinstr.span("before-exit"):
            pass
        print("to stdout")
        print("to stderr", file=sys.stderr)
        sys.exit(3)
    """)
    proc = sandbox.run(["python", "exits.py"])
    assert proc.returncode == 3
    assert proc.stdout == "to stdout\n"
    assert proc.stderr == "to stderr\n", "the agent wrote to the app's stderr"
    spans = sandbox.store_spans()
    assert [s["name"] for s in spans] == ["before-exit"]
    assert spans[0]["service"] == "exits"


def test_stdin_pass_through(sandbox):
    sandbox.write("echo.py", """
        import sys
        import autoinstr
        with autoinstr.span("echo"):
            data = sys.stdin.read()
        sys.stdout.write(data.upper())
    """)
    text = "hello\nworld\n" + "x" * 100_000 + "\n"
    proc = sandbox.ok(["python", "echo.py"], input=text)
    assert proc.stdout == text.upper()
    assert [s["name"] for s in sandbox.store_spans()] == ["echo"]


def test_options_after_the_command_belong_to_the_app(sandbox):
    sandbox.write("args.py", """
        import json, sys
        print(json.dumps(sys.argv[1:]))
    """)
    proc = sandbox.ok(["python", "args.py", "--service", "x", "--info", "-h"])
    assert json.loads(proc.stdout) == ["--service", "x", "--info", "-h"]
    proc = sandbox.run([sandbox.RUN, "--service=eq-form", "--", sandbox.PYTHON, "args.py", "--", "a"],
                       launcher=False)
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout) == ["--", "a"]


def test_python_m_runs_the_module_as_main(sandbox):
    sandbox.write("pkg/__init__.py", "")
    sandbox.write("pkg/mod.py", """
        import sys
        import autoinstr
        with autoinstr.span("module-work"):
            pass
        print(__name__, sys.argv[1:])
    """)
    proc = sandbox.ok(["python", "-m", "pkg.mod", "a", "b"])
    assert proc.stdout == "__main__ ['a', 'b']\n"
    assert [s["name"] for s in sandbox.store_spans()] == ["module-work"]


@pytest.mark.parametrize("extra", [[], ["a", "b"]], ids=["no-args", "with-args"])
def test_python_m_service_name_is_the_module(sandbox, extra):
    sandbox.write("pkg/__init__.py", "")
    sandbox.write("pkg/mod.py", """
        import autoinstr
        with autoinstr.span("module-work"):
            pass
    """)
    sandbox.ok(["python", "-m", "pkg.mod"] + extra)
    assert [s["service"] for s in sandbox.store_spans()] == ["pkg.mod"]


def test_service_flag_sets_the_service(sandbox):
    sandbox.write("svc.py", SPAN_SCRIPT)
    sandbox.ok(["python", "svc.py"], service="checkout-svc")
    spans = sandbox.store_spans()
    assert {s["service"] for s in spans} == {"checkout-svc"}
    assert len(spans) == 2


def test_default_service_is_the_script_name(sandbox):
    sandbox.write("my_app.py", SPAN_SCRIPT)
    sandbox.ok(["python", "my_app.py"])
    assert {s["service"] for s in sandbox.store_spans()} == {"my_app"}


def test_command_not_found_exits_127(sandbox):
    proc = sandbox.run(["no-such-command-autoinstr-xyz", "arg"])
    assert proc.returncode == 127
    assert "no-such-command-autoinstr-xyz" in proc.stderr
    assert "not found" in proc.stderr
    assert proc.stdout == ""


def test_sigterm_reaches_the_app(sandbox):
    sandbox.write("term.py", """
        import os, signal, sys, time
        import autoinstr

        def on_term(signum, frame):
            with autoinstr.span("on-sigterm", signum=signum):
                pass
            print("got SIGTERM", flush=True)
            sys.exit(0)

        if sys.argv[1:] == ["handler"]:
            signal.signal(signal.SIGTERM, on_term)
        with autoinstr.span("started"):
            pass
        print("ready", os.getpid(), flush=True)
        time.sleep(30)
        print("not interrupted", flush=True)
    """)
    with_handler = sandbox.popen(["python", "term.py", "handler"])
    store2 = os.path.join(sandbox.dir, "spans2.db")
    without = sandbox.popen(["python", "term.py"], env=sandbox.env(AUTOINSTR_STORE=store2))
    procs = [with_handler, without]
    try:
        for p in procs:
            line = p.stdout.readline().split()
            assert line[:1] == ["ready"], line
            # the launcher execs: the app's pid is the pid the caller started
            assert int(line[1]) == p.pid
        time.sleep(0.1)
        for p in procs:
            p.send_signal(signal.SIGTERM)
        results = sandbox.wait_all(procs, timeout=20)
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
    rc, out, err = results[0]
    assert rc == 0, err
    assert out == "got SIGTERM\n"
    assert sorted(s["name"] for s in sandbox.store_spans()) == ["on-sigterm", "started"]
    rc, out, err = results[1]
    assert rc == -signal.SIGTERM
    assert out == ""


def test_info_prints_configuration_integrations_exporters(sandbox):
    marker = os.path.join(sandbox.dir, "ran")
    env = sandbox.env(AUTOINSTR_EXPORTER="local,jsonl", AUTOINSTR_SAMPLE_RATE="0.25")
    proc = sandbox.run([sandbox.RUN, "--service", "info-svc", "--info", sandbox.PYTHON, "-c",
                        f"open({marker!r}, 'w')"], env=env, launcher=False)
    assert proc.returncode == 0, proc.stderr
    out = proc.stdout
    assert not os.path.exists(marker), "--info must not run the command"
    for word in ("configuration", "integrations", "exporters", "AUTOINSTR_SERVICE_NAME", "info-svc",
                 "AUTOINSTR_SAMPLE_RATE", "0.25", "AUTOINSTR_SHUTDOWN_TIMEOUT", "futures", sandbox.store,
                 sandbox.jsonl, "reachable"):
        assert word in out, f"{word!r} missing from --info output:\n{out}"
    assert out.index("configuration") < out.index("integrations") < out.index("exporters")
    # bare --info works too, with defaults
    proc = sandbox.run([sandbox.RUN, "--info"], env=sandbox.env(AUTOINSTR_STORE=None), launcher=False)
    assert proc.returncode == 0, proc.stderr
    assert os.path.join(sandbox.home, "data", "autoinstr", "spans.db") in proc.stdout


# ------------------------------------------------------------------------ every Python process loads it

def test_agent_loads_in_every_python_process(sandbox):
    sandbox.write("parent.py", """
        import os, subprocess, sys
        import autoinstr
        with autoinstr.span("parent-work", pid=os.getpid()):
            subprocess.run([sys.executable, "child.py"], check=True)
            subprocess.run([sys.executable, "-c", "import autoinstr, os\\n"
                            "with autoinstr.span('inline-child', pid=os.getpid()): pass"], check=True)
        print("parent", os.getpid())
    """)
    sandbox.write("child.py", """
        import os
        import autoinstr
        with autoinstr.span("child-work", pid=os.getpid()):
            pass
    """)
    sandbox.write("a.py", "import autoinstr\nwith autoinstr.span('from-a'): pass\n")
    sandbox.write("b.py", "import autoinstr\nwith autoinstr.span('from-b'): pass\n")
    named = os.path.join(sandbox.dir, "named.db")
    shell = os.path.join(sandbox.dir, "shell.db")
    procs = [
        sandbox.popen(["python", "parent.py"]),
        sandbox.popen(["python", "parent.py"], service="shop", env=sandbox.env(AUTOINSTR_STORE=named)),
        sandbox.popen(["sh", "-c", f"{sandbox.PYTHON} a.py && {sandbox.PYTHON} b.py"],
                      env=sandbox.env(AUTOINSTR_STORE=shell)),
    ]
    for rc, _, err in sandbox.wait_all(procs):
        assert rc == 0, err

    spans = sandbox.store_spans()
    sandbox.assert_unique(spans)
    assert sorted(s["name"] for s in spans) == ["child-work", "inline-child", "parent-work"]
    parent, child, inline = (sandbox.one(spans, n) for n in ("parent-work", "child-work", "inline-child"))
    assert len({parent["attributes"]["pid"], child["attributes"]["pid"], inline["attributes"]["pid"]}) == 3
    assert parent["service"] == "parent"
    assert child["service"] == "child"
    assert inline["service"] and inline["service"] != "parent"

    spans = sandbox.store_spans(named)
    assert sorted(s["name"] for s in spans) == ["child-work", "inline-child", "parent-work"]
    assert {s["service"] for s in spans} == {"shop"}

    spans = sandbox.store_spans(shell)
    assert sorted((s["name"], s["service"]) for s in spans) == [("from-a", "a"), ("from-b", "b")]


# --------------------------------------------------------------------------- AUTOINSTR_ENABLED (.pth)

PROBE = """
import json, os, sys
loaded_at_start = "autoinstr" in sys.modules
import autoinstr
with autoinstr.span("probe-span", pid=os.getpid()):
    pass
print(json.dumps({"loaded_at_start": loaded_at_start, "enabled": autoinstr.stats()["enabled"],
                  "span_class": autoinstr.span.__name__}))
"""


@pytest.mark.parametrize("value", ["true", "1", "TRUE", "yes"])
def test_enabled_env_loads_the_agent_without_launcher(sandbox, value):
    sandbox.write("probe.py", PROBE)
    proc = sandbox.ok(["python", "probe.py"], launcher=False,
                      env=sandbox.env(AUTOINSTR_ENABLED=value, AUTOINSTR_EXPORTER="local,jsonl"))
    info = json.loads(proc.stdout)
    assert info["loaded_at_start"] is True
    assert info["enabled"] is True
    assert proc.stderr == ""
    for spans in (sandbox.store_spans(), sandbox.jsonl_spans()):
        assert [(s["name"], s["service"]) for s in spans] == [("probe-span", "probe")]


@pytest.mark.parametrize("value", [None, "", "false", "0"])
def test_agent_not_loaded_without_enabled_env(sandbox, value):
    sandbox.write("probe.py", PROBE)
    proc = sandbox.ok(["python", "probe.py"], launcher=False,
                      env=sandbox.env(AUTOINSTR_ENABLED=value, AUTOINSTR_EXPORTER="local,jsonl"))
    info = json.loads(proc.stdout)
    assert info == {"loaded_at_start": False, "enabled": False, "span_class": "NoopSpan"}
    assert proc.stderr == ""
    assert not os.path.exists(sandbox.store)
    assert not os.path.exists(sandbox.jsonl)
    assert not os.path.exists(os.path.join(sandbox.home, "data", "autoinstr"))


@pytest.mark.parametrize("how", ["launcher+env", "nested-launchers"])
def test_agent_loaded_twice_is_harmless(sandbox, how):
    sandbox.write("probe.py", PROBE)
    env = sandbox.env(AUTOINSTR_EXPORTER="local,jsonl",
                      AUTOINSTR_ENABLED="true" if how == "launcher+env" else None)
    args = ["python", "probe.py"] if how == "launcher+env" else [sandbox.RUN, sandbox.RUN, "python", "probe.py"]
    proc = sandbox.ok(args, env=env)
    assert json.loads(proc.stdout)["enabled"] is True
    assert proc.stderr == ""
    assert [s["name"] for s in sandbox.store_spans()] == ["probe-span"]
    assert [s["name"] for s in sandbox.jsonl_spans()] == ["probe-span"]


def test_default_store_path_is_used_by_app_and_commands(sandbox):
    sandbox.write("svc.py", SPAN_SCRIPT)
    env = sandbox.env(AUTOINSTR_STORE=None)
    sandbox.ok(["python", "svc.py"], env=env)
    default = os.path.join(sandbox.home, "data", "autoinstr", "spans.db")
    assert os.path.exists(default)
    assert not os.path.exists(sandbox.store)
    proc = sandbox.cli("spans", "--json")  # no --store, no AUTOINSTR_STORE: the default path
    assert proc.returncode == 0, proc.stderr
    assert sorted(json.loads(line)["name"] for line in proc.stdout.splitlines()) == ["inner", "work"]


# ------------------------------------------------------------------------------- user's sitecustomize

USER_SITECUSTOMIZE = """
import json, os, sys
with open(os.environ["SITE_MARKER"], "a") as f:
    f.write(json.dumps({"pid": os.getpid(), "argv": sys.argv,
                        "agent_loaded": "autoinstr.bootstrap" in sys.modules}) + "\\n")
USER_SITECUSTOMIZE_RAN = True
"""

SITE_APP = """
import json, os, sys
import autoinstr
import sitecustomize
with autoinstr.span("site-app", pid=os.getpid()):
    pass
print(json.dumps({"pid": os.getpid(), "file": sitecustomize.__file__,
                  "flag": getattr(sitecustomize, "USER_SITECUSTOMIZE_RAN", False)}))
"""


@pytest.mark.parametrize("how", ["launcher", "enabled-env"])
def test_user_sitecustomize_still_runs_once(sandbox, how):
    user_site = sandbox.write("usersite/sitecustomize.py", USER_SITECUSTOMIZE)
    sandbox.write("site_app.py", SITE_APP)
    marker = os.path.join(sandbox.dir, "marker.txt")
    extra = {"PYTHONPATH": os.path.dirname(user_site), "SITE_MARKER": marker}
    if how == "enabled-env":
        extra["AUTOINSTR_ENABLED"] = "true"
    proc = sandbox.ok(["python", "site_app.py", "arg1"], launcher=how == "launcher", env=sandbox.env(**extra))
    app = json.loads(proc.stdout)
    with open(marker) as f:
        runs = [json.loads(line) for line in f]
    in_app = [r for r in runs if r["argv"][:1] == ["site_app.py"]]
    assert len(in_app) == 1, runs
    assert in_app[0]["pid"] == app["pid"]
    assert in_app[0]["argv"][1:] == ["arg1"]
    assert [r for r in runs if r not in in_app] == [], runs  # (the launcher starts no interpreter to run it in)
    assert app["flag"] is True
    assert os.path.realpath(app["file"]) == os.path.realpath(user_site)
    assert [s["name"] for s in sandbox.store_spans()] == ["site-app"]


def test_failing_user_sitecustomize_does_not_stop_the_app(sandbox):
    user_site = sandbox.write("usersite/sitecustomize.py", "raise RuntimeError('user site broke')\n")
    sandbox.write("svc.py", SPAN_SCRIPT)
    proc = sandbox.ok(["python", "svc.py"], env=sandbox.env(PYTHONPATH=os.path.dirname(user_site)))
    assert "service-script done" in proc.stdout
    assert "user site broke" in proc.stderr
    assert sorted(s["name"] for s in sandbox.store_spans()) == ["inner", "work"]


# --------------------------------------------------------------------------------- bad configuration

def test_bad_variables_warn_once_each_and_the_app_runs(sandbox):
    sandbox.write("svc.py", SPAN_SCRIPT)
    bad = {"AUTOINSTR_SAMPLE_RATE": "banana", "AUTOINSTR_FLUSH_INTERVAL": "-5", "AUTOINSTR_EXPORTER": "bogus,jsonl"}
    proc = sandbox.ok(["python", "svc.py"], env=sandbox.env(**bad))
    assert "service-script done" in proc.stdout
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    for name, value in bad.items():
        naming = [line for line in lines if name in line]
        assert len(naming) == 1, f"expected one warning line naming {name}, got {naming}\n{proc.stderr}"
        assert value.split(",")[0] in naming[0]
    assert len(lines) == len(bad), proc.stderr
    spans = sandbox.jsonl_spans()
    assert sorted(s["name"] for s in spans) == ["inner", "work"]
    assert not os.path.exists(sandbox.store), "exporter list should be jsonl only"


# ----------------------------------------------------------------------------- lazy, threadless start

LAZY_PROBE = """
import json, os, sys, threading
FORBIDDEN = ["flask", "requests", "sqlite3", "_sqlite3", "psycopg2", "sqlparse", "urllib3", "django"]

def snapshot():
    return {"forbidden": [m for m in FORBIDDEN if m in sys.modules],
            "threads": [t.name for t in threading.enumerate()]}

out = {"start": snapshot(), "agent": "autoinstr.bootstrap" in sys.modules}
import autoinstr
autoinstr.current_span()
autoinstr.inject({})
autoinstr.extract({"traceparent": "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"})
@autoinstr.traced
def unused():
    pass
out["after_import"] = snapshot()
with autoinstr.span("first-span"):
    out["in_first_span"] = snapshot()
print(json.dumps(out))
"""

STUB = """
import os
with open(os.environ["STUB_MARKER"], "a") as f:
    f.write(__name__ + "\\n")
"""


@pytest.mark.parametrize("how", ["launcher", "enabled-env"])
def test_startup_imports_no_instrumented_library_and_starts_no_thread(sandbox, how):
    for name in ("flask", "requests", "psycopg2", "urllib3", "django"):
        sandbox.write(f"stubs/{name}.py", STUB)
    sandbox.write("lazy_probe.py", LAZY_PROBE)
    marker = os.path.join(sandbox.dir, "stub-imports.txt")
    extra = {"PYTHONPATH": os.path.join(sandbox.dir, "stubs"), "STUB_MARKER": marker}
    if how == "enabled-env":
        extra["AUTOINSTR_ENABLED"] = "true"
    proc = sandbox.ok(["python", "lazy_probe.py"], launcher=how == "launcher", env=sandbox.env(**extra))
    out = json.loads(proc.stdout)
    assert out["agent"] is True
    for stage in ("start", "after_import", "in_first_span"):
        assert out[stage]["forbidden"] == [], (stage, out[stage])
        assert out[stage]["threads"] == ["MainThread"], (stage, out[stage])
    assert not os.path.exists(marker), "start-up imported a stub library"
    assert [s["name"] for s in sandbox.store_spans()] == ["first-span"]


# ------------------------------------------------------------------------------- more of the settings

def test_otel_fallbacks_and_precedence(sandbox):
    sandbox.write("svc.py", SPAN_SCRIPT)
    otel = {"OTEL_SERVICE_NAME": "otel-svc", "OTEL_TRACES_EXPORTER": "console"}
    procs = [
        sandbox.popen(["python", "svc.py"], env=sandbox.env(**otel)),
        sandbox.popen(["python", "svc.py"], env=sandbox.env(AUTOINSTR_SERVICE_NAME="mine",
                                                             AUTOINSTR_EXPORTER="jsonl", **otel)),
        sandbox.popen(["python", "svc.py"], env=sandbox.env(OTEL_TRACES_SAMPLER_ARG="0",
                                                             AUTOINSTR_STORE=os.path.join(sandbox.dir, "s0.db"))),
    ]
    (rc1, out1, err1), (rc2, _, err2), (rc3, _, err3) = sandbox.wait_all(procs)
    assert rc1 == rc2 == rc3 == 0, (err1, err2, err3)
    # console: one line per span on stderr, stdout left to the app
    assert out1 == "service-script done\n"
    lines = [line for line in err1.splitlines() if line.strip()]
    assert len(lines) == 2 and all("otel-svc" in line for line in lines), err1
    assert any("work" in line for line in lines) and any("inner" in line for line in lines)
    assert not os.path.exists(sandbox.store)
    assert err2 == ""
    assert {(s["service"]) for s in sandbox.jsonl_spans()} == {"mine"}
    assert err3 == ""
    assert not os.path.exists(os.path.join(sandbox.dir, "s0.db")) or sandbox.store_spans(
        os.path.join(sandbox.dir, "s0.db")) == []


def test_exporter_none_exports_nothing(sandbox):
    sandbox.write("svc.py", SPAN_SCRIPT)
    proc = sandbox.ok(["python", "svc.py"], env=sandbox.env(AUTOINSTR_EXPORTER="none"))
    assert proc.stderr == ""
    assert not os.path.exists(sandbox.store) and not os.path.exists(sandbox.jsonl)
    assert not os.path.exists(os.path.join(sandbox.home, "data", "autoinstr"))


def test_unhandled_exception_keeps_traceback_exit_code_and_spans(sandbox):
    sandbox.write("crash.py", """
        import autoinstr
        with autoinstr.span("crashing"):
            raise RuntimeError("app crashed")
    """)
    proc = sandbox.run(["python", "crash.py"])
    assert proc.returncode == 1
    assert proc.stderr.startswith("Traceback")
    assert proc.stderr.rstrip().endswith("RuntimeError: app crashed")
    span = sandbox.one(sandbox.store_spans(), "crashing")
    assert span["status"] == "error"
    assert span["attributes"]["exception.message"] == "app crashed"


def test_app_without_spans_creates_no_store(sandbox):
    sandbox.write("quiet.py", """
        import threading
        import autoinstr
        assert autoinstr.stats()["enabled"] is True
        assert [t.name for t in threading.enumerate()] == ["MainThread"]
    """)
    proc = sandbox.ok(["python", "quiet.py"], env=sandbox.env(AUTOINSTR_EXPORTER="local,jsonl"))
    assert proc.stderr == ""
    assert not os.path.exists(sandbox.store) and not os.path.exists(sandbox.jsonl)


def test_interpreter_without_autoinstr_runs_without_the_agent(sandbox):
    base = os.path.join(sys.base_prefix, "bin", "python3")
    if not os.path.exists(base) or sys.base_prefix == sys.prefix:
        pytest.skip("no base interpreter outside the venv")
    check = subprocess.run([base, "-c", "import autoinstr"], capture_output=True, env=sandbox.env(), timeout=30,
                           cwd=sandbox.dir)
    if check.returncode == 0:
        pytest.skip("the base interpreter has autoinstr installed too")
    user_site = sandbox.write("usersite/sitecustomize.py", USER_SITECUSTOMIZE)
    sandbox.write("plain.py", """
        import sys
        print("plain", sys.argv[1:])
        sys.exit(5)
    """)
    marker = os.path.join(sandbox.dir, "marker.txt")
    proc = sandbox.run([base, "plain.py", "x"], env=sandbox.env(PYTHONPATH=os.path.dirname(user_site),
                                                                 SITE_MARKER=marker))
    assert proc.returncode == 5
    assert proc.stdout == "plain ['x']\n"
    assert proc.stderr == ""
    with open(marker) as f:
        runs = [json.loads(line) for line in f]
    assert [r["argv"] for r in runs if r["argv"][:1] == ["plain.py"]] == [["plain.py", "x"]]


@pytest.mark.parametrize("pythonpath", [":/nonexistent", "/nonexistent:"])
def test_empty_pythonpath_entry_still_means_the_current_folder(sandbox, pythonpath):
    sandbox.write("helper_mod.py", "VALUE = 7\n")
    sandbox.write("sub/uses_helper.py", "import helper_mod\nprint(helper_mod.VALUE)\n")
    env = sandbox.env(PYTHONPATH=pythonpath)
    plain = sandbox.run(["python", "sub/uses_helper.py"], env=env, launcher=False)
    assert (plain.returncode, plain.stdout) == (0, "7\n"), "setup: plain python finds helper_mod via ''"
    proc = sandbox.run(["python", "sub/uses_helper.py"], env=env)
    assert (proc.returncode, proc.stdout, proc.stderr) == (0, "7\n", "")


def test_startup_adds_only_a_few_small_stdlib_modules(sandbox):
    """Start-up cost is mostly imports: loading the agent may add its own modules and these few small
    ones, nothing like `re`, `urllib.parse`, `json`, `threading` or `importlib.util` (milliseconds each)."""
    probe = "import sys; print(' '.join(sorted(sys.modules)))"
    plain = set(sandbox.ok(["python", "-c", probe], launcher=False).stdout.split())
    loaded = set(sandbox.ok(["python", "-c", probe], launcher=False,
                            env=sandbox.env(AUTOINSTR_ENABLED="true")).stdout.split())
    added = {m for m in loaded - plain if m.split(".")[0] != "autoinstr"}
    # (itertools and _collections are built into the interpreter: on 3.13 plain start-up has not loaded them yet)
    small = {"__future__", "_contextvars", "contextvars", "_random", "atexit", "itertools", "_collections"}
    assert added <= small, sorted(added)
    assert "autoinstr.bootstrap" in loaded
    # the export pipeline's modules come with the first finished span, not with every process's start
    assert not {m for m in loaded if m.startswith("autoinstr.export")}, sorted(loaded)


def test_the_first_finished_span_sets_the_pipeline_up(sandbox):
    """Start-up leaves the export modules out; the first finished span brings them in and is exported, and
    stats() reports the agent as on before any span."""
    probe = ("import json, sys, autoinstr\n"
             "before = autoinstr.stats()\n"
             "had = sorted(m for m in sys.modules if m.startswith('autoinstr.export'))\n"
             "with autoinstr.span('first'):\n    pass\n"
             "after = sorted(m for m in sys.modules if m.startswith('autoinstr.export'))\n"
             "print(json.dumps([before, had, after, autoinstr.flush(10), autoinstr.stats()['spans_exported']]))\n")
    before, had, after, flushed, exported = json.loads(sandbox.ok(["python", "-c", probe]).stdout)
    assert before["enabled"] is True and before["spans_created"] == 0 and before["spans_exported"] == 0
    assert had == ["autoinstr.export", "autoinstr.export.base", "autoinstr.export.pipeline",
                   "autoinstr.export.records"], had  # (stats() made the pipeline: nothing exported yet)
    assert "autoinstr.export.pipeline" in after and flushed is True and exported == 1
    assert [s["name"] for s in sandbox.store_spans()] == ["first"]


def interpreter_starts(stderr: str) -> int:
    """How many interpreters started, from PYTHONPROFILEIMPORTTIME's lines: each imports `encodings` once."""
    return sum(1 for line in stderr.splitlines()
               if line.startswith("import time:") and line.rpartition("|")[2].strip() == "encodings")


def test_the_launcher_starts_no_interpreter_of_its_own(sandbox):
    """`autoinstr-run` is a shell script: a launch costs a shell's start, not one more interpreter's (about
    10 ms) before the app's."""
    env = sandbox.env(PYTHONPROFILEIMPORTTIME="1")
    proc = sandbox.ok(["sh", "-c", "echo not python"], env=env)
    assert (proc.stdout, proc.stderr) == ("not python\n", "")
    sandbox.write("svc.py", SPAN_SCRIPT)
    proc = sandbox.ok(["python", "svc.py"], env=env)
    assert interpreter_starts(proc.stderr) == 1, proc.stderr
    assert sorted(s["name"] for s in sandbox.store_spans()) == ["inner", "work"]


def test_the_python_launcher_imports_none_of_the_agent(sandbox):
    """`autoinstr run`, where the shell launcher hands over: it loads the launcher and nothing else of ours."""
    def imported(proc) -> set:
        return {line.rpartition("|")[2].strip() for line in proc.stderr.splitlines() if line.startswith("import time:")}

    proc = subprocess.run([sandbox.CLI, "run", "--version"], env=sandbox.env(PYTHONPROFILEIMPORTTIME="1"),
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0 and proc.stdout.startswith("autoinstr "), proc.stderr
    launcher = imported(proc)
    assert "autoinstr.cli" in launcher, proc.stderr
    assert not launcher & {"autoinstr.trace.span", "autoinstr.config", "autoinstr._speedups"}, sorted(launcher)


LAUNCHER_CASES = [
    # (launcher arguments, exit code, stdout, a piece of stderr); svc.py prints its service and exits 0
    (["--service=svc-a", "python", "svc.py"], 0, "svc-a\n", None),
    (["--service", "svc-b", "--", "python", "svc.py", "--service", "app-arg"], 0, "svc-b\n", None),
    (["--service=", "python", "svc.py"], 0, "svc\n", None),  # an empty name: the default
    (["--", "-weird"], 127, "", "autoinstr-run: command not found: -weird"),
    (["--service"], 2, "", "autoinstr-run: --service needs a NAME"),
    ([], 2, "", "usage: autoinstr-run"),
    (["--service", "x"], 2, "", "usage: autoinstr-run"),
    (["--bogus", "python", "svc.py"], 2, "", "autoinstr-run: unknown option --bogus"),
    (["./not-executable.sh"], 126, "", "autoinstr-run: permission denied: ./not-executable.sh"),
    (["cd", "/"], 127, "", "autoinstr-run: command not found: cd"),  # a shell builtin with no program
    (["echo", "a b"], 0, "a b\n", None),  # a builtin with a program of the same name: the program runs
    (["--help"], 0, "usage: autoinstr-run", None),
]


@pytest.mark.parametrize("shell", ["sh", "bash"])
@pytest.mark.parametrize("args,code,out,err", LAUNCHER_CASES, ids=[" ".join(c[0]) or "none" for c in LAUNCHER_CASES])
def test_launcher_options_and_errors(sandbox, shell, args, code, out, err):
    """The shell launcher and the Python one it hands the rest to answer alike, under dash (Debian's sh) and
    bash: options, `--`, usage and the 126/127 errors of a command that cannot run."""
    sandbox.write("svc.py", "import os\nprint(os.environ.get('AUTOINSTR_SERVICE_NAME') or 'svc')\n")
    sandbox.write("not-executable.sh", "echo never\n")
    proc = subprocess.run([shell, sandbox.RUN] + [sandbox.PYTHON if a == "python" else a for a in args],
                          env=sandbox.env(), capture_output=True, text=True, timeout=60, cwd=sandbox.dir)
    assert proc.returncode == code, proc.stderr
    assert proc.stdout.startswith(out) if out.startswith("usage") else proc.stdout == out, proc.stdout
    if err is None:
        assert proc.stderr == ""
    else:
        assert err in proc.stderr, proc.stderr


def test_launcher_puts_the_hook_first_and_keeps_pythonpath_exactly(sandbox):
    show = ["sh", "-c", 'printf %s "$PYTHONPATH"']
    hook = sandbox.ok(show).stdout
    assert hook.endswith("/sitecustomize_hook") and os.path.isfile(os.path.join(hook, "sitecustomize.py")), hook
    for given, expected in [("", hook), ("a::b:", hook + ":a::b:"), (":", hook + "::"),
                            (hook + ":a:" + hook + "/:b", hook + ":a:b"), ("a b:c", hook + ":a b:c")]:
        assert sandbox.ok(show, env=sandbox.env(PYTHONPATH=given)).stdout == expected, given


def install_copy(sandbox, name: str, link: bool, with_cli: bool = True) -> str:
    """The launcher placed elsewhere: linked into a folder on its own (as pipx does), or copied there (an
    install whose hook folder is not beside it), with the autoinstr command beside it or not."""
    bin_dir = os.path.join(sandbox.dir, name, "bin")
    os.makedirs(bin_dir)
    launcher = os.path.join(bin_dir, "autoinstr-run")
    if link:
        os.symlink(sandbox.RUN, launcher)
    else:
        with open(sandbox.RUN, "rb") as src, open(launcher, "wb") as dst:
            dst.write(src.read())
        os.chmod(launcher, 0o755)
    if with_cli:
        os.symlink(sandbox.CLI, os.path.join(bin_dir, "autoinstr"))
    return launcher


@pytest.mark.parametrize("link", [True, False], ids=["linked", "copied"])
def test_launcher_away_from_its_install(sandbox, link):
    """Linked, it finds its own install's hook and still starts no interpreter; copied away from the hook, it
    hands over to `autoinstr run` beside it, which finds the hook from the package: the agent loads either way."""
    launcher = install_copy(sandbox, "elsewhere", link)
    sandbox.write("svc.py", SPAN_SCRIPT)
    proc = subprocess.run([launcher, "--service", "moved", sandbox.PYTHON, "svc.py"],
                          env=sandbox.env(PYTHONPROFILEIMPORTTIME="1"), capture_output=True, text=True, timeout=60,
                          cwd=sandbox.dir)
    assert proc.returncode == 0, proc.stderr
    assert interpreter_starts(proc.stderr) == (1 if link else 2), proc.stderr
    spans = sandbox.store_spans()
    assert sorted(s["name"] for s in spans) == ["inner", "work"] and {s["service"] for s in spans} == {"moved"}


def test_launcher_with_neither_hook_nor_autoinstr_beside_it_says_so(sandbox):
    launcher = install_copy(sandbox, "alone", link=False, with_cli=False)
    proc = subprocess.run([launcher, "true"], env=sandbox.env(), capture_output=True, text=True, timeout=60)
    assert proc.returncode == 126
    assert proc.stderr == "autoinstr-run: cannot find the autoinstr command in %s\n" % os.path.dirname(launcher)


def test_exit_of_a_process_that_made_no_span_imports_nothing_heavy(sandbox):
    """The exit flush of a process with nothing to export is nearly free: in particular it does not import
    `threading` (over a millisecond) to look for app threads that cannot exist without it."""
    def imported(env: dict) -> set:
        proc = sandbox.ok(["python", "-X", "importtime", "-c", "pass"], launcher=False, env=env)
        return {line.rpartition("|")[2].strip() for line in proc.stderr.splitlines() if line.startswith("import time:")}

    added = imported(sandbox.env(AUTOINSTR_ENABLED="true")) - imported(sandbox.env(AUTOINSTR_ENABLED="false"))
    assert "autoinstr.bootstrap" in added  # (the agent was loaded)
    assert not added & {"threading", "re", "json", "sqlite3", "urllib.parse"}, sorted(added)
