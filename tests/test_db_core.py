"""The DB-API call path has two implementations, compiled (autoinstr/_db_call.c: db_run, where the speedups are
built) and in Python (_run in autoinstr.integrations._dbapi, with AUTOINSTR_SPEEDUPS=false or no compiler at
install): they must behave alike.

Random programs on the real sqlite3 driver (connects, execute with and without parameters, executemany,
executescript, commit, rollback, bad statements, calls inside sampled, unsampled and database parents and in
the agent's suppressed context, sampling ratios 1, 0 and 1/2) run in one process per implementation. What the
program sees (results, exceptions, row counts) and what the pipeline receives (every field of every span) must
be identical.
"""

from __future__ import annotations

from _twins import HANDED_SPANS, assert_same, compiled_has, pass_on_the_other_side, require_compiled, run_driver

from autoinstr.integrations import _dbapi

PROGRAMS = 200

DRIVER = HANDED_SPANS + r'''
import contextvars, json, os, random, sqlite3, sys, tempfile
from autoinstr.integrations import _dbapi, suppress_instrumentation
from autoinstr.integrations import sqlite3 as sqlite3_integration
from autoinstr.trace.span import Sampling, Span, current_span

sqlite3_integration.patch(sqlite3)
out = {"compiled": _dbapi.run is not _dbapi._run, "programs": [],
       "cursor_method": type(sqlite3_integration._TracedCursor.__dict__["execute"]).__name__,
       "cursor_factory": type(sqlite3_integration._TracedConnection.__dict__["cursor"]).__name__,
       "connection_shortcut": type(sqlite3_integration._TracedConnection.__dict__["execute"]).__name__,
       "connect_wrapper": type(sqlite3_integration._connect_wrapper).__name__}

FILE = os.path.join(tempfile.mkdtemp(), "t.db")
STATEMENTS = ["SELECT 1", "SELECT a, b FROM t WHERE a > ?", "INSERT INTO t VALUES (?, ?)", "UPDATE t SET b = 'x'",
              "DELETE FROM t WHERE a = ?", "SELECT * FROM nope", "SELEC broken", b"SELECT 2"]


class MyCursor(sqlite3.Cursor):  # an app's cursor class overriding a traced method
    def execute(self, sql, *args):
        self.mine = getattr(self, "mine", 0) + 1
        return super().execute(sql, *args)


class PlainCursor(sqlite3.Cursor):
    pass


class MyConnection(sqlite3.Connection):
    pass


def connect(rnd):
    """sqlite3.connect in the shapes apps call it: the common ones (the compiled wrapper's), and the others."""
    import pathlib

    shape = rnd.choice(["plain", "plain", "keywords", "keywords", "database-keyword", "positional", "factory",
                        "path", "bytes", "unhashable", "bad-keyword", "file"])
    args, kwargs = {
        "plain": ((":memory:",), {}), "keywords": ((":memory:",), {"timeout": 1.5, "check_same_thread": False}),
        "database-keyword": ((), {"database": ":memory:"}), "positional": ((":memory:", 2.0), {}),
        "factory": ((":memory:",), {"factory": MyConnection, "isolation_level": None}),
        "path": ((pathlib.Path(":memory:"),), {}), "bytes": ((b":memory:",), {"uri": False}),
        "unhashable": ((bytearray(b":memory:"),), {}), "bad-keyword": ((":memory:",), {"nope": 1}),
        "file": ((FILE,), {"detect_types": 0}),
    }[shape]
    conn = sqlite3.connect(*args, **kwargs)
    try:
        return [shape, type(conn).__name__, isinstance(conn, sqlite3.Connection), conn.isolation_level,
                sorted(vars(conn)), conn.execute("SELECT 1").fetchall()]
    finally:
        conn.close()


def shapes(rnd, conn, log):
    """The calls of other shapes: keywords, no statement, too many arguments, a bound method kept, the real
    class's method called directly, a cursor class of the app's own."""
    shape = rnd.choice(["keyword", "none", "many-args", "bound", "direct", "factory", "plain-factory", "name",
                        "kw-factory", "conn-keyword", "conn-none", "conn-many-args", "conn-own-cursor"])
    if shape == "conn-keyword":  # the connection's shortcuts, called in other shapes
        return conn.execute(sql="SELECT 4").fetchall()
    if shape == "conn-none":
        return conn.executemany()
    if shape == "conn-many-args":
        return conn.execute("SELECT ?", (1,), "extra", "more")
    if shape == "conn-own-cursor":  # an instance attribute shadowing cursor(): the shortcut calls it
        conn.cursor = lambda: sqlite3.Connection.cursor(conn, MyCursor)
        try:
            cur = conn.execute("SELECT ?", (5,))
            return [cur.fetchall(), type(cur).__name__, cur.mine]
        finally:
            del conn.cursor
    cur = conn.cursor(MyCursor if shape == "factory" else PlainCursor) if shape in ("factory", "plain-factory") \
        else conn.cursor(factory=MyCursor) if shape == "kw-factory" else conn.cursor()
    if shape == "keyword":
        return cur.execute("SELECT ?", parameters=(1,))
    if shape == "none":
        return cur.execute()
    if shape == "many-args":
        return cur.execute("SELECT ?", (1,), "extra")
    if shape == "bound":
        run = cur.execute
        return [run("SELECT ?", (i,)).fetchall() for i in range(2)]
    if shape == "direct":
        return sqlite3.Cursor.execute(cur, "SELECT 3").fetchall()
    if shape == "name":
        return [type(cur).execute.__name__, type(cur).executescript.__qualname__, isinstance(cur, sqlite3.Cursor)]
    got = cur.execute("SELECT a FROM t WHERE a > ?", (rnd.randint(0, 5),)).fetchall()
    return [type(cur).__name__, getattr(cur, "mine", None), got, cur.rowcount]


def step(rnd, conn, log):
    what = rnd.choice(["execute", "execute", "cursor", "many", "script", "commit", "rollback", "shapes", "connect"])
    try:
        if what == "connect":
            log.append([what] + connect(rnd))
            return
        if what == "shapes":
            log.append([what, repr(shapes(rnd, conn, log))])
            return
        if what == "execute":
            sql = rnd.choice(STATEMENTS)
            params = (rnd.randint(0, 5),) if "?" in str(sql) and "VALUES" not in str(sql) else \
                (rnd.randint(0, 9), "v") if "VALUES" in str(sql) else ()
            cur = conn.execute(sql, params)
            log.append([what, cur.rowcount, cur.fetchall() if cur.description else None])
        elif what == "cursor":
            cur = conn.cursor()
            cur.execute("SELECT a FROM t ORDER BY a")
            log.append([what, cur.fetchall()])
        elif what == "many":
            cur = conn.executemany("INSERT INTO t VALUES (?, ?)", [(i, "m%d" % i) for i in range(rnd.randint(0, 3))])
            log.append([what, cur.rowcount])
        elif what == "script":
            conn.executescript("INSERT INTO t VALUES (100, 's'); DELETE FROM t WHERE a = 100;")
            log.append([what])
        else:
            getattr(conn, what)()
            log.append([what])
    except Exception as exc:
        log.append([what, "raised", type(exc).__name__, str(exc)])


def program(seed):
    rnd = random.Random(seed)
    m._Ids.rng.seed(seed)
    Sampling.configure(rnd.choice([1.0, 1.0, 0.0, 0.5]), 0)
    del handed[:]
    log = []
    conn = sqlite3.connect(":memory:")
    conn.execute("CREATE TABLE t (a INTEGER, b TEXT)")
    for _ in range(rnd.randint(1, 6)):
        where = rnd.choice(["top", "top", "sampled", "unsampled", "db-parent", "suppressed"])
        if where == "top":
            step(rnd, conn, log)
        elif where == "suppressed":
            contextvars.copy_context().run(lambda: (suppress_instrumentation(), step(rnd, conn, log)))
        elif where == "db-parent":  # a database span current: a call inside it makes none
            with Span("sqlite", kind="client", **{"db.system": "sqlite"}):
                step(rnd, conn, log)
        else:
            ratio = 1.0 if where == "sampled" else 0.0
            Sampling.configure(ratio, 0)
            with Span("outer"):
                step(rnd, conn, log)
        log.append(["current", current_span() is not None])
    conn.close()
    out["programs"].append({"log": log, "handed": [[describe(s) for s in g] for g in handed],
                            "unsampled": m.unsampled_count(reset=True)})


for seed in range(int(sys.argv[1])):
    contextvars.Context().run(program, seed)
print(json.dumps(out))
'''


def test_both_db_paths_do_the_same_to_random_programs():
    require_compiled("db_run")
    compiled, python = run_driver(DRIVER, PROGRAMS, True), run_driver(DRIVER, PROGRAMS, False)
    assert compiled["compiled"] and not python["compiled"]
    assert (compiled["cursor_method"], python["cursor_method"]) == ("Hook", "function")
    assert (compiled["cursor_factory"], python["cursor_factory"]) == ("Hook", "function")
    assert (compiled["connection_shortcut"], python["connection_shortcut"]) == ("Hook", "function")
    assert (compiled["connect_wrapper"], python["connect_wrapper"]) == ("Hook", "function")
    assert_same(compiled["programs"], python["programs"], "program")
    shapes = {entry[1].split("(")[0] for p in python["programs"] for entry in p["log"] if entry[0] == "shapes"}
    assert len([e for p in python["programs"] for e in p["log"] if e[0] == "shapes"]) >= 20, shapes
    spans = [s for p in python["programs"] for g in p["handed"] for s in g]
    attributes = {k for s in spans for k, _ in s["attributes"]}
    # the programs do cover what they are meant to: statements, row counts, errors, every kind of call
    assert {"db.query.text", "db.response.affected_rows", "error.type"} <= attributes  # (SELECT: sqlite says -1)
    assert {"connect", "COMMIT", "ROLLBACK", "sqlite"} <= {s["name"] for s in spans}
    connects = [e for p in python["programs"] for e in p["log"] if e[0] == "connect"]
    assert {e[1] for e in connects} >= {"plain", "keywords", "factory", "file"}, connects
    assert any(e[1] == "raised" for e in connects)
    assert any(s["status"] == "error" for s in spans) and any(p["unsampled"] for p in python["programs"])


def test_the_db_tests_pass_on_the_other_path():
    """This process runs one implementation; the DB-API tests run on the other."""
    require_compiled("db_run")
    pass_on_the_other_side(["tests/test_dbapi.py", "tests/test_metrics.py"], _dbapi.run is not _dbapi._run)


def test_the_compiled_path_serves_where_the_compiled_span_core_does():
    from autoinstr.trace import span as span_module

    compiled = span_module._compiled_core is not None and compiled_has("db_run")
    assert (_dbapi.run is not _dbapi._run) == compiled
