//! [`FileStore`]: snapshots as files in one directory.
//!
//! Each snapshot is one file named `snap-<tick, 20 digits>-<full|diff>.zsnap`, so names sort by
//! tick. A write goes to a temporary file in the same directory, is fsynced, renamed into place
//! and the directory fsynced: a crash leaves either the old set of files or the new one, never a
//! half-written snapshot under a real name. Storing a full snapshot keeps the newest `keep_full`
//! full snapshots and deletes the diffs older than the oldest one kept.
//!
//! It never touches files it did not name (anything not matching the pattern is ignored), and it
//! never blocks the async runtime's workers: the IO runs on the blocking pool.

use std::fs::{self, File};
use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use super::{BoxFut, Chain, SnapshotStore, StoreError, StoredSnapshot, check_meta};
use crate::snapshot::{HEADER_BYTES, SnapshotKind, SnapshotMeta, decode_meta};

const STORE: &str = "file";
const PREFIX: &str = "snap-";
const SUFFIX: &str = ".zsnap";
const TEMP_PREFIX: &str = ".tmp-snap-";

/// A directory of snapshot files. See the module doc.
#[derive(Debug)]
pub struct FileStore {
    dir: PathBuf,
    keep_full: usize,
    temp_seq: AtomicU64,
}

/// A snapshot file's name, parsed.
#[derive(Clone, Debug, PartialEq, Eq)]
struct Entry {
    name: String,
    tick: u64,
    kind: SnapshotKind,
}

fn file_name(tick: u64, kind: SnapshotKind) -> String {
    format!("{PREFIX}{tick:020}-{}{SUFFIX}", kind.as_str())
}

fn parse_name(name: &str) -> Option<Entry> {
    let rest = name.strip_prefix(PREFIX)?.strip_suffix(SUFFIX)?;
    let (tick, kind) = rest.split_once('-')?;
    if tick.len() != 20 || !tick.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let kind = match kind {
        "full" => SnapshotKind::Full,
        "diff" => SnapshotKind::Diff,
        _ => return None,
    };
    Some(Entry {
        name: name.to_owned(),
        tick: tick.parse().ok()?,
        kind,
    })
}

fn io_err<'p>(op: &'static str, path: &'p Path) -> impl FnOnce(io::Error) -> StoreError + 'p {
    move |source| StoreError::Io {
        op,
        path: path.to_owned(),
        source,
    }
}

impl FileStore {
    /// Opens (creating it if needed) the directory, and removes temporary files a crash left
    /// behind. `keep_full` is the number of full snapshots kept (at least 1).
    pub fn new(dir: impl Into<PathBuf>, keep_full: usize) -> Result<FileStore, StoreError> {
        let dir = dir.into();
        fs::create_dir_all(&dir).map_err(io_err("create directory", &dir))?;
        for entry in fs::read_dir(&dir).map_err(io_err("read directory", &dir))? {
            let entry = entry.map_err(io_err("read directory", &dir))?;
            if entry.file_name().to_str().is_some_and(|n| n.starts_with(TEMP_PREFIX)) {
                let path = entry.path();
                fs::remove_file(&path).map_err(io_err("remove stale temporary file", &path))?;
            }
        }
        Ok(FileStore {
            dir,
            keep_full: keep_full.max(1),
            temp_seq: AtomicU64::new(0),
        })
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    pub fn keep_full(&self) -> usize {
        self.keep_full
    }

    /// Our files in the directory, sorted by tick then name (ascending).
    fn entries(dir: &Path) -> Result<Vec<Entry>, StoreError> {
        let mut v = Vec::new();
        for entry in fs::read_dir(dir).map_err(io_err("read directory", dir))? {
            let entry = entry.map_err(io_err("read directory", dir))?;
            if let Some(e) = entry.file_name().to_str().and_then(parse_name) {
                v.push(e);
            }
        }
        v.sort_by(|a, b| (a.tick, &a.name).cmp(&(b.tick, &b.name)));
        Ok(v)
    }

    fn put_blocking(dir: &Path, keep_full: usize, temp: &str, meta: SnapshotMeta, bytes: &[u8]) -> Result<(), StoreError> {
        let temp_path = dir.join(temp);
        let final_path = dir.join(file_name(meta.tick, meta.kind));
        let write = || -> io::Result<()> {
            let mut f = File::create(&temp_path)?;
            f.write_all(bytes)?;
            f.sync_all()
        };
        if let Err(e) = write() {
            let _ = fs::remove_file(&temp_path);
            return Err(StoreError::Io {
                op: "write",
                path: temp_path,
                source: e,
            });
        }
        if let Err(e) = fs::rename(&temp_path, &final_path) {
            let _ = fs::remove_file(&temp_path);
            return Err(StoreError::Io {
                op: "rename",
                path: final_path,
                source: e,
            });
        }
        sync_dir(dir)?;
        if meta.kind == SnapshotKind::Full {
            Self::retain(dir, keep_full)?;
        }
        Ok(())
    }

    /// Keeps the newest `keep_full` fulls and the diffs not older than the oldest one kept.
    fn retain(dir: &Path, keep_full: usize) -> Result<(), StoreError> {
        let entries = Self::entries(dir)?;
        let fulls: Vec<&Entry> = entries.iter().filter(|e| e.kind == SnapshotKind::Full).collect();
        let Some(cut) = fulls.len().checked_sub(keep_full) else {
            return Ok(());
        };
        let oldest_kept_tick = fulls.get(cut).map_or(0, |e| e.tick);
        let mut removed = false;
        // File names are unique per (tick, kind), so "older than the oldest kept full" is
        // exactly the fulls beyond the newest `keep_full` and the diffs that refer to them.
        for e in &entries {
            if e.tick < oldest_kept_tick {
                let path = dir.join(&e.name);
                match fs::remove_file(&path) {
                    Ok(()) => removed = true,
                    Err(err) if err.kind() == io::ErrorKind::NotFound => {}
                    Err(err) => {
                        return Err(StoreError::Io {
                            op: "remove old snapshot",
                            path,
                            source: err,
                        });
                    }
                }
            }
        }
        if removed {
            sync_dir(dir)?;
        }
        Ok(())
    }

    fn list_blocking(dir: &Path) -> Result<Vec<StoredSnapshot>, StoreError> {
        let mut out = Vec::new();
        for e in Self::entries(dir)?.into_iter().rev() {
            let path = dir.join(&e.name);
            let mut header = Vec::with_capacity(HEADER_BYTES);
            let len = match File::open(&path) {
                Ok(f) => {
                    let len = f.metadata().map_err(io_err("stat", &path))?.len();
                    f.take(HEADER_BYTES as u64)
                        .read_to_end(&mut header)
                        .map_err(io_err("read", &path))?;
                    len
                }
                // Deleted by retention between the directory read and now.
                Err(err) if err.kind() == io::ErrorKind::NotFound => continue,
                Err(err) => {
                    return Err(StoreError::Io {
                        op: "open",
                        path,
                        source: err,
                    });
                }
            };
            if let Ok(meta) = decode_meta(&header) {
                out.push(StoredSnapshot {
                    key: e.name,
                    meta,
                    bytes_len: len,
                });
            }
        }
        Ok(out)
    }

    fn read(dir: &Path, name: &str) -> Result<Vec<u8>, StoreError> {
        if parse_name(name).is_none() {
            return Err(StoreError::NotFound {
                store: STORE,
                key: name.to_owned(),
            });
        }
        let path = dir.join(name);
        fs::read(&path).map_err(|source| {
            if source.kind() == io::ErrorKind::NotFound {
                StoreError::NotFound {
                    store: STORE,
                    key: name.to_owned(),
                }
            } else {
                StoreError::Io { op: "read", path, source }
            }
        })
    }

    fn latest_chain_blocking(dir: &Path) -> Result<Option<Chain>, StoreError> {
        let entries = Self::entries(dir)?;
        let Some(full) = entries.iter().rev().find(|e| e.kind == SnapshotKind::Full) else {
            return Ok(None);
        };
        let full_bytes = Self::read(dir, &full.name)?;
        let mut diffs = Vec::new();
        for e in entries.iter().filter(|e| e.kind == SnapshotKind::Diff && e.tick > full.tick) {
            match Self::read(dir, &e.name) {
                Ok(b) => diffs.push(b),
                Err(StoreError::NotFound { .. }) => {}
                Err(err) => return Err(err),
            }
        }
        Ok(Some(Chain { full: full_bytes, diffs }))
    }
}

fn sync_dir(dir: &Path) -> Result<(), StoreError> {
    File::open(dir).and_then(|d| d.sync_all()).map_err(io_err("fsync directory", dir))
}

/// Runs blocking file IO on the runtime's blocking pool.
async fn blocking<T: Send + 'static>(f: impl FnOnce() -> Result<T, StoreError> + Send + 'static) -> Result<T, StoreError> {
    tokio::task::spawn_blocking(f).await.unwrap_or_else(|e| {
        Err(StoreError::Task {
            store: STORE,
            reason: e.to_string(),
        })
    })
}

impl SnapshotStore for FileStore {
    fn name(&self) -> &'static str {
        STORE
    }

    fn put<'a>(&'a self, meta: &'a SnapshotMeta, bytes: &'a [u8]) -> BoxFut<'a, Result<(), StoreError>> {
        Box::pin(async move {
            check_meta(STORE, meta, bytes)?;
            let (dir, keep_full, meta, bytes) = (self.dir.clone(), self.keep_full, *meta, bytes.to_vec());
            let temp = format!(
                "{TEMP_PREFIX}{}-{}",
                std::process::id(),
                self.temp_seq.fetch_add(1, Ordering::Relaxed)
            );
            blocking(move || Self::put_blocking(&dir, keep_full, &temp, meta, &bytes)).await
        })
    }

    fn list(&self) -> BoxFut<'_, Result<Vec<StoredSnapshot>, StoreError>> {
        let dir = self.dir.clone();
        Box::pin(blocking(move || Self::list_blocking(&dir)))
    }

    fn get<'a>(&'a self, key: &'a str) -> BoxFut<'a, Result<Vec<u8>, StoreError>> {
        let (dir, key) = (self.dir.clone(), key.to_owned());
        Box::pin(blocking(move || Self::read(&dir, &key)))
    }

    fn latest_chain(&self) -> BoxFut<'_, Result<Option<Chain>, StoreError>> {
        let dir = self.dir.clone();
        Box::pin(blocking(move || Self::latest_chain_blocking(&dir)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_sort_by_tick_and_parse_back() {
        let a = file_name(9, SnapshotKind::Full);
        let b = file_name(10, SnapshotKind::Diff);
        assert_eq!(a, "snap-00000000000000000009-full.zsnap");
        assert!(a < b);
        assert_eq!(
            parse_name(&b),
            Some(Entry {
                name: b.clone(),
                tick: 10,
                kind: SnapshotKind::Diff
            })
        );
        assert_eq!(parse_name(&file_name(u64::MAX, SnapshotKind::Full)).map(|e| e.tick), Some(u64::MAX));
        for bad in [
            "snap-1-full.zsnap",
            "../snap-00000000000000000009-full.zsnap",
            "snap-0000000000000000000x-full.zsnap",
            "snap-00000000000000000009-half.zsnap",
            "x",
        ] {
            assert_eq!(parse_name(bad), None, "{bad}");
        }
        assert_eq!(parse_name("snap-99999999999999999999-full.zsnap"), None, "over u64::MAX");
    }
}
