//! Score-network training throughput (samples/s), the numbers issue 6 asks for:
//! the L96-40 MLP (batch 256) and the 64×64 periodic U-Net (batch 16), on the device genda picks
//! (CUDA when libtorch sees a GPU, else CPU). Criterion's "thrpt" line is samples/s.
use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use genda::parallel::SerialComm;
use genda::score::{
    select_device, Dataset, DeviceChoice, ForwardProcess, NetworkConfig, ScoreNetwork, Trainer,
    TrainingConfig,
};

fn trainer(net: NetworkConfig, dim: usize, batch: usize) -> (Trainer, Dataset) {
    let device = select_device(DeviceChoice::Auto, 0).unwrap();
    let n = 4096.max(2 * batch);
    let samples: Vec<f64> = (0..n * dim).map(|i| ((i as f64) * 0.618).sin()).collect();
    let data = Dataset::from_samples(samples, dim, 0.0, true).unwrap();
    let net = ScoreNetwork::new(net, ForwardProcess::default(), dim, device, 1).unwrap();
    let cfg: TrainingConfig = toml::from_str(&format!(
        "steps = 1000000\nbatch = {batch}\nlr = 1e-3\nema = 0.999"
    ))
    .unwrap();
    (Trainer::new(net, cfg), data)
}

fn training_throughput(c: &mut Criterion) {
    let device = select_device(DeviceChoice::Auto, 0).unwrap();
    let mut g = c.benchmark_group(format!("dsm_train_step_{device:?}"));
    g.sample_size(20);
    let (mut t, d) = trainer(
        NetworkConfig::Mlp {
            hidden: 128,
            layers: 3,
            time_features: 16,
        },
        40,
        256,
    );
    g.throughput(Throughput::Elements(256));
    g.bench_function("mlp_l96_40_batch256", |b| {
        b.iter(|| t.step(&d, &SerialComm).unwrap())
    });
    let (mut t, d) = trainer(
        NetworkConfig::Unet {
            height: 64,
            width: 64,
            channels: 16,
            time_features: 16,
        },
        64 * 64,
        16,
    );
    g.throughput(Throughput::Elements(16));
    g.bench_function("unet_64x64_batch16", |b| {
        b.iter(|| t.step(&d, &SerialComm).unwrap())
    });
    g.finish();
}

criterion_group!(benches, training_throughput);

/// The Gaussian-mixture score kernel of EnSF / KDE diffusion (two GEMMs of 2·M·N·d flops each
/// plus O(M·N) softmax), M = N samples and centres. Criterion's "thrpt" line reports elements
/// = 4·M·N·d flops per iteration, i.e. flop/s.
fn mixture_kernel(c: &mut Criterion) {
    use genda::score::mixture::mixture_score;
    use ndarray::Array2;
    let mut g = c.benchmark_group("mixture_score_flops");
    g.sample_size(10);
    for (n_mem, d) in [
        (20usize, 1_000usize),
        (20, 100_000),
        (20, 1_000_000),
        (100, 100_000),
        (200, 10_000),
    ] {
        let x = Array2::from_shape_fn((n_mem, d), |(i, j)| ((i * 31 + j) as f64 * 0.37).sin());
        let cen = Array2::from_shape_fn((n_mem, d), |(i, j)| ((i * 17 + j) as f64 * 0.11).cos());
        let mut out = Array2::zeros((n_mem, d));
        g.throughput(Throughput::Elements((4 * n_mem * n_mem * d) as u64));
        g.bench_function(format!("N{n_mem}_d{d}"), |b| {
            b.iter(|| mixture_score(x.view(), cen.view(), 0.8, 0.5, &mut out))
        });
    }
    g.finish();
}

criterion_group!(mixture, mixture_kernel);
criterion_main!(benches, mixture);
