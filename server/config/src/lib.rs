//! # zone-config: the layering both services use
//!
//! `zone-server` and `zone-lobby` take every option from the command line, then an environment
//! variable (`ZONE_*`, `ZONE_LOBBY_*`; clap folds those in), then a TOML file, then a default.
//! This crate holds the parts that are the same for both: reading the TOML file so that a mistake
//! is reported with the file, the line and the fix ([`load_toml`]), checking URL schemes
//! ([`check_url`]), and masking secrets for `--print-config` ([`mask_url_passwords`],
//! [`mask_keys`]).
//!
//! It never reads the environment or the command line itself (clap does), and never logs: a
//! secret that passes through here is only ever masked.

use std::path::{Path, PathBuf};

use serde::de::DeserializeOwned;

/// Why a configuration file or value was refused. The message names the file or field and the fix.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config file {path}: {source}")]
    Read { path: PathBuf, source: std::io::Error },
    #[error("{path}: {at}: {message} ({hint})")]
    Parse {
        path: PathBuf,
        at: String,
        message: String,
        hint: String,
    },
    #[error("{field}: {value:?} is not a URL starting with {schemes}")]
    Url { field: String, value: String, schemes: String },
}

/// Reads a TOML file into `T` (which should `deny_unknown_fields`, so a typo is an error).
/// `hint` ends the message of a parse error, e.g. "every option of `zone-lobby --help` can be set
/// here, with underscores".
pub fn load_toml<T: DeserializeOwned>(path: &Path, hint: &str) -> Result<T, ConfigError> {
    let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
        path: path.to_path_buf(),
        source,
    })?;
    toml::from_str(&text).map_err(|e| {
        let at = e.span().map_or_else(
            || "document".to_string(),
            |s| {
                let before = &text[..s.start.min(text.len())];
                format!("line {}", before.matches('\n').count() + 1)
            },
        );
        ConfigError::Parse {
            path: path.to_path_buf(),
            at,
            message: e.message().to_string(),
            hint: hint.to_string(),
        }
    })
}

/// Checks that `url` starts with one of `schemes`; the error names `field` and masks any password.
pub fn check_url(field: &str, url: &str, schemes: &[&str]) -> Result<(), ConfigError> {
    if schemes.iter().any(|s| url.starts_with(s)) {
        Ok(())
    } else {
        Err(ConfigError::Url {
            field: field.to_string(),
            value: mask_url_passwords(url),
            schemes: schemes.join(" or "),
        })
    }
}

/// Replaces the password in any `scheme://user:password@host` with `***`.
pub fn mask_url_passwords(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(i) = rest.find("://") {
        let (head, tail) = rest.split_at(i + 3);
        out.push_str(head);
        let end = tail.find(['"', '\n', ' ']).unwrap_or(tail.len());
        let authority = &tail[..end];
        match (authority.find('@'), authority.find(':')) {
            (Some(at), Some(colon)) if colon < at => {
                out.push_str(&authority[..colon + 1]);
                out.push_str("***");
                out.push_str(&authority[at..]);
            }
            _ => out.push_str(authority),
        }
        rest = &tail[end..];
    }
    out.push_str(rest);
    out
}

/// Replaces the value of every top-level `key = …` line of a TOML text whose key is in `keys`
/// with `"***"`, and masks URL passwords everywhere.
pub fn mask_keys(toml_text: &str, keys: &[&str]) -> String {
    let mut out = String::with_capacity(toml_text.len());
    for line in mask_url_passwords(toml_text).lines() {
        let key = line.split('=').next().unwrap_or("").trim();
        if line.contains('=') && keys.contains(&key) {
            out.push_str(key);
            out.push_str(" = \"***\"");
        } else {
            out.push_str(line);
        }
        out.push('\n');
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn masks_passwords() {
        assert_eq!(
            mask_url_passwords("redis = \"redis://u:secret@h:1/\""),
            "redis = \"redis://u:***@h:1/\""
        );
        assert_eq!(mask_url_passwords("a = \"postgres://h/db\""), "a = \"postgres://h/db\"");
    }

    #[test]
    fn masks_keys() {
        let t = "token_secret = \"abc\"\nseed = 1\nsession_secret_x = 2\n";
        assert_eq!(
            mask_keys(t, &["token_secret"]),
            "token_secret = \"***\"\nseed = 1\nsession_secret_x = 2\n"
        );
    }

    #[test]
    fn parse_errors_name_file_and_line() {
        #[derive(serde::Deserialize, Debug)]
        #[serde(deny_unknown_fields)]
        #[allow(dead_code)]
        struct F {
            seed: Option<u64>,
        }
        let dir = std::env::temp_dir().join(format!("zone-config-lib-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let f = dir.join("x.toml");
        std::fs::write(&f, "seed = 1\nsed = 2\n").unwrap();
        let e = load_toml::<F>(&f, "see --help").unwrap_err().to_string();
        assert!(
            e.contains("x.toml") && e.contains("line 2") && e.contains("sed") && e.contains("see --help"),
            "{e}"
        );
        assert!(
            check_url("redis", "http://u:pw@x", &["redis://"])
                .unwrap_err()
                .to_string()
                .contains("***")
        );
        std::fs::remove_dir_all(&dir).ok();
    }
}
