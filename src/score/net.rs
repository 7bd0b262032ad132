//! Time-conditioned score networks: an MLP for low-dimensional states and a small U-Net with
//! periodic padding for 2-D fields, both with a sinusoidal time embedding.
//!
//! The networks predict ε̂(x_t, t) ≈ −z for x_t = α(t) x₀ + σ(t) z and the score is
//! s_θ = ε̂/σ(t) ("noise-prediction" parametrisation, well scaled at every noise level).
use super::process::ForwardProcess;
use super::DeviceChoice;
use crate::error::{GendaError, Result};
use crate::io::{NamedArray, TensorFile};
use serde::{Deserialize, Serialize};
use tch::nn::{self, Module};
use tch::{Device, Kind, Tensor};

#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(tag = "kind", rename_all = "snake_case", deny_unknown_fields)]
pub enum NetworkConfig {
    /// Fully connected, SiLU, input [x, emb(t)].
    Mlp {
        #[serde(default = "d_hidden")]
        hidden: i64,
        #[serde(default = "d_layers")]
        layers: usize,
        #[serde(default = "d_tf")]
        time_features: i64,
    },
    /// SDA's residual MLP (`sda/nn.py` ResMLP inside `sda/score.py` ScoreNet, github
    /// francois-rozet/sda): the input [x, emb(t)] → Linear → `depth` residual blocks
    /// x + Lin(SiLU(Lin(LN(x)))) of `width` → Linear to the output → one residual block of the
    /// output width; LN is a LayerNorm without affine parameters (unbiased variance, ε = 1e-5,
    /// zuko's); emb(t) = Lin(SiLU(Lin([cos πkt, sin πkt]_{k=1..16}))) of 256 then `embedding`.
    ResMlp {
        #[serde(default = "d_res_width")]
        width: i64,
        #[serde(default = "d_layers")]
        depth: usize,
        #[serde(default = "d_res_embedding")]
        embedding: i64,
    },
    /// Two-level U-Net on a (height, width) doubly periodic field; height and width even. A
    /// sample of `dim` = S·height·width values is S stacked fields (an SDA window of S = 2k+1
    /// states, state-major), which the network takes as S input and output channels.
    Unet {
        height: i64,
        width: i64,
        #[serde(default = "d_channels")]
        channels: i64,
        #[serde(default = "d_tf")]
        time_features: i64,
    },
}

fn d_hidden() -> i64 {
    128
}
fn d_layers() -> usize {
    3
}
fn d_tf() -> i64 {
    16
}
fn d_channels() -> i64 {
    16
}
fn d_res_width() -> i64 {
    256
}
fn d_res_embedding() -> i64 {
    32
}

impl NetworkConfig {
    pub fn validate(&self, dim: usize) -> Result<()> {
        match *self {
            NetworkConfig::Mlp {
                hidden,
                layers,
                time_features,
            } => {
                if hidden < 1 || layers < 1 || time_features < 1 {
                    return Err(GendaError::invalid(
                        "network",
                        "hidden, layers and time_features must be >= 1",
                    ));
                }
            }
            NetworkConfig::ResMlp {
                width,
                depth,
                embedding,
            } => {
                if width < 1 || depth < 1 || embedding < 1 {
                    return Err(GendaError::invalid(
                        "network",
                        "res_mlp needs width, depth and embedding >= 1",
                    ));
                }
            }
            NetworkConfig::Unet {
                height,
                width,
                channels,
                time_features,
            } => {
                if height < 4 || width < 4 || height % 2 != 0 || width % 2 != 0 {
                    return Err(GendaError::invalid(
                        "network",
                        format!("unet needs even height, width >= 4, got {height}x{width}"),
                    ));
                }
                let field = (height * width) as usize;
                if dim == 0 || dim % field != 0 {
                    return Err(GendaError::Dimension {
                        what: "unet height*width (times the window's states) vs sample dimension"
                            .into(),
                        expected: dim,
                        got: field,
                    });
                }
                if channels < 1 || time_features < 1 {
                    return Err(GendaError::invalid(
                        "network",
                        "channels and time_features must be >= 1",
                    ));
                }
            }
        }
        Ok(())
    }

    fn time_features(&self) -> i64 {
        match *self {
            NetworkConfig::Mlp { time_features, .. }
            | NetworkConfig::Unet { time_features, .. } => time_features,
            // SDA's embedding has 16 frequencies.
            NetworkConfig::ResMlp { .. } => 16,
        }
    }
}

/// Sinusoidal embedding [sin(kπt), cos(kπt)], k = 1..F.   t: (B) → (B, 2F)
pub fn time_embedding(t: &Tensor, features: i64) -> Tensor {
    let freqs = (Tensor::arange(features, (Kind::Float, t.device())) + 1.0) * std::f64::consts::PI;
    let arg = t.unsqueeze(-1) * freqs.unsqueeze(0);
    Tensor::cat(&[arg.sin(), arg.cos()], -1)
}

struct Mlp {
    layers: Vec<nn::Linear>,
    out: nn::Linear,
}

struct Unet {
    h: i64,
    w: i64,
    /// Fields per sample (input and output channels).
    s: i64,
    c_in: nn::Conv2D,
    d1: nn::Conv2D,
    d2: nn::Conv2D,
    u1: nn::Conv2D,
    c_out: nn::Conv2D,
    t1: nn::Linear,
    t2: nn::Linear,
}

fn periodic_conv(conv: &nn::Conv2D, x: &Tensor) -> Tensor {
    conv.forward(&x.pad([1, 1, 1, 1], "circular", None))
}

/// One stage of a `ResMlp`: a width change, or a pre-norm residual block.
enum ResStage {
    Linear(nn::Linear),
    Block(nn::Linear, nn::Linear),
}

struct ResMlp {
    emb1: nn::Linear,
    emb2: nn::Linear,
    stages: Vec<ResStage>,
}

/// zuko's LayerNorm over the last dimension: no affine parameters, unbiased variance.
fn layer_norm(x: &Tensor) -> Tensor {
    let (var, mean) = x.var_mean_correction(&[-1i64][..], 1, true);
    (x - mean) / (var + 1e-5).sqrt()
}

impl ResMlp {
    fn new(root: &nn::Path, dim: i64, width: i64, depth: usize, embedding: i64) -> Self {
        let lin = |name: String, i, o| nn::linear(root / name, i, o, Default::default());
        let widths: Vec<i64> = std::iter::once(dim + embedding)
            .chain(std::iter::repeat_n(width, depth))
            .chain(std::iter::once(dim))
            .collect();
        let mut stages = Vec::new();
        for (i, w) in widths.windows(2).enumerate() {
            let (before, after) = (w[0], w[1]);
            // The last stage's names start with `out` (zeroed for residual priors).
            let tag = if i + 2 == widths.len() {
                "out".to_string()
            } else {
                format!("stage{i}")
            };
            if after != before {
                stages.push(ResStage::Linear(lin(format!("{tag}_lin"), before, after)));
            }
            stages.push(ResStage::Block(
                lin(format!("{tag}_res_a"), after, after),
                lin(format!("{tag}_res_b"), after, after),
            ));
        }
        ResMlp {
            emb1: lin("temb1".into(), 32, 256),
            emb2: lin("temb2".into(), 256, embedding),
            stages,
        }
    }

    fn forward(&self, x: &Tensor, t: &Tensor) -> Tensor {
        let freqs = (Tensor::arange(16, (Kind::Float, t.device())) + 1.0) * std::f64::consts::PI;
        let arg = t.unsqueeze(-1) * freqs.unsqueeze(0);
        let e = Tensor::cat(&[arg.cos(), arg.sin()], -1);
        let e = self.emb2.forward(&self.emb1.forward(&e).silu());
        let mut h = Tensor::cat(&[x.shallow_clone(), e], -1);
        for st in &self.stages {
            h = match st {
                ResStage::Linear(l) => l.forward(&h),
                ResStage::Block(a, b) => &h + b.forward(&a.forward(&layer_norm(&h)).silu()),
            };
        }
        h
    }
}

enum Arch {
    Mlp(Mlp),
    ResMlp(ResMlp),
    Unet(Box<Unet>),
}

/// A score network with its forward process and data normalisation (its provenance).
pub struct ScoreNetwork {
    pub cfg: NetworkConfig,
    pub process: ForwardProcess,
    /// Sample dimension d (state dim × window).
    pub dim: usize,
    /// Data were standardised as (x − shift)/scale before training.
    pub shift: f64,
    pub scale: f64,
    /// Per state variable (component k ↦ k mod len) instead, when not empty.
    pub var_shift: Vec<f64>,
    pub var_scale: Vec<f64>,
    pub vs: nn::VarStore,
    arch: Arch,
}

impl ScoreNetwork {
    pub fn new(
        cfg: NetworkConfig,
        process: ForwardProcess,
        dim: usize,
        device: Device,
        seed: u64,
    ) -> Result<Self> {
        cfg.validate(dim)?;
        // The initial weights come from libtorch's one global generator: seeding and drawing
        // them is one critical section, so networks built at the same time on several threads
        // (experiments of a `genda sweep`) get the same weights as when built alone.
        static INIT: std::sync::Mutex<()> = std::sync::Mutex::new(());
        let _init = INIT.lock().unwrap_or_else(|p| p.into_inner());
        tch::manual_seed(seed as i64);
        let vs = nn::VarStore::new(device);
        let root = vs.root();
        let tf2 = 2 * cfg.time_features();
        let arch = match cfg {
            NetworkConfig::Mlp { hidden, layers, .. } => {
                let mut ls = Vec::new();
                let mut width = dim as i64 + tf2;
                for l in 0..layers {
                    ls.push(nn::linear(
                        &root / format!("hidden{l}"),
                        width,
                        hidden,
                        Default::default(),
                    ));
                    width = hidden;
                }
                Arch::Mlp(Mlp {
                    layers: ls,
                    out: nn::linear(&root / "out", width, dim as i64, Default::default()),
                })
            }
            NetworkConfig::ResMlp {
                width,
                depth,
                embedding,
            } => Arch::ResMlp(ResMlp::new(&root, dim as i64, width, depth, embedding)),
            NetworkConfig::Unet {
                height,
                width,
                channels: c,
                ..
            } => {
                let cc = nn::ConvConfig {
                    padding: 0,
                    ..Default::default()
                };
                let s = dim as i64 / (height * width);
                Arch::Unet(Box::new(Unet {
                    h: height,
                    w: width,
                    s,
                    c_in: nn::conv2d(&root / "conv_in", s, c, 3, cc),
                    d1: nn::conv2d(&root / "down1", c, c, 3, cc),
                    d2: nn::conv2d(&root / "down2", c, 2 * c, 3, cc),
                    u1: nn::conv2d(&root / "up1", 3 * c, c, 3, cc),
                    c_out: nn::conv2d(&root / "conv_out", c, s, 3, cc),
                    t1: nn::linear(&root / "temb1", tf2, c, Default::default()),
                    t2: nn::linear(&root / "temb2", tf2, 2 * c, Default::default()),
                }))
            }
        };
        Ok(ScoreNetwork {
            cfg,
            process,
            dim,
            shift: 0.0,
            scale: 1.0,
            var_shift: Vec::new(),
            var_scale: Vec::new(),
            vs,
            arch,
        })
    }

    pub fn device(&self) -> Device {
        self.vs.device()
    }

    /// The data shift of state variable `k` (the global one without per-variable scaling).
    pub fn shift_at(&self, k: usize) -> f64 {
        match self.var_shift.len() {
            0 => self.shift,
            l => self.var_shift[k % l],
        }
    }

    /// The data scale of state variable `k`.
    pub fn scale_at(&self, k: usize) -> f64 {
        match self.var_scale.len() {
            0 => self.scale,
            l => self.var_scale[k % l],
        }
    }

    /// ε̂(x_t, t).   x: (B, d), t: (B) → (B, d)
    pub fn eps_hat(&self, x: &Tensor, t: &Tensor) -> Tensor {
        if let Arch::ResMlp(r) = &self.arch {
            return r.forward(x, t);
        }
        let emb = time_embedding(t, self.cfg.time_features());
        match &self.arch {
            Arch::ResMlp(_) => unreachable!("handled above"),
            Arch::Mlp(m) => {
                let mut h = Tensor::cat(&[x.shallow_clone(), emb], -1);
                for l in &m.layers {
                    h = l.forward(&h).silu();
                }
                m.out.forward(&h)
            }
            Arch::Unet(u) => {
                let b = x.size()[0];
                let x = x.reshape([b, u.s, u.h, u.w]);
                let e1 = u.t1.forward(&emb).unsqueeze(-1).unsqueeze(-1);
                let e2 = u.t2.forward(&emb).unsqueeze(-1).unsqueeze(-1);
                let h0 = periodic_conv(&u.c_in, &x).silu();
                let h1 = (periodic_conv(&u.d1, &h0) + e1).silu();
                let p = h1.avg_pool2d([2, 2], [2, 2], [0, 0], false, true, None::<i64>);
                let h2 = (periodic_conv(&u.d2, &p) + e2).silu();
                let up = h2.upsample_nearest2d([u.h, u.w], None::<f64>, None::<f64>);
                let h3 = periodic_conv(&u.u1, &Tensor::cat(&[up, h1], 1)).silu();
                periodic_conv(&u.c_out, &h3).reshape([b, u.s * u.h * u.w])
            }
        }
    }

    /// Score s_θ(x, t) = ε̂/σ(t) in the standardised coordinates at the rows of `x` (M, d),
    /// written to `out`.
    pub fn score_into(&self, x: &[f64], t: f64, out: &mut [f64]) {
        self.eps_into(x, t, out);
        let s = self.process.sigma(t);
        out.iter_mut().for_each(|v| *v /= s);
    }

    /// A network that a filter trains and fine-tunes every cycle (Ω's residual, MASF/SF
    /// priors), on `device`, with the same initial weights on every device; its optimiser is a
    /// checkpointable `score::adam::Adam`. On the CPU such small networks run fastest on one
    /// libtorch thread — the intra-op pool only adds wake-ups (30 ms vs 1 s per SPEKF cycle on a
    /// busy 2-core node) — so this sets libtorch's (process-wide) thread count to 1.
    pub fn for_fine_tuning(
        cfg: NetworkConfig,
        dim: usize,
        process: ForwardProcess,
        seed: u64,
        device: Device,
    ) -> Result<Self> {
        if device == Device::Cpu {
            tch::set_num_threads(1);
        }
        let mut net = ScoreNetwork::new(cfg, process, dim, Device::Cpu, seed)?;
        net.vs.set_device(device);
        Ok(net)
    }

    /// ε̂(x, t) at the rows of `x` (M, d) in the standardised coordinates, written to `out`.
    pub fn eps_into(&self, x: &[f64], t: f64, out: &mut [f64]) {
        let n = (x.len() / self.dim) as i64;
        let device = self.device();
        let _g = tch::no_grad_guard();
        let xt = Tensor::from_slice(x)
            .to_kind(Kind::Float)
            .reshape([n, self.dim as i64])
            .to(device);
        let tt = Tensor::full([n], t, (Kind::Float, device));
        let e = self
            .eps_hat(&xt, &tt)
            .to_kind(Kind::Double)
            .to(Device::Cpu)
            .reshape([-1]);
        e.copy_data(out, out.len());
    }

    /// ε̂(x, t) into `eps` and the vector–Jacobian product J_ε̂(x)ᵀ c into `vjp`, where the
    /// cotangent c = `cotangent(ε̂)` may depend on ε̂ (guidance through Tweedie's estimate).
    /// One forward and one backward pass through the network (rows are independent, so the
    /// VJP of the batch sum is the per-row VJP).   x, eps, vjp: (M, d)
    pub fn eps_vjp(
        &self,
        x: &[f64],
        t: f64,
        cotangent: &mut dyn FnMut(&[f64]) -> Vec<f64>,
        eps: &mut [f64],
        vjp: &mut [f64],
    ) {
        let n = (x.len() / self.dim) as i64;
        let device = self.device();
        let xt = Tensor::from_slice(x)
            .to_kind(Kind::Float)
            .reshape([n, self.dim as i64])
            .to(device)
            .set_requires_grad(true);
        let tt = Tensor::full([n], t, (Kind::Float, device));
        let e = self.eps_hat(&xt, &tt);
        let e_cpu = e
            .detach()
            .to_kind(Kind::Double)
            .to(Device::Cpu)
            .reshape([-1]);
        e_cpu.copy_data(eps, eps.len());
        let c = cotangent(eps);
        let ct = Tensor::from_slice(&c)
            .to_kind(Kind::Float)
            .reshape([n, self.dim as i64])
            .to(device);
        let g = Tensor::run_backward(&[(e * ct).sum(Kind::Float)], &[&xt], false, false);
        let g = g[0].to_kind(Kind::Double).to(Device::Cpu).reshape([-1]);
        g.copy_data(vjp, vjp.len());
    }

    /// Parameters sorted by name (a fixed order for flattening, allreduce and files).
    pub fn parameters(&self) -> Vec<(String, Tensor)> {
        let mut v: Vec<(String, Tensor)> = self.vs.variables().into_iter().collect();
        v.sort_by(|a, b| a.0.cmp(&b.0));
        v
    }

    /// Provenance attributes stored with weights.
    pub fn attrs(&self) -> Vec<(String, String)> {
        let mut a = vec![
            (
                "network".into(),
                toml::to_string(&self.cfg).unwrap_or_default(),
            ),
            (
                "process".into(),
                toml::to_string(&self.process).unwrap_or_default(),
            ),
            ("dim".into(), self.dim.to_string()),
            ("data_shift".into(), format!("{:e}", self.shift)),
            ("data_scale".into(), format!("{:e}", self.scale)),
            ("genda_version".into(), env!("CARGO_PKG_VERSION").into()),
        ];
        if !self.var_shift.is_empty() {
            let join = |v: &[f64]| {
                v.iter()
                    .map(|x| format!("{x:e}"))
                    .collect::<Vec<_>>()
                    .join(" ")
            };
            a.push(("data_shift_per_variable".into(), join(&self.var_shift)));
            a.push(("data_scale_per_variable".into(), join(&self.var_scale)));
        }
        a
    }

    /// Copy of every parameter as named f32 arrays.
    pub fn export(tensors: &[(String, Tensor)]) -> Vec<NamedArray> {
        tensors
            .iter()
            .map(|(n, t)| {
                let shape: Vec<usize> = t.size().iter().map(|&s| s as usize).collect();
                let flat = t
                    .detach()
                    .to_kind(Kind::Float)
                    .to(Device::Cpu)
                    .reshape([-1]);
                let data = Vec::<f32>::try_from(&flat).unwrap_or_default();
                NamedArray {
                    name: n.clone(),
                    shape,
                    data,
                }
            })
            .collect()
    }

    /// Overwrite `tensors` with `arrays`, checking names and shapes.
    pub fn import(tensors: &[(String, Tensor)], arrays: &[NamedArray], origin: &str) -> Result<()> {
        let _g = tch::no_grad_guard();
        for (n, t) in tensors {
            let a = arrays.iter().find(|a| &a.name == n).ok_or_else(|| {
                GendaError::Score(format!(
                    "{origin}: parameter `{n}` missing (different architecture?)"
                ))
            })?;
            let shape: Vec<usize> = t.size().iter().map(|&s| s as usize).collect();
            if a.shape != shape {
                return Err(GendaError::Score(format!(
                    "{origin}: parameter `{n}` has shape {:?}, the network expects {shape:?}",
                    a.shape
                )));
            }
            let src = Tensor::from_slice(&a.data).reshape(t.size()).to(t.device());
            let mut t = t.shallow_clone();
            t.copy_(&src);
        }
        if arrays.len() != tensors.len() {
            return Err(GendaError::Score(format!(
                "{origin}: {} parameters stored, the network has {}",
                arrays.len(),
                tensors.len()
            )));
        }
        Ok(())
    }

    /// Rebuild a network from a weights/checkpoint file (group `group`).
    pub fn from_tensor_file(
        tf: &TensorFile,
        group: &str,
        device: DeviceChoice,
        origin: &str,
    ) -> Result<Self> {
        let get = |k: &str| {
            tf.attrs.get(k).ok_or_else(|| {
                GendaError::Score(format!(
                    "{origin}: attribute `{k}` missing (not a genda weights file?)"
                ))
            })
        };
        let cfg: NetworkConfig = toml::from_str(get("network")?)
            .map_err(|e| GendaError::Score(format!("{origin}: bad `network` attribute: {e}")))?;
        let process: ForwardProcess = toml::from_str(get("process")?)
            .map_err(|e| GendaError::Score(format!("{origin}: bad `process` attribute: {e}")))?;
        let dim: usize = get("dim")?
            .parse()
            .map_err(|e| GendaError::Score(format!("{origin}: bad `dim`: {e}")))?;
        let dev = super::select_local_device(device)?;
        let mut net = ScoreNetwork::new(cfg, process, dim, dev, 0)?;
        net.shift = get("data_shift")?
            .parse()
            .map_err(|e| GendaError::Score(format!("{origin}: bad data_shift: {e}")))?;
        net.scale = get("data_scale")?
            .parse()
            .map_err(|e| GendaError::Score(format!("{origin}: bad data_scale: {e}")))?;
        let list = |k: &str| -> Result<Vec<f64>> {
            match tf.attrs.get(k) {
                None => Ok(Vec::new()),
                Some(v) => v
                    .split_whitespace()
                    .map(|x| {
                        x.parse::<f64>()
                            .map_err(|e| GendaError::Score(format!("{origin}: bad {k}: {e}")))
                    })
                    .collect(),
            }
        };
        net.var_shift = list("data_shift_per_variable")?;
        net.var_scale = list("data_scale_per_variable")?;
        if net.var_shift.len() != net.var_scale.len() {
            return Err(GendaError::Score(format!(
                "{origin}: data_shift_per_variable and data_scale_per_variable differ in length"
            )));
        }
        let arrays = tf
            .groups
            .get(group)
            .ok_or_else(|| GendaError::Score(format!("{origin}: group `{group}` missing")))?;
        Self::import(&net.parameters(), arrays, origin)?;
        Ok(net)
    }

    /// Load weights written by `genda train`, refusing a different forward process. On the
    /// CPU this sets libtorch's (process-wide) thread count to 1, as `for_fine_tuning` does:
    /// with libtorch's default (one thread per core) a DAISI or SDA run's numbers depended on
    /// the node's core count (2·10⁻⁸ relative in a 200-cycle L63 DAISI run here) and its small
    /// networks ran 5× slower on this 2-core machine.
    pub fn load(
        path: &std::path::Path,
        expected_process: Option<&ForwardProcess>,
        device: DeviceChoice,
    ) -> Result<Self> {
        let tf = crate::io::read_tensor_file(path)?;
        let origin = path.display().to_string();
        let net = Self::from_tensor_file(&tf, "params", device, &origin)?;
        if net.device() == Device::Cpu {
            tch::set_num_threads(1);
        }
        if let Some(p) = expected_process {
            if p != &net.process {
                return Err(GendaError::Score(format!(
                    "{origin}: network was trained with forward process {:?} but is used with {p:?}; its score would be mis-scaled",
                    net.process
                )));
            }
        }
        Ok(net)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// With periodic padding and stride-2 pooling, shifting the input field by 2 cells shifts the
    /// U-Net output by the same 2 cells (translation equivariance on the torus).
    #[test]
    fn unet_is_periodic() {
        let (h, w) = (8i64, 12i64);
        let cfg = NetworkConfig::Unet {
            height: h,
            width: w,
            channels: 4,
            time_features: 4,
        };
        let net = ScoreNetwork::new(
            cfg,
            ForwardProcess::default(),
            (h * w) as usize,
            Device::Cpu,
            1,
        )
        .unwrap();
        let x = Tensor::randn([2, h * w], (Kind::Float, Device::Cpu));
        let t = Tensor::from_slice(&[0.3f32, 0.7]);
        let y = net.eps_hat(&x, &t).reshape([2, h, w]);
        let xs = x
            .reshape([2, h, w])
            .roll([2, 4], [1, 2])
            .reshape([2, h * w]);
        let ys = net.eps_hat(&xs, &t).reshape([2, h, w]);
        let diff = (ys - y.roll([2, 4], [1, 2])).abs().max().double_value(&[]);
        assert!(diff < 1e-5, "{diff}");
        assert_eq!(net.eps_hat(&x, &t).size(), vec![2, h * w]);
        // Wrong field size for the sample dimension is a clear error.
        let bad = NetworkConfig::Unet {
            height: h,
            width: w,
            channels: 4,
            time_features: 4,
        };
        assert!(ScoreNetwork::new(bad, ForwardProcess::default(), 10, Device::Cpu, 1).is_err());
    }

    /// A window of S fields is S channels: the output has the sample's size, each output field
    /// depends on every input field, and the network stays periodic in space.
    #[test]
    fn unet_takes_a_window_of_fields_as_channels() {
        let (h, w, s) = (8i64, 8i64, 5i64);
        let cfg = NetworkConfig::Unet {
            height: h,
            width: w,
            channels: 4,
            time_features: 4,
        };
        let dim = (s * h * w) as usize;
        let net = ScoreNetwork::new(cfg, ForwardProcess::default(), dim, Device::Cpu, 1).unwrap();
        let x = Tensor::randn([3, s * h * w], (Kind::Float, Device::Cpu)).set_requires_grad(true);
        let t = Tensor::from_slice(&[0.2f32, 0.5, 0.9]);
        let y = net.eps_hat(&x, &t);
        assert_eq!(y.size(), vec![3, s * h * w]);
        // The first field of the output responds to the last field of the input.
        let first = y.narrow(1, 0, h * w).sum(Kind::Float);
        let g = Tensor::run_backward(&[first], &[&x], false, false).remove(0);
        let last = g.narrow(1, (s - 1) * h * w, h * w).abs().sum(Kind::Float);
        assert!(last.double_value(&[]) > 0.0);
        let roll = |v: &Tensor| {
            v.reshape([3, s, h, w])
                .roll([2, 2], [2, 3])
                .reshape([3, -1])
        };
        let diff = (net.eps_hat(&roll(&x.detach()), &t) - roll(&y.detach()))
            .abs()
            .max()
            .double_value(&[]);
        assert!(diff < 1e-5, "{diff}");
    }

    /// SDA's Lorenz-63 window network (window 5 of 3 variables, width 256, depth 5, embedding
    /// 32) has SDA's parameter count: time embedding 32→256→32 (16 672), Linear(47, 256), five
    /// residual blocks of 256, Linear(256, 15) and one residual block of 15 (691 215 in all);
    /// the LayerNorm has no parameters; a zeroed `out` stage makes the output exactly 0.
    #[test]
    fn res_mlp_is_sdas_architecture() {
        let cfg = NetworkConfig::ResMlp {
            width: 256,
            depth: 5,
            embedding: 32,
        };
        let net = ScoreNetwork::new(cfg, ForwardProcess::default(), 15, Device::Cpu, 3).unwrap();
        let count: i64 = net.parameters().iter().map(|(_, t)| t.numel() as i64).sum();
        let block = |w: i64| 2 * (w * w + w);
        let want = (32 * 256 + 256)
            + (256 * 32 + 32)
            + (47 * 256 + 256)
            + 5 * block(256)
            + (256 * 15 + 15)
            + block(15);
        assert_eq!(count, want);
        let x = Tensor::randn([4, 15], (Kind::Float, Device::Cpu));
        let t = Tensor::from_slice(&[0.1f32, 0.4, 0.7, 0.95]);
        let y = net.eps_hat(&x, &t);
        assert_eq!(y.size(), vec![4, 15]);
        assert!(y.abs().sum(Kind::Float).double_value(&[]) > 0.0);
        let _g = tch::no_grad_guard();
        for (name, p) in net.parameters() {
            if name.starts_with("out") {
                let _ = p.shallow_clone().zero_();
            }
        }
        let y0 = net.eps_hat(&x, &t);
        assert_eq!(y0.abs().max().double_value(&[]), 0.0);
        // zuko's LayerNorm: zero mean, unit unbiased variance over the last dimension.
        let ln = layer_norm(&x);
        let (v, m) = ln.var_mean_correction(&[-1i64][..], 1, false);
        assert!(m.abs().max().double_value(&[]) < 1e-6);
        assert!((v - 1.0).abs().max().double_value(&[]) < 1e-4);
    }
}
