//! Hugging Face hub downloads: a model id or a dataset id missing from the local Hugging Face
//! cache is downloaded into it when the hub answers, and refused with a one-line message that
//! names the id and what to do when it does not (or when `HF_HUB_OFFLINE=1`).
//!
//! The models crate only reads the cache; this module is the one place that reaches the
//! network. It writes the standard cache layout (`$HF_HUB_CACHE`, else `$HF_HOME/hub`, else
//! `~/.cache/huggingface/hub`), so a cache filled here serves `huggingface_hub` too and a cache
//! copied from elsewhere serves concord:
//!
//! - Model `owner/name`: `GET {endpoint}/api/models/owner/name` gives the commit (`sha`) and
//!   the files; config, tokenizer and safetensors weights (one file, or an index and its
//!   shards) come from `{endpoint}/owner/name/resolve/{sha}/{file}` into
//!   `models--owner--name/snapshots/{sha}/`, and `refs/main` names the commit.
//! - Dataset `owner/name[:config[/split]]`: `GET {endpoint}/api/datasets/owner/name/parquet`
//!   lists the hub's parquet conversion by config and split (`{config: {split: [url]}}`); the
//!   config is the one asked for, else `default`, else the only one, and the split `train`
//!   unless asked. The commit of the conversion branch comes from
//!   `GET {endpoint}/api/datasets/owner/name/revision/refs%2Fconvert%2Fparquet`; the files go
//!   to `datasets--owner--name/snapshots/{sha}/{config}/{split}/0000.parquet`, ... (in the
//!   listing's order), and `refs/convert/parquet` names the commit. The corpus reader reads
//!   that folder's files in name order.
//!
//! Nothing half-written looks complete: every file is downloaded into a staging folder
//! (`<repo>/.incomplete/<sha>...<pid>/`, outside `snapshots/`), checked against its announced
//! size (and its LFS sha256 where the hub gives one), and the folder is renamed into place
//! once all files are there; the ref is written last. A failed download removes its staging
//! folder; one left by a killed process is removed by the next download of that repository.
//! `HF_TOKEN` is sent as a bearer token (kept across redirects to the same host only, so signed
//! CDN addresses never see it); `HF_ENDPOINT` points at a mirror.

use std::collections::{BTreeMap, BTreeSet};
use std::fs::File;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context, Result, anyhow, bail};
use concord_models::resolve::{hf_cache_dirs, is_hub_id, needs_download};
use concord_store::{Corpus, CorpusFormat};
use serde::Deserialize;

use crate::progress::Progress;

/// Files above this size get a progress bar.
const BAR_BYTES: u64 = 8 << 20;

/// Downloads hub model `name` into the Hugging Face cache when it is a hub id that neither
/// names a built-in model or an existing path nor is cached already; otherwise does nothing.
/// Then `concord_models::resolve` finds it.
pub fn ensure_model(name: &str) -> Result<()> {
    if !needs_download(name) {
        return Ok(());
    }
    let hub = Hub::new(
        name,
        "copy a Hugging Face cache here or pass a local model folder",
    )?;
    hub.download_model()
}

/// Opens `--corpus`: an existing file or folder, else a Hugging Face dataset id
/// `owner/name[:config[/split]]`, read from the cache or downloaded into it.
pub fn open_corpus(spec: &Path) -> Result<Corpus> {
    if spec.exists() || CorpusFormat::of(spec).is_some() {
        // A path with a corpus extension is a file even when missing: its error names it.
        return Ok(Corpus::open(spec)?);
    }
    let Some(ds) = spec.to_str().and_then(DatasetSpec::parse) else {
        return Ok(Corpus::open(spec)?);
    };
    let dir = match cached_split(&ds, &hf_cache_dirs()) {
        Some(dir) => dir,
        None => {
            let hub = Hub::new(
                &ds.id,
                "copy a Hugging Face cache here or pass a local corpus file or folder",
            )?;
            hub.download_split(&ds)?
        }
    };
    Corpus::open(&dir).with_context(|| format!("dataset {}", ds.id))
}

/// A dataset id with an optional config and split: `owner/name[:config[/split]]`.
#[derive(Clone, Debug, PartialEq, Eq)]
struct DatasetSpec {
    id: String,
    config: Option<String>,
    split: Option<String>,
}

impl DatasetSpec {
    fn parse(spec: &str) -> Option<DatasetSpec> {
        let (id, rest) = match spec.split_once(':') {
            Some((id, rest)) => (id, Some(rest)),
            None => (spec, None),
        };
        if !is_hub_id(id) {
            return None;
        }
        let (config, split) = match rest.map(|r| r.split_once('/').unwrap_or((r, ""))) {
            Some((c, s)) => (Some(c), Some(s)),
            None => (None, None),
        };
        let part = |p: Option<&str>| -> Option<Option<String>> {
            match p {
                None | Some("") => Some(None),
                Some(p) if safe_name(p) => Some(Some(p.to_owned())),
                Some(_) => None,
            }
        };
        Some(DatasetSpec {
            id: id.to_owned(),
            config: part(config)?,
            split: part(split)?,
        })
    }
}

/// A single path component that is safe to write under the cache: no separators, no `..`.
fn safe_name(s: &str) -> bool {
    !s.is_empty() && !s.starts_with('.') && !s.contains(['/', '\\', ':'])
}

/// A commit hash as the hub gives it: hex digits only (it becomes a folder name).
fn checked_sha(id: &str, sha: &str) -> Result<()> {
    if sha.len() < 7 || !sha.bytes().all(|b| b.is_ascii_hexdigit()) {
        bail!("the hub answered an invalid commit hash {sha:?} for {id}");
    }
    Ok(())
}

/// `models--owner--name` or `datasets--owner--name`.
fn repo_folder(kind: &str, id: &str) -> String {
    format!("{kind}--{}", id.replace('/', "--"))
}

/// The cached split folder of `ds`: the commit `refs/convert/parquet` names, the config asked
/// for (else `default`, else the only one), the split asked for (else `train`).
fn cached_split(ds: &DatasetSpec, dirs: &[PathBuf]) -> Option<PathBuf> {
    for dir in dirs {
        let repo = dir.join(repo_folder("datasets", &ds.id));
        let Ok(rev) = std::fs::read_to_string(repo.join("refs/convert/parquet")) else {
            continue;
        };
        let snapshot = repo.join("snapshots").join(rev.trim());
        let config = match &ds.config {
            Some(c) => c.clone(),
            None if snapshot.join("default").is_dir() => "default".to_owned(),
            None => {
                let Ok(entries) = std::fs::read_dir(&snapshot) else {
                    continue;
                };
                let configs: Vec<PathBuf> = entries
                    .filter_map(|e| e.ok().map(|e| e.path()))
                    .filter(|p| p.is_dir())
                    .collect();
                match configs.as_slice() {
                    [one] => match one.file_name() {
                        Some(name) => name.to_string_lossy().into_owned(),
                        None => continue,
                    },
                    _ => continue,
                }
            }
        };
        let split = snapshot
            .join(config)
            .join(ds.split.as_deref().unwrap_or("train"));
        if split.is_dir() {
            return Some(split);
        }
    }
    None
}

/// The repository information the hub's API gives (`/api/models/{id}`,
/// `/api/datasets/{id}/revision/{rev}`): the commit and the files.
#[derive(Debug, Deserialize)]
struct RepoInfo {
    sha: String,
    #[serde(default)]
    siblings: Vec<Sibling>,
}

#[derive(Debug, Deserialize)]
struct Sibling {
    rfilename: String,
    #[serde(default)]
    size: Option<u64>,
    #[serde(default)]
    lfs: Option<Lfs>,
}

#[derive(Debug, Deserialize)]
struct Lfs {
    sha256: String,
    size: u64,
}

/// `model.safetensors.index.json`: which shard holds each tensor.
#[derive(Debug, Deserialize)]
struct SafetensorsIndex {
    weight_map: BTreeMap<String, String>,
}

/// What a download checks a file against, where the hub says.
#[derive(Clone, Debug, Default)]
struct Expected {
    size: Option<u64>,
    sha256: Option<String>,
}

/// A client for one repository: the endpoint, the token, and how to phrase a failure.
#[derive(Debug)]
struct Hub {
    id: String,
    endpoint: String,
    token: Option<String>,
    agent: ureq::Agent,
    /// What the user can do when the hub cannot be reached.
    advice: &'static str,
}

impl Hub {
    /// A client for `id`, or the offline refusal when `HF_HUB_OFFLINE` is set.
    fn new(id: &str, advice: &'static str) -> Result<Hub> {
        let endpoint = std::env::var("HF_ENDPOINT")
            .ok()
            .filter(|e| !e.trim().is_empty())
            .map_or_else(
                || "https://huggingface.co".to_owned(),
                |e| e.trim().trim_end_matches('/').to_owned(),
            );
        let dirs = hf_cache_dirs()
            .iter()
            .map(|d| d.display().to_string())
            .collect::<Vec<_>>()
            .join(", ");
        if std::env::var("HF_HUB_OFFLINE").is_ok_and(|v| {
            matches!(
                v.trim().to_ascii_lowercase().as_str(),
                "1" | "true" | "yes" | "on"
            )
        }) {
            bail!(
                "{id} is not in the Hugging Face cache ({dirs}) and HF_HUB_OFFLINE is set, so it \
                 is not downloaded; {advice}"
            );
        }
        let token = std::env::var("HF_TOKEN")
            .ok()
            .map(|t| t.trim().to_owned())
            .filter(|t| !t.is_empty());
        let config = ureq::Agent::config_builder()
            .user_agent(concat!("concord/", env!("CARGO_PKG_VERSION")))
            .timeout_connect(Some(Duration::from_secs(20)))
            .timeout_recv_response(Some(Duration::from_secs(60)))
            .timeout_per_read(Some(Duration::from_secs(60)))
            .redirect_auth_headers(ureq::config::RedirectAuthHeaders::SameHost)
            .build();
        Ok(Hub {
            id: id.to_owned(),
            endpoint,
            token,
            agent: config.into(),
            advice,
        })
    }

    /// The one-line failure for a request that did not succeed.
    fn failure(&self, url: &str, e: &ureq::Error) -> anyhow::Error {
        let reason = match e {
            ureq::Error::StatusCode(code @ (401 | 403)) => format!(
                "HTTP {code} for {url}: the repository does not exist, or is gated or private \
                 (set HF_TOKEN to a token that may read it)"
            ),
            ureq::Error::StatusCode(404) => {
                format!("HTTP 404 for {url}: no such repository or file")
            }
            ureq::Error::StatusCode(code) => format!("HTTP {code} for {url}"),
            other => format!("network unreachable: {other}"),
        };
        anyhow!(
            "cannot download {} from {} ({reason}); {}",
            self.id,
            self.endpoint,
            self.advice
        )
    }

    fn get(&self, url: &str) -> Result<ureq::http::Response<ureq::Body>> {
        let mut request = self.agent.get(url);
        if let Some(token) = &self.token {
            request = request.header("Authorization", format!("Bearer {token}"));
        }
        request.call().map_err(|e| self.failure(url, &e))
    }

    fn json<T: serde::de::DeserializeOwned>(&self, url: &str) -> Result<T> {
        let text = self
            .get(url)?
            .body_mut()
            .read_to_string()
            .map_err(|e| self.failure(url, &e))?;
        serde_json::from_str(&text).with_context(|| {
            format!(
                "cannot download {}: {url} did not answer the JSON the hub API gives",
                self.id
            )
        })
    }

    /// Downloads `url` to `dest` (through `dest.part`), checking it against `expected`.
    fn download(&self, url: &str, dest: &Path, expected: &Expected) -> Result<()> {
        let name = dest
            .file_name()
            .map_or_else(String::new, |n| n.to_string_lossy().into_owned());
        let response = self.get(url)?;
        let announced: Option<u64> = response
            .headers()
            .get("content-length")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse().ok());
        let total = expected.size.or(announced);
        let big = total.is_none_or(|t| t >= BAR_BYTES);
        let bar = if big {
            Progress::bytes(total, &format!("download {name}"))
        } else {
            Progress::hidden()
        };
        if big {
            tracing::info!(
                "downloading {} {name} ({})",
                self.id,
                total.map_or_else(
                    || "size unknown".to_owned(),
                    |t| format!("{:.1} MB", t as f64 / 1e6)
                )
            );
        }
        let part = dest.with_file_name(format!("{name}.part"));
        let mut file =
            File::create(&part).with_context(|| format!("cannot create {}", part.display()))?;
        let mut reader = response.into_body().into_reader();
        let mut buf = vec![0u8; 1 << 20];
        let mut got = 0u64;
        loop {
            let n = match reader.read(&mut buf) {
                Ok(0) => break,
                Ok(n) => n,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                Err(e) => {
                    bar.finish();
                    return Err(anyhow!(
                        "cannot download {} from {} (the connection broke after {got} bytes of \
                         {name}: {e}); {}",
                        self.id,
                        self.endpoint,
                        self.advice
                    ));
                }
            };
            file.write_all(&buf[..n])
                .with_context(|| format!("cannot write {}", part.display()))?;
            got += n as u64;
            bar.set(got);
        }
        bar.finish();
        file.sync_all()
            .with_context(|| format!("cannot write {}", part.display()))?;
        drop(file);
        if let Some(size) = total
            && size != got
        {
            bail!(
                "cannot download {}: {name} has {got} bytes, the hub announced {size}; try again",
                self.id
            );
        }
        if let Some(sha) = &expected.sha256 {
            let got = concord_core::fsutil::sha256_file(&part)?;
            if !got.eq_ignore_ascii_case(sha) {
                bail!(
                    "cannot download {}: {name} has sha256 {got}, the hub announced {sha}; try \
                     again",
                    self.id
                );
            }
        }
        std::fs::rename(&part, dest)
            .with_context(|| format!("cannot rename {} to {}", part.display(), dest.display()))
    }

    /// Downloads the model's config, tokenizer and safetensors weights into the cache.
    fn download_model(&self) -> Result<()> {
        let id = &self.id;
        let info: RepoInfo = self.json(&format!("{}/api/models/{id}?blobs=true", self.endpoint))?;
        checked_sha(id, &info.sha)?;
        let files: BTreeMap<&str, &Sibling> = info
            .siblings
            .iter()
            .map(|s| (s.rfilename.as_str(), s))
            .collect();
        for needed in ["config.json", "tokenizer.json"] {
            if !files.contains_key(needed) {
                bail!(
                    "{id} on the hub has no {needed}; concord reads Hugging Face models with \
                     config.json, tokenizer.json and safetensors weights"
                );
            }
        }
        let mut wanted: Vec<String> = ["config.json", "tokenizer.json"].map(String::from).into();
        wanted.extend(
            ["tokenizer_config.json", "special_tokens_map.json"]
                .into_iter()
                .filter(|f| files.contains_key(f))
                .map(String::from),
        );
        let index = "model.safetensors.index.json";
        let sharded = !files.contains_key("model.safetensors") && files.contains_key(index);
        if files.contains_key("model.safetensors") {
            wanted.push("model.safetensors".to_owned());
        } else if !sharded {
            let torch = files
                .keys()
                .any(|f| f.ends_with(".bin") || f.ends_with(".pt") || f.ends_with(".pth"));
            if torch {
                bail!(
                    "{id} on the hub has only PyTorch weights (pytorch_model.bin); concord needs \
                     safetensors (model.safetensors): convert the checkpoint (transformers' \
                     save_pretrained writes safetensors) and pass its folder"
                );
            }
            bail!("{id} on the hub has no model.safetensors or {index}");
        }

        let repo = self.repo_dir("models")?;
        let stage = Stage::new(&repo, &info.sha)?;
        let url = |file: &str| format!("{}/{id}/resolve/{}/{file}", self.endpoint, info.sha);
        let expected = |file: &str| {
            files
                .get(file)
                .map_or_else(Expected::default, |s| Expected {
                    size: s.lfs.as_ref().map(|l| l.size).or(s.size),
                    sha256: s.lfs.as_ref().map(|l| l.sha256.clone()),
                })
        };
        if sharded {
            self.download(&url(index), &stage.dir.join(index), &expected(index))?;
            let path = stage.dir.join(index);
            let text = std::fs::read_to_string(&path)
                .with_context(|| format!("cannot read {}", path.display()))?;
            let parsed: SafetensorsIndex = serde_json::from_str(&text)
                .with_context(|| format!("{id}: {index} is not a safetensors index"))?;
            let shards: BTreeSet<String> = parsed.weight_map.into_values().collect();
            for shard in shards {
                if !safe_name(&shard) {
                    bail!("{id}: {index} names an unexpected shard {shard:?}");
                }
                wanted.push(shard);
            }
        }
        for file in &wanted {
            self.download(&url(file), &stage.dir.join(file), &expected(file))?;
        }
        let snapshot = repo.join("snapshots").join(&info.sha);
        stage.publish(&snapshot)?;
        write_ref(&repo.join("refs/main"), &info.sha)?;
        tracing::info!("downloaded {id} into {}", snapshot.display());
        Ok(())
    }

    /// Downloads one split of the dataset's parquet conversion into the cache; returns its
    /// folder.
    fn download_split(&self, ds: &DatasetSpec) -> Result<PathBuf> {
        let id = &self.id;
        let listing: BTreeMap<String, BTreeMap<String, Vec<String>>> =
            self.json(&format!("{}/api/datasets/{id}/parquet", self.endpoint))?;
        let names = |keys: Vec<&String>| {
            keys.iter()
                .map(|k| k.as_str())
                .collect::<Vec<_>>()
                .join(", ")
        };
        let config = match &ds.config {
            Some(c) if listing.contains_key(c) => c.clone(),
            Some(c) => bail!(
                "dataset {id} has no config {c:?} in its parquet conversion (configs: {})",
                names(listing.keys().collect())
            ),
            None if listing.contains_key("default") => "default".to_owned(),
            None if listing.len() == 1 => listing.keys().next().cloned().unwrap_or_default(),
            None => bail!(
                "dataset {id} has several configs ({}); pick one: --corpus {id}:CONFIG[/SPLIT]",
                names(listing.keys().collect())
            ),
        };
        let splits = &listing[&config];
        let split = ds.split.clone().unwrap_or_else(|| "train".to_owned());
        let Some(urls) = splits.get(&split).filter(|u| !u.is_empty()) else {
            bail!(
                "dataset {id} config {config} has no split {split:?} (splits: {}); pick one: \
                 --corpus {id}:{config}/SPLIT",
                names(splits.keys().collect())
            );
        };
        if !safe_name(&config) || !safe_name(&split) {
            bail!("dataset {id}: unexpected config or split name {config:?}/{split:?}");
        }
        let info: RepoInfo = self.json(&format!(
            "{}/api/datasets/{id}/revision/refs%2Fconvert%2Fparquet",
            self.endpoint
        ))?;
        checked_sha(id, &info.sha)?;
        let repo = self.repo_dir("datasets")?;
        let stage = Stage::new(&repo, &format!("{}.{config}.{split}", info.sha))?;
        tracing::info!(
            "downloading dataset {id} ({config}/{split}: {} parquet files)",
            urls.len()
        );
        for (i, url) in urls.iter().enumerate() {
            let file = stage.dir.join(format!("{i:04}.parquet"));
            self.download(url, &file, &Expected::default())?;
        }
        let dest = repo
            .join("snapshots")
            .join(&info.sha)
            .join(&config)
            .join(&split);
        stage.publish(&dest)?;
        write_ref(&repo.join("refs/convert/parquet"), &info.sha)?;
        tracing::info!("downloaded dataset {id} into {}", dest.display());
        Ok(dest)
    }

    /// `<cache>/models--owner--name` (or `datasets--`), in the first cache folder.
    fn repo_dir(&self, kind: &str) -> Result<PathBuf> {
        let cache = hf_cache_dirs().into_iter().next().context(
            "no Hugging Face cache folder: set HF_HUB_CACHE or HF_HOME (or HOME) to download",
        )?;
        Ok(cache.join(repo_folder(kind, &self.id)))
    }
}

/// A staging folder for one download, removed on drop unless published.
#[derive(Debug)]
struct Stage {
    dir: PathBuf,
    published: bool,
}

impl Stage {
    /// `<repo>/.incomplete/<key>.<pid>`, after removing those of processes that are gone.
    fn new(repo: &Path, key: &str) -> Result<Stage> {
        let incomplete = repo.join(".incomplete");
        remove_stale(&incomplete);
        let dir = incomplete.join(format!("{key}.{}", std::process::id()));
        if dir.exists() {
            std::fs::remove_dir_all(&dir)
                .with_context(|| format!("cannot remove {}", dir.display()))?;
        }
        std::fs::create_dir_all(&dir)
            .with_context(|| format!("cannot create {}", dir.display()))?;
        Ok(Stage {
            dir,
            published: false,
        })
    }

    /// Moves the staged files to `dest`: the folder at once, or file by file where `dest`
    /// exists already (another process finished the same download first; each rename replaces
    /// a file with an identical one).
    fn publish(mut self, dest: &Path) -> Result<()> {
        let parent = dest.parent().context("a snapshot folder has a parent")?;
        std::fs::create_dir_all(parent)
            .with_context(|| format!("cannot create {}", parent.display()))?;
        if std::fs::rename(&self.dir, dest).is_err() {
            let entries = std::fs::read_dir(&self.dir)
                .with_context(|| format!("cannot read {}", self.dir.display()))?;
            for entry in entries {
                let from = entry
                    .with_context(|| format!("cannot read {}", self.dir.display()))?
                    .path();
                let to = dest.join(from.file_name().context("a file name")?);
                std::fs::rename(&from, &to).with_context(|| {
                    format!("cannot move {} to {}", from.display(), to.display())
                })?;
            }
            let _ = std::fs::remove_dir(&self.dir);
        }
        self.published = true;
        if let Some(incomplete) = self.dir.parent() {
            // Only succeeds when no other download is staging there.
            let _ = std::fs::remove_dir(incomplete);
        }
        Ok(())
    }
}

impl Drop for Stage {
    fn drop(&mut self) {
        if !self.published {
            let _ = std::fs::remove_dir_all(&self.dir);
            if let Some(incomplete) = self.dir.parent() {
                let _ = std::fs::remove_dir(incomplete);
            }
        }
    }
}

/// Removes staging folders `<key>.<pid>` whose process is gone (Linux, through `/proc`; a
/// no-op elsewhere).
fn remove_stale(incomplete: &Path) {
    if !Path::new("/proc/self").exists() {
        return;
    }
    let Ok(entries) = std::fs::read_dir(incomplete) else {
        return;
    };
    for entry in entries.flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        let pid = name.rsplit('.').next().and_then(|p| p.parse::<u32>().ok());
        if let Some(pid) = pid
            && pid != std::process::id()
            && !Path::new("/proc").join(pid.to_string()).exists()
        {
            let _ = std::fs::remove_dir_all(entry.path());
        }
    }
}

/// Writes a ref file (`refs/main`) atomically: the last step of a download.
fn write_ref(path: &Path, sha: &str) -> Result<()> {
    let dir = path.parent().context("a ref has a parent folder")?;
    std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    let tmp = dir.join(format!(
        ".{}.{}.tmp",
        path.file_name()
            .map_or_else(String::new, |n| n.to_string_lossy().into_owned()),
        std::process::id()
    ));
    std::fs::write(&tmp, sha).with_context(|| format!("cannot write {}", tmp.display()))?;
    std::fs::rename(&tmp, path).with_context(|| format!("cannot write {}", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dataset_ids_parse_with_optional_config_and_split() {
        let check = |spec: &str, expected: Option<(&str, Option<&str>, Option<&str>)>| {
            let got = DatasetSpec::parse(spec);
            let expected = expected.map(|(id, c, s)| DatasetSpec {
                id: id.to_owned(),
                config: c.map(str::to_owned),
                split: s.map(str::to_owned),
            });
            assert_eq!(got, expected, "{spec}");
        };
        check(
            "Elriggs/openwebtext-100k",
            Some(("Elriggs/openwebtext-100k", None, None)),
        );
        check("o/n:en", Some(("o/n", Some("en"), None)));
        check("o/n:en/test", Some(("o/n", Some("en"), Some("test"))));
        check("o/n:/test", Some(("o/n", None, Some("test"))));
        check("o/n:", Some(("o/n", None, None)));
        check("shakespeare", None);
        check("a/b/c", None);
        check("o/n:../x", None);
        check("o/n:en/a/b", None);
        check("./n", None);
    }

    #[test]
    fn a_cached_split_is_found_through_its_ref() {
        let tmp = tempfile::tempdir().unwrap();
        let repo = tmp.path().join("datasets--o--n");
        let split = repo.join("snapshots/abc1234/default/train");
        std::fs::create_dir_all(&split).unwrap();
        std::fs::create_dir_all(repo.join("snapshots/abc1234/other/train")).unwrap();
        let dirs = [tmp.path().to_owned()];
        let spec = |s: &str| DatasetSpec::parse(s).unwrap();
        // No ref: an incomplete download, not a cached dataset.
        assert_eq!(cached_split(&spec("o/n"), &dirs), None);
        write_ref(&repo.join("refs/convert/parquet"), "abc1234").unwrap();
        assert_eq!(cached_split(&spec("o/n"), &dirs), Some(split.clone()));
        assert_eq!(
            cached_split(&spec("o/n:other"), &dirs),
            Some(repo.join("snapshots/abc1234/other/train"))
        );
        assert_eq!(cached_split(&spec("o/n:default/test"), &dirs), None);
    }

    #[test]
    fn a_failed_stage_leaves_nothing_and_stale_stages_are_removed() {
        let tmp = tempfile::tempdir().unwrap();
        let stale = tmp.path().join(".incomplete/abc.4294967");
        std::fs::create_dir_all(&stale).unwrap();
        let stage = Stage::new(tmp.path(), "abc").unwrap();
        assert!(
            !stale.exists(),
            "a stage of a process that is gone is removed"
        );
        std::fs::write(stage.dir.join("config.json"), "{}").unwrap();
        drop(stage);
        assert!(!tmp.path().join(".incomplete").exists());
        let stage = Stage::new(tmp.path(), "abc").unwrap();
        std::fs::write(stage.dir.join("config.json"), "{}").unwrap();
        let dest = tmp.path().join("snapshots/abc");
        stage.publish(&dest).unwrap();
        assert!(dest.join("config.json").is_file());
        assert!(!tmp.path().join(".incomplete").exists());
    }
}
