//! 2-D incompressible flow on the doubly periodic square [0, 2π)², pseudo-spectral:
//!
//!   ∂ω/∂t + u·∇ω = ν∇²ω − μω + F(y),   u = (∂ψ/∂y, −∂ψ/∂x),   ψ̂ = ω̂ / |k|^α,
//!
//! with α = 2 for the vorticity form of Navier–Stokes (Kolmogorov flow: F = A sin(k_f y)) and
//! α = 1 for surface quasi-geostrophic (SQG) turbulence of the surface buoyancy θ (the same
//! spectral core, the ensemble-DA test bed of DAISI). Products are formed on the grid and
//! dealiased with the 2/3 rule; time stepping is fourth-order Runge–Kutta with an integrating
//! factor for the linear terms (−ν|k|² − μ, exact), so viscosity never limits dt. The state is
//! the vorticity (or θ) on the grid, row-major (y, x). FFTs: `rustfft` (row transforms, then
//! column transforms on a transposed buffer).
use super::Model;
use rustfft::num_complex::Complex64;
use rustfft::{Fft, FftPlanner};
use std::sync::{Arc, Mutex};

/// Which inversion ψ̂ = ω̂ / |k|^α.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Flow {
    /// 2-D Navier–Stokes (vorticity form), α = 2.
    NavierStokes,
    /// Surface quasi-geostrophic, α = 1.
    Sqg,
}

/// Parameters of a 2-D turbulence model.
#[derive(Debug, Clone)]
pub struct Turbulence2dParams {
    pub n: usize,
    pub dt: f64,
    pub viscosity: f64,
    pub drag: f64,
    /// Forcing F(y) = amplitude · sin(k_f y) on the vorticity equation.
    pub forcing_wavenumber: usize,
    pub forcing_amplitude: f64,
    pub flow: Flow,
}

/// Spectral scratch for one evaluation (one per thread in use).
struct Scratch {
    a: Vec<Complex64>,
    b: Vec<Complex64>,
    c: Vec<Complex64>,
    d: Vec<Complex64>,
    tmp: Vec<Complex64>,
    fft_scratch: Vec<Complex64>,
}

pub struct Turbulence2d {
    pub p: Turbulence2dParams,
    fwd: Arc<dyn Fft<f64>>,
    inv: Arc<dyn Fft<f64>>,
    /// Wavenumber of index j (0..n/2, then negative).
    k: Vec<f64>,
    /// 1/|k|^α with 0 at k = 0.
    inv_lap: Vec<f64>,
    /// 2/3-rule mask.
    keep: Vec<bool>,
    /// exp(L h/2), exp(L h) with L = −ν|k|² − μ.
    e_half: Vec<f64>,
    e_full: Vec<f64>,
    /// Spectral forcing.
    forcing_hat: Vec<Complex64>,
    pool: Mutex<Vec<Scratch>>,
}

impl std::fmt::Debug for Turbulence2d {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Turbulence2d").field("p", &self.p).finish()
    }
}

impl Turbulence2d {
    pub fn new(p: Turbulence2dParams) -> Self {
        let n = p.n;
        let mut planner = FftPlanner::<f64>::new();
        let fwd = planner.plan_fft_forward(n);
        let inv = planner.plan_fft_inverse(n);
        let k: Vec<f64> = (0..n)
            .map(|j| {
                if j <= n / 2 {
                    j as f64
                } else {
                    j as f64 - n as f64
                }
            })
            .collect();
        let alpha = match p.flow {
            Flow::NavierStokes => 2.0,
            Flow::Sqg => 1.0,
        };
        let kmax = n as f64 / 3.0;
        let mut inv_lap = vec![0.0; n * n];
        let mut keep = vec![false; n * n];
        let mut e_half = vec![0.0; n * n];
        let mut e_full = vec![0.0; n * n];
        for ky in 0..n {
            for kx in 0..n {
                let i = ky * n + kx;
                let k2 = k[kx] * k[kx] + k[ky] * k[ky];
                if k2 > 0.0 {
                    inv_lap[i] = 1.0 / k2.powf(alpha / 2.0);
                }
                keep[i] = k[kx].abs() < kmax && k[ky].abs() < kmax;
                let l = -p.viscosity * k2 - p.drag;
                e_half[i] = (0.5 * p.dt * l).exp();
                e_full[i] = (p.dt * l).exp();
            }
        }
        let mut model = Turbulence2d {
            fwd,
            inv,
            k,
            inv_lap,
            keep,
            e_half,
            e_full,
            forcing_hat: vec![Complex64::new(0.0, 0.0); n * n],
            pool: Mutex::new(Vec::new()),
            p,
        };
        let mut f = vec![Complex64::new(0.0, 0.0); n * n];
        let kf = model.p.forcing_wavenumber as f64;
        for y in 0..n {
            let yy = 2.0 * std::f64::consts::PI * y as f64 / n as f64;
            for x in 0..n {
                f[y * n + x] = Complex64::new(model.p.forcing_amplitude * (kf * yy).sin(), 0.0);
            }
        }
        let mut s = model.scratch();
        model.fft2(&mut f, true, &mut s);
        model.forcing_hat = f;
        model
    }

    pub fn n(&self) -> usize {
        self.p.n
    }

    fn scratch(&self) -> Scratch {
        let nn = self.p.n * self.p.n;
        let z = || vec![Complex64::new(0.0, 0.0); nn];
        let len = self
            .fwd
            .get_inplace_scratch_len()
            .max(self.inv.get_inplace_scratch_len());
        Scratch {
            a: z(),
            b: z(),
            c: z(),
            d: z(),
            tmp: z(),
            fft_scratch: vec![Complex64::new(0.0, 0.0); len],
        }
    }

    /// In-place 2-D FFT (rows, transpose, rows, transpose); the inverse is normalised.
    fn fft2(&self, a: &mut [Complex64], forward: bool, s: &mut Scratch) {
        let n = self.p.n;
        let plan = if forward { &self.fwd } else { &self.inv };
        for row in a.chunks_mut(n) {
            plan.process_with_scratch(row, &mut s.fft_scratch);
        }
        transpose(a, &mut s.tmp, n);
        for row in s.tmp.chunks_mut(n) {
            plan.process_with_scratch(row, &mut s.fft_scratch);
        }
        transpose(&s.tmp, a, n);
        if !forward {
            let scale = 1.0 / (n * n) as f64;
            a.iter_mut().for_each(|v| *v *= scale);
        }
    }

    /// Nonlinear and forcing tendency in spectral space: −FFT(u·∇ω) (dealiased) + F̂.
    fn nonlinear(&self, w: &[Complex64], out: &mut [Complex64], s: &mut Scratch) {
        let n = self.p.n;
        // a = u, b = v, c = ω_x, d = ω_y (spectral → grid).
        for ky in 0..n {
            for kx in 0..n {
                let i = ky * n + kx;
                let wk = if self.keep[i] {
                    w[i]
                } else {
                    Complex64::new(0.0, 0.0)
                };
                let psi = wk * self.inv_lap[i];
                let ikx = Complex64::new(0.0, self.k[kx]);
                let iky = Complex64::new(0.0, self.k[ky]);
                s.a[i] = iky * psi;
                s.b[i] = -ikx * psi;
                s.c[i] = ikx * wk;
                s.d[i] = iky * wk;
            }
        }
        let (mut a, mut b, mut c, mut d) = (
            std::mem::take(&mut s.a),
            std::mem::take(&mut s.b),
            std::mem::take(&mut s.c),
            std::mem::take(&mut s.d),
        );
        self.fft2(&mut a, false, s);
        self.fft2(&mut b, false, s);
        self.fft2(&mut c, false, s);
        self.fft2(&mut d, false, s);
        for i in 0..n * n {
            a[i] = Complex64::new(-(a[i].re * c[i].re + b[i].re * d[i].re), 0.0);
        }
        self.fft2(&mut a, true, s);
        for i in 0..n * n {
            out[i] = if self.keep[i] {
                a[i]
            } else {
                Complex64::new(0.0, 0.0)
            } + self.forcing_hat[i];
        }
        (s.a, s.b, s.c, s.d) = (a, b, c, d);
    }

    /// One IF-RK4 step in spectral space.
    fn step_spectral(&self, v: &mut [Complex64], s: &mut Scratch) {
        let nn = v.len();
        let h = self.p.dt;
        let (eh, ef) = (&self.e_half, &self.e_full);
        let z = Complex64::new(0.0, 0.0);
        let mut ka = vec![z; nn];
        let mut kb = vec![z; nn];
        let mut kc = vec![z; nn];
        let mut kd = vec![z; nn];
        let mut u = vec![z; nn];
        self.nonlinear(v, &mut ka, s);
        for i in 0..nn {
            u[i] = eh[i] * (v[i] + 0.5 * h * ka[i]);
        }
        self.nonlinear(&u, &mut kb, s);
        for i in 0..nn {
            u[i] = eh[i] * v[i] + 0.5 * h * kb[i];
        }
        self.nonlinear(&u, &mut kc, s);
        for i in 0..nn {
            u[i] = ef[i] * v[i] + eh[i] * h * kc[i];
        }
        self.nonlinear(&u, &mut kd, s);
        for i in 0..nn {
            v[i] = ef[i] * v[i] + h / 6.0 * (ef[i] * ka[i] + 2.0 * eh[i] * (kb[i] + kc[i]) + kd[i]);
        }
    }

    fn with_scratch<R>(&self, f: impl FnOnce(&mut Scratch) -> R) -> R {
        let mut s = self
            .pool
            .lock()
            .ok()
            .and_then(|mut p| p.pop())
            .unwrap_or_else(|| self.scratch());
        let r = f(&mut s);
        if let Ok(mut p) = self.pool.lock() {
            p.push(s);
        }
        r
    }

    /// Advance a grid field by `nsteps` (one forward and one inverse FFT around the steps).
    pub fn advance(&self, x: &mut [f64], nsteps: usize) {
        self.with_scratch(|s| {
            let mut v: Vec<Complex64> = x.iter().map(|&r| Complex64::new(r, 0.0)).collect();
            self.fft2(&mut v, true, s);
            for _ in 0..nsteps {
                self.step_spectral(&mut v, s);
            }
            self.fft2(&mut v, false, s);
            for (o, c) in x.iter_mut().zip(&v) {
                *o = c.re;
            }
        })
    }

    /// One forward and one inverse 2-D FFT of a grid field (benchmarks: a model step does 20
    /// 2-D FFTs, 4 evaluations × (4 inverse + 1 forward)).
    pub fn fft_roundtrip(&self, x: &mut [f64]) {
        self.with_scratch(|s| {
            let mut v: Vec<Complex64> = x.iter().map(|&r| Complex64::new(r, 0.0)).collect();
            self.fft2(&mut v, true, s);
            self.fft2(&mut v, false, s);
            for (o, c) in x.iter_mut().zip(&v) {
                *o = c.re;
            }
        })
    }

    /// Velocity (u, v) on the grid.
    pub fn velocity(&self, x: &[f64]) -> (Vec<f64>, Vec<f64>) {
        let n = self.p.n;
        self.with_scratch(|s| {
            let mut w: Vec<Complex64> = x.iter().map(|&r| Complex64::new(r, 0.0)).collect();
            self.fft2(&mut w, true, s);
            let mut u = vec![Complex64::new(0.0, 0.0); n * n];
            let mut v = u.clone();
            for ky in 0..n {
                for kx in 0..n {
                    let i = ky * n + kx;
                    let psi = w[i] * self.inv_lap[i];
                    u[i] = Complex64::new(0.0, self.k[ky]) * psi;
                    v[i] = -Complex64::new(0.0, self.k[kx]) * psi;
                }
            }
            self.fft2(&mut u, false, s);
            self.fft2(&mut v, false, s);
            (
                u.iter().map(|c| c.re).collect(),
                v.iter().map(|c| c.re).collect(),
            )
        })
    }

    /// Largest CFL number max(|u|,|v|)·dt/dx of a field.
    pub fn cfl(&self, x: &[f64]) -> f64 {
        let (u, v) = self.velocity(x);
        let umax = u.iter().chain(&v).fold(0.0f64, |m, a| m.max(a.abs()));
        umax * self.p.dt / (2.0 * std::f64::consts::PI / self.p.n as f64)
    }

    /// Kinetic energy ½⟨|u|²⟩ and enstrophy ½⟨ω²⟩ (grid means).
    pub fn energy_enstrophy(&self, x: &[f64]) -> (f64, f64) {
        let (u, v) = self.velocity(x);
        let m = x.len() as f64;
        let e = 0.5 * u.iter().zip(&v).map(|(a, b)| a * a + b * b).sum::<f64>() / m;
        let z = 0.5 * x.iter().map(|a| a * a).sum::<f64>() / m;
        (e, z)
    }

    /// Isotropic energy spectrum E(k), k = 0..n/2 (shell-summed ½|û|²).
    pub fn energy_spectrum(&self, x: &[f64]) -> Vec<f64> {
        let n = self.p.n;
        let (u, v) = self.velocity(x);
        self.with_scratch(|s| {
            let mut uh: Vec<Complex64> = u.iter().map(|&r| Complex64::new(r, 0.0)).collect();
            let mut vh: Vec<Complex64> = v.iter().map(|&r| Complex64::new(r, 0.0)).collect();
            self.fft2(&mut uh, true, s);
            self.fft2(&mut vh, true, s);
            let norm = 1.0 / ((n * n) as f64).powi(2);
            let mut e = vec![0.0; n / 2 + 1];
            for ky in 0..n {
                for kx in 0..n {
                    let i = ky * n + kx;
                    let kk = (self.k[kx].powi(2) + self.k[ky].powi(2)).sqrt().round() as usize;
                    if kk <= n / 2 {
                        e[kk] += 0.5 * (uh[i].norm_sqr() + vh[i].norm_sqr()) * norm;
                    }
                }
            }
            e
        })
    }
}

fn transpose(a: &[Complex64], out: &mut [Complex64], n: usize) {
    const B: usize = 32;
    for i0 in (0..n).step_by(B) {
        for j0 in (0..n).step_by(B) {
            for i in i0..(i0 + B).min(n) {
                for j in j0..(j0 + B).min(n) {
                    out[j * n + i] = a[i * n + j];
                }
            }
        }
    }
}

impl Model for Turbulence2d {
    fn name(&self) -> &'static str {
        match self.p.flow {
            Flow::NavierStokes => "kolmogorov2d",
            Flow::Sqg => "sqg",
        }
    }
    fn dim(&self) -> usize {
        self.p.n * self.p.n
    }
    fn dt(&self) -> f64 {
        self.p.dt
    }
    fn tendency(&self, x: &[f64], dxdt: &mut [f64]) {
        // Full tendency on the grid (for diagnostics; stepping uses the integrating factor).
        let n = self.p.n;
        self.with_scratch(|s| {
            let mut w: Vec<Complex64> = x.iter().map(|&r| Complex64::new(r, 0.0)).collect();
            self.fft2(&mut w, true, s);
            let mut nl = vec![Complex64::new(0.0, 0.0); n * n];
            self.nonlinear(&w, &mut nl, s);
            for ky in 0..n {
                for kx in 0..n {
                    let i = ky * n + kx;
                    let k2 = self.k[kx].powi(2) + self.k[ky].powi(2);
                    nl[i] += w[i] * (-self.p.viscosity * k2 - self.p.drag);
                }
            }
            self.fft2(&mut nl, false, s);
            for (o, c) in dxdt.iter_mut().zip(&nl) {
                *o = c.re;
            }
        })
    }
    fn stability_problem(&self, x: &[f64]) -> Option<String> {
        let c = self.cfl(x);
        (!(c <= 1.0)).then(|| {
            format!(
                "CFL number max|u|·dt/dx = {c:.3} > 1 at the start (dt = {}, n = {}): reduce model.dt",
                self.p.dt, self.p.n
            )
        })
    }
    fn grid_side(&self) -> Option<usize> {
        Some(self.p.n)
    }
    fn step(&self, x: &mut [f64], _ws: &mut super::Rk4Workspace) {
        self.advance(x, 1);
    }
    fn integrate(&self, x: &mut [f64], nsteps: usize) {
        self.advance(x, nsteps);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn params(n: usize, dt: f64, nu: f64) -> Turbulence2dParams {
        Turbulence2dParams {
            n,
            dt,
            viscosity: nu,
            drag: 0.0,
            forcing_wavenumber: 4,
            forcing_amplitude: 0.0,
            flow: Flow::NavierStokes,
        }
    }

    fn grid(n: usize, f: impl Fn(f64, f64) -> f64) -> Vec<f64> {
        let h = 2.0 * std::f64::consts::PI / n as f64;
        (0..n * n)
            .map(|i| f((i % n) as f64 * h, (i / n) as f64 * h))
            .collect()
    }

    /// Taylor–Green: ω = 2k cos(kx) cos(ky) has u·∇ω = 0 and decays as exp(−2νk²t).
    #[test]
    fn taylor_green_decays_at_the_analytic_rate() {
        let (n, k, nu, dt, steps) = (32, 2.0, 0.05, 0.01, 200);
        let m = Turbulence2d::new(params(n, dt, nu));
        let mut w = grid(n, |x, y| 2.0 * k * (k * x).cos() * (k * y).cos());
        m.integrate(&mut w, steps);
        let decay = (-2.0 * nu * k * k * dt * steps as f64).exp();
        let want = grid(n, |x, y| 2.0 * k * (k * x).cos() * (k * y).cos() * decay);
        let err = w
            .iter()
            .zip(&want)
            .map(|(a, b)| (a - b).abs())
            .fold(0.0, f64::max);
        assert!(err < 1e-10, "max error {err}");
    }

    /// Inviscid, unforced: energy and enstrophy are conserved to time-truncation error.
    #[test]
    fn inviscid_flow_conserves_energy_and_enstrophy() {
        for flow in [Flow::NavierStokes, Flow::Sqg] {
            let mut p = params(64, 0.002, 0.0);
            p.flow = flow;
            let m = Turbulence2d::new(p);
            let mut w = grid(64, |x, y| {
                (x + 0.3).sin() * (2.0 * y).cos()
                    + 0.5 * (3.0 * x - y).cos()
                    + 0.3 * (2.0 * x + 5.0 * y).sin()
            });
            let (e0, z0) = m.energy_enstrophy(&w);
            m.integrate(&mut w, 250);
            let (e1, z1) = m.energy_enstrophy(&w);
            let (de, dz) = ((e1 - e0).abs() / e0, (z1 - z0).abs() / z0);
            assert!(
                de < 1e-6 && dz < 1e-6,
                "{flow:?}: energy {de:e}, enstrophy {dz:e}"
            );
        }
    }
}

#[cfg(test)]
mod spectrum_tests {
    use super::*;

    /// A spun-up 128² Kolmogorov flow has a steep spectrum beyond the forcing scale (direct
    /// enstrophy cascade, k^-3 or steeper with drag and viscosity) and holds most energy at and
    /// above the forcing scale.
    #[test]
    fn kolmogorov_spectrum_has_a_cascade_slope() {
        let n = 128;
        let m = Turbulence2d::new(Turbulence2dParams {
            n,
            dt: 0.01,
            viscosity: 2e-3,
            drag: 0.1,
            forcing_wavenumber: 4,
            forcing_amplitude: 4.0,
            flow: Flow::NavierStokes,
        });
        let mut w: Vec<f64> = (0..n * n)
            .map(|i| ((i as f64 * 12.9898).sin() * 43758.5453).fract() - 0.5)
            .collect();
        m.integrate(&mut w, 2000);
        let e = m.energy_spectrum(&w);
        let (k0, k1) = (8usize, 30usize);
        let xs: Vec<f64> = (k0..=k1).map(|k| (k as f64).ln()).collect();
        let ys: Vec<f64> = (k0..=k1).map(|k| e[k].ln()).collect();
        let (mx, my) = (
            xs.iter().sum::<f64>() / xs.len() as f64,
            ys.iter().sum::<f64>() / ys.len() as f64,
        );
        let slope = xs
            .iter()
            .zip(&ys)
            .map(|(x, y)| (x - mx) * (y - my))
            .sum::<f64>()
            / xs.iter().map(|x| (x - mx).powi(2)).sum::<f64>();
        let low: f64 = e[1..=6].iter().sum();
        let total: f64 = e.iter().sum();
        eprintln!(
            "128² Kolmogorov: spectral slope over k = {k0}..{k1}: {slope:.2}; E(k<=6)/E = {:.2}",
            low / total
        );
        assert!((-7.0..=-2.5).contains(&slope), "slope {slope}");
        assert!(low / total > 0.5);
    }
}
