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
 *   forest_scores(features, split_feature, threshold, decision_type, left_child,
 *                 right_child, leaf_value, tree_node_offset, tree_leaf_offset, out)
 *       Adds, tree after tree, the leaf value each row of ``features`` reaches in each tree
 *       of a LightGBM forest (recsvc.forest flattens its text model) to ``out``: its raw
 *       score, decided as LightGBM decides numerical splits (see forest_step), and
 *       summed in LightGBM's order, so the same double as Booster.predict(raw_score=True).
 *       It checks and packs the forest on every call (some 80 µs for 150 trees of 31
 *       leaves);
 *
 *   PackedForest(split_feature, threshold, decision_type, left_child, right_child,
 *                leaf_value, tree_node_offset, tree_leaf_offset, n_features)
 *       .scores(features, out)
 *       does so once, for the server: each call then only walks the trees.
 *
 * Arrays come in through the buffer protocol (numpy arrays, memory-mapped bundle arrays),
 * so no numpy headers are needed to build.  Floating-point sums have a fixed order (eight
 * lanes, then a fixed pairing; setup.py builds with -ffp-contract=off, so no fused
 * multiply-add changes the rounding), so a result does not depend on the CPU, and the
 * offline evaluation (pool_scores) and the server (PoolRanker) share one scoring function
 * (score_pool), so a served score is the offline one bit for bit.
 */
#include "_model.h"

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
    Py_ssize_t *items = NULL;
    Py_ssize_t width = PySequence_Fast_GET_SIZE(window);
    if (width > m->weights.shape[0]) {
        PyErr_Format(PyExc_ValueError, "window has %zd slots, position_weights only %zd", width,
                     m->weights.shape[0]);
        goto done;
    }
    user = PyMem_Calloc(d > 0 ? d : 1, sizeof(float));
    items = PyMem_Malloc((width > 0 ? width : 1) * sizeof(Py_ssize_t));
    if (user == NULL || items == NULL) {
        PyErr_NoMemory();
        goto done;
    }
    model_prefetch(m, p, c);
    for (Py_ssize_t slot = 0; slot < width; slot++) {
        Py_ssize_t item = PyNumber_AsSsize_t(PySequence_Fast_GET_ITEM(window, slot),
                                             PyExc_OverflowError);  /* numpy ints too */
        if (item == -1 && PyErr_Occurred()) {
            goto done;
        }
        if (item >= n_items) {
            PyErr_Format(PyExc_IndexError, "window item %zd is out of range for %zd items", item,
                         n_items);
            goto done;
        }
        items[slot] = item < 0 ? -1 : item;
    }
    model_user(m, items, width, user);
    for (Py_ssize_t i = 0; i < c; i++) {
        if (p[i] >= n_items) {
            PyErr_Format(PyExc_IndexError, "pool item %d is out of range for %zd items", p[i],
                         n_items);
            goto done;
        }
        out[i] = model_score(m, user, p[i]);
    }
    status = 0;
done:
    PyMem_Free(user);
    PyMem_Free(items);
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

/* ---- forest_scores: a LightGBM forest's raw score per row ---------------------------- */

/* LightGBM's decision_type bits (include/LightGBM/tree.h): 1 categorical, 2 default left,
 * (>> 2) & 3 the missing type: 0 None, 1 Zero, 2 NaN. */
#define DT_CATEGORICAL 1
#define DT_DEFAULT_LEFT 2
#define MISSING_NONE 0
#define MISSING_ZERO 1
#define MISSING_NAN 2
/* LightGBM's kZeroThreshold (1e-35f): its dense predictor drops the features within it of
 * zero, so they reach the trees as exactly 0. */
#define ZERO_THRESHOLD 1e-35f

/* A split as the walk reads it: 16 bytes, four to a cache line. ``feature`` carries flags
 * above FOREST_FEATURE_MASK; ``threshold`` is a float such that, for every float x,
 * x <= threshold exactly when LightGBM sends x left by its double threshold (see
 * pack_threshold), so the rows are compared as they come, without widening to double. */
typedef struct {
    float threshold;
    int32_t feature;
    int32_t child[2]; /* left, right: a later node of the tree, or ~leaf */
} ForestNode;

#define FOREST_FEATURE_MASK 0x0FFFFFFF
#define FOREST_NAN_LEFT (1 << 30)     /* NaN goes left */
#define FOREST_ZERO_MISSING (1 << 29) /* missing type Zero: 0 takes the default side */
#define FOREST_DEFAULT_LEFT (1 << 28) /* the default side is left */

/* The float threshold of a split on ``threshold`` (double): the largest float at most
 * ``threshold``, except near zero, where LightGBM compares 0 for any |x| <= ZERO_THRESHOLD,
 * so that whole band must fall on the side 0 falls on. NaN stays NaN: nothing goes left
 * by comparison, as in LightGBM. */
static float pack_threshold(double threshold) {
    if (threshold >= -(double)ZERO_THRESHOLD && threshold < 0.0) {
        return -nextafterf(ZERO_THRESHOLD, INFINITY); /* the band, and 0, go right */
    }
    if (threshold >= 0.0 && threshold < (double)ZERO_THRESHOLD) {
        return ZERO_THRESHOLD; /* the band, and 0, go left */
    }
    float f = (float)threshold;
    if ((double)f > threshold) {
        f = nextafterf(f, -INFINITY);
    }
    return f;
}

/* Tree::NumericalDecision on the value LightGBM's predictor hands it: NaN is 0 unless the
 * missing type is NaN; a missing value (NaN for type NaN, NaN or 0 for type Zero) takes the
 * default side; any other goes left when x <= threshold. No branches (a split is a coin
 * toss to the branch predictor); zero_missing is a constant in each caller. */
static inline int32_t forest_step(const ForestNode *node, const float *row, int zero_missing) {
    int32_t flags = node->feature;
    float x = row[flags & FOREST_FEATURE_MASK];
    int left = (x <= node->threshold) | ((x != x) & ((flags & FOREST_NAN_LEFT) != 0));
    if (zero_missing) {
        int zero = fabsf(x) <= ZERO_THRESHOLD && (flags & FOREST_ZERO_MISSING);
        left = zero ? (flags & FOREST_DEFAULT_LEFT) != 0 : left;
    }
    return node->child[!left];
}

/* Rows walked down one tree side by side, so that the CPU overlaps their walks: each walks
 * ``depth`` steps, staying on its leaf once there. */
#define FOREST_BLOCK 8

static inline void forest_tree(const float *x, Py_ssize_t n_rows, Py_ssize_t n_features,
                               const ForestNode *nodes, int32_t depth, const double *leaf,
                               double *scores, int zero_missing) {
    Py_ssize_t r = 0;
    for (; r + FOREST_BLOCK <= n_rows; r += FOREST_BLOCK) {
        const float *rows = x + r * n_features;
        int32_t at[FOREST_BLOCK] = {0};
        for (int32_t d = 0; d < depth; d++) {
            for (int b = 0; b < FOREST_BLOCK; b++) {
                int32_t node = at[b] & ~(at[b] >> 31); /* a leaf's row reads node 0 */
                int32_t next = forest_step(nodes + node, rows + b * n_features, zero_missing);
                at[b] = at[b] < 0 ? at[b] : next;
            }
        }
        for (int b = 0; b < FOREST_BLOCK; b++) {
            scores[r + b] += leaf[~at[b]];
        }
    }
    for (; r < n_rows; r++) {
        const float *row = x + r * n_features;
        int32_t node = 0;
        while (node >= 0) {
            node = forest_step(nodes + node, row, zero_missing);
        }
        scores[r] += leaf[~node];
    }
}

enum { F_SPLIT, F_THRESHOLD, F_TYPE, F_LEFT, F_RIGHT, F_LEAF, F_NODE_OFFSET, F_LEAF_OFFSET, F_N };

static const char *const forest_names[F_N] = {
    "split_feature", "threshold",        "decision_type",   "left_child",
    "right_child",   "leaf_value",       "tree_node_offset", "tree_leaf_offset",
};

/* A forest checked and packed for walking, in memory of its own (one block). */
typedef struct {
    Py_ssize_t n_trees, n_features;
    ForestNode *nodes;   /* every tree's, tree after tree */
    double *leaf;        /* every tree's leaf values */
    int32_t *node_offset, *leaf_offset; /* n_trees + 1 */
    int32_t *depth;      /* steps to each tree's deepest leaf; bit 31: it has a Zero split */
} Packed;

/* Checks the arrays ``a`` describe a forest that walks safely on ``n_features`` columns,
 * and packs it into ``p`` (whose ``nodes`` block the caller frees with PyMem_Free). Offsets
 * run from 0 to the arrays' lengths, never decreasing; each tree has n leaves and n - 1
 * nodes; features are in range; splits are numerical; every child is a later node of its
 * tree or one of its leaves, so that every walk ends, inside the arrays, after at most
 * ``depth`` steps. */
static int pack_forest(Py_buffer *a, Py_ssize_t n_features, Packed *p) {
    Py_ssize_t n_nodes = a[F_SPLIT].shape[0], n_leaves = a[F_LEAF].shape[0];
    Py_ssize_t n_offsets = a[F_NODE_OFFSET].shape[0];
    const int32_t *split = a[F_SPLIT].buf, *type = a[F_TYPE].buf, *left = a[F_LEFT].buf,
                  *right = a[F_RIGHT].buf, *node_offset = a[F_NODE_OFFSET].buf,
                  *leaf_offset = a[F_LEAF_OFFSET].buf;
    const double *threshold = a[F_THRESHOLD].buf;
    memset(p, 0, sizeof(*p));
    if (n_features > FOREST_FEATURE_MASK) {
        PyErr_Format(PyExc_ValueError, "%zd features, at most %d are supported", n_features,
                     FOREST_FEATURE_MASK);
        return -1;
    }
    for (int i = F_THRESHOLD; i <= F_RIGHT; i++) {
        if (a[i].shape[0] != n_nodes) {
            PyErr_Format(PyExc_ValueError, "%s has %zd entries, split_feature %zd",
                         forest_names[i], a[i].shape[0], n_nodes);
            return -1;
        }
    }
    if (n_offsets < 1 || a[F_LEAF_OFFSET].shape[0] != n_offsets) {
        PyErr_SetString(PyExc_ValueError, "tree_node_offset and tree_leaf_offset must have "
                                          "the same length, one more than the trees");
        return -1;
    }
    if (node_offset[0] != 0 || leaf_offset[0] != 0 || node_offset[n_offsets - 1] != n_nodes ||
        leaf_offset[n_offsets - 1] != n_leaves) {
        PyErr_SetString(PyExc_ValueError, "the tree offsets must run from 0 to the lengths "
                                          "of the node and leaf arrays");
        return -1;
    }
    Py_ssize_t n_trees = n_offsets - 1;
    for (Py_ssize_t t = 0; t < n_trees; t++) { /* first all offsets: none past the arrays */
        if (node_offset[t + 1] < node_offset[t] || leaf_offset[t + 1] < leaf_offset[t]) {
            PyErr_Format(PyExc_ValueError, "the tree offsets decrease at tree %zd", t);
            return -1;
        }
    }
    /* One block: nodes, leaf values, the offsets, depths, and each node's depth (scratch). */
    char *memory = PyMem_Malloc(n_nodes * sizeof(ForestNode) + n_leaves * sizeof(double) +
                                (3 * n_offsets + n_nodes) * sizeof(int32_t) + 1);
    if (memory == NULL) {
        PyErr_NoMemory();
        return -1;
    }
    p->n_trees = n_trees;
    p->n_features = n_features;
    p->nodes = (ForestNode *)memory;
    p->leaf = (double *)(memory + n_nodes * sizeof(ForestNode));
    p->node_offset = (int32_t *)(p->leaf + n_leaves);
    p->leaf_offset = p->node_offset + n_offsets;
    p->depth = p->leaf_offset + n_offsets;
    int32_t *node_depth = p->depth + n_offsets;
    memcpy(p->leaf, a[F_LEAF].buf, n_leaves * sizeof(double));
    memcpy(p->node_offset, node_offset, n_offsets * sizeof(int32_t));
    memcpy(p->leaf_offset, leaf_offset, n_offsets * sizeof(int32_t));
    for (Py_ssize_t t = 0; t < n_trees; t++) {
        Py_ssize_t first = node_offset[t], n = (Py_ssize_t)node_offset[t + 1] - first;
        Py_ssize_t leaves = (Py_ssize_t)leaf_offset[t + 1] - leaf_offset[t];
        if (n != leaves - 1) {
            PyErr_Format(PyExc_ValueError,
                         "tree %zd has %zd leaves and %zd nodes (by the offsets); a tree has "
                         "one node less than leaves",
                         t, leaves, n);
            goto fail;
        }
        int32_t deepest = 0, flags = 0;
        int32_t *level = node_depth + first; /* steps from the root to each node */
        if (n > 0) {
            level[0] = 0;
        }
        for (Py_ssize_t j = 0; j < n; j++) {
            Py_ssize_t i = first + j;
            if (split[i] < 0 || split[i] >= n_features) {
                PyErr_Format(PyExc_ValueError, "tree %zd node %zd splits on feature %d of %zd",
                             t, j, split[i], n_features);
                goto fail;
            }
            int missing = (type[i] >> 2) & 3, default_left = (type[i] & DT_DEFAULT_LEFT) != 0;
            if ((type[i] & ~0xF) || (type[i] & DT_CATEGORICAL) || missing == 3) {
                PyErr_Format(PyExc_ValueError,
                             "tree %zd node %zd has decision_type %d: only numerical splits "
                             "(missing type None, Zero or NaN) are supported",
                             t, j, type[i]);
                goto fail;
            }
            int32_t children[2] = {left[i], right[i]};
            for (int c = 0; c < 2; c++) {
                int32_t child = children[c];
                if (child >= 0 ? (child <= j || child >= n) : ~child >= leaves) {
                    PyErr_Format(PyExc_ValueError,
                                 "tree %zd node %zd has child %d: neither a later node of its "
                                 "%zd nor one of its %zd leaves",
                                 t, j, child, n, leaves);
                    goto fail;
                }
                if (child >= 0) {
                    level[child] = level[j] + 1;
                } else if (level[j] + 1 > deepest) {
                    deepest = level[j] + 1;
                }
            }
            int nan_left = missing == MISSING_NONE ? 0.0 <= threshold[i] : default_left;
            p->nodes[i].threshold = pack_threshold(threshold[i]);
            p->nodes[i].feature = split[i] | (nan_left ? FOREST_NAN_LEFT : 0) |
                                  (missing == MISSING_ZERO ? FOREST_ZERO_MISSING : 0) |
                                  (default_left ? FOREST_DEFAULT_LEFT : 0);
            p->nodes[i].child[0] = left[i];
            p->nodes[i].child[1] = right[i];
            flags |= missing == MISSING_ZERO ? (int32_t)0x80000000 : 0;
        }
        p->depth[t] = deepest | flags;
    }
    return 0;
fail:
    PyMem_Free(memory);
    memset(p, 0, sizeof(*p));
    return -1;
}

/* Acquires the eight arrays of a forest from ``objs`` (in forest_names order) and packs
 * them; the buffers are released either way. */
static int acquire_forest(PyObject *const *objs, Py_ssize_t n_features, Packed *p) {
    Py_buffer a[F_N] = {{0}};
    int acquired = 0, status = -1;
    for (; acquired < F_N; acquired++) {
        int is_double = acquired == F_THRESHOLD || acquired == F_LEAF;
        if (get_array(objs[acquired], &a[acquired], forest_names[acquired],
                      is_double ? "d" : "i", is_double ? 8 : 4, 1, 0)) {
            break;
        }
    }
    if (acquired == F_N) {
        status = pack_forest(a, n_features, p);
    }
    for (int i = 0; i < acquired; i++) {
        PyBuffer_Release(&a[i]);
    }
    return status;
}

/* Adds each row's raw score to ``scores``: tree after tree, so that each row's sum has
 * LightGBM's order (GBDT::PredictRaw). Needs no GIL. */
static void walk_forest(const Packed *p, const float *x, Py_ssize_t n_rows, double *scores) {
    for (Py_ssize_t t = 0; t < p->n_trees; t++) {
        const ForestNode *tree = p->nodes + p->node_offset[t];
        const double *leaf = p->leaf + p->leaf_offset[t];
        int32_t steps = p->depth[t] & 0x7FFFFFFF;
        if (p->node_offset[t + 1] == p->node_offset[t]) { /* a single leaf */
            for (Py_ssize_t r = 0; r < n_rows; r++) {
                scores[r] += leaf[0];
            }
        } else if (p->depth[t] < 0) {
            forest_tree(x, n_rows, p->n_features, tree, steps, leaf, scores, 1);
        } else {
            forest_tree(x, n_rows, p->n_features, tree, steps, leaf, scores, 0);
        }
    }
}

/* Acquires features (float32, n_rows x n_features) and out (float64, n_rows, writable). */
static int acquire_rows(PyObject *features_obj, PyObject *out_obj, Py_buffer *features,
                        Py_buffer *out) {
    if (get_array(features_obj, features, "features", "f", 4, 2, 0)) {
        return -1;
    }
    if (get_array(out_obj, out, "out", "d", 8, 1, 1)) {
        PyBuffer_Release(features);
        return -1;
    }
    if (out->shape[0] != features->shape[0]) {
        PyErr_Format(PyExc_ValueError, "out has %zd entries for %zd rows", out->shape[0],
                     features->shape[0]);
        PyBuffer_Release(features);
        PyBuffer_Release(out);
        return -1;
    }
    return 0;
}

static PyObject *forest_scores(PyObject *self, PyObject *args) {
    PyObject *features_obj, *out_obj, *objs[F_N];
    if (!PyArg_ParseTuple(args, "OOOOOOOOOO:forest_scores", &features_obj, &objs[F_SPLIT],
                          &objs[F_THRESHOLD], &objs[F_TYPE], &objs[F_LEFT], &objs[F_RIGHT],
                          &objs[F_LEAF], &objs[F_NODE_OFFSET], &objs[F_LEAF_OFFSET], &out_obj)) {
        return NULL;
    }
    Py_buffer features = {0}, out = {0};
    Packed packed;
    if (acquire_rows(features_obj, out_obj, &features, &out)) {
        return NULL;
    }
    PyObject *result = NULL;
    if (acquire_forest(objs, features.shape[1], &packed) == 0) {
        Py_BEGIN_ALLOW_THREADS
        walk_forest(&packed, features.buf, features.shape[0], out.buf);
        Py_END_ALLOW_THREADS
        PyMem_Free(packed.nodes);
        result = Py_NewRef(Py_None);
    }
    PyBuffer_Release(&features);
    PyBuffer_Release(&out);
    return result;
}

/* ---- PackedForest: a forest checked and packed once, scored per request -------------- */

typedef struct {
    PyObject_HEAD
    Packed packed;
    int ready;
} PackedForest;

static void PackedForest_dealloc(PackedForest *self) {
    PyMem_Free(self->packed.nodes);
    Py_TYPE(self)->tp_free((PyObject *)self);
}

static int PackedForest_init(PackedForest *self, PyObject *args, PyObject *kwargs) {
    static char *names[] = {"split_feature",    "threshold",  "decision_type",
                            "left_child",       "right_child", "leaf_value",
                            "tree_node_offset", "tree_leaf_offset", "n_features", NULL};
    PyObject *objs[F_N];
    Py_ssize_t n_features;
    if (self->ready) {
        PyErr_SetString(PyExc_RuntimeError, "a PackedForest is initialised once");
        return -1;
    }
    if (!PyArg_ParseTupleAndKeywords(args, kwargs, "OOOOOOOOn:PackedForest", names,
                                     &objs[F_SPLIT], &objs[F_THRESHOLD], &objs[F_TYPE],
                                     &objs[F_LEFT], &objs[F_RIGHT], &objs[F_LEAF],
                                     &objs[F_NODE_OFFSET], &objs[F_LEAF_OFFSET], &n_features)) {
        return -1;
    }
    if (n_features < 0) {
        PyErr_SetString(PyExc_ValueError, "n_features must not be negative");
        return -1;
    }
    if (acquire_forest(objs, n_features, &self->packed)) {
        return -1;
    }
    self->ready = 1;
    return 0;
}

static PyObject *PackedForest_scores(PackedForest *self, PyObject *args) {
    PyObject *features_obj, *out_obj;
    if (!PyArg_ParseTuple(args, "OO:scores", &features_obj, &out_obj)) {
        return NULL;
    }
    if (!self->ready) {
        PyErr_SetString(PyExc_RuntimeError, "the PackedForest was not initialised");
        return NULL;
    }
    Py_buffer features = {0}, out = {0};
    if (acquire_rows(features_obj, out_obj, &features, &out)) {
        return NULL;
    }
    if (features.shape[1] != self->packed.n_features) {
        PyErr_Format(PyExc_ValueError, "features has %zd columns, the forest %zd",
                     features.shape[1], self->packed.n_features);
        PyBuffer_Release(&features);
        PyBuffer_Release(&out);
        return NULL;
    }
    Py_BEGIN_ALLOW_THREADS
    walk_forest(&self->packed, features.buf, features.shape[0], out.buf);
    Py_END_ALLOW_THREADS
    PyBuffer_Release(&features);
    PyBuffer_Release(&out);
    Py_RETURN_NONE;
}

static PyMethodDef PackedForest_methods[] = {
    {"scores", (PyCFunction)PackedForest_scores, METH_VARARGS,
     "scores(features, out)\n--\n\n"
     "Add each row's raw score to out (float64, one per row). features: float32\n"
     "(n_rows, n_features), NaN missing."},
    {NULL, NULL, 0, NULL},
};

static PyTypeObject PackedForestType = {
    PyVarObject_HEAD_INIT(NULL, 0).tp_name = "recsvc._scoring.PackedForest",
    .tp_doc = PyDoc_STR("PackedForest(split_feature, threshold, decision_type, left_child, "
                        "right_child, leaf_value, tree_node_offset, tree_leaf_offset, "
                        "n_features)\n--\n\n"
                        "A flattened LightGBM forest, checked and packed once (see "
                        "forest_scores for the arrays); scores is safe from any thread."),
    .tp_basicsize = sizeof(PackedForest),
    .tp_flags = Py_TPFLAGS_DEFAULT,
    .tp_new = PyType_GenericNew,
    .tp_init = (initproc)PackedForest_init,
    .tp_dealloc = (destructor)PackedForest_dealloc,
    .tp_methods = PackedForest_methods,
};

static PyMethodDef methods[] = {
    {"pool_scores", pool_scores, METH_VARARGS,
     "pool_scores(window, pool, input_embeddings, output_embeddings, position_weights, "
     "scorable, out)\n--\n\n"
     "Write the personalized score of each pool slot into out (-inf for padding and\n"
     "unscorable items). window: item indices, current item first, -1 for empty slots."},
    {"forest_scores", forest_scores, METH_VARARGS,
     "forest_scores(features, split_feature, threshold, decision_type, left_child, "
     "right_child, leaf_value, tree_node_offset, tree_leaf_offset, out)\n--\n\n"
     "Add each row's raw score under a flattened LightGBM forest (see recsvc.forest) to\n"
     "out (float64, one per row). features: float32 (n_rows, n_features), NaN missing."},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {
    PyModuleDef_HEAD_INIT, "recsvc._scoring",
    "The per-request arithmetic of recsvc.scoring, compiled (see recsvc/_scoring.c).", -1,
    methods,
};

PyMODINIT_FUNC PyInit__scoring(void) {
    if (PyType_Ready(&PoolRankerType) < 0 || PyType_Ready(&PackedForestType) < 0) {
        return NULL;
    }
    PyObject *m = PyModule_Create(&module);
    if (m == NULL) {
        return NULL;
    }
    if (PyModule_AddObjectRef(m, "PoolRanker", (PyObject *)&PoolRankerType) < 0 ||
        PyModule_AddObjectRef(m, "PackedForest", (PyObject *)&PackedForestType) < 0) {
        Py_DECREF(m);
        return NULL;
    }
    return m;
}
