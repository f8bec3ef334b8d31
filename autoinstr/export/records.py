"""Finished spans -> the span record of DESIGN.md, on the flush thread.

This is where the request thread's cheap raw data (int ids, monotonic clocks, any attribute values)
becomes the documented record: hex ids, wall-clock nanoseconds, bounded JSON-safe attributes.
"""

from __future__ import annotations

import time

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any, Dict, List, Optional

    from autoinstr.trace.span import Span

_INT64_MIN, _INT64_MAX = -(1 << 63), (1 << 63) - 1
MAX_KEY_LENGTH = 256
MAX_NAME_LENGTH = 1024
MAX_LIST_ITEMS = 128


def wall_offset_ns() -> int:
    """Add to a perf_counter_ns reading to get wall-clock ns. Read afresh at each flush, so a clock
    step moves later spans, not the whole process's history."""
    return time.time_ns() - time.perf_counter_ns()


def _text(value: Any, limit: int) -> str:
    if isinstance(value, bytes):
        value = value.decode("utf-8", "backslashreplace")
    elif not isinstance(value, str):
        try:
            value = str(value)
        except Exception:
            try:
                value = object.__repr__(value)
            except Exception:
                value = "<unprintable>"
    else:
        # lone surrogates cannot be encoded as UTF-8 by any exporter
        try:
            value.encode("utf-8")
        except UnicodeEncodeError:
            value = value.encode("utf-8", "backslashreplace").decode("utf-8")
    return value if len(value) <= limit else value[:limit]


def _big_int(value: int) -> str:
    """Beyond int64 no exporter can carry it as a number; as text, within Python's digit limit."""
    try:
        return str(value)
    except ValueError:  # more digits than int-to-str allows
        return "<int of %d bits>" % value.bit_length()


def clean_value(value: Any, limit: int) -> Any:
    """A JSON-, msgpack- and OTLP-safe attribute value: str, bool, int64, finite float, or a list of them."""
    cls = value.__class__
    if cls is str:
        return value if len(value) <= limit and value.isascii() else _text(value, limit)
    if cls is bool:
        return value
    if cls is int:
        return value if _INT64_MIN <= value <= _INT64_MAX else _big_int(value)
    if cls is float:
        return value if value == value and value not in (float("inf"), float("-inf")) else str(value)
    if isinstance(value, (list, tuple)):
        return [clean_value(v, limit) if isinstance(v, (str, bool, int, float)) else _text(v, limit)
                for v in list(value)[:MAX_LIST_ITEMS]]
    if isinstance(value, bool):
        return bool(value)
    if isinstance(value, int):
        return clean_value(int(value), limit)
    if isinstance(value, float):
        return clean_value(float(value), limit)
    return _text(value, limit)


def clean_attributes(attrs: Dict[Any, Any], max_count: int, limit: int) -> Dict[str, Any]:
    """Bounded, exportable attributes. The common cases (short ASCII strings, ints, bools) are checked
    inline: this runs once per span on the flush thread, which shares the GIL with the app."""
    out: Dict[str, Any] = {}
    try:
        items = list(attrs.items())
    except Exception:
        return out
    if len(items) > max_count:
        items = items[:max_count]
    for key, value in items:
        if key.__class__ is not str or len(key) > MAX_KEY_LENGTH:
            key = _text(key, MAX_KEY_LENGTH)
        cls = value.__class__
        if cls is str:
            if len(value) > limit or not value.isascii():
                value = _text(value, limit)
        elif cls is int:
            if not _INT64_MIN <= value <= _INT64_MAX:
                value = _big_int(value)
        elif cls is bool:
            pass
        elif value is None:
            continue
        else:
            try:
                value = clean_value(value, limit)
            except Exception:
                value = "<unserializable>"
        out[key] = value
    return out


def to_record(span: Span, service: str, offset: int, max_attributes: int, max_length: int) -> Dict[str, Any]:
    start = span.start_ns
    parent_id = span.parent_id
    events: List[Dict[str, Any]] = []
    raw_events = span._events
    if raw_events:
        for ev in raw_events:
            events.append({"name": _text(ev.get("name", ""), MAX_NAME_LENGTH),
                           "time_ns": int(ev.get("time_mono_ns", start)) + offset,
                           "attributes": clean_attributes(ev.get("attributes") or {}, max_attributes, max_length)})
    name = span.name
    kind = span.kind
    attrs = span.attributes
    return {
        "trace_id": "%032x" % span.root._trace_id,
        "span_id": "%016x" % span.span_id,
        "parent_id": "%016x" % parent_id if parent_id else None,
        "name": name if name.__class__ is str and 0 < len(name) <= MAX_NAME_LENGTH
        else (_text(name, MAX_NAME_LENGTH) or "unnamed"),
        "kind": kind if kind in _KINDS else "internal",
        "service": service,
        "start_ns": start + offset,
        "duration_ns": max(0, (span.end_ns or start) - start),
        "status": "error" if span._status == "error" else "ok",
        "attributes": clean_attributes(attrs, max_attributes, max_length) if attrs else {},
        "events": events,
    }


_KINDS = frozenset(("internal", "server", "client", "producer", "consumer"))


def records_of(batches: List[List[Span]], service: str, max_attributes: int, max_length: int,
               not_before_ns: int = 0, errors: Optional[List[str]] = None) -> List[Dict[str, Any]]:
    """Convert queued local traces; spans started before `not_before_ns` (inherited over fork from the
    parent process, which exports them itself) are skipped, as is any span that cannot be converted."""
    offset = wall_offset_ns()
    out = []
    for spans in batches:
        for span in spans:
            if span.start_ns < not_before_ns:
                continue
            try:
                out.append(to_record(span, service, offset, max_attributes, max_length))
            except Exception as exc:
                if errors is not None:
                    errors.append("%s: %s" % (type(exc).__name__, exc))
    return out
