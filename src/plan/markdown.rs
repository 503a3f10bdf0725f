//! The plan as Markdown for a pull-request comment: summary table first, deletions first,
//! per-user details collapsed, and a size cap below what code hosts accept in one comment.

use std::fmt::Write as _;

use similar::TextDiff;

use crate::model::{Action, Change, Drift, Plan};

use super::summary_line;

/// Most characters the rendering may have. GitHub rejects comments over 65,536 characters;
/// the rest is headroom for the footer and for wrappers that add their own text.
pub const MARKDOWN_LIMIT: usize = 60_000;

/// Most characters the drift section may add, so that plan and drift stay under GitHub's
/// 65,536-character comment limit together.
const DRIFT_LIMIT: usize = 4_000;

/// A hidden marker that CI wrappers can search for to update one sticky comment in place.
const MARKER: &str = "<!-- attrsync-plan -->";

/// Renders a plan for a pull-request comment: `header` (e.g. an endpoint call-out), the plan,
/// and with `plan --refresh` the users that drifted; at most [`MARKDOWN_LIMIT`] characters in
/// all, the plan's details giving way first.
pub fn render_markdown(plan: &Plan, drift: Option<&[Drift]>, header: &str) -> String {
    let drift = drift.map(render_drift_markdown).unwrap_or_default();
    let budget = MARKDOWN_LIMIT.saturating_sub(header.len() + drift.len());
    let mut out = String::with_capacity(MARKDOWN_LIMIT);
    out.push_str(header);
    out.push_str(&render_plan(plan, budget));
    out.push_str(&drift);
    out
}

/// The plan's part of the comment, at most `limit` bytes (never fewer characters).
fn render_plan(plan: &Plan, limit: usize) -> String {
    let s = &plan.summary;
    let mut out = String::new();
    let _ = writeln!(
        out,
        "{MARKER}\n### attrsync plan\n\n**{}**\n",
        summary_line(s)
    );
    if !plan.targets.is_empty() {
        let _ = writeln!(out, "> **{}**\n", super::partial_note(plan));
    }
    out.push_str("| Action | Users |\n|:--|--:|\n");
    for (label, n) in [
        ("🗑️ delete", s.delete),
        ("⚠️ orphaned (left on the server)", s.orphaned),
        ("➕ create", s.create),
        ("✏️ update", s.update),
        ("unchanged", s.unchanged),
    ] {
        let _ = writeln!(out, "| {label} | {n} |");
    }
    if s.in_doubt > 0 {
        let _ = writeln!(
            out,
            "| ❓ in doubt ({} re-sent in full) | {} |",
            s.resend, s.in_doubt
        );
    }
    let _ = writeln!(
        out,
        "\n<sub>app `{}` · snapshot serial {} · desired `{}`</sub>",
        plan.sdkappid,
        plan.snapshot_serial,
        short_digest(&plan.desired_digest)
    );

    let mut shown = 0;
    let mut heading = None;
    for change in &plan.changes {
        let section = match change.action {
            Action::Delete => "Deletions",
            Action::Orphaned => "Orphaned users (not deleted: prune is off)",
            Action::Create | Action::Update => "Changes",
            Action::Resend => "In doubt: re-sent in full (no answer confirmed an earlier write)",
        };
        let mut block = String::new();
        if heading != Some(section) {
            let _ = writeln!(block, "\n#### {section}\n");
        }
        block.push_str(&details(change));
        // Keep room for the truncation footer, so the cap holds even when we stop early.
        if out.len() + block.len() + 300 > limit {
            break;
        }
        heading = Some(section);
        out.push_str(&block);
        shown += 1;
    }
    let left_out = plan.changes.len() - shown;
    if left_out > 0 {
        let _ = writeln!(
            out,
            "\n> **{left_out} of {} changes are not shown** to keep this comment under {MARKDOWN_LIMIT} characters. \
             Run `attrsync plan` (or `--format json`) for the full plan.",
            plan.changes.len()
        );
    }
    out
}

/// The users changed outside attrsync (`plan --refresh`), as a section to append, at most
/// [`DRIFT_LIMIT`] characters.
fn render_drift_markdown(drift: &[Drift]) -> String {
    if drift.is_empty() {
        return "\n#### Drift\n\nThe server matches the snapshot: nothing changed outside attrsync.\n".to_owned();
    }
    let mut out = format!(
        "\n#### Drift\n\n{} changed outside attrsync since the last apply; the plan above is computed \
         against the live values.\n\n",
        super::plural(drift.len(), "user")
    );
    let mut shown = 0;
    for user in drift {
        let change = Change {
            user: user.user.clone(),
            action: Action::Update,
            attrs: user.attrs.clone(),
            in_doubt: None,
        };
        let block = details(&change);
        if out.len() + block.len() + 200 > DRIFT_LIMIT {
            break;
        }
        out.push_str(&block);
        shown += 1;
    }
    if shown < drift.len() {
        let _ = writeln!(
            out,
            "\n> {} more drifted users are not shown.",
            drift.len() - shown
        );
    }
    out
}

fn details(change: &Change) -> String {
    let sign = match change.action {
        Action::Create => "+",
        Action::Update => "~",
        Action::Delete => "-",
        Action::Orphaned => "?",
        Action::Resend => "!",
    };
    let doubt = change
        .in_doubt
        .as_ref()
        .map(|note| {
            format!(
                " — in doubt: {}",
                html_escape(&super::text::doubt_text(note))
            )
        })
        .unwrap_or_default();
    let before: String = change
        .attrs
        .iter()
        .filter_map(|a| {
            a.before
                .as_ref()
                .map(|v| format!("{}: {:?}\n", a.name, v.as_str()))
        })
        .collect();
    let after: String = change
        .attrs
        .iter()
        .filter_map(|a| {
            a.after
                .as_ref()
                .map(|v| format!("{}: {:?}\n", a.name, v.as_str()))
        })
        .collect();
    let diff = TextDiff::from_lines(&before, &after);
    let mut body = String::new();
    for op in diff.iter_all_changes() {
        let tag = match op.tag() {
            similar::ChangeTag::Delete => '-',
            similar::ChangeTag::Insert => '+',
            similar::ChangeTag::Equal => ' ',
        };
        body.push(tag);
        body.push_str(op.value());
    }
    format!(
        "<details><summary><code>{sign} {}</code> ({} attribute{}){doubt}</summary>\n\n```diff\n{body}```\n</details>\n",
        html_escape(change.user.as_str()),
        change.attrs.len(),
        crate::text::s(change.attrs.len())
    )
}

fn short_digest(digest: &str) -> &str {
    digest.get(..19).unwrap_or(digest)
}

/// User ids are free text: keep them from opening tags inside the comment.
fn html_escape(text: &str) -> String {
    text.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::plan::testing::*;
    use crate::plan::{plan, PlanOptions};

    #[test]
    fn small_plan() {
        let p = plan(
            &desired(&[("Mary", &[("city", "Boston")]), ("<b>", &[("sex", "m")])]),
            &snapshot(
                3,
                &[
                    ("Mary", &[("city", "NewYork")]),
                    ("ghost", &[("city", "Oslo")]),
                ],
            ),
            PlanOptions {
                sdkappid: 1_400_000_000,
                prune: true,
                ..PlanOptions::default()
            },
        );
        insta::assert_snapshot!(render_markdown(&p, None, ""), @r#"
        <!-- attrsync-plan -->
        ### attrsync plan

        **Plan: 1 to create, 1 to update, 1 to delete.**

        | Action | Users |
        |:--|--:|
        | 🗑️ delete | 1 |
        | ⚠️ orphaned (left on the server) | 0 |
        | ➕ create | 1 |
        | ✏️ update | 1 |
        | unchanged | 0 |

        <sub>app `1400000000` · snapshot serial 3 · desired `sha256:2f51565053e0`</sub>

        #### Deletions

        <details><summary><code>- ghost</code> (1 attribute)</summary>

        ```diff
        -city: "Oslo"
        ```
        </details>

        #### Changes

        <details><summary><code>+ &lt;b&gt;</code> (1 attribute)</summary>

        ```diff
        +sex: "m"
        ```
        </details>
        <details><summary><code>~ Mary</code> (1 attribute)</summary>

        ```diff
        -city: "NewYork"
        +city: "Boston"
        ```
        </details>
        "#);
    }

    #[test]
    fn huge_plans_are_capped_and_say_what_was_left_out() {
        let p = plan(
            &numbered("user", 5000, "city", "Somewhere"),
            &snapshot(0, &[]),
            PlanOptions::default(),
        );
        let md = render_markdown(&p, None, "");
        assert!(md.len() <= MARKDOWN_LIMIT, "{}", md.len());
        assert!(md.contains("**Plan: 5000 to create, 0 to update, 0 to delete.**"));
        let shown = md.matches("<details>").count();
        assert!(shown > 100);
        assert!(
            md.contains(&format!(
                "**{} of 5000 changes are not shown**",
                5000 - shown
            )),
            "{md}"
        );
    }

    #[test]
    fn the_cap_holds_with_the_drift_section_and_a_header() {
        use crate::model::{AttrChange, AttrName, AttrValue, UserId};
        let p = plan(
            &numbered("user", 5000, "city", "Somewhere"),
            &snapshot(0, &[]),
            PlanOptions::default(),
        );
        let drift: Vec<Drift> = (0..2000)
            .map(|i| Drift {
                user: UserId::new(&format!("drifted{i:05}")).unwrap(),
                attrs: vec![AttrChange {
                    name: AttrName::new("city").unwrap(),
                    before: Some(AttrValue::new("Lima").unwrap()),
                    after: Some(AttrValue::new("Oslo").unwrap()),
                }],
            })
            .collect();
        let header = "> **Endpoint change: this app's last write went to a; this plan sends the admin UserSig to b.**\n\n";
        let md = render_markdown(&p, Some(&drift), header);
        assert!(
            md.chars().count() <= MARKDOWN_LIMIT,
            "{}",
            md.chars().count()
        );
        assert!(md.starts_with(header));
        assert!(md.contains("#### Drift") && md.contains("more drifted users are not shown"));
        assert!(md.contains("changes are not shown"));
    }
}
