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
//!
//! **Surrogate.** With `surrogate = "model"` (default) the CG structure is the model's own, so
//! on a CG model the baseline is the exact conditional and the residual has nothing to learn.
//! On a model that is not CG (e.g. `cg_lorenz96` with `y_advection > 0`) the members are
//! forecast by the model, but (a)–(c) use a CG surrogate of it (`surrogate = "fitted"`: the mean
//! stochastic model fitted to a free run of the model; `"truncated"`: the model's coefficients
//! with the non-CG terms dropped), and the residual learns the gap between the surrogate's
//! prior and the members' (the model's) forecast distribution.
use super::particle::systematic_resample;
use super::{AnalysisInput, Filter, Needs};
use crate::error::{GendaError, Result};
use crate::filters::cg::CgStep;
use crate::models::{Model, SurrogateKind};
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
    /// The conditionally Gaussian model of (a)–(c): "model" (the model's own structure; the
    /// model must be CG), "fitted" or "truncated" (a surrogate of a model that is not CG).
    #[serde(default)]
    pub surrogate: OmegaSurrogate,
    /// Model steps of the free run a fitted surrogate's climatology comes from.
    #[serde(default = "d_fit_steps")]
    pub surrogate_fit_steps: usize,
}

/// Which conditionally Gaussian model Ω's baseline uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum OmegaSurrogate {
    /// The model's own CG structure (an error when the model has none).
    #[default]
    Model,
    /// The mean stochastic model of the hidden variables, fitted to a free run of the model.
    Fitted,
    /// The model's coefficients with its non-CG terms dropped.
    Truncated,
}

fn d_fit_steps() -> usize {
    200_000
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
    /// The CG surrogate of a model that is not CG (made at the first analysis; deterministic,
    /// so a restart makes it again).
    surrogate: Option<Box<dyn Model>>,
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
            surrogate: None,
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
            conditional_gaussian: self.cfg.surrogate == OmegaSurrogate::Model,
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
        let how = match self.cfg.surrogate {
            OmegaSurrogate::Model => None,
            OmegaSurrogate::Fitted => Some(SurrogateKind::Fitted),
            OmegaSurrogate::Truncated => Some(SurrogateKind::Truncated),
        };
        if let (Some(how), None) = (how, &self.surrogate) {
            let sur = fp
                .model
                .cg_surrogate(how, input.seed, self.cfg.surrogate_fit_steps)?;
            crate::filters::cg::cg_structure(sur.as_ref())?;
            self.surrogate = Some(sur);
        }
        let model: &dyn Model = match &self.surrogate {
            Some(m) => m.as_ref(),
            None => fp.model,
        };
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
            self.moments = initial_moments(&states[0], nu, nv);
        }
        // Follow each member's u path with the CG filter.
        let moments = follow_paths(&self.moments, model, states, nu)?;
        let base = Baseline::new(ens, input, &obs_idx, moments, self.cfg.bandwidth_scale, nu)?;
        self.last_ess = 1.0 / base.weights.iter().map(|x| x * x).sum::<f64>();
        let next = base.draw(ens, input, nu, nv)?;
        if !self.cfg.baseline_only {
            self.refine(ens, input, &base, nu)?;
        }
        self.moments = next;
        Ok(())
    }
}

/// Moments of a member's hidden variables v given its u path.
type Moments = (DVector<f64>, DMatrix<f64>);

/// The ensemble's Gaussian of v (sample mean and covariance, slightly jittered) for every member.
fn initial_moments(states0: &Array2<f64>, nu: usize, nv: usize) -> Vec<Moments> {
    let m = states0.nrows();
    let v0 = states0.slice(s![.., nu..]).to_owned();
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
    vec![(mean, cov); m]
}

/// Run the exact CG filter along each member's forecast u path from its moments.
fn follow_paths(
    moments: &[Moments],
    model: &dyn Model,
    states: &[Array2<f64>],
    nu: usize,
) -> Result<Vec<Moments>> {
    let steps = states.len() - 1;
    moments
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
        .collect()
}

/// (a) The baseline prior kernel B in u: Silverman's rule (times `bandwidth_scale`) on each
/// component's ensemble variance.   (nu)
fn prior_kernel(u_now: &Array2<f64>, bandwidth_scale: f64) -> Vec<f64> {
    let (m, nu) = u_now.dim();
    let du = nu as f64;
    let silverman = (4.0 / (du + 2.0)).powf(1.0 / (du + 4.0)) * (m as f64).powf(-1.0 / (du + 4.0));
    let h2 = (bandwidth_scale * silverman).powi(2);
    let u_mean = u_now.mean_axis(ndarray::Axis(0)).expect("members");
    (0..nu)
        .map(|k| {
            let v = u_now
                .column(k)
                .iter()
                .map(|x| (x - u_mean[k]).powi(2))
                .sum::<f64>()
                / (m - 1).max(1) as f64;
            h2 * v.max(1e-12)
        })
        .collect()
}

/// (c) Posterior weights: responsibilities of y under N(u_j[obs], B + R_o).
fn posterior_weights(
    input: &AnalysisInput,
    obs_idx: &[usize],
    u_now: &Array2<f64>,
    b: &[f64],
) -> Result<Vec<f64>> {
    let m = u_now.nrows();
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
    Ok(w.row(0).to_vec())
}

/// Posterior u of each component (diagonal Kalman update of the kernel): means and variances.
fn component_update(
    input: &AnalysisInput,
    obs_idx: &[usize],
    u_now: &Array2<f64>,
    b: &[f64],
) -> (Array2<f64>, Array2<f64>) {
    let (m, nu) = u_now.dim();
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
    (upost, uvar)
}

/// The closed-form baseline of one cycle: the prior mixture's components and the posterior
/// mixture's weights and Kalman-updated u.
struct Baseline {
    /// Per member (component): moments of v given its forecast u path.
    moments: Vec<Moments>,
    /// The prior kernel B in u.   (nu)
    b: Vec<f64>,
    /// Posterior mean and variance of each component's u.   (m, nu)
    upost: Array2<f64>,
    uvar: Array2<f64>,
    /// Posterior component weights π_j.   (m)
    weights: Vec<f64>,
}

impl Baseline {
    /// (a) + (c): the baseline prior kernel of the forecast `ens` and its posterior for `input`.
    fn new(
        ens: &Array2<f64>,
        input: &AnalysisInput,
        obs_idx: &[usize],
        moments: Vec<Moments>,
        bandwidth_scale: f64,
        nu: usize,
    ) -> Result<Self> {
        let u_now = ens.slice(s![.., ..nu]).to_owned();
        let b = prior_kernel(&u_now, bandwidth_scale);
        let weights = posterior_weights(input, obs_idx, &u_now, &b)?;
        let (upost, uvar) = component_update(input, obs_idx, &u_now, &b);
        Ok(Baseline {
            moments,
            b,
            upost,
            uvar,
            weights,
        })
    }

    /// Draw the baseline analysis into `ens`: component c(i), then exact Gaussian draws.
    /// Returns each new member's moments (those of its component).
    fn draw(
        &self,
        ens: &mut Array2<f64>,
        input: &AnalysisInput,
        nu: usize,
        nv: usize,
    ) -> Result<Vec<Moments>> {
        let (m, n) = ens.dim();
        let moments = &self.moments;
        let uu: f64 = stream(input.seed, Purpose::Resampling, input.cycle as u64, 0, 0).gen();
        let pick = systematic_resample(&self.weights, uu);
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
                ens[[i, k]] = self.upost[[c, k]] + self.uvar[[c, k]].sqrt() * z[k];
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
        Ok(next)
    }

    /// The prior and posterior mixtures with diagonal covariances, in the coordinates `st`
    /// (`fc`: the forecast ensemble, the prior components' u).
    fn standardised_mixtures(
        &self,
        fc: &Array2<f64>,
        st: &Standardisation,
        nu: usize,
    ) -> (DiagMixture, DiagMixture) {
        let (m, n) = fc.dim();
        let moments = &self.moments;
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
            comp_var(j, k, if k < nu { self.b[k] } else { 0.0 })
        });
        let post_c = Array2::from_shape_fn((m, n), |(j, k)| {
            if k < nu {
                self.upost[[j, k]]
            } else {
                moments[j].0[k - nu]
            }
        });
        let post_v = Array2::from_shape_fn((m, n), |(j, k)| {
            comp_var(j, k, if k < nu { self.uvar[[j, k]] } else { 0.0 })
        });
        let (pc, pv, qc, qv) = (
            st.means(&prior_c),
            st.variances(&prior_v),
            st.means(&post_c),
            st.variances(&post_v),
        );
        let logw: Vec<f64> = self.weights.iter().map(|w| w.max(1e-300).ln()).collect();
        let uniform = vec![-(m as f64).ln(); m];
        (
            DiagMixture {
                c: pc,
                v: pv,
                logw: uniform,
            },
            DiagMixture { c: qc, v: qv, logw },
        )
    }
}

/// Coordinates standardised by the forecast ensemble: per-variable mean and floored std.
struct Standardisation {
    mean: ndarray::Array1<f64>,
    sd: Vec<f64>,
}

impl Standardisation {
    /// The forecast ensemble's per-variable mean and standard deviation (at least 1e-6).
    fn of(fc: &Array2<f64>) -> Self {
        let (m, n) = fc.dim();
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
        Standardisation { mean, sd }
    }

    /// Standardised component means (rows of `c`).
    fn means(&self, c: &Array2<f64>) -> Array2<f64> {
        Array2::from_shape_fn(c.dim(), |(j, k)| (c[[j, k]] - self.mean[k]) / self.sd[k])
    }

    /// Standardised component variances (rows of `c`).
    fn variances(&self, c: &Array2<f64>) -> Array2<f64> {
        Array2::from_shape_fn(c.dim(), |(j, k)| c[[j, k]] / (self.sd[k] * self.sd[k]))
    }

    /// The member states of `steps`, standardised, as rows of training data.
    fn rows(&self, steps: &[Array2<f64>]) -> Vec<f64> {
        let n = self.sd.len();
        let m = steps.first().map_or(0, |s| s.nrows());
        let mut data = Vec::with_capacity(steps.len() * m * n);
        for st in steps {
            for r in st.rows() {
                data.extend(
                    r.iter()
                        .enumerate()
                        .map(|(k, x)| (x - self.mean[k]) / self.sd[k]),
                );
            }
        }
        data
    }
}

/// A Gaussian mixture with diagonal covariances (standardised coordinates).
struct DiagMixture {
    /// Component means and variances.   (m, n)
    c: Array2<f64>,
    v: Array2<f64>,
    /// Log weights of the components.   (m)
    logw: Vec<f64>,
}

impl DiagMixture {
    /// Score at time `t` of the mixture noised by `proc_`, at the rows `xs` (n each), into `out`.
    fn score(&self, proc_: &ForwardProcess, xs: &[f64], t: f64, out: &mut [f64]) -> Result<()> {
        let n = self.c.ncols();
        let x = ArrayView2::from_shape((xs.len() / n, n), xs).expect("rows");
        let mut o = Array2::zeros(x.dim());
        let (a, s) = (proc_.alpha(t), proc_.sigma(t));
        diag_mixture_score_tiled(
            x,
            self.c.view(),
            self.v.view(),
            a,
            s * s,
            &self.logw,
            &[0..n],
            &SerialReducer,
            &mut o,
        )?;
        out.copy_from_slice(o.as_slice().expect("standard"));
        Ok(())
    }
}

impl Omega {
    /// (b) + (d): residual score from the ensemble trajectories, then annealed Langevin.
    fn refine(
        &mut self,
        ens: &mut Array2<f64>,
        input: &AnalysisInput,
        base: &Baseline,
        nu: usize,
    ) -> Result<()> {
        let states = input.forecast.as_ref().expect("checked").states;
        let (m, n) = ens.dim();
        let fc = states.last().expect("checked");
        // Standardise by the forecast ensemble.
        let st = Standardisation::of(fc);
        // Prior and posterior mixtures (diagonal), standardised.
        let (prior, post) = base.standardised_mixtures(fc, &st, nu);
        let proc_ = process();
        // (b) residual from the ensemble trajectories (last `history` steps).
        let hist = self.cfg.history.min(states.len() - 1).max(1);
        let data = st.rows(&states[states.len() - hist..]);
        self.fit_residual(input, n, &data, &prior)?;
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
                x[i * n + k] = a0 * (ens[[i, k]] - st.mean[k]) / st.sd[k] + s0 * z[k];
            }
        }
        self.langevin(&post, &mut x, n, seed)?;
        for i in 0..m {
            for k in 0..n {
                ens[[i, k]] = st.mean[k] + st.sd[k] * x[i * n + k];
            }
        }
        Ok(())
    }

    /// The noise levels of residual training: `levels` + 1 times from `t_start` to `t_min`.
    fn noise_levels(&self) -> Vec<f64> {
        let l = self.cfg.levels;
        (0..=l)
            .map(|k| self.cfg.t_start - (self.cfg.t_start - self.cfg.t_min) * k as f64 / l as f64)
            .collect()
    }

    /// (b) Fine-tune the residual score (built at the first cycle or when the state size
    /// changes) on the standardised trajectories `data`, against the noised `prior` mixture.
    fn fit_residual(
        &mut self,
        input: &AnalysisInput,
        n: usize,
        data: &[f64],
        prior: &DiagMixture,
    ) -> Result<()> {
        let proc_ = process();
        let levels = self.noise_levels();
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
        let per_level = (128 / levels.len()).max(4);
        residual.fit(
            data,
            &levels,
            per_level,
            self.cfg.residual_steps,
            input.seed ^ 0x0BE6A,
            &mut |x: &[f64], t: f64, out: &mut [f64]| prior.score(&proc_, x, t, out),
        )?;
        Ok(())
    }

    /// (d) Annealed Langevin on the rows `x` (n each, standardised, noised to `t_start`) down
    /// the noise levels, with the noised posterior mixture's score plus the residual.
    fn langevin(&self, post: &DiagMixture, x: &mut [f64], n: usize, seed: u64) -> Result<()> {
        let proc_ = process();
        let residual = self.residual.as_ref().expect("just built");
        let failed: RefCell<Option<GendaError>> = RefCell::new(None);
        let score = |xs: &[f64], t: f64, out: &mut [f64]| {
            if let Err(e) = post.score(&proc_, xs, t, out) {
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
        sample(&proc_, &scfg, &score, x, n, seed, Some(self.cfg.t_start));
        match failed.into_inner() {
            Some(e) => Err(e),
            None => Ok(()),
        }
    }
}
