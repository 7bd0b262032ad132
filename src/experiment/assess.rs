//! The assessor: every statistic of a twin run — per-cycle RMSE and spread of the forecast and
//! the analysis, their time means after the burn-in, the CRPS and the truth's rank histogram
//! (`[output] distributional_scores`), the hidden-variable scores of conditionally Gaussian
//! models, and the wall time of each phase — with its accumulators saved into a checkpoint and
//! restored from it, so that a restarted run ends with the statistics of the uninterrupted one.
//!
//! Sums over the state are formed per tile and reduced in global tile order (`Reducer`), so
//! they are the same numbers on any layout.
use crate::error::{GendaError, Result};
use crate::filters::ensemble_mean;
use crate::metrics::{CycleStats, TimeAverage};
use crate::parallel::Reducer;
use crate::state::SavedState;
use ndarray::{s, Array1, Array2, ArrayView2};
use std::ops::Range;

/// Wall-clock seconds spent in each phase of the cycle (on this rank).
#[derive(Debug, Clone, Copy, Default)]
pub struct PhaseTimes {
    pub truth: f64,
    pub forecast: f64,
    pub communication: f64,
    pub analysis: f64,
    /// Scoring the forecast and the analysis against the truth (RMSE, spread, CRPS, ranks).
    pub assessment: f64,
    pub output: f64,
}

impl PhaseTimes {
    pub fn table(&self, cycles: usize) -> String {
        let total = self.truth
            + self.forecast
            + self.communication
            + self.analysis
            + self.assessment
            + self.output;
        let mut s = format!(
            "{:<14} {:>10} {:>14} {:>7}\n",
            "phase", "total [s]", "per cycle [µs]", "share"
        );
        for (name, t) in [
            ("truth+obs", self.truth),
            ("forecast", self.forecast),
            ("communication", self.communication),
            ("analysis", self.analysis),
            ("assessment", self.assessment),
            ("output", self.output),
        ] {
            s += &format!(
                "{:<14} {:>10.3} {:>14.1} {:>6.1}%\n",
                name,
                t,
                1e6 * t / cycles.max(1) as f64,
                100.0 * t / total.max(1e-300)
            );
        }
        s
    }
}

/// Time-mean CRPS of the analysis ensemble and the rank histogram of the truth (N + 1 bins),
/// over the cycles after the burn-in.
#[derive(Debug, Clone)]
pub struct DistributionalScores {
    pub crps_analysis: f64,
    pub rank_histogram: Vec<u64>,
}

/// Time-averaged scores (after the burn-in) of the hidden variables v of a conditionally
/// Gaussian model [u; v]: the part Ω and the CG posterior are about.
#[derive(Debug, Clone, Default)]
pub struct HiddenScores {
    pub observed_dim: usize,
    pub rmse_forecast: f64,
    pub rmse_analysis: f64,
    pub spread_analysis: f64,
    /// Mean ensemble CRPS over the hidden variables.
    pub crps_analysis: f64,
    /// |skewness| and |excess kurtosis| errors of the analysis members pooled over the scored
    /// cycles against the truth's values over the same cycles, averaged over hidden variables:
    /// a calibrated posterior reproduces the (non-Gaussian) climatological PDF.
    pub skewness_error: f64,
    pub kurtosis_error: f64,
    pub cycles: usize,
    /// Power sums Σx, Σx², Σx³, Σx⁴ and counts per hidden variable: analysis members, truth.
    sums_an: Vec<[f64; 5]>,
    sums_truth: Vec<[f64; 5]>,
}

/// (skewness, kurtosis) from power sums [n, Σx, Σx², Σx³, Σx⁴].
fn moments_of(s: &[f64; 5]) -> (f64, f64) {
    let n = s[0].max(1.0);
    let m = s[1] / n;
    let v = (s[2] / n - m * m).max(1e-300);
    let m3 = s[3] / n - 3.0 * m * s[2] / n + 2.0 * m.powi(3);
    let m4 = s[4] / n - 4.0 * m * s[3] / n + 6.0 * m * m * s[2] / n - 3.0 * m.powi(4);
    (m3 / v.powf(1.5), m4 / (v * v))
}

fn add_power(s: &mut [f64; 5], x: f64) {
    let x2 = x * x;
    s[0] += 1.0;
    s[1] += x;
    s[2] += x2;
    s[3] += x2 * x;
    s[4] += x2 * x2;
}

impl HiddenScores {
    pub(crate) fn push(&mut self, fc: &Array2<f64>, an: &Array2<f64>, truth: &[f64]) {
        let nu = self.observed_dim;
        let nv = (truth.len() - nu) as f64;
        let fm = ensemble_mean(fc);
        let am = ensemble_mean(an);
        let mut col = vec![0.0; an.nrows()];
        let (mut ef, mut ea, mut var, mut cr) = (0.0, 0.0, 0.0, 0.0);
        for i in nu..truth.len() {
            ef += (fm[i] - truth[i]).powi(2);
            ea += (am[i] - truth[i]).powi(2);
            for (c, v) in col.iter_mut().zip(an.column(i)) {
                *c = *v;
            }
            var += col.iter().map(|v| (v - am[i]).powi(2)).sum::<f64>() / (col.len() - 1) as f64;
            cr += crate::metrics::crps(&col, truth[i]);
            let k = i - nu;
            if self.sums_an.len() <= k {
                self.sums_an.resize(k + 1, [0.0; 5]);
                self.sums_truth.resize(k + 1, [0.0; 5]);
            }
            col.iter().for_each(|&v| add_power(&mut self.sums_an[k], v));
            add_power(&mut self.sums_truth[k], truth[i]);
        }
        self.rmse_forecast += (ef / nv).sqrt();
        self.rmse_analysis += (ea / nv).sqrt();
        self.spread_analysis += (var / nv).sqrt();
        self.crps_analysis += cr / nv;
        self.cycles += 1;
    }

    /// The accumulators as numbers (for checkpoints): [rmse_f, rmse_a, spread_a, crps_a, cycles,
    /// then 5 power sums of the analysis members and 5 of the truth per hidden variable].
    fn save(&self) -> Vec<f64> {
        let mut v = vec![
            self.rmse_forecast,
            self.rmse_analysis,
            self.spread_analysis,
            self.crps_analysis,
            self.cycles as f64,
        ];
        for (a, t) in self.sums_an.iter().zip(&self.sums_truth) {
            v.extend_from_slice(a);
            v.extend_from_slice(t);
        }
        v
    }

    fn restore(&mut self, v: &[f64]) -> Result<()> {
        if v.len() < 5 || (v.len() - 5) % 10 != 0 {
            return Err(GendaError::invalid(
                "checkpoint",
                format!("hidden-variable scores have {} values", v.len()),
            ));
        }
        self.rmse_forecast = v[0];
        self.rmse_analysis = v[1];
        self.spread_analysis = v[2];
        self.crps_analysis = v[3];
        self.cycles = v[4] as usize;
        self.sums_an.clear();
        self.sums_truth.clear();
        for c in v[5..].chunks(10) {
            self.sums_an.push(c[..5].try_into().expect("5 sums"));
            self.sums_truth.push(c[5..].try_into().expect("5 sums"));
        }
        Ok(())
    }

    fn mean(&self) -> HiddenScores {
        let k = self.cycles.max(1) as f64;
        HiddenScores {
            observed_dim: self.observed_dim,
            rmse_forecast: self.rmse_forecast / k,
            rmse_analysis: self.rmse_analysis / k,
            spread_analysis: self.spread_analysis / k,
            crps_analysis: self.crps_analysis / k,
            skewness_error: self.moment_error(0),
            kurtosis_error: self.moment_error(1),
            cycles: self.cycles,
            sums_an: Vec::new(),
            sums_truth: Vec::new(),
        }
    }

    fn moment_error(&self, which: usize) -> f64 {
        let nv = self.sums_an.len().max(1) as f64;
        self.sums_an
            .iter()
            .zip(&self.sums_truth)
            .map(|(a, t)| {
                let (ma, mt) = (moments_of(a), moments_of(t));
                if which == 0 {
                    (ma.0 - mt.0).abs()
                } else {
                    (ma.1 - mt.1).abs()
                }
            })
            .sum::<f64>()
            / nv
    }

    /// Global attributes of the run file.
    pub fn attributes(&self) -> Vec<(&'static str, f64)> {
        vec![
            ("rmse_forecast_hidden_time_mean", self.rmse_forecast),
            ("rmse_analysis_hidden_time_mean", self.rmse_analysis),
            ("spread_analysis_hidden_time_mean", self.spread_analysis),
            ("crps_analysis_hidden_time_mean", self.crps_analysis),
            ("skewness_error_hidden", self.skewness_error),
            ("kurtosis_error_hidden", self.kurtosis_error),
        ]
    }
}

/// Per-tile sums of squared mean error and member deviations: (Σ(x̄−x)², Σ_m Σ(x_m−x̄)²).
fn tile_error_sums(
    ens: &Array2<f64>,
    truth: &[f64],
    tiles: &[Range<usize>],
) -> (Vec<f64>, Vec<f64>) {
    let mean = ensemble_mean(ens);
    let mut err = Vec::with_capacity(tiles.len());
    let mut dev = Vec::with_capacity(tiles.len());
    for t in tiles {
        err.push(t.clone().map(|i| (mean[i] - truth[i]).powi(2)).sum());
        dev.push(
            ens.rows()
                .into_iter()
                .map(|r| t.clone().map(|i| (r[i] - mean[i]).powi(2)).sum::<f64>())
                .sum(),
        );
    }
    (err, dev)
}

/// `tile_error_sums` of a weighted sample (DAPPER's `stats.assess(…, w=w)`): the mean is
/// Σ w_m x_m and the deviation sums are ub · Σ_m w_m (x_m − x̄)² with DAPPER's
/// ub = 1/(1 − Σw²) (1 for degenerate weights), so that spread² = Σ dev / n.
fn tile_error_sums_weighted(
    ens: ArrayView2<f64>,
    w: &[f64],
    truth: &[f64],
    tiles: &[Range<usize>],
) -> (Vec<f64>, Vec<f64>) {
    let mean = weighted_mean(ens, w);
    let ub = crate::filters::unbias_var(w, true);
    let mut err = Vec::with_capacity(tiles.len());
    let mut dev = Vec::with_capacity(tiles.len());
    for t in tiles {
        err.push(t.clone().map(|i| (mean[i] - truth[i]).powi(2)).sum());
        dev.push(
            ub * ens
                .rows()
                .into_iter()
                .zip(w)
                .map(|(r, wm)| wm * t.clone().map(|i| (r[i] - mean[i]).powi(2)).sum::<f64>())
                .sum::<f64>(),
        );
    }
    (err, dev)
}

/// Σ_m w_m x_m over the rows of `ens`.
fn weighted_mean(ens: ArrayView2<f64>, w: &[f64]) -> ndarray::Array1<f64> {
    let mut m = ndarray::Array1::zeros(ens.ncols());
    for (r, wm) in ens.rows().into_iter().zip(w) {
        m.scaled_add(*wm, &r);
    }
    m
}

/// Per owned tile: the CRPS sum of the analysis ensemble over the tile's variables, then the
/// N + 1 rank-histogram counts of the truth (as f64, exact), for the tile-ordered reducer.
fn tile_distributional_partials(
    ens: &Array2<f64>,
    weighted: Option<(ArrayView2<f64>, &[f64])>,
    truth: &[f64],
    tiles: &[Range<usize>],
) -> Vec<f64> {
    let n_mem = ens.nrows();
    let mut out = Vec::with_capacity(tiles.len() * (n_mem + 2));
    let mut col = vec![0.0; n_mem];
    for t in tiles {
        let mut crps_sum = 0.0;
        for i in t.clone() {
            // A weighted analysis sample (the particle filter) has the weighted CRPS.
            let (src, w) = match &weighted {
                Some((e, w)) => (e.column(i), Some(*w)),
                None => (ens.column(i), None),
            };
            for (c, v) in col.iter_mut().zip(src) {
                *c = *v;
            }
            crps_sum += match w {
                Some(w) => crate::metrics::crps_weighted(&col, w, truth[i]),
                None => crate::metrics::crps(&col, truth[i]),
            };
        }
        let mut hist = vec![0u64; n_mem + 1];
        crate::metrics::rank_histogram(ens.slice(s![.., t.clone()]), &truth[t.clone()], &mut hist);
        out.push(crps_sum);
        out.extend(hist.iter().map(|&c| c as f64));
    }
    out
}

/// The forecast half of one cycle's assessment, taken before the analysis overwrites the
/// ensemble.
pub struct ForecastAssessment {
    err: Vec<f64>,
    dev: Vec<f64>,
    weighted: bool,
    /// The (weighted) forecast mean on the local columns.
    pub mean: Array1<f64>,
}

/// One cycle's assessed numbers.
pub struct CycleAssessment {
    pub stats: CycleStats,
    /// The analysis CRPS of this cycle (with distributional scores).
    pub crps: Option<f64>,
    /// The (weighted) analysis mean on the local columns.
    pub analysis_mean: Array1<f64>,
}

/// Owns every statistic of a run (see the module header).
pub struct Assessor {
    n: usize,
    members: usize,
    burn_in: usize,
    average: TimeAverage,
    /// Σ CRPS and scored cycles, then the N + 1 rank-histogram counts (as f64, exact).
    scores: Option<(f64, usize, Vec<f64>)>,
    hidden: Option<HiddenScores>,
    /// `output.path_rmse`: Σ of the mean squared errors of the scored states and their count.
    path: Option<(f64, usize)>,
    pub times: PhaseTimes,
}

impl Assessor {
    /// A state of `n` variables, `members` members; `distributional`: CRPS and rank histogram;
    /// `hidden_from`: the first hidden variable of a conditionally Gaussian model (whole state
    /// on every rank), whose hidden variables are scored on their own.
    pub fn new(
        n: usize,
        members: usize,
        burn_in: usize,
        distributional: bool,
        hidden_from: Option<usize>,
    ) -> Self {
        Assessor {
            n,
            members,
            burn_in,
            average: TimeAverage::new(burn_in),
            scores: distributional.then(|| (0.0, 0, vec![0.0; members + 1])),
            hidden: hidden_from.map(|observed_dim| HiddenScores {
                observed_dim,
                ..Default::default()
            }),
            path: None,
            times: PhaseTimes::default(),
        }
    }

    /// Score every model step between the scored analyses (`output.path_rmse`).
    pub fn with_path_scores(mut self, on: bool) -> Self {
        self.path = on.then_some((0.0, 0));
        self
    }

    /// The forecast states between the analyses of cycles `cycle − 1` and `cycle` (`ens_path`:
    /// the members at the cycle's start, after each model step, and at the observation time;
    /// `truth_path`: the truth after steps 1 .. obs_every − 1), when both analyses are scored.
    /// One tile-ordered reduction for all the states.
    pub fn path(
        &mut self,
        cycle: usize,
        ens_path: &[Array2<f64>],
        truth_path: &[Vec<f64>],
        tiles: &[Range<usize>],
        reducer: &dyn Reducer,
    ) -> Result<()> {
        let Some((sum, count)) = self.path.as_mut() else {
            return Ok(());
        };
        if cycle < self.burn_in + 2 {
            return Ok(());
        }
        let k = truth_path.len();
        if k == 0 {
            return Ok(());
        }
        if ens_path.len() != k + 2 {
            return Err(GendaError::invalid(
                "output.path_rmse",
                format!(
                    "cycle {cycle}: {} forecast states for {k} truth states between observations",
                    ens_path.len()
                ),
            ));
        }
        let mut partials = vec![0.0; tiles.len() * k];
        for (s, truth) in truth_path.iter().enumerate() {
            let (err, _) = tile_error_sums(&ens_path[s + 1], truth, tiles);
            for (t, e) in err.iter().enumerate() {
                partials[t * k + s] = *e;
            }
        }
        let sums = reducer.sum_tiles(&partials, k)?;
        for v in sums {
            *sum += v / self.n as f64;
            *count += 1;
        }
        Ok(())
    }

    /// Cycles after the burn-in enter the time means.
    pub fn scored(&self, cycle: usize) -> bool {
        cycle > self.burn_in
    }

    /// The hidden-variable scores need this cycle's forecast ensemble beside the analysis.
    pub fn needs_forecast_copy(&self, cycle: usize) -> bool {
        self.hidden.is_some() && self.scored(cycle)
    }

    /// The forecast ensemble `ens` (members, owned columns), weighted when the filter says so
    /// (the particle filter between resamplings, as DAPPER's `stats.assess(…, w=w)`).
    pub fn forecast(
        &self,
        ens: &Array2<f64>,
        weights: Option<&[f64]>,
        truth: &[f64],
        tiles: &[Range<usize>],
    ) -> ForecastAssessment {
        let (err, dev, mean) = match weights {
            Some(w) => {
                let (e, d) = tile_error_sums_weighted(ens.view(), w, truth, tiles);
                (e, d, weighted_mean(ens.view(), w))
            }
            None => {
                let (e, d) = tile_error_sums(ens, truth, tiles);
                (e, d, ensemble_mean(ens))
            }
        };
        ForecastAssessment {
            err,
            dev,
            weighted: weights.is_some(),
            mean,
        }
    }

    /// Complete cycle `cycle`: the analysis ensemble `ens`, or the weighted sample the filter
    /// says the analysis is (`sample`), against the truth; `forecast_copy` is the forecast
    /// ensemble when `needs_forecast_copy` asked for it. Reduces over the domains.
    #[allow(clippy::too_many_arguments)]
    pub fn analysis(
        &mut self,
        cycle: usize,
        fc: &ForecastAssessment,
        ens: &Array2<f64>,
        sample: Option<(ArrayView2<f64>, &[f64])>,
        truth: &[f64],
        tiles: &[Range<usize>],
        reducer: &dyn Reducer,
        forecast_copy: Option<&Array2<f64>>,
    ) -> Result<CycleAssessment> {
        let (a_err, a_dev, analysis_mean) = match sample {
            Some((e, wt)) => {
                let (er, d) = tile_error_sums_weighted(e, wt, truth, tiles);
                (er, d, weighted_mean(e, wt))
            }
            None => {
                let (er, d) = tile_error_sums(ens, truth, tiles);
                (er, d, ensemble_mean(ens))
            }
        };
        let mut partials = Vec::with_capacity(4 * tiles.len());
        for k in 0..tiles.len() {
            partials.extend([fc.err[k], fc.dev[k], a_err[k], a_dev[k]]);
        }
        let sums = reducer.sum_tiles(&partials, 4)?;
        let n = self.n as f64;
        let nm1 = ((self.members - 1) * self.n) as f64;
        let spread = |dev: f64, weighted: bool| {
            if weighted {
                (dev / n).sqrt()
            } else {
                (dev / nm1).sqrt()
            }
        };
        let stats = CycleStats {
            rmse_forecast: (sums[0] / n).sqrt(),
            spread_forecast: spread(sums[1], fc.weighted),
            rmse_analysis: (sums[2] / n).sqrt(),
            spread_analysis: spread(sums[3], sample.is_some()),
        };
        let scored = self.scored(cycle);
        let crps = match self.scores.as_mut() {
            Some((sum, count, hist)) => {
                let parts = tile_distributional_partials(ens, sample, truth, tiles);
                let sums = reducer.sum_tiles(&parts, self.members + 2)?;
                let c = sums[0] / n;
                if scored {
                    *sum += c;
                    *count += 1;
                    for (h, v) in hist.iter_mut().zip(&sums[1..]) {
                        *h += v;
                    }
                }
                Some(c)
            }
            None => None,
        };
        if let (Some((sum, count)), true) = (self.path.as_mut(), scored) {
            *sum += sums[2] / n;
            *count += 1;
        }
        if let (Some(h), Some(f), true) = (self.hidden.as_mut(), forecast_copy, scored) {
            h.push(f, ens, truth);
        }
        self.average.push(cycle, stats);
        Ok(CycleAssessment {
            stats,
            crps,
            analysis_mean,
        })
    }

    pub fn average(&self) -> &TimeAverage {
        &self.average
    }

    /// Every accumulator, for a checkpoint: the per-cycle series (4 numbers a cycle), the
    /// distributional-score sums, the hidden-variable sums and the phase times.
    pub fn save(&self) -> SavedState {
        let mut s = SavedState::new();
        s.put(
            "series",
            self.average
                .series
                .iter()
                .flat_map(|c| {
                    [
                        c.rmse_forecast,
                        c.rmse_analysis,
                        c.spread_forecast,
                        c.spread_analysis,
                    ]
                })
                .collect(),
        );
        if let Some((sum, count, hist)) = &self.scores {
            s.put("crps", vec![*sum, *count as f64]);
            s.put("rank_histogram", hist.clone());
        }
        if let Some(h) = &self.hidden {
            s.put("hidden", h.save());
        }
        if let Some((sum, count)) = self.path {
            s.put("path_rmse", vec![sum, count as f64]);
        }
        let t = &self.times;
        s.put(
            "times",
            vec![
                t.truth,
                t.forecast,
                t.communication,
                t.analysis,
                t.output,
                t.assessment,
            ],
        );
        s
    }

    /// Restore what `save` wrote after `cycle` cycles; a checkpoint written with other score
    /// settings is refused by name.
    pub fn restore(&mut self, mut s: SavedState, cycle: usize) -> Result<()> {
        let series = s.take_len("series", 4 * cycle)?;
        self.average = TimeAverage::new(self.burn_in);
        for (k, v) in series.chunks(4).enumerate() {
            self.average.push(
                k + 1,
                CycleStats {
                    rmse_forecast: v[0],
                    rmse_analysis: v[1],
                    spread_forecast: v[2],
                    spread_analysis: v[3],
                },
            );
        }
        if self.scores.is_some() != s.has("crps") {
            return Err(GendaError::invalid(
                "checkpoint",
                format!(
                    "was written {} output.distributional_scores, this run has it {}",
                    if s.has("crps") { "with" } else { "without" },
                    if self.scores.is_some() { "on" } else { "off" }
                ),
            ));
        }
        if let Some(sc) = self.scores.as_mut() {
            let c = s.take_len("crps", 2)?;
            let hist = s.take_len("rank_histogram", self.members + 1)?;
            *sc = (c[0], c[1] as usize, hist);
        }
        if let Some(h) = self.hidden.as_mut() {
            h.restore(&s.take("hidden")?)?;
        }
        if self.path.is_some() != s.has("path_rmse") {
            return Err(GendaError::invalid(
                "checkpoint",
                format!(
                    "was written {} output.path_rmse, this run has it {}",
                    if s.has("path_rmse") {
                        "with"
                    } else {
                        "without"
                    },
                    if self.path.is_some() { "on" } else { "off" }
                ),
            ));
        }
        if let Some(p) = self.path.as_mut() {
            let v = s.take_len("path_rmse", 2)?;
            *p = (v[0], v[1] as usize);
        }
        // Checkpoints written before the assessment had its own timer hold 5 values.
        let t = s.take("times")?;
        if !(t.len() == 5 || t.len() == 6) {
            return Err(crate::error::GendaError::invalid(
                "checkpoint",
                format!("`times` has {} values, this run needs 6", t.len()),
            ));
        }
        self.times = PhaseTimes {
            truth: t[0],
            forecast: t[1],
            communication: t[2],
            analysis: t[3],
            output: t[4],
            assessment: t.get(5).copied().unwrap_or(0.0),
        };
        s.finish("the assessor")
    }

    /// Global attributes of the run file beyond the RMSE/spread time means: the hidden-variable
    /// scores and the time-mean CRPS; and the rank histogram.
    pub fn file_extras(&self) -> (Vec<(&'static str, f64)>, Option<&[f64]>) {
        let mut extra = self
            .hidden
            .as_ref()
            .map(|h| h.mean().attributes())
            .unwrap_or_default();
        if let Some((sum, count, _)) = &self.scores {
            if *count > 0 {
                extra.push(("crps_analysis_time_mean", sum / *count as f64));
            }
        }
        if let Some(r) = self.path_rmse() {
            extra.push(("rmse_path", r));
        }
        (extra, self.scores.as_ref().map(|s| &s.2[..]))
    }

    /// `output.path_rmse`: the pooled RMSE over every scored model step, and how many states.
    pub fn path_rmse(&self) -> Option<f64> {
        self.path
            .filter(|(_, c)| *c > 0)
            .map(|(sum, c)| (sum / c as f64).sqrt())
    }

    pub fn path_states(&self) -> usize {
        self.path.map(|p| p.1).unwrap_or(0)
    }

    /// The time means of the hidden-variable scores, if any.
    pub fn hidden(&self) -> Option<HiddenScores> {
        self.hidden.as_ref().map(|h| h.mean())
    }

    /// The time-mean CRPS and the rank histogram, if any.
    pub fn distributional(&self) -> Option<DistributionalScores> {
        self.scores
            .as_ref()
            .map(|(sum, count, hist)| DistributionalScores {
                crps_analysis: sum / (*count).max(1) as f64,
                rank_histogram: hist.iter().map(|&v| v as u64).collect(),
            })
    }

    pub fn into_average(self) -> TimeAverage {
        self.average
    }
}

/// Peak resident memory (VmHWM) of every rank, bytes (0 where the OS does not report it).
pub fn max_rss_per_rank(comm: &dyn crate::parallel::Collectives) -> Result<Vec<u64>> {
    let mut rss = vec![0.0; comm.size()];
    comm.all_gather_rows(
        &[crate::parallel::max_rss_bytes().unwrap_or(0) as f64],
        &vec![1; comm.size()],
        &mut rss,
    )?;
    Ok(rss.into_iter().map(|v| v as u64).collect())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::parallel::SerialReducer;

    fn cycle_data(c: usize) -> (Array2<f64>, Array2<f64>, Vec<f64>) {
        let f = Array2::from_shape_fn((4, 3), |(m, i)| ((c * 7 + m * 3 + i) as f64 * 0.37).sin());
        let a = f.mapv(|v| 0.5 * v);
        let truth = (0..3)
            .map(|i| ((c + i) as f64 * 0.11).cos() * 0.3)
            .collect();
        (f, a, truth)
    }

    fn step(s: &mut Assessor, c: usize) {
        let (f, a, truth) = cycle_data(c);
        let tiles = [0..3];
        let fc = s.forecast(&f, None, &truth, &tiles);
        s.analysis(c, &fc, &a, None, &truth, &tiles, &SerialReducer, Some(&f))
            .unwrap();
    }

    /// Saving after cycle 5 and restoring into a fresh assessor continues to the very numbers
    /// of the uninterrupted one: time means, CRPS, rank histogram, hidden-variable scores.
    #[test]
    fn save_and_restore_continue_every_statistic_bit_for_bit() {
        let new = || Assessor::new(3, 4, 2, true, Some(1));
        let mut whole = new();
        (1..=9).for_each(|c| step(&mut whole, c));
        let mut first = new();
        (1..=5).for_each(|c| step(&mut first, c));
        let mut resumed = new();
        resumed.restore(first.save(), 5).unwrap();
        (6..=9).for_each(|c| step(&mut resumed, c));
        let key = |s: &Assessor| {
            let (extra, hist) = s.file_extras();
            let m = s.average().mean();
            format!(
                "{extra:?} {hist:?} {:?} {:?} {:?}",
                [
                    m.rmse_forecast,
                    m.rmse_analysis,
                    m.spread_forecast,
                    m.spread_analysis
                ],
                s.average().series.len(),
                s.hidden().map(|h| (h.skewness_error, h.kurtosis_error))
            )
        };
        assert_eq!(key(&whole), key(&resumed));
        assert!(key(&whole).contains("crps_analysis_time_mean"));
        // A checkpoint without distributional scores is refused by a run that has them.
        let mut plain = Assessor::new(3, 4, 2, false, Some(1));
        (1..=5).for_each(|c| step(&mut plain, c));
        let err = new().restore(plain.save(), 5).unwrap_err().to_string();
        assert!(err.contains("distributional_scores"), "{err}");
        assert!(
            new().restore(first.save(), 4).is_err(),
            "series of another length"
        );
    }
}
