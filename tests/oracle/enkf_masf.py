"""Oracle: the MASF code's stochastic EnKF (`enkf_update`, mode "full"), in physical space.

Written from tcnllab-oss/masf (see docs/reference/masf.md §8):
    X_a = (X - x̄)·infl;  Y_a = (Y - ȳ)·infl;  X = x̄ + X_a;  Y = ȳ + Y_a
    P_xy = X_aᵀ Y_a / (B-1);  S = Y_aᵀ Y_a / (B-1) + (R + 1e-6) I
    K = solve(Sᵀ, P_xyᵀ)ᵀ;  Z̃ = z + R^{1/2} ξ (raw draws, per member);  X += (Z̃ - Y) Kᵀ
The standard normals ξ are genda's, read from the file; the jitter is the file's gain_jitter.
"""
import sys

import numpy as np

from common import compare, load

d, a = load(sys.argv[1])
X = d["prior"].copy()
idx = d["obs_index"].astype(int)
z, rv = d["obs"], d["obs_error_var"]
infl, jitter = a["inflation"], a["gain_jitter"]
B = X.shape[0]
xm = X.mean(0)
Xa = (X - xm) * infl
Y = X[:, idx]
ym = Y.mean(0)
Ya = (Y - ym) * infl
X = xm + Xa
Y = ym + Ya
Pxy = Xa.T @ Ya / (B - 1)
S = Ya.T @ Ya / (B - 1) + np.diag(rv + jitter)
K = np.linalg.solve(S.T, Pxy.T).T
Zt = z + d["perturbation_normals"] * np.sqrt(rv)
X = X + (Zt - Y) @ K.T
compare([("analysis ensemble", d["analysis"], X)])
