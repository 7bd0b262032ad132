//! The cost-growth plot (`scripts/cost_growth.sh`, then `genda plot cost_growth.csv`): analysis
//! time per cycle against the state size n (one line per method and rank count) and against the
//! ensemble size N, log–log, each line labelled with its fitted exponent beside the expected
//! one; the legend sits in a strip of its own, never on data.
use super::plot::{ensure_font, finite_max, finite_min};
use super::plot_scaling::{fmt_seconds, ticks_125};
use super::PendingFile;
use crate::error::{GendaError, Result};
use plotters::prelude::*;
use std::path::{Path, PathBuf};

/// One measured point of the CSV.
#[derive(Debug, Clone, PartialEq)]
pub struct CostPoint {
    pub method: String,
    pub ranks: usize,
    pub n: f64,
    pub members: f64,
    pub analysis_s: f64,
}

const HEADER: &str = "method,ranks,n,members,analysis_s";

/// Whether `path` is a cost-growth CSV (by its header).
pub fn is_cost_csv(path: &Path) -> bool {
    path.extension().is_some_and(|e| e == "csv")
        && std::fs::read_to_string(path).is_ok_and(|t| t.starts_with(HEADER))
}

/// Read a cost-growth CSV, every row checked.
pub fn read_cost_csv(path: &Path) -> Result<Vec<CostPoint>> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| GendaError::file(path, format!("cannot read: {e}")))?;
    let mut out = Vec::new();
    for (i, line) in text.lines().enumerate().skip(1) {
        let f: Vec<&str> = line.split(',').collect();
        let bad = || {
            GendaError::file(
                path,
                format!("line {}: expected {HEADER}, got `{line}`", i + 1),
            )
        };
        if f.len() != 5 {
            return Err(bad());
        }
        let num = |s: &str| s.trim().parse::<f64>().map_err(|_| bad());
        let p = CostPoint {
            method: f[0].trim().to_string(),
            ranks: num(f[1])? as usize,
            n: num(f[2])?,
            members: num(f[3])?,
            analysis_s: num(f[4])?,
        };
        if !(p.analysis_s > 0.0 && p.n > 0.0 && p.members > 0.0) {
            return Err(bad());
        }
        out.push(p);
    }
    if out.is_empty() {
        return Err(GendaError::file(path, "no measurements"));
    }
    Ok(out)
}

/// Least-squares slope of log y against log x.
pub fn log_slope(pts: &[(f64, f64)]) -> f64 {
    let k = pts.len() as f64;
    let (lx, ly): (Vec<f64>, Vec<f64>) = pts.iter().map(|(x, y)| (x.ln(), y.ln())).unzip();
    let (mx, my) = (lx.iter().sum::<f64>() / k, ly.iter().sum::<f64>() / k);
    let sxy: f64 = lx.iter().zip(&ly).map(|(a, b)| (a - mx) * (b - my)).sum();
    let sxx: f64 = lx.iter().map(|a| (a - mx) * (a - mx)).sum();
    sxy / sxx
}

/// A line of the plot: label, colour, dashed (2 ranks), points.
type Series = (String, RGBColor, bool, Vec<(f64, f64)>);

fn colour(method: &str) -> RGBColor {
    match method {
        "letkf" => RGBColor(31, 119, 180),
        "ensf" => RGBColor(214, 39, 40),
        _ => RGBColor(60, 60, 60),
    }
}

/// The series against n (fixed N, one per method and rank count) and against N (1 rank, the
/// most common n of the N series).
fn series(points: &[CostPoint]) -> (Vec<Series>, Vec<Series>, f64, f64) {
    let mut methods: Vec<String> = points.iter().map(|p| p.method.clone()).collect();
    methods.dedup();
    methods.sort();
    methods.dedup();
    // The N of the n series: the most frequent members value.
    let mode = |v: Vec<f64>| {
        let mut best = (0, v.first().copied().unwrap_or(1.0));
        for &x in &v {
            let c = v.iter().filter(|&&y| y == x).count();
            if c > best.0 {
                best = (c, x);
            }
        }
        best.1
    };
    let n_members = mode(points.iter().map(|p| p.members).collect());
    let n_of_members_series = mode(
        points
            .iter()
            .filter(|p| p.members != n_members)
            .map(|p| p.n)
            .collect(),
    );
    let mut by_n = Vec::new();
    let mut by_members = Vec::new();
    for m in &methods {
        let mut ranks: Vec<usize> = points
            .iter()
            .filter(|p| &p.method == m)
            .map(|p| p.ranks)
            .collect();
        ranks.sort();
        ranks.dedup();
        for r in ranks {
            let mut pts: Vec<(f64, f64)> = points
                .iter()
                .filter(|p| &p.method == m && p.ranks == r && p.members == n_members)
                .map(|p| (p.n, p.analysis_s))
                .collect();
            pts.sort_by(|a, b| a.0.total_cmp(&b.0));
            if pts.len() >= 2 {
                let label = format!(
                    "{m}, {r} rank{}: n^{:.2}",
                    if r > 1 { "s" } else { "" },
                    log_slope(&pts)
                );
                by_n.push((label, colour(m), r > 1, pts));
            }
        }
        let mut pts: Vec<(f64, f64)> = points
            .iter()
            .filter(|p| &p.method == m && p.ranks == 1 && p.n == n_of_members_series)
            .map(|p| (p.members, p.analysis_s))
            .collect();
        pts.sort_by(|a, b| a.0.total_cmp(&b.0));
        if pts.len() >= 2 {
            let label = format!("{m}: N^{:.2}", log_slope(&pts));
            by_members.push((label, colour(m), false, pts));
        }
    }
    (by_n, by_members, n_members, n_of_members_series)
}

type Area<'a> = DrawingArea<BitMapBackend<'a>, plotters::coord::Shift>;

fn panel(
    area: &Area,
    png: &Path,
    title: &str,
    xdesc: &str,
    lines: &[Series],
    slope: f64,
    decades: bool,
) -> Result<()> {
    let perr = |e: &dyn std::fmt::Display| GendaError::file(png, format!("plotting: {e}"));
    let xs = lines.iter().flat_map(|l| l.3.iter().map(|p| p.0));
    let ys = lines.iter().flat_map(|l| l.3.iter().map(|p| p.1));
    let (x0, x1) = (finite_min(xs.clone()) / 1.5, finite_max(xs) * 1.5);
    let (y0, y1) = (finite_min(ys.clone()) / 2.0, finite_max(ys) * 2.0);
    let xticks = ticks_125(x0, x1).into_iter().filter(|v| {
        let l = v.log10();
        !decades || (l - l.round()).abs() < 1e-9
    });
    let mut c = ChartBuilder::on(area)
        .caption(title, ("sans-serif", 20))
        .margin(12)
        .x_label_area_size(45)
        .y_label_area_size(80)
        .build_cartesian_2d(
            (x0..x1)
                .log_scale()
                .with_key_points(xticks.collect::<Vec<_>>()),
            (y0..y1).log_scale().with_key_points(ticks_125(y0, y1)),
        )
        .map_err(|e| perr(&e))?;
    c.configure_mesh()
        .x_desc(xdesc)
        .y_desc("analysis time per cycle")
        .x_label_formatter(&|v: &f64| {
            let l = v.log10().round() as i32;
            if decades && l >= 3 {
                format!("1e{l}")
            } else {
                format!("{}", v.round())
            }
        })
        .y_label_formatter(&|v: &f64| fmt_seconds(*v))
        .draw()
        .map_err(|e| perr(&e))?;
    // The expected growth through the first point of the first line (grey).
    if let Some((_, _, _, pts)) = lines.first() {
        let (a, b) = pts[0];
        let last = pts[pts.len() - 1].0;
        c.draw_series(LineSeries::new(
            [a, last].map(|x| (x, b * (x / a).powf(slope))),
            RGBColor(160, 160, 160).stroke_width(1),
        ))
        .map_err(|e| perr(&e))?;
    }
    for (_, col, dashed, pts) in lines {
        let style = col.stroke_width(if *dashed { 1 } else { 2 });
        c.draw_series(LineSeries::new(pts.iter().copied(), style))
            .map_err(|e| perr(&e))?;
        if *dashed {
            c.draw_series(pts.iter().map(|&p| TriangleMarker::new(p, 5, col.filled())))
                .map_err(|e| perr(&e))?;
        } else {
            c.draw_series(pts.iter().map(|&p| Circle::new(p, 4, col.filled())))
                .map_err(|e| perr(&e))?;
        }
    }
    Ok(())
}

/// Draw the two panels to `png`.
pub fn plot_cost(png: &Path, points: &[CostPoint]) -> Result<PathBuf> {
    ensure_font()?;
    let (by_n, by_members, n_members, n_fixed) = series(points);
    if by_n.is_empty() {
        return Err(GendaError::file(
            png,
            "no series of two or more state sizes to plot",
        ));
    }
    let pending = PendingFile::new(png)?;
    let perr = |e: &dyn std::fmt::Display| GendaError::file(png, format!("plotting: {e}"));
    let panels = if by_members.is_empty() { 1 } else { 2 };
    {
        let root =
            BitMapBackend::new(pending.tmp_path(), (600 * panels as u32, 620)).into_drawing_area();
        root.fill(&WHITE).map_err(|e| perr(&e))?;
        let (main, strip) = root.split_vertically(520);
        let areas = main.split_evenly((1, panels));
        let t1 = format!("against n (N = {n_members}); grey: slope 1");
        panel(&areas[0], png, &t1, "state size n", &by_n, 1.0, true)?;
        if panels == 2 {
            let t2 = format!(
                "against N (n = 1e{:.0}, 1 rank); grey: slope 1",
                n_fixed.log10()
            );
            panel(
                &areas[1],
                png,
                &t2,
                "ensemble size N",
                &by_members,
                1.0,
                false,
            )?;
        }
        let mut x = 20;
        let mut y = 12;
        for (label, col, dashed, _) in by_n.iter().chain(&by_members) {
            let w = 40 + 8 * label.chars().count() as i32;
            if x + w > 600 * panels as i32 {
                x = 20;
                y += 26;
            }
            strip
                .draw(&PathElement::new(
                    vec![(x, y + 8), (x + 22, y + 8)],
                    col.stroke_width(if *dashed { 1 } else { 3 }),
                ))
                .map_err(|e| perr(&e))?;
            strip
                .draw(&Text::new(label.clone(), (x + 28, y), ("sans-serif", 15)))
                .map_err(|e| perr(&e))?;
            x += w;
        }
        root.present().map_err(|e| perr(&e))?;
    }
    pending.commit()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slopes_of_power_laws() {
        let pts: Vec<(f64, f64)> = [1e4, 1e5, 1e6].iter().map(|&n| (n, 3e-6 * n)).collect();
        assert!((log_slope(&pts) - 1.0).abs() < 1e-12);
        let pts: Vec<(f64, f64)> = [10.0, 20.0, 50.0]
            .iter()
            .map(|&n| (n, 0.1 * n * n))
            .collect();
        assert!((log_slope(&pts) - 2.0).abs() < 1e-12);
    }

    #[test]
    fn csv_is_read_and_checked_and_plotted() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("c.csv");
        let mut s = String::from(HEADER);
        for (m, a) in [("letkf", 1e-5), ("ensf", 5e-5)] {
            for r in [1, 2] {
                for n in [1e4, 1e5, 1e6] {
                    s += &format!("\n{m},{r},{n},20,{}", a * n / r as f64);
                }
            }
            for k in [10.0, 50.0, 100.0] {
                s += &format!("\n{m},1,100000,{k},{}", a * 1e5 * k / 20.0);
            }
        }
        std::fs::write(&p, &s).unwrap();
        assert!(is_cost_csv(&p));
        let pts = read_cost_csv(&p).unwrap();
        assert_eq!(pts.len(), 18);
        let (by_n, by_m, nm, nf) = series(&pts);
        assert_eq!((by_n.len(), by_m.len(), nm, nf), (4, 2, 20.0, 1e5));
        assert!(by_n[0].0.contains("n^1.00"), "{}", by_n[0].0);
        // The N series includes the N = 20 point of the n series: 4 points.
        assert_eq!(by_m[0].3.len(), 4);
        let png = dir.path().join("c.png");
        plot_cost(&png, &pts).unwrap();
        assert!(std::fs::metadata(&png).unwrap().len() > 1000);
        std::fs::write(&p, format!("{HEADER}\nletkf,1,x,20,1")).unwrap();
        assert!(read_cost_csv(&p)
            .unwrap_err()
            .to_string()
            .contains("line 2"));
    }
}
