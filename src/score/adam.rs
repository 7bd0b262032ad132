//! Adam and AdamW whose moment buffers can be saved in a checkpoint.
//!
//! `tch::nn::Adam(W)` keeps its moments inside libtorch's C++ optimiser, out of reach of a
//! checkpoint, so a network fine-tuned every cycle (MASF/SF priors, Ω's residual) could not be
//! restarted bit for bit. This is libtorch's own step (torch/csrc/api/src/optim/adam.cpp and
//! adamw.cpp, amsgrad off) written out in the tensor ops tch exposes:
//!
//! ```text
//! AdamW: p ← p·(1 − lr·wd)          Adam: g ← g + wd·p        (wd ≠ 0)
//! m ← β1·m + (1 − β1)·g
//! v ← β2·v + (1 − β2)·g·g
//! p ← p − (lr / (1 − β1^k)) · m / (√v / √(1 − β2^k) + ε)
//! ```
//!
//! tch's `add_`/`addcmul_`/`addcdiv_` take no `alpha`/`value` argument, so each scaled term is
//! formed as libtorch's kernels form it (the scale times the first factor, in f32) and added by
//! the same fused kernel; the unit test checks the result against `tch::nn::Adam(W)` bit for bit,
//! with and without weight decay and gradient-norm clipping. Parameters that never received a
//! gradient are skipped, as libtorch skips them. The gradient-norm clip is tch's
//! `Optimizer::clip_grad_norm`, the same arithmetic on the same parameter order.
use crate::error::{GendaError, Result};
use crate::state::SavedState;
use tch::{nn, Device, Kind, Tensor};

/// Which update.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Deserialize, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum OptimKind {
    Adam,
    /// Decoupled weight decay (torch.optim.AdamW).
    Adamw,
}

/// libtorch's default ε of Adam and AdamW.
const EPS: f64 = 1e-8;

pub struct Adam {
    kind: OptimKind,
    lr: f64,
    betas: [f64; 2],
    weight_decay: f64,
    /// The trainable variables of the var store, in its order (tch's optimiser order).
    vars: Vec<Tensor>,
    /// First and second moments, allocated at a variable's first step.
    m: Vec<Option<Tensor>>,
    v: Vec<Option<Tensor>>,
    /// Steps taken per variable.
    steps: Vec<i64>,
}

fn scalar(x: f64, like: &Tensor) -> Tensor {
    Tensor::from(x).to_kind(like.kind()).to(like.device())
}

impl Adam {
    pub fn new(
        vs: &nn::VarStore,
        kind: OptimKind,
        lr: f64,
        betas: [f64; 2],
        weight_decay: f64,
    ) -> Self {
        let vars = vs.trainable_variables();
        let k = vars.len();
        Adam {
            kind,
            lr,
            betas,
            weight_decay,
            vars,
            m: (0..k).map(|_| None).collect(),
            v: (0..k).map(|_| None).collect(),
            steps: vec![0; k],
        }
    }

    fn zero_grad(&mut self) {
        for p in &mut self.vars {
            p.zero_grad();
        }
    }

    /// tch's `Optimizer::clip_grad_norm`.
    fn clip_grad_norm(&self, max: f64) {
        let _g = tch::no_grad_guard();
        let norms: Vec<Tensor> = self
            .vars
            .iter()
            .map(|p| p.grad())
            .filter(|g| g.defined())
            .map(|g| g.norm())
            .collect();
        if norms.is_empty() {
            return;
        }
        let total = Tensor::stack(&norms, 0).norm().double_value(&[]);
        let coef = max / (total + 1e-6);
        if coef < 1.0 {
            for p in &self.vars {
                let mut g = p.grad();
                if g.defined() {
                    let _ = g.g_mul_scalar_(coef);
                }
            }
        }
    }

    /// Zero the gradients, back-propagate `loss`, clip the gradient norm at `clip` if given,
    /// and take one step.
    pub fn backward_step(&mut self, loss: &Tensor, clip: Option<f64>) {
        self.zero_grad();
        loss.backward();
        if let Some(c) = clip {
            self.clip_grad_norm(c);
        }
        self.step();
    }

    /// Zero the gradients, back-propagate `loss` and return the gradients flattened in the
    /// variables' order (variables without one left out): one shard's part of a data-parallel
    /// step (`step_with`).
    pub fn backward_grads(&mut self, loss: &Tensor) -> Result<Vec<f64>> {
        self.zero_grad();
        loss.backward();
        let mut out = Vec::new();
        for p in &self.vars {
            let g = p.grad();
            if g.defined() {
                out.extend(to_f64(&g)?);
            }
        }
        Ok(out)
    }

    /// Set the gradients to `flat` (`backward_grads`' layout: the shards' gradients summed),
    /// clip the norm at `clip` if given, and take one step.
    pub fn step_with(&mut self, flat: &[f64], clip: Option<f64>) -> Result<()> {
        {
            let _g = tch::no_grad_guard();
            let mut off = 0;
            for p in &self.vars {
                let mut g = p.grad();
                if !g.defined() {
                    continue;
                }
                let k = g.numel();
                let part = flat.get(off..off + k).ok_or_else(|| {
                    GendaError::Score(format!(
                        "data-parallel step: {} gradient values for more parameters",
                        flat.len()
                    ))
                })?;
                g.copy_(&from_f64(part, &g, "gradient")?);
                off += k;
            }
            if off != flat.len() {
                return Err(GendaError::Score(format!(
                    "data-parallel step: {} gradient values for {off} parameters",
                    flat.len()
                )));
            }
        }
        if let Some(c) = clip {
            self.clip_grad_norm(c);
        }
        self.step();
        Ok(())
    }

    fn step(&mut self) {
        let _g = tch::no_grad_guard();
        let [b1, b2] = self.betas;
        for i in 0..self.vars.len() {
            let mut p = self.vars[i].shallow_clone();
            let grad = p.grad();
            if !grad.defined() {
                continue;
            }
            if self.m[i].is_none() {
                self.m[i] = Some(p.zeros_like());
                self.v[i] = Some(p.zeros_like());
            }
            self.steps[i] += 1;
            let k = self.steps[i] as f64;
            let (bc1, bc2) = (1.0 - b1.powf(k), 1.0 - b2.powf(k));
            let grad = match self.kind {
                OptimKind::Adamw => {
                    let _ = p.g_mul_scalar_(1.0 - self.lr * self.weight_decay);
                    grad
                }
                OptimKind::Adam if self.weight_decay != 0.0 => {
                    grad.addcmul(&p, &scalar(self.weight_decay, &p))
                }
                OptimKind::Adam => grad,
            };
            let m = self.m[i].as_mut().expect("allocated above");
            let _ = m.g_mul_scalar_(b1);
            let _ = m.addcmul_(&grad, &scalar(1.0 - b1, &grad));
            let v = self.v[i].as_mut().expect("allocated above");
            let _ = v.g_mul_scalar_(b2);
            let _ = v.addcmul_(&(&grad * scalar(1.0 - b2, &grad)), &grad);
            let mut denom = v.sqrt().g_div_scalar(bc2.sqrt());
            let _ = denom.g_add_scalar_(EPS);
            let m = self.m[i].as_ref().expect("allocated above");
            let _ = p.addcdiv_(&(m * scalar(-self.lr / bc1, m)), &denom);
        }
    }

    /// The moments and step counts (`m.i`, `v.i`, `steps`), as numbers.
    pub fn save(&self) -> Result<SavedState> {
        let mut s = SavedState::new();
        s.put("steps", self.steps.iter().map(|&k| k as f64).collect());
        for (i, (m, v)) in self.m.iter().zip(&self.v).enumerate() {
            if let (Some(m), Some(v)) = (m, v) {
                s.put(format!("m.{i}"), to_f64(m)?);
                s.put(format!("v.{i}"), to_f64(v)?);
            }
        }
        Ok(s)
    }

    /// Restore what `save` wrote (for the same network).
    pub fn restore(&mut self, mut s: SavedState) -> Result<()> {
        let steps = s.take_len("steps", self.vars.len())?;
        for (i, &k) in steps.iter().enumerate() {
            self.steps[i] = k as i64;
            if k > 0.0 {
                let p = &self.vars[i];
                self.m[i] = Some(from_f64(&s.take(&format!("m.{i}"))?, p, "adam moment")?);
                self.v[i] = Some(from_f64(&s.take(&format!("v.{i}"))?, p, "adam moment")?);
            } else {
                self.m[i] = None;
                self.v[i] = None;
            }
        }
        s.finish("the optimiser")
    }
}

/// A tensor's values as f64 (exact for f32 tensors).
pub fn to_f64(t: &Tensor) -> Result<Vec<f64>> {
    let flat = t
        .detach()
        .to(Device::Cpu)
        .to_kind(Kind::Double)
        .reshape([-1]);
    Vec::<f64>::try_from(&flat).map_err(|e| GendaError::Score(format!("tensor copy: {e}")))
}

/// Values shaped, typed and placed like `like`.
pub fn from_f64(v: &[f64], like: &Tensor, what: &str) -> Result<Tensor> {
    if v.len() as i64 != like.numel() as i64 {
        return Err(GendaError::invalid(
            "checkpoint",
            format!(
                "{what} has {} values, the network's tensor {}",
                v.len(),
                like.numel()
            ),
        ));
    }
    Ok(Tensor::from_slice(v)
        .to_kind(like.kind())
        .reshape(like.size())
        .to(like.device()))
}

/// A network being trained, as a checkpoint needs it: its weights (`net.`), the optimiser's
/// moments (`adam.`) and the step count that keys the next step's draws.
pub fn save_training(vs: &nn::VarStore, opt: &Adam, steps_done: u64) -> Result<SavedState> {
    let mut s = SavedState::new();
    s.nest("net", save_vars(vs)?);
    s.nest("adam", opt.save()?);
    s.put_scalar("steps_done", steps_done as f64);
    Ok(s)
}

/// Restore what `save_training` wrote into `vs` and `opt` (built with the same settings);
/// returns the step count. `who` names the network in errors.
pub fn restore_training(
    vs: &nn::VarStore,
    opt: &mut Adam,
    mut s: SavedState,
    who: &str,
) -> Result<u64> {
    restore_vars(vs, s.take_nested("net"))?;
    opt.restore(s.take_nested("adam"))?;
    let steps = s.take_usize("steps_done")? as u64;
    s.finish(who)?;
    Ok(steps)
}

/// Every variable of `vs` (sorted by name) into `net.<name>`.
pub fn save_vars(vs: &nn::VarStore) -> Result<SavedState> {
    let mut s = SavedState::new();
    let mut vars: Vec<(String, Tensor)> = vs.variables().into_iter().collect();
    vars.sort_by(|a, b| a.0.cmp(&b.0));
    for (n, t) in vars {
        s.put(n, to_f64(&t)?);
    }
    Ok(s)
}

/// Copy what `save_vars` wrote into the variables of `vs`.
pub fn restore_vars(vs: &nn::VarStore, mut s: SavedState) -> Result<()> {
    let _g = tch::no_grad_guard();
    for (n, t) in vs.variables() {
        let src = from_f64(&s.take(&n)?, &t, &format!("weight `{n}`"))?;
        t.shallow_clone().copy_(&src);
    }
    s.finish("the network")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::score::{ForwardProcess, NetworkConfig, ScoreNetwork};
    use tch::nn::OptimizerConfig;

    fn net(seed: u64) -> ScoreNetwork {
        let cfg = NetworkConfig::Mlp {
            hidden: 32,
            layers: 2,
            time_features: 8,
        };
        ScoreNetwork::new(cfg, ForwardProcess::default(), 3, Device::Cpu, seed).unwrap()
    }

    fn loss(n: &ScoreNetwork, k: i64) -> Tensor {
        tch::manual_seed(k);
        let x = Tensor::randn([16, 3], (Kind::Float, Device::Cpu));
        let t = Tensor::rand([16], (Kind::Float, Device::Cpu));
        (n.eps_hat(&x, &t) - &x * 3.0).square().mean(Kind::Float)
    }

    fn bits(n: &ScoreNetwork) -> Vec<u64> {
        n.parameters()
            .iter()
            .flat_map(|(_, t)| to_f64(t).unwrap())
            .map(f64::to_bits)
            .collect()
    }

    fn step(o: &mut nn::Optimizer, n: &ScoreNetwork, k: i64, clip: Option<f64>) {
        match clip {
            Some(c) => o.backward_step_clip_norm(&loss(n, k), c),
            None => o.backward_step(&loss(n, k)),
        }
    }

    /// 40 steps of each setting give the very weights tch's (libtorch's) optimiser gives, also
    /// when the run goes through a checkpoint after 20 steps (a new network and optimiser,
    /// restored from the saved numbers).
    #[test]
    fn matches_libtorch_adam_and_adamw_bit_for_bit_and_restarts() {
        tch::set_num_threads(1);
        for (kind, wd, clip) in [
            (OptimKind::Adam, 0.0, None),
            (OptimKind::Adam, 0.01, None),
            (OptimKind::Adamw, 0.01, Some(1.0)),
            (OptimKind::Adamw, 0.01, Some(1e-3)),
        ] {
            let (lr, betas) = (3e-3, [0.9, 0.99]);
            let a = net(4);
            let b = net(4);
            let mut theirs = match kind {
                OptimKind::Adam => nn::Adam {
                    beta1: betas[0],
                    beta2: betas[1],
                    wd,
                    ..Default::default()
                }
                .build(&a.vs, lr),
                OptimKind::Adamw => nn::AdamW {
                    beta1: betas[0],
                    beta2: betas[1],
                    wd,
                    ..Default::default()
                }
                .build(&a.vs, lr),
            }
            .unwrap();
            let mut ours = Adam::new(&b.vs, kind, lr, betas, wd);
            for k in 0..20 {
                step(&mut theirs, &a, k, clip);
                ours.backward_step(&loss(&b, k), clip);
            }
            let what = format!("{kind:?}, wd {wd}, clip {clip:?}");
            assert_eq!(bits(&a), bits(&b), "{what}: after 20 steps");
            let c = net(99);
            restore_vars(&c.vs, save_vars(&b.vs).unwrap()).unwrap();
            let mut resumed = Adam::new(&c.vs, kind, lr, betas, wd);
            resumed.restore(ours.save().unwrap()).unwrap();
            for k in 20..40 {
                step(&mut theirs, &a, k, clip);
                resumed.backward_step(&loss(&c, k), clip);
            }
            let (x, y) = (bits(&a), bits(&c));
            let differ = x.iter().zip(&y).filter(|(p, q)| p != q).count();
            assert_eq!(differ, 0, "{what}: {differ} of {} weights differ", x.len());
            assert_ne!(bits(&net(4)), x, "{what}: the weights moved");
        }
    }
}
