"""`autoinstr-run --info`: the effective configuration, the integrations and the exporters."""

from __future__ import annotations

import os
import sys

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Dict, List


def _service_of(command: List[str]) -> str:
    """The default service name the command's processes will get."""
    from autoinstr.config import default_service_name

    if not command:
        return "(the script or module each process runs)"
    if os.path.basename(command[0]).startswith("python"):
        return default_service_name(command)
    return os.path.basename(command[0])


def _without_credentials(value: object) -> object:
    """A URL's user:password and query (either may hold credentials) are never printed."""
    if not isinstance(value, str) or "://" not in value:
        return value
    from autoinstr.export._http_post import safe_url

    shown = safe_url(value)
    return shown if shown == value.rstrip("/") or shown == value else shown + "  (credentials/query hidden)"


def print_info(env: Dict[str, str], command: List[str]) -> int:
    from autoinstr import __version__, integrations
    from autoinstr.config import Config
    from autoinstr.export.base import EXPORTERS, create_exporters

    out = sys.stdout
    cfg = Config(env, emit_warnings=False)  # listed below instead
    if not (env.get("AUTOINSTR_SERVICE_NAME") or env.get("OTEL_SERVICE_NAME")):
        cfg.service_name = _service_of(command)
    out.write("autoinstr %s (Python %s, %s)\n" % (__version__, sys.version.split()[0], sys.executable))
    out.write("start-up hook: %s (%s)\n" % (env.get("PYTHONPATH", "").split(os.pathsep)[0],
                                            "present" if os.path.isfile(os.path.join(
                                                env.get("PYTHONPATH", "").split(os.pathsep)[0],
                                                "sitecustomize.py")) else "MISSING"))
    if command:
        out.write("command: %s\n" % " ".join(command))
    out.write("\nconfiguration:\n")
    for name, value in cfg.items():
        source = cfg.sources.get(name)
        note = "" if source is None else ("  (from %s)" % source if source != name else "  (set)")
        out.write("  %-33s %s%s\n" % (name, _without_credentials(value), note))
    for line in cfg.warnings:
        out.write("  warning: %s\n" % line)

    out.write("\nintegrations:\n")
    disabled = cfg.disabled_integrations
    for row in integrations.status():
        state = "disabled (AUTOINSTR_DISABLED_INTEGRATIONS)" if row["name"] in disabled else "enabled"
        out.write("  %-16s %-14s %-10s on import of %s\n" % (row["name"], row["version"], state,
                                                            ", ".join(row["triggers"])))

    out.write("\nexporters:\n")
    quiet = Config(env, emit_warnings=False)
    quiet.exporters = tuple(n for n in cfg.exporters if n in EXPORTERS)  # the others are listed below
    for exporter in create_exporters(quiet):
        try:
            ok, detail = exporter.probe()
        except Exception as exc:
            ok, detail = False, "%s: %s" % (type(exc).__name__, exc)
        out.write("  %-10s %s  [%s: %s]\n" % (exporter.name, exporter.destination(),
                                             "reachable" if ok else "NOT reachable", detail))
    missing = [n for n in cfg.exporters if n not in EXPORTERS and n != "none"]
    for name in missing:
        out.write("  %-10s not available in this version\n" % name)
    statsd = "%s:%d" % cfg.statsd if cfg.statsd else "disabled"
    out.write("  %-10s %s\n" % ("statsd", statsd))
    out.flush()
    return 0
