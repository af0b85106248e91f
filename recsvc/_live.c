/*
 * recsvc._live: a request's live candidates gathered from what it read, compiled.
 *
 *   gather(lists, index, viewed)
 *       -> (known, known_strength, new, anchors, weights, strength, known_shares,
 *           new_shares, absent_shares)
 *
 * recsvc.live_candidates.gather documents the result; this is its arithmetic, in the same
 * order of operations, so the doubles are the ones the Python loop over the reply gave.
 * ``lists`` maps each item read to (factor, neighbours best first, stored scores); a
 * neighbour's co-visit count is its stored score times its list's factor. ``index`` maps
 * the items the bundle knows to their indices.
 *
 * Written in Python, these were some 150 dict operations and a dozen numpy calls per
 * request for 30 neighbours, the largest piece left of a ranking after the features were
 * compiled. Here each neighbour costs one lookup in a per-call dict and one in ``index``.
 *
 * The arrays come back as bytes: int32 ``known`` (bundle indices, strongest first: a stable
 * sort, so the read order breaks ties) with float64 ``known_strength``; ``new``, a list of
 * the ids the bundle does not know, in the same order, with float64 ``strength``; int32
 * ``anchors`` (sorted) and float64 ``weights`` (len(new) x len(anchors), row-major);
 * float32 ``known_shares`` and ``new_shares`` (n x 2); float32 ``absent_shares`` (2).
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

/* One distinct neighbour. */
typedef struct {
    PyObject *name; /* borrowed: a key of the call's slot dict */
    double strength, count[2];
    Py_ssize_t index; /* the bundle's index, or -1 */
} Neighbour;

/* A new neighbour's co-visit count with one anchor (a known item whose list held it). */
typedef struct {
    Py_ssize_t slot;
    int32_t anchor;
    double score;
} AnchorScore;

typedef struct {
    double strength;
    Py_ssize_t slot;
} Ranked;

/* Strongest first, then the first read (a stable sort of -strength). */
static int stronger_first(const void *a, const void *b) {
    const Ranked *x = a, *y = b;
    if (x->strength > y->strength) return -1;
    if (x->strength < y->strength) return 1;
    return (x->slot > y->slot) - (x->slot < y->slot);
}

static int by_anchor(const void *a, const void *b) {
    int32_t x = *(const int32_t *)a, y = *(const int32_t *)b;
    return (x > y) - (x < y);
}

/* The bundle index of ``name`` in ``index``, -1 when absent; -2 with an exception set. */
static Py_ssize_t index_of(PyObject *index, PyObject *name) {
    PyObject *value = PyDict_GetItemWithError(index, name);
    if (value == NULL) {
        return PyErr_Occurred() ? -2 : -1;
    }
    Py_ssize_t at = PyLong_AsSsize_t(value);
    if (at == -1 && PyErr_Occurred()) return -2;
    if (at < 0 || at > INT32_MAX) {
        PyErr_SetString(PyExc_ValueError, "index values must be item indices (0..2**31-1)");
        return -2;
    }
    return at;
}

/* Grows a buffer of ``*cap`` elements of ``size`` bytes to hold ``need``. */
static int reserve(void **buf, Py_ssize_t *cap, Py_ssize_t need, size_t size) {
    if (need <= *cap) return 0;
    Py_ssize_t grown = *cap > 0 ? *cap : 16;
    while (grown < need) grown *= 2;
    void *moved = PyMem_Realloc(*buf, grown * size);
    if (moved == NULL) {
        PyErr_NoMemory();
        return -1;
    }
    *buf = moved;
    *cap = grown;
    return 0;
}

/* The float32 share pairs of the ``n`` ranked neighbours that ``pick`` points at. */
static PyObject *shares_bytes(const Neighbour *nb, const Ranked *ranked, const Py_ssize_t *pick,
                              Py_ssize_t n, const double *total, const float *absent) {
    PyObject *out = PyBytes_FromStringAndSize(NULL, n * 2 * (Py_ssize_t)sizeof(float));
    if (out == NULL) return NULL;
    float *shares = (float *)PyBytes_AS_STRING(out);
    for (Py_ssize_t i = 0; i < n; i++) {
        const Neighbour *one = &nb[ranked[pick[i]].slot];
        for (int side = 0; side < 2; side++) {
            shares[2 * i + side] =
                total[side] > 0 ? (float)(one->count[side] / total[side]) : absent[side];
        }
    }
    return out;
}

static PyObject *gather(PyObject *module, PyObject *args) {
    PyObject *lists, *index, *viewed;
    if (!PyArg_ParseTuple(args, "O!O!U:gather", &PyDict_Type, &lists, &PyDict_Type, &index,
                          &viewed)) {
        return NULL;
    }
    PyObject *slots = PyDict_New(), *result = NULL, *new_names = NULL;
    Neighbour *nb = NULL;
    AnchorScore *pairs = NULL;
    Ranked *ranked = NULL;
    Py_ssize_t *pick = NULL;
    int32_t *anchors = NULL;
    Py_ssize_t n_nb = 0, nb_cap = 0, n_pairs = 0, pairs_cap = 0;
    double total[2] = {0.0, 0.0};
    if (slots == NULL) return NULL;

    PyObject *item, *entry;
    Py_ssize_t pos = 0;
    while (PyDict_Next(lists, &pos, &item, &entry)) {
        if (!PyTuple_Check(entry) || PyTuple_GET_SIZE(entry) != 3) {
            PyErr_SetString(PyExc_TypeError, "lists values must be (factor, names, scores)");
            goto done;
        }
        double factor = PyFloat_AsDouble(PyTuple_GET_ITEM(entry, 0));
        if (factor == -1.0 && PyErr_Occurred()) goto done;
        PyObject *names = PyTuple_GET_ITEM(entry, 1), *scores = PyTuple_GET_ITEM(entry, 2);
        if (!PyList_Check(names) || !PyList_Check(scores) ||
            PyList_GET_SIZE(names) != PyList_GET_SIZE(scores)) {
            PyErr_SetString(PyExc_ValueError, "each list needs as many scores as names");
            goto done;
        }
        Py_ssize_t anchor = index_of(index, item);
        if (anchor == -2) goto done;
        int side = PyUnicode_Check(item) ? PyUnicode_Compare(item, viewed) != 0 : 1;
        if (PyErr_Occurred()) goto done;
        for (Py_ssize_t j = 0; j < PyList_GET_SIZE(names); j++) {
            PyObject *name = PyList_GET_ITEM(names, j);
            double stored = PyFloat_AsDouble(PyList_GET_ITEM(scores, j));
            if (stored == -1.0 && PyErr_Occurred()) goto done;
            double score = stored * factor;
            PyObject *at = PyDict_GetItemWithError(slots, name);
            Py_ssize_t slot;
            if (at != NULL) {
                slot = PyLong_AsSsize_t(at);
            } else {
                if (PyErr_Occurred() || !PyUnicode_Check(name)) {
                    if (!PyErr_Occurred()) PyErr_SetString(PyExc_TypeError, "names must be str");
                    goto done;
                }
                if (reserve((void **)&nb, &nb_cap, n_nb + 1, sizeof(Neighbour))) goto done;
                slot = n_nb;
                PyObject *number = PyLong_FromSsize_t(slot);
                if (number == NULL || PyDict_SetItem(slots, name, number) < 0) {
                    Py_XDECREF(number);
                    goto done;
                }
                Py_DECREF(number);
                Py_ssize_t known = index_of(index, name);
                if (known == -2) goto done;
                nb[n_nb++] = (Neighbour){name, 0.0, {0.0, 0.0}, known};
            }
            nb[slot].strength += score;
            nb[slot].count[side] += score;
            total[side] += score;
            if (anchor >= 0 && nb[slot].index < 0) {
                /* A later count with the same anchor replaces the earlier one. */
                Py_ssize_t p = 0;
                while (p < n_pairs && !(pairs[p].slot == slot && pairs[p].anchor == anchor)) p++;
                if (p == n_pairs) {
                    if (reserve((void **)&pairs, &pairs_cap, n_pairs + 1, sizeof(AnchorScore))) {
                        goto done;
                    }
                    n_pairs++;
                }
                pairs[p] = (AnchorScore){slot, (int32_t)anchor, score};
            }
        }
    }
    /* The viewed item is never its own candidate. */
    Py_ssize_t viewed_slot = -1;
    PyObject *at = PyDict_GetItemWithError(slots, viewed);
    if (at != NULL) viewed_slot = PyLong_AsSsize_t(at);
    if (PyErr_Occurred()) goto done;

    float absent[2];
    for (int side = 0; side < 2; side++) absent[side] = total[side] > 0 ? 0.0f : NAN;
    ranked = PyMem_Malloc((n_nb > 0 ? n_nb : 1) * sizeof(Ranked));
    pick = PyMem_Malloc((n_nb > 0 ? n_nb : 1) * sizeof(Py_ssize_t));
    if (ranked == NULL || pick == NULL) {
        PyErr_NoMemory();
        goto done;
    }
    Py_ssize_t n_ranked = 0;
    for (Py_ssize_t s = 0; s < n_nb; s++) {
        if (s != viewed_slot) ranked[n_ranked++] = (Ranked){nb[s].strength, s};
    }
    qsort(ranked, n_ranked, sizeof(Ranked), stronger_first);

    /* Known first in pick[0..n_known), then the new ones in pick[n_known..n_ranked). */
    Py_ssize_t n_known = 0;
    for (Py_ssize_t r = 0; r < n_ranked; r++) {
        if (nb[ranked[r].slot].index >= 0) pick[n_known++] = r;
    }
    Py_ssize_t n_new = n_known;
    for (Py_ssize_t r = 0; r < n_ranked; r++) {
        if (nb[ranked[r].slot].index < 0) pick[n_new++] = r;
    }
    n_new -= n_known;

    /* The anchors of the new neighbours, sorted and distinct. */
    anchors = PyMem_Malloc((n_pairs > 0 ? n_pairs : 1) * sizeof(int32_t));
    if (anchors == NULL) {
        PyErr_NoMemory();
        goto done;
    }
    Py_ssize_t n_anchors = 0;
    for (Py_ssize_t p = 0; p < n_pairs; p++) {
        if (pairs[p].slot != viewed_slot) anchors[n_anchors++] = pairs[p].anchor;
    }
    qsort(anchors, n_anchors, sizeof(int32_t), by_anchor);
    Py_ssize_t distinct = 0;
    for (Py_ssize_t a = 0; a < n_anchors; a++) {
        if (distinct == 0 || anchors[a] != anchors[distinct - 1]) anchors[distinct++] = anchors[a];
    }
    n_anchors = distinct;

    PyObject *known = PyBytes_FromStringAndSize(NULL, n_known * (Py_ssize_t)sizeof(int32_t));
    PyObject *known_strength = PyBytes_FromStringAndSize(NULL, n_known * (Py_ssize_t)sizeof(double));
    PyObject *strength = PyBytes_FromStringAndSize(NULL, n_new * (Py_ssize_t)sizeof(double));
    PyObject *weights =
        PyBytes_FromStringAndSize(NULL, n_new * n_anchors * (Py_ssize_t)sizeof(double));
    PyObject *anchor_bytes = PyBytes_FromStringAndSize((const char *)anchors,
                                                       n_anchors * (Py_ssize_t)sizeof(int32_t));
    PyObject *absent_bytes = PyBytes_FromStringAndSize((const char *)absent, sizeof(absent));
    PyObject *known_shares = shares_bytes(nb, ranked, pick, n_known, total, absent);
    PyObject *new_shares = shares_bytes(nb, ranked, pick + n_known, n_new, total, absent);
    new_names = PyList_New(n_new);
    if (known == NULL || known_strength == NULL || strength == NULL || weights == NULL ||
        anchor_bytes == NULL || absent_bytes == NULL || known_shares == NULL ||
        new_shares == NULL || new_names == NULL) {
        Py_XDECREF(known);
        Py_XDECREF(known_strength);
        Py_XDECREF(strength);
        Py_XDECREF(weights);
        Py_XDECREF(anchor_bytes);
        Py_XDECREF(absent_bytes);
        Py_XDECREF(known_shares);
        Py_XDECREF(new_shares);
        goto done;
    }
    int32_t *known_out = (int32_t *)PyBytes_AS_STRING(known);
    double *known_strength_out = (double *)PyBytes_AS_STRING(known_strength);
    for (Py_ssize_t i = 0; i < n_known; i++) {
        const Neighbour *one = &nb[ranked[pick[i]].slot];
        known_out[i] = (int32_t)one->index;
        known_strength_out[i] = one->strength;
    }
    double *strength_out = (double *)PyBytes_AS_STRING(strength);
    double *weights_out = (double *)PyBytes_AS_STRING(weights);
    memset(weights_out, 0, n_new * n_anchors * sizeof(double));
    for (Py_ssize_t i = 0; i < n_new; i++) {
        Py_ssize_t slot = ranked[pick[n_known + i]].slot;
        strength_out[i] = nb[slot].strength;
        PyList_SET_ITEM(new_names, i, Py_NewRef(nb[slot].name));
        for (Py_ssize_t p = 0; p < n_pairs; p++) {
            if (pairs[p].slot != slot) continue;
            int32_t *found = bsearch(&pairs[p].anchor, anchors, n_anchors, sizeof(int32_t),
                                     by_anchor);
            weights_out[i * n_anchors + (found - anchors)] = pairs[p].score;
        }
    }
    result = PyTuple_Pack(9, known, known_strength, new_names, anchor_bytes, weights, strength,
                          known_shares, new_shares, absent_bytes);
    Py_DECREF(known);
    Py_DECREF(known_strength);
    Py_DECREF(strength);
    Py_DECREF(weights);
    Py_DECREF(anchor_bytes);
    Py_DECREF(absent_bytes);
    Py_DECREF(known_shares);
    Py_DECREF(new_shares);
done:
    Py_XDECREF(new_names);
    Py_DECREF(slots);
    PyMem_Free(nb);
    PyMem_Free(pairs);
    PyMem_Free(ranked);
    PyMem_Free(pick);
    PyMem_Free(anchors);
    return result;
}

static PyMethodDef methods[] = {
    {"gather", gather, METH_VARARGS,
     "gather(lists, index, viewed)\n--\n\n"
     "The live candidates of a request that viewed ``viewed``, as the tuple the module\n"
     "docstring describes (see recsvc.live_candidates.gather)."},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {
    PyModuleDef_HEAD_INIT, "recsvc._live",
    "A request's live candidates, gathered in C (see recsvc/_live.c).", -1, methods,
};

PyMODINIT_FUNC PyInit__live(void) {
    return PyModule_Create(&module);
}
