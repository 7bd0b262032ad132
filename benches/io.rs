//! Criterion benchmarks of the run file and checkpoint writers (issue 23), on one process (the
//! serial path of the same writer every rank uses collectively under MPI):
//! - `run_file_rows_1e5_n20` — 10 cycles of an L96 n = 10^5 run file with both ensembles
//!   (`RunWriter`, 356 MB written; throughput in bytes);
//! - `checkpoint_1e5_n20` — one checkpoint of a (20, 10^5) ensemble (`write_checkpoint`, 16 MB).
//!
//! Both go through the page cache; compare with `dd if=/dev/zero bs=16M` into the same directory
//! (docs/scaling.md, "Parallel I/O, measured", for the 10^6 and 10^7 runs under mpirun).
use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use genda::io::{
    write_checkpoint, CheckpointSlab, OutputLayout, RunCheckpoint, RunMeta, RunSlabs, RunWriter,
};
use genda::metrics::CycleStats;
use genda::parallel::SerialComm;
use genda::state::SavedState;
use ndarray::Array2;

const N: usize = 100_000;
const MEMBERS: usize = 20;
const CYCLES: usize = 10;

fn run_file(c: &mut Criterion) {
    let dir = tempfile::tempdir().unwrap();
    let locs: Vec<usize> = (0..N).step_by(2).collect();
    let meta = RunMeta {
        name: "bench",
        model: "lorenz96",
        method: Some("letkf"),
        members: MEMBERS,
        state_dim: N,
        obs_locations: &locs,
        obs_operator: "sparse",
        cycles: CYCLES,
        cycle_dt: 0.05,
        burn_in: 0,
        save_ensemble: true,
        config_toml: "",
        ranks: 1,
        grid_side: None,
        distributional_scores: false,
        weighted: false,
    };
    let field: Vec<f64> = (0..N).map(|i| (i as f64).sin()).collect();
    let obs: Vec<f64> = field.iter().step_by(2).copied().collect();
    let ens = Array2::from_shape_fn((MEMBERS, N), |(m, i)| (m * N + i) as f64 * 1e-6);
    let stats = CycleStats {
        rmse_forecast: 1.0,
        spread_forecast: 1.0,
        rmse_analysis: 0.5,
        spread_analysis: 0.5,
    };
    let bytes = 8 * CYCLES * (4 * N + N / 2 + 2 * MEMBERS * N);
    let mut g = c.benchmark_group("io");
    g.sample_size(10);
    g.throughput(Throughput::Bytes(bytes as u64));
    g.bench_function("run_file_rows_1e5_n20", |b| {
        b.iter(|| {
            let path = dir.path().join("r.nc");
            let mut w = RunWriter::create(
                &path,
                &meta,
                &OutputLayout::default(),
                RunSlabs::whole(&meta),
                &SerialComm,
            )
            .unwrap();
            for k in 1..=CYCLES {
                w.write_truth(k, &field, &obs).unwrap();
                w.write_filter(k, &field, &field, &stats, Some((ens.view(), ens.view())))
                    .unwrap();
            }
            w.finish(&SerialComm, None, &[], None).unwrap()
        })
    });
    let ckpt = RunCheckpoint {
        cycle: 1,
        members: MEMBERS,
        state_dim: N,
        truth_len: N,
        inflation: 1.0,
        filter_state: SavedState::new(),
        assessment: SavedState::from_parts(vec![("x".into(), vec![0.0])]),
        config_hash: "bench".into(),
        genda_version: "bench".into(),
        run_snapshot: None,
    };
    g.throughput(Throughput::Bytes((8 * (MEMBERS + 1) * N) as u64));
    g.bench_function("checkpoint_1e5_n20", |b| {
        b.iter(|| {
            let slab = CheckpointSlab {
                ensemble: ens.view(),
                members: 0..MEMBERS,
                columns: 0..N,
                truth: &field,
                truth_at: 0,
            };
            write_checkpoint(&dir.path().join("c.h5"), &ckpt, &slab, &SerialComm).unwrap()
        })
    });
    g.finish();
}

criterion_group!(benches, run_file);
criterion_main!(benches);
