//! Analysis methods behind one `Filter` trait. A filter sees all members of its part of the
//! state as an array `(members, local columns)` — a `LocalDomain`, the whole state on one rank —
//! plus the observations located there, and a `Reducer` for sums over the whole state. It never
//! knows how many ranks the run uses, never writes files and never touches MPI (the driver in
//! `experiment` and the `parallel` room do that).
pub mod cg;
mod core;
mod daisi;
pub mod eigen;
mod enkf;
mod ensf;
mod etkf;
mod free;
mod kde;
mod letkf;
mod masf;
mod omega;
mod particle;
mod sda;

pub use self::core::{
    anomalies, ensemble_mean, inflate, mean_preserving_rotation, EnsembleSpace, InflateAt,
};
pub use daisi::{
    daisi_analysis, Daisi, DaisiConfig, DaisiGuidance, GaussianPrior, InterpolantPrior,
};
pub use enkf::{Enkf, EnkfConfig, PerturbationDraws, Perturbations};
pub use ensf::{
    ensf_seed, ensf_terminal, mixture_score, Ensf, EnsfConfig, EnsfPrior, EnsfTerminal, Precision,
};
pub use etkf::{Etkf, EtkfConfig};
pub use free::{FreeConfig, FreeRun};
pub use kde::{BandwidthRule, KdeConfig, KdeDiffusion, KdeSampler, KdeTerminal};
pub use letkf::{gaspari_cohn, Geometry, Letkf, LetkfConfig, LocalizationScale};
pub use masf::{
    masf_seed, Masf, MasfConfig, MasfPrior, MasfSampler, Prediction, SfProcess, Standardise,
    Variant,
};
pub use omega::{Omega, OmegaConfig};
pub use particle::{
    pf_analysis, pf_draws, systematic_resample, unbias_var, Jitter, ParticleFilter, PfConfig,
    PfDraws, Resampling,
};
pub use sda::{Sda, SdaConfig};

use crate::error::{GendaError, Result};
use crate::models::Model;
use crate::obs::ObsOperator;
use crate::parallel::{Reducer, SerialReducer};
use crate::state::SavedState;
use ndarray::Array2;
use serde::{Deserialize, Serialize};
use std::ops::Range;
use std::path::PathBuf;

/// The part of a periodic 1-D state index space a filter works on: local column k is global
/// index `(ext_start + k) mod n_global`. Columns `own` are this domain's; the others are a halo
/// (read-only context, e.g. for localisation) that the driver discards after the analysis.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LocalDomain {
    pub n_global: usize,
    pub ext_start: usize,
    pub own: Range<usize>,
    /// The owned tiles in global order (local column ranges, covering `own`): the units of
    /// every state sum, so that sums do not depend on the layout.
    pub tiles: Vec<Range<usize>>,
    /// The local columns are the whole periodic state (one domain).
    pub whole: bool,
}

impl LocalDomain {
    /// The whole state of dimension n as one tile.
    pub fn whole(n: usize) -> Self {
        LocalDomain {
            n_global: n,
            ext_start: 0,
            own: 0..n,
            tiles: vec![0..n],
            whole: true,
        }
    }

    /// Global state index of local column k.
    pub fn global(&self, k: usize) -> usize {
        (self.ext_start + k) % self.n_global
    }

    /// Observation index ranges (into observations sorted by local column `locs`) of each
    /// owned tile.
    pub fn obs_per_tile(&self, locs: &[usize]) -> Vec<Range<usize>> {
        self.tiles
            .iter()
            .map(|t| locs.partition_point(|&l| l < t.start)..locs.partition_point(|&l| l < t.end))
            .collect()
    }
}

/// The forecast of this cycle step by step, for methods that need each member's path (Ω's
/// per-member conditional-Gaussian statistics): `states[s]` is the whole ensemble
/// (members, local columns) after s model steps of the cycle, `states[0]` the previous analysis
/// and the last entry the forecast being analysed. The driver supplies it when
/// `Filter::needs_forecast_path` says so.
pub struct ForecastPath<'a> {
    pub model: &'a dyn Model,
    pub states: &'a [Array2<f64>],
}

/// Everything an analysis needs besides the ensemble.
pub struct AnalysisInput<'a> {
    /// Observations located in the local columns.   (obs_dim)
    pub obs: &'a [f64],
    /// Operator on the local columns; `locations()` are local column indices, increasing.
    pub obs_operator: &'a dyn ObsOperator,
    /// Diagonal of R.   (obs_dim)
    pub obs_error_var: &'a [f64],
    /// Cycle index (1-based), part of every random-stream key.
    pub cycle: usize,
    /// Master seed of the run.
    pub seed: u64,
    /// Global index of the first local observation (keys per-observation random numbers;
    /// methods that draw observation noise use halo-free domains).
    pub obs_offset: usize,
    pub domain: LocalDomain,
    pub reducer: &'a dyn Reducer,
    /// This cycle's member paths, when the method asked for them.
    pub forecast: Option<ForecastPath<'a>>,
    /// The ranks that run this analysis alike, each with every member on the same columns
    /// (a whole-state method: every rank); data-parallel training sums its gradients over them.
    pub replicas: &'a dyn crate::parallel::Collectives,
}

impl<'a> AnalysisInput<'a> {
    /// The whole state on one rank (library use, tests).
    pub fn whole(
        obs: &'a [f64],
        obs_operator: &'a dyn ObsOperator,
        obs_error_var: &'a [f64],
        cycle: usize,
        seed: u64,
    ) -> Self {
        AnalysisInput {
            obs,
            obs_operator,
            obs_error_var,
            cycle,
            seed,
            obs_offset: 0,
            domain: LocalDomain::whole(obs_operator.state_dim()),
            reducer: &SerialReducer,
            forecast: None,
            replicas: &crate::parallel::SerialComm,
        }
    }

    /// Dimension checks every method needs.
    pub fn check(&self, ens: &Array2<f64>, method: &str) -> Result<()> {
        let h = self.obs_operator;
        let p = h.obs_dim();
        if ens.ncols() != h.state_dim() {
            return Err(GendaError::Dimension {
                what: format!("{method}: ensemble columns vs observation operator state size"),
                expected: h.state_dim(),
                got: ens.ncols(),
            });
        }
        if self.obs.len() != p || self.obs_error_var.len() != p {
            return Err(GendaError::Dimension {
                what: format!("{method}: observation vector / error variances vs operator output"),
                expected: p,
                got: if self.obs.len() != p {
                    self.obs.len()
                } else {
                    self.obs_error_var.len()
                },
            });
        }
        if self.domain.own.end > ens.ncols() {
            return Err(GendaError::Dimension {
                what: format!("{method}: owned columns vs ensemble columns"),
                expected: self.domain.own.end,
                got: ens.ncols(),
            });
        }
        Ok(())
    }
}

/// The state components a linear observation operator selects (y_i = x[locations[i]]), or
/// None when it is not such a selection (nonlinear, or a weighted/block operator).
pub fn selected_components(h: &dyn ObsOperator) -> Option<Vec<usize>> {
    let locs = h.locations().to_vec();
    let probe: Vec<f64> = (0..h.state_dim()).map(|k| 0.37 + k as f64 * 1.13).collect();
    let mut y = vec![0.0; h.obs_dim()];
    h.apply(&probe, &mut y);
    (h.is_linear()
        && locs.len() == y.len()
        && locs
            .iter()
            .zip(&y)
            .all(|(&l, &v)| (probe[l] - v).abs() < 1e-12))
    .then_some(locs)
}

/// A file a method wants written — MASF/SF's pre-trained prior (`prior_weights`) — as data and
/// the function that writes it (temporary name, then rename). A method never writes files
/// itself: the driver writes these on one rank, after every rank's analysis succeeded, so that
/// ranks running the same analysis (member groups) do not race on one path.
pub struct FileOutput {
    pub path: PathBuf,
    /// What the file is, for the log ("masf: the pre-trained prior network").
    pub what: String,
    pub write: Box<dyn FnOnce() -> Result<()> + Send>,
}

/// Write `outputs` (on the rank that writes files).
pub fn write_outputs(outputs: Vec<FileOutput>) -> Result<()> {
    for o in outputs {
        (o.write)()?;
        log::info!("{} saved to {}", o.what, o.path.display());
    }
    Ok(())
}

/// What a method needs from the layout, the model and the observations: the one layout check
/// (`experiment::check_layout`) reads it, so the driver never asks which method it runs.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Needs {
    /// State columns on each side of a domain the method reads (localisation reach); the
    /// driver supplies them as a halo. 0 for methods that only need tile sums.
    pub halo: usize,
    /// Every model step of each member's forecast (`AnalysisInput::forecast`); such methods
    /// work on the whole state.
    pub forecast_path: bool,
    /// The whole state on one rank, and why (refuses `parallel.domains` > 1).
    pub whole_state: Option<&'static str>,
    /// A conditionally Gaussian model [u; v] (Ω).
    pub conditional_gaussian: bool,
    /// A linear observation operator that selects state components (y = x[locations]), with
    /// the sentence that says so to the user.
    pub component_selection: Option<&'static str>,
}

/// One analysis method.
pub trait Filter: Send {
    fn name(&self) -> &'static str;
    /// What the method needs from the layout, the model and the observations (`Needs`), for
    /// a state of `n_global`; nothing by default (tile sums on any layout).
    fn needs(&self, _n_global: usize) -> Needs {
        Needs::default()
    }
    /// Open and check the files the method reads (weights, training data) for a state of `n`,
    /// before any model step: a wrong file is an error at the start, not after the spin-up.
    /// Data files are read through `files` (the driver's I/O; filters import none).
    fn prepare(&mut self, _n: usize, _files: &dyn DataFiles) -> Result<()> {
        Ok(())
    }
    /// Clip the forecast members to ±c after every model step (EnSF's published code); the
    /// driver applies it to the members, never to the truth.
    fn forecast_clip(&self) -> Option<f64> {
        None
    }
    /// Replace the forecast ensemble by the analysis ensemble in the owned columns, in place.
    /// ens: (members, local columns)
    fn analyse(&mut self, ens: &mut Array2<f64>, input: &AnalysisInput) -> Result<()>;
    /// Normalised member weights (global member order, the same on every rank) when the
    /// ensemble is a weighted sample (the particle filter between resamplings); `None` means
    /// equal weights. The driver's statistics (mean, spread) use them, as DAPPER's `stats.assess(…, w=w)`.
    fn weights(&self) -> Option<&[f64]> {
        None
    }
    /// The weighted sample that the analysis statistics describe, when it is not the
    /// equally weighted analysis ensemble: the particle filter is assessed, as DAPPER's
    /// `trigger_resampling` does, on the reweighted ensemble before resampling and jitter.
    /// (members, local columns) and the weights.
    fn analysis_sample(&self) -> Option<(ndarray::ArrayView2<'_, f64>, &[f64])> {
        None
    }
    /// Files the last analysis produced for the driver to write (`FileOutput`); taken once.
    fn take_outputs(&mut self) -> Vec<FileOutput> {
        Vec::new()
    }
    /// The method's own state that a restart needs besides the ensemble (particle weights,
    /// networks with their optimiser moments, observation histories, per-member moments), as
    /// named arrays of numbers; empty for stateless methods. Stored in the checkpoint.
    fn save_state(&self) -> Result<SavedState> {
        Ok(SavedState::new())
    }
    /// Restore what `save_state` returned (from a checkpoint of the same config); after it the
    /// next analysis is the one the uninterrupted run makes, bit for bit.
    fn restore_state(&mut self, state: SavedState) -> Result<()> {
        state.finish(self.name())
    }
}

/// The data files a method reads, supplied by the driver: the filters room imports no I/O, and
/// a method gets its training data when it is prepared.
pub trait DataFiles {
    /// The states of an HDF5 trajectory dataset (`genda truth`'s `trajectory`), row-major, and
    /// the state size.
    fn trajectory(&self, path: &std::path::Path) -> Result<(Vec<f64>, usize)>;
    /// A trajectory's (rows, state size), without reading it.
    fn trajectory_shape(&self, path: &std::path::Path) -> Result<(usize, usize)>;
    /// Rows `rows` of a trajectory, row-major.
    fn trajectory_rows(
        &self,
        path: &std::path::Path,
        rows: std::ops::Range<usize>,
    ) -> Result<Vec<f64>>;
    /// This rank's place (rank, ranks) among the ranks that run the analysis alike
    /// (`AnalysisInput::replicas`): data-parallel training reads only this rank's shards.
    fn replica(&self) -> (usize, usize);
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
    /// Closed-form conditional diffusion with a KDE of (state, predicted measurement)
    /// (training-free, Binder & Oberai 2026).
    KdeDiffusion(KdeConfig),
    /// Ω: conditional-Gaussian mixture baseline of each member's path + residual score learned
    /// by denoising score matching from the ensemble trajectories + annealed Langevin.
    Omega(OmegaConfig),
    /// MASF (Yoon, Kim & Kim 2026): measurement-aware forward process, exact likelihood,
    /// learned prior score.
    Masf(MasfConfig),
    /// Score filter (Bao, Zhang & Zhang): standard forward process, damped likelihood, learned
    /// prior score on the same network and sampler as MASF.
    Sf(MasfConfig),
    /// DAISI (Andrae et al. 2025): pre-trained interpolant prior, forecast members inverted to
    /// latents, guided sampling forward from them.
    Daisi(DaisiConfig),
    /// SDA (Rozet & Louppe 2023): whole-window trajectory sampling with a pre-trained window
    /// score and observation guidance, slid over the run.
    Sda(SdaConfig),
    /// No assimilation: the free-running ensemble, the baseline every filter must beat.
    None(FreeConfig),
}

/// What every method's config states in one place: its ensemble size, the multiplicative
/// inflation of the forecast anomalies it applies (1 where it applies none: the answer is
/// written beside each method's fields, not defaulted), and its own checks. `FilterConfig`
/// reaches every method through this, so the shared settings cannot drift per accessor.
pub trait MethodConfig {
    fn members(&self) -> usize;
    fn set_members(&mut self, m: usize);
    fn inflation(&self) -> f64;
    /// The method's own checks (`method`: its name in the config, for the messages).
    fn validate(&self, method: &str) -> Result<()>;
}

/// `MethodConfig` for a config with a `members` field: `$inflation` is the inflation it
/// applies (`|c| c.inflation`, or `|_| 1.0` where the method applies none), `$check` the method's
/// own validation (`|c, method| ...`).
macro_rules! method_config {
    ($t:ty, $inflation:expr, $check:expr) => {
        impl MethodConfig for $t {
            fn members(&self) -> usize {
                self.members
            }
            fn set_members(&mut self, m: usize) {
                self.members = m;
            }
            fn inflation(&self) -> f64 {
                let inflation: fn(&$t) -> f64 = $inflation;
                inflation(self)
            }
            fn validate(&self, method: &str) -> Result<()> {
                let check: fn(&$t, &str) -> Result<()> = $check;
                check(self, method)
            }
        }
    };
}

method_config!(EtkfConfig, |c| c.inflation, |_, _| Ok(()));
method_config!(EnkfConfig, |c| c.inflation, |c, _| {
    if c.gain_jitter.is_finite() && c.gain_jitter >= 0.0 {
        Ok(())
    } else {
        Err(GendaError::invalid(
            "filter.gain_jitter",
            format!("must be >= 0, got {}", c.gain_jitter),
        ))
    }
});
method_config!(LetkfConfig, |c| c.inflation, |c, _| validate_letkf(c));
method_config!(MasfConfig, |c| c.inflation, |c, m| c.validate(m));
method_config!(DaisiConfig, |c| c.inflation, |c, _| c.validate());
method_config!(EnsfConfig, |_| 1.0, |c, _| c.validate());
method_config!(PfConfig, |_| 1.0, |c, _| c.validate());
method_config!(KdeConfig, |_| 1.0, |c, _| c.validate());
method_config!(OmegaConfig, |_| 1.0, |c, _| c.validate());
method_config!(SdaConfig, |_| 1.0, |c, _| c.validate());
method_config!(FreeConfig, |_| 1.0, |_, _| Ok(()));

fn validate_letkf(c: &LetkfConfig) -> Result<()> {
    if let Some(ry) = c.localization_radius_y {
        if c.geometry != Geometry::Torus {
            return Err(GendaError::invalid(
                "filter.localization_radius_y",
                "only the 2-D torus geometry has a y direction; remove it or set geometry = \"torus\"",
            ));
        }
        if !(ry.is_finite() && ry > 0.0) {
            return Err(GendaError::invalid(
                "filter.localization_radius_y",
                format!("must be positive, got {ry}"),
            ));
        }
    }
    if (c.geometry == Geometry::LayeredRing) != c.ring_size.is_some() {
        return Err(GendaError::invalid(
            "filter.ring_size",
            "is required with geometry = \"layered_ring\" (the number of ring points K) and only there",
        ));
    }
    if c.fields == 0 || (c.fields > 1 && c.geometry != Geometry::Torus) {
        return Err(GendaError::invalid(
            "filter.fields",
            "must be >= 1, and stacked fields (> 1) need geometry = \"torus\"",
        ));
    }
    if !(c.jitter.is_finite() && c.jitter >= 0.0) {
        return Err(GendaError::invalid(
            "filter.jitter",
            format!("must be >= 0, got {}", c.jitter),
        ));
    }
    if !(c.localization_radius.is_finite() && c.localization_radius > 0.0) {
        return Err(GendaError::invalid(
            "filter.localization_radius",
            format!("must be positive, got {}", c.localization_radius),
        ));
    }
    Ok(())
}

impl FilterConfig {
    /// The chosen method's config.
    pub fn method(&self) -> &dyn MethodConfig {
        match self {
            FilterConfig::Etkf(c) => c,
            FilterConfig::Enkf(c) => c,
            FilterConfig::Letkf(c) => c,
            FilterConfig::Pf(c) => c,
            FilterConfig::Ensf(c) => c,
            FilterConfig::KdeDiffusion(c) => c,
            FilterConfig::Omega(c) => c,
            FilterConfig::Masf(c) | FilterConfig::Sf(c) => c,
            FilterConfig::Daisi(c) => c,
            FilterConfig::Sda(c) => c,
            FilterConfig::None(c) => c,
        }
    }

    fn method_mut(&mut self) -> &mut dyn MethodConfig {
        match self {
            FilterConfig::Etkf(c) => c,
            FilterConfig::Enkf(c) => c,
            FilterConfig::Letkf(c) => c,
            FilterConfig::Pf(c) => c,
            FilterConfig::Ensf(c) => c,
            FilterConfig::KdeDiffusion(c) => c,
            FilterConfig::Omega(c) => c,
            FilterConfig::Masf(c) | FilterConfig::Sf(c) => c,
            FilterConfig::Daisi(c) => c,
            FilterConfig::Sda(c) => c,
            FilterConfig::None(c) => c,
        }
    }

    pub fn members(&self) -> usize {
        self.method().members()
    }

    /// Change the ensemble size (weak-scaling series, command-line overrides).
    pub fn set_members(&mut self, m: usize) {
        self.method_mut().set_members(m)
    }

    /// The multiplicative inflation the method applies (1: none).
    pub fn inflation(&self) -> f64 {
        self.method().inflation()
    }

    pub fn name(&self) -> &'static str {
        match self {
            FilterConfig::Etkf(_) => "etkf",
            FilterConfig::Enkf(_) => "enkf",
            FilterConfig::Letkf(_) => "letkf",
            FilterConfig::Pf(_) => "pf",
            FilterConfig::Ensf(_) => "ensf",
            FilterConfig::KdeDiffusion(_) => "kde_diffusion",
            FilterConfig::Omega(_) => "omega",
            FilterConfig::Masf(_) => "masf",
            FilterConfig::Sf(_) => "sf",
            FilterConfig::Daisi(_) => "daisi",
            FilterConfig::Sda(_) => "sda",
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
        self.method().validate(self.name())?;
        let infl = self.inflation();
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
            FilterConfig::KdeDiffusion(c) => Box::new(KdeDiffusion::new(c.clone())),
            FilterConfig::Omega(c) => Box::new(Omega::new(c.clone())),
            FilterConfig::Masf(c) => Box::new(Masf::new(c.clone(), true)),
            FilterConfig::Sf(c) => Box::new(Masf::new(c.clone(), false)),
            FilterConfig::Daisi(c) => Box::new(Daisi::new(c.clone())),
            FilterConfig::Sda(c) => Box::new(Sda::new(c.clone())),
            FilterConfig::None(_) => Box::new(FreeRun),
        }
    }
}
