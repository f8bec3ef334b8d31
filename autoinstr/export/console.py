"""`console`: one readable line per span on stderr (stdout belongs to the app)."""

from __future__ import annotations

import json
import sys

from autoinstr.export.base import Exporter

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any, Dict, List

    from autoinstr.config import Config


class ConsoleExporter(Exporter):
    name = "console"

    def __init__(self, config: Config) -> None:
        pass

    def export(self, records: List[Dict[str, Any]]) -> None:
        lines = []
        for r in records:
            lines.append("[autoinstr] %s %s %s/%s %.3fms %s %s %s" % (
                r["service"], r["kind"], r["trace_id"], r["span_id"], r["duration_ns"] / 1e6, r["status"],
                r["name"], json.dumps(r["attributes"], ensure_ascii=False, default=str)))
        sys.stderr.write("\n".join(lines) + "\n")
        sys.stderr.flush()

    def destination(self) -> str:
        return "stderr"
