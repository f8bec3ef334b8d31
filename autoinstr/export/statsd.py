"""statsd metrics (AUTOINSTR_STATSD=host:port): request, query and outgoing-call metrics for every
request, sampled or not, runtime metrics, agent health, and the custom metrics of `autoinstr.metrics`.

The request path only records into memory, without a lock: a table per kind (server requests, queries,
outgoing calls) maps a small key tuple to an entry [count, timer samples, errors]. The counts are
itertools.count objects (`next()` is atomic under the GIL and hands each call its own index), the timer
samples a list bounded per key and interval (a reservoir: beyond TIMER_SAMPLES values, each new value
replaces a random one; the lines then carry the statsd sample rate, so the daemon's counts stay right).
Distinct keys per table and interval are capped (MAX_KEYS): beyond it, a key is folded into `other`,
counted. The flush thread (autoinstr.export.pipeline calls `flush` on every flush) swaps the tables for
fresh ones and sends what the old ones hold; at the next flush it reads them again for what a request
thread paused between fetching a table and counting into it added late.

Lines are built and sent on the flush thread: batched into UDP datagrams of at most MAX_DATAGRAM bytes,
from a non-blocking socket; errors are swallowed and counted, so a missing statsd server costs nothing.
Names are Graphite-safe: every component is sanitized (letters, digits, `_` and `-`; dots only separate
components). AUTOINSTR_STATSD_TAGS=dogstatsd sends tags as `|#k:v`; `none` (the default) folds the tag
values into the name path: `{prefix}.{service}.{metric}.{tag values...}`.

Fork: the child starts with empty tables (os.register_at_fork) and its own socket.
"""

from __future__ import annotations

import os
import time
from _random import Random
from _thread import _local, allocate_lock
from itertools import count

from autoinstr.integrations import _suppressed
from autoinstr.trace.span import _clock, _get_current

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any, Callable, Dict, Iterable, List, Optional, Tuple

    Entry = List[Any]  # [count, samples, errors]
    Table = Dict[Tuple[Any, ...], Entry]

MAX_DATAGRAM = 1432  # bytes of payload per UDP datagram (fits a 1500-byte Ethernet frame)
MAX_KEYS = 500  # distinct keys per table and interval; beyond: folded into `other` (counted)
MAX_CUSTOM_KEYS = 1000  # distinct custom metrics (name + tags) per interval; beyond: dropped (counted)
TIMER_SAMPLES = 100  # timer values kept per key and interval (a reservoir beyond)
RUNTIME_INTERVAL = 10.0  # seconds between runtime and agent-health samples
MAX_COMPONENT = 80  # characters per name component or tag value
MAX_NAME_COMPONENTS = 12

#: Read by the integrations' one-line hooks (`if _statsd.enabled: ...`): False costs them one check.
enabled = False

_random = Random(int.from_bytes(os.urandom(16), "big")).random
_tls = _local()  # .db: inside an untraced database call (executemany calling execute)

# ------------------------------------------------------------------------------ request-path tables

_server: Table = {}  # (route, method, status // 100) -> entry
_db: Table = {}  # (db.system, operation) -> entry
_client: Table = {}  # (server.address,) -> entry
_retired: Tuple[Table, Table, Table] = ({}, {}, {})  # swapped out at the previous flush, read at the next
_OTHER_SERVER = ("other", "other", 0)
_OTHER_DB = ("other", "other")
_OTHER_CLIENT = ("other",)
_overflow = count()  # keys folded into `other`
_kicked = False  # the flush thread has been asked to run (the first recorded value does it)
_pipeline: Any = None
_fork_handler = False


def _new_entry(table: Table, key: Tuple[Any, ...], other: Tuple[Any, ...]) -> Entry:
    if len(table) >= MAX_KEYS and key not in table:
        next(_overflow)
        key = other
    return table.setdefault(key, [count(), [], count()])  # setdefault: atomic, two threads get one entry


def _record(table: Table, key: Tuple[Any, ...], other: Tuple[Any, ...], ns: int, error: bool) -> None:
    entry = table.get(key)
    if entry is None:
        entry = _new_entry(table, key, other)
    n = next(entry[0])
    samples = entry[1]
    if n < TIMER_SAMPLES:
        samples.append(ns)
    else:
        j = int(_random() * (n + 1))
        if j < TIMER_SAMPLES:
            try:
                samples[j] = ns
            except IndexError:  # another thread's append is not in yet
                samples.append(ns)
    if error:
        next(entry[2])
    if not _kicked:
        _kick()


def _kick() -> None:
    global _kicked
    _kicked = True
    try:
        if _pipeline is not None:
            _pipeline.ensure_thread()
    except Exception:
        pass


# ------------------------------------------------------------------------- the integrations' hooks

def server_request(span: Any, status: int) -> None:
    """A server span ended (sampled or not; its clock was read by start()/finish() either way)."""
    try:
        attrs = span.attributes
        error = status >= 500 or "error.type" in attrs or (span._sampled and span._status == "error")
        if error and not status:  # failed before start_response: the server answers 500
            status = 500
        method = attrs.get("http.request.method") or span.name
        _record(_server, (attrs.get("http.route") or "", method, status // 100), _OTHER_SERVER,
                span.end_ns - span.start_ns, error)
    except Exception:
        pass


def db_span(span: Any) -> None:
    """A sampled database span ended."""
    try:
        attrs = span.attributes
        _record(_db, (attrs.get("db.system") or "other", _db_operation(attrs)), _OTHER_DB,
                span.end_ns - span.start_ns, span._status == "error")
    except Exception:
        pass


def _db_operation(attrs: Any, statement: Any = None) -> str:
    op = attrs.get("db.operation.name")
    if op:
        return op  # type: ignore[no-any-return]
    if statement is None:
        statement = attrs.get("db.query.text")
    found = _operations.get(statement) if statement.__class__ is str else None
    if found is None:
        found = operation_of(statement)
        if statement.__class__ is str and len(_operations) < 4096:
            _operations[statement] = found
    return found


def db_untraced(attrs: Any, statement: Any, call: Callable[..., Any], args: tuple, kwargs: dict) -> Any:
    """A database call the DB-API integration makes no span for. Timed unless it is the agent's own I/O
    or nested in another database call (executemany calling execute)."""
    tls = _tls
    try:
        parent = _get_current()
        if (parent is not None and parent._sampled) or _suppressed.get() or getattr(tls, "db", False):
            return call(*args, **kwargs)
    except Exception:
        return call(*args, **kwargs)
    tls.db = True
    error = True
    start = _clock()
    try:
        result = call(*args, **kwargs)
        error = False
        return result
    finally:
        end = _clock()
        tls.db = False
        try:
            _record(_db, (attrs.get("db.system") or "other", _db_operation(attrs, statement)), _OTHER_DB,
                    end - start, error)
        except Exception:
            pass


async def db_untraced_async(attrs: Any, statement: Any, call: Callable[..., Any], args: tuple,
                            kwargs: dict) -> Any:
    """db_untraced for a coroutine method (no nesting check: tasks interleave on one thread)."""
    try:
        parent = _get_current()
        skip = (parent is not None and parent._sampled) or _suppressed.get()
    except Exception:
        skip = True
    if skip:
        return await call(*args, **kwargs)
    error = True
    start = _clock()
    try:
        result = await call(*args, **kwargs)
        error = False
        return result
    finally:
        end = _clock()
        try:
            _record(_db, (attrs.get("db.system") or "other", _db_operation(attrs, statement)), _OTHER_DB,
                    end - start, error)
        except Exception:
            pass


def client_start(span: Any, host: str) -> None:
    """An unsampled outgoing request starts: its clock and target host, for the metrics only."""
    try:
        span.end_ns = 0  # set: reading it does not go through Span.__getattr__ (a raise)
        span.start_ns = _clock()
        span.attributes["server.address"] = host
    except Exception:
        pass


def client_end(span: Any, failed: bool = False) -> None:
    """An outgoing request ends (`failed`: with an exception): finish its span (once) and record it. Errors:
    exceptions and 4xx/5xx responses."""
    try:
        if span.end_ns:
            return  # finished already
        start = span.start_ns
        if not start:
            return  # never started
        now = _clock()
        span.finish(now)
        attrs = span.attributes
        _record(_client, (attrs.get("server.address") or "",), _OTHER_CLIENT, now - start,
                failed or "error.type" in attrs or (span._sampled and span._status == "error"))
    except Exception:
        pass


# ------------------------------------------------------------------------------------ SQL operation

_operations: Dict[Any, str] = {}
_SQL_WORDS = ("SELECT", "INSERT", "UPDATE", "DELETE", "MERGE", "REPLACE", "UPSERT")


def operation_of(statement: Any) -> str:
    """The statement's operation (its first keyword; the main one after a WITH clause), upper case."""
    if isinstance(statement, (bytes, bytearray)):
        statement = bytes(statement[:2000]).decode("utf-8", "replace")
    if not isinstance(statement, str):
        statement = str(statement)
    text = statement[:4000]
    i, n = 0, len(text)
    while i < n:  # skip blanks, comments and opening parentheses
        ch = text[i]
        if ch.isspace() or ch == "(":
            i += 1
        elif text.startswith("--", i):
            j = text.find("\n", i)
            i = n if j < 0 else j + 1
        elif text.startswith("/*", i):
            j = text.find("*/", i + 2)
            i = n if j < 0 else j + 2
        else:
            break
    j = i
    while j < n and (text[j].isalpha() or text[j] == "_"):
        j += 1
    word = text[i:j][:40].upper()
    if word == "WITH":  # the main statement: the first DML keyword outside parentheses after the CTEs
        depth = 0
        k = j
        while k < n:
            ch = text[k]
            if ch == "(":
                depth += 1
            elif ch == ")":
                depth -= 1
            elif depth == 0 and ch.isalpha() and not text[k - 1].isalnum() and text[k - 1] != "_":
                end = k
                while end < n and (text[end].isalpha() or text[end] == "_"):
                    end += 1
                candidate = text[k:end].upper()
                if candidate in _SQL_WORDS:
                    return candidate
                k = end
                continue
            k += 1
    return word or "other"


# ----------------------------------------------------------------------------------- custom metrics

_custom_lock = allocate_lock()
_custom: Dict[Tuple[Any, ...], List[Any]] = {}  # (type, name, tags) -> [value] | [count, samples]
_custom_dropped = 0


def custom(kind: str, name: Any, value: Any, tags: Dict[str, Any]) -> None:
    """autoinstr.metrics: kind c (counter), g (gauge), ms (timing) or h (histogram)."""
    global _custom_dropped
    try:
        if value.__class__ is not int:
            value = float(value)
            if value != value or value in (float("inf"), float("-inf")):
                return
        key = (kind, str(name), tuple(sorted((str(k), str(v)) for k, v in tags.items())) if tags else ())
        with _custom_lock:
            entry = _custom.get(key)
            if entry is None:
                if len(_custom) >= MAX_CUSTOM_KEYS:
                    _custom_dropped += 1
                    return
                entry = _custom[key] = [0, []] if kind in ("ms", "h") else [0]
            if kind == "c":
                entry[0] += value
            elif kind == "g":
                entry[0] = value
            else:
                n = entry[0]
                entry[0] = n + 1
                if n < TIMER_SAMPLES:
                    entry[1].append(value)
                else:
                    j = int(_random() * (n + 1))
                    if j < TIMER_SAMPLES:
                        entry[1][j] = value
        if not _kicked:
            _kick()
    except Exception:
        pass


# ----------------------------------------------------------------------------------------- naming

class Naming:
    """Metric names and tags as configured (set by `enable`)."""

    prefix = "autoinstr"
    service = "python"
    dogstatsd = False


_BAD_CHARS: Any = None
_BAD_TAG_CHARS: Any = None


def component(value: Any) -> str:
    """One Graphite-safe name component: letters, digits, `_` and `-` (anything else becomes `_`)."""
    global _BAD_CHARS
    if _BAD_CHARS is None:
        import re

        _BAD_CHARS = re.compile(r"[^A-Za-z0-9_\-]+")
    text = _BAD_CHARS.sub("_", str(value)).strip("_")[:MAX_COMPONENT].strip("_")
    return text or "none"


def dotted(name: Any) -> str:
    """A dotted name (custom metrics, the prefix): each component sanitized, empty ones dropped."""
    parts = [component(p) for p in str(name).split(".") if component(p) != "none" or p.strip() == "none"]
    return ".".join(parts[:MAX_NAME_COMPONENTS]) or "none"


def tag_value(value: Any) -> str:
    """A DogStatsD tag key or value: no `|`, `,`, `#`, blanks or control characters."""
    global _BAD_TAG_CHARS
    if _BAD_TAG_CHARS is None:
        import re

        _BAD_TAG_CHARS = re.compile(r"[^A-Za-z0-9_\-./:<>]+")
    return _BAD_TAG_CHARS.sub("_", str(value))[:MAX_COMPONENT] or "none"


def route_component(route: str) -> str:
    return "root" if route and not route.strip("/") else component(route)


def metric_name(metric: str, tags: Iterable[Tuple[str, Any]]) -> str:
    """The name and tag suffix of a line, before `:value`: `{prefix}.{metric}` and `|#service:..,k:v`
    tags (dogstatsd), or `{prefix}.{service}.{metric}.{tag values}` (none)."""
    if Naming.dogstatsd:
        pairs = ["service:" + tag_value(Naming.service)]
        pairs.extend("%s:%s" % (tag_value(k).replace(":", "_"), tag_value(v)) for k, v in tags)
        return "%s.%s\0%s" % (Naming.prefix, metric, ",".join(pairs))
    parts = [Naming.prefix, component(Naming.service), metric]
    parts.extend(route_component(v) if k == "route" else component(v) for k, v in tags)
    return ".".join(parts)


def line(name: str, value: Any, kind: str, rate: float = 1.0) -> str:
    """One statsd line; `name` as metric_name made it (tags after \\0)."""
    base, _, tags = name.partition("\0")
    text = "%s:%s|%s" % (base, _number(value), kind)
    if rate < 1.0:
        text += "|@%s" % _number(max(rate, 1e-6))
    if tags:
        text += "|#" + tags
    return text


def _number(value: Any) -> str:
    if value.__class__ is int:
        return str(value)
    text = "%.6f" % value
    text = text.rstrip("0").rstrip(".")
    return text if text not in ("", "-0", "-") else "0"


def batch(lines: Iterable[str], limit: int = MAX_DATAGRAM) -> Tuple[List[bytes], int]:
    """Lines joined by newlines into datagrams of at most `limit` bytes; -> (datagrams, lines dropped
    because a single one is longer than `limit`)."""
    out: List[bytes] = []
    current: List[bytes] = []
    size = 0
    dropped = 0
    for text in lines:
        data = text.encode("utf-8", "replace")
        if len(data) > limit:
            dropped += 1
            continue
        extra = len(data) + (1 if current else 0)
        if size + extra > limit:
            out.append(b"\n".join(current))
            current, size, extra = [], 0, len(data)
        current.append(data)
        size += extra
    if current:
        out.append(b"\n".join(current))
    return out, dropped


# ---------------------------------------------------------------------------------- the flush side

_SERVER_METRICS = (("http.server.requests", "http.server.errors", "http.server.duration"),
                   ("route", "method", "status_class"))
_DB_METRICS = (("db.queries", "db.errors", "db.duration"), ("system", "operation"))
_CLIENT_METRICS = (("http.client.requests", "http.client.errors", "http.client.duration"), ("host",))
_names: Dict[Tuple[Any, ...], Tuple[str, str, str]] = {}  # (table no., key) -> the three names


class _State:
    """The flush thread's own state (reset after fork)."""

    sock: Any = None
    address: Any = None
    resolve_after = 0.0
    target: Optional[Tuple[str, int]] = None
    datagrams = 0
    send_errors = 0
    lines_dropped = 0
    next_runtime = 0.0
    runtime: Optional[Dict[str, Any]] = None  # the previous runtime sample
    health: Dict[str, int] = {}
    gc: List[int] = [0, 0]  # [start of the running collection, pause ns so far]


def _status_class(cls: int) -> str:
    return "%dxx" % cls if 1 <= cls <= 5 else "other"


def _table_lines(table: Table, number: int, spec: Tuple[Tuple[str, str, str], Tuple[str, ...]],
                 out: List[str], late: bool = False) -> None:
    """Lines of one table. The first time a table is read its entries get what was sent appended
    ([..., total, errors]); read again (`late`: the table retired one flush earlier) only what request
    threads added after that goes out, as counts."""
    (requests_name, errors_name, duration_name), tag_names = spec
    for key, entry in list(table.items()):
        total = _read_count(entry[0])
        failed = _read_count(entry[2])
        seen = len(entry) >= 5  # read before: only what came since
        if seen:
            total, failed, entry[3], entry[4] = total - entry[3], failed - entry[4], total, failed
        else:  # (late, unseen: an entry a paused thread made in the table after it was read)
            entry.extend((total, failed))
        if not total and not failed:
            continue
        names = _names_of(number, key, requests_name, errors_name, duration_name, tag_names)
        out.append(line(names[0], total, "c"))
        if failed or (number == 0 and not late):  # request errors go out as 0 too: error rates need the series
            out.append(line(names[1], failed, "c"))
        if seen:
            continue
        kept = list(entry[1])
        rate = len(kept) / total if total > len(kept) else 1.0
        for ns in kept:
            out.append(line(names[2], ns / 1e6, "ms", rate))


def _names_of(number: int, key: Tuple[Any, ...], requests_name: str, errors_name: str, duration_name: str,
              tag_names: Tuple[str, ...]) -> Tuple[str, str, str]:
    cache_key = (number,) + key
    names = _names.get(cache_key)
    if names is None:
        values = list(key)
        if number == 0:
            values[2] = _status_class(values[2])
            if values[1] == "HTTP":
                values[1] = "_OTHER"
        tags = list(zip(tag_names, values))
        names = (metric_name(requests_name, tags), metric_name(errors_name, tags),
                 metric_name(duration_name, tags))
        if len(_names) >= 4 * MAX_KEYS:
            _names.clear()
        _names[cache_key] = names
    return names


def _read_count(counter: Any) -> int:
    return int(repr(counter)[6:-1])  # "count(N)"


def _custom_lines(out: List[str]) -> None:
    global _custom, _custom_dropped
    with _custom_lock:
        taken, _custom = _custom, {}
    for (kind, name, tags), entry in taken.items():
        full = metric_name(dotted(name), tags)
        if kind in ("ms", "h"):
            total, kept = entry
            rate = len(kept) / total if total > len(kept) else 1.0
            if kind == "h" and not Naming.dogstatsd:  # plain statsd has no `h`: its timers are histograms
                kind = "ms"
            out.extend(line(full, v, kind, rate) for v in kept)
        elif kind == "g" and entry[0] < 0:  # a negative gauge would read as a decrement: set 0 first
            out.append(line(full, 0, "g"))
            out.append(line(full, entry[0], "g"))
        else:
            out.append(line(full, entry[0], kind))


def flush(final: bool = False) -> None:
    """Called by the pipeline on every flush (on the flush thread): send what was recorded."""
    global _server, _db, _client, _retired
    try:
        current = (_server, _db, _client)
        _server, _db, _client = {}, {}, {}
        late, _retired = _retired, current
        out: List[str] = []
        specs = (_SERVER_METRICS, _DB_METRICS, _CLIENT_METRICS)
        for number, (table, spec) in enumerate(zip(late, specs)):
            _table_lines(table, number, spec, out, late=True)
        for number, (table, spec) in enumerate(zip(current, specs)):
            _table_lines(table, number, spec, out)
        _custom_lines(out)
        now = time.monotonic()
        if now >= _State.next_runtime or final:
            _State.next_runtime = now + RUNTIME_INTERVAL
            _runtime_lines(out)
            _health_lines(out)
        if out:
            send(out)
    except Exception as exc:
        from autoinstr import _log

        _log.warn_once("statsd-flush", "statsd flush failed: %s: %s" % (type(exc).__name__, exc))


def send(lines: List[str]) -> None:
    datagrams, dropped = batch(lines)
    _State.lines_dropped += dropped
    sock = _socket()
    if sock is None:
        _State.send_errors += len(datagrams)
        return
    for datagram in datagrams:
        try:
            sock.send(datagram)
            _State.datagrams += 1
        except OSError:  # no server (refused: the socket is connected, so the kernel tells), buffer full,
            # unreachable: the metrics are lost, counted
            _State.send_errors += 1


def _socket() -> Any:
    if _State.sock is not None:
        return _State.sock
    if _State.target is None or time.monotonic() < _State.resolve_after:
        return None
    import socket

    host, port = _State.target
    try:
        family, kind, proto, _, address = socket.getaddrinfo(host, port, 0, socket.SOCK_DGRAM)[0]
        sock = socket.socket(family, kind, proto)
        try:
            sock.setblocking(False)
            # connected: a missing server's "port unreachable" then fails a later send (counted), where an
            # unconnected socket's sendto would lose it silently; a server that comes back is used at once
            sock.connect(address)
        except OSError:
            sock.close()
            raise
    except OSError as exc:
        _State.resolve_after = time.monotonic() + 60.0
        from autoinstr import _log

        _log.warn_once("statsd-resolve", "statsd %s:%s: %s; metrics are dropped (retried every minute)"
                       % (host, port, exc))
        return None
    _State.sock, _State.address = sock, address
    return sock


# ----------------------------------------------------------------------------- runtime and health

def _gc_callback(phase: str, info: Dict[str, Any]) -> None:
    gc_state = _State.gc
    if phase == "start":
        gc_state[0] = _clock()
    elif gc_state[0]:
        gc_state[1] += _clock() - gc_state[0]
        gc_state[0] = 0


def _sample_runtime() -> Dict[str, Any]:
    import gc
    import sys

    times = os.times()
    sample: Dict[str, Any] = {"wall": time.monotonic(), "user": times.user, "system": times.system,
                              "gc_pause_ns": _State.gc[1],
                              "gc": [s.get("collections", 0) for s in gc.get_stats()]}
    try:
        with open("/proc/self/statm", "rb") as f:
            sample["rss"] = int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        try:
            import resource

            sample["rss"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * (1 if sys.platform == "darwin"
                                                                                   else 1024)
        except Exception:
            pass
    threading = sys.modules.get("threading")
    if threading is not None:
        sample["threads"] = threading.active_count()
    for folder in ("/proc/self/fd", "/dev/fd"):
        try:
            sample["fds"] = len(os.listdir(folder)) - 1  # less the one listdir opened
            break
        except OSError:
            continue
    return sample


def _runtime_lines(out: List[str]) -> None:
    sample = _sample_runtime()
    previous, _State.runtime = _State.runtime, sample
    g = "g"
    out.append(line(metric_name("runtime.cpu.user", ()), sample["user"], g))
    out.append(line(metric_name("runtime.cpu.system", ()), sample["system"], g))
    if previous is not None and sample["wall"] > previous["wall"]:
        used = sample["user"] + sample["system"] - previous["user"] - previous["system"]
        out.append(line(metric_name("runtime.cpu.percent", ()),
                        max(0.0, 100.0 * used / (sample["wall"] - previous["wall"])), g))
    for key, name in (("rss", "runtime.memory.rss"), ("threads", "runtime.threads"), ("fds", "runtime.fds")):
        if key in sample:
            out.append(line(metric_name(name, ()), sample[key], g))
    before = previous["gc"] if previous is not None else [0] * len(sample["gc"])
    for generation, (now, then) in enumerate(zip(sample["gc"], before)):
        out.append(line(metric_name("runtime.gc.collections", (("generation", "gen%d" % generation),)),
                        max(0, now - then), "c"))
    paused = sample["gc_pause_ns"] - (previous["gc_pause_ns"] if previous is not None else 0)
    out.append(line(metric_name("runtime.gc.pause", ()), max(0.0, paused / 1e6), "c"))


def stats() -> Dict[str, Any]:
    """statsd's own counters (shown in autoinstr.stats())."""
    return {"datagrams_sent": _State.datagrams, "send_errors": _State.send_errors,
            "lines_dropped": _State.lines_dropped, "keys_overflow": _read_count(_overflow),
            "custom_dropped": _custom_dropped}


def _health_lines(out: List[str]) -> None:
    """Agent health as counters: what happened since the last sample."""
    from autoinstr import bootstrap

    agent = bootstrap.stats()
    own = stats()
    now = {"spans_dropped": sum(agent.get("spans_dropped", {}).values()),
           "export_errors": agent.get("export_errors", 0),
           "metrics_dropped": own["lines_dropped"] + own["keys_overflow"] + own["custom_dropped"],
           "statsd_errors": own["send_errors"]}
    before = _State.health
    _State.health = now
    for key, value in now.items():
        out.append(line(metric_name("agent." + key, ()), max(0, value - before.get(key, 0)), "c"))


# ------------------------------------------------------------------------------------- lifecycle

def enable(target: Tuple[str, int], service: str, prefix: str = "autoinstr", tags: str = "none",
           pipeline: Any = None) -> None:
    """Turn the metrics on in this process: the hooks record, the pipeline's flush sends."""
    global enabled, _pipeline
    import gc

    Naming.prefix = dotted(prefix)
    Naming.service = service
    Naming.dogstatsd = tags == "dogstatsd"
    _State.target = target
    _pipeline = pipeline
    if pipeline is not None:
        pipeline.metrics_flush = flush
    if _gc_callback not in gc.callbacks:
        gc.callbacks.append(_gc_callback)
    global _fork_handler
    if not _fork_handler:
        _fork_handler = True
        os.register_at_fork(after_in_child=_after_fork_in_child)
    from autoinstr import metrics

    metrics._sink = custom
    enabled = True


def disable() -> None:
    """Turn the metrics off (tests)."""
    global enabled
    import gc

    enabled = False
    from autoinstr import metrics

    metrics._sink = None
    if _pipeline is not None:
        _pipeline.metrics_flush = None
    if _gc_callback in gc.callbacks:
        gc.callbacks.remove(_gc_callback)
    Naming.prefix, Naming.service, Naming.dogstatsd = "autoinstr", "python", False
    _State.target = None
    reset()


def reset() -> None:
    """Empty tables and counters (a forked child; tests)."""
    global _server, _db, _client, _retired, _custom, _custom_lock, _custom_dropped, _overflow, _kicked
    _server, _db, _client = {}, {}, {}
    _retired = ({}, {}, {})
    _custom, _custom_lock, _custom_dropped = {}, allocate_lock(), 0
    _overflow = count()
    _kicked = False
    _names.clear()
    sock, _State.sock = _State.sock, None
    if sock is not None:
        try:
            sock.close()
        except OSError:
            pass
    _State.datagrams = _State.send_errors = _State.lines_dropped = 0
    _State.resolve_after = 0.0
    _State.next_runtime = 0.0
    _State.runtime = None
    _State.health = {}
    _State.gc = [0, 0]


def _after_fork_in_child() -> None:
    if enabled:
        reset()
