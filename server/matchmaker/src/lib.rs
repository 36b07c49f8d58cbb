//! `zone-matchmaker`: the matching algorithm and the modes file, pure and deterministic.
//!
//! What it does: keeps a pool of waiting tickets (a ticket is one player or one party), and on each
//! [`Pool::pass`] forms matches: oldest ticket first, rating windows that widen with waiting time up
//! to a cap, and mutual windows (every ticket's window must hold the match's rating spread).
//!
//! What it must never do: IO, clocks, threads, randomness or `HashMap` iteration. Time is passed in
//! as milliseconds; the same events (inserts, cancels, passes) always give the same matches.
//!
//! INTERFACE SKELETON: the lead wrote the types and signatures so that the lobby (durable queue,
//! API) and this crate can be built in parallel. The bodies are filled in by the matcher's owner.

use std::collections::BTreeMap;

/// Ticket id, assigned by the durable queue (a PostgreSQL `bigserial`).
pub type TicketId = i64;
/// Player id: the lobby's account id.
pub type PlayerId = i64;

/// One player in a ticket, with the rating the lobby's rating store gave it.
#[derive(Debug, Clone, PartialEq)]
pub struct Member {
    pub player_id: PlayerId,
    pub rating: f64,
}

/// A waiting ticket: one player, or a party matched as a unit (always on the same team).
#[derive(Debug, Clone, PartialEq)]
pub struct Ticket {
    pub id: TicketId,
    pub mode: String,
    pub region: Option<String>,
    /// 1..=`Mode::max_party` members.
    pub members: Vec<Member>,
    /// When the ticket first entered the queue; kept when a ticket is put back (failed seat).
    pub enqueued_ms: u64,
}

/// How regions are matched.
#[derive(Debug, Clone, PartialEq)]
pub enum RegionRule {
    /// Only tickets of the same region (or both without a region) are matched.
    Strict,
    /// Same region first; after waiting this long a ticket accepts any region.
    AnyAfterMs(u64),
}

/// One mode of the modes file.
#[derive(Debug, Clone, PartialEq)]
pub struct Mode {
    pub name: String,
    /// Teams per match (2 for 1v1 and 3v3).
    pub teams: u32,
    /// Players per team (1 for 1v1, 3 for 3v3).
    pub team_size: u32,
    /// Largest party accepted (≤ team_size).
    pub max_party: u32,
    /// Rating window at 0 wait (the seed's 100).
    pub initial_window: f64,
    /// Rating points added per second of waiting.
    pub widen_per_s: f64,
    /// The window never grows past this.
    pub max_window: f64,
    pub region: RegionRule,
    /// Most players waiting in this mode; the lobby answers 429 beyond it.
    pub queue_limit: usize,
}

impl Mode {
    /// Players in one match.
    pub fn players_per_match(&self) -> u32 {
        self.teams * self.team_size
    }
}

/// The modes file, by name (sorted).
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Modes {
    pub modes: BTreeMap<String, Mode>,
}

/// A refused modes file: names the file, the field and the fix.
#[derive(Debug, thiserror::Error)]
#[error("{file}: {field}: {problem} (fix: {fix})")]
pub struct ModesError {
    pub file: String,
    pub field: String,
    pub problem: String,
    pub fix: String,
}

impl Modes {
    /// Parses and validates a modes file's text; `file` is only used in errors.
    pub fn from_toml(file: &str, text: &str) -> Result<Modes, ModesError> {
        let _ = (file, text);
        todo!("matcher owner")
    }

    pub fn get(&self, name: &str) -> Option<&Mode> {
        self.modes.get(name)
    }

    pub fn names(&self) -> Vec<&str> {
        self.modes.keys().map(String::as_str).collect()
    }
}

/// A match formed by a pass.
#[derive(Debug, Clone, PartialEq)]
pub struct Match {
    pub mode: String,
    pub region: Option<String>,
    /// Tickets in the match, oldest first.
    pub tickets: Vec<TicketId>,
    /// `mode.teams` teams of `mode.team_size` players each.
    pub teams: Vec<Vec<PlayerId>>,
    /// Quality: the rating spread (highest minus lowest ticket rating; a party's rating is its mean).
    pub spread: f64,
    pub made_ms: u64,
}

/// Why a ticket was refused by the pool.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum PoolError {
    #[error("unknown mode {0:?}")]
    UnknownMode(String),
    #[error("party of {size} in mode {mode:?}: 1..={max} players")]
    BadParty { mode: String, size: usize, max: u32 },
    #[error("ticket {0} is already in the pool")]
    DuplicateTicket(TicketId),
    #[error("player {0} already has a ticket in the pool")]
    DuplicatePlayer(PlayerId),
    #[error("mode {mode:?} is full ({limit} players waiting)")]
    Full { mode: String, limit: usize },
}

/// The rating window of a ticket of `mode` that has waited `waited_ms`: starts at
/// `initial_window`, grows by `widen_per_s`, never past `max_window`; never shrinks.
pub fn window(mode: &Mode, waited_ms: u64) -> f64 {
    let _ = (mode, waited_ms);
    todo!("matcher owner")
}

/// Waiting players of one (mode, region).
#[derive(Debug, Clone, PartialEq)]
pub struct Depth {
    pub mode: String,
    pub region: Option<String>,
    pub tickets: usize,
    pub players: usize,
}

/// The pool of waiting tickets.
#[derive(Debug, Clone)]
pub struct Pool {
    modes: Modes,
}

impl Pool {
    pub fn new(modes: Modes) -> Pool {
        Pool { modes }
    }

    pub fn modes(&self) -> &Modes {
        &self.modes
    }

    /// Adds a ticket (a new one, one rebuilt from the durable queue, or one put back).
    pub fn insert(&mut self, ticket: Ticket) -> Result<(), PoolError> {
        let _ = ticket;
        todo!("matcher owner")
    }

    /// Removes a ticket (cancelled or matched elsewhere); `None` if it was not there.
    pub fn remove(&mut self, id: TicketId) -> Option<Ticket> {
        let _ = id;
        todo!("matcher owner")
    }

    pub fn get(&self, id: TicketId) -> Option<&Ticket> {
        let _ = id;
        todo!("matcher owner")
    }

    pub fn len(&self) -> usize {
        todo!("matcher owner")
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Forms every match it can at `now_ms` and removes their tickets from the pool.
    pub fn pass(&mut self, now_ms: u64) -> Vec<Match> {
        let _ = now_ms;
        todo!("matcher owner")
    }

    /// Waiting tickets and players by (mode, region), sorted.
    pub fn depth(&self) -> Vec<Depth> {
        todo!("matcher owner")
    }
}

/// One entry of the matcher's event log.
#[derive(Debug, Clone, PartialEq)]
pub enum Event {
    Insert(Ticket),
    Cancel(TicketId),
    Pass { now_ms: u64 },
}

/// Replays an event log on a fresh pool; the same log always gives the same matches.
pub fn replay(modes: Modes, events: &[Event]) -> Vec<Match> {
    let mut pool = Pool::new(modes);
    let mut out = Vec::new();
    for e in events {
        match e {
            Event::Insert(t) => {
                let _ = pool.insert(t.clone());
            }
            Event::Cancel(id) => {
                pool.remove(*id);
            }
            Event::Pass { now_ms } => out.extend(pool.pass(*now_ms)),
        }
    }
    out
}
