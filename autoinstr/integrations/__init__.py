"""The integration registry: which library modules trigger which patch module, applied lazily.

Nothing here imports an instrumented library. A meta-path finder watches for the trigger modules; when
one finishes importing, its integration's patch module is imported and `patch(module)` runs. A trigger
already imported when the agent loads is patched at once. Each (integration, module) pair is patched at
most once; an integration whose patch raises is disabled with one warning and the app goes on.

An integration module is small: it declares nothing but `patch(module)` (and optionally `unpatch`);
shared mechanics (WSGI, DB-API, HTTP headers) live in the _-prefixed modules beside it.
"""

from __future__ import annotations

import sys
from _thread import RLock, get_ident  # not `threading`: it costs milliseconds at start-up
from contextvars import ContextVar

from autoinstr import _log

TYPE_CHECKING = False
if TYPE_CHECKING:
    from types import ModuleType
    from typing import Any, Callable, Dict, Iterable, List, Optional, Set, Tuple

# name -> (modules whose import triggers it, patch module, distribution whose version --info shows)
INTEGRATIONS: Dict[str, Tuple[Tuple[str, ...], str, Optional[str]]] = {
    "futures": (("concurrent.futures.thread",), "autoinstr.integrations.futures", None),
    "multiprocessing": (("multiprocessing.process",), "autoinstr.integrations.multiprocessing", None),
    # WSGI servers: the app they serve gets a server span per request (autoinstr.integrations._wsgi)
    "gunicorn": (("gunicorn.app.base",), "autoinstr.integrations.gunicorn", "gunicorn"),
    "waitress": (("waitress.server",), "autoinstr.integrations.waitress", "waitress"),
    "wsgiref": (("wsgiref.handlers",), "autoinstr.integrations.wsgiref", None),
    "werkzeug": (("werkzeug.serving",), "autoinstr.integrations.werkzeug", "werkzeug"),
    "uwsgi": (("uwsgi",), "autoinstr.integrations.uwsgi", "uwsgi"),  # embedded: the bootstrap calls its setup()
    # WSGI frameworks: route names for the server span, view spans
    "flask": (("flask.app",), "autoinstr.integrations.flask", "flask"),
    "bottle": (("bottle",), "autoinstr.integrations.bottle", "bottle"),
    "django": (("django.core.handlers.wsgi", "django.core.handlers.base", "django.core.handlers.exception",
                "django.template.base"), "autoinstr.integrations.django", "django"),
    "falcon": (("falcon.app",), "autoinstr.integrations.falcon", "falcon"),
    "pyramid": (("pyramid.router",), "autoinstr.integrations.pyramid", "pyramid"),
    # HTTP clients: a client span per logical request, trace headers injected (autoinstr.integrations._http)
    "requests": (("requests.sessions",), "autoinstr.integrations.requests", "requests"),
    "urllib3": (("urllib3.connectionpool", "urllib3.poolmanager"), "autoinstr.integrations.urllib3", "urllib3"),
    "httpclient": (("http.client", "urllib.request"), "autoinstr.integrations.httpclient", None),
    "httpx": (("httpx",), "autoinstr.integrations.httpx", "httpx"),
    "aiohttp": (("aiohttp.client",), "autoinstr.integrations.aiohttp", "aiohttp"),
    # DB-API drivers: a client span per query (autoinstr.integrations._dbapi)
    "sqlite3": (("sqlite3",), "autoinstr.integrations.sqlite3", None),
    "psycopg2": (("psycopg2",), "autoinstr.integrations.psycopg2", "psycopg2|psycopg2-binary"),
    "psycopg": (("psycopg",), "autoinstr.integrations.psycopg", "psycopg"),
    "pymysql": (("pymysql",), "autoinstr.integrations.pymysql", "pymysql"),
    "mysqldb": (("MySQLdb",), "autoinstr.integrations.mysqldb", "mysqlclient"),
}

# --------------------------------------------------------------------------- suppression

_suppressed: ContextVar[bool] = ContextVar("autoinstr.suppressed", default=False)


def suppress_instrumentation() -> None:
    """From now on, in this thread's context, integrations record nothing (the agent's own I/O)."""
    _suppressed.set(True)


def is_suppressed() -> bool:
    return _suppressed.get()


# ------------------------------------------------------------------------ post-import hooks

class _HookLoader:
    """Wraps a module's real loader for one import, to run the hooks once the module has executed."""

    def __init__(self, loader: Any, finder: _PostImportFinder) -> None:
        self._loader = loader
        self._finder = finder

    def __getattr__(self, name: str) -> Any:
        return getattr(self._loader, name)

    def create_module(self, spec: Any) -> Any:
        create = getattr(self._loader, "create_module", None)
        return create(spec) if create is not None else None

    def exec_module(self, module: ModuleType) -> None:
        # the module only ever sees its real loader
        module.__loader__ = self._loader
        spec = getattr(module, "__spec__", None)
        if spec is not None:
            spec.loader = self._loader
        self._loader.exec_module(module)
        self._finder.fire(module.__name__, module)


class _PostImportFinder:
    def __init__(self) -> None:
        self.hooks: Dict[str, List[Callable[[ModuleType], None]]] = {}
        self._busy: Set[Tuple[int, str]] = set()

    def find_spec(self, fullname: str, path: Any = None, target: Any = None) -> Any:
        if fullname not in self.hooks:
            return None
        key = (get_ident(), fullname)
        if key in self._busy:
            return None
        self._busy.add(key)
        try:
            spec = None
            for finder in list(sys.meta_path):
                if finder is self:
                    continue
                find = getattr(finder, "find_spec", None)
                if find is None:
                    continue
                spec = find(fullname, path, target)
                if spec is not None:
                    break
        finally:
            self._busy.discard(key)
        if spec is None or spec.loader is None or not hasattr(spec.loader, "exec_module"):
            return spec
        spec.loader = _HookLoader(spec.loader, self)
        return spec

    def invalidate_caches(self) -> None:
        pass

    def add(self, name: str, hook: Callable[[ModuleType], None]) -> None:
        self.hooks.setdefault(name, []).append(hook)
        module = sys.modules.get(name)
        if module is not None:
            self._call(hook, module)

    def fire(self, name: str, module: ModuleType) -> None:
        for hook in list(self.hooks.get(name, ())):
            self._call(hook, module)

    @staticmethod
    def _call(hook: Callable[[ModuleType], None], module: ModuleType) -> None:
        try:
            hook(module)
        except Exception as exc:  # a hook must never break the app's import
            _log.warn_once("hook-%s" % id(hook), "post-import hook for %s failed: %s: %s"
                           % (getattr(module, "__name__", "?"), type(exc).__name__, exc))


_finder: Optional[_PostImportFinder] = None


def when_imported(name: str, hook: Callable[[ModuleType], None]) -> None:
    """Run hook(module) when module `name` has been imported (at once if it already is)."""
    global _finder
    if _finder is None:
        _finder = _PostImportFinder()
        sys.meta_path.insert(0, _finder)  # type: ignore[arg-type]
    _finder.add(name, hook)


# ---------------------------------------------------------------------------------- registry

_lock = RLock()
_patched: Set[Tuple[str, str]] = set()
_failed: Dict[str, str] = {}
_disabled: Set[str] = set()
_installed = False


def register(name: str, triggers: Iterable[str], patch_module: str, distribution: Optional[str] = None) -> None:
    """Add an integration (used by tests and by third parties); effective at once if the agent is loaded."""
    INTEGRATIONS[name] = (tuple(triggers), patch_module, distribution)
    if _installed and name not in _disabled:
        _hook_integration(name)


def install(disabled: Iterable[str] = ()) -> None:
    """Watch every enabled integration's triggers. Called once by the bootstrap."""
    global _installed
    with _lock:
        if _installed:
            return
        _installed = True
        _disabled.update(disabled)
        for name in list(INTEGRATIONS):
            if name not in _disabled:
                _hook_integration(name)


def _hook_integration(name: str) -> None:
    triggers = INTEGRATIONS[name][0]
    for module_name in triggers:
        when_imported(module_name, lambda module, _name=name: apply(_name, module))


def apply(name: str, module: ModuleType) -> bool:
    """Patch `module` with integration `name` unless done already, disabled, or failed before."""
    key = (name, module.__name__)
    with _lock:
        if key in _patched or name in _disabled or name in _failed:
            return False
        _patched.add(key)  # before patching: a re-entrant import cannot patch twice
        try:
            import importlib

            patcher = importlib.import_module(INTEGRATIONS[name][1])
            patcher.patch(module)
        except Exception as exc:
            _failed[name] = "%s: %s" % (type(exc).__name__, exc)
            _log.warn("integration %s could not patch %s (%s); it is disabled and the app goes on without it"
                      % (name, module.__name__, _failed[name]))
            _unpatch_quietly(name, module)
            return False
        _log.debug("integration %s patched %s" % (name, module.__name__))
        return True


def disable(name: str, reason: str) -> None:
    """Turn an integration off at run time (its wrapper raised): one warning, then wrappers pass through."""
    with _lock:
        if name in _failed:
            return
        _failed[name] = reason
    _log.warn("integration %s failed at run time (%s); it is disabled and the app goes on without it" % (name, reason))


def is_enabled(name: str) -> bool:
    return name not in _failed and name not in _disabled


def _unpatch_quietly(name: str, module: ModuleType) -> None:
    try:
        patcher = sys.modules.get(INTEGRATIONS[name][1])
        if patcher is not None and hasattr(patcher, "unpatch"):
            patcher.unpatch(module)
    except Exception:
        pass


def status() -> List[Dict[str, Any]]:
    """One row per integration for `autoinstr-run --info`."""
    rows = []
    for name, (triggers, _, dist) in sorted(INTEGRATIONS.items()):
        if name in _disabled:
            state = "disabled (AUTOINSTR_DISABLED_INTEGRATIONS)"
        elif name in _failed:
            state = "failed: " + _failed[name]
        else:
            state = "enabled"
        rows.append({"name": name, "triggers": list(triggers), "version": _version_of(dist, triggers),
                     "state": state, "patched": sorted(m for n, m in _patched if n == name)})
    return rows


def _version_of(distribution: Optional[str], triggers: Tuple[str, ...]) -> str:
    if distribution is None:
        return "stdlib"
    try:
        from importlib.metadata import PackageNotFoundError, version

        for name in distribution.split("|"):  # alternatives: "psycopg2|psycopg2-binary"
            try:
                return version(name)
            except PackageNotFoundError:
                pass
        return "not installed"
    except Exception:
        return "unknown"
