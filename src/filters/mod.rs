//! Analysis methods behind one `Filter` trait. A filter sees the ensemble as an array
//! `(members, state_dim)` plus the cycle's observations; it never knows how many ranks the run
//! uses, never writes files and never touches MPI (the driver in `experiment` does that).
mod core;
mod enkf;
mod ensf;
mod etkf;
mod free;
mod letkf;
mod particle;

pub use self::core::{anomalies, ensemble_mean, inflate, mean_preserving_rotation, EnsembleSpace};
pub use enkf::{Enkf, EnkfConfig};
pub use ensf::{mixture_score, Ensf, EnsfConfig, EnsfPrior};
pub use etkf::{Etkf, EtkfConfig};
pub use free::{FreeConfig, FreeRun};
pub use letkf::{gaspari_cohn, Geometry, Letkf, LetkfConfig};
pub use particle::{systematic_resample, ParticleFilter, PfConfig};

use crate::error::{GendaError, Result};
use crate::obs::ObsOperator;
use ndarray::Array2;
use serde::{Deserialize, Serialize};

/// Everything an analysis needs besides the ensemble.
pub struct AnalysisInput<'a> {
    /// Observation vector.   (obs_dim)
    pub obs: &'a [f64],
    pub obs_operator: &'a dyn ObsOperator,
    /// Diagonal of R.   (obs_dim)
    pub obs_error_var: &'a [f64],
    /// Cycle index (1-based), part of every random-stream key.
    pub cycle: usize,
    /// Master seed of the run.
    pub seed: u64,
}

/// One analysis method.
pub trait Filter: Send {
    fn name(&self) -> &'static str;
    /// Replace the forecast ensemble by the analysis ensemble, in place.   ens: (members, state_dim)
    fn analyse(&mut self, ens: &mut Array2<f64>, input: &AnalysisInput) -> Result<()>;
}

/// Method choice in the config, tagged by `method`.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(tag = "method", rename_all = "snake_case")]
pub enum FilterConfig {
    /// Ensemble transform Kalman filter, symmetric square root (Hunt et al. 2007).
    Etkf(EtkfConfig),
    /// Stochastic EnKF with perturbed observations (Burgers et al. 1998).
    Enkf(EnkfConfig),
    /// Local ETKF with Gaspari–Cohn R-localisation (Hunt et al. 2007).
    Letkf(LetkfConfig),
    /// Ensemble score filter (training-free Gaussian-mixture score, Bao et al. 2024).
    Ensf(EnsfConfig),
    /// Bootstrap particle filter with systematic resampling (+ optional regularisation).
    Pf(PfConfig),
    /// No assimilation: the free-running ensemble, the baseline every filter must beat.
    None(FreeConfig),
}

impl FilterConfig {
    pub fn members(&self) -> usize {
        match self {
            FilterConfig::Etkf(c) => c.members,
            FilterConfig::Enkf(c) => c.members,
            FilterConfig::Letkf(c) => c.members,
            FilterConfig::Pf(c) => c.members,
            FilterConfig::Ensf(c) => c.members,
            FilterConfig::None(c) => c.members,
        }
    }

    /// Change the ensemble size (weak-scaling series, command-line overrides).
    pub fn set_members(&mut self, m: usize) {
        match self {
            FilterConfig::Etkf(c) => c.members = m,
            FilterConfig::Enkf(c) => c.members = m,
            FilterConfig::Letkf(c) => c.members = m,
            FilterConfig::Pf(c) => c.members = m,
            FilterConfig::Ensf(c) => c.members = m,
            FilterConfig::None(c) => c.members = m,
        }
    }

    /// Multiplicative inflation in use (1 for methods without).
    pub fn inflation(&self) -> f64 {
        match self {
            FilterConfig::Etkf(c) => c.inflation,
            FilterConfig::Enkf(c) => c.inflation,
            FilterConfig::Letkf(c) => c.inflation,
            FilterConfig::Pf(_) | FilterConfig::Ensf(_) | FilterConfig::None(_) => 1.0,
        }
    }

    pub fn name(&self) -> &'static str {
        match self {
            FilterConfig::Etkf(_) => "etkf",
            FilterConfig::Enkf(_) => "enkf",
            FilterConfig::Letkf(_) => "letkf",
            FilterConfig::Pf(_) => "pf",
            FilterConfig::Ensf(_) => "ensf",
            FilterConfig::None(_) => "none",
        }
    }

    pub fn validate(&self) -> Result<()> {
        if self.members() < 2 {
            return Err(GendaError::invalid(
                "filter.members",
                format!("need at least 2 members, got {}", self.members()),
            ));
        }
        let infl = self.inflation();
        if let FilterConfig::Letkf(c) = self {
            if !(c.localization_radius.is_finite() && c.localization_radius > 0.0) {
                return Err(GendaError::invalid(
                    "filter.localization_radius",
                    format!("must be positive, got {}", c.localization_radius),
                ));
            }
        }
        if let FilterConfig::Ensf(c) = self {
            if c.steps == 0
                || !(c.eps_alpha > 0.0 && c.eps_alpha < 1.0)
                || !(c.t_min > 0.0 && c.t_min < 1.0)
            {
                return Err(GendaError::invalid(
                    "filter",
                    format!(
                        "ensf needs steps >= 1, 0 < eps_alpha < 1, 0 < t_min < 1 (got {}, {}, {})",
                        c.steps, c.eps_alpha, c.t_min
                    ),
                ));
            }
        }
        if let FilterConfig::Pf(c) = self {
            if !(c.regularization.is_finite() && c.regularization >= 0.0) {
                return Err(GendaError::invalid(
                    "filter.regularization",
                    format!("must be >= 0, got {}", c.regularization),
                ));
            }
        }
        if !(infl.is_finite() && infl > 0.0) {
            return Err(GendaError::invalid(
                "filter.inflation",
                format!("must be positive, got {infl}"),
            ));
        }
        Ok(())
    }

    /// The registry: config → filter.
    pub fn build(&self) -> Box<dyn Filter> {
        match self {
            FilterConfig::Etkf(c) => Box::new(Etkf::new(c.clone())),
            FilterConfig::Enkf(c) => Box::new(Enkf::new(c.clone())),
            FilterConfig::Letkf(c) => Box::new(Letkf::new(c.clone())),
            FilterConfig::Pf(c) => Box::new(ParticleFilter::new(c.clone())),
            FilterConfig::Ensf(c) => Box::new(Ensf::new(c.clone())),
            FilterConfig::None(_) => Box::new(FreeRun),
        }
    }
}
