//! The plan as JSON (`format_version` 1): `plan --format json`, and the saved plan file.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::model::{
    Action, AttrChange, AttrName, AttrValue, Change, DoubtNote, Drift, Plan, Summary, UserId,
};

/// The plan JSON format this build writes and reads.
pub const FORMAT_VERSION: u32 = 1;

#[derive(Deserialize)]
struct PlanDoc {
    sdkappid: u64,
    snapshot_serial: u64,
    desired_digest: String,
    #[serde(default)]
    prune: bool,
    #[serde(default)]
    endpoint: String,
    #[serde(default)]
    endpoint_change: Option<EndpointChangeDoc>,
    #[serde(default)]
    targets: Vec<String>,
    summary: SummaryDoc,
    changes: Vec<ChangeDoc>,
}

/// `"endpoint_change": {"from": …, "to": …}`: where the app's last write went, and where this
/// plan's writes go.
#[derive(Serialize, Deserialize)]
struct EndpointChangeDoc {
    from: String,
    to: String,
}

#[derive(Serialize, Deserialize)]
struct SummaryDoc {
    create: usize,
    update: usize,
    delete: usize,
    orphaned: usize,
    unchanged: usize,
    #[serde(default)]
    resend: usize,
    #[serde(default)]
    in_doubt: usize,
}

#[derive(Deserialize)]
struct ChangeDoc {
    user: String,
    action: ActionDoc,
    attrs: BTreeMap<String, AttrDoc>,
    #[serde(default)]
    in_doubt: Option<DoubtDoc>,
}

#[derive(Serialize, Deserialize)]
struct DoubtDoc {
    since: u64,
    reason: String,
}

#[derive(Deserialize, Clone, Copy)]
#[serde(rename_all = "lowercase")]
enum ActionDoc {
    Create,
    Update,
    Delete,
    Orphaned,
    Resend,
}

#[derive(Deserialize)]
struct AttrDoc {
    before: Option<String>,
    after: Option<String>,
}

/// Serialises a plan as pretty JSON, exactly as README.md ("Plan JSON") describes.
pub fn to_json(plan: &Plan) -> String {
    // About 100 bytes of pretty JSON per attribute change.
    let mut json = Vec::with_capacity(
        512 + plan
            .changes
            .iter()
            .map(|c| 80 + 100 * c.attrs.len())
            .sum::<usize>(),
    );
    write_json(plan, &mut json).expect("a Vec takes every write");
    String::from_utf8(json).expect("serde_json writes UTF-8")
}

/// [`to_json`] written to `out` as it serialises: a million-change plan goes to stdout
/// without ever being held whole in memory.
///
/// Serialises straight from the plan, borrowing every string: a million-change plan would
/// otherwise be copied into owned documents first.
pub fn write_json(plan: &Plan, out: &mut impl std::io::Write) -> std::io::Result<()> {
    let doc = PlanOut {
        format_version: FORMAT_VERSION,
        sdkappid: plan.sdkappid,
        snapshot_serial: plan.snapshot_serial,
        desired_digest: &plan.desired_digest,
        prune: plan.prune,
        endpoint: &plan.endpoint,
        endpoint_change: plan
            .previous_endpoint
            .as_ref()
            .map(|from| EndpointChangeDoc {
                from: from.clone(),
                to: plan.endpoint.clone(),
            }),
        targets: &plan.targets,
        summary: SummaryDoc {
            create: plan.summary.create,
            update: plan.summary.update,
            delete: plan.summary.delete,
            orphaned: plan.summary.orphaned,
            unchanged: plan.summary.unchanged,
            resend: plan.summary.resend,
            in_doubt: plan.summary.in_doubt,
        },
        changes: ChangesOut(&plan.changes),
    };
    serde_json::to_writer_pretty(&mut *out, &doc).map_err(std::io::Error::from)?;
    out.write_all(b"\n")
}

#[derive(Serialize)]
struct PlanOut<'a> {
    format_version: u32,
    sdkappid: u64,
    snapshot_serial: u64,
    desired_digest: &'a str,
    prune: bool,
    endpoint: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    endpoint_change: Option<EndpointChangeDoc>,
    #[serde(skip_serializing_if = "<[String]>::is_empty")]
    targets: &'a [String],
    summary: SummaryDoc,
    changes: ChangesOut<'a>,
}

struct ChangesOut<'a>(&'a [Change]);

impl Serialize for ChangesOut<'_> {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_seq(self.0.iter().map(ChangeOut))
    }
}

struct ChangeOut<'a>(&'a Change);

impl Serialize for ChangeOut<'_> {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeStruct as _;
        let mut change = serializer.serialize_struct("Change", 4)?;
        change.serialize_field("user", self.0.user.as_str())?;
        change.serialize_field("action", self.0.action.as_str())?;
        change.serialize_field("attrs", &AttrsOut(&self.0.attrs))?;
        match &self.0.in_doubt {
            Some(note) => change.serialize_field(
                "in_doubt",
                &DoubtOut {
                    since: note.since,
                    reason: &note.reason,
                },
            )?,
            None => change.skip_field("in_doubt")?,
        }
        change.end()
    }
}

/// A change's attributes as a JSON object; they are sorted by name already.
struct AttrsOut<'a>(&'a [AttrChange]);

impl Serialize for AttrsOut<'_> {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_map(self.0.iter().map(|a| {
            let out = AttrOut {
                before: a.before.as_ref().map(AttrValue::as_str),
                after: a.after.as_ref().map(AttrValue::as_str),
            };
            (a.name.as_str(), out)
        }))
    }
}

#[derive(Serialize)]
struct DoubtOut<'a> {
    since: u64,
    reason: &'a str,
}

#[derive(Serialize)]
struct AttrOut<'a> {
    before: Option<&'a str>,
    after: Option<&'a str>,
}

/// The plan JSON with a `drift` array (`plan --refresh`): per drifted user, per attribute,
/// `{"snapshot": …, "live": …}`. Consumers that do not know the field ignore it.
pub fn to_json_with_drift(plan: &Plan, drift: &[Drift]) -> String {
    let mut value: serde_json::Value =
        serde_json::from_str(&to_json(plan)).expect("plan JSON parses");
    let entries: Vec<serde_json::Value> = drift
        .iter()
        .map(|d| {
            let attrs: serde_json::Map<String, serde_json::Value> = d
                .attrs
                .iter()
                .map(|a| {
                    let text = |v: &Option<AttrValue>| v.as_ref().map(|v| v.as_str().to_owned());
                    (
                        a.name.as_str().to_owned(),
                        serde_json::json!({"snapshot": text(&a.before), "live": text(&a.after)}),
                    )
                })
                .collect();
            serde_json::json!({"user": d.user.as_str(), "attrs": attrs})
        })
        .collect();
    value["drift"] = serde_json::Value::Array(entries);
    let mut json = serde_json::to_string_pretty(&value).expect("plan JSON serialises");
    json.push('\n');
    json
}

/// Why a saved plan file cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum PlanFileError {
    /// Not JSON, or not the plan's shape.
    #[error("the plan file is not a valid attrsync plan: {0}; create it with `attrsync plan --out FILE`")]
    Malformed(#[from] serde_json::Error),
    /// Written by a newer or older attrsync.
    #[error("the plan file has format_version {found}, this attrsync reads {FORMAT_VERSION}; re-run `attrsync plan --out FILE` with this version")]
    Version {
        /// The version in the file.
        found: u32,
    },
    /// A value inside breaks a rule the config loader enforces.
    #[error("the plan file has an invalid entry for user {user:?}: {reason}; it was edited by hand or corrupted, re-create it with `attrsync plan --out FILE`")]
    Invalid {
        /// The user whose entry is invalid.
        user: String,
        /// What is wrong.
        reason: String,
    },
}

/// Reads a saved plan, checking its version and every id, name and value in it.
pub fn from_json(text: &str) -> Result<Plan, PlanFileError> {
    // The version first, on its own: a future format may not have this one's shape.
    #[derive(Deserialize)]
    struct Probe {
        format_version: Option<u64>,
    }
    let found = serde_json::from_str::<Probe>(text)?
        .format_version
        .unwrap_or(0);
    if found != u64::from(FORMAT_VERSION) {
        return Err(PlanFileError::Version {
            found: u32::try_from(found).unwrap_or(u32::MAX),
        });
    }
    let doc: PlanDoc = serde_json::from_str(text)?;
    let mut changes = Vec::with_capacity(doc.changes.len());
    for change in doc.changes {
        let invalid = |reason: String| PlanFileError::Invalid {
            user: change.user.clone(),
            reason,
        };
        let user = UserId::new(&change.user).map_err(|e| invalid(e.to_string()))?;
        let mut attrs = Vec::with_capacity(change.attrs.len());
        for (name, attr) in &change.attrs {
            let value = |v: &Option<String>| -> Result<Option<AttrValue>, PlanFileError> {
                v.as_deref()
                    .map(AttrValue::new)
                    .transpose()
                    .map_err(|e| invalid(format!("attribute {name}: {e}")))
            };
            attrs.push(AttrChange {
                name: AttrName::new(name).map_err(|e| invalid(e.to_string()))?,
                before: value(&attr.before)?,
                after: value(&attr.after)?,
            });
        }
        let action = match change.action {
            ActionDoc::Create => Action::Create,
            ActionDoc::Update => Action::Update,
            ActionDoc::Delete => Action::Delete,
            ActionDoc::Orphaned => Action::Orphaned,
            ActionDoc::Resend => Action::Resend,
        };
        changes.push(Change {
            user,
            action,
            attrs,
            in_doubt: change.in_doubt.map(|d| DoubtNote {
                since: d.since,
                reason: d.reason,
            }),
        });
    }
    let s = doc.summary;
    Ok(Plan {
        sdkappid: doc.sdkappid,
        snapshot_serial: doc.snapshot_serial,
        desired_digest: doc.desired_digest,
        prune: doc.prune,
        endpoint: doc.endpoint,
        previous_endpoint: doc.endpoint_change.map(|change| change.from),
        targets: doc.targets,
        summary: Summary {
            create: s.create,
            update: s.update,
            delete: s.delete,
            orphaned: s.orphaned,
            unchanged: s.unchanged,
            resend: s.resend,
            in_doubt: s.in_doubt,
        },
        changes,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::plan::testing::*;
    use crate::plan::{plan, PlanOptions};

    fn sample() -> Plan {
        plan(
            &desired(&[
                ("Mary", &[("city", "Boston")]),
                ("xiaoming", &[("sex", "male")]),
            ]),
            &snapshot(
                42,
                &[
                    ("Mary", &[("city", "NewYork"), ("tier", "gold")]),
                    ("ghost", &[("city", "Oslo")]),
                ],
            ),
            PlanOptions {
                sdkappid: 1_400_000_000,
                prune: true,
                ..PlanOptions::default()
            },
        )
    }

    #[test]
    fn json_has_the_documented_shape() {
        let value: serde_json::Value = serde_json::from_str(&to_json(&sample())).unwrap();
        assert_eq!(value["format_version"], 1);
        assert_eq!(value["sdkappid"], 1_400_000_000u64);
        assert_eq!(value["snapshot_serial"], 42);
        assert!(value["desired_digest"]
            .as_str()
            .unwrap()
            .starts_with("sha256:"));
        assert_eq!(
            value["summary"],
            serde_json::json!({"create": 1, "update": 1, "delete": 1, "orphaned": 0, "unchanged": 0,
                               "resend": 0, "in_doubt": 0})
        );
        assert_eq!(
            value["changes"],
            serde_json::json!([
                {"user": "ghost", "action": "delete", "attrs": {"city": {"before": "Oslo", "after": null}}},
                {"user": "Mary", "action": "update", "attrs": {
                    "city": {"before": "NewYork", "after": "Boston"},
                    "tier": {"before": "gold", "after": null}}},
                {"user": "xiaoming", "action": "create", "attrs": {"sex": {"before": null, "after": "male"}}}
            ])
        );
    }

    #[test]
    fn round_trips() {
        let plan = sample();
        assert_eq!(from_json(&to_json(&plan)).unwrap(), plan);
    }

    #[test]
    fn users_in_doubt_are_resend_changes_with_the_reason() {
        let snap = in_doubt(
            snapshot(9, &[("Mary", &[("city", "NewYork")])]),
            &[("Mary", &[("city", "Paris")])],
        );
        let plan = plan(
            &desired(&[("Mary", &[("city", "NewYork")])]),
            &snap,
            PlanOptions::default(),
        );
        let value: serde_json::Value = serde_json::from_str(&to_json(&plan)).unwrap();
        assert_eq!(
            value["changes"][0],
            serde_json::json!({"user": "Mary", "action": "resend",
                "attrs": {"city": {"before": "NewYork", "after": "NewYork"}},
                "in_doubt": {"since": 1_700_000_100u64,
                             "reason": "a write was sent and no answer confirmed it"}})
        );
        assert_eq!(value["summary"]["resend"], 1);
        assert_eq!(from_json(&to_json(&plan)).unwrap(), plan);
    }

    #[test]
    fn tolerates_unknown_fields() {
        let mut value: serde_json::Value = serde_json::from_str(&to_json(&sample())).unwrap();
        value["generated_by"] = "a newer attrsync".into();
        value["changes"][0]["note"] = 1.into();
        assert!(from_json(&value.to_string()).is_ok());
    }

    #[test]
    fn rejects_other_versions_and_bad_values() {
        assert!(matches!(
            from_json(r#"{"format_version": 2}"#),
            Err(PlanFileError::Version { found: 2 })
        ));
        assert!(matches!(
            from_json("not json"),
            Err(PlanFileError::Malformed(_))
        ));
        let mut value: serde_json::Value = serde_json::from_str(&to_json(&sample())).unwrap();
        value["changes"][1]["attrs"]["city"]["after"] = "x".repeat(51).into();
        let err = from_json(&value.to_string()).unwrap_err();
        assert!(err.to_string().contains("Mary"), "{err}");
    }
}
