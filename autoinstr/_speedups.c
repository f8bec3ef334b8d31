/* Optional compiled helpers for the flush thread, which shares the GIL with the app.

   fields(): export.records.span_fields() for the spans it can convert as they are (no error or events; every
   attribute already exportable, or attributes whose cleaned form, a statement's summary among them, is in
   records' cache), None for the others, which the caller converts in Python.
   store_values(): the rows store.Store.insert_fields() binds, from span_fields() tuples.
   pack_records(): the collector exporter's msgpack body, from span_fields() tuples.
   pb_spans(): the OTLP exporter's Span messages (protobuf), from span_fields() tuples.
   SpanCore (_span.c): the span's slots and hot methods, the base class of autoinstr.trace.span.Span.
   wsgi_call and Response (_wsgi_call.c): the WSGI server span's request path (autoinstr.integrations._wsgi).
   CallCore, method_hook and wire_hook (_client_call.c): outgoing HTTP's (autoinstr.integrations._http).
   wsgi_method_hook and flask_dispatch_hook (_wsgi_method.c): a framework's WSGI __call__ (_wsgi.wsgi_method),
   Flask's dispatch_request (integrations/flask.py).
   db_run, the cursor and connect hooks (_db_call.c): the DB-API calls' (autoinstr.integrations._dbapi).

   Built when the wheel is built, where a C compiler is found (hatch_build.py); without it the pure-Python
   code does the same work. tests/test_speedups.py holds both to the same results. */

#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <structmember.h>
#include <math.h>
#include <stdio.h>
#include <string.h>
#include <time.h>

#define MAX_KEY_LENGTH 256
#define MAX_NAME_LENGTH 1024

enum { S_NAME, S_ATTRIBUTES, S_KIND, S_ROOT, S_SPAN_ID, S_PARENT_ID, S_START, S_END, S_STATUS, S_EVENTS,
       S_TRACE_ID, S_COUNT };
static const char *slot_names[S_COUNT] = {"name", "attributes", "kind", "root", "span_id", "parent_id",
                                           "start_ns", "end_ns", "_status", "_events", "_trace_id"};
static Py_ssize_t offsets[S_COUNT];
static PyTypeObject *span_type = NULL;
static PyObject *str_ok, *str_db_query_text, *kinds[5];
static PyObject *empty_json_object, *empty_json_array;
static PyObject *no_events;  /* the events of every record converted here: one empty list, never changed */
static PyObject *records_globals = NULL;  /* autoinstr.export.records' globals (configure_shared) */
static PyTypeObject *shared_type = NULL;  /* records.SharedAttributes */
static PyObject *str_prepared, *str_misses, *str_sql_policy, *str_obfuscate;

/* A record's attributes as the writers here take them: a dict, or records.SharedAttributes (a dict). */
static int record_attributes(PyObject *attrs)
{
    return PyDict_CheckExact(attrs) || (shared_type != NULL && Py_TYPE(attrs) == shared_type);
}

#define SLOT(obj, i) (*(PyObject **)((char *)(obj) + offsets[i]))

/* getattr(obj, name) that raises no AttributeError when obj has none (making, formatting and dropping one costs
   about 2,000 instructions): 1 found (*result set), 0 not, -1 another error. */
static int optional_attr(PyObject *obj, PyObject *name, PyObject **result)
{
#if PY_VERSION_HEX >= 0x030D0000
    return PyObject_GetOptionalAttr(obj, name, result);
#else
    return _PyObject_LookupAttr(obj, name, result);
#endif
}

#include "_span.c"
#include "_wsgi_call.c"
#include "_client_call.c"
#include "_wsgi_method.c"
#include "_db_call.c"
#include "_guard.c"

static PyObject *configure(PyObject *self, PyObject *arg)
{
    if (!PyType_Check(arg)) {
        PyErr_SetString(PyExc_TypeError, "configure() takes the Span class");
        return NULL;
    }
    for (int i = 0; i < S_COUNT; i++) {
        PyObject *descr = PyObject_GetAttrString(arg, slot_names[i]);  /* on the class or a base (SpanCore) */
        if (descr == NULL)
            PyErr_Clear();
        if (descr == NULL || !Py_IS_TYPE(descr, &PyMemberDescr_Type)) {
            Py_XDECREF(descr);
            PyErr_Format(PyExc_TypeError, "Span has no slot %s", slot_names[i]);
            return NULL;
        }
        PyMemberDef *member = ((PyMemberDescrObject *)descr)->d_member;
        Py_DECREF(descr);
        if (member->type != T_OBJECT_EX) {
            PyErr_Format(PyExc_TypeError, "Span slot %s is not an object slot", slot_names[i]);
            return NULL;
        }
        offsets[i] = member->offset;
    }
    Py_INCREF(arg);
    Py_XSETREF(span_type, (PyTypeObject *)arg);
    Py_RETURN_NONE;
}

/* 1 when clean_attributes() would give `attrs` back unchanged, 0 when not, -1 on error. */
static int exportable_as_is(PyObject *attrs, Py_ssize_t max_attributes, Py_ssize_t max_length)
{
    if (!PyDict_CheckExact(attrs) || PyDict_GET_SIZE(attrs) > max_attributes)
        return 0;
    if (PyDict_GET_SIZE(attrs) == 0)
        return 1;
    int statement = PyDict_Contains(attrs, str_db_query_text);  /* a statement: summarized in Python */
    if (statement != 0)
        return statement < 0 ? -1 : 0;
    Py_ssize_t pos = 0;
    PyObject *key, *value;
    while (PyDict_Next(attrs, &pos, &key, &value)) {
        if (!PyUnicode_CheckExact(key) || PyUnicode_GET_LENGTH(key) > MAX_KEY_LENGTH)
            return 0;
        if (PyUnicode_CheckExact(value)) {
            if (PyUnicode_GET_LENGTH(value) > max_length || !PyUnicode_IS_ASCII(value))
                return 0;
        }
        else if (PyBool_Check(value)) {
        }
        else if (PyLong_CheckExact(value)) {
            int overflow = 0;
            long long v = PyLong_AsLongLongAndOverflow(value, &overflow);
            if (overflow)
                return 0;
            if (v == -1 && PyErr_Occurred())
                return -1;
        }
        else if (PyFloat_CheckExact(value)) {
            if (!isfinite(PyFloat_AS_DOUBLE(value)))
                return 0;
        }
        else
            return 0;
    }
    return 1;
}

static int is_kind(PyObject *kind)
{
    if (!PyUnicode_CheckExact(kind))
        return 0;
    for (int i = 0; i < 5; i++)
        if (kind == kinds[i] || PyUnicode_Compare(kind, kinds[i]) == 0)
            return 1;
    return 0;
}

/* "00".."ff": two hex digits a byte, written in one copy (hex_digits writes 16 to 32 of them per span) */
static char hex_pairs[512];

static void hex_pairs_init(void)
{
    static const char digits[] = "0123456789abcdef";
    for (int i = 0; i < 256; i++) {
        hex_pairs[2 * i] = digits[i >> 4];
        hex_pairs[2 * i + 1] = digits[i & 15];
    }
}

/* "%0{width}x" of `value` (width 16 or 32) written to `out`: 1, or 0 when it is not a non-negative int below
   2**(4*width) (no error set). */
static int hex_digits(PyObject *value, int width, char *out)
{
    unsigned char bytes[16];
    if (!PyLong_CheckExact(value))  /* (negative or too wide: refused below, the error cleared) */
        return 0;
    if (width == 16) {
        /* (PyLong_AsUnsignedLongLong goes through _PyLong_AsByteArray: the mask's digit loop is a third of it) */
        size_t bits = _PyLong_NumBits(value);
        if (bits == (size_t)-1 || bits > 64 || _PyLong_Sign(value) < 0) {
            PyErr_Clear();
            return 0;
        }
        unsigned long long v = PyLong_AsUnsignedLongLongMask(value);
        for (int i = 7; i >= 0; i--, v >>= 8)
            memcpy(out + 2 * i, hex_pairs + 2 * (v & 255), 2);
        return 1;
    }
#if PY_VERSION_HEX >= 0x030D0000
    if (_PyLong_AsByteArray((PyLongObject *)value, bytes, 16, 0, 0, 1) < 0) {
#else
    if (_PyLong_AsByteArray((PyLongObject *)value, bytes, 16, 0, 0) < 0) {
#endif
        PyErr_Clear();
        return 0;
    }
    for (int i = 0; i < width / 2; i++)
        memcpy(out + 2 * i, hex_pairs + 2 * bytes[i], 2);
    return 1;
}

/* hex_digits() as a str; NULL without an error set when the value is not one. */
static PyObject *hex_of(PyObject *value, int width)
{
    char text[32];
    if (!hex_digits(value, width, text))
        return NULL;
    PyObject *out = PyUnicode_New(width, 127);
    if (out != NULL)
        memcpy(PyUnicode_1BYTE_DATA(out), text, width);
    return out;
}

/* hex_of(trace_id, 32), remembered for the last trace id object: a batch holds a trace's spans side by side, and
   they share their root's id object, so most spans reuse the text (a 128-bit int's bytes cost 800 instructions).
   Called with the GIL held, and nothing here lets another thread run in between. */
static PyObject *last_trace_id = NULL, *last_trace_hex = NULL;

static PyObject *trace_hex_of(PyObject *trace_id)
{
    if (trace_id == last_trace_id && last_trace_hex != NULL) {
        Py_INCREF(last_trace_hex);
        return last_trace_hex;
    }
    PyObject *text = hex_of(trace_id, 32);
    if (text != NULL) {
        Py_INCREF(trace_id);
        Py_XSETREF(last_trace_id, trace_id);
        Py_INCREF(text);
        Py_XSETREF(last_trace_hex, text);
    }
    return text;
}

/* The record's wall-clock start (start + offset) and duration (end - start, 0 when not later): new references
   in *wall and *duration, -1 on error. In C arithmetic while the values fit, which they do (nanoseconds). */
static int times_of(PyObject *start, PyObject *end, PyObject *offset, PyObject **wall, PyObject **duration)
{
    int o1 = 0, o2 = 0, o3 = 0;
    long long s = PyLong_AsLongLongAndOverflow(start, &o1), e = PyLong_AsLongLongAndOverflow(end, &o2);
    long long off = PyLong_AsLongLongAndOverflow(offset, &o3);
    if (PyErr_Occurred())
        return -1;
    if (!o1 && !o2 && !o3 && s >= 0 && e >= 0 && s <= LLONG_MAX / 2 && e <= LLONG_MAX / 2 && off >= -(LLONG_MAX / 2) &&
        off <= LLONG_MAX / 2) {
        *wall = PyLong_FromLongLong(s + off);
        *duration = *wall == NULL ? NULL : PyLong_FromLongLong(e > s ? e - s : 0);
    }
    else {
        *wall = PyNumber_Add(start, offset);
        int later = *wall == NULL ? -1 : PyObject_RichCompareBool(end, start, Py_GT);
        *duration = later < 0 ? NULL : later ? PyNumber_Subtract(end, start) : PyLong_FromLong(0);
    }
    if (*duration == NULL) {
        Py_CLEAR(*wall);
        return -1;
    }
    return 0;
}

/* configure_shared(records module globals): where records._shared_attributes keeps its cache. */
static PyObject *configure_shared(PyObject *self, PyObject *globals)
{
    if (!PyDict_Check(globals)) {
        PyErr_SetString(PyExc_TypeError, "configure_shared() takes the records module's globals");
        return NULL;
    }
    PyObject *cls = PyDict_GetItemString(globals, "SharedAttributes");
    if (cls == NULL || !PyType_Check(cls)) {
        PyErr_SetString(PyExc_TypeError, "the records module has no SharedAttributes class");
        return NULL;
    }
    Py_INCREF(globals);
    Py_XSETREF(records_globals, globals);
    Py_INCREF(cls);
    Py_XSETREF(shared_type, (PyTypeObject *)cls);
    Py_RETURN_NONE;
}

/* What records._shared_attributes(name, attrs, max_attributes, max_length) finds in its cache, (name,
   SharedAttributes), for attributes that are not exportable as they are (a statement to summarize, a value to
   bound): a new reference; None when it would do more than look up (a miss, a name bypassing the cache or
   whose misses it counts, an unhashable value), which the Python code then does. */
static PyObject *shared_attributes(PyObject *name, PyObject *attrs, PyObject *max_attributes, PyObject *max_length)
{
    if (records_globals == NULL || !PyDict_CheckExact(attrs))
        Py_RETURN_NONE;
    PyObject *misses = PyDict_GetItemWithError(records_globals, str_misses);
    PyObject *count = misses == NULL || !PyDict_CheckExact(misses) ? NULL : PyDict_GetItemWithError(misses, name);
    if (PyErr_Occurred())
        return NULL;
    int counted = count == NULL ? 0 : PyObject_IsTrue(count);  /* misses in a row: the Python code counts */
    if (counted < 0)
        return NULL;
    if (misses == NULL || !PyDict_CheckExact(misses) || counted)
        Py_RETURN_NONE;
    /* the key records._shared_attributes makes: (name, max_count, limit, obfuscate, key1, value1, type1, ...) */
    PyObject *key = NULL, *found = NULL, *k, *v;
    PyObject *policy = PyDict_GetItemWithError(records_globals, str_sql_policy);
    PyObject *obfuscate = policy == NULL ? NULL : PyObject_GetAttr(policy, str_obfuscate);
    if (obfuscate == NULL)
        goto done;
    Py_ssize_t n = PyDict_GET_SIZE(attrs), pos = 0, i = 4;
    key = PyTuple_New(4 + 3 * n);
    if (key == NULL) {
        Py_DECREF(obfuscate);
        goto done;
    }
    PyObject *head[4] = {name, max_attributes, max_length, obfuscate};
    for (int h = 0; h < 4; h++) {
        Py_INCREF(head[h]);
        PyTuple_SET_ITEM(key, h, head[h]);
    }
    Py_DECREF(obfuscate);
    while (i < 4 + 3 * n && PyDict_Next(attrs, &pos, &k, &v)) {
        Py_INCREF(k);
        PyTuple_SET_ITEM(key, i, k);
        Py_INCREF(v);
        PyTuple_SET_ITEM(key, i + 1, v);
        Py_INCREF(Py_TYPE(v));
        PyTuple_SET_ITEM(key, i + 2, (PyObject *)Py_TYPE(v));
        i += 3;
    }
    if (i != 4 + 3 * n)  /* (the dict changed size: not a key to look up) */
        goto done;
    PyObject *prepared = PyDict_GetItemWithError(records_globals, str_prepared);
    if (prepared != NULL && PyDict_CheckExact(prepared)) {
        found = PyDict_GetItemWithError(prepared, key);
        if (found != NULL && PyTuple_CheckExact(found) && PyTuple_GET_SIZE(found) == 2 &&
            Py_TYPE(PyTuple_GET_ITEM(found, 1)) == shared_type)
            Py_INCREF(found);
        else
            found = NULL;
    }
done:
    Py_XDECREF(key);
    if (found != NULL)
        return found;
    if (PyErr_Occurred()) {
        if (!PyErr_ExceptionMatches(PyExc_TypeError))  /* (an unhashable value: the Python code says so) */
            return NULL;
        PyErr_Clear();
    }
    Py_RETURN_NONE;
}

/* In front of shared_attributes(): what it found, remembered by the identity of the name and of every attribute
   key and value (str, int, float, bool or None objects, held here, so an identical address is the identical
   value), with the limits and the obfuscation setting. A span repeating another's attributes with the very same
   objects (a statement's literal text, a small row count, the connection's cached attributes) finds its cleaned
   attributes without the key tuple, its hash and three dict lookups. The result is what the Python cache gives
   for the same values (the cleaning is a function of them); entries are replaced, never invalid. */
#define IDENTITY_SLOTS 256
#define IDENTITY_MAX_ITEMS 12
typedef struct {
    PyObject *found;  /* (name, SharedAttributes), or NULL: an empty slot */
    PyObject *name;
    Py_ssize_t count, max_attributes, max_length;
    int obfuscate;
    PyObject *items[2 * IDENTITY_MAX_ITEMS];
    PyObject *packed_attributes;  /* the msgpack map of found's attributes, once packed() wrote it (bytes), or NULL */
} IdentityEntry;
static IdentityEntry identity_cache[IDENTITY_SLOTS];

/* A value remembered by identity. Not a float zero: records' cache finds 0.0 and -0.0 as the same key (equal, same
   type and hash), so what it holds for one is what Python exports for the other; by identity, the other's own
   entry could outlive it there and give the other sign. */
static int identity_value(PyObject *v)
{
    return PyUnicode_CheckExact(v) || PyLong_CheckExact(v) || (PyFloat_CheckExact(v) && PyFloat_AS_DOUBLE(v) != 0.0) ||
           PyBool_Check(v) || v == Py_None;
}

/* The slot for these, and whether they can be remembered at all (-1: no; a value of another type). */
static Py_ssize_t identity_slot(PyObject *name, PyObject *attrs, Py_ssize_t max_attributes, Py_ssize_t max_length,
                                int obfuscate)
{
    Py_ssize_t n = PyDict_GET_SIZE(attrs);
    if (n > IDENTITY_MAX_ITEMS)
        return -1;
    size_t h = (size_t)name ^ ((size_t)n << 3) ^ ((size_t)max_attributes << 7) ^ ((size_t)max_length << 11) ^
               (size_t)obfuscate;
    Py_ssize_t pos = 0;
    PyObject *k, *v;
    while (PyDict_Next(attrs, &pos, &k, &v)) {
        if (!PyUnicode_CheckExact(k) || !identity_value(v))
            return -1;
        h = (h ^ (size_t)k) * 1000003u;
        h = (h ^ (size_t)v) * 1000003u;
    }
    return (Py_ssize_t)((h ^ (h >> 17)) % IDENTITY_SLOTS);
}

/* A new reference to the remembered (name, SharedAttributes), or NULL (no error) when not there. */
static PyObject *identity_get(Py_ssize_t slot, PyObject *name, PyObject *attrs, Py_ssize_t max_attributes,
                              Py_ssize_t max_length, int obfuscate)
{
    IdentityEntry *e = &identity_cache[slot];
    if (e->found == NULL || e->name != name || e->count != PyDict_GET_SIZE(attrs) ||
        e->max_attributes != max_attributes || e->max_length != max_length || e->obfuscate != obfuscate)
        return NULL;
    Py_ssize_t pos = 0, i = 0;
    PyObject *k, *v;
    while (PyDict_Next(attrs, &pos, &k, &v)) {
        if (e->items[i] != k || e->items[i + 1] != v)
            return NULL;
        i += 2;
    }
    Py_INCREF(e->found);
    return e->found;
}

static void identity_put(Py_ssize_t slot, PyObject *name, PyObject *attrs, Py_ssize_t max_attributes,
                         Py_ssize_t max_length, int obfuscate, PyObject *found)
{
    IdentityEntry *e = &identity_cache[slot], old = *e;
    e->found = NULL;  /* (the slot is empty while it is written) */
    Py_ssize_t pos = 0, i = 0;
    PyObject *k, *v;
    while (i < 2 * IDENTITY_MAX_ITEMS && PyDict_Next(attrs, &pos, &k, &v)) {
        Py_INCREF(k);
        Py_INCREF(v);
        e->items[i++] = k;
        e->items[i++] = v;
    }
    Py_INCREF(name);
    e->name = name;
    e->count = i / 2;
    e->max_attributes = max_attributes;
    e->max_length = max_length;
    e->obfuscate = obfuscate;
    Py_INCREF(found);
    e->found = found;
    e->packed_attributes = NULL;
    if (old.found != NULL) {  /* the entry it replaces, released last: its objects may be these */
        for (Py_ssize_t j = 0; j < 2 * old.count; j++)
            Py_DECREF(old.items[j]);
        Py_DECREF(old.name);
        Py_DECREF(old.found);
    }
    Py_XDECREF(old.packed_attributes);
}

/* SqlPolicy.obfuscate, read once a batch (span_batch_args resets it): -1 until then */
static int batch_obfuscate = -1;

/* SqlPolicy.obfuscate: 1, 0, or -1 with an error. */
static int obfuscating(void)
{
    PyObject *policy = records_globals == NULL ? NULL : PyDict_GetItemWithError(records_globals, str_sql_policy);
    if (policy == NULL)
        return PyErr_Occurred() ? -1 : 1;
    PyObject *value = PyObject_GetAttr(policy, str_obfuscate);
    int truth = value == NULL ? -1 : PyObject_IsTrue(value);
    Py_XDECREF(value);
    return truth;
}

/* What a span's record is made of, where it converts here as it is. */
typedef struct {
    PyObject *name, *attrs, *kind, *span_id, *parent_id, *start, *end, *trace_id, *root;
    PyObject *shared;  /* (name, SharedAttributes) from records' cache (a reference held), or NULL */
    IdentityEntry *remembered;  /* the identity cache's entry holding `shared`, or NULL */
} SpanParts;

/* 1 with *p filled when the span converts here (no error or events; attributes exportable as they are, or
   found cleaned in records' cache), 0 when Python must convert it, -1 on error. */
static int span_parts(PyObject *span, Py_ssize_t max_attributes, Py_ssize_t max_length, PyObject *max_attributes_obj,
                      PyObject *max_length_obj, SpanParts *p)
{
    if (Py_TYPE(span) != span_type)
        return 0;
    PyObject *name = SLOT(span, S_NAME), *attrs = SLOT(span, S_ATTRIBUTES), *kind = SLOT(span, S_KIND);
    PyObject *span_id = SLOT(span, S_SPAN_ID), *parent_id = SLOT(span, S_PARENT_ID);
    PyObject *start = SLOT(span, S_START), *end = SLOT(span, S_END), *status = SLOT(span, S_STATUS);
    PyObject *events = SLOT(span, S_EVENTS), *root = SLOT(span, S_ROOT);
    if (!name || !attrs || !kind || !span_id || !parent_id || !start || !end || !status || !events)
        return 0;
    if (root == NULL)
        root = span;  /* unlinked already: Span.__getattr__ answers `root` with the span itself */
    if (Py_TYPE(root) != span_type)
        return 0;
    PyObject *trace_id = SLOT(root, S_TRACE_ID);
    if (trace_id == NULL || !PyLong_CheckExact(start) || !PyLong_CheckExact(end))
        return 0;
    if (events != Py_None && !(PyList_CheckExact(events) && PyList_GET_SIZE(events) == 0))
        return 0;
    if (status != str_ok && (!PyUnicode_CheckExact(status) || PyUnicode_Compare(status, str_ok) != 0))
        return 0;
    if (!PyUnicode_CheckExact(name) || PyUnicode_GET_LENGTH(name) == 0 ||
        PyUnicode_GET_LENGTH(name) > MAX_NAME_LENGTH || !is_kind(kind))
        return 0;
    int plain = exportable_as_is(attrs, max_attributes, max_length);
    if (plain < 0)
        return -1;
    PyObject *shared = NULL;
    IdentityEntry *remembered = NULL;
    if (!plain) {
        if (batch_obfuscate < 0 && (batch_obfuscate = obfuscating()) < 0)
            return -1;
        int obfuscate = batch_obfuscate;
        Py_ssize_t slot = identity_slot(name, attrs, max_attributes, max_length, obfuscate);
        shared = slot < 0 ? NULL : identity_get(slot, name, attrs, max_attributes, max_length, obfuscate);
        if (shared == NULL) {
            shared = shared_attributes(name, attrs, max_attributes_obj, max_length_obj);
            if (shared == NULL)
                return -1;
            if (slot >= 0 && shared != Py_None)
                identity_put(slot, name, attrs, max_attributes, max_length, obfuscate, shared);
        }
        if (slot >= 0 && identity_cache[slot].found == shared)
            remembered = &identity_cache[slot];
        PyObject *shared_name = shared == Py_None ? NULL : PyTuple_GET_ITEM(shared, 0);
        if (shared_name == NULL || !PyUnicode_CheckExact(shared_name) || PyUnicode_GET_LENGTH(shared_name) == 0 ||
            PyUnicode_GET_LENGTH(shared_name) > MAX_NAME_LENGTH) {
            Py_DECREF(shared);
            return 0;
        }
        name = shared_name;
        attrs = PyTuple_GET_ITEM(shared, 1);
    }
    *p = (SpanParts){name, attrs, kind, span_id, parent_id, start, end, trace_id, root, shared, remembered};
    return 1;
}

/* Once its record is made: see records._unlink_root. */
static void unlink_root(PyObject *span, SpanParts *p)
{
    if (p->root == span && SLOT(span, S_ROOT) != NULL) {
        PyObject *self_ref = SLOT(span, S_ROOT);
        SLOT(span, S_ROOT) = NULL;
        Py_DECREF(self_ref);
    }
}

/* The span_fields() tuple of one span, Py_None when Python must convert it, NULL on error. */
static PyObject *span_fields(PyObject *span, PyObject *service, PyObject *offset, Py_ssize_t max_attributes,
                             Py_ssize_t max_length, PyObject *max_attributes_obj, PyObject *max_length_obj)
{
    SpanParts p;
    int found = span_parts(span, max_attributes, max_length, max_attributes_obj, max_length_obj, &p);
    if (found <= 0) {
        if (found < 0)
            return NULL;
        Py_RETURN_NONE;
    }
    PyObject *trace_hex = NULL, *span_hex = NULL, *parent_hex = NULL, *wall = NULL, *duration = NULL;
    PyObject *result = NULL;
    trace_hex = trace_hex_of(p.trace_id);
    span_hex = trace_hex ? hex_of(p.span_id, 16) : NULL;
    if (span_hex == NULL)
        goto special;
    int parent_true = PyObject_IsTrue(p.parent_id);
    if (parent_true < 0)
        goto error;
    if (parent_true) {
        parent_hex = hex_of(p.parent_id, 16);
        if (parent_hex == NULL)
            goto special;
    }
    else {
        parent_hex = Py_None;
        Py_INCREF(parent_hex);
    }
    if (times_of(p.start, p.end, offset, &wall, &duration) < 0)
        goto error;
    result = PyTuple_New(12);
    if (result == NULL)
        goto error;
    PyObject *items[12] = {trace_hex, span_hex, parent_hex, p.name, p.kind, service, wall, duration, str_ok, p.attrs,
                           no_events, p.trace_id};
    for (int i = 0; i < 12; i++) {
        if (i == 3 || i == 4 || i == 5 || i == 8 || i == 9 || i == 10 || i == 11)
            Py_INCREF(items[i]);  /* borrowed: the others are new references, handed over */
        PyTuple_SET_ITEM(result, i, items[i]);
    }
    /* No cycle can go through the record (its attributes hold only str, int, bool and float; its events list is
       empty for good): the cyclic GC need not visit it, and a flush's thousands of records waiting for the
       store otherwise make every young-generation collection longer. */
    PyObject_GC_UnTrack(result);
    Py_XDECREF(p.shared);
    unlink_root(span, &p);
    return result;

special:
    if (PyErr_Occurred())
        goto error;
    Py_XDECREF(trace_hex);
    Py_XDECREF(span_hex);
    Py_XDECREF(parent_hex);
    Py_XDECREF(p.shared);
    Py_RETURN_NONE;
error:
    Py_XDECREF(p.shared);
    Py_XDECREF(trace_hex);
    Py_XDECREF(span_hex);
    Py_XDECREF(parent_hex);
    Py_XDECREF(wall);
    Py_XDECREF(duration);
    return NULL;
}

/* The arguments fields() and packed() take: (spans, service, offset, max_attributes, max_length). 0, or -1. */
static int span_batch_args(PyObject *args, PyObject **spans, PyObject **service, PyObject **offset,
                           Py_ssize_t *max_attributes, Py_ssize_t *max_length)
{
    if (!PyArg_ParseTuple(args, "O!UO!nn", &PyList_Type, spans, service, &PyLong_Type, offset, max_attributes,
                          max_length))
        return -1;
    if (span_type == NULL) {
        PyErr_SetString(PyExc_RuntimeError, "configure() first");
        return -1;
    }
    batch_obfuscate = -1;
    return 0;
}

static PyObject *fields(PyObject *self, PyObject *args)
{
    PyObject *spans, *service, *offset;
    Py_ssize_t max_attributes, max_length;
    if (span_batch_args(args, &spans, &service, &offset, &max_attributes, &max_length) < 0)
        return NULL;
    Py_ssize_t count = PyList_GET_SIZE(spans);
    PyObject *out = PyList_New(count);
    PyObject *max_attributes_obj = PyLong_FromSsize_t(max_attributes), *max_length_obj = PyLong_FromSsize_t(max_length);
    if (out == NULL || max_attributes_obj == NULL || max_length_obj == NULL)
        goto error;
    for (Py_ssize_t i = 0; i < count; i++) {
        PyObject *item = span_fields(PyList_GET_ITEM(spans, i), service, offset, max_attributes, max_length,
                                     max_attributes_obj, max_length_obj);
        if (item == NULL)
            goto error;
        PyList_SET_ITEM(out, i, item);
    }
    Py_DECREF(max_attributes_obj);
    Py_DECREF(max_length_obj);
    return out;
error:
    Py_XDECREF(out);
    Py_XDECREF(max_attributes_obj);
    Py_XDECREF(max_length_obj);
    return NULL;
}

/* ------------------------------------------------------------------------------------------ JSON text */

/* What the store's compact encoder (jsontext.compact_encoder: json, no spaces, non-ASCII kept) writes for a
   dict of str keys and values str (ASCII), int64, bool or finite float, written here directly: json's C
   encoder costs ten times as much on a span's attributes (its per-call set-up, a list of chunks, a join). */
typedef struct {
    char *data;
    Py_ssize_t size, capacity;
    char local[1024];
} Buffer;

static int buffer_reserve(Buffer *b, Py_ssize_t more)
{
    if (b->size + more <= b->capacity)
        return 0;
    Py_ssize_t capacity = (b->size + more) * 2;
    char *data = b->data == b->local ? PyMem_Malloc(capacity) : PyMem_Realloc(b->data, capacity);
    if (data == NULL) {
        PyErr_NoMemory();
        return -1;
    }
    if (b->data == b->local)
        memcpy(data, b->local, b->size);
    b->data = data;
    b->capacity = capacity;
    return 0;
}

static int buffer_text(Buffer *b, const char *text, Py_ssize_t length)
{
    if (buffer_reserve(b, length) < 0)
        return -1;
    memcpy(b->data + b->size, text, length);
    b->size += length;
    return 0;
}

/* An ASCII str as a JSON string, escaped as json.encoder.c_encode_basestring does. */
static int buffer_string(Buffer *b, PyObject *text)
{
    Py_ssize_t length = PyUnicode_GET_LENGTH(text);
    const unsigned char *chars = PyUnicode_1BYTE_DATA(text);
    if (buffer_reserve(b, length * 6 + 2) < 0)
        return -1;
    char *out = b->data + b->size;
    *out++ = '"';
    for (Py_ssize_t i = 0; i < length; i++) {
        unsigned char c = chars[i];
        if (c >= ' ' && c != '"' && c != '\\') {
            *out++ = (char)c;
            continue;
        }
        *out++ = '\\';
        switch (c) {
        case '"': *out++ = '"'; break;
        case '\\': *out++ = '\\'; break;
        case '\n': *out++ = 'n'; break;
        case '\r': *out++ = 'r'; break;
        case '\t': *out++ = 't'; break;
        case '\b': *out++ = 'b'; break;
        case '\f': *out++ = 'f'; break;
        default:
            out += sprintf(out, "u%04x", c);
        }
    }
    *out++ = '"';
    b->size = out - b->data;
    return 0;
}

/* The JSON text of a plain attribute dict; Py_None (a new reference) when it is not one. */
static PyObject *plain_json_object(PyObject *attrs)
{
    Buffer b;
    b.data = b.local;
    b.size = 0;
    b.capacity = sizeof(b.local);
    PyObject *result = NULL;
    Py_ssize_t pos = 0;
    PyObject *key, *value;
    char number[32];
    if (buffer_text(&b, "{", 1) < 0)
        goto done;
    int first = 1;
    while (PyDict_Next(attrs, &pos, &key, &value)) {
        if (!PyUnicode_CheckExact(key) || !PyUnicode_IS_ASCII(key))
            goto not_plain;
        if (!first && buffer_text(&b, ",", 1) < 0)
            goto done;
        first = 0;
        if (buffer_string(&b, key) < 0 || buffer_text(&b, ":", 1) < 0)
            goto done;
        if (PyUnicode_CheckExact(value)) {
            if (!PyUnicode_IS_ASCII(value))
                goto not_plain;
            if (buffer_string(&b, value) < 0)
                goto done;
        }
        else if (value == Py_True) {
            if (buffer_text(&b, "true", 4) < 0)
                goto done;
        }
        else if (value == Py_False) {
            if (buffer_text(&b, "false", 5) < 0)
                goto done;
        }
        else if (PyLong_CheckExact(value)) {
            int overflow = 0;
            long long v = PyLong_AsLongLongAndOverflow(value, &overflow);
            if (overflow || (v == -1 && PyErr_Occurred())) {
                PyErr_Clear();
                goto not_plain;
            }
            int n = snprintf(number, sizeof(number), "%lld", v);
            if (buffer_text(&b, number, n) < 0)
                goto done;
        }
        else if (PyFloat_CheckExact(value) && isfinite(PyFloat_AS_DOUBLE(value))) {
            PyObject *repr = PyObject_Repr(value);  /* as json writes a float */
            if (repr == NULL)
                goto done;
            int ok = PyUnicode_IS_ASCII(repr) &&
                     buffer_text(&b, (const char *)PyUnicode_1BYTE_DATA(repr), PyUnicode_GET_LENGTH(repr)) == 0;
            Py_DECREF(repr);
            if (!ok)
                goto done;
        }
        else
            goto not_plain;
    }
    if (buffer_text(&b, "}", 1) < 0)
        goto done;
    result = PyUnicode_DecodeASCII(b.data, b.size, NULL);
    goto done;
not_plain:
    result = Py_None;
    Py_INCREF(result);
done:
    if (b.data != b.local)
        PyMem_Free(b.data);
    return result;
}

/* encode(value) through json's C encoder (`fast`, called as fast(value, 0) -> chunks), else `fallback`. */
static PyObject *json_text(PyObject *value, PyObject *fast, PyObject *fallback)
{
    PyObject *chunks = PyObject_CallFunction(fast, "On", value, (Py_ssize_t)0);
    if (chunks != NULL && PySequence_Check(chunks)) {
        Py_ssize_t n = PySequence_Size(chunks);
        PyObject *text = NULL;
        if (n == 1)
            text = PySequence_GetItem(chunks, 0);
        else if (n >= 0) {
            PyObject *empty = PyUnicode_New(0, 0);
            text = empty ? PyUnicode_Join(empty, chunks) : NULL;
            Py_XDECREF(empty);
        }
        Py_DECREF(chunks);
        if (text != NULL && PyUnicode_CheckExact(text))
            return text;
        Py_XDECREF(text);
    }
    else
        Py_XDECREF(chunks);
    PyErr_Clear();
    return PyObject_CallOneArg(fallback, value);
}

static PyObject *store_values(PyObject *self, PyObject *args)
{
    PyObject *rows, *fast, *encode, *attributes_json;
    if (!PyArg_ParseTuple(args, "O!OOO", &PyList_Type, &rows, &fast, &encode, &attributes_json))
        return NULL;
    Py_ssize_t count = PyList_GET_SIZE(rows);
    PyObject *out = PyList_New(count * 12);
    if (out == NULL)
        return NULL;
    for (Py_ssize_t i = 0; i < count; i++) {
        PyObject *f = PyList_GET_ITEM(rows, i);
        if (!PyTuple_CheckExact(f) || PyTuple_GET_SIZE(f) != 12 || !PyLong_Check(PyTuple_GET_ITEM(f, 11))) {
            PyErr_SetString(PyExc_TypeError, "store_values() takes span_fields() tuples");
            goto error;
        }
        unsigned long long low = PyLong_AsUnsignedLongLongMask(PyTuple_GET_ITEM(f, 11));
        if (low == (unsigned long long)-1 && PyErr_Occurred())
            goto error;
        PyObject *key = PyLong_FromLongLong((long long)low);  /* the low 64 bits, as a signed SQLite integer */
        if (key == NULL)
            goto error;
        PyList_SET_ITEM(out, i * 12, key);
        for (int k = 0; k < 9; k++) {
            PyObject *v = PyTuple_GET_ITEM(f, k);
            Py_INCREF(v);
            PyList_SET_ITEM(out, i * 12 + 1 + k, v);
        }
        PyObject *attrs = PyTuple_GET_ITEM(f, 9), *text;
        if (PyDict_CheckExact(attrs) && PyDict_GET_SIZE(attrs) == 0) {
            text = empty_json_object;
            Py_INCREF(text);
        }
        else if (PyDict_CheckExact(attrs)) {
            text = plain_json_object(attrs);
            if (text == Py_None) {
                Py_DECREF(text);
                text = json_text(attrs, fast, encode);
            }
        }
        else
            text = PyObject_CallOneArg(attributes_json, attrs);  /* shared attributes: their JSON kept */
        if (text == NULL)
            goto error;
        PyList_SET_ITEM(out, i * 12 + 10, text);
        PyObject *events = PyTuple_GET_ITEM(f, 10);
        int has_events = PyObject_IsTrue(events);
        if (has_events < 0)
            goto error;
        if (has_events)
            text = json_text(events, fast, encode);
        else {
            text = empty_json_array;
            Py_INCREF(text);
        }
        if (text == NULL)
            goto error;
        PyList_SET_ITEM(out, i * 12 + 11, text);
    }
    return out;
error:
    Py_DECREF(out);  /* (unset items are NULL: list_dealloc skips them) */
    return NULL;
}

/* ----------------------------------------------------------------------------------------------- msgpack */

/* What msgpack.packb([dict(zip(FIELDS, f)) for f in rows], use_bin_type=True) gives, for the collector's batch,
   written directly: rows whose values are all plain (str, None, int64, float, bool; attributes a dict of
   those; no events) here, the others through `fallback(row) -> bytes` (msgpack itself). */
/* The record's keys packed (a fixstr: 0xa0 | length, then the bytes). */
static const char *packed_field_names[11] = {"\xa8" "trace_id", "\xa7" "span_id", "\xa9" "parent_id", "\xa4" "name",
                                             "\xa4" "kind", "\xa7" "service", "\xa8" "start_ns", "\xab" "duration_ns",
                                             "\xa6" "status", "\xaa" "attributes", "\xa6" "events"};

typedef struct {
    char *data;
    Py_ssize_t size, capacity;
} Bytes;

static int bytes_reserve(Bytes *b, Py_ssize_t more)
{
    if (b->size + more <= b->capacity)
        return 0;
    Py_ssize_t capacity = (b->size + more) * 2 + 256;
    char *data = PyMem_Realloc(b->data, capacity);
    if (data == NULL) {
        PyErr_NoMemory();
        return -1;
    }
    b->data = data;
    b->capacity = capacity;
    return 0;
}

static void put_be(Bytes *b, unsigned char tag, unsigned long long v, int width)
{
    char *out = b->data + b->size;
    *out++ = (char)tag;
    for (int i = width - 1; i >= 0; i--)
        *out++ = (char)((v >> (8 * i)) & 0xff);
    b->size += 1 + width;
}

static int pack_int(Bytes *b, long long d)
{
    if (bytes_reserve(b, 9) < 0)
        return -1;
    if (d < -(1LL << 5)) {
        if (d < -(1LL << 15))
            put_be(b, d < -(1LL << 31) ? 0xd3 : 0xd2, (unsigned long long)d, d < -(1LL << 31) ? 8 : 4);
        else
            put_be(b, d < -(1LL << 7) ? 0xd1 : 0xd0, (unsigned long long)d, d < -(1LL << 7) ? 2 : 1);
    }
    else if (d < (1LL << 7))
        b->data[b->size++] = (char)(d & 0xff);
    else if (d < (1LL << 16))
        put_be(b, d < (1LL << 8) ? 0xcc : 0xcd, (unsigned long long)d, d < (1LL << 8) ? 1 : 2);
    else
        put_be(b, d < (1LL << 32) ? 0xce : 0xcf, (unsigned long long)d, d < (1LL << 32) ? 4 : 8);
    return 0;
}

static int pack_header(Bytes *b, Py_ssize_t n, unsigned char fix, unsigned char tag16, unsigned char tag32)
{
    if (bytes_reserve(b, 5) < 0)
        return -1;
    if (n < 16)
        b->data[b->size++] = (char)(fix | n);
    else if (n < 65536)
        put_be(b, tag16, (unsigned long long)n, 2);
    else
        put_be(b, tag32, (unsigned long long)n, 4);
    return 0;
}

static int pack_text(Bytes *b, const char *text, Py_ssize_t n)
{
    if (bytes_reserve(b, n + 5) < 0)
        return -1;
    if (n < 32)
        b->data[b->size++] = (char)(0xa0 | n);
    else if (n < 256)
        put_be(b, 0xd9, (unsigned long long)n, 1);
    else if (n < 65536)
        put_be(b, 0xda, (unsigned long long)n, 2);
    else
        put_be(b, 0xdb, (unsigned long long)n, 4);
    memcpy(b->data + b->size, text, n);
    b->size += n;
    return 0;
}

/* 1 packed, 0 not a plain value (nothing written), -1 error. */
static int pack_plain(Bytes *b, PyObject *v)
{
    if (v == Py_None || v == Py_True || v == Py_False) {
        if (bytes_reserve(b, 1) < 0)
            return -1;
        b->data[b->size++] = (char)(v == Py_None ? 0xc0 : v == Py_True ? 0xc3 : 0xc2);
        return 1;
    }
    if (PyUnicode_CheckExact(v)) {
        Py_ssize_t n;
        /* (compact ASCII, nearly every key and value: the characters are the UTF-8, no call needed) */
        const char *text = PyUnicode_IS_COMPACT_ASCII(v) ? (n = PyUnicode_GET_LENGTH(v), (const char *)PyUnicode_DATA(v))
                                                          : PyUnicode_AsUTF8AndSize(v, &n);
        if (text == NULL) {  /* lone surrogates: msgpack refuses them too, in the fallback */
            PyErr_Clear();
            return 0;
        }
        return pack_text(b, text, n) < 0 ? -1 : 1;
    }
    if (PyLong_CheckExact(v)) {
        int overflow = 0;
        long long d = PyLong_AsLongLongAndOverflow(v, &overflow);
        if (overflow || (d == -1 && PyErr_Occurred())) {
            PyErr_Clear();
            return 0;
        }
        return pack_int(b, d) < 0 ? -1 : 1;
    }
    if (PyFloat_CheckExact(v)) {
        union { double d; unsigned long long u; } bits;
        bits.d = PyFloat_AS_DOUBLE(v);
        if (bytes_reserve(b, 9) < 0)
            return -1;
        put_be(b, 0xcb, bits.u, 8);
        return 1;
    }
    return 0;
}

/* 1 packed, 0 not plain (the buffer is back where it was), -1 error. */
static int pack_row(Bytes *b, PyObject *f)
{
    Py_ssize_t mark = b->size;
    if (!PyTuple_CheckExact(f) || PyTuple_GET_SIZE(f) != 12)
        return 0;
    PyObject *attrs = PyTuple_GET_ITEM(f, 9), *events = PyTuple_GET_ITEM(f, 10);
    if (!record_attributes(attrs) || !PyList_CheckExact(events) || PyList_GET_SIZE(events) != 0)
        return 0;
    if (pack_header(b, 11, 0x80, 0xde, 0xdf) < 0)
        return -1;
    for (int i = 0; i < 11; i++) {
        int r;
        const char *packed = packed_field_names[i];
        Py_ssize_t packed_size = 1 + (packed[0] & 0x1f);
        if (bytes_reserve(b, packed_size) < 0)
            return -1;
        memcpy(b->data + b->size, packed, packed_size);
        b->size += packed_size;
        if (i == 9) {
            if (pack_header(b, PyDict_GET_SIZE(attrs), 0x80, 0xde, 0xdf) < 0)
                return -1;
            Py_ssize_t pos = 0;
            PyObject *key, *value;
            while (PyDict_Next(attrs, &pos, &key, &value)) {
                if (!PyUnicode_CheckExact(key))
                    goto not_plain;
                if ((r = pack_plain(b, key)) <= 0 || (r = pack_plain(b, value)) <= 0) {
                    if (r < 0)
                        return -1;
                    goto not_plain;
                }
            }
            continue;
        }
        if (i == 10) {
            if (pack_header(b, 0, 0x90, 0xdc, 0xdd) < 0)
                return -1;
            continue;
        }
        if ((r = pack_plain(b, PyTuple_GET_ITEM(f, i))) <= 0) {
            if (r < 0)
                return -1;
            goto not_plain;
        }
    }
    return 1;
not_plain:
    b->size = mark;
    return 0;
}

/* The bytes `fallback(row)` gives, appended: for the rows the writers here leave to Python. */
static int append_fallback(Bytes *b, PyObject *fallback, PyObject *row, const char *caller)
{
    PyObject *written = PyObject_CallOneArg(fallback, row);
    if (written == NULL)
        return -1;
    if (!PyBytes_Check(written)) {
        Py_DECREF(written);
        PyErr_Format(PyExc_TypeError, "%s(): the fallback must return bytes", caller);
        return -1;
    }
    Py_ssize_t n = PyBytes_GET_SIZE(written);
    if (bytes_reserve(b, n) < 0) {
        Py_DECREF(written);
        return -1;
    }
    memcpy(b->data + b->size, PyBytes_AS_STRING(written), n);
    b->size += n;
    Py_DECREF(written);
    return 0;
}

typedef int (*RowWriter)(Bytes *b, PyObject *row);  /* 1 written, 0 left to the fallback, -1 error */

/* `write_row` of each of the rows (a list), `fallback(row) -> bytes` for those it leaves, after a msgpack
   array header when `array_header`: the body both pack_records and pb_spans give. */
static PyObject *write_rows(PyObject *args, RowWriter write_row, Py_ssize_t row_size, int array_header,
                            const char *caller)
{
    PyObject *rows, *fallback;
    if (!PyArg_ParseTuple(args, "O!O", &PyList_Type, &rows, &fallback))
        return NULL;
    Bytes b = {NULL, 0, 0};
    Py_ssize_t count = PyList_GET_SIZE(rows);
    PyObject *result = NULL;
    if (bytes_reserve(&b, count * row_size + 16) < 0 ||
        (array_header && pack_header(&b, count, 0x90, 0xdc, 0xdd) < 0))
        goto done;
    for (Py_ssize_t i = 0; i < count; i++) {
        PyObject *f = PyList_GET_ITEM(rows, i);
        int r = write_row(&b, f);
        if (r < 0)
            goto done;
        if (r == 0 && append_fallback(&b, fallback, f, caller) < 0)
            goto done;
    }
    result = PyBytes_FromStringAndSize(b.data, b.size);
done:
    PyMem_Free(b.data);
    return result;
}

static PyObject *pack_records(PyObject *self, PyObject *args)
{
    return write_rows(args, pack_row, 320, 1, "pack_records");
}

/* Writes, into b (emptied first), the msgpack map pack_row writes for the span's span_fields() tuple, straight from
   the span: no tuple, hex str or int objects made to be read back at once. 1 written, 0 when Python must convert
   the span (as span_fields() would leave it, or a value packed differently: a time outside int64), -1 error. */
static int write_packed(Bytes *b, PyObject *span, PyObject *service, long long offset, Py_ssize_t max_attributes,
                        Py_ssize_t max_length, PyObject *max_attributes_obj, PyObject *max_length_obj)
{
    SpanParts p;
    int found = span_parts(span, max_attributes, max_length, max_attributes_obj, max_length_obj, &p);
    if (found <= 0)
        return found;
    int r = 0;
    char hex[32];
    int o1 = 0, o2 = 0;
    long long start = PyLong_AsLongLongAndOverflow(p.start, &o1), end = PyLong_AsLongLongAndOverflow(p.end, &o2);
    if (PyErr_Occurred()) {
        r = -1;
        goto done;
    }
    if (o1 || o2 || start < 0 || end < 0 || start > LLONG_MAX / 2 || end > LLONG_MAX / 2)
        goto done;  /* (times_of's other branch, in Python) */
    int parent = PyObject_IsTrue(p.parent_id);
    if (parent < 0) {
        r = -1;
        goto done;
    }
    b->size = 0;
    PyObject *trace_hex = trace_hex_of(p.trace_id);
    if (trace_hex == NULL) {
        r = PyErr_Occurred() ? -1 : 0;
        goto done;
    }
    /* every field but the attributes: keys and values of known shapes */
    if (bytes_reserve(b, 160) < 0) {
        Py_DECREF(trace_hex);
        r = -1;
        goto done;
    }
    b->data[b->size++] = (char)0x8b;  /* a map of the 11 fields */
#define PUT_KEY(i) do { const char *k_ = packed_field_names[i]; Py_ssize_t n_ = 1 + (k_[0] & 0x1f); \
                        memcpy(b->data + b->size, k_, n_); b->size += n_; } while (0)
    PUT_KEY(0);
    put_be(b, 0xd9, 32, 1);
    memcpy(b->data + b->size, PyUnicode_1BYTE_DATA(trace_hex), 32);
    b->size += 32;
    Py_DECREF(trace_hex);
    PUT_KEY(1);
    if (!hex_digits(p.span_id, 16, hex))
        goto done;
    b->data[b->size++] = (char)(0xa0 | 16);
    memcpy(b->data + b->size, hex, 16);
    b->size += 16;
    PUT_KEY(2);
    if (parent) {
        if (!hex_digits(p.parent_id, 16, hex))
            goto done;
        b->data[b->size++] = (char)(0xa0 | 16);
        memcpy(b->data + b->size, hex, 16);
        b->size += 16;
    }
    else
        b->data[b->size++] = (char)0xc0;
    PyObject *texts[3] = {p.name, p.kind, service};
    for (int i = 0; i < 3; i++) {
        if (bytes_reserve(b, 12) < 0) {
            r = -1;
            goto done;
        }
        PUT_KEY(3 + i);
        if ((r = pack_plain(b, texts[i])) <= 0)
            goto done;
    }
    r = 0;
    /* what follows up to the attributes' map header: keys 9 + 12 + 7 + 11 bytes, two ints up to 9 each, "ok" 3 */
    if (bytes_reserve(b, 64) < 0) {
        r = -1;
        goto done;
    }
    PUT_KEY(6);
    pack_int(b, start + offset);
    PUT_KEY(7);
    pack_int(b, end > start ? end - start : 0);
    PUT_KEY(8);
    memcpy(b->data + b->size, "\xa2" "ok", 3);
    b->size += 3;
    PUT_KEY(9);
    /* cleaned attributes remembered by identity (a statement's, the same on every request): packed once */
    IdentityEntry *e = p.remembered != NULL && p.remembered->found == p.shared ? p.remembered : NULL;
    if (e != NULL && e->packed_attributes != NULL) {
        Py_ssize_t n = PyBytes_GET_SIZE(e->packed_attributes);
        if (bytes_reserve(b, n) < 0) {
            r = -1;
            goto done;
        }
        memcpy(b->data + b->size, PyBytes_AS_STRING(e->packed_attributes), n);
        b->size += n;
    }
    else {
        Py_ssize_t mark = b->size;
        if (pack_header(b, PyDict_GET_SIZE(p.attrs), 0x80, 0xde, 0xdf) < 0) {
            r = -1;
            goto done;
        }
        Py_ssize_t pos = 0;
        PyObject *key, *value;
        while (PyDict_Next(p.attrs, &pos, &key, &value)) {
            if (!PyUnicode_CheckExact(key) || (r = pack_plain(b, key)) <= 0 || (r = pack_plain(b, value)) <= 0)
                goto done;
        }
        if (e != NULL && (e->packed_attributes = PyBytes_FromStringAndSize(b->data + mark, b->size - mark)) == NULL) {
            r = -1;
            goto done;
        }
    }
    if (bytes_reserve(b, 8) < 0) {
        r = -1;
        goto done;
    }
    PUT_KEY(10);
    b->data[b->size++] = (char)0x90;
#undef PUT_KEY
    r = 1;
done:
    if (r == 1)
        unlink_root(span, &p);
    Py_XDECREF(p.shared);
    return r;
}

/* packed(spans, service, offset, max_attributes, max_length): per span, the msgpack bytes of its record (what
   msgpack.packb(record_of_fields(span_fields(span, ...))) gives), or None where Python must convert it. */
static PyObject *packed(PyObject *self, PyObject *args)
{
    PyObject *spans, *service, *offset_obj;
    Py_ssize_t max_attributes, max_length;
    if (span_batch_args(args, &spans, &service, &offset_obj, &max_attributes, &max_length) < 0)
        return NULL;
    int overflow = 0;
    long long offset = PyLong_AsLongLongAndOverflow(offset_obj, &overflow);
    if (offset == -1 && PyErr_Occurred())
        return NULL;
    int offset_fits = !overflow && offset >= -(LLONG_MAX / 2) && offset <= LLONG_MAX / 2;
    Py_ssize_t count = PyList_GET_SIZE(spans);
    Bytes b = {NULL, 0, 0};
    PyObject *out = PyList_New(count);
    PyObject *max_attributes_obj = PyLong_FromSsize_t(max_attributes), *max_length_obj = PyLong_FromSsize_t(max_length);
    if (out == NULL || max_attributes_obj == NULL || max_length_obj == NULL || bytes_reserve(&b, 512) < 0)
        goto error;
    for (Py_ssize_t i = 0; i < count; i++) {
        int r = offset_fits ? write_packed(&b, PyList_GET_ITEM(spans, i), service, offset, max_attributes, max_length,
                                           max_attributes_obj, max_length_obj)
                            : 0;
        if (r < 0)
            goto error;
        PyObject *item = r ? PyBytes_FromStringAndSize(b.data, b.size) : (Py_INCREF(Py_None), Py_None);
        if (item == NULL)
            goto error;
        PyList_SET_ITEM(out, i, item);
    }
    PyMem_Free(b.data);
    Py_DECREF(max_attributes_obj);
    Py_DECREF(max_length_obj);
    return out;
error:
    PyMem_Free(b.data);
    Py_XDECREF(out);
    Py_XDECREF(max_attributes_obj);
    Py_XDECREF(max_length_obj);
    return NULL;
}

/* ------------------------------------------------------------------------------------------ protobuf */

/* What otlp._pb_span() gives for a span_fields() tuple's record, framed as a ScopeSpans' `spans` field
   (0x12, length, Span), written directly: rows with ids in hex, a name, a known or absent kind, times in
   0..2^62, status not "error", no events, and attributes (a dict or nothing) of str keys and values None
   (left out), str, bool, int64 or float; the other rows through `fallback(row) -> bytes`. */
static Py_ssize_t varint_size(unsigned long long v)
{
    Py_ssize_t n = 1;
    while (v >= 0x80) {
        v >>= 7;
        n++;
    }
    return n;
}

static void put_varint(Bytes *b, unsigned long long v)
{
    while (v >= 0x80) {
        b->data[b->size++] = (char)((v & 0x7f) | 0x80);
        v >>= 7;
    }
    b->data[b->size++] = (char)v;
}

static void put_le(Bytes *b, unsigned long long v, int width)
{
    for (int i = 0; i < width; i++)
        b->data[b->size++] = (char)((v >> (8 * i)) & 0xff);
}

static int hex_digit(int c)
{
    if (c >= '0' && c <= '9')
        return c - '0';
    if (c >= 'a' && c <= 'f')
        return c - 'a' + 10;
    if (c >= 'A' && c <= 'F')
        return c - 'A' + 10;
    return -1;
}

/* An id's hex text (exactly 2 * n hex digits) as its n bytes after `tag`: 1 written, 0 not such an id. */
static int put_id(Bytes *b, const char *tag, PyObject *text, Py_ssize_t n)
{
    if (!PyUnicode_CheckExact(text) || !PyUnicode_IS_ASCII(text) || PyUnicode_GET_LENGTH(text) != 2 * n)
        return 0;
    const unsigned char *hex = PyUnicode_1BYTE_DATA(text);
    Py_ssize_t mark = b->size;
    b->data[b->size++] = tag[0];
    b->data[b->size++] = tag[1];
    for (Py_ssize_t i = 0; i < n; i++) {
        int high = hex_digit(hex[2 * i]), low = hex_digit(hex[2 * i + 1]);
        if (high < 0 || low < 0) {
            b->size = mark;
            return 0;
        }
        b->data[b->size++] = (char)(high * 16 + low);
    }
    return 1;
}

/* A length-delimited UTF-8 field; 1 written, 0 not encodable as is (lone surrogates), -1 error. */
static int put_text_field(Bytes *b, unsigned char tag, PyObject *text)
{
    Py_ssize_t n;
    const char *utf8 = PyUnicode_AsUTF8AndSize(text, &n);
    if (utf8 == NULL) {
        PyErr_Clear();
        return 0;
    }
    if (bytes_reserve(b, n + 11) < 0)
        return -1;
    b->data[b->size++] = (char)tag;
    put_varint(b, (unsigned long long)n);
    memcpy(b->data + b->size, utf8, n);
    b->size += n;
    return 1;
}

/* One attribute as a KeyValue in the span's field 9; 1 written (or None: nothing), 0 not plain, -1 error. */
static int put_attribute(Bytes *b, PyObject *key, PyObject *value)
{
    if (value == Py_None)
        return 1;
    Py_ssize_t key_n, text_n = 0;
    const char *key_utf8 = PyUnicode_AsUTF8AndSize(key, &key_n), *text = NULL;
    unsigned long long number = 0;
    Py_ssize_t any_size;  /* the AnyValue's size */
    if (key_utf8 == NULL) {
        PyErr_Clear();
        return 0;
    }
    if (PyUnicode_CheckExact(value)) {
        if ((text = PyUnicode_AsUTF8AndSize(value, &text_n)) == NULL) {
            PyErr_Clear();
            return 0;
        }
        any_size = 1 + varint_size((unsigned long long)text_n) + text_n;
    }
    else if (value == Py_True || value == Py_False)
        any_size = 2;
    else if (PyLong_CheckExact(value)) {
        int overflow = 0;
        long long d = PyLong_AsLongLongAndOverflow(value, &overflow);
        if (overflow || (d == -1 && PyErr_Occurred())) {
            PyErr_Clear();
            return 0;
        }
        number = (unsigned long long)d;
        any_size = 1 + varint_size(number);
    }
    else if (PyFloat_CheckExact(value)) {
        union { double d; unsigned long long u; } bits;
        bits.d = PyFloat_AS_DOUBLE(value);
        number = bits.u;
        any_size = 9;
    }
    else
        return 0;
    Py_ssize_t kv_size = 1 + varint_size((unsigned long long)key_n) + key_n
                         + 1 + varint_size((unsigned long long)any_size) + any_size;
    if (bytes_reserve(b, kv_size + 11) < 0)
        return -1;
    b->data[b->size++] = 0x4a;
    put_varint(b, (unsigned long long)kv_size);
    b->data[b->size++] = 0x0a;
    put_varint(b, (unsigned long long)key_n);
    memcpy(b->data + b->size, key_utf8, key_n);
    b->size += key_n;
    b->data[b->size++] = 0x12;
    put_varint(b, (unsigned long long)any_size);
    if (text != NULL) {
        b->data[b->size++] = 0x0a;
        put_varint(b, (unsigned long long)text_n);
        memcpy(b->data + b->size, text, text_n);
        b->size += text_n;
    }
    else if (value == Py_True || value == Py_False) {
        b->data[b->size++] = 0x10;
        b->data[b->size++] = value == Py_True ? 1 : 0;
    }
    else if (PyLong_CheckExact(value)) {
        b->data[b->size++] = 0x18;
        put_varint(b, number);
    }
    else {
        b->data[b->size++] = 0x21;
        put_le(b, number, 8);
    }
    return 1;
}

/* A non-negative int below 2^62 (so that start + duration cannot overflow); -1 when not one. */
static long long small_time(PyObject *v)
{
    if (!PyLong_CheckExact(v))
        return -1;
    int overflow = 0;
    long long d = PyLong_AsLongLongAndOverflow(v, &overflow);
    if (overflow || d < 0 || d >= (1LL << 62)) {
        PyErr_Clear();
        return -1;
    }
    return d;
}

#define SPAN_LENGTH_ROOM 5  /* varint bytes kept for a span's length (spans under 32 GiB) */

/* 1 written, 0 not plain (the buffer is back where it was), -1 error. */
static int pb_span_row(Bytes *b, PyObject *f)
{
    static const char *kind_names[5] = {"internal", "server", "client", "producer", "consumer"};
    Py_ssize_t mark = b->size;
    int r;
    if (!PyTuple_CheckExact(f) || PyTuple_GET_SIZE(f) != 12)
        return 0;
    PyObject *parent = PyTuple_GET_ITEM(f, 2), *name = PyTuple_GET_ITEM(f, 3), *kind = PyTuple_GET_ITEM(f, 4);
    PyObject *status = PyTuple_GET_ITEM(f, 8), *attrs = PyTuple_GET_ITEM(f, 9), *events = PyTuple_GET_ITEM(f, 10);
    long long start = small_time(PyTuple_GET_ITEM(f, 6));
    PyObject *duration_obj = PyTuple_GET_ITEM(f, 7);
    long long duration = duration_obj == Py_None ? 0 : small_time(duration_obj);
    if (start < 0 || duration < 0 || !PyUnicode_CheckExact(name))
        return 0;
    if (!(events == Py_None || (PyList_CheckExact(events) && PyList_GET_SIZE(events) == 0)))
        return 0;
    if (status != Py_None && (!PyUnicode_CheckExact(status) || PyUnicode_CompareWithASCIIString(status, "error") == 0))
        return 0;
    if (!(attrs == Py_None || record_attributes(attrs)))
        return 0;
    int kind_number = 1;
    if (PyUnicode_CheckExact(kind)) {
        for (int i = 0; i < 5; i++)
            if (PyUnicode_CompareWithASCIIString(kind, kind_names[i]) == 0)
                kind_number = i + 1;
    }
    else if (kind != Py_None)
        return 0;
    if (bytes_reserve(b, 1 + SPAN_LENGTH_ROOM + 18 + 10 + 10) < 0)
        return -1;
    b->size += 1 + SPAN_LENGTH_ROOM;
    Py_ssize_t content = b->size;
    if (!put_id(b, "\x0a\x10", PyTuple_GET_ITEM(f, 0), 16) || !put_id(b, "\x12\x08", PyTuple_GET_ITEM(f, 1), 8))
        goto not_plain;
    if (parent != Py_None && !(PyUnicode_CheckExact(parent) && PyUnicode_GET_LENGTH(parent) == 0)
        && !put_id(b, "\x22\x08", parent, 8))
        goto not_plain;
    if ((r = put_text_field(b, 0x2a, name)) <= 0) {
        if (r < 0)
            return -1;
        goto not_plain;
    }
    if (bytes_reserve(b, 2 + 18) < 0)
        return -1;
    b->data[b->size++] = 0x30;
    b->data[b->size++] = (char)kind_number;
    b->data[b->size++] = 0x39;
    put_le(b, (unsigned long long)start, 8);
    b->data[b->size++] = 0x41;
    put_le(b, (unsigned long long)(start + duration), 8);
    if (attrs != Py_None) {
        Py_ssize_t pos = 0;
        PyObject *key, *value;
        while (PyDict_Next(attrs, &pos, &key, &value)) {
            if (!PyUnicode_CheckExact(key))
                goto not_plain;
            if ((r = put_attribute(b, key, value)) <= 0) {
                if (r < 0)
                    return -1;
                goto not_plain;
            }
        }
    }
    if (bytes_reserve(b, 6) < 0)
        return -1;
    b->data[b->size++] = (char)0x85;
    b->data[b->size++] = 0x01;
    put_le(b, 1, 4);  /* flags: sampled */
    /* the length goes before the span: move the span back over the room left that the length does not use */
    Py_ssize_t length = b->size - content;
    Py_ssize_t room = varint_size((unsigned long long)length);
    if (room > SPAN_LENGTH_ROOM) {
        PyErr_SetString(PyExc_OverflowError, "pb_spans(): a span over 32 GiB");
        return -1;
    }
    b->size = mark;
    b->data[b->size++] = 0x12;
    put_varint(b, (unsigned long long)length);
    memmove(b->data + b->size, b->data + content, length);
    b->size += length;
    return 1;
not_plain:
    b->size = mark;
    return 0;
}

static PyObject *pb_spans(PyObject *self, PyObject *args)
{
    return write_rows(args, pb_span_row, 400, 0, "pb_spans");
}

static PyMethodDef methods[] = {
    {"configure", configure, METH_O, "configure(Span): where the span class keeps its slots."},
    {"fields", fields, METH_VARARGS,
     "fields(spans, service, offset, max_attributes, max_length) -> [span_fields() tuple or None per span]"},
    {"configure_shared", configure_shared, METH_O,
     "configure_shared(records module globals): fields() then looks up records._shared_attributes' cache"},
    {"store_values", store_values, METH_VARARGS,
     "store_values(rows, fast_encoder, encode, attributes_json) -> the flat list of the rows' SQLite values"},
    {"packed", packed, METH_VARARGS,
     "packed(spans, service, offset, max_attributes, max_length) -> [msgpack bytes of the span's record or None]"},
    {"pack_records", pack_records, METH_VARARGS,
     "pack_records(rows, fallback) -> msgpack bytes of the rows' records, as msgpack.packb would give them"},
    {"configure_span", configure_span, METH_VARARGS,
     "configure_span(Span, current_span_var, bits, clock, Sink, span module globals, _UNSET, _handover_failed)"},
    {"track_again", track_again, METH_O,
     "track_again(taken): spans untracked while queued (and their lists), in lists and tuples, tracked again"},
    {"let_go", let_go, METH_O, "let_go(taken): track_again(taken), then the list emptied, in one call"},
    {"configure_sampling", configure_sampling, METH_VARARGS,
     "configure_sampling(threshold or None for always, rate limiter or None, never)"},
    {"configure_wsgi", configure_wsgi, METH_VARARGS,
     "configure_wsgi(_wsgi module globals, ENVIRON_KEY, KNOWN_METHODS, the suppressed ContextVar, statsd module)"},
    {"wsgi_call", (PyCFunction)(void (*)(void))wsgi_call, METH_FASTCALL,
     "wsgi_call(app, environ, start_response): autoinstr.integrations._wsgi.call_traced"},
    {"view_run", (PyCFunction)(void (*)(void))view_run, METH_FASTCALL | METH_KEYWORDS,
     "view_run(name, answered, parent, call, *args, **kwargs): autoinstr.integrations._wsgi.run_view"},
    {"configure_http", configure_http, METH_VARARGS,
     "configure_http(_http module globals, _active, the suppressed ContextVar, statsd module, KNOWN_METHODS, "
     "Propagators, _TRACEPARENT_ONLY, Wire)"},
    {"method_hook", method_hook, METH_VARARGS, "method_hook(real, describe, settle, prepare, error_status)"},
    {"wire_hook", wire_hook, METH_O, "wire_hook(real HTTPConnection.endheaders)"},
    {"configure_db", configure_db, METH_VARARGS, "configure_db(_dbapi module globals, the suppressed ContextVar, statsd)"},
    {"db_run", (PyCFunction)(void (*)(void))db_run, METH_FASTCALL | METH_KEYWORDS,
     "db_run(attrs, name, statement, cursor, call, *args, **kwargs): autoinstr.integrations._dbapi.run"},
    {"configure_python_free", configure_python_free, METH_VARARGS,
     "configure_python_free(Cursor.execute, Connection type, adapters, marker): see _db_call.c"},
    {"python_free_call", python_free_call, METH_VARARGS,
     "python_free_call(connection, base, args): whether base(cursor, *args) runs without a current span"},
    {"wsgi_method_hook", wsgi_method_hook, METH_VARARGS,
     "wsgi_method_hook(python, original): a framework's WSGI __call__ (see _wsgi_method.c)"},
    {"flask_dispatch_hook", flask_dispatch_hook, METH_VARARGS,
     "flask_dispatch_hook(python, original, rules, request_var, answered): Flask.dispatch_request (_wsgi_method.c)"},
    {"marking_hook", marking_hook, METH_VARARGS,
     "marking_hook(real, owner, name, marker): a connection method registering a callback, marking it (_db_call.c)"},
    {"connect_hook", connect_hook, METH_VARARGS,
     "connect_hook(python, connects, factory): sqlite3.connect's wrapper for its common calls (see _db_call.c)"},
    {"cursor_hook", cursor_hook, METH_VARARGS,
     "cursor_hook(python, owner, name, system, rows): a traced cursor class's method, run() without super()"},
    {"guard", guard, METH_VARARGS,
     "guard(wrapper, integration, failed, disabled, disable): an integration's wrapt wrapper, guarded (_wrapping)"},
    {"connection_shortcut_hook", connection_shortcut_hook, METH_VARARGS,
     "connection_shortcut_hook(python, name): a traced connection's execute & co., self.cursor().<name>(...)"},
    {"cursor_factory_hook", cursor_factory_hook, METH_VARARGS,
     "cursor_factory_hook(python, owner, name, factory): a traced connection's cursor(), super().cursor(factory)"},
    {"pb_spans", pb_spans, METH_VARARGS,
     "pb_spans(rows, fallback) -> the rows' OTLP Span messages, each framed as a ScopeSpans.spans field"},
    {NULL, NULL, 0, NULL}};

static struct PyModuleDef module = {PyModuleDef_HEAD_INIT, "autoinstr._speedups", NULL, -1, methods};

PyMODINIT_FUNC PyInit__speedups(void)
{
    static const char *kind_names[5] = {"internal", "server", "client", "producer", "consumer"};
    hex_pairs_init();
    for (int i = 0; i < 5; i++)
        if ((kinds[i] = PyUnicode_InternFromString(kind_names[i])) == NULL)
            return NULL;
    if ((str_ok = PyUnicode_InternFromString("ok")) == NULL ||
        (str_db_query_text = PyUnicode_InternFromString("db.query.text")) == NULL ||
        (str_prepared = PyUnicode_InternFromString("_prepared")) == NULL ||
        (str_misses = PyUnicode_InternFromString("_misses")) == NULL ||
        (str_sql_policy = PyUnicode_InternFromString("SqlPolicy")) == NULL ||
        (str_obfuscate = PyUnicode_InternFromString("obfuscate")) == NULL ||
        (empty_json_object = PyUnicode_InternFromString("{}")) == NULL ||
        (empty_json_array = PyUnicode_InternFromString("[]")) == NULL || (no_events = PyList_New(0)) == NULL)
        return NULL;
    PyObject *m = PyModule_Create(&module);
    if (m == NULL || span_module_init(m) < 0 || wsgi_module_init(m) < 0 || http_module_init(m) < 0 || db_module_init(m) < 0 ||
        guard_module_init(m) < 0) {
        Py_XDECREF(m);
        return NULL;
    }
    return m;
}
