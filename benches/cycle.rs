//! Criterion benchmarks of issue 22's node-scale cases, through the real cycle
//! (`experiment::run_twin` on one process, no output) of the configs the targets name:
//! - `etkf_l96_40_n20` — configs/l96_sakov2008.toml: forecast + analysis ≤ 15 µs per cycle on
//!   one thread (DAPPER 1.7.1 `EnKF('Sqrt', N=20)`: ~2 ms);
//! - `letkf_l96_n20` — configs/l96_1m_letkf.toml at n = 10^5 (the cost is per grid point; the
//!   target at 10^6 is ≤ 1.5 s per cycle on 2 threads);
//! - `ensf_l96_n20` — configs/l96_1m_ensf.toml at n = 10^4 (per variable and reverse step; the
//!   target at 10^6 is ≤ 10 s per cycle on 2 threads).
//!
//! Each iteration runs `CYCLES` cycles after a spin-up of 0 steps; `Throughput::Elements` makes
//! criterion print cycles per second. `genda bench --cycle <config>` times the same on any
//! size and rank count, and `genda bench --machine` measures the machine's limits.
use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use genda::config::Config;
use genda::experiment::{run_twin, RunOptions};
use genda::parallel::SerialComm;
use std::path::Path;

fn config(file: &str, sets: &[&str], cycles: usize) -> Config {
    let mut sets: Vec<String> = sets.iter().map(|s| s.to_string()).collect();
    sets.push(format!("experiment.cycles={cycles}"));
    sets.push("experiment.burn_in=0".into());
    sets.push("experiment.spinup_steps=0".into());
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join(file);
    Config::from_file_with(&path, &sets).expect("bench config")
}

fn bench_cycles(c: &mut Criterion, name: &str, cfg: Config, samples: usize) {
    let opts = RunOptions {
        write_output: false,
        progress: false,
        restart: None,
        stop: None,
    };
    let mut g = c.benchmark_group("cycle");
    g.sample_size(samples);
    g.throughput(Throughput::Elements(cfg.experiment.cycles as u64));
    g.bench_function(name, |b| {
        b.iter(|| run_twin(&cfg, &SerialComm, &opts).expect("bench run"))
    });
    g.finish();
}

fn cycle_targets(c: &mut Criterion) {
    bench_cycles(
        c,
        "etkf_l96_40_n20",
        config("configs/l96_sakov2008.toml", &[], 2000),
        20,
    );
    bench_cycles(
        c,
        "letkf_l96_1e5_n20",
        config("configs/l96_1m_letkf.toml", &["model.dim=100000"], 2),
        10,
    );
    bench_cycles(
        c,
        "ensf_l96_1e4_n20_100steps",
        config("configs/l96_1m_ensf.toml", &["model.dim=10000"], 2),
        10,
    );
}

criterion_group!(benches, cycle_targets);
criterion_main!(benches);
