"""`zipkin`: spans as Zipkin v2 JSON (POST AUTOINSTR_ZIPKIN_URL, a ListOfSpans per the Zipkin API).

Mapping from the span record (as OpenTelemetry's Zipkin exporters do):
- traceId (32 hex), id, parentId (absent for roots), name;
- kind CLIENT/SERVER/PRODUCER/CONSUMER, absent for internal (local) spans;
- timestamp in epoch microseconds (truncated), duration in microseconds rounded up, at least 1;
- localEndpoint: serviceName, plus the listen port (server.port) on server spans;
- remoteEndpoint: on client, producer and consumer spans the peer (peer.service as serviceName, else
  server.address, else network.peer.address; an IP literal goes to ipv4/ipv6, a host name to serviceName)
  with server.port / network.peer.port; on server spans the client (client.address / network.peer.*);
- tags: every attribute as a string (bool as true/false, lists as JSON arrays); on error status
  `otel.status_code`=ERROR and `error` = the status description (exception.message), else "true";
- annotations: one per event, value = the event name, or {"name": {attributes}} as JSON when it has any
  (identical ones once: the schema wants them unique).
"""

from __future__ import annotations

import ipaddress
import json

from autoinstr.export import _http_post
from autoinstr.export.base import Exporter

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any, Dict, List, Mapping, Optional, Tuple

    from autoinstr.config import Config

KINDS = {"server": "SERVER", "client": "CLIENT", "producer": "PRODUCER", "consumer": "CONSUMER"}
_dumps = json.JSONEncoder(ensure_ascii=False, separators=(",", ":"), allow_nan=False).encode


def tag_value(value: Any) -> str:
    if value.__class__ is str:
        return value
    if value.__class__ is bool:
        return "true" if value else "false"
    if value.__class__ in (int, float):
        return json.dumps(value) if value == value and value not in (float("inf"), float("-inf")) else str(value)
    if isinstance(value, (list, tuple)):
        try:
            return json.dumps(list(value), ensure_ascii=False, separators=(",", ":"), allow_nan=False)
        except (TypeError, ValueError):
            return json.dumps([tag_value(v) for v in value], ensure_ascii=False, separators=(",", ":"))
    try:
        return str(value)
    except Exception:
        return "<unprintable>"


def _port(value: Any) -> Optional[int]:
    try:
        port = int(value)
    except (TypeError, ValueError):
        return None
    return port if 0 < port < 65536 else None


def endpoint(address: Any, port: Any = None, service: Any = None) -> Optional[Dict[str, Any]]:
    """A Zipkin Endpoint; an IP literal address goes to ipv4/ipv6, a host name to serviceName."""
    out: Dict[str, Any] = {}
    if isinstance(service, str) and service:
        out["serviceName"] = service
    if isinstance(address, str) and address:
        try:
            ip = ipaddress.ip_address(address.strip("[]"))
        except ValueError:
            out.setdefault("serviceName", address)
        else:
            if ip.version == 4:
                out["ipv4"] = str(ip)
            elif ip.ipv4_mapped is not None:
                out["ipv4"] = str(ip.ipv4_mapped)
            else:
                out["ipv6"] = str(ip)
    port = _port(port)
    if port is not None and out:
        out["port"] = port
    return out or None


def _remote(kind: str, attrs: Mapping[str, Any]) -> Optional[Dict[str, Any]]:
    get = attrs.get
    if kind == "server":
        return endpoint(get("client.address") or get("network.peer.address"),
                        get("client.port") or get("network.peer.port"))
    if kind in ("client", "producer", "consumer"):
        address = get("server.address") or get("network.peer.address") or get("net.peer.name")
        port = get("server.port") or get("network.peer.port") or get("net.peer.port")
        remote = endpoint(address, port, get("peer.service"))
        if remote is not None and "serviceName" not in remote and get("network.peer.address") and \
                get("server.address") and get("server.address") != get("network.peer.address"):
            remote["serviceName"] = str(get("server.address"))
        return remote
    return None


def to_zipkin(r: Mapping[str, Any]) -> Dict[str, Any]:
    """One span record as a Zipkin v2 span."""
    attrs = r.get("attributes") or {}
    kind = r.get("kind") or "internal"
    span: Dict[str, Any] = {"traceId": r["trace_id"], "id": r["span_id"]}
    if r.get("parent_id"):
        span["parentId"] = r["parent_id"]
    span["name"] = r["name"]
    if kind in KINDS:
        span["kind"] = KINDS[kind]
    start_ns = max(0, int(r["start_ns"]))
    span["timestamp"] = start_ns // 1000
    span["duration"] = max(1, -(-max(0, int(r.get("duration_ns") or 0)) // 1000))
    local: Dict[str, Any] = {"serviceName": r.get("service") or "unknown_service"}
    if kind == "server":
        port = _port(attrs.get("server.port"))
        if port is not None:
            local["port"] = port
    span["localEndpoint"] = local
    remote = _remote(kind, attrs)
    if remote is not None:
        span["remoteEndpoint"] = remote
    annotations = []
    seen = set()  # the schema wants unique annotations: an identical one adds nothing
    for ev in r.get("events") or ():
        ev_attrs = ev.get("attributes") or {}
        value = str(ev.get("name", ""))
        if ev_attrs:
            value = _dumps({value: {k: v if v.__class__ in (str, bool, int) else tag_value(v)
                                    for k, v in ev_attrs.items()}})
        timestamp = max(0, int(ev.get("time_ns") or 0)) // 1000
        if (timestamp, value) not in seen:
            seen.add((timestamp, value))
            annotations.append({"timestamp": timestamp, "value": value})
    if annotations:
        span["annotations"] = annotations
    tags = {str(k): tag_value(v) for k, v in attrs.items() if v is not None}
    if r.get("status") == "error":
        message = attrs.get("otel.status_description") or attrs.get("exception.message")
        tags["otel.status_code"] = "ERROR"
        tags["error"] = message if isinstance(message, str) and message else "true"
    if tags:
        span["tags"] = tags
    return span


def encode(records: List[Mapping[str, Any]]) -> bytes:
    return _dumps([to_zipkin(r) for r in records]).encode("utf-8", "backslashreplace")


class ZipkinExporter(Exporter):
    name = "zipkin"

    def __init__(self, config: Config) -> None:
        self.url = config.zipkin_url
        self.timeout = config.export_timeout
        self.headers = {"Content-Type": "application/json"}

    def export(self, records: List[Dict[str, Any]]) -> None:
        if not records:
            return
        _http_post.send(self.url, encode(records), self.headers, self.timeout)

    def after_fork(self) -> None:
        _http_post.forget_connections()

    def destination(self) -> str:
        return _http_post.safe_url(self.url)

    def probe(self) -> Tuple[bool, str]:
        return _http_post.probe(self.url)
