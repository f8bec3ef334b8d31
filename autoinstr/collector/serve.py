"""`autoinstr collector`: the collector app served by waitress (pure Python: any platform).

waitress buffers each request body before the app sees it, up to its max_request_body_size, which is set
to the collector's body limit: a larger body is refused by the server without being held in memory.
"""

from __future__ import annotations

import logging
import signal
import sys
import threading

from autoinstr.collector.app import CollectorApp, log

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any, Optional

STATS_LOG_INTERVAL = 60.0


def serve(host: str, port: int, store_path: str, token: Optional[str] = None, threads: int = 4,
          max_body: int = 16 * 1024 * 1024, retention_hours: float = 0.0, store_max_mb: float = 0.0,
          stats_interval: float = STATS_LOG_INTERVAL) -> int:
    from autoinstr.collector.app import _suppress

    _suppress()
    if not logging.getLogger().handlers:
        logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s", stream=sys.stderr)
    try:
        import waitress
    except ImportError:
        sys.stderr.write("autoinstr collector: needs waitress (pip install 'autoinstr[collector]')\n")
        return 1
    app = CollectorApp(store_path, token=token, max_body=max_body, retention_hours=retention_hours,
                       store_max_mb=store_max_mb)
    try:
        server: Any = waitress.create_server(app, host=host, port=port, threads=max(1, threads),
                                             max_request_body_size=max_body, ident="autoinstr-collector",
                                             clear_untrusted_proxy_headers=True, channel_timeout=30)
    except OSError as exc:
        app.close()
        sys.stderr.write("autoinstr collector: cannot listen on %s:%s: %s\n" % (host, port, exc.strerror or exc))
        return 1
    stop = threading.Event()

    def stats_loop() -> None:
        _suppress()
        last = None
        while not stop.wait(stats_interval):
            snap = app.stats.snapshot()
            snap.pop("uptime_s", None)
            if snap != last:
                app.log_stats()
                last = snap

    threading.Thread(target=stats_loop, name="autoinstr-collector-stats", daemon=True).start()

    def on_term(signum: int, frame: Any) -> None:
        raise KeyboardInterrupt

    try:
        signal.signal(signal.SIGTERM, on_term)
    except (ValueError, OSError):  # not the main thread
        pass
    log.info("autoinstr collector listening on http://%s:%s (store %s, auth %s)", host,
             getattr(server, "effective_port", port), app.store_path, "bearer token" if token else "none")
    try:
        server.run()
    except KeyboardInterrupt:
        pass
    finally:
        stop.set()
        try:
            server.close()
        except Exception:
            pass
        app.log_stats()
        app.close()
    return 0
