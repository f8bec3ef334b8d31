"""The SQLite span store: schema and version, WAL, idempotent inserts, retention, queries."""

from __future__ import annotations

import sqlite3
import time

import pytest

from autoinstr.config import Config
from autoinstr.export.local import LocalStoreExporter
from autoinstr.store import SCHEMA_VERSION, Store, StoreError


def rec(trace: int, span: int, parent=None, name="op", service="svc", start_ns=None, duration_ns=1000,
        status="ok", attributes=None, kind="internal") -> dict:
    return {"trace_id": f"{trace:032x}", "span_id": f"{span:016x}",
            "parent_id": f"{parent:016x}" if parent else None, "name": name, "kind": kind, "service": service,
            "start_ns": time.time_ns() if start_ns is None else start_ns, "duration_ns": duration_ns,
            "status": status, "attributes": attributes or {"k": "v"}, "events": []}


@pytest.fixture
def store(tmp_path):
    s = Store(str(tmp_path / "sub" / "spans.db"))
    yield s
    s.close()


def test_schema_created_with_version_and_wal(store):
    version = store.db.execute("SELECT value FROM meta WHERE key = 'schema_version'").fetchone()[0]
    assert int(version) == SCHEMA_VERSION
    assert store.db.execute("PRAGMA journal_mode").fetchone()[0].lower() == "wal"
    cols = [r[1] for r in store.db.execute("PRAGMA table_info(spans)")]
    for c in ("trace_id", "span_id", "parent_id", "name", "kind", "service", "start_ns", "duration_ns", "status",
              "attributes", "events"):
        assert c in cols
    assert store.db.execute("PRAGMA busy_timeout").fetchone()[0] >= 1000


def test_reopen_existing_store(tmp_path):
    path = str(tmp_path / "spans.db")
    a = Store(path)
    a.insert([rec(1, 1)])
    a.close()
    b = Store(path)
    assert b.count() == 1
    b.close()
    c = Store(path, create=False, readonly=True)
    assert c.count() == 1
    c.close()


def test_round_trip_record(store):
    r = rec(0xABC, 0xDEF, parent=0x123, name="GET /x", kind="server", status="error",
            attributes={"http.response.status_code": 500, "caf\u00e9": "\u20ac", "list": [1, "a"]})
    r["events"] = [{"name": "exception", "time_ns": 5, "attributes": {"exception.type": "ValueError"}}]
    assert store.insert([r]) == 1
    (out,) = list(store.spans())
    assert out == r


def test_insert_idempotent_on_trace_and_span_id(store):
    batch = [rec(1, 1), rec(1, 2, parent=1)]
    assert store.insert(batch) == 2
    assert store.insert(batch) == 0  # a retried batch is stored once
    assert store.count() == 2
    other_trace_same_span = rec(2, 1)
    assert store.insert([other_trace_same_span]) == 1
    assert store.count() == 3
    assert store.insert([]) == 0


def as_fields(r: dict) -> tuple:
    """A record as export.records.span_fields() gives it (what the agent's local exporter stores)."""
    return tuple(r[k] for k in ("trace_id", "span_id", "parent_id", "name", "kind", "service", "start_ns",
                                "duration_ns", "status", "attributes", "events")) + (int(r["trace_id"], 16),)


def inserter(store, how: str):
    """`fields`: the rows' values made by the compiled speedups where they are built, `fields-python` by Python."""
    if how == "records":
        return store.insert
    if how == "fields-python":
        import autoinstr.store as store_module

        def insert(batch):
            saved, store_module._store_values = store_module._store_values, None
            try:
                return store.insert_fields([as_fields(r) for r in batch])
            finally:
                store_module._store_values = saved

        return insert
    return lambda batch: store.insert_fields([as_fields(r) for r in batch])


@pytest.mark.parametrize("how", ["records", "fields", "fields-python"])
@pytest.mark.parametrize("count", [1, 2, 3, 255, 256, 257, 511, 512, 513, 1000, 1100])
def test_batches_of_any_size_are_stored_whole_and_once(store, count, how):
    # one statement per 256 rows, the rest padded with copies of its last row: never a copy stored, the count
    # returned is the rows that were new
    insert = inserter(store, how)
    start = time.time_ns()
    batch = [rec(1 + i // 7, i + 1, start_ns=start + i, attributes={"i": i}) for i in range(count)]
    assert insert(batch) == count
    rows = store.db.execute("SELECT span_id, attributes FROM spans ORDER BY start_ns").fetchall()
    assert [r[0] for r in rows] == [f"{i + 1:016x}" for i in range(count)]
    assert [r[1] for r in rows] == ['{"i":%d}' % i for i in range(count)]
    assert insert(batch[: count // 2] + [rec(99, 9999, start_ns=start - 1)]) == 1


def test_a_batch_of_records_is_stored_whole_or_not_at_all(store):
    # the collector's promise: a batch it accepts is stored in one transaction, though it takes several statements
    store.db.execute("CREATE TRIGGER boom BEFORE INSERT ON spans WHEN NEW.name = 'boom' "
                     "BEGIN SELECT RAISE(ABORT, 'boom'); END")
    start = time.time_ns()
    batch = [rec(1, i + 1, start_ns=start + i, name="boom" if i == 1000 else "op") for i in range(1100)]
    with pytest.raises(sqlite3.DatabaseError, match="boom"):
        store.insert(batch)
    assert store.db.execute("SELECT count(*) FROM spans").fetchone()[0] == 0
    assert not store.db.in_transaction
    store.db.execute("DROP TRIGGER boom")
    assert store.insert(batch) == 1100


@pytest.mark.skipif(not hasattr(sqlite3.Connection, "setlimit"), reason="Connection.setlimit: Python 3.11+")
@pytest.mark.parametrize("how", ["records", "fields"])
def test_an_sqlite_allowing_999_variables_gets_smaller_statements(store, how):
    store.db.setlimit(sqlite3.SQLITE_LIMIT_VARIABLE_NUMBER, 999)  # as SQLite before 3.32
    insert = inserter(store, how)
    start = time.time_ns()
    assert insert([rec(1, i + 1, start_ns=start + i) for i in range(700)]) == 700
    assert insert([rec(2, i + 1, start_ns=start + i) for i in range(70)]) == 70
    assert store.db.execute("SELECT count(*) FROM spans").fetchone()[0] == 770


def test_newer_schema_refused(tmp_path):
    path = str(tmp_path / "spans.db")
    Store(path).close()
    db = sqlite3.connect(path)
    db.execute("UPDATE meta SET value = ? WHERE key = 'schema_version'", (str(SCHEMA_VERSION + 1),))
    db.commit()
    db.close()
    with pytest.raises(StoreError, match="newer"):
        Store(path)
    with pytest.raises(StoreError, match="newer"):
        Store(path, create=False, readonly=True)


def test_missing_store_and_not_a_store(tmp_path):
    with pytest.raises(StoreError):
        Store(str(tmp_path / "missing.db"), create=False)
    garbage = tmp_path / "garbage.db"
    garbage.write_bytes(b"this is not sqlite at all" * 100)
    with pytest.raises(StoreError):
        Store(str(garbage))
    plain = tmp_path / "plain.db"
    sqlite3.connect(str(plain)).close()
    with pytest.raises(StoreError, match="not an autoinstr"):
        Store(str(plain), create=False, readonly=True)


def test_retention_by_age(store):
    now = time.time_ns()
    hour = 3600 * 10**9
    store.insert([rec(1, 1, start_ns=now - 3 * hour), rec(1, 2, start_ns=now - 2 * hour),
                  rec(2, 1, start_ns=now - hour // 2), rec(3, 1, start_ns=now)])
    deleted = store.apply_retention(1.0, 0, every_s=0)
    assert deleted == 2
    assert sorted(r["trace_id"][-1] for r in store.spans()) == ["2", "3"]


def test_retention_runs_at_most_once_per_interval(store):
    old = time.time_ns() - 10 * 3600 * 10**9
    store.insert([rec(1, 1, start_ns=old)])
    assert store.apply_retention(1.0, 0, every_s=60) == 1
    store.insert([rec(1, 2, start_ns=old)])
    assert store.apply_retention(1.0, 0, every_s=60) == 0  # too soon
    assert store.count() == 1


def test_retention_zero_disables_limits(store):
    store.insert([rec(1, 1, start_ns=1)])
    assert store.apply_retention(0, 0, every_s=0) == 0
    assert store.count() == 1


def test_size_limit_trims_oldest(store):
    base = time.time_ns() - 10**9
    pad = "x" * 2000
    for chunk in range(10):
        store.insert([rec(100 + chunk, i + 1, start_ns=base + chunk * 1000 + i, attributes={"pad": pad})
                      for i in range(100)])  # ~2 MB in all
    total = store.count()
    deleted = store.apply_retention(0, 1.0, every_s=0)
    assert deleted > 0
    left = store.count()
    assert left == total - deleted
    page_size, pages, free = (store.db.execute(f"PRAGMA {p}").fetchone()[0]
                              for p in ("page_size", "page_count", "freelist_count"))
    assert (pages - free) * page_size <= 1.0 * 1024 * 1024
    remaining = [r["start_ns"] for r in store.spans()]
    oldest_kept = min(remaining)
    # everything deleted was older than everything kept
    assert oldest_kept == base + sorted(c * 1000 + i for c in range(10) for i in range(100))[deleted]


def test_spans_filters_and_order(store):
    now = time.time_ns()
    store.insert([rec(1, 1, service="a", start_ns=now + 30), rec(1, 2, parent=1, service="a", start_ns=now + 10),
                  rec(2, 1, service="b", start_ns=now + 20), rec(3, 1, service="b", start_ns=now - 10**12)])
    assert [r["start_ns"] - now for r in store.spans(since_ns=now)] == [10, 20, 30]
    assert {r["span_id"] for r in store.spans(trace_id=f"{1:032X}")} == {f"{1:016x}", f"{2:016x}"}
    assert {r["trace_id"][-1] for r in store.spans(service="b")} == {"2", "3"}
    assert len(list(store.spans(limit=2))) == 2
    assert list(store.spans(service="nope")) == []
    assert len(store.operations()) == 4
    assert len(store.operations(since_ns=now)) == 3


def test_slowest_roots(store):
    now = time.time_ns()
    store.insert([
        rec(1, 1, name="fast-root", duration_ns=10, start_ns=now),
        rec(1, 2, parent=1, name="child-of-fast", duration_ns=5_000_000, start_ns=now),
        rec(2, 1, name="slow-root", duration_ns=900, start_ns=now),
        rec(3, 7, parent=99, name="orphan", duration_ns=500, start_ns=now),  # its parent lives elsewhere
        rec(4, 1, name="old-root", duration_ns=10**9, start_ns=now - 10**12),
    ])
    names = [r["name"] for r in store.slowest_roots(10)]
    assert names == ["old-root", "slow-root", "orphan", "fast-root"]
    assert [r["name"] for r in store.slowest_roots(2, since_ns=now)] == ["slow-root", "orphan"]


def test_local_exporter_writes_store(tmp_path):
    path = tmp_path / "local" / "spans.db"
    exp = LocalStoreExporter(Config({"AUTOINSTR_STORE": str(path)}, emit_warnings=False))
    assert exp.probe()[0] is True
    assert exp.destination() == str(path)
    first, second = rec(1, 1), rec(1, 2, parent=1)
    exp.export([first, second])
    exp.export([dict(second)])  # a retry of a stored span: the same record again
    exp.shutdown()
    s = Store(str(path), create=False, readonly=True)
    assert s.count() == 2
    s.close()


def test_local_exporter_reopens_the_store_after_a_failing_write(tmp_path):
    """A write failing for another reason than a busy store (a disk I/O error, a filesystem turned read-only:
    the integration suite does it for real, as root) leaves the connection unusable for good: the exporter
    drops it, and the retry opens the store afresh. A busy store keeps its connection."""
    path = tmp_path / "spans.db"
    exp = LocalStoreExporter(Config({"AUTOINSTR_STORE": str(path)}, emit_warnings=False))
    exp.export([rec(1, 1)])
    broken = exp.store
    broken.db.close()  # every statement through it now fails (ProgrammingError: a closed database)
    with pytest.raises(sqlite3.Error):
        exp.export([rec(1, 2)])
    assert exp.store is None
    exp.export([rec(1, 2)])  # the retry: a new connection
    assert exp.store is not broken
    holder = sqlite3.connect(str(path), isolation_level=None)
    holder.execute("BEGIN EXCLUSIVE")
    kept = exp.store
    kept.db.execute("PRAGMA busy_timeout = 50")
    try:
        with pytest.raises(sqlite3.OperationalError, match="locked"):
            exp.export([rec(1, 3)])
        assert exp.store is kept
    finally:
        holder.execute("COMMIT")
        holder.close()
    exp.export([rec(1, 3)])
    exp.shutdown()
    s = Store(str(path), create=False, readonly=True)
    assert s.count() == 3
    s.close()


def test_several_connections_write_at_once(tmp_path):
    import threading

    path = str(tmp_path / "spans.db")
    Store(path).close()
    errors = []

    def writer(w):
        s = Store(path)
        try:
            for b in range(20):
                s.insert([rec(w + 1, b * 10 + i + 1) for i in range(10)])
        except Exception as exc:  # pragma: no cover - reported below
            errors.append(exc)
        finally:
            s.close()

    threads = [threading.Thread(target=writer, args=(w,)) for w in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    s = Store(path)
    assert s.count() == 4 * 200
    s.close()


def _open_and_insert(path, barrier, n, errors):
    from autoinstr.store import Store, StoreError

    barrier.wait()
    try:
        store = Store(path)
        store.insert([{"trace_id": "%032x" % (n + 1), "span_id": "%016x" % (n + 1), "parent_id": None,
                       "name": "w", "kind": "internal", "service": "s", "start_ns": 1, "duration_ns": 1,
                       "status": "ok", "attributes": {}, "events": []}])
        store.close()
    except StoreError as exc:
        errors.put(str(exc))


def test_processes_creating_one_new_store_at_once(tmp_path):
    """WAL switch and schema creation race between processes opening a brand-new store together
    (gunicorn workers exiting at once): none may fail with 'database is locked'."""
    import multiprocessing

    ctx = multiprocessing.get_context("fork")
    errors = ctx.Queue()
    for round_ in range(20):
        path = str(tmp_path / ("race-%d.db" % round_))
        barrier = ctx.Barrier(8)
        procs = [ctx.Process(target=_open_and_insert, args=(path, barrier, n, errors)) for n in range(8)]
        for p in procs:
            p.start()
        for p in procs:
            p.join(30)
        assert errors.empty(), errors.get()
        assert Store(path).count() == 8


def test_trace_key_uses_the_low_64_bits():
    """64-bit trace ids (B3) arrive zero-padded on the left: the index key must still tell them apart."""
    from autoinstr.store import trace_key

    assert trace_key("0" * 16 + "00000000000000ff") == 255
    assert trace_key("0" * 16 + "ffffffffffffffff") == -1  # SQLite INTEGER is signed 64-bit
    assert trace_key("0" * 16 + "1" * 16) != trace_key("0" * 16 + "2" * 16)
    assert trace_key("not hex") == 0


def test_zero_padded_trace_ids_are_stored_and_found_apart(store):
    now = time.time_ns()
    store.insert([rec(0xA1, 1, name="a", start_ns=now), rec(0xB2, 1, name="b", start_ns=now)])
    assert [r["name"] for r in store.spans(trace_id="%032x" % 0xA1)] == ["a"]
    assert [r["name"] for r in store.spans(trace_id="%032x" % 0xB2)] == ["b"]
    assert store.count() == 2  # same span id and start, different traces: two spans


def test_a_store_of_schema_1_loses_its_trace_index_when_opened_for_writing(tmp_path):
    """Schema 2 has no trace index (it made each stored span dirty a random page of its own): a writer opening
    an older store drops it; its spans stay, and trace lookups (a scan) still find them."""
    path = str(tmp_path / "old.db")
    s = Store(path)
    s.insert([rec(7, 1), rec(7, 2, parent=1), rec(8, 3)])
    s.db.execute("CREATE INDEX spans_trace ON spans (trace_key)")
    s.db.execute("UPDATE meta SET value = '1' WHERE key = 'schema_version'")
    s.close()
    reader = Store(path, create=False, readonly=True)  # a reader leaves it as it is
    assert reader.db.execute("SELECT count(*) FROM sqlite_master WHERE name = 'spans_trace'").fetchone()[0] == 1
    reader.close()
    s = Store(path)
    indexes = [r[0] for r in s.db.execute("SELECT name FROM sqlite_master WHERE type = 'index' AND tbl_name = 'spans' "
                                          "AND name NOT LIKE 'sqlite_%'")]
    assert indexes == ["spans_identity"]
    assert int(s.db.execute("SELECT value FROM meta WHERE key = 'schema_version'").fetchone()[0]) == SCHEMA_VERSION
    assert sorted(r["span_id"] for r in s.spans(trace_id="%032x" % 7)) == ["%016x" % 1, "%016x" % 2]
    s.close()


def test_trace_lookups_within_id_ranges(store):
    from autoinstr.store import trace_links, trace_spans

    store.insert([rec(5, 1, start_ns=30), rec(6, 2), rec(5, 3, parent=1, start_ns=10), rec(6, 4),
                  rec(5, 5, start_ns=20)])
    trace = "%032x" % 5
    assert [r["span_id"][-1] for r in trace_spans(store, trace, 10)] == ["3", "5", "1"]  # by start time
    assert [r["span_id"][-1] for r in trace_spans(store, trace, 10, [(1, 3)])] == ["3", "1"]
    assert [r["span_id"][-1] for r in trace_spans(store, trace, 10, [(1, 1), (4, None)])] == ["5", "1"]
    assert [r["span_id"][-1] for r in trace_spans(store, trace, 2, [(1, 2), (2, 5)])] == ["3", "5"]
    assert [r[0][-1] for r in trace_links(store, trace, [(2, 4)])] == ["3"]
    assert trace_spans(store, "%032x" % 9, 10) == []


def test_a_new_store_has_16_kb_pages_and_an_old_one_keeps_its_own(tmp_path):
    """16 KB pages make storing a span cheaper (benchmarked in the store's _init_schema); a store made before
    keeps its 4 KB pages (SQLite cannot change them in WAL mode) and is written as before."""
    from autoinstr.store import PAGE_SIZE

    new = Store(str(tmp_path / "new.db"))
    assert new.db.execute("PRAGMA page_size").fetchone()[0] == PAGE_SIZE == 16384
    new.close()
    old_path = str(tmp_path / "old.db")
    db = sqlite3.connect(old_path)
    db.execute("PRAGMA page_size = 4096")
    db.execute("PRAGMA journal_mode = WAL")
    db.execute("CREATE TABLE t (x)")
    db.close()
    old = Store(old_path)
    assert old.db.execute("PRAGMA page_size").fetchone()[0] == 4096
    old.insert_fields([as_fields(rec(1, i + 1)) for i in range(3)])
    assert old.count() == 3
    old.close()


def test_the_writer_keeps_a_small_page_cache_and_a_reader_sqlites_default(tmp_path):
    """The writer appends in time order, so a small cache costs it little; SQLite's default 2 MiB made up most of
    what the local store added to an app's peak RSS (benchmarks/peers: RSS with the local store)."""
    from autoinstr.store import WRITER_CACHE_KIB

    path = str(tmp_path / "spans.db")
    writer = Store(path)
    assert writer.db.execute("PRAGMA cache_size").fetchone()[0] == -WRITER_CACHE_KIB
    writer.insert_fields([as_fields(rec(1, i + 1)) for i in range(600)])
    reader = Store(path, readonly=True)
    assert reader.db.execute("PRAGMA cache_size").fetchone()[0] == -2000
    assert reader.count() == 600
    reader.close()
    writer.close()
