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
