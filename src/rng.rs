//! Counter-keyed random numbers.
//!
//! Every random draw in genda comes from a ChaCha stream keyed by
//! `(seed, purpose, cycle, member, block)`, never from one sequential stream per rank or thread.
//! A member's noise is therefore the same whichever rank draws it, however members are split
//! over ranks, and however the state is split into domains (state-space noise is drawn per
//! fixed block of `NOISE_BLOCK` global indices, see DESIGN.md "Random numbers").
use rand::SeedableRng;
use rand_chacha::ChaCha12Rng;
use rand_distr::{Distribution, StandardNormal};

/// Global-index block length for state- and observation-space noise.
pub const NOISE_BLOCK: usize = 1024;

/// What a random stream is used for; part of its key so that purposes never share numbers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u64)]
pub enum Purpose {
    TruthInit = 1,
    EnsembleInit = 2,
    ObsNoise = 3,
    ObsPerturbation = 4,
    Rotation = 5,
    Training = 6,
    Sampling = 7,
    Resampling = 8,
    Jitter = 9,
    ModelNoise = 10,
    /// DAISI's stochastic inversion of the forecast members.
    Inversion = 11,
    /// The free run a fitted CG surrogate's climatology comes from (Ω).
    SurrogateFit = 12,
}

#[inline]
fn splitmix64(state: &mut u64) -> u64 {
    *state = state.wrapping_add(0x9E37_79B9_7F4A_7C15);
    let mut z = *state;
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// A ChaCha12 generator whose 256-bit key is a hash of the full counter tuple.
pub fn stream(seed: u64, purpose: Purpose, cycle: u64, member: u64, block: u64) -> ChaCha12Rng {
    let mut s = seed;
    let mut key = [0u8; 32];
    let words = [purpose as u64, cycle, member, block];
    let mut h = [0u64; 4];
    for (i, w) in words.iter().enumerate() {
        s ^= w
            .wrapping_mul(0xD6E8_FEB8_6659_FD93)
            .rotate_left(17 * i as u32 + 7);
        h[i] = splitmix64(&mut s);
    }
    for (i, w) in h.iter().enumerate() {
        key[8 * i..8 * i + 8].copy_from_slice(&w.to_le_bytes());
    }
    ChaCha12Rng::from_seed(key)
}

/// Fill `out` with standard normals for global indices `start..start+out.len()` of the
/// vector keyed by `(seed, purpose, cycle, member)`. The value at a global index does not
/// depend on `start` or the slice length, so any split of the index space gives the same numbers.
pub fn fill_standard_normal(
    seed: u64,
    purpose: Purpose,
    cycle: u64,
    member: u64,
    start: usize,
    out: &mut [f64],
) {
    fill_keyed(seed, purpose, cycle, member, start, out, &StandardNormal)
}

/// As `fill_standard_normal`, with uniforms on [0, 1).
pub fn fill_uniform(
    seed: u64,
    purpose: Purpose,
    cycle: u64,
    member: u64,
    start: usize,
    out: &mut [f64],
) {
    fill_keyed(
        seed,
        purpose,
        cycle,
        member,
        start,
        out,
        &rand_distr::Standard,
    )
}

fn fill_keyed<D: Distribution<f64>>(
    seed: u64,
    purpose: Purpose,
    cycle: u64,
    member: u64,
    start: usize,
    out: &mut [f64],
    dist: &D,
) {
    if out.is_empty() {
        return;
    }
    let end = start + out.len();
    let mut block = start / NOISE_BLOCK;
    let mut buf = [0.0f64; NOISE_BLOCK];
    while block * NOISE_BLOCK < end {
        let b0 = block * NOISE_BLOCK;
        let mut rng = stream(seed, purpose, cycle, member, block as u64);
        let upto = (end - b0).min(NOISE_BLOCK);
        for v in buf.iter_mut().take(upto) {
            *v = dist.sample(&mut rng);
        }
        let lo = start.max(b0);
        out[lo - start..b0 + upto - start].copy_from_slice(&buf[lo - b0..upto]);
        block += 1;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn noise_independent_of_split() {
        let n = 3000;
        let mut whole = vec![0.0; n];
        fill_standard_normal(7, Purpose::ObsNoise, 3, 5, 0, &mut whole);
        let mut parts = vec![0.0; n];
        for (lo, hi) in [(0, 17), (17, 1500), (1500, 2048), (2048, 3000)] {
            fill_standard_normal(7, Purpose::ObsNoise, 3, 5, lo, &mut parts[lo..hi]);
        }
        assert_eq!(whole, parts);
        let mean = whole.iter().sum::<f64>() / n as f64;
        let var = whole.iter().map(|v| (v - mean).powi(2)).sum::<f64>() / n as f64;
        assert!(
            mean.abs() < 0.1 && (var - 1.0).abs() < 0.1,
            "mean {mean} var {var}"
        );
    }

    #[test]
    fn keys_give_different_streams() {
        let mut a = vec![0.0; 8];
        let mut b = vec![0.0; 8];
        fill_standard_normal(1, Purpose::EnsembleInit, 0, 0, 0, &mut a);
        fill_standard_normal(1, Purpose::EnsembleInit, 0, 1, 0, &mut b);
        assert_ne!(a, b);
        fill_standard_normal(1, Purpose::TruthInit, 0, 0, 0, &mut b);
        assert_ne!(a, b);
    }
}
