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
 *   rank_pool(window, pool, input_embeddings, output_embeddings, position_weights,
 *             scorable, keep, k) -> (positions, items, scores)
 *       Both at once, for the server: no scores array to allocate, one call to pay for.
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

/* The arrays of one scoring call, acquired through the buffer protocol. */
typedef struct {
    Py_buffer pool, input, output, weights, scorable;
    int have_scorable;
    Py_ssize_t n_items, d, c;
} Arrays;

static void release_arrays(Arrays *a) {
    PyBuffer_Release(&a->pool);
    PyBuffer_Release(&a->input);
    PyBuffer_Release(&a->output);
    PyBuffer_Release(&a->weights);
    PyBuffer_Release(&a->scorable);
}

/* Fills ``a`` (zeroed by the caller) and checks the shapes agree; releases on failure. */
static int acquire_arrays(Arrays *a, PyObject *pool, PyObject *input, PyObject *output,
                          PyObject *weights, PyObject *scorable) {
    a->have_scorable = scorable != Py_None;
    if (get_array(pool, &a->pool, "pool", "i", 4, 1, 0) ||
        get_array(input, &a->input, "input_embeddings", "f", 4, 2, 0) ||
        get_array(output, &a->output, "output_embeddings", "f", 4, 2, 0) ||
        get_array(weights, &a->weights, "position_weights", "f", 4, 1, 0) ||
        (a->have_scorable && get_array(scorable, &a->scorable, "scorable", "?B", 1, 1, 0))) {
        release_arrays(a);
        return -1;
    }
    a->n_items = a->input.shape[0];
    a->d = a->input.shape[1];
    a->c = a->pool.shape[0];
    if (a->output.shape[0] != a->n_items || a->output.shape[1] != a->d) {
        PyErr_SetString(PyExc_ValueError,
                        "input_embeddings and output_embeddings must have the same shape");
    } else if (a->have_scorable && a->scorable.shape[0] != a->n_items) {
        PyErr_SetString(PyExc_ValueError, "scorable must have one entry per item");
    } else {
        return 0;
    }
    release_arrays(a);
    return -1;
}

/* Writes the score of each of the ``a->c`` pool slots into ``out``; -1 with an exception
 * set on a bad window or pool entry. */
static int score_pool(const Arrays *a, PyObject *window_obj, float *out) {
    PyObject *window = PySequence_Fast(window_obj, "window must be a sequence of item indices");
    if (window == NULL) {
        return -1;
    }
    int status = -1;
    Py_ssize_t n_items = a->n_items, d = a->d, c = a->c;
    float *user = NULL;
    Py_ssize_t width = PySequence_Fast_GET_SIZE(window);
    if (width > a->weights.shape[0]) {
        PyErr_Format(PyExc_ValueError, "window has %zd slots, position_weights only %zd", width,
                     a->weights.shape[0]);
        goto done;
    }
    user = PyMem_Calloc(d > 0 ? d : 1, sizeof(float));
    if (user == NULL) {
        PyErr_NoMemory();
        goto done;
    }
    const float *in = a->input.buf, *o = a->output.buf, *w = a->weights.buf;
    const int32_t *p = a->pool.buf;
    const unsigned char *ok = a->have_scorable ? a->scorable.buf : NULL;
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
    for (Py_ssize_t i = 0; i < c; i++) {
        int32_t item = p[i];
        if (item >= n_items) {
            PyErr_Format(PyExc_IndexError, "pool item %d is out of range for %zd items", item,
                         n_items);
            goto done;
        }
        out[i] = (item < 0 || (ok != NULL && !ok[item])) ? -INFINITY : dot(o + item * d, user, d);
    }
    status = 0;
done:
    PyMem_Free(user);
    Py_DECREF(window);
    return status;
}

/* Does score ``a`` of a later slot go before score ``b`` of an earlier one? Only when it is
 * strictly higher; any number goes before NaN. */
static inline int goes_before(float a, float b) {
    return a > b || (isnan(b) && !isnan(a));
}

/* (positions, items, scores) of the at most k best of c slots (see top_positions). */
static PyObject *select_top(const float *s, const int32_t *p, const unsigned char *allowed,
                            Py_ssize_t c, Py_ssize_t k) {
    if (k > c) {
        k = c;
    }
    Py_ssize_t *best = PyMem_Malloc((k > 0 ? k : 1) * sizeof(Py_ssize_t));
    if (best == NULL) {
        return PyErr_NoMemory();
    }
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
    PyObject *result = NULL;
    PyObject *positions = PyList_New(count), *items = PyList_New(count),
             *values = PyList_New(count);
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
    return result;
}

/* ``keep`` as a byte per slot, or NULL for None; -1 with an exception on a bad one. */
static int acquire_keep(PyObject *keep_obj, Py_buffer *keep, Py_ssize_t c,
                        const unsigned char **allowed) {
    *allowed = NULL;
    if (keep_obj == Py_None) {
        return 0;
    }
    if (get_array(keep_obj, keep, "keep", "?B", 1, 1, 0)) {
        return -1;
    }
    if (keep->shape[0] != c) {
        PyErr_SetString(PyExc_ValueError, "scores, pool and keep must have the same length");
        PyBuffer_Release(keep);
        return -1;
    }
    *allowed = keep->buf;
    return 0;
}

static PyObject *pool_scores(PyObject *self, PyObject *args) {
    PyObject *window, *pool, *input, *output, *weights, *scorable, *out_obj;
    if (!PyArg_ParseTuple(args, "OOOOOOO:pool_scores", &window, &pool, &input, &output,
                          &weights, &scorable, &out_obj)) {
        return NULL;
    }
    Arrays a = {0};
    Py_buffer out = {0};
    if (acquire_arrays(&a, pool, input, output, weights, scorable)) {
        return NULL;
    }
    PyObject *result = NULL;
    if (get_array(out_obj, &out, "out", "f", 4, 1, 1) == 0) {
        if (out.shape[0] != a.c) {
            PyErr_SetString(PyExc_ValueError, "out must have one entry per pool slot");
        } else if (score_pool(&a, window, out.buf) == 0) {
            result = Py_NewRef(Py_None);
        }
        PyBuffer_Release(&out);
    }
    release_arrays(&a);
    return result;
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
    const unsigned char *allowed = NULL;
    PyObject *result = NULL;
    if (get_array(scores_obj, &scores, "scores", "f", 4, 1, 0) ||
        get_array(pool_obj, &pool, "pool", "i", 4, 1, 0)) {
        goto done;
    }
    if (pool.shape[0] != scores.shape[0]) {
        PyErr_SetString(PyExc_ValueError, "scores, pool and keep must have the same length");
        goto done;
    }
    if (acquire_keep(keep_obj, &keep, scores.shape[0], &allowed) == 0) {
        result = select_top(scores.buf, pool.buf, allowed, scores.shape[0], k);
        PyBuffer_Release(&keep);
    }
done:
    PyBuffer_Release(&scores);
    PyBuffer_Release(&pool);
    return result;
}

static PyObject *rank_pool(PyObject *self, PyObject *args) {
    PyObject *window, *pool, *input, *output, *weights, *scorable, *keep_obj;
    Py_ssize_t k;
    if (!PyArg_ParseTuple(args, "OOOOOOOn:rank_pool", &window, &pool, &input, &output, &weights,
                          &scorable, &keep_obj, &k)) {
        return NULL;
    }
    if (k < 0) {
        PyErr_SetString(PyExc_ValueError, "k must not be negative");
        return NULL;
    }
    Arrays a = {0};
    if (acquire_arrays(&a, pool, input, output, weights, scorable)) {
        return NULL;
    }
    PyObject *result = NULL;
    Py_buffer keep = {0};
    const unsigned char *allowed = NULL;
    float *scores = PyMem_Malloc((a.c > 0 ? a.c : 1) * sizeof(float));
    if (scores == NULL) {
        PyErr_NoMemory();
    } else if (acquire_keep(keep_obj, &keep, a.c, &allowed) == 0) {
        if (score_pool(&a, window, scores) == 0) {
            result = select_top(scores, a.pool.buf, allowed, a.c, k);
        }
        PyBuffer_Release(&keep);
    }
    PyMem_Free(scores);
    release_arrays(&a);
    return result;
}

static PyMethodDef methods[] = {
    {"pool_scores", pool_scores, METH_VARARGS,
     "pool_scores(window, pool, input_embeddings, output_embeddings, position_weights, "
     "scorable, out)\n--\n\n"
     "Write the personalized score of each pool slot into out (-inf for padding and\n"
     "unscorable items). window: item indices, current item first, -1 for empty slots."},
    {"rank_pool", rank_pool, METH_VARARGS,
     "rank_pool(window, pool, input_embeddings, output_embeddings, position_weights, "
     "scorable, keep, k)\n--\n\n"
     "top_positions of pool_scores, in one call: (positions, items, scores)."},
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
