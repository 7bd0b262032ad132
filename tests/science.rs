//! Science checks (b), (c): DAPPER-level time-averaged analysis RMSE on the standard setups.
//! Runs go through the library (same driver as `genda run`, no files), one process.
mod common;
use common::repo_file;
use genda::config::Config;
use genda::experiment::{run_twin, RunOptions};
use genda::parallel::SerialComm;

fn rmse_a(config: &str, seed: Option<u64>) -> (f64, f64, usize) {
    let path = if std::path::Path::new(config).is_absolute() {
        config.into()
    } else {
        repo_file(config)
    };
    let mut cfg = Config::from_file(&path).unwrap();
    if let Some(s) = seed {
        cfg.experiment.seed = s;
    }
    let s = run_twin(&cfg, &SerialComm, &RunOptions::default()).unwrap();
    let m = s.averages.mean();
    (m.rmse_analysis, m.spread_analysis, s.averages.count())
}

/// Mean over `seeds` of the time-averaged analysis RMSE, printed per seed.
fn seed_mean(config: &str, seeds: &[u64]) -> f64 {
    let mut sum = 0.0;
    for &s in seeds {
        let (r, sp, n) = rmse_a(config, Some(s));
        eprintln!("{config} seed {s}: rmse.a {r:.4} spread.a {sp:.4} over {n} cycles");
        sum += r;
    }
    sum / seeds.len() as f64
}

#[test]
fn l96_sakov2008_etkf_n20() {
    let (r, spread, n) = rmse_a("configs/l96_sakov2008.toml", None);
    eprintln!("L96 sakov2008 ETKF N=20 infl 1.02: rmse.a {r:.4}, spread.a {spread:.4}, {n} cycles");
    assert!(n >= 2000, "{n} averaged cycles");
    assert!(r <= 0.21, "analysis RMSE {r}");
    // A healthy filter's spread is of the size of its error.
    assert!(
        spread > 0.5 * r && spread < 2.0 * r,
        "spread {spread} vs rmse {r}"
    );
}

/// Reference: DAPPER (Python DA suite) on the same sakov2012 setup, T = 1000, burn-in 16 time
/// units, seeds 1..5, time-averaged analysis RMSE mean ± std over seeds (independent runs made
/// for this project, see docs/results.md). These are reference values, not genda results.
const DAPPER_ETKF_ROT: f64 = 0.606; // EnKF('Sqrt', N=10, infl=1.02, rot=True), ± 0.071
const DAPPER_ETKF: f64 = 0.701; //     EnKF('Sqrt', N=10, infl=1.02, rot=False), ± 0.063
const DAPPER_ENKF: f64 = 0.702; //     EnKF('PertObs', N=10, infl=1.04), ± 0.073

/// Seed-to-seed std of one run is ~0.07 (rare divergence episodes dominate L63 with N = 10), so
/// a 10-seed mean has a standard error of ~0.02 and its difference to DAPPER's 5-seed mean ~0.04.
const SEEDS: [u64; 10] = [1, 2, 3, 4, 5, 6, 7, 8, 9, 10];
const TOL: f64 = 0.08;

fn variant(edits: &[(&str, &str)]) -> String {
    let dir = std::env::temp_dir().join(format!("genda-science-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let name = format!(
        "v{}.toml",
        edits.len() * 7 + edits.iter().map(|e| e.1.len()).sum::<usize>()
    );
    common::config_variant(&dir, "configs/l63_sakov2012.toml", &name, edits)
        .to_string_lossy()
        .into_owned()
}

#[test]
fn l63_sakov2012_etkf_n10_with_rotation_matches_dapper() {
    let m = seed_mean("configs/l63_sakov2012.toml", &SEEDS);
    eprintln!("L63 ETKF N=10 infl 1.02 rot: mean rmse.a {m:.4} (DAPPER {DAPPER_ETKF_ROT})");
    assert!((m - DAPPER_ETKF_ROT).abs() < TOL, "{m}");
}

#[test]
fn l63_sakov2012_etkf_n10_without_rotation_matches_dapper() {
    let cfg = variant(&[("rotation = true", "rotation = false")]);
    let m = seed_mean(&cfg, &SEEDS);
    eprintln!("L63 ETKF N=10 infl 1.02: mean rmse.a {m:.4} (DAPPER {DAPPER_ETKF})");
    assert!((m - DAPPER_ETKF).abs() < TOL, "{m}");
}

#[test]
fn l63_sakov2012_enkf_n10_matches_dapper() {
    let m = seed_mean("configs/l63_sakov2012_enkf.toml", &SEEDS);
    eprintln!("L63 EnKF N=10 infl 1.04: mean rmse.a {m:.4} (DAPPER {DAPPER_ENKF})");
    assert!((m - DAPPER_ENKF).abs() < TOL, "{m}");
}

#[test]
fn l63_assimilation_beats_free_run_and_observations() {
    // Free-running ensemble (no assimilation) is at climatological error; the ETKF must be far
    // below it and below the observation error √2.
    let free = variant(&[
        ("method = \"etkf\"", "method = \"none\""),
        ("inflation = 1.02\nrotation = true\n", ""),
    ]);
    let (r_free, _, _) = rmse_a(&free, Some(1));
    let (r_etkf, _, _) = rmse_a("configs/l63_sakov2012.toml", Some(1));
    eprintln!("L63 free run rmse {r_free:.3}, ETKF {r_etkf:.3}");
    assert!(r_free > 5.0, "{r_free}");
    assert!(r_etkf < 2f64.sqrt() && r_etkf < 0.2 * r_free);
}

#[test]
fn l96_sakov2008_letkf_n10() {
    let seeds = [1, 2, 3];
    let m = seed_mean("configs/l96_sakov2008_letkf.toml", &seeds);
    eprintln!("L96 sakov2008 LETKF N=10, radius 4, infl 1.04: mean rmse.a {m:.4}");
    assert!(m <= 0.23, "{m}");
    // Localisation is what makes 10 members work: the global ETKF with 10 members is far worse.
    let cfg = common::config_variant(
        &std::env::temp_dir(),
        "configs/l96_sakov2008_letkf.toml",
        &format!("etkf10-{}.toml", std::process::id()),
        &[
            ("method = \"letkf\"", "method = \"etkf\""),
            ("localization_radius = 4.0", "rotation = false"),
        ],
    );
    let (r, _, _) = rmse_a(cfg.to_str().unwrap(), Some(1));
    eprintln!("L96 sakov2008 global ETKF N=10, infl 1.04: rmse.a {r:.4}");
    assert!(r > 2.0 * m, "{r}");
}

#[test]
fn l63_particle_filter_tracks_the_truth() {
    // DAPPER's PartFilt(N=100, reg=2.4, NER=0.3) stays far below the free run's error (~8) on L63
    // (DAPPER lists 0.38 for it on sakov2012).
    let (r, spread, _) = rmse_a("configs/l63_sakov2012_pf.toml", Some(1));
    eprintln!("L63 PF N=100, reg 2.4, NER 0.3: rmse.a {r:.4}, spread.a {spread:.4}");
    assert!(r < 1.0 && spread > 0.0, "{r}");
}

#[test]
fn l96_ensf_arctan_obs_converges_and_tracks() {
    // EnSF with arctan observations, both prior forms, against the free-running ensemble.
    let dir = std::env::temp_dir();
    let pid = std::process::id();
    let short = [
        ("cycles = 1000", "cycles = 600"),
        ("burn_in = 200", "burn_in = 200"),
    ];
    let mix = common::config_variant(
        &dir,
        "configs/l96_ensf.toml",
        &format!("ensf-mix-{pid}.toml"),
        &short,
    );
    let paired = common::config_variant(
        &dir,
        "configs/l96_ensf.toml",
        &format!("ensf-pair-{pid}.toml"),
        &[
            short[0],
            short[1],
            ("prior = \"mixture\"", "prior = \"paired\""),
        ],
    );
    let free = common::config_variant(
        &dir,
        "configs/l96_ensf.toml",
        &format!("ensf-free-{pid}.toml"),
        &[
            short[0],
            short[1],
            ("method = \"ensf\"", "method = \"none\""),
            (
                "steps = 100\neps_alpha = 0.05\nt_min = 0.001\nprior = \"mixture\"\n",
                "",
            ),
        ],
    );
    let (r_mix, _, _) = rmse_a(mix.to_str().unwrap(), None);
    let (r_pair, _, _) = rmse_a(paired.to_str().unwrap(), None);
    let (r_free, _, _) = rmse_a(free.to_str().unwrap(), None);
    eprintln!(
        "L96-40 arctan obs: EnSF mixture {r_mix:.4}, paired {r_pair:.4}, free run {r_free:.4}"
    );
    assert!(r_free > 2.0, "{r_free}");
    assert!(r_mix < 0.5 && r_pair < 0.5, "{r_mix} {r_pair}");
}

#[test]
fn l63_arctan_kde_diffusion_beats_the_particle_filter() {
    // Issue 7's L63 setup, one seed, N = 20: closed-form KDE diffusion against a particle
    // filter of the same size without regularisation (DAPPER's PartFilt with reg = 0, NER 0.3),
    // which degenerates here. (With DAPPER's tuned reg = 2.4 the PF is better than KDE from
    // N = 50 on: docs/results.md.)
    let (r_kde, s_kde, _) = rmse_a("configs/l63_arctan_kde.toml", Some(1));
    let pf = common::config_variant(
        &std::env::temp_dir(),
        "configs/l63_arctan_kde.toml",
        &format!("pf-{}.toml", std::process::id()),
        &[
            (
                "method = \"kde_diffusion\"",
                "method = \"pf\"\nregularization = 0.0",
            ),
            ("steps = 100\n", ""),
            ("eps_alpha = 0.05\n", ""),
            ("bandwidth = \"fixed\"\n", ""),
            ("state_scale = 0.5\n", ""),
            ("obs_scale = 0.15\n", ""),
        ],
    );
    let (r_pf, _, _) = rmse_a(pf.to_str().unwrap(), Some(1));
    eprintln!("L63 arctan obs, N=20: KDE diffusion rmse.a {r_kde:.3} (spread {s_kde:.3}), bootstrap PF {r_pf:.3}");
    assert!(r_kde < 3.0 && r_kde < 0.5 * r_pf, "{r_kde} vs {r_pf}");
}

#[test]
fn l96_ensf_paper_setup_converges_from_a_wrong_start() {
    // EnSF's own setup (stochastic L96, arctan obs of everything, ensemble from N(0, I) far from
    // the truth): the paired prior converges and tracks; the free run does not.
    let cfg = |edits: &[(&str, &str)], name: &str| {
        common::config_variant(
            &std::env::temp_dir(),
            "configs/l96_ensf_paper.toml",
            &format!("{name}-{}.toml", std::process::id()),
            edits,
        )
    };
    let paired = cfg(
        &[("prior = \"mixture\"", "prior = \"paired\"")],
        "ensf-paper",
    );
    let (r, s, n) = rmse_a(paired.to_str().unwrap(), None);
    let free = cfg(
        &[
            ("method = \"ensf\"", "method = \"none\""),
            ("steps = 100\n", ""),
            ("eps_alpha = 0.05\n", ""),
            ("t_min = 0.001\n", ""),
            ("prior = \"mixture\"\n", ""),
        ],
        "ensf-paper-free",
    );
    let (r_free, _, _) = rmse_a(free.to_str().unwrap(), None);
    eprintln!("EnSF paper setup n=40, paired prior: rmse.a {r:.3} (spread {s:.3}, {n} cycles); free run {r_free:.3}");
    assert!(r < 0.6 && r_free > 3.0, "{r} {r_free}");
}

#[test]
fn kolmogorov_letkf_beats_free_run_and_observation_error() {
    // 64² Kolmogorov flow, every 4th point observed each way (R = 0.25), LETKF on the torus.
    let short = |method_edits: &[(&str, &str)], name: &str| {
        let mut edits = vec![
            ("cycles = 300", "cycles = 80"),
            ("burn_in = 100", "burn_in = 30"),
        ];
        edits.extend_from_slice(method_edits);
        common::config_variant(
            &std::env::temp_dir(),
            "configs/kolmogorov_letkf.toml",
            &format!("{name}-{}.toml", std::process::id()),
            &edits,
        )
    };
    let letkf = short(&[], "kolmo-letkf");
    let (r, s, _) = rmse_a(letkf.to_str().unwrap(), None);
    let free = short(
        &[
            ("method = \"letkf\"", "method = \"none\""),
            ("inflation = 1.1\n", ""),
            ("localization_radius = 4.0\n", ""),
            ("geometry = \"torus\"\n", ""),
        ],
        "kolmo-free",
    );
    let (r_free, _, _) = rmse_a(free.to_str().unwrap(), None);
    eprintln!("Kolmogorov 64² LETKF: rmse.a {r:.3} (spread {s:.3}); free run {r_free:.3}; obs error sd 0.5");
    assert!(r < 0.5 && r < 0.1 * r_free, "{r} vs free {r_free}");
}
