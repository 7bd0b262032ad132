//! The truth of a twin run on this rank's columns: simulated with the members' model, simulated
//! on a finer grid and seen through its block means (`model.truth_grid`), or replayed from an
//! HDF5 trajectory (`experiment.truth_file`); and its observations. Every random number is keyed
//! by global index (truth stream, step; observation noise by cycle and observation index), so
//! the truth and the observations are the same numbers on any layout.
use super::{observe, with_halo, Propagator, TruthReplay};
use crate::config::Config;
use crate::error::{GendaError, Result};
use crate::models::{Model, TruthModel};
use crate::models::{NoiseKey, TRUTH_STREAM};
use crate::obs::LocalObs;
use crate::parallel::Collectives;
use ndarray::Array2;
use std::ops::Range;
use std::path::Path;

enum Source {
    /// The members' model on this rank's columns.
    Simulated,
    /// A finer grid (one domain): its own state, stepped by its own propagator.
    Fine {
        model: TruthModel,
        state: Vec<f64>,
        prop: Propagator,
    },
    /// The rows of a trajectory file at the cycles.
    Replayed(TruthReplay),
}

pub struct Truth {
    /// The truth on this rank's columns of the members' grid.
    pub slab: Vec<f64>,
    source: Source,
    prop: Propagator,
    key: NoiseKey,
    own: Range<usize>,
    obs_every: usize,
    spinup: usize,
}

impl Truth {
    /// Draw x₀ on the columns `own` (and the fine-grid state, if any) or open the replayed file.
    pub fn new(cfg: &Config, model: &dyn Model, own: Range<usize>) -> Result<Self> {
        let n = model.dim();
        let (seed, obs_every) = (cfg.experiment.seed, cfg.observations.obs_every);
        let mut slab = cfg.initial.draw_truth_slab(n, seed, own.clone())?;
        if let Some(f) = &cfg.initial.filter {
            f.apply(&cfg.model, &mut slab)?;
        }
        let source = if let Some(p) = &cfg.experiment.truth_file {
            let cycle_dt = obs_every as f64 * model.dt();
            Source::Replayed(TruthReplay::open(
                p,
                n,
                cycle_dt,
                cfg.experiment.cycles,
                own.clone(),
            )?)
        } else if cfg.model.has_fine_truth() {
            let tm = cfg.model.build_truth();
            let x = cfg.initial.draw_truth(tm.dim(), seed)?;
            if let Some(problem) = tm.model.stability_problem(&x) {
                return Err(GendaError::invalid("model.dt", format!("truth: {problem}")));
            }
            tm.coarsen(&x, &mut slab);
            let prop = Propagator::new(tm.model.as_ref(), 1, tm.dim());
            Source::Fine {
                model: tm,
                state: x,
                prop,
            }
        } else {
            Source::Simulated
        };
        Ok(Truth {
            prop: Propagator::new(model, 1, own.len()),
            key: NoiseKey {
                seed,
                rows: vec![TRUTH_STREAM],
                offset: own.start,
            },
            slab,
            source,
            own,
            obs_every,
            spinup: cfg.experiment.spinup_steps,
        })
    }

    /// The `experiment.spinup_steps` before the first cycle (nothing for a replayed truth).
    pub fn spin_up(&mut self, model: &dyn Model, comm: &dyn Collectives) -> Result<()> {
        let steps = self.spinup;
        match &mut self.source {
            Source::Replayed(_) => {}
            Source::Fine {
                model: tm,
                state,
                prop,
            } => {
                prop.advance(tm.model.as_ref(), state, steps, comm, &self.key, 0)?;
                tm.coarsen(state, &mut self.slab);
            }
            Source::Simulated => {
                self.prop
                    .advance(model, &mut self.slab, steps, comm, &self.key, 0)?;
            }
        }
        Ok(())
    }

    /// Advance to the observation time of `cycle`; returns the seconds spent in halo exchanges.
    pub fn advance(
        &mut self,
        model: &dyn Model,
        cycle: usize,
        comm: &dyn Collectives,
    ) -> Result<f64> {
        if let Source::Replayed(r) = &self.source {
            r.read(cycle, &mut self.slab)?;
            return Ok(0.0);
        }
        self.advance_steps(model, self.first_step(cycle), self.obs_every, comm)
    }

    /// Global model step at which `cycle` starts (counted from the start of the spin-up).
    fn first_step(&self, cycle: usize) -> u64 {
        (self.spinup + (cycle - 1) * self.obs_every) as u64
    }

    /// `advance`, one model step at a time, keeping the states between the observation times
    /// (`path`: the obs_every − 1 states after steps 1 .. obs_every − 1 of the cycle).
    pub fn advance_keeping_path(
        &mut self,
        model: &dyn Model,
        cycle: usize,
        comm: &dyn Collectives,
        path: &mut Vec<Vec<f64>>,
    ) -> Result<f64> {
        let first_step = self.first_step(cycle);
        path.clear();
        let mut c = 0.0;
        for s in 0..self.obs_every {
            if s > 0 {
                path.push(self.slab.clone());
            }
            c += self.advance_steps(model, first_step + s as u64, 1, comm)?;
        }
        Ok(c)
    }

    /// Advance a simulated truth by `steps` model steps from global step `first_step` (counted
    /// from the start of the spin-up), for commands that need the states between observation
    /// times; `advance` is this over one cycle. Returns the seconds spent in halo exchanges.
    pub fn advance_steps(
        &mut self,
        model: &dyn Model,
        first_step: u64,
        steps: usize,
        comm: &dyn Collectives,
    ) -> Result<f64> {
        Ok(match &mut self.source {
            Source::Replayed(_) => {
                return Err(GendaError::invalid(
                    "experiment.truth_file",
                    "a replayed truth holds only the observation times; this command needs every model step",
                ))
            }
            Source::Fine {
                model: tm,
                state,
                prop,
            } => {
                let c =
                    prop.advance(tm.model.as_ref(), state, steps, comm, &self.key, first_step)?;
                tm.coarsen(state, &mut self.slab);
                c
            }
            Source::Simulated => {
                self.prop
                    .advance(model, &mut self.slab, steps, comm, &self.key, first_step)?
            }
        })
    }

    /// Whether the truth is replayed from a file (`experiment.truth_file`).
    pub fn is_replayed(&self) -> bool {
        matches!(self.source, Source::Replayed(_))
    }

    /// Whether the truth runs on a finer grid than the members (`model.truth_grid`).
    pub fn is_fine(&self) -> bool {
        matches!(self.source, Source::Fine { .. })
    }

    /// The observations of `cycle` located in the analysed columns (halo `w` included).
    pub fn observe(
        &self,
        lobs: &LocalObs,
        w: usize,
        comm: &dyn Collectives,
        seed: u64,
        cycle: usize,
        out: &mut [f64],
    ) -> Result<()> {
        let tv = Array2::from_shape_vec((1, self.slab.len()), self.slab.clone()).expect("one row");
        let ext = if w > 0 { with_halo(&tv, w, comm)? } else { tv };
        observe(lobs, ext.as_slice().expect("one row"), seed, cycle, out);
        Ok(())
    }

    /// The observations of `cycle` of the whole state on one process (the serial commands).
    pub fn observe_whole(&self, lobs: &LocalObs, seed: u64, cycle: usize) -> Vec<f64> {
        let mut out = vec![0.0; lobs.global.len()];
        observe(lobs, &self.slab, seed, cycle, &mut out);
        out
    }

    /// This rank's part of what a checkpoint stores of the truth, as `(values, offset, stored
    /// length)`: the fine-grid state whole, from the root, when there is one (one domain, so
    /// the root holds it), else each domain's slab of the n-value truth from the ranks that
    /// `write` it.
    pub fn checkpoint_part(&self, n: usize, root: bool, write: bool) -> (&[f64], usize, usize) {
        match &self.source {
            Source::Fine { state, .. } => (if root { &state[..] } else { &[] }, 0, state.len()),
            _ => (if write { &self.slab[..] } else { &[] }, self.own.start, n),
        }
    }

    /// The stored truth values this rank reads back on a restart (of `stored` values).
    pub fn checkpoint_range(&self, stored: usize) -> Range<usize> {
        match &self.source {
            Source::Fine { .. } => 0..stored,
            _ => self.own.clone(),
        }
    }

    /// Continue from this rank's truth values (`checkpoint_range`) of checkpoint `path`.
    pub fn restore(&mut self, saved: &[f64], n: usize, path: &Path) -> Result<()> {
        match &mut self.source {
            Source::Fine {
                model: tm, state, ..
            } => {
                if saved.len() != state.len() {
                    return Err(GendaError::file(path, format!("checkpoint truth has {} values, the {}-value fine-grid truth (model.truth_grid) needs {}", saved.len(), n, state.len())));
                }
                state.copy_from_slice(saved);
                tm.coarsen(state, &mut self.slab);
            }
            _ => self.slab.copy_from_slice(saved),
        }
        Ok(())
    }
}
