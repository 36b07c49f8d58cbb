//! The pool of waiting tickets and the matching pass.
//!
//! What it does: indexes waiting tickets by age (per mode) and by rating (per mode and region), and
//! on [`Pool::pass`] takes every ticket in turn, oldest first, as the *anchor* of a possible match
//! and looks for partners near its rating (see the crate doc for the exact rules and guarantees).
//!
//! What it must never do: IO, clocks, randomness, threads or hash-ordered iteration; every loop
//! runs over `BTreeMap`s or sorted `Vec`s so that the same events give the same matches.

use std::collections::BTreeMap;
use std::ops::Bound;

use crate::teams::{self, Unit};
use crate::{Depth, Match, Mode, Modes, PlayerId, PoolError, RegionRule, Ticket, TicketId, window};

/// A rating as a key that orders like the (finite) `f64` it came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
struct RatingKey(u64);

impl RatingKey {
    fn of(x: f64) -> RatingKey {
        let b = x.to_bits();
        RatingKey(if b >> 63 == 1 { !b } else { b | (1 << 63) })
    }
}

/// What the rating index keeps for each ticket, so a scan needs no second lookup.
#[derive(Debug, Clone, Copy)]
struct Slot {
    rating: f64,
    enqueued_ms: u64,
    players: u32,
}

type RatingIndex = BTreeMap<(RatingKey, TicketId), Slot>;

#[derive(Debug, Clone)]
struct Entry {
    ticket: Ticket,
    /// The ticket's rating: its members' mean.
    rating: f64,
}

/// Waiting tickets of one region of one mode.
#[derive(Debug, Clone, Default)]
struct RegionIndex {
    by_rating: RatingIndex,
    players: usize,
}

/// Waiting tickets of one mode.
#[derive(Debug, Clone, Default)]
struct ModeIndex {
    /// (enqueued_ms, id): the order in which anchors are served.
    by_age: BTreeMap<(u64, TicketId), ()>,
    regions: BTreeMap<Option<String>, RegionIndex>,
    players: usize,
}

/// The pool of waiting tickets.
#[derive(Debug, Clone)]
pub struct Pool {
    modes: Modes,
    tickets: BTreeMap<TicketId, Entry>,
    players: BTreeMap<PlayerId, TicketId>,
    index: BTreeMap<String, ModeIndex>,
}

/// The ticket's rating: its members' mean rating.
pub fn ticket_rating(t: &Ticket) -> f64 {
    t.members.iter().map(|m| m.rating).sum::<f64>() / t.members.len().max(1) as f64
}

/// A candidate partner seen by a search.
#[derive(Debug, Clone, Copy)]
struct Cand {
    id: TicketId,
    rating: f64,
    dist: f64,
    window: f64,
    players: u32,
    enqueued_ms: u64,
}

/// The tickets chosen for a match (anchor first) and their rating spread.
struct Pick {
    ids: Vec<TicketId>,
    spread: f64,
}

impl Pool {
    pub fn new(modes: Modes) -> Pool {
        Pool {
            modes,
            tickets: BTreeMap::new(),
            players: BTreeMap::new(),
            index: BTreeMap::new(),
        }
    }

    pub fn modes(&self) -> &Modes {
        &self.modes
    }

    /// Adds a ticket (a new one, one rebuilt from the durable queue, or one put back). Refuses an
    /// unknown mode, a party of 0 or more than `max_party`, a non-finite rating, a ticket id or a
    /// player already waiting, and a ticket that would take its mode past `queue_limit` players
    /// (use [`Pool::restore`] for tickets that were already accepted once).
    pub fn insert(&mut self, ticket: Ticket) -> Result<(), PoolError> {
        self.add(ticket, true)
    }

    /// Adds a ticket that was already accepted once (rebuilt from the durable queue at start, or
    /// put back after a failed seat): the same checks as [`Pool::insert`] except the queue limit,
    /// so that a ticket already promised a place is never dropped.
    pub fn restore(&mut self, ticket: Ticket) -> Result<(), PoolError> {
        self.add(ticket, false)
    }

    fn add(&mut self, ticket: Ticket, check_limit: bool) -> Result<(), PoolError> {
        let mode = self
            .modes
            .get(&ticket.mode)
            .ok_or_else(|| PoolError::UnknownMode(ticket.mode.clone()))?;
        let size = ticket.members.len();
        if size == 0 || size > mode.max_party as usize {
            return Err(PoolError::BadParty {
                mode: mode.name.clone(),
                size,
                max: mode.max_party,
            });
        }
        if let Some(m) = ticket.members.iter().find(|m| !m.rating.is_finite()) {
            return Err(PoolError::BadRating {
                player: m.player_id,
                rating: m.rating,
            });
        }
        if self.tickets.contains_key(&ticket.id) {
            return Err(PoolError::DuplicateTicket(ticket.id));
        }
        for (i, m) in ticket.members.iter().enumerate() {
            if self.players.contains_key(&m.player_id) || ticket.members[..i].iter().any(|o| o.player_id == m.player_id) {
                return Err(PoolError::DuplicatePlayer(m.player_id));
            }
        }
        let waiting = self.index.get(&ticket.mode).map_or(0, |i| i.players);
        if check_limit && waiting + size > mode.queue_limit {
            return Err(PoolError::Full {
                mode: mode.name.clone(),
                limit: mode.queue_limit,
            });
        }
        let rating = ticket_rating(&ticket);
        let mi = self.index.entry(ticket.mode.clone()).or_default();
        mi.by_age.insert((ticket.enqueued_ms, ticket.id), ());
        mi.players += size;
        let ri = mi.regions.entry(ticket.region.clone()).or_default();
        ri.players += size;
        ri.by_rating.insert(
            (RatingKey::of(rating), ticket.id),
            Slot {
                rating,
                enqueued_ms: ticket.enqueued_ms,
                players: size as u32,
            },
        );
        for m in &ticket.members {
            self.players.insert(m.player_id, ticket.id);
        }
        self.tickets.insert(ticket.id, Entry { ticket, rating });
        Ok(())
    }

    /// Removes a ticket (cancelled or matched elsewhere); `None` if it was not there.
    pub fn remove(&mut self, id: TicketId) -> Option<Ticket> {
        let e = self.tickets.remove(&id)?;
        let t = e.ticket;
        for m in &t.members {
            self.players.remove(&m.player_id);
        }
        let size = t.members.len();
        if let Some(mi) = self.index.get_mut(&t.mode) {
            mi.by_age.remove(&(t.enqueued_ms, id));
            mi.players -= size;
            if let Some(ri) = mi.regions.get_mut(&t.region) {
                ri.by_rating.remove(&(RatingKey::of(e.rating), id));
                ri.players -= size;
                if ri.by_rating.is_empty() {
                    mi.regions.remove(&t.region);
                }
            }
            if mi.by_age.is_empty() {
                self.index.remove(&t.mode);
            }
        }
        Some(t)
    }

    pub fn get(&self, id: TicketId) -> Option<&Ticket> {
        self.tickets.get(&id).map(|e| &e.ticket)
    }

    /// The waiting ticket of a player, if any.
    pub fn ticket_of(&self, player: PlayerId) -> Option<TicketId> {
        self.players.get(&player).copied()
    }

    /// The rating window of a waiting ticket at `now_ms`.
    pub fn window_of(&self, id: TicketId, now_ms: u64) -> Option<f64> {
        let t = &self.tickets.get(&id)?.ticket;
        let mode = self.modes.get(&t.mode)?;
        Some(window(mode, now_ms.saturating_sub(t.enqueued_ms)))
    }

    /// Waiting tickets in id order.
    pub fn tickets(&self) -> impl Iterator<Item = &Ticket> {
        self.tickets.values().map(|e| &e.ticket)
    }

    /// Players waiting in a mode (what `queue_limit` bounds).
    pub fn waiting_players(&self, mode: &str) -> usize {
        self.index.get(mode).map_or(0, |i| i.players)
    }

    pub fn len(&self) -> usize {
        self.tickets.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Waiting tickets and players by (mode, region), sorted.
    pub fn depth(&self) -> Vec<Depth> {
        let mut out = Vec::new();
        for (mode, mi) in &self.index {
            for (region, ri) in &mi.regions {
                out.push(Depth {
                    mode: mode.clone(),
                    region: region.clone(),
                    tickets: ri.by_rating.len(),
                    players: ri.players,
                });
            }
        }
        out
    }

    /// Forms every match it can at `now_ms` and removes their tickets from the pool. Modes are
    /// served in name order; within a mode, anchors oldest first (see the crate doc).
    pub fn pass(&mut self, now_ms: u64) -> Vec<Match> {
        let mut out = Vec::new();
        let names: Vec<String> = self.index.keys().cloned().collect();
        for name in names {
            let Some(mode) = self.modes.get(&name).cloned() else { continue };
            let anchors: Vec<TicketId> = match self.index.get(&name) {
                Some(mi) => mi.by_age.keys().map(|&(_, id)| id).collect(),
                None => continue,
            };
            for id in anchors {
                if !self.tickets.contains_key(&id) {
                    continue; // taken by an earlier match of this pass
                }
                if let Some(m) = self.search(&mode, id, now_ms).and_then(|pick| self.make_match(&mode, pick, now_ms)) {
                    out.push(m);
                }
            }
        }
        out
    }

    /// Finds a match for `anchor` among the waiting tickets of its mode, or `None`.
    fn search(&self, mode: &Mode, anchor: TicketId, now_ms: u64) -> Option<Pick> {
        let e = &self.tickets[&anchor];
        let a = Cand {
            id: anchor,
            rating: e.rating,
            dist: 0.0,
            window: window(mode, now_ms.saturating_sub(e.ticket.enqueued_ms)),
            players: e.ticket.members.len() as u32,
            enqueued_ms: e.ticket.enqueued_ms,
        };
        let mi = &self.index[&mode.name];
        let own = &mi.regions[&e.ticket.region].by_rating;
        // 1. Own region, fast path: nearest first within the initial window (every ticket's window
        //    is at least that wide, so only the spread and the team packing can refuse a partner).
        if let Some(p) = nearest_first(mode, &a, own, now_ms) {
            return Some(p);
        }
        // 2. Own region, every window level.
        let mut cands = Vec::new();
        collect(mode, &a, own, now_ms, None, &mut cands);
        if let Some(p) = by_levels(mode, &a, &mut cands) {
            return Some(p);
        }
        // 3. Any region, once every ticket of the match has waited long enough (the rule is
        //    mutual, like the window: a ticket that has not waited `any_after` only meets its own
        //    region).
        if let RegionRule::AnyAfterMs(after) = mode.region
            && now_ms.saturating_sub(a.enqueued_ms) >= after
            && mi.regions.len() > 1
        {
            cands.clear();
            for ri in mi.regions.values() {
                collect(mode, &a, &ri.by_rating, now_ms, Some(after), &mut cands);
            }
            return by_levels(mode, &a, &mut cands);
        }
        None
    }

    /// Assigns the picked tickets to teams and takes them out of the pool. `None` (the tickets
    /// stay) only if the team search ran out of its node budget, which the packing check before it
    /// makes practically impossible.
    fn make_match(&mut self, mode: &Mode, pick: Pick, now_ms: u64) -> Option<Match> {
        // A cross-region match (everyone in it waited past `any_after_s`) is placed in the region
        // of its anchor, as is a one-region match.
        let region = self.tickets[&pick.ids[0]].ticket.region.clone();
        let mut ids = pick.ids;
        ids.sort_by_key(|id| (self.tickets[id].ticket.enqueued_ms, *id));
        let units: Vec<Unit> = ids
            .iter()
            .map(|id| {
                let t = &self.tickets[id].ticket;
                Unit {
                    size: t.members.len() as u32,
                    rating_sum: t.members.iter().map(|m| m.rating).sum(),
                }
            })
            .collect();
        let assignment = teams::assign(&units, mode.teams, mode.team_size)?;
        let tickets: Vec<Ticket> = ids.iter().filter_map(|id| self.remove(*id)).collect();
        let mut team_players = vec![Vec::new(); mode.teams as usize];
        for (t, &team) in tickets.iter().zip(&assignment) {
            team_players[team].extend(t.members.iter().map(|m| m.player_id));
        }
        // Teams in a stable order: by their smallest player id.
        team_players.sort_by_key(|p| p.iter().min().copied());
        Some(Match {
            mode: mode.name.clone(),
            region,
            tickets: ids,
            teams: team_players,
            spread: pick.spread,
            made_ms: now_ms,
        })
    }
}

/// The growing selection of a search.
struct Sel {
    ids: Vec<TicketId>,
    sizes: Vec<u32>,
    players: u32,
    lo: f64,
    hi: f64,
}

impl Sel {
    fn new(a: &Cand) -> Sel {
        Sel {
            ids: vec![a.id],
            sizes: vec![a.players],
            players: a.players,
            lo: a.rating,
            hi: a.rating,
        }
    }

    /// Adds `c` if the spread stays within `limit` and the players still pack into teams.
    fn try_add(&mut self, mode: &Mode, c: &Cand, limit: f64) -> bool {
        let (lo, hi) = (self.lo.min(c.rating), self.hi.max(c.rating));
        if hi - lo > limit || self.players + c.players > mode.players_per_match() {
            return false;
        }
        self.sizes.push(c.players);
        if !teams::fits(&self.sizes, mode.teams, mode.team_size) {
            self.sizes.pop();
            return false;
        }
        self.ids.push(c.id);
        self.players += c.players;
        self.lo = lo;
        self.hi = hi;
        true
    }

    fn full(&self, mode: &Mode) -> bool {
        self.players == mode.players_per_match()
    }

    fn pick(self) -> Pick {
        Pick {
            ids: self.ids,
            spread: self.hi - self.lo,
        }
    }
}

/// Fast path: partners nearest in rating first, all within `initial_window` of the anchor and of
/// each other. Stops at the first full match.
fn nearest_first(mode: &Mode, a: &Cand, idx: &RatingIndex, now_ms: u64) -> Option<Pick> {
    let mut sel = Sel::new(a);
    if sel.full(mode) {
        return teams::fits(&sel.sizes, mode.teams, mode.team_size).then(|| sel.pick());
    }
    let limit = mode.initial_window.min(a.window);
    let key = (RatingKey::of(a.rating), a.id);
    let mut up = idx.range((Bound::Excluded(key), Bound::Unbounded)).peekable();
    let mut down = idx.range(..key).rev().peekable();
    let mut group: Vec<Cand> = Vec::new();
    loop {
        let du = up.peek().map(|(_, s)| s.rating - a.rating);
        let dd = down.peek().map(|(_, s)| a.rating - s.rating);
        let dist = match (du, dd) {
            (None, None) => return None,
            (Some(u), None) => u,
            (None, Some(d)) => d,
            (Some(u), Some(d)) => u.min(d),
        };
        if dist > limit {
            return None;
        }
        // Every ticket at this distance (above and below), older first, then lower id.
        group.clear();
        let cand = |(&(_, id), s): (&(RatingKey, TicketId), &Slot)| Cand {
            id,
            rating: s.rating,
            dist,
            window: window(mode, now_ms.saturating_sub(s.enqueued_ms)),
            players: s.players,
            enqueued_ms: s.enqueued_ms,
        };
        while let Some(e) = up.next_if(|(_, s)| s.rating - a.rating == dist) {
            group.push(cand(e));
        }
        while let Some(e) = down.next_if(|(_, s)| a.rating - s.rating == dist) {
            group.push(cand(e));
        }
        group.sort_by_key(|c| (c.enqueued_ms, c.id));
        for c in &group {
            if sel.try_add(mode, c, limit) && sel.full(mode) {
                return Some(sel.pick());
            }
        }
    }
}

/// Appends every ticket of `idx` within the anchor's window to `out` (the anchor excluded); with
/// `min_wait`, only tickets that have waited at least that long (a cross-region search).
fn collect(mode: &Mode, a: &Cand, idx: &RatingIndex, now_ms: u64, min_wait: Option<u64>, out: &mut Vec<Cand>) {
    let lo = (RatingKey::of(a.rating - a.window), TicketId::MIN);
    let hi = (RatingKey::of(a.rating + a.window), TicketId::MAX);
    for (&(_, id), s) in idx.range(lo..=hi) {
        let waited = now_ms.saturating_sub(s.enqueued_ms);
        if id == a.id || min_wait.is_some_and(|w| waited < w) {
            continue;
        }
        out.push(Cand {
            id,
            rating: s.rating,
            dist: (s.rating - a.rating).abs(),
            window: window(mode, waited),
            players: s.players,
            enqueued_ms: s.enqueued_ms,
        });
    }
}

/// The complete search. For each window level `L` (the anchor's initial window, then every
/// distinct partner window, ascending, none above the anchor's own), the tickets whose window is at
/// least `L` and whose rating is within `L` of the anchor can be matched with any spread up to `L`:
/// slide an interval of width `L` across them (always holding the anchor) and, in each, take
/// partners nearest the anchor first. The first level that gives a match wins, with the smallest
/// spread found at that level. For tickets of one player this finds a match whenever one exists.
fn by_levels(mode: &Mode, a: &Cand, cands: &mut [Cand]) -> Option<Pick> {
    if cands.is_empty() {
        return None;
    }
    // Nearest first; equal distance: older first, then lower id.
    cands.sort_by(|x, y| {
        x.dist
            .total_cmp(&y.dist)
            .then(x.enqueued_ms.cmp(&y.enqueued_ms))
            .then(x.id.cmp(&y.id))
    });
    let mut levels: Vec<f64> = cands.iter().map(|c| c.window.min(a.window)).collect();
    levels.push(mode.initial_window.min(a.window));
    levels.sort_by(f64::total_cmp);
    levels.dedup();
    let need = mode.players_per_match() - a.players;
    for &level in &levels {
        let eligible: Vec<&Cand> = cands.iter().filter(|c| c.window >= level && c.dist <= level).collect();
        if eligible.iter().map(|c| c.players).sum::<u32>() < need {
            continue;
        }
        // Interval lower ends: the anchor's rating and every eligible rating below it.
        let mut los: Vec<f64> = eligible.iter().map(|c| c.rating).filter(|&r| r < a.rating).collect();
        los.push(a.rating);
        los.sort_by(f64::total_cmp);
        los.dedup();
        let mut best: Option<Pick> = None;
        for &lo in &los {
            let hi = lo + level;
            if hi < a.rating {
                continue;
            }
            // Partners inside [lo, lo + level], nearest the anchor first (`eligible` keeps that order).
            let mut sel = Sel::new(a);
            for c in eligible.iter().filter(|c| c.rating >= lo && c.rating <= hi) {
                if sel.try_add(mode, c, level) && sel.full(mode) {
                    break;
                }
            }
            if sel.full(mode) && best.as_ref().is_none_or(|b| sel.hi - sel.lo < b.spread) {
                best = Some(sel.pick());
            }
        }
        if best.is_some() {
            return best;
        }
    }
    None
}
