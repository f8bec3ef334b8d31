"""Loopback HTTP servers for the suite: the trace sink every agent exports to, and the stub the app calls.

The sink accepts what a trace agent or collector would (Datadog agent API /v0.4|/v0.5/traces, OTLP/HTTP
/v1/traces, autoinstr's collector /v1/spans), answers 200 and counts the spans in each body, so the suite
checks that every agent really exported. Bodies are only kept while a measured child runs and decoded at
take(), so counting competes with nothing measured. With `delay_s` the sink answers late: an exporter
that cannot keep up. Standard library only.
"""

from __future__ import annotations

import gzip
import http.server
import os
import selectors
import socket
import threading
import time
import zlib
from collections import Counter
from dataclasses import dataclass, field
from typing import Any, Callable, Dict, Iterator, List, Optional, Tuple

# ---------------------------------------------------------------------------------------------- msgpack

_FIXED_WIDTH = {0xC0: 0, 0xC2: 0, 0xC3: 0, 0xCA: 4, 0xCB: 8, 0xCC: 1, 0xCD: 2, 0xCE: 4, 0xCF: 8, 0xD0: 1,
                0xD1: 2, 0xD2: 4, 0xD3: 8, 0xD4: 2, 0xD5: 3, 0xD6: 5, 0xD7: 9, 0xD8: 17}
_LENGTH_WIDTH = {0xC4: 1, 0xC5: 2, 0xC6: 4, 0xD9: 1, 0xDA: 2, 0xDB: 4}  # bin and str: length, then bytes
_EXT_WIDTH = {0xC7: 1, 0xC8: 2, 0xC9: 4}  # length, type byte, bytes
_ARRAY_WIDTH = {0xDC: 2, 0xDD: 4}
_MAP_WIDTH = {0xDE: 2, 0xDF: 4}


# ddtrace with everything but tracing switched off (both benchmarks compare tracers, not products)
DD_TRACING_ONLY = {name: "false" for name in (
    "DD_PROFILING_ENABLED", "DD_APPSEC_ENABLED", "DD_IAST_ENABLED", "DD_APPSEC_SCA_ENABLED",
    "DD_REMOTE_CONFIGURATION_ENABLED", "DD_INSTRUMENTATION_TELEMETRY_ENABLED", "DD_RUNTIME_METRICS_ENABLED",
    "DD_DATA_STREAMS_ENABLED", "DD_CRASHTRACKING_ENABLED", "DD_DYNAMIC_INSTRUMENTATION_ENABLED",
    "DD_EXCEPTION_REPLAY_ENABLED", "DD_SYMBOL_DATABASE_UPLOAD_ENABLED", "DD_LLMOBS_ENABLED",
    "DD_TRACE_STATS_COMPUTATION_ENABLED", "DD_TRACE_HEALTH_METRICS_ENABLED", "DD_TRACE_STARTUP_LOGS",
    "DD_TRACE_DEBUG")}


def msgpack_header(b: bytes, i: int) -> Tuple[str, int, int]:
    """The item at i: ("array", n items, next) / ("map", n pairs, next) / ("raw", payload bytes, next)."""
    t = b[i]
    i += 1
    if t < 0x80 or t >= 0xE0:
        return "raw", 0, i
    if t < 0x90:
        return "map", t & 0x0F, i
    if t < 0xA0:
        return "array", t & 0x0F, i
    if t < 0xC0:
        return "raw", t & 0x1F, i
    if t in _FIXED_WIDTH:
        return "raw", _FIXED_WIDTH[t], i
    for table, kind in ((_LENGTH_WIDTH, "raw"), (_EXT_WIDTH, "ext"), (_ARRAY_WIDTH, "array"), (_MAP_WIDTH, "map")):
        if t in table:
            w = table[t]
            n = int.from_bytes(b[i:i + w], "big")
            return ("raw", n + 1, i + w) if kind == "ext" else (kind, n, i + w)
    raise ValueError("not msgpack (byte 0x%02x at %d)" % (t, i - 1))


def msgpack_skip(b: bytes, i: int) -> int:
    items = 1
    while items:
        kind, n, i = msgpack_header(b, i)
        items -= 1
        if kind == "raw":
            i += n
        else:
            items += n if kind == "array" else 2 * n
    return i


def count_datadog(body: bytes, path: str) -> int:
    """v0.4: [[span...], ...]; v0.5: [string table, [[span...], ...]]."""
    i = 0
    if "/v0.5/" in path:
        _, _, i = msgpack_header(body, i)
        i = msgpack_skip(body, i)
    kind, traces, i = msgpack_header(body, i)
    if kind != "array":
        raise ValueError("trace list is not an array")
    spans = 0
    for _ in range(traces):
        _, n, i = msgpack_header(body, i)
        spans += n
        for _ in range(n):
            i = msgpack_skip(body, i)
    return spans


def count_autoinstr(body: bytes) -> int:
    """autoinstr's collector protocol: one msgpack array of span records."""
    kind, n, _ = msgpack_header(body, 0)
    if kind != "array":
        raise ValueError("span batch is not an array")
    return n


# --------------------------------------------------------------------------------------------- protobuf

def _varint(b: bytes, i: int) -> Tuple[int, int]:
    value = shift = 0
    while True:
        byte = b[i]
        i += 1
        value |= (byte & 0x7F) << shift
        if byte < 0x80:
            return value, i
        shift += 7


def _submessages(b: bytes, start: int, end: int) -> Iterator[Tuple[int, int, int]]:
    """(field number, start, end) of each length-delimited field between start and end."""
    i = start
    while i < end:
        key, i = _varint(b, i)
        wire = key & 7
        if wire == 0:
            _, i = _varint(b, i)
        elif wire == 1:
            i += 8
        elif wire == 5:
            i += 4
        elif wire == 2:
            n, i = _varint(b, i)
            yield key >> 3, i, i + n
            i += n
        else:
            raise ValueError("protobuf wire type %d" % wire)


def count_otlp(body: bytes) -> int:
    """ExportTraceServiceRequest: resource_spans (1) > scope_spans (2) > spans (2)."""
    spans = 0
    for f1, s1, e1 in _submessages(body, 0, len(body)):
        if f1 == 1:
            for f2, s2, e2 in _submessages(body, s1, e1):
                if f2 == 2:
                    spans += sum(1 for f3, _, _ in _submessages(body, s2, e2) if f3 == 2)
    return spans


# ------------------------------------------------------------------------------------------------ servers

@dataclass
class Received:
    requests: Counter = field(default_factory=Counter)  # "POST /v1/traces" -> count
    spans: int = 0
    spans_by_path: Counter = field(default_factory=Counter)  # "/v1/traces" -> spans its bodies held
    bytes: int = 0
    errors: List[str] = field(default_factory=list)

    def at(self, paths: Tuple[str, ...]) -> Received:
        """What arrived at these paths only (one sink for several agents, each posting to its own)."""
        return Received(requests=Counter({k: n for k, n in self.requests.items() if k.split(" ")[-1] in paths}),
                        spans=sum(n for path, n in self.spans_by_path.items() if path in paths),
                        spans_by_path=Counter({k: n for k, n in self.spans_by_path.items() if k in paths}),
                        errors=self.errors)

    def describe(self) -> str:
        paths = ", ".join("%s x%d" % (k, v) for k, v in sorted(self.requests.items()))
        return "%d spans in %d requests (%s)%s" % (self.spans, sum(self.requests.values()), paths or "none",
                                                   "; decode errors: %s" % self.errors[:2] if self.errors else "")


class _Server:
    def __init__(self, name: str, handler: Any) -> None:
        self._server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
        self._server.daemon_threads = True
        self.port = self._server.server_address[1]
        self.url = "http://127.0.0.1:%d" % self.port
        self._thread = threading.Thread(target=self._server.serve_forever, name=name, daemon=True)
        self._thread.start()

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()


def _read_body(handler: http.server.BaseHTTPRequestHandler) -> bytes:
    if "chunked" in (handler.headers.get("Transfer-Encoding") or "").lower():
        parts = []
        for _ in range(1_000_000):  # bounded: a chunked body ends with a zero-size chunk
            size = int(handler.rfile.readline().split(b";")[0].strip() or b"0", 16)
            if size == 0:
                for _ in range(100):
                    if handler.rfile.readline() in (b"\r\n", b"\n", b""):
                        break
                break
            parts.append(handler.rfile.read(size))
            handler.rfile.readline()
        return b"".join(parts)
    return handler.rfile.read(int(handler.headers.get("Content-Length") or 0))


class Sink(_Server):
    def __init__(self, name: str = "sink", delay_s: float = 0.0) -> None:
        self.delay_s = delay_s
        self._lock = threading.Lock()
        self._requests: Counter = Counter()
        self._bodies: List[Tuple[str, str, bytes]] = []
        sink = self

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"  # keep-alive, as the agents' HTTP clients expect
            disable_nagle_algorithm = True  # headers and body leave at once: no 40 ms delayed-ACK stall

            def _answer(self) -> None:
                body = _read_body(self)
                path = self.path.split("?")[0]
                with sink._lock:
                    sink._requests["%s %s" % (self.command, path)] += 1
                    if body:
                        sink._bodies.append((path, self.headers.get("Content-Encoding") or "", body))
                if sink.delay_s and body:
                    time.sleep(sink.delay_s)
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", "2")
                self.end_headers()
                self.wfile.write(b"{}")

            do_GET = do_POST = do_PUT = _answer

            def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 (the base class's name)
                pass

        super().__init__(name, Handler)

    def take(self) -> Received:
        """What arrived since the last take, decoded now."""
        with self._lock:
            requests, bodies = self._requests, self._bodies
            self._requests, self._bodies = Counter(), []
        out = Received(requests=requests)
        for path, encoding, body in bodies:
            out.bytes += len(body)
            try:
                if encoding == "gzip":
                    body = gzip.decompress(body)
                elif encoding == "deflate":
                    body = zlib.decompress(body)
                spans = 0
                if path.endswith("/traces") and "/v0." in path:
                    spans = count_datadog(body, path)
                elif path.endswith("/v1/traces"):
                    spans = count_otlp(body)
                elif path.endswith("/v1/spans"):
                    spans = count_autoinstr(body)
                out.spans += spans
                out.spans_by_path[path] += spans
            except (ValueError, IndexError, OSError, EOFError, zlib.error) as exc:
                out.errors.append("%s: %s" % (path, exc))
        return out


class Stub:
    """The remote service /outgoing calls: answers every request with the same small JSON body on a kept-alive
    connection. One thread and a selector, no HTTP parsing beyond finding each request's end: the remote side's
    own work is not what the suite measures. With http.server (a thread, and every header line parsed in Python)
    each answer took about 150 us more, and each header an agent injects cost the stub microseconds that were
    counted as that agent's cost on /outgoing; the slower answers also varied more."""

    ANSWER = (b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 14\r\n\r\n"
              b'{"stub": true}')
    MAX_HEAD = 65536  # a connection whose request head grows past this is closed (no body is expected)

    def __init__(self) -> None:
        self.hits: Dict[str, int] = Counter()
        self._listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self._listener.bind(("127.0.0.1", 0))
        self._listener.listen(128)
        self._listener.setblocking(False)
        self.port = self._listener.getsockname()[1]
        self.url = "http://127.0.0.1:%d" % self.port
        self._selector = selectors.DefaultSelector()
        self._selector.register(self._listener, selectors.EVENT_READ, None)
        self._closing = False
        self._thread = threading.Thread(target=self._serve, name="stub", daemon=True)
        self._thread.start()

    def _serve(self) -> None:
        pending: Dict[socket.socket, bytes] = {}
        while not self._closing:
            for key, _ in self._selector.select(timeout=0.2):
                if key.data is None:
                    self._accept(pending)
                    continue
                conn: socket.socket = key.fileobj  # type: ignore[assignment]
                try:
                    data = conn.recv(65536)
                except BlockingIOError:
                    continue
                except OSError:
                    data = b""
                head = pending.get(conn, b"") + data
                while data and b"\r\n\r\n" in head:  # a request (GET, no body) ends at its blank line
                    _, _, head = head.partition(b"\r\n\r\n")
                    self.hits["GET"] += 1
                    try:
                        conn.sendall(self.ANSWER)
                    except OSError:
                        data = b""
                if not data or len(head) > self.MAX_HEAD:
                    self._drop(conn, pending)
                else:
                    pending[conn] = head
        for conn in list(pending):
            self._drop(conn, pending)

    def _accept(self, pending: Dict[socket.socket, bytes]) -> None:
        try:
            conn, _ = self._listener.accept()
        except OSError:
            return
        conn.setblocking(False)
        conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)  # the answer leaves at once
        self._selector.register(conn, selectors.EVENT_READ, b"")
        pending[conn] = b""

    def _drop(self, conn: socket.socket, pending: Dict[socket.socket, bytes]) -> None:
        pending.pop(conn, None)
        try:
            self._selector.unregister(conn)
        except (KeyError, ValueError):
            pass
        conn.close()

    def close(self) -> None:
        self._closing = True
        self._thread.join(5)
        self._selector.close()
        self._listener.close()


def pinned_to(cpu: int) -> Callable[[], None]:
    """A preexec_fn: the child (and every thread it starts) runs on that CPU only."""
    def pin() -> None:
        os.sched_setaffinity(0, {cpu})

    return pin


class StubProcess:
    """The Stub in a process of its own: the remote service /outgoing calls shares no GIL with the sink, which is
    receiving the measured agent's exports meanwhile (in one process, each batch the sink read would hold the
    stub's answers back, and so be counted in the exporting agents' /outgoing). Ends when closed, or with us."""

    def __init__(self, cpu: Optional[int] = None) -> None:
        import subprocess
        import sys

        self._proc = subprocess.Popen([sys.executable, __file__, "stub"], stdin=subprocess.PIPE,
                                      stdout=subprocess.PIPE, text=True,
                                      preexec_fn=None if cpu is None else pinned_to(cpu))  # (its server thread too)
        line = self._proc.stdout.readline().strip() if self._proc.stdout else ""
        if not line.startswith("http://"):
            self.close()
            raise RuntimeError("the stub process did not start (said %r)" % line)
        self.url = line

    def close(self) -> None:
        if self._proc.poll() is None:
            if self._proc.stdin:
                self._proc.stdin.close()  # the stub exits at the end of its input
            try:
                self._proc.wait(10)
            except Exception:
                self._proc.kill()
                self._proc.wait(10)


if __name__ == "__main__":
    import sys

    if sys.argv[1:] == ["stub"]:
        stub = Stub()
        print(stub.url, flush=True)
        sys.stdin.read()
        stub.close()
