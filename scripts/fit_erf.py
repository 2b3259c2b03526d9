"""Fit the float32 erf of memotvm.targets.host_math and measure its error.

erf(x) for |x| < 0.875 is x + x * A(x^2); for 0.875 <= |x| < 3.92 it is
1 - exp(-x^2) * B(t), t = (|x| - 2.3975) / 1.5225 in [-1, 1] (B fits erfc(x) exp(x^2),
an entire function, so a polynomial converges fast); from 3.92 on, erf rounds to 1 in
float32.  Each polynomial is a least-squares fit of the relative error on 4000
Chebyshev nodes of its interval, in float64; the script prints the coefficients as
float32 and the largest error in ulp of float32 evaluation (numpy's float32 Horner
without fused multiply-adds, exp in float64 rounded to float32) over 200,000 points
of [0, 5] and 2,000 down to 1e-30.

    python scripts/fit_erf.py
"""

from __future__ import annotations

import math

import numpy as np

SPLIT, TOP = 0.875, 3.92
MID, HALF = (SPLIT + TOP) / 2, (TOP - SPLIT) / 2
f32 = np.float32


def fit(fn, lo, hi, degree, variable):
    k = np.arange(4000)
    x = (lo + hi) / 2 + (hi - lo) / 2 * np.cos(np.pi * (k + 0.5) / 4000)
    y = fn(x)
    vander = np.vander(variable(x), degree + 1, increasing=True) / y[:, None]
    return np.linalg.lstsq(vander, np.ones_like(y), rcond=None)[0]


def horner(coefficients, u):
    r = f32(coefficients[-1])
    for c in coefficients[-2::-1]:
        r = f32(r * u + f32(c))
    return r


def main():
    erf, erfc = np.vectorize(math.erf), np.vectorize(math.erfc)
    a = fit(lambda x: erf(x) / x, 1e-6, SPLIT, 6, lambda x: x * x)
    a[0] -= 1  # (x + x * (A - 1): the final sum rounds once more accurately)
    b = fit(lambda x: erfc(x) * np.exp(x * x), SPLIT, TOP, 10, lambda x: (x - MID) / HALF)
    a, b = a.astype(np.float32), b.astype(np.float32)
    print("A:", ", ".join(str(c) for c in a))
    print("B:", ", ".join(str(c) for c in b))

    def erf32(x):
        ax = f32(abs(x))
        if ax < SPLIT:
            r = f32(ax + f32(ax * horner(a, f32(ax * ax))))
        elif ax < TOP:
            t = f32(f32(ax - f32(MID)) * f32(1 / HALF))
            r = f32(f32(1) - f32(f32(np.exp(np.float64(-f32(ax * ax)))) * horner(b, t)))
        else:
            r = f32(1)
        return math.copysign(r, x)

    xs = np.concatenate([np.linspace(0, 5, 200001), np.geomspace(1e-30, 1, 2000)]).astype(np.float32)
    got = np.array([erf32(v) for v in xs], np.float64)
    ref = erf(xs.astype(np.float64))
    ulp = np.abs(got - ref) / np.spacing(np.abs(ref).astype(np.float32)).astype(np.float64)
    for lo, hi in ((0, SPLIT), (SPLIT, TOP), (TOP, 6)):
        inside = (xs >= lo) & (xs < hi)
        print(f"[{lo}, {hi}): at most {ulp[inside].max():.2f} ulp")


if __name__ == "__main__":
    main()
