//! Stochastic EnKF with perturbed observations (Burgers et al. 1998; DAPPER's
//! `EnKF('PertObs')`). Member i is updated with the innovation y − εᵢ − h(xᵢ), where the
//! perturbations εᵢ ~ N(0, R) are drawn from member-keyed streams, centred (so the analysis
//! mean is unbiased) and rescaled by √(N/(N−1)) as DAPPER's `mean0`. The gain is applied in ensemble space:
//!   Eᵃ = E + B C⁻¹ A,   B_ij = (innovᵢ R^{-1/2}) · S_j,   C = S Sᵀ + (N−1) I.
use super::core::{inflate, EnsembleSpace};
use super::{AnalysisInput, Filter};
use crate::error::Result;
use crate::rng::{fill_standard_normal, Purpose};
use ndarray::{Array2, Axis};
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct EnkfConfig {
    /// Observation perturbations: `dapper` — centred and rescaled by √(N/(N−1)) (DAPPER's
    /// `mean0`, the default); `centred` — centred only (genda's former variant).
    #[serde(default)]
    pub perturbations: Perturbations,
    pub members: usize,
    /// Multiplicative inflation of the analysis anomalies.
    #[serde(default = "unit")]
    pub inflation: f64,
}

fn unit() -> f64 {
    1.0
}

pub struct Enkf {
    cfg: EnkfConfig,
}

impl Enkf {
    pub fn new(cfg: EnkfConfig) -> Self {
        Enkf { cfg }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Perturbations {
    #[default]
    Dapper,
    Centred,
}

impl Filter for Enkf {
    fn name(&self) -> &'static str {
        "enkf"
    }

    fn analyse(&mut self, ens: &mut Array2<f64>, input: &AnalysisInput) -> Result<()> {
        input.check(ens, "enkf")?;
        let (n_mem, p) = (ens.nrows(), input.obs_operator.obs_dim());
        // Perturbations keyed by (cycle, member, global observation index): the same numbers
        // whichever rank holds the observation.
        let mut z = Array2::zeros((n_mem, p));
        for (i, mut row) in z.rows_mut().into_iter().enumerate() {
            let out = row.as_slice_mut().expect("fresh array is contiguous");
            fill_standard_normal(
                input.seed,
                Purpose::ObsPerturbation,
                input.cycle as u64,
                i as u64,
                input.obs_offset,
                out,
            );
        }
        let zmean = z.mean_axis(Axis(0)).expect("members > 0");
        z -= &zmean.view().insert_axis(Axis(0));
        if self.cfg.perturbations == Perturbations::Dapper {
            // DAPPER's `mean0` = `center(D, rescale=True)`: centred, then × √(N/(N−1)) so
            // that the perturbations' sample variance is R again.
            z *= (n_mem as f64 / (n_mem as f64 - 1.0)).sqrt();
        }
        // B = innov Sᵀ (N×N), summed per tile; innov = R^{-1/2}(y − h(x_i)) − z_i.
        let (es, b) =
            EnsembleSpace::new_with(ens, input, n_mem * n_mem, &|s, hx, _, range, out| {
                let innov = Array2::from_shape_fn((n_mem, range.len()), |(i, k)| {
                    let j = range.start + k;
                    (input.obs[j] - hx[[i, j]]) / input.obs_error_var[j].sqrt() - z[[i, j]]
                });
                let bt = innov.dot(&s.slice(ndarray::s![.., range]).t());
                out.copy_from_slice(bt.as_slice().expect("fresh array"));
            })?;
        let b = Array2::from_shape_vec((n_mem, n_mem), b).expect("N×N");
        let g = b.dot(&es.spectral(|d| 1.0 / d));
        *ens += &g.dot(&es.anomalies);
        inflate(ens, self.cfg.inflation);
        Ok(())
    }
}
