//! Real `mpirun` runs: the same config gives bit-identical results on 1, 2 and 3 ranks, and a
//! rank count that cannot split the ensemble is a clear error before any work.
mod common;
use common::*;

fn compare_layouts(base: &str, edits: &[(&str, &str)]) {
    let dir = tempfile::tempdir().unwrap();
    let cfg = config_variant(dir.path(), base, "c.toml", edits);
    let mut runs = Vec::new();
    for np in [1usize, 2, 3] {
        let out = dir.path().join(format!("np{np}.nc"));
        let o = if np == 1 {
            genda(&["run", cfg.to_str().unwrap(), "-o", out.to_str().unwrap()])
        } else {
            mpirun(
                np,
                &["run", cfg.to_str().unwrap(), "-o", out.to_str().unwrap()],
            )
        };
        assert!(o.status.success(), "np = {np}: {}", text(&o));
        runs.push((
            np,
            nc_var(&out, "rmse_analysis"),
            nc_var(&out, "analysis_mean"),
            nc_var(&out, "analysis_spread"),
        ));
    }
    let (_, r1, m1, s1) = &runs[0];
    for (np, r, m, s) in &runs[1..] {
        // Bitwise: members are gathered in a fixed order and every rank does the same arithmetic.
        assert_eq!(r1, r, "rmse series differs on {np} ranks");
        assert_eq!(m1, m, "analysis mean differs on {np} ranks");
        assert_eq!(s1, s, "spread differs on {np} ranks");
    }
}

#[test]
fn etkf_l96_same_numbers_on_1_2_3_ranks() {
    compare_layouts(
        "configs/l96_sakov2008.toml",
        &[
            ("cycles = 5000", "cycles = 300"),
            ("burn_in = 1000", "burn_in = 50"),
            ("rotation = false", "rotation = true"),
        ],
    );
}

#[test]
fn enkf_l63_same_numbers_on_1_2_3_ranks() {
    compare_layouts(
        "configs/l63_sakov2012_enkf.toml",
        &[("cycles = 4000", "cycles = 300")],
    );
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
        t.contains("3 MPI ranks cannot split 2 ensemble members"),
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
fn letkf_l96_same_numbers_on_1_2_3_ranks() {
    compare_layouts(
        "configs/l96_sakov2008_letkf.toml",
        &[
            ("cycles = 5000", "cycles = 200"),
            ("burn_in = 1000", "burn_in = 10"),
        ],
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
