//! Exact scores of Gaussian mixtures pushed through a forward process: the known answer the
//! samplers and learned networks are tested against.
//!
//! If x₀ ~ Σ_k w_k N(μ_k, Σ_k) then x_t ~ Σ_k w_k N(α μ_k, α² Σ_k + σ² I), whose score is
//! Σ_k r_k(x) C_k⁻¹ (α μ_k − x) with responsibilities r_k ∝ w_k N(x; α μ_k, C_k) computed by a
//! stable log-sum-exp.
use super::process::ForwardProcess;
use nalgebra::{DMatrix, DVector};

#[derive(Debug, Clone)]
pub struct GaussianMixture {
    pub weights: Vec<f64>,
    pub means: Vec<DVector<f64>>,
    pub covs: Vec<DMatrix<f64>>,
}

impl GaussianMixture {
    pub fn dim(&self) -> usize {
        self.means[0].len()
    }

    /// Score of p_t at the rows of `x` (M, d), written into `out`.
    pub fn score(&self, process: &ForwardProcess, x: &[f64], t: f64, out: &mut [f64]) {
        let d = self.dim();
        let (a, s) = (process.alpha(t), process.sigma(t));
        // Per component: C⁻¹ and log normaliser (log w − ½ log det C).
        let comps: Vec<(DMatrix<f64>, f64, DVector<f64>)> = self
            .weights
            .iter()
            .zip(&self.means)
            .zip(&self.covs)
            .map(|((w, m), c)| {
                let ct = c * (a * a) + DMatrix::identity(d, d) * (s * s);
                let ch = ct
                    .clone()
                    .cholesky()
                    .expect("mixture covariance must be SPD");
                let logdet = 2.0 * ch.l().diagonal().iter().map(|v| v.ln()).sum::<f64>();
                (ch.inverse(), w.ln() - 0.5 * logdet, m * a)
            })
            .collect();
        let mut logr = vec![0.0; comps.len()];
        let mut grads: Vec<DVector<f64>> = vec![DVector::zeros(d); comps.len()];
        for (xr, or) in x.chunks(d).zip(out.chunks_mut(d)) {
            let xv = DVector::from_column_slice(xr);
            for (k, (cinv, lognorm, mu)) in comps.iter().enumerate() {
                let diff = &xv - mu;
                let g = -(cinv * &diff);
                logr[k] = lognorm + 0.5 * diff.dot(&g);
                grads[k] = g;
            }
            let mx = logr.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
            let z: f64 = logr.iter().map(|l| (l - mx).exp()).sum();
            or.fill(0.0);
            for (k, g) in grads.iter().enumerate() {
                let r = (logr[k] - mx).exp() / z;
                for j in 0..d {
                    or[j] += r * g[j];
                }
            }
        }
    }
}

/// The two-component 2-D mixture the sampler and training tests use, and its moment check.
#[cfg(test)]
pub(crate) mod test_support {
    use super::GaussianMixture;
    use nalgebra::{DMatrix, DVector};

    pub fn two_bumps() -> GaussianMixture {
        GaussianMixture {
            weights: vec![0.3, 0.7],
            means: vec![
                DVector::from_vec(vec![-2.0, 0.0]),
                DVector::from_vec(vec![2.0, 1.0]),
            ],
            covs: vec![
                DMatrix::from_row_slice(2, 2, &[0.5, 0.2, 0.2, 0.3]),
                DMatrix::from_row_slice(2, 2, &[0.4, -0.1, -0.1, 0.6]),
            ],
        }
    }

    /// Samples (row-major (M, 2)) split at x₀ = 0 must reproduce the weights, means and
    /// covariances of `two_bumps()` within the given absolute tolerances.
    pub fn check_moments(gm: &GaussianMixture, x: &[f64], what: &str, tol: (f64, f64, f64)) {
        let m = x.len() / 2;
        let mut groups: Vec<Vec<[f64; 2]>> = vec![Vec::new(), Vec::new()];
        for r in x.chunks(2) {
            groups[usize::from(r[0] >= 0.0)].push([r[0], r[1]]);
        }
        for (k, g) in groups.iter().enumerate() {
            let n = g.len() as f64;
            let w = n / m as f64;
            assert!((w - gm.weights[k]).abs() < tol.0, "{what}: weight {k} {w}");
            let mean = [
                g.iter().map(|p| p[0]).sum::<f64>() / n,
                g.iter().map(|p| p[1]).sum::<f64>() / n,
            ];
            for j in 0..2 {
                assert!(
                    (mean[j] - gm.means[k][j]).abs() < tol.1,
                    "{what}: mean {k},{j} {}",
                    mean[j]
                );
            }
            for (a, b) in [(0, 0), (0, 1), (1, 1)] {
                let c = g
                    .iter()
                    .map(|p| (p[a] - mean[a]) * (p[b] - mean[b]))
                    .sum::<f64>()
                    / (n - 1.0);
                assert!(
                    (c - gm.covs[k][(a, b)]).abs() < tol.2,
                    "{what}: cov {k} ({a},{b}) {c} vs {}",
                    gm.covs[k][(a, b)]
                );
            }
        }
    }
}
