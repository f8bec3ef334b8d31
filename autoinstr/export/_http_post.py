"""One HTTP POST for the exporters that ship over HTTP (otlp, zipkin, collector), with http.client.

    status, headers, body = post(url, body, headers, timeout, gzip_body=False)   # any status
    send(url, body, headers, timeout, gzip_body=False, what="otlp")              # raises ExportError unless 2xx

ExportError carries what the pipeline needs to decide (see pipeline._ExporterSlot._send):
- `retry_after`: seconds the server asked us to wait (Retry-After on 429/503), or None;
- `retryable`: False for a request the server will never accept (4xx other than 408/429, 3xx): the batch
  is dropped at once instead of being retried.
Messages name the URL (without userinfo) and the status, never a header value (they hold API keys).

Every call runs on the agent's flush or sender thread, whose context is marked suppressed, so our own
http.client integration does not trace it. No proxies, no redirects; the response is read up to
MAX_RESPONSE bytes; each socket operation is bounded by `timeout`, and so is the whole exchange.

Connections are kept alive between exports (a few per destination, each used by one export at a time): a new
TCP connection per batch cost the collector a handshake and a thread, and us about half of a batch's HTTP
time. A kept connection is reused only while it has been idle under KEEP_IDLE_S and the server has sent
nothing on it since (it closed it: the socket reads as ready); a send on a reused connection the server
closed meanwhile is made once more on a new one. A forked child forgets the parent's connections.
"""

from __future__ import annotations

import gzip
import http.client
import os
import select
import time
import urllib.parse
from _thread import allocate_lock

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any, Dict, List, Mapping, Optional, Tuple

MAX_RESPONSE = 64 * 1024
KEEP_IDLE_S = 4.0  # under the shortest keep-alive timeouts servers use (5 s: nginx's is 75, Go's and gunicorn's 2-90)
KEEP_PER_DESTINATION = 4
MAX_RETRY_AFTER = 3600.0
_RETRY_STATUSES = frozenset((408, 429, 502, 503, 504))


class ExportError(Exception):
    """A failed export; `retry_after` (seconds or None) and `retryable` guide the pipeline."""

    def __init__(self, message: str, status: int = 0, retry_after: Optional[float] = None,
                 retryable: bool = True) -> None:
        super().__init__(message)
        self.status = status
        self.retry_after = retry_after
        self.retryable = retryable


def safe_url(url: str) -> str:
    """The URL without userinfo or query (either may hold credentials), for messages."""
    try:
        parts = urllib.parse.urlsplit(url)
        host = parts.hostname or ""
        if ":" in host:
            host = "[%s]" % host
        netloc = host + (":%d" % parts.port if parts.port else "")
        return urllib.parse.urlunsplit((parts.scheme, netloc, parts.path, "", ""))
    except ValueError:
        return "<invalid url>"


def parse_retry_after(value: Optional[str], now: Optional[float] = None) -> Optional[float]:
    """Retry-After as seconds from now: delta-seconds or an HTTP-date; None when absent or invalid."""
    if not value:
        return None
    value = value.strip()
    if value.isdigit():
        return min(float(value), MAX_RETRY_AFTER) if len(value) < 12 else MAX_RETRY_AFTER
    try:
        from email.utils import parsedate_to_datetime

        when = parsedate_to_datetime(value).timestamp()
    except (TypeError, ValueError, IndexError, OverflowError):
        return None
    return min(max(0.0, when - (time.time() if now is None else now)), MAX_RETRY_AFTER)


def _destination(url: str) -> Tuple[Tuple[str, str, Optional[int]], str]:
    """((scheme, host, port), path and query) of an http(s) URL."""
    parts = urllib.parse.urlsplit(url)
    scheme = parts.scheme.lower()
    host = parts.hostname
    if scheme not in ("http", "https") or not host:
        raise ExportError("not an http(s) URL: %s" % safe_url(url), retryable=False)
    try:
        port = parts.port
    except ValueError:
        raise ExportError("bad port in %s" % safe_url(url), retryable=False) from None
    return (scheme, host, port), (parts.path or "/") + ("?" + parts.query if parts.query else "")


def _new_connection(destination: Tuple[str, str, Optional[int]], timeout: float) -> http.client.HTTPConnection:
    scheme, host, port = destination
    if scheme == "https":
        import ssl

        return http.client.HTTPSConnection(host, port, timeout=timeout, context=ssl.create_default_context())
    return http.client.HTTPConnection(host, port, timeout=timeout)


# destination -> [(connection, monotonic time it was given back)]
_idle: Dict[Tuple[str, str, Optional[int]], List[Tuple[http.client.HTTPConnection, float]]] = {}
_idle_lock = allocate_lock()


def _kept(destination: Tuple[str, str, Optional[int]], timeout: float) -> Optional[http.client.HTTPConnection]:
    """A kept-alive connection to the destination still fit for a request, or None."""
    while True:
        with _idle_lock:
            connections = _idle.get(destination)
            if not connections:
                return None
            conn, since = connections.pop()
        sock = conn.sock
        try:
            fresh = (sock is not None and time.monotonic() - since < KEEP_IDLE_S
                     and not select.select([sock], [], [], 0)[0])  # readable: closed by the server (or garbage)
            if fresh:
                conn.timeout = timeout
                sock.settimeout(timeout)
                return conn
        except (OSError, ValueError):
            pass
        conn.close()


def _keep(destination: Tuple[str, str, Optional[int]], conn: http.client.HTTPConnection) -> None:
    with _idle_lock:
        connections = _idle.setdefault(destination, [])
        if len(connections) < KEEP_PER_DESTINATION:
            connections.append((conn, time.monotonic()))
            return
    conn.close()


def forget_connections() -> None:
    """In a forked child: the parent's sockets are not ours to use (dropped, not closed: no bytes are sent). Run at
    fork, and by the HTTP exporters' after_fork (a fork the at-fork hooks missed, found by the pipeline's pid check)."""
    global _idle, _idle_lock
    _idle, _idle_lock = {}, allocate_lock()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=forget_connections)


def _exchange(conn: http.client.HTTPConnection, path: str, body: bytes, headers: Mapping[str, str],
              deadline: float) -> Tuple[int, Dict[str, str], bytes, bool]:
    """One request and its response: (status, headers, up to MAX_RESPONSE bytes of body, whether the
    connection may carry another request)."""
    conn.request("POST", path, body=body, headers=headers)
    if time.monotonic() > deadline:
        raise TimeoutError("timed out sending")
    response = conn.getresponse()
    chunks = []
    size = 0
    while size < MAX_RESPONSE and time.monotonic() <= deadline:
        chunk = response.read1(MAX_RESPONSE - size) if hasattr(response, "read1") else response.read(
            MAX_RESPONSE - size)
        if not chunk:
            break
        chunks.append(chunk)
        size += len(chunk)
    if response.length == 0:  # all of a sized body read (read1 leaves the response open at its end)
        response.close()  # (its file only: the connection keeps the socket)
    reusable = response.isclosed() and not response.will_close  # all of it read, and the server keeps it open
    return response.status, {k.lower(): v for k, v in response.getheaders()}, b"".join(chunks), reusable


def post(url: str, body: bytes, headers: Optional[Mapping[str, str]] = None, timeout: float = 10.0,
         gzip_body: bool = False) -> Tuple[int, Dict[str, str], bytes]:
    """POST `body`; returns (status, response headers with lower-case names, up to MAX_RESPONSE bytes of
    the response). Network failures raise ExportError (retryable)."""
    send_headers = {"User-Agent": _user_agent()}
    send_headers.update(headers or {})
    if gzip_body:
        body = gzip.compress(body, compresslevel=1)  # most of the gain for a fraction of level 6's CPU
        send_headers["Content-Encoding"] = "gzip"
    destination, path = _destination(url)
    deadline = time.monotonic() + max(timeout, 0.001)
    suppressed = _suppress()  # already so on the agent's threads; also when the exit flush runs on the main one
    conn = None
    reusable = False
    try:
        conn = _kept(destination, timeout)
        if conn is not None:
            try:
                status, response_headers, data, reusable = _exchange(conn, path, body, send_headers, deadline)
                return status, response_headers, data
            except (ConnectionError, http.client.BadStatusLine) as exc:
                # the server closed the kept connection as we sent (RemoteDisconnected is both): once more, anew
                if isinstance(exc, http.client.BadStatusLine) and not isinstance(exc, ConnectionError):
                    raise
                conn.close()
        conn = _new_connection(destination, timeout)
        status, response_headers, data, reusable = _exchange(conn, path, body, send_headers, deadline)
        return status, response_headers, data
    except ExportError:
        raise
    except (OSError, http.client.HTTPException, ValueError) as exc:
        reusable = False
        raise ExportError("POST %s failed: %s: %s" % (safe_url(url), type(exc).__name__, str(exc)[:200])) from None
    finally:
        if conn is not None:
            try:
                if reusable:
                    _keep(destination, conn)
                else:
                    conn.close()
            except Exception:
                pass
        _unsuppress(suppressed)


def send(url: str, body: bytes, headers: Optional[Mapping[str, str]] = None, timeout: float = 10.0,
         gzip_body: bool = False) -> Tuple[int, Dict[str, str], bytes]:
    """post(), raising ExportError unless the server answered 2xx."""
    status, response_headers, data = post(url, body, headers, timeout, gzip_body)
    if 200 <= status < 300:
        return status, response_headers, data
    excerpt = data[:200].decode("utf-8", "replace").replace("\n", " ").strip()
    message = "HTTP %d from %s%s" % (status, safe_url(url), (": " + excerpt) if excerpt else "")
    if status in _RETRY_STATUSES or status >= 500:
        raise ExportError(message, status, parse_retry_after(response_headers.get("retry-after"))
                          if status in (429, 503) else None)
    raise ExportError(message + " (not retried)", status, retryable=False)


def _suppress() -> Any:
    """Mark this context as the agent's own I/O (integrations then trace nothing); a token to undo it."""
    try:
        from autoinstr.integrations import _suppressed

        return _suppressed, _suppressed.set(True)
    except Exception:
        return None


def _unsuppress(state: Any) -> None:
    if state is not None:
        try:
            state[0].reset(state[1])
        except Exception:
            pass


def _user_agent() -> str:
    try:
        from autoinstr import __version__

        return "autoinstr/%s" % __version__
    except Exception:
        return "autoinstr"


def probe(url: str, timeout: float = 1.0) -> Tuple[bool, str]:
    """Can a TCP connection to the URL's host and port be made? (for `autoinstr-run --info`)"""
    import socket

    try:
        parts = urllib.parse.urlsplit(url)
        port = parts.port or (443 if parts.scheme.lower() == "https" else 80)
        with socket.create_connection((parts.hostname or "", port), timeout=timeout):
            return True, "reachable"
    except (OSError, ValueError) as exc:
        return False, "unreachable (%s)" % (exc.strerror if isinstance(exc, OSError) and exc.strerror else exc)
