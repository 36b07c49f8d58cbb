//! Zone files: the TOML description of a zone, parsed and validated into integer units.
//!
//! This module turns text into a [`ZoneSpec`]; it never opens files itself (the caller reads the
//! file and passes its name along for error messages). Every error names the file, the field and
//! what to do about it. Human units (metres, seconds, metres per second) stop here: the rest of the
//! simulation sees only millimetres and ticks.

use serde::Deserialize;
use sha2::{Digest, Sha256};

use crate::units::{Rect, Vec2, metres_to_mm, secs_to_ticks, speed_to_mm_per_tick};

/// Largest zone side accepted, in metres (keeps every millimetre coordinate well inside `i32`).
pub const ZONE_SIDE_M_MAX: f64 = 1_000_000.0;
/// Largest shard grid side.
pub const SHARD_GRID_SIDE_MAX: u32 = 64;
/// Largest total NPC count a zone may declare.
pub const NPC_COUNT_MAX: u64 = 10_000_000;

/// A zone file that could not be loaded. `file` is the name the caller gave, `field` a dotted path
/// into the TOML document.
#[derive(Debug, thiserror::Error, PartialEq)]
#[error("{file}: {field}: {reason}")]
pub struct ZoneFileError {
    pub file: String,
    pub field: String,
    pub reason: String,
}

/// How an NPC kind moves when no player is in reach.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Behaviour {
    /// Walks to random points within `wander_radius_m` of its spawn point, pausing in between.
    Wander,
    /// Walks a square of side `2 × wander_radius_m` around its spawn point, corner to corner.
    Patrol,
    /// Stands at its spawn point (it still chases when `aggro_radius_m > 0`).
    Idle,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawFile {
    zone: RawZone,
    #[serde(default)]
    player: Option<RawPlayer>,
    #[serde(default)]
    npc_kind: Vec<RawKind>,
    #[serde(default)]
    spawner: Vec<RawSpawner>,
    #[serde(default)]
    player_spawn: Vec<RawPoint>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawZone {
    id: String,
    width_m: f64,
    height_m: f64,
    shard_cols: u32,
    shard_rows: u32,
    #[serde(default = "default_max_players")]
    max_players: u32,
    #[serde(default = "default_input_lead_ticks")]
    input_lead_ticks_max: u32,
}

fn default_max_players() -> u32 {
    4096
}
fn default_input_lead_ticks() -> u32 {
    120
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawPlayer {
    speed_m_per_s: f64,
    hit_points: i32,
    damage: i32,
    attack_range_m: f64,
    attack_cooldown_s: f64,
    respawn_delay_s: f64,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawKind {
    name: String,
    behaviour: Behaviour,
    speed_m_per_s: f64,
    #[serde(default)]
    wander_radius_m: f64,
    #[serde(default)]
    aggro_radius_m: f64,
    #[serde(default = "default_attack_range")]
    attack_range_m: f64,
    hit_points: i32,
    #[serde(default)]
    damage: i32,
    #[serde(default = "default_cooldown")]
    attack_cooldown_s: f64,
    #[serde(default = "default_pause")]
    pause_s_max: f64,
}

fn default_attack_range() -> f64 {
    2.0
}
fn default_cooldown() -> f64 {
    1.0
}
fn default_pause() -> f64 {
    2.0
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawSpawner {
    kind: String,
    count: u64,
    respawn_delay_s: f64,
    /// Area in metres; the whole zone when absent.
    #[serde(default)]
    area: Option<RawArea>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawArea {
    x_m: f64,
    y_m: f64,
    width_m: f64,
    height_m: f64,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawPoint {
    x_m: f64,
    y_m: f64,
}

/// Player parameters, in simulation units.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PlayerParams {
    pub speed_mm_per_tick: i32,
    pub hit_points: i32,
    pub damage: i32,
    pub attack_range_mm: i32,
    pub attack_cooldown_ticks: u32,
    pub respawn_delay_ticks: u32,
}

impl Default for PlayerParams {
    fn default() -> Self {
        PlayerParams {
            speed_mm_per_tick: 100, // 6 m/s
            hit_points: 200,
            damage: 25,
            attack_range_mm: 3000,
            attack_cooldown_ticks: 30,
            respawn_delay_ticks: 180,
        }
    }
}

/// One NPC kind, in simulation units. Kind ids are 1-based positions in the file's `npc_kind`
/// list; kind 0 is the player.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct KindParams {
    pub name: String,
    pub behaviour: Behaviour,
    pub speed_mm_per_tick: i32,
    pub wander_radius_mm: i32,
    pub aggro_radius_mm: i32,
    pub attack_range_mm: i32,
    pub hit_points: i32,
    pub damage: i32,
    pub attack_cooldown_ticks: u32,
    pub pause_ticks_max: u32,
}

/// One spawn table entry, in simulation units.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SpawnerSpec {
    /// 1-based NPC kind id.
    pub kind: u16,
    pub count: u64,
    pub respawn_delay_ticks: u32,
    pub area: Rect,
}

/// A validated zone, in simulation units.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ZoneSpec {
    pub id: String,
    pub bounds: Rect,
    pub shard_cols: u32,
    pub shard_rows: u32,
    pub max_players: u32,
    pub input_lead_ticks_max: u32,
    pub player: PlayerParams,
    /// Index 0 is a placeholder for the player kind, so that `kinds[kind_id]` works.
    pub kinds: Vec<KindParams>,
    pub spawners: Vec<SpawnerSpec>,
    pub player_spawns: Vec<Vec2>,
    /// SHA-256 of the file's bytes: journals and snapshots name the zone by it.
    pub digest: [u8; 32],
}

/// The player's kind id.
pub const PLAYER_KIND: u16 = 0;

impl ZoneSpec {
    /// Parses and validates a zone file. `file` is only used in error messages.
    pub fn from_toml_str(file: &str, text: &str) -> Result<ZoneSpec, ZoneFileError> {
        let err = |field: &str, reason: String| ZoneFileError {
            file: file.to_string(),
            field: field.to_string(),
            reason,
        };
        let raw: RawFile = toml::from_str(text).map_err(|e| {
            // toml's message already says where; keep its first line and point at the place.
            let span = e.span().map(|s| line_col(text, s.start));
            let field = match span {
                Some((l, c)) => format!("line {l}, column {c}"),
                None => "document".to_string(),
            };
            err(&field, format!("{} (see assets/zones/demo.toml for a valid example)", e.message()))
        })?;

        let z = &raw.zone;
        if z.id.is_empty() || !z.id.chars().all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_') {
            return Err(err(
                "zone.id",
                format!("{:?} must be non-empty ASCII letters, digits, '-' or '_'", z.id),
            ));
        }
        for (name, v) in [("zone.width_m", z.width_m), ("zone.height_m", z.height_m)] {
            if !(v.is_finite() && (1.0..=ZONE_SIDE_M_MAX).contains(&v)) {
                return Err(err(name, format!("{v} is out of range: use 1 to {ZONE_SIDE_M_MAX} metres")));
            }
        }
        for (name, v) in [("zone.shard_cols", z.shard_cols), ("zone.shard_rows", z.shard_rows)] {
            if v == 0 || v > SHARD_GRID_SIDE_MAX {
                return Err(err(name, format!("{v} is out of range: use 1 to {SHARD_GRID_SIDE_MAX}")));
            }
        }
        if z.max_players == 0 {
            return Err(err("zone.max_players", "must be at least 1".into()));
        }
        if z.input_lead_ticks_max == 0 || z.input_lead_ticks_max > 600 {
            return Err(err(
                "zone.input_lead_ticks_max",
                format!("{} is out of range: use 1 to 600 ticks", z.input_lead_ticks_max),
            ));
        }
        let bounds = Rect {
            min: Vec2::ZERO,
            max: Vec2::new(metres_to_mm(z.width_m) as i32, metres_to_mm(z.height_m) as i32),
        };
        if bounds.width() / i64::from(z.shard_cols) < 1000 || bounds.height() / i64::from(z.shard_rows) < 1000 {
            return Err(err(
                "zone.shard_cols",
                "shard cells must be at least 1 m on each side: use fewer shards or a larger zone".into(),
            ));
        }

        let player = match &raw.player {
            None => PlayerParams::default(),
            Some(p) => PlayerParams {
                speed_mm_per_tick: speed(&err, "player.speed_m_per_s", p.speed_m_per_s)?,
                hit_points: positive(&err, "player.hit_points", p.hit_points)?,
                damage: non_negative(&err, "player.damage", p.damage)?,
                attack_range_mm: distance(&err, "player.attack_range_m", p.attack_range_m)?,
                attack_cooldown_ticks: duration(&err, "player.attack_cooldown_s", p.attack_cooldown_s)?,
                respawn_delay_ticks: duration(&err, "player.respawn_delay_s", p.respawn_delay_s)?,
            },
        };

        let mut kinds = vec![KindParams {
            name: "player".into(),
            behaviour: Behaviour::Idle,
            speed_mm_per_tick: player.speed_mm_per_tick,
            wander_radius_mm: 0,
            aggro_radius_mm: 0,
            attack_range_mm: player.attack_range_mm,
            hit_points: player.hit_points,
            damage: player.damage,
            attack_cooldown_ticks: player.attack_cooldown_ticks,
            pause_ticks_max: 0,
        }];
        if raw.npc_kind.len() > usize::from(u16::MAX) - 1 {
            return Err(err("npc_kind", "too many kinds".into()));
        }
        for (i, k) in raw.npc_kind.iter().enumerate() {
            let f = |name: &str| format!("npc_kind[{i}].{name}");
            if k.name.is_empty() || k.name == "player" {
                return Err(err(
                    &f("name"),
                    format!(
                        "{:?} is not allowed: give each kind a unique, non-empty name other than \"player\"",
                        k.name
                    ),
                ));
            }
            if kinds.iter().any(|o| o.name == k.name) {
                return Err(err(
                    &f("name"),
                    format!("{:?} is declared twice: kind names must be unique", k.name),
                ));
            }
            let wander_radius_mm = distance(&err, &f("wander_radius_m"), k.wander_radius_m)?;
            if k.behaviour != Behaviour::Idle && wander_radius_mm == 0 {
                return Err(err(
                    &f("wander_radius_m"),
                    "must be greater than 0 for wander and patrol kinds".into(),
                ));
            }
            kinds.push(KindParams {
                name: k.name.clone(),
                behaviour: k.behaviour,
                speed_mm_per_tick: speed(&err, &f("speed_m_per_s"), k.speed_m_per_s)?,
                wander_radius_mm,
                aggro_radius_mm: distance(&err, &f("aggro_radius_m"), k.aggro_radius_m)?,
                attack_range_mm: distance(&err, &f("attack_range_m"), k.attack_range_m)?,
                hit_points: positive(&err, &f("hit_points"), k.hit_points)?,
                damage: non_negative(&err, &f("damage"), k.damage)?,
                attack_cooldown_ticks: duration(&err, &f("attack_cooldown_s"), k.attack_cooldown_s)?,
                pause_ticks_max: duration(&err, &f("pause_s_max"), k.pause_s_max)?,
            });
        }

        let mut spawners = Vec::with_capacity(raw.spawner.len());
        let mut total: u64 = 0;
        for (i, s) in raw.spawner.iter().enumerate() {
            let f = |name: &str| format!("spawner[{i}].{name}");
            let Some(kind) = kinds.iter().position(|k| k.name == s.kind).filter(|&p| p > 0) else {
                let known: Vec<&str> = kinds[1..].iter().map(|k| k.name.as_str()).collect();
                return Err(err(
                    &f("kind"),
                    format!("unknown kind {:?}: declare it in an [[npc_kind]] table (known: {known:?})", s.kind),
                ));
            };
            total = total.saturating_add(s.count);
            if total > NPC_COUNT_MAX {
                return Err(err(&f("count"), format!("the zone would hold more than {NPC_COUNT_MAX} NPCs")));
            }
            let area = match &s.area {
                None => bounds,
                Some(a) => {
                    let r = Rect {
                        min: Vec2::new(metres_to_mm(a.x_m) as i32, metres_to_mm(a.y_m) as i32),
                        max: Vec2::new(metres_to_mm(a.x_m + a.width_m) as i32, metres_to_mm(a.y_m + a.height_m) as i32),
                    };
                    let finite = [a.x_m, a.y_m, a.width_m, a.height_m].iter().all(|v| v.is_finite());
                    match bounds.intersect(&r) {
                        Some(inside) if finite && inside == r => r,
                        _ => {
                            return Err(err(
                                &f("area"),
                                format!(
                                    "({}, {}) {}×{} m is not a non-empty rectangle inside the zone (0, 0) {}×{} m",
                                    a.x_m, a.y_m, a.width_m, a.height_m, z.width_m, z.height_m
                                ),
                            ));
                        }
                    }
                }
            };
            spawners.push(SpawnerSpec {
                kind: kind as u16,
                count: s.count,
                respawn_delay_ticks: duration(&err, &f("respawn_delay_s"), s.respawn_delay_s)?,
                area,
            });
        }

        let mut player_spawns = Vec::with_capacity(raw.player_spawn.len());
        for (i, p) in raw.player_spawn.iter().enumerate() {
            let v = Vec2::new(metres_to_mm(p.x_m) as i32, metres_to_mm(p.y_m) as i32);
            if !(p.x_m.is_finite() && p.y_m.is_finite() && bounds.contains(v)) {
                return Err(err(
                    &format!("player_spawn[{i}]"),
                    format!("({}, {}) m is outside the zone", p.x_m, p.y_m),
                ));
            }
            player_spawns.push(v);
        }
        if player_spawns.is_empty() {
            return Err(err("player_spawn", "at least one [[player_spawn]] point is required".into()));
        }

        Ok(ZoneSpec {
            id: z.id.clone(),
            bounds,
            shard_cols: z.shard_cols,
            shard_rows: z.shard_rows,
            max_players: z.max_players,
            input_lead_ticks_max: z.input_lead_ticks_max,
            player,
            kinds,
            spawners,
            player_spawns,
            digest: Sha256::digest(text.as_bytes()).into(),
        })
    }

    pub fn shard_count(&self) -> usize {
        (self.shard_cols * self.shard_rows) as usize
    }

    /// The rectangle of shard `index` (row-major). The last row and column absorb the remainder.
    pub fn shard_rect(&self, index: usize) -> Rect {
        let col = (index as u32 % self.shard_cols) as i64;
        let row = (index as u32 / self.shard_cols) as i64;
        let (w, h) = (self.bounds.width(), self.bounds.height());
        let (cols, rows) = (i64::from(self.shard_cols), i64::from(self.shard_rows));
        let x = |c: i64| (i64::from(self.bounds.min.x) + w * c / cols) as i32;
        let y = |r: i64| (i64::from(self.bounds.min.y) + h * r / rows) as i32;
        Rect {
            min: Vec2::new(x(col), y(row)),
            max: Vec2::new(x(col + 1), y(row + 1)),
        }
    }

    /// The shard that owns position `p`; points outside the zone belong to the nearest shard.
    pub fn shard_of(&self, p: Vec2) -> usize {
        let p = self.bounds.clamp(p);
        let (w, h) = (self.bounds.width(), self.bounds.height());
        let col = ((i64::from(p.x) - i64::from(self.bounds.min.x)) * i64::from(self.shard_cols) / w) as u32;
        let row = ((i64::from(p.y) - i64::from(self.bounds.min.y)) * i64::from(self.shard_rows) / h) as u32;
        let col = col.min(self.shard_cols - 1);
        let row = row.min(self.shard_rows - 1);
        // The integer cell edges in shard_rect round down; make shard_of agree with them exactly.
        let mut idx = (row * self.shard_cols + col) as usize;
        for _ in 0..2 {
            let r = self.shard_rect(idx);
            let (mut c, mut rr) = (idx as u32 % self.shard_cols, idx as u32 / self.shard_cols);
            if p.x < r.min.x && c > 0 {
                c -= 1
            } else if p.x >= r.max.x && c + 1 < self.shard_cols {
                c += 1
            }
            if p.y < r.min.y && rr > 0 {
                rr -= 1
            } else if p.y >= r.max.y && rr + 1 < self.shard_rows {
                rr += 1
            }
            idx = (rr * self.shard_cols + c) as usize;
        }
        idx
    }

    /// Total NPCs the spawn tables keep alive.
    pub fn npc_count(&self) -> u64 {
        self.spawners.iter().map(|s| s.count).sum()
    }

    /// The largest distance at which an NPC notices or keeps chasing a player (the leash is twice
    /// the aggro radius). Shards look this far past their borders for players.
    pub fn player_awareness_mm(&self) -> i32 {
        self.kinds.iter().map(|k| k.aggro_radius_mm.saturating_mul(2)).max().unwrap_or(0)
    }

    /// The digest as 64 lowercase hex digits.
    pub fn digest_hex(&self) -> String {
        self.digest.iter().map(|b| format!("{b:02x}")).collect()
    }
}

fn line_col(text: &str, byte: usize) -> (usize, usize) {
    let before = &text[..byte.min(text.len())];
    let line = before.matches('\n').count() + 1;
    let col = before.len() - before.rfind('\n').map(|i| i + 1).unwrap_or(0) + 1;
    (line, col)
}

type ErrFn<'a> = dyn Fn(&str, String) -> ZoneFileError + 'a;

fn speed(err: &ErrFn<'_>, field: &str, v: f64) -> Result<i32, ZoneFileError> {
    if !(v.is_finite() && (0.0..=1000.0).contains(&v)) {
        return Err(err(field, format!("{v} is out of range: use 0 to 1000 m/s")));
    }
    Ok(speed_to_mm_per_tick(v) as i32)
}

fn distance(err: &ErrFn<'_>, field: &str, v: f64) -> Result<i32, ZoneFileError> {
    if !(v.is_finite() && (0.0..=100_000.0).contains(&v)) {
        return Err(err(field, format!("{v} is out of range: use 0 to 100000 metres")));
    }
    Ok(metres_to_mm(v) as i32)
}

fn duration(err: &ErrFn<'_>, field: &str, v: f64) -> Result<u32, ZoneFileError> {
    if !(v.is_finite() && (0.0..=86_400.0).contains(&v)) {
        return Err(err(field, format!("{v} is out of range: use 0 to 86400 seconds")));
    }
    Ok(secs_to_ticks(v) as u32)
}

fn positive(err: &ErrFn<'_>, field: &str, v: i32) -> Result<i32, ZoneFileError> {
    if v <= 0 || v > 1_000_000 {
        return Err(err(field, format!("{v} is out of range: use 1 to 1000000")));
    }
    Ok(v)
}

fn non_negative(err: &ErrFn<'_>, field: &str, v: i32) -> Result<i32, ZoneFileError> {
    if !(0..=1_000_000).contains(&v) {
        return Err(err(field, format!("{v} is out of range: use 0 to 1000000")));
    }
    Ok(v)
}

#[cfg(test)]
mod tests {
    use super::*;

    const MINI: &str = r#"
[zone]
id = "mini"
width_m = 100
height_m = 100
shard_cols = 2
shard_rows = 2

[[npc_kind]]
name = "rat"
behaviour = "wander"
speed_m_per_s = 3
wander_radius_m = 10
hit_points = 10

[[spawner]]
kind = "rat"
count = 10
respawn_delay_s = 1

[[player_spawn]]
x_m = 50
y_m = 50
"#;

    #[test]
    fn parses_minimal_file() {
        let z = ZoneSpec::from_toml_str("mini.toml", MINI).unwrap();
        assert_eq!(z.kinds[1].speed_mm_per_tick, 50);
        assert_eq!(z.spawners[0].respawn_delay_ticks, 60);
        assert_eq!(z.shard_count(), 4);
    }

    #[test]
    fn shard_of_agrees_with_shard_rect() {
        let text = MINI
            .replace("shard_cols = 2", "shard_cols = 3")
            .replace("width_m = 100", "width_m = 100.001");
        let z = ZoneSpec::from_toml_str("mini.toml", &text).unwrap();
        for x in (-10..100_010).step_by(997) {
            for y in (-10..100_010).step_by(1009) {
                let p = Vec2::new(x, y);
                let s = z.shard_of(p);
                assert!(z.shard_rect(s).contains(z.bounds.clamp(p)), "{p:?} -> {s}");
            }
        }
    }

    #[test]
    fn errors_name_file_field_and_fix() {
        let bad = MINI.replace("kind = \"rat\"", "kind = \"bat\"");
        let e = ZoneSpec::from_toml_str("mini.toml", &bad).unwrap_err();
        assert_eq!(e.field, "spawner[0].kind");
        assert!(e.to_string().starts_with("mini.toml: spawner[0].kind: unknown kind \"bat\""), "{e}");

        let bad = MINI.replace("shard_rows = 2", "shard_rows = 0");
        assert_eq!(ZoneSpec::from_toml_str("m", &bad).unwrap_err().field, "zone.shard_rows");

        let bad = MINI.replace("hit_points = 10", "hit_points = \"ten\"");
        let e = ZoneSpec::from_toml_str("m", &bad).unwrap_err();
        assert!(e.field.starts_with("line "), "{e}");

        let bad = MINI.replace("hit_points = 10", "hit_points = 10\nspeling = 1");
        let e = ZoneSpec::from_toml_str("m", &bad).unwrap_err();
        assert!(e.reason.contains("speling"), "{e}");
    }
}
