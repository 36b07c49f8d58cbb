//! The server's lifecycle as an orchestrator sees it: ready, healthy, how full, allocatable or
//! not, draining, shut down. One trait, [`Lifecycle`], with two backends chosen by
//! `--lifecycle local|agones`:
//!
//! - `local` ([`crate::announce`]): the zone announces itself to a zone-lobby's directory in Redis;
//!   the lobby offers it to players while it is ready, allocatable and has room;
//! - `agones` ([`agones`]): the Agones SDK's REST gateway on 127.0.0.1:`AGONES_SDK_HTTP_PORT`:
//!   Ready, Health every 2 s while the tick advances, labels and annotations, alpha player
//!   tracking, Shutdown after the final snapshot. With `--lobby-redis` the zone also announces
//!   itself to the lobby ([`Fanout`]).
//!
//! The tick thread calls the trait's methods: they store atomics or `try_send` into a bounded
//! queue (full: dropped and counted) and return. Every backend does its IO on its own thread.
//! [`overload::OverloadGuard`] decides, from the tick's p99 per second, when the server stops being
//! allocatable (and when it is again). Nothing here may block, sleep or do IO on the tick thread.

pub mod agones;
pub mod overload;

use std::sync::Arc;
use std::sync::mpsc::SyncSender;
use std::time::Duration;

use zone_sim::PlayerId;

use crate::net::ToNet;

/// What the tick loop tells the orchestrator. Every method is called from the tick thread and
/// must return at once (atomics, bounded `try_send`); `shutdown` is called from the main thread
/// after the final snapshot and may wait (bounded).
pub trait Lifecycle: Send + Sync {
    /// `local` or `agones` (for logs).
    fn backend(&self) -> &'static str;
    /// The zone is loaded (or restored) and the game socket is bound: take players.
    fn ready(&self);
    /// A tick completed (the heartbeat's evidence that the loop is alive).
    fn tick_advanced(&self) {}
    fn player_joined(&self, p: PlayerId);
    fn player_left(&self, p: PlayerId);
    fn set_players(&self, n: usize);
    /// Tick duration p99 over the last ten seconds, microseconds (see `report::RecentQuantile`).
    fn set_tick_p99_us(&self, us: u32);
    /// Overload: false keeps the server running but stops new allocations and joins.
    fn set_allocatable(&self, yes: bool);
    /// A drain started: stop new allocations and joins (players already in are told by the
    /// network thread).
    fn set_draining(&self);
    /// The tick loop ended and the final snapshot is being taken (still healthy).
    fn set_stopping(&self) {}
    /// Where the orchestrator's kicks go (the network thread's command queue).
    fn set_kick_sink(&self, _tx: SyncSender<ToNet>) {}
    /// After the final snapshot: tell the orchestrator the server is done (Agones: Shutdown;
    /// local: withdraw the directory record). Waits at most about `budget`.
    fn shutdown(&self, _budget: Duration) {}
}

/// Several backends at once (Agones plus the lobby's directory): every call goes to each.
pub struct Fanout(pub Vec<Arc<dyn Lifecycle>>);

impl Lifecycle for Fanout {
    fn backend(&self) -> &'static str {
        self.0.first().map_or("none", |l| l.backend())
    }
    fn ready(&self) {
        self.0.iter().for_each(|l| l.ready());
    }
    fn tick_advanced(&self) {
        self.0.iter().for_each(|l| l.tick_advanced());
    }
    fn player_joined(&self, p: PlayerId) {
        self.0.iter().for_each(|l| l.player_joined(p));
    }
    fn player_left(&self, p: PlayerId) {
        self.0.iter().for_each(|l| l.player_left(p));
    }
    fn set_players(&self, n: usize) {
        self.0.iter().for_each(|l| l.set_players(n));
    }
    fn set_tick_p99_us(&self, us: u32) {
        self.0.iter().for_each(|l| l.set_tick_p99_us(us));
    }
    fn set_allocatable(&self, yes: bool) {
        self.0.iter().for_each(|l| l.set_allocatable(yes));
    }
    fn set_draining(&self) {
        self.0.iter().for_each(|l| l.set_draining());
    }
    fn set_stopping(&self) {
        self.0.iter().for_each(|l| l.set_stopping());
    }
    fn set_kick_sink(&self, tx: SyncSender<ToNet>) {
        self.0.iter().for_each(|l| l.set_kick_sink(tx.clone()));
    }
    fn shutdown(&self, budget: Duration) {
        // In the order given: main.rs pushes the directory first (players stop being sent
        // here) and Agones last (its Shutdown deletes the pod).
        for l in self.0.iter() {
            l.shutdown(budget);
        }
    }
}

/// The `local` backend as an owner: the announcer's tick-side state plus its thread, stopped (and
/// the record withdrawn) by `shutdown`.
pub struct LocalLifecycle {
    shared: Arc<crate::announce::AnnounceShared>,
    announcer: std::sync::Mutex<Option<crate::announce::Announcer>>,
}

impl LocalLifecycle {
    pub fn new(announcer: crate::announce::Announcer) -> LocalLifecycle {
        LocalLifecycle {
            shared: Arc::clone(&announcer.shared),
            announcer: std::sync::Mutex::new(Some(announcer)),
        }
    }
}

impl Lifecycle for LocalLifecycle {
    fn backend(&self) -> &'static str {
        "local"
    }
    fn ready(&self) {
        self.shared.ready();
    }
    fn player_joined(&self, p: PlayerId) {
        self.shared.player_joined(p);
    }
    fn player_left(&self, p: PlayerId) {
        Lifecycle::player_left(&*self.shared, p);
    }
    fn set_players(&self, n: usize) {
        Lifecycle::set_players(&*self.shared, n);
    }
    fn set_tick_p99_us(&self, us: u32) {
        Lifecycle::set_tick_p99_us(&*self.shared, us);
    }
    fn set_allocatable(&self, yes: bool) {
        Lifecycle::set_allocatable(&*self.shared, yes);
    }
    fn set_draining(&self) {
        Lifecycle::set_draining(&*self.shared);
    }
    fn set_kick_sink(&self, tx: SyncSender<ToNet>) {
        Lifecycle::set_kick_sink(&*self.shared, tx);
    }
    fn shutdown(&self, _budget: Duration) {
        let a = self.announcer.lock().ok().and_then(|mut g| g.take());
        if let Some(a) = a {
            a.stop();
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Mutex;

    use super::*;

    struct Named(&'static str, Arc<Mutex<Vec<&'static str>>>);

    impl Lifecycle for Named {
        fn backend(&self) -> &'static str {
            self.0
        }
        fn ready(&self) {}
        fn player_joined(&self, _p: PlayerId) {}
        fn player_left(&self, _p: PlayerId) {}
        fn set_players(&self, _n: usize) {}
        fn set_tick_p99_us(&self, _us: u32) {}
        fn set_allocatable(&self, _yes: bool) {}
        fn set_draining(&self) {}
        fn shutdown(&self, _budget: Duration) {
            self.1.lock().unwrap().push(self.0);
        }
    }

    #[test]
    fn fanout_shuts_down_in_the_order_given_directory_before_agones() {
        let calls = Arc::new(Mutex::new(Vec::new()));
        let f = Fanout(vec![
            Arc::new(Named("local", calls.clone())),
            Arc::new(Named("agones", calls.clone())),
        ]);
        f.shutdown(Duration::from_millis(1));
        assert_eq!(*calls.lock().unwrap(), vec!["local", "agones"]);
    }
}
