"""The web UI over a span store: `autoinstr ui` serves it, and `autoinstr collector` at its root path.

Pages are rendered on the server from small rollup tables that the UI keeps in a sidecar file beside the
store (autoinstr.ui.rollup), with charts drawn in the browser by Apache ECharts, shipped in static/ (no
network, no build step). See autoinstr.ui.app for the routes.
"""

from __future__ import annotations

DEFAULT_PORT = 4991


def create_app(store_path: str, start_indexer: bool = True):  # type: ignore[no-untyped-def]
    from autoinstr.ui.app import UIApp

    return UIApp(store_path, start_indexer=start_indexer)
