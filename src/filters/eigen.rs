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
fn dot(a: &[f64], b: &[f64]) -> f64 {
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
                    // Rows i and i+1 of Z (columns of V).
                    let (lo, hi) = z.split_at_mut((i + 1) * n);
                    let zi = &mut lo[i * n..];
                    let zi1 = &mut hi[..n];
                    for (a, b) in zi.iter_mut().zip(zi1.iter_mut()) {
                        let hb = *b;
                        *b = s * *a + c * hb;
                        *a = c * *a - s * hb;
                    }
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
    // Selection sort, ascending (n is small).
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
            for j in 0..n {
                z.swap(i * n + j, k * n + j);
            }
        }
    }
    Ok(())
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
