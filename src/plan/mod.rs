//! The planner: `plan(&Desired, &Snapshot) -> Plan`, the deletion guards and the renderings.
//!
//! Everything here is a pure function of its arguments; `grep "use crate::" src/plan` shows
//! only `model`.

mod json;
mod markdown;
mod text;

pub use json::{from_json, to_json, to_json_with_drift, PlanFileError};
pub use markdown::{render_drift_markdown, render_markdown, MARKDOWN_LIMIT};
pub(crate) use text::plural;
pub use text::{render_drift_text, render_text, TextStyle};

use sha2::{Digest, Sha256};

use crate::model::{
    Action, AttrChange, Attrs, Change, Desired, Drift, Plan, Snapshot, SnapshotEntry, Summary,
    UserMap,
};

/// Choices that shape a plan beyond desired state and snapshot.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PlanOptions {
    /// The app the plan is for (recorded in the plan).
    pub sdkappid: u64,
    /// Delete users that left the config instead of reporting them as orphaned.
    pub prune: bool,
}

/// Computes the changes that take the snapshot to the desired state.
///
/// Both inputs are sorted by user id, so this is one merge pass. Changes come out with deletes
/// and orphans first, then everything else, each group by user id.
pub fn plan(desired: &Desired, snapshot: &Snapshot, options: PlanOptions) -> Plan {
    let mut summary = Summary::default();
    let mut removals = Vec::new();
    let mut others = Vec::new();
    let mut wanted = desired.iter().peekable();
    let mut known = snapshot.users.iter().peekable();
    loop {
        let order = match (wanted.peek(), known.peek()) {
            (None, None) => break,
            (Some(_), None) => std::cmp::Ordering::Less,
            (None, Some(_)) => std::cmp::Ordering::Greater,
            (Some((d, _)), Some((s, _))) => d.cmp(s),
        };
        match order {
            std::cmp::Ordering::Less => {
                let (user, attrs) = wanted.next().expect("peeked");
                let attrs = diff_attrs(&Attrs::default(), attrs);
                if attrs.is_empty() {
                    // A user declared with no attributes and unknown to the snapshot: nothing
                    // to send and nothing to record.
                    summary.unchanged += 1;
                } else {
                    summary.create += 1;
                    others.push(Change {
                        user: user.clone(),
                        action: Action::Create,
                        attrs,
                    });
                }
            }
            std::cmp::Ordering::Equal => {
                let (user, attrs) = wanted.next().expect("peeked");
                let (_, entry) = known.next().expect("peeked");
                let attrs = diff_attrs(&entry.attrs, attrs);
                if attrs.is_empty() {
                    summary.unchanged += 1;
                } else {
                    summary.update += 1;
                    others.push(Change {
                        user: user.clone(),
                        action: Action::Update,
                        attrs,
                    });
                }
            }
            std::cmp::Ordering::Greater => {
                let (user, entry) = known.next().expect("peeked");
                let (action, attrs) = if options.prune {
                    summary.delete += 1;
                    (Action::Delete, diff_attrs(&entry.attrs, &Attrs::default()))
                } else {
                    summary.orphaned += 1;
                    let kept = entry
                        .attrs
                        .iter()
                        .map(|(name, value)| AttrChange {
                            name: name.clone(),
                            before: Some(value.clone()),
                            after: Some(value.clone()),
                        })
                        .collect();
                    (Action::Orphaned, kept)
                };
                removals.push(Change {
                    user: user.clone(),
                    action,
                    attrs,
                });
            }
        }
    }
    removals.append(&mut others);
    Plan {
        sdkappid: options.sdkappid,
        snapshot_serial: snapshot.serial,
        desired_digest: desired_digest(desired),
        summary,
        changes: removals,
    }
}

/// The users whose `live` attributes differ from the snapshot's, in user-id order.
pub fn drift(snapshot: &Snapshot, live: &UserMap<Attrs>) -> Vec<Drift> {
    let empty = Attrs::default();
    live.iter()
        .filter_map(|(user, now)| {
            let recorded = snapshot
                .users
                .get(user.as_str())
                .map_or(&empty, |e| &e.attrs);
            let attrs = diff_attrs(recorded, now);
            (!attrs.is_empty()).then(|| Drift {
                user: user.clone(),
                attrs,
            })
        })
        .collect()
}

/// A snapshot holding the `live` attributes, to plan against what the server has now.
///
/// It keeps the recorded serial, so a plan saved from it still goes stale when the real
/// snapshot moves.
pub fn live_snapshot(snapshot: &Snapshot, live: &UserMap<Attrs>) -> Snapshot {
    let users = live
        .iter()
        .filter(|(_, attrs)| !attrs.is_empty())
        .map(|(user, attrs)| {
            let applied_at = snapshot
                .users
                .get(user.as_str())
                .map_or(0, |e| e.applied_at);
            (
                user.clone(),
                SnapshotEntry {
                    attrs: attrs.clone(),
                    applied_at,
                },
            )
        })
        .collect();
    Snapshot {
        users: UserMap::from_sorted(users).expect("live is sorted by user"),
        serial: snapshot.serial,
    }
}

/// The attributes that differ between `before` and `after`, sorted by name.
fn diff_attrs(before: &Attrs, after: &Attrs) -> Vec<AttrChange> {
    let mut changes = Vec::new();
    let mut old = before.iter().peekable();
    let mut new = after.iter().peekable();
    loop {
        let change = match (old.peek(), new.peek()) {
            (None, None) => break,
            (Some((o, _)), Some((n, _))) if o == n => {
                let (name, before) = old.next().expect("peeked");
                let (_, after) = new.next().expect("peeked");
                if before == after {
                    continue;
                }
                AttrChange {
                    name: name.clone(),
                    before: Some(before.clone()),
                    after: Some(after.clone()),
                }
            }
            (Some((o, _)), Some((n, _))) if o > n => added(new.next().expect("peeked")),
            (None, Some(_)) => added(new.next().expect("peeked")),
            _ => {
                let (name, before) = old.next().expect("peeked");
                AttrChange {
                    name: name.clone(),
                    before: Some(before.clone()),
                    after: None,
                }
            }
        };
        changes.push(change);
    }
    changes
}

fn added((name, value): (&crate::model::AttrName, &crate::model::AttrValue)) -> AttrChange {
    AttrChange {
        name: name.clone(),
        before: None,
        after: Some(value.clone()),
    }
}

/// `sha256:<hex>` over a canonical encoding of the desired state.
///
/// Re-ordering or re-formatting YAML never changes it: users and attributes are hashed in
/// sorted order, each string length-prefixed so that no two states share an encoding.
pub fn desired_digest(desired: &Desired) -> String {
    let mut hasher = Sha256::new();
    let mut put = |s: &str| {
        hasher.update((s.len() as u64).to_le_bytes());
        hasher.update(s.as_bytes());
    };
    for (user, attrs) in desired.iter() {
        put(user.as_str());
        put(&attrs.len().to_string());
        for (name, value) in attrs.iter() {
            put(name.as_str());
            put(value.as_str());
        }
    }
    let digest = hasher.finalize();
    let mut hex = String::with_capacity(7 + 64);
    hex.push_str("sha256:");
    for byte in digest {
        hex.push_str(&format!("{byte:02x}"));
    }
    hex
}

/// The deletion guards, checked before anything is applied.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Guards {
    /// Most users a plan may delete without `allow_mass_delete`.
    pub max_deletes: usize,
    /// `--allow-mass-delete` was given.
    pub allow_mass_delete: bool,
    /// `--allow-empty` was given.
    pub allow_empty: bool,
}

/// A guard that refuses a plan.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum GuardError {
    /// The plan deletes more users than `max_deletes`.
    #[error(
        "the plan deletes {deletes} users, more than max_deletes ({max_deletes}): check that no \
         user file was deleted or emptied by mistake, then re-run with --allow-mass-delete or \
         raise max_deletes in attrsync.yaml"
    )]
    MassDelete {
        /// Users the plan deletes.
        deletes: usize,
        /// The configured limit.
        max_deletes: usize,
    },
    /// The config declares no user while the snapshot holds some.
    #[error(
        "the config declares no users but the snapshot holds {snapshot_users}: check users_dir \
         and that the user files are where attrsync.yaml says; re-run with --allow-empty if \
         the config is meant to be empty"
    )]
    EmptyDesired {
        /// Users in the snapshot.
        snapshot_users: usize,
    },
}

/// Checks the empty-desired-state guard (part of validation: it refuses even a plan).
pub fn check_empty_desired(
    desired: &Desired,
    snapshot: &Snapshot,
    guards: Guards,
) -> Result<(), GuardError> {
    if desired.is_empty() && !snapshot.users.is_empty() && !guards.allow_empty {
        return Err(GuardError::EmptyDesired {
            snapshot_users: snapshot.users.len(),
        });
    }
    Ok(())
}

/// Checks the mass-delete guard (it refuses applying a plan, not showing it).
pub fn check_mass_delete(plan: &Plan, guards: Guards) -> Result<(), GuardError> {
    if plan.summary.delete > guards.max_deletes && !guards.allow_mass_delete {
        return Err(GuardError::MassDelete {
            deletes: plan.summary.delete,
            max_deletes: guards.max_deletes,
        });
    }
    Ok(())
}

/// The summary line: `Plan: N to create, N to update, N to delete.` or `No changes.`
pub fn summary_line(summary: &Summary) -> String {
    if summary.has_writes() {
        format!(
            "Plan: {} to create, {} to update, {} to delete.",
            summary.create, summary.update, summary.delete
        )
    } else {
        "No changes.".to_owned()
    }
}

#[cfg(test)]
pub(crate) mod testing {
    //! Builders that let planner tests read like the domain.
    use crate::model::*;

    /// `attrs(&[("city", "Paris")])`.
    pub fn attrs(pairs: &[(&str, &str)]) -> Attrs {
        Attrs::parse(pairs).unwrap()
    }

    /// `desired(&[("Mary", &[("city", "Paris")])])`.
    pub fn desired(users: &[(&str, &[(&str, &str)])]) -> Desired {
        UserMap::from_unsorted(
            users
                .iter()
                .map(|(u, a)| (UserId::new(u).unwrap(), attrs(a)))
                .collect(),
        )
        .unwrap()
    }

    /// A snapshot at `serial` holding `users`.
    pub fn snapshot(serial: u64, users: &[(&str, &[(&str, &str)])]) -> Snapshot {
        let users = UserMap::from_unsorted(
            users
                .iter()
                .map(|(u, a)| {
                    (
                        UserId::new(u).unwrap(),
                        SnapshotEntry {
                            attrs: attrs(a),
                            applied_at: 1_700_000_000,
                        },
                    )
                })
                .collect(),
        )
        .unwrap();
        Snapshot { users, serial }
    }

    /// `count` users named `{prefix}{i:05}`, each with the attribute `name: value`.
    pub fn numbered(prefix: &str, count: usize, name: &str, value: &str) -> Desired {
        let users = (0..count)
            .map(|i| {
                (
                    UserId::new(&format!("{prefix}{i:05}")).unwrap(),
                    attrs(&[(name, value)]),
                )
            })
            .collect();
        UserMap::from_unsorted(users).unwrap()
    }

    /// A snapshot at `serial` holding `users` as if applied.
    pub fn snapshot_of(serial: u64, users: &Desired) -> Snapshot {
        let entries = users
            .iter()
            .map(|(u, a)| {
                (
                    u.clone(),
                    SnapshotEntry {
                        attrs: a.clone(),
                        applied_at: 1_700_000_000,
                    },
                )
            })
            .collect();
        Snapshot {
            users: UserMap::from_sorted(entries).unwrap(),
            serial,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::testing::*;
    use super::*;
    use crate::model::{AttrValue, UserMap};

    fn opts(prune: bool) -> PlanOptions {
        PlanOptions {
            sdkappid: 1_400_000_000,
            prune,
        }
    }

    fn brief(plan: &Plan) -> Vec<String> {
        plan.changes
            .iter()
            .map(|c| {
                let attrs: Vec<String> = c
                    .attrs
                    .iter()
                    .map(|a| {
                        format!(
                            "{}:{}>{}",
                            a.name,
                            a.before.as_ref().map_or("_", AttrValue::as_str),
                            a.after.as_ref().map_or("_", AttrValue::as_str)
                        )
                    })
                    .collect();
                format!("{} {} {}", c.action.as_str(), c.user, attrs.join(","))
            })
            .collect()
    }

    #[test]
    fn empty_inputs_plan_nothing() {
        let plan = plan(&Desired::default(), &Snapshot::default(), opts(false));
        assert!(plan.changes.is_empty());
        assert_eq!(plan.summary, Summary::default());
        assert_eq!(summary_line(&plan.summary), "No changes.");
    }

    #[test]
    fn new_user_is_created_with_all_attributes() {
        let plan = plan(
            &desired(&[("Mary", &[("sex", "female"), ("city", "NewYork")])]),
            &Snapshot::default(),
            opts(false),
        );
        assert_eq!(brief(&plan), ["create Mary city:_>NewYork,sex:_>female"]);
        assert_eq!(plan.summary.create, 1);
        assert_eq!(
            summary_line(&plan.summary),
            "Plan: 1 to create, 0 to update, 0 to delete."
        );
    }

    #[test]
    fn changed_added_and_removed_attributes_make_one_update() {
        let plan = plan(
            &desired(&[("Mary", &[("city", "Boston"), ("sex", "female")])]),
            &snapshot(3, &[("Mary", &[("city", "NewYork"), ("tier", "gold")])]),
            opts(false),
        );
        assert_eq!(
            brief(&plan),
            ["update Mary city:NewYork>Boston,sex:_>female,tier:gold>_"]
        );
        let change = &plan.changes[0];
        let set: Vec<_> = change.to_set().map(|(n, v)| format!("{n}={v}")).collect();
        assert_eq!(set, ["city=Boston", "sex=female"]);
        assert_eq!(
            change.to_remove().map(|n| n.as_str()).collect::<Vec<_>>(),
            ["tier"]
        );
        assert_eq!(plan.snapshot_serial, 3);
    }

    #[test]
    fn equal_users_are_unchanged() {
        let plan = plan(
            &desired(&[("Mary", &[("city", "Boston")])]),
            &snapshot(1, &[("Mary", &[("city", "Boston")])]),
            opts(true),
        );
        assert!(plan.changes.is_empty());
        assert_eq!(plan.summary.unchanged, 1);
    }

    #[test]
    fn removed_user_is_orphaned_without_prune() {
        let plan = plan(
            &Desired::default(),
            &snapshot(1, &[("ghost", &[("city", "Rome")])]),
            opts(false),
        );
        assert_eq!(brief(&plan), ["orphaned ghost city:Rome>Rome"]);
        assert_eq!(plan.summary.orphaned, 1);
        assert!(!plan.summary.has_writes());
        assert!(plan.changes[0].to_remove().next().is_none());
    }

    #[test]
    fn removed_user_is_deleted_with_prune() {
        let plan = plan(
            &Desired::default(),
            &snapshot(1, &[("ghost", &[("city", "Rome"), ("sex", "m")])]),
            opts(true),
        );
        assert_eq!(brief(&plan), ["delete ghost city:Rome>_,sex:m>_"]);
        assert_eq!(plan.changes[0].to_remove().count(), 2);
    }

    #[test]
    fn deletes_come_first_then_user_id_order() {
        let plan = plan(
            &desired(&[
                ("b", &[("x", "1")]),
                ("d", &[("x", "2")]),
                ("a", &[("x", "3")]),
            ]),
            &snapshot(
                1,
                &[
                    ("c", &[("x", "1")]),
                    ("d", &[("x", "1")]),
                    ("e", &[("x", "1")]),
                ],
            ),
            opts(true),
        );
        let order: Vec<_> = plan
            .changes
            .iter()
            .map(|c| format!("{}:{}", c.action.as_str(), c.user))
            .collect();
        assert_eq!(
            order,
            ["delete:c", "delete:e", "create:a", "create:b", "update:d"]
        );
    }

    #[test]
    fn user_without_attributes_is_not_a_change() {
        let plan = plan(
            &desired(&[("quiet", &[])]),
            &Snapshot::default(),
            opts(false),
        );
        assert!(plan.changes.is_empty());
        assert_eq!(plan.summary.unchanged, 1);
    }

    #[test]
    fn digest_ignores_declaration_order() {
        let a = desired(&[
            ("Mary", &[("sex", "f"), ("city", "X")]),
            ("Bob", &[("city", "Y")]),
        ]);
        let b = desired(&[
            ("Bob", &[("city", "Y")]),
            ("Mary", &[("city", "X"), ("sex", "f")]),
        ]);
        assert_eq!(desired_digest(&a), desired_digest(&b));
        let c = desired(&[
            ("Bob", &[("city", "Y")]),
            ("Mary", &[("city", "X"), ("sex", "m")]),
        ]);
        assert_ne!(desired_digest(&a), desired_digest(&c));
        assert!(desired_digest(&a).starts_with("sha256:"));
        assert_eq!(desired_digest(&a).len(), 7 + 64);
    }

    #[test]
    fn drift_lists_users_changed_outside_attrsync() {
        let snap = snapshot(
            4,
            &[
                ("Mary", &[("city", "NewYork")]),
                ("Bob", &[("city", "Oslo")]),
            ],
        );
        let live = desired(&[
            ("Mary", &[("city", "Paris")]),
            ("Bob", &[("city", "Oslo")]),
            ("new", &[("sex", "f")]),
        ]);
        let found: Vec<String> = drift(&snap, &live)
            .iter()
            .map(|d| {
                format!(
                    "{}:{}",
                    d.user,
                    d.attrs
                        .iter()
                        .map(|a| format!("{}={:?}>{:?}", a.name, a.before, a.after))
                        .collect::<Vec<_>>()
                        .join(",")
                )
            })
            .collect();
        assert_eq!(
            found,
            [
                r#"Mary:city=Some("NewYork")>Some("Paris")"#,
                r#"new:sex=None>Some("f")"#
            ]
        );
        let based = live_snapshot(&snap, &live);
        assert_eq!(based.serial, 4);
        assert_eq!(
            based.users.get("Mary").unwrap().attrs,
            attrs(&[("city", "Paris")])
        );
        // Planning against live values: Mary goes back to what the config says.
        let p = plan(
            &desired(&[("Mary", &[("city", "NewYork")])]),
            &based,
            PlanOptions::default(),
        );
        assert_eq!(
            brief(&p),
            [
                "orphaned Bob city:Oslo>Oslo",
                "orphaned new sex:f>f",
                "update Mary city:Paris>NewYork"
            ]
        );
    }

    #[test]
    fn empty_desired_guard() {
        let guards = Guards {
            max_deletes: 100,
            allow_mass_delete: false,
            allow_empty: false,
        };
        let snap = snapshot(1, &[("a", &[("x", "1")])]);
        assert_eq!(
            check_empty_desired(&Desired::default(), &snap, guards),
            Err(GuardError::EmptyDesired { snapshot_users: 1 })
        );
        assert!(check_empty_desired(
            &Desired::default(),
            &snap,
            Guards {
                allow_empty: true,
                ..guards
            }
        )
        .is_ok());
        assert!(check_empty_desired(&Desired::default(), &Snapshot::default(), guards).is_ok());
    }

    #[test]
    fn mass_delete_guard() {
        let plan = plan(
            &UserMap::default(),
            &snapshot_of(1, &numbered("u", 5, "x", "1")),
            opts(true),
        );
        let guards = Guards {
            max_deletes: 4,
            allow_mass_delete: false,
            allow_empty: true,
        };
        assert_eq!(
            check_mass_delete(&plan, guards),
            Err(GuardError::MassDelete {
                deletes: 5,
                max_deletes: 4
            })
        );
        assert!(check_mass_delete(
            &plan,
            Guards {
                max_deletes: 5,
                ..guards
            }
        )
        .is_ok());
        assert!(check_mass_delete(
            &plan,
            Guards {
                allow_mass_delete: true,
                ..guards
            }
        )
        .is_ok());
    }
}
