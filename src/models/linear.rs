//! Linear model x_{k+1} = M x_k (one exact step per `dt`): the linear-Gaussian test bed on which
//! ensemble filters are checked against the exact Kalman filter.
use super::{Model, Rk4Workspace};

#[derive(Debug, Clone)]
pub struct LinearModel {
    /// Row-major (dim, dim) propagator.
    pub m: Vec<f64>,
    pub dim: usize,
    pub dt: f64,
}

impl LinearModel {
    pub fn new(m: Vec<f64>, dim: usize) -> Self {
        assert_eq!(m.len(), dim * dim, "LinearModel: matrix must be dim*dim");
        LinearModel { m, dim, dt: 1.0 }
    }
}

impl Model for LinearModel {
    fn name(&self) -> &'static str {
        "linear"
    }
    fn dim(&self) -> usize {
        self.dim
    }
    fn dt(&self) -> f64 {
        self.dt
    }
    /// Tendency of the equivalent one-step map, (M − I)x / dt.
    fn tendency(&self, x: &[f64], d: &mut [f64]) {
        for (i, di) in d.iter_mut().enumerate() {
            let row = &self.m[i * self.dim..(i + 1) * self.dim];
            *di = (row.iter().zip(x).map(|(a, b)| a * b).sum::<f64>() - x[i]) / self.dt;
        }
    }
    fn step(&self, x: &mut [f64], ws: &mut Rk4Workspace) {
        let tmp = &mut ws.tmp;
        for (i, t) in tmp.iter_mut().enumerate() {
            let row = &self.m[i * self.dim..(i + 1) * self.dim];
            *t = row.iter().zip(x.iter()).map(|(a, b)| a * b).sum();
        }
        x.copy_from_slice(tmp);
    }
}
