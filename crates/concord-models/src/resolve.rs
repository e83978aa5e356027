//! Model names: the built-in offline defaults, local folders and GGUF files, and Hugging Face
//! hub ids found in the local Hugging Face cache.
//!
//! This crate reads the cache and never touches the network: the `concord` command downloads a
//! missing hub id into the cache first (its `hub` module), then resolves the name here.

use std::path::{Path, PathBuf};

use crate::model::ModelSource;
use crate::{Error, Result};

/// The built-in names and their paths relative to the data dir.
pub const BUILTIN: [(&str, &str); 2] = [
    (
        "smollm2-135m",
        "cache/models/smollm2-135m/SmolLM2-135M-Instruct.Q4_1.gguf",
    ),
    ("minilm-l6", "cache/models/minilm-l6"),
];

/// Resolves a model name to its files.
///
/// In order: a built-in name (`smollm2-135m`, `minilm-l6`) under `data_dir`; an existing path
/// (a `.gguf` file, a folder with `config.json`, or a folder holding exactly one `.gguf`); a hub
/// id `owner/name` found in the Hugging Face cache (`$HF_HUB_CACHE`, `$HF_HOME/hub` or
/// `~/.cache/huggingface/hub`). Nothing is downloaded: a hub id missing from the cache is an
/// error saying how to fetch it ([`needs_download`] tells a caller that can download).
pub fn resolve(name: &str, data_dir: &Path) -> Result<ModelSource> {
    if let Some((_, rel)) = BUILTIN.iter().find(|(n, _)| *n == name) {
        let path = data_dir.join(rel);
        if !path.exists() {
            return Err(Error::ModelNotFound {
                name: name.to_owned(),
                reason: format!(
                    "{} does not exist; run `cargo xtask setup` to fetch the defaults",
                    path.display()
                ),
            });
        }
        return from_path(name, &path);
    }
    let path = Path::new(name);
    if path.exists() {
        return from_path(name, path);
    }
    if is_hub_id(name) {
        return from_hf_cache(name, &hf_cache_dirs());
    }
    Err(Error::ModelNotFound {
        name: name.to_owned(),
        reason: format!(
            "not a built-in name ({}), an existing path, or a hub id `owner/name`",
            BUILTIN.map(|(n, _)| n).join(", ")
        ),
    })
}

fn from_path(name: &str, path: &Path) -> Result<ModelSource> {
    if path.is_file() {
        if path.extension().is_some_and(|e| e == "gguf") {
            return Ok(ModelSource::Gguf(path.to_owned()));
        }
        return Err(Error::ModelNotFound {
            name: name.to_owned(),
            reason: "a model file must be a .gguf; otherwise give a Hugging Face folder".into(),
        });
    }
    if path.join("config.json").is_file() {
        return Ok(ModelSource::HfFolder(path.to_owned()));
    }
    let ggufs: Vec<PathBuf> = std::fs::read_dir(path)
        .map_err(|e| Error::io(path, e))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|e| e == "gguf"))
        .collect();
    match ggufs.as_slice() {
        [one] => Ok(ModelSource::Gguf(one.clone())),
        _ => Err(Error::ModelNotFound {
            name: name.to_owned(),
            reason: format!(
                "{} has no config.json and not exactly one .gguf file",
                path.display()
            ),
        }),
    }
}

/// Whether `name` has the form of a hub id, `owner/name` (two non-empty parts, neither
/// starting with a dot).
pub fn is_hub_id(name: &str) -> bool {
    let parts: Vec<&str> = name.split('/').collect();
    parts.len() == 2 && parts.iter().all(|p| !p.is_empty() && !p.starts_with('.'))
}

/// Whether [`resolve`] would look `name` up in the Hugging Face cache and not find it: a hub
/// id that is neither a built-in name nor an existing path, and has no usable snapshot in any
/// cache folder. A caller that can reach the hub downloads it then.
pub fn needs_download(name: &str) -> bool {
    !BUILTIN.iter().any(|(n, _)| *n == name)
        && !Path::new(name).exists()
        && is_hub_id(name)
        && cached_snapshot(name, &hf_cache_dirs()).is_none()
}

/// The Hugging Face hub cache folders to look in, most specific first; downloads go to the
/// first.
pub fn hf_cache_dirs() -> Vec<PathBuf> {
    let mut dirs = Vec::new();
    if let Some(d) = std::env::var_os("HF_HUB_CACHE") {
        dirs.push(PathBuf::from(d));
    }
    if let Some(d) = std::env::var_os("HF_HOME") {
        dirs.push(PathBuf::from(d).join("hub"));
    }
    if let Some(d) = std::env::var_os("HOME") {
        dirs.push(PathBuf::from(d).join(".cache/huggingface/hub"));
    }
    dirs
}

/// Finds `models--owner--name/snapshots/<revision>` (the revision `refs/main` names, else the
/// only one) holding a `config.json`.
fn from_hf_cache(name: &str, dirs: &[PathBuf]) -> Result<ModelSource> {
    if let Some(snapshot) = cached_snapshot(name, dirs) {
        return Ok(ModelSource::HfFolder(snapshot));
    }
    let folder = format!("models--{}", name.replace('/', "--"));
    Err(Error::ModelNotFound {
        name: name.to_owned(),
        reason: format!(
            "not in the Hugging Face cache (looked for {folder} in {}); the concord command \
             downloads it when the hub is reachable, otherwise copy a Hugging Face cache there \
             (`huggingface-cli download {name}` on a machine with network) or pass the model's \
             folder",
            dirs.iter()
                .map(|d| d.display().to_string())
                .collect::<Vec<_>>()
                .join(", ")
        ),
    })
}

/// The snapshot folder of hub id `name` in the first cache folder that has one: the revision
/// `refs/main` names, else the only one, holding a `config.json`.
fn cached_snapshot(name: &str, dirs: &[PathBuf]) -> Option<PathBuf> {
    let folder = format!("models--{}", name.replace('/', "--"));
    for dir in dirs {
        let repo = dir.join(&folder);
        let snapshots = repo.join("snapshots");
        let Ok(entries) = std::fs::read_dir(&snapshots) else {
            continue;
        };
        let main = std::fs::read_to_string(repo.join("refs/main"))
            .ok()
            .map(|s| s.trim().to_owned());
        let mut revs: Vec<PathBuf> = entries.filter_map(|e| e.ok().map(|e| e.path())).collect();
        revs.sort();
        let pick = match main {
            Some(rev) if snapshots.join(&rev).is_dir() => Some(snapshots.join(rev)),
            _ if revs.len() == 1 => revs.pop(),
            _ => None,
        };
        if let Some(snapshot) = pick.filter(|p| p.join("config.json").is_file()) {
            return Some(snapshot);
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_a_cached_snapshot_and_refuses_a_missing_one() {
        let tmp = tempfile::tempdir().unwrap();
        let snap = tmp
            .path()
            .join("models--EleutherAI--pythia-70m-deduped/snapshots/abc123");
        std::fs::create_dir_all(&snap).unwrap();
        std::fs::write(snap.join("config.json"), "{}").unwrap();
        let dirs = [tmp.path().to_owned()];
        let got = from_hf_cache("EleutherAI/pythia-70m-deduped", &dirs).unwrap();
        assert_eq!(got, ModelSource::HfFolder(snap));
        let err = from_hf_cache("EleutherAI/pythia-160m", &dirs)
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("EleutherAI/pythia-160m") && err.contains("pass the model's folder"),
            "{err}"
        );
    }
}
