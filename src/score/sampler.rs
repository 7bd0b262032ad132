//! Reverse-time samplers for any forward process, taking a score *closure*, so a network, a
//! Gaussian-mixture (training-free filters) or an analytic score plug in alike.
//!
//! A score closure `s(x, t, out)` evaluates ∇ₓ log p_t at M points at once: `x` and `out` are
//! row-major (M, d). Noise for sample i at step k comes from the stream keyed by
//! (seed, Sampling, k, i), so results do not depend on threads, ranks or batch splitting.
use super::process::ForwardProcess;
use crate::rng::{fill_standard_normal, Purpose, NOISE_BLOCK};
use rayon::prelude::*;
use serde::{Deserialize, Serialize};

/// Batched score function: (x (M, d), t, out (M, d)).
///
/// The predictor–corrector step size uses batch-mean norms (as Song et al.), so it is the one
/// sampler whose result depends on which samples share a batch.
pub type ScoreFn<'a> = dyn Fn(&[f64], f64, &mut [f64]) + 'a;

#[derive(Debug, Clone, Copy, PartialEq, Deserialize, Serialize)]
#[serde(tag = "kind", rename_all = "snake_case", deny_unknown_fields)]
pub enum SamplerKind {
    /// Reverse SDE dx = [f x − g² s] dt + g dW̄, Euler–Maruyama (Song et al. 2021).
    EulerMaruyama,
    /// Euler–Maruyama predictor + Langevin corrector with signal-to-noise ratio `snr`.
    PredictorCorrector { snr: f64, corrector_steps: usize },
    /// Probability-flow ODE dx/dt = f x − ½ g² s, Heun's method (deterministic given x_T).
    ProbabilityFlow,
    /// Annealed Langevin dynamics over the noise levels σ(t_k) (Song & Ermon 2019), step
    /// ε σ_k²/σ_min² at level k.
    AnnealedLangevin { steps_per_level: usize, eps: f64 },
}

#[derive(Debug, Clone, Copy, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct SamplerConfig {
    pub kind: SamplerKind,
    /// Number of time steps (noise levels for annealed Langevin) from t_max to t_min.
    pub steps: usize,
    /// Smallest time reached (the score is ill-conditioned at t = 0).
    #[serde(default = "default_t_min")]
    pub t_min: f64,
    /// Finish with Tweedie's denoising step x₀ = (x + σ² s)/α at t_min.
    #[serde(default = "yes")]
    pub denoise: bool,
}

fn default_t_min() -> f64 {
    1e-3
}
fn yes() -> bool {
    true
}

/// Draw M samples of the reference distribution N(0, prior_std² I) (row-major (M, d)).
pub fn prior_sample(process: &ForwardProcess, m: usize, d: usize, seed: u64) -> Vec<f64> {
    prior_sample_at(process, m, d, seed, 0)
}

/// As `prior_sample`, for the `d` components starting at global index `offset` of each sample
/// (a domain of a decomposed state draws the same numbers as the whole state would).
pub fn prior_sample_at(
    process: &ForwardProcess,
    m: usize,
    d: usize,
    seed: u64,
    offset: usize,
) -> Vec<f64> {
    let mut x = unit_sample_at(m, d, seed, offset);
    let s = process.prior_std();
    x.iter_mut().for_each(|v| *v *= s);
    x
}

/// The standard normals `prior_sample_at` scales: (seed, Sampling, u64::MAX, sample i).
pub fn unit_sample_at(m: usize, d: usize, seed: u64, offset: usize) -> Vec<f64> {
    let mut x = vec![0.0; m * d];
    for (i, row) in x.chunks_mut(d).enumerate() {
        fill_standard_normal(seed, Purpose::Sampling, u64::MAX, i as u64, offset, row);
    }
    x
}

/// The standard normals of reverse step `step` that the samplers add (sample i keyed by
/// (seed, Sampling, step, i)), row-major (rows, d) into `z`.
pub fn step_noise_at(seed: u64, step: u64, d: usize, offset: usize, z: &mut [f64]) {
    noise(seed, step, d, offset, z)
}

/// Element-wise passes over at least this many values run on rayon's threads (each element
/// or row is computed alone, so the numbers do not depend on the thread count).
const PARALLEL_MIN_LEN: usize = 1 << 15;

pub(crate) fn noise(seed: u64, step: u64, d: usize, offset: usize, z: &mut [f64]) {
    let draw = |(i, row): (usize, &mut [f64])| {
        fill_standard_normal(seed, Purpose::Sampling, step, i as u64, offset, row)
    };
    if z.len() >= PARALLEL_MIN_LEN {
        z.par_chunks_mut(d).enumerate().for_each(draw);
    } else {
        z.chunks_mut(d).enumerate().for_each(draw);
    }
}

/// `x[i] = f(x[i], s[i], z[i])` for every i, with z the normals `noise(seed, step, d, offset)`
/// would draw, drawn block by block of global indices inside the pass (the same numbers, no
/// noise array and one sweep less over the samples); rows on rayon's threads for long vectors.
#[allow(clippy::too_many_arguments)]
fn noisy_update(
    x: &mut [f64],
    s: &[f64],
    seed: u64,
    step: u64,
    d: usize,
    offset: usize,
    f: impl Fn(f64, f64, f64) -> f64 + Sync,
) {
    let row = |(i, (xr, sr)): (usize, (&mut [f64], &[f64]))| {
        let mut z = [0.0f64; NOISE_BLOCK];
        let mut k = 0;
        while k < d {
            let g = offset + k;
            let len = (NOISE_BLOCK - g % NOISE_BLOCK).min(d - k);
            let z = &mut z[..len];
            fill_standard_normal(seed, Purpose::Sampling, step, i as u64, g, z);
            for ((x, s), z) in xr[k..k + len].iter_mut().zip(&sr[k..k + len]).zip(&*z) {
                *x = f(*x, *s, *z);
            }
            k += len;
        }
    };
    if x.len() >= PARALLEL_MIN_LEN {
        x.par_chunks_mut(d)
            .zip(s.par_chunks(d))
            .enumerate()
            .for_each(row);
    } else {
        x.chunks_mut(d).zip(s.chunks(d)).enumerate().for_each(row);
    }
}

/// `x[i] = f(x[i], a[i], b[i])` for every i, on rayon's threads for long vectors.
fn update(x: &mut [f64], a: &[f64], b: &[f64], f: impl Fn(f64, f64, f64) -> f64 + Sync) {
    const CHUNK: usize = 1 << 14;
    let pass = |((x, a), b): ((&mut [f64], &[f64]), &[f64])| {
        for ((x, a), b) in x.iter_mut().zip(a).zip(b) {
            *x = f(*x, *a, *b);
        }
    };
    if x.len() >= PARALLEL_MIN_LEN {
        x.par_chunks_mut(CHUNK)
            .zip(a.par_chunks(CHUNK))
            .zip(b.par_chunks(CHUNK))
            .for_each(pass);
    } else {
        pass(((x, a), b));
    }
}

/// Run the reverse process from `t_start` (default the process's t_max) down to `cfg.t_min`,
/// in place on `x` (row-major (M, d)).
pub fn sample(
    process: &ForwardProcess,
    cfg: &SamplerConfig,
    score: &ScoreFn,
    x: &mut [f64],
    d: usize,
    seed: u64,
    t_start: Option<f64>,
) {
    sample_at(process, cfg, score, x, d, seed, t_start, 0)
}

/// As `sample`, with the noise of components starting at global index `offset` (domain
/// decomposition: each domain draws its own part of the same numbers).
#[allow(clippy::too_many_arguments)]
pub fn sample_at(
    process: &ForwardProcess,
    cfg: &SamplerConfig,
    score: &ScoreFn,
    x: &mut [f64],
    d: usize,
    seed: u64,
    t_start: Option<f64>,
    offset: usize,
) {
    let t0 = t_start.unwrap_or_else(|| process.t_max());
    let n = cfg.steps.max(1);
    let h = (t0 - cfg.t_min) / n as f64;
    let mut s = vec![0.0; x.len()];
    // The noise array of the correctors and Langevin steps (Euler–Maruyama draws in the pass).
    let mut z = Vec::new();
    let len = x.len();
    let mut step_id = 0u64;
    match cfg.kind {
        SamplerKind::EulerMaruyama | SamplerKind::PredictorCorrector { .. } => {
            for k in 0..n {
                let t = t0 - k as f64 * h;
                let (f, g2) = (process.f(t), process.g2(t));
                score(x, t, &mut s);
                let sq = (g2 * h).sqrt();
                noisy_update(x, &s, seed, step_id, d, offset, |x, s, z| {
                    x + (-h * (f * x - g2 * s) + sq * z)
                });
                step_id += 1;
                if let SamplerKind::PredictorCorrector {
                    snr,
                    corrector_steps,
                } = cfg.kind
                {
                    let tn = t - h;
                    z.resize(len, 0.0);
                    for _ in 0..corrector_steps {
                        score(x, tn, &mut s);
                        noise(seed, step_id, d, offset, &mut z);
                        step_id += 1;
                        // Step from batch-mean norms, as in Song et al.'s reference code: a
                        // per-sample ‖z‖ would correlate the step with its own noise and bias
                        // low-dimensional targets.
                        let rows = (x.len() / d).max(1) as f64;
                        let norm_mean = |v: &[f64]| {
                            v.chunks(d)
                                .map(|r| r.iter().map(|a| a * a).sum::<f64>().sqrt())
                                .sum::<f64>()
                                / rows
                        };
                        let (sn, zn) = (norm_mean(&s), norm_mean(&z));
                        let eps = 2.0 * (snr * zn / sn.max(1e-300)).powi(2);
                        let sq = (2.0 * eps).sqrt();
                        for i in 0..x.len() {
                            x[i] += eps * s[i] + sq * z[i];
                        }
                    }
                }
            }
        }
        SamplerKind::ProbabilityFlow => {
            let mut x1 = vec![0.0; x.len()];
            let mut d1 = vec![0.0; x.len()];
            for k in 0..n {
                let t = t0 - k as f64 * h;
                let tn = t - h;
                score(x, t, &mut s);
                let (f, g2) = (process.f(t), process.g2(t));
                for i in 0..x.len() {
                    d1[i] = f * x[i] - 0.5 * g2 * s[i];
                    x1[i] = x[i] - h * d1[i];
                }
                score(&x1, tn, &mut s);
                let (fn_, g2n) = (process.f(tn), process.g2(tn));
                for i in 0..x.len() {
                    let d2 = fn_ * x1[i] - 0.5 * g2n * s[i];
                    x[i] -= 0.5 * h * (d1[i] + d2);
                }
            }
        }
        SamplerKind::AnnealedLangevin {
            steps_per_level,
            eps,
        } => {
            let smin = process.sigma(cfg.t_min).max(1e-12);
            z.resize(len, 0.0);
            for k in 0..=n {
                let t = t0 - k as f64 * h;
                let a = eps * (process.sigma(t) / smin).powi(2);
                let sq = (2.0 * a).sqrt();
                for _ in 0..steps_per_level {
                    score(x, t, &mut s);
                    noise(seed, step_id, d, offset, &mut z);
                    step_id += 1;
                    update(x, &s, &z, |x, s, z| x + (a * s + sq * z));
                }
            }
        }
    }
    if cfg.denoise {
        let t = cfg.t_min;
        score(x, t, &mut s);
        let (a, sg) = (process.alpha(t), process.sigma(t));
        for i in 0..x.len() {
            x[i] = (x[i] + sg * sg * s[i]) / a;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::score::analytic::test_support::{check_moments, two_bumps as mixture};

    const TOL: (f64, f64, f64) = (0.04, 0.1, 0.1);

    #[test]
    fn samplers_with_exact_mixture_score_reproduce_the_mixture() {
        let gm = mixture();
        let process = ForwardProcess::Vp {
            beta_min: 0.1,
            beta_max: 20.0,
        };
        let score = |x: &[f64], t: f64, out: &mut [f64]| gm.score(&process, x, t, out);
        let kinds = [
            (SamplerKind::EulerMaruyama, 500),
            (
                SamplerKind::PredictorCorrector {
                    snr: 0.16,
                    corrector_steps: 1,
                },
                200,
            ),
            (SamplerKind::ProbabilityFlow, 200),
            (
                SamplerKind::AnnealedLangevin {
                    steps_per_level: 20,
                    eps: 5e-5,
                },
                100,
            ),
        ];
        for (kind, steps) in kinds {
            let cfg = SamplerConfig {
                kind,
                steps,
                t_min: 1e-3,
                denoise: true,
            };
            let mut x = prior_sample(&process, 3000, 2, 42);
            sample(&process, &cfg, &score, &mut x, 2, 42, None);
            check_moments(&gm, &x, &format!("{kind:?}"), TOL);
        }
    }

    #[test]
    fn samplers_work_for_ve_and_interpolant_paths() {
        let gm = mixture();
        for process in [
            ForwardProcess::Ve {
                sigma_min: 0.01,
                sigma_max: 10.0,
            },
            ForwardProcess::Interpolant { t_max: 0.999 },
        ] {
            let score = |x: &[f64], t: f64, out: &mut [f64]| gm.score(&process, x, t, out);
            let cfg = SamplerConfig {
                kind: SamplerKind::ProbabilityFlow,
                steps: 300,
                t_min: 1e-3,
                denoise: true,
            };
            // Start the ODE from the exact marginal at t_max (for VE it is wide, not N(0, 1)).
            let mut x = prior_sample(&process, 3000, 2, 7);
            if let ForwardProcess::Ve { sigma_max, .. } = process {
                x.iter_mut()
                    .for_each(|v| *v *= sigma_max / process.prior_std());
            }
            sample(&process, &cfg, &score, &mut x, 2, 7, None);
            check_moments(&gm, &x, &format!("{process:?}"), TOL);
        }
    }
}
