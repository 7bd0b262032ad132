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
use super::{Model, SlabTransposeFn};
use crate::error::{GendaError, Result};
use crate::parallel::local_transpose;
use rayon::prelude::*;
use rustfft::num_complex::Complex64;
use rustfft::{Fft, FftPlanner};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Instant;

/// The slab transpose of one domain (the whole grid on one process): each field transposed
/// locally, the same data movement `parallel::SlabTranspose` does on one rank.
fn one_rank_transpose(
    n: usize,
) -> impl FnMut(&[Complex64], &mut [Complex64]) -> crate::error::Result<()> {
    move |a, b| {
        for (s, t) in a.chunks(n * n).zip(b.chunks_mut(n * n)) {
            local_transpose(s, t, n);
        }
        Ok(())
    }
}
/// Values per batched row transform below which threads cost more than they save.
const PARALLEL_FFT_MIN_LEN: usize = 1 << 15;

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
    /// Forcing F(y) = amplitude · sin(k_f y) on the vorticity equation, or (`forcing_on_velocity`)
    /// on the x-velocity, i.e. F = −amplitude · k_f cos(k_f y) on the vorticity (jax-cfd's
    /// `kolmogorov_forcing`, the MASF code's setup).
    pub forcing_wavenumber: usize,
    pub forcing_amplitude: f64,
    pub forcing_on_velocity: bool,
    /// RK4 steps of `dt` per model step.
    pub substeps: usize,
    pub flow: Flow,
}

/// Spectral scratch of the whole-grid diagnostics (one per thread in use).
struct Scratch {
    tmp: Vec<Complex64>,
    fft_scratch: Vec<Complex64>,
}

/// Spectral tables of one slab: this domain's m wavenumbers kx (rows) × all n ky (columns).
struct SlabTables {
    kx: Vec<f64>,
    inv_lap: Vec<f64>,
    /// 2/3-rule mask.
    keep: Vec<bool>,
    /// exp(L h/2), exp(L h) with L = −ν|k|² − μ, and L itself.
    e_half: Vec<f64>,
    e_full: Vec<f64>,
    lin: Vec<f64>,
    forcing: Vec<Complex64>,
}

/// Tables and buffers of `fields` slabs of domain `d` of `domains`.
struct SlabWork {
    fields: usize,
    d: usize,
    domains: usize,
    tab: SlabTables,
    v: Vec<Complex64>,
    acc: Vec<Complex64>,
    u: Vec<Complex64>,
    kk: Vec<Complex64>,
    /// Two fields' worth: u + i v, ω_x + i ω_y, and their transposes.
    g2: Vec<Complex64>,
    t2: Vec<Complex64>,
}

impl SlabWork {
    fn new(m: &Turbulence2d, fields: usize, d: usize, domains: usize) -> Self {
        let n = m.p.n;
        let rows = n / domains;
        let tab = m.slab_tables(d, domains);
        let len = fields * rows * n;
        let z = |k: usize| vec![Complex64::new(0.0, 0.0); k * len];
        SlabWork {
            fields,
            d,
            domains,
            tab,
            v: z(1),
            acc: z(1),
            u: z(1),
            kk: z(1),
            g2: z(2),
            t2: z(2),
        }
    }
}

pub struct Turbulence2d {
    pub p: Turbulence2dParams,
    fwd: Arc<dyn Fft<f64>>,
    inv: Arc<dyn Fft<f64>>,
    /// Wavenumber of index j (0..n/2, then negative).
    k: Vec<f64>,
    /// 1/|k|^α with 0 at k = 0, whole grid (ky, kx) for the diagnostics.
    inv_lap: Vec<f64>,
    /// α of the inversion.
    alpha: f64,
    /// DFT of sin(k_f y_j) over y (the forcing's only column, kx = 0).
    forcing_y: Vec<Complex64>,
    pool: Mutex<Vec<Scratch>>,
    slabs: Mutex<Vec<SlabWork>>,
    /// Nanoseconds spent in the slab path's 1-D FFTs (the `fft` timer).
    fft_ns: AtomicU64,
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
        let mut inv_lap = vec![0.0; n * n];
        for ky in 0..n {
            for kx in 0..n {
                let k2 = k[kx] * k[kx] + k[ky] * k[ky];
                if k2 > 0.0 {
                    inv_lap[ky * n + kx] = 1.0 / k2.powf(alpha / 2.0);
                }
            }
        }
        // The forcing A sin(k_f y) is constant in x: its 2-D DFT is n times the 1-D DFT of the
        // column at kx = 0 and zero elsewhere.
        let kf = p.forcing_wavenumber as f64;
        let mut forcing_y: Vec<Complex64> = (0..n)
            .map(|y| {
                let yy = 2.0 * std::f64::consts::PI * y as f64 / n as f64;
                let f = if p.forcing_on_velocity {
                    // curl of (A sin(k_f y), 0): −∂y(A sin(k_f y)).
                    -p.forcing_amplitude * kf * (kf * yy).cos()
                } else {
                    p.forcing_amplitude * (kf * yy).sin()
                };
                Complex64::new(f * n as f64, 0.0)
            })
            .collect();
        fwd.process(&mut forcing_y);
        Turbulence2d {
            fwd,
            inv,
            k,
            inv_lap,
            alpha,
            forcing_y,
            pool: Mutex::new(Vec::new()),
            slabs: Mutex::new(Vec::new()),
            fft_ns: AtomicU64::new(0),
            p,
        }
    }

    /// Spectral tables of domain `d`'s slab (kx = d·m .. (d+1)·m, all ky), index kx_local·n + ky.
    fn slab_tables(&self, d: usize, domains: usize) -> SlabTables {
        let n = self.p.n;
        let m = n / domains;
        let kmax = n as f64 / 3.0;
        let kx: Vec<f64> = (0..m).map(|r| self.k[d * m + r]).collect();
        let mut t = SlabTables {
            inv_lap: vec![0.0; m * n],
            keep: vec![false; m * n],
            e_half: vec![0.0; m * n],
            e_full: vec![0.0; m * n],
            lin: vec![0.0; m * n],
            forcing: vec![Complex64::new(0.0, 0.0); m * n],
            kx,
        };
        for r in 0..m {
            let kxr = t.kx[r];
            for c in 0..n {
                let i = r * n + c;
                let k2 = kxr * kxr + self.k[c] * self.k[c];
                if k2 > 0.0 {
                    t.inv_lap[i] = 1.0 / k2.powf(self.alpha / 2.0);
                }
                t.keep[i] = kxr.abs() < kmax && self.k[c].abs() < kmax;
                let l = -self.p.viscosity * k2 - self.p.drag;
                t.lin[i] = l;
                t.e_half[i] = (0.5 * self.p.dt * l).exp();
                t.e_full[i] = (self.p.dt * l).exp();
                if d * m + r == 0 {
                    t.forcing[i] = self.forcing_y[c];
                }
            }
        }
        t
    }

    pub fn n(&self) -> usize {
        self.p.n
    }

    fn scratch(&self) -> Scratch {
        let nn = self.p.n * self.p.n;
        let len = self
            .fwd
            .get_inplace_scratch_len()
            .max(self.inv.get_inplace_scratch_len());
        Scratch {
            tmp: vec![Complex64::new(0.0, 0.0); nn],
            fft_scratch: vec![Complex64::new(0.0, 0.0); len],
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

    /// In-place whole-grid 2-D FFT for the diagnostics (rows, transpose, rows, transpose),
    /// spectral index ky·n + kx; the inverse is normalised.
    fn fft2(&self, a: &mut [Complex64], forward: bool, s: &mut Scratch) {
        let n = self.p.n;
        let plan = if forward { &self.fwd } else { &self.inv };
        for row in a.chunks_mut(n) {
            plan.process_with_scratch(row, &mut s.fft_scratch);
        }
        local_transpose(a, &mut s.tmp, n);
        for row in s.tmp.chunks_mut(n) {
            plan.process_with_scratch(row, &mut s.fft_scratch);
        }
        local_transpose(&s.tmp, a, n);
        if !forward {
            let scale = 1.0 / (n * n) as f64;
            a.iter_mut().for_each(|v| *v *= scale);
        }
    }

    /// Advance `x` (whole grid fields, one after another) by `nsteps` on one rank.
    pub fn advance(&self, x: &mut [f64], nsteps: usize) {
        self.advance_slabs(x, 0, 1, nsteps, &mut one_rank_transpose(self.p.n))
            .expect("a one-rank transpose cannot fail");
    }

    /// One forward and one inverse 2-D FFT of grid fields through the slab path, on one rank
    /// (benchmarks: a model step does 12 field FFTs, 4 × (two inverse + one forward)).
    pub fn fft_roundtrip(&self, x: &mut [f64]) {
        let n = self.p.n;
        let mut tr = one_rank_transpose(n);
        let mut w = self.take_work(x.len() / (n * n), 0, 1);
        {
            let SlabWork { v, t2, .. } = &mut w;
            for (c, &r) in v.iter_mut().zip(x.iter()) {
                *c = Complex64::new(r, 0.0);
            }
            let len = v.len();
            self.fft_slabs(v, &mut t2[..len], true, &mut tr)
                .expect("one rank");
            self.fft_slabs(&mut t2[..len], v, false, &mut tr)
                .expect("one rank");
            for (o, c) in x.iter_mut().zip(v.iter()) {
                *o = c.re;
            }
        }
        self.put_work(w);
    }

    /// Tables and buffers of a slab layout, from the pool (a run reuses one layout every cycle;
    /// concurrent callers get their own).
    fn take_work(&self, fields: usize, d: usize, domains: usize) -> SlabWork {
        let mut pool = self.slabs.lock().unwrap_or_else(|e| e.into_inner());
        match pool
            .iter()
            .position(|w| (w.fields, w.d, w.domains) == (fields, d, domains))
        {
            Some(i) => pool.swap_remove(i),
            None => {
                drop(pool);
                SlabWork::new(self, fields, d, domains)
            }
        }
    }

    fn put_work(&self, w: SlabWork) {
        self.slabs.lock().unwrap_or_else(|e| e.into_inner()).push(w);
    }

    /// Advance `x` by `nsteps`: `x` holds whole fields' slabs of this domain `d` of `domains`
    /// (m = n / domains grid rows each, row-major), one field after another; `transpose` is the
    /// all-to-all of the slab FFT over the domain communicator. The arithmetic per value does
    /// not depend on the number of domains, so every layout gives the same bits.
    pub fn advance_slabs(
        &self,
        x: &mut [f64],
        d: usize,
        domains: usize,
        nsteps: usize,
        transpose: &mut SlabTransposeFn,
    ) -> Result<()> {
        let n = self.p.n;
        if domains == 0 || n % domains != 0 || d >= domains {
            return Err(GendaError::invalid(
                "parallel.domains",
                format!("the grid side {n} is not divisible by {domains} domains"),
            ));
        }
        let mn = n / domains * n;
        if x.is_empty() {
            return Ok(());
        }
        if x.len() % mn != 0 {
            return Err(GendaError::Parallel(format!(
                "{}: {} values are not whole slabs of {mn}",
                self.name(),
                x.len()
            )));
        }
        // One field at a time: its working set (12 slabs) stays in cache far longer than a
        // batch of members would (measured 2× faster per member at 256²); every rank walks the
        // fields in the same order, so the transposes pair up.
        let mut w = self.take_work(1, d, domains);
        let mut r = Ok(());
        for field in x.chunks_mut(mn) {
            r = self.advance_work(&mut w, field, nsteps, transpose);
            if r.is_err() {
                break;
            }
        }
        self.put_work(w);
        r
    }

    fn advance_work(
        &self,
        w: &mut SlabWork,
        x: &mut [f64],
        nsteps: usize,
        transpose: &mut SlabTransposeFn,
    ) -> Result<()> {
        let SlabWork {
            tab,
            v,
            acc,
            u,
            kk,
            g2,
            t2,
            ..
        } = w;
        let len = x.len();
        let mn = tab.keep.len();
        let h = self.p.dt;
        let (h2, h3, h6) = (0.5 * h, h / 3.0, h / 6.0);
        let (eh, ef) = (&tab.e_half, &tab.e_full);
        for (c, &r) in v.iter_mut().zip(x.iter()) {
            *c = Complex64::new(r, 0.0);
        }
        self.fft_slabs(v, &mut t2[..len], true, transpose)?;
        v.copy_from_slice(&t2[..len]);
        for _ in 0..nsteps * self.p.substeps {
            // IF-RK4 with the linear part exact: stages accumulate into `acc`.
            self.nonlinear_slabs(tab, v, kk, g2, t2, transpose)?;
            // Per field (slab of mn values, aligned with the tables).
            macro_rules! fields {
                () => {
                    acc.chunks_mut(mn)
                        .zip(u.chunks_mut(mn))
                        .zip(v.chunks(mn).zip(kk.chunks(mn)))
                };
            }
            for ((a, u), (v, k)) in fields!() {
                for j in 0..mn {
                    a[j] = ef[j] * v[j] + h6 * ef[j] * k[j];
                    u[j] = eh[j] * (v[j] + h2 * k[j]);
                }
            }
            self.nonlinear_slabs(tab, u, kk, g2, t2, transpose)?;
            for ((a, u), (v, k)) in fields!() {
                for j in 0..mn {
                    a[j] += h3 * eh[j] * k[j];
                    u[j] = eh[j] * v[j] + h2 * k[j];
                }
            }
            self.nonlinear_slabs(tab, u, kk, g2, t2, transpose)?;
            for ((a, u), (v, k)) in fields!() {
                for j in 0..mn {
                    a[j] += h3 * eh[j] * k[j];
                    u[j] = ef[j] * v[j] + eh[j] * h * k[j];
                }
            }
            self.nonlinear_slabs(tab, u, kk, g2, t2, transpose)?;
            for ((vi, a), k) in v.iter_mut().zip(acc.iter()).zip(kk.iter()) {
                *vi = a + h6 * k;
            }
        }
        self.fft_slabs(v, &mut t2[..len], false, transpose)?;
        for (o, c) in x.iter_mut().zip(&t2[..len]) {
            *o = c.re;
        }
        Ok(())
    }

    /// 1-D FFTs of every length-n row of `a` (threads over rows when there are many).
    fn fft_rows(&self, a: &mut [Complex64], forward: bool) {
        let n = self.p.n;
        let plan = if forward { &self.fwd } else { &self.inv };
        let len = plan.get_inplace_scratch_len();
        let t0 = Instant::now();
        if a.len() >= PARALLEL_FFT_MIN_LEN {
            a.par_chunks_mut(n).for_each_init(
                || vec![Complex64::new(0.0, 0.0); len],
                |s, row| plan.process_with_scratch(row, s),
            );
        } else {
            let mut s = vec![Complex64::new(0.0, 0.0); len];
            for row in a.chunks_mut(n) {
                plan.process_with_scratch(row, &mut s);
            }
        }
        self.fft_ns
            .fetch_add(t0.elapsed().as_nanos() as u64, Ordering::Relaxed);
    }

    /// Slab 2-D FFT of every field of `a` into `out`. Forward: grid slabs (this domain's rows
    /// y, all x) → transposed spectral slabs (this domain's kx, all ky); inverse (normalised):
    /// the way back. `a` is overwritten.
    fn fft_slabs(
        &self,
        a: &mut [Complex64],
        out: &mut [Complex64],
        forward: bool,
        transpose: &mut SlabTransposeFn,
    ) -> Result<()> {
        self.fft_rows(a, forward);
        transpose(a, out)?;
        self.fft_rows(out, forward);
        if !forward {
            let scale = 1.0 / (self.p.n * self.p.n) as f64;
            out.iter_mut().for_each(|v| *v *= scale);
        }
        Ok(())
    }

    /// Nonlinear and forcing tendency of spectral slabs `w`: −FFT(u·∇ω) (dealiased) + F̂,
    /// written to `out`. The four real grid fields are transformed as two complex ones,
    /// u + i v and ω_x + i ω_y (exact: the 2/3 mask removes the Nyquist modes whose derivative
    /// would not be real), so a nonlinear term costs three field FFTs and transposes, not five.
    fn nonlinear_slabs(
        &self,
        tab: &SlabTables,
        w: &[Complex64],
        out: &mut [Complex64],
        g2: &mut [Complex64],
        t2: &mut [Complex64],
        transpose: &mut SlabTransposeFn,
    ) -> Result<()> {
        let n = self.p.n;
        let len = w.len();
        let mn = tab.keep.len();
        let zero = Complex64::new(0.0, 0.0);
        // g2 = [û + i v̂ | ω̂_x + i ω̂_y] = [ψ̂ (k_x + i k_y) | ω̂ (i k_x − k_y)], spectral; row r
        // of a slab is kx = tab.kx[r].
        {
            let (uv, wxy) = g2.split_at_mut(len);
            for (i0, wrow) in (0..len).step_by(n).zip(w.chunks(n)) {
                let j0 = i0 % mn;
                let kx = tab.kx[j0 / n];
                let keep = &tab.keep[j0..j0 + n];
                let inv_lap = &tab.inv_lap[j0..j0 + n];
                let (uv, wxy) = (&mut uv[i0..i0 + n], &mut wxy[i0..i0 + n]);
                for c in 0..n {
                    let wk = if keep[c] { wrow[c] } else { zero };
                    let psi = wk * inv_lap[c];
                    let ky = self.k[c];
                    uv[c] = psi * Complex64::new(kx, ky);
                    wxy[c] = wk * Complex64::new(-ky, kx);
                }
            }
        }
        self.fft_slabs(g2, t2, false, transpose)?;
        let (p, tmp) = g2.split_at_mut(len);
        {
            let (uv, wxy) = t2.split_at(len);
            for i in 0..len {
                p[i] = Complex64::new(-(uv[i].re * wxy[i].re + uv[i].im * wxy[i].im), 0.0);
            }
        }
        let tmp = &mut tmp[..len];
        self.fft_slabs(p, tmp, true, transpose)?;
        for (o, t) in out.chunks_mut(mn).zip(tmp.chunks(mn)) {
            for j in 0..mn {
                o[j] = if tab.keep[j] { t[j] } else { zero } + tab.forcing[j];
            }
        }
        Ok(())
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

    /// Vorticity ω = ∂x v − ∂y u of a velocity field on the grid (spectral derivatives; the
    /// inverse of `velocity` on the divergence-free, zero-mean part).
    pub fn vorticity_of(&self, u: &[f64], v: &[f64]) -> Vec<f64> {
        let n = self.p.n;
        self.with_scratch(|s| {
            let mut uh: Vec<Complex64> = u.iter().map(|&r| Complex64::new(r, 0.0)).collect();
            let mut vh: Vec<Complex64> = v.iter().map(|&r| Complex64::new(r, 0.0)).collect();
            self.fft2(&mut uh, true, s);
            self.fft2(&mut vh, true, s);
            for ky in 0..n {
                for kx in 0..n {
                    let i = ky * n + kx;
                    uh[i] = Complex64::new(0.0, self.k[kx]) * vh[i]
                        - Complex64::new(0.0, self.k[ky]) * uh[i];
                }
            }
            self.fft2(&mut uh, false, s);
            uh.iter().map(|c| c.re).collect()
        })
    }

    /// jax-cfd's `filtered_velocity_field` (the MASF code's initial draws): each component of
    /// the white noise `(noise_u, noise_v)` multiplied in Fourier space by the log-normal
    /// amplitude exp(−(ln k − ln k_p − ¼)²/(2·¼) − ln k)/k at |k| = k > 0 (0 at k = 0), made
    /// divergence free, and scaled so that max |u| = `max_speed` (the Nyquist modes, where the
    /// spectral derivative is not defined, are left out). The projection here is the
    /// exact spectral one, so jax-cfd's repeated project-and-normalise (against its finite-volume
    /// projection's rounding) is one pass.
    pub fn filtered_velocity(
        &self,
        noise_u: &[f64],
        noise_v: &[f64],
        max_speed: f64,
        peak_wavenumber: f64,
    ) -> (Vec<f64>, Vec<f64>) {
        let n = self.p.n;
        let (mu, var) = (peak_wavenumber.ln() + 0.25, 0.25);
        let density = |k: f64| (-(mu - k.ln()).powi(2) / 2.0 / var - k.ln()).exp() / k;
        let (mut u, mut v) = self.with_scratch(|s| {
            let mut uh: Vec<Complex64> = noise_u.iter().map(|&r| Complex64::new(r, 0.0)).collect();
            let mut vh: Vec<Complex64> = noise_v.iter().map(|&r| Complex64::new(r, 0.0)).collect();
            self.fft2(&mut uh, true, s);
            self.fft2(&mut vh, true, s);
            for ky in 0..n {
                for kx in 0..n {
                    let i = ky * n + kx;
                    let (a, b) = (self.k[kx], self.k[ky]);
                    let k2 = a * a + b * b;
                    // k = 0 carries no filtered energy; the Nyquist row and column have no real
                    // derivative, so a divergence-free field leaves them empty.
                    if k2 == 0.0 || kx == n / 2 || ky == n / 2 {
                        uh[i] = Complex64::new(0.0, 0.0);
                        vh[i] = uh[i];
                        continue;
                    }
                    let f = density(k2.sqrt());
                    let (fu, fv) = (uh[i] * f, vh[i] * f);
                    // Leray projection: remove the component along k.
                    let dot = (fu * a + fv * b) / k2;
                    uh[i] = fu - dot * a;
                    vh[i] = fv - dot * b;
                }
            }
            self.fft2(&mut uh, false, s);
            self.fft2(&mut vh, false, s);
            (
                uh.iter().map(|c| c.re).collect::<Vec<f64>>(),
                vh.iter().map(|c| c.re).collect::<Vec<f64>>(),
            )
        });
        let vmax = u
            .iter()
            .zip(&v)
            .fold(0.0f64, |m, (a, b)| m.max((a * a + b * b).sqrt()));
        if vmax > 0.0 {
            let c = max_speed / vmax;
            u.iter_mut().chain(v.iter_mut()).for_each(|x| *x *= c);
        }
        (u, v)
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
        self.p.dt * self.p.substeps as f64
    }
    fn tendency(&self, x: &[f64], dxdt: &mut [f64]) {
        // Full tendency on the grid (diagnostics; stepping uses the integrating factor).
        let tr = &mut one_rank_transpose(self.p.n);
        let mut w = self.take_work(1, 0, 1);
        {
            let SlabWork {
                tab, v, kk, g2, t2, ..
            } = &mut w;
            let len = v.len();
            for (c, &r) in v.iter_mut().zip(x) {
                *c = Complex64::new(r, 0.0);
            }
            self.fft_slabs(v, &mut t2[..len], true, tr)
                .expect("one rank");
            v.copy_from_slice(&t2[..len]);
            self.nonlinear_slabs(tab, v, kk, g2, t2, tr)
                .expect("one rank");
            for i in 0..len {
                kk[i] += v[i] * tab.lin[i];
            }
            self.fft_slabs(kk, &mut t2[..len], false, tr)
                .expect("one rank");
            for (o, c) in dxdt.iter_mut().zip(&t2[..len]) {
                *o = c.re;
            }
        }
        self.put_work(w);
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
    fn is_slab_spectral(&self) -> bool {
        true
    }
    fn timers(&self) -> Vec<(&'static str, f64)> {
        vec![("fft", self.fft_ns.load(Ordering::Relaxed) as f64 * 1e-9)]
    }
    fn advance_spectral_slabs(
        &self,
        x: &mut [f64],
        d: usize,
        domains: usize,
        nsteps: usize,
        transpose: &mut SlabTransposeFn,
    ) -> Result<()> {
        self.advance_slabs(x, d, domains, nsteps, transpose)
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
            forcing_on_velocity: false,
            substeps: 1,
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

    /// `model.truth_grid`: the fine truth (32², 2 RK4 substeps per model step of 0.02) seen
    /// through 2×2 block means decays at the analytic Taylor–Green rate, and the block means keep
    /// the domain mean; substeps make a model step span substeps · dt.
    #[test]
    fn fine_grid_truth_coarsens_taylor_green_at_the_analytic_rate() {
        use crate::models::{block_mean, ModelConfig, TurbulenceConfig};
        let (k, nu, dt, steps) = (2.0, 0.05, 0.01, 50);
        let cfg = ModelConfig::Kolmogorov(TurbulenceConfig {
            n: 16,
            dt,
            viscosity: nu,
            drag: 0.0,
            forcing_wavenumber: 4,
            forcing_amplitude: 0.0,
            forcing_on: Default::default(),
            state: Default::default(),
            substeps: 2,
            truth_grid: Some(32),
            truth_substeps: None,
        });
        cfg.validate().unwrap();
        let members = cfg.build();
        let truth = cfg.build_truth();
        assert!(truth.is_fine());
        assert_eq!((truth.dim(), truth.factor), (32 * 32, 2));
        assert!((members.dt() - 0.02).abs() < 1e-15);
        assert!((truth.model.dt() - members.dt()).abs() < 1e-15);
        let w0 = grid(32, |x, y| 2.0 * k * (k * x).cos() * (k * y).cos() + 0.3);
        let mut w = w0.clone();
        truth.model.integrate(&mut w, steps);
        let (mut c0, mut c) = (vec![0.0; 256], vec![0.0; 256]);
        truth.coarsen(&w0, &mut c0);
        truth.coarsen(&w, &mut c);
        let decay = (-2.0 * nu * k * k * members.dt() * steps as f64).exp();
        let err = c
            .iter()
            .zip(&c0)
            .map(|(a, b)| (a - 0.3 - decay * (b - 0.3)).abs())
            .fold(0.0, f64::max);
        assert!(err < 1e-10, "max error {err}");
        let mean = |v: &[f64]| v.iter().sum::<f64>() / v.len() as f64;
        assert!((mean(&c) - mean(&w)).abs() < 1e-12);
        // A field constant on each block is its own block mean.
        let blocks: Vec<f64> = (0..64)
            .map(|i| ((i / 32) * 2 + (i % 8) / 4) as f64)
            .collect();
        let mut out = vec![0.0; 4];
        block_mean(&blocks, 8, 4, &mut out);
        assert_eq!(out, vec![0.0, 1.0, 2.0, 3.0]);
        // truth_grid must be a multiple of n.
        let mut bad = cfg.clone();
        if let ModelConfig::Kolmogorov(c) = &mut bad {
            c.truth_grid = Some(24);
        }
        let e = bad.validate().unwrap_err().to_string();
        assert!(e.contains("truth_grid"), "{e}");
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
            forcing_on_velocity: false,
            substeps: 1,
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
