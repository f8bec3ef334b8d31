"""mysqlclient (MySQLdb): its cursors are Python, wrapped in place (BaseCursor.execute/executemany/
callproc); Connection is a Python subclass of the C connection, so connect (its __init__), commit and
rollback are wrapped on it. The connection keeps no host/port/database of its own: the connect wrapper
notes them from the arguments."""

from __future__ import annotations

from types import ModuleType
from typing import Any, Callable, List, Tuple

from autoinstr.integrations import _dbapi, is_suppressed

_wrapped: List[Tuple[Any, Tuple[str, ...]]] = []


def _target(kwargs: dict) -> Tuple[Any, Any, Any]:
    namespace = kwargs.get("database", kwargs.get("db"))
    host = kwargs.get("host") or ("localhost" if not kwargs.get("unix_socket") else None)
    port = kwargs.get("port") or (3306 if host else None)
    return namespace, host, port


def _connection_attributes(connection: Any) -> _dbapi.DbAttributes:
    def compute(conn: Any) -> _dbapi.DbAttributes:
        system = "mariadb" if "mariadb" in str(conn.get_server_info()).lower() else "mysql"
        namespace, host, port = getattr(conn, "_autoinstr_target", (None, None, None))
        return _dbapi.server_attributes(system, namespace, host, port)

    return _dbapi.attributes_of(connection, compute, "mysql")


def _cursor_attributes(cursor: Any) -> _dbapi.DbAttributes:
    return _connection_attributes(cursor.connection)


def _init(wrapped: Callable[..., Any], instance: Any, args: tuple, kwargs: dict) -> Any:
    if is_suppressed():
        return wrapped(*args, **kwargs)
    try:
        target = _target(kwargs)
        instance.__dict__["_autoinstr_target"] = target
        attrs = _dbapi.connect_attributes("mysql", *target)
    except Exception:
        return wrapped(*args, **kwargs)
    return _dbapi.run(attrs, "connect", None, None, wrapped, *args, **kwargs)


def patch(module: ModuleType) -> None:  # MySQLdb
    from MySQLdb import connections, cursors

    execute = _dbapi.execute_wrapper(_cursor_attributes)
    _wrapped.append((cursors.BaseCursor, _dbapi.wrap_methods(cursors.BaseCursor, {
        "execute": execute, "executemany": execute, "callproc": _dbapi.callproc_wrapper(_cursor_attributes),
    })))
    _wrapped.append((connections.Connection, _dbapi.wrap_methods(connections.Connection, {"__init__": _init})))
    # commit and rollback come from the C base class: wrapped on the Python class, for its instances
    from autoinstr.integrations._wrapping import wrap

    for operation in ("commit", "rollback"):
        wrap(connections.Connection, operation, _dbapi.operation_wrapper(operation.upper(), _connection_attributes))
    _wrapped.append((connections.Connection, ("commit", "rollback")))


def unpatch(module: ModuleType) -> None:
    while _wrapped:
        cls, names = _wrapped.pop()
        _dbapi.unwrap_methods(cls, names)
