//! The results store of a sweep: append-only JSON lines, one row per finished experiment.
//! Each rank appends to its own shard (`runs.rank<R>.jsonl`; a rank is the only writer of its
//! shard, and its threads write whole lines under a lock with one `write` of an `O_APPEND`
//! file, then sync), so a crash loses at most the line being written — a torn last line is
//! skipped with a warning on reading and that experiment simply runs again. Reading takes
//! the union of all shards; where a key appears more than once (rerun after a change), the
//! latest row counts.
use crate::error::{GendaError, Result};
use serde::{Deserialize, Serialize};
use std::collections::HashMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

/// Scores of the hidden variables of a conditionally Gaussian model.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct HiddenRow {
    pub rmse_forecast: f64,
    pub rmse_analysis: f64,
    pub spread_analysis: f64,
    pub crps_analysis: f64,
    pub skewness_error: f64,
    pub kurtosis_error: f64,
}

/// One finished experiment. Scores are time means after the burn-in, as `genda run` prints
/// them; `None` where the run diverged (or the score was not asked for).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Row {
    pub key: String,
    pub sweep: String,
    pub method: String,
    /// (dimension, coordinate label), in the sweep's order.
    pub coords: Vec<(String, String)>,
    pub seed: u64,
    pub config_hash: String,
    pub diverged: bool,
    /// The divergence message (cycle and what was non-finite).
    pub diverged_because: Option<String>,
    pub rmse_forecast: Option<f64>,
    pub rmse_analysis: Option<f64>,
    pub spread_forecast: Option<f64>,
    pub spread_analysis: Option<f64>,
    pub crps_analysis: Option<f64>,
    /// `output.path_rmse`: the pooled RMSE over every scored model step (stores written
    /// before it existed read as `None`).
    #[serde(default)]
    pub rmse_path: Option<f64>,
    pub hidden: Option<HiddenRow>,
    /// Cycles in the time means.
    pub cycles_scored: usize,
    pub wall_s: f64,
    /// Seconds since the Unix epoch when the row was written (the latest row of a key counts).
    pub finished_unix: f64,
    pub genda_version: String,
}

fn shard_name(rank: usize) -> String {
    format!("runs.rank{rank}.jsonl")
}

/// Every row in the store under `dir` (all shards), the latest per key. A missing directory
/// is an empty store.
pub fn read_store(dir: &Path) -> Result<HashMap<String, Row>> {
    let mut rows: HashMap<String, Row> = HashMap::new();
    let entries = match std::fs::read_dir(dir) {
        Ok(e) => e,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(rows),
        Err(e) => {
            return Err(GendaError::file(
                dir,
                format!("cannot read results store: {e}"),
            ))
        }
    };
    let mut shards: Vec<PathBuf> = entries
        .flatten()
        .map(|e| e.path())
        .filter(|p| {
            p.file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.starts_with("runs.rank") && n.ends_with(".jsonl"))
        })
        .collect();
    shards.sort();
    for shard in shards {
        let text = std::fs::read_to_string(&shard)
            .map_err(|e| GendaError::file(&shard, format!("cannot read: {e}")))?;
        for (i, line) in text.lines().enumerate() {
            if line.trim().is_empty() {
                continue;
            }
            match serde_json::from_str::<Row>(line) {
                Ok(r) => {
                    let newer = rows
                        .get(&r.key)
                        .is_none_or(|old| old.finished_unix <= r.finished_unix);
                    if newer {
                        rows.insert(r.key.clone(), r);
                    }
                }
                Err(e) => log::warn!(
                    "{}:{}: skipping an unreadable row ({e}); its experiment runs again",
                    shard.display(),
                    i + 1
                ),
            }
        }
    }
    Ok(rows)
}

/// This rank's shard, opened for appending.
pub struct Shard {
    path: PathBuf,
    file: Mutex<std::fs::File>,
}

impl Shard {
    pub fn open(dir: &Path, rank: usize) -> Result<Self> {
        std::fs::create_dir_all(dir)
            .map_err(|e| GendaError::file(dir, format!("cannot create results directory: {e}")))?;
        let path = dir.join(shard_name(rank));
        let mut file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&path)
            .map_err(|e| GendaError::file(&path, format!("cannot open results store: {e}")))?;
        // A line torn by a crash would run into the next row: start on a fresh line.
        let len = file.metadata().map(|m| m.len()).unwrap_or(0);
        if len > 0 {
            let text = std::fs::read(&path).unwrap_or_default();
            if text.last() != Some(&b'\n') {
                file.write_all(b"\n")
                    .map_err(|e| GendaError::file(&path, format!("cannot write: {e}")))?;
            }
        }
        Ok(Shard {
            path,
            file: Mutex::new(file),
        })
    }

    /// Append one row as one line, then sync it to disk.
    pub fn append(&self, row: &Row) -> Result<()> {
        let mut line = serde_json::to_string(row)
            .map_err(|e| GendaError::file(&self.path, format!("cannot encode row: {e}")))?;
        line.push('\n');
        let mut f = self.file.lock().unwrap_or_else(|p| p.into_inner());
        f.write_all(line.as_bytes())
            .and_then(|_| f.sync_data())
            .map_err(|e| GendaError::file(&self.path, format!("cannot append: {e}")))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(key: &str, t: f64, rmse: f64) -> Row {
        Row {
            key: key.into(),
            sweep: "s".into(),
            method: "etkf".into(),
            coords: vec![("filter.members".into(), "10".into())],
            seed: 1,
            config_hash: "h".into(),
            diverged: false,
            diverged_because: None,
            rmse_forecast: Some(1.0),
            rmse_analysis: Some(rmse),
            spread_forecast: Some(1.0),
            spread_analysis: Some(0.1 + 0.2),
            crps_analysis: None,
            rmse_path: None,
            hidden: None,
            cycles_scored: 10,
            wall_s: 0.5,
            finished_unix: t,
            genda_version: "0".into(),
        }
    }

    #[test]
    fn appends_survive_a_torn_line_and_the_latest_row_counts() {
        let dir = tempfile::tempdir().unwrap();
        let s = Shard::open(dir.path(), 0).unwrap();
        s.append(&row("a", 1.0, 0.25)).unwrap();
        s.append(&row("b", 1.0, 0.5)).unwrap();
        drop(s);
        // A crash in the middle of a line.
        let p = dir.path().join("runs.rank0.jsonl");
        let mut f = std::fs::OpenOptions::new().append(true).open(&p).unwrap();
        f.write_all(b"{\"key\":\"c\",\"swe").unwrap();
        drop(f);
        let s = Shard::open(dir.path(), 1).unwrap();
        s.append(&row("a", 2.0, 0.75)).unwrap();
        let s0 = Shard::open(dir.path(), 0).unwrap();
        s0.append(&row("d", 3.0, 1.0)).unwrap();
        let rows = read_store(dir.path()).unwrap();
        assert_eq!(rows.len(), 3, "{rows:?}");
        assert_eq!(rows["a"].rmse_analysis, Some(0.75));
        assert_eq!(rows["b"], row("b", 1.0, 0.5)); // f64 round trip exact
        assert!(rows.contains_key("d"));
    }

    #[test]
    fn scores_round_trip_bit_for_bit() {
        // serde_json parses floats exactly only with `float_roundtrip`; a best-effort parse is
        // off by one ulp for values like this one (a PF run's forecast spread).
        let dir = tempfile::tempdir().unwrap();
        let s = Shard::open(dir.path(), 0).unwrap();
        let mut x = 1.2094679027254163f64;
        let mut want = Vec::new();
        for i in 0..2000 {
            let key = format!("k{i}");
            s.append(&row(&key, 1.0, x)).unwrap();
            want.push((key, x));
            x = (x * 1.000_123_456_789).fract() * 10f64.powi((i % 40) - 20);
        }
        let rows = read_store(dir.path()).unwrap();
        for (k, v) in want {
            assert_eq!(
                rows[&k].rmse_analysis.unwrap().to_bits(),
                v.to_bits(),
                "{v:e}"
            );
        }
    }
}
