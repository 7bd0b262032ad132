//! Score networks through libtorch (`tch`). Only this room names `tch`.
//!
//! - `process`: forward processes (VP, VE, linear interpolant) with α, σ, f, g² in closed form;
//! - `sampler`: reverse SDE / predictor–corrector / probability-flow ODE / annealed Langevin on
//!   score closures; `analytic`: exact Gaussian-mixture scores; `mixture`: the tiled,
//!   layout-independent Gaussian-mixture score kernel of the training-free filters;
//! - `net`: MLP and periodic U-Net score networks; `train`: DSM training (Adam, EMA, checkpoints,
//!   MPI data parallel); device selection and libtorch facts for `genda doctor` here.
pub mod adam;
pub mod analytic;
pub mod ensf_device;
pub mod masf;
pub mod masf_ref;
pub mod mixture;
pub mod net;
pub mod process;
pub mod residual;
pub mod sampler;
pub mod sda;
pub mod train;

pub use net::{NetworkConfig, ScoreNetwork};
pub use process::ForwardProcess;
pub use sampler::{prior_sample, sample, SamplerConfig, SamplerKind};
pub use train::{run_training, Dataset, Objective, TrainConfig, Trainer, TrainingConfig};

use crate::error::{GendaError, Result};
use serde::{Deserialize, Serialize};

/// Where networks run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum DeviceChoice {
    /// CUDA device `local_rank % device_count` if libtorch sees a GPU, else CPU.
    #[default]
    Auto,
    Cpu,
    Cuda,
}

/// This process's rank among the ranks on its node (Open MPI, Slurm, MPICH/Hydra, PMI), 0
/// outside a launcher: ranks on a node share its GPUs round-robin.
pub fn local_rank() -> usize {
    [
        "OMPI_COMM_WORLD_LOCAL_RANK",
        "SLURM_LOCALID",
        "MPI_LOCALRANKID",
        "PMI_LOCAL_RANK",
    ]
    .iter()
    .find_map(|k| std::env::var(k).ok().and_then(|s| s.parse().ok()))
    .unwrap_or(0)
}

/// `select_device` for this process's local rank.
pub fn select_local_device(choice: DeviceChoice) -> Result<tch::Device> {
    select_device(choice, local_rank())
}

/// Resolve a device choice; `local_rank` maps MPI ranks on a node to GPUs.
pub fn select_device(choice: DeviceChoice, local_rank: usize) -> Result<tch::Device> {
    let n = tch::Cuda::device_count().max(0) as usize;
    match choice {
        DeviceChoice::Cpu => Ok(tch::Device::Cpu),
        DeviceChoice::Auto if n == 0 => Ok(tch::Device::Cpu),
        DeviceChoice::Auto | DeviceChoice::Cuda if n > 0 => Ok(tch::Device::Cuda(local_rank % n)),
        _ => Err(GendaError::Score(
            "device = \"cuda\" requested but libtorch sees no CUDA device".into(),
        )),
    }
}

/// What libtorch offers in this process.
#[derive(Debug, Clone)]
pub struct TorchInfo {
    /// torch version genda was built against.
    pub version: &'static str,
    /// Directory of the libtorch shared libraries genda was built against.
    pub libdir: &'static str,
    pub cuda_available: bool,
    pub cuda_devices: i64,
    pub cudnn_available: bool,
    pub threads: i32,
}

pub fn torch_info() -> TorchInfo {
    TorchInfo {
        version: env!("GENDA_TORCH_VERSION"),
        libdir: env!("GENDA_TORCH_LIBDIR"),
        cuda_available: tch::Cuda::is_available(),
        cuda_devices: tch::Cuda::device_count(),
        cudnn_available: tch::Cuda::cudnn_is_available(),
        threads: tch::get_num_threads(),
    }
}

/// A data set's rows cut into contiguous shards for data-parallel training, and the shards
/// this rank holds: rank r of R holds shards r·S/R..(r+1)·S/R, and reads only their rows. The
/// numbers of a sharded training depend on the shards, not on the ranks.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RowShards {
    /// Global row range of every shard, in order.
    pub shards: Vec<std::ops::Range<usize>>,
    /// Indices of the shards this rank holds.
    pub mine: std::ops::Range<usize>,
}

impl RowShards {
    /// `rows` rows in `s` shards (as equal as they come) for rank `rank` of `ranks`; every
    /// shard needs a row and every rank a shard.
    pub fn new(rows: usize, s: usize, rank: usize, ranks: usize) -> Result<Self> {
        if s == 0 || s > rows {
            return Err(GendaError::invalid(
                "shards",
                format!("{s} shards of {rows} rows: each needs at least one"),
            ));
        }
        if s < ranks {
            return Err(GendaError::invalid(
                "shards",
                format!("{s} shards on {ranks} MPI ranks: every rank needs a shard (set shards to a multiple of the ranks)"),
            ));
        }
        Ok(RowShards {
            shards: (0..s).map(|k| k * rows / s..(k + 1) * rows / s).collect(),
            mine: rank * s / ranks..(rank + 1) * s / ranks,
        })
    }

    /// The global rows this rank holds.
    pub fn rows(&self) -> std::ops::Range<usize> {
        self.shards[self.mine.start].start..self.shards[self.mine.end - 1].end
    }

    /// How many shards each rank of `ranks` holds (in rank order).
    pub fn per_rank(&self, ranks: usize) -> Vec<usize> {
        let s = self.shards.len();
        (0..ranks)
            .map(|r| (r + 1) * s / ranks - r * s / ranks)
            .collect()
    }
}
