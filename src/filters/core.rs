//! The ensemble-space analysis core shared by EnKF and ETKF (as DAPPER's `EnKF_analysis`).
//!
//! With members as rows, E (N, n) the ensemble, A = E − x̄ its anomalies, Y = h(E) − ȳ the
//! observed anomalies and S = Y R^{-1/2}, both filters need the N×N matrix
//! C = S Sᵀ + (N−1) I and its eigendecomposition C = V D Vᵀ (N ≪ n, so this is cheap):
//! ETKF's weights and symmetric square-root transform and the stochastic EnKF's gain in ensemble
//! space (push-through identity Y(YᵀY + (N−1)R)⁻¹ = C⁻¹ Y R⁻¹) are both functions of V and D.
use super::AnalysisInput;
use crate::error::{GendaError, Result};
use crate::rng::{stream, Purpose};
use nalgebra::{DMatrix, DVector, SymmetricEigen};
use ndarray::{s, Array1, Array2, Axis};
use rand_distr::{Distribution, StandardNormal};
use std::ops::Range;

/// Ensemble mean over members.   ens: (N, n) → (n)
pub fn ensemble_mean(ens: &Array2<f64>) -> Array1<f64> {
    let n_mem = ens.nrows() as f64;
    let mut mean = Array1::zeros(ens.ncols());
    for row in ens.rows() {
        mean += &row;
    }
    mean / n_mem
}

/// `ensemble_mean` into a reused buffer (the same additions in the same order).
pub fn mean_into(ens: &Array2<f64>, mean: &mut Vec<f64>) {
    let n_mem = ens.nrows() as f64;
    mean.clear();
    mean.resize(ens.ncols(), 0.0);
    for row in ens.rows() {
        for (m, x) in mean.iter_mut().zip(row) {
            *m += x;
        }
    }
    for m in mean.iter_mut() {
        *m /= n_mem;
    }
}

/// `inflate` with the mean in a reused buffer.
pub fn inflate_with(ens: &mut Array2<f64>, factor: f64, mean: &mut Vec<f64>) {
    if factor == 1.0 {
        return;
    }
    mean_into(ens, mean);
    for mut row in ens.rows_mut() {
        for (x, m) in row.iter_mut().zip(mean.iter()) {
            *x = m + factor * (*x - m);
        }
    }
}

/// Anomalies E − x̄ (N, n).
pub fn anomalies(ens: &Array2<f64>, mean: &Array1<f64>) -> Array2<f64> {
    ens - &mean.view().insert_axis(Axis(0))
}

/// When a filter's multiplicative inflation scales the anomalies.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Deserialize, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum InflateAt {
    /// The analysis anomalies, after the update (genda's and DAPPER's `infl` placement).
    #[default]
    Analysis,
    /// The forecast anomalies, before the update (the MASF code's EnKF and LETKF: X and
    /// h(X) anomalies × the factor; for a linear h the same as inflating the members first).
    Forecast,
}

impl InflateAt {
    pub fn is_default(&self) -> bool {
        *self == InflateAt::Analysis
    }
}

/// Multiplicative inflation of the anomalies about the (unchanged) ensemble mean.
pub fn inflate(ens: &mut Array2<f64>, factor: f64) {
    if factor == 1.0 {
        return;
    }
    let mean = ensemble_mean(ens);
    for mut row in ens.rows_mut() {
        row.zip_mut_with(&mean, |x, m| *x = m + factor * (*x - m));
    }
}

/// Extra per-tile sums of an ensemble-space analysis: (S, h(E), ȳ, observation range, out).
pub type TileExtra<'a> =
    dyn Fn(&Array2<f64>, &Array2<f64>, &Array1<f64>, Range<usize>, &mut [f64]) + 'a;

/// Ensemble-space quantities of one analysis.
pub struct EnsembleSpace {
    /// x̄   (n)
    pub mean: Array1<f64>,
    /// A = E − x̄   (N, n)
    pub anomalies: Array2<f64>,
    /// ȳ = mean of h(E)   (p)
    pub obs_mean: Array1<f64>,
    /// h(E)   (N, p)
    pub obs_ens: Array2<f64>,
    /// S = (h(E) − ȳ) R^{-1/2}   (N, p)
    pub s: Array2<f64>,
    /// Eigenvectors V of C = S Sᵀ + (N−1) I   (N, N)
    pub v: DMatrix<f64>,
    /// Eigenvalues D of C   (N)
    pub d: DVector<f64>,
}

impl EnsembleSpace {
    /// The analysis core on the local columns, with C = Σ_tiles S_t S_tᵀ + (N−1) I summed per
    /// tile in global order (layout-independent). `extra` adds `k_extra` more tile sums that
    /// need S (ETKF's S·dy, EnKF's innovation products): it gets (S, h(E), ȳ, the observation
    /// range of a tile, out), so no method applies h a second time.
    pub fn new_with(
        ens: &Array2<f64>,
        input: &AnalysisInput,
        k_extra: usize,
        extra: &TileExtra,
    ) -> Result<(Self, Vec<f64>)> {
        input.check(ens, "ensemble-space analysis")?;
        let h = input.obs_operator;
        let r_var = input.obs_error_var;
        let n_mem = ens.nrows();
        let p = h.obs_dim();
        let mean = ensemble_mean(ens);
        let anomalies = anomalies(ens, &mean);
        let mut obs_ens = Array2::zeros((n_mem, p));
        for (x, mut y) in ens.rows().into_iter().zip(obs_ens.rows_mut()) {
            let xs = x
                .as_slice()
                .ok_or_else(|| GendaError::LinAlg("ensemble rows must be contiguous".into()))?;
            let ys = y.as_slice_mut().expect("fresh array is contiguous");
            h.apply(xs, ys);
        }
        let obs_mean = ensemble_mean(&obs_ens);
        let inv_sd: Array1<f64> = r_var.iter().map(|r| 1.0 / r.sqrt()).collect();
        let s =
            (&obs_ens - &obs_mean.view().insert_axis(Axis(0))) * inv_sd.view().insert_axis(Axis(0));
        // Tile partials [S_t S_tᵀ (N²) | extra (k_extra)], one GEMM per tile.
        let k = n_mem * n_mem + k_extra;
        let obs_tiles = input.domain.obs_per_tile(h.locations());
        let mut partials = vec![0.0; obs_tiles.len() * k];
        for (t, range) in obs_tiles.iter().enumerate() {
            let out = &mut partials[t * k..(t + 1) * k];
            if !range.is_empty() {
                let st = s.slice(s![.., range.clone()]);
                let c = st.dot(&st.t());
                out[..n_mem * n_mem].copy_from_slice(c.as_slice().expect("fresh array"));
            }
            extra(
                &s,
                &obs_ens,
                &obs_mean,
                range.clone(),
                &mut out[n_mem * n_mem..],
            );
        }
        let sums = input.reducer.sum_tiles(&partials, k)?;
        let n1 = (n_mem - 1) as f64;
        let cm = DMatrix::from_fn(n_mem, n_mem, |i, j| {
            0.5 * (sums[i * n_mem + j] + sums[j * n_mem + i]) + if i == j { n1 } else { 0.0 }
        });
        let eig = SymmetricEigen::new(cm);
        if eig.eigenvalues.iter().any(|v| !(v.is_finite() && *v > 0.0)) {
            return Err(GendaError::LinAlg("ensemble-space matrix YᵀR⁻¹Y + (N−1)I is not positive definite (non-finite ensemble?)".into()));
        }
        Ok((
            EnsembleSpace {
                mean,
                anomalies,
                obs_mean,
                obs_ens,
                s,
                v: eig.eigenvectors,
                d: eig.eigenvalues,
            },
            sums[n_mem * n_mem..].to_vec(),
        ))
    }

    pub fn members(&self) -> usize {
        self.anomalies.nrows()
    }

    /// V f(D) Vᵀ as an ndarray (N, N).
    pub fn spectral(&self, f: impl Fn(f64) -> f64) -> Array2<f64> {
        let n = self.members();
        let fd = DMatrix::from_diagonal(&self.d.map(f));
        let m = &self.v * fd * self.v.transpose();
        Array2::from_shape_fn((n, n), |(i, j)| m[(i, j)])
    }

    /// E = x̄ + G A for a member-space matrix G (N, N).
    pub fn combine(&self, g: &Array2<f64>) -> Array2<f64> {
        g.dot(&self.anomalies) + self.mean.view().insert_axis(Axis(0))
    }
}

/// A random orthogonal N×N matrix that keeps the vector of ones fixed (DAPPER's `genOG_1`), so
/// right-multiplying a transform by it rotates the anomalies without moving the mean.
pub fn mean_preserving_rotation(n: usize, seed: u64, cycle: usize) -> Array2<f64> {
    let mut rng = stream(seed, Purpose::Rotation, cycle as u64, 0, 0);
    let k = n - 1;
    let g = DMatrix::from_fn(k, k, |_, _| StandardNormal.sample(&mut rng));
    let qr = g.qr();
    let mut q = qr.q();
    let r = qr.r();
    for j in 0..k {
        if r[(j, j)] < 0.0 {
            q.column_mut(j).neg_mut();
        }
    }
    // Householder reflector V with V e₁ = 1/√N: an orthonormal basis whose first vector is ones.
    let mut u = DVector::from_element(n, 1.0 / (n as f64).sqrt());
    u[0] -= 1.0;
    let un = u.norm_squared();
    let mut basis = DMatrix::identity(n, n);
    if un > 0.0 {
        basis -= (&u * u.transpose()) * (2.0 / un);
    }
    let mut block = DMatrix::identity(n, n);
    block.view_mut((1, 1), (k, k)).copy_from(&q);
    let o = &basis * block * basis.transpose();
    Array2::from_shape_fn((n, n), |(i, j)| o[(i, j)])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rotation_is_orthogonal_and_keeps_ones() {
        let n = 7;
        let o = mean_preserving_rotation(n, 3, 2);
        let oto = o.t().dot(&o);
        for i in 0..n {
            for j in 0..n {
                let want = if i == j { 1.0 } else { 0.0 };
                assert!((oto[[i, j]] - want).abs() < 1e-12);
            }
            let row_sum: f64 = o.row(i).sum();
            assert!((row_sum - 1.0).abs() < 1e-12);
        }
    }

    #[test]
    fn inflation_keeps_mean_and_scales_spread() {
        let mut e = Array2::from_shape_fn((5, 3), |(i, j)| (i * 3 + j) as f64 * 0.7 - 2.0);
        let m0 = ensemble_mean(&e);
        let a0 = anomalies(&e, &m0);
        inflate(&mut e, 1.5);
        let m1 = ensemble_mean(&e);
        let a1 = anomalies(&e, &m1);
        for (x, y) in m0.iter().zip(m1.iter()) {
            assert!((x - y).abs() < 1e-12);
        }
        for (x, y) in a0.iter().zip(a1.iter()) {
            assert!((1.5 * x - y).abs() < 1e-12);
        }
    }
}
