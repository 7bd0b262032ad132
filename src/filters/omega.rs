//! Ω: conditional-Gaussian mixture + residual score + annealed Langevin.
//! (Work in progress.)
use super::{AnalysisInput, Filter};
use crate::error::{GendaError, Result};
use ndarray::Array2;
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct OmegaConfig {
    pub members: usize,
}

impl OmegaConfig {
    pub fn validate(&self) -> Result<()> {
        Ok(())
    }
}

pub struct Omega {
    #[allow(dead_code)]
    cfg: OmegaConfig,
}

impl Omega {
    pub fn new(cfg: OmegaConfig) -> Self {
        Omega { cfg }
    }
}

impl Filter for Omega {
    fn name(&self) -> &'static str {
        "omega"
    }

    fn analyse(&mut self, _ens: &mut Array2<f64>, _input: &AnalysisInput) -> Result<()> {
        Err(GendaError::Score("omega: not built yet".into()))
    }
}
