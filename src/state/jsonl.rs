//! `state export` and `state import`: the snapshot as JSON Lines, and reading it back with the
//! same validation as the YAML loader.

use std::collections::{BTreeMap, HashMap};

use serde::{Deserialize, Serialize};

use crate::model::{AttrName, AttrValue, Attrs, DoubtNote, InDoubt, Snapshot, UserId, UserMap};

/// One line of `state export` / `state import`.
#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct Line {
    user: String,
    attrs: BTreeMap<String, serde_json::Value>,
    /// Present for a user in doubt.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    in_doubt: Option<DoubtLine>,
}

/// Why a user is in doubt, in an export line.
#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct DoubtLine {
    /// The attributes the server may hold instead of `attrs`.
    maybe: BTreeMap<String, serde_json::Value>,
    since: u64,
    reason: String,
}

fn attrs_json(attrs: &Attrs) -> BTreeMap<String, serde_json::Value> {
    attrs
        .iter()
        .map(|(n, v)| (n.as_str().to_owned(), v.as_str().into()))
        .collect()
}

/// Writes the snapshot as JSON Lines, one `{"user": …, "attrs": {…}}` per user, sorted by user.
/// A user in doubt also has `"in_doubt": {"maybe": {…}, "since": …, "reason": …}` (and
/// `"attrs": {}` when the snapshot holds nothing for it).
pub fn export(snapshot: &Snapshot, out: &mut impl std::io::Write) -> std::io::Result<()> {
    let empty = Attrs::default();
    let mut users = snapshot.users.iter().peekable();
    let mut doubts = snapshot.in_doubt.iter().peekable();
    loop {
        let user = match (users.peek(), doubts.peek()) {
            (None, None) => break,
            (Some((u, _)), None) | (None, Some((u, _))) => *u,
            (Some((u, _)), Some((d, _))) => (*u).min(*d),
        };
        let entry = users.next_if(|(u, _)| *u == user).map(|(_, e)| e);
        let doubt = doubts.next_if(|(d, _)| *d == user).map(|(_, d)| d);
        let line = Line {
            user: user.as_str().to_owned(),
            attrs: attrs_json(entry.map_or(&empty, |e| &e.attrs)),
            in_doubt: doubt.map(|d| DoubtLine {
                maybe: attrs_json(&d.maybe),
                since: d.note.since,
                reason: d.note.reason.clone(),
            }),
        };
        serde_json::to_writer(&mut *out, &line)?;
        out.write_all(b"\n")?;
    }
    Ok(())
}

/// A problem on one line of an import file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ImportProblem {
    /// 1-based line number.
    pub line: usize,
    /// What is wrong.
    pub message: String,
}

/// What an import file holds: recorded users, and users in doubt.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Imported {
    /// Users and their recorded attributes.
    pub users: UserMap<Attrs>,
    /// Users in doubt.
    pub in_doubt: UserMap<InDoubt>,
}

/// Reads JSON Lines written by [`export`], validating ids, names (against `attributes`) and
/// values like the YAML loader does. Returns every problem, not just the first.
pub fn parse_import(text: &str, attributes: &[AttrName]) -> Result<Imported, Vec<ImportProblem>> {
    let mut problems = Vec::new();
    let mut entries = Vec::new();
    let mut doubts = Vec::new();
    let mut lines_of: HashMap<UserId, usize> = HashMap::new();
    for (index, raw) in text.lines().enumerate() {
        let line = index + 1;
        if raw.trim().is_empty() {
            continue;
        }
        let mut problem = |message: String| problems.push(ImportProblem { line, message });
        let parsed: Line = match serde_json::from_str(raw) {
            Ok(parsed) => parsed,
            Err(err) => {
                problem(format!(
                    "not a {{\"user\": …, \"attrs\": {{…}}}} object: {err}"
                ));
                continue;
            }
        };
        let user = match UserId::new(&parsed.user) {
            Ok(user) => user,
            Err(err) => {
                problem(format!("user {:?}: {err}", parsed.user));
                continue;
            }
        };
        if let Some(first) = lines_of.get(&user) {
            problem(format!("user {user} appears twice (first on line {first})"));
            continue;
        }
        lines_of.insert(user.clone(), line);
        let mut attrs = |json: &BTreeMap<String, serde_json::Value>| {
            let mut pairs = Vec::new();
            for (name, value) in json {
                let Some(known) = attributes.iter().find(|a| a.as_str() == name) else {
                    problem(format!(
                        "user {user}: unknown attribute {name:?}; attrsync.yaml lists {}",
                        attributes
                            .iter()
                            .map(AttrName::as_str)
                            .collect::<Vec<_>>()
                            .join(", ")
                    ));
                    continue;
                };
                let Some(text) = value.as_str() else {
                    problem(format!(
                        "user {user}: attribute {name} must be a string, found {value}"
                    ));
                    continue;
                };
                match AttrValue::new(text) {
                    Ok(v) => pairs.push((known.clone(), v)),
                    Err(err) => problem(format!("user {user}: attribute {name}: {err}")),
                }
            }
            Attrs::from_pairs(pairs)
        };
        let recorded = attrs(&parsed.attrs);
        if let Some(doubt) = &parsed.in_doubt {
            let maybe = attrs(&doubt.maybe);
            doubts.push((
                user.clone(),
                InDoubt {
                    maybe,
                    note: DoubtNote {
                        since: doubt.since,
                        reason: doubt.reason.clone(),
                    },
                },
            ));
        }
        entries.push((user, recorded));
    }
    if !problems.is_empty() {
        return Err(problems);
    }
    Ok(Imported {
        users: UserMap::from_unsorted(entries).expect("duplicates were rejected above"),
        in_doubt: UserMap::from_unsorted(doubts).expect("duplicates were rejected above"),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::SnapshotEntry;

    fn attrs(pairs: &[(&str, &str)]) -> Attrs {
        Attrs::parse(pairs).unwrap()
    }

    fn id(s: &str) -> UserId {
        UserId::new(s).unwrap()
    }

    #[test]
    fn export_then_import_round_trips() {
        let names = vec![
            AttrName::new("city").unwrap(),
            AttrName::new("sex").unwrap(),
        ];
        let users = UserMap::from_unsorted(vec![
            (id("b"), attrs(&[("city", "Oslo")])),
            (id("a"), attrs(&[("sex", "f"), ("city", "Rome")])),
        ])
        .unwrap();
        let snapshot = Snapshot {
            users: UserMap::from_sorted(
                users
                    .iter()
                    .map(|(u, a)| {
                        (
                            u.clone(),
                            SnapshotEntry {
                                attrs: a.clone(),
                                applied_at: 1,
                            },
                        )
                    })
                    .collect(),
            )
            .unwrap(),
            in_doubt: UserMap::default(),
            serial: 3,
        };
        let mut out = Vec::new();
        export(&snapshot, &mut out).unwrap();
        let text = String::from_utf8(out).unwrap();
        assert_eq!(text, "{\"user\":\"a\",\"attrs\":{\"city\":\"Rome\",\"sex\":\"f\"}}\n{\"user\":\"b\",\"attrs\":{\"city\":\"Oslo\"}}\n");
        assert_eq!(parse_import(&text, &names).unwrap().users, users);
    }

    #[test]
    fn export_shows_users_in_doubt_and_import_keeps_them() {
        let names = vec![AttrName::new("city").unwrap()];
        let snapshot = Snapshot {
            users: UserMap::default(),
            in_doubt: UserMap::from_unsorted(vec![(
                id("a"),
                InDoubt {
                    maybe: attrs(&[("city", "Rome")]),
                    note: DoubtNote {
                        since: 5,
                        reason: "no answer".into(),
                    },
                },
            )])
            .unwrap(),
            serial: 1,
        };
        let mut out = Vec::new();
        export(&snapshot, &mut out).unwrap();
        let text = String::from_utf8(out).unwrap();
        assert_eq!(
            text,
            "{\"user\":\"a\",\"attrs\":{},\"in_doubt\":{\"maybe\":{\"city\":\"Rome\"},\"since\":5,\"reason\":\"no answer\"}}\n"
        );
        let imported = parse_import(&text, &names).unwrap();
        assert_eq!(imported.in_doubt, snapshot.in_doubt);
    }

    #[test]
    fn import_reports_every_bad_line() {
        let names = vec![AttrName::new("city").unwrap()];
        let text = "{\"user\":\"a\",\"attrs\":{\"city\":\"Rome\"}}\nnot json\n{\"user\":\"a\",\"attrs\":{}}\n{\"user\":\"c\",\"attrs\":{\"tier\":\"x\",\"city\":1}}\n";
        let problems = parse_import(text, &names).unwrap_err();
        let lines: Vec<usize> = problems.iter().map(|p| p.line).collect();
        assert_eq!(lines, [2, 3, 4, 4]);
        assert!(problems[1]
            .message
            .contains("appears twice (first on line 1)"));
    }
}
