//! File utilities every writer in the workspace uses: atomic writes and sha256 digests.
//!
//! Outputs are written under a temporary name in the destination folder and renamed into
//! place, so a killed run never leaves a file that looks complete when it is not.

use std::fs::{self, File};
use std::io::{self, BufWriter, Read, Write};
use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};

use crate::{Error, Result};

/// The temporary sibling `path` is written under before it is renamed into place.
pub fn temp_path(path: &Path) -> PathBuf {
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    path.with_file_name(format!(".{name}.tmp-{}", std::process::id()))
}

/// Writes a file atomically: `write` fills a temporary sibling, which is synced and renamed
/// onto `path` only when `write` succeeds. On error the temporary file is removed.
pub fn write_atomic<F>(path: &Path, write: F) -> Result<()>
where
    F: FnOnce(&mut BufWriter<File>) -> io::Result<()>,
{
    if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
        fs::create_dir_all(parent).map_err(|e| Error::io(parent, e))?;
    }
    let tmp = temp_path(path);
    let result = (|| {
        let mut out = BufWriter::new(File::create(&tmp)?);
        write(&mut out)?;
        let file = out.into_inner().map_err(io::IntoInnerError::into_error)?;
        file.sync_all()?;
        fs::rename(&tmp, path)
    })();
    if let Err(e) = result {
        let _ = fs::remove_file(&tmp);
        return Err(Error::io(path, e));
    }
    Ok(())
}

/// Writes `bytes` to `path` atomically.
pub fn write_bytes_atomic(path: &Path, bytes: &[u8]) -> Result<()> {
    write_atomic(path, |w| w.write_all(bytes))
}

/// Serialises `value` as pretty JSON (with a final newline) and writes it atomically.
pub fn write_json_atomic<T: serde::Serialize>(path: &Path, value: &T) -> Result<()> {
    let mut text = serde_json::to_string_pretty(value).map_err(|source| Error::Json {
        path: path.to_owned(),
        source,
    })?;
    text.push('\n');
    write_bytes_atomic(path, text.as_bytes())
}

/// Reads and parses a JSON file, naming the file in any error.
pub fn read_json<T: serde::de::DeserializeOwned>(path: &Path) -> Result<T> {
    let text = fs::read_to_string(path).map_err(|e| Error::io(path, e))?;
    serde_json::from_str(&text).map_err(|source| Error::Json {
        path: path.to_owned(),
        source,
    })
}

/// The sha256 of a file's contents, as lowercase hex.
pub fn sha256_file(path: &Path) -> Result<String> {
    let mut file = File::open(path).map_err(|e| Error::io(path, e))?;
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = file.read(&mut buf).map_err(|e| Error::io(path, e))?;
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
    }
    Ok(hex::encode(hasher.finalize()))
}

/// Removes the file at `path`; one that is already gone is fine.
pub fn remove_file_if_present(path: &Path) -> Result<()> {
    match fs::remove_file(path) {
        Err(e) if e.kind() != io::ErrorKind::NotFound => Err(Error::io(path, e)),
        _ => Ok(()),
    }
}

/// The sha256 of a byte slice, as lowercase hex.
pub fn sha256_bytes(bytes: &[u8]) -> String {
    hex::encode(Sha256::digest(bytes))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn atomic_write_replaces_and_leaves_no_temporary() {
        let dir = std::env::temp_dir().join(format!("concord-core-fsutil-{}", std::process::id()));
        let path = dir.join("a.json");
        write_json_atomic(&path, &serde_json::json!({"x": 1})).unwrap();
        write_json_atomic(&path, &serde_json::json!({"x": 2})).unwrap();
        let back: serde_json::Value = read_json(&path).unwrap();
        assert_eq!(back["x"], 2);
        let names: Vec<_> = fs::read_dir(&dir)
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names.len(), 1, "{names:?}");
        fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn failed_write_keeps_the_old_file() {
        let dir = std::env::temp_dir().join(format!("concord-core-fsfail-{}", std::process::id()));
        let path = dir.join("b.txt");
        write_bytes_atomic(&path, b"old").unwrap();
        let err = write_atomic(&path, |_| Err(io::Error::other("disk full"))).unwrap_err();
        assert!(err.to_string().contains("b.txt"), "{err}");
        assert_eq!(fs::read(&path).unwrap(), b"old");
        assert_eq!(fs::read_dir(&dir).unwrap().count(), 1);
        fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn a_lock_outlives_neither_a_zombie_nor_a_process_that_finishes_dying() {
        let dir = tempfile::tempdir().unwrap();
        let lock_of = |pid: u32| fs::write(dir.path().join(LOCK_FILE), pid.to_string()).unwrap();
        // Finished but not reaped: a zombie's lock is taken at once.
        let mut zombie = std::process::Command::new("true").spawn().unwrap();
        std::thread::sleep(std::time::Duration::from_millis(300));
        lock_of(zombie.id());
        let start = std::time::Instant::now();
        drop(DirLock::acquire(dir.path()).unwrap());
        assert!(start.elapsed() < std::time::Duration::from_secs(1));
        zombie.wait().unwrap();
        // Still running for a moment (as a killed process syncing a file): waited for.
        let mut dying = std::process::Command::new("sleep")
            .arg("1")
            .spawn()
            .unwrap();
        lock_of(dying.id());
        let reaper = std::thread::spawn(move || dying.wait().unwrap());
        let lock = DirLock::acquire(dir.path()).unwrap();
        reaper.join().unwrap();
        assert_eq!(
            fs::read_to_string(dir.path().join(LOCK_FILE)).unwrap(),
            std::process::id().to_string()
        );
        drop(lock);
        assert!(!dir.path().join(LOCK_FILE).exists());
    }

    #[test]
    fn sha256_of_known_input() {
        assert_eq!(
            sha256_bytes(b"abc"),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
    }
}

/// The name of a [`DirLock`]'s file.
pub const LOCK_FILE: &str = ".lock";

/// An advisory lock on a folder: a `.lock` file holding the writer's process id, so that two
/// processes never write (or clean up) one folder at once. A lock whose process is gone (no
/// `/proc/<pid>`), or is this process, is stale and taken over; on systems without `/proc`
/// every lock counts as stale. Dropping it removes the file.
#[derive(Debug)]
pub struct DirLock {
    path: PathBuf,
}

impl DirLock {
    /// Takes the lock of `dir` (which must exist), or fails with [`Error::Locked`].
    pub fn acquire(dir: &Path) -> Result<DirLock> {
        let path = dir.join(LOCK_FILE);
        let me = std::process::id();
        loop {
            match fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .open(&path)
            {
                Ok(mut f) => {
                    write!(f, "{me}").map_err(|e| Error::io(&path, e))?;
                    return Ok(DirLock { path });
                }
                Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {
                    let holder = fs::read_to_string(&path)
                        .ok()
                        .and_then(|s| s.trim().parse::<u32>().ok());
                    if let Some(pid) = holder.filter(|&p| p != me && outlives(p, LOCK_WAIT)) {
                        return Err(Error::Locked {
                            dir: dir.to_owned(),
                            pid,
                        });
                    }
                    remove_file_if_present(&path)?;
                }
                Err(e) => return Err(Error::io(&path, e)),
            }
        }
    }
}

/// How long a lock's holder may take to finish dying: a process killed while it syncs a file
/// stays in `/proc` until the sync returns (seconds, on a loaded disk), and a rerun started
/// at once should take over its lock rather than fail.
const LOCK_WAIT: std::time::Duration = std::time::Duration::from_secs(5);

/// Whether process `pid` is still running after up to `wait` (a zombie has finished).
fn outlives(pid: u32, wait: std::time::Duration) -> bool {
    let running = || {
        fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|stat| {
            // `pid (comm) state ...`: the state follows the last ')'.
            let state = stat.rsplit_once(')').map(|(_, rest)| rest.trim_start());
            !state.is_some_and(|s| s.starts_with('Z') || s.starts_with('X'))
        })
    };
    let start = std::time::Instant::now();
    while running() {
        if start.elapsed() >= wait {
            return true;
        }
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    false
}

impl Drop for DirLock {
    fn drop(&mut self) {
        let _ = fs::remove_file(&self.path);
    }
}
