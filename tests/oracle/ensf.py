"""Oracle: the EnSF authors' reverse SDE (github zezhongzhang/EnSF).

Written from ScoreFilter/diffusion.py (NoiseSchedule 'linear', get_sde_coef, sample_SDE_euler,
score_gaussian_diffusion_diag) and the run_all_EnSF notebook (post_score with score_max,
atan_score_ana, damp_fn, the standardised x_T); legacy_code/EnSF_L96.py is the same with
eps_b = 0, no clipping and a plain randn x_T. The full-mixture case follows the authors'
(unused) score_diffusion_GM. The draws (x_T before standardisation, the noise of every step)
are genda's, read from the file.
"""
import sys

import numpy as np

from common import compare, load

d, a = load(sys.argv[1])
x0 = d["prior"]
y = d["obs"]
sig = a["obs_sigma"]
Nt = int(a["steps"])
ea, eb = a["eps_alpha"], a["eps_beta"]
assert a["t_min"] == 0.0, "the authors' grid ends at t = 0"
clip = a["score_clip"]
xt = d["x_T"].copy()
if a["standardized"]:
    xt = (xt - xt.mean(0)) / xt.std(0, ddof=1)


def prior_score(x, t):
    alpha = 1 - (1 - ea) * t
    beta_sq = eb + (1 - eb) * t
    if a["paired"]:
        return -(x - alpha * x0) / beta_sq
    # score_diffusion_GM: mixture of N(alpha x0_j, beta^2 I) over the members j
    diff = alpha * x0[None, :, :] - x[:, None, :]          # (M, N, d)
    logp = -0.5 * np.sum(diff**2, axis=2) / beta_sq       # (M, N)
    logp -= logp.max(axis=1, keepdims=True)
    wgt = np.exp(logp)
    wgt /= wgt.sum(axis=1, keepdims=True)
    return np.einsum("mn,mnd->md", wgt, diff) / beta_sq


def post_score(x, t):
    lik = -(np.arctan(x) - y) / sig**2 * (1.0 / (1.0 + x**2)) * (1 - t)
    s = prior_score(x, t) + lik
    if clip > 0:
        s = np.clip(s, -clip, clip)
    return s


t_mesh = np.linspace(1, 0, Nt + 1)
for i in range(Nt):
    t_now, t_next = t_mesh[i], t_mesh[i + 1]
    dt = t_now - t_next
    alpha_t = 1 - (1 - ea) * t_now
    beta_sq_t = eb + (1 - eb) * t_now
    sde_a = -(1 - ea) / alpha_t
    sde_b_sq = (1 - eb) - 2 * sde_a * beta_sq_t
    xt = xt - dt * (sde_a * xt - sde_b_sq * post_score(xt, t_now)) + np.sqrt(dt) * np.sqrt(
        sde_b_sq
    ) * d["noise"][i]
compare([("analysis ensemble", d["analysis"], xt)])
