//! Bootstrap particle filter (Gordon et al. 1993): weights from the observation likelihood
//! (any h, including arctan), systematic resampling every cycle, optional regularisation
//! (Gaussian jitter scaled by Silverman's bandwidth and the weighted ensemble spread, as in the
//! regularised PF of Musso et al. 2001). Resampling every cycle keeps the filter stateless, so
//! checkpoints and restarts need nothing beyond the ensemble.
//!
//! The resampling uniform is keyed by (seed, Resampling, cycle) and the jitter by
//! (seed, Jitter, cycle, member): the same analysis on any rank count.
use super::{AnalysisInput, Filter};
use crate::error::{GendaError, Result};
use crate::rng::{fill_standard_normal, stream, Purpose};
use ndarray::Array2;
use rand::Rng;
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct PfConfig {
    pub members: usize,
    /// Jitter scale relative to Silverman's bandwidth × weighted std per variable (0: none).
    #[serde(default)]
    pub regularization: f64,
}

pub struct ParticleFilter {
    cfg: PfConfig,
    /// Effective sample size of the last analysis (before resampling), for diagnostics.
    pub last_ess: f64,
}

impl ParticleFilter {
    pub fn new(cfg: PfConfig) -> Self {
        ParticleFilter {
            cfg,
            last_ess: f64::NAN,
        }
    }
}

/// Indices chosen by systematic resampling of normalised weights `w` with offset u ∈ [0, 1).
pub fn systematic_resample(w: &[f64], u: f64) -> Vec<usize> {
    let n = w.len();
    let mut idx = Vec::with_capacity(n);
    let mut cum = w[0];
    let mut j = 0;
    for k in 0..n {
        let pos = (u + k as f64) / n as f64;
        while pos > cum && j + 1 < n {
            j += 1;
            cum += w[j];
        }
        idx.push(j);
    }
    idx
}

impl Filter for ParticleFilter {
    fn name(&self) -> &'static str {
        "pf"
    }

    fn analyse(&mut self, ens: &mut Array2<f64>, input: &AnalysisInput) -> Result<()> {
        input.check(ens, "pf")?;
        let (n_mem, n_loc) = ens.dim();
        let n = input.domain.n_global;
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
        let logw = input.reducer.sum_tiles(&partials, n_mem)?;
        let mx = logw.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
        if !mx.is_finite() {
            return Err(GendaError::LinAlg(
                "particle filter: every particle has zero or undefined likelihood".into(),
            ));
        }
        let mut w: Vec<f64> = logw.iter().map(|l| (l - mx).exp()).collect();
        let z: f64 = w.iter().sum();
        w.iter_mut().for_each(|v| *v /= z);
        self.last_ess = 1.0 / w.iter().map(|v| v * v).sum::<f64>();
        // Weighted std per variable (before resampling) for the regularisation jitter.
        let sd: Vec<f64> = if self.cfg.regularization > 0.0 {
            (0..n_loc)
                .map(|i| {
                    let mean: f64 = (0..n_mem).map(|m| w[m] * ens[[m, i]]).sum();
                    (0..n_mem)
                        .map(|m| w[m] * (ens[[m, i]] - mean).powi(2))
                        .sum::<f64>()
                        .sqrt()
                })
                .collect()
        } else {
            Vec::new()
        };
        let u: f64 = stream(input.seed, Purpose::Resampling, input.cycle as u64, 0, 0).gen();
        let idx = systematic_resample(&w, u);
        let old = ens.clone();
        for (m, &j) in idx.iter().enumerate() {
            ens.row_mut(m).assign(&old.row(j));
        }
        if self.cfg.regularization > 0.0 {
            // Silverman's rule for a Gaussian kernel in n dimensions.
            let hopt = (4.0 / ((n as f64 + 2.0) * n_mem as f64)).powf(1.0 / (n as f64 + 4.0));
            let own = input.domain.own.clone();
            let start = input.domain.global(own.start);
            let mut jitter = vec![0.0; own.len()];
            for (m, mut row) in ens.rows_mut().into_iter().enumerate() {
                fill_standard_normal(
                    input.seed,
                    Purpose::Jitter,
                    input.cycle as u64,
                    m as u64,
                    start,
                    &mut jitter,
                );
                for (i, z) in own.clone().zip(&jitter) {
                    row[i] += self.cfg.regularization * hopt * sd[i] * z;
                }
            }
        }
        Ok(())
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
    }

    /// Gaussian prior N(0, 1) per variable, linear obs of variable 0 with R = 0.5: the posterior
    /// mean is y/(1 + 0.5) and the variance 1/(1 + 2) — reproduced with many particles.
    #[test]
    fn posterior_moments_with_many_particles() {
        let (n_mem, n) = (20000, 2);
        let mut ens = Array2::zeros((n_mem, n));
        let mut z = vec![0.0; n];
        for m in 0..n_mem {
            fill_standard_normal(5, Purpose::EnsembleInit, 0, m as u64, 0, &mut z);
            ens[[m, 0]] = z[0];
            ens[[m, 1]] = z[1];
        }
        let h = PointObs::new(n, vec![0], false);
        let input = AnalysisInput::whole(&[1.2], &h, &[0.5], 1, 3);
        let mut pf = ParticleFilter::new(PfConfig {
            members: n_mem,
            regularization: 0.0,
        });
        pf.analyse(&mut ens, &input).unwrap();
        let mean: f64 = ens.column(0).sum() / n_mem as f64;
        let var: f64 = ens
            .column(0)
            .iter()
            .map(|x| (x - mean).powi(2))
            .sum::<f64>()
            / (n_mem as f64 - 1.0);
        assert!((mean - 0.8).abs() < 0.03, "mean {mean}");
        assert!((var - 1.0 / 3.0).abs() < 0.03, "var {var}");
        assert!(pf.last_ess > 0.3 * n_mem as f64 && pf.last_ess < n_mem as f64);
    }
}
