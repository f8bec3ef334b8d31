"""Database drivers end to end: each driver runs a script against a real server (PostgreSQL and MariaDB
from Debian's packages, started by the fixtures; sqlite3 on files), once plainly and once under
`autoinstr-run`. The two runs must print the same results (transparency), and the traced run's spans,
read back from the store, must be there, linked, named, attributed, and free of every literal."""

from __future__ import annotations

import json
import os

import pytest

# Values the scripts put into statements or bind as parameters: none may reach any exported byte.
SECRETS = ("alice@example.com", "carol@example.net", "x0@example.com", "4111111111111111", "hunter2",
           "Bob Parameter", "secret-note")

COMMON = r"""
import json, sys
import autoinstr

cfg = json.loads(sys.argv[1])
out = {}

def done():
    print("RESULT " + json.dumps(out, sort_keys=True, default=str))
"""

SQLITE = COMMON + r"""
import os, sqlite3
path = os.path.join(cfg["dir"], cfg["run"] + ".db")
with autoinstr.span("work"):
    conn = sqlite3.connect(path)
    out["isinstance"] = [isinstance(conn, sqlite3.Connection), isinstance(conn.cursor(), sqlite3.Cursor)]
    conn.execute("CREATE TABLE IF NOT EXISTS users (id INTEGER PRIMARY KEY, email TEXT, card TEXT)")
    conn.execute("INSERT INTO users (email, card) VALUES ('alice@example.com', '4111111111111111')")
    conn.executemany("INSERT INTO users (email) VALUES (?)", [("x0@example.com",), ("Bob Parameter",)])
    conn.commit()
    cur = conn.cursor()
    out["same_cursor"] = cur.execute("SELECT id, email FROM users WHERE email LIKE '%example%' /* hunter2 */") is cur
    out["rows"] = cur.fetchall()
    cur.execute("UPDATE users SET card = ? WHERE id IN (1, 2, 3)", ("secret-note",))
    out["rowcount"] = cur.rowcount
    conn.rollback()
    conn.executescript("CREATE TABLE IF NOT EXISTS notes (body TEXT); INSERT INTO notes VALUES ('carol@example.net');")
    try:
        conn.execute("SELECT * FROM no_such_table")
    except sqlite3.OperationalError as e:
        out["error"] = [type(e).__module__, type(e).__name__, str(e)]
    conn.close()
done()
"""

PSYCOPG2 = COMMON + r"""
import io, uuid
import psycopg2, psycopg2.extensions, psycopg2.extras
with autoinstr.span("work"):
    conn = psycopg2.connect(cfg["dsn"])
    cur = conn.cursor()
    out["isinstance"] = [isinstance(conn, psycopg2.extensions.connection),
                         isinstance(cur, psycopg2.extensions.cursor)]
    cur.execute("DROP TABLE IF EXISTS users")
    cur.execute("CREATE TABLE users (id serial PRIMARY KEY, email text, uid uuid, card text)")
    psycopg2.extras.register_uuid(conn_or_curs=cur)
    psycopg2.extras.register_uuid(conn_or_curs=conn)
    psycopg2.extensions.register_type(psycopg2.extensions.UNICODE, conn)
    cur.execute("INSERT INTO users (email, uid) VALUES (%s, %s)", ("alice@example.com", uuid.UUID(int=1)))
    cur.execute("INSERT INTO users (email, card) VALUES ('carol@example.net', '4111111111111111')")
    psycopg2.extras.execute_values(cur, "INSERT INTO users (email) VALUES %s",
                                   [("x%d@example.com" % i,) for i in range(5)])
    cur.executemany("UPDATE users SET card = %(card)s WHERE id = %(id)s",
                    [{"card": "secret-note", "id": 1}, {"card": "hunter2", "id": 2}])
    out["rowcount"] = cur.rowcount
    conn.commit()
    cur.execute("SELECT uid FROM users WHERE id = 1")
    out["uuid"] = [type(v).__name__ for v in cur.fetchone()]
    out["description"] = [d[0] for d in cur.description]
    dcur = conn.cursor(cursor_factory=psycopg2.extras.RealDictCursor)
    dcur.execute("SELECT id, email FROM users ORDER BY id LIMIT 2")
    out["dict_rows"] = dcur.fetchall()
    out["dict_cursor_class"] = isinstance(dcur, psycopg2.extras.RealDictCursor)
    named = conn.cursor("server_side")
    named.execute("SELECT id FROM users ORDER BY id")
    out["named"] = [r[0] for r in named.fetchmany(3)]
    named.close()
    buf = io.StringIO()
    cur.copy_expert("COPY (SELECT id FROM users ORDER BY id) TO STDOUT", buf)
    out["copy"] = buf.getvalue().split()
    cur.execute("CREATE OR REPLACE FUNCTION add_one(i integer) RETURNS integer AS "
                "$$ BEGIN RETURN i + 1; END; $$ LANGUAGE plpgsql")
    cur.callproc("add_one", (41,))
    out["callproc"] = cur.fetchone()[0]
    try:
        cur.execute("SELECT * FROM no_such_table WHERE note = 'hunter2'")
    except psycopg2.Error as e:
        out["error"] = [type(e).__module__, type(e).__name__, e.pgcode]
    conn.rollback()
    with conn:
        with conn.cursor() as c2:
            c2.execute("SELECT count(*) FROM users")
            out["with"] = c2.fetchone()[0]
    conn.close()
try:
    psycopg2.connect(cfg["down_dsn"], connect_timeout=5)
except psycopg2.OperationalError as e:
    out["down"] = type(e).__name__
done()
"""

PSYCOPG = COMMON + r"""
import asyncio
import psycopg
from psycopg.rows import dict_row
with autoinstr.span("work"):
    conn = psycopg.connect(cfg["dsn"])
    out["isinstance"] = [isinstance(conn, psycopg.Connection), isinstance(conn.cursor(), psycopg.Cursor)]
    conn.execute("DROP TABLE IF EXISTS users")
    conn.execute("CREATE TABLE users (id serial PRIMARY KEY, email text, card text)")
    with conn.cursor() as cur:
        cur.execute("INSERT INTO users (email, card) VALUES (%s, %s)", ("alice@example.com", "4111111111111111"))
        cur.execute("INSERT INTO users (email) VALUES ('carol@example.net')")
        cur.executemany("INSERT INTO users (email) VALUES (%s)", [("x%d@example.com" % i,) for i in range(3)])
        out["rowcount"] = cur.rowcount
        with cur.copy("COPY users (email) FROM STDIN") as copy:
            copy.write_row(("Bob Parameter",))
        cur.execute("SELECT id, email FROM users WHERE card IS NULL ORDER BY id")
        out["rows"] = cur.fetchall()
    conn.commit()
    with conn.cursor(row_factory=dict_row) as cur:
        cur.execute("SELECT id, email FROM users ORDER BY id LIMIT 1")
        out["dict_row"] = cur.fetchone()
    with conn.cursor(name="server_side") as cur:
        cur.execute("SELECT id FROM users ORDER BY id")
        out["server_side"] = [r[0] for r in cur.fetchmany(2)]
    try:
        conn.execute("SELECT * FROM no_such_table WHERE note = 'hunter2'")
    except psycopg.Error as e:
        out["error"] = [type(e).__module__, type(e).__name__, e.sqlstate]
    conn.rollback()
    with conn.transaction():
        out["tx"] = conn.execute("SELECT count(*) FROM users").fetchone()[0]
    conn.close()

    async def main():
        aconn = await psycopg.AsyncConnection.connect(cfg["dsn"])
        async with aconn.cursor() as cur:
            await cur.execute("SELECT email FROM users WHERE email = %s", ("alice@example.com",))
            out["async"] = await cur.fetchone()
            await cur.executemany("UPDATE users SET card = %s WHERE id = %s", [("secret-note", 1), ("hunter2", 2)])
            async with cur.copy("COPY (SELECT id FROM users ORDER BY id LIMIT 2) TO STDOUT") as copy:
                out["async_copy"] = [bytes(b).decode() async for b in copy]
        await aconn.commit()
        await aconn.close()

    asyncio.run(main())
try:
    psycopg.connect(cfg["down_dsn"], connect_timeout=5)
except psycopg.OperationalError as e:
    out["down"] = type(e).__name__
done()
"""

MYSQL_BODY = r"""
with autoinstr.span("work"):
    conn = connect(**cfg["kwargs"])
    cur = conn.cursor()
    out["isinstance"] = [isinstance(conn, CONNECTION), isinstance(cur, CURSOR)]
    cur.execute("DROP TABLE IF EXISTS users")
    cur.execute("CREATE TABLE users (id INT AUTO_INCREMENT PRIMARY KEY, email VARCHAR(100), card VARCHAR(40))")
    cur.execute('INSERT INTO users (email, card) VALUES ("alice@example.com", \'4111111111111111\')')
    out["lastrowid"] = cur.lastrowid
    cur.execute("INSERT INTO users (email) VALUES (%s)", ("carol@example.net",))
    cur.executemany("INSERT INTO users (email) VALUES (%s)", [("x%d@example.com" % i,) for i in range(3)])
    out["many_insert"] = cur.rowcount
    cur.executemany("UPDATE users SET card = %s WHERE id = %s", [("secret-note", 1), ("hunter2", 2)])
    out["many_update"] = cur.rowcount
    conn.commit()
    cur.execute("SELECT id, email FROM users WHERE email LIKE %s ORDER BY id", ("%example%",))
    out["rows"] = [list(r) for r in cur.fetchall()]
    out["description"] = [d[0] for d in cur.description]
    dcur = conn.cursor(DICT_CURSOR)
    dcur.execute("SELECT id, email FROM users ORDER BY id LIMIT 1")
    out["dict_row"] = dcur.fetchone()
    scur = conn.cursor(SS_CURSOR)
    scur.execute("SELECT id FROM users ORDER BY id")
    out["ss_rows"] = [r[0] for r in scur]
    scur.close()
    cur.execute("DROP PROCEDURE IF EXISTS add_one")
    cur.execute("CREATE PROCEDURE add_one(IN i INT) BEGIN SELECT i + 1; END")
    cur.callproc("add_one", (41,))
    out["callproc"] = [list(r) for r in cur.fetchall()]
    while cur.nextset():
        pass
    try:
        cur.execute("SELECT * FROM no_such_table WHERE note = 'hunter2'")
    except ERROR as e:
        out["error"] = [type(e).__module__, type(e).__name__, e.args[0]]
    conn.rollback()
    conn.close()
try:
    connect(**cfg["down_kwargs"])
except ERROR as e:
    out["down"] = [type(e).__name__, e.args[0]]
done()
"""

PYMYSQL = COMMON + r"""
import pymysql, pymysql.cursors
connect, CONNECTION, CURSOR = pymysql.connect, pymysql.connections.Connection, pymysql.cursors.Cursor
DICT_CURSOR, SS_CURSOR, ERROR = pymysql.cursors.DictCursor, pymysql.cursors.SSCursor, pymysql.MySQLError
""" + MYSQL_BODY

MYSQLDB = COMMON + r"""
import MySQLdb, MySQLdb.connections, MySQLdb.cursors
connect, CONNECTION, CURSOR = MySQLdb.connect, MySQLdb.connections.Connection, MySQLdb.cursors.BaseCursor
DICT_CURSOR, SS_CURSOR, ERROR = MySQLdb.cursors.DictCursor, MySQLdb.cursors.SSCursor, MySQLdb.MySQLError
""" + MYSQL_BODY


def _down_port():
    from fleet import free_port

    return free_port()


def _run_both(sandbox, script: str, cfg: dict, service: str):
    """The script plainly, then under the agent: same printed results; returns (result, spans)."""
    path = sandbox.write(service + ".py", script)
    results = []
    for launcher in (False, True):
        run = dict(cfg, run="traced" if launcher else "plain")
        proc = sandbox.ok(["python", path, json.dumps(run)], launcher=launcher, service=service if launcher else None)
        lines = [line for line in proc.stdout.splitlines() if line.startswith("RESULT ")]
        assert lines, proc.stdout + proc.stderr
        assert "autoinstr warning" not in proc.stderr, proc.stderr
        results.append(json.loads(lines[-1][7:]))
    plain, traced = results
    assert traced == plain, "results differ with the agent:\nplain  %r\ntraced %r" % (plain, traced)
    spans = [s for s in sandbox.store_spans() if s["service"] == service]
    return traced, spans


def _check_common(spans: list, system: str) -> dict:
    """Every database span: a client span under the script's `work` span (or a root for the connect to
    the down server), with the connection's attributes; nothing secret anywhere. Returns spans by name."""
    work = [s for s in spans if s["name"] == "work"]
    assert len(work) == 1, [s["name"] for s in spans]
    db = [s for s in spans if s["attributes"].get("db.system") in (system, "mysql", "mariadb")]
    assert db, [s["name"] for s in spans]
    blob = json.dumps(spans)
    leaked = [secret for secret in SECRETS if secret in blob]
    assert not leaked, leaked
    for s in db:
        assert s["kind"] == "client", s
        if s["parent_id"] is not None:
            assert s["parent_id"] == work[0]["span_id"] and s["trace_id"] == work[0]["trace_id"], s
    by_name: dict = {}
    for s in db:
        by_name.setdefault(s["name"], []).append(s)
    return by_name


def _queries(by_name: dict, prefix: str) -> list:
    return [s for name, group in by_name.items() if name.startswith(prefix) for s in group]


def test_sqlite3(sandbox):
    result, spans = _run_both(sandbox, SQLITE, {"dir": sandbox.dir}, "sqlite-app")
    assert result["isinstance"] == [True, True] and result["same_cursor"] is True
    by_name = _check_common(spans, "sqlite")
    select = by_name["SELECT users"][0]
    a = select["attributes"]
    assert a["db.system"] == "sqlite" and a["db.namespace"] == "traced.db"
    assert a["db.operation.name"] == "SELECT" and a["db.collection.name"] == "users"
    assert a["db.query.text"] == "SELECT id, email FROM users WHERE email LIKE ?"
    insert = [s["attributes"]["db.query.text"] for s in by_name["INSERT users"]]
    assert "INSERT INTO users (email, card) VALUES (?)" in insert
    assert "INSERT INTO users (email) VALUES (?)" in insert  # executemany: one span
    assert len(by_name["INSERT users"]) == 2
    update = by_name["UPDATE users"][0]["attributes"]
    assert update["db.query.text"] == "UPDATE users SET card = ? WHERE id IN (?)"
    assert update["db.response.affected_rows"] == 3
    assert {"COMMIT", "ROLLBACK", "connect"} <= set(by_name)
    failed = [s for s in spans if s["status"] == "error"]
    assert len(failed) == 1 and failed[0]["name"] == "SELECT no_such_table"
    assert failed[0]["attributes"]["error.type"] == "sqlite3.OperationalError"
    assert failed[0]["events"] and failed[0]["events"][0]["name"] == "exception"


@pytest.fixture
def pg_cfg(postgres):
    down = "host=127.0.0.1 port=%d dbname=x user=x password=hunter2" % _down_port()
    return {"dsn": postgres.dsn, "down_dsn": down, "port": postgres.port, "dbname": postgres.dbname}


def _check_postgres(by_name: dict, spans: list, cfg: dict) -> None:
    select = _queries(by_name, "SELECT users")[0]["attributes"]
    assert select["db.namespace"] == cfg["dbname"] and select["server.address"] == "127.0.0.1"
    assert select["server.port"] == cfg["port"]
    assert "INSERT users" in by_name and "UPDATE users" in by_name
    assert len(by_name["UPDATE users"]) == 1 or all(s["attributes"]["db.query.text"].startswith("UPDATE users SET")
                                                    for s in by_name["UPDATE users"])
    failed = [s for s in spans if s["status"] == "error"]
    names = sorted(s["name"] for s in failed)
    assert names == ["SELECT no_such_table", "connect"], names
    error = [s for s in failed if s["name"] != "connect"][0]["attributes"]
    assert error["db.response.status_code"] == "42P01"
    down = [s for s in failed if s["name"] == "connect"][0]
    assert down["parent_id"] is None and down["attributes"]["error.type"].endswith("OperationalError")
    assert {"COMMIT", "ROLLBACK"} <= set(by_name)


def test_psycopg2(sandbox, pg_cfg):
    result, spans = _run_both(sandbox, PSYCOPG2, pg_cfg, "pg2-app")
    assert result["isinstance"] == [True, True] and result["uuid"] == ["UUID"] and result["callproc"] == 42
    assert result["error"][2] == "42P01" and result["down"] == "OperationalError"
    by_name = _check_common(spans, "postgresql")
    _check_postgres(by_name, spans, pg_cfg)
    texts = [s["attributes"]["db.query.text"] for group in by_name.values() for s in group
             if "db.query.text" in s["attributes"]]
    assert "INSERT INTO users (email) VALUES (?)" in texts  # execute_values: one VALUES placeholder
    assert "UPDATE users SET card = %(card)s WHERE id = %(id)s" in texts
    assert "CALL add_one" in by_name
    assert any(t.startswith("COPY (SELECT id FROM users") for t in texts)
    assert len(by_name["UPDATE users"]) == 1


def test_psycopg3_sync_and_async(sandbox, pg_cfg):
    result, spans = _run_both(sandbox, PSYCOPG, pg_cfg, "pg3-app")
    assert result["isinstance"] == [True, True] and result["error"][2] == "42P01"
    assert result["async"] == ["alice@example.com"] and len(result["async_copy"]) == 2
    by_name = _check_common(spans, "postgresql")
    _check_postgres(by_name, spans, pg_cfg)
    copies = _queries(by_name, "COPY")
    assert len(copies) == 2, sorted(by_name)
    texts = [s["attributes"]["db.query.text"] for s in _queries(by_name, "SELECT users")]
    assert "SELECT email FROM users WHERE email = %s" in texts  # the async cursor's


@pytest.fixture
def mysql_cfg(mariadb):
    down = dict(mariadb.pymysql_kwargs(), port=_down_port(), password="hunter2", connect_timeout=5)
    return {"kwargs": mariadb.pymysql_kwargs(), "down_kwargs": down, "port": mariadb.port, "dbname": mariadb.dbname}


def _check_mysql(result: dict, spans: list, cfg: dict) -> None:
    assert result["isinstance"] == [True, True] and result["many_insert"] == 3 and result["many_update"] == 2
    assert result["callproc"] == [[42]] and result["error"][2] == 1146 and result["down"][1] in (2002, 2003)
    by_name = _check_common(spans, "mariadb")
    a = by_name["SELECT users"][0]["attributes"]
    assert a["db.system"] == "mariadb" and a["db.namespace"] == cfg["dbname"] and a["server.port"] == cfg["port"]
    insert = [s["attributes"]["db.query.text"] for s in by_name["INSERT users"]]
    # MySQL's double-quoted strings are literals; executemany of an INSERT is one span, of an UPDATE too
    assert "INSERT INTO users (email, card) VALUES (?)" in insert and len(insert) == 3
    assert len(by_name["UPDATE users"]) == 1
    assert "CALL add_one" in by_name
    failed = [s for s in spans if s["status"] == "error"]
    assert sorted(s["name"] for s in failed) == ["SELECT no_such_table", "connect"]
    error = [s for s in failed if s["name"] != "connect"][0]["attributes"]
    assert error["db.response.status_code"] == "1146"


def test_pymysql(sandbox, mysql_cfg):
    result, spans = _run_both(sandbox, PYMYSQL, mysql_cfg, "pymysql-app")
    _check_mysql(result, spans, mysql_cfg)


def test_mysqlclient(sandbox, mysql_cfg):
    result, spans = _run_both(sandbox, MYSQLDB, mysql_cfg, "mysqldb-app")
    _check_mysql(result, spans, mysql_cfg)


WEB_APP = r"""
import json, os, sys
from wsgiref.simple_server import make_server

cfg = json.loads(os.environ["DB_CFG"])


def sqlite_query():
    import sqlite3
    conn = sqlite3.connect(os.path.join(cfg["dir"], "web.db"))
    conn.execute("CREATE TABLE IF NOT EXISTS t (email TEXT)")
    rows = conn.execute("SELECT count(*) FROM t WHERE email = 'alice@example.com'").fetchall()
    conn.close()
    return rows


def psycopg2_query():
    import psycopg2
    conn = psycopg2.connect(cfg["dsn"])
    cur = conn.cursor()
    cur.execute("SELECT %s::text AS email", ("alice@example.com",))
    rows = cur.fetchall()
    conn.close()
    return rows


def psycopg_query():
    import psycopg
    with psycopg.connect(cfg["dsn"]) as conn:
        return conn.execute("SELECT 'carol@example.net' AS email").fetchall()


def mysql_query(module):
    conn = module.connect(**cfg["mysql"])
    cur = conn.cursor()
    cur.execute("SELECT %s AS email", ("alice@example.com",))
    rows = cur.fetchall()
    conn.close()
    return rows


ROUTES = {"/sqlite3": sqlite_query, "/psycopg2": psycopg2_query, "/psycopg": psycopg_query,
          "/pymysql": lambda: mysql_query(__import__("pymysql")),
          "/mysqldb": lambda: mysql_query(__import__("MySQLdb"))}


def app(environ, start_response):
    rows = ROUTES[environ["PATH_INFO"]]()
    start_response("200 OK", [("Content-Type", "application/json")])
    return [json.dumps(rows, default=str).encode()]


make_server("127.0.0.1", int(sys.argv[1]), app).serve_forever()
"""


def test_every_driver_inside_a_traced_request(sandbox, pg_cfg, mysql_cfg):
    """Each driver's spans are children of the request's server span, on a real WSGI server."""
    from fleet import Server, drive_fleet, get_ok

    sandbox.write("webapp.py", WEB_APP)
    cfg = {"dir": sandbox.dir, "dsn": pg_cfg["dsn"], "mysql": mysql_cfg["kwargs"]}

    class Member:
        name, agent = "db-web", True

        @staticmethod
        def argv(port, bindir):
            return ["python", os.path.join(sandbox.dir, "webapp.py"), str(port)]

    server = Server(sandbox, Member, env={"DB_CFG": json.dumps(cfg)})
    paths = ["/sqlite3", "/psycopg2", "/psycopg", "/pymysql", "/mysqldb"]
    # one more request at the end: wsgiref serves one at a time, so when it is answered every request
    # of interest has ended (a SIGTERM right after the last response could beat the end of its span)
    drive_fleet([server], lambda s: [get_ok(s.port, p) for p in paths + ["/sqlite3"]], 30, 20)
    spans = sandbox.jsonl_spans(server.jsonl)
    assert not [s for s in SECRETS if s in json.dumps(spans)]
    servers = {s["span_id"]: s for s in spans if s["kind"] == "server"}
    assert set(paths) <= {s["attributes"]["url.path"] for s in servers.values()}
    for path in paths:
        request = next(s for s in servers.values() if s["attributes"]["url.path"] == path)
        children = [s for s in spans if s["parent_id"] == request["span_id"]]
        queries = [s for s in children if s["name"].startswith("SELECT")]
        assert len(queries) == 1 and queries[0]["kind"] == "client", (path, [c["name"] for c in children])
        assert queries[0]["trace_id"] == request["trace_id"]
        assert any(c["name"] == "connect" for c in children), path


CORPUS_SCRIPT = r"""
import json, sys
import autoinstr

systems = {"generic": "other_sql", "sqlite": "sqlite", "postgresql": "postgresql", "mysql": "mysql",
           "mariadb": "mariadb"}
with autoinstr.span("corpus"):
    for dialect, statement in json.load(open(sys.argv[1])):
        # what an integration records: the statement as run, named after db.system until exported
        system = systems[dialect]
        with autoinstr.span(system, kind="client", **{"db.system": system, "db.query.text": statement}):
            pass
"""


def test_sql_corpus_leaks_no_literal_into_any_exported_byte(sandbox):
    """The SQL corpus of tests/test_sql.py (over 100 real-world shapes) through the real pipeline: no
    secret of it in any byte of the jsonl file nor of the SQLite store file."""
    import importlib.util

    spec = importlib.util.spec_from_file_location(
        "corpus_of_test_sql", os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "tests", "test_sql.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    corpus = module.CORPUS
    assert len(corpus) >= 100
    path = os.path.join(sandbox.dir, "corpus.json")
    with open(path, "w") as f:
        json.dump([(case.dialect, case.statement) for case in corpus], f)
    sandbox.write("corpus.py", CORPUS_SCRIPT)
    sandbox.ok(["python", "corpus.py", path], env=sandbox.env(AUTOINSTR_EXPORTER="local,jsonl"))
    spans = sandbox.store_spans()
    assert len([s for s in spans if s["kind"] == "client"]) == len(corpus)
    blobs = []
    for name in os.listdir(sandbox.dir):
        if name.startswith(("spans.db", "spans.jsonl")):
            with open(os.path.join(sandbox.dir, name), "rb") as f:
                blobs.append(f.read().lower())
    blobs.append(json.dumps(spans).lower().encode())
    # distinctive secrets only: short numbers could turn up in ids and timestamps by chance
    secrets = {s for case in corpus for s in case.secrets
               if len(s) >= 6 and not (s.strip("-+.").isdigit() and len(s) < 12)}
    leaked = sorted(s for s in secrets if any(s.lower().encode() in blob for blob in blobs))
    assert not leaked, leaked
