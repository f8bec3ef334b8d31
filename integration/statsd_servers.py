"""Etsy's statsd daemon (npm `statsd`, run with node) flushing into Graphite's carbon-cache (Debian
`graphite-carbon`), both on 127.0.0.1 free ports with their files in a temporary folder, for the end-to-end
metrics tests; values are read back from carbon's whisper files (`whisper`, from PyPI or Debian's
python3-whisper).

statsd flushes every FLUSH_MS; carbon keeps 1-second points for an hour (whisper `1s:1h`), and statsd's
flushes are at least 2 s apart, so no two flushes share a whisper slot (statsd rounds its timestamps).
"""

from __future__ import annotations

import glob
import importlib.util
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
FLUSH_MS = 2000
START_TIMEOUT = 30.0


def statsd_js() -> str:
    """stats.js of the statsd package: AUTOINSTR_STATSD_JS, else .npm-statsd/ (test.sh installs it there)."""
    return os.environ.get("AUTOINSTR_STATSD_JS") or os.path.join(ROOT, ".npm-statsd", "node_modules", "statsd",
                                                                 "stats.js")


def carbon_cache() -> str:
    return shutil.which("carbon-cache") or "/usr/bin/carbon-cache"


def load_whisper():
    """The whisper module: installed in this interpreter, else Debian's python3-whisper (one file)."""
    try:
        import whisper

        return whisper
    except ImportError:
        pass
    for folder in ("/usr/lib/python3/dist-packages", "/usr/share/pyshared"):
        path = os.path.join(folder, "whisper.py")
        if os.path.exists(path):
            spec = importlib.util.spec_from_file_location("whisper", path)
            module = importlib.util.module_from_spec(spec)
            spec.loader.exec_module(module)  # type: ignore[union-attr]
            return module
    return None


def missing() -> str:
    """Why the servers cannot run here, or "" when they can."""
    if not shutil.which("node"):
        return "node is not installed"
    if not os.path.exists(statsd_js()):
        return "Etsy's statsd is not installed (%s; test.sh installs it with npm)" % statsd_js()
    if not os.path.exists(carbon_cache()):
        return "carbon-cache is not installed (Debian package graphite-carbon)"
    if load_whisper() is None:
        return "whisper is not importable (pip install whisper, or Debian package python3-whisper)"
    return ""


def free_port(kind: int = socket.SOCK_STREAM) -> int:
    # fleet's: carbon's three ports are picked one after the other, and the kernel may offer a just-released
    # port again (carbon then failed to start: "address already in use")
    from fleet import free_port as fleet_free_port

    return fleet_free_port(kind)


class _Process:
    def __init__(self, name: str, argv: list, cwd: str, env: dict = None) -> None:
        self.name = name
        self.lines: list = []
        self.proc = subprocess.Popen(argv, cwd=cwd, env=env, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                     stderr=subprocess.STDOUT, text=True, start_new_session=True)
        self.reader = threading.Thread(target=self._drain, daemon=True)
        self.reader.start()

    def _drain(self) -> None:
        for line in self.proc.stdout:
            self.lines.append(line)

    def tail(self, n: int = 40) -> str:
        return "".join(self.lines[-n:])

    def stop(self) -> None:
        if self.proc.poll() is None:
            try:
                os.killpg(self.proc.pid, signal.SIGTERM)
            except OSError:
                pass
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                try:
                    os.killpg(self.proc.pid, signal.SIGKILL)
                except OSError:
                    pass
                self.proc.wait(10)
        self.reader.join(5)


def _wait_tcp(port: int, process: _Process, deadline: float) -> None:
    while time.monotonic() < deadline:
        if process.proc.poll() is not None:
            raise RuntimeError("%s exited with %s before listening:\n%s" % (process.name, process.proc.returncode,
                                                                           process.tail()))
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return
        except OSError:
            time.sleep(0.1)
    raise RuntimeError("%s did not listen on %d within %.0fs:\n%s" % (process.name, port, START_TIMEOUT,
                                                                     process.tail()))


class StatsdGraphite:
    """A running pair: `statsd_address` ("127.0.0.1:port", for AUTOINSTR_STATSD) and the whisper files."""

    def __init__(self, folder: str) -> None:
        self.folder = folder
        self.whisper_dir = os.path.join(folder, "whisper")
        self.whisper = load_whisper()
        self.processes: list = []
        self.line_port = free_port()
        self.statsd_port = free_port(socket.SOCK_DGRAM)
        self.statsd_address = "127.0.0.1:%d" % self.statsd_port

    # ----------------------------------------------------------------------------------- lifecycle

    def start(self) -> StatsdGraphite:
        try:
            self._start_carbon()
            self._start_statsd()
        except BaseException:
            self.stop()
            raise
        return self

    def _start_carbon(self) -> None:
        conf = os.path.join(self.folder, "conf")
        storage = os.path.join(self.folder, "storage")
        for path in (conf, storage, self.whisper_dir):
            os.makedirs(path, exist_ok=True)
        with open(os.path.join(conf, "carbon.conf"), "w") as f:
            f.write(f"""[cache]
STORAGE_DIR = {storage}
LOCAL_DATA_DIR = {self.whisper_dir}
WHISPER_DIR = {self.whisper_dir}
LOG_DIR = {storage}/log
PID_DIR = {storage}
USER =
ENABLE_TAGS = False
MAX_CACHE_SIZE = inf
MAX_UPDATES_PER_SECOND = 100000
MAX_CREATES_PER_MINUTE = inf
CACHE_WRITE_STRATEGY = sorted
WHISPER_AUTOFLUSH = True
LINE_RECEIVER_INTERFACE = 127.0.0.1
LINE_RECEIVER_PORT = {self.line_port}
ENABLE_UDP_LISTENER = False
PICKLE_RECEIVER_INTERFACE = 127.0.0.1
PICKLE_RECEIVER_PORT = {free_port()}
CACHE_QUERY_INTERFACE = 127.0.0.1
CACHE_QUERY_PORT = {free_port()}
LOG_LISTENER_CONNECTIONS = False
LOG_UPDATES = False
LOG_CACHE_HITS = False
""")
        with open(os.path.join(conf, "storage-schemas.conf"), "w") as f:
            f.write("[all]\npattern = .*\nretentions = 1s:1h\n")
        with open(os.path.join(conf, "storage-aggregation.conf"), "w") as f:
            f.write("[all]\npattern = .*\nxFilesFactor = 0\naggregationMethod = sum\n")
        argv = [carbon_cache(), "--config=" + os.path.join(conf, "carbon.conf"),
                "--pidfile=" + os.path.join(storage, "carbon.pid"), "--debug", "--nodaemon", "start"]
        env = dict(os.environ, GRAPHITE_ROOT=self.folder, GRAPHITE_CONF_DIR=conf, GRAPHITE_STORAGE_DIR=storage)
        env.pop("PYTHONPATH", None)
        carbon = _Process("carbon-cache", argv, self.folder, env)
        self.processes.append(carbon)
        _wait_tcp(self.line_port, carbon, time.monotonic() + START_TIMEOUT)

    def _start_statsd(self) -> None:
        js = statsd_js()
        mgmt = free_port()
        config = {"graphiteHost": "127.0.0.1", "graphitePort": self.line_port, "address": "127.0.0.1",
                  "port": self.statsd_port, "mgmt_address": "127.0.0.1", "mgmt_port": mgmt,
                  "flushInterval": FLUSH_MS, "deleteIdleStats": True,
                  "backends": [os.path.join(os.path.dirname(js), "backends", "graphite")]}
        path = os.path.join(self.folder, "statsd-config.js")
        with open(path, "w") as f:
            f.write("(%s)\n" % json.dumps(config))
        statsd = _Process("statsd", ["node", js, path], os.path.dirname(js))
        self.processes.append(statsd)
        _wait_tcp(mgmt, statsd, time.monotonic() + START_TIMEOUT)

    def stop(self) -> None:
        for process in reversed(self.processes):
            process.stop()
        self.processes = []

    def logs(self) -> str:
        return "\n".join("== %s\n%s" % (p.name, p.tail()) for p in self.processes)

    # ------------------------------------------------------------------------------------ reading

    def path(self, metric: str) -> str:
        return os.path.join(self.whisper_dir, *metric.split(".")) + ".wsp"

    def points(self, metric: str) -> list:
        """The (timestamp, value) points of a metric (empty when carbon has not written it); `metric` is a
        dotted name, or what `tagged` returns."""
        path = metric[1:] if metric.startswith("\0") else self.path(metric)
        if not os.path.exists(path):
            return []
        try:
            now = int(time.time())
            (start, _end, step), values = self.whisper.fetch(path, now - 3500, now + 5)
        except Exception:  # being created by carbon right now
            return []
        return [(start + i * step, v) for i, v in enumerate(values) if v is not None]

    def tagged(self, name: str, tags: dict) -> str:
        """The whisper path of a DogStatsD-tagged metric: Etsy's statsd turns `name|#k:v,...` into the Graphite
        tagged series `name;k=v;...` (its key sanitizing applied), which carbon stores under _tagged/ by the
        sha256 of the series' normal form (tags sorted)."""
        import hashlib
        import re

        def sanitize(text: str) -> str:  # statsd's sanitizeKeyName
            return re.sub(r"[^a-zA-Z_\-0-9\.;=]", "", re.sub(r"\s+", "_", text).replace("/", "-"))

        series = sanitize(name) + "".join(sorted(";" + sanitize("%s=%s" % kv) for kv in tags.items()))
        digest = hashlib.sha256(series.encode("utf8")).hexdigest()
        return "\0" + os.path.join(self.whisper_dir, "_tagged", digest[:3], digest[3:6], digest + ".wsp")

    def total(self, metric: str) -> float:
        return sum(v for _, v in self.points(metric))

    def metrics(self, under: str) -> list:
        """Every metric stored below the dotted path `under`."""
        base = os.path.join(self.whisper_dir, *under.split("."))
        found = glob.glob(os.path.join(base, "**", "*.wsp"), recursive=True)
        return sorted(os.path.relpath(p, self.whisper_dir)[:-4].replace(os.sep, ".") for p in found)

    def wait_for(self, expected: dict, timeout: float = 40.0) -> dict:
        """Poll until every metric's total equals its expected value (or `timeout`); -> the totals seen."""
        deadline = time.monotonic() + timeout
        while True:
            seen = {name: self.total(name) for name in expected}
            if all(abs(seen[name] - want) < 1e-6 for name, want in expected.items()):
                return seen
            if time.monotonic() >= deadline:
                return seen
            time.sleep(0.5)


if __name__ == "__main__":  # manual check: start both, print where, wait for Ctrl-C
    import tempfile

    reason = missing()
    if reason:
        sys.exit(reason)
    with tempfile.TemporaryDirectory() as tmp:
        servers = StatsdGraphite(tmp).start()
        print("statsd on", servers.statsd_address, "whisper in", servers.whisper_dir)
        try:
            while True:
                time.sleep(1)
        except KeyboardInterrupt:
            pass
        finally:
            servers.stop()
