//! The model noise of every propagation (truth and members, `genda run` and the serial twins):
//! σ_i·√dt·z after each step, z keyed by (seed, step, stream, global index), so a slab of any
//! rank draws the same numbers as the whole state.
use super::{Model, Rk4Workspace};
use crate::rng::{fill_standard_normal, Purpose};

/// Model-noise stream id of the truth (members use their index).
pub const TRUTH_STREAM: u64 = u64::MAX;

/// Keys of the model-noise streams of a propagated block: (step, member, global index).
#[derive(Debug, Clone)]
pub struct NoiseKey {
    pub seed: u64,
    /// Stream id of each row: the member index, `TRUTH_STREAM` for the truth.
    pub rows: Vec<u64>,
    /// Global index of the first column.
    pub offset: usize,
}

/// Add σ_i√dt·z to every row of `x` (rows of `x.len() / key.rows.len()` columns) after model
/// step `step` (global step counter).
pub fn add_model_noise(model: &dyn Model, x: &mut [f64], key: &NoiseKey, step: u64) {
    let sd = model.noise_sd() * model.dt().sqrt();
    if sd == 0.0 {
        return;
    }
    let len = x.len() / key.rows.len().max(1);
    let sdt = model.dt().sqrt();
    let mut z = vec![0.0; len];
    for (row, &id) in x.chunks_mut(len).zip(&key.rows) {
        fill_standard_normal(key.seed, Purpose::ModelNoise, step, id, key.offset, &mut z);
        for (k, (xi, zi)) in row.iter_mut().zip(&z).enumerate() {
            *xi += model.noise_sd_at(key.offset + k) * sdt * zi;
        }
    }
}

/// One model step followed by the model's additive noise, noise_sd_at(i)·√dt·z with z keyed by
/// (seed, step, stream): the stepping of the serial twins (`genda cg`, `genda smooth`), which
/// draw the truth on stream `TRUTH_STREAM` exactly as `genda run` does.
pub struct NoisyStepper<'a> {
    pub model: &'a dyn Model,
    /// Per-component noise sd per step.
    pub sd: Vec<f64>,
    pub seed: u64,
}

impl<'a> NoisyStepper<'a> {
    pub fn new(model: &'a dyn Model, seed: u64) -> Self {
        let sdt = model.dt().sqrt();
        let sd = (0..model.dim())
            .map(|i| model.noise_sd_at(i) * sdt)
            .collect();
        NoisyStepper { model, sd, seed }
    }

    /// Whether every component is noisy (the transition has a density).
    pub fn noisy(&self) -> bool {
        self.sd.iter().all(|&s| s > 0.0)
    }

    /// Step `x` once (the whole state, stream `stream`): the model step, then
    /// `add_model_noise`.
    pub fn step(&self, x: &mut [f64], ws: &mut Rk4Workspace, step: u64, stream: u64) {
        self.model.step(x, ws);
        let key = NoiseKey {
            seed: self.seed,
            rows: vec![stream],
            offset: 0,
        };
        add_model_noise(self.model, x, &key, step);
    }
}
