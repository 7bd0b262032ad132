//! Real `mpirun` runs: the same config gives bit-identical results on every layout (1 rank;
//! 2 ranks as 2 domains or 2 member groups; 4 ranks as 2×2; 3 ranks), and a layout that cannot
//! work is a clear error before any work.
mod common;
use common::*;

/// (ranks, domains per member): one rank; 2 ranks as 2 domains; 2 ranks as 2 member groups;
/// 4 ranks as 2 groups × 2 domains (oversubscribed); 3 ranks as 3 groups.
const LAYOUTS: [(usize, usize); 5] = [(1, 1), (2, 2), (2, 1), (4, 2), (3, 1)];

/// Run `cfg` on each (ranks, domains) layout (1 rank without mpirun); the run files.
fn run_layouts(
    dir: &std::path::Path,
    cfg: &std::path::Path,
    layouts: &[(usize, usize)],
) -> Vec<std::path::PathBuf> {
    let mut outs = Vec::new();
    for &(np, domains) in layouts {
        let out = dir.join(format!("np{np}_d{domains}.nc"));
        let d = domains.to_string();
        let args = [
            "run",
            cfg.to_str().unwrap(),
            "-o",
            out.to_str().unwrap(),
            "--domains",
            &d,
            "--quiet",
        ];
        let o = if np == 1 {
            genda(&args)
        } else {
            mpirun(np, &args)
        };
        assert!(
            o.status.success(),
            "np = {np}, domains = {domains}: {}",
            text(&o)
        );
        outs.push(out);
    }
    outs
}

fn compare_layouts(base: &str, edits: &[(&str, &str)], layouts: &[(usize, usize)]) {
    let dir = tempfile::tempdir().unwrap();
    let cfg = config_variant(dir.path(), base, "c.toml", edits);
    let mut runs = Vec::new();
    for (&(np, domains), out) in layouts.iter().zip(run_layouts(dir.path(), &cfg, layouts)) {
        runs.push((
            (np, domains),
            nc_var(&out, "rmse_analysis"),
            nc_var(&out, "analysis_mean"),
            nc_var(&out, "analysis_spread"),
            nc_var(&out, "truth"),
        ));
    }
    let (_, r1, m1, s1, t1) = &runs[0];
    assert!(r1.iter().all(|v| v.is_finite()) && !r1.is_empty());
    for (lay, r, m, s, t) in &runs[1..] {
        // Bitwise: sums over the state are taken per tile in global tile order, members are
        // gathered in a fixed order, and random numbers are keyed by global index.
        assert_eq!(t1, t, "truth differs on layout {lay:?}");
        assert_eq!(r1, r, "rmse series differs on layout {lay:?}");
        assert_eq!(m1, m, "analysis mean differs on layout {lay:?}");
        assert_eq!(s1, s, "spread differs on layout {lay:?}");
    }
}

#[test]
fn etkf_l96_same_numbers_on_every_layout() {
    compare_layouts(
        "configs/l96_sakov2008.toml",
        &[
            ("cycles = 5000", "cycles = 300"),
            ("burn_in = 1000", "burn_in = 50"),
            ("rotation = false", "rotation = true"),
        ],
        &LAYOUTS,
    );
}

#[test]
fn letkf_l96_same_numbers_on_every_layout() {
    compare_layouts(
        "configs/l96_sakov2008_letkf.toml",
        &[
            ("cycles = 5000", "cycles = 200"),
            ("burn_in = 1000", "burn_in = 10"),
        ],
        &LAYOUTS,
    );
}

#[test]
fn ensf_kde_and_enkf_l96_same_numbers_on_every_layout() {
    compare_layouts(
        "configs/l96_ensf.toml",
        &[
            ("cycles = 1000", "cycles = 20"),
            ("burn_in = 200", "burn_in = 2"),
        ],
        &LAYOUTS[..4],
    );
    compare_layouts(
        "configs/l96_sakov2008.toml",
        &[
            ("cycles = 5000", "cycles = 100"),
            ("burn_in = 1000", "burn_in = 5"),
            ("method = \"etkf\"", "method = \"enkf\""),
            ("rotation = false", ""),
        ],
        &LAYOUTS[..4],
    );
}

/// Edits of configs/kolmogorov_letkf.toml for a small, quick 32² run.
const KOLMOGOROV_SMALL: [(&str, &str); 7] = [
    ("n = 64", "n = 32"),
    ("cycles = 300", "cycles = 8"),
    ("burn_in = 100", "burn_in = 2"),
    ("spinup_steps = 3000", "spinup_steps = 200"),
    (
        "ensemble_spinup_steps = 1000",
        "ensemble_spinup_steps = 100",
    ),
    ("members = 20", "members = 8"),
    ("localization_radius = 4.0", "localization_radius = 2.0"),
];

/// The slab-decomposed pseudo-spectral model (all-to-all transposes) and the torus LETKF with
/// row halos: the same fields on 1, 2 and 4 domains and with 2 member groups.
#[test]
fn kolmogorov_letkf_same_fields_on_1_2_4_ranks() {
    compare_layouts(
        "configs/kolmogorov_letkf.toml",
        &KOLMOGOROV_SMALL,
        &[(1, 1), (2, 2), (4, 4), (4, 2), (2, 1)],
    );
}

#[test]
fn enkf_l63_same_numbers_on_1_2_3_ranks() {
    compare_layouts(
        "configs/l63_sakov2012_enkf.toml",
        &[("cycles = 4000", "cycles = 300")],
        &[(1, 1), (2, 1), (3, 1)],
    );
}

/// Layouts that cannot work fail on every rank with one message from rank 0, quickly.
#[test]
fn bad_layouts_are_clear_errors_without_deadlock() {
    let dir = tempfile::tempdir().unwrap();
    let letkf = config_variant(
        dir.path(),
        "configs/l96_sakov2008_letkf.toml",
        "letkf.toml",
        &[
            ("cycles = 5000", "cycles = 20"),
            ("burn_in = 1000", "burn_in = 1"),
        ],
    );
    let l63 = config_variant(dir.path(), "configs/l63_sakov2012.toml", "l63.toml", &[]);
    let kolm = config_variant(
        dir.path(),
        "configs/kolmogorov_letkf.toml",
        "kolm.toml",
        &KOLMOGOROV_SMALL,
    );
    let kolm_r4 = config_variant(
        dir.path(),
        "configs/kolmogorov_letkf.toml",
        "kolm4.toml",
        &KOLMOGOROV_SMALL[..6],
    );
    let cases: [(usize, &std::path::Path, &str, &str); 5] = [
        (
            3,
            &letkf,
            "2",
            "3 MPI rank(s) cannot be split into 2 domain(s)",
        ),
        (2, &l63, "2", "lorenz63 cannot be domain-decomposed"),
        (4, &letkf, "4", "smaller than the halo of 14"),
        (
            3,
            &kolm,
            "3",
            "its side must be divisible by the number of domains (3)",
        ),
        (4, &kolm_r4, "4", "smaller than the halo of 448"),
    ];
    for (np, cfg, domains, want) in cases {
        let out = dir.path().join("x.nc");
        let t0 = std::time::Instant::now();
        let o = mpirun(
            np,
            &[
                "run",
                cfg.to_str().unwrap(),
                "-o",
                out.to_str().unwrap(),
                "--domains",
                domains,
            ],
        );
        let t = text(&o);
        assert!(!o.status.success(), "{t}");
        assert!(t.contains(want), "want `{want}` in: {t}");
        assert_eq!(t.matches(want).count(), 1, "reported once: {t}");
        assert!(!t.contains("panicked"), "{t}");
        assert!(t0.elapsed().as_secs() < 60, "took {:?}", t0.elapsed());
        assert!(!out.exists());
    }
}

#[test]
fn too_many_ranks_is_a_clear_error() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("x.nc");
    let cfg = config_variant(
        dir.path(),
        "configs/l63_sakov2012.toml",
        "c.toml",
        &[("members = 10", "members = 2")],
    );
    let o = mpirun(
        3,
        &["run", cfg.to_str().unwrap(), "-o", out.to_str().unwrap()],
    );
    let t = text(&o);
    assert!(!o.status.success(), "{t}");
    assert!(
        t.contains("3 member groups, more than the 2 ensemble members"),
        "{t}"
    );
    assert!(!t.contains("panicked"), "{t}");
    assert_eq!(files_in(dir.path()), vec!["c.toml".to_string()]);
}

#[test]
fn scaling_series_writes_csv_markdown_and_png() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = config_variant(dir.path(), "configs/l96_sakov2008.toml", "c.toml", &[]);
    let out = dir.path().join("scal");
    let o = std::process::Command::new(genda_bin())
        .args([
            "scaling",
            cfg.to_str().unwrap(),
            "--ranks",
            "1,2",
            "--mode",
            "weak",
            "--cycles",
            "50",
            "--out-dir",
            out.to_str().unwrap(),
        ])
        .env(
            "GENDA_LAUNCHER_FLAGS",
            "--allow-run-as-root --oversubscribe",
        )
        .env("RUST_LOG", "warn")
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", text(&o));
    let csv = std::fs::read_to_string(out.join("scaling.csv")).unwrap();
    let rows: Vec<&str> = csv.lines().collect();
    assert_eq!(rows.len(), 3, "{csv}");
    assert!(rows[0].starts_with("ranks,members"));
    // Weak scaling: members grow with ranks (20 → 40).
    assert!(
        rows[1].starts_with("1,20,40,50,") && rows[2].starts_with("2,40,40,50,"),
        "{csv}"
    );
    let md = std::fs::read_to_string(out.join("scaling.md")).unwrap();
    assert!(md.contains("| ranks |") && md.contains("efficiency"));
    assert_eq!(
        &std::fs::read(out.join("scaling.png")).unwrap()[..4],
        b"\x89PNG"
    );
}

#[test]
fn serial_commands_refuse_to_run_as_several_ranks() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = config_variant(dir.path(), "configs/l63_sakov2012.toml", "c.toml", &[]);
    let o = mpirun(
        2,
        &[
            "truth",
            cfg.to_str().unwrap(),
            "-o",
            dir.path().join("t.nc").to_str().unwrap(),
        ],
    );
    let t = text(&o);
    assert!(
        !o.status.success() && t.contains("runs on one process") && t.contains("2 MPI ranks"),
        "{t}"
    );
    assert_eq!(files_in(dir.path()), vec!["c.toml".to_string()]);
}

/// `genda bench` times the model step on 1 and 2 ranks (slab FFT) and appends CSV rows; a grid
/// the ranks cannot split is one clear error.
#[test]
fn bench_times_the_model_step_on_1_and_2_ranks() {
    let dir = tempfile::tempdir().unwrap();
    let csv = dir.path().join("bench.csv");
    let cfg = repo_file("configs/kolmogorov_letkf.toml");
    let args = [
        "bench",
        cfg.to_str().unwrap(),
        "--grid",
        "32",
        "--steps",
        "2",
        "--members",
        "2",
        "--csv",
        csv.to_str().unwrap(),
    ];
    let o = genda(&args);
    assert!(o.status.success(), "{}", text(&o));
    assert!(text(&o).contains("ms per step"), "{}", text(&o));
    let o = mpirun(2, &args);
    assert!(o.status.success(), "{}", text(&o));
    let t = std::fs::read_to_string(&csv).unwrap();
    let rows: Vec<Vec<&str>> = t.lines().map(|l| l.split(',').collect()).collect();
    assert_eq!(rows.len(), 3, "{t}");
    assert_eq!(
        rows[0],
        [
            "model",
            "state_dim",
            "ranks",
            "members",
            "steps",
            "per_step_s",
            "comm_s",
            "fft_s"
        ]
    );
    for (row, ranks) in rows[1..].iter().zip(["1", "2"]) {
        assert_eq!((row[0], row[1], row[2]), ("kolmogorov2d", "1024", ranks));
        let (step, fft): (f64, f64) = (row[5].parse().unwrap(), row[7].parse().unwrap());
        assert!(step > 0.0 && fft > 0.0 && fft < step, "{row:?}");
    }
    let mut bad = args;
    bad[3] = "30";
    let o = mpirun(4, &bad);
    let t = text(&o);
    assert!(!o.status.success());
    let want = "its side must be divisible by the number of domains (4)";
    assert_eq!(t.matches(want).count(), 1, "{t}");
}

/// `[output] distributional_scores`: the CRPS series and the rank histogram are the same on
/// every layout (tile-ordered sums of per-tile CRPS and counts), and the histogram counts every
/// variable of every scored cycle once; so is `output.path_rmse`.
#[test]
fn distributional_scores_are_layout_independent() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = config_variant(
        dir.path(),
        "configs/l96_sakov2008.toml",
        "d.toml",
        &[
            ("cycles = 5000", "cycles = 120"),
            ("burn_in = 1000", "burn_in = 20"),
            ("obs_every = 1 ", "obs_every = 2 "),
            (
                "[output]",
                "[output]\ndistributional_scores = true\npath_rmse = true",
            ),
        ],
    );
    let (mut runs, mut paths) = (Vec::new(), Vec::new());
    for out in run_layouts(dir.path(), &cfg, &[(1, 1), (2, 2), (4, 2)]) {
        runs.push((
            nc_var(&out, "crps_analysis"),
            nc_var(&out, "rank_histogram"),
            nc_attr_f64(&out, "crps_analysis_time_mean"),
            nc_attr_f64(&out, "rmse_analysis_time_mean"),
        ));
        paths.push(nc_attr_f64(&out, "rmse_path"));
    }
    // The path RMSE (observed every 2nd step: the forecast states between the analyses too)
    // is the same on every layout.
    assert!(
        paths[0] > 0.0 && paths.iter().all(|p| *p == paths[0]),
        "{paths:?}"
    );
    let (c1, h1, m1, rmse) = &runs[0];
    assert_eq!(h1.len(), 21);
    assert_eq!(h1.iter().sum::<f64>(), (40 * 100) as f64, "{h1:?}");
    let mean_after_burn_in = c1[20..].iter().sum::<f64>() / 100.0;
    assert!((mean_after_burn_in - m1).abs() < 1e-12);
    assert!(*m1 > 0.0 && m1 < rmse, "CRPS {m1} vs RMSE {rmse}");
    for (c, h, m, _) in &runs[1..] {
        assert_eq!(c1, c);
        assert_eq!(h1, h);
        assert_eq!(m1, m);
    }
}

/// Ω follows every member's forecast path: the driver gathers the paths over member groups, so
/// 1 rank and 2 or 3 member groups give the same analysis, residual network included.
#[test]
fn omega_same_numbers_on_1_2_3_ranks() {
    compare_layouts(
        "configs/omega_spekf.toml",
        &[
            ("cycles = 2000", "cycles = 12"),
            ("burn_in = 100", "burn_in = 2"),
            ("members = 50", "members = 12"),
            ("residual_steps = 30", "residual_steps = 5"),
        ],
        &[(1, 1), (2, 1), (3, 1)],
    );
}

/// SDA (a pre-trained window network, whole-trajectory sampling keyed by member index) gives the
/// same numbers whether ranks split the members or not.
#[test]
fn sda_same_numbers_on_1_2_ranks() {
    let dir = tempfile::tempdir().unwrap();
    let weights = train_sda_window(dir.path(), 1, 5000, 300);
    let wline = format!("weights = {weights:?}");
    compare_layouts(
        "configs/sda_l63_smooth_hi.toml",
        &[
            ("weights = \"output/sda_l63_k2.h5\"", wline.as_str()),
            ("cycles = 65", "cycles = 4\nburn_in = 1"),
            ("members = 256", "members = 6"),
            ("steps = 256", "steps = 32"),
            ("gamma = 3e-2", "gamma = 1.0\nwindow_cycles = 4"),
            ("reference_particles = 16384", "reference_particles = 0"),
        ],
        &[(1, 1), (2, 1), (3, 1)],
    );
}

/// A fine-grid truth (model.truth_grid, issue 8's Kolmogorov setup at toy size) gives the same
/// numbers on 1 and 2 ranks (member groups); splitting it into domains is a clear error.
#[test]
fn fine_grid_truth_same_numbers_on_1_2_ranks() {
    let mut toy = KOLMOGOROV_ISSUE8_TOY.to_vec();
    toy.extend([
        (
            "truth_file = \"output/kolmogorov_issue8_truth.h5\"",
            "spinup_steps = 10",
        ),
        ("cycles = 30", "cycles = 4"),
        ("burn_in = 5", "burn_in = 1"),
        ("ensemble_spinup_steps = 50", "ensemble_spinup_steps = 5"),
        ("members = 20", "members = 6"),
    ]);
    compare_layouts(
        "configs/kolmogorov_issue8_letkf.toml",
        &toy,
        &[(1, 1), (2, 1)],
    );
    let dir = tempfile::tempdir().unwrap();
    let cfg = config_variant(
        dir.path(),
        "configs/kolmogorov_issue8_letkf.toml",
        "c.toml",
        &toy,
    );
    let out = dir.path().join("d2.nc");
    let o = mpirun(
        2,
        &[
            "run",
            cfg.to_str().unwrap(),
            "-o",
            out.to_str().unwrap(),
            "--domains",
            "2",
            "--quiet",
        ],
    );
    let t = text(&o);
    assert!(!o.status.success() && t.contains("truth_grid"), "{t}");
    assert!(!out.exists());
}

/// A panic on one rank only (injected at cycle 5 on rank 1) ends the whole job within seconds
/// with the message and a non-zero exit — no rank is left waiting in a collective.
#[test]
fn a_panic_on_one_rank_aborts_the_whole_job() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("fault.nc");
    let mut cmd = std::process::Command::new("mpirun");
    cmd.args([
        "--allow-run-as-root",
        "--oversubscribe",
        "-np",
        "2",
        genda_bin(),
    ])
    .args([
        "run",
        "configs/dapper/l63_sakov2012_etkf.toml",
        "--quiet",
        "-o",
    ])
    .arg(&out)
    .env("GENDA_INJECT_FAULT", "1:5")
    .env("RUST_LOG", "warn")
    .env("OMPI_MCA_rmaps_base_oversubscribe", "1")
    .stdout(std::process::Stdio::piped())
    .stderr(std::process::Stdio::piped());
    let t0 = std::time::Instant::now();
    let mut child = cmd.spawn().expect("start mpirun");
    let status = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break s;
        }
        if t0.elapsed() > std::time::Duration::from_secs(60) {
            let _ = child.kill();
            panic!("the job hung after a panic on rank 1");
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
    };
    let o = child.wait_with_output().unwrap();
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(!status.success(), "{err}");
    assert!(t0.elapsed().as_secs() < 30, "took {:?}", t0.elapsed());
    assert!(
        err.contains("fault injected") && err.contains("rank 1 panicked"),
        "{err}"
    );
    assert!(!out.exists(), "a failed run left its output");
}

/// A method that needs the whole state (the particle filter's full-covariance jitter) is refused
/// on more than one domain before anything runs, with one clear error.
#[test]
fn particle_filter_refuses_domain_decomposition_up_front() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = config_variant(
        dir.path(),
        "configs/dapper/l96_sakov2008_etkf.toml",
        "pf.toml",
        &[
            ("method = \"etkf\"", "method = \"pf\""),
            ("inflation = 1.013\n", ""),
            ("rotation = true\n", ""),
        ],
    );
    let out = dir.path().join("pf.nc");
    let o = mpirun(
        2,
        &[
            "run",
            cfg.to_str().unwrap(),
            "--domains",
            "2",
            "-o",
            out.to_str().unwrap(),
        ],
    );
    let t = text(&o);
    assert!(!o.status.success(), "{t}");
    assert_eq!(
        t.matches("pf needs the whole state on one rank").count(),
        1,
        "{t}"
    );
    assert!(!out.exists());
}

/// DAPPER's particle filter (carried weights, NER-triggered resampling, duplicate jitter) gives
/// bit-identical weighted statistics on 1, 2 and 3 ranks (member groups; its draws are keyed
/// by cycle and particle, its likelihoods summed per tile).
#[test]
fn particle_filter_l63_same_numbers_on_1_2_3_ranks() {
    compare_layouts(
        "configs/dapper/l63_sakov2012_pf.toml",
        &[("cycles = 1001", "cycles = 300")],
        &[(1, 1), (2, 1), (3, 1)],
    );
}

/// `genda bench --cycle` times a whole cycle of a config on 1 and 2 ranks (member groups, the
/// same cycle either way), and `genda bench --machine` measures the machine's limits; both print
/// positive, finite numbers.
#[test]
fn bench_times_a_whole_cycle_and_the_machine() {
    let numbers = |t: &str, line: &str| -> Vec<f64> {
        let l = t
            .lines()
            .find(|l| l.starts_with(line))
            .unwrap_or_else(|| panic!("no line `{line}` in {t}"));
        l.split(|c: char| !(c.is_ascii_digit() || c == '.'))
            .filter_map(|w| w.parse::<f64>().ok())
            .collect()
    };
    let cfg = repo_file("configs/l96_sakov2008.toml");
    let args = ["bench", cfg.to_str().unwrap(), "--cycle", "--cycles", "50"];
    for o in [genda(&args), mpirun(2, &args)] {
        assert!(o.status.success(), "{}", text(&o));
        let t = String::from_utf8_lossy(&o.stdout).to_string();
        let v = numbers(&t, "per cycle [µs]: forecast");
        assert!(v.len() >= 5 && v[..5].iter().all(|x| x.is_finite()), "{t}");
        assert!(
            v[0] > 0.0 && v[1] > 0.0,
            "forecast and analysis take time: {t}"
        );
        assert!(
            (v[2] - (v[0] + v[1])).abs() <= 0.11,
            "forecast + analysis: {t}"
        );
    }
    let o = genda(&["bench", "--machine"]);
    assert!(o.status.success(), "{}", text(&o));
    let t = String::from_utf8_lossy(&o.stdout).to_string();
    let v = numbers(&t, "STREAM triad");
    assert!(v[0] > 0.1 && v[1] > 0.1, "bandwidths: {t}");
    let v = numbers(&t, "dense f64 GEMM");
    assert!(v.iter().any(|&g| g > 0.1), "GEMM rate: {t}");
}

/// The MASF code's Kolmogorov case (velocity state, stacked-field observations, the code's
/// LETKF and EnKF, path RMSE): 1 rank and 2 member groups give the same run bit for bit.
#[test]
fn velocity_state_reference_filters_same_numbers_on_1_and_2_ranks() {
    let dir = tempfile::tempdir().unwrap();
    for m in ["letkf", "enkf"] {
        let cfg = config_variant(
            dir.path(),
            &format!("configs/masf/kolmogorov_reference_{m}.toml"),
            &format!("{m}.toml"),
            &[("cycles = 6", "cycles = 3")],
        );
        let sub = dir.path().join(m);
        std::fs::create_dir_all(&sub).unwrap();
        let outs = run_layouts(&sub, &cfg, &[(1, 1), (2, 1)]);
        for v in ["analysis_mean", "forecast_mean", "analysis_spread"] {
            assert_eq!(nc_var(&outs[0], v), nc_var(&outs[1], v), "{m}: {v}");
        }
        let p = nc_attr_f64(&outs[0], "rmse_path");
        assert!(p > 0.0 && p == nc_attr_f64(&outs[1], "rmse_path"), "{m}");
    }
}
