//! Writes the input journal, a directory of segments, on its own thread, behind a bounded queue.
//!
//! The tick thread hands each record over with [`JournalSink::send`] and starts a new segment with
//! [`JournalSink::rotate`] (at every full snapshot tick and every `--journal-segment` interval;
//! the zone hash at that tick goes in the new segment's header, and the old segment ends with the
//! same hash). In real time that never blocks: when the queue is full the record is dropped and
//! counted, and since a segment with a hole cannot be replayed past it, the sink stops recording
//! and says so loudly, until the next segment switch, which starts a clean segment (replayable
//! from a snapshot at its start) and says so too. In headless mode (`--ticks`) there is no
//! deadline, so the tick thread waits for the writer instead. The writer flushes to the OS at
//! least every [`FLUSH_INTERVAL`] and fsyncs at least every [`SYNC_INTERVAL`] and before every
//! switch, which bounds what a crash can lose.
//!
//! After each switch (and every [`HOUSEKEEPING_INTERVAL`]) the writer thread runs the data
//! directory's housekeeping ([`crate::housekeeping`]): retention and the disk-use metrics. It never
//! runs on the tick thread.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc::{self, RecvTimeoutError, SyncSender, TrySendError};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use anyhow::Context;
use zone_persistence::segments::{remove_temp_files, segment_name};
use zone_persistence::{JournalHeader, JournalWriter, Origin, Record};
use zone_sim::ZoneHash;

use crate::housekeeping::Housekeeping;

/// The longest a record waits in the writer's buffer before it reaches the OS.
pub const FLUSH_INTERVAL: Duration = Duration::from_millis(100);
/// The longest a record waits before it is fsynced (survives a power cut).
pub const SYNC_INTERVAL: Duration = Duration::from_secs(1);
/// Records the queue holds (about a minute of ticks).
pub const QUEUE_RECORDS_MAX: usize = 4096;
/// How often housekeeping runs when no segment switch triggers it.
pub const HOUSEKEEPING_INTERVAL: Duration = Duration::from_secs(10);

#[derive(Debug, Default)]
pub struct SinkCounters {
    /// Records handed to the writer.
    pub sent: AtomicU64,
    /// Records written.
    pub records: AtomicU64,
    pub dropped: AtomicU64,
    pub failed: AtomicBool,
    /// Segments started (the first included).
    pub segments: AtomicU64,
    /// Bytes written to segments, headers included.
    pub bytes: AtomicU64,
}

/// What goes through the queue.
enum Msg {
    Rec(Record),
    /// Start a new segment at the hash's tick.
    Rotate(Origin, ZoneHash),
    /// A note from the persistence worker (not counted as a tick-thread record).
    Note(Record),
    /// Drain what came before, fsync and stop (the notes' senders may outlive the sink).
    Stop,
}

/// A handle the persistence worker uses to note stored full snapshots in the journal. Never
/// blocks: a note that does not fit is dropped (notes are informative; replay does not need them).
#[derive(Clone)]
pub struct SnapshotNotes(SyncSender<Msg>);

impl std::fmt::Debug for SnapshotNotes {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("SnapshotNotes")
    }
}

impl SnapshotNotes {
    pub fn note(&self, tick: u64, sha256: [u8; 32]) {
        let _ = self.0.try_send(Msg::Note(Record::Snapshot { tick, sha256 }));
    }
}

pub struct JournalSink {
    tx: Option<SyncSender<Msg>>,
    thread: Option<JoinHandle<anyhow::Result<()>>>,
    blocking: bool,
    broken: bool,
    counters: Arc<SinkCounters>,
    dir: PathBuf,
}

impl JournalSink {
    /// Creates the journal directory if needed and the first segment (`header` says where it
    /// starts: tick 0 for a fresh run, the restored tick after a restore), and starts the writer
    /// thread.
    pub fn start(dir: &Path, header: &JournalHeader, blocking: bool, housekeeping: Option<Housekeeping>) -> anyhow::Result<JournalSink> {
        if dir.exists() && !dir.is_dir() {
            return Err(crate::recovery::single_file_journal_error(dir));
        }
        std::fs::create_dir_all(dir).with_context(|| format!("cannot create the journal directory {}", dir.display()))?;
        remove_temp_files(dir).with_context(|| format!("cannot clean up {}", dir.display()))?;
        let first = dir.join(segment_name(header.start_tick));
        let mut writer =
            JournalWriter::create(&first, header).with_context(|| format!("cannot create journal segment {}", first.display()))?;
        let (tx, rx) = mpsc::sync_channel::<Msg>(QUEUE_RECORDS_MAX);
        let counters = Arc::new(SinkCounters::default());
        counters.segments.store(1, Ordering::Relaxed);
        let c = counters.clone();
        let shown = dir.display().to_string();
        let base = header.clone();
        let dir_owned = dir.to_path_buf();
        let thread = std::thread::Builder::new()
            .name("journal".into())
            .spawn(move || -> anyhow::Result<()> {
                let mut last_flush = Instant::now();
                let mut last_sync = Instant::now();
                let mut last_housekeeping: Option<Instant> = None;
                let mut newest_tick = base.start_tick;
                let mut written_before = 0u64;
                let result = (|| -> anyhow::Result<()> {
                    loop {
                        let mut switched = false;
                        match rx.recv_timeout(FLUSH_INTERVAL) {
                            Ok(Msg::Rec(rec)) => {
                                if !matches!(rec, Record::Snapshot { .. }) {
                                    newest_tick = newest_tick.max(rec.tick());
                                }
                                writer.append(&rec)?;
                                c.records.fetch_add(1, Ordering::Relaxed);
                            }
                            Ok(Msg::Note(rec)) => writer.append(&rec)?,
                            Ok(Msg::Rotate(origin, hash)) => {
                                writer.sync()?;
                                written_before += writer.bytes();
                                let path = dir_owned.join(segment_name(hash.tick));
                                newest_tick = newest_tick.max(hash.tick);
                                let h = base.continued(origin, hash, None);
                                writer = JournalWriter::create(&path, &h)
                                    .with_context(|| format!("cannot create journal segment {}", path.display()))?;
                                c.segments.fetch_add(1, Ordering::Relaxed);
                                last_flush = Instant::now();
                                last_sync = Instant::now();
                                switched = true;
                            }
                            Ok(Msg::Stop) | Err(RecvTimeoutError::Disconnected) => break,
                            Err(RecvTimeoutError::Timeout) => {}
                        }
                        c.bytes.store(written_before + writer.bytes(), Ordering::Relaxed);
                        if last_flush.elapsed() >= FLUSH_INTERVAL {
                            writer.flush()?;
                            last_flush = Instant::now();
                        }
                        // To the disk too, now and then: a power cut then loses at most this much.
                        if last_sync.elapsed() >= SYNC_INTERVAL {
                            writer.sync()?;
                            last_sync = Instant::now();
                        }
                        if let Some(hk) = &housekeeping
                            && (switched || last_housekeeping.is_none_or(|t| t.elapsed() >= HOUSEKEEPING_INTERVAL))
                        {
                            hk.run(newest_tick, Some(writer.path()));
                            last_housekeeping = Some(Instant::now());
                        }
                    }
                    writer.sync()?;
                    Ok(())
                })();
                if let Err(e) = &result {
                    c.failed.store(true, Ordering::Relaxed);
                    tracing::error!(journal = %shown, error = %format!("{e:#}"), "journal writer failed; the journal ends here");
                }
                result
            })?;
        Ok(JournalSink {
            tx: Some(tx),
            thread: Some(thread),
            blocking,
            broken: false,
            counters,
            dir: dir.to_path_buf(),
        })
    }

    fn push(&mut self, msg: Msg) -> Result<(), bool> {
        let Some(tx) = &self.tx else { return Err(false) };
        let result = if self.blocking {
            tx.send(msg).map_err(|e| TrySendError::Disconnected(e.0))
        } else {
            tx.try_send(msg)
        };
        match result {
            Ok(()) => Ok(()),
            Err(TrySendError::Full(_)) => Err(true),
            Err(TrySendError::Disconnected(_)) => Err(false),
        }
    }

    /// Hands a record to the writer. Never blocks unless the sink was started `blocking`.
    pub fn send(&mut self, rec: Record) {
        if self.broken {
            self.counters.dropped.fetch_add(1, Ordering::Relaxed);
            return;
        }
        match self.push(Msg::Rec(rec)) {
            Ok(()) => {
                self.counters.sent.fetch_add(1, Ordering::Relaxed);
            }
            Err(full) => {
                self.counters.dropped.fetch_add(1, Ordering::Relaxed);
                self.broken = true;
                if full {
                    tracing::error!(
                        journal = %self.dir.display(),
                        queue = QUEUE_RECORDS_MAX,
                        "journal queue is full (the disk is too slow): JOURNALING IS OFF until the next segment switch; this segment cannot be replayed past the gap"
                    );
                } else {
                    tracing::error!(
                        journal = %self.dir.display(),
                        "the journal writer has stopped (its error is logged above): JOURNALING IS OFF for the rest of this run; restart with --restore auto to record again"
                    );
                }
            }
        }
    }

    /// Starts a new segment at `hash.tick` (the records of that tick, its hash included, must
    /// have been sent already). After a loss, this is where journaling resumes.
    pub fn rotate(&mut self, origin: Origin, hash: ZoneHash) {
        let tick = hash.tick;
        match self.push(Msg::Rotate(origin, hash)) {
            Ok(()) => {
                if std::mem::take(&mut self.broken) {
                    tracing::warn!(
                        journal = %self.dir.display(),
                        tick,
                        dropped_total = self.counters.dropped.load(Ordering::Relaxed),
                        "journaling resumes with a new segment: replay from a snapshot at or after this tick"
                    );
                }
            }
            Err(full) => {
                self.counters.dropped.fetch_add(1, Ordering::Relaxed);
                if !self.broken && full {
                    tracing::error!(journal = %self.dir.display(), tick, "journal queue is full at a segment switch: JOURNALING IS OFF until the next switch");
                } else if !self.broken {
                    tracing::error!(journal = %self.dir.display(), tick, "the journal writer has stopped: JOURNALING IS OFF for the rest of this run");
                }
                self.broken = true;
            }
        }
    }

    /// A handle for the persistence worker's snapshot notes.
    pub fn notes(&self) -> Option<SnapshotNotes> {
        self.tx.clone().map(SnapshotNotes)
    }

    pub fn counters(&self) -> &SinkCounters {
        &self.counters
    }

    /// Records waiting for the writer.
    pub fn depth(&self) -> usize {
        let sent = self.counters.sent.load(Ordering::Relaxed);
        sent.saturating_sub(self.counters.records.load(Ordering::Relaxed)) as usize
    }

    /// Whether records were lost (the journal is complete only up to the loss).
    pub fn is_broken(&self) -> bool {
        self.broken || self.counters.failed.load(Ordering::Relaxed)
    }

    /// Closes the queue, waits for the writer to drain, flush and fsync.
    pub fn finish(mut self) -> anyhow::Result<()> {
        if let Some(tx) = self.tx.take() {
            let _ = tx.send(Msg::Stop);
        }
        match self.thread.take().map(|t| t.join()) {
            Some(Ok(r)) => r,
            Some(Err(_)) => anyhow::bail!("journal writer thread panicked"),
            None => Ok(()),
        }
    }
}
