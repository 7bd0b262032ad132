//! TOML run configuration (serde). Every table rejects unknown keys, so a typo is an error
//! naming the key, not a silently ignored setting.
use crate::error::{GendaError, Result};
use crate::filters::FilterConfig;
use crate::models::ModelConfig;
use crate::obs::ObsConfig;
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
    pub coupling: Option<crate::coupling::CouplingConfig>,
    /// How MPI ranks split the state (members are split over the remaining ranks).
    #[serde(default)]
    pub parallel: ParallelConfig,
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
    /// `genda run`: replay the truth from an HDF5 trajectory (`genda truth`, or another model's
    /// run in that format) instead of simulating it: cycle c uses the state c · obs_every model
    /// steps after the file's start (its rows are `dt` apart, a divisor of the cycle length).
    /// One costly truth (e.g. a fine-grid `model.truth_grid` run) then serves every method.
    #[serde(default)]
    pub truth_file: Option<std::path::PathBuf>,
}

/// A value given either as one number for every component or as a full-length list.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(untagged)]
pub enum ScalarOrVec {
    Scalar(f64),
    Vector(Vec<f64>),
}

impl ScalarOrVec {
    /// Expand to `n` components; a list of any other length is an error naming `key`.
    pub fn expand(&self, n: usize, key: &str) -> Result<Vec<f64>> {
        match self {
            ScalarOrVec::Scalar(v) => Ok(vec![*v; n]),
            ScalarOrVec::Vector(v) if v.len() == n => Ok(v.clone()),
            ScalarOrVec::Vector(v) => Err(GendaError::Dimension {
                what: key.to_string(),
                expected: n,
                got: v.len(),
            }),
        }
    }
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
}

impl InitialConfig {
    /// The truth's initial state x₀ ~ N(mean, var) from the truth stream of `seed` (the one draw
    /// every twin uses, so `genda run`, `genda cg` and `genda smooth` share a truth).
    pub fn draw_truth(&self, n: usize, seed: u64) -> Result<Vec<f64>> {
        let (m, v) = self.truth_moments(n)?;
        let mut x = vec![0.0; n];
        crate::rng::fill_standard_normal(seed, crate::rng::Purpose::TruthInit, 0, 0, 0, &mut x);
        for ((x, m), v) in x.iter_mut().zip(&m).zip(&v) {
            *x = m + v.sqrt() * *x;
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
        }
    }
}

impl Config {
    /// Read, parse and validate a config file.
    pub fn from_file(path: &Path) -> Result<Self> {
        let text = std::fs::read_to_string(path).map_err(|e| GendaError::Config {
            path: path.display().to_string(),
            msg: format!("cannot read: {e}"),
        })?;
        Self::from_toml(&text, &path.display().to_string())
    }

    /// Parse and validate TOML text; `origin` names the source in error messages.
    pub fn from_toml(text: &str, origin: &str) -> Result<Self> {
        let cfg: Config = toml::from_str(text).map_err(|e| GendaError::Config {
            path: origin.to_string(),
            msg: e.to_string().trim_end().to_string(),
        })?;
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
        c.parallel.domains = 1;
        format!("{:016x}", fnv1a(c.to_toml().bytes()))
    }

    /// Check every value that serde's types cannot express.
    pub fn validate(&self) -> Result<()> {
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
        self.model.validate()?;
        let n = self.model.dim();
        let mean = self.initial.mean.expand(n, "initial.mean")?;
        let var = self.initial.var.expand(n, "initial.var")?;
        let (tm, tv) = self.initial.truth_moments(n)?;
        if tm.iter().chain(&tv).any(|v| !v.is_finite()) || tv.iter().any(|v| *v < 0.0) {
            return Err(GendaError::invalid(
                "initial.truth_mean / initial.truth_var",
                "must be finite, variances >= 0",
            ));
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
        self.observations.validate(n)?;
        self.filter.validate()?;
        Ok(())
    }
}

/// 64-bit FNV-1a of a byte stream (a stable fingerprint for files genda writes and checks).
pub fn fnv1a(bytes: impl IntoIterator<Item = u8>) -> u64 {
    bytes.into_iter().fold(0xcbf2_9ce4_8422_2325, |h, b| {
        (h ^ b as u64).wrapping_mul(0x0100_0000_01b3)
    })
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
