//! Ω's residual score (its part (b)): a network r_θ(x, t) for the difference between the score
//! of the distribution the data come from and a closed-form baseline score s_b,t, learned by
//! denoising score matching with the baseline *added* to the network output. With
//! x_t = α x₀ + σ z and the ε-parametrisation r_θ = ε̂_θ/σ the loss is
//!
//!   E ‖σ s_b,t(x_t) + ε̂_θ(x_t, t) + z‖²,
//!
//! whose minimiser is r_θ = ∇log p_t − s_b,t (the DSM identity with the score shifted by a
//! known function). Nothing else is needed: no posterior samples, only the data x₀ (Ω's
//! ensemble trajectories). Training draws t from the fixed noise levels the sampler uses, so the
//! baseline is evaluated once per level for the rows drawn at it; the network is kept between
//! calls and fine-tuned (warm start), as a per-cycle update.
use super::adam::{restore_training, save_training, Adam, OptimKind};
use super::net::ScoreNetwork;
use super::process::ForwardProcess;
use crate::error::{GendaError, Result};
use crate::rng::{fill_standard_normal, stream, Purpose};
use crate::state::SavedState;
use rand::distributions::{Distribution, Uniform};
use tch::{Kind, Tensor};

/// Baseline score at rows `x` (B, d) for one noise level t, written to `out` (B, d).
pub type BaselineFn<'a> = dyn FnMut(&[f64], f64, &mut [f64]) -> Result<()> + 'a;

pub struct ResidualScore {
    net: ScoreNetwork,
    opt: Adam,
    pub dim: usize,
    /// Adam steps taken so far (keys the random numbers of the next step).
    pub steps_done: u64,
}

impl ResidualScore {
    pub fn new(
        hidden: i64,
        layers: usize,
        dim: usize,
        process: ForwardProcess,
        lr: f64,
        seed: u64,
    ) -> Result<Self> {
        Self::on_device(hidden, layers, dim, process, lr, seed, tch::Device::Cpu)
    }

    /// `new` on `device` (the rank's GPU or the CPU; the same initial weights on either).
    pub fn on_device(
        hidden: i64,
        layers: usize,
        dim: usize,
        process: ForwardProcess,
        lr: f64,
        seed: u64,
        device: tch::Device,
    ) -> Result<Self> {
        let cfg = super::NetworkConfig::Mlp {
            hidden,
            layers,
            time_features: 8,
        };
        let net = ScoreNetwork::for_fine_tuning(cfg, dim, process, seed, device)?;
        // Start from r = 0: the baseline alone until the data say otherwise.
        {
            let _g = tch::no_grad_guard();
            for (name, p) in net.parameters() {
                if name.starts_with("out") {
                    let _ = p.shallow_clone().zero_();
                }
            }
        }
        Ok(ResidualScore {
            // tch's `nn::Adam::default()`: betas (0.9, 0.999), no weight decay.
            opt: Adam::new(&net.vs, OptimKind::Adam, lr, [0.9, 0.999], 0.0),
            net,
            dim,
            steps_done: 0,
        })
    }

    /// Weights, optimiser moments and the step count (which keys the next step's draws).
    pub fn save(&self) -> Result<SavedState> {
        save_training(&self.net.vs, &self.opt, self.steps_done)
    }

    /// Restore what `save` wrote into a network built with the same settings.
    pub fn restore(&mut self, s: SavedState) -> Result<()> {
        self.steps_done = restore_training(&self.net.vs, &mut self.opt, s, "the residual score")?;
        Ok(())
    }

    /// `steps` Adam steps on the samples `data` (rows of `dim`), `per_level` rows at each noise
    /// level `levels`; returns the mean loss of the last step. Random numbers are keyed by
    /// (seed, step count), so the result does not depend on threads or ranks.
    pub fn fit(
        &mut self,
        data: &[f64],
        levels: &[f64],
        per_level: usize,
        steps: usize,
        seed: u64,
        baseline: &mut BaselineFn,
    ) -> Result<f64> {
        let d = self.dim;
        let n = data.len() / d;
        if n == 0 || levels.is_empty() {
            return Err(GendaError::Score("residual score: no training data".into()));
        }
        let b = levels.len() * per_level;
        let p = self.net.process;
        let pick = Uniform::new(0, n);
        let mut x0 = vec![0.0; per_level * d];
        let mut z = vec![0.0; per_level * d];
        let mut xt = vec![0.0; per_level * d];
        let mut sb = vec![0.0; per_level * d];
        let mut xs = vec![0f32; b * d];
        let mut target = vec![0f32; b * d];
        let mut ts = vec![0f32; b];
        let mut last = f64::NAN;
        for _ in 0..steps {
            let step = self.steps_done;
            let mut rng = stream(seed, Purpose::Training, step, u64::MAX, 1);
            for (l, &t) in levels.iter().enumerate() {
                let (a, s) = (p.alpha(t), p.sigma(t));
                for r in 0..per_level {
                    let i = pick.sample(&mut rng);
                    x0[r * d..(r + 1) * d].copy_from_slice(&data[i * d..(i + 1) * d]);
                    let row = (l * per_level + r) as u64;
                    fill_standard_normal(
                        seed,
                        Purpose::Training,
                        step,
                        row,
                        0,
                        &mut z[r * d..(r + 1) * d],
                    );
                }
                for k in 0..per_level * d {
                    xt[k] = a * x0[k] + s * z[k];
                }
                baseline(&xt, t, &mut sb)?;
                let off = l * per_level * d;
                for k in 0..per_level * d {
                    xs[off + k] = xt[k] as f32;
                    // ε̂ should equal −z − σ s_b.
                    target[off + k] = (-z[k] - s * sb[k]) as f32;
                }
                ts[l * per_level..(l + 1) * per_level].fill(t as f32);
            }
            let shape = [b as i64, d as i64];
            let dev = self.net.device();
            let xt_t = Tensor::from_slice(&xs).reshape(shape).to(dev);
            let tg = Tensor::from_slice(&target).reshape(shape).to(dev);
            let tt = Tensor::from_slice(&ts).to(dev);
            let loss = (self.net.eps_hat(&xt_t, &tt) - tg)
                .square()
                .mean(Kind::Float);
            self.opt.backward_step(&loss, None);
            last = loss.double_value(&[]);
            self.steps_done += 1;
            if !last.is_finite() {
                return Err(GendaError::Score(format!(
                    "residual score training loss is {last} (lower residual_lr?)"
                )));
            }
        }
        Ok(last)
    }

    /// r_θ(x, t) at the rows of `x` (M, dim) into `out`.
    pub fn eval(&self, x: &[f64], t: f64, out: &mut [f64]) {
        self.net.score_into(x, t, out);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand_distr::StandardNormal;

    /// Data from N(1, 0.5²) in 2-D, baseline N(0, 1) (wrong mean and variance): the learned
    /// residual makes baseline + residual close to the true noised score, and starts at zero.
    #[test]
    fn residual_corrects_a_wrong_gaussian_baseline() {
        let p = ForwardProcess::default();
        let d = 2;
        let mut rng = stream(5, Purpose::Training, 0, 0, 0);
        let data: Vec<f64> = (0..4000)
            .map(|_| {
                let z: f64 = StandardNormal.sample(&mut rng);
                1.0 + 0.5 * z
            })
            .collect();
        let levels = [0.02, 0.05, 0.1, 0.2, 0.4];
        let mut baseline = |x: &[f64], t: f64, out: &mut [f64]| {
            // N(0, 1) noised: N(0, α² + σ²).
            let v = p.alpha(t).powi(2) + p.sigma(t).powi(2);
            x.iter().zip(out.iter_mut()).for_each(|(a, o)| *o = -a / v);
            Ok(())
        };
        let mut r = ResidualScore::new(64, 2, d, p, 3e-3, 1).unwrap();
        let mut out = vec![1.0; 2];
        r.eval(&[0.3, -0.2], 0.1, &mut out);
        assert_eq!(out, vec![0.0, 0.0], "starts from r = 0");
        r.fit(&data, &levels, 64, 1500, 7, &mut baseline).unwrap();
        let mut worst: f64 = 0.0;
        for &t in &levels[1..] {
            let (a, s) = (p.alpha(t), p.sigma(t));
            let vt = a * a * 0.25 + s * s;
            for &xv in &[0.4, 1.0, 1.5] {
                let x = [xv * a, xv * a];
                let mut res = vec![0.0; 2];
                r.eval(&x, t, &mut res);
                let mut base = vec![0.0; 2];
                baseline(&x, t, &mut base).unwrap();
                let truth = (a * 1.0 - x[0]) / vt;
                let err = ((base[0] + res[0] - truth) / truth.abs().max(1.0)).abs();
                worst = worst.max(err);
            }
        }
        assert!(worst < 0.25, "relative score error {worst}");
    }
}
