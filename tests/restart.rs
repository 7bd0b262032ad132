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
/// the uninterrupted run, bit for bit — for DAPPER's PartFilt (weights rarely equal at a
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
        edits.push(("[output]", "[output]\ndistributional_scores = true"));
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
        ] {
            assert_eq!(
                nc_attr_f64(&full, a),
                nc_attr_f64(&restarted, a),
                "{base}: {a}"
            );
        }
    }
}
