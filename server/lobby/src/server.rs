//! Starting and stopping a lobby: connects the stores (migrations first), binds the listener,
//! serves the router, runs the task that applies the zone servers' join and leave reports, and
//! the matchmaking tasks (listener, leader candidate, depth refresher; `matching.rs`).
//!
//! Used by `main.rs` and by tests, which run lobbies in-process on a free port.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use metrics_exporter_prometheus::PrometheusHandle;
use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::accounts::Accounts;
use crate::app::App;
use crate::config::LobbyConfig;
use crate::queue::Queue;
use crate::sessions::Sessions;

/// How often zone events are polled, and how many are applied at once at most.
const EVENTS_EVERY: Duration = Duration::from_millis(100);
const EVENTS_BATCH: usize = 500;

/// A running lobby.
pub struct Running {
    pub addr: SocketAddr,
    pub app: Arc<App>,
    stop: watch::Sender<bool>,
    tasks: Vec<JoinHandle<()>>,
}

impl Running {
    /// Stops serving (in-flight requests finish) and stops the events task.
    pub async fn stop(self) {
        let _ = self.stop.send(true);
        for t in self.tasks {
            let _ = t.await;
        }
    }
}

/// Installs the Prometheus recorder for `lobby_` metrics (once per process; None if another
/// recorder is installed already).
pub fn install_metrics() -> Option<PrometheusHandle> {
    let recorder = metrics_exporter_prometheus::PrometheusBuilder::new()
        .set_buckets_for_metric(
            metrics_exporter_prometheus::Matcher::Full("lobby_http_request_duration_seconds".into()),
            &[0.0005, 0.001, 0.002, 0.005, 0.010, 0.020, 0.050, 0.100, 0.250, 1.0],
        )
        .ok()?
        .set_buckets_for_metric(
            metrics_exporter_prometheus::Matcher::Full("lobby_match_wait_seconds".into()),
            &[0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 20.0, 30.0, 60.0, 120.0, 300.0],
        )
        .ok()?
        .set_buckets_for_metric(
            metrics_exporter_prometheus::Matcher::Full("lobby_match_spread".into()),
            &[10.0, 25.0, 50.0, 75.0, 100.0, 150.0, 200.0, 300.0, 400.0, 600.0],
        )
        .ok()?
        .set_buckets_for_metric(
            metrics_exporter_prometheus::Matcher::Full("lobby_match_pass_seconds".into()),
            &[0.0001, 0.0005, 0.001, 0.002, 0.005, 0.010, 0.050, 0.100],
        )
        .ok()?
        .build_recorder();
    let handle = recorder.handle();
    metrics::set_global_recorder(recorder).ok()?;
    metrics::describe_counter!("lobby_http_requests_total", "HTTP requests on the API routes, by route and status.");
    metrics::describe_histogram!(
        "lobby_http_request_duration_seconds",
        metrics::Unit::Seconds,
        "Time to answer an API request, by route."
    );
    metrics::describe_counter!("lobby_logins_total", "Successful logins, by platform (device or other).");
    metrics::describe_counter!("lobby_accounts_created_total", "Accounts created by a first login.");
    metrics::describe_counter!(
        "lobby_sessions_taken_over_total",
        "Sessions ended because the account logged in again."
    );
    metrics::describe_counter!(
        "lobby_kicks_total",
        "Players a zone server was asked to drop (session takeover, token reuse)."
    );
    metrics::describe_counter!("lobby_refreshes_total", "Refresh tokens rotated.");
    metrics::describe_counter!(
        "lobby_refresh_reuse_total",
        "Used or revoked refresh tokens presented again (each revoked its family)."
    );
    metrics::describe_counter!(
        "lobby_join_requests_total",
        "Join requests, by outcome (ok, unknown_zone, no_room)."
    );
    metrics::describe_counter!("lobby_rate_limited_total", "Requests refused with 429, by scope (ip, account).");
    metrics::describe_counter!(
        "lobby_backend_errors_total",
        "Requests that failed because PostgreSQL or Redis did not answer, by backend."
    );
    metrics::describe_counter!("lobby_index_repairs_total", "Dangling session index entries removed on read.");
    metrics::describe_counter!(
        "lobby_zone_events_total",
        "Join and leave reports from zone servers applied to sessions, by kind."
    );
    metrics::describe_counter!(
        "lobby_zone_event_errors_total",
        "Failed attempts to read or apply zone servers' reports."
    );
    crate::autoscale::describe_metrics();
    metrics::describe_gauge!(
        "lobby_match_queue_players",
        "Players waiting for a match, by mode and region (exported by the leader)."
    );
    metrics::describe_histogram!(
        "lobby_match_wait_seconds",
        metrics::Unit::Seconds,
        "Time matched tickets waited, by mode."
    );
    metrics::describe_histogram!("lobby_match_spread", "Match quality: the rating spread of each match, by mode.");
    metrics::describe_counter!("lobby_matches_total", "Matches placed on a zone server, by mode.");
    metrics::describe_counter!(
        "lobby_match_allocation_failures_total",
        "Matches that found no zone server with room (their tickets wait again), by mode."
    );
    metrics::describe_gauge!(
        "lobby_match_seat_shortage_players",
        "Players matched but waiting for a seat on a zone server, by mode: the autoscaling signal."
    );
    metrics::describe_gauge!("lobby_match_leader", "1 on the instance that matches.");
    metrics::describe_counter!("lobby_match_leader_changes_total", "Times this instance became the leader.");
    metrics::describe_counter!(
        "lobby_match_refused_total",
        "Match requests refused, by reason (unknown_mode, bad_party, bad_region, bad_wait, duplicate, queue_full, matcher)."
    );
    metrics::describe_counter!("lobby_match_tickets_total", "Tickets queued, by mode.");
    metrics::describe_counter!("lobby_match_cancelled_total", "Tickets cancelled.");
    metrics::describe_counter!(
        "lobby_match_commit_races_total",
        "Matches whose guarded commit found a ticket no longer waiting (a cancel won), by mode."
    );
    metrics::describe_counter!(
        "lobby_match_requeued_total",
        "Tickets put back in the queue because their zone server left before the join, by mode."
    );
    metrics::describe_histogram!(
        "lobby_match_pass_seconds",
        metrics::Unit::Seconds,
        "Time of one matching pass on the leader."
    );
    metrics::describe_counter!("lobby_match_results_total", "Match results applied to ratings.");
    Some(handle)
}

/// Connects to PostgreSQL (migrating first; fails when it is unreachable) and Redis (lazily: the
/// lobby starts while Redis is down and answers 503 until it is back), then serves.
pub async fn start(cfg: LobbyConfig, metrics: Option<PrometheusHandle>) -> anyhow::Result<Running> {
    let accounts = Accounts::connect(&cfg.postgres, &cfg.postgres_schema, cfg.postgres_connections, cfg.backend_timeout())
        .await
        .with_context(|| {
            format!(
                "cannot set up accounts in PostgreSQL at {}",
                zone_config::mask_url_passwords(&cfg.postgres)
            )
        })?;
    let queue = Queue::connect(&cfg.postgres, &cfg.postgres_schema, cfg.postgres_connections, cfg.backend_timeout())
        .await
        .context("cannot open the matchmaking queue in PostgreSQL")?;
    let sessions = Sessions::new(&cfg.redis, &cfg.redis_prefix, cfg.backend_timeout()).context("bad Redis URL")?;
    let listener = tokio::net::TcpListener::bind(cfg.listen)
        .await
        .with_context(|| format!("cannot listen on {} (is another lobby running? set --listen)", cfg.listen))?;
    let addr = listener.local_addr()?;
    let app = Arc::new(App::new(cfg, accounts, sessions, queue, metrics));
    let (stop, stop_rx) = watch::channel(false);
    let service = crate::http::router(Arc::clone(&app)).into_make_service_with_connect_info::<SocketAddr>();
    let mut rx = stop_rx.clone();
    let serve = tokio::spawn(async move {
        let shutdown = async move {
            let _ = rx.wait_for(|s| *s).await;
        };
        if let Err(e) = axum::serve(listener, service).with_graceful_shutdown(shutdown).await {
            tracing::error!(error = %e, "the HTTP server failed");
        }
    });
    let mut tasks = crate::matching::spawn(&app, &stop_rx);
    let events = tokio::spawn(apply_events(Arc::clone(&app), stop_rx));
    tasks.extend([serve, events]);
    tracing::info!(%addr, modes = %app.cfg.modes, "lobby listening");
    Ok(Running { addr, app, stop, tasks })
}

/// Applies zone servers' join and leave reports until stopped; Redis errors are counted, logged
/// at most every 10 s, and retried after a second.
async fn apply_events(app: Arc<App>, mut stop: watch::Receiver<bool>) {
    let mut last_logged: Option<tokio::time::Instant> = None;
    loop {
        let wait = match app.apply_zone_events(EVENTS_BATCH).await {
            Ok(n) if n >= EVENTS_BATCH => Duration::ZERO,
            Ok(_) => EVENTS_EVERY,
            Err(e) => {
                metrics::counter!("lobby_zone_event_errors_total").increment(1);
                if last_logged.is_none_or(|t| t.elapsed() >= Duration::from_secs(10)) {
                    tracing::warn!(error = %e.message, "cannot apply zone servers' join/leave reports; retrying");
                    last_logged = Some(tokio::time::Instant::now());
                }
                Duration::from_secs(1)
            }
        };
        tokio::select! {
            _ = tokio::time::sleep(wait) => {}
            _ = stop.wait_for(|s| *s) => return,
        }
    }
}
