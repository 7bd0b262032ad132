//! Verification statistics of a twin experiment: RMSE of the ensemble mean against the truth,
//! ensemble spread, and their time averages after the burn-in (DAPPER's `.a`/`.f` averages).
use ndarray::Array2;

mod distributional;
pub use distributional::{
    crps, crps_weighted, energy_distance, mean_crps, rank_histogram, skewness_kurtosis,
};

/// Root-mean-square error √(mean_i (x̄_i − x_i)²).
pub fn rmse(mean: &[f64], truth: &[f64]) -> f64 {
    let s: f64 = mean.iter().zip(truth).map(|(m, t)| (m - t) * (m - t)).sum();
    (s / mean.len() as f64).sqrt()
}

/// Ensemble spread √(mean_i var_i), with the unbiased (N−1) member variance.   ens: (N, n)
pub fn spread(ens: &Array2<f64>, mean: &[f64]) -> f64 {
    let (n_mem, n) = ens.dim();
    let mut s = 0.0;
    for row in ens.rows() {
        for (x, m) in row.iter().zip(mean) {
            s += (x - m) * (x - m);
        }
    }
    (s / ((n_mem - 1) * n) as f64).sqrt()
}

/// Instantaneous statistics of one cycle.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct CycleStats {
    pub rmse_forecast: f64,
    pub rmse_analysis: f64,
    pub spread_forecast: f64,
    pub spread_analysis: f64,
}

/// Time averages over the cycles after the burn-in.
#[derive(Debug, Clone, Default)]
pub struct TimeAverage {
    burn_in: usize,
    count: usize,
    sum: [f64; 4],
    /// Every cycle's statistics, burn-in included (small: four numbers a cycle).
    pub series: Vec<CycleStats>,
}

impl TimeAverage {
    pub fn new(burn_in: usize) -> Self {
        TimeAverage {
            burn_in,
            ..Default::default()
        }
    }

    /// Record cycle `cycle` (1-based); cycles ≤ burn_in enter the series but not the average.
    pub fn push(&mut self, cycle: usize, s: CycleStats) {
        self.series.push(s);
        if cycle > self.burn_in {
            self.count += 1;
            for (acc, v) in self.sum.iter_mut().zip([
                s.rmse_forecast,
                s.rmse_analysis,
                s.spread_forecast,
                s.spread_analysis,
            ]) {
                *acc += v;
            }
        }
    }

    pub fn count(&self) -> usize {
        self.count
    }

    pub fn mean(&self) -> CycleStats {
        let c = self.count.max(1) as f64;
        CycleStats {
            rmse_forecast: self.sum[0] / c,
            rmse_analysis: self.sum[1] / c,
            spread_forecast: self.sum[2] / c,
            spread_analysis: self.sum[3] / c,
        }
    }

    /// The end-of-run table.
    pub fn table(&self) -> String {
        let m = self.mean();
        format!(
            "time averages over {} cycles after burn-in {}\n\
             {:<10} {:>10} {:>10}\n\
             {:<10} {:>10.4} {:>10.4}\n\
             {:<10} {:>10.4} {:>10.4}",
            self.count,
            self.burn_in,
            "",
            "rmse",
            "spread",
            "forecast",
            m.rmse_forecast,
            m.spread_forecast,
            "analysis",
            m.rmse_analysis,
            m.spread_analysis
        )
    }
}

/// Mean and sample standard deviation (n − 1; 0 for one value).
pub fn mean_std(v: &[f64]) -> (f64, f64) {
    let n = v.len() as f64;
    let m = v.iter().sum::<f64>() / n;
    let var = if v.len() > 1 {
        v.iter().map(|x| (x - m).powi(2)).sum::<f64>() / (n - 1.0)
    } else {
        0.0
    };
    (m, var.sqrt())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rmse_and_spread_known_values() {
        assert!((rmse(&[1.0, 2.0], &[0.0, 0.0]) - (2.5f64).sqrt()).abs() < 1e-15);
        let e = Array2::from_shape_vec((2, 2), vec![0.0, 1.0, 2.0, 3.0]).unwrap();
        // member variance per variable = 2, spread = √2
        assert!((spread(&e, &[1.0, 2.0]) - 2f64.sqrt()).abs() < 1e-15);
    }

    #[test]
    fn burn_in_excluded() {
        let mut t = TimeAverage::new(2);
        for c in 1..=4 {
            let v = c as f64;
            t.push(
                c,
                CycleStats {
                    rmse_forecast: v,
                    rmse_analysis: v,
                    spread_forecast: v,
                    spread_analysis: v,
                },
            );
        }
        assert_eq!(t.count(), 2);
        assert_eq!(t.mean().rmse_analysis, 3.5);
        assert_eq!(t.series.len(), 4);
    }
}
