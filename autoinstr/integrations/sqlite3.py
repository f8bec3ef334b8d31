"""sqlite3: connections and cursors are C types, so `sqlite3.connect` is given a traced subclass of the
connection class asked for (`factory=`), whose `cursor()` hands out traced subclasses of the cursor
class asked for. Connections stay real sqlite3.Connection objects: backup(), create_function(),
iterdump(), row factories, adapters and converters work as without the agent."""

from __future__ import annotations

import os
import sqlite3 as _sqlite3
import sys
from types import ModuleType
from typing import Any, Callable, Dict, Tuple

from autoinstr.integrations import _dbapi
from autoinstr.integrations._wrapping import unwrap, wrap

SYSTEM = "sqlite"
_suppressed_get = _dbapi._suppressed_get


def _namespace(database: Any) -> Any:
    """The database file's name (not its whole path): enough to tell databases apart."""
    try:
        path = os.fsdecode(database)
    except TypeError:
        return None
    if path == ":memory:" or not path:
        return ":memory:"
    if path.startswith("file:"):  # uri=True
        path = path[5:].partition("?")[0]
    return os.path.basename(path) or path


def _attributes(connection: Any) -> _dbapi.DbAttributes:
    return connection.__dict__.get(_dbapi.CACHE_ATTRIBUTE) or {"db.system": SYSTEM}


class _TracedCursor:
    __slots__ = ()

    def execute(self, sql: Any, *args: Any) -> Any:
        return _dbapi.run(_attributes(self.connection), SYSTEM, sql, self, super().execute, sql, *args)  # type: ignore[misc]

    def executemany(self, sql: Any, *args: Any) -> Any:
        return _dbapi.run(_attributes(self.connection), SYSTEM, sql, self, super().executemany, sql, *args)  # type: ignore[misc]

    def executescript(self, script: Any, *args: Any) -> Any:
        return _dbapi.run(_attributes(self.connection), SYSTEM, script, None, super().executescript, script, *args)  # type: ignore[misc]


# compiled where the span core is: the same calls without this frame, super() and a bound method (cursor_hook)
_dbapi.compile_cursor_methods(_TracedCursor, SYSTEM, {"execute": True, "executemany": True, "executescript": False})


def _traced_cursor_class(factory: Any) -> Any:
    return _dbapi.traced_factory(factory, _sqlite3.Cursor, _TracedCursor)


class _TracedConnection(_dbapi.TracedTransactions):
    __slots__ = ()

    def _autoinstr_attributes(self) -> _dbapi.DbAttributes:
        return _attributes(self)

    def cursor(self, *args: Any, **kwargs: Any) -> Any:
        if "factory" in kwargs:
            kwargs["factory"] = _traced_cursor_class(kwargs["factory"])
        elif args:
            args = (_traced_cursor_class(args[0]),) + args[1:]
        else:
            args = (_TRACED_CURSOR,)
        return super().cursor(*args, **kwargs)  # type: ignore[misc]

    # Connection.execute & co. are shortcuts for self.cursor().execute(...), which is what they do here: the
    # traced cursor makes the one span. (C's own shortcut calls the cursor's method by name on Python 3.9 and
    # runs the statement directly on later versions: making the span here too counted 3.9's statements twice.)
    def execute(self, sql: Any, *args: Any) -> Any:
        return self.cursor().execute(sql, *args)

    def executemany(self, sql: Any, *args: Any) -> Any:
        return self.cursor().executemany(sql, *args)

    def executescript(self, script: Any, *args: Any) -> Any:
        return self.cursor().executescript(script, *args)


# The connection methods that register Python code sqlite3 may run inside execute(). A connection that used one is
# marked: its statements' spans are made current as usual. Those of the others need not be where the call runs no
# Python code at all (_db_call.c, python_free): nothing could see the current span.
_RUNS_PYTHON = "_autoinstr_runs_python"
_CALLBACK_METHODS = ("create_function", "create_aggregate", "create_window_function", "create_collation",
                     "set_authorizer", "set_progress_handler", "set_trace_callback")
_dbapi.compile_marking(_TracedConnection, _sqlite3.Connection, _CALLBACK_METHODS, _RUNS_PYTHON)

_TRACED_CURSOR = _dbapi.traced_class(_sqlite3.Cursor, _TracedCursor)
_dbapi.compile_cursor_factory(_TracedConnection, _TRACED_CURSOR)  # conn.cursor(), the common call, compiled
_dbapi.compile_connection_shortcuts(_TracedConnection, ("execute", "executemany", "executescript"))
_dbapi.compile_python_free(_sqlite3.Cursor.__dict__["execute"], _sqlite3.Connection, _sqlite3.adapters, _RUNS_PYTHON)


# (database, factory) -> (the traced factory, the connection's span attributes, the connect span's): an app
# connecting per request to the same file pays for its parsing once
_connects: Dict[Any, Tuple[Any, _dbapi.DbAttributes, _dbapi.DbAttributes]] = {}
_MAX_CONNECTS = 256


def _prepare(database: Any, factory: Any) -> Tuple[Any, _dbapi.DbAttributes, _dbapi.DbAttributes]:
    if not (isinstance(factory, type) and issubclass(factory, _sqlite3.Connection)):
        return None, {}, {}  # a factory function: its connections go untraced
    attrs = _dbapi.server_attributes(SYSTEM, _namespace(database))
    prepared = (_dbapi.traced_class(factory, _TracedConnection), attrs, _dbapi.operation_attributes(attrs, "connect"))
    try:
        if len(_connects) < _MAX_CONNECTS:
            _connects[(database, factory)] = prepared
    except TypeError:  # an unhashable database argument: prepared each time
        pass
    return prepared


# Python 3.13 and 3.14 warn (DeprecationWarning) when sqlite3.connect() gets more than one positional argument,
# twice: connect itself, then the connection class's __init__ it calls with them. Each names the innermost Python
# frame as the caller, which under the agent would be this module's (the app's code, a warnings filter, -W error
# see it). So connect's warning is given here, from the app's frame (skip_file_prefixes: autoinstr's frames are
# not the caller), and then: a class whose __init__ is sqlite3's gets the arguments by keyword and its warning
# from here too; a class with an __init__ of its own is called as connect would call it (its own frame warns).
_POSITIONAL_DEPRECATED = (3, 13) <= sys.version_info[:2] < (3, 15)
_PARAMETERS = ("database", "timeout", "detect_types", "isolation_level", "check_same_thread", "factory",
               "cached_statements", "uri")
_DEPRECATION = ("Passing more than 1 positional argument to %s is deprecated. Parameters 'timeout', "
                "'detect_types', 'isolation_level', 'check_same_thread', 'factory', 'cached_statements' and 'uri' "
                "will become keyword-only parameters in Python 3.15.")
_AUTOINSTR_FOLDER = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _factory_of(args: tuple, kwargs: dict) -> Any:
    return args[5] if len(args) > 5 else kwargs.get("factory", _sqlite3.Connection)


def _connect_after_warning(*args: Any, **kwargs: Any) -> Any:
    """What sqlite3.connect does once it has warned: its factory called with every argument."""
    return _factory_of(args, kwargs)(*args, **kwargs)


def _deprecated_positionals(wrapped: Callable[..., Any], args: tuple,
                            kwargs: dict) -> Tuple[Callable[..., Any], tuple, dict]:
    """(what to call, args, kwargs) for a call with positional arguments after the database: see above. Left to
    sqlite3 where the call fails anyway (too many, one given twice) or the factory is a function."""
    names = _PARAMETERS[1:len(args)]
    factory = _factory_of(args, kwargs)
    if len(args) > len(_PARAMETERS) or any(name in kwargs for name in names) or not (
            isinstance(factory, type) and issubclass(factory, _sqlite3.Connection)):
        return wrapped, args, kwargs
    import warnings

    callees = ["sqlite3.connect()"]
    own_init = factory.__init__ is not _sqlite3.Connection.__init__  # type: ignore[misc]
    if not own_init:
        callees.append("_sqlite3.Connection()")
    try:
        for callee in callees:
            warnings.warn(_DEPRECATION % callee, DeprecationWarning,
                          skip_file_prefixes=(_AUTOINSTR_FOLDER,))  # type: ignore[call-arg]
    except Warning:  # a filter makes it an error (-W error): sqlite3 raises the same itself, as without the agent
        return wrapped, args, kwargs
    if own_init:
        return _connect_after_warning, args, kwargs
    return wrapped, args[:1], dict(kwargs, **dict(zip(names, args[1:])))


def _connect(wrapped: Callable[..., Any], instance: Any, args: tuple, kwargs: dict) -> Any:
    """sqlite3.connect, giving the connection class asked for (`factory`, positional or keyword) as its traced
    subclass, in a connect span."""
    if len(args) > 1 and _POSITIONAL_DEPRECATED:
        wrapped, args, kwargs = _deprecated_positionals(wrapped, args, kwargs)
    if _suppressed_get():  # the agent's own store
        return wrapped(*args, **kwargs)
    try:
        database = args[0] if args else kwargs["database"]
        factory = _factory_of(args, kwargs)
        try:
            prepared = _connects.get((database, factory)) or _prepare(database, factory)
        except TypeError:
            prepared = _prepare(database, factory)
        traced, attrs, connect_attrs = prepared
        if traced is None:
            return wrapped(*args, **kwargs)
        if len(args) > 5:
            args = args[:5] + (traced,) + args[6:]
        else:
            kwargs = dict(kwargs, factory=traced)
    except Exception:  # (no database given: the real call says so)
        return wrapped(*args, **kwargs)
    connection = _dbapi.run(connect_attrs, "connect", None, None, wrapped, *args, **kwargs)
    try:
        connection.__dict__[_dbapi.CACHE_ATTRIBUTE] = attrs
    except Exception:
        pass
    return connection


# compiled for its common calls where the span core is: the same without this frame and the keywords dict
_connect_wrapper = _dbapi.compile_connect(_connect, _connects, _sqlite3.Connection)


def patch(module: ModuleType) -> None:  # sqlite3 (and sqlite3.dbapi2, where connect comes from)
    wrap(module, "connect", _connect_wrapper)
    dbapi2 = getattr(module, "dbapi2", None)
    if dbapi2 is not None and getattr(dbapi2, "connect", None) is not getattr(module, "connect", None):
        wrap(dbapi2, "connect", _connect_wrapper)


def unpatch(module: ModuleType) -> None:
    unwrap(module, "connect")
    dbapi2 = getattr(module, "dbapi2", None)
    if dbapi2 is not None:
        unwrap(dbapi2, "connect")
