//! DAISI (Andrae et al. 2025): data assimilation with inverse sampling using stochastic
//! interpolants. (Work in progress: being filled in.)
use super::{AnalysisInput, Filter};
use crate::error::{GendaError, Result};
use ndarray::Array2;
use serde::{Deserialize, Serialize};
use std::path::PathBuf;

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct DaisiConfig {
    pub members: usize,
    /// Prior network weights written by `genda train` (interpolant process).
    pub weights: PathBuf,
}

impl DaisiConfig {
    pub fn validate(&self) -> Result<()> {
        Ok(())
    }
}

pub struct Daisi {
    #[allow(dead_code)]
    cfg: DaisiConfig,
}

impl Daisi {
    pub fn new(cfg: DaisiConfig) -> Self {
        Daisi { cfg }
    }
}

impl Filter for Daisi {
    fn name(&self) -> &'static str {
        "daisi"
    }

    fn analyse(&mut self, _ens: &mut Array2<f64>, _input: &AnalysisInput) -> Result<()> {
        Err(GendaError::Score("daisi: not built yet".into()))
    }
}
