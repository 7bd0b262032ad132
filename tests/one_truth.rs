//! One truth serves every command (issue 20, item 1): the same config and seed give the same
//! true states and the same observations in `genda truth`, `genda run` (on 1 or 2 ranks),
//! `genda smooth` and `genda cg`, and `genda couple` starts from `genda run`'s initial ensemble.
//! Compared bit for bit at the times the commands share.
mod common;
use common::*;
use std::path::Path;

fn run_ok(args: &[&str]) {
    let o = genda(args);
    assert!(o.status.success(), "genda {args:?}: {}", text(&o));
}

/// Rows `rows` of a (time, n) variable.
fn rows(v: &[f64], n: usize, rows: std::ops::Range<usize>) -> &[f64] {
    &v[rows.start * n..rows.end * n]
}

fn assert_bits(a: &[f64], b: &[f64], what: &str) {
    assert_eq!(a.len(), b.len(), "{what}: lengths differ");
    let differ = a
        .iter()
        .zip(b)
        .filter(|(x, y)| x.to_bits() != y.to_bits())
        .count();
    assert_eq!(differ, 0, "{what}: {differ} of {} values differ", a.len());
}

/// Noisy Lorenz-63 (model noise on every step), the SDA setup: truth, run (SDA as a filter, 1
/// and 2 ranks), smooth.
#[test]
fn truth_run_and_smooth_see_the_same_truth_and_observations() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let window = train_sda_window(d, 2, 2000, 50);
    let cfg = config_variant(
        d,
        "configs/sda_l63_smooth_hi.toml",
        "l63.toml",
        &[
            (
                "weights = \"output/sda_l63_k2.h5\"",
                &format!("weights = {window:?}"),
            ),
            ("cycles = 65", "cycles = 12\nburn_in = 2"),
            ("members = 256", "members = 8"),
            ("steps = 256", "steps = 16"),
            ("reference_particles = 16384", "reference_particles = 0"),
            ("gamma = 3e-2", "gamma = 0.1\nwindow_cycles = 6"),
            (
                "operator = \"sparse\"   # x only",
                "operator = \"identity\"",
            ),
            ("stride = 3", ""),
        ],
    );
    let c = cfg.to_str().unwrap();
    let p = |name: &str| d.join(name).to_str().unwrap().to_string();
    run_ok(&["truth", c, "-o", &p("truth.nc")]);
    run_ok(&["run", c, "-o", &p("run1.nc"), "--quiet"]);
    let o = mpirun(2, &["run", c, "-o", &p("run2.nc"), "--quiet"]);
    assert!(o.status.success(), "{}", text(&o));
    run_ok(&["smooth", c, "-o", &p("smooth.nc")]);

    let n = 3;
    let truth = nc_var(&d.join("truth.nc"), "truth");
    let obs = nc_var(&d.join("truth.nc"), "observations");
    assert_eq!(truth.len(), 12 * n);
    assert!(truth.iter().all(|v| v.is_finite()));
    for run in ["run1.nc", "run2.nc"] {
        assert_bits(
            &nc_var(&d.join(run), "truth"),
            &truth,
            &format!("{run} truth"),
        );
        assert_bits(
            &nc_var(&d.join(run), "observations"),
            &obs,
            &format!("{run} observations"),
        );
    }
    // genda smooth: states 0..12 of the window (obs_every = 1), state 0 the end of the spin-up,
    // so its state s ≥ 1 is cycle s; observation time s ≥ 1 is cycle s.
    let st = nc_var(&d.join("smooth.nc"), "truth");
    assert_eq!(st.len(), 12 * n);
    assert_bits(rows(&st, n, 1..12), rows(&truth, n, 0..11), "smooth truth");
    let (sy, at) = (
        nc_var(&d.join("smooth.nc"), "obs"),
        nc_var(&d.join("smooth.nc"), "obs_time_index"),
    );
    let later: Vec<f64> = sy
        .iter()
        .zip(&at)
        .filter(|(_, &t)| t >= 1.0)
        .map(|(y, _)| *y)
        .collect();
    assert_bits(&later, rows(&obs, n, 0..11), "smooth observations");
}

/// Conditionally Gaussian Lorenz-96 (noisy hidden scales): truth, run (EnKF on 2 ranks), cg
/// (every step); and couple's initial ensemble is run's.
#[test]
fn truth_run_cg_and_couple_share_the_truth_and_the_initial_ensemble() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let cfg = config_variant(
        d,
        "configs/cg_lorenz96.toml",
        "cgl96.toml",
        &[
            ("cycles = 1000", "cycles = 20"),
            ("burn_in = 50", "burn_in = 2"),
            ("spinup_steps = 2000", "spinup_steps = 100"),
            ("k = 40", "k = 8"),
            ("count = 40", "count = 8"),
            ("members = 50", "members = 10"),
        ],
    );
    let c = cfg.to_str().unwrap();
    let p = |name: &str| d.join(name).to_str().unwrap().to_string();
    run_ok(&["truth", c, "-o", &p("truth.nc")]);
    let o = mpirun(2, &["run", c, "-o", &p("run.nc"), "--quiet"]);
    assert!(o.status.success(), "{}", text(&o));
    run_ok(&["cg", c, "-o", &p("cg.nc")]);

    let n = 8 + 8 * 2;
    let truth = nc_var(&d.join("truth.nc"), "truth");
    assert_eq!(truth.len(), 20 * n);
    assert_bits(&nc_var(&d.join("run.nc"), "truth"), &truth, "run truth");
    assert_bits(
        &nc_var(&d.join("run.nc"), "observations"),
        &nc_var(&d.join("truth.nc"), "observations"),
        "run observations",
    );
    // genda cg: every step from the end of the spin-up; cycle c is step 10·c.
    let cg = nc_var(&d.join("cg.nc"), "truth");
    assert_eq!(cg.len(), (20 * 10 + 1) * n);
    let at_cycles: Vec<f64> = (1..=20)
        .flat_map(|c| rows(&cg, n, 10 * c..10 * c + 1).to_vec())
        .collect();
    assert_bits(&at_cycles, &truth, "cg truth");

    // genda couple --write-initial writes the members run draws (one initialiser), then waits
    // for a model that is not there and times out.
    let mut s = std::fs::read_to_string(&cfg).unwrap();
    s += &format!(
        "\n[coupling]\ndir = {:?}\ntimeout_s = 1\npoll_ms = 5\n",
        d.join("couple")
    );
    let coupled = d.join("couple.toml");
    std::fs::write(&coupled, s).unwrap();
    let o = genda(&["couple", coupled.to_str().unwrap(), "--write-initial"]);
    assert!(
        !o.status.success() && text(&o).contains("timed out"),
        "{}",
        text(&o)
    );
    let init = nc_var(
        &d.join("couple").join("cycle_000000").join("analysis.nc"),
        "analysis",
    );
    let conf = genda::config::Config::from_file(Path::new(&cfg)).unwrap();
    let mine = genda::experiment::initial_ensemble(&conf, 0..10, 0..n).unwrap();
    assert_bits(&init, mine.as_slice().unwrap(), "couple's initial ensemble");
}
