//! End-to-end runs of the `genda` binary: output files reopened and checked, truth/plot/doctor,
//! and bad input giving one clear error, a non-zero exit and no half-written output.
mod common;
use common::*;
use std::path::Path;

#[test]
fn run_writes_cf_netcdf_that_matches_what_was_computed() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("run.nc");
    let cfg = config_variant(
        dir.path(),
        "configs/l96_sakov2008.toml",
        "c.toml",
        &[
            ("cycles = 5000", "cycles = 400"),
            ("burn_in = 1000", "burn_in = 100"),
        ],
    );
    let o = genda(&[
        "run",
        cfg.to_str().unwrap(),
        "-o",
        out.to_str().unwrap(),
        "--quiet",
    ]);
    assert!(o.status.success(), "{}", text(&o));
    let stdout = String::from_utf8_lossy(&o.stdout);
    assert!(
        stdout.contains("analysis") && stdout.contains("forecast"),
        "{stdout}"
    );

    // Recompute RMSE from the stored truth and analysis mean and compare with the stored series.
    let _g = nc_lock();
    let f = netcdf::open(&out).unwrap();
    let n = f.dimension("x").unwrap().len();
    assert_eq!(n, 40);
    assert_eq!(f.dimension("time").unwrap().len(), 400);
    assert_eq!(f.dimension("obs").unwrap().len(), 40);
    let truth = nc_var(&out, "truth");
    let amean = nc_var(&out, "analysis_mean");
    let fmean = nc_var(&out, "forecast_mean");
    let rmse_a = nc_var(&out, "rmse_analysis");
    let rmse_f = nc_var(&out, "rmse_forecast");
    let spread_a = nc_var(&out, "analysis_spread");
    for k in 0..400 {
        let r = |m: &[f64]| {
            ((0..n)
                .map(|i| (m[k * n + i] - truth[k * n + i]).powi(2))
                .sum::<f64>()
                / n as f64)
                .sqrt()
        };
        assert!((r(&amean) - rmse_a[k]).abs() < 1e-12, "cycle {k}");
        assert!((r(&fmean) - rmse_f[k]).abs() < 1e-12, "cycle {k}");
        assert!(spread_a[k] > 0.0 && spread_a[k].is_finite());
    }
    // The time-mean attribute is the mean over cycles after the burn-in.
    let want = rmse_a[100..].iter().sum::<f64>() / 300.0;
    assert!((nc_attr_f64(&out, "rmse_analysis_time_mean") - want).abs() < 1e-12);
    // Observations: identity operator, R = I → residuals y − truth have unit variance.
    let obs = nc_var(&out, "observations");
    let var = obs
        .iter()
        .zip(&truth)
        .map(|(y, x)| (y - x).powi(2))
        .sum::<f64>()
        / obs.len() as f64;
    assert!((var - 1.0).abs() < 0.05, "obs error variance {var}");
    // CF metadata and the full config are there.
    match f.attribute("Conventions").unwrap().value().unwrap() {
        netcdf::AttributeValue::Str(s) => assert!(s.starts_with("CF-")),
        v => panic!("{v:?}"),
    }
    match f.attribute("config").unwrap().value().unwrap() {
        netcdf::AttributeValue::Str(s) => {
            assert!(s.contains("inflation = 1.02") && s.contains("lorenz96"))
        }
        v => panic!("{v:?}"),
    }
    assert!(f.variable("time").unwrap().attribute("units").is_some());
    // Only the final file is left, no temporary.
    assert_eq!(
        files_in(dir.path()),
        vec!["c.toml".to_string(), "run.nc".to_string()]
    );
}

#[test]
fn saved_ensembles_have_member_dimension_and_consistent_mean() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("ens.nc");
    let cfg = config_variant(
        dir.path(),
        "configs/l63_sakov2012.toml",
        "c.toml",
        &[
            ("cycles = 4000", "cycles = 30"),
            ("burn_in = 64", "burn_in = 5"),
            (
                "path = \"output/l63_sakov2012.nc\"",
                "path = \"output/l63_sakov2012.nc\"\nsave_ensemble = true",
            ),
        ],
    );
    let o = genda(&["run", cfg.to_str().unwrap(), "-o", out.to_str().unwrap()]);
    assert!(o.status.success(), "{}", text(&o));
    let _g = nc_lock();
    let f = netcdf::open(&out).unwrap();
    assert_eq!(f.dimension("member").unwrap().len(), 10);
    let ens = nc_var(&out, "analysis_ensemble");
    let mean = nc_var(&out, "analysis_mean");
    for k in 0..30 {
        for i in 0..3 {
            let m: f64 = (0..10).map(|j| ens[(k * 10 + j) * 3 + i]).sum::<f64>() / 10.0;
            assert!((m - mean[k * 3 + i]).abs() < 1e-10);
        }
    }
}

#[test]
fn results_do_not_depend_on_thread_count() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = config_variant(
        dir.path(),
        "configs/l96_sakov2008.toml",
        "c.toml",
        &[
            ("cycles = 5000", "cycles = 200"),
            ("burn_in = 1000", "burn_in = 10"),
        ],
    );
    let mut series = Vec::new();
    for threads in ["1", "2"] {
        let out = dir.path().join(format!("t{threads}.nc"));
        let o = std::process::Command::new(genda_bin())
            .args(["run", cfg.to_str().unwrap(), "-o", out.to_str().unwrap()])
            .env("RAYON_NUM_THREADS", threads)
            .output()
            .unwrap();
        assert!(o.status.success(), "{}", text(&o));
        series.push(nc_var(&out, "rmse_analysis"));
    }
    assert_eq!(series[0], series[1]);
}

#[test]
fn truth_writes_netcdf_and_hdf5_with_the_same_trajectory() {
    let dir = tempfile::tempdir().unwrap();
    let nc = dir.path().join("truth.nc");
    let cfg = config_variant(
        dir.path(),
        "configs/l96_sakov2008.toml",
        "c.toml",
        &[
            ("cycles = 5000", "cycles = 50"),
            ("burn_in = 1000", "burn_in = 0"),
        ],
    );
    let o = genda(&["truth", cfg.to_str().unwrap(), "-o", nc.to_str().unwrap()]);
    assert!(o.status.success(), "{}", text(&o));
    let h5 = dir.path().join("truth.h5");
    let traj = genda::io::read_trajectory(&h5).unwrap();
    assert_eq!((traj.times, traj.state_dim), (50, 40));
    assert!((traj.dt - 0.05).abs() < 1e-15);
    assert_eq!(traj.model, "lorenz96");
    assert_eq!(traj.data, nc_var(&nc, "truth"));
    // The truth of `genda truth` is the truth of `genda run` with the same config.
    let run = dir.path().join("run.nc");
    let o = genda(&["run", cfg.to_str().unwrap(), "-o", run.to_str().unwrap()]);
    assert!(o.status.success(), "{}", text(&o));
    assert_eq!(nc_var(&run, "truth"), traj.data);
    assert_eq!(nc_var(&run, "observations"), nc_var(&nc, "observations"));
}

#[test]
fn plot_writes_a_png() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("run.nc");
    let cfg = config_variant(
        dir.path(),
        "configs/l63_sakov2012.toml",
        "c.toml",
        &[("cycles = 4000", "cycles = 200")],
    );
    assert!(
        genda(&["run", cfg.to_str().unwrap(), "-o", out.to_str().unwrap()])
            .status
            .success()
    );
    let png = dir.path().join("plot.png");
    let o = genda(&["plot", out.to_str().unwrap(), "-o", png.to_str().unwrap()]);
    assert!(o.status.success(), "{}", text(&o));
    let bytes = std::fs::read(&png).unwrap();
    assert_eq!(&bytes[..8], b"\x89PNG\r\n\x1a\n");
    assert!(
        bytes.len() > 20_000,
        "suspiciously small PNG: {} bytes",
        bytes.len()
    );
}

/// A 2-D run also gets maps of truth / analysis / error and their spectra.
#[test]
fn plot_of_a_2d_run_writes_field_maps() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("k.nc");
    let cfg = config_variant(
        dir.path(),
        "configs/kolmogorov_letkf.toml",
        "k.toml",
        &[
            ("cycles = 300", "cycles = 6"),
            ("burn_in = 100", "burn_in = 1"),
            ("spinup_steps = 3000", "spinup_steps = 200"),
            ("ensemble_spinup_steps = 1000", "ensemble_spinup_steps = 20"),
            (
                "path = \"output/kolmogorov_letkf.nc\"",
                "path = \"output/kolmogorov_letkf.nc\"\nsave_ensemble = true",
            ),
        ],
    );
    let o = genda(&["run", cfg.to_str().unwrap(), "-o", out.to_str().unwrap()]);
    assert!(o.status.success(), "{}", text(&o));
    // CF grid output: fields (time, y, x), ensembles (time, member, y, x), and the member
    // mean of the stored ensemble is the stored analysis mean.
    let d = |v: &str| nc_dims(&out, v);
    let s = |n: &str, l: usize| (n.to_string(), l);
    assert_eq!(d("truth"), vec![s("time", 6), s("y", 64), s("x", 64)]);
    assert_eq!(
        d("analysis_ensemble"),
        vec![s("time", 6), s("member", 20), s("y", 64), s("x", 64)]
    );
    let (ens, mean) = (
        nc_var(&out, "analysis_ensemble"),
        nc_var(&out, "analysis_mean"),
    );
    let (last_e, last_m) = (&ens[5 * 20 * 4096..], &mean[5 * 4096..]);
    for i in (0..4096).step_by(97) {
        let m: f64 = (0..20).map(|k| last_e[k * 4096 + i]).sum::<f64>() / 20.0;
        assert!(
            (m - last_m[i]).abs() < 1e-9,
            "point {i}: {m} vs {}",
            last_m[i]
        );
    }
    let y = nc_var(&out, "y");
    assert!((y[1] - 2.0 * std::f64::consts::PI / 64.0).abs() < 1e-15);
    let png = dir.path().join("k.png");
    let o = genda(&["plot", out.to_str().unwrap(), "-o", png.to_str().unwrap()]);
    assert!(o.status.success(), "{}", text(&o));
    let fields = dir.path().join("k.fields.png");
    let bytes = std::fs::read(&fields).unwrap();
    assert_eq!(&bytes[..8], b"\x89PNG\r\n\x1a\n");
    assert!(bytes.len() > 20_000, "{} bytes", bytes.len());
}

#[test]
fn doctor_and_help_explain() {
    let o = genda(&["doctor"]);
    let t = text(&o);
    assert!(
        t.contains("MPI library")
            && t.contains("libtorch")
            && t.contains("NetCDF")
            && t.contains("HDF5"),
        "{t}"
    );
    let o = genda(&["--help"]);
    let t = String::from_utf8_lossy(&o.stdout).to_string();
    for sub in ["run", "truth", "plot", "doctor", "check"] {
        assert!(t.contains(sub), "--help lacks {sub}: {t}");
    }
    let o = genda(&["run", "--help"]);
    assert!(String::from_utf8_lossy(&o.stdout).contains("--output"));
}

/// A bad run must exit non-zero with one clear message containing `needle`, never panic, and
/// leave no file behind in `dir` other than the config.
fn assert_clean_failure(dir: &Path, args: &[&str], needle: &str) {
    let before = files_in(dir);
    let o = genda(args);
    let t = text(&o);
    assert!(!o.status.success(), "expected failure: {t}");
    assert_eq!(o.status.code(), Some(1), "{t}");
    let stderr = String::from_utf8_lossy(&o.stderr);
    assert!(stderr.contains("genda: error:"), "{t}");
    assert!(
        stderr.contains(needle),
        "error should mention `{needle}`: {t}"
    );
    assert!(!stderr.contains("panicked"), "{t}");
    assert_eq!(files_in(dir), before, "a failed run left files behind");
}

#[test]
fn bad_input_gives_clear_errors_and_no_output() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let out = d.join("out.nc");
    let o = out.to_str().unwrap();
    let base = "configs/l96_sakov2008.toml";
    // (what, config text edits, a word the error must contain)
    type Case<'a> = (&'a str, Vec<(&'a str, &'a str)>, &'a str);
    let cases: Vec<Case> = vec![
        (
            "unknown key",
            vec![("inflation = 1.02", "inflaton = 1.02")],
            "unknown field `inflaton`",
        ),
        (
            "unknown table",
            vec![("[output]", "[outptu]")],
            "unknown field `outptu`",
        ),
        (
            "wrong dimension",
            vec![("\ndim = 40", "\ndim = 41")],
            "initial.mean",
        ),
        ("dt <= 0", vec![("\ndt = 0.05", "\ndt = 0.0")], "model.dt"),
        (
            "obs_every 0",
            vec![("obs_every = 1 ", "obs_every = 0 ")],
            "obs_every",
        ),
        (
            "unknown method",
            vec![("method = \"etkf\"", "method = \"etfk\"")],
            "etfk",
        ),
        (
            "one member",
            vec![("members = 20", "members = 1")],
            "members",
        ),
        (
            "negative variance",
            vec![("error_var = 1.0", "error_var = -1.0")],
            "error_var",
        ),
        (
            "wrong R length",
            vec![("error_var = 1.0", "error_var = [1.0, 2.0]")],
            "observations.error_var",
        ),
        (
            "divergence",
            vec![("\ndt = 0.05", "\ndt = 2.0")],
            "diverged",
        ),
        (
            "zero bandwidth",
            vec![
                (
                    "method = \"etkf\"",
                    "method = \"kde_diffusion\"\nstate_scale = 0.0",
                ),
                ("inflation = 1.02\n", ""),
                ("rotation = false\n", ""),
            ],
            "filter.state_scale",
        ),
        (
            "negative model noise",
            vec![("forcing = 8.0", "forcing = 8.0\nnoise = -0.1")],
            "model.noise",
        ),
    ];
    for (what, edits, needle) in cases {
        let cfg = config_variant(d, base, "bad.toml", &edits);
        assert_clean_failure(
            d,
            &[
                "run",
                cfg.to_str().unwrap(),
                "-o",
                o,
                "--cycles",
                "1100",
                "--quiet",
            ],
            needle,
        );
        eprintln!("ok: {what}");
    }
    // Missing config file.
    assert_clean_failure(
        d,
        &["run", d.join("nope.toml").to_str().unwrap()],
        "nope.toml",
    );
    // Unwritable output path (its parent is a regular file).
    let cfg = config_variant(d, base, "bad.toml", &[]);
    let blocker = d.join("bad.toml");
    let under_file = blocker.join("sub").join("out.nc");
    assert_clean_failure(
        d,
        &[
            "run",
            cfg.to_str().unwrap(),
            "-o",
            under_file.to_str().unwrap(),
            "--cycles",
            "1100",
        ],
        "output",
    );
    // Corrupt / missing files for plot.
    std::fs::write(d.join("corrupt.nc"), b"not a netcdf file").unwrap();
    assert_clean_failure(
        d,
        &["plot", d.join("corrupt.nc").to_str().unwrap()],
        "corrupt.nc",
    );
    assert_clean_failure(
        d,
        &["plot", d.join("missing.nc").to_str().unwrap()],
        "missing.nc",
    );
}

/// `genda cg`: the closed-form CG posterior of SPEKF's hidden damping and forcing beats the
/// climatology, the smoother beats the filter, and the spread matches the error; a model
/// without CG structure is one clear error.
#[test]
fn cg_posterior_twin_scores_and_refuses_models_without_cg_structure() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = config_variant(
        dir.path(),
        "configs/spekf_cg.toml",
        "s.toml",
        &[("cycles = 2000", "cycles = 1000")],
    );
    let o = genda(&["cg", cfg.to_str().unwrap()]);
    let t = text(&o);
    assert!(o.status.success(), "{t}");
    let row = |name: &str| -> Vec<f64> {
        let line = t
            .lines()
            .find(|l| l.starts_with(name))
            .unwrap_or_else(|| panic!("{t}"));
        line[name.len()..]
            .split_whitespace()
            .map(|v| v.parse().unwrap())
            .collect()
    };
    let (f, s, c) = (row("CG filter"), row("CG smoother"), row("climatology"));
    assert!(s[0] < f[0] && f[0] < c[0], "{t}");
    // Time means of per-cycle values: the spread of an exact posterior sits a little above the
    // error (the error's per-cycle RMSE fluctuates more), so a loose band.
    assert!(
        (f[1] / f[0] - 1.0).abs() < 0.35,
        "filter spread vs error: {t}"
    );
    assert!(
        s[2] < f[2] && f[2] < c[0],
        "CRPS: smoother < filter < climatology RMSE: {t}"
    );
    assert!(f[2] < f[0] && s[2] < s[0], "CRPS below RMSE: {t}");
    // `genda run` on the same model scores the hidden variables too (printed and stored).
    let out = dir.path().join("s.nc");
    let o = genda(&["run", cfg.to_str().unwrap(), "-o", out.to_str().unwrap()]);
    let t = text(&o);
    assert!(
        o.status.success() && t.contains("hidden variables (index 1 on"),
        "{t}"
    );
    let h = nc_attr_f64(&out, "crps_analysis_hidden_time_mean");
    assert!(h > 0.0 && h < c[0], "EnKF hidden CRPS {h}");
    let o = genda(&[
        "cg",
        repo_file("configs/l63_sakov2012.toml").to_str().unwrap(),
    ]);
    let t = text(&o);
    assert!(!o.status.success());
    assert!(
        t.contains("lorenz63 has no conditionally Gaussian structure"),
        "{t}"
    );
}

/// 2-D turbulence bad input: a dt that violates CFL at the start, and a run that blows up
/// later (a flow that starts slow and is forced past the CFL limit): one clear error each,
/// non-zero exit, no run file.
#[test]
fn turbulence_cfl_and_blow_up_are_clear_errors_without_output() {
    let dir = tempfile::tempdir().unwrap();
    let small = [
        ("n = 64", "n = 32"),
        ("members = 20", "members = 8"),
        ("localization_radius = 4.0", "localization_radius = 2.0"),
        ("ensemble_spinup_steps = 1000", "ensemble_spinup_steps = 0"),
        ("spinup_steps = 3000", "spinup_steps = 0"),
    ];
    let mut cfl = small.to_vec();
    cfl.push(("\ndt = 0.01", "\ndt = 0.6"));
    let mut blow = small.to_vec();
    blow.extend([("\ndt = 0.01", "\ndt = 0.15"), ("var = 1.0", "var = 0.01")]);
    for (name, edits, want) in [
        ("cfl", cfl, "CFL number"),
        ("blow", blow, "non-finite values"),
    ] {
        let cfg = config_variant(
            dir.path(),
            "configs/kolmogorov_letkf.toml",
            &format!("{name}.toml"),
            &edits,
        );
        let out = dir.path().join(format!("{name}.nc"));
        let o = genda(&["run", cfg.to_str().unwrap(), "-o", out.to_str().unwrap()]);
        let t = text(&o);
        assert!(!o.status.success(), "{name}: {t}");
        assert_eq!(t.matches(want).count(), 1, "{name}: {t}");
        assert!(!t.contains("panicked"), "{t}");
        assert!(!out.exists(), "{name}: partial output left behind");
    }
}

/// Ω on SPEKF: its closed-form mixture baseline and the full method (residual score + annealed
/// Langevin) both beat the EnKF on the hidden variables on the same truth and observations, and
/// the run file carries the hidden-variable distributional scores. Bad input: a model without
/// conditionally Gaussian structure, and observations that are not a selection of u, are one
/// clear error each without output.
#[test]
fn omega_beats_enkf_on_spekf_and_refuses_bad_input() {
    let dir = tempfile::tempdir().unwrap();
    let short = [
        ("cycles = 2000", "cycles = 400"),
        ("burn_in = 100", "burn_in = 50"),
    ];
    let full = config_variant(dir.path(), "configs/omega_spekf.toml", "o.toml", &short);
    let mut edits = short.to_vec();
    edits.push((
        "method = \"omega\"",
        "method = \"omega\"\nbaseline_only = true",
    ));
    let base = config_variant(dir.path(), "configs/omega_spekf.toml", "b.toml", &edits);
    let enkf = config_variant(
        dir.path(),
        "configs/spekf_cg.toml",
        "e.toml",
        &[
            ("cycles = 2000", "cycles = 400"),
            ("burn_in = 100", "burn_in = 50"),
        ],
    );
    let hidden = |cfg: &std::path::Path, name: &str| -> (f64, f64) {
        let out = dir.path().join(name);
        let o = genda(&[
            "run",
            cfg.to_str().unwrap(),
            "-o",
            out.to_str().unwrap(),
            "--quiet",
        ]);
        assert!(o.status.success(), "{}", text(&o));
        let k = nc_attr_f64(&out, "kurtosis_error_hidden");
        assert!(k.is_finite() && k >= 0.0, "{k}");
        (
            nc_attr_f64(&out, "rmse_analysis_hidden_time_mean"),
            nc_attr_f64(&out, "crps_analysis_hidden_time_mean"),
        )
    };
    let (e, b, f) = (
        hidden(&enkf, "e.nc"),
        hidden(&base, "b.nc"),
        hidden(&full, "o.nc"),
    );
    eprintln!("hidden RMSE/CRPS: EnKF {e:?}, Ω baseline {b:?}, Ω {f:?}");
    assert!(b.0 < e.0 && b.1 < e.1, "baseline {b:?} vs EnKF {e:?}");
    assert!(f.0 < e.0 && f.1 < e.1, "Ω {f:?} vs EnKF {e:?}");

    let bad = [
        (
            "configs/l96_sakov2008.toml",
            vec![
                ("method = \"etkf\"", "method = \"omega\""),
                ("inflation = 1.02", ""),
                ("rotation = false", ""),
            ],
            "lorenz96 has no conditionally Gaussian structure",
        ),
        (
            "configs/omega_spekf.toml",
            vec![("operator = \"sparse\"", "operator = \"arctan\"")],
            "omega observes the conditionally Gaussian model's observed variables directly",
        ),
        (
            "configs/omega_surrogate_lorenz96.toml",
            vec![("\nsurrogate = \"fitted\"", "\n")],
            "cg_lorenz96 with y_advection > 0 has no conditionally Gaussian structure",
        ),
        (
            "configs/l96_sakov2008.toml",
            vec![
                (
                    "method = \"etkf\"",
                    "method = \"omega\"\nsurrogate = \"fitted\"",
                ),
                ("inflation = 1.02", ""),
                ("rotation = false", ""),
            ],
            "lorenz96 has no conditionally Gaussian surrogate",
        ),
    ];
    for (i, (cfg, edits, msg)) in bad.iter().enumerate() {
        let c = config_variant(dir.path(), cfg, &format!("bad{i}.toml"), edits);
        assert_run_fails_without_output(&c, &dir.path().join(format!("bad{i}.nc")), msg);
    }
}

/// Ω on a truth that is not conditionally Gaussian (two-layer L96 with self-advected small
/// scales): the baseline made of the fitted CG surrogate (the mean stochastic model) beats the
/// truncated surrogate's and EnKF's hidden RMSE.
#[test]
fn omega_with_a_fitted_surrogate_on_a_non_cg_truth() {
    let dir = tempfile::tempdir().unwrap();
    let short = [
        ("cycles = 500", "cycles = 60"),
        ("burn_in = 50", "burn_in = 10"),
        (
            "method = \"omega\"",
            "method = \"omega\"\nbaseline_only = true",
        ),
    ];
    let run = |name: &str, edits: &[(&str, &str)]| -> f64 {
        let mut e = short.to_vec();
        e.extend_from_slice(edits);
        let cfg = config_variant(
            dir.path(),
            "configs/omega_surrogate_lorenz96.toml",
            &format!("{name}.toml"),
            &e,
        );
        let out = dir.path().join(format!("{name}.nc"));
        let o = genda(&["run", cfg.to_str().unwrap(), "-o", out.to_str().unwrap()]);
        assert!(o.status.success(), "{}", text(&o));
        nc_attr_f64(&out, "rmse_analysis_hidden_time_mean")
    };
    let fitted = run("fitted", &[]);
    let truncated = run(
        "truncated",
        &[("\nsurrogate = \"fitted\"", "\nsurrogate = \"truncated\"")],
    );
    let enkf = run(
        "enkf",
        &[
            (
                "method = \"omega\"\nbaseline_only = true",
                "method = \"enkf\"",
            ),
            ("\nsurrogate = \"fitted\"", "\n"),
            ("bandwidth_scale = 1.0", ""),
            ("residual_steps = 30", ""),
            ("history = 3", ""),
            ("levels = 10", ""),
            ("steps_per_level = 3", ""),
            ("eps = 2e-4", ""),
            ("t_start = 0.05", ""),
        ],
    );
    eprintln!("hidden RMSE: fitted {fitted}, truncated {truncated}, EnKF {enkf}");
    assert!(
        fitted < truncated && fitted < enkf,
        "{fitted} {truncated} {enkf}"
    );
}

/// MASF and SF train their prior score on CPU and assimilate L63 with a 100-step gap: the
/// analysis error of MASF is below the observation error (SF: finite, below 2.5 times it). A
/// nonlinear operator given to MASF's exact-likelihood path is one clear error without output.
#[test]
fn masf_and_sf_learn_a_prior_and_assimilate_l63() {
    let dir = tempfile::tempdir().unwrap();
    let short = [
        ("cycles = 300", "cycles = 40"),
        ("burn_in = 50", "burn_in = 10"),
        ("steps = 150", "steps = 80"),
        ("pretrain_steps = 1000", "pretrain_steps = 400"),
        ("train_steps = 100", "train_steps = 40"),
    ];
    let rmse = |cfg: &std::path::Path, name: &str| -> f64 {
        let out = dir.path().join(name);
        let o = genda(&[
            "run",
            cfg.to_str().unwrap(),
            "-o",
            out.to_str().unwrap(),
            "--quiet",
        ]);
        assert!(o.status.success(), "{}", text(&o));
        nc_attr_f64(&out, "rmse_analysis_time_mean")
    };
    let masf = config_variant(dir.path(), "configs/masf_l63_gap100.toml", "m.toml", &short);
    let mut sf_edits = short.to_vec();
    sf_edits.push(("method = \"masf\"", "method = \"sf\""));
    sf_edits.push(("sampler = \"bridge\"", "process = \"vp\""));
    let sf = config_variant(
        dir.path(),
        "configs/masf_l63_gap100.toml",
        "s.toml",
        &sf_edits,
    );
    let (m, s) = (rmse(&masf, "m.nc"), rmse(&sf, "s.nc"));
    eprintln!("L63 gap 100, 40 cycles: MASF {m}, SF {s}");
    let obs_sd = 2f64.sqrt();
    assert!(
        m < obs_sd && s.is_finite() && s < 2.5 * obs_sd,
        "MASF {m}, SF {s}"
    );

    let bad = config_variant(
        dir.path(),
        "configs/masf_l63_gap100.toml",
        "bad.toml",
        &[
            ("operator = \"identity\"", "operator = \"arctan\""),
            ("error_var = 2.0", "error_var = 0.01"),
        ],
    );
    assert_run_fails_without_output(
        &bad,
        &dir.path().join("bad.nc"),
        "needs a linear measurement that selects state components",
    );
}

/// The reference variants end to end on L63: `genda truth` writes a small climatology, MASF
/// (the authors' sampler) and SF (their VE baseline) pre-train on it with the reference's
/// schedule, fine-tune every cycle and finish with finite scores. A setting of the other family
/// (sf with a MASF sampler, a reference-only key on genda's bridge sampler) is one clear error
/// before anything runs.
#[test]
fn masf_and_sf_reference_variants_run_and_refuse_mixed_settings() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = masf_l63_reference_config(dir.path(), 6);
    for (method, extra) in [("masf", "filter.steps=60"), ("sf", "filter.steps=120")] {
        let out = dir.path().join(format!("{method}.nc"));
        let o = genda(&[
            "run",
            cfg.to_str().unwrap(),
            "--set",
            &format!("filter.method=\"{method}\""),
            "--set",
            "filter.pretrain_epochs=20",
            "--set",
            "filter.train_epochs=5",
            "--set",
            extra,
            "-o",
            out.to_str().unwrap(),
            "--quiet",
        ]);
        assert!(o.status.success(), "{method}: {}", text(&o));
        let r = nc_attr_f64(&out, "rmse_analysis_time_mean");
        let stored = nc_attr_str(&out, "config");
        eprintln!("{method} reference, 5 cycles: analysis RMSE {r}");
        assert!(r.is_finite() && r > 0.0, "{method}: {r}");
        assert!(stored.contains("channels = 3"), "{stored}");
    }
    let mut bad = vec![
        (
            "configs/masf_l63_gap100.toml",
            "filter.method=\"sf\"",
            "sampler is masf's",
        ),
        (
            "configs/masf_l63_gap100.toml",
            "filter.holdout=0.1",
            "holdout is a setting of the reference variants",
        ),
        (
            "configs/masf_l63_gap100_reference.toml",
            "filter.process=\"vp\"",
            "process is sf's",
        ),
    ];
    // The network's device: "cuda" on a machine without a GPU is one clear error.
    if !genda::score::torch_info().cuda_available {
        bad.push((
            cfg.to_str().unwrap(),
            "filter.device=\"cuda\"",
            "sees no CUDA device",
        ));
    }
    for (base, set, msg) in bad {
        let out = dir.path().join("bad.nc");
        let o = genda(&[
            "run",
            base,
            "--set",
            set,
            "-o",
            out.to_str().unwrap(),
            "--quiet",
        ]);
        let t = text(&o);
        assert!(!o.status.success() && t.contains(msg), "{set}: {t}");
        assert!(!out.exists());
    }
}

/// SDA end to end: `genda truth` writes noisy Lorenz-63 windows, `genda train` fits a window
/// network (k = 2) on them, `genda smooth` samples whole 65-state trajectories given x every 8
/// steps and scores them against a particle-filter reference; `genda run` slides the window as a
/// filter. A window longer than the trajectory is a clear error without output.
#[test]
fn sda_trains_a_window_score_smooths_and_filters_l63() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let weights = train_sda_window(d, 2, 30000, 2000);
    let wline = format!("weights = {weights:?}");

    let smooth_edits = |extra: &[(&'static str, &'static str)]| {
        let mut e: Vec<(&str, &str)> = vec![
            ("weights = \"output/sda_l63_k2.h5\"", wline.as_str()),
            ("members = 256", "members = 32"),
            ("reference_particles = 16384", "reference_particles = 4096"),
        ];
        e.extend_from_slice(extra);
        e
    };
    let cfg = config_variant(
        d,
        "configs/sda_l63_smooth_lo.toml",
        "s.toml",
        &smooth_edits(&[]),
    );
    let out = d.join("smooth.nc");
    let o = genda(&["smooth", cfg.to_str().unwrap(), "-o", out.to_str().unwrap()]);
    let t = text(&o);
    assert!(o.status.success(), "{t}");
    eprintln!("{t}");
    assert_eq!(
        nc_dims(&out, "samples"),
        vec![
            ("member".to_string(), 32),
            ("time".to_string(), 65),
            ("x".to_string(), 3)
        ]
    );
    // A network trained this briefly (2000 steps, seconds) does not make dynamically consistent
    // trajectories (that takes ~30000 steps, docs/results.md), but the guidance must hold the
    // samples to the data: 9 observations with sd 0.4 give log p(y|x) near −4 for the particle
    // filter and about −1800 for unconditioned climatological trajectories.
    let rmse = nc_attr_f64(&out, "rmse_of_mean");
    let (w_sda, w_floor) = (
        nc_attr_f64(&out, "w1_to_reference"),
        nc_attr_f64(&out, "w1_reference_floor"),
    );
    let ll = nc_attr_f64(&out, "log_likelihood_mean");
    assert!(rmse.is_finite(), "SDA smoother RMSE {rmse}");
    assert!(
        w_floor < w_sda && w_sda.is_finite(),
        "W1 {w_sda} vs floor {w_floor}"
    );
    assert!(ll > -50.0, "log p(y|x) {ll}");
    let truth = nc_var(&out, "truth");
    assert_eq!(truth.len(), 65 * 3);

    // Bad input: 1 observation time = a 1-state trajectory, shorter than the window.
    let short = config_variant(
        d,
        "configs/sda_l63_smooth_lo.toml",
        "short.toml",
        &smooth_edits(&[("cycles = 9", "cycles = 1")]),
    );
    let bad_out = d.join("short.nc");
    let o = genda(&[
        "smooth",
        short.to_str().unwrap(),
        "-o",
        bad_out.to_str().unwrap(),
    ]);
    let t = text(&o);
    assert!(
        !o.status.success() && t.contains("fewer than the network's window of 5 states"),
        "{t}"
    );
    assert!(!bad_out.exists());

    // As a filter: the default window of 2 observation times every step is too short...
    let filt = |name: &str, extra: &[(&'static str, &'static str)]| {
        let mut e = smooth_edits(extra);
        e.push(("cycles = 65", "cycles = 8\nburn_in = 2"));
        e.push(("reference_particles = 4096", "reference_particles = 0"));
        config_variant(d, "configs/sda_l63_smooth_hi.toml", name, &e)
    };
    let f2 = filt("f2.toml", &[]);
    assert_run_fails_without_output(&f2, &d.join("f2.nc"), "raise window_cycles");
    // ... 6 observation times (6 states) hold the window; with every component observed the
    // analysis beats the observation error (sd 2).
    let f8 = filt(
        "f8.toml",
        &[
            // SDA's γ = 3e-2 diverges with 18 observations per window (measured); 0.1 does not.
            ("gamma = 3e-2", "gamma = 0.1\nwindow_cycles = 6"),
            ("members = 32", "members = 8"),
            (
                "operator = \"sparse\"   # x only",
                "operator = \"identity\"",
            ),
            ("stride = 3", ""),
        ],
    );
    let fout = d.join("f8.nc");
    let o = genda(&[
        "run",
        f8.to_str().unwrap(),
        "-o",
        fout.to_str().unwrap(),
        "--quiet",
    ]);
    assert!(o.status.success(), "{}", text(&o));
    let r = nc_attr_f64(&fout, "rmse_analysis_time_mean");
    eprintln!("SDA filter, all components every step (sd 2), 8 cycles: rmse {r}");
    assert!(r.is_finite() && r < 2.0, "SDA filter RMSE {r}");
}

/// Issue 8's Kolmogorov setup at toy size: `genda truth` simulates the truth on a 2× finer grid
/// and writes its block means; `genda run` replays that file (experiment.truth_file) as its
/// truth, or simulates the same fine-grid truth itself when no file is given; a file too short
/// for the run is a clear error without output.
#[test]
fn fine_grid_truth_is_coarsened_and_replayed_from_its_file() {
    let dir = tempfile::tempdir().unwrap();
    let toy = KOLMOGOROV_ISSUE8_TOY;
    let mut t_edits = toy.to_vec();
    t_edits.extend([
        ("cycles = 200", "cycles = 12"),
        ("spinup_steps = 100", "spinup_steps = 10"),
    ]);
    let tcfg = config_variant(
        dir.path(),
        "configs/kolmogorov_issue8_truth.toml",
        "t.toml",
        &t_edits,
    );
    let tnc = dir.path().join("t.nc");
    let o = genda(&["truth", tcfg.to_str().unwrap(), "-o", tnc.to_str().unwrap()]);
    assert!(o.status.success(), "{}", text(&o));
    let h5 = dir.path().join("t.h5");
    let traj = genda::io::read_trajectory(&h5).unwrap();
    assert_eq!((traj.times, traj.state_dim), (12, 256));
    assert!(
        (traj.dt - 0.02).abs() < 1e-15,
        "a model step is substeps · dt"
    );
    let h5s = h5.to_str().unwrap().to_string();
    let file_line = format!("truth_file = \"{h5s}\"");
    let mut r_edits = toy.to_vec();
    r_edits.extend([
        ("cycles = 30", "cycles = 4"),
        ("burn_in = 5", "burn_in = 0"),
        ("ensemble_spinup_steps = 50", "ensemble_spinup_steps = 5"),
        ("members = 20", "members = 8"),
        ("obs_every = 5", "obs_every = 3"),
        (
            "truth_file = \"output/kolmogorov_issue8_truth.h5\"",
            &file_line,
        ),
    ]);
    let rcfg = config_variant(
        dir.path(),
        "configs/kolmogorov_issue8_letkf.toml",
        "r.toml",
        &r_edits,
    );
    let rnc = dir.path().join("r.nc");
    let o = genda(&[
        "run",
        rcfg.to_str().unwrap(),
        "-o",
        rnc.to_str().unwrap(),
        "--quiet",
    ]);
    assert!(o.status.success(), "{}", text(&o));
    let replayed = nc_var(&rnc, "truth");
    let want: Vec<f64> = [2usize, 5, 8, 11]
        .iter()
        .flat_map(|&r| traj.data[r * 256..(r + 1) * 256].to_vec())
        .collect();
    assert_eq!(replayed, want, "cycle c replays row c · obs_every − 1");
    assert!(nc_attr_f64(&rnc, "rmse_analysis_time_mean").is_finite());

    // Without the file the run simulates the fine-grid truth itself: the same trajectory up to
    // round-off (its stepper stays in spectral space between observations).
    let s = std::fs::read_to_string(&rcfg)
        .unwrap()
        .replace(&file_line, "spinup_steps = 10");
    let scfg = dir.path().join("s.toml");
    std::fs::write(&scfg, s).unwrap();
    let snc = dir.path().join("s.nc");
    let o = genda(&[
        "run",
        scfg.to_str().unwrap(),
        "-o",
        snc.to_str().unwrap(),
        "--quiet",
    ]);
    assert!(o.status.success(), "{}", text(&o));
    let simulated = nc_var(&snc, "truth");
    let scale = want.iter().fold(0.0f64, |m, v| m.max(v.abs()));
    let diff = simulated
        .iter()
        .zip(&want)
        .fold(0.0f64, |m, (a, b)| m.max((a - b).abs()));
    assert!(
        scale > 0.1 && diff < 1e-8 * scale,
        "diff {diff}, scale {scale}"
    );

    // A file too short for the run.
    let long = std::fs::read_to_string(&rcfg)
        .unwrap()
        .replace("cycles = 4", "cycles = 5");
    let lcfg = dir.path().join("l.toml");
    std::fs::write(&lcfg, long).unwrap();
    assert_run_fails_without_output(
        &lcfg,
        &dir.path().join("l.nc"),
        "experiment.truth_file has 12 rows; 5 cycles of 3 rows need 15",
    );
}

/// MASF's offline policy: with `pretrain_data` and `prior_weights`, the first run pre-trains the
/// prior network and writes it, the next run loads it instead of training (the same analyses,
/// bit for bit), and a run of another method refuses the file.
#[test]
fn masf_offline_prior_is_trained_once_and_reused() {
    let dir = tempfile::tempdir().unwrap();
    let data = config_variant(
        dir.path(),
        "configs/masf_l63_gap100.toml",
        "d.toml",
        &[
            ("cycles = 300", "cycles = 400"),
            ("obs_every = 100", "obs_every = 10"),
        ],
    );
    let dnc = dir.path().join("d.nc");
    let o = genda(&["truth", data.to_str().unwrap(), "-o", dnc.to_str().unwrap()]);
    assert!(o.status.success(), "{}", text(&o));
    let h5 = dir.path().join("d.h5");
    let prior = dir.path().join("prior.h5");
    let lines = format!(
        "train_steps = 0\npretrain_data = \"{}\"\nprior_weights = \"{}\"",
        h5.display(),
        prior.display()
    );
    let edits = [
        ("cycles = 300", "cycles = 6"),
        ("burn_in = 50", "burn_in = 0"),
        ("steps = 150", "steps = 40"),
        ("pretrain_steps = 1000", "pretrain_steps = 200"),
        ("train_steps = 100", lines.as_str()),
    ];
    let cfg = config_variant(dir.path(), "configs/masf_l63_gap100.toml", "m.toml", &edits);
    let run = |name: &str| {
        let out = dir.path().join(name);
        let args = [
            "run",
            cfg.to_str().unwrap(),
            "-o",
            out.to_str().unwrap(),
            "--quiet",
        ];
        // RUST_LOG=info: the filter logs whether it trained or loaded the prior.
        let o = spawn_locked(
            std::process::Command::new(genda_bin())
                .args(args)
                .env("RUST_LOG", "info")
                .env("OMP_NUM_THREADS", "1"),
        )
        .wait_with_output()
        .unwrap();
        assert!(o.status.success(), "{}", text(&o));
        (text(&o), nc_var(&out, "analysis_mean"))
    };
    let (t1, a1) = run("1.nc");
    assert!(
        t1.contains("the pre-trained prior network saved to") && prior.exists(),
        "{t1}"
    );
    let (t2, a2) = run("2.nc");
    assert!(t2.contains("prior network loaded"), "{t2}");
    assert_eq!(a1, a2, "the loaded network gives the same analyses");
    let sf = std::fs::read_to_string(&cfg)
        .unwrap()
        .replace("method = \"masf\"", "method = \"sf\"")
        .replace("sampler = \"bridge\"", "process = \"vp\"");
    let sfc = dir.path().join("sf.toml");
    std::fs::write(&sfc, sf).unwrap();
    assert_run_fails_without_output(
        &sfc,
        &dir.path().join("sf.nc"),
        "this prior was trained for masf",
    );
}

/// `--set key=value` overrides any config key by its dotted path on every command that reads a
/// config: type-checked like the file, unknown keys refused before anything is written, and the
/// effective config is what the run file stores.
#[test]
fn set_overrides_config_keys_and_the_output_stores_the_effective_config() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("set.nc");
    let o = genda(&[
        "run",
        "configs/dapper/l63_sakov2012_etkf.toml",
        "--set",
        "experiment.cycles=40",
        "--set",
        "experiment.burn_in=4",
        "--set",
        "filter.members=7",
        "--set",
        "filter.inflation=1.1",
        "-o",
        out.to_str().unwrap(),
        "--quiet",
    ]);
    assert!(o.status.success(), "{}", text(&o));
    assert!(text(&o).contains("etkf with 7 members"), "{}", text(&o));
    assert_eq!(nc_var(&out, "rmse_analysis").len(), 40);
    {
        let _g = nc_lock();
        let f = netcdf::open(&out).unwrap();
        match f.attribute("config").unwrap().value().unwrap() {
            netcdf::AttributeValue::Str(s) => {
                assert!(
                    s.contains("members = 7") && s.contains("inflation = 1.1"),
                    "{s}"
                )
            }
            v => panic!("{v:?}"),
        }
    }
    // `genda check` shows the effective config too.
    let o = genda(&[
        "check",
        "configs/dapper/l63_sakov2012_etkf.toml",
        "--set",
        "filter.rotation=false",
    ]);
    assert!(
        o.status.success() && text(&o).contains("rotation = false"),
        "{}",
        text(&o)
    );
    let d = dir.path();
    let bad = d.join("bad.nc");
    for (set, needle) in [
        ("filter.membrs=3", "unknown field `membrs`"),
        ("filter.members=many", "filter.members=many"),
        ("experiment.cycles.x=1", "is a value, not a table"),
        ("filter.members", "expected key=value"),
    ] {
        assert_clean_failure(
            d,
            &[
                "run",
                "configs/dapper/l63_sakov2012_etkf.toml",
                "--set",
                set,
                "-o",
                bad.to_str().unwrap(),
            ],
            needle,
        );
    }
    // A command without a config refuses it.
    let o = genda(&["doctor", "--set", "filter.members=3"]);
    assert!(
        !o.status.success() && text(&o).contains("reads no config"),
        "{}",
        text(&o)
    );
}

/// `experiment.ensemble_start_step = k`: the members join k steps into the first cycle, so the
/// first forecast is obs_every − k steps long (EnSF's published loop analyses after one step):
/// with k = 9 of 10 the first forecast mean is that of a one-step forecast of the same draws.
#[test]
fn ensemble_start_step_shortens_the_first_forecast() {
    let dir = tempfile::tempdir().unwrap();
    let run = |name: &str, sets: &[&str]| {
        let out = dir.path().join(name);
        let mut args = vec![
            "run",
            "configs/dapper/l63_sakov2012_etkf.toml",
            "-o",
            out.to_str().unwrap(),
            "--quiet",
        ];
        for s in sets {
            args.push("--set");
            args.push(s);
        }
        let o = genda(&args);
        assert!(o.status.success(), "{}", text(&o));
        nc_var(&out, "forecast_mean")
    };
    let a = run(
        "a.nc",
        &[
            "experiment.cycles=3",
            "experiment.burn_in=0",
            "observations.obs_every=10",
            "experiment.ensemble_start_step=9",
        ],
    );
    let b = run(
        "b.nc",
        &[
            "experiment.cycles=3",
            "experiment.burn_in=0",
            "observations.obs_every=1",
        ],
    );
    assert_eq!(a[..3], b[..3]);
    let c = run(
        "c.nc",
        &[
            "experiment.cycles=3",
            "experiment.burn_in=0",
            "observations.obs_every=10",
        ],
    );
    assert_ne!(a[..3], c[..3]);
    assert_clean_failure(
        dir.path(),
        &[
            "run",
            "configs/dapper/l63_sakov2012_etkf.toml",
            "--set",
            "experiment.ensemble_start_step=25",
        ],
        "ensemble_start_step",
    );
}

/// A weighted ensemble (DAPPER's particle filter) is saved with its weights: the forecast mean
/// in the run file is the weighted mean of the saved forecast members, and the weights are
/// normalised; carried weights are unequal on cycles without resampling.
#[test]
fn particle_filter_saves_its_weights_with_the_ensemble() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("pf.nc");
    let o = genda(&[
        "run",
        "configs/dapper/l63_sakov2012_pf.toml",
        "--set",
        "experiment.cycles=30",
        "--set",
        "experiment.burn_in=0",
        "--set",
        "output.save_ensemble=true",
        "-o",
        out.to_str().unwrap(),
        "--quiet",
    ]);
    assert!(o.status.success(), "{}", text(&o));
    let (n, m) = (3, 100);
    let fe = nc_var(&out, "forecast_ensemble");
    let fw = nc_var(&out, "forecast_weights");
    let fm = nc_var(&out, "forecast_mean");
    let aw = nc_var(&out, "analysis_weights");
    assert_eq!(fw.len(), 30 * m);
    let mut unequal = 0;
    for k in 0..30 {
        let w = &fw[k * m..(k + 1) * m];
        assert!((w.iter().sum::<f64>() - 1.0).abs() < 1e-12);
        assert!((aw[k * m..(k + 1) * m].iter().sum::<f64>() - 1.0).abs() < 1e-12);
        for i in 0..n {
            let mean: f64 = (0..m).map(|j| w[j] * fe[(k * m + j) * n + i]).sum();
            assert!(
                (mean - fm[k * n + i]).abs() < 1e-12,
                "cycle {k}: {mean} vs {}",
                fm[k * n + i]
            );
        }
        if w.iter().any(|&v| (v - w[0]).abs() > 1e-15) {
            unequal += 1;
        }
    }
    assert!(unequal > 0, "the weights were never carried");
}

/// `genda posterior` on a linear-Gaussian analysis (prior_steps = 0, identity observations):
/// the reference is the exact Kalman posterior, and the ETKF — exact for this case up to
/// sampling — is as close to it as an exact N-point sample (the floor), while the prior is far.
#[test]
fn posterior_check_puts_the_etkf_at_the_floor_on_a_gaussian_case() {
    let dir = tempfile::tempdir().unwrap();
    let md = dir.path().join("post.md");
    let o = genda(&[
        "posterior",
        "configs/posterior_l63_arctan.toml",
        "--set",
        "observations.operator=identity",
        "--set",
        "observations.error_var=1.0",
        "--set",
        "posterior.prior_steps=0",
        "--set",
        "posterior.methods=[{method=\"etkf\"},{method=\"pf\", ner=1.0}]",
        "--seeds",
        "1,2,3",
        "--members",
        "50",
        "-o",
        md.to_str().unwrap(),
    ]);
    assert!(o.status.success(), "{}", text(&o));
    let t = String::from_utf8_lossy(&o.stdout).to_string();
    assert_eq!(t.matches("exact Gaussian posterior").count(), 3, "{t}");
    let w2 = |label: &str| -> f64 {
        let line = t
            .lines()
            .find(|l| l.starts_with(&format!("| 50 | {label} |")))
            .unwrap_or_else(|| panic!("no row {label}: {t}"));
        line.split('|')
            .nth(3)
            .unwrap()
            .trim()
            .split(' ')
            .next()
            .unwrap()
            .parse()
            .unwrap()
    };
    let (floor, prior, etkf, pf) = (w2("reference (floor)"), w2("prior"), w2("etkf"), w2("pf"));
    assert!(etkf < 1.2 * floor, "etkf {etkf} vs floor {floor}");
    assert!(
        prior > 2.5 * floor && pf > etkf,
        "prior {prior}, pf {pf}, floor {floor}"
    );
    assert!(std::fs::read_to_string(&md)
        .unwrap()
        .contains("| 50 | etkf |"));
    // A config without a [posterior] table is refused, naming it.
    assert_clean_failure(
        dir.path(),
        &["posterior", "configs/dapper/l63_sakov2012_etkf.toml"],
        "[posterior]",
    );
}

/// Weight and training-data files named in a config are opened and checked when the filter is
/// built, before any model step: with a spin-up of 10^10 steps (minutes), a missing DAISI or SDA
/// network and a missing MASF pre-training set are each one clear error within seconds.
#[test]
fn files_a_method_reads_are_checked_before_the_spinup() {
    let dir = tempfile::tempdir().unwrap();
    for (base, msg) in [
        ("configs/daisi_l63.toml", "output/l63_interpolant.h5"),
        ("configs/sda_l63_gap100.toml", "output/sda_l63_gap100_k4.h5"),
        (
            "configs/masf_l63_gap100_reference.toml",
            "output/masf_l63_climatology.truth.h5",
        ),
    ] {
        let missing = dir.path().join("missing").join(msg);
        let to = missing.to_str().unwrap();
        let cfg = config_variant(dir.path(), base, "c.toml", &[(msg, to)]);
        let out = dir.path().join("c.nc");
        let t0 = std::time::Instant::now();
        let o = genda(&[
            "run",
            cfg.to_str().unwrap(),
            "--set",
            "experiment.spinup_steps=10000000000",
            "-o",
            out.to_str().unwrap(),
            "--quiet",
        ]);
        let t = text(&o);
        assert!(!o.status.success() && t.contains(to), "{base}: {t}");
        assert!(t0.elapsed().as_secs() < 30, "{base}: {:?}", t0.elapsed());
        assert!(!out.exists());
    }
}

/// The training-free filters' GPU option on a machine without one: `device = "cuda"` is one
/// clear error naming `filter.device` with no output; `"auto"` runs (on the CPU path).
#[test]
fn ensf_and_kde_device_cuda_without_a_gpu_is_a_clear_error() {
    if tch::Cuda::device_count() > 0 {
        eprintln!("a GPU is visible: the no-GPU error cannot be checked here");
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("out.nc");
    let o = out.to_str().unwrap();
    let small = [
        ("configs/l96_1m_ensf.toml", "model.dim=40"),
        ("configs/l63_arctan_kde.toml", "experiment.burn_in=1"),
    ];
    for (cfg, size) in small {
        let args = |dev: &str| {
            vec![
                "run".to_string(),
                cfg.to_string(),
                "--set".into(),
                size.into(),
                "--set".into(),
                "experiment.cycles=3".into(),
                "--set".into(),
                format!("filter.device=\"{dev}\""),
                "-o".into(),
                o.into(),
            ]
        };
        let cuda = args("cuda");
        let cuda: Vec<&str> = cuda.iter().map(String::as_str).collect();
        assert_clean_failure(dir.path(), &cuda, "filter.device");
        let auto = args("auto");
        let auto: Vec<&str> = auto.iter().map(String::as_str).collect();
        let r = genda(&auto);
        assert!(r.status.success(), "{cfg} with auto: {}", text(&r));
        std::fs::remove_file(&out).unwrap();
    }
}

/// `output.path_rmse` pools every model step from the first scored analysis to the last: a free
/// run observed every 3rd step for 4 cycles (analyses at steps 3, 6, 9, 12 and the 6 forecast
/// states between them) scores the same 10 states as the same run observed every step for 12
/// cycles with 2 burn-in cycles; and with obs_every = 1 it is the RMS of the analysis RMSEs.
#[test]
fn path_rmse_pools_every_model_step_between_scored_analyses() {
    let dir = tempfile::tempdir().unwrap();
    let run = |obs_every: usize, cycles: usize, burn_in: usize| {
        let cfg = dir.path().join(format!("p{obs_every}.toml"));
        std::fs::write(
            &cfg,
            format!(
                "[experiment]\nname = \"p\"\nseed = 3\ncycles = {cycles}\nburn_in = {burn_in}\n\
                 [model]\nkind = \"lorenz63\"\ndt = 0.01\n\
                 [initial]\nmean = [1.0, 2.0, 20.0]\nvar = 4.0\n\
                 [observations]\noperator = \"identity\"\nerror_var = 1.0\nobs_every = {obs_every}\n\
                 [filter]\nmethod = \"none\"\nmembers = 5\n\
                 [output]\npath_rmse = true\n"
            ),
        )
        .unwrap();
        let out = dir.path().join(format!("p{obs_every}.nc"));
        let o = genda(&[
            "run",
            cfg.to_str().unwrap(),
            "-o",
            out.to_str().unwrap(),
            "--quiet",
        ]);
        assert!(o.status.success(), "{}", text(&o));
        out
    };
    let every3 = run(3, 4, 0);
    let every1 = run(1, 12, 2);
    let (p3, p1) = (
        nc_attr_f64(&every3, "rmse_path"),
        nc_attr_f64(&every1, "rmse_path"),
    );
    assert!(p3 > 0.1 && ((p3 - p1) / p1).abs() < 1e-12, "{p3} vs {p1}");
    let a = nc_var(&every1, "rmse_analysis");
    let rms = (a[2..].iter().map(|r| r * r).sum::<f64>() / 10.0).sqrt();
    assert!(((rms - p1) / p1).abs() < 1e-12, "{rms} vs {p1}");
    // A replayed truth holds no states between observations: refused by name.
    let cfg = dir.path().join("p1.toml");
    let text_cfg = std::fs::read_to_string(&cfg)
        .unwrap()
        .replace("burn_in = 2\n", "burn_in = 2\ntruth_file = \"t.h5\"\n");
    std::fs::write(&cfg, text_cfg).unwrap();
    let o = genda(&["run", cfg.to_str().unwrap(), "--quiet"]);
    assert!(!o.status.success());
    assert!(text(&o).contains("output.path_rmse"), "{}", text(&o));
}

/// `experiment.samples`: `genda truth` writes that many independent draws of the truth's
/// distribution, each integrated `spinup_steps`: without spin-up, row k is the draw
/// `draw_truth_sample(k + 1)`; the rows are distinct; a set of 3 is the first 3 rows of a set
/// of 5 (each sample its own key); no NetCDF file is written.
#[test]
fn truth_samples_are_independent_keyed_draws() {
    let dir = tempfile::tempdir().unwrap();
    let write = |samples: usize, spinup: usize| {
        let cfg = config_variant(
            dir.path(),
            "configs/l96_sakov2008.toml",
            &format!("s{samples}_{spinup}.toml"),
            &[
                (
                    "cycles = 5000",
                    &format!("cycles = 1\nsamples = {samples}\nspinup_steps = {spinup}"),
                ),
                ("burn_in = 1000", "burn_in = 0"),
            ],
        );
        let nc = dir.path().join(format!("s{samples}_{spinup}.nc"));
        let o = genda(&["truth", cfg.to_str().unwrap(), "-o", nc.to_str().unwrap()]);
        assert!(o.status.success(), "{}", text(&o));
        assert!(!nc.exists(), "no NetCDF file for samples");
        let traj = genda::io::read_trajectory(&dir.path().join(format!("s{samples}_{spinup}.h5")))
            .unwrap();
        assert_eq!((traj.times, traj.state_dim), (samples, 40));
        (cfg, traj.data)
    };
    let (cfg, raw) = write(3, 0);
    let c = genda::config::Config::from_file(&cfg).unwrap();
    for k in 0..3 {
        let x = c
            .initial
            .draw_truth_sample(&c.model, c.experiment.seed, k as u64 + 1)
            .unwrap();
        assert_eq!(&raw[k * 40..(k + 1) * 40], &x[..], "sample {k}");
    }
    let (_, three) = write(3, 20);
    let (_, five) = write(5, 20);
    assert_eq!(&five[..3 * 40], &three[..]);
    assert_ne!(&three[..40], &three[40..80]);
    assert_ne!(&three[..40], &raw[..40], "the spin-up moved the states");
}

/// Stacked-field settings that do not match the model's (u, v) state are refused by name
/// before anything runs: the observations' and the LETKF's field counts.
#[test]
fn field_counts_that_do_not_match_the_velocity_state_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let base = "configs/masf/kolmogorov_reference_letkf.toml";
    let obs = config_variant(dir.path(), base, "o.toml", &[("fields = 2\n", "")]);
    let out = dir.path().join("o.nc");
    assert_run_fails_without_output(&obs, &out, "observations.fields = 2");
    let filt = config_variant(
        dir.path(),
        base,
        "f.toml",
        &[("geometry = \"torus\"\nfields = 2", "geometry = \"torus\"")],
    );
    assert_run_fails_without_output(&filt, &out, "filter.fields = 2");
}
