"""The span's hot path has two implementations, the compiled SpanCore (autoinstr/_span.c, where the speedups are
built) and _SpanCore in Python (AUTOINSTR_SPEEDUPS=false, or no compiler at install): they must behave alike.

Random programs of span operations (spans made under every kind of parent: the current span, none, a given
span, a remote context sampled or not, an invalid one; entered with `with` or started; ended normally, by an
exception, twice; under sampling ratios 1, 0 and 1/2 and a rate limit) run in one process per core, from the
same random ids; what the pipeline receives (which spans, grouped how), each span's fields and which span is
current after each step must be identical. The span tests also run on the core this process does not use.
"""

from __future__ import annotations

import os

from _twins import HANDED_SPANS, assert_same, compiled_has, pass_on_the_other_side, require_compiled, run_driver

from autoinstr.trace import span as span_module

PROGRAMS = 300

DRIVER = HANDED_SPANS + r'''
import contextvars, json, random, sys
from autoinstr.trace.span import Span, SpanContext, Sampling, current_span

out = {"core": Span.__mro__[1].__module__, "programs": []}
def program(seed):  # in an empty context: no span of another program is current
    rnd = random.Random(seed)
    m._Ids.rng.seed(seed)
    Sampling.configure(rnd.choice([1.0, 1.0, 0.0, 0.5]), rnd.choice([0, 0, 1000]))
    del handed[:]
    spans, open_, steps = [], [], []
    for _ in range(rnd.randint(1, 14)):
        if open_ and rnd.random() < 0.45:
            s, entered = open_.pop()
            how = rnd.choice(["ok", "ok", "error", "twice"])
            if entered:
                try:
                    with_exc = ValueError("boom") if how == "error" else None
                    s.__exit__(type(with_exc) if with_exc else None, with_exc, None)
                except Exception as exc:
                    steps.append("exit raised %s" % type(exc).__name__)
            else:
                s.finish(rnd.choice([0, 0, 12345]))
                if how == "twice":
                    s.finish()
        else:
            choice = rnd.choice(["unset", "unset", "none", "span", "remote", "remote-unsampled", "remote-none", "bad"])
            kwargs = {}
            if choice == "none":
                kwargs["parent"] = None
            elif choice == "span" and spans:
                kwargs["parent"] = rnd.choice(spans)
            elif choice.startswith("remote"):
                sampled = {"remote": True, "remote-unsampled": False, "remote-none": None}[choice]
                kwargs["parent"] = SpanContext(rnd.getrandbits(128) or 1, rnd.getrandbits(64) or 1, sampled, "k=v")
            elif choice == "bad":
                kwargs["parent"] = 42
            attrs = {"n": len(spans), "http.route": "/x"} if rnd.random() < 0.5 else {}
            s = Span("s%d" % len(spans), kind=rnd.choice(["internal", "server", "client"]), **kwargs, **attrs)
            spans.append(s)
            entered = rnd.random() < 0.6
            (s.__enter__() if entered else s.start())
            open_.append((s, entered))
        cur = current_span()
        steps.append(spans.index(cur) if cur in spans else None)
    ids = {}
    def ref(value):
        return None if value is None else ids.setdefault(value, len(ids))
    def describe(s):
        return {"name": s.name, "kind": s.kind, "attributes": sorted(s.attributes.items()), "sampled": s.sampled,
                "status": s.status, "events": [e["name"] for e in s.events or []], "span": ref(s.span_id),
                "parent": ref(s.parent_id), "trace": ref(s.trace_id), "root": spans.index(s.root),
                "started": bool(s.start_ns), "ended": bool(s.end_ns), "end_given": s.end_ns == 12345}
    out["programs"].append({"steps": steps, "handed": [[spans.index(s) for s in group] for group in handed],
                            "spans": [describe(s) for s in spans],
                            "unsampled": m.unsampled_count(reset=True)})
for seed in range(int(sys.argv[1])):
    contextvars.Context().run(program, seed)
print(json.dumps(out))
'''


def test_both_span_cores_do_the_same_to_random_programs():
    require_compiled("SpanCore")
    compiled, python = run_driver(DRIVER, PROGRAMS, True), run_driver(DRIVER, PROGRAMS, False)
    assert compiled["core"] == "autoinstr._speedups" and python["core"] == "autoinstr.trace.span"
    assert_same(compiled["programs"], python["programs"], "program")
    handed = sum(len(p["handed"]) for p in python["programs"])
    assert handed > PROGRAMS and any(p["unsampled"] for p in python["programs"])  # the programs do cover both


def test_the_span_tests_pass_on_the_other_core():
    """This process runs one core; tests/test_span.py, test_tracer.py and test_sampling.py run on the other."""
    require_compiled("SpanCore")
    pass_on_the_other_side(["tests/test_span.py", "tests/test_tracer.py", "tests/test_sampling.py"],
                           span_module.Span.__init__ is not span_module._SpanCore.__init__)


def test_the_compiled_core_is_the_base_of_span_unless_turned_off():
    expected = span_module._SpanCore
    from autoinstr.config import _FALSE

    turned_off = os.environ.get("AUTOINSTR_SPEEDUPS", "").strip().lower() in _FALSE
    if compiled_has("SpanCore") and not turned_off:
        from autoinstr import _speedups

        expected = _speedups.SpanCore
    assert span_module.Span.__mro__[1] is expected
    assert span_module.Span.__slots__ == ()  # no __dict__: a span is its slots alone, either way
    assert not hasattr(span_module.Span("x"), "__dict__")
