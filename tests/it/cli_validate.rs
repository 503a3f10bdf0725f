//! `attrsync validate` through the real binary: every validation rule of README.md with its
//! exact `file:line:column`, hostile files in bounded time, and the three output formats.

use crate::common;

use common::{Repo, SETTINGS};
use serde_json::json;

/// One diagnostic from `validate --format json`.
#[derive(Debug)]
struct Found {
    /// `file:line:column`, or just `file` for the file as a whole.
    at: String,
    message: String,
    hint: String,
}

/// Runs `validate --format json`, checks that it failed, and returns what it found.
#[track_caller]
fn problems(repo: &Repo) -> Vec<Found> {
    let out = repo.run(&["validate", "--format", "json"]);
    out.expect_code(1);
    let doc = out.json();
    assert_eq!(doc["valid"], false);
    let found: Vec<Found> = doc["diagnostics"]
        .as_array()
        .expect("diagnostics is a list")
        .iter()
        .map(|d| Found {
            at: match (d["line"].as_u64(), d["column"].as_u64()) {
                (Some(line), Some(column)) => {
                    format!("{}:{line}:{column}", d["file"].as_str().unwrap())
                }
                _ => d["file"].as_str().unwrap().to_owned(),
            },
            message: d["message"].as_str().unwrap().to_owned(),
            hint: d["hint"].as_str().unwrap_or_default().to_owned(),
        })
        .collect();
    assert_eq!(doc["error_count"], found.len());
    found
}

/// Each problem as `file:line:column message`.
fn located(found: &[Found]) -> Vec<String> {
    found
        .iter()
        .map(|f| format!("{} {}", f.at, f.message))
        .collect()
}

/// The only problem `repo` has.
#[track_caller]
fn single(repo: &Repo) -> Found {
    let mut found = problems(repo);
    assert_eq!(found.len(), 1, "expected one problem: {found:#?}");
    found.remove(0)
}

/// Checks that `repo` is valid and declares `users` users in `files` files.
#[track_caller]
fn assert_valid(repo: &Repo, users: usize, files: usize) {
    let out = repo.run(&["validate", "--format", "json"]);
    let doc = out.success().json();
    assert_eq!(
        (
            doc["valid"].clone(),
            doc["users"].clone(),
            doc["files"].clone()
        ),
        (json!(true), json!(users), json!(files))
    );
}

/// A repository whose settings are [`SETTINGS`] with `extra` appended.
fn settings_plus(extra: &str) -> Repo {
    Repo::with_users(&[("attrsync.yaml", &format!("{SETTINGS}{extra}"))])
}

mod rules {
    use super::*;

    #[test]
    fn a_valid_repository_exits_0_and_says_what_it_read() {
        let repo = Repo::with_users(&[
            (
                "users/a.yaml",
                "defaults:\n  tier: free\nusers:\n  Mary: {sex: female}\n  Bob: {city: Rome}\n",
            ),
            (
                "users/b.yaml",
                "users:\n  xiaoming: {sex: male, city: ShenZhen, tier: gold}\n",
            ),
        ]);
        let out = repo.run(&["validate"]);
        out.success();
        assert_eq!(
            out.stdout,
            "The config is valid: 3 users in 2 files, 3 attributes.\n"
        );
        assert_eq!(out.stderr, "");
    }

    #[test]
    fn an_unknown_setting_suggests_the_closest() {
        let found = single(&settings_plus("max_delete: 5\n"));
        assert_eq!(found.at, "attrsync.yaml:5:1");
        assert_eq!(
            found.message,
            "unknown setting `max_delete` in attrsync.yaml"
        );
        assert_eq!(found.hint, "did you mean `max_deletes`?");
    }

    #[test]
    fn an_unknown_key_in_a_user_file_suggests_the_closest() {
        let repo = Repo::with_users(&[("users/a.yaml", "defualts: {tier: free}\nusers: {}\n")]);
        let found = single(&repo);
        assert_eq!(
            (found.at.as_str(), found.message.as_str()),
            ("users/a.yaml:1:1", "unknown key `defualts` in a user file")
        );
        assert!(
            found.hint.starts_with("did you mean `defaults`?"),
            "{}",
            found.hint
        );
    }

    #[test]
    fn an_unknown_attribute_suggests_the_closest_listed_one() {
        let repo = Repo::with_users(&[(
            "users/a.yaml",
            "users:\n  Mary:\n    sex: female\n    ctiy: Boston\n",
        )]);
        let found = single(&repo);
        assert_eq!(
            (found.at.as_str(), found.message.as_str()),
            (
                "users/a.yaml:4:5",
                "unknown attribute `ctiy` in user `Mary`"
            )
        );
        assert_eq!(
            found.hint,
            "did you mean `city`? attrsync.yaml lists: sex, city, tier"
        );
    }

    #[test]
    fn an_attribute_twice_in_one_user_is_a_duplicate_key() {
        let repo = Repo::with_users(&[(
            "users/a.yaml",
            "users:\n  Mary:\n    city: NewYork\n    sex: female\n    city: Boston\n",
        )]);
        let found = single(&repo);
        assert_eq!(
            (found.at.as_str(), found.message.as_str()),
            ("users/a.yaml:5:5", "duplicate key `city` in user `Mary`")
        );
        assert_eq!(found.hint, "it is first set at line 3; keep one of the two");
    }

    #[test]
    fn a_user_declared_in_two_files_names_both_places() {
        let repo = Repo::with_users(&[
            (
                "users/eu.yaml",
                "users:\n  Ann: {city: Rome}\n  Mary: {city: Paris}\n",
            ),
            ("users/us.yaml", "users:\n  Mary: {city: Boston}\n"),
        ]);
        let found = single(&repo);
        assert_eq!(
            (found.at.as_str(), found.message.as_str()),
            ("users/us.yaml:2:3", "user `Mary` is declared twice")
        );
        assert_eq!(
            found.hint,
            "it is also declared at users/eu.yaml:3:3; keep one declaration"
        );
    }

    #[test]
    fn a_user_declared_twice_in_one_file_names_both_lines() {
        let repo = Repo::with_users(&[(
            "users/a.yaml",
            "users:\n  Mary: {city: Paris}\n  Mary: {city: Boston}\n",
        )]);
        let found = single(&repo);
        assert_eq!(
            (found.at.as_str(), found.message.as_str()),
            ("users/a.yaml:3:3", "user `Mary` is declared twice")
        );
        assert_eq!(
            found.hint,
            "it is also declared at users/a.yaml:2:3; keep one declaration"
        );
    }

    #[test]
    fn user_ids_are_non_empty_at_most_128_bytes_without_control_characters() {
        // 128 bytes: the docs' 36-byte RegistrationID example must pass (docs/api.md, "Limits").
        let text = format!(
            "users:\n  \"\": {{}}\n  {}: {{}}\n  \"tab\\there\": {{}}\n  {}: {{}}\n",
            "x".repeat(129),
            "y".repeat(128)
        );
        let repo = Repo::with_users(&[("users/a.yaml", &text)]);
        assert_eq!(
            located(&problems(&repo)),
            [
                "users/a.yaml:2:3 invalid user id \"\": a user id must not be empty",
                format!("users/a.yaml:3:3 invalid user id \"{}\": user id is 129 bytes long, at most 128 are allowed", "x".repeat(129)).as_str(),
                "users/a.yaml:4:3 invalid user id \"tab\\there\": a user id must not contain control characters",
            ]
        );
    }

    #[test]
    fn unquoted_values_that_yaml_reads_as_non_strings_must_be_quoted() {
        let repo = Repo::with_users(&[(
            "users/a.yaml",
            "users:\n  bob:\n    sex: NO\n    city: yes\n    tier: 1.0\n  carol:\n    sex: null\n    city: ~\n    tier: 123\n",
        )]);
        let found = problems(&repo);
        assert_eq!(
            located(&found),
            [
                "users/a.yaml:3:10 `sex` of user `bob` is `NO`, which YAML reads as a boolean, not a string",
                "users/a.yaml:4:11 `city` of user `bob` is `yes`, which YAML reads as a boolean, not a string",
                "users/a.yaml:5:11 `tier` of user `bob` is `1.0`, which YAML reads as a number, not a string",
                "users/a.yaml:7:10 `sex` of user `carol` is `null`, which YAML reads as null, not a string",
                "users/a.yaml:8:11 `city` of user `carol` is `~`, which YAML reads as null, not a string",
                "users/a.yaml:9:11 `tier` of user `carol` is `123`, which YAML reads as a number, not a string",
            ]
        );
        let hints: Vec<&str> = found.iter().map(|f| f.hint.as_str()).collect();
        assert_eq!(
            hints,
            [
                "quote it: sex: \"NO\"",
                "quote it: city: \"yes\"",
                "quote it: tier: \"1.0\"",
                "quote it: sex: \"null\"",
                "quote it: city: \"~\"",
                "quote it: tier: \"123\"",
            ]
        );
    }

    #[test]
    fn quoted_and_str_tagged_values_reach_the_plan_as_written() {
        let repo = Repo::with_users(&[(
            "users/a.yaml",
            "users:\n  bob:\n    sex: \"NO\"\n    city: !!str NO\n    tier: '1.0'\n",
        )]);
        repo.run(&["validate"]).success();
        let plan = repo.run(&["plan", "--format", "json"]).json();
        assert_eq!(
            plan["changes"][0]["attrs"],
            json!({
                "city": {"before": null, "after": "NO"},
                "sex": {"before": null, "after": "NO"},
                "tier": {"before": null, "after": "1.0"},
            })
        );
    }

    #[test]
    fn values_are_limited_to_50_bytes_not_characters() {
        let fifty = format!("{}ab", "中".repeat(16));
        let fifty_one = "中".repeat(17);
        let repo = Repo::with_users(&[(
            "users/a.yaml",
            &format!("users:\n  ok: {{city: {fifty}}}\n  long: {{city: {fifty_one}}}\n"),
        )]);
        let found = single(&repo);
        assert_eq!(found.at, "users/a.yaml:3:16");
        assert_eq!(
            found.message,
            "`city` of user `long`: value is 51 bytes long, at most 50 are allowed"
        );
    }

    #[test]
    fn at_most_ten_attribute_names() {
        let names: Vec<String> = (1..=11).map(|i| format!("a{i:02}")).collect();
        let settings = SETTINGS.replace("[sex, city, tier]", &format!("[{}]", names.join(", ")));
        let repo = Repo::with_users(&[("attrsync.yaml", &settings)]);
        let found = single(&repo);
        // `attributes: [` is 13 characters and each `aNN, ` is 5: the eleventh starts at 64.
        assert_eq!(found.at, "attrsync.yaml:4:64");
        assert_eq!(
            found.message,
            "`attributes` lists 11 names, an app has at most 10"
        );
    }

    #[test]
    fn attribute_names_are_listed_once_and_at_most_50_bytes() {
        let long = "n".repeat(51);
        let settings = SETTINGS.replace("[sex, city, tier]", &format!("[sex, city, sex, {long}]"));
        let repo = Repo::with_users(&[("attrsync.yaml", &settings)]);
        assert_eq!(
            located(&problems(&repo)),
            [
                "attrsync.yaml:4:25 attribute `sex` is listed twice",
                format!("attrsync.yaml:4:30 attribute name `{long}`: an attribute name must be 1 to 50 bytes long").as_str(),
            ]
        );
    }

    #[test]
    fn batch_size_and_rate_limit_must_be_between_1_and_100() {
        let repo = settings_plus("batch_size: 0\nrate_limit: 101\n");
        assert_eq!(
            located(&problems(&repo)),
            [
                "attrsync.yaml:5:13 `batch_size` is 0, it must be between 1 and 100",
                "attrsync.yaml:6:13 `rate_limit` is 101, it must be between 1 and 100",
            ]
        );
        let repo = settings_plus("batch_size: 101\nrate_limit: 0\n");
        assert_eq!(
            located(&problems(&repo)),
            [
                "attrsync.yaml:5:13 `batch_size` is 101, it must be between 1 and 100",
                "attrsync.yaml:6:13 `rate_limit` is 0, it must be between 1 and 100",
            ]
        );
        settings_plus("batch_size: 1\nrate_limit: 100\n")
            .run(&["validate"])
            .success();
    }

    #[test]
    fn an_unknown_region_lists_the_known_ones() {
        let repo =
            Repo::with_users(&[("attrsync.yaml", &SETTINGS.replace("singapore", "atlantis"))]);
        let found = single(&repo);
        assert_eq!(
            (found.at.as_str(), found.message.as_str()),
            ("attrsync.yaml:3:9", "unknown region `atlantis`")
        );
        assert_eq!(
            found.hint,
            "use one of: china, singapore, seoul, tokyo, frankfurt, silicon-valley, jakarta"
        );
    }

    #[test]
    fn region_and_endpoint_together_are_refused() {
        let found = single(&settings_plus("endpoint: http://127.0.0.1:8080\n"));
        assert_eq!(
            (found.at.as_str(), found.message.as_str()),
            (
                "attrsync.yaml:5:11",
                "set either `region` or `endpoint`, not both"
            )
        );
        assert_eq!(
            found.hint,
            "`endpoint` replaces `region`: remove one of them"
        );
    }

    #[test]
    fn every_missing_required_setting_is_named() {
        let repo = Repo::with_users(&[("attrsync.yaml", "prune: false\n")]);
        assert_eq!(
            located(&problems(&repo)),
            [
                "attrsync.yaml:1:1 `sdkappid` is required in attrsync.yaml",
                "attrsync.yaml:1:1 `identifier` is required in attrsync.yaml",
                "attrsync.yaml:1:1 `attributes` is required in attrsync.yaml",
                "attrsync.yaml:1:1 `region` is required in attrsync.yaml",
            ]
        );
    }

    #[test]
    fn a_directory_without_attrsync_yaml_is_not_a_config_repository() {
        let repo = Repo::new(&[("users/a.yaml", "users: {}\n")]);
        let out = repo.run(&["validate"]);
        out.expect_code(1);
        let dir = repo.dir().canonicalize().unwrap();
        assert_eq!(
            out.stdout,
            format!(
                "attrsync.yaml: not found in {}: this directory is not a config repository\n  \
                 help: run attrsync inside a config repository, or point --dir at one\n\
                 the config is invalid: 1 problem in 1 file; fix them and run again (nothing was planned or sent)\n",
                dir.display()
            )
        );
    }

    #[test]
    fn a_missing_users_directory_is_an_error() {
        let repo = Repo::new(&[("attrsync.yaml", SETTINGS)]);
        let found = single(&repo);
        assert_eq!(
            (found.at.as_str(), found.message.as_str()),
            ("users", "the users directory does not exist")
        );
        assert_eq!(found.hint, "create it, or set `users_dir` in attrsync.yaml");
        let elsewhere = Repo::new(&[("attrsync.yaml", &format!("{SETTINGS}users_dir: people\n"))]);
        assert_eq!(single(&elsewhere).at, "people");
    }

    #[test]
    fn users_dir_points_anywhere_inside_the_repository() {
        let repo = Repo::new(&[
            ("attrsync.yaml", &format!("{SETTINGS}users_dir: people\n")),
            ("people/a.yaml", "users:\n  Ann: {city: Rome}\n"),
        ]);
        assert_valid(&repo, 1, 1);
    }

    #[test]
    fn all_problems_of_all_files_in_one_run_in_file_order() {
        let repo = Repo::with_users(&[
            ("attrsync.yaml", &format!("{SETTINGS}batch_size: 0\n")),
            (
                "users/a.yaml",
                "users:\n  Ann:\n    sex: NO\n    colour: red\n    city: Rome\n    city: Oslo\n  \"\": {city: Rome}\n  Bob: {tier: 1.5}\n",
            ),
            ("users/b.yaml", "usres: {}\n"),
        ]);
        let out = repo.run(&["validate"]);
        out.expect_code(1);
        insta::assert_snapshot!(out.stdout, @r#"
        attrsync.yaml:5:13: `batch_size` is 0, it must be between 1 and 100
        users/a.yaml:3:10: `sex` of user `Ann` is `NO`, which YAML reads as a boolean, not a string
          help: quote it: sex: "NO"
        users/a.yaml:4:5: unknown attribute `colour` in user `Ann`
          help: attrsync.yaml lists: sex, city, tier; add it to `attributes` if the app has it
        users/a.yaml:6:5: duplicate key `city` in user `Ann`
          help: it is first set at line 5; keep one of the two
        users/a.yaml:7:3: invalid user id "": a user id must not be empty
        users/a.yaml:8:15: `tier` of user `Bob` is `1.5`, which YAML reads as a number, not a string
          help: quote it: tier: "1.5"
        users/b.yaml:1:1: unknown key `usres` in a user file
          help: did you mean `users`? a user file has only `defaults:` and `users:`
        the config is invalid: 7 problems in 3 files; fix them and run again (nothing was planned or sent)
        "#);
    }
}

mod hostile_files {
    use super::*;

    #[test]
    fn an_alias_bomb_is_refused_without_expanding_it() {
        let mut bomb = String::from("users:\n  l0: &l0 {city: lol}\n");
        for level in 1..=9 {
            let refs = vec![format!("*l{}", level - 1); 10].join(", ");
            bomb.push_str(&format!("  l{level}: &l{level} [{refs}]\n"));
        }
        bomb.push_str("  boom: *l9\n");
        let repo = Repo::with_users(&[("users/bomb.yaml", &bomb)]);
        let found = problems(&repo);
        let last = found.last().unwrap();
        assert_eq!(
            (last.at.as_str(), last.message.as_str()),
            (
                "users/bomb.yaml:12:9",
                "YAML aliases (`*name`) are not supported"
            )
        );
        assert_eq!(
            last.hint,
            "write the values out, or put shared attributes under `defaults:`"
        );
    }

    #[test]
    fn twenty_thousand_nested_brackets_are_a_syntax_error() {
        let repo =
            Repo::with_users(&[("users/deep.yaml", &format!("users: {}", "[".repeat(20_000)))]);
        let found = problems(&repo);
        let last = found.last().unwrap();
        assert!(last.at.starts_with("users/deep.yaml:1:"), "{}", last.at);
        assert_eq!(last.message, "YAML syntax error: recursion limit exceeded");
    }

    #[test]
    fn twenty_thousand_nested_braces_are_a_syntax_error() {
        let repo =
            Repo::with_users(&[("users/deep.yaml", &format!("users: {}", "{".repeat(20_000)))]);
        let found = single(&repo);
        assert!(found.at.starts_with("users/deep.yaml:1:"), "{}", found.at);
        assert_eq!(found.message, "YAML syntax error: recursion limit exceeded");
    }

    #[test]
    fn a_non_utf8_byte_is_located_exactly() {
        let repo = Repo::with_users(&[]);
        repo.write("users/latin1.yaml", b"users:\n  Mary:\n    city: caf\xe9\n");
        let found = single(&repo);
        assert_eq!(
            (found.at.as_str(), found.message.as_str()),
            ("users/latin1.yaml:3:14", "the file is not valid UTF-8")
        );
        assert_eq!(found.hint, "save it as UTF-8");
    }

    #[test]
    fn a_list_or_a_scalar_is_not_a_user_file() {
        let repo = Repo::with_users(&[
            ("users/list.yaml", "- Mary\n- Bob\n"),
            ("users/scalar.yaml", "Mary\n"),
        ]);
        assert_eq!(
            located(&problems(&repo)),
            [
                "users/list.yaml:1:1 the user file must be a mapping, found a list",
                "users/scalar.yaml:1:1 the user file must be a mapping, found a string",
            ]
        );
    }

    #[test]
    fn an_empty_user_file_is_valid_and_declares_no_one() {
        let repo = Repo::with_users(&[
            ("users/empty.yaml", ""),
            ("users/a.yaml", "users:\n  Ann: {city: Rome}\n"),
        ]);
        assert_valid(&repo, 1, 2);
    }

    #[test]
    fn a_second_yaml_document_is_refused() {
        let repo = Repo::with_users(&[(
            "users/two.yaml",
            "users:\n  Ann: {city: Rome}\n---\nusers:\n  Zed: {city: Oslo}\n",
        )]);
        let found = single(&repo);
        assert_eq!(
            (found.at.as_str(), found.message.as_str()),
            (
                "users/two.yaml:3:1",
                "a second YAML document in the same file"
            )
        );
    }

    #[test]
    fn tabs_and_bad_indentation_are_syntax_errors_on_their_line() {
        let repo = Repo::with_users(&[
            (
                "users/indent.yaml",
                "users:\n  Cy:\n    city: Rome\n   sex: male\n",
            ),
            ("users/tabs.yaml", "users:\n\tBob:\n\t\tcity: Rome\n"),
        ]);
        let found = problems(&repo);
        assert_eq!(found.len(), 2, "{found:#?}");
        assert_eq!(found[0].at, "users/indent.yaml:4:4");
        assert_eq!(
            found[0].message,
            "YAML syntax error: while parsing a block mapping, did not find expected key"
        );
        assert!(
            found[1].at.starts_with("users/tabs.yaml:2:"),
            "{}",
            found[1].at
        );
        assert!(
            found[1].message.contains("tabs disallowed"),
            "{}",
            found[1].message
        );
        assert_eq!(
            found[1].hint,
            "check indentation, unclosed quotes and brackets around this place"
        );
    }

    #[test]
    fn a_symlink_loop_to_the_users_directory_ends() {
        let repo = Repo::with_users(&[("users/a.yaml", "users:\n  Ann: {city: Rome}\n")]);
        std::os::unix::fs::symlink(".", repo.path("users/self")).unwrap();
        std::os::unix::fs::symlink("..", repo.path("users/team-link")).unwrap();
        std::fs::create_dir(repo.path("users/team")).unwrap();
        std::os::unix::fs::symlink("..", repo.path("users/team/up")).unwrap();
        std::os::unix::fs::symlink("nowhere.yaml", repo.path("users/dangling.yaml")).unwrap();
        // `users/team-link -> ..` is the repository root: its attrsync.yaml is not a user file,
        // and saying so (with the path the link makes) is the right answer. The walk ends.
        let found = problems(&repo);
        assert_eq!(found[0].at, "users/team-link/attrsync.yaml:1:1");
        assert_eq!(found[0].message, "unknown key `sdkappid` in a user file");
        assert!(
            found
                .iter()
                .all(|f| f.at.starts_with("users/team-link/attrsync.yaml:")),
            "{found:#?}"
        );
    }

    #[test]
    fn a_symlink_back_into_users_reads_each_file_once() {
        let repo = Repo::with_users(&[("users/a.yaml", "users:\n  Ann: {city: Rome}\n")]);
        std::os::unix::fs::symlink(".", repo.path("users/loop")).unwrap();
        std::fs::create_dir(repo.path("users/team")).unwrap();
        std::os::unix::fs::symlink("..", repo.path("users/team/up")).unwrap();
        assert_valid(&repo, 1, 1);
    }

    #[test]
    fn hidden_files_and_other_extensions_are_skipped_yml_and_nested_folders_are_read() {
        let broken = "users: [\n";
        let repo = Repo::with_users(&[
            ("users/a.yml", "users:\n  Ann: {city: Rome}\n"),
            ("users/team/eu/b.yaml", "users:\n  Bob: {city: Oslo}\n"),
            ("users/.#lock.yaml", broken),
            ("users/.hidden/c.yaml", broken),
            ("users/notes.txt", broken),
            ("users/a.yaml~", broken),
        ]);
        assert_valid(&repo, 2, 2);
        let plan = repo.run(&["plan", "--format", "json"]).json();
        let users: Vec<&str> = plan["changes"]
            .as_array()
            .unwrap()
            .iter()
            .map(|c| c["user"].as_str().unwrap())
            .collect();
        assert_eq!(users, ["Ann", "Bob"]);
    }
}

mod formats {
    use super::*;

    fn broken() -> Repo {
        Repo::with_users(&[
            ("users/a.yaml", "users:\n  bob:\n    sex: NO\n"),
            ("users/b.yaml", "users:\n  Ann: {colour: red}\n"),
        ])
    }

    #[test]
    fn json_lists_every_diagnostic_with_file_line_column_message_hint() {
        let out = broken().run(&["validate", "--format", "json"]);
        out.expect_code(1);
        assert_eq!(out.stderr, "");
        assert_eq!(
            out.json(),
            json!({
                "format_version": 1,
                "valid": false,
                "error_count": 2,
                "users": null,
                "files": null,
                "diagnostics": [
                    {
                        "severity": "error",
                        "file": "users/a.yaml",
                        "line": 3,
                        "column": 10,
                        "message": "`sex` of user `bob` is `NO`, which YAML reads as a boolean, not a string",
                        "hint": "quote it: sex: \"NO\""
                    },
                    {
                        "severity": "error",
                        "file": "users/b.yaml",
                        "line": 2,
                        "column": 9,
                        "message": "unknown attribute `colour` in user `Ann`",
                        "hint": "attrsync.yaml lists: sex, city, tier; add it to `attributes` if the app has it"
                    }
                ]
            })
        );
    }

    #[test]
    fn json_for_a_valid_repository() {
        let repo = Repo::with_users(&[("users/a.yaml", "users:\n  Ann: {city: Rome}\n")]);
        let out = repo.run(&["validate", "--format", "json"]);
        out.success();
        assert_eq!(
            out.json(),
            json!({"format_version": 1, "valid": true, "error_count": 0, "users": 1, "files": 1, "diagnostics": []})
        );
    }

    #[test]
    fn json_for_a_problem_with_a_whole_file_has_null_line_and_column() {
        let out = Repo::new(&[("attrsync.yaml", SETTINGS)]).run(&["validate", "--format", "json"]);
        out.expect_code(1);
        let diagnostic = &out.json()["diagnostics"][0];
        assert_eq!(
            (
                &diagnostic["file"],
                &diagnostic["line"],
                &diagnostic["column"]
            ),
            (&json!("users"), &json!(null), &json!(null))
        );
    }

    #[test]
    fn github_writes_one_workflow_annotation_per_problem() {
        let out = broken().run(&["validate", "--format", "github"]);
        out.expect_code(1);
        assert_eq!(
            out.stdout,
            "::error file=users/a.yaml,line=3,col=10::`sex` of user `bob` is `NO`, which YAML reads as a boolean, not a string (quote it: sex: \"NO\")\n\
             ::error file=users/b.yaml,line=2,col=9::unknown attribute `colour` in user `Ann` (attrsync.yaml lists: sex, city, tier; add it to `attributes` if the app has it)\n"
        );
    }

    #[test]
    fn github_escapes_commas_and_colons_in_file_names() {
        let repo = Repo::with_users(&[("users/eu,us:2024.yaml", "users:\n  bob: {sex: NO}\n")]);
        let out = repo.run(&["validate", "--format", "github"]);
        out.expect_code(1);
        assert!(
            out.stdout
                .starts_with("::error file=users/eu%2Cus%3A2024.yaml,line=2,col=14::"),
            "{}",
            out.stdout
        );
    }

    #[test]
    fn github_for_a_valid_repository_exits_0() {
        let repo = Repo::with_users(&[("users/a.yaml", "users:\n  Ann: {city: Rome}\n")]);
        assert_eq!(
            repo.run(&["validate", "--format", "github"])
                .success()
                .stdout,
            "The config is valid.\n"
        );
    }

    /// A git work tree whose config repository is in `sub/`, with a bad user file.
    fn nested() -> Repo {
        let repo = Repo::new(&[
            ("sub/attrsync.yaml", common::SETTINGS),
            ("sub/users/a.yaml", "users:\n  bob: {sex: NO}\n"),
        ]);
        let init = std::process::Command::new("git")
            .args(["init", "-q"])
            .current_dir(repo.dir())
            .status()
            .expect("git runs");
        assert!(init.success());
        repo
    }

    #[test]
    fn github_paths_are_relative_to_the_git_work_tree() {
        let repo = nested();
        for dir in ["sub", "sub/", "./sub/users/.."] {
            let mut command = repo.command(&["--dir", dir, "validate", "--format", "github"]);
            command.env_remove("GITHUB_WORKSPACE");
            let out = common::run(command);
            out.expect_code(1);
            assert!(
                out.stdout
                    .starts_with("::error file=sub/users/a.yaml,line=2,col=14::"),
                "{dir}: {}",
                out.stdout
            );
        }
    }

    #[test]
    fn github_paths_are_relative_to_github_workspace_in_a_workflow() {
        let repo = nested();
        let sub = repo.path("sub");
        let mut command = repo.command(&[
            "--dir",
            sub.to_str().unwrap(),
            "validate",
            "--format",
            "github",
        ]);
        command.env("GITHUB_WORKSPACE", repo.dir());
        command.current_dir(repo.path("sub/users"));
        let out = common::run(command);
        out.expect_code(1);
        assert!(
            out.stdout
                .starts_with("::error file=sub/users/a.yaml,line=2,col=14::"),
            "{}",
            out.stdout
        );
    }

    #[test]
    fn dir_flag_reports_paths_relative_to_the_repository() {
        let repo = broken();
        let elsewhere = tempfile::tempdir().unwrap();
        let mut command = repo.command(&[
            "--dir",
            repo.dir().to_str().unwrap(),
            "validate",
            "--format",
            "github",
        ]);
        command.current_dir(elsewhere.path());
        let out = common::run(command);
        out.expect_code(1);
        assert!(
            out.stdout
                .starts_with("::error file=users/a.yaml,line=3,col=10::"),
            "{}",
            out.stdout
        );
    }
}

#[test]
fn an_endpoint_over_plain_http_to_another_machine_is_refused() {
    let settings = SETTINGS.replace("region: singapore", "endpoint: http://203.0.113.7:8080");
    assert_ne!(
        settings, SETTINGS,
        "the settings name an endpoint to replace"
    );
    let repo = Repo::new(&[("attrsync.yaml", &settings)]);
    repo.mkdir("users");
    let found = problems(&repo);
    assert_eq!(found.len(), 1, "{found:?}");
    assert!(
        found[0]
            .message
            .contains("over plain HTTP to another machine"),
        "{found:?}"
    );
    assert!(found[0].hint.contains("https://"), "{found:?}");
}

/// The JSON Schemas (`attrsync schema`, `schema/`) against the examples and against what
/// `validate` refuses.
mod schema {
    use serde_json::{json, Value};

    use crate::common::{yaml, Repo};

    /// Checks `value` against the subset of JSON Schema 2020-12 the schemas use; returns the
    /// problems, each with its JSON pointer. (A full validator crate would pull a regex engine
    /// and an HTTP client into the tests for keywords these schemas never use.)
    fn check(schema: &Value, value: &Value, at: &str, problems: &mut Vec<String>) {
        let mut fail = |why: String| problems.push(format!("{at}: {why}"));
        if let Some(kind) = schema["type"].as_str() {
            let ok = match kind {
                "object" => value.is_object(),
                "array" => value.is_array(),
                "string" => value.is_string(),
                "integer" => value.is_i64() || value.is_u64(),
                "boolean" => value.is_boolean(),
                other => panic!("unsupported type {other}"),
            };
            if !ok {
                fail(format!("{value} is not of type {kind}"));
                return;
            }
        }
        if let Some(options) = schema["enum"].as_array() {
            if !options.contains(value) {
                fail(format!("{value} is not one of {options:?}"));
            }
        }
        if let Some(text) = value.as_str() {
            let len = text.chars().count() as u64;
            if schema["minLength"].as_u64().is_some_and(|min| len < min) {
                fail(format!("{value} is too short"));
            }
            if schema["maxLength"].as_u64().is_some_and(|max| len > max) {
                fail(format!("{value} is too long"));
            }
        }
        if let Some(n) = value.as_i64() {
            if schema["minimum"].as_i64().is_some_and(|min| n < min) {
                fail(format!("{n} is below the minimum"));
            }
            if schema["maximum"].as_u64().is_some_and(|max| n as u64 > max) {
                fail(format!("{n} is above the maximum"));
            }
        }
        if let Some(items) = value.as_array() {
            if schema["maxItems"]
                .as_u64()
                .is_some_and(|max| items.len() as u64 > max)
            {
                fail(format!(
                    "{} items, at most {}",
                    items.len(),
                    schema["maxItems"]
                ));
            }
            if schema["minItems"]
                .as_u64()
                .is_some_and(|min| (items.len() as u64) < min)
            {
                fail(format!(
                    "{} items, at least {}",
                    items.len(),
                    schema["minItems"]
                ));
            }
            if schema["uniqueItems"] == json!(true) {
                for (i, item) in items.iter().enumerate() {
                    if items[..i].contains(item) {
                        fail(format!("{item} is repeated"));
                    }
                }
            }
            for (i, item) in items.iter().enumerate() {
                check(&schema["items"], item, &format!("{at}/{i}"), problems);
            }
        }
        if let Some(object) = value.as_object() {
            for name in schema["required"].as_array().into_iter().flatten() {
                if !object.contains_key(name.as_str().unwrap()) {
                    problems.push(format!("{at}: {name} is required"));
                }
            }
            for (key, item) in object {
                let at = format!("{at}/{key}");
                if !schema["propertyNames"].is_null() {
                    check(&schema["propertyNames"], &json!(key), &at, problems);
                }
                match (&schema["properties"][key], &schema["additionalProperties"]) {
                    (Value::Null, Value::Bool(false)) => {
                        problems.push(format!("{at}: not allowed"));
                    }
                    (Value::Null, Value::Object(_)) => {
                        check(&schema["additionalProperties"], item, &at, problems)
                    }
                    (Value::Null, _) => {}
                    (property, _) => check(property, item, &at, problems),
                }
            }
            if let Some(options) = schema["oneOf"].as_array() {
                let passing = options
                    .iter()
                    .filter(|o| {
                        let mut p = Vec::new();
                        check(o, value, at, &mut p);
                        p.is_empty()
                    })
                    .count();
                if passing != 1 {
                    problems.push(format!("{at}: {passing} of oneOf {options:?} hold, not 1"));
                }
            }
            if !schema["not"].is_null() {
                let mut p = Vec::new();
                check(&schema["not"], value, at, &mut p);
                if p.is_empty() {
                    problems.push(format!("{at}: matches {}", schema["not"]));
                }
            }
        }
    }

    fn problems(schema: &Value, value: &Value) -> Vec<String> {
        let mut found = Vec::new();
        check(schema, value, "", &mut found);
        found
    }

    fn committed(name: &str) -> Value {
        let path = format!("{}/schema/{name}", env!("CARGO_MANIFEST_DIR"));
        serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap()
    }

    fn example(path: &str) -> String {
        std::fs::read_to_string(format!("{}/examples/{path}", env!("CARGO_MANIFEST_DIR"))).unwrap()
    }

    #[test]
    fn the_examples_validate_against_the_schemas_they_name() {
        let config = committed("attrsync.schema.json");
        let users = committed("users.schema.json");
        for (path, schema, name) in [
            ("attrsync.full.yaml", &config, "attrsync.schema.json"),
            ("quickstart/attrsync.yaml", &config, "attrsync.schema.json"),
            (
                "quickstart/users/customers.yaml",
                &users,
                "users.schema.json",
            ),
            ("quickstart/users/trial.yaml", &users, "users.schema.json"),
            (
                "quickstart/users/teams/support.yaml",
                &users,
                "users.schema.json",
            ),
        ] {
            let text = example(path);
            let modeline = text.lines().next().unwrap();
            assert!(
                modeline.starts_with("# yaml-language-server: $schema=")
                    && modeline.ends_with(name),
                "{path}: {modeline}"
            );
            // The relative path in the modeline leads to the schema.
            let relative = modeline.split("$schema=").nth(1).unwrap();
            let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
                .join("examples")
                .join(path);
            assert!(
                dir.parent().unwrap().join(relative).is_file(),
                "{path}: {relative}"
            );
            assert_eq!(
                problems(schema, &yaml(&text)),
                Vec::<String>::new(),
                "{path}"
            );
        }
    }

    #[test]
    fn the_schemas_catch_what_validate_refuses() {
        let config = committed("attrsync.schema.json");
        let users = committed("users.schema.json");
        for (text, why) in [
            (
                "sdkappid: 1\nidentifier: a\nattributes: [x]\n",
                "neither region nor endpoint",
            ),
            (
                "sdkappid: 1\nidentifier: a\nregion: mars\nattributes: [x]\n",
                "an unknown region",
            ),
            (
                "sdkappid: 1\nidentifier: a\nregion: tokyo\nendpoint: embedded\nattributes: [x]\n",
                "both",
            ),
            (
                "sdkappid: 1\nidentifier: a\nregion: tokyo\nattributes: [x]\nrate_limit: 500\n",
                "rate_limit",
            ),
            (
                "sdkappid: 1\nidentifier: a\nregion: tokyo\nattributes: [x]\nprun: true\n",
                "a typo",
            ),
            (
                "sdkappid: 1\nidentifier: a\nregion: tokyo\nattributes: [x, x]\n",
                "a repeated name",
            ),
        ] {
            assert!(!problems(&config, &yaml(text)).is_empty(), "{why}");
            // And validate agrees.
            let repo = Repo::new(&[("attrsync.yaml", text)]);
            repo.mkdir("users");
            assert_eq!(repo.run(&["validate"]).code, 1, "{why}");
        }
        for (text, why) in [
            // (`NO` is text to YAML 1.2, which editors speak: only validate sees it.)
            ("users:\n  bob: {vip: true}\n", "a boolean value"),
            ("users:\n  bob: {age: 30}\n", "a number"),
            ("users:\n  bob: {city: \"\"}\n", "an empty value"),
            (
                &format!("users:\n  bob: {{city: {}}}\n", "x".repeat(51)),
                "a long value",
            ),
            ("defaults: {tier: free}\n", "no users"),
            ("users: {}\nextra: 1\n", "an unknown key"),
        ] {
            assert!(!problems(&users, &yaml(text)).is_empty(), "{why}");
        }
        assert!(problems(&users, &yaml("users:\n  bob: {sex: \"NO\", age: \"30\"}\n")).is_empty());
    }

    #[test]
    fn attrsync_schema_prints_the_committed_files() {
        let repo = Repo::new(&[]);
        for (of, file) in [
            ("config", "attrsync.schema.json"),
            ("users", "users.schema.json"),
        ] {
            let out = repo.run(&["schema", of]);
            out.success();
            assert_eq!(
                serde_json::from_str::<Value>(&out.stdout).unwrap(),
                committed(file)
            );
        }
    }
}
