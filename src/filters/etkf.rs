//! Ensemble transform Kalman filter with the symmetric square root (Hunt et al. 2007;
//! DAPPER's `EnKF('Sqrt')`). With C = V D Vᵀ (see `core`):
//!   w = V D⁻¹ Vᵀ S R^{-1/2}(y − ȳ),   T = √(N−1) V D^{-1/2} Vᵀ,
//!   Eᵃ = x̄ + (1wᵀ + Ω T) A,
//! where Ω is an optional random mean-preserving rotation. T is symmetric with T1 = 1, so the
//! analysis mean is exactly x̄ + wᵀA; inflation then scales the analysis anomalies.
use super::core::{inflate, mean_preserving_rotation, EnsembleSpace};
use super::{AnalysisInput, Filter};
use crate::error::Result;
use ndarray::Array1;
use ndarray::Array2;
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct EtkfConfig {
    pub members: usize,
    /// Multiplicative inflation of the analysis anomalies.
    #[serde(default = "unit")]
    pub inflation: f64,
    /// Random mean-preserving rotation of the transform each cycle.
    #[serde(default)]
    pub rotation: bool,
}

fn unit() -> f64 {
    1.0
}

pub struct Etkf {
    cfg: EtkfConfig,
}

impl Etkf {
    pub fn new(cfg: EtkfConfig) -> Self {
        Etkf { cfg }
    }
}

impl Filter for Etkf {
    fn name(&self) -> &'static str {
        "etkf"
    }

    fn analyse(&mut self, ens: &mut Array2<f64>, input: &AnalysisInput) -> Result<()> {
        // Scaled innovation R^{-1/2}(y − ȳ) needs ȳ, which is local to each observation, so
        // b = S R^{-1/2}(y − ȳ) is formed per tile from S and the innovation.
        let obs_mean: Vec<f64> = {
            let mut ym = vec![0.0; input.obs.len()];
            let mut y = vec![0.0; input.obs.len()];
            input.check(ens, "etkf")?;
            for x in ens.rows() {
                input
                    .obs_operator
                    .apply(x.as_slice().expect("contiguous rows"), &mut y);
                ym.iter_mut().zip(&y).for_each(|(m, v)| *m += v);
            }
            ym.iter().map(|v| v / ens.nrows() as f64).collect()
        };
        let dy: Array1<f64> = input
            .obs
            .iter()
            .zip(&obs_mean)
            .zip(input.obs_error_var)
            .map(|((y, m), r)| (y - m) / r.sqrt())
            .collect();
        let n_mem = ens.nrows();
        let (es, b) = EnsembleSpace::new_with(ens, input, n_mem, &|s, range, out| {
            let bt = s
                .slice(ndarray::s![.., range.clone()])
                .dot(&dy.slice(ndarray::s![range]));
            out.copy_from_slice(bt.as_slice().expect("fresh array"));
        })?;
        let b = Array1::from(b);
        let w = es.spectral(|d| 1.0 / d).dot(&b);
        let n1 = (n_mem - 1) as f64;
        let mut g = es.spectral(|d| (n1 / d).sqrt());
        if self.cfg.rotation {
            // Rotate the analysis anomalies T·A (rows = members), i.e. left-multiply: Ω T.
            g = mean_preserving_rotation(n_mem, input.seed, input.cycle).dot(&g);
        }
        for mut row in g.rows_mut() {
            row += &w;
        }
        *ens = es.combine(&g);
        inflate(ens, self.cfg.inflation);
        Ok(())
    }
}
