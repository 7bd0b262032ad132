//! Observation operators y = h(x) + ε, ε ~ N(0, R) with diagonal R.
use crate::error::{GendaError, Result};
use crate::values::ScalarOrVec;
use serde::{Deserialize, Serialize};

/// An observation operator on the global state.
pub trait ObsOperator: Send + Sync {
    fn state_dim(&self) -> usize;
    fn obs_dim(&self) -> usize;
    /// y = h(x).   x: (state_dim), y: (obs_dim)
    fn apply(&self, x: &[f64], y: &mut [f64]);
    /// out = J_h(x)ᵀ v — the adjoint, for likelihood scores ∇ₓ log p(y|x).   v: (obs_dim), out: (state_dim)
    fn adjoint(&self, x: &[f64], v: &[f64], out: &mut [f64]);
    /// Whether h is linear (then ETKF is exact for Gaussian priors).
    fn is_linear(&self) -> bool;
    /// State index each observation looks at (for localisation and output).   (obs_dim)
    fn locations(&self) -> &[usize];
    /// When each observation is a pointwise transform of the one variable it looks at:
    /// that transform (device implementations of the likelihood use it).
    fn pointwise(&self) -> Option<Transform> {
        None
    }
}

/// Pointwise transform applied to observed components.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ObsKind {
    /// Every state variable, y = x.
    Identity,
    /// Every `stride`-th variable from `offset`, y = x[idx].
    Sparse,
    /// arctan of every `stride`-th variable, y = arctan(x[idx]) (the nonlinear operator of the
    /// score-filter literature, e.g. Bao et al. 2024).
    Arctan,
    /// Square of every `stride`-th variable, y = x[idx]² (sign-blind: a bimodal likelihood).
    Quadratic,
    /// 2-D models: the mean over each `grid_stride` × `grid_stride` block of the grid
    /// (coarse-grained observations, located at the block centre for localisation).
    Coarse,
}

/// Pointwise transform of an observed component.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Transform {
    Linear,
    Arctan,
    Square,
    /// Mean over the k × k block centred on the location (grid side `side`).
    BlockMean {
        k: usize,
        side: usize,
    },
}

impl Transform {
    #[inline]
    fn apply(self, x: f64) -> f64 {
        match self {
            Transform::Linear => x,
            Transform::Arctan => x.atan(),
            Transform::Square => x * x,
            Transform::BlockMean { .. } => x,
        }
    }
    #[inline]
    fn derivative(self, x: f64) -> f64 {
        match self {
            Transform::Linear => 1.0,
            Transform::Arctan => 1.0 / (1.0 + x * x),
            Transform::Square => 2.0 * x,
            Transform::BlockMean { .. } => 1.0,
        }
    }
}

impl ObsConfig {
    pub fn transform(&self, state_dim: usize) -> Transform {
        match self.operator {
            ObsKind::Identity | ObsKind::Sparse => Transform::Linear,
            ObsKind::Arctan => Transform::Arctan,
            ObsKind::Quadratic => Transform::Square,
            ObsKind::Coarse => Transform::BlockMean {
                k: self.grid_stride.unwrap_or(1),
                side: self.side(state_dim),
            },
        }
    }
}

/// Observation settings in the config.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct ObsConfig {
    pub operator: ObsKind,
    /// Observe every `stride`-th variable (sparse, arctan).
    #[serde(default = "one")]
    pub stride: usize,
    /// First observed variable (sparse, arctan); with `grid_stride`, the first observed column
    /// and row.
    #[serde(default)]
    pub offset: usize,
    /// 2-D models: observe every `grid_stride`-th point in each direction of the square grid
    /// (row-major (y, x) state), instead of every `stride`-th state index.
    #[serde(default)]
    pub grid_stride: Option<usize>,
    /// 2-D models with a state of several fields stacked field-major (the velocity state
    /// (u, v) of `model.state = "velocity"`: 2): `grid_stride` picks the same points of every
    /// field, the observations ordered field by field (as the MASF code's flattened mask).
    /// Must equal the model's field count when `grid_stride` is set.
    #[serde(default = "one", skip_serializing_if = "is_one")]
    pub fields: usize,
    /// 1-D: observe at most this many of the strided variables (e.g. the first K of a state
    /// [X; Y] whose X part is observed).
    #[serde(default)]
    pub count: Option<usize>,
    /// Observation-error variance: diagonal of R, one number or one per observation.
    pub error_var: ScalarOrVec,
    /// Model steps between observations; the first observation is after the first forecast.
    pub obs_every: usize,
}

fn one() -> usize {
    1
}

fn is_one(v: &usize) -> bool {
    *v == 1
}

impl ObsConfig {
    pub fn validate(&self, state_dim: usize) -> Result<()> {
        if self.obs_every == 0 {
            return Err(GendaError::invalid(
                "observations.obs_every",
                "must be at least 1 model step",
            ));
        }
        if self.stride == 0 {
            return Err(GendaError::invalid(
                "observations.stride",
                "must be at least 1",
            ));
        }
        if self.count == Some(0) || (self.count.is_some() && self.grid_stride.is_some()) {
            return Err(GendaError::invalid(
                "observations.count",
                "must be at least 1, and applies to 1-D strides (not grid_stride)",
            ));
        }
        if self.fields == 0 || state_dim % self.fields != 0 {
            return Err(GendaError::invalid(
                "observations.fields",
                format!(
                    "{} fields do not split the state (dimension {state_dim}) into equal grids",
                    self.fields
                ),
            ));
        }
        if self.fields > 1 && (self.grid_stride.is_none() || self.operator == ObsKind::Coarse) {
            return Err(GendaError::invalid(
                "observations.fields",
                "stacked fields are observed with grid_stride (sparse, arctan, quadratic), not with 1-D strides or coarse blocks",
            ));
        }
        if self.operator == ObsKind::Coarse {
            let s = self.side(state_dim);
            let ok = matches!(self.grid_stride, Some(k) if k >= 1 && s * s == state_dim && s % k == 0)
                && self.offset == 0;
            if !ok {
                return Err(GendaError::invalid(
                    "observations.operator",
                    format!("coarse needs a square 2-D grid state and grid_stride dividing its side (state dimension {state_dim}), offset 0"),
                ));
            }
        }
        if let Some(k) = self.grid_stride {
            let s = self.side(state_dim);
            if self.fields * s * s != state_dim || k == 0 || self.stride != 1 || self.offset >= s {
                return Err(GendaError::invalid(
                    "observations.grid_stride",
                    format!("needs a square 2-D grid state (got dimension {state_dim}), grid_stride >= 1, stride = 1 and offset < the grid side"),
                ));
            }
        }
        if self.offset >= state_dim {
            return Err(GendaError::invalid(
                "observations.offset",
                format!(
                    "{} is outside the state (dimension {state_dim})",
                    self.offset
                ),
            ));
        }
        if self.operator == ObsKind::Identity && (self.stride != 1 || self.offset != 0) {
            return Err(GendaError::invalid(
                "observations.operator",
                "identity observes every variable; use operator = \"sparse\" with stride/offset",
            ));
        }
        let r = self.error_variances(state_dim)?;
        if r.iter().any(|v| !(v.is_finite() && *v > 0.0)) {
            return Err(GendaError::invalid(
                "observations.error_var",
                "every variance must be positive and finite",
            ));
        }
        Ok(())
    }

    pub fn locations(&self, state_dim: usize) -> Vec<usize> {
        match self.grid_stride {
            None => (self.offset..state_dim)
                .step_by(self.stride)
                .take(self.count.unwrap_or(usize::MAX))
                .collect(),
            Some(_) => (0..state_dim)
                .filter(|&l| self.obs_index(state_dim, l).is_some())
                .collect(),
        }
    }

    /// Side of the square grid a `grid_stride` refers to (each of `fields` stacked grids).
    fn side(&self, state_dim: usize) -> usize {
        ((state_dim / self.fields.max(1)) as f64).sqrt().round() as usize
    }

    /// Diagonal of R.   (obs_dim)
    pub fn error_variances(&self, state_dim: usize) -> Result<Vec<f64>> {
        let p = self.locations(state_dim).len();
        self.error_var.expand(p, "observations.error_var")
    }

    /// Global index of the observation at state index `l`, if `l` is observed.
    pub fn obs_index(&self, state_dim: usize, l: usize) -> Option<usize> {
        match self.grid_stride {
            None => (l >= self.offset && (l - self.offset) % self.stride == 0)
                .then(|| (l - self.offset) / self.stride)
                .filter(|&j| j < self.count.unwrap_or(usize::MAX)),
            Some(k) if self.operator == ObsKind::Coarse => {
                let s = self.side(state_dim);
                let (y, x) = (l / s, l % s);
                let c = k / 2;
                (y % k == c && x % k == c).then(|| (y / k) * (s / k) + x / k)
            }
            Some(k) => {
                // Field f's grid holds state indices f·s² .. (f+1)·s²; its observations follow
                // those of the fields before it.
                let s = self.side(state_dim);
                let (f, l) = (l / (s * s), l % (s * s));
                let (y, x) = (l / s, l % s);
                let o = self.offset;
                let on = |v: usize| v >= o && (v - o) % k == 0;
                let per_row = (s - o).div_ceil(k);
                (on(x) && on(y))
                    .then(|| f * per_row * per_row + ((y - o) / k) * per_row + (x - o) / k)
            }
        }
    }

    /// Error variance of global observation `j`.
    pub fn error_var_of(&self, j: usize) -> f64 {
        match &self.error_var {
            ScalarOrVec::Scalar(v) => *v,
            ScalarOrVec::Vector(v) => v[j],
        }
    }

    /// The observations of `len` consecutive state indices from global `start` (wrapping around
    /// the periodic state of dimension `state_dim`): the operator on those columns (locations
    /// are local columns) and the global index and error variance of each observation. Built
    /// without forming the global observation set.
    pub fn build_local(&self, state_dim: usize, start: usize, len: usize) -> LocalObs {
        let mut idx = Vec::new();
        let mut global = Vec::new();
        let mut r = Vec::new();
        for k in 0..len {
            if let Some(j) = self.obs_index(state_dim, (start + k) % state_dim) {
                idx.push(k);
                global.push(j);
                r.push(self.error_var_of(j));
            }
        }
        LocalObs {
            op: PointObs::with_transform(len, idx, self.transform(state_dim)),
            global,
            error_var: r,
        }
    }

    /// The registry: config → operator.
    pub fn build(&self, state_dim: usize) -> PointObs {
        PointObs::with_transform(
            state_dim,
            self.locations(state_dim),
            self.transform(state_dim),
        )
    }
}

/// Grid cells of the k × k block whose centre cell is `centre` (row-major grid of side `side`,
/// blocks aligned to multiples of k).
fn block_cells(centre: usize, k: usize, side: usize) -> impl Iterator<Item = usize> {
    let (y0, x0) = ((centre / side) / k * k, (centre % side) / k * k);
    (y0..y0 + k).flat_map(move |y| (x0..x0 + k).map(move |x| y * side + x))
}

/// The observations of a slab of the state.
#[derive(Debug, Clone)]
pub struct LocalObs {
    pub op: PointObs,
    /// Global observation index of each local observation.
    pub global: Vec<usize>,
    /// Diagonal of R for the local observations.
    pub error_var: Vec<f64>,
}

/// Observations of individual state variables through a pointwise transform.
#[derive(Debug, Clone)]
pub struct PointObs {
    state_dim: usize,
    idx: Vec<usize>,
    transform: Transform,
}

impl PointObs {
    /// Linear (or arctan) observations of the variables `idx`.
    pub fn new(state_dim: usize, idx: Vec<usize>, arctan: bool) -> Self {
        let t = if arctan {
            Transform::Arctan
        } else {
            Transform::Linear
        };
        Self::with_transform(state_dim, idx, t)
    }
    pub fn with_transform(state_dim: usize, idx: Vec<usize>, transform: Transform) -> Self {
        PointObs {
            state_dim,
            idx,
            transform,
        }
    }
    pub fn identity(state_dim: usize) -> Self {
        Self::new(state_dim, (0..state_dim).collect(), false)
    }
}

impl ObsOperator for PointObs {
    fn state_dim(&self) -> usize {
        self.state_dim
    }
    fn obs_dim(&self) -> usize {
        self.idx.len()
    }
    fn apply(&self, x: &[f64], y: &mut [f64]) {
        if let Transform::BlockMean { k, side } = self.transform {
            for (yj, &i) in y.iter_mut().zip(&self.idx) {
                *yj = block_cells(i, k, side).map(|c| x[c]).sum::<f64>() / (k * k) as f64;
            }
            return;
        }
        for (yj, &i) in y.iter_mut().zip(&self.idx) {
            *yj = self.transform.apply(x[i]);
        }
    }
    fn adjoint(&self, x: &[f64], v: &[f64], out: &mut [f64]) {
        out.fill(0.0);
        if let Transform::BlockMean { k, side } = self.transform {
            let w = 1.0 / (k * k) as f64;
            for (vj, &i) in v.iter().zip(&self.idx) {
                for c in block_cells(i, k, side) {
                    out[c] += vj * w;
                }
            }
            return;
        }
        for (vj, &i) in v.iter().zip(&self.idx) {
            out[i] += vj * self.transform.derivative(x[i]);
        }
    }
    fn is_linear(&self) -> bool {
        matches!(
            self.transform,
            Transform::Linear | Transform::BlockMean { .. }
        )
    }
    fn locations(&self) -> &[usize] {
        &self.idx
    }
    fn pointwise(&self) -> Option<Transform> {
        (!matches!(self.transform, Transform::BlockMean { .. })).then_some(self.transform)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn adjoint_matches_finite_differences() {
        for t in [Transform::Arctan, Transform::Square] {
            adjoint_check(PointObs::with_transform(10, vec![1, 4, 7], t));
        }
    }

    fn adjoint_check(h: PointObs) {
        let (n, p) = (h.state_dim(), h.obs_dim());
        let x: Vec<f64> = (0..n).map(|i| (i as f64 * 0.3 - 1.2).sin() * 2.0).collect();
        let v: Vec<f64> = (0..p)
            .map(|j| [0.5, -1.0, 2.0][j % 3] + j as f64 * 0.01)
            .collect();
        let mut g = vec![0.0; n];
        h.adjoint(&x, &v, &mut g);
        let f = |x: &[f64]| {
            let mut y = vec![0.0; p];
            h.apply(x, &mut y);
            y.iter().zip(&v).map(|(a, b)| a * b).sum::<f64>()
        };
        for i in 0..n {
            let mut xp = x.clone();
            let mut xm = x.clone();
            xp[i] += 1e-6;
            xm[i] -= 1e-6;
            let fd = (f(&xp) - f(&xm)) / 2e-6;
            assert!((fd - g[i]).abs() < 1e-7, "component {i}: {fd} vs {}", g[i]);
        }
    }

    #[test]
    fn coarse_blocks_average_and_adjoint() {
        let c: ObsConfig =
            toml::from_str("operator='coarse'\ngrid_stride=4\nerror_var=1.0\nobs_every=1").unwrap();
        let n = 16 * 16;
        assert!(c.validate(n).is_ok());
        let h = c.build(n);
        assert_eq!(h.obs_dim(), 16);
        assert_eq!(h.locations()[0], 2 * 16 + 2);
        let x: Vec<f64> = (0..n).map(|i| i as f64).collect();
        let mut y = vec![0.0; 16];
        h.apply(&x, &mut y);
        // Block (0, 0): rows 0..4, columns 0..4: mean of y*16 + x = 1.5*16 + 1.5.
        assert!((y[0] - 25.5).abs() < 1e-12, "{}", y[0]);
        adjoint_check(h);
        assert!(c.validate(15 * 15).is_err());
    }

    #[test]
    fn sparse_locations() {
        let c: ObsConfig =
            toml::from_str("operator='sparse'\nstride=3\noffset=1\nerror_var=1.0\nobs_every=1")
                .unwrap();
        assert_eq!(c.locations(10), vec![1, 4, 7]);
        assert!(c.validate(10).is_ok());
    }

    /// Two stacked 128² fields with stride 10: the MASF code's mask, 13 × 13 points of each
    /// field, field-major, the observation index counting up with the state index.
    #[test]
    fn stacked_fields_share_the_grid_points() {
        let c: ObsConfig = toml::from_str(
            "operator='sparse'\ngrid_stride=10\nfields=2\nerror_var=0.01\nobs_every=10",
        )
        .unwrap();
        let (s, n) = (128, 2 * 128 * 128);
        assert!(c.validate(n).is_ok());
        let loc = c.locations(n);
        assert_eq!(loc.len(), 2 * 13 * 13);
        assert_eq!(&loc[..2], &[0, 10]);
        assert_eq!(loc[13], 10 * s);
        assert_eq!(loc[169], s * s);
        assert_eq!(loc[169 + 14], s * s + 10 * s + 10);
        for (j, &l) in loc.iter().enumerate() {
            assert_eq!(c.obs_index(n, l), Some(j));
        }
        // One field of the same state, or fields that do not split it: refused.
        let one: ObsConfig =
            toml::from_str("operator='sparse'\ngrid_stride=10\nerror_var=0.01\nobs_every=10")
                .unwrap();
        assert!(one.validate(n).is_err());
        assert!(c.validate(n + 1).is_err());
    }
}
