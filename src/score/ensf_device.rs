//! The training-free reverse processes — EnSF (Bao, Zhang & Zhang 2024) and KDE conditional
//! diffusion — as libtorch tensor operations, for a GPU (`[filter] device = "cuda"` or
//! `"auto"`): the mixture (or paired) prior score, EnSF's damped
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

/// The damped likelihood score J_hᵀ R⁻¹ (y − h(x)) · (1 − t) of point observations.
pub struct DeviceLikelihood<'a> {
    pub obs: &'a [f64],
    pub obs_error_var: &'a [f64],
    /// Local column each observation looks at, and the pointwise transform.
    pub idx: &'a [usize],
    pub transform: Transform,
}

/// One analysis's reverse process on a device: the mixture (or paired) score of centres
/// α·c_j with variance σ²(t) + α²·`kernel_var` and optional log-weights ℓ_j (KDE diffusion),
/// plus an optional likelihood score (EnSF), integrated by Euler–Maruyama or by Heun steps of
/// the probability-flow ODE, as `sampler::sample_at`.
pub struct DeviceReverse<'a> {
    pub process: ForwardProcess,
    pub steps: usize,
    pub t_min: f64,
    pub probability_flow: bool,
    /// Mixture prior over all members (else paired: sample i with member i).
    pub mixture: bool,
    pub kernel_var: f64,
    pub log_weights: Option<&'a [f64]>,
    pub likelihood: Option<DeviceLikelihood<'a>>,
    pub score_clip: Option<f64>,
    /// Forecast members (m, n), row-major.
    pub forecast: &'a [f64],
    pub m: usize,
    pub n: usize,
    pub tiles: &'a [Range<usize>],
    pub reducer: &'a dyn Reducer,
    pub seed: u64,
    /// Global index of local column 0.
    pub offset: usize,
    pub device: Device,
    pub kind: Kind,
}

fn tensor_error(e: tch::TchError) -> GendaError {
    GendaError::Score(format!("reverse process on the device: {e}"))
}

/// What stays on the device through the steps.
struct Resident {
    f: Tensor,
    cc_tiles: Vec<Tensor>,
    like: Option<(Tensor, Tensor, Tensor)>,
}

impl DeviceReverse<'_> {
    fn upload(&self, v: &[f64], rows: i64, cols: i64) -> Result<Tensor> {
        Tensor::f_from_slice(v)
            .and_then(|t| t.f_reshape([rows, cols]))
            .and_then(|t| t.f_to_device(self.device))
            .and_then(|t| t.f_to_kind(self.kind))
            .map_err(tensor_error)
    }

    fn score(&self, res: &Resident, x: &Tensor, t: f64) -> Result<Tensor> {
        let a = self.process.alpha(t);
        let s2 = self.process.sigma(t).powi(2) + a * a * self.kernel_var;
        let mut s = if self.mixture {
            self.mixture_score(x, &res.f, &res.cc_tiles, a, s2)?
        } else {
            (&res.f * a - x) / s2
        };
        if let (Some(l), Some((y, r, idx))) = (&self.likelihood, &res.like) {
            let xo = x.index_select(1, idx);
            let (hx, dh) = match l.transform {
                Transform::Linear => (xo.shallow_clone(), xo.ones_like()),
                Transform::Arctan => (xo.atan(), (xo.square() + 1.0).reciprocal()),
                Transform::Square => (xo.square(), &xo * 2.0),
                Transform::BlockMean { .. } => {
                    return Err(GendaError::invalid(
                        "filter.device",
                        "the GPU path supports point observations (identity, sparse, arctan, quadratic), not block means",
                    ))
                }
            };
            let v = (y - hx) / r * dh;
            s += x.zeros_like().index_add(1, idx, &v) * (1.0 - t);
        }
        if let Some(c) = self.score_clip {
            s = s.clamp(-c, c);
        }
        Ok(s)
    }

    /// Run the reverse process from `x` (the t = 1 sample, (m, n)); the analysis into `x`.
    pub fn run(&self, x: &mut [f64]) -> Result<()> {
        let (m, n) = (self.m as i64, self.n as i64);
        if x.len() != self.m * self.n || self.forecast.len() != x.len() {
            return Err(GendaError::Score(
                "reverse process on the device: sample and forecast shapes differ".into(),
            ));
        }
        let f = self.upload(self.forecast, m, n)?;
        let cc_tiles: Vec<Tensor> = self
            .tiles
            .iter()
            .map(|c| {
                f.narrow(1, c.start as i64, c.len() as i64)
                    .square()
                    .sum_dim_intlist([1i64].as_slice(), false, self.kind)
            })
            .collect();
        let like = match &self.likelihood {
            Some(l) => {
                let p = l.idx.len() as i64;
                let idx: Vec<i64> = l.idx.iter().map(|&i| i as i64).collect();
                Some((
                    self.upload(l.obs, 1, p)?,
                    self.upload(l.obs_error_var, 1, p)?,
                    Tensor::from_slice(&idx).to_device(self.device),
                ))
            }
            None => None,
        };
        let res = Resident { f, cc_tiles, like };
        let mut xt = self.upload(x, m, n)?;
        let t0 = 1.0;
        let steps = self.steps.max(1);
        let h = (t0 - self.t_min) / steps as f64;
        let mut z = vec![0.0; x.len()];
        for k in 0..steps {
            let t = t0 - k as f64 * h;
            let (fd, g2) = (self.process.f(t), self.process.g2(t));
            let s = self.score(&res, &xt, t)?;
            if self.probability_flow {
                // Heun: d1 at t, Euler predictor to t − h, d2 there, trapezoidal corrector.
                let tn = t - h;
                let d1 = &xt * fd - s * (0.5 * g2);
                let x1 = &xt - &d1 * h;
                let s1 = self.score(&res, &x1, tn)?;
                let d2 = &x1 * self.process.f(tn) - s1 * (0.5 * self.process.g2(tn));
                xt = &xt - (d1 + d2) * (0.5 * h);
            } else {
                noise(self.seed, k as u64, self.n, self.offset, &mut z);
                let zt = self.upload(&z, m, n)?;
                let sq = (g2 * h).sqrt();
                xt = &xt + (&xt * fd - s * g2) * (-h) + zt * sq;
            }
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

    /// s = (α W c − x)/σ² with W = softmax_j(−‖x_i − α c_j‖²/2σ² + ℓ_j), distances from
    /// per-tile ‖x‖², ‖c‖² and x·cᵀ summed in global tile order.
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
        let mut logits = (xx + cc * (a * a) - xc * (2.0 * a)).clamp_min(0.0) * (-0.5 / s2);
        if let Some(l) = self.log_weights {
            logits += self.upload(l, 1, nm)?;
        }
        let w = logits.softmax(1, self.kind);
        Ok((w.matmul(c) * a - x) / s2)
    }
}
