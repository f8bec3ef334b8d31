"""psycopg2: its connection and cursor are C types, so `psycopg2.connect` is given a traced subclass of
the connection factory asked for, and that connection hands out traced subclasses of the cursor factory
asked for. register_type, register_uuid, execute_values, extras' cursors and server-side (named)
cursors see real psycopg2 objects."""

from __future__ import annotations

from types import ModuleType
from typing import Any, Callable

from autoinstr.integrations import _dbapi, is_suppressed
from autoinstr.integrations._wrapping import unwrap, wrap

SYSTEM = "postgresql"
_extensions: Any = None  # psycopg2.extensions, set by patch()


def _compute(connection: Any) -> _dbapi.DbAttributes:
    info = connection.info
    return _dbapi.server_attributes(SYSTEM, info.dbname, info.host, info.port)


def _attributes(connection: Any) -> _dbapi.DbAttributes:
    return _dbapi.attributes_of(connection, _compute, SYSTEM)


class _TracedCursor:
    __slots__ = ()

    def execute(self, query: Any, *args: Any, **kwargs: Any) -> Any:
        return _dbapi.run(_attributes(self.connection), SYSTEM, query, self, super().execute,  # type: ignore[misc]
                          query, *args, **kwargs)

    def executemany(self, query: Any, *args: Any, **kwargs: Any) -> Any:
        return _dbapi.run(_attributes(self.connection), SYSTEM, query, self, super().executemany,  # type: ignore[misc]
                          query, *args, **kwargs)

    def callproc(self, procname: Any, *args: Any, **kwargs: Any) -> Any:
        attrs, statement = _dbapi.procedure(_attributes(self.connection), procname)
        return _dbapi.run(attrs, SYSTEM, statement, self, super().callproc,  # type: ignore[misc]
                          procname, *args, **kwargs)

    def copy_expert(self, sql: Any, *args: Any, **kwargs: Any) -> Any:
        return _dbapi.run(_attributes(self.connection), SYSTEM, sql, self, super().copy_expert,  # type: ignore[misc]
                          sql, *args, **kwargs)

    def copy_from(self, file: Any, table: Any, *args: Any, **kwargs: Any) -> Any:
        return _dbapi.run(_attributes(self.connection), SYSTEM, "COPY %s FROM STDIN" % table, self,
                          super().copy_from, file, table, *args, **kwargs)  # type: ignore[misc]

    def copy_to(self, file: Any, table: Any, *args: Any, **kwargs: Any) -> Any:
        return _dbapi.run(_attributes(self.connection), SYSTEM, "COPY %s TO STDOUT" % table, self,
                          super().copy_to, file, table, *args, **kwargs)  # type: ignore[misc]


def _traced_cursor_class(factory: Any) -> Any:
    return _dbapi.traced_factory(factory, _extensions.cursor, _TracedCursor)


class _TracedConnection(_dbapi.TracedTransactions):
    __slots__ = ()

    def _autoinstr_attributes(self) -> _dbapi.DbAttributes:
        return _attributes(self)

    def cursor(self, *args: Any, **kwargs: Any) -> Any:
        # cursor(name=None, cursor_factory=None, withhold=False, scrollable=None)
        if len(args) > 1:
            args = (args[0], _traced_cursor_class(args[1] or self.cursor_factory or _extensions.cursor)) + args[2:]
        else:
            factory = kwargs.get("cursor_factory") or self.cursor_factory or _extensions.cursor  # type: ignore[attr-defined]
            kwargs["cursor_factory"] = _traced_cursor_class(factory)
        return super().cursor(*args, **kwargs)  # type: ignore[misc]


def _dsn_attributes(args: tuple, kwargs: dict) -> _dbapi.DbAttributes:
    """What the connect span can know before there is a connection (its target), from the DSN."""
    params = {k: v for k, v in kwargs.items() if k in ("dbname", "database", "host", "port")}
    dsn = args[0] if args else kwargs.get("dsn")
    if isinstance(dsn, str) and dsn:
        try:
            parsed = _extensions.parse_dsn(dsn)
            params = dict(parsed, **params)
        except Exception:
            pass
    return _dbapi.connect_attributes(SYSTEM, params.get("dbname") or params.get("database"),
                                     params.get("host"), params.get("port"))


def _connect(wrapped: Callable[..., Any], instance: Any, args: tuple, kwargs: dict) -> Any:
    if is_suppressed():
        return wrapped(*args, **kwargs)
    try:
        # connect(dsn=None, connection_factory=None, cursor_factory=None, **kwargs)
        if len(args) > 1:
            args = (args[0], _dbapi.traced_class(args[1] or _extensions.connection, _TracedConnection)) + args[2:]
        else:
            factory = kwargs.get("connection_factory") or _extensions.connection
            if not (isinstance(factory, type) and issubclass(factory, _extensions.connection)):
                return wrapped(*args, **kwargs)
            kwargs = dict(kwargs, connection_factory=_dbapi.traced_class(factory, _TracedConnection))
        attrs = _dsn_attributes(args, kwargs)
    except Exception:
        return wrapped(*args, **kwargs)
    return _dbapi.run(attrs, "connect", None, None, wrapped, *args, **kwargs)


def patch(module: ModuleType) -> None:  # psycopg2
    global _extensions
    import psycopg2.extensions

    _extensions = psycopg2.extensions
    wrap(module, "connect", _connect)


def unpatch(module: ModuleType) -> None:
    unwrap(module, "connect")
