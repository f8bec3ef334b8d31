"""The jsonl exporter: one span record per line, safe with several writer processes."""

from __future__ import annotations

import json
import multiprocessing
import os

from autoinstr.config import Config
from autoinstr.export.base import create_exporters
from autoinstr.export.jsonl import JsonlExporter
from autoinstr.export.pipeline import Pipeline
from autoinstr.export.records import records_of
from autoinstr.trace.span import Span

RECORD_KEYS = {"trace_id", "span_id", "parent_id", "name", "kind", "service", "start_ns", "duration_ns",
               "status", "attributes", "events"}


def exporter_for(path) -> JsonlExporter:
    return JsonlExporter(Config({"AUTOINSTR_JSONL_PATH": str(path)}, emit_warnings=False))


def make_record(i: int, writer: int = 0, pad: int = 0) -> dict:
    return {"trace_id": "%032x" % (writer + 1), "span_id": "%016x" % (i + 1), "parent_id": None,
            "name": f"op-{writer}-{i}", "kind": "internal", "service": "svc", "start_ns": 1, "duration_ns": 2,
            "status": "ok", "attributes": {"pad": "x" * pad, "writer": writer, "i": i}, "events": []}


def read_lines(path) -> list:
    with open(path, "rb") as f:
        data = f.read()
    assert data.endswith(b"\n")
    return [json.loads(line) for line in data.decode("utf-8").split("\n")[:-1]]


def test_lines_are_span_records(tmp_path, collected):
    with Span("GET /", kind="server", **{"http.route": "/", "note": "caf\u00e9"}), Span("child"):
        pass
    records = records_of(collected, "shop", 128, 4096)
    path = tmp_path / "spans.jsonl"
    exp = exporter_for(path)
    exp.export(records)
    exp.export(records[:1])
    lines = read_lines(path)
    assert len(lines) == 3
    for rec in lines:
        assert set(rec) == RECORD_KEYS
        assert rec["service"] == "shop"
    assert lines[:2] == records
    root = [r for r in lines if r["name"] == "GET /"][0]
    assert root["attributes"]["note"] == "caf\u00e9"  # UTF-8, not escaped away
    assert "caf\u00e9".encode() in path.read_bytes()


def test_empty_export_writes_nothing(tmp_path):
    path = tmp_path / "spans.jsonl"
    exporter_for(path).export([])
    assert not path.exists()


def test_appends_to_existing_file(tmp_path):
    path = tmp_path / "spans.jsonl"
    path.write_text(json.dumps(make_record(0)) + "\n")
    exporter_for(path).export([make_record(1)])
    assert [r["name"] for r in read_lines(path)] == ["op-0-0", "op-0-1"]


def test_destination_and_probe(tmp_path):
    exp = exporter_for(tmp_path / "spans.jsonl")
    assert exp.destination() == str(tmp_path / "spans.jsonl")
    assert exp.probe()[0] is True
    missing = exporter_for(tmp_path / "no" / "such" / "dir" / "spans.jsonl")
    assert missing.probe()[0] is False


def test_relative_path_is_made_absolute(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    exp = exporter_for("rel.jsonl")
    assert os.path.isabs(exp.path)
    assert exp.path == str(tmp_path / "rel.jsonl")


def test_created_from_config(tmp_path):
    cfg = Config({"AUTOINSTR_EXPORTER": "jsonl", "AUTOINSTR_JSONL_PATH": str(tmp_path / "x.jsonl")},
                 emit_warnings=False)
    (exp,) = create_exporters(cfg)
    assert isinstance(exp, JsonlExporter)
    assert create_exporters(Config({"AUTOINSTR_EXPORTER": "none"}, emit_warnings=False)) == []


def test_through_the_pipeline(tmp_path):
    path = tmp_path / "pipe.jsonl"
    exp = exporter_for(path)
    p = Pipeline(lambda: [exp], "piped", flush_interval=60.0)
    try:
        for i in range(5):
            with Span(f"op-{i}") as s:
                pass
            p.submit([s])
        assert p.flush(timeout=5)
    finally:
        p.shutdown(timeout=2)
    lines = read_lines(path)
    assert sorted(r["name"] for r in lines) == [f"op-{i}" for i in range(5)]
    assert all(r["service"] == "piped" for r in lines)


WRITERS = 4
BATCHES = 40
PER_BATCH = 25
PAD = 3000  # each batch is ~75 KB: far beyond what one write() is atomic for without a lock


def _writer(path: str, writer: int) -> None:
    exp = exporter_for(path)
    for b in range(BATCHES):
        exp.export([make_record(b * PER_BATCH + i, writer, PAD) for i in range(PER_BATCH)])


def test_concurrent_writers_never_interleave_lines(tmp_path):
    path = str(tmp_path / "shared.jsonl")
    ctx = multiprocessing.get_context("fork")
    procs = [ctx.Process(target=_writer, args=(path, w)) for w in range(WRITERS)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(60)
        assert p.exitcode == 0
    lines = read_lines(path)  # every line parses as JSON
    assert len(lines) == WRITERS * BATCHES * PER_BATCH
    for w in range(WRITERS):
        mine = [r["attributes"]["i"] for r in lines if r["attributes"]["writer"] == w]
        assert mine == list(range(BATCHES * PER_BATCH))  # complete and in order per writer
    assert all(len(r["attributes"]["pad"]) == PAD for r in lines)
    # each batch stays contiguous: a batch is one locked write
    runs = 1
    for a, b in zip(lines, lines[1:]):
        if a["attributes"]["writer"] != b["attributes"]["writer"]:
            runs += 1
    assert runs <= WRITERS * BATCHES
