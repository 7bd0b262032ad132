//! `genda couple`: assimilation for an external model through NetCDF files (docs/coupling.md).
//!
//! For cycle k the model writes `cycle_<k>/forecast.nc` (variable `forecast`, dims member × x),
//! the observations are in `cycle_<k>/obs.nc` (`observations`, dim obs), and the model signals
//! completion with `cycle_<k>/forecast.ready` (text: k). genda waits for the marker (with a
//! timeout), checks both files, runs the configured filter and writes `cycle_<k>/analysis.nc`
//! (`analysis`, member × x) atomically, then `cycle_<k>/analysis.ready`. genda never modifies the
//! model's files; a bad input file stops the run before anything of that cycle is written.
use crate::config::Config;
use crate::error::{GendaError, Result};
use crate::experiment::initial_ensemble;
use crate::filters::{ensemble_mean, AnalysisInput};
use crate::io::coupling::{
    read_ensemble, read_marker, read_observations, write_ensemble, write_marker,
};
use crate::metrics::spread;
use crate::obs::ObsOperator;
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

/// Run the coupling loop for `[experiment].cycles` cycles. With `write_initial`, first write
/// `cycle_000000/analysis.nc` (+ marker) with genda's initial ensemble for the model to start from.
pub fn run_coupled(cfg: &Config, write_initial: bool) -> Result<usize> {
    let cc = cfg.coupling.as_ref().ok_or_else(|| {
        GendaError::invalid(
            "coupling",
            "genda couple needs a [coupling] table with `dir`",
        )
    })?;
    let n = cfg.model.dim();
    let h = cfg.observations.build(n);
    let r_var = cfg.observations.error_variances(n)?;
    let members = cfg.filter.members();
    let mut filter = cfg.filter.build();
    // Weights and training data are opened and checked before the model is waited for.
    filter.prepare(n, &crate::experiment::DataFromFiles)?;
    let timeout = Duration::from_secs_f64(cc.timeout_s.max(0.0));
    let poll = Duration::from_millis(cc.poll_ms.max(1));
    std::fs::create_dir_all(&cc.dir)
        .map_err(|e| GendaError::file(&cc.dir, format!("cannot create coupling directory: {e}")))?;
    if write_initial {
        let d0 = cycle_dir(&cc.dir, 0);
        let ens = initial_ensemble(cfg, 0..members, 0..cfg.model.dim())?;
        write_ensemble(
            &d0.join("analysis.nc"),
            "analysis",
            &ens,
            0,
            "initial ensemble",
        )?;
        write_marker(&d0.join("analysis.ready"), 0)?;
        log::info!("wrote initial ensemble to {}", d0.display());
    }
    log::info!(
        "coupling through {}: {} with {members} members, state {n}, {} obs, {} cycles",
        cc.dir.display(),
        filter.name(),
        h.obs_dim(),
        cfg.experiment.cycles
    );
    for cycle in 1..=cfg.experiment.cycles {
        let d = cycle_dir(&cc.dir, cycle);
        let done = d.join("analysis.ready");
        if done.exists() {
            return Err(GendaError::file(&done, format!("stale marker: the analysis of cycle {cycle} exists already (reused coupling directory?)")));
        }
        let ready = d.join("forecast.ready");
        wait_for(&ready, timeout, poll)?;
        let k = read_marker(&ready)?;
        if k != cycle {
            return Err(GendaError::file(
                &ready,
                format!("stale marker: announces cycle {k}, expected {cycle}"),
            ));
        }
        let mut ens = read_ensemble(&d.join("forecast.nc"), "forecast", members, n)?;
        let obs = read_observations(&d.join("obs.nc"), h.obs_dim())?;
        let fmean = ensemble_mean(&ens);
        let f_innov = rms_innovation(&h, fmean.as_slice().expect("contiguous"), &obs);
        let input = AnalysisInput::whole(&obs, &h, &r_var, cycle, cfg.experiment.seed);
        filter.analyse(&mut ens, &input)?;
        crate::filters::write_outputs(filter.take_outputs())?;
        if ens.iter().any(|v| !v.is_finite()) {
            return Err(GendaError::Diverged {
                cycle,
                what: "analysis ensemble contains non-finite values (NaN/inf)".into(),
            });
        }
        let amean = ensemble_mean(&ens);
        let am = amean.as_slice().expect("contiguous");
        write_ensemble(
            &d.join("analysis.nc"),
            "analysis",
            &ens,
            cycle,
            "analysis ensemble",
        )?;
        write_marker(&done, cycle)?;
        log::info!(
            "cycle {cycle}: rms innovation forecast {f_innov:.4} analysis {:.4}, analysis spread {:.4}",
            rms_innovation(&h, am, &obs),
            spread(&ens, am)
        );
    }
    Ok(cfg.experiment.cycles)
}
