//! `SavedState`: named arrays of numbers, what a component (a filter, its networks and their
//! optimisers) hands to a checkpoint and takes back at a restart. A shared value type with no
//! dependencies, so that `filters` and `score` can fill it without knowing the checkpoint file.
//!
//! Names are dotted paths (`net.layer0.weight`, `adam.m.3`); a part nested with `nest` is
//! prefixed by its owner's name. Every value is an f64, which holds f32 network weights, step
//! counts and indices (< 2^53) exactly. Restoring takes each named part out and fails with the
//! name of anything missing or of the wrong size, and `finish` refuses parts nobody took (a
//! checkpoint of another method or network).
use crate::error::{GendaError, Result};

#[derive(Debug, Clone, Default, PartialEq)]
pub struct SavedState {
    parts: Vec<(String, Vec<f64>)>,
}

fn bad(msg: String) -> GendaError {
    GendaError::invalid("checkpoint", msg)
}

impl SavedState {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn from_parts(parts: Vec<(String, Vec<f64>)>) -> Self {
        SavedState { parts }
    }

    pub fn parts(&self) -> &[(String, Vec<f64>)] {
        &self.parts
    }

    pub fn is_empty(&self) -> bool {
        self.parts.is_empty()
    }

    pub fn put(&mut self, name: impl Into<String>, values: Vec<f64>) {
        self.parts.push((name.into(), values));
    }

    pub fn put_scalar(&mut self, name: impl Into<String>, value: f64) {
        self.put(name, vec![value]);
    }

    /// Add every part of `inner` under `prefix.`.
    pub fn nest(&mut self, prefix: &str, inner: SavedState) {
        for (n, v) in inner.parts {
            self.parts.push((format!("{prefix}.{n}"), v));
        }
    }

    /// Take the parts under `prefix.` out (names without the prefix).
    pub fn take_nested(&mut self, prefix: &str) -> SavedState {
        let p = format!("{prefix}.");
        let (inner, rest): (Vec<_>, Vec<_>) = std::mem::take(&mut self.parts)
            .into_iter()
            .partition(|(n, _)| n.starts_with(&p));
        self.parts = rest;
        SavedState {
            parts: inner
                .into_iter()
                .map(|(n, v)| (n[p.len()..].to_string(), v))
                .collect(),
        }
    }

    pub fn has(&self, name: &str) -> bool {
        self.parts.iter().any(|(n, _)| n == name)
    }

    /// Take part `name` out; an error names it when it is missing.
    pub fn take(&mut self, name: &str) -> Result<Vec<f64>> {
        match self.parts.iter().position(|(n, _)| n == name) {
            Some(i) => Ok(self.parts.remove(i).1),
            None => Err(bad(format!("has no `{name}`"))),
        }
    }

    /// Take part `name`, which must hold `len` values.
    pub fn take_len(&mut self, name: &str, len: usize) -> Result<Vec<f64>> {
        let v = self.take(name)?;
        if v.len() != len {
            return Err(bad(format!(
                "`{name}` has {} values, this run needs {len}",
                v.len()
            )));
        }
        Ok(v)
    }

    pub fn take_scalar(&mut self, name: &str) -> Result<f64> {
        Ok(self.take_len(name, 1)?[0])
    }

    /// A count or index stored as f64.
    pub fn take_usize(&mut self, name: &str) -> Result<usize> {
        let v = self.take_scalar(name)?;
        if v >= 0.0 && v.fract() == 0.0 && v < 9.0e15 {
            Ok(v as usize)
        } else {
            Err(bad(format!("`{name}` = {v} is not a count")))
        }
    }

    /// Every part was taken; `who` names the component in the error otherwise.
    pub fn finish(self, who: &str) -> Result<()> {
        if self.parts.is_empty() {
            Ok(())
        } else {
            let names: Vec<&str> = self.parts.iter().map(|(n, _)| n.as_str()).take(4).collect();
            Err(bad(format!(
                "holds {} part(s) of state that {who} does not keep ({}{})",
                self.parts.len(),
                names.join(", "),
                if self.parts.len() > 4 { ", …" } else { "" }
            )))
        }
    }
}

/// usize values as f64 (exact below 2^53).
pub fn usizes(v: &[usize]) -> Vec<f64> {
    v.iter().map(|&k| k as f64).collect()
}

/// f64 values back to usize; an error names `what` for anything that is not a count.
pub fn to_usizes(v: &[f64], what: &str) -> Result<Vec<usize>> {
    v.iter()
        .map(|&x| {
            if x >= 0.0 && x.fract() == 0.0 && x < 9.0e15 {
                Ok(x as usize)
            } else {
                Err(bad(format!(
                    "filter state `{what}` holds {x}, not an index"
                )))
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nested_parts_round_trip_and_leftovers_are_refused() {
        let mut inner = SavedState::new();
        inner.put("w", vec![1.0, 2.0]);
        inner.put_scalar("steps", 3.0);
        let mut s = SavedState::new();
        s.nest("net", inner.clone());
        s.put_scalar("flag", 1.0);
        assert!(s.has("net.w"));
        let mut back = s.take_nested("net");
        assert_eq!(back, inner);
        assert_eq!(back.take_len("w", 2).unwrap(), vec![1.0, 2.0]);
        assert_eq!(back.take_usize("steps").unwrap(), 3);
        back.finish("net").unwrap();
        let err = s.clone().finish("etkf").unwrap_err().to_string();
        assert!(err.contains("flag") && err.contains("etkf"), "{err}");
        assert!(s.take_len("flag", 2).is_err());
        assert!(s
            .take("missing")
            .unwrap_err()
            .to_string()
            .contains("missing"));
        assert!(to_usizes(&[1.0, 0.5], "idx").is_err());
    }
}
