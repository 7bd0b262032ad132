//! `genda couple`: assimilation for an external model through NetCDF files (docs/coupling.md).
//!
//! For cycle k the model writes `cycle_<k>/forecast.nc` (variable `forecast`, dims member × x),
//! the observations are in `cycle_<k>/obs.nc` (`observations`, dim obs), and the model signals
//! completion with `cycle_<k>/forecast.ready` (text: k). genda waits for the marker (with a
//! timeout), checks both files, runs the configured filter and writes `cycle_<k>/analysis.nc`
//! (`analysis`, member × x) atomically, then `cycle_<k>/analysis.ready`. genda never modifies the
//! model's files; a bad input file stops the run before anything of that cycle is written.
//! Under `mpirun` the ranks split the members and (`parallel.domains`) the state as `genda run`
//! does: each reads and writes only its block (its members on its domain's columns).
use crate::config::Config;
use crate::error::{GendaError, Result};
use crate::experiment::{
    check_layout, gather_members, initial_ensemble, with_halo, AnalysisColumns,
};
use crate::filters::{ensemble_mean, AnalysisInput};
use crate::io::coupling::{
    read_ensemble_block, read_marker, read_observations_at, write_ensemble_block, write_marker,
};
use crate::obs::ObsOperator;
use crate::parallel::{Collectives, TileReducer, Topology};
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

/// Every rank agrees on `res` (the first failing rank's error is everyone's).
fn agree<T>(comm: &dyn Collectives, res: Result<T>) -> Result<T> {
    if comm.all_ok(res.is_ok()) {
        return res;
    }
    Err(res.err().unwrap_or_else(|| {
        GendaError::Parallel("genda couple failed on another rank; see its error".into())
    }))
}

/// The cycle's diagnostics over the whole state: the rms innovation of the ensemble mean on the
/// owned observations, and the ensemble spread on the owned columns, summed over the domains
/// (in domain order, the same on every rank).
fn diagnostics(
    dcomm: &dyn Collectives,
    cols: &AnalysisColumns,
    ens: &Array2<f64>,
    obs: &[f64],
) -> Result<(f64, f64)> {
    let (w, len) = (cols.w, cols.own.len());
    let mean = ensemble_mean(ens);
    // The observed values of the mean need the analysed columns (halo included for a local
    // operator); the halo's observations are not counted here.
    let mut ext = vec![0.0; len + 2 * w];
    ext[w..w + len].copy_from_slice(mean.as_slice().expect("contiguous"));
    let mut y = vec![0.0; obs.len()];
    cols.lobs.op.apply(&ext, &mut y);
    let r = cols.own_obs.clone();
    let innov: f64 = y[r.clone()]
        .iter()
        .zip(&obs[r.clone()])
        .map(|(a, b)| (a - b).powi(2))
        .sum();
    let m = ens.nrows();
    let var: f64 = ens
        .rows()
        .into_iter()
        .map(|row| {
            row.iter()
                .zip(mean.iter())
                .map(|(x, c)| (x - c).powi(2))
                .sum::<f64>()
        })
        .sum();
    let mine = [innov, r.len() as f64, var, len as f64];
    let mut all = vec![0.0; 4 * dcomm.size()];
    dcomm.all_gather_rows(&mine, &vec![4; dcomm.size()], &mut all)?;
    let mut tot = [0.0; 4];
    for part in all.chunks(4) {
        tot.iter_mut().zip(part).for_each(|(t, p)| *t += p);
    }
    Ok((
        (tot[0] / tot[1].max(1.0)).sqrt(),
        (tot[2] / ((m.max(2) - 1) as f64 * tot[3].max(1.0))).sqrt(),
    ))
}

/// Run the coupling loop for `[experiment].cycles` cycles on the ranks of `comm`, laid out as a
/// run is (`parallel.domains`: member groups × state domains). Each rank reads only its block
/// of each `forecast.nc` (its members on its domain's columns; one collective read when the file
/// is NetCDF-4) and the observations of the columns it analyses; the members of a domain are
/// gathered for the analysis, which the domain's ranks compute alike (with a halo of
/// neighbouring columns for a localised method, as `genda run` does); and each rank writes its
/// block of `analysis.nc` collectively. With `write_initial`, first write
/// `cycle_000000/analysis.nc` (+ marker) with genda's initial ensemble for the model to start
/// from.
pub fn run_coupled(cfg: &Config, write_initial: bool, comm: &dyn Collectives) -> Result<usize> {
    let cc = cfg.coupling.as_ref().ok_or_else(|| {
        GendaError::invalid(
            "coupling",
            "genda couple needs a [coupling] table with `dir`",
        )
    })?;
    let (dec, _) = check_layout(cfg, comm.size())?;
    let n = dec.n;
    let members = cfg.filter.members();
    let topo = Topology::new(comm, dec.domains, members)?;
    let lay = &topo.layout;
    let (dcomm, ecomm) = (topo.domain.as_ref(), topo.ensemble.as_ref());
    let mine = lay.my_members();
    let mut filter = cfg.filter.build();
    // Weights and training data are opened and checked before the model is waited for.
    filter.prepare(n, &crate::experiment::DataFromFiles::on(ecomm))?;
    let needs = filter.needs(n);
    if needs.forecast_path {
        return Err(GendaError::invalid(
            "filter.method",
            format!(
                "{} needs each member's forecast path, which a coupled model does not hand over",
                filter.name()
            ),
        ));
    }
    let cols = AnalysisColumns::new(cfg, &dec, lay.domain, needs.halo);
    let own = cols.own.clone();
    let reducer = TileReducer::new(dcomm, &dec);
    let counts = lay.members.counts(own.len());
    let root = comm.is_root();
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
    let block = (mine.clone(), own.clone());
    if write_initial {
        let d0 = cycle_dir(&cc.dir, 0);
        let ens = agree(comm, initial_ensemble(cfg, mine.clone(), own.clone()))?;
        write_ensemble_block(
            &d0.join("analysis.nc"),
            "analysis",
            ens.view(),
            block.clone(),
            (members, n),
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
            "coupling through {}: {} with {members} members on {} rank(s) = {} member group(s) × {} domain(s), state {n}, {} obs, {} cycles",
            cc.dir.display(),
            filter.name(),
            comm.size(),
            lay.groups,
            lay.domains,
            cfg.observations.locations(n).len(),
            cfg.experiment.cycles
        );
    }
    let mut ens = Array2::<f64>::zeros((members, own.len()));
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
            read_ensemble_block(
                &d.join("forecast.nc"),
                "forecast",
                (members, n),
                mine.clone(),
                own.clone(),
                comm,
            ),
        )?;
        let obs = agree(
            comm,
            read_observations_at(
                &d.join("obs.nc"),
                cfg.observations.locations(n).len(),
                &cols.lobs.global,
                comm,
            ),
        )?;
        gather_members(ecomm, &counts, &local, &mut ens)?;
        let (f_innov, _) = diagnostics(dcomm, &cols, &ens, &obs)?;
        let input = AnalysisInput {
            obs: &obs,
            obs_operator: &cols.lobs.op,
            obs_error_var: &cols.lobs.error_var,
            cycle,
            seed: cfg.experiment.seed,
            obs_offset: cols.obs_offset,
            domain: cols.domain.clone(),
            reducer: &reducer,
            forecast: None,
            replicas: ecomm,
        };
        let res = if cols.w > 0 {
            with_halo(&ens, cols.w, dcomm).and_then(|mut e| {
                filter.analyse(&mut e, &input)?;
                ens.assign(&e.slice(s![.., cols.w..cols.w + own.len()]));
                Ok(())
            })
        } else {
            filter.analyse(&mut ens, &input)
        };
        agree(comm, res)?;
        let outputs = filter.take_outputs();
        agree(
            comm,
            if root {
                crate::filters::write_outputs(outputs)
            } else {
                Ok(())
            },
        )?;
        if !comm.all_ok(ens.iter().all(|v| v.is_finite())) {
            return Err(GendaError::Diverged {
                cycle,
                what: "analysis ensemble contains non-finite values (NaN/inf)".into(),
            });
        }
        let (a_innov, a_spread) = diagnostics(dcomm, &cols, &ens, &obs)?;
        write_ensemble_block(
            &d.join("analysis.nc"),
            "analysis",
            ens.slice(s![mine.clone(), ..]),
            block.clone(),
            (members, n),
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
                "cycle {cycle}: rms innovation forecast {f_innov:.4} analysis {a_innov:.4}, analysis spread {a_spread:.4}"
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
