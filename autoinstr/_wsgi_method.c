/* A framework's WSGI __call__ in C (included by _speedups.c, after _wsgi_call.c and _client_call.c, whose Hook
   type it uses): wsgi_method_hook(python, original) is what autoinstr.integrations._wsgi.wsgi_method puts on the
   framework's class, the twin of its Python method `python` for the call every server makes:

       def __call__(self, environ, start_response):
           return call_traced(original.__get__(self), environ, start_response)

   without the frame and the lookups. A call with more arguments goes to `python`. Fields: prepare = original. */
#define APP_ORIGINAL prepare

static PyObject *wsgi_method_hook_call(PyObject *op, PyObject *const *args, size_t nargsf, PyObject *kwnames)
{
    HookObject *hook = (HookObject *)op;
    if (PyVectorcall_NARGS(nargsf) != 3 || (kwnames != NULL && PyTuple_GET_SIZE(kwnames) > 0))
        return forward(hook, args, nargsf, kwnames);
    PyObject *original = hook->APP_ORIGINAL, *self = args[0], *bound;
    descrgetfunc get = Py_TYPE(original)->tp_descr_get;
    if (PyFunction_Check(original))
        bound = PyMethod_New(original, self);
    else if (get != NULL)
        bound = get(original, self, (PyObject *)Py_TYPE(self));
    else
        return forward(hook, args, nargsf, kwnames);
    if (bound == NULL)
        return NULL;
    PyObject *result = wsgi_call(NULL, (PyObject *[]){bound, args[1], args[2]}, 3);
    Py_DECREF(bound);
    return result;
}

static PyObject *wsgi_method_hook(PyObject *module, PyObject *args)
{
    PyObject *python, *original;
    if (!PyArg_ParseTuple(args, "OO", &python, &original))
        return NULL;
    return new_hook(python, Py_None, Py_None, original, Py_None, wsgi_method_hook_call);
}

/* flask_dispatch_hook(python, original, rules, request_var, answered): what integrations/flask.py puts in place of
   Flask.dispatch_request, the twin of its Python method `python` for a request whose route and method it has
   named before (the common case):

       request = request_var.get().request
       span = request.environ.get(ENVIRON_KEY)       # the server span: a sampled Span
       rule = request.url_rule                       # matched: not None, and no routing_exception
       known = rules[id(rule)]                       # (app, rule, route, view name, {method: span name})
       span.name = known[4][span.attributes["http.request.method"]]; span.attributes["http.route"] = known[2]
       return run_view(known[3], answered, span, original, self)

   without the frame and the Python-level lookups. Every other request goes to `python` (which starts over: what
   was set here it sets the same). Fields: describe = original, settle = rules, prepare = request_var,
   error_status = answered. */
enum { F_REQUEST, F_ENVIRON, F_URL_RULE, F_ROUTING_EXCEPTION, F_METHOD, F_ROUTE, F_COUNT };
static PyObject *f[F_COUNT];

/* 1: the common case, *span and *view set (new references); 0: not it; -1: an error. */
static int flask_known_route(HookObject *hook, PyObject **span_out, PyObject **view_out)
{
    PyObject *ctx, *request, *environ = NULL, *rule = NULL, *routing_exception = NULL, *key = NULL;
    int r = -1;
    if (PyContextVar_Get(hook->prepare, NULL, &ctx) < 0)
        return -1;
    if (ctx == NULL)
        return 0;
    request = PyObject_GetAttr(ctx, f[F_REQUEST]);
    Py_DECREF(ctx);
    if (request == NULL || (environ = PyObject_GetAttr(request, f[F_ENVIRON])) == NULL)
        goto done;
    r = 0;
    if (!PyDict_CheckExact(environ))
        goto done;
    PyObject *span = PyDict_GetItemWithError(environ, wsgi_environ_key);
    if (span == NULL || Py_TYPE(span) != span_class || ((SpanObject *)span)->sampled != Py_True) {
        r = PyErr_Occurred() ? -1 : 0;
        goto done;
    }
    SpanObject *s = (SpanObject *)span;
    r = -1;
    if ((rule = PyObject_GetAttr(request, f[F_URL_RULE])) == NULL ||
        (routing_exception = PyObject_GetAttr(request, f[F_ROUTING_EXCEPTION])) == NULL ||
        (key = PyLong_FromVoidPtr(rule)) == NULL)
        goto done;
    r = 0;
    if (rule == Py_None || routing_exception != Py_None || s->attributes == NULL || !PyDict_CheckExact(s->attributes))
        goto done;
    PyObject *known = PyDict_GetItemWithError(hook->settle, key);
    if (known == NULL || !PyTuple_CheckExact(known) || PyTuple_GET_SIZE(known) != 5 ||
        PyTuple_GET_ITEM(known, 1) != rule || !PyDict_CheckExact(PyTuple_GET_ITEM(known, 4))) {
        r = PyErr_Occurred() ? -1 : 0;
        goto done;
    }
    PyObject *method = PyDict_GetItemWithError(s->attributes, f[F_METHOD]);
    PyObject *name = method == NULL && PyErr_Occurred() ? NULL
                     : PyDict_GetItemWithError(PyTuple_GET_ITEM(known, 4), method != NULL ? method : Py_None);
    if (name == NULL) {  /* (a method not named yet: Python names it) */
        r = PyErr_Occurred() ? -1 : 0;
        goto done;
    }
    Py_INCREF(known);  /* (held: the attribute write below may run a key's __eq__, the app's code) */
    Py_INCREF(name);
    Py_XSETREF(s->name, name);
    if (PyDict_SetItem(s->attributes, f[F_ROUTE], PyTuple_GET_ITEM(known, 2)) < 0) {
        Py_DECREF(known);
        r = -1;
        goto done;
    }
    *view_out = PyTuple_GET_ITEM(known, 3);
    Py_INCREF(*view_out);
    Py_DECREF(known);
    Py_INCREF(span);
    *span_out = span;
    r = 1;
done:
    Py_XDECREF(request);
    Py_XDECREF(environ);
    Py_XDECREF(rule);
    Py_XDECREF(routing_exception);
    Py_XDECREF(key);
    return r;
}

static PyObject *flask_dispatch_hook_call(PyObject *op, PyObject *const *args, size_t nargsf, PyObject *kwnames)
{
    HookObject *hook = (HookObject *)op;
    if (PyVectorcall_NARGS(nargsf) != 1 || (kwnames != NULL && PyTuple_GET_SIZE(kwnames) > 0) ||
        wsgi_globals == NULL || span_class == NULL || wsgi_environ_key == NULL ||
        !PyContextVar_CheckExact(hook->prepare) || !PyDict_CheckExact(hook->settle))
        return forward(hook, args, nargsf, kwnames);
    PyObject *span = NULL, *view = NULL;
    int known = flask_known_route(hook, &span, &view);
    if (known <= 0) {  /* (an error: the Python method meets it too, and calls the original) */
        if (known < 0) {
            if (!PyErr_ExceptionMatches(PyExc_Exception))
                return NULL;
            PyErr_Clear();
        }
        return forward(hook, args, nargsf, kwnames);
    }
    PyObject *result = view_run(NULL, (PyObject *[]){view, hook->error_status, span, hook->describe, args[0]}, 5,
                                NULL);
    Py_DECREF(span);
    Py_DECREF(view);
    return result;
}

static PyObject *flask_dispatch_hook(PyObject *module, PyObject *args)
{
    PyObject *python, *original, *rules, *request_var, *answered;
    if (!PyArg_ParseTuple(args, "OOO!OO", &python, &original, &PyDict_Type, &rules, &request_var, &answered))
        return NULL;
    if (f[0] == NULL) {
        const char *names[F_COUNT] = {"request", "environ", "url_rule", "routing_exception", "http.request.method",
                                      "http.route"};
        for (int i = 0; i < F_COUNT; i++)
            if ((f[i] = PyUnicode_InternFromString(names[i])) == NULL)
                return NULL;
    }
    return new_hook(python, original, rules, request_var, answered, flask_dispatch_hook_call);
}
