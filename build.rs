//! Build script: make the `genda` binaries find libtorch at run time and keep CUDA linked.
//!
//! torch-sys locates libtorch (from `LIBTORCH`, or from the Python `torch` package when
//! `LIBTORCH_USE_PYTORCH=1`) and links it, but sets no rpath, so a binary started from a plain shell
//! or a Slurm job would not find `libtorch_cpu.so`. We ask the same place for the library directory
//! and (1) add it as an rpath, (2) force `libtorch_cuda.so` in past the linker's `--as-needed`, which
//! otherwise drops it and makes CUDA look unavailable on GPU nodes.
use std::path::PathBuf;
use std::process::Command;

fn torch_from_python() -> Option<(PathBuf, String)> {
    let python = std::env::var("PYTHON").unwrap_or_else(|_| "python3".to_string());
    let out = Command::new(python)
        .args([
            "-c",
            "import os, torch; print(os.path.dirname(torch.__file__)); print(torch.__version__)",
        ])
        .output()
        .ok()?;
    if !out.status.success() {
        return None;
    }
    let text = String::from_utf8(out.stdout).ok()?;
    let mut lines = text.lines().filter(|l| !l.trim().is_empty());
    let dir = PathBuf::from(lines.next()?.trim());
    let version = lines.next()?.trim().to_string();
    Some((dir, version))
}

fn main() {
    println!("cargo:rerun-if-env-changed=LIBTORCH");
    println!("cargo:rerun-if-env-changed=LIBTORCH_USE_PYTORCH");
    println!("cargo:rerun-if-env-changed=PYTHON");
    println!("cargo:rerun-if-changed=build.rs");

    let (libdir, version) = if let Ok(root) = std::env::var("LIBTORCH") {
        let root = PathBuf::from(root);
        let version = std::fs::read_to_string(root.join("build-version"))
            .map(|s| s.trim().to_string())
            .unwrap_or_else(|_| "unknown".to_string());
        (root.join("lib"), version)
    } else if let Some((dir, version)) = torch_from_python() {
        (dir.join("lib"), version)
    } else {
        println!("cargo:warning=genda: could not locate libtorch (set LIBTORCH or LIBTORCH_USE_PYTORCH=1 with torch importable); no rpath set");
        println!("cargo:rustc-env=GENDA_TORCH_VERSION=unknown");
        println!("cargo:rustc-env=GENDA_TORCH_LIBDIR=");
        return;
    };
    println!("cargo:rustc-env=GENDA_TORCH_VERSION={version}");
    println!("cargo:rustc-env=GENDA_TORCH_LIBDIR={}", libdir.display());
    println!("cargo:rustc-link-arg=-Wl,-rpath,{}", libdir.display());
    if libdir.join("libtorch_cuda.so").exists() {
        println!("cargo:rustc-link-search=native={}", libdir.display());
        println!("cargo:rustc-link-arg=-Wl,--no-as-needed,-ltorch_cuda,--as-needed");
    }
}
