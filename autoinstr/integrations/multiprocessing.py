"""multiprocessing: a child process flushes its spans when its target returns.

With the fork start method the child ends through os._exit, which skips atexit and so the agent's exit
flush; wrapping Process._bootstrap runs that flush (with its usual deadline) just before.
"""

from __future__ import annotations

from types import ModuleType
from typing import Any, Callable

import wrapt


def _bootstrap(wrapped: Callable[..., Any], instance: Any, args: tuple, kwargs: dict) -> Any:
    try:
        return wrapped(*args, **kwargs)
    finally:
        from autoinstr import bootstrap

        bootstrap.exit_flush()


def patch(module: ModuleType) -> None:
    wrapt.wrap_function_wrapper(module, "BaseProcess._bootstrap", _bootstrap)


def unpatch(module: ModuleType) -> None:
    method = module.BaseProcess.__dict__.get("_bootstrap")  # via the class, wrapt would bind it
    if isinstance(method, wrapt.FunctionWrapper):
        module.BaseProcess._bootstrap = method.__wrapped__
