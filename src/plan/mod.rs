//! The planner: `plan(&Desired, &Snapshot) -> Plan`, the deletion guards and the renderings.
//!
//! Everything here is a pure function of its arguments; `grep "use crate::" src/plan` shows
//! only `model`.

mod json;
mod markdown;
mod text;

pub use crate::text::plural;
pub use json::{from_json, to_json, to_json_with_drift, write_json, PlanFileError};
pub use markdown::{render_markdown, MARKDOWN_LIMIT};
pub use text::{render_drift_text, render_text, write_text, TextStyle};

use sha2::{Digest, Sha256};

pub use crate::model::DoubtNote;
use crate::model::{
    Action, AttrChange, AttrName, Attrs, Change, Desired, Drift, InDoubt, Plan, Snapshot,
    SnapshotEntry, Summary, UserId, UserMap,
};

/// Choices that shape a plan beyond desired state and snapshot.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct PlanOptions {
    /// The app the plan is for (recorded in the plan).
    pub sdkappid: u64,
    /// Delete users that left the config instead of reporting them as orphaned.
    pub prune: bool,
    /// Where the writes go ([`crate::model::Target::key`]), recorded in the plan.
    pub endpoint: String,
    /// Where the app's last write went, when the config's server changed since.
    pub previous_endpoint: Option<String>,
    /// `--target` patterns: plan only the users matching one (empty: everyone).
    pub targets: Vec<String>,
}

/// The line that heads a partial plan, in every rendering.
pub(crate) fn partial_note(plan: &Plan) -> String {
    format!(
        "Partial plan: only users matching --target {}. Changes to other users are neither shown nor applied.",
        describe_targets(&plan.targets)
    )
}

/// `Mary, team-*`, or `every user` for a whole plan.
pub fn describe_targets(targets: &[String]) -> String {
    match targets.is_empty() {
        true => "every user".to_owned(),
        false => targets.join(", "),
    }
}

/// Whether `user` matches a `--target` pattern: the id itself, or a glob where `*` stands for
/// any run of characters and `?` for one.
pub fn target_matches(pattern: &str, user: &str) -> bool {
    let (pattern, user): (Vec<char>, Vec<char>) =
        (pattern.chars().collect(), user.chars().collect());
    // The classic two-pointer wildcard match: linear in practice, no recursion.
    let (mut p, mut u) = (0, 0);
    let mut star: Option<(usize, usize)> = None;
    while u < user.len() {
        match pattern.get(p) {
            Some('*') => {
                star = Some((p, u));
                p += 1;
            }
            Some(&c) if c == '?' || c == user[u] => {
                p += 1;
                u += 1;
            }
            _ => match star {
                Some((star_p, star_u)) => {
                    p = star_p + 1;
                    u = star_u + 1;
                    star = Some((star_p, star_u + 1));
                }
                None => return false,
            },
        }
    }
    pattern[p..].iter().all(|&c| c == '*')
}

/// Computes the changes that take the snapshot to the desired state.
///
/// All inputs are sorted by user id, so this is one merge pass. Changes come out with deletes
/// and orphans first, then everything else, each group by user id.
///
/// A user in doubt is never compared with its snapshot entry (the server may hold something
/// else): if it is declared, its full desired state is re-sent; if not, it is deleted with
/// prune (every attribute it may hold is removed) or reported as orphaned and in doubt.
pub fn plan(desired: &Desired, snapshot: &Snapshot, options: PlanOptions) -> Plan {
    // The digest reads the whole desired state once more: on another core, while the merge
    // runs (a tenth of a second at a million users).
    std::thread::scope(|scope| {
        let digest = scope.spawn(|| desired_digest(desired));
        let mut plan = merge_plan(desired, snapshot, options);
        plan.desired_digest = digest.join().expect("the digest does not panic");
        plan
    })
}

/// [`plan`] without the desired-state digest (`desired_digest` is left empty): for a plan
/// that is applied at once and never saved or compared (the daemon's pass), which then does
/// not read the whole desired state a second time.
pub fn plan_undigested(desired: &Desired, snapshot: &Snapshot, options: PlanOptions) -> Plan {
    merge_plan(desired, snapshot, options)
}

/// [`plan`] without its digest.
fn merge_plan(desired: &Desired, snapshot: &Snapshot, options: PlanOptions) -> Plan {
    let mut summary = Summary::default();
    let mut removals = Vec::new();
    let mut others = Vec::new();
    let empty = Attrs::default();
    let targeted = |user: &UserId| {
        options.targets.is_empty()
            || options
                .targets
                .iter()
                .any(|t| target_matches(t, user.as_str()))
    };
    for (user, wanted, entry, doubt) in merge(desired, snapshot) {
        if !targeted(user) {
            continue;
        }
        let recorded = entry.map_or(&empty, |e| &e.attrs);
        summary.in_doubt += usize::from(doubt.is_some());
        match (wanted, doubt) {
            (Some(wanted), None) => {
                let attrs = diff_attrs(recorded, wanted);
                if attrs.is_empty() {
                    // Equal, or declared with no attributes and unknown to the snapshot:
                    // nothing to send and nothing to record.
                    summary.unchanged += 1;
                    continue;
                }
                let action = if entry.is_some() {
                    summary.update += 1;
                    Action::Update
                } else {
                    summary.create += 1;
                    Action::Create
                };
                others.push(Change {
                    user: user.clone(),
                    action,
                    attrs,
                    in_doubt: None,
                });
            }
            (Some(wanted), Some(doubt)) => {
                summary.resend += 1;
                others.push(Change {
                    user: user.clone(),
                    action: Action::Resend,
                    attrs: resend_attrs(recorded, &doubt.maybe, wanted),
                    in_doubt: Some(doubt.note.clone()),
                });
            }
            (None, doubt) => {
                let (action, attrs) = if options.prune {
                    summary.delete += 1;
                    let maybe = doubt.map_or(&empty, |d| &d.maybe);
                    (Action::Delete, resend_attrs(recorded, maybe, &empty))
                } else {
                    summary.orphaned += 1;
                    let kept = recorded
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
                    in_doubt: doubt.map(|d| d.note.clone()),
                });
            }
        }
    }
    removals.append(&mut others);
    Plan {
        sdkappid: options.sdkappid,
        snapshot_serial: snapshot.serial,
        desired_digest: String::new(),
        prune: options.prune,
        endpoint: options.endpoint,
        previous_endpoint: options.previous_endpoint,
        targets: options.targets,
        summary,
        changes: removals,
    }
}

/// One user of desired ∪ snapshot ∪ in-doubt: its desired attributes, snapshot entry and doubt.
type Merged<'a> = (
    &'a UserId,
    Option<&'a Attrs>,
    Option<&'a SnapshotEntry>,
    Option<&'a InDoubt>,
);

/// Walks the three sorted maps together, yielding each user once, in user-id order.
fn merge<'a>(desired: &'a Desired, snapshot: &'a Snapshot) -> impl Iterator<Item = Merged<'a>> {
    let mut wanted = desired.iter().peekable();
    let mut known = snapshot.users.iter().peekable();
    let mut doubts = snapshot.in_doubt.iter().peekable();
    std::iter::from_fn(move || {
        let user = [
            wanted.peek().map(|(u, _)| *u),
            known.peek().map(|(u, _)| *u),
            doubts.peek().map(|(u, _)| *u),
        ]
        .into_iter()
        .flatten()
        .min()?;
        let wanted = wanted.next_if(|(u, _)| *u == user).map(|(_, a)| a);
        let entry = known.next_if(|(u, _)| *u == user).map(|(_, e)| e);
        let doubt = doubts.next_if(|(u, _)| *u == user).map(|(_, d)| d);
        Some((user, wanted, entry, doubt))
    })
}

/// The attributes of a re-send (or a delete in doubt): every `wanted` attribute, and the
/// removal of every attribute the server may hold (`recorded` or `maybe`) that is not wanted.
/// `before` is the snapshot's last known value, else the unconfirmed one.
fn resend_attrs(recorded: &Attrs, maybe: &Attrs, wanted: &Attrs) -> Vec<AttrChange> {
    let mut names: Vec<&AttrName> = recorded
        .iter()
        .chain(maybe.iter())
        .chain(wanted.iter())
        .map(|(name, _)| name)
        .collect();
    names.sort();
    names.dedup();
    names
        .into_iter()
        .map(|name| AttrChange {
            name: name.clone(),
            before: recorded
                .get(name.as_str())
                .or_else(|| maybe.get(name.as_str()))
                .cloned(),
            after: wanted.get(name.as_str()).cloned(),
        })
        .collect()
}

/// The users whose `live` attributes differ from the snapshot's, in user-id order: changed
/// outside attrsync. Users in doubt are left out: attrsync itself may have written what the
/// server holds, and reading it back resolves the doubt rather than revealing drift.
pub fn drift(snapshot: &Snapshot, live: &UserMap<Attrs>) -> Vec<Drift> {
    let empty = Attrs::default();
    live.iter()
        .filter(|(user, _)| snapshot.in_doubt.get(user.as_str()).is_none())
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
/// Users in `live` get their live attributes and are no longer in doubt; users the server
/// could not be asked about (absent from `live`) keep their recorded entry and doubt. It keeps
/// the recorded serial, so a plan saved from it still goes stale when the real snapshot moves.
pub fn live_snapshot(snapshot: &Snapshot, live: &UserMap<Attrs>) -> Snapshot {
    let mut users = Vec::with_capacity(live.len().max(snapshot.users.len()));
    let mut recorded = snapshot.users.iter().peekable();
    let mut read = live.iter().peekable();
    loop {
        let take_live = match (recorded.peek(), read.peek()) {
            (None, None) => break,
            (Some(_), None) => false,
            (None, Some(_)) => true,
            (Some((r, _)), Some((l, _))) => l <= r,
        };
        if take_live {
            let (user, attrs) = read.next().expect("peeked");
            let entry = recorded.next_if(|(r, _)| *r == user).map(|(_, e)| e);
            if !attrs.is_empty() {
                let applied_at = entry.map_or(0, |e| e.applied_at);
                users.push((
                    user.clone(),
                    SnapshotEntry {
                        attrs: attrs.clone(),
                        applied_at,
                    },
                ));
            }
        } else {
            let (user, entry) = recorded.next().expect("peeked");
            users.push((user.clone(), entry.clone()));
        }
    }
    let in_doubt = snapshot
        .in_doubt
        .iter()
        .filter(|(user, _)| live.get(user.as_str()).is_none())
        .map(|(user, doubt)| (user.clone(), doubt.clone()))
        .collect();
    Snapshot {
        users: UserMap::from_sorted(users).expect("a merge of sorted maps is sorted"),
        in_doubt: UserMap::from_sorted(in_doubt).expect("a filtered sorted map is sorted"),
        serial: snapshot.serial,
    }
}

/// The attributes that differ between `before` and `after`, sorted by name.
fn diff_attrs(before: &Attrs, after: &Attrs) -> Vec<AttrChange> {
    // Most users are unchanged, and shared sets often compare by pointer.
    if before == after {
        return Vec::new();
    }
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
    // Each string goes in as its length (u64 LE) and its bytes. A user's fields are gathered
    // in one buffer first: a million users would otherwise be seven million small updates.
    let mut buffer = Vec::with_capacity(256);
    let put = |buffer: &mut Vec<u8>, s: &[u8]| {
        buffer.extend_from_slice(&(s.len() as u64).to_le_bytes());
        buffer.extend_from_slice(s);
    };
    let mut count = itoa_buffer();
    for (user, attrs) in desired.iter() {
        buffer.clear();
        put(&mut buffer, user.as_str().as_bytes());
        put(&mut buffer, decimal(attrs.len(), &mut count));
        for (name, value) in attrs.iter() {
            put(&mut buffer, name.as_str().as_bytes());
            put(&mut buffer, value.as_str().as_bytes());
        }
        hasher.update(&buffer);
    }
    let digest = hasher.finalize();
    let mut hex = String::with_capacity(7 + 64);
    hex.push_str("sha256:");
    for byte in digest {
        hex.push_str(&format!("{byte:02x}"));
    }
    hex
}

/// Room for any `usize` in decimal.
fn itoa_buffer() -> [u8; 20] {
    [0; 20]
}

/// `n` in decimal, written into the end of `buffer` without allocating.
fn decimal(mut n: usize, buffer: &mut [u8; 20]) -> &[u8] {
    let mut at = buffer.len();
    loop {
        at -= 1;
        buffer[at] = b'0' + (n % 10) as u8;
        n /= 10;
        if n == 0 {
            return &buffer[at..];
        }
    }
}

/// Most differing users [`differences`] names; the rest are counted.
const DIFFERENCES_SHOWN: usize = 5;

/// What differs between a `saved` plan and the plan computed `now` from the same config and
/// snapshot; empty when they are equal. A saved plan is applied only when this is empty, so a
/// plan file edited by hand (an added user, a changed value) or made from another state is
/// refused, naming what differs.
pub fn differences(saved: &Plan, now: &Plan) -> Vec<String> {
    let mut found = Vec::new();
    if saved.sdkappid != now.sdkappid {
        found.push(format!(
            "it is for app {}, attrsync.yaml says {}",
            saved.sdkappid, now.sdkappid
        ));
    }
    if saved.snapshot_serial != now.snapshot_serial {
        found.push(format!(
            "the snapshot moved from serial {} to {} (something was applied or imported since)",
            saved.snapshot_serial, now.snapshot_serial
        ));
    }
    if saved.desired_digest != now.desired_digest {
        found.push("the config's desired state changed since the plan was made".to_owned());
    }
    // A saved plan from before endpoints were recorded has none to compare.
    if !saved.endpoint.is_empty() && saved.endpoint != now.endpoint {
        found.push(format!(
            "it sends to {}, attrsync.yaml now points at {}",
            saved.endpoint, now.endpoint
        ));
    }
    if saved.targets != now.targets {
        found.push(format!(
            "it was made for --target {}, the plan now is for {}",
            describe_targets(&saved.targets),
            describe_targets(&now.targets)
        ));
    }
    if saved.prune != now.prune {
        found.push(format!(
            "it was made with prune {}, the plan now has prune {}",
            on_off(saved.prune),
            on_off(now.prune)
        ));
    }
    let by_user = |plan: &'_ Plan| -> std::collections::BTreeMap<String, Change> {
        plan.changes
            .iter()
            .map(|c| (c.user.as_str().to_owned(), c.clone()))
            .collect()
    };
    let (old, new) = (by_user(saved), by_user(now));
    let mut users: Vec<String> = Vec::new();
    for (user, change) in &old {
        match new.get(user) {
            None => users.push(format!(
                "user {user:?} is in the saved plan ({}) but the config and snapshot give no change for it",
                change.action.as_str()
            )),
            Some(fresh) if fresh != change => users.push(format!(
                "user {user:?} differs: the saved plan has {}, the config and snapshot give {}",
                describe_change(change),
                describe_change(fresh)
            )),
            Some(_) => {}
        }
    }
    for (user, change) in &new {
        if !old.contains_key(user) {
            users.push(format!(
                "user {user:?} ({}) is missing from the saved plan",
                change.action.as_str()
            ));
        }
    }
    if saved.changes.len() != old.len() {
        found.push("the saved plan names a user twice".to_owned());
    }
    if users.is_empty() && found.is_empty() && saved.summary != now.summary {
        found.push("its summary does not match its changes".to_owned());
    }
    let more = users.len().saturating_sub(DIFFERENCES_SHOWN);
    found.extend(users.into_iter().take(DIFFERENCES_SHOWN));
    if more > 0 {
        found.push(format!("and {} more", plural(more, "user")));
    }
    found
}

fn on_off(on: bool) -> &'static str {
    if on {
        "on"
    } else {
        "off"
    }
}

/// `update {city: "A" → "B"}`, for stale-plan messages.
fn describe_change(change: &Change) -> String {
    let value = |v: &Option<crate::model::AttrValue>| {
        v.as_ref()
            .map_or_else(|| "-".to_owned(), |v| format!("{:?}", v.as_str()))
    };
    let attrs: Vec<String> = change
        .attrs
        .iter()
        .map(|a| format!("{}: {} → {}", a.name, value(&a.before), value(&a.after)))
        .collect();
    format!("{} {{{}}}", change.action.as_str(), attrs.join(", "))
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
        let resend = if summary.resend > 0 {
            format!(", {} to re-send (in doubt)", summary.resend)
        } else {
            String::new()
        };
        format!(
            "Plan: {} to create, {} to update, {} to delete{resend}.",
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
        Snapshot {
            users,
            serial,
            ..Snapshot::default()
        }
    }

    /// `snapshot` with `users` marked in doubt, each possibly holding `maybe`.
    pub fn in_doubt(mut snapshot: Snapshot, users: &[(&str, &[(&str, &str)])]) -> Snapshot {
        snapshot.in_doubt = UserMap::from_unsorted(
            users
                .iter()
                .map(|(u, maybe)| {
                    (
                        UserId::new(u).unwrap(),
                        InDoubt {
                            maybe: attrs(maybe),
                            note: DoubtNote {
                                since: 1_700_000_100,
                                reason: "a write was sent and no answer confirmed it".into(),
                            },
                        },
                    )
                })
                .collect(),
        )
        .unwrap();
        snapshot
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
            ..Snapshot::default()
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
            ..PlanOptions::default()
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
        assert!(change.sets());
        // set_attr carries the full desired set, whatever the server does with it.
        assert_eq!(
            change.result(&attrs(&[("city", "NewYork"), ("tier", "gold")])),
            Some(attrs(&[("city", "Boston"), ("sex", "female")]))
        );
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
    fn a_removal_only_update_does_not_set() {
        let plan = plan(
            &desired(&[("Mary", &[("city", "Boston")])]),
            &snapshot(3, &[("Mary", &[("city", "Boston"), ("tier", "gold")])]),
            opts(false),
        );
        assert_eq!(brief(&plan), ["update Mary tier:gold>_"]);
        assert!(!plan.changes[0].sets());
    }

    #[test]
    fn a_user_in_doubt_is_resent_whatever_the_snapshot_says() {
        // The write Boston → Paris got no answer; the YAML was then reverted to Boston.
        let snap = in_doubt(
            snapshot(5, &[("Mary", &[("city", "Boston"), ("sex", "f")])]),
            &[("Mary", &[("city", "Paris"), ("tier", "gold")])],
        );
        let plan = plan(
            &desired(&[("Mary", &[("city", "Boston"), ("sex", "f")])]),
            &snap,
            opts(false),
        );
        assert_eq!(
            brief(&plan),
            ["resend Mary city:Boston>Boston,sex:f>f,tier:gold>_"]
        );
        let change = &plan.changes[0];
        assert!(change.sets());
        assert_eq!(
            change.to_remove().map(|n| n.as_str()).collect::<Vec<_>>(),
            ["tier"]
        );
        assert_eq!(
            change.result(&Attrs::default()),
            Some(attrs(&[("city", "Boston"), ("sex", "f")]))
        );
        assert!(change
            .in_doubt
            .as_ref()
            .unwrap()
            .reason
            .contains("no answer"));
        assert_eq!((plan.summary.resend, plan.summary.in_doubt), (1, 1));
        assert!(plan.summary.has_writes());
        assert_eq!(
            summary_line(&plan.summary),
            "Plan: 0 to create, 0 to update, 0 to delete, 1 to re-send (in doubt)."
        );
    }

    #[test]
    fn an_undeclared_user_in_doubt_is_deleted_with_prune_and_orphaned_without() {
        let snap = in_doubt(Snapshot::default(), &[("ghost", &[("city", "Rome")])]);
        let pruned = plan(&Desired::default(), &snap, opts(true));
        assert_eq!(brief(&pruned), ["delete ghost city:Rome>_"]);
        assert!(pruned.changes[0].in_doubt.is_some());
        assert_eq!(pruned.changes[0].result(&Attrs::default()), None);
        let kept = plan(&Desired::default(), &snap, opts(false));
        assert_eq!(brief(&kept), ["orphaned ghost "]);
        assert!(kept.changes[0].in_doubt.is_some());
        assert!(!kept.summary.has_writes());
        assert_eq!(kept.summary.in_doubt, 1);
    }

    #[test]
    fn live_values_resolve_doubt_but_unread_users_keep_theirs() {
        let snap = in_doubt(
            snapshot(2, &[("a", &[("x", "1")]), ("b", &[("x", "1")])]),
            &[("a", &[("x", "2")]), ("b", &[("x", "2")])],
        );
        // `b` could not be read (the server answered it with an error).
        let live = desired(&[("a", &[("x", "2")])]);
        assert!(drift(&snap, &live).is_empty(), "doubt is not drift");
        let based = live_snapshot(&snap, &live);
        assert_eq!(based.users.get("a").unwrap().attrs, attrs(&[("x", "2")]));
        assert_eq!(based.users.get("b").unwrap().attrs, attrs(&[("x", "1")]));
        assert!(based.in_doubt.get("a").is_none());
        assert!(based.in_doubt.get("b").is_some());
    }

    #[test]
    fn a_saved_plan_equals_only_the_plan_it_was() {
        let want = desired(&[("Mary", &[("city", "Boston")]), ("Bob", &[("x", "1")])]);
        let snap = snapshot(3, &[("Mary", &[("city", "NewYork")])]);
        let fresh = plan(&want, &snap, opts(false));
        assert!(differences(&fresh, &fresh).is_empty());
        // An added user, and an edited value, in a plan file.
        let mut edited = fresh.clone();
        edited.changes.push(Change {
            user: UserId::new("intruder").unwrap(),
            action: Action::Create,
            attrs: vec![AttrChange {
                name: AttrName::new("x").unwrap(),
                before: None,
                after: Some(AttrValue::new("1").unwrap()),
            }],
            in_doubt: None,
        });
        edited.changes[1].attrs[0].after = Some(AttrValue::new("Paris").unwrap());
        let found = differences(&edited, &fresh);
        assert_eq!(found.len(), 2, "{found:?}");
        assert!(
            found[0].contains("\"Mary\" differs") && found[0].contains("Paris"),
            "{found:?}"
        );
        assert!(
            found[1].contains("\"intruder\" is in the saved plan"),
            "{found:?}"
        );
        let moved = plan(
            &want,
            &snapshot(4, &[("Mary", &[("city", "NewYork")])]),
            opts(false),
        );
        assert!(differences(&fresh, &moved)[0].contains("serial 3 to 4"));
    }

    #[test]
    fn the_digest_is_the_documented_one() {
        // The digest saved plans were made with: each string as its length (u64 LE) and bytes,
        // per user its id, its attribute count in decimal, then each name and value.
        let reference = |desired: &Desired| {
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
            let hex: String = hasher
                .finalize()
                .iter()
                .map(|b| format!("{b:02x}"))
                .collect();
            format!("sha256:{hex}")
        };
        for want in [
            desired(&[]),
            desired(&[("Mary", &[("city", "Boston")]), ("Bob", &[])]),
            desired(&[(
                "u",
                &[
                    ("a", "1"),
                    ("b", "2"),
                    ("c", "3"),
                    ("d", "4"),
                    ("e", "5"),
                    ("f", "6"),
                    ("g", "7"),
                    ("h", "8"),
                    ("i", "9"),
                    ("j", "10"),
                ],
            )]),
        ] {
            assert_eq!(desired_digest(&want), reference(&want));
        }
        let mut buffer = itoa_buffer();
        assert_eq!(decimal(0, &mut buffer), b"0");
        assert_eq!(decimal(10, &mut buffer), b"10");
        assert_eq!(
            decimal(usize::MAX, &mut buffer),
            usize::MAX.to_string().as_bytes()
        );
    }

    #[test]
    fn target_patterns_are_ids_or_globs() {
        for (pattern, user) in [
            ("Mary", "Mary"),
            ("team-*", "team-a"),
            ("team-*", "team-"),
            ("*", "anyone"),
            ("u?", "u1"),
            ("*smith", "mary smith"),
            ("a*b*c", "aXXbYYc"),
            ("小*", "小明"),
        ] {
            assert!(target_matches(pattern, user), "{pattern} {user}");
        }
        for (pattern, user) in [
            ("Mary", "mary"),
            ("Mary", "Maryann"),
            ("team-*", "team"),
            ("u?", "u12"),
            ("a*b*c", "aXXbYY"),
        ] {
            assert!(!target_matches(pattern, user), "{pattern} {user}");
        }
    }

    #[test]
    fn a_targeted_plan_holds_only_matching_users_and_counts_only_them() {
        let want = desired(&[
            ("team-a", &[("x", "1")]),
            ("team-b", &[("x", "2")]),
            ("other", &[("x", "3")]),
        ]);
        let snap = snapshot(1, &[("team-b", &[("x", "2")]), ("gone", &[("x", "9")])]);
        let partial = plan(
            &want,
            &snap,
            PlanOptions {
                targets: vec!["team-*".to_owned()],
                ..opts(true)
            },
        );
        let users: Vec<&str> = partial.changes.iter().map(|c| c.user.as_str()).collect();
        assert_eq!(users, ["team-a"]);
        assert_eq!(
            (
                partial.summary.create,
                partial.summary.unchanged,
                partial.summary.delete
            ),
            (1, 1, 0)
        );
        let whole = plan(&want, &snap, opts(true));
        let found = differences(&partial, &whole);
        assert!(
            found[0].contains("--target team-*, the plan now is for every user"),
            "{found:?}"
        );
        assert!(found.iter().any(|d| d.contains("\"other\"")), "{found:?}");
    }

    #[test]
    fn a_saved_plan_is_for_one_server() {
        let want = desired(&[("Mary", &[("city", "Boston")])]);
        let to = |endpoint: &str| PlanOptions {
            endpoint: endpoint.to_owned(),
            ..opts(false)
        };
        let saved = plan(
            &want,
            &Snapshot::default(),
            to("https://adminapisgp.im.qcloud.com"),
        );
        let now = plan(&want, &Snapshot::default(), to("https://proxy.example.com"));
        assert_eq!(
            differences(&saved, &now),
            ["it sends to https://adminapisgp.im.qcloud.com, attrsync.yaml now points at https://proxy.example.com"]
        );
        // A plan saved before endpoints were recorded names none: nothing to compare.
        let unrecorded = plan(&want, &Snapshot::default(), to(""));
        assert!(differences(&unrecorded, &now).is_empty());
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
