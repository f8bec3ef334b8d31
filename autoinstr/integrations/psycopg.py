"""psycopg (3), sync and async: written in Python, so the cursor and connection methods are wrapped in
place on the classes defining them (every cursor class, server-side and raw ones included, inherits
them). `cursor.copy()` gets one span from the start of the COPY block to its end."""

from __future__ import annotations

from types import ModuleType
from typing import Any, Callable, Dict, List, Tuple

from autoinstr.integrations import _dbapi, is_suppressed

SYSTEM = "postgresql"


def _compute(connection: Any) -> _dbapi.DbAttributes:
    info = connection.info
    return _dbapi.server_attributes(SYSTEM, info.dbname, info.host, info.port)


def _cursor_attributes(cursor: Any) -> _dbapi.DbAttributes:
    return _dbapi.attributes_of(cursor.connection, _compute, SYSTEM)


def _connection_attributes(connection: Any) -> _dbapi.DbAttributes:
    return _dbapi.attributes_of(connection, _compute, SYSTEM)


def _statement(cursor: Any, statement: Any) -> Any:
    """A psycopg.sql.Composed statement becomes its text here (it needs the connection to render)."""
    if statement is None or isinstance(statement, (str, bytes)):
        return statement
    try:
        return statement.as_string(cursor)
    except Exception:
        return "?"


def _copy(wrapped: Callable[..., Any], instance: Any, args: tuple, kwargs: dict) -> Any:
    manager = wrapped(*args, **kwargs)
    try:
        statement = _statement(instance, _dbapi.statement_of(args, kwargs, "statement"))
        return _dbapi.TracedBlock(manager, _cursor_attributes(instance), statement)
    except Exception:
        return manager


def _connect(is_async: bool) -> Callable[..., Any]:
    def wrapper(wrapped: Callable[..., Any], instance: Any, args: tuple, kwargs: dict) -> Any:
        if is_suppressed():
            return wrapped(*args, **kwargs)
        try:
            attrs = _target(args, kwargs)
        except Exception:
            return wrapped(*args, **kwargs)
        if is_async:
            return _dbapi.run_async(attrs, "connect", None, None, wrapped, *args, **kwargs)
        return _dbapi.run(attrs, "connect", None, None, wrapped, *args, **kwargs)

    return wrapper


def _target(args: tuple, kwargs: dict) -> _dbapi.DbAttributes:
    from psycopg.conninfo import conninfo_to_dict

    params: Dict[str, Any] = {k: v for k, v in kwargs.items() if k in ("dbname", "host", "port")}
    conninfo = args[0] if args else kwargs.get("conninfo")
    if isinstance(conninfo, str) and conninfo:
        params = dict(conninfo_to_dict(conninfo), **params)
    return _dbapi.connect_attributes(SYSTEM, params.get("dbname"), params.get("host"), params.get("port"))


_wrapped: List[Tuple[Any, Tuple[str, ...]]] = []


def patch(module: ModuleType) -> None:  # psycopg
    connection = getattr(module, "Connection", None)
    alias_of_connect = connection is not None and getattr(getattr(module, "connect", None), "__func__", 0) is getattr(
        connection.connect, "__func__", None)
    execute = _dbapi.execute_wrapper(_cursor_attributes, render=_statement)
    execute_async = _dbapi.execute_wrapper(_cursor_attributes, is_async=True, render=_statement)
    sync_cursor = {"execute": execute, "executemany": execute, "copy": _copy}
    async_cursor = {"execute": execute_async, "executemany": execute_async, "copy": _copy}
    for name in ("Cursor", "ServerCursor", "ClientCursor", "RawCursor", "RawServerCursor"):
        cls = getattr(module, name, None)
        if cls is not None:
            _wrapped.append((cls, _dbapi.wrap_methods(cls, sync_cursor)))
    for name in ("AsyncCursor", "AsyncServerCursor", "AsyncClientCursor", "AsyncRawCursor", "AsyncRawServerCursor"):
        cls = getattr(module, name, None)
        if cls is not None:
            _wrapped.append((cls, _dbapi.wrap_methods(cls, async_cursor)))
    for name, is_async in (("Connection", False), ("AsyncConnection", True)):
        cls = getattr(module, name, None)
        if cls is not None:
            _wrapped.append((cls, _dbapi.wrap_methods(cls, {
                "connect": _connect(is_async),
                "commit": _dbapi.operation_wrapper("COMMIT", _connection_attributes, is_async),
                "rollback": _dbapi.operation_wrapper("ROLLBACK", _connection_attributes, is_async),
            })))


    # `psycopg.connect` is Connection.connect bound at import: point it at the wrapped one
    if alias_of_connect:
        _aliases.append((module, "connect", module.connect))
        module.connect = module.Connection.connect


_aliases: List[Tuple[Any, str, Any]] = []


def unpatch(module: ModuleType) -> None:
    while _aliases:
        owner, name, original = _aliases.pop()
        setattr(owner, name, original)
    while _wrapped:
        cls, names = _wrapped.pop()
        _dbapi.unwrap_methods(cls, names)
