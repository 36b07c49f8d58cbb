//! Structured logs: `tracing` with JSON (machines) or text (people) output, a `RUST_LOG`-style
//! filter, and a non-blocking writer so a slow stderr never stalls the tick.
//!
//! The writer drops lines when its buffer is full rather than block, and counts them
//! ([`LogGuard::dropped_lines`]). Nothing may be logged per entity on the tick path: log per tick
//! at most at `debug`, and per window at `info`.

pub use tracing_appender::non_blocking::ErrorCounter;
use tracing_appender::non_blocking::WorkerGuard;
use tracing_subscriber::EnvFilter;

/// Lines the writer buffers before it starts dropping.
pub const LOG_BUFFER_LINES: usize = 16_384;

/// Keeps the log writer alive; dropping it flushes what is buffered.
pub struct LogGuard {
    _worker: WorkerGuard,
    dropped: ErrorCounter,
}

impl LogGuard {
    pub fn dropped_lines(&self) -> u64 {
        self.dropped.dropped_lines() as u64
    }

    /// A handle that reads the drop count from another thread.
    pub fn dropped_counter(&self) -> ErrorCounter {
        self.dropped.clone()
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LogFormat {
    Text,
    Json,
}

/// Installs the global subscriber. `filter` is a `RUST_LOG`-style directive (e.g.
/// `info,zone_server=debug`); `RUST_LOG`, when set, wins.
pub fn init(format: LogFormat, filter: &str) -> LogGuard {
    let (writer, worker) = tracing_appender::non_blocking::NonBlockingBuilder::default()
        .lossy(true)
        .buffered_lines_limit(LOG_BUFFER_LINES)
        .thread_name("log-writer")
        .finish(std::io::stderr());
    let dropped = writer.error_counter();
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(filter));
    let builder = tracing_subscriber::fmt().with_env_filter(filter).with_writer(writer);
    // A second init (tests running several servers in one process) keeps the first subscriber.
    let _ = match format {
        LogFormat::Json => builder.json().with_current_span(true).flatten_event(true).try_init(),
        LogFormat::Text => builder.with_ansi(false).try_init(),
    };
    LogGuard { _worker: worker, dropped }
}
