//! The all-to-all transpose behind the slab-decomposed 2-D FFT.
//!
//! A square n×n field is split into row slabs of m = n / D rows over the D ranks of a domain
//! communicator. After the row transforms, each rank needs whole columns: `SlabTranspose` sends
//! the m×m block (slab d, columns of rank q) to rank q with one `MPI_Alltoall` for all fields at
//! once, and rank q stores the columns it owns as rows. The same call maps the transposed layout
//! back. On one rank it is a cache-blocked local transpose: pure data movement either way, so a
//! transform gives the same bits on any number of ranks.
use super::Collectives;
use crate::error::{GendaError, Result};
use rustfft::num_complex::Complex64;

pub struct SlabTranspose<'a> {
    comm: &'a dyn Collectives,
    n: usize,
    send: Vec<f64>,
    recv: Vec<f64>,
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
        self.send.resize(2 * block * ranks, 0.0);
        self.recv.resize(2 * block * ranks, 0.0);
        // Block q: columns q·m.. of every row of every field, row by row.
        let mut o = 0;
        for q in 0..ranks {
            for f in src.chunks(slab) {
                for row in f.chunks(n) {
                    for v in &row[q * m..(q + 1) * m] {
                        self.send[o] = v.re;
                        self.send[o + 1] = v.im;
                        o += 2;
                    }
                }
            }
        }
        self.comm.all_to_all(&self.send, &mut self.recv)?;
        // Block p holds rows p·m.. of our columns: entry (f, r', c) → dst[f][c][p·m + r'].
        let mut o = 0;
        for p in 0..ranks {
            for f in dst.chunks_mut(slab) {
                for r in 0..m {
                    for c in 0..m {
                        f[c * n + p * m + r] = Complex64::new(self.recv[o], self.recv[o + 1]);
                        o += 2;
                    }
                }
            }
        }
        Ok(())
    }
}

/// Cache-blocked transpose of one n×n matrix.
pub fn local_transpose(a: &[Complex64], out: &mut [Complex64], n: usize) {
    const B: usize = 32;
    for i0 in (0..n).step_by(B) {
        for j0 in (0..n).step_by(B) {
            for i in i0..(i0 + B).min(n) {
                for j in j0..(j0 + B).min(n) {
                    out[j * n + i] = a[i * n + j];
                }
            }
        }
    }
}
