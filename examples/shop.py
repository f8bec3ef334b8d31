"""A small simulated shop, instrumented only with autoinstr's custom-span API.

Run it under the agent (the README's main-job command does): every simulated request becomes a trace of
nested spans, some slow, some failing, and `autoinstr report` shows where the time went. Later versions
grow this into real web services with SQL and HTTP calls.
"""

from __future__ import annotations

import random
import sys
import time

import autoinstr

rng = random.Random(7)


@autoinstr.traced("db.query")
def query(table: str, rows: int) -> list:
    time.sleep(0.0005 + rows * 0.0001)  # stands in for a database round trip
    return list(range(rows))


@autoinstr.traced
def price_cart(items: list) -> float:
    with autoinstr.span("pricing.rules", rules=3):
        time.sleep(0.001)
    return sum(items) * 1.2


def handle(path: str) -> int:
    """One simulated request: a root span per request, named after its route (not its raw path)."""
    route = {"/": "GET /", "/cart": "GET /cart", "/checkout": "POST /checkout"}[path]
    with autoinstr.span(route, kind="server", **{"http.route": path}) as span:
        try:
            if path == "/":
                query("products", 10)
            elif path == "/cart":
                items = query("cart_items", rng.randint(1, 20))
                price_cart(items)
            else:
                items = query("cart_items", 5)
                price_cart(items)
                with autoinstr.span("payment.charge", provider="demo-pay"):
                    time.sleep(rng.choice([0.002, 0.002, 0.02]))  # the payment provider is sometimes slow
                    if rng.random() < 0.15:
                        raise RuntimeError("card declined")
            span.set_attribute("http.response.status_code", 200)
            return 200
        except RuntimeError as exc:
            span.set_attribute("http.response.status_code", 402)
            span.set_status("error", str(exc))
            return 402


def main(n: int) -> None:
    paths = ["/", "/cart", "/checkout"]
    codes: dict = {}
    for _ in range(n):
        code = handle(rng.choice(paths))
        codes[code] = codes.get(code, 0) + 1
    print("shop: served %d requests %s" % (n, codes))


if __name__ == "__main__":
    main(int(sys.argv[1]) if len(sys.argv) > 1 else 200)
