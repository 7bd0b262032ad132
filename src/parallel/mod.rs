//! All MPI code lives here. Other rooms see the `Collectives` trait and a `MemberLayout`, never
//! `mpi` itself, so a filter or driver is the same code on one rank (plain `cargo run`, or the
//! in-process `SerialComm` of unit tests) and on many.
//!
//! Current layout: the world communicator splits the ensemble into contiguous member groups,
//! one per rank (every rank holds the full state of its members). Forecasts run only on a
//! rank's own members; the ensemble is all-gathered in member order before the analysis, so
//! every rank sees bit-identical input and computes bit-identical analyses: results do not
//! depend on the rank count.
use crate::error::{GendaError, Result};
use mpi::datatype::PartitionMut;
use mpi::topology::SimpleCommunicator;
use mpi::traits::*;
use mpi::Count;
use std::ops::Range;

/// The collective operations the driver needs, independent of the transport.
pub trait Collectives {
    fn rank(&self) -> usize;
    fn size(&self) -> usize;
    fn is_root(&self) -> bool {
        self.rank() == 0
    }
    /// Gather every rank's rows into `out` in rank order. `counts[r]` = number of f64 values rank
    /// r contributes; `local.len() == counts[self.rank()]`, `out.len() == counts.iter().sum()`.
    fn all_gather_rows(&self, local: &[f64], counts: &[usize], out: &mut [f64]) -> Result<()>;
    /// True on every rank iff `ok` is true on every rank (turns one rank's error into all ranks'
    /// clean exit instead of a hang).
    fn all_ok(&self, ok: bool) -> bool;
    /// Broadcast a value from the root.
    fn broadcast_f64(&self, value: &mut [f64]);
    /// Element-wise sum over ranks, in place (data-parallel gradients).
    fn all_reduce_sum_f32(&self, values: &mut [f32]);
    fn barrier(&self);
}

/// One process, no MPI: for unit tests and library use.
#[derive(Debug, Default, Clone, Copy)]
pub struct SerialComm;

impl Collectives for SerialComm {
    fn rank(&self) -> usize {
        0
    }
    fn size(&self) -> usize {
        1
    }
    fn all_gather_rows(&self, local: &[f64], counts: &[usize], out: &mut [f64]) -> Result<()> {
        if counts.len() != 1 || local.len() != counts[0] || out.len() != local.len() {
            return Err(GendaError::Parallel(
                "all_gather_rows: counts do not match buffers".into(),
            ));
        }
        out.copy_from_slice(local);
        Ok(())
    }
    fn all_ok(&self, ok: bool) -> bool {
        ok
    }
    fn broadcast_f64(&self, _value: &mut [f64]) {}
    fn all_reduce_sum_f32(&self, _values: &mut [f32]) {}
    fn barrier(&self) {}
}

/// The MPI world (works without `mpirun` as a one-rank singleton).
pub struct MpiComm {
    // Finalises MPI when dropped; must outlive `world`.
    _universe: mpi::environment::Universe,
    world: SimpleCommunicator,
}

impl MpiComm {
    pub fn init() -> Result<Self> {
        let universe = mpi::initialize().ok_or_else(|| {
            GendaError::Parallel("MPI was already initialised in this process".into())
        })?;
        let world = universe.world();
        Ok(MpiComm {
            _universe: universe,
            world,
        })
    }
}

impl Collectives for MpiComm {
    fn rank(&self) -> usize {
        self.world.rank() as usize
    }
    fn size(&self) -> usize {
        self.world.size() as usize
    }
    fn all_gather_rows(&self, local: &[f64], counts: &[usize], out: &mut [f64]) -> Result<()> {
        if counts.len() != self.size()
            || local.len() != counts[self.rank()]
            || out.len() != counts.iter().sum::<usize>()
        {
            return Err(GendaError::Parallel(
                "all_gather_rows: counts do not match buffers".into(),
            ));
        }
        let to_count = |v: usize| {
            Count::try_from(v).map_err(|_| {
                GendaError::Parallel(format!("message of {v} values exceeds MPI's int count"))
            })
        };
        let c: Vec<Count> = counts.iter().map(|&v| to_count(v)).collect::<Result<_>>()?;
        let mut displs = Vec::with_capacity(c.len());
        let mut acc = 0usize;
        for &v in counts {
            displs.push(to_count(acc)?);
            acc += v;
        }
        let mut partition = PartitionMut::new(out, c, displs);
        self.world.all_gather_varcount_into(local, &mut partition);
        Ok(())
    }
    fn all_ok(&self, ok: bool) -> bool {
        let mut all = false;
        self.world.all_reduce_into(
            &ok,
            &mut all,
            mpi::collective::SystemOperation::logical_and(),
        );
        all
    }
    fn broadcast_f64(&self, value: &mut [f64]) {
        self.world.process_at_rank(0).broadcast_into(value);
    }
    fn all_reduce_sum_f32(&self, values: &mut [f32]) {
        let send = values.to_vec();
        self.world
            .all_reduce_into(&send[..], values, mpi::collective::SystemOperation::sum());
    }
    fn barrier(&self) {
        self.world.barrier();
    }
}

/// Which members each rank holds: contiguous blocks, sizes differing by at most one.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MemberLayout {
    pub members: usize,
    pub ranges: Vec<Range<usize>>,
}

impl MemberLayout {
    pub fn new(members: usize, ranks: usize) -> Result<Self> {
        if ranks == 0 || ranks > members {
            return Err(GendaError::Parallel(format!(
                "{ranks} MPI ranks cannot split {members} ensemble members (need 1 <= ranks <= members)"
            )));
        }
        let ranges = (0..ranks)
            .map(|r| (r * members / ranks)..((r + 1) * members / ranks))
            .collect();
        Ok(MemberLayout { members, ranges })
    }

    pub fn local(&self, rank: usize) -> Range<usize> {
        self.ranges[rank].clone()
    }

    /// Values each rank contributes for rows of length `row_len`.
    pub fn counts(&self, row_len: usize) -> Vec<usize> {
        self.ranges.iter().map(|r| r.len() * row_len).collect()
    }
}

/// MPI standard version and library identification string (for `genda doctor`).
pub fn mpi_library_info() -> (String, String) {
    let (major, minor) = mpi::environment::version();
    let lib = mpi::environment::library_version().unwrap_or_else(|_| "unknown".to_string());
    (format!("{major}.{minor}"), lib.trim().to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn layout_covers_members_once() {
        for (m, r) in [(20, 1), (20, 3), (10, 10), (7, 4)] {
            let l = MemberLayout::new(m, r).unwrap();
            let all: Vec<usize> = l.ranges.iter().flat_map(|r| r.clone()).collect();
            assert_eq!(all, (0..m).collect::<Vec<_>>());
        }
        assert!(MemberLayout::new(3, 4).is_err());
    }
}
