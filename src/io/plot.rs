//! `genda plot`: a PNG of a run (RMSE and spread over time; truth vs analysis for a few
//! variables), so a run can be looked at without writing a script.
use super::{read_run, PendingFile};
use crate::error::{GendaError, Result};
use plotters::prelude::*;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;

const FONT_PATHS: &[&str] = &[
    "/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf",
    "/usr/share/fonts/TTF/DejaVuSans.ttf",
    "/usr/share/fonts/dejavu/DejaVuSans.ttf",
    "/usr/share/fonts/truetype/liberation/LiberationSans-Regular.ttf",
];

/// plotters draws text with ab_glyph from a font we register once (no system font library).
pub(crate) fn ensure_font() -> Result<()> {
    static FONT: OnceLock<std::result::Result<(), String>> = OnceLock::new();
    FONT.get_or_init(|| {
        let mut candidates: Vec<PathBuf> = std::env::var_os("GENDA_FONT").map(PathBuf::from).into_iter().collect();
        candidates.extend(FONT_PATHS.iter().map(PathBuf::from));
        for p in candidates {
            if let Ok(bytes) = std::fs::read(&p) {
                let bytes: &'static [u8] = Box::leak(bytes.into_boxed_slice());
                if plotters::style::register_font("sans-serif", FontStyle::Normal, bytes).is_ok() {
                    return Ok(());
                }
            }
        }
        Err("no TrueType font found for plot labels: install fonts-dejavu-core (apt) or set GENDA_FONT=/path/to/font.ttf".to_string())
    })
    .clone()
    .map_err(|m| GendaError::Invalid { key: "font".into(), msg: m })
}

pub(crate) fn finite_max(v: impl Iterator<Item = f64>) -> f64 {
    v.filter(|x| x.is_finite()).fold(f64::MIN, f64::max)
}

pub(crate) fn finite_min(v: impl Iterator<Item = f64>) -> f64 {
    v.filter(|x| x.is_finite()).fold(f64::MAX, f64::min)
}

/// Plot `run_file` to `png` (default: the run file with `.png`). Returns the PNG path.
pub fn plot_run(run_file: &Path, png: Option<&Path>, variables: usize) -> Result<PathBuf> {
    let data = read_run(run_file)?;
    ensure_font()?;
    let out = png
        .map(Path::to_path_buf)
        .unwrap_or_else(|| run_file.with_extension("png"));
    let pending = PendingFile::new(&out)?;
    let perr = |e: &dyn std::fmt::Display| GendaError::file(&out, format!("plotting: {e}"));
    let nt = data.time.len();
    if nt == 0 {
        return Err(GendaError::file(run_file, "run file has no cycles"));
    }
    let nvar = variables.min(data.state_dim).max(1);
    {
        let root = BitMapBackend::new(pending.tmp_path(), (1200, 300 * (1 + nvar) as u32))
            .into_drawing_area();
        root.fill(&WHITE).map_err(|e| perr(&e))?;
        let areas = root.split_evenly((1 + nvar, 1));
        let (t0, t1) = (data.time[0], data.time[nt - 1].max(data.time[0] + 1e-9));

        // Panel 1: RMSE and spread.
        let series: [(&str, &Vec<f64>, RGBColor); 4] = [
            ("analysis RMSE", &data.rmse_analysis, RGBColor(200, 30, 30)),
            (
                "analysis spread",
                &data.spread_analysis,
                RGBColor(240, 150, 150),
            ),
            ("forecast RMSE", &data.rmse_forecast, RGBColor(30, 60, 200)),
            (
                "forecast spread",
                &data.spread_forecast,
                RGBColor(140, 170, 240),
            ),
        ];
        let ymax = finite_max(series.iter().flat_map(|s| s.1.iter().copied())).max(1e-12) * 1.05;
        let caption = format!(
            "{} ({}) — time-mean analysis RMSE {}",
            data.experiment,
            data.method,
            data.rmse_analysis_time_mean
                .map(|v| format!("{v:.4}"))
                .unwrap_or_else(|| "n/a".into())
        );
        let mut chart = ChartBuilder::on(&areas[0])
            .caption(caption, ("sans-serif", 22))
            .margin(12)
            .x_label_area_size(35)
            .y_label_area_size(60)
            .build_cartesian_2d(t0..t1, 0.0..ymax)
            .map_err(|e| perr(&e))?;
        chart
            .configure_mesh()
            .x_desc("time")
            .y_desc("RMSE / spread")
            .draw()
            .map_err(|e| perr(&e))?;
        for (label, ys, color) in series {
            chart
                .draw_series(LineSeries::new(
                    data.time.iter().copied().zip(ys.iter().copied()),
                    color.stroke_width(1),
                ))
                .map_err(|e| perr(&e))?
                .label(label)
                .legend(move |(x, y)| {
                    PathElement::new(vec![(x, y), (x + 20, y)], color.stroke_width(2))
                });
        }
        chart
            .configure_series_labels()
            .position(SeriesLabelPosition::UpperRight)
            .background_style(WHITE.mix(0.85))
            .border_style(BLACK)
            .draw()
            .map_err(|e| perr(&e))?;

        // Panels 2..: truth vs analysis mean for the first variables, last ≤ 300 cycles.
        let k0 = nt.saturating_sub(300);
        let n = data.state_dim;
        for (j, area) in areas.iter().skip(1).enumerate() {
            let truth: Vec<(f64, f64)> = (k0..nt)
                .map(|k| (data.time[k], data.truth[k * n + j]))
                .collect();
            let ana: Vec<(f64, f64)> = (k0..nt)
                .map(|k| (data.time[k], data.analysis_mean[k * n + j]))
                .collect();
            let lo = finite_min(truth.iter().chain(&ana).map(|p| p.1));
            let hi = finite_max(truth.iter().chain(&ana).map(|p| p.1));
            let pad = 0.05 * (hi - lo).max(1e-9);
            let mut c = ChartBuilder::on(area)
                .margin(12)
                .x_label_area_size(35)
                .y_label_area_size(60)
                .build_cartesian_2d(data.time[k0]..t1, (lo - pad)..(hi + pad))
                .map_err(|e| perr(&e))?;
            c.configure_mesh()
                .x_desc("time")
                .y_desc(format!("x[{j}]"))
                .draw()
                .map_err(|e| perr(&e))?;
            c.draw_series(LineSeries::new(truth, BLACK.stroke_width(2)))
                .map_err(|e| perr(&e))?
                .label("truth")
                .legend(|(x, y)| {
                    PathElement::new(vec![(x, y), (x + 20, y)], BLACK.stroke_width(2))
                });
            c.draw_series(LineSeries::new(ana, RGBColor(200, 30, 30).stroke_width(1)))
                .map_err(|e| perr(&e))?
                .label("analysis mean")
                .legend(|(x, y)| {
                    PathElement::new(
                        vec![(x, y), (x + 20, y)],
                        RGBColor(200, 30, 30).stroke_width(2),
                    )
                });
            c.configure_series_labels()
                .position(SeriesLabelPosition::UpperRight)
                .background_style(WHITE.mix(0.85))
                .border_style(BLACK)
                .draw()
                .map_err(|e| perr(&e))?;
        }
        root.present().map_err(|e| perr(&e))?;
    }
    pending.commit()
}

/// Colour of v in [−a, a] on a blue–white–red scale.
fn diverging(v: f64, a: f64) -> RGBColor {
    let t = (v / a.max(1e-300)).clamp(-1.0, 1.0);
    let f = |x: f64| (255.0 * x).round() as u8;
    if t >= 0.0 {
        RGBColor(255, f(1.0 - t), f(1.0 - t))
    } else {
        RGBColor(f(1.0 + t), f(1.0 + t), 255)
    }
}

/// Isotropic spectrum ½Σ|f̂|² per integer wavenumber shell of a square periodic field.
fn shell_spectrum(field: &[f64], side: usize) -> Vec<f64> {
    use rustfft::num_complex::Complex64;
    let mut planner = rustfft::FftPlanner::<f64>::new();
    let fft = planner.plan_fft_forward(side);
    let mut a: Vec<Complex64> = field.iter().map(|&v| Complex64::new(v, 0.0)).collect();
    for row in a.chunks_mut(side) {
        fft.process(row);
    }
    let mut col = vec![Complex64::new(0.0, 0.0); side];
    for x in 0..side {
        for y in 0..side {
            col[y] = a[y * side + x];
        }
        fft.process(&mut col);
        for y in 0..side {
            a[y * side + x] = col[y];
        }
    }
    let k = |j: usize| {
        if j <= side / 2 {
            j as f64
        } else {
            j as f64 - side as f64
        }
    };
    let norm = 1.0 / ((side * side) as f64).powi(2);
    let mut e = vec![0.0; side / 2 + 1];
    for y in 0..side {
        for x in 0..side {
            let kk = (k(x).powi(2) + k(y).powi(2)).sqrt().round() as usize;
            if kk <= side / 2 {
                e[kk] += 0.5 * a[y * side + x].norm_sqr() * norm;
            }
        }
    }
    e
}

/// For 2-D models (square grid state): truth, analysis mean and error at the last cycle as
/// heat maps, and the spectra of truth, analysis mean and error (log–log). Returns `None` when
/// the run is not on a square grid.
pub fn plot_fields(run_file: &Path, png: Option<&Path>) -> Result<Option<PathBuf>> {
    let data = read_run(run_file)?;
    let side = (data.state_dim as f64).sqrt().round() as usize;
    if side * side != data.state_dim || side < 8 || data.time.is_empty() {
        return Ok(None);
    }
    ensure_font()?;
    let out = png
        .map(Path::to_path_buf)
        .unwrap_or_else(|| run_file.with_extension("fields.png"));
    let pending = PendingFile::new(&out)?;
    let perr = |e: &dyn std::fmt::Display| GendaError::file(&out, format!("plotting: {e}"));
    let n = data.state_dim;
    let last = data.time.len() - 1;
    let truth = &data.truth[last * n..(last + 1) * n];
    let amean = &data.analysis_mean[last * n..(last + 1) * n];
    let err: Vec<f64> = amean.iter().zip(truth).map(|(a, t)| a - t).collect();
    let scale = finite_max(truth.iter().map(|v| v.abs())).max(1e-12);
    let err_scale = finite_max(err.iter().map(|v| v.abs())).max(1e-12);
    {
        let root = BitMapBackend::new(pending.tmp_path(), (1600, 420)).into_drawing_area();
        root.fill(&WHITE).map_err(|e| perr(&e))?;
        let panels = root.split_evenly((1, 4));
        let fields: [(&str, &[f64], f64); 3] = [
            ("truth", truth, scale),
            ("analysis mean", amean, scale),
            ("analysis − truth", &err, err_scale),
        ];
        for (area, (title, f, a)) in panels.iter().zip(fields) {
            let mut chart = ChartBuilder::on(area)
                .caption(
                    format!("{title} (t = {:.2}, ±{a:.2})", data.time[last]),
                    ("sans-serif", 16),
                )
                .margin(8)
                .build_cartesian_2d(0..side, 0..side)
                .map_err(|e| perr(&e))?;
            chart
                .draw_series((0..n).map(|i| {
                    let (y, x) = (i / side, i % side);
                    Rectangle::new([(x, y), (x + 1, y + 1)], diverging(f[i], a).filled())
                }))
                .map_err(|e| perr(&e))?;
        }
        let spectra = [
            ("truth", shell_spectrum(truth, side), RGBColor(0, 0, 0)),
            (
                "analysis mean",
                shell_spectrum(amean, side),
                RGBColor(200, 30, 30),
            ),
            ("error", shell_spectrum(&err, side), RGBColor(30, 60, 200)),
        ];
        let pos = |v: f64| v.max(1e-30);
        let ymax = finite_max(spectra.iter().flat_map(|s| s.1.iter().copied())).max(1e-20);
        let ymin = (ymax * 1e-12).max(finite_min(
            spectra
                .iter()
                .flat_map(|s| s.1[1..].iter().copied().filter(|v| *v > 0.0)),
        ));
        let mut chart = ChartBuilder::on(&panels[3])
            .caption("spectra ½Σ|f̂|² per shell", ("sans-serif", 16))
            .margin(8)
            .x_label_area_size(30)
            .y_label_area_size(50)
            .build_cartesian_2d(
                (1f64..(side / 2) as f64).log_scale(),
                (ymin..ymax).log_scale(),
            )
            .map_err(|e| perr(&e))?;
        chart
            .configure_mesh()
            .x_desc("wavenumber k")
            .x_labels(6)
            .y_labels(8)
            .light_line_style(WHITE)
            .x_label_formatter(&|v| format!("{v:.0}"))
            .y_label_formatter(&|v| format!("{v:.0e}"))
            .draw()
            .map_err(|e| perr(&e))?;
        for (name, s, c) in spectra {
            chart
                .draw_series(LineSeries::new(
                    (1..s.len()).map(|k| (k as f64, pos(s[k]))),
                    c.stroke_width(2),
                ))
                .map_err(|e| perr(&e))?
                .label(name)
                .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 15, y)], c));
        }
        chart
            .configure_series_labels()
            .background_style(WHITE.mix(0.8))
            .border_style(BLACK)
            .draw()
            .map_err(|e| perr(&e))?;
        root.present().map_err(|e| perr(&e))?;
    }
    pending.commit()?;
    Ok(Some(out))
}
