//! Writes the input journal on its own thread, behind a bounded queue.
//!
//! The tick thread hands each record over with [`JournalSink::send`]. In real time that never
//! blocks: when the queue is full the record is dropped and counted, and since a journal with a
//! hole cannot be replayed, the sink stops journaling and says so loudly. In headless mode
//! (`--ticks`) there is no deadline, so the tick thread waits for the writer instead. The writer
//! flushes to the OS at least every [`FLUSH_INTERVAL`], which bounds what a crash can lose.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc::{self, RecvTimeoutError, SyncSender, TrySendError};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use anyhow::Context;
use zone_persistence::{JournalHeader, JournalWriter, Record};

/// The longest a record waits in the writer's buffer before it reaches the OS.
pub const FLUSH_INTERVAL: Duration = Duration::from_millis(100);
/// The longest a record waits before it is fsynced (survives a power cut).
pub const SYNC_INTERVAL: Duration = Duration::from_secs(1);
/// Records the queue holds (about a minute of ticks).
pub const QUEUE_RECORDS_MAX: usize = 4096;

#[derive(Debug, Default)]
pub struct SinkCounters {
    /// Records handed to the writer.
    pub sent: AtomicU64,
    /// Records written.
    pub records: AtomicU64,
    pub dropped: AtomicU64,
    pub failed: AtomicBool,
}

pub struct JournalSink {
    tx: Option<SyncSender<Record>>,
    thread: Option<JoinHandle<anyhow::Result<()>>>,
    blocking: bool,
    broken: bool,
    counters: Arc<SinkCounters>,
    path: PathBuf,
}

impl JournalSink {
    /// Creates the file (or, with `append_at`, continues an existing one cut at that length),
    /// writes the header and starts the writer thread.
    pub fn start(path: &Path, header: &JournalHeader, blocking: bool, append_at: Option<u64>) -> anyhow::Result<JournalSink> {
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
        }
        let mut writer = match append_at {
            None => JournalWriter::create(path, header).with_context(|| format!("cannot create journal {}", path.display()))?,
            Some(len) => {
                JournalWriter::open_append(path, header, len).with_context(|| format!("cannot continue journal {}", path.display()))?
            }
        };
        let (tx, rx) = mpsc::sync_channel::<Record>(QUEUE_RECORDS_MAX);
        let counters = Arc::new(SinkCounters::default());
        let c = counters.clone();
        let shown = path.display().to_string();
        let thread = std::thread::Builder::new()
            .name("journal".into())
            .spawn(move || -> anyhow::Result<()> {
                let mut last_flush = Instant::now();
                let mut last_sync = Instant::now();
                let result = (|| -> anyhow::Result<()> {
                    loop {
                        match rx.recv_timeout(FLUSH_INTERVAL) {
                            Ok(rec) => {
                                writer.append(&rec)?;
                                c.records.fetch_add(1, Ordering::Relaxed);
                            }
                            Err(RecvTimeoutError::Timeout) => {}
                            Err(RecvTimeoutError::Disconnected) => break,
                        }
                        if last_flush.elapsed() >= FLUSH_INTERVAL {
                            writer.flush()?;
                            last_flush = Instant::now();
                        }
                        // To the disk too, now and then: a power cut then loses at most this much.
                        if last_sync.elapsed() >= SYNC_INTERVAL {
                            writer.sync()?;
                            last_sync = Instant::now();
                        }
                    }
                    writer.sync()?;
                    Ok(())
                })();
                if let Err(e) = &result {
                    c.failed.store(true, Ordering::Relaxed);
                    tracing::error!(journal = %shown, error = %e, "journal writer failed; the journal ends here");
                }
                result
            })?;
        Ok(JournalSink {
            tx: Some(tx),
            thread: Some(thread),
            blocking,
            broken: false,
            counters,
            path: path.to_path_buf(),
        })
    }

    /// Hands a record to the writer. Never blocks unless the sink was started `blocking`.
    pub fn send(&mut self, rec: Record) {
        if self.broken {
            self.counters.dropped.fetch_add(1, Ordering::Relaxed);
            return;
        }
        let Some(tx) = &self.tx else { return };
        let result = if self.blocking {
            tx.send(rec).map_err(|e| TrySendError::Disconnected(e.0))
        } else {
            tx.try_send(rec)
        };
        match result {
            Ok(()) => {
                self.counters.sent.fetch_add(1, Ordering::Relaxed);
            }
            Err(TrySendError::Full(_)) => {
                self.counters.dropped.fetch_add(1, Ordering::Relaxed);
                self.broken = true;
                tracing::error!(
                    journal = %self.path.display(),
                    queue = QUEUE_RECORDS_MAX,
                    "journal queue is full (the disk is too slow); journaling stops here because a journal with a gap cannot be replayed"
                );
            }
            Err(TrySendError::Disconnected(_)) => {
                self.counters.dropped.fetch_add(1, Ordering::Relaxed);
                self.broken = true;
            }
        }
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
        self.tx = None;
        match self.thread.take().map(|t| t.join()) {
            Some(Ok(r)) => r,
            Some(Err(_)) => anyhow::bail!("journal writer thread panicked"),
            None => Ok(()),
        }
    }
}
