"""Real, throwaway database servers for the integration tests: PostgreSQL and MariaDB from Debian's packages.

`start_postgres()` / `start_mariadb()` create a data directory under a new temp dir, start the server on a
free port bound to 127.0.0.1 only, wait (bounded) until it takes connections, and return a `RunningServer`
whose `.info` (`DBServer`) says how to connect: a database `autoinstr_test` and a password user
`autoinstr`/`autoinstr`, reached over TCP like a real app would. `RunningServer.stop()` shuts the server down
and removes the temp dir. `postgres_missing()` / `mariadb_missing()` say why a server can't be started here
(None when it can).

Servers refuse to run as root, so under uid 0 they run as an unprivileged system user (`postgres` / `mysql`
when the Debian packages made them, else `nobody`) that owns the temp dir. Each server is started in its own
session (a Ctrl-C in the terminal does not reach it; our stop does) with a parent-death signal, so it does
not outlive a killed test run.
"""

from __future__ import annotations

import atexit
import ctypes
import glob
import os
import pwd
import re
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from dataclasses import dataclass
from typing import Callable, Optional

from fleet import free_port

HOST = "127.0.0.1"
USER = "autoinstr"
PASSWORD = "autoinstr"
DBNAME = "autoinstr_test"
START_TIMEOUT = float(os.environ.get("AUTOINSTR_DB_START_TIMEOUT", "60"))
STOP_TIMEOUT = 30.0
PORT_TRIES = 3  # a free port can be taken between free_port() and the server's bind


class DBServerError(RuntimeError):
    """A server could not be set up or started; the message has the command and the log tail."""


@dataclass(frozen=True)
class DBServer:
    """How to reach a running server over TCP with user and password."""

    kind: str  # "postgresql" or "mariadb"
    host: str
    port: int
    user: str
    password: str
    dbname: str
    version: str
    unix_socket: str  # for the curious; tests should connect over TCP (host/port)
    startup_seconds: float  # from an empty temp dir to accepting connections

    @property
    def dsn(self) -> str:
        """libpq keyword DSN, for psycopg2.connect(dsn) and psycopg.connect(dsn)."""
        return "host=%s port=%d dbname=%s user=%s password=%s" % (
            self.host, self.port, self.dbname, self.user, self.password)

    @property
    def url(self) -> str:
        scheme = "postgresql" if self.kind == "postgresql" else "mysql"
        return "%s://%s:%s@%s:%d/%s" % (scheme, self.user, self.password, self.host, self.port, self.dbname)

    def pymysql_kwargs(self) -> dict:
        """pymysql.connect(**kwargs)."""
        return {"host": self.host, "port": self.port, "user": self.user, "password": self.password,
                "database": self.dbname}

    def mysqldb_kwargs(self) -> dict:
        """MySQLdb.connect(**kwargs) (mysqlclient); host 127.0.0.1 means TCP, not the socket."""
        return {"host": self.host, "port": self.port, "user": self.user, "password": self.password,
                "database": self.dbname}

    def psycopg_kwargs(self) -> dict:
        """psycopg2.connect(**kwargs) / psycopg.connect(**kwargs)."""
        return {"host": self.host, "port": self.port, "user": self.user, "password": self.password,
                "dbname": self.dbname}


# ------------------------------------------------------------------------------------------- processes

_PR_SET_PDEATHSIG = 1


def _die_with_parent(sig: int) -> Callable[[], None]:
    def preexec() -> None:  # runs in the child after the uid switch, so the setting survives it
        try:
            ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, int(sig), 0, 0, 0)
        except Exception:
            pass
    return preexec


@dataclass(frozen=True)
class _RunAs:
    name: str
    uid: int
    gid: int

    def popen_kwargs(self) -> dict:
        # extra_groups=[] drops root's supplementary groups too
        return {"user": self.uid, "group": self.gid, "extra_groups": []}


def _run_as(preferred: str) -> Optional[_RunAs]:
    """None when not root (run as ourselves); else an unprivileged account to run the server as."""
    if os.geteuid() != 0:
        return None
    for name in (preferred, "nobody"):
        try:
            pw = pwd.getpwnam(name)
        except KeyError:
            continue
        if pw.pw_uid != 0:
            return _RunAs(name, pw.pw_uid, pw.pw_gid)
    raise DBServerError("running as root and found neither a %r nor a 'nobody' account to run the server as"
                        % preferred)


_OWNER = "autoinstr-owner.pid"


def _sweep_stale(parent: str, prefix: str) -> None:
    """Remove temp dirs left by test runs that were killed (their server died with them: see _spawn)."""
    for path in glob.glob(os.path.join(parent, prefix + "*")):
        try:
            with open(os.path.join(path, _OWNER)) as f:
                pid = int(f.read().strip())
            os.kill(pid, 0)
        except ProcessLookupError:
            shutil.rmtree(path, ignore_errors=True)
        except (OSError, ValueError):
            pass  # not ours to judge (or another user's live process)


def _make_base(prefix: str, runas: Optional[_RunAs]) -> str:
    parent = tempfile.gettempdir()
    if runas is not None and not os.stat(parent).st_mode & 0o001:
        parent = "/tmp"  # the server's user must be able to reach its dir
    _sweep_stale(parent, prefix)
    base = tempfile.mkdtemp(prefix=prefix, dir=parent)
    with open(os.path.join(base, _OWNER), "w") as f:
        f.write("%d\n" % os.getpid())
    if runas is not None:
        os.chown(base, runas.uid, runas.gid)
    return base


def _mkdir(path: str, runas: Optional[_RunAs]) -> str:
    os.makedirs(path, mode=0o700, exist_ok=True)
    if runas is not None:
        os.chown(path, runas.uid, runas.gid)
    return path


def _child_env() -> dict:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PG", "MYSQL", "MARIADB", "LC_"))}
    env["LC_ALL"] = "C"
    env["LANG"] = "C"
    return env


def _tail(path: str, lines: int = 40) -> str:
    try:
        with open(path, errors="replace") as f:
            return "".join(f.readlines()[-lines:])
    except OSError as exc:
        return "(no log: %s)" % exc


def _run(argv: list, runas: Optional[_RunAs], cwd: str, log: str, what: str, timeout: float,
         stdin_text: str = None) -> None:
    """Run a setup command to completion, its output appended to `log`; raise with the log tail on failure."""
    kwargs = runas.popen_kwargs() if runas else {}
    with open(log, "ab") as out:
        out.write(("\n$ %s\n" % " ".join(argv)).encode())
        out.flush()
        try:
            proc = subprocess.run(argv, cwd=cwd, env=_child_env(), stdout=out, stderr=subprocess.STDOUT,
                                  input=stdin_text.encode() if stdin_text is not None else None,
                                  stdin=None if stdin_text is not None else subprocess.DEVNULL,
                                  timeout=timeout, **kwargs)
        except subprocess.TimeoutExpired:
            raise DBServerError("%s timed out after %.0f s: %s\n--- %s:\n%s" % (what, timeout, " ".join(argv),
                                                                             log, _tail(log)))
    if proc.returncode != 0:
        raise DBServerError("%s failed (exit %d): %s\n--- %s:\n%s" % (what, proc.returncode, " ".join(argv),
                                                                   log, _tail(log)))


def _version(binary: str) -> str:
    try:
        out = subprocess.run([binary, "--version"], capture_output=True, text=True, timeout=30,
                             env=_child_env()).stdout
    except (OSError, subprocess.SubprocessError):
        return "?"
    match = re.search(r"\d+(\.\d+)+(-MariaDB)?", out)
    return match.group(0) if match else out.strip() or "?"


_RUNNING: list = []


class RunningServer:
    """One server process started by this module. `info` says how to connect; `stop()` is idempotent."""

    def __init__(self, kind: str, proc: subprocess.Popen, base: str, log: str, stop_signal: int,
                 info: DBServer) -> None:
        self.kind = kind
        self.proc = proc
        self.base = base
        self.log = log
        self.stop_signal = stop_signal
        self.info = info
        _RUNNING.append(self)

    def log_tail(self, lines: int = 40) -> str:
        return _tail(self.log, lines)

    def stop(self) -> None:
        try:
            _terminate(self.proc, self.stop_signal)
        finally:
            shutil.rmtree(self.base, ignore_errors=True)
            if self in _RUNNING:
                _RUNNING.remove(self)

    def __enter__(self) -> RunningServer:
        return self

    def __exit__(self, *exc) -> None:
        self.stop()


def _terminate(proc: subprocess.Popen, sig: int) -> None:
    """`sig` (the server's clean fast shutdown), then SIGKILL to its whole process group if it lingers."""
    if proc.poll() is None:
        try:
            proc.send_signal(sig)
            proc.wait(STOP_TIMEOUT)
        except subprocess.TimeoutExpired:
            pass
    try:
        os.killpg(proc.pid, signal.SIGKILL)  # leftovers (postgres backends) share the group: start_new_session
    except (ProcessLookupError, PermissionError):
        pass
    try:
        proc.wait(10)
    except subprocess.TimeoutExpired:
        pass


@atexit.register
def _stop_all() -> None:
    for server in list(_RUNNING):
        server.stop()


def _spawn(argv: list, runas: Optional[_RunAs], cwd: str, log: str, death_signal: int) -> subprocess.Popen:
    kwargs = runas.popen_kwargs() if runas else {}
    with open(log, "ab") as out:
        out.write(("\n$ %s\n" % " ".join(argv)).encode())
        out.flush()
        return subprocess.Popen(argv, cwd=cwd, env=_child_env(), stdin=subprocess.DEVNULL, stdout=out,
                                stderr=subprocess.STDOUT, start_new_session=True,
                                preexec_fn=_die_with_parent(death_signal), **kwargs)


def _wait_ready(proc: subprocess.Popen, ready: Callable[[], bool], deadline: float, what: str,
                log: str) -> None:
    """Poll `ready()` until it is true; raise with the log tail if the process exits or the deadline passes."""
    while True:
        if proc.poll() is not None:
            raise _Exited("%s exited (code %s) before accepting connections\n--- %s:\n%s"
                          % (what, proc.returncode, log, _tail(log)))
        try:
            if ready():
                return
        except OSError:
            pass
        if time.monotonic() > deadline:
            raise DBServerError("%s did not accept connections in time\n--- %s:\n%s" % (what, log, _tail(log)))
        time.sleep(0.05)


class _Exited(DBServerError):
    pass


def _start_with_port_retries(start: Callable[[int], RunningServer], bind_error: str) -> RunningServer:
    for attempt in range(PORT_TRIES):
        try:
            return start(free_port())
        except _Exited as exc:
            if bind_error not in str(exc) or attempt == PORT_TRIES - 1:
                raise
    raise AssertionError("unreachable")


def _tcp_open(port: int) -> bool:
    with socket.create_connection((HOST, port), timeout=1):
        return True


# ------------------------------------------------------------------------------------------ PostgreSQL

def _version_key(path: str) -> tuple:
    return tuple(int(p) for p in re.findall(r"\d+", path)) or (0,)


def postgres_bindir() -> Optional[str]:
    """The newest /usr/lib/postgresql/*/bin with initdb and postgres, else the one initdb on PATH is in."""
    candidates = sorted(glob.glob("/usr/lib/postgresql/*/bin"), key=_version_key, reverse=True)
    initdb = shutil.which("initdb")
    if initdb:
        candidates.append(os.path.dirname(os.path.realpath(initdb)))
    for bindir in candidates:
        if all(os.access(os.path.join(bindir, b), os.X_OK) for b in ("initdb", "postgres")):
            return bindir
    return None


def postgres_missing() -> Optional[str]:
    """Why PostgreSQL can't be started here, or None."""
    if postgres_bindir() is None:
        return ("PostgreSQL server binaries not found (no /usr/lib/postgresql/*/bin/{initdb,postgres}): "
                "apt-get install postgresql")
    return None


def start_postgres(timeout: float = START_TIMEOUT) -> RunningServer:
    bindir = postgres_bindir()
    if bindir is None:
        raise DBServerError(postgres_missing())
    t0 = time.monotonic()
    deadline = t0 + timeout
    runas = _run_as("postgres")
    base = _make_base("autoinstr-pg-", runas)
    try:
        data = os.path.join(base, "data")
        sockdir = _mkdir(os.path.join(base, "sock"), runas)
        log = os.path.join(base, "postgres.log")
        pwfile = os.path.join(base, "superuser.pw")
        with open(pwfile, "w") as f:
            f.write("unused-superuser-password\n")
        if runas:
            os.chown(pwfile, runas.uid, runas.gid)
            os.chown(_touch(log), runas.uid, runas.gid)
        _run([os.path.join(bindir, "initdb"), "-D", data, "-U", "postgres", "--pwfile", pwfile,
              "--auth-local=trust", "--auth-host=scram-sha-256", "-E", "UTF8", "--locale=C", "--no-sync"],
             runas, base, log, "initdb", max(1.0, deadline - time.monotonic()))
        # the app's role and database, in single-user mode: no client program needed, and done before listening
        sql = ("SET password_encryption = 'scram-sha-256';\n"
               "CREATE ROLE %s LOGIN PASSWORD '%s';\n"
               "CREATE DATABASE %s OWNER %s;\n" % (USER, PASSWORD, DBNAME, USER))
        _run([os.path.join(bindir, "postgres"), "--single", "-D", data, "-c", "fsync=off", "postgres"],
             runas, base, log, "postgres --single (create role and database)",
             max(1.0, deadline - time.monotonic()), stdin_text=sql)

        def start(port: int) -> RunningServer:
            proc = _spawn([os.path.join(bindir, "postgres"), "-D", data, "-p", str(port), "-k", sockdir,
                           "-c", "listen_addresses=" + HOST, "-c", "fsync=off", "-c", "synchronous_commit=off",
                           "-c", "full_page_writes=off", "-c", "max_connections=100",
                           "-c", "logging_collector=off", "-c", "log_min_messages=warning"],
                          runas, base, log, signal.SIGINT)
            try:
                _wait_ready(proc, lambda: _postgres_ready(data, port), deadline, "postgres", log)
            except BaseException:
                _terminate(proc, signal.SIGINT)
                raise
            info = DBServer("postgresql", HOST, port, USER, PASSWORD, DBNAME,
                            _version(os.path.join(bindir, "postgres")), os.path.join(sockdir, ".s.PGSQL.%d" % port),
                            round(time.monotonic() - t0, 2))
            return RunningServer("postgresql", proc, base, log, signal.SIGINT, info)

        return _start_with_port_retries(start, "could not bind")
    except BaseException:
        shutil.rmtree(base, ignore_errors=True)
        raise


def _touch(path: str) -> str:
    with open(path, "a"):
        pass
    return path


def _postgres_ready(data: str, port: int) -> bool:
    """postmaster.pid's status line says "ready" (PostgreSQL 10+) and the TCP port answers."""
    try:
        with open(os.path.join(data, "postmaster.pid")) as f:
            lines = f.read().splitlines()
    except OSError:
        return False
    if len(lines) >= 8 and lines[7].strip() != "ready":
        return False
    return _tcp_open(port)


# --------------------------------------------------------------------------------------------- MariaDB

def _first_executable(*paths: str) -> Optional[str]:
    for path in paths:
        found = path if os.path.isabs(path) else shutil.which(path)
        if found and os.access(found, os.X_OK):
            return found
    return None


def mariadb_binaries() -> Optional[tuple]:
    """(mariadbd, mariadb-install-db) or None. The install script also needs my_print_defaults."""
    server = _first_executable("/usr/sbin/mariadbd", "mariadbd", "/usr/sbin/mysqld", "mysqld")
    install = _first_executable("/usr/bin/mariadb-install-db", "mariadb-install-db", "/usr/bin/mysql_install_db",
                                "mysql_install_db")
    if server and install and _first_executable("/usr/bin/my_print_defaults", "my_print_defaults"):
        return server, install
    return None


def mariadb_missing() -> Optional[str]:
    """Why MariaDB can't be started here, or None."""
    if mariadb_binaries() is None:
        return ("MariaDB server binaries not found (mariadbd, mariadb-install-db, my_print_defaults): "
                "apt-get install mariadb-server-core mariadb-client-core")
    return None


# the same for the bootstrap and the server: InnoDB's files are made by the first
_MARIADB_OPTS = ["--innodb-buffer-pool-size=32M", "--innodb-log-file-size=16M", "--innodb-use-native-aio=0",
                 "--innodb-flush-log-at-trx-commit=0", "--innodb-doublewrite=0", "--skip-log-bin",
                 "--character-set-server=utf8mb4", "--skip-name-resolve"]


def start_mariadb(timeout: float = START_TIMEOUT) -> RunningServer:
    binaries = mariadb_binaries()
    if binaries is None:
        raise DBServerError(mariadb_missing())
    server, install = binaries
    t0 = time.monotonic()
    deadline = t0 + timeout
    runas = _run_as("mysql")
    base = _make_base("autoinstr-maria-", runas)
    try:
        data = os.path.join(base, "data")
        tmp = _mkdir(os.path.join(base, "tmp"), runas)
        sock = os.path.join(base, "mysqld.sock")
        log = os.path.join(base, "mariadb.log")
        # the app's user and database: the bootstrap skips the grant tables, so the server's --init-file
        # does it, before it accepts connections
        setup_sql = os.path.join(base, "setup.sql")
        with open(setup_sql, "w") as f:
            f.write("CREATE DATABASE IF NOT EXISTS %s;\n"
                    "CREATE USER IF NOT EXISTS '%s'@'%s' IDENTIFIED BY '%s';\n"
                    "GRANT ALL PRIVILEGES ON %s.* TO '%s'@'%s';\n"
                    % (DBNAME, USER, HOST, PASSWORD, DBNAME, USER, HOST))
        if runas:
            os.chown(setup_sql, runas.uid, runas.gid)
            os.chown(_touch(log), runas.uid, runas.gid)
        # run as the server's user (no --user needed); root@localhost gets unix-socket auth for that user
        _run([install, "--no-defaults", "--datadir=" + data, "--tmpdir=" + tmp, "--skip-test-db",
              "--auth-root-authentication-method=socket"] + _MARIADB_OPTS,
             runas, base, log, "mariadb-install-db", max(1.0, deadline - time.monotonic()))

        def start(port: int) -> RunningServer:
            proc = _spawn([server, "--no-defaults", "--datadir=" + data, "--tmpdir=" + tmp, "--socket=" + sock,
                           "--pid-file=" + os.path.join(base, "mariadbd.pid"), "--port=%d" % port,
                           "--bind-address=" + HOST,
                           "--init-file=" + setup_sql] + _MARIADB_OPTS,
                          runas, base, log, signal.SIGTERM)
            greeting: list = []
            try:
                _wait_ready(proc, lambda: _mariadb_greeting(port, greeting), deadline, "mariadbd", log)
            except BaseException:
                _terminate(proc, signal.SIGTERM)
                raise
            info = DBServer("mariadb", HOST, port, USER, PASSWORD, DBNAME, greeting[0], sock,
                            round(time.monotonic() - t0, 2))
            return RunningServer("mariadb", proc, base, log, signal.SIGTERM, info)

        return _start_with_port_retries(start, "Bind on TCP/IP port")
    except BaseException:
        shutil.rmtree(base, ignore_errors=True)
        raise


def _mariadb_greeting(port: int, found: list) -> bool:
    """The server's handshake packet (protocol 10) arrives: it is past its init and accepting clients."""
    with socket.create_connection((HOST, port), timeout=2) as s:
        packet = b""
        while len(packet) < 5 or b"\0" not in packet[5:]:
            chunk = s.recv(256)
            if not chunk:
                return False
            packet += chunk
    if packet[4] != 10:  # 0xff: an error packet, e.g. "Host ... is not allowed to connect"
        return False
    version = packet[5:packet.index(b"\0", 5)].decode("ascii", "replace")
    found.append(version[len("5.5.5-"):] if version.startswith("5.5.5-") else version)  # MariaDB's prefix
    return True
