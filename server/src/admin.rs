//! The admin HTTP listener: `/metrics`, `/healthz`, `/readyz`, `/status` and `POST /drain`.
//!
//! `/healthz` follows the tick (it advanced within 2 s); `/readyz` says whether new players may
//! come: loaded, socket bound, not draining and not overloaded (`allocatable`).
//!
//! It runs on its own thread with a small tokio runtime, never on the tick thread. The tick loop
//! talks to it only through [`AdminShared`]: atomics it stores into, and a status document it
//! publishes with `try_lock` (so publishing can never block a tick).

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::Context;
use axum::Router;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use metrics_exporter_prometheus::PrometheusHandle;

/// The tick loop must have advanced within this long for `/healthz` to answer 200.
pub const LIVENESS_WINDOW: Duration = Duration::from_secs(2);

/// State shared between the tick loop and the admin listener.
pub struct AdminShared {
    started: Instant,
    /// Nanoseconds since `started` at which the last tick completed (0 = none yet).
    last_tick_nanos: AtomicU64,
    pub zone_loaded: AtomicBool,
    /// The game socket is bound (no UDP transport yet: set once the zone runs).
    pub socket_bound: AtomicBool,
    /// A drain was asked for over HTTP.
    pub drain_requested: AtomicBool,
    /// The loop is draining (from HTTP or a signal).
    pub draining: AtomicBool,
    /// The tick loop has ended; the process is writing its final state.
    pub stopping: AtomicBool,
    /// False while overloaded (tick p99 over budget for a while): alive, but not taking players.
    pub allocatable: AtomicBool,
    status: Mutex<Arc<serde_json::Value>>,
    prometheus: Option<PrometheusHandle>,
}

impl AdminShared {
    pub fn new(prometheus: Option<PrometheusHandle>) -> Arc<Self> {
        Arc::new(AdminShared {
            started: Instant::now(),
            last_tick_nanos: AtomicU64::new(0),
            zone_loaded: AtomicBool::new(false),
            socket_bound: AtomicBool::new(false),
            drain_requested: AtomicBool::new(false),
            draining: AtomicBool::new(false),
            stopping: AtomicBool::new(false),
            allocatable: AtomicBool::new(true),
            status: Mutex::new(Arc::new(serde_json::json!({"state": "starting"}))),
            prometheus,
        })
    }

    /// Called by the tick loop after every tick.
    pub fn tick_advanced(&self) {
        let n = self.started.elapsed().as_nanos() as u64;
        self.last_tick_nanos.store(n.max(1), Ordering::Relaxed);
    }

    /// Live while starting (building the zone, recovering: a long journal replay must not get
    /// the process restarted; readiness gates traffic), while stopping (final snapshot), and
    /// whenever the tick loop advanced within [`LIVENESS_WINDOW`].
    pub fn is_live(&self) -> bool {
        if self.stopping.load(Ordering::Relaxed) {
            return true;
        }
        let last = self.last_tick_nanos.load(Ordering::Relaxed);
        last == 0 || self.started.elapsed().saturating_sub(Duration::from_nanos(last)) < LIVENESS_WINDOW
    }

    /// Loaded, socket bound, not draining and not overloaded: new players may be sent here.
    pub fn is_ready(&self) -> bool {
        self.zone_loaded.load(Ordering::Relaxed)
            && self.socket_bound.load(Ordering::Relaxed)
            && !self.draining.load(Ordering::Relaxed)
            && self.allocatable.load(Ordering::Relaxed)
    }

    pub fn uptime(&self) -> Duration {
        self.started.elapsed()
    }

    /// Publishes a new `/status` document unless the listener is reading the old one right now.
    pub fn publish_status(&self, doc: serde_json::Value) {
        if let Ok(mut slot) = self.status.try_lock() {
            *slot = Arc::new(doc);
        }
    }

    /// The last published `/status` document.
    pub fn status(&self) -> Arc<serde_json::Value> {
        self.status.lock().map(|s| s.clone()).unwrap_or_else(|e| e.into_inner().clone())
    }
}

/// A running admin listener.
pub struct AdminServer {
    pub addr: SocketAddr,
    shutdown: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl AdminServer {
    /// Binds `addr` and serves on a new thread. Fails if the address cannot be bound.
    pub fn start(addr: SocketAddr, shared: Arc<AdminShared>) -> anyhow::Result<AdminServer> {
        Self::start_with(addr, shared, None)
    }

    /// Like [`AdminServer::start`], also serving `extra`'s routes (the world visualizer's).
    pub fn start_with(addr: SocketAddr, shared: Arc<AdminShared>, extra: Option<Router>) -> anyhow::Result<AdminServer> {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .context("cannot start the admin runtime")?;
        let std_listener = std::net::TcpListener::bind(addr).with_context(|| {
            format!("cannot bind the admin listener on {addr} (is another server using it? choose another with --admin)")
        })?;
        std_listener.set_nonblocking(true)?;
        let local = std_listener.local_addr()?;
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        let has_extra = extra.is_some();
        let thread = std::thread::Builder::new().name("admin".into()).spawn(move || {
            rt.block_on(async move {
                let listener = match tokio::net::TcpListener::from_std(std_listener) {
                    Ok(l) => l,
                    Err(e) => {
                        tracing::error!(error = %e, "admin listener failed");
                        return;
                    }
                };
                let upkeep = shared.clone();
                tokio::spawn(async move {
                    let mut every = tokio::time::interval(Duration::from_secs(1));
                    let mut n = 0u64;
                    loop {
                        every.tick().await;
                        zone_telemetry::record_process(&zone_telemetry::process::sample(), upkeep.uptime());
                        n += 1;
                        if n.is_multiple_of(5)
                            && let Some(h) = &upkeep.prometheus
                        {
                            h.run_upkeep();
                        }
                    }
                });
                let app = Router::new()
                    .route("/metrics", get(metrics))
                    .route("/healthz", get(healthz))
                    .route("/readyz", get(readyz))
                    .route("/status", get(status))
                    .route("/drain", post(drain))
                    .with_state(shared);
                let app = match extra {
                    Some(r) => app.merge(r),
                    None => app,
                };
                let serve = axum::serve(listener, app).with_graceful_shutdown(async {
                    let _ = rx.await;
                });
                if let Err(e) = serve.await {
                    tracing::error!(error = %e, "admin listener stopped");
                }
            });
        })?;
        tracing::info!(admin = %local, "admin listener up: /metrics /healthz /readyz /status POST /drain{}", if has_extra { " and the world visualizer at /" } else { "" });
        Ok(AdminServer {
            addr: local,
            shutdown: Some(tx),
            thread: Some(thread),
        })
    }

    pub fn stop(mut self) {
        self.shutdown_now();
    }

    fn shutdown_now(&mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
        if let Some(t) = self.thread.take() {
            // A slow HTTP client must not hold the process: wait a little, then leave the
            // thread to die with the process.
            let deadline = std::time::Instant::now() + Duration::from_secs(2);
            while !t.is_finished() && std::time::Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(10));
            }
            if t.is_finished() {
                let _ = t.join();
            } else {
                tracing::warn!("admin listener did not stop within 2 s; exiting anyway");
            }
        }
    }
}

impl Drop for AdminServer {
    fn drop(&mut self) {
        self.shutdown_now();
    }
}

async fn metrics(State(s): State<Arc<AdminShared>>) -> Response {
    match &s.prometheus {
        Some(h) => ([(header::CONTENT_TYPE, "text/plain; version=0.0.4; charset=utf-8")], h.render()).into_response(),
        None => (StatusCode::NOT_FOUND, "metrics are disabled (--telemetry off)\n").into_response(),
    }
}

async fn healthz(State(s): State<Arc<AdminShared>>) -> Response {
    if s.is_live() {
        (StatusCode::OK, "ok: the tick loop is advancing\n").into_response()
    } else {
        (
            StatusCode::SERVICE_UNAVAILABLE,
            "unhealthy: the tick loop has not advanced in the last 2 s\n",
        )
            .into_response()
    }
}

async fn readyz(State(s): State<Arc<AdminShared>>) -> Response {
    let loaded = s.zone_loaded.load(Ordering::Relaxed);
    let bound = s.socket_bound.load(Ordering::Relaxed);
    let draining = s.draining.load(Ordering::Relaxed);
    let allocatable = s.allocatable.load(Ordering::Relaxed);
    let body = serde_json::json!({"ready": s.is_ready(), "zone_loaded": loaded, "socket_bound": bound, "draining": draining, "allocatable": allocatable});
    let code = if s.is_ready() {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (code, axum::Json(body)).into_response()
}

async fn status(State(s): State<Arc<AdminShared>>) -> Response {
    let mut doc = (*s.status()).clone();
    if let Some(obj) = doc.as_object_mut() {
        obj.insert("uptime_s".into(), serde_json::json!(s.uptime().as_secs_f64()));
        obj.insert("version".into(), serde_json::json!(env!("CARGO_PKG_VERSION")));
        obj.insert("live".into(), serde_json::json!(s.is_live()));
        obj.insert("ready".into(), serde_json::json!(s.is_ready()));
    }
    axum::Json(doc).into_response()
}

async fn drain(State(s): State<Arc<AdminShared>>) -> Response {
    let already = s.drain_requested.swap(true, Ordering::Relaxed);
    tracing::info!(already, "drain requested over HTTP");
    (
        StatusCode::ACCEPTED,
        axum::Json(serde_json::json!({"draining": true, "already": already})),
    )
        .into_response()
}
