//! `genda sweep`: DAPPER-style experiment lists. A sweep file names a base config, optional
//! inline overrides, methods (each with its own filter settings), axes (any config key by its
//! dotted path with a list of values, or a table of labelled variants), zipped lists that vary
//! together, and seeds. Every combination is one experiment: it runs inside this process
//! (rayon across experiments; under mpirun the experiments are dealt out over the ranks), and
//! its scores are appended to an append-only results store, so an interrupted sweep resumes
//! where it stopped. The store is then tabulated (tidy CSV, NetCDF with one dimension per axis,
//! markdown table of mean ± std over seeds); `genda plot` draws it.
//!
//! ```toml
//! [sweep]
//! name = "l63_sizes"
//! base = "configs/dapper/l63_arctan_enkf.toml"   # relative to the working directory
//! seeds = [1, 2, 3, 4, 5]
//! set = { "experiment.cycles" = 700 }            # inline overrides of the base
//!
//! [[method]]                                      # methods: one axis, in this order
//! name = "enkf"                                   # (base's [filter] with `set`)
//! set = { "filter.inflation" = 1.02 }
//! [[method]]
//! name = "pf"
//! filter = { method = "pf", regularization = 2.4, ner = 0.3 }   # replaces [filter]
//!
//! [axes]
//! "filter.members" = [10, 25, 50]                 # a list: one value per coordinate
//! observed = { all = {}, x = { "observations.operator" = "sparse", "observations.stride" = 3 } }
//!
//! [[zip]]                                         # lists that vary together: one dimension
//! name = "cell"
//! "model.forcing" = [8.0, 12.0]
//! "experiment.cycles" = [300, 600]
//! ```
//!
//! Overrides apply in this order: base file, `[sweep] set`, the method's `filter` and `set`,
//! then the axes and zips, `--set` of the command line, and the seed (`experiment.seed`). Every experiment's config is parsed and
//! validated before the first one runs; a key a method does not take is refused then.
mod report;
mod runner;
mod store;

pub use crate::metrics::mean_std;
pub use report::{write_reports, ReportPaths};
pub use runner::{run_sweep, OnChange, SweepOptions, SweepOutcome};
pub use store::{read_store, Row};

use crate::config::{flatten_overrides, set_dotted, Config};
use crate::error::{GendaError, Result};
use serde::Deserialize;
use std::path::{Path, PathBuf};

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct SweepFile {
    sweep: Header,
    #[serde(default)]
    axes: toml::Table,
    #[serde(default)]
    zip: Vec<toml::Table>,
    #[serde(default)]
    method: Vec<MethodFile>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Header {
    name: String,
    base: PathBuf,
    seeds: Vec<u64>,
    #[serde(default)]
    description: Option<String>,
    #[serde(default)]
    set: toml::Table,
    #[serde(default)]
    out_dir: Option<PathBuf>,
    /// Also write every experiment's NetCDF run file (as `genda run` does) under
    /// `<out_dir>/runs/`, named like `--export-configs` names its configs.
    #[serde(default)]
    save_runs: bool,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct MethodFile {
    name: String,
    /// A different base config for this method (e.g. a learned method's own file).
    #[serde(default)]
    config: Option<PathBuf>,
    /// Replaces the base's [filter] table.
    #[serde(default)]
    filter: Option<toml::Table>,
    #[serde(default)]
    set: toml::Table,
}

/// A method of the sweep: its base text and its own settings.
#[derive(Debug, Clone)]
pub struct Method {
    pub name: String,
    base_path: PathBuf,
    base_text: String,
    filter: Option<toml::Table>,
    set: Vec<(String, toml::Value)>,
}

/// One coordinate along a dimension: its label and the overrides it stands for.
#[derive(Debug, Clone)]
pub struct Coord {
    pub label: String,
    /// The numeric value of a one-key numeric axis (a coordinate variable in the NetCDF).
    pub number: Option<f64>,
    pub sets: Vec<(String, toml::Value)>,
}

/// An axis (a list or labelled variants) or a zip group.
#[derive(Debug, Clone)]
pub struct Dimension {
    pub name: String,
    pub coords: Vec<Coord>,
}

/// A parsed sweep file.
#[derive(Debug, Clone)]
pub struct Sweep {
    pub name: String,
    pub description: Option<String>,
    pub path: PathBuf,
    pub out_dir: PathBuf,
    pub seeds: Vec<u64>,
    pub methods: Vec<Method>,
    pub dims: Vec<Dimension>,
    pub save_runs: bool,
    set: Vec<(String, toml::Value)>,
    /// `--set` overrides: after the axes, before the seed.
    cli_set: Vec<(String, toml::Value)>,
}

/// One experiment: a method, a coordinate on every dimension, a seed, and its config.
#[derive(Debug, Clone)]
pub struct Experiment {
    pub method: usize,
    pub coords: Vec<usize>,
    pub seed: u64,
    /// `method=…;dim=label;…;seed=…`: what the results store is keyed by.
    pub key: String,
    pub config: Config,
    /// `Config::science_hash` of the effective config: a changed setting is detected by it.
    pub hash: String,
    /// `<index>_<key made file-name safe>`: the name of its exported config and run file.
    pub file_stem: String,
}

/// A TOML value as a short label (strings without quotes).
fn label_of(v: &toml::Value) -> String {
    match v {
        toml::Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

fn number_of(v: &toml::Value) -> Option<f64> {
    match v {
        toml::Value::Integer(i) => Some(*i as f64),
        toml::Value::Float(f) => Some(*f),
        _ => None,
    }
}

impl Sweep {
    /// Read and check a sweep file: every experiment is expanded and its config validated
    /// (see [`Sweep::experiments`]) before anything runs.
    pub fn from_file(path: &Path) -> Result<Self> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| GendaError::file(path, format!("cannot read sweep file: {e}")))?;
        Self::from_toml(&text, path)
    }

    pub fn from_toml(text: &str, path: &Path) -> Result<Self> {
        let err = |msg: String| GendaError::Config {
            path: path.display().to_string(),
            msg,
        };
        let f: SweepFile =
            toml::from_str(text).map_err(|e| err(e.to_string().trim_end().to_string()))?;
        let h = f.sweep;
        if h.name.trim().is_empty() || h.name.contains(['/', '\\']) {
            return Err(err(format!(
                "sweep.name `{}` must be a non-empty name without slashes",
                h.name
            )));
        }
        if h.seeds.is_empty() {
            return Err(err("sweep.seeds is empty: list at least one seed".into()));
        }
        if let Some(d) = (1..h.seeds.len()).find(|&i| h.seeds[..i].contains(&h.seeds[i])) {
            return Err(err(format!("sweep.seeds lists seed {} twice", h.seeds[d])));
        }
        let read = |p: &Path, what: &str| {
            std::fs::read_to_string(p)
                .map_err(|e| err(format!("{what} {}: cannot read: {e}", p.display())))
        };
        let base_text = read(&h.base, "sweep.base")?;
        let mut methods = Vec::new();
        for m in f.method {
            if m.name.trim().is_empty() || m.name.contains([';', '=']) {
                return Err(err(format!(
                    "method name `{}` must be non-empty, without `;` or `=`",
                    m.name
                )));
            }
            if methods.iter().any(|o: &Method| o.name == m.name) {
                return Err(err(format!("method `{}` is listed twice", m.name)));
            }
            let (base_path, base_text) = match &m.config {
                Some(p) => (p.clone(), read(p, &format!("method `{}`: config", m.name))?),
                None => (h.base.clone(), base_text.clone()),
            };
            methods.push(Method {
                name: m.name,
                base_path,
                base_text,
                filter: m.filter,
                set: flatten_overrides(&m.set),
            });
        }
        if methods.is_empty() {
            // No method axis: the base's own filter, named by its method.
            let doc: toml::Table =
                toml::from_str(&base_text).map_err(|e| err(format!("sweep.base: {e}")))?;
            let name = doc
                .get("filter")
                .and_then(|f| f.get("method"))
                .and_then(|m| m.as_str())
                .unwrap_or("base")
                .to_string();
            methods.push(Method {
                name,
                base_path: h.base.clone(),
                base_text,
                filter: None,
                set: Vec::new(),
            });
        }
        let mut dims = axes_of(&f.axes, &err)?;
        dims.extend(zips_of(&f.zip, &err)?);
        for (i, d) in dims.iter().enumerate() {
            if matches!(d.name.as_str(), "method" | "seed")
                || dims[..i].iter().any(|o| o.name == d.name)
            {
                return Err(err(format!(
                    "dimension name `{}` is used twice (or is `method`/`seed`)",
                    d.name
                )));
            }
            if let Some(l) = (1..d.coords.len())
                .find(|&j| d.coords[..j].iter().any(|c| c.label == d.coords[j].label))
            {
                return Err(err(format!(
                    "axis `{}` lists `{}` twice",
                    d.name, d.coords[l].label
                )));
            }
        }
        let out_dir = h
            .out_dir
            .clone()
            .unwrap_or_else(|| PathBuf::from("output/sweeps").join(&h.name));
        let sweep = Sweep {
            name: h.name,
            description: h.description,
            path: path.to_path_buf(),
            out_dir,
            seeds: h.seeds,
            methods,
            dims,
            save_runs: h.save_runs,
            set: flatten_overrides(&h.set),
            cli_set: Vec::new(),
        };
        Ok(sweep)
    }

    /// `--set key=value` overrides for every experiment (after the axes: they win over every
    /// setting of the file but the seed).
    pub fn add_overrides(&mut self, sets: &[String]) -> Result<()> {
        for s in sets {
            let (k, v) = crate::config::parse_set(s).map_err(|msg| GendaError::Config {
                path: self.path.display().to_string(),
                msg,
            })?;
            self.cli_set.push((k, v));
        }
        Ok(())
    }

    /// Write every experiment's effective config to `dir` as `<index>_<key>.toml` (the key's
    /// `;`, `=` and spaces made file-name safe); returns the paths in the sweep's order.
    pub fn export_configs(&self, dir: &Path) -> Result<Vec<PathBuf>> {
        std::fs::create_dir_all(dir)
            .map_err(|e| GendaError::file(dir, format!("cannot create directory: {e}")))?;
        let mut out = Vec::new();
        for e in self.experiments()? {
            let p = dir.join(format!("{}.toml", e.file_stem));
            let text = format!(
                "# experiment {} of sweep {} ({})\n{}",
                e.key,
                self.name,
                self.path.display(),
                e.config.to_toml()
            );
            std::fs::write(&p, text)
                .map_err(|err| GendaError::file(&p, format!("cannot write: {err}")))?;
            out.push(p);
        }
        Ok(out)
    }

    /// How many experiments the sweep has.
    pub fn len(&self) -> usize {
        self.methods.len()
            * self.dims.iter().map(|d| d.coords.len()).product::<usize>()
            * self.seeds.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The key of (method, coords, seed) in the results store.
    pub fn key(&self, method: usize, coords: &[usize], seed: u64) -> String {
        let mut k = format!("method={}", self.methods[method].name);
        for (d, &c) in self.dims.iter().zip(coords) {
            k += &format!(";{}={}", d.name, d.coords[c].label);
        }
        k + &format!(";seed={seed}")
    }

    /// Every experiment, methods outermost and seeds innermost, each config parsed and
    /// validated (including the layout on one rank). The first bad one is an error naming
    /// the method, the coordinates and what is wrong.
    pub fn experiments(&self) -> Result<Vec<Experiment>> {
        let mut out = Vec::with_capacity(self.len());
        for (mi, coords, seed) in self.grid() {
            let mut e = self.experiment(mi, &self.methods[mi], &coords, seed)?;
            let safe: String = e
                .key
                .chars()
                .map(|c| {
                    if c.is_ascii_alphanumeric() || "._-@".contains(c) {
                        c
                    } else {
                        '_'
                    }
                })
                .collect();
            e.file_stem = format!("{:05}_{safe}", out.len());
            out.push(e);
        }
        Ok(out)
    }

    /// (method, coordinate on every dimension, seed) of every experiment, in the sweep's order:
    /// methods outermost, then the dimensions in C order, seeds innermost (the NetCDF layout).
    pub fn grid(&self) -> Vec<(usize, Vec<usize>, u64)> {
        let shape: Vec<usize> = self.dims.iter().map(|d| d.coords.len()).collect();
        let combos: usize = shape.iter().product();
        let mut out = Vec::with_capacity(self.len());
        for mi in 0..self.methods.len() {
            for flat in 0..combos {
                let mut coords = vec![0; shape.len()];
                let mut r = flat;
                for (c, &n) in coords.iter_mut().zip(&shape).rev() {
                    *c = r % n;
                    r /= n;
                }
                for &seed in &self.seeds {
                    out.push((mi, coords.clone(), seed));
                }
            }
        }
        out
    }

    fn experiment(&self, mi: usize, m: &Method, coords: &[usize], seed: u64) -> Result<Experiment> {
        let key = self.key(mi, coords, seed);
        let what = |msg: String| GendaError::Config {
            path: self.path.display().to_string(),
            msg: format!("experiment {key} (base {}): {msg}", m.base_path.display()),
        };
        let mut doc: toml::Table = toml::from_str(&m.base_text).map_err(|e| what(e.to_string()))?;
        let mut sets: Vec<(String, toml::Value)> = self.set.clone();
        if let Some(f) = &m.filter {
            doc.insert("filter".into(), toml::Value::Table(f.clone()));
            // A replaced [filter] drops the sweep-level filter settings along with the base's.
            sets.retain(|(k, _)| !k.starts_with("filter."));
        }
        sets.extend(m.set.iter().cloned());
        for (d, &c) in self.dims.iter().zip(coords) {
            sets.extend(d.coords[c].sets.iter().cloned());
        }
        sets.extend(self.cli_set.iter().cloned());
        sets.push(("experiment.seed".into(), toml::Value::Integer(seed as i64)));
        for (k, v) in &sets {
            set_dotted(&mut doc, k, v.clone()).map_err(|e| what(format!("{k} = {v}: {e}")))?;
        }
        let text = toml::to_string(&doc).map_err(|e| what(e.to_string()))?;
        // The parse error without the generated text's line numbers: they mean nothing here.
        if let Err(e) = toml::from_str::<Config>(&text) {
            return Err(what(format!(
                "{} (settings: {})",
                e.message(),
                describe(&sets)
            )));
        }
        let config = Config::from_toml(&text, &key).map_err(|e| {
            let msg = match e {
                GendaError::Config { msg, .. } => msg,
                other => other.to_string(),
            };
            what(format!("{msg} (settings: {})", describe(&sets)))
        })?;
        crate::experiment::check_layout(&config, 1).map_err(|e| what(e.to_string()))?;
        let hash = config.science_hash();
        Ok(Experiment {
            method: mi,
            coords: coords.to_vec(),
            seed,
            key,
            config,
            hash,
            file_stem: String::new(),
        })
    }
}

/// The `[axes]` table as dimensions: a list of values, or a table of labelled variants.
fn axes_of(axes: &toml::Table, err: &dyn Fn(String) -> GendaError) -> Result<Vec<Dimension>> {
    let mut dims: Vec<Dimension> = Vec::new();
    for (key, v) in axes {
        let coords = match v {
                toml::Value::Array(values) => values
                    .iter()
                    .map(|x| Coord {
                        label: label_of(x),
                        number: number_of(x),
                        sets: vec![(key.clone(), x.clone())],
                    })
                    .collect::<Vec<_>>(),
                toml::Value::Table(variants) => variants
                    .iter()
                    .map(|(label, t)| match t {
                        toml::Value::Table(t) => Ok(Coord {
                            label: label.clone(),
                            number: None,
                            sets: flatten_overrides(t),
                        }),
                        _ => Err(err(format!(
                            "axis `{key}`: variant `{label}` must be a table of overrides, e.g. {{ \"filter.inflation\" = 1.02 }}"
                        ))),
                    })
                    .collect::<Result<Vec<_>>>()?,
                _ => {
                    return Err(err(format!(
                        "axis `{key}`: expected a list of values or a table of labelled variants, got {v}"
                    )))
                }
            };
        if coords.is_empty() {
            return Err(err(format!(
                "axis `{key}` is empty: give it at least one value"
            )));
        }
        dims.push(Dimension {
            name: key.clone(),
            coords,
        });
    }
    Ok(dims)
}

/// The `[[zip]]` tables as dimensions: lists of equal length that vary together.
fn zips_of(zips: &[toml::Table], err: &dyn Fn(String) -> GendaError) -> Result<Vec<Dimension>> {
    let mut dims: Vec<Dimension> = Vec::new();
    for (zi, z) in zips.iter().enumerate() {
        let mut z = z.clone();
        let name = match z.remove("name") {
            Some(toml::Value::String(s)) => Some(s),
            Some(other) => {
                return Err(err(format!(
                    "zip {}: name must be a string, got {other}",
                    zi + 1
                )))
            }
            None => None,
        };
        let mut lists: Vec<(String, Vec<toml::Value>)> = Vec::new();
        for (k, v) in &z {
            match v {
                toml::Value::Array(a) if !a.is_empty() => lists.push((k.clone(), a.clone())),
                toml::Value::Array(_) => {
                    return Err(err(format!("zip {}: `{k}` is an empty list", zi + 1)))
                }
                _ => {
                    return Err(err(format!(
                        "zip {}: `{k}` must be a list of values, got {v}",
                        zi + 1
                    )))
                }
            }
        }
        if lists.is_empty() {
            return Err(err(format!("zip {} lists no keys", zi + 1)));
        }
        let len = lists[0].1.len();
        if let Some((k, l)) = lists.iter().find(|(_, l)| l.len() != len) {
            return Err(err(format!(
                "zip {}: `{k}` has {} values but `{}` has {len}; zipped lists have equal lengths",
                zi + 1,
                l.len(),
                lists[0].0
            )));
        }
        let coords = (0..len)
            .map(|i| Coord {
                label: lists
                    .iter()
                    .map(|(k, l)| format!("{k}={}", label_of(&l[i])))
                    .collect::<Vec<_>>()
                    .join(" "),
                number: None,
                sets: lists
                    .iter()
                    .map(|(k, l)| (k.clone(), l[i].clone()))
                    .collect(),
            })
            .collect();
        let name = name.unwrap_or_else(|| {
            lists
                .iter()
                .map(|(k, _)| k.as_str())
                .collect::<Vec<_>>()
                .join("+")
        });
        dims.push(Dimension { name, coords });
    }
    Ok(dims)
}

fn describe(sets: &[(String, toml::Value)]) -> String {
    sets.iter()
        .map(|(k, v)| format!("{k} = {v}"))
        .collect::<Vec<_>>()
        .join(", ")
}

#[cfg(test)]
mod tests {
    use super::*;

    const BASE: &str = r#"
[experiment]
name = "t"
cycles = 20
burn_in = 5
[model]
kind = "lorenz63"
dt = 0.01
[initial]
mean = [1.0, 2.0, 3.0]
var = 2.0
[observations]
operator = "identity"
error_var = 2.0
obs_every = 25
[filter]
method = "etkf"
members = 10
"#;

    fn sweep(body: &str) -> Result<Sweep> {
        let dir = tempfile::tempdir().unwrap();
        let base = dir.path().join("base.toml");
        std::fs::write(&base, BASE).unwrap();
        let text = format!(
            "[sweep]\nname = \"s\"\nbase = \"{}\"\nseeds = [1, 2]\n{body}",
            base.display()
        );
        let s = Sweep::from_toml(&text, Path::new("s.toml"))?;
        s.experiments()?;
        Ok(s)
    }

    #[test]
    fn expands_methods_axes_zips_and_seeds() {
        let s = sweep(
            r#"
[[method]]
name = "etkf"
[[method]]
name = "enkf"
filter = { method = "enkf", members = 10, inflation = 1.02 }
[axes]
"filter.members" = [5, 8, 12]
obs = { all = {}, sparse = { "observations.operator" = "sparse", "observations.stride" = 3 } }
[[zip]]
name = "cell"
"model.dt" = [0.01, 0.005]
"experiment.cycles" = [20, 40]
"#,
        )
        .unwrap();
        let e = s.experiments().unwrap();
        assert_eq!(e.len(), 2 * 3 * 2 * 2 * 2);
        assert_eq!(s.len(), e.len());
        let last = e.last().unwrap();
        assert_eq!(
            last.key,
            "method=enkf;filter.members=12;obs=sparse;cell=model.dt=0.005 experiment.cycles=40;seed=2"
        );
        assert_eq!(last.config.filter.members(), 12);
        assert_eq!(last.config.experiment.cycles, 40);
        assert_eq!(last.config.experiment.seed, 2);
        assert_eq!(last.config.filter.name(), "enkf");
        // Keys are unique, and so are the configs' hashes.
        let keys: std::collections::HashSet<_> = e.iter().map(|x| x.key.clone()).collect();
        let hashes: std::collections::HashSet<_> = e.iter().map(|x| x.hash.clone()).collect();
        assert_eq!(keys.len(), e.len());
        assert_eq!(hashes.len(), e.len());
    }

    #[test]
    fn bad_sweeps_are_refused_naming_the_axis() {
        for (body, needle) in [
            (
                "[axes]\n\"filter.members\" = []",
                "axis `filter.members` is empty",
            ),
            ("[axes]\n\"filter.membrs\" = [5]", "membrs"),
            (
                "[axes]\n\"filter.members\" = [\"five\"]",
                "filter.members = \"five\"",
            ),
            (
                "[axes]\n\"filter.localization_radius\" = [4.0]",
                "localization_radius",
            ),
            (
                "[[zip]]\n\"filter.members\" = [5, 6]\n\"model.dt\" = [0.01]",
                "equal lengths",
            ),
            ("[axes]\n\"filter.members\" = 5", "expected a list"),
            ("[axes]\n\"filter.members\" = [5, 5]", "twice"),
        ] {
            let e = sweep(body).unwrap_err().to_string();
            assert!(e.contains(needle), "{body}: {e}");
        }
    }
}
