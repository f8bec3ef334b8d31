"""Trace context on the wire: W3C traceparent/tracestate and baggage, B3 single and multi header.

One module serves every direction: extraction by the web integrations, injection by the HTTP clients,
and `autoinstr.inject` / `autoinstr.extract` for protocols the agent does not know.
"""

from __future__ import annotations

from urllib.parse import quote, unquote

from autoinstr import config
from autoinstr.trace.span import Span, SpanContext, current_span

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any, Callable, Dict, Iterable, MutableMapping, Optional, Tuple

    Getter = Callable[[Any, str], Optional[str]]

_TS_MAX_MEMBERS = 32
_TS_MAX_LEN = 512  # what we keep; longer states are cut at a member boundary (W3C: SHOULD propagate >= 512)
_BAGGAGE_MAX_MEMBERS = 180
_BAGGAGE_MAX_BYTES = 8192


class _Patterns:
    """The header grammars, compiled at first use: compiling them costs about 4 million instructions (a
    millisecond or more), which every process would pay at start-up, most never seeing such a header."""

    hex: Any = None
    traceparent: Any = None
    ts_key: Any = None  # tracestate keys per W3C Trace Context level 1 (simple keys up to 256 chars, tenant@system)
    ts_value: Any = None
    token: Any = None


def _patterns() -> type[_Patterns]:
    if _Patterns.token is None:
        import re

        _Patterns.hex = re.compile(r"[0-9a-f]+\Z")
        _Patterns.traceparent = re.compile(r"([0-9a-f]{2})-([0-9a-f]{32})-([0-9a-f]{16})-([0-9a-f]{2})(-.*)?\Z")
        _Patterns.ts_key = re.compile(
            r"(?:[a-z][a-z0-9_\-*/]{0,255}|[a-z0-9][a-z0-9_\-*/]{0,240}@[a-z][a-z0-9_\-*/]{0,13})\Z")
        _Patterns.ts_value = re.compile(r"[\x20-\x2b\x2d-\x3c\x3e-\x7e]{0,255}[\x21-\x2b\x2d-\x3c\x3e-\x7e]\Z")
        _Patterns.token = re.compile(r"[!#$%&'*+\-.^_`|~0-9A-Za-z]+\Z")  # (last: the flag that all are set)
    return _Patterns


def default_getter(carrier: Any, key: str) -> Optional[str]:
    """A header from a dict-like carrier, whatever the case of its keys; a list value gives its first item."""
    value = None
    try:
        value = carrier.get(key)
        if value is None:
            lower = key.lower()
            value = carrier.get(lower)
            if value is None:
                for k in carrier:
                    if isinstance(k, str) and k.lower() == lower:
                        value = carrier[k]
                        break
    except Exception:
        return None
    if isinstance(value, (list, tuple)):
        if key.lower() in ("tracestate", "baggage"):  # list-valued headers: members of one list
            value = ",".join(str(v) for v in value)
        else:
            value = value[0] if value else None
    if isinstance(value, bytes):
        value = value.decode("latin-1")
    return value if isinstance(value, str) else None


# ------------------------------------------------------------------------------------------- W3C

def parse_traceparent(value: Optional[str]) -> Optional[Tuple[int, int, bool]]:
    """-> (trace_id, span_id, sampled), or None if the header is invalid (then it is ignored, per W3C)."""
    if not value:
        return None
    value = value.strip(" \t")
    m = _patterns().traceparent.match(value)
    if m is None:
        return None
    version, trace_hex, span_hex, flags_hex, rest = m.groups()
    if version == "ff":
        return None
    if version == "00" and rest is not None:
        return None  # version 00 is exactly 55 characters
    # A higher version may append fields after a dash; we read the first four as version 00 says.
    trace_id, span_id = int(trace_hex, 16), int(span_hex, 16)
    if not trace_id or not span_id:
        return None
    return trace_id, span_id, bool(int(flags_hex, 16) & 1)


def format_traceparent(trace_id: int, span_id: int, sampled: bool) -> str:
    return "00-%032x-%016x-%s" % (trace_id, span_id, "01" if sampled else "00")


def parse_tracestate(value: Optional[str]) -> str:
    """A validated tracestate, normalized (no empty members); "" when absent or invalid, since a state
    that cannot be parsed must not be passed on. Longer states are cut at member boundaries."""
    if not value:
        return ""
    members = []
    seen = set()
    patterns = _patterns()
    for raw in value.split(","):
        member = raw.strip(" \t")
        if not member:
            continue
        key, eq, val = member.partition("=")
        if not eq or not patterns.ts_key.match(key) or not patterns.ts_value.match(val) or key in seen:
            return ""
        seen.add(key)
        members.append(member)
    if len(members) > _TS_MAX_MEMBERS:
        return ""
    return _cut_tracestate(members)


def _cut_tracestate(members: list) -> str:
    out = ",".join(members)
    if len(out) <= _TS_MAX_LEN:
        return out
    # W3C: drop members longer than 128 characters first, then from the end
    kept = [m for m in members if len(m) <= 128]
    while kept and len(",".join(kept)) > _TS_MAX_LEN:
        kept.pop()
    return ",".join(kept)


# --------------------------------------------------------------------------------------- baggage

def parse_baggage(value: Optional[str]) -> Dict[str, str]:
    out: Dict[str, str] = {}
    if not value or len(value.encode("utf-8", "replace")) > _BAGGAGE_MAX_BYTES:
        return out
    token = _patterns().token
    for raw in value.split(","):
        if len(out) >= _BAGGAGE_MAX_MEMBERS:
            break
        item = raw.split(";", 1)[0].strip(" \t")
        key, eq, val = item.partition("=")
        key, val = key.strip(" \t"), val.strip(" \t")
        if not eq or not token.match(key):
            continue
        try:
            out[unquote(key, errors="strict")] = unquote(val, errors="strict")
        except UnicodeDecodeError:
            continue
    return out


def format_baggage(baggage: Dict[str, str]) -> str:
    parts = []
    size = 0
    for k, v in baggage.items():
        part = "%s=%s" % (quote(str(k), safe=""), quote(str(v), safe=""))
        if len(parts) >= _BAGGAGE_MAX_MEMBERS or size + len(part) + 1 > _BAGGAGE_MAX_BYTES:
            break
        parts.append(part)
        size += len(part) + 1
    return ",".join(parts)


# -------------------------------------------------------------------------------------------- B3

def _b3_ids(trace_hex: str, span_hex: str) -> Optional[Tuple[int, int]]:
    trace_hex, span_hex = trace_hex.lower(), span_hex.lower()
    if len(trace_hex) not in (16, 32) or len(span_hex) != 16 or not _patterns().hex.match(trace_hex) or \
            not _patterns().hex.match(span_hex):
        return None
    trace_id, span_id = int(trace_hex, 16), int(span_hex, 16)
    if not trace_id or not span_id:
        return None
    return trace_id, span_id


def _b3_sampled(flag: Optional[str]) -> Optional[bool]:
    if flag is None:
        return None
    flag = flag.strip().lower()
    if flag in ("1", "d", "true"):
        return True
    if flag in ("0", "false"):
        return False
    return None


def parse_b3_single(value: Optional[str]) -> Optional[Tuple[int, int, Optional[bool]]]:
    if not value:
        return None
    parts = value.strip().split("-")
    if len(parts) < 2:
        return None  # "0"/"1"/"d" alone: a sampling decision without ids, nothing to continue
    ids = _b3_ids(parts[0], parts[1])
    if ids is None or len(parts) > 4:
        return None
    sampled = _b3_sampled(parts[2]) if len(parts) > 2 else None
    if len(parts) > 2 and sampled is None:
        return None
    return ids[0], ids[1], sampled


def parse_b3_multi(carrier: Any, getter: Getter) -> Optional[Tuple[int, int, Optional[bool]]]:
    trace_hex, span_hex = getter(carrier, "X-B3-TraceId"), getter(carrier, "X-B3-SpanId")
    if not trace_hex or not span_hex:
        return None
    ids = _b3_ids(trace_hex.strip(), span_hex.strip())
    if ids is None:
        return None
    debug = (getter(carrier, "X-B3-Flags") or "").strip() == "1"
    sampled = True if debug else _b3_sampled(getter(carrier, "X-B3-Sampled"))
    return ids[0], ids[1], sampled


# ------------------------------------------------------------------------------------ the API

class Propagators:
    """The configured propagators (AUTOINSTR_PROPAGATORS / OTEL_PROPAGATORS), in order."""

    names: Tuple[str, ...] = config.get().propagators


def extract(carrier: Any, getter: Optional[Getter] = None,
            propagators: Optional[Iterable[str]] = None) -> Optional[SpanContext]:
    """The trace context a carrier (headers dict, message properties...) brings, or None.

    The first configured propagator that finds a valid context wins; invalid headers are ignored. Use the
    result as a parent: `with autoinstr.span("handle", kind="consumer", parent=ctx):`.
    """
    try:
        get = getter or default_getter
        names = tuple(propagators) if propagators is not None else Propagators.names
        found: Optional[SpanContext] = None
        baggage: Optional[Dict[str, str]] = None
        for name in names:
            if found is None:
                if name == "tracecontext":
                    tp = parse_traceparent(get(carrier, "traceparent"))
                    if tp is not None:
                        found = SpanContext(tp[0], tp[1], tp[2], parse_tracestate(get(carrier, "tracestate")))
                elif name == "b3":
                    b3 = parse_b3_single(get(carrier, "b3"))
                    if b3 is None:
                        b3 = parse_b3_multi(carrier, get)
                    if b3 is not None:
                        found = SpanContext(*b3)
                elif name == "b3multi":
                    b3 = parse_b3_multi(carrier, get)
                    if b3 is None:
                        b3 = parse_b3_single(get(carrier, "b3"))
                    if b3 is not None:
                        found = SpanContext(*b3)
            if name == "baggage":
                baggage = parse_baggage(get(carrier, "baggage")) or None
        if found is None:
            return SpanContext(0, 0, None, "", baggage) if baggage else None
        found.baggage = baggage
        return found
    except Exception:  # a hostile carrier must never break the app
        return None


def inject(carrier: MutableMapping[str, str], span: Any = None,
           propagators: Optional[Iterable[str]] = None) -> MutableMapping[str, str]:
    """Write the headers of the configured propagators for `span` (default: the current span) into
    `carrier`, and return it. Nothing is written when there is no span."""
    try:
        ctx = span if span is not None else current_span()
        if ctx is None:
            return carrier
        if isinstance(ctx, Span):
            ctx = ctx.context
        if not isinstance(ctx, SpanContext) or not ctx.trace_id:
            return carrier
        names = tuple(propagators) if propagators is not None else Propagators.names
        sampled = bool(ctx.sampled)
        for name in names:
            if name == "tracecontext":
                carrier["traceparent"] = format_traceparent(ctx.trace_id, ctx.span_id, sampled)
                if ctx.tracestate:
                    carrier["tracestate"] = ctx.tracestate
            elif name == "baggage":
                if ctx.baggage:
                    carrier["baggage"] = format_baggage(ctx.baggage)
            elif name == "b3":
                carrier["b3"] = "%032x-%016x-%s" % (ctx.trace_id, ctx.span_id, "1" if sampled else "0")
            elif name == "b3multi":
                carrier["X-B3-TraceId"] = "%032x" % ctx.trace_id
                carrier["X-B3-SpanId"] = "%016x" % ctx.span_id
                carrier["X-B3-Sampled"] = "1" if sampled else "0"
    except Exception:
        pass
    return carrier
