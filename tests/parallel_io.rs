//! Parallel NetCDF-4 / HDF5 I/O under real `mpirun` (issue 23): every rank writes its own slab of
//! the run file and of the checkpoint, collectively, into one file; the files equal the 1-rank
//! files of the same run, bit for bit, on any layout (member groups × domains), with saved
//! ensembles on decomposed states; a restart on another layout reads only its slabs; xarray
//! opens the files with their dimensions; output.every / output.fields thin the file.
mod common;
use common::*;
use std::path::{Path, PathBuf};
use std::process::Command;

/// A run's file contents with the stored config's output path left out (runs here write to
/// files of different names).
fn contents(p: &Path) -> Vec<(String, String)> {
    nc_contents(p)
        .into_iter()
        .map(|(k, v)| {
            if k == "attribute config" {
                let v = v
                    .lines()
                    .filter(|l| !l.starts_with("path ="))
                    .collect::<Vec<_>>()
                    .join("\n");
                (k, v)
            } else {
                (k, v)
            }
        })
        .collect()
}

fn assert_same(a: &Path, b: &Path, what: &str) {
    let (x, y) = (contents(a), contents(b));
    let names = |c: &[(String, String)]| c.iter().map(|p| p.0.clone()).collect::<Vec<_>>();
    assert_eq!(names(&x), names(&y), "{what}: different variables");
    for ((n, p), (_, q)) in x.iter().zip(&y) {
        assert!(p == q, "{what}: {n} differs from the 1-rank file");
    }
}

/// Run `cfg` on `np` ranks with `domains`, writing `out`; extra args after.
fn run_on(np: usize, domains: usize, cfg: &Path, out: &Path, extra: &[&str]) {
    let d = domains.to_string();
    let mut args = vec![
        "run",
        cfg.to_str().unwrap(),
        "-o",
        out.to_str().unwrap(),
        "--domains",
        &d,
        "--quiet",
    ];
    args.extend_from_slice(extra);
    let o = if np == 1 {
        genda(&args)
    } else {
        mpirun(np, &args)
    };
    assert!(
        o.status.success(),
        "{np} ranks, {domains} domains: {}",
        text(&o)
    );
}

fn l96_letkf(dir: &Path) -> PathBuf {
    config_variant(
        dir,
        "configs/l96_sakov2008_letkf.toml",
        "letkf.toml",
        &[
            ("cycles = 5000", "cycles = 30"),
            ("burn_in = 1000", "burn_in = 5"),
            // A halo that 3 domains of 40 variables can serve.
            ("localization_radius = 4.0", "localization_radius = 2.0"),
        ],
    )
}

const ENSEMBLES: [&str; 4] = [
    "--set",
    "output.save_ensemble=true",
    "--set",
    "output.distributional_scores=true",
];

/// L96 LETKF with saved ensembles and distributional scores: 2 ranks (2 domains), 3 ranks
/// (3 domains), 4 ranks (2 groups × 2 domains) and 4 ranks (4 groups) write the 1-rank file.
#[test]
fn collective_run_file_equals_the_one_rank_file_on_2_3_4_ranks() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = l96_letkf(dir.path());
    let one = dir.path().join("one.nc");
    run_on(1, 1, &cfg, &one, &ENSEMBLES);
    for (np, domains) in [(2, 2), (3, 3), (4, 2), (4, 1)] {
        let out = dir.path().join(format!("np{np}_d{domains}.nc"));
        run_on(np, domains, &cfg, &out, &ENSEMBLES);
        assert_same(&one, &out, &format!("{np} ranks, {domains} domains"));
        assert!(nc_attr_str(&out, "history").contains(&format!("({np} MPI ranks)")));
    }
    // Users' tools open the collectively written file with its dimensions.
    let out = dir.path().join("np4_d2.nc");
    let script = format!(
        "import xarray as xr\n\
         ds = xr.open_dataset({:?})\n\
         assert ds['analysis_ensemble'].dims == ('time', 'member', 'x'), ds['analysis_ensemble'].dims\n\
         assert ds['analysis_ensemble'].shape == (30, 10, 40), ds['analysis_ensemble'].shape\n\
         assert ds['truth'].dims == ('time', 'x')\n\
         assert ds['observations'].dims == ('time', 'obs')\n\
         assert ds['rank_histogram'].dims == ('rank',)\n\
         m = ds['analysis_ensemble'].isel(time=-1).mean('member').values\n\
         assert abs(m - ds['analysis_mean'].isel(time=-1).values).max() < 1e-12\n\
         print('xarray ok', dict(ds.sizes))\n",
        out.display().to_string()
    );
    let py = python();
    let o = {
        let _g = nc_lock();
        Command::new(&py).args(["-c", &script]).output().unwrap()
    };
    assert!(o.status.success(), "xarray: {}", text(&o));
}

/// The 2-D model on row slabs: fields (time, y, x) and ensembles (time, member, y, x) written
/// collectively by 2 and 4 ranks equal the 1-rank file; xarray sees the grid dimensions.
#[test]
fn collective_2d_fields_and_ensembles_equal_the_one_rank_file() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = config_variant(
        dir.path(),
        "configs/kolmogorov_letkf.toml",
        "kolm.toml",
        &[
            ("n = 64", "n = 32"),
            ("cycles = 300", "cycles = 4"),
            ("burn_in = 100", "burn_in = 1"),
            ("spinup_steps = 3000", "spinup_steps = 100"),
            ("ensemble_spinup_steps = 1000", "ensemble_spinup_steps = 50"),
            ("members = 20", "members = 6"),
            ("localization_radius = 4.0", "localization_radius = 2.0"),
        ],
    );
    let one = dir.path().join("one.nc");
    run_on(1, 1, &cfg, &one, &ENSEMBLES[..2]);
    for (np, domains) in [(2, 2), (4, 2)] {
        let out = dir.path().join(format!("np{np}_d{domains}.nc"));
        run_on(np, domains, &cfg, &out, &ENSEMBLES[..2]);
        assert_same(&one, &out, &format!("2-D, {np} ranks, {domains} domains"));
    }
    let out = dir.path().join("np4_d2.nc");
    let script = format!(
        "import xarray as xr\n\
         ds = xr.open_dataset({:?})\n\
         assert ds['forecast_ensemble'].dims == ('time', 'member', 'y', 'x'), ds['forecast_ensemble'].dims\n\
         assert ds['forecast_ensemble'].shape == (4, 6, 32, 32)\n\
         assert ds['truth'].dims == ('time', 'y', 'x')\n",
        out.display().to_string()
    );
    let o = {
        let _g = nc_lock();
        Command::new(python())
            .args(["-c", &script])
            .output()
            .unwrap()
    };
    assert!(o.status.success(), "xarray: {}", text(&o));
}

/// A checkpoint written in parallel by 4 ranks (2 groups × 2 domains), the run killed by
/// SIGKILL after it, restarted on 3 ranks (3 domains): the file equals the uninterrupted
/// 1-rank file, and the checkpoint holds the whole ensemble (members, n). Checkpoints every 3
/// cycles: the run-file snapshot the checkpoint of cycle 12 names was updated by the 4 ranks
/// in place (started at cycle 6 with rows 1–6, rows 7–12 written at 12), and after the
/// restart the two snapshots are again updated by the 3 ranks, each holding the uninterrupted
/// run's rows.
#[test]
fn restart_on_another_layout_from_a_parallel_checkpoint() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = l96_letkf(dir.path());
    let out = dir.path().join("r.nc");
    let ckpt = dir.path().join("r.ckpt.h5");
    let every = ["--checkpoint-every", "3"];
    let mut extra: Vec<&str> = ENSEMBLES.to_vec();
    extra.extend(every);
    run_on(1, 1, &cfg, &out, &extra);
    let full = dir.path().join("full.nc");
    std::fs::rename(&out, &full).unwrap();
    // Killed (SIGKILL on rank 3) in cycle 14, after the checkpoint of cycle 12.
    let o = {
        let mut cmd = Command::new("mpirun");
        cmd.args([
            "--allow-run-as-root",
            "--oversubscribe",
            "-np",
            "4",
            genda_bin(),
            "run",
            cfg.to_str().unwrap(),
            "-o",
            out.to_str().unwrap(),
            "--domains",
            "2",
            "--quiet",
        ])
        .args(&extra)
        .env("GENDA_INJECT_FAULT", "3:14:kill")
        .env("OMP_NUM_THREADS", "1");
        spawn_locked(&mut cmd).wait_with_output().unwrap()
    };
    assert!(!o.status.success(), "the run was not killed: {}", text(&o));
    assert!(!out.exists(), "a killed run left its output");
    assert!(ckpt.exists(), "no checkpoint");
    {
        let _g = nc_lock();
        let f = hdf5::File::open(&ckpt).unwrap();
        assert_eq!(f.dataset("ensemble").unwrap().shape(), vec![10, 40]);
        let c: f64 = f.attr("cycle").unwrap().read_scalar().unwrap();
        assert_eq!(c, 12.0);
    }
    // The checkpoint of cycle 12 names snapshot b (started at cycle 6, updated at 12).
    let snap_b = dir.path().join("r.ckpt.h5.run-b.nc");
    assert_same_rows(&full, &snap_b, 12, "snapshot b after cycle 12 (4 ranks)");
    let ck = ckpt.display().to_string();
    let mut restart = extra.clone();
    restart.extend(["--restart", &ck]);
    run_on(3, 3, &cfg, &out, &restart);
    assert_same(&full, &out, "restart on 3 domains from a 4-rank checkpoint");
    // After the restart: a started anew at 15, updated at 21 and 27; b updated at 18 and 24.
    let snaps: Vec<String> = files_in(dir.path())
        .into_iter()
        .filter(|f| f.contains(".run-"))
        .collect();
    assert_eq!(
        snaps.len(),
        2,
        "two snapshots beside the checkpoint: {snaps:?}"
    );
    let snap_a = dir.path().join("r.ckpt.h5.run-a.nc");
    assert_same_rows(&full, &snap_a, 27, "snapshot a after cycle 27 (3 ranks)");
    assert_same_rows(&full, &snap_b, 24, "snapshot b after cycle 24 (3 ranks)");
}

/// The first `rows` time rows of every time-dependent variable of `snap` equal `full`'s.
fn assert_same_rows(full: &Path, snap: &Path, rows: usize, what: &str) {
    let _g = nc_lock();
    let (f, s) = (
        netcdf::open(full).unwrap(),
        netcdf::open(snap).unwrap_or_else(|e| panic!("{what}: {e}")),
    );
    let mut seen = 0;
    for v in f.variables() {
        let name = v.name();
        let dims: Vec<String> = v.dimensions().iter().map(|d| d.name()).collect();
        if dims.first().map(String::as_str) != Some("time") || name == "time" {
            continue;
        }
        let a: Vec<f64> = v.get_values::<f64, _>(..).unwrap();
        let b: Vec<f64> = s
            .variable(&name)
            .unwrap_or_else(|| panic!("{what}: no {name}"))
            .get_values::<f64, _>(..)
            .unwrap();
        let row = a.len() / v.dimensions()[0].len();
        let k = rows * row;
        assert_eq!(a.len(), b.len(), "{what}: {name} has another shape");
        assert!(
            a[..k]
                .iter()
                .zip(&b[..k])
                .all(|(x, y)| x.to_bits() == y.to_bits()),
            "{what}: rows of {name} differ"
        );
        seen += 1;
    }
    assert!(seen >= 8, "{what}: only {seen} time variables compared");
}

/// output.every, output.fields and output.compression on 2 ranks: the rows of every k-th cycle,
/// only the chosen fields, the same numbers as the full 1-rank file at those cycles, and the
/// time means of every cycle.
#[test]
fn output_every_and_fields_thin_the_file() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = l96_letkf(dir.path());
    let full = dir.path().join("full.nc");
    run_on(1, 1, &cfg, &full, &[]);
    let thin = dir.path().join("thin.nc");
    let sets = [
        "--set",
        "output.every=5",
        "--set",
        "output.fields=[\"analysis_mean\"]",
        "--set",
        "output.compression=4",
        "--set",
        "output.save_ensemble=true",
    ];
    run_on(2, 2, &cfg, &thin, &sets);
    assert_eq!(
        nc_dims(&thin, "analysis_mean"),
        vec![("time".into(), 6), ("x".into(), 40)]
    );
    assert_eq!(nc_dims(&thin, "analysis_ensemble")[0], ("time".into(), 6));
    {
        let _g = nc_lock();
        let f = netcdf::open(&thin).unwrap();
        assert!(f.variable("truth").is_none() && f.variable("forecast_mean").is_none());
        assert!(f.variable("observations").is_none());
    }
    let (a, b) = (
        nc_var(&full, "analysis_mean"),
        nc_var(&thin, "analysis_mean"),
    );
    let (ra, rb) = (
        nc_var(&full, "rmse_analysis"),
        nc_var(&thin, "rmse_analysis"),
    );
    let (ta, tb) = (nc_var(&full, "time"), nc_var(&thin, "time"));
    for r in 0..6 {
        let k = 5 * (r + 1) - 1;
        assert_eq!(
            &b[r * 40..(r + 1) * 40],
            &a[k * 40..(k + 1) * 40],
            "row {r}"
        );
        assert_eq!(rb[r], ra[k]);
        assert_eq!(tb[r], ta[k]);
    }
    for attr in ["rmse_analysis_time_mean", "spread_analysis_time_mean"] {
        assert_eq!(nc_attr_f64(&full, attr), nc_attr_f64(&thin, attr), "{attr}");
    }
    let o = genda(&[
        "check",
        cfg.to_str().unwrap(),
        "--set",
        "output.fields=[\"vorticity\"]",
    ]);
    assert!(!o.status.success());
    assert!(
        text(&o).contains("output.fields") && text(&o).contains("vorticity"),
        "{}",
        text(&o)
    );
}

fn python() -> String {
    std::env::var("GENDA_PYTHON").unwrap_or_else(|_| "python3".into())
}

/// Bad inputs of the parallel readers are one clear error naming the file and the dataset, on
/// every rank, with no output left behind: a replayed truth of another state size, a
/// checkpoint whose ensemble does not fit the run.
#[test]
fn bad_slab_inputs_are_clear_errors_under_mpirun() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = l96_letkf(dir.path());
    let nc = dir.path().join("t.nc");
    let o = genda(&["truth", cfg.to_str().unwrap(), "-o", nc.to_str().unwrap()]);
    assert!(o.status.success(), "{}", text(&o));
    let h5 = dir.path().join("t.h5");
    assert!(h5.exists());
    // The same truth file for a model of 80 variables.
    let big = config_variant(
        dir.path(),
        "configs/l96_sakov2008_letkf.toml",
        "big.toml",
        &[
            ("cycles = 5000", "cycles = 10"),
            ("burn_in = 1000", "burn_in = 1"),
            ("dim = 40", "dim = 80"),
        ],
    );
    let s: String = std::fs::read_to_string(&big)
        .unwrap()
        .replace(
            "[experiment]",
            &format!("[experiment]\ntruth_file = \"{}\"", h5.display()),
        )
        .lines()
        .map(|l| {
            if l.starts_with("mean =") {
                "mean = 8.0"
            } else {
                l
            }
        })
        .collect::<Vec<_>>()
        .join("\n");
    std::fs::write(&big, s).unwrap();
    let out = dir.path().join("big.nc");
    let o = mpirun(
        2,
        &[
            "run",
            big.to_str().unwrap(),
            "-o",
            out.to_str().unwrap(),
            "--domains",
            "2",
        ],
    );
    let t = text(&o);
    assert!(!o.status.success(), "{t}");
    assert!(
        t.contains("t.h5")
            && t.contains("`trajectory`")
            && t.contains("40 values, the model has 80"),
        "{t}"
    );
    assert!(!out.exists());
    // A checkpoint whose ensemble has the wrong shape (edited with h5py).
    let out = dir.path().join("r.nc");
    let o = genda(&[
        "run",
        cfg.to_str().unwrap(),
        "-o",
        out.to_str().unwrap(),
        "--checkpoint-every",
        "10",
        "--quiet",
    ]);
    assert!(o.status.success(), "{}", text(&o));
    let ckpt = dir.path().join("r.ckpt.h5");
    assert!(ckpt.exists());
    let script = format!(
        "import h5py, numpy as np\n\
         f = h5py.File({:?}, 'r+')\n\
         del f['ensemble']\n\
         f['ensemble'] = np.zeros((10, 39))\n\
         f.close()\n",
        ckpt.display().to_string()
    );
    let p = {
        let _g = nc_lock();
        Command::new(python())
            .args(["-c", &script])
            .output()
            .unwrap()
    };
    assert!(p.status.success(), "h5py: {}", text(&p));
    std::fs::remove_file(&out).unwrap();
    let o = mpirun(
        2,
        &[
            "run",
            cfg.to_str().unwrap(),
            "-o",
            out.to_str().unwrap(),
            "--domains",
            "2",
            "--restart",
            ckpt.to_str().unwrap(),
            "--quiet",
        ],
    );
    let t = text(&o);
    assert!(!o.status.success(), "{t}");
    assert!(
        t.contains("r.ckpt.h5") && t.contains("inconsistent sizes"),
        "{t}"
    );
    assert!(!out.exists());
}

/// MASF's pre-training data-parallel (`filter.pretrain_shards`): on 2 ranks each rank reads
/// only its 2 of the 4 shards of `pretrain_data` and the shards' gradients are summed in shard
/// order, so the run equals the 1-rank run with the same shards bit for bit; the shards are
/// part of the science (the unsharded run differs), and bad shard counts are clear errors.
#[test]
fn masf_sharded_pretraining_on_two_ranks_equals_one_rank() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = masf_l63_reference_config(dir.path(), 4);
    let sets = |shards: &str| {
        vec![
            "--set".to_string(),
            "filter.pretrain_epochs=4".into(),
            "--set".into(),
            "filter.train_epochs=2".into(),
            "--set".into(),
            "filter.steps=30".into(),
            "--set".into(),
            format!("filter.pretrain_shards={shards}"),
        ]
    };
    let s4 = sets("4");
    let extra: Vec<&str> = s4.iter().map(String::as_str).collect();
    let (one, two) = (dir.path().join("one.nc"), dir.path().join("two.nc"));
    run_on(1, 1, &cfg, &one, &extra);
    run_on(2, 1, &cfg, &two, &extra);
    assert_same(&one, &two, "MASF pre-trained on 4 shards, 2 ranks");
    let s1 = sets("1");
    let extra1: Vec<&str> = s1.iter().map(String::as_str).collect();
    let whole = dir.path().join("whole.nc");
    run_on(1, 1, &cfg, &whole, &extra1);
    assert_ne!(
        nc_var(&whole, "analysis_mean"),
        nc_var(&one, "analysis_mean"),
        "4 shards train another network than the whole set"
    );
    // 3 shards do not divide the batch of 32; 1 shard per rank of 4 on 2 members each is fine,
    // but 2 shards on 4 ranks leave ranks without one.
    for (np, shards, msg) in [
        (1, "3", "divide the batch"),
        (4, "2", "every rank needs a shard"),
    ] {
        let s = sets(shards);
        let mut args = vec!["run", cfg.to_str().unwrap(), "--quiet"];
        args.extend(s.iter().map(String::as_str));
        let out = dir.path().join("bad.nc");
        let o_arg = out.display().to_string();
        args.extend(["-o", o_arg.as_str()]);
        let o = if np == 1 {
            genda(&args)
        } else {
            mpirun(np, &args)
        };
        assert!(!o.status.success(), "{shards} shards on {np}: ran");
        assert!(
            text(&o).contains(msg),
            "{shards} shards on {np}: {}",
            text(&o)
        );
        assert!(!out.exists(), "a refused run left its output");
    }
}
