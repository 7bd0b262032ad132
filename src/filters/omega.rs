//! Ω: a conditional-Gaussian mixture baseline refined by a learned residual score.
//!
//! For a conditionally Gaussian model (observed u, hidden v linear given the u path; see
//! `models::ConditionalGaussian`) every forecast member j carries the Gaussian N(μ_j, R_j) of its
//! hidden variables given its own u path: the exact CG filter (`cg::CgStep`) run along the
//! member's forecast, from the moments its analysis left it with. Then, per cycle:
//!
//! (a) **Baseline prior**: the mixture (1/M) Σ_j N(u; u_j, B) N(v; μ_j, R_j), with B a
//!     Silverman kernel of the members' u (times `bandwidth_scale`).
//! (c) **Baseline posterior** for y = u[obs] + N(0, R_o): again a mixture, in closed form —
//!     weights π_j ∝ N(y; u_j[obs], B + R_o) (the responsibilities of y, from the
//!     Gaussian-mixture kernel `score::mixture`), Kalman-updated u, v ~ N(μ_j, R_j). Members are
//!     drawn from it (systematic resampling of components, then exact Gaussian draws with the
//!     full R_j); with `baseline_only = true` this is the analysis (a Rao–Blackwellised
//!     particle filter on the CG structure).
//! (b) **Residual score**: r_θ ≈ ∇log p_t − s_b,t, the part of the forecast distribution's
//!     score the baseline misses, learned by denoising score matching from the ensemble
//!     trajectories only (`score::residual`; the member states of the last `history` model
//!     steps), fine-tuned every cycle from the previous cycle's network.
//! (d) **Annealed Langevin** from the baseline draws (noised to `t_start`) down the noise levels
//!     of the VP process with the score s_post,t + r_θ, where s_post,t is the noised baseline
//!     posterior mixture with diagonal covariances (the diagonal kernel of `score::mixture`).
//!     At t → 0 this is exact: log p_post = log p_b + (log p − log p_b) + log p(y|u) + c.
//!
//! Works in coordinates standardised by the forecast ensemble; needs the whole state (one
//! domain). Members keep the moments of the component they were drawn from.
use super::particle::systematic_resample;
use super::{AnalysisInput, Filter, Needs};
use crate::error::{GendaError, Result};
use crate::filters::cg::CgStep;
use crate::models::Model;
use crate::parallel::SerialReducer;
use crate::rng::{fill_standard_normal, stream, Purpose};
use crate::score::mixture::diag_mixture_score_tiled;
use crate::score::residual::ResidualScore;
use crate::score::sampler::{sample, SamplerConfig, SamplerKind};
use crate::score::ForwardProcess;
use crate::state::SavedState;
use nalgebra::{DMatrix, DVector};
use ndarray::{s, Array2, ArrayView2};
use rand::Rng;
use rayon::prelude::*;
use serde::{Deserialize, Serialize};
use std::cell::RefCell;

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct OmegaConfig {
    pub members: usize,
    /// Width of each component's kernel in u, as a multiple of Silverman's rule.
    #[serde(default = "one")]
    pub bandwidth_scale: f64,
    /// Stop after the closed-form mixture posterior (no residual, no Langevin).
    #[serde(default)]
    pub baseline_only: bool,
    /// Adam steps of residual-score training per cycle (warm-started).
    #[serde(default = "d_res_steps")]
    pub residual_steps: usize,
    #[serde(default = "d_res_hidden")]
    pub residual_hidden: i64,
    #[serde(default = "d_res_layers")]
    pub residual_layers: usize,
    #[serde(default = "d_res_lr")]
    pub residual_lr: f64,
    /// Trailing model steps of each member's forecast used as residual training data.
    #[serde(default = "d_history")]
    pub history: usize,
    /// Langevin: noise levels from `t_start` down to `t_min`, steps per level, step size
    /// ε σ_k²/σ_min² at level k.
    #[serde(default = "d_levels")]
    pub levels: usize,
    #[serde(default = "d_spl")]
    pub steps_per_level: usize,
    #[serde(default = "d_eps")]
    pub eps: f64,
    #[serde(default = "d_tstart")]
    pub t_start: f64,
    #[serde(default = "d_tmin")]
    pub t_min: f64,
    /// Where the residual network trains and runs: "auto" (this rank's GPU when libtorch sees
    /// one, else the CPU), "cpu" or "cuda".
    #[serde(default)]
    pub device: crate::score::DeviceChoice,
}

fn one() -> f64 {
    1.0
}
fn d_res_steps() -> usize {
    30
}
fn d_res_hidden() -> i64 {
    64
}
fn d_res_layers() -> usize {
    2
}
fn d_res_lr() -> f64 {
    1e-3
}
fn d_history() -> usize {
    3
}
fn d_levels() -> usize {
    10
}
fn d_spl() -> usize {
    3
}
fn d_eps() -> f64 {
    2e-4
}
fn d_tstart() -> f64 {
    0.05
}
fn d_tmin() -> f64 {
    1e-3
}

impl OmegaConfig {
    pub fn validate(&self) -> Result<()> {
        let bad = |k: &str, m: String| Err(GendaError::invalid(format!("filter.{k}"), m));
        if !(self.bandwidth_scale.is_finite() && self.bandwidth_scale > 0.0) {
            return bad(
                "bandwidth_scale",
                format!("must be positive, got {}", self.bandwidth_scale),
            );
        }
        if !(self.t_min > 0.0 && self.t_min < self.t_start && self.t_start <= 1.0) {
            return bad(
                "t_start",
                format!(
                    "need 0 < t_min < t_start <= 1, got t_min {} t_start {}",
                    self.t_min, self.t_start
                ),
            );
        }
        if !(self.eps > 0.0 && self.eps.is_finite() && self.residual_lr > 0.0) {
            return bad("eps", "eps and residual_lr must be positive".into());
        }
        if self.levels == 0
            || self.history == 0
            || self.residual_hidden < 1
            || self.residual_layers < 1
        {
            return bad(
                "levels",
                "levels, history, residual_hidden, residual_layers must be >= 1".into(),
            );
        }
        Ok(())
    }
}

pub struct Omega {
    cfg: OmegaConfig,
    /// Per member: moments of v given its u path so far.
    moments: Vec<(DVector<f64>, DMatrix<f64>)>,
    residual: Option<ResidualScore>,
    /// Effective sample size of the last posterior weights (diagnostic).
    pub last_ess: f64,
}

impl Omega {
    pub fn new(cfg: OmegaConfig) -> Self {
        Omega {
            cfg,
            moments: Vec::new(),
            residual: None,
            last_ess: f64::NAN,
        }
    }
}

fn process() -> ForwardProcess {
    ForwardProcess::default()
}

/// Observations must be a plain selection of observed (u) components.
fn observed_indices(input: &AnalysisInput, nu: usize) -> Result<Vec<usize>> {
    match super::selected_components(input.obs_operator) {
        Some(locs) if locs.iter().all(|&l| l < nu) => Ok(locs),
        _ => Err(GendaError::invalid(
            "observations",
            format!(
                "omega observes the conditionally Gaussian model's observed variables directly: use operator = \"sparse\" or \"identity\" on the first {nu} components (u)"
            ),
        )),
    }
}

impl Filter for Omega {
    fn name(&self) -> &'static str {
        "omega"
    }

    fn needs(&self, _n_global: usize) -> Needs {
        Needs {
            forecast_path: true,
            whole_state: Some("it follows every member's conditional-Gaussian path"),
            conditional_gaussian: true,
            component_selection: Some("omega observes the conditionally Gaussian model's observed variables directly: use operator = \"sparse\" or \"identity\" on its observed components (u)"),
            ..Needs::default()
        }
    }

    /// Each member's moments of v given its u path, and the residual network with its
    /// optimiser moments and step count.
    fn save_state(&self) -> Result<SavedState> {
        let mut s = SavedState::new();
        if let Some((mean, _)) = self.moments.first() {
            s.put_scalar("members", self.moments.len() as f64);
            s.put_scalar("hidden_dim", mean.len() as f64);
            s.put(
                "moments.mean",
                self.moments
                    .iter()
                    .flat_map(|(m, _)| m.iter().copied())
                    .collect(),
            );
            s.put(
                "moments.cov",
                self.moments
                    .iter()
                    .flat_map(|(_, c)| c.iter().copied())
                    .collect(),
            );
        }
        if let Some(r) = &self.residual {
            s.put_scalar("residual.dim", r.dim as f64);
            s.nest("residual", r.save()?);
        }
        Ok(s)
    }

    fn restore_state(&mut self, mut s: SavedState) -> Result<()> {
        self.moments.clear();
        if s.has("members") {
            let (m, nv) = (s.take_usize("members")?, s.take_usize("hidden_dim")?);
            let means = s.take_len("moments.mean", m * nv)?;
            let covs = s.take_len("moments.cov", m * nv * nv)?;
            self.moments = means
                .chunks(nv.max(1))
                .zip(covs.chunks((nv * nv).max(1)))
                .take(m)
                .map(|(a, c)| {
                    (
                        DVector::from_column_slice(a),
                        DMatrix::from_column_slice(nv, nv, c),
                    )
                })
                .collect();
        }
        self.residual = None;
        if s.has("residual.dim") {
            let dim = s.take_usize("residual.dim")?;
            // The initial weights are overwritten by the saved ones.
            let mut r = ResidualScore::on_device(
                self.cfg.residual_hidden,
                self.cfg.residual_layers,
                dim,
                process(),
                self.cfg.residual_lr,
                0,
                crate::score::select_local_device(self.cfg.device)?,
            )?;
            r.restore(s.take_nested("residual"))?;
            self.residual = Some(r);
        }
        s.finish("omega")
    }

    fn analyse(&mut self, ens: &mut Array2<f64>, input: &AnalysisInput) -> Result<()> {
        input.check(ens, "omega")?;
        let fp = input.forecast.as_ref().ok_or_else(|| {
            GendaError::invalid(
                "filter.method",
                "omega needs the members' forecast paths (run it through genda run)",
            )
        })?;
        let model: &dyn Model = fp.model;
        let probe = CgStep::new(model)?;
        let (nu, nv) = (probe.nu, probe.nv);
        let (m, n) = ens.dim();
        if !input.domain.whole {
            return Err(GendaError::invalid(
                "parallel.domains",
                "omega needs the whole state (domains = 1)",
            ));
        }
        let obs_idx = observed_indices(input, nu)?;
        let states = fp.states;
        if states.is_empty() || states.iter().any(|s| s.dim() != (m, n)) {
            return Err(GendaError::Dimension {
                what: "omega: forecast path states vs ensemble".into(),
                expected: m,
                got: states.first().map_or(0, |s| s.nrows()),
            });
        }
        // Initial moments: every member starts from the ensemble's Gaussian of v.
        if self.moments.len() != m {
            let v0 = states[0].slice(s![.., nu..]).to_owned();
            let mean = DVector::from_iterator(nv, v0.mean_axis(ndarray::Axis(0)).expect("members"));
            let mut cov = DMatrix::zeros(nv, nv);
            for r in v0.rows() {
                let d = DVector::from_iterator(nv, r.iter().cloned()) - &mean;
                cov += &d * d.transpose();
            }
            cov /= (m - 1).max(1) as f64;
            let jitter = 1e-6 * (cov.trace() / nv as f64).max(1e-12);
            for i in 0..nv {
                cov[(i, i)] += jitter;
            }
            self.moments = vec![(mean, cov); m];
        }
        // Follow each member's u path with the CG filter.
        let steps = states.len() - 1;
        let moments: Result<Vec<(DVector<f64>, DMatrix<f64>)>> = self
            .moments
            .par_iter()
            .enumerate()
            .map(|(j, (mu, r))| {
                let mut st = CgStep::new(model)?;
                let (mut mu, mut r) = (mu.clone(), r.clone());
                for s in 0..steps {
                    let u0 = states[s].slice(s![j, ..nu]).to_vec();
                    let u1 = states[s + 1].slice(s![j, ..nu]).to_vec();
                    let res = st.step(&u0, &u1, &mu, &r, s)?;
                    mu = res.next_mean;
                    r = res.next_cov;
                }
                Ok((mu, r))
            })
            .collect();
        let moments = moments?;

        // (a) baseline prior kernel in u.
        let du = nu as f64;
        let silverman =
            (4.0 / (du + 2.0)).powf(1.0 / (du + 4.0)) * (m as f64).powf(-1.0 / (du + 4.0));
        let h2 = (self.cfg.bandwidth_scale * silverman).powi(2);
        let u_now = ens.slice(s![.., ..nu]).to_owned();
        let u_mean = u_now.mean_axis(ndarray::Axis(0)).expect("members");
        let b: Vec<f64> = (0..nu)
            .map(|k| {
                let v = u_now
                    .column(k)
                    .iter()
                    .map(|x| (x - u_mean[k]).powi(2))
                    .sum::<f64>()
                    / (m - 1).max(1) as f64;
                h2 * v.max(1e-12)
            })
            .collect();
        // (c) posterior weights: responsibilities of y under N(u_j[obs], B + R_o).
        let p = obs_idx.len();
        let y = ndarray::Array2::from_shape_vec((1, p), input.obs.to_vec()).expect("one row");
        let cen = Array2::from_shape_fn((m, p), |(j, i)| u_now[[j, obs_idx[i]]]);
        let var = Array2::from_shape_fn((m, p), |(_, i)| b[obs_idx[i]] + input.obs_error_var[i]);
        let mut sc = Array2::zeros((1, p));
        let w = diag_mixture_score_tiled(
            y.view(),
            cen.view(),
            var.view(),
            1.0,
            0.0,
            &vec![0.0; m],
            &[0..p],
            &SerialReducer,
            &mut sc,
        )?;
        let weights: Vec<f64> = w.row(0).to_vec();
        self.last_ess = 1.0 / weights.iter().map(|x| x * x).sum::<f64>();
        // Posterior u of each component (diagonal Kalman update of the kernel).
        let mut upost = u_now.clone();
        let mut uvar = Array2::from_shape_fn((m, nu), |(_, k)| b[k]);
        for (i, &k) in obs_idx.iter().enumerate() {
            let r = input.obs_error_var[i];
            let g = b[k] / (b[k] + r);
            for j in 0..m {
                upost[[j, k]] += g * (input.obs[i] - u_now[[j, k]]);
                uvar[[j, k]] = b[k] * r / (b[k] + r);
            }
        }
        // Draw the baseline analysis: component c(i), then exact Gaussian draws.
        let uu: f64 = stream(input.seed, Purpose::Resampling, input.cycle as u64, 0, 0).gen();
        let pick = systematic_resample(&weights, uu);
        let chols: Vec<Option<DMatrix<f64>>> = {
            let mut used = vec![false; m];
            pick.iter().for_each(|&c| used[c] = true);
            moments
                .iter()
                .zip(&used)
                .map(|((_, r), &u)| u.then(|| r.clone().cholesky().map(|c| c.l())).flatten())
                .collect()
        };
        let mut z = vec![0.0; n];
        let mut next = Vec::with_capacity(m);
        for (i, &c) in pick.iter().enumerate() {
            fill_standard_normal(
                input.seed,
                Purpose::Sampling,
                input.cycle as u64,
                i as u64,
                0,
                &mut z,
            );
            for k in 0..nu {
                ens[[i, k]] = upost[[c, k]] + uvar[[c, k]].sqrt() * z[k];
            }
            let l = chols[c].as_ref().ok_or_else(|| {
                GendaError::LinAlg(format!(
                    "omega: hidden covariance of member {c} not positive definite"
                ))
            })?;
            let dv = l * DVector::from_column_slice(&z[nu..]);
            for k in 0..nv {
                ens[[i, nu + k]] = moments[c].0[k] + dv[k];
            }
            next.push(moments[c].clone());
        }
        if !self.cfg.baseline_only {
            self.refine(ens, input, &moments, &b, &upost, &uvar, &weights, nu)?;
        }
        self.moments = next;
        Ok(())
    }
}

impl Omega {
    /// (b) + (d): residual score from the ensemble trajectories, then annealed Langevin.
    #[allow(clippy::too_many_arguments)]
    fn refine(
        &mut self,
        ens: &mut Array2<f64>,
        input: &AnalysisInput,
        moments: &[(DVector<f64>, DMatrix<f64>)],
        b: &[f64],
        upost: &Array2<f64>,
        uvar: &Array2<f64>,
        weights: &[f64],
        nu: usize,
    ) -> Result<()> {
        let states = input.forecast.as_ref().expect("checked").states;
        let (m, n) = ens.dim();
        let fc = states.last().expect("checked");
        // Standardise by the forecast ensemble.
        let mean = fc.mean_axis(ndarray::Axis(0)).expect("members");
        let sd: Vec<f64> = (0..n)
            .map(|k| {
                let v = fc
                    .column(k)
                    .iter()
                    .map(|x| (x - mean[k]).powi(2))
                    .sum::<f64>()
                    / (m - 1).max(1) as f64;
                v.sqrt().max(1e-6)
            })
            .collect();
        let std_mean = |c: &Array2<f64>| {
            Array2::from_shape_fn(c.dim(), |(j, k)| (c[[j, k]] - mean[k]) / sd[k])
        };
        let std_var =
            |c: &Array2<f64>| Array2::from_shape_fn(c.dim(), |(j, k)| c[[j, k]] / (sd[k] * sd[k]));
        // Prior and posterior mixtures (diagonal), standardised.
        let prior_c = Array2::from_shape_fn((m, n), |(j, k)| {
            if k < nu {
                fc[[j, k]]
            } else {
                moments[j].0[k - nu]
            }
        });
        let comp_var = |j: usize, k: usize, uv: f64| {
            if k < nu {
                uv
            } else {
                moments[j].1[(k - nu, k - nu)]
            }
        };
        let prior_v = Array2::from_shape_fn((m, n), |(j, k)| {
            comp_var(j, k, if k < nu { b[k] } else { 0.0 })
        });
        let post_c = Array2::from_shape_fn((m, n), |(j, k)| {
            if k < nu {
                upost[[j, k]]
            } else {
                moments[j].0[k - nu]
            }
        });
        let post_v = Array2::from_shape_fn((m, n), |(j, k)| {
            comp_var(j, k, if k < nu { uvar[[j, k]] } else { 0.0 })
        });
        let (pc, pv, qc, qv) = (
            std_mean(&prior_c),
            std_var(&prior_v),
            std_mean(&post_c),
            std_var(&post_v),
        );
        let logw: Vec<f64> = weights.iter().map(|w| w.max(1e-300).ln()).collect();
        let proc_ = process();
        let levels: Vec<f64> = {
            let l = self.cfg.levels;
            (0..=l)
                .map(|k| {
                    self.cfg.t_start - (self.cfg.t_start - self.cfg.t_min) * k as f64 / l as f64
                })
                .collect()
        };
        let kernel = |x: ArrayView2<f64>,
                      c: &Array2<f64>,
                      v: &Array2<f64>,
                      lw: &[f64],
                      t: f64,
                      out: &mut [f64]|
         -> Result<()> {
            let mut o = Array2::zeros(x.dim());
            let (a, s) = (proc_.alpha(t), proc_.sigma(t));
            diag_mixture_score_tiled(
                x,
                c.view(),
                v.view(),
                a,
                s * s,
                lw,
                &[0..n],
                &SerialReducer,
                &mut o,
            )?;
            out.copy_from_slice(o.as_slice().expect("standard"));
            Ok(())
        };
        // (b) residual from the ensemble trajectories (last `history` steps).
        let hist = self.cfg.history.min(states.len() - 1).max(1);
        let mut data = Vec::with_capacity(hist * m * n);
        for st in &states[states.len() - hist..] {
            for r in st.rows() {
                data.extend(r.iter().enumerate().map(|(k, x)| (x - mean[k]) / sd[k]));
            }
        }
        if self.residual.as_ref().is_none_or(|r| r.dim != n) {
            self.residual = Some(ResidualScore::on_device(
                self.cfg.residual_hidden,
                self.cfg.residual_layers,
                n,
                proc_,
                self.cfg.residual_lr,
                input.seed,
                crate::score::select_local_device(self.cfg.device)?,
            )?);
        }
        let residual = self.residual.as_mut().expect("just built");
        let uniform = vec![-(m as f64).ln(); m];
        let per_level = (128 / levels.len()).max(4);
        residual.fit(
            &data,
            &levels,
            per_level,
            self.cfg.residual_steps,
            input.seed ^ 0x0BE6A,
            &mut |x: &[f64], t: f64, out: &mut [f64]| {
                let xv = ArrayView2::from_shape((x.len() / n, n), x).expect("rows");
                kernel(xv, &pc, &pv, &uniform, t, out)
            },
        )?;
        let residual = self.residual.as_ref().expect("just built");
        // (d) annealed Langevin from the baseline draws, noised to t_start.
        let seed = input.seed ^ (input.cycle as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15);
        let (a0, s0) = (proc_.alpha(self.cfg.t_start), proc_.sigma(self.cfg.t_start));
        let mut x = vec![0.0; m * n];
        let mut z = vec![0.0; n];
        for i in 0..m {
            fill_standard_normal(
                seed,
                Purpose::Jitter,
                input.cycle as u64,
                i as u64,
                0,
                &mut z,
            );
            for k in 0..n {
                x[i * n + k] = a0 * (ens[[i, k]] - mean[k]) / sd[k] + s0 * z[k];
            }
        }
        let failed: RefCell<Option<GendaError>> = RefCell::new(None);
        let score = |xs: &[f64], t: f64, out: &mut [f64]| {
            let xv = ArrayView2::from_shape((xs.len() / n, n), xs).expect("rows");
            if let Err(e) = kernel(xv, &qc, &qv, &logw, t, out) {
                failed.borrow_mut().get_or_insert(e);
            }
            let mut r = vec![0.0; xs.len()];
            residual.eval(xs, t, &mut r);
            out.iter_mut().zip(&r).for_each(|(o, v)| *o += v);
        };
        let scfg = SamplerConfig {
            kind: SamplerKind::AnnealedLangevin {
                steps_per_level: self.cfg.steps_per_level,
                eps: self.cfg.eps,
            },
            steps: self.cfg.levels,
            t_min: self.cfg.t_min,
            denoise: true,
        };
        sample(
            &proc_,
            &scfg,
            &score,
            &mut x,
            n,
            seed,
            Some(self.cfg.t_start),
        );
        if let Some(e) = failed.into_inner() {
            return Err(e);
        }
        for i in 0..m {
            for k in 0..n {
                ens[[i, k]] = mean[k] + sd[k] * x[i * n + k];
            }
        }
        Ok(())
    }
}
