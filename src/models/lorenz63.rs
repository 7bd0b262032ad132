//! Lorenz (1963): dx = σ(y − x), dy = x(ρ − z) − y, dz = xy − βz.
use super::Model;

#[derive(Debug, Clone)]
pub struct Lorenz63 {
    pub dt: f64,
    pub sigma: f64,
    pub rho: f64,
    pub beta: f64,
    /// Additive noise amplitude (x += noise·√dt·z after every step).
    pub noise: f64,
}

impl Default for Lorenz63 {
    fn default() -> Self {
        Lorenz63 {
            dt: 0.01,
            sigma: 10.0,
            rho: 28.0,
            beta: 8.0 / 3.0,
            noise: 0.0,
        }
    }
}

impl Model for Lorenz63 {
    fn name(&self) -> &'static str {
        "lorenz63"
    }
    fn dim(&self) -> usize {
        3
    }
    fn dt(&self) -> f64 {
        self.dt
    }
    fn noise_sd(&self) -> f64 {
        self.noise
    }
    #[inline]
    fn tendency(&self, x: &[f64], d: &mut [f64]) {
        d[0] = self.sigma * (x[1] - x[0]);
        d[1] = x[0] * (self.rho - x[2]) - x[1];
        d[2] = x[0] * x[1] - self.beta * x[2];
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fixed_point_is_stationary() {
        let m = Lorenz63::default();
        let c = (m.beta * (m.rho - 1.0)).sqrt();
        let mut x = vec![c, c, m.rho - 1.0];
        m.integrate(&mut x, 100);
        assert!((x[0] - c).abs() < 1e-10 && (x[2] - (m.rho - 1.0)).abs() < 1e-10);
    }

    #[test]
    fn rk4_is_fourth_order() {
        // Error at T = 0.5 against a fine reference should fall ~16x when dt halves.
        let err = |dt: f64| {
            let m = Lorenz63 {
                dt,
                ..Default::default()
            };
            let mut x = vec![1.0, 1.0, 1.0];
            m.integrate(&mut x, (0.5 / dt).round() as usize);
            let r = Lorenz63 {
                dt: dt / 64.0,
                ..Default::default()
            };
            let mut y = vec![1.0, 1.0, 1.0];
            r.integrate(&mut y, (0.5 / (dt / 64.0)).round() as usize);
            x.iter()
                .zip(&y)
                .map(|(a, b)| (a - b).abs())
                .fold(0.0, f64::max)
        };
        let ratio = err(0.01) / err(0.005);
        assert!(ratio > 12.0 && ratio < 20.0, "convergence ratio {ratio}");
    }
}
