/* The span's hot path in C: SpanCore, the base class of autoinstr.trace.span.Span where the speedups are built
   (included by _speedups.c). It holds the span's slots and its methods that run on every span of every request:
   __init__, __enter__, __exit__, start, finish and _on_end. autoinstr.trace.span._SpanCore is the same class in
   Python, used where the speedups are not built or are turned off (AUTOINSTR_SPEEDUPS=false);
   tests/test_span_core.py runs the span tests on both and compares what they leave on the spans.

   The rare paths call the Python methods of Span: a remote or invalid parent (_adopt), an exception at exit
   (record_exception), a context reset from another context (_restore_previous), a hand-over that fails
   (_handover_failed). configure_span() hands over what the Python code reads as module globals. */

typedef struct {
    PyObject_HEAD
    PyObject *name, *attributes, *kind, *root, *span_id, *parent_id, *start_ns, *end_ns, *status, *events, *token,
        *trace_id, *sampled, *finished, *tracestate, *baggage;
} SpanObject;

#define PARTIAL_FLUSH_SPANS 500

static PyTypeObject *span_class = NULL;  /* Span, the Python subclass: `parent.__class__ is Span` */
static PyObject *current_var, *random_bits, *clock_ns, *sink_class, *span_globals, *unset, *handover_failed;
static PyObject *limiter = NULL;  /* Sampling's rate limiter, or NULL */
static int clock_is_monotonic = 0;  /* clock_ns is time.perf_counter_ns (see now_ns) */
static int sample_never = 0, sample_always = 1;
static unsigned long long sample_threshold = 0;
static PyObject *int_0, *int_64, *int_128, *str_internal, *str_submit, *str_submit_one, *str_unsampled;
static PyObject *str_adopt, *str_record_exception, *str_restore_previous, *str_time_ns, *str_root, *str_sampled;
static PyObject *str_span_id, *str_token, *str_kind, *str_parent, *str_name, *str_finished_name, *str_empty;

/* The ids' generator, drawn here: _bits is the getrandbits of a _random.Random (span._Ids.rng), a Mersenne Twister
   whose state is the object's own, so seeding it (after fork, in tests) seeds these draws too. getrandbits(64) and
   (128) take 32-bit words from it, least significant first; the same words make the same int here, without the
   call, the word array and the byte conversion. Only where a check at the first id found a generator of that type
   giving the same numbers both ways (mt_checked); else the call. */
#define MT_N 624
#define MT_M 397
typedef struct {
    PyObject_HEAD
    int index;
    uint32_t state[MT_N];
} MersenneObject;
static MersenneObject *id_generator = NULL;  /* borrowed: random_bits (a bound method) holds it */
static int id_generator_checked = 0;

static uint32_t mt_next(MersenneObject *m)
{
    static const uint32_t mag01[2] = {0x0U, 0x9908b0dfU};
    uint32_t y, *mt = m->state;
    if (m->index >= MT_N) {
        int k;
        for (k = 0; k < MT_N - MT_M; k++) {
            y = (mt[k] & 0x80000000U) | (mt[k + 1] & 0x7fffffffU);
            mt[k] = mt[k + MT_M] ^ (y >> 1) ^ mag01[y & 0x1U];
        }
        for (; k < MT_N - 1; k++) {
            y = (mt[k] & 0x80000000U) | (mt[k + 1] & 0x7fffffffU);
            mt[k] = mt[k + (MT_M - MT_N)] ^ (y >> 1) ^ mag01[y & 0x1U];
        }
        y = (mt[MT_N - 1] & 0x80000000U) | (mt[0] & 0x7fffffffU);
        mt[MT_N - 1] = mt[MT_M - 1] ^ (y >> 1) ^ mag01[y & 0x1U];
        m->index = 0;
    }
    y = mt[m->index++];
    y ^= (y >> 11);
    y ^= (y << 7) & 0x9d2c5680U;
    y ^= (y << 15) & 0xefc60000U;
    y ^= (y >> 18);
    return y;
}

/* getrandbits(64) or getrandbits(128) of m. New ref. */
static PyObject *mt_bits(MersenneObject *m, int width)
{
    uint32_t w[4];
    for (int i = 0; i < width / 32; i++)
        w[i] = mt_next(m);
    if (width == 64)
        return PyLong_FromUnsignedLongLong((unsigned long long)w[0] | (unsigned long long)w[1] << 32);
    unsigned char bytes[16];
    for (int i = 0; i < 16; i++)
        bytes[i] = (unsigned char)(w[i / 4] >> (8 * (i % 4)));
    return _PyLong_FromByteArray(bytes, 16, 1, 0);
}

/* Whether `bits` is the getrandbits of a generator (*generator) mt_bits draws from as it does itself: a fresh one
   of its type, seeded alike twice, checked over more words than its state holds (one regeneration). 1, 0 or -1. */
static int mt_checked(PyObject *bits, PyObject **generator)
{
    PyObject *owner = PyObject_GetAttrString(bits, "__self__");
    if (owner == NULL) {
        PyErr_Clear();
        return 0;
    }
    PyTypeObject *type = Py_TYPE(owner);
    *generator = owner;  /* (borrowed once released: `bits`, a bound method, holds it) */
    Py_DECREF(owner);
    if (strcmp(type->tp_name, "_random.Random") != 0 || type->tp_basicsize != (Py_ssize_t)sizeof(MersenneObject))
        return 0;
    PyObject *here = PyObject_CallFunction((PyObject *)type, "i", 20261127);
    PyObject *there = here == NULL ? NULL : PyObject_CallFunction((PyObject *)type, "i", 20261127);
    int same = there != NULL;
    for (int i = 0; same == 1 && i < 2 * MT_N / 3; i++) {
        int width = i % 5 == 4 ? 128 : 64;
        PyObject *mine = mt_bits((MersenneObject *)here, width);
        PyObject *theirs = mine == NULL ? NULL : PyObject_CallMethod(there, "getrandbits", "i", width);
        same = theirs == NULL ? -1 : PyObject_RichCompareBool(mine, theirs, Py_EQ);
        Py_XDECREF(mine);
        Py_XDECREF(theirs);
    }
    Py_XDECREF(here);
    Py_XDECREF(there);
    return same;
}

static PyObject *configure_span(PyObject *self, PyObject *args)
{
    PyObject *cls, *var, *bits, *clock, *sink, *globals, *sentinel, *failed;
    if (!PyArg_ParseTuple(args, "O!OOOOO!OO", &PyType_Type, &cls, &var, &bits, &clock, &sink, &PyDict_Type, &globals,
                          &sentinel, &failed))
        return NULL;
    if (!PyContextVar_CheckExact(var)) {
        PyErr_SetString(PyExc_TypeError, "configure_span(): not a ContextVar");
        return NULL;
    }
    PyObject *objects[8] = {cls, var, bits, clock, sink, globals, sentinel, failed};
    PyObject **slots[8] = {(PyObject **)&span_class, &current_var, &random_bits, &clock_ns, &sink_class,
                           &span_globals, &unset, &handover_failed};
    for (int i = 0; i < 8; i++) {
        Py_INCREF(objects[i]);
        Py_XSETREF(*slots[i], objects[i]);
    }
    PyObject *time_module = PyImport_ImportModule("time");
    PyObject *perf_counter_ns = time_module == NULL ? NULL : PyObject_GetAttrString(time_module, "perf_counter_ns");
    Py_XDECREF(time_module);
    if (perf_counter_ns == NULL)
        return NULL;
    clock_is_monotonic = clock == perf_counter_ns;
    Py_DECREF(perf_counter_ns);
    id_generator = NULL;
    id_generator_checked = 0;  /* (at the first id: not at start-up) */
    Py_RETURN_NONE;
}

/* Sampling.configure's settings: threshold (None: always), the rate limiter (None: none), never. */
static PyObject *configure_sampling(PyObject *self, PyObject *args)
{
    PyObject *threshold, *rate_limiter;
    int never;
    if (!PyArg_ParseTuple(args, "OOp", &threshold, &rate_limiter, &never))
        return NULL;
    if (threshold == Py_None)
        sample_always = 1;
    else {
        unsigned long long t = PyLong_AsUnsignedLongLong(threshold);
        if (t == (unsigned long long)-1 && PyErr_Occurred())
            return NULL;
        sample_always = 0;
        sample_threshold = t;
    }
    Py_XSETREF(limiter, rate_limiter == Py_None ? NULL : (Py_INCREF(rate_limiter), rate_limiter));
    sample_never = never;
    Py_RETURN_NONE;
}

static inline void set_slot(PyObject **slot, PyObject *value)
{
    Py_INCREF(value);
    Py_XSETREF(*slot, value);
}

/* A slot of another span (root, parent), through getattr when unset (Span.__getattr__ answers then). New ref. */
static PyObject *slot_of(PyObject *span, PyObject *value, PyObject *name)
{
    if (value != NULL) {
        Py_INCREF(value);
        return value;
    }
    return PyObject_GetAttr(span, name);
}

static int is_span(PyObject *obj)
{
    return span_class != NULL && Py_TYPE(obj) == span_class;
}

/* _bits(n) or 1. New ref. */
static PyObject *new_id(PyObject *width)
{
    PyObject *id;
    if (!id_generator_checked) {  /* once, at the first id drawn */
        id_generator_checked = 1;
        PyObject *generator = NULL;
        int checked = mt_checked(random_bits, &generator);
        if (checked < 0)
            PyErr_Clear();  /* (the call it is, then) */
        else if (checked)
            id_generator = (MersenneObject *)generator;
    }
    if (id_generator != NULL && (width == int_64 || width == int_128))
        id = mt_bits(id_generator, width == int_64 ? 64 : 128);
    else
        id = PyObject_CallOneArg(random_bits, width);
    if (id != NULL && PyObject_Not(id) == 1) {
        Py_DECREF(id);
        id = PyLong_FromLong(1);
    }
    return id;
}

static int span_setup(SpanObject *self, PyObject *parent);

static int core_init(PyObject *op, PyObject *args, PyObject *kwds)
{
    SpanObject *self = (SpanObject *)op;
    PyObject *name = NULL, *kind = NULL, *parent = NULL, *attributes;
    if (span_class == NULL) {
        PyErr_SetString(PyExc_RuntimeError, "SpanCore: configure_span() was not called");
        return -1;
    }
    Py_ssize_t nargs = PyTuple_GET_SIZE(args);
    if (nargs > 1) {
        PyErr_Format(PyExc_TypeError, "__init__() takes 2 positional arguments but %zd were given", nargs + 1);
        return -1;
    }
    attributes = kwds != NULL ? PyDict_Copy(kwds) : PyDict_New();
    if (attributes == NULL)
        return -1;
    if (kwds != NULL && PyDict_GET_SIZE(attributes)) {  /* the keywords that are not attributes */
        PyObject *keys[3] = {str_kind, str_parent, str_name};
        PyObject **found[3] = {&kind, &parent, &name};
        for (int i = 0; i < 3; i++) {
            PyObject *value = PyDict_GetItemWithError(attributes, keys[i]);
            if (value == NULL) {
                if (PyErr_Occurred())
                    goto fail;
                continue;
            }
            if (i == 2 && nargs) {
                PyErr_SetString(PyExc_TypeError, "__init__() got multiple values for argument 'name'");
                goto fail;
            }
            Py_INCREF(value);
            *found[i] = value;
            if (PyDict_DelItem(attributes, keys[i]) < 0)
                goto fail;
        }
    }
    if (nargs) {
        name = PyTuple_GET_ITEM(args, 0);
        Py_INCREF(name);
    }
    else if (name == NULL) {
        PyErr_SetString(PyExc_TypeError, "__init__() missing 1 required positional argument: 'name'");
        goto fail;
    }
    Py_XSETREF(self->name, name);
    name = NULL;
    Py_XSETREF(self->attributes, attributes);
    attributes = NULL;
    if (kind == NULL) {
        kind = str_internal;
        Py_INCREF(kind);
    }
    Py_XSETREF(self->kind, kind);
    kind = NULL;
    return span_setup(self, parent);
fail:
    Py_XDECREF(name);
    Py_XDECREF(kind);
    Py_XDECREF(parent);
    Py_XDECREF(attributes);
    return -1;
}

/* Span(name, kind=kind, parent=parent) for the integrations' C code: the same span, without the keyword
   dict a call through the class builds and __init__ takes apart (a new reference). */
static PyObject *span_new(PyObject *name, PyObject *kind, PyObject *parent)
{
    PyObject *op = span_class->tp_alloc(span_class, 0);
    if (op == NULL)
        return NULL;
    SpanObject *self = (SpanObject *)op;
    if ((self->attributes = PyDict_New()) == NULL) {
        Py_DECREF(op);
        return NULL;
    }
    Py_INCREF(name);
    self->name = name;
    Py_INCREF(kind);
    self->kind = kind;
    Py_INCREF(parent);
    if (span_setup(self, parent) < 0) {
        Py_DECREF(op);
        return NULL;
    }
    return op;
}

/* The rest of __init__, once name, kind and attributes are set: the parent (a reference it takes; NULL or
   _UNSET: the current span) decides the trace, the sampling and the ids. */
static int span_setup(SpanObject *self, PyObject *parent)
{
    PyObject *op = (PyObject *)self;
    if (parent == NULL || parent == unset) {
        Py_XDECREF(parent);
        if (PyContextVar_Get(current_var, Py_None, &parent) < 0)
            return -1;
    }
    if (parent == Py_None) {  /* a new trace: this span is its local root */
        Py_DECREF(parent);
        if (sample_never) {
            set_slot(&self->sampled, Py_False);
            return 0;
        }
        PyObject *trace_id = new_id(int_128);
        if (trace_id == NULL)
            return -1;
        Py_XSETREF(self->trace_id, trace_id);
        int sampled = 1;
        if (!sample_always && PyLong_AsUnsignedLongLongMask(trace_id) >= sample_threshold)
            sampled = 0;
        else if (limiter != NULL) {
            PyObject *allowed = PyObject_CallNoArgs(limiter);
            if (allowed == NULL)
                return -1;
            sampled = PyObject_IsTrue(allowed);
            Py_DECREF(allowed);
            if (sampled < 0)
                return -1;
        }
        if (!sampled) {
            set_slot(&self->sampled, Py_False);
            return 0;
        }
        set_slot(&self->root, op);
        set_slot(&self->sampled, Py_True);
        set_slot(&self->finished, Py_None);
        set_slot(&self->parent_id, Py_None);
        set_slot(&self->tracestate, str_empty);
        set_slot(&self->baggage, Py_None);
    }
    else if (is_span(parent)) {
        SpanObject *p = (SpanObject *)parent;
        PyObject *root = slot_of(parent, p->root, str_root);
        if (root == NULL) {
            Py_DECREF(parent);
            return -1;
        }
        Py_XSETREF(self->root, root);
        PyObject *root_sampled = is_span(root) ? slot_of(root, ((SpanObject *)root)->sampled, str_sampled)
                                               : PyObject_GetAttr(root, str_sampled);
        int sampled = root_sampled == NULL ? -1 : PyObject_IsTrue(root_sampled);
        Py_XDECREF(root_sampled);
        if (sampled < 0) {
            Py_DECREF(parent);
            return -1;
        }
        if (!sampled) {
            Py_DECREF(parent);
            set_slot(&self->sampled, Py_False);
            return 0;
        }
        set_slot(&self->sampled, Py_True);
        PyObject *parent_id = slot_of(parent, p->span_id, str_span_id);
        Py_DECREF(parent);
        if (parent_id == NULL)
            return -1;
        Py_XSETREF(self->parent_id, parent_id);
    }
    else {  /* a SpanContext (a remote parent), or not a parent at all: in Python */
        PyObject *done = PyObject_CallMethodOneArg(op, str_adopt, parent);
        Py_DECREF(parent);
        if (done == NULL)
            return -1;
        Py_DECREF(done);
        int sampled = self->sampled == NULL ? 0 : PyObject_IsTrue(self->sampled);
        if (sampled <= 0)
            return sampled;
    }
    PyObject *span_id = new_id(int_64);
    if (span_id == NULL)
        return -1;
    Py_XSETREF(self->span_id, span_id);
    set_slot(&self->status, str_ok);
    set_slot(&self->events, Py_None);
    set_slot(&self->start_ns, int_0);
    set_slot(&self->end_ns, int_0);
    return 0;
}

static int truth_of(PyObject *value)
{
    return value != NULL && value != Py_False && (value == Py_True || PyObject_IsTrue(value) == 1);
}

/* The span's _sampled: -1 (an exception) when unset, as reading it in Python raises. */
static int sampled_of(SpanObject *self)
{
    if (self->sampled == NULL) {
        PyObject *value = PyObject_GetAttr((PyObject *)self, str_sampled);
        if (value == NULL)
            return -1;
        int truth = PyObject_IsTrue(value);
        Py_DECREF(value);
        return truth;
    }
    return self->sampled == Py_True ? 1 : self->sampled == Py_False ? 0 : PyObject_IsTrue(self->sampled);
}

/* clock_ns() (time.perf_counter_ns, which on Linux reads CLOCK_MONOTONIC: read here, without the call) */
static PyObject *now_ns(void)
{
#ifdef __linux__
    struct timespec ts;
    if (clock_is_monotonic && clock_gettime(CLOCK_MONOTONIC, &ts) == 0)
        return PyLong_FromLongLong((long long)ts.tv_sec * 1000000000LL + ts.tv_nsec);
#endif
    return PyObject_CallNoArgs(clock_ns);
}

static PyObject *core_enter(PyObject *op, PyObject *unused)
{
    SpanObject *self = (SpanObject *)op;
    PyObject *token = PyContextVar_Set(current_var, op);
    if (token == NULL)
        return NULL;
    Py_XSETREF(self->token, token);
    int sampled = sampled_of(self);
    if (sampled < 0)
        return NULL;
    if (sampled) {  /* an unsampled span takes no clock readings */
        PyObject *now = now_ns();
        if (now == NULL)
            return NULL;
        Py_XSETREF(self->start_ns, now);
    }
    Py_INCREF(op);
    return op;
}

/* _reset_current(self._token), or _restore_previous() when the token belongs to another context. */
static PyObject *not_current;  /* the token of a span never made current (db_start): its exit leaves the ContextVar */

static int reset_current(SpanObject *self)
{
    if (self->token == not_current && not_current != NULL)  /* never made current (db_start) */
        return 0;
    PyObject *token = self->token != NULL ? (Py_INCREF(self->token), self->token)
                                          : PyObject_GetAttr((PyObject *)self, str_token);
    if (token == NULL)
        return -1;
    int r = PyContextVar_Reset(current_var, token);
    Py_DECREF(token);
    if (r < 0) {
        if (!PyErr_ExceptionMatches(PyExc_ValueError))
            return -1;
        PyErr_Clear();
        PyObject *done = PyObject_CallMethodNoArgs((PyObject *)self, str_restore_previous);
        if (done == NULL)
            return -1;
        Py_DECREF(done);
    }
    return 0;
}

/* A call into the pipeline failed: Exception is the agent's (the span is lost, one warning), anything else
   (KeyboardInterrupt...) goes on to the app, as `except Exception` lets it. */
static int handover(PyObject *result)
{
    if (result != NULL) {
        Py_DECREF(result);
        return 0;
    }
    if (!PyErr_ExceptionMatches(PyExc_Exception))
        return -1;
    PyErr_Clear();
    PyObject *done = PyObject_CallNoArgs(handover_failed);
    Py_XDECREF(done);
    return done == NULL ? -1 : 0;
}

static PyObject *sink_call(PyObject *method, PyObject *arg)
{
    PyObject *submit = PyObject_GetAttr(sink_class, method);
    if (submit == NULL)
        return NULL;
    PyObject *result = PyObject_CallOneArg(submit, arg);
    Py_DECREF(submit);
    return result;
}

static PyObject *core_on_end(PyObject *op, PyObject *unused);
static PyObject *submit_queued(PyObject *method, PyObject *item);

/* The ended span to the pipeline: alone when it is a trace of one span, else through _on_end. */
static int hand_over(SpanObject *self)
{
    PyObject *result;
    if (self->root == (PyObject *)self && self->finished == Py_None)
        result = submit_queued(str_submit_one, (PyObject *)self);
    else
        result = core_on_end((PyObject *)self, NULL);
    return handover(result);
}

static PyObject *next_unsampled(void)
{
    PyObject *counter = PyDict_GetItemWithError(span_globals, str_unsampled);
    if (counter == NULL) {
        if (!PyErr_Occurred())
            PyErr_SetString(PyExc_RuntimeError, "span module has no _unsampled counter");
        return NULL;
    }
    Py_INCREF(counter);
    PyObject *n = PyIter_Next(counter);
    Py_DECREF(counter);
    if (n == NULL && !PyErr_Occurred())
        PyErr_SetNone(PyExc_StopIteration);
    return n;
}

static PyObject *core_exit(PyObject *op, PyObject *const *args, Py_ssize_t nargs)
{
    SpanObject *self = (SpanObject *)op;
    if (nargs != 3) {
        PyErr_Format(PyExc_TypeError, "__exit__() takes 4 positional arguments but %zd were given", nargs + 1);
        return NULL;
    }
    PyObject *exc = args[1];
    int sampled = sampled_of(self);
    if (sampled < 0)
        return NULL;
    if (!sampled) {
        if (reset_current(self) < 0)
            return NULL;
        PyObject *n = next_unsampled();
        if (n == NULL)
            return NULL;
        Py_DECREF(n);
        Py_RETURN_FALSE;
    }
    PyObject *end = now_ns();
    if (end == NULL)
        return NULL;
    Py_XSETREF(self->end_ns, end);
    if (reset_current(self) < 0)
        return NULL;
    set_slot(&self->token, Py_None);  /* a queued span keeps no Token alive */
    if (exc != Py_None) {
        PyObject *call_args[3] = {op, exc, self->end_ns};  /* self.record_exception(exc, time_ns=end_ns) */
        PyObject *kwnames = PyTuple_Pack(1, str_time_ns);
        if (kwnames == NULL)
            return NULL;
        PyObject *done = PyObject_VectorcallMethod(str_record_exception, call_args,
                                                   2, kwnames);
        Py_DECREF(kwnames);
        if (done == NULL)
            return NULL;
        Py_DECREF(done);
    }
    if (hand_over(self) < 0)
        return NULL;
    Py_RETURN_FALSE;
}

static PyObject *core_start(PyObject *op, PyObject *unused)
{
    SpanObject *self = (SpanObject *)op;
    int sampled = sampled_of(self);
    if (sampled < 0)
        return NULL;
    if (!(sampled && truth_of(self->start_ns))) {
        PyObject *now = now_ns();
        if (now == NULL)
            return NULL;
        Py_XSETREF(self->start_ns, now);
    }
    Py_INCREF(op);
    return op;
}

static PyObject *core_finish(PyObject *op, PyObject *const *args, Py_ssize_t nargs, PyObject *kwnames)
{
    SpanObject *self = (SpanObject *)op;
    PyObject *end_arg = nargs > 0 ? args[0] : NULL;
    Py_ssize_t nkw = kwnames == NULL ? 0 : PyTuple_GET_SIZE(kwnames);
    if (nargs + nkw > 1 || (nkw == 1 && PyUnicode_CompareWithASCIIString(PyTuple_GET_ITEM(kwnames, 0), "end_ns"))) {
        PyErr_SetString(PyExc_TypeError, "finish() takes at most one argument, end_ns");
        return NULL;
    }
    if (nkw == 1)
        end_arg = args[nargs];
    int sampled = sampled_of(self);
    if (sampled < 0)
        return NULL;
    if (sampled && truth_of(self->end_ns))
        Py_RETURN_NONE;
    PyObject *end;
    int given = end_arg == NULL ? 0 : PyObject_IsTrue(end_arg);
    if (given < 0)
        return NULL;
    if (given) {
        Py_INCREF(end_arg);
        end = end_arg;
    }
    else if ((end = now_ns()) == NULL)
        return NULL;
    Py_XSETREF(self->end_ns, end);
    if (!sampled) {
        PyObject *n = next_unsampled();
        if (n == NULL)
            return NULL;
        Py_DECREF(n);
        Py_RETURN_NONE;
    }
    if (hand_over(self) < 0)
        return NULL;
    Py_RETURN_NONE;
}

/* A handed-over span waits in the pipeline's queue, often through several collections of the youngest generations:
   tracked, each traverses it and promotes it, and the oldest generation's full collections then come about three
   times as often (a gunicorn worker with the agent spent 6 us a request more in the collector, most of it in full
   collections of the whole heap). Waiting there, it is reachable from the queue alone, so it is untracked where it
   cannot be part of a cycle: no context token, no list of finished spans (the root's is gone once handed over),
   no events, attributes in a dict the collector does not track (nothing in it that could hold a reference back),
   every other field atomic or a span. The flush thread tracks what it takes again (track_again), so a span
   changed meanwhile is seen again by the collector before it is let go. */
static int untracked_field(PyObject *v)
{
    return v == NULL || !PyObject_IS_GC(v) || !PyObject_GC_IsTracked(v);
}

static void untrack_queued_span(PyObject *op)
{
    if (Py_TYPE(op) != span_class || !PyObject_GC_IsTracked(op))
        return;
    SpanObject *s = (SpanObject *)op;
    int no_events = s->events == NULL || s->events == Py_None ||
                    (PyList_CheckExact(s->events) && PyList_GET_SIZE(s->events) == 0);
    int plain_attributes = s->attributes == NULL || s->attributes == Py_None ||
                           (PyDict_CheckExact(s->attributes) && !PyObject_GC_IsTracked(s->attributes));
    if ((s->token != NULL && s->token != Py_None) || (s->finished != NULL && s->finished != Py_None) || !no_events ||
        !plain_attributes || (s->root != NULL && Py_TYPE(s->root) != span_class))
        return;
    PyObject *fields[] = {s->name, s->kind, s->span_id, s->parent_id, s->start_ns, s->end_ns, s->status, s->trace_id,
                          s->sampled, s->tracestate, s->baggage};
    for (size_t i = 0; i < sizeof(fields) / sizeof(fields[0]); i++)
        if (!untracked_field(fields[i]))
            return;
    PyObject_GC_UnTrack(op);
}

/* A local trace about to be queued: its spans (and the list, which nothing but the queue will hold). */
static void untrack_queued(PyObject *item)
{
    if (PyList_CheckExact(item)) {
        for (Py_ssize_t i = 0; i < PyList_GET_SIZE(item); i++)
            untrack_queued_span(PyList_GET_ITEM(item, i));
        if (PyObject_GC_IsTracked(item))
            PyObject_GC_UnTrack(item);
    }
    else
        untrack_queued_span(item);
}

/* track_again(taken): the spans and span lists untracked while queued, in what the flush thread took (lists and
   tuples of them, a few levels deep), tracked again. */
static void track_again_at(PyObject *obj, int depth)
{
    if (Py_TYPE(obj) == span_class) {
        if (!PyObject_GC_IsTracked(obj))
            PyObject_GC_Track(obj);
        return;
    }
    if (depth > 6 || !(PyList_CheckExact(obj) || PyTuple_CheckExact(obj)))
        return;
    Py_ssize_t n = PySequence_Fast_GET_SIZE(obj);
    PyObject **items = PySequence_Fast_ITEMS(obj);
    for (Py_ssize_t i = 0; i < n; i++)
        track_again_at(items[i], depth + 1);
    if (PyList_CheckExact(obj) && !PyObject_GC_IsTracked(obj))
        PyObject_GC_Track(obj);
}

static PyObject *track_again(PyObject *module, PyObject *taken)
{
    if (span_class != NULL)
        track_again_at(taken, 0);
    Py_RETURN_NONE;
}

/* let_go(taken): track_again, then empty the list `taken`, in one call: with a bytecode between the two, a thread
   switch there could let the app's next collection find the spans tracked and still held, and promote them all. */
static PyObject *let_go(PyObject *module, PyObject *taken)
{
    if (!PyList_CheckExact(taken)) {
        PyErr_SetString(PyExc_TypeError, "let_go() takes a list");
        return NULL;
    }
    if (span_class != NULL)
        track_again_at(taken, 0);
    if (PyList_SetSlice(taken, 0, PyList_GET_SIZE(taken), NULL) < 0)
        return NULL;
    Py_RETURN_NONE;
}

static PyObject *submit_queued(PyObject *method, PyObject *item)
{
    untrack_queued(item);
    return sink_call(method, item);
}

/* The local root hands over the whole local trace; a span ending after its root goes alone. */
static PyObject *core_on_end(PyObject *op, PyObject *unused)
{
    SpanObject *self = (SpanObject *)op;
    PyObject *root = self->root != NULL ? (Py_INCREF(self->root), self->root) : PyObject_GetAttr(op, str_root);
    if (root == NULL)
        return NULL;
    if (!is_span(root)) {
        Py_DECREF(root);
        PyErr_SetString(PyExc_TypeError, "a span's root is not a Span");
        return NULL;
    }
    SpanObject *r = (SpanObject *)root;
    PyObject *spans = slot_of(root, r->finished, str_finished_name), *result = NULL;
    if (spans == NULL) {
        Py_DECREF(root);
        return NULL;
    }
    if (root == op) {
        if (spans == Py_None)
            result = submit_queued(str_submit_one, op);
        else {
            set_slot(&r->finished, Py_None);
            if (PyList_Append(spans, op) == 0)
                result = submit_queued(str_submit, spans);
        }
    }
    else if (truth_of(r->end_ns))
        result = submit_queued(str_submit_one, op);
    else if (spans == Py_None) {
        PyObject *list = PyList_New(1);
        if (list != NULL) {
            Py_INCREF(op);
            PyList_SET_ITEM(list, 0, op);
            Py_XSETREF(r->finished, list);
            result = Py_None;
            Py_INCREF(result);
        }
    }
    else if (PyList_Append(spans, op) == 0) {
        if (PyList_GET_SIZE(spans) >= PARTIAL_FLUSH_SPANS) {
            set_slot(&r->finished, Py_None);
            result = submit_queued(str_submit, spans);
        }
        else {
            result = Py_None;
            Py_INCREF(result);
        }
    }
    Py_DECREF(spans);
    Py_DECREF(root);
    if (result == NULL)
        return NULL;
    Py_DECREF(result);
    Py_RETURN_NONE;
}

#define SPAN_MEMBER(field, pyname) {pyname, T_OBJECT_EX, offsetof(SpanObject, field), 0, NULL}
static PyMemberDef core_members[] = {
    SPAN_MEMBER(name, "name"), SPAN_MEMBER(attributes, "attributes"), SPAN_MEMBER(kind, "kind"),
    SPAN_MEMBER(root, "root"), SPAN_MEMBER(span_id, "span_id"), SPAN_MEMBER(parent_id, "parent_id"),
    SPAN_MEMBER(start_ns, "start_ns"), SPAN_MEMBER(end_ns, "end_ns"), SPAN_MEMBER(status, "_status"),
    SPAN_MEMBER(events, "_events"), SPAN_MEMBER(token, "_token"), SPAN_MEMBER(trace_id, "_trace_id"),
    SPAN_MEMBER(sampled, "_sampled"), SPAN_MEMBER(finished, "_finished"), SPAN_MEMBER(tracestate, "_tracestate"),
    SPAN_MEMBER(baggage, "_baggage"), {NULL, 0, 0, 0, NULL}};

#define SPAN_FIELDS(apply)                                                                                         \
    apply(name) apply(attributes) apply(kind) apply(root) apply(span_id) apply(parent_id) apply(start_ns)            \
    apply(end_ns) apply(status) apply(events) apply(token) apply(trace_id) apply(sampled) apply(finished)           \
    apply(tracestate) apply(baggage)

static int core_traverse(PyObject *op, visitproc visit, void *arg)
{
    SpanObject *self = (SpanObject *)op;
#define VISIT(field) Py_VISIT(self->field);
    SPAN_FIELDS(VISIT)
#undef VISIT
    return 0;
}

static int core_clear(PyObject *op)
{
    SpanObject *self = (SpanObject *)op;
#define CLEAR(field) Py_CLEAR(self->field);
    SPAN_FIELDS(CLEAR)
#undef CLEAR
    return 0;
}

static void core_dealloc(PyObject *op)
{
    PyTypeObject *type = Py_TYPE(op);
    PyObject_GC_UnTrack(op);
    core_clear(op);
    type->tp_free(op);
}

static PyMethodDef core_methods[] = {
    {"__enter__", core_enter, METH_NOARGS, NULL},
    {"__exit__", (PyCFunction)(void (*)(void))core_exit, METH_FASTCALL, NULL},
    {"start", core_start, METH_NOARGS,
     "Start the clock without making this span the current one; starting twice does nothing the second time."},
    {"finish", (PyCFunction)(void (*)(void))core_finish, METH_FASTCALL | METH_KEYWORDS,
     "End a span started with start() (not needed with `with`); a second call does nothing."},
    {"_on_end", core_on_end, METH_NOARGS, NULL},
    {NULL, NULL, 0, NULL}};

static PyTypeObject SpanCoreType = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "autoinstr._speedups.SpanCore",
    .tp_basicsize = sizeof(SpanObject),
    .tp_flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_BASETYPE | Py_TPFLAGS_HAVE_GC,
    .tp_doc = "The slots and hot methods of autoinstr.trace.span.Span (its base class).",
    .tp_traverse = core_traverse,
    .tp_clear = core_clear,
    .tp_dealloc = core_dealloc,
    .tp_free = PyObject_GC_Del,
    .tp_methods = core_methods,
    .tp_members = core_members,
    .tp_init = core_init,
    .tp_new = PyType_GenericNew,
};

static int span_module_init(PyObject *module)
{
    const char *names[] = {"internal", "submit", "submit_one", "_unsampled", "_adopt", "record_exception",
                           "_restore_previous", "time_ns", "root", "_sampled", "span_id", "_token", "kind",
                           "parent", "name", "_finished", ""};
    PyObject **targets[] = {&str_internal, &str_submit, &str_submit_one, &str_unsampled, &str_adopt,
                            &str_record_exception, &str_restore_previous, &str_time_ns, &str_root, &str_sampled,
                            &str_span_id, &str_token, &str_kind, &str_parent, &str_name, &str_finished_name,
                            &str_empty};
    for (size_t i = 0; i < sizeof(names) / sizeof(names[0]); i++)
        if ((*targets[i] = PyUnicode_InternFromString(names[i])) == NULL)
            return -1;
    if ((not_current = PyUnicode_InternFromString("<not made current>")) == NULL)
        return -1;
    if ((int_0 = PyLong_FromLong(0)) == NULL || (int_64 = PyLong_FromLong(64)) == NULL ||
        (int_128 = PyLong_FromLong(128)) == NULL)
        return -1;
    if (PyType_Ready(&SpanCoreType) < 0)
        return -1;
    Py_INCREF(&SpanCoreType);
    if (PyModule_AddObject(module, "SpanCore", (PyObject *)&SpanCoreType) < 0) {
        Py_DECREF(&SpanCoreType);
        return -1;
    }
    return 0;
}
