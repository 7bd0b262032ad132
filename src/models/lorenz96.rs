//! Lorenz (1996): dx_i/dt = (x_{i+1} − x_{i−2}) x_{i−1} − x_i + F on a periodic ring.
//!
//! The RK4 step is written by hand for this model: each stage evaluates the tendency at
//! `x + a·k_prev` on the fly instead of first storing that vector, which saves one full pass over
//! memory per stage (the step is memory-bound for large rings). The interior loop works on
//! equal-length shifted sub-slices so the compiler drops bounds checks and vectorises it.
use super::{Model, Rk4Workspace, Scheme};

#[derive(Debug, Clone)]
pub struct Lorenz96 {
    pub dim: usize,
    pub forcing: f64,
    pub dt: f64,
    /// Time scheme of the deterministic part.
    pub scheme: Scheme,
    /// Additive noise amplitude: x += noise·√dt·z after every step (Euler–Maruyama with the
    /// `euler` scheme, as the EnSF paper's L96).
    pub noise: f64,
}

impl Lorenz96 {
    pub fn new(dim: usize, forcing: f64, dt: f64) -> Self {
        assert!(dim >= 4, "Lorenz-96 needs dim >= 4");
        Lorenz96 {
            dim,
            forcing,
            dt,
            scheme: Scheme::Rk4,
            noise: 0.0,
        }
    }
}

/// out = f(x + a·k). With `SHIFT = false`, `k` and `a` are ignored (out = f(x)).
#[inline(always)]
fn stage<const SHIFT: bool>(x: &[f64], k: &[f64], a: f64, forcing: f64, out: &mut [f64]) {
    let n = x.len();
    let y = |i: usize| if SHIFT { x[i] + a * k[i] } else { x[i] };
    // Ends of the ring (i = 0, 1, n-1) need wrap-around.
    out[0] = (y(1) - y(n - 2)) * y(n - 1) - y(0) + forcing;
    out[1] = (y(2) - y(n - 1)) * y(0) - y(1) + forcing;
    out[n - 1] = (y(0) - y(n - 3)) * y(n - 2) - y(n - 1) + forcing;
    // Interior i = 2..n-1 as shifted windows of equal length m.
    let m = n - 3;
    let (xm2, xm1, x0, xp1) = (&x[0..m], &x[1..m + 1], &x[2..m + 2], &x[3..m + 3]);
    let o = &mut out[2..m + 2];
    if SHIFT {
        let (km2, km1, k0, kp1) = (&k[0..m], &k[1..m + 1], &k[2..m + 2], &k[3..m + 3]);
        for i in 0..m {
            let (ym2, ym1, y0, yp1) = (
                xm2[i] + a * km2[i],
                xm1[i] + a * km1[i],
                x0[i] + a * k0[i],
                xp1[i] + a * kp1[i],
            );
            o[i] = (yp1 - ym2) * ym1 - y0 + forcing;
        }
    } else {
        for i in 0..m {
            o[i] = (xp1[i] - xm2[i]) * xm1[i] - x0[i] + forcing;
        }
    }
}

impl Model for Lorenz96 {
    fn name(&self) -> &'static str {
        "lorenz96"
    }
    fn dim(&self) -> usize {
        self.dim
    }
    fn dt(&self) -> f64 {
        self.dt
    }
    fn tendency(&self, x: &[f64], d: &mut [f64]) {
        stage::<false>(x, x, 0.0, self.forcing, d);
    }
    fn halo(&self) -> Option<(usize, usize)> {
        Some((2, 1))
    }
    fn scheme(&self) -> Scheme {
        self.scheme
    }
    fn noise_sd(&self) -> f64 {
        self.noise
    }
    fn slab_tendency(&self, e: &[f64], out: &mut [f64]) {
        // e = [x_{s-2}, x_{s-1}, x_s .. x_{s+m-1}, x_{s+m}]: point i reads e[i..i+4].
        let m = out.len();
        let (xm2, xm1, x0, xp1) = (&e[0..m], &e[1..m + 1], &e[2..m + 2], &e[3..m + 3]);
        let f = self.forcing;
        for i in 0..m {
            out[i] = (xp1[i] - xm2[i]) * xm1[i] - x0[i] + f;
        }
    }
    fn step(&self, x: &mut [f64], ws: &mut Rk4Workspace) {
        let (dt, f) = (self.dt, self.forcing);
        if self.scheme == Scheme::Euler {
            let k1 = &mut ws.k1;
            stage::<false>(x, x, 0.0, f, k1);
            for (xi, k) in x.iter_mut().zip(k1.iter()) {
                *xi += dt * k;
            }
            return;
        }
        let Rk4Workspace { k1, k2, k3, k4, .. } = ws;
        stage::<false>(x, x, 0.0, f, k1);
        stage::<true>(x, k1, 0.5 * dt, f, k2);
        stage::<true>(x, k2, 0.5 * dt, f, k3);
        stage::<true>(x, k3, dt, f, k4);
        let h6 = dt / 6.0;
        let n = x.len();
        let (k1, k2, k3, k4) = (&k1[..n], &k2[..n], &k3[..n], &k4[..n]);
        for i in 0..n {
            x[i] += h6 * (k1[i] + 2.0 * (k2[i] + k3[i]) + k4[i]);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::models::rk4_step;

    #[test]
    fn fused_step_equals_generic_rk4() {
        for n in [4usize, 5, 40, 1001] {
            let m = Lorenz96::new(n, 8.0, 0.05);
            let x0: Vec<f64> = (0..n).map(|i| 8.0 + (i as f64 * 0.37).sin()).collect();
            let mut a = x0.clone();
            let mut b = x0.clone();
            let mut ws = Rk4Workspace::new(n);
            for _ in 0..20 {
                m.step(&mut a, &mut ws);
                rk4_step(|x, d| m.tendency(x, d), &mut b, m.dt, &mut ws);
            }
            let err = a
                .iter()
                .zip(&b)
                .map(|(p, q)| (p - q).abs())
                .fold(0.0, f64::max);
            assert!(err < 1e-12, "n={n}: {err}");
        }
    }

    /// The slab stepper (stored stage values, halo exchange) gives the fused step's bits; the
    /// multi-rank case is checked under mpirun in tests/mpi.rs.
    #[test]
    fn slab_steps_equal_whole_ring_bitwise() {
        use crate::models::SlabStepper;
        let n = 30;
        let m = Lorenz96::new(n, 8.0, 0.05);
        let x0: Vec<f64> = (0..n).map(|i| 8.0 + (i as f64 * 0.37).sin()).collect();
        let mut whole = x0.clone();
        let mut ws = Rk4Workspace::new(n);
        for _ in 0..10 {
            m.step(&mut whole, &mut ws);
        }
        // One slab with self-exchange covers the ring exactly.
        let mut st = SlabStepper::new(1, n, (2, 1));
        let mut x = x0.clone();
        for _ in 0..10 {
            st.step(&m, &mut x, &mut |tl, tr, fl, fr| {
                fl.copy_from_slice(tr);
                fr.copy_from_slice(tl);
                Ok(())
            })
            .unwrap();
        }
        assert_eq!(x, whole);
    }

    #[test]
    fn tendency_matches_definition() {
        let n = 7;
        let m = Lorenz96::new(n, 8.0, 0.05);
        let x: Vec<f64> = (0..n).map(|i| (i * i) as f64 * 0.3 - 1.0).collect();
        let mut d = vec![0.0; n];
        m.tendency(&x, &mut d);
        for i in 0..n {
            let want = (x[(i + 1) % n] - x[(i + n - 2) % n]) * x[(i + n - 1) % n] - x[i] + 8.0;
            assert!((d[i] - want).abs() < 1e-14);
        }
    }

    #[test]
    fn energy_balance_without_forcing() {
        // The advection term conserves E = ½Σx²; with F = 0 only damping remains: dE/dt = −2E.
        let n = 36;
        let m = Lorenz96::new(n, 0.0, 0.001);
        let mut x: Vec<f64> = (0..n).map(|i| (i as f64 * 0.9).cos()).collect();
        let e0: f64 = x.iter().map(|v| 0.5 * v * v).sum();
        m.integrate(&mut x, 500);
        let e1: f64 = x.iter().map(|v| 0.5 * v * v).sum();
        let want = e0 * (-2.0 * 0.5f64).exp();
        assert!((e1 - want).abs() / want < 1e-6, "{e1} vs {want}");
    }
}
