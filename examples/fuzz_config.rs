//! Fuzzes the config loader: mutates the seed files of `tests/fuzz-corpus/` (bit flips, cut
//! and repeated runs, YAML punctuation and tokens spliced in, files glued together) and loads
//! each result as `attrsync.yaml` or as a user file, for a given time. Any panic, and any
//! input that takes more than a second, is saved to `tests/fuzz-corpus/found-*.yaml`, where the
//! regression test in `tests/it/cli_validate.rs` loads it from then on.
//!
//!   cargo run --release --example fuzz_config -- --minutes 30 [--seed N]

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

const TOKENS: &[&str] = &[
    ":",
    "- ",
    "? ",
    "{",
    "}",
    "[",
    "]",
    ",",
    "&a ",
    "*a",
    "!!str ",
    "!tag ",
    "|-\n  ",
    ">\n  ",
    "\"",
    "'",
    "#",
    "\n",
    "\n  ",
    "\t",
    "---\n",
    "...\n",
    "~",
    "null",
    "yes",
    "NO",
    "0x1F",
    "1e9",
    ".inf",
    "users:",
    "defaults:",
    "sex:",
    "\u{feff}",
    "\u{85}",
    "\\u0000",
    "%YAML 1.2\n",
];

fn main() {
    let mut minutes: f64 = 1.0;
    let mut seed: u64 = 1;
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "--minutes" => {
                minutes = args
                    .next()
                    .and_then(|v| v.parse().ok())
                    .expect("--minutes M")
            }
            "--seed" => seed = args.next().and_then(|v| v.parse().ok()).expect("--seed N"),
            other => panic!("unknown argument {other}"),
        }
    }
    let corpus = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fuzz-corpus");
    let seeds: Vec<Vec<u8>> = std::fs::read_dir(&corpus)
        .expect("tests/fuzz-corpus exists")
        .filter_map(|e| std::fs::read(e.ok()?.path()).ok())
        .collect();
    let mut rng = fastrand::Rng::with_seed(seed);
    let work = std::env::temp_dir().join(format!("attrsync-fuzz-{}", std::process::id()));
    let users = work.join("users");
    std::fs::create_dir_all(&users).unwrap();
    let settings = std::fs::read(corpus.join("settings-full.yaml")).unwrap();
    // Panics are findings, not noise on the terminal.
    std::panic::set_hook(Box::new(|_| {}));
    let deadline = Instant::now() + Duration::from_secs_f64(minutes * 60.0);
    let (mut runs, mut found, mut slowest) = (0u64, 0u32, Duration::ZERO);
    while Instant::now() < deadline {
        let input = mutate(&mut rng, &seeds);
        let as_settings = rng.bool();
        if as_settings {
            std::fs::write(work.join("attrsync.yaml"), &input).unwrap();
            let _ = std::fs::remove_file(users.join("a.yaml"));
        } else {
            std::fs::write(work.join("attrsync.yaml"), &settings).unwrap();
            std::fs::write(users.join("a.yaml"), &input).unwrap();
        }
        let started = Instant::now();
        let outcome = std::panic::catch_unwind(|| {
            let _ = attrsync::config::load(&work, None, &mut Default::default());
        });
        let took = started.elapsed();
        slowest = slowest.max(took);
        runs += 1;
        if outcome.is_err() || took > Duration::from_secs(1) {
            found += 1;
            let name = format!(
                "found-{}-{seed}-{runs}.yaml",
                if outcome.is_err() { "panic" } else { "slow" }
            );
            save(&corpus.join(&name), &input);
            eprintln!(
                "{name}: {} ({took:?})",
                if outcome.is_err() { "panic" } else { "slow" }
            );
        }
        if runs % 10_000 == 0 {
            eprintln!("{runs} inputs, {found} found, slowest {slowest:?}");
        }
    }
    let _ = std::fs::remove_dir_all(&work);
    println!(
        "fuzz_config: {runs} inputs in {minutes} min (seed {seed}): {found} found, slowest {slowest:?}"
    );
}

fn save(path: &PathBuf, input: &[u8]) {
    std::fs::write(path, input).unwrap();
}

/// One mutated input from the seeds.
fn mutate(rng: &mut fastrand::Rng, seeds: &[Vec<u8>]) -> Vec<u8> {
    let mut input = seeds[rng.usize(..seeds.len())].clone();
    for _ in 0..rng.usize(1..8) {
        let at = rng.usize(..=input.len());
        match rng.u8(..6) {
            0 if !input.is_empty() => {
                let i = rng.usize(..input.len());
                input[i] ^= 1 << rng.u8(..8);
            }
            1 => input
                .splice(at..at, TOKENS[rng.usize(..TOKENS.len())].bytes())
                .for_each(drop),
            2 if !input.is_empty() => {
                let end = (at + rng.usize(..64)).min(input.len());
                input.drain(at.min(end)..end);
            }
            3 if !input.is_empty() => {
                let start = rng.usize(..input.len());
                let end = (start + rng.usize(1..256)).min(input.len());
                let run = input[start..end].repeat(rng.usize(1..50));
                input.splice(at..at, run).for_each(drop);
            }
            4 => {
                let other = &seeds[rng.usize(..seeds.len())];
                input.extend_from_slice(other);
            }
            _ => input.insert(at, rng.u8(..)),
        }
    }
    input
}
