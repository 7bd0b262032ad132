//! Symmetric eigendecomposition of the small dense matrices of the ensemble-space filters
//! (ETKF/EnKF's N×N C, the LETKF's per-point N×N or p_l×p_l matrices), with no allocation per
//! call: Householder reduction to tridiagonal form and the implicit QL iteration with Wilkinson
//! shifts (EISPACK's `tred2`/`tql2`, Bowdler, Martin, Reinsch & Wilkinson 1968, in the
//! public-domain JAMA form), the same algorithm family as nalgebra's `SymmetricEigen` and
//! LAPACK's `dsteqr`.
//!
//! Why hand-written (STYLE: justify hand-written numerics): at N = 20 nalgebra's
//! `SymmetricEigen::new` takes 15 µs on this machine and faer 0.22 is slower still at that size
//! (docs/scaling.md), while one ETKF cycle's budget is 15 µs in all; no LAPACK is installed, and
//! LAPACK's own drivers are slow at this size. This version keeps a reusable workspace, stores
//! the eigenvectors as rows (each QL rotation then updates two contiguous rows), scales the
//! matrix by a power of two (exact) so `sqrt(p² + q²)` cannot overflow, and is checked against
//! nalgebra on random, clustered and rank-deficient matrices in the tests below.
use crate::error::{GendaError, Result};

/// Eigenvalues (ascending) and orthonormal eigenvectors of a symmetric n×n matrix.
#[derive(Debug, Clone, Default)]
pub struct SymEigen {
    n: usize,
    /// Eigenvalues, ascending.
    pub values: Vec<f64>,
    /// Row k (n values) is the unit eigenvector of `values[k]`.
    pub vectors: Vec<f64>,
    e: Vec<f64>,
}

impl SymEigen {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn dim(&self) -> usize {
        self.n
    }

    /// Eigenvector k.
    pub fn vector(&self, k: usize) -> &[f64] {
        &self.vectors[k * self.n..(k + 1) * self.n]
    }

    /// Decompose the symmetric n×n row-major `a`.
    pub fn compute(&mut self, a: &[f64], n: usize) -> Result<()> {
        if a.len() != n * n {
            return Err(GendaError::LinAlg(format!(
                "eigendecomposition: {} values for a {n}×{n} matrix",
                a.len()
            )));
        }
        self.n = n;
        self.values.resize(n, 0.0);
        self.e.resize(n, 0.0);
        self.vectors.resize(n * n, 0.0);
        if n == 0 {
            return Ok(());
        }
        // Power-of-two scaling to |a| ≤ 1: exact, and keeps p² + q² finite below.
        let amax = a.iter().fold(0.0f64, |m, x| m.max(x.abs()));
        if a.iter().any(|x| !x.is_finite()) {
            return Err(GendaError::LinAlg(
                "eigendecomposition of a matrix with non-finite entries".into(),
            ));
        }
        let scale = if amax > 0.0 {
            2f64.powi(-(amax.log2().ceil() as i32))
        } else {
            1.0
        };
        for (o, x) in self.vectors.iter_mut().zip(a) {
            *o = x * scale;
        }
        tridiagonal_eigen(n, &mut self.vectors, &mut self.values, &mut self.e)?;
        for d in self.values.iter_mut() {
            *d /= scale;
        }
        Ok(())
    }

    /// out = V f(D) Vᵀ (row-major n×n, symmetric).
    pub fn spectral_into(&self, f: impl Fn(f64) -> f64, fd: &mut Vec<f64>, out: &mut [f64]) {
        let n = self.n;
        fd.clear();
        fd.extend(self.values.iter().map(|&d| f(d)));
        out.fill(0.0);
        for k in 0..n {
            let z = self.vector(k);
            for i in 0..n {
                let c = fd[k] * z[i];
                let row = &mut out[i * n..(i + 1) * n];
                for (o, zj) in row[i..].iter_mut().zip(&z[i..]) {
                    *o += c * zj;
                }
            }
        }
        for i in 0..n {
            for j in 0..i {
                out[i * n + j] = out[j * n + i];
            }
        }
    }
}

/// The action of a symmetric matrix's eigenbasis on vectors, without forming the eigenvectors:
/// A = V Λ Vᵀ with V = Q Z, Q the product of the Householder reflectors that make A tridiagonal
/// (Golub & Van Loan, Algorithm 8.3.1) and Z the product of the QL iteration's plane rotations
/// (the same `tql` as `SymEigen`). Both are kept as they are made — n − 2 reflectors, one
/// rotation per QL step — so Vᵀx and Vy cost O(n²) each and the decomposition
/// ≈ (4/3)n³ + O(n²) per QL sweep, against ≈ 9n³ for `SymEigen`'s explicit eigenvectors.
///
/// For the LETKF's grid points, which need f(A) applied to one or two vectors (the shift and
/// the transform of one state column), not V itself. The same mathematics as `SymEigen`; the
/// roundings differ (checked against it in the tests below).
#[derive(Debug, Clone, Default)]
pub struct SymAction {
    n: usize,
    /// Eigenvalues, ascending.
    pub values: Vec<f64>,
    /// Working copy of the scaled matrix; row k keeps reflector k's vector in columns k+1..n.
    h: Vec<f64>,
    /// Reflector k is I − β_k v_k v_kᵀ (β_k = 0: the identity).
    beta: Vec<f64>,
    e: Vec<f64>,
    p: Vec<f64>,
    /// The QL rotations (cosine, sine) in the order made, and the iterations (sweeps) they
    /// form: sweep (l, m) rotates rows (i, i+1) for i = m−1 down to l.
    rot: Rotations,
    /// values[k] belongs to position perm[k] of the unsorted QL output.
    perm: Vec<usize>,
    tmp: Vec<f64>,
    /// The exact power-of-two scaling applied before the reduction.
    scale: f64,
    ql: QlLane,
}

impl SymAction {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn dim(&self) -> usize {
        self.n
    }

    /// Decompose the symmetric n×n row-major `a`.
    pub fn compute(&mut self, a: &[f64], n: usize) -> Result<()> {
        self.prepare(a, n)?;
        finish_batch(&mut [self])
    }

    /// The first half of `compute`: scaling and the Householder reduction. `finish_batch` then
    /// runs the QL iterations of many prepared problems interleaved.
    #[inline(always)]
    pub fn prepare(&mut self, a: &[f64], n: usize) -> Result<()> {
        if a.len() != n * n {
            return Err(GendaError::LinAlg(format!(
                "eigendecomposition: {} values for a {n}×{n} matrix",
                a.len()
            )));
        }
        if a.iter().any(|x| !x.is_finite()) {
            return Err(GendaError::LinAlg(
                "eigendecomposition of a matrix with non-finite entries".into(),
            ));
        }
        self.n = n;
        self.values.clear();
        self.values.resize(n, 0.0);
        self.e.clear();
        self.e.resize(n, 0.0);
        self.beta.clear();
        self.beta.resize(n, 0.0);
        self.rot.cs.clear();
        self.rot.sweeps.clear();
        self.perm.clear();
        self.perm.extend(0..n);
        if n == 0 {
            self.scale = 1.0;
            return Ok(());
        }
        // Power-of-two scaling to |a| ≤ 1, as `SymEigen`: exact, and keeps squares finite.
        let amax = a.iter().fold(0.0f64, |m, x| m.max(x.abs()));
        self.scale = if amax > 0.0 {
            2f64.powi(-(amax.log2().ceil() as i32))
        } else {
            1.0
        };
        let scale = self.scale;
        self.h.clear();
        self.h.extend(a.iter().map(|x| x * scale));
        householder_tridiagonal(
            n,
            &mut self.h,
            &mut self.values,
            &mut self.e,
            &mut self.beta,
            &mut self.p,
        );
        Ok(())
    }

    /// x ← Vᵀ x: the coordinates of x in the eigenbasis (ascending eigenvalues).
    #[inline(always)]
    pub fn to_eigen(&mut self, x: &mut [f64]) {
        let n = self.n;
        debug_assert_eq!(x.len(), n);
        for k in 0..n.saturating_sub(2) {
            reflect(
                &self.h[k * n + k + 1..(k + 1) * n],
                self.beta[k],
                &mut x[k + 1..],
            );
        }
        let mut j = 0;
        for &(l, m) in &self.rot.sweeps {
            // Row i+1 of one rotation is row i of the next: carried in a register.
            let mut b = x[m];
            for (i, &(c, s)) in (l..m).rev().zip(&self.rot.cs[j..j + m - l]) {
                let a = x[i];
                x[i + 1] = s * a + c * b;
                b = c * a - s * b;
            }
            x[l] = b;
            j += m - l;
        }
        self.tmp.clear();
        self.tmp.extend(self.perm.iter().map(|&j| x[j]));
        x.copy_from_slice(&self.tmp);
    }

    /// x ← Vᵀ x and y ← Vᵀ y in one pass (two independent dependency chains through the
    /// rotations); the same values as two `to_eigen` calls.
    #[inline(always)]
    pub fn to_eigen2(&mut self, x: &mut [f64], y: &mut [f64]) {
        let n = self.n;
        debug_assert!(x.len() == n && y.len() == n);
        for k in 0..n.saturating_sub(2) {
            let v = &self.h[k * n + k + 1..(k + 1) * n];
            reflect(v, self.beta[k], &mut x[k + 1..]);
            reflect(v, self.beta[k], &mut y[k + 1..]);
        }
        let mut j = 0;
        for &(l, m) in &self.rot.sweeps {
            let (mut bx, mut by) = (x[m], y[m]);
            for (i, &(c, s)) in (l..m).rev().zip(&self.rot.cs[j..j + m - l]) {
                let (ax, ay) = (x[i], y[i]);
                x[i + 1] = s * ax + c * bx;
                bx = c * ax - s * bx;
                y[i + 1] = s * ay + c * by;
                by = c * ay - s * by;
            }
            x[l] = bx;
            y[l] = by;
            j += m - l;
        }
        for v in [x, y] {
            self.tmp.clear();
            self.tmp.extend(self.perm.iter().map(|&j| v[j]));
            v.copy_from_slice(&self.tmp);
        }
    }

    /// y ← V y: the vector whose eigen-coordinates are y.
    #[inline(always)]
    pub fn from_eigen(&mut self, y: &mut [f64]) {
        let n = self.n;
        debug_assert_eq!(y.len(), n);
        self.tmp.clear();
        self.tmp.resize(n, 0.0);
        for (k, &j) in self.perm.iter().enumerate() {
            self.tmp[j] = y[k];
        }
        y.copy_from_slice(&self.tmp);
        let mut j = self.rot.cs.len();
        for &(l, m) in self.rot.sweeps.iter().rev() {
            j -= m - l;
            // The sweep's rotations transposed, last made first (i = l up to m−1).
            let mut a = y[l];
            for (i, &(c, s)) in (l..m).zip(self.rot.cs[j..j + m - l].iter().rev()) {
                let b = y[i + 1];
                y[i] = c * a + s * b;
                a = c * b - s * a;
            }
            y[m] = a;
        }
        for k in (0..n.saturating_sub(2)).rev() {
            reflect(
                &self.h[k * n + k + 1..(k + 1) * n],
                self.beta[k],
                &mut y[k + 1..],
            );
        }
    }
}

/// The QL iterations of prepared problems (`SymAction::prepare`), interleaved: each round
/// advances every unfinished problem by one rotation. Each problem's QL is one long chain of
/// dependent square roots and divisions (latency-bound, ~n²/2 · 2 rotations), so running
/// several side by side lets the CPU overlap them. Every problem does exactly the operations
/// of `tql` on its own data, so its results do not depend on its batch (tested below).
pub fn finish_batch(acts: &mut [&mut SymAction]) -> Result<()> {
    finish_batch_by(acts, |a| Some(&mut **a))
}

/// `finish_batch` over the problems `get` finds in `items` (None: nothing to do there), with no
/// allocation: at most 64 problems run side by side, more are taken 64 at a time.
#[inline(always)]
pub fn finish_batch_by<T>(
    items: &mut [T],
    get: impl Fn(&mut T) -> Option<&mut SymAction>,
) -> Result<()> {
    for chunk in items.chunks_mut(64) {
        let mut active = 0u64;
        for (k, it) in chunk.iter_mut().enumerate() {
            if let Some(a) = get(it) {
                a.ql = QlLane::start(a.n, &mut a.e);
                if a.ql.next_iteration(&mut a.values, &mut a.e, &mut a.rot)? {
                    active |= 1 << k;
                }
            }
        }
        while active != 0 {
            let mut left = active;
            while left != 0 {
                let k = left.trailing_zeros() as usize;
                left &= left - 1;
                let a = get(&mut chunk[k]).expect("an active problem");
                let SymAction {
                    values, e, rot, ql, ..
                } = a;
                if !ql.rotate(values, e, rot)? {
                    active &= !(1 << k);
                }
            }
        }
        for it in chunk.iter_mut() {
            if let Some(a) = get(it) {
                let n = a.n;
                if a.values[..n].iter().any(|x| !x.is_finite()) {
                    return Err(GendaError::LinAlg(
                        "symmetric eigensolver produced non-finite eigenvalues".into(),
                    ));
                }
                let perm = &mut a.perm;
                sort_ascending(&mut a.values, |i, k| perm.swap(i, k));
                let scale = a.scale;
                for d in a.values.iter_mut() {
                    *d /= scale;
                }
            }
        }
    }
    Ok(())
}

/// `tql`'s state between two rotations, so one problem's iteration can be advanced a rotation
/// at a time (`finish_batch`). The arithmetic is `tql`'s, operation for operation.
#[derive(Debug, Clone, Default)]
struct QlLane {
    n: usize,
    l: usize,
    m: usize,
    i: usize,
    iter: usize,
    f: f64,
    tst1: f64,
    c: f64,
    c2: f64,
    c3: f64,
    s: f64,
    s2: f64,
    p: f64,
    el1: f64,
    dl1: f64,
}

impl QlLane {
    fn start(n: usize, e: &mut [f64]) -> Self {
        for i in 1..n {
            e[i - 1] = e[i];
        }
        if n > 0 {
            e[n - 1] = 0.0;
        }
        QlLane {
            n,
            l: 0,
            m: 0,
            i: 0,
            iter: 0,
            f: 0.0,
            tst1: 0.0,
            c: 1.0,
            c2: 1.0,
            c3: 1.0,
            s: 0.0,
            s2: 0.0,
            p: 0.0,
            el1: 0.0,
            dl1: 0.0,
        }
    }

    /// From the start of eigenvalue `l` (or after a converged one): finish the eigenvalues that
    /// need no iteration and set up the next QL iteration. False when all are done.
    fn next_iteration(
        &mut self,
        d: &mut [f64],
        e: &mut [f64],
        rot: &mut Rotations,
    ) -> Result<bool> {
        let (n, eps) = (self.n, f64::EPSILON);
        while self.l < n {
            let l = self.l;
            if self.iter == 0 {
                self.tst1 = self.tst1.max(d[l].abs() + e[l].abs());
                let mut m = l;
                while m < n - 1 {
                    if e[m].abs() <= eps * self.tst1 {
                        break;
                    }
                    m += 1;
                }
                self.m = m;
                if m == l {
                    d[l] += self.f;
                    e[l] = 0.0;
                    self.l += 1;
                    continue;
                }
            }
            self.iter += 1;
            if self.iter > 60 {
                return Err(GendaError::LinAlg(format!(
                    "symmetric eigensolver: QL iteration did not converge for eigenvalue {l} of {n}"
                )));
            }
            let m = self.m;
            let g = d[l];
            let mut p = (d[l + 1] - g) / (2.0 * e[l]);
            let mut r = (p * p + 1.0).sqrt();
            if p < 0.0 {
                r = -r;
            }
            d[l] = e[l] / (p + r);
            d[l + 1] = e[l] * (p + r);
            self.dl1 = d[l + 1];
            let h = g - d[l];
            for di in d.iter_mut().take(n).skip(l + 2) {
                *di -= h;
            }
            self.f += h;
            p = d[m];
            self.p = p;
            self.c = 1.0;
            self.c2 = 1.0;
            self.c3 = 1.0;
            self.el1 = e[l + 1];
            self.s = 0.0;
            self.s2 = 0.0;
            self.i = m;
            rot.sweeps.push((l, m));
            return Ok(true);
        }
        Ok(false)
    }

    /// One rotation of the current iteration (and, after its last, the iteration's end and the
    /// next one's set-up). False when the problem is finished.
    #[inline(always)]
    fn rotate(&mut self, d: &mut [f64], e: &mut [f64], rot: &mut Rotations) -> Result<bool> {
        self.i -= 1;
        let i = self.i;
        let (c, s, p) = (self.c, self.s, self.p);
        self.c3 = self.c2;
        self.c2 = c;
        self.s2 = s;
        let g = c * e[i];
        let h = c * p;
        let r = (p * p + e[i] * e[i]).sqrt();
        e[i + 1] = s * r;
        let ri = 1.0 / r;
        let s = e[i] * ri;
        let c = p * ri;
        self.p = c * d[i] - s * g;
        d[i + 1] = h + s * (c * g + s * d[i]);
        self.c = c;
        self.s = s;
        rot.cs.push((c, s));
        let l = self.l;
        if i > l {
            return Ok(true);
        }
        let p = -s * self.s2 * self.c3 * self.el1 * e[l] / self.dl1;
        e[l] = s * p;
        d[l] = c * p;
        if !(e[l].abs() > f64::EPSILON * self.tst1) {
            d[l] += self.f;
            e[l] = 0.0;
            self.l += 1;
            self.iter = 0;
        }
        self.next_iteration(d, e, rot)
    }
}

/// The plane rotations of a QL run, by sweep.
#[derive(Debug, Clone, Default)]
struct Rotations {
    cs: Vec<(f64, f64)>,
    sweeps: Vec<(usize, usize)>,
}

/// x ← (I − β v vᵀ) x.
#[inline(always)]
fn reflect(v: &[f64], beta: f64, x: &mut [f64]) {
    if beta == 0.0 {
        return;
    }
    let t = beta * dot(v, x);
    for (xi, vi) in x.iter_mut().zip(v) {
        *xi -= t * vi;
    }
}

/// Householder reduction of the symmetric n×n row-major `h` (|h| ≤ 1) to tridiagonal T = QᵀAQ,
/// Q = P₀ P₁ ⋯ P_{n−3}, P_k = I − β_k v_k v_kᵀ acting on indices k+1..n: diagonal into `d`,
/// subdiagonal into `e[1..]` (e[k+1] couples k and k+1, as `tql` reads it), v_k into row k of
/// `h` at columns k+1..n. The trailing block is kept whole (both triangles, equal bit for bit:
/// its update is symmetric term by term), so every pass runs along contiguous rows.
#[inline(always)]
fn householder_tridiagonal(
    n: usize,
    h: &mut [f64],
    d: &mut [f64],
    e: &mut [f64],
    beta: &mut [f64],
    p: &mut Vec<f64>,
) {
    p.clear();
    p.resize(n, 0.0);
    e[0] = 0.0;
    for k in 0..n.saturating_sub(2) {
        d[k] = h[k * n + k];
        // x = row k right of the diagonal (= column k below it).
        let (head, tail) = h.split_at_mut((k + 1) * n);
        let x = &mut head[k * n + k + 1..(k + 1) * n];
        let alpha2 = dot(x, x);
        let x0 = x[0];
        let alpha = alpha2.sqrt();
        if alpha == 0.0 {
            beta[k] = 0.0;
            e[k + 1] = x0;
            continue;
        }
        // P x = r e₁ with r = −sign(x₀)‖x‖ (no cancellation in v₀ = x₀ − r).
        let r = if x0 > 0.0 { -alpha } else { alpha };
        x[0] = x0 - r;
        let b = 1.0 / (alpha2 + x0.abs() * alpha);
        beta[k] = b;
        e[k + 1] = r;
        // Trailing block B (rows/columns k+1..n): p = β B v, w = p − (β pᵀv / 2) v,
        // B ← B − v wᵀ − w vᵀ.
        let v = &*x;
        let m = n - k - 1;
        let p = &mut p[..m];
        for (i, pi) in p.iter_mut().enumerate() {
            *pi = b * dot(&tail[i * n + k + 1..(i + 1) * n], v);
        }
        let kk = 0.5 * b * dot(p, v);
        for (pi, vi) in p.iter_mut().zip(v) {
            *pi -= kk * vi;
        }
        for i in 0..m {
            let (vi, wi) = (v[i], p[i]);
            let row = &mut tail[i * n + k + 1..(i + 1) * n];
            for ((bij, vj), wj) in row.iter_mut().zip(v).zip(p.iter()) {
                *bij -= vi * wj + wi * vj;
            }
        }
    }
    if n >= 2 {
        d[n - 2] = h[(n - 2) * n + n - 2];
        e[n - 1] = h[(n - 1) * n + n - 2];
    }
    d[n - 1] = h[(n - 1) * n + n - 1];
}

/// `tred2` then `tql2`, compiled a second time for AVX2 and taken when the CPU has it: the
/// same operations in the same order (Rust never fuses a·b + c on its own), so the same bits,
/// with the row loops four doubles wide instead of two.
fn tridiagonal_eigen(n: usize, w: &mut [f64], d: &mut [f64], e: &mut [f64]) -> Result<()> {
    #[cfg(target_arch = "x86_64")]
    if std::is_x86_feature_detected!("avx2") {
        // SAFETY: the CPU has AVX2 (checked just above).
        return unsafe { tridiagonal_eigen_avx2(n, w, d, e) };
    }
    tred2(n, w, d, e);
    tql2(n, d, e, w)
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
fn tridiagonal_eigen_avx2(n: usize, w: &mut [f64], d: &mut [f64], e: &mut [f64]) -> Result<()> {
    tred2(n, w, d, e);
    tql2(n, d, e, w)
}

/// 4-lane dot product (a fixed order, so results do not depend on the caller).
#[inline(always)]
pub(crate) fn dot(a: &[f64], b: &[f64]) -> f64 {
    let mut acc = [0.0; 4];
    let (ca, cb) = (a.chunks_exact(4), b.chunks_exact(4));
    let (ra, rb) = (ca.remainder(), cb.remainder());
    for (x, y) in ca.zip(cb) {
        for l in 0..4 {
            acc[l] += x[l] * y[l];
        }
    }
    let mut s = (acc[0] + acc[2]) + (acc[1] + acc[3]);
    for (x, y) in ra.iter().zip(rb) {
        s += x * y;
    }
    s
}

/// Householder tridiagonalisation of the symmetric n×n `w`, accumulating the orthogonal
/// transformation V; diagonal into `d`, subdiagonal into `e[1..]`. JAMA's `tred2` with every
/// index pair swapped, i.e. run on the transposed storage: the inner loops walk contiguous rows,
/// and `w` ends holding Vᵀ (rows = the transformation's columns), as `tql2` wants it.
#[inline(always)]
fn tred2(n: usize, w: &mut [f64], d: &mut [f64], e: &mut [f64]) {
    // V[i][j] lives at w[j·n + i].
    let at = |i: usize, j: usize| j * n + i;
    for j in 0..n {
        d[j] = w[at(n - 1, j)];
    }
    for i in (1..n).rev() {
        let mut scale = 0.0;
        let mut h = 0.0;
        for k in 0..i {
            scale += d[k].abs();
        }
        if scale == 0.0 {
            e[i] = d[i - 1];
            for j in 0..i {
                d[j] = w[at(i - 1, j)];
                w[at(i, j)] = 0.0;
                w[at(j, i)] = 0.0;
            }
        } else {
            for k in 0..i {
                d[k] /= scale;
                h += d[k] * d[k];
            }
            let mut f = d[i - 1];
            let mut g = h.sqrt();
            if f > 0.0 {
                g = -g;
            }
            e[i] = scale * g;
            h -= f * g;
            d[i - 1] = f - g;
            for j in 0..i {
                e[j] = 0.0;
            }
            for j in 0..i {
                f = d[j];
                w[at(j, i)] = f;
                // Column j of V below the diagonal: w[j·n + k], k in j+1..i.
                let col = &w[j * n + j + 1..j * n + i];
                g = e[j] + w[at(j, j)] * f + dot(col, &d[j + 1..i]);
                for (ek, vk) in e[j + 1..i].iter_mut().zip(col) {
                    *ek += vk * f;
                }
                e[j] = g;
            }
            for j in 0..i {
                e[j] /= h;
            }
            f = dot(&e[..i], &d[..i]);
            let hh = f / (h + h);
            for j in 0..i {
                e[j] -= hh * d[j];
            }
            for j in 0..i {
                f = d[j];
                g = e[j];
                let col = &mut w[j * n + j..j * n + i];
                for ((vk, ek), dk) in col.iter_mut().zip(&e[j..i]).zip(&d[j..i]) {
                    *vk -= f * ek + g * dk;
                }
                d[j] = w[at(i - 1, j)];
                w[at(i, j)] = 0.0;
            }
        }
        d[i] = h;
    }
    // Accumulate the transformations.
    for i in 0..n - 1 {
        w[at(n - 1, i)] = w[at(i, i)];
        w[at(i, i)] = 1.0;
        let h = d[i + 1];
        if h != 0.0 {
            for k in 0..=i {
                d[k] = w[at(k, i + 1)] / h;
            }
            let (lo, hi) = w.split_at_mut((i + 1) * n);
            let vi1 = &hi[..=i];
            for j in 0..=i {
                let vj = &mut lo[j * n..j * n + i + 1];
                let g = dot(vi1, vj);
                for (v, dk) in vj.iter_mut().zip(&d[..=i]) {
                    *v -= g * dk;
                }
            }
        }
        for k in 0..=i {
            w[at(k, i + 1)] = 0.0;
        }
    }
    for j in 0..n {
        d[j] = w[at(n - 1, j)];
        w[at(n - 1, j)] = 0.0;
    }
    w[at(n - 1, n - 1)] = 1.0;
    e[0] = 0.0;
}

/// Implicit QL on the tridiagonal (d, e[1..]); `z` holds the transformation's rows on entry
/// (Vᵀ) and the eigenvectors as rows on exit. Eigenvalues sorted ascending.
#[inline(always)]
fn tql2(n: usize, d: &mut [f64], e: &mut [f64], z: &mut [f64]) -> Result<()> {
    tql(n, d, e, |i, c, s| {
        // Rows i and i+1 of Z (columns of V).
        let (lo, hi) = z.split_at_mut((i + 1) * n);
        let zi = &mut lo[i * n..];
        let zi1 = &mut hi[..n];
        for (a, b) in zi.iter_mut().zip(zi1.iter_mut()) {
            let hb = *b;
            *b = s * *a + c * hb;
            *a = c * *a - s * hb;
        }
    })?;
    sort_ascending(&mut d[..n], |i, k| {
        for j in 0..n {
            z.swap(i * n + j, k * n + j);
        }
    });
    Ok(())
}

/// Implicit QL with Wilkinson shifts on the tridiagonal (d, e[1..]): eigenvalues into `d`
/// (unsorted). Each plane rotation of rows (i, i+1), [rᵢ; rᵢ₊₁] ← [c −s; s c][rᵢ; rᵢ₊₁], goes to
/// `rotate(i, c, s)` in the order made: applied to the rows of Qᵀ it gives the eigenvectors
/// (`tql2`), applied to a vector Qᵀx it gives the vector's eigen-coordinates (`SymAction`).
/// The eigenvalue arithmetic does not depend on the sink, so both give the same eigenvalues.
#[inline(always)]
fn tql(
    n: usize,
    d: &mut [f64],
    e: &mut [f64],
    mut rotate: impl FnMut(usize, f64, f64),
) -> Result<()> {
    for i in 1..n {
        e[i - 1] = e[i];
    }
    e[n - 1] = 0.0;
    let mut f = 0.0;
    let mut tst1 = 0.0f64;
    let eps = f64::EPSILON;
    for l in 0..n {
        tst1 = tst1.max(d[l].abs() + e[l].abs());
        let mut m = l;
        // e[n−1] = 0 ends the search at n−1 at the latest.
        while m < n - 1 {
            if e[m].abs() <= eps * tst1 {
                break;
            }
            m += 1;
        }
        if m > l {
            let mut iter = 0;
            loop {
                iter += 1;
                if iter > 60 {
                    return Err(GendaError::LinAlg(format!(
                        "symmetric eigensolver: QL iteration did not converge for eigenvalue {l} of {n}"
                    )));
                }
                let mut g = d[l];
                let mut p = (d[l + 1] - g) / (2.0 * e[l]);
                let mut r = (p * p + 1.0).sqrt();
                if p < 0.0 {
                    r = -r;
                }
                d[l] = e[l] / (p + r);
                d[l + 1] = e[l] * (p + r);
                let dl1 = d[l + 1];
                let mut h = g - d[l];
                for di in d.iter_mut().take(n).skip(l + 2) {
                    *di -= h;
                }
                f += h;
                p = d[m];
                let mut c = 1.0;
                let mut c2 = c;
                let mut c3 = c;
                let el1 = e[l + 1];
                let mut s = 0.0;
                let mut s2 = 0.0;
                for i in (l..m).rev() {
                    c3 = c2;
                    c2 = c;
                    s2 = s;
                    g = c * e[i];
                    h = c * p;
                    r = (p * p + e[i] * e[i]).sqrt();
                    e[i + 1] = s * r;
                    let ri = 1.0 / r;
                    s = e[i] * ri;
                    c = p * ri;
                    p = c * d[i] - s * g;
                    d[i + 1] = h + s * (c * g + s * d[i]);
                    rotate(i, c, s);
                }
                p = -s * s2 * c3 * el1 * e[l] / dl1;
                e[l] = s * p;
                d[l] = c * p;
                if !(e[l].abs() > eps * tst1) {
                    break;
                }
            }
        }
        d[l] += f;
        e[l] = 0.0;
    }
    if d.iter().any(|x| !x.is_finite()) {
        return Err(GendaError::LinAlg(
            "symmetric eigensolver produced non-finite eigenvalues".into(),
        ));
    }
    Ok(())
}

/// Selection sort of `d`, ascending (n is small); each exchange of positions (i, k) also goes
/// to `swap`.
#[inline(always)]
fn sort_ascending(d: &mut [f64], mut swap: impl FnMut(usize, usize)) {
    let n = d.len();
    for i in 0..n.saturating_sub(1) {
        let mut k = i;
        let mut p = d[i];
        for j in i + 1..n {
            if d[j] < p {
                k = j;
                p = d[j];
            }
        }
        if k != i {
            d[k] = d[i];
            d[i] = p;
            swap(i, k);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use nalgebra::{DMatrix, SymmetricEigen};

    fn lcg(state: &mut u64) -> f64 {
        *state = state
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        ((*state >> 11) as f64) / ((1u64 << 53) as f64) - 0.5
    }

    /// Checks V D Vᵀ = A, VᵀV = I and the eigenvalues against nalgebra.
    fn check(a: &[f64], n: usize) {
        let mut eig = SymEigen::new();
        eig.compute(a, n).unwrap();
        let norm = a.iter().fold(0.0f64, |m, x| m.max(x.abs())).max(1e-300);
        for i in 0..n {
            for j in 0..n {
                let rec: f64 = (0..n)
                    .map(|k| eig.values[k] * eig.vector(k)[i] * eig.vector(k)[j])
                    .sum();
                assert!(
                    (rec - a[i * n + j]).abs() <= 1e-13 * norm * n as f64,
                    "n = {n}: reconstruction ({i},{j}) {rec} vs {}",
                    a[i * n + j]
                );
                let dot: f64 = (0..n).map(|k| eig.vector(i)[k] * eig.vector(j)[k]).sum();
                let want = if i == j { 1.0 } else { 0.0 };
                assert!(
                    (dot - want).abs() < 1e-13 * n as f64,
                    "n = {n}: orthogonality"
                );
            }
        }
        let mut want: Vec<f64> = SymmetricEigen::new(DMatrix::from_row_slice(n, n, a))
            .eigenvalues
            .iter()
            .copied()
            .collect();
        want.sort_by(f64::total_cmp);
        for (g, w) in eig.values.iter().zip(&want) {
            assert!(
                (g - w).abs() <= 1e-13 * norm * n as f64,
                "eigenvalue {g} vs {w}"
            );
        }
        assert!(eig.values.windows(2).all(|w| w[0] <= w[1]), "ascending");
    }

    fn random_sym(n: usize, seed: u64) -> Vec<f64> {
        let mut st = seed;
        let mut a = vec![0.0; n * n];
        for i in 0..n {
            for j in 0..=i {
                let x = lcg(&mut st);
                a[i * n + j] = x;
                a[j * n + i] = x;
            }
        }
        a
    }

    #[test]
    fn matches_nalgebra_on_random_matrices() {
        for n in [1, 2, 3, 5, 10, 20, 41, 100] {
            for seed in 0..3 {
                check(&random_sym(n, seed + 17 * n as u64), n);
            }
        }
    }

    #[test]
    fn handles_ensemble_space_matrices_with_repeated_eigenvalues() {
        // C = S Sᵀ + (N−1) I with rank(S) = p < N−1 centred rows: eigenvalue N−1 repeated
        // N−p times, as the ETKF sees with few observations.
        let (n, p) = (20, 5);
        let mut st = 3u64;
        let mut s = vec![0.0; n * p];
        for x in s.iter_mut() {
            *x = lcg(&mut st) * 4.0;
        }
        for j in 0..p {
            let m: f64 = (0..n).map(|i| s[i * p + j]).sum::<f64>() / n as f64;
            for i in 0..n {
                s[i * p + j] -= m;
            }
        }
        let mut c = vec![0.0; n * n];
        for i in 0..n {
            for j in 0..n {
                c[i * n + j] = (0..p).map(|k| s[i * p + k] * s[j * p + k]).sum::<f64>()
                    + if i == j { (n - 1) as f64 } else { 0.0 };
            }
        }
        check(&c, n);
        let mut eig = SymEigen::new();
        eig.compute(&c, n).unwrap();
        let at_n1 = eig
            .values
            .iter()
            .filter(|d| (*d - (n - 1) as f64).abs() < 1e-10)
            .count();
        assert_eq!(at_n1, n - p);
    }

    #[test]
    fn handles_diagonal_zero_and_badly_scaled_matrices() {
        let n = 6;
        let mut d = vec![0.0; n * n];
        for i in 0..n {
            d[i * n + i] = [3.0, -1.0, 3.0, 0.0, 1e-8, 2.0][i];
        }
        check(&d, n);
        check(&vec![0.0; n * n], n);
        let big: Vec<f64> = random_sym(n, 9).iter().map(|x| x * 1e200).collect();
        check(&big, n);
        let tiny: Vec<f64> = random_sym(n, 9).iter().map(|x| x * 1e-200).collect();
        check(&tiny, n);
        let mut eig = SymEigen::new();
        let mut bad = random_sym(n, 1);
        bad[7] = f64::NAN;
        assert!(eig.compute(&bad, n).is_err());
        assert!(eig.compute(&bad[..5], n).is_err());
    }

    /// `SymAction` against `SymEigen`: the same eigenvalues, Vᵀx an isometry, V Vᵀ x = x and
    /// V f(Λ) Vᵀ x = f(A) x (for f = identity and a nonlinear f) to rounding.
    fn check_action(a: &[f64], n: usize) {
        let mut act = SymAction::new();
        act.compute(a, n).unwrap();
        let mut eig = SymEigen::new();
        eig.compute(a, n).unwrap();
        let norm = a.iter().fold(0.0f64, |m, x| m.max(x.abs())).max(1e-300);
        let tol = 1e-13 * n.max(1) as f64;
        for (g, w) in act.values.iter().zip(&eig.values) {
            assert!(
                (g - w).abs() <= tol * norm,
                "n = {n}: eigenvalue {g} vs {w}"
            );
        }
        assert!(act.values.windows(2).all(|w| w[0] <= w[1]), "ascending");
        let mut st = 99 + n as u64;
        let x: Vec<f64> = (0..n).map(|_| lcg(&mut st)).collect();
        let xn = x.iter().map(|v| v * v).sum::<f64>().sqrt();
        let mut u = x.clone();
        act.to_eigen(&mut u);
        let un = u.iter().map(|v| v * v).sum::<f64>().sqrt();
        assert!((un - xn).abs() <= tol * xn, "n = {n}: isometry");
        // Eigen-coordinates against the explicit eigenvectors, up to each vector's sign.
        for k in 0..n {
            let want = dot(eig.vector(k), &x);
            let gap = (0..n)
                .filter(|&j| j != k)
                .map(|j| (eig.values[j] - eig.values[k]).abs())
                .fold(f64::INFINITY, f64::min);
            if gap > 1e-6 * norm {
                assert!(
                    (u[k].abs() - want.abs()).abs() <= 1e-9 * xn,
                    "n = {n}: coordinate {k}: {} vs {want}",
                    u[k]
                );
            }
        }
        let mut back = u.clone();
        act.from_eigen(&mut back);
        for (b, xi) in back.iter().zip(&x) {
            assert!((b - xi).abs() <= tol * xn, "n = {n}: V Vᵀ x = x");
        }
        let shift = (n as f64 + 1.0) * norm; // |λ| ≤ n max|a|
        for f in [|d: f64, _s: f64| d, |d: f64, s: f64| 1.0 / (d + s).sqrt()] {
            let mut y: Vec<f64> = u
                .iter()
                .zip(&act.values)
                .map(|(ui, &d)| f(d, shift) * ui)
                .collect();
            act.from_eigen(&mut y);
            let mut fa = vec![0.0; n * n];
            let mut fd = Vec::new();
            eig.spectral_into(|d| f(d, shift), &mut fd, &mut fa);
            let scale = fa.iter().fold(0.0f64, |m, v| m.max(v.abs())).max(1e-300);
            for i in 0..n {
                let want: f64 = (0..n).map(|j| fa[i * n + j] * x[j]).sum();
                assert!(
                    (y[i] - want).abs() <= tol * scale * xn * n as f64,
                    "n = {n}: f(A) x at {i}: {} vs {want}",
                    y[i]
                );
            }
        }
    }

    #[test]
    fn action_matches_the_explicit_eigenvectors() {
        for n in [0, 1, 2, 3, 4, 5, 10, 15, 20, 41] {
            for seed in 0..3 {
                check_action(&random_sym(n, seed + 31 * n as u64), n);
            }
        }
        let n = 6;
        let mut d = vec![0.0; n * n];
        for i in 0..n {
            d[i * n + i] = [3.0, -1.0, 3.0, 0.0, 1e-8, 2.0][i];
        }
        check_action(&d, n);
        check_action(&vec![0.0; n * n], n);
        let big: Vec<f64> = random_sym(n, 9).iter().map(|x| x * 1e200).collect();
        check_action(&big, n);
        let tiny: Vec<f64> = random_sym(n, 9).iter().map(|x| x * 1e-200).collect();
        check_action(&tiny, n);
        // The LETKF's observation-space Gram matrix SᵀS of rank-deficient S (p > rank).
        let (p, r) = (15, 9);
        let mut st = 5u64;
        let s: Vec<f64> = (0..p * r).map(|_| lcg(&mut st) * 3.0).collect();
        let mut g = vec![0.0; p * p];
        for i in 0..p {
            for j in 0..p {
                g[i * p + j] = (0..r).map(|k| s[i * r + k] * s[j * r + k]).sum();
            }
        }
        check_action(&g, p);
        let mut act = SymAction::new();
        let mut bad = random_sym(n, 1);
        bad[7] = f64::NAN;
        assert!(act.compute(&bad, n).is_err());
        assert!(act.compute(&bad[..5], n).is_err());
    }

    #[test]
    fn batched_ql_is_the_single_ql_bit_for_bit() {
        // Problems of different sizes in one batch: each gives the bits it gives alone, and the
        // eigenvalues are `tql`'s on the same tridiagonal.
        let dims = [15, 14, 20, 1, 0, 15, 7, 2];
        let mats: Vec<Vec<f64>> = dims
            .iter()
            .enumerate()
            .map(|(k, &n)| random_sym(n, 500 + k as u64))
            .collect();
        let mut batch: Vec<SymAction> = vec![SymAction::new(); dims.len()];
        for ((a, m), &n) in batch.iter_mut().zip(&mats).zip(&dims) {
            a.prepare(m, n).unwrap();
        }
        let mut refs: Vec<&mut SymAction> = batch.iter_mut().collect();
        finish_batch(&mut refs).unwrap();
        for ((a, m), &n) in batch.iter_mut().zip(&mats).zip(&dims) {
            let mut one = SymAction::new();
            one.compute(m, n).unwrap();
            let bits = |v: &[f64]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
            assert_eq!(bits(&a.values), bits(&one.values), "n = {n}");
            assert_eq!(a.rot.cs.len(), one.rot.cs.len());
            let mut x: Vec<f64> = (0..n).map(|i| (i as f64).sin()).collect();
            let mut y = x.clone();
            a.to_eigen(&mut x);
            one.to_eigen(&mut y);
            assert_eq!(bits(&x), bits(&y));
            // `tql` itself on the same tridiagonal.
            let mut t = SymAction::new();
            t.prepare(m, n).unwrap();
            if n > 0 {
                let mut d = t.values.clone();
                let mut e = t.e.clone();
                tql(n, &mut d, &mut e, |_, _, _| {}).unwrap();
                sort_ascending(&mut d, |_, _| {});
                let d: Vec<f64> = d.iter().map(|v| v / t.scale).collect();
                assert_eq!(bits(&d), bits(&one.values), "tql, n = {n}");
            }
            // Two vectors in one pass = two passes.
            let (mut p, mut q): (Vec<f64>, Vec<f64>) = (
                (0..n).map(|i| i as f64).collect(),
                (0..n).map(|i| 1.0 / (1.0 + i as f64)).collect(),
            );
            let (mut p1, mut q1) = (p.clone(), q.clone());
            one.to_eigen2(&mut p, &mut q);
            one.to_eigen(&mut p1);
            one.to_eigen(&mut q1);
            assert_eq!(bits(&p), bits(&p1));
            assert_eq!(bits(&q), bits(&q1));
        }
    }

    #[test]
    fn spectral_function_is_v_f_d_vt() {
        let n = 7;
        let mut a = random_sym(n, 4);
        for i in 0..n {
            a[i * n + i] += 4.0;
        }
        let mut eig = SymEigen::new();
        eig.compute(&a, n).unwrap();
        let mut inv = vec![0.0; n * n];
        let mut fd = Vec::new();
        eig.spectral_into(|d| 1.0 / d, &mut fd, &mut inv);
        for i in 0..n {
            for j in 0..n {
                let p: f64 = (0..n).map(|k| a[i * n + k] * inv[k * n + j]).sum();
                assert!((p - if i == j { 1.0 } else { 0.0 }).abs() < 1e-13);
            }
        }
    }
}
