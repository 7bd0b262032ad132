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
use ndarray::{s, Array2, ArrayView2};
use std::ops::Range;

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
    for (t, cols) in tiles.iter().enumerate() {
        let out = &mut partials[t * k..(t + 1) * k];
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
    out: &mut Array2<f64>,
) -> Result<Array2<f64>> {
    let w = mixture_weights(x, c, alpha, sigma2, log_weights, tiles, reducer)?;
    let wc = w.dot(&c);
    for ((o, a), xi) in out.iter_mut().zip(wc.iter()).zip(x.iter()) {
        *o = (alpha * a - xi) / sigma2;
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
        out,
    )
    .expect("serial reduction of whole tiles cannot fail");
}
