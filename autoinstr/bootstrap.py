"""What sitecustomize (autoinstr-run) and the .pth hook (AUTOINSTR_ENABLED=true) call at start-up.

It reads the configuration once, turns the API on, registers the lazy integration hooks, and installs the
fork and exit handlers. It imports no instrumented library and starts no thread: the flush thread starts
with the first finished span. Loading twice does nothing the second time. Nothing it does may raise into
the interpreter's start-up.
"""

from __future__ import annotations

import atexit
import os
import sys
from _thread import allocate_lock

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any, Dict, List, Optional

    from autoinstr.export.pipeline import Pipeline

_loaded = False
_pipeline: Optional[Pipeline] = None


def load() -> bool:
    """Load the agent into this process; returns True if it is (now or already) loaded."""
    global _loaded
    if _loaded:
        return True
    _loaded = True
    try:
        _load()
        return True
    except Exception as exc:  # the app must start even if the agent cannot
        from autoinstr import _log

        _log.warn("the agent could not load (%s: %s); the app runs without it" % (type(exc).__name__, exc))
        return False


def _load() -> None:
    import autoinstr
    from autoinstr import _log, config, integrations
    from autoinstr.trace.span import Limits, Sampling, Sink, Span, _Ids, unsampled_count

    cfg = config.get()
    _log.set_debug(cfg.debug)
    Sampling.configure(cfg.sample_rate, cfg.rate_limit)
    Limits.max_attributes = cfg.max_attributes
    if cfg.statsd:  # metrics: recorded on the request path, sent by the flush thread
        from autoinstr.export import statsd

        statsd.enable(cfg.statsd, cfg.service_name, cfg.statsd_prefix, cfg.statsd_tags, _get_pipeline())
    else:  # the pipeline (and the export modules) at the first finished span: not a cost of every start-up
        Sink.submit = _first_submit  # type: ignore[assignment]
        Sink.submit_one = _first_submit_one  # type: ignore[assignment]

    def before_fork() -> None:
        _quiet_fork_warning_for_our_threads()
        if _pipeline is not None:
            modules_before = set(sys.modules)
            _pipeline.before_fork()
            _late_fork_handlers(modules_before)

    def after_fork_in_parent() -> None:
        if _pipeline is not None:
            _pipeline.after_fork_in_parent()

    def after_fork_in_child() -> None:
        global _pipeline_lock
        _pipeline_lock = allocate_lock()  # (held by another thread at the fork: never released in the child)
        _Ids.reseed()
        unsampled_count(reset=True)
        if _pipeline is not None:
            _pipeline.after_fork_in_child()

    os.register_at_fork(before=before_fork, after_in_parent=after_fork_in_parent, after_in_child=after_fork_in_child)
    atexit.register(_at_exit)
    if cfg.flush_on_sigterm:
        _flush_on_sigterm()
    integrations.install(cfg.disabled_integrations)
    if not getattr(sys, "orig_argv", None) and integrations.is_enabled("uwsgi"):  # embedded Python (uWSGI)
        from autoinstr.integrations import uwsgi as uwsgi_integration

        uwsgi_integration.setup()
    autoinstr.span = Span
    autoinstr._enabled = True
    _log.debug("agent loaded in pid %d: service=%s exporters=%s" % (os.getpid(), cfg.service_name,
                                                                       ",".join(cfg.exporters)))


_pipeline_lock = allocate_lock()


def _get_pipeline() -> Pipeline:
    """The export pipeline, made at the first finished span (or at load, for statsd): importing the export
    modules costs a few million instructions, which a process that never makes a span need not pay."""
    global _pipeline
    if _pipeline is None:
        with _pipeline_lock:
            if _pipeline is None:
                from autoinstr import config
                from autoinstr.export import pipeline as pipeline_module
                from autoinstr.export import records
                from autoinstr.export.base import create_exporters
                from autoinstr.trace.span import Sink

                cfg = config.get()
                records.SqlPolicy.obfuscate = cfg.sql_obfuscation
                # exporters are built on the flush thread's first use: sqlite3, sockets and the like stay unloaded
                made = pipeline_module.Pipeline(lambda: create_exporters(cfg), cfg.service_name, cfg.flush_interval,
                                                cfg.max_queue_spans, cfg.max_batch_spans, cfg.shutdown_timeout,
                                                cfg.max_attributes, cfg.max_attribute_length)
                Sink.submit = made.submit  # type: ignore[assignment]
                Sink.submit_one = made.submit_one  # type: ignore[assignment]
                _pipeline = made
    return _pipeline


def _first_submit(spans: List[Any]) -> None:
    pipeline = _pipeline_or_none()
    if pipeline is not None:
        pipeline.submit(spans)


def _first_submit_one(span: Any) -> None:
    pipeline = _pipeline_or_none()
    if pipeline is not None:
        pipeline.submit_one(span)


def _pipeline_or_none() -> Optional[Pipeline]:
    """The pipeline for a first finished span; if it cannot be made, spans are dropped from now on, with one
    warning (the app must not see the exception)."""
    try:
        return _get_pipeline()
    except Exception as exc:
        from autoinstr import _log
        from autoinstr.trace.span import Sink, _discard

        Sink.submit = Sink.submit_one = _discard  # type: ignore[assignment]
        _log.warn("the export pipeline could not be set up (%s: %s); spans are dropped and the app runs on"
                  % (type(exc).__name__, exc))
        return None


# Modules whose at-fork handlers take a lock before the fork and release it after, in both processes.
# Imported while our before-fork handler waited (the flush thread finishing an import), their handlers
# are registered too late for this fork's "before" round but not for its "after" round, which would
# release a lock never taken ("cannot release un-acquired lock"). Their "before" is run here instead.
_LOCKING_AT_FORK = (("logging", ("_prepareFork", "_acquireLock")),
                    ("concurrent.futures.thread", ()))


def _late_fork_handlers(modules_before: set) -> None:
    for name, before_names in _LOCKING_AT_FORK:
        module = sys.modules.get(name)
        if module is None or name in modules_before:
            continue
        try:
            if name == "concurrent.futures.thread":
                module._global_shutdown_lock.acquire()
                continue
            for attr in before_names:
                handler = getattr(module, attr, None)
                if handler is not None:
                    handler()
                    break
        except Exception:
            pass


_FORK_WARNING = r"This process \(pid=\d+\) is multi-threaded, use of fork\(\) may lead to deadlocks"
_fork_filter: Any = None


def _quiet_fork_warning_for_our_threads() -> None:
    """Python 3.12+ warns when a process with threads forks. If the only other threads are the agent's
    own, the warning would be the agent's doing, not the app's (and the agent makes its fork safe: see
    Pipeline.before_fork), so it is silenced; an app with threads of its own still gets it. Decided
    afresh before each fork (3.13 warns after the at-fork hooks have run, so the filter stays between)."""
    global _fork_filter
    threading = sys.modules.get("threading")
    if threading is None or sys.version_info < (3, 12):
        return
    try:
        import warnings

        others = [t for t in threading.enumerate() if t is not threading.current_thread()]
        ours_only = bool(others) and all(t.name.startswith("autoinstr-") for t in others)
        if ours_only and _fork_filter is None:
            warnings.filterwarnings("ignore", message=_FORK_WARNING, category=DeprecationWarning)
            _fork_filter = warnings.filters[0]
        elif not ours_only and _fork_filter is not None:
            entry, _fork_filter = _fork_filter, None
            warnings.filters.remove(entry)
            warnings._filters_mutated()  # type: ignore[attr-defined]
    except Exception:
        pass


def _flush_on_sigterm() -> None:
    """SIGTERM's default action kills the process without atexit, losing what is queued. While the app
    has no SIGTERM handler of its own, ours flushes (with the usual deadline), then restores the default
    action and sends the signal again: the process still dies of SIGTERM, with the same exit status."""
    import _signal  # not `signal`: it imports enum, milliseconds of start-up

    try:
        if _signal.getsignal(_signal.SIGTERM) != _signal.SIG_DFL:
            return

        def on_sigterm(signum: int, frame: Any) -> None:
            try:
                _signal.signal(_signal.SIGTERM, _signal.SIG_DFL)
                _at_exit()
            finally:
                os.kill(os.getpid(), _signal.SIGTERM)

        _signal.signal(_signal.SIGTERM, on_sigterm)
    except (ValueError, OSError):  # not the main thread, or no signals here
        pass


def exit_flush() -> None:
    """The exit flush (hard deadline), for exits that skip atexit (multiprocessing children)."""
    _at_exit()


def _at_exit() -> None:
    if _pipeline is None:
        return
    try:
        _pipeline.shutdown()
        from autoinstr import _log, config

        if config.get().debug:
            _log.debug("exit stats: %s" % stats())
    except Exception:
        pass


def stats() -> Dict[str, Any]:
    from autoinstr.trace.span import unsampled_count

    pipeline = _pipeline
    if pipeline is None and getattr(sys.modules.get("autoinstr"), "_enabled", False):
        pipeline = _get_pipeline()  # (no span finished yet: the figures are zeros, the agent is on)
    if pipeline is None:
        return {"enabled": False, "spans_created": 0, "spans_sampled": 0, "spans_unsampled": 0,
                "spans_exported": 0, "spans_dropped": {}, "export_errors": 0}
    out: Dict[str, Any] = {"enabled": True}
    out.update(pipeline.stats())
    out["spans_unsampled"] = unsampled_count()
    out["spans_created"] = out["spans_sampled"] + out["spans_unsampled"]
    statsd = sys.modules.get("autoinstr.export.statsd")
    if statsd is not None and statsd.enabled:
        out["statsd"] = statsd.stats()
    wsgi = sys.modules.get("autoinstr.integrations._wsgi")
    if wsgi is not None:  # span names beyond AUTOINSTR_MAX_SPAN_NAMES, named `other`
        out["span_names_overflow"] = wsgi.NamePool.overflow
    return out


def flush(timeout: float = 5.0) -> bool:
    return _pipeline.flush(timeout) if _pipeline is not None else True
