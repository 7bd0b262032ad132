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
criterion_main!(benches);
