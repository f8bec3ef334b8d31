"""The exporter interface, and the table that maps AUTOINSTR_EXPORTER names to exporter classes.

An exporter receives lists of span records (dicts, as in DESIGN.md) on the flush thread:

    class MyExporter(Exporter):
        name = "mine"
        def __init__(self, config): ...
        def export(self, records): ...     # raise on failure: the pipeline retries with backoff, then drops
                                           # (an error with `retry_after` = seconds waits at least
                                           #  that long; with `retryable` = False it is dropped at once)
        def shutdown(self): ...            # flush and release; called once at exit, within the deadline
        def after_fork(self): ...          # the forked child gets the same object: reopen sockets/files
        def destination(self): ...         # for `autoinstr-run --info`
        def probe(self): ...               # (reachable, detail) for `autoinstr-run --info`

Exporters are only imported when configured, so an unused one costs nothing at start-up.
"""

from __future__ import annotations

from autoinstr import _log

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any, Dict, List, Tuple

    from autoinstr.config import Config

# name -> "module:Class"; later issues add collector, otlp and zipkin here
EXPORTERS: Dict[str, str] = {
    "local": "autoinstr.export.local:LocalStoreExporter",
    "jsonl": "autoinstr.export.jsonl:JsonlExporter",
    "console": "autoinstr.export.console:ConsoleExporter",
    "otlp": "autoinstr.export.otlp_exporter:OtlpExporter",
    "zipkin": "autoinstr.export.zipkin:ZipkinExporter",
    "collector": "autoinstr.export.collector:CollectorExporter",
}


class Exporter:
    name = "exporter"

    def export(self, records: List[Dict[str, Any]]) -> None:
        raise NotImplementedError

    def shutdown(self) -> None:
        pass

    def after_fork(self) -> None:
        pass

    def destination(self) -> str:
        return ""

    def probe(self) -> Tuple[bool, str]:
        return True, "ok"


def create_exporters(config: Config) -> List[Exporter]:
    """The configured exporters; one that cannot be created is left out with one warning."""
    import importlib

    out: List[Exporter] = []
    for name in config.exporters:
        if name == "none":
            continue
        target = EXPORTERS.get(name)
        if target is None:
            _log.warn("AUTOINSTR_EXPORTER names %r, which this version of autoinstr does not provide yet; "
                      "it is skipped" % name)
            continue
        module_name, _, cls_name = target.partition(":")
        try:
            cls = getattr(importlib.import_module(module_name), cls_name)
            out.append(cls(config))
        except Exception as exc:
            _log.warn("exporter %s could not start (%s: %s); it is disabled" % (name, type(exc).__name__, exc))
    return out
