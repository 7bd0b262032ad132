//! Config text and `--set` overrides, shared by every kind of config (run configs, training
//! configs, sweeps): reading the file, and applying dotted `key=value` overrides to its TOML
//! before it is parsed, so an override is checked exactly like the file.
use crate::error::{GendaError, Result};
use std::path::Path;

/// The text of a config file, or an error naming it.
pub fn read_config_text(path: &Path) -> Result<String> {
    std::fs::read_to_string(path).map_err(|e| GendaError::Config {
        path: path.display().to_string(),
        msg: format!("cannot read: {e}"),
    })
}

/// Apply `key.path=value` overrides to TOML text and return the new text. The value is read as
/// a TOML value (`3`, `1.5`, `true`, `[1, 2]`, `"text"`, `{ kind = "unet" }`); anything that
/// does not parse as one is taken as a string (`--set filter.method=etkf`). Missing tables on
/// the path are created; whether a key exists and has the right type is decided when the
/// result is parsed into the config (every table rejects unknown keys), so an override is
/// checked exactly like the file.
pub fn apply_overrides(text: &str, sets: &[String]) -> std::result::Result<String, String> {
    let mut doc: toml::Table = toml::from_str(text).map_err(|e| e.to_string())?;
    for set in sets {
        let (key, value) = parse_set(set)?;
        set_dotted(&mut doc, &key, value).map_err(|m| format!("--set {set}: {m}"))?;
    }
    toml::to_string(&doc).map_err(|e| e.to_string())
}

/// `key=value` of `--set` as (key, TOML value); a value that is not TOML is a string.
pub fn parse_set(set: &str) -> std::result::Result<(String, toml::Value), String> {
    let (key, raw) = set
        .split_once('=')
        .ok_or_else(|| format!("--set {set}: expected key=value (e.g. filter.members=50)"))?;
    let raw = raw.trim();
    let value = match toml::from_str::<toml::Table>(&format!("v = {raw}")) {
        Ok(mut t) => t.remove("v").expect("parsed key"),
        Err(_) => toml::Value::String(raw.to_string()),
    };
    Ok((key.trim().to_string(), value))
}

/// Set `key` (a dotted path such as `filter.members`) in a parsed config to `value`, creating
/// the tables on the way. Type checks happen when the result is parsed as a [`Config`].
pub fn set_dotted(
    doc: &mut toml::Table,
    key: &str,
    value: toml::Value,
) -> std::result::Result<(), String> {
    let key = key.trim();
    let parts: Vec<&str> = key.split('.').map(str::trim).collect();
    if parts.iter().any(|p| p.is_empty()) {
        return Err(format!("`{key}` is not a dotted key path"));
    }
    let mut table = doc;
    for (i, p) in parts[..parts.len() - 1].iter().enumerate() {
        let entry = table
            .entry(p.to_string())
            .or_insert_with(|| toml::Value::Table(toml::Table::new()));
        table = entry
            .as_table_mut()
            .ok_or_else(|| format!("`{}` is a value, not a table", parts[..=i].join(".")))?;
    }
    table.insert(parts[parts.len() - 1].to_string(), value);
    Ok(())
}

/// A table of overrides as (dotted key, value) pairs: nested tables are flattened, so
/// `{ "filter.members" = 20 }` and `{ filter = { members = 20 } }` say the same.
pub fn flatten_overrides(t: &toml::Table) -> Vec<(String, toml::Value)> {
    fn walk(prefix: &str, t: &toml::Table, out: &mut Vec<(String, toml::Value)>) {
        for (k, v) in t {
            let key = if prefix.is_empty() {
                k.clone()
            } else {
                format!("{prefix}.{k}")
            };
            match v {
                toml::Value::Table(inner) => walk(&key, inner, out),
                _ => out.push((key, v.clone())),
            }
        }
    }
    let mut out = Vec::new();
    walk("", t, &mut out);
    out
}
