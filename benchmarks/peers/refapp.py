"""The reference app every agent is measured on: a small Flask app with four kinds of pages.

    /hello            a constant string
    /users/<int:id>   a route with a converter, a small JSON answer
    /db               three SQLite queries on a fresh connection (as a request-scoped connection would be)
    /outgoing         one outgoing `requests` call to the suite's stub server (REFAPP_STUB_URL)

REFAPP_DB names the SQLite file (created with its table on import when missing). Nothing here knows about
any agent: each launcher instruments it the way it instruments any app.
"""

from __future__ import annotations

import os
import sqlite3
import tempfile

import requests
from flask import Flask, jsonify

DB_PATH = os.environ.get("REFAPP_DB") or os.path.join(tempfile.gettempdir(), "refapp-%d.db" % os.getpid())
STUB_URL = os.environ.get("REFAPP_STUB_URL", "http://127.0.0.1:9/")


def _create_db(path: str) -> None:
    conn = sqlite3.connect(path)
    try:
        conn.execute("CREATE TABLE IF NOT EXISTS users (id INTEGER PRIMARY KEY, name TEXT, email TEXT)")
        if conn.execute("SELECT COUNT(*) FROM users").fetchone()[0] == 0:
            conn.executemany("INSERT INTO users (id, name, email) VALUES (?, ?, ?)",
                             [(i, "user%d" % i, "user%d@example.com" % i) for i in range(1, 101)])
        conn.commit()
    finally:
        conn.close()


_create_db(DB_PATH)
app = Flask(__name__)
# One session, as a real app keeps: the stub is reached over a kept-alive connection, so the page measures
# the agent's client span and header injection, not a TCP handshake.
http = requests.Session()


@app.route("/hello")
def hello() -> str:
    return "Hello, World!"


@app.route("/users/<int:user_id>")
def user(user_id: int) -> object:
    return jsonify(id=user_id, name="user%d" % user_id)


@app.route("/db")
def db() -> object:
    conn = sqlite3.connect(DB_PATH)
    try:
        # through a cursor, as DB-API code does: sqlite3's own `conn.execute` shortcut is invisible to
        # OpenTelemetry's sqlite3 instrumentation, which would then not be measured tracing any query
        cur = conn.cursor()
        count = cur.execute("SELECT COUNT(*) FROM users").fetchone()[0]
        row = cur.execute("SELECT id, name, email FROM users WHERE id = ?", (7,)).fetchone()
        names = [r[0] for r in cur.execute("SELECT name FROM users WHERE id < ? ORDER BY id", (5,)).fetchall()]
    finally:
        conn.close()
    return jsonify(count=count, user=list(row), names=names)


@app.route("/outgoing")
def outgoing() -> object:
    resp = http.get(STUB_URL, timeout=10)
    return jsonify(status=resp.status_code, length=len(resp.content))
