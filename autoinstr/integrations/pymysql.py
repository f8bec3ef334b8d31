"""PyMySQL: written in Python, so Cursor.execute/executemany/callproc and Connection.connect/commit/
rollback are wrapped in place on the classes defining them (DictCursor, SSCursor... inherit them)."""

from __future__ import annotations

from types import ModuleType
from typing import Any, List, Tuple

from autoinstr.integrations import _dbapi


def _compute(connection: Any) -> _dbapi.DbAttributes:
    version = str(getattr(connection, "server_version", "") or "")
    system = "mariadb" if "mariadb" in version.lower() else "mysql"
    return _dbapi.server_attributes(system, connection.db, connection.host, connection.port)


def _connection_attributes(connection: Any) -> _dbapi.DbAttributes:
    return _dbapi.attributes_of(connection, _compute, "mysql")


def _cursor_attributes(cursor: Any) -> _dbapi.DbAttributes:
    return _connection_attributes(cursor.connection)


def _connect_attributes(connection: Any) -> _dbapi.DbAttributes:
    """Before the handshake the server's flavour is unknown: the connect span says mysql."""
    return _dbapi.connect_attributes("mysql", connection.db, connection.host, connection.port)


_wrapped: List[Tuple[Any, Tuple[str, ...]]] = []


def patch(module: ModuleType) -> None:  # pymysql
    from pymysql import connections, cursors

    execute = _dbapi.execute_wrapper(_cursor_attributes)
    _wrapped.append((cursors.Cursor, _dbapi.wrap_methods(cursors.Cursor, {
        "execute": execute, "executemany": execute, "callproc": _dbapi.callproc_wrapper(_cursor_attributes),
    })))
    _wrapped.append((connections.Connection, _dbapi.wrap_methods(connections.Connection, {
        "connect": _dbapi.operation_wrapper("connect", _connect_attributes),
        "commit": _dbapi.operation_wrapper("COMMIT", _connection_attributes),
        "rollback": _dbapi.operation_wrapper("ROLLBACK", _connection_attributes),
    })))


def unpatch(module: ModuleType) -> None:
    while _wrapped:
        cls, names = _wrapped.pop()
        _dbapi.unwrap_methods(cls, names)
