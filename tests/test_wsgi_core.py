"""The WSGI server span's request path has two implementations, compiled (autoinstr/_wsgi_call.c: wsgi_call and
Response, where the speedups are built) and in Python (_call_traced and _Response in
autoinstr.integrations._wsgi, with AUTOINSTR_SPEEDUPS=false or no compiler at install): they must behave alike.

Random requests (methods known, unknown, empty or missing; paths, queries with secrets, user agents, body sizes
valid or not, incoming traceparents; allow-listed headers and traceresponse on or off) go to random apps (status
lines good and odd, header lists of every shape, bodies as lists, generators, iterators that fail, objects with
close() and attributes, file_wrapper objects; apps that raise before or after start_response, or pass exc_info),
whose bodies are read whole, in part, from another thread, then closed or not. What the server sees (the
status, the headers, the chunks, len(), the exceptions, attributes read through the response) and what the
pipeline receives (every field of every span) must be identical in one process per implementation.
"""

from __future__ import annotations

from _twins import HANDED_SPANS, assert_same, compiled_has, pass_on_the_other_side, require_compiled, run_driver

from autoinstr.integrations import _wsgi

REQUESTS = 400

DRIVER = HANDED_SPANS + r'''
import json, random, re, sys, threading
from autoinstr.trace.span import current_span
from autoinstr.integrations import _wsgi

out = {"compiled": not isinstance(_wsgi.call_traced, type(_wsgi._call_traced)), "requests": []}


class Framework:  # a framework's app object, whose __call__ wsgi_method replaces (as Flask's and Django's)
    def __init__(self, app):
        self.app = app

    def __call__(self, environ, start_response, *extra, **options):
        return self.app(environ, start_response)


from autoinstr.integrations._wrapping import replace
replace(sys.modules[__name__], "Framework.__call__", _wsgi.wsgi_method)
out["framework_call"] = type(Framework.__dict__["__call__"]).__name__


class FileWrapper:
    def __init__(self, chunks):
        self.chunks = chunks
        self.closed = False
    def __iter__(self):
        return iter(self.chunks)
    def close(self):
        self.closed = True


class Body:
    """An iterable with close() and an attribute of its own (read through the response)."""
    def __init__(self, chunks, fail_at=None):
        self.chunks, self.fail_at, self.closed, self.marker = chunks, fail_at, False, "mine"
    def __iter__(self):
        for i, chunk in enumerate(self.chunks):
            if i == self.fail_at:
                raise KeyError("body %d" % i)
            yield chunk
    def close(self):
        self.closed = True


class SizedBody(Body):
    def __len__(self):
        return len(self.chunks)


def environ_for(rnd):
    env = {"wsgi.url_scheme": rnd.choice(["http", "https"]), "SERVER_NAME": "srv",
           "SERVER_PORT": rnd.choice(["80", "8080", ""]), "SERVER_PROTOCOL": rnd.choice(["HTTP/1.1", "HTTP/1.0", ""]),
           "wsgi.file_wrapper": FileWrapper}
    method = rnd.choice(["GET", "GET", "POST", "DELETE", "BREW", "", None])
    if method is not None:
        env["REQUEST_METHOD"] = method
    path = rnd.choice(["/users/7", "/", "", None, "/a b"])
    if path is not None:
        env["PATH_INFO"] = path
    env["QUERY_STRING"] = rnd.choice(["", "q=1", "token=abc&x=2", "pass%77ord=z"])
    for key, values in (("HTTP_HOST", ["shop.example:8443", "[::1]:9000", "h", None]),
                        ("REMOTE_ADDR", ["10.0.0.1", None]), ("HTTP_USER_AGENT", ["curl/8", "", None]),
                        ("CONTENT_LENGTH", ["12", "", "abc", "\u00b2", "\u0663", None])):
        value = rnd.choice(values)
        if value is not None:
            env[key] = value
    if rnd.random() < 0.2:
        ids = (rnd.getrandbits(128) or 1, rnd.getrandbits(64) or 1)
        env["HTTP_TRACEPARENT"] = rnd.choice(["00-%032x-%016x-01" % ids, "00-%032x-%016x-00" % ids, "zz-bad"])
    if rnd.random() < 0.1:
        env["HTTP_X_REQUEST_ID"] = "r-%d" % rnd.randint(0, 9)
    return env


def app_for(rnd, log):
    status = rnd.choice(["200 OK", "201 Created", "404 Not Found", "500 Oops", "503", " 20x", 200, "abc"])
    headers = rnd.choice([
        [("Content-Type", "text/plain")],
        [("Content-Length", "5"), ("X-Served-By", "n1")],
        [("content-length", "\u0663"), ("Set-Cookie", "a=1"), ("Set-Cookie", "b=2")],
        [("CONTENT-LENGTH", "x1")],
        (("Content-Length", "7"),),
        [["Content-Length", "8"]],
        [("Content-Length", 9)],
        [],
    ])
    chunks = [b"ab", b"", b"cd"][: rnd.randint(0, 3)]
    shape = rnd.choice(["list", "gen", "body", "sized", "failing", "wrapper", "raise-before", "raise-after",
                        "exc-info", "late-start"])

    def app(environ, start_response):
        if shape == "raise-before":
            raise ValueError("before")
        if shape == "late-start":  # start_response called on the first iteration, as PEP 3333 allows
            def late():
                log.append(["write", repr(start_response(status, headers))])
                yield from chunks
            return late()
        log.append(["write", repr(start_response(status, headers))])
        if shape == "raise-after":
            raise RuntimeError("after")
        if shape == "exc-info":
            try:
                raise OSError("late failure")
            except OSError:
                start_response("500 Internal", [("Content-Type", "text/plain")], sys.exc_info())
            return [b"failed"]
        if shape == "list":
            return list(chunks)
        if shape == "gen":
            return (c for c in chunks)
        if shape == "body":
            return Body(chunks)
        if shape == "sized":
            return SizedBody(chunks)
        if shape == "failing":
            return Body(chunks + [b"x"], fail_at=len(chunks))
        return environ["wsgi.file_wrapper"](chunks)
    return app, shape


def request(seed):
    rnd = random.Random(seed)
    m._Ids.rng.seed(seed)
    _wsgi._RESPONSE_HEADERS = rnd.random() < 0.2
    _wsgi._CAPTURE_RESPONSE = frozenset(("x-served-by", "set-cookie")) if rnd.random() < 0.2 else frozenset()
    _wsgi._CAPTURE_REQUEST = (("x-request-id", "HTTP_X_REQUEST_ID"),) if rnd.random() < 0.2 else ()
    del handed[:]
    log = []
    env = environ_for(rnd)
    app, shape = app_for(rnd, log)
    def start_response(status, headers, exc_info=None):
        shown = [(k, re.sub(r"dur=[0-9.]+", "dur=?", v) if isinstance(v, str) else repr(v)) for k, v in headers]
        log.append(["start_response", repr(status), shown, exc_info is not None])
        return "writer"
    entry = rnd.choice(["wrap_app", "wrap_app", "method", "method-extra"])
    log.append(["entry", entry])
    try:
        if entry == "wrap_app":
            result = _wsgi.wrap_app(app)(env, start_response)
        elif entry == "method":
            result = Framework(app)(env, start_response)
        else:  # (a call of another shape: the framework's own, untraced)
            result = Framework(app)(env, start_response, "extra", option=1)
    except Exception as exc:
        log.append(["app raised", type(exc).__name__, str(exc)])
        result = None
    if result is not None:
        log.append(["is the file wrapper", isinstance(result, FileWrapper)])
        log.append(["marker", getattr(result, "marker", "none")])
        try:
            log.append(["len", len(result)])
        except TypeError:
            log.append(["no len"])
        how = rnd.choice(["all", "all", "part", "thread", "none"])
        chunks = []
        try:
            if how == "all":
                chunks.extend(result)
            elif how == "part":
                it = iter(result)
                chunks.append(next(it, None))
            elif how == "thread":
                t = threading.Thread(target=lambda: chunks.extend(result))
                t.start()
                t.join(10)
        except Exception as exc:
            log.append(["body raised", type(exc).__name__, str(exc)])
        log.append(["chunks", repr(chunks)])
        if rnd.random() < 0.8 and hasattr(result, "close"):
            result.close()
            log.append(["closed", getattr(result, "closed", None)])
    log.append(["current after", current_span() is not None])
    out["requests"].append({"shape": shape, "log": log, "handed": [[describe(s) for s in g] for g in handed],
                            "server_span": describe(env["autoinstr.span"]) if "autoinstr.span" in env else None})

for seed in range(int(sys.argv[1])):
    import contextvars
    contextvars.Context().run(request, seed)
print(json.dumps(out))
'''


def test_both_wsgi_paths_do_the_same_to_random_requests():
    require_compiled("wsgi_call")
    compiled, python = run_driver(DRIVER, REQUESTS, True), run_driver(DRIVER, REQUESTS, False)
    assert compiled["compiled"] and not python["compiled"]
    assert (compiled["framework_call"], python["framework_call"]) == ("Hook", "function")
    assert_same(compiled["requests"], python["requests"], "requests")
    requests = python["requests"]
    entries = {e[1] for r in requests for e in r["log"] if e[0] == "entry"}
    assert entries == {"wrap_app", "method", "method-extra"}
    # the requests do cover what they are meant to: every app shape, spans ended and not, errors, sizes
    assert {r["shape"] for r in requests} == {"list", "gen", "body", "sized", "failing", "wrapper", "raise-before",
                                              "raise-after", "exc-info", "late-start"}
    spans = [s for r in requests for g in r["handed"] for s in g]
    server_spans = [r["server_span"] for r in requests if r["server_span"]]
    assert len(spans) > REQUESTS / 2 and any(s["status"] == "error" for s in spans)
    attributes = {k for s in spans for k, _ in s["attributes"]}
    assert {"http.response.body.size", "http.request.body.size", "url.query", "http.response.header.set-cookie",
            "http.request.header.x-request-id", "user_agent.original"} <= attributes
    assert any(s["parent"] for s in spans) and any(not s["sampled"] for s in server_spans)


def test_the_wsgi_tests_pass_on_the_other_path():
    """This process runs one implementation; the WSGI, Django and statsd request tests run on the other."""
    require_compiled("wsgi_call")
    pass_on_the_other_side(["tests/test_wsgi.py", "tests/test_django_unit.py", "tests/test_metrics_frameworks.py",
                            "tests/test_metrics.py"], _wsgi.call_traced is not _wsgi._call_traced)


def test_the_compiled_path_serves_where_the_compiled_span_core_does():
    from autoinstr.trace import span as span_module

    compiled = span_module._compiled_core is not None and compiled_has("wsgi_call")
    assert (_wsgi.call_traced is not _wsgi._call_traced) == compiled
