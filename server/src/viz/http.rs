//! The visualizer's HTTP surface, merged into the admin listener (and served alone by
//! `zone-replay --serve`):
//!
//! | route | what |
//! | --- | --- |
//! | `GET /`, `GET /world` | the page (HTML; `GET /world/viz.js` its script), embedded in the binary |
//! | `GET /world/meta` | the zone (bounds, shard grid, kinds), the mode and the limits, JSON |
//! | `GET /world/stream` | server-sent events: `hello` (viewer id), then `key` and `diff` frames (base64 of [`super::frame`]'s binary format), `state` (replay playhead), `bye` (why the stream ends); 503 when `--viz-max-viewers` watch already |
//! | `POST /world/ping?viewer=ID` | the page is still watching (204; 404 if that viewer was dropped) |
//! | `GET /world/history` | live: the ticks held in the history ring; replay: the journal's span |
//! | `GET /world/frame?tick=T` | live: the ring's frame at or before tick T, rebuilt, as a binary key frame |
//! | `POST /world/control?op=…` | replay: `seek&tick=T`, `step&by=N`, `play&speed=S` (1 to 50), `pause` |
//!
//! Every malformed request (unknown parameter, a number that is not one) gets 400 with a line that
//! says what to send instead. Handlers never wait on the tick thread.

use std::collections::BTreeMap;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use axum::Router;
use axum::extract::{RawQuery, State};
use axum::http::{StatusCode, header};
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};

use super::{Mode, VizShared, hub, ring};

const PAGE_HTML: &str = include_str!("page/index.html");
const PAGE_JS: &str = include_str!("page/viz.js");

/// The visualizer's routes, with their state applied (merge into any router).
pub fn router(shared: Arc<VizShared>) -> Router {
    Router::new()
        .route("/", get(page))
        .route("/world", get(page))
        .route("/world/", get(page))
        .route("/world/viz.js", get(script))
        .route("/world/meta", get(meta))
        .route("/world/stream", get(stream))
        .route("/world/ping", post(ping))
        .route("/world/history", get(history))
        .route("/world/frame", get(frame))
        .route("/world/control", post(control))
        .with_state(shared)
}

fn bad_request(msg: impl Into<String>) -> Response {
    (StatusCode::BAD_REQUEST, format!("{}\n", msg.into())).into_response()
}

/// Parses `a=1&b=2`, allowing only `allowed` keys, each at most once.
// The error is the answer itself (an axum Response); a query is parsed once per request.
#[allow(clippy::result_large_err)]
fn params(q: Option<String>, allowed: &[&str]) -> Result<BTreeMap<String, String>, Response> {
    let mut out = BTreeMap::new();
    for pair in q.unwrap_or_default().split('&').filter(|p| !p.is_empty()) {
        let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
        if !allowed.contains(&k) {
            return Err(bad_request(format!(
                "unknown parameter {k:?}: this route takes {}",
                if allowed.is_empty() {
                    "none".to_string()
                } else {
                    allowed.join(", ")
                }
            )));
        }
        if out.insert(k.to_string(), v.to_string()).is_some() {
            return Err(bad_request(format!("parameter {k:?} given twice")));
        }
    }
    Ok(out)
}

// The error is the answer itself (an axum Response); a query is parsed once per request.
#[allow(clippy::result_large_err)]
fn number<T: std::str::FromStr>(p: &BTreeMap<String, String>, key: &str, what: &str) -> Result<Option<T>, Response> {
    match p.get(key) {
        None => Ok(None),
        Some(v) => v.parse().map(Some).map_err(|_| bad_request(format!("{key}={v:?} is not {what}"))),
    }
}

async fn page(RawQuery(q): RawQuery) -> Response {
    if let Err(r) = params(q, &[]) {
        return r;
    }
    (
        [
            (header::CONTENT_TYPE, "text/html; charset=utf-8"),
            (header::CACHE_CONTROL, "no-cache"),
        ],
        PAGE_HTML,
    )
        .into_response()
}

async fn script() -> Response {
    (
        [
            (header::CONTENT_TYPE, "text/javascript; charset=utf-8"),
            (header::CACHE_CONTROL, "no-cache"),
        ],
        PAGE_JS,
    )
        .into_response()
}

async fn meta(State(s): State<Arc<VizShared>>, RawQuery(q): RawQuery) -> Response {
    if let Err(r) = params(q, &[]) {
        return r;
    }
    axum::Json(s.meta_json()).into_response()
}

/// One viewer's stream; leaving the hub when the connection goes.
struct ViewerStream {
    rx: tokio::sync::mpsc::Receiver<hub::Message>,
    shared: Arc<VizShared>,
    id: u64,
}

impl futures_core::Stream for ViewerStream {
    type Item = Result<Event, std::convert::Infallible>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        self.rx
            .poll_recv(cx)
            .map(|m| m.map(|m| Ok(Event::default().event(m.event).data(&*m.data))))
    }
}

impl Drop for ViewerStream {
    fn drop(&mut self) {
        self.shared.hub.leave(self.id);
    }
}

async fn stream(State(s): State<Arc<VizShared>>, RawQuery(q): RawQuery) -> Response {
    if let Err(r) = params(q, &[]) {
        return r;
    }
    let hello = serde_json::json!({
        "mode": match s.mode { Mode::Live => "live", Mode::Replay => "replay" },
        "ping_every_s": (s.cfg.idle_timeout.as_secs_f64() / 4.0).clamp(0.5, 10.0),
    });
    match s.hub.join(hello) {
        Ok((id, rx)) => {
            if let Some(c) = s.control.lock().ok().and_then(|c| c.clone()) {
                // A replay tells a new viewer where the playhead is.
                c.announce_state();
            }
            let st = ViewerStream {
                rx,
                shared: Arc::clone(&s),
                id,
            };
            let mut r = Sse::new(st)
                .keep_alive(KeepAlive::new().interval(Duration::from_secs(10)))
                .into_response();
            r.headers_mut()
                .insert(header::CACHE_CONTROL, "no-cache".parse().expect("static header"));
            r
        }
        Err(hub::Full) => (
            StatusCode::SERVICE_UNAVAILABLE,
            format!(
                "{} viewers are watching already, the most this server allows (--viz-max-viewers)\n",
                s.cfg.max_viewers
            ),
        )
            .into_response(),
    }
}

async fn ping(State(s): State<Arc<VizShared>>, RawQuery(q): RawQuery) -> Response {
    let p = match params(q, &["viewer"]) {
        Ok(p) => p,
        Err(r) => return r,
    };
    let id: u64 = match number(&p, "viewer", "a viewer id (from the stream's hello event)") {
        Ok(Some(id)) => id,
        Ok(None) => return bad_request("missing viewer=ID (from the stream's hello event)"),
        Err(r) => return r,
    };
    if s.hub.ping(id) {
        StatusCode::NO_CONTENT.into_response()
    } else {
        (
            StatusCode::NOT_FOUND,
            "no such viewer (dropped or never connected): reconnect to /world/stream\n",
        )
            .into_response()
    }
}

async fn history(State(s): State<Arc<VizShared>>, RawQuery(q): RawQuery) -> Response {
    if let Err(r) = params(q, &[]) {
        return r;
    }
    match s.mode {
        Mode::Live => {
            let ring = s.ring.lock().unwrap_or_else(|e| e.into_inner());
            let ticks = ring.ticks();
            axum::Json(serde_json::json!({
                "mode": "live",
                "ticks": ticks,
                "frames": ring.len(),
                "bytes": ring.bytes(),
                "bytes_max": s.cfg.ring_bytes_max,
                "history_s": s.cfg.history_s,
            }))
            .into_response()
        }
        Mode::Replay => match s.control.lock().ok().and_then(|c| c.clone()) {
            Some(c) => axum::Json(c.state()).into_response(),
            None => (StatusCode::SERVICE_UNAVAILABLE, "the replay is starting\n").into_response(),
        },
    }
}

async fn frame(State(s): State<Arc<VizShared>>, RawQuery(q): RawQuery) -> Response {
    let p = match params(q, &["tick"]) {
        Ok(p) => p,
        Err(r) => return r,
    };
    let tick: u64 = match number(&p, "tick", "a tick number") {
        Ok(Some(t)) => t,
        Ok(None) => return bad_request("missing tick=T (GET /world/history lists the ticks held)"),
        Err(r) => return r,
    };
    if s.mode == Mode::Replay {
        return (
            StatusCode::NOT_FOUND,
            "a replay has no history ring: POST /world/control?op=seek&tick=T moves the playhead\n",
        )
            .into_response();
    }
    let chain = s.ring.lock().unwrap_or_else(|e| e.into_inner()).chain_for(tick);
    let Some(chain) = chain else {
        return (
            StatusCode::NOT_FOUND,
            format!("no frame at or before tick {tick} in the history ring\n"),
        )
            .into_response();
    };
    // Decoding runs on a blocking thread: a large zone's chain takes milliseconds.
    let shared = Arc::clone(&s);
    let rebuilt = tokio::task::spawn_blocking(move || {
        let cached = shared.rebuilt.lock().ok().and_then(|c| c.clone());
        let f = ring::rebuild(&chain, cached.as_ref().map(|(seq, f)| (*seq, f)))?;
        let seq = chain.frames.last().map_or(0, |(s, _)| *s);
        let bytes = super::frame::encode_key(&f);
        if let Ok(mut c) = shared.rebuilt.lock() {
            *c = Some((seq, f));
        }
        Ok::<_, super::frame::FrameError>(bytes)
    })
    .await;
    match rebuilt {
        Ok(Ok(bytes)) => ([(header::CONTENT_TYPE, "application/octet-stream")], bytes).into_response(),
        Ok(Err(e)) => (StatusCode::INTERNAL_SERVER_ERROR, format!("history frame does not rebuild: {e}\n")).into_response(),
        Err(e) => (StatusCode::INTERNAL_SERVER_ERROR, format!("history rebuild failed: {e}\n")).into_response(),
    }
}

async fn control(State(s): State<Arc<VizShared>>, RawQuery(q): RawQuery) -> Response {
    let p = match params(q, &["op", "tick", "by", "speed"]) {
        Ok(p) => p,
        Err(r) => return r,
    };
    let Some(c) = s.control.lock().ok().and_then(|c| c.clone()) else {
        return (
            StatusCode::NOT_FOUND,
            "controls exist only in a replay (zone-replay --serve); a live zone scrubs with GET /world/frame?tick=T\n",
        )
            .into_response();
    };
    let cmd = match p.get("op").map(String::as_str) {
        Some("seek") => match number::<u64>(&p, "tick", "a tick number") {
            Ok(Some(t)) => super::replay::Command::Seek(t),
            Ok(None) => return bad_request("seek needs tick=T"),
            Err(r) => return r,
        },
        Some("step") => match number::<i64>(&p, "by", "a whole number of ticks") {
            Ok(by) => super::replay::Command::Step(by.unwrap_or(1)),
            Err(r) => return r,
        },
        Some("play") => match number::<f64>(&p, "speed", "a number") {
            Ok(speed) => {
                let speed = speed.unwrap_or(1.0);
                if !(1.0..=50.0).contains(&speed) {
                    return bad_request(format!("speed={speed} is out of range: play at 1 to 50 times real time"));
                }
                super::replay::Command::Play(speed)
            }
            Err(r) => return r,
        },
        Some("pause") => super::replay::Command::Pause,
        Some(other) => return bad_request(format!("unknown op {other:?}: use seek, step, play or pause")),
        None => return bad_request("missing op=seek|step|play|pause"),
    };
    match c.send(cmd).await {
        Some(state) => axum::Json(state).into_response(),
        None => (StatusCode::SERVICE_UNAVAILABLE, "the replay driver did not answer in time\n").into_response(),
    }
}
