//! Ensemble transform Kalman filter with the symmetric square root (Hunt et al. 2007;
//! DAPPER's `EnKF('Sqrt')`). With C = V D Vᵀ (see `core`):
//!   w = V D⁻¹ Vᵀ S R^{-1/2}(y − ȳ),   T = √(N−1) V D^{-1/2} Vᵀ,
//!   Eᵃ = x̄ + (1wᵀ + Ω T) A,
//! where Ω is an optional random mean-preserving rotation. T is symmetric with T1 = 1, so the
//! analysis mean is exactly x̄ + wᵀA; inflation then scales the analysis anomalies.
use super::core::{inflate_with, mean_into, mean_preserving_rotation};
use super::eigen::SymEigen;
use super::{AnalysisInput, Filter};
use crate::error::{GendaError, Result};
use ndarray::linalg::general_mat_mul;
use ndarray::Array2;
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct EtkfConfig {
    pub members: usize,
    /// Multiplicative inflation of the analysis anomalies.
    #[serde(default = "unit")]
    pub inflation: f64,
    /// Random mean-preserving rotation of the transform each cycle.
    #[serde(default)]
    pub rotation: bool,
}

fn unit() -> f64 {
    1.0
}

pub struct Etkf {
    cfg: EtkfConfig,
    work: Work,
}

impl Etkf {
    pub fn new(cfg: EtkfConfig) -> Self {
        Etkf {
            cfg,
            work: Work::default(),
        }
    }
}

/// Buffers kept between cycles, so that an analysis allocates nothing of the state's size.
#[derive(Default)]
struct Work {
    /// x̄ (n), then the analysis mean for inflation.
    mean: Vec<f64>,
    /// A = E − x̄ (N, n).
    anom: Array2<f64>,
    /// h(E), members as rows (N·p).
    hx: Vec<f64>,
    /// ȳ (p).
    ym: Vec<f64>,
    /// Sᵀ = (R^{-1/2}(h(E) − ȳ))ᵀ, one row of N per observation (p·N).
    st: Vec<f64>,
    /// R^{-1/2}(y − ȳ) (p).
    dy: Vec<f64>,
    /// One tile's partials, for tiles wider than one column.
    scratch: Vec<f64>,
    /// [upper triangle of S Sᵀ, packed by rows | S dy], summed over the state.
    sums: Vec<f64>,
    /// C = S Sᵀ + (N−1) I (N·N).
    c: Vec<f64>,
    eig: SymEigen,
    fd: Vec<f64>,
    /// T, then 1wᵀ + (Ω)T (N, N).
    t: Array2<f64>,
    w: Vec<f64>,
}

/// Adds column c's products to the packed [S Sᵀ | S dy] sums `acc`.
fn add_column(acc: &mut [f64], sc: &[f64], dyc: f64) {
    let n = sc.len();
    let (tri, b) = acc.split_at_mut(n * (n + 1) / 2);
    let mut off = 0;
    for i in 0..n {
        let si = sc[i];
        for (o, sj) in tri[off..off + n - i].iter_mut().zip(&sc[i..]) {
            *o += si * sj;
        }
        off += n - i;
        b[i] += si * dyc;
    }
}

impl Filter for Etkf {
    fn name(&self) -> &'static str {
        "etkf"
    }

    fn analyse(&mut self, ens: &mut Array2<f64>, input: &AnalysisInput) -> Result<()> {
        input.check(ens, "etkf")?;
        let (n_mem, n) = ens.dim();
        let h = input.obs_operator;
        let p = h.obs_dim();
        let wk = &mut self.work;
        // x̄ and A, member rows added in order (as `ensemble_mean`).
        mean_into(ens, &mut wk.mean);
        if wk.anom.dim() != (n_mem, n) {
            wk.anom = Array2::zeros((n_mem, n));
        }
        for (mut a, e) in wk.anom.rows_mut().into_iter().zip(ens.rows()) {
            for ((a, e), m) in a.iter_mut().zip(e).zip(&wk.mean) {
                *a = e - m;
            }
        }
        // h(E), ȳ, Sᵀ and the scaled innovation.
        wk.hx.resize(n_mem * p, 0.0);
        for (x, y) in ens.rows().into_iter().zip(wk.hx.chunks_mut(p.max(1))) {
            let xs = x
                .as_slice()
                .ok_or_else(|| GendaError::LinAlg("ensemble rows must be contiguous".into()))?;
            h.apply(xs, y);
        }
        wk.ym.clear();
        wk.ym.resize(p, 0.0);
        for y in wk.hx.chunks(p.max(1)) {
            for (m, v) in wk.ym.iter_mut().zip(y) {
                *m += v;
            }
        }
        for m in wk.ym.iter_mut() {
            *m /= n_mem as f64;
        }
        wk.st.resize(p * n_mem, 0.0);
        wk.dy.resize(p, 0.0);
        for j in 0..p {
            let sd = input.obs_error_var[j].sqrt();
            let inv_sd = 1.0 / sd;
            for i in 0..n_mem {
                wk.st[j * n_mem + i] = (wk.hx[i * p + j] - wk.ym[j]) * inv_sd;
            }
            wk.dy[j] = (input.obs[j] - wk.ym[j]) / sd;
        }
        // Σ_tiles [S_t S_tᵀ | S_t dy_t] in global tile order.
        let k = n_mem * (n_mem + 1) / 2 + n_mem;
        let obs_tiles = input.domain.obs_per_tile(h.locations());
        let (st, dy, scratch) = (&wk.st, &wk.dy, &mut wk.scratch);
        input.reducer.sum_tiles_by(
            obs_tiles.len(),
            k,
            &mut |t, acc| {
                let range = obs_tiles[t].clone();
                if range.len() == 1 {
                    let c = range.start;
                    add_column(acc, &st[c * n_mem..(c + 1) * n_mem], dy[c]);
                } else if !range.is_empty() {
                    scratch.clear();
                    scratch.resize(k, 0.0);
                    for c in range {
                        add_column(scratch, &st[c * n_mem..(c + 1) * n_mem], dy[c]);
                    }
                    for (a, v) in acc.iter_mut().zip(scratch.iter()) {
                        *a += v;
                    }
                }
            },
            &mut wk.sums,
        )?;
        let n1 = (n_mem - 1) as f64;
        wk.c.resize(n_mem * n_mem, 0.0);
        let mut off = 0;
        for i in 0..n_mem {
            for j in i..n_mem {
                let v = wk.sums[off + j - i];
                wk.c[i * n_mem + j] = v;
                wk.c[j * n_mem + i] = v;
            }
            wk.c[i * n_mem + i] += n1;
            off += n_mem - i;
        }
        let b = &wk.sums[n_mem * (n_mem + 1) / 2..];
        wk.eig.compute(&wk.c, n_mem)?;
        if wk.eig.values.iter().any(|v| !(v.is_finite() && *v > 0.0)) {
            return Err(GendaError::LinAlg("ensemble-space matrix YᵀR⁻¹Y + (N−1)I is not positive definite (non-finite ensemble?)".into()));
        }
        // w = V D⁻¹ Vᵀ b,  T = V diag(√((N−1)/d)) Vᵀ.
        wk.w.clear();
        wk.w.resize(n_mem, 0.0);
        for kk in 0..n_mem {
            let z = wk.eig.vector(kk);
            let coef = z.iter().zip(b).map(|(a, b)| a * b).sum::<f64>() / wk.eig.values[kk];
            for (w, zi) in wk.w.iter_mut().zip(z) {
                *w += coef * zi;
            }
        }
        if wk.t.dim() != (n_mem, n_mem) {
            wk.t = Array2::zeros((n_mem, n_mem));
        }
        wk.eig.spectral_into(
            |d| (n1 / d).sqrt(),
            &mut wk.fd,
            wk.t.as_slice_mut().expect("standard layout"),
        );
        if self.cfg.rotation {
            // Rotate the analysis anomalies T·A (rows = members), i.e. left-multiply: Ω T.
            wk.t = mean_preserving_rotation(n_mem, input.seed, input.cycle).dot(&wk.t);
        }
        for mut row in wk.t.rows_mut() {
            for (g, w) in row.iter_mut().zip(&wk.w) {
                *g += w;
            }
        }
        // Eᵃ = x̄ + (1wᵀ + Ω T) A.
        general_mat_mul(1.0, &wk.t, &wk.anom, 0.0, ens);
        for mut row in ens.rows_mut() {
            for (e, m) in row.iter_mut().zip(&wk.mean) {
                *e += m;
            }
        }
        inflate_with(ens, self.cfg.inflation, &mut wk.mean);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::super::core::{inflate, EnsembleSpace};
    use super::*;
    use crate::obs::PointObs;
    use crate::rng::{fill_standard_normal, Purpose};
    use ndarray::Array1;

    /// The ETKF as first written: `EnsembleSpace` (nalgebra's eigensolver, ndarray products).
    fn reference_analysis(ens: &mut Array2<f64>, input: &AnalysisInput, inflation: f64) {
        let n_mem = ens.nrows();
        let (es, b) = EnsembleSpace::new_with(ens, input, n_mem, &|s, _, ym, range, out| {
            let dy: Array1<f64> = range
                .clone()
                .map(|j| (input.obs[j] - ym[j]) / input.obs_error_var[j].sqrt())
                .collect();
            let bt = s.slice(ndarray::s![.., range]).dot(&dy);
            out.copy_from_slice(bt.as_slice().unwrap());
        })
        .unwrap();
        let w = es.spectral(|d| 1.0 / d).dot(&Array1::from(b));
        let n1 = (n_mem - 1) as f64;
        let mut g = es.spectral(|d| (n1 / d).sqrt());
        for mut row in g.rows_mut() {
            row += &w;
        }
        *ens = es.combine(&g);
        inflate(ens, inflation);
    }

    #[test]
    fn workspace_analysis_equals_the_ensemble_space_formulas() {
        // Partial and full observation, one-column and wider tiles, N above and below p.
        for (n, n_mem, every, tile) in [(40, 20, 1, 1), (40, 20, 4, 8), (12, 30, 2, 3)] {
            let idx: Vec<usize> = (0..n).step_by(every).collect();
            let p = idx.len();
            let h = PointObs::new(n, idx, false);
            let r: Vec<f64> = (0..p).map(|j| 0.5 + 0.1 * j as f64).collect();
            let mut y = vec![0.0; p];
            fill_standard_normal(5, Purpose::ObsNoise, 1, 0, 0, &mut y);
            let mut ens = Array2::zeros((n_mem, n));
            for (i, mut row) in ens.rows_mut().into_iter().enumerate() {
                let z = row.as_slice_mut().unwrap();
                fill_standard_normal(5, Purpose::EnsembleInit, 0, i as u64, 0, z);
                for (j, v) in z.iter_mut().enumerate() {
                    *v = 2.0 * *v + (j as f64 * 0.3).sin();
                }
            }
            let mut input = AnalysisInput::whole(&y, &h, &r, 1, 1);
            input.domain.tiles = (0..n / tile).map(|t| t * tile..(t + 1) * tile).collect();
            let mut want = ens.clone();
            reference_analysis(&mut want, &input, 1.1);
            let mut filter = Etkf::new(EtkfConfig {
                members: n_mem,
                inflation: 1.1,
                rotation: false,
            });
            // Twice: the second call runs on the buffers the first one left.
            for _ in 0..2 {
                let mut got = ens.clone();
                filter.analyse(&mut got, &input).unwrap();
                let scale = want.iter().fold(0.0f64, |m, x| m.max(x.abs()));
                let err = (&got - &want).iter().fold(0.0f64, |m, x| m.max(x.abs()));
                assert!(
                    err <= 1e-12 * scale,
                    "n = {n}, N = {n_mem}, every {every}, tile {tile}: max difference {err:e}"
                );
            }
        }
    }
}
