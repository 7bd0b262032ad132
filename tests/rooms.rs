//! The rooms of src/ depend on each other one way (issue 20, item 6): no import circle between
//! top-level modules, and the method rooms (`models`, `obs`, `filters`) import nothing from the
//! config, the I/O or the driver. Read from the source itself (`crate::<room>` paths outside
//! comments and test modules).
use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

fn rs_files(dir: &Path, out: &mut Vec<std::path::PathBuf>) {
    for e in std::fs::read_dir(dir).unwrap() {
        let p = e.unwrap().path();
        if p.is_dir() {
            rs_files(&p, out);
        } else if p.extension().is_some_and(|x| x == "rs") {
            out.push(p);
        }
    }
}

/// Top-level room → the rooms it names as `crate::<room>`.
fn room_imports() -> BTreeMap<String, BTreeSet<String>> {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut files = Vec::new();
    rs_files(&src, &mut files);
    let mut deps: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for f in files {
        let rel = f.strip_prefix(&src).unwrap();
        let first = rel
            .components()
            .next()
            .unwrap()
            .as_os_str()
            .to_string_lossy();
        let room = first.trim_end_matches(".rs").to_string();
        if room == "lib" || room == "main" {
            continue;
        }
        let text = std::fs::read_to_string(&f).unwrap();
        let code = text.split("#[cfg(test)]").next().unwrap();
        for line in code.lines().filter(|l| !l.trim_start().starts_with("//")) {
            for (i, _) in line.match_indices("crate::") {
                let name: String = line[i + 7..]
                    .chars()
                    .take_while(|c| c.is_ascii_lowercase() || *c == '_')
                    .collect();
                if !name.is_empty() && name != room {
                    deps.entry(room.clone()).or_default().insert(name);
                }
            }
        }
    }
    deps
}

#[test]
fn rooms_import_one_way() {
    let deps = room_imports();
    assert!(deps.len() > 8, "rooms found: {deps:?}");
    // No circle: no room reaches itself.
    for start in deps.keys() {
        let mut seen = BTreeSet::new();
        let mut stack = vec![start.clone()];
        while let Some(r) = stack.pop() {
            for d in deps.get(&r).into_iter().flatten() {
                assert!(
                    d != start,
                    "import circle through `{start}` (via `{r}` → `{d}`): {deps:#?}"
                );
                if seen.insert(d.clone()) {
                    stack.push(d.clone());
                }
            }
        }
    }
    for room in ["models", "obs", "filters"] {
        for banned in ["config", "io", "experiment", "commands", "cli", "sweep"] {
            assert!(
                !deps.get(room).is_some_and(|d| d.contains(banned)),
                "`{room}` imports `crate::{banned}`"
            );
        }
    }
}
