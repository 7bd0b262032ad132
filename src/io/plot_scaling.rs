//! The scaling plot of `genda scaling` (or `genda plot scaling.csv`): time per cycle against
//! ranks (log–log, with the ideal line), parallel efficiency, and the phase split per rank
//! count where the CSV has the phase columns. Rank ticks are the measured rank counts as
//! integers; time ticks carry units; legends sit in a strip of their own, never on data.
use super::plot::{ensure_font, finite_max, finite_min};
use super::PendingFile;
use crate::error::{GendaError, Result};
use plotters::prelude::*;
use std::path::{Path, PathBuf};

/// One rank count of a scaling series.
#[derive(Debug, Clone)]
pub struct ScalingPoint {
    pub ranks: f64,
    pub time_per_cycle_s: f64,
    pub speedup: f64,
    pub efficiency: f64,
    /// Seconds per cycle in (forecast, analysis, communication, I/O, truth), if measured.
    pub phases: Option<[f64; 5]>,
}

const PHASES: [(&str, RGBColor); 5] = [
    ("forecast", RGBColor(31, 119, 180)),
    ("analysis", RGBColor(214, 39, 40)),
    ("communication", RGBColor(255, 127, 14)),
    ("I/O", RGBColor(44, 160, 44)),
    ("truth+obs", RGBColor(150, 150, 150)),
];

/// Seconds with a unit that keeps 1–3 digits before the point.
pub fn fmt_seconds(s: f64) -> String {
    let a = s.abs();
    let (v, u) = if a >= 1.0 || a == 0.0 {
        (s, "s")
    } else if a >= 1e-3 {
        (s * 1e3, "ms")
    } else if a >= 1e-6 {
        (s * 1e6, "µs")
    } else {
        (s * 1e9, "ns")
    };
    let t = format!("{v:.3}");
    let t = t.trim_end_matches('0').trim_end_matches('.');
    format!("{t} {u}")
}

/// 1-2-5 values covering [lo, hi] (log axis ticks).
pub(crate) fn ticks_125(lo: f64, hi: f64) -> Vec<f64> {
    let mut out = Vec::new();
    let mut e = lo.log10().floor() as i32 - 1;
    while 10f64.powi(e) <= hi * 10.0 {
        for m in [1.0, 2.0, 5.0] {
            let v = m * 10f64.powi(e);
            if v >= lo && v <= hi {
                out.push(v);
            }
        }
        e += 1;
    }
    out
}

/// Read a scaling CSV written by `genda scaling` (phase columns optional). Also says whether
/// the series is strong (the same members on every rank count) or weak (members grow).
pub fn read_scaling_csv(csv_path: &Path) -> Result<(Vec<ScalingPoint>, bool)> {
    let err = |m: String| GendaError::file(csv_path, m);
    let mut r = csv::Reader::from_path(csv_path).map_err(|e| err(format!("cannot read: {e}")))?;
    let header: Vec<String> = r
        .headers()
        .map_err(|e| err(e.to_string()))?
        .iter()
        .map(String::from)
        .collect();
    let col = |n: &str| header.iter().position(|h| h == n);
    let need = |n: &str| col(n).ok_or_else(|| err(format!("not a scaling CSV: no `{n}` column")));
    let (cr, ct, cs, ce) = (
        need("ranks")?,
        need("time_per_cycle_s")?,
        need("speedup")?,
        need("efficiency")?,
    );
    let phase_cols: Option<Vec<usize>> = [
        "forecast_s",
        "analysis_s",
        "communication_s",
        "io_s",
        "truth_s",
    ]
    .iter()
    .map(|n| col(n))
    .collect();
    let (cc, cm) = (col("cycles"), col("members"));
    let mut members = Vec::new();
    let mut pts = Vec::new();
    for rec in r.records() {
        let rec = rec.map_err(|e| err(format!("bad row: {e}")))?;
        let num = |i: usize| {
            rec[i]
                .trim()
                .parse::<f64>()
                .map_err(|_| err(format!("not a number: `{}`", &rec[i])))
        };
        let cycles = match cc {
            Some(i) => num(i)?.max(1.0),
            None => 1.0,
        };
        let phases = match &phase_cols {
            Some(cols) => {
                let mut p = [0.0; 5];
                for (v, &i) in p.iter_mut().zip(cols) {
                    *v = num(i)? / cycles;
                }
                Some(p)
            }
            None => None,
        };
        if let Some(i) = cm {
            members.push(num(i)?);
        }
        pts.push(ScalingPoint {
            ranks: num(cr)?,
            time_per_cycle_s: num(ct)?,
            speedup: num(cs)?,
            efficiency: num(ce)?,
            phases,
        });
    }
    if pts.is_empty() {
        return Err(err("the scaling CSV has no rows".into()));
    }
    let strong = members.windows(2).all(|w| w[0] == w[1]);
    Ok((pts, strong))
}

/// Whether `path` is a scaling CSV (its header starts with `ranks,`).
pub fn is_scaling_csv(path: &Path) -> bool {
    path.extension().is_some_and(|e| e == "csv")
        && std::fs::read_to_string(path).is_ok_and(|t| t.starts_with("ranks,"))
}

/// Draw the scaling plot to `png`.
pub fn plot_scaling(png: &Path, points: &[ScalingPoint], strong: bool) -> Result<PathBuf> {
    ensure_font()?;
    if points.is_empty() {
        return Err(GendaError::file(png, "no scaling points to plot"));
    }
    let pending = PendingFile::new(png)?;
    let perr = |e: &dyn std::fmt::Display| GendaError::file(png, format!("plotting: {e}"));
    let with_phases = points.iter().all(|p| p.phases.is_some());
    let panels = if with_phases { 3 } else { 2 };
    {
        let root =
            BitMapBackend::new(pending.tmp_path(), (560 * panels as u32, 560)).into_drawing_area();
        root.fill(&WHITE).map_err(|e| perr(&e))?;
        let (main, strip) = root.split_vertically(500);
        let areas = main.split_evenly((1, panels));
        let ranks: Vec<f64> = points.iter().map(|p| p.ranks).collect();
        let rmin = finite_min(ranks.iter().copied());
        let rmax = finite_max(ranks.iter().copied());
        let (r0, t0) = (points[0].ranks, points[0].time_per_cycle_s);
        let ideal = |r: f64| if strong { t0 * r0 / r } else { t0 };
        let tlo = finite_min(
            points
                .iter()
                .map(|p| p.time_per_cycle_s.min(ideal(p.ranks))),
        ) / 1.5;
        let thi = finite_max(
            points
                .iter()
                .map(|p| p.time_per_cycle_s.max(ideal(p.ranks))),
        ) * 1.5;
        let xr = (rmin / 1.4)..(rmax * 1.4);
        let rank_label = |v: &f64| format!("{}", v.round() as i64);
        // Panel 1: time per cycle.
        let mut c = ChartBuilder::on(&areas[0])
            .caption(
                if strong {
                    "strong scaling: time per cycle"
                } else {
                    "weak scaling: time per cycle"
                },
                ("sans-serif", 20),
            )
            .margin(12)
            .x_label_area_size(45)
            .y_label_area_size(80)
            .build_cartesian_2d(
                xr.clone().log_scale().with_key_points(ranks.clone()),
                (tlo..thi).log_scale().with_key_points(ticks_125(tlo, thi)),
            )
            .map_err(|e| perr(&e))?;
        c.configure_mesh()
            .x_desc("MPI ranks")
            .y_desc("wall time per cycle")
            .x_label_formatter(&rank_label)
            .y_label_formatter(&|v: &f64| fmt_seconds(*v))
            .draw()
            .map_err(|e| perr(&e))?;
        let red = RGBColor(200, 30, 30);
        c.draw_series(LineSeries::new(
            ranks.iter().map(|&r| (r, ideal(r))),
            BLACK.stroke_width(1),
        ))
        .map_err(|e| perr(&e))?;
        c.draw_series(LineSeries::new(
            points.iter().map(|p| (p.ranks, p.time_per_cycle_s)),
            red.stroke_width(2),
        ))
        .map_err(|e| perr(&e))?;
        c.draw_series(
            points
                .iter()
                .map(|p| Circle::new((p.ranks, p.time_per_cycle_s), 4, red.filled())),
        )
        .map_err(|e| perr(&e))?;
        // Panel 2: efficiency.
        let blue = RGBColor(30, 60, 200);
        let emax = finite_max(points.iter().map(|p| p.efficiency)).max(1.0) * 1.15;
        let mut c = ChartBuilder::on(&areas[1])
            .caption("parallel efficiency", ("sans-serif", 20))
            .margin(12)
            .x_label_area_size(45)
            .y_label_area_size(60)
            .build_cartesian_2d(
                xr.clone().log_scale().with_key_points(ranks.clone()),
                0.0..emax,
            )
            .map_err(|e| perr(&e))?;
        c.configure_mesh()
            .x_desc("MPI ranks")
            .y_desc(if strong {
                "speed-up / ranks"
            } else {
                "t(first) / t(ranks)"
            })
            .x_label_formatter(&rank_label)
            .y_label_formatter(&|v: &f64| format!("{:.0} %", 100.0 * v))
            .draw()
            .map_err(|e| perr(&e))?;
        for (level, col) in [(1.0, BLACK), (0.8, RGBColor(150, 150, 150))] {
            c.draw_series(LineSeries::new(
                vec![(xr.start, level), (xr.end, level)],
                col.stroke_width(1),
            ))
            .map_err(|e| perr(&e))?;
        }
        c.draw_series(LineSeries::new(
            points.iter().map(|p| (p.ranks, p.efficiency)),
            blue.stroke_width(2),
        ))
        .map_err(|e| perr(&e))?;
        c.draw_series(
            points
                .iter()
                .map(|p| Circle::new((p.ranks, p.efficiency), 4, blue.filled())),
        )
        .map_err(|e| perr(&e))?;
        if with_phases {
            phase_panel(&areas[2], points, png)?;
        }
        legend_strip(&strip, with_phases, red, blue, png)?;
        root.present().map_err(|e| perr(&e))?;
    }
    pending.commit()
}

type Area<'a> = DrawingArea<BitMapBackend<'a>, plotters::coord::Shift>;

/// The phase split: one stacked bar of seconds per cycle per rank count.
fn phase_panel(area: &Area, points: &[ScalingPoint], png: &Path) -> Result<()> {
    let perr = |e: &dyn std::fmt::Display| GendaError::file(png, format!("plotting: {e}"));
    let n = points.len();
    let top = finite_max(
        points
            .iter()
            .map(|p| p.phases.map_or(0.0, |ph| ph.iter().sum())),
    ) * 1.1;
    let labels: Vec<String> = points
        .iter()
        .map(|p| format!("{}", p.ranks.round() as i64))
        .collect();
    let mut c = ChartBuilder::on(area)
        .caption("time per cycle by phase", ("sans-serif", 20))
        .margin(12)
        .x_label_area_size(45)
        .y_label_area_size(80)
        .build_cartesian_2d(-0.5..n as f64 - 0.5, 0.0..top.max(1e-12))
        .map_err(|e| perr(&e))?;
    c.configure_mesh()
        .disable_x_mesh()
        .x_desc("MPI ranks")
        .y_desc("seconds per cycle")
        .x_labels(n + 1)
        .x_label_formatter(&|v: &f64| {
            let i = v.round();
            if (v - i).abs() < 1e-6 && i >= 0.0 {
                labels.get(i as usize).cloned().unwrap_or_default()
            } else {
                String::new()
            }
        })
        .y_label_formatter(&|v: &f64| fmt_seconds(*v))
        .draw()
        .map_err(|e| perr(&e))?;
    for (i, p) in points.iter().enumerate() {
        let ph = p.phases.unwrap_or_default();
        let mut base = 0.0;
        for (k, (_, col)) in PHASES.iter().enumerate() {
            let h = ph[k];
            c.draw_series(std::iter::once(Rectangle::new(
                [(i as f64 - 0.3, base), (i as f64 + 0.3, base + h)],
                col.filled(),
            )))
            .map_err(|e| perr(&e))?;
            base += h;
        }
    }
    Ok(())
}

/// The legend, in its own strip under the panels.
fn legend_strip(
    strip: &Area,
    with_phases: bool,
    red: RGBColor,
    blue: RGBColor,
    png: &Path,
) -> Result<()> {
    let perr = |e: &dyn std::fmt::Display| GendaError::file(png, format!("plotting: {e}"));
    let mut x = 20;
    let mut entry = |label: &str, col: RGBColor, bar: bool| -> Result<()> {
        if bar {
            strip
                .draw(&Rectangle::new([(x, 20), (x + 22, 36)], col.filled()))
                .map_err(|e| perr(&e))?;
        } else {
            strip
                .draw(&PathElement::new(
                    vec![(x, 28), (x + 22, 28)],
                    col.stroke_width(3),
                ))
                .map_err(|e| perr(&e))?;
        }
        strip
            .draw(&Text::new(
                label.to_string(),
                (x + 28, 20),
                ("sans-serif", 15),
            ))
            .map_err(|e| perr(&e))?;
        x += 40 + 9 * label.chars().count() as i32;
        Ok(())
    };
    entry("ideal", BLACK, false)?;
    entry("measured time per cycle", red, false)?;
    entry("efficiency", blue, false)?;
    if with_phases {
        for (name, col) in PHASES {
            entry(name, col, true)?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn seconds_and_ticks() {
        assert_eq!(fmt_seconds(2.5e-3), "2.5 ms");
        assert_eq!(fmt_seconds(12.0), "12 s");
        assert_eq!(fmt_seconds(3e-5), "30 µs");
        let t = ticks_125(0.003, 0.03);
        assert_eq!(t.len(), 3);
        for (a, b) in t.iter().zip([0.005, 0.01, 0.02]) {
            assert!((a - b).abs() < 1e-12 * b);
        }
    }
}
