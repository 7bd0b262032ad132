//! The cycle (as DAPPER's `assimilate`): for each cycle, forecast → observe → analyse →
//! metrics → output. The driver owns timing, metrics, output and the parallel bookkeeping; a
//! `Filter` implements only the analysis.
mod assess;
mod truth;

use crate::config::Config;
use crate::error::{GendaError, Result};
use crate::filters::{AnalysisInput, Filter, ForecastPath, LocalDomain};
use crate::io::{
    read_checkpoint, read_checkpoint_slab, snapshot_path, write_checkpoint, write_trajectory,
    CheckpointSlab, OutputLayout, RunCheckpoint, RunMeta, RunSlabs, RunWriter, Trajectory,
};
use crate::metrics::TimeAverage;
pub use crate::models::TRUTH_STREAM;
use crate::models::{add_model_noise, Model, NoiseKey, SlabStepper};
use crate::obs::{LocalObs, ObsOperator};
use crate::parallel::{
    Collectives, Decomposition, Layout, SerialComm, SlabTranspose, TileReducer, Topology,
};
use crate::rng::{fill_standard_normal, Purpose};
use crate::state::SavedState;
pub use assess::{
    Assessor, CycleAssessment, DistributionalScores, ForecastAssessment, HiddenScores, PhaseTimes,
};
use indicatif::{ProgressBar, ProgressStyle};
use ndarray::{s, Array2, ArrayView2};
use rayon::prelude::*;
use std::ops::Range;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Instant;
pub use truth::Truth;

/// Variable-steps per forecast below which threads cost more than they save.
const PARALLEL_FORECAST_MIN_WORK: usize = 20_000;

/// A truth read from an HDF5 trajectory (`experiment.truth_file`): each rank reads, at each
/// cycle, only the row of that cycle on its own columns.
struct TruthReplay {
    traj: crate::io::TrajectoryReader,
    /// Rows per cycle.
    stride: usize,
    /// The columns this rank reads.
    own: Range<usize>,
}

impl TruthReplay {
    fn open(
        path: &Path,
        n: usize,
        cycle_dt: f64,
        cycles: usize,
        own: Range<usize>,
    ) -> Result<Self> {
        let traj = crate::io::TrajectoryReader::open(path)?;
        if traj.state_dim != n {
            return Err(GendaError::file(
                path,
                format!(
                    "experiment.truth_file: dataset `trajectory` has states of {} values, the model has {n}",
                    traj.state_dim
                ),
            ));
        }
        let ratio = cycle_dt / traj.dt;
        let stride = ratio.round() as usize;
        if stride == 0 || (ratio - stride as f64).abs() > 1e-6 * ratio {
            return Err(GendaError::file(
                path,
                format!(
                    "experiment.truth_file rows are {} time units apart, which does not divide the cycle length obs_every · dt = {cycle_dt}",
                    traj.dt
                ),
            ));
        }
        if traj.times < cycles * stride {
            return Err(GendaError::file(
                path,
                format!(
                    "experiment.truth_file has {} rows; {cycles} cycles of {stride} rows need {}",
                    traj.times,
                    cycles * stride
                ),
            ));
        }
        Ok(TruthReplay { traj, stride, own })
    }

    /// This rank's columns of the true state at cycle c (1-based), into `out`.
    fn read(&self, cycle: usize, out: &mut [f64]) -> Result<()> {
        let r = cycle * self.stride - 1;
        self.traj.read_row(r, self.own.clone(), out)?;
        if out.iter().any(|v| !v.is_finite()) {
            return Err(GendaError::file(
                &self.traj.path,
                format!("experiment.truth_file has non-finite values in row {r} (cycle {cycle})"),
            ));
        }
        Ok(())
    }
}

/// What a finished run reports.
#[derive(Debug, Clone)]
pub struct RunSummary {
    pub averages: TimeAverage,
    pub times: PhaseTimes,
    pub output: Option<PathBuf>,
    pub ranks: usize,
    /// Member groups × domains of the layout.
    pub groups: usize,
    pub domains: usize,
    /// Peak resident memory (VmHWM) of each rank, bytes (0 where the OS does not report it).
    pub max_rss_per_rank: Vec<u64>,
    /// Conditionally Gaussian models: scores of the hidden variables alone.
    pub hidden: Option<HiddenScores>,
    /// With `[output] distributional_scores`.
    pub distributional: Option<DistributionalScores>,
    /// With `[output] path_rmse`: the pooled RMSE and the number of states it pools.
    pub path_rmse: Option<(f64, usize)>,
}

/// Options that are not part of the science config.
#[derive(Debug, Clone, Default)]
pub struct RunOptions {
    /// Write the NetCDF run file (root rank).
    pub write_output: bool,
    /// Show a progress bar (root rank, terminals only).
    pub progress: bool,
    /// Continue from this checkpoint.
    pub restart: Option<PathBuf>,
    /// Set by a signal handler: checkpoint after the current cycle and stop.
    pub stop: Option<Arc<AtomicBool>>,
}

/// Run a root-only fallible step and make every rank agree on its outcome.
fn on_root<T>(comm: &dyn Collectives, f: impl FnOnce() -> Result<T>) -> Result<Option<T>> {
    let res = if comm.is_root() {
        f().map(Some)
    } else {
        Ok(None)
    };
    if comm.all_ok(res.is_ok()) {
        res
    } else {
        res.and(Err(GendaError::Parallel(
            "the root rank failed to write output; see its error".into(),
        )))
    }
}

/// The state propagation of this rank: slabs with halo exchange for models that can be
/// decomposed (also on one domain, so every layout runs the same arithmetic), whole states
/// otherwise.
enum Propagator {
    Slab(Box<SlabStepper>),
    /// Pseudo-spectral 2-D models: row slabs with the all-to-all transpose FFT (also on one
    /// domain, so every layout runs the same arithmetic).
    Spectral {
        side: usize,
    },
    Whole {
        n: usize,
    },
}

impl Propagator {
    fn new(model: &dyn Model, rows: usize, len: usize) -> Self {
        if model.is_slab_spectral() {
            if let Some(side) = model.grid_side() {
                return Propagator::Spectral { side };
            }
        }
        match model.halo() {
            Some(h) => Propagator::Slab(Box::new(SlabStepper::new(rows, len, h))),
            None => Propagator::Whole { n: len },
        }
    }

    /// Advance every row of `x` by `nsteps` from global step `first_step`; returns the seconds
    /// spent in halo exchanges.
    fn advance(
        &mut self,
        model: &dyn Model,
        x: &mut [f64],
        nsteps: usize,
        comm: &dyn Collectives,
        noise: &NoiseKey,
        first_step: u64,
    ) -> Result<f64> {
        if model.noise_sd() > 0.0 {
            // Stochastic: step by step, noise after each step.
            let mut t = 0.0;
            for s in 0..nsteps {
                t += self.advance_deterministic(model, x, 1, comm)?;
                add_model_noise(model, x, noise, first_step + s as u64);
            }
            return Ok(t);
        }
        self.advance_deterministic(model, x, nsteps, comm)
    }

    fn advance_deterministic(
        &mut self,
        model: &dyn Model,
        x: &mut [f64],
        nsteps: usize,
        comm: &dyn Collectives,
    ) -> Result<f64> {
        match self {
            Propagator::Slab(st) => {
                let mut t_comm = 0.0;
                for _ in 0..nsteps {
                    st.step(model, x, &mut |tl, tr, fl, fr| {
                        let t = Instant::now();
                        let r = comm.ring_exchange(tl, tr, fl, fr);
                        t_comm += t.elapsed().as_secs_f64();
                        r
                    })?;
                }
                Ok(t_comm)
            }
            Propagator::Spectral { side } => {
                let mut t_comm = 0.0;
                let mut tr = SlabTranspose::new(comm, *side)?;
                // On one rank the transpose is a local copy: model time, not communication.
                let timed = comm.size() > 1;
                model.advance_spectral_slabs(
                    x,
                    comm.rank(),
                    comm.size(),
                    nsteps,
                    &mut |a, b| {
                        let t = Instant::now();
                        let r = tr.transpose(a, b);
                        if timed {
                            t_comm += t.elapsed().as_secs_f64();
                        }
                        r
                    },
                )?;
                Ok(t_comm)
            }
            Propagator::Whole { n } => {
                // Threads over members when there is enough work to amortise waking the pool
                // (members are independent, so both paths give the same numbers).
                if x.len() * nsteps >= PARALLEL_FORECAST_MIN_WORK {
                    x.par_chunks_mut(*n)
                        .for_each(|r| model.integrate(r, nsteps));
                } else {
                    x.chunks_mut(*n).for_each(|r| model.integrate(r, nsteps));
                }
                Ok(0.0)
            }
        }
    }
}

/// `a` (rows, len) with `w` columns of the ring neighbours' slabs on each side.
pub(crate) fn with_halo(a: &Array2<f64>, w: usize, comm: &dyn Collectives) -> Result<Array2<f64>> {
    let (rows, len) = a.dim();
    let mut to_left = Vec::with_capacity(rows * w);
    let mut to_right = Vec::with_capacity(rows * w);
    for r in a.rows() {
        to_left.extend(r.iter().take(w));
        to_right.extend(r.iter().skip(len - w));
    }
    let mut from_left = vec![0.0; rows * w];
    let mut from_right = vec![0.0; rows * w];
    comm.ring_exchange(&to_left, &to_right, &mut from_left, &mut from_right)?;
    let mut out = Array2::zeros((rows, len + 2 * w));
    for (k, mut row) in out.rows_mut().into_iter().enumerate() {
        let o = row.as_slice_mut().expect("fresh array");
        o[..w].copy_from_slice(&from_left[k * w..(k + 1) * w]);
        o[w..w + len].copy_from_slice(a.row(k).as_slice().expect("contiguous rows"));
        o[w + len..].copy_from_slice(&from_right[k * w..(k + 1) * w]);
    }
    Ok(out)
}

/// Observations y = h(x) + R^{1/2} z of the columns `x` from the truth, with z keyed by global
/// observation index (the same numbers whichever rank observes).
pub(crate) fn observe(lobs: &LocalObs, x: &[f64], seed: u64, cycle: usize, out: &mut [f64]) {
    lobs.op.apply(x, out);
    let mut z = vec![0.0; out.len()];
    // Runs of consecutive global indices (a slab that wraps around the ring has two).
    let mut k = 0;
    while k < z.len() {
        let mut e = k + 1;
        while e < z.len() && lobs.global[e] == lobs.global[e - 1] + 1 {
            e += 1;
        }
        fill_standard_normal(
            seed,
            Purpose::ObsNoise,
            cycle as u64,
            0,
            lobs.global[k],
            &mut z[k..e],
        );
        k = e;
    }
    for ((y, z), r) in out.iter_mut().zip(&z).zip(&lobs.error_var) {
        *y += r.sqrt() * z;
    }
}

/// Check that every rank's array is finite; all ranks fail together.
fn all_finite(comm: &dyn Collectives, a: &Array2<f64>, cycle: usize, what: &str) -> Result<()> {
    let ok = a.iter().all(|v| v.is_finite());
    if comm.all_ok(ok) {
        Ok(())
    } else {
        Err(GendaError::Diverged {
            cycle,
            what: format!("{what} contains non-finite values (NaN/inf)"),
        })
    }
}

/// The initial members `mine` (rows) on the columns `own`: member m ~ N(mean, var) from stream
/// (EnsembleInit, m) keyed by global index, so a rank draws only its own block and the numbers
/// are the same on any layout. Every command that starts an ensemble (`run`, `couple`,
/// `bench`) draws it here.
pub fn initial_ensemble(
    cfg: &Config,
    mine: Range<usize>,
    own: Range<usize>,
) -> Result<Array2<f64>> {
    let n = cfg.model.dim();
    let mean0 = cfg.initial.mean.expand(n, "initial.mean")?;
    let var0 = cfg.initial.var.expand(n, "initial.var")?;
    let mut local = Array2::<f64>::zeros((mine.len(), own.len()));
    for (mut row, m) in local.rows_mut().into_iter().zip(mine) {
        let x = row.as_slice_mut().expect("fresh array is contiguous");
        fill_standard_normal(
            cfg.experiment.seed,
            Purpose::EnsembleInit,
            0,
            m as u64,
            own.start,
            x,
        );
        for (k, xi) in x.iter_mut().enumerate() {
            let i = own.start + k;
            *xi = mean0[i] + var0[i].sqrt() * *xi;
        }
        if let Some(f) = &cfg.initial.filter {
            if own != (0..n) {
                return Err(GendaError::invalid(
                    "initial.filter",
                    "a filtered draw needs the whole state on one domain (parallel.domains = 1)",
                ));
            }
            f.apply(&cfg.model, x)?;
        }
    }
    Ok(local)
}

/// Check a config's parallel layout against a world of `ranks` ranks, before any work: the
/// same answer on every rank, so they all stop together with the same message.
pub fn check_layout(cfg: &Config, ranks: usize) -> Result<(Decomposition, Layout)> {
    let model = cfg.model.build();
    let n = model.dim();
    let domains = cfg.parallel.domains;
    let layout = Layout::new(ranks, 0, domains, cfg.filter.members())?;
    let spectral = model.is_slab_spectral() && domains > 1;
    if domains > 1 && cfg.model.has_fine_truth() {
        return Err(GendaError::invalid(
            "parallel.domains",
            "model.truth_grid (a finer-grid truth) runs on one domain: use domains = 1 (members still split over ranks)",
        ));
    }
    if spectral {
        let side = model.grid_side().unwrap_or(0);
        if side % domains != 0 {
            return Err(GendaError::invalid(
                "parallel.domains",
                format!(
                    "the {side}×{side} grid of {} is split in row slabs: its side must be divisible by the number of domains ({domains})",
                    model.name()
                ),
            ));
        }
    }
    let mhalo = match model.halo() {
        Some((l, r)) => l.max(r),
        None if spectral => 0,
        None if domains > 1 => {
            return Err(GendaError::invalid(
                "parallel.domains",
                format!(
                "{} cannot be domain-decomposed; use domains = 1 (members still split over ranks)",
                model.name()
            ),
            ))
        }
        None => 0,
    };
    // What the method needs, in one place (`filters::Needs`).
    let f = cfg.filter.build();
    let needs = f.needs(n);
    let fhalo = if domains > 1 { needs.halo } else { 0 };
    let tile = cfg
        .parallel
        .tile_size
        .unwrap_or_else(|| Decomposition::default_tile(n));
    let dec = Decomposition::new(n, tile, domains, mhalo.max(fhalo))?;
    if spectral {
        let slab = n / domains;
        if (0..domains).any(|d| dec.domain_range(d) != (d * slab..(d + 1) * slab)) {
            return Err(GendaError::invalid(
                "parallel.tile_size",
                format!(
                    "tiles of {tile} do not split the grid into {domains} equal row slabs of {slab} values; use a tile size that divides {slab} (e.g. the grid side)"
                ),
            ));
        }
    }
    if needs.conditional_gaussian {
        crate::filters::cg::cg_structure(model.as_ref())?;
    }
    if needs.forecast_path && cfg.experiment.ensemble_start_step > 0 {
        return Err(GendaError::invalid(
            "experiment.ensemble_start_step",
            "is not supported by a method that needs the forecast path",
        ));
    }
    if needs.forecast_path && f.forecast_clip().is_some() {
        return Err(GendaError::invalid(
            "filter.forecast_clip",
            "is not supported by a method that needs the forecast path",
        ));
    }
    if let (true, Some(why)) = (domains > 1, needs.whole_state) {
        return Err(GendaError::invalid(
            "parallel.domains",
            format!(
                "{} needs the whole state on one rank ({why}); use domains = 1 (members still split over ranks)",
                cfg.filter.name()
            ),
        ));
    }
    if let Some(why) = needs.component_selection {
        let h = cfg.observations.build_local(n, 0, n).op;
        if crate::filters::selected_components(&h).is_none() {
            return Err(GendaError::invalid(
                "observations.operator",
                format!("{}: {why}", cfg.filter.name()),
            ));
        }
    }
    Ok((dec, layout))
}

/// Time per model step of `members` states on this communicator's ranks (every rank a domain).
#[derive(Debug, Clone)]
pub struct ModelBench {
    pub model: String,
    pub state_dim: usize,
    pub ranks: usize,
    pub members: usize,
    pub steps: usize,
    /// Seconds per step (all members), slowest rank.
    pub per_step_s: f64,
    /// Seconds per step in halo exchanges or transposes (0 on one rank), slowest rank.
    pub comm_per_step_s: f64,
    /// The model's own kernel timers per step (e.g. `fft`), slowest rank.
    pub kernels_per_step_s: Vec<(&'static str, f64)>,
}

/// `genda bench`: step `members` random states `steps` times on a slab layout of
/// `comm.size()` domains, after one warm-up step; the slowest rank's times.
pub fn bench_model(
    cfg: &Config,
    comm: &dyn Collectives,
    members: usize,
    steps: usize,
) -> Result<ModelBench> {
    let mut cfg = cfg.clone();
    cfg.parallel.domains = comm.size();
    cfg.output.save_ensemble = false;
    let (dec, _) = check_layout(&cfg, comm.size())?;
    let model = cfg.model.build();
    let own = dec.domain_range(comm.rank());
    let mut x = initial_ensemble(&cfg, 0..members, own.clone())?;
    let x = x.as_slice_mut().expect("fresh array");
    let mut prop = Propagator::new(model.as_ref(), members, own.len());
    let key = NoiseKey {
        seed: cfg.experiment.seed,
        rows: (0..members as u64).collect(),
        offset: own.start,
    };
    prop.advance(model.as_ref(), x, 1, comm, &key, 0)?;
    let k0 = model.timers();
    comm.barrier();
    let t0 = Instant::now();
    let t_comm = prop.advance(model.as_ref(), x, steps, comm, &key, 1)?;
    let wall = t0.elapsed().as_secs_f64();
    let k1 = model.timers();
    let mut v: Vec<f64> = vec![wall, t_comm];
    v.extend(k1.iter().zip(&k0).map(|(a, b)| a.1 - b.1));
    comm.all_reduce_max_f64(&mut v);
    let s = steps.max(1) as f64;
    Ok(ModelBench {
        model: model.name().to_string(),
        state_dim: model.dim(),
        ranks: comm.size(),
        members,
        steps,
        per_step_s: v[0] / s,
        comm_per_step_s: v[1] / s,
        kernels_per_step_s: k1.iter().zip(&v[2..]).map(|(k, t)| (k.0, t / s)).collect(),
    })
}

/// Read checkpoint `path` and check that this run can continue from it: same genda version,
/// same science config, members and state size, and a cycle before the run's end.
fn read_checkpoint_for(
    path: &Path,
    config_hash: &str,
    members: usize,
    n: usize,
    cycles: usize,
) -> Result<RunCheckpoint> {
    let ck = read_checkpoint(path)?;
    if ck.genda_version != env!("CARGO_PKG_VERSION") {
        return Err(GendaError::file(
            path,
            format!(
                "checkpoint written by genda {}, this is {}",
                ck.genda_version,
                env!("CARGO_PKG_VERSION")
            ),
        ));
    }
    if ck.config_hash != config_hash || ck.members != members || ck.state_dim != n {
        return Err(GendaError::file(path, "checkpoint belongs to another config (science settings differ); restart with the config it was written for"));
    }
    if ck.cycle >= cycles {
        return Err(GendaError::file(
            path,
            format!(
                "checkpoint is at cycle {}, the run has only {cycles}",
                ck.cycle
            ),
        ));
    }
    Ok(ck)
}

/// The run file, written by every rank together (each its `slabs`), `None` without output.
fn open_writer(
    cfg: &Config,
    path: &Path,
    comm: &dyn Collectives,
    model: &dyn Model,
    filter: &dyn Filter,
    slabs: RunSlabs,
    write_output: bool,
) -> Result<Option<RunWriter>> {
    if !write_output {
        return Ok(None);
    }
    let n = model.dim();
    RunWriter::create(
        path,
        &RunMeta {
            name: &cfg.experiment.name,
            model: model.name(),
            method: Some(filter.name()),
            members: cfg.filter.members(),
            state_dim: n,
            obs_locations: &cfg.observations.locations(n),
            obs_operator: &format!("{:?}", cfg.observations.operator).to_lowercase(),
            cycles: cfg.experiment.cycles,
            cycle_dt: cfg.observations.obs_every as f64 * model.dt(),
            burn_in: cfg.experiment.burn_in,
            save_ensemble: cfg.output.save_ensemble,
            config_toml: &cfg.to_toml(),
            ranks: comm.size(),
            grid_side: model.grid_side(),
            distributional_scores: cfg.output.distributional_scores,
            weighted: filter.weights().is_some(),
        },
        &cfg.output.layout(),
        slabs,
        comm,
    )
    .map(Some)
}

/// The cycle progress bar (hidden unless `show`).
fn progress_bar(show: bool, cycles: usize) -> ProgressBar {
    let bar = if show {
        ProgressBar::new(cycles as u64)
    } else {
        ProgressBar::hidden()
    };
    bar.set_style(
        ProgressStyle::with_template(
            "{spinner} cycle {pos}/{len} [{bar:40}] {elapsed_precise} eta {eta} {msg}",
        )
        .unwrap_or_else(|_| ProgressStyle::default_bar())
        .progress_chars("=> "),
    );
    bar
}

/// Every rank agrees on the outcome of the analysis `res` of `cycle`: a failed linear algebra
/// is a divergence; a failure elsewhere ends every rank with a pointer to that rank's error.
fn agree_on_analysis(comm: &dyn Collectives, res: Result<()>, cycle: usize) -> Result<()> {
    if comm.all_ok(res.is_ok()) {
        return Ok(());
    }
    Err(match res {
        Err(GendaError::LinAlg(msg)) => GendaError::Diverged {
            cycle,
            what: format!("analysis failed ({msg})"),
        },
        Err(other) => other,
        Ok(()) => GendaError::Diverged {
            cycle,
            what: "the analysis failed on another rank (see its error)".into(),
        },
    })
}

/// Every rank agrees on the outcome of its part of a collective write.
fn agree_on_output(comm: &dyn Collectives, res: Result<()>) -> Result<()> {
    if comm.all_ok(res.is_ok()) {
        return Ok(());
    }
    res.and(Err(GendaError::Parallel(
        "another rank failed to write its part of the run file; see its error".into(),
    )))
}

/// The members of this domain from every group, in member order: `local` (this group's
/// members) into `all` (members, owned columns).
pub(crate) fn gather_members(
    ecomm: &dyn Collectives,
    counts: &[usize],
    local: &Array2<f64>,
    all: &mut Array2<f64>,
) -> Result<()> {
    ecomm.all_gather_rows(
        local.as_slice().expect("contiguous"),
        counts,
        all.as_slice_mut().expect("contiguous"),
    )
}

/// This rank's part of cycle `cycle`'s record of the run file: the truth, observations,
/// forecast and analysis means of its slab `[truth, obs, forecast mean, analysis mean]`
/// (empty on the ranks that write no fields), the statistics, its members of the ensembles
/// (forecast, analysis) with `save_ensemble`, the particle weights (forecast, analysis) and the
/// CRPS where the run has them.
fn write_cycle(
    wr: &mut RunWriter,
    cycle: usize,
    [truth, obs, fmean, amean]: [&[f64]; 4],
    stats: &crate::metrics::CycleStats,
    ensembles: Option<(ArrayView2<f64>, ArrayView2<f64>)>,
    weights: (Option<&[f64]>, Option<&[f64]>),
    crps: Option<f64>,
) -> Result<()> {
    wr.write_truth(cycle, truth, obs)?;
    wr.write_filter(cycle, fmean, amean, stats, ensembles)?;
    if let (Some(fw), Some(aw)) = weights {
        wr.write_weights(cycle, fw, aw)?;
    }
    match crps {
        Some(c) => wr.write_crps(cycle, c),
        None => Ok(()),
    }
}

/// Whether any rank got SIGTERM/SIGUSR1 (Slurm's notice before the wall time): then every rank
/// checkpoints after this cycle and stops.
fn stop_requested(opts: &RunOptions, comm: &dyn Collectives) -> bool {
    let signalled = opts
        .stop
        .as_ref()
        .map(|f| f.load(Ordering::Relaxed))
        .unwrap_or(false);
    opts.stop.is_some() && !comm.all_ok(!signalled)
}

/// This domain's owned tiles (columns relative to its first owned column) and the columns the
/// filter analyses: the owned ones with a halo of `w` on each side.
fn analysis_domain(
    dec: &Decomposition,
    domain: usize,
    w: usize,
) -> (Vec<Range<usize>>, LocalDomain) {
    let n = dec.n;
    let own = dec.domain_range(domain);
    let tiles: Vec<Range<usize>> = dec
        .domain_tiles(domain)
        .map(|t| (t * dec.tile - own.start)..((t + 1) * dec.tile - own.start))
        .collect();
    let local = LocalDomain {
        n_global: n,
        ext_start: (own.start + n - w) % n,
        own: w..w + own.len(),
        tiles: tiles.iter().map(|t| (t.start + w)..(t.end + w)).collect(),
        whole: dec.domains == 1,
    };
    (tiles, local)
}

/// What one rank analyses: its domain's owned columns and tiles, the halo of `w` columns the
/// method localises with (0 on one domain), and the observations of the analysed columns.
pub(crate) struct AnalysisColumns {
    pub w: usize,
    pub own: Range<usize>,
    /// Owned tiles, relative to the first owned column.
    pub tiles_own: Vec<Range<usize>>,
    pub domain: LocalDomain,
    /// Observations of the analysed columns (owned + halo); `own_obs` those of the owned ones,
    /// the first of which has the global index `obs_offset`.
    pub lobs: LocalObs,
    pub own_obs: Range<usize>,
    pub obs_offset: usize,
}

impl AnalysisColumns {
    /// Domain `domain` of `dec`, for a method that localises with a halo of `halo` columns.
    pub(crate) fn new(cfg: &Config, dec: &Decomposition, domain: usize, halo: usize) -> Self {
        let n = dec.n;
        let own = dec.domain_range(domain);
        let len = own.len();
        let w = if dec.domains == 1 { 0 } else { halo };
        let (tiles_own, local) = analysis_domain(dec, domain, w);
        let lobs = cfg
            .observations
            .build_local(n, local.ext_start, len + 2 * w);
        let own_obs = {
            let locs = lobs.op.locations();
            locs.partition_point(|&l| l < w)..locs.partition_point(|&l| l < w + len)
        };
        let obs_offset = lobs.global.get(own_obs.start).copied().unwrap_or(0);
        AnalysisColumns {
            w,
            own,
            tiles_own,
            domain: local,
            lobs,
            own_obs,
            obs_offset,
        }
    }
}

/// One line on what runs where (info on the root, debug elsewhere).
fn log_layout(
    cfg: &Config,
    model: &dyn Model,
    comm: &dyn Collectives,
    lay: &Layout,
    dec: &Decomposition,
) {
    let n = model.dim();
    let level = if comm.is_root() {
        log::Level::Info
    } else {
        log::Level::Debug
    };
    let len = dec.domain_range(lay.domain).len();
    log::log!(level,
        "{}: {} (n = {n}), {} with {} members, {} obs every {} steps, {} cycles; {} rank(s) = {} member group(s) × {} domain(s) of {}..{} tiles of {}",
        cfg.experiment.name,
        model.name(),
        cfg.filter.name(),
        cfg.filter.members(),
        cfg.observations.locations(n).len(),
        cfg.observations.obs_every,
        cfg.experiment.cycles,
        comm.size(),
        lay.groups,
        lay.domains,
        dec.min_domain_len(),
        len.max(dec.min_domain_len()),
        dec.tile
    );
}

/// Stability at the start (CFL of the 2-D models), on the truth slab and every local member;
/// every rank agrees. A decomposed 2-D field is gathered over the domain communicator for the
/// check (once); every rank of it sees the same fields, so all take the same branches.
fn check_start_stability(
    model: &dyn Model,
    dec: &Decomposition,
    dcomm: &dyn Collectives,
    comm: &dyn Collectives,
    truth: &[f64],
    members: &Array2<f64>,
) -> Result<()> {
    let (n, len) = (model.dim(), truth.len());
    let counts = dec.slab_counts(1);
    let mut full = vec![0.0; if len == n { 0 } else { n }];
    let whole_field = |part: &[f64], full: &mut Vec<f64>| -> Result<bool> {
        if len == n {
            return Ok(true);
        }
        if model.grid_side().is_none() {
            return Ok(false);
        }
        dcomm.all_gather_rows(part, &counts, full)?;
        Ok(true)
    };
    let check = |part: &[f64], full: &mut Vec<f64>| -> Result<Option<String>> {
        Ok(if !whole_field(part, full)? {
            None
        } else if len == n {
            model.stability_problem(part)
        } else {
            model.stability_problem(full)
        })
    };
    let mut problem = check(truth, &mut full)?;
    if problem.is_none() && (len == n || model.grid_side().is_some()) {
        for row in members.rows() {
            problem = check(row.as_slice().expect("contiguous"), &mut full)?;
            if problem.is_some() {
                break;
            }
        }
    }
    let ok = comm.all_ok(problem.is_none());
    if let Some(msg) = problem {
        return Err(GendaError::invalid("model.dt", msg));
    }
    if !ok {
        return Err(GendaError::Quiet);
    }
    Ok(())
}

/// One cycle's forecast of this rank's members `x` (members, owned columns): model steps
/// `from..to` of the cycle, whose first step has the global id `first_step`. Step by step,
/// keeping each state, when the method wants the path (the same arithmetic and noise keys as
/// one call); with the members clipped to ±c after every step (EnSF's published code) when
/// `clip` says so. Returns the seconds spent in halo exchanges.
#[allow(clippy::too_many_arguments)]
fn forecast_members(
    prop: &mut Propagator,
    model: &dyn Model,
    x: &mut Array2<f64>,
    (from, to): (usize, usize),
    first_step: u64,
    comm: &dyn Collectives,
    key: &NoiseKey,
    clip: Option<f64>,
    path: Option<&mut Vec<Array2<f64>>>,
) -> Result<f64> {
    if let Some(path) = path {
        path.clear();
        path.push(x.clone());
        let mut c = 0.0;
        for s in from..to {
            let xs = x.as_slice_mut().expect("local ensemble is contiguous");
            c += prop.advance(model, xs, 1, comm, key, first_step + s as u64)?;
            if let Some(clip) = clip {
                xs.iter_mut().for_each(|v| *v = v.clamp(-clip, clip));
            }
            path.push(x.clone());
        }
        return Ok(c);
    }
    let xs = x.as_slice_mut().expect("local ensemble is contiguous");
    match clip {
        Some(clip) => {
            let mut c = 0.0;
            for s in from..to {
                c += prop.advance(model, xs, 1, comm, key, first_step + s as u64)?;
                xs.iter_mut().for_each(|v| *v = v.clamp(-clip, clip));
            }
            Ok(c)
        }
        None => prop.advance(model, xs, to - from, comm, key, first_step + from as u64),
    }
}

/// The data files a method reads (`Filter::prepare`), through `io`, on rank `rank` of the
/// `ranks` that run the analysis alike.
pub struct DataFromFiles {
    pub rank: usize,
    pub ranks: usize,
}

impl DataFromFiles {
    /// One process analysing alone.
    pub const SERIAL: DataFromFiles = DataFromFiles { rank: 0, ranks: 1 };

    /// The ranks of `replicas`.
    pub fn on(replicas: &dyn Collectives) -> Self {
        DataFromFiles {
            rank: replicas.rank(),
            ranks: replicas.size(),
        }
    }
}

impl crate::filters::DataFiles for DataFromFiles {
    fn trajectory(&self, path: &Path) -> Result<(Vec<f64>, usize)> {
        let t = crate::io::read_trajectory(path)?;
        Ok((t.data, t.state_dim))
    }
    fn trajectory_shape(&self, path: &Path) -> Result<(usize, usize)> {
        let r = crate::io::TrajectoryReader::open(path)?;
        Ok((r.times, r.state_dim))
    }
    fn trajectory_rows(&self, path: &Path, rows: Range<usize>) -> Result<Vec<f64>> {
        crate::io::TrajectoryReader::open(path)?.read_rows(rows)
    }
    fn replica(&self) -> (usize, usize) {
        (self.rank, self.ranks)
    }
}

/// One twin run on this rank: what the cycle reads and updates — the layout, the model, the
/// method, the truth, this rank's members, the assessor and the output.
struct TwinRun<'a> {
    cfg: &'a Config,
    comm: &'a dyn Collectives,
    opts: &'a RunOptions,
    lay: &'a Layout,
    /// My member group's ranks, one per domain; and my domain's ranks of the other groups.
    dcomm: &'a dyn Collectives,
    ecomm: &'a dyn Collectives,
    model: Box<dyn Model>,
    filter: Box<dyn Filter>,
    /// Keep the members' forecast path: for the method (`filter_path`) or for `path_rmse`.
    want_path: bool,
    filter_path: bool,
    /// The truth between this cycle's observation times (`output.path_rmse`).
    truth_path: Vec<Vec<f64>>,
    /// Halo width of the analysed columns (0 on one domain).
    w: usize,
    own: Range<usize>,
    mine: Range<usize>,
    tiles_own: Vec<Range<usize>>,
    domain: LocalDomain,
    reducer: TileReducer<'a>,
    /// Observations of the analysed columns (owned + halo); `own_obs` those of the owned ones.
    lobs: LocalObs,
    own_obs: Range<usize>,
    obs_offset: usize,
    truth: Truth,
    /// This rank's members on its columns.
    local: Array2<f64>,
    prop: Propagator,
    member_key: NoiseKey,
    assess: Assessor,
    writer: Option<RunWriter>,
    snapshots: Snapshots,
    config_hash: String,
    ckpt_path: PathBuf,
    // The cycle's buffers: observations, all members on my columns, the forecast paths.
    obs: Vec<f64>,
    ens: Array2<f64>,
    member_counts: Vec<usize>,
    path_local: Vec<Array2<f64>>,
    path_all: Vec<Array2<f64>>,
}

/// The two run-file snapshots beside the checkpoint (`snapshot_path` slots 0 and 1), updated in
/// turn: a checkpoint brings the one the last committed checkpoint does not name up to its
/// cycle, writing only the rows since that one's previous update (at its first use in a run:
/// a new file without rows, then every row so far), so a run's checkpoints cost O(its output)
/// in all — a copy of the whole file, whose size is fixed at its creation, at every checkpoint
/// cost O(file) each — and a crash mid-update leaves the named one intact.
#[derive(Default)]
struct Snapshots {
    /// The snapshot the last committed checkpoint (or the restart's checkpoint) names.
    live: Option<PathBuf>,
    /// Its slot, when it is one of this run's two.
    live_slot: Option<usize>,
    /// Per slot, the cycle up to which the file equals the run file (`None`: not known, so
    /// its next use starts it anew).
    valid: [Option<usize>; 2],
}

impl Snapshots {
    /// After a restart from a checkpoint at `cycle` naming `live`: when that is one of this
    /// run's slots (the same checkpoint path), it equals the rows copied from it.
    /// The file is compared, not its spelling (`--restart ./out/r.ckpt.h5` against a config's
    /// `out/r.ckpt.h5`): taking the live snapshot for a free slot would overwrite it before the
    /// next checkpoint names another.
    fn restart_from(&mut self, live: PathBuf, ckpt: &Path, cycle: usize) {
        let same = |a: &Path, b: &Path| match (std::fs::canonicalize(a), std::fs::canonicalize(b)) {
            (Ok(x), Ok(y)) => x == y,
            _ => a == b,
        };
        self.live_slot = (0..2).find(|&k| same(&snapshot_path(ckpt, k), &live));
        if let Some(k) = self.live_slot {
            self.valid[k] = Some(cycle);
        }
        self.live = Some(live);
    }

    /// The slot the next checkpoint updates: not the live one.
    fn next_slot(&self) -> usize {
        self.live_slot.map_or(0, |k| 1 - k)
    }

    /// A checkpoint naming slot `slot` (at `p`), brought up to `cycle`, was committed.
    fn committed(&mut self, p: PathBuf, slot: usize, cycle: usize) {
        self.valid[slot] = Some(cycle);
        self.live_slot = Some(slot);
        self.live = Some(p);
    }
}

/// What one cycle's analysis leaves for the output.
struct Analysed {
    fc: ForecastAssessment,
    cycle: CycleAssessment,
    /// The forecast ensemble, where the output or the assessor needs it after the analysis.
    forecast: Option<Array2<f64>>,
    forecast_weights: Option<Vec<f64>>,
}

impl<'a> TwinRun<'a> {
    /// Everything before the first cycle: the method (its files opened and checked), the
    /// observations of my columns, the truth and the members (drawn from streams keyed by
    /// global index), their spin-ups, and the assessor.
    fn new(
        cfg: &'a Config,
        comm: &'a dyn Collectives,
        opts: &'a RunOptions,
        dec: Decomposition,
        topo: &'a Topology,
    ) -> Result<Self> {
        let model = cfg.model.build();
        let n = model.dim();
        let members = cfg.filter.members();
        let lay = &topo.layout;
        let dcomm = topo.domain.as_ref();
        let own = dec.domain_range(lay.domain);
        let len = own.len();
        let mine = lay.my_members();
        let mut filter = cfg.filter.build();
        // Weights and training data are opened and checked now, before any model step.
        filter.prepare(n, &DataFromFiles::on(topo.ensemble.as_ref()))?;
        let needs = filter.needs(n);
        let whole = dec.domains == 1;
        let AnalysisColumns {
            w,
            tiles_own,
            domain,
            lobs,
            own_obs,
            obs_offset,
            ..
        } = AnalysisColumns::new(cfg, &dec, lay.domain, needs.halo);
        log_layout(cfg, model.as_ref(), comm, lay, &dec);

        let mut truth = Truth::new(cfg, model.as_ref(), own.clone())?;
        let mut local = initial_ensemble(cfg, mine.clone(), own.clone())?;
        check_start_stability(model.as_ref(), &dec, dcomm, comm, &truth.slab, &local)?;
        truth.spin_up(model.as_ref(), dcomm)?;
        let mut prop = Propagator::new(model.as_ref(), mine.len(), len);
        let member_key = NoiseKey {
            seed: cfg.experiment.seed,
            rows: mine.clone().map(|m| m as u64).collect(),
            offset: own.start,
        };
        if cfg.experiment.ensemble_spinup_steps > 0 && opts.restart.is_none() {
            // Model-noise steps of the member spin-up live in their own range of step ids.
            prop.advance(
                model.as_ref(),
                local.as_slice_mut().expect("contiguous"),
                cfg.experiment.ensemble_spinup_steps,
                dcomm,
                &member_key,
                1 << 62,
            )?;
        }
        // Hidden-variable scores of conditionally Gaussian models (never domain-decomposed, so
        // the whole state is local).
        let assess = Assessor::new(
            n,
            members,
            cfg.experiment.burn_in,
            cfg.output.distributional_scores,
            model.hidden_start().filter(|_| whole),
        )
        .with_path_scores(cfg.output.path_rmse);
        Ok(TwinRun {
            cfg,
            comm,
            opts,
            lay,
            dcomm,
            ecomm: topo.ensemble.as_ref(),
            reducer: TileReducer::new(dcomm, &dec),
            filter,
            want_path: needs.forecast_path || cfg.output.path_rmse,
            filter_path: needs.forecast_path,
            truth_path: Vec::new(),
            w,
            tiles_own,
            domain,
            obs: vec![0.0; lobs.global.len()],
            lobs,
            own_obs,
            obs_offset,
            truth,
            local,
            prop,
            member_key,
            assess,
            writer: None,
            snapshots: Snapshots::default(),
            config_hash: cfg.science_hash(),
            ckpt_path: cfg.checkpoint_path(),
            ens: Array2::<f64>::zeros((members, len)),
            member_counts: lay.members.counts(len),
            path_local: Vec::new(),
            path_all: Vec::new(),
            own,
            mine,
            model,
        })
    }

    /// With `--restart`: this rank's members and columns, the truth, the statistics and the
    /// method's state from the checkpoint. Returns the first cycle to run.
    fn restart(&mut self) -> Result<usize> {
        let Some(path) = &self.opts.restart else {
            return Ok(1);
        };
        let (n, own) = (self.model.dim(), &self.own);
        let ck = read_checkpoint_for(
            path,
            &self.config_hash,
            self.cfg.filter.members(),
            n,
            self.cfg.experiment.cycles,
        )?;
        // Only this rank's members on its columns, and its part of the truth.
        let range = self.truth.checkpoint_range(ck.truth_len);
        let (ens, truth) = read_checkpoint_slab(path, self.mine.clone(), own.clone(), range)?;
        self.local.assign(&ens);
        self.truth.restore(&truth, n, path)?;
        let in_file = |e: GendaError| GendaError::file(path, e.to_string());
        self.assess
            .restore(ck.assessment, ck.cycle)
            .map_err(in_file)?;
        self.filter
            .restore_state(ck.filter_state)
            .map_err(in_file)?;
        if self.opts.write_output {
            let name = ck.run_snapshot.ok_or_else(|| GendaError::file(path, "checkpoint has no run-file snapshot (written with --no-output); restart with --no-output"))?;
            self.snapshots
                .restart_from(path.with_file_name(name), &self.ckpt_path, ck.cycle);
        }
        log::info!(
            "restarting from {} after cycle {}",
            path.display(),
            ck.cycle
        );
        Ok(ck.cycle + 1)
    }

    /// The run file, written by every rank together: group 0's ranks write the fields of their
    /// domain, every rank its members of the saved ensembles, world rank 0 the scalars. On a
    /// restart (first cycle `start`), the snapshot's earlier cycles are copied in.
    fn open_output(&mut self, start: usize) -> Result<()> {
        self.writer = open_writer(
            self.cfg,
            &self.cfg.output.path,
            self.comm,
            self.model.as_ref(),
            self.filter.as_ref(),
            self.run_slabs(),
            self.opts.write_output,
        )?;
        if let (Some(w), Some(snap)) = (self.writer.as_mut(), self.snapshots.live.as_deref()) {
            w.copy_from(snap, start - 1, self.comm)?;
        }
        Ok(())
    }

    /// What this rank writes of the run file: group 0's ranks the fields of their domain,
    /// every rank its members of the saved ensembles, world rank 0 the scalars.
    fn run_slabs(&self) -> RunSlabs {
        let g0 = self.lay.group == 0;
        RunSlabs {
            state: if g0 { self.own.clone() } else { 0..0 },
            obs: if g0 {
                self.obs_offset..self.obs_offset + self.own_obs.len()
            } else {
                0..0
            },
            members: self.mine.clone(),
            ens_state: self.own.clone(),
            scalars: self.comm.is_root(),
        }
    }

    /// Global model step at which `cycle`'s forecast starts.
    fn first_step(&self, cycle: usize) -> u64 {
        (self.cfg.experiment.spinup_steps + (cycle - 1) * self.cfg.observations.obs_every) as u64
    }

    /// The truth to the observation time of `cycle`, and its observations of my columns.
    fn observe(&mut self, cycle: usize) -> Result<()> {
        let t = Instant::now();
        let c = if self.cfg.output.path_rmse {
            self.truth.advance_keeping_path(
                self.model.as_ref(),
                cycle,
                self.dcomm,
                &mut self.truth_path,
            )?
        } else {
            self.truth.advance(self.model.as_ref(), cycle, self.dcomm)?
        };
        let seed = self.cfg.experiment.seed;
        self.truth
            .observe(&self.lobs, self.w, self.dcomm, seed, cycle, &mut self.obs)?;
        self.assess.times.truth += t.elapsed().as_secs_f64() - c;
        self.assess.times.communication += c;
        Ok(())
    }

    /// My members to the observation time of `cycle` (and their path, where the method reads
    /// it).
    fn forecast(&mut self, cycle: usize) -> Result<()> {
        let t = Instant::now();
        crate::parallel::injected_fault(self.comm.rank(), cycle);
        // The members enter `ensemble_start_step` model steps into the first cycle.
        let skip = if cycle == 1 {
            self.cfg.experiment.ensemble_start_step
        } else {
            0
        };
        let first_step = self.first_step(cycle);
        let c = forecast_members(
            &mut self.prop,
            self.model.as_ref(),
            &mut self.local,
            (skip, self.cfg.observations.obs_every),
            first_step,
            self.dcomm,
            &self.member_key,
            self.filter.forecast_clip(),
            self.want_path.then_some(&mut self.path_local),
        )?;
        self.assess.times.forecast += t.elapsed().as_secs_f64() - c;
        self.assess.times.communication += c;
        Ok(())
    }

    /// All members on my columns (and their paths), plus the halo the method analyses with.
    fn gather_forecast(&mut self, cycle: usize) -> Result<Option<Array2<f64>>> {
        let t = Instant::now();
        gather_members(self.ecomm, &self.member_counts, &self.local, &mut self.ens)?;
        all_finite(self.comm, &self.ens, cycle, "forecast ensemble")?;
        if self.want_path {
            let shape = self.ens.dim();
            self.path_all
                .resize_with(self.path_local.len(), || Array2::zeros(shape));
            for (p, l) in self.path_all.iter_mut().zip(&self.path_local) {
                gather_members(self.ecomm, &self.member_counts, l, p)?;
            }
        }
        // Localised methods analyse the ensemble with a halo of neighbouring columns; the
        // others work on `ens` in place.
        let halo = if self.w > 0 {
            Some(with_halo(&self.ens, self.w, self.dcomm)?)
        } else {
            None
        };
        self.assess.times.communication += t.elapsed().as_secs_f64();
        Ok(halo)
    }

    /// Assess the forecast, analyse (every rank agreeing that it succeeded), write the files
    /// the method produced, and assess the analysis.
    fn analyse(&mut self, cycle: usize) -> Result<Analysed> {
        let mut ens_halo = self.gather_forecast(cycle)?;
        if self.cfg.output.path_rmse {
            let ta = Instant::now();
            self.assess.path(
                cycle,
                &self.path_all,
                &self.truth_path,
                &self.tiles_own,
                &self.reducer,
            )?;
            self.assess.times.assessment += ta.elapsed().as_secs_f64();
        }
        let t = Instant::now();
        // A weighted ensemble (the particle filter between resamplings) is assessed with its
        // weights, as DAPPER does; the others with equal weights.
        let forecast_weights = self.filter.weights().map(<[f64]>::to_vec);
        let ta = Instant::now();
        let fc = self.assess.forecast(
            &self.ens,
            forecast_weights.as_deref(),
            &self.truth.slab,
            &self.tiles_own,
        );
        let mut t_assess = ta.elapsed().as_secs_f64();
        let forecast = (self.cfg.output.save_ensemble || self.assess.needs_forecast_copy(cycle))
            .then(|| self.ens.clone());
        let input = AnalysisInput {
            obs: &self.obs,
            obs_operator: &self.lobs.op,
            obs_error_var: &self.lobs.error_var,
            cycle,
            seed: self.cfg.experiment.seed,
            obs_offset: self.obs_offset,
            domain: self.domain.clone(),
            reducer: &self.reducer,
            forecast: self.filter_path.then(|| ForecastPath {
                model: self.model.as_ref(),
                states: &self.path_all,
            }),
            replicas: self.ecomm,
        };
        let res = match ens_halo.as_mut() {
            Some(e) => self.filter.analyse(e, &input),
            None => self.filter.analyse(&mut self.ens, &input),
        };
        agree_on_analysis(self.comm, res, cycle)?;
        // Files the analysis produced (MASF's pre-trained prior): one rank writes them, now
        // that every rank's analysis succeeded.
        let outputs = self.filter.take_outputs();
        on_root(self.comm, || crate::filters::write_outputs(outputs))?;
        if let Some(e) = ens_halo.take() {
            let (w, len) = (self.w, self.own.len());
            self.ens.assign(&e.slice(s![.., w..w + len]));
        }
        all_finite(self.comm, &self.ens, cycle, "analysis ensemble")?;
        let a_sample = self
            .filter
            .analysis_sample()
            .or_else(|| self.filter.weights().map(|wt| (self.ens.view(), wt)));
        let ta = Instant::now();
        let assessed = self.assess.analysis(
            cycle,
            &fc,
            &self.ens,
            a_sample,
            &self.truth.slab,
            &self.tiles_own,
            &self.reducer,
            forecast.as_ref(),
        )?;
        t_assess += ta.elapsed().as_secs_f64();
        self.assess.times.assessment += t_assess;
        self.assess.times.analysis += t.elapsed().as_secs_f64() - t_assess;
        Ok(Analysed {
            fc,
            cycle: assessed,
            forecast,
            forecast_weights,
        })
    }

    /// This rank's part of the cycle's row of the run file (written collectively, no rank
    /// holding more than its own slab), then my members' analysis back into `local`.
    fn output(&mut self, cycle: usize, a: &Analysed) -> Result<()> {
        let t = Instant::now();
        if let Some(wr) = self.writer.as_mut() {
            // Group 0 writes the fields of its domain; the other groups take part with nothing.
            let g0 = self.lay.group == 0;
            let part = |v: &'_ [f64]| -> usize {
                if g0 {
                    v.len()
                } else {
                    0
                }
            };
            let own_obs = &self.obs[self.own_obs.clone()];
            let fmean = a.fc.mean.as_slice().expect("contiguous");
            let amean = a.cycle.analysis_mean.as_slice().expect("contiguous");
            let truth = &self.truth.slab;
            let fields = [
                &truth[..part(truth)],
                &own_obs[..part(own_obs)],
                &fmean[..part(fmean)],
                &amean[..part(amean)],
            ];
            let mine = self.mine.clone();
            let ensembles = match (&a.forecast, self.cfg.output.save_ensemble) {
                (Some(f), true) => {
                    Some((f.slice(s![mine.clone(), ..]), self.ens.slice(s![mine, ..])))
                }
                _ => None,
            };
            let res = write_cycle(
                wr,
                cycle,
                fields,
                &a.cycle.stats,
                ensembles,
                (a.forecast_weights.as_deref(), self.filter.weights()),
                a.cycle.crps,
            );
            agree_on_output(self.comm, res)?;
        }
        self.assess.times.output += t.elapsed().as_secs_f64();
        self.local
            .assign(&self.ens.slice(s![self.mine.clone(), ..]));
        Ok(())
    }

    /// A checkpoint every `checkpoint.every` cycles, and when any rank got SIGTERM/SIGUSR1
    /// (Slurm's notice before the wall time): then one is written and the run stops with
    /// `GendaError::Stopped`.
    fn checkpoint(&mut self, cycle: usize) -> Result<()> {
        let stop = stop_requested(self.opts, self.comm);
        let every = self.cfg.checkpoint.every;
        if !(stop || (every > 0 && cycle % every == 0 && cycle < self.cfg.experiment.cycles)) {
            return Ok(());
        }
        let t = Instant::now();
        // The run file so far, beside the checkpoint: the snapshot the last checkpoint does not
        // name is brought up to this cycle (every rank its part of the rows since its last update).
        let slot = self.snapshots.next_slot();
        let snap = if self.writer.is_none() {
            None
        } else {
            let p = snapshot_path(&self.ckpt_path, slot);
            // Its first use in this run: a file of the run's layout without rows (the
            // previous checkpoint does not name it, so it may be replaced).
            let valid = match self.snapshots.valid[slot] {
                Some(c) => c,
                None => {
                    open_writer(
                        self.cfg,
                        &p,
                        self.comm,
                        self.model.as_ref(),
                        self.filter.as_ref(),
                        self.run_slabs(),
                        true,
                    )?
                    .expect("written")
                    .close_empty(self.comm)?;
                    0
                }
            };
            if let Some(w) = self.writer.as_mut() {
                w.snapshot(&p, valid, cycle, self.comm)?;
            }
            Some(p)
        };
        // The method's and the assessor's state, from the root (replicated on every rank).
        let root = self.comm.is_root();
        let state = if root {
            self.filter.save_state()
        } else {
            Ok(SavedState::new())
        };
        let filter_state = agree_on_output(
            self.comm,
            state
                .as_ref()
                .map(|_| ())
                .map_err(|e| GendaError::Parallel(e.to_string())),
        )
        .and(state)?;
        let n = self.model.dim();
        let (truth, truth_at, truth_len) = self.truth.checkpoint_part(n, root, self.lay.group == 0);
        let meta = RunCheckpoint {
            cycle,
            members: self.cfg.filter.members(),
            state_dim: n,
            truth_len,
            inflation: self.cfg.filter.inflation(),
            filter_state,
            assessment: if root {
                self.assess.save()
            } else {
                SavedState::new()
            },
            config_hash: self.config_hash.clone(),
            genda_version: env!("CARGO_PKG_VERSION").to_string(),
            run_snapshot: snap
                .as_ref()
                .and_then(|p| p.file_name())
                .map(|n| n.to_string_lossy().into_owned()),
        };
        let slab = CheckpointSlab {
            ensemble: self.ens.slice(s![self.mine.clone(), ..]),
            members: self.mine.clone(),
            columns: self.own.clone(),
            truth,
            truth_at,
        };
        // Each rank writes its slab into the one file; the root renames it into place. The
        // snapshot the previous checkpoint names was not touched: a crash at any moment leaves
        // the previous checkpoint usable.
        write_checkpoint(&self.ckpt_path, &meta, &slab, self.comm)?;
        if let Some(p) = snap {
            self.snapshots.committed(p, slot, cycle);
        }
        if root {
            let secs = t.elapsed().as_secs_f64();
            let mb = 8.0 * (self.cfg.filter.members() * n + truth_len) as f64 / 1e6;
            log::info!(
                "checkpoint after cycle {cycle}: {} ({mb:.1} MB of ensemble and truth, with the run-file snapshot in {secs:.2} s)",
                self.ckpt_path.display()
            );
        }
        self.assess.times.output += t.elapsed().as_secs_f64();
        if stop {
            return Err(GendaError::Stopped {
                cycle,
                checkpoint: self.ckpt_path.clone(),
            });
        }
        Ok(())
    }

    /// Close the run file with the time means and gather what the summary reports.
    fn finish(mut self) -> Result<RunSummary> {
        let t = Instant::now();
        let output = match self.writer.take() {
            Some(wr) => {
                let (extra, hist) = self.assess.file_extras();
                let avg = self.assess.average();
                Some(wr.finish(self.comm, Some(avg), &extra, hist)?)
            }
            None => None,
        };
        self.assess.times.output += t.elapsed().as_secs_f64();
        let max_rss_per_rank = assess::max_rss_per_rank(self.comm)?;
        let assess = self.assess;
        Ok(RunSummary {
            times: assess.times,
            hidden: assess.hidden(),
            distributional: assess.distributional(),
            path_rmse: assess.path_rmse().map(|r| (r, assess.path_states())),
            averages: assess.into_average(),
            output,
            ranks: self.comm.size(),
            groups: self.lay.groups,
            domains: self.lay.domains,
            max_rss_per_rank,
        })
    }
}

/// `genda run`, a twin experiment: the cycle as DAPPER's `assimilate` — for each cycle, truth
/// and observations → forecast → analysis and assessment → output → checkpoint. `TwinRun`
/// holds the state, `Assessor` the statistics, `Filter` the method.
///
/// Each rank holds its member group's members on its domain (a slab of whole tiles). Forecasts
/// exchange halos within the domain communicator; before the analysis the members of the
/// domain are gathered over the ensemble communicator (plus a halo of neighbouring columns for
/// localised methods), the filter analyses the owned columns with tile-ordered sums, and each
/// rank keeps its own members. Every rank writes its own slab of the run file and of the checkpoints (collective parallel
/// NetCDF-4 / HDF5).
pub fn run_twin(cfg: &Config, comm: &dyn Collectives, opts: &RunOptions) -> Result<RunSummary> {
    let (dec, _) = check_layout(cfg, comm.size())?;
    let topo = Topology::new(comm, dec.domains, cfg.filter.members())?;
    let mut run = TwinRun::new(cfg, comm, opts, dec, &topo)?;
    let start = run.restart()?;
    run.open_output(start)?;
    let cycles = cfg.experiment.cycles;
    let bar = progress_bar(opts.progress && comm.is_root(), cycles);
    bar.set_position(start as u64 - 1);
    for cycle in start..=cycles {
        run.observe(cycle)?;
        run.forecast(cycle)?;
        let analysed = run.analyse(cycle)?;
        run.output(cycle, &analysed)?;
        if let Err(e) = run.checkpoint(cycle) {
            bar.abandon();
            return Err(e);
        }
        bar.inc(1);
        if cycle % 100 == 0 {
            let rmse = run.assess.average().mean().rmse_analysis;
            bar.set_message(format!("rmse.a {rmse:.3}"));
        }
    }
    bar.finish_and_clear();
    run.finish()
}

/// `genda truth`: the true trajectory and observations, as a CF NetCDF file and as an HDF5
/// training dataset (`trajectory`, (time, x)). Returns the two paths.
pub fn run_truth(cfg: &Config, nc_path: &Path, h5_path: &Path) -> Result<(PathBuf, PathBuf)> {
    if let Some(p) = &cfg.experiment.truth_file {
        return Err(GendaError::invalid(
            "experiment.truth_file",
            format!(
                "this config replays the truth in {}; genda truth simulates one: use a config without truth_file",
                p.display()
            ),
        ));
    }
    let model = cfg.model.build();
    let n = model.dim();
    if let Some(samples) = cfg.experiment.samples {
        write_samples(cfg, model.as_ref(), samples, h5_path)?;
        return Ok((PathBuf::new(), h5_path.to_path_buf()));
    }
    let h = cfg.observations.build(n);
    let cycles = cfg.experiment.cycles;
    let config_toml = cfg.to_toml();
    let meta = RunMeta {
        name: &cfg.experiment.name,
        model: model.name(),
        method: None,
        members: 0,
        state_dim: n,
        obs_locations: h.locations(),
        obs_operator: &format!("{:?}", cfg.observations.operator).to_lowercase(),
        cycles,
        cycle_dt: cfg.observations.obs_every as f64 * model.dt(),
        burn_in: cfg.experiment.burn_in,
        save_ensemble: false,
        config_toml: &config_toml,
        ranks: 1,
        grid_side: model.grid_side(),
        distributional_scores: false,
        weighted: false,
    };
    let comm = SerialComm;
    let slabs = RunSlabs::whole(&meta);
    let mut writer = RunWriter::create(nc_path, &meta, &OutputLayout::default(), slabs, &comm)?;
    let lobs = cfg.observations.build_local(n, 0, n);
    let mut truth = Truth::new(cfg, model.as_ref(), 0..n)?;
    if let Some(problem) = model.stability_problem(&truth.slab) {
        return Err(GendaError::invalid("model.dt", format!("truth: {problem}")));
    }
    truth.spin_up(model.as_ref(), &comm)?;
    let mut data = Vec::with_capacity(cycles * n);
    for k in 0..cycles {
        truth.advance(model.as_ref(), k + 1, &comm)?;
        let obs = truth.observe_whole(&lobs, cfg.experiment.seed, k + 1);
        let x = &truth.slab;
        if x.iter().any(|v| !v.is_finite()) {
            return Err(GendaError::Diverged {
                cycle: k + 1,
                what: "truth trajectory contains non-finite values (model unstable: reduce dt)"
                    .into(),
            });
        }
        data.extend_from_slice(x);
        writer.write_truth(k + 1, &data[k * n..(k + 1) * n], &obs)?;
    }
    let traj = Trajectory {
        data,
        times: cycles,
        state_dim: n,
        dt: cfg.observations.obs_every as f64 * model.dt(),
        model: model.name().to_string(),
    };
    write_trajectory(h5_path, &traj, &config_toml)?;
    let nc = writer.finish(&comm, None, &[], None)?;
    Ok((nc, h5_path.to_path_buf()))
}

/// `experiment.samples`: independent draws of the truth's initial distribution, each integrated
/// `spinup_steps` (all at once, one row per sample, model noise keyed per sample), written as
/// the rows of an HDF5 trajectory file.
fn write_samples(cfg: &Config, model: &dyn Model, samples: usize, h5_path: &Path) -> Result<()> {
    let n = model.dim();
    let seed = cfg.experiment.seed;
    let mut data = Vec::with_capacity(samples * n);
    for k in 0..samples {
        data.extend(
            cfg.initial
                .draw_truth_sample(&cfg.model, seed, k as u64 + 1)?,
        );
    }
    if let Some(problem) = model.stability_problem(&data[..n]) {
        return Err(GendaError::invalid(
            "model.dt",
            format!("samples: {problem}"),
        ));
    }
    let key = NoiseKey {
        seed,
        rows: (0..samples as u64).map(|k| TRUTH_STREAM - 1 - k).collect(),
        offset: 0,
    };
    let mut prop = Propagator::new(model, samples, n);
    prop.advance(
        model,
        &mut data,
        cfg.experiment.spinup_steps,
        &SerialComm,
        &key,
        0,
    )?;
    if let Some(k) = data
        .chunks(n)
        .position(|x| x.iter().any(|v| !v.is_finite()))
    {
        return Err(GendaError::Diverged {
            cycle: 0,
            what: format!("sample {k} contains non-finite values (model unstable: reduce dt)"),
        });
    }
    let traj = Trajectory {
        data,
        times: samples,
        state_dim: n,
        dt: 0.0,
        model: model.name().to_string(),
    };
    write_trajectory(h5_path, &traj, &cfg.to_toml())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A restart names its snapshot by another spelling of the same path: it is still known
    /// as this run's slot, so the next checkpoint updates the other one.
    #[test]
    fn restart_knows_its_snapshot_by_any_spelling() {
        let dir = tempfile::tempdir().unwrap();
        let ckpt = dir.path().join("r.ckpt.h5");
        for slot in 0..2 {
            let file = snapshot_path(&ckpt, slot);
            std::fs::write(&file, b"x").unwrap();
            std::fs::create_dir_all(dir.path().join("sub")).unwrap();
            let spelled = dir.path().join("sub/..").join(file.file_name().unwrap());
            assert_ne!(spelled, file, "the spelling must differ");
            let mut s = Snapshots::default();
            s.restart_from(spelled, &ckpt, 12);
            assert_eq!(s.live_slot, Some(slot));
            assert_eq!(s.valid[slot], Some(12));
            assert_eq!(s.next_slot(), 1 - slot);
        }
        // Another checkpoint's snapshot is none of this run's slots.
        let other = dir.path().join("other.ckpt.h5.run-a.nc");
        std::fs::write(&other, b"x").unwrap();
        let mut s = Snapshots::default();
        s.restart_from(other, &ckpt, 12);
        assert_eq!((s.live_slot, s.next_slot()), (None, 0));
    }
}
