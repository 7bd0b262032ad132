//! `genda sweep` end to end: the same numbers as single `genda run`s, resumable after a
//! signal, changed configs detected by their hash, bad sweep files refused before anything
//! runs, the same results on 1 and 2 ranks, and the tables and plots written.
mod common;
use common::*;
use std::path::{Path, PathBuf};

/// A small L63 sweep (2 methods × 2 sizes × 2 seeds) over the DAPPER sakov2012 setup.
fn write_sweep(dir: &Path, extra: &str) -> PathBuf {
    let base = repo_file("configs/dapper/l63_sakov2012_etkf.toml");
    let p = dir.join("s.toml");
    std::fs::write(
        &p,
        format!(
            r#"[sweep]
name = "t"
base = "{}"
seeds = [1, 2]
out_dir = "{}"
set = {{ "experiment.cycles" = 300, "experiment.burn_in" = 50 }}
[[method]]
name = "etkf"
[[method]]
name = "enkf"
filter = {{ method = "enkf", members = 10, inflation = 1.02 }}
[axes]
"filter.members" = [10, 20]
{extra}
"#,
            base.display(),
            dir.join("out").display()
        ),
    )
    .unwrap();
    p
}

fn csv_rows(path: &Path) -> Vec<Vec<String>> {
    std::fs::read_to_string(path)
        .unwrap()
        .lines()
        .map(|l| l.split(',').map(String::from).collect())
        .collect()
}

/// Every column but the wall time.
fn without_wall(rows: &[Vec<String>]) -> Vec<Vec<String>> {
    let w = rows[0].iter().position(|h| h == "wall_s").unwrap();
    rows.iter()
        .map(|r| {
            r.iter()
                .enumerate()
                .filter(|(i, _)| *i != w)
                .map(|(_, v)| v.clone())
                .collect()
        })
        .collect()
}

#[test]
fn sweep_results_equal_single_runs_and_tables_are_written() {
    let dir = tempfile::tempdir().unwrap();
    let s = write_sweep(dir.path(), "");
    // With output.path_rmse: its column too.
    let text_s = std::fs::read_to_string(&s).unwrap().replace(
        "\"experiment.burn_in\" = 50",
        "\"experiment.burn_in\" = 50, \"output.path_rmse\" = true",
    );
    std::fs::write(&s, text_s).unwrap();
    let o = genda(&["sweep", s.to_str().unwrap(), "--jobs", "2", "--quiet"]);
    assert!(o.status.success(), "{}", text(&o));
    let out = dir.path().join("out");
    let rows = csv_rows(&out.join("results.csv"));
    assert_eq!(rows.len(), 1 + 8, "{rows:?}");
    let h = &rows[0];
    let col = |n: &str| h.iter().position(|x| x == n).unwrap();
    // The enkf row with 20 members, seed 2, against `genda run` of the same settings.
    let row = rows
        .iter()
        .find(|r| r[0] == "enkf" && r[col("filter.members")] == "20" && r[col("seed")] == "2")
        .unwrap();
    let cfg = config_variant(
        dir.path(),
        "configs/dapper/l63_sakov2012_etkf.toml",
        "single.toml",
        &[
            ("method = \"etkf\"", "method = \"enkf\""),
            ("members = 10", "members = 20"),
            ("rotation = true", ""),
        ],
    );
    let nc = dir.path().join("single.nc");
    let o = genda(&[
        "run",
        cfg.to_str().unwrap(),
        "--quiet",
        "--seed",
        "2",
        "--cycles",
        "300",
        "--burn-in",
        "50",
        "--set",
        "output.path_rmse=true",
        "-o",
        nc.to_str().unwrap(),
    ]);
    assert!(o.status.success(), "{}", text(&o));
    for (attr, c) in [
        ("rmse_path", "rmse_path"),
        ("rmse_analysis_time_mean", "rmse_analysis"),
        ("rmse_forecast_time_mean", "rmse_forecast"),
        ("spread_analysis_time_mean", "spread_analysis"),
        ("spread_forecast_time_mean", "spread_forecast"),
    ] {
        let want = nc_attr_f64(&nc, attr);
        let got: f64 = row[col(c)].parse().unwrap();
        assert_eq!(
            got.to_bits(),
            want.to_bits(),
            "{c}: sweep {got} vs run {want}"
        );
    }
    // NetCDF: one dimension per axis plus method and seed, the same numbers as the CSV.
    let v = nc_dims(&out.join("results.nc"), "rmse_analysis");
    let names: Vec<&str> = v.iter().map(|(n, _)| n.as_str()).collect();
    assert_eq!(names, ["method", "filter.members", "seed"]);
    assert_eq!(v.iter().map(|d| d.1).collect::<Vec<_>>(), [2, 2, 2]);
    let grid = nc_var(&out.join("results.nc"), "rmse_analysis");
    // C order (method, members, seed): enkf = 1, 20 members = 1, seed 2 = 1.
    assert_eq!(
        grid[4 + 2 + 1],
        row[col("rmse_analysis")].parse::<f64>().unwrap()
    );
    assert_eq!(
        nc_var(&out.join("results.nc"), "filter.members"),
        [10.0, 20.0]
    );
    // Markdown: one row per method × members with mean ± std over the two seeds.
    let md = std::fs::read_to_string(out.join("results.md")).unwrap();
    assert_eq!(
        md.lines()
            .filter(|l| l.starts_with("| etkf |") || l.starts_with("| enkf |"))
            .count(),
        4,
        "{md}"
    );
    assert!(md.contains(" ± "), "{md}");
    // A plot with one line per method.
    let o = genda(&["plot", out.to_str().unwrap()]);
    assert!(o.status.success(), "{}", text(&o));
    assert!(out.join("results.png").metadata().unwrap().len() > 10_000);
}

#[test]
fn sweep_resumes_skips_done_work_and_detects_changed_configs() {
    let dir = tempfile::tempdir().unwrap();
    let s = write_sweep(dir.path(), "");
    let o = genda(&["sweep", s.to_str().unwrap(), "--quiet"]);
    assert!(o.status.success(), "{}", text(&o));
    let first = csv_rows(&dir.path().join("out/results.csv"));
    // A rerun runs nothing.
    let o = genda(&["sweep", s.to_str().unwrap(), "--quiet"]);
    assert!(o.status.success(), "{}", text(&o));
    let so = String::from_utf8_lossy(&o.stdout);
    assert!(
        so.contains("0 run now") && so.contains("8 already in the store"),
        "{so}"
    );
    assert_eq!(csv_rows(&dir.path().join("out/results.csv")), first);
    // A changed setting (here through --set) changes every config hash: refused, nothing run.
    let o = genda(&[
        "sweep",
        s.to_str().unwrap(),
        "--quiet",
        "--set",
        "observations.error_var=3.0",
    ]);
    assert!(!o.status.success());
    let e = String::from_utf8_lossy(&o.stderr);
    assert!(
        e.contains("different config") && e.contains("--on-change rerun"),
        "{e}"
    );
    assert_eq!(csv_rows(&dir.path().join("out/results.csv")), first);
    // Rerun on request: new rows supersede the old ones.
    let o = genda(&[
        "sweep",
        s.to_str().unwrap(),
        "--quiet",
        "--set",
        "observations.error_var=3.0",
        "--on-change",
        "rerun",
    ]);
    assert!(o.status.success(), "{}", text(&o));
    let again = csv_rows(&dir.path().join("out/results.csv"));
    assert_eq!(again.len(), first.len());
    assert_ne!(without_wall(&again), without_wall(&first));
}

#[test]
fn sigterm_keeps_finished_experiments_and_a_rerun_completes_the_same_table() {
    let dir = tempfile::tempdir().unwrap();
    // Longer experiments: 12 of ~0.3 s each on one job.
    let s = write_sweep(dir.path(), "");
    let text_s = std::fs::read_to_string(&s)
        .unwrap()
        .replace(
            "\"experiment.cycles\" = 300",
            "\"experiment.cycles\" = 6000",
        )
        .replace("seeds = [1, 2]", "seeds = [1, 2, 3]");
    std::fs::write(&s, text_s).unwrap();
    let store = dir.path().join("out/runs.rank0.jsonl");
    let child = spawn_locked(
        std::process::Command::new(genda_bin())
            .args(["sweep", s.to_str().unwrap(), "--jobs", "1", "--quiet"])
            .env("RUST_LOG", "warn"),
    );
    let t0 = std::time::Instant::now();
    while std::fs::read_to_string(&store).map_or(0, |t| t.lines().count()) < 2 {
        assert!(
            t0.elapsed().as_secs() < 120,
            "no experiment finished in 2 minutes"
        );
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    let pid = child.id().to_string();
    assert!(std::process::Command::new("kill")
        .args(["-TERM", &pid])
        .status()
        .unwrap()
        .success());
    let o = child.wait_with_output().unwrap();
    assert!(!o.status.success(), "{}", text(&o));
    let e = String::from_utf8_lossy(&o.stderr);
    assert!(e.contains("stopped by a signal"), "{e}");
    let kept = std::fs::read_to_string(&store).unwrap().lines().count();
    assert!((2..12).contains(&kept), "{kept} rows kept");
    // Continue: only the rest runs; the table equals an uninterrupted sweep's.
    let o = genda(&["sweep", s.to_str().unwrap(), "--quiet"]);
    assert!(o.status.success(), "{}", text(&o));
    let so = String::from_utf8_lossy(&o.stdout);
    assert!(so.contains(&format!("{kept} already in the store")), "{so}");
    let resumed = csv_rows(&dir.path().join("out/results.csv"));
    let o = genda(&[
        "sweep",
        s.to_str().unwrap(),
        "--quiet",
        "--out-dir",
        dir.path().join("whole").to_str().unwrap(),
    ]);
    assert!(o.status.success(), "{}", text(&o));
    let whole = csv_rows(&dir.path().join("whole/results.csv"));
    assert_eq!(without_wall(&resumed), without_wall(&whole));
}

#[test]
fn bad_sweep_files_are_refused_before_anything_runs() {
    for (extra, needle) in [
        (
            "\"filter.localization_radius\" = [2.0]",
            "localization_radius",
        ),
        ("\"filter.membrs\" = [2]", "membrs"),
        (
            "\"observations.error_var\" = [\"big\"]",
            "observations.error_var = \"big\"",
        ),
        ("\"model.dt\" = []", "axis `model.dt` is empty"),
    ] {
        let dir = tempfile::tempdir().unwrap();
        let s = write_sweep(dir.path(), extra);
        let o = genda(&["sweep", s.to_str().unwrap(), "--quiet"]);
        assert!(!o.status.success(), "{extra}: {}", text(&o));
        let e = String::from_utf8_lossy(&o.stderr);
        assert!(e.contains(needle), "{extra}: {e}");
        assert_eq!(e.matches("genda: error").count(), 1, "one error: {e}");
        assert!(!dir.path().join("out").exists(), "{extra}: something ran");
    }
}

#[test]
fn sweep_on_two_ranks_gives_the_same_table() {
    let dir = tempfile::tempdir().unwrap();
    let s = write_sweep(dir.path(), "");
    let o = genda(&[
        "sweep",
        s.to_str().unwrap(),
        "--quiet",
        "--out-dir",
        dir.path().join("one").to_str().unwrap(),
    ]);
    assert!(o.status.success(), "{}", text(&o));
    let o = mpirun(
        2,
        &[
            "sweep",
            s.to_str().unwrap(),
            "--quiet",
            "--jobs",
            "1",
            "--out-dir",
            dir.path().join("two").to_str().unwrap(),
        ],
    );
    assert!(o.status.success(), "{}", text(&o));
    // Both ranks ran experiments (each its own shard) and rank 0 tabulated all of them.
    assert!(dir.path().join("two/runs.rank0.jsonl").exists());
    assert!(dir.path().join("two/runs.rank1.jsonl").exists());
    let one = csv_rows(&dir.path().join("one/results.csv"));
    let two = csv_rows(&dir.path().join("two/results.csv"));
    assert_eq!(without_wall(&one), without_wall(&two));
}

#[test]
fn learned_methods_in_a_parallel_sweep_equal_their_single_runs() {
    // MASF and SF build and train networks: two at a time in one process must give what each
    // gives alone (libtorch's global generator seeds the initial weights).
    let dir = tempfile::tempdir().unwrap();
    let s = dir.path().join("m.toml");
    std::fs::write(
        &s,
        format!(
            r#"[sweep]
name = "m"
base = "{}"
seeds = [1, 2]
out_dir = "{}"
set = {{ "experiment.cycles" = 4, "experiment.burn_in" = 1, "filter.pretrain_steps" = 200, "filter.train_steps" = 20 }}
[[method]]
name = "masf"
[[method]]
name = "masf_additive"
set = {{ "filter.sampler" = "additive" }}
"#,
            repo_file("configs/masf_l63_gap100.toml").display(),
            dir.path().join("out").display()
        ),
    )
    .unwrap();
    let o = genda(&["sweep", s.to_str().unwrap(), "--jobs", "2", "--quiet"]);
    assert!(o.status.success(), "{}", text(&o));
    let rows = csv_rows(&dir.path().join("out/results.csv"));
    let col = rows[0].iter().position(|h| h == "rmse_analysis").unwrap();
    let exported = dir.path().join("configs");
    let o = genda(&[
        "sweep",
        s.to_str().unwrap(),
        "--export-configs",
        exported.to_str().unwrap(),
    ]);
    assert!(o.status.success(), "{}", text(&o));
    let mut files: Vec<_> = std::fs::read_dir(&exported)
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    files.sort();
    assert_eq!(files.len(), 4);
    for (row, cfg) in rows[1..].iter().zip(&files) {
        let nc = dir.path().join("single.nc");
        let o = genda(&[
            "run",
            cfg.to_str().unwrap(),
            "--quiet",
            "-o",
            nc.to_str().unwrap(),
        ]);
        assert!(o.status.success(), "{}", text(&o));
        let want = nc_attr_f64(&nc, "rmse_analysis_time_mean");
        let got: f64 = row[col].parse().unwrap();
        assert_eq!(
            got.to_bits(),
            want.to_bits(),
            "{}: sweep {got} vs run {want}",
            cfg.display()
        );
    }
}

#[test]
fn two_axes_give_a_heat_map_and_zips_and_variants_string_coordinates() {
    let dir = tempfile::tempdir().unwrap();
    let s = write_sweep(
        dir.path(),
        "\"filter.inflation\" = [1.0, 1.05]\nobs = { all = {}, sparse = { \"observations.operator\" = \"sparse\", \"observations.stride\" = 2 } }\n[[zip]]\nname = \"run\"\n\"experiment.cycles\" = [200]\n\"experiment.burn_in\" = [20]",
    )
    .to_str()
    .unwrap()
    .to_string();
    // One method and one size: inflation and obs vary (plus the zip).
    let body = std::fs::read_to_string(&s)
        .unwrap()
        .replace("\"filter.members\" = [10, 20]", "")
        .replace("[[method]]\nname = \"enkf\"\nfilter = { method = \"enkf\", members = 10, inflation = 1.02 }\n", "");
    std::fs::write(&s, body).unwrap();
    let o = genda(&["sweep", &s, "--quiet"]);
    assert!(o.status.success(), "{}", text(&o));
    let out = dir.path().join("out");
    let nc = out.join("results.nc");
    let dims: Vec<String> = nc_dims(&nc, "rmse_analysis")
        .into_iter()
        .map(|d| d.0)
        .collect();
    assert_eq!(dims, ["method", "filter.inflation", "obs", "run", "seed"]);
    {
        let _g = nc_lock();
        let f = netcdf::open(&nc).unwrap();
        let v = f.variable("obs").unwrap();
        assert_eq!(v.get_string(1).unwrap(), "sparse");
        let v = f.variable("run").unwrap();
        assert_eq!(
            v.get_string(0).unwrap(),
            "experiment.cycles=200 experiment.burn_in=20"
        );
    }
    // Two axes vary (inflation, obs): lines against inflation, and a heat map per method.
    let o = genda(&["plot", out.to_str().unwrap(), "--x", "filter.inflation"]);
    assert!(o.status.success(), "{}", text(&o));
    assert!(out.join("results.png").exists());
    assert!(out.join("results.heatmap.png").metadata().unwrap().len() > 5_000);
    let o = genda(&[
        "plot",
        out.join("results.csv").to_str().unwrap(),
        "--metric",
        "nope",
    ]);
    assert!(!o.status.success());
    assert!(
        String::from_utf8_lossy(&o.stderr).contains("no score `nope`"),
        "{}",
        text(&o)
    );
}
