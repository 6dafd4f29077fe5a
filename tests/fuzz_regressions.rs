//! Every fuzz seed and every input a fuzz target once failed on (`fuzz/seeds/`,
//! `fuzz/regressions/`), run through its target as part of the test suite: a fixed crash stays
//! fixed without running the fuzzer.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod support;

use support::repo;

fn inputs(target: &str) -> Vec<(String, Vec<u8>)> {
    let mut out = Vec::new();
    for folder in ["fuzz/seeds", "fuzz/regressions"] {
        let dir = repo().join(folder).join(target);
        let Ok(entries) = std::fs::read_dir(&dir) else { continue };
        for entry in entries {
            let path = entry.unwrap().path();
            out.push((path.display().to_string(), std::fs::read(&path).unwrap()));
        }
    }
    out
}

/// A fuzz target's entry point.
type Target = fn(&[u8]);

#[test]
fn every_seed_and_past_failure_runs_through_its_target() {
    let targets: [(&str, Target); 4] = [
        ("client_request", weft::fuzz::client_request),
        ("dependencies", weft::fuzz::dependencies),
        ("peer_frame", weft::fuzz::peer_frame),
        ("manifest", weft::fuzz::manifest),
    ];
    let mut ran = 0;
    for (target, run) in targets {
        for (path, bytes) in inputs(target) {
            println!("{target}: {path}");
            run(&bytes);
            ran += 1;
        }
    }
    assert!(ran >= 4, "the seeds are in place: {ran} inputs");
}

#[test]
fn the_peer_frame_seeds_are_real_frames() {
    for (path, bytes) in inputs("peer_frame") {
        assert!(weft::fabric::wire::decode(&bytes).is_ok(), "{path} does not decode");
    }
}
