//! Learned-prior score filters with one reverse sampler (`score::masf`):
//!
//! - **MASF** (`method = "masf"`; Yoon, Kim & Kim 2026): the forward process degrades the state
//!   into the measurement (A(t) from I to H, Σ(t) from 0 to R), so the likelihood of y given
//!   x_t is exact for linear measurements. `guidance = "bridge"` (default) samples the posterior
//!   as the time reversal of that process from p(x_T | y) (exact for a Gaussian prior: tested
//!   against the Kalman posterior); `guidance = "additive"` adds the exact likelihood score to
//!   the prior score in every step as the paper's sampler does (over-counts the measurement;
//!   kept for comparison).
//! - **SF** (`method = "sf"`; the score filter of Bao, Zhang & Zhang): the standard VP process
//!   (measurement-agnostic) and the damped likelihood approximation (1 − t)∇log p(y | x_t), on
//!   an identical network, training budget and sampler — MASF's gain is measured against it.
//!
//! The prior score network (an MLP) is trained by denoising score matching under the method's
//! process: `pretrain_steps` at the first cycle on `pretrain_data` (an HDF5 trajectory from
//! `genda truth`, coordinates standardised by its per-variable climatology, fixed) or else on the
//! first forecast ensemble; then `train_steps` per cycle of fine-tuning on the forecast ensemble
//! (0: trained once, frozen). Without `pretrain_data` the coordinates are standardised by each
//! cycle's forecast ensemble (as the MASF code does). Whole state only (one domain);
//! measurements must select state components (sparse/identity).
use super::{AnalysisInput, Filter};
use crate::error::{GendaError, Result};
use crate::score::masf::{reverse_sample, DiagProcess, DiagScore, Guidance};
use ndarray::Array2;
use serde::{Deserialize, Serialize};
use std::path::PathBuf;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum MasfGuidance {
    #[default]
    Bridge,
    Additive,
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct MasfConfig {
    pub members: usize,
    /// MASF only: how the exact likelihood enters the sampler.
    #[serde(default)]
    pub guidance: MasfGuidance,
    /// Reverse-time steps.
    #[serde(default = "d_steps")]
    pub steps: usize,
    #[serde(default = "d_hidden")]
    pub hidden: i64,
    #[serde(default = "d_layers")]
    pub layers: usize,
    #[serde(default = "d_lr")]
    pub lr: f64,
    #[serde(default = "d_batch")]
    pub batch: usize,
    /// Adam steps at the first cycle.
    #[serde(default = "d_pretrain")]
    pub pretrain_steps: usize,
    /// Adam steps of fine-tuning on the forecast ensemble every later cycle (0: frozen).
    #[serde(default = "d_train")]
    pub train_steps: usize,
    /// HDF5 trajectory (`genda truth`) to pre-train on; fixes the standardisation.
    #[serde(default)]
    pub pretrain_data: Option<PathBuf>,
}

fn d_steps() -> usize {
    150
}
fn d_hidden() -> i64 {
    128
}
fn d_layers() -> usize {
    3
}
fn d_lr() -> f64 {
    1e-3
}
fn d_batch() -> usize {
    128
}
fn d_pretrain() -> usize {
    1000
}
fn d_train() -> usize {
    100
}

impl MasfConfig {
    pub fn validate(&self, method: &str) -> Result<()> {
        if self.steps == 0 || self.batch == 0 || self.hidden < 1 || self.layers < 1 {
            return Err(GendaError::invalid(
                "filter",
                format!("{method} needs steps, batch, hidden, layers >= 1"),
            ));
        }
        if !(self.lr > 0.0 && self.lr.is_finite()) {
            return Err(GendaError::invalid(
                "filter.lr",
                format!("must be positive, got {}", self.lr),
            ));
        }
        if self.pretrain_steps == 0 && self.train_steps == 0 {
            return Err(GendaError::invalid(
                "filter.pretrain_steps",
                format!("{method} needs pretrain_steps or train_steps >= 1 (the prior score is learned)"),
            ));
        }
        Ok(())
    }
}

pub struct Masf {
    cfg: MasfConfig,
    measurement_aware: bool,
    net: Option<DiagScore>,
    /// Fixed standardisation (from `pretrain_data`).
    fixed: Option<(Vec<f64>, Vec<f64>)>,
    /// Last training loss (diagnostic).
    pub last_loss: f64,
}

impl Masf {
    /// `measurement_aware`: MASF (true) or SF (false).
    pub fn new(cfg: MasfConfig, measurement_aware: bool) -> Self {
        Masf {
            cfg,
            measurement_aware,
            net: None,
            fixed: None,
            last_loss: f64::NAN,
        }
    }

    fn method(&self) -> &'static str {
        if self.measurement_aware {
            "masf"
        } else {
            "sf"
        }
    }
}

/// Per-variable mean and std (floored) of rows of `data` (n).
fn standardisation(data: &[f64], n: usize) -> (Vec<f64>, Vec<f64>) {
    let rows = (data.len() / n).max(1) as f64;
    let mut mean = vec![0.0; n];
    for r in data.chunks(n) {
        mean.iter_mut().zip(r).for_each(|(m, v)| *m += v / rows);
    }
    let mut sd = vec![0.0; n];
    for r in data.chunks(n) {
        sd.iter_mut()
            .zip(r.iter().zip(&mean))
            .for_each(|(s, (v, m))| *s += (v - m).powi(2) / rows);
    }
    let floor = 1e-6 * sd.iter().cloned().fold(0.0, f64::max).sqrt().max(1.0);
    (mean, sd.into_iter().map(|v| v.sqrt().max(floor)).collect())
}

impl Filter for Masf {
    fn name(&self) -> &'static str {
        self.method()
    }

    fn analyse(&mut self, ens: &mut Array2<f64>, input: &AnalysisInput) -> Result<()> {
        let method = self.method();
        input.check(ens, method)?;
        if !input.domain.whole {
            return Err(GendaError::invalid(
                "parallel.domains",
                format!("{method} learns a score of the whole state; use domains = 1"),
            ));
        }
        let observed = super::selected_components(input.obs_operator).ok_or_else(|| {
            GendaError::invalid(
                "observations.operator",
                format!(
                    "{method}: the exact likelihood score of the measurement-aware process needs a linear measurement that selects state components (operator = \"sparse\" or \"identity\"); for nonlinear operators use ensf or kde_diffusion"
                ),
            )
        })?;
        let n = ens.ncols();
        let seed = input.seed ^ (input.cycle as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15);
        let first = self.net.is_none();
        if first {
            if let Some(p) = &self.cfg.pretrain_data {
                let traj = crate::io::read_trajectory(p)?;
                if traj.state_dim != n {
                    return Err(GendaError::Dimension {
                        what: format!("{method}: pretrain_data {} state size", p.display()),
                        expected: n,
                        got: traj.state_dim,
                    });
                }
                self.fixed = Some(standardisation(&traj.data, n));
            }
        }
        let fc: Vec<f64> = ens.iter().cloned().collect();
        let (mean, sd) = match &self.fixed {
            Some(f) => f.clone(),
            None => standardisation(&fc, n),
        };
        let r_obs: Vec<f64> = observed
            .iter()
            .zip(input.obs_error_var)
            .map(|(&k, &r)| r / (sd[k] * sd[k]))
            .collect();
        let y: Vec<f64> = observed
            .iter()
            .zip(input.obs)
            .map(|(&k, &v)| (v - mean[k]) / sd[k])
            .collect();
        let process = if self.measurement_aware {
            DiagProcess::measurement_aware(n, &observed, &r_obs)
        } else {
            DiagProcess::standard(n)
        };
        let z: Vec<f64> = fc
            .iter()
            .enumerate()
            .map(|(i, v)| (v - mean[i % n]) / sd[i % n])
            .collect();
        if first {
            let mut net =
                DiagScore::new(self.cfg.hidden, self.cfg.layers, n, self.cfg.lr, input.seed)?;
            let data: Vec<f64> = match &self.cfg.pretrain_data {
                Some(p) => {
                    let traj = crate::io::read_trajectory(p)?;
                    traj.data
                        .iter()
                        .enumerate()
                        .map(|(i, v)| (v - mean[i % n]) / sd[i % n])
                        .collect()
                }
                None => z.clone(),
            };
            self.last_loss = net.fit(
                &process,
                &data,
                self.cfg.pretrain_steps,
                self.cfg.batch,
                input.seed,
            )?;
            self.net = Some(net);
        } else if self.cfg.train_steps > 0 {
            let net = self.net.as_mut().expect("trained at the first cycle");
            self.last_loss = net.fit(&process, &z, self.cfg.train_steps, self.cfg.batch, seed)?;
        }
        let net = self.net.as_ref().expect("trained at the first cycle");
        let guidance = match (self.measurement_aware, self.cfg.guidance) {
            (false, _) => Guidance::Damped,
            (true, MasfGuidance::Bridge) => Guidance::Bridge,
            (true, MasfGuidance::Additive) => Guidance::Additive,
        };
        let mut x = z;
        let mut prior = |xs: &[f64], t: f64, out: &mut [f64]| net.score(&process, xs, t, out);
        reverse_sample(
            &process,
            &mut prior,
            guidance,
            &observed,
            &y,
            &r_obs,
            &mut x,
            self.cfg.steps,
            seed,
        );
        if x.iter().any(|v| !v.is_finite()) {
            return Err(GendaError::Diverged {
                cycle: input.cycle,
                what: format!("{method} reverse sampling produced non-finite values"),
            });
        }
        for (i, v) in ens.iter_mut().enumerate() {
            *v = mean[i % n] + sd[i % n] * x[i];
        }
        Ok(())
    }
}
