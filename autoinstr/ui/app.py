"""The UI's WSGI application.

    GET /                     services: rate, errors, p50/p95/p99 over time, one table row per service
    GET /service?service=S    a service: charts and its endpoints (sortable)
    GET /endpoint?service=S&op=NAME[&kind=K]   histogram, percentiles, slowest traces, SQL and calls inside
    GET /trace/<trace id>     the waterfall of one trace, with a side panel per span
    GET /search?...           spans by service, operation, min duration, errors, time range, attribute, trace id
    GET /queries              slow SQL statements
    GET /map                  the service map
    GET /api/<page>...        the same data as JSON (api/services, api/service, api/endpoint, api/trace/<id>,
                              api/search, api/queries, api/map, api/status)
    GET /static/...           ui.js, ui.css and Apache ECharts (shipped in the package: no network needed)

Every page also takes range=15m|1h|6h|24h|7d|30d|all or from=/to= (ISO 8601 or epoch seconds). A bad value
is a 400 page that says which; nothing unknown is a stack trace. Pages carry a Content-Security-Policy that
allows scripts and styles from this server only (no inline script runs, whatever a span name holds).
"""

from __future__ import annotations

import contextvars
import json
import logging
import mimetypes
import os
import threading
import urllib.parse

from autoinstr import store as store_mod
from autoinstr.ui import pages, queries
from autoinstr.ui.queries import BadRequest, NotFound
from autoinstr.ui.rollup import Indexer, Rollup

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any, Callable, Dict, Iterable, Optional

log = logging.getLogger("autoinstr.ui")

STATIC_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "static")
STATIC_FILES = {"ui.js", "ui.css", "favicon.svg", "echarts/echarts.min.js", "echarts/LICENSE", "echarts/NOTICE",
                "echarts/LICENSE-d3", "echarts/VERSION"}
CSP = ("default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; connect-src 'self'; "
       "font-src 'self'; base-uri 'none'; form-action 'self'; frame-ancestors 'none'")
SECURITY_HEADERS = [("Content-Security-Policy", CSP), ("X-Content-Type-Options", "nosniff"),
                    ("Referrer-Policy", "no-referrer"), ("X-Frame-Options", "DENY"),
                    ("Cross-Origin-Opener-Policy", "same-origin")]
SYNC_BACKLOG = 50000  # a page waits for the indexer to read up to this many new spans (else shows a banner)
SYNC_WAIT_S = 0.6
MAX_PARAM = 1000
KINDS = ("server", "client", "internal", "producer", "consumer")
_STATUS_TEXT = {200: "OK", 302: "Found", 304: "Not Modified", 400: "Bad Request", 401: "Unauthorized",
                404: "Not Found", 405: "Method Not Allowed", 500: "Internal Server Error"}
_PARAMS = {"range", "from", "to", "service", "op", "kind", "sort", "dir", "min_ms", "errors", "attr", "trace",
           "before", "span"}

Response = "Tuple[int, List[Tuple[str, str]], bytes]"


class UIApp:
    """The web UI over one span store. Builds (and keeps up to date) its rollups in a sidecar file."""

    __autoinstr_wsgi__ = True  # the agent's server wrappers leave it alone

    def __init__(self, store_path: str, start_indexer: bool = True, sidecar: Optional[str] = None) -> None:
        self.store_path = os.path.abspath(store_path)
        store_mod.Store(self.store_path, create=False, readonly=True).close()  # a clear error now if unusable
        self.rollup = Rollup(self.store_path, sidecar)
        self.indexer = Indexer(self.rollup).start() if start_indexer else None
        self._local = threading.local()

    def close(self) -> None:
        if self.indexer is not None:
            self.indexer.stop()
            self.indexer.thread.join(5)
        self.rollup.close()

    # ------------------------------------------------------------------------------ per thread

    def _store(self) -> Any:
        st = getattr(self._local, "store", None)
        if st is None:
            st = self._local.store = store_mod.Store(self.store_path, create=False, readonly=True)
        return st

    def _db(self) -> Any:
        db = getattr(self._local, "db", None)
        if db is None:
            import sqlite3

            db = self._local.db = sqlite3.connect(self.rollup.path, timeout=10, isolation_level=None,
                                                  check_same_thread=False)
            db.execute("PRAGMA busy_timeout = 10000")
            db.execute("PRAGMA query_only = 1")
        return db

    def _sync(self) -> Dict[str, Any]:
        """Bring the rollups up to the store's newest span when that is quick; the status for the banner."""
        top = store_mod.last_span_id(self._store())
        behind = top - self.rollup.last_id
        if 0 < behind <= SYNC_BACKLOG:
            if self.indexer is not None:
                self.indexer.sync(top, SYNC_WAIT_S)
            else:
                self.rollup.catch_up(max_seconds=SYNC_WAIT_S)
        error = self.indexer.error if self.indexer is not None else None
        return queries.status(self.rollup.last_id, top, error)

    # ------------------------------------------------------------------------------ WSGI

    def __call__(self, environ: Dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
        status, headers, body = self.respond(environ)
        start_response("%d %s" % (status, _STATUS_TEXT.get(status, "")),
                       headers + [("Content-Length", str(len(body)))])
        return [body]

    def respond(self, environ: Dict[str, Any]) -> Response:
        """(status, headers, body) for one request (the collector serves the UI through this). It runs in a
        copy of the caller's context, with instrumentation off: the UI's own SQLite reads are never traced,
        and the caller's thread is left as it was."""
        return contextvars.copy_context().run(self._respond, environ)

    def _respond(self, environ: Dict[str, Any]) -> Response:
        _suppress()
        base = (environ.get("SCRIPT_NAME") or "").rstrip("/")
        api = (environ.get("PATH_INFO") or "/").startswith("/api/")
        try:
            status, headers, body = self.handle(environ, base)
        except BadRequest as exc:
            status, headers, body = self._error(400, "Bad Request", str(exc), base, api)
        except NotFound as exc:
            status, headers, body = self._error(404, "Not Found", str(exc), base, api)
        except store_mod.StoreError as exc:
            status, headers, body = self._error(500, "Store unavailable", str(exc), base, api)
        except Exception:  # a bug costs one request, never the server, and shows no stack trace
            log.exception("autoinstr ui: internal error on %s", environ.get("PATH_INFO"))
            status, headers, body = self._error(500, "Internal Server Error",
                                                "Something went wrong on this page; the server log has the details.",
                                                base, api)
        headers = headers + SECURITY_HEADERS
        if (environ.get("REQUEST_METHOD") or "GET").upper() == "HEAD":
            body = b""
        return status, headers, body

    def _error(self, status: int, title: str, message: str, base: str, api: bool) -> Response:
        if api:
            return _json(status, {"error": title.lower().replace(" ", "_"), "detail": message})
        return _html(status, pages.error_page(base, status, title, message))

    def handle(self, environ: Dict[str, Any], base: str = "") -> Response:
        method = (environ.get("REQUEST_METHOD") or "GET").upper()
        if method not in ("GET", "HEAD"):
            status, headers, body = _html(405, pages.error_page(base, 405, "Method Not Allowed",
                                                                 "The UI answers GET only."))
            return status, headers + [("Allow", "GET, HEAD")], body
        path = environ.get("PATH_INFO") or "/"
        if path.startswith("/static/"):
            return self.static(path[len("/static/"):], environ)
        if path == "/favicon.ico":
            return self.static("favicon.svg", environ)
        params = parse_params(environ.get("QUERY_STRING") or "")
        api = path.startswith("/api/")
        route = path[len("/api"):] if api else path
        if route == "/status" and api:
            return _json(200, self._sync())
        if route in ("/", "/services"):
            render = self.page_services
        elif route == "/service":
            render = self.page_service
        elif route == "/endpoint":
            render = self.page_endpoint
        elif route.startswith("/trace/"):
            params["trace"] = urllib.parse.unquote(route[len("/trace/"):])
            render = self.page_trace
        elif route == "/search":
            render = self.page_search
        elif route == "/queries":
            render = self.page_queries
        elif route == "/map":
            render = self.page_map
        else:
            raise NotFound("no page at %s" % path)
        status = self._sync()
        data, html_fn = render(params, status, base)
        if isinstance(data, tuple):  # a redirect
            return data
        if api:
            return _json(200, dict(data, status=status))
        return _html(200, html_fn())

    # ------------------------------------------------------------------------------ pages

    def _range(self, params: Dict[str, str], default: str = "1h") -> queries.TimeRange:
        return queries.time_range(self._db(), params.get("range"), params.get("from"), params.get("to"), default)

    def page_services(self, params: Dict[str, str], status: Dict[str, Any], base: str) -> Any:
        data = queries.overview(self._db(), self._range(params))
        return data, lambda: pages.services_page(base, data, status)

    def page_service(self, params: Dict[str, str], status: Dict[str, Any], base: str) -> Any:
        service = required(params, "service")
        sort = params.get("sort") or "total_ms"
        desc = _direction(params.get("dir"), default_desc=sort != "name")
        data = queries.service_page(self._db(), self._range(params), service, sort, desc)
        return data, lambda: pages.service_page(base, data, status)

    def page_endpoint(self, params: Dict[str, str], status: Dict[str, Any], base: str) -> Any:
        service = required(params, "service")
        op = required(params, "op")
        kind = params.get("kind") or None
        if kind is not None and kind not in KINDS:
            raise BadRequest("kind must be one of %s" % ", ".join(KINDS))
        data = queries.endpoint_page(self._db(), self._range(params), service, op, kind)
        return data, lambda: pages.endpoint_page(base, data, status)

    def page_trace(self, params: Dict[str, str], status: Dict[str, Any], base: str) -> Any:
        span = params.get("span") or ""
        if span and not _is_hex(span, 16):
            raise BadRequest("span must be a span id of 16 hexadecimal digits")
        data = queries.trace_page(self._store(), params.get("trace") or "", sidecar=self._db(),
                                  indexed_id=self.rollup.last_id)
        return data, lambda: pages.trace_page(base, data, status, span.lower())

    def page_search(self, params: Dict[str, str], status: Dict[str, Any], base: str) -> Any:
        form: Dict[str, Any] = {k: params.get(k) for k in ("service", "op", "attr", "trace", "range")}
        trace = (params.get("trace") or "").strip()
        if trace:
            trace_id = queries.parse_trace_id(trace)
            location = base + "/trace/" + trace_id
            return (302, [("Location", location), ("Content-Type", "text/plain; charset=utf-8")],
                    b"see " + location.encode()), None
        min_ms = None
        if params.get("min_ms"):
            try:
                min_ms = float(params["min_ms"])
            except ValueError:
                raise BadRequest("min_ms must be a number of milliseconds")
            if not 0 <= min_ms <= 1e9:
                raise BadRequest("min_ms must be between 0 and 1000000000")
        form["min_ms"] = params.get("min_ms") or None
        errors = _flag(params.get("errors"), "errors")
        form["errors"] = errors
        before = None
        if params.get("before"):
            if not params["before"].isdigit() or len(params["before"]) > 18:
                raise BadRequest("before must be a positive whole number")
            before = int(params["before"])
        searched = any(params.get(k) for k in ("service", "op", "min_ms", "errors", "attr", "range", "from", "to",
                                                "before"))
        db = self._db()
        tr = None
        if params.get("range", "all") != "all" or params.get("from") or params.get("to"):
            tr = self._range(params)
        data = None
        if searched:
            data = queries.search(self._store(), db, self.rollup.last_id, tr, service=params.get("service") or None,
                                  op=params.get("op") or None, min_ms=min_ms, errors=errors,
                                  attr=params.get("attr") or None, before=before)
        services = queries.services(db)
        ops = queries.operation_names(db, params.get("service") or None)
        result = data if data is not None else {"results": None}
        return result, lambda: pages.search_page(base, form, data, services, ops, status)

    def page_queries(self, params: Dict[str, str], status: Dict[str, Any], base: str) -> Any:
        db = self._db()
        sort = params.get("sort") or "total_ms"
        data = queries.queries_page(db, self._range(params), params.get("service") or None, sort)
        return data, lambda: pages.queries_page(base, data, queries.services(db), status)

    def page_map(self, params: Dict[str, str], status: Dict[str, Any], base: str) -> Any:
        data = queries.map_page(self._db(), self._range(params))
        return data, lambda: pages.map_page(base, data, status)

    # ------------------------------------------------------------------------------ static files

    def static(self, name: str, environ: Dict[str, Any]) -> Response:
        if name not in STATIC_FILES:
            raise NotFound("no static file %s" % name)
        path = os.path.join(STATIC_DIR, *name.split("/"))
        try:
            with open(path, "rb") as f:
                body = f.read()
        except OSError:
            raise NotFound("no static file %s" % name)
        ctype = {"js": "text/javascript; charset=utf-8", "css": "text/css; charset=utf-8", "svg": "image/svg+xml"}.get(
            name.rsplit(".", 1)[-1]) or mimetypes.guess_type(name)[0] or "text/plain; charset=utf-8"
        etag = '"%x-%x"' % (len(body), int(os.path.getmtime(path)))
        headers = [("Content-Type", ctype), ("Cache-Control", "public, max-age=3600"), ("ETag", etag)]
        if environ.get("HTTP_IF_NONE_MATCH") == etag:
            return 304, headers, b""
        return 200, headers, body


# ------------------------------------------------------------------------------------ helpers

UI_PATHS = ("/services", "/service", "/endpoint", "/search", "/queries", "/map", "/favicon.ico")
UI_PREFIXES = ("/trace/", "/static/", "/api/")


def is_ui_path(path: str, accept: str = "") -> bool:
    """Whether a request path is the UI's, for a server that also serves other things (the collector): `/`
    is when the client asks for HTML (a browser), else the server's own index."""
    if path == "/":
        return "text/html" in (accept or "")
    return path in UI_PATHS or path.startswith(UI_PREFIXES)


def parse_params(query: str) -> Dict[str, str]:
    """The query string as {name: value}; 400 for a value given twice, too long, or not UTF-8 / with NUL."""
    try:
        pairs = urllib.parse.parse_qsl(query, keep_blank_values=True, strict_parsing=False, errors="strict",
                                       max_num_fields=50)
    except (UnicodeDecodeError, ValueError) as exc:
        raise BadRequest("the query string cannot be read (%s)" % type(exc).__name__)
    out: Dict[str, str] = {}
    for key, value in pairs:
        if key not in _PARAMS:
            continue  # unknown parameters are ignored (cache busters, trackers)
        if key in out:
            raise BadRequest("parameter %s is given more than once" % key)
        if len(value) > MAX_PARAM:
            raise BadRequest("parameter %s is longer than %d characters" % (key, MAX_PARAM))
        if "\x00" in value:
            raise BadRequest("parameter %s holds a NUL character" % key)
        out[key] = value
    return out


def required(params: Dict[str, str], name: str) -> str:
    value = params.get(name)
    if not value:
        raise BadRequest("parameter %s is required" % name)
    return value


def _direction(value: Optional[str], default_desc: bool) -> bool:
    if value in (None, ""):
        return default_desc
    if value not in ("asc", "desc"):
        raise BadRequest("dir must be asc or desc")
    return value == "desc"


def _flag(value: Optional[str], name: str) -> bool:
    if value in (None, "", "0", "false", "off"):
        return False
    if value in ("1", "true", "on", "yes"):
        return True
    raise BadRequest("%s must be 1 or 0" % name)


def _is_hex(value: str, digits: int) -> bool:
    return len(value) == digits and all(c in "0123456789abcdefABCDEF" for c in value)


def _json(status: int, obj: Any) -> Response:
    body = json.dumps(obj, ensure_ascii=False, separators=(",", ":"), default=str).encode("utf-8")
    return status, [("Content-Type", "application/json; charset=utf-8"), ("Cache-Control", "no-store")], body


def _html(status: int, text: str) -> Response:
    return status, [("Content-Type", "text/html; charset=utf-8"), ("Cache-Control", "no-store")], text.encode("utf-8")


def _suppress() -> None:
    """No spans of the UI's own work when it runs in a process under the agent."""
    try:
        from autoinstr.integrations import suppress_instrumentation

        suppress_instrumentation()
    except Exception:
        pass
