//! The `genda` command line (clap). Each subcommand is a thin layer over the library.
mod doctor;
mod machine;
mod scaling;

use crate::config::Config;
use crate::experiment::{run_truth, run_twin, RunOptions};
use crate::parallel::{Collectives, MpiComm};
use anyhow::{Context, Result};
use clap::{Parser, Subcommand};
use std::io::IsTerminal;
use std::path::PathBuf;

#[derive(Debug, Parser)]
#[command(
    name = "genda",
    version,
    about = "Ensemble and score-based data assimilation on HPC machines",
    long_about = "genda runs twin experiments (truth run, synthetic observations, ensemble forecasts \
and analyses) from TOML configs, on one process or under mpirun/srun, and writes CF NetCDF \
output.\n\nExamples:\n  genda run configs/l96_sakov2008.toml\n  mpirun -np 2 genda run configs/l63_sakov2012.toml\n  \
genda plot output/l96_sakov2008.nc\n  genda doctor\n\nLogging: RUST_LOG=debug genda run ... (default: info)."
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
    /// Override any config key by its dotted path, e.g. `--set filter.members=50
    /// --set model.dim=1000000` (repeatable; type-checked like the file, unknown keys refused;
    /// the effective config is what the output stores).
    #[arg(long = "set", value_name = "KEY=VALUE", global = true)]
    pub set: Vec<String>,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run a twin experiment: truth, observations, forecast and analysis every cycle; writes the
    /// NetCDF run file named in [output] and prints time-averaged RMSE and spread.
    Run(RunArgs),
    /// Generate the truth trajectory and observations only: a CF NetCDF file and an HDF5
    /// trajectory dataset (`trajectory`, (time, x)) for training score networks.
    Truth {
        config: PathBuf,
        /// NetCDF output (default: [output].path with `.truth.nc`); the HDF5 file sits beside it
        /// with `.h5`.
        #[arg(long, short)]
        output: Option<PathBuf>,
    },
    /// Train a score network by denoising score matching on an HDF5 trajectory (from
    /// `genda truth`); under mpirun the batch is split over ranks and gradients are averaged.
    Train(TrainArgs),
    /// Assimilate for an external model through NetCDF files ([coupling] in the config; the
    /// file contract is in docs/coupling.md): wait for each cycle's forecast and observations,
    /// write the analysis ensemble and a completion marker.
    Couple {
        config: PathBuf,
        /// First write genda's initial ensemble as cycle_000000/analysis.nc for the model.
        #[arg(long)]
        write_initial: bool,
    },
    /// Strong or weak scaling series: run the config under `mpirun -n R` for each R and write
    /// a CSV, a markdown table and a PNG (time per cycle, speed-up, efficiency, phase split).
    Scaling {
        config: PathBuf,
        /// Rank counts, e.g. 1,2,4.
        #[arg(long, value_delimiter = ',', default_value = "1,2")]
        ranks: Vec<usize>,
        /// strong: fixed problem; weak: members grow with the rank count.
        #[arg(long, value_enum, default_value_t = scaling::Mode::Strong)]
        mode: scaling::Mode,
        /// Override [experiment].cycles for every run.
        #[arg(long)]
        cycles: Option<usize>,
        /// Where the CSV, markdown and PNG go.
        #[arg(long, default_value = "output/scaling")]
        out_dir: PathBuf,
        /// Launcher command ("mpirun" or "srun"); extra launcher flags via GENDA_LAUNCHER_FLAGS.
        #[arg(long, default_value = "mpirun")]
        launcher: String,
        /// What the ranks split: `domains` (the state; every rank a domain) or `members`
        /// (member groups, one domain).
        #[arg(long, value_enum, default_value_t = scaling::Split::Domains)]
        split: scaling::Split,
    },
    /// Time the model step of a config on this launch's ranks (every rank a domain): per-step
    /// time, the share of communication (halos/transposes) and of the model's kernels (FFT).
    /// Run it under mpirun/srun for more ranks; `--timing-file` appends a CSV row.
    Bench(BenchArgs),
    /// Closed-form conditional-Gaussian posterior twin (spekf, cg_lorenz96): simulate the truth,
    /// observe u every step, score the CG filter and smoother of the hidden v (RMSE, spread,
    /// CRPS) against the hidden truth.
    Cg {
        config: PathBuf,
        /// Also write the truth at every step and the posterior means and variances of v
        /// (CF NetCDF).
        #[arg(short, long)]
        output: Option<PathBuf>,
    },
    /// SDA smoother over one assimilation window (filter.method = "sda"): simulate the truth
    /// trajectory, observe it, sample whole trajectories from the posterior with the window score
    /// network, and score them (log p(y|x), log p(x), W1 to a bootstrap-particle-filter
    /// reference, RMSE). Writes the truth, observations, samples and reference to NetCDF.
    Smooth {
        config: PathBuf,
        /// Experiment seed (overrides [experiment].seed).
        #[arg(long)]
        seed: Option<u64>,
        /// NetCDF output (default: [output].path).
        #[arg(long, short)]
        output: Option<PathBuf>,
        /// Print the scores only.
        #[arg(long)]
        no_output: bool,
    },
    /// One analysis scored against the true posterior ([posterior] in the config: methods,
    /// ensemble sizes, seeds): Wasserstein-2 (exact, by assignment) and energy distance of every
    /// method's analysis ensemble to a reference posterior sample (exact Kalman, importance
    /// sampling with its effective sample size printed, or MCMC), with the floor of an ideal
    /// N-member sample and the prior's values.
    Posterior(PosteriorArgs),
    /// Plot a run file (RMSE and spread over time, truth against the analysis; maps and spectra
    /// for 2-D models), or a sweep's results (results.csv/.nc or its directory): a score
    /// against an axis, one line per method with ± one std over seeds, and a heat map per
    /// method where two axes vary.
    Plot {
        /// NetCDF run file written by `genda run`, or a sweep's results.
        file: PathBuf,
        /// Sweeps: the axis on the horizontal (default: the first numeric axis that varies).
        #[arg(long)]
        x: Option<String>,
        /// Sweeps: the score to plot (a results.csv column, e.g. rmse_analysis, crps_analysis).
        #[arg(long, default_value = "rmse_analysis")]
        metric: String,
        /// PNG path (default: the run file with .png).
        #[arg(long, short)]
        output: Option<PathBuf>,
        /// Number of state variables to plot against the truth.
        #[arg(long, default_value_t = 3)]
        variables: usize,
    },
    /// Run a DAPPER-style experiment list: methods × axes (any config key) × seeds from a sweep
    /// file (see configs/sweeps/), all inside this process (rayon; under mpirun dealt out over
    /// the ranks). Finished experiments are appended to a results store in the output
    /// directory, so a rerun skips them; then results.csv, results.nc and results.md (mean ±
    /// std over seeds, diverged runs counted) are written. `--set` applies to every experiment.
    Sweep {
        /// Sweep file (TOML).
        file: PathBuf,
        /// Results directory (default: [sweep].out_dir, or output/sweeps/<name>).
        #[arg(long)]
        out_dir: Option<PathBuf>,
        /// Experiments at a time on each rank (default: RAYON_NUM_THREADS or the cores).
        #[arg(long, short)]
        jobs: Option<usize>,
        /// Stored results whose config hash differs from today's (the base config or a setting
        /// changed): refuse to go on, or run those experiments again.
        #[arg(long, value_enum, default_value_t = crate::sweep::OnChange::Refuse)]
        on_change: crate::sweep::OnChange,
        /// List the experiments (and which are done) without running anything.
        #[arg(long)]
        dry_run: bool,
        /// Only tabulate what the store holds now.
        #[arg(long)]
        report_only: bool,
        /// Write every experiment's effective config to this directory (one TOML each, named
        /// by its index and key) and run nothing: any row can be rerun with `genda run`.
        #[arg(long, value_name = "DIR")]
        export_configs: Option<PathBuf>,
        /// Hide the progress bar.
        #[arg(long)]
        quiet: bool,
    },
    /// Parse and validate a config, then print it with all defaults filled in.
    Check { config: PathBuf },
    /// Report the MPI, NetCDF/HDF5 and libtorch/CUDA that genda is linked against, and fixes.
    Doctor,
}

/// Arguments of `genda run`.
#[derive(Debug, clap::Args)]
pub struct RunArgs {
    /// TOML config (see configs/).
    pub config: PathBuf,
    /// Override [output].path.
    #[arg(long, short)]
    pub output: Option<PathBuf>,
    /// Override [experiment].cycles.
    #[arg(long)]
    pub cycles: Option<usize>,
    /// Override [experiment].burn_in.
    #[arg(long)]
    pub burn_in: Option<usize>,
    /// Override [experiment].seed.
    #[arg(long)]
    pub seed: Option<u64>,
    /// Do not write the NetCDF run file.
    #[arg(long)]
    pub no_output: bool,
    /// Hide the progress bar.
    #[arg(long)]
    pub quiet: bool,
    /// Continue from a checkpoint ([checkpoint] in the config; written every `every` cycles
    /// and on SIGTERM/SIGUSR1). The rank count may differ from the run that wrote it.
    #[arg(long)]
    pub restart: Option<PathBuf>,
    /// Override [checkpoint].every (cycles between checkpoints).
    #[arg(long)]
    pub checkpoint_every: Option<usize>,
    /// Override [filter].members.
    #[arg(long)]
    pub members: Option<usize>,
    /// Override [parallel].domains: spatial domains per member (ranks = domains × member
    /// groups). The numbers do not depend on it.
    #[arg(long)]
    pub domains: Option<usize>,
    /// Write the run's wall time and per-phase times (TOML) here (used by `genda scaling`).
    #[arg(long)]
    pub timing_file: Option<PathBuf>,
}

/// Arguments of `genda train`.
#[derive(Debug, clap::Args)]
pub struct TrainArgs {
    /// Training config (see configs/train_*.toml).
    pub config: PathBuf,
    /// Continue from a checkpoint written by an earlier `genda train` of the same config.
    #[arg(long)]
    pub resume: Option<PathBuf>,
    /// Override [training].steps.
    #[arg(long)]
    pub steps: Option<usize>,
    /// Hide the progress bar.
    #[arg(long)]
    pub quiet: bool,
}

/// Arguments of `genda posterior`.
#[derive(Debug, clap::Args)]
pub struct PosteriorArgs {
    pub config: PathBuf,
    /// Override [posterior].seeds, e.g. 1,2,3.
    #[arg(long, value_delimiter = ',')]
    pub seeds: Option<Vec<u64>>,
    /// Override [posterior].members, e.g. 10,25.
    #[arg(long, value_delimiter = ',')]
    pub members: Option<Vec<usize>>,
    /// Also write the table (markdown) here.
    #[arg(long, short)]
    pub output: Option<PathBuf>,
}

/// Arguments of `genda bench`.
#[derive(Debug, clap::Args)]
pub struct BenchArgs {
    /// TOML config (not needed with --machine).
    #[arg(required_unless_present = "machine")]
    pub config: Option<PathBuf>,
    /// Time the config's whole cycle instead of the model step: `--cycles` cycles of
    /// `genda run` without output, per cycle (forecast, analysis, the rest) on rank 0.
    #[arg(long)]
    pub cycle: bool,
    /// Cycles timed with --cycle.
    #[arg(long, default_value_t = 5)]
    pub cycles: usize,
    /// Measure this machine's limits instead: STREAM triad bandwidth (one thread, all threads)
    /// and dense f64 GEMM throughput (one thread).
    #[arg(long)]
    pub machine: bool,
    /// Timed steps (after one warm-up step).
    #[arg(long, default_value_t = 10)]
    pub steps: usize,
    /// States stepped together (ensemble members).
    #[arg(long, default_value_t = 1)]
    pub members: usize,
    /// Append `model,state_dim,ranks,members,steps,per_step_s,comm_s,<kernels>` here.
    #[arg(long)]
    pub csv: Option<PathBuf>,
    /// Override the grid side of a 2-D model (`model.n`).
    #[arg(long)]
    pub grid: Option<usize>,
}

fn load(config: &std::path::Path, sets: &[String]) -> Result<Config> {
    Ok(Config::from_file_with(config, sets)?)
}

#[allow(clippy::too_many_arguments)]
fn sweep_command(
    file: &std::path::Path,
    sets: &[String],
    out_dir: Option<PathBuf>,
    jobs: Option<usize>,
    on_change: crate::sweep::OnChange,
    dry_run: bool,
    report_only: bool,
    quiet: bool,
) -> Result<()> {
    use std::sync::atomic::AtomicBool;
    use std::sync::Arc;
    let comm = MpiComm::init()?;
    // The same file and overrides on every rank: the same error, said once.
    let quiet_off_root = |e: crate::GendaError| {
        if comm.is_root() {
            anyhow::Error::from(e)
        } else {
            anyhow::Error::from(crate::GendaError::Quiet)
        }
    };
    let mut sweep = crate::sweep::Sweep::from_file(file).map_err(quiet_off_root)?;
    sweep.add_overrides(sets).map_err(quiet_off_root)?;
    if let Some(d) = out_dir {
        sweep.out_dir = d;
    }
    let experiments = sweep.experiments().map_err(quiet_off_root)?;
    if dry_run || report_only {
        if comm.is_root() {
            let store = crate::sweep::read_store(&sweep.out_dir)?;
            if dry_run {
                for e in &experiments {
                    let state = match store.get(&e.key) {
                        Some(r) if r.config_hash == e.hash => "done",
                        Some(_) => "changed",
                        None => "to run",
                    };
                    println!("{state:<8} {}", e.key);
                }
                println!("{} experiments", experiments.len());
            } else {
                let p = crate::sweep::write_reports(&sweep, &store, &sweep.out_dir)?;
                print!("{}", std::fs::read_to_string(&p.markdown)?);
                println!(
                    "{} of {} experiments in the store\nwrote {}\nwrote {}\nwrote {}",
                    p.complete,
                    p.total,
                    p.csv.display(),
                    p.netcdf.display(),
                    p.markdown.display()
                );
            }
        }
        return Ok(());
    }
    // Ctrl-C / SIGTERM: start no new experiment, let the running ones finish and be saved;
    // a second signal ends the process at once (what is stored stays stored).
    let stop = Arc::new(AtomicBool::new(false));
    for sig in [signal_hook::consts::SIGINT, signal_hook::consts::SIGTERM] {
        signal_hook::flag::register_conditional_shutdown(sig, 130, stop.clone())
            .context("installing signal handler")?;
        signal_hook::flag::register(sig, stop.clone()).context("installing signal handler")?;
    }
    let jobs = jobs.unwrap_or_else(rayon::current_num_threads).max(1);
    // One thread per experiment: libtorch too (a learned method's network), and no per-run
    // chatter between the progress bar and the results.
    tch::set_num_threads(1);
    if std::env::var_os("RUST_LOG").is_none() {
        log::set_max_level(log::LevelFilter::Warn);
    }
    let opts = crate::sweep::SweepOptions {
        jobs,
        on_change,
        progress: !quiet && std::io::stderr().is_terminal(),
        stop,
        out_dir: None,
    };
    if comm.is_root() {
        eprintln!(
            "sweep {}: {} experiments on {} rank(s) x {jobs} job(s); results in {}",
            sweep.name,
            experiments.len(),
            comm.size(),
            sweep.out_dir.display()
        );
    }
    let t0 = std::time::Instant::now();
    let outcome = crate::sweep::run_sweep(&sweep, &comm, &opts)?;
    comm.barrier();
    for (key, err) in &outcome.failed {
        eprintln!("genda: experiment {key} failed: {err}");
    }
    if comm.is_root() {
        let store = crate::sweep::read_store(&outcome.out_dir)?;
        let p = crate::sweep::write_reports(&sweep, &store, &outcome.out_dir)?;
        print!("{}", std::fs::read_to_string(&p.markdown)?);
        println!(
            "{} experiments: {} run now ({} diverged), {} already in the store, {} failed; {:.1} s\nwrote {}\nwrote {}\nwrote {}",
            outcome.total,
            outcome.ran,
            outcome.diverged,
            outcome.skipped,
            outcome.failed_anywhere,
            t0.elapsed().as_secs_f64(),
            p.csv.display(),
            p.netcdf.display(),
            p.markdown.display()
        );
    }
    if outcome.stopped {
        anyhow::bail!("stopped by a signal: the finished experiments are saved; run the same command again to continue");
    }
    if outcome.failed_anywhere > 0 {
        anyhow::bail!(
            "{} experiment(s) failed (not stored; a rerun tries them again)",
            outcome.failed_anywhere
        );
    }
    Ok(())
}

/// Ranks of the MPI job this process was launched in (from the launcher's environment).
fn launched_ranks() -> usize {
    ["OMPI_COMM_WORLD_SIZE", "PMI_SIZE", "PMIX_SIZE"]
        .iter()
        .filter_map(|k| std::env::var(k).ok()?.parse().ok())
        .max()
        .unwrap_or(1)
}

/// Execute a parsed command line.
pub fn execute(cli: Cli) -> Result<()> {
    // Only `run`, `train`, `bench`, `sweep` and `couple` are MPI programs; the others would run
    // N copies racing on the same files.
    let serial = match &cli.command {
        Command::Run(_) | Command::Train(_) | Command::Bench(_) | Command::Couple { .. } => None,
        Command::Truth { .. } => Some("truth"),
        Command::Plot { .. } => Some("plot"),
        Command::Cg { .. } => Some("cg"),
        Command::Smooth { .. } => Some("smooth"),
        Command::Posterior(_) => Some("posterior"),
        Command::Check { .. } => Some("check"),
        Command::Sweep { .. } => None,
        Command::Doctor => None,
        Command::Scaling { .. } => Some("scaling"),
    };
    if let (Some(name), n) = (serial, launched_ranks()) {
        if n > 1 {
            anyhow::bail!("`genda {name}` runs on one process, but it was launched as {n} MPI ranks; start it without mpirun/srun");
        }
    }
    let sets = cli.set;
    if !sets.is_empty() && matches!(cli.command, Command::Plot { .. } | Command::Doctor) {
        anyhow::bail!("--set overrides config keys; this command reads no config");
    }
    match cli.command {
        Command::Sweep {
            file,
            out_dir,
            jobs,
            on_change,
            dry_run,
            report_only,
            export_configs,
            quiet,
        } => {
            if let Some(dir) = export_configs {
                let mut sweep = crate::sweep::Sweep::from_file(&file)?;
                sweep.add_overrides(&sets)?;
                for p in sweep.export_configs(&dir)? {
                    println!("{}", p.display());
                }
                return Ok(());
            }
            sweep_command(
                &file,
                &sets,
                out_dir,
                jobs,
                on_change,
                dry_run,
                report_only,
                quiet,
            )
        }
        Command::Run(a) => run_command(a, &sets),
        Command::Truth { config, output } => {
            let cfg = load(&config, &sets)?;
            let nc = output.unwrap_or_else(|| cfg.output.path.with_extension("truth.nc"));
            let h5 = nc.with_extension("h5");
            let (nc, h5) = run_truth(&cfg, &nc, &h5)?;
            if cfg.experiment.samples.is_none() {
                println!("wrote {}", nc.display());
            }
            println!("wrote {}", h5.display());
            Ok(())
        }
        Command::Train(a) => train_command(a, &sets),
        Command::Smooth {
            config,
            seed,
            output,
            no_output,
        } => {
            let mut cfg = load(&config, &sets)?;
            if let Some(s) = seed {
                cfg.experiment.seed = s;
            }
            let out = output.unwrap_or_else(|| cfg.output.path.clone());
            let r =
                crate::commands::smooth::run_smooth(&cfg, (!no_output).then_some(out.as_path()))?;
            print_smooth(&r);
            Ok(())
        }
        Command::Posterior(a) => posterior_command(a, &sets),
        Command::Cg { config, output } => {
            let cfg = load(&config, &sets)?;
            print!(
                "{}",
                crate::commands::cg::run_cg_twin(&cfg, output.as_deref())?
            );
            if let Some(p) = output {
                println!("wrote {}", p.display());
            }
            Ok(())
        }
        Command::Bench(a) => bench_command(a, &sets),
        Command::Scaling {
            config,
            ranks,
            mode,
            cycles,
            out_dir,
            launcher,
            split,
        } => {
            let report = scaling::run_series(
                &config, &sets, &ranks, mode, cycles, &out_dir, &launcher, split,
            )?;
            print!("{report}");
            Ok(())
        }
        Command::Couple {
            config,
            write_initial,
        } => {
            let cfg = load(&config, &sets)?;
            let comm = MpiComm::init()?;
            let cycles = crate::commands::couple::run_coupled(&cfg, write_initial, &comm)?;
            if comm.is_root() {
                println!("coupled {cycles} cycles");
            }
            Ok(())
        }
        Command::Plot {
            file,
            output,
            variables,
            x,
            metric,
        } => plot_command(&file, output.as_deref(), variables, x.as_deref(), &metric),
        Command::Check { config } => {
            let cfg = load(&config, &sets)?;
            println!(
                "# {} is valid; resolved settings:\n{}",
                config.display(),
                cfg.to_toml()
            );
            Ok(())
        }
        Command::Doctor => {
            let (text, problems) = doctor::doctor();
            print!("{text}");
            if problems > 0 {
                anyhow::bail!("genda doctor found {problems} problem(s)");
            }
            Ok(())
        }
    }
}

/// `genda run`.
fn run_command(args: RunArgs, sets: &[String]) -> Result<()> {
    let RunArgs {
        config,
        output,
        cycles,
        burn_in,
        seed,
        no_output,
        quiet,
        restart,
        checkpoint_every,
        members,
        domains,
        timing_file,
    } = args;
    let mut cfg = load(&config, sets)?;
    if let Some(o) = output {
        cfg.output.path = o;
    }
    if let Some(c) = cycles {
        cfg.experiment.cycles = c;
    }
    if let Some(b) = burn_in {
        cfg.experiment.burn_in = b;
    }
    if let Some(s) = seed {
        cfg.experiment.seed = s;
    }
    if let Some(k) = checkpoint_every {
        cfg.checkpoint.every = k;
    }
    if let Some(m) = members {
        cfg.filter.set_members(m);
    }
    if let Some(d) = domains {
        cfg.parallel.domains = d;
    }
    cfg.validate()
        .with_context(|| format!("config {} with command-line overrides", config.display()))?;
    let comm = MpiComm::init()?;
    // Layout errors are the same on every rank: say so once, exit non-zero everywhere.
    crate::experiment::check_layout(&cfg, comm.size()).map_err(|e| {
        if comm.is_root() {
            anyhow::Error::from(e)
        } else {
            anyhow::Error::from(crate::GendaError::Quiet)
        }
    })?;
    // Slurm sends SIGTERM (or the signal of --signal) before the wall time: checkpoint
    // after the current cycle and stop cleanly.
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    for sig in [signal_hook::consts::SIGTERM, signal_hook::consts::SIGUSR1] {
        signal_hook::flag::register(sig, stop.clone()).context("installing signal handler")?;
    }
    let opts = RunOptions {
        write_output: !no_output,
        progress: !quiet && std::io::stderr().is_terminal(),
        restart,
        stop: Some(stop),
    };
    comm.barrier();
    let t0 = std::time::Instant::now();
    let summary = run_twin(&cfg, &comm, &opts)?;
    comm.barrier();
    let wall = t0.elapsed().as_secs_f64();
    if let (true, Some(path)) = (comm.is_root(), timing_file) {
        scaling::write_timing(&path, &cfg, &summary, wall)?;
    }
    if comm.is_root() {
        print_run_summary(&cfg, &summary);
    }
    Ok(())
}

/// `genda train`.
fn train_command(args: TrainArgs, sets: &[String]) -> Result<()> {
    let TrainArgs {
        config,
        resume,
        steps,
        quiet,
    } = args;
    let mut cfg = crate::score::TrainConfig::from_file_with(&config, sets)?;
    if let Some(s) = steps {
        cfg.training.steps = s;
    }
    let comm = MpiComm::init()?;
    let progress = !quiet && std::io::stderr().is_terminal();
    let (loss, val) = crate::score::run_training(&cfg, &comm, resume.as_deref(), progress)?;
    if comm.is_root() {
        println!(
            "trained {} steps: final loss {loss:.5}, validation loss (EMA weights) {val:.5}",
            cfg.training.steps
        );
        println!(
            "wrote {}\nwrote {}",
            cfg.output.weights.display(),
            cfg.output.checkpoint.display()
        );
    }
    Ok(())
}

/// `genda posterior`.
fn posterior_command(args: PosteriorArgs, sets: &[String]) -> Result<()> {
    let PosteriorArgs {
        config,
        seeds,
        members,
        output,
    } = args;
    let mut cfg = load(&config, sets)?;
    if let Some(p) = cfg.posterior.as_mut() {
        if let Some(s) = seeds {
            p.seeds = s;
        }
        if let Some(m) = members {
            p.members = m;
        }
    }
    let r = crate::commands::posterior::run_posterior(&cfg)?;
    print!("{}", r.reference_lines());
    let table = r.table();
    print!("{table}");
    if let Some(path) = output {
        let pending = crate::io::PendingFile::new(&path)?;
        std::fs::write(
            pending.tmp_path(),
            format!("{}\n{table}", r.reference_lines()),
        )
        .with_context(|| format!("writing {}", path.display()))?;
        pending.commit()?;
        println!("wrote {}", path.display());
    }
    Ok(())
}

/// `genda bench`.
fn bench_command(args: BenchArgs, sets: &[String]) -> Result<()> {
    let BenchArgs {
        config,
        cycle,
        cycles,
        machine,
        steps,
        members,
        csv,
        grid,
    } = args;
    if machine {
        let m = machine::measure();
        println!(
            "STREAM triad: {:.1} GB/s on 1 thread, {:.1} GB/s on {} threads",
            m.triad_gbs_one, m.triad_gbs_all, m.threads
        );
        println!(
            "dense f64 GEMM ({n}x{n}x{n}, matrixmultiply): {:.1} GFLOP/s on 1 thread",
            m.gemm_gflops_one,
            n = m.gemm_n
        );
        return Ok(());
    }
    let config = config.expect("clap requires a config without --machine");
    let mut cfg = load(&config, sets)?;
    if let Some(g) = grid {
        cfg.model.set_grid_side(g)?;
    }
    if cycle {
        return bench_cycle(cfg, cycles);
    }
    let comm = MpiComm::init()?;
    // Every rank sees the same error; rank 0 reports it (after MPI finalises).
    let b = crate::experiment::bench_model(&cfg, &comm, members, steps).map_err(|e| {
        if comm.is_root() {
            anyhow::Error::from(e)
        } else {
            anyhow::Error::from(crate::GendaError::Quiet)
        }
    })?;
    if comm.is_root() {
        print_bench(&b, csv.as_deref())?;
    }
    Ok(())
}

/// `genda bench --cycle`: `cycles` cycles of the config's twin without output; the phase times
/// per cycle (rank 0's, as `genda run` reports them).
fn bench_cycle(mut cfg: Config, cycles: usize) -> Result<()> {
    cfg.experiment.cycles = cycles.max(1);
    cfg.experiment.burn_in = 0;
    cfg.checkpoint.every = 0;
    cfg.validate()?;
    let comm = MpiComm::init()?;
    let opts = RunOptions {
        write_output: false,
        progress: false,
        restart: None,
        stop: None,
    };
    let s = run_twin(&cfg, &comm, &opts)?;
    if comm.is_root() {
        let per = |t: f64| t / cfg.experiment.cycles as f64 * 1e6;
        let t = &s.times;
        println!(
            "{}: {} (N = {}), n = {}, {} rank(s) = {} group(s) x {} domain(s), {} cycles",
            cfg.experiment.name,
            cfg.filter.name(),
            cfg.filter.members(),
            cfg.model.dim(),
            s.ranks,
            s.groups,
            s.domains,
            cfg.experiment.cycles
        );
        println!(
            "per cycle [µs]: forecast {:.1}, analysis {:.1}, forecast + analysis {:.1}; truth {:.1}, communication {:.1}; max RSS per rank {:.0} MiB",
            per(t.forecast),
            per(t.analysis),
            per(t.forecast + t.analysis),
            per(t.truth),
            per(t.communication),
            s.max_rss_per_rank.iter().copied().max().unwrap_or(0) as f64 / (1 << 20) as f64
        );
    }
    Ok(())
}

/// What `genda run` prints on the root: the layout, RSS, the time-mean table, distributional
/// and hidden-variable scores, the phase times and the file written.
fn print_run_summary(cfg: &crate::config::Config, summary: &crate::experiment::RunSummary) {
    println!(
        "{}: {} with {} members on {} rank(s) = {} member group(s) x {} domain(s)",
        cfg.experiment.name,
        cfg.filter.name(),
        cfg.filter.members(),
        summary.ranks,
        summary.groups,
        summary.domains
    );
    let rss: Vec<String> = summary
        .max_rss_per_rank
        .iter()
        .map(|b| format!("{:.0}", *b as f64 / 1048576.0))
        .collect();
    println!("max RSS per rank [MiB]: {}", rss.join(" "));
    println!("{}", summary.averages.table());
    if let Some(d) = &summary.distributional {
        println!(
            "analysis CRPS {:.4}; rank histogram (members below the truth, 0..={}): {:?}",
            d.crps_analysis,
            d.rank_histogram.len() - 1,
            d.rank_histogram
        );
    }
    if let Some((r, states)) = summary.path_rmse {
        println!("path RMSE (ensemble mean, {states} model steps from the first scored analysis to the last): {r:.5}");
    }
    if let Some(h) = &summary.hidden {
        println!(
            "hidden variables (index {} on, {} cycles): rmse.f {:.4}, rmse.a {:.4}, spread.a {:.4}, crps.a {:.4}, |skewness error| {:.3}, |kurtosis error| {:.3}",
            h.observed_dim, h.cycles, h.rmse_forecast, h.rmse_analysis, h.spread_analysis, h.crps_analysis, h.skewness_error, h.kurtosis_error
        );
    }
    println!("{}", summary.times.table(cfg.experiment.cycles));
    if let Some(p) = &summary.output {
        println!("wrote {}", p.display());
    }
}

/// What `genda smooth` prints: the SDA and reference scores and the file written.
fn print_smooth(r: &crate::commands::smooth::SmoothReport) {
    println!(
        "sda smoother: {} states (network window {}), {} samples, {} observations",
        r.states, r.window, r.samples, r.observations
    );
    let row = |name: &str, s: &crate::commands::smooth::SampleScores| {
        println!(
            "{name:<10} log p(y|x) {:>10.3}  log p(x) {:>10}  rmse {:.4}  spread {:.4}",
            s.log_likelihood,
            s.log_prior.map_or("-".into(), |v| format!("{v:.3}")),
            s.rmse,
            s.spread
        )
    };
    row("sda", &r.sda);
    if let Some(rf) = &r.reference {
        row("reference", rf);
    }
    if let Some((a, b)) = r.w1 {
        println!("w1 sda-reference {a:.4}  reference-reference {b:.4}");
    }
    if let Some(p) = &r.output {
        println!("wrote {}", p.display());
    }
}

/// What `genda bench` prints on the root, and its CSV row (a header for a new file).
fn print_bench(b: &crate::experiment::ModelBench, csv: Option<&std::path::Path>) -> Result<()> {
    let pct = |t: f64| 100.0 * t / b.per_step_s;
    let side = (b.state_dim as f64).sqrt().round() as usize;
    let size = if side * side == b.state_dim {
        format!("{side}²")
    } else {
        b.state_dim.to_string()
    };
    println!(
        "{} {size}, {} member(s), {} rank(s): {:.3} ms per step ({} steps); communication {:.1} %",
        b.model,
        b.members,
        b.ranks,
        b.per_step_s * 1e3,
        b.steps,
        pct(b.comm_per_step_s)
    );
    for (k, t) in &b.kernels_per_step_s {
        println!("  {k}: {:.3} ms per step ({:.1} %)", t * 1e3, pct(*t));
    }
    if let Some(path) = csv {
        use std::io::Write;
        let new = !path.exists();
        let mut f = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)?;
        if new {
            let ks: String = b
                .kernels_per_step_s
                .iter()
                .map(|k| format!(",{}_s", k.0))
                .collect();
            writeln!(
                f,
                "model,state_dim,ranks,members,steps,per_step_s,comm_s{ks}"
            )?;
        }
        let ks: String = b
            .kernels_per_step_s
            .iter()
            .map(|k| format!(",{:.6e}", k.1))
            .collect();
        writeln!(
            f,
            "{},{},{},{},{},{:.6e},{:.6e}{ks}",
            b.model, b.state_dim, b.ranks, b.members, b.steps, b.per_step_s, b.comm_per_step_s
        )?;
    }
    Ok(())
}

/// `genda plot`: a cost-growth or scaling CSV, a sweep's results, or a run file (and its 2-D field maps).
fn plot_command(
    file: &std::path::Path,
    output: Option<&std::path::Path>,
    variables: usize,
    x: Option<&str>,
    metric: &str,
) -> Result<()> {
    if crate::io::plot_cost::is_cost_csv(file) {
        let pts = crate::io::plot_cost::read_cost_csv(file)?;
        let png = output.map_or_else(|| file.with_extension("png"), |p| p.to_path_buf());
        let p = crate::io::plot_cost::plot_cost(&png, &pts)?;
        println!("wrote {}", p.display());
        return Ok(());
    }
    if crate::io::plot_scaling::is_scaling_csv(file) {
        let (pts, strong) = crate::io::plot_scaling::read_scaling_csv(file)?;
        let png = output.map_or_else(|| file.with_extension("png"), |p| p.to_path_buf());
        let p = crate::io::plot_scaling::plot_scaling(&png, &pts, strong)?;
        println!("wrote {}", p.display());
        return Ok(());
    }
    if let Some(csv) = crate::io::plot_sweep::sweep_results(file) {
        for p in crate::io::plot_sweep::plot_sweep(&csv, output, x, metric)? {
            println!("wrote {}", p.display());
        }
        return Ok(());
    }
    let png = crate::io::plot::plot_run(file, output, variables)?;
    println!("wrote {}", png.display());
    // 2-D models: maps of truth / analysis / error and their spectra as well.
    let fields_png = output.map(|p| p.with_extension("fields.png"));
    if let Some(p) = crate::io::plot::plot_fields(file, fields_png.as_deref())? {
        println!("wrote {}", p.display());
    }
    Ok(())
}
