//! `genda train` end to end: HDF5 data from `genda truth`, weights and checkpoints in HDF5, and
//! real `mpirun` data parallelism: 2 ranks with batch B/2 each give the weights of 1 rank with B.
mod common;
use common::*;
use genda::io::read_tensor_file;
use std::path::Path;

fn train_config(
    dir: &Path,
    data: &Path,
    tag: &str,
    steps: usize,
    extra: &str,
) -> std::path::PathBuf {
    let mut s = std::fs::read_to_string(repo_file("configs/train_l63_score.toml")).unwrap();
    s = s
        .replace(
            "path = \"output/l63_sakov2012.truth.h5\"",
            &format!("path = \"{}\"", data.display()),
        )
        .replace("steps = 3000", &format!("steps = {steps}"))
        .replace("hidden = 128", "hidden = 32")
        .replace("batch = 256", "batch = 64")
        .replace(
            "output/l63_score.h5",
            &dir.join(format!("w_{tag}.h5")).display().to_string(),
        )
        .replace(
            "output/l63_score.ckpt.h5",
            &dir.join(format!("c_{tag}.h5")).display().to_string(),
        );
    s += extra;
    let p = dir.join(format!("train_{tag}.toml"));
    std::fs::write(&p, s).unwrap();
    p
}

fn truth_data(dir: &Path) -> std::path::PathBuf {
    let cfg = config_variant(
        dir,
        "configs/l63_sakov2012.toml",
        "l63.toml",
        &[("cycles = 4000", "cycles = 600")],
    );
    let nc = dir.join("truth.nc");
    let o = genda(&["truth", cfg.to_str().unwrap(), "-o", nc.to_str().unwrap()]);
    assert!(o.status.success(), "{}", text(&o));
    dir.join("truth.h5")
}

fn params(path: &Path, group: &str) -> Vec<f32> {
    let tf = read_tensor_file(path).unwrap();
    tf.groups[group]
        .iter()
        .flat_map(|a| a.data.clone())
        .collect()
}

/// max |a − b| and max |a|.
fn max_diff(a: &[f32], b: &[f32]) -> (f32, f32) {
    let scale = a.iter().fold(0f32, |m, v| m.max(v.abs()));
    let diff = a.iter().zip(b).fold(0f32, |m, (x, y)| m.max((x - y).abs()));
    (diff, scale)
}

#[test]
fn data_parallel_two_ranks_equal_one_rank() {
    let dir = tempfile::tempdir().unwrap();
    let data = truth_data(dir.path());
    let c1 = train_config(dir.path(), &data, "np1", 30, "");
    let c2 = train_config(dir.path(), &data, "np2", 30, "");
    let o = genda(&["train", c1.to_str().unwrap()]);
    assert!(o.status.success(), "{}", text(&o));
    let o = mpirun(2, &["train", c2.to_str().unwrap()]);
    assert!(o.status.success(), "{}", text(&o));
    let (a, b) = (
        params(&dir.path().join("c_np1.h5"), "params"),
        params(&dir.path().join("c_np2.h5"), "params"),
    );
    assert_eq!(a.len(), b.len());
    // Same samples, times and noise; only the order of float additions in the batch mean and the
    // allreduce differs, so after 30 Adam steps the weights agree to ~1e-6 of their scale.
    let (diff, scale) = max_diff(&a, &b);
    eprintln!("max |w1 - w2| = {diff:e} (max |w| = {scale})");
    assert!(diff <= 1e-4 * scale, "1 rank vs 2 ranks: max diff {diff}");
    // And training moved the weights at all.
    let c0 = train_config(dir.path(), &data, "np0", 1, "");
    assert!(genda(&["train", c0.to_str().unwrap()]).status.success());
    let w0 = params(&dir.path().join("c_np0.h5"), "params");
    assert!(w0.iter().zip(&a).any(|(x, y)| (x - y).abs() > 1e-3));
}

/// `data.shards = 2`: each of 2 ranks reads only its half of the training windows (rank 0 also
/// the validation ones), and the weights are those of 1 rank reading both shards.
#[test]
fn sharded_data_on_two_ranks_equal_one_rank() {
    let dir = tempfile::tempdir().unwrap();
    let data = truth_data(dir.path());
    let edit = |tag: &str| {
        let c = train_config(dir.path(), &data, tag, 30, "");
        let s =
            std::fs::read_to_string(&c)
                .unwrap()
                .replacen("[data]\n", "[data]\nshards = 2\n", 1);
        std::fs::write(&c, s).unwrap();
        c
    };
    let (c1, c2) = (edit("s1"), edit("s2"));
    let o = genda(&["train", c1.to_str().unwrap()]);
    assert!(o.status.success(), "{}", text(&o));
    let o = mpirun(2, &["train", c2.to_str().unwrap()]);
    assert!(o.status.success(), "{}", text(&o));
    let (a, b) = (
        params(&dir.path().join("c_s1.h5"), "params"),
        params(&dir.path().join("c_s2.h5"), "params"),
    );
    let (diff, scale) = max_diff(&a, &b);
    eprintln!("sharded: max |w1 - w2| = {diff:e} (max |w| = {scale})");
    assert!(
        diff <= 1e-4 * scale,
        "1 rank vs 2 ranks, 2 shards: max diff {diff}"
    );
    // The standardisation summed per shard is the whole file's to rounding.
    let w = read_tensor_file(&dir.path().join("w_s1.h5")).unwrap();
    let w0 = {
        let c = train_config(dir.path(), &data, "u1", 1, "");
        assert!(genda(&["train", c.to_str().unwrap()]).status.success());
        read_tensor_file(&dir.path().join("w_u1.h5")).unwrap()
    };
    for k in ["data_shift", "data_scale"] {
        let f = |t: &genda::io::TensorFile| -> f64 { t.attrs[k].parse().unwrap() };
        let (x, y) = (f(&w), f(&w0));
        assert!((x - y).abs() <= 1e-12 * y.abs().max(1.0), "{k}: {x} vs {y}");
    }
}

#[test]
fn resume_from_checkpoint_continues_to_the_same_weights() {
    let dir = tempfile::tempdir().unwrap();
    let data = truth_data(dir.path());
    let straight = train_config(dir.path(), &data, "straight", 40, "");
    assert!(genda(&["train", straight.to_str().unwrap()])
        .status
        .success());
    let part = train_config(dir.path(), &data, "part", 40, "");
    let o = genda(&["train", part.to_str().unwrap(), "--steps", "20"]);
    assert!(o.status.success(), "{}", text(&o));
    // Resume the second half from the checkpoint (the schedule is that of 40 steps).
    let ck = dir.path().join("c_part.h5");
    let o = genda(&[
        "train",
        part.to_str().unwrap(),
        "--resume",
        ck.to_str().unwrap(),
    ]);
    assert!(o.status.success(), "{}", text(&o));
    assert_eq!(
        params(&dir.path().join("c_straight.h5"), "params"),
        params(&ck, "params")
    );
    assert_eq!(
        params(&dir.path().join("w_straight.h5"), "params"),
        params(&dir.path().join("w_part.h5"), "params")
    );
}

#[test]
fn training_bad_input_is_a_clear_error() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let data = truth_data(d);
    // Missing data file.
    let c = train_config(d, &d.join("nope.h5"), "a", 5, "");
    let o = genda(&["train", c.to_str().unwrap()]);
    assert!(
        !o.status.success() && text(&o).contains("nope.h5") && !text(&o).contains("panicked"),
        "{}",
        text(&o)
    );
    // Corrupt checkpoint for --resume.
    std::fs::write(d.join("bad.h5"), b"not hdf5").unwrap();
    let c = train_config(d, &data, "b", 5, "");
    let o = genda(&[
        "train",
        c.to_str().unwrap(),
        "--resume",
        d.join("bad.h5").to_str().unwrap(),
    ]);
    assert!(
        !o.status.success() && text(&o).contains("bad.h5") && !text(&o).contains("panicked"),
        "{}",
        text(&o)
    );
    // Unknown key.
    let c = train_config(d, &data, "c", 5, "");
    let s = std::fs::read_to_string(&c)
        .unwrap()
        .replace("ema = ", "emma = ");
    std::fs::write(&c, s).unwrap();
    let o = genda(&["train", c.to_str().unwrap()]);
    assert!(
        !o.status.success() && text(&o).contains("unknown field `emma`"),
        "{}",
        text(&o)
    );
    // GPU requested on a machine without one: an error, not a silent CPU run.
    if !std::path::Path::new("/dev/nvidia0").exists() {
        let c = train_config(d, &data, "d", 5, "");
        let s = std::fs::read_to_string(&c)
            .unwrap()
            .replace("device = \"auto\"", "device = \"cuda\"");
        std::fs::write(&c, s).unwrap();
        let o = genda(&["train", c.to_str().unwrap()]);
        assert!(
            !o.status.success() && text(&o).contains("cuda") && !text(&o).contains("panicked"),
            "{}",
            text(&o)
        );
    }
    // Batch not divisible by the rank count.
    let c = train_config(d, &data, "e", 5, "");
    let s = std::fs::read_to_string(&c)
        .unwrap()
        .replace("batch = 64", "batch = 63");
    std::fs::write(&c, s).unwrap();
    let o = mpirun(2, &["train", c.to_str().unwrap()]);
    assert!(
        !o.status.success() && text(&o).contains("not divisible"),
        "{}",
        text(&o)
    );
}
