//! Configuration read through a small `Env` trait, so tests hand in a map
//! instead of mutating the process environment.

use std::collections::HashMap;
use std::fmt::Display;
use std::ops::RangeInclusive;
use std::str::FromStr;
use std::time::Duration;

/// A source of configuration variables.
pub trait Env {
    /// The value of `key`, if set and not empty.
    fn get(&self, key: &str) -> Option<String>;
}

/// The real process environment.
pub struct ProcessEnv;

impl Env for ProcessEnv {
    fn get(&self, key: &str) -> Option<String> {
        std::env::var(key).ok().filter(|v| !v.is_empty())
    }
}

impl Env for HashMap<String, String> {
    fn get(&self, key: &str) -> Option<String> {
        HashMap::get(self, key).cloned().filter(|v| !v.is_empty())
    }
}

/// A configuration value that could not be used; the process exits with 64.
#[derive(Debug, thiserror::Error)]
#[error("invalid configuration: {key}={value:?}: {reason}")]
pub struct ConfigError {
    /// The variable at fault.
    pub key: String,
    /// What it was set to.
    pub value: String,
    /// What a valid value looks like.
    pub reason: String,
}

/// Exit code for a bad configuration (EX_USAGE).
pub const EXIT_CONFIG: i32 = 64;

/// `CONFAB_SEARCH_INDEX`: `on` (the default) or `off`.
pub fn search_index(env: &dyn Env) -> Result<bool, ConfigError> {
    let key = crate::vars::SEARCH_INDEX;
    match env.get(key).as_deref().map(str::trim) {
        None | Some("on") => Ok(true),
        Some("off") => Ok(false),
        Some(other) => Err(ConfigError {
            key: key.to_string(),
            value: other.to_string(),
            reason: "expected on or off".into(),
        }),
    }
}

/// Parses `key` from `env`, or returns `default` when it is unset.
pub fn parse_or<T: FromStr>(
    env: &dyn Env,
    key: &str,
    default: T,
    expected: &str,
) -> Result<T, ConfigError> {
    match env.get(key) {
        None => Ok(default),
        Some(value) => value.trim().parse().map_err(|_| ConfigError {
            key: key.to_string(),
            value,
            reason: format!("expected {expected}"),
        }),
    }
}

/// `key` parsed (or `default` when unset) and within `range`; the error
/// says `expected {expected}` either way.
pub fn parse_in<T: FromStr + PartialOrd>(
    env: &dyn Env,
    key: &str,
    default: T,
    range: RangeInclusive<T>,
    expected: &str,
) -> Result<T, ConfigError> {
    let value = parse_or(env, key, default, expected)?;
    // `contains` is false for NaN, which parses as a float.
    if range.contains(&value) {
        Ok(value)
    } else {
        Err(ConfigError {
            key: key.to_string(),
            value: env.get(key).unwrap_or_default(),
            reason: format!("expected {expected}"),
        })
    }
}

/// `key` parsed (or `default` when unset), refused below `min` with "must
/// be at least {min}".
pub fn at_least<T: FromStr + PartialOrd + Display>(
    env: &dyn Env,
    key: &str,
    default: T,
    min: T,
    expected: &str,
) -> Result<T, ConfigError> {
    let value = parse_or(env, key, default, expected)?;
    if value < min {
        return Err(ConfigError {
            key: key.to_string(),
            value: value.to_string(),
            reason: format!("must be at least {min}"),
        });
    }
    Ok(value)
}

/// `key` as whole milliseconds (or `default` when unset).
pub fn millis_or(env: &dyn Env, key: &str, default: Duration) -> Result<Duration, ConfigError> {
    millis_at_least(env, key, default, 0)
}

/// `key` as whole milliseconds (or `default` when unset), refused below
/// `min` ms like [`at_least`].
pub fn millis_at_least(
    env: &dyn Env,
    key: &str,
    default: Duration,
    min: u64,
) -> Result<Duration, ConfigError> {
    let ms = u64::try_from(default.as_millis()).unwrap_or(u64::MAX);
    at_least(env, key, ms, min, "milliseconds").map(Duration::from_millis)
}

/// `key` as whole seconds (or `default` when unset).
pub fn secs_or(env: &dyn Env, key: &str, default: Duration) -> Result<Duration, ConfigError> {
    parse_or(env, key, default.as_secs(), "whole seconds").map(Duration::from_secs)
}

/// A comma-separated list from `key`; empty when unset.
pub fn list(env: &dyn Env, key: &str) -> Vec<String> {
    env.get(key)
        .map(|v| {
            v.split(',')
                .map(str::trim)
                .filter(|s| !s.is_empty())
                .map(String::from)
                .collect()
        })
        .unwrap_or_default()
}

/// The value of `key`, or an error saying it is required.
pub fn required(env: &dyn Env, key: &str, what: &str) -> Result<String, ConfigError> {
    env.get(key).ok_or_else(|| ConfigError {
        key: key.to_string(),
        value: String::new(),
        reason: format!("required: {what}"),
    })
}

/// A comma-separated list from `key` that must name at least one `what`.
pub fn required_list(env: &dyn Env, key: &str, what: &str) -> Result<Vec<String>, ConfigError> {
    let values = list(env, key);
    if values.is_empty() {
        return Err(ConfigError {
            key: key.to_string(),
            value: String::new(),
            reason: format!("required: comma-separated {what}"),
        });
    }
    Ok(values)
}

/// `pairs` as an environment, for tests of configuration readers.
pub fn env_of(pairs: &[(&str, &str)]) -> HashMap<String, String> {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

/// The process environment with some variables overridden, for command-line
/// flags that mirror `CONFAB_*` variables: flags win, validation is shared.
#[derive(Debug, Clone, Default)]
pub struct Overlay {
    /// Flag values by variable name.
    flags: HashMap<String, String>,
}

impl Overlay {
    /// Sets `key` to `value` when the flag was given.
    pub fn flag(mut self, key: &str, value: Option<String>) -> Self {
        if let Some(v) = value {
            self.flags.insert(key.to_string(), v);
        }
        self
    }
}

impl Env for Overlay {
    fn get(&self, key: &str) -> Option<String> {
        self.flags
            .get(key)
            .cloned()
            .filter(|v| !v.is_empty())
            .or_else(|| ProcessEnv.get(key))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unset_uses_default_and_bad_value_names_the_key() {
        let mut env = HashMap::new();
        assert_eq!(parse_or(&env, "X", 7u32, "a number").ok(), Some(7));
        env.insert("X".to_string(), "seven".to_string());
        let err = parse_or(&env, "X", 7u32, "a number")
            .err()
            .map(|e| e.to_string());
        assert_eq!(
            err.as_deref(),
            Some("invalid configuration: X=\"seven\": expected a number")
        );
    }

    #[test]
    fn lists_split_on_commas_and_required_names_the_key() {
        let mut env = HashMap::new();
        env.insert("L".to_string(), " a:1, b:2 ,,".to_string());
        assert_eq!(list(&env, "L"), vec!["a:1".to_string(), "b:2".to_string()]);
        assert!(list(&env, "MISSING").is_empty());
        let err = required(&env, "DB", "a postgres:// URL")
            .err()
            .map(|e| e.to_string());
        assert_eq!(
            err.as_deref(),
            Some("invalid configuration: DB=\"\": required: a postgres:// URL")
        );
        let err = required_list(&env, "MISSING", "addresses (host:port)")
            .err()
            .map(|e| e.reason);
        assert_eq!(
            err.as_deref(),
            Some("required: comma-separated addresses (host:port)")
        );
    }
}
