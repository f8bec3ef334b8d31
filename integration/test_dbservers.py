"""Smoke tests of the real database servers that conftest's `postgres` and `mariadb` fixtures start: each
driver connects over TCP with user and password, creates a table, inserts and selects. No agent involved."""

from __future__ import annotations

import asyncio
import importlib
import os
import uuid

import pytest


def _driver(name: str):
    """The driver module; a skip when it isn't installed, or a failure under AUTOINSTR_REQUIRE_DB_SERVERS=1."""
    if os.environ.get("AUTOINSTR_REQUIRE_DB_SERVERS") == "1":
        try:
            return importlib.import_module(name)
        except ImportError as exc:
            pytest.fail("AUTOINSTR_REQUIRE_DB_SERVERS=1, but the %s driver is missing: %s" % (name, exc),
                        pytrace=False)
    return pytest.importorskip(name, reason="the %s driver is not installed (pip install '.[test]')" % name)


def _table() -> str:
    return "smoke_" + uuid.uuid4().hex[:12]


def test_postgres_info(postgres):
    assert postgres.kind == "postgresql"
    assert postgres.host == "127.0.0.1" and postgres.port > 0
    assert "port=%d" % postgres.port in postgres.dsn and "password=autoinstr" in postgres.dsn


def test_psycopg2(postgres):
    psycopg2 = _driver("psycopg2")
    table = _table()
    conn = psycopg2.connect(postgres.dsn)
    try:
        with conn, conn.cursor() as cur:
            cur.execute("CREATE TABLE %s (id serial PRIMARY KEY, name text NOT NULL)" % table)
            cur.executemany("INSERT INTO %s (name) VALUES (%%s)" % table, [("a",), ("b",)])
            cur.execute("SELECT name FROM %s ORDER BY id" % table)
            assert [r[0] for r in cur.fetchall()] == ["a", "b"]
            cur.execute("SELECT current_user, current_database(), inet_server_addr()::text")
            assert cur.fetchone() == ("autoinstr", "autoinstr_test", "127.0.0.1/32")
    finally:
        conn.close()


def test_psycopg2_rejects_wrong_password(postgres):
    psycopg2 = _driver("psycopg2")
    with pytest.raises(psycopg2.OperationalError, match="password authentication failed"):
        psycopg2.connect(postgres.dsn.replace("password=autoinstr", "password=wrong"))


def test_psycopg_sync(postgres):
    psycopg = _driver("psycopg")
    table = _table()
    with psycopg.connect(postgres.dsn) as conn:
        conn.execute("CREATE TABLE %s (id int PRIMARY KEY, name text)" % table)
        conn.execute("INSERT INTO %s VALUES (%%s, %%s), (%%s, %%s)" % table, (1, "x", 2, "y"))
        rows = conn.execute("SELECT id, name FROM %s ORDER BY id" % table).fetchall()
    assert rows == [(1, "x"), (2, "y")]


def test_psycopg_async(postgres):
    psycopg = _driver("psycopg")
    table = _table()

    async def main() -> list:
        async with await psycopg.AsyncConnection.connect(postgres.dsn) as conn:
            await conn.execute("CREATE TABLE %s (id int PRIMARY KEY, name text)" % table)
            await conn.execute("INSERT INTO %s VALUES (%%s, %%s)" % table, (7, "async"))
            cur = await conn.execute("SELECT id, name FROM %s" % table)
            return await cur.fetchall()

    assert asyncio.run(main()) == [(7, "async")]


def test_mariadb_info(mariadb):
    assert mariadb.kind == "mariadb"
    assert "MariaDB" in mariadb.version
    assert mariadb.pymysql_kwargs()["host"] == "127.0.0.1"


def test_pymysql(mariadb):
    pymysql = _driver("pymysql")
    table = _table()
    conn = pymysql.connect(**mariadb.pymysql_kwargs())
    try:
        with conn.cursor() as cur:
            cur.execute("CREATE TABLE %s (id INT AUTO_INCREMENT PRIMARY KEY, name VARCHAR(20))" % table)
            cur.executemany("INSERT INTO %s (name) VALUES (%%s)" % table, [("a",), ("b",)])
            conn.commit()
            cur.execute("SELECT name FROM %s ORDER BY id" % table)
            assert [r[0] for r in cur.fetchall()] == ["a", "b"]
            cur.execute("SELECT CURRENT_USER(), DATABASE()")
            assert cur.fetchone() == ("autoinstr@127.0.0.1", "autoinstr_test")
    finally:
        conn.close()


def test_pymysql_rejects_wrong_password(mariadb):
    pymysql = _driver("pymysql")
    with pytest.raises(pymysql.err.OperationalError, match="Access denied"):
        pymysql.connect(**dict(mariadb.pymysql_kwargs(), password="wrong"))


def test_mysqldb(mariadb):
    MySQLdb = _driver("MySQLdb")
    table = _table()
    conn = MySQLdb.connect(**mariadb.mysqldb_kwargs())
    try:
        cur = conn.cursor()
        cur.execute("CREATE TABLE %s (id INT PRIMARY KEY, name VARCHAR(20))" % table)
        cur.execute("INSERT INTO %s VALUES (%%s, %%s)" % table, (1, "mysqlclient"))
        conn.commit()
        cur.execute("SELECT id, name FROM %s" % table)
        assert cur.fetchall() == ((1, "mysqlclient"),)
        assert conn.get_host_info().startswith("127.0.0.1 via TCP/IP")
    finally:
        conn.close()
