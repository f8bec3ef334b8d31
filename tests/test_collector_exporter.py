"""CollectorExporter against a small in-process HTTP server: body, headers, and what each answer means."""

from __future__ import annotations

import gzip
import http.server
import threading
import time

import msgpack
import pytest

from autoinstr.config import Config
from autoinstr.export.base import create_exporters
from autoinstr.export.collector import CollectorExporter, ExportError
from autoinstr.export.pipeline import _ExporterSlot


class _Handler(http.server.BaseHTTPRequestHandler):
    def do_POST(self):  # noqa: N802
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length)
        srv = self.server
        srv.received.append((self.path, dict(self.headers), body))
        status, headers = srv.answers.pop(0) if srv.answers else (200, {})
        payload = b'{"accepted":1}' if status == 200 else b'{"error":"nope","detail":"test"}'
        self.send_response(status)
        for k, v in headers.items():
            self.send_header(k, v)
        self.send_header("Content-Length", str(len(payload)))
        self.end_headers()
        self.wfile.write(payload)

    def log_message(self, *args):
        pass


@pytest.fixture
def server():
    srv = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    srv.received, srv.answers = [], []
    t = threading.Thread(target=srv.serve_forever, kwargs={"poll_interval": 0.02}, daemon=True)
    t.start()
    yield srv
    srv.shutdown()
    srv.server_close()


def exporter(server, **env) -> CollectorExporter:
    env.setdefault("AUTOINSTR_COLLECTOR_URL", "http://127.0.0.1:%d" % server.server_address[1])
    return CollectorExporter(Config(env, emit_warnings=False))


def records(n=3, pad=0):
    return [{"trace_id": "%032x" % 7, "span_id": "%016x" % (i + 1), "parent_id": None, "name": "op", "kind": "internal",
             "service": "svc", "start_ns": 10 + i, "duration_ns": 5, "status": "ok", "attributes": {"p": "x" * pad},
             "events": []} for i in range(n)]


def decode(headers, body):
    if headers.get("Content-Encoding") == "gzip":
        body = gzip.decompress(body)
    return msgpack.unpackb(body, raw=False)


def test_registered_and_posts_msgpack_with_token(server):
    cfg = Config({"AUTOINSTR_EXPORTER": "collector", "AUTOINSTR_COLLECTOR_TOKEN": "tok",
                  "AUTOINSTR_COLLECTOR_URL": "http://127.0.0.1:%d/" % server.server_address[1]}, emit_warnings=False)
    (exp,) = create_exporters(cfg)
    assert isinstance(exp, CollectorExporter) and exp.destination().endswith(":%d/v1/spans" % server.server_address[1])
    recs = records(3)
    exp.export(recs)
    path, headers, body = server.received[0]
    assert path == "/v1/spans" and headers["Content-Type"] == "application/msgpack"
    assert headers["Authorization"] == "Bearer tok"
    assert decode(headers, body) == recs


def test_large_bodies_are_gzipped_and_no_token_header_by_default(server):
    exp = exporter(server, AUTOINSTR_COLLECTOR_COMPRESSION="gzip")
    recs = records(50, pad=100)
    exp.export(recs)
    _, headers, body = server.received[0]
    assert headers["Content-Encoding"] == "gzip" and "Authorization" not in headers
    assert decode(headers, body) == recs


@pytest.mark.parametrize("host, compressed", [("127.0.0.1", False), ("localhost", False), ("[::1]", False),
                                              ("collector.example", True), ("10.1.2.3", True)])
def test_compression_auto_leaves_loopback_uncompressed(host, compressed):
    cfg = Config({"AUTOINSTR_COLLECTOR_URL": "http://%s:4990" % host}, emit_warnings=False)
    assert cfg.collector_compression == "auto"
    assert CollectorExporter(cfg).compress is compressed
    forced = Config({"AUTOINSTR_COLLECTOR_URL": "http://%s:4990" % host, "AUTOINSTR_COLLECTOR_COMPRESSION": "none"},
                    emit_warnings=False)
    assert CollectorExporter(forced).compress is False


def test_loopback_bodies_go_uncompressed_by_default(server):
    exp = exporter(server)
    recs = records(50, pad=100)
    exp.export(recs)
    _, headers, body = server.received[0]
    assert "Content-Encoding" not in headers
    assert msgpack.unpackb(body, raw=False) == recs


def test_4xx_is_not_retried(server):
    exp = exporter(server, AUTOINSTR_COLLECTOR_TOKEN="bad")
    server.answers = [(401, {}), (400, {}), (413, {})]
    for status in (401, 400, 413):
        with pytest.raises(ExportError) as info:
            exp.export(records(2))
        assert info.value.retryable is False and info.value.status == status
        assert ("AUTOINSTR_COLLECTOR_TOKEN" in str(info.value)) == (status == 401)
        assert "bad" not in str(info.value).replace("Bad Request", "")  # never the token itself
    assert exp.rejected == 6 and len(server.received) == 3


def test_4xx_dropped_by_the_pipeline_with_one_warning(server, capsys):
    server.answers = [(400, {})] * 3 + [(503, {"Retry-After": "7"})]
    slot = _ExporterSlot(exporter(server), 1000)
    for _ in range(3):
        slot.offer(records(2))
        slot.pump(time.monotonic())
    assert slot.dropped == 6 and not slot.pending and len(server.received) == 3  # dropped at once, not retried
    assert capsys.readouterr().err.count("autoinstr warning") == 1
    slot.offer(records(2))
    now = time.monotonic()
    slot.pump(now)
    assert len(slot.pending) == 1 and slot.pending[0][2] >= now + 7  # kept, retried after Retry-After


@pytest.mark.parametrize("status", [500, 502, 503, 504, 408])
def test_5xx_raise_retryable(server, status):
    exp = exporter(server)
    server.answers = [(status, {})]
    with pytest.raises(ExportError) as info:
        exp.export(records(1))
    assert info.value.retryable is True


def test_connection_errors_raise_retryable(server):
    port = server.server_address[1]
    server.shutdown()
    server.server_close()
    gone = CollectorExporter(Config({"AUTOINSTR_COLLECTOR_URL": "http://127.0.0.1:%d" % port}, emit_warnings=False))
    with pytest.raises(ExportError) as info:
        gone.export(records(1))
    assert info.value.retryable is True
    assert gone.probe()[0] is False


@pytest.mark.parametrize("status", [429, 503])
def test_retry_after_is_passed_to_the_pipeline(server, status):
    exp = exporter(server)
    server.answers = [(status, {"Retry-After": "30"})]
    with pytest.raises(ExportError) as info:
        exp.export(records(1))
    assert info.value.retryable is True and info.value.retry_after == 30.0


def test_probe_and_destination(server):
    exp = exporter(server)
    assert exp.probe() == (False, "healthz answered 501")  # this test server has no GET
    assert exp.destination() == "http://127.0.0.1:%d/v1/spans" % server.server_address[1]


def test_bad_url_is_refused_at_setup():
    with pytest.raises(ValueError):
        CollectorExporter(Config({"AUTOINSTR_COLLECTOR_URL": "http://"}, emit_warnings=False))
