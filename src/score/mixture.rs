//! The Gaussian-mixture score kernel shared by the training-free filters (EnSF, KDE
//! diffusion): for M points x_i and N centres α·c_j with common variance σ²,
//!
//!   w_ij = softmax_j( −‖x_i − α c_j‖² / 2σ² + ℓ_j ),   s(x_i) = Σ_j w_ij (α c_j − x_i) / σ²,
//!
//! with optional per-centre log-weights ℓ_j (KDE diffusion's measurement kernel). Squared
//! distances come from ‖x‖² + α²‖c‖² − 2α xᵀc: one GEMM per tile of the state, the tile
//! partials (M·N + M + N numbers) combined layout-independently by the `Reducer` (on a
//! decomposed state this is the allreduce over the domain communicator), then a max-shifted
//! log-sum-exp on every rank, and the score of the local columns from W·c (a second GEMM).
use crate::error::Result;
use crate::parallel::Reducer;
use ndarray::{s, Array2, ArrayView2, Axis, Zip};
use rayon::prelude::*;
use std::ops::Range;

/// States of at least this many values (points × columns) are worked on by rayon's threads,
/// tile by tile and column block by column block; each tile's partials and each output
/// column are computed exactly as on one thread, so the numbers do not depend on the count.
const PARALLEL_MIN_LEN: usize = 1 << 15;

/// Columns per block of the parallel score pass.
const SCORE_BLOCK: usize = 4096;

/// Mixture weights W (M, N) for points `x` (M, L) and centres `c` (N, L) over the local
/// columns; only the columns in `tiles` count towards the distances.
pub fn mixture_weights(
    x: ArrayView2<f64>,
    c: ArrayView2<f64>,
    alpha: f64,
    sigma2: f64,
    log_weights: Option<&[f64]>,
    tiles: &[Range<usize>],
    reducer: &dyn Reducer,
) -> Result<Array2<f64>> {
    let (m, n) = (x.nrows(), c.nrows());
    let k = m * n + m + n;
    let mut partials = vec![0.0; tiles.len() * k];
    let tile = |(out, cols): (&mut [f64], &Range<usize>)| {
        let xt = x.slice(s![.., cols.clone()]);
        let ct = c.slice(s![.., cols.clone()]);
        let xc = xt.dot(&ct.t());
        out[..m * n].copy_from_slice(xc.as_slice().expect("fresh array"));
        for (i, r) in xt.rows().into_iter().enumerate() {
            out[m * n + i] = r.dot(&r);
        }
        for (j, r) in ct.rows().into_iter().enumerate() {
            out[m * n + m + j] = r.dot(&r);
        }
    };
    if x.len() >= PARALLEL_MIN_LEN {
        partials
            .par_chunks_mut(k)
            .zip(tiles.par_iter())
            .for_each(tile);
    } else {
        partials.chunks_mut(k).zip(tiles.iter()).for_each(tile);
    }
    let sums = reducer.sum_tiles(&partials, k)?;
    let (xc, xx, cc) = (&sums[..m * n], &sums[m * n..m * n + m], &sums[m * n + m..]);
    let mut w = Array2::zeros((m, n));
    for (i, mut row) in w.rows_mut().into_iter().enumerate() {
        for (j, v) in row.iter_mut().enumerate() {
            let d2 = (xx[i] + alpha * alpha * cc[j] - 2.0 * alpha * xc[i * n + j]).max(0.0);
            *v = -d2 / (2.0 * sigma2) + log_weights.map_or(0.0, |l| l[j]);
        }
        let mx = row.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
        row.mapv_inplace(|v| (v - mx).exp());
        let z = row.sum();
        row.mapv_inplace(|v| v / z);
    }
    Ok(w)
}

/// Mixture score of every local column into `out` (M, L); returns the weights.
#[allow(clippy::too_many_arguments)]
pub fn mixture_score_tiled(
    x: ArrayView2<f64>,
    c: ArrayView2<f64>,
    alpha: f64,
    sigma2: f64,
    log_weights: Option<&[f64]>,
    tiles: &[Range<usize>],
    reducer: &dyn Reducer,
    mut out: ndarray::ArrayViewMut2<f64>,
) -> Result<Array2<f64>> {
    let w = mixture_weights(x, c, alpha, sigma2, log_weights, tiles, reducer)?;
    // s = (α W c − x) / σ², one block of columns at a time.
    let block = |(b, mut o): (usize, ndarray::ArrayViewMut2<f64>)| {
        let cols = b * SCORE_BLOCK..b * SCORE_BLOCK + o.ncols();
        let wc = w.dot(&c.slice(s![.., cols.clone()]));
        Zip::from(&mut o)
            .and(&wc)
            .and(x.slice(s![.., cols]))
            .for_each(|o, &a, &xi| *o = (alpha * a - xi) / sigma2);
    };
    let blocks: Vec<_> = out.axis_chunks_iter_mut(Axis(1), SCORE_BLOCK).collect();
    if x.len() >= PARALLEL_MIN_LEN {
        blocks.into_par_iter().enumerate().for_each(block);
    } else {
        blocks.into_iter().enumerate().for_each(block);
    }
    Ok(w)
}

/// Mixture of Gaussians with per-component *diagonal* covariances (Ω's conditional-Gaussian
/// mixture): component j is N(α m_j, diag(α² d_j + σ²)) with log-weight ℓ_j. For M points x_i
/// the log-responsibilities need
///   Q_ij = Σ_k (x_ik − α m_jk)² / v_jk + ln v_jk,   v_jk = α² d_jk + σ²,
/// which is (x∘x)·(1/v)ᵀ − 2 x·(α m/v)ᵀ + Σ_k(α² m²/v + ln v): two GEMMs per tile plus N
/// numbers, summed over tiles by the `Reducer` like the isotropic kernel. The score of the local
/// columns is then W·(α m/v) − x ∘ (W·(1/v)), two more GEMMs. Returns the weights W (M, N).
#[allow(clippy::too_many_arguments)]
pub fn diag_mixture_score_tiled(
    x: ArrayView2<f64>,
    means: ArrayView2<f64>,
    vars: ArrayView2<f64>,
    alpha: f64,
    sigma2: f64,
    log_weights: &[f64],
    tiles: &[Range<usize>],
    reducer: &dyn Reducer,
    out: &mut Array2<f64>,
) -> Result<Array2<f64>> {
    let (m, n) = (x.nrows(), means.nrows());
    let inv_v = vars.mapv(|d| 1.0 / (alpha * alpha * d + sigma2));
    let am_v = &means.mapv(|c| alpha * c) * &inv_v;
    let k = m * n + n;
    let mut partials = vec![0.0; tiles.len() * k];
    for (t, cols) in tiles.iter().enumerate() {
        let o = &mut partials[t * k..(t + 1) * k];
        let xt = x.slice(s![.., cols.clone()]);
        let iv = inv_v.slice(s![.., cols.clone()]);
        let amv = am_v.slice(s![.., cols.clone()]);
        let q = xt.mapv(|a| a * a).dot(&iv.t()) - 2.0 * xt.dot(&amv.t());
        o[..m * n].copy_from_slice(q.as_standard_layout().as_slice().expect("standard layout"));
        for j in 0..n {
            o[m * n + j] = means
                .slice(s![j, cols.clone()])
                .iter()
                .zip(iv.row(j))
                .map(|(&c, &w)| alpha * alpha * c * c * w - w.ln())
                .sum();
        }
    }
    let sums = reducer.sum_tiles(&partials, k)?;
    let mut w = Array2::zeros((m, n));
    for (i, mut row) in w.rows_mut().into_iter().enumerate() {
        for (j, v) in row.iter_mut().enumerate() {
            *v = -0.5 * (sums[i * n + j] + sums[m * n + j]) + log_weights[j];
        }
        let mx = row.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
        row.mapv_inplace(|v| (v - mx).exp());
        let z = row.sum();
        row.mapv_inplace(|v| v / z);
    }
    let wm = w.dot(&am_v);
    let wv = w.dot(&inv_v);
    for (((o, a), b), xi) in out.iter_mut().zip(wm.iter()).zip(wv.iter()).zip(x.iter()) {
        *o = a - xi * b;
    }
    Ok(w)
}

/// The whole state on one rank.
pub fn mixture_score(
    x: ArrayView2<f64>,
    c: ArrayView2<f64>,
    alpha: f64,
    sigma2: f64,
    out: &mut Array2<f64>,
) {
    let tiles = [0..x.ncols()];
    mixture_score_tiled(
        x,
        c,
        alpha,
        sigma2,
        None,
        &tiles,
        &crate::parallel::SerialReducer,
        out.view_mut(),
    )
    .expect("serial reduction of whole tiles cannot fail");
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::parallel::SerialReducer;

    /// The diagonal-covariance kernel against a direct evaluation of the mixture score, and
    /// tiled sums against one tile.
    #[test]
    fn diagonal_mixture_score_matches_direct_evaluation() {
        let (m, n, d) = (4usize, 3usize, 5usize);
        let f = |i: usize, j: usize, a: f64| ((i * 7 + j * 3) as f64 * a).sin();
        let x = Array2::from_shape_fn((m, d), |(i, k)| 2.0 * f(i, k, 0.37));
        let mu = Array2::from_shape_fn((n, d), |(j, k)| f(j + 5, k, 0.91));
        let var = Array2::from_shape_fn((n, d), |(j, k)| 0.2 + f(j, k + 2, 0.5).abs());
        let lw = [0.1, -0.4, 0.3];
        let (alpha, s2) = (0.8, 0.3);
        let mut out = Array2::zeros((m, d));
        let tiles = [0..2, 2..5];
        diag_mixture_score_tiled(
            x.view(),
            mu.view(),
            var.view(),
            alpha,
            s2,
            &lw,
            &tiles,
            &SerialReducer,
            &mut out,
        )
        .unwrap();
        for i in 0..m {
            // Direct: responsibilities from full log-densities.
            let logp: Vec<f64> = (0..n)
                .map(|j| {
                    lw[j]
                        + (0..d)
                            .map(|k| {
                                let v = alpha * alpha * var[[j, k]] + s2;
                                -0.5 * (x[[i, k]] - alpha * mu[[j, k]]).powi(2) / v - 0.5 * v.ln()
                            })
                            .sum::<f64>()
                })
                .collect();
            let mx = logp.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
            let z: f64 = logp.iter().map(|l| (l - mx).exp()).sum();
            for k in 0..d {
                let s: f64 = (0..n)
                    .map(|j| {
                        let v = alpha * alpha * var[[j, k]] + s2;
                        (logp[j] - mx).exp() / z * (alpha * mu[[j, k]] - x[[i, k]]) / v
                    })
                    .sum();
                assert!((s - out[[i, k]]).abs() < 1e-12, "{s} {}", out[[i, k]]);
            }
        }
    }
}
