"""The shared DB-API mechanics, in-process on the real sqlite3 driver: spans per call, nesting rules,
exceptions passed through unchanged, rows, and the flush-thread summary of the statement."""

from __future__ import annotations

import sqlite3
import sys

import pytest

from autoinstr.export import records
from autoinstr.integrations import _dbapi, suppress_instrumentation
from autoinstr.integrations import sqlite3 as sqlite3_integration
from autoinstr.trace.span import Sampling, Span


@pytest.fixture
def traced_sqlite(collected):
    sqlite3_integration.patch(sqlite3)
    try:
        yield collected
    finally:
        sqlite3_integration.unpatch(sqlite3)


def _spans(collected):
    return [s for batch in collected for s in batch]


def test_connection_and_cursor_are_real_sqlite_objects(traced_sqlite, tmp_path):
    conn = sqlite3.connect(str(tmp_path / "a.db"))
    assert isinstance(conn, sqlite3.Connection) and type(conn).__name__ == "Connection"
    cur = conn.cursor()
    assert isinstance(cur, sqlite3.Cursor) and cur.execute("SELECT 1") is cur
    other = sqlite3.connect(":memory:")
    conn.execute("CREATE TABLE t (x)")
    conn.backup(other)  # needs a real Connection on both sides
    assert other.execute("SELECT count(*) FROM t").fetchone() == (0,)

    class MyCursor(sqlite3.Cursor):
        pass

    mine = conn.cursor(MyCursor)
    assert isinstance(mine, MyCursor)
    mine.execute("INSERT INTO t VALUES (1)")
    names = [s.name for s in _spans(traced_sqlite)]
    assert names.count("sqlite") >= 3  # named at export, from the statement


def test_one_span_per_call_with_attributes_and_rows(traced_sqlite):
    with Span("request") as parent:
        conn = sqlite3.connect(":memory:")
        conn.execute("CREATE TABLE t (x)")
        conn.executemany("INSERT INTO t VALUES (?)", [(1,), (2,), (3,)])
        cur = conn.execute("UPDATE t SET x = 0 WHERE x > 1")
        assert cur.rowcount == 2
    spans = [s for s in _spans(traced_sqlite) if s.kind == "client"]
    assert [s.attributes.get("db.query.text") for s in spans] == [
        None, "CREATE TABLE t (x)", "INSERT INTO t VALUES (?)", "UPDATE t SET x = 0 WHERE x > 1"]
    assert all(s.parent_id == parent.span_id and s.attributes["db.system"] == "sqlite" for s in spans)
    assert spans[0].name == "connect" and spans[0].attributes["db.namespace"] == ":memory:"
    assert spans[2].attributes["db.response.affected_rows"] == 3
    assert spans[3].attributes["db.response.affected_rows"] == 2


def test_exception_passes_unchanged_and_span_is_error(traced_sqlite):
    conn = sqlite3.connect(":memory:")
    with pytest.raises(sqlite3.OperationalError) as info:
        conn.execute("SELEC 1")
    assert type(info.value) is sqlite3.OperationalError and "syntax error" in str(info.value)
    failed = [s for s in _spans(traced_sqlite) if s.status == "error"]
    assert len(failed) == 1 and failed[0].attributes["error.type"] == "sqlite3.OperationalError"


def test_unsampled_and_suppressed_record_nothing(traced_sqlite):
    Sampling.configure(0.0)
    with Span("unsampled"):
        conn = sqlite3.connect(":memory:")
        conn.execute("SELECT 1")
    assert _spans(traced_sqlite) == []
    Sampling.configure(1.0)
    import contextvars

    def agent_io():
        suppress_instrumentation()
        c = sqlite3.connect(":memory:")
        assert type(c) is sqlite3.Connection  # the agent's own store gets the plain class
        c.execute("SELECT 1")

    contextvars.copy_context().run(agent_io)
    assert _spans(traced_sqlite) == []


def test_nested_calls_inside_a_database_span_are_not_spans(collected):
    attrs = _dbapi.server_attributes("mysql", "db", "127.0.0.1", 3306)
    calls = []

    def inner():
        calls.append(1)
        return _dbapi.run(attrs, "mysql", "UPDATE t SET a = 1", None, lambda: 5)

    assert _dbapi.run(attrs, "mysql", "UPDATE t SET a = %s", None, lambda: sum(inner() for _ in range(3))) == 15
    spans = _spans(collected)
    assert len(spans) == 1 and spans[0].attributes["db.query.text"] == "UPDATE t SET a = %s" and len(calls) == 3


def test_the_wrapped_class_is_made_once_and_not_twice_over():
    class Base(sqlite3.Cursor):
        pass

    class Mixin:
        __slots__ = ()

    first = _dbapi.traced_class(Base, Mixin)
    assert _dbapi.traced_class(Base, Mixin) is first and _dbapi.traced_class(first, Mixin) is first
    assert first.__qualname__ == Base.__qualname__ and issubclass(first, Base)


def test_record_gets_normalized_statement_and_name_on_the_flush_side():
    span = Span("postgresql", kind="client")
    span.attributes.update({"db.system": "postgresql", "db.query.text": "SELECT * FROM users WHERE email = 'a@b.c'"})
    span.__enter__().__exit__(None, None, None)
    record = records.to_record(span, "svc", 0, 128, 4096)
    assert record["name"] == "SELECT users"
    assert record["attributes"]["db.query.text"] == "SELECT * FROM users WHERE email = ?"
    assert record["attributes"]["db.operation.name"] == "SELECT"
    assert record["attributes"]["db.collection.name"] == "users"
    assert span.attributes["db.query.text"].endswith("'a@b.c'")  # the span itself is left alone

    custom = Span("my own name", kind="client")
    custom.attributes.update({"db.system": "mysql", "db.query.text": b'DELETE FROM t WHERE s = "x"'})
    custom.__enter__().__exit__(None, None, None)
    record = records.to_record(custom, "svc", 0, 128, 4096)
    assert record["name"] == "my own name" and record["attributes"]["db.query.text"] == "DELETE FROM t WHERE s = ?"


def test_obfuscation_off_keeps_the_text():
    records.SqlPolicy.obfuscate = False
    try:
        span = Span("sqlite", kind="client")
        span.attributes.update({"db.system": "sqlite", "db.query.text": "SELECT 1   FROM t WHERE a = 'x'"})
        span.__enter__().__exit__(None, None, None)
        record = records.to_record(span, "svc", 0, 128, 4096)
        assert record["attributes"]["db.query.text"] == "SELECT 1 FROM t WHERE a = 'x'"
    finally:
        records.SqlPolicy.obfuscate = True


@pytest.mark.parametrize("message, expected", [
    ('relation "no_such_table" does not exist\nLINE 1: SELECT * FROM no_such_table WHERE note = \'hunter2\'\n'
     '                      ^\n', 'relation "?" does not exist\n'),
    ("You have an error in your SQL syntax; check the manual near ''hunter2'' at line 1",
     "You have an error in your SQL syntax; check the manual near '?' at line 1"),
    ('duplicate key value violates unique constraint "users_email_key"\nDETAIL:  Key (email)=(alice@example.com) '
     'already exists.', 'duplicate key value violates unique constraint "?"\nDETAIL:  Key (email)=(?) already exists.'),
    ('invalid input syntax for type integer: "4111111111111111"', 'invalid input syntax for type integer: "?"'),
])
def test_database_error_messages_lose_quoted_data(message, expected):
    assert records.scrub_db_error(message) == expected


def test_exception_event_of_a_database_span_is_scrubbed_at_export():
    span = Span("postgresql", kind="client")
    span.attributes.update({"db.system": "postgresql", "db.query.text": "SELECT * FROM t WHERE s = 'hunter2'"})
    span.__enter__()
    span.record_exception(ValueError("LINE 1: SELECT * FROM t WHERE s = 'hunter2'\n ^"))
    span.__exit__(None, None, None)
    record = records.to_record(span, "svc", 0, 128, 4096)
    assert "hunter2" not in repr(record) and record["events"][0]["name"] == "exception"


def test_a_driver_error_reaching_another_span_is_scrubbed_too():
    import psycopg2.errors

    span = Span("GET /users", kind="server")
    span.__enter__()
    exc = psycopg2.errors.lookup("23505")("duplicate key\nDETAIL:  Key (email)=(alice@example.com) already exists.")
    span.record_exception(exc)
    span.__exit__(None, None, None)
    record = records.to_record(span, "svc", 0, 128, 4096)
    assert "alice@example.com" not in repr(record)
    assert record["attributes"]["error.type"] == "psycopg2.errors.UniqueViolation"
    plain = Span("work")
    plain.__enter__()
    plain.record_exception(ValueError("'kept' as it is"))
    plain.__exit__(None, None, None)
    assert records.to_record(plain, "svc", 0, 128, 4096)["attributes"]["exception.message"] == "'kept' as it is"


@pytest.mark.skipif(not (3, 13) <= __import__("sys").version_info[:2] < (3, 15),
                    reason="sqlite3.connect warns of positional arguments on Python 3.13 and 3.14")
def test_connects_deprecation_warnings_name_the_apps_line_and_errors_stay_the_apps(traced_sqlite):
    """As without the agent: the warnings name the line calling connect (not the wrapper's); a connection class
    with an __init__ of its own warns from that __init__; under an `error` filter connect raises the warning,
    and the integration stays on (it was no fault of the agent)."""
    import contextlib
    import warnings

    class Factory(sqlite3.Connection):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        conn = sqlite3.connect(":memory:", 5.0)
        own = sqlite3.connect(":memory:", 5.0, 0, None, True, Factory)
    assert [(w.category, w.filename) for w in caught[:2]] == [(DeprecationWarning, __file__)] * 2
    assert "sqlite3.connect()" in str(caught[0].message) and "_sqlite3.Connection()" in str(caught[1].message)
    assert caught[2].filename == __file__ and "sqlite3.connect()" in str(caught[2].message)
    assert caught[3].filename == __file__ and "_sqlite3.Connection()" in str(caught[3].message)  # Factory's line
    assert conn.execute("SELECT 1").fetchone() == (1,) and isinstance(own, Factory) and own.isolation_level is None
    conn.close()
    own.close()
    with warnings.catch_warnings():
        warnings.simplefilter("error", DeprecationWarning)
        with pytest.raises(DeprecationWarning, match="positional argument to sqlite3.connect"):
            sqlite3.connect(":memory:", 5.0)
    before = len(_spans(traced_sqlite))
    with contextlib.closing(sqlite3.connect(":memory:")) as again:
        again.execute("SELECT 2")
    assert len(_spans(traced_sqlite)) > before  # still traced


# ---------------------------------------------------------------------------------------------------------------
# A statement that runs no Python code has its span made without making it the current one (_db_call.c,
# python_free). Wherever sqlite3 can run the app's Python code inside execute(), that code must see the statement's
# span as the current one, as it does on the Python path.

def _callback_ways():
    ways = {
        "function": lambda conn, hook: conn.create_function("hook", 0, hook),
        "aggregate": lambda conn, hook: conn.create_aggregate("hook", 0, type("Agg", (), {
            "step": lambda self: hook(), "finalize": lambda self: 1})),
        "collation": lambda conn, hook: conn.create_collation("hook", lambda a, b: hook() or (a > b) - (a < b)),
        "authorizer": lambda conn, hook: conn.set_authorizer(lambda *args: hook() or sqlite3.SQLITE_OK),
        "progress": lambda conn, hook: conn.set_progress_handler(lambda: hook() or 0, 1),
        "trace": lambda conn, hook: conn.set_trace_callback(lambda statement: hook()),
    }
    if hasattr(sqlite3.Connection, "create_window_function"):
        ways["window"] = lambda conn, hook: conn.create_window_function("hook", 0, type("Win", (), {
            "step": lambda self: hook(), "inverse": lambda self: None, "value": lambda self: 1,
            "finalize": lambda self: 1}))
    return ways


_STATEMENTS = {"function": "SELECT hook()", "aggregate": "SELECT hook() FROM t",
               "window": "SELECT hook() OVER () FROM t", "collation": "SELECT x FROM t ORDER BY x COLLATE hook",
               "authorizer": "SELECT x FROM t",
               "progress": "SELECT x FROM t", "trace": "SELECT x FROM t"}


def _statement_span(collected, statement):
    found = [s for s in _spans(collected) if s.attributes.get("db.query.text") == statement]
    assert len(found) == 1, [s.attributes.get("db.query.text") for s in _spans(collected)]
    return found[0]


@pytest.mark.parametrize("way", sorted(_callback_ways()))
def test_a_callback_run_inside_a_statement_sees_the_statements_span(traced_sqlite, way):
    from autoinstr.trace.span import current_span

    seen = []

    def hook():
        seen.append(current_span())
        return 0

    with Span("request") as request:
        conn = sqlite3.connect(":memory:")
        conn.execute("CREATE TABLE t (x)")
        conn.execute("INSERT INTO t VALUES ('b'), ('a'), ('c')")
        _callback_ways()[way](conn, hook)
        cursor = conn.execute(_STATEMENTS[way])
        inside = len(seen)  # (what the fetch runs comes after the span)
        cursor.fetchall()
        del seen[inside:]
        assert current_span() is request
    statement = _statement_span(traced_sqlite, _STATEMENTS[way])
    assert seen and all(s is not None and s.span_id == statement.span_id for s in seen)
    assert statement.parent_id == request.span_id


class _Conforming:
    def __init__(self, hook):
        self.hook = hook

    def __conform__(self, protocol):
        self.hook()
        return 1


class _ConformingText(str):
    hook = None

    def __conform__(self, protocol):
        type(self).hook()
        return "text"


class _CallingConnection(sqlite3.Connection):
    hook = None

    def __call__(self, sql):  # the statement cache makes its statements through the connection's __call__
        type(self).hook()
        return super().__call__(sql)


@pytest.mark.parametrize("way", ["conform", "str-subclass", "base-adapter", "connection-call", "converter",
                                 "text-factory"])
def test_a_parameter_or_class_running_python_inside_a_statement_sees_its_span(traced_sqlite, way):
    from autoinstr.trace.span import current_span

    seen = []

    def hook():
        seen.append(current_span())

    statement, params, factory, types = "SELECT ?", (1,), sqlite3.Connection, 0
    if way == "conform":
        params = (_Conforming(hook),)
    elif way == "str-subclass":
        _ConformingText.hook = staticmethod(hook)
        params = [_ConformingText("x")]
    elif way == "base-adapter":
        sqlite3.register_adapter(int, lambda value: hook() or value)
    elif way == "connection-call":
        _CallingConnection.hook = staticmethod(hook)
        factory = _CallingConnection
    elif way == "converter":  # (3.9 and 3.10 fetch the first row in execute(): its converters run there)
        statement, types = 'SELECT ? AS "x [hooked]"', sqlite3.PARSE_COLNAMES
        sqlite3.register_converter("hooked", lambda value: hook() or value)
    try:
        with Span("request"):
            conn = sqlite3.connect(":memory:", factory=factory, detect_types=types)
            if way == "text-factory":
                params = ("text",)
                conn.text_factory = lambda value: hook() or value.decode()
            cursor = conn.execute(statement, params)
            inside = len(seen)  # (what the fetch runs comes after the span)
            cursor.fetchall()
    finally:
        sqlite3.adapters.pop((int, sqlite3.PrepareProtocol), None)
        sqlite3.converters.pop("HOOKED", None)
    span = _statement_span(traced_sqlite, statement)
    assert all(s is not None and s.span_id == span.span_id for s in seen[:inside])
    fetched_in_execute = way in ("converter", "text-factory")
    assert bool(inside) is (not fetched_in_execute or sys.version_info < (3, 11))


def test_which_statements_run_without_a_current_span():
    core = _dbapi._compiled_with("python_free_call")
    if core is None:
        pytest.skip("the compiled DB path is not in use here")
    sqlite3_integration.patch(sqlite3)
    try:
        conn = sqlite3.connect(":memory:")
        execute = sqlite3.Cursor.__dict__["execute"]
        free = sys.version_info >= (3, 11)  # (3.9 and 3.10 fetch the first row in execute())

        def python_free(*args, base=execute, connection=conn):
            return core.python_free_call(connection, base, args)

        assert python_free("SELECT 1") is free
        assert python_free("SELECT ?, ?, ?, ?, ?", (1, 2.5, "x", b"y", None)) is free
        assert python_free("SELECT ?", [3]) is free
        not_free = [("SELECT :a", {"a": 1}), ("SELECT ?", (True,)), ("SELECT ?", (bytearray(b"x"),)),
                    (_ConformingText("SELECT 1"),), ("SELECT ?", (1,), "extra"), ("SELECT ?", iter([1])),
                    ("SELECT ?", ((1,),))]
        assert [python_free(*args) for args in not_free] == [False] * len(not_free)
        assert python_free("SELECT 1", base=sqlite3.Cursor.__dict__["executemany"]) is False
        sqlite3.register_adapter(str, str.upper)
        try:
            assert python_free("SELECT 1") is False  # (an adapter for a plain type: every parameter is suspect)
        finally:
            del sqlite3.adapters[(str, sqlite3.PrepareProtocol)]
        assert python_free("SELECT 1") is free
        sqlite3.register_adapter(_Conforming, lambda value: 1)  # (an adapter for another type changes nothing)
        try:
            assert python_free("SELECT 1") is free
        finally:
            del sqlite3.adapters[(_Conforming, sqlite3.PrepareProtocol)]
        assert python_free("SELECT 1", connection=sqlite3.connect(":memory:", factory=_CallingConnection)) is False
        conn.set_trace_callback(None)  # (any callback method used: marked, even to clear one)
        assert python_free("SELECT 1") is False
    finally:
        sqlite3_integration.unpatch(sqlite3)


def test_a_statement_without_a_current_span_leaves_the_current_one_and_records_all(traced_sqlite):
    from autoinstr.trace.span import current_span

    with Span("request") as request:
        conn = sqlite3.connect(":memory:")
        conn.execute("CREATE TABLE t (x)")
        cur = conn.execute("INSERT INTO t VALUES (?), (?)", (1, 2))
        assert current_span() is request and cur.rowcount == 2
        with pytest.raises(sqlite3.OperationalError):
            conn.execute("SELECT * FROM nope WHERE x = ?", (1,))
        assert current_span() is request
        assert conn.execute("SELECT x FROM t WHERE x > ?", (0,)).fetchall() == [(1,), (2,)]
        assert current_span() is request
    assert current_span() is None
    spans = {s.attributes.get("db.query.text"): s for s in _spans(traced_sqlite) if s.kind == "client"}
    insert, failed, select = (spans[k] for k in ("INSERT INTO t VALUES (?), (?)", "SELECT * FROM nope WHERE x = ?",
                                                  "SELECT x FROM t WHERE x > ?"))
    assert insert.attributes["db.response.affected_rows"] == 2 and "db.query.text" in select.attributes
    assert failed.status == "error" and failed.attributes["error.type"] == "sqlite3.OperationalError"
    assert failed.events and failed.events[0]["name"] == "exception"
    for span in (insert, failed, select):
        assert span.parent_id == request.span_id and span.root is request
        assert request.start_ns <= span.start_ns <= span.end_ns <= request.end_ns and span._token is None
