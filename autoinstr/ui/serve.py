"""`autoinstr ui`: the UI app served by waitress when it is installed, else by the standard library's
wsgiref (one thread per request). Binds 127.0.0.1 unless told otherwise."""

from __future__ import annotations

import logging
import signal
import sys
import threading

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any

log = logging.getLogger("autoinstr.ui")


def make_server(app: Any, host: str, port: int, threads: int = 4) -> Any:
    """A server with .run(), .close() and .effective_port: waitress's, or a threading wsgiref one."""
    try:
        import waitress
    except ImportError:
        waitress = None
    if waitress is not None:
        return waitress.create_server(app, host=host, port=port, threads=max(1, threads), ident="autoinstr-ui",
                                      clear_untrusted_proxy_headers=True, channel_timeout=30)
    import socketserver
    from wsgiref.simple_server import WSGIRequestHandler, WSGIServer
    from wsgiref.simple_server import make_server as wsgiref_server

    class Quiet(WSGIRequestHandler):
        def log_message(self, *args: Any) -> None:
            pass

    class Threading(socketserver.ThreadingMixIn, WSGIServer):
        daemon_threads = True

    server = wsgiref_server(host, port, app, server_class=Threading, handler_class=Quiet)
    server.effective_port = server.server_address[1]
    server.run = server.serve_forever

    def close() -> None:
        server.shutdown()
        server.server_close()

    server.close = close
    return server


def serve(host: str, port: int, store_path: str, threads: int = 4) -> int:
    from autoinstr.store import StoreError
    from autoinstr.ui.app import UIApp, _suppress

    _suppress()
    if not logging.getLogger().handlers:
        logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s", stream=sys.stderr)
    try:
        app = UIApp(store_path)
    except StoreError as exc:
        sys.stderr.write("autoinstr ui: %s\n" % exc)
        return 1
    try:
        server = make_server(app, host, port, threads)
    except OSError as exc:
        app.close()
        sys.stderr.write("autoinstr ui: cannot listen on %s:%s: %s\n" % (host, port, exc.strerror or exc))
        return 1

    def on_term(signum: int, frame: Any) -> None:
        raise KeyboardInterrupt

    try:
        signal.signal(signal.SIGTERM, on_term)
    except (ValueError, OSError):  # not the main thread
        pass
    shown = "[%s]" % host if ":" in host else host
    url = "http://%s:%s/" % (shown, getattr(server, "effective_port", port))
    sys.stdout.write("autoinstr ui: %s (store %s)\n" % (url, app.store_path))
    sys.stdout.flush()
    stopping = threading.Event()
    try:
        server.run()
    except KeyboardInterrupt:
        stopping.set()
    finally:
        try:
            server.close()
        except Exception:
            pass
        app.close()
    return 0
