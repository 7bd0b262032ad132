//! Distributional scores of an ensemble: CRPS, rank histograms, energy distance and sample
//! moments (skewness, kurtosis). These judge whether a posterior ensemble has the right shape,
//! not only the right mean.
use ndarray::{Array2, ArrayView1, ArrayView2};

/// Continuous ranked probability score of the ensemble `x` (members) for the outcome `y`, with
/// the ensemble's empirical distribution (Gneiting & Raftery 2007, eq. 21):
/// CRPS = (1/N) Σ|x_i − y| − 1/(2N²) Σ_ij |x_i − x_j|, the pair sum from the sorted members in
/// O(N log N). One member gives |x − y| (the absolute error).
pub fn crps(x: &[f64], y: f64) -> f64 {
    let n = x.len();
    if n == 0 {
        return f64::NAN;
    }
    let mut s: Vec<f64> = x.to_vec();
    s.sort_by(f64::total_cmp);
    let abs_err = s.iter().map(|v| (v - y).abs()).sum::<f64>() / n as f64;
    // Σ_ij |x_i − x_j| = 2 Σ_i (2i − N + 1) x_(i), i from 0.
    let pairs: f64 = s
        .iter()
        .enumerate()
        .map(|(i, v)| (2.0 * i as f64 - n as f64 + 1.0) * v)
        .sum::<f64>()
        * 2.0;
    abs_err - pairs / (2.0 * (n * n) as f64)
}

/// CRPS of a weighted ensemble (weights summing to 1; DAPPER's `crps_ens(x, E, w)`):
/// Σ w_i|x_i − y| − ½ Σ_ij w_i w_j |x_i − x_j|, the pair sum from the sorted members as
/// 2 Σ_k w_k x_k (2 C_k + w_k − 1) with C_k the weight below member k. Equal weights give `crps`.
pub fn crps_weighted(x: &[f64], w: &[f64], y: f64) -> f64 {
    if x.is_empty() {
        return f64::NAN;
    }
    let mut idx: Vec<usize> = (0..x.len()).collect();
    idx.sort_by(|&a, &b| x[a].total_cmp(&x[b]));
    let abs_err: f64 = x.iter().zip(w).map(|(v, w)| w * (v - y).abs()).sum();
    let mut below = 0.0;
    let mut pairs = 0.0;
    for &k in &idx {
        pairs += w[k] * x[k] * (2.0 * below + w[k] - 1.0);
        below += w[k];
    }
    abs_err - pairs
}

/// CRPS averaged over the state variables.   ens: (N, n), truth: n
pub fn mean_crps(ens: &Array2<f64>, truth: &[f64]) -> f64 {
    let n = truth.len();
    let mut col = vec![0.0; ens.nrows()];
    let mut s = 0.0;
    for (i, &y) in truth.iter().enumerate() {
        for (c, v) in col.iter_mut().zip(ens.column(i)) {
            *c = *v;
        }
        s += crps(&col, y);
    }
    s / n as f64
}

/// Rank histogram (Talagrand diagram): for every variable, the number of members below the
/// truth (0..=N) is counted; a calibrated ensemble gives a flat histogram of N + 1 bins. Ties
/// count half below, split by the variable index parity, so that ties do not bias one side.
pub fn rank_histogram(ens: ArrayView2<f64>, truth: &[f64], hist: &mut [u64]) {
    let n_mem = ens.nrows();
    assert_eq!(hist.len(), n_mem + 1, "rank histogram needs N + 1 bins");
    for (i, &y) in truth.iter().enumerate() {
        let col = ens.column(i);
        let below = col.iter().filter(|&&v| v < y).count();
        let ties = col.iter().filter(|&&v| v == y).count();
        hist[below + (ties + (i & 1)) / 2] += 1;
    }
}

fn dist(a: ArrayView1<f64>, b: ArrayView1<f64>) -> f64 {
    a.iter()
        .zip(b.iter())
        .map(|(x, y)| (x - y) * (x - y))
        .sum::<f64>()
        .sqrt()
}

/// Energy distance between two samples (rows are points in R^d), the V-statistic
/// 2 E‖X − Y‖ − E‖X − X'‖ − E‖Y − Y'‖ (Székely & Rizzo 2013): 0 iff the distributions agree,
/// and in 1-D twice the integrated squared difference of the CDFs.
pub fn energy_distance(a: &Array2<f64>, b: &Array2<f64>) -> f64 {
    let mean_dist = |p: &Array2<f64>, q: &Array2<f64>| {
        let mut s = 0.0;
        for x in p.rows() {
            for y in q.rows() {
                s += dist(x, y);
            }
        }
        s / (p.nrows() * q.nrows()) as f64
    };
    2.0 * mean_dist(a, b) - mean_dist(a, a) - mean_dist(b, b)
}

/// Sample skewness and (non-excess) kurtosis, m3/m2^{3/2} and m4/m2² (3 for a Gaussian).
pub fn skewness_kurtosis(x: &[f64]) -> (f64, f64) {
    let n = x.len() as f64;
    let m = x.iter().sum::<f64>() / n;
    let (mut m2, mut m3, mut m4) = (0.0, 0.0, 0.0);
    for v in x {
        let d = v - m;
        let d2 = d * d;
        m2 += d2;
        m3 += d2 * d;
        m4 += d2 * d2;
    }
    let (m2, m3, m4) = (m2 / n, m3 / n, m4 / n);
    (m3 / m2.powf(1.5), m4 / (m2 * m2))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn weighted_crps_is_the_pair_formula_and_reduces_to_crps() {
        let x: [f64; 5] = [0.3, -1.2, 2.5, 0.9, 0.0];
        let w: [f64; 5] = [0.1, 0.3, 0.2, 0.25, 0.15];
        let y: f64 = 0.4;
        let direct: f64 = x
            .iter()
            .zip(&w)
            .map(|(v, w)| w * (v - y).abs())
            .sum::<f64>()
            - 0.5
                * x.iter()
                    .zip(&w)
                    .flat_map(|(a, wa)| {
                        x.iter().zip(&w).map(move |(b, wb)| wa * wb * (a - b).abs())
                    })
                    .sum::<f64>();
        assert!((crps_weighted(&x, &w, y) - direct).abs() < 1e-14);
        let eq = [0.2; 5];
        assert!((crps_weighted(&x, &eq, y) - crps(&x, y)).abs() < 1e-14);
    }
    use crate::rng::{fill_standard_normal, Purpose};

    /// Φ(z) from Numerical Recipes' Chebyshev erfc (|error| < 1.2e-7): test references only.
    fn phi_cdf(z: f64) -> f64 {
        let x = z / std::f64::consts::SQRT_2;
        let t = 1.0 / (1.0 + 0.5 * x.abs());
        let c = [
            -1.26551223,
            1.00002368,
            0.37409196,
            0.09678418,
            -0.18628806,
            0.27886807,
            -1.13520398,
            1.48851587,
            -0.82215223,
            0.17087277,
        ];
        let poly = c.iter().rev().fold(0.0, |acc, &ci| acc * t + ci);
        let erfc = t * (-x * x + poly).exp();
        if x >= 0.0 {
            1.0 - 0.5 * erfc
        } else {
            0.5 * erfc
        }
    }

    fn normals(seed: u64, n: usize) -> Vec<f64> {
        let mut z = vec![0.0; n];
        fill_standard_normal(seed, Purpose::Sampling, 0, 0, 0, &mut z);
        z
    }

    #[test]
    fn crps_matches_brute_force_and_the_gaussian_closed_form() {
        // One member: the absolute error.
        assert_eq!(crps(&[2.0], -1.0), 3.0);
        // Pair formula = the O(N²) definition.
        let x = [0.3, -1.2, 2.5, 0.3, 1.1];
        let y = 0.7;
        let n = x.len() as f64;
        let brute = x.iter().map(|v: &f64| (v - y).abs()).sum::<f64>() / n
            - x.iter()
                .flat_map(|a| x.iter().map(move |b| (a - b).abs()))
                .sum::<f64>()
                / (2.0 * n * n);
        assert!((crps(&x, y) - brute).abs() < 1e-14);
        // Large N(μ, σ²) ensemble: σ [z(2Φ(z) − 1) + 2φ(z) − 1/√π], z = (y − μ)/σ.
        let (mu, sd, y) = (1.0, 2.0, 2.5);
        let x: Vec<f64> = normals(3, 200_000).iter().map(|z| mu + sd * z).collect();
        let z = (y - mu) / sd;
        let pdf = (-0.5 * z * z).exp() / (2.0 * std::f64::consts::PI).sqrt();
        let exact =
            sd * (z * (2.0 * phi_cdf(z) - 1.0) + 2.0 * pdf - 1.0 / std::f64::consts::PI.sqrt());
        assert!(
            (crps(&x, y) - exact).abs() < 0.01,
            "{} vs {exact}",
            crps(&x, y)
        );
    }

    #[test]
    fn rank_histogram_is_flat_for_an_exchangeable_truth_and_skewed_for_a_biased_one() {
        let (n_mem, n) = (9, 20_000);
        let z = normals(5, (n_mem + 1) * n);
        let ens = Array2::from_shape_fn((n_mem, n), |(m, i)| z[m * n + i]);
        let truth: Vec<f64> = (0..n).map(|i| z[n_mem * n + i]).collect();
        let mut h = vec![0u64; n_mem + 1];
        rank_histogram(ens.view(), &truth, &mut h);
        let expect = n as f64 / (n_mem + 1) as f64;
        for &c in &h {
            assert!((c as f64 - expect).abs() < 5.0 * expect.sqrt(), "{h:?}");
        }
        let biased: Vec<f64> = truth.iter().map(|t| t + 2.0).collect();
        let mut h = vec![0u64; n_mem + 1];
        rank_histogram(ens.view(), &biased, &mut h);
        assert!(h[n_mem] > h[0] * 10, "{h:?}");
    }

    #[test]
    fn energy_distance_vanishes_for_equal_samples_and_matches_the_gaussian_shift_formula() {
        let z = normals(7, 4000);
        let a = Array2::from_shape_fn((2000, 1), |(i, _)| z[i]);
        assert!(energy_distance(&a, &a).abs() < 1e-12);
        // Two N(·, 1) in 1-D, means δ apart: 2E|N(δ, 2)| − 2E|N(0, 2)|.
        let delta = 1.0;
        let b = Array2::from_shape_fn((2000, 1), |(i, _)| z[2000 + i] + delta);
        let s = 2f64.sqrt();
        let e_abs = |m: f64| {
            s * (2.0 / std::f64::consts::PI).sqrt() * (-m * m / (2.0 * s * s)).exp()
                + m * (1.0 - 2.0 * phi_cdf(-m / s))
        };
        let exact = 2.0 * e_abs(delta) - 2.0 * e_abs(0.0);
        let got = energy_distance(&a, &b);
        assert!((got - exact).abs() < 0.05, "{got} vs {exact}");
    }

    #[test]
    fn gaussian_moments() {
        let z = normals(9, 200_000);
        let (s, k) = skewness_kurtosis(&z);
        assert!(s.abs() < 0.02 && (k - 3.0).abs() < 0.05, "{s} {k}");
        let e: Vec<f64> = z.iter().map(|v| v.exp()).collect();
        let (s, k) = skewness_kurtosis(&e);
        assert!(s > 3.0 && k > 15.0, "lognormal {s} {k}");
    }
}
