/* The integrations' guard in C (included by _speedups.c, after _wsgi_call.c): guard(wrapper, integration,
   failed, disabled, disable) is the compiled twin of the function autoinstr.integrations._wrapping.guarded
   returns, the wrapt wrapper every wrap() installs:

       def guard(wrapped, instance, args, kwargs):
           if integration in failed or integration in disabled:
               return wrapped(*args, **kwargs)
           (wrapper(call, instance, args, kwargs), where call(*a, **kw) is wrapped(*a, **kw) noting how it ended;
            an Exception of the wrapper's own disables the integration, and the call completes as without it)

   without the guard's frame and the closure it makes on every call: `call` is an Outcome object here.
   tests/test_guard.py runs random wrappers through both and compares everything they leave. */

enum { OUTCOME_NOT_CALLED, OUTCOME_RETURNED, OUTCOME_RAISED };

typedef struct {
    PyObject_HEAD
    vectorcallfunc vectorcall;
    PyObject *wrapped, *value;  /* value: the last call's result or exception */
    int state;
} OutcomeObject;

/* tp_traverse, tp_clear and tp_dealloc of a GC type `Type` whose references are the fields `FIELDS` lists */
#define GC_TYPE_SLOTS(prefix, Type, FIELDS)                                                                        \
    static int prefix##_traverse(PyObject *op, visitproc visit, void *arg)                                         \
    {                                                                                                              \
        Type *self = (Type *)op;                                                                                   \
        FIELDS(VISIT_FIELD)                                                                                        \
        return 0;                                                                                                  \
    }                                                                                                              \
    static int prefix##_clear(PyObject *op)                                                                        \
    {                                                                                                              \
        Type *self = (Type *)op;                                                                                   \
        FIELDS(CLEAR_FIELD)                                                                                        \
        return 0;                                                                                                  \
    }                                                                                                              \
    static void prefix##_dealloc(PyObject *op)                                                                     \
    {                                                                                                              \
        PyObject_GC_UnTrack(op);                                                                                   \
        prefix##_clear(op);                                                                                        \
        PyObject_GC_Del(op);                                                                                       \
    }

#define OUTCOME_FIELDS(apply) apply(wrapped) apply(value)
GC_TYPE_SLOTS(outcome, OutcomeObject, OUTCOME_FIELDS)

/* wrapped(*args, **kwargs), noting how it ended */
static PyObject *outcome_call(PyObject *op, PyObject *const *args, size_t nargsf, PyObject *kwnames)
{
    OutcomeObject *o = (OutcomeObject *)op;
    PyObject *wrapped = o->wrapped;
    Py_INCREF(wrapped);  /* (held: the call may drop the outcome's own reference) */
    PyObject *result = PyObject_Vectorcall(wrapped, args, nargsf, kwnames);
    Py_DECREF(wrapped);
    if (result != NULL) {
        Py_INCREF(result);
        Py_XSETREF(o->value, result);
        o->state = OUTCOME_RETURNED;
        return result;
    }
    SAVE_EXCEPTION(saved);
    PyObject *exc = EXCEPTION_VALUE(saved);
    Py_XINCREF(exc);
    Py_XSETREF(o->value, exc);
    o->state = OUTCOME_RAISED;
    RESTORE_EXCEPTION(saved);
    return NULL;
}

static PyTypeObject OutcomeType = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "autoinstr._speedups.Outcome",
    .tp_basicsize = sizeof(OutcomeObject),
    .tp_flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_HAVE_GC | Py_TPFLAGS_HAVE_VECTORCALL,
    .tp_doc = "The wrapped call a guarded wrapper is given: calls it, noting how it ended.",
    .tp_vectorcall_offset = offsetof(OutcomeObject, vectorcall),
    .tp_call = PyVectorcall_Call,
    .tp_traverse = outcome_traverse,
    .tp_clear = outcome_clear,
    .tp_dealloc = outcome_dealloc,
};

typedef struct {
    PyObject_HEAD
    vectorcallfunc vectorcall;
    PyObject *wrapper, *integration, *failed, *disabled, *disable;
} GuardObject;

#define GUARD_FIELDS(apply) apply(wrapper) apply(integration) apply(failed) apply(disabled) apply(disable)
GC_TYPE_SLOTS(guard, GuardObject, GUARD_FIELDS)

/* 1 when the integration is off (failed or disabled), 0 when on, -1 with an error */
static int guard_off(GuardObject *g)
{
    int off = PySequence_Contains(g->failed, g->integration);
    return off != 0 ? off : PySequence_Contains(g->disabled, g->integration);
}

/* Raise `value` (a reference it takes) with its own traceback, context and cause, chained to nothing else. */
static void raise_as_is(PyObject *value)
{
#if PY_VERSION_HEX >= 0x030C0000
    PyErr_SetRaisedException(value);
#else
    PyObject *type = (PyObject *)Py_TYPE(value);
    Py_INCREF(type);
    PyErr_Restore(type, value, PyException_GetTraceback(value));
#endif
}

static PyObject *guard_call(PyObject *op, PyObject *const *args, size_t nargsf, PyObject *kwnames)
{
    GuardObject *g = (GuardObject *)op;
    if (PyVectorcall_NARGS(nargsf) != 4 || (kwnames != NULL && PyTuple_GET_SIZE(kwnames) > 0) ||
        !PyTuple_Check(args[2]) || !PyDict_Check(args[3])) {
        PyErr_SetString(PyExc_TypeError, "guard(wrapped, instance, args: tuple, kwargs: dict)");
        return NULL;
    }
    PyObject *wrapped = args[0], *call_args = args[2], *call_kwargs = args[3];
    int off = guard_off(g);
    if (off < 0)
        return NULL;
    if (off)
        return PyObject_Call(wrapped, call_args, call_kwargs);
    OutcomeObject *o = PyObject_GC_New(OutcomeObject, &OutcomeType);
    if (o == NULL)
        return NULL;
    o->vectorcall = outcome_call;
    Py_INCREF(wrapped);
    o->wrapped = wrapped;
    o->value = NULL;
    o->state = OUTCOME_NOT_CALLED;
    PyObject_GC_Track((PyObject *)o);
    PyObject *result = PyObject_Vectorcall(g->wrapper, (PyObject *[]){(PyObject *)o, args[1], call_args,
                                                                      call_kwargs}, 4, NULL);
    if (result != NULL || !PyErr_ExceptionMatches(PyExc_Exception)) {  /* (as `except Exception` lets it go) */
        Py_DECREF(o);
        return result;
    }
    SAVE_EXCEPTION(saved);
    PyObject *exc = EXCEPTION_VALUE(saved);
    if (o->state == OUTCOME_RAISED && exc == o->value) {  /* the app's own exception, unchanged */
        Py_DECREF(o);
        RESTORE_EXCEPTION(saved);
        return NULL;
    }
    PyObject *done = PyObject_CallFunctionObjArgs(g->disable, g->integration, g->wrapper, exc, NULL);
    if (done == NULL) {  /* (_disable lets only what is not an Exception out: that goes on, as in Python) */
        DROP_EXCEPTION(saved);
        Py_DECREF(o);
        return NULL;
    }
    Py_DECREF(done);
    /* the agent failed: the call completes as without it, and what the app gets carries nothing of the agent's
       exception (no __context__) */
    if (o->state == OUTCOME_RAISED) {  /* it failed while handling the app's exception: the app's, as it came */
        PyObject *value = o->value;
        Py_INCREF(value);
        DROP_EXCEPTION(saved);
        Py_DECREF(o);
        raise_as_is(value);
        return NULL;
    }
    DROP_EXCEPTION(saved);
    if (o->state == OUTCOME_RETURNED) {
        result = o->value;
        Py_INCREF(result);
        Py_DECREF(o);
        return result;
    }
    Py_DECREF(o);
    return PyObject_Call(wrapped, call_args, call_kwargs);
}

static PyMemberDef guard_members[] = {
    {"__wrapped__", T_OBJECT, offsetof(GuardObject, wrapper), READONLY, NULL},
    {NULL, 0, 0, 0, NULL}};

static PyTypeObject GuardType = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "autoinstr._speedups.Guard",
    .tp_basicsize = sizeof(GuardObject),
    .tp_flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_HAVE_GC | Py_TPFLAGS_HAVE_VECTORCALL,
    .tp_doc = "An integration's wrapt wrapper, guarded: see autoinstr.integrations._wrapping.guarded.",
    .tp_vectorcall_offset = offsetof(GuardObject, vectorcall),
    .tp_call = PyVectorcall_Call,
    .tp_traverse = guard_traverse,
    .tp_clear = guard_clear,
    .tp_dealloc = guard_dealloc,
    .tp_members = guard_members,
};

static PyObject *guard(PyObject *module, PyObject *args)
{
    PyObject *parts[5];
    if (!PyArg_ParseTuple(args, "OOOOO", &parts[0], &parts[1], &parts[2], &parts[3], &parts[4]))
        return NULL;
    if (!PyCallable_Check(parts[0]) || !PyCallable_Check(parts[4])) {
        PyErr_SetString(PyExc_TypeError, "guard(wrapper, integration, failed, disabled, disable): not callable");
        return NULL;
    }
    GuardObject *g = PyObject_GC_New(GuardObject, &GuardType);
    if (g == NULL)
        return NULL;
    g->vectorcall = guard_call;
    PyObject **slots[5] = {&g->wrapper, &g->integration, &g->failed, &g->disabled, &g->disable};
    for (int i = 0; i < 5; i++) {
        Py_INCREF(parts[i]);
        *slots[i] = parts[i];
    }
    PyObject_GC_Track((PyObject *)g);
    return (PyObject *)g;
}

static int guard_module_init(PyObject *module)
{
    return PyType_Ready(&OutcomeType) < 0 || PyType_Ready(&GuardType) < 0 ? -1 : 0;
}
