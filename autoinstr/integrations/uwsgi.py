"""uWSGI: the app it serves gets a server span per request, from every worker, exported exactly once, with
or without --master and --lazy-apps; and the agent says at start-up when uWSGI runs without Python threads.

uWSGI embeds Python: there is no `python` process, the sitecustomize hook runs when uWSGI initializes the
interpreter (PYTHONPATH is honoured), and the `uwsgi` module only appears afterwards. The bootstrap calls
`setup()` in a uWSGI process; the rest happens when the `uwsgi` module is first seen (`_on_uwsgi`).

Finding the app. uWSGI reads the WSGI callable from the app module once it has run and keeps it in C; the
only moment to wrap it is between the end of the module's execution and that read:
- `--module`/`--wsgi`/`-w mod[:callable]`: uWSGI imports the module through the import system, so the
  registry's post-import hook replaces `mod.<callable>` by the traced app (`wrap_app`, the shared WSGI
  mechanism) before uWSGI reads it. A `callable()` factory returns a traced app; the values of an
  `applications` mount dict (uwsgi.applications or the module's) are wrapped in place.
- `--wsgi-file`/`--file`/`--mount x.py`/`--eval`: uWSGI compiles the file and runs it through
  PyImport_ExecCodeModule, which no import hook sees. The only Python it runs first is importlib's
  `_fix_up_module`; wrapped, it recognizes uWSGI's module names (`uwsgi_file_*`, `uwsgi_eval_config`) and
  follows that module's own frame with a trace function to its `return` (other frames are not traced),
  where the callable is replaced; tracing then stops. Cost: one cheap Python call per function call while
  the app module runs, once per process, at start-up. Under a debugger or coverage (a trace function is
  already set) it stands aside. A post-import hook is not possible here, a post-fork wrap would miss
  --lazy-apps (the app loads after the fork) and cannot rebind what uWSGI holds.
- Flask and Bottle apps are also traced through their own __call__: the shared mechanism makes exactly
  one server span whichever wrapper runs first.

Fork and exit. uWSGI forks its workers from C without PyOS_AfterFork_Child (unless --py-call-osafterfork
or --py-call-uwsgi-fork-hooks), so os.register_at_fork handlers do not run: `uwsgi.post_fork_hook` resets
the pipeline in each worker at once (the pipeline's pid check remains the fallback), and `uwsgi.atexit`
runs the exit flush when a worker ends or reloads (SIGINT/SIGQUIT shutdown, --die-on-term SIGTERM,
SIGHUP reload), before uWSGI tears the interpreter down (--skip-atexit-teardown skips Python's own
atexit). uWSGI keeps one callable per hook: one the app sets is kept, chained with ours (at the end of the
app's loading, and again after the fork). Not covered: a worker killed mid-request (uWSGI then skips its
atexit hooks) and async/gevent modes (uWSGI runs no atexit hook there) lose what they had not exported.

Without threads (older uWSGI releases, 2.0.21 for one, unless --enable-threads or --threads N; recent
ones always enable them) uWSGI holds the GIL while a worker waits for requests, so the flush thread
cannot run between requests: one warning line at start-up names the option (from the master, or from
worker 1 with --lazy-apps), and `uwsgi.after_req_hook` (run once the response is sent) flushes when
AUTOINSTR_FLUSH_INTERVAL has passed since the last flush, waiting at most REQUEST_FLUSH_TIMEOUT; the exit
flush exports the rest. Spans of a burst followed by silence wait for the next request or the exit.
"""

from __future__ import annotations

import os
import sys
import time

from autoinstr import _log

TYPE_CHECKING = False
if TYPE_CHECKING:  # this module loads at start-up in uWSGI processes (and every one on Python 3.9)
    from types import ModuleType
    from typing import Any, Callable, Dict, List, Optional, Tuple

REQUEST_FLUSH_TIMEOUT = 0.5  # threads off: the longest an after-request flush holds the worker
FILE_MODULE_PREFIXES = ("uwsgi_file_", "uwsgi_eval_config")

_set_up = False
_seen = False  # _on_uwsgi ran in this process (or in the master this worker was forked from)
_threads: Optional[bool] = None
_next_flush = 0.0
_original_fix_up: Optional[Callable[..., Any]] = None
_watcher: Optional[_UwsgiWatcher] = None


def is_uwsgi_process() -> bool:
    """uWSGI embeds Python: its binary is the process's executable (sys.executable may name a venv's
    python with --home). A `python` command line (sys.orig_argv set) is never one."""
    if getattr(sys, "orig_argv", None):
        return "uwsgi" in sys.modules
    try:
        exe = os.readlink("/proc/self/exe")
    except OSError:
        exe = sys.executable or ""
    return os.path.basename(exe).startswith("uwsgi") or "uwsgi" in sys.modules


# ------------------------------------------------------------------------------------ start-up

def setup() -> None:
    """At agent start, in what may be a uWSGI process (the `uwsgi` module does not exist yet): watch for
    it and for the app's loading. Never raises."""
    global _set_up, _original_fix_up, _watcher
    if _set_up or not is_uwsgi_process():
        return
    _set_up = True
    try:
        external = sys.modules.get("_frozen_importlib_external")
        if external is not None and callable(getattr(external, "_fix_up_module", None)):
            _original_fix_up = external._fix_up_module
            external._fix_up_module = _fix_up_module  # type: ignore[attr-defined]
        module = sys.modules.get("uwsgi")
        if is_embedded_uwsgi(module):
            _on_uwsgi(module)
        else:
            _watcher = _UwsgiWatcher()
            sys.meta_path.insert(0, _watcher)  # type: ignore[arg-type]
    except Exception as exc:
        _disable("setup failed: %s: %s" % (type(exc).__name__, exc))


def patch(module: ModuleType) -> None:  # uwsgi, should it be imported through the import system
    if is_embedded_uwsgi(module):  # not an app's own uwsgi.py
        _on_uwsgi(module)


def is_embedded_uwsgi(module: Any) -> bool:
    """The module uWSGI makes (no file; options and worker id) rather than a file named uwsgi.py."""
    return (getattr(module, "__file__", None) is None and isinstance(getattr(module, "opt", None), dict)
            and callable(getattr(module, "worker_id", None)))


def unpatch(module: ModuleType) -> None:
    global _original_fix_up
    external = sys.modules.get("_frozen_importlib_external")
    if _original_fix_up is not None and external is not None:
        external._fix_up_module = _original_fix_up  # type: ignore[attr-defined]
        _original_fix_up = None
    _remove_watcher()


class _UwsgiWatcher:
    """A meta-path finder that never finds anything: the first import once the `uwsgi` module exists
    (for --module, the app module itself) tells us uWSGI is ready. It then stays inert: removing it
    here would make importlib, which iterates sys.meta_path itself, skip the next finder (the registry's
    post-import finder, which wraps the --module app); _after_fork removes it."""

    active = True

    def find_spec(self, fullname: str, path: Any = None, target: Any = None) -> None:
        if self.active:
            module = sys.modules.get("uwsgi")
            if module is not None and is_embedded_uwsgi(module):
                self.active = False
                _on_uwsgi(module)
        return None

    def invalidate_caches(self) -> None:
        pass


def _remove_watcher() -> None:
    global _watcher
    watcher, _watcher = _watcher, None
    if watcher is not None:
        try:
            sys.meta_path.remove(watcher)  # type: ignore[arg-type]
        except ValueError:
            pass


def _disable(reason: str) -> None:
    from autoinstr import integrations

    integrations.disable("uwsgi", reason)


def _enabled() -> bool:
    from autoinstr import integrations

    return integrations.is_enabled("uwsgi")


def _on_uwsgi(uwsgi: Any) -> None:
    """The `uwsgi` module exists (in the master, or in a worker with --lazy-apps): read its options,
    check threads, install the exit/fork/request hooks, watch the --module app. Once per process tree."""
    global _seen, _threads
    if _seen or not _enabled():
        return
    _seen = True
    try:
        if _worker_id(uwsgi) >= 1:  # --lazy-apps: first seen in a worker, forked after the agent loaded
            from autoinstr.trace.span import _Ids

            _Ids.reseed()
        _threads = threads_enabled(uwsgi)
        if not _threads and _worker_id(uwsgi) <= 1:  # the master, or worker 1 (--lazy-apps): said once
            _log.warn("uWSGI runs without --enable-threads: Python threads cannot run while a worker waits "
                      "for requests, so the agent's export thread stalls; spans are exported after requests "
                      "(at most every AUTOINSTR_FLUSH_INTERVAL s) and at worker exit instead. Start uWSGI "
                      "with --enable-threads (or --threads N) for timely export.")
        install_hooks(uwsgi)
        _watch_modules(uwsgi)
        _log.debug("uWSGI %s in pid %d (worker %d): threads %s" % (_text(getattr(uwsgi, "version", b"")),
                   os.getpid(), _worker_id(uwsgi), "on" if _threads else "off"))
    except Exception as exc:
        _disable("%s: %s" % (type(exc).__name__, exc))


def threads_enabled(uwsgi: Any) -> bool:
    """Whether Python threads run in this uWSGI: its own flag (uwsgi.has_threads), else the options."""
    flag = getattr(uwsgi, "has_threads", None)
    if flag is not None:
        return bool(flag)
    opt = _opts(uwsgi)
    try:
        many = int(_last(opt.get("threads")) or 0) > 1
    except (TypeError, ValueError):
        many = False
    return bool(opt.get("enable-threads")) or many


def _worker_id(uwsgi: Any) -> int:
    try:
        return int(uwsgi.worker_id())
    except Exception:
        return 0


# ------------------------------------------------------------------------------------- options

def _opts(uwsgi: Any) -> Dict[str, Any]:
    opt = getattr(uwsgi, "opt", None)
    return opt if isinstance(opt, dict) else {}


def _text(value: Any) -> str:
    if isinstance(value, bytes):
        return value.decode("utf-8", "replace")
    return value if isinstance(value, str) else ""


def _last(value: Any) -> Any:
    """uwsgi.opt holds a list for an option given several times; the last one wins for single values."""
    return value[-1] if isinstance(value, list) and value else value


def _opt_str(uwsgi: Any, name: str) -> str:
    return _text(_last(_opts(uwsgi).get(name)))


def _callable_name(uwsgi: Any) -> str:
    return _opt_str(uwsgi, "callable") or "application"


def app_modules(uwsgi: Any) -> List[Tuple[str, str]]:
    """(module, callable) for the --module/--wsgi options (callable may be `factory()`)."""
    out = []
    default = _callable_name(uwsgi)
    opt = _opts(uwsgi)
    for key in ("module", "wsgi"):
        values = opt.get(key)
        for value in values if isinstance(values, list) else [values]:
            text = _text(value).strip()
            if not text or text.endswith((".py", ".wsgi", ".ini")) or "/" in text:
                continue
            module, _, name = text.partition(":")
            out.append((module, name or default))
    return out


# -------------------------------------------------------------------------------- wrapping the app

def _watch_modules(uwsgi: Any) -> None:
    from autoinstr.integrations import when_imported

    for module_name, name in app_modules(uwsgi):
        when_imported(module_name, lambda module, _name=name: _wrap_module(module, _name))


def _wrap_module(module: ModuleType, name: str) -> None:
    """The --module app module has run; uWSGI reads uwsgi.applications, then module.applications, then
    module.<callable> (calling it for `factory()`)."""
    if not _enabled():
        return
    uwsgi = sys.modules.get("uwsgi")
    _app_loaded(uwsgi)
    for mounts in (getattr(uwsgi, "applications", None), getattr(module, "applications", None)):
        if isinstance(mounts, dict):
            _wrap_mounts(mounts)
            return
    if name.endswith("()"):
        factory = getattr(module, name[:-2], None)
        if callable(factory) and not getattr(factory, "__autoinstr_factory__", False):
            setattr(module, name[:-2], _traced_factory(factory))
        return
    _wrap_attribute(module.__dict__, name)


def _app_loaded(uwsgi: Any) -> None:
    """The app module has run: chain the hooks it may have set over ours (uWSGI reads after_req_hook
    right after loading the app)."""
    if is_embedded_uwsgi(uwsgi):
        install_hooks(uwsgi)


def _wrap_attribute(namespace: Dict[str, Any], name: str) -> None:
    from autoinstr.integrations._wsgi import wrap_app

    app = namespace.get(name)
    if isinstance(app, dict):  # a mount table: {"/path": app}
        _wrap_mounts(app)
    elif callable(app):
        namespace[name] = wrap_app(app)
        _log.debug("uWSGI app %s traced" % name)


def _wrap_mounts(mounts: Dict[Any, Any]) -> None:
    from autoinstr.integrations._wsgi import wrap_app

    for key, app in list(mounts.items()):
        if callable(app):
            mounts[key] = wrap_app(app)


def _traced_factory(factory: Callable[..., Any]) -> Callable[..., Any]:
    from autoinstr.integrations._wsgi import wrap_app

    def traced_factory(*args: Any, **kwargs: Any) -> Any:
        return wrap_app(factory(*args, **kwargs))

    traced_factory.__autoinstr_factory__ = True  # type: ignore[attr-defined]
    traced_factory.__wrapped__ = factory  # type: ignore[attr-defined]
    return traced_factory


def _fix_up_module(*args: Any, **kwargs: Any) -> Any:
    """importlib's _fix_up_module(ns, name, pathname, cpathname=None), which PyImport_ExecCodeModule calls
    just before it runs a module's code: uWSGI's --wsgi-file loader, among others."""
    original = _original_fix_up
    result = original(*args, **kwargs) if original is not None else None
    try:
        namespace, name = args[0], args[1]
        uwsgi = sys.modules.get("uwsgi")
        if is_embedded_uwsgi(uwsgi) and isinstance(name, str) and isinstance(namespace, dict):
            _on_uwsgi(uwsgi)
            if name.startswith(FILE_MODULE_PREFIXES) and _enabled():
                _follow_module(namespace, _callable_name(uwsgi))
    except Exception as exc:
        _log.debug("uWSGI app module not followed: %s: %s" % (type(exc).__name__, exc))
    return result


def _follow_module(namespace: Dict[str, Any], name: str) -> None:
    """Trace the next frame (the module about to run in `namespace`) and only it; at its return, wrap
    `namespace[name]` and stop tracing. Other frames get no local tracing (the global function returns
    None for them)."""
    if sys.gettrace() is not None:  # a debugger or coverage: not ours to replace
        _log.debug("uWSGI app module not followed: a trace function is set")
        return

    def local(frame: Any, event: str, arg: Any) -> Any:
        if event == "return":
            if sys.gettrace() is skip:  # unless the module set a tracer of its own (a debugger)
                sys.settrace(None)
            try:
                _app_loaded(sys.modules.get("uwsgi"))
                _wrap_attribute(namespace, name)
            except Exception as exc:
                _log.debug("uWSGI app not wrapped: %s: %s" % (type(exc).__name__, exc))
        return local

    def first_call(frame: Any, event: str, arg: Any) -> Any:
        if frame.f_globals is namespace and frame.f_code.co_name == "<module>":
            sys.settrace(skip)
            frame.f_trace_lines = False
            return local
        sys.settrace(None)  # not the module we expected first: give up rather than trace on
        return None

    def skip(frame: Any, event: str, arg: Any) -> None:
        return None

    sys.settrace(first_call)


# ------------------------------------------------------------------------------ fork, exit, requests

class _Chain:
    """uWSGI keeps one callable per hook (uwsgi.atexit...): the app's hook and ours, in order. Ours never
    raises; an exception of the app's propagates as it would without us (ours still runs)."""

    def __init__(self, theirs: Callable[[], Any], ours: Callable[[], None], ours_first: bool) -> None:
        self.theirs = theirs
        self.ours = ours
        self.ours_first = ours_first

    def __call__(self) -> Any:
        if self.ours_first:
            self.ours()
            return self.theirs()
        try:
            return self.theirs()
        finally:
            self.ours()


def install_hooks(uwsgi: Any) -> None:
    """Set (or chain with the app's) uwsgi.post_fork_hook, uwsgi.atexit and, when threads are off,
    uwsgi.after_req_hook. Called again once the app has loaded, to chain hooks the app set meanwhile."""
    hooks: List[Tuple[str, Callable[[], None], bool]] = [("post_fork_hook", _after_fork, True),
                                                          ("atexit", _at_exit, False)]
    if _threads is False:
        hooks.append(("after_req_hook", _after_request, False))
    for name, ours, ours_first in hooks:
        current = getattr(uwsgi, name, None)
        if current is ours or (isinstance(current, _Chain) and current.ours is ours):
            continue
        setattr(uwsgi, name, ours if current is None else _Chain(current, ours, ours_first))


def _after_fork() -> None:
    """In a new worker: new ids (the at-fork hooks did not run: without a reseed, every worker would
    draw the master's next ids), and the pipeline starts afresh now (pid check), not at its first
    full batch."""
    try:
        from autoinstr import bootstrap
        from autoinstr.trace.span import _Ids

        _Ids.reseed()
        bootstrap.flush(0.0)
        if _watcher is not None and not _watcher.active:
            _remove_watcher()  # not inside an import here
        uwsgi = sys.modules.get("uwsgi")
        if is_embedded_uwsgi(uwsgi):  # chain hooks the app set since it loaded (in a postfork hook...)
            install_hooks(uwsgi)
    except Exception:
        pass


def _at_exit() -> None:
    try:
        from autoinstr import bootstrap

        bootstrap.exit_flush()
    except Exception:
        pass


def _after_request() -> None:
    """Threads off: after a request, flush if AUTOINSTR_FLUSH_INTERVAL has passed (bounded wait)."""
    global _next_flush
    try:
        now = time.monotonic()
        if now < _next_flush:
            return
        from autoinstr import bootstrap, config

        _next_flush = now + config.get().flush_interval
        bootstrap.flush(REQUEST_FLUSH_TIMEOUT)
    except Exception:
        pass
