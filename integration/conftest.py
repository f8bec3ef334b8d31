"""Shared helpers for the integration tests.

Every test gets a `sandbox`: its own folder, store, jsonl file, and a clean environment (no AUTOINSTR_*,
OTEL_* or PYTHONPATH from the parent; HOME and XDG_DATA_HOME inside the folder). Processes run the tools
installed in the same venv as the interpreter running pytest (install the package non-editable first:
`pip install --force-reinstall --no-deps .`).
"""

from __future__ import annotations

import collections
import json
import os
import subprocess
import sys
import textwrap
import time

import pytest

BIN = os.path.dirname(sys.executable)
PYTHON = sys.executable
RUN = os.path.join(BIN, "autoinstr-run")
CLI = os.path.join(BIN, "autoinstr")
TIMEOUT = 60

RECORD_FIELDS = ("trace_id", "span_id", "parent_id", "name", "kind", "service", "start_ns", "duration_ns",
                 "status", "attributes", "events")


def clean_env(home: str, **extra: object) -> dict:
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("AUTOINSTR_", "OTEL_")) and k not in ("PYTHONPATH", "PYTHONHOME", "PYTHONSTARTUP",
                                                                    "PYTHONSAFEPATH", "PYTHONNOUSERSITE")}
    env["HOME"] = home
    env["XDG_DATA_HOME"] = os.path.join(home, "data")
    env["PATH"] = BIN + os.pathsep + env.get("PATH", "/usr/bin:/bin")
    env["PYTHONDONTWRITEBYTECODE"] = "1"
    for key, value in extra.items():
        if value is None:
            env.pop(key, None)
        else:
            env[key] = str(value)
    return env


class Sandbox:
    """One test's folder, files and process helpers."""

    PYTHON = PYTHON
    RUN = RUN
    CLI = CLI
    RECORD_FIELDS = RECORD_FIELDS

    def __init__(self, path) -> None:
        self.path = path
        self.dir = str(path)
        self.home = os.path.join(self.dir, "home")
        os.makedirs(os.path.join(self.home, "data"), exist_ok=True)
        self.store = os.path.join(self.dir, "spans.db")
        self.jsonl = os.path.join(self.dir, "spans.jsonl")

    # ------------------------------------------------------------------------------- files

    def write(self, name: str, code: str) -> str:
        full = os.path.join(self.dir, name)
        os.makedirs(os.path.dirname(full), exist_ok=True)
        with open(full, "w") as f:
            f.write(textwrap.dedent(code).lstrip("\n"))
        return full

    def env(self, **extra: object) -> dict:
        """Clean env; the store and jsonl file of this sandbox unless overridden (None removes)."""
        base = {"AUTOINSTR_STORE": self.store, "AUTOINSTR_JSONL_PATH": self.jsonl}
        base.update(extra)
        return clean_env(self.home, **base)

    # --------------------------------------------------------------------------- processes

    def argv(self, args, launcher: bool = True, service: str = None) -> list:
        args = [PYTHON if a == "python" else a for a in args]
        if not launcher:
            return list(args)
        return [RUN] + (["--service", service] if service else []) + list(args)

    def run(self, args, env: dict = None, launcher: bool = True, service: str = None, input: str = None,
            timeout: float = TIMEOUT, cwd: str = None) -> subprocess.CompletedProcess:
        return subprocess.run(self.argv(args, launcher, service), env=self.env() if env is None else env,
                              input=input, capture_output=True, text=True, timeout=timeout, cwd=cwd or self.dir)

    def popen(self, args, env: dict = None, launcher: bool = True, service: str = None, cwd: str = None,
              stdin=subprocess.DEVNULL) -> subprocess.Popen:
        return subprocess.Popen(self.argv(args, launcher, service), env=self.env() if env is None else env,
                                stdin=stdin, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                cwd=cwd or self.dir)

    def ok(self, args, **kw) -> subprocess.CompletedProcess:
        proc = self.run(args, **kw)
        assert proc.returncode == 0, f"rc={proc.returncode}\nstdout:\n{proc.stdout}\nstderr:\n{proc.stderr}"
        return proc

    # ----------------------------------------------------------------------------- reading

    def cli(self, *args: str, timeout: float = TIMEOUT) -> subprocess.CompletedProcess:
        return subprocess.run([CLI] + list(args), env=clean_env(self.home), capture_output=True, text=True,
                              timeout=timeout, cwd=self.dir)

    def store_spans(self, store: str = None) -> list:
        """Spans of the store, through `autoinstr spans --json --store PATH`."""
        store = store or self.store
        proc = self.cli("spans", "--json", "--store", store)
        assert proc.returncode == 0, f"autoinstr spans failed: {proc.stderr}"
        return [json.loads(line) for line in proc.stdout.splitlines() if line.strip()]

    def jsonl_spans(self, path: str = None) -> list:
        path = path or self.jsonl
        if not os.path.exists(path):
            return []
        with open(path, encoding="utf-8") as f:
            return [json.loads(line) for line in f if line.strip()]

    # ----------------------------------------------------------------------------- helpers

    @staticmethod
    def wait_all(procs, timeout: float = TIMEOUT) -> list:
        """communicate() with every Popen; returns [(rc, out, err)]; kills the lot on timeout."""
        end = time.monotonic() + timeout
        results = []
        try:
            for p in procs:
                out, err = p.communicate(timeout=max(0.1, end - time.monotonic()))
                results.append((p.returncode, out, err))
        finally:
            for p in procs:
                if p.poll() is None:
                    p.kill()
                    p.communicate()
        return results

    @staticmethod
    def by_name(spans: list) -> dict:
        out: dict = {}
        for s in spans:
            out.setdefault(s["name"], []).append(s)
        return out

    @staticmethod
    def one(spans: list, name: str) -> dict:
        found = [s for s in spans if s["name"] == name]
        assert len(found) == 1, (
            f"expected one span {name!r}, found {len(found)} among {sorted({s['name'] for s in spans})}")
        return found[0]

    @staticmethod
    def assert_unique(spans: list) -> None:
        counts = collections.Counter((s["trace_id"], s["span_id"]) for s in spans)
        dupes = sorted(i for i, n in counts.items() if n > 1)
        assert not dupes, f"spans exported more than once: {dupes[:5]}"


@pytest.fixture
def sandbox(tmp_path) -> Sandbox:
    return Sandbox(tmp_path)


@pytest.fixture(scope="session")
def sandbox_factory(tmp_path_factory):
    """For module-scoped fixtures: a fresh Sandbox in a new temp folder per call."""
    return lambda name: Sandbox(tmp_path_factory.mktemp(name))


# -------------------------------------------------------------- real database servers (see dbservers.py)

def _db_server(kind: str):
    """Start one server for the session; skip when its binaries are missing, unless
    AUTOINSTR_REQUIRE_DB_SERVERS=1 (test.sh sets it once the Debian packages are in): then fail."""
    import dbservers

    missing, start = {"postgresql": (dbservers.postgres_missing, dbservers.start_postgres),
                      "mariadb": (dbservers.mariadb_missing, dbservers.start_mariadb)}[kind]
    reason = missing()
    if reason:
        if os.environ.get("AUTOINSTR_REQUIRE_DB_SERVERS") == "1":
            pytest.fail("AUTOINSTR_REQUIRE_DB_SERVERS=1, but " + reason, pytrace=False)
        pytest.skip(reason)
    return start()


@pytest.fixture(scope="session")
def postgres():
    """A real PostgreSQL server for the session (started on first use), as a dbservers.DBServer:
    host 127.0.0.1, port, user/password autoinstr/autoinstr, dbname autoinstr_test; `.dsn` for psycopg."""
    server = _db_server("postgresql")
    try:
        yield server.info
    finally:
        server.stop()


@pytest.fixture(scope="session")
def mariadb():
    """A real MariaDB server for the session (started on first use), as a dbservers.DBServer:
    `.pymysql_kwargs()` / `.mysqldb_kwargs()` to connect over TCP with user and password."""
    server = _db_server("mariadb")
    try:
        yield server.info
    finally:
        server.stop()
