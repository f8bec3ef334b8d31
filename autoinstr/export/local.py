"""`local` (the default): spans into the embedded SQLite store at AUTOINSTR_STORE.

sqlite3 is imported on the first export, on the flush thread: an app that never finishes a span never
loads it, and `import autoinstr` stays free of it.
"""

from __future__ import annotations

import os

from autoinstr.export.base import Exporter

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any, List, Optional, Tuple

    from autoinstr.config import Config
    from autoinstr.store import Store

_inherited: list = []  # connections opened by the parent before fork: never closed in the child


class LocalStoreExporter(Exporter):
    name = "local"

    def __init__(self, config: Config) -> None:
        import autoinstr.store  # noqa: F401  (imported here, under the pipeline's set-up lock: see Pipeline)

        self.path = os.path.abspath(config.store_path)
        self.retention_hours = config.store_retention_hours
        self.max_mb = config.store_max_mb
        self.store: Optional[Store] = None

    takes_fields = True  # the pipeline may hand over span_fields() tuples rather than records

    def export(self, records: List[Any]) -> None:
        if self.store is None:
            from autoinstr.store import Store

            self.store = Store(self.path)
        try:
            if records and records[0].__class__ is tuple:
                self.store.insert_fields(records)
            else:
                self.store.insert(records)
            self.store.apply_retention(self.retention_hours, self.max_mb)
        except Exception as exc:
            from autoinstr.store import is_busy

            if not is_busy(exc):
                # A failing disk (I/O error; a filesystem the kernel turned read-only under the open file)
                # fails every write through this connection for good, even once the disk is repaired and
                # mounted again: the retry opens the store afresh, at its path. Busy: the connection is fine.
                self.store.close()
                self.store = None
            raise

    def shutdown(self) -> None:
        if self.store is not None:
            self.store.close()
            self.store = None

    def after_fork(self) -> None:
        # SQLite forbids using a connection across fork, and closing it in the child could disturb the
        # parent's WAL: keep it referenced, unused, and open a new one on the next export.
        if self.store is not None:
            _inherited.append(self.store)
            self.store = None

    def destination(self) -> str:
        return self.path

    def probe(self) -> Tuple[bool, str]:
        folder = os.path.dirname(self.path)
        while folder and not os.path.isdir(folder):
            folder = os.path.dirname(folder)
        if os.path.exists(self.path):
            return (os.access(self.path, os.W_OK), "exists" if os.access(self.path, os.W_OK) else "not writable")
        return (os.access(folder or ".", os.W_OK), "will be created" if os.access(folder or ".", os.W_OK)
                else "folder %s is not writable" % folder)
