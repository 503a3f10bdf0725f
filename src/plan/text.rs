//! The human rendering of a plan, in the spirit of `terraform plan`.

use std::fmt::Write as _;

use anstyle::{AnsiColor, Style};

use crate::model::{Action, AttrChange, DoubtNote, Drift, Plan};

use super::summary_line;
use crate::text::plural;

/// Plans with more changes than this open with a summary, so the gist is on the first screen.
const SUMMARY_FIRST_ABOVE: usize = 20;

/// Whether to colour the text rendering.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TextStyle {
    /// ANSI colours, for a terminal.
    Color,
    /// No escape codes, for pipes, files and `NO_COLOR`.
    Plain,
}

struct Painter {
    on: bool,
}

impl Painter {
    fn paint(&self, style: Style, text: &str) -> String {
        if self.on {
            format!("{}{text}{}", style.render(), style.render_reset())
        } else {
            text.to_owned()
        }
    }
}

fn color(c: AnsiColor) -> Style {
    Style::new().fg_color(Some(c.into()))
}

/// Renders a plan for a person: one block per user, `attr: "before" → "after"` per attribute,
/// the summary line last.
pub fn render_text(plan: &Plan, style: TextStyle) -> String {
    let mut out = String::new();
    write_text(plan, style, &mut out).expect("a String takes every write");
    out
}

/// [`render_text`] written to `out` as it renders: a million-change plan goes to stdout
/// without ever being held whole in memory.
pub fn write_text(
    plan: &Plan,
    style: TextStyle,
    out: &mut impl std::fmt::Write,
) -> std::fmt::Result {
    let painter = Painter {
        on: style == TextStyle::Color,
    };
    let s = &plan.summary;
    if !plan.targets.is_empty() {
        writeln!(
            out,
            "{}\n",
            painter.paint(Style::new().bold(), &super::partial_note(plan))
        )?;
    }
    if plan.changes.is_empty() {
        writeln!(
            out,
            "The snapshot matches the config: {} users, nothing to apply.\n",
            s.unchanged
        )?;
        out.write_str(&painter.paint(Style::new().bold(), "No changes."))?;
        out.write_char('\n')?;
        return Ok(());
    }
    if plan.changes.len() > SUMMARY_FIRST_ABOVE {
        writeln!(
            out,
            "{}",
            painter.paint(Style::new().bold(), &summary_line(s))
        )?;
        writeln!(
            out,
            "  {} create, {} update, {} delete, {} re-send, {} orphaned, {} unchanged ({} in doubt)\n",
            s.create, s.update, s.delete, s.resend, s.orphaned, s.unchanged, s.in_doubt
        )?;
    }
    if s.has_writes() {
        out.write_str("attrsync will perform the following changes:\n\n")?;
    }
    let mut orphan_note_written = false;
    for change in &plan.changes {
        let (sign, colour, verb) = match change.action {
            Action::Create => ("+", AnsiColor::Green, "will be created"),
            Action::Update => ("~", AnsiColor::Yellow, "will be updated"),
            Action::Delete => ("-", AnsiColor::Red, "will be deleted"),
            Action::Orphaned => ("?", AnsiColor::BrightBlack, "is orphaned"),
            Action::Resend => ("!", AnsiColor::Magenta, "is in doubt"),
        };
        if change.action == Action::Orphaned && !orphan_note_written {
            out.write_str(
                "Orphaned users were removed from the config; their attributes stay on the \
                 server until you prune (prune: true or --prune):\n\n",
            )?;
            orphan_note_written = true;
        }
        write!(
            out,
            "  {} {} {verb}",
            painter.paint(color(colour), sign),
            painter.paint(
                Style::new().bold(),
                &crate::text::quote_user(change.user.as_str())
            )
        )?;
        match (&change.in_doubt, change.action) {
            (None, _) => out.write_char('\n')?,
            (Some(note), Action::Resend) => {
                writeln!(
                    out,
                    ": {}; its full desired state will be re-sent",
                    doubt_text(note)
                )?;
            }
            (Some(note), Action::Orphaned) => {
                writeln!(
                    out,
                    " and in doubt: {}; `attrsync plan --refresh` or `attrsync import` reads \
                     what the server holds",
                    doubt_text(note)
                )?;
            }
            (Some(note), _) => {
                writeln!(out, " (in doubt: {})", doubt_text(note))?;
            }
        }
        for attr in &change.attrs {
            out.write_str("      ")?;
            out.write_str(&attr_line(attr, change.action, &painter))?;
            out.write_char('\n')?;
        }
        out.write_char('\n')?;
    }
    if s.in_doubt > 0 {
        writeln!(
            out,
            "{} in doubt: attrsync does not know what the server holds for {}, so {} compared \
             with the snapshot.",
            plural(s.in_doubt, "user"),
            if s.in_doubt == 1 { "it" } else { "them" },
            if s.in_doubt == 1 {
                "it is not"
            } else {
                "they are not"
            },
        )?;
    }
    if s.orphaned > 0 {
        writeln!(
            out,
            "{} orphaned (left on the server; prune to remove).",
            plural(s.orphaned, "user")
        )?;
    }
    out.write_str(&painter.paint(Style::new().bold(), &summary_line(s)))?;
    out.write_char('\n')
}

/// Renders users changed outside attrsync (`plan --refresh`), before the plan itself.
pub fn render_drift_text(drift: &[Drift], style: TextStyle) -> String {
    let painter = Painter {
        on: style == TextStyle::Color,
    };
    if drift.is_empty() {
        return "The server matches the snapshot: nothing changed outside attrsync.\n\n".to_owned();
    }
    let mut out = format!(
        "{} changed outside attrsync since the last apply (snapshot → live); the plan below is \
         computed against the live values:\n\n",
        plural(drift.len(), "user")
    );
    for user in drift {
        let _ = writeln!(
            out,
            "  {} {}",
            painter.paint(color(AnsiColor::Magenta), "!"),
            painter.paint(
                Style::new().bold(),
                &crate::text::quote_user(user.user.as_str())
            )
        );
        for attr in &user.attrs {
            out.push_str("      ");
            out.push_str(&attr_line(attr, Action::Update, &painter));
            out.push('\n');
        }
    }
    out.push('\n');
    out
}

/// `a write was sent and no answer confirmed it (since 2026-11-28T06:00:00Z)`.
pub(crate) fn doubt_text(note: &DoubtNote) -> String {
    let since = std::time::UNIX_EPOCH + std::time::Duration::from_secs(note.since);
    format!(
        "{} (since {})",
        note.reason,
        humantime::format_rfc3339_seconds(since)
    )
}

fn attr_line(attr: &AttrChange, action: Action, painter: &Painter) -> String {
    let name = attr.name.as_str();
    match (&attr.before, &attr.after) {
        (Some(before), Some(_)) if action == Action::Orphaned => {
            format!("  {name}: {:?}", before.as_str())
        }
        (Some(before), Some(after)) if action == Action::Resend && before == after => format!(
            "{} {name}: {:?}",
            painter.paint(color(AnsiColor::Magenta), "="),
            after.as_str()
        ),
        (Some(before), Some(after)) => format!(
            "{} {name}: {:?} → {:?}",
            painter.paint(color(AnsiColor::Yellow), "~"),
            before.as_str(),
            after.as_str()
        ),
        (None, Some(after)) => format!(
            "{} {name}: {:?}",
            painter.paint(color(AnsiColor::Green), "+"),
            after.as_str()
        ),
        (Some(before), None) => format!(
            "{} {name}: {:?}",
            painter.paint(color(AnsiColor::Red), "-"),
            before.as_str()
        ),
        (None, None) => format!("  {name}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::plan::testing::*;
    use crate::plan::{plan, PlanOptions};

    fn sample(prune: bool) -> Plan {
        plan(
            &desired(&[
                ("Mary", &[("city", "Boston"), ("sex", "female")]),
                ("xiaoming", &[("city", "ShenZhen"), ("tier", "gold")]),
                ("same", &[("city", "Rome")]),
            ]),
            &snapshot(
                7,
                &[
                    ("Mary", &[("city", "NewYork"), ("tier", "free")]),
                    ("ghost", &[("city", "Oslo")]),
                    ("same", &[("city", "Rome")]),
                ],
            ),
            PlanOptions {
                sdkappid: 1_400_000_000,
                prune,
                ..PlanOptions::default()
            },
        )
    }

    #[test]
    fn plain_plan_with_prune() {
        insta::assert_snapshot!(render_text(&sample(true), TextStyle::Plain), @r#"
        attrsync will perform the following changes:

          - ghost will be deleted
              - city: "Oslo"

          ~ Mary will be updated
              ~ city: "NewYork" → "Boston"
              + sex: "female"
              - tier: "free"

          + xiaoming will be created
              + city: "ShenZhen"
              + tier: "gold"

        Plan: 1 to create, 1 to update, 1 to delete.
        "#);
    }

    #[test]
    fn plain_plan_with_orphan() {
        insta::assert_snapshot!(render_text(&sample(false), TextStyle::Plain), @r#"
        attrsync will perform the following changes:

        Orphaned users were removed from the config; their attributes stay on the server until you prune (prune: true or --prune):

          ? ghost is orphaned
                city: "Oslo"

          ~ Mary will be updated
              ~ city: "NewYork" → "Boston"
              + sex: "female"
              - tier: "free"

          + xiaoming will be created
              + city: "ShenZhen"
              + tier: "gold"

        1 user orphaned (left on the server; prune to remove).
        Plan: 1 to create, 1 to update, 0 to delete.
        "#);
    }

    #[test]
    fn users_in_doubt_say_why() {
        let snap = in_doubt(
            snapshot(7, &[("Mary", &[("city", "NewYork"), ("tier", "free")])]),
            &[
                ("Mary", &[("city", "Paris")]),
                ("ghost", &[("city", "Oslo")]),
            ],
        );
        let p = plan(
            &desired(&[("Mary", &[("city", "NewYork"), ("sex", "f")])]),
            &snap,
            PlanOptions::default(),
        );
        insta::assert_snapshot!(render_text(&p, TextStyle::Plain), @r#"
        attrsync will perform the following changes:

        Orphaned users were removed from the config; their attributes stay on the server until you prune (prune: true or --prune):

          ? ghost is orphaned and in doubt: a write was sent and no answer confirmed it (since 2023-11-14T22:15:00Z); `attrsync plan --refresh` or `attrsync import` reads what the server holds

          ! Mary is in doubt: a write was sent and no answer confirmed it (since 2023-11-14T22:15:00Z); its full desired state will be re-sent
              = city: "NewYork"
              + sex: "f"
              - tier: "free"

        2 users in doubt: attrsync does not know what the server holds for them, so they are not compared with the snapshot.
        1 user orphaned (left on the server; prune to remove).
        Plan: 0 to create, 0 to update, 0 to delete, 1 to re-send (in doubt).
        "#);
    }

    #[test]
    fn no_changes() {
        let p = plan(
            &desired(&[("a", &[("x", "1")])]),
            &snapshot(1, &[("a", &[("x", "1")])]),
            PlanOptions::default(),
        );
        let text = render_text(&p, TextStyle::Plain);
        assert_eq!(text.lines().last(), Some("No changes."));
    }

    #[test]
    fn colour_only_when_asked() {
        assert!(!render_text(&sample(true), TextStyle::Plain).contains('\x1b'));
        assert!(render_text(&sample(true), TextStyle::Color).contains("\x1b["));
    }

    #[test]
    fn large_plans_open_with_the_summary() {
        let p = plan(
            &numbered("u", 30, "x", "1"),
            &snapshot(0, &[]),
            PlanOptions::default(),
        );
        let text = render_text(&p, TextStyle::Plain);
        assert!(text.starts_with("Plan: 30 to create, 0 to update, 0 to delete.\n"));
        assert!(text.ends_with("Plan: 30 to create, 0 to update, 0 to delete.\n"));
    }
}
