//! Science check (a): on a linear-Gaussian system the ETKF reproduces the exact Kalman filter.
//!
//! The initial ensemble is built with exactly the prior mean and covariance (N > n), the model
//! is linear without noise and h is linear, so the ETKF analysis mean and covariance must equal
//! the Kalman filter's to rounding error at every cycle — with or without the random
//! mean-preserving rotation. The stochastic EnKF matches only statistically (checked with a
//! large ensemble, one cycle).
use genda::filters::{
    anomalies, ensemble_mean, AnalysisInput, Enkf, EnkfConfig, Etkf, EtkfConfig, Filter,
};
use genda::models::{LinearModel, Model};
use genda::obs::{ObsOperator, PointObs};
use genda::rng::{fill_standard_normal, Purpose};
use nalgebra::{DMatrix, DVector};
use ndarray::Array2;

const N_STATE: usize = 4;

fn propagator() -> DMatrix<f64> {
    // A slowly growing rotation in (0,1), a decaying mode, and coupling.
    let (c, s) = (0.3f64.cos(), 0.3f64.sin());
    DMatrix::from_row_slice(
        4,
        4,
        &[
            1.02 * c,
            -1.02 * s,
            0.1,
            0.0,
            1.02 * s,
            1.02 * c,
            0.0,
            0.05,
            0.0,
            0.0,
            0.9,
            0.2,
            0.1,
            0.0,
            -0.2,
            0.95,
        ],
    )
}

fn prior() -> (DVector<f64>, DMatrix<f64>) {
    let m = DVector::from_vec(vec![1.0, -0.5, 2.0, 0.3]);
    let l = DMatrix::from_row_slice(
        4,
        4,
        &[
            1.0, 0.0, 0.0, 0.0, 0.3, 0.8, 0.0, 0.0, -0.2, 0.1, 1.5, 0.0, 0.0, 0.4, 0.2, 0.6,
        ],
    );
    (m, &l * l.transpose())
}

/// An ensemble (members, n) with exactly mean `m` and sample covariance `p`.
fn exact_ensemble(members: usize, m: &DVector<f64>, p: &DMatrix<f64>) -> Array2<f64> {
    let n = m.len();
    let mut z = DMatrix::zeros(members, n);
    for i in 0..members {
        let mut row = vec![0.0; n];
        fill_standard_normal(99, Purpose::EnsembleInit, 0, i as u64, 0, &mut row);
        for j in 0..n {
            z[(i, j)] = row[j];
        }
    }
    let colmean = z.row_mean();
    for i in 0..members {
        let mut r = z.row_mut(i);
        r -= &colmean;
    }
    let s = z.transpose() * &z / (members as f64 - 1.0);
    let ls = s.cholesky().unwrap().l();
    let l0 = p.clone().cholesky().unwrap().l();
    // A = Z Ls^{-T} L0ᵀ has AᵀA/(N−1) = L0 L0ᵀ.
    let ls_inv_t = ls.try_inverse().unwrap().transpose();
    let a = z * ls_inv_t * l0.transpose();
    Array2::from_shape_fn((members, n), |(i, j)| m[j] + a[(i, j)])
}

fn ens_moments(e: &Array2<f64>) -> (DVector<f64>, DMatrix<f64>) {
    let mean = ensemble_mean(e);
    let a = anomalies(e, &mean);
    let (n_mem, n) = a.dim();
    let am = DMatrix::from_fn(n_mem, n, |i, j| a[[i, j]]);
    (
        DVector::from_iterator(n, mean.iter().copied()),
        am.transpose() * am / (n_mem as f64 - 1.0),
    )
}

fn kalman_analysis(
    m: &mut DVector<f64>,
    p: &mut DMatrix<f64>,
    h: &DMatrix<f64>,
    r: &DMatrix<f64>,
    y: &DVector<f64>,
) {
    let s = h * &*p * h.transpose() + r;
    let k = &*p * h.transpose() * s.try_inverse().unwrap();
    *m += &k * (y - h * &*m);
    let i = DMatrix::identity(p.nrows(), p.nrows());
    *p = (i - &k * h) * &*p;
}

fn h_matrix(op: &PointObs) -> DMatrix<f64> {
    let mut h = DMatrix::zeros(op.obs_dim(), op.state_dim());
    for (j, &i) in op.locations().iter().enumerate() {
        h[(j, i)] = 1.0;
    }
    h
}

fn etkf_matches_kalman(rotation: bool) {
    let mmat = propagator();
    let model = LinearModel::new(mmat.transpose().as_slice().to_vec(), N_STATE);
    let op = PointObs::new(N_STATE, vec![0, 2], false);
    let r_var = vec![0.5, 0.8];
    let h = h_matrix(&op);
    let r = DMatrix::from_diagonal(&DVector::from_vec(r_var.clone()));
    let (mut m, mut p) = prior();
    let members = 30;
    let mut ens = exact_ensemble(members, &m, &p);
    let mut filter = Etkf::new(EtkfConfig {
        members,
        inflation: 1.0,
        rotation,
    });
    for cycle in 1..=15 {
        // Forecast: KF moments and every member through the same linear model.
        m = &mmat * &m;
        p = &mmat * &p * mmat.transpose();
        for mut row in ens.rows_mut() {
            model.integrate(row.as_slice_mut().unwrap(), 1);
        }
        let y = vec![(cycle as f64 * 0.7).sin() * 2.0, (cycle as f64 * 0.3).cos()];
        kalman_analysis(&mut m, &mut p, &h, &r, &DVector::from_vec(y.clone()));
        let input = AnalysisInput::whole(&y, &op, &r_var, cycle, 5);
        filter.analyse(&mut ens, &input).unwrap();
        let (em, ep) = ens_moments(&ens);
        let mean_err = (&em - &m).amax() / m.amax();
        let cov_err = (&ep - &p).amax() / p.amax();
        assert!(
            mean_err < 1e-10 && cov_err < 1e-10,
            "cycle {cycle} (rotation {rotation}): mean err {mean_err:e}, cov err {cov_err:e}"
        );
    }
}

#[test]
fn etkf_equals_kalman_filter_linear_gaussian() {
    etkf_matches_kalman(false);
}

#[test]
fn etkf_with_rotation_equals_kalman_filter_linear_gaussian() {
    etkf_matches_kalman(true);
}

#[test]
fn stochastic_enkf_approaches_kalman_filter_with_large_ensemble() {
    let op = PointObs::new(N_STATE, vec![0, 1, 3], false);
    let r_var = vec![0.5, 0.8, 0.3];
    let h = h_matrix(&op);
    let r = DMatrix::from_diagonal(&DVector::from_vec(r_var.clone()));
    let (mut m, mut p) = prior();
    let members = 1500;
    let mut ens = exact_ensemble(members, &m, &p);
    let y = vec![1.7, 0.2, -0.4];
    kalman_analysis(&mut m, &mut p, &h, &r, &DVector::from_vec(y.clone()));
    let mut filter = Enkf::new(EnkfConfig {
        members,
        inflation: 1.0,
        perturbations: Default::default(),
        perturbation_draws: Default::default(),
        inflate: Default::default(),
        gain_jitter: 0.0,
    });
    let input = AnalysisInput::whole(&y, &op, &r_var, 1, 21);
    filter.analyse(&mut ens, &input).unwrap();
    let (em, ep) = ens_moments(&ens);
    for i in 0..N_STATE {
        let se = (p[(i, i)] / members as f64).sqrt();
        assert!(
            (em[i] - m[i]).abs() < 5.0 * se,
            "mean[{i}]: {} vs {} (se {se})",
            em[i],
            m[i]
        );
        let rel = (ep[(i, i)] - p[(i, i)]).abs() / p[(i, i)];
        assert!(rel < 0.15, "var[{i}]: {} vs {}", ep[(i, i)], p[(i, i)]);
    }
}
