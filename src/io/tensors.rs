//! Named float arrays with string attributes in HDF5: network weights, optimizer state and
//! training checkpoints. One dataset per array (`<group>/<name>`), shapes kept, values bit-exact.
use super::PendingFile;
use crate::error::{GendaError, Result};
use hdf5::types::VarLenUnicode;
use std::collections::BTreeMap;
use std::path::Path;

/// A named array of f32 with its shape.
#[derive(Debug, Clone, PartialEq)]
pub struct NamedArray {
    pub name: String,
    pub shape: Vec<usize>,
    pub data: Vec<f32>,
}

/// Groups of arrays plus string attributes, as stored in one file.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct TensorFile {
    /// group name → arrays (e.g. "params", "ema", "adam_m", "adam_v")
    pub groups: BTreeMap<String, Vec<NamedArray>>,
    pub attrs: BTreeMap<String, String>,
}

fn h5err(path: &Path, what: &str, e: hdf5::Error) -> GendaError {
    GendaError::file(path, format!("{what}: {e}"))
}

// HDF5 object names may not contain '/' inside a name; tch parameter names use '.'.
fn encode(name: &str) -> String {
    name.replace('/', "|")
}
fn decode(name: &str) -> String {
    name.replace('|', "/")
}

pub fn write_tensor_file(path: &Path, tf: &TensorFile) -> Result<()> {
    let pending = PendingFile::new(path)?;
    {
        let f = hdf5::File::create(pending.tmp_path()).map_err(|e| h5err(path, "create", e))?;
        for (k, v) in &tf.attrs {
            let s: VarLenUnicode = v
                .parse()
                .map_err(|e| GendaError::file(path, format!("attribute {k}: {e}")))?;
            f.new_attr::<VarLenUnicode>()
                .create(k.as_str())
                .and_then(|a| a.write_scalar(&s))
                .map_err(|e| h5err(path, &format!("attribute {k}"), e))?;
        }
        for (g, arrays) in &tf.groups {
            let grp = f
                .create_group(g)
                .map_err(|e| h5err(path, &format!("group {g}"), e))?;
            for a in arrays {
                if a.data.len() != a.shape.iter().product::<usize>() {
                    return Err(GendaError::Dimension {
                        what: format!("array {}", a.name),
                        expected: a.shape.iter().product(),
                        got: a.data.len(),
                    });
                }
                let ds = grp
                    .new_dataset::<f32>()
                    .shape(a.shape.clone())
                    .create(encode(&a.name).as_str())
                    .map_err(|e| h5err(path, &format!("dataset {g}/{}", a.name), e))?;
                ds.write_raw(&a.data[..])
                    .map_err(|e| h5err(path, &format!("write {g}/{}", a.name), e))?;
            }
        }
    }
    pending.commit()?;
    Ok(())
}

pub fn read_tensor_file(path: &Path) -> Result<TensorFile> {
    if !path.exists() {
        return Err(GendaError::file(path, "no such file"));
    }
    let f = hdf5::File::open(path).map_err(|e| h5err(path, "not a readable HDF5 file", e))?;
    let mut tf = TensorFile::default();
    for name in f.attr_names().map_err(|e| h5err(path, "attributes", e))? {
        let v: VarLenUnicode = f
            .attr(&name)
            .and_then(|a| a.read_scalar())
            .map_err(|e| h5err(path, &format!("attribute {name}"), e))?;
        tf.attrs.insert(name, v.as_str().to_string());
    }
    for g in f.member_names().map_err(|e| h5err(path, "groups", e))? {
        let grp = f
            .group(&g)
            .map_err(|e| h5err(path, &format!("group {g}"), e))?;
        let mut arrays = Vec::new();
        for n in grp
            .member_names()
            .map_err(|e| h5err(path, &format!("group {g}"), e))?
        {
            let ds = grp
                .dataset(&n)
                .map_err(|e| h5err(path, &format!("dataset {g}/{n}"), e))?;
            let data: Vec<f32> = ds
                .read_raw()
                .map_err(|e| h5err(path, &format!("read {g}/{n}"), e))?;
            arrays.push(NamedArray {
                name: decode(&n),
                shape: ds.shape(),
                data,
            });
        }
        tf.groups.insert(g, arrays);
    }
    Ok(tf)
}
