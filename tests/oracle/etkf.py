"""Oracle: DAPPER's EnKF('Sqrt') analysis, eigen form, then post_process(infl, rot=False).

Written from dapper/da_methods/ensemble.py (EnKF_analysis, 'Sqrt' with 'eig', and post_process):
    d, V = eigh(Y R^-1 Y^T + (N-1) I);  T = V d^-1/2 V^T sqrt(N-1);  Pw = V d^-1 V^T
    w = dy R^-1 Y^T Pw;  E = mu + w A + T A;  then E = mu + infl (E - mu).
"""
import sys

import numpy as np

from common import compare, load

d, a = load(sys.argv[1])
E = d["prior"]
idx = d["obs_index"].astype(int)
y, rv = d["obs"], d["obs_error_var"]
N = E.shape[0]
N1 = N - 1
Rinv = np.diag(1.0 / rv)
Eo = E[:, idx]
mu = E.mean(0)
A = E - mu
xo = Eo.mean(0)
Y = Eo - xo
dy = y - xo
ev, V = np.linalg.eigh(Y @ Rinv @ Y.T + N1 * np.eye(N))
T = V @ np.diag(ev**-0.5) @ V.T * np.sqrt(N1)
Pw = V @ np.diag(ev**-1.0) @ V.T
w = dy @ Rinv @ Y.T @ Pw
Ea = mu + w @ A + T @ A
infl = a["inflation"]
if infl != 1.0:
    m = Ea.mean(0)
    Ea = m + infl * (Ea - m)
compare([("analysis ensemble", d["analysis"], Ea)])
