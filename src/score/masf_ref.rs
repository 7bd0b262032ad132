//! MASF and its SF baseline exactly as the authors' code (github tcnllab-oss/masf @ 9df3e55;
//! the reading is docs/reference/masf.md, section numbers below refer to it). genda's own
//! derivation of MASF (the bridge sampler on `score::masf::DiagProcess`) is separate; this
//! module ports, formula by formula, what the reference runs:
//!
//! - **Normalisation** (§2): per-channel affine standardisation x̃ = (x − u_c)/(s_c + ε) with
//!   u_c, s_c the mean and the unbiased standard deviation (clamped at 1e-5) over every member
//!   and grid point of channel c of the pre-training set, fixed for the run; ε = 1e-5.
//! - **Measurement process** (§3, `measurements/grid_mask.py`): with mask m ∈ {0,1} and
//!   σ̃_c = σ/(s_c + ε), H(x) = m x + (m u − u)/(s + ε) and
//!   x_t = a_t x + (1 − a_t) H(x) + σ̃ r_t ξ, ξ ~ N(0, I) on **every** component;
//!   the sampler uses the linear form A(t) = s/(s + ε)·m(1 − a_t) + a_t,
//!   B(t) = (1 − a_t)(m u − u)/(s + ε), Cov(t) = σ̃² r_t², M(s,t) = A(t)/(A(s) + ε),
//!   U(s,t) = B(t) − M(s,t) B(s), Σ(s,t) = Cov(t) − M(s,t)² Cov(s); a(t) is the cosine schedule
//!   clamped to [1e-5, 0.992], r = (1 − a²)^{1/2}. The pseudo-measurement is the full grid
//!   z = m x_true + σ ξ (unobserved points hold pure noise), normalised with the same map.
//! - **MASF sampler** (§4, `methods/ours.py`): members pushed to T = 0.992 by the forward
//!   process, then on the quadratic grid τ_j = (1 − j/N)²(T − t_ε) + t_ε, s = T τ_j,
//!   t = T τ_{j+1} (the grid is multiplied by T once more, as the code does):
//!   score = −(x − A(s) x̂₀)/(Cov(s) + 1e-5) (B(s) is not added, as in the code),
//!   G = λ_s(s) score + λ_g(s) ∇log N(z; M(s,1)x + U(s,1), Σ(s,1)) with a(1) clamped to a(T),
//!   x ← M(s,t) x + U(s,t) − Σ(s,t) G + |Σ(s,t)|^{1/2} ξ (noise also at the last step);
//!   λ_s(s) = s_min + (s_max − s_min) s^p_s, λ_g(s) = g_min + (g_max − g_min)(1 − s)^p_g.
//! - **SF baseline** (§7, `methods/sf.py`): a VE process x_t = x₀ + std(t) ξ with
//!   std(t)² = (σ_max^{2t} − 1)/(2 ln σ_max), g(t) = σ_max^t, started from pure noise of std(1);
//!   Euler–Maruyama on the grid linspace(1, t_ε, N)² with the constant step of its first
//!   increment; score = ε̂/(std + 1e-5), likelihood m(z − H(x))/σ̃² weighted by relu(1 − 2t);
//!   the guided score rescaled to RMS `tol` per sample where its RMS exceeds `tol`; the last
//!   step's mean (no noise) is returned.
//!
//! Everything is in f64 (the reference runs float32). Random draws are keyed (`rng::stream`):
//! the start noise at step u64::MAX, the pseudo-measurement's noise at u64::MAX − 1, the
//! reverse steps at their index; members are the stream's member key.
use crate::rng::{fill_standard_normal, Purpose};

/// The reference's terminal time T and its t_ε (`terminal_time`) and ε (`eps`).
pub const REF_T: f64 = 0.992;
pub const REF_T_EPS: f64 = 1e-5;
pub const REF_EPS: f64 = 1e-5;
const COSINE_S: f64 = 0.008;

/// a(t), the cosine schedule clamped to [t_ε, T] (`measurements/scheduler.py`).
pub fn ref_a(t: f64) -> f64 {
    let t = t.clamp(REF_T_EPS, REF_T);
    let log_a0 = (COSINE_S / (1.0 + COSINE_S) * std::f64::consts::FRAC_PI_2)
        .cos()
        .ln();
    let v = (t + COSINE_S) / (1.0 + COSINE_S) * std::f64::consts::FRAC_PI_2;
    (v.cos().ln() - log_a0).exp()
}

/// A scale ramp λ(s) = min + (max − min)·f(s)^power, s clamped to [0, 1]; f(s) = s for the
/// score scale and 1 − s for the guidance scale.
#[derive(Debug, Clone, Copy, PartialEq, serde::Deserialize, serde::Serialize)]
#[serde(deny_unknown_fields)]
pub struct Ramp {
    pub min: f64,
    pub max: f64,
    pub power: f64,
}

impl Ramp {
    /// The reference's score scale (ours.yaml): 0.95 → 1.6, power 1.5, rising with s.
    pub const SCORE: Ramp = Ramp {
        min: 0.95,
        max: 1.6,
        power: 1.5,
    };
    /// The reference's guidance scale (ours.yaml): 1.1 → 1.5, power 2, rising as s → 0.
    pub const GUIDANCE: Ramp = Ramp {
        min: 1.1,
        max: 1.5,
        power: 2.0,
    };
    pub fn score_scale(&self, s: f64) -> f64 {
        self.min + (self.max - self.min) * s.clamp(0.0, 1.0).powf(self.power)
    }
    pub fn guidance_scale(&self, s: f64) -> f64 {
        self.min + (self.max - self.min) * (1.0 - s.clamp(0.0, 1.0)).powf(self.power)
    }
}

/// Per-channel affine standardisation (§2): `channels` equal contiguous blocks of the state.
#[derive(Debug, Clone, PartialEq)]
pub struct ChannelNorm {
    /// Per component: the channel's mean u and std s (unbiased, clamped at 1e-5).
    pub u: Vec<f64>,
    pub s: Vec<f64>,
}

impl ChannelNorm {
    /// Statistics of the rows of `data` (each of `dim` = channels × block values).
    pub fn fit(data: &[f64], dim: usize, channels: usize) -> Self {
        let block = dim / channels.max(1);
        let rows = data.len() / dim;
        let mut u = vec![0.0; dim];
        let mut s = vec![0.0; dim];
        for c in 0..channels.max(1) {
            let vals = data
                .chunks(dim)
                .flat_map(|r| r[c * block..(c + 1) * block].iter());
            let count = (rows * block) as f64;
            let mean = vals.clone().sum::<f64>() / count;
            let var = vals.map(|v| (v - mean).powi(2)).sum::<f64>() / (count - 1.0).max(1.0);
            u[c * block..(c + 1) * block].fill(mean);
            s[c * block..(c + 1) * block].fill(var.sqrt().max(1e-5));
        }
        ChannelNorm { u, s }
    }

    /// `fit` over rows sharded across the ranks of `comm` (`data`: the rows of this rank's
    /// shards of `part`): each channel's sum, then its squared deviations from the mean, per
    /// shard, added in shard order — the same numbers on any number of ranks (equal to `fit`
    /// to rounding).
    pub fn fit_sharded(
        data: &[f64],
        dim: usize,
        channels: usize,
        part: &crate::score::RowShards,
        comm: &dyn crate::parallel::Collectives,
    ) -> crate::error::Result<Self> {
        let c = channels.max(1);
        let block = dim / c;
        let first = part.rows().start;
        let counts: Vec<usize> = part
            .per_rank(comm.size())
            .into_iter()
            .map(|k| k * c)
            .collect();
        let sums = |centre: Option<&[f64]>| -> crate::error::Result<Vec<f64>> {
            let mut local = Vec::with_capacity(part.mine.len() * c);
            for k in part.mine.clone() {
                for ch in 0..c {
                    let mut acc = 0.0;
                    for r in part.shards[k].clone() {
                        let row = &data[(r - first) * dim..(r - first + 1) * dim];
                        for &v in &row[ch * block..(ch + 1) * block] {
                            acc += match centre {
                                None => v,
                                Some(m) => (v - m[ch]).powi(2),
                            };
                        }
                    }
                    local.push(acc);
                }
            }
            let mut all = vec![0.0; part.shards.len() * c];
            comm.all_gather_rows(&local, &counts, &mut all)?;
            let mut total = vec![0.0; c];
            for shard in all.chunks(c) {
                total.iter_mut().zip(shard).for_each(|(t, v)| *t += v);
            }
            Ok(total)
        };
        let rows = part.shards.last().map_or(0, |s| s.end);
        let count = (rows * block) as f64;
        let mean: Vec<f64> = sums(None)?.into_iter().map(|s| s / count).collect();
        let ss = sums(Some(&mean))?;
        let (mut u, mut s) = (vec![0.0; dim], vec![0.0; dim]);
        for ch in 0..c {
            let var = ss[ch] / (count - 1.0).max(1.0);
            u[ch * block..(ch + 1) * block].fill(mean[ch]);
            s[ch * block..(ch + 1) * block].fill(var.sqrt().max(1e-5));
        }
        Ok(ChannelNorm { u, s })
    }

    /// Per-variable statistics as this map (genda's standardisation; no ε).
    pub fn per_variable(u: Vec<f64>, s: Vec<f64>) -> Self {
        ChannelNorm { u, s }
    }

    pub fn dim(&self) -> usize {
        self.u.len()
    }
}

/// The reference's measurement process in normalised coordinates (§3), per component.
#[derive(Debug, Clone, PartialEq)]
pub struct RefProcess {
    /// 1 observed, 0 not.
    pub mask: Vec<f64>,
    pub u: Vec<f64>,
    pub s: Vec<f64>,
    /// σ̃² = (σ/(s + ε))².
    pub sigma2: Vec<f64>,
}

impl RefProcess {
    /// For measurement error std `sigma` on the components `observed`, under `norm`.
    pub fn new(norm: &ChannelNorm, observed: &[usize], sigma: f64) -> Self {
        let n = norm.dim();
        let mut mask = vec![0.0; n];
        for &k in observed {
            mask[k] = 1.0;
        }
        let sigma2 = norm
            .s
            .iter()
            .map(|s| (sigma / (s + REF_EPS)).powi(2))
            .collect();
        RefProcess {
            mask,
            u: norm.u.clone(),
            s: norm.s.clone(),
            sigma2,
        }
    }

    pub fn dim(&self) -> usize {
        self.mask.len()
    }

    /// H(x̃) at component k (`grid_mask.H`).
    pub fn h(&self, k: usize, x: f64) -> f64 {
        self.mask[k] * x + (self.mask[k] * self.u[k] - self.u[k]) / (self.s[k] + REF_EPS)
    }
    pub fn a_k(&self, k: usize, t: f64) -> f64 {
        let a = ref_a(t);
        self.s[k] / (self.s[k] + REF_EPS) * self.mask[k] * (1.0 - a) + a
    }
    pub fn b_k(&self, k: usize, t: f64) -> f64 {
        (1.0 - ref_a(t)) * (self.mask[k] * self.u[k] - self.u[k]) / (self.s[k] + REF_EPS)
    }
    pub fn cov_k(&self, k: usize, t: f64) -> f64 {
        self.sigma2[k] * (1.0 - ref_a(t).powi(2))
    }
    pub fn m_k(&self, k: usize, s: f64, t: f64) -> f64 {
        self.a_k(k, t) / (self.a_k(k, s) + REF_EPS)
    }
    pub fn u_k(&self, k: usize, s: f64, t: f64) -> f64 {
        self.b_k(k, t) - self.m_k(k, s, t) * self.b_k(k, s)
    }
    pub fn sigma_k(&self, k: usize, s: f64, t: f64) -> f64 {
        let m = self.m_k(k, s, t);
        self.cov_k(k, t) - m * m * self.cov_k(k, s)
    }

    /// `forward_process`: x_t at component k from x₀ and a standard normal ξ.
    pub fn noised(&self, k: usize, x0: f64, t: f64, xi: f64) -> f64 {
        let a = ref_a(t);
        a * x0 + (1.0 - a) * self.h(k, x0) + self.cov_k(k, t).max(0.0).sqrt() * xi
    }

    /// `grid_mask.guidance`: ∇ log N(z; M(t,1) x + U(t,1), Σ(t,1)) at component k.
    pub fn guidance(&self, k: usize, z: f64, x: f64, t: f64) -> f64 {
        let m = self.m_k(k, t, 1.0);
        let resid = z - m * x - self.u_k(k, t, 1.0);
        m * resid / (self.sigma_k(k, t, 1.0) + REF_EPS)
    }

    /// The normalised full-grid pseudo-measurement: (y − u)/(s + ε) on observed components (in
    /// the order of `observed`), (σ ξ − u)/(s + ε) elsewhere, ξ keyed by `seed`.
    pub fn pseudo_measurement(
        &self,
        observed: &[usize],
        y: &[f64],
        sigma: f64,
        seed: u64,
    ) -> Vec<f64> {
        let n = self.dim();
        let mut xi = vec![0.0; n];
        fill_standard_normal(seed, Purpose::Sampling, u64::MAX - 1, u64::MAX, 0, &mut xi);
        let mut z: Vec<f64> = (0..n).map(|k| sigma * xi[k]).collect();
        for (&k, &v) in observed.iter().zip(y) {
            z[k] = v;
        }
        z.iter()
            .enumerate()
            .map(|(k, v)| (v - self.u[k]) / (self.s[k] + REF_EPS))
            .collect()
    }
}

/// The reference's reverse time grid: (s_j, t_j) for j = 0..steps, s_j = T τ_j, t_j = T τ_{j+1}.
pub fn ref_grid(steps: usize) -> Vec<(f64, f64)> {
    let tau = |j: usize| (1.0 - j as f64 / steps as f64).powi(2) * (REF_T - REF_T_EPS) + REF_T_EPS;
    (0..steps)
        .map(|j| (REF_T * tau(j), REF_T * tau(j + 1)))
        .collect()
}

/// A network evaluation: `f(x, t, out)` writes its output at the rows of `x` at time t.
pub type NetFn<'a> = dyn FnMut(&[f64], f64, &mut [f64]) + 'a;

/// How the prior network is read: x̂₀ directly, or ε̂ (x̂₀ = (x − B − Cov^{1/2} ε̂)/A).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Output {
    X0,
    Epsilon,
}

/// The MASF reference sampler (§4). `x` (M, dim) holds the normalised forecast members and
/// is overwritten with the normalised analysis; `net(x, s, out)` writes the network's output
/// at time s (x̂₀ or ε̂ as `output` says); `z` is the normalised pseudo-measurement.
#[allow(clippy::too_many_arguments)]
pub fn masf_reference_sample(
    p: &RefProcess,
    net: &mut NetFn,
    output: Output,
    z: &[f64],
    x: &mut [f64],
    steps: usize,
    score_ramp: Ramp,
    guidance_ramp: Ramp,
    seed: u64,
) {
    let d = p.dim();
    let m = x.len() / d;
    let mut xi = vec![0.0; d];
    for i in 0..m {
        fill_standard_normal(seed, Purpose::Sampling, u64::MAX, i as u64, 0, &mut xi);
        for k in 0..d {
            x[i * d + k] = p.noised(k, x[i * d + k], REF_T, xi[k]);
        }
    }
    let mut out = vec![0.0; x.len()];
    for (j, (s, t)) in ref_grid(steps).into_iter().enumerate() {
        net(x, s, &mut out);
        let (ls, lg) = (score_ramp.score_scale(s), guidance_ramp.guidance_scale(s));
        for i in 0..m {
            fill_standard_normal(seed, Purpose::Sampling, j as u64, i as u64, 0, &mut xi);
            for k in 0..d {
                let xs = x[i * d + k];
                let (a_s, cov_s) = (p.a_k(k, s), p.cov_k(k, s).abs());
                let x0 = match output {
                    Output::X0 => out[i * d + k],
                    Output::Epsilon => (xs - p.b_k(k, s) - cov_s.sqrt() * out[i * d + k]) / a_s,
                };
                let score = -(xs - a_s * x0) / (cov_s + 1e-5);
                let g = ls * score + lg * p.guidance(k, z[k], xs, s);
                let sig = p.sigma_k(k, s, t);
                x[i * d + k] =
                    p.m_k(k, s, t) * xs + p.u_k(k, s, t) - sig * g + sig.abs().sqrt() * xi[k];
            }
        }
    }
}

/// The SF baseline's VE process (§7).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct VeProcess {
    pub sigma_max: f64,
}

impl VeProcess {
    /// `marginal_prob_std`. σ_max^{2t} is evaluated in float32 as the code's float32 tensors
    /// do: at the grid's last time t = 1e-10 it is exactly 1, so std = 0 there (in f64 it would
    /// be 1e-5), which the code's last step depends on (score = ε̂/1e-5, then clipped).
    pub fn std(&self, t: f64) -> f64 {
        let p = (self.sigma_max as f32).powf((2.0 * t) as f32) as f64;
        ((p - 1.0) / 2.0 / self.sigma_max.ln()).sqrt()
    }
    /// `diffusion_coeff`.
    pub fn g(&self, t: f64) -> f64 {
        self.sigma_max.powf(t)
    }
}

/// The SF reference sampler (§7). `x` (M, dim) is overwritten with the normalised analysis
/// (its input is ignored, as the reference ignores the forecast); `eps(x, t, out)` writes the
/// network's ε̂ (≈ −ξ, the reference's `model`); `z` the normalised pseudo-measurement of
/// `p` (whose mask, offset and σ̃² give the likelihood); `tol` the guided score's RMS bound.
#[allow(clippy::too_many_arguments)]
pub fn sf_reference_sample(
    ve: VeProcess,
    p: &RefProcess,
    eps: &mut NetFn,
    z: &[f64],
    x: &mut [f64],
    steps: usize,
    tol: f64,
    seed: u64,
) {
    let d = p.dim();
    let m = x.len() / d;
    let mut xi = vec![0.0; d];
    let std1 = ve.std(1.0);
    for i in 0..m {
        fill_standard_normal(seed, Purpose::Sampling, u64::MAX, i as u64, 0, &mut xi);
        for k in 0..d {
            x[i * d + k] = std1 * xi[k];
        }
    }
    let times: Vec<f64> = (0..steps)
        .map(|j| {
            let l = if steps > 1 {
                1.0 + (REF_T_EPS - 1.0) * j as f64 / (steps - 1) as f64
            } else {
                1.0
            };
            l * l
        })
        .collect();
    let dt = if steps > 1 { times[0] - times[1] } else { 1.0 };
    let mut out = vec![0.0; x.len()];
    let mut gs = vec![0.0; d];
    for (j, &t) in times.iter().enumerate() {
        let (std, g) = (ve.std(t), ve.g(t));
        let w = (1.0 - 2.0 * t).max(0.0);
        eps(x, t, &mut out);
        let last = j + 1 == steps;
        for i in 0..m {
            let row = &mut x[i * d..(i + 1) * d];
            for k in 0..d {
                let like = p.mask[k] * (z[k] - p.h(k, row[k])) / p.sigma2[k];
                gs[k] = out[i * d + k] / (std + 1e-5) + like * w;
            }
            let rms = (gs.iter().map(|v| v * v).sum::<f64>() / d as f64).sqrt();
            let adj = if rms > tol { tol / rms } else { 1.0 };
            if !last {
                fill_standard_normal(seed, Purpose::Sampling, j as u64, i as u64, 0, &mut xi);
            }
            for k in 0..d {
                let mean = row[k] + g * g * gs[k] * adj * dt;
                row[k] = if last {
                    mean
                } else {
                    mean + dt.sqrt() * g * xi[k]
                };
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Sharded statistics (one process holding every shard) equal the whole set's to
    /// rounding, and the shards cover the rows with every rank holding a contiguous run.
    #[test]
    fn sharded_channel_statistics_equal_the_whole_sets() {
        use crate::score::RowShards;
        let (rows, dim) = (37, 6);
        let data: Vec<f64> = (0..rows * dim)
            .map(|i| ((i * 7919) % 101) as f64 * 0.37 - (i % dim) as f64)
            .collect();
        let part = RowShards::new(rows, 5, 0, 1).unwrap();
        assert_eq!(part.rows(), 0..rows);
        let a = ChannelNorm::fit(&data, dim, 2);
        let b =
            ChannelNorm::fit_sharded(&data, dim, 2, &part, &crate::parallel::SerialComm).unwrap();
        for (x, y) in a.u.iter().zip(&b.u).chain(a.s.iter().zip(&b.s)) {
            assert!((x - y).abs() <= 1e-12 * x.abs().max(1.0), "{x} vs {y}");
        }
        let r1 = RowShards::new(rows, 4, 1, 2).unwrap();
        assert_eq!((r1.mine.clone(), r1.rows()), (2..4, 18..37));
        assert_eq!(r1.per_rank(2), vec![2, 2]);
        assert!(RowShards::new(rows, 2, 0, 3).is_err());
        assert!(RowShards::new(3, 4, 0, 1).is_err());
    }

    /// Values the reading of the reference code states (docs/reference/masf.md §1, §4, §7).
    #[test]
    fn schedule_grid_and_ramps_match_the_reference_values() {
        assert!((ref_a(0.992) - 0.0124673).abs() < 1e-6);
        assert!((ref_a(0.5) - 0.70274).abs() < 1e-5);
        assert_eq!(ref_a(1.0), ref_a(REF_T));
        let g = ref_grid(150);
        assert!((g[0].0 - 0.984064).abs() < 1e-6 && (g[1].0 - 0.970987).abs() < 1e-6);
        assert!((g[149].1 - 9.92e-6).abs() < 1e-12);
        let (s0, s75, s149) = (g[0].0, g[75].0, g[149].0);
        assert!((Ramp::SCORE.score_scale(s0) - 1.5845).abs() < 1e-4);
        assert!((Ramp::GUIDANCE.guidance_scale(s0) - 1.1001).abs() < 1e-4);
        assert!((Ramp::SCORE.score_scale(s75) - 1.029).abs() < 1e-3);
        assert!((Ramp::GUIDANCE.guidance_scale(s75) - 1.327).abs() < 1e-3);
        assert!((Ramp::SCORE.score_scale(s149) - 0.950).abs() < 1e-3);
        assert!((Ramp::GUIDANCE.guidance_scale(s149) - 1.500).abs() < 1e-3);
        let ve = VeProcess { sigma_max: 25.0 };
        assert!((ve.std(1.0) - 9.8452).abs() < 1e-4);
    }

    /// Unbiased per-channel statistics, clamped; the pseudo-measurement holds y where observed.
    #[test]
    fn channel_norm_and_pseudo_measurement() {
        // Two rows of two channels of two points.
        let data = [1.0, 3.0, 10.0, 10.0, 5.0, 7.0, 10.0, 10.0];
        let nm = ChannelNorm::fit(&data, 4, 2);
        assert_eq!(nm.u, vec![4.0, 4.0, 10.0, 10.0]);
        let sd = (20.0f64 / 3.0).sqrt();
        assert!((nm.s[0] - sd).abs() < 1e-12 && nm.s[2] == 1e-5);
        let p = RefProcess::new(&nm, &[1], 0.1);
        let z = p.pseudo_measurement(&[1], &[6.0], 0.1, 3);
        assert!((z[1] - 2.0 / (sd + 1e-5)).abs() < 1e-12);
        // H maps an unobserved component to the normalised physical zero.
        assert!((p.h(0, 0.7) + 4.0 / (sd + 1e-5)).abs() < 1e-12);
        assert!((p.h(1, 0.7) - 0.7).abs() < 1e-12);
    }
}

#[cfg(test)]
mod gaussian {
    use super::*;

    /// x̂₀ = E[x₀ | x_s] for independent Gaussian components N(m0, p0) under the reference's
    /// forward process (x_s = a x₀ + (1 − a) H(x₀) + Cov^{1/2} ξ, affine in x₀).
    pub fn exact_x0(p: &RefProcess, m0: &[f64], p0: &[f64], x: &[f64], s: f64, out: &mut [f64]) {
        let d = p.dim();
        let a = ref_a(s);
        for (i, o) in out.iter_mut().enumerate() {
            let k = i % d;
            let slope = a + (1.0 - a) * p.mask[k];
            let off = (1.0 - a) * (p.mask[k] * p.u[k] - p.u[k]) / (p.s[k] + REF_EPS);
            let var = slope * slope * p0[k] + p.cov_k(k, s);
            *o = m0[k] + p0[k] * slope / var * (x[i] - slope * m0[k] - off);
        }
    }

    /// The paper's sampler with the exact x̂₀ of a Gaussian prior N(m0, diag p0), one of two
    /// components observed, against the exact posterior (Kalman on the observed component, the
    /// prior on the independent unobserved one). It is not exact: the measurement enters twice
    /// (members pushed from the prior, plus the exact likelihood score at every step), so the
    /// observed component's variance is about 0.29 of the Kalman variance (0.34 with both ramps
    /// at 1), and the score scale above 1 at high noise narrows the unobserved one to about 0.6
    /// of the prior (0.94 with the ramps at 1). These are properties of the
    /// reference's algorithm; the port itself is checked against the authors' code in
    /// tests/oracle.rs.
    #[test]
    fn reference_sampler_on_a_gaussian_prior_against_the_kalman_posterior() {
        let (m0, p0, sigma): ([f64; 2], [f64; 2], f64) = ([0.5, -1.0], [1.0, 0.5], 0.3);
        let norm = ChannelNorm::per_variable(vec![0.0; 2], vec![1.0; 2]);
        let p = RefProcess::new(&norm, &[0], sigma);
        let y = [1.4];
        let z = p.pseudo_measurement(&[0], &y, sigma, 7);
        let n = 4000;
        let mut start = vec![0.0; 2 * n];
        let mut xi = vec![0.0; 2];
        for i in 0..n {
            fill_standard_normal(9, Purpose::EnsembleInit, 0, i as u64, 0, &mut xi);
            start[2 * i] = m0[0] + p0[0].sqrt() * xi[0];
            start[2 * i + 1] = m0[1] + p0[1].sqrt() * xi[1];
        }
        let r = sigma * sigma / (1.0 + REF_EPS).powi(2);
        let kg = p0[0] / (p0[0] + r);
        let (ma, pa) = (m0[0] + kg * (y[0] - m0[0]), (1.0 - kg) * p0[0]);
        let one = Ramp {
            min: 1.0,
            max: 1.0,
            power: 1.0,
        };
        let mut got = Vec::new();
        for (sr, gr) in [(Ramp::SCORE, Ramp::GUIDANCE), (one, one)] {
            let mut x = start.clone();
            let mut net = |xs: &[f64], s: f64, out: &mut [f64]| exact_x0(&p, &m0, &p0, xs, s, out);
            masf_reference_sample(&p, &mut net, Output::X0, &z, &mut x, 150, sr, gr, 3);
            let stats = |k: usize| {
                let m = x.iter().skip(k).step_by(2).sum::<f64>() / n as f64;
                let v = x
                    .iter()
                    .skip(k)
                    .step_by(2)
                    .map(|v| (v - m).powi(2))
                    .sum::<f64>()
                    / n as f64;
                (m, v)
            };
            let ((mo, vo), (mu, vu)) = (stats(0), stats(1));
            eprintln!(
                "ramps {:?}/{:?}: observed {mo:.4} / {vo:.4} (Kalman {ma:.4} / {pa:.4}, ratio {:.3}); unobserved {mu:.4} / {vu:.4} (prior {} / {}, ratio {:.3})",
                sr, gr, vo / pa, m0[1], p0[1], vu / p0[1]
            );
            got.push((mo, vo / pa, mu, vu / p0[1]));
        }
        let bounds = [((0.2, 0.4), (0.5, 0.7)), ((0.25, 0.45), (0.85, 1.05))];
        for ((mo, ro, mu, ru), ((o0, o1), (u0, u1))) in got.into_iter().zip(bounds) {
            assert!(
                (mo - ma).abs() < 0.3 * pa.sqrt(),
                "observed mean {mo} vs Kalman {ma}"
            );
            assert!(ro > o0 && ro < o1, "observed variance ratio {ro}");
            assert!((mu - m0[1]).abs() < 0.1, "unobserved mean {mu}");
            assert!(ru > u0 && ru < u1, "unobserved variance ratio {ru}");
        }
    }
}
