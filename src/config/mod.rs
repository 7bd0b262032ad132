//! TOML run configuration (serde). Every table rejects unknown keys, so a typo is an error
//! naming the key, not a silently ignored setting.
mod posterior;

use crate::error::{GendaError, Result};
use crate::filters::FilterConfig;
use crate::models::ModelConfig;
use crate::obs::ObsConfig;
pub use crate::overrides::{
    apply_overrides, flatten_overrides, parse_set, read_config_text, set_dotted,
};
pub use crate::values::{fnv1a, ScalarOrVec};
pub use posterior::PosteriorConfig;
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};

/// A whole twin experiment.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    pub experiment: ExperimentConfig,
    pub model: ModelConfig,
    pub initial: InitialConfig,
    pub observations: ObsConfig,
    pub filter: FilterConfig,
    #[serde(default)]
    pub output: OutputConfig,
    #[serde(default)]
    pub checkpoint: CheckpointConfig,
    /// File-based coupling with an external model (`genda couple`).
    #[serde(default)]
    pub coupling: Option<crate::io::coupling::CouplingConfig>,
    /// How MPI ranks split the state (members are split over the remaining ranks).
    #[serde(default)]
    pub parallel: ParallelConfig,
    /// `genda posterior`: one analysis of several methods scored against the true posterior.
    #[serde(default)]
    pub posterior: Option<PosteriorConfig>,
}

/// Domain decomposition. The results do not depend on `domains` (or on the rank count): sums
/// over the state are taken per tile in global tile order, and `tile_size` is science.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct ParallelConfig {
    /// Spatial domains each member's state is split into (ranks = domains × member groups).
    #[serde(default = "one")]
    pub domains: usize,
    /// Tile length in state indices (default: the smallest divisor of the state dimension that
    /// gives at most 64 tiles). Domains own whole tiles, so tiles bound the domain count.
    #[serde(default)]
    pub tile_size: Option<usize>,
}

fn one() -> usize {
    1
}

impl Default for ParallelConfig {
    fn default() -> Self {
        ParallelConfig {
            domains: 1,
            tile_size: None,
        }
    }
}

/// Restart files (HDF5) of a run.
#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct CheckpointConfig {
    /// Checkpoint file (default: the output path with `.ckpt.h5`).
    pub path: Option<PathBuf>,
    /// Write a checkpoint every this many cycles (0: only when stopped by SIGTERM/SIGUSR1).
    #[serde(default)]
    pub every: usize,
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct ExperimentConfig {
    /// Name used in output metadata and default file names.
    pub name: String,
    /// Master seed; every stream is keyed by (seed, purpose, cycle, member).
    #[serde(default)]
    pub seed: u64,
    /// Number of assimilation cycles (observation times).
    pub cycles: usize,
    /// Cycles excluded from time averages (DAPPER's BurnIn, in cycles).
    #[serde(default)]
    pub burn_in: usize,
    /// Model steps the truth is integrated before t = 0.
    #[serde(default)]
    pub spinup_steps: usize,
    /// Model steps each member is integrated from its initial draw before t = 0 (balanced,
    /// climatological members for turbulence; 0 = start from the draws).
    #[serde(default)]
    pub ensemble_spinup_steps: usize,
    /// `genda run`: the members start this many model steps into the first cycle (0 ≤ k <
    /// obs_every), so the first forecast is obs_every − k steps long while the truth runs the
    /// whole cycle (EnSF's published loop analyses after the first step: k = obs_every − 1).
    #[serde(default)]
    pub ensemble_start_step: usize,
    /// `genda run`: replay the truth from an HDF5 trajectory (`genda truth`, or another model's
    /// run in that format) instead of simulating it: cycle c uses the state c · obs_every model
    /// steps after the file's start (its rows are `dt` apart, a divisor of the cycle length).
    /// One costly truth (e.g. a fine-grid `model.truth_grid` run) then serves every method.
    #[serde(default)]
    pub truth_file: Option<std::path::PathBuf>,
    /// `genda truth`: write this many independent states instead of one trajectory, each
    /// drawn as the truth is (the initial distribution and `initial.filter`, sample i from its
    /// own key) and integrated `spinup_steps`: a pre-training set of independent draws (the
    /// MASF code's `dynamics.prior(1000)` integrated 50 steps). Rows of the HDF5 file are the
    /// samples; no NetCDF file is written.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub samples: Option<usize>,
}

/// Gaussian distribution that the truth and the initial ensemble are drawn from
/// (independently), as in DAPPER's `X0 = GaussRV(mu, C)`.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct InitialConfig {
    /// Mean: one number, or a list of the state dimension.
    pub mean: ScalarOrVec,
    /// Variance (diagonal covariance): one number, or a list of the state dimension.
    pub var: ScalarOrVec,
    /// The truth's own initial mean and variance, if it is not drawn like the ensemble (e.g.
    /// EnSF's twin experiments: truth far from the ensemble's N(0, I)).
    #[serde(default)]
    pub truth_mean: Option<ScalarOrVec>,
    #[serde(default)]
    pub truth_var: Option<ScalarOrVec>,
    /// The truth drawn uniformly on [lo, hi) per component instead (EnSF's legacy script:
    /// `10*torch.rand(n)`, i.e. [0, 10)); excludes `truth_mean`/`truth_var`.
    #[serde(default)]
    pub truth_uniform: Option<[f64; 2]>,
    /// Repeat a shorter list up to the state dimension, cut at its end (e.g. an n = 40
    /// Lorenz-96 state tiled to n = 100 or 400, for sweeps over the dimension). The effective
    /// config then holds the full lists.
    #[serde(default)]
    pub tile: bool,
    /// A spatial filter applied to every draw (truth and members) after N(mean, var), e.g.
    /// `filter = { kind = "filtered_velocity", max_speed = 3.0, peak_wavenumber = 4.0 }`:
    /// jax-cfd's `filtered_velocity_field` of the white noise (mean 0, var 1), the MASF code's
    /// initial conditions (velocity-state Kolmogorov model only, one domain).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub filter: Option<InitialFilter>,
}

/// A filter of the initial draws.
#[derive(Debug, Clone, Copy, PartialEq, Deserialize, Serialize)]
#[serde(tag = "kind", rename_all = "snake_case", deny_unknown_fields)]
pub enum InitialFilter {
    /// Divergence-free velocity, log-normal spectrum peaked at `peak_wavenumber`, largest speed
    /// `max_speed`.
    FilteredVelocity {
        max_speed: f64,
        peak_wavenumber: f64,
    },
}

impl InitialFilter {
    /// Filter one whole draw `x` of `model`'s state in place.
    pub fn apply(&self, model: &crate::models::ModelConfig, x: &mut [f64]) -> Result<()> {
        match (*self, model) {
            (
                InitialFilter::FilteredVelocity {
                    max_speed,
                    peak_wavenumber,
                },
                crate::models::ModelConfig::Kolmogorov(c),
            ) if c.state == crate::models::FlowState::Velocity => {
                let m = model.build_velocity_form().expect("velocity state");
                m.filter_initial(x, max_speed, peak_wavenumber);
                Ok(())
            }
            _ => Err(GendaError::invalid(
                "initial.filter",
                "filtered_velocity needs model.kind = \"kolmogorov\" with state = \"velocity\"",
            )),
        }
    }

    fn validate(&self) -> Result<()> {
        let InitialFilter::FilteredVelocity {
            max_speed,
            peak_wavenumber,
        } = *self;
        if !(max_speed.is_finite()
            && max_speed > 0.0
            && peak_wavenumber.is_finite()
            && peak_wavenumber > 0.0)
        {
            return Err(GendaError::invalid(
                "initial.filter",
                "max_speed and peak_wavenumber must be positive and finite",
            ));
        }
        Ok(())
    }
}

impl InitialConfig {
    /// The truth's initial state x₀ ~ N(mean, var) from the truth stream of `seed` (the one draw
    /// every twin uses, so `genda run`, `genda cg` and `genda smooth` share a truth).
    pub fn draw_truth(&self, n: usize, seed: u64) -> Result<Vec<f64>> {
        self.draw_truth_slab(n, seed, 0..n)
    }

    /// Components `range` of `draw_truth(n, seed)` (a domain draws its slab of the same state).
    pub fn draw_truth_slab(
        &self,
        n: usize,
        seed: u64,
        range: std::ops::Range<usize>,
    ) -> Result<Vec<f64>> {
        self.draw_truth_keyed(n, seed, range, 0)
    }

    /// Independent sample `k` ≥ 1 of the truth's initial distribution (`experiment.samples`;
    /// the truth itself is key 0).
    pub fn draw_truth_sample(
        &self,
        model: &crate::models::ModelConfig,
        seed: u64,
        k: u64,
    ) -> Result<Vec<f64>> {
        let n = model.dim();
        let mut x = self.draw_truth_keyed(n, seed, 0..n, k)?;
        if let Some(f) = &self.filter {
            f.apply(model, &mut x)?;
        }
        Ok(x)
    }

    fn draw_truth_keyed(
        &self,
        n: usize,
        seed: u64,
        range: std::ops::Range<usize>,
        key: u64,
    ) -> Result<Vec<f64>> {
        let mut x = vec![0.0; range.len()];
        if let Some([lo, hi]) = self.truth_uniform {
            crate::rng::fill_uniform(
                seed,
                crate::rng::Purpose::TruthInit,
                key,
                1,
                range.start,
                &mut x,
            );
            x.iter_mut().for_each(|u| *u = lo + (hi - lo) * *u);
            return Ok(x);
        }
        let (m, v) = self.truth_moments(n)?;
        if self.filter.is_some() && range != (0..n) {
            return Err(GendaError::invalid(
                "initial.filter",
                "a filtered draw needs the whole state on one domain (parallel.domains = 1)",
            ));
        }
        crate::rng::fill_standard_normal(
            seed,
            crate::rng::Purpose::TruthInit,
            key,
            0,
            range.start,
            &mut x,
        );
        for (k, x) in x.iter_mut().enumerate() {
            let i = range.start + k;
            *x = m[i] + v[i].sqrt() * *x;
        }
        Ok(x)
    }

    /// Mean and variance the truth is drawn from.
    pub fn truth_moments(&self, n: usize) -> Result<(Vec<f64>, Vec<f64>)> {
        let m = self.truth_mean.as_ref().unwrap_or(&self.mean);
        let v = self.truth_var.as_ref().unwrap_or(&self.var);
        Ok((
            m.expand(n, "initial.truth_mean")?,
            v.expand(n, "initial.truth_var")?,
        ))
    }
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct OutputConfig {
    /// NetCDF file for the run (written to a temporary name, renamed when complete).
    #[serde(default = "default_output_path")]
    pub path: PathBuf,
    /// Also store the full forecast and analysis ensembles (time, member, x).
    #[serde(default)]
    pub save_ensemble: bool,
    /// Distributional scores of the analysis ensemble: CRPS every cycle (`crps_analysis`) and a
    /// rank histogram over the cycles after the burn-in (`rank_histogram`, N + 1 bins). Costs a
    /// sort of N members per variable and cycle.
    #[serde(default)]
    pub distributional_scores: bool,
    /// Also score every model step between the scored analyses: `rmse_path`, the RMSE of the
    /// ensemble mean pooled over the analysis states and the forecast states between them, from
    /// the first scored analysis to the last (the MASF code's `rmse_overall`: steps 50..100 of
    /// its Kolmogorov case, 6 analyses and 45 forecast states). The forecast then advances one
    /// model step at a time (for the 2-D velocity state this differs from whole-cycle steps by
    /// rounding). Needs a simulated truth (not `experiment.truth_file`).
    #[serde(default, skip_serializing_if = "is_false")]
    pub path_rmse: bool,
    /// Write every k-th cycle only (the time means still cover every cycle); 1: all.
    #[serde(default = "one", skip_serializing_if = "is_one")]
    pub every: usize,
    /// The field variables to write, of `truth`, `observations`, `forecast_mean`,
    /// `analysis_mean` (empty: all); the per-cycle statistics are always written.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub fields: Vec<String>,
    /// Deflate level 1–9 of the time series (chunks of one time row, and one member of the
    /// ensembles); 0 (default): uncompressed, contiguous.
    #[serde(default, skip_serializing_if = "is_zero_u8")]
    pub compression: u8,
}

fn is_one(v: &usize) -> bool {
    *v == 1
}

fn is_zero_u8(v: &u8) -> bool {
    *v == 0
}

impl OutputConfig {
    /// How the run file is laid out.
    pub fn layout(&self) -> crate::io::OutputLayout {
        crate::io::OutputLayout {
            every: self.every,
            fields: self.fields.clone(),
            compression: self.compression,
        }
    }

    fn validate(&self) -> Result<()> {
        if self.every == 0 {
            return Err(GendaError::invalid("output.every", "must be at least 1"));
        }
        if self.compression > 9 {
            return Err(GendaError::invalid(
                "output.compression",
                format!("deflate level {} is not in 0..=9", self.compression),
            ));
        }
        for f in &self.fields {
            if !crate::io::FIELD_VARIABLES.contains(&f.as_str()) {
                return Err(GendaError::invalid(
                    "output.fields",
                    format!(
                        "unknown variable `{f}`; choose from {:?}",
                        crate::io::FIELD_VARIABLES
                    ),
                ));
            }
        }
        Ok(())
    }
}

fn is_false(v: &bool) -> bool {
    !*v
}

fn default_output_path() -> PathBuf {
    PathBuf::from("output/genda_run.nc")
}

impl Default for OutputConfig {
    fn default() -> Self {
        OutputConfig {
            path: default_output_path(),
            save_ensemble: false,
            distributional_scores: false,
            path_rmse: false,
            every: 1,
            fields: Vec::new(),
            compression: 0,
        }
    }
}

impl Config {
    /// Read, parse and validate a config file.
    pub fn from_file(path: &Path) -> Result<Self> {
        let text = read_config_text(path)?;
        Self::from_toml(&text, &path.display().to_string())
    }

    /// Read a config file with `--set key=value` overrides applied (see `apply_overrides`),
    /// then parse and validate it: an override is type-checked like the file, and an unknown
    /// key is refused.
    pub fn from_file_with(path: &Path, sets: &[String]) -> Result<Self> {
        if sets.is_empty() {
            return Self::from_file(path);
        }
        let text = read_config_text(path)?;
        let origin = format!("{} with --set {}", path.display(), sets.join(" --set "));
        let text = apply_overrides(&text, sets).map_err(|msg| GendaError::Config {
            path: origin.clone(),
            msg,
        })?;
        Self::from_toml(&text, &origin)
    }

    /// Parse and validate TOML text; `origin` names the source in error messages.
    pub fn from_toml(text: &str, origin: &str) -> Result<Self> {
        let mut cfg: Config = toml::from_str(text).map_err(|e| GendaError::Config {
            path: origin.to_string(),
            msg: e.to_string().trim_end().to_string(),
        })?;
        if cfg.initial.tile {
            let n = cfg.model.dim();
            let i = &mut cfg.initial;
            let tiled = i
                .mean
                .tiled(n, "initial.mean")
                .and_then(|_| i.var.tiled(n, "initial.var"))
                .and_then(|_| {
                    i.truth_mean
                        .as_mut()
                        .map_or(Ok(()), |m| m.tiled(n, "initial.truth_mean"))
                })
                .and_then(|_| {
                    i.truth_var
                        .as_mut()
                        .map_or(Ok(()), |m| m.tiled(n, "initial.truth_var"))
                });
            tiled.map_err(|e| GendaError::Config {
                path: origin.to_string(),
                msg: e.to_string(),
            })?;
        }
        cfg.validate().map_err(|e| GendaError::Config {
            path: origin.to_string(),
            msg: e.to_string(),
        })?;
        Ok(cfg)
    }

    /// The config as TOML text (stored in output metadata).
    pub fn to_toml(&self) -> String {
        toml::to_string(self).unwrap_or_else(|e| format!("# could not serialise config: {e}"))
    }

    /// Where checkpoints go.
    pub fn checkpoint_path(&self) -> PathBuf {
        self.checkpoint
            .path
            .clone()
            .unwrap_or_else(|| self.output.path.with_extension("ckpt.h5"))
    }

    /// FNV-1a hash of the science settings (everything but [output] and [checkpoint]): a
    /// checkpoint only restarts the run it belongs to.
    pub fn science_hash(&self) -> String {
        let mut c = self.clone();
        c.output = OutputConfig::default();
        c.checkpoint = CheckpointConfig::default();
        c.coupling = None;
        c.posterior = None;
        c.parallel.domains = 1;
        format!("{:016x}", fnv1a(c.to_toml().bytes()))
    }

    /// Check every value that serde's types cannot express.
    pub fn validate(&self) -> Result<()> {
        self.output.validate()?;
        let e = &self.experiment;
        if e.cycles == 0 {
            return Err(GendaError::invalid(
                "experiment.cycles",
                "must be at least 1",
            ));
        }
        if e.burn_in >= e.cycles {
            return Err(GendaError::invalid(
                "experiment.burn_in",
                format!(
                    "{} must be smaller than experiment.cycles = {}",
                    e.burn_in, e.cycles
                ),
            ));
        }
        if self.output.path_rmse && e.truth_file.is_some() {
            return Err(GendaError::invalid(
                "output.path_rmse",
                "scores every model step, which a replayed truth (experiment.truth_file) does not hold; simulate the truth in the run",
            ));
        }
        if e.samples == Some(0) || (e.samples.is_some() && self.model.has_fine_truth()) {
            return Err(GendaError::invalid(
                "experiment.samples",
                "must be at least 1, and the samples are drawn on the members' grid (no model.truth_grid)",
            ));
        }
        if e.ensemble_start_step >= self.observations.obs_every {
            return Err(GendaError::invalid(
                "experiment.ensemble_start_step",
                format!(
                    "{} must be smaller than observations.obs_every = {}",
                    e.ensemble_start_step, self.observations.obs_every
                ),
            ));
        }
        self.model.validate()?;
        let n = self.model.dim();
        if let Some(f) = &self.initial.filter {
            f.validate()?;
            if self.model.build_velocity_form().is_none() {
                f.apply(&self.model, &mut [])?;
            }
            if self.parallel.domains > 1 {
                return Err(GendaError::invalid(
                    "initial.filter",
                    "a filtered draw needs the whole state on one domain (parallel.domains = 1)",
                ));
            }
        }
        let mean = self.initial.mean.expand(n, "initial.mean")?;
        let var = self.initial.var.expand(n, "initial.var")?;
        let (tm, tv) = self.initial.truth_moments(n)?;
        if tm.iter().chain(&tv).any(|v| !v.is_finite()) || tv.iter().any(|v| *v < 0.0) {
            return Err(GendaError::invalid(
                "initial.truth_mean / initial.truth_var",
                "must be finite, variances >= 0",
            ));
        }
        if let Some([lo, hi]) = self.initial.truth_uniform {
            if !(lo.is_finite() && hi.is_finite() && lo < hi) {
                return Err(GendaError::invalid(
                    "initial.truth_uniform",
                    format!("needs finite lo < hi, got [{lo}, {hi}]"),
                ));
            }
            if self.initial.truth_mean.is_some() || self.initial.truth_var.is_some() {
                return Err(GendaError::invalid(
                    "initial.truth_uniform",
                    "excludes initial.truth_mean / initial.truth_var (the truth is drawn one way)",
                ));
            }
        }
        if mean.iter().any(|v| !v.is_finite()) {
            return Err(GendaError::invalid("initial.mean", "must be finite"));
        }
        if var.iter().any(|v| !v.is_finite() || *v < 0.0) {
            return Err(GendaError::invalid(
                "initial.var",
                "must be finite and >= 0",
            ));
        }
        let fields = self.model.fields();
        if self.observations.grid_stride.is_some() && self.observations.fields != fields {
            return Err(GendaError::invalid(
                "observations.fields",
                format!(
                    "is {}, but the model's state stacks {fields} grids (set observations.fields = {fields})",
                    self.observations.fields
                ),
            ));
        }
        self.observations.validate(n)?;
        if let crate::filters::FilterConfig::Letkf(c) = &self.filter {
            if c.geometry == crate::filters::Geometry::Torus && c.fields != fields {
                return Err(GendaError::invalid(
                    "filter.fields",
                    format!(
                        "is {}, but the model's state stacks {fields} grids (set filter.fields = {fields})",
                        c.fields
                    ),
                ));
            }
        }
        self.filter.validate()?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const GOOD: &str = r#"
[experiment]
name = "t"
cycles = 10
[model]
kind = "lorenz63"
dt = 0.01
[initial]
mean = [1.0, 2.0, 3.0]
var = 2.0
[observations]
operator = "identity"
error_var = 2.0
obs_every = 25
[filter]
method = "etkf"
members = 10
"#;

    #[test]
    fn parses_good_config() {
        let c = Config::from_toml(GOOD, "test").unwrap();
        assert_eq!(c.model.dim(), 3);
        assert_eq!(c.filter.members(), 10);
    }

    #[test]
    fn unknown_keys_are_errors() {
        for (from, to) in [
            ("cycles = 10", "cycles = 10\ncylces = 3"),
            ("dt = 0.01", "dt = 0.01\nsigmaa = 3.0"),
            ("members = 10", "members = 10\ninflaton = 1.1"),
            ("obs_every = 25", "obs_every = 25\nevery = 2"),
        ] {
            let bad = GOOD.replace(from, to);
            let err = Config::from_toml(&bad, "test").unwrap_err().to_string();
            assert!(err.contains("unknown field"), "{err}");
        }
    }

    #[test]
    fn set_overrides_any_key_type_checked() {
        let sets = |v: &[&str]| v.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        let c = Config::from_toml(
            &apply_overrides(
                GOOD,
                &sets(&[
                    "filter.members=50",
                    "filter.inflation=1.05",
                    "experiment.name=renamed",
                    "initial.var=[1.0, 2.0, 3.0]",
                    "output.save_ensemble=true",
                ]),
            )
            .unwrap(),
            "test",
        )
        .unwrap();
        assert_eq!(c.filter.members(), 50);
        assert_eq!(c.filter.inflation(), 1.05);
        assert_eq!(c.experiment.name, "renamed");
        assert!(c.output.save_ensemble);
        // A switch of method takes the method's own keys.
        let c = Config::from_toml(
            &apply_overrides(GOOD, &sets(&["filter.method=enkf"])).unwrap(),
            "test",
        )
        .unwrap();
        assert_eq!(c.filter.name(), "enkf");
        for (set, needle) in [
            ("filter.membrs=3", "unknown field `membrs`"),
            ("filter.members=many", "invalid type"),
            ("experiment.cycles.x=3", "is a value, not a table"),
            ("filter.members", "expected key=value"),
            ("nosuch.key=1", "unknown field `nosuch`"),
        ] {
            let err = apply_overrides(GOOD, &sets(&[set]))
                .map_err(|e| GendaError::invalid("set", e))
                .and_then(|t| Config::from_toml(&t, "test"))
                .unwrap_err()
                .to_string();
            assert!(err.contains(needle), "--set {set}: {err}");
        }
    }

    #[test]
    fn bad_values_are_errors() {
        for (from, to, needle) in [
            ("dt = 0.01", "dt = -0.01", "dt"),
            ("obs_every = 25", "obs_every = 0", "obs_every"),
            (
                "mean = [1.0, 2.0, 3.0]",
                "mean = [1.0, 2.0]",
                "initial.mean",
            ),
            ("members = 10", "members = 1", "members"),
            ("method = \"etkf\"", "method = \"etfk\"", "etfk"),
        ] {
            let bad = GOOD.replace(from, to);
            let err = Config::from_toml(&bad, "test").unwrap_err().to_string();
            assert!(err.contains(needle), "{err} should mention {needle}");
        }
    }
}
