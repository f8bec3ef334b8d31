"""waitress: `serve(app)` and `create_server(app)` serve the traced app."""

from __future__ import annotations

from types import ModuleType

from autoinstr.integrations._wrapping import replace, unwrap
from autoinstr.integrations._wsgi import serving_app_argument


def patch(module: ModuleType) -> None:  # waitress.server (waitress imports create_server from it after this)
    replace(module, "create_server", serving_app_argument(0, "application"))


def unpatch(module: ModuleType) -> None:
    unwrap(module, "create_server")
