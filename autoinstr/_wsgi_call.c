/* The WSGI server span's hot path in C (included by _speedups.c, after _span.c): wsgi_call(app, environ,
   start_response) is autoinstr.integrations._wsgi._call_traced, and Response its _Response: the start_response
   the app gets, the response iterable the server gets (the span ends when it is exhausted or closed).

   _wsgi.py is the twin, used where the speedups are not built or are turned off (AUTOINSTR_SPEEDUPS=false);
   tests/test_wsgi_core.py runs the WSGI tests on both and compares the spans random requests leave.
   Here is the common case; the rest calls the module's Python functions, looked up in its globals at each
   call (so the settings the tests change take effect): a request carrying trace context, with an unknown
   method or allow-listed request headers (_server_span), allow-listed response headers (_record_response),
   traceresponse headers (_trace_headers), an exception from the app (_fail_response), a wsgi.file_wrapper
   result (_hook_close), an environ that is not a dict (_call_traced). */

typedef struct {
    PyObject_HEAD
    PyObject *span, *real_start_response, *token, *result, *iterator;
    int status_code;
    char done;
    signed char elsewhere;  /* the body is sent from another thread than the app's: -1 not known yet */
    unsigned long thread;
} ResponseObject;

static PyTypeObject ResponseType, SizedResponseType;
static PyObject *wsgi_globals, *wsgi_environ_key, *wsgi_known_methods, *wsgi_suppressed, *wsgi_statsd;

enum {
    W_CAPTURE_REQUEST, W_CAPTURE_RESPONSE, W_RESPONSE_HEADERS, W_SERVER_SPAN, W_CONNECTION_ATTRIBUTES,
    W_CONNECTIONS, W_REDACT_QUERY, W_RECORD_RESPONSE, W_TRACE_HEADERS, W_FAIL_RESPONSE, W_HOOK_CLOSE,
    W_CALL_TRACED, W_ENABLED, W_SERVER_REQUEST, W_FINISH, W_CLOSE, W_LEN, W_SET_STATUS, W_ISDIGIT, W_ERROR,
    W_SERVER, W_GET, W_SLASH, W_TRACEPARENT, W_B3, W_X_B3_TRACEID, W_BAGGAGE, W_REQUEST_METHOD, W_PATH_INFO,
    W_HTTP_HOST, W_URL_SCHEME, W_SERVER_PROTOCOL, W_REMOTE_ADDR, W_QUERY_STRING, W_USER_AGENT, W_CONTENT_LENGTH,
    W_FILE_WRAPPER, W_A_METHOD, W_A_PATH, W_A_QUERY, W_A_USER_AGENT, W_A_REQUEST_SIZE, W_A_STATUS_CODE,
    W_A_RESPONSE_SIZE, W_A_ERROR_TYPE, W_VIEW_FAILED, W_CODE_FUNCTION, W_COUNT
};
static const char *wsgi_names[W_COUNT] = {
    "_CAPTURE_REQUEST", "_CAPTURE_RESPONSE", "_RESPONSE_HEADERS", "_server_span", "_connection_attributes",
    "_connections", "redact_query", "_record_response", "_trace_headers", "_fail_response", "_hook_close",
    "_call_traced", "enabled", "server_request", "finish", "close", "__len__", "set_status", "isdigit", "error",
    "server", "GET", "/", "HTTP_TRACEPARENT", "HTTP_B3", "HTTP_X_B3_TRACEID", "HTTP_BAGGAGE", "REQUEST_METHOD",
    "PATH_INFO", "HTTP_HOST", "wsgi.url_scheme", "SERVER_PROTOCOL", "REMOTE_ADDR", "QUERY_STRING",
    "HTTP_USER_AGENT", "CONTENT_LENGTH", "wsgi.file_wrapper", "http.request.method", "url.path", "url.query",
    "user_agent.original", "http.request.body.size", "http.response.status_code", "http.response.body.size",
    "error.type", "_view_failed", "code.function"};
static PyObject *w[W_COUNT];

#if PY_VERSION_HEX >= 0x030C0000
#define SAVE_EXCEPTION(saved) PyObject *saved = PyErr_GetRaisedException()
#define RESTORE_EXCEPTION(saved) PyErr_SetRaisedException(saved)
#define EXCEPTION_VALUE(saved) (saved)
#define DROP_EXCEPTION(saved) Py_XDECREF(saved)
#else
#define SAVE_EXCEPTION(saved)                                                                                      \
    PyObject *saved##_type, *saved, *saved##_tb;                                                                  \
    PyErr_Fetch(&saved##_type, &saved, &saved##_tb);                                                              \
    PyErr_NormalizeException(&saved##_type, &saved, &saved##_tb);                                                 \
    if (saved != NULL && saved##_tb != NULL)                                                                      \
        PyException_SetTraceback(saved, saved##_tb)
#define RESTORE_EXCEPTION(saved) PyErr_Restore(saved##_type, saved, saved##_tb)
#define EXCEPTION_VALUE(saved) (saved)
#define DROP_EXCEPTION(saved)                                                                                      \
    do {                                                                                                           \
        Py_XDECREF(saved##_type);                                                                                  \
        Py_XDECREF(saved);                                                                                         \
        Py_XDECREF(saved##_tb);                                                                                    \
    } while (0)
#endif

/* The n bytes at `text`, ASCII letters lowercased (as bytes.lower() and str.lower() do them), equal `lower`. */
static int ascii_lower_equal(const char *text, const char *lower, Py_ssize_t n)
{
    for (Py_ssize_t i = 0; i < n; i++) {
        char c = text[i];
        if (c >= 'A' && c <= 'Z')
            c = (char)(c - 'A' + 'a');
        if (c != lower[i])
            return 0;
    }
    return 1;
}

/* fn(*args), the agent's own bookkeeping beside an exception of the app being raised: its failure is dropped
   (fn NULL, a lookup that failed: nothing called). */
static void call_dropping_errors(PyObject *fn, PyObject *const *args, size_t nargs)
{
    PyObject *done = fn == NULL ? NULL : PyObject_Vectorcall(fn, args, nargs, NULL);
    if (done == NULL)
        PyErr_Clear();
    Py_XDECREF(done);
}

/* var.reset(token), else (a token of another context) var.set(None): what a context left by another path
   cannot get back. An exception being raised is kept. */
static void reset_or_unset(PyObject *var, PyObject *token)
{
    SAVE_EXCEPTION(saved);
    if (PyContextVar_Reset(var, token) < 0) {
        PyErr_Clear();
        PyObject *other = PyContextVar_Set(var, Py_None);
        if (other == NULL)
            PyErr_Clear();
        Py_XDECREF(other);
    }
    RESTORE_EXCEPTION(saved);
}

static PyObject *configure_wsgi(PyObject *self, PyObject *args)
{
    PyObject *globals, *key, *methods, *suppressed, *statsd;
    if (!PyArg_ParseTuple(args, "O!UO!OO", &PyDict_Type, &globals, &key, &PyFrozenSet_Type, &methods, &suppressed,
                          &statsd))
        return NULL;
    if (!PyContextVar_CheckExact(suppressed)) {
        PyErr_SetString(PyExc_TypeError, "configure_wsgi(): not a ContextVar");
        return NULL;
    }
    PyObject *objects[5] = {globals, key, methods, suppressed, statsd};
    PyObject **slots[5] = {&wsgi_globals, &wsgi_environ_key, &wsgi_known_methods, &wsgi_suppressed, &wsgi_statsd};
    for (int i = 0; i < 5; i++) {
        Py_INCREF(objects[i]);
        Py_XSETREF(*slots[i], objects[i]);
    }
    Py_RETURN_NONE;
}

/* One of the _wsgi module's globals, borrowed. */
static PyObject *wsgi_global(int which)
{
    PyObject *value = PyDict_GetItemWithError(wsgi_globals, w[which]);
    if (value == NULL && !PyErr_Occurred())
        PyErr_Format(PyExc_RuntimeError, "autoinstr.integrations._wsgi has no %U", w[which]);
    return value;
}

/* A global's truth: 1, 0, -1 on error. */
static int wsgi_flag(int which)
{
    PyObject *value = wsgi_global(which);
    return value == NULL ? -1 : PyObject_IsTrue(value);
}

/* A module's switch (statsd's `enabled`): its truth, 1, 0 or -1 on error. From the module's dict (a getattr costs
   a few hundred instructions on every request). */
static int module_flag(PyObject *module, PyObject *name)
{
    if (PyModule_CheckExact(module)) {
        PyObject *value = PyDict_GetItemWithError(PyModule_GetDict(module), name);
        if (value != NULL)
            return PyObject_IsTrue(value);
        if (PyErr_Occurred())
            return -1;
    }
    PyObject *value = PyObject_GetAttr(module, name);
    int truth = value == NULL ? -1 : PyObject_IsTrue(value);
    Py_XDECREF(value);
    return truth;
}

/* environ.get(key), borrowed (Py_None when missing; NULL on error). */
static PyObject *environ_get(PyObject *environ, int which)
{
    PyObject *value = PyDict_GetItemWithError(environ, w[which]);
    if (value == NULL && !PyErr_Occurred())
        return Py_None;
    return value;
}

static int set_attribute(PyObject *attrs, int which, PyObject *value)
{
    return PyDict_SetItem(attrs, w[which], value);
}

/* `environ.get(key)` set as the attribute when it is true (a new reference to the value given, or not). */
static int set_if_true(PyObject *attrs, int which, PyObject *value)
{
    int truth = PyObject_IsTrue(value);
    return truth <= 0 ? truth : set_attribute(attrs, which, value);
}

/* The last connection seen and its attributes: most requests come on the connection of the one before (or one
   alike), and comparing four short strings costs less than the tuple, its hash (the strings are new each request,
   their hashes not yet computed) and the lookup in _connections. */
static PyObject *last_connection[4], *last_connection_attributes;

/* Whether a and b are exact str objects of the same text (other types are not compared: their __eq__ could run
   code, or lie). */
static int same_text(PyObject *a, PyObject *b)
{
    if (!PyUnicode_CheckExact(a) || !PyUnicode_CheckExact(b))
        return 0;
#if PY_VERSION_HEX < 0x030C0000
    if (PyUnicode_READY(a) < 0 || PyUnicode_READY(b) < 0) {
        PyErr_Clear();
        return 0;
    }
#endif
    Py_ssize_t n = PyUnicode_GET_LENGTH(a);
    int kind = PyUnicode_KIND(a);
    return n == PyUnicode_GET_LENGTH(b) && kind == (int)PyUnicode_KIND(b) &&
           memcmp(PyUnicode_DATA(a), PyUnicode_DATA(b), (size_t)n * (size_t)kind) == 0;
}

/* _connection_attributes(environ) (new reference): what every request of its connection shares. */
static PyObject *wsgi_connection_attributes(PyObject *environ)
{
    static const int connection_keys[4] = {W_HTTP_HOST, W_URL_SCHEME, W_SERVER_PROTOCOL, W_REMOTE_ADDR};
    PyObject *parts[4];
    int same = last_connection_attributes != NULL;
    for (int i = 0; i < 4; i++) {
        if ((parts[i] = environ_get(environ, connection_keys[i])) == NULL)
            return NULL;
        if (same && parts[i] != last_connection[i])
            same = same_text(parts[i], last_connection[i]);
    }
    if (same) {
        Py_INCREF(last_connection_attributes);
        return last_connection_attributes;
    }
    PyObject *key = PyTuple_Pack(4, parts[0], parts[1], parts[2], parts[3]);  /* (holds the parts from here) */
    if (key == NULL)
        return NULL;
    PyObject *connections = wsgi_global(W_CONNECTIONS);
    PyObject *found = connections == NULL ? NULL : PyDict_GetItemWithError(connections, key);
    int cached = found != NULL;
    if (found != NULL)
        Py_INCREF(found);
    else if (!PyErr_Occurred()) {
        PyObject *work_out = wsgi_global(W_CONNECTION_ATTRIBUTES);
        found = work_out == NULL ? NULL : PyObject_CallOneArg(work_out, environ);
        /* kept by _connections (not once it is full: then worked out each time, and here too) */
        connections = found == NULL ? NULL : wsgi_global(W_CONNECTIONS);
        cached = connections != NULL && PyDict_GetItemWithError(connections, key) == found;
        if (found != NULL)
            PyErr_Clear();  /* (a failed check: not kept here, that is all) */
    }
    for (int i = 0; i < 4 && cached; i++)  /* (only str and None kept: letting go of them runs no code) */
        cached = PyTuple_GET_ITEM(key, i) == Py_None || PyUnicode_CheckExact(PyTuple_GET_ITEM(key, i));
    if (found != NULL && cached && PyDict_CheckExact(found)) {
        for (int i = 0; i < 4; i++) {
            PyObject *part = PyTuple_GET_ITEM(key, i);
            Py_INCREF(part);
            Py_XSETREF(last_connection[i], part);
        }
        Py_INCREF(found);
        Py_XSETREF(last_connection_attributes, found);
    }
    Py_DECREF(key);
    return found;
}

/* The request's server span (new reference), as _server_span(environ) makes it: here for a request with a
   known method, no trace context and no allow-listed request header; that function for the others. */
static PyObject *server_span(PyObject *environ)
{
    static const int context_keys[4] = {W_TRACEPARENT, W_B3, W_X_B3_TRACEID, W_BAGGAGE};
    int plain = wsgi_flag(W_CAPTURE_REQUEST);
    if (plain < 0)
        return NULL;
    plain = !plain;
    for (int i = 0; plain && i < 4; i++) {
        int carries = PyDict_Contains(environ, w[context_keys[i]]);
        if (carries < 0)
            return NULL;
        plain = !carries;
    }
    PyObject *method = plain ? environ_get(environ, W_REQUEST_METHOD) : NULL;
    if (plain && method == NULL)
        return NULL;
    if (method == Py_None)
        method = w[W_GET];
    if (plain && !(PyUnicode_CheckExact(method) && PyUnicode_GET_LENGTH(method) > 0))
        plain = 0;
    if (plain) {
        int known = PySet_Contains(wsgi_known_methods, method);
        if (known < 0)
            return NULL;
        plain = known;
    }
    if (!plain) {
        PyObject *make = wsgi_global(W_SERVER_SPAN);
        return make == NULL ? NULL : PyObject_CallOneArg(make, environ);
    }
    PyObject *span = span_new(method, w[W_SERVER], Py_None);  /* Span(method, kind="server", parent=None) */
    if (span == NULL)
        return NULL;
    if (PyDict_SetItem(environ, wsgi_environ_key, span) < 0 || !PyObject_TypeCheck(span, &SpanCoreType))
        goto fail;
    SpanObject *s = (SpanObject *)span;
    if (s->sampled != Py_True)
        return span;
    /* the attributes: a copy of what every request of its connection shares (one small table cloned rather than
       five entries inserted), then the method and the path */
    PyObject *found = wsgi_connection_attributes(environ);
    PyObject *attrs = found == NULL ? NULL : PyDict_CheckExact(found) ? PyDict_Copy(found) : PyDict_New();
    int updated = attrs == NULL || (!PyDict_CheckExact(found) && PyDict_Update(attrs, found) < 0) ? -1 : 0;
    Py_XDECREF(found);
    if (attrs != NULL)
        Py_XSETREF(s->attributes, attrs);
    if (updated < 0)
        goto fail;
    PyObject *path = environ_get(environ, W_PATH_INFO);
    int has_path = path == NULL ? -1 : PyObject_IsTrue(path);
    if (has_path < 0 || set_attribute(attrs, W_A_METHOD, method) < 0 ||
        set_attribute(attrs, W_A_PATH, has_path ? path : w[W_SLASH]) < 0)
        goto fail;
    PyObject *query = environ_get(environ, W_QUERY_STRING);
    int has_query = query == NULL ? -1 : PyObject_IsTrue(query);
    if (has_query < 0)
        goto fail;
    if (has_query) {
        PyObject *redact = wsgi_global(W_REDACT_QUERY);
        PyObject *redacted = redact == NULL ? NULL : PyObject_CallOneArg(redact, query);
        int set = redacted == NULL ? -1 : set_attribute(attrs, W_A_QUERY, redacted);
        Py_XDECREF(redacted);
        if (set < 0)
            goto fail;
    }
    PyObject *agent = environ_get(environ, W_USER_AGENT);
    if (agent == NULL || set_if_true(attrs, W_A_USER_AGENT, agent) < 0)
        goto fail;
    PyObject *length = environ_get(environ, W_CONTENT_LENGTH);
    int has_length = length == NULL ? -1 : PyObject_IsTrue(length);
    if (has_length < 0)
        goto fail;
    if (has_length) {  /* length.isdigit() and int(length), as Python does them */
        PyObject *digits = PyObject_CallMethodNoArgs(length, w[W_ISDIGIT]);
        int is_digits = digits == NULL ? -1 : PyObject_IsTrue(digits);
        Py_XDECREF(digits);
        if (is_digits < 0)
            goto fail;
        if (is_digits) {
            PyObject *size = PyNumber_Long(length);
            int set = size == NULL ? -1 : set_attribute(attrs, W_A_REQUEST_SIZE, size);
            Py_XDECREF(size);
            if (set < 0)
                goto fail;
        }
    }
    return span;
fail:
    Py_DECREF(span);
    return NULL;
}

/* ------------------------------------------------------------------------------------- the response */

static int response_finish(ResponseObject *self)
{
    if (self->done)
        return 0;
    self->done = 1;
    PyObject *token = self->token;
    self->token = NULL;
    if (token != NULL && token != Py_None && PyContextVar_Reset(current_var, token) < 0) {
        if (!PyErr_ExceptionMatches(PyExc_ValueError)) {  /* finished from another context: its own */
            Py_DECREF(token);
            return -1;
        }
        PyErr_Clear();
    }
    Py_XDECREF(token);
    PyObject *done = PyObject_TypeCheck(self->span, &SpanCoreType) ? core_finish(self->span, NULL, 0, NULL)
                                                                     : PyObject_CallMethodNoArgs(self->span, w[W_FINISH]);
    if (done == NULL)
        return -1;
    Py_DECREF(done);
    int counting = module_flag(wsgi_statsd, w[W_ENABLED]);
    if (counting <= 0)
        return counting;
    PyObject *code = PyLong_FromLong(self->status_code);
    if (code == NULL)
        return -1;
    PyObject *recorded = PyObject_VectorcallMethod(w[W_SERVER_REQUEST], (PyObject *[]){wsgi_statsd, self->span, code},
                                                   3, NULL);  /* _statsd.server_request(span, status code) */
    Py_DECREF(code);
    if (recorded == NULL)
        return -1;
    Py_DECREF(recorded);
    return 0;
}

static PyObject *response_finish_method(PyObject *op, PyObject *unused)
{
    if (response_finish((ResponseObject *)op) < 0)
        return NULL;
    Py_RETURN_NONE;
}

/* The body raised: the exception on the span, the span ended, the exception raised on unchanged. */
static PyObject *body_failed(ResponseObject *self)
{
    SAVE_EXCEPTION(saved);
    PyObject *recorded = PyObject_CallMethodOneArg(self->span, str_record_exception, EXCEPTION_VALUE(saved));
    Py_XDECREF(recorded);
    if (recorded == NULL || response_finish(self) < 0)
        PyErr_Clear();
    RESTORE_EXCEPTION(saved);
    return NULL;
}

static PyObject *response_iter(PyObject *op)
{
    Py_INCREF(op);
    return op;
}

static PyObject *response_next(PyObject *op)
{
    ResponseObject *self = (ResponseObject *)op;
    if (self->iterator == NULL) {
        if (self->result == NULL) {
            PyErr_SetString(PyExc_AttributeError, "_result");
            return NULL;
        }
        if ((self->iterator = PyObject_GetIter(self->result)) == NULL)
            return body_failed(self);
        self->elsewhere = PyThread_get_thread_ident() != self->thread;
    }
    PyObject *token = NULL;
    if (self->elsewhere) {  /* the request's span current around each chunk (see _Response._chunks_elsewhere) */
        if ((token = PyContextVar_Set(current_var, self->span)) == NULL)
            return NULL;
    }
    PyObject *chunk = Py_TYPE(self->iterator)->tp_iternext(self->iterator);
    if (token != NULL) {
        reset_or_unset(current_var, token);
        Py_DECREF(token);
    }
    if (chunk != NULL)
        return chunk;
    if (PyErr_Occurred()) {
        if (!PyErr_ExceptionMatches(PyExc_StopIteration)) {
            if (PyErr_ExceptionMatches(PyExc_GeneratorExit))
                return NULL;
            return body_failed(self);
        }
        PyErr_Clear();
    }
    response_finish(self);
    return NULL;
}

static PyObject *response_close(PyObject *op, PyObject *unused)
{
    ResponseObject *self = (ResponseObject *)op;
    int failed = 0;
    if (self->result == NULL) {
        PyErr_SetString(PyExc_AttributeError, "_result");
        failed = 1;
    }
    else {
        PyObject *close;
        int found = optional_attr(self->result, w[W_CLOSE], &close);
        if (found <= 0)
            failed = found < 0;
        else {
            PyObject *closed = PyObject_CallNoArgs(close);
            Py_DECREF(close);
            if (closed == NULL)
                failed = 1;
            Py_XDECREF(closed);
        }
    }
    if (failed) {  /* finally: the span ends all the same (an error there is the one raised, as in Python) */
        SAVE_EXCEPTION(saved);
        if (response_finish(self) < 0) {
            DROP_EXCEPTION(saved);
            return NULL;
        }
        RESTORE_EXCEPTION(saved);
        return NULL;
    }
    if (response_finish(self) < 0)
        return NULL;
    Py_RETURN_NONE;
}

/* A header value's `str(value).isdigit()` and `int(value)`: the size, NULL (no error) when not digits. */
static PyObject *body_size(PyObject *value)
{
    if (PyUnicode_CheckExact(value) && PyUnicode_IS_ASCII(value)) {
        Py_ssize_t n = PyUnicode_GET_LENGTH(value);
        const Py_UCS1 *c = PyUnicode_1BYTE_DATA(value);
        if (n == 0)
            return NULL;
        long long size = 0;
        for (Py_ssize_t i = 0; i < n; i++) {
            if (c[i] < '0' || c[i] > '9')
                return NULL;
            size = size * 10 + (c[i] - '0');
        }
        return n <= 18 ? PyLong_FromLongLong(size) : PyLong_FromUnicodeObject(value, 10);
    }
    PyObject *text = PyObject_Str(value);
    PyObject *digits = text == NULL ? NULL : PyObject_CallMethodNoArgs(text, w[W_ISDIGIT]);
    Py_XDECREF(text);
    int is_digits = digits == NULL ? -1 : PyObject_IsTrue(digits);
    Py_XDECREF(digits);
    if (is_digits <= 0)
        return NULL;
    return PyNumber_Long(value);
}

/* _record_response(span, code, headers) for a list of (str, value) pairs and nothing allow-listed; 0 when it
   is not that case (nothing done: the caller calls the Python function), 1 done, -1 on error. */
static int record_response(SpanObject *span, int code, PyObject *headers)
{
    if (!PyList_CheckExact(headers) || span->attributes == NULL || !PyDict_CheckExact(span->attributes))
        return 0;
    Py_ssize_t n = PyList_GET_SIZE(headers);
    for (Py_ssize_t i = 0; i < n; i++) {
        PyObject *pair = PyList_GET_ITEM(headers, i);
        if (!PyTuple_CheckExact(pair) || PyTuple_GET_SIZE(pair) != 2 || !PyUnicode_CheckExact(PyTuple_GET_ITEM(pair, 0)))
            return 0;
    }
    PyObject *attrs = span->attributes;
    PyObject *status = PyLong_FromLong(code);
    int set = status == NULL ? -1 : set_attribute(attrs, W_A_STATUS_CODE, status);
    Py_XDECREF(status);
    if (set < 0)
        return -1;
    if (code >= 500) {
        PyObject *done = PyObject_CallMethodOneArg((PyObject *)span, w[W_SET_STATUS], w[W_ERROR]);
        if (done == NULL)
            return -1;
        Py_DECREF(done);
        PyObject *type = PyUnicode_FromFormat("%d", code);
        PyObject *had = type == NULL ? NULL : PyDict_SetDefault(attrs, w[W_A_ERROR_TYPE], type);
        Py_XDECREF(type);
        if (had == NULL)
            return -1;
    }
    Py_INCREF(headers);
    for (Py_ssize_t i = 0; i < PyList_GET_SIZE(headers); i++) {
        PyObject *pair = PyList_GET_ITEM(headers, i);  /* (checked again: Python code ran since) */
        if (!PyTuple_CheckExact(pair) || PyTuple_GET_SIZE(pair) != 2 || !PyUnicode_CheckExact(PyTuple_GET_ITEM(pair, 0)))
            continue;
        PyObject *name = PyTuple_GET_ITEM(pair, 0);
        if (PyUnicode_GET_LENGTH(name) != 14)
            continue;
        int is_length;
        if (PyUnicode_IS_ASCII(name)) {
            const char *c = (const char *)PyUnicode_1BYTE_DATA(name);
            is_length = ascii_lower_equal(c, "content-length", 14);
        }
        else {
            PyObject *lower = PyObject_CallMethod(name, "lower", NULL);
            is_length = lower == NULL ? -1 : PyUnicode_CompareWithASCIIString(lower, "content-length") == 0;
            Py_XDECREF(lower);
            if (is_length < 0) {
                Py_DECREF(headers);
                return -1;
            }
        }
        if (!is_length)
            continue;
        PyObject *size = body_size(PyTuple_GET_ITEM(pair, 1));
        if (size == NULL) {
            if (PyErr_Occurred()) {
                Py_DECREF(headers);
                return -1;
            }
            continue;
        }
        set = set_attribute(attrs, W_A_RESPONSE_SIZE, size);
        Py_DECREF(size);
        if (set < 0) {
            Py_DECREF(headers);
            return -1;
        }
    }
    Py_DECREF(headers);
    return 1;
}

/* int(status[:3]) (str(status)[:3] for another type); -1 with an error set when it is not a number. */
static int status_code_of(PyObject *status, int *code)
{
    if (PyUnicode_CheckExact(status) && PyUnicode_GET_LENGTH(status) >= 3 && PyUnicode_IS_ASCII(status)) {
        const Py_UCS1 *c = PyUnicode_1BYTE_DATA(status);
        if (c[0] >= '0' && c[0] <= '9' && c[1] >= '0' && c[1] <= '9' && c[2] >= '0' && c[2] <= '9') {
            *code = (c[0] - '0') * 100 + (c[1] - '0') * 10 + (c[2] - '0');
            return 0;
        }
    }
    PyObject *text = PyUnicode_CheckExact(status) ? (Py_INCREF(status), status) : PyObject_Str(status);
    PyObject *head = text == NULL ? NULL : PySequence_GetSlice(text, 0, 3);
    Py_XDECREF(text);
    PyObject *number = head == NULL ? NULL : PyNumber_Long(head);
    Py_XDECREF(head);
    if (number == NULL)
        return -1;
    long value = PyLong_AsLong(number);
    Py_DECREF(number);
    if (value == -1 && PyErr_Occurred())
        return -1;
    *code = (int)value;  /* three characters: within an int */
    return 0;
}

static PyObject *response_start_response(PyObject *op, PyObject *const *args, Py_ssize_t nargs, PyObject *kwnames)
{
    ResponseObject *self = (ResponseObject *)op;
    static const char *const names[3] = {"status", "headers", "exc_info"};
    PyObject *given[3] = {NULL, NULL, NULL};
    if (nargs > 3) {
        PyErr_Format(PyExc_TypeError, "start_response() takes from 2 to 3 positional arguments but %zd were given",
                     nargs);
        return NULL;
    }
    for (Py_ssize_t i = 0; i < nargs; i++)
        given[i] = args[i];
    Py_ssize_t nkw = kwnames == NULL ? 0 : PyTuple_GET_SIZE(kwnames);
    for (Py_ssize_t k = 0; k < nkw; k++) {
        PyObject *kw = PyTuple_GET_ITEM(kwnames, k);
        int found = -1;
        for (int j = 0; j < 3; j++)
            if (PyUnicode_CompareWithASCIIString(kw, names[j]) == 0)
                found = j;
        if (found < 0 || given[found] != NULL) {
            PyErr_Format(PyExc_TypeError, "start_response() got an unexpected or repeated argument %R", kw);
            return NULL;
        }
        given[found] = args[nargs + k];
    }
    if (given[0] == NULL || given[1] == NULL) {
        PyErr_SetString(PyExc_TypeError, "start_response() missing required argument 'status' or 'headers'");
        return NULL;
    }
    PyObject *status = given[0], *headers = given[1], *exc_info = given[2];
    int code;
    if (status_code_of(status, &code) == 0) {  /* (any failure here: the span records less, the app goes on) */
        self->status_code = code;
        PyObject *span = self->span;
        int sampled = PyObject_TypeCheck(span, &SpanCoreType) ? sampled_of((SpanObject *)span) : -1;
        int recorded = 0;
        if (sampled == 1) {
            int capture = wsgi_flag(W_CAPTURE_RESPONSE);
            if (capture == 0)
                recorded = record_response((SpanObject *)span, code, headers);
            if (recorded == 0 && !PyErr_Occurred()) {
                PyObject *record = wsgi_global(W_RECORD_RESPONSE);
                PyObject *code_object = record == NULL ? NULL : PyLong_FromLong(code);
                PyObject *done = code_object == NULL ? NULL
                                                     : PyObject_Vectorcall(record, (PyObject *[]){span, code_object, headers},
                                                                           3, NULL);
                Py_XDECREF(code_object);
                Py_XDECREF(done);
            }
        }
    }
    PyErr_Clear();
    int trace_headers = wsgi_flag(W_RESPONSE_HEADERS);
    if (trace_headers < 0)
        return NULL;
    PyObject *sent_headers = headers;
    Py_INCREF(sent_headers);
    if (trace_headers) {
        PyObject *add = wsgi_global(W_TRACE_HEADERS);
        Py_SETREF(sent_headers, add == NULL ? NULL : PyObject_Vectorcall(add, (PyObject *[]){self->span, headers}, 2, NULL));
        if (sent_headers == NULL)
            return NULL;
    }
    PyObject *forward[3] = {status, sent_headers, exc_info};
    PyObject *answer = PyObject_Vectorcall(self->real_start_response, forward,
                                           exc_info != NULL && exc_info != Py_None ? 3 : 2, NULL);
    Py_DECREF(sent_headers);
    return answer;
}

static PyMethodDef start_response_def = {"_start_response", (PyCFunction)(void (*)(void))response_start_response,
                                         METH_FASTCALL | METH_KEYWORDS, NULL};

static PyMemberDef response_members[] = {
    {"_span", T_OBJECT_EX, offsetof(ResponseObject, span), 0, NULL},
    {"_real_start_response", T_OBJECT_EX, offsetof(ResponseObject, real_start_response), 0, NULL},
    {"_token", T_OBJECT, offsetof(ResponseObject, token), 0, NULL},
    {"_result", T_OBJECT_EX, offsetof(ResponseObject, result), 0, NULL},
    {"_status_code", T_INT, offsetof(ResponseObject, status_code), 0, NULL},
    {"_done", T_BOOL, offsetof(ResponseObject, done), 0, NULL},
    {"_thread", T_ULONG, offsetof(ResponseObject, thread), READONLY, NULL},
    {NULL, 0, 0, 0, NULL}};

/* Attributes the response does not have are its result's (the app's iterable). */
static PyObject *response_getattro(PyObject *op, PyObject *name)
{
    PyObject *value = PyObject_GenericGetAttr(op, name);
    ResponseObject *self = (ResponseObject *)op;
    if (value != NULL || self->result == NULL || !PyErr_ExceptionMatches(PyExc_AttributeError))
        return value;
    if (PyUnicode_Check(name) && PyUnicode_GET_LENGTH(name) > 0 && PyUnicode_READ_CHAR(name, 0) == '_')
        for (PyMemberDef *m = response_members; m->name != NULL; m++)
            if (PyUnicode_CompareWithASCIIString(name, m->name) == 0)
                return NULL;  /* a member not set: not the result's */
    PyErr_Clear();
    return PyObject_GetAttr(self->result, name);
}

static Py_ssize_t response_length(PyObject *op)
{
    ResponseObject *self = (ResponseObject *)op;
    if (self->result == NULL) {
        PyErr_SetString(PyExc_AttributeError, "_result");
        return -1;
    }
    return PyObject_Size(self->result);
}

#define RESPONSE_FIELDS(apply) apply(span) apply(real_start_response) apply(token) apply(result) apply(iterator)
#define VISIT_FIELD(field) Py_VISIT(self->field);
#define CLEAR_FIELD(field) Py_CLEAR(self->field);

static int response_traverse(PyObject *op, visitproc visit, void *arg)
{
    ResponseObject *self = (ResponseObject *)op;
    RESPONSE_FIELDS(VISIT_FIELD)
    return 0;
}

static int response_clear(PyObject *op)
{
    ResponseObject *self = (ResponseObject *)op;
    RESPONSE_FIELDS(CLEAR_FIELD)
    return 0;
}

static void response_dealloc(PyObject *op)
{
    PyObject_GC_UnTrack(op);
    response_clear(op);
    PyObject_GC_Del(op);
}

static PyMethodDef response_methods[] = {
    {"close", response_close, METH_NOARGS, "Close the app's iterable (if it can be) and end the span."},
    {"_finish", response_finish_method, METH_NOARGS, NULL},
    {"_start_response", (PyCFunction)(void (*)(void))response_start_response, METH_FASTCALL | METH_KEYWORDS, NULL},
    {NULL, NULL, 0, NULL}};

#define RESPONSE_TYPE_FIELDS                                                                                       \
    .tp_basicsize = sizeof(ResponseObject), .tp_flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_BASETYPE | Py_TPFLAGS_HAVE_GC, \
    .tp_traverse = response_traverse, .tp_clear = response_clear, .tp_dealloc = response_dealloc,                 \
    .tp_getattro = response_getattro, .tp_iter = response_iter, .tp_iternext = response_next

static PyTypeObject ResponseType = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "autoinstr._speedups.Response",
    .tp_doc = "A WSGI response as the server gets it: the app's iterable, timed (autoinstr.integrations._wsgi).",
    .tp_methods = response_methods,
    .tp_members = response_members,
    RESPONSE_TYPE_FIELDS,
};

static PySequenceMethods sized_sequence = {.sq_length = response_length};

static PyTypeObject SizedResponseType = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "autoinstr._speedups.SizedResponse",
    .tp_doc = "A Response whose iterable has a length: servers use len() for Content-Length.",
    .tp_base = &ResponseType,
    .tp_as_sequence = &sized_sequence,
    RESPONSE_TYPE_FIELDS,
};

/* What the server gets: the response around `result` (stolen), or a wsgi.file_wrapper result itself. */
static PyObject *answer(ResponseObject *self, PyObject *result, PyObject *environ)
{
    PyObject *wrapper = PyDict_GetItemWithError(environ, w[W_FILE_WRAPPER]);
    if (wrapper == NULL && PyErr_Occurred())
        goto fail;
    if (wrapper != NULL && wrapper != Py_None && PyType_Check(wrapper)) {
        int is = PyObject_IsInstance(result, wrapper);
        if (is < 0)
            goto fail;
        if (is) {  /* keep the server's sendfile path */
            PyObject *hook = wsgi_global(W_HOOK_CLOSE);
            PyObject *hooked = hook == NULL ? NULL : PyObject_Vectorcall(hook, (PyObject *[]){(PyObject *)self, result},
                                                                          2, NULL);
            Py_DECREF(result);
            Py_DECREF(self);
            return hooked;
        }
    }
    Py_XSETREF(self->result, result);
    PyTypeObject *type = Py_TYPE(result);
    int sized = (type->tp_as_sequence != NULL && type->tp_as_sequence->sq_length != NULL) ||
                (type->tp_as_mapping != NULL && type->tp_as_mapping->mp_length != NULL);
    /* hasattr(result, "__len__"): a class defining __len__ has a length slot; asked only of an object that
       answers attributes its own way */
    if (!sized && type->tp_getattro != PyObject_GenericGetAttr) {
        PyObject *len;
        int found = optional_attr(result, w[W_LEN], &len);
        if (found < 0) {
            Py_DECREF(self);
            return NULL;
        }
        sized = found;
        Py_XDECREF(len);
    }
    if (sized)
        Py_SET_TYPE(self, &SizedResponseType);  /* the same layout; static types, no reference to move */
    return (PyObject *)self;
fail:
    Py_DECREF(result);
    Py_DECREF(self);
    return NULL;
}

static PyObject *call_plain(PyObject *app, PyObject *environ, PyObject *start_response)
{
    return PyObject_Vectorcall(app, (PyObject *[]){environ, start_response}, 2, NULL);
}

/* wsgi_call(app, environ, start_response): one WSGI call of `app` inside a server span (unless an outer wrapper
   made one already, or this is the agent's own traffic). */
static PyObject *wsgi_call(PyObject *module, PyObject *const *args, Py_ssize_t nargs)
{
    if (nargs != 3) {
        PyErr_Format(PyExc_TypeError, "wsgi_call() takes 3 arguments (%zd given)", nargs);
        return NULL;
    }
    PyObject *app = args[0], *environ = args[1], *start_response = args[2];
    if (wsgi_globals == NULL || span_class == NULL) {
        PyErr_SetString(PyExc_RuntimeError, "wsgi_call(): configure_wsgi() or configure_span() was not called");
        return NULL;
    }
    if (!PyDict_CheckExact(environ)) {
        PyObject *fallback = wsgi_global(W_CALL_TRACED);
        return fallback == NULL ? NULL : PyObject_Vectorcall(fallback, args, 3, NULL);
    }
    int traced = PyDict_Contains(environ, wsgi_environ_key);
    if (traced < 0)
        return NULL;
    if (traced)
        return call_plain(app, environ, start_response);
    PyObject *suppressed;
    if (PyContextVar_Get(wsgi_suppressed, NULL, &suppressed) < 0)
        return NULL;
    int own = suppressed == NULL ? 0 : PyObject_IsTrue(suppressed);
    Py_XDECREF(suppressed);
    if (own < 0)
        return NULL;
    if (own)
        return call_plain(app, environ, start_response);

    /* the span, started and current (the agent failing here must not fail the request: the app runs plain) */
    ResponseObject *response = NULL;
    PyObject *token = NULL, *bound = NULL;
    PyObject *span = server_span(environ);
    if (span == NULL)
        goto untraced;
    response = PyObject_GC_New(ResponseObject, &ResponseType);
    if (response == NULL)
        goto untraced;
    response->span = span;
    span = NULL;
    Py_INCREF(start_response);
    response->real_start_response = start_response;
    response->token = response->result = response->iterator = NULL;
    response->status_code = 0;
    response->done = 0;
    response->elsewhere = -1;
    response->thread = PyThread_get_thread_ident();
    PyObject_GC_Track((PyObject *)response);
    PyObject *now = now_ns();  /* (span.start() without its checks: a new span; unsampled too, for statsd) */
    if (now == NULL)
        goto untraced;
    Py_XSETREF(((SpanObject *)response->span)->start_ns, now);
    bound = PyCFunction_NewEx(&start_response_def, (PyObject *)response, NULL);
    if (bound == NULL || (token = PyContextVar_Set(current_var, response->span)) == NULL)
        goto untraced;

    PyObject *result = call_plain(app, environ, bound);
    Py_DECREF(bound);
    if (result == NULL) {  /* the exception on the span, then raised on unchanged */
        reset_or_unset(current_var, token);
        Py_DECREF(token);
        SAVE_EXCEPTION(saved);
        call_dropping_errors(wsgi_global(W_FAIL_RESPONSE), (PyObject *[]){(PyObject *)response,
                                                                          EXCEPTION_VALUE(saved)}, 2);
        Py_DECREF(response);
        RESTORE_EXCEPTION(saved);
        return NULL;
    }
    /* The span stays current until the body is done (see _Response._finish). */
    response->token = token;
    return answer(response, result, environ);

untraced:
    PyErr_Clear();
    Py_XDECREF(span);
    Py_XDECREF(bound);
    Py_XDECREF(token);
    Py_XDECREF(response);
    return call_plain(app, environ, start_response);
}

/* view_run(name, answered, parent, call, *args, **kwargs): _wsgi._run_view's twin. The framework's view,
   call(*args, **kwargs), in a child span of the current one named `name` (code.function too); an exception goes
   to _view_failed (recorded on it and on `parent` unless `answered(exc)`: an answer the app chose), then on.
   Where the span cannot be made, the view runs without it. */
static PyObject *view_run(PyObject *module, PyObject *const *args, Py_ssize_t nargs, PyObject *kwnames)
{
    if (nargs < 4) {
        PyErr_SetString(PyExc_TypeError, "view_run(name, answered, parent, call, *args, **kwargs)");
        return NULL;
    }
    if (wsgi_globals == NULL || span_class == NULL) {
        PyErr_SetString(PyExc_RuntimeError, "view_run(): configure_wsgi() or configure_span() was not called");
        return NULL;
    }
    PyObject *name = args[0], *answered = args[1], *parent = args[2], *call = args[3];
    PyObject *const *call_args = args + 4;
    Py_ssize_t call_nargs = nargs - 4;
    PyObject *span = span_new(name, str_internal, unset);  /* Span(name): a child of the current span */
    PyObject *entered = NULL;
    if (span != NULL && PyDict_SetItem(((SpanObject *)span)->attributes, w[W_CODE_FUNCTION], name) == 0)
        entered = core_enter(span, NULL);
    if (entered == NULL) {
        Py_XDECREF(span);
        if (!PyErr_ExceptionMatches(PyExc_Exception))
            return NULL;
        PyErr_Clear();
        return PyObject_Vectorcall(call, call_args, call_nargs, kwnames);
    }
    Py_DECREF(entered);
    PyObject *result = PyObject_Vectorcall(call, call_args, call_nargs, kwnames);
    if (result == NULL) {
        SAVE_EXCEPTION(saved);
        PyObject *failed = PyDict_GetItemWithError(wsgi_globals, w[W_VIEW_FAILED]);
        call_dropping_errors(failed, (PyObject *[]){span, parent, EXCEPTION_VALUE(saved), answered}, 4);
        PyObject *exited = core_exit(span, (PyObject *[]){Py_None, Py_None, Py_None}, 3);
        if (exited == NULL)
            PyErr_Clear();
        Py_XDECREF(exited);
        Py_DECREF(span);
        RESTORE_EXCEPTION(saved);
        return NULL;
    }
    PyObject *exited = core_exit(span, (PyObject *[]){Py_None, Py_None, Py_None}, 3);
    Py_DECREF(span);
    if (exited == NULL) {  /* (the agent's failure: the view's result stands) */
        if (!PyErr_ExceptionMatches(PyExc_Exception)) {
            Py_DECREF(result);
            return NULL;
        }
        PyErr_Clear();
    }
    Py_XDECREF(exited);
    return result;
}

static int wsgi_module_init(PyObject *module)
{
    for (int i = 0; i < W_COUNT; i++)
        if ((w[i] = PyUnicode_InternFromString(wsgi_names[i])) == NULL)
            return -1;
    if (PyType_Ready(&ResponseType) < 0 || PyType_Ready(&SizedResponseType) < 0)
        return -1;
    Py_INCREF(&ResponseType);
    if (PyModule_AddObject(module, "Response", (PyObject *)&ResponseType) < 0) {
        Py_DECREF(&ResponseType);
        return -1;
    }
    return 0;
}
