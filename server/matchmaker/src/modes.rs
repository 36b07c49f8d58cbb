//! The modes file: parsing and validation of `[modes.NAME]` tables into [`Mode`]s.
//!
//! What it does: reads the TOML text field by field, so that every refusal names the file, the
//! field (`modes.duel.max_window`) and the fix. Fields it does not know are refused (a typo must not
//! silently fall back to a default).
//!
//! What it must never do: read the file itself (the caller does the IO) or accept a mode the
//! matcher cannot serve (no teams, a party larger than a team, a window that shrinks).

use std::collections::BTreeMap;

use crate::{Mode, Modes, ModesError, RegionRule};

/// Largest match the matcher assembles (players); team assembly is exhaustive up to this size.
pub const MAX_PLAYERS_PER_MATCH: u32 = 100;

/// The fields of one mode, in the order the docs list them.
pub const FIELDS: &[&str] = &[
    "teams",
    "team_size",
    "max_party",
    "initial_window",
    "widen_per_s",
    "max_window",
    "region",
    "queue_limit",
];

/// Defaults for the optional fields (`teams` and `team_size` are required).
pub const DEFAULT_INITIAL_WINDOW: f64 = 100.0;
pub const DEFAULT_WIDEN_PER_S: f64 = 10.0;
pub const DEFAULT_MAX_WINDOW: f64 = 400.0;
pub const DEFAULT_QUEUE_LIMIT: usize = 100_000;

fn err(file: &str, field: impl Into<String>, problem: impl Into<String>, fix: impl Into<String>) -> ModesError {
    ModesError {
        file: file.to_string(),
        field: field.into(),
        problem: problem.into(),
        fix: fix.into(),
    }
}

fn type_name(v: &toml::Value) -> &'static str {
    match v {
        toml::Value::String(_) => "a string",
        toml::Value::Integer(_) => "an integer",
        toml::Value::Float(_) => "a float",
        toml::Value::Boolean(_) => "a boolean",
        toml::Value::Datetime(_) => "a date",
        toml::Value::Array(_) => "an array",
        toml::Value::Table(_) => "a table",
    }
}

/// A whole number in `min..=max`.
fn int_field(file: &str, t: &toml::Table, mode: &str, name: &str, min: i64, max: i64, default: Option<i64>) -> Result<i64, ModesError> {
    let field = format!("modes.{mode}.{name}");
    let v = match t.get(name) {
        None => {
            return default.ok_or_else(|| err(file, &field, "missing", format!("add `{name} = <whole number {min}..={max}>`")));
        }
        Some(v) => v,
    };
    let toml::Value::Integer(n) = v else {
        return Err(err(
            file,
            &field,
            format!("is {}, not a whole number", type_name(v)),
            format!("write a whole number {min}..={max}, e.g. `{name} = {min}`"),
        ));
    };
    if *n < min || *n > max {
        return Err(err(
            file,
            &field,
            format!("{n} is out of range"),
            format!("use a whole number {min}..={max}"),
        ));
    }
    Ok(*n)
}

/// A finite number ≥ 0 (an integer is accepted for a float).
fn num_field(file: &str, t: &toml::Table, mode: &str, name: &str, default: f64, unit: &str) -> Result<f64, ModesError> {
    let field = format!("modes.{mode}.{name}");
    let x = match t.get(name) {
        None => return Ok(default),
        Some(toml::Value::Float(x)) => *x,
        Some(toml::Value::Integer(n)) => *n as f64,
        Some(v) => {
            return Err(err(
                file,
                &field,
                format!("is {}, not a number", type_name(v)),
                format!("write a number of {unit}, e.g. `{name} = {default}`"),
            ));
        }
    };
    if !x.is_finite() || x < 0.0 {
        return Err(err(
            file,
            &field,
            format!("{x} is not a finite number ≥ 0"),
            format!("write {unit} as a number ≥ 0, e.g. `{name} = {default}`"),
        ));
    }
    Ok(x)
}

fn region_field(file: &str, t: &toml::Table, mode: &str) -> Result<RegionRule, ModesError> {
    let field = format!("modes.{mode}.region");
    let fix = "write `region = \"strict\"` (same region only) or `region = { any_after_s = 20 }` (any region after 20 s of waiting)";
    match t.get("region") {
        None => Ok(RegionRule::Strict),
        Some(toml::Value::String(s)) if s == "strict" => Ok(RegionRule::Strict),
        Some(toml::Value::String(s)) => Err(err(file, field, format!("unknown rule {s:?}"), fix)),
        Some(toml::Value::Table(rt)) => {
            for k in rt.keys() {
                if k != "any_after_s" {
                    return Err(err(file, format!("{field}.{k}"), "unknown field", fix));
                }
            }
            let s = match rt.get("any_after_s") {
                Some(toml::Value::Float(x)) => *x,
                Some(toml::Value::Integer(n)) => *n as f64,
                Some(v) => {
                    return Err(err(
                        file,
                        format!("{field}.any_after_s"),
                        format!("is {}, not a number", type_name(v)),
                        fix,
                    ));
                }
                None => return Err(err(file, format!("{field}.any_after_s"), "missing", fix)),
            };
            if !s.is_finite() || !(0.0..=86_400.0).contains(&s) {
                return Err(err(
                    file,
                    format!("{field}.any_after_s"),
                    format!("{s} is not 0..=86400 seconds"),
                    fix,
                ));
            }
            Ok(RegionRule::AnyAfterMs((s * 1000.0).round() as u64))
        }
        Some(v) => Err(err(file, field, format!("is {}", type_name(v)), fix)),
    }
}

fn valid_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 64
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_' || b == b'-')
}

fn parse_mode(file: &str, name: &str, v: &toml::Value) -> Result<Mode, ModesError> {
    let toml::Value::Table(t) = v else {
        return Err(err(
            file,
            format!("modes.{name}"),
            format!("is {}, not a table", type_name(v)),
            format!("write the mode as a table: `[modes.{name}]` followed by its fields"),
        ));
    };
    if !valid_name(name) {
        return Err(err(
            file,
            format!("modes.{name}"),
            "the mode name is not 1..=64 characters of a-z, 0-9, `_` or `-`",
            "rename the table, e.g. `[modes.duel]`",
        ));
    }
    for k in t.keys() {
        if !FIELDS.contains(&k.as_str()) {
            return Err(err(
                file,
                format!("modes.{name}.{k}"),
                "unknown field",
                format!("remove it or use one of: {}", FIELDS.join(", ")),
            ));
        }
    }
    let max = i64::from(MAX_PLAYERS_PER_MATCH);
    let teams = int_field(file, t, name, "teams", 1, max, None)? as u32;
    let team_size = int_field(file, t, name, "team_size", 1, max, None)? as u32;
    if teams * team_size < 2 || teams * team_size > MAX_PLAYERS_PER_MATCH {
        return Err(err(
            file,
            format!("modes.{name}.team_size"),
            format!("teams × team_size = {} players per match", teams * team_size),
            format!("make teams × team_size between 2 and {MAX_PLAYERS_PER_MATCH}"),
        ));
    }
    let max_party = int_field(file, t, name, "max_party", 1, i64::from(team_size), Some(1)).map_err(|mut e| {
        if e.problem.ends_with("out of range") {
            e.problem = format!("{} (a party always plays on one team of team_size = {team_size})", e.problem);
        }
        e
    })? as u32;
    let initial_window = num_field(file, t, name, "initial_window", DEFAULT_INITIAL_WINDOW, "rating points")?;
    let widen_per_s = num_field(
        file,
        t,
        name,
        "widen_per_s",
        DEFAULT_WIDEN_PER_S,
        "rating points per second of waiting",
    )?;
    let max_window = num_field(file, t, name, "max_window", DEFAULT_MAX_WINDOW.max(initial_window), "rating points")?;
    if max_window < initial_window {
        return Err(err(
            file,
            format!("modes.{name}.max_window"),
            format!("{max_window} is below initial_window = {initial_window}: windows only widen"),
            format!("set max_window ≥ {initial_window}"),
        ));
    }
    let region = region_field(file, t, name)?;
    let queue_limit = int_field(
        file,
        t,
        name,
        "queue_limit",
        i64::from(teams * team_size),
        100_000_000,
        Some(DEFAULT_QUEUE_LIMIT as i64),
    )? as usize;
    Ok(Mode {
        name: name.to_string(),
        teams,
        team_size,
        max_party,
        initial_window,
        widen_per_s,
        max_window,
        region,
        queue_limit,
    })
}

/// See [`Modes::from_toml`].
pub(crate) fn parse(file: &str, text: &str) -> Result<Modes, ModesError> {
    let doc: toml::Table = toml::from_str(text).map_err(|e| {
        let at = e.span().map_or_else(
            || "document".to_string(),
            |s| format!("line {}", text[..s.start.min(text.len())].matches('\n').count() + 1),
        );
        err(
            file,
            at,
            format!("not valid TOML: {}", e.message().trim()),
            "fix the syntax; each mode is a table `[modes.NAME]` (see docs/MATCHMAKING.md)",
        )
    })?;
    for k in doc.keys() {
        if k != "modes" {
            return Err(err(
                file,
                k.as_str(),
                "unknown top-level field",
                "put every mode under `[modes.NAME]` and nothing else",
            ));
        }
    }
    let example = "add a mode, e.g. `[modes.duel]` with `teams = 2` and `team_size = 1`";
    let modes_table = match doc.get("modes") {
        None => return Err(err(file, "modes", "no modes", example)),
        Some(toml::Value::Table(t)) => t,
        Some(v) => return Err(err(file, "modes", format!("is {}, not a table", type_name(v)), example)),
    };
    if modes_table.is_empty() {
        return Err(err(file, "modes", "no modes", example));
    }
    let mut modes = BTreeMap::new();
    for (name, v) in modes_table {
        modes.insert(name.clone(), parse_mode(file, name, v)?);
    }
    Ok(Modes { modes })
}

#[cfg(test)]
mod tests {
    use super::*;

    const GOOD: &str = r#"
[modes.duel]
teams = 2
team_size = 1
max_party = 1
initial_window = 100.0
widen_per_s = 10.0
max_window = 400.0
region = "strict"
queue_limit = 100000

[modes.team3]
teams = 2
team_size = 3
max_party = 3
initial_window = 100
widen_per_s = 5
max_window = 300
region = { any_after_s = 20 }
"#;

    fn refuse(text: &str) -> ModesError {
        Modes::from_toml("m.toml", text).unwrap_err()
    }

    /// The refusal names the file and the field, and its message carries a fix.
    fn assert_refused(text: &str, field: &str, problem_has: &str) {
        let e = refuse(text);
        assert_eq!(e.file, "m.toml", "{e}");
        assert_eq!(e.field, field, "{e}");
        assert!(e.problem.contains(problem_has), "{e}");
        assert!(!e.fix.is_empty(), "{e}");
        let msg = e.to_string();
        assert!(msg.starts_with("m.toml: ") && msg.contains(field) && msg.contains("fix:"), "{msg}");
    }

    #[test]
    fn a_good_file_parses_with_defaults() {
        let m = Modes::from_toml("m.toml", GOOD).unwrap();
        assert_eq!(m.names(), vec!["duel", "team3"]);
        let d = m.get("duel").unwrap();
        assert_eq!((d.teams, d.team_size, d.max_party, d.players_per_match()), (2, 1, 1, 2));
        assert_eq!(d.region, RegionRule::Strict);
        let t = m.get("team3").unwrap();
        assert_eq!((t.teams, t.team_size, t.max_party), (2, 3, 3));
        assert_eq!(t.region, RegionRule::AnyAfterMs(20_000));
        assert_eq!(t.queue_limit, DEFAULT_QUEUE_LIMIT);
        let min = Modes::from_toml("m.toml", "[modes.x]\nteams = 2\nteam_size = 1\n").unwrap();
        let x = min.get("x").unwrap();
        assert_eq!(
            (x.initial_window, x.widen_per_s, x.max_window, x.max_party),
            (100.0, 10.0, 400.0, 1)
        );
    }

    #[test]
    fn the_shipped_modes_file_parses() {
        let text = include_str!("../../../assets/match/modes.toml");
        let m = Modes::from_toml("assets/match/modes.toml", text).unwrap();
        assert!(m.get("duel").is_some() && m.get("team3").is_some());
        assert_eq!(m.get("team3").unwrap().max_party, 3);
    }

    #[test]
    fn refuses_bad_syntax_with_the_line() {
        assert_refused("[modes.duel]\nteams = = 2\n", "line 2", "not valid TOML");
    }

    #[test]
    fn refuses_no_modes() {
        assert_refused("", "modes", "no modes");
        assert_refused("[modes]\n", "modes", "no modes");
        assert_refused("modes = 3\n", "modes", "not a table");
    }

    #[test]
    fn refuses_unknown_fields() {
        assert_refused("[mode.duel]\nteams = 2\n", "mode", "unknown top-level field");
        assert_refused(
            "[modes.duel]\nteams = 2\nteam_size = 1\nwiden_per_sec = 3\n",
            "modes.duel.widen_per_sec",
            "unknown field",
        );
        assert_refused(
            "[modes.duel]\nteams = 2\nteam_size = 1\nregion = { any_after = 3 }\n",
            "modes.duel.region.any_after",
            "unknown field",
        );
    }

    #[test]
    fn refuses_a_bad_mode_name_or_shape() {
        assert_refused("[modes.Duel]\nteams = 2\nteam_size = 1\n", "modes.Duel", "mode name");
        assert_refused("[modes]\nduel = 3\n", "modes.duel", "not a table");
    }

    #[test]
    fn refuses_missing_or_bad_teams() {
        assert_refused("[modes.duel]\nteam_size = 1\n", "modes.duel.teams", "missing");
        assert_refused("[modes.duel]\nteams = 2\n", "modes.duel.team_size", "missing");
        assert_refused("[modes.duel]\nteams = 0\nteam_size = 1\n", "modes.duel.teams", "out of range");
        assert_refused(
            "[modes.duel]\nteams = \"two\"\nteam_size = 1\n",
            "modes.duel.teams",
            "not a whole number",
        );
        assert_refused(
            "[modes.duel]\nteams = 1\nteam_size = 1\n",
            "modes.duel.team_size",
            "players per match",
        );
        assert_refused(
            "[modes.big]\nteams = 20\nteam_size = 20\n",
            "modes.big.team_size",
            "players per match",
        );
    }

    #[test]
    fn refuses_a_party_larger_than_a_team() {
        assert_refused(
            "[modes.t]\nteams = 2\nteam_size = 3\nmax_party = 4\n",
            "modes.t.max_party",
            "one team",
        );
        assert_refused(
            "[modes.t]\nteams = 2\nteam_size = 3\nmax_party = 0\n",
            "modes.t.max_party",
            "out of range",
        );
    }

    #[test]
    fn refuses_bad_windows() {
        assert_refused(
            "[modes.d]\nteams = 2\nteam_size = 1\ninitial_window = -1\n",
            "modes.d.initial_window",
            "≥ 0",
        );
        assert_refused(
            "[modes.d]\nteams = 2\nteam_size = 1\nwiden_per_s = nan\n",
            "modes.d.widen_per_s",
            "≥ 0",
        );
        assert_refused(
            "[modes.d]\nteams = 2\nteam_size = 1\nmax_window = \"big\"\n",
            "modes.d.max_window",
            "not a number",
        );
        assert_refused(
            "[modes.d]\nteams = 2\nteam_size = 1\ninitial_window = 200\nmax_window = 100\n",
            "modes.d.max_window",
            "only widen",
        );
    }

    #[test]
    fn refuses_a_bad_region_rule() {
        assert_refused(
            "[modes.d]\nteams = 2\nteam_size = 1\nregion = \"loose\"\n",
            "modes.d.region",
            "unknown rule",
        );
        assert_refused("[modes.d]\nteams = 2\nteam_size = 1\nregion = 3\n", "modes.d.region", "an integer");
        assert_refused(
            "[modes.d]\nteams = 2\nteam_size = 1\nregion = {}\n",
            "modes.d.region.any_after_s",
            "missing",
        );
        assert_refused(
            "[modes.d]\nteams = 2\nteam_size = 1\nregion = { any_after_s = -5 }\n",
            "modes.d.region.any_after_s",
            "0..=86400",
        );
    }

    #[test]
    fn refuses_a_queue_limit_below_one_match() {
        assert_refused(
            "[modes.t]\nteams = 2\nteam_size = 3\nqueue_limit = 5\n",
            "modes.t.queue_limit",
            "out of range",
        );
    }
}
