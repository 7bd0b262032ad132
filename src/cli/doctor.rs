//! `genda doctor`: what genda is linked against and whether it will work on this node — MPI,
//! NetCDF/HDF5 (and their parallel I/O support), libtorch and CUDA — each problem with its fix.
use crate::io::{hdf5_library_version, netcdf_library_version};
use crate::parallel::mpi_library_info;
use crate::score::torch_info;
use std::process::Command;

struct Report {
    problems: usize,
    lines: Vec<String>,
}

impl Report {
    fn ok(&mut self, what: &str, detail: impl AsRef<str>) {
        self.lines
            .push(format!("  ok    {what:<22} {}", detail.as_ref()));
    }
    fn info(&mut self, what: &str, detail: impl AsRef<str>) {
        self.lines
            .push(format!("  info  {what:<22} {}", detail.as_ref()));
    }
    fn warn(&mut self, what: &str, detail: impl AsRef<str>, fix: impl AsRef<str>) {
        self.problems += 1;
        self.lines.push(format!(
            "  WARN  {what:<22} {}\n        fix: {}",
            detail.as_ref(),
            fix.as_ref()
        ));
    }
}

/// Shared libraries mapped into this process whose path contains `needle`.
fn loaded_libraries(needle: &str) -> Vec<String> {
    let maps = std::fs::read_to_string("/proc/self/maps").unwrap_or_default();
    let mut libs: Vec<String> = maps
        .lines()
        .filter_map(|l| l.split_whitespace().nth(5))
        .filter(|p| p.contains(needle))
        .map(str::to_string)
        .collect();
    libs.sort();
    libs.dedup();
    libs
}

fn command_output(cmd: &str, args: &[&str]) -> Option<String> {
    let out = Command::new(cmd).args(args).output().ok()?;
    out.status
        .success()
        .then(|| String::from_utf8_lossy(&out.stdout).trim().to_string())
}

/// Run all checks; returns the report text and the number of problems found.
pub fn doctor() -> (String, usize) {
    let mut r = Report {
        problems: 0,
        lines: Vec::new(),
    };
    r.ok("genda", env!("CARGO_PKG_VERSION"));

    // MPI
    let (std_version, lib) = mpi_library_info();
    let first = lib.lines().next().unwrap_or("unknown").to_string();
    r.ok(
        "MPI library",
        format!("{first} (MPI standard {std_version})"),
    );
    match command_output("mpirun", &["--version"]) {
        Some(v) => {
            let v = v.lines().next().unwrap_or("").to_string();
            let same = (lib.contains("Open MPI") && v.contains("Open MPI"))
                || (lib.contains("MPICH") && v.to_lowercase().contains("hydra"));
            if same || v.is_empty() {
                r.ok("mpirun", v);
            } else {
                r.warn("mpirun", format!("`{v}` does not match the linked library"), "put the mpirun of the MPI genda was built with first on PATH (module load ...)");
            }
        }
        None => r.warn(
            "mpirun",
            "not found on PATH",
            "apt-get install openmpi-bin, or load your site's MPI module",
        ),
    }
    if std::env::var("OMPI_COMM_WORLD_SIZE").is_ok() || std::env::var("PMI_SIZE").is_ok() {
        r.info("launch", "running under an MPI launcher");
    }

    // NetCDF / HDF5
    let nc = netcdf_library_version();
    let nc_libs = loaded_libraries("libnetcdf");
    r.ok(
        "NetCDF library",
        format!(
            "{} ({})",
            nc.split_whitespace().next().unwrap_or(&nc),
            nc_libs.first().map(String::as_str).unwrap_or("static?")
        ),
    );
    let nc_par = nc_libs
        .iter()
        .any(|p| p.contains("/mpi/") || p.contains("netcdf_mpi"))
        || command_output("nc-config", &["--has-parallel4"]).as_deref() == Some("yes");
    if nc_par {
        r.ok(
            "NetCDF parallel I/O",
            "parallel NetCDF-4: run files are written collectively, each rank its slab",
        );
    } else {
        r.warn(
            "NetCDF parallel I/O",
            "serial libnetcdf: multi-rank runs cannot write their run files collectively",
            "install libnetcdf-mpi-dev + libhdf5-openmpi-dev (scripts/setup.sh does) and rebuild with NETCDF_DIR/HDF5_DIR pointing at them (.cargo/config.toml)",
        );
    }
    let h5_libs: Vec<String> = loaded_libraries("libhdf5")
        .into_iter()
        .filter(|p| !p.contains("_hl") && !p.contains("_cpp") && !p.contains("fortran"))
        .collect();
    r.ok(
        "HDF5 library",
        format!(
            "{} ({})",
            hdf5_library_version(),
            h5_libs.first().map(String::as_str).unwrap_or("static?")
        ),
    );
    let h5_par = h5_libs
        .iter()
        .any(|p| p.contains("openmpi") || p.contains("mpich"));
    if h5_libs.len() > 1 {
        r.warn(
            "HDF5",
            format!(
                "{} HDF5 libraries are loaded: {}",
                h5_libs.len(),
                h5_libs.join(", ")
            ),
            "rebuild with HDF5_DIR set to the MPI build only (.cargo/config.toml)",
        );
    } else if h5_par {
        r.ok(
            "HDF5 parallel I/O",
            "MPI-enabled libhdf5, the only one in the process: checkpoints are written in slabs by every rank",
        );
    } else {
        r.warn(
            "HDF5 parallel I/O",
            "serial libhdf5: multi-rank checkpoints cannot be written in parallel",
            "install libhdf5-openmpi-dev and rebuild with HDF5_DIR=/usr/lib/x86_64-linux-gnu/hdf5/openmpi",
        );
    }

    // libtorch
    let t = torch_info();
    r.ok(
        "libtorch",
        format!(
            "{} from {}",
            t.version,
            if t.libdir.is_empty() { "?" } else { t.libdir }
        ),
    );
    r.ok("torch threads", t.threads.to_string());
    let cuda_linked = !loaded_libraries("libtorch_cuda.so").is_empty();
    let cuda_shipped = !t.libdir.is_empty()
        && std::path::Path::new(t.libdir)
            .join("libtorch_cuda.so")
            .exists();
    let gpu_present = command_output("nvidia-smi", &["-L"])
        .map(|s| !s.is_empty())
        .unwrap_or(false);
    match (cuda_shipped, cuda_linked) {
        (true, true) => r.ok("libtorch CUDA", "libtorch_cuda.so linked"),
        (true, false) => r.warn(
            "libtorch CUDA",
            "libtorch ships CUDA but libtorch_cuda.so is not loaded (the linker's --as-needed dropped it)",
            "rebuild genda with its build.rs (it forces -ltorch_cuda); do not override RUSTFLAGS with -Wl,--as-needed",
        ),
        (false, _) => r.info("libtorch CUDA", "CPU-only libtorch"),
    }
    if t.cuda_available {
        r.ok(
            "GPU",
            format!(
                "{} CUDA device(s) visible, cuDNN {}",
                t.cuda_devices,
                if t.cudnn_available { "yes" } else { "no" }
            ),
        );
    } else if gpu_present {
        r.warn(
            "GPU",
            "nvidia-smi sees a GPU but libtorch does not",
            "use a CUDA build of torch matching the driver (pip install torch==<pinned> from a CUDA index), check CUDA_VISIBLE_DEVICES, and that libtorch_cuda.so is linked (above)",
        );
    } else {
        r.info("GPU", "none visible: score networks train on CPU");
    }
    r.info("rayon threads", rayon::current_num_threads().to_string());

    let mut text = String::from("genda doctor\n");
    text += &r.lines.join("\n");
    text += &format!("\n{} problem(s) found\n", r.problems);
    (text, r.problems)
}
