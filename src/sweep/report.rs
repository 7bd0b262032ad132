//! Tables of a sweep's results store: a tidy CSV (one row per experiment), a NetCDF with one
//! dimension per axis (method, axes, zips, seed), and a markdown table of mean ± std over the
//! seeds in DAPPER's tabulation style (one row per method × coordinates, diverged runs counted
//! beside the statistics, never averaged in). Every file is written under a temporary name and
//! renamed when complete.
use super::store::Row;
use super::Sweep;
use crate::error::{GendaError, Result};
use crate::io::PendingFile;
use crate::metrics::mean_std;
use std::collections::HashMap;
use std::path::{Path, PathBuf};

/// A score column: its name and how to read it from a row.
struct Metric {
    name: &'static str,
    short: &'static str,
    get: fn(&Row) -> Option<f64>,
}

const BASE_METRICS: &[Metric] = &[
    Metric {
        name: "rmse_analysis",
        short: "rmse.a",
        get: |r| r.rmse_analysis,
    },
    Metric {
        name: "spread_analysis",
        short: "spread.a",
        get: |r| r.spread_analysis,
    },
    Metric {
        name: "rmse_forecast",
        short: "rmse.f",
        get: |r| r.rmse_forecast,
    },
    Metric {
        name: "spread_forecast",
        short: "spread.f",
        get: |r| r.spread_forecast,
    },
];
const CRPS: Metric = Metric {
    name: "crps_analysis",
    short: "crps.a",
    get: |r| r.crps_analysis,
};
const PATH_RMSE: Metric = Metric {
    name: "rmse_path",
    short: "rmse.path",
    get: |r| r.rmse_path,
};
const HIDDEN_METRICS: &[Metric] = &[
    Metric {
        name: "hidden_rmse_analysis",
        short: "hidden rmse.a",
        get: |r| r.hidden.as_ref().map(|h| h.rmse_analysis),
    },
    Metric {
        name: "hidden_spread_analysis",
        short: "hidden spread.a",
        get: |r| r.hidden.as_ref().map(|h| h.spread_analysis),
    },
    Metric {
        name: "hidden_crps_analysis",
        short: "hidden crps.a",
        get: |r| r.hidden.as_ref().map(|h| h.crps_analysis),
    },
    Metric {
        name: "hidden_skewness_error",
        short: "skewness err",
        get: |r| r.hidden.as_ref().map(|h| h.skewness_error),
    },
    Metric {
        name: "hidden_kurtosis_error",
        short: "kurtosis err",
        get: |r| r.hidden.as_ref().map(|h| h.kurtosis_error),
    },
    Metric {
        name: "hidden_rmse_forecast",
        short: "hidden rmse.f",
        get: |r| r.hidden.as_ref().map(|h| h.rmse_forecast),
    },
];

fn metrics_for(rows: &[&Row]) -> Vec<&'static Metric> {
    let mut m: Vec<&'static Metric> = BASE_METRICS.iter().collect();
    if rows.iter().any(|r| r.crps_analysis.is_some()) {
        m.push(&CRPS);
    }
    if rows.iter().any(|r| r.rmse_path.is_some()) {
        m.push(&PATH_RMSE);
    }
    if rows.iter().any(|r| r.hidden.is_some()) {
        m.extend(HIDDEN_METRICS.iter());
    }
    m
}

/// Where the tables went.
#[derive(Debug, Clone)]
pub struct ReportPaths {
    pub csv: PathBuf,
    pub netcdf: PathBuf,
    pub markdown: PathBuf,
    /// Experiments of the sweep the store holds (finished or diverged) out of all.
    pub complete: usize,
    pub total: usize,
}

/// The rows of the sweep's experiments, in its order (`None` where not run yet).
fn ordered<'a>(
    sweep: &Sweep,
    store: &'a HashMap<String, Row>,
) -> Vec<(Vec<usize>, usize, u64, Option<&'a Row>)> {
    sweep
        .grid()
        .into_iter()
        .map(|(mi, coords, seed)| {
            let row = store.get(&sweep.key(mi, &coords, seed));
            (coords, mi, seed, row)
        })
        .collect()
}

fn fmt_opt(v: Option<f64>) -> String {
    v.map(|x| format!("{x}")).unwrap_or_default()
}

/// Write results.csv, results.nc and results.md under `dir` from `store`.
pub fn write_reports(
    sweep: &Sweep,
    store: &HashMap<String, Row>,
    dir: &Path,
) -> Result<ReportPaths> {
    let rows = ordered(sweep, store);
    let present: Vec<&Row> = rows.iter().filter_map(|r| r.3).collect();
    let metrics = metrics_for(&present);
    let csv = write_csv(sweep, &rows, &metrics, &dir.join("results.csv"))?;
    let netcdf = write_netcdf(sweep, &rows, &metrics, &dir.join("results.nc"))?;
    let markdown = write_markdown(sweep, &rows, &metrics, &dir.join("results.md"))?;
    Ok(ReportPaths {
        csv,
        netcdf,
        markdown,
        complete: present.len(),
        total: rows.len(),
    })
}

type Ordered<'a> = [(Vec<usize>, usize, u64, Option<&'a Row>)];

fn write_csv(sweep: &Sweep, rows: &Ordered, metrics: &[&Metric], path: &Path) -> Result<PathBuf> {
    let pending = PendingFile::new(path)?;
    let err = |e: csv::Error| GendaError::file(path, format!("writing CSV: {e}"));
    {
        let mut w = csv::Writer::from_path(pending.tmp_path()).map_err(err)?;
        let mut header: Vec<String> = vec!["method".into()];
        header.extend(sweep.dims.iter().map(|d| d.name.clone()));
        header.extend(["seed".into(), "diverged".into()]);
        header.extend(metrics.iter().map(|m| m.name.to_string()));
        header.extend([
            "cycles_scored".into(),
            "wall_s".into(),
            "config_hash".into(),
        ]);
        w.write_record(&header).map_err(err)?;
        for (coords, mi, seed, row) in rows {
            let Some(r) = row else { continue };
            let mut rec: Vec<String> = vec![sweep.methods[*mi].name.clone()];
            rec.extend(
                sweep
                    .dims
                    .iter()
                    .zip(coords)
                    .map(|(d, &c)| d.coords[c].label.clone()),
            );
            rec.extend([seed.to_string(), (r.diverged as u8).to_string()]);
            rec.extend(metrics.iter().map(|m| fmt_opt((m.get)(r))));
            rec.extend([
                r.cycles_scored.to_string(),
                format!("{:.3}", r.wall_s),
                r.config_hash.clone(),
            ]);
            w.write_record(&rec).map_err(err)?;
        }
        w.flush()
            .map_err(|e| GendaError::file(path, format!("writing CSV: {e}")))?;
    }
    pending.commit()
}

fn write_netcdf(
    sweep: &Sweep,
    rows: &Ordered,
    metrics: &[&Metric],
    path: &Path,
) -> Result<PathBuf> {
    let pending = PendingFile::new(path)?;
    let e = |what: &'static str| crate::io::nc_error(path, what);
    {
        let mut f = netcdf::create_with(pending.tmp_path(), netcdf::Options::NETCDF4)
            .map_err(e("create"))?;
        f.add_attribute("genda_sweep", sweep.name.as_str())
            .map_err(e("attribute"))?;
        f.add_attribute("sweep_file", sweep.path.display().to_string().as_str())
            .map_err(e("attribute"))?;
        if let Some(d) = &sweep.description {
            f.add_attribute("description", d.as_str())
                .map_err(e("attribute"))?;
        }
        f.add_attribute("Conventions", "CF-1.8")
            .map_err(e("attribute"))?;
        f.add_attribute("genda_version", env!("CARGO_PKG_VERSION"))
            .map_err(e("attribute"))?;
        let mut dims: Vec<String> = vec!["method".into()];
        f.add_dimension("method", sweep.methods.len())
            .map_err(e("dimension"))?;
        for d in &sweep.dims {
            f.add_dimension(&d.name, d.coords.len())
                .map_err(e("dimension"))?;
            dims.push(d.name.clone());
        }
        f.add_dimension("seed", sweep.seeds.len())
            .map_err(e("dimension"))?;
        dims.push("seed".into());
        let dim_refs: Vec<&str> = dims.iter().map(String::as_str).collect();
        {
            let mut v = f
                .add_string_variable("method", &["method"])
                .map_err(e("variable method"))?;
            for (i, m) in sweep.methods.iter().enumerate() {
                v.put_string(&m.name, [i]).map_err(e("write method"))?;
            }
        }
        for d in &sweep.dims {
            let numeric: Option<Vec<f64>> = d.coords.iter().map(|c| c.number).collect();
            match numeric {
                Some(vals) => {
                    let mut v = f
                        .add_variable::<f64>(&d.name, &[&d.name])
                        .map_err(e("coordinate"))?;
                    v.put_values(&vals, ..).map_err(e("write coordinate"))?;
                }
                None => {
                    let mut v = f
                        .add_string_variable(&d.name, &[&d.name])
                        .map_err(e("coordinate"))?;
                    for (i, c) in d.coords.iter().enumerate() {
                        v.put_string(&c.label, [i]).map_err(e("write coordinate"))?;
                    }
                }
            }
        }
        {
            let seeds: Vec<i64> = sweep.seeds.iter().map(|&s| s as i64).collect();
            let mut v = f
                .add_variable::<i64>("seed", &["seed"])
                .map_err(e("variable seed"))?;
            v.put_values(&seeds, ..).map_err(e("write seed"))?;
        }
        // Rows come in C order of (method, dims…, seed): the flat index is the row's position.
        let status: Vec<i8> = rows
            .iter()
            .map(|r| r.3.map_or(-1, |r| r.diverged as i8))
            .collect();
        {
            let mut v = f
                .add_variable::<i8>("diverged", &dim_refs)
                .map_err(e("variable diverged"))?;
            v.put_attribute(
                "long_name",
                "1: the run diverged, 0: finished, -1: not run yet",
            )
            .map_err(e("attribute"))?;
            v.put_values(&status, ..).map_err(e("write diverged"))?;
        }
        for m in metrics {
            let vals: Vec<f64> = rows
                .iter()
                .map(|r| r.3.and_then(|r| (m.get)(r)).unwrap_or(f64::NAN))
                .collect();
            let mut v = f
                .add_variable::<f64>(m.name, &dim_refs)
                .map_err(e("variable"))?;
            v.put_attribute("_FillValue", f64::NAN)
                .map_err(e("attribute"))?;
            v.put_attribute(
                "long_name",
                format!(
                    "time mean after the burn-in of {} (NaN: diverged or not run)",
                    m.short
                ),
            )
            .map_err(e("attribute"))?;
            v.put_values(&vals, ..).map_err(e("write metric"))?;
        }
        let wall: Vec<f64> = rows
            .iter()
            .map(|r| r.3.map_or(f64::NAN, |r| r.wall_s))
            .collect();
        let mut v = f
            .add_variable::<f64>("wall_s", &dim_refs)
            .map_err(e("variable wall_s"))?;
        v.put_attribute("units", "s").map_err(e("attribute"))?;
        v.put_values(&wall, ..).map_err(e("write wall_s"))?;
    }
    pending.commit()
}

/// Statistics of one (method, coords) group over its seeds.
pub(crate) struct GroupStats {
    pub values: Vec<Vec<f64>>,
    pub finished: usize,
    pub diverged: usize,
    pub missing: usize,
    pub wall: f64,
}

fn group_stats(
    group: &[&(Vec<usize>, usize, u64, Option<&Row>)],
    metrics: &[&Metric],
) -> GroupStats {
    let mut g = GroupStats {
        values: vec![Vec::new(); metrics.len()],
        finished: 0,
        diverged: 0,
        missing: 0,
        wall: 0.0,
    };
    for (_, _, _, r) in group {
        match r {
            None => g.missing += 1,
            Some(r) if r.diverged => g.diverged += 1,
            Some(r) => {
                g.finished += 1;
                g.wall += r.wall_s;
                for (vals, m) in g.values.iter_mut().zip(metrics) {
                    if let Some(v) = (m.get)(r) {
                        vals.push(v);
                    }
                }
            }
        }
    }
    g.wall /= g.finished.max(1) as f64;
    g
}

/// Digits for a mean ± std cell: enough that the std shows two significant digits.
fn cell(v: &[f64]) -> String {
    if v.is_empty() {
        return "–".into();
    }
    let (m, s) = mean_std(v);
    let digits = if s > 0.0 && s.is_finite() {
        ((-s.log10()).floor() as i32 + 2).clamp(2, 6) as usize
    } else {
        4
    };
    if v.len() == 1 {
        format!("{m:.digits$}")
    } else {
        format!("{m:.digits$} ± {s:.digits$}")
    }
}

fn write_markdown(
    sweep: &Sweep,
    rows: &Ordered,
    metrics: &[&Metric],
    path: &Path,
) -> Result<PathBuf> {
    let pending = PendingFile::new(path)?;
    let mut md = format!(
        "Sweep `{}` ({}): mean ± std over seeds {:?} of the time-mean scores after the burn-in; \
         diverged runs are counted, not averaged in.\n\n",
        sweep.name,
        sweep.path.display(),
        sweep.seeds
    );
    if let Some(d) = &sweep.description {
        md += &format!("{d}\n\n");
    }
    let varying: Vec<usize> = (0..sweep.dims.len()).collect();
    md += "| method |";
    for &d in &varying {
        md += &format!(" {} |", sweep.dims[d].name);
    }
    for m in metrics {
        md += &format!(" {} |", m.short);
    }
    md += " seeds | diverged | s/run |\n|---|";
    md += &"---|".repeat(varying.len() + metrics.len() + 3);
    md += "\n";
    let per = sweep.seeds.len();
    for chunk in rows.chunks(per) {
        let group: Vec<_> = chunk.iter().collect();
        let g = group_stats(&group, metrics);
        let (coords, mi, _, _) = &chunk[0];
        md += &format!("| {} |", sweep.methods[*mi].name);
        for &d in &varying {
            md += &format!(" {} |", sweep.dims[d].coords[coords[d]].label);
        }
        for v in &g.values {
            md += &format!(" {} |", cell(v));
        }
        let missing = if g.missing > 0 {
            format!(" ({} not run)", g.missing)
        } else {
            String::new()
        };
        md += &format!(
            " {}{missing} | {} | {} |\n",
            g.finished,
            g.diverged,
            if g.finished > 0 {
                format!("{:.1}", g.wall)
            } else {
                "–".into()
            }
        );
    }
    std::fs::write(pending.tmp_path(), md)
        .map_err(|e| GendaError::file(path, format!("cannot write: {e}")))?;
    pending.commit()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mean_std_and_cells() {
        let (m, s) = mean_std(&[1.0, 2.0, 3.0]);
        assert_eq!(m, 2.0);
        assert!((s - 1.0).abs() < 1e-15);
        assert_eq!(cell(&[1.0, 2.0, 3.0]), "2.00 ± 1.00");
        assert_eq!(cell(&[0.3, 0.31]), "0.3050 ± 0.0071");
        assert_eq!(cell(&[]), "–");
    }
}
