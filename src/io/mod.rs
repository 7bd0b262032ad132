//! Files: NetCDF (CF) for what people and other models read, HDF5 for what genda reads back.
//! Every writer goes through `PendingFile`: data go to a temporary name in the target directory
//! and are renamed into place only when complete, so a failed run never leaves a half-written file.
mod checkpoint;
pub mod coupling;
mod hdf5_io;
mod netcdf_out;
pub mod plot;
pub mod plot_cost;
pub mod plot_scaling;
pub mod plot_sweep;
mod tensors;

pub use checkpoint::{
    read_checkpoint, read_checkpoint_slab, snapshot_path, write_checkpoint, CheckpointSlab,
    RunCheckpoint,
};
pub use hdf5_io::{read_trajectory, write_trajectory, Trajectory, TrajectoryReader};
pub use netcdf_out::{
    at as nc_error, create_cf, read_run, OutputLayout, RunData, RunMeta, RunSlabs, RunWriter,
    FIELD_VARIABLES,
};
pub use tensors::{read_tensor_file, write_tensor_file, NamedArray, TensorFile};

use crate::error::{GendaError, Result};
use crate::parallel::Collectives;
use std::path::{Path, PathBuf};

/// A file being written under a temporary name; removed on drop unless committed.
#[derive(Debug)]
pub struct PendingFile {
    tmp: PathBuf,
    target: PathBuf,
    committed: bool,
}

impl PendingFile {
    /// Reserve `target`: create its directory if needed and check it is writable.
    pub fn new(target: &Path) -> Result<Self> {
        let dir = match target.parent() {
            Some(d) if !d.as_os_str().is_empty() => d.to_path_buf(),
            _ => PathBuf::from("."),
        };
        std::fs::create_dir_all(&dir)
            .map_err(|e| GendaError::file(&dir, format!("cannot create output directory: {e}")))?;
        let name = target
            .file_name()
            .ok_or_else(|| GendaError::file(target, "output path has no file name"))?
            .to_string_lossy()
            .to_string();
        // Keep the extension last: some writers (PNG) choose the format from it. The node's
        // name is part of it: on a file system shared between nodes, a pid means nothing on
        // another node.
        let host = node_name();
        let prefix = format!(".genda-tmp-{host}-");
        let tmp = dir.join(format!("{prefix}{}-{name}", std::process::id()));
        // Probe writability now, before any work is done.
        std::fs::File::create(&tmp)
            .map_err(|e| GendaError::file(target, format!("output is not writable: {e}")))?;
        // Temporaries of the same target left by killed runs on this node (their pid is gone
        // here) are removed: a SIGKILL during a write leaves one behind. Other nodes' files,
        // live or not, are never touched.
        let suffix = format!("-{name}");
        for entry in std::fs::read_dir(&dir).into_iter().flatten().flatten() {
            let f = entry.file_name().to_string_lossy().into_owned();
            if let Some(pid) = f
                .strip_prefix(&prefix)
                .and_then(|r| r.strip_suffix(&suffix))
                .filter(|p| !p.is_empty() && p.bytes().all(|b| b.is_ascii_digit()))
            {
                let alive = Path::new("/proc").join(pid).exists();
                if !alive && entry.path() != tmp {
                    let _ = std::fs::remove_file(entry.path());
                }
            }
        }
        Ok(PendingFile {
            tmp,
            target: target.to_path_buf(),
            committed: false,
        })
    }

    /// Reserve `target` and start from a copy of `source` (resuming a partly written file).
    pub fn from_copy(target: &Path, source: &Path) -> Result<Self> {
        let p = Self::new(target)?;
        std::fs::copy(source, &p.tmp).map_err(|e| {
            GendaError::file(source, format!("cannot copy to {}: {e}", p.tmp.display()))
        })?;
        Ok(p)
    }

    pub fn tmp_path(&self) -> &Path {
        &self.tmp
    }

    pub fn target(&self) -> &Path {
        &self.target
    }

    /// Move the complete file into place.
    pub fn commit(mut self) -> Result<PathBuf> {
        std::fs::rename(&self.tmp, &self.target).map_err(|e| {
            GendaError::file(
                &self.target,
                format!("cannot move finished file into place: {e}"),
            )
        })?;
        self.committed = true;
        Ok(self.target.clone())
    }
}

impl Drop for PendingFile {
    fn drop(&mut self) {
        if !self.committed {
            let _ = std::fs::remove_file(&self.tmp);
        }
    }
}

/// A file that every rank of `comm` writes together (parallel NetCDF-4 / HDF5): the root
/// reserves the temporary name (a `PendingFile`) and sends it to the others; only the root
/// renames it into place, or removes it when the write fails. On one rank it is a `PendingFile`.
#[derive(Debug)]
pub struct SharedPending {
    /// The root's reservation (`None` on the other ranks).
    own: Option<PendingFile>,
    tmp: PathBuf,
    target: PathBuf,
}

impl SharedPending {
    /// Reserve `target` on the root (optionally starting from a copy of `source`) and agree
    /// on the temporary name; every rank of `comm` calls this.
    pub fn new(target: &Path, source: Option<&Path>, comm: &dyn Collectives) -> Result<Self> {
        let res = if comm.is_root() {
            match source {
                Some(src) => PendingFile::from_copy(target, src),
                None => PendingFile::new(target),
            }
            .map(Some)
        } else {
            Ok(None)
        };
        if !comm.all_ok(res.is_ok()) {
            return Err(res.err().unwrap_or_else(|| {
                GendaError::file(target, "rank 0 could not create the file (see its error)")
            }));
        }
        let own = res?;
        let mut name = own
            .as_ref()
            .map(|p| p.tmp_path().to_string_lossy().into_owned().into_bytes())
            .unwrap_or_default();
        comm.broadcast_bytes(&mut name);
        let tmp = PathBuf::from(String::from_utf8_lossy(&name).into_owned());
        Ok(SharedPending {
            own,
            tmp,
            target: target.to_path_buf(),
        })
    }

    pub fn tmp_path(&self) -> &Path {
        &self.tmp
    }

    pub fn target(&self) -> &Path {
        &self.target
    }

    /// Create the NetCDF-4 file at the temporary name: on every rank of `comm` together
    /// (parallel NetCDF-4 over MPI-IO) when it has more than one, else serially. Errors name the
    /// target.
    pub fn create_netcdf(&self, comm: &dyn Collectives) -> Result<netcdf::FileMut> {
        match comm.mpi_handle().filter(|_| comm.size() > 1) {
            Some(raw) => netcdf::create_par_with(
                &self.tmp,
                raw,
                crate::parallel::info_null(),
                netcdf::Options::NETCDF4,
            ),
            None => netcdf::create_with(&self.tmp, netcdf::Options::NETCDF4),
        }
        .map_err(nc_error(&self.target, "create"))
    }

    /// Move the complete file into place (the root renames; every rank learns the outcome).
    /// Call after every rank has closed the file.
    pub fn commit(self, comm: &dyn Collectives) -> Result<PathBuf> {
        let res = match self.own {
            Some(p) => p.commit(),
            None => Ok(self.target.clone()),
        };
        if !comm.all_ok(res.is_ok()) {
            return Err(res.err().unwrap_or_else(|| {
                GendaError::file(&self.target, "rank 0 could not move the file into place")
            }));
        }
        res
    }
}

/// The first failure of any rank of `comm`, as every rank's error: the failing rank's own,
/// elsewhere one naming `path` and the step `what`.
pub fn agree<T>(comm: &dyn Collectives, res: Result<T>, path: &Path, what: &str) -> Result<T> {
    if comm.all_ok(res.is_ok()) {
        return res;
    }
    Err(res.err().unwrap_or_else(|| {
        GendaError::file(
            path,
            format!("{what} failed on another rank (see its error)"),
        )
    }))
}

/// This node's host name (for temporary-file names), with characters outside [A-Za-z0-9.]
/// replaced, so that it cannot be confused with the pid and name that follow it.
fn node_name() -> String {
    let raw = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .ok()
        .or_else(|| std::env::var("HOSTNAME").ok())
        .unwrap_or_else(|| "localhost".into());
    let s: String = raw
        .trim()
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '.' {
                c
            } else {
                '_'
            }
        })
        .collect();
    if s.is_empty() {
        "localhost".into()
    } else {
        s
    }
}

/// Version string of the linked libnetcdf (for `genda doctor`).
pub fn netcdf_library_version() -> String {
    // SAFETY: nc_inq_libvers returns a pointer to a static NUL-terminated string.
    unsafe {
        let p = netcdf_sys::nc_inq_libvers();
        if p.is_null() {
            return "unknown".into();
        }
        std::ffi::CStr::from_ptr(p).to_string_lossy().into_owned()
    }
}

/// Version of the linked libhdf5 (for `genda doctor`).
pub fn hdf5_library_version() -> String {
    let (a, b, c) = hdf5::library_version();
    format!("{a}.{b}.{c}")
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Cleanup removes this node's temporaries of dead processes and nothing of other nodes.
    #[test]
    fn stale_temporaries_of_this_node_only_are_removed() {
        let dir = tempfile::tempdir().unwrap();
        let target = dir.path().join("run.nc");
        let host = node_name();
        // A pid that is not running here (pid_max is below 2^22 on Linux).
        let dead = 4_999_999u32;
        let mine_dead = dir.path().join(format!(".genda-tmp-{host}-{dead}-run.nc"));
        let other_node = dir
            .path()
            .join(format!(".genda-tmp-othernode-{dead}-run.nc"));
        let legacy = dir.path().join(format!(".genda-tmp-{dead}-run.nc"));
        for p in [&mine_dead, &other_node, &legacy] {
            std::fs::write(p, b"x").unwrap();
        }
        let p = PendingFile::new(&target).unwrap();
        assert!(!mine_dead.exists(), "this node's dead temporary stays");
        assert!(
            other_node.exists() && legacy.exists(),
            "another node's file was removed"
        );
        assert!(p.tmp_path().exists());
        drop(p);
        assert!(!target.exists());
    }
}
