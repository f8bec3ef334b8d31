"""Settings read once from AUTOINSTR_* variables (OTEL_* names as fallbacks), validated.

A bad value never stops the app: it gets one warning line naming the variable, the value seen and the
value used instead. Parsing is deliberately plain (no dataclasses, no typing at runtime) because it runs
at interpreter start-up.
"""

from __future__ import annotations

import os
import sys

from autoinstr._log import warn

TYPE_CHECKING = False
if TYPE_CHECKING:  # typing costs milliseconds at interpreter start-up; annotations are strings here
    from typing import Dict, List, Mapping, Optional, Tuple

OTLP_PROTOCOLS = ("http/protobuf", "http/json")
EXPORTERS = ("local", "collector", "otlp", "zipkin", "jsonl", "console", "none")
PROPAGATORS = ("tracecontext", "baggage", "b3", "b3multi")
_TRUE = ("1", "true", "yes", "on")
_FALSE = ("0", "false", "no", "off")


def default_store_path(env: Optional[Mapping[str, str]] = None) -> str:
    """$XDG_DATA_HOME/autoinstr/spans.db, else ~/.local/share/autoinstr/spans.db."""
    env = os.environ if env is None else env
    base = env.get("XDG_DATA_HOME") or os.path.join(os.path.expanduser("~"), ".local", "share")
    return os.path.join(base, "autoinstr", "spans.db")


def default_service_name(argv: Optional[List[str]] = None) -> str:
    """The script or module the process runs: `python app.py` -> app, `python -m pkg.mod` -> pkg.mod,
    `python -c ...` -> python. Read from the interpreter's own command line (sys.orig_argv), because at
    start-up `sys.argv` of `python -m pkg.mod` does not show the module yet."""
    if argv is None:
        argv = list(getattr(sys, "orig_argv", None) or _proc_cmdline() or [sys.executable] + sys.argv)
    if argv and os.path.basename(argv[0]).startswith("uwsgi"):  # embedded Python: not a python command line
        return "uwsgi"
    args = argv[1:]
    i = 0
    while i < len(args):
        arg = args[i]
        if arg == "-" or arg == "--":
            return _script_name(args[i + 1]) if arg == "--" and i + 1 < len(args) else "python"
        if arg.startswith("-") and not arg.startswith("--"):
            flags = arg[1:]
            for pos, flag in enumerate(flags):
                if flag in "mc":
                    rest = flags[pos + 1:] or (args[i + 1] if i + 1 < len(args) else "")
                    return (rest or "python") if flag == "m" else "python"
                if flag in "XW":  # options that take a value (joined or as the next argument)
                    if pos == len(flags) - 1:
                        i += 1
                    break
            i += 1
            continue
        if arg.startswith("--"):
            i += 2 if arg == "--check-hash-based-pycs" else 1
            continue
        return _script_name(arg)
    return "python"


def _script_name(path: str) -> str:
    name = os.path.basename(path.rstrip("/"))
    if name in ("__main__.py", ""):  # `python pkg/` or pkg/__main__.py: the folder names it
        name = os.path.basename(os.path.dirname(os.path.abspath(path.rstrip("/")))) or name
    for suffix in (".py", ".pyw", ".pyz"):
        if name.endswith(suffix):
            name = name[: -len(suffix)]
    return name or "python"


def _proc_cmdline() -> Optional[List[str]]:
    """Python 3.9 has no sys.orig_argv; Linux shows the same in /proc."""
    try:
        with open("/proc/self/cmdline", "rb") as f:
            parts = f.read().split(b"\0")
        return [p.decode("utf-8", "surrogateescape") for p in parts if p] or None
    except OSError:
        return None


class Config:
    """The effective configuration; every field is parsed and validated once, in __init__."""

    __slots__ = (
        "enabled", "service_name", "exporters", "store_path", "jsonl_path", "collector_url", "otlp_endpoint",
        "zipkin_url", "statsd", "sample_rate", "rate_limit", "propagators", "disabled_integrations",
        "flush_interval", "max_queue_spans", "shutdown_timeout", "debug", "max_batch_spans",
        "max_attributes", "max_attribute_length", "store_retention_hours", "store_max_mb", "flush_on_sigterm",
        "trace_response_header", "sql_obfuscation", "max_span_names", "http_request_headers", "http_response_headers",
        "collector_token", "collector_max_body_mb", "collector_compression",
        "otlp_traces_endpoint", "otlp_protocol", "otlp_compression", "otlp_headers", "export_timeout",
        "resource_attributes", "speedups",
        "statsd_prefix", "statsd_tags",
        "sources", "warnings",
        "_emit", "_env",
    )

    def __init__(self, env: Optional[Mapping[str, str]] = None, emit_warnings: bool = True) -> None:
        self.sources: Dict[str, str] = {}
        self.warnings: List[str] = []
        e = os.environ if env is None else env
        self._emit = emit_warnings
        self._env = e
        self.enabled = self._bool("AUTOINSTR_ENABLED", False)
        self.debug = self._bool("AUTOINSTR_DEBUG", False)
        self.flush_on_sigterm = self._bool("AUTOINSTR_FLUSH_ON_SIGTERM", True)
        self.trace_response_header = self._bool("AUTOINSTR_TRACE_RESPONSE_HEADER", False)
        self.sql_obfuscation = self._bool("AUTOINSTR_SQL_OBFUSCATION", True)
        self.speedups = self._bool("AUTOINSTR_SPEEDUPS", True)
        self.http_request_headers = self._names(("AUTOINSTR_HTTP_REQUEST_HEADERS",
                                                  "OTEL_INSTRUMENTATION_HTTP_CAPTURE_HEADERS_SERVER_REQUEST"))
        self.http_response_headers = self._names(("AUTOINSTR_HTTP_RESPONSE_HEADERS",
                                                   "OTEL_INSTRUMENTATION_HTTP_CAPTURE_HEADERS_SERVER_RESPONSE"))
        self.max_span_names = int(self._float(("AUTOINSTR_MAX_SPAN_NAMES",), 500, 1, 1_000_000, integer=True))
        self.resource_attributes = self._pairs(("OTEL_RESOURCE_ATTRIBUTES",), secret=False)
        self.service_name = (self._str(("AUTOINSTR_SERVICE_NAME", "OTEL_SERVICE_NAME"), "")
                             or dict(self.resource_attributes).get("service.name") or default_service_name())
        self.exporters = self._choices(("AUTOINSTR_EXPORTER", "OTEL_TRACES_EXPORTER"), EXPORTERS, ("local",),
                                       aliases={"otlp_proto_http": "otlp"})
        self.store_path = self._str(("AUTOINSTR_STORE",), "") or default_store_path(e)
        self.jsonl_path = self._str(("AUTOINSTR_JSONL_PATH",), "autoinstr-spans.jsonl")
        self.collector_url = self._url(("AUTOINSTR_COLLECTOR_URL",), "http://127.0.0.1:4990")
        self.collector_token = self._str(("AUTOINSTR_COLLECTOR_TOKEN",), "")  # agents send it; collector needs it
        self.collector_max_body_mb = self._float(("AUTOINSTR_COLLECTOR_MAX_BODY_MB",), 16.0, 0.001, 1024.0)
        # auto: gzip, except to a collector on this machine (compressing costs CPU and saves nothing there)
        self.collector_compression = self._choices(("AUTOINSTR_COLLECTOR_COMPRESSION",), ("auto", "gzip", "none"),
                                                   ("auto",), single=True)[0]
        self.otlp_endpoint = self._url(("AUTOINSTR_OTLP_ENDPOINT", "OTEL_EXPORTER_OTLP_ENDPOINT"), "http://127.0.0.1:4318")
        self.otlp_traces_endpoint = self._url(("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT",), "")  # used as is
        self.otlp_protocol = self._choices(("AUTOINSTR_OTLP_PROTOCOL", "OTEL_EXPORTER_OTLP_TRACES_PROTOCOL",
                                            "OTEL_EXPORTER_OTLP_PROTOCOL"), OTLP_PROTOCOLS, ("http/protobuf",),
                                           single=True)[0]
        self.otlp_compression = self._choices(("OTEL_EXPORTER_OTLP_TRACES_COMPRESSION",
                                               "OTEL_EXPORTER_OTLP_COMPRESSION"), ("gzip", "none"), ("none",),
                                              single=True)[0]
        self.otlp_headers = self._pairs(("OTEL_EXPORTER_OTLP_TRACES_HEADERS", "OTEL_EXPORTER_OTLP_HEADERS"),
                                        secret=True)
        self.export_timeout = self._timeout()
        self.zipkin_url = self._url(("AUTOINSTR_ZIPKIN_URL", "OTEL_EXPORTER_ZIPKIN_ENDPOINT"),
                                    "http://127.0.0.1:9411/api/v2/spans")
        self.statsd = self._hostport(("AUTOINSTR_STATSD",))
        self.statsd_prefix = self._statsd_prefix()
        self.statsd_tags = self._choices(("AUTOINSTR_STATSD_TAGS",), ("dogstatsd", "none"), ("none",))[0]
        self.sample_rate = self._float(("AUTOINSTR_SAMPLE_RATE", "OTEL_TRACES_SAMPLER_ARG"), 1.0, 0.0, 1.0)
        self.rate_limit = self._float(("AUTOINSTR_RATE_LIMIT",), 0.0, 0.0, 1e9)
        self.propagators = self._choices(("AUTOINSTR_PROPAGATORS", "OTEL_PROPAGATORS"), PROPAGATORS,
                                         ("tracecontext", "baggage"), allow_none=True)
        self.disabled_integrations = frozenset(
            x.strip().lower() for x in self._str(("AUTOINSTR_DISABLED_INTEGRATIONS",), "").split(",") if x.strip())
        self.flush_interval = self._float(("AUTOINSTR_FLUSH_INTERVAL",), 1.0, 0.01, 3600.0)
        self.max_queue_spans = int(self._float(("AUTOINSTR_MAX_QUEUE_SPANS",), 10000, 1, 10_000_000, integer=True))
        self.max_batch_spans = int(self._float(("AUTOINSTR_MAX_BATCH_SPANS",), 1000, 1, 1_000_000, integer=True))
        self.shutdown_timeout = self._float(("AUTOINSTR_SHUTDOWN_TIMEOUT",), 2.0, 0.0, 600.0)
        self.max_attributes = int(self._float(("AUTOINSTR_MAX_ATTRIBUTES",), 128, 1, 100_000, integer=True))
        self.max_attribute_length = int(self._float(("AUTOINSTR_MAX_ATTRIBUTE_LENGTH",), 4096, 16, 10_000_000,
                                                    integer=True))
        self.store_retention_hours = self._float(("AUTOINSTR_STORE_RETENTION_HOURS",), 168.0, 0.0, 1e6)
        self.store_max_mb = self._float(("AUTOINSTR_STORE_MAX_MB",), 512.0, 0.0, 1e9)
        self._env = {}  # only needed while parsing

    # ---------------------------------------------------------------------------------------- parsers

    def _raw(self, names: Tuple[str, ...]) -> Tuple[Optional[str], Optional[str]]:
        for name in names:
            value = self._env.get(name)
            if value is not None and value.strip() != "":
                self.sources[names[0]] = name
                return name, value.strip()
        return None, None

    def _warn(self, name: str, value: str, why: str, used: object) -> None:
        line = "%s=%r %s; using %r instead" % (name, value, why, used)
        self.warnings.append(line)
        if self._emit:
            warn(line)

    def _str(self, names: Tuple[str, ...], default: str) -> str:
        return self._raw(names)[1] or default

    def _bool(self, name: str, default: bool) -> bool:
        _, value = self._raw((name,))
        if value is None:
            return default
        if value.lower() in _TRUE:
            return True
        if value.lower() in _FALSE:
            return False
        self._warn(name, value, "is not a boolean (true/false)", default)
        return default

    def _float(self, names: Tuple[str, ...], default: float, low: float, high: float, integer: bool = False) -> float:
        name, value = self._raw(names)
        if value is None or name is None:
            return default
        try:
            number = float(value)
            if number != number or number in (float("inf"), float("-inf")) or (integer and number != int(number)):
                raise ValueError
        except ValueError:
            self._warn(name, value, "is not %s" % ("an integer" if integer else "a number"), default)
            return default
        if not low <= number <= high:
            used = min(max(number, low), high)
            used = int(used) if integer else used
            self._warn(name, value, "is outside %s..%s" % (low, high), used)
            return used
        return number

    def _names(self, names: Tuple[str, ...]) -> Tuple[str, ...]:
        """A comma list of header names, lower-cased (an allow-list: nothing is recorded by default)."""
        return tuple(dict.fromkeys(x.strip().lower() for x in self._str(names, "").split(",") if x.strip()))

    def _url(self, names: Tuple[str, ...], default: str) -> str:
        name, value = self._raw(names)
        if value is None or name is None:
            return default
        if not value.lower().startswith(("http://", "https://")):
            self._warn(name, value, "is not an http(s) URL", default)
            return default
        return value.rstrip("/") if value.count("/") <= 3 else value

    def _hostport(self, names: Tuple[str, ...]) -> Optional[Tuple[str, int]]:
        name, value = self._raw(names)
        if value is None or name is None:
            return None
        host, _, port = value.rpartition(":")
        host = host.strip("[]")
        if host and port.isdigit() and 0 < int(port) < 65536:
            return host, int(port)
        self._warn(name, value, "is not host:port", "(statsd disabled)")
        return None

    def _choices(self, names: Tuple[str, ...], allowed: Tuple[str, ...], default: Tuple[str, ...],
                 allow_none: bool = False, aliases: Optional[Dict[str, str]] = None,
                 single: bool = False) -> Tuple[str, ...]:
        name, value = self._raw(names)
        if value is None or name is None:
            return default
        if single and value.strip().lower() not in allowed:  # one value, not a list
            self._warn(name, value, "is not one of %s" % ", ".join(allowed), default[0])
            return default
        picked: List[str] = []
        bad: List[str] = []
        for item in (x.strip().lower() for x in value.split(",")):
            item = (aliases or {}).get(item, item)
            if not item:
                continue
            if item in allowed or (allow_none and item == "none"):
                if item not in picked:
                    picked.append(item)
            else:
                bad.append(item)
        if "none" in picked:
            picked = ["none"]
        if bad:
            used = tuple(picked) or default
            self._warn(name, value, "names unknown value(s) %s (known: %s)" % (",".join(bad), ",".join(allowed)),
                       ",".join(used))
            return used
        return tuple(picked) or default

    def _pairs(self, names: Tuple[str, ...], secret: bool) -> Tuple[Tuple[str, str], ...]:
        """`key=value,key2=value2` (W3C Baggage style, percent-decoded), as OTEL_EXPORTER_OTLP_HEADERS and
        OTEL_RESOURCE_ATTRIBUTES are written. Bad entries are skipped with one warning; with `secret`
        (header values: API keys) the warning shows no value."""
        name, value = self._raw(names)
        if value is None or name is None:
            return ()
        import urllib.parse  # only when set: it costs milliseconds of start-up

        out: Dict[str, str] = {}
        bad = 0
        for item in value.split(","):
            if not item.strip():
                continue
            key, sep, val = item.partition("=")
            key = urllib.parse.unquote(key.strip())
            val = urllib.parse.unquote(val.strip())
            if not sep or not key or (secret and (not _is_token(key) or any(c in val for c in "\r\n\0"))):
                bad += 1
                continue
            out[key] = val
        if bad:
            shown = "(%d entr%s, values not shown)" % (len(value.split(",")), "y" if value.count(",") == 0 else "ies") \
                if secret else value
            self._warn(name, shown, "has %d entr%s that %s not key=value%s" % (
                bad, "y" if bad == 1 else "ies", "is" if bad == 1 else "are", " (header names are tokens, values "
                "one line)" if secret else ""), "the other entries")
        return tuple(out.items())

    def _timeout(self) -> float:
        """AUTOINSTR_EXPORT_TIMEOUT in seconds, else OTEL_EXPORTER_OTLP_[TRACES_]TIMEOUT in milliseconds."""
        name, value = self._raw(("AUTOINSTR_EXPORT_TIMEOUT", "OTEL_EXPORTER_OTLP_TRACES_TIMEOUT",
                                 "OTEL_EXPORTER_OTLP_TIMEOUT"))
        if value is None or name is None:
            return 10.0
        scale = 1.0 if name == "AUTOINSTR_EXPORT_TIMEOUT" else 1000.0
        try:
            number = float(value) / scale
            if not number == number or number in (float("inf"), float("-inf")):
                raise ValueError
        except ValueError:
            self._warn(name, value, "is not a number", 10.0 * scale)
            return 10.0
        if not 0.001 <= number <= 600.0:
            used = min(max(number, 0.001), 600.0)
            self._warn(name, value, "is outside %s..%s%s" % (0.001 * scale, 600 * scale, " ms" if scale > 1 else ""),
                       used * scale)
            return used
        return number

    def _statsd_prefix(self) -> str:
        """Dot-separated components of letters, digits, `_` and `-` (Graphite-safe); else sanitized, warned."""
        name, value = self._raw(("AUTOINSTR_STATSD_PREFIX",))
        if value is None or name is None:
            return "autoinstr"
        parts = value.split(".")
        if all(part and all(c.isascii() and (c.isalnum() or c in "_-") for c in part) for part in parts):
            return value
        from autoinstr.export.statsd import dotted

        used = dotted(value)
        self._warn(name, value, "is not a Graphite-safe dotted name", used)
        return used

    # --------------------------------------------------------------------------------------- display

    def items(self) -> List[Tuple[str, object]]:
        """(variable, effective value) pairs for `autoinstr-run --info`."""
        statsd = "%s:%d" % self.statsd if self.statsd else ""
        return [
            ("AUTOINSTR_SERVICE_NAME", self.service_name),
            ("AUTOINSTR_EXPORTER", ",".join(self.exporters)),
            ("AUTOINSTR_STORE", self.store_path),
            ("AUTOINSTR_JSONL_PATH", self.jsonl_path),
            ("AUTOINSTR_COLLECTOR_URL", self.collector_url),
            ("AUTOINSTR_COLLECTOR_TOKEN", "(hidden)" if self.collector_token else "(none)"),
            ("AUTOINSTR_COLLECTOR_COMPRESSION", self.collector_compression),
            ("AUTOINSTR_OTLP_ENDPOINT", self.otlp_endpoint),
            ("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", self.otlp_traces_endpoint or "(endpoint + /v1/traces)"),
            ("AUTOINSTR_OTLP_PROTOCOL", self.otlp_protocol),
            ("OTEL_EXPORTER_OTLP_TRACES_COMPRESSION", self.otlp_compression),
            ("OTEL_EXPORTER_OTLP_TRACES_HEADERS", ",".join("%s=(set)" % k for k, _ in self.otlp_headers) or "(none)"),
            ("AUTOINSTR_EXPORT_TIMEOUT", self.export_timeout),
            ("OTEL_RESOURCE_ATTRIBUTES", ",".join("%s=%s" % kv for kv in self.resource_attributes) or "(none)"),
            ("AUTOINSTR_ZIPKIN_URL", self.zipkin_url),
            ("AUTOINSTR_STATSD", statsd or "(disabled)"),
            ("AUTOINSTR_STATSD_PREFIX", self.statsd_prefix),
            ("AUTOINSTR_STATSD_TAGS", self.statsd_tags),
            ("AUTOINSTR_SAMPLE_RATE", self.sample_rate),
            ("AUTOINSTR_RATE_LIMIT", self.rate_limit or "0 (no limit)"),
            ("AUTOINSTR_PROPAGATORS", ",".join(self.propagators)),
            ("AUTOINSTR_DISABLED_INTEGRATIONS", ",".join(sorted(self.disabled_integrations)) or "(none)"),
            ("AUTOINSTR_FLUSH_INTERVAL", self.flush_interval),
            ("AUTOINSTR_MAX_QUEUE_SPANS", self.max_queue_spans),
            ("AUTOINSTR_MAX_BATCH_SPANS", self.max_batch_spans),
            ("AUTOINSTR_SHUTDOWN_TIMEOUT", self.shutdown_timeout),
            ("AUTOINSTR_MAX_ATTRIBUTES", self.max_attributes),
            ("AUTOINSTR_MAX_ATTRIBUTE_LENGTH", self.max_attribute_length),
            ("AUTOINSTR_STORE_RETENTION_HOURS", self.store_retention_hours),
            ("AUTOINSTR_STORE_MAX_MB", self.store_max_mb),
            ("AUTOINSTR_FLUSH_ON_SIGTERM", self.flush_on_sigterm),
            ("AUTOINSTR_TRACE_RESPONSE_HEADER", self.trace_response_header),
            ("AUTOINSTR_SQL_OBFUSCATION", self.sql_obfuscation),
            ("AUTOINSTR_MAX_SPAN_NAMES", self.max_span_names),
            ("AUTOINSTR_HTTP_REQUEST_HEADERS", ",".join(self.http_request_headers) or "(none)"),
            ("AUTOINSTR_HTTP_RESPONSE_HEADERS", ",".join(self.http_response_headers) or "(none)"),
            ("AUTOINSTR_SPEEDUPS", self.speedups),
            ("AUTOINSTR_DEBUG", self.debug),
        ]


_TOKEN_CHARS = frozenset("!#$%&'*+-.^_`|~0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ")


def _is_token(name: str) -> bool:
    """An HTTP header name (RFC 9110 token)."""
    return bool(name) and all(c in _TOKEN_CHARS for c in name)


_current: Optional[Config] = None


def get() -> Config:
    """The process's configuration, parsed on first use (warnings printed then, once)."""
    global _current
    if _current is None:
        _current = Config()
    return _current


def reset(env: Optional[Mapping[str, str]] = None) -> Config:
    """Re-read the configuration (tests, and `autoinstr-run --info`)."""
    global _current
    _current = Config(env)
    return _current
