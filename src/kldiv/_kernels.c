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

/* SIMD paths, chosen once at import by the CPU's features (simd_paths() lists them, best first):
 *   "avx512f"  AVX-512F with FMA;  "avx2"  AVX2 with FMA (x86-64-v3);  "baseline"  the compiler's defaults.
 * Each is the same source compiled for its target (KLDIV_PATH below). The paths with FMA evaluate the
 * exponentials, the series of small_kl and the float32 sum <e_b, d> with fused multiply-adds, so the last bits
 * of a value may differ between paths (never beyond the accuracy stated above). Nothing else is fused (setup.py
 * builds with -ffp-contract=off): the float64 log-ratios and the gradient's terms keep their separate roundings,
 * so that terms which must cancel exactly do (a one-entry row, q = p).
 * The loops vectorize only with -fno-trapping-math (setup.py). Under GCC's default -ftrapping-math, an
 * operation that might raise a floating-point exception is not moved out of a branch, so the branch-free
 * selects of the exponential (the clamp of its argument, the flush below 2^-126) stay branches; only AVX-512,
 * with masked operations, vectorized such loops. The AVX2 code ran scalar: 13.6 ns per logit instead of 1.4. */
#if defined(__x86_64__) && (defined(__clang__) ? __clang_major__ >= 14 : defined(__GNUC__))
#define KLDIV_X86 1
#endif
#if defined(__GNUC__) || defined(__clang__)
#define KLDIV_INLINE static inline __attribute__((always_inline))
#else
#define KLDIV_INLINE static inline
#endif

/* a * b + c, fused (one rounding) on the paths with FMA: `fused` is a constant of each path, folded when the
 * always-inline callers are compiled for it */
KLDIV_INLINE float mul_add_f(float a, float b, float c, int fused) { return fused ? fmaf(a, b, c) : a * b + c; }
KLDIV_INLINE double mul_add_d(double a, double b, double c, int fused) { return fused ? fma(a, b, c) : a * b + c; }

/* Row sums: float32 partial sums over blocks of BLOCK entries (vectorized), accumulated in float64. */
#define BLOCK 512

/* Rows whose value is below this are recomputed cancellation-free in float64 (small_kl): <p, d> - c in float32
 * has a relative error of about 1e-7 / KL (measured: 2e-5 at KL = 4e-3, 1.5e-6 at 0.03, 4e-7 at 0.4; 2e-6 at 0.11 on
 * low-entropy rows), so above 0.1 it stays within about 2e-6; a refined row takes about 4x the time of a fast one
 * (5.6 against 1.4 ns per logit with AVX2). */
#define REFINE_BELOW 0.1

/* exp(x) for x <= 0: x = n ln 2 + r, |r| <= ln 2 / 2, exp(r) by the Cephes expf polynomial, 2^n by exponent
 * bits (0 for n < -126: results below 2^-126 are flushed to 0). Rounding to the integer n by the 1.5 * 2^23
 * shifter and every select on integers or by max keep the loop branch-free and vectorizable. */
KLDIV_INLINE float exp_nonpositive(float x, int fused) {
    const float shifter = 12582912.0f;
    /* x = max(x, -103) by the bits: for x <= 0 (and -inf) a larger magnitude is a larger unsigned pattern, so
     * one unsigned minimum (0xC2CE0000 is -103) clamps, where a float compare-and-blend takes two instructions */
    uint32_t xb;
    memcpy(&xb, &x, sizeof xb);
    xb = xb < 0xC2CE0000u ? xb : 0xC2CE0000u;
    memcpy(&x, &xb, sizeof x);
    float k = mul_add_f(x, 1.44269504088896341f, shifter, fused);
    float n = k - shifter;
    int32_t ki;
    memcpy(&ki, &k, sizeof ki);
    float r = mul_add_f(n, -0.693359375f, x, fused);
    r = mul_add_f(n, 2.12194440e-4f, r, fused);
    /* the polynomial by Estrin's scheme, pairs of terms in parallel: a shorter dependency chain than Horner's
     * rule (the exponentials' latency, not the number of operations, bounded the loop) */
    const float r2 = r * r;
    const float p01 = mul_add_f(1.6666665459e-1f, r, 5.0000001201e-1f, fused);
    const float p23 = mul_add_f(8.3334519073e-3f, r, 4.1665795894e-2f, fused);
    const float p45 = mul_add_f(1.9875691500e-4f, r, 1.3981999507e-3f, fused);
    const float p = mul_add_f(mul_add_f(p45, r2, p23, fused), r2, p01, fused);
    const float y = mul_add_f(p, r2, r, fused) + 1.0f;
    int32_t biased = ki - 0x4B400000 + 127; /* n + 127: 0 or below for n < -126 */
    biased = biased > 0 ? biased : 0;
    int32_t bits = biased * (1 << 23);
    float scale;
    memcpy(&scale, &bits, sizeof scale);
    return y * scale;
}

/* exp(x) in float64 for x <= 0 (0 below about -708): x = n ln 2 + r, |r| <= ln 2 / 2, exp(r) by its Taylor
 * series to degree 12 (truncation about 2.4e-16 relative; measured error at most 2.5 ulp on [-708, 0]), 2^n by
 * exponent bits; branch-free, vectorizable. */
KLDIV_INLINE double exp_double(double x, int fused) {
    const double shifter = 6755399441055744.0; /* 1.5 * 2^52 */
    x = x > -745.0 ? x : -745.0;
    double k = mul_add_d(x, 1.4426950408889634, shifter, fused);
    double n = k - shifter;
    int64_t ki;
    memcpy(&ki, &k, sizeof ki);
    double r = mul_add_d(n, -0.693145751953125, x, fused);
    r = mul_add_d(n, -1.42860682030941723212e-6, r, fused);
    double p = 1.0 / 479001600.0;
    p = mul_add_d(p, r, 1.0 / 39916800.0, fused);
    p = mul_add_d(p, r, 1.0 / 3628800.0, fused);
    p = mul_add_d(p, r, 1.0 / 362880.0, fused);
    p = mul_add_d(p, r, 1.0 / 40320.0, fused);
    p = mul_add_d(p, r, 1.0 / 5040.0, fused);
    p = mul_add_d(p, r, 1.0 / 720.0, fused);
    p = mul_add_d(p, r, 1.0 / 120.0, fused);
    p = mul_add_d(p, r, 1.0 / 24.0, fused);
    p = mul_add_d(p, r, 1.0 / 6.0, fused);
    p = mul_add_d(p, r, 0.5, fused);
    p = mul_add_d(p, r, 1.0, fused);
    p = mul_add_d(p, r, 1.0, fused);
    int64_t biased = ki - 0x4338000000000000LL + 1023; /* n + 1023: 0 or below for n < -1022 (flushed to 0) */
    biased = biased > 0 ? biased : 0;
    int64_t bits = biased * ((int64_t)1 << 52);
    double scale;
    memcpy(&scale, &bits, sizeof scale);
    return p * scale;
}

/* e^x - 1 - x and e^-x - 1 + x for |x| < 1/2, without cancellation: with E and O the even and odd parts of
 * the series x^2/2! + ... + x^14/14! (the rest is below 1e-17 relative), by Horner's rule in x^2, they are
 * E + O and E - O (|O| <= |x| E / 3, so neither cancels). */
typedef struct {
    double plus, minus;
} SeriesPair;

KLDIV_INLINE SeriesPair exp_m1_minus_x_small(double x, int fused) {
    const double u = x * x;
    double e = 1.0 / 87178291200.0;
    e = mul_add_d(e, u, 1.0 / 479001600.0, fused);
    e = mul_add_d(e, u, 1.0 / 3628800.0, fused);
    e = mul_add_d(e, u, 1.0 / 40320.0, fused);
    e = mul_add_d(e, u, 1.0 / 720.0, fused);
    e = mul_add_d(e, u, 1.0 / 24.0, fused);
    e = mul_add_d(e, u, 0.5, fused);
    double o = 1.0 / 6227020800.0;
    o = mul_add_d(o, u, 1.0 / 39916800.0, fused);
    o = mul_add_d(o, u, 1.0 / 362880.0, fused);
    o = mul_add_d(o, u, 1.0 / 5040.0, fused);
    o = mul_add_d(o, u, 1.0 / 120.0, fused);
    o = mul_add_d(o, u, 1.0 / 6.0, fused);
    e *= u;
    o *= u * x;
    return (SeriesPair){e + o, e - o};
}

/* KL of one row in float64, cancellation-free (for values below REFINE_BELOW, where <p, d> - c loses digits):
 * with p = e^b / Z_b, q = e^a / Z_a and r = log p - log q = b - a - log(Z_b / Z_a),
 *   KL(P||Q) = sum p (e^-r - 1 + r),  KL(Q||P) = sum q (e^r - 1 - r),
 * every term >= 0 (the identities hold as sum p = sum q = 1); for |r| >= 1/2 the terms are q - p + p r and
 * p - q - q r, which do not cancel. The discrete core's kl_terms_from_log_ratio, in C. r is formed from the exact
 * float64 differences of the logits, scaled once. Only the directions with a nonzero weight are summed. */
typedef struct {
    double forward, reverse;
} KLPair;

/* sum p (e^-r - 1 + r) (with `forward`) and sum q (e^r - 1 - r) (with `reverse`), r = ((t - s) - gap) / T - c */
KLDIV_INLINE KLPair small_kl_sums(const float *s, const float *t, Py_ssize_t V, double inv_t, double gap, double c,
                                  const double *ea, const double *eb, double inv_za, double inv_zb, int forward,
                                  int reverse, int fused) {
    double kl_f = 0.0, kl_r = 0.0;
#pragma omp simd reduction(+ : kl_f, kl_r)
    for (Py_ssize_t v = 0; v < V; ++v) {
        const double r = (((double)t[v] - s[v]) - gap) * inv_t - c;
        const double q = ea[v] * inv_za, p = eb[v] * inv_zb;
        const int small = fabs(r) < 0.5;
        const SeriesPair series = exp_m1_minus_x_small(r, fused);
        if (forward) {
            const double direct = q - p + p * r;
            kl_f += small ? p * series.minus : direct;
        }
        if (reverse) {
            const double direct = p - q - q * r;
            kl_r += small ? q * series.plus : direct;
        }
    }
    return (KLPair){kl_f, kl_r};
}

KLDIV_INLINE double small_kl(const float *s, const float *t, Py_ssize_t V, float ms, float mt, double inv_t,
                             double w_f, double *ea, double *eb, int fused) {
    double za = 0.0, zb = 0.0;
#pragma omp simd reduction(+ : za, zb)
    for (Py_ssize_t v = 0; v < V; ++v) {
        ea[v] = exp_double(((double)s[v] - ms) * inv_t, fused);
        eb[v] = exp_double(((double)t[v] - mt) * inv_t, fused);
        za += ea[v];
        zb += eb[v];
    }
    const double gap = (double)mt - ms, c = log(zb / za);
    const double inv_za = 1.0 / za, inv_zb = 1.0 / zb;
    const KLPair kl = w_f == 1.0   ? small_kl_sums(s, t, V, inv_t, gap, c, ea, eb, inv_za, inv_zb, 1, 0, fused)
                      : w_f == 0.0 ? small_kl_sums(s, t, V, inv_t, gap, c, ea, eb, inv_za, inv_zb, 0, 1, fused)
                                   : small_kl_sums(s, t, V, inv_t, gap, c, ea, eb, inv_za, inv_zb, 1, 1, fused);
    return w_f * kl.forward + (1.0 - w_f) * kl.reverse;
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

typedef struct {
    float ms, mt, nonfinite; /* the maxima of s and t; NaN (or inf) iff an entry is NaN or infinite */
} RowMax;

/* The maxima of one row (its first pass, which reads it from memory) */
KLDIV_INLINE RowMax row_max(const float *s, const float *t, Py_ssize_t V) {
    float ms = -INFINITY, mt = -INFINITY, nonfinite = 0.0f;
#pragma omp simd reduction(max : ms, mt) reduction(+ : nonfinite)
    for (Py_ssize_t v = 0; v < V; ++v) {
        ms = ms > s[v] ? ms : s[v];
        mt = mt > t[v] ? mt : t[v];
        nonfinite += (s[v] - s[v]) + (t[v] - t[v]);
    }
    return (RowMax){ms, mt, nonfinite};
}

typedef struct {
    double za, zb, pd, rest, z1;
    RowMax next;
} RowSums;

/* The exponentials of one row and their sums (the row's second pass): e_a into g, e_b into eb, Z_a, Z_b and
 * <e_b, d>; with `centre`, <e_a, d - d_r> in float64, d = ((t - s) - gap) / T with gap = max t - max s (the
 * exact differences of the logits, scaled once, so that d - d_r is exactly 0 at the entry r); with `hard`,
 * exp(s - max s) into e1 and its sum. The flags are constants of each call site, so each combination compiles
 * to a loop of its own without the others' work. */
KLDIV_INLINE RowSums row_sums(const float *s, const float *t, float *g, float *eb, float *e1, Py_ssize_t V, float ms,
                              float mt, float inv_t, double inv_t_d, double gap, double d_r, const float *ns, const float *nt,
                              int centre, int hard, int fused) {
    RowSums sums = {0.0, 0.0, 0.0, 0.0, 0.0, {-INFINITY, -INFINITY, 0.0f}};
    float nms = -INFINITY, nmt = -INFINITY, nonfinite = 0.0f;
    for (Py_ssize_t v0 = 0; v0 < V; v0 += BLOCK) {
        const Py_ssize_t v1 = v0 + BLOCK < V ? v0 + BLOCK : V;
        float za = 0.0f, zb = 0.0f, pd = 0.0f, z1 = 0.0f;
        double rest = 0.0;
#pragma omp simd reduction(+ : za, zb, pd, z1, rest, nonfinite) reduction(max : nms, nmt)
        for (Py_ssize_t v = v0; v < v1; ++v) {
            nms = nms > ns[v] ? nms : ns[v];
            nmt = nmt > nt[v] ? nmt : nt[v];
            nonfinite += (ns[v] - ns[v]) + (nt[v] - nt[v]);
            const float a = (s[v] - ms) * inv_t, b = (t[v] - mt) * inv_t, d = b - a;
            const float e_a = exp_nonpositive(a, fused), e_b = exp_nonpositive(b, fused);
            g[v] = e_a;
            eb[v] = e_b;
            za += e_a;
            zb += e_b;
            pd = mul_add_f(e_b, d, pd, fused);
            if (centre) rest += (double)e_a * ((((double)t[v] - s[v]) - gap) * inv_t_d - d_r);
            if (hard) {
                const float e = exp_nonpositive(s[v] - ms, fused);
                e1[v] = e;
                z1 += e;
            }
        }
        sums.za += za;
        sums.zb += zb;
        sums.pd += pd;
        sums.rest += rest;
        sums.z1 += z1;
    }
    sums.next = (RowMax){nms, nmt, nonfinite};
    return sums;
}

/* The gradient pass: g = (ca e_a + cb e_b) + cr e_a (k0 - d) + (c1 e1 with `hard`, else cq e_a), the centred
 * k0 - d = c - d - KL(Q||P) formed in float64 with d as in row_sums (with `centre`; without it cr is 0 and the
 * term is left out). */
KLDIV_INLINE void gradient(const float *s, const float *t, float *g, const float *eb, const float *e1, Py_ssize_t V,
                           double inv_t_d, double gap, float ca, float cb, float cr, double k0, float cq, float c1,
                           int centre, int hard) {
#pragma omp simd
    for (Py_ssize_t v = 0; v < V; ++v) {
        float value = g[v] * ca + eb[v] * cb;
        if (centre) {
            const float centred = (float)(k0 - (((double)t[v] - s[v]) - gap) * inv_t_d);
            value += cr * g[v] * centred;
        }
        g[v] = value + (hard ? c1 * e1[v] : cq * g[v]);
    }
}

/* Index of the first entry equal to m (the row's maximum, so there is one), found block by block with a
 * vectorized test; 0 if none. */
KLDIV_INLINE Py_ssize_t first_equal(const float *s, Py_ssize_t V, float m) {
    for (Py_ssize_t v0 = 0; v0 < V; v0 += 64) {
        const Py_ssize_t v1 = v0 + 64 < V ? v0 + 64 : V;
        int hit = 0;
#pragma omp simd reduction(| : hit)
        for (Py_ssize_t v = v0; v < v1; ++v) hit |= s[v] == m;
        if (hit)
            for (Py_ssize_t v = v0; v < v1; ++v)
                if (s[v] == m) return v;
    }
    return 0;
}

/* The rows of a job; `work` holds 2 V floats (e_b and exp(s - max s) of a row), `exps` 2 V doubles (small_kl). */
KLDIV_INLINE void kl_row_range(const Job *job, float *work, double *exps, int fused) {
    const Py_ssize_t V = job->vocab;
    const float inv_t = (float)job->inv_t;
    const double inv_t_d = job->inv_t;
    const int centre = job->w_f != 1.0, hard = job->labels != NULL && inv_t != 1.0f;
    float *eb = work, *e1 = work + V;
    RowMax next = {0.0f, 0.0f, 0.0f};
    int have_next = 0; /* whether `next` holds the maxima of row i, found in row i - 1's second pass */
    for (Py_ssize_t i = 0; i < job->rows; ++i) {
        const float *s = job->s + i * job->s_stride, *t = job->t + i * job->t_stride;
        float *g = job->g + i * job->g_stride;
        if (job->valid && !job->valid[i]) {
            have_next = 0;
            memset(g, 0, (size_t)V * sizeof *g);
            job->kl[i] = 0.0;
            if (job->ce) job->ce[i] = 0.0;
            continue;
        }
        const RowMax m = have_next ? next : row_max(s, t, V);
        have_next = 0;
        const float ms = m.ms, mt = m.mt;
        if (m.nonfinite != 0.0f || fabs((double)ms * inv_t_d) > FLT_MAX || fabs((double)mt * inv_t_d) > FLT_MAX) {
            /* not finite, or s / T overflows: the caller's general path recomputes the row or names the problem */
            job->kl[i] = NAN;
            if (job->ce) job->ce[i] = NAN;
            continue;
        }
        /* the next row's maxima in the same pass, so that reading it from memory overlaps these exponentials (the
         * last row reads itself again, from the cache) */
        const int more = i + 1 < job->rows;
        const float *ns = more ? s + job->s_stride : s, *nt = more ? t + job->t_stride : t;
        /* <q, d> = d_r + <q, d - d_r>, r the student's most probable entry, in float64 (where t - max t and
         * s - max s are exact): the largest term drops out, so the rounding of Z_a cannot swamp the centred
         * gradient q (<q, d> - d), which can be far smaller than |d| */
        const double d_r = centre ? ((double)t[first_equal(s, V, ms)] - mt) * inv_t_d : 0.0;
        const double gap = (double)mt - ms; /* d = ((t - s) - gap) / T */
        RowSums sums;
        if (centre)
            sums = hard ? row_sums(s, t, g, eb, e1, V, ms, mt, inv_t, inv_t_d, gap, d_r, ns, nt, 1, 1, fused)
                        : row_sums(s, t, g, eb, e1, V, ms, mt, inv_t, inv_t_d, gap, d_r, ns, nt, 1, 0, fused);
        else
            sums = hard ? row_sums(s, t, g, eb, e1, V, ms, mt, inv_t, inv_t_d, gap, d_r, ns, nt, 0, 1, fused)
                        : row_sums(s, t, g, eb, e1, V, ms, mt, inv_t, inv_t_d, gap, d_r, ns, nt, 0, 0, fused);
        next = sums.next;
        have_next = more;
        const double za = sums.za, zb = sums.zb;
        const double qd_centre = centre ? d_r + sums.rest / za : 0.0;
        const double c = log(zb / za), kl_f = sums.pd / zb - c, kl_r = c - qd_centre;
        const double value = job->w_f * kl_f + (1.0 - job->w_f) * kl_r;
        job->kl[i] =
            value < REFINE_BELOW ? small_kl(s, t, V, ms, mt, inv_t_d, job->w_f, exps, exps + V, fused) : value;
        /* gradient = ca e_a + cb e_b + cr e_a (k0 - d) + hard-label part (cq e_a at T = 1, else c1 exp(s - max s)),
         * each term with its own coefficient, so that equal terms cancel exactly (e.g. a one-entry vocabulary) */
        const float ca = (float)(job->w_f * job->weight / za), cb = (float)(-job->w_f * job->weight / zb);
        const float cr = (float)((1.0 - job->w_f) * job->weight / za);
        const double k0 = qd_centre; /* c - KL(Q||P); the centred c - d - KL(Q||P) is formed in float64 */
        float cq = 0.0f, c1 = 0.0f;
        if (job->labels) {
            const int64_t y = job->labels[i];
            const double z = hard ? sums.z1 : za;
            job->ce[i] = log(z) - (double)(s[y] - ms);
            if (hard)
                c1 = (float)(job->ce_coef / z);
            else
                cq = (float)(job->ce_coef / z);
        }
        if (centre) {
            if (hard)
                gradient(s, t, g, eb, e1, V, inv_t_d, gap, ca, cb, cr, k0, cq, c1, 1, 1);
            else
                gradient(s, t, g, eb, e1, V, inv_t_d, gap, ca, cb, cr, k0, cq, c1, 1, 0);
        } else {
            if (hard)
                gradient(s, t, g, eb, e1, V, inv_t_d, gap, ca, cb, cr, k0, cq, c1, 0, 1);
            else
                gradient(s, t, g, eb, e1, V, inv_t_d, gap, ca, cb, cr, k0, cq, c1, 0, 0);
        }
        if (job->labels) g[job->labels[i]] -= (float)job->ce_coef;
    }
}

/* One function per SIMD path: the rows of a job, and the two exponentials on arrays (for the tests). */
#define KLDIV_PATH(name, target, fused)                                                                             \
    target static void kl_rows_##name(const Job *job, float *work, double *exps) {                                   \
        kl_row_range(job, work, exps, fused);                                                                        \
    }                                                                                                                \
    target static void exp_f32_##name(const float *x, float *y, Py_ssize_t n) {                                      \
        _Pragma("omp simd") for (Py_ssize_t i = 0; i < n; ++i) y[i] = exp_nonpositive(x[i], fused);                  \
    }                                                                                                                \
    target static void exp_f64_##name(const double *x, double *y, Py_ssize_t n) {                                    \
        _Pragma("omp simd") for (Py_ssize_t i = 0; i < n; ++i) y[i] = exp_double(x[i], fused);                       \
    }

KLDIV_PATH(baseline, , 0)
#ifdef KLDIV_X86
KLDIV_PATH(avx2, __attribute__((target("avx2,fma"))), 1)
KLDIV_PATH(avx512f, __attribute__((target("avx512f,fma"))), 1)
static int has_avx2(void) { return __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma"); }
static int has_avx512f(void) { return __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("fma"); }
#endif
static int always(void) { return 1; }

typedef struct {
    const char *name;
    int (*supported)(void);
    void (*rows)(const Job *, float *, double *);
    void (*exp_f32)(const float *, float *, Py_ssize_t);
    void (*exp_f64)(const double *, double *, Py_ssize_t);
} Path;

/* best first */
static const Path PATHS[] = {
#ifdef KLDIV_X86
    {"avx512f", has_avx512f, kl_rows_avx512f, exp_f32_avx512f, exp_f64_avx512f},
    {"avx2", has_avx2, kl_rows_avx2, exp_f32_avx2, exp_f64_avx2},
#endif
    {"baseline", always, kl_rows_baseline, exp_f32_baseline, exp_f64_baseline},
};
#define N_PATHS ((int)(sizeof PATHS / sizeof PATHS[0]))
static const Path *path = &PATHS[N_PATHS - 1];

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
    float *work = malloc(2 * (size_t)job.vocab * sizeof *work);
    double *exps = malloc(2 * (size_t)job.vocab * sizeof *exps); /* small_kl's float64 exponentials */
    if (!work || !exps) {
        free(work);
        free(exps);
        return PyErr_NoMemory();
    }
    void (*rows)(const Job *, float *, double *) = path->rows;
    Py_BEGIN_ALLOW_THREADS rows(&job, work, exps);
    Py_END_ALLOW_THREADS free(work);
    free(exps);
    Py_RETURN_NONE;
}

PyDoc_STRVAR(exp_f32_doc, "exp_f32(x, out, n)\n\n"
                          "The kernel's float32 exponential of x <= 0 (n float32 values at address x) into out, "
                          "on the current SIMD path.");

PyDoc_STRVAR(exp_f64_doc, "exp_f64(x, out, n)\n\n"
                          "The kernel's float64 exponential of x <= 0 (n float64 values at address x) into out, "
                          "on the current SIMD path.");

static PyObject *exp_array(PyObject *args, int wide) {
    PyObject *o_x, *o_out;
    Py_ssize_t n;
    void *x, *out;
    if (!PyArg_ParseTuple(args, "OOn", &o_x, &o_out, &n)) return NULL;
    if (!as_pointer(o_x, &x) || !as_pointer(o_out, &out)) return NULL;
    if (!x || !out || n < 0) {
        PyErr_SetString(PyExc_ValueError, "exp: x and out must be addresses, n >= 0");
        return NULL;
    }
    const Path *p = path;
    Py_BEGIN_ALLOW_THREADS if (wide) p->exp_f64(x, out, n);
    else p->exp_f32(x, out, n);
    Py_END_ALLOW_THREADS Py_RETURN_NONE;
}

static PyObject *exp_f32(PyObject *self, PyObject *args) {
    (void)self;
    return exp_array(args, 0);
}

static PyObject *exp_f64(PyObject *self, PyObject *args) {
    (void)self;
    return exp_array(args, 1);
}

PyDoc_STRVAR(simd_path_doc, "simd_path()\n\nThe SIMD path the kernels run: 'avx512f', 'avx2' or 'baseline'.");

static PyObject *simd_path(PyObject *self, PyObject *args) {
    (void)self;
    (void)args;
    return PyUnicode_FromString(path->name);
}

PyDoc_STRVAR(simd_paths_doc, "simd_paths()\n\nThe SIMD paths this CPU can run, best (the one chosen at import) first.");

static PyObject *simd_paths(PyObject *self, PyObject *args) {
    (void)self;
    (void)args;
    PyObject *names = PyList_New(0);
    if (!names) return NULL;
    for (int k = 0; k < N_PATHS; ++k) {
        if (!PATHS[k].supported()) continue;
        PyObject *name = PyUnicode_FromString(PATHS[k].name);
        if (!name || PyList_Append(names, name) < 0) {
            Py_XDECREF(name);
            Py_DECREF(names);
            return NULL;
        }
        Py_DECREF(name);
    }
    PyObject *out = PyList_AsTuple(names);
    Py_DECREF(names);
    return out;
}

PyDoc_STRVAR(set_simd_path_doc, "set_simd_path(name)\n\n"
                                "Run the kernels on the SIMD path `name`, one of simd_paths() (for tests and "
                                "benchmarks; not thread-safe against running kernels).");

static PyObject *set_simd_path(PyObject *self, PyObject *args) {
    const char *name;
    (void)self;
    if (!PyArg_ParseTuple(args, "s", &name)) return NULL;
    for (int k = 0; k < N_PATHS; ++k) {
        if (strcmp(PATHS[k].name, name) != 0) continue;
        if (!PATHS[k].supported()) {
            PyErr_Format(PyExc_ValueError, "set_simd_path: this CPU cannot run the SIMD path '%s'", name);
            return NULL;
        }
        path = &PATHS[k];
        Py_RETURN_NONE;
    }
    PyErr_Format(PyExc_ValueError, "set_simd_path: unknown SIMD path '%s'", name);
    return NULL;
}

static PyMethodDef methods[] = {{"kl_rows", kl_rows, METH_VARARGS, kl_rows_doc},
                                {"exp_f32", exp_f32, METH_VARARGS, exp_f32_doc},
                                {"exp_f64", exp_f64, METH_VARARGS, exp_f64_doc},
                                {"simd_path", simd_path, METH_NOARGS, simd_path_doc},
                                {"simd_paths", simd_paths, METH_NOARGS, simd_paths_doc},
                                {"set_simd_path", set_simd_path, METH_VARARGS, set_simd_path_doc},
                                {NULL, NULL, 0, NULL}};

static struct PyModuleDef module = {PyModuleDef_HEAD_INIT, "kldiv._kernels",
                                    "Fused CPU kernels of kldiv's large-vocabulary losses.", -1, methods, NULL, NULL, NULL, NULL};

PyMODINIT_FUNC PyInit__kernels(void) {
#ifdef KLDIV_X86
    __builtin_cpu_init();
#endif
    for (int k = 0; k < N_PATHS; ++k)
        if (PATHS[k].supported()) {
            path = &PATHS[k];
            break;
        }
    return PyModule_Create(&module);
}
