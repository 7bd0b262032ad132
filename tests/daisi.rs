//! DAISI end to end through the binary: `genda truth` → `genda train` (interpolant prior,
//! flow-matching objective, a few hundred CPU steps) → `genda run` with `method = "daisi"` for a
//! few cycles, writing a real NetCDF run file; and a prior trained on another forward process is
//! refused with an error naming the weights.
mod common;
use common::*;
use std::path::Path;

fn train_config(
    dir: &Path,
    data: &Path,
    base: &str,
    tag: &str,
    steps: usize,
) -> std::path::PathBuf {
    let mut s = std::fs::read_to_string(repo_file(base)).unwrap();
    for (from, to) in [
        ("output/l63_sakov2012.truth.h5", data.display().to_string()),
        ("hidden = 128", "hidden = 32".into()),
        ("batch = 256", "batch = 64".into()),
        ("steps = 3000", format!("steps = {steps}")),
        ("validate_every = 250", "validate_every = 100".into()),
        ("device = \"auto\"", "device = \"cpu\"".into()),
    ] {
        s = s.replace(from, &to);
    }
    for stem in ["l63_interpolant", "l63_score"] {
        s = s
            .replace(
                &format!("output/{stem}.h5"),
                &dir.join(format!("w_{tag}.h5")).display().to_string(),
            )
            .replace(
                &format!("output/{stem}.ckpt.h5"),
                &dir.join(format!("c_{tag}.h5")).display().to_string(),
            );
    }
    let p = dir.join(format!("train_{tag}.toml"));
    std::fs::write(&p, s).unwrap();
    p
}

#[test]
fn daisi_trains_a_prior_and_runs_cycles_to_netcdf() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let truth_cfg = config_variant(
        d,
        "configs/l63_sakov2012.toml",
        "l63.toml",
        &[("cycles = 4000", "cycles = 400")],
    );
    let nc = d.join("truth.nc");
    let o = genda(&[
        "truth",
        truth_cfg.to_str().unwrap(),
        "-o",
        nc.to_str().unwrap(),
    ]);
    assert!(o.status.success(), "{}", text(&o));
    let data = d.join("truth.h5");

    let tc = train_config(d, &data, "configs/train_l63_interpolant.toml", "fm", 300);
    let o = genda(&["train", tc.to_str().unwrap(), "--quiet"]);
    assert!(o.status.success(), "{}", text(&o));
    let weights = d.join("w_fm.h5");
    assert!(weights.exists());

    let run_cfg = config_variant(
        d,
        "configs/daisi_l63.toml",
        "daisi.toml",
        &[
            ("output/l63_interpolant.h5", weights.to_str().unwrap()),
            ("cycles = 400", "cycles = 8"),
            ("burn_in = 64", "burn_in = 2"),
            ("steps = 30", "steps = 10"),
        ],
    );
    let out = d.join("daisi.nc");
    let o = genda(&[
        "run",
        run_cfg.to_str().unwrap(),
        "-o",
        out.to_str().unwrap(),
        "--quiet",
    ]);
    assert!(o.status.success(), "{}", text(&o));
    let _g = nc_lock();
    let rmse = nc_var(&out, "rmse_analysis");
    let spread = nc_var(&out, "analysis_spread");
    assert_eq!(rmse.len(), 8);
    assert!(
        rmse.iter().all(|v| v.is_finite() && *v < 20.0),
        "analysis RMSE {rmse:?}"
    );
    assert!(
        spread.iter().all(|v| v.is_finite() && *v > 0.0),
        "{spread:?}"
    );
    drop(_g);
    // The reference's conventions (the defaults: stochastic inversion, linear diffusion, MMPS)
    // run too; and the numbers do not depend on libtorch's thread count (a loaded network runs
    // on one libtorch thread on the CPU, whatever OMP_NUM_THREADS says).
    let mut outs = Vec::new();
    for threads in ["1", "2"] {
        let o2 = d.join(format!("daisi_ref_{threads}.nc"));
        let o = std::process::Command::new(genda_bin())
            .args([
                "run",
                run_cfg.to_str().unwrap(),
                "-o",
                o2.to_str().unwrap(),
                "--quiet",
                "--set",
                "filter.inversion=\"sde\"",
                "--set",
                "filter.diffusion=\"linear\"",
                "--set",
                "filter.epsilon=0.03",
                "--set",
                "filter.guidance=\"mmps\"",
                "--set",
                "filter.t_start=0.7",
            ])
            .env("OMP_NUM_THREADS", threads)
            .output()
            .unwrap();
        assert!(o.status.success(), "{}", text(&o));
        outs.push(o2);
    }
    let (a, b) = (
        nc_var(&outs[0], "analysis_mean"),
        nc_var(&outs[1], "analysis_mean"),
    );
    assert!(a.iter().all(|v| v.is_finite()), "{a:?}");
    assert_eq!(a, b, "DAISI's numbers depend on libtorch's thread count");

    // A VP-trained score network is not an interpolant prior: a clear error naming the file.
    let tv = train_config(d, &data, "configs/train_l63_score.toml", "vp", 5);
    let o = genda(&["train", tv.to_str().unwrap(), "--quiet"]);
    assert!(o.status.success(), "{}", text(&o));
    let vp = d.join("w_vp.h5");
    let bad_cfg = config_variant(
        d,
        "configs/daisi_l63.toml",
        "daisi_vp.toml",
        &[
            ("output/l63_interpolant.h5", vp.to_str().unwrap()),
            ("cycles = 400", "cycles = 2"),
            ("burn_in = 64", "burn_in = 0"),
        ],
    );
    let o = genda(&["run", bad_cfg.to_str().unwrap(), "--no-output", "--quiet"]);
    assert!(!o.status.success());
    let msg = text(&o);
    assert!(
        msg.contains("interpolant") && msg.contains("w_vp.h5"),
        "{msg}"
    );

    // flow_matching on a VP process is a config error.
    let s = std::fs::read_to_string(&tv).unwrap() + "";
    let s = s.replace(
        "device = \"cpu\"",
        "device = \"cpu\"\nobjective = \"flow_matching\"",
    );
    let bad_train = d.join("train_bad.toml");
    std::fs::write(&bad_train, s).unwrap();
    let o = genda(&["train", bad_train.to_str().unwrap(), "--quiet"]);
    assert!(!o.status.success());
    assert!(text(&o).contains("training.objective"), "{}", text(&o));
}
