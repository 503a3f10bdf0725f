//! `attrsync plan` through the real binary against real sled snapshots: the three renderings,
//! exit codes, pruning, the saved plan, what is never a change, and the guards.

use crate::common;

use attrsync::state::Holder;
use common::{Repo, SDKAPPID, SETTINGS};
use serde_json::{json, Value};

/// The config of the README example: Mary and xiaoming, with a file default for `tier`.
const EXAMPLE_USERS: &str = "\
defaults:
  tier: free
users:
  Mary:
    sex: female
    city: NewYork
  xiaoming: {sex: male, city: ShenZhen, tier: gold}
";

/// The README example's users against a snapshot where Mary has moved and `ghost` left the config.
fn drifted() -> Repo {
    let repo = Repo::with_users(&[("users/a.yaml", EXAMPLE_USERS)]);
    repo.seed(&[
        ("Mary", &[("sex", "female"), ("city", "Boston")]),
        ("ghost", &[("city", "Oslo")]),
    ]);
    repo
}

/// A repository whose snapshot already matches its config, as after a successful apply.
fn in_sync(users: &str) -> Repo {
    let repo = Repo::with_users(&[("users/a.yaml", users)]);
    let plan = repo.run(&["plan", "--format", "json"]).success().json();
    // What the server holds once the plan is applied: every change's `after` values.
    let applied: String = plan["changes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|change| {
            let attrs: serde_json::Map<String, Value> = change["attrs"]
                .as_object()
                .unwrap()
                .iter()
                .map(|(name, attr)| (name.clone(), attr["after"].clone()))
                .collect();
            format!("{}\n", json!({"user": change["user"], "attrs": attrs}))
        })
        .collect();
    repo.write("applied.jsonl", applied);
    repo.run(&["state", "import", "applied.jsonl"]).success();
    let replanned = repo.run(&["plan", "--format", "json"]).success().json();
    assert_eq!(
        replanned["changes"],
        json!([]),
        "the snapshot matches the config"
    );
    repo
}

/// `(action, user)` for each change of a JSON plan, in order.
fn actions(plan: &Value) -> Vec<(String, String)> {
    plan["changes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| {
            (
                c["action"].as_str().unwrap().to_owned(),
                c["user"].as_str().unwrap().to_owned(),
            )
        })
        .collect()
}

mod text {
    use super::*;

    #[test]
    fn a_fresh_repository_creates_everyone_with_file_defaults() {
        let repo = Repo::with_users(&[("users/a.yaml", EXAMPLE_USERS)]);
        let out = repo.run(&["plan"]);
        out.success();
        assert_eq!(
            out.stderr,
            "warning: there is no snapshot at ./state: every declared user is planned as a create. \
             If attrsync has applied to this app before, check --state (or `state` in attrsync.yaml); \
             `attrsync import` reads the app's current values into a new snapshot\n"
        );
        insta::assert_snapshot!(out.stdout, @r#"
        attrsync will perform the following changes:

          + Mary will be created
              + city: "NewYork"
              + sex: "female"
              + tier: "free"

          + xiaoming will be created
              + city: "ShenZhen"
              + sex: "male"
              + tier: "gold"

        Plan: 2 to create, 0 to update, 0 to delete.
        "#);
    }

    #[test]
    fn update_create_and_orphaned_without_prune() {
        let out = drifted().run(&["plan"]);
        out.success();
        insta::assert_snapshot!(out.stdout, @r#"
        attrsync will perform the following changes:

        Orphaned users were removed from the config; their attributes stay on the server until you prune (prune: true or --prune):

          ? ghost is orphaned
                city: "Oslo"

          ~ Mary will be updated
              ~ city: "Boston" → "NewYork"
              + tier: "free"

          + xiaoming will be created
              + city: "ShenZhen"
              + sex: "male"
              + tier: "gold"

        1 user orphaned (left on the server; prune to remove).
        Plan: 1 to create, 1 to update, 0 to delete.
        "#);
    }

    #[test]
    fn prune_turns_the_orphan_into_a_delete() {
        let out = drifted().run(&["plan", "--prune"]);
        out.success();
        insta::assert_snapshot!(out.stdout, @r#"
        attrsync will perform the following changes:

          - ghost will be deleted
              - city: "Oslo"

          ~ Mary will be updated
              ~ city: "Boston" → "NewYork"
              + tier: "free"

          + xiaoming will be created
              + city: "ShenZhen"
              + sex: "male"
              + tier: "gold"

        Plan: 1 to create, 1 to update, 1 to delete.
        "#);
    }

    #[test]
    fn an_attribute_removed_from_yaml_is_removed() {
        let repo = Repo::with_users(&[("users/a.yaml", "users:\n  Mary: {city: Boston}\n")]);
        repo.seed(&[("Mary", &[("city", "Boston"), ("sex", "female")])]);
        insta::assert_snapshot!(repo.run(&["plan"]).success().stdout, @r#"
        attrsync will perform the following changes:

          ~ Mary will be updated
              - sex: "female"

        Plan: 0 to create, 1 to update, 0 to delete.
        "#);
    }

    #[test]
    fn no_changes_says_so() {
        let repo = in_sync("users:\n  Mary: {city: Boston}\n  Bob: {city: Rome}\n");
        insta::assert_snapshot!(repo.run(&["plan"]).success().stdout, @r"
        The snapshot matches the config: 2 users, nothing to apply.

        No changes.
        ");
    }

    #[test]
    fn no_color_means_no_escape_codes_anywhere() {
        let repo = drifted();
        repo.write("attrsync.yaml", format!("{SETTINGS}max_deletes: 0\n"));
        for args in [
            &["plan", "--prune"][..],
            &["plan", "--format", "markdown"],
            &["validate"],
            &["state", "list"],
        ] {
            let out = repo.run(args);
            assert!(
                !out.stdout.contains('\x1b') && !out.stderr.contains('\x1b'),
                "{args:?}:\n{}{}",
                out.stdout,
                out.stderr
            );
        }
        assert!(
            repo.run(&["plan", "--prune"])
                .stderr
                .starts_with("warning: "),
            "the stderr checked above was not empty"
        );
    }
}

mod json_format {
    use super::*;

    #[test]
    fn has_the_documented_shape() {
        let repo = drifted();
        repo.write("users/b.yaml", "users:\n  Ann: {city: Rome}\n");
        repo.seed(&[
            ("Mary", &[("sex", "female"), ("city", "Boston")]),
            ("ghost", &[("city", "Oslo")]),
            ("Ann", &[("city", "Rome")]),
        ]);
        let plan = repo.run(&["plan", "--format", "json"]).success().json();
        let digest = plan["desired_digest"].as_str().unwrap();
        assert!(
            digest.starts_with("sha256:") && digest.len() == 7 + 64,
            "{digest}"
        );
        assert_eq!(
            plan,
            json!({
                "format_version": 1,
                "sdkappid": SDKAPPID,
                "snapshot_serial": 2,
                "desired_digest": digest,
                "prune": false,
                "endpoint": "https://adminapisgp.im.qcloud.com",
                "summary": {"create": 1, "update": 1, "delete": 0, "orphaned": 1, "unchanged": 1,
                            "resend": 0, "in_doubt": 0},
                "changes": [
                    {"user": "ghost", "action": "orphaned", "attrs": {"city": {"before": "Oslo", "after": "Oslo"}}},
                    {"user": "Mary", "action": "update", "attrs": {
                        "city": {"before": "Boston", "after": "NewYork"},
                        "tier": {"before": null, "after": "free"}
                    }},
                    {"user": "xiaoming", "action": "create", "attrs": {
                        "city": {"before": null, "after": "ShenZhen"},
                        "sex": {"before": null, "after": "male"},
                        "tier": {"before": null, "after": "gold"}
                    }}
                ]
            })
        );
    }

    #[test]
    fn a_removed_attribute_has_after_null_and_a_delete_removes_everything() {
        let repo = Repo::with_users(&[("users/a.yaml", "users:\n  Mary: {city: Boston}\n")]);
        repo.seed(&[
            ("Mary", &[("city", "Boston"), ("sex", "female")]),
            ("ghost", &[("city", "Oslo"), ("tier", "gold")]),
        ]);
        let plan = repo
            .run(&["plan", "--format", "json", "--prune"])
            .success()
            .json();
        assert_eq!(
            plan["changes"],
            json!([
                {"user": "ghost", "action": "delete", "attrs": {
                    "city": {"before": "Oslo", "after": null},
                    "tier": {"before": "gold", "after": null}
                }},
                {"user": "Mary", "action": "update", "attrs": {"sex": {"before": "female", "after": null}}}
            ])
        );
        assert_eq!(
            plan["summary"],
            json!({"create": 0, "update": 1, "delete": 1, "orphaned": 0, "unchanged": 0,
                   "resend": 0, "in_doubt": 0})
        );
    }

    #[test]
    fn changes_are_sorted_deletes_first_then_by_user_id() {
        let repo = Repo::with_users(&[(
            "users/a.yaml",
            "users:\n  zed: {city: a}\n  bob: {city: a}\n  Carl: {city: a}\n  dan: {city: b}\n",
        )]);
        repo.seed(&[
            ("yuri", &[("city", "x")]),
            ("dan", &[("city", "a")]),
            ("adam", &[("city", "x")]),
            ("Xena", &[("city", "x")]),
        ]);
        let pruned = repo
            .run(&["plan", "--format", "json", "--prune"])
            .success()
            .json();
        let expected = |removal: &str| -> Vec<(String, String)> {
            [
                (removal, "Xena"),
                (removal, "adam"),
                (removal, "yuri"),
                ("create", "Carl"),
                ("create", "bob"),
                ("update", "dan"),
                ("create", "zed"),
            ]
            .iter()
            .map(|(a, u)| ((*a).to_owned(), (*u).to_owned()))
            .collect()
        };
        assert_eq!(actions(&pruned), expected("delete"));
        let kept = repo.run(&["plan", "--format", "json"]).success().json();
        assert_eq!(actions(&kept), expected("orphaned"));
    }

    #[test]
    fn out_saves_the_same_json_whatever_is_printed() {
        let repo = drifted();
        let printed = repo
            .run(&["plan", "--format", "json", "--out", "plan.json"])
            .success()
            .stdout
            .clone();
        assert_eq!(repo.read("plan.json"), printed);
        repo.mkdir("saved");
        let text = repo
            .run(&["plan", "--out", "saved/plan.json"])
            .success()
            .stdout
            .clone();
        assert!(
            text.starts_with("attrsync will perform the following changes:"),
            "{text}"
        );
        assert_eq!(repo.read("saved/plan.json"), printed);
    }

    #[test]
    fn out_into_a_missing_directory_is_a_clear_error() {
        let out = drifted().run(&["plan", "--out", "no/such/dir/plan.json"]);
        out.expect_code(1);
        assert!(
            out.stderr
                .starts_with("error: cannot write the plan to no/such/dir/plan.json: "),
            "{}",
            out.stderr
        );
    }
}

mod markdown {
    use super::*;

    #[test]
    fn opens_with_the_summary_table_then_collapsed_details() {
        let out = drifted().run(&["plan", "--format", "markdown", "--prune"]);
        out.success();
        let (head, details) = out
            .stdout
            .split_once("\n#### ")
            .expect("a section after the summary");
        insta::assert_snapshot!(head, @r"
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

        <sub>app `1400000000` · snapshot serial 1 · desired `sha256:2f6454ecd310`</sub>
        ");
        insta::assert_snapshot!(format!("#### {details}"), @r#"
        #### Deletions

        <details><summary><code>- ghost</code> (1 attribute)</summary>

        ```diff
        -city: "Oslo"
        ```
        </details>

        #### Changes

        <details><summary><code>~ Mary</code> (2 attributes)</summary>

        ```diff
        -city: "Boston"
        +city: "NewYork"
        +tier: "free"
        ```
        </details>
        <details><summary><code>+ xiaoming</code> (3 attributes)</summary>

        ```diff
        +city: "ShenZhen"
        +sex: "male"
        +tier: "gold"
        ```
        </details>
        "#);
    }
}

mod exit_codes {
    use super::*;

    #[test]
    fn detailed_exitcode_is_2_with_changes_0_without_1_on_error() {
        let repo = drifted();
        assert_eq!(repo.run(&["plan", "--detailed-exitcode"]).code, 2);
        assert_eq!(
            repo.run(&["plan", "--detailed-exitcode"]).code,
            2,
            "planning changes nothing"
        );
        assert_eq!(
            repo.run(&["plan"]).code,
            0,
            "without the flag changes still exit 0"
        );

        let quiet = in_sync("users:\n  Mary: {city: Boston}\n");
        assert_eq!(quiet.run(&["plan", "--detailed-exitcode"]).code, 0);

        repo.write("users/a.yaml", "users:\n  Mary: {city: NO}\n");
        let broken = repo.run(&["plan", "--detailed-exitcode"]);
        assert_eq!(broken.code, 1);
        assert_eq!(broken.stdout, "");
        assert!(
            broken
                .stderr
                .starts_with("users/a.yaml:2:16: `city` of user `Mary` is `NO`"),
            "{}",
            broken.stderr
        );
    }

    #[test]
    fn orphans_alone_are_not_changes() {
        let repo = in_sync("users:\n  Mary: {city: Boston}\n");
        repo.seed(&[
            ("Mary", &[("city", "Boston")]),
            ("ghost", &[("city", "Oslo")]),
        ]);
        let out = repo.run(&["plan", "--detailed-exitcode"]);
        assert_eq!(out.code, 0, "an orphan writes nothing to the server");
        assert!(
            out.stdout
                .ends_with("1 user orphaned (left on the server; prune to remove).\nNo changes.\n"),
            "{}",
            out.stdout
        );
        assert_eq!(
            repo.run(&["plan", "--detailed-exitcode", "--prune"]).code,
            2
        );
    }
}

mod pruning {
    use super::*;

    #[test]
    fn prune_in_attrsync_yaml_is_the_same_as_the_flag() {
        let repo = drifted();
        let flag = repo
            .run(&["plan", "--format", "json", "--prune"])
            .success()
            .json();
        repo.write("attrsync.yaml", format!("{SETTINGS}prune: true\n"));
        let setting = repo.run(&["plan", "--format", "json"]).success().json();
        assert_eq!(setting, flag);
        assert_eq!(
            actions(&setting)[0],
            ("delete".to_owned(), "ghost".to_owned())
        );
    }

    #[test]
    fn deleting_more_than_max_deletes_warns_that_apply_will_refuse() {
        let repo = Repo::with_users(&[
            ("attrsync.yaml", &format!("{SETTINGS}max_deletes: 2\n")),
            ("users/a.yaml", "users:\n  keep: {city: Rome}\n"),
        ]);
        repo.seed(&[
            ("keep", &[("city", "Rome")]),
            ("a", &[("city", "x")]),
            ("b", &[("city", "x")]),
            ("c", &[("city", "x")]),
        ]);
        let out = repo.run(&["plan", "--prune", "--detailed-exitcode"]);
        assert_eq!(out.code, 2, "plan still shows the plan");
        assert_eq!(
            out.stderr,
            "warning: apply will refuse this plan: the plan deletes 3 users, more than max_deletes (2): check that no user \
             file was deleted or emptied by mistake, then re-run with --allow-mass-delete or raise max_deletes in attrsync.yaml\n"
        );
        assert!(
            out.stdout
                .ends_with("Plan: 0 to create, 0 to update, 3 to delete.\n"),
            "{}",
            out.stdout
        );

        assert_eq!(repo.run(&["plan"]).stderr, "", "orphans are not deletions");
        repo.write("attrsync.yaml", format!("{SETTINGS}max_deletes: 3\n"));
        assert_eq!(
            repo.run(&["plan", "--prune"]).stderr,
            "",
            "exactly max_deletes is allowed"
        );
    }

    #[test]
    fn an_empty_config_against_a_snapshot_is_refused_unless_allowed() {
        let repo = drifted();
        repo.remove("users/a.yaml");
        let out = repo.run(&["plan", "--prune"]);
        out.expect_code(1);
        assert_eq!(out.stdout, "");
        assert_eq!(
            out.stderr,
            "error: the config declares no users but the snapshot holds 2: check users_dir and that the user files are \
             where attrsync.yaml says; re-run with --allow-empty if the config is meant to be empty\n"
        );
        let allowed = repo
            .run(&["plan", "--prune", "--allow-empty", "--format", "json"])
            .success()
            .json();
        assert_eq!(
            actions(&allowed),
            [
                ("delete".to_owned(), "Mary".to_owned()),
                ("delete".to_owned(), "ghost".to_owned())
            ]
        );
    }

    #[test]
    fn an_empty_config_without_a_snapshot_is_fine() {
        let out = Repo::with_users(&[]).run(&["plan"]);
        out.success();
        assert!(out.stdout.ends_with("No changes.\n"), "{}", out.stdout);
    }
}

mod never_a_change {
    use super::*;

    #[test]
    fn restyling_reordering_and_moving_users_between_files() {
        let repo = in_sync(EXAMPLE_USERS);
        let digest = |repo: &Repo| {
            let plan = repo.run(&["plan", "--format", "json", "--detailed-exitcode"]);
            plan.success();
            plan.json()["desired_digest"].as_str().unwrap().to_owned()
        };
        let original = digest(&repo);
        let restyled: [&[(&str, &str)]; 4] = [
            // Flow style, other key order, quotes of every kind, defaults written out.
            &[("users/a.yaml", "users: {xiaoming: {tier: 'gold', city: \"ShenZhen\", sex: male}, Mary: {tier: free, city: NewYork, sex: \"female\"}}\n")],
            // Block style everywhere, defaults last, comments and blank lines.
            &[(
                "users/a.yaml",
                "# the team\nusers:\n\n  xiaoming:\n    tier: gold   # paid\n    sex: male\n    city: ShenZhen\n  Mary:\n    city: NewYork\n    sex: female\ndefaults:\n  tier: free\n",
            )],
            // Each user in a file of its own, one of them nested and `.yml`.
            &[
                ("users/a.yaml", "users:\n  Mary: {sex: female, city: NewYork, tier: free}\n"),
                ("users/asia/x.yml", "users:\n  \"xiaoming\": {sex: male, city: ShenZhen, tier: !!str gold}\n"),
            ],
            // An explicit document start and a block scalar.
            &[(
                "users/a.yaml",
                "---\ndefaults: {tier: free}\nusers:\n  Mary:\n    sex: >-\n      female\n    city: NewYork\n  xiaoming: {sex: male, city: ShenZhen, tier: gold}\n",
            )],
        ];
        for files in restyled {
            for stale in ["users/a.yaml", "users/asia/x.yml"] {
                let _ = std::fs::remove_file(repo.path(stale));
            }
            for (path, content) in files {
                repo.write(path, content);
            }
            assert_eq!(digest(&repo), original, "{files:?}");
        }
    }

    #[test]
    fn a_users_own_value_beats_the_default_and_defaults_stay_in_their_file() {
        let repo = Repo::with_users(&[
            (
                "users/a.yaml",
                "defaults: {tier: free, city: Nowhere}\nusers:\n  Ann: {tier: gold}\n",
            ),
            ("users/b.yaml", "users:\n  Bob: {sex: male}\n"),
        ]);
        let plan = repo.run(&["plan", "--format", "json"]).success().json();
        assert_eq!(
            plan["changes"][0]["attrs"],
            json!({"city": {"before": null, "after": "Nowhere"}, "tier": {"before": null, "after": "gold"}})
        );
        assert_eq!(
            plan["changes"][1]["attrs"],
            json!({"sex": {"before": null, "after": "male"}})
        );
    }

    #[test]
    fn plan_reads_the_snapshot_without_creating_or_changing_it() {
        let fresh = Repo::with_users(&[("users/a.yaml", EXAMPLE_USERS)]);
        fresh.run(&["plan"]).success();
        assert!(
            !fresh.path("state").exists(),
            "plan must not create a snapshot"
        );

        let repo = drifted();
        let serial = repo.serial();
        repo.run(&["plan", "--prune"]).success();
        assert_eq!(repo.serial(), serial);
    }
}

mod snapshot_access {
    use super::*;

    #[test]
    fn a_snapshot_of_another_app_is_refused() {
        let repo = drifted();
        repo.write(
            "attrsync.yaml",
            SETTINGS.replace("1400000000", "1400000001"),
        );
        let out = repo.run(&["plan"]);
        out.expect_code(1);
        assert_eq!(
            out.stderr,
            "error: the snapshot at ./state belongs to app 1400000000, but attrsync.yaml says 1400000001; point --state \
             (or state_dir) at this app's snapshot\n"
        );
    }

    #[test]
    fn a_snapshot_held_by_another_process_names_the_holder() {
        let repo = drifted();
        let holder = Holder {
            pid: 4242,
            command: "watch".into(),
            listen: Some("127.0.0.1:9464".into()),
            ..Holder::default()
        };
        let store = common::open_store(&repo.path("state"), &holder);
        let out = repo.run(&["plan"]);
        drop(store);
        out.expect_code(1);
        assert_eq!(
            out.stderr,
            "error: the snapshot at ./state is in use by another attrsync process (pid 4242, `attrsync watch`, listening on \
             127.0.0.1:9464: GET http://127.0.0.1:9464/plan shows its current plan); wait for it to finish, or stop it, then run again\n"
        );
        assert_eq!(
            repo.run(&["plan", "--detailed-exitcode"]).code,
            2,
            "usable again once released"
        );
    }

    #[test]
    fn state_flag_points_at_another_snapshot() {
        let repo = drifted();
        let other = tempfile::tempdir().unwrap();
        let store = common::open_store(other.path(), &Holder::this_process("test"));
        let user = |s: &str| attrsync::model::UserId::new(s).unwrap();
        let attrs = |city: &str| {
            attrsync::model::Attrs::from_pairs(vec![(
                attrsync::model::AttrName::new("city").unwrap(),
                attrsync::model::AttrValue::new(city).unwrap(),
            )])
        };
        common::record(
            &store,
            &[
                (user("Mary"), Some(attrs("NewYork"))),
                (user("Zoe"), Some(attrs("Lima"))),
            ],
            1_700_000_000,
        );
        common::record(&store, &[(user("Zoe"), None)], 1_700_000_001);
        drop(store);
        let plan = repo
            .run(&[
                "--state",
                other.path().to_str().unwrap(),
                "plan",
                "--format",
                "json",
            ])
            .success()
            .json();
        assert_eq!(plan["snapshot_serial"], 2);
        assert_eq!(
            plan["changes"][0],
            json!({"user": "Mary", "action": "update", "attrs": {
                "sex": {"before": null, "after": "female"},
                "tier": {"before": null, "after": "free"}
            }})
        );
    }
}

mod endpoint_change {
    use super::*;

    /// The README example's users, recorded for Singapore, with the config now pointing at a proxy.
    fn moved() -> Repo {
        let repo = drifted();
        repo.write(
            "attrsync.yaml",
            SETTINGS.replace("region: singapore", "endpoint: https://proxy.example.com"),
        );
        repo
    }

    const CHANGE: &str =
        "Endpoint change: this app's last write went to https://adminapisgp.im.qcloud.com; \
                          this plan sends the admin UserSig to https://proxy.example.com.";

    #[test]
    fn a_plan_calls_out_where_the_key_now_goes_in_text_json_and_markdown() {
        let repo = moved();
        let text = repo.run(&["plan"]);
        text.success();
        assert!(text.stdout.starts_with(CHANGE), "{}", text.stdout);
        assert!(
            text.stdout
                .contains("Endpoint: https://proxy.example.com is a custom endpoint"),
            "{}",
            text.stdout
        );
        // The snapshot says nothing about the new server: everyone is sent anew, and apply
        // will want an import first.
        assert!(
            text.stderr.contains("the snapshot records https://adminapisgp.im.qcloud.com, not https://proxy.example.com")
                && text.stderr.contains("`attrsync import`"),
            "{}",
            text.stderr
        );
        assert!(text
            .stdout
            .contains("Plan: 2 to create, 0 to update, 0 to delete."));
        let json = repo.run(&["plan", "--format", "json"]).success().json();
        assert_eq!(json["endpoint"], "https://proxy.example.com");
        assert_eq!(
            json["endpoint_change"],
            json!({"from": "https://adminapisgp.im.qcloud.com", "to": "https://proxy.example.com"})
        );
        let markdown = repo.run(&["plan", "--format", "markdown"]);
        assert!(
            markdown.stdout.starts_with(&format!("> **{CHANGE}**")),
            "{}",
            markdown.stdout
        );
    }

    #[test]
    fn apply_refuses_a_snapshot_of_another_server_naming_both() {
        let out = moved().run(&["apply", "--auto-approve"]);
        out.expect_code(1);
        assert!(
            out.stderr
                .contains("records what https://adminapisgp.im.qcloud.com holds")
                && out.stderr.contains("attrsync import"),
            "{}",
            out.stderr
        );
    }

    #[test]
    fn an_unchanged_server_has_no_call_out_and_json_names_the_endpoint() {
        let repo = drifted();
        let text = repo.run(&["plan"]);
        assert!(!text.stdout.contains("Endpoint"), "{}", text.stdout);
        let json = repo.run(&["plan", "--format", "json"]).success().json();
        assert_eq!(json["endpoint"], "https://adminapisgp.im.qcloud.com");
        assert!(json.get("endpoint_change").is_none());
    }
}

mod show {
    use super::*;

    #[test]
    fn a_saved_plan_renders_as_the_plan_did_in_every_format() {
        let repo = drifted();
        let text = repo.run(&["plan", "--out", "plan.json"]);
        text.success();
        let shown = repo.run(&["show", "plan.json"]);
        shown.success();
        assert_eq!(shown.stdout, text.stdout);
        let saved = repo.read("plan.json");
        assert_eq!(
            repo.run(&["show", "plan.json", "--format", "json"]).stdout,
            saved
        );
        assert_eq!(
            repo.run(&["show", "plan.json", "--format", "markdown"])
                .stdout,
            repo.run(&["plan", "--format", "markdown"]).stdout
        );
        // Without the config or the snapshot: a plan file is all it needs.
        let elsewhere = Repo::new(&[("plan.json", &saved)]);
        assert_eq!(elsewhere.run(&["show", "plan.json"]).stdout, text.stdout);
    }

    #[test]
    fn a_missing_or_foreign_file_is_a_clear_error() {
        let repo = Repo::new(&[("notes.json", "{\"hello\": 1}")]);
        let missing = repo.run(&["show", "nope.json"]);
        missing.expect_code(1);
        assert!(
            missing.stderr.contains("cannot read the plan file"),
            "{}",
            missing.stderr
        );
        let foreign = repo.run(&["show", "notes.json"]);
        foreign.expect_code(1);
        assert!(
            foreign.stderr.contains("cannot show notes.json"),
            "{}",
            foreign.stderr
        );
    }
}
