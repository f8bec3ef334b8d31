"""Shared patch mechanics: wrap a module attribute with wrapt, and undo it, once for every integration.

Every wrapper is guarded: an exception of the agent's own making (the wrapper failing before, around or
after the wrapped call) never reaches the app. The call then completes as without the agent (the wrapped
function is called, or its result or exception is handed back as it came), and the integration is turned
off with one warning (autoinstr.integrations.disable): from then on its wrappers pass straight through.
The app's own exceptions, raised by the wrapped call, pass unchanged.
"""

from __future__ import annotations

import functools
import sys
from types import ModuleType
from typing import Any, Callable, Optional, Tuple

Wrapper = Callable[[Callable[..., Any], Any, tuple, dict], Any]

_NOT_CALLED, _RETURNED, _RAISED = 0, 1, 2


def wrap(module: ModuleType, path: str, wrapper: Wrapper) -> None:
    """Wrap `module.<path>` (e.g. "Class.method") with a wrapt-style wrapper(wrapped, instance, args, kwargs)."""
    import wrapt  # here, not at start-up: the commonest apps' integrations (flask, requests) do without (~3 ms)

    wrapt.wrap_function_wrapper(module, path, guarded(wrapper, integration_of(wrapper, module)))


def integration_of(wrapper: Any, module: ModuleType) -> Optional[str]:
    """The integration a wrapper belongs to: named by its module (autoinstr.integrations.<name>), else
    (shared helpers such as _dbapi) by the instrumented module's top-level package."""
    try:
        from autoinstr.integrations import INTEGRATIONS

        own = (getattr(wrapper, "__module__", None) or "").rpartition(".")[2]
        if own in INTEGRATIONS:
            return own
        top = module.__name__.partition(".")[0]
        for name, (triggers, _, _) in INTEGRATIONS.items():
            if any(t.partition(".")[0] == top for t in triggers):
                return name
    except Exception:
        pass
    return None


def guarded(wrapper: Wrapper, integration: Optional[str]) -> Wrapper:
    """`wrapper`, made unable to hurt the call it wraps (see the module's docstring). Coroutine and
    async-generator wrappers are returned as they are: their code runs after this guard has returned."""
    import inspect

    if inspect.iscoroutinefunction(wrapper) or inspect.isasyncgenfunction(wrapper):
        return wrapper
    from autoinstr import integrations

    compiled = _compiled_guard()
    if compiled is not None:  # the same guard without its frame and the closure it makes on every call
        return compiled(wrapper, integration, integrations._failed, integrations._disabled, _disable)
    return python_guard(wrapper, integration, integrations._failed, integrations._disabled, _disable)


def python_guard(wrapper: Wrapper, integration: Optional[str], failed: Any, disabled: Any,
                 disable: Callable[[Optional[str], Any, BaseException], None]) -> Wrapper:
    """The guard in Python (the twin of _speedups.guard, _guard.c): `disable` is called with the integration,
    the wrapper and the exception when the wrapper fails; `failed` and `disabled` hold the integrations off."""

    def guard(wrapped: Callable[..., Any], instance: Any, args: tuple, kwargs: dict) -> Any:
        if integration in failed or integration in disabled:
            return wrapped(*args, **kwargs)
        outcome: list = [_NOT_CALLED, None]

        def call(*a: Any, **kw: Any) -> Any:
            try:
                result = wrapped(*a, **kw)
            except BaseException as exc:
                outcome[0], outcome[1] = _RAISED, exc
                raise
            outcome[0], outcome[1] = _RETURNED, result
            return result

        try:
            return wrapper(call, instance, args, kwargs)
        except Exception as exc:
            if outcome[0] == _RAISED and exc is outcome[1]:
                raise  # the app's own exception, unchanged
            disable(integration, wrapper, exc)
        # The agent failed; the call completes as without it, out of the except block: what the app gets carries
        # nothing of the agent's exception (no __context__)
        state, value = outcome
        if state == _RAISED:
            raise value  # the agent failed while handling the app's exception: the app's, as it came
        if state == _RETURNED:
            return value
        return wrapped(*args, **kwargs)

    guard.__wrapped__ = wrapper  # type: ignore[attr-defined]
    return guard


def _compiled_guard() -> Optional[Callable[..., Wrapper]]:
    """autoinstr._speedups.guard (_guard.c), where the speedups are built and in use; else None."""
    from autoinstr.trace.span import compiled

    return compiled("guard")  # type: ignore[no-any-return]


def _disable(integration: Optional[str], wrapper: Any, exc: BaseException) -> None:
    reason = "%s raised %s: %s" % (getattr(wrapper, "__qualname__", "a wrapper"), type(exc).__name__,
                                   str(exc)[:200])
    try:
        from autoinstr import _log, integrations

        if integration is not None:
            integrations.disable(integration, reason)
        else:
            _log.warn_once("wrapper-%s" % id(wrapper), "an integration's wrapper failed (%s); the app goes on"
                           % reason)
    except Exception:
        pass


def _owner(module: ModuleType, path: str) -> Tuple[Any, str]:
    *parents, name = path.split(".")
    owner: Any = module
    for part in parents:
        owner = getattr(owner, part)
    return owner, name


def replace(module: ModuleType, path: str, make: Callable[[Callable[..., Any]], Callable[..., Any]]) -> None:
    """Put the plain function make(original) in place of `module.<path>`, for the hottest paths (a wrapt
    wrapper costs more than half a microsecond per call there); unwrap() puts the original back."""
    owner, name = _owner(module, path)
    own = hasattr(owner, "__dict__") and name in owner.__dict__
    original = owner.__dict__[name] if own else getattr(owner, name)
    if getattr(original, "__autoinstr_replaced__", None) is not None:
        return  # replaced already
    replacement = make(original)
    try:
        functools.update_wrapper(replacement, original)
    except (AttributeError, TypeError):
        pass
    replacement.__autoinstr_replaced__ = original  # type: ignore[attr-defined]
    replacement.__autoinstr_own__ = own  # type: ignore[attr-defined]
    setattr(owner, name, replacement)


def unwrap(module: ModuleType, path: str) -> None:
    """Put back what wrap() or replace() changed; does nothing if it is not wrapped."""
    owner, name = _owner(module, path)
    # read the raw attribute: through a class, wrapt would hand back a bound wrapper
    current = owner.__dict__.get(name) if hasattr(owner, "__dict__") else getattr(owner, name, None)
    wrapt = sys.modules.get("wrapt")  # not imported: nothing was wrapped with it
    if wrapt is not None and isinstance(current, wrapt.FunctionWrapper):
        setattr(owner, name, current.__wrapped__)
        return
    original = getattr(current, "__autoinstr_replaced__", None)
    if original is not None:
        if getattr(current, "__autoinstr_own__", True):
            setattr(owner, name, original)
        else:
            delattr(owner, name)
