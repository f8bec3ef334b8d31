"""A framework's view span (Flask's view function, Bottle's route callback) has two implementations, compiled
(autoinstr/_wsgi_call.c: view_run, where the speedups are built) and in Python (_run_view in
autoinstr.integrations._wsgi, with AUTOINSTR_SPEEDUPS=false or no compiler at install): they must behave alike.

Random views (results of any type, arguments positional and keyword, exceptions the framework answers itself or
not, exceptions whose own attributes fail, BaseException, spans opened inside the view, an unsampled or absent
server span) run through run_view directly and through real Flask and Bottle apps. What the caller sees (the
result or the exception, the current span after) and what the pipeline receives (every field of every span)
must be identical in one process per implementation.
"""

from __future__ import annotations

from _twins import HANDED_SPANS, assert_same, compiled_has, pass_on_the_other_side, require_compiled, run_driver

from autoinstr.integrations import _wsgi

VIEWS = 300

DRIVER = HANDED_SPANS + r'''
import contextvars, io, json, random, sys
from autoinstr.trace.span import Span, current_span
from autoinstr.integrations import _wsgi

out = {"compiled": not isinstance(_wsgi.run_view, type(_wsgi._run_view)), "views": []}


class Answer(Exception):  # abort(404) and friends: `code` below 500 is an answer, not a failure
    def __init__(self, code):
        super().__init__("answer %r" % (code,))
        self.code = code


class Touchy(Exception):  # reading its code fails: the agent must not care
    @property
    def code(self):
        raise RuntimeError("no code for you")


def answered(exc):
    code = getattr(exc, "code", None)
    return isinstance(code, int) and code < 500


def direct(rnd, log):
    outcome = rnd.choice(["value", "none", "tuple", "raise", "answer", "answer-500", "answer-str", "touchy",
                          "base", "inner-span"])

    def view(*args, **kwargs):
        log.append(["view got", repr(args), sorted(kwargs.items()), current_span().name])
        if outcome == "value":
            return {"n": len(args)}
        if outcome == "tuple":
            return ("body", 201)
        if outcome == "raise":
            raise ValueError("view failed")
        if outcome == "answer":
            raise Answer(404)
        if outcome == "answer-500":
            raise Answer(503)
        if outcome == "answer-str":
            raise Answer("404")
        if outcome == "touchy":
            raise Touchy("touchy")
        if outcome == "base":
            raise KeyboardInterrupt("stop")
        if outcome == "inner-span":
            with Span("inner", kind="client"):
                return "inner done"
        return None

    server = rnd.choice(["sampled", "unsampled", "none"])
    parent = None
    if server != "none":
        parent = Span("GET /x", kind="server", parent=None)
        if server == "unsampled":
            parent._sampled = False
        parent.__enter__()
    args = tuple(range(rnd.randint(0, 3)))
    kwargs = {"k%d" % i: i for i in range(rnd.randint(0, 2))}
    try:
        result = _wsgi.run_view("views.show", answered, parent, view, *args, **kwargs)
        log.append(["returned", repr(result)])
    except BaseException as exc:
        log.append(["raised", type(exc).__name__, str(exc)])
    log.append(["current after", current_span().name if current_span() is not None else None])
    if parent is not None:
        parent.__exit__(None, None, None)
    return outcome, [describe(parent)] if parent is not None else []


def flask_app():
    import flask.app
    from autoinstr.integrations import flask as flask_integration

    flask_integration.patch(flask.app)  # (its server span, route naming and view span: compiled or not)
    out["flask_dispatch"] = type(flask.app.Flask.__dict__["dispatch_request"]).__name__
    from flask import Flask, abort

    app = Flask("twins")

    @app.route("/ok/<int:n>", methods=["GET", "POST"])
    def ok(n):
        return "ok %d" % n

    @app.route("/abort")
    def aborted():
        abort(404)

    @app.route("/boom")
    def boom():
        raise ValueError("boom")

    return app


def bottle_app():
    import bottle

    app = bottle.Bottle()
    app.catchall = True

    @app.route("/ok/<n:int>")
    def ok(n):
        return "ok %d" % n

    @app.route("/abort")
    def aborted():
        bottle.abort(404, "no")

    @app.route("/boom")
    def boom():
        raise ValueError("boom")

    return app


APPS = {}


def through_app(rnd, log):
    name = rnd.choice(["flask", "bottle"])
    if name not in APPS:
        APPS[name] = flask_app() if name == "flask" else bottle_app()
    path = rnd.choice(["/ok/7", "/ok/7", "/abort", "/boom", "/nope"])
    method = rnd.choice(["GET", "GET", "GET", "POST", "HEAD", "PUT"])  # (PUT: 405, no view)
    from autoinstr.trace.span import Sampling
    ratio = 0.0 if rnd.random() < 0.15 else 1.0
    Sampling.configure(ratio, 0)
    log.append(["sampling", ratio])
    environ = {"REQUEST_METHOD": method, "PATH_INFO": path, "SERVER_NAME": "srv", "SERVER_PORT": "80",
               "wsgi.url_scheme": "http", "wsgi.input": io.BytesIO(b""), "wsgi.errors": io.StringIO()}
    statuses = []
    body = APPS[name](environ, lambda status, headers, exc_info=None: statuses.append(status))
    log.append(["answer", statuses, b"".join(body)[:40].decode("latin-1")])
    getattr(body, "close", lambda: None)()
    log.append(["current after", current_span() is not None])
    Sampling.configure(1.0, 0)
    return name + path.split("/")[1], []


def one(seed):
    rnd = random.Random(seed)
    m._Ids.rng.seed(seed)
    del handed[:]
    log = []
    kind, extra = (direct if rnd.random() < 0.7 else through_app)(rnd, log)
    out["views"].append({"kind": kind, "log": log, "handed": [[describe(s) for s in g] for g in handed],
                         "parents": extra})


for seed in range(int(sys.argv[1])):
    contextvars.Context().run(one, seed)
print(json.dumps(out))
'''


def test_both_view_spans_do_the_same_to_random_views():
    require_compiled("view_run")
    compiled, python = run_driver(DRIVER, VIEWS, True), run_driver(DRIVER, VIEWS, False)
    assert compiled["compiled"] and not python["compiled"]
    assert (compiled["flask_dispatch"], python["flask_dispatch"]) == ("Hook", "function")
    assert_same(compiled["views"], python["views"], "views")
    views = python["views"]
    kinds = {v["kind"] for v in views}
    assert {"value", "raise", "answer", "touchy", "base", "inner-span", "flaskok", "flaskboom", "flaskabort",
            "bottleok", "bottleboom", "bottleabort"} <= kinds
    spans = [s for v in views for g in v["handed"] for s in g]
    view_spans = [s for s in spans if s["kind"] == "internal"]
    assert len(view_spans) > VIEWS / 3
    assert all(["code.function", repr(s["name"])] in s["attributes"] for s in view_spans)
    assert any(s["parent"] for s in view_spans) and any(not s["parent"] for s in view_spans)
    assert all(s["ended"] for s in spans)
    # a failure is recorded on the view span and the server span; an answer the app chose is not
    failed = [v for v in views if v["kind"] in ("raise", "bottleboom") or (  # (a PUT to /boom is a 405)
        v["kind"] == "flaskboom" and any(e[0] == "answer" and e[1][0].startswith("500") for e in v["log"]))]
    assert failed and all(any(s["status"] == "error" for g in v["handed"] for s in g) for v in failed
                          if v["handed"])
    answers = [v for v in views if v["kind"] in ("answer", "flaskabort", "bottleabort")]
    assert answers and not any(s["status"] == "error" for v in answers for g in v["handed"] for s in g)
    # Flask's routes: the server span named after the rule and method (each named once in Python, then compiled)
    flask_servers = [s for v in views if v["kind"].startswith("flask") for g in v["handed"] for s in g
                     if s["kind"] == "server"]
    names = {s["name"] for s in flask_servers}
    assert {"GET /ok/<int:n>", "POST /ok/<int:n>", "GET /boom"} <= names and any(n.startswith("HEAD /") for n in names)
    assert "flasknope" in kinds and any(["sampling", 0.0] in v["log"] for v in views if v["kind"].startswith("flask"))
    # whatever the view did, the current span afterwards is what it was before
    for v in views:
        after = [e for e in v["log"] if e[0] == "current after"][0][1]
        assert after in ("GET /x", None, False)


def test_the_view_span_tests_pass_on_the_other_path():
    """This process runs one implementation; the WSGI tests run on the other."""
    require_compiled("view_run")
    pass_on_the_other_side(["tests/test_wsgi.py"], _wsgi.run_view is not _wsgi._run_view)


def test_the_compiled_view_span_serves_where_the_compiled_span_core_does():
    from autoinstr.trace import span as span_module

    compiled = span_module._compiled_core is not None and compiled_has("view_run")
    assert (_wsgi.run_view is not _wsgi._run_view) == compiled
