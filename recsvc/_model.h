/*
 * A personalized model's arithmetic, shared by recsvc's C modules (each includes this
 * header): the user vector of a window and a candidate's score, with one fixed order of
 * floating-point operations, so that every module gets the same bits for the same inputs.
 *
 * The user vector of a window is u = (1/n) * sum_j w_j * v_j over the n slots j that hold
 * an item (v: input embeddings, w: position weights); a candidate's score is the dot
 * product of its output embedding with u, or -inf when the model cannot score it.
 */
#ifndef RECSVC_MODEL_H
#define RECSVC_MODEL_H

#include "_buffers.h"
#include <math.h>

#define LANES 8

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

/* Adds the window's slots holding an item (``items``: indices in range, or -1 for an empty
 * slot) into ``user`` (d floats, zero on entry), scaled as the module docstring says;
 * returns how many slots held an item. */
static Py_ssize_t model_user(const Model *m, const Py_ssize_t *items, Py_ssize_t width,
                             float *user) {
    const float *in = m->input.buf, *w = m->weights.buf;
    Py_ssize_t d = m->d, valid = 0;
    for (Py_ssize_t slot = 0; slot < width; slot++) {
        if (items[slot] < 0) {
            continue;
        }
        const float *v = in + items[slot] * d;
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
    return valid;
}

/* Asks for the output rows (and scorable bytes) of the items in range: they are scattered
 * over the matrix, and on a busy server none is in cache, so waiting for them one at a time
 * dominates. */
static void model_prefetch(const Model *m, const int32_t *items, Py_ssize_t c) {
    const unsigned char *ok = m->have_scorable ? m->scorable.buf : NULL;
    const float *o = m->output.buf;
    for (Py_ssize_t i = 0; i < c; i++) {
        if (items[i] >= 0 && items[i] < m->n_items) {
            if (ok != NULL) {
                __builtin_prefetch(ok + items[i]);
            }
            const char *row = (const char *)(o + items[i] * m->d);
            for (Py_ssize_t byte = 0; byte < m->d * (Py_ssize_t)sizeof(float); byte += 64) {
                __builtin_prefetch(row + byte);
            }
        }
    }
}

/* The score of ``item`` (in range, or negative for padding) for the user vector ``user``. */
static inline float model_score(const Model *m, const float *user, int32_t item) {
    const unsigned char *ok = m->have_scorable ? m->scorable.buf : NULL;
    if (item < 0 || (ok != NULL && !ok[item])) {
        return -INFINITY;
    }
    return dot((const float *)m->output.buf + item * m->d, user, m->d);
}

#endif
