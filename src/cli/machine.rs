//! `genda bench --machine`: this machine's limits, measured — the denominators of the
//! fraction-of-limit figures in docs/scaling.md. STREAM's triad a = b + s·c (24 bytes per element
//! counted, as STREAM does; arrays far larger than the caches) on one thread and on all of
//! rayon's threads, and dense f64 GEMM throughput on one thread through ndarray (matrixmultiply,
//! the kernel of genda's ensemble products), best of several repetitions each.
use ndarray::Array2;
use rayon::prelude::*;
use std::time::Instant;

pub struct MachineLimits {
    /// Triad bandwidth [GB/s] on one thread and on `threads` threads.
    pub triad_gbs_one: f64,
    pub triad_gbs_all: f64,
    pub threads: usize,
    /// Dense f64 GEMM (n³ with n = `gemm_n`) on one thread [GFLOP/s].
    pub gemm_gflops_one: f64,
    pub gemm_n: usize,
}

/// Elements per triad array (3 × 128 MiB).
const TRIAD_LEN: usize = 1 << 24;
const REPS: usize = 5;

fn best_of(reps: usize, mut f: impl FnMut()) -> f64 {
    (0..reps)
        .map(|_| {
            let t = Instant::now();
            f();
            t.elapsed().as_secs_f64()
        })
        .fold(f64::INFINITY, f64::min)
}

pub fn measure() -> MachineLimits {
    let b = vec![1.0f64; TRIAD_LEN];
    let c = vec![2.0f64; TRIAD_LEN];
    let mut a = vec![0.0f64; TRIAD_LEN];
    let s = std::hint::black_box(3.0);
    let bytes = 24.0 * TRIAD_LEN as f64;
    let one = best_of(REPS, || {
        for ((x, y), z) in a.iter_mut().zip(&b).zip(&c) {
            *x = y + s * z;
        }
        std::hint::black_box(&a);
    });
    let chunk = TRIAD_LEN / (4 * rayon::current_num_threads()).max(1);
    let all = best_of(REPS, || {
        a.par_chunks_mut(chunk)
            .zip(b.par_chunks(chunk))
            .zip(c.par_chunks(chunk))
            .for_each(|((x, y), z)| {
                for ((x, y), z) in x.iter_mut().zip(y).zip(z) {
                    *x = y + s * z;
                }
            });
        std::hint::black_box(&a);
    });
    let n = 512;
    let m1 = Array2::from_shape_fn((n, n), |(i, j)| ((i * 7 + j * 3) % 11) as f64 * 0.1);
    let m2 = m1.t().to_owned();
    let gemm = best_of(REPS, || {
        std::hint::black_box(m1.dot(&m2));
    });
    MachineLimits {
        triad_gbs_one: bytes / one / 1e9,
        triad_gbs_all: bytes / all / 1e9,
        threads: rayon::current_num_threads(),
        gemm_gflops_one: 2.0 * (n as f64).powi(3) / gemm / 1e9,
        gemm_n: n,
    }
}
