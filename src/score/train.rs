//! Denoising score matching: Adam with warm-up + cosine learning rate, EMA of the weights,
//! validation loss, checkpoints that resume bit-for-bit, and data parallelism over MPI.
//!
//! Adam is written out here (a dozen tensor ops) rather than taken from `tch::nn::Adam`, whose
//! moment buffers live inside libtorch and cannot be saved: a resumable checkpoint needs them.
//!
//! Data parallel: step k draws one global batch of B sample indices and, for global sample j,
//! its time and noise from the stream (seed, Training, k, j). Rank r of R trains on samples
//! r·B/R..(r+1)·B/R and the gradients are summed over ranks and divided by R, so R ranks with
//! B/R samples each take the same step as one rank with B (up to float summation order).
use super::net::{NetworkConfig, ScoreNetwork};
use super::process::ForwardProcess;
use super::DeviceChoice;
use crate::error::{GendaError, Result};
use crate::io::{read_tensor_file, read_trajectory, write_tensor_file, TensorFile};
use crate::parallel::Collectives;
use crate::rng::{fill_standard_normal, stream, Purpose};
use indicatif::{ProgressBar, ProgressStyle};
use rand_distr::{Distribution, Uniform};
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};
use tch::{Device, Kind, Tensor};

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct TrainConfig {
    pub data: DataConfig,
    pub network: NetworkConfig,
    pub process: ForwardProcess,
    pub training: TrainingConfig,
    pub output: TrainOutput,
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct DataConfig {
    /// HDF5 file with dataset `trajectory` (time, x), e.g. from `genda truth`.
    pub path: PathBuf,
    /// Consecutive states per training sample (1: single states; 2k+1: SDA windows).
    #[serde(default = "one")]
    pub window: usize,
    /// Trailing fraction of the trajectory held out for validation (time-contiguous split).
    #[serde(default = "d_val")]
    pub validation_fraction: f64,
    /// Standardise data by their global mean and std before training.
    #[serde(default = "yes")]
    pub standardize: bool,
    /// With `standardize`: each state variable by its own mean and std over the trajectory
    /// (SDA's per-variable scaling), stored with the weights and applied by every method that
    /// loads them.
    #[serde(default)]
    pub per_variable: bool,
    /// Contiguous shards of the training windows: each step draws `batch / shards` samples from
    /// every shard, and under `mpirun` a rank reads from the file only the shards its share of
    /// the batch draws from (with `shards` a multiple of the ranks, 1/ranks of the training
    /// windows; the validation windows are read by rank 0). The numbers depend on `shards`, not
    /// on the ranks. 1 (the default): one shard, read whole by every rank (uniform draws over
    /// all windows, as before sharding existed).
    #[serde(default = "one")]
    pub shards: usize,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum LrSchedule {
    Constant,
    #[default]
    Cosine,
    /// lr·(1 − step/steps) after the warm-up, to 0 at the end (SDA's `linear`, per step).
    Linear,
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct TrainingConfig {
    pub steps: usize,
    /// Global batch size (split over MPI ranks).
    pub batch: usize,
    pub lr: f64,
    #[serde(default)]
    pub lr_schedule: LrSchedule,
    /// Decoupled weight decay (AdamW: p ← p − lr·wd·p before the Adam step; SDA 1e-3).
    #[serde(default)]
    pub weight_decay: f64,
    #[serde(default)]
    pub warmup: usize,
    /// EMA decay of the weights that are saved.
    #[serde(default = "d_ema")]
    pub ema: f64,
    #[serde(default = "one_u64")]
    pub seed: u64,
    /// Smallest training time (the loss is ill-conditioned at t = 0).
    #[serde(default = "d_tmin")]
    pub t_min: f64,
    /// Validate every this many steps (0: only at the end).
    #[serde(default = "d_val_every")]
    pub validate_every: usize,
    /// Write a checkpoint every this many steps (0: only at the end).
    #[serde(default)]
    pub checkpoint_every: usize,
    #[serde(default)]
    pub device: DeviceChoice,
    /// Loss: `dsm` (ε-prediction, uniform in t) or `flow_matching` (velocity loss of the linear
    /// interpolant, = the ε-loss weighted by 1/(1 − t)²; needs `process.kind = "interpolant"`).
    #[serde(default)]
    pub objective: Objective,
}

/// Training objective.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Objective {
    /// Denoising score matching with the ε-parametrisation: E‖ε̂(x_t, t) + z‖².
    #[default]
    Dsm,
    /// Flow matching on the interpolant x_t = (1 − t) x₀ + t z: E‖v̂ − (z − x₀)‖² with
    /// v̂ = (−ε̂ − x_t)/(1 − t), i.e. E‖ε̂ + z‖²/(1 − t)².
    FlowMatching,
}

/// Per-sample loss weight of `objective` at time t (1 for DSM, 1/(1 − t)² for flow matching).
pub fn objective_weight(objective: Objective, t: f64) -> f64 {
    match objective {
        Objective::Dsm => 1.0,
        Objective::FlowMatching => 1.0 / ((1.0 - t) * (1.0 - t)),
    }
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct TrainOutput {
    /// Weights (EMA) with provenance, HDF5.
    pub weights: PathBuf,
    /// Full training state for `--resume`, HDF5.
    pub checkpoint: PathBuf,
}

fn one() -> usize {
    1
}
fn one_u64() -> u64 {
    1
}
fn yes() -> bool {
    true
}
fn d_val() -> f64 {
    0.1
}
fn d_ema() -> f64 {
    0.999
}
fn d_tmin() -> f64 {
    1e-3
}
fn d_val_every() -> usize {
    200
}

impl TrainConfig {
    pub fn from_file(path: &Path) -> Result<Self> {
        Self::from_file_with(path, &[])
    }

    /// As `from_file`, with `--set key=value` overrides (`overrides::apply_overrides`).
    pub fn from_file_with(path: &Path, sets: &[String]) -> Result<Self> {
        let mut text = crate::overrides::read_config_text(path)?;
        let origin = if sets.is_empty() {
            path.display().to_string()
        } else {
            format!("{} with --set {}", path.display(), sets.join(" --set "))
        };
        if !sets.is_empty() {
            text = crate::overrides::apply_overrides(&text, sets).map_err(|msg| {
                GendaError::Config {
                    path: origin.clone(),
                    msg,
                }
            })?;
        }
        let path = std::path::PathBuf::from(&origin);
        let cfg: TrainConfig = toml::from_str(&text).map_err(|e| GendaError::Config {
            path: path.display().to_string(),
            msg: e.to_string().trim_end().to_string(),
        })?;
        let t = &cfg.training;
        let bad = |k: &str, m: String| {
            Err(GendaError::Config {
                path: path.display().to_string(),
                msg: GendaError::invalid(k, m).to_string(),
            })
        };
        if t.steps == 0 || t.batch == 0 {
            return bad("training.steps/batch", "must be >= 1".into());
        }
        if !(t.lr > 0.0 && t.lr.is_finite()) {
            return bad("training.lr", format!("must be positive, got {}", t.lr));
        }
        if !(t.weight_decay >= 0.0 && t.weight_decay.is_finite()) {
            return bad(
                "training.weight_decay",
                format!("must be >= 0, got {}", t.weight_decay),
            );
        }
        if !(0.0..1.0).contains(&t.ema) {
            return bad("training.ema", format!("must be in [0, 1), got {}", t.ema));
        }
        if cfg.data.shards == 0 || t.batch % cfg.data.shards != 0 {
            return bad(
                "data.shards",
                format!(
                    "must be >= 1 and divide training.batch = {} (each step draws batch/shards samples from every shard), got {}",
                    t.batch, cfg.data.shards
                ),
            );
        }
        if cfg.data.window == 0 || !(0.0..0.9).contains(&cfg.data.validation_fraction) {
            return bad(
                "data",
                "window >= 1 and 0 <= validation_fraction < 0.9".into(),
            );
        }
        if let Err(m) = cfg.process.validate() {
            return bad("process", m);
        }
        if t.objective == Objective::FlowMatching
            && !matches!(cfg.process, ForwardProcess::Interpolant { .. })
        {
            return bad(
                "training.objective",
                "flow_matching needs process.kind = \"interpolant\" (its velocity is defined on the linear interpolant path)".into(),
            );
        }
        Ok(cfg)
    }
}

/// Training samples: windows of a trajectory, standardised, row-major (samples, dim).
pub struct Dataset {
    /// The training windows this rank holds: global windows `train_start..` (all of them
    /// unless the data are sharded over ranks).
    pub train: Vec<f64>,
    pub train_start: usize,
    /// The shards of the training windows (global window ranges; one shard: all of them).
    pub shards: Vec<std::ops::Range<usize>>,
    pub valid: Vec<f64>,
    pub dim: usize,
    pub shift: f64,
    pub scale: f64,
    /// Per state variable (empty: the global `shift`/`scale`).
    pub var_shift: Vec<f64>,
    pub var_scale: Vec<f64>,
}

impl Dataset {
    pub fn from_samples(
        samples: Vec<f64>,
        dim: usize,
        validation_fraction: f64,
        standardize: bool,
    ) -> Result<Self> {
        let n = samples.len() / dim;
        if n < 2 {
            return Err(GendaError::Score(format!(
                "need at least 2 training samples, have {n}"
            )));
        }
        let (shift, scale) = if standardize {
            let m = samples.iter().sum::<f64>() / samples.len() as f64;
            let v = samples.iter().map(|x| (x - m).powi(2)).sum::<f64>() / samples.len() as f64;
            (m, v.sqrt().max(1e-12))
        } else {
            (0.0, 1.0)
        };
        let z: Vec<f64> = samples.iter().map(|x| (x - shift) / scale).collect();
        let n_val = ((n as f64) * validation_fraction).round() as usize;
        let n_train = n - n_val;
        Ok(Dataset {
            train: z[..n_train * dim].to_vec(),
            train_start: 0,
            shards: vec![0..n_train],
            valid: z[n_train * dim..].to_vec(),
            dim,
            shift,
            scale,
            var_shift: Vec::new(),
            var_scale: Vec::new(),
        })
    }

    /// `from_samples` with each of the `vars` state variables (component k of a sample is
    /// variable k mod `vars`) standardised by its own mean and std.
    pub fn from_samples_per_variable(
        samples: Vec<f64>,
        dim: usize,
        vars: usize,
        validation_fraction: f64,
    ) -> Result<Self> {
        if vars == 0 || dim % vars != 0 {
            return Err(GendaError::Score(format!(
                "per-variable standardisation: sample size {dim} is not a multiple of {vars} variables"
            )));
        }
        let mut mean = vec![0.0; vars];
        let mut count = vec![0usize; vars];
        for (i, v) in samples.iter().enumerate() {
            mean[i % vars] += v;
            count[i % vars] += 1;
        }
        mean.iter_mut()
            .zip(&count)
            .for_each(|(m, &c)| *m /= c.max(1) as f64);
        let mut var = vec![0.0; vars];
        for (i, v) in samples.iter().enumerate() {
            var[i % vars] += (v - mean[i % vars]).powi(2);
        }
        let sd: Vec<f64> = var
            .iter()
            .zip(&count)
            .map(|(v, &c)| (v / c.max(1) as f64).sqrt().max(1e-12))
            .collect();
        let z: Vec<f64> = samples
            .iter()
            .enumerate()
            .map(|(i, v)| (v - mean[i % vars]) / sd[i % vars])
            .collect();
        let mut ds = Self::from_samples(z, dim, validation_fraction, false)?;
        ds.var_shift = mean;
        ds.var_scale = sd;
        Ok(ds)
    }

    /// Windows of `window` consecutive states of an HDF5 trajectory.
    pub fn from_trajectory(
        path: &Path,
        window: usize,
        validation_fraction: f64,
        standardize: bool,
    ) -> Result<Self> {
        Self::from_trajectory_with(path, window, validation_fraction, standardize, false)
    }

    /// `from_trajectory`, standardised per state variable when `per_variable` (and `standardize`).
    pub fn from_trajectory_with(
        path: &Path,
        window: usize,
        validation_fraction: f64,
        standardize: bool,
        per_variable: bool,
    ) -> Result<Self> {
        let traj = read_trajectory(path)?;
        if traj.times < window {
            return Err(GendaError::file(
                path,
                format!(
                    "trajectory has {} times, fewer than window = {window}",
                    traj.times
                ),
            ));
        }
        let n = traj.state_dim;
        let samples = windows(path, &traj.data, traj.times - window + 1, window, n)?;
        if standardize && per_variable {
            return Self::from_samples_per_variable(samples, window * n, n, validation_fraction);
        }
        Self::from_samples(samples, window * n, validation_fraction, standardize)
    }

    /// Training windows in all (over every rank's shards).
    pub fn n_train(&self) -> usize {
        self.shards.last().map_or(0, |s| s.end)
    }

    /// The dataset of `genda train` for rank `comm.rank()`: with `cfg.shards` = 1 every rank
    /// reads the whole trajectory (`from_trajectory_with`); with more, a rank reads only the rows
    /// of the shards its share of a global batch of `batch` draws from (`shard_windows`), rank 0
    /// also the validation windows, and the standardisation statistics are summed per shard
    /// (and the validation block) in shard order, the same numbers on any number of ranks.
    pub fn for_training(cfg: &DataConfig, batch: usize, comm: &dyn Collectives) -> Result<Self> {
        if cfg.shards <= 1 {
            return Self::from_trajectory_with(
                &cfg.path,
                cfg.window,
                cfg.validation_fraction,
                cfg.standardize,
                cfg.per_variable,
            );
        }
        let reader = crate::io::TrajectoryReader::open(&cfg.path)?;
        let (n, window, s) = (reader.state_dim, cfg.window, cfg.shards);
        if reader.times < window {
            return Err(GendaError::file(
                &cfg.path,
                format!(
                    "trajectory has {} times, fewer than window = {window}",
                    reader.times
                ),
            ));
        }
        let count = reader.times - window + 1;
        let n_val = ((count as f64) * cfg.validation_fraction).round() as usize;
        let n_train = count - n_val;
        if n_train < s {
            return Err(GendaError::invalid(
                "data.shards",
                format!("{s} shards of {n_train} training windows: each needs at least one"),
            ));
        }
        let shards: Vec<_> = (0..s)
            .map(|k| k * n_train / s..(k + 1) * n_train / s)
            .collect();
        let (ranks, rank) = (comm.size(), comm.rank());
        if batch % ranks != 0 {
            return Err(GendaError::Parallel(format!(
                "training.batch = {batch} is not divisible by {ranks} MPI ranks"
            )));
        }
        let mine = shard_windows(&shards, batch, rank, ranks);
        // Blocks of the statistics: the shards, then the validation windows; each summed by one
        // rank (its first reader) and picked from that rank after the gather.
        let owner = |b: usize| {
            if b < s {
                b * (batch / s) * ranks / batch
            } else {
                0
            }
        };
        let read_windows = |w: std::ops::Range<usize>| -> Result<Vec<f64>> {
            if w.is_empty() {
                return Ok(Vec::new());
            }
            let rows = reader.read_rows(w.start..w.end + window - 1)?;
            windows(&cfg.path, &rows, w.len(), window, n)
        };
        let train = read_windows(mine.clone())?;
        let valid = if rank == 0 {
            read_windows(n_train..count)?
        } else {
            Vec::new()
        };
        let dim = window * n;
        let vars = if cfg.standardize && cfg.per_variable {
            n
        } else {
            1
        };
        // The blocks this rank holds, as (block, its samples).
        let mut held: Vec<(usize, &[f64])> = Vec::new();
        for (b, sh) in shards.iter().enumerate() {
            if owner(b) == rank {
                let at = (sh.start - mine.start) * dim;
                held.push((b, &train[at..at + sh.len() * dim]));
            }
        }
        if rank == 0 {
            held.push((s, &valid));
        }
        let blocks = s + 1;
        // Per block and variable: Σ over the block's samples of f(value, variable), gathered
        // from the block's owner and added in block order.
        let block_sums = |f: &dyn Fn(f64, usize) -> f64| -> Result<Vec<f64>> {
            let mut part = vec![0.0; blocks * vars];
            for &(b, data) in &held {
                for (i, v) in data.iter().enumerate() {
                    part[b * vars + (i % dim) % vars] += f(*v, (i % dim) % vars);
                }
            }
            let mut all = vec![0.0; ranks * blocks * vars];
            comm.all_gather_rows(&part, &vec![blocks * vars; ranks], &mut all)?;
            let mut tot = vec![0.0; vars];
            for b in 0..blocks {
                let from = &all[(owner(b) * blocks + b) * vars..][..vars];
                tot.iter_mut().zip(from).for_each(|(t, x)| *t += x);
            }
            Ok(tot)
        };
        let (mean, sd) = if cfg.standardize {
            let per_var = (count * dim / vars) as f64;
            let mean: Vec<f64> = block_sums(&|v, _| v)?.iter().map(|x| x / per_var).collect();
            let sd: Vec<f64> = block_sums(&|v, k| (v - mean[k]).powi(2))?
                .iter()
                .map(|x| (x / per_var).sqrt().max(1e-12))
                .collect();
            (mean, sd)
        } else {
            (vec![0.0], vec![1.0])
        };
        let z = |data: Vec<f64>| -> Vec<f64> {
            data.into_iter()
                .enumerate()
                .map(|(i, v)| {
                    let k = (i % dim) % vars;
                    (v - mean[k]) / sd[k]
                })
                .collect()
        };
        let per_variable = cfg.standardize && cfg.per_variable;
        Ok(Dataset {
            train: z(train),
            train_start: mine.start,
            shards,
            valid: z(valid),
            dim,
            shift: if per_variable { 0.0 } else { mean[0] },
            scale: if per_variable { 1.0 } else { sd[0] },
            var_shift: if per_variable {
                mean.clone()
            } else {
                Vec::new()
            },
            var_scale: if per_variable { sd.clone() } else { Vec::new() },
        })
    }
}

/// The `count` windows of `window` consecutive states (of `n` values) of the rows `rows`
/// (row-major) of `path`'s trajectory, one sample after the other; every value finite.
fn windows(path: &Path, rows: &[f64], count: usize, window: usize, n: usize) -> Result<Vec<f64>> {
    let mut samples = Vec::with_capacity(count * window * n);
    for i in 0..count {
        samples.extend_from_slice(&rows[i * n..(i + window) * n]);
    }
    if samples.iter().any(|v| !v.is_finite()) {
        return Err(GendaError::file(
            path,
            "dataset `trajectory` contains NaN/inf",
        ));
    }
    Ok(samples)
}

/// The global training windows rank `rank` of `ranks` needs: the shards that its share
/// `rank·B/R..(rank+1)·B/R` of a global batch of `batch` (B/S draws from each of the S `shards`
/// in turn) draws from.
pub fn shard_windows(
    shards: &[std::ops::Range<usize>],
    batch: usize,
    rank: usize,
    ranks: usize,
) -> std::ops::Range<usize> {
    let per = batch / shards.len();
    let (lo, hi) = (rank * batch / ranks, (rank + 1) * batch / ranks);
    if hi <= lo {
        return 0..0;
    }
    shards[lo / per].start..shards[(hi - 1) / per].end
}

/// The whole training state (what a checkpoint holds).
pub struct Trainer {
    pub net: ScoreNetwork,
    pub cfg: TrainingConfig,
    params: Vec<(String, Tensor)>,
    adam_m: Vec<(String, Tensor)>,
    adam_v: Vec<(String, Tensor)>,
    ema: Vec<(String, Tensor)>,
    pub step: usize,
}

const BETA1: f64 = 0.9;
const BETA2: f64 = 0.999;
const ADAM_EPS: f64 = 1e-8;

fn zeros_like(p: &[(String, Tensor)]) -> Vec<(String, Tensor)> {
    p.iter()
        .map(|(n, t)| (n.clone(), t.zeros_like().detach()))
        .collect()
}

impl Trainer {
    pub fn new(net: ScoreNetwork, cfg: TrainingConfig) -> Self {
        let params = net.parameters();
        let ema = params
            .iter()
            .map(|(n, t)| (n.clone(), t.detach().copy()))
            .collect();
        Trainer {
            adam_m: zeros_like(&params),
            adam_v: zeros_like(&params),
            ema,
            params,
            net,
            cfg,
            step: 0,
        }
    }

    fn lr_at(&self, step: usize) -> f64 {
        let c = &self.cfg;
        if step < c.warmup {
            return c.lr * (step + 1) as f64 / c.warmup as f64;
        }
        match c.lr_schedule {
            LrSchedule::Constant => c.lr,
            LrSchedule::Cosine => {
                let p = (step - c.warmup) as f64 / (c.steps.saturating_sub(c.warmup)).max(1) as f64;
                c.lr * (0.1 + 0.9 * 0.5 * (1.0 + (std::f64::consts::PI * p.min(1.0)).cos()))
            }
            LrSchedule::Linear => {
                let p = (step - c.warmup) as f64 / (c.steps.saturating_sub(c.warmup)).max(1) as f64;
                c.lr * (1.0 - p.min(1.0))
            }
        }
    }

    /// (x_t, z, t) for global samples `lo..hi` of step `step`, from the counter-keyed streams.
    fn noised_batch(
        &self,
        data: &[f64],
        dim: usize,
        idx: &[usize],
        lo: usize,
        step: u64,
        device: Device,
    ) -> (Tensor, Tensor, Tensor) {
        let p = &self.net.process;
        let tdist = Uniform::new(self.cfg.t_min, p.t_max());
        let b = idx.len();
        let mut xt = vec![0f32; b * dim];
        let mut zf = vec![0f32; b * dim];
        let mut ts = vec![0f32; b];
        let mut z = vec![0.0; dim];
        for (j, &i) in idx.iter().enumerate() {
            let g = (lo + j) as u64;
            let mut rng = stream(self.cfg.seed, Purpose::Training, step, g, u64::MAX);
            let t = tdist.sample(&mut rng);
            fill_standard_normal(self.cfg.seed, Purpose::Training, step, g, 0, &mut z);
            let (a, s) = (p.alpha(t), p.sigma(t));
            for k in 0..dim {
                xt[j * dim + k] = (a * data[i * dim + k] + s * z[k]) as f32;
                zf[j * dim + k] = z[k] as f32;
            }
            ts[j] = t as f32;
        }
        let shape = [b as i64, dim as i64];
        (
            Tensor::from_slice(&xt).reshape(shape).to(device),
            Tensor::from_slice(&zf).reshape(shape).to(device),
            Tensor::from_slice(&ts).to(device),
        )
    }

    /// Batch loss of the objective: mean over samples and components of w(t)·(ε̂ + z)².
    fn loss(&self, xt: &Tensor, z: &Tensor, t: &Tensor) -> Tensor {
        let sq = (self.net.eps_hat(xt, t) + z).square();
        match self.cfg.objective {
            Objective::Dsm => sq.mean(Kind::Float),
            Objective::FlowMatching => {
                let w = (Tensor::ones_like(t) - t)
                    .square()
                    .reciprocal()
                    .unsqueeze(-1);
                (sq * w).mean(Kind::Float)
            }
        }
    }

    /// One optimisation step on this rank's share of the global batch; returns the global loss.
    pub fn step(&mut self, data: &Dataset, comm: &dyn Collectives) -> Result<f64> {
        if self.cfg.objective == Objective::FlowMatching
            && !matches!(self.net.process, ForwardProcess::Interpolant { .. })
        {
            return Err(GendaError::invalid(
                "training.objective",
                "flow_matching needs process.kind = \"interpolant\"",
            ));
        }
        let (ranks, rank) = (comm.size(), comm.rank());
        let b = self.cfg.batch;
        if b % ranks != 0 {
            return Err(GendaError::Parallel(format!(
                "training.batch = {b} is not divisible by {ranks} MPI ranks"
            )));
        }
        let step = self.step as u64;
        let mut rng = stream(self.cfg.seed, Purpose::Training, step, u64::MAX, u64::MAX);
        // batch/shards draws from each shard in turn (one shard: b uniform draws over all).
        let per = b / data.shards.len();
        let global: Vec<usize> = data
            .shards
            .iter()
            .flat_map(|sh| {
                let pick = Uniform::new(sh.start, sh.end);
                (0..per).map(|_| pick.sample(&mut rng)).collect::<Vec<_>>()
            })
            .collect();
        let (lo, hi) = (rank * b / ranks, (rank + 1) * b / ranks);
        let held = data.train.len() / data.dim;
        let local: Vec<usize> = global[lo..hi]
            .iter()
            .map(|&i| i.wrapping_sub(data.train_start))
            .collect();
        if local.iter().any(|&i| i >= held) {
            return Err(GendaError::Parallel(format!(
                "rank {rank} holds training windows {}..{} but its share of step {step} draws outside them (the dataset was read for another layout)",
                data.train_start,
                data.train_start + held
            )));
        }
        let device = self.net.device();
        let (xt, z, t) = self.noised_batch(&data.train, data.dim, &local, lo, step, device);
        for (_, p) in &self.params {
            let mut g = p.grad();
            if g.defined() {
                let _ = g.zero_();
            }
        }
        let loss = self.loss(&xt, &z, &t);
        loss.backward();
        // Flatten gradients (and the loss) for one allreduce.
        let mut flat: Vec<f32> = Vec::new();
        for (_, p) in &self.params {
            let g = p.grad().to(Device::Cpu).to_kind(Kind::Float).reshape([-1]);
            flat.extend(Vec::<f32>::try_from(&g).map_err(|e| GendaError::Score(e.to_string()))?);
        }
        flat.push(loss.double_value(&[]) as f32);
        comm.all_reduce_sum_f32(&mut flat);
        let inv = 1.0 / ranks as f32;
        flat.iter_mut().for_each(|v| *v *= inv);
        let global_loss = *flat.last().expect("loss appended") as f64;
        if !global_loss.is_finite() {
            return Err(GendaError::Score(format!(
                "training loss is {global_loss} at step {} (lower training.lr?)",
                self.step
            )));
        }
        let lr = self.lr_at(self.step);
        let k = (self.step + 1) as i32;
        let (c1, c2) = (1.0 - BETA1.powi(k), 1.0 - BETA2.powi(k));
        let _g = tch::no_grad_guard();
        let mut off = 0;
        for (i, (_, p)) in self.params.iter().enumerate() {
            let numel = p.numel();
            let g = Tensor::from_slice(&flat[off..off + numel])
                .reshape(p.size())
                .to(device);
            off += numel;
            let m = &self.adam_m[i].1;
            let v = &self.adam_v[i].1;
            m.shallow_clone().copy_(&(m * BETA1 + &g * (1.0 - BETA1)));
            v.shallow_clone()
                .copy_(&(v * BETA2 + g.square() * (1.0 - BETA2)));
            let upd = (m / c1) / ((v / c2).sqrt() + ADAM_EPS) * lr;
            let decay = 1.0 - lr * self.cfg.weight_decay;
            p.shallow_clone().copy_(&(p * decay - upd));
            let e = &self.ema[i].1;
            e.shallow_clone()
                .copy_(&(e * self.cfg.ema + p * (1.0 - self.cfg.ema)));
        }
        self.step += 1;
        Ok(global_loss)
    }

    /// DSM loss of the EMA weights on the validation set with fixed noise.
    pub fn validation_loss(&self, data: &Dataset) -> f64 {
        let nv = data.valid.len() / data.dim;
        if nv == 0 {
            return f64::NAN;
        }
        let idx: Vec<usize> = (0..nv.min(1024)).collect();
        let (xt, z, t) =
            self.noised_batch(&data.valid, data.dim, &idx, 0, u64::MAX, self.net.device());
        let _g = tch::no_grad_guard();
        // Swap in the EMA weights for evaluation.
        let saved: Vec<Tensor> = self.params.iter().map(|(_, p)| p.detach().copy()).collect();
        for ((_, p), (_, e)) in self.params.iter().zip(&self.ema) {
            p.shallow_clone().copy_(e);
        }
        let loss = self.loss(&xt, &z, &t).double_value(&[]);
        for ((_, p), s) in self.params.iter().zip(&saved) {
            p.shallow_clone().copy_(s);
        }
        loss
    }

    fn base_attrs(&self, kind: &str) -> TensorFile {
        let mut tf = TensorFile::default();
        for (k, v) in self.net.attrs() {
            tf.attrs.insert(k, v);
        }
        tf.attrs.insert("kind".into(), kind.into());
        tf.attrs.insert("step".into(), self.step.to_string());
        tf.attrs.insert(
            "training".into(),
            toml::to_string(&self.cfg).unwrap_or_default(),
        );
        tf
    }

    /// Weights file: the EMA weights as `params`, with provenance.
    pub fn save_weights(&self, path: &Path, data_source: &str) -> Result<()> {
        let mut tf = self.base_attrs("weights");
        tf.attrs.insert("data".into(), data_source.into());
        tf.groups
            .insert("params".into(), ScoreNetwork::export(&self.ema));
        write_tensor_file(path, &tf)
    }

    /// Checkpoint: parameters, EMA, Adam moments and the step counter.
    pub fn save_checkpoint(&self, path: &Path) -> Result<()> {
        let mut tf = self.base_attrs("checkpoint");
        tf.groups
            .insert("params".into(), ScoreNetwork::export(&self.params));
        tf.groups
            .insert("ema".into(), ScoreNetwork::export(&self.ema));
        tf.groups
            .insert("adam_m".into(), ScoreNetwork::export(&self.adam_m));
        tf.groups
            .insert("adam_v".into(), ScoreNetwork::export(&self.adam_v));
        write_tensor_file(path, &tf)
    }

    /// Restore a checkpoint into a trainer built from the same config.
    pub fn load_checkpoint(&mut self, path: &Path) -> Result<()> {
        let tf = read_tensor_file(path)?;
        let origin = path.display().to_string();
        if tf.attrs.get("kind").map(String::as_str) != Some("checkpoint") {
            return Err(GendaError::Score(format!(
                "{origin}: not a genda training checkpoint"
            )));
        }
        let want = toml::to_string(&self.net.cfg).unwrap_or_default();
        if tf.attrs.get("network") != Some(&want) {
            return Err(GendaError::Score(format!(
                "{origin}: checkpoint is for a different network config"
            )));
        }
        for (group, tensors) in [
            ("params", &self.params),
            ("ema", &self.ema),
            ("adam_m", &self.adam_m),
            ("adam_v", &self.adam_v),
        ] {
            let arrays = tf
                .groups
                .get(group)
                .ok_or_else(|| GendaError::Score(format!("{origin}: group `{group}` missing")))?;
            ScoreNetwork::import(tensors, arrays, &origin)?;
        }
        self.step = tf
            .attrs
            .get("step")
            .and_then(|s| s.parse().ok())
            .ok_or_else(|| GendaError::Score(format!("{origin}: bad `step`")))?;
        Ok(())
    }

    /// Flat copy of the current parameters (for comparisons).
    pub fn flat_params(&self) -> Vec<f32> {
        ScoreNetwork::export(&self.params)
            .into_iter()
            .flat_map(|a| a.data)
            .collect()
    }
}

/// `genda train`: train on the configured HDF5 trajectory, write weights (and checkpoints).
pub fn run_training(
    cfg: &TrainConfig,
    comm: &dyn Collectives,
    resume: Option<&Path>,
    progress: bool,
) -> Result<(f64, f64)> {
    let data = Dataset::for_training(&cfg.data, cfg.training.batch, comm)?;
    // One GPU per rank: MPI rank → local device index (ranks on a node share its GPUs).
    let device = super::select_local_device(cfg.training.device)?;
    let mut net = ScoreNetwork::new(
        cfg.network.clone(),
        cfg.process,
        data.dim,
        device,
        cfg.training.seed,
    )?;
    net.shift = data.shift;
    net.scale = data.scale;
    net.var_shift = data.var_shift.clone();
    net.var_scale = data.var_scale.clone();
    let mut trainer = Trainer::new(net, cfg.training.clone());
    if let Some(ckpt) = resume {
        trainer.load_checkpoint(ckpt)?;
        log::info!("resumed from {} at step {}", ckpt.display(), trainer.step);
    }
    log::info!(
        "training {:?} score network (dim {}) on {} samples ({} validation) from {}, {:?}, {} rank(s), device {:?}",
        cfg.network,
        data.dim,
        data.n_train(),
        data.valid.len() / data.dim,
        cfg.data.path.display(),
        cfg.process,
        comm.size(),
        device
    );
    let bar = if progress && comm.is_root() {
        ProgressBar::new(cfg.training.steps as u64)
    } else {
        ProgressBar::hidden()
    };
    bar.set_style(
        ProgressStyle::with_template(
            "train {pos}/{len} [{bar:40}] {elapsed_precise} eta {eta} {msg}",
        )
        .unwrap_or_else(|_| ProgressStyle::default_bar())
        .progress_chars("=> "),
    );
    bar.set_position(trainer.step as u64);
    let mut last = f64::NAN;
    let mut val = f64::NAN;
    while trainer.step < cfg.training.steps {
        last = trainer.step(&data, comm)?;
        bar.inc(1);
        let s = trainer.step;
        let every = cfg.training.validate_every;
        if (every > 0 && s % every == 0) || s == cfg.training.steps {
            val = trainer.validation_loss(&data);
            // Sharded data: rank 0 holds the validation windows.
            let mut v = [val];
            comm.broadcast_f64(&mut v);
            val = v[0];
            bar.set_message(format!("loss {last:.4} val {val:.4}"));
            log::info!(
                "step {s}: loss {last:.5}, validation loss (EMA) {val:.5}, lr {:.2e}",
                trainer.lr_at(s.saturating_sub(1))
            );
        }
        if cfg.training.checkpoint_every > 0
            && s % cfg.training.checkpoint_every == 0
            && comm.is_root()
        {
            trainer.save_checkpoint(&cfg.output.checkpoint)?;
        }
    }
    bar.finish_and_clear();
    if comm.is_root() {
        trainer.save_checkpoint(&cfg.output.checkpoint)?;
        trainer.save_weights(&cfg.output.weights, &cfg.data.path.display().to_string())?;
    }
    Ok((last, val))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::parallel::SerialComm;
    use crate::score::analytic::test_support::{check_moments, two_bumps as mixture};
    use crate::score::analytic::GaussianMixture;
    use crate::score::sampler::{prior_sample, sample, SamplerConfig, SamplerKind};
    use nalgebra::{DMatrix, DVector};
    use rand_distr::StandardNormal;

    fn cfg(steps: usize, batch: usize) -> TrainingConfig {
        TrainingConfig {
            steps,
            batch,
            lr: 2e-3,
            lr_schedule: LrSchedule::Cosine,
            weight_decay: 0.0,
            warmup: 50,
            ema: 0.99,
            seed: 3,
            t_min: 1e-3,
            validate_every: 100,
            checkpoint_every: 0,
            device: DeviceChoice::Cpu,
            objective: Objective::Dsm,
        }
    }

    fn mlp(hidden: i64) -> NetworkConfig {
        NetworkConfig::Mlp {
            hidden,
            layers: 3,
            time_features: 8,
        }
    }

    /// Exact samples of a 2-D Gaussian mixture (means, Cholesky factors).
    fn mixture_samples(gm: &GaussianMixture, n: usize, seed: u64) -> Vec<f64> {
        let mut rng = stream(seed, Purpose::Training, 9, 9, 9);
        let u = Uniform::new(0.0, 1.0);
        let chols: Vec<DMatrix<f64>> = gm
            .covs
            .iter()
            .map(|c| c.clone().cholesky().unwrap().l())
            .collect();
        let mut out = Vec::with_capacity(2 * n);
        for _ in 0..n {
            let k = if u.sample(&mut rng) < gm.weights[0] {
                0
            } else {
                1
            };
            let z = DVector::from_fn(2, |_, _| StandardNormal.sample(&mut rng));
            let x = &gm.means[k] + &chols[k] * z;
            out.extend_from_slice(x.as_slice());
        }
        out
    }

    /// (a) On Gaussian data the learned score approaches the exact one: −(x − αμ)/(α²v + σ²).
    #[test]
    fn learned_score_approaches_exact_gaussian_score() {
        let (mu, v) = ([1.0f64, -2.0], [0.5f64, 2.0]);
        let mut rng = stream(11, Purpose::Training, 1, 0, 0);
        let data: Vec<f64> = (0..8000)
            .map(|i| {
                let z: f64 = StandardNormal.sample(&mut rng);
                mu[i % 2] + v[i % 2].sqrt() * z
            })
            .collect();
        let ds = Dataset::from_samples(data, 2, 0.1, false).unwrap();
        let process = ForwardProcess::Vp {
            beta_min: 0.1,
            beta_max: 20.0,
        };
        let net = ScoreNetwork::new(mlp(64), process, 2, Device::Cpu, 5).unwrap();
        let mut tr = Trainer::new(net, cfg(1500, 256));
        for _ in 0..1500 {
            tr.step(&ds, &SerialComm).unwrap();
        }
        // Evaluate the EMA weights, as saved.
        let tf = {
            let mut t = TensorFile::default();
            t.groups
                .insert("params".into(), ScoreNetwork::export(&tr.ema));
            for (k, v) in tr.net.attrs() {
                t.attrs.insert(k, v);
            }
            t
        };
        let net = ScoreNetwork::from_tensor_file(&tf, "params", DeviceChoice::Cpu, "test").unwrap();
        for t in [0.1, 0.3, 0.6] {
            let (a, s) = (process.alpha(t), process.sigma(t));
            let pts: Vec<f64> = (0..400)
                .map(|i| {
                    let j = i % 2;
                    let k = (i / 2) as f64;
                    a * mu[j] + (a * a * v[j] + s * s).sqrt() * 1.5 * (k * 0.37).sin()
                })
                .collect();
            let mut sc = vec![0.0; pts.len()];
            net.score_into(&pts, t, &mut sc);
            let (mut num, mut den) = (0.0, 0.0);
            for i in 0..pts.len() {
                let j = i % 2;
                let exact = -(pts[i] - a * mu[j]) / (a * a * v[j] + s * s);
                num += (sc[i] - exact).powi(2);
                den += exact * exact;
            }
            let rel = (num / den).sqrt();
            eprintln!("t = {t}: relative L2 score error {rel:.3}");
            assert!(rel < 0.15, "t = {t}: relative L2 score error {rel}");
        }
    }

    /// (c) A tiny network trained on mixture samples generates samples with the mixture's moments.
    #[test]
    fn network_trained_on_mixture_generates_its_moments() {
        let gm = mixture();
        let ds = Dataset::from_samples(mixture_samples(&gm, 20000, 1), 2, 0.05, false).unwrap();
        let process = ForwardProcess::Vp {
            beta_min: 0.1,
            beta_max: 20.0,
        };
        let net = ScoreNetwork::new(mlp(96), process, 2, Device::Cpu, 2).unwrap();
        let mut tr = Trainer::new(
            net,
            TrainingConfig {
                lr: 3e-3,
                ema: 0.995,
                ..cfg(3000, 256)
            },
        );
        for _ in 0..3000 {
            tr.step(&ds, &SerialComm).unwrap();
        }
        ScoreNetwork::import(&tr.params, &ScoreNetwork::export(&tr.ema), "ema").unwrap();
        let score = |x: &[f64], t: f64, out: &mut [f64]| tr.net.score_into(x, t, out);
        let sc = SamplerConfig {
            kind: SamplerKind::ProbabilityFlow,
            steps: 100,
            t_min: 1e-3,
            denoise: true,
        };
        let mut x = prior_sample(&process, 4000, 2, 5);
        sample(&process, &sc, &score, &mut x, 2, 5, None);
        check_moments(&gm, &x, "network trained on the mixture", (0.05, 0.2, 0.15));
    }

    /// A diverging optimisation (absurd learning rate) stops with an error naming the loss.
    #[test]
    fn nan_loss_is_an_error() {
        let gm = mixture();
        let ds = Dataset::from_samples(mixture_samples(&gm, 500, 4), 2, 0.0, true).unwrap();
        let process = ForwardProcess::Vp {
            beta_min: 0.1,
            beta_max: 20.0,
        };
        let mut tr = Trainer::new(
            ScoreNetwork::new(mlp(16), process, 2, Device::Cpu, 1).unwrap(),
            TrainingConfig {
                lr: 1e30,
                warmup: 0,
                ..cfg(50, 32)
            },
        );
        let err = (0..50)
            .find_map(|_| tr.step(&ds, &SerialComm).err())
            .expect("loss should blow up");
        assert!(err.to_string().contains("training loss"), "{err}");
        assert!(Dataset::from_samples(vec![1.0, f64::NAN], 2, 0.0, false).is_err());
    }

    /// Training 40 steps straight equals 20 steps, checkpoint, reload into a fresh trainer, 20 more.
    #[test]
    fn resumed_training_equals_uninterrupted_training() {
        let gm = mixture();
        let ds = Dataset::from_samples(mixture_samples(&gm, 2000, 2), 2, 0.1, true).unwrap();
        let process = ForwardProcess::Ve {
            sigma_min: 0.01,
            sigma_max: 5.0,
        };
        let make = || {
            Trainer::new(
                ScoreNetwork::new(mlp(32), process, 2, Device::Cpu, 8).unwrap(),
                cfg(40, 64),
            )
        };
        let mut straight = make();
        for _ in 0..40 {
            straight.step(&ds, &SerialComm).unwrap();
        }
        let dir = tempfile::tempdir().unwrap();
        let ck = dir.path().join("ck.h5");
        let mut first = make();
        for _ in 0..20 {
            first.step(&ds, &SerialComm).unwrap();
        }
        first.save_checkpoint(&ck).unwrap();
        let mut resumed = Trainer::new(
            ScoreNetwork::new(mlp(32), process, 2, Device::Cpu, 999).unwrap(),
            cfg(40, 64),
        );
        resumed.load_checkpoint(&ck).unwrap();
        assert_eq!(resumed.step, 20);
        for _ in 0..20 {
            resumed.step(&ds, &SerialComm).unwrap();
        }
        assert_eq!(
            straight.flat_params(),
            resumed.flat_params(),
            "resumed training diverged from uninterrupted training"
        );
    }

    #[test]
    fn weights_reload_bit_exactly_and_refuse_wrong_use() {
        let gm = mixture();
        let ds = Dataset::from_samples(mixture_samples(&gm, 500, 3), 2, 0.1, true).unwrap();
        let process = ForwardProcess::Vp {
            beta_min: 0.1,
            beta_max: 20.0,
        };
        let mut net = ScoreNetwork::new(mlp(16), process, 2, Device::Cpu, 1).unwrap();
        (net.shift, net.scale) = (ds.shift, ds.scale);
        let mut tr = Trainer::new(net, cfg(5, 32));
        for _ in 0..5 {
            tr.step(&ds, &SerialComm).unwrap();
        }
        let dir = tempfile::tempdir().unwrap();
        let w = dir.path().join("w.h5");
        tr.save_weights(&w, "test data").unwrap();
        let net = ScoreNetwork::load(&w, Some(&process), DeviceChoice::Cpu).unwrap();
        let saved: Vec<f32> = ScoreNetwork::export(&tr.ema)
            .into_iter()
            .flat_map(|a| a.data)
            .collect();
        let loaded: Vec<f32> = ScoreNetwork::export(&net.parameters())
            .into_iter()
            .flat_map(|a| a.data)
            .collect();
        assert_eq!(saved, loaded);
        assert_eq!((net.shift, net.scale), (ds.shift, ds.scale));
        // Another forward process: refused, naming both.
        let other = ForwardProcess::Ve {
            sigma_min: 0.01,
            sigma_max: 5.0,
        };
        let e = ScoreNetwork::load(&w, Some(&other), DeviceChoice::Cpu)
            .err()
            .unwrap()
            .to_string();
        assert!(
            e.contains("forward process") && e.contains("mis-scaled"),
            "{e}"
        );
        // Another architecture: refused, naming the parameter.
        let mut tf = read_tensor_file(&w).unwrap();
        tf.attrs
            .insert("network".into(), toml::to_string(&mlp(17)).unwrap());
        let e = ScoreNetwork::from_tensor_file(&tf, "params", DeviceChoice::Cpu, "x")
            .err()
            .unwrap()
            .to_string();
        assert!(e.contains("shape"), "{e}");
        // Corrupt and missing files.
        std::fs::write(dir.path().join("bad.h5"), b"garbage").unwrap();
        let e = ScoreNetwork::load(&dir.path().join("bad.h5"), None, DeviceChoice::Cpu)
            .err()
            .unwrap()
            .to_string();
        assert!(e.contains("bad.h5"), "{e}");
        let e = ScoreNetwork::load(&dir.path().join("none.h5"), None, DeviceChoice::Cpu)
            .err()
            .unwrap()
            .to_string();
        assert!(e.contains("no such file"), "{e}");
        // CUDA requested where there is none: an error, no silent fallback.
        if !tch::Cuda::is_available() {
            let e = crate::score::select_device(DeviceChoice::Cuda, 0)
                .err()
                .unwrap()
                .to_string();
            assert!(e.contains("cuda"), "{e}");
        }
    }

    /// The flow-matching loss implemented as the 1/(1 − t)²-weighted ε-loss equals the velocity
    /// loss ‖v̂ − (z − x₀)‖² with v̂ = (−ε̂ − x_t)/(1 − t), computed directly on a small batch.
    #[test]
    fn flow_matching_weighting_equals_velocity_loss() {
        let process = ForwardProcess::Interpolant { t_max: 0.95 };
        let net = ScoreNetwork::new(mlp(16), process, 3, Device::Cpu, 4).unwrap();
        let tr = Trainer::new(
            net,
            TrainingConfig {
                objective: Objective::FlowMatching,
                ..cfg(10, 8)
            },
        );
        let b = 6;
        let x0: Vec<f64> = (0..b * 3).map(|i| (i as f64 * 0.37).sin() * 2.0).collect();
        let z: Vec<f64> = (0..b * 3).map(|i| (i as f64 * 1.3).cos()).collect();
        let ts: Vec<f64> = (0..b).map(|i| 0.05 + 0.15 * i as f64).collect();
        let xt: Vec<f64> = (0..b * 3)
            .map(|k| (1.0 - ts[k / 3]) * x0[k] + ts[k / 3] * z[k])
            .collect();
        let f = |v: &[f64]| Tensor::from_slice(v).to_kind(Kind::Float);
        let (xt_t, z_t, t_t) = (
            f(&xt).reshape([b as i64, 3]),
            f(&z).reshape([b as i64, 3]),
            f(&ts),
        );
        let got = tr.loss(&xt_t, &z_t, &t_t).double_value(&[]);
        let eps = tr
            .net
            .eps_hat(&xt_t, &t_t)
            .to_kind(Kind::Double)
            .reshape([-1]);
        let eps = Vec::<f64>::try_from(&eps).unwrap();
        let want = (0..b * 3)
            .map(|k| {
                let t = ts[k / 3];
                let v_hat = (-eps[k] - xt[k]) / (1.0 - t);
                (v_hat - (z[k] - x0[k])).powi(2)
            })
            .sum::<f64>()
            / (b * 3) as f64;
        assert!((got - want).abs() < 1e-4 * want.max(1.0), "{got} vs {want}");
        assert_eq!(objective_weight(Objective::FlowMatching, 0.5), 4.0);
        // DSM is the unweighted ε-loss; flow matching on a VP process is refused.
        let tr_vp = Trainer::new(
            ScoreNetwork::new(mlp(8), ForwardProcess::default(), 2, Device::Cpu, 1).unwrap(),
            TrainingConfig {
                objective: Objective::FlowMatching,
                ..cfg(10, 8)
            },
        );
        let mut tr_vp = tr_vp;
        let ds = Dataset::from_samples(vec![0.1, 0.2, 0.3, 0.5, -0.1, 0.0], 2, 0.0, false).unwrap();
        let err = tr_vp.step(&ds, &SerialComm).unwrap_err();
        assert!(err.to_string().contains("interpolant"), "{err}");
    }

    /// Per-variable standardisation: each variable of a window sample gets its own mean and
    /// std (window positions pooled), the network file keeps them, and a loaded network applies
    /// them per state variable; the linear schedule ends at lr/steps.
    #[test]
    fn per_variable_standardisation_and_linear_schedule() {
        // Windows of 2 states of 2 variables: variable 0 ~ 10 + 2 u, variable 1 ~ -3 + 0.5 v.
        let mut samples = Vec::new();
        for i in 0..400 {
            let (u, v) = (
                ((i * 37) % 101) as f64 / 50.0 - 1.0,
                ((i * 53) % 97) as f64 / 48.0 - 1.0,
            );
            samples.extend_from_slice(&[
                10.0 + 2.0 * u,
                -3.0 + 0.5 * v,
                10.0 + 2.0 * v,
                -3.0 + 0.5 * u,
            ]);
        }
        let ds = Dataset::from_samples_per_variable(samples, 4, 2, 0.0).unwrap();
        assert!((ds.var_shift[0] - 10.0).abs() < 0.1 && (ds.var_shift[1] + 3.0).abs() < 0.05);
        assert!(ds.var_scale[0] / ds.var_scale[1] > 3.5 && ds.var_scale[0] / ds.var_scale[1] < 4.5);
        for k in 0..4 {
            let col: Vec<f64> = ds.train.iter().skip(k).step_by(4).cloned().collect();
            let m = col.iter().sum::<f64>() / col.len() as f64;
            assert!(m.abs() < 0.1, "component {k} mean {m}");
        }
        assert!(Dataset::from_samples_per_variable(vec![0.0; 12], 3, 2, 0.0).is_err());
        let mut net =
            ScoreNetwork::new(mlp(8), ForwardProcess::default(), 4, Device::Cpu, 1).unwrap();
        net.var_shift = ds.var_shift.clone();
        net.var_scale = ds.var_scale.clone();
        let tf = TensorFile {
            groups: [(
                "params".to_string(),
                ScoreNetwork::export(&net.parameters()),
            )]
            .into_iter()
            .collect(),
            attrs: net.attrs().into_iter().collect(),
        };
        let back = ScoreNetwork::from_tensor_file(&tf, "params", DeviceChoice::Cpu, "t").unwrap();
        assert_eq!(back.var_shift, net.var_shift);
        assert_eq!(back.var_scale, net.var_scale);
        assert_eq!(back.shift_at(3), net.var_shift[1]);
        // Linear schedule: lr at the last step is lr/steps; weight decay shrinks an idle weight.
        let mut c = cfg(100, 8);
        c.lr_schedule = LrSchedule::Linear;
        c.warmup = 0;
        let tr = Trainer::new(
            ScoreNetwork::new(mlp(8), ForwardProcess::default(), 4, Device::Cpu, 1).unwrap(),
            c,
        );
        assert!((tr.lr_at(0) - 2e-3).abs() < 1e-15);
        assert!((tr.lr_at(99) - 2e-3 * 0.01).abs() < 1e-12);
    }

    /// Sharded training data: rank r of R reads only the shards its share of the batch draws
    /// from; the standardisation summed per shard equals the whole-file one to rounding, the
    /// windows are the same, and one shard is exactly the unsharded dataset.
    #[test]
    fn sharded_dataset_reads_its_shards_and_matches_the_whole_file() {
        let win = |s: &[std::ops::Range<usize>], r, rr| shard_windows(s, 8, r, rr);
        let shards: Vec<_> = (0..4).map(|k| k * 10 / 4..(k + 1) * 10 / 4).collect();
        assert_eq!(win(&shards, 0, 1), 0..10);
        assert_eq!((win(&shards, 0, 2), win(&shards, 1, 2)), (0..5, 5..10));
        assert_eq!(win(&shards, 5, 8), shards[2].clone());
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("t.h5");
        let (times, n) = (57, 3);
        let data: Vec<f64> = (0..times * n)
            .map(|i| (i as f64 * 0.731).sin() * (1.0 + (i % n) as f64) + (i % n) as f64)
            .collect();
        let traj = crate::io::Trajectory {
            data,
            times,
            state_dim: n,
            dt: 0.1,
            model: "lorenz63".into(),
        };
        crate::io::write_trajectory(&path, &traj, "").unwrap();
        for per_variable in [false, true] {
            let cfg = |shards| DataConfig {
                path: path.clone(),
                window: 3,
                validation_fraction: 0.2,
                standardize: true,
                per_variable,
                shards,
            };
            let whole = Dataset::for_training(&cfg(1), 8, &SerialComm).unwrap();
            let sharded = Dataset::for_training(&cfg(4), 8, &SerialComm).unwrap();
            let direct = Dataset::from_trajectory_with(&path, 3, 0.2, true, per_variable).unwrap();
            assert_eq!(whole.train, direct.train);
            assert_eq!(whole.shards, vec![0..whole.n_train()]);
            assert_eq!(sharded.n_train(), whole.n_train());
            assert_eq!(sharded.shards.len(), 4);
            let close = |a: &[f64], b: &[f64]| {
                a.len() == b.len() && a.iter().zip(b).all(|(x, y)| (x - y).abs() < 1e-12)
            };
            assert!(close(&sharded.train, &whole.train) && close(&sharded.valid, &whole.valid));
            assert!((sharded.shift - whole.shift).abs() < 1e-13);
            assert!((sharded.scale - whole.scale).abs() < 1e-13);
            assert!(close(&sharded.var_shift, &whole.var_shift));
            assert!(close(&sharded.var_scale, &whole.var_scale));
            assert_eq!(per_variable, !sharded.var_scale.is_empty());
        }
    }
}
