"""Helpers shared by the unit tests (imported as a plain module: tests/ is on sys.path under pytest)."""

from __future__ import annotations

import http.server
import threading
import time

from autoinstr.export.base import Exporter


class MemoryExporter(Exporter):
    """Keeps every batch it is given; optionally fails its first `fail_times` calls (or always)."""

    def __init__(self, name: str = "memory", fail_times: int = 0, always_fail: bool = False) -> None:
        self.name = name
        self.batches: list = []
        self.calls = 0
        self.fail_times = fail_times
        self.always_fail = always_fail
        self.shutdown_calls = 0
        self.fork_calls = 0

    def export(self, records):
        self.calls += 1
        if self.always_fail or self.calls <= self.fail_times:
            raise ConnectionError("collector unreachable (test)")
        self.batches.append(list(records))

    @property
    def records(self) -> list:
        return [r for batch in self.batches for r in batch]

    def shutdown(self) -> None:
        self.shutdown_calls += 1

    def after_fork(self) -> None:
        self.fork_calls += 1


class BlockingExporter(MemoryExporter):
    """Blocks in export() until released (an exporter that hangs for ever, as far as a test cares)."""

    def __init__(self, name: str = "blocking") -> None:
        super().__init__(name)
        self.release = threading.Event()
        self.entered = threading.Event()

    def export(self, records):
        self.entered.set()
        self.release.wait(30)
        super().export(records)


class LoopbackReceiver:
    """A tiny HTTP server on a free 127.0.0.1 port recording each POST as (monotonic time, path, headers,
    raw body, status answered); `responses` scripts the first answers as (status, headers)."""

    def __init__(self, responses=()):
        self.requests: list = []
        self.responses = list(responses)
        self.lock = threading.Lock()
        owner = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_POST(self):
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                with owner.lock:
                    status, headers = owner.responses.pop(0) if owner.responses else (200, {})
                    owner.requests.append((time.monotonic(), self.path, {k.lower(): v for k, v in self.headers.items()},
                                           body, status))
                self.send_response(status)
                for k, v in headers.items():
                    self.send_header(k, v)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *args):
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.port = self.server.server_address[1]
        self.url = "http://127.0.0.1:%d" % self.port
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def close(self):
        self.server.shutdown()
        self.server.server_close()


def loopback_receivers():
    """Body of a `receiver` fixture: a factory of LoopbackReceivers, all closed afterwards."""
    made = []

    def make(responses=()):
        r = LoopbackReceiver(responses)
        made.append(r)
        return r
    yield make
    for r in made:
        r.close()
