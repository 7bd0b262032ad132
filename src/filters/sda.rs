//! SDA (Rozet & Louppe 2023) as a filter, by sliding an assimilation window: every cycle a whole
//! trajectory of the last `window_cycles` observation times — (window_cycles − 1)·obs_every + 1
//! model steps — is sampled from p(x_{1:L} | y) with the window score network and the
//! observations inside the window (`score::sda::SdaSampler`), and the members become the last
//! state of M sampled trajectories. The forecast ensemble is not used: SDA's prior is the
//! pre-trained trajectory score (`genda train` with `[data] window = 2k+1` on a trajectory written
//! at every model step), and the observation model enters only at inference, so H, the gaps
//! and Σ_y can change without retraining. The same sampler smooths a whole window in
//! `genda smooth` (`crate::commands::smooth`). Linear measurements that select state components only;
//! one domain (the network sees the whole state).
use super::{AnalysisInput, Filter, Needs};
use crate::error::{GendaError, Result};
use crate::score::net::ScoreNetwork;
use crate::score::process::ForwardProcess;
use crate::score::sda::{SdaSampler, SdaSettings, TrajectoryObs};
use crate::score::DeviceChoice;
use crate::state::{to_usizes, usizes, SavedState};
use ndarray::Array2;
use serde::{Deserialize, Serialize};
use std::collections::VecDeque;
use std::path::PathBuf;

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct SdaConfig {
    /// Trajectories sampled (filter: ensemble size).
    pub members: usize,
    /// Window score network written by `genda train` (`[data] window = 2k+1`, ε-prediction).
    pub weights: PathBuf,
    #[serde(default)]
    pub device: DeviceChoice,
    /// Reverse-time steps.
    #[serde(default = "d_steps")]
    pub steps: usize,
    /// Langevin corrections per step.
    #[serde(default = "d_corrections")]
    pub corrections: usize,
    #[serde(default = "d_tau")]
    pub tau: f64,
    /// γ in the likelihood variance Σ_y + γ (σ_t/μ_t)² (SDA uses 3e-2 for Lorenz).
    #[serde(default = "d_gamma")]
    pub gamma: f64,
    /// Filter: observation times in the sliding window.
    #[serde(default = "d_window_cycles")]
    pub window_cycles: usize,
    /// `genda smooth`: particles of the bootstrap-particle-filter reference posterior (0: none).
    #[serde(default = "d_particles")]
    pub reference_particles: usize,
    /// Trajectories per network batch (memory; results do not depend on it).
    #[serde(default = "d_chunk")]
    pub chunk: usize,
}

fn d_steps() -> usize {
    256
}
fn d_corrections() -> usize {
    1
}
fn d_tau() -> f64 {
    0.25
}
fn d_gamma() -> f64 {
    3e-2
}
fn d_window_cycles() -> usize {
    2
}
fn d_particles() -> usize {
    16384
}
fn d_chunk() -> usize {
    256
}

impl SdaConfig {
    pub fn validate(&self) -> Result<()> {
        if self.steps == 0 || self.chunk == 0 || self.window_cycles == 0 {
            return Err(GendaError::invalid(
                "filter",
                "sda needs steps, chunk, window_cycles >= 1",
            ));
        }
        if !(self.tau > 0.0 && self.tau.is_finite())
            || !(self.gamma >= 0.0 && self.gamma.is_finite())
        {
            return Err(GendaError::invalid(
                "filter",
                format!(
                    "sda needs tau > 0 and gamma >= 0 (got {}, {})",
                    self.tau, self.gamma
                ),
            ));
        }
        Ok(())
    }

    pub fn settings(&self) -> SdaSettings {
        SdaSettings {
            steps: self.steps,
            corrections: self.corrections,
            tau: self.tau,
            gamma: self.gamma,
            chunk: self.chunk,
        }
    }

    /// Load the window network for states of `n` values; returns it with its window (states).
    pub fn load(&self, n: usize) -> Result<(ScoreNetwork, usize)> {
        let path = &self.weights;
        let net = ScoreNetwork::load(path, None, self.device).map_err(|e| {
            GendaError::Score(format!(
                "sda: cannot load the window network `filter.weights = {}`: {e} (train one with `genda train`, [data] window = 2k+1)",
                path.display()
            ))
        })?;
        if matches!(net.process, ForwardProcess::Interpolant { .. }) {
            return Err(GendaError::Score(format!(
                "sda: {} was trained on the interpolant path (flow matching); SDA needs an ε-prediction network (process vp_cos, vp or ve)",
                path.display()
            )));
        }
        if net.dim % n != 0 || (net.dim / n) % 2 == 0 {
            return Err(GendaError::Dimension {
                what: format!(
                    "sda: network {} input (an odd number of states of the model's size)",
                    path.display()
                ),
                expected: n,
                got: net.dim,
            });
        }
        let w = net.dim / n;
        Ok((net, w))
    }
}

/// One observation time: (observed components, y, R).
type WindowObs = (Vec<usize>, Vec<f64>, Vec<f64>);

pub struct Sda {
    cfg: SdaConfig,
    net: Option<(ScoreNetwork, usize)>,
    /// The observation times in the window, oldest first.
    history: VecDeque<WindowObs>,
}

impl Sda {
    pub fn new(cfg: SdaConfig) -> Self {
        Sda {
            cfg,
            net: None,
            history: VecDeque::new(),
        }
    }
}

impl Filter for Sda {
    fn name(&self) -> &'static str {
        "sda"
    }

    /// The path tells the filter how many model steps lie between observation times.
    fn prepare(&mut self, n: usize, _files: &dyn super::DataFiles) -> Result<()> {
        if self.net.is_none() {
            self.net = Some(self.cfg.load(n)?);
        }
        Ok(())
    }

    fn needs(&self, _n_global: usize) -> Needs {
        Needs {
            forecast_path: true,
            whole_state: Some("its window network sees the whole state"),
            ..Needs::default()
        }
    }

    /// The observations of the window so far (the network is the weights file's, reloaded).
    fn save_state(&self) -> Result<SavedState> {
        let mut s = SavedState::new();
        s.put_scalar("history.len", self.history.len() as f64);
        for (j, (comp, y, r)) in self.history.iter().enumerate() {
            s.put(format!("history.{j}.components"), usizes(comp));
            s.put(format!("history.{j}.obs"), y.clone());
            s.put(format!("history.{j}.error_var"), r.clone());
        }
        Ok(s)
    }

    fn restore_state(&mut self, mut s: SavedState) -> Result<()> {
        self.history.clear();
        if s.has("history.len") {
            for j in 0..s.take_usize("history.len")? {
                let c = s.take(&format!("history.{j}.components"))?;
                let comp = to_usizes(&c, "history components")?;
                let y = s.take_len(&format!("history.{j}.obs"), comp.len())?;
                let r = s.take_len(&format!("history.{j}.error_var"), comp.len())?;
                self.history.push_back((comp, y, r));
            }
        }
        s.finish("sda")
    }

    fn analyse(&mut self, ens: &mut Array2<f64>, input: &AnalysisInput) -> Result<()> {
        input.check(ens, "sda")?;
        if !input.domain.whole {
            return Err(GendaError::invalid(
                "parallel.domains",
                "sda samples whole-state trajectories; use domains = 1",
            ));
        }
        let observed = super::selected_components(input.obs_operator).ok_or_else(|| {
            GendaError::invalid(
                "observations.operator",
                "sda: measurements must select state components (operator = \"sparse\" or \"identity\")",
            )
        })?;
        let (m, n) = ens.dim();
        let every = input.forecast.as_ref().map_or(1, |f| f.states.len().max(1));
        if self.net.is_none() {
            self.net = Some(self.cfg.load(n)?);
        }
        let (net, w) = self.net.as_ref().expect("loaded above");
        let l = (self.cfg.window_cycles - 1) * every + 1;
        if l < *w {
            return Err(GendaError::invalid(
                "filter.window_cycles",
                format!(
                    "a window of {} observation times spans {l} model steps, fewer than the network's window of {w} states (2k+1); raise window_cycles",
                    self.cfg.window_cycles
                ),
            ));
        }
        self.history.push_back((
            observed.clone(),
            input.obs.to_vec(),
            input.obs_error_var.to_vec(),
        ));
        while self.history.len() > self.cfg.window_cycles {
            self.history.pop_front();
        }
        let mut obs = TrajectoryObs::default();
        let kept = self.history.len();
        for (j, (comp, y, r)) in self.history.iter().enumerate() {
            let state = l - 1 - (kept - 1 - j) * every;
            for ((&c, &yv), &rv) in comp.iter().zip(y).zip(r) {
                let (shift, scale) = (net.shift_at(c), net.scale_at(c));
                obs.index.push(state * n + c);
                obs.y.push((yv - shift) / scale);
                obs.var.push(rv / (scale * scale));
            }
        }
        let sampler = SdaSampler::new(net, net.dim, n, l, &obs)?;
        let seed = input.seed ^ (input.cycle as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15);
        let x =
            sampler
                .sample(m, &self.cfg.settings(), seed)
                .map_err(|e| GendaError::Diverged {
                    cycle: input.cycle,
                    what: format!("sda: {e}"),
                })?;
        let last = (l - 1) * n;
        for i in 0..m {
            for k in 0..n {
                ens[[i, k]] = net.shift_at(k) + net.scale_at(k) * x[i * l * n + last + k];
            }
        }
        Ok(())
    }
}
