//! Stochastic EnKF with perturbed observations (Burgers et al. 1998; DAPPER's
//! `EnKF('PertObs')`). Member i is updated with the innovation y − εᵢ − h(xᵢ), where the
//! perturbations εᵢ ~ N(0, R) are drawn from member-keyed streams, centred (so the analysis
//! mean is unbiased) and rescaled by √(N/(N−1)) as DAPPER's `mean0`; the MASF code's EnKF
//! (`perturbations = "raw"`, `perturbation_draws = "fixed"`, `inflate = "forecast"`) uses them
//! as drawn, the same draws at every analysis, and inflates the forecast anomalies first.
//! The gain is applied in ensemble space:
//!   Eᵃ = E + B C⁻¹ A,   B_ij = (innovᵢ R^{-1/2}) · S_j,   C = S Sᵀ + (N−1) I.
use super::core::{inflate, EnsembleSpace, InflateAt};
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
    /// Which cycle keys the perturbation draws: `per_cycle` (default, fresh draws every
    /// analysis) or `fixed` (the draws of cycle 1 at every analysis: the MASF code rebuilds its
    /// generator with the same seed at each one).
    #[serde(default, skip_serializing_if = "PerturbationDraws::is_default")]
    pub perturbation_draws: PerturbationDraws,
    pub members: usize,
    /// Multiplicative inflation of the analysis anomalies (or of the forecast's: `inflate`).
    #[serde(default = "unit")]
    pub inflation: f64,
    /// Where the inflation applies: the analysis anomalies (default) or the forecast's.
    #[serde(default, skip_serializing_if = "InflateAt::is_default")]
    pub inflate: InflateAt,
    /// Added to R's diagonal in the gain only (the MASF code's `+ 1e-6` in S = P_yy + R); the
    /// perturbations keep R. Default 0.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub gain_jitter: f64,
}

fn is_zero(v: &f64) -> bool {
    *v == 0.0
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum PerturbationDraws {
    #[default]
    PerCycle,
    Fixed,
}

impl PerturbationDraws {
    fn is_default(&self) -> bool {
        *self == PerturbationDraws::PerCycle
    }
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
    /// As drawn, neither centred nor rescaled, added to y (the MASF code's `enkf_update`:
    /// z̃ = z + σ ξ).
    Raw,
}

impl Filter for Enkf {
    fn name(&self) -> &'static str {
        "enkf"
    }

    fn analyse(&mut self, ens: &mut Array2<f64>, input: &AnalysisInput) -> Result<()> {
        input.check(ens, "enkf")?;
        if self.cfg.inflate == InflateAt::Forecast {
            inflate(ens, self.cfg.inflation);
        }
        let (n_mem, p) = (ens.nrows(), input.obs_operator.obs_dim());
        let cycle = match self.cfg.perturbation_draws {
            PerturbationDraws::PerCycle => input.cycle as u64,
            PerturbationDraws::Fixed => 1,
        };
        // Perturbations keyed by (cycle, member, global observation index): the same numbers
        // whichever rank holds the observation.
        let mut z = Array2::zeros((n_mem, p));
        for (i, mut row) in z.rows_mut().into_iter().enumerate() {
            let out = row.as_slice_mut().expect("fresh array is contiguous");
            fill_standard_normal(
                input.seed,
                Purpose::ObsPerturbation,
                cycle,
                i as u64,
                input.obs_offset,
                out,
            );
        }
        if self.cfg.perturbations == Perturbations::Raw {
            // The MASF code perturbs y + ε; the update below forms y − z.
            z.mapv_inplace(|v| -v);
        } else {
            let zmean = z.mean_axis(Axis(0)).expect("members > 0");
            z -= &zmean.view().insert_axis(Axis(0));
        }
        if self.cfg.perturbations == Perturbations::Dapper {
            // DAPPER's `mean0` = `center(D, rescale=True)`: centred, then × √(N/(N−1)) so
            // that the perturbations' sample variance is R again.
            z *= (n_mem as f64 / (n_mem as f64 - 1.0)).sqrt();
        }
        // The gain's R (R + gain_jitter) in the whitening: S = R_g^{-1/2} Y and
        // innov = R_g^{-1/2}(y − h(x_i) − R^{1/2} z_i); R_g = R without jitter.
        let r = input.obs_error_var;
        let rg: Vec<f64> = r.iter().map(|v| v + self.cfg.gain_jitter).collect();
        let gin = AnalysisInput {
            obs: input.obs,
            obs_operator: input.obs_operator,
            obs_error_var: &rg,
            cycle: input.cycle,
            seed: input.seed,
            obs_offset: input.obs_offset,
            domain: input.domain.clone(),
            reducer: input.reducer,
            forecast: None,
            replicas: input.replicas,
        };
        // B = innov Sᵀ (N×N), summed per tile.
        let (es, b) =
            EnsembleSpace::new_with(ens, &gin, n_mem * n_mem, &|s, hx, _, range, out| {
                let innov = Array2::from_shape_fn((n_mem, range.len()), |(i, k)| {
                    let j = range.start + k;
                    (input.obs[j] - hx[[i, j]]) / rg[j].sqrt() - z[[i, j]] * (r[j] / rg[j]).sqrt()
                });
                let bt = innov.dot(&s.slice(ndarray::s![.., range]).t());
                out.copy_from_slice(bt.as_slice().expect("fresh array"));
            })?;
        let b = Array2::from_shape_vec((n_mem, n_mem), b).expect("N×N");
        let g = b.dot(&es.spectral(|d| 1.0 / d));
        *ens += &g.dot(&es.anomalies);
        if self.cfg.inflate == InflateAt::Analysis {
            inflate(ens, self.cfg.inflation);
        }
        Ok(())
    }
}
