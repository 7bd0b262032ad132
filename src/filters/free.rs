//! No assimilation: the analysis is the forecast (free-running ensemble baseline).
use super::{AnalysisInput, Filter};
use crate::error::Result;
use ndarray::Array2;
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct FreeConfig {
    pub members: usize,
}

pub struct FreeRun;

impl Filter for FreeRun {
    fn name(&self) -> &'static str {
        "none"
    }
    fn analyse(&mut self, _ens: &mut Array2<f64>, _input: &AnalysisInput) -> Result<()> {
        Ok(())
    }
}
