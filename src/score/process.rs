//! Forward noising processes in one place. Each is a linear Gaussian path
//!   x_t = α(t) x₀ + σ(t) z,  z ~ N(0, I),  t ∈ [0, 1],
//! equivalently the SDE dx = f(t) x dt + g(t) dW with f = α'/α and g² = (σ²)' − 2 f σ²
//! (Song et al. 2021, App. B; Albergo & Vanden-Eijnden 2023 for interpolants). Samplers, training
//! and the training-free filters all read α, σ, f, g² from here, so a score trained under one
//! process is never used with another by accident (the process is stored with the weights).
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Copy, PartialEq, Deserialize, Serialize)]
#[serde(tag = "kind", rename_all = "snake_case", deny_unknown_fields)]
pub enum ForwardProcess {
    /// Variance preserving, linear β(t) = β_min + t (β_max − β_min) (DDPM in continuous time).
    Vp { beta_min: f64, beta_max: f64 },
    /// Variance exploding, σ(t) = σ_min (σ_max/σ_min)^t (NCSN), α = 1.
    Ve { sigma_min: f64, sigma_max: f64 },
    /// Linear stochastic interpolant x_t = (1 − t) x₀ + t z between data (t = 0) and noise (t = 1)
    /// (rectified flow / flow matching path, used by DAISI). f and g are singular at t = 1, so
    /// SDE samplers start from `t_max` < 1; the probability-flow ODE can start at 1.
    Interpolant { t_max: f64 },
    /// EnSF's path (Bao, Zhang & Zhang 2024): α(t) = 1 − (1 − ε_α) t, σ²(t) = ε_β + (1 − ε_β) t
    /// (the arXiv/legacy code has ε_β = 0; the published code's `NoiseSchedule` ε_b = 0.025).
    Ensf {
        eps_alpha: f64,
        #[serde(default)]
        eps_beta: f64,
    },
    /// SDA's variance-preserving cosine schedule (Rozet & Louppe 2023, `VPSDE(alpha='cos')`):
    /// α(t) = cos²(c t) with c = arccos √η, σ²(t) = 1 − α² + η², so α(1) = η and σ(0) = η.
    VpCos { eta: f64 },
}

impl Default for ForwardProcess {
    fn default() -> Self {
        ForwardProcess::Vp {
            beta_min: 0.1,
            beta_max: 20.0,
        }
    }
}

impl ForwardProcess {
    /// Mean coefficient α(t).
    pub fn alpha(&self, t: f64) -> f64 {
        match *self {
            ForwardProcess::Vp { beta_min, beta_max } => {
                (-0.5 * (beta_min * t + 0.5 * (beta_max - beta_min) * t * t)).exp()
            }
            ForwardProcess::Ve { .. } => 1.0,
            ForwardProcess::Interpolant { .. } => 1.0 - t,
            ForwardProcess::Ensf { eps_alpha, .. } => 1.0 - (1.0 - eps_alpha) * t,
            ForwardProcess::VpCos { eta } => (eta.sqrt().acos() * t).cos().powi(2),
        }
    }

    /// Noise standard deviation σ(t).
    pub fn sigma(&self, t: f64) -> f64 {
        match *self {
            ForwardProcess::Vp { .. } => (1.0 - self.alpha(t).powi(2)).max(0.0).sqrt(),
            ForwardProcess::Ve {
                sigma_min,
                sigma_max,
            } => sigma_min * (sigma_max / sigma_min).powf(t),
            ForwardProcess::Interpolant { .. } => t,
            ForwardProcess::Ensf { eps_beta, .. } => {
                (eps_beta + (1.0 - eps_beta) * t).max(0.0).sqrt()
            }
            ForwardProcess::VpCos { eta } => (1.0 - self.alpha(t).powi(2) + eta * eta).sqrt(),
        }
    }

    /// Drift coefficient f(t) = α'(t)/α(t) (drift is f(t)·x).
    pub fn f(&self, t: f64) -> f64 {
        match *self {
            ForwardProcess::Vp { beta_min, beta_max } => {
                -0.5 * (beta_min + t * (beta_max - beta_min))
            }
            ForwardProcess::Ve { .. } => 0.0,
            ForwardProcess::Interpolant { .. } => -1.0 / (1.0 - t),
            ForwardProcess::Ensf { eps_alpha, .. } => -(1.0 - eps_alpha) / self.alpha(t),
            ForwardProcess::VpCos { eta } => {
                let c = eta.sqrt().acos();
                -2.0 * c * (c * t).tan()
            }
        }
    }

    /// Squared diffusion g²(t) = d(σ²)/dt − 2 f σ².
    pub fn g2(&self, t: f64) -> f64 {
        match *self {
            ForwardProcess::Vp { beta_min, beta_max } => beta_min + t * (beta_max - beta_min),
            ForwardProcess::Ve {
                sigma_min,
                sigma_max,
            } => 2.0 * (sigma_max / sigma_min).ln() * self.sigma(t).powi(2),
            ForwardProcess::Interpolant { .. } => 2.0 * t / (1.0 - t),
            // The published code's `sde_b_sq = d_beta_sq_dt − 2 d_log_alpha_dt β²`.
            ForwardProcess::Ensf { eps_beta, .. } => {
                (1.0 - eps_beta) - 2.0 * self.f(t) * (eps_beta + (1.0 - eps_beta) * t)
            }
            // (σ²)' = −2αα' = −2fα², so g² = −2f(α² + σ²) = −2f(1 + η²).
            ForwardProcess::VpCos { eta } => -2.0 * self.f(t) * (1.0 + eta * eta),
        }
    }

    /// Latest time SDE samplers start from.
    pub fn t_max(&self) -> f64 {
        match *self {
            ForwardProcess::Interpolant { t_max } => t_max,
            _ => 1.0,
        }
    }

    /// Std of the reference distribution N(0, s²I) that x_{t_max} is drawn from when sampling
    /// (the marginal at t_max for data of unit scale).
    pub fn prior_std(&self) -> f64 {
        let t = self.t_max();
        (self.alpha(t).powi(2) + self.sigma(t).powi(2)).sqrt()
    }

    pub fn validate(&self) -> Result<(), String> {
        match *self {
            ForwardProcess::Vp { beta_min, beta_max }
                if !(beta_min > 0.0 && beta_max > beta_min) =>
            {
                Err(format!(
                    "vp needs 0 < beta_min < beta_max, got {beta_min}, {beta_max}"
                ))
            }
            ForwardProcess::Ve {
                sigma_min,
                sigma_max,
            } if !(sigma_min > 0.0 && sigma_max > sigma_min) => Err(format!(
                "ve needs 0 < sigma_min < sigma_max, got {sigma_min}, {sigma_max}"
            )),
            ForwardProcess::Interpolant { t_max } if !(t_max > 0.0 && t_max < 1.0) => {
                Err(format!("interpolant needs 0 < t_max < 1, got {t_max}"))
            }
            ForwardProcess::Ensf {
                eps_alpha,
                eps_beta,
            } if !(eps_alpha > 0.0 && eps_alpha < 1.0 && (0.0..1.0).contains(&eps_beta)) => {
                Err(format!(
                    "ensf needs 0 < eps_alpha < 1 and 0 <= eps_beta < 1, got {eps_alpha}, {eps_beta}"
                ))
            }
            ForwardProcess::VpCos { eta } if !(eta > 0.0 && eta < 0.1) => {
                Err(format!("vp_cos needs 0 < eta < 0.1, got {eta}"))
            }
            _ => Ok(()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn all() -> [ForwardProcess; 6] {
        [
            ForwardProcess::VpCos { eta: 1e-3 },
            ForwardProcess::Ensf {
                eps_alpha: 0.05,
                eps_beta: 0.0,
            },
            ForwardProcess::Ensf {
                eps_alpha: 0.5,
                eps_beta: 0.025,
            },
            ForwardProcess::Vp {
                beta_min: 0.1,
                beta_max: 20.0,
            },
            ForwardProcess::Ve {
                sigma_min: 0.01,
                sigma_max: 10.0,
            },
            ForwardProcess::Interpolant { t_max: 0.999 },
        ]
    }

    /// f = α'/α and g² = (σ²)' − 2fσ², checked by central differences of the closed forms.
    #[test]
    fn drift_and_diffusion_match_marginals() {
        for p in all() {
            for t in [0.05, 0.3, 0.5, 0.8, 0.95] {
                let h = 1e-6;
                let da = (p.alpha(t + h) - p.alpha(t - h)) / (2.0 * h);
                let ds2 = (p.sigma(t + h).powi(2) - p.sigma(t - h).powi(2)) / (2.0 * h);
                assert!(
                    (p.f(t) - da / p.alpha(t)).abs() < 1e-6 * (1.0 + p.f(t).abs()),
                    "{p:?} f at {t}"
                );
                let g2 = ds2 - 2.0 * p.f(t) * p.sigma(t).powi(2);
                assert!(
                    (p.g2(t) - g2).abs() < 1e-5 * (1.0 + g2.abs()),
                    "{p:?} g2 at {t}: {} vs {g2}",
                    p.g2(t)
                );
            }
        }
    }

    /// Integrating the SDE's moment equations dm/dt = f m, dv/dt = 2 f v + g² from t = 0.05
    /// reproduces the closed-form marginal mean α(t) m₀/α(0.05) and variance.
    #[test]
    fn moment_odes_reproduce_closed_forms() {
        for p in all() {
            let (t0, t1, n) = (0.05, 0.9, 20000);
            let (m0, v0) = (2.0, 0.5);
            // Data x₀ with mean m0', var v0': choose them so that at t0 the moments are (m0, v0).
            let a0 = p.alpha(t0);
            let (mut m, mut v) = (m0, v0);
            let dt = (t1 - t0) / n as f64;
            let rhs = |t: f64, m: f64, v: f64| (p.f(t) * m, 2.0 * p.f(t) * v + p.g2(t));
            for i in 0..n {
                let t = t0 + i as f64 * dt;
                let (k1m, k1v) = rhs(t, m, v);
                let (k2m, k2v) = rhs(t + 0.5 * dt, m + 0.5 * dt * k1m, v + 0.5 * dt * k1v);
                let (k3m, k3v) = rhs(t + 0.5 * dt, m + 0.5 * dt * k2m, v + 0.5 * dt * k2v);
                let (k4m, k4v) = rhs(t + dt, m + dt * k3m, v + dt * k3v);
                m += dt / 6.0 * (k1m + 2.0 * k2m + 2.0 * k3m + k4m);
                v += dt / 6.0 * (k1v + 2.0 * k2v + 2.0 * k3v + k4v);
            }
            // Closed form: x_t = α_t x₀ + σ_t z with x₀ having mean m0/a0 and var (v0 − σ²(t0))/a0².
            let (mx, vx) = (m0 / a0, (v0 - p.sigma(t0).powi(2)) / (a0 * a0));
            let (a1, s1) = (p.alpha(t1), p.sigma(t1));
            let (m_want, v_want) = (a1 * mx, a1 * a1 * vx + s1 * s1);
            assert!(
                (m - m_want).abs() < 1e-8 * (1.0 + m_want.abs()),
                "{p:?} mean {m} vs {m_want}"
            );
            assert!(
                (v - v_want).abs() < 1e-8 * (1.0 + v_want.abs()),
                "{p:?} var {v} vs {v_want}"
            );
        }
    }
}
