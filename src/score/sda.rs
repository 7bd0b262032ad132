//! Score-based data assimilation (SDA, Rozet & Louppe 2023): the score of a whole trajectory
//! x_{1:L} (L states of n values) composed from a network over short windows of 2k+1
//! consecutive states. For a Markov chain of order k,
//!
//!   ∇_{x_i} log p(x_{1:L}) = ∇_{x_i} log p(x_{i−k..i+k})   (k < i ≤ L − k, 1-based),
//!
//! because every factor of p(x_{1:L}) that contains x_i lies inside that window; the first k
//! states take the first window's score and the last k the last window's. SDA applies the same
//! composition to the noised trajectory (an approximation for t > 0). `unfold` cuts the L − 2k
//! windows, `fold` assembles the trajectory score from their scores (plain slices; the sampler
//! does the same on tensors so that autograd carries the guidance through it).
//!
//! `SdaSampler` draws whole trajectories (non-autoregressive) from p(x_{1:L} | y) as SDA does
//! (`sda.score.VPSDE.sample` with `GaussianScore`): the noise estimate of the composed prior is
//! corrected by the gradient of SDA's likelihood approximation
//!
//!   log p(y | x_t) ≈ log N(y; H x̂₀(x_t), Σ_y + γ (σ_t/μ_t)² I),   x̂₀ = (x_t − σ_t ε̂(x_t))/μ_t,
//!
//! differentiated through the network (Tweedie's estimate), then integrated with SDA's
//! exponential (DDIM-type) predictor x ← r x + (σ(t−Δ) − r σ(t)) ε̂_post, r = μ(t−Δ)/μ(t), and
//! `corrections` Langevin steps x ← x − (δ ε̂ + √(2δ) z) σ(t−Δ), δ = τ / mean(ε̂²) per sample.
//! The observation model enters only here (zero-shot: change H, the gaps or Σ_y without
//! retraining). Measurements are of selected components of the trajectory (linear, as the
//! issue's setups use).

use super::net::ScoreNetwork;
use super::process::ForwardProcess;
use crate::error::{GendaError, Result};
use crate::rng::{fill_standard_normal, Purpose};
use tch::{Device, Kind, Tensor};

/// A noise estimator over windows of 2k+1 states: ε̂(x_t, t) ≈ E[z | x_t] for
/// x_t = μ x₀ + σ z, at rows x (N, (2k+1)·n) in the network's coordinates, differentiable in x
/// (SDA's sign: the score is −ε̂/σ).
pub trait WindowEps {
    fn window_eps(&self, x: &Tensor, t: f64) -> Tensor;
    fn process(&self) -> ForwardProcess;
    fn device(&self) -> Device;
}

impl WindowEps for ScoreNetwork {
    fn window_eps(&self, x: &Tensor, t: f64) -> Tensor {
        let rows = x.size()[0];
        let tt = Tensor::full([rows], t, (Kind::Float, self.device()));
        // genda's networks are trained on (ε̂ + z)², i.e. ε̂ = −E[z | x_t] (score = ε̂/σ).
        -self.eps_hat(x, &tt)
    }
    fn process(&self) -> ForwardProcess {
        self.process
    }
    fn device(&self) -> Device {
        ScoreNetwork::device(self)
    }
}

/// Observations of a trajectory: entries `index` (flat, state-major: time·n + component) of
/// the L·n trajectory measured as y = x[index] + N(0, var), in the network's coordinates.
#[derive(Debug, Clone, Default)]
pub struct TrajectoryObs {
    pub index: Vec<usize>,
    pub y: Vec<f64>,
    pub var: Vec<f64>,
}

/// SDA sampling settings (defaults: SDA's Lorenz evaluation).
#[derive(Debug, Clone, Copy)]
pub struct SdaSettings {
    /// Reverse-time steps (uniform in t from 1 to 0).
    pub steps: usize,
    /// Langevin corrections per step.
    pub corrections: usize,
    /// Langevin amplitude τ.
    pub tau: f64,
    /// γ of the likelihood variance Σ_y + γ (σ/μ)².
    pub gamma: f64,
    /// Samples per network batch (memory bound; results do not depend on it).
    pub chunk: usize,
}

impl Default for SdaSettings {
    fn default() -> Self {
        SdaSettings {
            steps: 256,
            corrections: 1,
            tau: 0.25,
            gamma: 3e-2,
            chunk: 256,
        }
    }
}

/// Trajectory sampler: L states of n values from windows of 2k+1 states.
pub struct SdaSampler<'a> {
    eps: &'a dyn WindowEps,
    pub n: usize,
    pub k: usize,
    pub l: usize,
    obs: Option<(Tensor, Tensor, Tensor)>,
}

impl<'a> SdaSampler<'a> {
    /// `window_dim` = (2k+1)·n is the estimator's input size; L must hold one window.
    pub fn new(
        eps: &'a dyn WindowEps,
        window_dim: usize,
        n: usize,
        l: usize,
        obs: &TrajectoryObs,
    ) -> Result<Self> {
        if n == 0 || window_dim % n != 0 || (window_dim / n) % 2 == 0 {
            return Err(GendaError::Score(format!(
                "window network of {window_dim} values is not an odd number of states of {n}"
            )));
        }
        let w = window_dim / n;
        if l < w {
            return Err(GendaError::invalid(
                "filter.window",
                format!(
                    "the trajectory to sample has {l} states, fewer than the network's window of {w} states (2k+1, k = {}): lengthen the assimilation window or train a shorter window",
                    w / 2
                ),
            ));
        }
        if let Some(&bad) = obs.index.iter().find(|&&i| i >= l * n) {
            return Err(GendaError::Score(format!(
                "observation index {bad} outside the trajectory of {l} x {n}"
            )));
        }
        let device = eps.device();
        let obs_t = if obs.index.is_empty() {
            None
        } else {
            let idx: Vec<i64> = obs.index.iter().map(|&i| i as i64).collect();
            Some((
                Tensor::from_slice(&idx).to(device),
                Tensor::from_slice(&obs.y).to_kind(Kind::Float).to(device),
                Tensor::from_slice(&obs.var).to_kind(Kind::Float).to(device),
            ))
        };
        Ok(SdaSampler {
            eps,
            n,
            k: w / 2,
            l,
            obs: obs_t,
        })
    }

    /// The composed trajectory noise estimate at rows x (B, L·n): unfold into windows,
    /// evaluate, fold (as `unfold`/`fold`, on tensors).
    pub fn trajectory_eps(&self, x: &Tensor, t: f64) -> Tensor {
        let (n, k, l) = (self.n as i64, self.k as i64, self.l as i64);
        let b = x.size()[0];
        let w = 2 * k + 1;
        let nw = l - 2 * k;
        let windows = x
            .reshape([b, l, n])
            .unfold(1, w, 1) // (b, nw, n, w)
            .permute([0, 1, 3, 2])
            .reshape([b * nw, w * n]);
        let e = self.eps.window_eps(&windows, t).reshape([b, nw, w, n]);
        let mid = e.select(2, k);
        if k == 0 {
            return mid.reshape([b, l * n]);
        }
        let first = e.select(1, 0).narrow(1, 0, k);
        let last = e.select(1, nw - 1).narrow(1, k + 1, k);
        Tensor::cat(&[first, mid, last], 1).reshape([b, l * n])
    }

    /// ε̂ of the posterior p(x_t | y): ε̂ − σ ∇ log p(y | x_t) with SDA's approximation.
    pub fn posterior_eps(&self, x: &Tensor, t: f64, gamma: f64) -> Tensor {
        let p = self.eps.process();
        let (mu, sigma) = (p.alpha(t), p.sigma(t));
        let Some((idx, y, var)) = &self.obs else {
            let _g = tch::no_grad_guard();
            return self.trajectory_eps(x, t);
        };
        let xg = x.detach().set_requires_grad(true);
        let eps = self.trajectory_eps(&xg, t);
        let x0 = (&xg - &eps * sigma) / mu;
        let err = y - x0.index_select(1, idx);
        let v = var + gamma * (sigma / mu).powi(2);
        let log_p = -(err.square() / v).sum(Kind::Float) / 2.0;
        let g = Tensor::run_backward(&[log_p], &[&xg], false, false);
        eps.detach() - &g[0] * sigma
    }

    /// `count` trajectories (count, L·n) in the network's coordinates; sample i's random
    /// numbers are keyed by (seed, i), so the result does not depend on `chunk`.
    pub fn sample(&self, count: usize, s: &SdaSettings, seed: u64) -> Result<Vec<f64>> {
        if s.steps == 0 || s.chunk == 0 || !(s.tau > 0.0) || !(s.gamma >= 0.0) {
            return Err(GendaError::Score(format!(
                "SDA sampling needs steps, chunk >= 1, tau > 0, gamma >= 0 (got {s:?})"
            )));
        }
        let d = self.l * self.n;
        let p = self.eps.process();
        let device = self.eps.device();
        let mut out = vec![0.0f64; count * d];
        let dt = 1.0 / s.steps as f64;
        let noise = |key: u64, rows: std::ops::Range<usize>| -> Tensor {
            let mut z = vec![0.0; rows.len() * d];
            for (r, i) in rows.enumerate() {
                fill_standard_normal(
                    seed,
                    Purpose::Sampling,
                    key,
                    i as u64,
                    0,
                    &mut z[r * d..(r + 1) * d],
                );
            }
            Tensor::from_slice(&z)
                .to_kind(Kind::Float)
                .reshape([-1, d as i64])
                .to(device)
        };
        let mut start = 0;
        while start < count {
            let end = (start + s.chunk).min(count);
            let mut x = noise(u64::MAX, start..end);
            for j in 0..s.steps {
                let t = 1.0 - j as f64 * dt;
                let tn = (t - dt).max(0.0);
                let r = p.alpha(tn) / p.alpha(t);
                let e = self.posterior_eps(&x, t, s.gamma);
                x = &x * r + e * (p.sigma(tn) - r * p.sigma(t));
                for c in 0..s.corrections {
                    let z = noise((j * s.corrections + c) as u64, start..end);
                    let e = self.posterior_eps(&x, tn, s.gamma);
                    let delta =
                        (e.square().mean_dim(1, true, Kind::Float) + 1e-12).reciprocal() * s.tau;
                    x = &x - (&delta * &e + delta.sqrt() * 2f64.sqrt() * z) * p.sigma(tn);
                }
            }
            let xs = x.to_kind(Kind::Double).to(Device::Cpu).reshape([-1]);
            xs.copy_data(&mut out[start * d..end * d], (end - start) * d);
            start = end;
        }
        if out.iter().any(|v| !v.is_finite()) {
            return Err(GendaError::Score(
                "SDA sampling produced non-finite values: try more steps (the first predictor steps scale x by μ(t−Δ)/μ(t), about 3 at 64 steps and 1.4 at 256, and amplify network errors), a larger gamma (weaker guidance at high noise, needed with many precise observations per window) or a better-trained network".into(),
            ));
        }
        Ok(out)
    }
}

/// The L − 2k windows (each (2k+1)·n values, row-major) of a trajectory (L·n values).
pub fn unfold(traj: &[f64], n: usize, k: usize) -> Vec<f64> {
    let l = traj.len() / n;
    let w = 2 * k + 1;
    let count = l.saturating_sub(2 * k);
    let mut out = Vec::with_capacity(count * w * n);
    for i in 0..count {
        out.extend_from_slice(&traj[i * n..(i + w) * n]);
    }
    out
}

/// Trajectory score (L·n) from the scores of its L − 2k windows (as laid out by `unfold`):
/// window 0 gives states 0..k, window i gives its centre to state i + k, the last window gives
/// the last k states.
pub fn fold(window_scores: &[f64], l: usize, n: usize, k: usize, out: &mut [f64]) {
    let w = 2 * k + 1;
    let count = l - 2 * k;
    let win = |i: usize| &window_scores[i * w * n..(i + 1) * w * n];
    out[..k * n].copy_from_slice(&win(0)[..k * n]);
    for i in 0..count {
        out[(i + k) * n..(i + k + 1) * n].copy_from_slice(&win(i)[k * n..(k + 1) * n]);
    }
    out[(l - k) * n..l * n].copy_from_slice(&win(count - 1)[(k + 1) * n..w * n]);
}

#[cfg(test)]
mod tests {
    use super::*;
    use nalgebra::{DMatrix, DVector};
    use tch::{Device, Kind, Tensor};

    /// Stationary AR(1) x_{i+1} = φ x_i + √(1−φ²) ε in 2 independent components: the joint of
    /// any m consecutive states is N(0, C_m), C_m[i, j] = φ^|i−j| (per component). Folding the
    /// exact window scores (k = 1 and k = 2) gives the exact trajectory score −C_L⁻¹ x.
    #[test]
    fn folded_window_scores_equal_the_markov_trajectory_score() {
        let (phi, n, l) = (0.8f64, 2usize, 9usize);
        let cov = |m: usize| DMatrix::from_fn(m, m, |i, j| phi.powi((i as i32 - j as i32).abs()));
        // Trajectory values, row-major (L, n).
        let traj: Vec<f64> = (0..l * n)
            .map(|i| ((i * 7 % 11) as f64 - 5.0) / 3.0)
            .collect();
        let component = |c: usize, v: &[f64], m: usize| DVector::from_fn(m, |i, _| v[i * n + c]);
        // Exact joint score per component.
        let qi = cov(l).try_inverse().unwrap();
        let mut exact = vec![0.0; l * n];
        for c in 0..n {
            let s = -(&qi * component(c, &traj, l));
            for i in 0..l {
                exact[i * n + c] = s[i];
            }
        }
        for k in [1usize, 2] {
            let w = 2 * k + 1;
            let wins = unfold(&traj, n, k);
            assert_eq!(wins.len(), (l - 2 * k) * w * n);
            let wq = cov(w).try_inverse().unwrap();
            let mut ws = vec![0.0; wins.len()];
            for (win, out) in wins.chunks(w * n).zip(ws.chunks_mut(w * n)) {
                for c in 0..n {
                    let s = -(&wq * component(c, win, w));
                    for i in 0..w {
                        out[i * n + c] = s[i];
                    }
                }
            }
            let mut folded = vec![0.0; l * n];
            fold(&ws, l, n, k, &mut folded);
            for (a, b) in folded.iter().zip(&exact) {
                assert!((a - b).abs() < 1e-10, "k = {k}: {a} vs {b}");
            }
        }
    }

    /// The exact noise estimator of a stationary Gaussian window N(0, C_w) under the process:
    /// ε̂(x_t) = σ (μ² C_w + σ² I)⁻¹ x_t.
    struct GaussianWindow {
        cov: DMatrix<f64>,
        process: ForwardProcess,
    }

    impl WindowEps for GaussianWindow {
        fn window_eps(&self, x: &Tensor, t: f64) -> Tensor {
            let (mu, sigma) = (self.process.alpha(t), self.process.sigma(t));
            let d = self.cov.nrows();
            let m = (&self.cov * (mu * mu) + DMatrix::identity(d, d) * (sigma * sigma))
                .try_inverse()
                .unwrap()
                * sigma;
            // Row-major (d, d) of Mᵀ: x (N, d) · Mᵀ.
            let mt: Vec<f64> = (0..d * d).map(|i| m[(i % d, i / d)]).collect();
            let mt = Tensor::from_slice(&mt)
                .to_kind(Kind::Float)
                .reshape([d as i64, d as i64]);
            x.matmul(&mt)
        }
        fn process(&self) -> ForwardProcess {
            self.process
        }
        fn device(&self) -> Device {
            Device::Cpu
        }
    }

    /// SDA's sampler with the exact window score of a stationary AR(1) chain (order 1, windows of
    /// 3) and two noisy observations of a 10-state trajectory reproduces the exact Gaussian
    /// posterior (Kalman smoother) within the accuracy of its likelihood approximation; a
    /// trajectory shorter than the window is refused.
    #[test]
    fn sda_sampler_recovers_the_gaussian_smoothing_posterior() {
        let (phi, l, k) = (0.8f64, 10usize, 1usize);
        let w = 2 * k + 1;
        let cov = |m: usize| DMatrix::from_fn(m, m, |i, j| phi.powi((i as i32 - j as i32).abs()));
        let est = GaussianWindow {
            cov: cov(w),
            process: ForwardProcess::VpCos { eta: 1e-3 },
        };
        let obs = TrajectoryObs {
            index: vec![2, 7],
            y: vec![1.5, -1.0],
            var: vec![0.1, 0.1],
        };
        // Exact posterior of the chain given the two observations.
        let c = cov(l);
        let h = DMatrix::from_fn(2, l, |i, j| if obs.index[i] == j { 1.0 } else { 0.0 });
        let s =
            &h * &c * h.transpose() + DMatrix::from_diagonal(&DVector::from_vec(obs.var.clone()));
        let gain = &c * h.transpose() * s.try_inverse().unwrap();
        let mean = &gain * DVector::from_vec(obs.y.clone());
        let post = &c - &gain * &h * &c;

        let sampler = SdaSampler::new(&est, w, 1, l, &obs).unwrap();
        let settings = SdaSettings {
            steps: 128,
            corrections: 1,
            gamma: 1e-2,
            chunk: 700,
            ..Default::default()
        };
        let m = 2000;
        let x = sampler.sample(m, &settings, 7).unwrap();
        for i in 0..l {
            let col: Vec<f64> = (0..m).map(|r| x[r * l + i]).collect();
            let mu = col.iter().sum::<f64>() / m as f64;
            let var = col.iter().map(|v| (v - mu).powi(2)).sum::<f64>() / (m - 1) as f64;
            let sd = post[(i, i)].sqrt();
            assert!(
                (mu - mean[i]).abs() < 0.15 * sd.max(0.3) + 3.0 * sd / (m as f64).sqrt(),
                "state {i}: mean {mu} vs {}",
                mean[i]
            );
            // SDA's approximations (window composition and the Σ_y + γσ²/μ² likelihood at t > 0)
            // over-disperse: measured 1.06–1.21× the exact variance away from the observations
            // and ~1.7–1.8× at the two observed states (0.15 vs 0.09), the same for 512 steps
            // and for γ from 1e-3 to 0.1; without the corrector the observed states collapse
            // (0.01) and the means miss by up to 0.45.
            let ratio = var / post[(i, i)];
            let ok = if obs.index.contains(&i) {
                0.8..2.1
            } else {
                0.85..1.35
            };
            assert!(
                ok.contains(&ratio),
                "state {i}: var {var} vs {}",
                post[(i, i)]
            );
        }
        // Batching does not change the draws.
        let other = SdaSettings {
            chunk: 64,
            ..settings
        };
        let y = sampler.sample(100, &other, 7).unwrap();
        assert!(x[..100 * l]
            .iter()
            .zip(&y)
            .all(|(a, b)| (a - b).abs() < 1e-5));
        // A window longer than the trajectory is refused with the sizes named.
        let err = SdaSampler::new(&est, w, 1, 2, &obs)
            .err()
            .unwrap()
            .to_string();
        assert!(
            err.contains("fewer than the network's window of 3"),
            "{err}"
        );
    }
}
