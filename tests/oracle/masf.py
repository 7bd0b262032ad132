"""Oracle: MASF's and SF's samplers as the authors' code runs them (github tcnllab-oss/masf).

Written from methods/ours.py (`sampler`, `Ours.sample`), methods/sf.py (`marginal_prob_std`,
`diffusion_coeff`, `SF.sample`), measurements/scheduler.py (`a`, `r`, the ramps),
measurements/grid_mask.py (A, B, M, U, Sigma, guidance), measurements/base.py (H, Cov,
forward_process, likelihood_score) and measurements/normalization.py ("standard" stats,
affine map), in float64. The network is a stand-in both sides share: x0_hat = 0 / eps_hat = 0
(an untrained, zero-initialised output layer: the filter case) or the exact conditional mean
of an independent Gaussian prior (the sampler case). The draws (the push to T, every reverse
step, the pseudo-measurement's noise on unobserved points) are genda's, read from the file.
"""
import sys

import numpy as np

from common import compare, load

d, a = load(sys.argv[1])
EPS = 1e-5          # Measurement eps, Normalization eps
T, TE = 0.992, 1e-5  # sample T, terminal_time
cosine_s = 0.008


def a_t(t):
    t = np.clip(t, TE, T)
    log_alpha_0 = np.log(np.cos(cosine_s / (1.0 + cosine_s) * np.pi / 2.0))
    v = (t + cosine_s) / (1.0 + cosine_s) * (np.pi / 2.0)
    return np.exp(np.log(np.cos(v)) - log_alpha_0)


def r_t(t):
    return np.sqrt(1 - a_t(t) ** 2)


def score_scale_fn(s, lo, hi, p):
    return lo + (hi - lo) * np.clip(s, 0.0, 1.0) ** p


def guidance_scale_fn(s, lo, hi, p):
    return lo + (hi - lo) * (1.0 - np.clip(s, 0.0, 1.0)) ** p


class GridMask:
    def __init__(self, mask, u, s, noise_std):
        self.mask, self.u, self.s, self.noise_std = mask, u, s, noise_std

    def H(self, x):  # norm(H_phy(denorm(x)))
        return (self.mask * (x * (self.s + EPS) + self.u) - self.u) / (self.s + EPS)

    def Cov(self, t):
        return (self.noise_std / (self.s + EPS)) ** 2 * r_t(t) ** 2

    def A(self, t):
        at = a_t(t)
        return self.s / (self.s + EPS) * self.mask * (1.0 - at) + at

    def B(self, t):
        b = (self.mask * self.u - self.u) / (self.s + EPS)
        return (1.0 - a_t(t)) * b

    def M(self, s, t):
        return self.A(t) / (self.A(s) + EPS)

    def U(self, s, t):
        return self.B(t) - self.M(s, t) * self.B(s)

    def Sigma(self, s, t):
        m = self.M(s, t)
        return self.Cov(t) - m * self.Cov(s) * m

    def forward_process(self, x, t, noise):
        at = a_t(t)
        return at * x + (1.0 - at) * self.H(x) + np.sqrt(np.clip(self.Cov(t), 0.0, None)) * noise

    def guidance(self, z, x, t):
        m = self.M(t, 1.0)
        resid = z - m * x - self.U(t, 1.0)
        return m * resid / (self.Sigma(t, 1.0) + EPS)

    def likelihood_score(self, z, x):
        sigma_norm = self.noise_std / (self.s + EPS)
        # d/dx of -(z - H(x))^2 / (2 sigma_norm^2); dH/dx = mask
        return self.mask * (z - self.H(x)) / sigma_norm**2


def x0_hat(meas, x, s):
    if a["net"] == 0:
        return np.zeros_like(x)
    m0, p0 = d["m0"], d["p0"]
    at = a_t(s)
    slope = at + (1 - at) * meas.mask
    off = (1 - at) * (meas.mask * meas.u - meas.u) / (meas.s + EPS)
    return m0 + p0 * slope / (slope**2 * p0 + meas.Cov(s)) * (x - slope * m0 - off)


def ours_sample(meas, x0, z, nfe, ramps, noise_T, noise):
    smin, smax, spow, gmin, gmax, gpow = ramps
    times = np.linspace(1, 0, nfe + 1) ** 2
    times = times * (T - TE) + TE
    x = meas.forward_process(x0, T, noise_T)
    for j in range(nfe):
        s, t = times[j] * T, times[j + 1] * T
        pred = x0_hat(meas, x, s)
        score = -(x - meas.A(s) * pred) / (np.abs(meas.Cov(s)) + 1e-5)
        guided = score * score_scale_fn(s, smin, smax, spow) + meas.guidance(z, x, s) * guidance_scale_fn(s, gmin, gmax, gpow)
        mean = meas.M(s, t) * x + meas.U(s, t) - meas.Sigma(s, t) * guided
        x = mean + np.sqrt(np.abs(meas.Sigma(s, t))) * noise[j]
    return x


def sf_sample(meas, z, nfe, eps, tol, sigma, noise_T, noise):
    def marginal_prob_std(t):
        # float32 power as the code's float32 tensors (exactly 1 at t = 1e-10)
        return np.sqrt((np.float64(np.float32(sigma) ** np.float32(2 * t)) - 1.0) / 2.0 / np.log(sigma))

    x = noise_T * marginal_prob_std(1.0)
    time_steps = np.linspace(1.0, eps, nfe) ** 2
    step = time_steps[0] - time_steps[1]
    mean_x = x
    for i, t in enumerate(time_steps):
        std, g = marginal_prob_std(t), sigma**t
        if a["net"] == 0:
            eps_hat = np.zeros_like(x)
        else:
            eps_hat = -(std + 1e-5) * (x - d["m0"]) / (d["p0"] + std**2)
        score = eps_hat / (std + 1e-5)
        w = max(1.0 - 2.0 * t, 0.0)
        guided = score + meas.likelihood_score(z, x) * w
        norm = np.sqrt(np.mean(guided**2, axis=1))
        adj = np.where(norm > tol, tol / np.maximum(norm, 1e-300), 1.0)
        guided = guided * adj[:, None]
        mean_x = x + g**2 * guided * step
        x = mean_x + np.sqrt(step) * g * (noise[i] if i < nfe - 1 else 0.0)
    return mean_x


fc = d["forecast"]
N, n = fc.shape
C = int(a["channels"])
blk = n // C
u = np.zeros(n)
s = np.zeros(n)
for c in range(C):
    v = fc[:, c * blk:(c + 1) * blk]
    u[c * blk:(c + 1) * blk] = v.mean()
    s[c * blk:(c + 1) * blk] = max(v.std(ddof=1), 1e-5)
if a["net"] == 1:  # the sampler case: coordinates already normalised (u = 0, s = 1)
    u[:], s[:] = 0.0, 1.0
mask = np.zeros(n)
obs_idx = d["obs_index"].astype(int)
mask[obs_idx] = 1.0
sigma = a["obs_sigma"]
meas = GridMask(mask, u, s, sigma)
z_phy = sigma * d["pm_noise"]
z_phy[obs_idx] = d["obs"]
z = (z_phy - u) / (s + EPS)
x0 = (fc - u) / (s + EPS)
nfe = int(a["steps"])
if a["sf"] == 0:
    ramps = [a[k] for k in ("s_min", "s_max", "s_pow", "g_min", "g_max", "g_pow")]
    xa = ours_sample(meas, x0, z, nfe, ramps, d["noise_T"], d["noise"])
else:
    xa = sf_sample(meas, z, nfe, 1e-5, a["tol"], a["sigma_max"], d["noise_T"], d["noise"])
analysis = xa * (s + EPS) + u
compare([("analysis", d["analysis"], analysis), ("z", d["z"], z) if "z" in d else ("z", z, z)])
