"""Shared patch mechanics: wrap a module attribute with wrapt, and undo it, once for every integration."""

from __future__ import annotations

from types import ModuleType
from typing import Any, Callable

import wrapt


def wrap(module: ModuleType, path: str, wrapper: Callable[[Callable[..., Any], Any, tuple, dict], Any]) -> None:
    """Wrap `module.<path>` (e.g. "Class.method") with a wrapt-style wrapper(wrapped, instance, args, kwargs)."""
    wrapt.wrap_function_wrapper(module, path, wrapper)


def unwrap(module: ModuleType, path: str) -> None:
    """Put back what wrap() replaced; does nothing if it is not wrapped."""
    *parents, name = path.split(".")
    owner: Any = module
    for part in parents:
        owner = getattr(owner, part)
    # read the raw attribute: through a class, wrapt would hand back a bound wrapper
    current = owner.__dict__.get(name) if hasattr(owner, "__dict__") else getattr(owner, name, None)
    if isinstance(current, wrapt.FunctionWrapper):
        setattr(owner, name, current.__wrapped__)
