//! Ensemble score filter (EnSF; Bao, Zhang & Zhang 2024): training-free. The score of the
//! noised forecast distribution is that of a Gaussian mixture centred on α(t)·(forecast members)
//! with variance σ²(t), computed in closed form; the likelihood score J_h(x)ᵀR⁻¹(y − h(x)),
//! damped by h(t) = 1 − t, is added; the reverse SDE of the EnSF path (α = 1 − (1 − ε_α)t,
//! σ² = ε_β + (1 − ε_β)t) is integrated with Euler–Maruyama from t = 1; the samples are the
//! analysis.
//!
//! Every choice of the authors' code (github zezhongzhang/EnSF) is an option:
//! - `prior`: `paired` — sample i uses only member i, (α x_i − x)/σ² (both versions of the
//!   authors' code); `mixture` — genda's variant, the full mixture over all members (weights
//!   softmax_j(−‖x − α x_j‖²/2σ²), squared distances as ‖x‖² + α²‖x_j‖² − 2α x·x_j, one GEMM).
//! - the time grid: S steps of h = (1 − t_min)/S at t_k = 1 − k h (the drift and score at the
//!   step's start). `t_min = 0` is the authors' grid (`torch.linspace(1, 0, S + 1)`, last step
//!   at t = 1/S); genda's default t_min = 1e-3 stops short of 0.
//! - `eps_beta`: σ²(t) = ε_β + (1 − ε_β) t (legacy script 0, published code 0.025).
//! - `terminal`: the draw at t = 1 — `unit` N(0, I) (legacy: `torch.randn`), `standardized`
//!   N(0, I) standardised per component over the members with the unbiased std (published:
//!   `(x_T − mean)/std`), `marginal` N(0, (α(1)² + σ(1)²) I) (genda's former draw).
//! - `score_clip`: the total score clipped elementwise to ±c (published: 1000).
//! - `forecast_clip`: the forecast members clipped to ±c after every model step (published: 50;
//!   the driver applies it, the truth is never clipped).
use super::{AnalysisInput, Filter};
use crate::error::{GendaError, Result};
use crate::score::ensf_device::{DeviceLikelihood, DeviceReverse};
pub use crate::score::mixture::mixture_score;
use crate::score::mixture::mixture_score_tiled;
use crate::score::sampler::{
    prior_sample_at, sample_at, unit_sample_at, SamplerConfig, SamplerKind,
};
use crate::score::{select_local_device, DeviceChoice, ForwardProcess};
use ndarray::{Array2, ArrayView2, ArrayViewMut2, Zip};
use rayon::prelude::*;
use serde::{Deserialize, Serialize};
use std::cell::RefCell;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum EnsfPrior {
    #[default]
    Mixture,
    Paired,
}

/// The sample the reverse SDE starts from at t = 1.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum EnsfTerminal {
    /// N(0, (α(1)² + σ(1)²) I): the marginal at t = 1 of data of unit scale (genda's former draw).
    #[default]
    Marginal,
    /// N(0, I) (the legacy script's `torch.randn`).
    Unit,
    /// N(0, I), then per component minus the member mean, over the unbiased member std (the
    /// published code).
    Standardized,
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct EnsfConfig {
    pub members: usize,
    /// Reverse-time Euler–Maruyama steps.
    #[serde(default = "d_steps")]
    pub steps: usize,
    #[serde(default = "d_eps")]
    pub eps_alpha: f64,
    /// σ²(t) = ε_β + (1 − ε_β) t.
    #[serde(default)]
    pub eps_beta: f64,
    /// Smallest time of the reverse integration (0: the authors' grid).
    #[serde(default = "d_tmin")]
    pub t_min: f64,
    #[serde(default)]
    pub prior: EnsfPrior,
    #[serde(default)]
    pub terminal: EnsfTerminal,
    /// Clip the total (prior + likelihood) score elementwise to ±score_clip.
    #[serde(default)]
    pub score_clip: Option<f64>,
    /// Clip the forecast members to ±forecast_clip after every model step.
    #[serde(default)]
    pub forecast_clip: Option<f64>,
    /// Where the reverse process runs: `cpu` (default: genda's own rayon path), `cuda`
    /// (libtorch tensors on this rank's GPU, local rank mod the node's GPU count; a clear error
    /// where libtorch sees none) or `auto` (the GPU when libtorch sees one, else `cpu`).
    #[serde(default = "d_device")]
    pub device: DeviceChoice,
    /// Arithmetic of the device path: `f64` (default; agrees with the CPU path to round-off)
    /// or `f32` (opt-in).
    #[serde(default)]
    pub precision: Precision,
}

/// Floating-point width of a device computation.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Precision {
    #[default]
    F64,
    F32,
}

impl Precision {
    pub fn kind(self) -> tch::Kind {
        match self {
            Precision::F64 => tch::Kind::Double,
            Precision::F32 => tch::Kind::Float,
        }
    }
}

/// `device = "cuda"` where libtorch sees no GPU.
pub fn no_cuda() -> GendaError {
    GendaError::invalid(
        "filter.device",
        "device = \"cuda\" requested but libtorch sees no CUDA device (use \"auto\" or \"cpu\")",
    )
}

fn d_device() -> DeviceChoice {
    DeviceChoice::Cpu
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

impl EnsfConfig {
    pub fn validate(&self) -> Result<()> {
        if self.steps == 0
            || !(self.eps_alpha > 0.0 && self.eps_alpha < 1.0)
            || !(0.0..1.0).contains(&self.eps_beta)
            || !(0.0..1.0).contains(&self.t_min)
        {
            return Err(GendaError::invalid(
                "filter",
                format!(
                    "ensf needs steps >= 1, 0 < eps_alpha < 1, 0 <= eps_beta < 1, 0 <= t_min < 1 (got {}, {}, {}, {})",
                    self.steps, self.eps_alpha, self.eps_beta, self.t_min
                ),
            ));
        }
        if self.device == DeviceChoice::Cuda && tch::Cuda::device_count() <= 0 {
            return Err(no_cuda());
        }
        for (k, v) in [
            ("filter.score_clip", self.score_clip),
            ("filter.forecast_clip", self.forecast_clip),
        ] {
            if let Some(c) = v {
                if !(c.is_finite() && c > 0.0) {
                    return Err(GendaError::invalid(k, format!("must be positive, got {c}")));
                }
            }
        }
        Ok(())
    }

    pub fn process(&self) -> ForwardProcess {
        ForwardProcess::Ensf {
            eps_alpha: self.eps_alpha,
            eps_beta: self.eps_beta,
        }
    }
}

/// The seed of cycle `cycle`'s reverse process (its sampling streams are keyed by it).
pub fn ensf_seed(seed: u64, cycle: usize) -> u64 {
    seed ^ (cycle as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15)
}

/// The t = 1 sample of `m` members on the `d` columns from global index `offset`.
pub fn ensf_terminal(cfg: &EnsfConfig, m: usize, d: usize, seed: u64, offset: usize) -> Vec<f64> {
    match cfg.terminal {
        EnsfTerminal::Marginal => prior_sample_at(&cfg.process(), m, d, seed, offset),
        EnsfTerminal::Unit => unit_sample_at(m, d, seed, offset),
        EnsfTerminal::Standardized => {
            let mut x = unit_sample_at(m, d, seed, offset);
            for j in 0..d {
                let mean = (0..m).map(|i| x[i * d + j]).sum::<f64>() / m as f64;
                let var =
                    (0..m).map(|i| (x[i * d + j] - mean).powi(2)).sum::<f64>() / (m as f64 - 1.0);
                let sd = var.sqrt();
                for i in 0..m {
                    x[i * d + j] = (x[i * d + j] - mean) / sd;
                }
            }
            x
        }
    }
}

/// Samples × columns from which the likelihood pass runs on rayon's threads.
const PARALLEL_MIN_LEN: usize = 1 << 15;

pub struct Ensf {
    cfg: EnsfConfig,
}

impl Ensf {
    pub fn new(cfg: EnsfConfig) -> Self {
        Ensf { cfg }
    }
}

/// Mixture score at rows of `x` (M, n) for centres α·c (N, n) with variance σ², into `out`.
impl Filter for Ensf {
    fn name(&self) -> &'static str {
        "ensf"
    }

    fn analyse(&mut self, ens: &mut Array2<f64>, input: &AnalysisInput) -> Result<()> {
        input.check(ens, "ensf")?;
        if self.cfg.device != DeviceChoice::Cpu {
            let device = select_local_device(self.cfg.device).map_err(|_| no_cuda())?;
            if device != tch::Device::Cpu {
                return self.analyse_on_device(ens, input, device);
            }
        }
        let (m, n) = ens.dim();
        let h = input.obs_operator;
        let p = h.obs_dim();
        let process = self.cfg.process();
        let forecast = ens.clone();
        let prior = self.cfg.prior;
        let clip = self.cfg.score_clip;
        let tiles = &input.domain.tiles;
        // The sampler's score closure cannot return an error; keep the first one here.
        let failure: RefCell<Option<GendaError>> = RefCell::new(None);
        let score = |x: &[f64], t: f64, out: &mut [f64]| {
            let (a, s2) = (process.alpha(t), process.sigma(t).powi(2));
            let xv = ArrayView2::from_shape((m, n), x).expect("sample shape");
            let mut sc = ArrayViewMut2::from_shape((m, n), &mut *out).expect("score shape");
            match prior {
                EnsfPrior::Mixture => {
                    if let Err(e) = mixture_score_tiled(
                        xv,
                        forecast.view(),
                        a,
                        s2,
                        None,
                        tiles,
                        input.reducer,
                        sc,
                    ) {
                        failure.borrow_mut().get_or_insert(e);
                    }
                }
                EnsfPrior::Paired => {
                    Zip::from(&mut sc)
                        .and(&forecast)
                        .and(xv)
                        .for_each(|s, &f, &x| *s = (f * a - x) / s2);
                }
            }
            // The damped likelihood score of each sample (rows are independent: on rayon's
            // threads for large states, the same numbers on any thread count).
            let damp = 1.0 - t;
            let likelihood = |(hx, g): &mut (Vec<f64>, Vec<f64>), row: &mut [f64], xi: &[f64]| {
                h.apply(xi, hx);
                for j in 0..p {
                    hx[j] = (input.obs[j] - hx[j]) / input.obs_error_var[j];
                }
                h.adjoint(xi, hx, g);
                for k in 0..n {
                    row[k] += damp * g[k];
                }
                if let Some(c) = clip {
                    row.iter_mut().for_each(|v| *v = v.clamp(-c, c));
                }
            };
            let bufs = || (vec![0.0; p], vec![0.0; n]);
            if m * n >= PARALLEL_MIN_LEN {
                out.par_chunks_mut(n)
                    .zip(x.par_chunks(n))
                    .for_each_init(bufs, |b, (row, xi)| likelihood(b, row, xi));
            } else {
                let mut b = bufs();
                out.chunks_mut(n)
                    .zip(x.chunks(n))
                    .for_each(|(row, xi)| likelihood(&mut b, row, xi));
            }
        };
        let seed = ensf_seed(input.seed, input.cycle);
        let offset = input.domain.global(0);
        let mut x = ensf_terminal(&self.cfg, m, n, seed, offset);
        let sampler = SamplerConfig {
            kind: SamplerKind::EulerMaruyama,
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
            offset,
        );
        if let Some(e) = failure.into_inner() {
            return Err(e);
        }
        *ens = Array2::from_shape_vec((m, n), x).expect("sample shape");
        Ok(())
    }

    fn forecast_clip(&self) -> Option<f64> {
        self.cfg.forecast_clip
    }
}

impl Ensf {
    /// The reverse process as tensor operations on `device` (`score::ensf_device`), from the
    /// same t = 1 sample and step noise as the CPU path.
    pub fn analyse_on_device(
        &self,
        ens: &mut Array2<f64>,
        input: &AnalysisInput,
        device: tch::Device,
    ) -> Result<()> {
        input.check(ens, "ensf")?;
        let (m, n) = ens.dim();
        let transform = input.obs_operator.pointwise().ok_or_else(|| {
            GendaError::invalid(
                "filter.device",
                "EnSF on a GPU needs point observations (identity, sparse, arctan, quadratic)",
            )
        })?;
        let seed = ensf_seed(input.seed, input.cycle);
        let offset = input.domain.global(0);
        let mut x = ensf_terminal(&self.cfg, m, n, seed, offset);
        let forecast = ens.as_standard_layout();
        DeviceReverse {
            process: self.cfg.process(),
            steps: self.cfg.steps,
            t_min: self.cfg.t_min,
            probability_flow: false,
            mixture: self.cfg.prior == EnsfPrior::Mixture,
            kernel_var: 0.0,
            log_weights: None,
            likelihood: Some(DeviceLikelihood {
                obs: input.obs,
                obs_error_var: input.obs_error_var,
                idx: input.obs_operator.locations(),
                transform,
            }),
            score_clip: self.cfg.score_clip,
            forecast: forecast.as_slice().expect("standard layout"),
            m,
            n,
            tiles: &input.domain.tiles,
            reducer: input.reducer,
            seed,
            offset,
            device,
            kind: self.cfg.precision.kind(),
        }
        .run(&mut x)?;
        *ens = Array2::from_shape_vec((m, n), x).expect("sample shape");
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::obs::PointObs;
    use crate::rng::{fill_standard_normal, Purpose};

    #[test]
    fn mixture_score_matches_direct_formula() {
        let x = Array2::from_shape_fn((3, 4), |(i, j)| (i * 4 + j) as f64 * 0.3 - 1.0);
        let c = Array2::from_shape_fn((5, 4), |(i, j)| ((i + 2 * j) as f64 * 0.7).sin());
        let (a, s2) = (0.8, 0.5);
        let mut got = Array2::zeros((3, 4));
        mixture_score(x.view(), c.view(), a, s2, &mut got);
        for i in 0..3 {
            let d: Vec<f64> = (0..5)
                .map(|j| {
                    (0..4)
                        .map(|k| (x[[i, k]] - a * c[[j, k]]).powi(2))
                        .sum::<f64>()
                })
                .collect();
            let w: Vec<f64> = d.iter().map(|v| (-v / (2.0 * s2)).exp()).collect();
            let z: f64 = w.iter().sum();
            for k in 0..4 {
                let want = (0..5)
                    .map(|j| w[j] / z * (a * c[[j, k]] - x[[i, k]]))
                    .sum::<f64>()
                    / s2;
                assert!((got[[i, k]] - want).abs() < 1e-10);
            }
        }
    }

    /// Linear-Gaussian sanity: prior N(0, I) in 2-D, x₀ observed with R = 0.5, y = 1.2. The
    /// Kalman analysis is mean (0.8, 0), variance (1/3, 1); EnSF must land near it.
    #[test]
    fn linear_gaussian_analysis_is_near_kalman() {
        let (m, n) = (400, 2);
        let mut ens = Array2::zeros((m, n));
        let mut z = vec![0.0; n];
        for i in 0..m {
            fill_standard_normal(2, Purpose::EnsembleInit, 0, i as u64, 0, &mut z);
            ens[[i, 0]] = z[0];
            ens[[i, 1]] = z[1];
        }
        let h = PointObs::new(n, vec![0], false);
        let input = AnalysisInput::whole(&[1.2], &h, &[0.5], 1, 9);
        let mut f = Ensf::new(EnsfConfig {
            members: m,
            steps: 200,
            eps_alpha: 0.05,
            eps_beta: 0.0,
            t_min: 1e-3,
            prior: EnsfPrior::Mixture,
            terminal: EnsfTerminal::Marginal,
            score_clip: None,
            forecast_clip: None,
            device: DeviceChoice::Cpu,
            precision: Precision::F64,
        });
        f.analyse(&mut ens, &input).unwrap();
        let mean0 = ens.column(0).sum() / m as f64;
        let var0 = ens
            .column(0)
            .iter()
            .map(|v| (v - mean0).powi(2))
            .sum::<f64>()
            / (m as f64 - 1.0);
        let mean1 = ens.column(1).sum() / m as f64;
        let var1 = ens
            .column(1)
            .iter()
            .map(|v| (v - mean1).powi(2))
            .sum::<f64>()
            / (m as f64 - 1.0);
        eprintln!("EnSF: mean ({mean0:.3}, {mean1:.3}), var ({var0:.3}, {var1:.3}); Kalman (0.8, 0), (0.333, 1)");
        assert!(
            (mean0 - 0.8).abs() < 0.15 && mean1.abs() < 0.15,
            "{mean0} {mean1}"
        );
        assert!(
            (var0 - 1.0 / 3.0).abs() < 0.15 && (var1 - 1.0).abs() < 0.3,
            "{var0} {var1}"
        );
    }

    /// The tensor path (on libtorch's CPU device here) against the CPU path: the same t = 1
    /// sample and step noise, mixture and paired priors, arctan observations of every 2nd
    /// variable, score clipping and a state cut in 4 tiles: the same analysis to 1e-10.
    #[test]
    fn device_path_equals_the_cpu_path() {
        let (m, n) = (12, 24);
        let h = PointObs::new(n, (0..n).step_by(2).collect(), true);
        let p = n / 2;
        let y: Vec<f64> = (0..p).map(|j| (j as f64 * 0.7).sin()).collect();
        let r = vec![0.3; p];
        let mut ens0 = Array2::zeros((m, n));
        let mut z = vec![0.0; n];
        for i in 0..m {
            fill_standard_normal(4, Purpose::EnsembleInit, 0, i as u64, 0, &mut z);
            for j in 0..n {
                ens0[[i, j]] = 2.0 * z[j] + (j as f64 * 0.3).cos();
            }
        }
        let mut input = AnalysisInput::whole(&y, &h, &r, 3, 11);
        input.domain.tiles = (0..4).map(|t| t * 6..(t + 1) * 6).collect();
        for (prior, terminal, clip) in [
            (EnsfPrior::Mixture, EnsfTerminal::Marginal, None),
            (EnsfPrior::Paired, EnsfTerminal::Standardized, Some(5.0)),
        ] {
            let cfg = EnsfConfig {
                members: m,
                steps: 40,
                eps_alpha: 0.05,
                eps_beta: 0.025,
                t_min: 1e-3,
                prior,
                terminal,
                score_clip: clip,
                forecast_clip: None,
                device: DeviceChoice::Cpu,
                precision: Precision::F64,
            };
            let mut want = ens0.clone();
            Ensf::new(cfg.clone()).analyse(&mut want, &input).unwrap();
            let mut got = ens0.clone();
            Ensf::new(cfg.clone())
                .analyse_on_device(&mut got, &input, tch::Device::Cpu)
                .unwrap();
            let scale = want.iter().fold(0.0f64, |a, v| a.max(v.abs()));
            let err = (&got - &want).iter().fold(0.0f64, |a, v| a.max(v.abs()));
            assert!(
                err <= 1e-10 * scale,
                "{prior:?}: max difference {err:e} of {scale}"
            );
            // f32 (opt-in): the same analysis to single-precision round-off.
            let mut g32 = ens0.clone();
            Ensf::new(EnsfConfig {
                precision: Precision::F32,
                ..cfg
            })
            .analyse_on_device(&mut g32, &input, tch::Device::Cpu)
            .unwrap();
            let e32 = (&g32 - &want).iter().fold(0.0f64, |a, v| a.max(v.abs()));
            assert!(e32 <= 1e-3 * scale, "{prior:?} f32: max difference {e32:e}");
            assert!(e32 > err, "f32 must differ more than f64");
        }
        // Without a GPU, asking for one is one clear error; `auto` runs on the CPU path.
        if tch::Cuda::device_count() == 0 {
            let mut cfg = EnsfConfig {
                members: m,
                steps: 5,
                eps_alpha: 0.05,
                eps_beta: 0.0,
                t_min: 1e-3,
                prior: EnsfPrior::Mixture,
                terminal: EnsfTerminal::Marginal,
                score_clip: None,
                forecast_clip: None,
                device: DeviceChoice::Cuda,
                precision: Precision::F64,
            };
            let mut e = ens0.clone();
            let msg = Ensf::new(cfg.clone())
                .analyse(&mut e, &input)
                .unwrap_err()
                .to_string();
            assert!(
                msg.contains("filter.device") && msg.contains("no CUDA device"),
                "{msg}"
            );
            assert_eq!(e, ens0, "a failed analysis leaves the ensemble alone");
            cfg.device = DeviceChoice::Auto;
            let mut a = ens0.clone();
            Ensf::new(cfg.clone()).analyse(&mut a, &input).unwrap();
            cfg.device = DeviceChoice::Cpu;
            let mut c = ens0.clone();
            Ensf::new(cfg).analyse(&mut c, &input).unwrap();
            assert_eq!(a, c);
        }
    }
}
