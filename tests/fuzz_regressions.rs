//! The fuzz targets' properties in plain `cargo test`: every committed seed
//! (`fuzz/corpus/<target>/`) and every input a fuzzer ever crashed on
//! (`tests/fuzz_regressions/<target>/`, where `.ci/fuzz.sh` copies new crashes) goes
//! through the same entry points and assertions as the libFuzzer binaries, which share
//! this code (`fuzz/src/lib.rs`).

// Tests: a failed assumption is a failed test, and shared helpers are `pub`.
#![allow(clippy::unwrap_used, clippy::expect_used, unreachable_pub)]

#[path = "../fuzz/src/lib.rs"]
#[allow(dead_code)]
mod targets;

use std::path::{Path, PathBuf};

fn inputs(dir: &Path) -> Vec<PathBuf> {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return Vec::new();
    };
    let mut files: Vec<PathBuf> = entries
        .filter_map(Result::ok)
        .map(|e| e.path())
        .filter(|p| p.is_file())
        .collect();
    files.sort();
    files
}

fn replay(root: &str, at_least: usize) {
    let base = Path::new(env!("CARGO_MANIFEST_DIR")).join(root);
    let mut total = 0;
    for (name, target) in targets::TARGETS {
        for file in inputs(&base.join(name)) {
            let data = std::fs::read(&file).expect("readable input");
            let outcome = std::panic::catch_unwind(|| target(&data));
            assert!(
                outcome.is_ok(),
                "{name}: {} violates a property (see the panic above)",
                file.display()
            );
            total += 1;
        }
    }
    assert!(total >= at_least, "{total} inputs under {root}");
}

#[test]
fn committed_seed_corpora_satisfy_every_property() {
    replay("fuzz/corpus", 50);
}

#[test]
fn inputs_fuzzers_crashed_on_stay_fixed() {
    replay("tests/fuzz_regressions", 0);
}

#[test]
fn every_target_has_seeds() {
    let base = Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz/corpus");
    for (name, _) in targets::TARGETS {
        assert!(
            inputs(&base.join(name)).len() >= 5,
            "fuzz/corpus/{name} has too few seeds"
        );
    }
}
