"""The UI's read-side pre-aggregation: rollup tables in a sidecar SQLite file, filled incrementally from the
span store (spans.id > the last id seen), so that every page answers from small tables however many spans
are stored, and the store's write path (Store.insert on the agent's flush thread) costs nothing more.

Sidecar: `<store>.ui` beside the store (a temporary file when that folder cannot be written). Its tables:

    ops(op_id, service, name, kind, entry)            one row per (service, span name, kind); entry: seen as an
                                                      endpoint (a server/consumer span, or a local root)
    stats(res, t, op_id, count, errors, sum_ns, max_ns)   endpoint spans per 10 s, minute and hour (res=10,
                                                          60, 3600; t = the bucket's start, epoch seconds)
    hist(res, t, op_id, bin, count)                       their latency histograms (log bins, 9% wide)
    calls(call_id, service, type, system, label)      what an endpoint calls: type sql (label = the obfuscated
                                                      statement), db (no statement), http, other
    call_stats(res, t, entry_op, call_id, count, errors, sum_ns, max_ns, max_trace)   per minute and hour
    call_hist(res, t, call_id, bin, count)
    edges(edge_id, src, dst, dst_type)                service map: client span -> server span of another
                                                      service (dst_type service), a database (db), or a peer
                                                      that sent no spans (external)
    edge_stats(res, t, edge_id, count, errors, sum_ns) / edge_hist(res, t, edge_id, bin, count)
    entries(id, op_id, start_ns, duration_ns, error, trace_id, span_id)   every endpoint span: slowest traces
    id_ranges(t, min_id, max_id)                      per minute of start time: which spans.id range holds it
    traces(trace_key, min_id, max_id)                 per trace (trace_key: the store's), the spans.id range
                                                      holding its spans: the store has no trace index
    pending(...)                                      client spans whose server side has not been stored yet

Each catch-up step is one IMMEDIATE transaction on the sidecar that reads `last_id` inside it, so several
processes (`autoinstr ui`, the collector) sharing a sidecar never count a span twice. A store that was
replaced (its span at last_id differs, or it shrank) makes the sidecar start over; spans removed by the
store's retention are pruned from the rollups.
"""

from __future__ import annotations

import json
import math
import os
import sqlite3
import tempfile
import threading
import time

from autoinstr import store as store_mod

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any, Dict, List, Optional, Sequence, Tuple

SIDECAR_VERSION = "5"
STAT_RESOLUTIONS = (10, 60, 3600)  # seconds per bucket of the endpoint rollups (stats, hist)
CALL_RESOLUTIONS = (60, 3600)  # and of the calls and edges rollups
RESOLUTIONS = STAT_RESOLUTIONS
CHUNK = 50000
LOOKAHEAD = 2000  # spans read past a chunk's end for lookups
TAIL_SCANS = 4  # and scans of what follows, per chunk, for a parent stored later still
BINS_PER_OCTAVE = 8
MAX_BIN = 255
PENDING_TTL_S = 15.0  # a client span whose server side has not arrived by then goes to an external peer
PRUNE_EVERY_S = 300.0
ENTRY_KINDS = ("server", "consumer")
CALL_KINDS = ("client", "producer")

_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS ops (op_id INTEGER PRIMARY KEY, service TEXT NOT NULL, name TEXT NOT NULL,
    kind TEXT NOT NULL, entry INTEGER NOT NULL DEFAULT 0, UNIQUE (service, name, kind));
CREATE TABLE IF NOT EXISTS stats (res INTEGER, t INTEGER, op_id INTEGER, count INTEGER, errors INTEGER,
    sum_ns INTEGER, max_ns INTEGER, PRIMARY KEY (res, t, op_id)) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS hist (res INTEGER, t INTEGER, op_id INTEGER, bin INTEGER, count INTEGER,
    PRIMARY KEY (res, t, op_id, bin)) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS calls (call_id INTEGER PRIMARY KEY, service TEXT NOT NULL, type TEXT NOT NULL,
    system TEXT NOT NULL, label TEXT NOT NULL, UNIQUE (service, type, system, label));
CREATE TABLE IF NOT EXISTS call_stats (res INTEGER, t INTEGER, entry_op INTEGER, call_id INTEGER, count INTEGER,
    errors INTEGER, sum_ns INTEGER, max_ns INTEGER, max_trace TEXT, PRIMARY KEY (res, t, entry_op, call_id))
    WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS call_hist (res INTEGER, t INTEGER, call_id INTEGER, bin INTEGER, count INTEGER,
    PRIMARY KEY (res, t, call_id, bin)) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS edges (edge_id INTEGER PRIMARY KEY, src TEXT NOT NULL, dst TEXT NOT NULL,
    dst_type TEXT NOT NULL, UNIQUE (src, dst, dst_type));
CREATE TABLE IF NOT EXISTS edge_stats (res INTEGER, t INTEGER, edge_id INTEGER, count INTEGER, errors INTEGER,
    sum_ns INTEGER, PRIMARY KEY (res, t, edge_id)) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS edge_hist (res INTEGER, t INTEGER, edge_id INTEGER, bin INTEGER, count INTEGER,
    PRIMARY KEY (res, t, edge_id, bin)) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS entries (id INTEGER PRIMARY KEY, op_id INTEGER NOT NULL, start_ns INTEGER NOT NULL,
    duration_ns INTEGER NOT NULL, error INTEGER NOT NULL, trace_id TEXT NOT NULL, span_id TEXT NOT NULL);
CREATE INDEX IF NOT EXISTS entries_op_duration ON entries (op_id, duration_ns);
CREATE INDEX IF NOT EXISTS entries_start ON entries (start_ns);
CREATE TABLE IF NOT EXISTS id_ranges (t INTEGER PRIMARY KEY, min_id INTEGER, max_id INTEGER);
CREATE TABLE IF NOT EXISTS traces (trace_key INTEGER PRIMARY KEY, min_id INTEGER, max_id INTEGER);
CREATE TABLE IF NOT EXISTS pending (id INTEGER PRIMARY KEY, trace_id TEXT NOT NULL, span_id TEXT NOT NULL,
    service TEXT NOT NULL, start_ns INTEGER NOT NULL, duration_ns INTEGER NOT NULL, error INTEGER NOT NULL,
    peer TEXT NOT NULL, first_seen REAL NOT NULL)
"""
_TABLES = ("ops", "stats", "hist", "calls", "call_stats", "call_hist", "edges", "edge_stats", "edge_hist",
           "entries", "id_ranges", "traces", "pending")

_LOG2_STEP = BINS_PER_OCTAVE / math.log(2)


def latency_bin(duration_ns: int) -> int:
    """Log-scale bin of a duration: 0 below 1 us, then 8 bins per doubling (each about 9% wide)."""
    if duration_ns < 1000:
        return 0
    b = int(math.log(duration_ns / 1000.0) * _LOG2_STEP) + 1
    return b if b < MAX_BIN else MAX_BIN


def bin_bounds_ns(b: int) -> Tuple[float, float]:
    if b <= 0:
        return 0.0, 1000.0
    return 1000.0 * 2 ** ((b - 1) / BINS_PER_OCTAVE), 1000.0 * 2 ** (b / BINS_PER_OCTAVE)


def bin_value_ns(b: int) -> float:
    """The value a bin stands for: its geometric middle (half its width from either edge)."""
    lo, hi = bin_bounds_ns(b)
    return 500.0 if b <= 0 else math.sqrt(lo * hi)


def percentiles(counts: Dict[int, int], qs: Sequence[float] = (50, 95, 99)) -> List[Optional[float]]:
    """Nearest-rank percentiles (q in 0..100) of a histogram {bin: count}, in ns; None when empty."""
    total = sum(counts.values())
    if not total:
        return [None for _ in qs]
    ordered = sorted(counts.items())
    out: List[Optional[float]] = []
    for q in qs:
        rank = max(1, int(math.ceil(q * total / 100.0)))
        seen = 0
        for b, n in ordered:
            seen += n
            if seen >= rank:
                out.append(bin_value_ns(b))
                break
    return out


def sidecar_path(store_path: str) -> str:
    """`<store>.ui` beside the store; a file in the temporary folder when that folder cannot be written."""
    path = os.path.abspath(store_path) + ".ui"
    folder = os.path.dirname(path)
    if os.access(folder, os.W_OK) and (not os.path.exists(path) or os.access(path, os.W_OK)):
        return path
    import hashlib

    digest = hashlib.sha256(os.path.abspath(store_path).encode("utf-8", "surrogateescape")).hexdigest()[:16]
    return os.path.join(tempfile.gettempdir(), "autoinstr-ui-%d-%s.db" % (os.getuid() if hasattr(os, "getuid")
                                                                          else 0, digest))


def indexed_range(db: sqlite3.Connection, trace_id: str) -> Optional[Tuple[int, int]]:
    """The spans.id range holding the trace's spans indexed so far (the sidecar's traces table), or None."""
    row = db.execute("SELECT min_id, max_id FROM traces WHERE trace_key = ?",
                     (store_mod.trace_key(trace_id),)).fetchone()
    return (int(row[0]), int(row[1])) if row else None


def trace_ranges(db: sqlite3.Connection, trace_id: str, indexed_id: int) -> List[Tuple[int, Optional[int]]]:
    """The spans.id ranges that hold a trace's spans: its range in the sidecar (the spans indexed so far,
    up to indexed_id) and the spans not indexed yet (after indexed_id). For store_mod.trace_spans()."""
    found = indexed_range(db, trace_id)
    ranges: List[Tuple[int, Optional[int]]] = [found] if found else []
    ranges.append((indexed_id + 1, None))
    return ranges


def connect_sidecar(path: str) -> sqlite3.Connection:
    if not os.path.exists(path):
        try:
            os.close(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_CLOEXEC, 0o600))
        except OSError:
            pass
    db = sqlite3.connect(path, timeout=30, isolation_level=None, check_same_thread=False)
    db.execute("PRAGMA busy_timeout = 30000")
    return db


class Rollup:
    """Keeps the sidecar up to date with the store. One per process; `catch_up()` is thread-safe."""

    def __init__(self, store_path: str, sidecar: Optional[str] = None) -> None:
        self.store_path = os.path.abspath(store_path)
        self.path = sidecar or sidecar_path(self.store_path)
        self.lock = threading.Lock()
        self._store: Any = None
        try:
            self._open()
        except sqlite3.DatabaseError as exc:  # not a database (any more): it is only a cache, so start anew
            if isinstance(exc, sqlite3.OperationalError) and "locked" in str(exc).lower():
                raise
            if getattr(self, "db", None) is not None:
                self.db.close()
            for suffix in ("", "-wal", "-shm"):
                try:
                    os.remove(self.path + suffix)
                except OSError:
                    pass
            self._open()
        self._generation = ""
        self._op_cache: Dict[Tuple[str, str, str], int] = {}
        self._entry_ops: set = set()
        self._call_cache: Dict[Tuple[str, str, str, str], int] = {}
        self._edge_cache: Dict[Tuple[str, str, str], int] = {}
        self._carry: Dict[Tuple[str, str], Tuple[Any, ...]] = {}
        self._carry_children: Dict[Tuple[str, str], List[Tuple[Any, ...]]] = {}
        self._last_prune = 0.0
        self.store_last_id = 0  # the store's max(id) at the last look
        self.last_id = int(self._meta("last_id") or 0)

    def _open(self) -> None:
        self.db = connect_sidecar(self.path)
        mode = self.db.execute("PRAGMA journal_mode").fetchone()[0]
        if str(mode).lower() != "wal":
            self.db.execute("PRAGMA journal_mode = WAL")
        self.db.execute("PRAGMA synchronous = NORMAL")
        self.db.execute("BEGIN IMMEDIATE")
        try:
            for statement in _SCHEMA.split(";"):
                if statement.strip():
                    self.db.execute(statement)
            version = self._meta("version")
            if version != SIDECAR_VERSION:
                self._clear()
                self._set_meta("version", SIDECAR_VERSION)
            self.db.execute("COMMIT")
        except BaseException:
            if self.db.in_transaction:
                self.db.execute("ROLLBACK")
            raise

    # ----------------------------------------------------------------------------- helpers

    def store(self) -> Any:
        if self._store is None:
            self._store = store_mod.Store(self.store_path, create=False, readonly=True)
        return self._store

    def _meta(self, key: str) -> Optional[str]:
        row = self.db.execute("SELECT value FROM meta WHERE key = ?", (key,)).fetchone()
        return row[0] if row else None

    def _set_meta(self, key: str, value: Any) -> None:
        self.db.execute("INSERT OR REPLACE INTO meta (key, value) VALUES (?, ?)", (key, str(value)))

    def _clear(self) -> None:
        for table in _TABLES:
            self.db.execute("DELETE FROM %s" % table)
        self._set_meta("last_id", 0)
        self._set_meta("last_span", "")
        self._set_meta("generation", "%d.%d" % (time.time_ns(), os.getpid()))

    def close(self) -> None:
        for db in (self.db, self._store):
            try:
                if db is not None:
                    db.close()
            except Exception:
                pass

    # --------------------------------------------------------------------------- catching up

    def catch_up(self, max_seconds: float = 3600.0, chunk: int = CHUNK) -> int:
        """Index the spans written since the last call, in transactions of up to `chunk` spans, for at most
        about max_seconds. Returns how many spans were indexed."""
        done = 0
        deadline = time.monotonic() + max_seconds
        with self.lock:
            top = store_mod.last_span_id(self.store())
            self.store_last_id = top
            while top != self.last_id:  # nothing new: no write transaction on the sidecar
                n, more = self._step(chunk)
                done += n
                if not more or time.monotonic() >= deadline:
                    break
            self._resolve_pending(force=False)
            if time.monotonic() - self._last_prune > PRUNE_EVERY_S:
                self._prune()
        return done

    def _step(self, chunk: int) -> Tuple[int, bool]:
        store = self.store()
        db = self.db
        db.execute("BEGIN IMMEDIATE")
        try:
            generation = self._meta("generation") or ""
            if generation != self._generation:
                self._forget_caches()
                self._generation = generation
            last_id = int(self._meta("last_id") or 0)
            top = store_mod.last_span_id(store)
            self.store_last_id = top
            if last_id and self._store_was_replaced(store, last_id, top):
                self._clear()
                self._forget_caches()
                self._generation = self._meta("generation") or ""
                last_id = 0
            upto = min(top, last_id + chunk)
            if upto <= last_id:
                self.last_id = last_id
                db.execute("COMMIT")
                return 0, False
            rows = store_mod.index_rows(store, last_id, upto)
            # the spans written right after this chunk, only for finding parents and children across its end
            # (a trace's spans are written together, so a chunk's end may split one)
            ahead = store_mod.index_rows(store, upto, min(top, upto + LOOKAHEAD)) if upto < top else []
            self._index(rows, ahead)
            self._set_meta("last_id", upto)
            self._set_meta("last_span", store_mod.span_id_at(store, upto) or "")
            db.execute("COMMIT")
        except BaseException:
            try:
                db.execute("ROLLBACK")
            except sqlite3.Error:
                pass
            self._forget_caches()
            raise
        self.last_id = upto
        return len(rows), upto < top

    def _store_was_replaced(self, store: Any, last_id: int, top: int) -> bool:
        if top < last_id:
            return True
        seen = self._meta("last_span") or ""
        now = store_mod.span_id_at(store, last_id)
        return bool(seen) and now is not None and now != seen

    def _forget_caches(self) -> None:
        self._op_cache.clear()
        self._entry_ops.clear()
        self._call_cache.clear()
        self._edge_cache.clear()
        self._carry = {}
        self._carry_children = {}

    # ------------------------------------------------------------------------------ ids

    def _op(self, service: str, name: str, kind: str) -> int:
        key = (service, name, kind)
        op = self._op_cache.get(key)
        if op is None:
            self.db.execute("INSERT OR IGNORE INTO ops (service, name, kind) VALUES (?, ?, ?)", key)
            row = self.db.execute("SELECT op_id, entry FROM ops WHERE service = ? AND name = ? AND kind = ?",
                                  key).fetchone()
            op = self._op_cache[key] = row[0]
            if row[1]:
                self._entry_ops.add(op)
        return op

    def _call(self, service: str, type_: str, system: str, label: str) -> int:
        key = (service, type_, system, label)
        call = self._call_cache.get(key)
        if call is None:
            self.db.execute("INSERT OR IGNORE INTO calls (service, type, system, label) VALUES (?, ?, ?, ?)", key)
            call = self._call_cache[key] = self.db.execute(
                "SELECT call_id FROM calls WHERE service = ? AND type = ? AND system = ? AND label = ?",
                key).fetchone()[0]
        return call

    def _edge(self, src: str, dst: str, dst_type: str) -> int:
        key = (src, dst, dst_type)
        edge = self._edge_cache.get(key)
        if edge is None:
            self.db.execute("INSERT OR IGNORE INTO edges (src, dst, dst_type) VALUES (?, ?, ?)", key)
            edge = self._edge_cache[key] = self.db.execute(
                "SELECT edge_id FROM edges WHERE src = ? AND dst = ? AND dst_type = ?", key).fetchone()[0]
        return edge

    # ------------------------------------------------------------------------------ indexing

    def _index(self, rows: List[Sequence[Any]], ahead: Sequence[Sequence[Any]] = ()) -> None:
        """Aggregate one chunk of spans (in id order) into the rollups (within the caller's transaction);
        `ahead`: the spans stored right after the chunk, looked at only to find parents and children."""
        spans, children = _links(rows)
        spans_ahead, children_ahead = _links(ahead)
        carry, carry_children = self._carry, self._carry_children
        looked_up: Dict[str, Dict[str, Tuple[Any, ...]]] = {}
        ranges: Dict[int, List[int]] = {}  # trace_key -> [min id, max id] of this chunk's spans
        key_of = store_mod.trace_key
        for row in rows:
            tkey = key_of(row[1])
            rng = ranges.get(tkey)
            if rng is None:
                ranges[tkey] = [row[0], row[0]]
            else:
                rng[1] = row[0]  # rows come in id order

        tail_from = (ahead[-1][0] if ahead else rows[-1][0] if rows else 0) + 1
        tail_scans = [TAIL_SCANS]

        def find(trace_id: str, span_id: str) -> Optional[Tuple[Any, ...]]:
            key = (trace_id, span_id)
            hit = spans.get(key) or carry.get(key) or spans_ahead.get(key)
            if hit is not None:
                return hit
            trace = looked_up.get(trace_id)
            if trace is None:  # indexed before the last chunk: the store, in the trace's id range
                trace = looked_up[trace_id] = self._stored_links(trace_id)
            hit = trace.get(span_id)
            if hit is None and span_id and tail_scans[0] > 0:  # stored later than the look-ahead reached (a
                # trace of thousands of spans cut by the chunk's end): a scan of the rest, a few per chunk
                tail_scans[0] -= 1
                trace.update(self._stored_links(trace_id, (tail_from, None)))
                hit = trace.get(span_id)
            return hit

        # per 10 s (stats, hist) and per minute (calls) here; the coarser rows are folded from these afterwards
        stats: Dict[Tuple[int, int], List[int]] = {}
        hist: Dict[Tuple[int, int, int], int] = {}
        call_stats: Dict[Tuple[int, int, int], List[Any]] = {}
        call_hist: Dict[Tuple[int, int, int], int] = {}
        edge_rows: List[Tuple[int, str, int, int, int]] = []  # (edge_id, t_s, duration, error, bin)
        entries: List[Tuple[Any, ...]] = []
        id_ranges: Dict[int, List[int]] = {}
        pending: List[Tuple[Any, ...]] = []
        new_entry_ops: set = set()
        op_of = self._op
        entry_ops = self._entry_ops
        bin_of = latency_bin
        call_of = self._call
        loads = json.loads
        none7 = [None] * 7

        for row in rows:
            rid, trace_id, span_id, parent_id, name, kind, service, start_ns, duration, status, extra = row
            if duration < 0:
                duration = 0
            error = 1 if status == "error" else 0
            op = op_of(service, name, kind)
            t_s = start_ns // 1000000000
            minute = t_s - t_s % 60
            rng = id_ranges.get(minute)
            if rng is None:
                id_ranges[minute] = [rid, rid]
            else:
                if rid < rng[0]:
                    rng[0] = rid
                if rid > rng[1]:
                    rng[1] = rid

            # the endpoint this span runs in: itself (a server/consumer span, a local root), else the nearest
            # such ancestor of the same service
            parent = find(trace_id, parent_id) if parent_id is not None and kind not in ENTRY_KINDS else None
            is_entry = kind in ENTRY_KINDS or parent is None or parent[6] != service
            b = -1
            if is_entry:
                b = bin_of(duration)
                entries.append((rid, op, start_ns, duration, error, trace_id, span_id))
                if op not in entry_ops:
                    new_entry_ops.add(op)
                    entry_ops.add(op)
                key = (t_s - t_s % 10, op)
                s = stats.get(key)
                if s is None:
                    stats[key] = [1, error, duration, duration]
                else:
                    s[0] += 1
                    s[1] += error
                    s[2] += duration
                    if duration > s[3]:
                        s[3] = duration
                hkey = (t_s - t_s % 10, op, b)
                hist[hkey] = hist.get(hkey, 0) + 1
            if kind not in CALL_KINDS:
                continue
            if b < 0:
                b = bin_of(duration)
            if is_entry:
                entry_op = op
            else:
                node = parent
                for _ in range(256):
                    if node[5] in ENTRY_KINDS:
                        break
                    up = find(trace_id, node[3]) if node[3] is not None else None
                    if up is None or up[6] != service:
                        break
                    node = up
                entry_op = op_of(service, node[4], node[5])
            values = loads(extra) if extra else none7
            db_system, statement, db_namespace, method, address, port, peer_service = values
            if statement:
                call = call_of(service, "sql", str(db_system or ""), str(statement))
            elif db_system:
                call = call_of(service, "db", str(db_system), name)
            elif method:
                call = call_of(service, "http", "", "%s %s" % (method, _peer(address, port) or name))
            else:
                call = call_of(service, "other", kind, name)
            key = (minute, entry_op, call)
            c = call_stats.get(key)
            if c is None:
                call_stats[key] = [1, error, duration, duration, trace_id]
            else:
                c[0] += 1
                c[1] += error
                c[2] += duration
                if duration > c[3]:
                    c[3] = duration
                    c[4] = trace_id
            hkey = (minute, call, b)
            call_hist[hkey] = call_hist.get(hkey, 0) + 1

            # the service map: to a database, to the service whose server span is this span's child, or,
            # when no such span arrives in time, to the peer's address
            if db_system:
                target = str(db_system) + (":" + str(db_namespace) if db_namespace else "")
                edge_rows.append((self._edge(service, target, "db"), t_s, duration, error, b))
                continue
            child = None
            key = (trace_id, span_id)
            for c in children.get(key, ()) or carry_children.get(key, ()) or children_ahead.get(key, ()):
                child = c
                break
            if child is None:
                trace = looked_up.get(trace_id)
                if trace is None:
                    find(trace_id, "")
                    trace = looked_up.get(trace_id) or {}
                for r in trace.values():
                    if r[3] == span_id and r[5] in ENTRY_KINDS:
                        child = r
                        break
            if child is not None:
                edge_rows.append((self._edge(service, child[6], "service"), t_s, duration, error, b))
            else:
                peer = str(peer_service) if peer_service else (_peer(address, port) or name)
                pending.append((rid, trace_id, span_id, service, start_ns, duration, error, peer, time.time()))

        db = self.db
        if new_entry_ops:
            db.executemany("UPDATE ops SET entry = 1 WHERE op_id = ?", [(o,) for o in new_entry_ops])
        stat_rows = _fold(stats, _merge_stats, STAT_RESOLUTIONS)
        db.executemany(
            "INSERT INTO stats VALUES (?, ?, ?, ?, ?, ?, ?) ON CONFLICT (res, t, op_id) DO UPDATE SET "
            "count = count + excluded.count, errors = errors + excluded.errors, sum_ns = sum_ns + excluded.sum_ns, "
            "max_ns = max(max_ns, excluded.max_ns)", stat_rows)
        db.executemany("INSERT INTO hist VALUES (?, ?, ?, ?, ?) ON CONFLICT (res, t, op_id, bin) DO UPDATE SET "
                       "count = count + excluded.count", _fold(hist, None, STAT_RESOLUTIONS))
        db.executemany(
            "INSERT INTO call_stats VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?) ON CONFLICT (res, t, entry_op, call_id) DO "
            "UPDATE SET count = count + excluded.count, errors = errors + excluded.errors, "
            "sum_ns = sum_ns + excluded.sum_ns, max_trace = CASE WHEN excluded.max_ns > max_ns THEN "
            "excluded.max_trace ELSE max_trace END, max_ns = max(max_ns, excluded.max_ns)",
            _fold(call_stats, _merge_stats, CALL_RESOLUTIONS))
        db.executemany("INSERT INTO call_hist VALUES (?, ?, ?, ?, ?) ON CONFLICT (res, t, call_id, bin) DO UPDATE "
                       "SET count = count + excluded.count", _fold(call_hist, None, CALL_RESOLUTIONS))
        db.executemany("INSERT OR IGNORE INTO entries VALUES (?, ?, ?, ?, ?, ?, ?)", entries)
        db.executemany("INSERT INTO id_ranges VALUES (?, ?, ?) ON CONFLICT (t) DO UPDATE SET "
                       "min_id = min(min_id, excluded.min_id), max_id = max(max_id, excluded.max_id)",
                       [(t, r[0], r[1]) for t, r in id_ranges.items()])
        db.executemany("INSERT INTO traces VALUES (?, ?, ?) ON CONFLICT (trace_key) DO UPDATE SET "
                       "min_id = min(min_id, excluded.min_id), max_id = max(max_id, excluded.max_id)",
                       [(k, r[0], r[1]) for k, r in ranges.items()])
        if pending:
            db.executemany("INSERT OR IGNORE INTO pending VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)", pending)
        self._write_edges(edge_rows)
        self._carry, self._carry_children = spans, children

    def _write_edges(self, edge_rows: List[Tuple[int, int, int, int, int]]) -> None:
        if not edge_rows:
            return
        stats: Dict[Tuple[int, int], List[int]] = {}
        hist: Dict[Tuple[int, int, int], int] = {}
        for edge, t_s, duration, error, b in edge_rows:
            minute = t_s - t_s % 60
            s = stats.get((minute, edge))
            if s is None:
                stats[(minute, edge)] = [1, error, duration]
            else:
                s[0] += 1
                s[1] += error
                s[2] += duration
            hist[(minute, edge, b)] = hist.get((minute, edge, b), 0) + 1
        self.db.executemany(
            "INSERT INTO edge_stats VALUES (?, ?, ?, ?, ?, ?) ON CONFLICT (res, t, edge_id) DO UPDATE SET "
            "count = count + excluded.count, errors = errors + excluded.errors, sum_ns = sum_ns + excluded.sum_ns",
            _fold(stats, _merge_sums, CALL_RESOLUTIONS))
        self.db.executemany("INSERT INTO edge_hist VALUES (?, ?, ?, ?, ?) ON CONFLICT (res, t, edge_id, bin) DO "
                            "UPDATE SET count = count + excluded.count", _fold(hist, None, CALL_RESOLUTIONS))

    def _stored_links(self, trace_id: str, ids: Optional[Tuple[int, Optional[int]]] = None
                      ) -> Dict[str, Tuple[Any, ...]]:
        """{span_id: row} of a trace's spans indexed so far, or of those in the spans.id range `ids` (the
        shape of index_rows' rows, with no id and no extra)."""
        if ids is None:
            ids = indexed_range(self.db, trace_id)
            if ids is None:
                return {}
        return {r[0]: (None, trace_id, r[0], r[1], r[4], r[3], r[2])
                for r in store_mod.trace_links(self.store(), trace_id, [ids])}

    def _resolve_pending(self, force: bool) -> None:
        """Client spans seen without their server side: pair them now that it may be stored, or, after
        PENDING_TTL_S (or with force), count them as calls to an external peer."""
        db = self.db
        if not db.execute("SELECT 1 FROM pending LIMIT 1").fetchone():
            return
        now = time.time()
        db.execute("BEGIN IMMEDIATE")
        try:
            rows = db.execute("SELECT id, trace_id, span_id, service, start_ns, duration_ns, error, peer, first_seen "
                              "FROM pending ORDER BY id LIMIT 5000").fetchall()
            done, edge_rows = [], []
            traces: Dict[str, List[Sequence[Any]]] = {}
            caught_up = self.last_id >= self.store_last_id
            for rid, trace_id, span_id, service, start_ns, duration, error, peer, first_seen in rows:
                links = traces.get(trace_id)
                if links is None:
                    links = traces[trace_id] = list(self._stored_links(trace_id).values())
                child = next((r for r in links if r[3] == span_id and r[5] in ENTRY_KINDS), None)
                if child is not None:
                    edge = self._edge(service, child[6], "service")
                elif force or (caught_up and now - first_seen >= PENDING_TTL_S):  # (the server side may be
                    # stored but not indexed yet while catching up)
                    edge = self._edge(service, peer, "external")
                else:
                    continue
                edge_rows.append((edge, start_ns // 1000000000, duration, error, latency_bin(duration)))
                done.append((rid,))
            self._write_edges(edge_rows)
            db.executemany("DELETE FROM pending WHERE id = ?", done)
            db.execute("COMMIT")
        except BaseException:
            try:
                db.execute("ROLLBACK")
            except sqlite3.Error:
                pass
            self._forget_caches()
            raise

    def _prune(self) -> None:
        """Drop the rollups of time the store no longer holds (its retention deleted those spans)."""
        self._last_prune = time.monotonic()
        oldest = store_mod.oldest_start_ns(self.store())
        if oldest is None:
            return
        cutoff_s = oldest // 1000000000
        db = self.db
        db.execute("BEGIN IMMEDIATE")
        try:
            for res in STAT_RESOLUTIONS:
                t = cutoff_s - cutoff_s % res
                for table in ("stats", "hist", "call_stats", "call_hist", "edge_stats", "edge_hist"):
                    db.execute("DELETE FROM %s WHERE res = ? AND t < ?" % table, (res, t))
            db.execute("DELETE FROM entries WHERE start_ns < ?", (oldest,))
            db.execute("DELETE FROM id_ranges WHERE t < ?", (cutoff_s - cutoff_s % 60,))
            db.execute("DELETE FROM traces WHERE max_id < ?", (store_mod.oldest_id(self.store()),))
            db.execute("COMMIT")
        except BaseException:
            db.execute("ROLLBACK")
            raise


def _links(rows: Sequence[Sequence[Any]]) -> Tuple[Dict[Tuple[str, str], Any], Dict[Tuple[str, str], List[Any]]]:
    """index_rows() by (trace_id, span_id), and the server/consumer ones by (trace_id, parent_id)."""
    spans: Dict[Tuple[str, str], Any] = {}
    children: Dict[Tuple[str, str], List[Any]] = {}
    for row in rows:
        spans[(row[1], row[2])] = row
        if row[3] is not None and row[5] in ENTRY_KINDS:
            children.setdefault((row[1], row[3]), []).append(row)
    return spans, children


def _merge_stats(into: List[Any], more: List[Any]) -> None:
    into[0] += more[0]
    into[1] += more[1]
    into[2] += more[2]
    if more[3] > into[3]:
        into[3] = more[3]
        if len(into) > 4:
            into[4] = more[4]


def _merge_sums(into: List[Any], more: List[Any]) -> None:
    for i, value in enumerate(more):
        into[i] += value


def _fold(finest: Dict[Tuple[Any, ...], Any], merge: Any, resolutions: Sequence[int]) -> List[Tuple[Any, ...]]:
    """Rows (res, t, *key, *values) of a dict {(t, *key): values} at resolutions[0], and of its folds into each
    coarser resolution (values: a count, or a stats list combined by `merge`)."""
    rows: List[Tuple[Any, ...]] = []
    for res in resolutions:
        if res == resolutions[0]:
            folded = finest
        else:
            folded = {}
            for key, value in finest.items():
                fkey = (key[0] - key[0] % res,) + key[1:]
                have = folded.get(fkey)
                if merge is None:
                    folded[fkey] = (have or 0) + value
                elif have is None:
                    folded[fkey] = list(value)
                else:
                    merge(have, value)
        for key, value in folded.items():
            rows.append((res,) + key + ((value,) if merge is None else tuple(value)))
    return rows


def _peer(address: Any, port: Any) -> str:
    if not address:
        return ""
    return "%s:%s" % (address, port) if port not in (None, "") else str(address)


class Indexer:
    """A daemon thread that keeps a Rollup caught up: at start, then every `interval` seconds or when asked."""

    def __init__(self, rollup: Rollup, interval: float = 1.0) -> None:
        self.rollup = rollup
        self.interval = interval
        self.wake = threading.Event()
        self.done = threading.Condition()
        self.stopped = threading.Event()
        self.error: Optional[str] = None
        self.passes = 0
        self.thread = threading.Thread(target=self._loop, name="autoinstr-ui-indexer", daemon=True)

    def start(self) -> Indexer:
        self.thread.start()
        return self

    def stop(self) -> None:
        self.stopped.set()
        self.wake.set()

    def _loop(self) -> None:
        try:
            from autoinstr.integrations import suppress_instrumentation

            suppress_instrumentation()
        except Exception:
            pass
        while not self.stopped.is_set():
            try:
                self.rollup.catch_up(max_seconds=5.0)
                self.error = None
            except Exception as exc:  # a locked or vanished store: try again next round
                self.error = "%s: %s" % (type(exc).__name__, exc)
            with self.done:
                self.passes += 1
                self.done.notify_all()
            behind = self.rollup.last_id < self.rollup.store_last_id
            if not behind:
                self.wake.wait(self.interval)
                self.wake.clear()

    def sync(self, top: int, timeout: float) -> bool:
        """Ask for a catch-up to spans.id `top` (the store's max id, read by the caller) and wait up to
        timeout for it; True when the rollups hold every span up to there."""
        if self.rollup.last_id >= top:
            return True
        self.wake.set()
        end = time.monotonic() + timeout
        with self.done:
            while self.rollup.last_id < top:
                left = end - time.monotonic()
                if left <= 0:
                    return False
                self.done.wait(left)
        return True
