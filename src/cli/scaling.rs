//! `genda scaling`: a strong or weak scaling series of `genda run` over rank counts, with the
//! per-phase split (model forecast, analysis, communication, I/O) measured by the run's timers.
use crate::config::Config;
use crate::experiment::RunSummary;
use anyhow::{bail, Context, Result};
use serde::{Deserialize, Serialize};
use std::path::Path;
use std::process::Command;

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Mode {
    Strong,
    Weak,
}

/// What the ranks of a series split.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Split {
    /// Spatial domains (`--domains R`).
    Domains,
    /// Member groups (`--domains 1`).
    Members,
}

/// What one run reports (root rank's phase timers, whole-run wall time).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Timing {
    pub ranks: usize,
    pub members: usize,
    pub state_dim: usize,
    pub cycles: usize,
    pub wall_s: f64,
    pub truth_s: f64,
    pub forecast_s: f64,
    pub communication_s: f64,
    pub analysis_s: f64,
    /// Scoring against the truth (older timing files have none).
    #[serde(default)]
    pub assessment_s: f64,
    pub output_s: f64,
    /// Layout of the run.
    #[serde(default)]
    pub domains: usize,
    /// Peak resident memory of each rank, MiB.
    #[serde(default)]
    pub max_rss_mib: Vec<f64>,
}

pub fn write_timing(path: &Path, cfg: &Config, s: &RunSummary, wall: f64) -> Result<()> {
    let t = Timing {
        ranks: s.ranks,
        members: cfg.filter.members(),
        state_dim: cfg.model.dim(),
        cycles: cfg.experiment.cycles,
        wall_s: wall,
        truth_s: s.times.truth,
        forecast_s: s.times.forecast,
        communication_s: s.times.communication,
        analysis_s: s.times.analysis,
        assessment_s: s.times.assessment,
        output_s: s.times.output,
        domains: s.domains,
        max_rss_mib: s
            .max_rss_per_rank
            .iter()
            .map(|b| *b as f64 / 1048576.0)
            .collect(),
    };
    std::fs::write(path, toml::to_string(&t)?)
        .with_context(|| format!("writing {}", path.display()))?;
    Ok(())
}

#[allow(clippy::too_many_arguments)]
pub fn run_series(
    config: &Path,
    sets: &[String],
    ranks: &[usize],
    mode: Mode,
    cycles: Option<usize>,
    out_dir: &Path,
    launcher: &str,
    split: Split,
) -> Result<String> {
    let cfg = Config::from_file_with(config, sets)?;
    if ranks.is_empty() || ranks.contains(&0) {
        bail!("--ranks must list positive rank counts");
    }
    std::fs::create_dir_all(out_dir).with_context(|| format!("creating {}", out_dir.display()))?;
    let exe = std::env::current_exe().context("locating the genda executable")?;
    let base_members = cfg.filter.members();
    let r0 = ranks[0];
    let extra: Vec<String> = std::env::var("GENDA_LAUNCHER_FLAGS")
        .unwrap_or_default()
        .split_whitespace()
        .map(String::from)
        .collect();
    let mut rows: Vec<Timing> = Vec::new();
    for &r in ranks {
        let members = match mode {
            Mode::Strong => base_members,
            Mode::Weak => base_members * r / r0,
        };
        let tfile = out_dir.join(format!("timing_np{r}.toml"));
        let _ = std::fs::remove_file(&tfile);
        let mut cmd = Command::new(launcher);
        cmd.args(&extra).arg("-n").arg(r.to_string());
        cmd.arg(&exe)
            .arg("run")
            .arg(config)
            .args([
                "--no-output",
                "--quiet",
                "--members",
                &members.to_string(),
                "--domains",
                &match split {
                    Split::Domains => r.to_string(),
                    Split::Members => "1".to_string(),
                },
                "--timing-file",
            ])
            .arg(&tfile);
        for s in sets {
            cmd.arg("--set").arg(s);
        }
        if let Some(c) = cycles {
            cmd.args(["--cycles", &c.to_string(), "--burn-in", "0"]);
        }
        log::info!("scaling: {} ranks, {members} members", r);
        let out = cmd
            .output()
            .with_context(|| format!("starting `{launcher}` (is it on PATH?)"))?;
        if !out.status.success() {
            bail!(
                "run on {r} ranks failed:\n{}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
        let t: Timing = toml::from_str(
            &std::fs::read_to_string(&tfile)
                .with_context(|| format!("reading {}", tfile.display()))?,
        )?;
        rows.push(t);
    }
    let base = &rows[0];
    let per_cycle = |t: &Timing| t.wall_s / t.cycles.max(1) as f64;
    let mut csv = String::from("ranks,members,state_dim,cycles,wall_s,time_per_cycle_s,speedup,efficiency,forecast_s,analysis_s,communication_s,io_s,truth_s,assessment_s\n");
    let mut md = format!(
        "{} scaling of `{}` ({} cycles, state {})\n\n| ranks | members | time/cycle [ms] | speed-up | efficiency | forecast | analysis | communication | I/O |\n|---:|---:|---:|---:|---:|---:|---:|---:|---:|\n",
        if mode == Mode::Strong { "Strong" } else { "Weak" },
        config.display(),
        base.cycles,
        base.state_dim
    );
    let mut points = Vec::new();
    for t in &rows {
        let ratio = t.ranks as f64 / base.ranks as f64;
        let speedup = match mode {
            Mode::Strong => per_cycle(base) / per_cycle(t),
            Mode::Weak => ratio * per_cycle(base) / per_cycle(t),
        };
        let eff = speedup / ratio;
        let total = (t.forecast_s
            + t.analysis_s
            + t.assessment_s
            + t.communication_s
            + t.output_s
            + t.truth_s)
            .max(1e-300);
        let pct = |v: f64| format!("{:.0} %", 100.0 * v / total);
        csv += &format!(
            "{},{},{},{},{:.6},{:.6e},{:.4},{:.4},{:.6},{:.6},{:.6},{:.6},{:.6},{:.6}\n",
            t.ranks,
            t.members,
            t.state_dim,
            t.cycles,
            t.wall_s,
            per_cycle(t),
            speedup,
            eff,
            t.forecast_s,
            t.analysis_s,
            t.communication_s,
            t.output_s,
            t.truth_s,
            t.assessment_s
        );
        md += &format!(
            "| {} | {} | {:.3} | {:.2} | {:.0} % | {} | {} | {} | {} |\n",
            t.ranks,
            t.members,
            1e3 * per_cycle(t),
            speedup,
            100.0 * eff,
            pct(t.forecast_s),
            pct(t.analysis_s),
            pct(t.communication_s),
            pct(t.output_s)
        );
        points.push(crate::io::plot_scaling::ScalingPoint {
            ranks: t.ranks as f64,
            time_per_cycle_s: per_cycle(t),
            speedup,
            efficiency: eff,
            phases: Some(
                [
                    t.forecast_s,
                    t.analysis_s,
                    t.communication_s,
                    t.output_s,
                    t.truth_s,
                ]
                .map(|v| v / t.cycles.max(1) as f64),
            ),
        });
    }
    std::fs::write(out_dir.join("scaling.csv"), &csv)?;
    std::fs::write(out_dir.join("scaling.md"), &md)?;
    let png = out_dir.join("scaling.png");
    crate::io::plot_scaling::plot_scaling(&png, &points, mode == Mode::Strong)?;
    Ok(format!(
        "{md}\nwrote {}, {}, {}\n",
        out_dir.join("scaling.csv").display(),
        out_dir.join("scaling.md").display(),
        png.display()
    ))
}
