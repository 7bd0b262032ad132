//! DAISI (Andrae et al. 2025): data assimilation with inverse sampling using stochastic
//! interpolants. A stationary prior (the climatology of the system) is learned once by a
//! network on the linear interpolant x_t = (1 − t) x₀ + t z (`genda train`, process
//! `interpolant`). Each cycle:
//!
//! 1. (optional) multiplicative inflation of the forecast anomalies;
//! 2. *inverse sampling*: each forecast member (standardised with the network's shift/scale) is
//!    carried from t_min to `t_start` by the probability-flow ODE dx/dt = v(x, t),
//!    v = (−ε̂ − x)/(1 − t), with implicit steps that are the exact inverses of the explicit
//!    Euler steps of the sampler (each solved by fixed-point iteration to `fixed_point_tol`), so
//!    that the unguided sampler maps the latents back onto the members; `t_start` < 1 is the
//!    paper's partial inversion (the forecast information kept in the latent);
//! 3. *guided sampling*: from the latents back to t_min with the reverse SDE
//!    dx = [v − ½ β s] dt + √β dW̄, β = ε g²(t) (ε = `epsilon`, 0: probability-flow ODE,
//!    1: the standard reverse SDE), s = ε̂/t, plus the observation guidance
//!    λ ∇ₓ log N(y; h(x̂₀), R + γ (scale·σ/α)² I) in the score, where x̂₀ = (x + σ² s)/α is
//!    Tweedie's estimate in physical units. The gradient through x̂₀ is the network's
//!    vector–Jacobian product (`guidance = "vjp"`) or the identity-Jacobian approximation
//!    (`"identity"`).
//!
//! The samples at t_min are the analysis ensemble (no final denoising step, so the round trip
//! inversion → unguided sampling reproduces the members). Noise for member i at sampling step k
//! of cycle c comes from the stream keyed by (seed, Sampling, c·2²⁴ + k, i).
use super::{AnalysisInput, Filter, Needs};
use crate::error::{GendaError, Result};
use crate::rng::{fill_standard_normal, Purpose};
use crate::score::{DeviceChoice, ForwardProcess, ScoreNetwork};
use ndarray::{Array2, Axis};
use serde::{Deserialize, Serialize};
use std::path::PathBuf;

/// How the observation gradient is taken through Tweedie's estimate x̂₀(x).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum DaisiGuidance {
    /// Exact: (∂x̂₀/∂x)ᵀ g by one backward pass through the network (DPS-style).
    Vjp,
    /// ∂x̂₀/∂x ≈ I/α (no network backward pass).
    Identity,
    /// MMPS, as the reference runs its sparse and nonlinear cases: the likelihood of the
    /// Tweedie estimate with its covariance, ∇ log N(y; h(x̂₀), R + A Σ Aᵀ), Σ = (t²/(1 − t))·
    /// scale²·∂x̂₀/∂x, A = ∂h at x̂₀ (a point operator), the inverse by one GMRES iteration from
    /// zero; Σ Aᵀ r by one backward pass (∂x̂₀/∂x is symmetric for a score network), then the
    /// gradient through x̂₀ by a second one. `gamma` is not used. The default.
    #[default]
    Mmps,
}

/// How the forecast members are carried to latents at `t_start`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum DaisiInversion {
    /// genda's: the probability-flow ODE by implicit (fixed-point) steps, the exact inverse of
    /// the sampler's explicit steps (with `epsilon` = 0).
    Ode,
    /// The paper's (Fig. 1: "applies the backward SDE to the forecast ensemble"; the authors'
    /// group's `DAISI.invert`, docs/reference/daisi.md §2): Euler–Maruyama toward the noise,
    /// dx = (v + ε_inv(t)·s) dt + √(2 ε_inv(t) dt) ξ with the score s = ε̂/t and
    /// ε_inv(t) = `invert_epsilon`·t in genda's t (0.03·(1 − t) in the reference's, where t = 1
    /// is the data), on the grid of `t_min`, `t_start`, `steps`. It keeps the interpolant's
    /// marginals, so the latents are draws at `t_start`, not the members' images. The default.
    #[default]
    Sde,
}

/// The diffusion of the guided sampler, β(t) in dx = −v dt + ½β s dt + √β dW (backward in t).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum DaisiDiffusion {
    /// genda's: β = `epsilon` × the standard reverse-SDE diffusion 2t/(1 − t).
    Genda,
    /// The reference's ε(t) = `epsilon`·(1 − t) in its time (t = 1 data; genda's `epsilon`·t),
    /// i.e. β = 2·`epsilon`·t, dx = −v dt + ε s dt + √(2ε) dW (the authors' group's code: 0.03).
    /// The default.
    #[default]
    Linear,
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct DaisiConfig {
    pub members: usize,
    /// Prior network weights written by `genda train` (interpolant process).
    pub weights: PathBuf,
    /// Time the forecast members are inverted to (partial inversion: < the network's t_max;
    /// default 0.7, the reference's t_min = 0.3 in its time, where t = 1 is the data).
    #[serde(default = "d_t_start")]
    pub t_start: f64,
    /// Smallest time: inversion starts and sampling ends here.
    #[serde(default = "d_t_min")]
    pub t_min: f64,
    /// Time steps between t_min and t_start (the same grid for inversion and sampling; default
    /// 100, the reference's).
    #[serde(default = "d_steps")]
    pub steps: usize,
    /// Diffusion of the guided sampler (0: ODE): ε of the reference's ε(t) (default 0.03), or
    /// with `diffusion = "genda"` relative to the standard reverse SDE.
    #[serde(default = "d_epsilon")]
    pub epsilon: f64,
    /// What `epsilon` scales: "linear" (the reference's ε(t), default) or "genda" (the
    /// standard reverse-SDE diffusion).
    #[serde(default)]
    pub diffusion: DaisiDiffusion,
    /// Inversion of the forecast members: "sde" (the paper's, default) or "ode" (genda's).
    #[serde(default)]
    pub inversion: DaisiInversion,
    /// `inversion = "sde"`: ε_inv(t) = invert_epsilon·t (the reference's 0.03).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub invert_epsilon: Option<f64>,
    #[serde(default)]
    pub guidance: DaisiGuidance,
    /// Scale λ of the likelihood score.
    #[serde(default = "d_one")]
    pub guidance_scale: f64,
    /// γ: weight of the Tweedie error variance (scale·σ/α)² added to R in the guidance.
    #[serde(default = "d_one")]
    pub gamma: f64,
    /// Multiplicative inflation of the forecast anomalies before inversion (1: none).
    #[serde(default = "d_one")]
    pub inflation: f64,
    /// Fixed-point iterations allowed per implicit inversion step.
    #[serde(default = "d_iters")]
    pub fixed_point_iters: usize,
    /// Convergence tolerance of the fixed point: max |Δx| ≤ tol·(1 + max |x|).
    #[serde(default = "d_tol")]
    pub fixed_point_tol: f64,
    #[serde(default = "d_device")]
    pub device: DeviceChoice,
}

fn d_t_start() -> f64 {
    0.7
}
fn d_t_min() -> f64 {
    1e-3
}
fn d_steps() -> usize {
    100
}
fn d_epsilon() -> f64 {
    0.03
}
fn d_one() -> f64 {
    1.0
}
fn d_iters() -> usize {
    50
}
fn d_tol() -> f64 {
    1e-6
}
fn d_device() -> DeviceChoice {
    DeviceChoice::Cpu
}

impl DaisiConfig {
    pub fn validate(&self) -> Result<()> {
        let bad = |k: &str, m: String| Err(GendaError::invalid(format!("filter.{k}"), m));
        if !(self.t_start > 0.0 && self.t_start < 1.0) {
            return bad(
                "t_start",
                format!("must be in (0, 1), got {}", self.t_start),
            );
        }
        if !(self.t_min > 0.0 && self.t_min < self.t_start) {
            return bad(
                "t_min",
                format!(
                    "must be in (0, t_start = {}), got {}",
                    self.t_start, self.t_min
                ),
            );
        }
        if self.steps == 0 || self.steps >= 1 << 24 {
            return bad("steps", format!("must be in 1..2^24, got {}", self.steps));
        }
        for (k, v) in [
            ("epsilon", self.epsilon),
            ("guidance_scale", self.guidance_scale),
            ("gamma", self.gamma),
        ] {
            if !(v.is_finite() && v >= 0.0) {
                return bad(k, format!("must be finite and >= 0, got {v}"));
            }
        }
        if let Some(e) = self.invert_epsilon {
            if self.inversion != DaisiInversion::Sde {
                return bad(
                    "invert_epsilon",
                    "is the noise of inversion = \"sde\" (the ODE inversion has none)".into(),
                );
            }
            if !(e.is_finite() && e >= 0.0) {
                return bad(
                    "invert_epsilon",
                    format!("must be finite and >= 0, got {e}"),
                );
            }
        }
        if !(self.inflation.is_finite() && self.inflation > 0.0) {
            return bad(
                "inflation",
                format!("must be positive, got {}", self.inflation),
            );
        }
        if self.fixed_point_iters == 0 {
            return bad("fixed_point_iters", "must be >= 1".into());
        }
        if !(self.fixed_point_tol.is_finite() && self.fixed_point_tol > 0.0) {
            return bad(
                "fixed_point_tol",
                format!("must be positive, got {}", self.fixed_point_tol),
            );
        }
        Ok(())
    }
}

/// A prior on the interpolant path in standardised coordinates x = (x_phys − shift)/scale:
/// the noise prediction ε̂(x, t) ≈ −E[z | x_t = x] at rows of x (M, d).
pub trait InterpolantPrior {
    fn shift(&self) -> f64;
    fn scale(&self) -> f64;
    fn eps(&self, x: &[f64], t: f64, out: &mut [f64]);
    /// ε̂ into `eps` and J_ε̂ᵀ c into `vjp` with c = `cotangent(ε̂)`.
    fn eps_vjp(
        &self,
        x: &[f64],
        t: f64,
        cotangent: &mut dyn FnMut(&[f64]) -> Vec<f64>,
        eps: &mut [f64],
        vjp: &mut [f64],
    );
}

impl InterpolantPrior for ScoreNetwork {
    fn shift(&self) -> f64 {
        self.shift
    }
    fn scale(&self) -> f64 {
        self.scale
    }
    fn eps(&self, x: &[f64], t: f64, out: &mut [f64]) {
        self.eps_into(x, t, out)
    }
    fn eps_vjp(
        &self,
        x: &[f64],
        t: f64,
        cotangent: &mut dyn FnMut(&[f64]) -> Vec<f64>,
        eps: &mut [f64],
        vjp: &mut [f64],
    ) {
        ScoreNetwork::eps_vjp(self, x, t, cotangent, eps, vjp)
    }
}

/// Exact interpolant prior of i.i.d. N(mean, std²) components (tests, sanity checks): in the
/// standardised coordinates x₀ ~ N(0, I), x_t ~ N(0, ((1 − t)² + t²) I), ε̂ = −t x/((1 − t)² + t²).
#[derive(Debug, Clone, Copy)]
pub struct GaussianPrior {
    pub mean: f64,
    pub std: f64,
}

impl InterpolantPrior for GaussianPrior {
    fn shift(&self) -> f64 {
        self.mean
    }
    fn scale(&self) -> f64 {
        self.std
    }
    fn eps(&self, x: &[f64], t: f64, out: &mut [f64]) {
        let c = -t / ((1.0 - t).powi(2) + t * t);
        for (o, v) in out.iter_mut().zip(x) {
            *o = c * v;
        }
    }
    fn eps_vjp(
        &self,
        x: &[f64],
        t: f64,
        cotangent: &mut dyn FnMut(&[f64]) -> Vec<f64>,
        eps: &mut [f64],
        vjp: &mut [f64],
    ) {
        self.eps(x, t, eps);
        let c = -t / ((1.0 - t).powi(2) + t * t);
        let ct = cotangent(eps);
        for (o, v) in vjp.iter_mut().zip(&ct) {
            *o = c * v;
        }
    }
}

/// Velocity of the interpolant probability flow, v = (−ε̂ − x)/(1 − t).
#[inline]
fn velocity(eps: f64, x: f64, t: f64) -> f64 {
    (-eps - x) / (1.0 - t)
}

/// Time grid t_k = t_min + k h, k = 0..=steps.
fn grid(cfg: &DaisiConfig) -> Vec<f64> {
    let h = (cfg.t_start - cfg.t_min) / cfg.steps as f64;
    (0..=cfg.steps)
        .map(|k| {
            if k == cfg.steps {
                cfg.t_start
            } else {
                cfg.t_min + k as f64 * h
            }
        })
        .collect()
}

/// Inverse sampling: x (standardised members at t_min, row-major) → latents at t_start, in place.
/// Step k → k+1 solves x_{k+1} = x_k + h v(x_{k+1}, t_{k+1}) by fixed-point iteration from
/// the explicit Euler guess: the exact inverse of the sampler's Euler step
/// x_k = x_{k+1} − h v(x_{k+1}, t_{k+1}).
pub fn invert(
    prior: &dyn InterpolantPrior,
    cfg: &DaisiConfig,
    x: &mut [f64],
    cycle: usize,
) -> Result<()> {
    let ts = grid(cfg);
    let len = x.len();
    let mut e = vec![0.0; len];
    let mut y = vec![0.0; len];
    for k in 0..cfg.steps {
        let (t0, t1) = (ts[k], ts[k + 1]);
        let h = t1 - t0;
        prior.eps(x, t0, &mut e);
        for i in 0..len {
            y[i] = x[i] + h * velocity(e[i], x[i], t0);
        }
        let mut converged = false;
        let mut res = f64::INFINITY;
        for _ in 0..cfg.fixed_point_iters {
            prior.eps(&y, t1, &mut e);
            let (mut r, mut big) = (0.0f64, 0.0f64);
            for i in 0..len {
                let new = x[i] + h * velocity(e[i], y[i], t1);
                r = r.max((new - y[i]).abs());
                big = big.max(new.abs());
                y[i] = new;
            }
            res = r;
            if !res.is_finite() || y.iter().any(|v| !v.is_finite()) {
                break;
            }
            if res <= cfg.fixed_point_tol * (1.0 + big) {
                converged = true;
                break;
            }
        }
        if y.iter().any(|v| !v.is_finite()) {
            return Err(GendaError::Diverged {
                cycle,
                what: format!(
                    "DAISI latent inversion did not converge: non-finite values at t = {t1:.4} (forecast members far outside the prior's range?)"
                ),
            });
        }
        if !converged {
            return Err(GendaError::Diverged {
                cycle,
                what: format!(
                    "DAISI latent inversion did not converge at t = {t1:.4} after {} fixed-point iterations (residual {res:.2e}, tolerance {:.1e}); use more filter.steps, a smaller t_start or a looser fixed_point_tol",
                    cfg.fixed_point_iters, cfg.fixed_point_tol
                ),
            });
        }
        x.copy_from_slice(&y);
    }
    Ok(())
}

/// The reference's ε_inv of `inversion = "sde"` (docs/reference/daisi.md §2).
pub const REFERENCE_INVERT_EPSILON: f64 = 0.03;

/// The paper's inversion (`inversion = "sde"`): x (standardised members, rows of `n`, at
/// t_min) → draws at t_start by Euler–Maruyama of the marginal-preserving SDE
/// dx = (v + ε_inv(t) ε̂/t) dt + √(2 ε_inv(t) dt) ξ, ε_inv(t) = `invert_epsilon`·t (so
/// ε_inv·s = `invert_epsilon`·ε̂, finite at t → 0). Noise keyed by (seed, cycle, step, member,
/// global index from `offset`).
pub fn invert_sde(
    prior: &dyn InterpolantPrior,
    cfg: &DaisiConfig,
    x: &mut [f64],
    n: usize,
    seed: u64,
    cycle: usize,
    offset: usize,
) -> Result<()> {
    let ts = grid(cfg);
    let eps_inv = cfg.invert_epsilon.unwrap_or(REFERENCE_INVERT_EPSILON);
    let len = x.len();
    let mut e = vec![0.0; len];
    let mut z = vec![0.0; n];
    for k in 0..cfg.steps {
        let (t, h) = (ts[k], ts[k + 1] - ts[k]);
        prior.eps(x, t, &mut e);
        let sq = (2.0 * eps_inv * t * h).sqrt();
        for (i, (xr, er)) in x.chunks_mut(n).zip(e.chunks(n)).enumerate() {
            if sq > 0.0 {
                let key = ((cycle as u64) << 24) + k as u64;
                fill_standard_normal(seed, Purpose::Inversion, key, i as u64, offset, &mut z);
            }
            for c in 0..n {
                let drift = velocity(er[c], xr[c], t) + eps_inv * er[c];
                xr[c] += h * drift + if sq > 0.0 { sq * z[c] } else { 0.0 };
            }
        }
        if x.iter().any(|v| !v.is_finite()) {
            return Err(GendaError::Diverged {
                cycle,
                what: format!(
                    "DAISI stochastic inversion produced non-finite values at t = {:.4}",
                    ts[k + 1]
                ),
            });
        }
    }
    Ok(())
}

/// Observation guidance at physical Tweedie estimates: for each row of `x0_phys` (M, n), the
/// gradient Jᵀ (y − h(x̂₀))/(R + var_extra) into the same row of `out`.
fn likelihood_gradient(input: &AnalysisInput, x0_phys: &[f64], var_extra: f64, out: &mut [f64]) {
    let hop = input.obs_operator;
    let (n, p) = (hop.state_dim(), hop.obs_dim());
    let mut hx = vec![0.0; p];
    for (xr, gr) in x0_phys.chunks(n).zip(out.chunks_mut(n)) {
        hop.apply(xr, &mut hx);
        for j in 0..p {
            hx[j] = (input.obs[j] - hx[j]) / (input.obs_error_var[j] + var_extra);
        }
        hop.adjoint(xr, &hx, gr);
    }
}

/// MMPS guidance at time t (standardised members `x`, rows of n): into `g` the physical
/// gradient Aᵀ u with u ≈ (R + A Σ Aᵀ)⁻¹ r by one GMRES iteration (u = (rᵀMr/|Mr|²)·r, the
/// minimiser of |r − M u| over the span of r), r = y − h(x̂₀), per member; into `e` ε̂ and
/// into `vjp` J_ε̂ᵀ g, so that ∇ₓ log p(y | x) = scale (g + t·vjp)/(1 − t) as for the VJP
/// guidance.
#[allow(clippy::too_many_arguments)]
fn mmps_gradient(
    prior: &dyn InterpolantPrior,
    input: &AnalysisInput,
    x: &[f64],
    t: f64,
    shift: f64,
    scale: f64,
    g: &mut [f64],
    e: &mut [f64],
    vjp: &mut [f64],
) {
    let hop = input.obs_operator;
    let (n, p) = (hop.state_dim(), hop.obs_dim());
    let len = x.len();
    let m = len / n.max(1);
    let loc = hop.locations();
    let mut x0 = vec![0.0; len];
    let mut r = vec![0.0; m * p];
    let mut slope = vec![0.0; m * n];
    // First pass: ε̂, x̂₀, r, the slopes of h at x̂₀ and J_ε̂ᵀ (Aᵀ r).
    let mut atr = vec![0.0; len];
    let mut first = |eps: &[f64]| -> Vec<f64> {
        let mut hx = vec![0.0; p];
        let ones = vec![1.0; p];
        for i in 0..len {
            x0[i] = shift + scale * (x[i] + t * eps[i]) / (1.0 - t);
        }
        for k in 0..m {
            let xr = &x0[k * n..(k + 1) * n];
            hop.apply(xr, &mut hx);
            for j in 0..p {
                r[k * p + j] = input.obs[j] - hx[j];
            }
            hop.adjoint(xr, &r[k * p..(k + 1) * p], &mut atr[k * n..(k + 1) * n]);
            hop.adjoint(xr, &ones, &mut slope[k * n..(k + 1) * n]);
        }
        atr.clone()
    };
    let mut jv = vec![0.0; len];
    prior.eps_vjp(x, t, &mut first, e, &mut jv);
    // M r = R r + A Σ Aᵀ r, Σ v = scale² t²/(1 − t) · (v + t J_ε̂ v)/(1 − t) with J_ε̂ v = J_ε̂ᵀ v;
    // A w = h(w) for a linear h, slope(x̂₀)·w at the observed points for a point transform.
    let c = scale * scale * t * t / ((1.0 - t) * (1.0 - t));
    let mut u = vec![0.0; m * p];
    let (mut sig, mut asig) = (vec![0.0; n], vec![0.0; p]);
    for k in 0..m {
        for (i, s) in sig.iter_mut().enumerate() {
            *s = c * (atr[k * n + i] + t * jv[k * n + i]);
        }
        if hop.is_linear() {
            hop.apply(&sig, &mut asig);
        } else {
            for j in 0..p {
                asig[j] = slope[k * n + loc[j]] * sig[loc[j]];
            }
        }
        let (mut rmr, mut mrmr) = (0.0, 0.0);
        for j in 0..p {
            let mr = input.obs_error_var[j] * r[k * p + j] + asig[j];
            rmr += r[k * p + j] * mr;
            mrmr += mr * mr;
        }
        let a = if mrmr > 0.0 { rmr / mrmr } else { 0.0 };
        for j in 0..p {
            u[k * p + j] = a * r[k * p + j];
        }
    }
    // Second pass: g = Aᵀ u at x̂₀, and J_ε̂ᵀ g.
    for k in 0..m {
        hop.adjoint(
            &x0[k * n..(k + 1) * n],
            &u[k * p..(k + 1) * p],
            &mut g[k * n..(k + 1) * n],
        );
    }
    let gg = g.to_vec();
    let mut second = |_: &[f64]| -> Vec<f64> { gg.clone() };
    prior.eps_vjp(x, t, &mut second, e, vjp);
}

/// Guided sampling from latents at t_start (standardised, row-major (M, n)) down to t_min, in
/// place. With `guided = false` (or λ = 0) and ε = 0 this is the exact inverse of `invert`.
pub fn guided_sample(
    prior: &dyn InterpolantPrior,
    cfg: &DaisiConfig,
    x: &mut [f64],
    input: &AnalysisInput,
    guided: bool,
) -> Result<()> {
    let n = input.obs_operator.state_dim();
    let len = x.len();
    let m = len / n.max(1);
    let (shift, scale) = (prior.shift(), prior.scale());
    let ts = grid(cfg);
    let lambda = if guided { cfg.guidance_scale } else { 0.0 };
    let mut e = vec![0.0; len];
    let mut vjp = vec![0.0; len];
    let mut g = vec![0.0; len];
    let mut x0 = vec![0.0; len];
    let mut z = vec![0.0; n];
    let offset = input.domain.global(0);
    for k in (1..=cfg.steps).rev() {
        let (t, tn) = (ts[k], ts[k - 1]);
        let h = t - tn;
        let var_extra = cfg.gamma * (scale * t / (1.0 - t)).powi(2);
        if lambda > 0.0 {
            // Tweedie's x̂₀ = (x + t ε̂)/(1 − t) in physical units, then Jᵀ(y − h)/(R + γ…).
            let mut cot = |eps: &[f64]| -> Vec<f64> {
                for i in 0..len {
                    x0[i] = shift + scale * (x[i] + t * eps[i]) / (1.0 - t);
                }
                likelihood_gradient(input, &x0, var_extra, &mut g);
                g.clone()
            };
            match cfg.guidance {
                DaisiGuidance::Mmps => {
                    mmps_gradient(prior, input, x, t, shift, scale, &mut g, &mut e, &mut vjp)
                }
                DaisiGuidance::Vjp => prior.eps_vjp(x, t, &mut cot, &mut e, &mut vjp),
                DaisiGuidance::Identity => {
                    prior.eps(x, t, &mut e);
                    let _ = cot(&e);
                    vjp.iter_mut().for_each(|v| *v = 0.0);
                }
            }
        } else {
            prior.eps(x, t, &mut e);
        }
        let g2 = 2.0 * t / (1.0 - t);
        let beta = match (guided, cfg.diffusion) {
            (false, _) => 0.0,
            (true, DaisiDiffusion::Genda) => cfg.epsilon * g2,
            (true, DaisiDiffusion::Linear) => 2.0 * cfg.epsilon * t,
        };
        let sq = (beta * h).sqrt();
        let cg = 0.5 * (g2 + beta) * h * lambda * scale / (1.0 - t);
        for i in 0..m {
            if sq > 0.0 {
                let key = ((input.cycle as u64) << 24) + k as u64;
                fill_standard_normal(input.seed, Purpose::Sampling, key, i as u64, offset, &mut z);
            }
            for c in 0..n {
                let q = i * n + c;
                let s = e[q] / t;
                let mut dx = -h * velocity(e[q], x[q], t) + 0.5 * beta * h * s;
                if lambda > 0.0 {
                    // ∇ₓ log-likelihood in standardised coordinates: scale (g + t J_ε̂ᵀ g)/(1 − t).
                    dx += cg * (g[q] + t * vjp[q]);
                }
                if sq > 0.0 {
                    dx += sq * z[c];
                }
                x[q] += dx;
            }
        }
        if x.iter().any(|v| !v.is_finite()) {
            return Err(GendaError::Diverged {
                cycle: input.cycle,
                what: format!("DAISI guided sampling produced non-finite values at t = {tn:.4}"),
            });
        }
    }
    Ok(())
}

/// One DAISI analysis with `prior` on the whole-state ensemble `ens` (members, n), in place.
pub fn daisi_analysis(
    prior: &dyn InterpolantPrior,
    cfg: &DaisiConfig,
    ens: &mut Array2<f64>,
    input: &AnalysisInput,
) -> Result<()> {
    let (m, n) = ens.dim();
    let (shift, scale) = (prior.shift(), prior.scale());
    if cfg.inflation != 1.0 {
        let mean = ens.mean_axis(Axis(0)).expect("members >= 1");
        for mut row in ens.axis_iter_mut(Axis(0)) {
            row.zip_mut_with(&mean, |v, mu| *v = mu + cfg.inflation * (*v - mu));
        }
    }
    let mut x: Vec<f64> = ens.iter().map(|v| (v - shift) / scale).collect();
    match cfg.inversion {
        DaisiInversion::Ode => invert(prior, cfg, &mut x, input.cycle)?,
        DaisiInversion::Sde => invert_sde(
            prior,
            cfg,
            &mut x,
            n,
            input.seed,
            input.cycle,
            input.domain.global(0),
        )?,
    }
    guided_sample(prior, cfg, &mut x, input, true)?;
    *ens = Array2::from_shape_vec((m, n), x.iter().map(|v| shift + scale * v).collect())
        .expect("ensemble shape");
    Ok(())
}

pub struct Daisi {
    cfg: DaisiConfig,
    prior: Option<ScoreNetwork>,
}

impl Daisi {
    pub fn new(cfg: DaisiConfig) -> Self {
        Daisi { cfg, prior: None }
    }

    fn load(&self, n: usize) -> Result<ScoreNetwork> {
        let path = &self.cfg.weights;
        let net = ScoreNetwork::load(path, None, self.cfg.device).map_err(|e| {
            GendaError::Score(format!(
                "daisi: cannot load the prior network `filter.weights = {}`: {e} (train one with `genda train` and process.kind = \"interpolant\")",
                path.display()
            ))
        })?;
        if !net.var_shift.is_empty() {
            return Err(GendaError::file(
                path,
                "daisi works in one global standardisation; this network was trained with data.per_variable = true",
            ));
        }
        match net.process {
            ForwardProcess::Interpolant { t_max } => {
                if self.cfg.t_start > t_max {
                    return Err(GendaError::invalid(
                        "filter.t_start",
                        format!(
                            "{} exceeds the t_max = {t_max} the prior {} was trained up to",
                            self.cfg.t_start,
                            path.display()
                        ),
                    ));
                }
            }
            p => {
                return Err(GendaError::Score(format!(
                    "daisi: prior network {} was trained with forward process {p:?}; DAISI needs process.kind = \"interpolant\"",
                    path.display()
                )))
            }
        }
        if net.dim != n {
            return Err(GendaError::Dimension {
                what: format!("daisi: prior network {} dimension vs state", path.display()),
                expected: n,
                got: net.dim,
            });
        }
        Ok(net)
    }
}

impl Filter for Daisi {
    fn name(&self) -> &'static str {
        "daisi"
    }

    fn needs(&self, _n_global: usize) -> Needs {
        Needs {
            whole_state: Some("its prior network sees all variables"),
            ..Needs::default()
        }
    }

    fn prepare(&mut self, n: usize, _files: &dyn super::DataFiles) -> Result<()> {
        if self.prior.is_none() {
            self.prior = Some(self.load(n)?);
        }
        Ok(())
    }

    fn analyse(&mut self, ens: &mut Array2<f64>, input: &AnalysisInput) -> Result<()> {
        if !input.domain.whole {
            return Err(GendaError::invalid(
                "parallel.domains",
                "daisi works on the whole state (its prior network sees all variables); run it with one domain",
            ));
        }
        input.check(ens, "daisi")?;
        if self.prior.is_none() {
            self.prior = Some(self.load(ens.ncols())?);
        }
        let prior = self.prior.as_ref().expect("loaded above");
        daisi_analysis(prior, &self.cfg, ens, input)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::obs::PointObs;

    fn cfg(steps: usize) -> DaisiConfig {
        DaisiConfig {
            members: 10,
            weights: PathBuf::from("none.h5"),
            t_start: 0.9,
            t_min: 1e-3,
            steps,
            epsilon: 1.0,
            guidance: DaisiGuidance::Vjp,
            guidance_scale: 1.0,
            gamma: 1.0,
            inflation: 1.0,
            fixed_point_iters: 50,
            fixed_point_tol: 1e-10,
            device: DeviceChoice::Cpu,
            diffusion: DaisiDiffusion::Genda,
            inversion: DaisiInversion::Ode,
            invert_epsilon: None,
        }
    }

    /// The paper's stochastic inversion keeps the interpolant's marginals: members drawn from
    /// a Gaussian prior, inverted to t_start, are N(0, (1 − t)² + t²) in standardised
    /// coordinates (mean and variance over 8000 draws, within 4 standard errors), for the
    /// reference's ε_inv and a strong one; the draws differ from the ODE's images, and
    /// ε_inv = 0 is the deterministic explicit flow.
    #[test]
    fn stochastic_inversion_keeps_the_interpolant_marginal() {
        let prior = GaussianPrior {
            mean: 2.0,
            std: 3.0,
        };
        let (m, n) = (4000, 2);
        let ens = members(m, n, 11, 2.0, 3.0);
        let start: Vec<f64> = ens.iter().map(|v| (v - 2.0) / 3.0).collect();
        for eps in [REFERENCE_INVERT_EPSILON, 1.0] {
            for t_start in [0.5, 0.7] {
                let c = DaisiConfig {
                    t_start,
                    inversion: DaisiInversion::Sde,
                    invert_epsilon: Some(eps),
                    ..cfg(200)
                };
                c.validate().unwrap();
                let mut x = start.clone();
                invert_sde(&prior, &c, &mut x, n, 5, 3, 0).unwrap();
                let k = x.len() as f64;
                let mean = x.iter().sum::<f64>() / k;
                let var = x.iter().map(|v| (v - mean).powi(2)).sum::<f64>() / (k - 1.0);
                let want = (1.0 - t_start).powi(2) + t_start * t_start;
                let (se_m, se_v) = ((want / k).sqrt(), want * (2.0 / k).sqrt());
                assert!(
                    mean.abs() < 4.0 * se_m,
                    "eps {eps}, t {t_start}: mean {mean}"
                );
                assert!(
                    (var - want).abs() < 4.0 * se_v + 0.01 * want,
                    "eps {eps}, t {t_start}: variance {var}, the marginal's {want}"
                );
                let mut ode = start.clone();
                invert(&prior, &c, &mut ode, 3).unwrap();
                let apart = x
                    .iter()
                    .zip(&ode)
                    .map(|(a, b)| (a - b).abs())
                    .fold(0.0, f64::max);
                assert!(
                    apart > 1e-2,
                    "the SDE's draws are not the ODE's images ({apart})"
                );
            }
        }
        // Without noise it is the explicit Euler flow: deterministic, and first-order close to
        // the implicit inverse (the gap halves with twice the steps).
        let gap = |steps: usize, seed: u64| {
            let c = DaisiConfig {
                inversion: DaisiInversion::Sde,
                invert_epsilon: Some(0.0),
                ..cfg(steps)
            };
            let (mut a, mut ode) = (start.clone(), start.clone());
            invert_sde(&prior, &c, &mut a, n, seed, 3, 0).unwrap();
            invert(&prior, &c, &mut ode, 3).unwrap();
            let g = a
                .iter()
                .zip(&ode)
                .map(|(u, v)| (u - v).abs())
                .fold(0.0, f64::max);
            (a, g)
        };
        let ((a, g1), (b, _), (_, g2)) = (gap(400, 5), gap(400, 6), gap(800, 5));
        assert_eq!(a, b);
        assert!(
            g1 < 0.05 && g2 < 0.6 * g1,
            "explicit vs implicit flow: {g1} at 400 steps, {g2} at 800"
        );
        // invert_epsilon belongs to the SDE inversion.
        let bad = DaisiConfig {
            invert_epsilon: Some(0.03),
            ..cfg(10)
        };
        assert!(bad.validate().is_err());
    }

    fn members(m: usize, n: usize, seed: u64, mean: f64, std: f64) -> Array2<f64> {
        let mut ens = Array2::zeros((m, n));
        let mut z = vec![0.0; n];
        for i in 0..m {
            fill_standard_normal(seed, Purpose::EnsembleInit, 0, i as u64, 0, &mut z);
            for c in 0..n {
                ens[[i, c]] = mean + std * z[c];
            }
        }
        ens
    }

    /// Inversion to the latent followed by the unguided deterministic sampler gives back the
    /// members (the implicit steps are the exact inverses of the sampler's Euler steps).
    #[test]
    fn inversion_round_trip_recovers_members() {
        let prior = GaussianPrior {
            mean: 2.0,
            std: 3.0,
        };
        let ens = members(8, 5, 3, 1.0, 4.0);
        let h = PointObs::new(5, vec![0, 2], false);
        let input = AnalysisInput::whole(&[0.0, 0.0], &h, &[1.0, 1.0], 4, 1);
        for t_start in [0.5, 0.9, 0.99] {
            let c = DaisiConfig { t_start, ..cfg(40) };
            let mut x: Vec<f64> = ens.iter().map(|v| (v - 2.0) / 3.0).collect();
            let orig = x.clone();
            invert(&prior, &c, &mut x, 4).unwrap();
            let moved = x
                .iter()
                .zip(&orig)
                .map(|(a, b)| (a - b).abs())
                .fold(0.0, f64::max);
            assert!(
                moved > 1e-2,
                "latent should differ from the member ({moved})"
            );
            guided_sample(&prior, &c, &mut x, &input, false).unwrap();
            let err = x
                .iter()
                .zip(&orig)
                .map(|(a, b)| (a - b).abs())
                .fold(0.0, f64::max);
            assert!(err < 1e-7, "round trip error {err} at t_start {t_start}");
        }
    }

    /// A fixed point that cannot meet its tolerance is a Diverged error naming the cycle.
    #[test]
    fn inversion_non_convergence_is_an_error_with_the_cycle() {
        let prior = GaussianPrior {
            mean: 0.0,
            std: 1.0,
        };
        let ens = members(4, 3, 1, 0.0, 1.0);
        let h = PointObs::new(3, vec![0], false);
        let input = AnalysisInput::whole(&[0.5], &h, &[1.0], 17, 1);
        let c = DaisiConfig {
            fixed_point_iters: 1,
            fixed_point_tol: 1e-300,
            ..cfg(10)
        };
        let mut e = ens.clone();
        let err = daisi_analysis(&prior, &c, &mut e, &input).unwrap_err();
        match &err {
            GendaError::Diverged { cycle, what } => {
                assert_eq!(*cycle, 17);
                assert!(
                    what.contains("DAISI latent inversion did not converge"),
                    "{what}"
                );
            }
            other => panic!("expected Diverged, got {other}"),
        }
        assert!(err.to_string().contains("17"), "{err}");
    }

    /// Linear-Gaussian sanity with the exact prior score: climatology N(0, I) in 4-D, forecast
    /// members drawn from it, x₀ observed with R = 0.5, y = 1.2. Fully inverted (t_start
    /// near 1) the forecast carries no extra information, so the analysis must move toward the
    /// Kalman posterior mean (0.8, 0, 0, 0) and keep the unobserved components near the prior.
    #[test]
    fn guided_sampler_moves_toward_kalman_posterior() {
        let prior = GaussianPrior {
            mean: 0.0,
            std: 1.0,
        };
        let (m, n) = (400, 4);
        let h = PointObs::new(n, vec![0], false);
        let input = AnalysisInput::whole(&[1.2], &h, &[0.5], 1, 9);
        for guidance in [
            DaisiGuidance::Vjp,
            DaisiGuidance::Identity,
            DaisiGuidance::Mmps,
        ] {
            let mut ens = members(m, n, 5, 0.0, 1.0);
            let c = DaisiConfig {
                t_start: 0.98,
                guidance,
                fixed_point_tol: 1e-8,
                ..cfg(100)
            };
            daisi_analysis(&prior, &c, &mut ens, &input).unwrap();
            let (mean, var0) = posterior_moments(&ens);
            eprintln!(
                "DAISI {guidance:?}: mean {mean:.3}, var0 {var0:.3}; Kalman mean 0.8, var 0.333"
            );
            assert!(
                (mean[0] - 0.8).abs() < 0.2,
                "{guidance:?}: mean {}",
                mean[0]
            );
            assert!(mean.iter().skip(1).all(|v| v.abs() < 0.2), "{mean}");
            assert!(var0 < 0.8 && var0 > 0.1, "{guidance:?}: var {var0}");
        }
        // MMPS's guidance is exact here (Gaussian prior, linear h, one observation: one GMRES
        // iteration solves the 1 × 1 system), so with finer steps the draws approach the
        // Kalman posterior: mean and variance converge toward 0.8 and 1/3.
        let mmps = |steps: usize| {
            let mut ens = members(m, n, 5, 0.0, 1.0);
            let c = DaisiConfig {
                t_start: 0.98,
                guidance: DaisiGuidance::Mmps,
                fixed_point_tol: 1e-8,
                ..cfg(steps)
            };
            daisi_analysis(&prior, &c, &mut ens, &input).unwrap();
            let (means, var) = posterior_moments(&ens);
            let mean = means[0];
            eprintln!("DAISI MMPS, {steps} steps: mean {mean:.3}, var0 {var:.3}");
            (mean, var)
        };
        let ((m1, v1), (m2, v2)) = (mmps(100), mmps(800));
        assert!(
            (m2 - 0.8).abs() < (m1 - 0.8).abs() && (m2 - 0.8).abs() < 0.05,
            "MMPS mean {m1} -> {m2}"
        );
        assert!(
            (v2 - 1.0 / 3.0).abs() < 0.05 && (v1 - 1.0 / 3.0).abs() < 0.1,
            "MMPS var {v1} -> {v2}"
        );
        // The reference's conventions (stochastic inversion, linear diffusion 0.03, t_min 0.3
        // in its time, 100 steps, DPS: γ = 0): the same posterior within the same bounds.
        let mut ens = members(m, n, 5, 0.0, 1.0);
        let c = DaisiConfig {
            t_start: 0.7,
            inversion: DaisiInversion::Sde,
            invert_epsilon: Some(REFERENCE_INVERT_EPSILON),
            diffusion: DaisiDiffusion::Linear,
            epsilon: 0.03,
            gamma: 0.0,
            ..cfg(100)
        };
        daisi_analysis(&prior, &c, &mut ens, &input).unwrap();
        let (mean, var0) = posterior_moments(&ens);
        eprintln!("DAISI reference conventions: mean {mean:.3}, var0 {var0:.3}");
        assert!(
            (mean[0] - 0.8).abs() < 0.2,
            "reference conventions: mean {}",
            mean[0]
        );
        assert!(mean.iter().skip(1).all(|v| v.abs() < 0.2), "{mean}");
        assert!(
            var0 < 0.8 && var0 > 0.1,
            "reference conventions: var {var0}"
        );
    }

    /// The members' mean and the (unbiased) variance of component 0.
    fn posterior_moments(ens: &Array2<f64>) -> (ndarray::Array1<f64>, f64) {
        let mean = ens.mean_axis(Axis(0)).unwrap();
        let var0 = ens
            .column(0)
            .iter()
            .map(|v| (v - mean[0]).powi(2))
            .sum::<f64>()
            / (ens.nrows() - 1) as f64;
        (mean, var0)
    }

    /// The reference's linear diffusion keeps the interpolant's marginals too: unguided
    /// (λ = 0) draws from the exact marginal at t_start end as N(0, (1 − t)² + t²) at t_min.
    #[test]
    fn linear_diffusion_sampler_keeps_the_marginal() {
        let prior = GaussianPrior {
            mean: 0.0,
            std: 1.0,
        };
        let (m, n) = (4000, 2);
        let (t0, t1) = (0.7, 1e-3);
        let sd = ((1.0f64 - t0).powi(2) + t0 * t0).sqrt();
        let mut x: Vec<f64> = members(m, n, 21, 0.0, sd).iter().cloned().collect();
        let h = PointObs::new(n, vec![0], false);
        let input = AnalysisInput::whole(&[0.0], &h, &[1.0], 2, 4);
        let c = DaisiConfig {
            t_start: t0,
            t_min: t1,
            diffusion: DaisiDiffusion::Linear,
            epsilon: 0.5,
            guidance_scale: 0.0,
            ..cfg(400)
        };
        let before = x.clone();
        guided_sample(&prior, &c, &mut x, &input, true).unwrap();
        let k = x.len() as f64;
        let mean = x.iter().sum::<f64>() / k;
        let var = x.iter().map(|v| (v - mean).powi(2)).sum::<f64>() / (k - 1.0);
        let want = (1.0 - t1).powi(2) + t1 * t1;
        assert!(mean.abs() < 4.0 * (want / k).sqrt(), "mean {mean}");
        assert!(
            (var - want).abs() < 4.0 * want * (2.0 / k).sqrt() + 0.01,
            "var {var}, want {want}"
        );
        assert!(x.iter().zip(&before).any(|(a, b)| (a - b).abs() > 0.1));
    }

    #[test]
    fn config_ranges_are_checked() {
        assert!(cfg(10).validate().is_ok());
        for bad in [
            DaisiConfig {
                t_start: 1.0,
                ..cfg(10)
            },
            DaisiConfig {
                t_min: 0.95,
                ..cfg(10)
            },
            DaisiConfig {
                steps: 0,
                ..cfg(10)
            },
            DaisiConfig {
                epsilon: -1.0,
                ..cfg(10)
            },
            DaisiConfig {
                inflation: 0.0,
                ..cfg(10)
            },
            DaisiConfig {
                fixed_point_iters: 0,
                ..cfg(10)
            },
        ] {
            assert!(bad.validate().is_err());
        }
    }

    /// A missing weights file is an error naming the path; a split state is refused.
    #[test]
    fn missing_weights_and_domains_are_clear_errors() {
        let mut f = Daisi::new(DaisiConfig {
            weights: PathBuf::from("/nonexistent/prior_l96.h5"),
            ..cfg(10)
        });
        let h = PointObs::new(3, vec![0], false);
        let mut ens = members(4, 3, 1, 0.0, 1.0);
        let input = AnalysisInput::whole(&[0.5], &h, &[1.0], 1, 1);
        let err = f.analyse(&mut ens, &input).unwrap_err().to_string();
        assert!(err.contains("/nonexistent/prior_l96.h5"), "{err}");
        let mut input = AnalysisInput::whole(&[0.5], &h, &[1.0], 1, 1);
        input.domain.whole = false;
        let err = f.analyse(&mut ens, &input).unwrap_err().to_string();
        assert!(err.contains("parallel.domains"), "{err}");
    }
}

#[cfg(test)]
mod diag {
    use super::*;
    use crate::obs::PointObs;

    /// Manual diagnostics with the trained L96 prior (not part of the suite).
    #[test]
    #[ignore]
    fn l96_single_analysis_diagnostics() {
        let net = ScoreNetwork::load(
            std::path::Path::new("output/l96_interpolant.h5"),
            None,
            DeviceChoice::Cpu,
        )
        .unwrap();
        let tr = crate::io::read_trajectory(std::path::Path::new(
            "output/daisi_l96_climatology.truth.h5",
        ))
        .unwrap();
        let n = 40;
        let data = &tr.data;
        let xs: Vec<f64> = data[1000 * n..1001 * n].to_vec();
        let m = 20;
        let idx: Vec<usize> = (0..n).step_by(4).collect();
        let h = PointObs::new(n, idx.clone(), false);
        let mut z = vec![0.0; n];
        fill_standard_normal(5, Purpose::ObsNoise, 0, 0, 0, &mut z);
        let y: Vec<f64> = idx.iter().enumerate().map(|(j, &i)| xs[i] + z[j]).collect();
        let r = vec![1.0; idx.len()];
        let input = AnalysisInput::whole(&y, &h, &r, 3, 1);
        let rmse = |e: &Array2<f64>, obs: Option<bool>| {
            let mean = e.mean_axis(Axis(0)).unwrap();
            let sel: Vec<usize> = (0..n)
                .filter(|i| match obs {
                    None => true,
                    Some(o) => (i % 4 == 0) == o,
                })
                .collect();
            (sel.iter().map(|&i| (mean[i] - xs[i]).powi(2)).sum::<f64>() / sel.len() as f64).sqrt()
        };
        let spread = |e: &Array2<f64>| e.var_axis(Axis(0), 1.0).mean().unwrap().sqrt();
        for pert in [0.5, 1.5] {
            let mut ens = Array2::zeros((m, n));
            for i in 0..m {
                fill_standard_normal(7, Purpose::EnsembleInit, 0, i as u64, 0, &mut z);
                for c in 0..n {
                    ens[[i, c]] = xs[c] + pert * z[c];
                }
            }
            eprintln!(
                "pert {pert}: prior rmse {:.3} (obs {:.3}, unobs {:.3}) spread {:.3}",
                rmse(&ens, None),
                rmse(&ens, Some(true)),
                rmse(&ens, Some(false)),
                spread(&ens)
            );
            let base = DaisiConfig {
                members: m,
                weights: "x".into(),
                t_start: 0.3,
                t_min: 1e-3,
                steps: 30,
                epsilon: 0.0,
                guidance: DaisiGuidance::Vjp,
                guidance_scale: 1.0,
                gamma: 1.0,
                inflation: 1.0,
                fixed_point_iters: 50,
                fixed_point_tol: 1e-6,
                device: DeviceChoice::Cpu,
                diffusion: DaisiDiffusion::Genda,
                inversion: DaisiInversion::Ode,
                invert_epsilon: None,
            };
            for (label, c) in [
                (
                    "roundtrip",
                    DaisiConfig {
                        guidance_scale: 0.0,
                        ..base.clone()
                    },
                ),
                (
                    "t0.1",
                    DaisiConfig {
                        t_start: 0.1,
                        ..base.clone()
                    },
                ),
                ("t0.3", base.clone()),
                (
                    "t0.3 id",
                    DaisiConfig {
                        guidance: DaisiGuidance::Identity,
                        ..base.clone()
                    },
                ),
                (
                    "t0.6",
                    DaisiConfig {
                        t_start: 0.6,
                        ..base.clone()
                    },
                ),
                (
                    "t0.9",
                    DaisiConfig {
                        t_start: 0.9,
                        steps: 60,
                        ..base.clone()
                    },
                ),
                (
                    "t0.9 eps1",
                    DaisiConfig {
                        t_start: 0.9,
                        steps: 60,
                        epsilon: 1.0,
                        ..base.clone()
                    },
                ),
                (
                    "t0.9 g0",
                    DaisiConfig {
                        t_start: 0.9,
                        steps: 60,
                        epsilon: 1.0,
                        guidance_scale: 0.0,
                        ..base.clone()
                    },
                ),
            ] {
                let mut e = ens.clone();
                let res = daisi_analysis(&net, &c, &mut e, &input);
                eprintln!(
                    "  {label:10}: {:?} rmse {:.3} (obs {:.3}, unobs {:.3}) spread {:.3}",
                    res.err(),
                    rmse(&e, None),
                    rmse(&e, Some(true)),
                    rmse(&e, Some(false)),
                    spread(&e)
                );
            }
        }
    }
}
