"""gunicorn: the app each worker serves is traced (sync, gthread and the other workers; with --preload the
master loads it once and every worker inherits the traced app)."""

from __future__ import annotations

from types import ModuleType
from typing import Any, Callable

from autoinstr.integrations._wrapping import unwrap, wrap
from autoinstr.integrations._wsgi import wrap_app


def _wsgi(wrapped: Callable[..., Any], instance: Any, args: tuple, kwargs: dict) -> Any:
    return wrap_app(wrapped(*args, **kwargs))


def patch(module: ModuleType) -> None:  # gunicorn.app.base
    wrap(module, "BaseApplication.wsgi", _wsgi)


def unpatch(module: ModuleType) -> None:
    unwrap(module, "BaseApplication.wsgi")
