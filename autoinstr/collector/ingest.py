"""Decoding and strict validation of the bodies agents send to the collector.

Everything here treats its input as hostile: sizes are bounded before work is done, every record is
checked field by field (types, id formats, kinds, int64 ranges, string lengths, attribute counts,
nesting) and rebuilt from the checked values only, and a batch is accepted whole or not at all.
Failures raise `Rejected(status, reason, detail)`; the app turns that into a 4xx with a short JSON body.
"""

from __future__ import annotations

import json
import math
import re
import zlib

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any, Callable, Dict, List, Optional

INT64_MIN, INT64_MAX = -(1 << 63), (1 << 63) - 1

MAX_SPANS_PER_BATCH = 100_000
MAX_NAME_LENGTH = 1024        # span and event names
MAX_SERVICE_LENGTH = 256
MAX_KEY_LENGTH = 256          # attribute keys
MAX_STRING_LENGTH = 1 << 20   # attribute string values (the agent sends 4096 by default)
MAX_ATTRIBUTES = 4096         # per span or event
MAX_LIST_ITEMS = 1024         # items of a list attribute value
MAX_EVENTS = 1024             # per span
MAX_RECORD_FIELDS = 64        # keys of one record (unknown keys are dropped, but bounded)

KINDS = frozenset(("internal", "server", "client", "producer", "consumer"))
STATUSES = frozenset(("ok", "error"))
_HEX32 = re.compile(r"[0-9a-f]{32}\Z")
_HEX16 = re.compile(r"[0-9a-f]{16}\Z")

MSGPACK_TYPES = frozenset(("application/msgpack", "application/x-msgpack", "application/vnd.msgpack"))
JSON_TYPES = frozenset(("application/json",))
PROTOBUF_TYPES = frozenset(("application/x-protobuf", "application/protobuf"))


class Rejected(Exception):
    """A body the collector refuses: HTTP status, a short machine-readable reason, a human detail."""

    def __init__(self, status: int, reason: str, detail: str = "") -> None:
        super().__init__("%d %s: %s" % (status, reason, detail))
        self.status = status
        self.reason = reason
        self.detail = detail


def _invalid(detail: str) -> Rejected:
    return Rejected(400, "invalid_record", detail)


# ------------------------------------------------------------------------------------ bodies

def media_type(content_type: Optional[str]) -> str:
    """`application/json; charset=utf-8` -> `application/json`."""
    return (content_type or "").split(";", 1)[0].strip().lower()


def decompress(body: bytes, encoding: Optional[str], limit: int) -> bytes:
    """Undo Content-Encoding (identity or gzip), never producing more than `limit` bytes (gzip bombs
    stop at the limit with a 413); a truncated or corrupt stream is a 400."""
    enc = (encoding or "").strip().lower()
    if enc in ("", "identity"):
        return body
    if enc not in ("gzip", "x-gzip"):
        raise Rejected(415, "unsupported_encoding", "Content-Encoding %r is not supported (gzip, identity)" % enc[:40])
    d = zlib.decompressobj(16 + zlib.MAX_WBITS)
    try:
        out = d.decompress(body, limit + 1)
    except zlib.error as exc:
        raise Rejected(400, "bad_gzip", "gzip stream is corrupt: %s" % str(exc)[:80])
    if len(out) > limit or d.unconsumed_tail:
        raise Rejected(413, "too_large", "decompressed body exceeds %d bytes" % limit)
    if not d.eof:
        raise Rejected(400, "bad_gzip", "gzip stream is truncated")
    return out


def decode_msgpack(body: bytes) -> Any:
    """A whole msgpack document (small bodies and tests; /v1/spans streams with decode_msgpack_batch)."""
    import msgpack

    n = len(body)
    try:
        # the max_* bounds stop a small body from announcing a huge container; the C unpacker's own
        # stack limit stops deep nesting (StackError); ext types come back as objects validation refuses
        return msgpack.unpackb(body, raw=False, strict_map_key=True, use_list=True, max_str_len=n, max_bin_len=n,
                               max_array_len=min(n, MAX_SPANS_PER_BATCH), max_map_len=min(n, MAX_ATTRIBUTES),
                               max_ext_len=n)
    except Exception as exc:  # ExtraData, FormatError, StackError, ValueError, UnicodeDecodeError...
        raise Rejected(400, "malformed", "not a msgpack document (%s)" % type(exc).__name__)


# Containers one valid record can hold: its own map, attributes, events and theirs; lists as attribute values.
_MAX_MAPS_PER_RECORD = 2 + 2 * MAX_EVENTS
_MAX_LISTS_PER_RECORD = 1 + 2 * MAX_ATTRIBUTES


class _Budget:
    """Counts the containers the unpacker builds for one record, and stops it beyond what a valid record
    can hold: a few KiB of msgpack could otherwise become hundreds of MiB of empty lists and maps."""

    __slots__ = ("maps", "lists")

    def __init__(self) -> None:
        self.maps = self.lists = 0

    def on_map(self, value: Any) -> Any:
        self.maps += 1
        if self.maps > _MAX_MAPS_PER_RECORD:
            raise _invalid("a span record holds more maps than a valid one can")
        return value

    def on_list(self, value: Any) -> Any:
        self.lists += 1
        if self.lists > _MAX_LISTS_PER_RECORD:
            raise _invalid("a span record holds more lists than a valid one can")
        return value


_NOT_A_BATCH = "expected a list of span records (or {\"spans\": [...]})"


def _is_msgpack_map(body: bytes, pos: int) -> bool:
    return pos < len(body) and (0x80 <= body[pos] <= 0x8F or body[pos] in (0xDE, 0xDF))


def _is_msgpack_array(body: bytes, pos: int) -> bool:
    return pos < len(body) and (0x90 <= body[pos] <= 0x9F or body[pos] in (0xDC, 0xDD))


def decode_msgpack_batch(body: bytes) -> List[Dict[str, Any]]:
    """/v1/spans msgpack: an array of span records (or a map {"spans": array}), unpacked one record at a
    time and validated at once, so that hostile input is refused before much of it is built. Every
    container is bounded (arrays 1024 items but the batch itself, maps 4096 entries), and so is the
    number of containers per record; deep nesting stops at the unpacker's stack limit."""
    import msgpack

    budget = _Budget()
    unpacker = msgpack.Unpacker(raw=False, strict_map_key=True, use_list=True, max_buffer_size=max(1, len(body)),
                                max_str_len=MAX_STRING_LENGTH, max_bin_len=MAX_STRING_LENGTH, max_ext_len=1024,
                                max_array_len=max(MAX_LIST_ITEMS, MAX_EVENTS), max_map_len=MAX_ATTRIBUTES,
                                object_hook=budget.on_map, list_hook=budget.on_list)
    out: List[Dict[str, Any]] = []
    try:
        unpacker.feed(body)
        if _is_msgpack_map(body, 0) and (  # {"spans": [...]}
                unpacker.read_map_header() != 1 or unpacker.unpack() != "spans"):
            raise Rejected(400, "invalid_batch", _NOT_A_BATCH)
        if not _is_msgpack_array(body, unpacker.tell()):
            raise Rejected(400, "invalid_batch", _NOT_A_BATCH)
        count = unpacker.read_array_header()
        if count > MAX_SPANS_PER_BATCH:
            raise Rejected(413, "too_many_spans", "a batch holds at most %d spans" % MAX_SPANS_PER_BATCH)
        for i in range(count):
            budget.maps = budget.lists = 0
            out.append(validate_record(unpacker.unpack(), i))
        if unpacker.tell() != len(body):
            raise Rejected(400, "malformed", "data after the batch")
    except Rejected:
        raise
    except Exception as exc:  # OutOfData (truncated), FormatError, StackError, ValueError, UnicodeDecodeError...
        raise Rejected(400, "malformed", "not a msgpack batch (%s)" % type(exc).__name__)
    return out


def _no_constant(name: str) -> Any:
    raise ValueError("%s is not JSON" % name)


def decode_json(body: bytes) -> Any:
    try:
        text = body.decode("utf-8")
        return json.loads(text, parse_constant=_no_constant)
    except RecursionError:
        raise Rejected(400, "malformed", "JSON nested too deeply")
    except Exception as exc:
        raise Rejected(400, "malformed", "not a JSON document (%s)" % type(exc).__name__)


def batch_of(doc: Any) -> List[Any]:
    """The list of records of a decoded /v1/spans body: a list, or {"spans": [...]}."""
    if isinstance(doc, dict) and len(doc) == 1 and "spans" in doc:
        doc = doc["spans"]
    if not isinstance(doc, list):
        raise Rejected(400, "invalid_batch", "expected a list of span records (or {\"spans\": [...]})")
    if len(doc) > MAX_SPANS_PER_BATCH:
        raise Rejected(413, "too_many_spans", "a batch holds at most %d spans" % MAX_SPANS_PER_BATCH)
    return doc


def decode_spans_body(body: bytes, content_type: Optional[str]) -> List[Dict[str, Any]]:
    """/v1/spans, validated records: msgpack (what agents send) or JSON (span records, as `autoinstr spans
    --json` prints them)."""
    mt = media_type(content_type)
    if mt in MSGPACK_TYPES:
        return decode_msgpack_batch(body)
    if mt in JSON_TYPES:
        return validate_batch(batch_of(decode_json(body)))
    raise Rejected(415, "unsupported_media_type",
                   "Content-Type %r is not supported here (application/msgpack, application/json)" % mt[:60])


def otlp_decoders() -> Optional[Dict[str, Callable[[bytes], List[Dict[str, Any]]]]]:
    """The OTLP decoders of autoinstr.export.otlp, if this build has them."""
    try:
        from autoinstr.export import otlp
    except Exception:
        return None
    proto, js = getattr(otlp, "decode_protobuf", None), getattr(otlp, "decode_json", None)
    if not callable(proto) or not callable(js):
        return None
    return {"protobuf": proto, "json": js}


def decode_otlp_body(body: bytes, content_type: Optional[str]) -> List[Dict[str, Any]]:
    """/v1/traces: an OTLP ExportTraceServiceRequest, protobuf or JSON by Content-Type."""
    mt = media_type(content_type)
    if mt in PROTOBUF_TYPES:
        kind = "protobuf"
    elif mt in JSON_TYPES:
        kind = "json"
    else:
        raise Rejected(415, "unsupported_media_type",
                       "Content-Type %r is not supported here (application/x-protobuf, application/json)" % mt[:60])
    decoders = otlp_decoders()
    if decoders is None:
        raise Rejected(415, "unsupported_media_type", "this collector build has no OTLP decoder")
    try:
        records = decoders[kind](body)
    except RecursionError:
        raise Rejected(400, "malformed", "OTLP body nested too deeply")
    except Exception as exc:  # ValueError by contract; anything else from hostile input is still the body's fault
        raise Rejected(400, "malformed", "not an OTLP %s request (%s)" % (kind, str(exc)[:120] or type(exc).__name__))
    if not isinstance(records, list):
        raise Rejected(400, "malformed", "OTLP decoder returned no list")
    if len(records) > MAX_SPANS_PER_BATCH:
        raise Rejected(413, "too_many_spans", "a batch holds at most %d spans" % MAX_SPANS_PER_BATCH)
    return validate_batch(records)


# ------------------------------------------------------------------------------- validation

def _is_int(value: Any) -> bool:
    return value.__class__ is int  # not bool, not an int subclass


def _string(value: Any, what: str, limit: int, allow_empty: bool = False) -> str:
    if value.__class__ is not str:
        raise _invalid("%s must be a string" % what)
    if len(value) > limit:
        raise _invalid("%s is longer than %d characters" % (what, limit))
    if not value and not allow_empty:
        raise _invalid("%s is empty" % what)
    return value


def _int64(value: Any, what: str, low: int = INT64_MIN) -> int:
    if not _is_int(value):
        raise _invalid("%s must be an integer" % what)
    if not low <= value <= INT64_MAX:
        raise _invalid("%s is outside %d..int64" % (what, low))
    return value


def _hex_id(value: Any, what: str, pattern: Any, digits: int) -> str:
    if value.__class__ is not str or not pattern.match(value):
        raise _invalid("%s must be %d lowercase hex digits" % (what, digits))
    if value == "0" * digits:
        raise _invalid("%s must not be all zeros" % what)
    return value


def _scalar(value: Any, what: str) -> Any:
    cls = value.__class__
    if cls is str:
        if len(value) > MAX_STRING_LENGTH:
            raise _invalid("%s is longer than %d characters" % (what, MAX_STRING_LENGTH))
        return value
    if cls is bool:
        return value
    if cls is int:
        if not INT64_MIN <= value <= INT64_MAX:
            raise _invalid("%s is outside int64" % what)
        return value
    if cls is float:
        if not math.isfinite(value):
            raise _invalid("%s is not a finite number" % what)
        return value
    raise _invalid("%s has an unsupported type" % what)


def _attributes(value: Any, what: str) -> Dict[str, Any]:
    if value is None:
        return {}
    if value.__class__ is not dict:
        raise _invalid("%s must be a map" % what)
    if len(value) > MAX_ATTRIBUTES:
        raise _invalid("%s has more than %d entries" % (what, MAX_ATTRIBUTES))
    out: Dict[str, Any] = {}
    for key, item in value.items():
        if key.__class__ is not str or not key or len(key) > MAX_KEY_LENGTH:
            raise _invalid("%s has a key that is not a string of 1..%d characters" % (what, MAX_KEY_LENGTH))
        if item.__class__ is list:  # one level only: a list of scalars
            if len(item) > MAX_LIST_ITEMS:
                raise _invalid("%s[%r] has more than %d items" % (what, key[:40], MAX_LIST_ITEMS))
            out[key] = [_scalar(v, "%s[%r] item" % (what, key[:40])) for v in item]
        else:
            out[key] = _scalar(item, "%s[%r]" % (what, key[:40]))
    return out


def _events(value: Any, what: str) -> List[Dict[str, Any]]:
    if value is None:
        return []
    if value.__class__ is not list:
        raise _invalid("%s must be a list" % what)
    if len(value) > MAX_EVENTS:
        raise _invalid("%s has more than %d events" % (what, MAX_EVENTS))
    out = []
    for i, ev in enumerate(value):
        w = "%s[%d]" % (what, i)
        if ev.__class__ is not dict:
            raise _invalid("%s must be a map" % w)
        if len(ev) > MAX_RECORD_FIELDS:
            raise _invalid("%s has too many fields" % w)
        out.append({"name": _string(ev.get("name"), w + ".name", MAX_NAME_LENGTH),
                    "time_ns": _int64(ev.get("time_ns"), w + ".time_ns", 0),
                    "attributes": _attributes(ev.get("attributes"), w + ".attributes")})
    return out


def validate_record(rec: Any, index: int = 0) -> Dict[str, Any]:
    """One span record, checked strictly and rebuilt from the checked values (unknown fields dropped)."""
    w = "span %d" % index
    if rec.__class__ is not dict:
        raise _invalid("%s is not a map" % w)
    if len(rec) > MAX_RECORD_FIELDS:
        raise _invalid("%s has too many fields" % w)
    for field in ("trace_id", "span_id", "name", "kind", "service", "start_ns", "duration_ns", "status"):
        if field not in rec:
            raise _invalid("%s has no %s" % (w, field))
    parent = rec.get("parent_id")
    kind = rec["kind"]
    if kind.__class__ is not str or kind not in KINDS:
        raise _invalid("%s.kind must be one of %s" % (w, ", ".join(sorted(KINDS))))
    status = rec["status"]
    if status.__class__ is not str or status not in STATUSES:
        raise _invalid("%s.status must be ok or error" % w)
    return {
        "trace_id": _hex_id(rec["trace_id"], w + ".trace_id", _HEX32, 32),
        "span_id": _hex_id(rec["span_id"], w + ".span_id", _HEX16, 16),
        "parent_id": None if parent is None else _hex_id(parent, w + ".parent_id", _HEX16, 16),
        "name": _string(rec["name"], w + ".name", MAX_NAME_LENGTH),
        "kind": kind,
        "service": _string(rec["service"], w + ".service", MAX_SERVICE_LENGTH),
        "start_ns": _int64(rec["start_ns"], w + ".start_ns", 0),
        "duration_ns": _int64(rec["duration_ns"], w + ".duration_ns", 0),
        "status": status,
        "attributes": _attributes(rec.get("attributes"), w + ".attributes"),
        "events": _events(rec.get("events"), w + ".events"),
    }


def validate_batch(records: List[Any]) -> List[Dict[str, Any]]:
    """Every record valid, or Rejected for the whole batch (all-or-nothing)."""
    return [validate_record(rec, i) for i, rec in enumerate(records)]
