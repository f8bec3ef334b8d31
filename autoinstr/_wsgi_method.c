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
