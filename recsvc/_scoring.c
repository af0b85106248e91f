/*
 * recsvc._scoring: the per-request arithmetic of recsvc.scoring, compiled.
 *
 * A served ranking is about twenty small numpy operations when written in numpy, and on a
 * busy server each of them runs with cold caches, so their dispatch, not their flops, was
 * the largest cost of a Recommend.  Here the same maths is two calls:
 *
 *   pool_scores(window, pool, input_embeddings, output_embeddings, position_weights,
 *               scorable, out)
 *       Writes the score of each pool slot into ``out``: the dot product of the
 *       candidate's output embedding with the user vector
 *       u = (1/n) * sum_j w_j * v_j  over the n valid window slots j,
 *       or -inf for padding (-1) and for items ``scorable`` marks false.
 *
 *   top_positions(scores, pool, keep, k) -> (positions, items, scores)
 *       The at most k best pool slots that hold an item and that ``keep`` allows, by
 *       score, highest first; equal scores keep pool order and NaN comes last, as
 *       numpy's argsort(-scores, kind="stable") orders them.
 *
 * Arrays come in through the buffer protocol (numpy arrays, memory-mapped bundle arrays),
 * so no numpy headers are needed to build.  Floating-point sums have a fixed order (eight
 * lanes, then a fixed pairing), so a result does not depend on compiler flags and the
 * offline evaluation, which calls the same functions, reproduces a served score bit for bit.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <math.h>
#include <string.h>

#define LANES 8

/* Strip byte-order and native-alignment marks: numpy writes "<f" or "f" for float32. */
static const char *base_format(const char *format) {
    if (format == NULL) {
        return "B";
    }
    while (*format == '@' || *format == '=' || *format == '<') {
        format++;
    }
    return format;
}

/* Acquire a C-contiguous buffer of ``ndim`` dimensions holding ``kind`` items of
 * ``itemsize`` bytes; ``kinds`` lists the accepted struct format characters. */
static int get_array(PyObject *obj, Py_buffer *view, const char *name, const char *kinds,
                     Py_ssize_t itemsize, int ndim, int writable) {
    int flags = PyBUF_C_CONTIGUOUS | PyBUF_FORMAT | (writable ? PyBUF_WRITABLE : 0);
    if (PyObject_GetBuffer(obj, view, flags) != 0) {
        PyErr_Format(PyExc_TypeError, "%s must be a C-contiguous%s array", name,
                     writable ? " writable" : "");
        return -1;
    }
    const char *format = base_format(view->format);
    if (view->ndim != ndim || view->itemsize != itemsize || strlen(format) != 1 ||
        strchr(kinds, format[0]) == NULL) {
        PyErr_Format(PyExc_TypeError, "%s must be a %d-d array of %s, got format %s ndim %d",
                     name, ndim, kinds[0] == 'f' ? "float32" : kinds[0] == '?' ? "bool" : "int32",
                     view->format ? view->format : "B", view->ndim);
        PyBuffer_Release(view);
        return -1;
    }
    return 0;
}

static float dot(const float *a, const float *b, Py_ssize_t d) {
    float lane[LANES] = {0};
    Py_ssize_t j = 0;
    for (; j + LANES <= d; j += LANES) {
        for (int l = 0; l < LANES; l++) {
            lane[l] += a[j + l] * b[j + l];
        }
    }
    float tail = 0.0f;
    for (; j < d; j++) {
        tail += a[j] * b[j];
    }
    return ((lane[0] + lane[4]) + (lane[1] + lane[5])) + ((lane[2] + lane[6]) + (lane[3] + lane[7])) +
           tail;
}

static PyObject *pool_scores(PyObject *self, PyObject *args) {
    PyObject *window_obj, *pool_obj, *input_obj, *output_obj, *weights_obj, *scorable_obj,
        *out_obj;
    if (!PyArg_ParseTuple(args, "OOOOOOO:pool_scores", &window_obj, &pool_obj, &input_obj,
                          &output_obj, &weights_obj, &scorable_obj, &out_obj)) {
        return NULL;
    }
    Py_buffer pool = {0}, input = {0}, output = {0}, weights = {0}, scorable = {0}, out = {0};
    PyObject *window = NULL, *result = NULL;
    float *user = NULL;
    int have_scorable = scorable_obj != Py_None;

    if (get_array(pool_obj, &pool, "pool", "i", 4, 1, 0) ||
        get_array(input_obj, &input, "input_embeddings", "f", 4, 2, 0) ||
        get_array(output_obj, &output, "output_embeddings", "f", 4, 2, 0) ||
        get_array(weights_obj, &weights, "position_weights", "f", 4, 1, 0) ||
        (have_scorable && get_array(scorable_obj, &scorable, "scorable", "?B", 1, 1, 0)) ||
        get_array(out_obj, &out, "out", "f", 4, 1, 1)) {
        goto done;
    }
    Py_ssize_t n_items = input.shape[0], d = input.shape[1], c = pool.shape[0];
    if (output.shape[0] != n_items || output.shape[1] != d) {
        PyErr_SetString(PyExc_ValueError,
                        "input_embeddings and output_embeddings must have the same shape");
        goto done;
    }
    if (have_scorable && scorable.shape[0] != n_items) {
        PyErr_SetString(PyExc_ValueError, "scorable must have one entry per item");
        goto done;
    }
    if (out.shape[0] != c) {
        PyErr_SetString(PyExc_ValueError, "out must have one entry per pool slot");
        goto done;
    }
    window = PySequence_Fast(window_obj, "window must be a sequence of item indices");
    if (window == NULL) {
        goto done;
    }
    Py_ssize_t width = PySequence_Fast_GET_SIZE(window);
    if (width > weights.shape[0]) {
        PyErr_Format(PyExc_ValueError, "window has %zd slots, position_weights only %zd", width,
                     weights.shape[0]);
        goto done;
    }
    user = PyMem_Calloc(d > 0 ? d : 1, sizeof(float));
    if (user == NULL) {
        PyErr_NoMemory();
        goto done;
    }
    const float *in = input.buf, *o = output.buf, *w = weights.buf;
    Py_ssize_t valid = 0;
    for (Py_ssize_t slot = 0; slot < width; slot++) {
        Py_ssize_t item = PyLong_AsSsize_t(PySequence_Fast_GET_ITEM(window, slot));
        if (item == -1 && PyErr_Occurred()) {
            goto done;
        }
        if (item < 0) {
            continue;
        }
        if (item >= n_items) {
            PyErr_Format(PyExc_IndexError, "window item %zd is out of range for %zd items", item,
                         n_items);
            goto done;
        }
        const float *v = in + item * d;
        for (Py_ssize_t j = 0; j < d; j++) {
            user[j] += w[slot] * v[j];
        }
        valid++;
    }
    if (valid > 0) {
        for (Py_ssize_t j = 0; j < d; j++) {
            user[j] /= (float)valid;
        }
    }
    const int32_t *p = pool.buf;
    const unsigned char *ok = have_scorable ? scorable.buf : NULL;
    float *s = out.buf;
    /* Ask for every candidate's row before using any: they are scattered over the matrix,
     * and on a busy server none is in cache, so waiting for them one at a time dominates. */
    for (Py_ssize_t i = 0; i < c; i++) {
        if (p[i] >= 0 && p[i] < n_items) {
            if (ok != NULL) {
                __builtin_prefetch(ok + p[i]);
            }
            const char *row = (const char *)(o + p[i] * d);
            for (Py_ssize_t byte = 0; byte < d * (Py_ssize_t)sizeof(float); byte += 64) {
                __builtin_prefetch(row + byte);
            }
        }
    }
    for (Py_ssize_t i = 0; i < c; i++) {
        int32_t item = p[i];
        if (item >= n_items) {
            PyErr_Format(PyExc_IndexError, "pool item %d is out of range for %zd items", item,
                         n_items);
            goto done;
        }
        s[i] = (item < 0 || (ok != NULL && !ok[item])) ? -INFINITY : dot(o + item * d, user, d);
    }
    result = Py_NewRef(Py_None);
done:
    PyMem_Free(user);
    Py_XDECREF(window);
    PyBuffer_Release(&pool);
    PyBuffer_Release(&input);
    PyBuffer_Release(&output);
    PyBuffer_Release(&weights);
    if (have_scorable) {
        PyBuffer_Release(&scorable);
    }
    PyBuffer_Release(&out);
    return result;
}

/* Does score ``a`` of a later slot go before score ``b`` of an earlier one? Only when it is
 * strictly higher; any number goes before NaN. */
static inline int goes_before(float a, float b) {
    return a > b || (isnan(b) && !isnan(a));
}

static PyObject *top_positions(PyObject *self, PyObject *args) {
    PyObject *scores_obj, *pool_obj, *keep_obj;
    Py_ssize_t k;
    if (!PyArg_ParseTuple(args, "OOOn:top_positions", &scores_obj, &pool_obj, &keep_obj, &k)) {
        return NULL;
    }
    if (k < 0) {
        PyErr_SetString(PyExc_ValueError, "k must not be negative");
        return NULL;
    }
    Py_buffer scores = {0}, pool = {0}, keep = {0};
    int have_keep = keep_obj != Py_None;
    Py_ssize_t *best = NULL;
    PyObject *positions = NULL, *items = NULL, *values = NULL, *result = NULL;

    if (get_array(scores_obj, &scores, "scores", "f", 4, 1, 0) ||
        get_array(pool_obj, &pool, "pool", "i", 4, 1, 0) ||
        (have_keep && get_array(keep_obj, &keep, "keep", "?B", 1, 1, 0))) {
        goto done;
    }
    Py_ssize_t c = scores.shape[0];
    if (pool.shape[0] != c || (have_keep && keep.shape[0] != c)) {
        PyErr_SetString(PyExc_ValueError, "scores, pool and keep must have the same length");
        goto done;
    }
    if (k > c) {
        k = c;
    }
    best = PyMem_Malloc((k > 0 ? k : 1) * sizeof(Py_ssize_t));
    if (best == NULL) {
        PyErr_NoMemory();
        goto done;
    }
    const float *s = scores.buf;
    const int32_t *p = pool.buf;
    const unsigned char *allowed = have_keep ? keep.buf : NULL;
    Py_ssize_t count = 0;
    for (Py_ssize_t i = 0; i < c && k > 0; i++) {
        if (p[i] < 0 || (allowed != NULL && !allowed[i])) {
            continue;
        }
        if (count == k && !goes_before(s[i], s[best[k - 1]])) {
            continue;
        }
        /* Binary search for the first kept slot that slot i goes before. */
        Py_ssize_t lo = 0, hi = count;
        while (lo < hi) {
            Py_ssize_t mid = (lo + hi) / 2;
            if (goes_before(s[i], s[best[mid]])) {
                hi = mid;
            } else {
                lo = mid + 1;
            }
        }
        Py_ssize_t moved = (count < k ? count : k - 1) - lo;
        memmove(best + lo + 1, best + lo, moved * sizeof(Py_ssize_t));
        best[lo] = i;
        if (count < k) {
            count++;
        }
    }
    positions = PyList_New(count);
    items = PyList_New(count);
    values = PyList_New(count);
    if (positions == NULL || items == NULL || values == NULL) {
        goto done;
    }
    for (Py_ssize_t r = 0; r < count; r++) {
        PyObject *position = PyLong_FromSsize_t(best[r]);
        PyObject *item = PyLong_FromLong(p[best[r]]);
        PyObject *value = PyFloat_FromDouble(s[best[r]]);
        if (position == NULL || item == NULL || value == NULL) {
            Py_XDECREF(position);
            Py_XDECREF(item);
            Py_XDECREF(value);
            goto done;
        }
        PyList_SET_ITEM(positions, r, position);
        PyList_SET_ITEM(items, r, item);
        PyList_SET_ITEM(values, r, value);
    }
    result = PyTuple_Pack(3, positions, items, values);
done:
    Py_XDECREF(positions);
    Py_XDECREF(items);
    Py_XDECREF(values);
    PyMem_Free(best);
    PyBuffer_Release(&scores);
    PyBuffer_Release(&pool);
    if (have_keep) {
        PyBuffer_Release(&keep);
    }
    return result;
}

static PyMethodDef methods[] = {
    {"pool_scores", pool_scores, METH_VARARGS,
     "pool_scores(window, pool, input_embeddings, output_embeddings, position_weights, "
     "scorable, out)\n--\n\n"
     "Write the personalized score of each pool slot into out (-inf for padding and\n"
     "unscorable items). window: item indices, current item first, -1 for empty slots."},
    {"top_positions", top_positions, METH_VARARGS,
     "top_positions(scores, pool, keep, k)\n--\n\n"
     "(positions, items, scores) of the at most k best slots holding an item that keep\n"
     "(None: all) allows; highest score first, ties in pool order, NaN last."},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {
    PyModuleDef_HEAD_INIT, "recsvc._scoring",
    "The per-request arithmetic of recsvc.scoring, compiled (see recsvc/_scoring.c).", -1,
    methods,
};

PyMODINIT_FUNC PyInit__scoring(void) { return PyModule_Create(&module); }
