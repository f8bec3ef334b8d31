"""multiprocessing: a child process flushes its spans when its target returns.

With the fork start method the child ends through os._exit, which skips atexit and so the agent's exit
flush; wrapping Process._bootstrap runs that flush (with its usual deadline) just before.
"""

from __future__ import annotations

from types import ModuleType
from typing import Any, Callable

from autoinstr.integrations._wrapping import unwrap, wrap


def _bootstrap(wrapped: Callable[..., Any], instance: Any, args: tuple, kwargs: dict) -> Any:
    try:
        return wrapped(*args, **kwargs)
    finally:
        from autoinstr import bootstrap

        bootstrap.exit_flush()


def patch(module: ModuleType) -> None:
    wrap(module, "BaseProcess._bootstrap", _bootstrap)


def unpatch(module: ModuleType) -> None:
    unwrap(module, "BaseProcess._bootstrap")
