"""wsgiref (the standard library's reference server): every handler runs the traced app."""

from __future__ import annotations

from types import ModuleType

from autoinstr.integrations._wrapping import replace, unwrap
from autoinstr.integrations._wsgi import serving_app_argument


def patch(module: ModuleType) -> None:  # wsgiref.handlers
    replace(module, "BaseHandler.run", serving_app_argument(1, "application"))  # (self, application)


def unpatch(module: ModuleType) -> None:
    unwrap(module, "BaseHandler.run")
