//! Score-based data assimilation (SDA, Rozet & Louppe 2023): the score of a whole trajectory
//! x_{1:L} (L states of n values) composed from a network over short windows of 2k+1
//! consecutive states. For a Markov chain of order k,
//!
//!   ∇_{x_i} log p(x_{1:L}) = ∇_{x_i} log p(x_{i−k..i+k})   (k < i ≤ L − k, 1-based),
//!
//! because every factor of p(x_{1:L}) that contains x_i lies inside that window; the first k
//! states take the first window's score and the last k the last window's. SDA applies the same
//! composition to the noised trajectory (an approximation for t > 0). `unfold` cuts the L − 2k
//! windows, `fold` assembles the trajectory score from their scores.

/// The L − 2k windows (each (2k+1)·n values, row-major) of a trajectory (L·n values).
pub fn unfold(traj: &[f64], n: usize, k: usize) -> Vec<f64> {
    let l = traj.len() / n;
    let w = 2 * k + 1;
    let count = l.saturating_sub(2 * k);
    let mut out = Vec::with_capacity(count * w * n);
    for i in 0..count {
        out.extend_from_slice(&traj[i * n..(i + w) * n]);
    }
    out
}

/// Trajectory score (L·n) from the scores of its L − 2k windows (as laid out by `unfold`):
/// window 0 gives states 0..k, window i gives its centre to state i + k, the last window gives
/// the last k states.
pub fn fold(window_scores: &[f64], l: usize, n: usize, k: usize, out: &mut [f64]) {
    let w = 2 * k + 1;
    let count = l - 2 * k;
    let win = |i: usize| &window_scores[i * w * n..(i + 1) * w * n];
    out[..k * n].copy_from_slice(&win(0)[..k * n]);
    for i in 0..count {
        out[(i + k) * n..(i + k + 1) * n].copy_from_slice(&win(i)[k * n..(k + 1) * n]);
    }
    out[(l - k) * n..l * n].copy_from_slice(&win(count - 1)[(k + 1) * n..w * n]);
}

#[cfg(test)]
mod tests {
    use super::*;
    use nalgebra::{DMatrix, DVector};

    /// Stationary AR(1) x_{i+1} = φ x_i + √(1−φ²) ε in 2 independent components: the joint of
    /// any m consecutive states is N(0, C_m), C_m[i, j] = φ^|i−j| (per component). Folding the
    /// exact window scores (k = 1 and k = 2) gives the exact trajectory score −C_L⁻¹ x.
    #[test]
    fn folded_window_scores_equal_the_markov_trajectory_score() {
        let (phi, n, l) = (0.8f64, 2usize, 9usize);
        let cov = |m: usize| DMatrix::from_fn(m, m, |i, j| phi.powi((i as i32 - j as i32).abs()));
        // Trajectory values, row-major (L, n).
        let traj: Vec<f64> = (0..l * n)
            .map(|i| ((i * 7 % 11) as f64 - 5.0) / 3.0)
            .collect();
        let component = |c: usize, v: &[f64], m: usize| DVector::from_fn(m, |i, _| v[i * n + c]);
        // Exact joint score per component.
        let qi = cov(l).try_inverse().unwrap();
        let mut exact = vec![0.0; l * n];
        for c in 0..n {
            let s = -(&qi * component(c, &traj, l));
            for i in 0..l {
                exact[i * n + c] = s[i];
            }
        }
        for k in [1usize, 2] {
            let w = 2 * k + 1;
            let wins = unfold(&traj, n, k);
            assert_eq!(wins.len(), (l - 2 * k) * w * n);
            let wq = cov(w).try_inverse().unwrap();
            let mut ws = vec![0.0; wins.len()];
            for (win, out) in wins.chunks(w * n).zip(ws.chunks_mut(w * n)) {
                for c in 0..n {
                    let s = -(&wq * component(c, win, w));
                    for i in 0..w {
                        out[i * n + c] = s[i];
                    }
                }
            }
            let mut folded = vec![0.0; l * n];
            fold(&ws, l, n, k, &mut folded);
            for (a, b) in folded.iter().zip(&exact) {
                assert!((a - b).abs() < 1e-10, "k = {k}: {a} vs {b}");
            }
        }
    }
}
