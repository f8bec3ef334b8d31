/* The DB-API path in C (included by _speedups.c, after _span.c and _wsgi_call.c): db_run(attrs, name,
   statement, cursor, call, *args, **kwargs) is autoinstr.integrations._dbapi.run, its twin (_run there):
   call(*args, **kwargs) inside a database client span, its result and exceptions passing through unchanged.
   The rare paths call the module's Python functions, looked up in its globals at each call: _failed (the
   call raised), statsd's db_untraced and db_span (statsd on). */

static PyObject *db_globals, *db_suppressed, *db_statsd;

enum { D_FAILED, D_DB_UNTRACED, D_DB_SPAN, D_ROWCOUNT, D_DESCRIPTION, D_RETURNED, D_AFFECTED, D_DB_SYSTEM,
       D_QUERY_TEXT, D_CLIENT, D_COUNT };
static const char *db_names[D_COUNT] = {"_failed", "db_untraced", "db_span", "rowcount", "description",
                                        "db.response.returned_rows", "db.response.affected_rows", "db.system",
                                        "db.query.text", "client"};
static PyObject *d[D_COUNT];

static PyObject *configure_db(PyObject *self, PyObject *args)
{
    PyObject *globals, *suppressed, *statsd;
    if (!PyArg_ParseTuple(args, "O!OO", &PyDict_Type, &globals, &suppressed, &statsd))
        return NULL;
    if (!PyContextVar_CheckExact(suppressed)) {
        PyErr_SetString(PyExc_TypeError, "configure_db(): not a ContextVar");
        return NULL;
    }
    PyObject *objects[3] = {globals, suppressed, statsd};
    PyObject **slots[3] = {&db_globals, &db_suppressed, &db_statsd};
    for (int i = 0; i < 3; i++) {
        Py_INCREF(objects[i]);
        Py_XSETREF(*slots[i], objects[i]);
    }
    Py_RETURN_NONE;
}

/* The span for one call, entered (new reference); Py_None when nothing is to be recorded: inside an unsampled
   trace, inside another database span (executemany calling execute per row), or on the agent's own I/O. */
static PyObject *db_start(PyObject *attrs, PyObject *name, PyObject *statement)
{
    PyObject *parent;
    if (PyContextVar_Get(current_var, Py_None, &parent) < 0)
        return NULL;
    if (parent != Py_None) {
        if (!PyObject_TypeCheck(parent, &SpanCoreType)) {
            Py_DECREF(parent);
            PyErr_SetString(PyExc_TypeError, "the current span is not a Span");
            return NULL;
        }
        SpanObject *p = (SpanObject *)parent;
        int sampled = sampled_of(p);
        int nested = 0;
        if (sampled == 1 && p->kind != NULL && PyUnicode_Check(p->kind) &&
            PyUnicode_Compare(p->kind, d[D_CLIENT]) == 0 && p->attributes != NULL) {
            nested = PySequence_Contains(p->attributes, d[D_DB_SYSTEM]);
        }
        if (sampled < 0 || nested < 0) {
            Py_DECREF(parent);
            return NULL;
        }
        if (!sampled || nested) {
            Py_DECREF(parent);
            Py_RETURN_NONE;
        }
    }
    PyObject *value;
    if (PyContextVar_Get(db_suppressed, NULL, &value) < 0) {
        Py_DECREF(parent);
        return NULL;
    }
    int suppressed = value == NULL ? 0 : PyObject_IsTrue(value);
    Py_XDECREF(value);
    if (suppressed != 0) {
        Py_DECREF(parent);
        if (suppressed < 0)
            return NULL;
        Py_RETURN_NONE;
    }
    PyObject *span = span_new(name, d[D_CLIENT], parent);  /* Span(name, kind="client", parent=parent) */
    Py_DECREF(parent);
    if (span == NULL)
        return NULL;
    SpanObject *s = (SpanObject *)span;
    if (!PyObject_TypeCheck(span, &SpanCoreType) || s->sampled != Py_True) {
        Py_DECREF(span);
        Py_RETURN_NONE;
    }
    PyObject *attributes = PyDict_Check(attrs) ? PyDict_Copy(attrs) : PyObject_CallOneArg((PyObject *)&PyDict_Type,
                                                                                         attrs);
    if (attributes == NULL)
        goto fail;
    Py_XSETREF(s->attributes, attributes);
    if (statement != Py_None && PyDict_SetItem(attributes, d[D_QUERY_TEXT], statement) < 0)
        goto fail;
    PyObject *entered = core_enter(span, NULL);
    if (entered == NULL)
        goto fail;
    Py_DECREF(entered);
    return span;
fail:
    Py_DECREF(span);
    return NULL;
}

/* Rows returned (a statement with a result) or affected (DML), when the driver knows them (_dbapi._rows). */
static void db_rows(SpanObject *span, PyObject *cursor)
{
    PyObject *count = PyObject_GetAttr(cursor, d[D_ROWCOUNT]);
    if (count != NULL && PyLong_CheckExact(count)) {
        int overflow;
        long long n = PyLong_AsLongLongAndOverflow(count, &overflow);
        if ((overflow > 0 || (overflow == 0 && n >= 0)) && !PyErr_Occurred()) {
            PyObject *description = PyObject_GetAttr(cursor, d[D_DESCRIPTION]);
            if (description != NULL && span->attributes != NULL)
                PyObject_SetItem(span->attributes, d[description != Py_None ? D_RETURNED : D_AFFECTED], count);
            Py_XDECREF(description);
        }
    }
    Py_XDECREF(count);
    PyErr_Clear();  /* (whatever failed: the span has no row count) */
}

static int db_statsd_on(void)
{
    PyObject *enabled = PyObject_GetAttr(db_statsd, h[H_ENABLED]);
    int truth = enabled == NULL ? -1 : PyObject_IsTrue(enabled);
    Py_XDECREF(enabled);
    return truth;
}

static PyObject *db_run(PyObject *module, PyObject *const *args, Py_ssize_t nargs, PyObject *kwnames)
{
    if (nargs < 5) {
        PyErr_SetString(PyExc_TypeError, "db_run(attrs, name, statement, cursor, call, *args, **kwargs)");
        return NULL;
    }
    if (db_globals == NULL || span_class == NULL) {
        PyErr_SetString(PyExc_RuntimeError, "db_run(): configure_db() or configure_span() was not called");
        return NULL;
    }
    PyObject *attrs = args[0], *name = args[1], *statement = args[2], *cursor = args[3], *call = args[4];
    PyObject *const *call_args = args + 5;
    Py_ssize_t call_nargs = nargs - 5;
    PyObject *span = db_start(attrs, name, statement);
    if (span == NULL) {
        if (!PyErr_ExceptionMatches(PyExc_Exception))
            return NULL;
        PyErr_Clear();
        span = Py_None;
        Py_INCREF(span);
    }
    if (span == Py_None) {
        Py_DECREF(span);
        int counting = db_statsd_on();
        if (counting < 0)
            return NULL;
        if (!counting)
            return PyObject_Vectorcall(call, call_args, call_nargs, kwnames);
        PyObject *tuple = PyTuple_New(call_nargs), *dict = PyDict_New(), *result = NULL;
        if (tuple != NULL && dict != NULL) {
            for (Py_ssize_t i = 0; i < call_nargs; i++) {
                Py_INCREF(call_args[i]);
                PyTuple_SET_ITEM(tuple, i, call_args[i]);
            }
            int ok = 1;
            for (Py_ssize_t k = 0; ok && kwnames != NULL && k < PyTuple_GET_SIZE(kwnames); k++)
                ok = PyDict_SetItem(dict, PyTuple_GET_ITEM(kwnames, k), call_args[call_nargs + k]) == 0;
            if (ok)
                result = PyObject_VectorcallMethod(d[D_DB_UNTRACED], (PyObject *[]){db_statsd, attrs, statement, call,
                                                                                  tuple, dict}, 6, NULL);
        }
        Py_XDECREF(tuple);
        Py_XDECREF(dict);
        return result;
    }
    PyObject *result = PyObject_Vectorcall(call, call_args, call_nargs, kwnames);
    if (result == NULL) {
        SAVE_EXCEPTION(saved);
        call_dropping_errors(PyDict_GetItemWithError(db_globals, d[D_FAILED]), (PyObject *[]){span,
                                                                                          EXCEPTION_VALUE(saved)}, 2);
        Py_DECREF(span);
        RESTORE_EXCEPTION(saved);
        return NULL;
    }
    if (cursor != Py_None)
        db_rows((SpanObject *)span, cursor != Py_True ? cursor : result);
    PyObject *exited = core_exit(span, (PyObject *[]){Py_None, Py_None, Py_None}, 3);
    int counting = exited == NULL ? -1 : db_statsd_on();
    Py_XDECREF(exited);
    if (counting > 0) {
        PyObject *done = PyObject_CallMethodOneArg(db_statsd, d[D_DB_SPAN], span);
        Py_XDECREF(done);
        counting = done == NULL ? -1 : 0;
    }
    Py_DECREF(span);
    if (counting < 0) {
        Py_DECREF(result);
        return NULL;
    }
    return result;
}

static int db_module_init(PyObject *module)
{
    for (int i = 0; i < D_COUNT; i++)
        if ((d[i] = PyUnicode_InternFromString(db_names[i])) == NULL)
            return -1;
    return 0;
}
