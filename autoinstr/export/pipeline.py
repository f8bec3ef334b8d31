"""The export pipeline: a bounded buffer of finished local traces and one flush thread.

The request thread only appends (one lock, no I/O, never blocks on export); when the buffer is full the
new spans are dropped and counted. The flush thread, started on first use, wakes every flush interval or
when a batch is full, converts spans to records and hands them to each exporter, retrying failures with a
bounded backoff before dropping (counted). It never runs more than about a quarter of the time on early
(batch-full) wake-ups, so a span flood costs the app bounded CPU: beyond that, spans are dropped.

Fork: the child starts with an empty buffer and no thread (os.register_at_fork); spans it inherited open
from the parent are skipped at conversion (the parent exports them). Exit: a final flush with a hard
deadline (AUTOINSTR_SHUTDOWN_TIMEOUT) runs before the interpreter joins its threads; an exporter that
hangs cannot hold the process past it.
"""

from __future__ import annotations

import os
import time
from _collections import deque
from _thread import allocate_lock  # `threading` itself is imported when the flush thread starts
from itertools import count

from autoinstr import _log
from autoinstr.export.records import let_go as _let_go
from autoinstr.export.records import records_of
from autoinstr.export.records import track_again as _track_again

TYPE_CHECKING = False
if TYPE_CHECKING:
    import threading
    from typing import Any, Callable, Deque, Dict, List, Optional, Tuple

    from autoinstr.export.base import Exporter
    from autoinstr.trace.span import Span

FORK_WAIT_S = 2.0  # how long a fork waits for the agent's I/O in progress (see Pipeline.before_fork)
MAX_RETRIES = 3  # then the batch is dropped for that exporter (counted)
BACKOFF_BASE = 0.5
BACKOFF_MAX = 30.0
DESTINATION_BACKOFF_MAX = 10.0  # a destination failing for long is tried this often: it recovers within it
RETRY_AFTER_MAX = 300.0  # a server's Retry-After is honoured up to this many seconds
SHUTDOWN_GRACE_S = 0.1  # at exit, with app threads still running, spans ending this soon are still exported
# The flush thread lends the GIL to the app between slices of its Python work (converting spans): a request
# thread woken by its socket while the flush thread computes waits for the GIL up to a switch interval (5 ms)
# otherwise, which is the app's p99. A short sleep lets a waiting thread take it at once (a sleep(0) does not:
# the releasing thread takes the GIL back before the waiter is scheduled). Not when the queue is half full.
GIL_PAUSE_S = 0.0002
EARLY_FLUSH_DUTY = 0.25  # share of wall time early flushes may use (the rest waits for the interval) while
# the queue is under half full
# an exporter raising one of these has a bug (a failing destination raises OSError, ExportError, sqlite3's
# errors...): it is disabled at once, with one warning, rather than retried for ever
_BUGS = (TypeError, AttributeError, KeyError, IndexError, NameError, AssertionError, RecursionError)


def _process_start_mono_ns() -> Optional[int]:
    """When this process started, on the perf_counter_ns clock (CLOCK_MONOTONIC: since boot, as
    /proc/self/stat counts, to a clock tick), or None where that cannot be read."""
    try:
        with open("/proc/self/stat", "rb") as f:
            fields = f.read().rsplit(b")", 1)[1].split()
        ticks = int(fields[19])  # field 22 of stat(5); the split starts at field 3
        hz = os.sysconf("SC_CLK_TCK")
        started = ticks * 1_000_000_000 // hz
        return started if 0 < started <= time.perf_counter_ns() else None
    except (OSError, ValueError, IndexError):
        return None


class _ExporterSlot:
    """One exporter with its own retry queue and counters, so a retried batch is re-sent only where it
    failed. With several exporters each slot sends from a thread of its own: one that hangs or backs off
    delays no data of another. With one (the usual case) the flush thread sends itself.

    The flush thread hands records over through `inbox` (deque appends are atomic); only the sending
    thread touches `pending`."""

    def __init__(self, exporter: Exporter, max_pending_spans: int) -> None:
        self.exporter = exporter
        self.name = exporter.name
        self.inbox: Deque[List[Dict[str, Any]]] = deque()
        self.inbox_spans = 0  # written by the flush thread, read as an approximate backlog
        self.taken_spans = 0  # written by the sender
        self.pending: List[List[Any]] = []  # [records, attempts, not_before]
        self.pending_spans = 0
        # the destination's backoff, not only the batch's: when the failing batch is trimmed or dropped,
        # the next one waits too, so a dead destination under load is not tried at every flush
        self.not_before = 0.0
        self.failures_in_a_row = 0
        self.disabled = False  # the exporter failed with a bug of its own (see _BUGS): it is no longer called
        self.max_pending = max_pending_spans
        self.exported = 0
        self.errors = 0
        self.dropped = 0  # by the sender: retries exhausted, backlog trimmed
        self.dropped_backlog = 0  # by the flush thread: the sender is too far behind
        self.last_error = ""
        self.offers = 0  # batches handed over; `done` is how many of them the sender has dealt with
        self.done = 0
        self.thread: Optional[threading.Thread] = None
        self._wake: Optional[threading.Event] = None
        self._final = False
        # held around every call into the exporter: a fork waits for it, so a child never inherits a
        # library lock (SQLite's, a socket's...) taken by a thread that does not exist in the child
        self.io_lock = allocate_lock()

    # ------------------------------------------------------------------------ flush thread side

    def would_drop(self, count: int) -> bool:
        """Whether offer() would drop `count` more spans now (flush thread side)."""
        return self.disabled or (self.inbox_spans - self.taken_spans + self.pending_spans + count
                                 > self.max_pending * 2)

    def offer(self, records: List[Dict[str, Any]]) -> None:
        backlog = self.inbox_spans - self.taken_spans + self.pending_spans
        if self.disabled or backlog + len(records) > self.max_pending * 2:
            self.dropped_backlog += len(records)
            return
        self.inbox.append(records)
        self.inbox_spans += len(records)
        self.offers += 1
        if self._wake is not None:
            self._wake.set()

    def start_thread(self) -> None:
        """Send from a thread of its own; where none can start (Python 3.12+ at interpreter exit), the
        flush thread keeps sending for this exporter itself."""
        import threading

        self._wake = threading.Event()
        thread = threading.Thread(target=self._run, name="autoinstr-export-" + self.name, daemon=True)
        try:
            thread.start()
        except RuntimeError:
            self._wake = None
            return
        self.thread = thread

    def finish(self) -> None:
        """Final send (and exporter shutdown) on the sending thread; returns once it is done."""
        if self.thread is None:
            self.pump(time.monotonic(), final=True)
            self._shutdown_exporter()
            return
        self._final = True
        if self._wake is not None:
            self._wake.set()
        self.thread.join()

    # --------------------------------------------------------------------------- sender side

    def _run(self) -> None:
        from autoinstr.integrations import suppress_instrumentation

        suppress_instrumentation()
        wake = self._wake
        assert wake is not None
        while not self._final:
            due = min((item[2] for item in self.pending), default=None)
            if due is not None:
                due = max(due, self.not_before)
            wake.wait(None if due is None else max(0.0, due - time.monotonic()))
            wake.clear()
            if self._final:
                break
            self.pump(time.monotonic())
        self.pump(time.monotonic(), final=True)
        self._shutdown_exporter()

    def _shutdown_exporter(self) -> None:
        try:
            with self.io_lock:
                self.exporter.shutdown()
        except Exception:
            pass

    def pump(self, now: float, final: bool = False, pause: Optional[Callable[[], None]] = None) -> None:
        """Move the inbox into the retry queue (trimming the oldest beyond the bound), then send what is due
        (`pause` called between two batches: the flush thread lending the GIL)."""
        inbox = self.inbox
        offers = self.offers
        while inbox:
            records = inbox.popleft()
            self.taken_spans += len(records)
            self.pending.append([records, 0, 0.0])
            self.pending_spans += len(records)
        while self.pending_spans > self.max_pending and len(self.pending) > 1:
            old = self.pending.pop(0)
            self.pending_spans -= len(old[0])
            self.dropped += len(old[0])
        self._send(now, final, pause)
        self.done = offers

    def _send(self, now: float, final: bool, pause: Optional[Callable[[], None]] = None) -> None:
        while self.pending:
            item = self.pending[0]
            records, attempts, not_before = item
            if not final and now < max(not_before, self.not_before):
                return
            try:
                with self.io_lock:
                    self.exporter.export(records)
            except Exception as exc:
                self.errors += 1
                self.failures_in_a_row += 1
                self.last_error = "%s: %s" % (type(exc).__name__, exc)
                if isinstance(exc, _BUGS):
                    self._disable()
                    return
                item[1] = attempts = attempts + 1
                # an exporter's error may say when to retry (`retry_after`: the server's Retry-After, in
                # seconds) or that retrying is pointless (`retryable` False: the batch is dropped now)
                retry_after = getattr(exc, "retry_after", None)
                retry_after = min(float(retry_after), RETRY_AFTER_MAX) if isinstance(retry_after, (int, float)) \
                    and retry_after > 0 else 0.0
                permanent = getattr(exc, "retryable", True) is False
                if final and attempts <= MAX_RETRIES and not permanent:  # at exit: retry at once, a little later
                    time.sleep(max(0.1 * attempts, retry_after))  # (the exit deadline bounds all of it)
                    continue
                if not permanent:
                    backoff = min(DESTINATION_BACKOFF_MAX,
                                  BACKOFF_BASE * (2 ** (min(self.failures_in_a_row, 16) - 1)))
                    self.not_before = now + max(retry_after, backoff)
                if attempts > MAX_RETRIES or final or permanent:
                    self.pending.pop(0)
                    self.pending_spans -= len(records)
                    self.dropped += len(records)
                    _log.warn_once("export-fail-" + self.name, "exporter %s failed (%s); dropping a batch of %d "
                                   "span(s) after %d attempt(s); later failures are counted in autoinstr.stats()"
                                   % (self.name, self.last_error, len(records), attempts))
                    if final:
                        continue
                else:
                    item[2] = now + max(retry_after, min(BACKOFF_MAX, BACKOFF_BASE * (2 ** (attempts - 1))))
                    _log.debug("exporter %s failed (%s), retry %d in %.1fs" % (
                        self.name, self.last_error, attempts, item[2] - now))
                return
            self.pending.pop(0)
            self.pending_spans -= len(records)
            self.exported += len(records)
            self.failures_in_a_row = 0
            self.not_before = 0.0
            if pause is not None and self.pending:  # another batch follows at once
                pause()

    def _disable(self) -> None:
        """A bug in the exporter, not a failing destination: retrying cannot help. Its spans are dropped
        (counted) from now on; the other exporters go on."""
        self.disabled = True
        dropped = self.pending_spans
        self.dropped += dropped
        self.pending, self.pending_spans = [], 0
        _log.warn_once("export-disabled-" + self.name, "exporter %s failed (%s); it is disabled, its spans are "
                       "dropped and counted in autoinstr.stats(); the other exporters go on"
                       % (self.name, self.last_error))

    # ---------------------------------------------------------------------------------- other

    @property
    def unsent(self) -> int:
        return self.inbox_spans - self.taken_spans + self.pending_spans

    def reset_after_fork(self) -> None:
        self.inbox = deque()
        self.inbox_spans = self.taken_spans = self.pending_spans = 0
        self.pending = []
        self.not_before, self.failures_in_a_row = 0.0, 0
        self.exported = self.errors = self.dropped = self.dropped_backlog = 0
        self.offers = self.done = 0
        self.io_lock = allocate_lock()
        self.thread, self._wake, self._final = None, None, False

    def stats(self) -> Dict[str, Any]:
        return {"exported": self.exported, "errors": self.errors, "dropped": self.dropped + self.dropped_backlog,
                "pending": self.unsent, "last_error": self.last_error}


class Pipeline:
    metrics_flush: Optional[Callable[[bool], None]] = None

    def __init__(self, exporter_factory: Callable[[], List[Exporter]], service: str, flush_interval: float = 1.0,
                 max_queue_spans: int = 10000, max_batch_spans: int = 1000, shutdown_timeout: float = 2.0,
                 max_attributes: int = 128, max_attribute_length: int = 4096) -> None:
        self.service = service
        self.flush_interval = flush_interval
        self.max_queue = max_queue_spans
        self.batch = min(max_batch_spans, max_queue_spans)
        self.shutdown_timeout = shutdown_timeout
        self.max_attributes = max_attributes
        self.max_attribute_length = max_attribute_length
        self._exporter_factory = exporter_factory
        self._pid = os.getpid()
        self._setup_lock = allocate_lock()  # exporters import modules (sqlite3...) while it is held
        self._fork_held: List[Any] = []
        self._slots: Optional[List[_ExporterSlot]] = None  # built on the flush thread, at first use
        self.submitted = 0
        self._full_drops = count()  # next() on it is atomic: exact under any number of request threads
        self._full_drops_reads = 0
        self._full_drops_lock = allocate_lock()
        self.dropped_conversion = 0
        self.dropped_shutdown = 0
        self.flushes = 0
        self._init_process_state()

    def _init_process_state(self) -> None:
        """Everything that must be fresh in a forked child."""
        self._lock = allocate_lock()
        self._buffer: Deque[List[Span]] = deque()
        self._queued = 0
        self._wake_pending = False
        self._thread: Optional[threading.Thread] = None  # with it: the events below, made in _start_thread
        self._wake: threading.Event
        self._urgent: threading.Event
        self._stopped: threading.Event
        self._flushed: threading.Condition
        self._stopping = False
        self._limit = self.max_queue  # spans accepted while queued; -1 once stopping
        self._wake_at = 0  # queued spans that call _wake_up: 0 until the thread runs, then the batch size
        self._flush_requests = 0
        self._flush_generation = 0
        self._not_before_ns = 0
        self._early_allowed_at = 0.0
        self._ration_until = max(self.batch, self.max_queue // 2)  # queued spans beyond which nothing is rationed

    @property
    def slots(self) -> List[_ExporterSlot]:
        if self._slots is None:
            # Exporters import their modules (sqlite3...) here (see _start_thread). A fork in the middle
            # would leave the child a half-imported module: fork waits for this lock (see before_fork).
            with self._setup_lock:
                if self._slots is None:
                    self._slots = [_ExporterSlot(e, self.max_queue) for e in self._exporter_factory()]
        return self._slots

    @property
    def dropped_queue_full(self) -> int:
        """Spans dropped because the queue was full (request threads count them, without a lock)."""
        with self._full_drops_lock:  # reading advances the counter too: the reads are subtracted
            value = next(self._full_drops) - self._full_drops_reads
            self._full_drops_reads += 1
        return value

    @dropped_queue_full.setter
    def dropped_queue_full(self, value: int) -> None:
        self._full_drops, self._full_drops_reads = count(value), 0

    # ----------------------------------------------------------------------- request thread side

    def submit(self, spans: List[Span]) -> None:
        """Queue a finished local trace (or a piece of one). Never blocks, never raises. The list is the
        pipeline's from now on (the conversion empties it, to let each span go as soon as it is converted).

        No lock: deque.append is atomic, and `_queued` is a bound, not a ledger. A thread switch in the
        middle of `+=` can make it drift by one trace; the flush thread recounts it exactly at each take.
        Exact counts (submitted, exported) are kept by the flush thread."""
        queued = self._queued + len(spans)
        if queued > self._limit:
            _track_again(spans)
            drop = self._full_drops.__next__
            for _ in spans:
                drop()
            return
        self._buffer.append(spans)
        self._queued = queued
        if queued >= self._wake_at:
            self._wake_up()

    def submit_one(self, span: Span) -> None:
        """submit() for a local trace of one span, queued as is (no list: the commonest case, made cheap)."""
        queued = self._queued + 1
        if queued > self._limit:
            _track_again(span)
            self._full_drops.__next__()
            return
        self._buffer.append(span)
        self._queued = queued
        if queued >= self._wake_at:
            self._wake_up()

    def ensure_thread(self) -> None:
        """Start the flush thread if it is not running (statsd metrics need it without any span)."""
        if self._pid != os.getpid():
            self._forked_behind_our_back()
        if self._thread is None:
            self._start_thread()

    def _wake_up(self) -> None:
        if self._pid != os.getpid():
            self._forked_behind_our_back()
        if self._thread is None:
            self._start_thread()
        elif self._queued >= self.batch and not self._wake_pending:
            self._wake_pending = True
            self._wake.set()
        elif self._queued >= self._ration_until and not self._urgent.is_set():
            # the queue is half full: early flushes stop being rationed; dropping spans the exporter could
            # still take costs the user more than the CPU of keeping up
            self._urgent.set()

    # ------------------------------------------------------------------------- the flush thread

    def _start_thread(self) -> bool:
        import threading

        if self._slots is None:
            # The exporters are built (their modules imported: sqlite3, http.client...) here, once, on the
            # thread of the first finished span: a few milliseconds, once. On the flush thread, each of the
            # dozens of file reads an import makes would wait for the GIL while the app computes (up to a
            # switch interval, 5 ms, each): under load the first flush took a third of a second, and the
            # queue overflowed meanwhile. (Opening the destination stays on the flush thread.)
            try:
                self.slots  # noqa: B018  (the property builds them)
            except Exception:
                pass
        # bounded: a signal handler (the SIGTERM flush) may interrupt the thread that holds the lock
        if not self._lock.acquire(timeout=1.0):
            return False
        try:
            if self._thread is not None:
                return self._thread.is_alive()
            self._wake = threading.Event()
            self._urgent = threading.Event()
            self._stopped = threading.Event()
            self._flushed = threading.Condition(threading.Lock())
            t = threading.Thread(target=self._run, name="autoinstr-flush", daemon=True)
            self._thread = t
            self._wake_at = self.batch
        finally:
            self._lock.release()
        try:
            t.start()
            return True
        except RuntimeError:  # interpreter shutting down (3.12+: no new threads at exit)
            self._thread = None
            self._wake_at = 0
            return False

    def _take(self) -> List[Tuple[List[List[Span]], int]]:
        """What is queued, in chunks of about a batch: (local traces, their span count). A local trace is cut
        only when it alone is longer than a batch; spans queued alone go together at the end. One pass over
        the queue: this runs for every local trace (every request), on the thread that shares the GIL."""
        buffer, popleft = self._buffer, self._buffer.popleft
        size = self.batch
        chunks: List[Tuple[List[List[Span]], int]] = []
        current: List[List[Span]] = []
        count = taken = 0
        single: List[Span] = []
        try:
            while buffer:
                spans = popleft()
                if spans.__class__ is not list:
                    single.append(spans)
                    continue
                n = len(spans)
                if count + n > size:
                    if current:
                        chunks.append((current, count))
                        taken += count
                        current, count = [], 0
                    if n > size:  # (a trace handed over in pieces, or a long one: its pieces are independent)
                        chunks.extend(([spans[i:i + size]], min(size, n - i)) for i in range(0, n, size))
                        taken += n
                        continue
                current.append(spans)
                count += n
        except IndexError:
            pass
        if current:
            chunks.append((current, count))
            taken += count
        for i in range(0, len(single), size):
            chunks.append(([single[i:i + size]], min(size, len(single) - i)))
        taken += len(single)
        self._wake_pending = False
        self.submitted += taken
        self._queued = sum(len(x) if x.__class__ is list else 1 for x in list(buffer))  # added meanwhile
        return chunks

    def _run(self) -> None:
        from autoinstr.integrations import suppress_instrumentation

        suppress_instrumentation()  # the agent's own I/O (sockets, SQLite) is never traced
        next_flush = time.monotonic() + self.flush_interval
        try:
            while not self._stopping:
                woke_early = self._wake.wait(max(0.0, next_flush - time.monotonic()))
                now = time.monotonic()
                if woke_early and not self._urgent.is_set() and now < min(next_flush, self._early_allowed_at):
                    # batch-full wake-ups are rationed (EARLY_FLUSH_DUTY): a span flood costs bounded CPU;
                    # only a flush request or the exit cuts this wait short
                    self._wake.clear()
                    self._urgent.wait(min(self._early_allowed_at, next_flush) - now)
                self._wake.clear()
                self._urgent.clear()
                if self._stopping:
                    break
                requested = self._flush_requests
                # the flush's own CPU time, not its wall time: waiting for the GIL while the app computes is
                # no work of ours, and counting it would ration flushes (and drop spans) under exactly that load
                started = time.thread_time()
                first = self.flushes == 0
                self.flush_once(lend_gil=True)
                spent = time.thread_time() - started
                if not first:  # the first flush also sets the exporters up (imports, connections): not rationed on
                    self._early_allowed_at = time.monotonic() + spent * (1 - EARLY_FLUSH_DUTY) / EARLY_FLUSH_DUTY
                if requested:
                    with self._flushed:
                        self._flush_requests -= requested
                        self._flush_generation += 1
                        self._flushed.notify_all()
                if time.monotonic() >= next_flush or not woke_early:
                    next_flush = time.monotonic() + self.flush_interval
            self._final_flush()
        finally:
            self._stopped.set()

    def _final_flush(self) -> None:
        if self._app_threads_alive():
            # A server stopped by a signal may be finishing a request on another thread right now (the
            # client has its response; the span ends as the server closes it): take what ends meanwhile.
            grace_end = time.monotonic() + SHUTDOWN_GRACE_S
            while True:
                if self._buffer:
                    self.flush_once()
                if time.monotonic() >= grace_end:
                    break
                time.sleep(0.01)
        self._limit = -1  # from now on, spans are dropped (counted)
        self.flush_once(final=True)
        for slot in self.slots:
            slot.finish()

    @staticmethod
    def _app_threads_alive() -> bool:
        """Threads of the app besides the one exiting (a server's request threads), not the agent's."""
        try:
            import sys

            threading = sys.modules.get("threading")
            if threading is None:  # never imported: no thread started through it (and importing it at every
                return False        # exit costs the process a millisecond and more)
            me = threading.current_thread()
            main = threading.main_thread()
            return any(t is not me and t is not main and t.is_alive() and not t.name.startswith("autoinstr-")
                       for t in threading.enumerate())
        except Exception:
            return False

    def flush_once(self, final: bool = False, lend_gil: bool = False) -> None:
        """Export what is queued now, and retry what is due (everything, once, when final). `lend_gil`:
        called by the flush thread, which pauses between slices of work (never on an app's thread).

        Work goes in chunks of about a batch: converted, then handed to the exporters, chunk after
        chunk. A deadline (the exit's) that cuts a large backlog short loses only what it did not reach."""
        # (the spans taken are tracked again by the garbage collector before they are let go: records_of does it
        # for those it converts, here for the others)
        chunks = self._take()
        if self.metrics_flush is not None:  # statsd (autoinstr.export.statsd.flush), on every flush
            self.metrics_flush(final)
        if not self.slots:  # `none`: nothing to convert for
            _let_go(chunks)
            self.flushes += 1
            return
        try:
            slots = self.slots
            if not final:
                for slot in slots:
                    if len(slots) > 1 and slot.thread is None:
                        slot.start_thread()
            # exporters that all take span_fields() tuples (the local store, the default) get those: no
            # record dicts built to be read back at once
            fields = all(getattr(slot.exporter, "takes_fields", False) for slot in slots)
            # one exporter sending msgpack (the collector) gets each record already packed: the tuples would
            # only be read back at once
            packed = len(slots) == 1 and getattr(slots[0].exporter, "takes_packed", False)
            pause = self._lend_gil if lend_gil else None
            for chunk, size in chunks:
                if all(slot.would_drop(size) for slot in slots):
                    # every exporter is too far behind (a failing destination) or disabled: drop (counted)
                    # without converting, so a fault at the destination costs the app no CPU for records
                    for slot in slots:
                        slot.dropped_backlog += size
                    _let_go(chunk)
                    continue
                errors: List[str] = []
                records = records_of(chunk, self.service, self.max_attributes, self.max_attribute_length,
                                     self._not_before_ns, errors, fields, pause, packed)
                if errors:
                    self.dropped_conversion += len(errors)
                    _log.warn_once("record-conversion", "could not convert a span for export (%s); it is "
                                   "dropped and counted" % errors[0])
                now = time.monotonic()
                for slot in slots:
                    if records:
                        slot.offer(records)
                    if slot.thread is None:
                        slot.pump(now, final, pause)
            if not chunks:  # nothing new: still retry what is due
                now = time.monotonic()
                for slot in slots:
                    if slot.thread is None:
                        slot.pump(now, final, pause)
            self.flushes += 1
        except Exception as exc:  # the flush thread must survive anything
            _log.warn_once("flush-error", "flush failed: %s: %s" % (type(exc).__name__, exc))

    def _lend_gil(self) -> None:
        """Between slices of work (spans converted, batches sent): a short sleep, so an app thread waiting for
        the GIL gets it now rather than after a switch interval; skipped while the queue is half full (keeping
        up comes first) and while a thread waits for this flush (autoinstr.flush(): it wants the flush done,
        not the GIL)."""
        if self._queued < self._ration_until and not self._stopping and not self._flush_requests:
            time.sleep(GIL_PAUSE_S)

    def flush(self, timeout: float = 5.0) -> bool:
        """Export what is finished now, waiting at most `timeout` s; True if it was done in time."""
        if self._pid != os.getpid():
            self._forked_behind_our_back()
        if self._thread is None:
            if not self._buffer:
                return True
            if not self._start_thread():
                return False
        with self._flushed:
            target = self._flush_generation + 1
            self._flush_requests += 1
            self._urgent.set()
            self._wake.set()
            end = time.monotonic() + timeout
            while self._flush_generation < target:
                left = end - time.monotonic()
                if left <= 0 or self._stopped.is_set():
                    return self._flush_generation >= target
                self._flushed.wait(min(left, 0.1))
        # exporters with threads of their own: wait until they have dealt with what was handed to them
        waits = [(slot, slot.offers) for slot in (self._slots or []) if slot.thread is not None]
        while any(slot.done < offers for slot, offers in waits):
            if time.monotonic() >= end:
                return False
            time.sleep(0.005)
        return True

    # --------------------------------------------------------------------------------- exit

    def shutdown(self, timeout: Optional[float] = None) -> bool:
        """At exit: the flush thread exports everything and stops; we wait at most `timeout` seconds
        (default AUTOINSTR_SHUTDOWN_TIMEOUT), a hard deadline. True if it finished in time."""
        deadline = self.shutdown_timeout if timeout is None else timeout
        if self._pid != os.getpid():
            self._forked_behind_our_back()
        if self._thread is None and not self._buffer:
            # nothing finished yet, but a request may be ending on another thread (see _final_flush)
            grace_end = time.monotonic() + SHUTDOWN_GRACE_S
            while not self._buffer and time.monotonic() < grace_end and self._app_threads_alive():
                time.sleep(0.01)
            if not self._buffer:
                return True
        if (self._thread is None and not self._start_thread()) or not self._thread.is_alive():
            # no flush thread and none can start now (spans made during interpreter exit): flush here
            self._stopping = True
            self._limit = -1
            self._final_flush()
            return True
        self._stopping = True  # spans are still taken until the flush thread's last take (_final_flush)
        self._urgent.set()
        self._wake.set()
        if self._stopped.wait(deadline):
            return True
        self.dropped_shutdown += self._queued + sum(s.unsent for s in (self._slots or []))
        _log.warn("exit flush did not finish within AUTOINSTR_SHUTDOWN_TIMEOUT=%ss; the process exits anyway "
                  "(exporter %s)" % (deadline, ", ".join(s.name for s in (self._slots or []) if s.pending) or "busy"))
        return False

    def before_fork(self) -> None:
        """Wait (bounded by FORK_WAIT_S in all) for exporter set-up and exports in progress, so that the
        child inherits no half-imported module and no lock held by a thread it will not have."""
        end = time.monotonic() + FORK_WAIT_S
        held = []
        if self._setup_lock.acquire(timeout=FORK_WAIT_S):
            held.append(self._setup_lock)
        for slot in self._slots or []:  # read after the set-up lock: the slots may have just been made
            if slot.io_lock.acquire(timeout=max(0.0, end - time.monotonic())):
                held.append(slot.io_lock)
        self._fork_held = held

    def after_fork_in_parent(self) -> None:
        held, self._fork_held = self._fork_held, []
        for lock in held:
            lock.release()

    def _forked_behind_our_back(self) -> None:
        """The pid check: a fork that skipped os.register_at_fork (a C extension or server calling fork()
        itself) left us the parent's buffer and a flush thread that does not exist here. Reset as after
        a fork; the parent's spans are told apart by the time this process started (Linux), or else
        everything queued so far is left to the parent. Ids drawn in the child before this check may
        repeat the parent's next ones (the generator is reseeded only now): such forks stay an edge case,
        servers that fork from C (uWSGI) run the at-fork hooks through PyOS_AfterFork_Child."""
        _log.debug("fork without at-fork handlers detected in pid %d; the pipeline restarts" % os.getpid())
        started = _process_start_mono_ns()
        buffer = self._buffer
        from autoinstr.trace.span import _Ids

        _Ids.reseed()
        self.after_fork_in_child()
        if started is not None:
            self._not_before_ns = started
            self._buffer = buffer
            self._queued = sum(len(x) if x.__class__ is list else 1 for x in list(buffer))

    def after_fork_in_child(self) -> None:
        self._pid = os.getpid()
        self._fork_held = []
        self._setup_lock = allocate_lock()
        self._init_process_state()
        self._not_before_ns = time.perf_counter_ns()
        self.submitted = self.dropped_queue_full = self.dropped_conversion = self.dropped_shutdown = 0
        self._full_drops_lock = allocate_lock()
        self.flushes = 0
        for slot in self._slots or []:
            slot.reset_after_fork()  # its sender thread, if any, starts again with the child's first flush
            try:
                slot.exporter.after_fork()
            except Exception as exc:
                _log.warn_once("fork-" + slot.name, "exporter %s could not reset after fork: %s" % (slot.name, exc))

    # -------------------------------------------------------------------------------- health

    def stats(self) -> Dict[str, Any]:
        slots = self._slots or []
        return {
            "spans_sampled": self.submitted + self._queued + self.dropped_queue_full,
            "spans_queued": self._queued,
            "spans_exported": min((s.exported for s in slots), default=0),
            "spans_dropped": {
                "queue_full": self.dropped_queue_full,
                "export_failed": sum(s.dropped + s.dropped_backlog for s in slots),
                "conversion": self.dropped_conversion,
                "shutdown": self.dropped_shutdown,
            },
            "export_errors": sum(s.errors for s in slots),
            "flushes": self.flushes,
            "exporters": {s.name: s.stats() for s in slots},
            "pid": os.getpid(),
        }
