"""The guard every wrapt wrapper gets (autoinstr.integrations._wrapping) has two implementations, compiled
(_speedups.guard, autoinstr/_guard.c) and in Python (python_guard): they must behave alike.

Random wrappers fail before, around or after the wrapped call, call it never, once or twice, swallow or
replace the app's exceptions, raise BaseExceptions, around wrapped functions that return, raise an Exception or
a BaseException, with the integration on or off. What the caller sees (the result, or the exception with its
identity, context, cause and suppressed context), the wrapped calls made and the disable calls must be the same.
"""

from __future__ import annotations

import random
from typing import Any, Callable, List

import pytest
from _twins import require_compiled

from autoinstr.integrations import _wrapping
from autoinstr.trace import span as span_module

PROGRAMS = 3000


class AppError(Exception):
    pass


class AgentError(Exception):
    pass


class Stop(BaseException):  # KeyboardInterrupt-like: no guard may swallow it
    pass


def compiled_guard() -> Callable[..., Any]:
    require_compiled("guard")  # (fails where the suite requires the speedups)
    from autoinstr import _speedups  # (built: compared with the Python twin even where the switch is off)

    return _speedups.guard  # type: ignore[no-any-return]


def make_wrapped(kind: str, log: List[Any]) -> Callable[..., Any]:
    def wrapped(*args: Any, **kwargs: Any) -> Any:
        log.append(("wrapped", args, sorted(kwargs.items())))
        if kind == "raise":
            raise AppError("app %d" % len(log))
        if kind == "stop":
            raise Stop("stop %d" % len(log))
        return ("result", args, len(log))
    return wrapped


def make_wrapper(spec: dict) -> Callable[..., Any]:
    def wrapper(wrapped: Callable[..., Any], instance: Any, args: tuple, kwargs: dict) -> Any:
        if spec["before"] == "raise":
            raise AgentError("before")
        if spec["before"] == "stop":
            raise Stop("agent stop")
        if spec["before"] == "return":
            return "agent's own"
        result: Any = None
        for i in range(spec["calls"]):
            try:
                result = wrapped(*args, **kwargs) if i == 0 else wrapped("again", key=i)
            except AppError:
                if spec["on_app_error"] == "raise-agent":
                    raise AgentError("while handling")
                if spec["on_app_error"] == "swallow":
                    result = "swallowed"
                    continue
                if spec["on_app_error"] == "type-error":
                    return None + 1  # type: ignore[operator]  (an agent bug inside except)
                raise
        if spec["after"] == "raise":
            raise AgentError("after")
        if spec["after"] == "replace":
            return ("replaced", result)
        return result
    return wrapper


def random_spec(rnd: random.Random) -> dict:
    return {"before": rnd.choice(["none", "none", "none", "raise", "stop", "return"]),
            "calls": rnd.choice([0, 1, 1, 1, 2]), "wrapped": rnd.choice(["return", "return", "raise", "stop"]),
            "on_app_error": rnd.choice(["reraise", "raise-agent", "swallow", "type-error"]),
            "after": rnd.choice(["none", "none", "raise", "replace"]), "off": rnd.random() < 0.15,
            "args": tuple(rnd.sample(range(10), rnd.randint(0, 3))), "kwargs": {"k": rnd.randint(0, 3)}
            if rnd.random() < 0.5 else {}}


def describe(exc: BaseException, app_errors: List[BaseException]) -> Any:
    def one(e: Any) -> Any:
        if e is None:
            return None
        known = [i for i, a in enumerate(app_errors) if a is e]
        return (type(e).__name__, str(e), known[0] if known else "new")
    return ("raised", one(exc), one(exc.__context__), one(exc.__cause__), exc.__suppress_context__)


def run(make_guard: Callable[..., Any], spec: dict) -> Any:
    log: List[Any] = []
    disables: List[Any] = []
    seen: List[BaseException] = []
    wrapped = make_wrapped(spec["wrapped"], log)

    def noting(*args: Any, **kwargs: Any) -> Any:  # the wrapped function, keeping the app's exceptions
        try:
            return wrapped(*args, **kwargs)
        except BaseException as exc:
            seen.append(exc)
            raise

    def disable(integration: Any, wrapper: Any, exc: BaseException) -> None:
        disables.append((integration, wrapper is the_wrapper, type(exc).__name__, str(exc)))

    the_wrapper = make_wrapper(spec)
    off = {"itg"} if spec["off"] else set()
    guard = make_guard(the_wrapper, "itg", off, set(), disable)
    try:
        outcome: Any = ("returned", guard(noting, None, spec["args"], dict(spec["kwargs"])))
    except BaseException as exc:  # noqa: B902 (Stop too)
        outcome = describe(exc, seen)
    return {"outcome": outcome, "log": log, "disables": disables}


def test_both_guards_do_the_same_to_random_wrappers():
    compiled = compiled_guard()
    rnd = random.Random(20261127)
    kinds = set()
    for n in range(PROGRAMS):
        spec = random_spec(rnd)
        python, native = run(_wrapping.python_guard, spec), run(compiled, spec)
        assert native == python, (n, spec)
        kinds.add((python["outcome"][0], bool(python["disables"])))
    assert kinds == {("returned", False), ("returned", True), ("raised", False), ("raised", True)}


def test_the_compiled_guard_is_what_wrap_installs_and_keeps_the_wrapper():
    compiled_guard()
    if span_module.compiled("guard") is None:
        pytest.skip("the compiled paths are turned off (AUTOINSTR_SPEEDUPS=false)")

    def wrapper(wrapped: Any, instance: Any, args: tuple, kwargs: dict) -> Any:
        return wrapped(*args, **kwargs)

    guard = _wrapping.guarded(wrapper, "sqlite3")
    assert type(guard).__name__ == "Guard" and guard.__wrapped__ is wrapper
    assert guard(lambda *a, **k: (a, k), None, (1,), {"x": 2}) == ((1,), {"x": 2})
    with pytest.raises(TypeError):
        guard(lambda: None, None, [1], {})  # wrapt always passes a tuple and a dict


def test_a_failing_wrapper_disables_its_integration_once_and_the_call_completes():
    """Once disable() has put the integration among the failed ones, the guard passes straight through."""
    compiled_guard()
    calls = []

    def failing(wrapped: Any, instance: Any, args: tuple, kwargs: dict) -> Any:
        calls.append("wrapper")
        raise AgentError("bug")

    for make in (_wrapping.python_guard, compiled_guard()):
        calls.clear()
        failed: set = set()
        guard = make(failing, "itg", failed, set(), lambda integration, wrapper, exc, off=failed: off.add(integration))
        assert guard(lambda *a: ("ok", a), None, (1,), {}) == ("ok", (1,))
        assert failed == {"itg"} and calls == ["wrapper"]
        assert guard(lambda *a: ("ok", a), None, (2,), {}) == ("ok", (2,)) and calls == ["wrapper"]
