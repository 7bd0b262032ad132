//! `genda plot` of a sweep's results.csv: a score against one axis, one line per method (and
//! per value of any other varying axis) with a ± 1 std band over seeds, and, where exactly two
//! axes vary, a heat map of the mean per method. Legends sit beside the charts, never on data.
use super::plot::{ensure_font, finite_max, finite_min};
use super::PendingFile;
use crate::error::{GendaError, Result};
use crate::metrics::mean_std;
use plotters::coord::ranged1d::ValueFormatter;
use plotters::prelude::*;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

/// The results.csv behind `path` when it is a sweep's output (its directory, its CSV, or its
/// NetCDF), else `None` (a run file).
pub fn sweep_results(path: &Path) -> Option<PathBuf> {
    if path.is_dir() {
        return Some(path.join("results.csv"));
    }
    match path.extension().and_then(|e| e.to_str()) {
        Some("csv") => Some(path.to_path_buf()),
        Some("nc") => {
            let f = netcdf::open(path).ok()?;
            f.attribute("genda_sweep")?;
            Some(path.with_extension("csv"))
        }
        _ => None,
    }
}

/// The tidy table: dimension columns and one score column.
struct Table {
    dims: Vec<String>,
    /// (method, coordinate labels) → finite values over seeds, and the diverged count.
    groups: BTreeMap<(usize, Vec<String>), (Vec<f64>, usize)>,
    methods: Vec<String>,
    /// Labels of each dimension in first-seen order.
    labels: Vec<Vec<String>>,
}

fn read_table(csv_path: &Path, metric: &str) -> Result<Table> {
    let err = |m: String| GendaError::file(csv_path, m);
    let mut r = csv::Reader::from_path(csv_path)
        .map_err(|e| err(format!("cannot read sweep results: {e}")))?;
    let header: Vec<String> = r
        .headers()
        .map_err(|e| err(format!("no header: {e}")))?
        .iter()
        .map(String::from)
        .collect();
    let col = |name: &str| header.iter().position(|h| h == name);
    let (Some(mcol), Some(scol), Some(dcol)) = (col("method"), col("seed"), col("diverged")) else {
        return Err(err(
            "not a genda sweep results.csv (needs method, seed and diverged columns)".into(),
        ));
    };
    let vcol = col(metric).ok_or_else(|| {
        err(format!(
            "no score `{metric}` in the results; available: {}",
            header[dcol + 1..].join(", ")
        ))
    })?;
    let dims: Vec<String> = header[mcol + 1..scol].to_vec();
    let mut t = Table {
        dims: dims.clone(),
        groups: BTreeMap::new(),
        methods: Vec::new(),
        labels: vec![Vec::new(); dims.len()],
    };
    for rec in r.records() {
        let rec = rec.map_err(|e| err(format!("bad row: {e}")))?;
        let m = rec[mcol].to_string();
        let mi = match t.methods.iter().position(|x| *x == m) {
            Some(i) => i,
            None => {
                t.methods.push(m);
                t.methods.len() - 1
            }
        };
        let coords: Vec<String> = (mcol + 1..scol).map(|i| rec[i].to_string()).collect();
        for (l, c) in t.labels.iter_mut().zip(&coords) {
            if !l.contains(c) {
                l.push(c.clone());
            }
        }
        let g = t.groups.entry((mi, coords)).or_default();
        if &rec[dcol] == "1" {
            g.1 += 1;
        } else if let Ok(v) = rec[vcol].parse::<f64>() {
            if v.is_finite() {
                g.0.push(v);
            }
        }
    }
    if t.groups.is_empty() {
        return Err(err("the sweep results hold no experiments yet".into()));
    }
    Ok(t)
}

/// An axis label with what its values count or measure, for the keys sweeps vary most.
fn axis_label(key: &str) -> String {
    let unit = match key {
        "filter.members" => "ensemble size N",
        "filter.inflation" => "multiplicative factor",
        "filter.localization_radius" => "grid points",
        "filter.steps" => "reverse-process steps",
        "model.dim" => "state dimension n",
        "model.forcing" => "forcing F",
        "model.dt" => "model time units",
        "observations.obs_every" => "model steps between observations",
        "observations.error_var" => "observation error variance",
        "observations.stride" => "every k-th variable",
        "experiment.cycles" => "analysis cycles",
        _ => return key.to_string(),
    };
    format!("{key} ({unit})")
}

/// The score's label: RMSE and spread are in the state's units.
fn metric_label(metric: &str) -> String {
    let what = if metric.contains("rmse") || metric.contains("spread") || metric.contains("crps") {
        "state units"
    } else {
        "1"
    };
    format!("{metric} [{what}]: time mean, mean ± 1 std over seeds")
}

const PALETTE: [RGBColor; 8] = [
    RGBColor(31, 119, 180),
    RGBColor(214, 39, 40),
    RGBColor(44, 160, 44),
    RGBColor(255, 127, 14),
    RGBColor(148, 103, 189),
    RGBColor(140, 86, 75),
    RGBColor(227, 119, 194),
    RGBColor(23, 190, 207),
];

/// Plot `csv` to `png` (default: results.png beside it); returns the PNG(s) written.
pub fn plot_sweep(
    csv: &Path,
    png: Option<&Path>,
    x: Option<&str>,
    metric: &str,
) -> Result<Vec<PathBuf>> {
    let t = read_table(csv, metric)?;
    ensure_font()?;
    let out = png
        .map(Path::to_path_buf)
        .unwrap_or_else(|| csv.with_extension("png"));
    let varying: Vec<usize> = (0..t.dims.len())
        .filter(|&d| t.labels[d].len() > 1)
        .collect();
    let numeric = |d: usize| t.labels[d].iter().all(|l| l.parse::<f64>().is_ok());
    let xdim = match x {
        Some(name) => Some(t.dims.iter().position(|d| d == name).ok_or_else(|| {
            GendaError::invalid(
                "--x",
                format!("no axis `{name}`; the sweep's axes: {}", t.dims.join(", ")),
            )
        })?),
        None => varying
            .iter()
            .copied()
            .find(|&d| numeric(d))
            .or(varying.first().copied()),
    };
    let mut written = vec![line_plot(&t, xdim, metric, &out)?];
    let others: Vec<usize> = varying
        .iter()
        .copied()
        .filter(|&d| Some(d) != xdim)
        .collect();
    if let (Some(xd), [yd]) = (xdim, others.as_slice()) {
        written.push(heat_map(
            &t,
            xd,
            *yd,
            metric,
            &out.with_extension("heatmap.png"),
        )?);
    }
    Ok(written)
}

/// The x axis of a line plot: positions, tick labels and scale.
struct XAxis {
    /// The coordinates' labels (the methods when nothing varies).
    full_labels: Vec<String>,
    /// Long category labels (zipped cells): c1, c2, … on the axis, spelled out beside it.
    long: bool,
    /// Tick labels at the positions `xs`.
    labels: Vec<String>,
    xs: Vec<f64>,
    /// The labels are not numbers: categories at 0..k.
    categorical: bool,
    /// Positive numbers spanning a decade or more: a log axis.
    log: bool,
}

impl XAxis {
    /// x positions: numeric values, or 0..k for labels (or the methods when nothing varies).
    fn new(t: &Table, xdim: Option<usize>) -> Self {
        let full_labels: Vec<String> = match xdim {
            Some(d) => t.labels[d].clone(),
            None => t.methods.clone(),
        };
        // Long category labels (zipped cells) become c1, c2, … on the axis, spelled out beside it.
        let long = full_labels.iter().any(|l| l.chars().count() > 14)
            && full_labels.iter().any(|l| l.parse::<f64>().is_err());
        let labels: Vec<String> = if long {
            (1..=full_labels.len()).map(|i| format!("c{i}")).collect()
        } else {
            full_labels.clone()
        };
        let xnum: Option<Vec<f64>> = labels.iter().map(|l| l.parse::<f64>().ok()).collect();
        let xs: Vec<f64> = xnum
            .clone()
            .unwrap_or_else(|| (0..labels.len()).map(|i| i as f64).collect());
        let log = xnum.as_ref().is_some_and(|v| {
            let (lo, hi) = (finite_min(v.iter().copied()), finite_max(v.iter().copied()));
            lo > 0.0 && hi / lo >= 10.0
        });
        XAxis {
            full_labels,
            long,
            labels,
            xs,
            categorical: xnum.is_none(),
            log,
        }
    }

    /// Tick labels: the coordinates' own labels at their positions (key points on a log
    /// axis, integers for labels); plain numbers elsewhere on a linear numeric axis.
    fn tick_label(&self, v: &f64) -> String {
        match self
            .xs
            .iter()
            .position(|x| (x - v).abs() <= 1e-9 * x.abs().max(1.0))
        {
            Some(i) => self.labels[i].clone(),
            None if self.categorical => String::new(),
            None => format!("{v}"),
        }
    }
}

/// The y axis of a line plot: range and tick-label digits.
struct YAxis {
    lo: f64,
    hi: f64,
    digits: usize,
}

impl YAxis {
    /// The range of the series' mean ± std, padded by 8 %, or an error when nothing is finite.
    fn of(series: &Series, metric: &str, out: &Path) -> Result<Self> {
        let all = || series.values().flatten();
        let ylo = finite_min(all().map(|p| p.1 - p.2)).min(finite_min(all().map(|p| p.1)));
        let yhi = finite_max(all().map(|p| p.1 + p.2));
        if !(ylo.is_finite() && yhi.is_finite() && yhi >= ylo) {
            return Err(GendaError::file(
                out,
                format!("no finite `{metric}` values to plot (all runs diverged?)"),
            ));
        }
        let pad = 0.08 * (yhi - ylo).max(1e-12);
        // Scores that cannot be negative (every mean ≥ 0) keep the axis at ≥ 0.
        let nonneg = all().all(|p| p.1 >= 0.0);
        let (y0, y1) = (
            if nonneg {
                (ylo - pad).max(0.0)
            } else {
                ylo - pad
            },
            yhi + pad,
        );
        let digits = match y1 - y0 {
            r if r >= 20.0 => 0,
            r if r >= 2.0 => 1,
            r if r >= 0.2 => 2,
            _ => 3,
        };
        Ok(YAxis {
            lo: y0,
            hi: y1,
            digits,
        })
    }
}

fn line_plot(t: &Table, xdim: Option<usize>, metric: &str, out: &Path) -> Result<PathBuf> {
    let pending = PendingFile::new(out)?;
    let perr = |e: &dyn std::fmt::Display| GendaError::file(out, format!("plotting: {e}"));
    let xa = XAxis::new(t, xdim);
    let series = build_series(t, xdim, &xa.xs, xa.categorical);
    let ya = YAxis::of(&series, metric, out)?;
    let (y0, y1) = (ya.lo, ya.hi);
    let (xlo, xhi) = (
        finite_min(xa.xs.iter().copied()),
        finite_max(xa.xs.iter().copied()),
    );
    {
        let root = BitMapBackend::new(pending.tmp_path(), (if xa.long { 1500 } else { 1300 }, 620))
            .into_drawing_area();
        root.fill(&WHITE).map_err(|e| perr(&e))?;
        let (chart_area, legend_area) = root.split_horizontally(960);
        let xdesc = match xdim {
            Some(d) => axis_label(&t.dims[d]),
            None => "method".into(),
        };
        let ydesc = metric_label(metric);
        let caption = match xdim {
            Some(d) => format!("{metric} against {}", t.dims[d]),
            None => format!("{metric} by method"),
        };
        let mut builder = ChartBuilder::on(&chart_area);
        builder
            .caption(caption, ("sans-serif", 24))
            .margin(14)
            .x_label_area_size(50)
            .y_label_area_size(80);
        let descs = [xdesc.as_str(), ydesc.as_str()];
        let keys: Vec<f64> = xa.xs.clone();
        if xa.log {
            let chart = builder
                .build_cartesian_2d(
                    (xlo / 1.25..xhi * 1.25).log_scale().with_key_points(keys),
                    y0..y1,
                )
                .map_err(|e| perr(&e))?;
            draw_lines(chart, &xa, &ya, descs, &series, out)?;
        } else {
            let span = (xhi - xlo).max(1.0);
            let chart = builder
                .build_cartesian_2d(xlo - 0.06 * span..xhi + 0.06 * span, y0..y1)
                .map_err(|e| perr(&e))?;
            draw_lines(chart, &xa, &ya, descs, &series, out)?;
        }
        draw_legend(
            &legend_area,
            t,
            &series,
            xdim,
            xa.long.then_some(&xa.full_labels[..]),
            out,
        )?;
        root.present().map_err(|e| perr(&e))?;
    }
    pending.commit()
}

/// Draw the mesh (axis descriptions `descs`: x, y) and every series of a line plot on `c`:
/// mean lines with ± 1 std bands between numeric coordinates, error bars and points.
fn draw_lines<X, Y>(
    mut c: ChartContext<'_, BitMapBackend<'_>, Cartesian2d<X, Y>>,
    xa: &XAxis,
    ya: &YAxis,
    descs: [&str; 2],
    series: &Series,
    out: &Path,
) -> Result<()>
where
    X: Ranged<ValueType = f64> + ValueFormatter<f64>,
    Y: Ranged<ValueType = f64> + ValueFormatter<f64>,
{
    let perr = |e: &dyn std::fmt::Display| GendaError::file(out, format!("plotting: {e}"));
    let (y0, ydigits) = (ya.lo, ya.digits);
    let fmt_x = |v: &f64| xa.tick_label(v);
    c.configure_mesh()
        .x_desc(descs[0])
        .y_desc(descs[1])
        .x_labels(xa.xs.len().max(2) + 1)
        .x_label_formatter(&fmt_x)
        .y_label_formatter(&|v: &f64| format!("{v:.ydigits$}"))
        .axis_desc_style(("sans-serif", 18))
        .label_style(("sans-serif", 15))
        .draw()
        .map_err(|e| perr(&e))?;
    for (i, (_, pts)) in series.iter().enumerate() {
        let col = PALETTE[i % PALETTE.len()];
        // Lines and bands between numeric coordinates only; categories get points.
        if pts.len() > 1 && !xa.categorical {
            let mut band: Vec<(f64, f64)> = pts.iter().map(|p| (p.0, p.1 + p.2)).collect();
            band.extend(pts.iter().rev().map(|p| (p.0, (p.1 - p.2).max(y0))));
            c.draw_series(std::iter::once(Polygon::new(band, col.mix(0.18).filled())))
                .map_err(|e| perr(&e))?;
            c.draw_series(LineSeries::new(
                pts.iter().map(|p| (p.0, p.1)),
                col.stroke_width(2),
            ))
            .map_err(|e| perr(&e))?;
        }
        c.draw_series(pts.iter().map(|p| {
            PathElement::new(
                vec![(p.0, (p.1 - p.2).max(y0)), (p.0, p.1 + p.2)],
                col.stroke_width(2),
            )
        }))
        .map_err(|e| perr(&e))?;
        c.draw_series(pts.iter().map(|p| Circle::new((p.0, p.1), 4, col.filled())))
            .map_err(|e| perr(&e))?;
    }
    Ok(())
}

/// One series per method × the other varying axes' labels: (x, mean, std, seeds, diverged).
type Series = BTreeMap<(usize, Vec<String>), Vec<(f64, f64, f64, usize, usize)>>;

fn build_series(t: &Table, xdim: Option<usize>, xs: &[f64], categorical: bool) -> Series {
    let mut series: Series = BTreeMap::new();
    for ((mi, coords), (vals, div)) in &t.groups {
        let xi = match xdim {
            Some(d) => t.labels[d]
                .iter()
                .position(|l| *l == coords[d])
                .unwrap_or(0),
            None => *mi,
        };
        let rest: Vec<String> = coords
            .iter()
            .enumerate()
            .filter(|(d, _)| Some(*d) != xdim && t.labels[*d].len() > 1)
            .map(|(d, c)| format!("{}={c}", t.dims[d]))
            .collect();
        let key = if xdim.is_none() {
            (0, rest)
        } else {
            (*mi, rest)
        };
        if !vals.is_empty() {
            let (m, s) = mean_std(vals);
            series
                .entry(key)
                .or_default()
                .push((xs[xi], m, s, vals.len(), *div));
        } else {
            series.entry(key).or_default();
        }
    }
    let ns = series.len();
    for (i, pts) in series.values_mut().enumerate() {
        pts.sort_by(|a, b| a.0.total_cmp(&b.0));
        // Categories: the methods side by side around each position, not on top of each other.
        if categorical && ns > 1 {
            let dodge = 0.5 * (i as f64 / (ns - 1) as f64 - 0.5);
            for p in pts.iter_mut() {
                p.0 += dodge;
            }
        }
    }
    series
}

/// The legend beside the chart (with the diverged counts), and the long category labels.
fn draw_legend(
    legend_area: &DrawingArea<BitMapBackend<'_>, plotters::coord::Shift>,
    t: &Table,
    series: &Series,
    xdim: Option<usize>,
    long_labels: Option<&[String]>,
    out: &Path,
) -> Result<()> {
    let perr = |e: &dyn std::fmt::Display| GendaError::file(out, format!("plotting: {e}"));
    legend_area
        .draw(&Text::new("legend", (10, 40), ("sans-serif", 18)))
        .map_err(|e| perr(&e))?;
    for (i, ((mi, rest), pts)) in series.iter().enumerate() {
        let col = PALETTE[i % PALETTE.len()];
        let y = 75 + 26 * i as i32;
        legend_area
            .draw(&PathElement::new(
                vec![(10, y), (40, y)],
                col.stroke_width(3),
            ))
            .map_err(|e| perr(&e))?;
        let mut name = if xdim.is_none() {
            "all methods".to_string()
        } else {
            t.methods[*mi].clone()
        };
        if !rest.is_empty() {
            name += &format!(", {}", rest.join(", "));
        }
        let div: usize = pts.iter().map(|p| p.4).sum();
        if div > 0 {
            name += &format!(" ({div} diverged)");
        }
        legend_area
            .draw(&Text::new(name, (48, y - 9), ("sans-serif", 15)))
            .map_err(|e| perr(&e))?;
    }
    if let Some(full_labels) = long_labels {
        let y0 = 75 + 26 * series.len() as i32 + 20;
        for (i, l) in full_labels.iter().enumerate() {
            legend_area
                .draw(&Text::new(
                    format!("c{}: {l}", i + 1),
                    (10, y0 + 18 * i as i32),
                    ("sans-serif", 11),
                ))
                .map_err(|e| perr(&e))?;
        }
    }
    Ok(())
}

fn heat_map(t: &Table, xd: usize, yd: usize, metric: &str, out: &Path) -> Result<PathBuf> {
    let pending = PendingFile::new(out)?;
    let perr = |e: &dyn std::fmt::Display| GendaError::file(out, format!("plotting: {e}"));
    let (nx, ny) = (t.labels[xd].len(), t.labels[yd].len());
    let nm = t.methods.len();
    let mut grid = vec![vec![f64::NAN; nx * ny]; nm];
    for ((mi, coords), (vals, _)) in &t.groups {
        if vals.is_empty() {
            continue;
        }
        let i = t.labels[xd]
            .iter()
            .position(|l| *l == coords[xd])
            .unwrap_or(0);
        let j = t.labels[yd]
            .iter()
            .position(|l| *l == coords[yd])
            .unwrap_or(0);
        grid[*mi][j * nx + i] = mean_std(vals).0;
    }
    let lo = finite_min(grid.iter().flatten().copied());
    let hi = finite_max(grid.iter().flatten().copied());
    {
        let w = 460 * nm as u32;
        let root = BitMapBackend::new(pending.tmp_path(), (w.max(600), 520)).into_drawing_area();
        root.fill(&WHITE).map_err(|e| perr(&e))?;
        let panels = root.split_evenly((1, nm));
        for (mi, area) in panels.iter().enumerate() {
            let xl = t.labels[xd].clone();
            let yl = t.labels[yd].clone();
            let mut c = ChartBuilder::on(area)
                .caption(
                    format!("{}: mean {metric}", t.methods[mi]),
                    ("sans-serif", 18),
                )
                .margin(10)
                .x_label_area_size(45)
                .y_label_area_size(70)
                .build_cartesian_2d(-0.5f64..nx as f64 - 0.5, -0.5f64..ny as f64 - 0.5)
                .map_err(|e| perr(&e))?;
            c.configure_mesh()
                .disable_mesh()
                .x_desc(axis_label(&t.dims[xd]))
                .y_desc(axis_label(&t.dims[yd]))
                .x_labels(nx)
                .y_labels(ny)
                // Cells are centred on integers: a tick there is that coordinate's label.
                .x_label_formatter(&|v: &f64| {
                    let i = v.round();
                    (i >= 0.0 && (v - i).abs() < 1e-6)
                        .then(|| xl.get(i as usize).cloned())
                        .flatten()
                        .unwrap_or_default()
                })
                .y_label_formatter(&|v: &f64| {
                    let j = v.round();
                    (j >= 0.0 && (v - j).abs() < 1e-6)
                        .then(|| yl.get(j as usize).cloned())
                        .flatten()
                        .unwrap_or_default()
                })
                .draw()
                .map_err(|e| perr(&e))?;
            for j in 0..ny {
                for i in 0..nx {
                    let v = grid[mi][j * nx + i];
                    let s = if v.is_finite() && hi > lo {
                        (v - lo) / (hi - lo)
                    } else {
                        0.5
                    };
                    let colour = if v.is_finite() {
                        RGBColor(
                            (255.0 * s) as u8,
                            (200.0 * (1.0 - (2.0 * s - 1.0).abs())) as u8,
                            (255.0 * (1.0 - s)) as u8,
                        )
                    } else {
                        RGBColor(200, 200, 200)
                    };
                    c.draw_series(std::iter::once(Rectangle::new(
                        [
                            (i as f64 - 0.5, j as f64 - 0.5),
                            (i as f64 + 0.5, j as f64 + 0.5),
                        ],
                        colour.filled(),
                    )))
                    .map_err(|e| perr(&e))?;
                    let text = if v.is_finite() {
                        format!("{v:.3}")
                    } else {
                        "diverged".into()
                    };
                    c.draw_series(std::iter::once(Text::new(
                        text,
                        (i as f64 - 0.2, j as f64 + 0.05),
                        ("sans-serif", 14).into_font().color(&WHITE),
                    )))
                    .map_err(|e| perr(&e))?;
                }
            }
        }
        root.present().map_err(|e| perr(&e))?;
    }
    pending.commit()
}
