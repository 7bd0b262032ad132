//! The all-to-all transpose behind the slab-decomposed 2-D FFT.
//!
//! A square n×n field is split into row slabs of m = n / D rows over the D ranks of a domain
//! communicator. After the row transforms, each rank needs whole columns: `SlabTranspose` sends
//! the m×m block (slab d, columns of rank q) to rank q with one `MPI_Alltoallv` for all fields
//! at once (the rank's own block is transposed in place, not sent), and rank q stores the
//! columns it owns as rows. The same call maps the transposed layout
//! back. On one rank it is a cache-blocked local transpose: pure data movement either way, so a
//! transform gives the same bits on any number of ranks.
use super::Collectives;
use crate::error::{GendaError, Result};
use rustfft::num_complex::Complex64;

pub struct SlabTranspose<'a> {
    comm: &'a dyn Collectives,
    n: usize,
    send: Vec<Complex64>,
    recv: Vec<Complex64>,
}

impl<'a> SlabTranspose<'a> {
    /// `n`: grid side; it must split into equal slabs over the communicator.
    pub fn new(comm: &'a dyn Collectives, n: usize) -> Result<Self> {
        if n == 0 || n % comm.size() != 0 {
            return Err(GendaError::invalid(
                "parallel.domains",
                format!(
                    "the grid side {n} is not divisible by the {} domains of a slab decomposition",
                    comm.size()
                ),
            ));
        }
        Ok(SlabTranspose {
            comm,
            n,
            send: Vec::new(),
            recv: Vec::new(),
        })
    }

    /// Rows of this rank's slab.
    pub fn rows(&self) -> usize {
        self.n / self.comm.size()
    }

    /// `src`: `fields` slabs of m rows × n columns (this rank's rows of each field), row-major.
    /// `dst`: the same fields as m rows × n, where row c holds column d·m + c of the field (all n
    /// of its entries), d = this rank.
    pub fn transpose(&mut self, src: &[Complex64], dst: &mut [Complex64]) -> Result<()> {
        let (n, ranks) = (self.n, self.comm.size());
        let m = n / ranks;
        let slab = m * n;
        if src.len() % slab != 0 || dst.len() != src.len() {
            return Err(GendaError::Parallel(format!(
                "slab transpose: {} values do not make slabs of {m}×{n}",
                src.len()
            )));
        }
        let fields = src.len() / slab;
        if ranks == 1 {
            for (s, t) in src.chunks(slab).zip(dst.chunks_mut(slab)) {
                local_transpose(s, t, n);
            }
            return Ok(());
        }
        let block = fields * m * m;
        let zero = Complex64::new(0.0, 0.0);
        let d = self.comm.rank();
        // Our own block never leaves the rank: transposed straight into place.
        for (fs, fd) in src.chunks(slab).zip(dst.chunks_mut(slab)) {
            transpose_block(&fs[d * m..], n, &mut fd[d * m..], n, m, m);
        }
        self.send.resize(block * (ranks - 1), zero);
        self.recv.resize(block * (ranks - 1), zero);
        // Block for rank q ≠ d, field f: the m×m sub-matrix (our rows, columns q·m..) already
        // transposed, so the receiver copies contiguous runs of m.
        let others = || (0..ranks).filter(move |&q| q != d);
        for (b, q) in others().enumerate() {
            for (f, fs) in src.chunks(slab).enumerate() {
                let o = b * block + f * m * m;
                transpose_block(&fs[q * m..], n, &mut self.send[o..o + m * m], m, m, m);
            }
        }
        let counts: Vec<usize> = (0..ranks)
            .map(|q| if q == d { 0 } else { 2 * block })
            .collect();
        self.comm.all_to_all_v(
            as_f64(&self.send),
            &counts,
            as_f64_mut(&mut self.recv),
            &counts,
        )?;
        // Block from rank p, field f, row c: column d·m + c of the field at rows p·m ...
        for (b, p) in others().enumerate() {
            for (f, fd) in dst.chunks_mut(slab).enumerate() {
                let o = b * block + f * m * m;
                for c in 0..m {
                    fd[c * n + p * m..c * n + (p + 1) * m]
                        .copy_from_slice(&self.recv[o + c * m..o + (c + 1) * m]);
                }
            }
        }
        Ok(())
    }
}

/// `Complex64` is `#[repr(C)] { re, im }`: a slice of it is a slice of twice as many f64.
fn as_f64(a: &[Complex64]) -> &[f64] {
    // SAFETY: num_complex::Complex<f64> is repr(C) with two f64 fields, no padding.
    unsafe { std::slice::from_raw_parts(a.as_ptr() as *const f64, 2 * a.len()) }
}

fn as_f64_mut(a: &mut [Complex64]) -> &mut [f64] {
    // SAFETY: as in `as_f64`; the borrow is unique.
    unsafe { std::slice::from_raw_parts_mut(a.as_mut_ptr() as *mut f64, 2 * a.len()) }
}

/// dst[c·ds + r] = src[r·ss + c] for r < rows, c < cols, in 16×16 tiles (contiguous writes).
fn transpose_block(
    src: &[Complex64],
    ss: usize,
    dst: &mut [Complex64],
    ds: usize,
    rows: usize,
    cols: usize,
) {
    const B: usize = 16;
    for r0 in (0..rows).step_by(B) {
        let r1 = (r0 + B).min(rows);
        for c0 in (0..cols).step_by(B) {
            for c in c0..(c0 + B).min(cols) {
                let d = &mut dst[c * ds + r0..c * ds + r1];
                for (k, v) in d.iter_mut().enumerate() {
                    *v = src[(r0 + k) * ss + c];
                }
            }
        }
    }
}

/// Cache-blocked transpose of one n×n matrix.
pub fn local_transpose(a: &[Complex64], out: &mut [Complex64], n: usize) {
    transpose_block(a, n, out, n, n, n);
}
