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
//!
//! `prior = "gaussian_residual"` (for higher dimensions, e.g. Lorenz-96, where the MLP learned
//! from 20 members is too poor and both filters diverge): the prior score is that of a Gaussian
//! fitted to the forecast ensemble (Gaspari–Cohn localised, optionally shrunk sample covariance)
//! noised exactly under the method's process, N(A(t)m, A(t)CA(t) + Σ(t)) (for SF A = a(t)I), plus
//! the MLP as a residual that starts at zero and is trained by DSM with that baseline added
//! (`pretrain_steps` at the first cycle, `train_steps` per cycle). Cholesky factors are computed
//! once per sampler time and shared by all members and training rows. With a zero residual the
//! bridge sampler is the (localised) Kalman update (tested). `inflation` multiplies the analysis
//! anomalies as EnKF's does (default 1: L63 behaviour unchanged).
use super::core::inflate;
use super::letkf::{gaspari_cohn, Geometry, GC_HALF_WIDTH_PER_RADIUS};
use super::{AnalysisInput, Filter};
use crate::error::{GendaError, Result};
use crate::score::masf::{
    fit_gaussian, reverse_sample, sampler_grid, DiagProcess, DiagScore, Guidance, NoisedGaussian,
};
use crate::score::net::NetworkConfig;
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

/// The prior score of MASF and SF (both get the same one).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum MasfPrior {
    /// An MLP trained by DSM on the forecast ensemble (or `pretrain_data`).
    #[default]
    Mlp,
    /// The score of a Gaussian fitted to the forecast ensemble (localised, shrunk sample
    /// covariance), noised exactly under the method's process, plus an MLP residual that starts
    /// at zero and is trained by DSM with that baseline added. With a zero residual MASF's bridge
    /// sampler is then a (localised) Kalman update.
    GaussianResidual,
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
    #[serde(default)]
    pub prior: MasfPrior,
    /// The prior network: by default an MLP of `hidden` × `layers`; for 2-D fields a U-Net
    /// with circular padding, `network = { kind = "unet", height = 64, width = 64, channels = 16 }`
    /// (height · width = the state size).
    #[serde(default)]
    pub network: Option<NetworkConfig>,
    /// Offline policy (with `pretrain_data`): the pre-trained prior network is kept here. A run
    /// loads it if the file exists and was trained for the same method, measurement, network and
    /// pre-training settings (else it refuses), and otherwise pre-trains and writes it, so the
    /// network is trained once and shared by every seed and gap that observe the same points.
    #[serde(default)]
    pub prior_weights: Option<PathBuf>,
    /// `prior = "gaussian_residual"`: localisation radius of the Gaussian's covariance in grid
    /// units (Gaspari–Cohn, LETKF's convention); none: the untapered sample covariance.
    #[serde(default)]
    pub localization_radius: Option<f64>,
    /// Grid of the localisation taper.
    #[serde(default)]
    pub geometry: Geometry,
    /// `prior = "gaussian_residual"`: weight λ of the shrinkage of the off-diagonal covariances
    /// toward 0, C = (1 − λ) ρ∘S + λ diag(S).
    #[serde(default)]
    pub shrinkage: f64,
    /// Multiplicative inflation of the analysis anomalies (as EnKF's).
    #[serde(default = "d_inflation")]
    pub inflation: f64,
}

fn d_inflation() -> f64 {
    1.0
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
        if !(self.inflation.is_finite() && self.inflation > 0.0) {
            return Err(GendaError::invalid(
                "filter.inflation",
                format!("must be positive, got {}", self.inflation),
            ));
        }
        if !(0.0..=1.0).contains(&self.shrinkage) {
            return Err(GendaError::invalid(
                "filter.shrinkage",
                format!("must lie in [0, 1], got {}", self.shrinkage),
            ));
        }
        if self
            .localization_radius
            .is_some_and(|r| !(r > 0.0 && r.is_finite()))
        {
            return Err(GendaError::invalid(
                "filter.localization_radius",
                format!("must be positive, got {:?}", self.localization_radius),
            ));
        }
        if self.prior_weights.is_some() && self.pretrain_data.is_none() {
            return Err(GendaError::invalid(
                "filter.prior_weights",
                format!("{method}: prior_weights keeps a network pre-trained offline on pretrain_data; set pretrain_data too"),
            ));
        }
        if self.prior == MasfPrior::GaussianResidual {
            if self.pretrain_data.is_some() {
                return Err(GendaError::invalid(
                    "filter.pretrain_data",
                    format!("{method}: prior = \"gaussian_residual\" learns a residual to the forecast ensemble's Gaussian; climatology pre-training does not apply"),
                ));
            }
            return Ok(());
        }
        if self.localization_radius.is_some() || self.shrinkage != 0.0 {
            return Err(GendaError::invalid(
                "filter.localization_radius",
                format!("{method}: localization_radius and shrinkage need prior = \"gaussian_residual\""),
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

    /// The localisation taper ρ(i, j) of the Gaussian prior's covariance (state of `n`).
    fn taper(&self, n: usize) -> impl Fn(usize, usize) -> f64 {
        let geometry = self.cfg.geometry;
        let c = self
            .cfg
            .localization_radius
            .map(|r| GC_HALF_WIDTH_PER_RADIUS * r);
        move |i, j| match c {
            Some(c) => gaspari_cohn(geometry.distance(i, j, n) / c),
            None => 1.0,
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
        // The Gaussian baseline (prior = "gaussian_residual"), factorised at the sampler's times.
        let base = match self.cfg.prior {
            MasfPrior::Mlp => None,
            MasfPrior::GaussianResidual => {
                let taper = self.taper(n);
                let (m, c) = fit_gaussian(&z, n, &taper, self.cfg.shrinkage);
                let grid = sampler_grid(self.cfg.steps);
                Some(NoisedGaussian::new(
                    &process,
                    &m,
                    &c,
                    &grid[..self.cfg.steps],
                )?)
            }
        };
        let (hidden, layers, lr, batch) = (
            self.cfg.hidden,
            self.cfg.layers,
            self.cfg.lr,
            self.cfg.batch,
        );
        let fit = |net: &mut DiagScore, data: &[f64], steps: usize, seed: u64| match &base {
            _ if steps == 0 => Ok(f64::NAN),
            Some(b) => net.fit_residual(&process, data, b, steps, batch, seed),
            None => net.fit(&process, data, steps, batch, seed),
        };
        if first {
            let arch = self.cfg.network.clone().unwrap_or(NetworkConfig::Mlp {
                hidden,
                layers,
                time_features: 16,
            });
            let mut net = match base {
                Some(_) => DiagScore::new_residual(arch, n, lr, input.seed)?,
                None => DiagScore::with_network(arch, n, lr, input.seed)?,
            };
            // What the offline network is trained for: the cache refuses anything else.
            let fingerprint = {
                let h = crate::config::fnv1a(
                    process
                        .h
                        .iter()
                        .chain(&process.r)
                        .flat_map(|v| v.to_bits().to_le_bytes()),
                );
                format!(
                    "{method}, state {n}, process {h:016x}, network {}, pretrain_data {}, {} steps of batch {} at lr {}",
                    toml::to_string(&self.cfg.network).unwrap_or_default().replace('\n', " "),
                    self.cfg
                        .pretrain_data
                        .as_ref()
                        .map(|p| p.display().to_string())
                        .unwrap_or_default(),
                    self.cfg.pretrain_steps,
                    batch,
                    lr
                )
            };
            let cached = self.cfg.prior_weights.as_ref().filter(|p| p.exists());
            let data: Vec<f64> = match &self.cfg.pretrain_data {
                _ if cached.is_some() => Vec::new(),
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
            if let Some(p) = cached {
                net.load(p, &fingerprint)?;
                log::info!("{method}: prior network loaded from {}", p.display());
            } else {
                self.last_loss = fit(&mut net, &data, self.cfg.pretrain_steps, input.seed)?;
                if let Some(p) = &self.cfg.prior_weights {
                    net.save(p, &fingerprint)?;
                    log::info!(
                        "{method}: prior network pre-trained and saved to {}",
                        p.display()
                    );
                }
            }
            self.net = Some(net);
        } else if self.cfg.train_steps > 0 {
            let net = self.net.as_mut().expect("trained at the first cycle");
            self.last_loss = fit(net, &z, self.cfg.train_steps, seed)?;
        }
        let net = self.net.as_ref().expect("trained at the first cycle");
        let guidance = match (self.measurement_aware, self.cfg.guidance) {
            (false, _) => Guidance::Damped,
            (true, MasfGuidance::Bridge) => Guidance::Bridge,
            (true, MasfGuidance::Additive) => Guidance::Additive,
        };
        let mut x = z;
        let mut base_err = None;
        let mut sb = vec![0.0; x.len()];
        let mut prior = |xs: &[f64], t: f64, out: &mut [f64]| {
            net.score(&process, xs, t, out);
            if let Some(b) = &base {
                if let Err(e) = b.score(xs, t, &mut sb) {
                    base_err = Some(e);
                    out.fill(f64::NAN);
                }
                out.iter_mut().zip(&sb).for_each(|(o, s)| *o += s);
            }
        };
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
        if let Some(e) = base_err {
            return Err(e);
        }
        if x.iter().any(|v| !v.is_finite()) {
            return Err(GendaError::Diverged {
                cycle: input.cycle,
                what: format!("{method} reverse sampling produced non-finite values"),
            });
        }
        for (i, v) in ens.iter_mut().enumerate() {
            *v = mean[i % n] + sd[i % n] * x[i];
        }
        inflate(ens, self.cfg.inflation);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::obs::PointObs;
    use crate::rng::{fill_standard_normal, Purpose};
    use nalgebra::{DMatrix, DVector};

    fn gaussian_config(steps: usize) -> MasfConfig {
        MasfConfig {
            members: 0,
            guidance: MasfGuidance::Bridge,
            steps,
            hidden: 16,
            layers: 1,
            lr: 1e-3,
            batch: 16,
            pretrain_steps: 0,
            train_steps: 0,
            pretrain_data: None,
            prior: MasfPrior::GaussianResidual,
            network: None,
            prior_weights: None,
            localization_radius: None,
            geometry: Geometry::Ring,
            shrinkage: 0.0,
            inflation: 1.0,
        }
    }

    /// A correlated Gaussian ensemble (members, 5), mean m, covariance B Bᵀ.
    fn correlated_ensemble(members: usize) -> (Array2<f64>, DMatrix<f64>) {
        let n = 5;
        let b = DMatrix::from_fn(n, n, |i, j| {
            if j <= i {
                0.4 + 0.3 * ((i * 7 + j * 3) % 5) as f64 / 4.0
            } else {
                0.0
            }
        });
        let m = [1.0, -2.0, 0.5, 3.0, 0.0];
        let mut ens = Array2::zeros((members, n));
        let mut z = vec![0.0; n];
        for i in 0..members {
            fill_standard_normal(11, Purpose::EnsembleInit, 0, i as u64, 0, &mut z);
            let x = &b * DVector::from_column_slice(&z);
            for k in 0..n {
                ens[[i, k]] = m[k] + x[k];
            }
        }
        (ens, &b * b.transpose())
    }

    fn moments(ens: &Array2<f64>) -> (DVector<f64>, DMatrix<f64>) {
        let (m, n) = ens.dim();
        let x = DMatrix::from_fn(m, n, |i, k| ens[[i, k]]);
        let mean = x.row_mean().transpose();
        let a = DMatrix::from_fn(m, n, |i, k| x[(i, k)] - mean[k]);
        (mean, a.transpose() * a / (m - 1) as f64)
    }

    /// With a Gaussian forecast ensemble, no localisation and a zero residual, MASF's bridge
    /// analysis is the Kalman update with the ensemble's own mean and covariance: the analysis
    /// mean and covariance (also of the unobserved, correlated components) match.
    #[test]
    fn gaussian_prior_bridge_analysis_is_the_kalman_update() {
        let (mut ens, _) = correlated_ensemble(4000);
        let (mf, pf) = moments(&ens);
        let obs = [0usize, 3];
        let (y, r) = ([2.0, 1.5], [0.5, 0.2]);
        let h = PointObs::new(5, obs.to_vec(), false);
        let input = AnalysisInput::whole(&y, &h, &r, 3, 7);
        let mut f = Masf::new(gaussian_config(200), true);
        f.analyse(&mut ens, &input).unwrap();
        let hm = DMatrix::from_fn(2, 5, |o, k| if obs[o] == k { 1.0 } else { 0.0 });
        let s = &hm * &pf * hm.transpose() + DMatrix::from_diagonal(&DVector::from_row_slice(&r));
        let k = &pf * hm.transpose() * s.try_inverse().unwrap();
        let ma = &mf + &k * (DVector::from_row_slice(&y) - &hm * &mf);
        let pa = (DMatrix::identity(5, 5) - &k * &hm) * &pf;
        let (m_got, p_got) = moments(&ens);
        for i in 0..5 {
            let sd = pa[(i, i)].sqrt();
            eprintln!(
                "{i}: mean {:.4} (Kalman {:.4}), var {:.4} (Kalman {:.4})",
                m_got[i],
                ma[i],
                p_got[(i, i)],
                pa[(i, i)]
            );
            assert!((m_got[i] - ma[i]).abs() < 0.08 * sd, "mean {i}");
            assert!((p_got[(i, i)] / pa[(i, i)] - 1.0).abs() < 0.08, "var {i}");
            for j in 0..i {
                let scale = (pa[(i, i)] * pa[(j, j)]).sqrt();
                assert!(
                    (p_got[(i, j)] - pa[(i, j)]).abs() < 0.06 * scale,
                    "cov {i} {j}: {} vs {}",
                    p_got[(i, j)],
                    pa[(i, j)]
                );
            }
        }
    }

    /// The localisation taper zeroes covariances beyond the Gaspari–Cohn support and keeps the
    /// variances; the noised Gaussian score equals −(A C A + Σ)⁻¹(x − A m) at cached and
    /// uncached times.
    #[test]
    fn localised_gaussian_baseline_score() {
        let n = 12;
        let members = 30;
        let mut data = vec![0.0; members * n];
        fill_standard_normal(5, Purpose::EnsembleInit, 0, 0, 0, &mut data);
        let mut cfg = gaussian_config(10);
        cfg.localization_radius = Some(1.0);
        let f = Masf::new(cfg, true);
        let taper = f.taper(n);
        let (m, c) = fit_gaussian(&data, n, &taper, 0.1);
        // Support 2c = 3.65 grid points on the ring: distance 4 (and 8 = 12 − 4) is cut.
        assert_eq!(c[4], 0.0);
        assert_eq!(c[8], 0.0);
        assert!(c[11] != 0.0 && c[1] != 0.0);
        let (_, c0) = fit_gaussian(&data, n, &|_, _| 1.0, 0.0);
        assert!((c[5 * n + 5] - c0[5 * n + 5]).abs() < 1e-15);
        assert!((c[1] - 0.9 * gaspari_cohn(1.0 / GC_HALF_WIDTH_PER_RADIUS) * c0[1]).abs() < 1e-12);
        let p = DiagProcess::measurement_aware(n, &[0, 2, 4, 6, 8, 10], &[0.1; 6]);
        let times = sampler_grid(10);
        let g = NoisedGaussian::new(&p, &m, &c, &times[..10]).unwrap();
        let x: Vec<f64> = (0..2 * n).map(|i| (i as f64 * 0.37).sin()).collect();
        for &t in &[times[3], 0.41] {
            let mut got = vec![0.0; 2 * n];
            g.score(&x, t, &mut got).unwrap();
            let a = DMatrix::from_diagonal(&DVector::from_fn(n, |k, _| p.a_k(k, t)));
            let sig = DMatrix::from_diagonal(&DVector::from_fn(n, |k, _| p.var_k(k, t)));
            let pt = &a * DMatrix::from_row_slice(n, n, &c) * &a + sig;
            let inv = pt.try_inverse().unwrap();
            for row in 0..2 {
                let r = DVector::from_fn(n, |k, _| x[row * n + k] - p.a_k(k, t) * m[k]);
                let want = -(&inv * r);
                for k in 0..n {
                    assert!((got[row * n + k] - want[k]).abs() < 1e-8 * (1.0 + want[k].abs()));
                }
            }
        }
    }
}
