//! The `[posterior]` table: `genda posterior`'s methods, ensemble sizes, seeds and reference
//! sampler.
use crate::error::{GendaError, Result};
use crate::filters::FilterConfig;
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct PosteriorConfig {
    /// Ensemble sizes N.
    #[serde(default = "d_members")]
    pub members: Vec<usize>,
    #[serde(default = "d_seeds")]
    pub seeds: Vec<u64>,
    /// Model steps the initial draws are pushed to make the prior (default: obs_every).
    #[serde(default)]
    pub prior_steps: Option<usize>,
    /// Prior particles of the importance-sampling reference.
    #[serde(default = "d_particles")]
    pub reference_particles: usize,
    /// Effective sample size below which importance sampling gives way to MCMC.
    #[serde(default = "d_min_ess")]
    pub min_ess: f64,
    /// Points of the reference sample the analyses are compared with (rounded to k·N).
    #[serde(default = "d_sample")]
    pub reference_sample: usize,
    /// MCMC thinning and burn-in (iterations).
    #[serde(default = "d_thin")]
    pub mcmc_thin: usize,
    #[serde(default = "d_burn")]
    pub mcmc_burn_in: usize,
    /// Independent chains, started from importance-resampled initial conditions.
    #[serde(default = "d_chains")]
    pub mcmc_chains: usize,
    /// The methods: `[filter]` tables without `members` (set from `members`), each with an
    /// optional `label`.
    pub methods: Vec<toml::Table>,
}

fn d_members() -> Vec<usize> {
    vec![10, 25, 50, 100, 250]
}
fn d_seeds() -> Vec<u64> {
    vec![1, 2, 3, 4, 5]
}
fn d_particles() -> usize {
    100_000
}
fn d_min_ess() -> f64 {
    1000.0
}
fn d_sample() -> usize {
    1000
}
fn d_thin() -> usize {
    20
}
fn d_burn() -> usize {
    5000
}
fn d_chains() -> usize {
    16
}

impl PosteriorConfig {
    /// (label, method config with `members` = m) of every listed method.
    pub fn method_configs(&self, m: usize) -> Result<Vec<(String, FilterConfig)>> {
        self.methods
            .iter()
            .enumerate()
            .map(|(i, t)| {
                let mut t = t.clone();
                let label = match t.remove("label") {
                    Some(toml::Value::String(s)) => Some(s),
                    Some(_) => {
                        return Err(GendaError::invalid(
                            format!("posterior.methods[{i}].label"),
                            "must be a string",
                        ))
                    }
                    None => None,
                };
                if t.contains_key("members") {
                    return Err(GendaError::invalid(
                        format!("posterior.methods[{i}].members"),
                        "is set from posterior.members; remove it",
                    ));
                }
                t.insert("members".into(), toml::Value::Integer(m as i64));
                let fc: FilterConfig = toml::Value::Table(t).try_into().map_err(|e| {
                    GendaError::invalid(format!("posterior.methods[{i}]"), e.to_string())
                })?;
                fc.validate()?;
                let label = label.unwrap_or_else(|| fc.name().to_string());
                Ok((label, fc))
            })
            .collect()
    }

    pub fn validate(&self) -> Result<()> {
        if self.members.is_empty() || self.members.iter().any(|&m| m < 2) {
            return Err(GendaError::invalid("posterior.members", "needs sizes >= 2"));
        }
        if self.seeds.is_empty() || self.methods.is_empty() {
            return Err(GendaError::invalid(
                "posterior",
                "needs at least one seed and one method",
            ));
        }
        if self.reference_particles < 1000 || self.reference_sample < 2 || self.mcmc_thin == 0 {
            return Err(GendaError::invalid(
                "posterior",
                "reference_particles >= 1000, reference_sample >= 2, mcmc_thin >= 1",
            ));
        }
        for &m in &self.members {
            self.method_configs(m)?;
        }
        Ok(())
    }
}
