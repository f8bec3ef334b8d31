"""`otlp`: spans to an OpenTelemetry Collector, Jaeger, Tempo or a vendor, over OTLP/HTTP.

POST {AUTOINSTR_OTLP_ENDPOINT}/v1/traces (OTEL_EXPORTER_OTLP_TRACES_ENDPOINT as is, when set), as
http/protobuf (default) or http/json, gzip if asked, with the configured extra headers (API keys) and
timeout. The wire format is in otlp.py; HTTP and the server's answers in _http_post.py: 2xx is done, 429 and
503 retry no sooner than the Retry-After asked, other 4xx drop the batch at once with one warning.
"""

from __future__ import annotations

import os
import sys

from autoinstr.export import _http_post, otlp
from autoinstr.export.base import Exporter
from autoinstr.export.records import record_of_fields

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any, Dict, List, Tuple

    from autoinstr.config import Config

CONTENT_TYPES = {"http/protobuf": "application/x-protobuf", "http/json": "application/json"}


def resource_attributes(config: Config) -> Dict[str, Any]:
    """Resource attributes besides service.name (each record's service): OTEL_RESOURCE_ATTRIBUTES, host,
    process and telemetry.sdk.*. The user's attributes win over detected ones, not over telemetry.sdk.*."""
    import platform
    import socket

    from autoinstr import __version__

    attrs: Dict[str, Any] = {}
    try:
        attrs["host.name"] = socket.gethostname()
    except OSError:
        pass
    attrs["process.pid"] = os.getpid()
    attrs["process.executable.path"] = sys.executable or ""
    attrs["process.runtime.name"] = sys.implementation.name
    attrs["process.runtime.version"] = platform.python_version()
    attrs["process.runtime.description"] = sys.version.replace("\n", " ")
    for key, value in config.resource_attributes:
        if key != "service.name":
            attrs[key] = value
    attrs["telemetry.sdk.name"] = "autoinstr"
    attrs["telemetry.sdk.language"] = "python"
    attrs["telemetry.sdk.version"] = __version__
    return attrs


class OtlpExporter(Exporter):
    name = "otlp"

    def __init__(self, config: Config) -> None:
        self.url = config.otlp_traces_endpoint or config.otlp_endpoint.rstrip("/") + "/v1/traces"
        self.protocol = config.otlp_protocol
        self.gzip = config.otlp_compression == "gzip"
        self.timeout = config.export_timeout
        self._config = config
        self.resource = resource_attributes(config)
        self.headers: Dict[str, str] = {"Content-Type": CONTENT_TYPES[self.protocol]}
        for key, value in config.otlp_headers:
            if key.lower() not in ("content-type", "content-encoding", "content-length", "host", "connection"):
                self.headers[key] = value
        self._encode = otlp.encode_json if self.protocol == "http/json" else otlp.encode_protobuf

    takes_fields = True  # the pipeline may hand over span_fields() tuples rather than records

    def export(self, records: List[Any]) -> None:
        if not records:
            return
        if records[0].__class__ is tuple:  # span_fields() tuples
            if self.protocol == "http/json":
                body = otlp.encode_json(map(record_of_fields, records), self.resource)
            else:
                body = otlp.encode_protobuf_fields(records, self.resource)
        else:
            body = self._encode(records, self.resource)
        _http_post.send(self.url, body, self.headers, self.timeout, self.gzip)

    def after_fork(self) -> None:
        self.resource["process.pid"] = os.getpid()
        _http_post.forget_connections()

    def destination(self) -> str:
        return "%s (%s%s)" % (_http_post.safe_url(self.url), self.protocol, ", gzip" if self.gzip else "")

    def probe(self) -> Tuple[bool, str]:
        return _http_post.probe(self.url)
