/* The DB-API path in C (included by _speedups.c, after _span.c and _wsgi_call.c): db_run(attrs, name,
   statement, cursor, call, *args, **kwargs) is autoinstr.integrations._dbapi.run, its twin (_run there):
   call(*args, **kwargs) inside a database client span, its result and exceptions passing through unchanged.
   The rare paths call the module's Python functions, looked up in its globals at each call: _failed (the
   call raised), statsd's db_untraced and db_span (statsd on). */

static PyObject *db_globals, *db_suppressed, *db_statsd;
static PyObject *db_cache_attribute;  /* _dbapi.CACHE_ATTRIBUTE: where a connection keeps its span attributes */

enum { D_FAILED, D_DB_UNTRACED, D_DB_SPAN, D_ROWCOUNT, D_DESCRIPTION, D_RETURNED, D_AFFECTED, D_DB_SYSTEM,
       D_QUERY_TEXT, D_CLIENT, D_CONNECTION, D_DICT, D_CURSOR, D_CONNECT, D_FACTORY, D_COUNT };
static const char *db_names[D_COUNT] = {"_failed", "db_untraced", "db_span", "rowcount", "description",
                                        "db.response.returned_rows", "db.response.affected_rows", "db.system",
                                        "db.query.text", "client", "connection", "__dict__", "cursor", "connect",
                                        "factory"};
static PyObject *d[D_COUNT];
static PyObject *factory_kwnames;  /* ("factory",) */

/* A driver call that cannot run Python code needs no current span: nothing could see it, and setting and resetting
   the ContextVar is a third of a traced sqlite3 statement's cost. configure_python_free(execute, connection type,
   adapters, marker) tells which calls those are (autoinstr.integrations.sqlite3 gives them): the driver's own
   Cursor.execute, on a connection of a type whose __call__ (the statement cache calls it) is the driver's and that
   registered no Python callback (its __dict__ has `marker`), with a str statement and parameters that are a tuple
   or list of None, int, float, str and bytes for which no adapter is registered. Where rows are fetched in
   execute() (3.9 and 3.10: row and text factories, converters), never. */
static PyObject *pf_execute, *pf_adapters, *pf_marker;
static ternaryfunc pf_connection_call;
static Py_ssize_t pf_adapters_size = -1;  /* the adapters' size when last looked through */

static PyObject *configure_db(PyObject *self, PyObject *args)
{
    PyObject *globals, *suppressed, *statsd;
    if (!PyArg_ParseTuple(args, "O!OO", &PyDict_Type, &globals, &suppressed, &statsd))
        return NULL;
    if (!PyContextVar_CheckExact(suppressed)) {
        PyErr_SetString(PyExc_TypeError, "configure_db(): not a ContextVar");
        return NULL;
    }
    PyObject *cache_attribute = PyDict_GetItemString(globals, "CACHE_ATTRIBUTE");
    if (cache_attribute == NULL || !PyUnicode_Check(cache_attribute)) {
        PyErr_SetString(PyExc_TypeError, "configure_db(): the module has no CACHE_ATTRIBUTE");
        return NULL;
    }
    PyObject *objects[4] = {globals, suppressed, statsd, cache_attribute};
    PyObject **slots[4] = {&db_globals, &db_suppressed, &db_statsd, &db_cache_attribute};
    for (int i = 0; i < 4; i++) {
        Py_INCREF(objects[i]);
        Py_XSETREF(*slots[i], objects[i]);
    }
    Py_RETURN_NONE;
}

static PyObject *configure_python_free(PyObject *self, PyObject *args)
{
    PyObject *execute, *adapters, *marker;
    PyTypeObject *connection_type;
    if (!PyArg_ParseTuple(args, "OO!O!U", &execute, &PyType_Type, &connection_type, &PyDict_Type, &adapters, &marker))
        return NULL;
    PyObject *objects[3] = {execute, adapters, marker};
    PyObject **slots[3] = {&pf_execute, &pf_adapters, &pf_marker};
    for (int i = 0; i < 3; i++) {
        Py_INCREF(objects[i]);
        Py_XSETREF(*slots[i], objects[i]);
    }
    pf_connection_call = connection_type->tp_call;
    pf_adapters_size = -1;
    Py_RETURN_NONE;
}

#if PY_VERSION_HEX >= 0x030B0000
static int pf_adapters_plain = 0;  /* whether no adapter took a plain value's type at pf_adapters_size */

static int plain_value(PyObject *value)
{
    return value == Py_None || PyLong_CheckExact(value) || PyFloat_CheckExact(value) || PyUnicode_CheckExact(value) ||
           PyBytes_CheckExact(value);
}

/* Whether no adapter is registered for a plain value's type (the adapters are keyed (type, protocol)). */
static int adapters_plain(void)
{
    if (PyDict_GET_SIZE(pf_adapters) == pf_adapters_size)
        return pf_adapters_plain;
    PyTypeObject *plain[5] = {Py_TYPE(Py_None), &PyLong_Type, &PyFloat_Type, &PyUnicode_Type, &PyBytes_Type};
    PyObject *key, *value;
    Py_ssize_t pos = 0;
    int ok = 1;
    while (ok && PyDict_Next(pf_adapters, &pos, &key, &value)) {
        if (!PyTuple_CheckExact(key) || PyTuple_GET_SIZE(key) < 1)
            ok = 0;
        for (int i = 0; ok && i < 5; i++)
            ok = PyTuple_GET_ITEM(key, 0) != (PyObject *)plain[i];
    }
    pf_adapters_size = PyDict_GET_SIZE(pf_adapters);
    pf_adapters_plain = ok;
    return ok;
}
#endif

/* Whether base(cursor, *args) cannot run Python code (see configure_python_free); `quiet`: the connection's part. */
static int python_free(int quiet, PyObject *base, PyObject *const *args, Py_ssize_t nargs)
{
#if PY_VERSION_HEX >= 0x030B0000
    if (!quiet || base != pf_execute || base == NULL || nargs < 1 || nargs > 2 || !PyUnicode_CheckExact(args[0]))
        return 0;
    if (nargs == 2) {
        PyObject *params = args[1];
        if (!PyTuple_CheckExact(params) && !PyList_CheckExact(params))
            return 0;
        Py_ssize_t n = PySequence_Fast_GET_SIZE(params);
        PyObject **items = PySequence_Fast_ITEMS(params);
        for (Py_ssize_t i = 0; i < n; i++)
            if (!plain_value(items[i]))
                return 0;
    }
    return adapters_plain();
#else
    return 0;
#endif
}

/* The connection's part of python_free: a connection of a type the driver's __call__ serves, no callback marked. */
static int connection_quiet(PyObject *connection, PyObject *dict)
{
    if (pf_marker == NULL || Py_TYPE(connection)->tp_call != pf_connection_call)
        return 0;
    PyObject *marked = PyDict_GetItemWithError(dict, pf_marker);
    if (marked == NULL && PyErr_Occurred()) {
        PyErr_Clear();
        return 0;
    }
    return marked == NULL;
}

/* The span for one call, entered (new reference); Py_None when nothing is to be recorded: inside an unsampled
   trace, inside another database span (executemany calling execute per row), or on the agent's own I/O. A call
   that runs no Python code (`current` 0) has its span started without making it the current one. */
static PyObject *db_start(PyObject *attrs, PyObject *name, PyObject *statement, int current)
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
    if (!current) {
        PyObject *now = now_ns();
        if (now == NULL)
            goto fail;
        Py_XSETREF(s->start_ns, now);
        set_slot(&s->token, not_current);
        return span;
    }
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
    return module_flag(db_statsd, h[H_ENABLED]);
}

static PyObject *db_call(PyObject *const *args, Py_ssize_t nargs, PyObject *kwnames, int current);

static PyObject *db_run(PyObject *module, PyObject *const *args, Py_ssize_t nargs, PyObject *kwnames)
{
    return db_call(args, nargs, kwnames, 1);
}

/* db_run; `current` 0 for a call that runs no Python code (python_free) */
static PyObject *db_call(PyObject *const *args, Py_ssize_t nargs, PyObject *kwnames, int current)
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
    PyObject *span = db_start(attrs, name, statement, current);
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

/* ------------------------------------------------------------------------------------ cursor methods */

/* cursor_hook(python, owner, name, system, rows): a traced cursor class's method (sqlite3's execute, executemany,
   executescript), the twin of `python`, the mixin `owner`'s own Python method:

       def execute(self, sql, *args):
           return run(connection_attributes(self.connection), system, sql, self if rows else None,
                      super().execute, sql, *args)

   without the frame, the super object and the bound method. Its fields, in the shared Hook type: real = python
   (every call of another shape goes there: keywords, no statement, more arguments), describe = owner,
   settle = name, prepare = system, error_status = rows (True/False). */
#define CURSOR_OWNER describe
#define CURSOR_NAME settle
#define CURSOR_SYSTEM prepare
#define CURSOR_ROWS error_status

/* What super(owner, self).<name> finds, borrowed: the next class after `owner` in type(self)'s MRO that has it;
   NULL without an error when none has (or owner is not in the MRO). */
static PyObject *next_in_mro(PyObject *self, PyObject *owner, PyObject *name)
{
    PyObject *mro = Py_TYPE(self)->tp_mro;
    if (mro == NULL || !PyTuple_Check(mro))
        return NULL;
    Py_ssize_t n = PyTuple_GET_SIZE(mro), i = 0;
    while (i < n && PyTuple_GET_ITEM(mro, i) != owner)
        i++;
    for (i++; i < n; i++) {
        PyObject *dict = ((PyTypeObject *)PyTuple_GET_ITEM(mro, i))->tp_dict;
        PyObject *found = dict == NULL ? NULL : PyDict_GetItemWithError(dict, name);
        if (found != NULL || PyErr_Occurred())
            return found;
    }
    return NULL;
}

/* The connection's span attributes (sqlite3._attributes: its __dict__'s cached ones, else the system alone), a
   new reference; NULL with an error where the Python method would raise the same. *quiet: connection_quiet. */
static PyObject *connection_attributes(PyObject *cursor, PyObject *system, int *quiet)
{
    PyObject *connection = PyObject_GetAttr(cursor, d[D_CONNECTION]);
    PyObject *dict = connection == NULL ? NULL : PyObject_GetAttr(connection, d[D_DICT]);
    *quiet = dict != NULL && PyDict_Check(dict) && connection_quiet(connection, dict);
    Py_XDECREF(connection);
    if (dict == NULL)
        return NULL;
    PyObject *cached = PyDict_Check(dict) ? PyDict_GetItemWithError(dict, db_cache_attribute) : NULL;
    int usable = cached == NULL ? 0 : PyObject_IsTrue(cached);
    if (usable > 0)
        Py_INCREF(cached);
    Py_DECREF(dict);
    if (usable < 0 || PyErr_Occurred())
        return NULL;
    if (usable > 0)
        return cached;
    PyObject *attrs = PyDict_New();
    if (attrs != NULL && PyDict_SetItem(attrs, d[D_DB_SYSTEM], system) < 0)
        Py_CLEAR(attrs);
    return attrs;
}

static PyObject *cursor_hook_call(PyObject *op, PyObject *const *args, size_t nargsf, PyObject *kwnames)
{
    HookObject *hook = (HookObject *)op;
    Py_ssize_t nargs = PyVectorcall_NARGS(nargsf);
    if (nargs < 2 || nargs > 3 || (kwnames != NULL && PyTuple_GET_SIZE(kwnames) > 0) || db_globals == NULL ||
        !PyUnicode_Check(hook->CURSOR_NAME))
        return forward(hook, args, nargsf, kwnames);
    PyObject *self = args[0];
    PyObject *base = next_in_mro(self, hook->CURSOR_OWNER, hook->CURSOR_NAME);
    Py_XINCREF(base);  /* (held: reading the connection runs the app's code, which could change the class) */
    int quiet = 0;
    PyObject *attrs = base == NULL ? NULL : connection_attributes(self, hook->CURSOR_SYSTEM, &quiet);
    if (attrs == NULL) {  /* (the Python method meets the same: it raises, or finds what this did not) */
        Py_XDECREF(base);
        if (PyErr_Occurred() && !PyErr_ExceptionMatches(PyExc_Exception))
            return NULL;
        PyErr_Clear();
        return forward(hook, args, nargsf, kwnames);
    }
    /* run(attrs, system, sql, cursor, call, *call_args): a function or a C method is called with self first;
       anything else is bound first, as super() binds it */
    PyObject *stack[8] = {attrs, hook->CURSOR_SYSTEM, args[1], hook->CURSOR_ROWS == Py_True ? self : Py_None};
    PyObject *bound = NULL;
    Py_ssize_t n = 4;
    if (PyFunction_Check(base) || Py_IS_TYPE(base, &PyMethodDescr_Type)) {
        stack[n++] = base;
        stack[n++] = self;
    }
    else {
        descrgetfunc get = Py_TYPE(base)->tp_descr_get;
        if (get == NULL)
            Py_INCREF(base);
        bound = get == NULL ? base : get(base, self, (PyObject *)Py_TYPE(self));
        if (bound == NULL) {
            Py_DECREF(attrs);
            Py_DECREF(base);
            return NULL;
        }
        stack[n++] = bound;
    }
    for (Py_ssize_t i = 1; i < nargs; i++)
        stack[n++] = args[i];
    PyObject *result = db_call(stack, n, NULL, !python_free(quiet, base, args + 1, nargs - 1));
    Py_DECREF(attrs);
    Py_XDECREF(bound);
    Py_DECREF(base);
    return result;
}

/* cursor_factory_hook(python, owner, name, factory): a traced connection class's cursor(), the twin of `python`
   for its common call, conn.cursor() without arguments: super().cursor(factory). Every other call goes to
   `python` (real), which makes the factory asked for traced. Fields: describe = owner, settle = name,
   prepare = factory. */
static PyObject *cursor_factory_hook_call(PyObject *op, PyObject *const *args, size_t nargsf, PyObject *kwnames)
{
    HookObject *hook = (HookObject *)op;
    if (PyVectorcall_NARGS(nargsf) != 1 || (kwnames != NULL && PyTuple_GET_SIZE(kwnames) > 0))
        return forward(hook, args, nargsf, kwnames);
    PyObject *base = next_in_mro(args[0], hook->CURSOR_OWNER, hook->CURSOR_NAME);
    if (base == NULL || !(PyFunction_Check(base) || Py_IS_TYPE(base, &PyMethodDescr_Type))) {
        if (PyErr_Occurred())
            return NULL;
        return forward(hook, args, nargsf, kwnames);
    }
    Py_INCREF(base);
    PyObject *cursor = PyObject_Vectorcall(base, (PyObject *[]){args[0], hook->prepare}, 2, NULL);
    Py_DECREF(base);
    return cursor;
}

/* connection_shortcut_hook(python, name): a traced connection class's execute, executemany or executescript,
   the twin of `python` for positional calls:

       def execute(self, sql, *args):
           return self.cursor().execute(sql, *args)

   (the traced cursor makes the span) without the frame. A call with keywords or without a statement goes to
   `python`. Fields: settle = name. */
static PyObject *shortcut_hook_call(PyObject *op, PyObject *const *args, size_t nargsf, PyObject *kwnames)
{
    HookObject *hook = (HookObject *)op;
    Py_ssize_t nargs = PyVectorcall_NARGS(nargsf);
    if (nargs < 2 || nargs > 4 || (kwnames != NULL && PyTuple_GET_SIZE(kwnames) > 0))
        return forward(hook, args, nargsf, kwnames);
    PyObject *cursor = PyObject_VectorcallMethod(d[D_CURSOR], args, 1, NULL);
    if (cursor == NULL)
        return NULL;
    PyObject *stack[4] = {cursor};
    for (Py_ssize_t i = 1; i < nargs; i++)
        stack[i] = args[i];
    PyObject *result = PyObject_VectorcallMethod(hook->settle, stack, nargs, NULL);
    Py_DECREF(cursor);
    return result;
}

/* connect_hook(python, connects, factory): the wrapper of sqlite3.connect, the twin of `python`
   (integrations/sqlite3.py's _connect) for its common calls, connect(database, **keywords) with no factory asked
   for, once the database's connections are prepared (`connects`, keyed (database, factory)):

       traced, attrs, connect_attrs = connects[(database, factory)]
       connection = run(connect_attrs, "connect", None, None, wrapped, database, **keywords, factory=traced)
       connection.__dict__[CACHE_ATTRIBUTE] = attrs

   without the frame and the keywords dict. Every other call goes to `python`: positional options, a factory,
   the agent's own connections (suppressed), a database not seen yet. Fields: describe = connects, prepare =
   factory. */
#define CONNECT_CACHE describe
#define CONNECT_FACTORY prepare

static PyObject *connect_hook_call(PyObject *op, PyObject *const *args, size_t nargsf, PyObject *kwnames)
{
    HookObject *hook = (HookObject *)op;
    if (PyVectorcall_NARGS(nargsf) != 4 || (kwnames != NULL && PyTuple_GET_SIZE(kwnames) > 0) ||
        db_globals == NULL || span_class == NULL || !PyTuple_CheckExact(args[2]) ||
        PyTuple_GET_SIZE(args[2]) != 1 || !PyDict_CheckExact(args[3]) || PyDict_GET_SIZE(args[3]) > 8 ||
        !PyDict_CheckExact(hook->CONNECT_CACHE))
        return forward(hook, args, nargsf, kwnames);
    PyObject *wrapped = args[0], *database = PyTuple_GET_ITEM(args[2], 0), *kwargs = args[3];
    int asked = PyDict_Contains(kwargs, d[D_FACTORY]);
    PyObject *value = NULL;
    if (asked == 0 && PyContextVar_Get(db_suppressed, NULL, &value) < 0)
        return NULL;
    int suppressed = value == NULL ? 0 : PyObject_IsTrue(value);
    Py_XDECREF(value);
    if (asked != 0 || suppressed != 0) {
        if (asked < 0 || suppressed < 0)
            return NULL;
        return forward(hook, args, nargsf, kwnames);
    }
    PyObject *key = PyTuple_Pack(2, database, hook->CONNECT_FACTORY);
    if (key == NULL)
        return NULL;
    PyObject *prepared = PyDict_GetItemWithError(hook->CONNECT_CACHE, key);
    Py_DECREF(key);
    if (prepared == NULL || !PyTuple_CheckExact(prepared) || PyTuple_GET_SIZE(prepared) != 3 ||
        PyTuple_GET_ITEM(prepared, 0) == Py_None) {
        PyErr_Clear();  /* (an unhashable database: the Python wrapper copes) */
        return forward(hook, args, nargsf, kwnames);
    }
    Py_INCREF(prepared);  /* (held: the call runs the app's code, which could change the cache) */
    PyObject *stack[6 + 8 + 1] = {PyTuple_GET_ITEM(prepared, 2), d[D_CONNECT], Py_None, Py_None, wrapped, database};
    Py_ssize_t n = 6, pos = 0;
    PyObject *names = factory_kwnames, *name, *item;
    Py_INCREF(names);
    if (PyDict_GET_SIZE(kwargs) > 0) {
        Py_SETREF(names, PyTuple_New(PyDict_GET_SIZE(kwargs) + 1));
        if (names == NULL) {
            Py_DECREF(prepared);
            return NULL;
        }
        for (Py_ssize_t i = 0; PyDict_Next(kwargs, &pos, &name, &item); i++) {
            Py_INCREF(name);
            PyTuple_SET_ITEM(names, i, name);
            stack[n++] = item;  /* (borrowed: kwargs, the caller's, holds them through the call) */
        }
        Py_INCREF(d[D_FACTORY]);
        PyTuple_SET_ITEM(names, PyTuple_GET_SIZE(names) - 1, d[D_FACTORY]);
    }
    stack[n++] = PyTuple_GET_ITEM(prepared, 0);
    PyObject *connection = db_call(stack, 6, names, 1);
    Py_DECREF(names);
    if (connection != NULL) {
        PyObject *dict = PyObject_GetAttr(connection, d[D_DICT]);
        int set = dict == NULL ? -1 : PyObject_SetItem(dict, db_cache_attribute, PyTuple_GET_ITEM(prepared, 1));
        Py_XDECREF(dict);
        if (set < 0) {  /* (as `except Exception: pass`) */
            if (!PyErr_ExceptionMatches(PyExc_Exception))
                Py_CLEAR(connection);
            else
                PyErr_Clear();
        }
    }
    Py_DECREF(prepared);
    return connection;
}

static PyObject *connect_hook(PyObject *module, PyObject *args)
{
    PyObject *python, *connects, *factory;
    if (!PyArg_ParseTuple(args, "OO!O", &python, &PyDict_Type, &connects, &factory))
        return NULL;
    return new_hook(python, connects, Py_None, factory, Py_None, connect_hook_call);
}

/* marking_hook(real, owner, name, marker): a traced connection class's method that registers Python code sqlite3
   may run inside execute() (create_function...): marks the connection (`marker` in its __dict__, see
   configure_python_free), then calls super().<name> with the same arguments. In C, so that the driver's own
   warnings name the app's line, not a frame of ours. Fields: describe = owner, settle = name, prepare = marker. */
static PyObject *marking_hook_call(PyObject *op, PyObject *const *args, size_t nargsf, PyObject *kwnames)
{
    HookObject *hook = (HookObject *)op;
    if (PyVectorcall_NARGS(nargsf) < 1 || !PyUnicode_Check(hook->settle))
        return forward(hook, args, nargsf, kwnames);
    PyObject *self = args[0];
    PyObject *base = next_in_mro(self, hook->describe, hook->settle);
    if (base == NULL || !(PyFunction_Check(base) || Py_IS_TYPE(base, &PyMethodDescr_Type))) {
        if (PyErr_Occurred())
            return NULL;
        return forward(hook, args, nargsf, kwnames);
    }
    Py_INCREF(base);
    PyObject *dict = PyObject_GetAttr(self, d[D_DICT]);
    if (dict == NULL || !PyDict_Check(dict) || PyDict_SetItem(dict, hook->prepare, Py_True) < 0)
        PyErr_Clear();  /* (no __dict__: then every statement makes its span current) */
    Py_XDECREF(dict);
    PyObject *result = PyObject_Vectorcall(base, args, nargsf, kwnames);
    Py_DECREF(base);
    return result;
}

static PyObject *marking_hook(PyObject *module, PyObject *args)
{
    PyObject *real, *owner, *name, *marker;
    if (!PyArg_ParseTuple(args, "OO!UU", &real, &PyType_Type, &owner, &name, &marker))
        return NULL;
    return new_hook(real, owner, name, marker, Py_None, marking_hook_call);
}

static PyObject *connection_shortcut_hook(PyObject *module, PyObject *args)
{
    PyObject *python, *name;
    if (!PyArg_ParseTuple(args, "OU", &python, &name))
        return NULL;
    return new_hook(python, Py_None, name, Py_None, Py_None, shortcut_hook_call);
}

static PyObject *cursor_factory_hook(PyObject *module, PyObject *args)
{
    PyObject *python, *owner, *name, *factory;
    if (!PyArg_ParseTuple(args, "OO!UO", &python, &PyType_Type, &owner, &name, &factory))
        return NULL;
    return new_hook(python, owner, name, factory, Py_None, cursor_factory_hook_call);
}

static PyObject *cursor_hook(PyObject *module, PyObject *args)
{
    PyObject *python, *owner, *name, *system, *rows;
    if (!PyArg_ParseTuple(args, "OO!UUO!", &python, &PyType_Type, &owner, &name, &system, &PyBool_Type, &rows))
        return NULL;
    return new_hook(python, owner, name, system, rows, cursor_hook_call);
}

/* python_free_call(connection, base, args): whether a traced cursor of `connection` would run base(cursor, *args)
   without making its span current (for the tests). */
static PyObject *python_free_call(PyObject *module, PyObject *args)
{
    PyObject *connection, *base, *call_args;
    if (!PyArg_ParseTuple(args, "OOO!", &connection, &base, &PyTuple_Type, &call_args))
        return NULL;
    PyObject *dict = PyObject_GetAttr(connection, d[D_DICT]);
    if (dict == NULL)
        return NULL;
    int quiet = PyDict_Check(dict) && connection_quiet(connection, dict);
    Py_DECREF(dict);
    return PyBool_FromLong(python_free(quiet, base, PySequence_Fast_ITEMS(call_args), PyTuple_GET_SIZE(call_args)));
}

static int db_module_init(PyObject *module)
{

    for (int i = 0; i < D_COUNT; i++)
        if ((d[i] = PyUnicode_InternFromString(db_names[i])) == NULL)
            return -1;
    if ((factory_kwnames = PyTuple_Pack(1, d[D_FACTORY])) == NULL)
        return -1;
    return 0;
}
