//! SPEKF-type model with hidden stochastic damping and forcing (Gershgorin, Harlim & Majda
//! 2010; Majda & Harlim, "Filtering Complex Turbulent Systems", ch. 8), real form:
//!
//!   du = [−γ u + b + f] dt + σ_u dW_u           (observed)
//!   dγ = −d_γ (γ − γ̂) dt + σ_γ dW_γ             (hidden damping)
//!   db = −d_b (b − b̂) dt + σ_b dW_b             (hidden forcing)
//!
//! Whenever γ dips below zero u grows for a while: intermittent bursts with a heavy-tailed
//! PDF of u. Given the path of u, (γ, b) is linear-Gaussian (conditionally Gaussian). State
//! [u, γ, b]; Euler–Maruyama steps, noise keyed like every model noise in genda.
use super::{ConditionalGaussian, Model, Scheme};

#[derive(Debug, Clone)]
pub struct Spekf {
    pub dt: f64,
    pub forcing: f64,
    pub sigma_u: f64,
    pub gamma_mean: f64,
    pub d_gamma: f64,
    pub sigma_gamma: f64,
    pub b_mean: f64,
    pub d_b: f64,
    pub sigma_b: f64,
}

impl ConditionalGaussian for Spekf {
    fn observed_dim(&self) -> usize {
        1
    }
    fn cg_terms(
        &self,
        u: &[f64],
        big_a0: &mut [f64],
        big_a1: &mut [f64],
        a0: &mut [f64],
        a1: &mut [f64],
    ) {
        big_a0[0] = self.forcing;
        big_a1[0] = -u[0];
        big_a1[1] = 1.0;
        a0[0] = self.d_gamma * self.gamma_mean;
        a0[1] = self.d_b * self.b_mean;
        a1.copy_from_slice(&[-self.d_gamma, 0.0, 0.0, -self.d_b]);
    }
    fn cg_noise(&self) -> (Vec<f64>, Vec<f64>) {
        (vec![self.sigma_u], vec![self.sigma_gamma, self.sigma_b])
    }
}

impl Model for Spekf {
    fn name(&self) -> &'static str {
        "spekf"
    }
    fn dim(&self) -> usize {
        3
    }
    fn dt(&self) -> f64 {
        self.dt
    }
    fn tendency(&self, x: &[f64], d: &mut [f64]) {
        // The CG drift [A0 + A1 v; a0 + a1 v] written out, in the same order of operations as
        // `cg_drift` (no allocation per step).
        let (u, g, b) = (x[0], x[1], x[2]);
        d[0] = self.forcing + (-u * g + b);
        d[1] = self.d_gamma * self.gamma_mean + (-self.d_gamma * g);
        d[2] = self.d_b * self.b_mean + (-self.d_b * b);
    }
    fn scheme(&self) -> Scheme {
        Scheme::Euler
    }
    fn noise_sd(&self) -> f64 {
        1.0
    }
    fn noise_sd_at(&self, i: usize) -> f64 {
        [self.sigma_u, self.sigma_gamma, self.sigma_b][i % 3]
    }
    fn conditional_gaussian(&self) -> Option<&dyn ConditionalGaussian> {
        Some(self)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::metrics::skewness_kurtosis;
    use crate::models::Rk4Workspace;
    use crate::rng::{fill_standard_normal, Purpose};

    /// The written-out tendency is the CG drift, to the bit.
    #[test]
    fn tendency_is_the_conditional_gaussian_drift() {
        let m = Spekf {
            dt: 0.01,
            forcing: 0.3,
            sigma_u: 0.5,
            gamma_mean: 1.5,
            d_gamma: 1.3,
            sigma_gamma: 1.6,
            b_mean: 0.2,
            d_b: 0.5,
            sigma_b: 0.5,
        };
        for x in [[0.7, -0.4, 1.1], [-2.0, 3.0, -0.5]] {
            let (mut a, mut b) = ([0.0; 3], [0.0; 3]);
            m.tendency(&x, &mut a);
            crate::models::cg_drift(&m, &x, &mut b);
            assert_eq!(a, b);
        }
    }

    /// A long run with the default parameters: u is intermittent (kurtosis well above 3, bursts
    /// while γ < 0), γ and b keep their Gaussian climatology.
    #[test]
    fn spekf_is_intermittent() {
        let m = Spekf {
            dt: 0.005,
            forcing: 0.0,
            sigma_u: 0.5,
            gamma_mean: 1.5,
            d_gamma: 1.3,
            sigma_gamma: 1.6,
            b_mean: 0.0,
            d_b: 0.5,
            sigma_b: 0.5,
        };
        let mut x = vec![0.0, 1.5, 0.0];
        let mut ws = Rk4Workspace::new(3);
        let mut z = vec![0.0; 3];
        let (mut us, mut gs) = (Vec::new(), Vec::new());
        for s in 0..400_000u64 {
            m.step(&mut x, &mut ws);
            fill_standard_normal(2, Purpose::ModelNoise, s, 0, 0, &mut z);
            for i in 0..3 {
                x[i] += m.noise_sd_at(i) * m.dt.sqrt() * z[i];
            }
            if s % 10 == 0 {
                us.push(x[0]);
                gs.push(x[1]);
            }
        }
        let (su, ku) = skewness_kurtosis(&us);
        let (_, kg) = skewness_kurtosis(&gs);
        let mean_g = gs.iter().sum::<f64>() / gs.len() as f64;
        eprintln!(
            "SPEKF u: skewness {su:.2}, kurtosis {ku:.1}; γ: mean {mean_g:.2}, kurtosis {kg:.2}"
        );
        assert!(ku > 6.0, "u kurtosis {ku}");
        assert!((kg - 3.0).abs() < 0.3 && (mean_g - 1.5).abs() < 0.1);
    }
}
