"""The services of the HTTP client tests (integration/test_http_clients.py): a callee B and a caller A, both
bare WSGI apps served by waitress under the agent, a script that calls a plain server with every client,
and that plain server itself (a raw socket, untraced, keeping every request's bytes).

A's /call runs one outgoing request with the client named in its query and answers 200 with a JSON report
(the client's status or exception, the body, whether the app's header dict came back unchanged), so one GET
to A exercises one client inside a real server span, and B's server span tells what arrived.
"""

from __future__ import annotations

import socket
import threading

CLIENTS = ("requests", "urllib3", "urllib", "http.client", "httpx", "httpx-async", "aiohttp")

# ------------------------------------------------------------------------------------------ service B

CALLEE_APP = r'''
import json, time
from urllib.parse import parse_qs

TRACE_HEADERS = ("traceparent", "tracestate", "baggage", "b3", "x-b3-traceid", "x-b3-spanid", "x-b3-sampled",
                 "x-b3-flags", "x-b3-parentspanid")


def app(environ, start_response):
    path = environ.get("PATH_INFO", "")
    query = {k: v[0] for k, v in parse_qs(environ.get("QUERY_STRING", "")).items()}
    if path == "/echo":
        seen = {h: environ.get("HTTP_" + h.upper().replace("-", "_")) for h in TRACE_HEADERS}
        body = json.dumps({"headers": {k: v for k, v in seen.items() if v is not None},
                           "x-user": environ.get("HTTP_X_USER")}).encode()
        start_response("200 OK", [("Content-Type", "application/json"), ("Content-Length", str(len(body)))])
        return [body]
    if path == "/status":
        code = int(query.get("code", "500"))
        start_response("%d Whatever" % code, [("Content-Type", "text/plain"), ("Content-Length", "6")])
        return [b"status"]
    if path == "/slow":
        time.sleep(float(query.get("seconds", "1")))
        start_response("200 OK", [("Content-Type", "text/plain"), ("Content-Length", "4")])
        return [b"slow"]
    if path == "/redirect":
        start_response("302 Found", [("Location", "/echo?probe=%s" % query.get("probe", "")),
                                     ("Content-Length", "0")])
        return [b""]
    if path == "/stream":
        def chunks():
            for i in range(4):
                yield ("chunk%d;" % i).encode()
                time.sleep(0.1)
        start_response("200 OK", [("Content-Type", "text/plain")])
        return chunks()
    start_response("404 Not Found", [("Content-Type", "text/plain"), ("Content-Length", "4")])
    return [b"nope"]
'''

# ------------------------------------------------------------------------------------------ service A

CALLER_APP = r'''
import asyncio, http.client, json, os, time, urllib.error, urllib.request
from urllib.parse import parse_qs, urlsplit

B_PORT = int(os.environ["B_PORT"])


def qualified(exc):
    cls = type(exc)
    return cls.__qualname__ if cls.__module__ == "builtins" else "%s.%s" % (cls.__module__, cls.__qualname__)


def call(client, url, headers, timeout, stream):
    """-> (status, body bytes, chunks read)"""
    if client == "requests":
        import requests
        r = requests.get(url, headers=headers, timeout=timeout, stream=stream)
        if stream:
            parts = list(r.iter_content(chunk_size=4))
            return r.status_code, b"".join(parts), len(parts)
        return r.status_code, r.content, 1
    if client == "urllib3":
        import urllib3
        r = urllib3.PoolManager().request("GET", url, headers=headers, timeout=timeout, preload_content=not stream,
                                          retries=urllib3.Retry(total=None, connect=0, read=0, redirect=3))
        if stream:
            parts = list(r.stream(4))
            r.release_conn()
            return r.status, b"".join(parts), len(parts)
        return r.status, r.data, 1
    if client == "urllib":
        try:
            resp = urllib.request.urlopen(urllib.request.Request(url, headers=headers or {}), timeout=timeout)
        except urllib.error.HTTPError as exc:
            with exc:
                return exc.code, exc.read(), 1
        with resp:
            return resp.status, *read_parts(resp.read, stream)
    if client == "http.client":
        u = urlsplit(url)
        conn = http.client.HTTPConnection(u.hostname, u.port, timeout=timeout)
        try:
            conn.request("GET", u.path + "?" + u.query, headers=headers or {})
            resp = conn.getresponse()
            return resp.status, *read_parts(resp.read, stream)
        finally:
            conn.close()
    if client == "httpx":
        import httpx
        with httpx.Client(timeout=timeout, follow_redirects=True) as c:
            if stream:
                with c.stream("GET", url, headers=headers) as r:
                    parts = list(r.iter_bytes(4))
                    return r.status_code, b"".join(parts), len(parts)
            r = c.get(url, headers=headers)
            return r.status_code, r.content, 1
    if client == "httpx-async":
        import httpx
        async def go():
            async with httpx.AsyncClient(timeout=timeout, follow_redirects=True) as c:
                if stream:
                    async with c.stream("GET", url, headers=headers) as r:
                        parts = [p async for p in r.aiter_bytes(4)]
                        return r.status_code, b"".join(parts), len(parts)
                r = await c.get(url, headers=headers)
                return r.status_code, r.content, 1
        return asyncio.run(go())
    if client == "aiohttp":
        import aiohttp
        async def go():
            session = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=timeout))
            async with session as s, s.get(url, headers=headers) as r:
                if stream:
                    parts = [p async for p in r.content.iter_chunked(4)]
                    return r.status, b"".join(parts), len(parts)
                return r.status, await r.read(), 1
        return asyncio.run(go())
    raise ValueError(client)


def read_parts(read, stream):
    if not stream:
        return read(), 1
    parts = []
    while True:
        part = read(4)
        if not part:
            return b"".join(parts), len(parts)
        parts.append(part)


def app(environ, start_response):
    q = {k: v[0] for k, v in parse_qs(environ.get("QUERY_STRING", "")).items()}
    sep = "&" if "?" in q["path"] else "?"
    url = "http://127.0.0.1:%s%s%sprobe=%s" % (q.get("port", B_PORT), q["path"], sep, q["probe"])
    headers = None
    if q.get("headers") == "user":
        headers = {"X-User": "u-1", "Accept": "*/*"}
    elif q.get("headers") == "own":
        headers = {"X-User": "u-2", "traceparent": q["own"]}
    before = dict(headers) if headers is not None else None
    report = {"status": None, "error": None, "body": None, "chunks": 0}
    started = time.time_ns()
    try:
        status, body, chunks = call(q["client"], url, headers, float(q.get("timeout", "10")), q.get("stream") == "1")
        report.update(status=status, body=body.decode("latin-1"), chunks=chunks)
    except Exception as exc:
        report["error"] = qualified(exc)
    report["elapsed_ns"] = time.time_ns() - started
    report["unchanged"] = headers == before and (headers is None or list(headers) == list(before))
    data = json.dumps(report).encode()
    start_response("200 OK", [("Content-Type", "application/json"), ("Content-Length", str(len(data)))])
    return [data]
'''

# ------------------------------------------------------------ a plain server and a script that calls it

WIRE_SCRIPT = r'''
import asyncio, contextvars, http.client, json, sys, urllib.request
import autoinstr
from autoinstr.integrations import suppress_instrumentation

port, parent_header = int(sys.argv[1]), sys.argv[2]
base = "http://127.0.0.1:%d" % port


def one(client, path):
    url = base + path
    if client == "requests":
        import requests
        requests.get(url, timeout=10).close()
    elif client == "urllib3":
        import urllib3
        urllib3.PoolManager().request("GET", url, timeout=10)
    elif client == "urllib":
        urllib.request.urlopen(url, timeout=10).read()
    elif client == "http.client":
        c = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
        c.request("GET", path)
        c.getresponse().read()
        c.close()
    elif client == "httpx":
        import httpx
        httpx.get(url, timeout=10)
    elif client == "httpx-async":
        import httpx
        async def go():
            async with httpx.AsyncClient(timeout=10) as c:
                await c.get(url)
        asyncio.run(go())
    elif client == "aiohttp":
        import aiohttp
        async def go():
            async with aiohttp.ClientSession() as s, s.get(url) as r:
                await r.read()
        asyncio.run(go())


parent = autoinstr.extract(json.loads(parent_header))
with autoinstr.span("wire-root", kind="server", parent=parent):
    for client in sys.argv[3].split(","):
        one(client, "/wire?client=%s" % client)

        def suppressed(client=client):
            suppress_instrumentation()  # as the agent's export thread does
            one(client, "/agent?client=%s" % client)
        contextvars.copy_context().run(suppressed)
print("wire-done")
'''


class RawServer:
    """Plain and untraced: accepts on 127.0.0.1, keeps each request's head (bytes up to the blank line),
    answers `200 ok` and closes the connection."""

    def __init__(self) -> None:
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(64)
        self.sock.settimeout(0.2)
        self.port = self.sock.getsockname()[1]
        self.heads: list = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._serve, daemon=True)
        self._thread.start()

    def _serve(self) -> None:
        while not self._stop.is_set():
            try:
                conn, _ = self.sock.accept()
            except OSError:
                continue
            threading.Thread(target=self._one, args=(conn,), daemon=True).start()

    def _one(self, conn: socket.socket) -> None:
        with conn:
            conn.settimeout(10)
            data = b""
            try:
                while b"\r\n\r\n" not in data and len(data) < 65536:
                    chunk = conn.recv(4096)
                    if not chunk:
                        return
                    data += chunk
                self.heads.append(data.split(b"\r\n\r\n", 1)[0] + b"\r\n\r\n")
                conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: 2\r\n"
                             b"Connection: close\r\n\r\nok")
            except OSError:
                pass

    def close(self) -> None:
        self._stop.set()
        self._thread.join(5)
        self.sock.close()

    def head_for(self, marker: bytes) -> bytes:
        found = [h for h in self.heads if marker in h.split(b"\r\n", 1)[0]]
        assert len(found) == 1, (marker, len(found))
        return found[0]
