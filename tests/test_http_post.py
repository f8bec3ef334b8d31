"""The exporters' HTTP POST keeps its connections alive, and never lets a kept connection lose a batch.

A real loopback server (http.server, HTTP/1.1) counts the TCP connections it accepts and the requests it reads;
its behaviour per connection is chosen by each test: keep it, close it after each answer, close it without
answering the second request (a server whose keep-alive timeout fired as we sent), answer too much.
"""

from __future__ import annotations

import http.server
import os
import socket
import threading
import time

import pytest

from autoinstr.export import _http_post


class _Server:
    def __init__(self, mode: str = "keep", body: bytes = b"{}") -> None:
        self.mode = mode
        self.connections = 0
        self.requests = 0
        self.bodies: list = []
        server = self

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def setup(self) -> None:
                super().setup()
                self.served = 0
                with lock:
                    server.connections += 1

            def do_POST(self) -> None:
                data = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                if server.mode == "drop-second" and self.served == 1:
                    self.close_connection = True  # read, never answered: as a keep-alive timeout firing
                    return
                self.served += 1
                with lock:
                    server.requests += 1
                    server.bodies.append(data)
                self.send_response(200)
                self.send_header("Content-Length", str(len(body)))
                if server.mode == "close":
                    self.send_header("Connection", "close")
                self.end_headers()
                self.wfile.write(body)
                if server.mode == "close":
                    self.close_connection = True

            def log_message(self, *args: object) -> None:
                pass

        lock = threading.Lock()
        class Quiet(http.server.ThreadingHTTPServer):
            def handle_error(self, request: object, client_address: object) -> None:
                pass  # (the client closing first, in the tests that make it)

        self.httpd = Quiet(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.url = "http://127.0.0.1:%d/v1/spans" % self.httpd.server_address[1]
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture
def server():
    made = []

    def make(mode: str = "keep", body: bytes = b"{}") -> _Server:
        s = _Server(mode, body)
        made.append(s)
        return s

    _http_post.forget_connections()
    yield make
    _http_post.forget_connections()
    for s in made:
        s.close()


def post(url: str, data: bytes = b"x") -> int:
    status, _, _ = _http_post.post(url, data, {"Content-Type": "application/msgpack"}, 5.0)
    return status


def test_posts_to_one_destination_share_one_connection(server):
    s = server()
    assert [post(s.url, b"%d" % i) for i in range(5)] == [200] * 5
    assert s.connections == 1 and s.requests == 5
    assert s.bodies == [b"0", b"1", b"2", b"3", b"4"]


def test_a_server_that_closes_after_each_answer_gets_a_new_connection_each_time(server):
    s = server("close")
    assert [post(s.url) for _ in range(4)] == [200] * 4
    assert s.connections == 4 and s.requests == 4


def test_a_kept_connection_closed_by_the_server_as_we_send_is_sent_again_on_a_new_one(server, monkeypatch):
    """The server reads the second request on a connection and closes it unanswered (its keep-alive timeout):
    the batch goes again on a new connection, once, and arrives; nothing is lost or doubled on the server."""
    s = server("drop-second")
    monkeypatch.setattr(_http_post.select, "select", lambda r, w, x, t: ([], [], []))  # the race: not seen yet
    assert [post(s.url, b"%d" % i) for i in range(5)] == [200] * 5
    assert s.requests == 5 and s.bodies == [b"0", b"1", b"2", b"3", b"4"]
    assert s.connections == 5


def test_a_kept_connection_the_server_closed_while_idle_is_not_used(server):
    s = server("keep")
    assert post(s.url) == 200
    (conn, _), = _http_post._idle[next(iter(_http_post._idle))]
    conn.sock.shutdown(socket.SHUT_RD)  # as if the server had closed its end: the socket reads as ready (EOF)
    assert post(s.url) == 200
    assert s.connections == 2 and s.requests == 2


def test_a_connection_idle_too_long_is_not_reused(server, monkeypatch):
    s = server()
    monkeypatch.setattr(_http_post, "KEEP_IDLE_S", 0.05)
    assert post(s.url) == 200
    time.sleep(0.1)
    assert post(s.url) == 200
    assert s.connections == 2


def test_an_answer_longer_than_what_is_read_closes_the_connection(server):
    s = server(body=b"y" * (_http_post.MAX_RESPONSE + 10))
    assert post(s.url) == 200 and post(s.url) == 200
    assert s.connections == 2


def test_at_most_a_few_connections_are_kept_per_destination(server):
    s = server()
    barrier = threading.Barrier(8)
    results = []

    def send() -> None:
        barrier.wait()
        results.append(post(s.url))

    threads = [threading.Thread(target=send) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(10)
    assert results == [200] * 8
    assert sum(len(v) for v in _http_post._idle.values()) <= _http_post.KEEP_PER_DESTINATION


@pytest.mark.skipif(not hasattr(os, "fork"), reason="fork")
def test_a_forked_child_opens_its_own_connection(server):
    s = server()
    assert post(s.url) == 200
    pid = os.fork()
    if pid == 0:  # pragma: no cover (the child)
        code = 0
        try:
            code = 0 if post(s.url) == 200 else 1
        except BaseException:
            code = 1
        os._exit(code)
    _, status = os.waitpid(pid, 0)
    assert os.WEXITSTATUS(status) == 0
    assert post(s.url) == 200  # the parent's kept connection still works
    assert s.connections == 2 and s.requests == 3


def test_a_refused_connection_is_an_export_error(server):
    s = server()
    url = s.url
    s.close()
    with pytest.raises(_http_post.ExportError) as info:
        post(url)
    assert info.value.retryable


@pytest.mark.parametrize("name", ["collector", "otlp", "zipkin"])
def test_each_http_exporter_forgets_kept_connections_after_a_fork(server, name):
    """A fork the at-fork hooks missed (a C server forking itself) is found by the pipeline's pid check, which
    calls each exporter's after_fork: the HTTP exporters then drop the connections the parent keeps."""
    from autoinstr import config
    from autoinstr.export.base import create_exporters

    s = server()
    assert post(s.url) == 200 and any(_http_post._idle.values())
    cfg = config.reset({"AUTOINSTR_EXPORTER": name, "AUTOINSTR_COLLECTOR_URL": s.url,
                        "AUTOINSTR_OTLP_ENDPOINT": s.url, "AUTOINSTR_ZIPKIN_URL": s.url})
    try:
        (exporter,) = create_exporters(cfg)
        exporter.after_fork()
    finally:
        config.reset()
    assert not any(_http_post._idle.values())
    assert post(s.url) == 200 and s.connections == 2
