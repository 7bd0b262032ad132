//! Helpers shared by the end-to-end tests: run the real `genda` binary, under real `mpirun`.
#![allow(dead_code)]
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

pub fn genda_bin() -> &'static str {
    env!("CARGO_BIN_EXE_genda")
}

pub fn repo_file(rel: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join(rel)
}

/// Spawn with the NetCDF lock held: a child forked while another test thread has a NetCDF
/// file open would inherit its descriptor and HDF5's file lock, and a later open of that file
/// (by genda) fails with "HDF error". Waiting happens without the lock.
pub fn spawn_locked(cmd: &mut Command) -> std::process::Child {
    let _g = nc_lock();
    cmd.stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("spawn")
}

/// Run `genda args...` on one process (no launcher). Test binaries run side by side on a small
/// machine, so libtorch gets one intra-op thread (its spinning OpenMP pool slows 10–30× when
/// the cores are oversubscribed).
pub fn genda(args: &[&str]) -> Output {
    spawn_locked(
        Command::new(genda_bin())
            .args(args)
            .env("RUST_LOG", "warn")
            .env("OMP_NUM_THREADS", "1"),
    )
    .wait_with_output()
    .expect("wait for genda")
}

/// Run `mpirun -np N genda args...` (as root, oversubscribed: CI machines have 2 cores).
pub fn mpirun(np: usize, args: &[&str]) -> Output {
    let mut cmd = Command::new("mpirun");
    cmd.args([
        "--allow-run-as-root",
        "--oversubscribe",
        "-np",
        &np.to_string(),
        genda_bin(),
    ])
    .args(args)
    .env("RUST_LOG", "warn")
    .env("OMP_NUM_THREADS", "1")
    .env("OMPI_MCA_rmaps_base_oversubscribe", "1");
    spawn_locked(&mut cmd)
        .wait_with_output()
        .expect("wait for mpirun (is openmpi-bin installed?)")
}

pub fn text(o: &Output) -> String {
    format!(
        "status: {:?}\nstdout:\n{}\nstderr:\n{}",
        o.status,
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

/// A config from `configs/` with `(from, to)` text replacements applied, written to `dir`.
pub fn config_variant(dir: &Path, base: &str, name: &str, edits: &[(&str, &str)]) -> PathBuf {
    let mut s = std::fs::read_to_string(repo_file(base)).expect("read base config");
    for (from, to) in edits {
        assert!(s.contains(from), "config {base} has no `{from}`");
        s = s.replacen(from, to, 1);
    }
    let p = dir.join(name);
    std::fs::write(&p, s).unwrap();
    p
}

/// libnetcdf/HDF5 are not thread-safe: test threads of one process take this lock around
/// in-process NetCDF calls.
/// Re-entrant within a thread (a holder may call `nc_var`).
pub fn nc_lock() -> NcGuard {
    static LOCK: std::sync::Mutex<()> = std::sync::Mutex::new(());
    if HELD.with(|h| h.get()) {
        return NcGuard(None);
    }
    let g = LOCK.lock().unwrap_or_else(|e| e.into_inner());
    HELD.with(|h| h.set(true));
    NcGuard(Some(g))
}

thread_local! {
    static HELD: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
}

pub struct NcGuard(#[allow(dead_code)] Option<std::sync::MutexGuard<'static, ()>>);

impl Drop for NcGuard {
    fn drop(&mut self) {
        if self.0.is_some() {
            HELD.with(|h| h.set(false));
        }
    }
}

/// Read a 1-D double variable from a NetCDF file.
pub fn nc_var(path: &Path, name: &str) -> Vec<f64> {
    let _g = nc_lock();
    let f = netcdf::open(path).unwrap_or_else(|e| panic!("open {}: {e}", path.display()));
    let v = f
        .variable(name)
        .unwrap_or_else(|| panic!("{} has no variable {name}", path.display()));
    v.get_values::<f64, _>(..).unwrap()
}

/// Dimension names and lengths of a variable.
pub fn nc_dims(path: &Path, name: &str) -> Vec<(String, usize)> {
    let _g = nc_lock();
    let f = netcdf::open(path).unwrap();
    let v = f.variable(name).unwrap();
    v.dimensions().iter().map(|d| (d.name(), d.len())).collect()
}

pub fn nc_attr_f64(path: &Path, name: &str) -> f64 {
    let _g = nc_lock();
    let f = netcdf::open(path).unwrap();
    match f.attribute(name).unwrap().value().unwrap() {
        netcdf::AttributeValue::Double(v) => v,
        other => panic!("attribute {name}: {other:?}"),
    }
}

pub fn nc_attr_str(path: &Path, name: &str) -> String {
    let _g = nc_lock();
    let f = netcdf::open(path).unwrap();
    match f.attribute(name).unwrap().value().unwrap() {
        netcdf::AttributeValue::Str(v) => v,
        other => panic!("attribute {name}: {other:?}"),
    }
}

/// Files in `dir` (to check that failed runs leave nothing behind).
pub fn files_in(dir: &Path) -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    v.sort();
    v
}

/// `genda run <cfg> -o <out> --quiet` fails with a message containing `msg` and leaves no `out`.
pub fn assert_run_fails_without_output(cfg: &Path, out: &Path, msg: &str) {
    let o = genda(&[
        "run",
        cfg.to_str().unwrap(),
        "-o",
        out.to_str().unwrap(),
        "--quiet",
    ]);
    let t = text(&o);
    assert!(!o.status.success() && t.contains(msg), "{t}");
    assert!(!out.exists(), "no output on error: {}", out.display());
}

/// Noisy Lorenz-63 windows (`genda truth`, `cycles` states) and an SDA window network of order
/// `k` trained on them for `steps` Adam steps (`genda train`); returns the weights file.
pub fn train_sda_window(dir: &Path, k: usize, cycles: usize, steps: usize) -> PathBuf {
    let data = config_variant(
        dir,
        "configs/sda_l63_data.toml",
        "sda_data.toml",
        &[("cycles = 262144", &format!("cycles = {cycles}"))],
    );
    let nc = dir.join("sda_data.truth.nc");
    let o = genda(&["truth", data.to_str().unwrap(), "-o", nc.to_str().unwrap()]);
    assert!(o.status.success(), "{}", text(&o));
    let h5 = dir.join("sda_data.truth.h5");
    let weights = dir.join(format!("sda_k{k}.h5"));
    let ckpt = dir.join(format!("sda_k{k}.ckpt.h5"));
    let train = config_variant(
        dir,
        &format!("configs/train_sda_l63_k{k}.toml"),
        "sda_train.toml",
        &[
            ("output/sda_l63_data.truth.h5", h5.to_str().unwrap()),
            ("steps = 30000", &format!("steps = {steps}")),
            (
                &format!("output/sda_l63_k{k}.h5"),
                weights.to_str().unwrap(),
            ),
            (
                &format!("output/sda_l63_k{k}.ckpt.h5"),
                ckpt.to_str().unwrap(),
            ),
        ],
    );
    let o = genda(&["train", train.to_str().unwrap()]);
    assert!(o.status.success(), "{}", text(&o));
    weights
}

/// Issue 8's Kolmogorov configs (`configs/kolmogorov_issue8_*.toml`) at toy size: 16² members,
/// a 32² truth, 2 RK4 substeps per model step (4 for the truth), a viscosity the 16² grid resolves.
#[allow(dead_code)]
pub const KOLMOGOROV_ISSUE8_TOY: [(&str, &str); 5] = [
    ("n = 64", "n = 16"),
    ("substeps = 20", "substeps = 2"),
    ("viscosity = 1e-3", "viscosity = 1e-2"),
    ("truth_grid = 256", "truth_grid = 32"),
    ("truth_substeps = 60", "truth_substeps = 4"),
];

/// Everything a run file holds, for bit-for-bit comparisons: every variable's values (as f64
/// bit patterns, so NaN compares equal to itself) and every global attribute but `history`
/// (which names the rank count of the run that created the file); the stored config without
/// its `parallel.domains` line (the layout, which a restart may change).
pub fn nc_contents(path: &Path) -> Vec<(String, String)> {
    let _g = nc_lock();
    let f = netcdf::open(path).unwrap_or_else(|e| panic!("open {}: {e}", path.display()));
    let mut out = Vec::new();
    for v in f.variables() {
        let vals = v.get_values::<f64, _>(..).unwrap();
        let bits: Vec<u64> = vals.iter().map(|x| x.to_bits()).collect();
        out.push((format!("variable {}", v.name()), format!("{bits:?}")));
    }
    for a in f.attributes() {
        let value = match (a.name(), a.value().unwrap()) {
            ("history", _) => continue,
            // The stored config, less the layout (`parallel.domains`), which may differ.
            ("config", netcdf::AttributeValue::Str(c)) => c
                .lines()
                .filter(|l| !l.starts_with("domains ="))
                .collect::<Vec<_>>()
                .join("\n"),
            (_, v) => format!("{v:?}"),
        };
        out.push((format!("attribute {}", a.name()), value));
    }
    out
}

/// Assert that two run files hold the same variables and attributes, bit for bit.
pub fn assert_same_contents(a: &Path, b: &Path, what: &str) {
    let (x, y) = (nc_contents(a), nc_contents(b));
    let names = |c: &[(String, String)]| c.iter().map(|p| p.0.clone()).collect::<Vec<_>>();
    assert_eq!(
        names(&x),
        names(&y),
        "{what}: the files hold different variables"
    );
    for ((n, p), (_, q)) in x.iter().zip(&y) {
        assert!(
            p == q,
            "{what}: {n} differs between {} and {}",
            a.display(),
            b.display()
        );
    }
}

/// A 100-state L63 climatology (`genda truth` of configs/masf_l63_climatology.toml) in `dir`,
/// and configs/masf_l63_gap100_reference.toml pre-training on it, `cycles` cycles, burn-in 1:
/// the MASF/SF reference variants' small end-to-end case.
pub fn masf_l63_reference_config(dir: &Path, cycles: usize) -> PathBuf {
    let data = config_variant(
        dir,
        "configs/masf_l63_climatology.toml",
        "clim.toml",
        &[("cycles = 1000", "cycles = 100")],
    );
    let clim = dir.join("clim.nc");
    let o = genda(&[
        "truth",
        data.to_str().unwrap(),
        "-o",
        clim.to_str().unwrap(),
    ]);
    assert!(o.status.success(), "{}", text(&o));
    let pre = format!("pretrain_data = \"{}\"", dir.join("clim.h5").display());
    let c = format!("cycles = {cycles}");
    config_variant(
        dir,
        "configs/masf_l63_gap100_reference.toml",
        "r.toml",
        &[
            ("cycles = 300", c.as_str()),
            ("burn_in = 50", "burn_in = 1"),
            (
                "pretrain_data = \"output/masf_l63_climatology.truth.h5\"",
                pre.as_str(),
            ),
        ],
    )
}
