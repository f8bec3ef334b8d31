"""DB-API tracing shared by every driver: one client span per execute/executemany/callproc/copy, connect,
commit and rollback, with the connection's OpenTelemetry attributes.

No proxy object ever stands in for a driver's connection or cursor: `isinstance`, and the C functions
that insist on the real type (sqlite3's backup, psycopg2's register_type), must keep working.
- Drivers written in Python (psycopg 3, PyMySQL, mysqlclient's cursors) get their methods wrapped on
  the class where they are defined: `wrap_methods`.
- Drivers whose connection and cursor are C types (sqlite3, psycopg2) let the caller choose the class
  through a factory argument: `traced_class` makes a subclass of the class asked for (named like it)
  with the tracing mixin in front, and the driver module hands it to the driver.

The statement goes into `db.query.text` as given; it is normalized and obfuscated on the flush thread
(autoinstr.export.records), and the span, named after db.system until then, gets its `SELECT users`
name there too. Bound parameters are never recorded.
"""

from __future__ import annotations

from typing import Any, Callable, Dict, Iterable, Mapping, Optional, Tuple

from autoinstr.export import statsd as _statsd
from autoinstr.integrations import _suppressed
from autoinstr.trace.span import Span, _get_current

DbAttributes = Dict[str, Any]
Wrapper = Callable[[Callable[..., Any], Any, tuple, dict], Any]  # wrapt's wrapper(wrapped, instance, args, kwargs)

# A connection's attributes are cached on it under this name (drivers' Python classes and our subclasses
# of the C ones have a __dict__); `attributes_of` computes them once per connection.
CACHE_ATTRIBUTE = "_autoinstr_db"
_suppressed_get = _suppressed.get  # is_suppressed(), without the call


def server_attributes(system: str, namespace: Any = None, address: Any = None, port: Any = None) -> DbAttributes:
    """The attributes every span of one connection carries (OpenTelemetry database conventions)."""
    attrs: DbAttributes = {"db.system": system}
    if isinstance(namespace, bytes):
        namespace = namespace.decode("utf-8", "replace")
    if namespace:
        attrs["db.namespace"] = str(namespace)
    if address:
        attrs["server.address"] = str(address)
    try:
        if port:
            attrs["server.port"] = int(port)
    except (TypeError, ValueError):
        pass
    return attrs


def attributes_of(connection: Any, compute: Callable[[Any], DbAttributes], system: str) -> DbAttributes:
    """The connection's span attributes, computed once and kept on the connection."""
    try:
        return connection.__dict__[CACHE_ATTRIBUTE]  # type: ignore[no-any-return]
    except (AttributeError, KeyError, TypeError):
        pass
    try:
        attrs = compute(connection)
    except Exception:
        attrs = {"db.system": system}
    try:
        connection.__dict__[CACHE_ATTRIBUTE] = attrs
    except (AttributeError, TypeError):
        pass
    return attrs


def _start(attrs: Mapping[str, Any], name: str, statement: Any) -> Optional[Span]:
    """The span for one call, or None when nothing is to be recorded: inside an unsampled trace,
    inside another database span (executemany calling execute per row), or on the agent's own I/O."""
    parent = _get_current()
    if parent is not None and (not parent._sampled or parent.kind == "client" and "db.system" in parent.attributes):
        return None
    if _suppressed_get():
        return None
    span = Span(name, kind="client", parent=parent)
    if not span._sampled:
        return None
    span.attributes = attributes = dict(attrs)
    if statement is not None:
        attributes["db.query.text"] = statement
    return span.__enter__()


def _failed(span: Span, exc: BaseException) -> None:
    try:
        span.record_exception(exc)
        span.attributes["error.type"] = "%s.%s" % (type(exc).__module__, type(exc).__qualname__)
        if span.attributes.get("db.system") in ("mysql", "mariadb"):  # (errno, message): the error number
            code = exc.args[0] if exc.args and isinstance(exc.args[0], int) else None
        else:  # PostgreSQL and others: the SQLSTATE
            code = getattr(exc, "sqlstate", None) or getattr(exc, "pgcode", None)
        if code is not None:
            attributes = span.attributes
            attributes["db.response.status_code"] = str(code)
    finally:
        span.__exit__(None, None, None)
        if _statsd.enabled:
            _statsd.db_span(span)


def _rows(span: Span, cursor: Any) -> None:
    """Rows returned (a statement with a result) or affected (DML), when the driver knows them."""
    try:
        count = cursor.rowcount
        if count.__class__ is int and count >= 0:
            key = "db.response.returned_rows" if cursor.description is not None else "db.response.affected_rows"
            span.attributes[key] = count
    except Exception:
        pass


def _run(attrs: Mapping[str, Any], name: str, statement: Any, cursor: Any, call: Callable[..., Any],
         *args: Any, **kwargs: Any) -> Any:
    """call(*args, **kwargs) inside a database span; its result and exceptions pass through unchanged (run, in
    Python: the compiled one is _db_call.c's db_run)."""
    try:
        span = _start(attrs, name, statement)
    except Exception:
        span = None
    if span is None:
        if _statsd.enabled:
            return _statsd.db_untraced(attrs, statement, call, args, kwargs)
        return call(*args, **kwargs)
    try:
        result = call(*args, **kwargs)
    except BaseException as exc:
        _failed(span, exc)
        raise
    if cursor is not None:
        _rows(span, cursor if cursor is not True else result)
    span.__exit__(None, None, None)
    if _statsd.enabled:
        _statsd.db_span(span)
    return result


def _compiled_run() -> Any:
    """autoinstr._speedups.db_run, configured, where the compiled span core is in use (AUTOINSTR_SPEEDUPS); else
    None."""
    from autoinstr.trace.span import compiled

    db_run = compiled("db_run")
    if db_run is not None:
        compiled("configure_db")(globals(), _suppressed, _statsd)
    return db_run


# run(attrs, name, statement, cursor, call, *args, **kwargs): call(*args, **kwargs) inside a database span (its
# result and exceptions pass through unchanged); `cursor` (or True: the result) gives the row count
run: Callable[..., Any] = _compiled_run() or _run


def _compiled_with(name: str) -> Any:
    """The compiled module, where run() is compiled and the module has `name`; else None."""
    from autoinstr.trace import span as span_module

    return span_module._compiled_core if run is not _run and span_module.compiled(name) is not None else None


def compile_cursor_methods(mixin: type, system: str, methods: Mapping[str, bool]) -> None:
    """Where run() is compiled, put on `mixin` (a traced cursor class's mixin) the compiled twins of its methods
    (cursor_hook in _db_call.c), {name: whether the cursor gives the row count}. Each method must be the shape
    `run(<the connection's attributes>, system, sql, self or None, super().<name>, sql, *args)`."""
    core = _compiled_with("cursor_hook")
    if core is None:
        return
    import functools

    for name, rows in methods.items():
        python = mixin.__dict__[name]
        setattr(mixin, name, functools.update_wrapper(core.cursor_hook(python, mixin, name, system, rows), python))


def compile_cursor_factory(mixin: type, factory: type) -> None:
    """Where run() is compiled, `mixin.cursor` (a traced connection class's mixin) called without arguments is
    super().cursor(factory) in C (cursor_factory_hook, _db_call.c); its other calls stay the Python method's."""
    core = _compiled_with("cursor_factory_hook")
    if core is None:
        return
    import functools

    python = mixin.__dict__["cursor"]
    hook = core.cursor_factory_hook(python, mixin, "cursor", factory)
    mixin.cursor = functools.update_wrapper(hook, python)  # type: ignore[attr-defined]


def compile_connection_shortcuts(mixin: type, names: Iterable[str]) -> None:
    """Where run() is compiled, put on `mixin` (a traced connection class's mixin) the compiled twins of its
    shortcut methods (connection_shortcut_hook in _db_call.c): each must be `self.cursor().<name>(sql, *args)`."""
    core = _compiled_with("connection_shortcut_hook")
    if core is None:
        return
    import functools

    for name in names:
        python = mixin.__dict__[name]
        setattr(mixin, name, functools.update_wrapper(core.connection_shortcut_hook(python, name), python))


def compile_connect(python: Callable[..., Any], connects: Dict[Any, Any], factory: type) -> Callable[..., Any]:
    """sqlite3's connect wrapper `python`, compiled for its common calls where run() is (connect_hook in _db_call.c:
    `connects` maps (database, factory) to what `python` prepared for them); else `python` itself."""
    core = _compiled_with("connect_hook")
    if core is None:
        return python
    import functools

    return functools.update_wrapper(core.connect_hook(python, connects, factory), python)


def compile_marking(mixin: type, base: type, names: Iterable[str], marker: str) -> None:
    """Where run() is compiled, put on `mixin` (a traced connection class's mixin) each of `base`'s methods `names`
    that register Python code the driver may run inside a statement, marking the connection (`marker` in its
    __dict__) before the call (marking_hook in _db_call.c: no frame of ours, so the driver's warnings name the
    app's line). Without the compiled path nothing is marked: every statement's span is made current there."""
    core = _compiled_with("marking_hook")
    if core is None:
        return
    import functools

    for name in names:
        real = getattr(base, name, None)
        if real is not None:  # (create_window_function: 3.11+)
            setattr(mixin, name, functools.update_wrapper(core.marking_hook(real, mixin, name, marker), real))


def compile_python_free(execute: Any, connection_type: type, adapters: Dict[Any, Any], marker: str) -> None:
    """Where run() is compiled, tell it which of a driver's calls run no Python code, so that their spans need not be
    made current (configure_python_free in _db_call.c): `execute` (the driver's Cursor.execute) on a connection of a
    type `connection_type`'s __call__ serves, with no callback registered (no `marker` in its __dict__), with plain
    parameters none of `adapters` adapts."""
    core = _compiled_with("configure_python_free")
    if core is not None:
        core.configure_python_free(execute, connection_type, adapters, marker)


async def run_async(attrs: Mapping[str, Any], name: str, statement: Any, cursor: Any,
                    call: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
    """run() for a coroutine method: the span covers the awaited call."""
    try:
        span = _start(attrs, name, statement)
    except Exception:
        span = None
    if span is None:
        if _statsd.enabled:
            return await _statsd.db_untraced_async(attrs, statement, call, args, kwargs)
        return await call(*args, **kwargs)
    try:
        result = await call(*args, **kwargs)
    except BaseException as exc:
        _failed(span, exc)
        raise
    if cursor is not None:
        _rows(span, cursor)
    span.__exit__(None, None, None)
    if _statsd.enabled:
        _statsd.db_span(span)
    return result


# ------------------------------------------------------------------------------ statements

def statement_of(args: tuple, kwargs: dict, keyword: str = "query") -> Any:
    """The statement argument of execute-like methods: first positional, else by keyword."""
    if args:
        return args[0]
    return kwargs.get(keyword)


# ---------------------------------------------------------------------------- span-per-block calls

class TracedBlock:
    """The context manager a `copy()`-like method returns, with a span from enter to exit (the whole
    COPY, rows included). Everything else is the real context manager's."""

    def __init__(self, manager: Any, attrs: Mapping[str, Any], statement: Any) -> None:
        self._manager = manager
        self._attrs = attrs
        self._statement = statement
        self._span: Optional[Span] = None

    def __getattr__(self, name: str) -> Any:
        return getattr(self._manager, name)

    def _open(self) -> None:
        try:
            self._span = _start(self._attrs, self._attrs.get("db.system", "db"), self._statement)
        except Exception:
            self._span = None

    def _close(self, exc: Any) -> None:
        span, self._span = self._span, None
        if span is not None:
            if exc is not None:
                _failed(span, exc)
            else:
                span.__exit__(None, None, None)
                if _statsd.enabled:
                    _statsd.db_span(span)

    def __enter__(self) -> Any:
        self._open()
        try:
            return self._manager.__enter__()
        except BaseException as exc:
            self._close(exc)
            raise

    def __exit__(self, exc_type: Any, exc: Any, tb: Any) -> Any:
        try:
            return self._manager.__exit__(exc_type, exc, tb)
        except BaseException as error:
            self._close(error)
            raise
        finally:
            self._close(exc)

    async def __aenter__(self) -> Any:
        self._open()
        try:
            return await self._manager.__aenter__()
        except BaseException as exc:
            self._close(exc)
            raise

    async def __aexit__(self, exc_type: Any, exc: Any, tb: Any) -> Any:
        try:
            return await self._manager.__aexit__(exc_type, exc, tb)
        except BaseException as error:
            self._close(error)
            raise
        finally:
            self._close(exc)


# ------------------------------------------------------------------------- methods wrapped in place

def execute_wrapper(attributes: Callable[[Any], Mapping[str, Any]], keyword: str = "query", is_async: bool = False,
                    render: Optional[Callable[[Any, Any], Any]] = None) -> Wrapper:
    """A wrapt wrapper for a cursor's execute-like method; `attributes(cursor)` gives the connection's,
    `render(cursor, statement)` the statement's text when it is not a string (psycopg's sql.Composed)."""
    runner = run_async if is_async else run

    def wrapper(wrapped: Callable[..., Any], instance: Any, args: tuple, kwargs: dict) -> Any:
        try:
            attrs = attributes(instance)
            statement = statement_of(args, kwargs, keyword)
            if render is not None:
                statement = render(instance, statement)
        except Exception:
            return wrapped(*args, **kwargs)
        return runner(attrs, attrs["db.system"], statement, instance, wrapped, *args, **kwargs)

    return wrapper


def callproc_wrapper(attributes: Callable[[Any], Mapping[str, Any]]) -> Wrapper:
    """A wrapt wrapper for a cursor's callproc(procname, args): the span says `CALL procname`."""

    def wrapper(wrapped: Callable[..., Any], instance: Any, args: tuple, kwargs: dict) -> Any:
        try:
            attrs, statement = procedure(attributes(instance), statement_of(args, kwargs, "procname"))
        except Exception:
            return wrapped(*args, **kwargs)
        return run(attrs, attrs["db.system"], statement, instance, wrapped, *args, **kwargs)

    return wrapper


def procedure(attrs: Mapping[str, Any], name: Any) -> Tuple[Dict[str, Any], str]:
    """Attributes and statement for a stored procedure call."""
    name = str(name)
    return dict(attrs, **{"db.stored_procedure.name": name}), "CALL %s" % name


def operation_attributes(attrs: Mapping[str, Any], operation: str) -> Dict[str, Any]:
    out = dict(attrs)
    out["db.operation.name"] = operation
    return out


def operation_wrapper(operation: str, attributes: Callable[[Any], Mapping[str, Any]],
                      is_async: bool = False) -> Wrapper:
    """A wrapt wrapper for a connection's commit/rollback: a span named after the operation."""
    runner = run_async if is_async else run

    def wrapper(wrapped: Callable[..., Any], instance: Any, args: tuple, kwargs: dict) -> Any:
        try:
            attrs = operation_attributes(attributes(instance), operation)
        except Exception:
            return wrapped(*args, **kwargs)
        return runner(attrs, operation, None, None, wrapped, *args, **kwargs)

    return wrapper


class TracedTransactions:
    """commit() and rollback() as spans, for the traced subclass of a C connection type (whose methods
    cannot be wrapped in place); the subclass's `_autoinstr_attributes()` gives the connection's."""

    __slots__ = ()

    def _autoinstr_attributes(self) -> Mapping[str, Any]:
        raise NotImplementedError

    def commit(self) -> Any:
        attrs = operation_attributes(self._autoinstr_attributes(), "COMMIT")
        return run(attrs, "COMMIT", None, None, super().commit)  # type: ignore[misc]

    def rollback(self) -> Any:
        attrs = operation_attributes(self._autoinstr_attributes(), "ROLLBACK")
        return run(attrs, "ROLLBACK", None, None, super().rollback)  # type: ignore[misc]


def connect_attributes(system: str, namespace: Any = None, address: Any = None, port: Any = None) -> DbAttributes:
    attrs = server_attributes(system, namespace, address, port)
    attrs["db.operation.name"] = "connect"
    return attrs


def wrap_methods(owner: Any, wrappers: Mapping[str, Callable[..., Any]]) -> Tuple[str, ...]:
    """Wrap each method on `owner` (a class) where it is defined there; returns the names wrapped, so
    that a subclass inheriting them is not wrapped twice."""
    from autoinstr.integrations._wrapping import wrap

    done = []
    for name, wrapper in wrappers.items():
        if name in getattr(owner, "__dict__", {}):
            wrap(owner, name, wrapper)
            done.append(name)
    return tuple(done)


def unwrap_methods(owner: Any, names: Tuple[str, ...]) -> None:
    from autoinstr.integrations._wrapping import unwrap

    for name in names:
        unwrap(owner, name)


# ------------------------------------------------------------------- subclasses of C drivers' types

_classes: Dict[Tuple[type, type], type] = {}


def traced_class(base: type, mixin: type) -> type:
    """`base` with `mixin` (which overrides the traced methods and calls super()) in front: a real
    subclass, so isinstance and the driver's own type checks hold. Named like `base`, made once."""
    if getattr(base, "__autoinstr_traced__", False):
        return base
    key = (base, mixin)
    cls = _classes.get(key)
    if cls is None:
        cls = type(base.__name__, (mixin, base), {"__module__": base.__module__, "__qualname__": base.__qualname__,
                                                  "__autoinstr_traced__": True, "__doc__": base.__doc__})
        _classes[key] = cls
    return cls


def traced_factory(factory: Any, base: type, mixin: type) -> Any:
    """What to hand a driver asking for `factory` (a class derived from `base`, or a factory function):
    the traced subclass of the class; a function is left alone (its objects go untraced)."""
    if isinstance(factory, type) and issubclass(factory, base):
        return traced_class(factory, mixin)
    return factory
