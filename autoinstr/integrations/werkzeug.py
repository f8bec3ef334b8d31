"""werkzeug's development server (`flask run`, `run_simple`): the server's app is traced."""

from __future__ import annotations

from types import ModuleType

from autoinstr.integrations._wrapping import unwrap, wrap
from autoinstr.integrations._wsgi import wrap_app_argument


def patch(module: ModuleType) -> None:  # werkzeug.serving
    wrap(module, "BaseWSGIServer.__init__", wrap_app_argument(2, "app"))


def unpatch(module: ModuleType) -> None:
    unwrap(module, "BaseWSGIServer.__init__")
