//! A minimal Chrome DevTools Protocol client over `--remote-debugging-pipe`, for the browser tests
//! of the world visualizer: Debian's `chromium`, headless, driven with no WebSocket and no extra
//! crate. Chromium reads commands on fd 3 and writes replies and events on fd 4, each a JSON
//! message ending in a NUL byte; a shell `exec` maps those to the child's stdin and stdout.
//!
//! [`Browser::find`] returns `None` when no Chromium is installed, and the tests then say they
//! were skipped.

#![allow(dead_code)]

use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::mpsc::{Receiver, RecvTimeoutError, channel};
use std::time::{Duration, Instant};

use serde_json::{Value, json};

/// A headless Chromium with one page attached.
pub struct Browser {
    child: Child,
    stdin: ChildStdin,
    rx: Receiver<Value>,
    next_id: u64,
    session: Option<String>,
    /// Every event received so far (console messages, exceptions, log entries).
    pub events: Vec<Value>,
    _profile: tempfile::TempDir,
}

impl Browser {
    /// The Chromium binary: `$CHROMIUM`, else the Debian package's. In CI (`CI` set) a missing
    /// Chromium is an error, not a skip: `.ci/run` installs it.
    pub fn find() -> Option<PathBuf> {
        if let Some(p) = std::env::var_os("CHROMIUM") {
            return Some(PathBuf::from(p));
        }
        let found = ["/usr/bin/chromium", "/usr/bin/chromium-browser"]
            .iter()
            .map(PathBuf::from)
            .find(|p| p.exists());
        assert!(
            found.is_some() || std::env::var_os("CI").is_none(),
            "CI is set but Chromium is not installed (.ci/run installs Debian's chromium)"
        );
        found
    }

    /// Starts Chromium (headless, a fresh profile, no network beyond what the page asks for)
    /// and opens a page of `width` × `height` pixels.
    pub fn launch(binary: &Path, width: u32, height: u32) -> Browser {
        let profile = tempfile::tempdir().unwrap();
        let log = std::fs::File::create(profile.path().join("chromium.log")).unwrap();
        let mut child = Command::new("bash")
            .arg("-c")
            .arg(r#"exec "$0" "$@" 3<&0 4>&1 0</dev/null 1>/dev/null"#)
            .arg(binary)
            .args([
                "--headless",
                "--no-sandbox",
                "--disable-gpu",
                "--disable-quic",
                "--no-first-run",
                "--disable-background-networking",
                "--disable-component-update",
                "--disable-sync",
                "--disable-extensions",
                "--disable-dev-shm-usage",
                "--mute-audio",
                "--remote-debugging-pipe",
                &format!("--window-size={width},{height}"),
                &format!("--user-data-dir={}", profile.path().display()),
                "about:blank",
            ])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::from(log))
            .spawn()
            .expect("cannot start chromium");
        let stdin = child.stdin.take().unwrap();
        let stdout = child.stdout.take().unwrap();
        let (tx, rx) = channel();
        std::thread::spawn(move || {
            let mut r = BufReader::new(stdout);
            let mut buf = Vec::new();
            loop {
                buf.clear();
                match r.read_until(0, &mut buf) {
                    Ok(0) | Err(_) => break,
                    Ok(_) => {
                        if buf.last() == Some(&0) {
                            buf.pop();
                        }
                        if let Ok(v) = serde_json::from_slice::<Value>(&buf)
                            && tx.send(v).is_err()
                        {
                            break;
                        }
                    }
                }
            }
        });
        let mut b = Browser {
            child,
            stdin,
            rx,
            next_id: 0,
            session: None,
            events: Vec::new(),
            _profile: profile,
        };
        let target = b.call_browser("Target.createTarget", json!({"url": "about:blank"}));
        let target_id = target["targetId"].as_str().expect("a target id").to_string();
        let attached = b.call_browser("Target.attachToTarget", json!({"targetId": target_id, "flatten": true}));
        b.session = Some(attached["sessionId"].as_str().expect("a session id").to_string());
        for m in ["Page.enable", "Runtime.enable", "Log.enable"] {
            b.call(m, json!({}));
        }
        b.call(
            "Emulation.setDeviceMetricsOverride",
            json!({"width": width, "height": height, "deviceScaleFactor": 1, "mobile": false}),
        );
        b
    }

    fn send(&mut self, method: &str, params: Value, session: Option<String>) -> u64 {
        self.next_id += 1;
        let mut msg = json!({"id": self.next_id, "method": method, "params": params});
        if let Some(s) = session {
            msg["sessionId"] = json!(s);
        }
        let mut bytes = serde_json::to_vec(&msg).unwrap();
        bytes.push(0);
        self.stdin.write_all(&bytes).expect("chromium's command pipe is closed");
        self.stdin.flush().unwrap();
        self.next_id
    }

    fn wait_reply(&mut self, id: u64, method: &str) -> Value {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.rx.recv_timeout(left) {
                Ok(v) if v["id"].as_u64() == Some(id) => {
                    if let Some(e) = v.get("error") {
                        panic!("chromium: {method} failed: {e}");
                    }
                    return v["result"].clone();
                }
                Ok(v) => self.events.push(v),
                Err(RecvTimeoutError::Timeout) => panic!("chromium did not answer {method} within 60 s"),
                Err(RecvTimeoutError::Disconnected) => panic!("chromium exited (during {method})"),
            }
        }
    }

    fn call_browser(&mut self, method: &str, params: Value) -> Value {
        let id = self.send(method, params, None);
        self.wait_reply(id, method)
    }

    /// A command to the page.
    pub fn call(&mut self, method: &str, params: Value) -> Value {
        let s = self.session.clone();
        let id = self.send(method, params, s);
        self.wait_reply(id, method)
    }

    /// Collects events that arrived meanwhile.
    pub fn pump(&mut self) {
        while let Ok(v) = self.rx.try_recv() {
            self.events.push(v);
        }
    }

    /// Opens `url` and waits for its load event.
    pub fn navigate(&mut self, url: &str) {
        self.call("Page.navigate", json!({"url": url}));
        self.wait_for("the page to load", Duration::from_secs(30), "document.readyState === 'complete'");
    }

    /// Evaluates a JavaScript expression in the page (promises awaited) and returns its value.
    pub fn eval(&mut self, expr: &str) -> Value {
        let r = self.call(
            "Runtime.evaluate",
            json!({"expression": expr, "returnByValue": true, "awaitPromise": true}),
        );
        if let Some(ex) = r.get("exceptionDetails") {
            panic!("page script `{expr}` threw: {ex}");
        }
        r["result"]["value"].clone()
    }

    /// Polls `expr` until it is true; panics with `what` after `timeout`.
    pub fn wait_for(&mut self, what: &str, timeout: Duration, expr: &str) {
        let deadline = Instant::now() + timeout;
        loop {
            if self.eval(expr) == json!(true) {
                return;
            }
            if Instant::now() >= deadline {
                let state = self.eval(PAGE_STATE_JS);
                let errors = self.console_errors();
                panic!("timed out after {timeout:?} waiting for {what} (`{expr}`); the page: {state}; console errors: {errors:?}");
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// A PNG of the page.
    pub fn screenshot(&mut self) -> Vec<u8> {
        self.capture(json!({"format": "png"}))
    }

    /// A PNG of the page's top-left `width` × `height` pixels, scaled by `scale` (a smaller file).
    pub fn screenshot_scaled(&mut self, width: u32, height: u32, scale: f64) -> Vec<u8> {
        self.capture(json!({"format": "png", "clip": {"x": 0, "y": 0, "width": width, "height": height, "scale": scale}}))
    }

    fn capture(&mut self, params: Value) -> Vec<u8> {
        use base64::Engine;
        let r = self.call("Page.captureScreenshot", params);
        base64::engine::general_purpose::STANDARD
            .decode(r["data"].as_str().expect("screenshot data"))
            .unwrap()
    }

    /// Console errors, uncaught exceptions and error log entries seen so far (failed loads too).
    pub fn console_errors(&mut self) -> Vec<String> {
        self.pump();
        self.events
            .iter()
            .filter_map(|e| match e["method"].as_str() {
                Some("Runtime.exceptionThrown") => Some(format!("exception: {}", e["params"]["exceptionDetails"])),
                Some("Runtime.consoleAPICalled") if e["params"]["type"] == "error" => {
                    Some(format!("console.error: {}", e["params"]["args"]))
                }
                Some("Log.entryAdded") if e["params"]["entry"]["level"] == "error" => {
                    Some(format!("log: {}", e["params"]["entry"]["text"]))
                }
                _ => None,
            })
            .collect()
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Where the tests write their screenshots (a test artifact; one is copied to `benchmarks/` for
/// the README by hand).
pub fn screenshot_dir() -> PathBuf {
    let d = std::env::var_os("VIZ_SCREENSHOT_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("viz-screenshots"));
    std::fs::create_dir_all(&d).unwrap();
    d
}

/// JavaScript that summarises the visualizer page's state (for failure messages).
pub const PAGE_STATE_JS: &str = r#"JSON.stringify({
  tick: document.getElementById('tick') && document.getElementById('tick').textContent,
  count: document.getElementById('count') && document.getElementById('count').textContent,
  banner: document.getElementById('banner') && document.getElementById('banner').textContent,
  frames: window.viz && window.viz.frames, errors: window.viz && window.viz.errors,
  replay: window.viz && window.viz.replay, history: window.viz && window.viz.history.length,
})"#;

/// JavaScript that counts the canvas pixels that are not the page's background colours.
pub const PAINTED_PIXELS_JS: &str = r#"(() => {
  const c = document.getElementById('map');
  const d = c.getContext('2d').getImageData(0, 0, c.width, c.height).data;
  let n = 0;
  for (let i = 0; i < d.length; i += 4) {
    const r = d[i], g = d[i + 1], b = d[i + 2];
    const bg = (r === 0x0e && g === 0x12 && b === 0x17) || (r === 0x14 && g === 0x1b && b === 0x24);
    if (!bg) n++;
  }
  return n;
})()"#;

/// JavaScript that returns the shown frame's positions by id (as strings, player ids too).
pub const POSITIONS_JS: &str = r#"(() => {
  const f = window.viz.shown, out = {};
  for (let i = 0; i < f.n; i++) out[String(f.ids[i])] = [f.x[i], f.y[i]];
  return JSON.stringify(out);
})()"#;

/// How many objects kept their id and changed position between two [`POSITIONS_JS`] results.
pub fn moved(a: &Value, b: &Value) -> usize {
    let a: serde_json::Map<String, Value> = serde_json::from_str(a.as_str().unwrap()).unwrap();
    let b: serde_json::Map<String, Value> = serde_json::from_str(b.as_str().unwrap()).unwrap();
    a.iter().filter(|(k, v)| b.get(*k).is_some_and(|w| w != *v)).count()
}
