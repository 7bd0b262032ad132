//! `genda cg`: a twin experiment of the closed-form conditional-Gaussian posterior. The truth
//! of a conditionally Gaussian model (SPEKF, CG Lorenz-96) is simulated; its observed part u is
//! seen at every model step; the CG filter and smoother give the Gaussian posterior of the hidden
//! part v, scored against the hidden truth by RMSE, spread and CRPS (of 32 posterior samples per
//! step, like an ensemble), time means over the cycle times after the burn-in as in `genda run`.
//! The truth is `experiment::Truth`, the one `genda run` simulates for the same config, so the
//! hidden-variable scores of a `genda run` filter compare directly. This is the analytic
//! baseline that Ω builds on.
use crate::config::Config;
use crate::error::{GendaError, Result};
use crate::experiment::Truth;
use crate::filters::cg::{cg_filter_smoother, cg_structure, CgPosterior, CgResult};
use crate::io::{create_cf, nc_error, PendingFile};
use crate::metrics::{crps, skewness_kurtosis};
use crate::parallel::SerialComm;
use crate::rng::{fill_standard_normal, Purpose};
use nalgebra::{DMatrix, DVector};
use std::path::{Path, PathBuf};

/// Samples per step for the CRPS of a Gaussian posterior.
const CRPS_SAMPLES: usize = 32;

#[derive(Debug, Clone)]
pub struct CgScores {
    pub rmse: f64,
    pub spread: f64,
    pub crps: f64,
}

#[derive(Debug, Clone)]
pub struct CgReport {
    pub model: String,
    pub steps: usize,
    pub scored_steps: usize,
    pub hidden_dim: usize,
    pub filter: CgScores,
    pub smoother: CgScores,
    /// Time mean of the per-step RMSE of the hidden truth about its time mean (what knowing
    /// only the climate gives).
    pub climatology_rmse: f64,
    /// Kurtosis of the observed variables over the run (intermittency).
    pub observed_kurtosis: f64,
}

/// Run the CG twin of `cfg`: `cycles × obs_every` model steps after `spinup_steps`, scores after
/// `burn_in × obs_every` steps. The prior of v at the start is [initial] mean/var.
pub fn run_cg_twin(cfg: &Config, output: Option<&Path>) -> Result<CgReport> {
    let model = cfg.model.build();
    let cg = cg_structure(model.as_ref())?;
    let n = model.dim();
    let nu = cg.observed_dim();
    let nv = n - nu;
    let every = cfg.observations.obs_every.max(1);
    let steps = cfg.experiment.cycles * every;
    let burn = cfg.experiment.burn_in * every;
    if burn >= steps {
        return Err(GendaError::invalid(
            "experiment.burn_in",
            format!("burn-in of {burn} steps leaves none of the {steps} to score"),
        ));
    }
    let seed = cfg.experiment.seed;
    if cfg.experiment.truth_file.is_some() {
        return Err(GendaError::invalid(
            "experiment.truth_file",
            "genda cg needs the observed part at every model step; a replayed truth holds only the observation times",
        ));
    }
    // The truth of `genda run` (one source for every command), recorded at every step.
    let comm = SerialComm;
    let mut truth = Truth::new(cfg, model.as_ref(), 0..n)?;
    truth.spin_up(model.as_ref(), &comm)?;
    let spin = cfg.experiment.spinup_steps as u64;
    let mut u = vec![truth.slab[..nu].to_vec()];
    let mut v = vec![truth.slab[nu..].to_vec()];
    for s in 0..steps as u64 {
        truth.advance_steps(model.as_ref(), spin + s, 1, &comm)?;
        let x = &truth.slab;
        if !x.iter().all(|a| a.is_finite()) {
            return Err(GendaError::Diverged {
                cycle: s as usize / every + 1,
                what: format!("{} truth is not finite (reduce model.dt)", model.name()),
            });
        }
        u.push(x[..nu].to_vec());
        v.push(x[nu..].to_vec());
    }
    let (im, iv) = (
        cfg.initial.mean.expand(n, "initial.mean")?,
        cfg.initial.var.expand(n, "initial.var")?,
    );
    let m0 = DVector::from_column_slice(&im[nu..]);
    let p0 = DMatrix::from_diagonal(&DVector::from_column_slice(&iv[nu..]));
    let res = cg_filter_smoother(model.as_ref(), &u, &m0, &p0)?;
    let score = |post: &CgPosterior| -> Result<CgScores> {
        // Time means of the per-step RMSE, spread and CRPS over the hidden variables (the
        // convention of `genda run` and DAPPER).
        let (mut rmse, mut spread, mut cr) = (0.0, 0.0, 0.0);
        let mut zs = vec![0.0; nv * CRPS_SAMPLES];
        let mut col = vec![0.0; CRPS_SAMPLES];
        for t in (burn + every..=steps).step_by(every) {
            let (m, p) = (&post.mean[t], &post.cov[t]);
            let l = p.clone().cholesky().ok_or_else(|| {
                GendaError::LinAlg(format!(
                    "CG posterior covariance at step {t} is not positive definite"
                ))
            })?;
            let l = l.l();
            fill_standard_normal(seed, Purpose::Sampling, t as u64, 0, 0, &mut zs);
            let zm = DMatrix::from_column_slice(nv, CRPS_SAMPLES, &zs);
            let samples = &l * zm;
            let (mut se, mut var, mut c) = (0.0, 0.0, 0.0);
            for i in 0..nv {
                let e = m[i] - v[t][i];
                se += e * e;
                var += p[(i, i)];
                for k in 0..CRPS_SAMPLES {
                    col[k] = m[i] + samples[(i, k)];
                }
                c += crps(&col, v[t][i]);
            }
            rmse += (se / nv as f64).sqrt();
            spread += (var / nv as f64).sqrt();
            cr += c / nv as f64;
        }
        let k = ((steps - burn) / every) as f64;
        Ok(CgScores {
            rmse: rmse / k,
            spread: spread / k,
            crps: cr / k,
        })
    };
    let (filter, smoother) = (score(&res.filter)?, score(&res.smoother)?);
    if let Some(path) = output {
        write_cg(path, cfg, model.dt(), &u, &v, &res)?;
    }
    let scored: Vec<&Vec<f64>> = v[burn + every..].iter().step_by(every).collect();
    let clim_mean: Vec<f64> = (0..nv)
        .map(|i| scored.iter().map(|r| r[i]).sum::<f64>() / scored.len() as f64)
        .collect();
    let clim = scored
        .iter()
        .map(|r| {
            (r.iter()
                .zip(&clim_mean)
                .map(|(a, b)| (a - b).powi(2))
                .sum::<f64>()
                / nv as f64)
                .sqrt()
        })
        .sum::<f64>();
    let obs: Vec<f64> = u[burn + 1..].iter().flatten().copied().collect();
    Ok(CgReport {
        model: model.name().to_string(),
        steps,
        scored_steps: (steps - burn) / every,
        hidden_dim: nv,
        filter,
        smoother,
        climatology_rmse: clim / scored.len() as f64,
        observed_kurtosis: skewness_kurtosis(&obs).1,
    })
}

/// The truth at every step (time from the end of the spin-up) and the filter's and smoother's
/// posterior means and variances of v, as CF NetCDF (under a temporary name, then renamed).
fn write_cg(
    path: &Path,
    cfg: &Config,
    dt: f64,
    u: &[Vec<f64>],
    v: &[Vec<f64>],
    res: &CgResult,
) -> Result<PathBuf> {
    let pending = PendingFile::new(path)?;
    let e = |what: &'static str| nc_error(path, what);
    {
        let title = format!(
            "genda cg (conditional-Gaussian posterior): {}",
            cfg.experiment.name
        );
        let mut f = create_cf(pending.tmp_path(), path, &title)?;
        f.add_attribute("config", cfg.to_toml().as_str())
            .map_err(e("attrs"))?;
        let (steps, nu, nv) = (u.len(), u[0].len(), v[0].len());
        f.add_dimension("time", steps).map_err(e("dims"))?;
        f.add_dimension("x", nu + nv).map_err(e("dims"))?;
        f.add_dimension("hidden", nv).map_err(e("dims"))?;
        let time: Vec<f64> = (0..steps).map(|i| i as f64 * dt).collect();
        let mut put = |name: &str, dims: &[&str], long: &str, data: &[f64]| -> Result<()> {
            let mut var = f.add_variable::<f64>(name, dims).map_err(e("variables"))?;
            var.put_attribute("long_name", long)
                .map_err(e("variables"))?;
            var.put_values(data, netcdf::Extents::All)
                .map_err(e("variables"))?;
            Ok(())
        };
        put(
            "time",
            &["time"],
            "model time since the end of the spin-up",
            &time,
        )?;
        let truth: Vec<f64> = u
            .iter()
            .zip(v)
            .flat_map(|(a, b)| a.iter().chain(b).copied())
            .collect();
        put(
            "truth",
            &["time", "x"],
            "true state [u; v] (u is observed)",
            &truth,
        )?;
        for (name, post) in [("filter", &res.filter), ("smoother", &res.smoother)] {
            let mean: Vec<f64> = post.mean.iter().flat_map(|m| m.iter().copied()).collect();
            let var: Vec<f64> = post
                .cov
                .iter()
                .flat_map(|p| (0..nv).map(move |i| p[(i, i)]))
                .collect();
            put(
                &format!("{name}_mean"),
                &["time", "hidden"],
                &format!("CG {name} posterior mean of v"),
                &mean,
            )?;
            put(
                &format!("{name}_var"),
                &["time", "hidden"],
                &format!("CG {name} posterior variance of v"),
                &var,
            )?;
        }
    }
    pending.commit()
}

impl std::fmt::Display for CgReport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        writeln!(
            f,
            "{}: conditional-Gaussian posterior of {} hidden variable(s), u observed every step; {} steps, scored at the {} cycle times after the burn-in",
            self.model, self.hidden_dim, self.steps, self.scored_steps
        )?;
        writeln!(f, "observed kurtosis {:.2}", self.observed_kurtosis)?;
        writeln!(f, "                 rmse   spread     crps")?;
        for (name, s) in [("CG filter", &self.filter), ("CG smoother", &self.smoother)] {
            writeln!(
                f,
                "{name:<12} {:>9.4} {:>8.4} {:>8.4}",
                s.rmse, s.spread, s.crps
            )?;
        }
        writeln!(f, "climatology  {:>9.4}", self.climatology_rmse)
    }
}
