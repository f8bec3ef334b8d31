"""The SQLite span store: written by the local exporter (and later the collector), read by `autoinstr spans`,
`autoinstr report` and the UI.

Several processes (gunicorn workers) write at once: WAL journal, a busy timeout, a few multi-row
statements per batch, and `INSERT OR IGNORE` on the span's identity so a retried batch is stored once.
The schema carries a version; a store written by a newer autoinstr is refused rather than damaged.
"""

from __future__ import annotations

import functools
import json
import os
import random
import sqlite3
import time

from autoinstr.jsontext import compact_encoder

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any, Callable, Dict, Iterable, Iterator, List, Optional, Sequence, Tuple

    IdRanges = Optional[Sequence[Tuple[int, Optional[int]]]]

SCHEMA_VERSION = 2  # 2: no trace index (spans_trace), see below
BUSY_TIMEOUT_MS = 5000
PAGE_SIZE = 16384

_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS spans (
    id INTEGER PRIMARY KEY,
    trace_key INTEGER NOT NULL,
    trace_id TEXT NOT NULL,
    span_id TEXT NOT NULL,
    parent_id TEXT,
    name TEXT NOT NULL,
    kind TEXT NOT NULL,
    service TEXT NOT NULL,
    start_ns INTEGER NOT NULL,
    duration_ns INTEGER NOT NULL,
    status TEXT NOT NULL,
    attributes TEXT NOT NULL,
    events TEXT NOT NULL
);
CREATE UNIQUE INDEX IF NOT EXISTS spans_identity ON spans (start_ns, span_id, trace_key);
"""
# One index: the identity of a stored span (a retried batch is stored once), (start_ns, span_id, trace_key),
# in time order, so new entries go to the end of the B-tree. An index keyed by trace id takes its entries at
# random places: once it outgrows SQLite's page cache every stored span dirtied a page of its own (4 KB more
# to the WAL per span), and a span cost 17 us to store at 200,000 spans instead of 1.6 us, on the flush thread
# that shares the app's GIL. So trace lookups are the readers' business: the UI keeps each trace's spans.id
# range in its sidecar (autoinstr.ui.rollup) and reads that range; other readers scan (trace_key, the trace
# id's low 64 bits as an integer, makes that scan an integer comparison per row).
_DROPPED_INDEXES = ("spans_trace",)  # by schema version 2

COLUMNS = ("trace_id", "span_id", "parent_id", "name", "kind", "service", "start_ns", "duration_ns", "status",
           "attributes", "events")
# a record's attributes or events as JSON text (as stored in the attributes and events columns)
to_json = compact_encoder(default=str)


_MASK64, _TWO63, _TWO64 = (1 << 64) - 1, 1 << 63, 1 << 64
_WIDTH = 12  # values per row
_ROWS_PER_INSERT = 64  # 768 parameters a statement: within SQLite's oldest limit (999)
# 3072 parameters: within the limit of SQLite 3.32 and later (32766). 512 rows a statement stored a span about
# 5% faster (1.95 against 2.05 us), but its prepared statements (512/256/128... rows) cost the process 1 MB more.
_MAX_ROWS_PER_INSERT = 256
# The writer's page cache, in KiB (SQLite's default is 2 MiB): spans are appended in time order, so few pages
# are hot; 2 MiB of cache made up most of what the local store adds to an app's peak RSS.
WRITER_CACHE_KIB = 512


@functools.lru_cache(maxsize=16)
def _insert_sql(rows: int) -> str:
    return ("INSERT OR IGNORE INTO spans (trace_key, trace_id, span_id, parent_id, name, kind, service, start_ns, "
            "duration_ns, status, attributes, events) VALUES " + ",".join(["(?,?,?,?,?,?,?,?,?,?,?,?)"] * rows))




def _attributes_json(attributes: Any) -> str:
    if not attributes:
        return "{}"
    if attributes.__class__ is not dict:  # shared by many records (export.records.SharedAttributes): once
        as_json = getattr(attributes, "as_json", None)
        if as_json is not None:
            return as_json(to_json)  # type: ignore[no-any-return]
    return to_json(attributes)


def python_values(rows: Sequence[Sequence[Any]]) -> List[Any]:
    """The values of span_fields() tuples' rows, flat, in the INSERT's column order (see _speedups_store_values)."""
    values: List[Any] = []
    add = values.extend
    for f in rows:
        key = f[11] & _MASK64
        add((key - _TWO64 if key >= _TWO63 else key, f[0], f[1], f[2], f[3], f[4], f[5], f[6], f[7], f[8],
             _attributes_json(f[9]), to_json(f[10]) if f[10] else "[]"))
    return values


def _speedups_store_values() -> Optional[Callable[[List[Any]], Optional[List[Any]]]]:
    """The rows' values made by autoinstr._speedups (see export.records.speedups), or None."""
    from autoinstr.export.records import speedups

    compiled = speedups()
    c_encoder = getattr(to_json, "c_encoder", None)
    if compiled is None or c_encoder is None:
        return None
    store_values = compiled.store_values

    def values(rows: List[Any]) -> Optional[List[Any]]:
        try:
            return store_values(rows if rows.__class__ is list else list(rows), c_encoder, to_json,  # type: ignore
                                _attributes_json)
        except Exception:  # made in Python instead
            return None

    return values


_store_values = _speedups_store_values()


def is_busy(exc: Exception) -> bool:
    """SQLite's "database is locked" / "busy": another writer holds the store (the connection is fine)."""
    text = str(exc).lower()
    return "locked" in text or "busy" in text


class StoreError(Exception):
    """The store cannot be used (missing, newer schema, not a store)."""


class Store:
    def __init__(self, path: str, create: bool = True, readonly: bool = False) -> None:
        self.path = os.path.abspath(path)
        if not create and not os.path.exists(self.path):
            raise StoreError("no span store at %s (set --store or AUTOINSTR_STORE)" % self.path)
        if create:
            folder = os.path.dirname(self.path)
            if folder and not os.path.isdir(folder):
                os.makedirs(folder, mode=0o700, exist_ok=True)
        if create and not os.path.exists(self.path):
            try:  # spans may hold private data: the file is the user's alone
                os.close(os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_CLOEXEC, 0o600))
            except OSError:
                pass
        # Several processes may open a new store at once (gunicorn workers): switching it to WAL and
        # creating the schema can meet "database is locked" without SQLite's busy handler being asked,
        # so opening is retried, within the same bound as the busy timeout.
        deadline = time.monotonic() + BUSY_TIMEOUT_MS / 1000
        while True:
            try:
                self.db = sqlite3.connect(self.path, timeout=BUSY_TIMEOUT_MS / 1000, isolation_level=None,
                                          check_same_thread=False)
                self.db.execute("PRAGMA busy_timeout = %d" % BUSY_TIMEOUT_MS)
                if not readonly:
                    self._init_schema()
                else:
                    self._check_version()
                break
            except sqlite3.OperationalError as exc:
                self.close()
                if not is_busy(exc) or time.monotonic() >= deadline:
                    raise StoreError("%s is not a usable span store: %s" % (self.path, exc))
                time.sleep(0.02 + random.random() * 0.05)
            except sqlite3.DatabaseError as exc:
                self.close()
                raise StoreError("%s is not a usable span store: %s" % (self.path, exc))
        self._last_retention = 0.0
        self._rows_per_insert = _MAX_ROWS_PER_INSERT

    def _init_schema(self) -> None:
        # A new store gets 16 KB pages (set before its first write; an existing store keeps its own): a span
        # costs SQLite about 1.6 us to store instead of 2.4-3.4 with 4 KB pages (fewer pages split and
        # rewritten per 256-row statement, and WAL checkpoints a quarter as often).
        self.db.execute("PRAGMA page_size = %d" % PAGE_SIZE)
        mode = self.db.execute("PRAGMA journal_mode").fetchall()[0][0]
        if str(mode).lower() != "wal":
            self.db.execute("PRAGMA journal_mode = WAL")
        self.db.execute("PRAGMA synchronous = NORMAL")
        self.db.execute("PRAGMA cache_size = -%d" % WRITER_CACHE_KIB)
        version = self._version()
        if version is not None and version > SCHEMA_VERSION:
            raise StoreError("%s has schema version %d, newer than this autoinstr supports (%d); upgrade autoinstr"
                             % (self.path, version, SCHEMA_VERSION))
        if version == SCHEMA_VERSION:
            return
        self.db.execute("BEGIN IMMEDIATE")
        try:
            for index in _DROPPED_INDEXES:  # a store written by an older autoinstr
                self.db.execute("DROP INDEX IF EXISTS %s" % index)
            for statement in _SCHEMA.split(";"):
                if statement.strip():
                    self.db.execute(statement)
            self.db.execute("INSERT OR REPLACE INTO meta (key, value) VALUES ('schema_version', ?)",
                            (str(SCHEMA_VERSION),))
            self.db.execute("COMMIT")
        except BaseException:
            self.db.execute("ROLLBACK")
            raise

    def _version(self) -> Optional[int]:
        try:
            rows = self.db.execute("SELECT value FROM meta WHERE key = 'schema_version'").fetchall()
        except sqlite3.OperationalError as exc:
            if is_busy(exc):
                raise
            return None
        row = rows[0] if rows else None
        return int(row[0]) if row else None

    def _check_version(self) -> None:
        version = self._version()
        if version is None:
            raise StoreError("%s is not an autoinstr span store (no schema version)" % self.path)
        if version > SCHEMA_VERSION:
            raise StoreError("%s has schema version %d, newer than this autoinstr supports (%d)"
                             % (self.path, version, SCHEMA_VERSION))

    def close(self) -> None:
        try:
            self.db.close()
        except Exception:
            pass

    # --------------------------------------------------------------------------------- writing

    def insert(self, records: Iterable[Dict[str, Any]]) -> int:
        """Store span records (DESIGN.md); those already stored are left as they are. Returns how many were new."""
        values: List[Any] = []
        add = values.extend
        for r in records:
            add((trace_key(r["trace_id"]), r["trace_id"], r["span_id"], r["parent_id"], r["name"], r["kind"],
                 r["service"], int(r["start_ns"]), int(r["duration_ns"]), r["status"],
                 _attributes_json(r["attributes"]), to_json(r["events"]) if r["events"] else "[]"))
        return self._write(values)

    def insert_fields(self, spans: Sequence[Sequence[Any]]) -> int:
        """insert() for the agent's own spans as export.records.span_fields() gives them (no dicts). Each
        statement's rows are made just before it runs, so the flush thread holds the GIL for one statement's
        worth of Python at a time (the statement itself runs without it: an app thread waiting gets it then).
        No transaction: a batch failing part-way is retried whole, and stored once."""
        stored = 0
        done = 0
        while done < len(spans):
            per = self._rows_per_insert
            part = spans[done:done + per]
            values = _store_values(part) if _store_values is not None else None
            if values is None:
                values = python_values(part)
            try:
                stored += self._insert_rows(values, per)
            except sqlite3.OperationalError as exc:
                if not self._fewer_rows_after(exc):
                    raise
                continue
            done += per
        return stored

    def _write(self, values: List[Any]) -> int:
        """Store the rows all or none (the collector's promise for a batch it accepts): in one transaction
        when they take several statements (one per _MAX_ROWS_PER_INSERT rows, the last padded: see _insert_rows)."""
        if not values:
            return 0
        db = self.db
        transaction = len(values) > self._rows_per_insert * _WIDTH
        if transaction:
            db.execute("BEGIN IMMEDIATE")
        try:
            try:
                stored = self._insert_rows(values, self._rows_per_insert)
            except sqlite3.OperationalError as exc:
                if not self._fewer_rows_after(exc):
                    raise
                if not transaction:
                    db.execute("BEGIN IMMEDIATE")
                    transaction = True
                stored = self._insert_rows(values, _ROWS_PER_INSERT)
            if transaction:
                db.execute("COMMIT")
        except BaseException:
            if transaction:
                try:
                    db.execute("ROLLBACK")
                except sqlite3.Error:
                    pass
            raise
        return stored

    def _fewer_rows_after(self, exc: sqlite3.OperationalError) -> bool:
        """After "too many SQL variables" (an older SQLite, limit 999): statements of _ROWS_PER_INSERT rows from
        now on. False when that is not the error, or the statements are that small already."""
        if "variables" not in str(exc) or self._rows_per_insert == _ROWS_PER_INSERT:
            return False
        self._rows_per_insert = _ROWS_PER_INSERT
        return True

    def _insert_rows(self, values: List[Any], per_statement: int) -> int:
        """Rows in statements of `per_statement` rows; a shorter rest is padded to the next power of two
        with copies of its last row, which INSERT OR IGNORE skips as stored already. So a few distinct
        statements in all (256, 128, ..., 1 rows), each prepared once: sqlite3 keeps up to 128 prepared
        statements per connection, and one of 256 rows holds about 0.7 MB."""
        stored = 0
        step = per_statement * _WIDTH
        execute = self.db.execute
        for i in range(0, len(values), step):
            part = values[i:i + step]
            rows = len(part) // _WIDTH
            size = 1 << (rows - 1).bit_length()
            if size > rows:
                part.extend(part[-_WIDTH:] * (size - rows))
            stored += execute(_insert_sql(size), part).rowcount
        return stored

    def apply_retention(self, max_age_hours: float, max_mb: float, every_s: float = 60.0) -> int:
        """Delete spans older than max_age_hours, then the oldest until the live data fits max_mb.
        Runs at most once per every_s per Store. 0 disables a limit."""
        now = time.monotonic()
        if now - self._last_retention < every_s:
            return 0
        self._last_retention = now
        deleted = 0
        if max_age_hours > 0:
            cutoff = time.time_ns() - int(max_age_hours * 3600e9)
            deleted += self.db.execute("DELETE FROM spans WHERE start_ns < ?", (cutoff,)).rowcount
        if max_mb > 0:
            for _ in range(20):  # bounded: each round removes a tenth of what is stored
                page_size, pages, free = (self.db.execute("PRAGMA %s" % p).fetchone()[0]
                                          for p in ("page_size", "page_count", "freelist_count"))
                if (pages - free) * page_size <= max_mb * 1024 * 1024:
                    break
                count = self.db.execute("SELECT count(*) FROM spans").fetchone()[0]
                if not count:
                    break
                cutoff_row = self.db.execute("SELECT start_ns FROM spans ORDER BY start_ns LIMIT 1 OFFSET ?",
                                             (max(1, count // 10),)).fetchall()
                if not cutoff_row:
                    break
                deleted += self.db.execute("DELETE FROM spans WHERE start_ns < ?", (cutoff_row[0][0],)).rowcount
        return deleted

    # --------------------------------------------------------------------------------- reading

    def spans(self, limit: Optional[int] = None, trace_id: Optional[str] = None, service: Optional[str] = None,
              since_ns: Optional[int] = None) -> Iterator[Dict[str, Any]]:
        where, args = [], []  # type: List[str], List[Any]
        if trace_id:
            where.append("trace_key = ? AND trace_id = ?")
            args.extend((trace_key(trace_id.lower()), trace_id.lower()))
        if service:
            where.append("service = ?")
            args.append(service)
        if since_ns:
            where.append("start_ns >= ?")
            args.append(since_ns)
        sql = "SELECT %s FROM spans" % ", ".join(COLUMNS)
        if where:
            sql += " WHERE " + " AND ".join(where)
        sql += " ORDER BY start_ns, id"
        if limit:
            sql += " LIMIT %d" % int(limit)
        for row in self.db.execute(sql, args):
            yield row_to_record(row)

    def count(self) -> int:
        return self.db.execute("SELECT count(*) FROM spans").fetchone()[0]

    def operations(self, since_ns: Optional[int] = None) -> List[Sequence[Any]]:
        """(service, name, kind, duration_ns, status) of every span, for the report's statistics."""
        sql = "SELECT service, name, kind, duration_ns, status FROM spans"
        args: List[Any] = []
        if since_ns:
            sql += " WHERE start_ns >= ?"
            args.append(since_ns)
        return self.db.execute(sql, args).fetchall()

    def statements(self, since_ns: Optional[int] = None) -> List[Sequence[Any]]:
        """(service, db.system, db.query.text, duration_ns, trace_id) of every span with a statement."""
        sql = ("SELECT service, json_extract(attributes, '$.\"db.system\"'), "
               "json_extract(attributes, '$.\"db.query.text\"') AS q, duration_ns, trace_id FROM spans "
               "WHERE attributes LIKE '%\"db.query.text\"%'")
        args: List[Any] = []
        if since_ns:
            sql += " AND start_ns >= ?"
            args.append(since_ns)
        return [r for r in self.db.execute(sql, args).fetchall() if isinstance(r[2], str)]

    def slowest_roots(self, limit: int, since_ns: Optional[int] = None) -> List[Dict[str, Any]]:
        """The slowest spans that start a trace's tree here (no parent, or a parent not in the store). A join,
        not a correlated subquery: SQLite builds a transient index for it (there is no trace index)."""
        sql = ("SELECT %s FROM spans s LEFT JOIN spans p ON p.trace_key = s.trace_key AND p.trace_id = s.trace_id "
               "AND p.span_id = s.parent_id WHERE p.id IS NULL" % ", ".join("s." + c for c in COLUMNS))
        args: List[Any] = []
        if since_ns:
            sql += " AND s.start_ns >= ?"
            args.append(since_ns)
        sql += " ORDER BY s.duration_ns DESC LIMIT ?"
        args.append(limit)
        return [row_to_record(r) for r in self.db.execute(sql, args)]


def trace_key(trace_id: str) -> int:
    """The trace id's low 64 bits as a signed 64-bit integer (SQLite's INTEGER): the trace index key.
    The low half, because 64-bit trace ids (B3, older systems) arrive zero-padded on the left."""
    try:
        value = int(trace_id[-16:], 16)
    except (TypeError, ValueError):
        return 0
    return value - _TWO64 if value >= _TWO63 else value


def row_to_record(row: Sequence[Any]) -> Dict[str, Any]:
    rec = dict(zip(COLUMNS, row))
    for key in ("attributes", "events"):
        try:
            rec[key] = json.loads(rec[key])
        except (TypeError, ValueError):
            rec[key] = {} if key == "attributes" else []
    return rec


# ------------------------------------------------------------------------------ the UI's reads
# Read-side only (autoinstr.ui keeps its own rollup tables in a sidecar file, filled from spans.id onwards):
# nothing here adds to what Store.insert costs.

_INDEX_ATTRS = ("db.system", "db.query.text", "db.namespace", "http.request.method", "server.address",
                "server.port", "peer.service")
INDEX_ATTRS = _INDEX_ATTRS  # the order of the values in index_rows()' last column


def last_span_id(store: Store) -> int:
    """The highest spans.id (0 for an empty store): spans.id only grows as spans are written."""
    row = store.db.execute("SELECT max(id) FROM spans").fetchone()
    return int(row[0] or 0)


def span_id_at(store: Store, row_id: int) -> Optional[str]:
    row = store.db.execute("SELECT span_id FROM spans WHERE id = ?", (row_id,)).fetchone()
    return row[0] if row else None


def oldest_start_ns(store: Store) -> Optional[int]:
    """The earliest start_ns stored (through the identity index: one step)."""
    row = store.db.execute("SELECT start_ns FROM spans ORDER BY start_ns LIMIT 1").fetchone()
    return int(row[0]) if row else None


def index_rows(store: Store, after_id: int, upto_id: int) -> List[Sequence[Any]]:
    """(id, trace_id, span_id, parent_id, name, kind, service, start_ns, duration_ns, status, extra) of the
    spans with after_id < id <= upto_id, in id order. extra is a JSON array of INDEX_ATTRS' values for client
    and producer spans (one JSON parse per span, in SQLite), else NULL."""
    paths = ", ".join("'$.\"%s\"'" % name for name in _INDEX_ATTRS)
    sql = ("SELECT id, trace_id, span_id, parent_id, name, kind, service, start_ns, duration_ns, status, "
           "CASE WHEN kind IN ('client', 'producer') AND json_valid(attributes) THEN json_extract(attributes, %s) "
           "END FROM spans WHERE id > ? AND id <= ? ORDER BY id" % paths)
    return store.db.execute(sql, (after_id, upto_id)).fetchall()


def _trace_rows(store: Store, columns: str, trace_id: str, ranges: IdRanges) -> List[Sequence[Any]]:
    """Rows (id first, then `columns`) of a trace's spans within the spans.id ranges (lo, hi) given, hi None
    for no end (ranges from the UI's sidecar); ranges None: the whole store, scanned (there is no trace index)."""
    key = trace_key(trace_id)
    sql = "SELECT id, %s FROM spans WHERE trace_key = ? AND trace_id = ?" % columns
    if ranges is None:
        return store.db.execute(sql, (key, trace_id)).fetchall()
    rows: Dict[int, Sequence[Any]] = {}
    for lo, hi in ranges:
        if hi is None:
            found = store.db.execute(sql + " AND id >= ?", (key, trace_id, lo))
        else:
            found = store.db.execute(sql + " AND id BETWEEN ? AND ?", (key, trace_id, lo, hi))
        for row in found:
            rows[row[0]] = row
    return [rows[i] for i in sorted(rows)]


def trace_links(store: Store, trace_id: str, ranges: IdRanges = None) -> List[Sequence[Any]]:
    """(span_id, parent_id, service, kind, name) of every span of a trace (within `ranges`: see _trace_rows)."""
    return [r[1:] for r in _trace_rows(store, "span_id, parent_id, service, kind, name", trace_id, ranges)]


def trace_spans(store: Store, trace_id: str, limit: int, ranges: IdRanges = None) -> List[Dict[str, Any]]:
    """The spans of one trace, in start order, at most limit (within `ranges`: see _trace_rows)."""
    rows = sorted(_trace_rows(store, ", ".join(COLUMNS), trace_id, ranges), key=lambda r: (r[7], r[0]))
    return [row_to_record(r[1:]) for r in rows[:int(limit)]]


def oldest_id(store: Store) -> int:
    """The lowest spans.id stored (0 for an empty store)."""
    row = store.db.execute("SELECT min(id) FROM spans").fetchone()
    return int(row[0] or 0)


def search_spans(store: Store, lo_id: int, hi_id: int, where: Sequence[str], args: Sequence[Any],
                 limit: int) -> List[Sequence[Any]]:
    """(id, trace_id, span_id, parent_id, name, kind, service, start_ns, duration_ns, status) of the spans with
    lo_id <= id <= hi_id matching every condition of `where` (SQL over the spans columns, with `args`),
    newest id first, at most limit. A range scan of the primary key: callers bound the range they ask for."""
    sql = ("SELECT id, trace_id, span_id, parent_id, name, kind, service, start_ns, duration_ns, status FROM spans "
           "WHERE id >= ? AND id <= ?")
    if where:
        sql += " AND " + " AND ".join("(%s)" % w for w in where)
    sql += " ORDER BY id DESC LIMIT ?"
    return store.db.execute(sql, [lo_id, hi_id] + list(args) + [int(limit)]).fetchall()
