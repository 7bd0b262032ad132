//! Learned-prior score filters, as their authors' code runs them by default and as genda's
//! own variants on request:
//!
//! - **MASF** (`method = "masf"`; Yoon, Kim & Kim 2026). `sampler = "reference"` (default) is
//!   the MASF code (github tcnllab-oss/masf, `score::masf_ref`): its measurement process (noise
//!   σ/s on every component, the full-grid pseudo-measurement), members pushed to T, the exact
//!   likelihood score added at every step with the score and guidance ramps on the quadratic
//!   grid, x0-prediction with an MSE loss, per-channel standardisation fixed from the
//!   pre-training set, AdamW pre-training once and a fresh AdamW fine-tuning on every later
//!   cycle's forecast ensemble (120 epochs, gradient norm clipped at 1, 10 % held out).
//!   Checked against a NumPy transcription of the authors' code (tests/oracle/masf.py).
//!   genda's variants: `sampler = "bridge"` samples the posterior as the time reversal of
//!   genda's measurement-aware process from p(x_T | y) (exact for a Gaussian prior: tested
//!   against the Kalman posterior); `sampler = "additive"` adds the exact likelihood score to the
//!   prior score in every step on that process (no ramps; over-counts the measurement).
//! - **SF** (`method = "sf"`; the score filter of Bao, Zhang & Zhang, as the MASF code's
//!   baseline). `process = "ve"` (default) is that code's `methods/sf.py`: a VE process
//!   (σ_max = 25) from pure noise, 500 Euler–Maruyama steps, likelihood weight relu(1 − 2t),
//!   score-RMS clipping, with the same training schedule. `process = "vp"` is genda's ablation:
//!   MASF's bridge machinery on the standard VP process with the likelihood damped by 1 − t, on
//!   an identical network, training budget and sampler as genda's MASF.
//!
//! The reference variants take the reference's value for every training setting left unset
//! (`MasfConfig::reference_settings`); genda's variants take genda's and refuse the
//! reference-only keys. What follows describes genda's variants.
//!
//! The prior score network (an MLP) is trained by denoising score matching under the method's
//! process: `pretrain_steps` at the first cycle on `pretrain_data` (an HDF5 trajectory from
//! `genda truth`, coordinates standardised by its per-variable climatology, fixed) or else on the
//! first forecast ensemble; then `train_steps` per cycle of fine-tuning on the forecast ensemble
//! (0: trained once, frozen). Without `pretrain_data` the coordinates are standardised by each
//! cycle's forecast ensemble (as the MASF code does). Whole state only (one domain);
//! measurements must select state components (sparse/identity).
//!
//! `prior = "gaussian_residual"` (for higher dimensions, e.g. Lorenz-96, where the MLP learned
//! from 20 members is too poor and both filters diverge): the prior score is that of a Gaussian
//! fitted to the forecast ensemble (Gaspari–Cohn localised, optionally shrunk sample covariance)
//! noised exactly under the method's process, N(A(t)m, A(t)CA(t) + Σ(t)) (for SF A = a(t)I), plus
//! the MLP as a residual that starts at zero and is trained by DSM with that baseline added
//! (`pretrain_steps` at the first cycle, `train_steps` per cycle). Cholesky factors are computed
//! once per sampler time and shared by all members and training rows. With a zero residual the
//! bridge sampler is the (localised) Kalman update (tested). `inflation` multiplies the analysis
//! anomalies as EnKF's does (default 1: L63 behaviour unchanged).
use super::core::inflate;
use super::letkf::{gaspari_cohn, Geometry, GC_HALF_WIDTH_PER_RADIUS};
use super::{AnalysisInput, DataFiles, FileOutput, Filter, Needs};
use crate::error::{GendaError, Result};
use crate::score::masf::{
    fit_gaussian, reverse_sample, sampler_grid, Batches, DiagProcess, DiagScore, Guidance,
    NoisedGaussian, Noising, OptimKind, OptimSettings, Target, Training,
};
use crate::score::masf_ref::{
    masf_reference_sample, sf_reference_sample, ChannelNorm, Output, Ramp, RefProcess, VeProcess,
    REF_EPS,
};
use crate::score::net::NetworkConfig;
use crate::state::SavedState;
use ndarray::Array2;
use serde::{Deserialize, Serialize};
use std::path::PathBuf;

/// MASF's sampler.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum MasfSampler {
    /// The MASF code's (`methods/ours.py`): its process (σ/s noise on every component, the
    /// full-grid pseudo-measurement), members pushed to T, the exact likelihood score added at
    /// every step with the score and guidance ramps, quadratic grid (`score::masf_ref`).
    Reference,
    /// genda's derivation: time reversal of the measurement-aware process from p(x_T | y)
    /// (exact for a Gaussian prior; unit noise on unobserved components).
    Bridge,
    /// genda's process with the exact likelihood score added at every step, no ramps.
    Additive,
}

/// SF's forward process and sampler.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum SfProcess {
    /// The SF code's (`methods/sf.py`): VE (σ_max), pure-noise start, Euler–Maruyama,
    /// relu(1 − 2t) likelihood weight, score RMS clipping.
    Ve,
    /// genda's ablation: MASF's sampler on the standard VP process, likelihood damped by 1 − t.
    Vp,
}

/// What the prior network predicts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Prediction {
    /// x̂₀ with an MSE loss (the MASF code's).
    X0,
    /// ε̂ (genda's, and the SF code's).
    Epsilon,
}

/// How states are standardised for the network.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Standardise {
    /// Per channel (`channels` equal blocks of the state), from the pre-training set (or the
    /// first forecast ensemble), fixed: the MASF code's.
    PerChannel,
    /// Per state variable (genda's).
    PerVariable,
}

/// The prior score of MASF and SF (both get the same one).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum MasfPrior {
    /// An MLP trained by DSM on the forecast ensemble (or `pretrain_data`).
    #[default]
    Mlp,
    /// The score of a Gaussian fitted to the forecast ensemble (localised, shrunk sample
    /// covariance), noised exactly under the method's process, plus an MLP residual that starts
    /// at zero and is trained by DSM with that baseline added. With a zero residual MASF's bridge
    /// sampler is then a (localised) Kalman update. genda's samplers only.
    GaussianResidual,
}

/// MASF and SF. The reference variants (`sampler = "reference"`, `process = "ve"`, the
/// defaults) take the reference's value for every training setting left unset; genda's
/// variants take genda's (the table in docs/results.md).
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct MasfConfig {
    pub members: usize,
    /// MASF only: "reference" (default), "bridge" or "additive".
    #[serde(default, alias = "guidance")]
    pub sampler: Option<MasfSampler>,
    /// SF only: "ve" (default, the reference) or "vp" (genda's ablation).
    #[serde(default)]
    pub process: Option<SfProcess>,
    /// Reverse-time steps (reference: MASF 150, SF 500; genda 150).
    #[serde(default)]
    pub steps: Option<usize>,
    #[serde(default = "d_hidden")]
    pub hidden: i64,
    #[serde(default = "d_layers")]
    pub layers: usize,
    /// Learning rate (reference 3e-4, genda 1e-3).
    #[serde(default)]
    pub lr: Option<f64>,
    /// Training batch (reference 32, genda 128).
    #[serde(default)]
    pub batch: Option<usize>,
    /// Optimiser steps at the first cycle (genda 1000).
    #[serde(default)]
    pub pretrain_steps: Option<usize>,
    /// Optimiser steps of fine-tuning every later cycle (genda 100; 0: frozen).
    #[serde(default)]
    pub train_steps: Option<usize>,
    /// Reference variants: epochs of pre-training (reference 200) ...
    #[serde(default)]
    pub pretrain_epochs: Option<usize>,
    /// ... and of fine-tuning on each later cycle's forecast ensemble (reference 120).
    #[serde(default)]
    pub train_epochs: Option<usize>,
    /// Reference variants: fraction of the training rows held out and never used (the
    /// reference's validation split, 0.1).
    #[serde(default)]
    pub holdout: Option<f64>,
    /// Reference variants: "adamw" (reference) or "adam".
    #[serde(default)]
    pub optimizer: Option<OptimKind>,
    /// Reference variants: weight decay (reference 0.01).
    #[serde(default)]
    pub weight_decay: Option<f64>,
    /// Reference variants: Adam betas (reference [0.9, 0.99]).
    #[serde(default)]
    pub betas: Option<[f64; 2]>,
    /// Reference variants: gradient-norm clipping (reference 1.0; 0: none).
    #[serde(default)]
    pub clip_grad_norm: Option<f64>,
    /// Reference variants: a fresh optimiser every cycle (reference true).
    #[serde(default)]
    pub fresh_optimizer: Option<bool>,
    /// Reference variants: "x0" (MASF reference) or "epsilon" (SF reference; MASF ablation).
    #[serde(default)]
    pub prediction: Option<Prediction>,
    /// Reference variants: "per_channel" (reference) or "per_variable".
    #[serde(default)]
    pub standardise: Option<Standardise>,
    /// Channels of the state for per-channel standardisation (equal contiguous blocks).
    #[serde(default = "d_channels")]
    pub channels: usize,
    /// MASF reference sampler: the score-scale ramp (0.95 → 1.6, power 1.5).
    #[serde(default)]
    pub score_scale: Option<Ramp>,
    /// MASF reference sampler: the guidance-scale ramp (1.1 → 1.5, power 2).
    #[serde(default)]
    pub guidance_scale: Option<Ramp>,
    /// SF reference: σ_max of the VE process (25).
    #[serde(default)]
    pub sigma_max: Option<f64>,
    /// SF reference: the guided score's per-member RMS bound (`tol`, 100).
    #[serde(default)]
    pub score_clip: Option<f64>,
    /// HDF5 trajectory (`genda truth`) to pre-train on; fixes the standardisation.
    #[serde(default)]
    pub pretrain_data: Option<PathBuf>,
    /// Reference variants: pre-train data-parallel on `pretrain_data` cut into this many
    /// contiguous shards of rows (genda's option for large runs; 1, the default: every rank
    /// reads the whole set and trains the network alone, as the reference). With S > 1 each
    /// rank reads only its shards (S a multiple of the ranks that analyse alike), every step
    /// draws batch/S rows from each shard, the holdout is taken per shard, the per-channel
    /// statistics and the gradients are summed shard by shard in shard order: the same
    /// network on any number of ranks, a different one from S = 1.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pretrain_shards: Option<usize>,
    #[serde(default)]
    pub prior: MasfPrior,
    /// The prior network: by default an MLP of `hidden` × `layers`; for 2-D fields a U-Net
    /// with circular padding, `network = { kind = "unet", height = 64, width = 64, channels = 16 }`
    /// (height · width = the state size).
    #[serde(default)]
    pub network: Option<NetworkConfig>,
    /// Offline policy (with `pretrain_data`): the pre-trained prior network is kept here. A run
    /// loads it if the file exists and was trained for the same method, measurement, network and
    /// pre-training settings (else it refuses), and otherwise pre-trains and writes it, so the
    /// network is trained once and shared by every seed and gap that observe the same points.
    #[serde(default)]
    pub prior_weights: Option<PathBuf>,
    /// `prior = "gaussian_residual"`: localisation radius of the Gaussian's covariance in grid
    /// units (Gaspari–Cohn, LETKF's convention); none: the untapered sample covariance.
    #[serde(default)]
    pub localization_radius: Option<f64>,
    /// Grid of the localisation taper.
    #[serde(default)]
    pub geometry: Geometry,
    /// `prior = "gaussian_residual"`: weight λ of the shrinkage of the off-diagonal covariances
    /// toward 0, C = (1 − λ) ρ∘S + λ diag(S).
    #[serde(default)]
    pub shrinkage: f64,
    /// Multiplicative inflation of the analysis anomalies (as EnKF's).
    #[serde(default = "d_inflation")]
    pub inflation: f64,
    /// Where the prior network trains and samples: "auto" (this rank's GPU when libtorch sees
    /// one, else the CPU), "cpu" or "cuda" (an error without a GPU).
    #[serde(default)]
    pub device: crate::score::DeviceChoice,
}

fn d_inflation() -> f64 {
    1.0
}
fn d_hidden() -> i64 {
    128
}
fn d_layers() -> usize {
    3
}
fn d_channels() -> usize {
    1
}

/// Which algorithm a `MasfConfig` runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Variant {
    MasfReference,
    MasfBridge,
    MasfAdditive,
    SfReference,
    SfDamped,
}

impl Variant {
    pub fn is_reference(self) -> bool {
        matches!(self, Variant::MasfReference | Variant::SfReference)
    }
}

/// The settings of a reference variant, every unset one at the reference's value.
#[derive(Debug, Clone, PartialEq)]
pub struct ReferenceSettings {
    pub pretrain: Training,
    pub finetune: Training,
    pub optim: OptimSettings,
    pub standardise: Standardise,
    pub score_ramp: Ramp,
    pub guidance_ramp: Ramp,
    pub sigma_max: f64,
    pub score_clip: f64,
}

impl MasfConfig {
    /// The algorithm `method` ("masf" or "sf") runs with these settings.
    pub fn variant(&self, method: &str) -> Variant {
        match (method, self.sampler, self.process) {
            ("sf", _, Some(SfProcess::Vp)) => Variant::SfDamped,
            ("sf", _, _) => Variant::SfReference,
            (_, Some(MasfSampler::Bridge), _) => Variant::MasfBridge,
            (_, Some(MasfSampler::Additive), _) => Variant::MasfAdditive,
            _ => Variant::MasfReference,
        }
    }

    /// Reverse-time steps.
    pub fn steps(&self, method: &str) -> usize {
        self.steps.unwrap_or(match self.variant(method) {
            Variant::SfReference => 500,
            _ => 150,
        })
    }

    fn lr(&self, method: &str) -> f64 {
        self.lr.unwrap_or(if self.variant(method).is_reference() {
            3e-4
        } else {
            1e-3
        })
    }

    fn batch(&self, method: &str) -> usize {
        self.batch
            .unwrap_or(if self.variant(method).is_reference() {
                32
            } else {
                128
            })
    }

    /// The reference variants' settings (defaults: the reference's).
    pub fn reference_settings(&self, method: &str) -> ReferenceSettings {
        let v = self.variant(method);
        let phase = |steps: Option<usize>, epochs: Option<usize>, default_epochs: usize| match (
            steps, epochs,
        ) {
            (Some(s), _) => Batches::Steps(s),
            (None, e) => Batches::Epochs(e.unwrap_or(default_epochs)),
        };
        let target = match (self.prediction, v) {
            (Some(Prediction::Epsilon), _) | (None, Variant::SfReference) => Target::Epsilon,
            _ => Target::X0,
        };
        // The SF code sums the squared error over the channels (dim 1) and averages the rest.
        let loss_scale = if v == Variant::SfReference {
            self.channels as f64
        } else {
            1.0
        };
        let training = |batches| Training {
            batches,
            batch: self.batch(method),
            holdout: self.holdout.unwrap_or(0.1),
            loss_scale,
            target,
        };
        let r = OptimSettings::masf_reference();
        ReferenceSettings {
            pretrain: training(phase(self.pretrain_steps, self.pretrain_epochs, 200)),
            finetune: training(phase(self.train_steps, self.train_epochs, 120)),
            optim: OptimSettings {
                kind: self.optimizer.unwrap_or(r.kind),
                lr: self.lr(method),
                weight_decay: self.weight_decay.unwrap_or(r.weight_decay),
                betas: self.betas.unwrap_or(r.betas),
                clip_grad_norm: match self.clip_grad_norm {
                    Some(c) if c > 0.0 => Some(c),
                    Some(_) => None,
                    None => r.clip_grad_norm,
                },
                fresh_each_cycle: self.fresh_optimizer.unwrap_or(r.fresh_each_cycle),
            },
            standardise: self.standardise.unwrap_or(Standardise::PerChannel),
            score_ramp: self.score_scale.unwrap_or(Ramp::SCORE),
            guidance_ramp: self.guidance_scale.unwrap_or(Ramp::GUIDANCE),
            sigma_max: self.sigma_max.unwrap_or(25.0),
            score_clip: self.score_clip.unwrap_or(100.0),
        }
    }

    pub fn validate(&self, method: &str) -> Result<()> {
        let bad =
            |key: &str, msg: String| Err(GendaError::invalid(key, format!("{method}: {msg}")));
        if method == "sf" && self.sampler.is_some() {
            return bad("filter.sampler", "sf's variants are process = \"ve\" (the reference) or \"vp\" (genda's ablation); sampler is masf's".into());
        }
        if method == "masf" && self.process.is_some() {
            return bad("filter.process", "masf's variants are sampler = \"reference\", \"bridge\" or \"additive\"; process is sf's".into());
        }
        let v = self.variant(method);
        let lr = self.lr(method);
        if self.steps(method) == 0 || self.batch(method) == 0 || self.hidden < 1 || self.layers < 1
        {
            return bad("filter", "steps, batch, hidden, layers must be >= 1".into());
        }
        if !(lr > 0.0 && lr.is_finite()) {
            return bad("filter.lr", format!("must be positive, got {lr}"));
        }
        if !(self.inflation.is_finite() && self.inflation > 0.0) {
            return bad(
                "filter.inflation",
                format!("must be positive, got {}", self.inflation),
            );
        }
        if !(0.0..=1.0).contains(&self.shrinkage) {
            return bad(
                "filter.shrinkage",
                format!("must lie in [0, 1], got {}", self.shrinkage),
            );
        }
        if self
            .localization_radius
            .is_some_and(|r| !(r > 0.0 && r.is_finite()))
        {
            return bad(
                "filter.localization_radius",
                format!("must be positive, got {:?}", self.localization_radius),
            );
        }
        if self.prior_weights.is_some() && self.pretrain_data.is_none() {
            return bad("filter.prior_weights", "prior_weights keeps a network pre-trained offline on pretrain_data; set pretrain_data too".into());
        }
        if self.channels == 0 {
            return bad("filter.channels", "must be >= 1".into());
        }
        if v.is_reference() {
            return self.validate_reference(method, v);
        }
        // genda's variants take none of the reference's training settings.
        let reference_only = [
            ("pretrain_epochs", self.pretrain_epochs.is_some()),
            ("train_epochs", self.train_epochs.is_some()),
            ("holdout", self.holdout.is_some()),
            ("optimizer", self.optimizer.is_some()),
            ("weight_decay", self.weight_decay.is_some()),
            ("betas", self.betas.is_some()),
            ("clip_grad_norm", self.clip_grad_norm.is_some()),
            ("fresh_optimizer", self.fresh_optimizer.is_some()),
            ("prediction", self.prediction.is_some()),
            ("standardise", self.standardise.is_some()),
            ("score_scale", self.score_scale.is_some()),
            ("guidance_scale", self.guidance_scale.is_some()),
            ("sigma_max", self.sigma_max.is_some()),
            ("score_clip", self.score_clip.is_some()),
            ("pretrain_shards", self.pretrain_shards.is_some()),
        ];
        if let Some((k, _)) = reference_only.iter().find(|(_, set)| *set) {
            return bad(&format!("filter.{k}"), format!("{k} is a setting of the reference variants (masf sampler = \"reference\", sf process = \"ve\"), not of genda's {v:?}"));
        }
        if self.prior == MasfPrior::GaussianResidual {
            if self.pretrain_data.is_some() {
                return bad("filter.pretrain_data", "prior = \"gaussian_residual\" learns a residual to the forecast ensemble's Gaussian; climatology pre-training does not apply".into());
            }
            return Ok(());
        }
        if self.localization_radius.is_some() || self.shrinkage != 0.0 {
            return bad(
                "filter.localization_radius",
                "localization_radius and shrinkage need prior = \"gaussian_residual\"".into(),
            );
        }
        if self.pretrain_steps.unwrap_or(1000) == 0 && self.train_steps.unwrap_or(100) == 0 {
            return bad(
                "filter.pretrain_steps",
                "needs pretrain_steps or train_steps >= 1 (the prior score is learned)".into(),
            );
        }
        Ok(())
    }

    fn validate_reference(&self, method: &str, v: Variant) -> Result<()> {
        let bad =
            |key: &str, msg: String| Err(GendaError::invalid(key, format!("{method}: {msg}")));
        if self.prior != MasfPrior::Mlp
            || self.localization_radius.is_some()
            || self.shrinkage != 0.0
        {
            return bad("filter.prior", "the reference variants learn the prior network alone (prior = \"mlp\"); the Gaussian baseline belongs to genda's samplers".into());
        }
        for (k, s, e) in [
            ("pretrain", self.pretrain_steps, self.pretrain_epochs),
            ("train", self.train_steps, self.train_epochs),
        ] {
            if s.is_some() && e.is_some() {
                return bad(
                    &format!("filter.{k}_steps"),
                    format!("set {k}_steps or {k}_epochs, not both"),
                );
            }
        }
        let r = self.reference_settings(method);
        if let Some(s) = self.pretrain_shards {
            if s == 0 || r.pretrain.batch % s != 0 {
                return bad("filter.pretrain_shards", format!("must be >= 1 and divide the batch of {} (batch/shards rows of each shard per step), got {s}", r.pretrain.batch));
            }
            if s > 1 && self.pretrain_data.is_none() {
                return bad(
                    "filter.pretrain_shards",
                    "shards cut pretrain_data; set pretrain_data too".into(),
                );
            }
            if s > 1 && r.standardise != Standardise::PerChannel {
                return bad("filter.pretrain_shards", "sharded pre-training sums the per-channel statistics (standardise = \"per_channel\")".into());
            }
        }
        if !(0.0..1.0).contains(&r.pretrain.holdout) {
            return bad(
                "filter.holdout",
                format!("must lie in [0, 1), got {}", r.pretrain.holdout),
            );
        }
        if !(r.optim.weight_decay >= 0.0 && r.optim.weight_decay.is_finite()) {
            return bad(
                "filter.weight_decay",
                format!("must be >= 0, got {}", r.optim.weight_decay),
            );
        }
        if r.optim.betas.iter().any(|b| !(0.0..1.0).contains(b)) {
            return bad(
                "filter.betas",
                format!("must lie in [0, 1), got {:?}", r.optim.betas),
            );
        }
        if v == Variant::SfReference {
            if r.pretrain.target == Target::X0 {
                return bad("filter.prediction", "the VE process has no x0 parametrisation here (the SF code predicts std·score)".into());
            }
            if !(r.sigma_max > 1.0 && r.sigma_max.is_finite()) {
                return bad(
                    "filter.sigma_max",
                    format!("must be > 1, got {}", r.sigma_max),
                );
            }
            if r.score_clip.is_nan() || r.score_clip <= 0.0 {
                return bad(
                    "filter.score_clip",
                    format!("must be positive, got {}", r.score_clip),
                );
            }
        } else if self.sigma_max.is_some() || self.score_clip.is_some() {
            return bad(
                "filter.sigma_max",
                "sigma_max and score_clip are the SF reference's (process = \"ve\")".into(),
            );
        }
        if v == Variant::SfReference
            && (self.score_scale.is_some() || self.guidance_scale.is_some())
        {
            return bad(
                "filter.score_scale",
                "score_scale and guidance_scale are the MASF reference sampler's".into(),
            );
        }
        Ok(())
    }
}

/// The seed of a cycle's draws (training and sampling) in MASF and SF.
pub fn masf_seed(seed: u64, cycle: usize) -> u64 {
    seed ^ (cycle as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15)
}

pub struct Masf {
    cfg: MasfConfig,
    measurement_aware: bool,
    variant: Variant,
    net: Option<DiagScore>,
    /// Fixed standardisation (genda's: from `pretrain_data`).
    fixed: Option<(Vec<f64>, Vec<f64>)>,
    /// The reference variants' fixed standardisation (set at the first cycle).
    norm: Option<ChannelNorm>,
    /// Last training loss (diagnostic).
    pub last_loss: f64,
    /// The pre-trained prior for `prior_weights`, for the driver to write.
    outputs: Vec<FileOutput>,
    /// The rows of `pretrain_data` (raw), read by `prepare` and
    /// dropped once the prior is trained: all of them, or this rank's shards' (`shards`).
    pretrain: Option<Vec<f64>>,
    /// The shards of `pretrain_data` (`pretrain_shards` > 1) and those this rank holds.
    shards: Option<crate::score::RowShards>,
}

/// The pre-trained prior network as a file for the driver to write.
fn prior_output(
    method: &str,
    path: &std::path::Path,
    write: Box<dyn FnOnce() -> Result<()> + Send>,
) -> FileOutput {
    FileOutput {
        path: path.to_path_buf(),
        what: format!("{method}: the pre-trained prior network"),
        write,
    }
}

impl Masf {
    /// `measurement_aware`: MASF (true) or SF (false).
    pub fn new(cfg: MasfConfig, measurement_aware: bool) -> Self {
        let variant = cfg.variant(if measurement_aware { "masf" } else { "sf" });
        Masf {
            cfg,
            measurement_aware,
            variant,
            net: None,
            fixed: None,
            norm: None,
            last_loss: f64::NAN,
            outputs: Vec::new(),
            pretrain: None,
            shards: None,
        }
    }

    /// The algorithm this filter runs.
    pub fn variant(&self) -> Variant {
        self.variant
    }

    /// Read `pretrain_data` (once, through the driver's `files`) and check its state size
    /// against `n`.
    fn load_pretrain(&mut self, n: usize, files: &dyn DataFiles) -> Result<()> {
        let method = self.method();
        if let (Some(p), None) = (&self.cfg.pretrain_data, &self.pretrain) {
            let shards = self.cfg.pretrain_shards.unwrap_or(1);
            let (data, state_dim) = if shards > 1 {
                let (rows, state_dim) = files.trajectory_shape(p)?;
                let (rank, ranks) = files.replica();
                let part =
                    crate::score::RowShards::new(rows, shards, rank, ranks).map_err(|e| {
                        GendaError::invalid(
                            "filter.pretrain_shards",
                            format!("{method}: pretrain_data {}: {e}", p.display()),
                        )
                    })?;
                log::debug!(
                    "{method}: rank {rank} of {ranks} reads rows {:?} of {rows} of {} (shards {:?} of {shards})",
                    part.rows(),
                    p.display(),
                    part.mine
                );
                let data = if state_dim == n {
                    files.trajectory_rows(p, part.rows())?
                } else {
                    Vec::new()
                };
                self.shards = Some(part);
                (data, state_dim)
            } else {
                files.trajectory(p)?
            };
            if state_dim != n {
                return Err(GendaError::Dimension {
                    what: format!("{method}: pretrain_data {} state size", p.display()),
                    expected: n,
                    got: state_dim,
                });
            }
            self.pretrain = Some(data);
        }
        Ok(())
    }

    /// The pre-training rows for the first cycle (read by `prepare`).
    fn take_pretrain(&mut self) -> Result<Option<Vec<f64>>> {
        match (&self.cfg.pretrain_data, self.pretrain.take()) {
            (Some(p), None) => Err(GendaError::invalid(
                "filter.pretrain_data",
                format!(
                    "{}: {} was not read before the first analysis (the driver calls Filter::prepare)",
                    self.method(),
                    p.display()
                ),
            )),
            (_, rows) => Ok(rows),
        }
    }

    /// The localisation taper ρ(i, j) of the Gaussian prior's covariance (state of `n`).
    fn taper(&self, n: usize) -> impl Fn(usize, usize) -> f64 {
        let geometry = self.cfg.geometry;
        let c = self
            .cfg
            .localization_radius
            .map(|r| GC_HALF_WIDTH_PER_RADIUS * r);
        move |i, j| match c {
            Some(c) => gaspari_cohn(geometry.distance(i, j, n) / c),
            None => 1.0,
        }
    }

    fn method(&self) -> &'static str {
        if self.measurement_aware {
            "masf"
        } else {
            "sf"
        }
    }

    /// The prior network's architecture.
    fn architecture(&self) -> NetworkConfig {
        self.cfg.network.clone().unwrap_or(NetworkConfig::Mlp {
            hidden: self.cfg.hidden,
            layers: self.cfg.layers,
            time_features: 16,
        })
    }

    /// The observed components, or a clear error for operators the exact likelihood cannot use.
    fn observed(&self, input: &AnalysisInput) -> Result<Vec<usize>> {
        let method = self.method();
        super::selected_components(input.obs_operator).ok_or_else(|| {
            GendaError::invalid(
                "observations.operator",
                format!(
                    "{method}: the exact likelihood score of the measurement-aware process needs a linear measurement that selects state components (operator = \"sparse\" or \"identity\"); for nonlinear operators use ensf or kde_diffusion"
                ),
            )
        })
    }

    /// The analysis of the reference variants (`score::masf_ref`), in place on `ens`.
    fn analyse_reference(
        &mut self,
        ens: &mut Array2<f64>,
        input: &AnalysisInput,
        observed: &[usize],
        seed: u64,
    ) -> Result<()> {
        let method = self.method();
        let n = ens.ncols();
        let rs = self.cfg.reference_settings(method);
        let r0 = input.obs_error_var.first().copied().unwrap_or(1.0);
        if input.obs_error_var.iter().any(|&r| r != r0) {
            return Err(GendaError::invalid(
                "observations.error_var",
                format!("{method} (reference): the reference has one measurement error σ for the whole grid (its noise_std); this run's error variances differ between observations"),
            ));
        }
        let sigma = r0.sqrt();
        if n % self.cfg.channels != 0 {
            return Err(GendaError::invalid(
                "filter.channels",
                format!(
                    "{method}: state size {n} is not {} equal channels",
                    self.cfg.channels
                ),
            ));
        }
        let first = self.net.is_none();
        let fc: Vec<f64> = ens.iter().cloned().collect();
        // Pre-training rows (raw), used at the first cycle only.
        let pre: Option<Vec<f64>> = if first { self.take_pretrain()? } else { None };
        if first {
            let stats_from = pre.as_deref().unwrap_or(&fc);
            self.norm = Some(match rs.standardise {
                Standardise::PerChannel => match (&self.shards, pre.as_deref()) {
                    (Some(part), Some(rows)) => {
                        ChannelNorm::fit_sharded(rows, n, self.cfg.channels, part, input.replicas)?
                    }
                    _ => ChannelNorm::fit(stats_from, n, self.cfg.channels),
                },
                Standardise::PerVariable => {
                    let (m, s) = standardisation(stats_from, n);
                    ChannelNorm::per_variable(m, s)
                }
            });
        }
        let norm = self.norm.clone().expect("set at the first cycle");
        let to_norm = |v: &[f64]| -> Vec<f64> {
            v.iter()
                .enumerate()
                .map(|(i, x)| (x - norm.u[i % n]) / (norm.s[i % n] + REF_EPS))
                .collect()
        };
        let process = RefProcess::new(&norm, observed, sigma);
        let ve = VeProcess {
            sigma_max: rs.sigma_max,
        };
        let noising: &dyn Noising = match self.variant {
            Variant::SfReference => &ve,
            _ => &process,
        };
        let z_fc = to_norm(&fc);
        if first {
            let device = crate::score::select_local_device(self.cfg.device)?;
            let mut net =
                DiagScore::on_device(self.architecture(), n, rs.optim.lr, input.seed, device)?;
            net.zero_output();
            net.set_optimizer(rs.optim)?;
            let fingerprint = self.reference_fingerprint(&process, &rs);
            let cached = self.cfg.prior_weights.as_ref().filter(|p| p.exists());
            if let Some(p) = cached {
                net.load(p, &fingerprint)?;
                log::info!("{method}: prior network loaded from {}", p.display());
            } else {
                let data = pre.as_deref().map(to_norm).unwrap_or_else(|| z_fc.clone());
                self.last_loss = match (&self.shards, pre.is_some()) {
                    (Some(part), true) => net.fit_phase_sharded(
                        noising,
                        &data,
                        part,
                        &rs.pretrain,
                        input.seed,
                        input.seed,
                        input.replicas,
                    )?,
                    _ => net.fit_phase(noising, &data, &rs.pretrain, input.seed, input.seed)?,
                };
                if let Some(p) = &self.cfg.prior_weights {
                    self.outputs
                        .push(prior_output(method, p, net.weights_writer(p, &fingerprint)));
                }
            }
            self.net = Some(net);
        } else {
            let net = self.net.as_mut().expect("trained at the first cycle");
            if rs.optim.fresh_each_cycle {
                net.set_optimizer(rs.optim)?;
            }
            let has_steps = !matches!(rs.finetune.batches, Batches::Steps(0) | Batches::Epochs(0));
            if has_steps {
                self.last_loss = net.fit_phase(noising, &z_fc, &rs.finetune, seed, input.seed)?;
            }
        }
        let net = self.net.as_ref().expect("trained at the first cycle");
        let z = process.pseudo_measurement(observed, input.obs, sigma, seed);
        let mut x = z_fc;
        let mut out_fn = |xs: &[f64], t: f64, out: &mut [f64]| net.output(xs, t, out);
        let steps = self.cfg.steps(method);
        match self.variant {
            Variant::SfReference => sf_reference_sample(
                ve,
                &process,
                &mut out_fn,
                &z,
                &mut x,
                steps,
                rs.score_clip,
                seed,
            ),
            _ => {
                let output = match rs.pretrain.target {
                    Target::X0 => Output::X0,
                    Target::Epsilon => Output::Epsilon,
                };
                masf_reference_sample(
                    &process,
                    &mut out_fn,
                    output,
                    &z,
                    &mut x,
                    steps,
                    rs.score_ramp,
                    rs.guidance_ramp,
                    seed,
                )
            }
        }
        if x.iter().any(|v| !v.is_finite()) {
            return Err(GendaError::Diverged {
                cycle: input.cycle,
                what: format!("{method} reverse sampling produced non-finite values"),
            });
        }
        for (i, v) in ens.iter_mut().enumerate() {
            *v = x[i] * (norm.s[i % n] + REF_EPS) + norm.u[i % n];
        }
        inflate(ens, self.cfg.inflation);
        Ok(())
    }

    /// What a reference variant's cached network was trained for.
    fn reference_fingerprint(&self, process: &RefProcess, rs: &ReferenceSettings) -> String {
        let h = crate::values::fnv1a(
            process
                .mask
                .iter()
                .chain(&process.u)
                .chain(&process.s)
                .chain(&process.sigma2)
                .flat_map(|v| v.to_bits().to_le_bytes()),
        );
        format!(
            "{:?}, state {}, process {h:016x}, network {}, pretrain_data {}, {:?}, {:?}",
            self.variant,
            process.dim(),
            toml::to_string(&self.cfg.network)
                .unwrap_or_default()
                .replace('\n', " "),
            self.cfg
                .pretrain_data
                .as_ref()
                .map(|p| p.display().to_string())
                .unwrap_or_default(),
            rs.pretrain,
            rs.optim,
        ) + &match self.cfg.pretrain_shards {
            Some(s) if s > 1 => format!(", {s} shards"),
            _ => String::new(),
        }
    }
}

/// Per-variable mean and std (floored) of rows of `data` (n).
fn standardisation(data: &[f64], n: usize) -> (Vec<f64>, Vec<f64>) {
    let rows = (data.len() / n).max(1) as f64;
    let mut mean = vec![0.0; n];
    for r in data.chunks(n) {
        mean.iter_mut().zip(r).for_each(|(m, v)| *m += v / rows);
    }
    let mut sd = vec![0.0; n];
    for r in data.chunks(n) {
        sd.iter_mut()
            .zip(r.iter().zip(&mean))
            .for_each(|(s, (v, m))| *s += (v - m).powi(2) / rows);
    }
    let floor = 1e-6 * sd.iter().cloned().fold(0.0, f64::max).sqrt().max(1.0);
    (mean, sd.into_iter().map(|v| v.sqrt().max(floor)).collect())
}

impl Filter for Masf {
    fn name(&self) -> &'static str {
        self.method()
    }

    /// Read and check `pretrain_data` now (the prior is trained at the first analysis).
    fn prepare(&mut self, n: usize, files: &dyn DataFiles) -> Result<()> {
        if self.net.is_none() {
            self.load_pretrain(n, files)?;
        }
        Ok(())
    }

    fn needs(&self, _n_global: usize) -> Needs {
        Needs {
            whole_state: Some("it learns a score of the whole state"),
            component_selection: Some("the exact likelihood score of the measurement-aware process needs a linear measurement that selects state components (operator = \"sparse\" or \"identity\"); for nonlinear operators use ensf or kde_diffusion"),
            ..Needs::default()
        }
    }

    fn take_outputs(&mut self) -> Vec<FileOutput> {
        std::mem::take(&mut self.outputs)
    }

    /// The prior network with its optimiser moments, and the fixed standardisation.
    fn save_state(&self) -> Result<SavedState> {
        let mut s = SavedState::new();
        let Some(net) = &self.net else {
            return Ok(s);
        };
        s.put_scalar("dim", net.dim as f64);
        s.nest("prior", net.save_state()?);
        if let Some((m, sd)) = &self.fixed {
            s.put("fixed.mean", m.clone());
            s.put("fixed.sd", sd.clone());
        }
        if let Some(norm) = &self.norm {
            s.put("norm.u", norm.u.clone());
            s.put("norm.s", norm.s.clone());
        }
        Ok(s)
    }

    fn restore_state(&mut self, mut s: SavedState) -> Result<()> {
        if s.is_empty() {
            return Ok(());
        }
        let method = self.method();
        let dim = s.take_usize("dim")?;
        self.pretrain = None;
        let optim = if self.variant.is_reference() {
            self.cfg.reference_settings(method).optim
        } else {
            OptimSettings::adam(self.cfg.lr(method))
        };
        let device = crate::score::select_local_device(self.cfg.device)?;
        // The initial weights are overwritten by the saved ones.
        let mut net = DiagScore::on_device(self.architecture(), dim, optim.lr, 0, device)?;
        net.restore_state(s.take_nested("prior"), optim)?;
        self.net = Some(net);
        self.fixed = if s.has("fixed.mean") {
            Some((s.take_len("fixed.mean", dim)?, s.take_len("fixed.sd", dim)?))
        } else {
            None
        };
        self.norm = if s.has("norm.u") {
            Some(ChannelNorm::per_variable(
                s.take_len("norm.u", dim)?,
                s.take_len("norm.s", dim)?,
            ))
        } else {
            None
        };
        s.finish(method)
    }

    fn analyse(&mut self, ens: &mut Array2<f64>, input: &AnalysisInput) -> Result<()> {
        let method = self.method();
        input.check(ens, method)?;
        if !input.domain.whole {
            return Err(GendaError::invalid(
                "parallel.domains",
                format!("{method} learns a score of the whole state; use domains = 1"),
            ));
        }
        let observed = self.observed(input)?;
        let seed = masf_seed(input.seed, input.cycle);
        if self.variant.is_reference() {
            return self.analyse_reference(ens, input, &observed, seed);
        }
        self.analyse_genda(ens, input, &observed, seed)
    }
}

/// One cycle of genda's variants in standardised coordinates.
struct GendaCycle {
    /// The standardisation: per-variable mean and std.   (n)
    mean: Vec<f64>,
    sd: Vec<f64>,
    /// Observation error variances and observations, standardised.   (observed)
    r_obs: Vec<f64>,
    y: Vec<f64>,
    process: DiagProcess,
    /// The forecast ensemble, standardised (members × n, row-major).
    z: Vec<f64>,
    /// The Gaussian baseline (prior = "gaussian_residual"), factorised at the sampler's times.
    base: Option<NoisedGaussian>,
}

impl GendaCycle {
    /// `steps` steps of DSM training of `net` on `data` (rows of n) under the cycle's process,
    /// as a residual to the Gaussian baseline when there is one; NaN for no steps.
    fn fit(
        &self,
        net: &mut DiagScore,
        data: &[f64],
        steps: usize,
        batch: usize,
        seed: u64,
    ) -> Result<f64> {
        match &self.base {
            _ if steps == 0 => Ok(f64::NAN),
            Some(b) => net.fit_residual(&self.process, data, b, steps, batch, seed),
            None => net.fit(&self.process, data, steps, batch, seed),
        }
    }
}

impl Masf {
    /// genda's variants (bridge, additive, SF damped) on `score::masf::DiagProcess`.
    fn analyse_genda(
        &mut self,
        ens: &mut Array2<f64>,
        input: &AnalysisInput,
        observed: &[usize],
        seed: u64,
    ) -> Result<()> {
        let method = self.method();
        let steps = self.cfg.steps(method);
        let n = ens.ncols();
        let first = self.net.is_none();
        let pre: Option<Vec<f64>> = if first { self.take_pretrain()? } else { None };
        if let Some(rows) = &pre {
            self.fixed = Some(standardisation(rows, n));
        }
        let mut cyc = self.genda_cycle(ens, input, observed, steps)?;
        let batch = self.cfg.batch(method);
        let train_steps = self.cfg.train_steps.unwrap_or(100);
        if first {
            self.first_prior(&cyc, pre.as_deref(), n, input.seed)?;
        } else if train_steps > 0 {
            let net = self.net.as_mut().expect("trained at the first cycle");
            self.last_loss = cyc.fit(net, &cyc.z, train_steps, batch, seed)?;
        }
        let x = std::mem::take(&mut cyc.z);
        let x = self.sample_genda(&cyc, x, input, observed, steps, seed)?;
        for (i, v) in ens.iter_mut().enumerate() {
            *v = cyc.mean[i % n] + cyc.sd[i % n] * x[i];
        }
        inflate(ens, self.cfg.inflation);
        Ok(())
    }

    /// The cycle in standardised coordinates (the fixed standardisation, else the forecast
    /// ensemble's), the method's process and, for `prior = "gaussian_residual"`, the baseline.
    fn genda_cycle(
        &self,
        ens: &Array2<f64>,
        input: &AnalysisInput,
        observed: &[usize],
        steps: usize,
    ) -> Result<GendaCycle> {
        let n = ens.ncols();
        let fc: Vec<f64> = ens.iter().cloned().collect();
        let (mean, sd) = match &self.fixed {
            Some(f) => f.clone(),
            None => standardisation(&fc, n),
        };
        let r_obs: Vec<f64> = observed
            .iter()
            .zip(input.obs_error_var)
            .map(|(&k, &r)| r / (sd[k] * sd[k]))
            .collect();
        let y: Vec<f64> = observed
            .iter()
            .zip(input.obs)
            .map(|(&k, &v)| (v - mean[k]) / sd[k])
            .collect();
        let process = if self.measurement_aware {
            DiagProcess::measurement_aware(n, observed, &r_obs)
        } else {
            DiagProcess::standard(n)
        };
        let z: Vec<f64> = fc
            .iter()
            .enumerate()
            .map(|(i, v)| (v - mean[i % n]) / sd[i % n])
            .collect();
        // The Gaussian baseline (prior = "gaussian_residual"), factorised at the sampler's times.
        let base = match self.cfg.prior {
            MasfPrior::Mlp => None,
            MasfPrior::GaussianResidual => {
                let taper = self.taper(n);
                let (m, c) = fit_gaussian(&z, n, &taper, self.cfg.shrinkage);
                let grid = sampler_grid(steps);
                Some(NoisedGaussian::new(&process, &m, &c, &grid[..steps])?)
            }
        };
        Ok(GendaCycle {
            mean,
            sd,
            r_obs,
            y,
            process,
            z,
            base,
        })
    }

    /// The prior network at the first cycle: loaded from `prior_weights` when cached, else
    /// pre-trained on `pre` (raw rows of `pretrain_data`, standardised) or the forecast
    /// ensemble (and queued for writing to `prior_weights`).
    fn first_prior(
        &mut self,
        cyc: &GendaCycle,
        pre: Option<&[f64]>,
        n: usize,
        seed: u64,
    ) -> Result<()> {
        let method = self.method();
        let (lr, batch) = (self.cfg.lr(method), self.cfg.batch(method));
        let pretrain_steps = self.cfg.pretrain_steps.unwrap_or(1000);
        let arch = self.architecture();
        let device = crate::score::select_local_device(self.cfg.device)?;
        let mut net = match cyc.base {
            Some(_) => {
                let mut net = DiagScore::on_device(arch, n, lr, seed, device)?;
                net.zero_output();
                net
            }
            None => DiagScore::on_device(arch, n, lr, seed, device)?,
        };
        let fingerprint = self.genda_fingerprint(&cyc.process, n, pretrain_steps, batch, lr);
        let cached = self.cfg.prior_weights.as_ref().filter(|p| p.exists());
        let (mean, sd) = (&cyc.mean, &cyc.sd);
        let data: Vec<f64> = match pre {
            _ if cached.is_some() => Vec::new(),
            Some(rows) => rows
                .iter()
                .enumerate()
                .map(|(i, v)| (v - mean[i % n]) / sd[i % n])
                .collect(),
            None => cyc.z.clone(),
        };
        if let Some(p) = cached {
            net.load(p, &fingerprint)?;
            log::info!("{method}: prior network loaded from {}", p.display());
        } else {
            self.last_loss = cyc.fit(&mut net, &data, pretrain_steps, batch, seed)?;
            if let Some(p) = &self.cfg.prior_weights {
                self.outputs
                    .push(prior_output(method, p, net.weights_writer(p, &fingerprint)));
            }
        }
        self.net = Some(net);
        Ok(())
    }

    /// What the offline network is trained for: the cache refuses anything else.
    fn genda_fingerprint(
        &self,
        process: &DiagProcess,
        n: usize,
        pretrain_steps: usize,
        batch: usize,
        lr: f64,
    ) -> String {
        let method = self.method();
        let h = crate::values::fnv1a(
            process
                .h
                .iter()
                .chain(&process.r)
                .flat_map(|v| v.to_bits().to_le_bytes()),
        );
        format!(
            "{method}, state {n}, process {h:016x}, network {}, pretrain_data {}, {} steps of batch {} at lr {}",
            toml::to_string(&self.cfg.network).unwrap_or_default().replace('\n', " "),
            self.cfg
                .pretrain_data
                .as_ref()
                .map(|p| p.display().to_string())
                .unwrap_or_default(),
            pretrain_steps,
            batch,
            lr
        )
    }

    /// Reverse-sample the posterior from the standardised forecast `x` (in place, returned)
    /// with the prior network's score (plus the Gaussian baseline's) and the variant's guidance.
    fn sample_genda(
        &self,
        cyc: &GendaCycle,
        mut x: Vec<f64>,
        input: &AnalysisInput,
        observed: &[usize],
        steps: usize,
        seed: u64,
    ) -> Result<Vec<f64>> {
        let method = self.method();
        let (process, base) = (&cyc.process, &cyc.base);
        let net = self.net.as_ref().expect("trained at the first cycle");
        let guidance = match self.variant {
            Variant::MasfAdditive => Guidance::Additive,
            Variant::SfDamped => Guidance::Damped,
            _ => Guidance::Bridge,
        };
        let mut base_err = None;
        let mut sb = vec![0.0; x.len()];
        let mut prior = |xs: &[f64], t: f64, out: &mut [f64]| {
            net.score(process, xs, t, out);
            if let Some(b) = base {
                if let Err(e) = b.score(xs, t, &mut sb) {
                    base_err = Some(e);
                    out.fill(f64::NAN);
                }
                out.iter_mut().zip(&sb).for_each(|(o, s)| *o += s);
            }
        };
        reverse_sample(
            process, &mut prior, guidance, observed, &cyc.y, &cyc.r_obs, &mut x, steps, seed,
        );
        if let Some(e) = base_err {
            return Err(e);
        }
        if x.iter().any(|v| !v.is_finite()) {
            return Err(GendaError::Diverged {
                cycle: input.cycle,
                what: format!("{method} reverse sampling produced non-finite values"),
            });
        }
        Ok(x)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::obs::PointObs;
    use crate::rng::{fill_standard_normal, Purpose};
    use nalgebra::{DMatrix, DVector};

    fn gaussian_config(steps: usize) -> MasfConfig {
        let mut c: MasfConfig = toml::from_str("members = 0").unwrap();
        c.sampler = Some(MasfSampler::Bridge);
        c.steps = Some(steps);
        c.hidden = 16;
        c.layers = 1;
        c.batch = Some(16);
        c.pretrain_steps = Some(0);
        c.train_steps = Some(0);
        c.prior = MasfPrior::GaussianResidual;
        c.geometry = Geometry::Ring;
        c
    }

    /// A correlated Gaussian ensemble (members, 5), mean m, covariance B Bᵀ.
    fn correlated_ensemble(members: usize) -> (Array2<f64>, DMatrix<f64>) {
        let n = 5;
        let b = DMatrix::from_fn(n, n, |i, j| {
            if j <= i {
                0.4 + 0.3 * ((i * 7 + j * 3) % 5) as f64 / 4.0
            } else {
                0.0
            }
        });
        let m = [1.0, -2.0, 0.5, 3.0, 0.0];
        let mut ens = Array2::zeros((members, n));
        let mut z = vec![0.0; n];
        for i in 0..members {
            fill_standard_normal(11, Purpose::EnsembleInit, 0, i as u64, 0, &mut z);
            let x = &b * DVector::from_column_slice(&z);
            for k in 0..n {
                ens[[i, k]] = m[k] + x[k];
            }
        }
        (ens, &b * b.transpose())
    }

    fn moments(ens: &Array2<f64>) -> (DVector<f64>, DMatrix<f64>) {
        let (m, n) = ens.dim();
        let x = DMatrix::from_fn(m, n, |i, k| ens[[i, k]]);
        let mean = x.row_mean().transpose();
        let a = DMatrix::from_fn(m, n, |i, k| x[(i, k)] - mean[k]);
        (mean, a.transpose() * a / (m - 1) as f64)
    }

    /// With a Gaussian forecast ensemble, no localisation and a zero residual, MASF's bridge
    /// analysis is the Kalman update with the ensemble's own mean and covariance: the analysis
    /// mean and covariance (also of the unobserved, correlated components) match.
    #[test]
    fn gaussian_prior_bridge_analysis_is_the_kalman_update() {
        let (mut ens, _) = correlated_ensemble(4000);
        let (mf, pf) = moments(&ens);
        let obs = [0usize, 3];
        let (y, r) = ([2.0, 1.5], [0.5, 0.2]);
        let h = PointObs::new(5, obs.to_vec(), false);
        let input = AnalysisInput::whole(&y, &h, &r, 3, 7);
        let mut f = Masf::new(gaussian_config(200), true);
        f.analyse(&mut ens, &input).unwrap();
        let hm = DMatrix::from_fn(2, 5, |o, k| if obs[o] == k { 1.0 } else { 0.0 });
        let s = &hm * &pf * hm.transpose() + DMatrix::from_diagonal(&DVector::from_row_slice(&r));
        let k = &pf * hm.transpose() * s.try_inverse().unwrap();
        let ma = &mf + &k * (DVector::from_row_slice(&y) - &hm * &mf);
        let pa = (DMatrix::identity(5, 5) - &k * &hm) * &pf;
        let (m_got, p_got) = moments(&ens);
        for i in 0..5 {
            let sd = pa[(i, i)].sqrt();
            eprintln!(
                "{i}: mean {:.4} (Kalman {:.4}), var {:.4} (Kalman {:.4})",
                m_got[i],
                ma[i],
                p_got[(i, i)],
                pa[(i, i)]
            );
            assert!((m_got[i] - ma[i]).abs() < 0.08 * sd, "mean {i}");
            assert!((p_got[(i, i)] / pa[(i, i)] - 1.0).abs() < 0.08, "var {i}");
            for j in 0..i {
                let scale = (pa[(i, i)] * pa[(j, j)]).sqrt();
                assert!(
                    (p_got[(i, j)] - pa[(i, j)]).abs() < 0.06 * scale,
                    "cov {i} {j}: {} vs {}",
                    p_got[(i, j)],
                    pa[(i, j)]
                );
            }
        }
    }

    /// The localisation taper zeroes covariances beyond the Gaspari–Cohn support and keeps the
    /// variances; the noised Gaussian score equals −(A C A + Σ)⁻¹(x − A m) at cached and
    /// uncached times.
    #[test]
    fn localised_gaussian_baseline_score() {
        let n = 12;
        let members = 30;
        let mut data = vec![0.0; members * n];
        fill_standard_normal(5, Purpose::EnsembleInit, 0, 0, 0, &mut data);
        let mut cfg = gaussian_config(10);
        cfg.localization_radius = Some(1.0);
        let f = Masf::new(cfg, true);
        let taper = f.taper(n);
        let (m, c) = fit_gaussian(&data, n, &taper, 0.1);
        // Support 2c = 3.65 grid points on the ring: distance 4 (and 8 = 12 − 4) is cut.
        assert_eq!(c[4], 0.0);
        assert_eq!(c[8], 0.0);
        assert!(c[11] != 0.0 && c[1] != 0.0);
        let (_, c0) = fit_gaussian(&data, n, &|_, _| 1.0, 0.0);
        assert!((c[5 * n + 5] - c0[5 * n + 5]).abs() < 1e-15);
        assert!((c[1] - 0.9 * gaspari_cohn(1.0 / GC_HALF_WIDTH_PER_RADIUS) * c0[1]).abs() < 1e-12);
        let p = DiagProcess::measurement_aware(n, &[0, 2, 4, 6, 8, 10], &[0.1; 6]);
        let times = sampler_grid(10);
        let g = NoisedGaussian::new(&p, &m, &c, &times[..10]).unwrap();
        let x: Vec<f64> = (0..2 * n).map(|i| (i as f64 * 0.37).sin()).collect();
        for &t in &[times[3], 0.41] {
            let mut got = vec![0.0; 2 * n];
            g.score(&x, t, &mut got).unwrap();
            let a = DMatrix::from_diagonal(&DVector::from_fn(n, |k, _| p.a_k(k, t)));
            let sig = DMatrix::from_diagonal(&DVector::from_fn(n, |k, _| p.var_k(k, t)));
            let pt = &a * DMatrix::from_row_slice(n, n, &c) * &a + sig;
            let inv = pt.try_inverse().unwrap();
            for row in 0..2 {
                let r = DVector::from_fn(n, |k, _| x[row * n + k] - p.a_k(k, t) * m[k]);
                let want = -(&inv * r);
                for k in 0..n {
                    assert!((got[row * n + k] - want[k]).abs() < 1e-8 * (1.0 + want[k].abs()));
                }
            }
        }
    }
}
