//! `genda couple` driven by an independent external model (tests/coupling_model.py: numpy RK4
//! and netCDF4 I/O), checked against `genda run` on the same setup; bad files from the model are
//! clear errors that leave the model's files untouched and write nothing for that cycle.
mod common;
use common::*;
use std::path::Path;
use std::process::{Command, Stdio};

const CYCLES: usize = 8;

fn coupling_config(dir: &Path, method_edits: &[(&str, &str)]) -> std::path::PathBuf {
    let mut edits = vec![
        ("cycles = 5000", "cycles = 8"),
        ("burn_in = 1000", "burn_in = 0"),
    ];
    edits.extend_from_slice(method_edits);
    let cfg = config_variant(dir, "configs/l96_sakov2008.toml", "c.toml", &edits);
    let mut s = std::fs::read_to_string(&cfg).unwrap();
    s += &format!(
        "\n[coupling]\ndir = \"{}\"\ntimeout_s = 60\npoll_ms = 5\n",
        dir.join("exchange").display()
    );
    std::fs::write(&cfg, s).unwrap();
    cfg
}

fn python() -> String {
    let py = std::env::var("GENDA_PYTHON").unwrap_or_else(|_| "python3".into());
    let ok = {
        let _g = nc_lock();
        Command::new(&py)
            .args(["-c", "import netCDF4, numpy"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
    }
    .and_then(|mut c| c.wait())
    .map(|s| s.success())
    .unwrap_or(false);
    assert!(ok, "{py} cannot import netCDF4/numpy: run `make test` (scripts/setup.sh installs them into the venv)");
    py
}

fn coupled_matches_run(method_edits: &[(&str, &str)]) {
    coupled_matches_run_on(method_edits, 1);
}

/// `genda couple` on `ranks` ranks (members split: each reads and writes only its rows).
fn coupled_matches_run_on(method_edits: &[(&str, &str)], ranks: usize) {
    coupled_matches_run_layout(method_edits, ranks, 1);
}

/// `genda couple` on `ranks` ranks split into member groups × `domains` state domains.
fn coupled_matches_run_layout(method_edits: &[(&str, &str)], ranks: usize, domains: usize) {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let cfg = coupling_config(d, method_edits);
    // Reference: genda run, and the observations the model will hand over.
    let run = d.join("run.nc");
    assert!(
        genda(&["run", cfg.to_str().unwrap(), "-o", run.to_str().unwrap()])
            .status
            .success()
    );
    let truth = d.join("truth.nc");
    assert!(genda(&[
        "truth",
        cfg.to_str().unwrap(),
        "-o",
        truth.to_str().unwrap()
    ])
    .status
    .success());
    let exchange = d.join("exchange");
    let py = python();
    let _g = nc_lock();
    let mut model = Command::new(py)
        .args([
            repo_file("tests/coupling_model.py").to_str().unwrap(),
            exchange.to_str().unwrap(),
            &CYCLES.to_string(),
            truth.to_str().unwrap(),
            "8.0",
            "0.05",
            "1",
        ])
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    drop(_g);
    let mut args = vec!["couple", cfg.to_str().unwrap(), "--write-initial"];
    let set = format!("parallel.domains={domains}");
    if domains > 1 {
        args.extend(["--set", set.as_str()]);
    }
    let o = if ranks == 1 {
        genda(&args)
    } else {
        mpirun(ranks, &args)
    };
    let model_status = model.wait().unwrap();
    assert!(o.status.success(), "{}", text(&o));
    assert!(model_status.success());
    let want = nc_var(&run, "analysis_mean");
    let n = 40;
    let mut worst = 0f64;
    for k in 1..=CYCLES {
        let _g = nc_lock();
        let f = netcdf::open(exchange.join(format!("cycle_{k:06}/analysis.nc"))).unwrap();
        let a: Vec<f64> = f
            .variable("analysis")
            .unwrap()
            .get_values::<f64, _>(..)
            .unwrap();
        let members = a.len() / n;
        for i in 0..n {
            let mean = (0..members).map(|m| a[m * n + i]).sum::<f64>() / members as f64;
            worst = worst.max((mean - want[(k - 1) * n + i]).abs());
        }
    }
    // numpy's RK4 rounds differently from genda's fused kernel (~1e-15 per step); chaos grows that
    // over 8 cycles, far below any physical difference.
    eprintln!("max |coupled − genda run| analysis mean over {CYCLES} cycles: {worst:e}");
    assert!(worst < 1e-9, "{worst}");
}

#[test]
fn coupled_etkf_matches_genda_run() {
    coupled_matches_run(&[]);
}

/// Two and three ranks, each reading only its members' rows of the model's one file per cycle
/// and writing its rows of `analysis.nc` collectively.
#[test]
fn coupled_on_two_and_three_ranks_matches_genda_run() {
    coupled_matches_run_on(&[], 2);
    coupled_matches_run_on(
        &[
            ("method = \"etkf\"", "method = \"enkf\""),
            ("rotation = false\n", ""),
        ],
        3,
    );
}

/// The state split too: 2 domains (ETKF, global, with the layout-independent tile sums) on 2
/// ranks, and 2 groups × 2 domains on 4 ranks for the LETKF (with its halo): each rank reads and
/// writes only its members on its columns, and the analyses are `genda run`'s.
#[test]
fn coupled_on_domains_matches_genda_run() {
    coupled_matches_run_layout(&[], 2, 2);
    coupled_matches_run_layout(
        &[
            (
                "method = \"etkf\"",
                "method = \"letkf\"\nlocalization_radius = 4.0",
            ),
            ("rotation = false\n", ""),
        ],
        4,
        2,
    );
}

#[test]
fn coupled_enkf_matches_genda_run() {
    coupled_matches_run(&[
        ("method = \"etkf\"", "method = \"enkf\""),
        ("rotation = false\n", ""),
    ]);
}

/// Stage cycle 1's files by hand, run `genda couple`, expect a clear error naming `needle`,
/// no analysis written, and the model's files unchanged.
fn bad_cycle(setup: impl Fn(&Path), needle: &str) {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let cfg = coupling_config(d, &[]);
    let c1 = d.join("exchange/cycle_000001");
    std::fs::create_dir_all(&c1).unwrap();
    setup(&c1);
    let before: Vec<(String, Vec<u8>)> = files_in(&c1)
        .into_iter()
        .map(|f| (f.clone(), std::fs::read(c1.join(&f)).unwrap()))
        .collect();
    let o = genda(&["couple", cfg.to_str().unwrap()]);
    let t = text(&o);
    assert!(
        !o.status.success() && t.contains(needle) && !t.contains("panicked"),
        "expected `{needle}`: {t}"
    );
    let after: Vec<(String, Vec<u8>)> = files_in(&c1)
        .into_iter()
        .map(|f| (f.clone(), std::fs::read(c1.join(&f)).unwrap()))
        .collect();
    assert_eq!(
        before, after,
        "genda changed or added files in the cycle directory"
    );
}

fn write_nc(path: &Path, var: &str, dims: &[(&str, usize)], value: f64) {
    let _g = nc_lock();
    let mut f = netcdf::create(path).unwrap();
    for (n, l) in dims {
        f.add_dimension(n, *l).unwrap();
    }
    let names: Vec<&str> = dims.iter().map(|d| d.0).collect();
    let mut v = f.add_variable::<f64>(var, &names).unwrap();
    let len: usize = dims.iter().map(|d| d.1).product();
    let data: Vec<f64> = (0..len).map(|i| value + (i % 7) as f64 * 0.1).collect();
    v.put_values(&data, ..).unwrap();
}

fn good_obs(c: &Path) {
    write_nc(&c.join("obs.nc"), "observations", &[("obs", 40)], 1.0);
}

fn marker(c: &Path, k: usize) {
    std::fs::write(c.join("forecast.ready"), format!("{k}\n")).unwrap();
}

#[test]
fn bad_model_files_are_clear_errors() {
    bad_cycle(
        |c| {
            write_nc(
                &c.join("forecast.nc"),
                "forecast",
                &[("member", 20), ("x", 41)],
                1.0,
            );
            good_obs(c);
            marker(c, 1)
        },
        "expected [(\"member\", 20), (\"x\", 40)]",
    );
    bad_cycle(
        |c| {
            write_nc(
                &c.join("forecast.nc"),
                "forecast",
                &[("member", 19), ("x", 40)],
                1.0,
            );
            good_obs(c);
            marker(c, 1)
        },
        "forecast.nc",
    );
    bad_cycle(
        |c| {
            write_nc(
                &c.join("forecast.nc"),
                "state",
                &[("member", 20), ("x", 40)],
                1.0,
            );
            good_obs(c);
            marker(c, 1)
        },
        "missing variable `forecast`",
    );
    bad_cycle(
        |c| {
            write_nc(
                &c.join("forecast.nc"),
                "forecast",
                &[("member", 20), ("x", 40)],
                f64::NAN,
            );
            good_obs(c);
            marker(c, 1)
        },
        "non-finite",
    );
    bad_cycle(
        |c| {
            write_nc(
                &c.join("forecast.nc"),
                "forecast",
                &[("member", 20), ("x", 40)],
                1.0,
            );
            write_nc(&c.join("obs.nc"), "observations", &[("obs", 39)], 1.0);
            marker(c, 1)
        },
        "obs.nc",
    );
    bad_cycle(
        |c| {
            write_nc(
                &c.join("forecast.nc"),
                "forecast",
                &[("member", 20), ("x", 40)],
                1.0,
            );
            good_obs(c);
            marker(c, 7)
        },
        "stale marker",
    );
    bad_cycle(
        |c| {
            write_nc(
                &c.join("forecast.nc"),
                "forecast",
                &[("member", 20), ("x", 40)],
                1.0,
            );
            good_obs(c);
            marker(c, 1);
            std::fs::write(c.join("analysis.ready"), "1\n").unwrap()
        },
        "stale marker",
    );
    bad_cycle(
        |c| {
            std::fs::write(c.join("forecast.nc"), b"garbage").unwrap();
            good_obs(c);
            marker(c, 1)
        },
        "forecast.nc",
    );
}

#[test]
fn waiting_for_a_model_that_never_answers_times_out() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = coupling_config(dir.path(), &[]);
    let s = std::fs::read_to_string(&cfg)
        .unwrap()
        .replace("timeout_s = 60", "timeout_s = 0.3");
    std::fs::write(&cfg, s).unwrap();
    let o = genda(&["couple", cfg.to_str().unwrap()]);
    let t = text(&o);
    assert!(
        !o.status.success() && t.contains("timed out") && t.contains("forecast.ready"),
        "{t}"
    );
}
