//! Closed-form posterior of the hidden variables of a conditionally Gaussian model given the
//! path of its observed variables (the conditional-Gaussian filter and smoother, Liptser &
//! Shiryaev 2001; Chen & Majda 2018).
//!
//! For the Euler–Maruyama discretisation genda steps, with u_n observed at every step,
//!   v_{n+1} = F_n v_n + c_n + q_n,  F_n = I + a1(u_n) dt, c_n = a0(u_n) dt, q_n ~ N(0, diag(s_v²) dt)
//!   z_n := u_{n+1} − u_n − A0(u_n) dt = H_n v_n + e_n,  H_n = A1(u_n) dt, e_n ~ N(0, diag(s_u²) dt)
//! is a linear-Gaussian state-space model once the u path is known, so the Kalman filter and
//! the Rauch–Tung–Striebel smoother give the posterior exactly (the continuous CG filter and
//! smoother equations are its dt → 0 limit). The filter at step n conditions on u_0..u_n,
//! the smoother on the whole path.
use crate::error::{GendaError, Result};
use crate::models::{ConditionalGaussian, Model};
use nalgebra::{DMatrix, DVector};

/// Gaussian posterior of v at every step 0..=T: means (n_v) and covariances (n_v × n_v).
#[derive(Debug, Clone)]
pub struct CgPosterior {
    pub mean: Vec<DVector<f64>>,
    pub cov: Vec<DMatrix<f64>>,
}

/// Filter and smoother of one u path.
#[derive(Debug, Clone)]
pub struct CgResult {
    /// p(v_n | u_0..u_n).
    pub filter: CgPosterior,
    /// p(v_n | u_0..u_T).
    pub smoother: CgPosterior,
}

/// The model's CG structure, or a clear error naming the model.
pub fn cg_structure(model: &dyn Model) -> Result<&dyn ConditionalGaussian> {
    model.conditional_gaussian().ok_or_else(|| {
        GendaError::invalid(
            "model.kind",
            format!(
                "{} has no conditionally Gaussian structure (observed u, hidden v linear given u); use spekf or cg_lorenz96 (with y_advection = 0), or give Ω a surrogate (filter.surrogate = \"fitted\")",
                model.name()
            ),
        )
    })
}

/// One step of the CG filter along a known u path: condition N(m, P) of v_n on
/// z_n = u_{n+1} − u_n − A0(u_n) dt, then predict v_{n+1}. Holds the noise matrices and the
/// drift-term buffers, so following many paths (Ω's members) allocates only the results.
pub struct CgStep<'m> {
    cg: &'m dyn ConditionalGaussian,
    pub nu: usize,
    pub nv: usize,
    dt: f64,
    r: DMatrix<f64>,
    q: DMatrix<f64>,
    ba0: Vec<f64>,
    ba1: Vec<f64>,
    a0: Vec<f64>,
    a1: Vec<f64>,
}

/// What one `CgStep::step` gives: the filter posterior at step n (after z_n), the transition
/// matrix F_n, and the prediction for step n + 1.
pub struct CgStepResult {
    pub post_mean: DVector<f64>,
    pub post_cov: DMatrix<f64>,
    pub f: DMatrix<f64>,
    pub next_mean: DVector<f64>,
    pub next_cov: DMatrix<f64>,
}

impl<'m> CgStep<'m> {
    pub fn new(model: &'m dyn Model) -> Result<Self> {
        let cg = cg_structure(model)?;
        let nu = cg.observed_dim();
        let nv = model.dim() - nu;
        let dt = model.dt();
        let (s_u, s_v) = cg.cg_noise();
        let r = DMatrix::from_diagonal(&DVector::from_iterator(nu, s_u.iter().map(|s| s * s * dt)));
        let q = DMatrix::from_diagonal(&DVector::from_iterator(nv, s_v.iter().map(|s| s * s * dt)));
        Ok(CgStep {
            cg,
            nu,
            nv,
            dt,
            r,
            q,
            ba0: vec![0.0; nu],
            ba1: vec![0.0; nu * nv],
            a0: vec![0.0; nv],
            a1: vec![0.0; nv * nv],
        })
    }

    /// `n` names the step in errors.
    pub fn step(
        &mut self,
        u: &[f64],
        u_next: &[f64],
        m: &DVector<f64>,
        p: &DMatrix<f64>,
        n: usize,
    ) -> Result<CgStepResult> {
        let (nu, nv, dt) = (self.nu, self.nv, self.dt);
        self.cg
            .cg_terms(u, &mut self.ba0, &mut self.ba1, &mut self.a0, &mut self.a1);
        let h = DMatrix::from_row_slice(nu, nv, &self.ba1) * dt;
        let z = DVector::from_iterator(nu, (0..nu).map(|i| u_next[i] - u[i] - self.ba0[i] * dt));
        // Update with z_n (Joseph form keeps P symmetric positive definite).
        let s = &h * p * h.transpose() + &self.r;
        let chol = s.cholesky().ok_or_else(|| {
            GendaError::LinAlg(format!(
                "CG filter: innovation covariance not positive definite at step {n}"
            ))
        })?;
        let pht = p * h.transpose();
        let k = chol.solve(&pht.transpose()).transpose();
        let post_mean = m + &k * (&z - &h * m);
        let ikh = DMatrix::identity(nv, nv) - &k * &h;
        let post_cov = &ikh * p * ikh.transpose() + &k * &self.r * k.transpose();
        // Predict v_{n+1}.
        let f = DMatrix::identity(nv, nv) + DMatrix::from_row_slice(nv, nv, &self.a1) * dt;
        let c = DVector::from_column_slice(&self.a0) * dt;
        let next_mean = &f * &post_mean + c;
        let next_cov = &f * &post_cov * f.transpose() + &self.q;
        Ok(CgStepResult {
            post_mean,
            post_cov,
            f,
            next_mean,
            next_cov,
        })
    }
}

/// Run the CG filter and smoother on the observed path `u` (T + 1 rows of n_u values, one per
/// model step) from the prior v_0 ~ N(m0, p0).
pub fn cg_filter_smoother(
    model: &dyn Model,
    u: &[Vec<f64>],
    m0: &DVector<f64>,
    p0: &DMatrix<f64>,
) -> Result<CgResult> {
    let mut stepper = CgStep::new(model)?;
    let (nu, nv) = (stepper.nu, stepper.nv);
    if m0.len() != nv || p0.shape() != (nv, nv) {
        return Err(GendaError::Dimension {
            what: "CG prior of the hidden variables".into(),
            expected: nv,
            got: m0.len(),
        });
    }
    if let Some(bad) = u.iter().position(|r| r.len() != nu) {
        return Err(GendaError::Dimension {
            what: format!("observed path at step {bad}"),
            expected: nu,
            got: u[bad].len(),
        });
    }
    let steps = u.len().saturating_sub(1);
    let mut prior_m = vec![m0.clone()];
    let mut prior_p = vec![p0.clone()];
    let (mut post_m, mut post_p, mut fs) = (Vec::new(), Vec::new(), Vec::new());
    for n in 0..steps {
        let r = stepper.step(&u[n], &u[n + 1], &prior_m[n], &prior_p[n], n)?;
        prior_m.push(r.next_mean);
        prior_p.push(r.next_cov);
        post_m.push(r.post_mean);
        post_p.push(r.post_cov);
        fs.push(r.f);
    }
    // Rauch–Tung–Striebel backwards.
    let mut sm = vec![DVector::zeros(nv); steps + 1];
    let mut sp = vec![DMatrix::zeros(nv, nv); steps + 1];
    sm[steps] = prior_m[steps].clone();
    sp[steps] = prior_p[steps].clone();
    for n in (0..steps).rev() {
        let chol = prior_p[n + 1].clone().cholesky().ok_or_else(|| {
            GendaError::LinAlg(format!(
                "CG smoother: predicted covariance not positive definite at step {}",
                n + 1
            ))
        })?;
        // J = P⁺ Fᵀ (P⁻_{n+1})⁻¹ = ((P⁻_{n+1})⁻¹ F P⁺)ᵀ.
        let j = chol.solve(&(&fs[n] * &post_p[n])).transpose();
        sm[n] = &post_m[n] + &j * (&sm[n + 1] - &prior_m[n + 1]);
        let sp_n = &post_p[n] + &j * (&sp[n + 1] - &prior_p[n + 1]) * j.transpose();
        sp[n] = 0.5 * (&sp_n + sp_n.transpose());
    }
    Ok(CgResult {
        filter: CgPosterior {
            mean: prior_m,
            cov: prior_p,
        },
        smoother: CgPosterior { mean: sm, cov: sp },
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::models::{Rk4Workspace, Spekf};
    use crate::rng::{fill_standard_normal, Purpose};

    fn spekf(dt: f64) -> Spekf {
        Spekf {
            dt,
            forcing: 0.3,
            sigma_u: 0.5,
            gamma_mean: 1.5,
            d_gamma: 1.3,
            sigma_gamma: 1.6,
            b_mean: 0.2,
            d_b: 0.5,
            sigma_b: 0.5,
        }
    }

    /// Euler–Maruyama path of the full state (test helper).
    fn simulate(m: &Spekf, x0: &[f64], steps: usize, seed: u64) -> Vec<Vec<f64>> {
        let mut x = x0.to_vec();
        let mut ws = Rk4Workspace::new(3);
        let mut z = vec![0.0; 3];
        let mut out = vec![x.clone()];
        for s in 0..steps {
            m.step(&mut x, &mut ws);
            fill_standard_normal(seed, Purpose::ModelNoise, s as u64, 0, 0, &mut z);
            for i in 0..3 {
                x[i] += m.noise_sd_at(i) * m.dt.sqrt() * z[i];
            }
            out.push(x.clone());
        }
        out
    }

    /// Brute force: the joint Gaussian of (v_0..v_T, z_0..z_{T−1}) built densely and conditioned
    /// on the z's (all of them for the smoother, the first n for the filter at step n).
    #[test]
    fn filter_and_smoother_equal_dense_gaussian_conditioning() {
        let m = spekf(0.01);
        let path = simulate(&m, &[0.5, 1.0, 0.0], 15, 4);
        let u: Vec<Vec<f64>> = path.iter().map(|x| vec![x[0]]).collect();
        let m0 = DVector::from_vec(vec![1.2, 0.1]);
        let p0 = DMatrix::from_row_slice(2, 2, &[0.8, 0.1, 0.1, 0.5]);
        let res = cg_filter_smoother(&m, &u, &m0, &p0).unwrap();
        let (t, nv, dt) = (u.len() - 1, 2usize, m.dt);
        let big = nv * (t + 1);
        // v = G w + μ with w = (v_0 − m0, q_0, …, q_{T−1}).
        let mut g = DMatrix::<f64>::zeros(big, big);
        let mut mu = DVector::<f64>::zeros(big);
        let mut wcov = DMatrix::<f64>::zeros(big, big);
        wcov.view_mut((0, 0), (nv, nv)).copy_from(&p0);
        mu.rows_mut(0, nv).copy_from(&m0);
        g.view_mut((0, 0), (nv, nv)).fill_with_identity();
        let mut hs = Vec::new();
        let mut zs = Vec::new();
        for n in 0..t {
            let (mut ba0, mut ba1, mut a0, mut a1) =
                (vec![0.0; 1], vec![0.0; 2], vec![0.0; 2], vec![0.0; 4]);
            m.cg_terms(&u[n], &mut ba0, &mut ba1, &mut a0, &mut a1);
            let f = DMatrix::identity(2, 2) + DMatrix::from_row_slice(2, 2, &a1) * dt;
            let c = DVector::from_column_slice(&a0) * dt;
            let prev = g.rows(n * nv, nv).clone_owned();
            g.rows_mut((n + 1) * nv, nv).copy_from(&(&f * prev));
            g.view_mut(((n + 1) * nv, (n + 1) * nv), (nv, nv))
                .fill_with_identity();
            let mprev = mu.rows(n * nv, nv).clone_owned();
            mu.rows_mut((n + 1) * nv, nv).copy_from(&(&f * mprev + c));
            wcov.view_mut(((n + 1) * nv, (n + 1) * nv), (nv, nv))
                .copy_from(&DMatrix::from_diagonal(&DVector::from_vec(vec![
                    m.sigma_gamma.powi(2) * dt,
                    m.sigma_b.powi(2) * dt,
                ])));
            hs.push(DMatrix::from_row_slice(1, 2, &ba1) * dt);
            zs.push(u[n + 1][0] - u[n][0] - ba0[0] * dt);
        }
        let sv = &g * &wcov * g.transpose();
        let condition = |k: usize| {
            // Condition on z_0..z_{k−1}.
            let mut h = DMatrix::<f64>::zeros(k, big);
            for n in 0..k {
                h.view_mut((n, n * nv), (1, nv)).copy_from(&hs[n]);
            }
            let r = DMatrix::<f64>::identity(k, k) * (m.sigma_u.powi(2) * dt);
            let s = &h * &sv * h.transpose() + r;
            let sinv = s.try_inverse().unwrap();
            let gain = &sv * h.transpose() * sinv;
            let z = DVector::from_vec(zs[..k].to_vec());
            let mean = &mu + &gain * (z - &h * &mu);
            let cov = &sv - &gain * &h * &sv;
            (mean, cov)
        };
        let (ms, cs) = condition(t);
        for n in 0..=t {
            let dm = (res.smoother.mean[n].clone() - ms.rows(n * nv, nv)).amax();
            let dc = (res.smoother.cov[n].clone() - cs.view((n * nv, n * nv), (nv, nv))).amax();
            assert!(
                dm < 1e-9 && dc < 1e-9,
                "smoother step {n}: mean {dm:e}, cov {dc:e}"
            );
        }
        for n in [1usize, 7, t] {
            let (mf, cf) = condition(n);
            let dm = (res.filter.mean[n].clone() - mf.rows(n * nv, nv)).amax();
            let dc = (res.filter.cov[n].clone() - cf.view((n * nv, n * nv), (nv, nv))).amax();
            assert!(
                dm < 1e-9 && dc < 1e-9,
                "filter step {n}: mean {dm:e}, cov {dc:e}"
            );
        }
    }

    /// On a long path the smoother's mean tracks the true hidden damping better than the
    /// filter's, and both far better than the climatology; the truth sits inside the posterior.
    #[test]
    fn posterior_tracks_the_hidden_damping() {
        let m = spekf(0.005);
        let path = simulate(&m, &[0.0, 1.5, 0.2], 40_000, 11);
        let u: Vec<Vec<f64>> = path.iter().map(|x| vec![x[0]]).collect();
        let clim_var = m.sigma_gamma.powi(2) / (2.0 * m.d_gamma);
        let m0 = DVector::from_vec(vec![m.gamma_mean, m.b_mean]);
        let p0 = DMatrix::from_diagonal(&DVector::from_vec(vec![clim_var, 0.25]));
        let res = cg_filter_smoother(&m, &u, &m0, &p0).unwrap();
        let err = |post: &CgPosterior| {
            let (mut se, mut z2) = (0.0, 0.0);
            for (n, x) in path.iter().enumerate().skip(1000) {
                let e = post.mean[n][0] - x[1];
                se += e * e;
                z2 += e * e / post.cov[n][(0, 0)];
            }
            let k = (path.len() - 1000) as f64;
            ((se / k).sqrt(), z2 / k)
        };
        let ((ef, zf), (es, zs)) = (err(&res.filter), err(&res.smoother));
        eprintln!(
            "SPEKF γ: RMSE filter {ef:.3}, smoother {es:.3}, climatology {:.3}; mean z² {zf:.2} / {zs:.2}",
            clim_var.sqrt()
        );
        assert!(es < ef && ef < 0.95 * clim_var.sqrt(), "{es} {ef}");
        assert!(
            (0.7..1.3).contains(&zf) && (0.7..1.3).contains(&zs),
            "{zf} {zs}"
        );
    }

    #[test]
    fn a_model_without_cg_structure_is_a_clear_error() {
        let l63 = crate::models::Lorenz63::default();
        let e = cg_filter_smoother(
            &l63,
            &[vec![0.0]],
            &DVector::zeros(1),
            &DMatrix::identity(1, 1),
        )
        .unwrap_err()
        .to_string();
        assert!(
            e.contains("lorenz63 has no conditionally Gaussian structure"),
            "{e}"
        );
    }
}
