/* SPDX-License-Identifier: MIT */
/*
 * Rejection-inversion Zipf sampling (see kvs/zipf.h). With h(x) = x^-s and H its
 * antiderivative (H(1) = 0), rank k >= 2 owns the interval [H(k - 0.5), H(k + 0.5)) of
 * "area" space, and rank 1 owns [H(1.5) - h(1), H(1.5)). Because h is convex, the integral of
 * h over [k - 0.5, k + 0.5] is at least h(k), so each interval is at least h(k) long. A uniform
 * y over the union is mapped back to x = H^-1(y), rounded to k, and accepted when y lies in
 * the last h(k) of k's interval: every rank is then accepted with probability proportional
 * to h(k) exactly, and the rejected share is small (a few percent at most) for every s.
 *
 * The squeeze: y >= H(k + 0.5) - h(k) holds whenever k - x <= 2 - H^-1(H(2.5) - h(2)), because
 * the function k - H^-1(H(k + 0.5) - h(k)) is smallest at k = 2 (it rises towards 1/2 as k
 * grows); this saves the pow() of the exact test for most draws.
 *
 * H and H^-1 are written with expm1/log1p so that they stay accurate as s approaches 1, where
 * the closed forms divide by (1 - s) and H becomes log.
 */
#include "kvs/zipf.h"

#include <errno.h>
#include <math.h>

/* (e^t - 1) / t, continuous at 0. */
static double expm1_over(double t)
{
    return fabs(t) > 1e-8 ? expm1(t) / t : 1.0 + t * 0.5;
}

/* log(1 + t) / t, continuous at 0. */
static double log1p_over(double t)
{
    return fabs(t) > 1e-8 ? log1p(t) / t : 1.0 - t * 0.5;
}

/* h(x) = x^-s */
static double zh(double s, double x)
{
    return exp(-s * log(x));
}

/* H(x) = (x^(1-s) - 1) / (1 - s), or log(x) when s = 1 */
static double zH(double s, double x)
{
    double lx = log(x);

    return expm1_over((1.0 - s) * lx) * lx;
}

/* H^-1(y) = (1 + (1 - s) y)^(1 / (1 - s)), or e^y when s = 1 */
static double zHinv(double s, double y)
{
    double t = y * (1.0 - s);

    /* For s > 1 rounding can push t to -1 at the far end; stay inside the domain. */
    if (t < -1.0)
        t = -1.0;
    return exp(log1p_over(t) * y);
}

int kvs_zipf_init(struct kvs_zipf *z, uint64_t n, double s)
{
    if (n == 0 || n > ((uint64_t)1 << 53) || !(s > 0.0) || s > KVS_ZIPF_MAX_S)
        return -EINVAL;
    z->n = n;
    z->s = s;
    z->y_lo = zH(s, 1.5) - 1.0;
    z->y_hi = zH(s, (double)n + 0.5);
    z->squeeze = 2.0 - zHinv(s, zH(s, 2.5) - zh(s, 2.0));
    return 0;
}

uint64_t kvs_zipf_next(const struct kvs_zipf *z, struct kvs_rng *rng)
{
    for (;;) {
        double y = z->y_hi + kvs_rng_double(rng) * (z->y_lo - z->y_hi);
        double x = zHinv(z->s, y);
        double kd = floor(x + 0.5);
        uint64_t k;

        /* Rounding at the ends of the range may step one rank outside; clamp. */
        if (kd < 1.0)
            kd = 1.0;
        else if (kd > (double)z->n)
            kd = (double)z->n;
        k = (uint64_t)kd;
        if (kd - x <= z->squeeze || y >= zH(z->s, kd + 0.5) - zh(z->s, kd))
            return k;
    }
}
