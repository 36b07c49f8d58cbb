//! `zone-matchmaker`: the matching algorithm and the modes file, pure and deterministic.
//!
//! What it does: keeps a pool of waiting tickets (a ticket is one player or one party), and on each
//! [`Pool::pass`] forms matches: oldest ticket first, rating windows that widen with waiting time up
//! to a cap, and mutual windows (every ticket's window must hold the match's rating spread).
//!
//! What it must never do: IO, clocks, threads, randomness or `HashMap` iteration. Time is passed in
//! as milliseconds; the same events (inserts, cancels, passes) always give the same matches.
//!
//! # The rules, precisely
//!
//! - A ticket's **rating** is its members' mean rating; a match's **spread** (its quality) is the
//!   highest minus the lowest ticket rating in it.
//! - A ticket's **window** at time `now` is [`window`]`(mode, now - enqueued_ms)`:
//!   `min(initial_window + widen_per_s × waited_s, max_window)`. It never shrinks as time passes.
//! - A set of tickets of one mode is **compatible** at `now` when their players fill the mode's
//!   teams exactly (`teams` teams of `team_size`, a party always on one team), the spread is within
//!   **every** ticket's window (the window is mutual), and the region rule holds: all tickets of
//!   one region (tickets without a region form their own region ""), or, with
//!   `region = { any_after_s = S }`, every ticket of the match has waited at least `S` (mutual,
//!   like the window). A match's region is its anchor's.
//! - **Oldest first.** A pass at `now` takes the waiting tickets of each mode (modes in name order)
//!   in the order (enqueued_ms, ticket id), and each one still waiting becomes in turn the
//!   **anchor**: the pass forms a compatible match containing the anchor and tickets still waiting
//!   at that point of the pass, if it finds one. So a ticket is served before every younger ticket
//!   of its mode; a ticket left waiting after a pass had no match found for it among the tickets
//!   that were still waiting at its turn (every ticket left waiting, and every ticket of a match
//!   whose anchor is younger than it). The guarantee "the oldest compatible ticket is served
//!   first" means exactly this. For tickets of one player the search is complete: a ticket left
//!   waiting had no compatible match among the [`pool::SEARCH_LIMIT`] (16) tickets nearest it in
//!   rating inside its window. With parties the choice within a rating interval is nearest-first
//!   and can, rarely, miss a team packing that exists.
//! - **Which partners.** First the anchor's own region, nearest rating first, within the initial
//!   window (every ticket's window is at least that wide; at most [`pool::FAST_LIMIT`] read).
//!   Failing that, over the [`pool::SEARCH_LIMIT`] nearest tickets in its window, window levels: for each
//!   level `L` (ascending: the initial window, then each partner's window, never above the
//!   anchor's), the tickets whose window is at least `L` and whose rating is within `L` of the
//!   anchor, in every interval of width `L` that holds the anchor, nearest the anchor first; the
//!   first level that gives a match wins, with its smallest spread. Failing that, and if the region
//!   rule allows, the same over every region. Ties go to the older ticket, then the lower id.
//! - **Teams.** The tickets of a match are assigned to teams to bring the teams' rating sums as
//!   close as possible (a small exhaustive search with a node budget: [`teams`]).
//!
//! # Cost
//!
//! Tickets are indexed by age per mode and by rating per (mode, region) in `BTreeMap`s; a pass
//! works on flat sorted copies of the rating index with skip links over matched tickets and sweeps
//! the matched tickets out at the end. Every step of a search is bounded, so a pass is linear in
//! the waiting tickets. `cargo bench -p zone-matchmaker --bench pass` measures it.

pub mod modes;
pub mod pool;
pub mod teams;

pub use pool::{Pool, ticket_rating};

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
        modes::parse(file, text)
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
    #[error("player {player} has rating {rating}, not a finite number")]
    BadRating { player: PlayerId, rating: f64 },
}

/// The rating window of a ticket of `mode` that has waited `waited_ms`: starts at
/// `initial_window`, grows by `widen_per_s`, never past `max_window`; never shrinks.
pub fn window(mode: &Mode, waited_ms: u64) -> f64 {
    let w = mode.initial_window + mode.widen_per_s * (waited_ms as f64 / 1000.0);
    w.min(mode.max_window).max(mode.initial_window)
}

/// Waiting players of one (mode, region).
#[derive(Debug, Clone, PartialEq)]
pub struct Depth {
    pub mode: String,
    pub region: Option<String>,
    pub tickets: usize,
    pub players: usize,
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
