"""`jsonl`: the span record, one JSON object per line, appended to AUTOINSTR_JSONL_PATH.

Several processes (gunicorn workers, forked children) may append to the same file: each batch is one
write under an exclusive flock on a file opened with O_APPEND, so lines never interleave.
"""

from __future__ import annotations

import fcntl
import os

from autoinstr.export.base import Exporter
from autoinstr.jsontext import compact_encoder

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any, Dict, List, Tuple

    from autoinstr.config import Config

_line = compact_encoder(allow_nan=False)


class JsonlExporter(Exporter):
    name = "jsonl"

    def __init__(self, config: Config) -> None:
        self.path = os.path.abspath(config.jsonl_path)
        self._fd = -1  # open only during a write; a child forked meanwhile must close its copy

    def export(self, records: List[Dict[str, Any]]) -> None:
        if not records:
            return
        data = ("\n".join([_line(r) for r in records]) + "\n").encode("utf-8", "backslashreplace")
        fd = self._fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            view = memoryview(data)
            while view:
                written = os.write(fd, view)
                view = view[written:]
        finally:
            self._fd = -1
            os.close(fd)  # also releases the lock

    def after_fork(self) -> None:
        # flock belongs to the open file, which the child shares: holding it open would keep the lock
        # (the parent's, mid-write) for as long as the child lives
        fd, self._fd = self._fd, -1
        if fd >= 0:
            try:
                os.close(fd)
            except OSError:
                pass

    def destination(self) -> str:
        return self.path

    def probe(self) -> Tuple[bool, str]:
        folder = os.path.dirname(self.path) or "."
        if os.access(folder, os.W_OK):
            return True, "writable"
        return False, "folder %s is not writable" % folder
