//! Running a sweep: skip what the store already holds, deal the rest out over the MPI ranks,
//! run a rank's experiments on a rayon pool (one experiment per thread, each one a complete
//! `run_twin` on a one-process communicator), append each result as it finishes.
use super::store::{read_store, HiddenRow, Row, Shard};
use super::{Experiment, Sweep};
use crate::error::{GendaError, Result};
use crate::experiment::{run_twin, RunOptions};
use crate::parallel::{Collectives, SerialComm};
use rayon::prelude::*;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Instant;

/// What to do with stored results whose config hash differs from the sweep's today.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum)]
pub enum OnChange {
    /// Stop before running anything and say which experiments changed.
    #[default]
    Refuse,
    /// Run the changed experiments again (the new rows supersede the old ones).
    Rerun,
}

#[derive(Debug, Clone)]
pub struct SweepOptions {
    /// Concurrent experiments on this rank (threads of its pool).
    pub jobs: usize,
    pub on_change: OnChange,
    pub progress: bool,
    /// Set by SIGINT/SIGTERM: start no further experiment; the running ones finish and are saved.
    pub stop: Arc<AtomicBool>,
    /// Results directory (default: the sweep's).
    pub out_dir: Option<PathBuf>,
}

#[derive(Debug, Clone, Default)]
pub struct SweepOutcome {
    pub total: usize,
    /// Found in the store with the same config hash.
    pub skipped: usize,
    /// Run now (on all ranks).
    pub ran: usize,
    pub diverged: usize,
    /// This rank's experiments that failed for another reason (not stored: a rerun tries
    /// them again), with the error.
    pub failed: Vec<(String, String)>,
    /// Failed experiments on all ranks.
    pub failed_anywhere: usize,
    /// Stopped by a signal before every experiment ran.
    pub stopped: bool,
    pub out_dir: PathBuf,
}

/// Run one experiment and turn its summary (or its divergence) into a row.
fn run_one(sweep: &Sweep, e: &Experiment, out_dir: &std::path::Path) -> Result<Row> {
    let opts = RunOptions {
        write_output: sweep.save_runs,
        progress: false,
        restart: None,
        stop: None,
    };
    // libtorch's intra-op thread count is per OS thread (OpenMP): one on this worker, as for
    // a `genda run` (its networks set one thread where they are built).
    tch::set_num_threads(1);
    let mut cfg = e.config.clone();
    cfg.output.path = out_dir.join("runs").join(format!("{}.nc", e.file_stem));
    let t0 = Instant::now();
    let res = run_twin(&cfg, &SerialComm, &opts);
    let wall_s = t0.elapsed().as_secs_f64();
    let mut row = Row {
        key: e.key.clone(),
        sweep: sweep.name.clone(),
        method: sweep.methods[e.method].name.clone(),
        coords: sweep
            .dims
            .iter()
            .zip(&e.coords)
            .map(|(d, &c)| (d.name.clone(), d.coords[c].label.clone()))
            .collect(),
        seed: e.seed,
        config_hash: e.hash.clone(),
        diverged: false,
        diverged_because: None,
        rmse_forecast: None,
        rmse_analysis: None,
        spread_forecast: None,
        spread_analysis: None,
        crps_analysis: None,
        rmse_path: None,
        hidden: None,
        cycles_scored: 0,
        wall_s,
        finished_unix: std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_secs_f64())
            .unwrap_or(0.0),
        genda_version: env!("CARGO_PKG_VERSION").to_string(),
    };
    match res {
        Ok(s) => {
            let m = s.averages.mean();
            let finite = [
                m.rmse_forecast,
                m.rmse_analysis,
                m.spread_forecast,
                m.spread_analysis,
            ]
            .iter()
            .all(|v| v.is_finite());
            if finite {
                row.rmse_forecast = Some(m.rmse_forecast);
                row.rmse_analysis = Some(m.rmse_analysis);
                row.spread_forecast = Some(m.spread_forecast);
                row.spread_analysis = Some(m.spread_analysis);
                row.crps_analysis = s.distributional.as_ref().map(|d| d.crps_analysis);
                row.rmse_path = s.path_rmse.map(|p| p.0);
                row.hidden = s.hidden.as_ref().map(|h| HiddenRow {
                    rmse_forecast: h.rmse_forecast,
                    rmse_analysis: h.rmse_analysis,
                    spread_analysis: h.spread_analysis,
                    crps_analysis: h.crps_analysis,
                    skewness_error: h.skewness_error,
                    kurtosis_error: h.kurtosis_error,
                });
                row.cycles_scored = s.averages.count();
            } else {
                row.diverged = true;
                row.diverged_because = Some("non-finite time-mean scores".into());
            }
            Ok(row)
        }
        Err(GendaError::Diverged { cycle, what }) => {
            row.diverged = true;
            row.diverged_because = Some(format!("cycle {cycle}: {what}"));
            Ok(row)
        }
        Err(other) => Err(other),
    }
}

/// Run every experiment of `sweep` the store does not hold yet; returns what happened.
/// Every rank calls it; rank r runs the pending experiments i with i mod ranks = r.
pub fn run_sweep(
    sweep: &Sweep,
    comm: &dyn Collectives,
    opts: &SweepOptions,
) -> Result<SweepOutcome> {
    let out_dir = opts
        .out_dir
        .clone()
        .unwrap_or_else(|| sweep.out_dir.clone());
    let experiments = sweep.experiments()?;
    let stored = read_store(&out_dir)?;
    let mut changed = Vec::new();
    let mut pending = Vec::new();
    for e in &experiments {
        match stored.get(&e.key) {
            Some(r) if r.config_hash == e.hash => {}
            Some(r) => {
                changed.push((e.key.clone(), r.config_hash.clone(), e.hash.clone()));
                pending.push(e);
            }
            None => pending.push(e),
        }
    }
    if !changed.is_empty() && opts.on_change == OnChange::Refuse {
        let (k, old, new) = &changed[0];
        return Err(GendaError::invalid(
            "sweep",
            format!(
                "the results store {} holds {} experiment(s) run with a different config \
                 (first: {k}, stored config hash {old}, now {new}); rerun them with \
                 `--on-change rerun`, or give another --out-dir",
                out_dir.display(),
                changed.len()
            ),
        ));
    }
    let mut outcome = SweepOutcome {
        total: experiments.len(),
        skipped: experiments.len() - pending.len(),
        out_dir: out_dir.clone(),
        ..Default::default()
    };
    // Every rank has read the store before any rank appends to it.
    comm.barrier();
    let mine: Vec<&Experiment> = pending
        .iter()
        .enumerate()
        .filter(|(i, _)| i % comm.size() == comm.rank())
        .map(|(_, e)| *e)
        .collect();
    let shard = Shard::open(&out_dir, comm.rank())?;
    let bar = (opts.progress && comm.is_root()).then(|| {
        let b = indicatif::ProgressBar::new(mine.len() as u64);
        b.set_style(
            indicatif::ProgressStyle::with_template(
                "{msg} [{elapsed_precise}] {wide_bar} {pos}/{len} experiments (eta {eta})",
            )
            .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
        );
        b.set_message(if comm.size() > 1 {
            format!("sweep {} (rank 0's share)", sweep.name)
        } else {
            format!("sweep {}", sweep.name)
        });
        b
    });
    let diverged = AtomicUsize::new(0);
    let ran = AtomicUsize::new(0);
    let failed = Mutex::new(Vec::new());
    let io_error: Mutex<Option<GendaError>> = Mutex::new(None);
    let pool = rayon::ThreadPoolBuilder::new()
        .num_threads(opts.jobs.max(1))
        .build()
        .map_err(|e| GendaError::Parallel(format!("sweep thread pool: {e}")))?;
    pool.install(|| {
        // One experiment per task, taken in order (no pre-split of the list into halves).
        mine.par_iter().with_max_len(1).for_each(|e| {
            if opts.stop.load(Ordering::Relaxed) {
                return;
            }
            match run_one(sweep, e, &out_dir) {
                Ok(row) => {
                    if row.diverged {
                        diverged.fetch_add(1, Ordering::Relaxed);
                        log::warn!(
                            "{}: diverged ({})",
                            e.key,
                            row.diverged_because.as_deref().unwrap_or("")
                        );
                    }
                    if let Err(err) = shard.append(&row) {
                        *io_error.lock().unwrap_or_else(|p| p.into_inner()) = Some(err);
                        opts.stop.store(true, Ordering::Relaxed);
                    }
                    ran.fetch_add(1, Ordering::Relaxed);
                }
                Err(err) => {
                    log::error!("{}: {err}", e.key);
                    failed
                        .lock()
                        .unwrap_or_else(|p| p.into_inner())
                        .push((e.key.clone(), err.to_string()));
                }
            }
            if let Some(b) = &bar {
                b.inc(1);
            }
        });
    });
    if let Some(b) = bar {
        b.finish_and_clear();
    }
    let io_ok = io_error.lock().unwrap_or_else(|p| p.into_inner()).take();
    let stopped_here = opts.stop.load(Ordering::Relaxed);
    // Agree across ranks: counts are summed, a stop anywhere is a stop.
    outcome.failed = failed.into_inner().unwrap_or_else(|p| p.into_inner());
    let mut counts = [
        ran.load(Ordering::Relaxed) as f64,
        diverged.load(Ordering::Relaxed) as f64,
        outcome.failed.len() as f64,
    ];
    sum_over_ranks(comm, &mut counts);
    outcome.ran = counts[0] as usize;
    outcome.diverged = counts[1] as usize;
    outcome.failed_anywhere = counts[2] as usize;
    outcome.stopped = !comm.all_ok(!stopped_here);
    let io_fine = comm.all_ok(io_ok.is_none());
    if let Some(e) = io_ok {
        return Err(e);
    }
    if !io_fine {
        return Err(GendaError::Quiet);
    }
    Ok(outcome)
}

/// Sum small non-negative counters over the ranks (through the max-reduction: each rank
/// contributes its values in its own slots).
fn sum_over_ranks(comm: &dyn Collectives, v: &mut [f64]) {
    let (n, k) = (comm.size(), v.len());
    let mut slots = vec![0.0; k * n];
    slots[k * comm.rank()..k * (comm.rank() + 1)].copy_from_slice(v);
    comm.all_reduce_max_f64(&mut slots);
    for (j, x) in v.iter_mut().enumerate() {
        *x = slots.iter().skip(j).step_by(k).sum();
    }
}
