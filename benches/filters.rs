//! Criterion benchmarks with the targets of the foundation issue:
//! - L96 RK4 step: ≤ 15 ns per variable per step at n = 10^6 on one core (numpy roll-based
//!   RK4 ~105 ns, a naive Rust loop 23–32 ns on the project machines);
//! - one L96-40 ETKF cycle (forecast of 20 members + analysis): ≤ 15 µs on one thread
//!   (issue 22; DAPPER 1.7.1 ~2 ms).
//!
//! Criterion prints time per iteration; with `Throughput::Elements(n)` it also prints
//! elements/s for the RK4 step, whose inverse is the time per variable.
use criterion::{black_box, criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use genda::filters::{AnalysisInput, Etkf, EtkfConfig, Filter, LocalDomain};
use genda::models::{Lorenz96, Model, Rk4Workspace};
use genda::obs::PointObs;
use genda::rng::{fill_standard_normal, Purpose};
use ndarray::Array2;

fn l96_rk4(c: &mut Criterion) {
    let mut g = c.benchmark_group("l96_rk4_step");
    for n in [40usize, 1_000, 1_000_000] {
        let m = Lorenz96::new(n, 8.0, 0.05);
        let mut x: Vec<f64> = (0..n).map(|i| 8.0 + (i as f64 * 0.1).sin()).collect();
        m.integrate(&mut x, 50);
        let mut ws = Rk4Workspace::new(n);
        g.throughput(Throughput::Elements(n as u64));
        if n >= 1_000_000 {
            g.sample_size(20);
        }
        g.bench_with_input(BenchmarkId::from_parameter(n), &n, |b, _| {
            b.iter(|| {
                m.step(black_box(&mut x), &mut ws);
                // Keep the state bounded over millions of iterations (the map is chaotic but
                // stays on the attractor; this only guards against drift to the fixed point).
            })
        });
    }
    g.finish();
}

fn etkf_cycle(c: &mut Criterion) {
    let (n, members) = (40usize, 20usize);
    let model = Lorenz96::new(n, 8.0, 0.05);
    let h = PointObs::identity(n);
    let r = vec![1.0; n];
    let mut x0 = vec![0.0; n];
    x0[0] = 1.0;
    model.integrate(&mut x0, 2000);
    let mut ens = Array2::zeros((members, n));
    for (i, mut row) in ens.rows_mut().into_iter().enumerate() {
        let mut z = vec![0.0; n];
        fill_standard_normal(1, Purpose::EnsembleInit, 0, i as u64, 0, &mut z);
        for j in 0..n {
            row[j] = x0[j] + z[j];
        }
    }
    let obs: Vec<f64> = x0.iter().map(|v| v + 0.5).collect();
    let mut filter = Etkf::new(EtkfConfig {
        members,
        inflation: 1.02,
        rotation: false,
    });
    let mut ws = Rk4Workspace::new(n);
    let base = ens.clone();
    // As `genda run configs/l96_sakov2008.toml` cuts the state: the default tiling (one
    // column per tile at n = 40, each a unit of the layout-independent sums), and one tile.
    let per_column = LocalDomain {
        tiles: (0..n).map(|i| i..i + 1).collect(),
        ..LocalDomain::whole(n)
    };
    assert_eq!(
        genda::parallel::Decomposition::default_tile(n),
        1,
        "the bench mirrors the default tiling"
    );
    for (name, domain) in [
        ("etkf_cycle_l96_40_n20", per_column),
        ("etkf_cycle_l96_40_n20_one_tile", LocalDomain::whole(n)),
    ] {
        c.bench_function(name, |b| {
            b.iter(|| {
                ens.assign(&base);
                for mut row in ens.rows_mut() {
                    model.step(row.as_slice_mut().unwrap(), &mut ws);
                }
                let mut input = AnalysisInput::whole(&obs, &h, &r, 1, 1);
                input.domain = domain.clone();
                filter.analyse(black_box(&mut ens), &input).unwrap();
            })
        });
    }
}

/// 2-D Kolmogorov flow: one IF-RK4 step (20 2-D FFTs) and one FFT round trip (2 of them), one
/// thread, so FFT share ≈ 10 × roundtrip / step.
fn turbulence_step(c: &mut Criterion) {
    use genda::models::{Flow, Turbulence2d, Turbulence2dParams};
    let mut g = c.benchmark_group("kolmogorov_step");
    g.sample_size(10);
    for n in [256usize, 1024] {
        let m = Turbulence2d::new(Turbulence2dParams {
            n,
            dt: 0.005,
            viscosity: 1e-3,
            drag: 0.1,
            forcing_wavenumber: 4,
            forcing_amplitude: 4.0,
            forcing_on_velocity: false,
            substeps: 1,
            flow: Flow::NavierStokes,
        });
        let mut w: Vec<f64> = (0..n * n).map(|i| ((i as f64) * 0.618).sin()).collect();
        let mut ws = Rk4Workspace::new(1);
        g.bench_function(BenchmarkId::new("step", n), |b| {
            b.iter(|| m.step(black_box(&mut w), &mut ws))
        });
        g.bench_function(BenchmarkId::new("fft_roundtrip", n), |b| {
            b.iter(|| m.fft_roundtrip(black_box(&mut w)))
        });
    }
    g.finish();
}

/// The ETKF's ensemble-space eigenproblem alone: C = S Sᵀ + (N − 1) I at N = 20 (p = 40), by
/// genda's solver (`filters::eigen`) and by nalgebra's `SymmetricEigen` (the former one), and
/// the LETKF's observation-space size 15 (docs/scaling.md: both are latency-bound).
fn sym_eigen(c: &mut Criterion) {
    use genda::filters::eigen::{finish_batch_by, SymAction, SymEigen};
    let mut g = c.benchmark_group("sym_eigen");
    for (n, p) in [(20usize, 40usize), (15, 20)] {
        let mut s = vec![0.0; n * p];
        fill_standard_normal(3, Purpose::EnsembleInit, 0, 0, 0, &mut s);
        let a: Vec<f64> = (0..n * n)
            .map(|k| {
                let (i, j) = (k / n, k % n);
                (0..p).map(|l| s[i * p + l] * s[j * p + l]).sum::<f64>()
                    + if i == j { (n - 1) as f64 } else { 0.0 }
            })
            .collect();
        let mut eig = SymEigen::new();
        g.bench_with_input(BenchmarkId::new("genda", n), &n, |b, &n| {
            b.iter(|| eig.compute(black_box(&a), n).unwrap())
        });
        let m = nalgebra::DMatrix::from_row_slice(n, n, &a);
        g.bench_with_input(BenchmarkId::new("nalgebra", n), &n, |b, _| {
            b.iter(|| nalgebra::SymmetricEigen::new(black_box(m.clone())))
        });
        // The LETKF's per-point form: the action f(A)x on one vector, eigenvectors never
        // formed, 8 problems' QL iterations interleaved (time per problem = this / 8).
        let mut acts = vec![SymAction::new(); 8];
        let x0: Vec<f64> = (0..n).map(|i| (i as f64).cos()).collect();
        g.bench_with_input(BenchmarkId::new("genda_action_x8", n), &n, |b, &n| {
            b.iter(|| {
                for act in acts.iter_mut() {
                    act.prepare(black_box(&a), n).unwrap();
                }
                finish_batch_by(&mut acts, |a| Some(a)).unwrap();
                for act in acts.iter_mut() {
                    let mut x = x0.clone();
                    act.to_eigen(&mut x);
                    act.from_eigen(&mut x);
                    black_box(&x);
                }
            })
        });
    }
    g.finish();
}

criterion_group!(benches, l96_rk4, etkf_cycle, sym_eigen, turbulence_step);
criterion_main!(benches);
