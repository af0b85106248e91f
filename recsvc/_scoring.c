/*
 * recsvc._scoring: the per-request arithmetic of recsvc.scoring, compiled.
 *
 * A served ranking is about twenty small numpy operations when written in numpy, and on a
 * busy server each of them runs with cold caches, so their dispatch, not their flops, was
 * the largest cost of a Recommend.  Here the same maths is compiled:
 *
 *   pool_scores(window, pool, input_embeddings, output_embeddings, position_weights,
 *               scorable, out)
 *       Writes the score of each pool slot into ``out``: the dot product of the
 *       candidate's output embedding with the user vector
 *       u = (1/n) * sum_j w_j * v_j  over the n valid window slots j,
 *       or -inf for padding (-1) and for items ``scorable`` marks false.
 *
 *   PoolRanker(pools, pool_sources, item_ids, input_embeddings, output_embeddings,
 *              position_weights, scorable).rank(row, window, keep, k)
 *       -> (item ids, scores, source flags)
 *       The at most k best slots of pool ``row`` that hold an item and that ``keep``
 *       allows, scored as pool_scores scores them, highest first; equal scores keep pool
 *       order and NaN comes last, as numpy's argsort(-scores, kind="stable") orders them.
 *       For the server: it holds the bundle's arrays from its creation, so a request
 *       without a ``keep`` filter pays for no buffer, view or scores array; window None
 *       ranks the pool in its offline order, scored 1 - slot / pool size.
 *
 * Arrays come in through the buffer protocol (numpy arrays, memory-mapped bundle arrays),
 * so no numpy headers are needed to build.  Floating-point sums have a fixed order (eight
 * lanes, then a fixed pairing; setup.py builds with -ffp-contract=off, so no fused
 * multiply-add changes the rounding), so a result does not depend on the CPU, and the
 * offline evaluation (pool_scores) and the server (PoolRanker) share one scoring function
 * (score_pool), so a served score is the offline one bit for bit.
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
                     name, ndim,
                     kinds[0] == 'f'   ? "float32"
                     : kinds[0] == '?' ? "bool"
                     : kinds[0] == 'B' ? "uint8"
                                       : "int32",
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

/* A model's arrays, acquired through the buffer protocol. */
typedef struct {
    Py_buffer input, output, weights, scorable;
    int have_scorable;
    Py_ssize_t n_items, d;
} Model;

static void release_model(Model *m) {
    PyBuffer_Release(&m->input);
    PyBuffer_Release(&m->output);
    PyBuffer_Release(&m->weights);
    PyBuffer_Release(&m->scorable);
}

/* Fills ``m`` (zeroed by the caller) and checks the shapes agree; releases on failure. */
static int acquire_model(Model *m, PyObject *input, PyObject *output, PyObject *weights,
                         PyObject *scorable) {
    m->have_scorable = scorable != Py_None;
    if (get_array(input, &m->input, "input_embeddings", "f", 4, 2, 0) ||
        get_array(output, &m->output, "output_embeddings", "f", 4, 2, 0) ||
        get_array(weights, &m->weights, "position_weights", "f", 4, 1, 0) ||
        (m->have_scorable && get_array(scorable, &m->scorable, "scorable", "?B", 1, 1, 0))) {
        release_model(m);
        return -1;
    }
    m->n_items = m->input.shape[0];
    m->d = m->input.shape[1];
    if (m->output.shape[0] != m->n_items || m->output.shape[1] != m->d) {
        PyErr_SetString(PyExc_ValueError,
                        "input_embeddings and output_embeddings must have the same shape");
    } else if (m->have_scorable && m->scorable.shape[0] != m->n_items) {
        PyErr_SetString(PyExc_ValueError, "scorable must have one entry per item");
    } else {
        return 0;
    }
    release_model(m);
    return -1;
}

/* Writes the score of each of the ``c`` slots of pool ``p`` into ``out``; -1 with an
 * exception set on a bad window or pool entry. */
static int score_pool(const Model *m, PyObject *window_obj, const int32_t *p, Py_ssize_t c,
                      float *out) {
    PyObject *window = PySequence_Fast(window_obj, "window must be a sequence of item indices");
    if (window == NULL) {
        return -1;
    }
    int status = -1;
    Py_ssize_t n_items = m->n_items, d = m->d;
    float *user = NULL;
    Py_ssize_t width = PySequence_Fast_GET_SIZE(window);
    if (width > m->weights.shape[0]) {
        PyErr_Format(PyExc_ValueError, "window has %zd slots, position_weights only %zd", width,
                     m->weights.shape[0]);
        goto done;
    }
    user = PyMem_Calloc(d > 0 ? d : 1, sizeof(float));
    if (user == NULL) {
        PyErr_NoMemory();
        goto done;
    }
    const float *in = m->input.buf, *o = m->output.buf, *w = m->weights.buf;
    const unsigned char *ok = m->have_scorable ? m->scorable.buf : NULL;
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
        Py_ssize_t item = PyNumber_AsSsize_t(PySequence_Fast_GET_ITEM(window, slot),
                                             PyExc_OverflowError);  /* numpy ints too */
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

/* Writes the at most k best of c slots (holding an item, and allowed) into ``best``, best
 * first (see PoolRanker.rank for the order); returns how many. ``best`` has room for k. */
static Py_ssize_t select_top(const float *s, const int32_t *p, const unsigned char *allowed,
                             Py_ssize_t c, Py_ssize_t k, Py_ssize_t *best) {
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
    return count;
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
        PyErr_SetString(PyExc_ValueError, "keep must have one entry per pool slot");
        PyBuffer_Release(keep);
        return -1;
    }
    *allowed = keep->buf;
    return 0;
}

static PyObject *pool_scores(PyObject *self, PyObject *args) {
    PyObject *window, *pool_obj, *input, *output, *weights, *scorable, *out_obj;
    if (!PyArg_ParseTuple(args, "OOOOOOO:pool_scores", &window, &pool_obj, &input, &output,
                          &weights, &scorable, &out_obj)) {
        return NULL;
    }
    Model m = {0};
    Py_buffer pool = {0}, out = {0};
    PyObject *result = NULL;
    if (get_array(pool_obj, &pool, "pool", "i", 4, 1, 0)) {
        return NULL;
    }
    if (acquire_model(&m, input, output, weights, scorable) == 0) {
        if (get_array(out_obj, &out, "out", "f", 4, 1, 1) == 0) {
            if (out.shape[0] != pool.shape[0]) {
                PyErr_SetString(PyExc_ValueError, "out must have one entry per pool slot");
            } else if (score_pool(&m, window, pool.buf, pool.shape[0], out.buf) == 0) {
                result = Py_NewRef(Py_None);
            }
            PyBuffer_Release(&out);
        }
        release_model(&m);
    }
    PyBuffer_Release(&pool);
    return result;
}

/* ---- PoolRanker: one bundle's pools, ranked per request ---------------------------- */

typedef struct {
    PyObject_HEAD
    Py_buffer pools, sources; /* int32 and uint8, both (n_items, c) */
    PyObject *item_ids;       /* list of str, item index -> id */
    Model model;
    int has_model;
    float *offline; /* 1 - slot / c: the offline order as scores */
} PoolRanker;

static void PoolRanker_dealloc(PoolRanker *self) {
    PyBuffer_Release(&self->pools);
    PyBuffer_Release(&self->sources);
    Py_XDECREF(self->item_ids);
    if (self->has_model) {
        release_model(&self->model);
    }
    PyMem_Free(self->offline);
    Py_TYPE(self)->tp_free((PyObject *)self);
}

static int PoolRanker_init(PoolRanker *self, PyObject *args, PyObject *kwargs) {
    static char *names[] = {"pools", "pool_sources", "item_ids", "input_embeddings",
                            "output_embeddings", "position_weights", "scorable", NULL};
    PyObject *pools, *sources, *ids, *input = Py_None, *output = Py_None, *weights = Py_None,
                                     *scorable = Py_None;
    if (self->pools.obj != NULL) {
        PyErr_SetString(PyExc_RuntimeError, "a PoolRanker is initialised once");
        return -1;
    }
    if (!PyArg_ParseTupleAndKeywords(args, kwargs, "OOO|OOOO:PoolRanker", names, &pools,
                                     &sources, &ids, &input, &output, &weights, &scorable)) {
        return -1;
    }
    if (!PyList_Check(ids)) {
        PyErr_SetString(PyExc_TypeError, "item_ids must be a list of str");
        return -1;
    }
    if (get_array(pools, &self->pools, "pools", "i", 4, 2, 0)) {
        return -1;
    }
    if (get_array(sources, &self->sources, "pool_sources", "B", 1, 2, 0)) {
        return -1;
    }
    Py_ssize_t n_items = self->pools.shape[0], c = self->pools.shape[1];
    if (self->sources.shape[0] != n_items || self->sources.shape[1] != c) {
        PyErr_SetString(PyExc_ValueError, "pool_sources must have the shape of pools");
        return -1;
    }
    if (PyList_GET_SIZE(ids) != n_items) {
        PyErr_SetString(PyExc_ValueError, "item_ids must have one id per row of pools");
        return -1;
    }
    self->item_ids = Py_NewRef(ids);
    if (input != Py_None) {
        if (acquire_model(&self->model, input, output, weights, scorable)) {
            return -1;
        }
        self->has_model = 1;
        if (self->model.n_items != n_items) {
            PyErr_SetString(PyExc_ValueError, "the model must have one embedding per item");
            return -1;
        }
    }
    self->offline = PyMem_Malloc((c > 0 ? c : 1) * sizeof(float));
    if (self->offline == NULL) {
        PyErr_NoMemory();
        return -1;
    }
    for (Py_ssize_t j = 0; j < c; j++) {
        self->offline[j] = (float)(1.0 - (double)j / (double)c);
    }
    return 0;
}

#define STACK_SLOTS 1024

static PyObject *PoolRanker_rank(PoolRanker *self, PyObject *args) {
    Py_ssize_t row, k;
    PyObject *window, *keep_obj;
    if (!PyArg_ParseTuple(args, "nOOn:rank", &row, &window, &keep_obj, &k)) {
        return NULL;
    }
    if (self->offline == NULL) {
        PyErr_SetString(PyExc_RuntimeError, "the PoolRanker was not initialised");
        return NULL;
    }
    Py_ssize_t n_items = self->pools.shape[0], c = self->pools.shape[1];
    if (row < 0 || row >= n_items) {
        PyErr_Format(PyExc_IndexError, "row %zd is out of range for %zd items", row, n_items);
        return NULL;
    }
    if (k < 0) {
        PyErr_SetString(PyExc_ValueError, "k must not be negative");
        return NULL;
    }
    if (window != Py_None && !self->has_model) {
        PyErr_SetString(PyExc_ValueError, "a window needs a model; this PoolRanker has none");
        return NULL;
    }
    k = k < c ? k : c;
    const int32_t *p = (const int32_t *)self->pools.buf + row * c;
    const unsigned char *row_sources = (const unsigned char *)self->sources.buf + row * c;
    Py_buffer keep = {0};
    const unsigned char *allowed = NULL;
    float stack_scores[STACK_SLOTS];
    Py_ssize_t stack_best[STACK_SLOTS];
    float *scores = self->offline;
    Py_ssize_t *best = stack_best;
    float *heap_scores = NULL;
    Py_ssize_t *heap_best = NULL;
    PyObject *ids = NULL, *values = NULL, *flags = NULL, *result = NULL;
    if (acquire_keep(keep_obj, &keep, c, &allowed)) {
        return NULL;
    }
    if (c > STACK_SLOTS) {
        heap_scores = PyMem_Malloc(c * sizeof(float));
        heap_best = PyMem_Malloc(c * sizeof(Py_ssize_t));
        if (heap_scores == NULL || heap_best == NULL) {
            PyErr_NoMemory();
            goto done;
        }
        best = heap_best;
    }
    if (window != Py_None) {
        scores = heap_scores != NULL ? heap_scores : stack_scores;
        if (score_pool(&self->model, window, p, c, scores)) {
            goto done;
        }
    }
    Py_ssize_t count = select_top(scores, p, allowed, c, k, best);
    Py_ssize_t n_ids = PyList_GET_SIZE(self->item_ids);
    ids = PyList_New(count);
    values = PyList_New(count);
    flags = PyList_New(count);
    if (ids == NULL || values == NULL || flags == NULL) {
        goto done;
    }
    for (Py_ssize_t r = 0; r < count; r++) {
        int32_t item = p[best[r]];
        if (item >= n_ids) {
            PyErr_Format(PyExc_IndexError, "pool item %d has no id", item);
            goto done;
        }
        PyObject *value = PyFloat_FromDouble(scores[best[r]]);
        PyObject *flag = PyLong_FromLong(row_sources[best[r]]);
        if (value == NULL || flag == NULL) {
            Py_XDECREF(value);
            Py_XDECREF(flag);
            goto done;
        }
        PyList_SET_ITEM(ids, r, Py_NewRef(PyList_GET_ITEM(self->item_ids, item)));
        PyList_SET_ITEM(values, r, value);
        PyList_SET_ITEM(flags, r, flag);
    }
    result = PyTuple_Pack(3, ids, values, flags);
done:
    Py_XDECREF(ids);
    Py_XDECREF(values);
    Py_XDECREF(flags);
    PyMem_Free(heap_scores);
    PyMem_Free(heap_best);
    PyBuffer_Release(&keep);
    return result;
}

static PyMethodDef PoolRanker_methods[] = {
    {"rank", (PyCFunction)PoolRanker_rank, METH_VARARGS,
     "rank(row, window, keep, k)\n--\n\n"
     "(item ids, scores, source flags) of the at most k best slots of pool ``row`` that\n"
     "hold an item and that keep (a bool array, or None) allows. window: item indices,\n"
     "current item first, -1 for empty slots; None keeps the offline order."},
    {NULL, NULL, 0, NULL},
};

static PyTypeObject PoolRankerType = {
    PyVarObject_HEAD_INIT(NULL, 0).tp_name = "recsvc._scoring.PoolRanker",
    .tp_doc = PyDoc_STR("PoolRanker(pools, pool_sources, item_ids, input_embeddings=None, "
                        "output_embeddings=None, position_weights=None, scorable=None)\n--\n\n"
                        "One bundle's pools, ranked per request (see recsvc/_scoring.c)."),
    .tp_basicsize = sizeof(PoolRanker),
    .tp_flags = Py_TPFLAGS_DEFAULT,
    .tp_new = PyType_GenericNew,
    .tp_init = (initproc)PoolRanker_init,
    .tp_dealloc = (destructor)PoolRanker_dealloc,
    .tp_methods = PoolRanker_methods,
};

static PyMethodDef methods[] = {
    {"pool_scores", pool_scores, METH_VARARGS,
     "pool_scores(window, pool, input_embeddings, output_embeddings, position_weights, "
     "scorable, out)\n--\n\n"
     "Write the personalized score of each pool slot into out (-inf for padding and\n"
     "unscorable items). window: item indices, current item first, -1 for empty slots."},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {
    PyModuleDef_HEAD_INIT, "recsvc._scoring",
    "The per-request arithmetic of recsvc.scoring, compiled (see recsvc/_scoring.c).", -1,
    methods,
};

PyMODINIT_FUNC PyInit__scoring(void) {
    if (PyType_Ready(&PoolRankerType) < 0) {
        return NULL;
    }
    PyObject *m = PyModule_Create(&module);
    if (m == NULL) {
        return NULL;
    }
    if (PyModule_AddObjectRef(m, "PoolRanker", (PyObject *)&PoolRankerType) < 0) {
        Py_DECREF(m);
        return NULL;
    }
    return m;
}
