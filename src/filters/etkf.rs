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
        // b = S R^{-1/2}(y − ȳ), formed per tile from S and the scaled innovation.
        let n_mem = ens.nrows();
        let (es, b) = EnsembleSpace::new_with(ens, input, n_mem, &|s, _, ym, range, out| {
            let dy: Array1<f64> = range
                .clone()
                .map(|j| (input.obs[j] - ym[j]) / input.obs_error_var[j].sqrt())
                .collect();
            let bt = s.slice(ndarray::s![.., range]).dot(&dy);
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
