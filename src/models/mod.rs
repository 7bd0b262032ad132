//! Dynamical models. A model is pure and size-generic: a tendency `dxdt(x)` and a time step.
mod cg_lorenz96;
mod linear;
mod lorenz63;
mod lorenz96;
mod spekf;
mod turbulence2d;

pub use cg_lorenz96::CgLorenz96;
pub use linear::LinearModel;
pub use lorenz63::Lorenz63;
pub use lorenz96::Lorenz96;
pub use spekf::Spekf;
pub use turbulence2d::{Flow, Turbulence2d, Turbulence2dParams};

use crate::error::{GendaError, Result};
use serde::{Deserialize, Serialize};

/// Time scheme of a model's deterministic part.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Scheme {
    /// Classical fourth-order Runge–Kutta.
    #[default]
    Rk4,
    /// Forward Euler (with `noise`: Euler–Maruyama).
    Euler,
}

/// Scratch buffers for one RK4 step, allocated once per trajectory and reused every step.
#[derive(Debug, Clone)]
pub struct Rk4Workspace {
    k1: Vec<f64>,
    k2: Vec<f64>,
    k3: Vec<f64>,
    k4: Vec<f64>,
    tmp: Vec<f64>,
}

impl Rk4Workspace {
    pub fn new(n: usize) -> Self {
        Rk4Workspace {
            k1: vec![0.0; n],
            k2: vec![0.0; n],
            k3: vec![0.0; n],
            k4: vec![0.0; n],
            tmp: vec![0.0; n],
        }
    }
}

/// Classical fourth-order Runge–Kutta step of `dx/dt = f(x)`, in place, no allocation.
pub fn rk4_step<F: Fn(&[f64], &mut [f64])>(f: F, x: &mut [f64], dt: f64, ws: &mut Rk4Workspace) {
    let Rk4Workspace {
        k1,
        k2,
        k3,
        k4,
        tmp,
    } = ws;
    let h2 = 0.5 * dt;
    f(x, k1);
    for ((t, xi), k) in tmp.iter_mut().zip(x.iter()).zip(k1.iter()) {
        *t = xi + h2 * k;
    }
    f(tmp, k2);
    for ((t, xi), k) in tmp.iter_mut().zip(x.iter()).zip(k2.iter()) {
        *t = xi + h2 * k;
    }
    f(tmp, k3);
    for ((t, xi), k) in tmp.iter_mut().zip(x.iter()).zip(k3.iter()) {
        *t = xi + dt * k;
    }
    f(tmp, k4);
    let h6 = dt / 6.0;
    for i in 0..x.len() {
        x[i] += h6 * (k1[i] + 2.0 * (k2[i] + k3[i]) + k4[i]);
    }
}

/// Models whose hidden part v is conditionally Gaussian given the path of the observed part u
/// (Liptser & Shiryaev; Chen & Majda's conditional Gaussian nonlinear systems):
///
///   du = [A0(u) + A1(u) v] dt + diag(s_u) dW_u,   dv = [a0(u) + a1(u) v] dt + diag(s_v) dW_v,
///
/// with the state laid out as [u; v]. The posterior of v given u is then Gaussian and known in
/// closed form (`filters::cg`).
pub trait ConditionalGaussian {
    /// Dimension of u (v has the rest of the state).
    fn observed_dim(&self) -> usize;
    /// Drift terms at u: A0 (n_u), A1 (n_u × n_v, row-major), a0 (n_v), a1 (n_v × n_v).
    fn cg_terms(
        &self,
        u: &[f64],
        big_a0: &mut [f64],
        big_a1: &mut [f64],
        a0: &mut [f64],
        a1: &mut [f64],
    );
    /// Noise amplitudes (s_u, s_v).
    fn cg_noise(&self) -> (Vec<f64>, Vec<f64>);
}

/// The drift [A0 + A1 v; a0 + a1 v] of a conditionally Gaussian model (allocates; for small
/// models and tests, the models' own `tendency` is the fast path).
pub fn cg_drift<M: ConditionalGaussian + Model + ?Sized>(m: &M, x: &[f64], d: &mut [f64]) {
    let nu = m.observed_dim();
    let nv = x.len() - nu;
    let (u, v) = x.split_at(nu);
    let (mut ba0, mut ba1, mut a0, mut a1) = (
        vec![0.0; nu],
        vec![0.0; nu * nv],
        vec![0.0; nv],
        vec![0.0; nv * nv],
    );
    m.cg_terms(u, &mut ba0, &mut ba1, &mut a0, &mut a1);
    for i in 0..nu {
        d[i] = ba0[i] + (0..nv).map(|j| ba1[i * nv + j] * v[j]).sum::<f64>();
    }
    for i in 0..nv {
        d[nu + i] = a0[i] + (0..nv).map(|j| a1[i * nv + j] * v[j]).sum::<f64>();
    }
}

/// Forward-Euler step of the drift (the deterministic part of Euler–Maruyama).
pub fn euler_step<M: Model + ?Sized>(m: &M, x: &mut [f64], ws: &mut Rk4Workspace) {
    if ws.k1.len() != x.len() {
        *ws = Rk4Workspace::new(x.len());
    }
    m.tendency(x, &mut ws.k1);
    let dt = m.dt();
    for (xi, k) in x.iter_mut().zip(&ws.k1) {
        *xi += dt * k;
    }
}

/// A deterministic dynamical model advanced with a fixed step `dt`.
pub trait Model: Send + Sync {
    fn name(&self) -> &'static str;
    /// State dimension.
    fn dim(&self) -> usize;
    /// Model time step.
    fn dt(&self) -> f64;
    /// Tendency `dxdt = f(x)`, written into `dxdt` (no allocation).
    fn tendency(&self, x: &[f64], dxdt: &mut [f64]);
    /// One time step in place: RK4, or forward Euler when `scheme()` says so (unless the model
    /// knows better).
    fn step(&self, x: &mut [f64], ws: &mut Rk4Workspace) {
        match self.scheme() {
            Scheme::Rk4 => rk4_step(|x, d| self.tendency(x, d), x, self.dt(), ws),
            Scheme::Euler => euler_step(self, x, ws),
        }
    }
    /// Time scheme of `step` (and of the slab stepper).
    fn scheme(&self) -> Scheme {
        Scheme::Rk4
    }
    /// Additive model-noise amplitude σ: after every step x += σ·√dt·z, z ~ N(0, I) keyed by
    /// (step, member, global index). 0 for deterministic models.
    fn noise_sd(&self) -> f64 {
        0.0
    }
    /// Noise amplitude of state component `i` (global index) when it differs per component;
    /// the noise added is `noise_sd_at(i)·√dt·z_i`.
    fn noise_sd_at(&self, _i: usize) -> f64 {
        self.noise_sd()
    }
    /// The conditionally Gaussian structure, for models that have one (Ω, CG filters).
    fn conditional_gaussian(&self) -> Option<&dyn ConditionalGaussian> {
        None
    }
    /// A problem with the state before a run starts (e.g. a CFL violation), as a message.
    fn stability_problem(&self, _x: &[f64]) -> Option<String> {
        None
    }
    /// Side of the square grid for 2-D models (their state is row-major (y, x)).
    fn grid_side(&self) -> Option<usize> {
        None
    }
    /// Stencil reach `(left, right)` if the model can run on a slab of a periodic 1-D ring
    /// with halos (domain decomposition); `None` if it cannot be decomposed.
    fn halo(&self) -> Option<(usize, usize)> {
        None
    }
    /// Tendency of the owned points of a slab: `ext` = left halo, `out.len()` owned points,
    /// right halo. Only called when `halo()` is `Some`.
    fn slab_tendency(&self, _ext: &[f64], _out: &mut [f64]) {}
    /// True for pseudo-spectral 2-D models that step slabs of grid rows with a distributed
    /// (all-to-all transpose) FFT: `advance_spectral_slabs` then works on any domain count
    /// dividing the grid side.
    fn is_slab_spectral(&self) -> bool {
        false
    }
    /// Advance `x`, this domain's row slabs of whole fields (domain `d` of `domains`, one field
    /// after another), by `nsteps`; `transpose` is the slab FFT's all-to-all (parallel room).
    fn advance_spectral_slabs(
        &self,
        _x: &mut [f64],
        _d: usize,
        _domains: usize,
        _nsteps: usize,
        _transpose: &mut SlabTransposeFn,
    ) -> Result<()> {
        Err(GendaError::Parallel(format!(
            "{} is not a slab-decomposed spectral model",
            self.name()
        )))
    }
    /// Cumulative seconds spent in the model's own kernels since it was built (e.g. `fft` for
    /// the pseudo-spectral models), for `genda bench`.
    fn timers(&self) -> Vec<(&'static str, f64)> {
        Vec::new()
    }
    /// `nsteps` time steps in place.
    fn integrate(&self, x: &mut [f64], nsteps: usize) {
        let mut ws = Rk4Workspace::new(self.dim());
        for _ in 0..nsteps {
            self.step(x, &mut ws);
        }
    }
}

/// Variable-evaluations per stage below which threads cost more than they save.
const PARALLEL_STAGE_MIN_WORK: usize = 20_000;

/// Slab transpose of the distributed 2-D FFT, supplied by the parallel room: `(src, dst)`.
pub type SlabTransposeFn<'a> = dyn FnMut(&[rustfft::num_complex::Complex64], &mut [rustfft::num_complex::Complex64]) -> Result<()>
    + 'a;

/// Halo exchange supplied by the parallel room: `(to_left, to_right, from_left, from_right)`.
pub type HaloExchange<'a> = dyn FnMut(&[f64], &[f64], &mut [f64], &mut [f64]) -> Result<()> + 'a;

/// RK4 on slabs of many rows (members) at once, with one halo exchange per stage for all rows.
/// Each stage stores y = x + a·k_prev in the owned part of an extended buffer, exchanges the
/// halos, then evaluates the tendency; the arithmetic per point is the same on any slab, so a
/// decomposed run gives the same bits as the whole ring.
pub struct SlabStepper {
    rows: usize,
    len: usize,
    left: usize,
    right: usize,
    ext: Vec<f64>,
    k: [Vec<f64>; 4],
    to_left: Vec<f64>,
    to_right: Vec<f64>,
    from_left: Vec<f64>,
    from_right: Vec<f64>,
}

impl SlabStepper {
    pub fn new(rows: usize, len: usize, (left, right): (usize, usize)) -> Self {
        let z = |k: usize| vec![0.0; k];
        SlabStepper {
            rows,
            len,
            left,
            right,
            ext: z(rows * (left + len + right)),
            k: [z(rows * len), z(rows * len), z(rows * len), z(rows * len)],
            to_left: z(rows * right),
            to_right: z(rows * left),
            from_left: z(rows * left),
            from_right: z(rows * right),
        }
    }

    /// One RK4 step of every row of `x` (rows × len, row-major), in place.
    pub fn step(
        &mut self,
        model: &dyn Model,
        x: &mut [f64],
        exchange: &mut HaloExchange,
    ) -> Result<()> {
        let dt = model.dt();
        if model.scheme() == Scheme::Euler {
            self.stage(model, x, 0, 0.0, exchange)?;
            for (xi, k) in x.iter_mut().zip(&self.k[0]) {
                *xi += dt * k;
            }
            return Ok(());
        }
        let coef = [0.0, 0.5 * dt, 0.5 * dt, dt];
        for s in 0..4 {
            self.stage(model, x, s, coef[s], exchange)?;
        }
        let h6 = dt / 6.0;
        let [k1, k2, k3, k4] = &self.k;
        for i in 0..x.len() {
            x[i] += h6 * (k1[i] + 2.0 * (k2[i] + k3[i]) + k4[i]);
        }
        Ok(())
    }

    fn stage(
        &mut self,
        model: &dyn Model,
        x: &[f64],
        s: usize,
        a: f64,
        exchange: &mut HaloExchange,
    ) -> Result<()> {
        let (l, r, len) = (self.left, self.right, self.len);
        let w = l + len + r;
        for row in 0..self.rows {
            let e = &mut self.ext[row * w + l..row * w + l + len];
            let xr = &x[row * len..(row + 1) * len];
            if s == 0 {
                e.copy_from_slice(xr);
            } else {
                let kp = &self.k[s - 1][row * len..(row + 1) * len];
                for ((ei, xi), ki) in e.iter_mut().zip(xr).zip(kp) {
                    *ei = xi + a * ki;
                }
            }
            self.to_left[row * r..(row + 1) * r]
                .copy_from_slice(&self.ext[row * w + l..row * w + l + r]);
            self.to_right[row * l..(row + 1) * l]
                .copy_from_slice(&self.ext[row * w + l + len - l..row * w + l + len]);
        }
        exchange(
            &self.to_left,
            &self.to_right,
            &mut self.from_left,
            &mut self.from_right,
        )?;
        for row in 0..self.rows {
            self.ext[row * w..row * w + l].copy_from_slice(&self.from_left[row * l..(row + 1) * l]);
            self.ext[row * w + l + len..(row + 1) * w]
                .copy_from_slice(&self.from_right[row * r..(row + 1) * r]);
        }
        let ext = &self.ext;
        let k = &mut self.k[s];
        if self.rows * len >= PARALLEL_STAGE_MIN_WORK && self.rows > 1 {
            use rayon::prelude::*;
            k.par_chunks_mut(len)
                .zip(ext.par_chunks(w))
                .for_each(|(out, e)| model.slab_tendency(e, out));
        } else {
            for (out, e) in k.chunks_mut(len).zip(ext.chunks(w)) {
                model.slab_tendency(e, out);
            }
        }
        Ok(())
    }
}

/// Model choice in the config, tagged by `kind`.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(tag = "kind", rename_all = "snake_case", deny_unknown_fields)]
pub enum ModelConfig {
    /// Lorenz (1963) three-variable convection model.
    Lorenz63 {
        dt: f64,
        #[serde(default = "l63_sigma")]
        sigma: f64,
        #[serde(default = "l63_rho")]
        rho: f64,
        #[serde(default = "l63_beta")]
        beta: f64,
        /// Additive noise amplitude σ (x += σ·√dt·z every step, after the RK4 step); 0 =
        /// deterministic. SDA's `NoisyLorenz63` is dt = 0.025, noise = 1.
        #[serde(default)]
        noise: f64,
    },
    /// Lorenz (1996) ring model of any dimension >= 4.
    Lorenz96 {
        dim: usize,
        dt: f64,
        #[serde(default = "l96_forcing")]
        forcing: f64,
        /// `rk4` (default) or `euler`.
        #[serde(default)]
        scheme: Scheme,
        /// Additive noise amplitude σ (x += σ·√dt·z every step); 0 = deterministic.
        #[serde(default)]
        noise: f64,
    },
    /// 2-D Navier–Stokes (vorticity) on [0, 2π)², Kolmogorov forcing, pseudo-spectral.
    Kolmogorov(TurbulenceConfig),
    /// Surface quasi-geostrophic turbulence on the same spectral core.
    Sqg(TurbulenceConfig),
    /// SPEKF-type model: observed u with hidden stochastic damping γ and forcing b.
    Spekf(SpekfConfig),
    /// Two-layer Lorenz-96 with conditionally Gaussian hidden small scales.
    CgLorenz96(CgLorenz96Config),
}

/// `kind = "spekf"`: defaults give intermittent bursts of u (γ < 0 about 6 % of the time).
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct SpekfConfig {
    pub dt: f64,
    #[serde(default)]
    pub forcing: f64,
    #[serde(default = "spekf_sigma_u")]
    pub sigma_u: f64,
    #[serde(default = "spekf_gamma_mean")]
    pub gamma_mean: f64,
    #[serde(default = "spekf_d_gamma")]
    pub d_gamma: f64,
    #[serde(default = "spekf_sigma_gamma")]
    pub sigma_gamma: f64,
    #[serde(default)]
    pub b_mean: f64,
    #[serde(default = "spekf_d_b")]
    pub d_b: f64,
    #[serde(default = "spekf_sigma_b")]
    pub sigma_b: f64,
}

fn spekf_sigma_u() -> f64 {
    0.5
}
fn spekf_gamma_mean() -> f64 {
    1.5
}
fn spekf_d_gamma() -> f64 {
    1.3
}
fn spekf_sigma_gamma() -> f64 {
    1.6
}
fn spekf_d_b() -> f64 {
    0.5
}
fn spekf_sigma_b() -> f64 {
    0.5
}

/// `kind = "cg_lorenz96"`: K large-scale variables, J hidden small-scale ones each. The
/// defaults (F = 1, no linear damping, ε = 0.01, ŷ = 1, σ_Y = 2) give intermittent large
/// scales (kurtosis ≈ 7).
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct CgLorenz96Config {
    pub k: usize,
    #[serde(default = "cgl96_j")]
    pub j: usize,
    pub dt: f64,
    #[serde(default = "one_f")]
    pub forcing: f64,
    #[serde(default)]
    pub d_x: f64,
    #[serde(default = "cgl96_cubic")]
    pub cubic: f64,
    #[serde(default = "one_f")]
    pub coupling: f64,
    #[serde(default = "one_f")]
    pub d_y: f64,
    #[serde(default = "one_f")]
    pub y_mean: f64,
    #[serde(default)]
    pub h: f64,
    #[serde(default = "one_f")]
    pub sigma_x: f64,
    #[serde(default = "cgl96_sigma_y")]
    pub sigma_y: f64,
}

fn cgl96_j() -> usize {
    2
}
fn cgl96_cubic() -> f64 {
    0.01
}
fn cgl96_sigma_y() -> f64 {
    2.0
}
fn one_f() -> f64 {
    1.0
}

/// Grid, time step and physics of the 2-D turbulence models.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct TurbulenceConfig {
    /// Grid points per side (64 … 2048).
    pub n: usize,
    pub dt: f64,
    /// Kinematic viscosity ν.
    pub viscosity: f64,
    /// Linear drag μ.
    #[serde(default)]
    pub drag: f64,
    /// Forcing F = amplitude · sin(k_f y) on the vorticity (or θ) equation.
    #[serde(default = "kf_default")]
    pub forcing_wavenumber: usize,
    #[serde(default)]
    pub forcing_amplitude: f64,
    /// RK4 steps of `dt` per model step: a model step (the time between states, observations
    /// and the states of a trajectory file) is `substeps · dt`.
    #[serde(default = "one_substep")]
    pub substeps: usize,
    /// Twin experiments (`genda run`, `genda truth`): simulate the truth on a finer
    /// `truth_grid`² grid (a multiple of n) and observe and score its block means on the n² grid
    /// (SDA's Kolmogorov setup: 256² coarsened ×4 to 64²). The members run on the n² grid.
    #[serde(default)]
    pub truth_grid: Option<usize>,
    /// RK4 steps per model step of the fine truth (default: substeps · truth_grid / n, the
    /// coarse model's CFL number).
    #[serde(default)]
    pub truth_substeps: Option<usize>,
}

fn kf_default() -> usize {
    4
}
fn one_substep() -> usize {
    1
}

impl TurbulenceConfig {
    fn params(&self, flow: Flow) -> Turbulence2dParams {
        Turbulence2dParams {
            n: self.n,
            dt: self.dt,
            viscosity: self.viscosity,
            drag: self.drag,
            forcing_wavenumber: self.forcing_wavenumber,
            forcing_amplitude: self.forcing_amplitude,
            substeps: self.substeps,
            flow,
        }
    }

    /// The fine-grid truth model (`truth_grid`), if any: same physics, finer grid, its RK4 step
    /// chosen so that one of its model steps spans the same time as the coarse model's.
    fn truth_params(&self, flow: Flow) -> Option<Turbulence2dParams> {
        let nf = self.truth_grid?;
        let substeps = self
            .truth_substeps
            .unwrap_or(self.substeps * nf / self.n.max(1));
        Some(Turbulence2dParams {
            n: nf,
            dt: self.dt * self.substeps as f64 / substeps as f64,
            substeps,
            ..self.params(flow)
        })
    }
}

fn l63_sigma() -> f64 {
    10.0
}
fn l63_rho() -> f64 {
    28.0
}
fn l63_beta() -> f64 {
    8.0 / 3.0
}
fn l96_forcing() -> f64 {
    8.0
}

impl ModelConfig {
    /// Change the grid side of a 2-D model (`genda bench --grid`).
    pub fn set_grid_side(&mut self, n: usize) -> Result<()> {
        match self {
            ModelConfig::Kolmogorov(c) | ModelConfig::Sqg(c) => {
                c.n = n;
                Ok(())
            }
            _ => Err(GendaError::invalid(
                "model.n",
                "--grid applies to 2-D models (kolmogorov, sqg) only",
            )),
        }
    }

    pub fn dim(&self) -> usize {
        match self {
            ModelConfig::Lorenz63 { .. } => 3,
            ModelConfig::Lorenz96 { dim, .. } => *dim,
            ModelConfig::Kolmogorov(c) | ModelConfig::Sqg(c) => c.n * c.n,
            ModelConfig::Spekf(_) => 3,
            ModelConfig::CgLorenz96(c) => c.k * (1 + c.j),
        }
    }

    pub fn dt(&self) -> f64 {
        match self {
            ModelConfig::Lorenz63 { dt, .. } | ModelConfig::Lorenz96 { dt, .. } => *dt,
            ModelConfig::Kolmogorov(c) | ModelConfig::Sqg(c) => c.dt * c.substeps as f64,
            ModelConfig::Spekf(c) => c.dt,
            ModelConfig::CgLorenz96(c) => c.dt,
        }
    }

    pub fn validate(&self) -> Result<()> {
        let dt = self.dt();
        if !(dt.is_finite() && dt > 0.0) {
            return Err(GendaError::invalid(
                "model.dt",
                format!("must be a positive number, got {dt}"),
            ));
        }
        match self {
            ModelConfig::Spekf(c) => {
                for (k, v, pos) in [
                    ("model.sigma_u", c.sigma_u, false),
                    ("model.sigma_gamma", c.sigma_gamma, false),
                    ("model.sigma_b", c.sigma_b, false),
                    ("model.d_gamma", c.d_gamma, true),
                    ("model.d_b", c.d_b, true),
                ] {
                    if !(v.is_finite() && (v > 0.0 || (!pos && v == 0.0))) {
                        return Err(GendaError::invalid(
                            k,
                            format!("must be {}, got {v}", if pos { "> 0" } else { ">= 0" }),
                        ));
                    }
                }
                if !(c.sigma_u > 0.0) {
                    return Err(GendaError::invalid(
                        "model.sigma_u",
                        "must be > 0 (the observed noise makes the conditional posterior well posed)",
                    ));
                }
            }
            ModelConfig::CgLorenz96(c) => {
                if c.k < 4 || c.j == 0 {
                    return Err(GendaError::invalid(
                        "model.k / model.j",
                        format!("need k >= 4 and j >= 1, got k = {}, j = {}", c.k, c.j),
                    ));
                }
                if !(c.sigma_x > 0.0 && c.sigma_y >= 0.0 && c.d_y > 0.0) {
                    return Err(GendaError::invalid(
                        "model.sigma_x / sigma_y / d_y",
                        "need sigma_x > 0, sigma_y >= 0, d_y > 0",
                    ));
                }
            }
            ModelConfig::Kolmogorov(c) | ModelConfig::Sqg(c) => {
                if c.n < 8 || c.n % 2 != 0 {
                    return Err(GendaError::invalid(
                        "model.n",
                        format!("grid side must be even and >= 8, got {}", c.n),
                    ));
                }
                if c.substeps == 0 || c.truth_substeps == Some(0) {
                    return Err(GendaError::invalid(
                        "model.substeps",
                        "substeps and truth_substeps must be >= 1",
                    ));
                }
                if let Some(nf) = c.truth_grid {
                    if nf < c.n || nf % c.n != 0 {
                        return Err(GendaError::invalid(
                            "model.truth_grid",
                            format!(
                                "must be a multiple of model.n = {} (the truth is coarsened by block means), got {nf}",
                                c.n
                            ),
                        ));
                    }
                }
                if c.truth_substeps.is_some() && c.truth_grid.is_none() {
                    return Err(GendaError::invalid(
                        "model.truth_substeps",
                        "applies only with model.truth_grid",
                    ));
                }
                if !(c.viscosity.is_finite()
                    && c.viscosity >= 0.0
                    && c.drag.is_finite()
                    && c.drag >= 0.0)
                {
                    return Err(GendaError::invalid(
                        "model.viscosity / model.drag",
                        "must be finite and >= 0",
                    ));
                }
                if !c.forcing_amplitude.is_finite() || 3 * c.forcing_wavenumber >= c.n {
                    return Err(GendaError::invalid(
                        "model.forcing_wavenumber",
                        format!(
                            "must be resolved after dealiasing (k_f < n/3 = {}), amplitude finite",
                            c.n / 3
                        ),
                    ));
                }
            }
            ModelConfig::Lorenz63 {
                sigma,
                rho,
                beta,
                noise,
                ..
            } => {
                for (k, v) in [
                    ("model.sigma", sigma),
                    ("model.rho", rho),
                    ("model.beta", beta),
                ] {
                    if !v.is_finite() {
                        return Err(GendaError::invalid(k, "must be finite"));
                    }
                }
                if !(noise.is_finite() && *noise >= 0.0) {
                    return Err(GendaError::invalid(
                        "model.noise",
                        format!("must be >= 0, got {noise}"),
                    ));
                }
            }
            ModelConfig::Lorenz96 {
                dim,
                forcing,
                noise,
                ..
            } => {
                if !(noise.is_finite() && *noise >= 0.0) {
                    return Err(GendaError::invalid(
                        "model.noise",
                        format!("must be >= 0, got {noise}"),
                    ));
                }
                if *dim < 4 {
                    return Err(GendaError::invalid(
                        "model.dim",
                        format!("Lorenz-96 needs dim >= 4, got {dim}"),
                    ));
                }
                if !forcing.is_finite() {
                    return Err(GendaError::invalid("model.forcing", "must be finite"));
                }
            }
        }
        Ok(())
    }

    /// Whether the truth runs on a finer grid than the members (`model.truth_grid`).
    pub fn has_fine_truth(&self) -> bool {
        matches!(self, ModelConfig::Kolmogorov(c) | ModelConfig::Sqg(c) if c.truth_grid.is_some_and(|g| g > c.n))
    }

    /// The truth of a twin experiment: the members' model, or (`model.truth_grid`) the same
    /// physics on a finer grid whose states are observed and scored as block means.
    pub fn build_truth(&self) -> TruthModel {
        let fine = match self {
            ModelConfig::Kolmogorov(c) => c.truth_params(Flow::NavierStokes).map(|p| (p, c.n)),
            ModelConfig::Sqg(c) => c.truth_params(Flow::Sqg).map(|p| (p, c.n)),
            _ => None,
        };
        match fine {
            Some((p, n)) => TruthModel {
                factor: p.n / n,
                side: n,
                model: Box::new(Turbulence2d::new(p)),
            },
            None => {
                let model = self.build();
                TruthModel {
                    factor: 1,
                    side: model.grid_side().unwrap_or(0),
                    model,
                }
            }
        }
    }

    /// The registry: config → model.
    pub fn build(&self) -> Box<dyn Model> {
        match self {
            ModelConfig::Lorenz63 {
                dt,
                sigma,
                rho,
                beta,
                noise,
            } => Box::new(Lorenz63 {
                dt: *dt,
                sigma: *sigma,
                rho: *rho,
                beta: *beta,
                noise: *noise,
            }),
            ModelConfig::Lorenz96 {
                dim,
                dt,
                forcing,
                scheme,
                noise,
            } => Box::new(Lorenz96 {
                scheme: *scheme,
                noise: *noise,
                ..Lorenz96::new(*dim, *forcing, *dt)
            }),
            ModelConfig::Kolmogorov(c) => Box::new(Turbulence2d::new(c.params(Flow::NavierStokes))),
            ModelConfig::Spekf(c) => Box::new(Spekf {
                dt: c.dt,
                forcing: c.forcing,
                sigma_u: c.sigma_u,
                gamma_mean: c.gamma_mean,
                d_gamma: c.d_gamma,
                sigma_gamma: c.sigma_gamma,
                b_mean: c.b_mean,
                d_b: c.d_b,
                sigma_b: c.sigma_b,
            }),
            ModelConfig::CgLorenz96(c) => Box::new(CgLorenz96 {
                k: c.k,
                j: c.j,
                dt: c.dt,
                forcing: c.forcing,
                d_x: c.d_x,
                cubic: c.cubic,
                coupling: c.coupling,
                d_y: c.d_y,
                y_mean: c.y_mean,
                h: c.h,
                sigma_x: c.sigma_x,
                sigma_y: c.sigma_y,
            }),
            ModelConfig::Sqg(c) => Box::new(Turbulence2d::new(c.params(Flow::Sqg))),
        }
    }
}

/// One model step followed by the model's additive noise, noise_sd_at(i)·√dt·z with z keyed by
/// (seed, step, stream): the stepping of the serial twins (`genda cg`, `genda smooth`), which
/// draw the truth on stream `experiment::TRUTH_STREAM` exactly as `genda run` does.
pub struct NoisyStepper<'a> {
    pub model: &'a dyn Model,
    /// Per-component noise sd per step.
    pub sd: Vec<f64>,
    pub seed: u64,
}

impl<'a> NoisyStepper<'a> {
    pub fn new(model: &'a dyn Model, seed: u64) -> Self {
        let sdt = model.dt().sqrt();
        let sd = (0..model.dim())
            .map(|i| model.noise_sd_at(i) * sdt)
            .collect();
        NoisyStepper { model, sd, seed }
    }

    /// Whether every component is noisy (the transition has a density).
    pub fn noisy(&self) -> bool {
        self.sd.iter().all(|&s| s > 0.0)
    }

    /// Step `x` once; `z` (n) is scratch.
    pub fn step(
        &self,
        x: &mut [f64],
        ws: &mut Rk4Workspace,
        z: &mut [f64],
        step: u64,
        stream: u64,
    ) {
        self.model.step(x, ws);
        if self.sd.iter().any(|&s| s > 0.0) {
            crate::rng::fill_standard_normal(
                self.seed,
                crate::rng::Purpose::ModelNoise,
                step,
                stream,
                0,
                z,
            );
            x.iter_mut()
                .zip(z.iter().zip(&self.sd))
                .for_each(|(v, (z, s))| *v += s * z);
        }
    }
}
/// The model the truth of a twin experiment runs: the members' own, or a finer grid
/// (`factor` > 1) whose state the experiment sees as block means of factor × factor cells.
pub struct TruthModel {
    pub model: Box<dyn Model>,
    /// Fine cells per coarse cell along each side (1: the members' model itself).
    pub factor: usize,
    /// Coarse grid side (2-D models).
    side: usize,
}

impl TruthModel {
    /// Size of the truth's own state.
    pub fn dim(&self) -> usize {
        self.model.dim()
    }

    /// Whether the truth runs on a finer grid than the members.
    pub fn is_fine(&self) -> bool {
        self.factor > 1
    }

    /// The state as the members' model sees it: `fine` itself, or its block means.
    pub fn coarsen(&self, fine: &[f64], out: &mut [f64]) {
        if self.factor == 1 {
            out.copy_from_slice(fine);
        } else {
            block_mean(fine, self.side * self.factor, self.factor, out);
        }
    }
}

/// Means of the `f` × `f` blocks of the row-major `nf` × `nf` field `fine`, into the
/// (nf/f) × (nf/f) field `out` (a finite-volume coarsening: it keeps the domain mean).
pub fn block_mean(fine: &[f64], nf: usize, f: usize, out: &mut [f64]) {
    let nc = nf / f;
    out.fill(0.0);
    let w = 1.0 / (f * f) as f64;
    for (r, row) in fine.chunks_exact(nf).enumerate() {
        let o = &mut out[(r / f) * nc..(r / f + 1) * nc];
        for (c, v) in row.iter().enumerate() {
            o[c / f] += v * w;
        }
    }
}
