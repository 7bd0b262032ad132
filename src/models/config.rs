//! The `[model]` table of a config: which model, its parameters, their validation, and the
//! models built from it.
use super::*;
use crate::error::{GendaError, Result};
use serde::{Deserialize, Serialize};

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
    /// b > 0: the small scales advect themselves, −b Y_{v+1}(Y_{v+2} − Y_{v−1}) on the ring of
    /// all hidden variables (Lorenz 1996's two-level model), and the model is no longer
    /// conditionally Gaussian (Ω then needs `filter.surrogate`).
    #[serde(default)]
    pub y_advection: f64,
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
    /// Kolmogorov only: the forcing acts on the vorticity (`"vorticity"`, genda's and SDA's
    /// setup: F = amplitude · sin(k_f y)) or on the x-velocity (`"velocity"`: f_u = amplitude ·
    /// sin(k_f y), jax-cfd's `kolmogorov_forcing` as in the MASF code).
    #[serde(default, skip_serializing_if = "ForcingOn::is_vorticity")]
    pub forcing_on: ForcingOn,
    /// Kolmogorov only: the state is the vorticity on the n² grid (`"vorticity"`), or the
    /// velocity (`"velocity"`: u then v, 2n² values, the MASF code's state; one domain).
    #[serde(default, skip_serializing_if = "FlowState::is_vorticity")]
    pub state: FlowState,
}

/// Which field the Kolmogorov forcing acts on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ForcingOn {
    #[default]
    Vorticity,
    Velocity,
}

impl ForcingOn {
    fn is_vorticity(&self) -> bool {
        *self == ForcingOn::Vorticity
    }
}

/// The state variables of a 2-D flow model.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum FlowState {
    #[default]
    Vorticity,
    Velocity,
}

impl FlowState {
    fn is_vorticity(&self) -> bool {
        *self == FlowState::Vorticity
    }
}

fn kf_default() -> usize {
    4
}
fn one_substep() -> usize {
    1
}

impl TurbulenceConfig {
    /// Fields of the state: 2 for the velocity state (u, v), else 1.
    pub fn fields(&self) -> usize {
        match self.state {
            FlowState::Velocity => 2,
            FlowState::Vorticity => 1,
        }
    }

    fn params(&self, flow: Flow) -> Turbulence2dParams {
        Turbulence2dParams {
            n: self.n,
            dt: self.dt,
            viscosity: self.viscosity,
            drag: self.drag,
            forcing_wavenumber: self.forcing_wavenumber,
            forcing_amplitude: self.forcing_amplitude,
            forcing_on_velocity: self.forcing_on == ForcingOn::Velocity,
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
            ModelConfig::Kolmogorov(c) | ModelConfig::Sqg(c) => c.fields() * c.n * c.n,
            ModelConfig::Spekf(_) => 3,
            ModelConfig::CgLorenz96(c) => c.k * (1 + c.j),
        }
    }

    /// Stacked grids of a 2-D model's state (the velocity state's u and v: 2); 1 otherwise.
    pub fn fields(&self) -> usize {
        match self {
            ModelConfig::Kolmogorov(c) | ModelConfig::Sqg(c) => c.fields(),
            _ => 1,
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
                if !(c.y_advection.is_finite() && c.y_advection >= 0.0) {
                    return Err(GendaError::invalid(
                        "model.y_advection",
                        format!("must be a number >= 0, got {}", c.y_advection),
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
                if matches!(self, ModelConfig::Sqg(_))
                    && (c.state != FlowState::Vorticity || c.forcing_on != ForcingOn::Vorticity)
                {
                    return Err(GendaError::invalid(
                        "model.state / model.forcing_on",
                        "apply to kolmogorov only (SQG's state is the surface buoyancy)",
                    ));
                }
                if c.state == FlowState::Velocity && c.truth_grid.is_some() {
                    return Err(GendaError::invalid(
                        "model.truth_grid",
                        "a finer-grid truth is a vorticity-state option; the velocity state runs a perfect-model truth",
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

    /// The velocity-state Kolmogorov model, if this is one.
    pub fn build_velocity_form(&self) -> Option<VelocityForm> {
        match self {
            ModelConfig::Kolmogorov(c) if c.state == FlowState::Velocity => Some(
                VelocityForm::new(Turbulence2d::new(c.params(Flow::NavierStokes))),
            ),
            _ => None,
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
            ModelConfig::Kolmogorov(c) if c.state == FlowState::Velocity => Box::new(
                VelocityForm::new(Turbulence2d::new(c.params(Flow::NavierStokes))),
            ),
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
                y_advection: c.y_advection,
            }),
            ModelConfig::Sqg(c) => Box::new(Turbulence2d::new(c.params(Flow::Sqg))),
        }
    }
}
