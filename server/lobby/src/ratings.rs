//! Rating updates from a match result: Glicko-2 via the `skillratings` crate. Pure: no IO, no
//! clock.
//!
//! A result is one rank per team (1 = winner, ties allowed). Each player's new rating is one
//! Glicko-2 rating period in which they played every player of every other team: a win against
//! a worse-ranked team, a loss against a better-ranked one, a draw on equal ranks. A 1v1 is
//! exactly Glicko-2's single game.
//!
//! Never reads a rating from a client: the caller passes what the store holds.

use std::collections::BTreeMap;

use skillratings::Outcomes;
use skillratings::glicko2::{Glicko2Config, Glicko2Rating, glicko2_rating_period};

use crate::queue::StoredRating;

/// Checks a result against the match's teams: one rank per team, each 1..=teams.
pub fn check_ranks(teams: usize, ranks: &[u32]) -> Result<(), String> {
    if ranks.len() != teams {
        return Err(format!(
            "field `ranks`: {} ranks for {teams} teams: send one rank per team (1 = winner, ties allowed)",
            ranks.len()
        ));
    }
    if let Some(r) = ranks.iter().find(|r| **r == 0 || **r as usize > teams) {
        return Err(format!("field `ranks`: rank {r} is outside 1..={teams}"));
    }
    Ok(())
}

/// The new rating of every player of `teams` after a match ranked `ranks`.
pub fn update(teams: &[Vec<i64>], ranks: &[u32], stored: &BTreeMap<i64, StoredRating>) -> Result<Vec<(i64, StoredRating)>, String> {
    check_ranks(teams.len(), ranks)?;
    let config = Glicko2Config::new();
    let g = |p: &i64| {
        let s = stored.get(p).copied().unwrap_or_default();
        (
            Glicko2Rating {
                rating: s.rating,
                deviation: s.deviation,
                volatility: s.volatility,
            },
            s.games,
        )
    };
    let mut out = Vec::new();
    for (ti, team) in teams.iter().enumerate() {
        for p in team {
            let (me, games) = g(p);
            let mut results = Vec::new();
            for (oi, other) in teams.iter().enumerate() {
                if oi == ti {
                    continue;
                }
                let outcome = match ranks[ti].cmp(&ranks[oi]) {
                    std::cmp::Ordering::Less => Outcomes::WIN,
                    std::cmp::Ordering::Greater => Outcomes::LOSS,
                    std::cmp::Ordering::Equal => Outcomes::DRAW,
                };
                for q in other {
                    results.push((g(q).0, outcome));
                }
            }
            let new = glicko2_rating_period(&me, &results, &config);
            out.push((
                *p,
                StoredRating {
                    rating: new.rating,
                    deviation: new.deviation,
                    volatility: new.volatility,
                    games: games + 1,
                },
            ));
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_winner_gains_and_the_loser_loses() {
        let stored = BTreeMap::new();
        let new = update(&[vec![1], vec![2]], &[1, 2], &stored).unwrap();
        assert_eq!(new.len(), 2);
        assert!(new[0].1.rating > 1500.0 && new[1].1.rating < 1500.0, "{new:?}");
        assert!(
            (new[0].1.rating - 1500.0 - (1500.0 - new[1].1.rating)).abs() < 1e-6,
            "symmetric: {new:?}"
        );
        assert!(new[0].1.deviation < 350.0, "one game makes the rating surer");
        let draw = update(&[vec![1], vec![2]], &[1, 1], &stored).unwrap();
        assert!((draw[0].1.rating - 1500.0).abs() < 1e-6, "{draw:?}");
        let team = update(&[vec![1, 2, 3], vec![4, 5, 6]], &[2, 1], &stored).unwrap();
        assert!(team.iter().take(3).all(|(_, r)| r.rating < 1500.0));
        assert!(team.iter().skip(3).all(|(_, r)| r.rating > 1500.0));
    }

    #[test]
    fn bad_ranks_are_refused() {
        let stored = BTreeMap::new();
        assert!(update(&[vec![1], vec![2]], &[1], &stored).is_err());
        assert!(update(&[vec![1], vec![2]], &[0, 1], &stored).is_err());
        assert!(update(&[vec![1], vec![2]], &[1, 3], &stored).is_err());
    }
}
