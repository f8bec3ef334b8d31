"""Destinations that misbehave on purpose, for the reliability tests: an HTTP endpoint standing in for the
collector or an OTLP receiver, a UDP one for statsd, and a local store on a small filesystem of its own.

FaultyHTTP answers according to its `mode`, which a test switches at any time:

    ok         decode the body with the collector's own decoders and keep the span records; 200
    refuse     nothing listens on the port (connection refused)
    blackhole  accept, read the request, never answer (until the mode changes: then the connection closes)
    slow       answer 200 after SLOW_S seconds (longer than the agent's 10 s export timeout)
    500        answer 500
    429        answer 429 with Retry-After: 1
    garbage    answer bytes that are not HTTP, then close

The records of `ok` come from autoinstr.collector.ingest, the same strict decoders `autoinstr collector` uses.

The HTTP and statsd destinations run in a process of their own (`python destinations.py http|statsd PORT
MODE`), driven by the test through HTTPDestination and StatsdDestination (one JSON line per command on the
child's stdin, one answer on its stdout): decoding the agent's batches in the test process would take the GIL
from the thread that times the app's requests, and inflate whichever request is in flight.
"""

from __future__ import annotations

import errno
import json
import os
import shutil
import socket
import subprocess
import sys
import threading
import time
from typing import Any, Dict, List, Optional

SLOW_S = 10.5
MODES = ("ok", "refuse", "blackhole", "slow", "500", "429", "garbage")
READ_TIMEOUT_S = 30.0
CONTROL_TIMEOUT_S = 30.0


class FaultyHTTP:
    def __init__(self, mode: str, port: int) -> None:
        self.lock = threading.Lock()
        self.changed = threading.Condition(self.lock)
        self.mode = "ok"
        self.generation = 0  # bumped at every mode change: held connections see it and close
        self.requests: Dict[str, int] = {}  # answers given, by mode
        self.records: List[dict] = []  # span records of requests answered 200
        self.rejected: List[str] = []  # bodies the decoders refused (would be an agent bug)
        self._listener: Optional[socket.socket] = None
        self._closed = False
        self.port = port
        self.set_mode(mode)

    # ----------------------------------------------------------------------------- control

    def set_mode(self, mode: str) -> None:
        assert mode in MODES, mode
        with self.changed:
            self.mode = mode
            self.generation += 1
            self.changed.notify_all()
        if mode == "refuse":
            self._stop_listening()
        else:
            self._listen()

    def close(self) -> None:
        self._closed = True
        self._stop_listening()
        with self.changed:
            self.generation += 1
            self.changed.notify_all()

    def span_ids(self) -> set:
        with self.lock:
            return {(r["trace_id"], r["span_id"]) for r in self.records}

    def paths(self) -> set:
        """url.path of the server spans received."""
        with self.lock:
            return {r["attributes"].get("url.path") for r in self.records if r["kind"] == "server"}

    # ---------------------------------------------------------------------------- serving

    def _listen(self) -> None:
        if self._listener is not None:
            return
        sock = socket.socket()
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(("127.0.0.1", self.port))
        sock.listen(64)
        self._listener = sock
        threading.Thread(target=self._accept_loop, args=(sock,), daemon=True).start()

    def _stop_listening(self) -> None:
        sock, self._listener = self._listener, None
        if sock is not None:
            try:
                sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            sock.close()

    def _accept_loop(self, sock: socket.socket) -> None:
        while True:
            try:
                conn, _ = sock.accept()
            except OSError:
                return
            threading.Thread(target=self._serve, args=(conn,), daemon=True).start()

    def _serve(self, conn: socket.socket) -> None:
        try:
            conn.settimeout(READ_TIMEOUT_S)
            request = _read_request(conn)
            if request is None:
                return
            path, headers, body = request
            with self.lock:
                mode, generation = self.mode, self.generation
            if mode in ("blackhole", "slow"):
                end = time.monotonic() + (SLOW_S if mode == "slow" else READ_TIMEOUT_S)
                with self.changed:
                    while self.generation == generation and time.monotonic() < end and not self._closed:
                        self.changed.wait(max(0.0, min(0.2, end - time.monotonic())))
                    changed = self.generation != generation
                if mode == "blackhole" or (changed and self.mode != "ok") or self._closed:
                    return  # the connection closes without an answer
            self._count(mode)
            if mode in ("ok", "slow"):
                self._accept(path, headers, body)
                conn.sendall(_response(200, b"{}"))
            elif mode == "500":
                conn.sendall(_response(500, b"internal error (test)"))
            elif mode == "429":
                conn.sendall(_response(429, b"slow down (test)", {"Retry-After": "1"}))
            elif mode == "garbage":
                conn.sendall(os.urandom(64) + b"\r\n\r\n" + os.urandom(256))
        except OSError:
            pass
        finally:
            conn.close()

    def _count(self, mode: str) -> None:
        with self.lock:
            self.requests[mode] = self.requests.get(mode, 0) + 1

    def _accept(self, path: str, headers: Dict[str, str], body: bytes) -> None:
        from autoinstr.collector import ingest

        try:
            raw = ingest.decompress(body, headers.get("content-encoding"), 64 << 20)
            if path.endswith("/v1/traces"):
                records = ingest.decode_otlp_body(raw, headers.get("content-type"))
            else:
                records = ingest.decode_spans_body(raw, headers.get("content-type"))
        except ingest.Rejected as exc:
            with self.lock:
                self.rejected.append(str(exc))
            return
        with self.lock:
            self.records.extend(records)


def _read_request(conn: socket.socket):
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = conn.recv(65536)
        if not chunk:
            return None
        data += chunk
        if len(data) > 1 << 20:
            return None
    head, _, body = data.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    path = lines[0].split(" ")[1] if len(lines[0].split(" ")) > 1 else "/"
    headers = {}
    for line in lines[1:]:
        key, _, value = line.partition(":")
        headers[key.strip().lower()] = value.strip()
    length = int(headers.get("content-length") or 0)
    while len(body) < length:
        chunk = conn.recv(min(65536, length - len(body)))
        if not chunk:
            return None
        body += chunk
    return path, headers, body


def _response(status: int, body: bytes, headers: Optional[Dict[str, str]] = None) -> bytes:
    head = "HTTP/1.1 %d X\r\nContent-Length: %d\r\nConnection: close\r\n" % (status, len(body))
    for key, value in (headers or {}).items():
        head += "%s: %s\r\n" % (key, value)
    return head.encode("latin-1") + b"\r\n" + body


class FaultyStatsd:
    """A UDP statsd stand-in: `ok` reads and keeps lines; `refuse` has no socket bound (the kernel answers
    port unreachable); `blackhole` binds and never reads (its buffer fills, the kernel drops); `garbage`
    answers each datagram with random bytes sent back to the agent's socket."""

    def __init__(self, mode: str, port: int) -> None:
        self.lock = threading.Lock()
        self.lines: List[str] = []
        self.mode = "refuse"
        self._sock: Optional[socket.socket] = None
        self.port = port
        self.set_mode(mode)

    def set_mode(self, mode: str) -> None:
        assert mode in ("ok", "refuse", "blackhole", "garbage"), mode
        self.mode = mode
        if mode == "refuse":
            self._unbind()
            return
        if self._sock is None:
            sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
            sock.bind(("127.0.0.1", self.port))
            sock.settimeout(0.2)
            self._sock = sock
            threading.Thread(target=self._loop, args=(sock,), daemon=True).start()

    def _unbind(self) -> None:
        sock, self._sock = self._sock, None
        if sock is not None:
            sock.close()

    def close(self) -> None:
        self._unbind()

    def _loop(self, sock: socket.socket) -> None:
        while self._sock is sock:
            if self.mode == "blackhole":
                time.sleep(0.05)
                continue
            try:
                data, peer = sock.recvfrom(65536)
            except socket.timeout:
                continue
            except OSError:
                return
            if self.mode == "garbage":
                try:
                    sock.sendto(os.urandom(512), peer)
                except OSError:
                    pass
                continue
            with self.lock:
                self.lines.extend(data.decode("utf-8", "replace").splitlines())

    def counter_total(self, prefix: str) -> int:
        """Sum of the counter lines whose name starts with `prefix` (sample rates applied)."""
        total = 0.0
        with self.lock:
            lines = list(self.lines)
        for line in lines:
            name, _, rest = line.partition(":")
            if not name.startswith(prefix) or "|c" not in rest:
                continue
            fields = rest.split("|")
            rate = next((float(f[1:]) for f in fields[2:] if f.startswith("@")), 1.0)
            total += float(fields[0]) / rate
        return int(round(total))


class SmallDisk:
    """A tmpfs of `size` mounted on `path` (root only): full on demand (a filler file), or read-only."""

    def __init__(self, path: str, size: str = "4m") -> None:
        self.path = path
        os.makedirs(path, exist_ok=True)
        subprocess.run(["mount", "-t", "tmpfs", "-o", "size=%s,mode=0755" % size, "tmpfs", path], check=True,
                       capture_output=True, timeout=10)
        self.filler = os.path.join(path, "filler")

    @staticmethod
    def unavailable() -> str:
        """Why a tmpfs cannot be mounted here, or ""."""
        if os.geteuid() != 0:
            return "mounting a small tmpfs needs root"
        import tempfile

        folder = tempfile.mkdtemp(prefix="autoinstr-mount-probe-")
        try:
            proc = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=64k", "tmpfs", folder], capture_output=True,
                                  text=True, timeout=10)
            if proc.returncode != 0:
                return "cannot mount a tmpfs here: %s" % proc.stderr.strip()
            subprocess.run(["umount", folder], capture_output=True, timeout=10)
            return ""
        except (OSError, subprocess.SubprocessError) as exc:
            return "cannot mount a tmpfs here: %s" % exc
        finally:
            os.rmdir(folder)

    def fill(self) -> None:
        with open(self.filler, "ab") as f:
            block = b"\0" * 65536
            try:
                while True:
                    f.write(block)
                    f.flush()
            except OSError:
                pass
        # the last partial blocks too: the disk is truly full
        with open(self.filler, "ab", buffering=0) as f:
            for size in (4096, 512, 1):
                try:
                    while True:
                        f.write(b"\0" * size)
                except OSError:
                    continue

    def unfill(self) -> None:
        if os.path.exists(self.filler):
            os.remove(self.filler)

    def remount(self, readonly: bool) -> None:
        subprocess.run(["mount", "-o", "remount,%s" % ("ro" if readonly else "rw"), self.path], check=True,
                       capture_output=True, timeout=10)

    def unmount(self) -> None:
        subprocess.run(["umount", "-l", self.path], capture_output=True, timeout=10)


class Ext4Disk:
    """An ext4 filesystem in an image file, loop-mounted on `path` with errors=remount-ro (root only), that
    can turn read-only under the files open on it: `break_now()` reports a filesystem error through ext4's
    own sysfs knob (trigger_fs_error), and the kernel remounts it read-only at once, open writers included
    (`mount -o remount,ro` refuses while a file is open for writing: tmpfs cannot do this). `repair()` does
    what an administrator would: detach the broken mount (lazily: the agent still holds its files), check a
    copy of the image with e2fsck and mount that in its place."""

    def __init__(self, path: str, image_dir: str, size_mb: int = 16) -> None:
        self.path = path
        self.image = os.path.join(image_dir, "disk.img")
        self.repaired = os.path.join(image_dir, "disk-repaired.img")
        os.makedirs(path, exist_ok=True)
        with open(self.image, "wb") as f:
            f.truncate(size_mb << 20)
        _run(["mkfs.ext4", "-q", "-F", self.image])
        _run(["mount", "-o", "loop,errors=remount-ro", self.image, path])
        self.mounts = 1

    @staticmethod
    def unavailable() -> str:
        """Why such a filesystem cannot be made here, or ""."""
        if os.geteuid() != 0:
            return "mounting a loop device needs root"
        for tool in ("mkfs.ext4", "e2fsck", "losetup"):
            if shutil.which(tool) is None:
                return "%s is not installed" % tool
        if not os.path.isdir("/sys/fs/ext4"):
            return "no ext4 in this kernel (/sys/fs/ext4)"
        import tempfile

        folder = tempfile.mkdtemp(prefix="autoinstr-ext4-probe-")
        try:
            disk = Ext4Disk(os.path.join(folder, "mnt"), folder, size_mb=2)
            try:
                if not os.path.exists(disk.knob()):
                    return "ext4 has no trigger_fs_error knob here"
            finally:
                disk.unmount()
            return ""
        except (OSError, subprocess.SubprocessError) as exc:
            return "cannot loop-mount an ext4 image here: %s" % exc
        finally:
            shutil.rmtree(folder, ignore_errors=True)

    def device(self) -> str:
        source = _run(["findmnt", "-n", "-o", "SOURCE", "--target", self.path]).strip().splitlines()[-1]
        return os.path.basename(source)

    def knob(self) -> str:
        return "/sys/fs/ext4/%s/trigger_fs_error" % self.device()

    def options(self) -> str:
        return _run(["findmnt", "-n", "-o", "OPTIONS", "--target", self.path]).strip().splitlines()[-1]

    def break_now(self) -> None:
        with open(self.knob(), "w") as f:
            f.write("autoinstr reliability test: the store's disk fails\n")
        try:  # (findmnt says "ro", or "rw,...,emergency_ro" on newer kernels)
            with open(os.path.join(self.path, "probe"), "w"):
                pass
        except OSError as exc:
            assert exc.errno == errno.EROFS, exc
        else:
            raise AssertionError("the filesystem did not turn read-only: %s" % self.options())

    def repair(self) -> None:
        _run(["umount", "-l", self.path])
        shutil.copyfile(self.image, self.repaired)
        proc = subprocess.run(["e2fsck", "-f", "-y", self.repaired], capture_output=True, text=True, timeout=60)
        assert proc.returncode in (0, 1), proc.stdout + proc.stderr  # 1: errors corrected
        _run(["mount", "-o", "loop,errors=remount-ro", self.repaired, self.path])
        self.mounts += 1
        assert "rw" in self.options().split(","), self.options()

    def unmount(self) -> None:
        for _ in range(self.mounts):  # loop devices of `-o loop` mounts are freed with their last user
            subprocess.run(["umount", "-l", self.path], capture_output=True, timeout=10)


def _run(argv: List[str]) -> str:
    proc = subprocess.run(argv, capture_output=True, text=True, timeout=60)
    if proc.returncode != 0:
        raise OSError("%s failed (%d): %s" % (" ".join(argv), proc.returncode, proc.stderr.strip()))
    return proc.stdout


# ----------------------------------------------------------------- destinations in a process of their own

class _Remote:
    """A destination served by a child process (see the module's docstring); calls are synchronous."""

    kind = ""

    def __init__(self, mode: str, port: int) -> None:
        self.port = port
        env = {k: v for k, v in os.environ.items() if not k.startswith(("AUTOINSTR_", "OTEL_"))}
        self.proc = subprocess.Popen([sys.executable, os.path.abspath(__file__), self.kind, str(port), mode],
                                     stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, env=env)
        self._lock = threading.Lock()
        self._call("ping")

    def _call(self, op: str, **args: Any) -> Any:
        with self._lock:
            assert self.proc.stdin is not None and self.proc.stdout is not None
            if self.proc.poll() is not None:
                raise AssertionError("the %s destination process exited (%s)" % (self.kind, self.proc.returncode))
            self.proc.stdin.write(json.dumps(dict(args, op=op)) + "\n")
            self.proc.stdin.flush()
            answer: Dict[str, Any] = {}
            reader = threading.Thread(target=lambda: answer.update(line=self.proc.stdout.readline()), daemon=True)
            reader.start()
            reader.join(CONTROL_TIMEOUT_S)
            line = answer.get("line")
            if not line:
                raise AssertionError("the %s destination did not answer %r" % (self.kind, op))
            reply = json.loads(line)
        if "error" in reply:
            raise AssertionError("the %s destination failed at %r: %s" % (self.kind, op, reply["error"]))
        return reply["result"]

    def set_mode(self, mode: str) -> None:
        self._call("mode", mode=mode)

    def close(self) -> None:
        if self.proc.poll() is None:
            try:
                self._call("close")
            except (AssertionError, OSError):
                pass
        try:
            if self.proc.stdin is not None:
                self.proc.stdin.close()
            self.proc.wait(10)
        except (OSError, subprocess.TimeoutExpired):
            self.proc.kill()
            self.proc.wait()
        if self.proc.stdout is not None:
            self.proc.stdout.close()


class HTTPDestination(_Remote):
    """FaultyHTTP in a child process, on a port this test process will not hand out again."""

    kind = "http"

    def __init__(self, mode: str = "ok") -> None:
        from fleet import free_port

        super().__init__(mode, free_port())
        self.url = "http://127.0.0.1:%d" % self.port

    def span_ids(self) -> set:
        return {tuple(pair) for pair in self._call("span_ids")}

    def paths(self) -> set:
        """url.path of the server spans received."""
        return set(self._call("paths"))

    @property
    def requests(self) -> Dict[str, int]:
        """Answers given, by mode."""
        return self._call("requests")  # type: ignore[no-any-return]

    @property
    def rejected(self) -> List[str]:
        """Bodies the decoders refused (would be an agent bug)."""
        return self._call("rejected")  # type: ignore[no-any-return]


class StatsdDestination(_Remote):
    """FaultyStatsd in a child process."""

    kind = "statsd"

    def __init__(self, mode: str = "ok") -> None:
        probe = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
        probe.close()
        super().__init__(mode, port)

    def counter_total(self, prefix: str) -> int:
        return self._call("counter_total", prefix=prefix)  # type: ignore[no-any-return]

    def clear(self) -> None:
        self._call("clear")

    @property
    def lines(self) -> List[str]:
        return self._call("lines")  # type: ignore[no-any-return]


def _serve_control(kind: str, port: int, mode: str) -> None:
    """The child's side: run the destination, answer the test's commands until stdin closes."""
    if kind == "http":
        http = FaultyHTTP(mode, port)

        def span_ids() -> list:
            return sorted(http.span_ids())

        def paths() -> list:
            return sorted(p for p in http.paths() if p is not None)

        def requests() -> dict:
            with http.lock:
                return dict(http.requests)

        def rejected() -> list:
            with http.lock:
                return list(http.rejected)

        ops: Dict[str, Any] = {"mode": lambda mode: http.set_mode(mode), "close": http.close, "paths": paths,
                               "span_ids": span_ids, "requests": requests, "rejected": rejected}
    else:
        statsd = FaultyStatsd(mode, port)

        def clear() -> None:
            with statsd.lock:
                statsd.lines.clear()

        def lines() -> list:
            with statsd.lock:
                return list(statsd.lines)

        ops = {"mode": lambda mode: statsd.set_mode(mode), "close": statsd.close, "clear": clear, "lines": lines,
               "counter_total": lambda prefix: statsd.counter_total(prefix)}
    ops["ping"] = lambda: "pong"
    for line in sys.stdin:
        command = json.loads(line)
        op = command.pop("op")
        try:
            reply = {"result": ops[op](**command)}
        except Exception as exc:
            reply = {"error": "%s: %s" % (type(exc).__name__, exc)}
        sys.stdout.write(json.dumps(reply) + "\n")
        sys.stdout.flush()


if __name__ == "__main__":
    _serve_control(sys.argv[1], int(sys.argv[2]), sys.argv[3])
