/*
 * recsvc._second_stage: the per-request work of the learned second stage, compiled.
 *
 * Written in numpy, gathering and describing a request's candidates took about seventy
 * small array calls and two V-SKNN passes, some 0.6 ms, every call paying numpy's dispatch
 * with cold caches. Here the same work is a few loops:
 *
 *   SessionKNN(items, offsets, by_item, item_offsets, idf)
 *       .scores(session, k, sample_size, cosine, idf_weight) -> (items bytes, scores bytes)
 *       V-SKNN / SKNN scores of one session over the training sessions (the CSR arrays of
 *       recsvc.session_knn.SessionIndex, whose docstring gives the maths): int32 items and
 *       their float64 scores, in no particular order. Each item's sims are summed over its
 *       neighbours in ascending session number, then multiplied by its idf factor, so a
 *       score is the same double whatever the build.
 *
 *   best_scored(items, scores, n) -> positions bytes
 *       The positions of the n best (item, score) entries, best first: higher score, then
 *       smaller item id (a bounded heap, no full sort).
 *
 *   top_positions(scores, n) -> positions bytes
 *       The same with the position as the item: numpy's argsort(-scores, kind="stable")[:n].
 *
 *   CandidateCore(pools, pool_sources)
 *       .build(current, rows, knn_items, knn_scores, knn_n, live, live_flag, knn_flag, cap)
 *       A request's candidates gathered from the bundle's pools and its other proposals
 *       (recsvc.candidates gives their order): first occurrences in order, each with the OR
 *       of the flags of all its occurrences, without padding (-1) and the current item; at
 *       most cap.
 *
 *   FeatureCore(pools, category, static, columns, source_column, source_bits, n_features,
 *               itemcf, item2vec, item2vec_known, visit_weights, input_embeddings,
 *               output_embeddings, position_weights, scorable, model_known, live_bit)
 *       .build(current, visits, items, flags, knn_items, knn_scores, out, window,
 *              live_items, live_shares, absent_shares)
 *       Writes every column of recsvc.features (which one goes where comes from
 *       ``columns``) for each candidate, recsvc.features documents what each means: the
 *       personalized model's columns with the arithmetic of _model.h (the bits of
 *       recsvc._scoring's scores), and the live shares of the candidates flagged live_bit.
 *
 * Lookups of items among a request's candidates go through a small open-addressing table
 * made per call (a few KB), so nothing grows with the catalogue and calls on different
 * threads share nothing; the GIL is held throughout (a call is tens of microseconds).
 */
#include "_model.h"
#include <stdint.h>

/* ---- ItemTable: item id -> dense index, in insertion order ---------------------------- */

typedef struct {
    int32_t *keys;   /* -1 empty */
    int32_t *index;  /* dense index of the key in that slot */
    int32_t *items;  /* dense index -> item, insertion order */
    Py_ssize_t mask, size, capacity;
} ItemTable;

static void table_free(ItemTable *t) {
    PyMem_Free(t->keys);
    PyMem_Free(t->index);
    PyMem_Free(t->items);
    t->keys = t->index = t->items = NULL;
}

/* A table for at most ``n`` keys; -1 with MemoryError set. */
static int table_init(ItemTable *t, Py_ssize_t n) {
    Py_ssize_t slots = 16;
    while (slots < 2 * n) {
        slots <<= 1;
    }
    t->keys = PyMem_Malloc(slots * sizeof(int32_t));
    t->index = PyMem_Malloc(slots * sizeof(int32_t));
    t->items = PyMem_Malloc((n > 0 ? n : 1) * sizeof(int32_t));
    if (t->keys == NULL || t->index == NULL || t->items == NULL) {
        table_free(t);
        PyErr_NoMemory();
        return -1;
    }
    memset(t->keys, 0xff, slots * sizeof(int32_t));
    t->mask = slots - 1;
    t->size = 0;
    t->capacity = n;
    return 0;
}

static inline Py_ssize_t table_slot(const ItemTable *t, int32_t key) {
    uint32_t h = (uint32_t)key * 0x9E3779B1u;
    Py_ssize_t slot = (Py_ssize_t)((h ^ (h >> 15)) & (uint32_t)t->mask);
    while (t->keys[slot] != -1 && t->keys[slot] != key) {
        slot = (slot + 1) & t->mask;
    }
    return slot;
}

/* Dense index of ``key``, or -1 when absent (always for a negative key: -1 marks empty). */
static inline Py_ssize_t table_find(const ItemTable *t, int32_t key) {
    if (key < 0) {
        return -1;
    }
    Py_ssize_t slot = table_slot(t, key);
    return t->keys[slot] == key ? t->index[slot] : -1;
}

/* Dense index of ``key``, added when new; the caller keeps size below capacity and gives
 * no negative key (every caller adds ids it has checked). */
static inline Py_ssize_t table_add(ItemTable *t, int32_t key, int *added) {
    Py_ssize_t slot = table_slot(t, key);
    *added = t->keys[slot] != key;
    if (*added) {
        t->keys[slot] = key;
        t->index[slot] = (int32_t)t->size;
        t->items[t->size++] = key;
    }
    return t->index[slot];
}

/* ---- helpers ------------------------------------------------------------------------ */

/* The ints of a sequence (Python ints or numpy integers) into a new array; NULL on error. */
static Py_ssize_t *sequence_ints(PyObject *obj, const char *name, Py_ssize_t *n) {
    PyObject *fast = PySequence_Fast(obj, name);
    if (fast == NULL) {
        return NULL;
    }
    *n = PySequence_Fast_GET_SIZE(fast);
    Py_ssize_t *out = PyMem_Malloc((*n > 0 ? *n : 1) * sizeof(Py_ssize_t));
    if (out == NULL) {
        Py_DECREF(fast);
        PyErr_NoMemory();
        return NULL;
    }
    for (Py_ssize_t i = 0; i < *n; i++) {
        out[i] = PyNumber_AsSsize_t(PySequence_Fast_GET_ITEM(fast, i), PyExc_OverflowError);
        if (out[i] == -1 && PyErr_Occurred()) {
            PyMem_Free(out);
            Py_DECREF(fast);
            return NULL;
        }
    }
    Py_DECREF(fast);
    return out;
}

/* (bytes, bytes) from two arrays; steals nothing, returns NULL on error. */
static PyObject *bytes_pair(const void *a, Py_ssize_t a_size, const void *b, Py_ssize_t b_size) {
    PyObject *first = PyBytes_FromStringAndSize(a, a_size);
    PyObject *second = first ? PyBytes_FromStringAndSize(b, b_size) : NULL;
    PyObject *pair = second ? PyTuple_Pack(2, first, second) : NULL;
    Py_XDECREF(first);
    Py_XDECREF(second);
    return pair;
}

/* The value of rank ``r`` (0 = largest) among ``n`` doubles, reordering ``v`` (quickselect). */
static double select_largest(double *v, Py_ssize_t n, Py_ssize_t r) {
    Py_ssize_t lo = 0, hi = n - 1;
    while (lo < hi) {
        double pivot = v[(lo + hi) / 2];
        Py_ssize_t i = lo, j = hi;
        while (i <= j) {
            while (v[i] > pivot) i++;
            while (v[j] < pivot) j--;
            if (i <= j) {
                double swap = v[i];
                v[i++] = v[j];
                v[j--] = swap;
            }
        }
        if (r <= j) {
            hi = j;
        } else if (r >= i) {
            lo = i;
        } else {
            break;
        }
    }
    return v[r];
}

/* ---- SessionKNN --------------------------------------------------------------------- */

typedef struct {
    PyObject_HEAD
    Py_buffer items, offsets, by_item, item_offsets, idf;
    Py_ssize_t n_items, n_sessions, total;
    int ready;
} SessionKNN;

static void SessionKNN_dealloc(SessionKNN *self) {
    PyBuffer_Release(&self->items);
    PyBuffer_Release(&self->offsets);
    PyBuffer_Release(&self->by_item);
    PyBuffer_Release(&self->item_offsets);
    PyBuffer_Release(&self->idf);
    Py_TYPE(self)->tp_free((PyObject *)self);
}

static int SessionKNN_init(SessionKNN *self, PyObject *args, PyObject *kwargs) {
    static char *names[] = {"items", "offsets", "by_item", "item_offsets", "idf", NULL};
    PyObject *items, *offsets, *by_item, *item_offsets, *idf;
    if (self->ready || self->items.obj != NULL) {
        PyErr_SetString(PyExc_RuntimeError, "a SessionKNN is initialised once");
        return -1;
    }
    if (!PyArg_ParseTupleAndKeywords(args, kwargs, "OOOOO:SessionKNN", names, &items, &offsets,
                                     &by_item, &item_offsets, &idf)) {
        return -1;
    }
    if (get_array(items, &self->items, "items", "i", 4, 1, 0) ||
        get_array(offsets, &self->offsets, "offsets", "lq", 8, 1, 0) ||
        get_array(by_item, &self->by_item, "by_item", "i", 4, 1, 0) ||
        get_array(item_offsets, &self->item_offsets, "item_offsets", "lq", 8, 1, 0) ||
        get_array(idf, &self->idf, "idf", "f", 4, 1, 0)) {
        return -1;
    }
    self->n_sessions = self->offsets.shape[0] - 1;
    self->n_items = self->idf.shape[0];
    self->total = self->items.shape[0];
    const int64_t *off = self->offsets.buf, *item_off = self->item_offsets.buf;
    /* The index is checked by SessionIndex; these are what the loops below rely on. */
    if (self->n_sessions < 0 || self->item_offsets.shape[0] != self->n_items + 1 ||
        self->by_item.shape[0] != self->total || off[0] != 0 ||
        off[self->n_sessions] != self->total || item_off[0] != 0 ||
        item_off[self->n_items] != self->total) {
        PyErr_SetString(PyExc_ValueError, "the session index arrays do not fit together");
        return -1;
    }
    for (Py_ssize_t s = 0; s < self->n_sessions; s++) {
        if (off[s + 1] < off[s]) {
            PyErr_SetString(PyExc_ValueError, "offsets must be non-decreasing");
            return -1;
        }
    }
    for (Py_ssize_t i = 0; i < self->n_items; i++) {
        if (item_off[i + 1] < item_off[i]) {
            PyErr_SetString(PyExc_ValueError, "item_offsets must be non-decreasing");
            return -1;
        }
    }
    const int32_t *it = self->items.buf, *by = self->by_item.buf;
    for (Py_ssize_t j = 0; j < self->total; j++) {
        if (it[j] < 0 || it[j] >= self->n_items || by[j] < 0 || by[j] >= self->n_sessions) {
            PyErr_SetString(PyExc_ValueError, "the session index holds ids out of range");
            return -1;
        }
    }
    self->ready = 1;
    return 0;
}

/* A current item's list of sessions, walked in the k-way merge. */
typedef struct {
    const int32_t *next, *end;
    double weight; /* 1 (cosine) or the item's position (vector) */
} Run;

static inline int run_before(const Run *a, const Run *b) {
    return *a->next < *b->next;
}

static void heap_down(Run *heap, Py_ssize_t n, Py_ssize_t i) {
    for (;;) {
        Py_ssize_t least = i, l = 2 * i + 1, r = l + 1;
        if (l < n && run_before(&heap[l], &heap[least])) least = l;
        if (r < n && run_before(&heap[r], &heap[least])) least = r;
        if (least == i) return;
        Run swap = heap[i];
        heap[i] = heap[least];
        heap[least] = swap;
        i = least;
    }
}

static PyObject *SessionKNN_scores(SessionKNN *self, PyObject *args) {
    PyObject *session_obj;
    Py_ssize_t k, sample_size;
    int cosine;
    double idf_weight;
    if (!PyArg_ParseTuple(args, "Onnpd:scores", &session_obj, &k, &sample_size, &cosine,
                          &idf_weight)) {
        return NULL;
    }
    if (!self->ready) {
        PyErr_SetString(PyExc_RuntimeError, "the SessionKNN was not initialised");
        return NULL;
    }
    if (k < 1 || sample_size < 1) {
        PyErr_SetString(PyExc_ValueError, "k and sample_size must be >= 1");
        return NULL;
    }
    if (sample_size > self->n_sessions) {
        sample_size = self->n_sessions > 0 ? self->n_sessions : 1; /* no more can be found */
    }
    Py_ssize_t n_raw;
    Py_ssize_t *session = sequence_ints(session_obj, "session must be a sequence of ints", &n_raw);
    if (session == NULL) {
        return NULL;
    }
    PyObject *result = NULL;
    Run *runs = NULL;
    int32_t *cand = NULL, *kept = NULL;
    double *overlap = NULL, *sims = NULL, *score = NULL;
    ItemTable distinct = {0}, found = {0};
    Py_ssize_t n = 0;
    for (Py_ssize_t i = 0; i < n_raw; i++) {
        if (session[i] >= 0 && session[i] < self->n_items) {
            session[n++] = session[i];
        }
    }
    if (n == 0 || self->n_sessions == 0) {
        result = bytes_pair("", 0, "", 0);
        goto done;
    }
    int32_t last_item = (int32_t)session[n - 1];
    /* Distinct items, newest last occurrence first; position L for the newest .. 1. */
    if (table_init(&distinct, n)) goto done;
    for (Py_ssize_t i = n - 1; i >= 0; i--) {
        int added;
        table_add(&distinct, (int32_t)session[i], &added);
    }
    Py_ssize_t L = distinct.size;
    runs = PyMem_Malloc(L * sizeof(Run));
    if (runs == NULL) {
        PyErr_NoMemory();
        goto done;
    }
    const int64_t *item_off = self->item_offsets.buf, *off = self->offsets.buf;
    const int32_t *by_item = self->by_item.buf, *items = self->items.buf;
    Py_ssize_t n_runs = 0;
    for (Py_ssize_t j = 0; j < L; j++) {
        int32_t item = distinct.items[j];
        int64_t start = item_off[item], length = item_off[item + 1] - start;
        if (length > sample_size) length = sample_size;
        if (length > 0) {
            runs[n_runs].next = by_item + start;
            runs[n_runs].end = by_item + start + length;
            runs[n_runs].weight = cosine ? 1.0 : (double)(L - j);
            n_runs++;
        }
    }
    /* 1-2. The sample_size most recent sessions holding a current item (smallest numbers,
     * merged from the runs), each with its overlap. */
    cand = PyMem_Malloc(sample_size * sizeof(int32_t));
    overlap = PyMem_Calloc(sample_size, sizeof(double));
    if (cand == NULL || overlap == NULL) {
        PyErr_NoMemory();
        goto done;
    }
    for (Py_ssize_t i = n_runs / 2 - 1; i >= 0; i--) heap_down(runs, n_runs, i);
    Py_ssize_t m = 0;
    while (n_runs > 0) {
        int32_t s = *runs[0].next;
        if (m == 0 || cand[m - 1] != s) {
            if (m == sample_size) break;
            cand[m++] = s;
        }
        overlap[m - 1] += runs[0].weight;
        if (++runs[0].next == runs[0].end) {
            runs[0] = runs[--n_runs];
        }
        heap_down(runs, n_runs, 0);
    }
    if (m == 0) {
        result = bytes_pair("", 0, "", 0);
        goto done;
    }
    sims = PyMem_Malloc(2 * m * sizeof(double));
    kept = PyMem_Malloc(m * sizeof(int32_t));
    if (sims == NULL || kept == NULL) {
        PyErr_NoMemory();
        goto done;
    }
    for (Py_ssize_t i = 0; i < m; i++) {
        if (cosine) {
            double size = (double)(off[cand[i] + 1] - off[cand[i]]);
            sims[i] = overlap[i] / sqrt((double)L * size);
        } else {
            sims[i] = overlap[i] / (double)L;
        }
    }
    /* 3. The k most similar (ties: the more recent, i.e. earlier in cand); sim 0 dropped. */
    double threshold = 0.0;
    Py_ssize_t at_threshold = m;  /* how many sims equal to the threshold may stay */
    if (m > k) {
        memcpy(sims + m, sims, m * sizeof(double));
        threshold = select_largest(sims + m, m, k - 1);
        Py_ssize_t above = 0;
        for (Py_ssize_t i = 0; i < m; i++) above += sims[i] > threshold;
        at_threshold = k - above;
    }
    Py_ssize_t n_kept = 0, gathered = 0;
    for (Py_ssize_t i = 0; i < m; i++) {
        int keep = sims[i] > 0 && (m <= k || sims[i] > threshold ||
                                   (sims[i] == threshold && at_threshold-- > 0));
        if (keep) {
            sims[n_kept] = sims[i];
            kept[n_kept++] = cand[i];
            gathered += off[cand[i] + 1] - off[cand[i]];
        }
    }
    /* 4. Each neighbour's sim added to its items, neighbours in ascending number. */
    if (table_init(&found, gathered)) goto done;
    score = PyMem_Calloc(gathered > 0 ? gathered : 1, sizeof(double));
    if (score == NULL) {
        PyErr_NoMemory();
        goto done;
    }
    for (Py_ssize_t i = 0; i < n_kept; i++) {
        for (int64_t j = off[kept[i]]; j < off[kept[i] + 1]; j++) {
            int added;
            score[table_add(&found, items[j], &added)] += sims[i];
        }
    }
    /* 5. idf, then not the current item and only positive scores (compacted in place). */
    const float *idf = self->idf.buf;
    Py_ssize_t out = 0;
    for (Py_ssize_t e = 0; e < found.size; e++) {
        int32_t item = found.items[e];
        double value = score[e];
        if (idf_weight != 0.0) {
            value *= 1.0 + idf_weight * (double)idf[item];
        }
        if (item != last_item && value > 0) {
            found.items[out] = item;
            score[out++] = value;
        }
    }
    result = bytes_pair(found.items, out * sizeof(int32_t), score, out * sizeof(double));
done:
    PyMem_Free(session);
    PyMem_Free(runs);
    PyMem_Free(cand);
    PyMem_Free(kept);
    PyMem_Free(overlap);
    PyMem_Free(sims);
    PyMem_Free(score);
    table_free(&distinct);
    table_free(&found);
    return result;
}

static PyMethodDef SessionKNN_methods[] = {
    {"scores", (PyCFunction)SessionKNN_scores, METH_VARARGS,
     "scores(session, k, sample_size, cosine, idf_weight)\n--\n\n"
     "(int32 items, float64 scores) as bytes, in no particular order: the session-kNN\n"
     "scores of one session (item ids oldest first, the current item last)."},
    {NULL, NULL, 0, NULL},
};

static PyTypeObject SessionKNNType = {
    PyVarObject_HEAD_INIT(NULL, 0).tp_name = "recsvc._second_stage.SessionKNN",
    .tp_doc = PyDoc_STR("SessionKNN(items, offsets, by_item, item_offsets, idf)\n--\n\n"
                        "The training sessions of recsvc.session_knn.SessionIndex, scored "
                        "per request."),
    .tp_basicsize = sizeof(SessionKNN),
    .tp_flags = Py_TPFLAGS_DEFAULT,
    .tp_new = PyType_GenericNew,
    .tp_init = (initproc)SessionKNN_init,
    .tp_dealloc = (destructor)SessionKNN_dealloc,
    .tp_methods = SessionKNN_methods,
};

/* ---- best_scored ------------------------------------------------------------------ */

/* Is entry a better than b: a higher score, or the same and a smaller item id? A NaN score
 * is below every number (as numpy's argsort(-scores) places it). */
static inline int better(const double *score, const int32_t *item, int64_t a, int64_t b) {
    double x = score[a], y = score[b];
    if (x > y || (isnan(y) && !isnan(x))) return 1;
    return (x == y || (isnan(x) && isnan(y))) && item[a] < item[b];
}

/* Sift entry ``i`` of a heap whose top is its worst entry. */
static void worst_down(int64_t *heap, Py_ssize_t n, Py_ssize_t i, const double *score,
                       const int32_t *item) {
    for (;;) {
        Py_ssize_t worst = i, l = 2 * i + 1, r = l + 1;
        if (l < n && better(score, item, heap[worst], heap[l])) worst = l;
        if (r < n && better(score, item, heap[worst], heap[r])) worst = r;
        if (worst == i) return;
        int64_t swap = heap[i];
        heap[i] = heap[worst];
        heap[worst] = swap;
        i = worst;
    }
}

/* Writes the positions of the at most n best of the m entries into ``heap`` (room for
 * min(n, m)), best first; returns how many. */
static Py_ssize_t best_positions(const int32_t *item, const double *score, Py_ssize_t m,
                                 Py_ssize_t n, int64_t *heap) {
    Py_ssize_t size = 0, cap = n < m ? n : m;
    /* The cap best in a heap with the worst on top, then drained worst first. */
    for (Py_ssize_t j = 0; j < m && cap > 0; j++) {
        if (size < cap) {
            heap[size++] = j;
            for (Py_ssize_t i = size / 2 - 1; size == cap && i >= 0; i--) {
                worst_down(heap, size, i, score, item);
            }
        } else if (better(score, item, j, heap[0])) {
            heap[0] = j;
            worst_down(heap, size, 0, score, item);
        }
    }
    for (Py_ssize_t end = size - 1; end > 0; end--) {
        int64_t swap = heap[0];
        heap[0] = heap[end];
        heap[end] = swap;
        worst_down(heap, end, 0, score, item);
    }
    /* Draining put the worst last: heap[0..size) is now best first. */
    return size;
}

static PyObject *best_scored(PyObject *module, PyObject *args) {
    PyObject *items_obj, *scores_obj;
    Py_ssize_t n;
    if (!PyArg_ParseTuple(args, "OOn:best_scored", &items_obj, &scores_obj, &n)) {
        return NULL;
    }
    Py_buffer items_buf = {0}, scores_buf = {0};
    if (get_array(items_obj, &items_buf, "items", "i", 4, 1, 0)) {
        return NULL;
    }
    if (get_array(scores_obj, &scores_buf, "scores", "d", 8, 1, 0)) {
        PyBuffer_Release(&items_buf);
        return NULL;
    }
    PyObject *result = NULL;
    int64_t *heap = NULL;
    Py_ssize_t m = items_buf.shape[0];
    if (scores_buf.shape[0] != m) {
        PyErr_SetString(PyExc_ValueError, "scores must have one entry per item");
        goto done;
    }
    if (n < 0) {
        PyErr_SetString(PyExc_ValueError, "n must not be negative");
        goto done;
    }
    Py_ssize_t cap = n < m ? n : m;
    heap = PyMem_Malloc((cap > 0 ? cap : 1) * sizeof(int64_t));
    if (heap == NULL) {
        PyErr_NoMemory();
        goto done;
    }
    Py_ssize_t size = best_positions(items_buf.buf, scores_buf.buf, m, n, heap);
    result = PyBytes_FromStringAndSize((const char *)heap, size * sizeof(int64_t));
done:
    PyMem_Free(heap);
    PyBuffer_Release(&items_buf);
    PyBuffer_Release(&scores_buf);
    return result;
}

static PyObject *top_positions(PyObject *module, PyObject *args) {
    PyObject *scores_obj;
    Py_ssize_t n;
    if (!PyArg_ParseTuple(args, "On:top_positions", &scores_obj, &n)) {
        return NULL;
    }
    if (n < 0) {
        PyErr_SetString(PyExc_ValueError, "n must not be negative");
        return NULL;
    }
    Py_buffer scores = {0};
    if (get_array(scores_obj, &scores, "scores", "d", 8, 1, 0)) {
        return NULL;
    }
    PyObject *result = NULL;
    Py_ssize_t m = scores.shape[0], cap = n < m ? n : m;
    int32_t *position = NULL;
    int64_t *heap = NULL;
    if (m > INT32_MAX) {
        PyErr_SetString(PyExc_ValueError, "top_positions ranks at most 2**31 - 1 scores");
        goto done;
    }
    position = PyMem_Malloc((m > 0 ? m : 1) * sizeof(int32_t));
    heap = PyMem_Malloc((cap > 0 ? cap : 1) * sizeof(int64_t));
    if (position == NULL || heap == NULL) {
        PyErr_NoMemory();
        goto done;
    }
    for (Py_ssize_t j = 0; j < m; j++) position[j] = (int32_t)j;
    Py_ssize_t size = best_positions(position, scores.buf, m, n, heap);
    result = PyBytes_FromStringAndSize((const char *)heap, size * sizeof(int64_t));
done:
    PyMem_Free(position);
    PyMem_Free(heap);
    PyBuffer_Release(&scores);
    return result;
}

/* ---- CandidateCore ------------------------------------------------------------------ */

typedef struct {
    PyObject_HEAD
    Py_buffer pools, sources; /* int32 and uint8, both (n_items, width) */
    int ready;
} CandidateCore;

static void CandidateCore_dealloc(CandidateCore *self) {
    PyBuffer_Release(&self->pools);
    PyBuffer_Release(&self->sources);
    Py_TYPE(self)->tp_free((PyObject *)self);
}

static int CandidateCore_init(CandidateCore *self, PyObject *args, PyObject *kwargs) {
    static char *names[] = {"pools", "pool_sources", NULL};
    PyObject *pools, *sources;
    if (self->ready || self->pools.obj != NULL) {
        PyErr_SetString(PyExc_RuntimeError, "a CandidateCore is initialised once");
        return -1;
    }
    if (!PyArg_ParseTupleAndKeywords(args, kwargs, "OO:CandidateCore", names, &pools, &sources)) {
        return -1;
    }
    if (get_array(pools, &self->pools, "pools", "i", 4, 2, 0) ||
        get_array(sources, &self->sources, "pool_sources", "B", 1, 2, 0)) {
        return -1;
    }
    if (self->sources.shape[0] != self->pools.shape[0] ||
        self->sources.shape[1] != self->pools.shape[1]) {
        PyErr_SetString(PyExc_ValueError, "pool_sources must have the shape of pools");
        return -1;
    }
    self->ready = 1;
    return 0;
}

/* Adds ``c`` proposals to a merge: each item's first place, with the OR of the flags of all
 * its proposals (``flags``, or ``flag`` for all of them); padding and ``current`` left out. */
static void merge_add(ItemTable *table, unsigned char *merged, const int32_t *items,
                      const unsigned char *flags, unsigned char flag, Py_ssize_t c,
                      Py_ssize_t current) {
    for (Py_ssize_t i = 0; i < c; i++) {
        if (items[i] < 0 || items[i] == current) continue;
        int added;
        merged[table_add(table, items[i], &added)] |= flags != NULL ? flags[i] : flag;
    }
}

static PyObject *CandidateCore_build(CandidateCore *self, PyObject *args) {
    Py_ssize_t current, knn_n, cap;
    PyObject *rows_obj, *knn_items_obj, *knn_scores_obj, *live_obj;
    unsigned char live_flag, knn_flag;
    if (!PyArg_ParseTuple(args, "nOOOnObbn:build", &current, &rows_obj, &knn_items_obj,
                          &knn_scores_obj, &knn_n, &live_obj, &live_flag, &knn_flag, &cap)) {
        return NULL;
    }
    if (!self->ready) {
        PyErr_SetString(PyExc_RuntimeError, "the CandidateCore was not initialised");
        return NULL;
    }
    const Py_ssize_t n_items = self->pools.shape[0], P = self->pools.shape[1];
    if (current < 0 || current >= n_items) {
        PyErr_Format(PyExc_IndexError, "current item %zd is outside 0..%zd", current,
                     n_items - 1);
        return NULL;
    }
    if (knn_n < 0 || cap < 0) {
        PyErr_SetString(PyExc_ValueError, "knn_n and cap must not be negative");
        return NULL;
    }
    Py_buffer knn_items = {0}, knn_scores = {0}, live = {0};
    Py_ssize_t n_rows = 0, *rows = NULL;
    int64_t *best = NULL;
    unsigned char *merged = NULL;
    ItemTable table = {0};
    PyObject *result = NULL;
    int has_knn = knn_items_obj != Py_None, has_live = live_obj != Py_None;
    if ((has_knn && (get_array(knn_items_obj, &knn_items, "knn_items", "i", 4, 1, 0) ||
                     get_array(knn_scores_obj, &knn_scores, "knn_scores", "d", 8, 1, 0))) ||
        (has_live && get_array(live_obj, &live, "live", "i", 4, 1, 0))) {
        goto done;
    }
    if (has_knn && knn_scores.shape[0] != knn_items.shape[0]) {
        PyErr_SetString(PyExc_ValueError, "knn_scores must have one entry per knn item");
        goto done;
    }
    rows = sequence_ints(rows_obj, "rows must be a sequence of ints", &n_rows);
    if (rows == NULL) goto done;
    for (Py_ssize_t r = 0; r < n_rows; r++) {
        if (rows[r] < 0 || rows[r] >= n_items) {
            PyErr_Format(PyExc_IndexError, "row %zd is outside 0..%zd", rows[r], n_items - 1);
            goto done;
        }
    }
    Py_ssize_t n_knn = has_knn ? knn_items.shape[0] : 0, n_live = has_live ? live.shape[0] : 0;
    n_knn = n_knn < knn_n ? n_knn : knn_n;
    Py_ssize_t total = P * (1 + n_rows) + n_live + n_knn;
    best = PyMem_Malloc((n_knn > 0 ? n_knn : 1) * sizeof(int64_t));
    merged = PyMem_Calloc(total > 0 ? total : 1, 1);
    if (best == NULL || merged == NULL) {
        PyErr_NoMemory();
        goto done;
    }
    if (table_init(&table, total)) goto done;
    const int32_t *pools = self->pools.buf;
    const unsigned char *sources = self->sources.buf;
    merge_add(&table, merged, pools + current * P, sources + current * P, 0, P, current);
    if (has_live) merge_add(&table, merged, live.buf, NULL, live_flag, n_live, current);
    if (n_knn > 0) {
        const int32_t *keys = knn_items.buf;
        Py_ssize_t found = best_positions(keys, knn_scores.buf, knn_items.shape[0], n_knn, best);
        for (Py_ssize_t j = 0; j < found; j++) {
            merge_add(&table, merged, keys + best[j], NULL, knn_flag, 1, current);
        }
    }
    for (Py_ssize_t r = 0; r < n_rows; r++) {
        merge_add(&table, merged, pools + rows[r] * P, sources + rows[r] * P, 0, P, current);
    }
    Py_ssize_t kept = table.size < cap ? table.size : cap;
    result = bytes_pair(table.items, kept * sizeof(int32_t), merged, kept);
done:
    table_free(&table);
    PyMem_Free(rows);
    PyMem_Free(best);
    PyMem_Free(merged);
    PyBuffer_Release(&knn_items);
    PyBuffer_Release(&knn_scores);
    PyBuffer_Release(&live);
    return result;
}

static PyMethodDef CandidateCore_methods[] = {
    {"build", (PyCFunction)CandidateCore_build, METH_VARARGS,
     "build(current, rows, knn_items, knn_scores, knn_n, live, live_flag, knn_flag, cap)\n"
     "--\n\n"
     "(items bytes, flags bytes): int32 candidates and their uint8 source flags (first\n"
     "occurrences, each with the OR of all its flags, without -1 and current; at most cap)\n"
     "from, in this order: pool ``current`` with its sources,\n"
     "``live`` (int32, or None) flagged live_flag, the knn_n best of knn_items/knn_scores\n"
     "(int32/float64, or None; best_scored's order) flagged knn_flag, and the pools of\n"
     "``rows`` with their sources."},
    {NULL, NULL, 0, NULL},
};

static PyTypeObject CandidateCoreType = {
    PyVarObject_HEAD_INIT(NULL, 0).tp_name = "recsvc._second_stage.CandidateCore",
    .tp_basicsize = sizeof(CandidateCore),
    .tp_flags = Py_TPFLAGS_DEFAULT,
    .tp_doc = "One bundle's pools, from which a request's candidates are merged.",
    .tp_new = PyType_GenericNew,
    .tp_init = (initproc)CandidateCore_init,
    .tp_dealloc = (destructor)CandidateCore_dealloc,
    .tp_methods = CandidateCore_methods,
};

/* The columns FeatureCore writes, by name (recsvc.features.FEATURES gives their places). */
enum {
    C_ITEMCF_CURRENT, C_ITEMCF_SESSION, C_ITEM2VEC_CURRENT, C_ITEM2VEC_SESSION, C_VSKNN,
    C_POPULARITY, C_RECENT, C_AGE, C_SAME_CATEGORY, C_CATEGORY_SHARE, C_POOL_POSITION,
    C_SESSION_LENGTH, C_PERSONALIZED, C_PERSONALIZED_ITEM, C_SCORABLE, C_LIVE_CURRENT,
    C_LIVE_SESSION, C_N
};
static const char *const column_names[C_N] = {
    "itemcf_current", "itemcf_session", "item2vec_current", "item2vec_session", "vsknn",
    "log_popularity", "log_recent_clicks", "age_days", "same_category",
    "session_category_share", "pool_position", "session_length", "personalized",
    "personalized_item", "scorable", "live_current", "live_session",
};
#define MAX_SOURCES 8

typedef struct {
    PyObject_HEAD
    Py_buffer pools, category, statics, itemcf, item2vec, known, visit_weights, model_known;
    Model model;
    int has_itemcf, has_item2vec, has_weights, has_model, ready;
    unsigned char live_bit;
    Py_ssize_t n_items, width, dim, n_features, n_weights, n_sources, source_column;
    Py_ssize_t column[C_N];
    unsigned char source_bits[MAX_SOURCES];
} FeatureCore;

static void FeatureCore_dealloc(FeatureCore *self) {
    PyBuffer_Release(&self->pools);
    PyBuffer_Release(&self->category);
    PyBuffer_Release(&self->statics);
    PyBuffer_Release(&self->itemcf);
    PyBuffer_Release(&self->item2vec);
    PyBuffer_Release(&self->known);
    PyBuffer_Release(&self->visit_weights);
    PyBuffer_Release(&self->model_known);
    if (self->has_model) release_model(&self->model);
    Py_TYPE(self)->tp_free((PyObject *)self);
}

static int FeatureCore_init(FeatureCore *self, PyObject *args, PyObject *kwargs) {
    static char *names[] = {"pools", "category", "static", "columns", "source_column",
                            "source_bits", "n_features", "itemcf", "item2vec",
                            "item2vec_known", "visit_weights", "input_embeddings",
                            "output_embeddings", "position_weights", "scorable", "model_known",
                            "live_bit", NULL};
    PyObject *pools, *category, *statics, *columns, *source_bits, *itemcf = Py_None,
             *item2vec = Py_None, *known = Py_None, *weights = Py_None, *input = Py_None,
             *output = Py_None, *position_weights = Py_None, *scorable = Py_None,
             *model_known = Py_None;
    Py_ssize_t source_column, n_features;
    unsigned char live_bit = 0;
    if (self->ready || self->pools.obj != NULL) {
        PyErr_SetString(PyExc_RuntimeError, "a FeatureCore is initialised once");
        return -1;
    }
    if (!PyArg_ParseTupleAndKeywords(args, kwargs, "OOOOnOn|OOOOOOOOOb:FeatureCore", names,
                                     &pools, &category, &statics, &columns, &source_column,
                                     &source_bits, &n_features, &itemcf, &item2vec, &known,
                                     &weights, &input, &output, &position_weights, &scorable,
                                     &model_known, &live_bit)) {
        return -1;
    }
    if (get_array(pools, &self->pools, "pools", "i", 4, 2, 0) ||
        get_array(category, &self->category, "category", "i", 4, 1, 0) ||
        get_array(statics, &self->statics, "static", "f", 4, 2, 0)) {
        return -1;
    }
    self->n_items = self->pools.shape[0];
    self->width = self->pools.shape[1];
    self->n_features = n_features;
    if (self->category.shape[0] != self->n_items || self->statics.shape[0] != self->n_items ||
        self->statics.shape[1] != 3) {
        PyErr_SetString(PyExc_ValueError,
                        "category and static (n_items, 3) need one row per pool row");
        return -1;
    }
    if (!PyDict_Check(columns)) {
        PyErr_SetString(PyExc_TypeError, "columns must be a dict of feature name -> column");
        return -1;
    }
    for (int c = 0; c < C_N; c++) {
        PyObject *at = PyDict_GetItemString(columns, column_names[c]);
        self->column[c] = at ? PyLong_AsSsize_t(at) : -1;
        if (self->column[c] < 0 || self->column[c] >= n_features) {
            if (!PyErr_Occurred()) {
                PyErr_Format(PyExc_ValueError, "columns has no valid place for %s",
                             column_names[c]);
            }
            return -1;
        }
    }
    Py_buffer bits = {0};
    if (get_array(source_bits, &bits, "source_bits", "B", 1, 1, 0)) {
        return -1;
    }
    self->n_sources = bits.shape[0];
    if (self->n_sources > MAX_SOURCES) {
        PyBuffer_Release(&bits);
        PyErr_SetString(PyExc_ValueError, "at most 8 source bits");
        return -1;
    }
    memcpy(self->source_bits, bits.buf, self->n_sources);
    PyBuffer_Release(&bits);
    self->source_column = source_column;
    if (source_column < 0 || source_column + self->n_sources > n_features) {
        PyErr_SetString(PyExc_ValueError, "the source columns do not fit in n_features");
        return -1;
    }
    self->has_itemcf = itemcf != Py_None;
    if (self->has_itemcf) {
        if (get_array(itemcf, &self->itemcf, "itemcf", "f", 4, 2, 0)) return -1;
        if (self->itemcf.shape[0] != self->n_items || self->itemcf.shape[1] != self->width) {
            PyErr_SetString(PyExc_ValueError, "itemcf must have the shape of pools");
            return -1;
        }
    }
    self->has_item2vec = item2vec != Py_None;
    if (self->has_item2vec) {
        if (get_array(item2vec, &self->item2vec, "item2vec", "f", 4, 2, 0) ||
            get_array(known, &self->known, "item2vec_known", "?B", 1, 1, 0)) {
            return -1;
        }
        if (self->item2vec.shape[0] != self->n_items || self->known.shape[0] != self->n_items) {
            PyErr_SetString(PyExc_ValueError, "item2vec and item2vec_known need one row per item");
            return -1;
        }
        self->dim = self->item2vec.shape[1];
    }
    self->has_weights = weights != Py_None;
    if (self->has_weights) {
        if (get_array(weights, &self->visit_weights, "visit_weights", "d", 8, 1, 0)) return -1;
        self->n_weights = self->visit_weights.shape[0];
    }
    if (input != Py_None) {
        if (acquire_model(&self->model, input, output, position_weights, scorable)) return -1;
        self->has_model = 1;
        if (self->model.n_items != self->n_items || !self->model.have_scorable ||
            self->model.weights.shape[0] < 1 ||
            get_array(model_known, &self->model_known, "model_known", "?B", 1, 1, 0)) {
            if (!PyErr_Occurred()) {
                PyErr_SetString(PyExc_ValueError,
                                "the model needs one embedding per item, a position "
                                "weight, scorable and model_known");
            }
            return -1;
        }
        if (self->model_known.shape[0] != self->n_items) {
            PyErr_SetString(PyExc_ValueError, "model_known needs one entry per item");
            return -1;
        }
    }
    self->live_bit = live_bit;
    self->ready = 1;
    return 0;
}

static float norm(const float *v, Py_ssize_t d) {
    return sqrtf(dot(v, v, d));
}

/* A request's per-candidate sums, one entry per distinct candidate. */
typedef struct {
    int32_t *stamp, *slot0, *live;
    float *cf0, *cos0, *knn, *cand_norm, *window_score, *item_score;
    double *cf_num, *cf_den, *cos_num, *cos_den;
} Scratch;

static void scratch_free(Scratch *s) {
    PyMem_Free(s->stamp);
    PyMem_Free(s->cf_num);
    s->stamp = NULL;
    s->cf_num = NULL;
}

static int scratch_init(Scratch *s, Py_ssize_t u) {
    Py_ssize_t n = u > 0 ? u : 1;
    s->stamp = PyMem_Calloc(n, 3 * sizeof(int32_t) + 6 * sizeof(float));
    s->cf_num = PyMem_Calloc(4 * n, sizeof(double));
    if (s->stamp == NULL || s->cf_num == NULL) {
        scratch_free(s);
        PyErr_NoMemory();
        return -1;
    }
    s->slot0 = s->stamp + n;
    s->live = s->slot0 + n;
    s->cf0 = (float *)(s->live + n);
    s->cos0 = s->cf0 + n;
    s->knn = s->cos0 + n;
    s->cand_norm = s->knn + n;
    s->window_score = s->cand_norm + n;
    s->item_score = s->window_score + n;
    s->cf_den = s->cf_num + n;
    s->cos_num = s->cf_den + n;
    s->cos_den = s->cos_num + n;
    for (Py_ssize_t e = 0; e < n; e++) {
        s->slot0[e] = s->live[e] = -1;
        s->cf0[e] = s->cos0[e] = NAN;
    }
    return 0;
}

/* Norm of an item's item2vec vector, NaN when unknown or 0. */
static inline float vector_norm(const FeatureCore *self, int32_t item) {
    const unsigned char *known = self->known.buf;
    float n = norm((const float *)self->item2vec.buf + (Py_ssize_t)item * self->dim, self->dim);
    return known[item] && n > 0 ? n : NAN;
}

static inline float mean_or_nan(double num, double den) {
    return den > 0 ? (float)(num / den) : NAN;
}

static PyObject *FeatureCore_build(FeatureCore *self, PyObject *args) {
    Py_ssize_t current;
    PyObject *visits_obj, *items_obj, *flags_obj, *knn_items_obj, *knn_scores_obj, *out_obj,
        *window_obj = Py_None, *live_items_obj = Py_None, *live_shares_obj = Py_None,
        *absent_obj = Py_None;
    if (!PyArg_ParseTuple(args, "nOOOOOO|OOOO:build", &current, &visits_obj, &items_obj,
                          &flags_obj, &knn_items_obj, &knn_scores_obj, &out_obj, &window_obj,
                          &live_items_obj, &live_shares_obj, &absent_obj)) {
        return NULL;
    }
    if (!self->ready) {
        PyErr_SetString(PyExc_RuntimeError, "the FeatureCore was not initialised");
        return NULL;
    }
    Py_ssize_t n_items = self->n_items;
    if (current < 0 || current >= n_items) {
        PyErr_Format(PyExc_IndexError, "current item %zd is outside 0..%zd", current,
                     n_items - 1);
        return NULL;
    }
    Py_buffer items_buf = {0}, flags_buf = {0}, knn_items = {0}, knn_scores = {0}, out_buf = {0},
              live_items = {0}, live_shares = {0}, absent = {0};
    int has_knn = knn_items_obj != Py_None, has_live = live_items_obj != Py_None;
    Py_ssize_t n_visits = 0, *visits = NULL, *rows = NULL, n_window = 0, *window = NULL;
    double *weights = NULL;
    float *user = NULL, *ref_norms = NULL;
    PyObject *result = NULL;
    ItemTable table = {0};
    Scratch scratch = {0};
    if (get_array(items_obj, &items_buf, "items", "i", 4, 1, 0)) return NULL;
    if (get_array(flags_obj, &flags_buf, "flags", "B", 1, 1, 0) ||
        get_array(out_obj, &out_buf, "out", "f", 4, 2, 1) ||
        (has_knn && (get_array(knn_items_obj, &knn_items, "knn_items", "i", 4, 1, 0) ||
                     get_array(knn_scores_obj, &knn_scores, "knn_scores", "d", 8, 1, 0))) ||
        (has_live && (get_array(live_items_obj, &live_items, "live_items", "i", 4, 1, 0) ||
                      get_array(live_shares_obj, &live_shares, "live_shares", "f", 4, 2, 0))) ||
        (absent_obj != Py_None && get_array(absent_obj, &absent, "absent_shares", "f", 4, 1, 0))) {
        goto done;
    }
    if ((has_live && (live_shares.shape[0] != live_items.shape[0] || live_shares.shape[1] != 2)) ||
        (absent_obj != Py_None && absent.shape[0] != 2)) {
        PyErr_SetString(PyExc_ValueError,
                        "live_shares needs two columns per live item, absent_shares two values");
        goto done;
    }
    if (window_obj != Py_None && !self->has_model) {
        PyErr_SetString(PyExc_ValueError, "a window needs a model; this FeatureCore has none");
        goto done;
    }
    const Py_ssize_t c = items_buf.shape[0], F = self->n_features, P = self->width;
    if (flags_buf.shape[0] != c || out_buf.shape[0] != c || out_buf.shape[1] != F ||
        (has_knn && knn_scores.shape[0] != knn_items.shape[0])) {
        PyErr_SetString(PyExc_ValueError,
                        "flags and out need one row per candidate, out n_features columns, "
                        "knn_scores one per knn item");
        goto done;
    }
    const int32_t *items = items_buf.buf;
    const unsigned char *flags = flags_buf.buf;
    float *out = out_buf.buf;
    for (Py_ssize_t i = 0; i < c; i++) {
        if (items[i] < 0 || items[i] >= n_items) {
            PyErr_Format(PyExc_IndexError, "candidate %d is outside 0..%zd", items[i],
                         n_items - 1);
            goto done;
        }
    }
    visits = sequence_ints(visits_obj, "visits must be a sequence of ints", &n_visits);
    rows = PyMem_Malloc((n_visits + 1) * sizeof(Py_ssize_t));
    weights = PyMem_Malloc((n_visits + 1) * sizeof(double));
    ref_norms = PyMem_Malloc((n_visits + 1) * sizeof(float));
    if (visits == NULL || rows == NULL || weights == NULL || ref_norms == NULL) {
        if (!PyErr_Occurred()) PyErr_NoMemory();
        goto done;
    }
    if (self->has_model) {
        user = PyMem_Calloc(self->model.d > 0 ? self->model.d : 1, sizeof(float));
        if (user == NULL) {
            PyErr_NoMemory();
            goto done;
        }
    }
    if (window_obj != Py_None) {
        window = sequence_ints(window_obj, "window must be a sequence of ints", &n_window);
        if (window == NULL) goto done;
        if (n_window > self->model.weights.shape[0]) {
            PyErr_Format(PyExc_ValueError, "window has %zd slots, position_weights only %zd",
                         n_window, self->model.weights.shape[0]);
            goto done;
        }
        for (Py_ssize_t j = 0; j < n_window; j++) {
            if (window[j] >= n_items) {
                PyErr_Format(PyExc_IndexError, "window item %zd is outside 0..%zd", window[j],
                             n_items - 1);
                goto done;
            }
            if (window[j] < 0) window[j] = -1;
        }
    }
    /* The current item's row, then the weighted visits' rows with their weights. */
    const double *slot_weights = self->has_weights ? self->visit_weights.buf : NULL;
    const int32_t *category = self->category.buf;
    Py_ssize_t m = 0, known_visits = 0, n_seen = 0;
    rows[m] = current;
    weights[m++] = 0.0;
    for (Py_ssize_t j = 0; j < n_visits; j++) {
        Py_ssize_t v = visits[j];
        if (v < 0 || v >= n_items) continue;
        known_visits++;
        if (category[v] >= 0) visits[n_seen++] = category[v]; /* reused for categories */
        if (slot_weights != NULL && (j >= self->n_weights || !(slot_weights[j] > 0))) continue;
        rows[m] = v;
        weights[m++] = slot_weights != NULL ? slot_weights[j] : 1.0;
    }

    for (Py_ssize_t x = 0; x < c * F; x++) out[x] = NAN;
    if (c == 0) {
        result = Py_NewRef(Py_None);
        goto done;
    }
    if (table_init(&table, c)) goto done;
    for (Py_ssize_t i = 0; i < c; i++) {
        int added;
        table_add(&table, items[i], &added);
    }
    const Py_ssize_t u = table.size;
    if (scratch_init(&scratch, u)) goto done;
    /* Ask for every candidate's scattered rows before using any: on a busy server none is
     * in cache, and waiting for them one at a time is most of the cost. */
    const float *statics = self->statics.buf;
    for (Py_ssize_t e = 0; e < u; e++) {
        Py_ssize_t item = table.items[e];
        __builtin_prefetch(statics + item * 3);
        __builtin_prefetch(category + item);
        if (self->has_item2vec) {
            const char *row = (const char *)((const float *)self->item2vec.buf + item * self->dim);
            for (Py_ssize_t byte = 0; byte < self->dim * (Py_ssize_t)sizeof(float); byte += 64) {
                __builtin_prefetch(row + byte);
            }
            __builtin_prefetch((const unsigned char *)self->known.buf + item);
        }
    }
    if (self->has_model) model_prefetch(&self->model, table.items, u);

    /* Pool slots: each distinct candidate's first slot in each row's pool, with item-CF. */
    const int32_t *pools = self->pools.buf;
    const float *itemcf = self->has_itemcf ? self->itemcf.buf : NULL;
    for (Py_ssize_t r = 0; r < m; r++) {
        const int32_t *pool = pools + rows[r] * P;
        for (Py_ssize_t s = 0; s < P; s++) {
            if (pool[s] < 0) continue;
            Py_ssize_t e = table_find(&table, pool[s]);
            if (e < 0 || scratch.stamp[e] == r + 1) continue;
            scratch.stamp[e] = (int32_t)(r + 1);
            float value = itemcf != NULL ? itemcf[rows[r] * P + s] : NAN;
            if (r == 0) {
                scratch.slot0[e] = (int32_t)s;
                scratch.cf0[e] = value;
            } else if (!isnan(value)) {
                scratch.cf_num[e] += weights[r] * (double)value;
                scratch.cf_den[e] += weights[r];
            }
        }
    }
    /* item2vec cosines to the current item and the weighted visits. */
    if (self->has_item2vec) {
        const float *vectors = self->item2vec.buf;
        Py_ssize_t d = self->dim;
        for (Py_ssize_t e = 0; e < u; e++) {
            scratch.cand_norm[e] = vector_norm(self, table.items[e]);
        }
        /* Candidate by candidate, so that each row is read once for all the m references
         * (they stay in L1); each sum still adds the references in their order. */
        for (Py_ssize_t r = 0; r < m; r++) ref_norms[r] = vector_norm(self, (int32_t)rows[r]);
        for (Py_ssize_t e = 0; e < u; e++) {
            if (isnan(scratch.cand_norm[e])) continue;
            const float *candidate = vectors + (Py_ssize_t)table.items[e] * d;
            for (Py_ssize_t r = 0; r < m; r++) {
                if (isnan(ref_norms[r])) continue;
                float cosine = dot(vectors + rows[r] * d, candidate, d) /
                               (ref_norms[r] * scratch.cand_norm[e]);
                if (r == 0) {
                    scratch.cos0[e] = cosine;
                } else if (!isnan(cosine)) {
                    scratch.cos_num[e] += weights[r] * (double)cosine;
                    scratch.cos_den[e] += weights[r];
                }
            }
        }
    }
    if (has_knn) {
        const int32_t *keys = knn_items.buf;
        const double *values = knn_scores.buf;
        for (Py_ssize_t e = 0; e < u; e++) scratch.knn[e] = 0.0f;
        for (Py_ssize_t j = 0; j < knn_items.shape[0]; j++) {
            Py_ssize_t e = table_find(&table, keys[j]);
            if (e >= 0) scratch.knn[e] = (float)values[j];
        }
    }
    if (has_live) {
        const int32_t *keys = live_items.buf;
        for (Py_ssize_t j = 0; j < live_items.shape[0]; j++) {
            Py_ssize_t e = table_find(&table, keys[j]);
            if (e >= 0 && scratch.live[e] < 0) scratch.live[e] = (int32_t)j; /* the first */
        }
    }
    /* The model's scores of each distinct candidate, for the window and for the current
     * item alone; NaN where it cannot score (-inf). */
    float *window_score = NULL, *item_score = NULL;
    if (self->has_model) {
        const Model *model = &self->model;
        const unsigned char *model_known = self->model_known.buf;
        if (window != NULL && model_user(model, window, n_window, user) > 0) {
            window_score = scratch.window_score;
            for (Py_ssize_t e = 0; e < u; e++) {
                float value = model_score(model, user, table.items[e]);
                window_score[e] = isinf(value) && value < 0 ? NAN : value;
            }
        }
        if (model_known[current]) {
            Py_ssize_t alone = current;
            memset(user, 0, model->d * sizeof(float));
            model_user(model, &alone, 1, user);
            item_score = scratch.item_score;
            for (Py_ssize_t e = 0; e < u; e++) {
                float value = model_score(model, user, table.items[e]);
                item_score[e] = isinf(value) && value < 0 ? NAN : value;
            }
        }
    }

    /* The rows. */
    const Py_ssize_t *col = self->column;
    int32_t own = category[current];
    for (Py_ssize_t i = 0; i < c; i++) {
        float *row = out + i * F;
        int32_t item = items[i];
        Py_ssize_t e = table_find(&table, item);
        if (scratch.slot0[e] >= 0) {
            row[col[C_POOL_POSITION]] = (float)((double)scratch.slot0[e] / (double)P);
        }
        if (itemcf != NULL) {
            row[col[C_ITEMCF_CURRENT]] = scratch.cf0[e];
            row[col[C_ITEMCF_SESSION]] = mean_or_nan(scratch.cf_num[e], scratch.cf_den[e]);
        }
        if (self->has_item2vec) {
            row[col[C_ITEM2VEC_CURRENT]] = scratch.cos0[e];
            row[col[C_ITEM2VEC_SESSION]] = mean_or_nan(scratch.cos_num[e], scratch.cos_den[e]);
        }
        if (has_knn) {
            row[col[C_VSKNN]] = scratch.knn[e];
        }
        const float *own_statics = statics + (Py_ssize_t)item * 3;
        row[col[C_POPULARITY]] = own_statics[0];
        row[col[C_RECENT]] = own_statics[1];
        row[col[C_AGE]] = own_statics[2];
        int32_t own_category = category[item];
        if (own >= 0 && own_category >= 0) {
            row[col[C_SAME_CATEGORY]] = own_category == own ? 1.0f : 0.0f;
        }
        if (n_seen > 0 && own_category >= 0) {
            Py_ssize_t same = 0;
            for (Py_ssize_t j = 0; j < n_seen; j++) same += visits[j] == own_category;
            row[col[C_CATEGORY_SHARE]] = (float)((double)same / (double)n_seen);
        }
        for (Py_ssize_t b = 0; b < self->n_sources; b++) {
            row[self->source_column + b] = (flags[i] & self->source_bits[b]) ? 1.0f : 0.0f;
        }
        row[col[C_SESSION_LENGTH]] = (float)known_visits;
        if (window_score != NULL) row[col[C_PERSONALIZED]] = window_score[e];
        if (item_score != NULL) row[col[C_PERSONALIZED_ITEM]] = item_score[e];
        if (self->has_model) {
            row[col[C_SCORABLE]] = ((const unsigned char *)self->model.scorable.buf)[item] ? 1.0f
                                                                                           : 0.0f;
        }
        if (absent_obj != Py_None) {
            row[col[C_LIVE_CURRENT]] = ((const float *)absent.buf)[0];
            row[col[C_LIVE_SESSION]] = ((const float *)absent.buf)[1];
        }
        if (has_live && (flags[i] & self->live_bit) && scratch.live[e] >= 0) {
            const float *shares = (const float *)live_shares.buf + 2 * (Py_ssize_t)scratch.live[e];
            row[col[C_LIVE_CURRENT]] = shares[0];
            row[col[C_LIVE_SESSION]] = shares[1];
        }
    }
    result = Py_NewRef(Py_None);
done:
    PyMem_Free(visits);
    PyMem_Free(rows);
    PyMem_Free(weights);
    PyMem_Free(window);
    PyMem_Free(user);
    PyMem_Free(ref_norms);
    scratch_free(&scratch);
    table_free(&table);
    PyBuffer_Release(&items_buf);
    PyBuffer_Release(&flags_buf);
    PyBuffer_Release(&out_buf);
    PyBuffer_Release(&knn_items);
    PyBuffer_Release(&knn_scores);
    PyBuffer_Release(&live_items);
    PyBuffer_Release(&live_shares);
    PyBuffer_Release(&absent);
    return result;
}

static PyMethodDef FeatureCore_methods[] = {
    {"build", (PyCFunction)FeatureCore_build, METH_VARARGS,
     "build(current, visits, items, flags, knn_items, knn_scores, out, window=None,\n"
     "      live_items=None, live_shares=None, absent_shares=None)\n--\n\n"
     "Write the feature columns of each candidate into out (float32\n"
     "(len(items), n_features)); every other column is set to NaN. visits: the earlier\n"
     "visits, newest first, -1 unknown; knn_items/knn_scores: int32/float64 V-SKNN scores,\n"
     "or None (the vsknn column stays NaN); window: the model's window (current item\n"
     "first, -1 empty), or None (the model's columns stay NaN); live_items/live_shares:\n"
     "int32 (n,) and float32 (n, 2), the shares of the live neighbours, given to the\n"
     "candidates flagged live_bit; absent_shares: float32 (2,), the other candidates'."},
    {NULL, NULL, 0, NULL},
};

static PyTypeObject FeatureCoreType = {
    PyVarObject_HEAD_INIT(NULL, 0).tp_name = "recsvc._second_stage.FeatureCore",
    .tp_doc = PyDoc_STR("FeatureCore(pools, category, static, columns, source_column, "
                        "source_bits, n_features, itemcf=None, item2vec=None, "
                        "item2vec_known=None, visit_weights=None, input_embeddings=None, "
                        "output_embeddings=None, position_weights=None, scorable=None, "
                        "model_known=None, live_bit=0)\n--\n\n"
                        "One bundle's arrays for the second stage's features (see "
                        "recsvc.features)."),
    .tp_basicsize = sizeof(FeatureCore),
    .tp_flags = Py_TPFLAGS_DEFAULT,
    .tp_new = PyType_GenericNew,
    .tp_init = (initproc)FeatureCore_init,
    .tp_dealloc = (destructor)FeatureCore_dealloc,
    .tp_methods = FeatureCore_methods,
};

static PyMethodDef methods[] = {
    {"best_scored", best_scored, METH_VARARGS,
     "best_scored(items, scores, n)\n--\n\n"
     "int64 positions, as bytes, of the at most n entries with the highest scores, best\n"
     "first (equal scores: the smaller item id first)."},
    {"top_positions", top_positions, METH_VARARGS,
     "top_positions(scores, n)\n--\n\n"
     "int64 positions, as bytes, of the at most n highest of the float64 scores, best\n"
     "first: np.argsort(-scores, kind='stable')[:n] (equal scores keep their order, NaN\n"
     "last), without sorting them all."},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {
    PyModuleDef_HEAD_INIT, "recsvc._second_stage",
    "The second stage's per-request work, compiled (see recsvc/_second_stage.c).", -1,
    methods,
};

PyMODINIT_FUNC PyInit__second_stage(void) {
    if (PyType_Ready(&SessionKNNType) < 0 || PyType_Ready(&FeatureCoreType) < 0 ||
        PyType_Ready(&CandidateCoreType) < 0) {
        return NULL;
    }
    PyObject *m = PyModule_Create(&module);
    if (m == NULL) {
        return NULL;
    }
    if (PyModule_AddObjectRef(m, "SessionKNN", (PyObject *)&SessionKNNType) < 0 ||
        PyModule_AddObjectRef(m, "FeatureCore", (PyObject *)&FeatureCoreType) < 0 ||
        PyModule_AddObjectRef(m, "CandidateCore", (PyObject *)&CandidateCoreType) < 0) {
        Py_DECREF(m);
        return NULL;
    }
    return m;
}
