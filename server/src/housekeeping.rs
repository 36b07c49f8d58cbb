//! Housekeeping of the data directory: journal retention, pruning of moved-aside runs, and the
//! disk-use metrics. Runs on the journal writer thread (after every segment switch and every few
//! seconds), never on the tick thread.
//!
//! What is kept (see `--journal-retention` and `--keep-snapshots`):
//! - the newest full snapshot in `DATA_DIR/snapshots` that decodes and matches the zone file (the
//!   "protected" snapshot), and every journal segment from the one holding its tick to the end,
//!   always: with them the zone replays to its last tick;
//! - older segments while they are within the retention (a zone-time duration, a byte budget, or
//!   both); with no verified snapshot at all nothing is deleted (tick 0 is the only start);
//! - runs a fresh start moved aside (`journal.<secs>`, `snapshots.<secs>`, `journal.zjnl.<secs>`)
//!   while younger than the retention duration and within the byte budget (oldest go first).
//!
//! It never deletes the segment being written, a segment after the protected snapshot, or a file
//! it did not name. Every deletion is logged and counted.

use std::cell::Cell;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use anyhow::Context;
use metrics::{counter, gauge};
use zone_persistence::segments::{SegmentFacts, list_segments, plan_retention};
use zone_persistence::{Retention, snapshot::decode_full};

/// What one housekeeping pass did.
#[derive(Clone, Debug, Default)]
pub struct Report {
    pub protected_tick: Option<u64>,
    pub deleted_segments: Vec<PathBuf>,
    pub deleted_aside: Vec<PathBuf>,
    pub journal_bytes: u64,
    pub journal_segments: usize,
    pub data_dir_bytes: Option<u64>,
}

/// The data directory's housekeeping. See the module doc.
#[derive(Debug)]
pub struct Housekeeping {
    pub journal_dir: PathBuf,
    /// `DATA_DIR` (for the disk metrics and moved-aside runs), when persistence is on.
    pub data_dir: Option<PathBuf>,
    /// `DATA_DIR/snapshots`, where the protected snapshot is looked for.
    pub snapshots_dir: Option<PathBuf>,
    pub retention: Retention,
    /// Moved-aside runs older than this are deleted (the retention duration in wall time).
    pub keep_aside_for: Option<Duration>,
    pub zone_digest: [u8; 32],
    /// The newest full snapshot already verified (tick), so it is decoded once.
    verified: Cell<Option<u64>>,
    warned_no_snapshot: Cell<bool>,
}

impl Housekeeping {
    pub fn new(
        journal_dir: PathBuf,
        data_dir: Option<PathBuf>,
        retention: Retention,
        keep_aside_for: Option<Duration>,
        zone_digest: [u8; 32],
    ) -> Housekeeping {
        Housekeeping {
            snapshots_dir: data_dir.as_ref().map(|d| d.join("snapshots")),
            journal_dir,
            data_dir,
            retention,
            keep_aside_for,
            zone_digest,
            verified: Cell::new(None),
            warned_no_snapshot: Cell::new(false),
        }
    }

    /// One pass. `newest_tick` is the last tick journaled; `current` the segment being written.
    /// Errors are logged, never fatal.
    pub fn run(&self, newest_tick: u64, current: Option<&Path>) -> Report {
        let mut report = Report {
            protected_tick: self.snapshots_dir.as_deref().and_then(|d| self.newest_verified_full(d)),
            ..Report::default()
        };
        let retention_on = self.retention != Retention::default();
        if report.protected_tick.is_none() && retention_on && !self.warned_no_snapshot.replace(true) {
            tracing::warn!(
                journal = %self.journal_dir.display(),
                "journal retention: no verified snapshot yet, so every segment back to tick 0 is needed and none is deleted"
            );
        }
        // Journal segments.
        let segs = list_segments(&self.journal_dir).unwrap_or_default();
        let facts: Vec<SegmentFacts> = segs
            .iter()
            .enumerate()
            .map(|(i, (start, path))| SegmentFacts {
                start_tick: *start,
                end_tick: segs.get(i + 1).map_or(newest_tick.max(*start), |n| n.0),
                bytes: std::fs::metadata(path).map_or(0, |m| m.len()),
            })
            .collect();
        let n = plan_retention(&facts, report.protected_tick, self.retention);
        for (i, (start, path)) in segs.iter().enumerate().take(n) {
            if current == Some(path.as_path()) {
                break;
            }
            match std::fs::remove_file(path) {
                Ok(()) => {
                    tracing::info!(segment = %path.display(), start_tick = start, end_tick = facts[i].end_tick, bytes = facts[i].bytes, protected_tick = report.protected_tick, "journal retention: segment deleted");
                    counter!("zone_retention_deleted_total", "what" => "segment").increment(1);
                    report.deleted_segments.push(path.clone());
                }
                Err(e) => tracing::warn!(segment = %path.display(), error = %e, "journal retention: cannot delete segment"),
            }
        }
        let kept = &facts[report.deleted_segments.len()..];
        report.journal_segments = kept.len();
        report.journal_bytes = kept.iter().map(|f| f.bytes).sum();
        // Moved-aside runs: by age, then by the byte budget (oldest first).
        if let Some(data) = &self.data_dir {
            let mut aside = aside_runs(data);
            aside.sort_by_key(|a| a.1);
            let mut aside_total: u64 = aside.iter().map(|a| a.2).sum();
            let now = SystemTime::now();
            for (path, modified, bytes) in aside {
                let too_old = self
                    .keep_aside_for
                    .is_some_and(|keep| now.duration_since(modified).is_ok_and(|age| age > keep));
                let too_big = self.retention.keep_bytes.is_some_and(|k| report.journal_bytes + aside_total > k);
                if !(too_old || too_big) {
                    continue;
                }
                let r = if path.is_dir() {
                    std::fs::remove_dir_all(&path)
                } else {
                    std::fs::remove_file(&path)
                };
                match r {
                    Ok(()) => {
                        tracing::info!(run = %path.display(), bytes, too_old, too_big, "retention: moved-aside run deleted");
                        counter!("zone_retention_deleted_total", "what" => "aside").increment(1);
                        aside_total -= bytes;
                        report.deleted_aside.push(path);
                    }
                    Err(e) => tracing::warn!(run = %path.display(), error = %e, "retention: cannot delete a moved-aside run"),
                }
            }
            report.data_dir_bytes = Some(dir_bytes(data));
        }
        self.export(&report);
        report
    }

    fn export(&self, r: &Report) {
        gauge!("zone_journal_bytes").set(r.journal_bytes as f64);
        gauge!("zone_journal_segments").set(r.journal_segments as f64);
        if let Some(t) = r.protected_tick {
            gauge!("zone_journal_protected_tick").set(t as f64);
        }
        if let Some(b) = r.data_dir_bytes {
            gauge!("zone_data_dir_bytes").set(b as f64);
        }
        if let Some((avail, size)) = self.data_dir.as_deref().and_then(filesystem_space) {
            gauge!("zone_data_dir_filesystem_avail_bytes").set(avail as f64);
            gauge!("zone_data_dir_filesystem_size_bytes").set(size as f64);
        }
    }

    /// The tick of the newest full snapshot file that decodes and is of this zone.
    fn newest_verified_full(&self, dir: &Path) -> Option<u64> {
        let mut fulls: Vec<(u64, PathBuf)> = std::fs::read_dir(dir)
            .ok()?
            .filter_map(|e| e.ok())
            .filter_map(|e| {
                let name = e.file_name().to_str()?.to_string();
                let tick = name.strip_prefix("snap-")?.strip_suffix("-full.zsnap")?.parse().ok()?;
                Some((tick, e.path()))
            })
            .collect();
        fulls.sort_by_key(|f| std::cmp::Reverse(f.0));
        for (tick, path) in fulls {
            if self.verified.get() == Some(tick) {
                return Some(tick);
            }
            let ok = std::fs::read(&path)
                .ok()
                .and_then(|b| decode_full(&b).ok())
                .is_some_and(|(meta, _)| meta.zone_digest == self.zone_digest && meta.tick == tick);
            if ok {
                self.verified.set(Some(tick));
                return Some(tick);
            }
            tracing::warn!(snapshot = %path.display(), "retention: a full snapshot does not verify; looking at an older one");
        }
        None
    }
}

/// Runs a fresh start moved aside in `data_dir`: path, last modified, bytes.
pub fn aside_runs(data_dir: &Path) -> Vec<(PathBuf, SystemTime, u64)> {
    let Ok(rd) = std::fs::read_dir(data_dir) else { return Vec::new() };
    rd.filter_map(|e| e.ok())
        .filter(|e| {
            let name = e.file_name().to_string_lossy().into_owned();
            ["journal.zjnl.", "journal.", "snapshots."].iter().any(|p| {
                name.strip_prefix(p)
                    .is_some_and(|rest| !rest.is_empty() && rest.bytes().all(|b| b.is_ascii_digit()))
            })
        })
        .map(|e| {
            let path = e.path();
            let modified = newest_mtime(&path);
            let bytes = dir_bytes(&path);
            (path, modified, bytes)
        })
        .collect()
}

fn newest_mtime(path: &Path) -> SystemTime {
    let own = std::fs::metadata(path).and_then(|m| m.modified()).unwrap_or(SystemTime::UNIX_EPOCH);
    match std::fs::read_dir(path) {
        Ok(rd) => rd
            .filter_map(|e| e.ok())
            .map(|e| newest_mtime(&e.path()))
            .fold(own, |a, b| a.max(b)),
        Err(_) => own,
    }
}

/// Bytes of the files under `path` (recursively; a file counts itself).
pub fn dir_bytes(path: &Path) -> u64 {
    let Ok(meta) = std::fs::symlink_metadata(path) else { return 0 };
    if !meta.is_dir() {
        return meta.len();
    }
    std::fs::read_dir(path)
        .map(|rd| rd.filter_map(|e| e.ok()).map(|e| dir_bytes(&e.path())).sum())
        .unwrap_or(0)
}

/// Available and total bytes of the filesystem holding `path`.
pub fn filesystem_space(path: &Path) -> Option<(u64, u64)> {
    let st = rustix::fs::statvfs(path).ok()?;
    Some((st.f_bavail.saturating_mul(st.f_frsize), st.f_blocks.saturating_mul(st.f_frsize)))
}

/// Renames `path` to `path.<unix seconds>` so a fresh run does not overwrite or mix with it;
/// returns the new name. Retention deletes such runs after the retention duration.
pub fn move_aside(path: &Path, what: &str) -> anyhow::Result<PathBuf> {
    let secs = SystemTime::now().duration_since(SystemTime::UNIX_EPOCH).map_or(0, |d| d.as_secs());
    let mut aside = path.as_os_str().to_owned();
    aside.push(format!(".{secs}"));
    let mut aside = PathBuf::from(aside);
    let mut n = 1;
    while aside.exists() {
        let mut a = path.as_os_str().to_owned();
        a.push(format!(".{}", secs + n));
        aside = PathBuf::from(a);
        n += 1;
    }
    std::fs::rename(path, &aside).with_context(|| format!("cannot move {what} ({}) aside", path.display()))?;
    tracing::warn!(old = %aside.display(), "starting fresh: {what} moved aside (use --restore auto to continue that run)");
    Ok(aside)
}

/// `--journal-retention`: `off`, a duration (`90s`, `30m`, `24h`, `7d`), a size (`500MB`,
/// `10GB`, `1GiB`), or both separated by a comma (`24h,10GB`).
pub fn parse_retention(text: &str) -> Result<(Option<Duration>, Option<u64>), String> {
    let t = text.trim();
    if t.eq_ignore_ascii_case("off") {
        return Ok((None, None));
    }
    let (mut dur, mut size) = (None, None);
    for part in t.split(',').map(str::trim) {
        let split = part.find(|c: char| !(c.is_ascii_digit() || c == '.')).unwrap_or(part.len());
        let (num, unit) = part.split_at(split);
        let v: f64 = num
            .parse()
            .map_err(|_| format!("{part:?} is not a number with a unit (e.g. 24h or 10GB)"))?;
        if !(v.is_finite() && v > 0.0) {
            return Err(format!("{part:?} must be positive"));
        }
        let secs = match unit.to_ascii_lowercase().as_str() {
            "s" => Some(1.0),
            "m" | "min" => Some(60.0),
            "h" => Some(3600.0),
            "d" => Some(86400.0),
            _ => None,
        };
        let bytes = match unit {
            "B" => Some(1.0),
            "KB" | "kB" => Some(1e3),
            "MB" => Some(1e6),
            "GB" => Some(1e9),
            "TB" => Some(1e12),
            "KiB" => Some(1024.0),
            "MiB" => Some(1024.0 * 1024.0),
            "GiB" => Some(1024.0 * 1024.0 * 1024.0),
            "TiB" => Some(1024.0f64.powi(4)),
            _ => None,
        };
        match (secs, bytes) {
            (Some(s), _) if dur.is_none() => dur = Some(Duration::from_secs_f64(v * s)),
            (_, Some(b)) if size.is_none() => size = Some((v * b) as u64),
            (None, None) => {
                return Err(format!(
                    "{part:?} has no known unit: use s, m, h or d for a duration, B, KB, MB, GB, TB (or KiB, MiB, GiB, TiB) for a size"
                ));
            }
            _ => return Err(format!("{part:?}: give at most one duration and one size")),
        }
    }
    Ok((dur, size))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn age(path: &Path, ago: Duration) {
        let t = SystemTime::now() - ago;
        std::fs::File::open(path).unwrap().set_modified(t).unwrap();
    }

    /// Runs a fresh start moved aside go when older than the retention duration, then oldest
    /// first while over the byte budget; other files are never touched.
    #[test]
    fn moved_aside_runs_are_pruned_by_age_then_by_size() {
        let dir = tempfile::tempdir().unwrap();
        let data = dir.path();
        let journal = data.join("journal");
        std::fs::create_dir_all(&journal).unwrap();
        for (name, ago_h) in [("journal.100", 48), ("snapshots.200", 2), ("journal.zjnl.300", 1)] {
            let p = data.join(name);
            if name.contains("zjnl") {
                std::fs::write(&p, vec![1u8; 600]).unwrap();
            } else {
                std::fs::create_dir_all(&p).unwrap();
                std::fs::write(p.join("f"), vec![1u8; 600]).unwrap();
                age(&p.join("f"), Duration::from_secs(ago_h * 3600));
            }
            age(&p, Duration::from_secs(ago_h * 3600));
        }
        std::fs::write(data.join("journal.bak"), b"not ours").unwrap();
        let hk = |keep_bytes| {
            Housekeeping::new(
                journal.clone(),
                Some(data.to_path_buf()),
                Retention {
                    keep_ticks: Some(24 * 3600 * 60),
                    keep_bytes,
                },
                Some(Duration::from_secs(24 * 3600)),
                [0; 32],
            )
        };
        let r = hk(None).run(0, None);
        assert_eq!(r.deleted_aside, vec![data.join("journal.100")], "only the run older than a day");
        let r = hk(Some(700)).run(0, None);
        assert_eq!(
            r.deleted_aside,
            vec![data.join("snapshots.200")],
            "the oldest of the rest, to fit 700 bytes"
        );
        assert!(data.join("journal.zjnl.300").exists() && data.join("journal.bak").exists());
        assert_eq!(r.data_dir_bytes, Some(600 + 8));
    }

    #[test]
    fn retention_values_parse() {
        assert_eq!(parse_retention("off").unwrap(), (None, None));
        assert_eq!(parse_retention("24h").unwrap(), (Some(Duration::from_secs(86400)), None));
        assert_eq!(parse_retention("10GB").unwrap(), (None, Some(10_000_000_000)));
        assert_eq!(
            parse_retention("90m, 1GiB").unwrap(),
            (Some(Duration::from_secs(5400)), Some(1 << 30))
        );
        assert!(parse_retention("10").unwrap_err().contains("unit"));
        assert!(parse_retention("1h,2h").is_err());
        assert!(parse_retention("-1h").is_err());
    }
}
