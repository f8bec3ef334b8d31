/* Outgoing HTTP's hot path in C (included by _speedups.c, after _span.c), the twin of parts of
   autoinstr.integrations._http:
   - CallCore, the base class of _http.Call where the speedups are built (_CallCore in Python otherwise): the
     logical request's client span, made (__init__) and ended on a plain answer (answered);
   - method_hook(real, describe, settle, prepare, error_status): what hook_method puts on a client class in
     place of a method (each call one logical request, unless an inner layer or the agent's own traffic);
   - wire_hook(real): what install_wire puts on http.client's HTTPConnection.endheaders (the attempt counted,
     the trace headers added to the buffered head).
   Both hooks are functions to Python: they bind to instances like one (and are called without a bound method
   object, as a function is), carry functools.update_wrapper's attributes and give the real one's signature.
   The rare paths call the module's Python functions, looked up in its globals at each call:
   _rare_attributes, Call.respond and Call.end, _fail, _inject (a request that is not the common case: a
   traceparent alone, for a new trace's root or a span under a local root), _endheaders (http.client used
   directly). */

typedef struct {
    PyObject_HEAD
    PyObject *span;
    int attempts;
    char fresh;
} CallObject;

typedef struct {
    PyObject_HEAD
    PyObject *real, *describe, *settle, *prepare, *error_status, *dict;
    vectorcallfunc vectorcall;
} HookObject;

static PyObject *http_globals, *http_active, *http_suppressed, *http_statsd, *http_known_methods;
static PyObject *http_propagators, *http_traceparent_only, *http_wire;

enum {
    H_URLS, H_DESCRIBE_URL, H_NAMES, H_SPAN_NAME, H_RARE_ATTRIBUTES, H_ENABLED, H_CLIENT_START, H_CLIENT_END,
    H_RESPOND, H_END, H_FAIL, H_INJECT, H_INJECT_BUFFERED, H_ENDHEADERS, H_CALL, H_NAMES_ATTR, H_BUFFER,
    H_OWN_SPANS, H_METHOD, H_URL_FULL, H_ADDRESS, H_PORT, H_STATUS_CODE, H_CLIENT, H_HTTP, H_COUNT
};
static const char *http_names[H_COUNT] = {
    "_urls", "describe_url", "_names", "span_name", "_rare_attributes", "enabled", "client_start", "client_end",
    "respond", "end", "_fail", "_inject", "_inject_buffered", "_endheaders", "Call", "names", "_buffer",
    "own_spans", "http.request.method", "url.full", "server.address", "server.port", "http.response.status_code",
    "client", "HTTP"};
static PyObject *h[H_COUNT];
static PyObject *int_400;

static PyObject *configure_http(PyObject *self, PyObject *args)
{
    PyObject *globals, *active, *suppressed, *statsd, *methods, *propagators, *only, *wire;
    if (!PyArg_ParseTuple(args, "O!OOOO!OO!O", &PyDict_Type, &globals, &active, &suppressed, &statsd,
                          &PyFrozenSet_Type, &methods, &propagators, &PyTuple_Type, &only, &wire))
        return NULL;
    if (!PyContextVar_CheckExact(active) || !PyContextVar_CheckExact(suppressed)) {
        PyErr_SetString(PyExc_TypeError, "configure_http(): not a ContextVar");
        return NULL;
    }
    PyObject *objects[8] = {globals, active, suppressed, statsd, methods, propagators, only, wire};
    PyObject **slots[8] = {&http_globals, &http_active, &http_suppressed, &http_statsd, &http_known_methods,
                           &http_propagators, &http_traceparent_only, &http_wire};
    for (int i = 0; i < 8; i++) {
        Py_INCREF(objects[i]);
        Py_XSETREF(*slots[i], objects[i]);
    }
    Py_RETURN_NONE;
}

/* One of the _http module's globals, borrowed. */
static PyObject *http_global(int which)
{
    PyObject *value = PyDict_GetItemWithError(http_globals, h[which]);
    if (value == NULL && !PyErr_Occurred())
        PyErr_Format(PyExc_RuntimeError, "autoinstr.integrations._http has no %U", h[which]);
    return value;
}

static int statsd_enabled(void)
{
    return module_flag(http_statsd, h[H_ENABLED]);
}

/* ------------------------------------------------------------------------------------------ a call */

static PyTypeObject CallCoreType;

static int call_init(PyObject *op, PyObject *args, PyObject *kwds)
{
    static char *kwlist[] = {"method", "url", NULL};
    CallObject *self = (CallObject *)op;
    PyObject *method, *url;
    if (!PyArg_ParseTupleAndKeywords(args, kwds, "OO:Call", kwlist, &method, &url))
        return -1;
    if (http_globals == NULL || span_class == NULL) {
        PyErr_SetString(PyExc_RuntimeError, "Call: configure_http() or configure_span() was not called");
        return -1;
    }
    self->attempts = 0;
    int known = PySet_Contains(http_known_methods, method);
    if (known < 0)
        return -1;
    PyObject *parent;
    if (PyContextVar_Get(current_var, Py_None, &parent) < 0)
        return -1;
    self->fresh = parent == Py_None;  /* the root of a new trace: no tracestate, no baggage to pass on */
    PyObject *span = span_new(known ? method : h[H_HTTP], h[H_CLIENT], parent);
    Py_DECREF(parent);
    if (span == NULL)
        return -1;
    Py_XSETREF(self->span, span);
    if (!PyObject_TypeCheck(span, &SpanCoreType)) {
        PyErr_SetString(PyExc_TypeError, "Call: the span class is not built on SpanCore");
        return -1;
    }
    SpanObject *s = (SpanObject *)span;
    int sampled = sampled_of(s);
    if (sampled < 0)
        return -1;
    if (!sampled) {
        int counting = statsd_enabled();
        if (counting <= 0)
            return counting;
        /* statsd counts unsampled requests too: their clock and host */
        PyObject *describe = http_global(H_DESCRIBE_URL);
        PyObject *found = describe == NULL ? NULL : PyObject_CallOneArg(describe, url);
        PyObject *host = found == NULL ? NULL : PySequence_GetItem(found, 1);
        Py_XDECREF(found);
        PyObject *done = host == NULL ? NULL : PyObject_VectorcallMethod(h[H_CLIENT_START],
                                                                          (PyObject *[]){http_statsd, span, host}, 3, NULL);
        Py_XDECREF(host);
        Py_XDECREF(done);
        return done == NULL ? -1 : 0;
    }
    PyObject *urls = http_global(H_URLS);
    PyObject *found = urls == NULL ? NULL : PyDict_GetItemWithError(urls, url);  /* the cache, without a call */
    if (found != NULL)
        Py_INCREF(found);
    else if (!PyErr_Occurred()) {
        PyObject *describe = http_global(H_DESCRIBE_URL);
        found = describe == NULL ? NULL : PyObject_CallOneArg(describe, url);
    }
    if (found == NULL)
        return -1;
    if (!PyTuple_CheckExact(found) || PyTuple_GET_SIZE(found) != 3) {
        Py_DECREF(found);
        PyErr_SetString(PyExc_TypeError, "describe_url() must give (url.full, server.address, server.port)");
        return -1;
    }
    PyObject *full = PyTuple_GET_ITEM(found, 0), *host = PyTuple_GET_ITEM(found, 1), *port = PyTuple_GET_ITEM(found, 2);
    int has_host = PyObject_IsTrue(host), has_port = has_host <= 0 ? 0 : PyObject_IsTrue(port);
    int done;
    if (has_host < 0 || has_port < 0)
        done = -1;
    else if (known && has_host && has_port) {  /* the common case, on every request: one dict, built at once */
        PyObject *attrs = PyDict_New();
        done = attrs == NULL ? -1 : 0;
        if (attrs != NULL) {
            Py_XSETREF(s->attributes, attrs);
            if (PyDict_SetItem(attrs, h[H_METHOD], method) < 0 || PyDict_SetItem(attrs, h[H_URL_FULL], full) < 0 ||
                PyDict_SetItem(attrs, h[H_ADDRESS], host) < 0 || PyDict_SetItem(attrs, h[H_PORT], port) < 0)
                done = -1;
        }
        if (done == 0) {
            PyObject *key = PyTuple_Pack(2, method, host);
            PyObject *names = key == NULL ? NULL : http_global(H_NAMES);
            PyObject *name = names == NULL ? NULL : PyDict_GetItemWithError(names, key);
            if (name != NULL)
                Py_INCREF(name);
            else if (!PyErr_Occurred()) {
                PyObject *make = http_global(H_SPAN_NAME);
                name = make == NULL ? NULL : PyObject_Vectorcall(make, (PyObject *[]){method, host}, 2, NULL);
            }
            Py_XDECREF(key);
            if (name == NULL)
                done = -1;
            else
                Py_XSETREF(s->name, name);
        }
    }
    else {
        PyObject *rare = http_global(H_RARE_ATTRIBUTES);
        PyObject *known_object = known ? Py_True : Py_False;
        PyObject *r = rare == NULL ? NULL : PyObject_Vectorcall(rare, (PyObject *[]){span, method, known_object, full,
                                                                                       host, port}, 6, NULL);
        Py_XDECREF(r);
        done = r == NULL ? -1 : 0;
    }
    Py_DECREF(found);
    if (done < 0)
        return -1;
    PyObject *now = now_ns();
    if (now == NULL)
        return -1;
    set_slot(&s->end_ns, int_0);
    Py_XSETREF(s->start_ns, now);
    return 0;
}

/* self.span.finish() (and statsd's count first, as Call.end does). */
static int call_end(CallObject *self)
{
    int counting = statsd_enabled();
    if (counting < 0)
        return -1;
    if (counting) {
        PyObject *done = PyObject_CallMethodOneArg(http_statsd, h[H_CLIENT_END], self->span);
        if (done == NULL)
            return -1;
        Py_DECREF(done);
    }
    PyObject *done = PyObject_TypeCheck(self->span, &SpanCoreType) ? core_finish(self->span, NULL, 0, NULL)
                                                                     : PyObject_CallMethodNoArgs(self->span, w[W_FINISH]);
    Py_XDECREF(done);
    return done == NULL ? -1 : 0;
}

/* answered(status, resends=-1): respond() and end() at once, for a response whose body was read inside the
   call (the common case); a plain success is recorded here, anything else by respond(). */
static PyObject *call_answered(PyObject *op, PyObject *const *args, Py_ssize_t nargs)
{
    CallObject *self = (CallObject *)op;
    if (nargs < 1 || nargs > 2) {
        PyErr_Format(PyExc_TypeError, "answered() takes 1 or 2 arguments (%zd given)", nargs);
        return NULL;
    }
    PyObject *status = args[0], *resends = nargs > 1 ? args[1] : NULL;
    if (self->span == NULL || !PyObject_TypeCheck(self->span, &SpanCoreType)) {
        PyErr_SetString(PyExc_AttributeError, "span");
        return NULL;
    }
    SpanObject *s = (SpanObject *)self->span;
    int sampled = sampled_of(s), plain = 0;
    if (sampled < 0)
        return NULL;
    if (sampled && PyLong_CheckExact(status)) {
        int below = PyObject_RichCompareBool(status, int_400, Py_LT);
        if (below < 0)
            return NULL;
        if (below) {
            if (resends == NULL)
                plain = self->attempts <= 1;
            else {
                int zero = PyObject_RichCompareBool(resends, int_0, Py_EQ);
                int negative = zero ? 0 : PyObject_RichCompareBool(resends, int_0, Py_LT);
                if (zero < 0 || negative < 0)
                    return NULL;
                plain = zero || (negative && self->attempts <= 1);
            }
        }
    }
    if (plain && s->attributes != NULL) {  /* all that respond() records then */
        if (PyObject_SetItem(s->attributes, h[H_STATUS_CODE], status) < 0)
            return NULL;
    }
    else {
        PyObject *done = resends == NULL ? PyObject_CallMethodOneArg(op, h[H_RESPOND], status)
                                         : PyObject_VectorcallMethod(h[H_RESPOND], (PyObject *[]){op, status, resends},
                                                                     3, NULL);
        if (done == NULL)
            return NULL;
        Py_DECREF(done);
    }
    if (call_end(self) < 0)
        return NULL;
    Py_RETURN_NONE;
}

static int call_traverse(PyObject *op, visitproc visit, void *arg)
{
    Py_VISIT(((CallObject *)op)->span);
    return 0;
}

static int call_clear(PyObject *op)
{
    Py_CLEAR(((CallObject *)op)->span);
    return 0;
}

static void call_dealloc(PyObject *op)
{
    PyTypeObject *type = Py_TYPE(op);
    PyObject_GC_UnTrack(op);
    call_clear(op);
    type->tp_free(op);
}

static PyMemberDef call_members[] = {
    {"span", T_OBJECT_EX, offsetof(CallObject, span), 0, NULL},
    {"attempts", T_INT, offsetof(CallObject, attempts), 0, NULL},
    {"fresh", T_BOOL, offsetof(CallObject, fresh), 0, NULL},
    {NULL, 0, 0, 0, NULL}};

static PyMethodDef call_methods[] = {
    {"answered", (PyCFunction)(void (*)(void))call_answered, METH_FASTCALL,
     "respond() and end() at once, for a response whose body was read inside the call."},
    {NULL, NULL, 0, NULL}};

static PyTypeObject CallCoreType = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "autoinstr._speedups.CallCore",
    .tp_basicsize = sizeof(CallObject),
    .tp_flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_BASETYPE | Py_TPFLAGS_HAVE_GC,
    .tp_doc = "The slots, __init__ and answered of autoinstr.integrations._http.Call (its base class).",
    .tp_traverse = call_traverse,
    .tp_clear = call_clear,
    .tp_dealloc = call_dealloc,
    .tp_free = PyObject_GC_Del,
    .tp_methods = call_methods,
    .tp_members = call_members,
    .tp_init = call_init,
    .tp_new = PyType_GenericNew,
};

/* ------------------------------------------------------------------------------------------- hooks */

static int context_truth(PyObject *var)
{
    PyObject *value;
    if (PyContextVar_Get(var, NULL, &value) < 0)
        return -1;
    int truth = value == NULL ? 0 : PyObject_IsTrue(value);
    Py_XDECREF(value);
    return truth;
}

/* The call's arguments past `self` as (args, kwargs), as a Python function with *args, **kwargs gets them. */
static int pack_arguments(PyObject *const *args, Py_ssize_t nargs, PyObject *kwnames, PyObject **tuple,
                          PyObject **dict)
{
    *tuple = PyTuple_New(nargs - 1);
    *dict = PyDict_New();
    if (*tuple == NULL || *dict == NULL)
        goto fail;
    for (Py_ssize_t i = 1; i < nargs; i++) {
        Py_INCREF(args[i]);
        PyTuple_SET_ITEM(*tuple, i - 1, args[i]);
    }
    Py_ssize_t nkw = kwnames == NULL ? 0 : PyTuple_GET_SIZE(kwnames);
    for (Py_ssize_t k = 0; k < nkw; k++)
        if (PyDict_SetItem(*dict, PyTuple_GET_ITEM(kwnames, k), args[nargs + k]) < 0)
            goto fail;
    return 0;
fail:
    Py_CLEAR(*tuple);
    Py_CLEAR(*dict);
    return -1;
}

/* An Exception from the agent's own code is dropped (the app's call goes on untraced); anything else
   (KeyboardInterrupt...) goes on to the app, as `except Exception` lets it. 1: dropped, 0: not. */
static int dropped(void)
{
    if (!PyErr_ExceptionMatches(PyExc_Exception))
        return 0;
    PyErr_Clear();
    return 1;
}

static PyObject *forward(HookObject *hook, PyObject *const *args, size_t nargsf, PyObject *kwnames)
{
    return PyObject_Vectorcall(hook->real, args, nargsf, kwnames);
}

/* hook_method's function: see _http.hook_method. */
static PyObject *method_hook_call(PyObject *op, PyObject *const *args, size_t nargsf, PyObject *kwnames)
{
    HookObject *hook = (HookObject *)op;
    Py_ssize_t nargs = PyVectorcall_NARGS(nargsf);
    if (nargs < 1 || http_globals == NULL)
        return forward(hook, args, nargsf, kwnames);
    int skip = context_truth(http_suppressed);  /* the agent's own traffic, or an inner layer */
    if (skip == 0) {
        PyObject *active;
        if (PyContextVar_Get(http_active, Py_None, &active) < 0)
            return NULL;
        skip = active != Py_None;
        Py_DECREF(active);
    }
    if (skip < 0)
        return NULL;
    if (skip)
        return forward(hook, args, nargsf, kwnames);
    PyObject *self = args[0], *tuple, *dict, *call = NULL;
    if (pack_arguments(args, nargs, kwnames, &tuple, &dict) < 0)
        return NULL;
    PyObject *what = PyObject_Vectorcall(hook->describe, (PyObject *[]){self, tuple, dict}, 3, NULL);
    if (what != NULL && what != Py_None) {
        PyObject *call_class = http_global(H_CALL);
        PyObject *parts = call_class == NULL ? NULL : PySequence_Tuple(what);
        call = parts == NULL ? NULL : PyObject_Call(call_class, parts, NULL);
        Py_XDECREF(parts);
    }
    int untraced = call == NULL;
    if (what == NULL || (call == NULL && PyErr_Occurred())) {
        if (!dropped()) {
            Py_XDECREF(what);
            Py_DECREF(tuple);
            Py_DECREF(dict);
            return NULL;
        }
    }
    Py_XDECREF(what);
    if (untraced) {
        Py_DECREF(tuple);
        Py_DECREF(dict);
        return forward(hook, args, nargsf, kwnames);
    }
    int prepared = 0;
    if (hook->prepare != Py_None) {  /* prepare(call, self, args, kwargs) -> (args, kwargs) */
        PyObject *pair = PyObject_Vectorcall(hook->prepare, (PyObject *[]){call, self, tuple, dict}, 4, NULL);
        if (pair != NULL && PyTuple_CheckExact(pair) && PyTuple_GET_SIZE(pair) == 2 &&
            PyTuple_Check(PyTuple_GET_ITEM(pair, 0)) && PyDict_Check(PyTuple_GET_ITEM(pair, 1))) {
            Py_SETREF(tuple, PyTuple_GET_ITEM(pair, 0));
            Py_INCREF(tuple);
            Py_SETREF(dict, PyTuple_GET_ITEM(pair, 1));
            Py_INCREF(dict);
            prepared = 1;
        }
        Py_XDECREF(pair);
        if (pair == NULL && !dropped())
            goto error;
    }
    PyObject *token = PyContextVar_Set(http_active, call);
    if (token == NULL)
        goto error;
    PyObject *result;
    if (prepared) {
        PyObject *with_self = PyTuple_New(PyTuple_GET_SIZE(tuple) + 1);
        if (with_self == NULL)
            result = NULL;
        else {
            Py_INCREF(self);
            PyTuple_SET_ITEM(with_self, 0, self);
            for (Py_ssize_t i = 0; i < PyTuple_GET_SIZE(tuple); i++) {
                Py_INCREF(PyTuple_GET_ITEM(tuple, i));
                PyTuple_SET_ITEM(with_self, i + 1, PyTuple_GET_ITEM(tuple, i));
            }
            result = PyObject_Call(hook->real, with_self, dict);
            Py_DECREF(with_self);
        }
    }
    else
        result = forward(hook, args, nargsf, kwnames);
    Py_DECREF(tuple);
    Py_DECREF(dict);
    tuple = dict = NULL;
    if (result == NULL) {  /* the exception on the span, then raised on unchanged */
        reset_or_unset(http_active, token);
        Py_DECREF(token);
        SAVE_EXCEPTION(saved);
        call_dropping_errors(http_global(H_FAIL), (PyObject *[]){call, EXCEPTION_VALUE(saved), hook->error_status}, 3);
        RESTORE_EXCEPTION(saved);
        Py_DECREF(call);
        return NULL;
    }
    if (PyContextVar_Reset(http_active, token) < 0) {  /* reset from another context: forget the call there */
        if (!PyErr_ExceptionMatches(PyExc_ValueError))
            goto failed_after;
        PyErr_Clear();
        PyObject *other = PyContextVar_Set(http_active, Py_None);
        if (other == NULL)
            goto failed_after;
        Py_DECREF(other);
    }
    Py_DECREF(token);
    PyObject *settled = PyObject_Vectorcall(hook->settle, (PyObject *[]){call, result}, 2, NULL);
    if (settled == NULL) {
        if (!dropped())
            goto failed_settle;
        PyObject *ended = PyObject_CallMethodNoArgs(call, h[H_END]);
        if (ended == NULL)
            goto failed_settle;
        Py_DECREF(ended);
    }
    Py_XDECREF(settled);
    Py_DECREF(call);
    return result;
failed_after:
    Py_DECREF(token);
failed_settle:
    Py_DECREF(result);
    Py_DECREF(call);
    return NULL;
error:
    Py_XDECREF(tuple);
    Py_XDECREF(dict);
    Py_DECREF(call);
    return NULL;
}

/* Whether the header line at `c` (`left` bytes to its line's end, compared lowercased) is a traceparent or a
   tracestate. */
static int trace_header_at(const char *c, Py_ssize_t left)
{
    return (left >= 12 && ascii_lower_equal(c, "traceparent:", 12)) ||
           (left >= 11 && ascii_lower_equal(c, "tracestate:", 11));
}

/* Whether the buffered head (its lines joined by "\n") has a traceparent or tracestate line of the app's: one pass,
   line starts and any "\n" inside a line (memchr, not a byte loop). */
static int head_has_trace_header(PyObject *buffer)
{
    Py_ssize_t lines = PyList_GET_SIZE(buffer);
    for (Py_ssize_t i = 0; i < lines; i++) {
        PyObject *line = PyList_GET_ITEM(buffer, i);
        const char *c = PyBytes_AS_STRING(line), *end = c + PyBytes_GET_SIZE(line);
        if (i > 0 && trace_header_at(c, end - c))
            return 1;
        for (const char *nl = memchr(c, '\n', end - c); nl != NULL; nl = memchr(nl + 1, '\n', end - nl - 1))
            if (trace_header_at(nl + 1, end - nl - 1))
                return 1;
    }
    return 0;
}

/* `traceparent: 00-{trace id:032x}-{span id:016x}-01`, for a sampled span of a trace whose root is sampled. NULL
   (no error) when the ids are not what the format expects (the Python path formats them then). */
static PyObject *traceparent_line(PyObject *trace_id, PyObject *span_id)
{
    static const char digits[] = "0123456789abcdef";
    unsigned char trace[16], span[8];
    if (trace_id == NULL || span_id == NULL || !PyLong_CheckExact(trace_id) || !PyLong_CheckExact(span_id))
        return NULL;
#if PY_VERSION_HEX >= 0x030D0000
    if (_PyLong_AsByteArray((PyLongObject *)trace_id, trace, 16, 0, 0, 1) < 0 ||
        _PyLong_AsByteArray((PyLongObject *)span_id, span, 8, 0, 0, 1) < 0) {
#else
    if (_PyLong_AsByteArray((PyLongObject *)trace_id, trace, 16, 0, 0) < 0 ||
        _PyLong_AsByteArray((PyLongObject *)span_id, span, 8, 0, 0) < 0) {
#endif
        PyErr_Clear();
        return NULL;
    }
    char text[16 + 32 + 1 + 16 + 3 + 1];
    memcpy(text, "traceparent: 00-", 16);
    for (int i = 0; i < 16; i++) {
        text[16 + 2 * i] = digits[trace[i] >> 4];
        text[17 + 2 * i] = digits[trace[i] & 15];
    }
    text[48] = '-';
    for (int i = 0; i < 8; i++) {
        text[49 + 2 * i] = digits[span[i] >> 4];
        text[50 + 2 * i] = digits[span[i] & 15];
    }
    memcpy(text + 65, "-01", 3);
    return PyBytes_FromStringAndSize(text, 68);
}

/* Empty or None (what `not x` is for the tracestate and baggage slots when set; unset: not known here). */
static int nothing_in(PyObject *slot)
{
    return slot == Py_None || (slot != NULL && ((PyUnicode_CheckExact(slot) && PyUnicode_GET_LENGTH(slot) == 0) ||
                                                (PyDict_CheckExact(slot) && PyDict_GET_SIZE(slot) == 0)));
}

/* The trace id a traceparent alone carries for the call's span, borrowed, where _http._traceparent_alone gives one
   (a sampled span whose trace has no tracestate and no baggage to pass on); NULL where the general path decides. */
static PyObject *traceparent_alone_trace_id(CallObject *call)
{
    if (call->span == NULL || !PyObject_TypeCheck(call->span, &SpanCoreType))
        return NULL;
    SpanObject *span = (SpanObject *)call->span;
    if (span->sampled != Py_True)
        return NULL;
    if (call->fresh)
        return span->trace_id;
    if (span->root == NULL || !PyObject_TypeCheck(span->root, &SpanCoreType))
        return NULL;
    SpanObject *root = (SpanObject *)span->root;
    if (root->sampled == Py_True && nothing_in(root->baggage) &&
        root->parent_id != NULL && (root->parent_id == Py_None || nothing_in(root->tracestate)))
        return root->trace_id;
    return NULL;
}

/* The trace headers into the connection's buffered head (_http._inject, whose common cases are here: a traceparent
   alone, for a new trace's root or a span under a local root, the app's outgoing call inside a request). */
static int inject_headers(PyObject *conn, CallObject *call)
{
    PyObject *buffer;
    if (optional_attr(conn, h[H_BUFFER], &buffer) < 0)
        return -1;
    PyObject *trace_id = buffer != NULL && PyList_CheckExact(buffer) ? traceparent_alone_trace_id(call) : NULL;
    int common = trace_id != NULL;
    for (Py_ssize_t i = 0; common && i < PyList_GET_SIZE(buffer); i++)
        common = PyBytes_CheckExact(PyList_GET_ITEM(buffer, i));
    if (common) {
        PyObject *names = PyObject_GetAttr(http_propagators, h[H_NAMES_ATTR]);
        common = names == NULL ? -1 : PySequence_Contains(http_traceparent_only, names);
        Py_XDECREF(names);
    }
    PyObject *line = common == 1 ? traceparent_line(trace_id, ((SpanObject *)call->span)->span_id) : NULL;
    int r = 0;
    if (common < 0)
        r = -1;
    else if (line == NULL) {
        PyObject *inject = http_global(H_INJECT);
        PyObject *done = inject == NULL ? NULL : PyObject_Vectorcall(inject, (PyObject *[]){conn, (PyObject *)call},
                                                                      2, NULL);
        Py_XDECREF(done);
        r = done == NULL ? -1 : 0;
    }
    else {
        if (!head_has_trace_header(buffer))
            r = PyList_Append(buffer, line);
        Py_DECREF(line);
    }
    Py_XDECREF(buffer);
    return r;
}

/* install_wire's HTTPConnection.endheaders: see _http._endheaders, its twin. */
static PyObject *wire_hook_call(PyObject *op, PyObject *const *args, size_t nargsf, PyObject *kwnames)
{
    HookObject *hook = (HookObject *)op;
    Py_ssize_t nargs = PyVectorcall_NARGS(nargsf);
    if (nargs < 1 || http_globals == NULL)
        return forward(hook, args, nargsf, kwnames);
    int suppressed = context_truth(http_suppressed);
    if (suppressed != 0)
        return suppressed < 0 ? NULL : forward(hook, args, nargsf, kwnames);
    PyObject *call;
    if (PyContextVar_Get(http_active, Py_None, &call) < 0)
        return NULL;
    if (call == Py_None || !PyObject_TypeCheck(call, &CallCoreType)) {
        /* http.client used directly (its own span when the httpclient integration is on), or a call of
           another kind: the Python hook */
        int own = call == Py_None;
        Py_DECREF(call);
        PyObject *own_spans = own ? PyObject_GetAttr(http_wire, h[H_OWN_SPANS]) : NULL;
        int spans = own ? (own_spans == NULL ? -1 : PyObject_IsTrue(own_spans)) : 1;
        Py_XDECREF(own_spans);
        if (spans < 0)
            return NULL;
        if (!spans)
            return forward(hook, args, nargsf, kwnames);
        PyObject *python = http_global(H_ENDHEADERS);
        return python == NULL ? NULL : PyObject_Vectorcall(python, args, nargsf, kwnames);
    }
    CallObject *c = (CallObject *)call;
    c->attempts += 1;  /* one attempt of an outer layer's logical request */
    if (inject_headers(args[0], c) < 0 && !dropped()) {
        Py_DECREF(call);
        return NULL;
    }
    Py_DECREF(call);
    return forward(hook, args, nargsf, kwnames);
}

static PyObject *hook_get(PyObject *op, PyObject *obj, PyObject *type)
{
    if (obj == NULL || obj == Py_None) {
        Py_INCREF(op);
        return op;
    }
    return PyMethod_New(op, obj);
}

#define HOOK_FIELDS(apply) apply(real) apply(describe) apply(settle) apply(prepare) apply(error_status) apply(dict)

static int hook_traverse(PyObject *op, visitproc visit, void *arg)
{
    HookObject *self = (HookObject *)op;
    HOOK_FIELDS(VISIT_FIELD)
    return 0;
}

static int hook_clear(PyObject *op)
{
    HookObject *self = (HookObject *)op;
    HOOK_FIELDS(CLEAR_FIELD)
    return 0;
}

static void hook_dealloc(PyObject *op)
{
    PyObject_GC_UnTrack(op);
    hook_clear(op);
    PyObject_GC_Del(op);
}

static PyObject *hook_repr(PyObject *op)
{
    return PyUnicode_FromFormat("<autoinstr hook of %R>", ((HookObject *)op)->real);
}

static PyGetSetDef hook_getset[] = {
    {"__dict__", PyObject_GenericGetDict, PyObject_GenericSetDict, NULL, NULL},
    {NULL, NULL, NULL, NULL, NULL}};

static PyTypeObject HookType = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "autoinstr._speedups.Hook",
    .tp_basicsize = sizeof(HookObject),
    .tp_flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_HAVE_GC | Py_TPFLAGS_HAVE_VECTORCALL | Py_TPFLAGS_METHOD_DESCRIPTOR,
    .tp_doc = "A client method traced (autoinstr.integrations._http): called as the real one is.",
    .tp_traverse = hook_traverse,
    .tp_clear = hook_clear,
    .tp_dealloc = hook_dealloc,
    .tp_repr = hook_repr,
    .tp_call = PyVectorcall_Call,
    .tp_vectorcall_offset = offsetof(HookObject, vectorcall),
    .tp_descr_get = hook_get,
    .tp_dictoffset = offsetof(HookObject, dict),
    .tp_getset = hook_getset,
};

static PyObject *new_hook(PyObject *real, PyObject *describe, PyObject *settle, PyObject *prepare,
                          PyObject *error_status, vectorcallfunc call)
{
    if (!PyCallable_Check(real)) {
        PyErr_SetString(PyExc_TypeError, "a hook needs the real function");
        return NULL;
    }
    HookObject *hook = PyObject_GC_New(HookObject, &HookType);
    if (hook == NULL)
        return NULL;
    PyObject *parts[5] = {real, describe, settle, prepare, error_status};
    PyObject **slots[5] = {&hook->real, &hook->describe, &hook->settle, &hook->prepare, &hook->error_status};
    for (int i = 0; i < 5; i++) {
        Py_INCREF(parts[i]);
        *slots[i] = parts[i];
    }
    hook->dict = NULL;
    hook->vectorcall = call;
    PyObject_GC_Track((PyObject *)hook);
    return (PyObject *)hook;
}

static PyObject *method_hook(PyObject *module, PyObject *args)
{
    PyObject *real, *describe, *settle, *prepare, *error_status;
    if (!PyArg_ParseTuple(args, "OOOOO", &real, &describe, &settle, &prepare, &error_status))
        return NULL;
    return new_hook(real, describe, settle, prepare, error_status, method_hook_call);
}

static PyObject *wire_hook(PyObject *module, PyObject *real)
{
    return new_hook(real, Py_None, Py_None, Py_None, Py_None, wire_hook_call);
}

static int http_module_init(PyObject *module)
{
    for (int i = 0; i < H_COUNT; i++)
        if ((h[i] = PyUnicode_InternFromString(http_names[i])) == NULL)
            return -1;
    if ((int_400 = PyLong_FromLong(400)) == NULL)
        return -1;
    if (PyType_Ready(&CallCoreType) < 0 || PyType_Ready(&HookType) < 0)
        return -1;
    Py_INCREF(&CallCoreType);
    if (PyModule_AddObject(module, "CallCore", (PyObject *)&CallCoreType) < 0) {
        Py_DECREF(&CallCoreType);
        return -1;
    }
    return 0;
}
