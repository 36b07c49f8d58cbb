//! Team assembly: packing tickets (a party is one unit) into `teams` teams of exactly
//! `team_size` players, and choosing the packing whose teams are closest in total rating.
//!
//! What it does: a small depth-first search over ticket-to-team assignments, largest party
//! first, with a node budget so that a large mode can never stall a pass (past the budget it keeps
//! the best assignment found so far; the first one found is first-fit-decreasing).
//!
//! What it must never do: split a party across teams, or depend on anything but its inputs (no
//! randomness; ties go to the first assignment in search order).

/// Search nodes a single packing may visit (a 3v3 needs at most a few dozen).
const NODE_BUDGET: u32 = 20_000;

/// Whether tickets of these sizes fit into `teams` teams of at most `team_size` players each.
pub fn fits(sizes: &[u32], teams: u32, team_size: u32) -> bool {
    let total: u32 = sizes.iter().sum();
    if total > teams * team_size || sizes.iter().any(|&s| s > team_size) {
        return false;
    }
    if teams == 1 || sizes.iter().all(|&s| s == 1) {
        return true;
    }
    if teams == 2 {
        // Two teams: some subset (team one) must hold between total − team_size and team_size
        // players. Subset sums as bits (total ≤ 100 players per match < 128 bits).
        let mut reach: u128 = 1;
        for &s in sizes {
            reach |= reach << s;
        }
        let lo = total.saturating_sub(team_size);
        return (lo..=team_size.min(total)).any(|x| (reach >> x) & 1 == 1);
    }
    let mut sorted = sizes.to_vec();
    sorted.sort_unstable_by(|a, b| b.cmp(a));
    let mut loads = vec![0u32; teams as usize];
    let mut nodes = 0;
    fits_dfs(&sorted, 0, &mut loads, team_size, &mut nodes)
}

fn fits_dfs(sizes: &[u32], i: usize, loads: &mut [u32], cap: u32, nodes: &mut u32) -> bool {
    if i == sizes.len() {
        return true;
    }
    *nodes += 1;
    if *nodes > NODE_BUDGET {
        return false;
    }
    for t in 0..loads.len() {
        // Teams with the same load are interchangeable: try only the first of them.
        if loads[..t].contains(&loads[t]) {
            continue;
        }
        if loads[t] + sizes[i] <= cap {
            loads[t] += sizes[i];
            if fits_dfs(sizes, i + 1, loads, cap, nodes) {
                return true;
            }
            loads[t] -= sizes[i];
        }
    }
    false
}

/// One ticket to place: its players and the sum of their ratings.
#[derive(Debug, Clone, Copy)]
pub struct Unit {
    pub size: u32,
    pub rating_sum: f64,
}

/// Assigns every unit to a team so that each of the `teams` teams has exactly `team_size` players,
/// minimising the gap between the highest and lowest team rating sum. Returns the team index of
/// each unit (in input order), or `None` if no exact packing exists (or none was found within the
/// node budget).
pub fn assign(units: &[Unit], teams: u32, team_size: u32) -> Option<Vec<usize>> {
    let total: u32 = units.iter().map(|u| u.size).sum();
    if total != teams * team_size {
        return None;
    }
    // Largest party first, then highest rating, then input order: a deterministic order in which
    // the first complete assignment is a sensible one.
    let mut order: Vec<usize> = (0..units.len()).collect();
    order.sort_by(|&a, &b| {
        units[b]
            .size
            .cmp(&units[a].size)
            .then(units[b].rating_sum.total_cmp(&units[a].rating_sum))
            .then(a.cmp(&b))
    });
    let mut s = Search {
        units,
        order: &order,
        cap: team_size,
        loads: vec![0; teams as usize],
        sums: vec![0.0; teams as usize],
        current: vec![0; units.len()],
        best: None,
        best_gap: f64::INFINITY,
        nodes: 0,
    };
    s.dfs(0);
    s.best
}

struct Search<'a> {
    units: &'a [Unit],
    order: &'a [usize],
    cap: u32,
    loads: Vec<u32>,
    sums: Vec<f64>,
    current: Vec<usize>,
    best: Option<Vec<usize>>,
    best_gap: f64,
    nodes: u32,
}

impl Search<'_> {
    fn dfs(&mut self, i: usize) {
        if self.best_gap == 0.0 || (self.nodes > NODE_BUDGET && self.best.is_some()) {
            return;
        }
        if self.nodes > NODE_BUDGET * 4 {
            return;
        }
        self.nodes += 1;
        if i == self.order.len() {
            let max = self.sums.iter().copied().fold(f64::NEG_INFINITY, f64::max);
            let min = self.sums.iter().copied().fold(f64::INFINITY, f64::min);
            let gap = max - min;
            if gap < self.best_gap {
                self.best_gap = gap;
                self.best = Some(self.current.clone());
            }
            return;
        }
        let u = self.units[self.order[i]];
        for t in 0..self.loads.len() {
            // Empty teams are interchangeable: open only the first empty one.
            if self.loads[t] == 0 && self.loads[..t].contains(&0) {
                continue;
            }
            if self.loads[t] + u.size <= self.cap {
                self.loads[t] += u.size;
                self.sums[t] += u.rating_sum;
                self.current[self.order[i]] = t;
                self.dfs(i + 1);
                self.loads[t] -= u.size;
                self.sums[t] -= u.rating_sum;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn u(size: u32, r: f64) -> Unit {
        Unit {
            size,
            rating_sum: r * size as f64,
        }
    }

    #[test]
    fn fits_respects_parties() {
        assert!(fits(&[3, 3], 2, 3));
        assert!(fits(&[2, 2, 1, 1], 2, 3));
        assert!(!fits(&[2, 2, 2], 2, 3));
        assert!(fits(&[2, 2], 2, 3));
        assert!(!fits(&[4], 2, 3));
        assert!(!fits(&[1, 1, 1, 1, 1, 1, 1], 2, 3));
        assert!(fits(&[3, 2, 1], 3, 3) && fits(&[2, 2, 2], 3, 2) && !fits(&[2, 2, 2, 2], 3, 2));
        assert!(fits(&[5, 4, 1], 2, 5) && !fits(&[4, 4, 2], 2, 5) && fits(&[4, 4], 2, 5));
    }

    #[test]
    fn fits_agrees_with_brute_force_for_two_teams() {
        // Every multiset of sizes 1..=4 (up to 6 tickets) against 2 teams of 4.
        fn brute(sizes: &[u32], cap: u32) -> bool {
            (0u32..1 << sizes.len()).any(|m| {
                let a: u32 = sizes.iter().enumerate().filter(|(i, _)| m >> i & 1 == 1).map(|(_, s)| s).sum();
                let b: u32 = sizes.iter().sum::<u32>() - a;
                a <= cap && b <= cap
            })
        }
        let mut sizes = Vec::new();
        fn rec(sizes: &mut Vec<u32>, from: u32) {
            assert_eq!(fits(sizes, 2, 4), brute(sizes, 4), "{sizes:?}");
            if sizes.len() == 6 {
                return;
            }
            for s in from..=4 {
                sizes.push(s);
                rec(sizes, s);
                sizes.pop();
            }
        }
        rec(&mut sizes, 1);
    }

    #[test]
    fn assign_balances_solos() {
        let units = [u(1, 1000.0), u(1, 1100.0), u(1, 1200.0), u(1, 1300.0)];
        let a = assign(&units, 2, 2).unwrap();
        // 1000+1300 vs 1100+1200: gap 0.
        assert_eq!(a[0], a[3]);
        assert_eq!(a[1], a[2]);
        assert_ne!(a[0], a[1]);
    }

    #[test]
    fn assign_keeps_a_party_on_one_team() {
        let units = [u(2, 1500.0), u(1, 1500.0), u(3, 1500.0)];
        let a = assign(&units, 2, 3).unwrap();
        assert_eq!(a[0], a[1]);
        assert_ne!(a[0], a[2]);
        assert!(assign(&[u(2, 1.0), u(2, 1.0), u(2, 1.0)], 2, 3).is_none());
    }
}
