//! The fast reader against the YAML reader: on every file it reads, the same result.

use super::super::users::{self, ParsedFile};
use crate::model::AttrName;

fn names() -> Vec<AttrName> {
    ["sex", "city", "tier"]
        .iter()
        .map(|n| AttrName::new(n).unwrap())
        .collect()
}

/// Reads `text` both ways; `Some` when the fast reader took it (and then both agree).
fn both(text: &str) -> Option<ParsedFile> {
    let names = names();
    let yaml = users::parse_yaml(text, Some(&names));
    let fast = super::read(text, &names, &mut crate::model::Interner::default())?;
    let parsed = users::parse(text, Some(&names));
    assert!(
        parsed == yaml,
        "the fast reader differs from the YAML reader on\n{text:?}\nfast: {parsed:?}\nyaml: {yaml:?}"
    );
    drop(fast);
    Some(parsed)
}

const VALUES: [&str; 12] = [
    "female", "male", "NewYork", "Paris", "gold", "free", "a.b", "x@y", "a/b-c", "_z", "12ab",
    "v1.2.3",
];

/// A file in the plain shape: every user in flow or block style, defaults first, last or
/// absent, comments and blank lines between.
fn plain_file(rng: &mut fastrand::Rng) -> String {
    let names = ["sex", "city", "tier"];
    let mut users = Vec::new();
    for _ in 0..rng.usize(1..12) {
        let id = match rng.u8(0..3) {
            0 => format!("user{:05}", rng.u32(0..50)),
            1 => format!("{}", rng.u32(1..999)),
            _ => format!("u_{}.{}", rng.u8(0..9), rng.u8(0..9)),
        };
        let mut pairs = Vec::new();
        for name in names {
            if rng.bool() {
                pairs.push(format!("{name}: {}", VALUES[rng.usize(0..VALUES.len())]));
            }
        }
        let entry = if pairs.is_empty() || rng.bool() {
            format!("  {id}: {{{}}}\n", pairs.join(", "))
        } else {
            let indent = " ".repeat(if rng.bool() { 4 } else { 6 });
            format!(
                "  {id}:\n{}",
                pairs
                    .iter()
                    .map(|p| format!("{indent}{p}\n"))
                    .collect::<String>()
            )
        };
        users.push(entry);
        if rng.u8(0..8) == 0 {
            users.push(if rng.bool() {
                "\n".into()
            } else {
                "    # a note\n".into()
            });
        }
    }
    let users = format!("users:\n{}", users.concat());
    let defaults = match rng.u8(0..3) {
        0 => String::new(),
        1 => format!(
            "defaults: {{tier: {}}}\n",
            VALUES[rng.usize(0..VALUES.len())]
        ),
        _ => "defaults:\n  tier: free\n  sex: male\n".to_owned(),
    };
    let header = if rng.bool() {
        "# users of team A\n\n"
    } else {
        ""
    };
    if rng.bool() {
        format!("{header}{defaults}{users}")
    } else {
        format!("{header}{users}{defaults}")
    }
}

#[test]
fn plain_files_are_read_fast_and_exactly_as_the_yaml_reader_reads_them() {
    let mut rng = fastrand::Rng::with_seed(7);
    for _ in 0..2_000 {
        let text = plain_file(&mut rng);
        assert!(both(&text).is_some(), "the fast reader gave up on\n{text}");
    }
}

#[test]
fn mutated_files_are_either_given_up_or_read_the_same() {
    // Characters that change what YAML makes of a file: quotes, comments, indicators, tabs,
    // line ends, other spaces, non-ASCII, and ones that make `NO`, `1.0`, `null`.
    const INSERTS: [&str; 30] = [
        "\"", "'", "#", " #", ":", ": ", ",", "{", "}", "[", "]", "&a ", "*a", "!!str ", "|", ">",
        "-", "- ", "?", "\t", "\r", "\n", " ", "  ", "é", "NO", "1.0", "~", "0x1", "\n---\n",
    ];
    let mut rng = fastrand::Rng::with_seed(11);
    let mut fast = 0;
    let trials = 6_000;
    for _ in 0..trials {
        let mut text = plain_file(&mut rng);
        for _ in 0..rng.usize(1..4) {
            match rng.u8(0..4) {
                0 => {
                    let at = boundary(&text, rng.usize(0..=text.len()));
                    text.insert_str(at, INSERTS[rng.usize(0..INSERTS.len())]);
                }
                1 if !text.is_empty() => {
                    let at = boundary(&text, rng.usize(0..text.len()));
                    text.remove(at);
                }
                2 => {
                    // Repeat a line: duplicate keys and ids, or a second `users:`.
                    let lines: Vec<&str> = text.lines().collect();
                    let line = lines[rng.usize(0..lines.len())].to_owned();
                    let at = rng.usize(0..=lines.len());
                    let mut lines: Vec<String> = lines.iter().map(|l| (*l).to_owned()).collect();
                    lines.insert(at, line);
                    text = lines.join("\n");
                }
                _ => {
                    // Another attribute name, another value.
                    text =
                        text.replacen("city", ["cty", "tier", "sex", "CITY"][rng.usize(0..4)], 1);
                    text = text.replacen(
                        "gold",
                        ["NO", "yes", "null", "0123", "x".repeat(60).as_str()][rng.usize(0..5)],
                        1,
                    );
                }
            }
        }
        if both(&text).is_some() {
            fast += 1;
        }
    }
    // Some mutations keep the plain shape (a removed letter, a repeated id): those are read.
    assert!(
        fast > trials / 20,
        "only {fast} of {trials} mutated files were read fast"
    );
}

/// The char boundary at or before `at`.
fn boundary(text: &str, mut at: usize) -> usize {
    while !text.is_char_boundary(at) {
        at -= 1;
    }
    at
}

#[test]
fn it_gives_up_on_what_the_yaml_reader_reports() {
    let names = names();
    for text in [
        "",
        "users:\n",
        "users: {}\n",
        "defaults:\n  tier: free\n",
        "users:\n  a: {city: NO}\n",
        "users:\n  a: {city: x, city: y}\n",
        "users:\n  a: {town: x}\n",
        "users:\n  yes: {city: x}\n",
        "users:\n  a: {city: \"x\"}\n",
        "users:\n  a: {city: x} # note\n",
        "users:\n  a:\n    city: x\n   sex: male\n",
        "users:\n  a:\n",
        "users:\n  a: {city: x}\nusers:\n  b: {city: y}\n",
        "---\nusers:\n  a: {city: x}\n",
        "users:\n\ta: {city: x}\n",
        "users:\n  a: {city: x}\r\n",
    ] {
        assert!(
            super::read(text, &names, &mut crate::model::Interner::default()).is_none(),
            "read fast: {text:?}"
        );
    }
}

#[test]
fn positions_are_those_of_the_ids() {
    let file = both("# team\nusers:\n  bob: {city: Paris}\n\n  amy:\n    city: Lima\n").unwrap();
    let at: Vec<(&str, u32, u32)> = file
        .users
        .iter()
        .map(|u| (u.id.as_str(), u.pos.line, u.pos.column))
        .collect();
    assert_eq!(at, [("amy", 5, 3), ("bob", 3, 3)]);
}

#[test]
fn a_hostile_line_of_repeated_pairs_is_given_up_at_the_first_repeat() {
    // 100,000 pairs on one line: looked through pair by pair, this would be 10^10 steps.
    let pairs = vec!["city: x"; 100_000].join(", ");
    let text = format!("users:\n  a: {{{pairs}}}\n");
    assert!(super::read(&text, &names(), &mut crate::model::Interner::default()).is_none());
}
