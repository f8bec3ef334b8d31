"""The shop of the example: a Flask app with its own SQLite database, calling the inventory service
over HTTP with requests, served by werkzeug's threaded server.

    autoinstr-run --service shop python examples/shop_web.py PORT DATA_DIR INVENTORY_URL

Nothing here mentions tracing except two custom spans for work the agent cannot know about (pricing
rules, the payment provider). Server spans, SQL spans, outgoing HTTP spans and the trace that crosses
into the inventory service all come from autoinstr-run. One page is deliberately slow: /orders loads
each order's customer with its own query (the N+1 pattern), which `autoinstr report` makes obvious.
"""

from __future__ import annotations

import os
import random
import sqlite3
import sys
import time

import requests
from flask import Flask, abort, g, jsonify

import autoinstr

app = Flask("shop")
DB_PATH = ""
INVENTORY = ""
rng = random.Random(7)


def db() -> sqlite3.Connection:
    if "db" not in g:
        g.db = sqlite3.connect(DB_PATH)
    return g.db


@app.teardown_appcontext
def close_db(exc: object) -> None:
    conn = g.pop("db", None)
    if conn is not None:
        conn.close()


def use(data_dir: str) -> None:
    global DB_PATH
    DB_PATH = os.path.join(data_dir, "shop.db")


def setup(data_dir: str) -> None:
    """Creates the database (run_demo.py does it before the service starts, outside any trace)."""
    use(data_dir)
    conn = sqlite3.connect(DB_PATH)
    with conn:
        conn.executescript("""
            CREATE TABLE IF NOT EXISTS products (id INTEGER PRIMARY KEY, name TEXT, price REAL);
            CREATE TABLE IF NOT EXISTS customers (id INTEGER PRIMARY KEY, email TEXT, name TEXT);
            CREATE TABLE IF NOT EXISTS orders (id INTEGER PRIMARY KEY, customer_id INTEGER, product_id INTEGER,
                                               total REAL);
        """)
        conn.executemany("INSERT OR REPLACE INTO products VALUES (?, ?, ?)",
                         [(i, "product %d" % i, 3 + i % 7) for i in range(1, 21)])
        conn.executemany("INSERT OR REPLACE INTO customers VALUES (?, ?, ?)",
                         [(i, "customer%d@example.com" % i, "Customer %d" % i) for i in range(1, 51)])
        conn.executemany("INSERT OR REPLACE INTO orders VALUES (?, ?, ?, ?)",
                         [(i, 1 + i % 50, 1 + i % 20, 10.0 + i) for i in range(1, 201)])
    conn.close()


@app.route("/")
def index():
    rows = db().execute("SELECT id, name, price FROM products ORDER BY id").fetchall()
    return jsonify(products=[r[0] for r in rows])


@app.route("/products/<int:product_id>")
def product(product_id: int):
    row = db().execute("SELECT id, name, price FROM products WHERE id = ?", (product_id,)).fetchone()
    if row is None:
        abort(404)
    stock = requests.get("%s/stock/%d" % (INVENTORY, product_id), timeout=5).json()
    return jsonify(id=row[0], name=row[1], price=row[2], in_stock=stock["quantity"])


@app.route("/orders")
def orders():
    """The slow page: one query for the orders, then one more per order for its customer (N+1)."""
    conn = db()
    recent = conn.execute("SELECT id, customer_id, total FROM orders ORDER BY id DESC LIMIT 30").fetchall()
    out = []
    for order_id, customer_id, total in recent:
        time.sleep(0.0003)  # each round trip costs, as on a real database server
        email = conn.execute("SELECT email FROM customers WHERE id = ?", (customer_id,)).fetchone()[0]
        out.append({"order": order_id, "customer": email, "total": total})
    return jsonify(orders=out)


@app.route("/cart")
def cart():
    items = db().execute("SELECT id, price FROM products WHERE id IN (1, 2, 3)").fetchall()
    with autoinstr.span("pricing.rules", rules=3):
        time.sleep(0.001)
    return jsonify(items=len(items), total=sum(p for _, p in items) * 1.2)


@app.route("/checkout/<int:product_id>", methods=["POST"])
def checkout(product_id: int):
    reserved = requests.post("%s/reserve/%d" % (INVENTORY, product_id), timeout=5)
    if reserved.status_code != 200:
        abort(409)
    with autoinstr.span("payment.charge", provider="demo-pay"):
        time.sleep(rng.choice([0.002, 0.002, 0.02]))  # the payment provider is sometimes slow...
        if rng.random() < 0.1:
            raise RuntimeError("payment provider timed out")  # ...and sometimes fails: Flask answers 500
    conn = db()
    with conn:
        conn.execute("INSERT INTO orders (customer_id, product_id, total) VALUES (?, ?, ?)",
                     (rng.randint(1, 50), product_id, 9.5))
    return jsonify(ok=True)


if __name__ == "__main__":
    import logging

    from werkzeug.serving import make_server

    logging.getLogger("werkzeug").setLevel(logging.ERROR)  # keep the demo's output to what was measured
    app.logger.disabled = True
    use(sys.argv[2])
    INVENTORY = sys.argv[3]
    make_server("127.0.0.1", int(sys.argv[1]), app, threaded=True).serve_forever()
