//! The cycle (as DAPPER's `assimilate`): for each cycle, forecast → observe → analyse →
//! metrics → output. The driver owns timing, metrics, output and the parallel bookkeeping; a
//! `Filter` implements only the analysis.
use crate::config::Config;
use crate::error::{GendaError, Result};
use crate::filters::{ensemble_mean, AnalysisInput};
use crate::io::{
    read_checkpoint, snapshot_path, write_checkpoint, write_trajectory, RunCheckpoint, RunMeta,
    RunWriter, Trajectory,
};
use crate::metrics::{rmse, spread, CycleStats, TimeAverage};
use crate::models::{Model, Rk4Workspace};
use crate::obs::ObsOperator;
use crate::parallel::{Collectives, MemberLayout};
use crate::rng::{fill_standard_normal, Purpose};
use indicatif::{ProgressBar, ProgressStyle};
use ndarray::{s, Array2};
use rayon::prelude::*;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Instant;

/// Variable-steps per forecast below which threads cost more than they save.
const PARALLEL_FORECAST_MIN_WORK: usize = 20_000;

/// The true trajectory and its synthetic observations, generated cycle by cycle.
pub struct TruthRun<'a> {
    model: &'a dyn Model,
    obs_operator: &'a dyn ObsOperator,
    obs_sd: Vec<f64>,
    obs_every: usize,
    seed: u64,
    state: Vec<f64>,
    ws: Rk4Workspace,
    cycle: usize,
}

impl<'a> TruthRun<'a> {
    /// Draw x₀ ~ N(mean, var) from the truth stream and spin it up.
    pub fn new(
        cfg: &Config,
        model: &'a dyn Model,
        obs_operator: &'a dyn ObsOperator,
    ) -> Result<Self> {
        let n = model.dim();
        let mean = cfg.initial.mean.expand(n, "initial.mean")?;
        let var = cfg.initial.var.expand(n, "initial.var")?;
        let mut state = vec![0.0; n];
        fill_standard_normal(cfg.experiment.seed, Purpose::TruthInit, 0, 0, 0, &mut state);
        for ((x, m), v) in state.iter_mut().zip(&mean).zip(&var) {
            *x = m + v.sqrt() * *x;
        }
        let mut ws = Rk4Workspace::new(n);
        for _ in 0..cfg.experiment.spinup_steps {
            model.step(&mut state, &mut ws);
        }
        let obs_sd = cfg
            .observations
            .error_variances(n)?
            .iter()
            .map(|v| v.sqrt())
            .collect();
        Ok(TruthRun {
            model,
            obs_operator,
            obs_sd,
            obs_every: cfg.observations.obs_every,
            seed: cfg.experiment.seed,
            state,
            ws,
            cycle: 0,
        })
    }

    /// Continue from a checkpointed true state after `cycle`.
    pub fn restore(&mut self, state: &[f64], cycle: usize) {
        self.state.copy_from_slice(state);
        self.cycle = cycle;
    }

    pub fn state(&self) -> &[f64] {
        &self.state
    }

    /// Advance to the next observation time; write y = h(x) + R^{1/2} z into `obs`.
    pub fn advance(&mut self, obs: &mut [f64]) -> &[f64] {
        self.cycle += 1;
        for _ in 0..self.obs_every {
            self.model.step(&mut self.state, &mut self.ws);
        }
        self.obs_operator.apply(&self.state, obs);
        let mut z = vec![0.0; obs.len()];
        fill_standard_normal(
            self.seed,
            Purpose::ObsNoise,
            self.cycle as u64,
            0,
            0,
            &mut z,
        );
        for ((y, z), sd) in obs.iter_mut().zip(&z).zip(&self.obs_sd) {
            *y += sd * z;
        }
        &self.state
    }
}

/// Wall-clock seconds spent in each phase of the cycle (on this rank).
#[derive(Debug, Clone, Copy, Default)]
pub struct PhaseTimes {
    pub truth: f64,
    pub forecast: f64,
    pub communication: f64,
    pub analysis: f64,
    pub output: f64,
}

impl PhaseTimes {
    pub fn table(&self, cycles: usize) -> String {
        let total = self.truth + self.forecast + self.communication + self.analysis + self.output;
        let mut s = format!(
            "{:<14} {:>10} {:>14} {:>7}\n",
            "phase", "total [s]", "per cycle [µs]", "share"
        );
        for (name, t) in [
            ("truth+obs", self.truth),
            ("forecast", self.forecast),
            ("communication", self.communication),
            ("analysis", self.analysis),
            ("output", self.output),
        ] {
            s += &format!(
                "{:<14} {:>10.3} {:>14.1} {:>6.1}%\n",
                name,
                t,
                1e6 * t / cycles.max(1) as f64,
                100.0 * t / total.max(1e-300)
            );
        }
        s
    }
}

/// What a finished run reports.
#[derive(Debug, Clone)]
pub struct RunSummary {
    pub averages: TimeAverage,
    pub times: PhaseTimes,
    pub output: Option<PathBuf>,
    pub ranks: usize,
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

fn check_finite(a: &Array2<f64>, cycle: usize, what: &'static str) -> Result<()> {
    if a.iter().all(|v| v.is_finite()) {
        Ok(())
    } else {
        Err(GendaError::Diverged {
            cycle,
            what: format!("{what} contains non-finite values (NaN/inf)"),
        })
    }
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

/// Initial members `range` (rows), member m ~ N(mean, var) from stream (EnsembleInit, m): a
/// rank draws only its own members, which are the same numbers on any layout.
pub fn initial_ensemble(cfg: &Config, range: std::ops::Range<usize>) -> Result<Array2<f64>> {
    let n = cfg.model.dim();
    let mean0 = cfg.initial.mean.expand(n, "initial.mean")?;
    let var0 = cfg.initial.var.expand(n, "initial.var")?;
    let mut ens = Array2::<f64>::zeros((range.len(), n));
    for (mut row, m) in ens.rows_mut().into_iter().zip(range) {
        let x = row.as_slice_mut().expect("fresh array is contiguous");
        fill_standard_normal(
            cfg.experiment.seed,
            Purpose::EnsembleInit,
            0,
            m as u64,
            0,
            x,
        );
        for ((xi, mu), v) in x.iter_mut().zip(&mean0).zip(&var0) {
            *xi = mu + v.sqrt() * *xi;
        }
    }
    Ok(ens)
}

/// Write checkpoint `path` after `cycle` (root rank): the run-file snapshot first, named by
/// cycle, then the checkpoint that points at it, then remove the previous snapshot — so a crash at
/// any moment leaves the previous checkpoint usable.
#[allow(clippy::too_many_arguments)]
fn save_checkpoint(
    path: &Path,
    cycle: usize,
    ens: &Array2<f64>,
    truth: &[f64],
    avg: &TimeAverage,
    inflation: f64,
    config_hash: &str,
    writer: Option<&mut RunWriter>,
    previous: &mut Option<PathBuf>,
) -> Result<()> {
    let snap = match writer {
        Some(w) => {
            let p = snapshot_path(path, cycle);
            w.snapshot(&p)?;
            Some(p)
        }
        None => None,
    };
    let series: Vec<f64> = avg
        .series
        .iter()
        .flat_map(|s| {
            [
                s.rmse_forecast,
                s.rmse_analysis,
                s.spread_forecast,
                s.spread_analysis,
            ]
        })
        .collect();
    let ens = ens.as_standard_layout();
    write_checkpoint(
        path,
        &RunCheckpoint {
            cycle,
            members: ens.nrows(),
            state_dim: ens.ncols(),
            ensemble: ens.as_slice().expect("standard layout").to_vec(),
            truth: truth.to_vec(),
            series,
            inflation,
            config_hash: config_hash.to_string(),
            genda_version: env!("CARGO_PKG_VERSION").to_string(),
            run_snapshot: snap
                .as_ref()
                .and_then(|p| p.file_name())
                .map(|n| n.to_string_lossy().into_owned()),
        },
    )?;
    if let Some(old) = previous.take() {
        if Some(&old) != snap.as_ref() {
            let _ = std::fs::remove_file(old);
        }
    }
    *previous = snap;
    log::info!("checkpoint after cycle {cycle}: {}", path.display());
    Ok(())
}

/// A twin experiment: truth, observations, ensemble forecasts and analyses for every cycle.
pub fn run_twin(cfg: &Config, comm: &dyn Collectives, opts: &RunOptions) -> Result<RunSummary> {
    let model = cfg.model.build();
    let n = model.dim();
    let h = cfg.observations.build(n);
    let r_var = cfg.observations.error_variances(n)?;
    let p = h.obs_dim();
    let members = cfg.filter.members();
    let layout = MemberLayout::new(members, comm.size())?;
    let mine = layout.local(comm.rank());
    let counts = layout.counts(n);
    let (seed, cycles, obs_every) = (
        cfg.experiment.seed,
        cfg.experiment.cycles,
        cfg.observations.obs_every,
    );
    let save_ensemble = cfg.output.save_ensemble;
    log::info!(
        "{}: {} (n = {n}), {} with {members} members on {} rank(s) ({} member(s) here), {} obs every {obs_every} steps, {cycles} cycles",
        cfg.experiment.name,
        model.name(),
        cfg.filter.name(),
        comm.size(),
        mine.len(),
        p
    );

    let mut local = initial_ensemble(cfg, mine.clone())?;

    let mut filter = cfg.filter.build();
    let mut truth = TruthRun::new(cfg, model.as_ref(), &h)?;
    let config_toml = cfg.to_toml();
    let config_hash = cfg.science_hash();
    let ckpt_path = cfg.checkpoint_path();

    // Restart: ensemble rows of this rank's members, truth, statistics, and the run file so far.
    let mut avg = TimeAverage::new(cfg.experiment.burn_in);
    let mut start = 1;
    let mut snapshot: Option<PathBuf> = None;
    if let Some(path) = &opts.restart {
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
        for (mut row, m) in local.rows_mut().into_iter().zip(mine.clone()) {
            row.as_slice_mut()
                .expect("contiguous")
                .copy_from_slice(&ck.ensemble[m * n..(m + 1) * n]);
        }
        truth.restore(&ck.truth, ck.cycle);
        for (k, v) in ck.series.chunks(4).enumerate() {
            avg.push(
                k + 1,
                CycleStats {
                    rmse_forecast: v[0],
                    rmse_analysis: v[1],
                    spread_forecast: v[2],
                    spread_analysis: v[3],
                },
            );
        }
        start = ck.cycle + 1;
        if opts.write_output {
            let name = ck.run_snapshot.clone().ok_or_else(|| GendaError::file(path, "checkpoint has no run-file snapshot (written with --no-output); restart with --no-output"))?;
            snapshot = Some(path.with_file_name(name));
        }
        log::info!(
            "restarting from {} after cycle {}",
            path.display(),
            ck.cycle
        );
    }

    let mut writer = if let (true, Some(snap)) = (opts.write_output, snapshot.clone()) {
        on_root(comm, || RunWriter::resume(&cfg.output.path, &snap))?
    } else if opts.write_output {
        on_root(comm, || {
            RunWriter::create(
                &cfg.output.path,
                &RunMeta {
                    name: &cfg.experiment.name,
                    model: model.name(),
                    method: Some(filter.name()),
                    members,
                    state_dim: n,
                    obs_locations: h.locations(),
                    obs_operator: &format!("{:?}", cfg.observations.operator).to_lowercase(),
                    cycles,
                    cycle_dt: obs_every as f64 * model.dt(),
                    burn_in: cfg.experiment.burn_in,
                    save_ensemble,
                    config_toml: &config_toml,
                    ranks: comm.size(),
                },
            )
        })?
    } else {
        None
    };

    let bar = if opts.progress && comm.is_root() {
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

    let mut times = PhaseTimes::default();
    let mut obs = vec![0.0; p];
    let mut ens = Array2::<f64>::zeros((members, n));
    bar.set_position(start as u64 - 1);
    let ck_every = cfg.checkpoint.every;
    for cycle in start..=cycles {
        let t = Instant::now();
        let x_true = truth.advance(&mut obs).to_vec();
        times.truth += t.elapsed().as_secs_f64();

        // Forecast this rank's members, threads over members when there is enough work to
        // amortise waking the thread pool (members are independent, so both paths give the
        // same numbers).
        let t = Instant::now();
        let m: &dyn Model = model.as_ref();
        let states = local.as_slice_mut().expect("local ensemble is contiguous");
        if states.len() * obs_every >= PARALLEL_FORECAST_MIN_WORK {
            states
                .par_chunks_mut(n)
                .for_each(|x| m.integrate(x, obs_every));
        } else {
            states.chunks_mut(n).for_each(|x| m.integrate(x, obs_every));
        }
        times.forecast += t.elapsed().as_secs_f64();

        let t = Instant::now();
        comm.all_gather_rows(
            local.as_slice().expect("contiguous"),
            &counts,
            ens.as_slice_mut().expect("contiguous"),
        )?;
        times.communication += t.elapsed().as_secs_f64();

        let t = Instant::now();
        check_finite(&ens, cycle, "forecast ensemble")?;
        let fmean = ensemble_mean(&ens);
        let fmean_s = fmean.as_slice().expect("contiguous");
        let spread_forecast = spread(&ens, fmean_s);
        let forecast_copy = if save_ensemble {
            Some(ens.clone())
        } else {
            None
        };
        let input = AnalysisInput {
            obs: &obs,
            obs_operator: &h,
            obs_error_var: &r_var,
            cycle,
            seed,
        };
        filter.analyse(&mut ens, &input).map_err(|e| match e {
            GendaError::LinAlg(msg) => GendaError::Diverged {
                cycle,
                what: format!("analysis failed ({msg})"),
            },
            other => other,
        })?;
        check_finite(&ens, cycle, "analysis ensemble")?;
        let amean = ensemble_mean(&ens);
        let amean_s = amean.as_slice().expect("contiguous");
        let stats = CycleStats {
            rmse_forecast: rmse(fmean_s, &x_true),
            rmse_analysis: rmse(amean_s, &x_true),
            spread_forecast,
            spread_analysis: spread(&ens, amean_s),
        };
        times.analysis += t.elapsed().as_secs_f64();
        avg.push(cycle, stats);

        let t = Instant::now();
        if let Some(w) = writer.as_mut() {
            let empty = Array2::zeros((0, 0));
            let f = forecast_copy.as_ref().unwrap_or(&empty);
            let res = w
                .write_truth(cycle - 1, &x_true, &obs)
                .and_then(|_| w.write_filter(cycle - 1, fmean_s, amean_s, &stats, f, &ens));
            on_root(comm, || res)?;
        } else if opts.write_output {
            on_root(comm, || Ok(()))?;
        }
        times.output += t.elapsed().as_secs_f64();

        local.assign(&ens.slice(s![mine.clone(), ..]));

        // Checkpoint every `every` cycles, and when any rank got SIGTERM/SIGUSR1 (Slurm's notice
        // before the wall time): then write one and stop.
        let signalled = opts
            .stop
            .as_ref()
            .map(|f| f.load(Ordering::Relaxed))
            .unwrap_or(false);
        let stop = opts.stop.is_some() && !comm.all_ok(!signalled);
        if stop || (ck_every > 0 && cycle % ck_every == 0 && cycle < cycles) {
            let t = Instant::now();
            on_root(comm, || {
                save_checkpoint(
                    &ckpt_path,
                    cycle,
                    &ens,
                    truth.state(),
                    &avg,
                    cfg.filter.inflation(),
                    &config_hash,
                    writer.as_mut(),
                    &mut snapshot,
                )
            })?;
            times.output += t.elapsed().as_secs_f64();
            if stop {
                bar.abandon();
                return Err(GendaError::Stopped {
                    cycle,
                    checkpoint: ckpt_path,
                });
            }
        }
        bar.inc(1);
        if cycle % 100 == 0 {
            bar.set_message(format!("rmse.a {:.3}", avg.mean().rmse_analysis));
        }
    }
    bar.finish_and_clear();

    let t = Instant::now();
    let output = if let Some(w) = writer.take() {
        on_root(comm, || w.finish(Some(&avg)))?
    } else if opts.write_output {
        on_root(comm, || Ok(PathBuf::new()))?;
        None
    } else {
        None
    };
    times.output += t.elapsed().as_secs_f64();
    Ok(RunSummary {
        averages: avg,
        times,
        output,
        ranks: comm.size(),
    })
}

/// `genda truth`: the true trajectory and observations, as a CF NetCDF file and as an HDF5
/// training dataset (`trajectory`, (time, x)). Returns the two paths.
pub fn run_truth(cfg: &Config, nc_path: &Path, h5_path: &Path) -> Result<(PathBuf, PathBuf)> {
    let model = cfg.model.build();
    let n = model.dim();
    let h = cfg.observations.build(n);
    let cycles = cfg.experiment.cycles;
    let config_toml = cfg.to_toml();
    let mut writer = RunWriter::create(
        nc_path,
        &RunMeta {
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
        },
    )?;
    let mut truth = TruthRun::new(cfg, model.as_ref(), &h)?;
    let mut obs = vec![0.0; h.obs_dim()];
    let mut data = Vec::with_capacity(cycles * n);
    for k in 0..cycles {
        let x = truth.advance(&mut obs);
        if x.iter().any(|v| !v.is_finite()) {
            return Err(GendaError::Diverged {
                cycle: k + 1,
                what: "truth trajectory contains non-finite values (model unstable: reduce dt)"
                    .into(),
            });
        }
        data.extend_from_slice(x);
        writer.write_truth(k, &data[k * n..(k + 1) * n], &obs)?;
    }
    let traj = Trajectory {
        data,
        times: cycles,
        state_dim: n,
        dt: cfg.observations.obs_every as f64 * model.dt(),
        model: model.name().to_string(),
    };
    write_trajectory(h5_path, &traj, &config_toml)?;
    let nc = writer.finish(None)?;
    Ok((nc, h5_path.to_path_buf()))
}
