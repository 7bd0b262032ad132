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
//!
//! With `y_advection` b > 0 the small scales also advect themselves, as in Lorenz's (1996)
//! two-level model, on the ring of all K·J hidden variables (Y_{K−1,J−1} is followed by Y_{0,0}):
//!
//!   dY_v = [−b Y_{v+1} (Y_{v+2} − Y_{v−1}) − d_Y (Y_v − ŷ) + h X_{k(v)}] dt + σ_Y dW_v.
//!
//! The model is then not conditionally Gaussian (its hidden dynamics are nonlinear in
//! themselves); `cg_surrogate` gives the CG model a method like Ω works with instead: the
//! truncated one (b dropped) or the mean stochastic model fitted to the model's own climatology.
use super::{ConditionalGaussian, Model, Scheme, SurrogateKind};
use crate::error::{GendaError, Result};
use crate::rng::{fill_standard_normal, Purpose};

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
    /// b of the small scales' self-advection −b Y_{v+1}(Y_{v+2} − Y_{v−1}); 0 keeps the model
    /// conditionally Gaussian.
    pub y_advection: f64,
}

/// What the fit of the mean stochastic model measured on the model's free run (pooled over the
/// hidden variables), and the surrogate it gives.
#[derive(Debug, Clone)]
pub struct SurrogateFit {
    /// Climatological mean, variance, integrated autocorrelation time, skewness and kurtosis
    /// of the hidden variables.
    pub mean: f64,
    pub var: f64,
    pub tau: f64,
    pub skewness: f64,
    pub kurtosis: f64,
    /// Samples (time points × hidden variables) the statistics come from.
    pub samples: usize,
}

impl CgLorenz96 {
    /// True when the small scales are linear in themselves (b = 0).
    pub fn is_conditionally_gaussian(&self) -> bool {
        self.y_advection == 0.0
    }

    /// The model with the small scales' self-advection dropped, every other coefficient kept.
    pub fn truncated(&self) -> CgLorenz96 {
        CgLorenz96 {
            y_advection: 0.0,
            ..self.clone()
        }
    }

    /// The mean stochastic model (Majda & Harlim, *Filtering Complex Turbulent Systems*, 2012,
    /// ch. 12) of the hidden variables: the X equation as the model's, and each Y an
    /// Ornstein–Uhlenbeck process with the model's climatological mean, variance and integrated
    /// autocorrelation time τ (d_Y = 1/τ, σ_Y² = 2 d_Y Var Y, ŷ = E Y − h E X / d_Y; the variance
    /// match is exact for h = 0). The climatology is a free run of `steps` model steps (after
    /// `steps / 10` of spin-up) with its own noise stream (seed, `Purpose::SurrogateFit`), every
    /// hidden variable pooled (they are statistically alike on the ring); the autocorrelation is
    /// integrated (trapezoid, samples every ≈ 0.05 time units) up to its first non-positive
    /// value or 20 time units.
    pub fn fitted_surrogate(&self, seed: u64, steps: usize) -> Result<(CgLorenz96, SurrogateFit)> {
        let (k, n) = (self.k, self.dim());
        let every = ((0.05 / self.dt).round() as usize).max(1);
        let max_lag = ((20.0 / self.dt) as usize / every).max(2);
        if steps / every < 4 * max_lag {
            return Err(GendaError::invalid(
                "filter.surrogate_fit_steps",
                format!(
                    "{steps} steps are too few to fit the surrogate's time scale; need at least {}",
                    4 * max_lag * every
                ),
            ));
        }
        let mut x: Vec<f64> = (0..n)
            .map(|i| if i < k { self.forcing } else { self.y_mean })
            .collect();
        x[0] += 0.1;
        let mut ws = super::Rk4Workspace::new(n);
        let mut z = vec![0.0; n];
        let spin = steps / 10;
        let sd: Vec<f64> = (0..n)
            .map(|i| self.noise_sd_at(i) * self.dt.sqrt())
            .collect();
        let nv = n - k;
        let mut ys: Vec<f64> = Vec::with_capacity((steps / every + 1) * nv);
        let mut xsum = 0.0;
        for s in 0..spin + steps {
            self.step(&mut x, &mut ws);
            fill_standard_normal(seed, Purpose::SurrogateFit, s as u64, 0, 0, &mut z);
            for i in 0..n {
                x[i] += sd[i] * z[i];
            }
            if !x.iter().all(|v| v.is_finite()) {
                return Err(GendaError::Diverged {
                    cycle: 0,
                    what: format!("the free run that fits the CG surrogate, step {s}"),
                });
            }
            if s >= spin && (s - spin) % every == 0 {
                ys.extend_from_slice(&x[k..]);
                xsum += x[..k].iter().sum::<f64>();
            }
        }
        let times = ys.len() / nv;
        let mean = ys.iter().sum::<f64>() / ys.len() as f64;
        let x_mean = xsum / (times * k) as f64;
        let (skewness, kurtosis) = crate::metrics::skewness_kurtosis(&ys);
        let acov = |lag: usize| -> f64 {
            let mut acc = 0.0;
            for t in 0..times - lag {
                let (a, b) = (
                    &ys[t * nv..(t + 1) * nv],
                    &ys[(t + lag) * nv..(t + lag + 1) * nv],
                );
                acc += a
                    .iter()
                    .zip(b)
                    .map(|(p, q)| (p - mean) * (q - mean))
                    .sum::<f64>();
            }
            acc / ((times - lag) * nv) as f64
        };
        let var = acov(0);
        let dtau = every as f64 * self.dt;
        let mut tau = 0.5 * dtau;
        for lag in 1..max_lag {
            let rho = acov(lag) / var;
            if rho <= 0.0 {
                break;
            }
            tau += rho * dtau;
        }
        if !(var > 0.0 && tau > 0.0 && tau.is_finite()) {
            return Err(GendaError::invalid(
                "filter.surrogate",
                format!(
                    "the free run gives no usable climatology (variance {var}, time scale {tau})"
                ),
            ));
        }
        let d_y = 1.0 / tau;
        let surrogate = CgLorenz96 {
            y_advection: 0.0,
            d_y,
            sigma_y: (2.0 * d_y * var).sqrt(),
            y_mean: mean - self.h * x_mean / d_y,
            ..self.clone()
        };
        let fit = SurrogateFit {
            mean,
            var,
            tau,
            skewness,
            kurtosis,
            samples: ys.len(),
        };
        Ok((surrogate, fit))
    }
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
        if self.is_conditionally_gaussian() {
            "cg_lorenz96"
        } else {
            "cg_lorenz96 with y_advection > 0"
        }
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
        if self.y_advection != 0.0 {
            let nv = ys.len();
            for v in 0..nv {
                let (m1, p1, p2) = ((v + nv - 1) % nv, (v + 1) % nv, (v + 2) % nv);
                d[k + v] -= self.y_advection * ys[p1] * (ys[p2] - ys[m1]);
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
        if self.is_conditionally_gaussian() {
            Some(self)
        } else {
            None
        }
    }
    fn hidden_start(&self) -> Option<usize> {
        Some(self.k)
    }
    fn cg_surrogate(&self, how: SurrogateKind, seed: u64, steps: usize) -> Result<Box<dyn Model>> {
        Ok(Box::new(match how {
            SurrogateKind::Truncated => self.truncated(),
            SurrogateKind::Fitted => {
                let (s, fit) = self.fitted_surrogate(seed, steps)?;
                log::info!(
                    "CG surrogate (mean stochastic model of the hidden variables from {} samples): climatology mean {:.4}, variance {:.4}, time scale {:.4}, skewness {:.3}, kurtosis {:.3} -> y_mean {:.4}, d_y {:.4}, sigma_y {:.4}",
                    fit.samples, fit.mean, fit.var, fit.tau, fit.skewness, fit.kurtosis, s.y_mean, s.d_y, s.sigma_y
                );
                s
            }
        }))
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
            y_advection: 0.0,
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

    /// The self-advection only moves energy between the small scales: Σ_v Y_v · adv_v = 0, so
    /// it adds nothing to d/dt ½ Σ Y² (Lorenz 1996's energy-conserving form on the ring).
    #[test]
    fn small_scale_advection_conserves_energy_and_breaks_the_cg_form() {
        let mut m = model();
        let x: Vec<f64> = (0..m.dim())
            .map(|i| (i as f64 * 0.37).cos() * 2.0 + 0.5)
            .collect();
        let mut base = vec![0.0; m.dim()];
        m.tendency(&x, &mut base);
        assert!(m.conditional_gaussian().is_some());
        m.y_advection = 1.5;
        assert!(m.conditional_gaussian().is_none());
        assert_eq!(m.hidden_start(), Some(m.k));
        let mut d = vec![0.0; m.dim()];
        m.tendency(&x, &mut d);
        let adv: Vec<f64> = (m.k..m.dim()).map(|i| d[i] - base[i]).collect();
        let work: f64 = adv.iter().zip(&x[m.k..]).map(|(a, y)| a * y).sum();
        let size: f64 = adv.iter().map(|a| a.abs()).sum();
        assert!(size > 1.0, "advection is switched on: {size}");
        assert!(work.abs() < 1e-12 * size, "{work}");
        assert_eq!(&d[..m.k], &base[..m.k], "the X equation is unchanged");
        // The truncated surrogate is the CG model again.
        assert!(m.truncated().conditional_gaussian().is_some());
    }

    /// On a model that is CG already (b = 0, each Y an OU process with d_Y = 1, σ_Y = 2,
    /// ŷ = 1), the mean stochastic model recovers the Y equation's coefficients.
    #[test]
    fn fitted_surrogate_recovers_an_ornstein_uhlenbeck_model() {
        let m = model();
        let (s, fit) = m.fitted_surrogate(5, 200_000).unwrap();
        eprintln!(
            "{fit:?} -> d_y {} sigma_y {} y_mean {}",
            s.d_y, s.sigma_y, s.y_mean
        );
        assert!((s.y_mean - 1.0).abs() < 0.05, "{}", s.y_mean);
        assert!((s.d_y - 1.0).abs() < 0.1, "{}", s.d_y);
        assert!((s.sigma_y - 2.0).abs() < 0.1, "{}", s.sigma_y);
        assert!(
            fit.skewness.abs() < 0.05 && (fit.kurtosis - 3.0).abs() < 0.1,
            "{fit:?}"
        );
        assert!(s.conditional_gaussian().is_some());
        assert!(
            m.fitted_surrogate(5, 1000).is_err(),
            "too short a run is refused"
        );
    }

    /// With chaotic self-advected small scales (configs/omega_surrogate_lorenz96.toml: b = 0.2,
    /// d_Y = 0.2, ŷ = 8, σ_Y = 0.2236, σ_X = 0.5) the hidden variables are not Gaussian (platykurtic, as
    /// Lorenz-96 at F = 8): the fitted surrogate, Gaussian by construction, has their mean and
    /// variance but not their shape; the truncated one (ŷ = 8, variance σ_Y²/2) has neither.
    #[test]
    fn advected_small_scales_are_not_gaussian() {
        let mut m = model();
        (m.y_advection, m.d_y, m.y_mean, m.sigma_y, m.sigma_x) = (0.2, 0.2, 8.0, 0.2236, 0.5);
        let (s, fit) = m.fitted_surrogate(5, 200_000).unwrap();
        eprintln!(
            "{fit:?} -> d_y {} sigma_y {} y_mean {}",
            s.d_y, s.sigma_y, s.y_mean
        );
        assert!(fit.kurtosis < 2.8, "{fit:?}");
        assert!(
            (s.y_mean - fit.mean).abs() < 1e-12 && fit.mean < 4.0,
            "{fit:?}"
        );
        let var = s.sigma_y * s.sigma_y / (2.0 * s.d_y);
        assert!((var - fit.var).abs() < 1e-9 * fit.var && fit.var > 10.0 * m.sigma_y.powi(2));
    }
}
