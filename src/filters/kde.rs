//! Closed-form conditional diffusion via kernel density estimation (Binder & Oberai 2026,
//! "Closed-form conditional diffusion models for data assimilation"): the forecast ensemble and
//! predicted measurements y_j = h(x_j) + η_j (h used only as a black box, η_j ~ N(0, R)) define a
//! KDE of the joint density,
//!
//!   p(x, y) = (1/N) Σ_j N(x; x_j, σ_x² I) N(y; y_j, σ_y² I).
//!
//! Noising only the state with the EnSF forward process x_t = α(t) x + σ(t) z gives the
//! conditional density of the noised state in closed form,
//!
//!   p_t(x | y) = Σ_j w_j N(x; α x_j, (α² σ_x² + σ²) I),  w_j ∝ exp(−‖y − y_j‖² / 2σ_y²),
//!
//! whose score is the Gaussian-mixture kernel with per-member log-weights (shared with EnSF,
//! `score::mixture`). The reverse SDE from t = 1 to t_min draws the analysis ensemble.
//! Bandwidths follow Silverman's or Scott's rule on the ensemble's mean variance, times a scale.
use super::ensf::{no_cuda, Precision};
use super::{AnalysisInput, Filter};
use crate::error::{GendaError, Result};
use crate::rng::{fill_standard_normal, stream, Purpose};
use crate::score::ensf_device::DeviceReverse;
use crate::score::mixture::mixture_score_tiled;
use crate::score::sampler::{
    prior_sample_at, sample_at, unit_sample_at, SamplerConfig, SamplerKind,
};
use crate::score::{select_local_device, DeviceChoice, ForwardProcess};
use ndarray::{Array2, ArrayView2, ArrayViewMut2};
use rand::Rng;
use serde::{Deserialize, Serialize};
use std::cell::RefCell;

/// Kernel bandwidth rule (as a factor on the ensemble standard deviation).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum BandwidthRule {
    /// (4 / ((d + 2) N))^{1/(d+4)}
    #[default]
    Silverman,
    /// N^{−1/(d+4)}
    Scott,
    /// Absolute bandwidths: σ_x = `state_scale`, σ_y = `obs_scale` (as the paper's grid search).
    Fixed,
}

impl BandwidthRule {
    pub fn factor(self, n: usize, d: usize) -> f64 {
        let (n, d) = (n as f64, d as f64);
        match self {
            BandwidthRule::Silverman => (4.0 / ((d + 2.0) * n)).powf(1.0 / (d + 4.0)),
            BandwidthRule::Scott => n.powf(-1.0 / (d + 4.0)),
            BandwidthRule::Fixed => 1.0,
        }
    }
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct KdeConfig {
    pub members: usize,
    /// Reverse Euler–Maruyama steps from t = 1 to t_min.
    #[serde(default = "d_steps")]
    pub steps: usize,
    /// α(1) of the forward process α(t) = 1 − (1 − ε_α) t, σ²(t) = t.
    #[serde(default = "d_eps")]
    pub eps_alpha: f64,
    #[serde(default = "d_tmin")]
    pub t_min: f64,
    #[serde(default)]
    pub bandwidth: BandwidthRule,
    /// Multiplies the state bandwidth σ_x (with `fixed`: σ_x itself).
    #[serde(default = "unit")]
    pub state_scale: f64,
    /// Multiplies the measurement bandwidth σ_y (with `fixed`: σ_y itself).
    #[serde(default = "unit")]
    pub obs_scale: f64,
    /// Predicted measurements y_j = h(x_j) + η_j with η_j ~ N(0, R) (the measurement process
    /// simulated as a black box); `false` uses h(x_j).
    #[serde(default = "yes")]
    pub perturb_predicted: bool,
    /// Reverse process: `sde` (Euler–Maruyama of the reverse SDE) or `probability_flow` (the
    /// deterministic probability-flow ODE with Heun steps, the few-step sampler of the paper).
    #[serde(default)]
    pub sampler: KdeSampler,
    /// The draw at t = 1: `gaussian` N(0, (α(1)² + σ(1)²) I) (genda's default), or `mixture`,
    /// the exact t = 1 marginal of the KDE conditional, Σ_j w_j N(α(1) x_j, (α(1)² σ_x² + σ(1)²) I)
    /// — what a deterministic (probability-flow) sampler needs, since it cannot forget a wrong
    /// start as the SDE does.
    #[serde(default)]
    pub terminal: KdeTerminal,
    /// Where the reverse process runs, as EnSF's `device`: `cpu` (default), `cuda` (libtorch
    /// tensors on this rank's GPU; a clear error without one) or `auto`.
    #[serde(default = "d_device")]
    pub device: DeviceChoice,
    /// Arithmetic of the device path: `f64` (default) or `f32` (opt-in).
    #[serde(default)]
    pub precision: Precision,
}

fn d_device() -> DeviceChoice {
    DeviceChoice::Cpu
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum KdeTerminal {
    #[default]
    Gaussian,
    Mixture,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum KdeSampler {
    #[default]
    Sde,
    ProbabilityFlow,
}

fn d_steps() -> usize {
    100
}
fn d_eps() -> f64 {
    0.05
}
fn d_tmin() -> f64 {
    1e-3
}
fn unit() -> f64 {
    1.0
}
fn yes() -> bool {
    true
}

impl KdeConfig {
    pub fn validate(&self) -> Result<()> {
        if self.steps == 0
            || !(self.eps_alpha > 0.0 && self.eps_alpha < 1.0)
            || !(self.t_min > 0.0 && self.t_min < 1.0)
        {
            return Err(GendaError::invalid(
                "filter",
                format!(
                    "kde_diffusion needs steps >= 1, 0 < eps_alpha < 1, 0 < t_min < 1 (got {}, {}, {})",
                    self.steps, self.eps_alpha, self.t_min
                ),
            ));
        }
        for (k, v) in [
            ("filter.state_scale", self.state_scale),
            ("filter.obs_scale", self.obs_scale),
        ] {
            if !(v.is_finite() && v > 0.0) {
                return Err(GendaError::invalid(
                    k,
                    format!("bandwidth scale must be positive, got {v}"),
                ));
            }
        }
        if self.device == DeviceChoice::Cuda && tch::Cuda::device_count() <= 0 {
            return Err(no_cuda());
        }
        Ok(())
    }
}

pub struct KdeDiffusion {
    cfg: KdeConfig,
    /// Bandwidths (σ_x, σ_y) of the last analysis, for diagnostics.
    pub last_bandwidths: (f64, f64),
    /// Run the tensor path on this device whatever `device` says (tests: libtorch's CPU).
    pub device_override: Option<tch::Device>,
}

impl KdeDiffusion {
    pub fn new(cfg: KdeConfig) -> Self {
        KdeDiffusion {
            cfg,
            last_bandwidths: (f64::NAN, f64::NAN),
            device_override: None,
        }
    }
}

impl KdeDiffusion {
    /// The t = 1 sample (`terminal`): rows (m, n) of the local columns from global index
    /// `offset`. The mixture component of sample i is drawn from the weights with a uniform
    /// keyed by (seed, Resampling, i), the same on every rank.
    #[allow(clippy::too_many_arguments)]
    fn terminal_draw(
        &self,
        process: &ForwardProcess,
        ens: &Array2<f64>,
        logw: &[f64],
        sx: f64,
        m: usize,
        n: usize,
        seed: u64,
        offset: usize,
    ) -> Vec<f64> {
        match self.cfg.terminal {
            KdeTerminal::Gaussian => prior_sample_at(process, m, n, seed, offset),
            KdeTerminal::Mixture => {
                let mx = logw.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
                let mut cdf: Vec<f64> = logw.iter().map(|l| (l - mx).exp()).collect();
                for k in 1..cdf.len() {
                    cdf[k] += cdf[k - 1];
                }
                let total = *cdf.last().expect("members");
                let a = process.alpha(1.0);
                let sd = (a * a * sx * sx + process.sigma(1.0).powi(2)).sqrt();
                let mut x = unit_sample_at(m, n, seed, offset);
                for (i, row) in x.chunks_mut(n).enumerate() {
                    let u: f64 =
                        stream(seed, Purpose::Resampling, 1, i as u64, 0).gen::<f64>() * total;
                    let j = cdf.partition_point(|&c| c < u).min(cdf.len() - 1);
                    for (k, v) in row.iter_mut().enumerate() {
                        *v = a * ens[[j, k]] + sd * *v;
                    }
                }
                x
            }
        }
    }
}

impl Filter for KdeDiffusion {
    fn name(&self) -> &'static str {
        "kde_diffusion"
    }

    fn analyse(&mut self, ens: &mut Array2<f64>, input: &AnalysisInput) -> Result<()> {
        input.check(ens, "kde_diffusion")?;
        let (m, n) = ens.dim();
        let h = input.obs_operator;
        let p = h.obs_dim();
        if input.obs_error_var.iter().any(|r| !(*r > 0.0)) {
            return Err(GendaError::invalid(
                "observations.error_var",
                "kde_diffusion needs positive observation-error variances",
            ));
        }
        // Predicted measurements, perturbed with noise keyed by global observation index.
        let mut yp = Array2::<f64>::zeros((m, p));
        let mut z = vec![0.0; p];
        for (j, (x, mut y)) in ens.rows().into_iter().zip(yp.rows_mut()).enumerate() {
            let ys = y.as_slice_mut().expect("fresh array");
            h.apply(x.as_slice().expect("contiguous rows"), ys);
            if self.cfg.perturb_predicted {
                fill_standard_normal(
                    input.seed,
                    Purpose::ObsPerturbation,
                    input.cycle as u64,
                    j as u64,
                    input.obs_offset,
                    &mut z,
                );
                for ((v, zk), r) in ys.iter_mut().zip(&z).zip(input.obs_error_var) {
                    *v += r.sqrt() * zk;
                }
            }
        }
        // Tile sums: Σ var_x, Σ var_y, number of observations, and ‖y − y_j‖² per member.
        let dom = &input.domain;
        let obs_tiles = dom.obs_per_tile(h.locations());
        let k = 3 + m;
        let mut partials = vec![0.0; dom.tiles.len() * k];
        let var_of = |col: &mut dyn Iterator<Item = f64>| {
            let v: Vec<f64> = col.collect();
            let mean = v.iter().sum::<f64>() / m as f64;
            v.iter().map(|a| (a - mean).powi(2)).sum::<f64>() / (m as f64 - 1.0)
        };
        for (t, (cols, orange)) in dom.tiles.iter().zip(&obs_tiles).enumerate() {
            let out = &mut partials[t * k..(t + 1) * k];
            out[0] = cols
                .clone()
                .map(|i| var_of(&mut ens.column(i).iter().copied()))
                .sum();
            out[1] = orange
                .clone()
                .map(|j| var_of(&mut yp.column(j).iter().copied()))
                .sum();
            out[2] = orange.len() as f64;
            for (jm, o) in out[3..].iter_mut().enumerate() {
                *o = orange
                    .clone()
                    .map(|j| (input.obs[j] - yp[[jm, j]]).powi(2))
                    .sum();
            }
        }
        let sums = input.reducer.sum_tiles(&partials, k)?;
        let (n_glob, p_glob) = (dom.n_global, sums[2].round() as usize);
        let rule = self.cfg.bandwidth;
        let (sx, sy) = if rule == BandwidthRule::Fixed {
            (self.cfg.state_scale, self.cfg.obs_scale)
        } else {
            (
                self.cfg.state_scale * rule.factor(m, n_glob) * (sums[0] / n_glob as f64).sqrt(),
                if p_glob > 0 {
                    self.cfg.obs_scale * rule.factor(m, p_glob) * (sums[1] / p_glob as f64).sqrt()
                } else {
                    1.0
                },
            )
        };
        if !(sx > 0.0 && sx.is_finite() && sy > 0.0 && sy.is_finite()) {
            return Err(GendaError::LinAlg(format!(
                "kde_diffusion: degenerate bandwidths σ_x = {sx}, σ_y = {sy} (collapsed ensemble?)"
            )));
        }
        self.last_bandwidths = (sx, sy);
        let logw: Vec<f64> = sums[3..].iter().map(|d2| -d2 / (2.0 * sy * sy)).collect();

        let process = ForwardProcess::Ensf {
            eps_alpha: self.cfg.eps_alpha,
            eps_beta: 0.0,
        };
        let forecast = ens.clone();
        let tiles = &dom.tiles;
        let failure: RefCell<Option<GendaError>> = RefCell::new(None);
        let score = |x: &[f64], t: f64, out: &mut [f64]| {
            let a = process.alpha(t);
            let s2 = a * a * sx * sx + process.sigma(t).powi(2);
            let xv = ArrayView2::from_shape((m, n), x).expect("sample shape");
            let sc = ArrayViewMut2::from_shape((m, n), out).expect("score shape");
            if let Err(e) = mixture_score_tiled(
                xv,
                forecast.view(),
                a,
                s2,
                Some(&logw),
                tiles,
                input.reducer,
                sc,
            ) {
                failure.borrow_mut().get_or_insert(e);
            }
        };
        let seed = input.seed ^ (input.cycle as u64).wrapping_mul(0xD1B5_4A32_D192_ED03);
        // The t = 1 draw, then the reverse process from t = 1 down to t_min.
        let mut x = self.terminal_draw(&process, ens, &logw, sx, m, n, seed, dom.global(0));
        let device = match self.device_override {
            Some(d) => d,
            None if self.cfg.device == DeviceChoice::Cpu => tch::Device::Cpu,
            None => select_local_device(self.cfg.device).map_err(|_| no_cuda())?,
        };
        if device != tch::Device::Cpu || self.device_override.is_some() {
            let fc = ens.as_standard_layout();
            DeviceReverse {
                process,
                steps: self.cfg.steps,
                t_min: self.cfg.t_min,
                probability_flow: self.cfg.sampler == KdeSampler::ProbabilityFlow,
                mixture: true,
                kernel_var: sx * sx,
                log_weights: Some(&logw),
                likelihood: None,
                score_clip: None,
                forecast: fc.as_slice().expect("standard layout"),
                m,
                n,
                tiles: &dom.tiles,
                reducer: input.reducer,
                seed,
                offset: dom.global(0),
                device,
                kind: self.cfg.precision.kind(),
            }
            .run(&mut x)?;
            *ens = Array2::from_shape_vec((m, n), x).expect("sample shape");
            return Ok(());
        }
        let sampler = SamplerConfig {
            kind: match self.cfg.sampler {
                KdeSampler::Sde => SamplerKind::EulerMaruyama,
                KdeSampler::ProbabilityFlow => SamplerKind::ProbabilityFlow,
            },
            steps: self.cfg.steps,
            t_min: self.cfg.t_min,
            denoise: false,
        };
        sample_at(
            &process,
            &sampler,
            &score,
            &mut x,
            n,
            seed,
            Some(1.0),
            dom.global(0),
        );
        if let Some(e) = failure.into_inner() {
            return Err(e);
        }
        *ens = Array2::from_shape_vec((m, n), x).expect("sample shape");
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::obs::PointObs;

    /// With many members the samples reproduce the KDE posterior the method targets (its mean
    /// and covariance are known in closed form from the weights), and that posterior is near the
    /// Kalman analysis for a Gaussian prior and linear observation.
    #[test]
    fn linear_gaussian_samples_match_kde_target_and_kalman() {
        let (m, n) = (1000, 2);
        let mut ens = Array2::zeros((m, n));
        let mut z = vec![0.0; n];
        for i in 0..m {
            fill_standard_normal(7, Purpose::EnsembleInit, 0, i as u64, 0, &mut z);
            ens[[i, 0]] = z[0];
            ens[[i, 1]] = z[1];
        }
        let h = PointObs::new(n, vec![0], false);
        let input = AnalysisInput::whole(&[1.2], &h, &[0.5], 1, 11);
        let mut f = KdeDiffusion::new(KdeConfig {
            members: m,
            steps: 200,
            eps_alpha: 0.05,
            t_min: 1e-3,
            bandwidth: BandwidthRule::Silverman,
            state_scale: 1.0,
            obs_scale: 1.0,
            perturb_predicted: true,
            sampler: KdeSampler::Sde,
            terminal: KdeTerminal::Gaussian,
            device: DeviceChoice::Cpu,
            precision: Precision::F64,
        });
        // The target: weights from the same perturbed predicted measurements.
        let prior = ens.clone();
        f.analyse(&mut ens, &input).unwrap();
        let (sx, sy) = f.last_bandwidths;
        let mut w: Vec<f64> = (0..m)
            .map(|j| {
                let mut e = [0.0];
                fill_standard_normal(11, Purpose::ObsPerturbation, 1, j as u64, 0, &mut e);
                let yj = prior[[j, 0]] + 0.5f64.sqrt() * e[0];
                -(1.2 - yj).powi(2) / (2.0 * sy * sy)
            })
            .collect();
        let mx = w.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
        w.iter_mut().for_each(|v| *v = (*v - mx).exp());
        let zs: f64 = w.iter().sum();
        w.iter_mut().for_each(|v| *v /= zs);
        for c in 0..n {
            let tm: f64 = (0..m).map(|j| w[j] * prior[[j, c]]).sum();
            let tv: f64 = (0..m)
                .map(|j| w[j] * (prior[[j, c]] - tm).powi(2))
                .sum::<f64>()
                + sx * sx;
            let col = ens.column(c);
            let sm = col.sum() / m as f64;
            let sv = col.iter().map(|v| (v - sm).powi(2)).sum::<f64>() / (m as f64 - 1.0);
            eprintln!("component {c}: samples ({sm:.3}, {sv:.3}), KDE target ({tm:.3}, {tv:.3})");
            assert!((sm - tm).abs() < 0.06, "mean {sm} vs {tm}");
            assert!((sv / tv - 1.0).abs() < 0.12, "var {sv} vs {tv}");
        }
        // Kalman: mean (0.8, 0), variances (1/3, 1); the KDE smooths with σ_x, σ_y.
        let m0 = ens.column(0).sum() / m as f64;
        assert!((m0 - 0.8).abs() < 0.12, "{m0}");
    }

    #[test]
    fn bandwidth_rules() {
        // Silverman in 1-D: (4/3)^{1/5} N^{-1/5}.
        let f = BandwidthRule::Silverman.factor(100, 1);
        assert!((f - (4.0f64 / 3.0).powf(0.2) * 100f64.powf(-0.2)).abs() < 1e-12);
        assert!((BandwidthRule::Scott.factor(100, 1) - 100f64.powf(-0.2)).abs() < 1e-12);
    }

    /// The tensor path (libtorch's CPU device) against the CPU path: the same draws and
    /// kernel weights, SDE and probability-flow samplers, 3 tiles: the same analysis to 1e-10.
    #[test]
    fn device_path_equals_the_cpu_path() {
        let (m, n) = (10, 18);
        let h = PointObs::new(n, (0..n).step_by(3).collect(), true);
        let p = n / 3;
        let y: Vec<f64> = (0..p).map(|j| (j as f64 * 0.9).cos()).collect();
        let r = vec![0.4; p];
        let mut ens0 = Array2::zeros((m, n));
        let mut z = vec![0.0; n];
        for i in 0..m {
            fill_standard_normal(8, Purpose::EnsembleInit, 0, i as u64, 0, &mut z);
            for j in 0..n {
                ens0[[i, j]] = 1.5 * z[j] + (j as f64 * 0.2).sin();
            }
        }
        let mut input = AnalysisInput::whole(&y, &h, &r, 2, 5);
        input.domain.tiles = (0..3).map(|t| t * 6..(t + 1) * 6).collect();
        for (sampler, terminal) in [
            (KdeSampler::Sde, KdeTerminal::Gaussian),
            (KdeSampler::ProbabilityFlow, KdeTerminal::Mixture),
        ] {
            let cfg = KdeConfig {
                members: m,
                steps: 30,
                eps_alpha: 0.05,
                t_min: 1e-3,
                bandwidth: BandwidthRule::Silverman,
                state_scale: 1.0,
                obs_scale: 1.0,
                perturb_predicted: true,
                sampler,
                terminal,
                device: DeviceChoice::Cpu,
                precision: Precision::F64,
            };
            let mut want = ens0.clone();
            KdeDiffusion::new(cfg.clone())
                .analyse(&mut want, &input)
                .unwrap();
            let mut f = KdeDiffusion::new(cfg);
            f.device_override = Some(tch::Device::Cpu);
            let mut got = ens0.clone();
            f.analyse(&mut got, &input).unwrap();
            let scale = want.iter().fold(0.0f64, |a, v| a.max(v.abs()));
            let err = (&got - &want).iter().fold(0.0f64, |a, v| a.max(v.abs()));
            assert!(
                err <= 1e-10 * scale,
                "{sampler:?}: max difference {err:e} of {scale}"
            );
        }
    }
}
