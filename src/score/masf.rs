//! The measurement-aware forward process of MASF (Yoon, Kim & Kim 2026) for measurements that
//! select state components, y_k = x_k + N(0, r_k) for k observed, in coordinates where the
//! measurement is of unit scale (the filter standardises by the forecast ensemble):
//!
//!   x_t = A(t) x₀ + Σ(t)^{1/2} ξ,   A(t) = a(t) I + (1 − a(t)) H,   Σ(t) = (1 − a(t)²) R̃,
//!
//! with H = diag(h), h_k = 1 on observed and 0 on unobserved components, R̃ = diag(r̃) with
//! r̃_k = r_k observed and 1 unobserved, and the cosine schedule a(t) (a(0) = 1, a(1) = 0). So
//! A(0) = I, Σ(0) = 0 (the data) and A(1) = H, Σ(1) = R̃: the state is degraded progressively
//! into the measurement, whose law given x₀ is the terminal marginal, and on unobserved
//! components the process is the usual variance-preserving one. Every operator is diagonal, so
//! the transition x_t | x_s is N(M(s,t) x_s, Σ(s,t)) componentwise with M(s,t) = A(t)/A(s),
//! Σ(s,t) = Σ(t) − M(s,t)² Σ(s), and the likelihood of y = x_1 is exact:
//!
//!   ∇ log p(y | x_t) = M(t,1) (y − M(t,1) x_t) / Σ(t,1)   (observed components; 0 elsewhere).
//!
//! With h ≡ 0, r̃ ≡ 1 the same code is the standard (measurement-agnostic) VP process of the
//! score-filter baseline (SF). Times are kept in [T_EPS, T_END] as in the MASF code (A(t) is
//! singular at t = 1 on unobserved components).
//!
//! `DiagScore` is the prior score network for such a process, trained by denoising score
//! matching (ε-parametrisation per component: s_k = ε̂_k / Σ_k(t)^{1/2}) and fine-tuned in place.
use super::adam::{restore_training, save_training, Adam};
use super::net::{NetworkConfig, ScoreNetwork};
use super::process::ForwardProcess;
use crate::error::{GendaError, Result};
use crate::io::{read_tensor_file, write_tensor_file, TensorFile};
use crate::rng::{fill_standard_normal, stream, Purpose};
use crate::state::SavedState;
use rand::distributions::{Distribution, Uniform};
use tch::nn;
use tch::{Kind, Tensor};

pub const T_EPS: f64 = 1e-5;
pub const T_END: f64 = 0.992;
const COSINE_S: f64 = 0.008;

/// Cosine schedule a(t) (Nichol & Dhariwal 2021), a(0) = 1, a(1) = 0.
pub fn cosine_a(t: f64) -> f64 {
    let f = |u: f64| (std::f64::consts::FRAC_PI_2 * (u + COSINE_S) / (1.0 + COSINE_S)).cos();
    f(t) / f(0.0)
}

/// A diagonal linear Gaussian forward process (MASF's, or the standard VP one).
#[derive(Debug, Clone, PartialEq)]
pub struct DiagProcess {
    /// 1 on measured components, 0 elsewhere.
    pub h: Vec<f64>,
    /// Terminal noise variance per component (measurement error variance where measured).
    pub r: Vec<f64>,
}

impl DiagProcess {
    /// MASF's process for measured components `observed` with error variances `r_obs`.
    pub fn measurement_aware(dim: usize, observed: &[usize], r_obs: &[f64]) -> Self {
        let mut h = vec![0.0; dim];
        let mut r = vec![1.0; dim];
        for (&k, &v) in observed.iter().zip(r_obs) {
            h[k] = 1.0;
            r[k] = v;
        }
        DiagProcess { h, r }
    }

    /// The standard VP process (cosine schedule), measurement-agnostic.
    pub fn standard(dim: usize) -> Self {
        DiagProcess {
            h: vec![0.0; dim],
            r: vec![1.0; dim],
        }
    }

    pub fn dim(&self) -> usize {
        self.h.len()
    }

    /// A_k(t).
    pub fn a_k(&self, k: usize, t: f64) -> f64 {
        let a = cosine_a(t);
        a + (1.0 - a) * self.h[k]
    }

    /// Σ_k(t).
    pub fn var_k(&self, k: usize, t: f64) -> f64 {
        (1.0 - cosine_a(t).powi(2)) * self.r[k]
    }

    /// (M_k(s,t), Σ_k(s,t)) of the transition x_t | x_s.
    pub fn transition(&self, k: usize, s: f64, t: f64) -> (f64, f64) {
        let m = self.a_k(k, t) / self.a_k(k, s);
        (m, self.var_k(k, t) - m * m * self.var_k(k, s))
    }

    /// Exact ∇_{x_t} log p(y | x_t) on the measured components `observed` (y in the same
    /// order), written into `out` (zero elsewhere) for one state `x`.
    pub fn likelihood_score(
        &self,
        x: &[f64],
        t: f64,
        observed: &[usize],
        y: &[f64],
        out: &mut [f64],
    ) {
        out.iter_mut().for_each(|v| *v = 0.0);
        for (&k, &yk) in observed.iter().zip(y) {
            let (m, v) = self.transition(k, t, 1.0);
            out[k] = m * (yk - m * x[k]) / v.max(1e-300);
        }
    }
}

/// A forward process as the trainer sees it: x_t from x₀ componentwise, and the range of the
/// training times t ~ U(lo, hi).
pub trait Noising {
    fn noised(&self, k: usize, x0: f64, t: f64, xi: f64) -> f64;
    fn time_range(&self) -> (f64, f64);
}

impl Noising for DiagProcess {
    fn noised(&self, k: usize, x0: f64, t: f64, xi: f64) -> f64 {
        self.a_k(k, t) * x0 + self.var_k(k, t).sqrt() * xi
    }
    fn time_range(&self) -> (f64, f64) {
        (T_EPS, T_END)
    }
}

impl Noising for super::masf_ref::RefProcess {
    fn noised(&self, k: usize, x0: f64, t: f64, xi: f64) -> f64 {
        super::masf_ref::RefProcess::noised(self, k, x0, t, xi)
    }
    fn time_range(&self) -> (f64, f64) {
        (super::masf_ref::REF_T_EPS, super::masf_ref::REF_T)
    }
}

impl Noising for super::masf_ref::VeProcess {
    fn noised(&self, _k: usize, x0: f64, t: f64, xi: f64) -> f64 {
        x0 + self.std(t) * xi
    }
    fn time_range(&self) -> (f64, f64) {
        (super::masf_ref::REF_T_EPS, 1.0)
    }
}

/// The optimiser of a prior network.
#[derive(Debug, Clone, Copy, PartialEq, serde::Deserialize, serde::Serialize)]
#[serde(deny_unknown_fields)]
pub struct OptimSettings {
    pub kind: OptimKind,
    pub lr: f64,
    #[serde(default)]
    pub weight_decay: f64,
    #[serde(default = "d_betas")]
    pub betas: [f64; 2],
    /// Clip the gradients' global L2 norm to this (torch's `clip_grad_norm_`).
    #[serde(default)]
    pub clip_grad_norm: Option<f64>,
    /// A fresh optimiser (zero moments) for every cycle's fine-tuning, as the MASF code builds.
    #[serde(default)]
    pub fresh_each_cycle: bool,
}

fn d_betas() -> [f64; 2] {
    [0.9, 0.999]
}

pub use super::adam::OptimKind;

impl OptimSettings {
    /// genda's: Adam, kept across cycles, no clipping.
    pub fn adam(lr: f64) -> Self {
        OptimSettings {
            kind: OptimKind::Adam,
            lr,
            weight_decay: 0.0,
            betas: d_betas(),
            clip_grad_norm: None,
            fresh_each_cycle: false,
        }
    }
    /// The MASF code's: AdamW(lr 3e-4, weight decay 0.01, betas (0.9, 0.99)), gradient norm
    /// clipped at 1, a fresh optimiser every cycle.
    pub fn masf_reference() -> Self {
        OptimSettings {
            kind: OptimKind::Adamw,
            lr: 3e-4,
            weight_decay: 0.01,
            betas: [0.9, 0.99],
            clip_grad_norm: Some(1.0),
            fresh_each_cycle: true,
        }
    }
    fn build(&self, vs: &nn::VarStore) -> Adam {
        Adam::new(vs, self.kind, self.lr, self.betas, self.weight_decay)
    }
}

/// What the network is trained to output.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Target {
    /// ε̂ ≈ −ξ (genda's, and the SF code's `std·score`).
    Epsilon,
    /// x̂₀ ≈ x₀ (the MASF code's).
    X0,
}

/// How training rows are drawn.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Batches {
    /// This many optimiser steps, each of `batch` rows drawn with replacement.
    Steps(usize),
    /// This many epochs: each a keyed shuffle of the training rows cut into batches of `batch`
    /// (the last one partial), as a torch DataLoader with shuffle.
    Epochs(usize),
}

/// A training phase (pre-training or one cycle's fine-tuning).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Training {
    pub batches: Batches,
    pub batch: usize,
    /// Fraction of the rows held out (never trained on, as the reference's unused validation
    /// split): ⌊rows·holdout⌋ rows picked by a shuffle keyed by the split seed alone.
    pub holdout: f64,
    /// Loss = `loss_scale` × mean squared error (the SF code sums over the channels).
    pub loss_scale: f64,
    pub target: Target,
}

/// Prior score network for a `DiagProcess`, fine-tuned in place.
pub struct DiagScore {
    net: ScoreNetwork,
    opt: Adam,
    optim: OptimSettings,
    pub dim: usize,
    pub steps_done: u64,
}

impl DiagScore {
    pub fn new(hidden: i64, layers: usize, dim: usize, lr: f64, seed: u64) -> Result<Self> {
        let cfg = NetworkConfig::Mlp {
            hidden,
            layers,
            time_features: 16,
        };
        Self::with_network(cfg, dim, lr, seed)
    }

    /// A prior score network of any architecture (`NetworkConfig::Unet` for 2-D fields).
    pub fn with_network(cfg: NetworkConfig, dim: usize, lr: f64, seed: u64) -> Result<Self> {
        Self::on_device(cfg, dim, lr, seed, tch::Device::Cpu)
    }

    /// `with_network` on `device` (the node's GPU for this rank, or the CPU).
    pub fn on_device(
        cfg: NetworkConfig,
        dim: usize,
        lr: f64,
        seed: u64,
        device: tch::Device,
    ) -> Result<Self> {
        // The process record is unused here (the diagonal process is passed to each call).
        let net = ScoreNetwork::for_fine_tuning(cfg, dim, ForwardProcess::default(), seed, device)?;
        let optim = OptimSettings::adam(lr);
        Ok(DiagScore {
            opt: optim.build(&net.vs),
            net,
            optim,
            dim,
            steps_done: 0,
        })
    }

    /// A residual network on top of a closed-form baseline score: as `new`, with the output
    /// layer zeroed so that the residual starts at 0 (the baseline alone).
    pub fn new_residual(cfg: NetworkConfig, dim: usize, lr: f64, seed: u64) -> Result<Self> {
        let mut s = Self::with_network(cfg, dim, lr, seed)?;
        s.zero_output();
        Ok(s)
    }

    /// `steps` Adam steps of DSM for the residual r = s − s_b on `data` (rows of `dim`) under
    /// `process`, with the baseline `base` added to the network output (as `score::residual`):
    /// the loss is E‖ε̂_θ(x_t, t) + z + Σ(t)^{1/2} s_b,t(x_t)‖², minimised by the true noised
    /// score minus s_b. Each step draws `batch` rows in 4 groups, each at one of the baseline's
    /// cached times (the sampler's grid), so no extra factorisation is needed. Returns the last loss.
    pub fn fit_residual(
        &mut self,
        process: &DiagProcess,
        data: &[f64],
        base: &NoisedGaussian,
        steps: usize,
        batch: usize,
        seed: u64,
    ) -> Result<f64> {
        let d = self.dim;
        let n = data.len() / d;
        if n == 0 || process.dim() != d || base.times.is_empty() {
            return Err(GendaError::Score(
                "residual prior score: no training data, times or wrong dimension".into(),
            ));
        }
        let groups = batch.clamp(1, 4);
        let per = (batch / groups).max(1);
        let rows = groups * per;
        let pick = Uniform::new(0, n);
        let pick_level = Uniform::new(0, base.times.len());
        let mut xt = vec![0.0; per * d];
        let mut zg = vec![0.0; per * d];
        let mut sb = vec![0.0; per * d];
        let mut xs = vec![0f32; rows * d];
        let mut target = vec![0f32; rows * d];
        let mut ts = vec![0f32; rows];
        let mut last = f64::NAN;
        for _ in 0..steps {
            let step = self.steps_done;
            let mut rng = stream(seed, Purpose::Training, step, u64::MAX, 3);
            for g in 0..groups {
                let level = pick_level.sample(&mut rng);
                let t = base.times[level];
                for r in 0..per {
                    let i = pick.sample(&mut rng);
                    let z = &mut zg[r * d..(r + 1) * d];
                    fill_standard_normal(seed, Purpose::Training, step, (g * per + r) as u64, 0, z);
                    for k in 0..d {
                        xt[r * d + k] =
                            process.a_k(k, t) * data[i * d + k] + process.var_k(k, t).sqrt() * z[k];
                    }
                }
                base.score_level(level, &xt, &mut sb);
                let off = g * per * d;
                for j in 0..per * d {
                    let sd = process.var_k(j % d, t).sqrt();
                    xs[off + j] = xt[j] as f32;
                    target[off + j] = (-zg[j] - sd * sb[j]) as f32;
                }
                ts[g * per..(g + 1) * per].fill(t as f32);
            }
            let shape = [rows as i64, d as i64];
            let dev = self.net.device();
            let x = Tensor::from_slice(&xs).reshape(shape).to(dev);
            let tg = Tensor::from_slice(&target).reshape(shape).to(dev);
            let tt = Tensor::from_slice(&ts).to(dev);
            let loss = (self.net.eps_hat(&x, &tt) - tg).square().mean(Kind::Float);
            last = self.adam_step(&loss, "residual prior score")?;
        }
        Ok(last)
    }

    /// Use the optimiser `o` from now on (a new one, zero moments).
    pub fn set_optimizer(&mut self, o: OptimSettings) -> Result<()> {
        self.opt = o.build(&self.net.vs);
        self.optim = o;
        Ok(())
    }

    /// Weights, optimiser moments and the step count.
    pub fn save_state(&self) -> Result<SavedState> {
        save_training(&self.net.vs, &self.opt, self.steps_done)
    }

    /// Restore what `save_state` wrote into a network built with the same settings; the optimiser
    /// is one of `optim` with the saved moments.
    pub fn restore_state(&mut self, s: SavedState, optim: OptimSettings) -> Result<()> {
        self.set_optimizer(optim)?;
        self.steps_done = restore_training(&self.net.vs, &mut self.opt, s, "the prior score")?;
        Ok(())
    }

    /// The optimiser's settings.
    pub fn optimizer(&self) -> OptimSettings {
        self.optim
    }

    /// Zero the output layer (the network outputs 0 until trained: the MASF code's
    /// `zero_module` on its output convolution).
    pub fn zero_output(&mut self) {
        let _g = tch::no_grad_guard();
        for (name, p) in self.net.parameters() {
            if name.starts_with("out") || name.starts_with("conv_out") {
                let _ = p.shallow_clone().zero_();
            }
        }
    }

    /// The network's raw output (ε̂ or x̂₀, as it was trained) at the rows of `x`, time t.
    pub fn output(&self, x: &[f64], t: f64, out: &mut [f64]) {
        self.net.eps_into(x, t, out);
    }

    /// Train on `data` (rows of `dim`) under `noise` as `training` says; draws keyed by
    /// (seed, step), the held-out rows by `split_seed` alone. Returns the last loss.
    pub fn fit_phase(
        &mut self,
        noise: &dyn Noising,
        data: &[f64],
        training: &Training,
        seed: u64,
        split_seed: u64,
    ) -> Result<f64> {
        use rand::seq::SliceRandom;
        let d = self.dim;
        let n = data.len() / d;
        if n == 0 || training.batch == 0 {
            return Err(GendaError::Score(
                "prior score: no training data or an empty batch".into(),
            ));
        }
        let mut rows: Vec<usize> = (0..n).collect();
        let held = ((n as f64) * training.holdout).floor() as usize;
        if held > 0 {
            rows.shuffle(&mut stream(
                split_seed,
                Purpose::Training,
                u64::MAX,
                u64::MAX,
                5,
            ));
            rows.truncate(n - held);
        }
        if rows.is_empty() {
            return Err(GendaError::Score(format!(
                "prior score: holdout {} leaves no training rows of {n}",
                training.holdout
            )));
        }
        // The batches of row indices, in order.
        let batches: Vec<Vec<usize>> = match training.batches {
            Batches::Steps(k) => (0..k)
                .map(|i| {
                    let mut rng = stream(
                        seed,
                        Purpose::Training,
                        self.steps_done + i as u64,
                        u64::MAX,
                        4,
                    );
                    let pick = Uniform::new(0, rows.len());
                    (0..training.batch)
                        .map(|_| rows[pick.sample(&mut rng)])
                        .collect()
                })
                .collect(),
            Batches::Epochs(e) => (0..e)
                .flat_map(|epoch| {
                    let mut order = rows.clone();
                    order.shuffle(&mut stream(
                        seed,
                        Purpose::Training,
                        epoch as u64,
                        u64::MAX,
                        6,
                    ));
                    order
                        .chunks(training.batch)
                        .map(|c| c.to_vec())
                        .collect::<Vec<_>>()
                })
                .collect(),
        };
        let (lo, hi) = noise.time_range();
        let tdist = Uniform::new(lo, hi);
        let mut last = f64::NAN;
        for rows in batches {
            let step = self.steps_done;
            let err = self.batch_error(
                noise,
                data,
                &rows,
                training.target,
                &tdist,
                (seed, step),
                u64::MAX,
                |r| r as u64,
            );
            let loss = err.square().mean(Kind::Float) * training.loss_scale;
            last = self.adam_step(&loss, "prior score")?;
        }
        Ok(last)
    }

    /// The network's output minus its target on rows `rows` of `data` noised under `noise`
    /// at (seed, step) `at`: the times drawn in row order from the stream (seed, step,
    /// `member`, 2), row r's noise keyed by `key(r)`.
    #[allow(clippy::too_many_arguments)]
    fn batch_error(
        &self,
        noise: &dyn Noising,
        data: &[f64],
        rows: &[usize],
        target: Target,
        tdist: &Uniform<f64>,
        (seed, step): (u64, u64),
        member: u64,
        key: impl Fn(usize) -> u64,
    ) -> Tensor {
        let (d, b) = (self.dim, rows.len());
        let mut rng = stream(seed, Purpose::Training, step, member, 2);
        let mut z = vec![0.0; d];
        let mut xs = vec![0f32; b * d];
        let mut tg = vec![0f32; b * d];
        let mut ts = vec![0f32; b];
        for (r, &i) in rows.iter().enumerate() {
            let t = tdist.sample(&mut rng);
            fill_standard_normal(seed, Purpose::Training, step, key(r), 0, &mut z);
            for k in 0..d {
                let x0 = data[i * d + k];
                xs[r * d + k] = noise.noised(k, x0, t, z[k]) as f32;
                tg[r * d + k] = match target {
                    Target::Epsilon => -z[k] as f32,
                    Target::X0 => x0 as f32,
                };
            }
            ts[r] = t as f32;
        }
        let shape = [b as i64, d as i64];
        let dev = self.net.device();
        let x = Tensor::from_slice(&xs).reshape(shape).to(dev);
        let target = Tensor::from_slice(&tg).reshape(shape).to(dev);
        let tt = Tensor::from_slice(&ts).to(dev);
        self.net.eps_hat(&x, &tt) - target
    }

    /// `fit_phase` on data sharded over the ranks of `comm` (`part`; `data`: the rows of this
    /// rank's shards, standardised): every step draws batch/S rows from each of the S shards
    /// (epochs: each shard's rows shuffled and cut into chunks of batch/S; the holdout taken
    /// per shard), each rank back-propagates its shards' parts one shard at a time, and the
    /// shards' gradients are summed in shard order on every rank, so the step — and the
    /// network — is the same on any number of ranks. The loss is the mean over the step's rows.
    #[allow(clippy::too_many_arguments)]
    pub fn fit_phase_sharded(
        &mut self,
        noise: &dyn Noising,
        data: &[f64],
        part: &super::RowShards,
        training: &Training,
        seed: u64,
        split_seed: u64,
        comm: &dyn crate::parallel::Collectives,
    ) -> Result<f64> {
        use rand::seq::SliceRandom;
        let d = self.dim;
        let s = part.shards.len();
        let first = part.rows().start;
        if data.len() != part.rows().len() * d {
            return Err(GendaError::Score(format!(
                "prior score: this rank holds {} values, its shards {} rows of {d}",
                data.len(),
                part.rows().len()
            )));
        }
        if training.batch == 0 || training.batch % s != 0 {
            return Err(GendaError::invalid(
                "filter.pretrain_shards",
                format!(
                    "{s} shards must divide the batch of {} (batch/shards rows from each shard per step)",
                    training.batch
                ),
            ));
        }
        let per = training.batch / s;
        let (rank, ranks) = (comm.rank(), comm.size());
        if part.mine != (rank * s / ranks..(rank + 1) * s / ranks) {
            return Err(GendaError::Parallel(format!(
                "rank {rank} of {ranks} holds shards {:?} of {s}: they were read for another layout",
                part.mine
            )));
        }
        // Rows each shard keeps after its holdout (known on every rank), and my shards' rows.
        let kept_len: Vec<usize> = part
            .shards
            .iter()
            .map(|sh| sh.len() - ((sh.len() as f64) * training.holdout).floor() as usize)
            .collect();
        if kept_len.contains(&0) {
            return Err(GendaError::Score(format!(
                "prior score: holdout {} leaves a shard without training rows",
                training.holdout
            )));
        }
        let kept: Vec<Vec<usize>> = part
            .mine
            .clone()
            .map(|k| {
                let mut rows: Vec<usize> = part.shards[k].clone().collect();
                if kept_len[k] < rows.len() {
                    rows.shuffle(&mut stream(
                        split_seed,
                        Purpose::Training,
                        u64::MAX,
                        k as u64,
                        5,
                    ));
                    rows.truncate(kept_len[k]);
                }
                rows
            })
            .collect();
        // The steps: per step, my shards' rows and the step's row count over every shard.
        let mut steps: Vec<(Vec<Vec<usize>>, usize)> = Vec::new();
        match training.batches {
            Batches::Steps(k) => {
                for i in 0..k as u64 {
                    let rows = part
                        .mine
                        .clone()
                        .zip(&kept)
                        .map(|(sh, rows)| {
                            let mut rng =
                                stream(seed, Purpose::Training, self.steps_done + i, sh as u64, 4);
                            let pick = Uniform::new(0, rows.len());
                            (0..per).map(|_| rows[pick.sample(&mut rng)]).collect()
                        })
                        .collect();
                    steps.push((rows, training.batch));
                }
            }
            Batches::Epochs(e) => {
                let chunks = kept_len.iter().map(|l| l.div_ceil(per)).max().unwrap_or(0);
                for epoch in 0..e as u64 {
                    let orders: Vec<Vec<usize>> = part
                        .mine
                        .clone()
                        .zip(&kept)
                        .map(|(sh, rows)| {
                            let mut o = rows.clone();
                            o.shuffle(&mut stream(seed, Purpose::Training, epoch, sh as u64, 6));
                            o
                        })
                        .collect();
                    for j in 0..chunks {
                        let part_of = |o: &Vec<usize>| {
                            o[(j * per).min(o.len())..((j + 1) * per).min(o.len())].to_vec()
                        };
                        let total = kept_len
                            .iter()
                            .map(|&l| ((j + 1) * per).min(l).saturating_sub(j * per))
                            .sum();
                        steps.push((orders.iter().map(part_of).collect(), total));
                    }
                }
            }
        }
        let (lo, hi) = noise.time_range();
        let tdist = Uniform::new(lo, hi);
        let params: usize = self
            .net
            .vs
            .trainable_variables()
            .iter()
            .map(|v| v.numel())
            .sum();
        let counts: Vec<usize> = part
            .per_rank(comm.size())
            .into_iter()
            .map(|k| k * (params + 1))
            .collect();
        let mut last = f64::NAN;
        for (rows_by_shard, total) in steps {
            let step = self.steps_done;
            let mut local: Vec<f64> = Vec::with_capacity(part.mine.len() * (params + 1));
            for (sh, rows) in part.mine.clone().zip(&rows_by_shard) {
                if rows.is_empty() {
                    local.extend(std::iter::repeat_n(0.0, params + 1));
                    continue;
                }
                let held: Vec<usize> = rows.iter().map(|&gi| gi - first).collect();
                let err = self.batch_error(
                    noise,
                    data,
                    &held,
                    training.target,
                    &tdist,
                    (seed, step),
                    sh as u64,
                    |r| (sh * per + r) as u64,
                );
                let loss =
                    err.square().sum(Kind::Float) * (training.loss_scale / (total * d) as f64);
                let g = self.opt.backward_grads(&loss)?;
                if g.len() != params {
                    return Err(GendaError::Score(format!(
                        "prior score: {} gradient values for {params} parameters (a parameter without gradient)",
                        g.len()
                    )));
                }
                local.extend(g);
                local.push(loss.double_value(&[]));
            }
            let mut all = vec![0.0; s * (params + 1)];
            comm.all_gather_rows(&local, &counts, &mut all)?;
            let mut sum = vec![0.0; params + 1];
            for shard in all.chunks(params + 1) {
                sum.iter_mut().zip(shard).for_each(|(a, v)| *a += v);
            }
            let v = sum[params];
            self.opt
                .step_with(&sum[..params], self.optim.clip_grad_norm)?;
            self.steps_done += 1;
            if !v.is_finite() {
                return Err(GendaError::Score(format!(
                    "prior score training loss is {v} (lower the learning rate?)"
                )));
            }
            last = v;
        }
        Ok(last)
    }

    /// One optimiser step on `loss` (gradient clipping as the settings say); its value, or an
    /// error naming `what` if it is not finite.
    fn adam_step(&mut self, loss: &Tensor, what: &str) -> Result<f64> {
        self.opt.backward_step(loss, self.optim.clip_grad_norm);
        let v = loss.double_value(&[]);
        self.steps_done += 1;
        if !v.is_finite() {
            return Err(GendaError::Score(format!(
                "{what} training loss is {v} (lower the learning rate?)"
            )));
        }
        Ok(v)
    }

    /// `steps` Adam steps of DSM on `data` (rows of `dim`) under `process`, batch `batch`,
    /// t ~ U(T_EPS, T_END); random numbers keyed by (seed, step). Returns the last loss.
    pub fn fit(
        &mut self,
        process: &DiagProcess,
        data: &[f64],
        steps: usize,
        batch: usize,
        seed: u64,
    ) -> Result<f64> {
        let d = self.dim;
        let n = data.len() / d;
        if n == 0 || process.dim() != d {
            return Err(GendaError::Score(
                "prior score: no training data or wrong dimension".into(),
            ));
        }
        let pick = Uniform::new(0, n);
        let tdist = Uniform::new(T_EPS, T_END);
        let mut xs = vec![0f32; batch * d];
        let mut zs = vec![0f32; batch * d];
        let mut ts = vec![0f32; batch];
        let mut z = vec![0.0; d];
        let mut last = f64::NAN;
        for _ in 0..steps {
            let step = self.steps_done;
            let mut rng = stream(seed, Purpose::Training, step, u64::MAX, 2);
            for b in 0..batch {
                let i = pick.sample(&mut rng);
                let t = tdist.sample(&mut rng);
                fill_standard_normal(seed, Purpose::Training, step, b as u64, 0, &mut z);
                for k in 0..d {
                    let x = process.a_k(k, t) * data[i * d + k] + process.var_k(k, t).sqrt() * z[k];
                    xs[b * d + k] = x as f32;
                    zs[b * d + k] = z[k] as f32;
                }
                ts[b] = t as f32;
            }
            let shape = [batch as i64, d as i64];
            let dev = self.net.device();
            let x = Tensor::from_slice(&xs).reshape(shape).to(dev);
            let zt = Tensor::from_slice(&zs).reshape(shape).to(dev);
            let tt = Tensor::from_slice(&ts).to(dev);
            let loss = (self.net.eps_hat(&x, &tt) + zt).square().mean(Kind::Float);
            last = self.adam_step(&loss, "prior score")?;
        }
        Ok(last)
    }

    /// Write the network's parameters to `path` (HDF5, temp file then rename) with the
    /// `fingerprint` of what it was trained for.
    pub fn save(&self, path: &std::path::Path, fingerprint: &str) -> Result<()> {
        write_tensor_file(path, &self.weights_file(fingerprint))
    }

    /// What `save` writes, as data (to be written later, on one rank).
    /// A deferred write of `weights_file` to `path` (for the driver to run on one rank, once
    /// the ranks agree).
    pub fn weights_writer(
        &self,
        path: &std::path::Path,
        fingerprint: &str,
    ) -> Box<dyn FnOnce() -> Result<()> + Send> {
        let (p, tf) = (path.to_path_buf(), self.weights_file(fingerprint));
        Box::new(move || write_tensor_file(&p, &tf))
    }

    pub fn weights_file(&self, fingerprint: &str) -> TensorFile {
        let mut attrs: std::collections::BTreeMap<String, String> =
            self.net.attrs().into_iter().collect();
        attrs.insert("masf_prior".into(), fingerprint.into());
        attrs.insert("steps_done".into(), self.steps_done.to_string());
        TensorFile {
            groups: [(
                "params".to_string(),
                ScoreNetwork::export(&self.net.parameters()),
            )]
            .into_iter()
            .collect(),
            attrs,
        }
    }

    /// Load parameters saved by `save`, refusing a file trained for another fingerprint.
    pub fn load(&mut self, path: &std::path::Path, fingerprint: &str) -> Result<()> {
        let tf = read_tensor_file(path)?;
        let origin = format!("prior network {}", path.display());
        match tf.attrs.get("masf_prior") {
            Some(f) if f == fingerprint => {}
            Some(f) => {
                return Err(GendaError::file(
                    path,
                    format!("this prior was trained for {f}, the run needs {fingerprint}: delete the file to retrain, or point filter.prior_weights elsewhere"),
                ))
            }
            None => {
                return Err(GendaError::file(
                    path,
                    "not a MASF/SF prior network file (no `masf_prior` attribute)",
                ))
            }
        }
        let arrays = tf
            .groups
            .get("params")
            .ok_or_else(|| GendaError::Score(format!("{origin}: group `params` missing")))?;
        ScoreNetwork::import(&self.net.parameters(), arrays, &origin)?;
        self.steps_done = tf
            .attrs
            .get("steps_done")
            .and_then(|v| v.parse().ok())
            .unwrap_or(0);
        Ok(())
    }

    /// Prior score at the rows of `x` (M, dim), time t, into `out`.
    pub fn score(&self, process: &DiagProcess, x: &[f64], t: f64, out: &mut [f64]) {
        self.net.eps_into(x, t, out);
        for (i, o) in out.iter_mut().enumerate() {
            *o /= process.var_k(i % self.dim, t).sqrt().max(1e-12);
        }
    }
}

/// Mean and covariance of a Gaussian fitted to the ensemble `z` (rows of `dim`): sample mean
/// m, and C = (1 − λ) ρ∘S + λ diag(S) with S the sample covariance (divisor M − 1), ρ the
/// taper `taper(i, j)` (Schur product: localisation) and λ = `shrinkage`. Returns (m, C row-major).
pub fn fit_gaussian(
    z: &[f64],
    dim: usize,
    taper: &dyn Fn(usize, usize) -> f64,
    shrinkage: f64,
) -> (Vec<f64>, Vec<f64>) {
    let rows = z.len() / dim;
    let mut mean = vec![0.0; dim];
    for r in z.chunks(dim) {
        mean.iter_mut()
            .zip(r)
            .for_each(|(m, v)| *m += v / rows as f64);
    }
    let anom: Vec<f64> = z
        .iter()
        .enumerate()
        .map(|(i, v)| v - mean[i % dim])
        .collect();
    let denom = (rows.max(2) - 1) as f64;
    let mut cov = vec![0.0; dim * dim];
    for i in 0..dim {
        for j in i..dim {
            let rho = if i == j { 1.0 } else { taper(i, j) };
            if rho == 0.0 {
                continue;
            }
            let s: f64 = anom.chunks(dim).map(|r| r[i] * r[j]).sum::<f64>() / denom;
            let c = if i == j {
                s
            } else {
                (1.0 - shrinkage) * rho * s
            };
            cov[i * dim + j] = c;
            cov[j * dim + i] = c;
        }
    }
    (mean, cov)
}

/// The score of a Gaussian prior N(m, C) noised exactly under a `DiagProcess`:
/// x_t ~ N(A(t) m, A(t) C A(t) + Σ(t)), so s_b,t(x) = −(A C A + Σ)⁻¹ (x − A m). The Cholesky
/// factors are computed once per time in `times` (batched, f64) and reused for every member and
/// training row at that time; other times are factorised on demand.
pub struct NoisedGaussian {
    process: DiagProcess,
    cov: Tensor,
    mean: Vec<f64>,
    /// The cached times.
    pub times: Vec<f64>,
    /// Lower Cholesky factors of A C A + Σ at `times`.   (times, dim, dim)
    chol: Tensor,
    /// A(t) m at `times`.   (times, dim)
    am: Tensor,
}

impl NoisedGaussian {
    /// `cov` row-major (dim × dim), symmetric positive definite.
    pub fn new(process: &DiagProcess, mean: &[f64], cov: &[f64], times: &[f64]) -> Result<Self> {
        let d = process.dim() as i64;
        let cov = Tensor::from_slice(cov).reshape([d, d]);
        let (chol, am) = Self::factor(process, &cov, mean, times)?;
        Ok(NoisedGaussian {
            process: process.clone(),
            cov,
            mean: mean.to_vec(),
            times: times.to_vec(),
            chol,
            am,
        })
    }

    fn factor(
        process: &DiagProcess,
        cov: &Tensor,
        mean: &[f64],
        times: &[f64],
    ) -> Result<(Tensor, Tensor)> {
        let d = process.dim();
        let l = times.len() as i64;
        let mut a = Vec::with_capacity(times.len() * d);
        let mut v = Vec::with_capacity(times.len() * d);
        let mut am = Vec::with_capacity(times.len() * d);
        for &t in times {
            for (k, mk) in mean.iter().enumerate() {
                a.push(process.a_k(k, t));
                v.push(process.var_k(k, t));
                am.push(process.a_k(k, t) * mk);
            }
        }
        let shape = [l, d as i64];
        let a = Tensor::from_slice(&a).reshape(shape);
        let v = Tensor::from_slice(&v).reshape(shape);
        let p = a.unsqueeze(2) * cov.unsqueeze(0) * a.unsqueeze(1) + v.diag_embed(0, -2, -1);
        let chol = p.f_linalg_cholesky(false).map_err(|e| {
            GendaError::Score(format!(
                "Gaussian prior: A C A + Σ is not positive definite ({e}); raise shrinkage"
            ))
        })?;
        Ok((chol, Tensor::from_slice(&am).reshape(shape)))
    }

    /// s_b at the rows of `x` (B, dim) at the cached time index `level`, into `out`.
    pub fn score_level(&self, level: usize, x: &[f64], out: &mut [f64]) {
        self.solve(
            &self.chol.get(level as i64),
            &self.am.get(level as i64),
            x,
            out,
        );
    }

    /// s_b at the rows of `x` at time t (cached factor when t is one of `times`).
    pub fn score(&self, x: &[f64], t: f64, out: &mut [f64]) -> Result<()> {
        match self.times.iter().position(|&u| u == t) {
            Some(l) => self.score_level(l, x, out),
            None => {
                let (c, am) = Self::factor(&self.process, &self.cov, &self.mean, &[t])?;
                self.solve(&c.get(0), &am.get(0), x, out);
            }
        }
        Ok(())
    }

    fn solve(&self, chol: &Tensor, am: &Tensor, x: &[f64], out: &mut [f64]) {
        let d = self.process.dim() as i64;
        let b = x.len() as i64 / d;
        let r = (Tensor::from_slice(x).reshape([b, d]) - am.unsqueeze(0)).transpose(0, 1);
        let sol = r.cholesky_solve(chol, false).transpose(0, 1).contiguous();
        let v: Vec<f64> = Vec::<f64>::try_from(sol.reshape([-1])).expect("f64 tensor");
        out.iter_mut().zip(v).for_each(|(o, s)| *o = -s);
    }
}

/// The reverse sampler's time grid t_j, j = 0..steps (decreasing from T_END to T_EPS).
pub fn sampler_grid(steps: usize) -> Vec<f64> {
    (0..=steps)
        .map(|j| T_EPS + (T_END - T_EPS) * (1.0 - j as f64 / steps as f64).powi(2))
        .collect()
}

/// How the measurement enters the reverse sampler.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Guidance {
    /// MASF, exact: y is the terminal state of the measurement-aware process, so the posterior
    /// of x₀ is the time reversal of that process started from p(x_T | y) — the exact
    /// likelihood picks the start (measured components y + N(0, Σ(T,1)), the density of x_T
    /// being flat on that scale) and the reversal itself uses the prior score alone: for the
    /// measurement-conditioned (Doob h-transformed) process the h-drift G²∇log p(y|x) and the
    /// likelihood part of its marginal score ∇log p(x_t|y) = s_prior + ∇log p(y|x_t) cancel.
    /// Tested against the Kalman posterior.
    Bridge,
    /// MASF as in the paper's sampler: members pushed to T, then s_prior + ∇log p(y|x_t) (the
    /// exact likelihood score) in every reverse step. This counts the measurement more than once
    /// (posterior too narrow and pulled toward y; see the tests), kept for comparison.
    Additive,
    /// SF: the raw likelihood ∇ log N(y; x_t[obs], r) at the noisy state, damped by 1 − t.
    Damped,
}

/// The reverse sampler shared by MASF and SF (MASF's exponential-Euler transition step): on the
/// time grid t_j = T_EPS + (T_END − T_EPS)(1 − j/N)², from t_j = s to t_{j+1} = t,
///
///   x_t = M(s,t) x_s + |Σ(s,t)| (s_prior + s_lik) + |Σ(s,t)|^{1/2} ξ.
///
/// The likelihood term (Additive, Damped) is linear in x and stiff near T_END, so it is taken
/// semi-implicitly: its denominator is increased by the step's |Σ(s,t)|, which bounds the pull
/// toward y by one step's worth and equals the explicit step as the step → 0. Members start
/// pushed forward to T_END (measured components from y for Bridge); noise keyed by
/// (seed, step, member). `x` (M, dim) in place.
/// A prior score evaluated in place: (x, t, score out).
pub type PriorScoreFn<'a> = dyn FnMut(&[f64], f64, &mut [f64]) + 'a;

#[allow(clippy::too_many_arguments)]
pub fn reverse_sample(
    process: &DiagProcess,
    prior: &mut PriorScoreFn,
    guidance: Guidance,
    observed: &[usize],
    y: &[f64],
    r_obs: &[f64],
    x: &mut [f64],
    steps: usize,
    seed: u64,
) {
    let d = process.dim();
    let m = x.len() / d;
    let mut z = vec![0.0; d];
    for i in 0..m {
        fill_standard_normal(seed, Purpose::Sampling, u64::MAX, i as u64, 0, &mut z);
        for k in 0..d {
            x[i * d + k] =
                process.a_k(k, T_END) * x[i * d + k] + process.var_k(k, T_END).sqrt() * z[k];
        }
        if guidance == Guidance::Bridge {
            for (o, &k) in observed.iter().enumerate() {
                let (mm, v) = process.transition(k, T_END, 1.0);
                x[i * d + k] = y[o] / mm + (v.max(0.0)).sqrt() / mm * z[k];
            }
        }
    }
    let times = sampler_grid(steps);
    let grid = |j: usize| times[j];
    let mut sp = vec![0.0; x.len()];
    let mut lik = vec![0.0; d];
    for j in 0..steps {
        let (s, t) = (grid(j), grid(j + 1));
        prior(x, s, &mut sp);
        for i in 0..m {
            fill_standard_normal(seed, Purpose::Sampling, j as u64, i as u64, 0, &mut z);
            let row = &mut x[i * d..(i + 1) * d];
            let srow = &sp[i * d..(i + 1) * d];
            for (o, &k) in observed.iter().enumerate() {
                let step = process.transition(k, s, t).1.abs();
                lik[k] = match guidance {
                    Guidance::Bridge => 0.0,
                    Guidance::Additive => {
                        let (mm, v) = process.transition(k, s, 1.0);
                        mm * (y[o] - mm * row[k]) / (v.max(0.0) + mm * mm * step)
                    }
                    Guidance::Damped => {
                        let w = 1.0 - s;
                        w * (y[o] - row[k]) / (r_obs[o] + w * step)
                    }
                };
            }
            for k in 0..d {
                let (mk, v) = process.transition(k, s, t);
                let v = v.abs();
                row[k] = mk * row[k] + v * (srow[k] + lik[k]) + v.sqrt() * z[k];
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn boundary_values_of_the_measurement_aware_process() {
        let p = DiagProcess::measurement_aware(3, &[1], &[0.04]);
        // t = 0: A = I, Σ = 0.
        for k in 0..3 {
            assert!((p.a_k(k, 0.0) - 1.0).abs() < 1e-15);
            assert!(p.var_k(k, 0.0).abs() < 1e-15);
        }
        // t = 1: A = H, Σ = R̃.
        assert!(p.a_k(0, 1.0).abs() < 1e-12 && (p.a_k(1, 1.0) - 1.0).abs() < 1e-12);
        assert!((p.var_k(1, 1.0) - 0.04).abs() < 1e-12 && (p.var_k(0, 1.0) - 1.0).abs() < 1e-12);
        // Transition consistency: M(0,t) = A(t), Σ(0,t) = Σ(t); composition s < u < t.
        let (s, u, t) = (0.2, 0.5, 0.9);
        for k in 0..3 {
            let (m0, v0) = p.transition(k, 0.0, t);
            assert!((m0 - p.a_k(k, t)).abs() < 1e-15 && (v0 - p.var_k(k, t)).abs() < 1e-15);
            let (m1, v1) = p.transition(k, s, u);
            let (m2, v2) = p.transition(k, u, t);
            let (m3, v3) = p.transition(k, s, t);
            assert!((m1 * m2 - m3).abs() < 1e-12);
            assert!((m2 * m2 * v1 + v2 - v3).abs() < 1e-12, "{k}");
        }
    }

    /// The exact likelihood score equals central finite differences of
    /// log N(y; M(t,T) x, Σ(t,T)) on measured components and is zero elsewhere.
    #[test]
    fn likelihood_score_matches_finite_differences() {
        let p = DiagProcess::measurement_aware(4, &[0, 2], &[0.3, 0.05]);
        let (obs, y) = ([0usize, 2], [0.7, -1.1]);
        let logp = |x: &[f64], t: f64| -> f64 {
            obs.iter()
                .zip(&y)
                .map(|(&k, &yk)| {
                    let (m, v) = p.transition(k, t, 1.0);
                    -0.5 * (yk - m * x[k]).powi(2) / v - 0.5 * v.ln()
                })
                .sum()
        };
        for &t in &[0.1, 0.5, 0.9] {
            let x = [0.2, -0.4, 0.9, 1.3];
            let mut g = vec![0.0; 4];
            p.likelihood_score(&x, t, &obs, &y, &mut g);
            for k in 0..4 {
                let h = 1e-6;
                let (mut a, mut b) = (x, x);
                a[k] += h;
                b[k] -= h;
                let fd = (logp(&a, t) - logp(&b, t)) / (2.0 * h);
                assert!(
                    (fd - g[k]).abs() < 1e-5 * (1.0 + fd.abs()),
                    "t {t} k {k}: {fd} vs {}",
                    g[k]
                );
            }
        }
    }

    /// With the exact prior score of a Gaussian N(m, P) (diagonal), the MASF sampler draws the
    /// Kalman posterior of a measured component and leaves an unmeasured one at its prior.
    #[test]
    fn masf_sampler_with_exact_gaussian_prior_gives_the_kalman_posterior() {
        let (m0, p0, r) = ([0.5, -1.0], [1.0, 0.5], 0.2);
        let y = [1.4];
        let proc_ = DiagProcess::measurement_aware(2, &[0], &[r]);
        let mut prior = |x: &[f64], t: f64, out: &mut [f64]| {
            for (i, (o, xv)) in out.iter_mut().zip(x).enumerate() {
                let k = i % 2;
                let a = proc_.a_k(k, t);
                *o = -(xv - a * m0[k]) / (a * a * p0[k] + proc_.var_k(k, t));
            }
        };
        let n = 4000;
        // Start members from the prior.
        let mut x = vec![0.0; 2 * n];
        let mut z = vec![0.0; 2];
        for i in 0..n {
            fill_standard_normal(9, Purpose::EnsembleInit, 0, i as u64, 0, &mut z);
            x[2 * i] = m0[0] + p0[0].sqrt() * z[0];
            x[2 * i + 1] = m0[1] + p0[1].sqrt() * z[1];
        }
        let start = x.clone();
        reverse_sample(
            &proc_,
            &mut prior,
            Guidance::Bridge,
            &[0],
            &y,
            &[r],
            &mut x,
            400,
            3,
        );
        let stats = |x: &[f64], k: usize| {
            let m = x.iter().skip(k).step_by(2).sum::<f64>() / n as f64;
            let v = x
                .iter()
                .skip(k)
                .step_by(2)
                .map(|v| (v - m).powi(2))
                .sum::<f64>()
                / n as f64;
            (m, v)
        };
        let kg = p0[0] / (p0[0] + r);
        let (ma, pa) = (m0[0] + kg * (y[0] - m0[0]), (1.0 - kg) * p0[0]);
        let ((m_0, v_0), (m_1, v_1)) = (stats(&x, 0), stats(&x, 1));
        eprintln!("bridge: measured {m_0} / {v_0} (Kalman {ma} / {pa}); unmeasured {m_1} / {v_1}");
        assert!((m_0 - ma).abs() < 0.05 && (v_0 / pa - 1.0).abs() < 0.1);
        assert!((m_1 - m0[1]).abs() < 0.05 && (v_1 / p0[1] - 1.0).abs() < 0.1);
        // The paper's additive sampler counts the measurement more than once.
        let mut x = start;
        reverse_sample(
            &proc_,
            &mut prior,
            Guidance::Additive,
            &[0],
            &y,
            &[r],
            &mut x,
            400,
            3,
        );
        let (m_a, v_a) = stats(&x, 0);
        eprintln!("additive: measured {m_a} / {v_a}");
        assert!(v_a < 0.6 * pa && (m_a - y[0]).abs() < (ma - y[0]).abs());
    }
}
