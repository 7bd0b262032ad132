"""Oracle: DAPPER's EnKF('PertObs') analysis, then post_process(infl, rot=False).

Written from dapper/da_methods/ensemble.py (EnKF_analysis, 'PertObs'):
    C = Y^T Y + R (N-1);  D = mean0(hnoise.sample(N));  YC = Y C^-1;  KG = A^T YC
    dE = (KG (y - D - Eo)^T)^T;  E = E + dE;  then E = mu + infl (E - mu)
with mean0 = center(., rescale=True): centred, times sqrt(N/(N-1)). hnoise.sample(N) is
randn(N, p) @ R^{1/2}; the standard normals are genda's, read from the file.
"""
import sys

import numpy as np

from common import compare, load

d, a = load(sys.argv[1])
E = d["prior"].copy()
idx = d["obs_index"].astype(int)
y, rv = d["obs"], d["obs_error_var"]
N = E.shape[0]
N1 = N - 1
R = np.diag(rv)
Eo = E[:, idx]
mu = E.mean(0)
A = E - mu
xo = Eo.mean(0)
Y = Eo - xo
C = Y.T @ Y + R * N1
D = d["perturbation_normals"] @ np.diag(np.sqrt(rv))
D = (D - D.mean(0)) * np.sqrt(N / N1)
YC = np.linalg.solve(C.T, Y.T).T
KG = A.T @ YC
dE = (KG @ (y - D - Eo).T).T
E = E + dE
infl = a["inflation"]
if infl != 1.0:
    m = E.mean(0)
    E = m + infl * (E - m)
compare([("analysis ensemble", d["analysis"], E)])
