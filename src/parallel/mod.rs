//! All MPI code lives here. Other rooms see the `Collectives` trait, the `Topology` of a run and
//! the `Reducer` handle, never `mpi` itself, so a filter or driver is the same code on one rank
//! (plain `cargo run`, or the in-process `SerialComm` of unit tests) and on many.
//!
//! Layout (PDAF-style, see DESIGN.md): world ranks = `groups × domains`. Rank r belongs to member
//! group `r / domains` and holds domain `r % domains` of the state (a contiguous slab of whole
//! *tiles*). The *domain communicator* joins the ranks of one member group (they split the
//! state and exchange halos); the *ensemble communicator* joins the ranks that hold the same
//! domain for different member groups (they gather members for the analysis). The analysis of a
//! domain runs on all N members of that domain, so every rank of an ensemble communicator
//! computes it (the filter communicator is the domain communicator of each group).
//!
//! Sums over the state (ensemble-space matrices, RMSE, mixture distances) are taken per tile and
//! the tile partials combined in global tile order (`TileReducer`): the tiles are fixed by the
//! config, not by the rank count, so results are bit-identical on any layout.
use crate::error::{GendaError, Result};
use mpi::datatype::PartitionMut;
use mpi::topology::{Color, SimpleCommunicator};
use mpi::traits::*;
use mpi::Count;
use std::ops::Range;

mod transpose;
pub use transpose::{local_transpose, SlabTranspose};

/// The collective operations genda needs, independent of the transport.
pub trait Collectives {
    fn rank(&self) -> usize;
    fn size(&self) -> usize;
    fn is_root(&self) -> bool {
        self.rank() == 0
    }
    /// Gather every rank's rows into `out` in rank order. `counts[r]` = number of f64 values rank
    /// r contributes; `local.len() == counts[self.rank()]`, `out.len() == counts.iter().sum()`.
    fn all_gather_rows(&self, local: &[f64], counts: &[usize], out: &mut [f64]) -> Result<()>;
    /// As `all_gather_rows`, but only rank 0 receives (`out` is ignored elsewhere).
    fn gather_rows_to_root(&self, local: &[f64], counts: &[usize], out: &mut [f64]) -> Result<()>;
    /// Ring halo exchange with non-blocking sends/receives: `to_left` goes to rank − 1 (it
    /// arrives there as `from_right`), `to_right` to rank + 1 (arriving as `from_left`), cyclic.
    fn ring_exchange(
        &self,
        to_left: &[f64],
        to_right: &[f64],
        from_left: &mut [f64],
        from_right: &mut [f64],
    ) -> Result<()>;
    /// True on every rank iff `ok` is true on every rank (turns one rank's error into all ranks'
    /// clean exit instead of a hang).
    fn all_ok(&self, ok: bool) -> bool;
    /// Broadcast a value from the root.
    fn broadcast_f64(&self, value: &mut [f64]);
    /// Element-wise sum over ranks, in place (data-parallel gradients).
    fn all_reduce_sum_f32(&self, values: &mut [f32]);
    /// Element-wise maximum over ranks (memory and timing reports).
    fn all_reduce_max_f64(&self, values: &mut [f64]);
    fn barrier(&self);
    /// All-to-all with per-rank counts (`send_counts[q]` values to rank q, `recv_counts[p]`
    /// from rank p, packed in rank order).
    fn all_to_all_v(
        &self,
        send: &[f64],
        send_counts: &[usize],
        recv: &mut [f64],
        recv_counts: &[usize],
    ) -> Result<()>;
    /// Sub-communicator of the ranks with the same `color`, ordered by `key`.
    fn split(&self, color: usize, key: usize) -> Result<Box<dyn Collectives>>;
    /// Broadcast bytes from the root; the other ranks' `bytes` are replaced (any length).
    fn broadcast_bytes(&self, bytes: &mut Vec<u8>);
    /// The MPI communicator underneath, for libraries that take one (parallel NetCDF-4 and
    /// HDF5 files); `None` for the in-process `SerialComm`.
    fn mpi_handle(&self) -> Option<RawComm> {
        None
    }
}

/// A raw MPI communicator handle (what parallel NetCDF and HDF5 take).
pub type RawComm = mpi::ffi::MPI_Comm;

/// The null `MPI_Info` (no hints) for parallel file creation.
pub fn info_null() -> mpi::ffi::MPI_Info {
    // SAFETY: reads an immutable handle constant that rsmpi's C shim initialises at load time.
    unsafe { mpi::ffi::RSMPI_INFO_NULL }
}

fn check_v(
    size: usize,
    send: &[f64],
    send_counts: &[usize],
    recv: &[f64],
    recv_counts: &[usize],
) -> Result<()> {
    let (ss, rs): (usize, usize) = (send_counts.iter().sum(), recv_counts.iter().sum());
    if send_counts.len() != size
        || recv_counts.len() != size
        || ss != send.len()
        || rs != recv.len()
    {
        return Err(GendaError::Parallel(format!(
            "all-to-all: counts for {} and {} ranks summing to {ss} and {rs} do not fit {} ranks with {} and {} values",
            send_counts.len(),
            recv_counts.len(),
            size,
            send.len(),
            recv.len()
        )));
    }
    Ok(())
}

fn check_counts(
    rank: usize,
    size: usize,
    local: &[f64],
    counts: &[usize],
    out: &[f64],
    root_only: bool,
) -> Result<()> {
    let total: usize = counts.iter().sum();
    if counts.len() != size
        || local.len() != counts[rank]
        || ((!root_only || rank == 0) && out.len() != total)
    {
        return Err(GendaError::Parallel(format!(
            "gather: counts {counts:?} do not match buffers (local {}, out {})",
            local.len(),
            out.len()
        )));
    }
    Ok(())
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
        check_counts(0, 1, local, counts, out, false)?;
        out.copy_from_slice(local);
        Ok(())
    }
    fn gather_rows_to_root(&self, local: &[f64], counts: &[usize], out: &mut [f64]) -> Result<()> {
        self.all_gather_rows(local, counts, out)
    }
    fn ring_exchange(
        &self,
        to_left: &[f64],
        to_right: &[f64],
        from_left: &mut [f64],
        from_right: &mut [f64],
    ) -> Result<()> {
        ring_self(to_left, to_right, from_left, from_right)
    }
    fn all_ok(&self, ok: bool) -> bool {
        ok
    }
    fn broadcast_f64(&self, _value: &mut [f64]) {}
    fn all_reduce_sum_f32(&self, _values: &mut [f32]) {}
    fn all_reduce_max_f64(&self, _values: &mut [f64]) {}
    fn barrier(&self) {}
    fn all_to_all_v(
        &self,
        send: &[f64],
        send_counts: &[usize],
        recv: &mut [f64],
        recv_counts: &[usize],
    ) -> Result<()> {
        check_v(1, send, send_counts, recv, recv_counts)?;
        recv.copy_from_slice(send);
        Ok(())
    }
    fn split(&self, _color: usize, _key: usize) -> Result<Box<dyn Collectives>> {
        Ok(Box::new(SerialComm))
    }
    fn broadcast_bytes(&self, _bytes: &mut Vec<u8>) {}
}

/// A one-rank ring is its own neighbour on both sides.
fn ring_self(
    to_left: &[f64],
    to_right: &[f64],
    from_left: &mut [f64],
    from_right: &mut [f64],
) -> Result<()> {
    if from_left.len() != to_right.len() || from_right.len() != to_left.len() {
        return Err(GendaError::Parallel(
            "ring exchange: halo sizes differ".into(),
        ));
    }
    from_left.copy_from_slice(to_right);
    from_right.copy_from_slice(to_left);
    Ok(())
}

/// An MPI communicator (the world works without `mpirun` as a one-rank singleton).
pub struct MpiComm {
    comm: SimpleCommunicator,
    // Finalises MPI when dropped; only the world holds it, and it must outlive `comm`
    // (fields drop in declaration order).
    _universe: Option<mpi::environment::Universe>,
}

impl MpiComm {
    pub fn init() -> Result<Self> {
        let universe = mpi::initialize().ok_or_else(|| {
            GendaError::Parallel("MPI was already initialised in this process".into())
        })?;
        let world = universe.world();
        if world.size() > 1 {
            install_abort_on_panic(world.rank());
        }
        Ok(MpiComm {
            comm: world,
            _universe: Some(universe),
        })
    }
}

/// A panic on one rank ends the whole MPI job at once: the message is printed, then
/// `MPI_Abort` (the other ranks would otherwise wait forever in their next collective).
fn install_abort_on_panic(rank: i32) {
    let default = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        default(info);
        eprintln!("genda: error: rank {rank} panicked; aborting the MPI job");
        // SAFETY: MPI is initialised (the hook is installed after MPI_Init) and MPI_Abort may be
        // called from any thread; it does not return.
        unsafe {
            mpi::ffi::MPI_Abort(mpi::ffi::RSMPI_COMM_WORLD, 1);
        }
    }));
}

/// Test hook: `GENDA_INJECT_FAULT=<rank>:<cycle>` makes that rank panic at that cycle of
/// `genda run` (the failure test under mpirun), `<rank>:<cycle>:kill` makes it send itself
/// SIGKILL there (a crash no handler sees, at a known cycle: the restart tests). Never set in
/// production.
pub fn injected_fault(rank: usize, cycle: usize) {
    if let Ok(v) = std::env::var("GENDA_INJECT_FAULT") {
        let mut it = v.split(':');
        let (r, c, how) = (it.next(), it.next(), it.next());
        if r.and_then(|r| r.parse().ok()) == Some(rank)
            && c.and_then(|c| c.parse().ok()) == Some(cycle)
        {
            if how == Some("kill") {
                let _ = signal_hook::low_level::raise(signal_hook::consts::SIGKILL);
            }
            panic!("fault injected by GENDA_INJECT_FAULT={v}");
        }
    }
}

fn to_count(v: usize) -> Result<Count> {
    Count::try_from(v)
        .map_err(|_| GendaError::Parallel(format!("message of {v} values exceeds MPI's int count")))
}

fn counts_displs(counts: &[usize]) -> Result<(Vec<Count>, Vec<Count>)> {
    let c: Vec<Count> = counts.iter().map(|&v| to_count(v)).collect::<Result<_>>()?;
    let mut displs = Vec::with_capacity(c.len());
    let mut acc = 0usize;
    for &v in counts {
        displs.push(to_count(acc)?);
        acc += v;
    }
    Ok((c, displs))
}

impl Collectives for MpiComm {
    fn rank(&self) -> usize {
        self.comm.rank() as usize
    }
    fn size(&self) -> usize {
        self.comm.size() as usize
    }
    fn all_gather_rows(&self, local: &[f64], counts: &[usize], out: &mut [f64]) -> Result<()> {
        check_counts(self.rank(), self.size(), local, counts, out, false)?;
        if self.size() == 1 {
            out.copy_from_slice(local);
            return Ok(());
        }
        let (c, displs) = counts_displs(counts)?;
        let mut partition = PartitionMut::new(out, c, displs);
        self.comm.all_gather_varcount_into(local, &mut partition);
        Ok(())
    }
    fn gather_rows_to_root(&self, local: &[f64], counts: &[usize], out: &mut [f64]) -> Result<()> {
        check_counts(self.rank(), self.size(), local, counts, out, true)?;
        if self.size() == 1 {
            out.copy_from_slice(local);
            return Ok(());
        }
        let root = self.comm.process_at_rank(0);
        if self.rank() == 0 {
            let (c, displs) = counts_displs(counts)?;
            let mut partition = PartitionMut::new(out, c, displs);
            root.gather_varcount_into_root(local, &mut partition);
        } else {
            root.gather_varcount_into(local);
        }
        Ok(())
    }
    fn ring_exchange(
        &self,
        to_left: &[f64],
        to_right: &[f64],
        from_left: &mut [f64],
        from_right: &mut [f64],
    ) -> Result<()> {
        let (rank, size) = (self.rank(), self.size());
        if size == 1 {
            return ring_self(to_left, to_right, from_left, from_right);
        }
        let left = self.comm.process_at_rank(((rank + size - 1) % size) as i32);
        let right = self.comm.process_at_rank(((rank + 1) % size) as i32);
        // Tag 0: data moving rightwards, tag 1: leftwards (left and right are the same rank
        // when size = 2).
        mpi::request::scope(|scope| {
            let r1 = left.immediate_receive_into_with_tag(scope, from_left, 0);
            let r2 = right.immediate_receive_into_with_tag(scope, from_right, 1);
            let s1 = right.immediate_send_with_tag(scope, to_right, 0);
            let s2 = left.immediate_send_with_tag(scope, to_left, 1);
            r1.wait();
            r2.wait();
            s1.wait();
            s2.wait();
        });
        Ok(())
    }
    fn all_ok(&self, ok: bool) -> bool {
        let mut all = false;
        self.comm.all_reduce_into(
            &ok,
            &mut all,
            mpi::collective::SystemOperation::logical_and(),
        );
        all
    }
    fn broadcast_f64(&self, value: &mut [f64]) {
        self.comm.process_at_rank(0).broadcast_into(value);
    }
    fn all_reduce_sum_f32(&self, values: &mut [f32]) {
        let send = values.to_vec();
        self.comm
            .all_reduce_into(&send[..], values, mpi::collective::SystemOperation::sum());
    }
    fn all_reduce_max_f64(&self, values: &mut [f64]) {
        let send = values.to_vec();
        self.comm
            .all_reduce_into(&send[..], values, mpi::collective::SystemOperation::max());
    }
    fn barrier(&self) {
        self.comm.barrier();
    }
    fn all_to_all_v(
        &self,
        send: &[f64],
        send_counts: &[usize],
        recv: &mut [f64],
        recv_counts: &[usize],
    ) -> Result<()> {
        check_v(self.size(), send, send_counts, recv, recv_counts)?;
        let (sc, sd) = counts_displs(send_counts)?;
        let (rc, rd) = counts_displs(recv_counts)?;
        let sp = mpi::datatype::Partition::new(send, sc, sd);
        let mut rp = PartitionMut::new(recv, rc, rd);
        self.comm.all_to_all_varcount_into(&sp, &mut rp);
        Ok(())
    }
    fn split(&self, color: usize, key: usize) -> Result<Box<dyn Collectives>> {
        let sub = self
            .comm
            .split_by_color_with_key(Color::with_value(color as i32), key as i32)
            .ok_or_else(|| GendaError::Parallel("communicator split failed".into()))?;
        Ok(Box::new(MpiComm {
            comm: sub,
            _universe: None,
        }))
    }
    fn broadcast_bytes(&self, bytes: &mut Vec<u8>) {
        let root = self.comm.process_at_rank(0);
        let mut len = [bytes.len() as u64];
        root.broadcast_into(&mut len[..]);
        bytes.resize(len[0] as usize, 0);
        root.broadcast_into(&mut bytes[..]);
    }
    fn mpi_handle(&self) -> Option<RawComm> {
        Some(mpi::raw::AsRaw::as_raw(&self.comm))
    }
}

/// The global state index space cut into fixed tiles, and the tiles into contiguous domains.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Decomposition {
    /// Global state dimension.
    pub n: usize,
    /// Tile length (state indices).
    pub tile: usize,
    pub domains: usize,
}

/// Default upper bound on the number of tiles (and so on domains) when the config sets none.
pub const DEFAULT_MAX_TILES: usize = 64;

impl Decomposition {
    /// The smallest divisor of `n` that gives at most `DEFAULT_MAX_TILES` tiles.
    pub fn default_tile(n: usize) -> usize {
        let lo = n.div_ceil(DEFAULT_MAX_TILES).max(1);
        (lo..=n).find(|t| n % t == 0).unwrap_or(n)
    }

    /// `halo`: the widest halo a domain must serve its neighbours (model stencil, localisation).
    pub fn new(n: usize, tile: usize, domains: usize, halo: usize) -> Result<Self> {
        if tile == 0 || n % tile != 0 {
            return Err(GendaError::invalid(
                "parallel.tile_size",
                format!("{tile} does not divide the state dimension {n}"),
            ));
        }
        if domains == 0 {
            return Err(GendaError::invalid(
                "parallel.domains",
                "must be at least 1",
            ));
        }
        let d = Decomposition { n, tile, domains };
        if d.tiles() < domains {
            return Err(GendaError::invalid(
                "parallel.domains",
                format!(
                    "{domains} domains but the state has only {} tiles of {tile} (set parallel.tile_size smaller)",
                    d.tiles()
                ),
            ));
        }
        if domains > 1 && d.min_domain_len() < halo {
            return Err(GendaError::invalid(
                "parallel.domains",
                format!(
                    "a domain of {} state indices is smaller than the halo of {halo} it must serve (model stencil or localisation reach); use fewer domains",
                    d.min_domain_len()
                ),
            ));
        }
        Ok(d)
    }

    pub fn tiles(&self) -> usize {
        self.n / self.tile
    }

    /// Tile indices of domain `d`.
    pub fn domain_tiles(&self, d: usize) -> Range<usize> {
        let t = self.tiles();
        (t * d / self.domains)..(t * (d + 1) / self.domains)
    }

    /// Global state indices of domain `d`.
    pub fn domain_range(&self, d: usize) -> Range<usize> {
        let r = self.domain_tiles(d);
        (r.start * self.tile)..(r.end * self.tile)
    }

    pub fn min_domain_len(&self) -> usize {
        (0..self.domains)
            .map(|d| self.domain_range(d).len())
            .min()
            .unwrap_or(0)
    }

    /// Values each domain contributes for `rows` rows of its slab.
    pub fn slab_counts(&self, rows: usize) -> Vec<usize> {
        (0..self.domains)
            .map(|d| rows * self.domain_range(d).len())
            .collect()
    }
}

/// Where this rank sits: member group × domain.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Layout {
    pub groups: usize,
    pub domains: usize,
    pub group: usize,
    pub domain: usize,
    /// Members of each group.
    pub members: MemberLayout,
}

impl Layout {
    pub fn new(
        world_size: usize,
        world_rank: usize,
        domains: usize,
        members: usize,
    ) -> Result<Self> {
        if domains == 0 || world_size % domains != 0 {
            return Err(GendaError::Parallel(format!(
                "{world_size} MPI rank(s) cannot be split into {domains} domain(s) per member: the rank count must be a multiple of parallel.domains"
            )));
        }
        let groups = world_size / domains;
        let members = MemberLayout::new(members, groups).map_err(|_| {
            GendaError::Parallel(format!(
                "{world_size} ranks / {domains} domains = {groups} member groups, more than the {members} ensemble members"
            ))
        })?;
        Ok(Layout {
            groups,
            domains,
            group: world_rank / domains,
            domain: world_rank % domains,
            members,
        })
    }

    pub fn my_members(&self) -> Range<usize> {
        self.members.local(self.group)
    }
}

/// The communicators of a run.
pub struct Topology {
    pub layout: Layout,
    /// Ranks of my member group, one per domain (halo exchange, tile sums, output gathers).
    pub domain: Box<dyn Collectives>,
    /// Ranks holding my domain for the other member groups (member gathers).
    pub ensemble: Box<dyn Collectives>,
}

impl Topology {
    pub fn new(world: &dyn Collectives, domains: usize, members: usize) -> Result<Self> {
        let layout = Layout::new(world.size(), world.rank(), domains, members)?;
        let domain = world.split(layout.group, layout.domain)?;
        let ensemble = world.split(layout.domain, layout.group)?;
        Ok(Topology {
            layout,
            domain,
            ensemble,
        })
    }
}

/// Layout-independent sums over the state, for filters and metrics.
pub trait Reducer {
    /// `partials`: this rank's tiles in order, `k` values each. Returns the `k` sums over every
    /// tile of the state, added in global tile order (bit-identical on any layout).
    fn sum_tiles(&self, partials: &[f64], k: usize) -> Result<Vec<f64>>;

    /// `sum_tiles` with the partials produced tile by tile: `add_tile(t, acc)` adds local tile
    /// t's `k` partials to `acc`, rounding as if each partial were formed first and then added
    /// (a one-column tile may add its products straight in). A rank that holds the whole state
    /// accumulates as it goes, with no buffer of every tile's partials; otherwise they are
    /// materialised and gathered. The same sums, bit for bit, on any layout. `out`: the k sums.
    fn sum_tiles_by(
        &self,
        tiles: usize,
        k: usize,
        add_tile: &mut dyn FnMut(usize, &mut [f64]),
        out: &mut Vec<f64>,
    ) -> Result<()> {
        materialised_sums(self, tiles, k, add_tile, out)
    }
}

fn materialised_sums<R: Reducer + ?Sized>(
    r: &R,
    tiles: usize,
    k: usize,
    add_tile: &mut dyn FnMut(usize, &mut [f64]),
    out: &mut Vec<f64>,
) -> Result<()> {
    let mut partials = vec![0.0; tiles * k];
    for (t, p) in partials.chunks_mut(k.max(1)).enumerate() {
        add_tile(t, p);
    }
    *out = r.sum_tiles(&partials, k)?;
    Ok(())
}

/// The streaming form of `sum_in_order` (out = 0, then each tile added in order).
fn streamed_sums(
    tiles: usize,
    k: usize,
    add_tile: &mut dyn FnMut(usize, &mut [f64]),
    out: &mut Vec<f64>,
) -> Result<()> {
    if k == 0 {
        return Err(GendaError::Parallel(
            "sum_tiles: zero values per tile".into(),
        ));
    }
    out.clear();
    out.resize(k, 0.0);
    for t in 0..tiles {
        add_tile(t, out);
    }
    Ok(())
}

fn sum_in_order(all: &[f64], k: usize) -> Vec<f64> {
    let mut out = vec![0.0; k];
    for chunk in all.chunks(k) {
        for (o, v) in out.iter_mut().zip(chunk) {
            *o += v;
        }
    }
    out
}

/// The whole state on one rank.
#[derive(Debug, Default, Clone, Copy)]
pub struct SerialReducer;

impl Reducer for SerialReducer {
    fn sum_tiles(&self, partials: &[f64], k: usize) -> Result<Vec<f64>> {
        if k == 0 || partials.len() % k != 0 {
            return Err(GendaError::Parallel(
                "sum_tiles: partials are not whole tiles".into(),
            ));
        }
        Ok(sum_in_order(partials, k))
    }

    fn sum_tiles_by(
        &self,
        tiles: usize,
        k: usize,
        add_tile: &mut dyn FnMut(usize, &mut [f64]),
        out: &mut Vec<f64>,
    ) -> Result<()> {
        streamed_sums(tiles, k, add_tile, out)
    }
}

/// Tile sums over a domain communicator: all-gather the tile partials, add them in tile order.
pub struct TileReducer<'a> {
    comm: &'a dyn Collectives,
    tiles_per_rank: Vec<usize>,
}

impl<'a> TileReducer<'a> {
    pub fn new(comm: &'a dyn Collectives, dec: &Decomposition) -> Self {
        TileReducer {
            comm,
            tiles_per_rank: (0..dec.domains)
                .map(|d| dec.domain_tiles(d).len())
                .collect(),
        }
    }
}

impl Reducer for TileReducer<'_> {
    fn sum_tiles(&self, partials: &[f64], k: usize) -> Result<Vec<f64>> {
        let counts: Vec<usize> = self.tiles_per_rank.iter().map(|t| t * k).collect();
        if self.comm.size() != counts.len() || partials.len() != counts[self.comm.rank()] {
            return Err(GendaError::Parallel(format!(
                "sum_tiles: {} partial values for {} tiles of {k}",
                partials.len(),
                self.tiles_per_rank
                    .get(self.comm.rank())
                    .copied()
                    .unwrap_or(0)
            )));
        }
        let mut all = vec![0.0; counts.iter().sum()];
        self.comm.all_gather_rows(partials, &counts, &mut all)?;
        Ok(sum_in_order(&all, k))
    }

    fn sum_tiles_by(
        &self,
        tiles: usize,
        k: usize,
        add_tile: &mut dyn FnMut(usize, &mut [f64]),
        out: &mut Vec<f64>,
    ) -> Result<()> {
        if self.comm.size() == 1 && self.tiles_per_rank == [tiles] {
            streamed_sums(tiles, k, add_tile, out)
        } else {
            materialised_sums(self, tiles, k, add_tile, out)
        }
    }
}

/// Which members each group holds: contiguous blocks, sizes differing by at most one.
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

/// Peak resident memory of this process (VmHWM) in bytes, if the OS reports it.
pub fn max_rss_bytes() -> Option<u64> {
    let s = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = s.lines().find(|l| l.starts_with("VmHWM:"))?;
    let kb: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb * 1024)
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

    #[test]
    fn domains_are_whole_tiles_covering_the_state() {
        let d = Decomposition::new(40, 1, 3, 2).unwrap();
        let all: Vec<usize> = (0..3).flat_map(|k| d.domain_range(k)).collect();
        assert_eq!(all, (0..40).collect::<Vec<_>>());
        assert_eq!(Decomposition::default_tile(40), 1);
        assert_eq!(Decomposition::default_tile(1_000_000), 15_625);
        assert!(Decomposition::new(40, 3, 1, 0).is_err());
        assert!(Decomposition::new(40, 10, 5, 0).is_err());
        assert!(Decomposition::new(40, 1, 20, 3).is_err());
        assert!(Layout::new(6, 0, 4, 20).is_err());
        assert!(Layout::new(8, 0, 2, 3).is_err());
        let l = Layout::new(4, 3, 2, 10).unwrap();
        assert_eq!((l.group, l.domain, l.my_members()), (1, 1, 5..10));
    }
}
