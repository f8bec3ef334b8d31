"""The example shop as a real Flask web app, run under the agent by the README's main-job command.

It serves itself on a free 127.0.0.1 port (werkzeug's server, in a thread), drives a few hundred requests
at its own routes, and stops. Nothing in it mentions tracing except two custom spans for work the agent
cannot know about (pricing rules, the payment provider): the server spans, their route names, status codes
and errors all come from autoinstr-run.
"""

from __future__ import annotations

import http.client
import random
import sys
import threading
import time

from flask import Flask, abort, jsonify

import autoinstr

app = Flask("shop")
PRODUCTS = {i: {"id": i, "name": "product %d" % i, "price": 3 + i % 7} for i in range(1, 21)}
rng = random.Random(7)


def query(rows: int) -> list:
    time.sleep(0.0005 + rows * 0.0001)  # stands in for a database round trip (a later issue traces SQL)
    return list(range(rows))


@app.route("/")
def index():
    query(20)
    return jsonify(products=sorted(PRODUCTS))


@app.route("/products/<int:product_id>")
def product(product_id: int):
    query(1)
    if product_id not in PRODUCTS:
        abort(404)
    return jsonify(PRODUCTS[product_id])


@app.route("/cart")
def cart():
    items = query(rng.randint(1, 20))
    with autoinstr.span("pricing.rules", rules=3):
        time.sleep(0.001)
    return jsonify(items=len(items), total=sum(items) * 1.2)


@app.route("/checkout", methods=["POST"])
def checkout():
    query(5)
    with autoinstr.span("payment.charge", provider="demo-pay"):
        time.sleep(rng.choice([0.002, 0.002, 0.02]))  # the payment provider is sometimes slow...
        if rng.random() < 0.1:
            raise RuntimeError("payment provider timed out")  # ...and sometimes fails: Flask answers 500
    return jsonify(ok=True)


def main(n: int) -> None:
    from werkzeug.serving import make_server

    server = make_server("127.0.0.1", 0, app, threaded=True)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    port = server.server_port
    plan = [("GET", "/")] * 3 + [("GET", "/products/%d" % i) for i in (1, 5, 9, 42)] + [("GET", "/cart")] * 3 \
        + [("POST", "/checkout")] * 2
    codes: dict = {}
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    for _ in range(n):
        method, path = rng.choice(plan)
        conn.request(method, path)
        response = conn.getresponse()
        response.read()
        codes[response.status] = codes.get(response.status, 0) + 1
    conn.close()
    server.shutdown()
    print("shop: served %d requests on 127.0.0.1:%d, status codes %s" % (n, port, dict(sorted(codes.items()))))


if __name__ == "__main__":
    import logging

    logging.getLogger("werkzeug").setLevel(logging.ERROR)  # keep the demo's output to what was measured
    app.logger.disabled = True
    main(int(sys.argv[1]) if len(sys.argv) > 1 else 300)
