"""`collector`: span records as msgpack batches, POSTed to the autoinstr collector.

    POST {AUTOINSTR_COLLECTOR_URL}/v1/spans
    Content-Type: application/msgpack          (a msgpack array of span records, as in DESIGN.md)
    Content-Encoding: gzip                     (bodies over 1 KiB; AUTOINSTR_COLLECTOR_COMPRESSION=auto leaves
                                               it out to a collector on this machine, gzip/none force it)
    Authorization: Bearer {AUTOINSTR_COLLECTOR_TOKEN}   (when set)

HTTP goes through the exporters' shared helper (_http_post): a 2xx is success; a 5xx, 408, a timeout or a
connection error raises a retryable ExportError (the pipeline retries with backoff), 429/503 with the
server's Retry-After; any other 4xx means the collector refuses this batch as it is (bad token, too large,
invalid), which sending again cannot change: the ExportError says so (`retryable` False) and the pipeline
drops the batch at once, with one warning line. msgpack and the socket work run on the export thread only.
"""

from __future__ import annotations

from autoinstr.export import _http_post
from autoinstr.export.base import Exporter
from autoinstr.export.records import packed_record, record_of_fields, speedups

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any, List, Tuple

    from autoinstr.config import Config

SPANS_PATH = "/v1/spans"
GZIP_OVER = 1024
ExportError = _http_post.ExportError


class CollectorExporter(Exporter):
    name = "collector"

    def __init__(self, config: Config) -> None:
        from urllib.parse import urlsplit

        import msgpack  # noqa: F401  (fail here, at set-up, rather than on every batch)

        self.base = config.collector_url.rstrip("/")
        self.url = self.base + SPANS_PATH
        parts = urlsplit(self.url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError("AUTOINSTR_COLLECTOR_URL %r is not an http(s) URL" % _http_post.safe_url(self.base))
        self.timeout = float(getattr(config, "export_timeout", 10.0) or 10.0)
        # compressing costs about a microsecond of CPU per span; over loopback it saves nothing
        mode = getattr(config, "collector_compression", "auto")
        self.compress = mode == "gzip" or (mode == "auto" and not _is_loopback(parts.hostname))
        self.headers = {"Content-Type": "application/msgpack"}
        if config.collector_token:
            self.headers["Authorization"] = "Bearer " + config.collector_token
        self.rejected = 0  # spans the collector refused with a 4xx (dropped, not retried)

    takes_fields = True  # the pipeline may hand over span_fields() tuples rather than records
    takes_packed = True  # ... or each record's msgpack bytes, when this is the only exporter

    def export(self, records: List[Any]) -> None:
        if not records:
            return
        body = packed_batch(records)
        try:
            gzip_body = self.compress and len(body) > GZIP_OVER
            _http_post.send(self.url, body, self.headers, self.timeout, gzip_body=gzip_body)
        except ExportError as exc:
            if exc.retryable:
                raise
            self.rejected += len(records)
            if exc.status in (401, 403):
                raise ExportError("%s (check AUTOINSTR_COLLECTOR_TOKEN)" % exc, exc.status, retryable=False) from None
            raise

    def after_fork(self) -> None:
        _http_post.forget_connections()

    def destination(self) -> str:
        return _http_post.safe_url(self.url)

    def probe(self) -> Tuple[bool, str]:
        import http.client
        from urllib.parse import urlsplit

        parts = urlsplit(self.base)
        cls = http.client.HTTPSConnection if parts.scheme == "https" else http.client.HTTPConnection
        try:
            conn = cls(parts.hostname or "", parts.port, timeout=2.0)
        except Exception as exc:
            return False, "%s: %s" % (type(exc).__name__, exc)
        try:
            conn.request("GET", (parts.path or "") + "/healthz")
            resp = conn.getresponse()
            resp.read(1024)
            return resp.status == 200, "healthz answered %d" % resp.status
        except Exception as exc:
            return False, "unreachable (%s: %s)" % (type(exc).__name__, exc)
        finally:
            conn.close()


def packed_batch(records: List[Any]) -> bytes:
    """The msgpack body: an array of span records (DESIGN.md). From records already packed one by one (the
    pipeline's `packed` form), from span_fields() tuples written by the compiled speedups where they are built
    (the same bytes, tests/test_speedups.py), else from records made and packed."""
    import msgpack

    first = records[0].__class__
    if first is bytes:
        return b"".join([msgpack.Packer().pack_array_header(len(records)), *records])  # (one copy of the body)
    if first is not tuple:
        return msgpack.packb(records, use_bin_type=True)  # type: ignore[no-any-return]
    compiled = speedups()
    if compiled is not None:
        return compiled.pack_records(list(records), _pack_one)  # type: ignore[no-any-return]
    return msgpack.packb(list(map(record_of_fields, records)), use_bin_type=True)  # type: ignore[no-any-return]


_pack_one = packed_record


def _is_loopback(host: str) -> bool:
    if host.lower() == "localhost":
        return True
    import ipaddress

    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False
