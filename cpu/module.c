/* Python module `inference.model.backends._cpu`: the launchers of the CPU kernels.
 *
 * Each function takes C-contiguous buffers (NumPy arrays) and sizes, checks that every buffer holds
 * what the sizes say (a ValueError naming the argument otherwise), releases the GIL and calls the
 * kernel. Dtypes are the caller's contract (cpu_backend.py asserts them); sizes are checked here.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>

#include "common.h"
#include "kernels.h"

static int need(const Py_buffer *b, Py_ssize_t bytes, const char *name) {
    if (b->len < bytes) {
        PyErr_Format(PyExc_ValueError, "%s holds %zd bytes, the shapes need %zd", name, b->len, bytes);
        return -1;
    }
    return 0;
}

static PyObject *kernel_result(int rc, const char *op, int type) {
    if (rc == KERR_TYPE) return PyErr_Format(PyExc_ValueError, "%s: GGML type %d is not supported", op, type);
    if (rc == KERR_SHAPE)
        return PyErr_Format(PyExc_ValueError, "%s: k is not a multiple of type %d's block", op, type);
    if (rc != 0) return PyErr_Format(PyExc_RuntimeError, "%s failed with code %d", op, rc);
    Py_RETURN_NONE;
}

#define RELEASE(...)                                                                                 \
    do {                                                                                             \
        Py_buffer *bufs_[] = {__VA_ARGS__};                                                          \
        for (size_t i_ = 0; i_ < sizeof(bufs_) / sizeof(bufs_[0]); i_++) PyBuffer_Release(bufs_[i_]); \
    } while (0)

/* matvec(type, w, row_bytes, n, k, x, t, y, ldy) */
static PyObject *py_matvec(PyObject *self, PyObject *args) {
    int type;
    Py_ssize_t row_bytes, n, k, t, ldy;
    Py_buffer w, x, y;
    if (!PyArg_ParseTuple(args, "iy*nnny*nw*n", &type, &w, &row_bytes, &n, &k, &x, &t, &y, &ldy)) return NULL;
    int rc = 0;
    if (need(&w, row_bytes * n, "w") || need(&x, 4 * t * k, "x") ||
        need(&y, t ? 4 * ((t - 1) * ldy + n) : 0, "y") || (ldy < n && (PyErr_SetString(PyExc_ValueError, "ldy < n"), 1))) {
        RELEASE(&w, &x, &y);
        return NULL;
    }
    Py_BEGIN_ALLOW_THREADS
    rc = cpu_matvec(type, w.buf, row_bytes, n, k, x.buf, t, y.buf, ldy);
    Py_END_ALLOW_THREADS
    RELEASE(&w, &x, &y);
    return kernel_result(rc, "matvec", type);
}

typedef int (*parts_fn)(int, const int *, const uint8_t *const *, const int64_t *, const int64_t *, int64_t,
                        const float *, int64_t, float *, int64_t);

/* (types, ws, row_bytes, ns, k, x, t, y, ldy): tuples of equal length, one entry per part */
static PyObject *call_parts(PyObject *args, parts_fn fn, const char *op) {
    PyObject *types_o, *ws_o, *rb_o, *ns_o;
    Py_ssize_t k, t, ldy;
    Py_buffer x, y;
    if (!PyArg_ParseTuple(args, "O!O!O!O!ny*nw*n", &PyTuple_Type, &types_o, &PyTuple_Type, &ws_o, &PyTuple_Type,
                          &rb_o, &PyTuple_Type, &ns_o, &k, &x, &t, &y, &ldy))
        return NULL;
    const Py_ssize_t np_ = PyTuple_GET_SIZE(types_o);
    Py_buffer w[MATVEC_MAX_PARTS];
    int types[MATVEC_MAX_PARTS], got = 0, bad = 0;
    const uint8_t *ws[MATVEC_MAX_PARTS];
    int64_t rbs[MATVEC_MAX_PARTS], ns[MATVEC_MAX_PARTS], total_n = 0;
    if (np_ < 1 || np_ > MATVEC_MAX_PARTS || PyTuple_GET_SIZE(ws_o) != np_ || PyTuple_GET_SIZE(rb_o) != np_ ||
        PyTuple_GET_SIZE(ns_o) != np_) {
        PyErr_Format(PyExc_ValueError, "matvec_parts: 1..%d parts, four tuples of one length", MATVEC_MAX_PARTS);
        bad = 1;
    }
    for (Py_ssize_t p = 0; !bad && p < np_; p++) {
        types[p] = (int)PyLong_AsLong(PyTuple_GET_ITEM(types_o, p));
        rbs[p] = PyLong_AsSsize_t(PyTuple_GET_ITEM(rb_o, p));
        ns[p] = PyLong_AsSsize_t(PyTuple_GET_ITEM(ns_o, p));
        if (PyErr_Occurred() || PyObject_GetBuffer(PyTuple_GET_ITEM(ws_o, p), &w[p], PyBUF_C_CONTIGUOUS) < 0) {
            bad = 1;
            break;
        }
        got++;
        ws[p] = w[p].buf, total_n += ns[p];
        bad = need(&w[p], rbs[p] * ns[p], "w");
    }
    if (!bad)
        bad = need(&x, 4 * t * k, "x") || need(&y, t ? 4 * ((t - 1) * ldy + total_n) : 0, "y") ||
              (ldy < total_n && (PyErr_SetString(PyExc_ValueError, "ldy < the parts' rows"), 1));
    int rc = 0;
    if (!bad) {
        Py_BEGIN_ALLOW_THREADS
        rc = fn((int)np_, types, ws, rbs, ns, k, x.buf, t, y.buf, ldy);
        Py_END_ALLOW_THREADS
    }
    for (int p = 0; p < got; p++) PyBuffer_Release(&w[p]);
    RELEASE(&x, &y);
    if (bad) return NULL;
    int culprit = types[0]; /* the part at fault: checked alone (no rows, so nothing is computed) */
    for (Py_ssize_t p = 0; rc == KERR_TYPE && p < np_; p++) {
        const int64_t none = 0;
        if (fn(1, &types[p], &ws[p], &rbs[p], &none, k, NULL, t, NULL, ldy) == KERR_TYPE) {
            culprit = types[p];
            break;
        }
    }
    return kernel_result(rc, op, culprit);
}

static PyObject *py_matvec_parts(PyObject *self, PyObject *args) { return call_parts(args, cpu_matvec_parts, "matvec_parts"); }

static PyObject *py_matvec_q8_parts(PyObject *self, PyObject *args) {
    return call_parts(args, cpu_matvec_q8_parts, "matvec_q8_parts");
}

/* dequant_rows(type, w, row_bytes, n, k, rows or None, row0, nrows, out) */
static PyObject *py_dequant_rows(PyObject *self, PyObject *args) {
    int type;
    Py_ssize_t row_bytes, n, k, row0, nrows;
    PyObject *rows_obj;
    Py_buffer w, rows = {0}, out;
    if (!PyArg_ParseTuple(args, "iy*nnnOnnw*", &type, &w, &row_bytes, &n, &k, &rows_obj, &row0, &nrows, &out))
        return NULL;
    const int32_t *ids = NULL;
    int bad = need(&w, row_bytes * n, "w") || need(&out, 4 * nrows * k, "out");
    if (!bad && rows_obj != Py_None) {
        if (PyObject_GetBuffer(rows_obj, &rows, PyBUF_C_CONTIGUOUS) < 0) bad = 1;
        else if (need(&rows, 4 * nrows, "rows")) bad = 1;
        else {
            ids = rows.buf;
            for (Py_ssize_t r = 0; r < nrows && !bad; r++)
                if (ids[r] < 0 || ids[r] >= n) {
                    PyErr_Format(PyExc_ValueError, "rows[%zd] = %d is outside [0, %zd)", r, ids[r], n);
                    bad = 1;
                }
        }
    } else if (!bad && (row0 < 0 || row0 + nrows > n)) {
        PyErr_Format(PyExc_ValueError, "rows %zd..%zd are outside [0, %zd)", row0, row0 + nrows, n);
        bad = 1;
    }
    int rc = 0;
    if (!bad) {
        Py_BEGIN_ALLOW_THREADS
        rc = cpu_dequant_rows(type, w.buf, row_bytes, k, ids, row0, nrows, out.buf);
        Py_END_ALLOW_THREADS
    }
    if (rows.obj) PyBuffer_Release(&rows);
    RELEASE(&w, &out);
    return bad ? NULL : kernel_result(rc, "dequant_rows", type);
}

/* rmsnorm(x, w, eps, t, d, out) */
static PyObject *py_rmsnorm(PyObject *self, PyObject *args) {
    Py_buffer x, w, out;
    float eps;
    Py_ssize_t t, d;
    if (!PyArg_ParseTuple(args, "y*y*fnnw*", &x, &w, &eps, &t, &d, &out)) return NULL;
    if (need(&x, 4 * t * d, "x") || need(&w, 4 * d, "w") || need(&out, 4 * t * d, "out")) {
        RELEASE(&x, &w, &out);
        return NULL;
    }
    Py_BEGIN_ALLOW_THREADS
    cpu_rmsnorm(x.buf, w.buf, eps, t, d, out.buf);
    Py_END_ALLOW_THREADS
    RELEASE(&x, &w, &out);
    Py_RETURN_NONE;
}

/* rope_table(pos, t, inv_freq, half, cs) */
static PyObject *py_rope_table(PyObject *self, PyObject *args) {
    Py_buffer pos, inv, cs;
    Py_ssize_t t, half;
    if (!PyArg_ParseTuple(args, "y*ny*nw*", &pos, &t, &inv, &half, &cs)) return NULL;
    if (need(&pos, 4 * t, "positions") || need(&inv, 4 * half, "inv_freq") || need(&cs, 8 * t * half, "cs")) {
        RELEASE(&pos, &inv, &cs);
        return NULL;
    }
    Py_BEGIN_ALLOW_THREADS
    cpu_rope_table(pos.buf, t, inv.buf, half, cs.buf);
    Py_END_ALLOW_THREADS
    RELEASE(&pos, &inv, &cs);
    Py_RETURN_NONE;
}

/* rope(x, t, h, hd, cs, half, neox) */
static PyObject *py_rope(PyObject *self, PyObject *args) {
    Py_buffer x, cs;
    Py_ssize_t t, h, hd, half;
    int neox;
    if (!PyArg_ParseTuple(args, "w*nnny*np", &x, &t, &h, &hd, &cs, &half, &neox)) return NULL;
    if (need(&x, 4 * t * h * hd, "x") || need(&cs, 8 * t * half, "cs") ||
        (2 * half > hd && (PyErr_SetString(PyExc_ValueError, "2 * half > head_dim"), 1))) {
        RELEASE(&x, &cs);
        return NULL;
    }
    Py_BEGIN_ALLOW_THREADS
    cpu_rope(x.buf, t, h, hd, cs.buf, half, neox);
    Py_END_ALLOW_THREADS
    RELEASE(&x, &cs);
    Py_RETURN_NONE;
}

/* swiglu(gate_up, t, f, out) */
static PyObject *py_swiglu(PyObject *self, PyObject *args) {
    Py_buffer g, out;
    Py_ssize_t t, f;
    if (!PyArg_ParseTuple(args, "y*nnw*", &g, &t, &f, &out)) return NULL;
    if (need(&g, 8 * t * f, "gate_up") || need(&out, 4 * t * f, "out")) {
        RELEASE(&g, &out);
        return NULL;
    }
    Py_BEGIN_ALLOW_THREADS
    cpu_swiglu(g.buf, t, f, out.buf);
    Py_END_ALLOW_THREADS
    RELEASE(&g, &out);
    Py_RETURN_NONE;
}

/* kv_write(k_cache, v_cache, f16, k, v, slots, t, row) */
static PyObject *py_kv_write(PyObject *self, PyObject *args) {
    Py_buffer kc, vc, k, v, slots;
    int f16;
    Py_ssize_t t, row;
    if (!PyArg_ParseTuple(args, "w*w*py*y*y*nn", &kc, &vc, &f16, &k, &v, &slots, &t, &row)) return NULL;
    int bad = 0;
    if (t < 0 || row < 1) {
        PyErr_Format(PyExc_ValueError, "kv_write: bad sizes t=%zd row=%zd", t, row);
        bad = 1;
    }
    bad = bad || need(&k, 4 * t * row, "k") || need(&v, 4 * t * row, "v") || need(&slots, 4 * t, "slots");
    const Py_ssize_t num_slots = row > 0 ? kc.len / ((f16 ? 2 : 4) * row) : 0;
    for (Py_ssize_t i = 0; i < t && !bad; i++) {
        int32_t s = ((const int32_t *)slots.buf)[i];
        if (s < 0 || s >= num_slots || vc.len != kc.len) {
            PyErr_Format(PyExc_ValueError, "slots[%zd] = %d is outside the cache's %zd slots", i, s, num_slots);
            bad = 1;
        }
    }
    if (!bad) {
        Py_BEGIN_ALLOW_THREADS
        cpu_kv_write(kc.buf, vc.buf, f16, k.buf, v.buf, slots.buf, t, row);
        Py_END_ALLOW_THREADS
    }
    RELEASE(&kc, &vc, &k, &v, &slots);
    if (bad) return NULL;
    Py_RETURN_NONE;
}

/* attention(q, t, h, n_kv, hd, k_cache, v_cache, f16, block_size, num_seqs, query_start, query_len,
 *           context_len, block_tables, max_blocks, sliding_window, out) */
static PyObject *py_attention(PyObject *self, PyObject *args) {
    Py_buffer q, kc, vc, qs, ql, cl, bt, out;
    Py_ssize_t t, h, n_kv, hd, bs, ns, mb, sw;
    int f16;
    if (!PyArg_ParseTuple(args, "y*nnnny*y*pnny*y*y*y*nnw*", &q, &t, &h, &n_kv, &hd, &kc, &vc, &f16, &bs, &ns,
                          &qs, &ql, &cl, &bt, &mb, &sw, &out))
        return NULL;
    int bad = 0;
    if (t < 0 || h < 1 || hd < 1 || bs < 1 || ns < 0 || mb < 0 || sw < 0) {
        PyErr_Format(PyExc_ValueError, "attention: bad sizes t=%zd h=%zd hd=%zd block_size=%zd seqs=%zd", t, h, hd,
                     bs, ns);
        bad = 1;
    }
    bad = bad || need(&vc, kc.len, "v_cache") || need(&q, 4 * t * h * hd, "q") || need(&out, 4 * t * h * hd, "out") ||
          need(&qs, 4 * ns, "query_start") ||
              need(&ql, 4 * ns, "query_len") || need(&cl, 4 * ns, "context_len") ||
              need(&bt, 4 * ns * mb, "block_tables");
    if (!bad && (n_kv <= 0 || h % n_kv != 0)) {
        PyErr_Format(PyExc_ValueError, "heads %zd not a multiple of kv heads %zd", h, n_kv);
        bad = 1;
    }
    const Py_ssize_t slot_bytes = (f16 ? 2 : 4) * n_kv * hd;
    const Py_ssize_t num_blocks = bad ? 0 : kc.len / (slot_bytes * bs);
    for (Py_ssize_t s = 0; s < ns && !bad; s++) {
        const int32_t start = ((int32_t *)qs.buf)[s], len = ((int32_t *)ql.buf)[s], ctx = ((int32_t *)cl.buf)[s];
        if (start < 0 || len < 1 || start + len > t || ctx < len || (ctx + bs - 1) / bs > mb) {
            PyErr_Format(PyExc_ValueError, "sequence %zd: rows %d+%d of %zd, context %d, %zd blocks", s, start,
                         len, t, ctx, mb);
            bad = 1;
        }
        for (Py_ssize_t b = 0; b < (ctx + bs - 1) / bs && !bad; b++) {
            int32_t blk = ((int32_t *)bt.buf)[s * mb + b];
            if (blk < 0 || blk >= num_blocks) {
                PyErr_Format(PyExc_ValueError, "sequence %zd: block %d outside the cache's %zd", s, blk, num_blocks);
                bad = 1;
            }
        }
    }
    if (!bad) {
        Py_BEGIN_ALLOW_THREADS
        cpu_attention(q.buf, t, h, n_kv, hd, kc.buf, vc.buf, f16, bs, ns, qs.buf, ql.buf, cl.buf, bt.buf, mb, sw,
                      out.buf);
        Py_END_ALLOW_THREADS
    }
    RELEASE(&q, &kc, &vc, &qs, &ql, &cl, &bt, &out);
    if (bad) return NULL;
    Py_RETURN_NONE;
}

static PyObject *py_simd_level(PyObject *self, PyObject *noargs) {
    return PyUnicode_FromString(cpu_level_name(cpu_level()));
}

static PyObject *py_host_level(PyObject *self, PyObject *noargs) {
    return PyUnicode_FromString(cpu_level_name(cpu_host_level()));
}

/* force_level(name or None): tests run each path the host supports */
static PyObject *py_force_level(PyObject *self, PyObject *arg) {
    if (arg == Py_None) {
        cpu_force_level((cpu_level_t)-1);
        Py_RETURN_NONE;
    }
    const char *name = PyUnicode_AsUTF8(arg);
    if (!name) return NULL;
    for (int l = LEVEL_SCALAR; l <= LEVEL_VNNI; l++)
        if (strcmp(name, cpu_level_name(l)) == 0) {
            if (cpu_force_level(l) < 0)
                return PyErr_Format(PyExc_ValueError, "this host does not support SIMD level %s", name);
            Py_RETURN_NONE;
        }
    return PyErr_Format(PyExc_ValueError, "unknown SIMD level %R", arg);
}

static PyObject *py_set_threads(PyObject *self, PyObject *arg) {
    long n = PyLong_AsLong(arg);
    if (n == -1 && PyErr_Occurred()) return NULL;
    if (n < 1) return PyErr_Format(PyExc_ValueError, "threads must be >= 1, got %ld", n);
    cpu_set_threads((int)n);
    Py_RETURN_NONE;
}

static PyObject *py_threads(PyObject *self, PyObject *noargs) { return PyLong_FromLong(cpu_threads()); }

static PyObject *py_block_size(PyObject *self, PyObject *arg) {
    long type = PyLong_AsLong(arg);
    if (type == -1 && PyErr_Occurred()) return NULL;
    return Py_BuildValue("(ii)", ggml_block_elems((int)type), ggml_block_bytes((int)type));
}

/* ---- int8-activation matmul (quantize_q8.c, matmul_q8.c): the prefill path --------------------- */

static int q8_check_k(const char *op, Py_ssize_t t, Py_ssize_t k, int block) {
    if (t < 0) {
        PyErr_Format(PyExc_ValueError, "%s: t = %zd is negative", op, t);
        return -1;
    }
    if (k <= 0 || k % block) {
        PyErr_Format(PyExc_ValueError, "%s: k = %zd is not a positive multiple of %d", op, k, block);
        return -1;
    }
    return 0;
}

/* q8_bytes(t, k) -> bytes of t packed activation rows of k */
static PyObject *py_q8_bytes(PyObject *self, PyObject *args) {
    Py_ssize_t t, k;
    if (!PyArg_ParseTuple(args, "nn", &t, &k) || q8_check_k("q8_bytes", t, k, 32)) return NULL;
    return PyLong_FromLongLong(cpu_q8_bytes(t, k));
}

/* quantize_q8(x, t, k, xq): x float32 [t, k] -> xq, q8_bytes(t, k) bytes */
static PyObject *py_quantize_q8(PyObject *self, PyObject *args) {
    Py_buffer x, xq;
    Py_ssize_t t, k;
    if (!PyArg_ParseTuple(args, "y*nnw*", &x, &t, &k, &xq)) return NULL;
    if (q8_check_k("quantize_q8", t, k, 32) || need(&x, 4 * t * k, "x") || need(&xq, cpu_q8_bytes(t, k), "xq")) {
        RELEASE(&x, &xq);
        return NULL;
    }
    int rc;
    Py_BEGIN_ALLOW_THREADS
    rc = cpu_quantize_q8(x.buf, t, k, xq.buf);
    Py_END_ALLOW_THREADS
    RELEASE(&x, &xq);
    return kernel_result(rc, "quantize_q8", 0);
}

/* the shapes of a matmul_q8 call: 0, or -1 with a ValueError naming what is wrong */
static int q8_check_matmul(int type, Py_ssize_t row_bytes, Py_ssize_t n, Py_ssize_t k, Py_ssize_t t,
                           Py_ssize_t ldy) {
    if (!cpu_matmul_q8_supported(type)) {
        PyErr_Format(PyExc_ValueError, "matmul_q8: GGML type %d is not supported", type);
        return -1;
    }
    if (n < 0) {
        PyErr_Format(PyExc_ValueError, "matmul_q8: n = %zd is negative", n);
        return -1;
    }
    if (q8_check_k("matmul_q8", t, k, ggml_block_elems(type))) return -1;
    const Py_ssize_t need_row = k / ggml_block_elems(type) * ggml_block_bytes(type);
    if (row_bytes < need_row) {
        PyErr_Format(PyExc_ValueError, "matmul_q8: row_bytes = %zd, a row of k = %zd needs %zd", row_bytes, k,
                     need_row);
        return -1;
    }
    if (ldy < n) {
        PyErr_Format(PyExc_ValueError, "matmul_q8: ldy = %zd < n = %zd", ldy, n);
        return -1;
    }
    return 0;
}

/* matmul_q8(type, w, row_bytes, n, k, xq, t, y, ldy): y[i, j] (row stride ldy) = W[j] . x[i] */
static PyObject *py_matmul_q8(PyObject *self, PyObject *args) {
    int type;
    Py_ssize_t row_bytes, n, k, t, ldy;
    Py_buffer w, xq, y;
    if (!PyArg_ParseTuple(args, "iy*nnny*nw*n", &type, &w, &row_bytes, &n, &k, &xq, &t, &y, &ldy)) return NULL;
    if (q8_check_matmul(type, row_bytes, n, k, t, ldy) || need(&w, row_bytes * n, "w") ||
        need(&xq, cpu_q8_bytes(t, k), "xq") || need(&y, t ? 4 * ((t - 1) * ldy + n) : 0, "y")) {
        RELEASE(&w, &xq, &y);
        return NULL;
    }
    int rc;
    Py_BEGIN_ALLOW_THREADS
    rc = cpu_matmul_q8(type, w.buf, row_bytes, n, k, xq.buf, t, y.buf, ldy);
    Py_END_ALLOW_THREADS
    RELEASE(&w, &xq, &y);
    return rc == KERR_MEMORY ? PyErr_NoMemory() : kernel_result(rc, "matmul_q8", type);
}

/* the GGML type ids (< 64) for which supported(type) holds, as a tuple */
static PyObject *type_ids(int (*supported)(int)) {
    PyObject *ids = PyList_New(0);
    for (int type = 0; ids && type < 64; type++)
        if (supported(type)) {
            PyObject *v = PyLong_FromLong(type);
            if (!v || PyList_Append(ids, v) < 0) Py_CLEAR(ids);
            Py_XDECREF(v);
        }
    if (!ids) return NULL;
    PyObject *tuple = PyList_AsTuple(ids);
    Py_DECREF(ids);
    return tuple;
}

/* matmul_q8_types() -> the GGML type ids matmul_q8 takes */
static PyObject *py_matmul_q8_types(PyObject *self, PyObject *noargs) { return type_ids(cpu_matmul_q8_supported); }

/* matvec_q8_types() -> the GGML type ids matvec_q8_parts takes at the current SIMD level (none below VNNI) */
static PyObject *py_matvec_q8_types(PyObject *self, PyObject *noargs) { return type_ids(cpu_matvec_q8_supported); }

static PyMethodDef methods[] = {
    {"matvec", py_matvec, METH_VARARGS, "y[t, :n] = W x[t] for quantized W (fused dequantize)"},
    {"matvec_parts", py_matvec_parts, METH_VARARGS, "matvec over the parts of one projection, one team"},
    {"dequant_rows", py_dequant_rows, METH_VARARGS, "float32 rows of a quantized matrix"},
    {"rmsnorm", py_rmsnorm, METH_VARARGS, "RMS norm of rows"},
    {"rope_table", py_rope_table, METH_VARARGS, "cos, sin of every position's rotary angles"},
    {"rope", py_rope, METH_VARARGS, "rotary embedding in place, by a rope_table"},
    {"swiglu", py_swiglu, METH_VARARGS, "silu(gate) * up"},
    {"kv_write", py_kv_write, METH_VARARGS, "write K and V rows into cache slots"},
    {"attention", py_attention, METH_VARARGS, "causal attention over the paged KV cache"},
    {"simd_level", py_simd_level, METH_NOARGS, "the SIMD path kernels take"},
    {"host_level", py_host_level, METH_NOARGS, "the widest SIMD path this host supports"},
    {"force_level", py_force_level, METH_O, "force a SIMD path (None: the host's best)"},
    {"set_threads", py_set_threads, METH_O, "threads of every parallel kernel"},
    {"threads", py_threads, METH_NOARGS, "threads of every parallel kernel"},
    {"block_size", py_block_size, METH_O, "(elements, bytes) per block of a GGML type; (0, 0) unsupported"},
    {"q8_bytes", py_q8_bytes, METH_VARARGS, "bytes of t int8-quantized activation rows of k"},
    {"quantize_q8", py_quantize_q8, METH_VARARGS, "float32 rows -> int8 blocks of 32 with a float scale"},
    {"matmul_q8", py_matmul_q8, METH_VARARGS, "y[t, :n] = W x[t] for quantized W and int8 activations"},
    {"matmul_q8_types", py_matmul_q8_types, METH_NOARGS, "GGML type ids matmul_q8 supports"},
    {"matvec_q8_parts", py_matvec_q8_parts, METH_VARARGS, "int8-activation matvec over the parts of one projection"},
    {"matvec_q8_types", py_matvec_q8_types, METH_NOARGS, "GGML type ids matvec_q8_parts supports at this level"},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {PyModuleDef_HEAD_INIT, "_cpu", "Native CPU kernels over GGUF blocks", -1,
                                    methods};

PyMODINIT_FUNC PyInit__cpu(void) { return PyModule_Create(&module); }
