//! Dependency rules that no advisory database states: jsonwebtoken older than 10.3.0
//! (GHSA-h395-gr6q-cpjc, absent from RustSec) must not be anywhere in the tree.

// Tests and benches: a failed assumption is a failed test, and shared helpers are `pub`.
#![allow(clippy::unwrap_used, clippy::expect_used, unreachable_pub)]

fn versions_of(lock: &str, name: &str) -> Vec<(u64, u64, u64)> {
    let mut out = Vec::new();
    let mut current: Option<&str> = None;
    for line in lock.lines() {
        if let Some(n) = line.strip_prefix("name = ") {
            current = Some(n.trim_matches('"'));
        } else if let Some(v) = line.strip_prefix("version = ")
            && current == Some(name)
        {
            let parts: Vec<u64> = v
                .trim_matches('"')
                .split(['.', '-'])
                .take(3)
                .filter_map(|p| p.parse().ok())
                .collect();
            if let [a, b, c] = parts[..] {
                out.push((a, b, c));
            }
        }
    }
    out
}

#[test]
fn no_jsonwebtoken_before_10_3_0() {
    let lock = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/Cargo.lock"))
        .expect("Cargo.lock is committed");
    let versions = versions_of(&lock, "jsonwebtoken");
    assert!(!versions.is_empty(), "jsonwebtoken not found in Cargo.lock");
    for v in versions {
        assert!(
            v >= (10, 3, 0),
            "jsonwebtoken {v:?} is affected by GHSA-h395-gr6q-cpjc"
        );
    }
}

#[test]
fn the_parser_sees_old_versions() {
    let lock = "[[package]]\nname = \"jsonwebtoken\"\nversion = \"9.3.1\"\n";
    assert_eq!(versions_of(lock, "jsonwebtoken"), vec![(9, 3, 1)]);
}
