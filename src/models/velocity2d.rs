//! The 2-D Navier–Stokes model with the velocity (u, v) as its state, as the MASF code's
//! Kolmogorov case (jax-cfd's `semi_implicit_navier_stokes` on a staggered grid, state
//! stack(u, v)). The dynamics are genda's pseudo-spectral vorticity core (`Turbulence2d`): a
//! model step takes the curl of (u, v), advances the vorticity and returns the velocity of the
//! new stream function. For an incompressible velocity this is the Navier–Stokes equation in
//! primitive form with the pressure projection done exactly; the divergent part of a state (an
//! analysis increment's) is dropped at the next step, as a projection method drops it.
//!
//! The uniform flow (the k = 0 mode, which vorticity does not carry) decays by the linear drag,
//! d ū/dt = −μ ū, exactly; it is not advected with (the vorticity core has no uniform flow), which
//! is exact for the zero-mean draws and approximate only for an analysis's small mean increment.
//!
//! State layout: the u field then the v field, each row-major (y, x) on the n² grid, 2n²
//! values. The whole state lives on one domain (members still split over ranks).
use super::{Model, Rk4Workspace, Turbulence2d};

#[derive(Debug)]
pub struct VelocityForm {
    pub inner: Turbulence2d,
}

impl VelocityForm {
    pub fn new(inner: Turbulence2d) -> Self {
        VelocityForm { inner }
    }

    fn nn(&self) -> usize {
        self.inner.n() * self.inner.n()
    }

    /// Grid means of u and v.
    fn means(&self, x: &[f64]) -> (f64, f64) {
        let nn = self.nn();
        let m = |f: &[f64]| f.iter().sum::<f64>() / nn as f64;
        (m(&x[..nn]), m(&x[nn..]))
    }

    /// The vorticity of a state.
    pub fn vorticity(&self, x: &[f64]) -> Vec<f64> {
        let nn = self.nn();
        self.inner.vorticity_of(&x[..nn], &x[nn..])
    }

    /// The state of vorticity `w` with uniform flow `(um, vm)`.
    fn set_from_vorticity(&self, w: &[f64], (um, vm): (f64, f64), x: &mut [f64]) {
        let nn = self.nn();
        let (u, v) = self.inner.velocity(w);
        for (o, a) in x[..nn].iter_mut().zip(&u) {
            *o = a + um;
        }
        for (o, a) in x[nn..].iter_mut().zip(&v) {
            *o = a + vm;
        }
    }

    /// A draw of jax-cfd's `filtered_velocity_field` from white noise `x` (u's noise then v's),
    /// in place.
    pub fn filter_initial(&self, x: &mut [f64], max_speed: f64, peak_wavenumber: f64) {
        let nn = self.nn();
        let (u, v) = self
            .inner
            .filtered_velocity(&x[..nn], &x[nn..], max_speed, peak_wavenumber);
        x[..nn].copy_from_slice(&u);
        x[nn..].copy_from_slice(&v);
    }
}

impl Model for VelocityForm {
    fn name(&self) -> &'static str {
        "kolmogorov2d_velocity"
    }
    fn dim(&self) -> usize {
        2 * self.nn()
    }
    fn dt(&self) -> f64 {
        self.inner.dt()
    }
    fn tendency(&self, x: &[f64], dxdt: &mut [f64]) {
        // The velocity tendency is the inverse curl of the vorticity tendency (linear), plus
        // the drag on the uniform flow.
        let w = self.vorticity(x);
        let mut dw = vec![0.0; w.len()];
        self.inner.tendency(&w, &mut dw);
        let (um, vm) = self.means(x);
        let mu = self.inner.p.drag;
        self.set_from_vorticity(&dw, (-mu * um, -mu * vm), dxdt);
    }
    fn stability_problem(&self, x: &[f64]) -> Option<String> {
        let n = self.inner.n();
        let umax = x.iter().fold(0.0f64, |m, a| m.max(a.abs()));
        let c = umax * self.inner.p.dt / (2.0 * std::f64::consts::PI / n as f64);
        (!(c <= 1.0)).then(|| {
            format!(
                "CFL number max|u|·dt/dx = {c:.3} > 1 at the start (dt = {}, n = {n}): reduce model.dt",
                self.inner.p.dt
            )
        })
    }
    fn step(&self, x: &mut [f64], _ws: &mut Rk4Workspace) {
        self.integrate(x, 1);
    }
    fn integrate(&self, x: &mut [f64], nsteps: usize) {
        let (um, vm) = self.means(x);
        let mut w = self.vorticity(x);
        self.inner.advance(&mut w, nsteps);
        let decay = (-self.inner.p.drag * self.dt() * nsteps as f64).exp();
        self.set_from_vorticity(&w, (um * decay, vm * decay), x);
    }
    fn timers(&self) -> Vec<(&'static str, f64)> {
        self.inner.timers()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::models::{Flow, Turbulence2dParams};

    fn model(n: usize, forcing_on_velocity: bool) -> VelocityForm {
        VelocityForm::new(Turbulence2d::new(Turbulence2dParams {
            n,
            dt: 0.01,
            viscosity: 1e-3,
            drag: 0.1,
            forcing_wavenumber: 4,
            forcing_amplitude: 1.0,
            forcing_on_velocity,
            substeps: 5,
            flow: Flow::NavierStokes,
        }))
    }

    fn noise(len: usize) -> Vec<f64> {
        let mut z = vec![0.0; len];
        crate::rng::fill_standard_normal(3, crate::rng::Purpose::TruthInit, 0, 0, 0, &mut z);
        z
    }

    /// Spectral divergence ∂x u + ∂y v, largest magnitude on the grid.
    fn max_divergence(m: &VelocityForm, x: &[f64]) -> f64 {
        // The divergence of (u, v) is the curl of (v, −u).
        let nn = m.nn();
        let minus_u: Vec<f64> = x[..nn].iter().map(|a| -a).collect();
        let d = m.inner.vorticity_of(&x[nn..], &minus_u);
        d.iter().fold(0.0f64, |a, b| a.max(b.abs()))
    }

    /// The filtered draw is divergence free with zero mean, its largest speed is the requested
    /// one, and its energy sits near the peak wavenumber.
    #[test]
    fn filtered_draw_is_solenoidal_with_the_maximum_speed() {
        let m = model(32, true);
        let mut x = noise(m.dim());
        m.filter_initial(&mut x, 3.0, 4.0);
        let nn = m.nn();
        let speed = (0..nn)
            .map(|i| (x[i] * x[i] + x[nn + i] * x[nn + i]).sqrt())
            .fold(0.0f64, f64::max);
        assert!((speed - 3.0).abs() < 1e-12, "max speed {speed}");
        assert!(max_divergence(&m, &x) < 1e-10);
        let (um, vm) = m.means(&x);
        assert!(um.abs() < 1e-12 && vm.abs() < 1e-12);
        let w = m.vorticity(&x);
        let e = m.inner.energy_spectrum(&w);
        let peak = (1..e.len()).max_by(|&a, &b| e[a].total_cmp(&e[b])).unwrap();
        assert!((3..=5).contains(&peak), "energy peak at k = {peak}");
    }

    /// velocity → vorticity → velocity returns a solenoidal zero-mean field exactly, and a
    /// step from a velocity state equals the vorticity model's step of its curl.
    #[test]
    fn velocity_state_steps_as_the_vorticity_model() {
        let m = model(32, true);
        let mut x = noise(m.dim());
        m.filter_initial(&mut x, 2.0, 4.0);
        let mut back = vec![0.0; x.len()];
        m.set_from_vorticity(&m.vorticity(&x), (0.0, 0.0), &mut back);
        let err = x
            .iter()
            .zip(&back)
            .fold(0.0f64, |a, (p, q)| a.max((p - q).abs()));
        assert!(err < 1e-12, "round trip {err}");
        let mut w = m.vorticity(&x);
        m.integrate(&mut x, 3);
        m.inner.advance(&mut w, 3);
        let w2 = m.vorticity(&x);
        let err = w
            .iter()
            .zip(&w2)
            .fold(0.0f64, |a, (p, q)| a.max((p - q).abs()));
        assert!(err < 1e-10, "{err}");
    }

    /// The forcing (sin(k_f y), 0) on the velocity: from rest the tendency is exactly it; the
    /// uniform flow decays at the drag rate.
    #[test]
    fn velocity_forcing_and_mean_drag() {
        let m = model(16, true);
        let nn = m.nn();
        let mut x = vec![0.0; m.dim()];
        x[..nn].iter_mut().for_each(|u| *u = 0.5);
        let mut d = vec![0.0; m.dim()];
        m.tendency(&x, &mut d);
        for yy in 0..16 {
            let y = 2.0 * std::f64::consts::PI * yy as f64 / 16.0;
            for xx in 0..16 {
                let i = yy * 16 + xx;
                assert!((d[i] - ((4.0 * y).sin() - 0.05)).abs() < 1e-12, "{}", d[i]);
                assert!(d[nn + i].abs() < 1e-12);
            }
        }
        let mut y = x.clone();
        y[..nn].iter_mut().for_each(|u| *u = 0.5);
        m.integrate(&mut y, 2);
        let (um, _) = m.means(&y);
        let want = 0.5 * (-0.1 * m.dt() * 2.0f64).exp();
        assert!((um - want).abs() < 1e-12, "{um} vs {want}");
    }
}
