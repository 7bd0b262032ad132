//! Checkpoint/restart: a run killed with SIGKILL between checkpoints, or stopped by SIGTERM,
//! continues from its checkpoint — on the same or another rank count — to exactly the output of
//! the uninterrupted run. Checkpoints of another config, or corrupt ones, are refused.
mod common;
use common::*;
use std::io::{BufRead, BufReader, Read};
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

const VARS: [&str; 8] = [
    "truth",
    "observations",
    "forecast_mean",
    "analysis_mean",
    "forecast_spread",
    "analysis_spread",
    "rmse_forecast",
    "rmse_analysis",
];

fn assert_same_run(a: &Path, b: &Path) {
    for v in VARS {
        assert_eq!(
            nc_var(a, v),
            nc_var(b, v),
            "variable {v} differs between {} and {}",
            a.display(),
            b.display()
        );
    }
    assert_eq!(
        nc_attr_f64(a, "rmse_analysis_time_mean"),
        nc_attr_f64(b, "rmse_analysis_time_mean")
    );
}

fn setup(dir: &Path) -> (std::path::PathBuf, std::path::PathBuf) {
    let cfg = config_variant(
        dir,
        "configs/l96_sakov2008.toml",
        "c.toml",
        &[("cycles = 5000", "cycles = 12000")],
    );
    let full = dir.join("full.nc");
    let o = genda(&[
        "run",
        cfg.to_str().unwrap(),
        "-o",
        full.to_str().unwrap(),
        "--quiet",
    ]);
    assert!(o.status.success(), "{}", text(&o));
    (cfg, full)
}

fn wait_for(path: &Path, limit: Duration) {
    let t = Instant::now();
    while !path.exists() {
        assert!(t.elapsed() < limit, "{} never appeared", path.display());
        std::thread::sleep(Duration::from_millis(5));
    }
}

#[test]
fn sigkill_between_checkpoints_then_restart_on_two_ranks_gives_identical_output() {
    let dir = tempfile::tempdir().unwrap();
    let (cfg, full) = setup(dir.path());
    let out = dir.path().join("r.nc");
    let ckpt = dir.path().join("r.ckpt.h5");
    let mut child = Command::new(genda_bin())
        .args([
            "run",
            cfg.to_str().unwrap(),
            "-o",
            out.to_str().unwrap(),
            "--checkpoint-every",
            "1000",
            "--quiet",
        ])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    wait_for(&ckpt, Duration::from_secs(60));
    std::thread::sleep(Duration::from_millis(150));
    child.kill().unwrap(); // SIGKILL: no handler runs, nothing is cleaned up
    let status = child.wait().unwrap();
    assert!(
        !status.success(),
        "the run finished before it could be killed; make it longer"
    );
    assert!(
        !out.exists(),
        "a killed run must not leave a final output file"
    );
    let o = mpirun(
        2,
        &[
            "run",
            cfg.to_str().unwrap(),
            "-o",
            out.to_str().unwrap(),
            "--checkpoint-every",
            "1000",
            "--restart",
            ckpt.to_str().unwrap(),
            "--quiet",
        ],
    );
    assert!(o.status.success(), "{}", text(&o));
    assert_same_run(&full, &out);
    // The killed run's temporary file was cleaned up by the restart.
    assert!(
        !files_in(dir.path())
            .iter()
            .any(|f| f.starts_with(".genda-tmp")),
        "{:?}",
        files_in(dir.path())
    );
}

#[test]
fn sigterm_writes_a_checkpoint_and_exits_75_then_restart_completes() {
    let dir = tempfile::tempdir().unwrap();
    let (cfg, full) = setup(dir.path());
    let out = dir.path().join("s.nc");
    let ckpt = dir.path().join("s.ckpt.h5");
    let mut child = Command::new(genda_bin())
        .args(["run", cfg.to_str().unwrap(), "-o", out.to_str().unwrap()])
        .env("RUST_LOG", "info")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // Wait until the run is cycling (its start-up log line comes after the signal handlers are
    // installed), then send SIGTERM as Slurm does before the wall time.
    let mut err = BufReader::new(child.stderr.take().unwrap());
    let mut log = String::new();
    while !log.contains(" cycles") {
        let mut line = String::new();
        assert!(
            err.read_line(&mut line).unwrap() > 0,
            "run ended before starting: {log}"
        );
        log += &line;
    }
    std::thread::sleep(Duration::from_millis(200));
    let k = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(k.success());
    err.read_to_string(&mut log).unwrap();
    let status = child.wait().unwrap();
    let t = format!("status {status:?}\n{log}");
    let o = std::process::Output {
        status,
        stdout: Vec::new(),
        stderr: log.into_bytes(),
    };
    assert_eq!(o.status.code(), Some(75), "{t}");
    assert!(
        t.contains("stopped by signal") && t.contains("--restart"),
        "{t}"
    );
    assert!(ckpt.exists() && !out.exists(), "{t}");
    let o = genda(&[
        "run",
        cfg.to_str().unwrap(),
        "-o",
        out.to_str().unwrap(),
        "--restart",
        ckpt.to_str().unwrap(),
    ]);
    assert!(o.status.success(), "{}", text(&o));
    assert_same_run(&full, &out);
}

#[test]
fn wrong_or_corrupt_checkpoints_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let cfg = config_variant(
        d,
        "configs/l96_sakov2008.toml",
        "c.toml",
        &[
            ("cycles = 5000", "cycles = 400"),
            ("burn_in = 1000", "burn_in = 10"),
        ],
    );
    let out = d.join("a.nc");
    let o = genda(&[
        "run",
        cfg.to_str().unwrap(),
        "-o",
        out.to_str().unwrap(),
        "--checkpoint-every",
        "100",
    ]);
    assert!(o.status.success(), "{}", text(&o));
    let ckpt = d.join("a.ckpt.h5");
    assert!(ckpt.exists());
    // Another config (different inflation).
    let other = config_variant(
        d,
        "configs/l96_sakov2008.toml",
        "o.toml",
        &[
            ("cycles = 5000", "cycles = 400"),
            ("burn_in = 1000", "burn_in = 10"),
            ("inflation = 1.02", "inflation = 1.05"),
        ],
    );
    let o = genda(&[
        "run",
        other.to_str().unwrap(),
        "-o",
        d.join("b.nc").to_str().unwrap(),
        "--restart",
        ckpt.to_str().unwrap(),
    ]);
    assert!(
        !o.status.success()
            && text(&o).contains("another config")
            && !text(&o).contains("panicked"),
        "{}",
        text(&o)
    );
    assert!(!d.join("b.nc").exists());
    // Corrupt and missing checkpoints.
    std::fs::write(d.join("bad.h5"), b"\x89HDF\r\n garbage").unwrap();
    for (p, needle) in [
        (d.join("bad.h5"), "bad.h5"),
        (d.join("missing.h5"), "missing.h5"),
    ] {
        let o = genda(&[
            "run",
            cfg.to_str().unwrap(),
            "-o",
            d.join("c.nc").to_str().unwrap(),
            "--restart",
            p.to_str().unwrap(),
        ]);
        assert!(
            !o.status.success() && text(&o).contains(needle) && !text(&o).contains("panicked"),
            "{}",
            text(&o)
        );
    }
}

/// The state a restart needs beyond the ensemble: the particle filter's carried weights and the
/// accumulators of the distributional scores (CRPS, rank histogram). Restarting from the last
/// checkpoint of a run (cycle 900 of 1001) must give every variable and time-mean attribute of
/// the uninterrupted run, bit for bit (the path RMSE's sums too) — for DAPPER's PartFilt (weights rarely equal at a
/// checkpoint: it resamples only when N_eff <= 0.3 N) and for the L96 ETKF of issue 20's report.
#[test]
fn restart_keeps_particle_weights_and_distributional_scores() {
    for (base, edits) in [
        ("configs/dapper/l63_sakov2012_pf.toml", vec![]),
        (
            "configs/l96_sakov2008.toml",
            vec![
                ("cycles = 5000", "cycles = 1001"),
                ("burn_in = 1000", "burn_in = 100"),
            ],
        ),
    ] {
        let dir = tempfile::tempdir().unwrap();
        let mut edits = edits;
        edits.push((
            "[output]",
            "[output]\ndistributional_scores = true\npath_rmse = true",
        ));
        let cfg = config_variant(dir.path(), base, "c.toml", &edits);
        let cfg = cfg.to_str().unwrap();
        let full = dir.path().join("full.nc");
        let o = genda(&["run", cfg, "-o", full.to_str().unwrap(), "--quiet"]);
        assert!(o.status.success(), "{}", text(&o));
        let ck_run = dir.path().join("ck.nc");
        let o = genda(&[
            "run",
            cfg,
            "-o",
            ck_run.to_str().unwrap(),
            "--checkpoint-every",
            "300",
            "--quiet",
        ]);
        assert!(o.status.success(), "{}", text(&o));
        let ckpt = dir.path().join("ck.ckpt.h5");
        assert!(ckpt.exists());
        let restarted = dir.path().join("r.nc");
        let o = genda(&[
            "run",
            cfg,
            "-o",
            restarted.to_str().unwrap(),
            "--restart",
            ckpt.to_str().unwrap(),
            "--quiet",
        ]);
        assert!(o.status.success(), "{}", text(&o));
        assert_same_run(&full, &restarted);
        for v in ["crps_analysis", "rank_histogram"] {
            assert_eq!(nc_var(&full, v), nc_var(&restarted, v), "{base}: {v}");
        }
        for a in [
            "crps_analysis_time_mean",
            "spread_analysis_time_mean",
            "rmse_forecast_time_mean",
            "rmse_path",
        ] {
            assert_eq!(
                nc_attr_f64(&full, a),
                nc_attr_f64(&restarted, a),
                "{base}: {a}"
            );
        }
    }
}

/// One method's restart case: a small variant of a config in `configs/`.
struct Case {
    name: &'static str,
    config: std::path::PathBuf,
    sets: Vec<String>,
    /// Checkpoint every this many cycles; the run is killed at cycle `kill_at`.
    every: usize,
    kill_at: usize,
    /// Restart on this many ranks (with `--domains` when given).
    ranks: usize,
    domains: Option<usize>,
}

fn sets(v: &[&str]) -> Vec<String> {
    v.iter().map(|s| s.to_string()).collect()
}

/// `genda run` with the case's overrides, output `out`, extra arguments and environment.
fn run_case(
    c: &Case,
    out: &Path,
    extra: &[&str],
    env: Option<(&str, &str)>,
    ranks: usize,
) -> std::process::Output {
    let mut args: Vec<String> = vec![
        "run".into(),
        c.config.display().to_string(),
        "-o".into(),
        out.display().to_string(),
        "--quiet".into(),
    ];
    for s in &c.sets {
        args.push("--set".into());
        args.push(s.clone());
    }
    args.extend(extra.iter().map(|s| s.to_string()));
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    if ranks > 1 {
        return mpirun(ranks, &args);
    }
    let mut cmd = Command::new(genda_bin());
    cmd.args(&args)
        .env("RUST_LOG", "warn")
        .env("OMP_NUM_THREADS", "1");
    if let Some((k, v)) = env {
        cmd.env(k, v);
    }
    spawn_locked(&mut cmd).wait_with_output().unwrap()
}

/// Issue 20: every method that has a config in `configs/` (small variants), killed by SIGKILL
/// between two checkpoints and restarted from the last one — on another rank count where the
/// method allows it — ends with every variable and every attribute of the uninterrupted run,
/// bit for bit: the ensemble (saved), CRPS and rank histogram, hidden-variable scores, and
/// the filter's own state (networks and their optimiser moments, Ω's per-member moments, SDA's
/// window of observations, particle weights).
#[test]
fn every_method_restarts_after_sigkill_bit_for_bit() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let cfg = |base: &str, edits: &[(&str, &str)]| -> std::path::PathBuf {
        let name = format!("{}.toml", base.replace(['/', '.'], "_"));
        config_variant(d, base, &name, edits)
    };
    let scores = [
        "output.distributional_scores=true",
        "output.save_ensemble=true",
    ];
    let with = |v: &[&str]| -> Vec<String> {
        let mut s = sets(&scores);
        s.extend(sets(v));
        s
    };
    let masf_small = [
        "experiment.cycles=12",
        "experiment.burn_in=2",
        "filter.hidden=32",
        "filter.layers=2",
        "filter.steps=20",
    ];
    // A small interpolant prior for DAISI and a window network for SDA.
    let l63 = cfg(
        "configs/l63_sakov2012.toml",
        &[("cycles = 4000", "cycles = 300")],
    );
    let o = genda(&[
        "truth",
        l63.to_str().unwrap(),
        "-o",
        d.join("l63.nc").to_str().unwrap(),
    ]);
    assert!(o.status.success(), "{}", text(&o));
    let interp = d.join("interp.h5");
    // (every occurrence: the header comment names the paths too)
    let mut text_cfg =
        std::fs::read_to_string(repo_file("configs/train_l63_interpolant.toml")).unwrap();
    for (from, to) in [
        (
            "output/l63_sakov2012.truth.h5",
            d.join("l63.h5").display().to_string(),
        ),
        ("hidden = 128", "hidden = 16".into()),
        ("steps = 3000", "steps = 50".into()),
        ("validate_every = 250", "validate_every = 25".into()),
        ("output/l63_interpolant.h5", interp.display().to_string()),
        (
            "output/l63_interpolant.ckpt.h5",
            d.join("interp.ckpt.h5").display().to_string(),
        ),
    ] {
        text_cfg = text_cfg.replace(from, &to);
    }
    let train = d.join("train_interp.toml");
    std::fs::write(&train, text_cfg).unwrap();
    let o = genda(&["train", train.to_str().unwrap(), "--quiet"]);
    assert!(o.status.success(), "{}", text(&o));
    let window = train_sda_window(d, 2, 2000, 50);
    let cases = vec![
        Case {
            name: "etkf",
            config: cfg("configs/l96_sakov2008.toml", &[]),
            sets: sets(&[
                "experiment.cycles=30",
                "experiment.burn_in=5",
                "output.distributional_scores=true",
            ]),
            every: 10,
            kill_at: 15,
            ranks: 2,
            domains: Some(2),
        },
        Case {
            name: "enkf",
            config: cfg("configs/l63_sakov2012_enkf.toml", &[]),
            sets: with(&["experiment.cycles=30", "experiment.burn_in=5"]),
            // Checkpoints at 4, 8 (each snapshot started), 12 … 24 (updated in place).
            every: 4,
            kill_at: 25,
            ranks: 2,
            domains: None,
        },
        Case {
            name: "letkf",
            config: cfg("configs/l96_sakov2008_letkf.toml", &[]),
            sets: sets(&[
                "experiment.cycles=30",
                "experiment.burn_in=5",
                "output.distributional_scores=true",
            ]),
            every: 10,
            kill_at: 15,
            ranks: 2,
            domains: Some(2),
        },
        Case {
            name: "ensf",
            config: cfg("configs/l96_ensf.toml", &[]),
            sets: with(&[
                "experiment.cycles=20",
                "experiment.burn_in=2",
                "filter.steps=20",
            ]),
            every: 8,
            kill_at: 12,
            ranks: 2,
            domains: None,
        },
        Case {
            name: "pf",
            config: cfg("configs/dapper/l63_sakov2012_pf.toml", &[]),
            sets: with(&["experiment.cycles=60", "experiment.burn_in=5"]),
            every: 20,
            kill_at: 30,
            ranks: 2,
            domains: None,
        },
        Case {
            name: "kde_diffusion",
            config: cfg("configs/l63_arctan_kde.toml", &[]),
            sets: with(&[
                "experiment.cycles=20",
                "experiment.burn_in=2",
                "filter.steps=20",
            ]),
            every: 8,
            kill_at: 12,
            ranks: 2,
            domains: None,
        },
        Case {
            name: "omega",
            config: cfg("configs/omega_spekf.toml", &[]),
            sets: with(&[
                "experiment.cycles=16",
                "experiment.burn_in=2",
                "experiment.spinup_steps=200",
                "filter.members=16",
                "filter.residual_steps=5",
            ]),
            every: 6,
            kill_at: 10,
            ranks: 2,
            domains: None,
        },
        Case {
            name: "masf (genda bridge)",
            config: cfg("configs/masf_l63_gap100.toml", &[]),
            sets: with(
                &[
                    &masf_small[..],
                    &["filter.pretrain_steps=200", "filter.train_steps=20"],
                ]
                .concat(),
            ),
            every: 4,
            kill_at: 7,
            ranks: 2,
            domains: None,
        },
        Case {
            name: "sf (genda vp)",
            config: cfg(
                "configs/masf_l63_gap100.toml",
                &[
                    ("method = \"masf\"", "method = \"sf\""),
                    ("sampler = \"bridge\"", "process = \"vp\""),
                ],
            ),
            sets: with(
                &[
                    &masf_small[..],
                    &["filter.pretrain_steps=200", "filter.train_steps=20"],
                ]
                .concat(),
            ),
            every: 4,
            kill_at: 7,
            ranks: 1,
            domains: None,
        },
        Case {
            name: "masf (reference)",
            config: cfg(
                "configs/masf_l63_gap100_reference.toml",
                &[(
                    "pretrain_data = \"output/masf_l63_climatology.truth.h5\"",
                    "",
                )],
            ),
            sets: with(
                &[
                    &masf_small[..],
                    &["filter.pretrain_epochs=20", "filter.train_epochs=5"],
                ]
                .concat(),
            ),
            every: 4,
            kill_at: 7,
            ranks: 2,
            domains: None,
        },
        Case {
            name: "sf (reference)",
            config: cfg(
                "configs/masf_l63_gap100_reference.toml",
                &[
                    (
                        "pretrain_data = \"output/masf_l63_climatology.truth.h5\"",
                        "",
                    ),
                    ("method = \"masf\"", "method = \"sf\""),
                ],
            ),
            sets: with(
                &[
                    &masf_small[..],
                    &["filter.pretrain_epochs=20", "filter.train_epochs=5"],
                ]
                .concat(),
            ),
            every: 4,
            kill_at: 7,
            ranks: 1,
            domains: None,
        },
        Case {
            name: "daisi",
            config: cfg(
                "configs/daisi_l63.toml",
                &[("output/l63_interpolant.h5", interp.to_str().unwrap())],
            ),
            sets: with(&[
                "experiment.cycles=12",
                "experiment.burn_in=2",
                "filter.steps=10",
            ]),
            every: 4,
            kill_at: 7,
            ranks: 2,
            domains: None,
        },
        Case {
            name: "sda",
            config: cfg(
                "configs/sda_l63_smooth_hi.toml",
                &[
                    (
                        "weights = \"output/sda_l63_k2.h5\"",
                        &format!("weights = {window:?}"),
                    ),
                    ("cycles = 65", "cycles = 12\nburn_in = 2"),
                    ("members = 256", "members = 8"),
                    ("reference_particles = 16384", "reference_particles = 0"),
                    ("gamma = 3e-2", "gamma = 0.1\nwindow_cycles = 6"),
                    (
                        "operator = \"sparse\"   # x only",
                        "operator = \"identity\"",
                    ),
                    ("stride = 3", ""),
                ],
            ),
            sets: with(&["filter.steps=16"]),
            every: 4,
            kill_at: 10,
            ranks: 2,
            domains: None,
        },
        Case {
            name: "none",
            config: cfg(
                "configs/l63_sakov2012_enkf.toml",
                &[
                    ("method = \"enkf\"", "method = \"none\""),
                    ("inflation = 1.04", ""),
                ],
            ),
            sets: with(&["experiment.cycles=30", "experiment.burn_in=5"]),
            every: 10,
            kill_at: 15,
            ranks: 2,
            domains: None,
        },
    ];
    for c in &cases {
        let tag = c.name.replace([' ', '(', ')'], "_");
        let (out, full) = (
            d.join(format!("{tag}.nc")),
            d.join(format!("{tag}.full.nc")),
        );
        // Uninterrupted, with the same checkpoints (the output path and the checkpoint cadence
        // are the same in every run: they are part of the stored config).
        let every = c.every.to_string();
        let o = run_case(c, &out, &["--checkpoint-every", &every], None, 1);
        assert!(o.status.success(), "{}: {}", c.name, text(&o));
        std::fs::rename(&out, &full).unwrap();
        // Killed between checkpoints.
        let fault = format!("0:{}:kill", c.kill_at);
        let o = run_case(
            c,
            &out,
            &["--checkpoint-every", &every],
            Some(("GENDA_INJECT_FAULT", &fault)),
            1,
        );
        assert!(
            !o.status.success(),
            "{}: the run was not killed: {}",
            c.name,
            text(&o)
        );
        assert!(!out.exists(), "{}: a killed run left its output", c.name);
        let ckpt = d.join(format!("{tag}.ckpt.h5"));
        assert!(
            ckpt.exists(),
            "{}: no checkpoint {}",
            c.name,
            ckpt.display()
        );
        // Restarted, on another layout where the method allows it.
        let ck = ckpt.display().to_string();
        let mut extra: Vec<&str> = vec!["--checkpoint-every", &every, "--restart", &ck];
        let dom = c.domains.map(|k| k.to_string());
        if let Some(k) = &dom {
            extra.extend(["--domains", k]);
        }
        let o = run_case(c, &out, &extra, None, c.ranks);
        assert!(o.status.success(), "{}: restart: {}", c.name, text(&o));
        assert_same_contents(&full, &out, c.name);
        eprintln!(
            "{}: restart on {} rank(s) = uninterrupted run, bit for bit",
            c.name, c.ranks
        );
    }
}
