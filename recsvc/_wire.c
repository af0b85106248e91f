/*
 * recsvc._wire: the protobuf wire bytes of a reply's ranked items, in one call.
 *
 * Building 30 RankedItem messages one ``add()`` at a time cost a running server about
 * 60 us per reply; parsing the same items from wire bytes costs upb under 10 us.  So the
 * server writes the items' bytes here and merges them into its reply message.
 *
 *   ranked_items(item_ids, scores, flags, sources_by_flags, fields) -> bytes
 *
 * For each i, one length-delimited field ``fields[0]`` holding a message of
 *   fields[1]: item_ids[i]                    (string, UTF-8)
 *   fields[2]: scores[i]                      (float, fixed 32-bit little-endian)
 *   fields[3]: sources_by_flags[flags[i]]     (a tuple of enum values, written packed)
 *   fields[4]: true when scores[i] is not finite (bool)
 * A score that is not finite (-inf: the model cannot score the item) is written as the
 * lowest float, -FLT_MAX, so that every score on the wire is a number and none is above
 * the one before it, and the bool field marks the item unscored.
 * Fields at their proto3 default (empty string, +0.0, no sources, false) are left out, as
 * protobuf's own serializer leaves them out.  The field numbers come from the generated
 * descriptors, so this file knows no schema.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <float.h>
#include <math.h>
#include <stdint.h>
#include <string.h>

enum { WIRE_VARINT = 0, WIRE_I32 = 5, WIRE_LEN = 2 };

static Py_ssize_t varint_size(uint64_t value) {
    Py_ssize_t size = 1;
    while (value >= 0x80) {
        value >>= 7;
        size++;
    }
    return size;
}

static char *put_varint(char *out, uint64_t value) {
    while (value >= 0x80) {
        *out++ = (char)((value & 0x7F) | 0x80);
        value >>= 7;
    }
    *out++ = (char)value;
    return out;
}

typedef struct {
    const char *id;
    Py_ssize_t id_size;
    uint32_t score_bits;
    int unscored;
    PyObject *sources; /* tuple of ints, borrowed from the table */
    Py_ssize_t sources_size;
    Py_ssize_t body_size; /* the RankedItem's own bytes */
} Item;

static PyObject *ranked_items(PyObject *self, PyObject *args) {
    PyObject *ids_obj, *scores_obj, *flags_obj, *table_obj;
    unsigned int outer, id_field, score_field, sources_field, unscored_field;
    if (!PyArg_ParseTuple(args, "OOOO(IIIII):ranked_items", &ids_obj, &scores_obj, &flags_obj,
                          &table_obj, &outer, &id_field, &score_field, &sources_field,
                          &unscored_field)) {
        return NULL;
    }
    const unsigned int numbers[] = {outer, id_field, score_field, sources_field, unscored_field};
    for (size_t f = 0; f < sizeof(numbers) / sizeof(numbers[0]); f++) {
        if (numbers[f] == 0 || numbers[f] >= (1u << 29)) {
            PyErr_SetString(PyExc_ValueError, "field numbers must be in 1..2**29-1");
            return NULL;
        }
    }
    if (!PyList_Check(ids_obj) || !PyList_Check(scores_obj) || !PyList_Check(flags_obj) ||
        !PyList_Check(table_obj)) {
        PyErr_SetString(PyExc_TypeError,
                        "item_ids, scores, flags and sources_by_flags must be lists");
        return NULL;
    }
    Py_ssize_t n = PyList_GET_SIZE(ids_obj);
    if (PyList_GET_SIZE(scores_obj) != n || PyList_GET_SIZE(flags_obj) != n) {
        PyErr_SetString(PyExc_ValueError, "item_ids, scores and flags must have the same length");
        return NULL;
    }
    Py_ssize_t n_flags = PyList_GET_SIZE(table_obj);
    Item *items = PyMem_Malloc((n > 0 ? n : 1) * sizeof(Item));
    if (items == NULL) {
        return PyErr_NoMemory();
    }
    PyObject *result = NULL;
    Py_ssize_t total = 0;
    for (Py_ssize_t i = 0; i < n; i++) {
        Item *item = &items[i];
        PyObject *id = PyList_GET_ITEM(ids_obj, i);
        if (!PyUnicode_Check(id)) {
            PyErr_Format(PyExc_TypeError, "item_ids[%zd] must be a str", i);
            goto done;
        }
        item->id = PyUnicode_AsUTF8AndSize(id, &item->id_size);
        if (item->id == NULL) {
            goto done;
        }
        /* Exact types only, from here to the end: no __float__ or __index__ of a caller's
         * can run and change the lists while this holds pointers into them. */
        PyObject *score_obj = PyList_GET_ITEM(scores_obj, i);
        if (!PyFloat_Check(score_obj) && !PyLong_Check(score_obj)) {
            PyErr_Format(PyExc_TypeError, "scores[%zd] must be a float", i);
            goto done;
        }
        double score = PyFloat_Check(score_obj) ? PyFloat_AS_DOUBLE(score_obj)
                                                : PyLong_AsDouble(score_obj);
        if (score == -1.0 && PyErr_Occurred()) {
            goto done;
        }
        float as_float = (float)score;
        item->unscored = !isfinite(as_float);
        if (item->unscored) {
            as_float = -FLT_MAX;
        }
        memcpy(&item->score_bits, &as_float, sizeof(as_float));
        PyObject *flags_item = PyList_GET_ITEM(flags_obj, i);
        if (!PyLong_Check(flags_item)) {
            PyErr_Format(PyExc_TypeError, "flags[%zd] must be an int", i);
            goto done;
        }
        Py_ssize_t flags = PyLong_AsSsize_t(flags_item);
        if (flags == -1 && PyErr_Occurred()) {
            goto done;
        }
        if (flags < 0 || flags >= n_flags) {
            PyErr_Format(PyExc_IndexError, "flags[%zd] = %zd has no entry in sources_by_flags", i,
                         flags);
            goto done;
        }
        PyObject *sources = PyList_GET_ITEM(table_obj, flags);
        if (!PyTuple_Check(sources)) {
            PyErr_SetString(PyExc_TypeError, "sources_by_flags must hold tuples of ints");
            goto done;
        }
        item->sources = sources;
        item->sources_size = 0;
        for (Py_ssize_t s = 0; s < PyTuple_GET_SIZE(sources); s++) {
            PyObject *source = PyTuple_GET_ITEM(sources, s);
            long long value = PyLong_Check(source) ? PyLong_AsLongLong(source) : -1;
            if (!PyLong_Check(source)) {
                PyErr_SetString(PyExc_TypeError, "sources_by_flags must hold tuples of ints");
            }
            if (value == -1 && PyErr_Occurred()) {
                goto done;
            }
            item->sources_size += varint_size((uint64_t)value); /* negative: 10 bytes */
        }
        Py_ssize_t body = 0;
        if (item->id_size) {
            body += varint_size(id_field << 3) + varint_size(item->id_size) + item->id_size;
        }
        if (item->score_bits) {
            body += varint_size(score_field << 3) + 4;
        }
        if (item->sources_size) {
            body += varint_size(sources_field << 3) + varint_size(item->sources_size) +
                    item->sources_size;
        }
        if (item->unscored) {
            body += varint_size(unscored_field << 3) + 1;
        }
        item->body_size = body;
        total += varint_size(outer << 3) + varint_size(body) + body;
    }
    result = PyBytes_FromStringAndSize(NULL, total);
    if (result == NULL) {
        goto done;
    }
    char *out = PyBytes_AS_STRING(result);
    for (Py_ssize_t i = 0; i < n; i++) {
        const Item *item = &items[i];
        out = put_varint(out, (outer << 3) | WIRE_LEN);
        out = put_varint(out, item->body_size);
        if (item->id_size) {
            out = put_varint(out, (id_field << 3) | WIRE_LEN);
            out = put_varint(out, item->id_size);
            memcpy(out, item->id, item->id_size);
            out += item->id_size;
        }
        if (item->score_bits) {
            out = put_varint(out, (score_field << 3) | WIRE_I32);
            for (int b = 0; b < 4; b++) { /* little-endian, whatever the host */
                *out++ = (char)((item->score_bits >> (8 * b)) & 0xFF);
            }
        }
        if (item->sources_size) {
            out = put_varint(out, (sources_field << 3) | WIRE_LEN);
            out = put_varint(out, item->sources_size);
            for (Py_ssize_t s = 0; s < PyTuple_GET_SIZE(item->sources); s++) {
                /* Checked in the first pass: ints that fit, and no Python code ran since. */
                long long value = PyLong_AsLongLong(PyTuple_GET_ITEM(item->sources, s));
                out = put_varint(out, (uint64_t)value);
            }
        }
        if (item->unscored) {
            out = put_varint(out, (unscored_field << 3) | WIRE_VARINT);
            *out++ = 1;
        }
    }
done:
    PyMem_Free(items);
    return result;
}

static PyMethodDef methods[] = {
    {"ranked_items", ranked_items, METH_VARARGS,
     "ranked_items(item_ids, scores, flags, sources_by_flags, fields)\n--\n\n"
     "Wire bytes of a repeated message field: one (item id, float score, packed enum\n"
     "sources, bool unscored) message per item; sources_by_flags[flags[i]] is item i's\n"
     "tuple of enum values; a score that is not finite is sent as -FLT_MAX, unscored.\n"
     "fields: (repeated, id, score, sources, unscored) field numbers."},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {
    PyModuleDef_HEAD_INIT, "recsvc._wire",
    "Protobuf wire bytes of a reply's ranked items (see recsvc/_wire.c).", -1, methods,
};

PyMODINIT_FUNC PyInit__wire(void) { return PyModule_Create(&module); }
