//! `genda posterior`: one analysis, scored against the true posterior — the regime of the KDE
//! conditional-diffusion paper (Binder & Oberai), whose claim is posterior accuracy, not cycled
//! RMSE.
//!
//! For each seed: the prior is the config's initial distribution N(mean, diag var) pushed
//! `[posterior] prior_steps` model steps (default: one cycle, `obs_every`); the truth is one
//! more draw of it and y = h(truth) + R^{1/2} z. A prior ensemble of N members is drawn, every
//! listed method analyses it once (cycle 1), and its analysis ensemble is compared with a
//! reference sample of the posterior:
//!
//! - **exact** when the prior is Gaussian (prior_steps = 0) and h is linear: the Kalman
//!   posterior, sampled;
//! - else **importance sampling** with `reference_particles` (≥ 10^5) prior particles, its
//!   effective sample size checked (≥ `min_ess`) and printed;
//! - else (the weights degenerate) **MCMC**: random-walk Metropolis on the initial condition
//!   x₀ with the target N(x₀; mean, var) · p(y | h(M(x₀))) — exact for the pushed-forward prior,
//!   whose own density is not available — step size adapted in the burn-in to an acceptance
//!   near 0.25, thinned; `mcmc_chains` chains started from importance-resampled initial
//!   conditions (random-walk chains can under-represent a minor mode of a multimodal posterior).
//!
//! Scores: the Wasserstein-2 distance, exact by linear assignment (`lsap`) between the N
//! members (each repeated k times) and M = k·N reference points (k = ⌊reference_sample/N⌋), and
//! the energy distance. The same scores of an independent N-point draw of the reference give
//! the floor an ideal N-member sampler reaches; the prior ensemble's give the no-assimilation
//! value. Weighted ensembles (a particle filter that did not resample) are resampled
//! systematically by their weights before scoring.
use crate::config::{Config, PosteriorConfig};
use crate::error::{GendaError, Result};
use crate::filters::{selected_components, AnalysisInput};
use crate::metrics::energy_distance;
use crate::obs::ObsOperator;
use crate::rng::{fill_standard_normal, stream, Purpose};
use ndarray::Array2;
use rand::Rng;
use rayon::prelude::*;

/// The `[posterior]` table of a config.
/// How the reference sample of one seed was made.
#[derive(Debug, Clone, PartialEq)]
pub enum ReferenceKind {
    Exact,
    Importance {
        particles: usize,
        ess: f64,
    },
    Mcmc {
        chains: usize,
        iterations: usize,
        acceptance: f64,
        particles_tried: usize,
        ess: f64,
    },
}

/// Scores of one (method, N, seed).
#[derive(Debug, Clone)]
pub struct PosteriorScore {
    pub label: String,
    pub members: usize,
    pub seed: u64,
    pub w2: f64,
    pub energy: f64,
    /// RMSE of the ensemble mean against the reference posterior mean.
    pub mean_error: f64,
    pub failed: Option<String>,
}

pub struct PosteriorReport {
    pub scores: Vec<PosteriorScore>,
    /// Per seed: how the reference was made.
    pub references: Vec<(u64, ReferenceKind)>,
}

/// A draw of N(mean, var), member `i` of stream `key` (the caller pushes it to the prior time).
fn prior_draw(cfg: &Config, seed: u64, key: u64, i: u64, out: &mut [f64]) -> Result<()> {
    let n = out.len();
    let m = cfg.initial.mean.expand(n, "initial.mean")?;
    let v = cfg.initial.var.expand(n, "initial.var")?;
    fill_standard_normal(seed, Purpose::EnsembleInit, key, i, 0, out);
    for k in 0..n {
        out[k] = m[k] + v[k].sqrt() * out[k];
    }
    Ok(())
}

fn push(model: &dyn crate::models::Model, x: &mut [f64], steps: usize) {
    if steps > 0 {
        model.integrate(x, steps);
    }
}

fn log_lik(h: &dyn ObsOperator, x: &[f64], y: &[f64], r: &[f64]) -> f64 {
    let mut hx = vec![0.0; y.len()];
    h.apply(x, &mut hx);
    -0.5 * hx
        .iter()
        .zip(y)
        .zip(r)
        .map(|((a, b), r)| (a - b).powi(2) / r)
        .sum::<f64>()
}

/// Indices of a systematic resample of M from normalised weights `w` with offset u.
fn systematic(w: &[f64], m: usize, u: f64) -> Vec<usize> {
    let mut cdf = Vec::with_capacity(w.len());
    let mut s = 0.0;
    for v in w {
        s += v;
        cdf.push(s);
    }
    (0..m)
        .map(|k| {
            let a = (u + k as f64) / m as f64 * s;
            cdf.partition_point(|&c| c < a).min(w.len() - 1)
        })
        .collect()
}

/// Exact W2 between the rows of `a` (each repeated M/N times) and the M rows of `b`.
pub fn w2_assignment(a: &Array2<f64>, b: &Array2<f64>) -> Result<f64> {
    let (na, nb) = (a.nrows(), b.nrows());
    if nb % na != 0 {
        return Err(GendaError::Score(format!(
            "W2: {nb} reference points is not a multiple of {na} members"
        )));
    }
    let k = nb / na;
    let mut cost = vec![0.0; nb * nb];
    for i in 0..nb {
        let ai = a.row(i / k);
        for j in 0..nb {
            cost[i * nb + j] = ai
                .iter()
                .zip(b.row(j))
                .map(|(x, y)| (x - y) * (x - y))
                .sum();
        }
    }
    let total = lsap::get_assigned_cost(nb, nb, &cost, false)
        .map_err(|e| GendaError::Score(format!("assignment for W2: {e}")))?;
    Ok((total / nb as f64).max(0.0).sqrt())
}

/// Reference sample (rows) of the posterior of one seed, `rows` points, plus a second,
/// independent set of `extra` points for the floor.
#[allow(clippy::too_many_arguments)]
fn reference(
    cfg: &Config,
    pc: &PosteriorConfig,
    h: &dyn ObsOperator,
    y: &[f64],
    r: &[f64],
    seed: u64,
    steps: usize,
    rows: usize,
) -> Result<(Array2<f64>, ReferenceKind)> {
    let model = cfg.model.build();
    let n = model.dim();
    let mean = cfg.initial.mean.expand(n, "initial.mean")?;
    let var = cfg.initial.var.expand(n, "initial.var")?;
    // Exact: Gaussian prior and a linear selection of components.
    if let (0, Some(sel)) = (steps, selected_components(h)) {
        let mut out = Array2::zeros((rows, n));
        // Diagonal prior, each observed component independent: posterior per component.
        let mut pm = mean.clone();
        let mut pv = var.clone();
        for (j, &c) in sel.iter().enumerate() {
            let k = var[c] / (var[c] + r[j]);
            pm[c] = mean[c] + k * (y[j] - mean[c]);
            pv[c] = (1.0 - k) * var[c];
        }
        let mut z = vec![0.0; n];
        for i in 0..rows {
            fill_standard_normal(seed, Purpose::Sampling, 7, i as u64, 0, &mut z);
            for c in 0..n {
                out[[i, c]] = pm[c] + pv[c].sqrt() * z[c];
            }
        }
        return Ok((out, ReferenceKind::Exact));
    }
    // Importance sampling with prior particles.
    let p = pc.reference_particles;
    let parts: Vec<(Vec<f64>, f64)> = (0..p)
        .into_par_iter()
        .map(|i| -> Result<(Vec<f64>, f64)> {
            let mut x = vec![0.0; n];
            prior_draw(cfg, seed, 3, i as u64, &mut x)?;
            push(model.as_ref(), &mut x, steps);
            let l = log_lik(h, &x, y, r);
            Ok((x, l))
        })
        .collect::<Result<_>>()?;
    let mx = parts.iter().map(|p| p.1).fold(f64::NEG_INFINITY, f64::max);
    let mut w: Vec<f64> = parts.iter().map(|p| (p.1 - mx).exp()).collect();
    let z: f64 = w.iter().sum();
    w.iter_mut().for_each(|v| *v /= z);
    let ess = 1.0 / w.iter().map(|v| v * v).sum::<f64>();
    if ess >= pc.min_ess {
        let u: f64 = stream(seed, Purpose::Resampling, 7, 0, 0).gen();
        let idx = systematic(&w, rows, u);
        // Shuffle-free: systematic indices are sorted; the assignment does not care.
        let mut out = Array2::zeros((rows, n));
        for (k, &i) in idx.iter().enumerate() {
            out.row_mut(k)
                .assign(&ndarray::ArrayView1::from(&parts[i].0[..]));
        }
        return Ok((out, ReferenceKind::Importance { particles: p, ess }));
    }
    // MCMC on the initial condition x0: target N(x0; mean, var) p(y | h(M(x0))).
    let log_target = |x0: &[f64]| -> f64 {
        let lp = -0.5
            * x0.iter()
                .zip(&mean)
                .zip(&var)
                .map(|((x, m), v)| (x - m).powi(2) / v.max(1e-300))
                .sum::<f64>();
        let mut x = x0.to_vec();
        push(model.as_ref(), &mut x, steps);
        lp + log_lik(h, &x, y, r)
    };
    // `mcmc_chains` chains in parallel, started at initial conditions drawn (systematically) from
    // the importance weights, each adapting its step in the burn-in; rows split over chains.
    let chains = pc.mcmc_chains.max(1).min(rows);
    let u0: f64 = stream(seed, Purpose::Resampling, 8, 0, 0).gen();
    let starts = systematic(&w, chains, u0);
    let sd: Vec<f64> = var.iter().map(|v| v.sqrt().max(1e-12)).collect();
    let per = rows.div_ceil(chains);
    let results: Vec<(Vec<Vec<f64>>, usize, usize)> = starts
        .par_iter()
        .enumerate()
        .map(|(c, &start)| -> Result<(Vec<Vec<f64>>, usize, usize)> {
            let mut x0 = vec![0.0; n];
            prior_draw(cfg, seed, 3, start as u64, &mut x0)?;
            let mut lt = log_target(&x0);
            let mut scale = 0.1;
            let total = pc.mcmc_burn_in + per * pc.mcmc_thin;
            let mut rng = stream(seed, Purpose::Sampling, 8, c as u64, 0);
            let (mut acc, mut acc_win) = (0usize, 0usize);
            let mut prop = vec![0.0; n];
            let mut z = vec![0.0; n];
            let mut kept = Vec::with_capacity(per);
            for it in 0..total {
                fill_standard_normal(seed, Purpose::Sampling, 9 + c as u64, it as u64, 0, &mut z);
                for k in 0..n {
                    prop[k] = x0[k] + scale * sd[k] * z[k];
                }
                let lp = log_target(&prop);
                let u: f64 = rng.gen();
                if u.ln() < lp - lt {
                    x0.copy_from_slice(&prop);
                    lt = lp;
                    acc_win += 1;
                    if it >= pc.mcmc_burn_in {
                        acc += 1;
                    }
                }
                if it < pc.mcmc_burn_in && (it + 1) % 100 == 0 {
                    // Adapt the step towards 25 % acceptance (burn-in only).
                    let rate = acc_win as f64 / 100.0;
                    scale *= ((rate - 0.25) * 2.0).exp();
                    acc_win = 0;
                }
                if it >= pc.mcmc_burn_in && (it - pc.mcmc_burn_in) % pc.mcmc_thin == 0 {
                    let mut x = x0.clone();
                    push(model.as_ref(), &mut x, steps);
                    kept.push(x);
                }
            }
            Ok((kept, acc, total - pc.mcmc_burn_in))
        })
        .collect::<Result<_>>()?;
    // Interleave the chains so that any prefix of rows mixes them.
    let mut out = Array2::zeros((rows, n));
    for k in 0..rows {
        let (c, i) = (k % chains, k / chains);
        let x = &results[c].0[i.min(results[c].0.len() - 1)];
        out.row_mut(k).assign(&ndarray::ArrayView1::from(&x[..]));
    }
    let (acc, tot) = results.iter().fold((0, 0), |a, r| (a.0 + r.1, a.1 + r.2));
    Ok((
        out,
        ReferenceKind::Mcmc {
            chains,
            iterations: tot / chains + pc.mcmc_burn_in,
            acceptance: acc as f64 / tot as f64,
            particles_tried: p,
            ess,
        },
    ))
}

fn row_mean(a: &Array2<f64>) -> Vec<f64> {
    a.mean_axis(ndarray::Axis(0)).expect("rows").to_vec()
}

/// Run the whole comparison.
pub fn run_posterior(cfg: &Config) -> Result<PosteriorReport> {
    let pc = cfg.posterior.clone().ok_or_else(|| {
        GendaError::invalid(
            "posterior",
            "the config has no [posterior] table (methods, members, seeds)",
        )
    })?;
    pc.validate()?;
    let model = cfg.model.build();
    let n = model.dim();
    let steps = pc.prior_steps.unwrap_or(cfg.observations.obs_every);
    let lobs = cfg.observations.build_local(n, 0, n);
    let h = &lobs.op;
    let r = lobs.error_var.clone();
    let mut scores = Vec::new();
    let mut refs = Vec::new();
    for &seed in &pc.seeds {
        // Truth and observation.
        let mut truth = vec![0.0; n];
        let (tm, tv) = cfg.initial.truth_moments(n)?;
        fill_standard_normal(seed, Purpose::TruthInit, 0, 0, 0, &mut truth);
        for k in 0..n {
            truth[k] = tm[k] + tv[k].sqrt() * truth[k];
        }
        push(model.as_ref(), &mut truth, steps);
        let mut y = vec![0.0; h.obs_dim()];
        crate::experiment::observe(&lobs, &truth, seed, 1, &mut y);
        let max_n = *pc.members.iter().max().expect("members");
        let m_ref = (pc.reference_sample / max_n).max(1) * max_n;
        // Two independent reference sets: M points, and the floor's draws.
        let (big, kind) = reference(cfg, &pc, h, &y, &r, seed, steps, 2 * m_ref)?;
        log::info!("seed {seed}: reference {kind:?}");
        refs.push((seed, kind));
        let ref_a = big.slice(ndarray::s![..m_ref, ..]).to_owned();
        let ref_b = big.slice(ndarray::s![m_ref.., ..]).to_owned();
        let ref_mean = row_mean(&ref_a);
        for &nm in &pc.members {
            let k = (pc.reference_sample / nm).max(1);
            let mref = k * nm;
            let reference = ref_a.slice(ndarray::s![..mref, ..]).to_owned();
            let score = |label: &str, e: &Array2<f64>| -> Result<PosteriorScore> {
                let mean = row_mean(e);
                Ok(PosteriorScore {
                    label: label.to_string(),
                    members: nm,
                    seed,
                    w2: w2_assignment(e, &reference)?,
                    energy: energy_distance(e, &reference),
                    mean_error: (mean
                        .iter()
                        .zip(&ref_mean)
                        .map(|(a, b)| (a - b).powi(2))
                        .sum::<f64>()
                        / n as f64)
                        .sqrt(),
                    failed: None,
                })
            };
            // The floor: N points of the second reference set, spread over it.
            let stride = ref_b.nrows() / nm;
            let ideal = Array2::from_shape_fn((nm, n), |(i, c)| ref_b[[i * stride, c]]);
            scores.push(score("reference (floor)", &ideal)?);
            // The prior ensemble.
            let mut prior = Array2::zeros((nm, n));
            for (i, mut row) in prior.rows_mut().into_iter().enumerate() {
                let x = row.as_slice_mut().expect("row");
                prior_draw(cfg, seed, 1, i as u64, x)?;
                push(model.as_ref(), x, steps);
            }
            scores.push(score("prior", &prior)?);
            for (label, fc) in pc.method_configs(nm)? {
                let mut ens = prior.clone();
                let mut filter = fc.build();
                let input = AnalysisInput::whole(&y, h, &r, 1, seed);
                let res = filter
                    .prepare(n, &crate::experiment::DataFromFiles::SERIAL)
                    .and_then(|()| filter.analyse(&mut ens, &input));
                match res {
                    Ok(()) if ens.iter().all(|v| v.is_finite()) => {
                        crate::filters::write_outputs(filter.take_outputs())?;
                        if let Some(w) = filter.weights() {
                            if w.iter().any(|&v| (v - w[0]).abs() > 0.0) {
                                let idx = systematic(w, nm, 0.5);
                                let old = ens.clone();
                                for (k, &j) in idx.iter().enumerate() {
                                    ens.row_mut(k).assign(&old.row(j));
                                }
                            }
                        }
                        scores.push(score(&label, &ens)?);
                    }
                    other => scores.push(PosteriorScore {
                        label,
                        members: nm,
                        seed,
                        w2: f64::NAN,
                        energy: f64::NAN,
                        mean_error: f64::NAN,
                        failed: Some(match other {
                            Err(e) => e.to_string(),
                            Ok(()) => "non-finite analysis".into(),
                        }),
                    }),
                }
            }
        }
    }
    Ok(PosteriorReport {
        scores,
        references: refs,
    })
}

impl PosteriorReport {
    /// Markdown table: one row per method × N, W2 / energy / mean error as mean ± std over
    /// seeds, failed runs counted.
    pub fn table(&self) -> String {
        let mut keys: Vec<(String, usize)> = Vec::new();
        for s in &self.scores {
            let k = (s.label.clone(), s.members);
            if !keys.contains(&k) {
                keys.push(k);
            }
        }
        keys.sort_by(|a, b| a.1.cmp(&b.1).then(std::cmp::Ordering::Equal));
        let ms = |v: &[f64]| -> String {
            if v.is_empty() {
                return "–".into();
            }
            let m = v.iter().sum::<f64>() / v.len() as f64;
            if v.len() == 1 {
                return format!("{m:.4}");
            }
            let sd = (v.iter().map(|x| (x - m).powi(2)).sum::<f64>() / (v.len() - 1) as f64).sqrt();
            format!("{m:.4} ± {sd:.4}")
        };
        let mut out = String::from(
            "| N | method | W2 | energy distance | mean error | seeds | failed |\n|---|---|---|---|---|---|---|\n",
        );
        for (label, nm) in keys {
            let rows: Vec<&PosteriorScore> = self
                .scores
                .iter()
                .filter(|s| s.label == label && s.members == nm)
                .collect();
            let ok: Vec<&&PosteriorScore> = rows.iter().filter(|s| s.failed.is_none()).collect();
            let col = |f: &dyn Fn(&PosteriorScore) -> f64| {
                ms(&ok.iter().map(|s| f(s)).collect::<Vec<_>>())
            };
            out.push_str(&format!(
                "| {nm} | {label} | {} | {} | {} | {} | {} |\n",
                col(&|s| s.w2),
                col(&|s| s.energy),
                col(&|s| s.mean_error),
                ok.len(),
                rows.len() - ok.len()
            ));
        }
        out
    }

    pub fn reference_lines(&self) -> String {
        self.references
            .iter()
            .map(|(s, k)| match k {
                ReferenceKind::Exact => format!("seed {s}: exact Gaussian posterior\n"),
                ReferenceKind::Importance { particles, ess } => {
                    format!("seed {s}: importance sampling, {particles} particles, ESS {ess:.0}\n")
                }
                ReferenceKind::Mcmc {
                    chains,
                    iterations,
                    acceptance,
                    particles_tried,
                    ess,
                } => format!(
                    "seed {s}: MCMC on x0, {chains} chains of {iterations} iterations, acceptance {acceptance:.2} (importance sampling with {particles_tried} particles had ESS {ess:.1})\n"
                ),
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn w2_of_identical_and_shifted_samples() {
        let a = Array2::from_shape_fn((4, 2), |(i, j)| (i * 2 + j) as f64);
        let b = Array2::from_shape_fn((8, 2), |(i, j)| ((i / 2) * 2 + j) as f64);
        assert!(w2_assignment(&a, &b).unwrap() < 1e-12);
        let c = b.mapv(|v| v + 1.0);
        assert!((w2_assignment(&a, &c).unwrap() - 2f64.sqrt()).abs() < 1e-12);
        assert!(w2_assignment(&a, &b.slice(ndarray::s![..7, ..]).to_owned()).is_err());
    }
}
