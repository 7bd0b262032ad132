//! Small value types shared by the config and the rooms it configures (observations, filters),
//! kept here so that those rooms do not import `config`: a number-or-list setting and the
//! stable hash genda fingerprints its files with.
use crate::error::{GendaError, Result};
use serde::{Deserialize, Serialize};

/// A value given either as one number for every component or as a full-length list.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(untagged)]
pub enum ScalarOrVec {
    Scalar(f64),
    Vector(Vec<f64>),
}

impl ScalarOrVec {
    /// Expand to `n` components; a list of any other length is an error naming `key`.
    pub fn expand(&self, n: usize, key: &str) -> Result<Vec<f64>> {
        match self {
            ScalarOrVec::Scalar(v) => Ok(vec![*v; n]),
            ScalarOrVec::Vector(v) if v.len() == n => Ok(v.clone()),
            ScalarOrVec::Vector(v) => Err(GendaError::Dimension {
                what: key.to_string(),
                expected: n,
                got: v.len(),
            }),
        }
    }
}

impl ScalarOrVec {
    /// `tile`: a list shorter than n becomes n components (the list repeated, cut at n).
    pub(crate) fn tiled(&mut self, n: usize, key: &str) -> Result<()> {
        if let ScalarOrVec::Vector(v) = self {
            if v.len() > n || v.is_empty() {
                return Err(GendaError::invalid(
                    key,
                    format!(
                        "initial.tile: a list of {} values cannot be tiled to the state dimension {n}",
                        v.len()
                    ),
                ));
            }
            *v = v.iter().copied().cycle().take(n).collect();
        }
        Ok(())
    }
}

/// 64-bit FNV-1a of a byte stream (a stable fingerprint for files genda writes and checks).
pub fn fnv1a(bytes: impl IntoIterator<Item = u8>) -> u64 {
    bytes.into_iter().fold(0xcbf2_9ce4_8422_2325, |h, b| {
        (h ^ b as u64).wrapping_mul(0x0100_0000_01b3)
    })
}
