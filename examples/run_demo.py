"""Runs the example: the inventory service and the shop, each under `autoinstr-run` on a free 127.0.0.1
port, drives a few hundred requests at the shop from this (untraced) process, then stops both with
SIGTERM (the agent flushes on it) and says what was served.

    python examples/run_demo.py REQUESTS DATA_DIR [SECONDS]

With SECONDS, the requests are spread over about that long (the UI's charts then show them over time).
"""

from __future__ import annotations

import http.client
import os
import random
import signal
import socket
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_ready(port: int, proc: subprocess.Popen, deadline_s: float = 30.0) -> None:
    end = time.monotonic() + deadline_s
    while time.monotonic() < end:
        if proc.poll() is not None:
            raise SystemExit("a demo service exited early (status %s)" % proc.returncode)
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
            return
        except OSError:
            time.sleep(0.05)
    raise SystemExit("a demo service did not start listening on port %d" % port)


def main(requests_wanted: int, data_dir: str, seconds: float = 0.0) -> None:
    os.makedirs(data_dir, exist_ok=True)
    sys.path.insert(0, HERE)
    import inventory as inventory_app
    import shop_web

    inventory_app.setup(data_dir)
    shop_web.setup(data_dir)
    inventory_port, shop_port = free_port(), free_port()
    inventory = subprocess.Popen(["autoinstr-run", "--service", "inventory", sys.executable,
                                  os.path.join(HERE, "inventory.py"), str(inventory_port), data_dir])
    procs = [inventory]
    try:
        wait_ready(inventory_port, inventory)
        shop = subprocess.Popen(["autoinstr-run", "--service", "shop", sys.executable,
                                 os.path.join(HERE, "shop_web.py"), str(shop_port), data_dir,
                                 "http://127.0.0.1:%d" % inventory_port])
        procs.append(shop)
        wait_ready(shop_port, shop)
        rng = random.Random(7)
        plan = [("GET", "/")] * 3 + [("GET", "/products/%d" % i) for i in (1, 5, 9, 42)] + [("GET", "/cart")] * 2 \
            + [("GET", "/orders")] + [("POST", "/checkout/%d" % i) for i in (2, 7)]
        codes: dict = {}
        conn = http.client.HTTPConnection("127.0.0.1", shop_port, timeout=10)
        began = time.monotonic()
        for done in range(requests_wanted):
            if seconds:
                lag = began + seconds * done / requests_wanted - time.monotonic()
                if lag > 0:
                    time.sleep(lag)
            method, path = rng.choice(plan)
            conn.request(method, path)
            response = conn.getresponse()
            response.read()
            codes[response.status] = codes.get(response.status, 0) + 1
        conn.close()
        print("shop: served %d requests on 127.0.0.1:%d (inventory on :%d), status codes %s"
              % (requests_wanted, shop_port, inventory_port, dict(sorted(codes.items()))))
    finally:
        for proc in reversed(procs):  # SIGTERM: each agent flushes what it holds, then the process ends
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        for proc in procs:
            try:
                proc.wait(15)
            except subprocess.TimeoutExpired:
                proc.kill()


if __name__ == "__main__":
    main(int(sys.argv[1]) if len(sys.argv) > 1 else 300, sys.argv[2] if len(sys.argv) > 2 else ".demo",
         float(sys.argv[3]) if len(sys.argv) > 3 else 0.0)
