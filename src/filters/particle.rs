//! Particle filter with DAPPER's `PartFilt` semantics (`dapper/da_methods/particle.py`):
//!
//! - the weights are carried across cycles and multiplied by each cycle's likelihood
//!   (`reweight`: log w + log L, shifted by the maximum, normalised);
//! - resampling happens only when the effective sample size 1/Σw² falls below `ner`·N
//!   (`trigger_resampling`), by the `resampling` scheme (systematic — DAPPER's default `"Sys"` —,
//!   residual or multinomial), after which the weights are equal again;
//! - after resampling, the particles that appear more than once (DAPPER's default `nuj = True`:
//!   `mask_unique_of_sorted`, every copy of a duplicated index) are jittered with the covariance
//!   reg² · N^(−2/(d+4)) · (weighted covariance of the ensemble before resampling, unbiased by
//!   1/(1 − Σw²), with equal weights when the weights are degenerate) — DAPPER's
//!   `reg * auto_bandw(N, d) * raw_C12(E, w)` and `sample_quickly_with`: D·C12 with D of shape
//!   (copies, N) in ensemble space, or, when N > 2d, D·R with R = `chol_reduce(C12)` (Σ Vᵀ of the
//!   SVD, signs fixed) and D of shape (copies, d);
//! - the statistics are the **weighted** mean and spread (`Filter::weights`), as DAPPER's
//!   `stats.assess(k, ko, E=E, w=w)`.
//!
//! genda's former bootstrap filter (resample every cycle, diagonal jitter of Silverman's
//! bandwidth × weighted std) is `ner = 1.0` (any unequal weights resample) with
//! `jitter = "silverman_diagonal"`.
//!
//! Random numbers: the resampling uniforms are keyed by (seed, Resampling, cycle, k) and the
//! jitter of resampled particle m by (seed, Jitter, cycle, m), so the analysis is the same on
//! any rank count. `pf_analysis` takes the draws as arguments (the oracle test feeds it the same
//! numbers as its NumPy port of DAPPER).
use super::{AnalysisInput, Filter, Needs};
use crate::error::{GendaError, Result};
use crate::rng::{fill_standard_normal, stream, Purpose};
use crate::state::SavedState;
use ndarray::{Array2, ArrayView2};
use rand::Rng;
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Resampling {
    /// DAPPER's `"Sys"` (stochastic universal): one uniform U/N, positions U/N + k/N.
    #[default]
    Systematic,
    /// DAPPER's `"Res"`: ⌊N w⌋ copies, the rest multinomial on the remainders.
    Residual,
    /// DAPPER's `"Stoch"`: N independent draws from the weights.
    Multinomial,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Jitter {
    /// DAPPER's regularisation: full weighted covariance, on the duplicated particles.
    #[default]
    Dapper,
    /// genda's former variant: every particle, independent per variable, Silverman's
    /// bandwidth × the biased weighted std.
    SilvermanDiagonal,
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct PfConfig {
    pub members: usize,
    /// DAPPER's `reg`: jitter scale in units of the bandwidth N^(−1/(d+4)) (0: no jitter).
    #[serde(default)]
    pub regularization: f64,
    /// DAPPER's `NER`: resample when N_eff < ner · N (1.0: whenever the weights are unequal).
    #[serde(default = "d_ner")]
    pub ner: f64,
    #[serde(default)]
    pub resampling: Resampling,
    #[serde(default)]
    pub jitter: Jitter,
    /// DAPPER's `nuj`: jitter only the particles that were duplicated by the resampling.
    #[serde(default = "yes")]
    pub jitter_duplicates_only: bool,
}

fn d_ner() -> f64 {
    0.3
}
fn yes() -> bool {
    true
}

impl PfConfig {
    pub fn validate(&self) -> Result<()> {
        if !(self.regularization.is_finite() && self.regularization >= 0.0) {
            return Err(GendaError::invalid(
                "filter.regularization",
                format!("must be >= 0, got {}", self.regularization),
            ));
        }
        if !(self.ner > 0.0 && self.ner <= 1.0) {
            return Err(GendaError::invalid(
                "filter.ner",
                format!("must be in (0, 1], got {}", self.ner),
            ));
        }
        Ok(())
    }
}

pub struct ParticleFilter {
    cfg: PfConfig,
    /// Normalised weights, carried from cycle to cycle (1/N at the start and after resampling).
    w: Vec<f64>,
    /// Effective sample size of the last analysis (before any resampling), for diagnostics.
    pub last_ess: f64,
    /// Whether the last analysis resampled.
    pub last_resampled: bool,
    /// The reweighted ensemble before resampling and its weights: what the analysis
    /// statistics describe (DAPPER assesses "a" there).
    assessed: Option<(Array2<f64>, Vec<f64>)>,
}

impl ParticleFilter {
    pub fn new(cfg: PfConfig) -> Self {
        let n = cfg.members;
        ParticleFilter {
            cfg,
            w: vec![1.0 / n as f64; n],
            last_ess: f64::NAN,
            last_resampled: false,
            assessed: None,
        }
    }
}

/// DAPPER's `weight_degeneracy(w, prec=1e-10)`: 1 − max w < 1e-10.
pub fn weight_degeneracy(w: &[f64]) -> bool {
    1.0 - w.iter().cloned().fold(f64::NEG_INFINITY, f64::max) < 1e-10
}

/// DAPPER's `unbias_var(w)`: 1/(1 − Σw²) (= N/(N − 1) for equal weights); 1 when
/// `avoid_pathological` and the weights are degenerate.
pub fn unbias_var(w: &[f64], avoid_pathological: bool) -> f64 {
    if avoid_pathological && weight_degeneracy(w) {
        return 1.0;
    }
    let n_eff = 1.0 / w.iter().map(|v| v * v).sum::<f64>();
    1.0 / (1.0 - 1.0 / n_eff)
}

/// DAPPER's `reweight(w, logL=…)`: w ∝ exp(log w + log L − max).
pub fn reweight(w: &[f64], log_l: &[f64]) -> Result<Vec<f64>> {
    let logw: Vec<f64> = w.iter().zip(log_l).map(|(w, l)| w.ln() + l).collect();
    let mx = logw.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
    if !mx.is_finite() {
        return Err(GendaError::LinAlg(
            "particle filter: every particle has zero or undefined likelihood".into(),
        ));
    }
    let mut out: Vec<f64> = logw.iter().map(|l| (l - mx).exp()).collect();
    let z: f64 = out.iter().sum();
    out.iter_mut().for_each(|v| *v /= z);
    Ok(out)
}

/// First index i with cdf[i] ≥ a (NumPy's `searchsorted(cdf, a)`, side "left"), clamped to the
/// last particle against round-off in the cumulative sum.
fn search_left(cdf: &[f64], a: f64) -> usize {
    cdf.partition_point(|&c| c < a).min(cdf.len() - 1)
}

/// First index i with cdf[i] > a (side "right", as `numpy.random.choice`).
fn search_right(cdf: &[f64], a: f64) -> usize {
    cdf.partition_point(|&c| c <= a).min(cdf.len() - 1)
}

fn cumsum(w: &[f64]) -> Vec<f64> {
    w.iter()
        .scan(0.0, |s, v| {
            *s += v;
            Some(*s)
        })
        .collect()
}

/// Systematic resampling (DAPPER `"Sys"`): positions u/N + k/N for the one uniform u ∈ [0, 1).
pub fn systematic_resample(w: &[f64], u: f64) -> Vec<usize> {
    let n = w.len();
    let cdf = cumsum(w);
    (0..n)
        .map(|k| search_left(&cdf, u / n as f64 + k as f64 / n as f64))
        .collect()
}

/// Multinomial resampling (`numpy.random.choice(N, N, p=w)`): one uniform per draw, on the
/// cumulative weights normalised by their last value.
pub fn multinomial_resample(w: &[f64], uniforms: &[f64]) -> Vec<usize> {
    let mut cdf = cumsum(w);
    let last = *cdf.last().expect("weights");
    cdf.iter_mut().for_each(|c| *c /= last);
    uniforms.iter().map(|&u| search_right(&cdf, u)).collect()
}

/// Residual resampling (DAPPER `"Res"`): ⌊N w_i⌋ copies of i in index order, then
/// N − Σ⌊N w⌋ multinomial draws (the first of `uniforms`) on the remainders.
pub fn residual_resample(w: &[f64], uniforms: &[f64]) -> Vec<usize> {
    let n = w.len();
    let wn: Vec<f64> = w.iter().map(|v| v * n as f64).collect();
    let wi: Vec<usize> = wn.iter().map(|v| v.trunc() as usize).collect();
    let wd: Vec<f64> = wn.iter().zip(&wi).map(|(a, &b)| a - b as f64).collect();
    let mut idx: Vec<usize> = wi
        .iter()
        .enumerate()
        .flat_map(|(i, &c)| std::iter::repeat_n(i, c))
        .collect();
    let rest = n - idx.len();
    if rest > 0 {
        let z: f64 = wd.iter().sum();
        let p: Vec<f64> = wd.iter().map(|v| v / z).collect();
        idx.extend(multinomial_resample(&p, &uniforms[..rest]));
    }
    idx
}

/// DAPPER's `mask_unique_of_sorted(idx)`: true at k when idx[k] equals a cyclic neighbour,
/// i.e. every copy of an index that the resampling duplicated (for sorted indices).
pub fn duplicated(idx: &[usize]) -> Vec<bool> {
    let n = idx.len();
    (0..n)
        .map(|k| idx[k] == idx[(k + n - 1) % n] || idx[k] == idx[(k + 1) % n])
        .collect()
}

/// DAPPER's `raw_C12(E, w)` on the local columns: rows √(ub·w_m)·(x_m − Σ w x), with equal
/// weights when `w` is degenerate and ub = 1/(1 − Σw²).
pub fn raw_c12(ens: ArrayView2<f64>, w: &[f64]) -> Array2<f64> {
    let n = w.len();
    let eq = vec![1.0 / n as f64; n];
    let w = if weight_degeneracy(w) { &eq[..] } else { w };
    let ub = unbias_var(w, false);
    let mut mu = vec![0.0; ens.ncols()];
    for (row, wm) in ens.rows().into_iter().zip(w) {
        for (m, x) in mu.iter_mut().zip(row) {
            *m += wm * x;
        }
    }
    let mut c = Array2::zeros(ens.dim());
    for (k, (row, wm)) in ens.rows().into_iter().zip(w).enumerate() {
        let s = (ub * wm).sqrt();
        for (j, x) in row.iter().enumerate() {
            c[[k, j]] = s * (x - mu[j]);
        }
    }
    c
}

/// Draws of one analysis, in the order `pf_analysis` uses them.
pub struct PfDraws {
    /// Resampling uniforms: one for systematic, N for residual and multinomial.
    pub uniforms: Vec<f64>,
    /// Jitter normals, one row per resampled particle: N values (ensemble-space sampling) or
    /// d values (state-space sampling when N > 2d), row-major.
    pub jitter: Vec<f64>,
    /// Row length of `jitter`.
    pub jitter_dim: usize,
}

/// What one analysis did.
pub struct PfOutcome {
    /// The weights carried to the next cycle (equal after a resampling).
    pub weights: Vec<f64>,
    /// After a resampling: the reweighted ensemble before it and its weights.
    pub posterior: Option<(Array2<f64>, Vec<f64>)>,
    pub ess: f64,
    pub resampled: bool,
}

/// The jitter rows are drawn in ensemble space (length N) unless N > 2d (DAPPER's
/// `sample_quickly_with`), which needs the whole state.
pub fn jitter_in_state_space(members: usize, dim: usize) -> bool {
    members > 2 * dim
}

/// One DAPPER `PartFilt` analysis of the whole state (one rank): prior weights `w`,
/// log-likelihoods `log_l`, the draws. `ens` (N, d) becomes the analysis ensemble.
pub fn pf_analysis(
    cfg: &PfConfig,
    ens: &mut Array2<f64>,
    w: &[f64],
    log_l: &[f64],
    draws: &PfDraws,
) -> Result<PfOutcome> {
    let (n_mem, d) = ens.dim();
    let w = reweight(w, log_l)?;
    let ess = 1.0 / w.iter().map(|v| v * v).sum::<f64>();
    // DAPPER's `trigger_resampling`: N_eff <= N · NER.
    if ess > cfg.ner * n_mem as f64 {
        return Ok(PfOutcome {
            weights: w,
            posterior: None,
            ess,
            resampled: false,
        });
    }
    let c12 = match cfg.jitter {
        Jitter::Dapper => {
            let bw = (n_mem as f64).powf(-1.0 / (d as f64 + 4.0));
            let mut c = raw_c12(ens.view(), &w);
            c *= cfg.regularization * bw;
            Some(c)
        }
        Jitter::SilvermanDiagonal => None,
    };
    let sd = silverman_sd(cfg, ens.view(), &w, d);
    let idx = resample_indices(cfg.resampling, &w, &draws.uniforms);
    let old = ens.clone();
    for (m, &j) in idx.iter().enumerate() {
        ens.row_mut(m).assign(&old.row(j));
    }
    if cfg.regularization > 0.0 {
        let jit = |m: usize| &draws.jitter[m * draws.jitter_dim..(m + 1) * draws.jitter_dim];
        match c12 {
            Some(c) => {
                let mask = jitter_mask(cfg, &idx);
                let basis = if draws.jitter_dim == n_mem {
                    c
                } else {
                    chol_reduce(&c)?
                };
                for (m, mut row) in ens.rows_mut().into_iter().enumerate() {
                    if mask[m] {
                        row += &ndarray::ArrayView1::from(jit(m)).dot(&basis);
                    }
                }
            }
            None => {
                for (m, mut row) in ens.rows_mut().into_iter().enumerate() {
                    for (i, z) in jit(m).iter().enumerate() {
                        row[i] += sd[i] * z;
                    }
                }
            }
        }
    }
    Ok(PfOutcome {
        weights: vec![1.0 / n_mem as f64; n_mem],
        posterior: Some((old, w)),
        ess,
        resampled: true,
    })
}

fn jitter_mask(cfg: &PfConfig, idx: &[usize]) -> Vec<bool> {
    if cfg.jitter_duplicates_only {
        duplicated(idx)
    } else {
        vec![true; idx.len()]
    }
}

fn resample_indices(kind: Resampling, w: &[f64], uniforms: &[f64]) -> Vec<usize> {
    match kind {
        Resampling::Systematic => systematic_resample(w, uniforms[0]),
        Resampling::Residual => residual_resample(w, uniforms),
        Resampling::Multinomial => multinomial_resample(w, uniforms),
    }
}

/// genda's former jitter scale per variable: reg · Silverman's h · the biased weighted std.
fn silverman_sd(cfg: &PfConfig, ens: ArrayView2<f64>, w: &[f64], n_global: usize) -> Vec<f64> {
    if cfg.jitter != Jitter::SilvermanDiagonal || cfg.regularization == 0.0 {
        return Vec::new();
    }
    let n_mem = w.len();
    let h = (4.0 / ((n_global as f64 + 2.0) * n_mem as f64)).powf(1.0 / (n_global as f64 + 4.0));
    ens.columns()
        .into_iter()
        .map(|col| {
            let mean: f64 = col.iter().zip(w).map(|(x, w)| w * x).sum();
            let var: f64 = col.iter().zip(w).map(|(x, w)| w * (x - mean).powi(2)).sum();
            cfg.regularization * h * var.sqrt()
        })
        .collect()
}

/// DAPPER's `chol_reduce(C12)`: the SVD C12 = U Σ Vᵀ (singular values descending), each row of
/// Vᵀ signed so that its first entry is ≥ 0 (`np.sign(UT[:, [0]]) * UT`), times its singular
/// value: a (min(N, d), d) root R with RᵀR = C12ᵀC12.
fn chol_reduce(c12: &Array2<f64>) -> Result<Array2<f64>> {
    let (n, d) = c12.dim();
    if c12.iter().any(|v| !v.is_finite()) {
        return Err(GendaError::LinAlg(
            "particle filter: jitter covariance is not finite".into(),
        ));
    }
    let m = nalgebra::DMatrix::from_row_slice(
        n,
        d,
        c12.as_standard_layout().as_slice().expect("contiguous"),
    );
    let svd = nalgebra::linalg::SVD::new(m, false, true);
    let vt = svd.v_t.expect("V computed");
    let k = n.min(d);
    let mut r = Array2::zeros((k, d));
    for i in 0..k {
        let sign = vt[(i, 0)].signum() * if vt[(i, 0)] == 0.0 { 0.0 } else { 1.0 };
        for j in 0..d {
            r[[i, j]] = svd.singular_values[i] * sign * vt[(i, j)];
        }
    }
    Ok(r)
}

/// The draws of cycle `cycle`, keyed so that every rank makes the same ones.
pub fn pf_draws(cfg: &PfConfig, seed: u64, cycle: usize, n_mem: usize, n: usize) -> PfDraws {
    let nu = match cfg.resampling {
        Resampling::Systematic => 1,
        Resampling::Residual | Resampling::Multinomial => n_mem,
    };
    let uniforms = (0..nu)
        .map(|k| stream(seed, Purpose::Resampling, cycle as u64, k as u64, 0).gen::<f64>())
        .collect();
    let jitter_dim = match cfg.jitter {
        Jitter::Dapper if !jitter_in_state_space(n_mem, n) => n_mem,
        _ => n,
    };
    let mut jitter = vec![0.0; n_mem * jitter_dim];
    if cfg.regularization > 0.0 {
        for (m, row) in jitter.chunks_mut(jitter_dim).enumerate() {
            fill_standard_normal(seed, Purpose::Jitter, cycle as u64, m as u64, 0, row);
        }
    }
    PfDraws {
        uniforms,
        jitter,
        jitter_dim,
    }
}

impl Filter for ParticleFilter {
    fn name(&self) -> &'static str {
        "pf"
    }

    fn analyse(&mut self, ens: &mut Array2<f64>, input: &AnalysisInput) -> Result<()> {
        input.check(ens, "pf")?;
        let n_mem = ens.nrows();
        let n = input.domain.n_global;
        if !input.domain.whole {
            return Err(GendaError::invalid(
                "parallel.domains",
                "the particle filter's jitter uses the whole state's covariance; run it with one domain",
            ));
        }
        if self.w.len() != n_mem {
            return Err(GendaError::Dimension {
                what: "pf: weights vs members".into(),
                expected: self.w.len(),
                got: n_mem,
            });
        }
        let h = input.obs_operator;
        let p = h.obs_dim();
        // log-likelihoods, summed per tile then over tiles in global order.
        let obs_tiles = input.domain.obs_per_tile(h.locations());
        let mut y = vec![0.0; p];
        let mut partials = vec![0.0; obs_tiles.len() * n_mem];
        for (m, x) in ens.rows().into_iter().enumerate() {
            h.apply(x.as_slice().expect("contiguous"), &mut y);
            for (t, range) in obs_tiles.iter().enumerate() {
                partials[t * n_mem + m] = -0.5
                    * range
                        .clone()
                        .map(|j| (input.obs[j] - y[j]).powi(2) / input.obs_error_var[j])
                        .sum::<f64>();
            }
        }
        let log_l = input.reducer.sum_tiles(&partials, n_mem)?;
        let draws = pf_draws(&self.cfg, input.seed, input.cycle, n_mem, n);
        let out = pf_analysis(&self.cfg, ens, &self.w, &log_l, &draws)?;
        self.assessed = out.posterior;
        self.w = out.weights;
        self.last_ess = out.ess;
        self.last_resampled = out.resampled;
        Ok(())
    }

    fn weights(&self) -> Option<&[f64]> {
        Some(&self.w)
    }

    fn needs(&self, _n_global: usize) -> Needs {
        Needs {
            whole_state: Some("its jitter uses the full covariance"),
            ..Needs::default()
        }
    }

    fn analysis_sample(&self) -> Option<(ndarray::ArrayView2<'_, f64>, &[f64])> {
        // Without a resampling the ensemble itself is the weighted analysis sample.
        self.assessed.as_ref().map(|(e, w)| (e.view(), &w[..]))
    }

    fn save_state(&self) -> Result<SavedState> {
        let mut s = SavedState::new();
        s.put("weights", self.w.clone());
        Ok(s)
    }

    fn restore_state(&mut self, mut state: SavedState) -> Result<()> {
        self.w = state.take_len("weights", self.w.len())?;
        state.finish("pf")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::obs::PointObs;

    #[test]
    fn systematic_resampling_counts() {
        let w = [0.1, 0.0, 0.6, 0.3];
        let idx = systematic_resample(&w, 0.5);
        // Each particle appears floor or ceil of N·w times.
        for (j, wj) in w.iter().enumerate() {
            let c = idx.iter().filter(|&&k| k == j).count() as f64;
            assert!((c - 4.0 * wj).abs() < 1.0, "particle {j}: {c}");
        }
        assert_eq!(systematic_resample(&[1.0, 0.0, 0.0], 0.99), vec![0, 0, 0]);
        // Residual: the integer parts first, in index order.
        let r = residual_resample(&[0.5, 0.25, 0.25, 0.0], &[0.9, 0.1, 0.1, 0.1]);
        assert_eq!(r, vec![0, 0, 1, 2]);
        assert_eq!(duplicated(&[0, 0, 1, 2]), vec![true, true, false, false]);
        assert_eq!(duplicated(&[1, 2, 3, 1]), vec![true, false, false, true]);
    }

    #[test]
    fn weights_are_carried_and_resampling_waits_for_the_threshold() {
        let cfg = PfConfig {
            members: 4,
            regularization: 0.0,
            ner: 0.5,
            resampling: Resampling::Systematic,
            jitter: Jitter::Dapper,
            jitter_duplicates_only: true,
        };
        let mut ens = Array2::from_shape_fn((4, 1), |(m, _)| m as f64);
        let draws = PfDraws {
            uniforms: vec![0.5],
            jitter: vec![0.0; 4],
            jitter_dim: 4,
        };
        // Mild likelihood: N_eff stays above N/2, no resampling, weights ∝ L.
        let l = [0.0, -0.1, -0.2, -0.3];
        let out = pf_analysis(&cfg, &mut ens, &[0.25; 4], &l, &draws).unwrap();
        assert!(!out.resampled);
        let z: f64 = l.iter().map(|v: &f64| v.exp()).sum();
        for (w, v) in out.weights.iter().zip(&l) {
            assert!((w - v.exp() / z).abs() < 1e-15);
        }
        assert_eq!(ens.column(0).to_vec(), vec![0.0, 1.0, 2.0, 3.0]);
        // The next cycle multiplies the carried weights; a sharp likelihood resamples.
        let out = pf_analysis(
            &cfg,
            &mut ens,
            &out.weights,
            &[0.0, -9.0, -9.0, -9.0],
            &draws,
        )
        .unwrap();
        assert!(out.resampled && out.ess < 2.0);
        assert_eq!(out.weights, vec![0.25; 4]);
        assert_eq!(ens.column(0).to_vec(), vec![0.0; 4]);
    }

    /// Gaussian prior N(0, 1) per variable, linear obs of variable 0 with R = 0.5: the posterior
    /// mean is y/(1 + 0.5) and the variance 1/(1 + 2) — reproduced with many particles, from the
    /// weights (no resampling) and after resampling.
    #[test]
    fn posterior_moments_with_many_particles() {
        let (n_mem, n) = (20000, 2);
        let prior = || {
            let mut ens = Array2::zeros((n_mem, n));
            let mut z = vec![0.0; n];
            for m in 0..n_mem {
                fill_standard_normal(5, Purpose::EnsembleInit, 0, m as u64, 0, &mut z);
                ens[[m, 0]] = z[0];
                ens[[m, 1]] = z[1];
            }
            ens
        };
        let h = PointObs::new(n, vec![0], false);
        let input = AnalysisInput::whole(&[1.2], &h, &[0.5], 1, 3);
        for ner in [0.1, 1.0] {
            let mut ens = prior();
            let mut pf = ParticleFilter::new(PfConfig {
                members: n_mem,
                regularization: 0.0,
                ner,
                resampling: Resampling::Systematic,
                jitter: Jitter::Dapper,
                jitter_duplicates_only: true,
            });
            pf.analyse(&mut ens, &input).unwrap();
            assert_eq!(pf.last_resampled, ner == 1.0);
            let w = pf.weights().unwrap();
            let mean: f64 = ens.column(0).iter().zip(w).map(|(x, w)| w * x).sum();
            let var: f64 = ens
                .column(0)
                .iter()
                .zip(w)
                .map(|(x, w)| w * (x - mean).powi(2))
                .sum::<f64>()
                * unbias_var(w, true);
            assert!((mean - 0.8).abs() < 0.03, "ner {ner}: mean {mean}");
            assert!((var - 1.0 / 3.0).abs() < 0.03, "ner {ner}: var {var}");
            assert!(pf.last_ess > 0.3 * n_mem as f64 && pf.last_ess < n_mem as f64);
        }
    }

    #[test]
    fn jitter_has_the_weighted_covariance() {
        // Equal weights, jitter every particle: the added noise D·C12 has covariance
        // reg²·bw²·(sample covariance) whichever of the two sampling forms is used.
        for (n_mem, d) in [(6, 4), (200, 2)] {
            let cfg = PfConfig {
                members: n_mem,
                regularization: 1.0,
                ner: 1.0,
                resampling: Resampling::Systematic,
                jitter: Jitter::Dapper,
                jitter_duplicates_only: false,
            };
            let base = Array2::from_shape_fn((n_mem, d), |(m, j)| {
                ((m * 7 + j * 3) as f64 * 0.37).sin() + j as f64
            });
            let c = raw_c12(base.view(), &vec![1.0 / n_mem as f64; n_mem]);
            let cov = c.t().dot(&c);
            let jd = if jitter_in_state_space(n_mem, d) {
                d
            } else {
                n_mem
            };
            assert_eq!(jd == d, n_mem == 200);
            let reps = 4000;
            let mut acc = Array2::<f64>::zeros((d, d));
            for r in 0..reps {
                let mut ens = base.clone();
                let mut draws = pf_draws(&cfg, r as u64, 1, n_mem, d);
                draws.uniforms = vec![0.5];
                // Unequal weights force the resampling; equal ones keep every particle.
                let mut w = vec![1.0 / n_mem as f64; n_mem];
                w[0] *= 1.001;
                let z: f64 = w.iter().sum();
                w.iter_mut().for_each(|v| *v /= z);
                pf_analysis(&cfg, &mut ens, &w, &vec![0.0; n_mem], &draws).unwrap();
                let e = &ens - &base;
                acc += &e.t().dot(&e);
            }
            let bw2 = (n_mem as f64).powf(-2.0 / (d as f64 + 4.0));
            let got = acc / (reps * n_mem) as f64;
            for i in 0..d {
                for j in 0..d {
                    let want = bw2 * cov[[i, j]];
                    assert!(
                        (got[[i, j]] - want).abs() < 0.1 * bw2 * cov[[i, i]].max(cov[[j, j]]),
                        "N {n_mem}, d {d}: cov[{i},{j}] {} vs {want}",
                        got[[i, j]]
                    );
                }
            }
        }
    }
}
