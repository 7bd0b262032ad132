//! `genda couple`: assimilation for an external model through NetCDF files (docs/coupling.md).
//!
//! For cycle k the model writes `cycle_<k>/forecast.nc` (variable `forecast`, dims member × x),
//! the observations are in `cycle_<k>/obs.nc` (`observations`, dim obs), and the model signals
//! completion with `cycle_<k>/forecast.ready` (text: k). genda waits for the marker (with a
//! timeout), checks both files, runs the configured filter and writes `cycle_<k>/analysis.nc`
//! (`analysis`, member × x) atomically, then `cycle_<k>/analysis.ready`. genda never modifies the
//! model's files; a bad input file stops the run before anything of that cycle is written.
//! Under `mpirun` the ranks split the members: each reads and writes only its members' rows.
use crate::config::Config;
use crate::error::{GendaError, Result};
use crate::experiment::initial_ensemble;
use crate::filters::{ensemble_mean, AnalysisInput};
use crate::io::coupling::{
    read_ensemble_rows, read_marker, read_observations, write_ensemble_rows, write_marker,
};
use crate::metrics::spread;
use crate::obs::ObsOperator;
use crate::parallel::{Collectives, Layout};
use ndarray::{s, Array2};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// Directory of cycle `k`.
pub fn cycle_dir(dir: &Path, k: usize) -> PathBuf {
    dir.join(format!("cycle_{k:06}"))
}

fn wait_for(marker: &Path, timeout: Duration, poll: Duration) -> Result<()> {
    let t = Instant::now();
    while !marker.exists() {
        if t.elapsed() > timeout {
            return Err(GendaError::file(
                marker,
                format!(
                    "timed out after {:.0} s waiting for the model's completion marker",
                    timeout.as_secs_f64()
                ),
            ));
        }
        std::thread::sleep(poll);
    }
    Ok(())
}

fn rms_innovation(h: &dyn ObsOperator, mean: &[f64], obs: &[f64]) -> f64 {
    let mut y = vec![0.0; obs.len()];
    h.apply(mean, &mut y);
    (y.iter().zip(obs).map(|(a, b)| (a - b).powi(2)).sum::<f64>() / obs.len() as f64).sqrt()
}

/// Every rank agrees on `res` (the first failing rank's error is everyone's).
fn agree<T>(comm: &dyn Collectives, res: Result<T>) -> Result<T> {
    if comm.all_ok(res.is_ok()) {
        return res;
    }
    Err(res.err().unwrap_or_else(|| {
        GendaError::Parallel("genda couple failed on another rank; see its error".into())
    }))
}

/// Run the coupling loop for `[experiment].cycles` cycles on the ranks of `comm`, which split
/// the members (`mpirun -np R genda couple`: rank r reads only its members' rows of each
/// `forecast.nc`, the members are gathered for the analysis, which every rank computes alike,
/// and each rank writes its members' rows of `analysis.nc` collectively). With `write_initial`,
/// first write `cycle_000000/analysis.nc` (+ marker) with genda's initial ensemble for the
/// model to start from.
pub fn run_coupled(cfg: &Config, write_initial: bool, comm: &dyn Collectives) -> Result<usize> {
    let cc = cfg.coupling.as_ref().ok_or_else(|| {
        GendaError::invalid(
            "coupling",
            "genda couple needs a [coupling] table with `dir`",
        )
    })?;
    if cfg.parallel.domains > 1 {
        return Err(GendaError::invalid(
            "parallel.domains",
            "genda couple splits the members over the ranks, not the state: set domains = 1",
        ));
    }
    let n = cfg.model.dim();
    let h = cfg.observations.build(n);
    let r_var = cfg.observations.error_variances(n)?;
    let members = cfg.filter.members();
    let layout = Layout::new(comm.size(), comm.rank(), 1, members)?;
    let mine = layout.my_members();
    let counts = layout.members.counts(n);
    let root = comm.is_root();
    let mut filter = cfg.filter.build();
    // Weights and training data are opened and checked before the model is waited for.
    filter.prepare(n, &crate::experiment::DataFromFiles)?;
    let timeout = Duration::from_secs_f64(cc.timeout_s.max(0.0));
    let poll = Duration::from_millis(cc.poll_ms.max(1));
    let made = if root {
        std::fs::create_dir_all(&cc.dir).map_err(|e| {
            GendaError::file(&cc.dir, format!("cannot create coupling directory: {e}"))
        })
    } else {
        Ok(())
    };
    agree(comm, made)?;
    if write_initial {
        let d0 = cycle_dir(&cc.dir, 0);
        let ens = agree(comm, initial_ensemble(cfg, mine.clone(), 0..n))?;
        write_ensemble_rows(
            &d0.join("analysis.nc"),
            "analysis",
            ens.view(),
            mine.clone(),
            members,
            0,
            "initial ensemble",
            comm,
        )?;
        agree(
            comm,
            if root {
                write_marker(&d0.join("analysis.ready"), 0)
            } else {
                Ok(())
            },
        )?;
        if root {
            log::info!("wrote initial ensemble to {}", d0.display());
        }
    }
    if root {
        log::info!(
            "coupling through {}: {} with {members} members on {} rank(s), state {n}, {} obs, {} cycles",
            cc.dir.display(),
            filter.name(),
            comm.size(),
            h.obs_dim(),
            cfg.experiment.cycles
        );
    }
    let mut ens = Array2::<f64>::zeros((members, n));
    for cycle in 1..=cfg.experiment.cycles {
        let d = cycle_dir(&cc.dir, cycle);
        let done = d.join("analysis.ready");
        // The root waits for the model's marker; the others wait for the root.
        let ready = d.join("forecast.ready");
        let waited = if root {
            wait_for_cycle(&done, &ready, cycle, timeout, poll)
        } else {
            Ok(())
        };
        agree(comm, waited)?;
        let local = agree(
            comm,
            read_ensemble_rows(&d.join("forecast.nc"), "forecast", members, n, mine.clone()),
        )?;
        let obs = agree(comm, read_observations(&d.join("obs.nc"), h.obs_dim()))?;
        comm.all_gather_rows(
            local.as_slice().expect("contiguous"),
            &counts,
            ens.as_slice_mut().expect("contiguous"),
        )?;
        let fmean = ensemble_mean(&ens);
        let f_innov = rms_innovation(&h, fmean.as_slice().expect("contiguous"), &obs);
        let input = AnalysisInput::whole(&obs, &h, &r_var, cycle, cfg.experiment.seed);
        agree(comm, filter.analyse(&mut ens, &input))?;
        let outputs = filter.take_outputs();
        agree(
            comm,
            if root {
                crate::filters::write_outputs(outputs)
            } else {
                Ok(())
            },
        )?;
        if ens.iter().any(|v| !v.is_finite()) {
            return Err(GendaError::Diverged {
                cycle,
                what: "analysis ensemble contains non-finite values (NaN/inf)".into(),
            });
        }
        let amean = ensemble_mean(&ens);
        let am = amean.as_slice().expect("contiguous");
        write_ensemble_rows(
            &d.join("analysis.nc"),
            "analysis",
            ens.slice(s![mine.clone(), ..]),
            mine.clone(),
            members,
            cycle,
            "analysis ensemble",
            comm,
        )?;
        agree(
            comm,
            if root {
                write_marker(&done, cycle)
            } else {
                Ok(())
            },
        )?;
        if root {
            log::info!(
                "cycle {cycle}: rms innovation forecast {f_innov:.4} analysis {:.4}, analysis spread {:.4}",
                rms_innovation(&h, am, &obs),
                spread(&ens, am)
            );
        }
    }
    Ok(cfg.experiment.cycles)
}

/// Cycle `cycle`'s start: no analysis marker yet (`done`), then the model's marker `ready`
/// announcing this cycle.
fn wait_for_cycle(
    done: &Path,
    ready: &Path,
    cycle: usize,
    timeout: Duration,
    poll: Duration,
) -> Result<()> {
    if done.exists() {
        return Err(GendaError::file(done, format!("stale marker: the analysis of cycle {cycle} exists already (reused coupling directory?)")));
    }
    wait_for(ready, timeout, poll)?;
    let k = read_marker(ready)?;
    if k != cycle {
        return Err(GendaError::file(
            ready,
            format!("stale marker: announces cycle {k}, expected {cycle}"),
        ));
    }
    Ok(())
}
