//! The pool of waiting tickets and the matching pass.
//!
//! What it does: indexes waiting tickets by age (per mode) and by rating (per mode and region) in
//! `BTreeMap`s. A [`Pool::pass`] copies each mode's rating index into flat sorted arrays (one per
//! region, with skip links over the tickets already matched in this pass), takes every ticket in
//! turn, oldest first, as the *anchor* of a possible match, looks for partners near its rating (see
//! the crate doc for the exact rules and guarantees), and at the end removes the matched tickets
//! from the maps in one sweep.
//!
//! What it must never do: IO, clocks, randomness, threads or hash-ordered iteration; every loop
//! runs over `BTreeMap`s or sorted `Vec`s so that the same events give the same matches.

use std::cell::Cell;
use std::collections::BTreeMap;

use crate::teams::{self, Unit};
use crate::{Depth, Match, Mode, Modes, PlayerId, PoolError, RegionRule, Ticket, TicketId, window};

/// The complete search (window levels) considers at most this many tickets, the nearest in rating
/// inside the anchor's window.
pub const SEARCH_LIMIT: usize = 16;

/// The fast path reads at most this many tickets.
pub const FAST_LIMIT: usize = 64;

/// The complete search reads at most this many tickets per region (and direction of scan) to find
/// those [`SEARCH_LIMIT`] (in a cross-region search, tickets that have not waited long enough are
/// read and skipped).
pub const SCAN_LIMIT: usize = 128;

/// A rating as a key that orders like the (finite) `f64` it came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
struct RatingKey(u64);

impl RatingKey {
    fn of(x: f64) -> RatingKey {
        let b = x.to_bits();
        RatingKey(if b >> 63 == 1 { !b } else { b | (1 << 63) })
    }
}

/// What the rating index keeps for each ticket, so a pass needs no second lookup.
#[derive(Debug, Clone, Copy)]
struct Slot {
    rating: f64,
    enqueued_ms: u64,
    players: u32,
    /// The ticket's first player (a one-player ticket's only one).
    player0: PlayerId,
}

#[derive(Debug, Clone)]
struct Entry {
    ticket: Ticket,
    /// The ticket's rating: its members' mean.
    rating: f64,
    /// The interned region.
    region: u32,
}

/// Waiting tickets of one region of one mode.
#[derive(Debug, Clone, Default)]
struct RegionIndex {
    by_rating: BTreeMap<(RatingKey, TicketId), Slot>,
    players: usize,
}

/// Waiting tickets of one mode.
#[derive(Debug, Clone, Default)]
struct ModeIndex {
    /// (enqueued_ms, id) → (rating key, region): the order in which anchors are served.
    by_age: BTreeMap<(u64, TicketId), (RatingKey, u32)>,
    regions: BTreeMap<u32, RegionIndex>,
    players: usize,
}

/// The pool of waiting tickets.
#[derive(Debug, Clone)]
pub struct Pool {
    modes: Modes,
    tickets: BTreeMap<TicketId, Entry>,
    players: BTreeMap<PlayerId, TicketId>,
    /// Regions seen so far, interned (an id is an index into `region_names`).
    region_ids: BTreeMap<Option<String>, u32>,
    region_names: Vec<Option<String>>,
    index: BTreeMap<String, ModeIndex>,
}

/// The ticket's rating: its members' mean rating.
pub fn ticket_rating(t: &Ticket) -> f64 {
    t.members.iter().map(|m| m.rating).sum::<f64>() / t.members.len().max(1) as f64
}

impl Pool {
    pub fn new(modes: Modes) -> Pool {
        Pool {
            modes,
            tickets: BTreeMap::new(),
            players: BTreeMap::new(),
            region_ids: BTreeMap::new(),
            region_names: Vec::new(),
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
        let region = match self.region_ids.get(&ticket.region) {
            Some(&r) => r,
            None => {
                let r = self.region_names.len() as u32;
                self.region_names.push(ticket.region.clone());
                self.region_ids.insert(ticket.region.clone(), r);
                r
            }
        };
        let key = RatingKey::of(rating);
        let mi = match self.index.get_mut(&ticket.mode) {
            Some(mi) => mi,
            None => self.index.entry(ticket.mode.clone()).or_default(),
        };
        mi.by_age.insert((ticket.enqueued_ms, ticket.id), (key, region));
        mi.players += size;
        let ri = mi.regions.entry(region).or_default();
        ri.players += size;
        ri.by_rating.insert(
            (key, ticket.id),
            Slot {
                rating,
                enqueued_ms: ticket.enqueued_ms,
                players: size as u32,
                player0: ticket.members[0].player_id,
            },
        );
        for m in &ticket.members {
            self.players.insert(m.player_id, ticket.id);
        }
        self.tickets.insert(ticket.id, Entry { ticket, rating, region });
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
            if let Some(ri) = mi.regions.get_mut(&e.region) {
                ri.by_rating.remove(&(RatingKey::of(e.rating), id));
                ri.players -= size;
                if ri.by_rating.is_empty() {
                    mi.regions.remove(&e.region);
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
            let start = out.len();
            for (&r, ri) in &mi.regions {
                out.push(Depth {
                    mode: mode.clone(),
                    region: self.region_names[r as usize].clone(),
                    tickets: ri.by_rating.len(),
                    players: ri.players,
                });
            }
            out[start..].sort_by(|a, b| a.region.cmp(&b.region));
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
            let first = out.len();
            let arrs = self.match_mode(&mode, now_ms, &mut out);
            if out.len() > first {
                self.sweep(&name, &arrs, &out[first..]);
            }
        }
        out
    }

    /// One mode's share of a pass: appends its matches to `out` and returns the arrays, whose
    /// `alive` flags say which tickets were matched.
    fn match_mode(&self, mode: &Mode, now_ms: u64, out: &mut Vec<Match>) -> Vec<Arr> {
        let Some(mi) = self.index.get(&mode.name) else { return Vec::new() };
        let mut arrs: Vec<Arr> = mi.regions.iter().map(|(&rid, ri)| Arr::new(rid, ri)).collect();
        let cross = match mode.region {
            RegionRule::AnyAfterMs(after) if arrs.len() > 1 => Some(after),
            _ => None,
        };
        let mut ctx = Search {
            mode,
            now_ms,
            cands: Vec::new(),
        };
        // Anchors oldest first: (enqueued_ms, id, array, index).
        let mut anchors: Vec<(u64, TicketId, u32, u32)> = Vec::with_capacity(mi.by_age.len());
        for (ai, arr) in arrs.iter().enumerate() {
            anchors.extend(
                arr.slots
                    .iter()
                    .enumerate()
                    .map(|(i, s)| (s.enqueued_ms, s.id, ai as u32, i as u32)),
            );
        }
        anchors.sort_unstable();
        for (_, _, ai, pos) in anchors {
            let (ai, pos) = (ai as usize, pos as usize);
            if !arrs[ai].alive[pos] {
                continue; // taken by an earlier match of this pass
            }
            let Some(pick) = ctx.search(&arrs, ai, pos, cross) else { continue };
            let Some(m) = self.make_match(mode, &arrs, &pick, now_ms) else {
                continue;
            };
            out.push(m);
            for &(a, i) in &pick.at {
                arrs[a].kill(i);
            }
        }
        arrs
    }

    /// Builds the match of a pick: teams balanced, tickets oldest first. `None` (nothing taken)
    /// only if the team search ran out of its node budget, which the packing check makes
    /// practically impossible.
    fn make_match(&self, mode: &Mode, arrs: &[Arr], pick: &Pick, now_ms: u64) -> Option<Match> {
        // A cross-region match (everyone in it waited past `any_after_s`) is placed in the region
        // of its anchor, as is a one-region match.
        let region = self.region_names[arrs[pick.at[0].0].rid as usize].clone();
        let mut ids: Vec<(u64, TicketId, PlayerId)> = pick
            .at
            .iter()
            .map(|&(a, i)| {
                let s = &arrs[a].slots[i];
                (s.enqueued_ms, s.id, s.player0)
            })
            .collect();
        ids.sort_unstable();
        let mut team_players: Vec<Vec<PlayerId>>;
        if mode.team_size == 1 {
            // One player per team: nothing to balance.
            team_players = ids.iter().map(|&(_, _, p)| vec![p]).collect();
        } else {
            team_players = vec![Vec::with_capacity(mode.team_size as usize); mode.teams as usize];
            let tickets: Vec<&Ticket> = ids.iter().map(|(_, id, _)| &self.tickets[id].ticket).collect();
            let units: Vec<Unit> = tickets
                .iter()
                .map(|t| Unit {
                    size: t.members.len() as u32,
                    rating_sum: t.members.iter().map(|m| m.rating).sum(),
                })
                .collect();
            let assignment = teams::assign(&units, mode.teams, mode.team_size)?;
            for (t, &team) in tickets.iter().zip(&assignment) {
                team_players[team].extend(t.members.iter().map(|m| m.player_id));
            }
            // Teams in a stable order: by their smallest player id.
            team_players.sort_by_key(|p| p.iter().min().copied());
        }
        Some(Match {
            mode: mode.name.clone(),
            region,
            tickets: ids.into_iter().map(|(_, id, _)| id).collect(),
            teams: team_players,
            spread: pick.spread,
            made_ms: now_ms,
        })
    }

    /// Removes the tickets of `matches` (all of mode `name`); `arrs` mark them dead in rating order.
    fn sweep(&mut self, name: &str, arrs: &[Arr], matches: &[Match]) {
        let mut ids: Vec<TicketId> = matches.iter().flat_map(|m| m.tickets.iter().copied()).collect();
        ids.sort_unstable();
        let mode_len = self.index.get(name).map_or(0, |mi| mi.by_age.len());
        if ids.len() * 8 < mode_len {
            // Few: one by one.
            for id in ids {
                self.remove(id);
            }
            return;
        }
        // Many: rebuild each map from what is left, in key order (a bulk build, cheaper than
        // removing entries one by one).
        let mut gone_players: Vec<PlayerId> = Vec::new();
        let mut cursor = 0;
        self.tickets = std::mem::take(&mut self.tickets)
            .into_iter()
            .filter(|(id, e)| {
                while cursor < ids.len() && ids[cursor] < *id {
                    cursor += 1;
                }
                let matched = cursor < ids.len() && ids[cursor] == *id;
                if matched {
                    gone_players.extend(e.ticket.members.iter().map(|m| m.player_id));
                }
                !matched
            })
            .collect();
        gone_players.sort_unstable();
        let mut cursor = 0;
        self.players = std::mem::take(&mut self.players)
            .into_iter()
            .filter(|(p, _)| {
                while cursor < gone_players.len() && gone_players[cursor] < *p {
                    cursor += 1;
                }
                !(cursor < gone_players.len() && gone_players[cursor] == *p)
            })
            .collect();
        let Some(mi) = self.index.get_mut(name) else { return };
        mi.by_age = std::mem::take(&mut mi.by_age)
            .into_iter()
            .filter(|((_, id), _)| ids.binary_search(id).is_err())
            .collect();
        for a in arrs {
            let Some(ri) = mi.regions.get_mut(&a.rid) else { continue };
            let mut i = 0;
            let mut gone = 0;
            ri.by_rating = std::mem::take(&mut ri.by_rating)
                .into_iter()
                .filter(|(_, s)| {
                    let keep = a.alive[i];
                    i += 1;
                    if !keep {
                        gone += s.players as usize;
                    }
                    keep
                })
                .collect();
            ri.players -= gone;
            mi.players -= gone;
            if ri.by_rating.is_empty() {
                mi.regions.remove(&a.rid);
            }
        }
        if mi.by_age.is_empty() {
            self.index.remove(name);
        }
    }
}

/// One slot of a pass's flat array.
#[derive(Debug, Clone, Copy)]
struct ASlot {
    id: TicketId,
    rating: f64,
    enqueued_ms: u64,
    players: u32,
    player0: PlayerId,
}

/// One region's waiting tickets for one pass: sorted by (rating, id), with `alive` flags and skip
/// links (union-find with path halving) so that scans step over matched tickets in O(1) amortized.
struct Arr {
    rid: u32,
    slots: Vec<ASlot>,
    alive: Vec<bool>,
    /// `right[i]`: the first alive index ≥ i is found by following links (`len` = none).
    right: Vec<Cell<u32>>,
    /// `left[i + 1]`: the last alive index ≤ i, plus one, by following links (0 = none).
    left: Vec<Cell<u32>>,
}

impl Arr {
    fn new(rid: u32, ri: &RegionIndex) -> Arr {
        let slots: Vec<ASlot> = ri
            .by_rating
            .iter()
            .map(|(&(_, id), s)| ASlot {
                id,
                rating: s.rating,
                enqueued_ms: s.enqueued_ms,
                players: s.players,
                player0: s.player0,
            })
            .collect();
        let n = slots.len() as u32;
        Arr {
            rid,
            alive: vec![true; slots.len()],
            right: (0..=n).map(Cell::new).collect(),
            left: (0..=n).map(Cell::new).collect(),
            slots,
        }
    }

    fn kill(&mut self, i: usize) {
        self.alive[i] = false;
        self.right[i].set(i as u32 + 1);
        self.left[i + 1].set(i as u32);
    }

    /// The first alive index ≥ `i`, if any (path halving: runs of matched tickets are skipped in
    /// O(1) amortized).
    fn next_alive(&self, i: usize) -> Option<usize> {
        let r = &self.right;
        let mut x = i.min(self.slots.len());
        while r[x].get() as usize != x {
            let up = r[r[x].get() as usize].get();
            r[x].set(up);
            x = up as usize;
        }
        (x < self.slots.len()).then_some(x)
    }

    /// The last alive index < `below`, if any.
    fn prev_alive(&self, below: usize) -> Option<usize> {
        let l = &self.left;
        let mut x = below.min(self.slots.len());
        while l[x].get() as usize != x {
            let down = l[l[x].get() as usize].get();
            l[x].set(down);
            x = down as usize;
        }
        (x > 0).then(|| x - 1)
    }
}

/// A candidate partner seen by a search.
#[derive(Debug, Clone, Copy)]
struct Cand {
    at: (usize, usize),
    rating: f64,
    dist: f64,
    window: f64,
    players: u32,
    enqueued_ms: u64,
    id: TicketId,
}

/// The tickets chosen for a match (anchor first), as (array, index), and their rating spread.
struct Pick {
    at: Vec<(usize, usize)>,
    spread: f64,
}

/// The growing selection of a search.
struct Sel {
    at: Vec<(usize, usize)>,
    sizes: Vec<u32>,
    players: u32,
    lo: f64,
    hi: f64,
}

impl Sel {
    fn new(a: &Cand) -> Sel {
        Sel {
            at: vec![a.at],
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
        self.at.push(c.at);
        self.players += c.players;
        self.lo = lo;
        self.hi = hi;
        true
    }

    /// Starts again from the anchor alone, keeping the buffers.
    fn reset(&mut self, a: &Cand) {
        self.at.clear();
        self.at.push(a.at);
        self.sizes.clear();
        self.sizes.push(a.players);
        self.players = a.players;
        self.lo = a.rating;
        self.hi = a.rating;
    }

    fn full(&self, mode: &Mode) -> bool {
        self.players == mode.players_per_match()
    }

    fn pick(self) -> Pick {
        Pick {
            at: self.at,
            spread: self.hi - self.lo,
        }
    }
}

/// The search for one anchor over a pass's arrays.
struct Search<'a> {
    mode: &'a Mode,
    now_ms: u64,
    cands: Vec<Cand>,
}

impl Search<'_> {
    fn cand(&self, arrs: &[Arr], ai: usize, i: usize, dist: f64) -> Cand {
        let s = &arrs[ai].slots[i];
        Cand {
            at: (ai, i),
            rating: s.rating,
            dist,
            window: window(self.mode, self.now_ms.saturating_sub(s.enqueued_ms)),
            players: s.players,
            enqueued_ms: s.enqueued_ms,
            id: s.id,
        }
    }

    /// A match for the anchor at `arrs[ai].slots[pos]`, or `None`.
    fn search(&mut self, arrs: &[Arr], ai: usize, pos: usize, cross: Option<u64>) -> Option<Pick> {
        let a = self.cand(arrs, ai, pos, 0.0);
        // 1. Own region, fast path: nearest first within the initial window (every ticket's window
        //    is at least that wide, so only the spread and the team packing can refuse a partner).
        if let Some(p) = self.nearest_first(arrs, &a) {
            return Some(p);
        }
        // 2. Own region, every window level.
        self.cands.clear();
        self.collect(arrs, &a, ai, None);
        if let Some(p) = self.by_levels(&a) {
            return Some(p);
        }
        // 3. Any region, once every ticket of the match has waited long enough (the rule is
        //    mutual, like the window: a ticket that has not waited `any_after` only meets its own
        //    region).
        if let Some(after) = cross
            && self.now_ms.saturating_sub(a.enqueued_ms) >= after
        {
            self.cands.clear();
            for other in 0..arrs.len() {
                self.collect(arrs, &a, other, Some(after));
            }
            return self.by_levels(&a);
        }
        None
    }

    /// Fast path: partners nearest in rating first (equal distance: older first, then lower id),
    /// all within `initial_window` of the anchor and of each other. Stops at the first full match
    /// or after [`FAST_LIMIT`] candidates.
    fn nearest_first(&self, arrs: &[Arr], a: &Cand) -> Option<Pick> {
        let mode = self.mode;
        let mut sel = Sel::new(a);
        if sel.full(mode) {
            return teams::fits(&sel.sizes, mode.teams, mode.team_size).then(|| sel.pick());
        }
        let arr = &arrs[a.at.0];
        let limit = mode.initial_window.min(a.window);
        let mut up = arr.next_alive(a.at.1 + 1);
        let mut down = arr.prev_alive(a.at.1);
        let mut group: Vec<Cand> = Vec::new();
        let mut seen = 0;
        loop {
            let du = up.map(|i| arr.slots[i].rating - a.rating);
            let dd = down.map(|i| a.rating - arr.slots[i].rating);
            let dist = match (du, dd) {
                (None, None) => return None,
                (Some(u), None) => u,
                (None, Some(d)) => d,
                (Some(u), Some(d)) => u.min(d),
            };
            if dist > limit || seen >= FAST_LIMIT {
                return None;
            }
            group.clear();
            while let Some(i) = up.filter(|&i| arr.slots[i].rating - a.rating == dist) {
                group.push(self.cand(arrs, a.at.0, i, dist));
                up = arr.next_alive(i + 1);
            }
            while let Some(i) = down.filter(|&i| a.rating - arr.slots[i].rating == dist) {
                group.push(self.cand(arrs, a.at.0, i, dist));
                down = arr.prev_alive(i);
            }
            if group.len() > 1 {
                group.sort_by_key(|c| (c.enqueued_ms, c.id));
            }
            for c in &group {
                seen += 1;
                if sel.try_add(mode, c, limit) && sel.full(mode) {
                    return Some(sel.pick());
                }
            }
        }
    }

    /// Appends to `cands` the alive tickets of `arrs[ai]` within the anchor's window and their
    /// own, nearest in rating first, at most [`SEARCH_LIMIT`] of them among the [`SCAN_LIMIT`]
    /// nearest (the anchor excluded); with `min_wait`, only tickets that have waited at least that
    /// long.
    fn collect(&mut self, arrs: &[Arr], a: &Cand, ai: usize, min_wait: Option<u64>) {
        let arr = &arrs[ai];
        let (mut up, mut down) = if ai == a.at.0 {
            (arr.next_alive(a.at.1 + 1), arr.prev_alive(a.at.1))
        } else {
            let p = arr.slots.partition_point(|s| s.rating < a.rating);
            (arr.next_alive(p), arr.prev_alive(p))
        };
        let (mut taken, mut scanned) = (0, 0);
        while taken < SEARCH_LIMIT && scanned < SCAN_LIMIT {
            let du = up.map(|i| arr.slots[i].rating - a.rating);
            let dd = down.map(|i| a.rating - arr.slots[i].rating);
            let take_up = match (du, dd) {
                (None, None) => break,
                (Some(_), None) => true,
                (None, Some(_)) => false,
                (Some(u), Some(d)) => u <= d,
            };
            let (j, dist) = match (take_up, up, down, du, dd) {
                (true, Some(j), _, Some(u), _) => {
                    up = arr.next_alive(j + 1);
                    (j, u)
                }
                (false, _, Some(j), _, Some(d)) => {
                    down = arr.prev_alive(j);
                    (j, d)
                }
                _ => break,
            };
            if dist > a.window {
                break;
            }
            scanned += 1;
            let waited = self.now_ms.saturating_sub(arr.slots[j].enqueued_ms);
            if min_wait.is_none_or(|w| waited >= w) {
                let c = self.cand(arrs, ai, j, dist);
                // A ticket further from the anchor than its own window can never be in the
                // anchor's match (the spread would be at least that distance): not a candidate.
                if dist <= c.window {
                    self.cands.push(c);
                    taken += 1;
                }
            }
        }
    }

    /// The complete search over the [`SEARCH_LIMIT`] nearest candidates. For each window level `L`
    /// (the anchor's initial window, then every distinct partner window, ascending, none above the
    /// anchor's own), the candidates whose window is at least `L` and whose rating is within `L` of
    /// the anchor can be matched with any spread up to `L`: slide an interval of width `L` across
    /// them (always holding the anchor) and, in each that holds enough players, take partners
    /// nearest the anchor first. The first level that gives a match wins, with the smallest spread
    /// found at that level. For one-player tickets this finds a match whenever one exists among
    /// the candidates.
    fn by_levels(&mut self, a: &Cand) -> Option<Pick> {
        let mode = self.mode;
        let cands = &mut self.cands;
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
        cands.truncate(SEARCH_LIMIT);
        let cands = &cands[..];
        let mut levels: Vec<f64> = cands.iter().map(|c| c.window.min(a.window)).collect();
        levels.push(mode.initial_window.min(a.window));
        levels.sort_by(f64::total_cmp);
        levels.dedup();
        // Candidate indices by rating, for the sliding interval.
        let mut by_rating: Vec<usize> = (0..cands.len()).collect();
        by_rating.sort_by(|&x, &y| cands[x].rating.total_cmp(&cands[y].rating).then(x.cmp(&y)));
        let need = mode.players_per_match() - a.players;
        let mut eligible = vec![false; cands.len()];
        let mut sel = Sel::new(a);
        for &level in &levels {
            let mut total = 0;
            for (k, c) in cands.iter().enumerate() {
                eligible[k] = c.window >= level && c.dist <= level;
                total += if eligible[k] { c.players } else { 0 };
            }
            if total < need {
                continue;
            }
            let mut best: Option<Pick> = None;
            // Interval [lo, lo + level] for lo = each eligible rating ≤ the anchor's, and the
            // anchor's own; players inside counted with two pointers over `by_rating`.
            let los = by_rating
                .iter()
                .filter(|&&k| eligible[k] && cands[k].rating < a.rating)
                .map(|&k| cands[k].rating)
                .chain(std::iter::once(a.rating));
            let (mut lo_i, mut hi_i, mut inside) = (0usize, 0usize, 0u32);
            let mut last_lo = f64::NAN;
            // The interval last tried, as bounds in `by_rating`: the same set is not tried twice.
            let mut last_span = (usize::MAX, usize::MAX);
            for lo in los {
                if lo == last_lo {
                    continue;
                }
                last_lo = lo;
                let hi = lo + level;
                if hi < a.rating {
                    continue;
                }
                while hi_i < by_rating.len() && cands[by_rating[hi_i]].rating <= hi {
                    if eligible[by_rating[hi_i]] {
                        inside += cands[by_rating[hi_i]].players;
                    }
                    hi_i += 1;
                }
                while lo_i < hi_i && cands[by_rating[lo_i]].rating < lo {
                    if eligible[by_rating[lo_i]] {
                        inside -= cands[by_rating[lo_i]].players;
                    }
                    lo_i += 1;
                }
                if inside < need || (lo_i, hi_i) == last_span {
                    continue;
                }
                last_span = (lo_i, hi_i);
                sel.reset(a);
                for (k, c) in cands.iter().enumerate() {
                    if eligible[k] && c.rating >= lo && c.rating <= hi && sel.try_add(mode, c, level) && sel.full(mode) {
                        break;
                    }
                }
                if sel.full(mode) && best.as_ref().is_none_or(|b| sel.hi - sel.lo < b.spread) {
                    best = Some(Pick {
                        at: sel.at.clone(),
                        spread: sel.hi - sel.lo,
                    });
                }
            }
            if best.is_some() {
                return best;
            }
        }
        None
    }
}
