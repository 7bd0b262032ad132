//! Two-layer Lorenz-96 with conditionally Gaussian small scales: K observed large-scale
//! variables X_k on a ring and J hidden small-scale variables Y_{k,j} per X_k that act as a
//! stochastic damping (the spatially extended analogue of SPEKF):
//!
//!   dX_k = [X_{k−1}(X_{k+1} − X_{k−2}) − d_X X_k − ε X_k³ + F − (c/J) X_k Σ_j Y_{k,j}] dt + σ_X dW_k
//!   dY_{k,j} = [−d_Y (Y_{k,j} − ŷ) + h X_k] dt + σ_Y dW_{k,j}
//!
//! Episodes of negative total damping d_X + (c/J) Σ_j Y_{k,j} < 0 give local bursts (heavy
//! tails); the Y equations are linear in Y given X, and X depends linearly on Y, so the
//! posterior of Y given the path of X is Gaussian. State [X_0..X_{K−1}, Y_{0,0}..Y_{K−1,J−1}].
use super::{ConditionalGaussian, Model, Scheme};

#[derive(Debug, Clone)]
pub struct CgLorenz96 {
    pub k: usize,
    pub j: usize,
    pub dt: f64,
    pub forcing: f64,
    pub d_x: f64,
    /// Cubic saturation ε: −ε X_k³ in the X equation (a function of X alone, so the CG form
    /// holds); it caps the bursts of strong negative damping.
    pub cubic: f64,
    pub coupling: f64,
    pub d_y: f64,
    /// Mean ŷ the small scales relax to: dY = [−d_Y (Y − ŷ) + h X] dt + σ_Y dW.
    pub y_mean: f64,
    pub h: f64,
    pub sigma_x: f64,
    pub sigma_y: f64,
}

impl ConditionalGaussian for CgLorenz96 {
    fn observed_dim(&self) -> usize {
        self.k
    }
    fn cg_terms(
        &self,
        x: &[f64],
        big_a0: &mut [f64],
        big_a1: &mut [f64],
        a0: &mut [f64],
        a1: &mut [f64],
    ) {
        let (k, j) = (self.k, self.j);
        let nv = k * j;
        for i in 0..k {
            let (m2, m1, p1) = ((i + k - 2) % k, (i + k - 1) % k, (i + 1) % k);
            big_a0[i] = x[m1] * (x[p1] - x[m2]) - self.d_x * x[i] + self.forcing
                - self.cubic * x[i] * x[i] * x[i];
        }
        big_a1.iter_mut().for_each(|v| *v = 0.0);
        a1.iter_mut().for_each(|v| *v = 0.0);
        let c = self.coupling / j as f64;
        for i in 0..k {
            for jj in 0..j {
                let v = i * j + jj;
                big_a1[i * nv + v] = -c * x[i];
                a0[v] = self.d_y * self.y_mean + self.h * x[i];
                a1[v * nv + v] = -self.d_y;
            }
        }
    }
    fn cg_noise(&self) -> (Vec<f64>, Vec<f64>) {
        (
            vec![self.sigma_x; self.k],
            vec![self.sigma_y; self.k * self.j],
        )
    }
}

impl Model for CgLorenz96 {
    fn name(&self) -> &'static str {
        "cg_lorenz96"
    }
    fn dim(&self) -> usize {
        self.k * (1 + self.j)
    }
    fn dt(&self) -> f64 {
        self.dt
    }
    fn tendency(&self, x: &[f64], d: &mut [f64]) {
        // Direct form (the dense CG terms are for the posterior, not the time step).
        let (k, j) = (self.k, self.j);
        let (xs, ys) = x.split_at(k);
        let c = self.coupling / j as f64;
        for i in 0..k {
            let (m2, m1, p1) = ((i + k - 2) % k, (i + k - 1) % k, (i + 1) % k);
            let ysum: f64 = ys[i * j..(i + 1) * j].iter().sum();
            d[i] = xs[m1] * (xs[p1] - xs[m2]) - self.d_x * xs[i] + self.forcing
                - self.cubic * xs[i] * xs[i] * xs[i]
                - c * xs[i] * ysum;
            for jj in 0..j {
                d[k + i * j + jj] = -self.d_y * (ys[i * j + jj] - self.y_mean) + self.h * xs[i];
            }
        }
    }
    fn scheme(&self) -> Scheme {
        Scheme::Euler
    }
    fn noise_sd(&self) -> f64 {
        1.0
    }
    fn noise_sd_at(&self, i: usize) -> f64 {
        if i % self.dim() < self.k {
            self.sigma_x
        } else {
            self.sigma_y
        }
    }
    fn conditional_gaussian(&self) -> Option<&dyn ConditionalGaussian> {
        Some(self)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::metrics::skewness_kurtosis;
    use crate::models::{cg_drift, Rk4Workspace};
    use crate::rng::{fill_standard_normal, Purpose};

    /// The defaults of `kind = "cg_lorenz96"`.
    fn model() -> CgLorenz96 {
        CgLorenz96 {
            k: 40,
            j: 2,
            dt: 0.005,
            forcing: 1.0,
            d_x: 0.0,
            cubic: 0.01,
            coupling: 1.0,
            d_y: 1.0,
            y_mean: 1.0,
            h: 0.0,
            sigma_x: 1.0,
            sigma_y: 2.0,
        }
    }

    /// The fast `tendency` is the drift of the CG form [A0 + A1 v; a0 + a1 v].
    #[test]
    fn tendency_is_the_conditional_gaussian_drift() {
        let mut m = model();
        m.h = 0.3;
        let x: Vec<f64> = (0..m.dim()).map(|i| (i as f64 * 0.7).sin() * 3.0).collect();
        let (mut a, mut b) = (vec![0.0; m.dim()], vec![0.0; m.dim()]);
        m.tendency(&x, &mut a);
        cg_drift(&m, &x, &mut b);
        let d = a
            .iter()
            .zip(&b)
            .map(|(p, q)| (p - q).abs())
            .fold(0.0, f64::max);
        assert!(d < 1e-12, "{d}");
    }

    /// Hidden stochastic damping makes the large scales intermittent: heavy tails.
    #[test]
    fn large_scales_are_intermittent() {
        let m = model();
        let n = m.dim();
        let mut x: Vec<f64> = vec![1.0; n];
        x[3] += 0.1;
        let mut ws = Rk4Workspace::new(n);
        let mut z = vec![0.0; n];
        let mut xs = Vec::new();
        for s in 0..100_000u64 {
            m.step(&mut x, &mut ws);
            fill_standard_normal(3, Purpose::ModelNoise, s, 0, 0, &mut z);
            for i in 0..n {
                x[i] += m.noise_sd_at(i) * m.dt.sqrt() * z[i];
            }
            if s > 5_000 && s % 20 == 0 {
                xs.extend_from_slice(&x[..m.k]);
            }
        }
        assert!(xs.iter().all(|v| v.is_finite()));
        let (sk, ku) = skewness_kurtosis(&xs);
        eprintln!("CG-L96 X: skewness {sk:.2}, kurtosis {ku:.2}");
        assert!(ku > 5.0, "kurtosis {ku}");
    }
}
