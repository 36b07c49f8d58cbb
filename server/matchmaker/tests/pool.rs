//! Examples of the matcher's rules, one per rule (the property tests in `props.rs` check them over
//! random ticket streams).

use zone_matchmaker::{Member, Modes, Pool, PoolError, RegionRule, Ticket, window};

const MODES: &str = r#"
[modes.duel]
teams = 2
team_size = 1
initial_window = 100
widen_per_s = 10
max_window = 400
queue_limit = 4

[modes.team3]
teams = 2
team_size = 3
max_party = 3
initial_window = 100
widen_per_s = 10
max_window = 400
region = { any_after_s = 20 }
"#;

fn modes() -> Modes {
    Modes::from_toml("test.toml", MODES).unwrap()
}

fn solo(id: i64, mode: &str, rating: f64, at: u64) -> Ticket {
    party(id, mode, &[rating], at)
}

fn party(id: i64, mode: &str, ratings: &[f64], at: u64) -> Ticket {
    Ticket {
        id,
        mode: mode.into(),
        region: None,
        members: ratings
            .iter()
            .enumerate()
            .map(|(i, &r)| Member {
                player_id: id * 10 + i as i64,
                rating: r,
            })
            .collect(),
        enqueued_ms: at,
    }
}

#[test]
fn window_starts_widens_and_caps() {
    let m = modes();
    let d = m.get("duel").unwrap();
    assert_eq!(window(d, 0), 100.0);
    assert_eq!(window(d, 5_000), 150.0);
    assert_eq!(window(d, 30_000), 400.0);
    assert_eq!(window(d, 3_000_000), 400.0);
}

#[test]
fn insert_refuses_bad_tickets() {
    let mut p = Pool::new(modes());
    assert_eq!(p.insert(solo(1, "chess", 1500.0, 0)), Err(PoolError::UnknownMode("chess".into())));
    assert!(matches!(
        p.insert(party(1, "duel", &[1500.0, 1500.0], 0)),
        Err(PoolError::BadParty { size: 2, max: 1, .. })
    ));
    assert!(matches!(
        p.insert(party(1, "team3", &[], 0)),
        Err(PoolError::BadParty { size: 0, .. })
    ));
    assert!(matches!(p.insert(solo(1, "duel", f64::NAN, 0)), Err(PoolError::BadRating { .. })));
    p.insert(solo(1, "duel", 1500.0, 0)).unwrap();
    assert_eq!(p.insert(solo(1, "duel", 1500.0, 0)), Err(PoolError::DuplicateTicket(1)));
    let mut same_player = solo(2, "team3", 1500.0, 0);
    same_player.members[0].player_id = 10;
    assert_eq!(p.insert(same_player), Err(PoolError::DuplicatePlayer(10)));
    for id in 2..=4 {
        p.insert(solo(id, "duel", 3000.0 * id as f64, 0)).unwrap();
    }
    assert!(matches!(
        p.insert(solo(5, "duel", 1500.0, 0)),
        Err(PoolError::Full { limit: 4, .. })
    ));
    // A ticket put back (or rebuilt from the durable queue) is never refused for the limit.
    p.restore(solo(5, "duel", 99_000.0, 0)).unwrap();
    assert_eq!(p.len(), 5);
    assert_eq!(p.remove(5).unwrap().id, 5);
    assert_eq!(p.remove(5), None);
}

#[test]
fn two_close_players_are_matched_at_once() {
    let mut p = Pool::new(modes());
    p.insert(solo(1, "duel", 1500.0, 0)).unwrap();
    p.insert(solo(2, "duel", 1590.0, 10)).unwrap();
    let ms = p.pass(20);
    assert_eq!(ms.len(), 1);
    assert_eq!(ms[0].tickets, vec![1, 2]);
    assert_eq!(ms[0].spread, 90.0);
    assert_eq!(ms[0].teams, vec![vec![10], vec![20]]);
    assert_eq!(ms[0].made_ms, 20);
    assert!(p.is_empty());
}

#[test]
fn the_window_is_mutual_and_widens_with_waiting() {
    let mut p = Pool::new(modes());
    p.insert(solo(1, "duel", 1500.0, 0)).unwrap();
    // At 20 s ticket 1's window is 300, but ticket 2 is new (window 100): no match yet.
    p.insert(solo(2, "duel", 1700.0, 20_000)).unwrap();
    assert!(p.pass(20_000).is_empty());
    // Ticket 2 needs a window of 200: 10 s of waiting.
    assert!(p.pass(29_999).is_empty());
    let ms = p.pass(30_000);
    assert_eq!(ms.len(), 1);
    assert_eq!(ms[0].spread, 200.0);
}

#[test]
fn the_oldest_ticket_is_served_first() {
    let mut p = Pool::new(modes());
    // 3 arrives first; 1 and 2 would be the closest pair, but 3 is the anchor and takes its nearest.
    p.insert(solo(3, "duel", 1550.0, 0)).unwrap();
    p.insert(solo(1, "duel", 1500.0, 5)).unwrap();
    p.insert(solo(2, "duel", 1510.0, 6)).unwrap();
    let ms = p.pass(10);
    assert_eq!(ms.len(), 1);
    assert_eq!(ms[0].tickets, vec![3, 2]);
    assert_eq!(p.get(1).unwrap().id, 1);
}

#[test]
fn a_nearer_partner_whose_window_is_too_small_is_skipped() {
    let mut p = Pool::new(modes());
    p.insert(solo(1, "duel", 1500.0, 0)).unwrap(); // window 400 at 30 s
    p.insert(solo(2, "duel", 1650.0, 30_000)).unwrap(); // new: window 100 < 150
    p.insert(solo(3, "duel", 1800.0, 0)).unwrap(); // waited 30 s too: window 400 ≥ 300
    let ms = p.pass(30_000);
    assert_eq!(ms.len(), 1);
    assert_eq!(ms[0].tickets, vec![1, 3]);
    assert_eq!(ms[0].spread, 300.0);
}

#[test]
fn team_modes_keep_parties_together_and_balance_teams() {
    let mut p = Pool::new(modes());
    p.insert(party(1, "team3", &[1500.0, 1520.0], 0)).unwrap();
    p.insert(party(2, "team3", &[1510.0, 1490.0], 1)).unwrap();
    p.insert(party(3, "team3", &[1505.0, 1515.0], 2)).unwrap(); // three 2-parties cannot make 3v3
    p.insert(solo(4, "team3", 1500.0, 3)).unwrap();
    p.insert(solo(5, "team3", 1530.0, 4)).unwrap();
    let ms = p.pass(10);
    assert_eq!(ms.len(), 1, "{ms:?}");
    let m = &ms[0];
    // Anchor 1 takes the nearest first: 3 (2 players), not 2 (a third pair cannot be packed), then 4 and 5.
    assert_eq!(m.tickets, vec![1, 3, 4, 5]);
    assert_eq!(m.teams.len(), 2);
    assert!(m.teams.iter().all(|t| t.len() == 3));
    let team_of = |player: i64| m.teams.iter().position(|t| t.contains(&player)).unwrap();
    assert_eq!(team_of(10), team_of(11));
    assert_eq!(team_of(30), team_of(31));
    assert_eq!(p.len(), 1);
    assert!(p.get(2).is_some());
}

#[test]
fn regions_are_strict_until_the_rule_allows_any() {
    let m = modes();
    assert_eq!(m.get("team3").unwrap().region, RegionRule::AnyAfterMs(20_000));
    let mut p = Pool::new(m);
    for id in 1..=6 {
        let mut t = solo(id, "team3", 1500.0 + id as f64, 0);
        t.region = Some(if id <= 3 { "eu" } else { "us" }.into());
        p.insert(t).unwrap();
    }
    assert!(p.pass(19_999).is_empty());
    assert_eq!(p.depth().len(), 2);
    assert_eq!(p.depth()[0].players, 3);
    let ms = p.pass(20_000);
    assert_eq!(ms.len(), 1);
    assert_eq!(ms[0].region.as_deref(), Some("eu"));
    assert!(p.is_empty());
    assert!(p.depth().is_empty());
}

#[test]
fn strict_regions_never_mix() {
    let mut p = Pool::new(modes());
    let mut a = solo(1, "duel", 1500.0, 0);
    a.region = Some("eu".into());
    let b = solo(2, "duel", 1500.0, 0);
    p.insert(a).unwrap();
    p.insert(b).unwrap();
    assert!(p.pass(1_000_000).is_empty());
}
