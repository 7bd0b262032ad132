//! `genda smooth`: SDA as a smoother over one assimilation window, in the setup of Rozet &
//! Louppe (2023, §4.1): a truth trajectory of L = (cycles − 1)·obs_every + 1 model steps of a
//! (noisy) model, measured at every obs_every-th step, and S trajectories sampled from
//! p(x_{1:L} | y) by `score::sda::SdaSampler` with the window network of `filter.weights`.
//! Scored as SDA scores it:
//!
//! - log p(y | x): the Gaussian log-likelihood of the observations under each sample (mean);
//! - log p(x): the log-density of each sample's transitions under the model's Gaussian step
//!   noise (mean; only for models with noise);
//! - W1: the earth mover's distance between the S samples and S trajectories of a reference
//!   posterior — a bootstrap particle filter with `filter.reference_particles` particles
//!   started from the model's climatology ([initial] + spin-up), resampled (systematic) at every
//!   observation with its ancestry, as `sda.utils.bpf` — and the same distance between two
//!   independent reference runs (the floor W1 can reach at this sample size). Trajectories are
//!   compared as vectors of L·n values (Euclidean ground cost), exactly by a linear assignment
//!   (`lsap`, the JV algorithm of SciPy);
//! - RMSE of the sample mean against the truth, and the spread.
//!
//! The output NetCDF holds the truth, observations, samples and reference trajectories.
use crate::config::Config;
use crate::error::{GendaError, Result};
use crate::experiment::Truth;
use crate::filters::{selected_components, FilterConfig, SdaConfig};
use crate::io::{create_cf, nc_error, PendingFile};
use crate::models::{NoisyStepper, Rk4Workspace};
use crate::parallel::SerialComm;
use crate::rng::{fill_standard_normal, stream, Purpose};
use crate::score::sda::{SdaSampler, TrajectoryObs};
use rand::Rng;
use rayon::prelude::*;
use std::path::{Path, PathBuf};

/// One observation time: (state index in the window, observed components, y, R).
type ObsTime = (usize, Vec<usize>, Vec<f64>, Vec<f64>);

#[derive(Debug, Clone)]
pub struct SmoothReport {
    pub states: usize,
    pub window: usize,
    pub samples: usize,
    pub observations: usize,
    /// (mean log p(y|x), mean log p(x), RMSE of the mean, spread) of the SDA samples.
    pub sda: SampleScores,
    /// The same for the reference posterior (when computed).
    pub reference: Option<SampleScores>,
    /// W1(SDA, reference) and W1(reference, second reference).
    pub w1: Option<(f64, f64)>,
    pub output: Option<PathBuf>,
}

#[derive(Debug, Clone, Copy)]
pub struct SampleScores {
    pub log_likelihood: f64,
    pub log_prior: Option<f64>,
    pub rmse: f64,
    pub spread: f64,
}

/// Bootstrap particle filter over the window (trajectories with ancestry), `p` particles; returns
/// `keep` trajectories (keep, L·n) thinned evenly from the final resampled set.
#[allow(clippy::too_many_arguments)]
fn reference_posterior(
    cfg: &Config,
    st: &NoisyStepper,
    l: usize,
    obs: &[ObsTime],
    p: usize,
    keep: usize,
    run: u64,
) -> Result<Vec<f64>> {
    let n = st.model.dim();
    let (tm, tv) = cfg.initial.truth_moments(n)?;
    let spin = cfg.experiment.spinup_steps as u64;
    let base = 1_000_000 + run * p as u64;
    let mut traj = vec![0.0; p * l * n];
    traj.par_chunks_mut(l * n).enumerate().for_each(|(i, row)| {
        let mut ws = Rk4Workspace::new(n);
        let x = &mut row[..n];
        fill_standard_normal(st.seed, Purpose::EnsembleInit, run, i as u64, 0, x);
        for k in 0..n {
            x[k] = tm[k] + tv[k].sqrt() * x[k];
        }
        for s in 0..spin {
            st.step(x, &mut ws, s, base + i as u64);
        }
    });
    // Step every particle's trajectory from state `from` to state `to` (noise keyed by particle).
    let advance = |traj: &mut [f64], from: usize, to: usize| {
        traj.par_chunks_mut(l * n).enumerate().for_each(|(i, row)| {
            let mut ws = Rk4Workspace::new(n);
            for s in from..to {
                let (prev, next) = row.split_at_mut((s + 1) * n);
                next[..n].copy_from_slice(&prev[s * n..]);
                st.step(&mut next[..n], &mut ws, spin + s as u64, base + i as u64);
            }
        });
    };
    let mut w = vec![0.0; p];
    let mut prefixes = Vec::with_capacity(p * l * n);
    let mut state = 0;
    for (j, (at, comp, y, r)) in obs.iter().enumerate() {
        // Forecast every particle from `state` to `at`.
        advance(&mut traj, state, *at);
        state = *at;
        let mut max = f64::NEG_INFINITY;
        for (i, wi) in w.iter_mut().enumerate() {
            let x = &traj[i * l * n + at * n..i * l * n + (at + 1) * n];
            *wi = -0.5
                * comp
                    .iter()
                    .zip(y.iter().zip(r))
                    .map(|(&c, (yv, rv))| (yv - x[c]).powi(2) / rv)
                    .sum::<f64>();
            max = max.max(*wi);
        }
        let mut sum = 0.0;
        for wi in w.iter_mut() {
            *wi = (*wi - max).exp();
            sum += *wi;
        }
        w.iter_mut().for_each(|wi| *wi /= sum);
        let u: f64 = stream(st.seed, Purpose::Resampling, j as u64, run, 0).gen();
        let idx = crate::filters::systematic_resample(&w, u);
        // Only the paths up to `at` exist yet: copy those prefixes, not whole trajectories.
        let len = (at + 1) * n;
        prefixes.clear();
        for row in traj.chunks(l * n) {
            prefixes.extend_from_slice(&row[..len]);
        }
        for (i, &a) in idx.iter().enumerate() {
            traj[i * l * n..i * l * n + len].copy_from_slice(&prefixes[a * len..(a + 1) * len]);
        }
    }
    // Particles after the last observation carry their own futures.
    advance(&mut traj, state, l - 1);
    let mut out = Vec::with_capacity(keep * l * n);
    for i in 0..keep {
        let a = ((i as f64 + 0.5) * p as f64 / keep as f64) as usize;
        out.extend_from_slice(&traj[a * l * n..(a + 1) * l * n]);
    }
    Ok(out)
}

/// Earth mover's distance between two equal-size sets of vectors (rows of `d`), exact.
pub fn w1_distance(a: &[f64], b: &[f64], d: usize) -> Result<f64> {
    let m = a.len() / d;
    if b.len() != m * d || m == 0 {
        return Err(GendaError::Score(
            "W1 needs two non-empty sets of equal size".into(),
        ));
    }
    let cost: Vec<f64> = (0..m * m)
        .into_par_iter()
        .map(|ij| {
            let (i, j) = (ij / m, ij % m);
            a[i * d..(i + 1) * d]
                .iter()
                .zip(&b[j * d..(j + 1) * d])
                .map(|(x, y)| (x - y).powi(2))
                .sum::<f64>()
                .sqrt()
        })
        .collect();
    let total = lsap::get_assigned_cost(m, m, &cost, false)
        .map_err(|e| GendaError::Score(format!("assignment for W1: {e}")))?;
    Ok(total / m as f64)
}

fn scores(
    x: &[f64],
    truth: &[f64],
    l: usize,
    n: usize,
    obs: &[ObsTime],
    st: &NoisyStepper,
) -> SampleScores {
    let s = x.len() / (l * n);
    let d = l * n;
    let mut ll = 0.0;
    let mut lp = 0.0;
    let noisy = st.noisy();
    let mut ws = Rk4Workspace::new(n);
    for i in 0..s {
        let row = &x[i * d..(i + 1) * d];
        for (at, comp, y, r) in obs {
            for ((&c, yv), rv) in comp.iter().zip(y).zip(r) {
                ll += -0.5
                    * ((yv - row[at * n + c]).powi(2) / rv
                        + (2.0 * std::f64::consts::PI * rv).ln());
            }
        }
        if noisy {
            for t in 0..l - 1 {
                let mut f = row[t * n..(t + 1) * n].to_vec();
                st.model.step(&mut f, &mut ws);
                for k in 0..n {
                    let v = st.sd[k] * st.sd[k];
                    lp += -0.5
                        * ((row[(t + 1) * n + k] - f[k]).powi(2) / v
                            + (2.0 * std::f64::consts::PI * v).ln());
                }
            }
        }
    }
    let mut mean = vec![0.0; d];
    for i in 0..s {
        mean.iter_mut()
            .zip(&x[i * d..(i + 1) * d])
            .for_each(|(m, v)| *m += v / s as f64);
    }
    let rmse = (mean
        .iter()
        .zip(truth)
        .map(|(a, b)| (a - b).powi(2))
        .sum::<f64>()
        / d as f64)
        .sqrt();
    let mut var = 0.0;
    for i in 0..s {
        var += x[i * d..(i + 1) * d]
            .iter()
            .zip(&mean)
            .map(|(v, m)| (v - m).powi(2))
            .sum::<f64>();
    }
    let spread = (var / ((s.max(2) - 1) * d) as f64).sqrt();
    SampleScores {
        log_likelihood: ll / s as f64,
        log_prior: noisy.then(|| lp / s as f64),
        rmse,
        spread,
    }
}

/// Run the smoothing twin of `cfg` (filter.method = "sda"); writes `output` unless None.
pub fn run_smooth(cfg: &Config, output: Option<&Path>) -> Result<SmoothReport> {
    let FilterConfig::Sda(sc) = &cfg.filter else {
        return Err(GendaError::invalid(
            "filter.method",
            format!(
                "genda smooth samples with SDA; set method = \"sda\" (got \"{}\")",
                cfg.filter.name()
            ),
        ));
    };
    let sc: &SdaConfig = sc;
    if cfg.model.has_fine_truth() || cfg.experiment.truth_file.is_some() {
        return Err(GendaError::invalid(
            "model.truth_grid",
            "genda smooth simulates its truth with the model it scores against (a particle-filter reference); a fine-grid or replayed truth applies to genda run",
        ));
    }
    let model = cfg.model.build();
    let n = model.dim();
    let every = cfg.observations.obs_every.max(1);
    let cycles = cfg.experiment.cycles;
    let l = (cycles.max(1) - 1) * every + 1;
    let (net, w) = sc.load(n)?;
    if l < w {
        return Err(GendaError::invalid(
            "experiment.cycles",
            format!(
                "{cycles} observation times every {every} steps make a trajectory of {l} states, fewer than the network's window of {w} states (2k+1)"
            ),
        ));
    }
    let h = cfg.observations.build(n);
    let comp = selected_components(&h).ok_or_else(|| {
        GendaError::invalid(
            "observations.operator",
            "sda: measurements must select state components (operator = \"sparse\" or \"identity\")",
        )
    })?;
    let r = cfg.observations.error_variances(n)?;
    let seed = cfg.experiment.seed;
    let st = NoisyStepper::new(model.as_ref(), seed);
    // Truth: `experiment::Truth`, the one `genda run` simulates ([initial], spin-up), recorded
    // at every step of the window.
    let comm = SerialComm;
    let mut tr = Truth::new(cfg, model.as_ref(), 0..n)?;
    tr.spin_up(model.as_ref(), &comm)?;
    let spin = cfg.experiment.spinup_steps as u64;
    let lobs = cfg.observations.build_local(n, 0, n);
    // Observations at states 0, every, 2·every, ... (observation time c keyed by c, so times
    // c ≥ 1 are `genda run`'s cycles c).
    let mut obs = Vec::new();
    let mut truth = Vec::with_capacity(l * n);
    for s in 0..l {
        if s > 0 {
            tr.advance_steps(model.as_ref(), spin + s as u64 - 1, 1, &comm)?;
        }
        truth.extend_from_slice(&tr.slab);
        if s % every == 0 {
            let y = tr.observe_whole(&lobs, seed, s / every);
            obs.push((s, comp.clone(), y, r.clone()));
        }
    }
    if truth.iter().any(|v| !v.is_finite()) {
        return Err(GendaError::Diverged {
            cycle: 0,
            what: format!("{} truth is not finite (reduce model.dt)", model.name()),
        });
    }
    let mut tobs = TrajectoryObs::default();
    for (at, comp, y, r) in &obs {
        for ((&k, yv), rv) in comp.iter().zip(y).zip(r) {
            let (shift, scale) = (net.shift_at(k), net.scale_at(k));
            tobs.index.push(at * n + k);
            tobs.y.push((yv - shift) / scale);
            tobs.var.push(rv / (scale * scale));
        }
    }
    let sampler = SdaSampler::new(&net, net.dim, n, l, &tobs)?;
    let s = sc.members;
    let samples: Vec<f64> = sampler
        .sample(s, &sc.settings(), seed ^ 0x5DA)?
        .into_iter()
        .enumerate()
        .map(|(i, v)| net.shift_at(i % n) + net.scale_at(i % n) * v)
        .collect();
    let sda = scores(&samples, &truth, l, n, &obs, &st);
    let (reference, w1, refs) = if sc.reference_particles > 0 {
        let p = sc.reference_particles.max(s);
        let a = reference_posterior(cfg, &st, l, &obs, p, s, 0)?;
        let b = reference_posterior(cfg, &st, l, &obs, p, s, 1)?;
        let w_sda = w1_distance(&samples, &a, l * n)?;
        let w_ref = w1_distance(&b, &a, l * n)?;
        (
            Some(scores(&a, &truth, l, n, &obs, &st)),
            Some((w_sda, w_ref)),
            Some(a),
        )
    } else {
        (None, None, None)
    };
    let written = match output {
        Some(path) => Some(write_smooth(
            path,
            cfg,
            l,
            n,
            s,
            &truth,
            &obs,
            &samples,
            refs.as_deref(),
            &sda,
            w1,
        )?),
        None => None,
    };
    Ok(SmoothReport {
        states: l,
        window: w,
        samples: s,
        observations: obs.iter().map(|o| o.1.len()).sum(),
        sda,
        reference,
        w1,
        output: written,
    })
}

#[allow(clippy::too_many_arguments)]
fn write_smooth(
    path: &Path,
    cfg: &Config,
    l: usize,
    n: usize,
    s: usize,
    truth: &[f64],
    obs: &[ObsTime],
    samples: &[f64],
    reference: Option<&[f64]>,
    sc: &SampleScores,
    w1: Option<(f64, f64)>,
) -> Result<PathBuf> {
    let pending = PendingFile::new(path)?;
    let e = |what: &'static str| nc_error(path, what);
    {
        let title = format!("genda smooth (SDA): {}", cfg.experiment.name);
        let mut f = create_cf(pending.tmp_path(), path, &title)?;
        f.add_attribute("log_likelihood_mean", sc.log_likelihood)
            .map_err(e("attrs"))?;
        f.add_attribute("rmse_of_mean", sc.rmse)
            .map_err(e("attrs"))?;
        if let Some(lp) = sc.log_prior {
            f.add_attribute("log_prior_mean", lp).map_err(e("attrs"))?;
        }
        if let Some((a, b)) = w1 {
            f.add_attribute("w1_to_reference", a).map_err(e("attrs"))?;
            f.add_attribute("w1_reference_floor", b)
                .map_err(e("attrs"))?;
        }
        f.add_dimension("time", l).map_err(e("dims"))?;
        f.add_dimension("x", n).map_err(e("dims"))?;
        f.add_dimension("member", s).map_err(e("dims"))?;
        let nobs: usize = obs.iter().map(|o| o.1.len()).sum();
        f.add_dimension("obs", nobs).map_err(e("dims"))?;
        let dt = cfg.model.dt();
        let time: Vec<f64> = (0..l).map(|i| i as f64 * dt).collect();
        let mut v = f
            .add_variable::<f64>("time", &["time"])
            .map_err(e("time"))?;
        v.put_attribute("units", "1").map_err(e("time"))?;
        v.put_attribute("long_name", "model time (nondimensional)")
            .map_err(e("time"))?;
        v.put_values(&time, netcdf::Extents::All)
            .map_err(e("time"))?;
        let mut v = f
            .add_variable::<f64>("truth", &["time", "x"])
            .map_err(e("truth"))?;
        v.put_attribute("long_name", "true state")
            .map_err(e("truth"))?;
        v.put_values(truth, netcdf::Extents::All)
            .map_err(e("truth"))?;
        let mut v = f
            .add_variable::<f64>("samples", &["member", "time", "x"])
            .map_err(e("samples"))?;
        v.put_attribute("long_name", "SDA posterior trajectory samples")
            .map_err(e("samples"))?;
        v.put_values(samples, netcdf::Extents::All)
            .map_err(e("samples"))?;
        if let Some(rf) = reference {
            let mut v = f
                .add_variable::<f64>("reference", &["member", "time", "x"])
                .map_err(e("reference"))?;
            v.put_attribute(
                "long_name",
                "bootstrap particle filter posterior trajectories",
            )
            .map_err(e("reference"))?;
            v.put_values(rf, netcdf::Extents::All)
                .map_err(e("reference"))?;
        }
        let (mut ot, mut oc, mut ov) = (Vec::new(), Vec::new(), Vec::new());
        for (at, comp, y, _) in obs {
            for (&k, &yv) in comp.iter().zip(y) {
                ot.push(*at as i32);
                oc.push(k as i32);
                ov.push(yv);
            }
        }
        let mut v = f
            .add_variable::<i32>("obs_time_index", &["obs"])
            .map_err(e("obs"))?;
        v.put_values(&ot, netcdf::Extents::All).map_err(e("obs"))?;
        let mut v = f
            .add_variable::<i32>("obs_component", &["obs"])
            .map_err(e("obs"))?;
        v.put_values(&oc, netcdf::Extents::All).map_err(e("obs"))?;
        let mut v = f.add_variable::<f64>("obs", &["obs"]).map_err(e("obs"))?;
        v.put_attribute("long_name", "observations")
            .map_err(e("obs"))?;
        v.put_values(&ov, netcdf::Extents::All).map_err(e("obs"))?;
    }
    pending.commit()
}
