"""Shared by the tests that run real servers: a free loopback port, and a server process (under the
launcher or not) whose output is drained in the background, with bounded waits for it to listen and stop."""

from __future__ import annotations

import os
import random
import signal
import socket
import threading
import time

_ports_given: set = set()


def _ephemeral_low() -> int:
    try:
        with open("/proc/sys/net/ipv4/ip_local_port_range") as f:
            return int(f.read().split()[0])
    except (OSError, ValueError, IndexError):
        return 32768


def free_port(kind: int = socket.SOCK_STREAM) -> int:
    """A free port on 127.0.0.1 (TCP, or `kind`), never one handed out before in this test process: servers
    started one after the other bind theirs later, and the kernel may offer a just-released port again (two
    servers on one port: the second dies and its readiness probe reaches the first). Drawn below the kernel's
    ephemeral range: a port the kernel hands out (bind to 0, and the local end of every outgoing connection
    of every process here) could be taken by a client between this probe and the server's bind (a uWSGI once
    failed to start so: "Address already in use")."""
    low = _ephemeral_low()
    if low > 11000:
        for _ in range(200):
            port = random.randrange(10000, low)
            if port in _ports_given:
                continue
            try:
                with socket.socket(socket.AF_INET, kind) as s:
                    s.bind(("127.0.0.1", port))
            except OSError:
                continue
            _ports_given.add(port)
            return port
    for _ in range(100):
        with socket.socket(socket.AF_INET, kind) as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        if port not in _ports_given:
            break
    _ports_given.add(port)
    return port


class Server:
    """One server process. `member` says what to run: `.name`, `.agent` (under autoinstr-run or not) and
    `.argv(port, bindir)`; spans go to `<name>.jsonl` in the sandbox, flushed every 0.2 s."""

    def __init__(self, sandbox, member, env: dict = None) -> None:
        self.member = member
        self.port = free_port()
        self.jsonl = os.path.join(sandbox.dir, "%s.jsonl" % member.name)
        extra = {"AUTOINSTR_EXPORTER": "jsonl", "AUTOINSTR_JSONL_PATH": self.jsonl,
                 "AUTOINSTR_FLUSH_INTERVAL": "0.2", "AUTOINSTR_SERVICE_NAME": member.name}
        extra.update(env or {})
        self.proc = sandbox.popen(member.argv(self.port, os.path.dirname(sandbox.PYTHON)),
                                  env=sandbox.env(**extra), launcher=member.agent)
        self.output: dict = {"stdout": [], "stderr": []}
        self._readers = [threading.Thread(target=self._drain, args=(stream, self.output[name]), daemon=True)
                         for name, stream in (("stdout", self.proc.stdout), ("stderr", self.proc.stderr))]
        for reader in self._readers:
            reader.start()

    @staticmethod
    def _drain(stream, sink: list) -> None:
        for line in stream:  # keeps the pipe from filling up (wsgiref and werkzeug log every request)
            sink.append(line)

    def wait_ready(self, deadline: float) -> None:
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise AssertionError("%s exited with %s before listening\n%s"
                                     % (self.member.name, self.proc.returncode, self.tail()))
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.5):
                    return
            except OSError:
                time.sleep(0.05)
        raise AssertionError("%s did not listen on %d in time\n%s" % (self.member.name, self.port, self.tail()))

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)

    def reap(self, deadline: float) -> None:
        try:
            self.proc.wait(max(0.1, deadline - time.monotonic()))
        except Exception:
            self.proc.kill()
            self.proc.wait()
        for reader in self._readers:
            reader.join(5)

    def tail(self, lines: int = 30) -> str:
        return "".join(self.output["stderr"][-lines:] + self.output["stdout"][-lines:])


def drive_fleet(servers: list, drive, start_timeout: float, stop_timeout: float) -> dict:
    """Wait for every server to listen, run drive(server) on all of them in parallel, then stop them all
    with SIGTERM (the agent's exit flush writes what is queued) and reap them; -> {member name: drive's result}.
    Servers are stopped even when waiting or driving fails."""
    import concurrent.futures

    try:
        deadline = time.monotonic() + start_timeout
        for server in servers:
            server.wait_ready(deadline)
        with concurrent.futures.ThreadPoolExecutor(max(1, len(servers))) as pool:
            return dict(zip([s.member.name for s in servers], pool.map(drive, servers)))
    finally:
        for server in servers:
            server.stop()
        deadline = time.monotonic() + stop_timeout
        for server in servers:
            server.reap(deadline)


def get_ok(port: int, path: str, timeout: float = 10.0) -> str:
    """GET path from 127.0.0.1:port; the body as text, asserting a 200."""
    import http.client

    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        conn.request("GET", path)
        resp = conn.getresponse()
        body = resp.read().decode()
        assert resp.status == 200, (resp.status, body)
        return body
    finally:
        conn.close()
