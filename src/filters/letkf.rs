//! Local ETKF (Hunt, Kostelich & Szunyogh 2007): the ETKF core applied at every grid point with
//! the observations near it, R-localised by the Gaspari–Cohn (1999) function — DAPPER's "LETKF is
//! the ETKF core applied per grid point". Grid points are independent, so they run on rayon
//! threads with identical results for any thread count. Inflation scales the analysis anomalies
//! afterwards, as in genda's ETKF, or the forecast anomalies first (`inflate = "forecast"`, the
//! MASF code's LETKF).
//!
//! On a decomposed state each rank analyses its own columns; the driver supplies the ensemble
//! (and so the observations) of `halo()` columns on each side, so every point sees exactly the
//! observations it would see on one rank, visited in the same order: bit-identical results.
use super::core::{ensemble_mean, inflate, InflateAt};
use super::eigen::{finish_batch_by, SymAction};
use super::{AnalysisInput, Filter, LocalDomain, Needs};
use crate::error::{GendaError, Result};
use ndarray::{Array1, Array2, Axis};
use rayon::prelude::*;
use serde::{Deserialize, Serialize};

/// How distances between state indices are measured.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Geometry {
    /// Periodic 1-D ring of the state dimension (Lorenz-96).
    #[default]
    Ring,
    /// Non-periodic 1-D line.
    Line,
    /// Doubly periodic square grid (2-D models, row-major (y, x) state): Euclidean distance
    /// with wrap-around in both directions.
    Torus,
    /// Layers over one ring of `ring_size` points (two-layer models such as CG Lorenz-96): the
    /// first `ring_size` variables are the ring, the rest come in equal blocks per ring point
    /// (index K + k·J + j sits at point k); distance is the ring distance of the points.
    LayeredRing,
}

impl Geometry {
    pub fn distance(&self, i: usize, j: usize, n: usize) -> f64 {
        let d = i.abs_diff(j);
        match self {
            Geometry::Ring => d.min(n - d) as f64,
            Geometry::Line => d as f64,
            Geometry::LayeredRing => d.min(n - d) as f64,
            Geometry::Torus => {
                let s = (n as f64).sqrt().round() as usize;
                let ring = |a: usize, b: usize| {
                    let d = a.abs_diff(b);
                    d.min(s - d) as f64
                };
                let (dy, dx) = (ring(i / s, j / s), ring(i % s, j % s));
                (dx * dx + dy * dy).sqrt()
            }
        }
    }
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct LetkfConfig {
    pub members: usize,
    #[serde(default = "unit")]
    pub inflation: f64,
    /// Localisation radius L in grid units, with DAPPER's convention: Gaspari–Cohn half-width
    /// c = √(10/3)·L ≈ 1.826 L (a Gaussian of std L has the same curvature at 0), so the weight is
    /// ≈ 0.63 at distance L and 0 beyond 2c ≈ 3.65 L.
    pub localization_radius: f64,
    /// Torus only: a different radius in y (`localization_radius` is then the x radius); the
    /// taper is Gaspari–Cohn of √((dx/c_x)² + (dy/c_y)²).
    #[serde(default)]
    pub localization_radius_y: Option<f64>,
    #[serde(default)]
    pub geometry: Geometry,
    /// `geometry = "layered_ring"`: the number of ring points K.
    #[serde(default)]
    pub ring_size: Option<usize>,
    /// Torus: the state stacks this many square grids field-major (the velocity state's u and
    /// v: 2); a point sees the observations of every field within the taper's support, by its
    /// distance on the shared grid (the MASF code's LETKF). Must equal the model's field count.
    #[serde(default = "one_field", skip_serializing_if = "is_one_field")]
    pub fields: usize,
    /// How `localization_radius` sets the Gaspari–Cohn half-width c: `dapper` (default)
    /// c = √(10/3)·L; `half_width` c = L (the MASF code's LETKF: weight GC(d, c = radius), zero
    /// beyond 2·radius).
    #[serde(default, skip_serializing_if = "LocalizationScale::is_default")]
    pub localization_scale: LocalizationScale,
    /// Where the inflation applies: the analysis anomalies (default) or the forecast's.
    #[serde(default, skip_serializing_if = "InflateAt::is_default")]
    pub inflate: InflateAt,
    /// Added to each observation-error variance and to the diagonal of the transform matrix
    /// (N−1)I + SSᵀ (the MASF code's LETKF `eps` = 1e-6 in both places). Default 0.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub jitter: f64,
}

fn is_zero(v: &f64) -> bool {
    *v == 0.0
}

fn one_field() -> usize {
    1
}

fn is_one_field(v: &usize) -> bool {
    *v == 1
}

/// How the localisation radius maps to the Gaspari–Cohn half-width.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum LocalizationScale {
    /// c = √(10/3)·L (DAPPER's `dist2coeff`).
    #[default]
    Dapper,
    /// c = L.
    HalfWidth,
}

impl LocalizationScale {
    fn is_default(&self) -> bool {
        *self == LocalizationScale::Dapper
    }
}

fn unit() -> f64 {
    1.0
}

/// c/L = √(10/3), DAPPER's `dist2coeff` scaling of the Gaspari–Cohn half-width (Sakov's
/// original 1.7386 would put the weight exactly at exp(−½) at distance L).
pub const GC_HALF_WIDTH_PER_RADIUS: f64 = 1.825_741_858_350_553_7;

/// Gaspari & Cohn (1999) eq. (4.10), compactly supported 5th-order piecewise rational function of
/// r = d/c: 1 at r = 0, 0 for r ≥ 2.
pub fn gaspari_cohn(r: f64) -> f64 {
    let r = r.abs();
    if r >= 2.0 {
        0.0
    } else if r <= 1.0 {
        ((((-0.25 * r + 0.5) * r + 0.625) * r - 5.0 / 3.0) * r * r) + 1.0
    } else {
        (((((r / 12.0 - 0.5) * r + 0.625) * r + 5.0 / 3.0) * r - 5.0) * r) + 4.0 - 2.0 / (3.0 * r)
    }
}

pub struct Letkf {
    cfg: LetkfConfig,
}

impl Letkf {
    pub fn new(cfg: LetkfConfig) -> Self {
        Letkf { cfg }
    }
}

impl Letkf {
    /// The taper's support 2c in grid points.
    fn reach(&self, n_global: usize) -> usize {
        (2.0 * self.half_width()).floor().min(n_global as f64) as usize
    }

    /// c / L of the configured scale.
    fn c_per_radius(&self) -> f64 {
        match self.cfg.localization_scale {
            LocalizationScale::Dapper => GC_HALF_WIDTH_PER_RADIUS,
            LocalizationScale::HalfWidth => 1.0,
        }
    }

    /// Gaspari–Cohn half-width c in grid units.
    fn half_width(&self) -> f64 {
        self.c_per_radius()
            * self
                .cfg
                .localization_radius
                .max(self.cfg.localization_radius_y.unwrap_or(0.0))
    }

    /// Taper weight on the torus between grid points i and k (side `side`), per-direction radii.
    fn torus_weight(&self, i: usize, k: usize, side: usize) -> f64 {
        let ring = |a: usize, b: usize| {
            let d = a.abs_diff(b);
            d.min(side - d) as f64
        };
        let cx = self.c_per_radius() * self.cfg.localization_radius;
        let cy = self.c_per_radius()
            * self
                .cfg
                .localization_radius_y
                .unwrap_or(self.cfg.localization_radius);
        let (dy, dx) = (ring(i / side, k / side) / cy, ring(i % side, k % side) / cx);
        gaspari_cohn((dx * dx + dy * dy).sqrt())
    }
}

/// Per-thread scratch of the point analyses: nothing is allocated per grid point.
#[derive(Default)]
struct PointWork {
    local: Vec<(usize, f64)>,
    /// The point's eigenproblem, kept as its action on vectors (no eigenvectors formed).
    eig: SymAction,
    /// The point's N×N or p_l×p_l matrix.
    m: Vec<f64>,
    b: Vec<f64>,
    /// Rows of Sᵀ (p_l × N) and d̃ (observation-space form).
    st: Vec<f64>,
    dt: Vec<f64>,
    fr: Vec<f64>,
    /// T a_i.
    ta: Vec<f64>,
    /// Vᵀ a_i (member-space form).
    u: Vec<f64>,
    /// The point has an eigenproblem to solve (it has local observations).
    pending: bool,
}

/// Grid points analysed side by side: their QL iterations run interleaved
/// (`eigen::finish_batch_by`), each point's arithmetic as if alone.
const POINT_BATCH: usize = 8;

/// Four partial sums in a fixed order (no dependence on the caller), so the point kernel's
/// dot products are not one serial chain of additions.
use super::eigen::dot;

/// One grid point in member space (N×N eigenproblem, for p_l ≥ N local observations).
/// C = Y_l R_l⁻¹ Y_lᵀ + (N−1) I = V D Vᵀ, b = Y_l R_l⁻¹ dy_l; with u = Vᵀ a_i:
/// shift = wᵀ a_i (w = V D⁻¹ Vᵀ b) and T a_i = V diag(√((N−1)/d)) u. T a_i into `wk.ta`.
/// Vᵀ and V act through the eigenproblem's reflectors and rotations (`SymAction`).
/// `eps` joins the diagonal of C (the transform stays √(N−1) C^{-1/2}).
/// This half forms C and b and prepares the eigenproblem; `member_space_finish` ends it.
#[inline(always)]
fn member_space_prepare(
    wk: &mut PointWork,
    yt: &Array2<f64>,
    dy: &Array1<f64>,
    n_mem: usize,
    n1: f64,
    eps: f64,
) -> Result<()> {
    let PointWork {
        local,
        eig,
        m: cm,
        b,
        ..
    } = wk;
    cm.clear();
    cm.resize(n_mem * n_mem, 0.0);
    b.clear();
    b.resize(n_mem, 0.0);
    for &(j, wr) in local.iter() {
        let yj = yt.row(j);
        let yj = yj.as_slice().expect("standard layout");
        for m in 0..n_mem {
            let ym = yj[m] * wr;
            b[m] += ym * dy[j];
            for (c, yk) in cm[m * n_mem..m * n_mem + m + 1].iter_mut().zip(yj) {
                *c += ym * yk;
            }
        }
    }
    for m in 0..n_mem {
        cm[m * n_mem + m] += n1 + eps;
        for k in 0..m {
            cm[k * n_mem + m] = cm[m * n_mem + k];
        }
    }
    eig.prepare(cm, n_mem)
}

/// The member-space point's shift and T a_i, once its eigenproblem is solved.
#[inline(always)]
fn member_space_finish(wk: &mut PointWork, ai: &[f64], n1: f64) -> Option<f64> {
    let PointWork { eig, b, ta, u, .. } = wk;
    if eig.values.iter().any(|v| !(v.is_finite() && *v > 0.0)) {
        return None;
    }
    u.clear();
    u.extend_from_slice(ai);
    eig.to_eigen2(u, b);
    let mut shift = 0.0;
    ta.clear();
    for ((&uk, &bk), &d) in u.iter().zip(b.iter()).zip(&eig.values) {
        shift += bk / d * uk;
        ta.push((n1 / d).sqrt() * uk);
    }
    eig.from_eigen(ta);
    Some(shift)
}

/// One grid point in observation space (p_l×p_l eigenproblem, for p_l < N), the same analysis:
/// with S = Y_l diag(√(ρ/r)) (N×p_l), d̃ = √(ρ/r)∘dy and SᵀS = V Λ Vᵀ, C = SSᵀ + aI (a = N−1)
/// gives, through C⁻¹S = S V diag(1/(a+λ)) Vᵀ:
///   shift = d̃ᵀ V diag(1/(a+λ)) Vᵀ Sᵀ a_i,
///   T a_i = √a C^{-1/2} a_i = a_i + S V diag(φ(λ)) Vᵀ Sᵀ a_i,  φ(λ) = (√(a/(a+λ)) − 1)/λ
///         = −1 / (√(a+λ) (√a + √(a+λ))), finite as λ → 0.
/// The eigenproblem shrinks from N³ to p_l³ — the LETKF's cost per point at large N.
/// With a jitter ε, C = SSᵀ + (N−1+ε)I: `a` = N−1+ε and T a_i = √((N−1)/a)·(the form above).
/// This half forms Sᵀ, d̃ and SᵀS and prepares the eigenproblem; `obs_space_finish` ends it.
#[inline(always)]
fn obs_space_prepare(
    wk: &mut PointWork,
    yt: &Array2<f64>,
    dy: &Array1<f64>,
    n_mem: usize,
) -> Result<()> {
    let PointWork {
        local,
        eig,
        m: g,
        st,
        dt,
        ..
    } = wk;
    let p = local.len();
    // Rows of Sᵀ (p × N) and d̃.
    st.clear();
    st.resize(p * n_mem, 0.0);
    dt.clear();
    dt.resize(p, 0.0);
    for (k, &(j, wr)) in local.iter().enumerate() {
        let sw = wr.sqrt();
        let yj = yt.row(j);
        for (o, v) in st[k * n_mem..(k + 1) * n_mem].iter_mut().zip(yj.iter()) {
            *o = sw * v;
        }
        dt[k] = sw * dy[j];
    }
    let row = |k: usize| &st[k * n_mem..(k + 1) * n_mem];
    g.clear();
    g.resize(p * p, 0.0);
    for k in 0..p {
        for l in 0..=k {
            let v = dot(row(k), row(l));
            g[k * p + l] = v;
            g[l * p + k] = v;
        }
    }
    eig.prepare(g, p)
}

/// The observation-space point's shift and T a_i (into `wk.ta`), once its eigenproblem is
/// solved.
#[inline(always)]
fn obs_space_finish(wk: &mut PointWork, ai: &[f64], a: f64, t_scale: f64) -> Option<f64> {
    let PointWork {
        local,
        eig,
        b: q,
        st,
        dt,
        fr,
        ta,
        ..
    } = wk;
    let (p, n_mem) = (local.len(), ai.len());
    let row = |k: usize| &st[k * n_mem..(k + 1) * n_mem];
    if eig.values.iter().any(|l| !(l.is_finite() && a + l > 0.0)) {
        return None;
    }
    // q = Sᵀ a_i; with r = Vᵀ q and e = Vᵀ d̃, shift = Σ e r / (a + λ), g = V (φ(λ) r).
    q.clear();
    q.extend((0..p).map(|k| dot(row(k), ai)));
    eig.to_eigen2(q, dt);
    let mut shift = 0.0;
    fr.clear();
    for ((&r, &e), &l) in q.iter().zip(dt.iter()).zip(&eig.values) {
        let l = l.max(0.0);
        shift += e * r / (a + l);
        let sl = (a + l).sqrt();
        fr.push(-r / (sl * (a.sqrt() + sl)));
    }
    eig.from_eigen(fr);
    ta.clear();
    ta.extend_from_slice(ai);
    for k in 0..p {
        for (t, s) in ta.iter_mut().zip(row(k)) {
            *t += s * fr[k];
        }
    }
    if t_scale != 1.0 {
        for t in ta.iter_mut() {
            *t *= t_scale;
        }
    }
    Some(shift)
}

impl Letkf {
    /// The taper's support: 2c grid points each side on a ring or line; on the torus (row-major
    /// grid split in row slabs) 2c whole rows, as state indices.
    fn halo(&self, n_global: usize) -> usize {
        let reach = self.reach(n_global);
        if self.cfg.geometry == Geometry::Torus {
            let side = self.side(n_global);
            reach.min(side / 2) * side
        } else {
            reach
        }
    }
}

impl Letkf {
    /// Side of each of the torus's stacked square grids.
    fn side(&self, n_global: usize) -> usize {
        ((n_global / self.cfg.fields.max(1)) as f64).sqrt().round() as usize
    }
}

impl Filter for Letkf {
    fn name(&self) -> &'static str {
        "letkf"
    }

    fn needs(&self, n_global: usize) -> Needs {
        Needs {
            halo: self.halo(n_global),
            ..Needs::default()
        }
    }

    fn analyse(&mut self, ens: &mut Array2<f64>, input: &AnalysisInput) -> Result<()> {
        input.check(ens, "letkf")?;
        if self.cfg.inflate == InflateAt::Forecast {
            inflate(ens, self.cfg.inflation);
        }
        let n_mem = ens.nrows();
        let dom = &input.domain;
        let mean = ensemble_mean(ens);
        // Anomalies by column (n_loc, N), contiguous per grid point.
        let mut at = Array2::<f64>::zeros((ens.ncols(), n_mem));
        for (m, row) in ens.rows().into_iter().enumerate() {
            for ((t, x), xm) in at.column_mut(m).iter_mut().zip(row).zip(&mean) {
                *t = x - xm;
            }
        }
        let (yt, dy) = observed_anomalies(ens, input);
        let search = LocalSearch::new(self, input, ens.ncols())?;
        let point = PointAnalysis {
            search,
            at,
            mean,
            yt,
            dy,
            n1: (n_mem - 1) as f64,
        };
        // Analysis of each owned grid point: its row of `cols` (own, N), one workspace per
        // rayon task.
        let own = dom.own.clone();
        let mut cols = vec![0.0; own.len() * n_mem];
        cols.par_chunks_mut(POINT_BATCH * n_mem)
            .enumerate()
            .try_for_each_init(Vec::<PointWork>::new, |wk, (k, out)| {
                point.columns_dispatch(own.start + k * POINT_BATCH, wk, out)
            })?;
        for (k, col) in own.clone().zip(cols.chunks(n_mem)) {
            for (m, v) in col.iter().enumerate() {
                ens[[m, k]] = *v;
            }
        }
        if self.cfg.inflate == InflateAt::Analysis {
            inflate(ens, self.cfg.inflation);
        }
        Ok(())
    }
}

/// The observed ensemble's anomalies Yᵀ (p, N) — one contiguous row of member anomalies per
/// observation — and the innovations dy = y − mean h(E), computed once for every point.
fn observed_anomalies(ens: &Array2<f64>, input: &AnalysisInput) -> (Array2<f64>, Array1<f64>) {
    let h = input.obs_operator;
    // Observed ensemble h(E) and its anomalies Y (N, p).
    let mut eo = Array2::<f64>::zeros((ens.nrows(), h.obs_dim()));
    for (x, mut y) in ens.rows().into_iter().zip(eo.rows_mut()) {
        h.apply(
            x.as_slice().expect("contiguous"),
            y.as_slice_mut().expect("contiguous"),
        );
    }
    let ymean = eo.mean_axis(Axis(0)).expect("members > 0");
    let yt = (&eo - &ymean.view().insert_axis(Axis(0)))
        .t()
        .as_standard_layout()
        .into_owned();
    let dy: Array1<f64> = input
        .obs
        .iter()
        .zip(ymean.iter())
        .map(|(o, m)| o - m)
        .collect();
    (yt, dy)
}

/// The search for each grid point's local observations on this domain: the observations by the
/// local column they look at, the taper table and the geometry.
struct LocalSearch<'a> {
    letkf: &'a Letkf,
    dom: &'a LocalDomain,
    obs_error_var: &'a [f64],
    /// Observations by the local column they look at.
    obs_at: Vec<Vec<usize>>,
    /// The taper at integer grid distances 0..=reach.
    taper: Vec<f64>,
    reach: usize,
    geom: Geometry,
    n_glob: usize,
    n_loc: usize,
    /// Side of the torus's square grids, and how many are stacked.
    side: usize,
    fields: usize,
    /// Ring points K of the layered ring.
    ring: usize,
}

impl<'a> LocalSearch<'a> {
    /// The search on `input`'s domain (`n_loc` local columns), after checking that the
    /// geometry and the halo suit the layout.
    fn new(letkf: &'a Letkf, input: &'a AnalysisInput, n_loc: usize) -> Result<Self> {
        let dom = &input.domain;
        let n_glob = dom.n_global;
        let mut obs_at: Vec<Vec<usize>> = vec![Vec::new(); n_loc];
        for (j, &l) in input.obs_operator.locations().iter().enumerate() {
            obs_at[l].push(j);
        }
        let c = letkf.half_width();
        let reach = letkf.reach(n_glob);
        let halo = letkf.halo(n_glob);
        let geom = letkf.cfg.geometry;
        let taper: Vec<f64> = (0..=reach).map(|d| gaspari_cohn(d as f64 / c)).collect();
        let (side, fields) = (letkf.side(n_glob), letkf.cfg.fields.max(1));
        if geom == Geometry::Torus
            && (fields * side * side != n_glob
                || dom.ext_start % side != 0
                || (fields > 1 && !dom.whole))
        {
            return Err(GendaError::Parallel(format!(
                "LETKF: the torus geometry needs {fields} square grid(s) of the state of {n_glob}, split in whole rows (slab from index {}), stacked grids on one domain",
                dom.ext_start
            )));
        }
        let ring = letkf.cfg.ring_size.unwrap_or(0);
        if geom == Geometry::LayeredRing
            && (!dom.whole || ring == 0 || n_glob < ring || (n_glob - ring) % ring != 0)
        {
            return Err(GendaError::Parallel(format!(
                "LETKF: the layered ring needs the whole state on one domain and ring_size K with K + K·J = {n_glob} (ring_size = {ring})"
            )));
        }
        if !dom.whole && (dom.own.start < halo || n_loc - dom.own.end < halo) {
            return Err(GendaError::Parallel(format!(
                "LETKF: a halo of {} state indices cannot serve the localisation reach of {halo}",
                dom.own.start.min(n_loc - dom.own.end)
            )));
        }
        Ok(LocalSearch {
            letkf,
            dom,
            obs_error_var: input.obs_error_var,
            obs_at,
            taper,
            reach,
            geom,
            n_glob,
            n_loc,
            side,
            fields,
            ring,
        })
    }

    /// Local observations of local column `i` (global `gi`) and their localised inverse
    /// variances ρ_j / r_j: only the columns within the taper's support are visited,
    /// nearest-left first, in the same order on any domain layout.
    fn gather(&self, i: usize, gi: usize, local: &mut Vec<(usize, f64)>) {
        local.clear();
        if self.geom == Geometry::Torus {
            self.gather_torus(gi, local);
        }
        if self.geom == Geometry::LayeredRing {
            self.gather_layered_ring(gi, local);
        }
        self.gather_line(i, gi, local);
    }

    /// Push the observations of local column `k` with taper weight `w`.
    fn push_column(&self, k: usize, w: f64, local: &mut Vec<(usize, f64)>) {
        for &j in &self.obs_at[k] {
            local.push((j, w / (self.obs_error_var[j] + self.letkf.cfg.jitter)));
        }
    }

    /// Torus: the 2-D box of half-width `reach` around the point, visited in global grid
    /// order; rows map into the slab (owned rows plus `reach` halo rows). Stacked grids (one
    /// domain): the same box on every field, field by field.
    fn gather_torus(&self, gi: usize, local: &mut Vec<(usize, f64)>) {
        let (side, reach) = (self.side, self.reach);
        let plane = side * side;
        let gi = gi % plane;
        let (lo, hi) = (reach.min((side - 1) / 2), reach.min(side / 2));
        let (yi, xi) = (gi / side, gi % side);
        let row0 = self.dom.ext_start / side;
        for f in 0..self.fields {
            for yy in (yi + side - lo)..=(yi + side + hi) {
                let lrow = (yy % side + side - row0) % side;
                for xx in (xi + side - lo)..=(xi + side + hi) {
                    let k = f * plane + lrow * side + xx % side;
                    if self.obs_at[k].is_empty() {
                        continue;
                    }
                    let gk = (yy % side) * side + xx % side;
                    let w = self.letkf.torus_weight(gi, gk, side);
                    if w > 0.0 {
                        self.push_column(k, w, local);
                    }
                }
            }
        }
    }

    /// Layered ring: points within the support on the ring, and every layer's variables there.
    fn gather_layered_ring(&self, gi: usize, local: &mut Vec<(usize, f64)>) {
        let ring = self.ring;
        let per = (self.n_glob - ring) / ring;
        let p = if gi < ring { gi } else { (gi - ring) / per };
        let r = self.reach.min(ring / 2);
        let (lo, hi) = (r.min((ring - 1) / 2), r);
        for q in (p + ring - lo..=p + ring + hi).map(|q| q % ring) {
            let d = p.abs_diff(q).min(ring - p.abs_diff(q));
            let w = self.taper.get(d).copied().unwrap_or(0.0);
            if w <= 0.0 {
                continue;
            }
            for k in std::iter::once(q).chain(ring + q * per..ring + (q + 1) * per) {
                self.push_column(k, w, local);
            }
        }
    }

    /// Ring and line: the window of `reach` local columns on each side (none on the torus and
    /// the layered ring).
    fn gather_line(&self, i: usize, gi: usize, local: &mut Vec<(usize, f64)>) {
        let (geom, reach, n_loc, dom) = (self.geom, self.reach, self.n_loc, self.dom);
        let gi_is_torus = matches!(geom, Geometry::Torus | Geometry::LayeredRing);
        let (lo, hi) = if gi_is_torus {
            (0, 0)
        } else if dom.whole {
            match geom {
                // A ring shorter than the support: visit every index once.
                Geometry::Ring if 2 * reach + 1 >= n_loc => (0, n_loc),
                Geometry::Ring => (i + n_loc - reach, i + n_loc + reach + 1),
                Geometry::Line => (i.saturating_sub(reach), (i + reach + 1).min(n_loc)),
                Geometry::Torus | Geometry::LayeredRing => (0, 0),
            }
        } else {
            (i - reach, i + reach + 1)
        };
        for k in (lo..hi).map(|k| k % n_loc) {
            let d = geom.distance(gi, dom.global(k), self.n_glob);
            // Integer grid distances: the taper from a table.
            let w = self.taper.get(d as usize).copied().unwrap_or(0.0);
            if w > 0.0 {
                self.push_column(k, w, local);
            }
        }
    }
}

/// Everything the analysis of one grid point reads: the local search and the ensemble's
/// state and observed anomalies.
struct PointAnalysis<'a> {
    search: LocalSearch<'a>,
    /// State anomalies by column.   (n_loc, N)
    at: Array2<f64>,
    /// Forecast mean.   (n_loc)
    mean: Array1<f64>,
    /// Observed anomalies Yᵀ (p, N) and innovations (p).
    yt: Array2<f64>,
    dy: Array1<f64>,
    /// N − 1.
    n1: f64,
}

impl PointAnalysis<'_> {
    /// `columns`, compiled a second time for AVX2 and taken when the CPU has it: the same
    /// operations in the same order (Rust never fuses a·b + c), so the same bits, with the row
    /// loops (Sᵀ, SᵀS, the reflectors, T a_i) four doubles wide instead of two.
    fn columns_dispatch(
        &self,
        first: usize,
        lanes: &mut Vec<PointWork>,
        out: &mut [f64],
    ) -> Result<()> {
        #[cfg(target_arch = "x86_64")]
        if std::is_x86_feature_detected!("avx2") {
            // SAFETY: the CPU has AVX2 (checked just above).
            return unsafe { self.columns_avx2(first, lanes, out) };
        }
        self.columns(first, lanes, out)
    }

    #[cfg(target_arch = "x86_64")]
    #[target_feature(enable = "avx2")]
    fn columns_avx2(
        &self,
        first: usize,
        lanes: &mut Vec<PointWork>,
        out: &mut [f64],
    ) -> Result<()> {
        self.columns(first, lanes, out)
    }

    /// The analysis columns (one value per member) of the local grid points `first..` into
    /// `out` (one row of N per point), the points' eigenproblems solved side by side.
    #[inline(always)]
    fn columns(&self, first: usize, lanes: &mut Vec<PointWork>, out: &mut [f64]) -> Result<()> {
        let n_mem = self.at.ncols();
        let count = out.len() / n_mem;
        if lanes.len() < count {
            lanes.resize_with(count, PointWork::default);
        }
        let lanes = &mut lanes[..count];
        let (yt, dy, n1) = (&self.yt, &self.dy, self.n1);
        let eps = self.search.letkf.cfg.jitter;
        for (k, wk) in lanes.iter_mut().enumerate() {
            let i = first + k;
            self.search
                .gather(i, self.search.dom.global(i), &mut wk.local);
            wk.pending = !wk.local.is_empty();
            if !wk.pending {
                continue;
            }
            if wk.local.len() < n_mem {
                obs_space_prepare(wk, yt, dy, n_mem)?;
            } else {
                member_space_prepare(wk, yt, dy, n_mem, n1, eps)?;
            }
        }
        finish_batch_by(lanes, |wk| wk.pending.then_some(&mut wk.eig))?;
        for (k, (wk, out)) in lanes.iter_mut().zip(out.chunks_mut(n_mem)).enumerate() {
            let i = first + k;
            let ai = self.at.row(i);
            let ai = ai.as_slice().expect("standard layout");
            let xm = self.mean[i];
            if !wk.pending {
                for (o, v) in out.iter_mut().zip(ai) {
                    *o = xm + v;
                }
                continue;
            }
            let shift = if wk.local.len() < n_mem {
                let a = n1 + eps;
                obs_space_finish(wk, ai, a, (n1 / a).sqrt())
            } else {
                member_space_finish(wk, ai, n1)
            }
            .ok_or_else(|| {
                GendaError::LinAlg(format!(
                    "LETKF: local matrix at grid point {} is not positive definite",
                    self.search.dom.global(i)
                ))
            })?;
            for (o, t) in out.iter_mut().zip(&wk.ta) {
                *o = xm + shift + t;
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::filters::{Etkf, EtkfConfig};
    use crate::obs::PointObs;

    #[test]
    fn gaspari_cohn_shape() {
        assert_eq!(gaspari_cohn(0.0), 1.0);
        assert_eq!(gaspari_cohn(2.0), 0.0);
        assert!((gaspari_cohn(1.0) - 5.0 / 24.0).abs() < 1e-12);
        assert!((GC_HALF_WIDTH_PER_RADIUS - (10.0f64 / 3.0).sqrt()).abs() < 1e-15);
        assert!((gaspari_cohn(1.0 / 1.7386) - (-0.5f64).exp()).abs() < 1e-4);
        // Continuous at r = 1 and decreasing.
        assert!((gaspari_cohn(1.0 - 1e-9) - gaspari_cohn(1.0 + 1e-9)).abs() < 1e-7);
        let mut last = 1.0;
        for k in 1..200 {
            let g = gaspari_cohn(k as f64 * 0.01);
            assert!(g <= last && g >= 0.0);
            last = g;
        }
    }

    /// With a radius far larger than the domain every weight is 1 and LETKF is the global ETKF.
    #[test]
    fn huge_radius_equals_etkf() {
        let (n_mem, n) = (8, 12);
        let ens0 = Array2::from_shape_fn((n_mem, n), |(m, i)| {
            ((m * 7 + i * 3) as f64 * 0.37).sin() * 2.0 + i as f64 * 0.1
        });
        let h = PointObs::new(n, vec![0, 3, 5, 8, 11], false);
        let obs = [0.5, -0.3, 1.2, 0.1, -1.0];
        let r = [0.5, 1.0, 0.7, 0.4, 2.0];
        let input = AnalysisInput::whole(&obs, &h, &r, 1, 1);
        let mut a = ens0.clone();
        Letkf::new(LetkfConfig {
            members: n_mem,
            inflation: 1.1,
            localization_radius: 1e9,
            localization_radius_y: None,
            ring_size: None,
            geometry: Geometry::Ring,
            fields: 1,
            localization_scale: LocalizationScale::Dapper,
            inflate: InflateAt::Analysis,
            jitter: 0.0,
        })
        .analyse(&mut a, &input)
        .unwrap();
        let mut b = ens0.clone();
        Etkf::new(EtkfConfig {
            members: n_mem,
            inflation: 1.1,
            rotation: false,
        })
        .analyse(&mut b, &input)
        .unwrap();
        let err = a
            .iter()
            .zip(b.iter())
            .map(|(x, y)| (x - y).abs())
            .fold(0.0, f64::max);
        assert!(err < 1e-10, "{err}");
    }

    /// A point farther than 2c from every observation keeps its forecast (before inflation).
    #[test]
    fn far_points_are_untouched() {
        let (n_mem, n) = (6, 40);
        let ens0 = Array2::from_shape_fn((n_mem, n), |(m, i)| ((m * 5 + i) as f64 * 0.71).cos());
        let h = PointObs::new(n, vec![0], false);
        let input = AnalysisInput::whole(&[3.0], &h, &[0.1], 1, 1);
        let mut a = ens0.clone();
        Letkf::new(LetkfConfig {
            members: n_mem,
            inflation: 1.0,
            localization_radius: 2.0,
            localization_radius_y: None,
            ring_size: None,
            geometry: Geometry::Ring,
            fields: 1,
            localization_scale: LocalizationScale::Dapper,
            inflate: InflateAt::Analysis,
            jitter: 0.0,
        })
        .analyse(&mut a, &input)
        .unwrap();
        let support = 2.0 * GC_HALF_WIDTH_PER_RADIUS * 2.0;
        for i in 0..n {
            let d = Geometry::Ring.distance(i, 0, n);
            let changed = (0..n_mem).any(|m| (a[[m, i]] - ens0[[m, i]]).abs() > 1e-12);
            assert_eq!(changed, d < support, "point {i} at distance {d}");
        }
    }

    /// On the torus a point sees observations within each direction's radius only: with a
    /// y radius of 1 and an x radius of 4, an observation 4 rows away has no effect while one
    /// 4 columns away does.
    #[test]
    fn torus_radii_differ_per_direction() {
        let (n_mem, side) = (6, 16);
        let n = side * side;
        let ens0 =
            Array2::from_shape_fn((n_mem, n), |(m, i)| ((m * 7 + i * 3) as f64 * 0.41).sin());
        let run = |obs_at: usize| {
            let h = PointObs::new(n, vec![obs_at], false);
            let input = AnalysisInput::whole(&[2.0], &h, &[0.1], 1, 1);
            let mut a = ens0.clone();
            Letkf::new(LetkfConfig {
                members: n_mem,
                inflation: 1.0,
                localization_radius: 4.0,
                localization_radius_y: Some(1.0),
                ring_size: None,
                geometry: Geometry::Torus,
                fields: 1,
                localization_scale: LocalizationScale::Dapper,
                inflate: InflateAt::Analysis,
                jitter: 0.0,
            })
            .analyse(&mut a, &input)
            .unwrap();
            (0..n_mem).any(|m| (a[[m, 0]] - ens0[[m, 0]]).abs() > 1e-12)
        };
        assert!(run(4), "4 columns away, inside the x support");
        assert!(!run(4 * side), "4 rows away, outside the y support");
    }

    /// Layered ring (X ring of K points, J hidden variables per point): an observation of X_0
    /// updates the hidden variables at ring points within the support (including across the
    /// wrap) and leaves the far ones alone.
    #[test]
    fn layered_ring_localises_by_ring_point() {
        let (n_mem, k, j) = (6, 12, 2);
        let n = k + k * j;
        let ens0 =
            Array2::from_shape_fn((n_mem, n), |(m, i)| ((m * 5 + i * 7) as f64 * 0.37).sin());
        let h = PointObs::new(n, vec![0], false);
        let input = AnalysisInput::whole(&[1.5], &h, &[0.1], 1, 1);
        let mut a = ens0.clone();
        Letkf::new(LetkfConfig {
            members: n_mem,
            inflation: 1.0,
            localization_radius: 1.0,
            localization_radius_y: None,
            ring_size: Some(k),
            geometry: Geometry::LayeredRing,
            fields: 1,
            localization_scale: LocalizationScale::Dapper,
            inflate: InflateAt::Analysis,
            jitter: 0.0,
        })
        .analyse(&mut a, &input)
        .unwrap();
        let changed = |i: usize| (0..n_mem).any(|m| (a[[m, i]] - ens0[[m, i]]).abs() > 1e-12);
        // Support 2c = 3.65 ring points: Y at points 0, 1, 11 (wrap) change; Y at point 6 not.
        for p in [0usize, 1, 11] {
            assert!(changed(k + p * j) && changed(k + p * j + 1), "point {p}");
        }
        assert!(
            !changed(k + 6 * j) && !changed(6),
            "point 6 is outside the support"
        );
    }
}
