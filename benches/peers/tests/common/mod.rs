//! Helpers shared by the peers' tests.

/// The number after `key=` in a `key=value key=value …` line; panics if there is none.
pub fn kv(line: &str, key: &str) -> f64 {
    line.split_whitespace()
        .find_map(|f| f.strip_prefix(key).and_then(|v| v.strip_prefix('=')))
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("no {key} in {line}"))
}
