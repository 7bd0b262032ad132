"""Oracle: one analysis of DAPPER's PartFilt (dapper/da_methods/particle.py).

Written from PartFilt.assimilate, reweight, trigger_resampling, raw_C12, auto_bandw, resample /
_resample, regularize, mask_unique_of_sorted, sample_quickly_with and tools/matrices.chol_reduce.
The random draws are genda's, read from the file: the resampling uniforms (DAPPER's
rng.random() / rng.choice's uniforms) and one jitter row per resampled particle (DAPPER draws
one row per duplicated particle in order: the rows of the duplicated positions).
"""
import sys

import numpy as np

from common import compare, load

d, a = load(sys.argv[1])
E = d["prior"].copy()
N, Nx = E.shape
w = d["prior_weights"].copy()
y = d["obs"]
r = a["obs_error_var"]
HE = np.arctan(E) if a["arctan"] else E
innovs = (y - HE) / np.sqrt(r)


def weight_degeneracy(w, prec=1e-10):
    return (1 - w.max()) < prec


def unbias_var(w, avoid_pathological=False):
    N_eff = 1 / (w @ w)
    if avoid_pathological and weight_degeneracy(w):
        return 1
    return 1 / (1 - 1 / N_eff)


def reweight(w, innovs):
    logL = -0.5 * np.sum(innovs**2, axis=1)
    logw = np.log(w) + logL
    logw -= logw.max()
    w = np.exp(logw)
    return w / w.sum()


def raw_C12(E, w):
    if weight_degeneracy(w):
        w = np.ones(len(w)) / len(w)
    mu = w @ E
    A = E - mu
    ub = unbias_var(w, avoid_pathological=False)
    return np.sqrt(ub * w[:, None]) * A


def choice(p, u):
    # numpy's Generator.choice(n, size, p=p): inverse CDF, side='right'
    cdf = np.cumsum(p)
    cdf /= cdf[-1]
    return np.minimum(np.searchsorted(cdf, u, side="right"), len(p) - 1)


def resample(w, kind, u):
    if kind == 0:  # "Sys"
        U = u[0] / N
        CDF_a = U + np.arange(N) / N
        idx = np.minimum(np.searchsorted(np.cumsum(w), CDF_a), N - 1)
    elif kind == 1:  # "Res"
        w_N = w * N
        w_I = w_N.astype(int)
        w_D = w_N - w_I
        idx_I = np.concatenate([i * np.ones(wi, dtype=int) for i, wi in enumerate(w_I)])
        N_D = N - w_I.sum()
        idx_D = choice(w_D / w_D.sum(), u[:N_D])
        idx = np.hstack((idx_I, idx_D)).astype(int)
    else:  # "Stoch"
        idx = choice(w, u[:N])
    return idx, np.ones(N) / N


def mask_unique_of_sorted(idx):
    duplicates = idx == np.roll(idx, 1)
    duplicates |= idx == np.roll(idx, -1)
    return duplicates


def chol_reduce(Right):
    _, sig, UT = np.linalg.svd(Right, full_matrices=False)
    UT = np.sign(UT[:, [0]]) * UT
    return sig[:, None] * UT


w = reweight(w, innovs)
assessed, assessed_w = E.copy(), w.copy()
N_eff = 1 / (w @ w)
if N_eff <= N * a["ner"]:
    C12 = a["reg"] * N ** (-1 / (Nx + 4)) * raw_C12(E, w)
    idx, w = resample(w, int(a["resampling"]), d["uniforms"])
    E = E[idx]
    dups = mask_unique_of_sorted(idx) if a["nuj"] else np.ones(N, dtype=bool)
    D = d["jitter"][dups]
    if N > 2 * Nx:
        sample = D @ chol_reduce(C12)
    else:
        sample = D @ C12
    E[dups] += sample
compare(
    [
        ("analysis ensemble", d["analysis"], E),
        ("weights", d["weights"], w),
        ("assessed ensemble", d["assessed"], assessed),
        ("assessed weights", d["assessed_weights"], assessed_w),
    ]
)
