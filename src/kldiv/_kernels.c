/* Fused CPU kernel of the large-vocabulary KL losses (kldiv.losses.chunked): one read of each row of logits,
 * value and gradient together, float32 arithmetic with float64 row sums.
 *
 * For a row of student logits s and teacher logits t at temperature T (inv_t = 1/T), with
 * a = (s - max s) / T, b = (t - max t) / T, Z_a = sum exp(a), Z_b = sum exp(b), q = exp(a) / Z_a,
 * p = exp(b) / Z_b, d = b - a and c = log(Z_b / Z_a) (so log p - log q = d - c):
 *
 *   KL(P||Q) = <p, d> - c,  d/d(s/T) = q - p
 *   KL(Q||P) = c - <q, d>,  d/d(s/T) = q (c - d - KL(Q||P))
 *
 * and the loss is w_f KL(P||Q) + (1 - w_f) KL(Q||P), its gradient scaled by `weight` (which holds 1/T).
 * The row sums are float32 over blocks of BLOCK entries, accumulated in float64; the reverse KL's <q, d> and
 * c - d - KL(Q||P) are formed in float64.
 * Optionally the hard-label term CE(softmax(s), y) = log Z_1 - (s_y - max s), gradient
 * ce_coef (softmax(s) - onehot(y)), at temperature 1 (Hinton et al. 2015).
 * Two exponentials per entry (three for the hard-label term at T != 1), evaluated by a vectorizable
 * Cephes-style polynomial (relative error below 1e-7 on [-87.3, 0]; below that the results are subnormal or
 * 0, which changes a row's sums by less than 1e-37). Values below REFINE_BELOW are recomputed in float64
 * without cancellation (small_kl), with float64 exponentials.
 *
 * Rows whose logits are not all finite, or whose max |s| / T or |t| / T overflows float32, get value NaN and an
 * untouched gradient row: the caller recomputes them (the general path handles -inf and diagnoses the rest). Ignored rows (valid[i] == 0) get 0 and a zero
 * gradient. The GIL is released: callers run disjoint row ranges on several threads.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <float.h>
#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#if defined(__x86_64__) && (defined(__clang__) ? __clang_major__ >= 14 : defined(__GNUC__))
#define KLDIV_CLONES __attribute__((target_clones("avx512f", "avx2", "default")))
#else
#define KLDIV_CLONES
#endif

/* Row sums: float32 partial sums over blocks of BLOCK entries (vectorized), accumulated in float64. */
#define BLOCK 512

/* Rows whose value is below this are recomputed cancellation-free in float64 (small_kl): <p, d> - c in float32
 * has a relative error of about 1e-7 / KL (measured: 2e-5 at KL = 4e-3, 1.5e-6 at 0.03, 4e-7 at 0.4; 2e-6 at 0.11 on
 * low-entropy rows), so above 0.1 it stays within about 2e-6; small_kl costs about 2.5x the fast formula. */
#define REFINE_BELOW 0.1

/* exp(x) for x <= 0: x = n ln 2 + r, |r| <= ln 2 / 2, exp(r) by the Cephes expf polynomial, 2^n by exponent
 * bits. Rounding to the integer n by the 1.5 * 2^23 shifter keeps the loop branch-free and vectorizable. */
static inline float exp_nonpositive(float x) {
    const float shifter = 12582912.0f;
    x = x < -103.0f ? -103.0f : x;
    float k = x * 1.44269504088896341f + shifter;
    float n = k - shifter;
    int32_t ki;
    memcpy(&ki, &k, sizeof ki);
    float r = x - n * 0.693359375f;
    r = r + n * 2.12194440e-4f;
    float p = 1.9875691500e-4f;
    p = p * r + 1.3981999507e-3f;
    p = p * r + 8.3334519073e-3f;
    p = p * r + 4.1665795894e-2f;
    p = p * r + 1.6666665459e-1f;
    p = p * r + 5.0000001201e-1f;
    float y = p * r * r + r + 1.0f;
    int32_t bits = (ki - 0x4B400000 + 127) * (1 << 23);
    float scale;
    memcpy(&scale, &bits, sizeof scale);
    return n < -126.0f ? 0.0f : y * scale;
}

/* exp(x) in float64 for x <= 0 (0 below about -708): x = n ln 2 + r, |r| <= ln 2 / 2, exp(r) by its Taylor
 * series to degree 12 (truncation about 2.4e-16 relative; measured error at most 2.5 ulp on [-708, 0]), 2^n by exponent bits; branch-free, vectorizable. */
static inline double exp_double(double x) {
    const double shifter = 6755399441055744.0; /* 1.5 * 2^52 */
    x = x < -745.0 ? -745.0 : x;
    double k = x * 1.4426950408889634 + shifter;
    double n = k - shifter;
    int64_t ki;
    memcpy(&ki, &k, sizeof ki);
    double r = x - n * 0.693145751953125;
    r = r - n * 1.42860682030941723212e-6;
    double p = 1.0 / 479001600.0;
    p = p * r + 1.0 / 39916800.0;
    p = p * r + 1.0 / 3628800.0;
    p = p * r + 1.0 / 362880.0;
    p = p * r + 1.0 / 40320.0;
    p = p * r + 1.0 / 5040.0;
    p = p * r + 1.0 / 720.0;
    p = p * r + 1.0 / 120.0;
    p = p * r + 1.0 / 24.0;
    p = p * r + 1.0 / 6.0;
    p = p * r + 0.5;
    p = p * r + 1.0;
    p = p * r + 1.0;
    int64_t bits = (ki - 0x4338000000000000LL + 1023) * ((int64_t)1 << 52);
    double scale;
    memcpy(&scale, &bits, sizeof scale);
    return n < -1022.0 ? 0.0 : p * scale;
}

/* e^x - 1 - x for |x| < 1/2, without cancellation: its Taylor series x^2/2! + ... + x^14/14! (the rest is
 * below 1e-17 relative), by Horner's rule. */
static inline double exp_m1_minus_x_small(double x) {
    double p = 1.0 / 87178291200.0;
    p = p * x + 1.0 / 6227020800.0;
    p = p * x + 1.0 / 479001600.0;
    p = p * x + 1.0 / 39916800.0;
    p = p * x + 1.0 / 3628800.0;
    p = p * x + 1.0 / 362880.0;
    p = p * x + 1.0 / 40320.0;
    p = p * x + 1.0 / 5040.0;
    p = p * x + 1.0 / 720.0;
    p = p * x + 1.0 / 120.0;
    p = p * x + 1.0 / 24.0;
    p = p * x + 1.0 / 6.0;
    p = p * x + 0.5;
    return p * x * x;
}

/* KL of one row in float64, cancellation-free (for values below REFINE_BELOW, where <p, d> - c loses digits):
 * with p = e^b / Z_b, q = e^a / Z_a and r = log p - log q = b - a - log(Z_b / Z_a),
 *   KL(P||Q) = sum p (e^-r - 1 + r),  KL(Q||P) = sum q (e^r - 1 - r),
 * every term >= 0 (the identities hold as sum p = sum q = 1); for |r| >= 1/2 the terms are q - p + p r and
 * p - q - q r, which do not cancel. The discrete core's kl_terms_from_log_ratio, in C. */
KLDIV_CLONES
static double small_kl(const float *s, const float *t, Py_ssize_t V, float ms, float mt, double inv_t, double w_f,
                       double *ea, double *eb) {
    double za = 0.0, zb = 0.0;
#pragma omp simd reduction(+ : za, zb)
    for (Py_ssize_t v = 0; v < V; ++v) {
        ea[v] = exp_double(((double)s[v] - ms) * inv_t);
        eb[v] = exp_double(((double)t[v] - mt) * inv_t);
        za += ea[v];
        zb += eb[v];
    }
    const double c = log(zb / za);
    double kl_f = 0.0, kl_r = 0.0;
#pragma omp simd reduction(+ : kl_f, kl_r)
    for (Py_ssize_t v = 0; v < V; ++v) {
        /* the difference of the exact float64 t - max t and s - max s, scaled once: no rounding of a and b apart */
        const double r = (((double)t[v] - mt) - ((double)s[v] - ms)) * inv_t - c;
        const double q = ea[v] / za, p = eb[v] / zb;
        const int small = r < 0.5 && r > -0.5;
        kl_f += small ? p * exp_m1_minus_x_small(-r) : q - p + p * r;
        kl_r += small ? q * exp_m1_minus_x_small(r) : p - q - q * r;
    }
    return w_f * kl_f + (1.0 - w_f) * kl_r;
}

typedef struct {
    const float *s, *t;
    float *g;
    double *kl, *ce;
    const uint8_t *valid;
    const int64_t *labels;
    Py_ssize_t rows, vocab, s_stride, t_stride, g_stride;
    double inv_t, w_f, weight, ce_coef;
} Job;

KLDIV_CLONES
static void kl_row_range(const Job *job, float *eb_row, double *exps) {
    const Py_ssize_t V = job->vocab;
    const float inv_t = (float)job->inv_t;
    const double inv_t_d = job->inv_t;
    for (Py_ssize_t i = 0; i < job->rows; ++i) {
        const float *s = job->s + i * job->s_stride, *t = job->t + i * job->t_stride;
        float *g = job->g + i * job->g_stride;
        if (job->valid && !job->valid[i]) {
            memset(g, 0, (size_t)V * sizeof *g);
            job->kl[i] = 0.0;
            if (job->ce) job->ce[i] = 0.0;
            continue;
        }
        float ms = -INFINITY, mt = -INFINITY, nonfinite = 0.0f;
#pragma omp simd reduction(max : ms, mt) reduction(+ : nonfinite)
        for (Py_ssize_t v = 0; v < V; ++v) {
            ms = ms > s[v] ? ms : s[v];
            mt = mt > t[v] ? mt : t[v];
            nonfinite += (s[v] - s[v]) + (t[v] - t[v]); /* NaN iff an entry is NaN or infinite */
        }
        if (nonfinite != 0.0f || fabs((double)ms * inv_t_d) > FLT_MAX || fabs((double)mt * inv_t_d) > FLT_MAX) {
            /* not finite, or s / T overflows: the caller's general path recomputes the row or names the problem */
            job->kl[i] = NAN;
            if (job->ce) job->ce[i] = NAN;
            continue;
        }
        double za = 0.0, zb = 0.0, pd = 0.0;
        for (Py_ssize_t v0 = 0; v0 < V; v0 += BLOCK) {
            const Py_ssize_t v1 = v0 + BLOCK < V ? v0 + BLOCK : V;
            float za_ = 0.0f, zb_ = 0.0f, pd_ = 0.0f;
#pragma omp simd reduction(+ : za_, zb_, pd_)
            for (Py_ssize_t v = v0; v < v1; ++v) {
                const float a = (s[v] - ms) * inv_t, b = (t[v] - mt) * inv_t, d = b - a;
                const float ea = exp_nonpositive(a), eb = exp_nonpositive(b);
                g[v] = ea;
                eb_row[v] = eb;
                za_ += ea;
                zb_ += eb;
                pd_ += eb * d;
            }
            za += za_;
            zb += zb_;
            pd += pd_;
        }
        /* <q, d> = d_r + <q, d - d_r>, r the student's most probable entry, in float64 (where t - max t and
         * s - max s are exact): the largest term drops out, so the rounding of Z_a cannot swamp the centred
         * gradient q (<q, d> - d), which can be far smaller than |d| */
        double qd_centre = 0.0;
        if (job->w_f != 1.0) {
            Py_ssize_t r = 0;
            while (r < V - 1 && s[r] != ms) ++r;
            const double d_r = ((double)t[r] - mt) * inv_t_d;
            double rest = 0.0;
#pragma omp simd reduction(+ : rest)
            for (Py_ssize_t v = 0; v < V; ++v)
                rest += (double)g[v] * ((((double)t[v] - mt) - ((double)s[v] - ms)) * inv_t_d - d_r);
            qd_centre = d_r + rest / za;
        }
        const double c = log(zb / za), kl_f = pd / zb - c, kl_r = c - qd_centre;
        const double value = job->w_f * kl_f + (1.0 - job->w_f) * kl_r;
        job->kl[i] = value < REFINE_BELOW ? small_kl(s, t, V, ms, mt, inv_t_d, job->w_f, exps, exps + V) : value;
        /* gradient = ca e_a + cb e_b + cr e_a (k0 - d) + hard-label part (cq e_a at T = 1, else c1 exp(s - max s)),
         * each term with its own coefficient, so that equal terms cancel exactly (e.g. a one-entry vocabulary) */
        const float ca = (float)(job->w_f * job->weight / za), cb = (float)(-job->w_f * job->weight / zb);
        const float cr = (float)((1.0 - job->w_f) * job->weight / za);
        const double k0 = qd_centre; /* c - KL(Q||P); the centred c - d - KL(Q||P) is formed in float64 */
        float cq = 0.0f, c1 = 0.0f;
        if (job->labels) {
            const int64_t y = job->labels[i];
            if (inv_t == 1.0f) {
                job->ce[i] = log(za) - (double)(s[y] - ms);
                cq = (float)(job->ce_coef / za);
            } else {
                double z1 = 0.0;
                for (Py_ssize_t v0 = 0; v0 < V; v0 += BLOCK) {
                    const Py_ssize_t v1 = v0 + BLOCK < V ? v0 + BLOCK : V;
                    float z1_ = 0.0f;
#pragma omp simd reduction(+ : z1_)
                    for (Py_ssize_t v = v0; v < v1; ++v) z1_ += exp_nonpositive(s[v] - ms);
                    z1 += z1_;
                }
                job->ce[i] = log(z1) - (double)(s[y] - ms);
                c1 = (float)(job->ce_coef / z1);
            }
        }
        if (cr == 0.0f && c1 == 0.0f) {
#pragma omp simd
            for (Py_ssize_t v = 0; v < V; ++v) g[v] = (g[v] * ca + eb_row[v] * cb) + cq * g[v];
        } else if (c1 == 0.0f) {
#pragma omp simd
            for (Py_ssize_t v = 0; v < V; ++v) {
                const float centred = (float)(k0 - (((double)t[v] - mt) - ((double)s[v] - ms)) * inv_t_d);
                g[v] = (g[v] * ca + eb_row[v] * cb) + cr * g[v] * centred + cq * g[v];
            }
        } else {
#pragma omp simd
            for (Py_ssize_t v = 0; v < V; ++v) {
                const float centred = (float)(k0 - (((double)t[v] - mt) - ((double)s[v] - ms)) * inv_t_d);
                g[v] = (g[v] * ca + eb_row[v] * cb) + cr * g[v] * centred + c1 * exp_nonpositive(s[v] - ms);
            }
        }
        if (job->labels) g[job->labels[i]] -= (float)job->ce_coef;
    }
}

static int as_pointer(PyObject *obj, void **out) {
    if (obj == Py_None) {
        *out = NULL;
        return 1;
    }
    *out = PyLong_AsVoidPtr(obj);
    return !PyErr_Occurred();
}

PyDoc_STRVAR(kl_rows_doc,
             "kl_rows(s, t, g, kl, ce, valid, labels, rows, vocab, s_stride, t_stride, g_stride, inv_t, w_f, "
             "weight, ce_coef)\n\n"
             "Per-row w_f KL(P||Q) + (1 - w_f) KL(Q||P) of float32 logit rows (addresses as ints; ce, valid "
             "and labels may be None) into the float64 array kl, the weighted gradient w.r.t. s into g.");

static PyObject *kl_rows(PyObject *self, PyObject *args) {
    PyObject *o_s, *o_t, *o_g, *o_kl, *o_ce, *o_valid, *o_labels;
    Job job;
    (void)self;
    if (!PyArg_ParseTuple(args, "OOOOOOOnnnnndddd", &o_s, &o_t, &o_g, &o_kl, &o_ce, &o_valid, &o_labels, &job.rows,
                          &job.vocab, &job.s_stride, &job.t_stride, &job.g_stride, &job.inv_t, &job.w_f, &job.weight,
                          &job.ce_coef))
        return NULL;
    void *p[7];
    PyObject *objs[7] = {o_s, o_t, o_g, o_kl, o_ce, o_valid, o_labels};
    for (int k = 0; k < 7; ++k)
        if (!as_pointer(objs[k], &p[k])) return NULL;
    if (!p[0] || !p[1] || !p[2] || !p[3] || (p[6] && !p[4]) || job.rows < 0 || job.vocab < 1) {
        PyErr_SetString(PyExc_ValueError, "kl_rows: s, t, g, kl (and ce with labels) must be given; vocab >= 1");
        return NULL;
    }
    job.s = p[0];
    job.t = p[1];
    job.g = p[2];
    job.kl = p[3];
    job.ce = p[4];
    job.valid = p[5];
    job.labels = p[6];
    float *eb_row = malloc((size_t)job.vocab * sizeof *eb_row);
    double *exps = malloc(2 * (size_t)job.vocab * sizeof *exps); /* small_kl's float64 exponentials */
    if (!eb_row || !exps) {
        free(eb_row);
        free(exps);
        return PyErr_NoMemory();
    }
    Py_BEGIN_ALLOW_THREADS kl_row_range(&job, eb_row, exps);
    Py_END_ALLOW_THREADS free(eb_row);
    free(exps);
    Py_RETURN_NONE;
}

static PyMethodDef methods[] = {{"kl_rows", kl_rows, METH_VARARGS, kl_rows_doc}, {NULL, NULL, 0, NULL}};

static struct PyModuleDef module = {PyModuleDef_HEAD_INIT, "kldiv._kernels",
                                    "Fused CPU kernels of kldiv's large-vocabulary losses.", -1, methods, NULL, NULL, NULL, NULL};

PyMODINIT_FUNC PyInit__kernels(void) { return PyModule_Create(&module); }
