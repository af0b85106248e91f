/*
 * Buffer-protocol helpers shared by recsvc's C modules (each includes this header).
 *
 * Arrays arrive as numpy arrays, memory-mapped bundle arrays or anything else with a
 * C-contiguous buffer, so the modules build without numpy's headers.
 */
#ifndef RECSVC_BUFFERS_H
#define RECSVC_BUFFERS_H

#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <string.h>

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

/* The dtype a format-character list stands for, for error messages. */
static const char *kind_name(const char *kinds) {
    switch (kinds[0]) {
    case 'f': return "float32";
    case 'd': return "float64";
    case '?': return "bool";
    case 'B': return "uint8";
    case 'q': case 'l': return "int64";
    default: return "int32";
    }
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
                     name, ndim, kind_name(kinds), view->format ? view->format : "B",
                     view->ndim);
        PyBuffer_Release(view);
        return -1;
    }
    return 0;
}

#endif /* RECSVC_BUFFERS_H */
