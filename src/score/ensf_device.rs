//! EnSF's reverse process (Bao, Zhang & Zhang 2024) as libtorch tensor operations, for a GPU
//! (`[filter] device = "cuda"` or `"auto"`): the mixture (or paired) prior score, the damped
//! likelihood score of point observations and the Euler–Maruyama update run on the device; the
//! step noise is drawn on the CPU from the same counter-based streams as the CPU path
//! (`sampler::noise`, keyed by seed, step, sample and global index) and copied over, so CPU and
//! device runs see the same draws. The mixture's squared distances are formed per tile of the
//! state and summed by the `Reducer` in global tile order (on a decomposed state this is the
//! domain communicator's gather, as on the CPU path). f64 by default; f32 is opt-in
//! (`precision = "f32"`).
use super::sampler::noise;
use super::ForwardProcess;
use crate::error::{GendaError, Result};
use crate::obs::Transform;
use crate::parallel::Reducer;
use std::ops::Range;
use tch::{Device, Kind, Tensor};

/// One analysis's reverse process on a device.
pub struct DeviceReverse<'a> {
    pub process: ForwardProcess,
    pub steps: usize,
    pub t_min: f64,
    /// Mixture prior over all members (else paired: sample i with member i).
    pub mixture: bool,
    pub score_clip: Option<f64>,
    /// Forecast members (m, n), row-major.
    pub forecast: &'a [f64],
    pub m: usize,
    pub n: usize,
    pub obs: &'a [f64],
    pub obs_error_var: &'a [f64],
    /// Local column each observation looks at, and the pointwise transform.
    pub idx: &'a [usize],
    pub transform: Transform,
    pub tiles: &'a [Range<usize>],
    pub reducer: &'a dyn Reducer,
    pub seed: u64,
    /// Global index of local column 0.
    pub offset: usize,
    pub device: Device,
    pub kind: Kind,
}

fn tensor_error(e: tch::TchError) -> GendaError {
    GendaError::Score(format!("EnSF on the device: {e}"))
}

impl DeviceReverse<'_> {
    fn upload(&self, v: &[f64], rows: i64, cols: i64) -> Result<Tensor> {
        Tensor::f_from_slice(v)
            .and_then(|t| t.f_reshape([rows, cols]))
            .and_then(|t| t.f_to_device(self.device))
            .and_then(|t| t.f_to_kind(self.kind))
            .map_err(tensor_error)
    }

    /// Run the reverse SDE from `x` (the t = 1 sample, (m, n)); the analysis into `x`.
    pub fn run(&self, x: &mut [f64]) -> Result<()> {
        let (m, n, p) = (self.m as i64, self.n as i64, self.idx.len() as i64);
        if x.len() != self.m * self.n || self.forecast.len() != x.len() {
            return Err(GendaError::Score(
                "EnSF on the device: sample and forecast shapes differ".into(),
            ));
        }
        let f = self.upload(self.forecast, m, n)?;
        let mut xt = self.upload(x, m, n)?;
        let y = self.upload(self.obs, 1, p)?;
        let r = self.upload(self.obs_error_var, 1, p)?;
        let idx: Vec<i64> = self.idx.iter().map(|&i| i as i64).collect();
        let idx = Tensor::from_slice(&idx).to_device(self.device);
        let cc_tiles: Vec<Tensor> = self
            .tiles
            .iter()
            .map(|c| {
                f.narrow(1, c.start as i64, c.len() as i64)
                    .square()
                    .sum_dim_intlist([1i64].as_slice(), false, self.kind)
            })
            .collect();
        let t0 = 1.0;
        let steps = self.steps.max(1);
        let h = (t0 - self.t_min) / steps as f64;
        let mut z = vec![0.0; x.len()];
        for k in 0..steps {
            let t = t0 - k as f64 * h;
            let (a, s2) = (self.process.alpha(t), self.process.sigma(t).powi(2));
            let (fd, g2) = (self.process.f(t), self.process.g2(t));
            let mut s = if self.mixture {
                self.mixture_score(&xt, &f, &cc_tiles, a, s2)?
            } else {
                (&f * a - &xt) / s2
            };
            // Damped likelihood score J_hᵀ R⁻¹ (y − h(x)) of the point observations.
            let xo = xt.index_select(1, &idx);
            let (hx, dh) = match self.transform {
                Transform::Linear => (xo.shallow_clone(), xo.ones_like()),
                Transform::Arctan => (xo.atan(), (xo.square() + 1.0).reciprocal()),
                Transform::Square => (xo.square(), &xo * 2.0),
                Transform::BlockMean { .. } => {
                    return Err(GendaError::invalid(
                        "filter.device",
                        "EnSF on a GPU supports point observations (identity, sparse, arctan, quadratic), not block means",
                    ))
                }
            };
            let v = (&y - hx) / &r * dh;
            let g = xt.zeros_like().index_add(1, &idx, &v);
            s += g * (1.0 - t);
            if let Some(c) = self.score_clip {
                s = s.clamp(-c, c);
            }
            noise(self.seed, k as u64, self.n, self.offset, &mut z);
            let zt = self.upload(&z, m, n)?;
            let sq = (g2 * h).sqrt();
            xt = &xt + (&xt * fd - s * g2) * (-h) + zt * sq;
        }
        let out: Vec<f64> = xt
            .to_kind(Kind::Double)
            .to_device(Device::Cpu)
            .reshape([-1])
            .try_into()
            .map_err(tensor_error)?;
        x.copy_from_slice(&out);
        Ok(())
    }

    /// s = (α W c − x)/σ² with W = softmax_j(−‖x_i − α c_j‖²/2σ²), distances from per-tile
    /// ‖x‖², ‖c‖² and x·cᵀ summed in global tile order.
    fn mixture_score(
        &self,
        x: &Tensor,
        c: &Tensor,
        cc_tiles: &[Tensor],
        a: f64,
        s2: f64,
    ) -> Result<Tensor> {
        let (m, nm) = (self.m as i64, self.m as i64);
        let parts: Vec<Tensor> = self
            .tiles
            .iter()
            .zip(cc_tiles)
            .map(|(cols, cc)| {
                let (s0, len) = (cols.start as i64, cols.len() as i64);
                let xt = x.narrow(1, s0, len);
                let xc = xt.matmul(&c.narrow(1, s0, len).tr()).reshape([-1]);
                let xx = xt
                    .square()
                    .sum_dim_intlist([1i64].as_slice(), false, self.kind);
                Tensor::cat(&[xc, xx, cc.shallow_clone()], 0)
            })
            .collect();
        let k = (m * nm + m + nm) as usize;
        let partials: Vec<f64> = Tensor::cat(&parts, 0)
            .to_kind(Kind::Double)
            .to_device(Device::Cpu)
            .try_into()
            .map_err(tensor_error)?;
        let sums = self.reducer.sum_tiles(&partials, k)?;
        let mn = (m * nm) as usize;
        let xc = self.upload(&sums[..mn], m, nm)?;
        let xx = self.upload(&sums[mn..mn + self.m], m, 1)?;
        let cc = self.upload(&sums[mn + self.m..], 1, nm)?;
        let d2 = (xx + cc * (a * a) - xc * (2.0 * a)).clamp_min(0.0);
        let w = (d2 * (-0.5 / s2)).softmax(1, self.kind);
        Ok((w.matmul(c) * a - x) / s2)
    }
}
