"""Helpers shared by the unit tests (imported as a plain module: tests/ is on sys.path under pytest)."""

from __future__ import annotations

import threading

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
