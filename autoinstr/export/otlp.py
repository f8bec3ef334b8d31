"""The OTLP trace wire format, both ways, without protobuf or opentelemetry-proto at run time.

    encode_protobuf(records, resource) -> bytes   an ExportTraceServiceRequest (http/protobuf)
    encode_protobuf_fields(rows, resource)        the same from span_fields() tuples (the flush thread's form)
    encode_json(records, resource) -> bytes       the same per the OTLP/JSON mapping (http/json)
    decode_protobuf(body) -> records              what an OTLP/HTTP receiver (our collector) gets
    decode_json(body) -> records

`records` are span records (DESIGN.md); `resource` holds resource attributes besides service.name, which
comes from each record's `service` (one ResourceSpans per service). The decoders raise ValueError, with
a short reason, on any malformed input and nothing else; nesting is bounded (MAX_DEPTH) and nothing
recurses on the input beyond that; what one request may decode to is bounded too (MAX_SPANS spans,
MAX_ITEMS spans + events + attributes + array elements; `max_spans`/`max_items` arguments), so a small
hostile body cannot cost much memory.

Encoding (opentelemetry/proto/trace/v1/trace.proto):
- kind: internal 1, server 2, client 3, producer 4, consumer 5; span flags 0x1 (sampled).
- status: error -> STATUS_CODE_ERROR (2) with the message from the `otel.status_description` attribute,
  else `exception.message`; ok -> no status (UNSET: instrumentation does not claim OK).
- attributes: str -> string_value, bool -> bool_value, int64 -> int_value, float -> double_value,
  list -> array_value, dict -> kvlist_value, bytes -> bytes_value; other values as text.
- an optional record key `trace_state` (W3C tracestate) becomes Span.trace_state.
- JSON: lowerCamelCase names, ids in lowercase hex, enums as integers, 64-bit integers (timestamps,
  int_value) as decimal strings, NaN/Infinity doubles as strings.

Decoding gives the record shape; documented differences from the records that were encoded:
- service is the resource's service.name (a string), "unknown_service" without one; other resource
  attributes, the instrumentation scope, links, flags and dropped counts are not kept.
- status: ERROR -> "error", UNSET/OK -> "ok"; a status message that differs from the span's
  `exception.message` attribute is kept as the `otel.status_description` attribute.
- kind 0 (unspecified) or unknown -> "internal"; duration_ns = max(0, end - start).
- attribute values: array elements that are themselves arrays or kvlists, and kvlists, become their JSON
  text; bytes become base64 text; non-finite doubles become text ("nan", "inf", "-inf"), as
  records.clean_value makes them; an AnyValue with nothing set drops the attribute.
- an empty span name becomes "unnamed"; `trace_state` is set only when non-empty; an all-zero parent
  span id means no parent; invalid UTF-8 in protobuf strings is malformed input (proto3 rule), lone
  surrogates in JSON strings are backslash-escaped.
"""

from __future__ import annotations

import base64
import binascii
import json
import math
import struct

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any, Callable, Dict, Iterable, Iterator, List, Mapping, Optional, Tuple

MAX_DEPTH = 16  # nesting of arrays and kvlists in one attribute value
MAX_SPANS = 100_000  # per request
MAX_ITEMS = 1_000_000  # per request: spans, events, attributes and array/kvlist elements decoded in all
_U64 = (1 << 64) - 1
_INT64_MIN, _INT64_MAX = -(1 << 63), (1 << 63) - 1

KIND_TO_OTLP = {"internal": 1, "server": 2, "client": 3, "producer": 4, "consumer": 5}
OTLP_TO_KIND = {0: "internal", 1: "internal", 2: "server", 3: "client", 4: "producer", 5: "consumer"}
_KIND_NAMES = {"SPAN_KIND_UNSPECIFIED": 0, "SPAN_KIND_INTERNAL": 1, "SPAN_KIND_SERVER": 2, "SPAN_KIND_CLIENT": 3,
               "SPAN_KIND_PRODUCER": 4, "SPAN_KIND_CONSUMER": 5}
_STATUS_NAMES = {"STATUS_CODE_UNSET": 0, "STATUS_CODE_OK": 1, "STATUS_CODE_ERROR": 2}
STATUS_ERROR = 2
SPAN_FLAGS_SAMPLED = 0x1
SCOPE_NAME = "autoinstr"
UNKNOWN_SERVICE = "unknown_service"

_pack_d = struct.Struct("<d").pack
_pack_q = struct.Struct("<Q").pack
_pack_i = struct.Struct("<I").pack
_unpack_d = struct.Struct("<d").unpack_from
_unpack_q = struct.Struct("<Q").unpack_from


def _scope_version() -> str:
    try:
        from autoinstr import __version__

        return __version__
    except Exception:
        return ""


# ===================================================================================== protobuf encode

def _varint(n: int) -> bytes:
    if n < 0x80:
        return bytes((n,))
    out = bytearray()
    while n > 0x7F:
        out.append((n & 0x7F) | 0x80)
        n >>= 7
    out.append(n)
    return bytes(out)


def _ld(tag: bytes, data: bytes) -> bytes:
    """A length-delimited field: tag, length, bytes."""
    return tag + _varint(len(data)) + data


def _utf8(text: str) -> bytes:
    return text.encode("utf-8", "backslashreplace")


def _pb_any(value: Any, depth: int = 0) -> bytes:
    """An AnyValue message."""
    cls = value.__class__
    if cls is str:
        return _ld(b"\x0a", _utf8(value))
    if cls is bool:
        return b"\x10\x01" if value else b"\x10\x00"
    if cls is int:
        if _INT64_MIN <= value <= _INT64_MAX:
            return b"\x18" + _varint(value & _U64)
        return _ld(b"\x0a", _utf8(str(value)))
    if cls is float:
        return b"\x21" + _pack_d(value)
    if depth < MAX_DEPTH:
        if isinstance(value, (list, tuple)):
            return _ld(b"\x2a", b"".join(_ld(b"\x0a", _pb_any(v, depth + 1)) for v in value))
        if isinstance(value, dict):
            return _ld(b"\x32", b"".join(_ld(b"\x0a", _pb_kv(str(k), v, depth + 1)) for k, v in value.items()))
    if isinstance(value, (bytes, bytearray)):
        return _ld(b"\x3a", bytes(value))
    if isinstance(value, bool):
        return _pb_any(bool(value), depth)
    if isinstance(value, int):
        return _pb_any(int(value), depth)
    if isinstance(value, float):
        return _pb_any(float(value), depth)
    return _ld(b"\x0a", _utf8(_as_text(value)))


def _as_text(value: Any) -> str:
    try:
        return str(value)
    except Exception:
        return "<unprintable>"


def _pb_kv(key: str, value: Any, depth: int = 0) -> bytes:
    return _ld(b"\x0a", _utf8(key)) + _ld(b"\x12", _pb_any(value, depth))


def _pb_attributes(tag: bytes, attrs: Optional[Mapping[str, Any]]) -> bytes:
    if not attrs:
        return b""
    return b"".join(_ld(tag, _pb_kv(k if k.__class__ is str else _as_text(k), v))
                    for k, v in attrs.items() if v is not None)


def _clamp_u64(n: Any) -> int:
    n = int(n)
    return 0 if n < 0 else (_U64 if n > _U64 else n)


def _status_message(record: Mapping[str, Any]) -> str:
    attrs = record.get("attributes") or {}
    message = attrs.get("otel.status_description")
    if not isinstance(message, str):
        message = attrs.get("exception.message")
    return message if isinstance(message, str) else ""


def _pb_span(r: Mapping[str, Any]) -> bytes:
    start = _clamp_u64(r["start_ns"])
    end = _clamp_u64(start + int(r.get("duration_ns") or 0))
    parts = [b"\x0a\x10", bytes.fromhex(r["trace_id"]), b"\x12\x08", bytes.fromhex(r["span_id"])]
    trace_state = r.get("trace_state")
    if trace_state:
        parts.append(_ld(b"\x1a", _utf8(str(trace_state))))
    if r.get("parent_id"):
        parts += (b"\x22\x08", bytes.fromhex(r["parent_id"]))
    parts.append(_ld(b"\x2a", _utf8(r["name"])))
    parts += (b"\x30", _varint(KIND_TO_OTLP.get(r.get("kind"), 1)))  # type: ignore[arg-type]
    parts += (b"\x39", _pack_q(start), b"\x41", _pack_q(end))
    parts.append(_pb_attributes(b"\x4a", r.get("attributes")))
    for ev in r.get("events") or ():
        event = b"\x09" + _pack_q(_clamp_u64(ev.get("time_ns") or 0)) + _ld(b"\x12", _utf8(str(ev.get("name", ""))))
        parts.append(_ld(b"\x5a", event + _pb_attributes(b"\x1a", ev.get("attributes"))))
    if r.get("status") == "error":
        message = _status_message(r)
        status = (_ld(b"\x12", _utf8(message)) if message else b"") + b"\x18" + _varint(STATUS_ERROR)
        parts.append(_ld(b"\x7a", status))
    parts += (b"\x85\x01", _pack_i(SPAN_FLAGS_SAMPLED))  # field 16, fixed32
    return b"".join(parts)


def _by_service(records: Iterable[Any], fields: bool = False) -> Dict[str, List[Any]]:
    """Records (or span_fields() tuples) grouped by their service, in order."""
    groups: Dict[str, List[Any]] = {}
    for r in records:
        service = r[5] if fields else r.get("service")
        groups.setdefault(service if isinstance(service, str) and service else UNKNOWN_SERVICE, []).append(r)
    return groups


def _resource_for(service: str, resource: Optional[Mapping[str, Any]]) -> Dict[str, Any]:
    attrs: Dict[str, Any] = {"service.name": service}
    for k, v in (resource or {}).items():
        if k != "service.name":
            attrs[k] = v
    return attrs


def encode_protobuf(records: Iterable[Mapping[str, Any]], resource: Optional[Mapping[str, Any]] = None) -> bytes:
    """An ExportTraceServiceRequest holding the records, one ResourceSpans per service."""
    return _pb_request(_by_service(records), resource, lambda group: b"".join(map(_pb_framed_span, group)))


def encode_protobuf_fields(rows: List[Any], resource: Optional[Mapping[str, Any]] = None) -> bytes:
    """encode_protobuf() of the records of span_fields() tuples, the same bytes: their Span messages are
    written by the compiled speedups where they are built (tests/test_speedups.py), else from the records."""
    from autoinstr.export.records import speedups

    compiled = speedups()
    if compiled is not None:
        def framed_spans(group: List[Any]) -> bytes:
            return compiled.pb_spans(group, _pb_framed_span_of_fields)  # type: ignore[no-any-return]
    else:
        def framed_spans(group: List[Any]) -> bytes:
            return b"".join(map(_pb_framed_span_of_fields, group))
    return _pb_request(_by_service(rows, fields=True), resource, framed_spans)


def _pb_framed_span(r: Mapping[str, Any]) -> bytes:
    """A span as a ScopeSpans' `spans` field."""
    return _ld(b"\x12", _pb_span(r))


def _pb_framed_span_of_fields(fields: Any) -> bytes:
    from autoinstr.export.records import record_of_fields

    return _ld(b"\x12", _pb_span(record_of_fields(fields)))


def _pb_request(groups: Dict[str, List[Any]], resource: Optional[Mapping[str, Any]],
                framed_spans: Callable[[List[Any]], bytes]) -> bytes:
    scope = _ld(b"\x0a", _ld(b"\x0a", SCOPE_NAME.encode()) + _ld(b"\x12", _scope_version().encode()))
    out = []
    for service, group in groups.items():
        res = _ld(b"\x0a", _pb_attributes(b"\x0a", _resource_for(service, resource)))
        scope_spans = _ld(b"\x12", scope + framed_spans(group))
        out.append(_ld(b"\x0a", res + scope_spans))
    return b"".join(out)


# ========================================================================================= JSON encode

def _js_any(value: Any, depth: int = 0) -> Dict[str, Any]:
    cls = value.__class__
    if cls is str:
        return {"stringValue": value}
    if cls is bool:
        return {"boolValue": value}
    if cls is int:
        return {"intValue": str(value)} if _INT64_MIN <= value <= _INT64_MAX else {"stringValue": str(value)}
    if cls is float:
        if math.isfinite(value):
            return {"doubleValue": value}
        return {"doubleValue": "NaN" if value != value else ("Infinity" if value > 0 else "-Infinity")}
    if depth < MAX_DEPTH:
        if isinstance(value, (list, tuple)):
            return {"arrayValue": {"values": [_js_any(v, depth + 1) for v in value]}}
        if isinstance(value, dict):
            return {"kvlistValue": {"values": [{"key": str(k), "value": _js_any(v, depth + 1)}
                                               for k, v in value.items()]}}
    if isinstance(value, (bytes, bytearray)):
        return {"bytesValue": base64.b64encode(bytes(value)).decode("ascii")}
    if isinstance(value, bool):
        return _js_any(bool(value), depth)
    if isinstance(value, int):
        return _js_any(int(value), depth)
    if isinstance(value, float):
        return _js_any(float(value), depth)
    return {"stringValue": _as_text(value)}


def _js_attributes(attrs: Optional[Mapping[str, Any]]) -> List[Dict[str, Any]]:
    if not attrs:
        return []
    return [{"key": k if k.__class__ is str else _as_text(k), "value": _js_any(v)}
            for k, v in attrs.items() if v is not None]


def _js_span(r: Mapping[str, Any]) -> Dict[str, Any]:
    start = _clamp_u64(r["start_ns"])
    end = _clamp_u64(start + int(r.get("duration_ns") or 0))
    span: Dict[str, Any] = {"traceId": r["trace_id"].lower(), "spanId": r["span_id"].lower()}
    if r.get("trace_state"):
        span["traceState"] = str(r["trace_state"])
    if r.get("parent_id"):
        span["parentSpanId"] = r["parent_id"].lower()
    span["flags"] = SPAN_FLAGS_SAMPLED
    span["name"] = r["name"]
    span["kind"] = KIND_TO_OTLP.get(r.get("kind"), 1)  # type: ignore[arg-type]
    span["startTimeUnixNano"] = str(start)
    span["endTimeUnixNano"] = str(end)
    span["attributes"] = _js_attributes(r.get("attributes"))
    span["events"] = [{"timeUnixNano": str(_clamp_u64(ev.get("time_ns") or 0)), "name": str(ev.get("name", "")),
                       "attributes": _js_attributes(ev.get("attributes"))} for ev in r.get("events") or ()]
    if r.get("status") == "error":
        message = _status_message(r)
        span["status"] = {"message": message, "code": STATUS_ERROR} if message else {"code": STATUS_ERROR}
    return span


_dumps = json.JSONEncoder(ensure_ascii=False, separators=(",", ":"), allow_nan=False).encode


def encode_json(records: Iterable[Mapping[str, Any]], resource: Optional[Mapping[str, Any]] = None) -> bytes:
    """The OTLP/JSON form of encode_protobuf's request."""
    scope = {"name": SCOPE_NAME, "version": _scope_version()}
    doc = {"resourceSpans": [
        {"resource": {"attributes": _js_attributes(_resource_for(service, resource))},
         "scopeSpans": [{"scope": scope, "spans": [_js_span(r) for r in group]}]}
        for service, group in _by_service(records).items()]}
    return _dumps(doc).encode("utf-8", "backslashreplace")


# ===================================================================================== protobuf decode
#
# A message is parsed into a list of (field number, wire type, value): varint -> int, fixed64/fixed32 ->
# the offset of its bytes, length-delimited -> (start, end) offsets into the body. Unknown fields are
# skipped as protobuf does; a known field with the wrong wire type is malformed.

def _read_varint(data: bytes, pos: int, end: int) -> Tuple[int, int]:
    result = 0
    shift = 0
    while True:
        if pos >= end:
            raise ValueError("truncated varint")
        b = data[pos]
        pos += 1
        result |= (b & 0x7F) << shift
        if b < 0x80:
            return result & _U64, pos
        shift += 7
        if shift >= 70:
            raise ValueError("varint longer than 10 bytes")


def _fields(data: bytes, start: int, end: int) -> Iterator[Tuple[int, int, Any]]:
    pos = start
    while pos < end:
        key, pos = _read_varint(data, pos, end)
        field, wire = key >> 3, key & 7
        if field == 0:
            raise ValueError("field number 0")
        if wire == 0:
            value, pos = _read_varint(data, pos, end)
        elif wire == 2:
            length, pos = _read_varint(data, pos, end)
            if length > end - pos:
                raise ValueError("length-delimited field runs past its message")
            value = (pos, pos + length)
            pos += length
        elif wire == 1:
            if pos + 8 > end:
                raise ValueError("truncated fixed64")
            value = pos
            pos += 8
        elif wire == 5:
            if pos + 4 > end:
                raise ValueError("truncated fixed32")
            value = pos
            pos += 4
        else:
            raise ValueError("unsupported wire type %d" % wire)
        yield field, wire, value


class _Budget:
    """What one request may still decode to."""

    __slots__ = ("items", "spans")

    def __init__(self, max_spans: int, max_items: int) -> None:
        self.spans = max_spans
        self.items = max_items

    def item(self) -> None:
        self.items -= 1
        if self.items < 0:
            raise ValueError("too many spans, events, attributes and values in one request")

    def span(self) -> None:
        self.item()
        self.spans -= 1
        if self.spans < 0:
            raise ValueError("too many spans in one request")


def _want(wire: int, expected: int, what: str) -> None:
    if wire != expected:
        raise ValueError("%s has wire type %d, expected %d" % (what, wire, expected))


def _pb_str(data: bytes, span: Tuple[int, int], what: str) -> str:
    try:
        return data[span[0]:span[1]].decode("utf-8")
    except UnicodeDecodeError:
        raise ValueError("%s is not valid UTF-8" % what) from None


def _pb_value(data: bytes, start: int, end: int, depth: int, budget: _Budget) -> Any:
    """An AnyValue as a Python value (None when nothing is set); arrays -> list, kvlists -> dict."""
    if depth > MAX_DEPTH:
        raise ValueError("attribute value nested deeper than %d" % MAX_DEPTH)
    value: Any = None
    for field, wire, v in _fields(data, start, end):
        if field == 1:
            _want(wire, 2, "string_value")
            value = _pb_str(data, v, "string_value")
        elif field == 2:
            _want(wire, 0, "bool_value")
            value = v != 0
        elif field == 3:
            _want(wire, 0, "int_value")
            value = v - (1 << 64) if v > _INT64_MAX else v
        elif field == 4:
            _want(wire, 1, "double_value")
            value = _unpack_d(data, v)[0]
        elif field == 5:
            _want(wire, 2, "array_value")
            items = []
            for f2, w2, v2 in _fields(data, v[0], v[1]):
                if f2 == 1:
                    _want(w2, 2, "array value")
                    budget.item()
                    items.append(_pb_value(data, v2[0], v2[1], depth + 1, budget))
            value = items
        elif field == 6:
            _want(wire, 2, "kvlist_value")
            value = _pb_kvlist(data, v[0], v[1], depth + 1, budget)
        elif field == 7:
            _want(wire, 2, "bytes_value")
            value = bytes(data[v[0]:v[1]])
    return value


def _pb_keyvalue(data: bytes, start: int, end: int, depth: int, budget: _Budget) -> Tuple[str, Any]:
    key = ""
    value = None
    for field, wire, v in _fields(data, start, end):
        if field == 1:
            _want(wire, 2, "attribute key")
            key = _pb_str(data, v, "attribute key")
        elif field == 2:
            _want(wire, 2, "attribute value")
            value = _pb_value(data, v[0], v[1], depth, budget)
    return key, value


def _pb_kvlist(data: bytes, start: int, end: int, depth: int, budget: _Budget) -> Dict[str, Any]:
    """KeyValueList: repeated KeyValue values = 1."""
    out: Dict[str, Any] = {}
    for field, wire, v in _fields(data, start, end):
        if field == 1:
            _want(wire, 2, "kvlist entry")
            budget.item()
            key, value = _pb_keyvalue(data, v[0], v[1], depth, budget)
            out[key] = value
    return out


def _pb_attrs_into(out: Dict[str, Any], data: bytes, span: Tuple[int, int], budget: _Budget) -> None:
    budget.item()
    key, value = _pb_keyvalue(data, span[0], span[1], 0, budget)
    value = _attr_value(value)
    if value is not None:
        out[key] = value
    else:
        out.pop(key, None)


def _pb_event(data: bytes, start: int, end: int, budget: _Budget) -> Dict[str, Any]:
    time_ns = 0
    name = ""
    attrs: Dict[str, Any] = {}
    for field, wire, v in _fields(data, start, end):
        if field == 1:
            _want(wire, 1, "event time_unix_nano")
            time_ns = _unpack_q(data, v)[0]
        elif field == 2:
            _want(wire, 2, "event name")
            name = _pb_str(data, v, "event name")
        elif field == 3:
            _want(wire, 2, "event attribute")
            _pb_attrs_into(attrs, data, v, budget)
    return {"name": name, "time_ns": time_ns, "attributes": attrs}


def _pb_id(data: bytes, span: Tuple[int, int], size: int, what: str) -> str:
    raw = data[span[0]:span[1]]
    if len(raw) != size:
        raise ValueError("%s is %d bytes, expected %d" % (what, len(raw), size))
    return raw.hex()


def _pb_span_record(data: bytes, start: int, end: int, service: str, budget: _Budget) -> Dict[str, Any]:
    trace_id = span_id = parent_id = ""
    trace_state = name = message = ""
    kind = 0
    start_ns = end_ns = 0
    code = 0
    attrs: Dict[str, Any] = {}
    events: List[Dict[str, Any]] = []
    for field, wire, v in _fields(data, start, end):
        if field == 1:
            _want(wire, 2, "trace_id")
            trace_id = _pb_id(data, v, 16, "trace_id")
        elif field == 2:
            _want(wire, 2, "span_id")
            span_id = _pb_id(data, v, 8, "span_id")
        elif field == 3:
            _want(wire, 2, "trace_state")
            trace_state = _pb_str(data, v, "trace_state")
        elif field == 4:
            _want(wire, 2, "parent_span_id")
            parent_id = _pb_id(data, v, 8, "parent_span_id") if v[1] > v[0] else ""
        elif field == 5:
            _want(wire, 2, "name")
            name = _pb_str(data, v, "name")
        elif field == 6:
            _want(wire, 0, "kind")
            kind = v
        elif field == 7:
            _want(wire, 1, "start_time_unix_nano")
            start_ns = _unpack_q(data, v)[0]
        elif field == 8:
            _want(wire, 1, "end_time_unix_nano")
            end_ns = _unpack_q(data, v)[0]
        elif field == 9:
            _want(wire, 2, "attribute")
            _pb_attrs_into(attrs, data, v, budget)
        elif field == 11:
            _want(wire, 2, "event")
            budget.item()
            events.append(_pb_event(data, v[0], v[1], budget))
        elif field == 15:
            _want(wire, 2, "status")
            for f2, w2, v2 in _fields(data, v[0], v[1]):
                if f2 == 2:
                    _want(w2, 2, "status message")
                    message = _pb_str(data, v2, "status message")
                elif f2 == 3:
                    _want(w2, 0, "status code")
                    code = v2
    return _record(trace_id, span_id, parent_id, trace_state, name, kind, start_ns, end_ns, code, message,
                   attrs, events, service)


def _pb_service(data: bytes, start: int, end: int, budget: _Budget) -> str:
    """service.name from a Resource message."""
    service = UNKNOWN_SERVICE
    for field, wire, v in _fields(data, start, end):
        if field == 1:
            _want(wire, 2, "resource attribute")
            budget.item()
            key, value = _pb_keyvalue(data, v[0], v[1], 0, budget)
            if key == "service.name" and isinstance(value, str) and value:
                service = value
    return service


def decode_protobuf(body: bytes, max_spans: int = MAX_SPANS, max_items: int = MAX_ITEMS) -> List[Dict[str, Any]]:
    """Span records from an OTLP ExportTraceServiceRequest (protobuf); ValueError when malformed."""
    if not isinstance(body, (bytes, bytearray, memoryview)):
        raise ValueError("body is not bytes")
    try:
        data = bytes(body)
        budget = _Budget(max_spans, max_items)
        out: List[Dict[str, Any]] = []
        for field, wire, rs in _fields(data, 0, len(data)):
            if field != 1:
                continue
            _want(wire, 2, "resource_spans")
            service = UNKNOWN_SERVICE
            for f2, w2, v2 in _fields(data, rs[0], rs[1]):  # the resource first, wherever it is
                if f2 == 1:
                    _want(w2, 2, "resource")
                    service = _pb_service(data, v2[0], v2[1], budget)
            for f2, w2, v2 in _fields(data, rs[0], rs[1]):
                if f2 != 2:
                    continue
                _want(w2, 2, "scope_spans")
                for f3, w3, v3 in _fields(data, v2[0], v2[1]):
                    if f3 == 2:
                        _want(w3, 2, "span")
                        budget.span()
                        out.append(_pb_span_record(data, v3[0], v3[1], service, budget))
        return out
    except ValueError:
        raise
    except Exception as exc:  # a safety net: nothing but ValueError leaves a decoder
        raise ValueError("malformed OTLP protobuf (%s)" % type(exc).__name__) from None


# ======================================================================================== JSON decode

def _get(obj: Dict[str, Any], camel: str, snake: str) -> Any:
    value = obj.get(camel)
    return obj.get(snake) if value is None else value


def _js_list(value: Any, what: str) -> List[Any]:
    if value is None:
        return []
    if not isinstance(value, list):
        raise ValueError("%s is not a list" % what)
    return value


def _js_obj(value: Any, what: str) -> Dict[str, Any]:
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise ValueError("%s is not an object" % what)
    return value


def _js_str(value: Any, what: str) -> str:
    if value is None:
        return ""
    if not isinstance(value, str):
        raise ValueError("%s is not a string" % what)
    if not value.isascii():
        try:
            value.encode("utf-8")
        except UnicodeEncodeError:  # a lone surrogate (\ud800): no store or exporter could write it
            value = value.encode("utf-8", "backslashreplace").decode("utf-8")
    return value


def _js_int(value: Any, what: str, low: int, high: int) -> int:
    if value is None:
        return 0
    if isinstance(value, bool):
        raise ValueError("%s is not an integer" % what)
    if isinstance(value, int):
        number = value
    elif isinstance(value, float) and value.is_integer():
        number = int(value)
    elif isinstance(value, str) and 0 < len(value) <= 24:
        try:
            number = int(value, 10)
        except ValueError:
            raise ValueError("%s is not an integer" % what) from None
    else:
        raise ValueError("%s is not an integer" % what)
    if not low <= number <= high:
        raise ValueError("%s is out of range" % what)
    return number


def _js_enum(value: Any, names: Dict[str, int], what: str) -> int:
    if isinstance(value, str) and value in names:
        return names[value]
    return _js_int(value, what, -(1 << 31), (1 << 31) - 1)


def _js_id(value: Any, size: int, what: str) -> str:
    text = _js_str(value, what)
    if not text:
        return ""
    if len(text) != size * 2:
        raise ValueError("%s is not %d hex digits" % (what, size * 2))
    try:
        bytes.fromhex(text)
    except ValueError:
        raise ValueError("%s is not hex" % what) from None
    return text.lower()


def _js_value(value: Any, depth: int, budget: _Budget) -> Any:
    if depth > MAX_DEPTH:
        raise ValueError("attribute value nested deeper than %d" % MAX_DEPTH)
    v = _js_obj(value, "attribute value")
    if "stringValue" in v or "string_value" in v:
        return _js_str(_get(v, "stringValue", "string_value"), "stringValue")
    if "boolValue" in v or "bool_value" in v:
        b = _get(v, "boolValue", "bool_value")
        if not isinstance(b, bool):
            raise ValueError("boolValue is not a boolean")
        return b
    if "intValue" in v or "int_value" in v:
        return _js_int(_get(v, "intValue", "int_value"), "intValue", _INT64_MIN, _INT64_MAX)
    if "doubleValue" in v or "double_value" in v:
        d = _get(v, "doubleValue", "double_value")
        if isinstance(d, bool):
            raise ValueError("doubleValue is not a number")
        if isinstance(d, (int, float)):
            return float(d)
        if isinstance(d, str) and len(d) <= 64:
            try:
                return float({"Infinity": "inf", "-Infinity": "-inf"}.get(d, d))
            except ValueError:
                pass
        raise ValueError("doubleValue is not a number")
    if "arrayValue" in v or "array_value" in v:
        array = _js_obj(_get(v, "arrayValue", "array_value"), "arrayValue")
        items = []
        for item in _js_list(array.get("values"), "arrayValue.values"):
            budget.item()
            items.append(_js_value(item, depth + 1, budget))
        return items
    if "kvlistValue" in v or "kvlist_value" in v:
        kvlist = _js_obj(_get(v, "kvlistValue", "kvlist_value"), "kvlistValue")
        out: Dict[str, Any] = {}
        for kv in _js_list(kvlist.get("values"), "kvlistValue.values"):
            kv = _js_obj(kv, "kvlist entry")
            budget.item()
            out[_js_str(kv.get("key"), "attribute key")] = _js_value(kv.get("value"), depth + 1, budget)
        return out
    if "bytesValue" in v or "bytes_value" in v:
        raw = _js_str(_get(v, "bytesValue", "bytes_value"), "bytesValue")
        try:
            return base64.b64decode(raw.replace("-", "+").replace("_", "/") + "=" * (-len(raw) % 4), validate=True)
        except (binascii.Error, ValueError):
            raise ValueError("bytesValue is not base64") from None
    return None


def _js_attrs(value: Any, what: str, budget: _Budget) -> Dict[str, Any]:
    out: Dict[str, Any] = {}
    for kv in _js_list(value, what):
        kv = _js_obj(kv, "attribute")
        budget.item()
        key = _js_str(kv.get("key"), "attribute key")
        item = _attr_value(_js_value(kv.get("value"), 0, budget))
        if item is not None:
            out[key] = item
        else:
            out.pop(key, None)
    return out


def _js_span_record(s: Any, service: str, budget: _Budget) -> Dict[str, Any]:
    s = _js_obj(s, "span")
    code = 0
    message = ""
    status = _js_obj(s.get("status"), "status")
    if status:
        code = _js_enum(status.get("code"), _STATUS_NAMES, "status.code")
        message = _js_str(status.get("message"), "status.message")
    events = []
    for ev in _js_list(s.get("events"), "events"):
        ev = _js_obj(ev, "event")
        budget.item()
        events.append({"name": _js_str(ev.get("name"), "event name"),
                       "time_ns": _js_int(_get(ev, "timeUnixNano", "time_unix_nano"), "timeUnixNano", 0, _U64),
                       "attributes": _js_attrs(ev.get("attributes"), "event attributes", budget)})
    return _record(
        _js_id(_get(s, "traceId", "trace_id"), 16, "traceId"), _js_id(_get(s, "spanId", "span_id"), 8, "spanId"),
        _js_id(_get(s, "parentSpanId", "parent_span_id"), 8, "parentSpanId"),
        _js_str(_get(s, "traceState", "trace_state"), "traceState"), _js_str(s.get("name"), "name"),
        _js_enum(s.get("kind"), _KIND_NAMES, "kind"),
        _js_int(_get(s, "startTimeUnixNano", "start_time_unix_nano"), "startTimeUnixNano", 0, _U64),
        _js_int(_get(s, "endTimeUnixNano", "end_time_unix_nano"), "endTimeUnixNano", 0, _U64),
        code, message, _js_attrs(s.get("attributes"), "attributes", budget), events, service)


def decode_json(body: bytes, max_spans: int = MAX_SPANS, max_items: int = MAX_ITEMS) -> List[Dict[str, Any]]:
    """Span records from an OTLP/JSON ExportTraceServiceRequest; ValueError when malformed."""
    if not isinstance(body, (bytes, bytearray, memoryview, str)):
        raise ValueError("body is not bytes")
    try:
        try:
            doc = json.loads(bytes(body) if isinstance(body, memoryview) else body)
        except RecursionError:
            raise ValueError("JSON nested too deeply") from None
        except ValueError as exc:
            raise ValueError("not JSON (%s)" % str(exc)[:100]) from None
        doc = _js_obj(doc, "request")
        budget = _Budget(max_spans, max_items)
        out: List[Dict[str, Any]] = []
        for rs in _js_list(_get(doc, "resourceSpans", "resource_spans"), "resourceSpans"):
            rs = _js_obj(rs, "resourceSpans entry")
            resource = _js_obj(rs.get("resource"), "resource")
            service = _js_attrs(resource.get("attributes"), "resource attributes", budget).get("service.name")
            if not isinstance(service, str) or not service:
                service = UNKNOWN_SERVICE
            for ss in _js_list(_get(rs, "scopeSpans", "scope_spans"), "scopeSpans"):
                ss = _js_obj(ss, "scopeSpans entry")
                for s in _js_list(ss.get("spans"), "spans"):
                    budget.span()
                    out.append(_js_span_record(s, service, budget))
        return out
    except ValueError:
        raise
    except Exception as exc:  # a safety net: nothing but ValueError leaves a decoder
        raise ValueError("malformed OTLP JSON (%s)" % type(exc).__name__) from None


# ============================================================================================== shared

def _attr_value(value: Any) -> Any:
    """An AnyValue as a record attribute value: str, bool, int, finite float, or a list of those."""
    if value is None or value.__class__ in (str, bool, int):
        return value
    if value.__class__ is float:
        return value if math.isfinite(value) else str(value)
    if value.__class__ is bytes:
        return base64.b64encode(value).decode("ascii")
    if value.__class__ is list:
        return [v if v.__class__ in (str, bool, int) else _nested_text(v) if v.__class__ in (list, dict)
                else _attr_value(v) if v is not None else "" for v in value]
    return _nested_text(value)


def _plain(value: Any) -> Any:
    if value.__class__ is bytes:
        return base64.b64encode(value).decode("ascii")
    if value.__class__ is float and not math.isfinite(value):
        return str(value)
    if value.__class__ is list:
        return [_plain(v) for v in value]
    if value.__class__ is dict:
        return {k: _plain(v) for k, v in value.items()}
    return value


def _nested_text(value: Any) -> str:
    return json.dumps(_plain(value), ensure_ascii=False, separators=(",", ":"))


def _record(trace_id: str, span_id: str, parent_id: str, trace_state: str, name: str, kind: int, start_ns: int,
            end_ns: int, code: int, message: str, attrs: Dict[str, Any], events: List[Dict[str, Any]],
            service: str) -> Dict[str, Any]:
    if not trace_id or trace_id == "0" * 32:
        raise ValueError("span without a valid trace_id")
    if not span_id or span_id == "0" * 16:
        raise ValueError("span without a valid span_id")
    if code == STATUS_ERROR and message and attrs.get("exception.message") != message:
        attrs.setdefault("otel.status_description", message)
    record: Dict[str, Any] = {
        "trace_id": trace_id,
        "span_id": span_id,
        "parent_id": parent_id if parent_id and parent_id != "0" * 16 else None,
        "name": name or "unnamed",
        "kind": OTLP_TO_KIND.get(kind, "internal"),
        "service": service,
        "start_ns": start_ns,
        "duration_ns": max(0, end_ns - start_ns),
        "status": "error" if code == STATUS_ERROR else "ok",
        "attributes": attrs,
        "events": events,
    }
    if trace_state:
        record["trace_state"] = trace_state
    return record
