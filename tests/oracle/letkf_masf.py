"""Oracle: the MASF code's deterministic LETKF (methods/letkf.py, `letkf_update`) on stacked
square fields (C, H, W), written from that code (docs/reference/masf.md §8):
    local observations of state j: every observed point (any channel) with periodic Euclidean
    grid distance d <= 2 radius; weight GC(d / radius) clamped to [0, 1], kept where > 0
    Xp, Yp = anomalies * inflation
    rinv_sqrt = sqrt(w) / sqrt(r + eps);  S = Yp_loc rinv_sqrt;  d~ = (z - ȳ) rinv_sqrt
    Pa_inv = sym((B-1) I + S Sᵀ) + eps I;  w̄ = solve(Pa_inv, S d~);  Pa = sym(Pa_inv⁻¹)
    W_a = V sqrt(max(λ, 0)) Vᵀ of (B-1) Pa;  x_j = x̄_j + Xp_j·w̄ + W_aᵀ Xp_j
"""
import sys

import numpy as np

from common import compare, load


def gaspari_cohn(r):
    r = np.abs(r)
    w = np.zeros_like(r)
    m1 = r <= 1
    x = r[m1]
    w[m1] = (((-0.25 * x + 0.5) * x + 0.625) * x - 5.0 / 3.0) * x * x + 1.0
    m2 = (r > 1) & (r <= 2)
    x = r[m2]
    w[m2] = ((((x / 12.0 - 0.5) * x + 0.625) * x + 5.0 / 3.0) * x - 5.0) * x + 4.0 - 2.0 / (3.0 * x)
    return np.clip(w, 0.0, 1.0)


d, a = load(sys.argv[1])
X = d["prior"]
idx = d["obs_index"].astype(int)
z, rv = d["obs"], d["obs_error_var"]
infl, radius, eps = a["inflation"], a["radius"], a["eps"]
H = W = int(a["side"])
B, D = X.shape
xm = X.mean(0)
Y = X[:, idx]
ym = Y.mean(0)
Xp = (X - xm) * infl
Yp = (Y - ym) * infl
oh, ow = (idx % (H * W)) // W, idx % W
I = np.eye(B)
post = X.copy()
for j in range(D):
    hj, wj = (j % (H * W)) // W, j % W
    dh = np.abs(oh - hj)
    dh = np.minimum(dh, H - dh)
    dw = np.abs(ow - wj)
    dw = np.minimum(dw, W - dw)
    dist = np.sqrt(dh * dh + dw * dw)
    near = dist <= 2.0 * radius
    if not near.any():
        continue
    w = gaspari_cohn(dist[near] / radius)
    keep = w > 0
    sel = np.flatnonzero(near)[keep]
    w = w[keep]
    rinv = np.sqrt(w) / np.sqrt(rv[sel] + eps)
    S = Yp[:, sel] * rinv
    dt = (z[sel] - ym[sel]) * rinv
    Pa_inv = (B - 1) * I + S @ S.T
    Pa_inv = 0.5 * (Pa_inv + Pa_inv.T) + eps * I
    wm = np.linalg.solve(Pa_inv, S @ dt)
    Pa = np.linalg.solve(Pa_inv, I)
    Pa = 0.5 * (Pa + Pa.T)
    lam, V = np.linalg.eigh((B - 1) * Pa)
    Wa = V @ np.diag(np.sqrt(np.clip(lam, 0.0, None))) @ V.T
    post[:, j] = xm[j] + Xp[:, j] @ wm + Wa.T @ Xp[:, j]
compare([("analysis ensemble", d["analysis"], post)])
