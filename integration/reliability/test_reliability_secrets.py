"""Secrets: what the agent stores, prints and listens on.

A real app under the agent receives requests carrying credentials in every place they travel (URL
userinfo on its outgoing calls, secret-looking query and form values, Authorization/Cookie/API-key
headers, SQL literals); the store must hold none of them. The store file is its owner's alone; the
collector binds 127.0.0.1 by default and compares tokens in constant time; the package never unpickles
or evaluates what it receives; `autoinstr-run --info`, warnings and debug output print no credentials.
"""

from __future__ import annotations

import ast
import http.client
import os
import stat
import time
import urllib.parse

import pytest
from fleet import Server
from test_collector import Collector

SECRETS = ["hunter2-PW", "tok-QUERY-77", "form-PASS-55", "Bearer-HDR-99", "cookie-SESS-11", "apikey-HDR-33",
           "sql-LITERAL-44", "userinfo-PW-66", "client-TOKEN-88"]

APP = '''
import os, sqlite3, urllib.parse, urllib.request
import requests

DB = os.environ["APP_DB"]


def app(environ, start_response):
    length = int(environ.get("CONTENT_LENGTH") or 0)
    form = urllib.parse.parse_qs(environ["wsgi.input"].read(length).decode()) if length else {}
    db = sqlite3.connect(DB)
    try:
        db.execute("CREATE TABLE IF NOT EXISTS users (name TEXT, password TEXT)")
        db.execute("SELECT * FROM users WHERE name = 'admin' AND password = 'sql-LITERAL-44'").fetchall()
        db.commit()
    finally:
        db.close()
    port = environ["SERVER_PORT"]
    if environ["PATH_INFO"] == "/call":  # outgoing calls with credentials in the URL
        requests.get("http://bob:userinfo-PW-66@127.0.0.1:%s/leaf?access_token=client-TOKEN-88&x=1" % port,
                     timeout=5)
        urllib.request.urlopen("http://127.0.0.1:%s/leaf?api_key=client-TOKEN-88" % port, timeout=5).read()
    body = ("ok %d" % len(form)).encode()
    start_response("200 OK", [("Content-Type", "text/plain"), ("Content-Length", str(len(body))),
                              ("Set-Cookie", "session=cookie-SESS-11")])
    return [body]
'''


class Member:
    name = "secrets"
    agent = True

    def argv(self, port: int, bindir: str) -> list:
        return [os.path.join(bindir, "waitress-serve"), "--listen=127.0.0.1:%d" % port, "--threads=4", "app:app"]


def send(port: int, method: str, path: str, body: str = None, headers: dict = None) -> int:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=20)
    try:
        conn.request(method, path, body=body, headers=headers or {})
        resp = conn.getresponse()
        resp.read()
        return resp.status
    finally:
        conn.close()


@pytest.mark.parametrize("allow_list", ["", "authorization,cookie,x-api-key,x-request-id"])
def test_stored_spans_hold_no_credentials(sandbox, allow_list):
    sandbox.write("app.py", APP)
    env = {"AUTOINSTR_EXPORTER": "local", "AUTOINSTR_STORE": sandbox.store, "APP_DB": sandbox.dir + "/app.db",
           "AUTOINSTR_HTTP_REQUEST_HEADERS": allow_list, "AUTOINSTR_HTTP_RESPONSE_HEADERS": allow_list + ",set-cookie"}
    server = Server(sandbox, Member(), env=env)
    try:
        server.wait_ready(time.monotonic() + 30)
        headers = {"Authorization": "Bearer Bearer-HDR-99", "Cookie": "session=cookie-SESS-11",
                   "X-Api-Key": "apikey-HDR-33", "X-Request-Id": "req-1",
                   "Content-Type": "application/x-www-form-urlencoded"}
        assert send(server.port, "GET", "/login?user=bob&password=hunter2-PW&token=tok-QUERY-77&q=1",
                    headers=headers) == 200
        form = urllib.parse.urlencode({"user": "bob", "password": "form-PASS-55"})
        assert send(server.port, "POST", "/login?next=/home", body=form, headers=headers) == 200
        assert send(server.port, "GET", "/call", headers=headers) == 200
    finally:
        server.stop()
        server.reap(time.monotonic() + 20)
    spans = sandbox.store_spans()
    paths = sorted(s["attributes"].get("url.path") for s in spans if s["kind"] == "server")
    assert paths == ["/call", "/leaf", "/leaf", "/login", "/login"], (paths, server.tail())  # and 2 leaf calls
    with open(sandbox.store, "rb") as f:
        raw = f.read()
    for name in os.listdir(sandbox.dir):  # the WAL too, if any is left
        if name.startswith("spans.db-"):
            with open(os.path.join(sandbox.dir, name), "rb") as f:
                raw += f.read()
    leaked = [s for s in SECRETS if s.encode() in raw]
    assert not leaked, leaked
    text = repr(spans)
    assert "REDACTED" in text  # the secret-looking query values were there, and were replaced
    client = [s for s in spans if s["kind"] == "client" and "url.full" in s["attributes"]]
    assert client and all("@" not in s["attributes"]["url.full"] for s in client)
    queries = [s["attributes"]["db.query.text"] for s in spans if "db.query.text" in s["attributes"]]
    assert any("password = ?" in q for q in queries), queries
    server_attrs = [s["attributes"] for s in spans if s["kind"] == "server"]
    if allow_list:
        assert any(a.get("http.request.header.x-request-id") == ["req-1"] for a in server_attrs), server_attrs
        assert any(a.get("http.request.header.authorization") == ["REDACTED"] for a in server_attrs)
    else:
        assert not any(k.startswith("http.request.header.") for a in server_attrs for k in a)
    # the store is its owner's alone, and so is the folder made for it
    assert stat.S_IMODE(os.stat(sandbox.store).st_mode) == 0o600


def test_default_store_folder_and_file_are_private(sandbox):
    sandbox.write("one.py", "import autoinstr\nwith autoinstr.span('x'):\n    pass\n")
    sandbox.ok(["python", "one.py"], env=sandbox.env(AUTOINSTR_STORE=None))
    folder = os.path.join(sandbox.home, "data", "autoinstr")
    store = os.path.join(folder, "spans.db")
    assert stat.S_IMODE(os.stat(store).st_mode) == 0o600
    assert stat.S_IMODE(os.stat(folder).st_mode) == 0o700


def test_info_warnings_and_debug_print_no_credentials(sandbox):
    env = sandbox.env(AUTOINSTR_EXPORTER="otlp,collector,zipkin,local", AUTOINSTR_COLLECTOR_TOKEN="SEKRET-token-1",
                      AUTOINSTR_COLLECTOR_URL="http://bob:SEKRET-pw-2@127.0.0.1:9/c?token=SEKRET-q-3",
                      AUTOINSTR_OTLP_ENDPOINT="http://al:SEKRET-pw-4@127.0.0.1:9/?key=SEKRET-q-5",
                      OTEL_EXPORTER_OTLP_HEADERS="api-key=SEKRET-hdr-6,x-tenant=SEKRET-hdr-7",
                      AUTOINSTR_ZIPKIN_URL="http://u:SEKRET-pw-8@127.0.0.1:9/api/v2/spans",
                      AUTOINSTR_DEBUG="1", AUTOINSTR_EXPORT_TIMEOUT="1", AUTOINSTR_SHUTDOWN_TIMEOUT="3")
    info = sandbox.run([sandbox.RUN, "--info"], env=env, launcher=False)
    assert info.returncode == 0, info.stderr
    assert "AUTOINSTR_COLLECTOR_URL" in info.stdout
    sandbox.write("app.py", "import autoinstr\nfor i in range(3):\n    with autoinstr.span('x', i=i):\n"
                            "        pass\nautoinstr.flush(5)\n")
    run = sandbox.run(["python", "app.py"], env=env)  # every exporter fails: warnings and debug lines
    output = info.stdout + info.stderr + run.stdout + run.stderr
    assert "autoinstr warning" in run.stderr and "exporter" in run.stderr, run.stderr  # there was output
    leaked = sorted(set(w for w in output.replace(",", " ").replace("=", " ").split() if "SEKRET" in w))
    assert not leaked, leaked


def test_collector_binds_loopback_by_default_and_refuses_without_the_token(sandbox):
    collector = Collector(sandbox, os.path.join(sandbox.dir, "c.db"), "--token", "SEKRET-collector-9")
    try:
        assert "listening on http://127.0.0.1:" in collector.output()
        conns = []
        for table in ("/proc/net/tcp", "/proc/net/tcp6"):
            with open(table) as f:
                conns += f.read().splitlines()[1:]
        listening = [line.split()[1] for line in conns if line.split()[3] == "0A"]  # state LISTEN
        ours = [addr for addr in listening if int(addr.rsplit(":", 1)[1], 16) == collector.port]
        assert ours and all(addr.startswith("0100007F:") for addr in ours), ours  # 127.0.0.1 only
        status, _, _ = collector.request("POST", "/v1/spans", b"[]", {"Content-Type": "application/json"})
        assert status == 401
        status, _, _ = collector.request("POST", "/v1/spans", b"[]", {"Content-Type": "application/json",
                                                                     "Authorization": "Bearer SEKRET-collector-X"})
        assert status == 401
    finally:
        collector.stop()
    assert "SEKRET-collector-9" not in collector.output()


PACKAGE = os.path.dirname(os.path.dirname(os.path.abspath(__import__("autoinstr").__file__)))


def _package_sources() -> list:
    root = os.path.join(PACKAGE, "autoinstr")
    out = []
    for folder, _, files in os.walk(root):
        out.extend(os.path.join(folder, f) for f in files if f.endswith(".py"))
    return out


def test_no_pickle_eval_or_exec_anywhere_in_the_package():
    """Nothing received (spans, headers, bodies, query parameters) can reach an unpickler or evaluator:
    the package uses none, at all."""
    banned_modules = {"pickle", "cPickle", "_pickle", "marshal", "shelve", "dill", "cloudpickle"}
    banned_calls = {"eval", "exec", "compile", "__import__"}
    found = []
    sources = _package_sources()
    assert len(sources) > 20
    for path in sources:
        with open(path, encoding="utf-8") as f:
            tree = ast.parse(f.read(), path)
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                found += [(path, a.name) for a in node.names if a.name.split(".")[0] in banned_modules]
            elif isinstance(node, ast.ImportFrom) and (node.module or "").split(".")[0] in banned_modules:
                found.append((path, node.module))
            elif isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id in banned_calls:
                found.append((path, node.func.id))
            elif isinstance(node, ast.Attribute) and node.attr in ("load", "loads") and isinstance(
                    node.value, ast.Name) and node.value.id in ("yaml", "pickle", "marshal"):
                found.append((path, node.value.id + "." + node.attr))
    assert not found, found


def test_collector_token_is_compared_in_constant_time():
    """The only comparison of the bearer token is hmac.compare_digest over fixed-length digests."""
    path = os.path.join(PACKAGE, "autoinstr", "collector", "app.py")
    with open(path, encoding="utf-8") as f:
        tree = ast.parse(f.read(), path)
    compares = [n for n in ast.walk(tree) if isinstance(n, ast.Compare)
                and any("token" in ast.dump(side) for side in [n.left] + list(n.comparators))]
    risky = [ast.unparse(n) for n in compares if not all(isinstance(c, ast.Constant) and c.value is None
                                                        for c in n.comparators)]
    assert not risky, risky
    calls = [ast.unparse(n) for n in ast.walk(tree) if isinstance(n, ast.Call) and ast.unparse(n.func).endswith(
        "compare_digest")]
    assert calls and all("token_digest" in c for c in calls), calls
