"""Trace context on the wire: W3C traceparent/tracestate, baggage, B3 single and multi."""

from __future__ import annotations

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from autoinstr.trace import propagation
from autoinstr.trace.propagation import (
    Propagators,
    default_getter,
    extract,
    format_baggage,
    format_traceparent,
    inject,
    parse_b3_multi,
    parse_b3_single,
    parse_baggage,
    parse_traceparent,
    parse_tracestate,
)
from autoinstr.trace.span import Sampling, Span, SpanContext

TID = "4bf92f3577b34da6a3ce929d0e0e4736"
SID = "00f067aa0ba902b7"
TP = f"00-{TID}-{SID}-01"

# ---------------------------------------------------------------------------------- traceparent


@pytest.mark.parametrize("header,expected", [
    (TP, (int(TID, 16), int(SID, 16), True)),
    (f"00-{TID}-{SID}-00", (int(TID, 16), int(SID, 16), False)),
    (f"00-{TID}-{SID}-03", (int(TID, 16), int(SID, 16), True)),  # other flag bits ignored
    (f"00-{TID}-{SID}-02", (int(TID, 16), int(SID, 16), False)),
    (f"  {TP}\t", (int(TID, 16), int(SID, 16), True)),  # optional whitespace around the value
    (f"01-{TID}-{SID}-01-what-the-future-holds", (int(TID, 16), int(SID, 16), True)),
    (f"cc-{TID}-{SID}-01", (int(TID, 16), int(SID, 16), True)),  # a future version, same length
])
def test_traceparent_valid(header, expected):
    assert parse_traceparent(header) == expected


@pytest.mark.parametrize("header", [
    None,
    "",
    f"00-{TID.upper()}-{SID}-01",  # uppercase hex
    f"00-{TID}-{SID.upper()}-01",
    f"00-{TID}-{SID}-0A",
    f"0A-{TID}-{SID}-01",
    "00-{}-{}-01".format("0" * 32, SID),  # all-zero trace id
    "00-{}-{}-01".format(TID, "0" * 16),  # all-zero span id
    f"ff-{TID}-{SID}-01",  # version ff is forbidden
    f"00-{TID}-{SID}-01-extra",  # version 00 has exactly four fields
    f"00-{TID}-{SID}-01-",
    f"01-{TID}-{SID}-01extra",  # a future version's extra field needs its dash
    f"00-{TID[:-1]}-{SID}-01",  # wrong lengths
    f"00-{TID}0-{SID}-01",
    f"00-{TID}-{SID[:-1]}-01",
    f"00-{TID}-{SID}0-01",
    f"00-{TID}-{SID}-1",
    f"0-{TID}-{SID}-01",
    f"000-{TID}-{SID}-01",
    f"00_{TID}_{SID}_01",
    f"00-{TID}-{SID}",
    "00-{}-{}-01".format("g" + TID[1:], SID),  # not hex
    f"00-{TID}-{SID}-zz",
    "garbage",
])
def test_traceparent_invalid(header):
    assert parse_traceparent(header) is None


def test_traceparent_format():
    assert format_traceparent(int(TID, 16), int(SID, 16), True) == TP
    assert format_traceparent(1, 2, False) == f"00-{1:032x}-{2:016x}-00"


# ----------------------------------------------------------------------------------- tracestate


@pytest.mark.parametrize("value,expected", [
    ("congo=t61rcWkgMzE", "congo=t61rcWkgMzE"),
    ("rojo=00f067aa0ba902b7,congo=t61rcWkgMzE", "rojo=00f067aa0ba902b7,congo=t61rcWkgMzE"),
    ("rojo=1 , congo=2", "rojo=1,congo=2"),  # optional whitespace around members
    ("rojo=1,,congo=2", "rojo=1,congo=2"),  # empty members allowed
    ("fw529a3039@dt=aGVsbG8", "fw529a3039@dt=aGVsbG8"),  # tenant@system
    ("0tenant@sys-1_*/=v", "0tenant@sys-1_*/=v"),
    ("a-b_c*d/e=x", "a-b_c*d/e=x"),
    ("k=" + "v" * 256, "k=" + "v" * 256),  # 256 characters is the longest value
    ("k=a b", "k=a b"),  # inner spaces are allowed in values
    ("k=!~", "k=!~"),
    ("a" * 256 + "=v", "a" * 256 + "=v"),  # longest simple key
    (",".join(f"k{i}=v" for i in range(32)), ",".join(f"k{i}=v" for i in range(32))),
])
def test_tracestate_valid(value, expected):
    assert parse_tracestate(value) == expected


@pytest.mark.parametrize("value", [
    "Rojo=1",  # uppercase key
    "1abc=1",  # simple keys start with a letter
    "rojo",  # no '='
    "=1",
    "rojo=1,rojo=2",  # duplicate keys: dropped
    ",".join(f"k{i}=v" for i in range(33)),  # more than 32 members: dropped
    "k=v=w",  # '=' not allowed in values
    "k=a,b",  # 'b' is not a member
    "k=" + "v" * 257,  # value too long
    "k=",  # empty value
    "k= ",
    "k=\x7f",
    "k=caf\u00e9",
    "a" * 257 + "=v",  # key too long
    "tenant@Sys=1",  # system id starts with a letter, lowercase
    "tenant@1sys=1",
    "t@" + "s" * 15 + "=1",  # system id too long (max 14)
    "t" * 242 + "@s=1",  # tenant id too long (max 241)
    "a@b@c=1",
    "k\u00e9=1",
])
def test_tracestate_invalid(value):
    assert parse_tracestate(value) == ""


def test_tracestate_long_is_cut_at_member_boundaries():
    members = [f"k{i:02d}=" + "v" * 40 for i in range(20)]  # 20 * 44 chars > 512
    out = parse_tracestate(",".join(members))
    assert 0 < len(out) <= 512
    kept = out.split(",")
    assert kept == members[: len(kept)]


def test_tracestate_ignored_without_valid_traceparent():
    assert extract({"tracestate": "rojo=1"}, propagators=("tracecontext",)) is None
    ctx = extract({"traceparent": TP, "tracestate": "rojo=1,rojo=2"}, propagators=("tracecontext",))
    assert ctx is not None and ctx.tracestate == ""


# -------------------------------------------------------------------------------------- baggage


def test_baggage_parse():
    assert parse_baggage("userId=alice,serverNode=DF%2028,isProduction=false") == {
        "userId": "alice", "serverNode": "DF 28", "isProduction": "false"}
    assert parse_baggage(" k = v ; prop=1 ; flag , k2=v2") == {"k": "v", "k2": "v2"}  # properties ignored
    assert parse_baggage("bad key=1,ok=2,novalue,=x") == {"ok": "2"}
    assert parse_baggage("k=%E2%82%AC") == {"k": "\u20ac"}
    assert parse_baggage("k=%FF") == {}  # not UTF-8: the member is dropped
    assert parse_baggage("") == {} and parse_baggage(None) == {}
    assert parse_baggage("k=" + "v" * 9000) == {}  # over 8192 bytes: ignored


def test_baggage_format_percent_encodes():
    out = format_baggage({"user id": "a,b;c=d", "euro": "\u20ac", "plain": "x"})
    assert " " not in out and ";" not in out
    assert out.count(",") == 2 and out.count("=") == 3
    assert parse_baggage(out) == {"user id": "a,b;c=d", "euro": "\u20ac", "plain": "x"}


@given(st.dictionaries(st.text(min_size=1, max_size=20),
                       st.text(max_size=40), max_size=10))
@settings(max_examples=200, suppress_health_check=[HealthCheck.too_slow], deadline=None)
def test_baggage_round_trip(baggage):
    # lone surrogates are not text that can travel in a header
    baggage = {k: v for k, v in baggage.items() if _utf8(k) and _utf8(v)}
    assert parse_baggage(format_baggage(baggage)) == baggage


def _utf8(s: str) -> bool:
    try:
        s.encode("utf-8")
        return True
    except UnicodeEncodeError:
        return False


def test_baggage_travels_with_context(collected):
    ctx = extract({"traceparent": TP, "baggage": "user=alice"})
    assert ctx.baggage == {"user": "alice"}
    with Span("server", parent=ctx), Span("client") as client:
        headers = inject({}, client)
    assert parse_baggage(headers["baggage"]) == {"user": "alice"}


# ------------------------------------------------------------------------------------------- B3


@pytest.mark.parametrize("value,expected", [
    (f"{TID}-{SID}-1", (int(TID, 16), int(SID, 16), True)),
    (f"{TID}-{SID}-0", (int(TID, 16), int(SID, 16), False)),
    (f"{TID}-{SID}-d", (int(TID, 16), int(SID, 16), True)),  # debug implies sampled
    (f"{TID}-{SID}", (int(TID, 16), int(SID, 16), None)),  # deferred decision
    ("{}-{}-1-{}".format(TID, SID, "05e3ac9a4f6e3b90"), (int(TID, 16), int(SID, 16), True)),  # with parent span id
    (f"a3ce929d0e0e4736-{SID}-1", (0xA3CE929D0E0E4736, int(SID, 16), True)),  # 64-bit trace id
    (f"{TID.upper()}-{SID.upper()}-1", (int(TID, 16), int(SID, 16), True)),
])
def test_b3_single_valid(value, expected):
    assert parse_b3_single(value) == expected


@pytest.mark.parametrize("value", [
    "0", "1", "d",  # a bare sampling decision carries no ids
    "", None,
    f"{TID}-{SID}-x",
    f"{TID}-{SID}-1-{SID}-extra",
    f"{TID[:20]}-{SID}-1",  # trace id neither 16 nor 32 hex
    f"{TID}-{SID[:10]}-1",
    "{}-{}-1".format("0" * 32, SID),
    "{}-{}-1".format(TID, "0" * 16),
    "{}-{}-1".format("z" * 32, SID),
])
def test_b3_single_invalid(value):
    assert parse_b3_single(value) is None


def test_b3_bare_zero_is_ignored_by_extract():
    assert extract({"b3": "0"}, propagators=("b3",)) is None
    # ...and does not hide a valid traceparent
    ctx = extract({"b3": "0", "traceparent": TP}, propagators=("b3", "tracecontext"))
    assert ctx.trace_id == int(TID, 16) and ctx.sampled is True


@pytest.mark.parametrize("headers,sampled", [
    ({"X-B3-Sampled": "1"}, True),
    ({"X-B3-Sampled": "true"}, True),
    ({"X-B3-Sampled": "0"}, False),
    ({"X-B3-Sampled": "false"}, False),
    ({}, None),
    ({"X-B3-Flags": "1"}, True),
    ({"X-B3-Flags": "1", "X-B3-Sampled": "0"}, True),  # debug wins
])
def test_b3_multi(headers, sampled):
    carrier = {"X-B3-TraceId": TID, "X-B3-SpanId": SID, "X-B3-ParentSpanId": "05e3ac9a4f6e3b90"}
    carrier.update(headers)
    assert parse_b3_multi(carrier, default_getter) == (int(TID, 16), int(SID, 16), sampled)
    ctx = extract(carrier, propagators=("b3multi",))
    assert (ctx.trace_id, ctx.span_id, ctx.sampled) == (int(TID, 16), int(SID, 16), sampled)


def test_b3_multi_case_insensitive_headers_and_short_trace_id():
    carrier = {"x-b3-traceid": TID[16:], "x-b3-spanid": SID, "x-b3-sampled": "1"}
    assert parse_b3_multi(carrier, default_getter) == (int(TID[16:], 16), int(SID, 16), True)


def test_b3_multi_missing_or_bad_ids():
    assert parse_b3_multi({"X-B3-TraceId": TID}, default_getter) is None
    assert parse_b3_multi({"X-B3-TraceId": "xyz", "X-B3-SpanId": SID}, default_getter) is None


def test_b3_propagator_reads_either_form():
    single = extract({"b3": f"{TID}-{SID}-1"}, propagators=("b3",))
    multi = extract({"X-B3-TraceId": TID, "X-B3-SpanId": SID, "X-B3-Sampled": "0"}, propagators=("b3",))
    assert single.sampled is True and multi.sampled is False
    assert single.trace_id == multi.trace_id == int(TID, 16)


def test_sampled_none_leaves_decision_to_us(collected):
    Sampling.configure(1.0)
    ctx = extract({"b3": f"{TID}-{SID}"}, propagators=("b3",))
    assert ctx.sampled is None
    with Span("s", parent=ctx) as s:
        pass
    assert s.sampled is True


# -------------------------------------------------------------------------------------- extract


def test_extract_first_valid_propagator_wins():
    other = f"{0xABC:032x}"
    carrier = {"traceparent": TP, "b3": f"{other}-{SID}-0"}
    assert extract(carrier, propagators=("tracecontext", "b3")).trace_id == int(TID, 16)
    assert extract(carrier, propagators=("b3", "tracecontext")).trace_id == 0xABC
    bad_tp = {"traceparent": "garbage", "b3": f"{other}-{SID}-0"}
    assert extract(bad_tp, propagators=("tracecontext", "b3")).trace_id == 0xABC


def test_extract_uses_configured_propagators():
    carrier = {"b3": f"{TID}-{SID}-1"}
    Propagators.names = ("tracecontext", "baggage")
    assert extract(carrier) is None
    Propagators.names = ("b3",)
    assert extract(carrier).trace_id == int(TID, 16)


def test_extract_baggage_only():
    ctx = extract({"baggage": "k=v"})
    assert ctx is not None and ctx.trace_id == 0 and ctx.baggage == {"k": "v"}
    assert extract({"baggage": "k=v"}, propagators=("tracecontext",)) is None


def test_extract_getter_and_carrier_shapes():
    assert extract({"TraceParent": TP}).span_id == int(SID, 16)  # any case
    assert extract({"traceparent": [TP, "other"]}).span_id == int(SID, 16)  # lists: first value
    assert extract({"traceparent": TP.encode()}).span_id == int(SID, 16)  # bytes
    assert extract({"traceparent": TP, "tracestate": ["a=1", "b=2"]}).tracestate == "a=1,b=2"  # joined
    pairs = [("traceparent", TP)]
    ctx = extract(pairs, getter=lambda c, k: next((v for n, v in c if n == k), None))
    assert ctx.trace_id == int(TID, 16)
    assert extract(None) is None
    assert extract(42) is None

    def bad_getter(carrier, key):
        raise RuntimeError("hostile")

    assert extract({}, getter=bad_getter) is None


# --------------------------------------------------------------------------------------- inject


def test_inject_writes_each_configured_propagator(collected):
    with Span("client") as s:
        headers = inject({}, s, ("tracecontext", "baggage", "b3", "b3multi"))
    tid, sid = f"{s.trace_id:032x}", f"{s.span_id:016x}"
    assert headers == {
        "traceparent": f"00-{tid}-{sid}-01",
        "b3": f"{tid}-{sid}-1",
        "X-B3-TraceId": tid, "X-B3-SpanId": sid, "X-B3-Sampled": "1",
    }  # no baggage and no tracestate: those headers are absent


def test_inject_unsampled(collected):
    Sampling.configure(0.0)
    with Span("client") as s:
        headers = inject({}, None, ("tracecontext", "b3", "b3multi"))
    assert headers["traceparent"].endswith("-00")
    assert headers["traceparent"].split("-")[2] == f"{s.span_id:016x}"
    assert headers["b3"].endswith("-0")
    assert headers["X-B3-Sampled"] == "0"


def test_inject_default_is_current_span_and_configured_propagators(collected):
    Propagators.names = ("b3",)
    assert inject({}) == {}  # no current span: nothing written
    with Span("s") as s:
        headers = inject({})
    assert list(headers) == ["b3"]
    assert headers["b3"].startswith(f"{s.trace_id:032x}-{s.span_id:016x}")


def test_inject_tracestate_and_span_context():
    ctx = SpanContext(0xAB, 0xCD, True, "rojo=1", {"k": "v w"})
    headers = inject({"existing": "x"}, ctx, ("tracecontext", "baggage"))
    assert headers == {"existing": "x", "traceparent": f"00-{0xAB:032x}-{0xCD:016x}-01",
                       "tracestate": "rojo=1", "baggage": "k=v%20w"}
    assert inject({}, SpanContext(0, 0, None, "", {"k": "v"}), ("tracecontext", "baggage")) == {}
    assert inject({}, "not a span") == {}


def test_inject_extract_round_trip(collected):
    for names in (("tracecontext", "baggage"), ("b3",), ("b3multi",)):
        ctx_in = SpanContext(0x0123456789ABCDEF0123456789ABCDEF, 0x1122334455667788, False, "", {"a": "1"})
        with Span("server", parent=ctx_in), Span("client") as client:
            headers = inject({}, client, names)
        out = extract(headers, propagators=names)
        assert out.trace_id == ctx_in.trace_id
        assert out.span_id == client.span_id
        assert out.sampled is False
        if "baggage" in names:
            assert out.baggage == {"a": "1"}


def test_module_exports_public_names():
    assert propagation.extract is extract and propagation.inject is inject


# ---------------------------------------------------------------------------------- properties

HEADER_NAMES = ["traceparent", "tracestate", "baggage", "b3", "X-B3-TraceId", "X-B3-SpanId", "X-B3-Sampled",
                "X-B3-Flags", "TRACEPARENT", "x-b3-traceid"]
hex_chars = st.sampled_from("0123456789abcdefABCDEF-xz ")


@st.composite
def traceparent_like(draw):
    version = draw(st.sampled_from(["00", "01", "ff", "cc", "0", "0g"]))
    tid = draw(st.one_of(st.text("0123456789abcdef", min_size=32, max_size=32), st.text(hex_chars, max_size=34)))
    sid = draw(st.one_of(st.text("0123456789abcdef", min_size=16, max_size=16), st.text(hex_chars, max_size=18)))
    flags = draw(st.sampled_from(["00", "01", "03", "ff", "1", "zz"]))
    extra = draw(st.sampled_from(["", "-x", "-", "abc"]))
    return f"{version}-{tid}-{sid}-{flags}{extra}"


header_values = st.one_of(
    st.text(max_size=80),
    traceparent_like(),
    st.binary(max_size=40),
    st.lists(st.text(max_size=20), max_size=3),
    st.none(),
    st.integers(),
)
carriers = st.dictionaries(st.one_of(st.sampled_from(HEADER_NAMES), st.text(max_size=10)), header_values,
                           max_size=8)
ALL = ("tracecontext", "baggage", "b3", "b3multi")


@given(carriers, st.permutations(ALL))
@settings(max_examples=400, deadline=None)
def test_extract_never_raises_and_inject_reproduces_valid_traceparent(carrier, names):
    ctx = extract(carrier, propagators=names)
    assert ctx is None or isinstance(ctx, SpanContext)
    if ctx is None or not ctx.trace_id:
        return
    assert 0 < ctx.trace_id < (1 << 128) and 0 < ctx.span_id < (1 << 64)
    headers = inject({}, ctx, ("tracecontext",) + tuple(names))
    tp = headers["traceparent"]
    assert len(tp) == 55 and tp == tp.lower()
    assert parse_traceparent(tp) == (ctx.trace_id, ctx.span_id, bool(ctx.sampled))
    again = extract(headers, propagators=("tracecontext", "baggage"))
    assert (again.trace_id, again.span_id) == (ctx.trace_id, ctx.span_id)
    if ctx.tracestate:
        assert parse_tracestate(headers["tracestate"]) == ctx.tracestate


@given(st.integers(1, (1 << 128) - 1), st.integers(1, (1 << 64) - 1), st.booleans())
def test_traceparent_format_parse_round_trip(trace_id, span_id, sampled):
    assert parse_traceparent(format_traceparent(trace_id, span_id, sampled)) == (trace_id, span_id, sampled)


@given(st.text(max_size=200))
def test_parsers_never_raise_on_text(value):
    parse_traceparent(value)
    parse_tracestate(value)
    parse_baggage(value)
    parse_b3_single(value)


@given(st.integers(1, (1 << 128) - 1), st.integers(1, (1 << 64) - 1), st.booleans(), carriers)
@settings(max_examples=200, deadline=None)
def test_valid_traceparent_survives_extract_inject_unchanged(trace_id, span_id, sampled, noise):
    tp = format_traceparent(trace_id, span_id, sampled)
    carrier = {k: v for k, v in noise.items() if k.lower() != "traceparent"}
    carrier["traceparent"] = tp
    ctx = extract(carrier, propagators=("tracecontext", "baggage", "b3"))
    assert inject({}, ctx, ("tracecontext",))["traceparent"] == tp


def test_importing_the_shared_modules_compiles_no_pattern():
    """re.compile costs about 4 million instructions for the header grammars and the secret-key pattern:
    they are compiled at first use, not when the agent's modules load in every process."""
    import subprocess
    import sys

    probe = ("import re, sys, urllib.parse\n"  # (urllib.parse compiles its own at import: the apps' cost too)
             "calls = []\n"
             "real = re.compile\n"
             "re.compile = lambda *a, **k: calls.append(a[0]) or real(*a, **k)\n"
             "import autoinstr.trace.propagation, autoinstr.integrations._wsgi as w\n"
             "assert calls == [], calls\n"
             "w.redact_query('a=1&token=2')\n"
             "autoinstr.trace.propagation.parse_traceparent('00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01')\n"
             "print(len(calls))\n")
    proc = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "6"  # (compiled at the first query string and the first header: all six)


def test_the_header_grammars_are_compiled_once():
    first = propagation._patterns()
    assert first.traceparent is propagation._patterns().traceparent is not None
    assert parse_traceparent("00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01") is not None
