"""The collector's WSGI application.

    POST /v1/spans    a batch of span records (DESIGN.md): msgpack (agents), or JSON; optional gzip
    POST /v1/traces   OTLP/HTTP ExportTraceServiceRequest: protobuf or JSON by Content-Type; optional gzip
    GET  /v1/stats    ingest counters (JSON)
    GET  /healthz     liveness
    GET  /            what this server is, and its endpoints

With a token configured every request but /healthz and / needs `Authorization: Bearer TOKEN` (compared in
constant time; 401 with WWW-Authenticate otherwise). Bodies are bounded (413), read only as far as
Content-Length says (a body without one is read only when the server has framed it, and still bounded),
decoded and validated strictly before anything is written: a batch is stored whole, in one transaction,
or not at all. Every refusal is a 4xx with a short JSON `{"error": reason, "detail": ...}`; a store that
cannot be written answers 503 with Retry-After, so agents retry.

The app is never traced, even in a process running under the agent: it is marked as already wrapped,
and each request turns instrumentation off for its thread (the store's SQLite calls included).
"""

from __future__ import annotations

import hashlib
import hmac
import json
import logging
import os
import threading
import time
from typing import Any, Callable, Dict, Iterable, List, Optional, Tuple

from autoinstr.collector import ingest
from autoinstr.collector.ingest import Rejected

log = logging.getLogger("autoinstr.collector")

SPANS_PATH = "/v1/spans"
OTLP_PATH = "/v1/traces"
STATS_PATH = "/v1/stats"
HEALTH_PATH = "/healthz"
DEFAULT_MAX_BODY = 16 * 1024 * 1024
READ_CHUNK = 64 * 1024
DECODE_SLOTS = 2  # requests decoding and validating at once; the others wait (their bodies are bounded)
_STATUS_TEXT = {200: "OK", 400: "Bad Request", 401: "Unauthorized", 404: "Not Found", 405: "Method Not Allowed",
                411: "Length Required", 413: "Payload Too Large", 415: "Unsupported Media Type",
                500: "Internal Server Error", 503: "Service Unavailable"}
_ROUTES = {SPANS_PATH: "POST", OTLP_PATH: "POST", STATS_PATH: "GET", HEALTH_PATH: "GET", "/": "GET", "/v1/": "GET"}

Response = Tuple[int, List[Tuple[str, str]], bytes]


def _json(status: int, obj: Any, headers: Optional[List[Tuple[str, str]]] = None) -> Response:
    body = json.dumps(obj, separators=(",", ":"), sort_keys=True).encode("utf-8")
    return status, [("Content-Type", "application/json")] + list(headers or ()), body


class Stats:
    """Ingest counters, shared by the request threads."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.started = time.time()
        self.counters: Dict[str, int] = dict.fromkeys((
            "received_batches", "stored_batches", "rejected_batches", "received_spans", "stored_spans",
            "duplicate_spans", "rejected_spans", "received_bytes"), 0)
        self.rejected_by_reason: Dict[str, int] = {}

    def add(self, **values: int) -> None:
        with self.lock:
            for key, value in values.items():
                self.counters[key] += value

    def reject(self, reason: str, spans: int = 0) -> None:
        with self.lock:
            self.counters["rejected_batches"] += 1
            self.counters["rejected_spans"] += spans
            self.rejected_by_reason[reason] = self.rejected_by_reason.get(reason, 0) + 1

    def snapshot(self) -> Dict[str, Any]:
        with self.lock:
            out: Dict[str, Any] = dict(self.counters)
            out["rejected_by_reason"] = dict(self.rejected_by_reason)
        out["uptime_s"] = round(time.time() - self.started, 3)
        return out


class CollectorApp:
    """The WSGI application. One instance per process: it owns the process's one Store, written under a lock."""

    __autoinstr_wsgi__ = True  # the agent's server wrappers leave it alone

    def __init__(self, store_path: str, token: Optional[str] = None, max_body: int = DEFAULT_MAX_BODY,
                 retention_hours: float = 0.0, store_max_mb: float = 0.0) -> None:
        from autoinstr.store import Store

        self.store_path = os.path.abspath(store_path)
        self.store = Store(self.store_path)
        self.store_lock = threading.Lock()
        self.decode_slots = threading.BoundedSemaphore(DECODE_SLOTS)
        self.token = token.encode("utf-8") if token else None
        self.token_digest = hashlib.sha256(self.token or b"").digest()
        self.max_body = max(1, int(max_body))
        self.retention_hours = retention_hours
        self.store_max_mb = store_max_mb
        self.stats = Stats()
        self._log_lock = threading.Lock()
        self._log_window = 0.0
        self._log_count = 0
        self._log_suppressed = 0
        self._ui: Any = None
        self._ui_lock = threading.Lock()

    # ---------------------------------------------------------------------------------- WSGI

    def __call__(self, environ: Dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
        _suppress()
        try:
            status, headers, body = self.handle(environ)
        except Exception:  # a bug here must cost one request, never the server
            log.exception("collector: internal error")
            status, headers, body = _json(500, {"error": "internal", "detail": "internal error"})
        headers = headers + [("Content-Length", str(len(body)))]
        if not any(name == "Cache-Control" for name, _ in headers):
            headers.append(("Cache-Control", "no-store"))
        start_response("%d %s" % (status, _STATUS_TEXT.get(status, "")), headers)
        return [body]

    def handle(self, environ: Dict[str, Any]) -> Response:
        path = environ.get("PATH_INFO") or "/"
        method = (environ.get("REQUEST_METHOD") or "GET").upper()
        if method in ("GET", "HEAD") and _is_ui_path(path, environ.get("HTTP_ACCEPT") or ""):
            return self.ui(environ)
        allowed = _ROUTES.get(path)
        if allowed is None:
            return _json(404, {"error": "not_found", "detail": "no such endpoint; see GET /"})
        if method != allowed:
            if allowed == "POST":
                self.stats.reject("method_not_allowed")
            return _json(405, {"error": "method_not_allowed", "detail": "use %s" % allowed}, [("Allow", allowed)])
        if path == HEALTH_PATH:
            return _json(200, {"status": "ok"})
        if path in ("/", "/v1/"):
            return _json(200, self.index())
        if not self._authorized(environ):
            self.stats.reject("unauthorized")
            self._log_rejection(environ, "unauthorized", "missing or wrong bearer token")
            return _json(401, {"error": "unauthorized", "detail": "a valid bearer token is required"},
                         [("WWW-Authenticate", 'Bearer realm="autoinstr-collector"')])
        if path == STATS_PATH:
            return _json(200, self.stats.snapshot())
        return self.ingest(environ, otlp=(path == OTLP_PATH))

    def index(self) -> Dict[str, Any]:
        return {"service": "autoinstr collector",
                "endpoints": {"POST " + SPANS_PATH: "span records, application/msgpack or application/json",
                              "POST " + OTLP_PATH: "OTLP/HTTP traces, application/x-protobuf or application/json",
                              "GET " + STATS_PATH: "ingest counters",
                              "GET " + HEALTH_PATH: "liveness",
                              "GET /": "the web UI, for a browser (Accept: text/html)"},
                "max_body_bytes": self.max_body, "auth": "bearer" if self.token else "none"}

    # ------------------------------------------------------------------------------ web UI

    def ui(self, environ: Dict[str, Any]) -> Response:
        """The web UI over this collector's store (started on first use). With a token set it needs the token
        too: as a bearer token, or as the password of HTTP Basic auth (what a browser can send)."""
        if self.token is not None and not (self._authorized(environ) or self._basic_authorized(environ)):
            return (401, [("Content-Type", "text/plain; charset=utf-8"),
                          ("WWW-Authenticate", 'Basic realm="autoinstr", charset="UTF-8"')],
                    b"the collector's token is required (as the password)\n")
        with self._ui_lock:
            if self._ui is None:
                from autoinstr.ui.app import UIApp

                self._ui = UIApp(self.store_path)
        return self._ui.respond(environ)

    def _basic_authorized(self, environ: Dict[str, Any]) -> bool:
        import base64
        import binascii

        header = environ.get("HTTP_AUTHORIZATION") or ""
        scheme, _, value = header.strip().partition(" ")
        if scheme.lower() != "basic":
            return False
        try:
            password = base64.b64decode(value.strip(), validate=True).partition(b":")[2]
        except (binascii.Error, ValueError):
            return False
        return hmac.compare_digest(hashlib.sha256(password).digest(), self.token_digest)

    # ------------------------------------------------------------------------------ ingest

    def _authorized(self, environ: Dict[str, Any]) -> bool:
        if self.token is None:
            return True
        header = environ.get("HTTP_AUTHORIZATION") or ""
        scheme, _, given = header.strip().partition(" ")
        if scheme.lower() != "bearer":
            given = ""
        try:
            given_bytes = given.strip().encode("latin-1")  # WSGI header values are latin-1 strings
        except (UnicodeEncodeError, AttributeError):
            given_bytes = b""
        # digests of equal length: the comparison reveals neither the token's content nor its length
        return hmac.compare_digest(hashlib.sha256(given_bytes).digest(), self.token_digest)

    def ingest(self, environ: Dict[str, Any], otlp: bool) -> Response:
        self.stats.add(received_batches=1)
        try:
            body = self._read_body(environ)
            self.stats.add(received_bytes=len(body))
            body = ingest.decompress(body, environ.get("HTTP_CONTENT_ENCODING"), self.max_body)
            ctype = environ.get("CONTENT_TYPE")
            with self.decode_slots:  # bounds the memory that decoding takes at once
                records = ingest.decode_otlp_body(body, ctype) if otlp else ingest.decode_spans_body(body, ctype)
            spans = len(records)
        except Rejected as exc:  # nothing of the batch is stored
            self.stats.reject(exc.reason)
            self._log_rejection(environ, exc.reason, exc.detail)
            return _json(exc.status, {"error": exc.reason, "detail": exc.detail})
        self.stats.add(received_spans=spans)
        try:
            stored = self._store(records)
        except Exception as exc:
            self.stats.reject("store_unavailable", spans)
            log.warning("collector: could not write %d span(s) to %s (%s: %s); the sender will retry",
                        spans, self.store_path, type(exc).__name__, exc)
            return _json(503, {"error": "store_unavailable", "detail": "the store cannot be written now"},
                         [("Retry-After", "1")])
        self.stats.add(stored_batches=1, stored_spans=stored, duplicate_spans=spans - stored)
        if otlp:
            if ingest.media_type(environ.get("CONTENT_TYPE")) in ingest.PROTOBUF_TYPES:
                return 200, [("Content-Type", "application/x-protobuf")], b""  # an empty ExportTraceServiceResponse
            return _json(200, {})
        return _json(200, {"accepted": spans, "stored": stored, "duplicates": spans - stored})

    def _read_body(self, environ: Dict[str, Any]) -> bytes:
        stream = environ.get("wsgi.input")
        raw_length = (environ.get("CONTENT_LENGTH") or "").strip()
        if raw_length:
            if not raw_length.isdigit() or len(raw_length) > 18:
                raise Rejected(400, "bad_content_length", "Content-Length is not a number")
            length = int(raw_length)
            if length > self.max_body:
                raise Rejected(413, "too_large", "body exceeds %d bytes" % self.max_body)
            bounded = False
        elif environ.get("wsgi.input_terminated"):
            length, bounded = self.max_body + 1, True  # the server frames the body: read to its end, bounded
        else:
            raise Rejected(411, "length_required", "Content-Length is required")
        if stream is None:
            raise Rejected(400, "truncated", "no request body")
        chunks: List[bytes] = []
        remaining = length
        while remaining > 0:
            chunk = stream.read(min(READ_CHUNK, remaining))
            if not chunk:
                break
            chunks.append(chunk)
            remaining -= len(chunk)
        body = b"".join(chunks)
        if bounded:
            if len(body) > self.max_body:
                raise Rejected(413, "too_large", "body exceeds %d bytes" % self.max_body)
        elif len(body) != length:
            raise Rejected(400, "truncated", "body shorter than its Content-Length")
        if not body:
            raise Rejected(400, "empty", "empty body")
        return body

    def _store(self, records: List[Dict[str, Any]]) -> int:
        if not records:
            return 0
        with self.store_lock:  # one writer per process; Store.insert is one IMMEDIATE transaction
            stored = self.store.insert(records)
            if self.retention_hours or self.store_max_mb:
                try:
                    self.store.apply_retention(self.retention_hours, self.store_max_mb)
                except Exception as exc:
                    log.warning("collector: retention failed (%s: %s)", type(exc).__name__, exc)
        return stored

    # ------------------------------------------------------------------------------ logging

    def _log_rejection(self, environ: Dict[str, Any], reason: str, detail: str) -> None:
        """One line per refused request, at most 20 a minute (then a count of the lines left out)."""
        now = time.monotonic()
        with self._log_lock:
            if now - self._log_window >= 60:
                if self._log_suppressed:
                    log.warning("collector: %d more refused request(s) not logged", self._log_suppressed)
                self._log_window, self._log_count, self._log_suppressed = now, 0, 0
            self._log_count += 1
            if self._log_count > 20:
                self._log_suppressed += 1
                return
        log.warning("collector: refused %s %s from %s: %s (%s)", environ.get("REQUEST_METHOD"),
                    environ.get("PATH_INFO"), environ.get("REMOTE_ADDR", "?"), reason, detail)

    def log_stats(self) -> None:
        s = self.stats.snapshot()
        log.info("collector: %d batch(es) received, %d stored, %d rejected; spans: %d received, %d stored, "
                 "%d duplicate, %d rejected; rejected by reason: %s", s["received_batches"], s["stored_batches"],
                 s["rejected_batches"], s["received_spans"], s["stored_spans"], s["duplicate_spans"],
                 s["rejected_spans"], json.dumps(s["rejected_by_reason"], sort_keys=True))

    def close(self) -> None:
        with self._ui_lock:
            if self._ui is not None:
                self._ui.close()
        with self.store_lock:
            self.store.close()


def _is_ui_path(path: str, accept: str) -> bool:
    from autoinstr.ui.app import is_ui_path

    return is_ui_path(path, accept)


def _suppress() -> None:
    """No spans of the collector's own work when it runs under the agent."""
    try:
        from autoinstr.integrations import suppress_instrumentation

        suppress_instrumentation()
    except Exception:
        pass
