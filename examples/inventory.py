"""The inventory service of the example: a Bottle app with its own SQLite database, served by wsgiref.

    autoinstr-run --service inventory python examples/inventory.py PORT DATA_DIR

The shop calls it over HTTP; under the agent, each call is one trace across both services.
"""

from __future__ import annotations

import os
import sqlite3
import sys
import time

import bottle

app = bottle.Bottle()
DB_PATH = ""


def db() -> sqlite3.Connection:
    return sqlite3.connect(DB_PATH)


def use(data_dir: str) -> None:
    global DB_PATH
    DB_PATH = os.path.join(data_dir, "inventory.db")


def setup(data_dir: str) -> None:
    """Creates the database (run_demo.py does it before the service starts, outside any trace)."""
    use(data_dir)
    with db() as conn:
        conn.execute("CREATE TABLE IF NOT EXISTS stock (sku INTEGER PRIMARY KEY, quantity INTEGER NOT NULL)")
        conn.executemany("INSERT OR REPLACE INTO stock VALUES (?, ?)", [(sku, 50 + sku) for sku in range(1, 21)])


@app.get("/stock/<sku:int>")
def stock(sku: int):
    conn = db()
    row = conn.execute("SELECT quantity FROM stock WHERE sku = ?", (sku,)).fetchone()
    conn.close()
    if row is None:
        bottle.abort(404, "unknown sku")
    return {"sku": sku, "quantity": row[0]}


@app.post("/reserve/<sku:int>")
def reserve(sku: int):
    conn = db()
    with conn:
        time.sleep(0.003)  # the warehouse system's lock: reservations are the slow call
        changed = conn.execute("UPDATE stock SET quantity = quantity - 1 WHERE sku = ? AND quantity > 0",
                               (sku,)).rowcount
    conn.close()
    if not changed:
        bottle.abort(409, "out of stock")
    return {"sku": sku, "reserved": 1}


if __name__ == "__main__":
    from wsgiref.simple_server import WSGIRequestHandler, make_server

    class QuietHandler(WSGIRequestHandler):
        def log_message(self, *args: object) -> None:
            pass

    use(sys.argv[2])
    make_server("127.0.0.1", int(sys.argv[1]), app, handler_class=QuietHandler).serve_forever()
