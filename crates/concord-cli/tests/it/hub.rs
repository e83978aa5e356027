//! Hub downloads against a small HTTP server started by the test (the hub's API and file
//! addresses, with redirects): a model id and a dataset id are downloaded into an empty
//! Hugging Face cache and harvest to the same activations as the local files; offline,
//! unreachable or cut off, they are refused with a one-line error, a non-zero exit and
//! nothing in the cache that looks complete.

use std::collections::{BTreeMap, BTreeSet};
use std::io::{BufRead, BufReader, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::{Arc, Mutex};

use concord_store::{Column, Dataset, Table};

/// The commits the fake hub serves.
const SHA: &str = "0123456789abcdef0123456789abcdef01234567";
const DATA_SHA: &str = "89abcdef0123456789abcdef0123456789abcdef";
const HOOKS: &str = "blocks.0.hook_mlp_out,blocks.1.hook_resid_post";

fn tiny_neox() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../concord-models/tests/goldens/tiny-neox")
}

/// What the server answers for a path.
#[derive(Clone, Debug)]
enum Reply {
    Body(Vec<u8>),
    Redirect(String),
    /// Announces the whole body, sends half, and hangs up.
    CutOff(Vec<u8>),
}

/// Requests the server saw: path (with query) and `Authorization` header.
type Log = Arc<Mutex<Vec<(String, Option<String>)>>>;

/// A fake hub on 127.0.0.1: `routes` gets the endpoint (for absolute addresses) and returns
/// the replies by path (without query); anything else is a 404.
fn serve(routes: impl FnOnce(&str) -> BTreeMap<String, Reply>) -> (String, Log) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let endpoint = format!("http://{}", listener.local_addr().unwrap());
    let routes = routes(&endpoint);
    let log: Log = Arc::default();
    let seen = log.clone();
    std::thread::spawn(move || {
        for stream in listener.incoming().flatten() {
            let _ = answer(stream, &routes, &seen);
        }
    });
    (endpoint, log)
}

fn answer(stream: TcpStream, routes: &BTreeMap<String, Reply>, log: &Log) -> std::io::Result<()> {
    let mut reader = BufReader::new(stream.try_clone()?);
    let mut line = String::new();
    reader.read_line(&mut line)?;
    let target = line
        .split_whitespace()
        .nth(1)
        .unwrap_or_default()
        .to_owned();
    let mut auth = None;
    loop {
        let mut header = String::new();
        if reader.read_line(&mut header)? == 0 || header.trim().is_empty() {
            break;
        }
        if let Some((name, value)) = header.split_once(':')
            && name.eq_ignore_ascii_case("authorization")
        {
            auth = Some(value.trim().to_owned());
        }
    }
    log.lock().unwrap().push((target.clone(), auth));
    let path = target.split('?').next().unwrap_or_default();
    let mut out = stream;
    let head = |status: &str, len: usize, extra: &str| {
        format!("HTTP/1.1 {status}\r\nContent-Length: {len}\r\n{extra}Connection: close\r\n\r\n")
    };
    match routes.get(path) {
        Some(Reply::Body(body)) => {
            out.write_all(head("200 OK", body.len(), "").as_bytes())?;
            out.write_all(body)?;
        }
        Some(Reply::Redirect(to)) => {
            out.write_all(head("302 Found", 0, &format!("Location: {to}\r\n")).as_bytes())?;
        }
        Some(Reply::CutOff(body)) => {
            out.write_all(head("200 OK", body.len(), "").as_bytes())?;
            out.write_all(&body[..body.len() / 2])?;
        }
        None => out.write_all(head("404 Not Found", 0, "").as_bytes())?,
    }
    out.flush()
}

/// The hub's model API answer for files `(name, bytes)`: the commit and the files with sizes
/// (and the LFS sha256 of the weights, as `?blobs=true` gives).
fn model_info(files: &[(&str, &[u8])]) -> Vec<u8> {
    let siblings: Vec<serde_json::Value> = files
        .iter()
        .map(|(name, bytes)| {
            let mut s = serde_json::json!({"rfilename": name, "size": bytes.len()});
            if name.ends_with(".safetensors") || name.ends_with(".bin") {
                s["lfs"] = serde_json::json!({
                    "sha256": concord_core::fsutil::sha256_bytes(bytes),
                    "size": bytes.len(),
                });
            }
            s
        })
        .collect();
    serde_json::to_vec(&serde_json::json!({"sha": SHA, "siblings": siblings})).unwrap()
}

/// The tiny GPT-NeoX checkpoint as `owner/tiny-neox` (weights through a redirect to a "CDN"
/// path, a `pytorch_model.bin` that must not be fetched), a copy whose weights are cut off
/// mid-transfer, and a repository with PyTorch weights only.
fn model_routes() -> BTreeMap<String, Reply> {
    let mut routes = BTreeMap::new();
    let read = |f: &str| std::fs::read(tiny_neox().join(f)).unwrap();
    let names = [
        "config.json",
        "generation_config.json",
        "tokenizer.json",
        "tokenizer_config.json",
        "model.safetensors",
    ];
    let files: Vec<(&str, Vec<u8>)> = names.iter().map(|n| (*n, read(n))).collect();
    let mut listed: Vec<(&str, &[u8])> = files.iter().map(|(n, b)| (*n, b.as_slice())).collect();
    listed.push(("pytorch_model.bin", &b"not to be downloaded"[..]));
    listed.push((".gitattributes", &b"*.bin filter=lfs"[..]));
    for repo in ["tiny-neox", "broken-neox"] {
        routes.insert(
            format!("/api/models/owner/{repo}"),
            Reply::Body(model_info(&listed)),
        );
        for (name, bytes) in &files {
            let path = format!("/owner/{repo}/resolve/{SHA}/{name}");
            let reply = match (*name, repo) {
                ("model.safetensors", "tiny-neox") => {
                    let cdn = format!("/cdn/{repo}/{name}");
                    routes.insert(cdn.clone(), Reply::Body(bytes.clone()));
                    Reply::Redirect(cdn)
                }
                ("model.safetensors", _) => Reply::CutOff(bytes.clone()),
                _ => Reply::Body(bytes.clone()),
            };
            routes.insert(path, reply);
        }
    }
    let bin_only: [(&str, &[u8]); 3] = [
        ("config.json", files[0].1.as_slice()),
        ("tokenizer.json", files[2].1.as_slice()),
        ("pytorch_model.bin", &b"weights"[..]),
    ];
    routes.insert(
        "/api/models/owner/bin-only".into(),
        Reply::Body(model_info(&bin_only)),
    );
    routes
}

/// Parquet files with a `text` column (and an id column, as real datasets have).
fn parquet(docs: &[&str]) -> Vec<u8> {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("x.parquet");
    let table = Table {
        columns: vec![
            ("id".into(), Column::U64((0..docs.len() as u64).collect())),
            (
                "text".into(),
                Column::Str(docs.iter().map(|d| (*d).to_owned()).collect()),
            ),
        ],
        metadata: BTreeMap::new(),
    };
    table.write(&path).unwrap();
    std::fs::read(path).unwrap()
}

/// The dataset `owner/tiny-text`: config `default`, split `train` in two files and `test` in
/// one, listed as the hub's `/parquet` API does (addresses that redirect to the conversion
/// branch's files).
fn dataset_routes(endpoint: &str, train: &[Vec<u8>], test: &[u8]) -> BTreeMap<String, Reply> {
    let mut routes = BTreeMap::new();
    let api = "/api/datasets/owner/tiny-text";
    let mut listing = serde_json::Map::new();
    for (split, files) in [("train", train.to_vec()), ("test", vec![test.to_vec()])] {
        let mut urls = Vec::new();
        for (i, bytes) in files.into_iter().enumerate() {
            let listed = format!("{api}/parquet/default/{split}/{i}.parquet");
            let file = format!(
                "/datasets/owner/tiny-text/resolve/refs%2Fconvert%2Fparquet/default/{split}/{i:04}.parquet"
            );
            routes.insert(listed.clone(), Reply::Redirect(format!("{endpoint}{file}")));
            routes.insert(file, Reply::Body(bytes));
            urls.push(format!("{endpoint}{listed}"));
        }
        let mut splits = serde_json::Map::new();
        splits.insert(split.into(), urls.into());
        listing
            .entry("default")
            .or_insert_with(|| serde_json::Value::Object(serde_json::Map::new()))
            .as_object_mut()
            .unwrap()
            .extend(splits);
    }
    routes.insert(
        format!("{api}/parquet"),
        Reply::Body(serde_json::to_vec(&listing).unwrap()),
    );
    let revision = serde_json::json!({
        "sha": DATA_SHA,
        "siblings": [{"rfilename": "default/train/0000.parquet"}],
    });
    routes.insert(
        format!("{api}/revision/refs%2Fconvert%2Fparquet"),
        Reply::Body(serde_json::to_vec(&revision).unwrap()),
    );
    routes
}

/// Runs `concord` with a Hugging Face environment of the test's own: `HOME`, the cache and the
/// endpoint; `extra` adds or overrides variables.
fn concord(home: &Path, endpoint: &str, extra: &[(&str, &str)], args: &[&str]) -> (bool, String) {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_concord"));
    cmd.args(args)
        .env_remove("HF_HOME")
        .env_remove("HF_HUB_OFFLINE")
        .env_remove("HF_TOKEN")
        .env("HOME", home)
        .env("HF_HUB_CACHE", home.join("hub"))
        .env("HF_ENDPOINT", endpoint)
        .env("CONCORD_PROGRESS", "0")
        // The fake hub is on 127.0.0.1: no proxy of the machine's may stand in between.
        .env("NO_PROXY", "127.0.0.1")
        .env("no_proxy", "127.0.0.1");
    for (k, v) in extra {
        cmd.env(k, v);
    }
    let out = cmd.output().expect("concord runs");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn harvest<'a>(model: &'a str, corpus: &'a str, out: &'a str) -> Vec<&'a str> {
    vec![
        "harvest",
        "--model",
        model,
        "--hooks",
        HOOKS,
        "--corpus",
        corpus,
        "--out",
        out,
        "--context-len",
        "16",
        "--batch",
        "4",
    ]
}

/// Every hook dataset of a store, read whole: rows and activations.
fn activations(store: &Path) -> Vec<concord_store::Batch> {
    HOOKS
        .split(',')
        .map(|hook| {
            let ds = Dataset::open(&store.join(hook)).unwrap();
            ds.read_rows(0..ds.rows()).unwrap()
        })
        .collect()
}

fn corpus_sha(store: &Path) -> String {
    let hook = HOOKS.split(',').next().unwrap();
    Dataset::open(&store.join(hook))
        .unwrap()
        .manifest()
        .corpus_sha256
        .clone()
}

/// Every file under `dir`, relative.
fn files_under(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).into_iter().flatten().flatten() {
            let p = e.path();
            if p.is_dir() {
                stack.push(p);
            } else {
                out.push(p.strip_prefix(dir).unwrap().to_path_buf());
            }
        }
    }
    out.sort();
    out
}

fn error_line(stderr: &str) -> &str {
    stderr
        .lines()
        .find(|l| l.starts_with("error:"))
        .unwrap_or_default()
}

/// A port on 127.0.0.1 that nothing listens on.
fn closed_port() -> String {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    drop(listener);
    format!("http://{addr}")
}

fn write_corpus(dir: &Path) -> PathBuf {
    let path = dir.join("corpus.jsonl");
    let docs = [
        "To be, or not to be, that is the question.",
        "Whether 'tis nobler in the mind to suffer the slings and arrows.",
        "Or to take arms against a sea of troubles, and by opposing end them.",
        "To die, to sleep, no more; and by a sleep to say we end the heart-ache.",
    ];
    let text: String = docs
        .iter()
        .map(|d| serde_json::json!({ "text": d }).to_string() + "\n")
        .collect();
    std::fs::write(&path, text).unwrap();
    path
}

#[test]
fn a_hub_model_downloads_into_the_cache_and_harvests_like_its_folder() {
    let tmp = tempfile::tempdir().unwrap();
    let home = tmp.path();
    let corpus = write_corpus(home);
    let corpus = corpus.to_str().unwrap();
    let (endpoint, log) = serve(|_| model_routes());
    let by_id = home.join("by-id");
    let token = [("HF_TOKEN", "test-token")];
    let (ok, err) = concord(
        home,
        &endpoint,
        &token,
        &harvest("owner/tiny-neox", corpus, by_id.to_str().unwrap()),
    );
    assert!(ok, "{err}");
    let by_folder = home.join("by-folder");
    let folder = tiny_neox();
    let (ok, err) = concord(
        home,
        &endpoint,
        &[],
        &harvest(
            folder.to_str().unwrap(),
            corpus,
            by_folder.to_str().unwrap(),
        ),
    );
    assert!(ok, "{err}");
    assert_eq!(activations(&by_id), activations(&by_folder));
    assert!(!activations(&by_id)[0].rows.is_empty());

    // The standard cache layout, with the files concord reads and nothing else.
    let repo = home.join("hub/models--owner--tiny-neox");
    assert_eq!(
        std::fs::read_to_string(repo.join("refs/main")).unwrap(),
        SHA
    );
    let snapshot = format!("snapshots/{SHA}");
    let mut expected: Vec<PathBuf> = [
        "config.json",
        "model.safetensors",
        "tokenizer.json",
        "tokenizer_config.json",
    ]
    .iter()
    .map(|f| Path::new(&snapshot).join(f))
    .collect();
    expected.push("refs/main".into());
    expected.sort();
    assert_eq!(files_under(&repo), expected);
    assert_eq!(
        std::fs::read(repo.join(&snapshot).join("model.safetensors")).unwrap(),
        std::fs::read(folder.join("model.safetensors")).unwrap()
    );
    // The token went to the hub, the redirect was followed, the .bin was left alone.
    let requests = log.lock().unwrap().clone();
    let api = requests
        .iter()
        .find(|(p, _)| p.starts_with("/api/models/owner/tiny-neox"))
        .expect("the API was asked");
    assert_eq!(api.1.as_deref(), Some("Bearer test-token"));
    assert!(
        requests
            .iter()
            .any(|(p, _)| p == "/cdn/tiny-neox/model.safetensors")
    );
    assert!(
        !requests
            .iter()
            .any(|(p, _)| p.contains("pytorch_model.bin"))
    );

    // Cached, the id needs no network any more.
    let again = home.join("again");
    let (ok, err) = concord(
        home,
        &closed_port(),
        &[("HF_HUB_OFFLINE", "1")],
        &harvest("owner/tiny-neox", corpus, again.to_str().unwrap()),
    );
    assert!(ok, "{err}");
    assert_eq!(activations(&again), activations(&by_folder));
}

#[test]
fn a_hub_dataset_downloads_into_the_cache_and_reads_like_its_files() {
    let tmp = tempfile::tempdir().unwrap();
    let home = tmp.path();
    let train = [
        parquet(&[
            "Now is the winter of our discontent",
            "Made glorious summer by this sun of York;",
            "And all the clouds that lour'd upon our house",
        ]),
        parquet(&[
            "In the deep bosom of the ocean buried.",
            "Now are our brows bound with victorious wreaths;",
        ]),
    ];
    let test = parquet(&[
        "Our bruised arms hung up for monuments;",
        "Grim-visaged war",
    ]);
    let (endpoint, log) = serve(|ep| dataset_routes(ep, &train, &test));
    let model = tiny_neox();
    let model = model.to_str().unwrap();
    let by_id = home.join("by-id");
    let (ok, err) = concord(
        home,
        &endpoint,
        &[],
        &harvest(model, "owner/tiny-text", by_id.to_str().unwrap()),
    );
    assert!(ok, "{err}");
    // The same two files in a local folder: the same documents, activations and identity.
    let local = home.join("local");
    std::fs::create_dir(&local).unwrap();
    for (i, bytes) in train.iter().enumerate() {
        std::fs::write(local.join(format!("part-{i}.parquet")), bytes).unwrap();
    }
    let by_folder = home.join("by-folder");
    let (ok, err) = concord(
        home,
        &endpoint,
        &[],
        &harvest(model, local.to_str().unwrap(), by_folder.to_str().unwrap()),
    );
    assert!(ok, "{err}");
    let acts = activations(&by_id);
    assert_eq!(acts, activations(&by_folder));
    let docs: BTreeSet<u64> = acts[0].rows.iter().map(|r| r.doc).collect();
    assert_eq!(
        docs,
        (0..5).collect::<BTreeSet<u64>>(),
        "all documents of both files, in order"
    );
    assert_eq!(corpus_sha(&by_id), corpus_sha(&by_folder));

    let repo = home.join("hub/datasets--owner--tiny-text");
    assert_eq!(
        std::fs::read_to_string(repo.join("refs/convert/parquet")).unwrap(),
        DATA_SHA
    );
    let split = format!("snapshots/{DATA_SHA}/default/train");
    let mut expected = vec![
        PathBuf::from("refs/convert/parquet"),
        Path::new(&split).join("0000.parquet"),
        Path::new(&split).join("0001.parquet"),
    ];
    expected.sort();
    assert_eq!(files_under(&repo), expected);

    // Another split by name; a config that does not exist is refused with the ones that do.
    let test_store = home.join("test-split");
    let (ok, err) = concord(
        home,
        &endpoint,
        &[],
        &harvest(
            model,
            "owner/tiny-text:default/test",
            test_store.to_str().unwrap(),
        ),
    );
    assert!(ok, "{err}");
    let docs: BTreeSet<u64> = activations(&test_store)[0]
        .rows
        .iter()
        .map(|r| r.doc)
        .collect();
    assert_eq!(docs, (0..2).collect::<BTreeSet<u64>>());
    let (ok, err) = concord(
        home,
        &endpoint,
        &[],
        &harvest(
            model,
            "owner/tiny-text:nope",
            home.join("x").to_str().unwrap(),
        ),
    );
    assert!(!ok);
    assert!(
        error_line(&err).contains("no config \"nope\"")
            && error_line(&err).contains("configs: default"),
        "{err}"
    );

    // Cached, the dataset needs no network: no request reaches the hub.
    let before = log.lock().unwrap().len();
    let again = home.join("again");
    let (ok, err) = concord(
        home,
        &endpoint,
        &[("HF_HUB_OFFLINE", "1")],
        &harvest(model, "owner/tiny-text", again.to_str().unwrap()),
    );
    assert!(ok, "{err}");
    assert_eq!(activations(&again), acts);
    assert_eq!(log.lock().unwrap().len(), before);
}

#[test]
fn offline_unreachable_or_cut_off_downloads_are_refused_and_leave_nothing() {
    let tmp = tempfile::tempdir().unwrap();
    let home = tmp.path();
    let corpus = write_corpus(home);
    let corpus = corpus.to_str().unwrap();
    let model = tiny_neox();
    let model = model.to_str().unwrap();
    let out = home.join("store");
    let out = out.to_str().unwrap();
    let check = |endpoint: &str, extra: &[(&str, &str)], args: &[&str], needles: &[&str]| {
        let (ok, err) = concord(home, endpoint, extra, args);
        assert!(!ok, "{args:?} succeeded");
        let line = error_line(&err);
        for needle in needles {
            assert!(line.contains(needle), "{needle:?} not in: {err}");
        }
    };

    // Nothing listens at the endpoint.
    let closed = closed_port();
    let model_refusal =
        format!("cannot download owner/tiny-neox from {closed} (network unreachable");
    check(
        &closed,
        &[],
        &harvest("owner/tiny-neox", corpus, out),
        &[
            model_refusal.as_str(),
            "copy a Hugging Face cache here or pass a local model folder",
        ],
    );
    let data_refusal =
        format!("cannot download owner/tiny-text from {closed} (network unreachable");
    check(
        &closed,
        &[],
        &harvest(model, "owner/tiny-text", out),
        &[data_refusal.as_str(), "pass a local corpus file or folder"],
    );

    // HF_HUB_OFFLINE: no request at all, even with a hub there.
    let (endpoint, log) = serve(|_| model_routes());
    check(
        &endpoint,
        &[("HF_HUB_OFFLINE", "1")],
        &harvest("owner/tiny-neox", corpus, out),
        &["owner/tiny-neox", "HF_HUB_OFFLINE"],
    );
    assert!(log.lock().unwrap().is_empty());

    // The weights break off mid-transfer; a repository has PyTorch weights only.
    check(
        &endpoint,
        &[],
        &harvest("owner/broken-neox", corpus, out),
        &["cannot download owner/broken-neox", "model.safetensors"],
    );
    check(
        &endpoint,
        &[],
        &harvest("owner/bin-only", corpus, out),
        &["owner/bin-only", "safetensors"],
    );
    assert!(
        log.lock().unwrap().iter().any(|(p, _)| p.ends_with(
            "broken-neox/resolve/0123456789abcdef0123456789abcdef01234567/model.safetensors"
        )),
        "the cut-off download was tried"
    );

    // No file anywhere in the cache (no snapshot, no ref, no staging), and no store.
    assert_eq!(files_under(&home.join("hub")), Vec::<PathBuf>::new());
    assert!(!Path::new(out).exists());
}
