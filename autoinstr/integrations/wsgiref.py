"""wsgiref (the standard library's reference server): every handler runs the traced app."""

from __future__ import annotations

from types import ModuleType

from autoinstr.integrations._wrapping import unwrap, wrap
from autoinstr.integrations._wsgi import wrap_app_argument


def patch(module: ModuleType) -> None:  # wsgiref.handlers
    wrap(module, "BaseHandler.run", wrap_app_argument(0, "application"))


def unpatch(module: ModuleType) -> None:
    unwrap(module, "BaseHandler.run")
