"""werkzeug's development server (`flask run`, `run_simple`): the server's app is traced."""

from __future__ import annotations

from types import ModuleType

from autoinstr.integrations._wrapping import replace, unwrap
from autoinstr.integrations._wsgi import serving_app_argument


def patch(module: ModuleType) -> None:  # werkzeug.serving
    replace(module, "BaseWSGIServer.__init__", serving_app_argument(3, "app"))  # (self, host, port, app)


def unpatch(module: ModuleType) -> None:
    unwrap(module, "BaseWSGIServer.__init__")
