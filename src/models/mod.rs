//! Dynamical models. A model is pure and size-generic: a tendency `dxdt(x)` and a time step.
mod cg_lorenz96;
mod config;
mod linear;
mod lorenz63;
mod lorenz96;
mod noise;
mod spekf;
mod turbulence2d;
mod velocity2d;

pub use cg_lorenz96::CgLorenz96;
pub use config::{
    CgLorenz96Config, FlowState, ForcingOn, ModelConfig, SpekfConfig, TurbulenceConfig,
};
pub use linear::LinearModel;
pub use lorenz63::Lorenz63;
pub use lorenz96::Lorenz96;
pub use noise::{add_model_noise, NoiseKey, NoisyStepper, TRUTH_STREAM};
pub use spekf::Spekf;
pub use turbulence2d::{Flow, Turbulence2d, Turbulence2dParams};
pub use velocity2d::VelocityForm;

use crate::error::{GendaError, Result};
use serde::{Deserialize, Serialize};

/// How a conditionally Gaussian surrogate is made of a model that is not one (Ω).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum SurrogateKind {
    /// The model's own coefficients with the terms that break the CG form dropped.
    Truncated,
    /// The mean stochastic model: the hidden variables as Ornstein–Uhlenbeck processes with the
    /// model's climatological mean, variance and correlation time (from a free run).
    Fitted,
}

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
    /// Where the hidden part of the state starts, for models split into observed u and hidden
    /// v (scored separately), conditionally Gaussian or not.
    fn hidden_start(&self) -> Option<usize> {
        self.conditional_gaussian().map(|c| c.observed_dim())
    }
    /// A conditionally Gaussian surrogate of this model, made as `how` says (`seed` and
    /// `steps` key and size the free run a fitted surrogate is made from).
    fn cg_surrogate(
        &self,
        _how: SurrogateKind,
        _seed: u64,
        _steps: usize,
    ) -> Result<Box<dyn Model>> {
        Err(GendaError::invalid(
            "filter.surrogate",
            format!(
                "{} has no conditionally Gaussian surrogate (cg_lorenz96 has)",
                self.name()
            ),
        ))
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
