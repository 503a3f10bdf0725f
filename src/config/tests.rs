//! The pure half of the config loader: user files, `attrsync.yaml` and scalar resolution read
//! from text, with every problem's exact position. No files, no temp dirs.

use std::path::{Path, PathBuf};

use super::settings::{self, Settings, Target};
use super::users::{self, ParsedFile};
use super::yaml::{Pos, Problem, Resolved};
use super::{closest, to_text, Diagnostic, Diagnostics, ReadError};
use crate::model::{AttrName, Region, StateLocation};

fn names(list: &[&str]) -> Vec<AttrName> {
    list.iter().map(|n| AttrName::new(n).unwrap()).collect()
}

/// Reads a user file against the attributes of the usual app: sex, city, tier.
fn user_file(text: &str) -> ParsedFile {
    users::parse(text, Some(&names(&["sex", "city", "tier"])))
}

/// Each declared user as `(id, [(name, value)])`, in the file's (sorted) order.
fn declared(file: &ParsedFile) -> Vec<(&str, Vec<(&str, &str)>)> {
    file.users
        .iter()
        .map(|u| {
            (
                u.id.as_str(),
                u.attrs
                    .iter()
                    .map(|(n, v)| (n.as_str(), v.as_str()))
                    .collect(),
            )
        })
        .collect()
}

/// Each problem as `line:column message`, so whole lists compare at once.
fn located(problems: &[Problem]) -> Vec<String> {
    problems
        .iter()
        .map(|p| format!("{}:{} {}", p.pos.line, p.pos.column, p.message))
        .collect()
}

/// The only problem in `problems`.
#[track_caller]
fn single(problems: &[Problem]) -> &Problem {
    assert_eq!(
        problems.len(),
        1,
        "expected exactly one problem: {:#?}",
        problems
    );
    &problems[0]
}

fn at(line: u32, column: u32) -> Pos {
    Pos { line, column }
}

mod user_files {
    use super::*;

    #[test]
    fn reads_block_and_flow_users_with_defaults_and_positions() {
        let file = user_file(
            "\
defaults:
  tier: free
users:
  Mary:
    sex: female
    city: NewYork
  xiaoming: {sex: male, city: ShenZhen, tier: gold}
",
        );
        assert_eq!(file.problems, []);
        assert_eq!(
            declared(&file),
            [
                (
                    "Mary",
                    vec![("city", "NewYork"), ("sex", "female"), ("tier", "free")]
                ),
                (
                    "xiaoming",
                    vec![("city", "ShenZhen"), ("sex", "male"), ("tier", "gold")]
                ),
            ]
        );
        let positions: Vec<Pos> = file.users.iter().map(|u| u.pos).collect();
        assert_eq!(positions, [at(4, 3), at(7, 3)]);
    }

    #[test]
    fn a_users_own_value_wins_over_the_default_wherever_defaults_are_written() {
        // `defaults:` after `users:` still applies, and still loses to the user's own value.
        let file = user_file(
            "users:\n  Ann: {tier: gold}\n  Bob: {}\ndefaults: {tier: free, city: Rome}\n",
        );
        assert_eq!(file.problems, []);
        assert_eq!(
            declared(&file),
            [
                ("Ann", vec![("city", "Rome"), ("tier", "gold")]),
                ("Bob", vec![("city", "Rome"), ("tier", "free")])
            ]
        );
    }

    #[test]
    fn defaults_alone_declare_no_user() {
        let file = user_file("defaults:\n  tier: free\n");
        assert_eq!(file, ParsedFile::default());
    }

    #[test]
    fn an_empty_file_or_a_comment_declares_nothing() {
        for text in ["", "\n\n", "# nobody here yet\n"] {
            assert_eq!(user_file(text), ParsedFile::default(), "{text:?}");
        }
    }

    #[test]
    fn the_norway_problem_unquoted_non_strings_must_be_quoted() {
        // Each value sits at line 2, column 15: `  Ann: {city: ` is 14 characters.
        for (value, reads_as) in [
            ("NO", "a boolean"),
            ("yes", "a boolean"),
            ("on", "a boolean"),
            ("1.0", "a number"),
            ("123", "a number"),
            ("0x1F", "a number"),
            ("1e3", "a number"),
            ("null", "null"),
            ("~", "null"),
        ] {
            let file = user_file(&format!("users:\n  Ann: {{city: {value}}}\n"));
            let problem = single(&file.problems);
            assert_eq!(problem.pos, at(2, 15), "{value}");
            assert_eq!(
                problem.message,
                format!("`city` of user `Ann` is `{value}`, which YAML reads as {reads_as}, not a string")
            );
            assert_eq!(
                problem.hint.as_deref(),
                Some(format!("quote it: city: \"{value}\"").as_str())
            );
            assert_eq!(
                declared(&file),
                [("Ann", vec![])],
                "the bad value is dropped, the user kept"
            );
        }
    }

    #[test]
    fn a_value_with_nothing_after_the_colon_is_null() {
        let file = user_file("users:\n  Ann:\n    city:\n");
        assert_eq!(
            located(&file.problems),
            ["3:9 `city` of user `Ann` is ``, which YAML reads as null, not a string"]
        );
    }

    #[test]
    fn quoted_tagged_and_block_scalars_are_strings() {
        let file = user_file(
            "\
users:
  Ann:
    sex: \"NO\"
    city: 'yes'
    tier: !!str 1.0
  Bob:
    city: |-
      null
",
        );
        assert_eq!(file.problems, []);
        assert_eq!(
            declared(&file),
            [
                ("Ann", vec![("city", "yes"), ("sex", "NO"), ("tier", "1.0")]),
                ("Bob", vec![("city", "null")])
            ]
        );
    }

    /// Regression: `!!int` was reported as `tag:yaml.org,2002:!int`, a spelling nobody wrote.
    #[test]
    fn other_tags_are_refused_and_named_as_written() {
        let file = user_file("users:\n  Ann: {city: !!int 5, sex: !custom x}\n");
        assert_eq!(
            located(&file.problems),
            [
                "2:15 `city` of user `Ann` has the tag `!!int`, which attrsync does not use",
                "2:29 `sex` of user `Ann` has the tag `!custom`, which attrsync does not use",
            ]
        );
        assert_eq!(
            file.problems[0].hint.as_deref(),
            Some("remove the tag and quote the value")
        );
    }

    #[test]
    fn values_are_limited_to_50_bytes_not_50_characters() {
        let fifty = format!("{}ab", "中".repeat(16)); // 16 × 3 + 2 bytes
        let fifty_one = "中".repeat(17); // 17 characters, 51 bytes
        let file = user_file(&format!(
            "users:\n  Ann: {{city: {fifty}}}\n  Bob: {{city: {fifty_one}}}\n"
        ));
        assert_eq!(
            located(&file.problems),
            ["3:15 `city` of user `Bob`: value is 51 bytes long, at most 50 are allowed"]
        );
        assert_eq!(
            declared(&file),
            [("Ann", vec![("city", fifty.as_str())]), ("Bob", vec![])]
        );
    }

    #[test]
    fn a_block_scalar_at_the_end_of_a_file_without_a_final_newline_has_no_line_break() {
        for text in [
            "users:\n  Ann:\n    tier: |\n      gold",
            "users:\n  Ann:\n    tier: >\n      gold",
            "users:\n  Ann:\n    tier: |+\n      gold",
            "users:\n  Ann:\n    tier: |-\n      gold",
            "users:\n  Ann:\n    tier: |-\n      gold\n",
        ] {
            let file = user_file(text);
            assert_eq!(file.problems, [], "{text:?}");
            assert_eq!(
                declared(&file),
                [("Ann", vec![("tier", "gold")])],
                "{text:?}"
            );
        }
    }

    #[test]
    fn a_line_break_inside_a_value_is_refused_at_its_place() {
        // A clipped block scalar keeps its final line break: a value cannot hold one.
        let file = user_file("users:\n  Ann:\n    tier: |\n      gold\n  Bob: {city: \"a\\nb\"}\n");
        assert_eq!(
            located(&file.problems),
            [
                "4:7 `tier` of user `Ann`: an attribute value must not contain control characters (found a line break (\\n))",
                "5:15 `city` of user `Bob`: an attribute value must not contain control characters (found a line break (\\n))",
            ]
        );
    }

    #[test]
    fn an_empty_quoted_value_is_refused() {
        let file = user_file("users:\n  Ann: {city: \"\"}\n");
        assert_eq!(
            located(&file.problems),
            ["2:15 `city` of user `Ann`: an attribute value must not be empty"]
        );
    }

    #[test]
    fn an_unknown_attribute_suggests_the_closest_listed_name() {
        let file = user_file("users:\n  Ann:\n    citty: Rome\n    colour: red\n");
        assert_eq!(
            located(&file.problems),
            [
                "3:5 unknown attribute `citty` in user `Ann`",
                "4:5 unknown attribute `colour` in user `Ann`"
            ]
        );
        assert_eq!(
            file.problems[0].hint.as_deref(),
            Some("did you mean `city`? attrsync.yaml lists: sex, city, tier")
        );
        assert_eq!(
            file.problems[1].hint.as_deref(),
            Some("attrsync.yaml lists: sex, city, tier; add it to `attributes` if the app has it")
        );
    }

    #[test]
    fn an_unknown_attribute_in_defaults_is_reported_too() {
        let file = user_file("defaults:\n  teir: gold\n");
        assert_eq!(
            located(&file.problems),
            ["2:3 unknown attribute `teir` in defaults"]
        );
    }

    #[test]
    fn an_attribute_twice_in_one_user_is_a_duplicate_key() {
        let file = user_file("users:\n  erin:\n    city: a\n    sex: f\n    city: b\n");
        let problem = single(&file.problems);
        assert_eq!(problem.pos, at(5, 5));
        assert_eq!(problem.message, "duplicate key `city` in user `erin`");
        assert_eq!(
            problem.hint.as_deref(),
            Some("it is first set at line 3; keep one of the two")
        );
        assert_eq!(
            declared(&file),
            [("erin", vec![("city", "a"), ("sex", "f")])],
            "the first value is kept"
        );
    }

    #[test]
    fn duplicates_are_found_in_mappings_longer_than_the_short_key_list() {
        // Past 16 keys the reader moves from a list to a hash map: repeats on both sides.
        let mut text = String::from("users:\n  erin:\n");
        for i in 0..20 {
            text.push_str(&format!("    a{i}: v\n"));
        }
        text.push_str("    a3: again\n    a19: again\n");
        let file = users::parse(&text, None);
        assert_eq!(
            located(&file.problems),
            [
                "23:5 duplicate key `a3` in user `erin`",
                "24:5 duplicate key `a19` in user `erin`"
            ]
        );
        assert_eq!(
            file.problems[0].hint.as_deref(),
            Some("it is first set at line 6; keep one of the two")
        );
        assert_eq!(file.users[0].attrs.len(), 20);
    }

    #[test]
    fn a_key_twice_in_defaults_or_at_the_top_is_a_duplicate_key() {
        let file = user_file("defaults: {tier: a, tier: b}\nusers: {}\nusers: {}\n");
        assert_eq!(
            located(&file.problems),
            [
                "1:21 duplicate key `tier` in `defaults`",
                "3:1 duplicate key `users` in the user file"
            ]
        );
    }

    #[test]
    fn a_user_twice_in_one_file_is_left_for_the_loader_to_report() {
        // The loader sorts users across all files and reports repeats with both places.
        let file = user_file("users:\n  Ann: {city: a}\n  Ann: {city: b}\n");
        assert_eq!(file.problems, []);
        let ids: Vec<(&str, Pos)> = file.users.iter().map(|u| (u.id.as_str(), u.pos)).collect();
        assert_eq!(ids, [("Ann", at(2, 3)), ("Ann", at(3, 3))]);
    }

    #[test]
    fn user_ids_are_non_empty_at_most_128_bytes_without_control_characters() {
        let file = user_file(&format!(
            "users:\n  \"\": {{}}\n  {}: {{}}\n  {}: {{}}\n  \"a\\tb\": {{}}\n  {}: {{}}\n  379C2F0D-7E9A-4F5C-9B1A-2D3E4F5A6B7C: {{}}\n",
            "x".repeat(129),
            "中".repeat(43),
            "x".repeat(128),
        ));
        assert_eq!(
            located(&file.problems),
            [
                "2:3 invalid user id \"\": a user id must not be empty".to_owned(),
                format!("3:3 invalid user id \"{}\": user id is 129 bytes long, at most 128 are allowed", "x".repeat(129)),
                format!("4:3 invalid user id \"{}\": user id is 129 bytes long, at most 128 are allowed", "中".repeat(43)),
                "5:3 invalid user id \"a\\tb\": a user id must not contain control characters".to_owned(),
            ]
        );
        // A 36-byte push RegistrationID, as in the API's own example, is a valid id.
        assert_eq!(
            declared(&file),
            [
                ("379C2F0D-7E9A-4F5C-9B1A-2D3E4F5A6B7C", vec![]),
                ("x".repeat(128).as_str(), vec![])
            ]
        );
    }

    #[test]
    fn user_ids_that_yaml_reads_as_non_strings_must_be_quoted_except_plain_integers() {
        let file = user_file("users:\n  yes: {}\n  0123: {}\n  10001: {}\n  \"no\": {}\n");
        assert_eq!(
            located(&file.problems),
            [
                "2:3 user id `yes` is read as a boolean by YAML tools",
                "3:3 user id `0123` is read as a number by YAML tools"
            ]
        );
        assert_eq!(file.problems[0].hint.as_deref(), Some("quote it: \"yes\""));
        let ids: Vec<&str> = file.users.iter().map(|u| u.id.as_str()).collect();
        assert_eq!(ids, ["10001", "no"]);
    }

    /// Regression: an unknown key in a user file said what the keys are but not which one
    /// was meant, unlike unknown settings and attributes.
    #[test]
    fn unknown_key_in_a_user_file_suggests_the_closest_key() {
        let file = user_file("usres:\n  Ann: {city: Rome}\nsdkappid: 1\n");
        assert_eq!(
            located(&file.problems),
            [
                "1:1 unknown key `usres` in a user file",
                "3:1 unknown key `sdkappid` in a user file"
            ]
        );
        assert_eq!(
            file.problems[0].hint.as_deref(),
            Some("did you mean `users`? a user file has only `defaults:` and `users:`")
        );
        assert_eq!(
            file.problems[1].hint.as_deref(),
            Some("a user file has only `defaults:` and `users:`; declare users under `users:`")
        );
        assert_eq!(
            file.users,
            [],
            "nothing under an unknown key is read as users"
        );
    }

    #[test]
    fn every_problem_is_reported_in_one_pass_in_file_order() {
        let file = user_file(
            "\
users:
  Ann:
    sex: NO
    colour: red
    city: Rome
    city: Oslo
  \"\": {city: Rome}
  Bob: {tier: 1.5}
",
        );
        assert_eq!(
            located(&file.problems),
            [
                "3:10 `sex` of user `Ann` is `NO`, which YAML reads as a boolean, not a string",
                "4:5 unknown attribute `colour` in user `Ann`",
                "6:5 duplicate key `city` in user `Ann`",
                "7:3 invalid user id \"\": a user id must not be empty",
                "8:15 `tier` of user `Bob` is `1.5`, which YAML reads as a number, not a string",
            ]
        );
        assert_eq!(
            declared(&file),
            [("Ann", vec![("city", "Rome")]), ("Bob", vec![])]
        );
    }

    #[test]
    fn without_a_valid_attribute_list_names_go_unchecked_but_values_do_not() {
        // When attrsync.yaml is broken the user files are still checked for everything else.
        let file = users::parse("users:\n  Ann: {anything: x, city: NO}\n", None);
        assert_eq!(
            located(&file.problems),
            ["2:28 `city` of user `Ann` is `NO`, which YAML reads as a boolean, not a string"]
        );
        assert_eq!(declared(&file), [("Ann", vec![("anything", "x")])]);
    }
}

mod hostile_user_files {
    use super::*;

    #[test]
    fn a_list_or_a_scalar_is_not_a_user_file() {
        let list = user_file("- Mary\n- Bob\n");
        assert_eq!(
            located(&list.problems),
            ["1:1 the user file must be a mapping, found a list"]
        );
        let scalar = user_file("just a string\n");
        assert_eq!(
            located(&scalar.problems),
            ["1:1 the user file must be a mapping, found a string"]
        );
    }

    #[test]
    fn users_and_user_entries_must_be_mappings() {
        let file = user_file("users:\n  Ann: [a, b]\n  Bob: Rome\n  Cy:\n");
        assert_eq!(
            located(&file.problems),
            [
                "2:8 user `Ann` must be a mapping, found a list",
                "3:8 user `Bob` must be a mapping, found a string",
                "4:5 user `Cy` is empty, expected a mapping",
            ]
        );
        assert_eq!(
            file.problems[2].hint.as_deref(),
            Some("write `{}` for an empty mapping")
        );
        assert_eq!(
            user_file("users:\n").problems[0].message,
            "`users` is empty, expected a mapping"
        );
    }

    #[test]
    fn a_key_must_be_a_plain_string() {
        let file = user_file("users:\n  [a, b]: {city: Rome}\n  Ann: {city: Rome}\n");
        assert_eq!(
            located(&file.problems),
            ["2:3 a key in `users` must be a plain string, found a list"]
        );
        assert_eq!(
            declared(&file),
            [("Ann", vec![("city", "Rome")])],
            "reading goes on after the bad key"
        );
    }

    #[test]
    fn aliases_are_refused_so_an_alias_bomb_costs_nothing() {
        let bomb = "\
defaults: &lol {tier: lol}
users:
  a: &a [*lol, *lol, *lol, *lol, *lol, *lol, *lol, *lol, *lol]
  b: &b [*a, *a, *a, *a, *a, *a, *a, *a, *a]
  c: &c [*b, *b, *b, *b, *b, *b, *b, *b, *b]
  d: *c
  e: {city: *lol}
";
        let file = user_file(bomb);
        assert_eq!(
            located(&file.problems),
            [
                "3:6 user `a` must be a mapping, found a list",
                "4:6 user `b` must be a mapping, found a list",
                "5:6 user `c` must be a mapping, found a list",
                "6:6 YAML aliases (`*name`) are not supported",
                "7:13 YAML aliases (`*name`) are not supported",
            ]
        );
        let e = file
            .users
            .iter()
            .find(|u| u.id.as_str() == "e")
            .expect("user e");
        assert_eq!(
            e.attrs.get("tier").map(|v| v.as_str()),
            Some("lol"),
            "anchored defaults themselves are fine"
        );
    }

    #[test]
    fn twenty_thousand_nested_brackets_or_braces_are_a_syntax_error() {
        for open in ["[", "{"] {
            let text = format!("users:\n  Ann: {}\n", open.repeat(20_000));
            let file = user_file(&text);
            let last = file.problems.last().expect("a problem");
            assert!(
                last.message
                    .starts_with("YAML syntax error: recursion limit exceeded"),
                "{open}: {}",
                last.message
            );
            assert_eq!(last.pos.line, 2, "{open}");
            assert_eq!(file.users, [], "{open}");
        }
    }

    #[test]
    fn a_second_document_is_refused() {
        let file = user_file("users:\n  Ann: {city: Rome}\n---\nusers:\n  Zed: {city: Oslo}\n");
        let problem = single(&file.problems);
        assert_eq!(
            (problem.pos, problem.message.as_str()),
            (at(3, 1), "a second YAML document in the same file")
        );
        assert_eq!(
            declared(&file),
            [("Ann", vec![("city", "Rome")])],
            "nothing is read from the second document"
        );
    }

    #[test]
    fn a_syntax_error_keeps_the_problems_found_before_it() {
        let file = user_file("users:\n  Ann:\n    sex: NO\n    city: Rome\n   tier: gold\n");
        assert_eq!(
            located(&file.problems),
            [
                "3:10 `sex` of user `Ann` is `NO`, which YAML reads as a boolean, not a string",
                "5:4 YAML syntax error: while parsing a block mapping, did not find expected key",
            ]
        );
        assert_eq!(
            file.problems[1].hint.as_deref(),
            Some("check indentation, unclosed quotes and brackets around this place")
        );
    }

    #[test]
    fn tabs_for_indentation_are_a_syntax_error_on_their_line() {
        let file = user_file("users:\n\tAnn:\n\t\tcity: Rome\n");
        let problem = single(&file.problems);
        assert_eq!(problem.pos.line, 2);
        assert!(
            problem.message.contains("tabs disallowed"),
            "{}",
            problem.message
        );
    }

    #[test]
    fn an_unclosed_quote_is_a_syntax_error() {
        let file = user_file("users:\n  Ann: {city: \"Rome}\n");
        assert!(single(&file.problems)
            .message
            .starts_with("YAML syntax error"));
    }
}

mod settings_file {
    use super::*;

    fn read(text: &str) -> Result<Settings, Vec<Problem>> {
        settings::parse(text, Path::new("/repo")).settings
    }

    #[track_caller]
    fn problems(text: &str) -> Vec<Problem> {
        read(text).expect_err("the settings should be invalid")
    }

    const REQUIRED: &str = "sdkappid: 1400000000\nidentifier: administrator\nregion: singapore\nattributes: [sex, city]\n";

    #[test]
    fn the_required_settings_and_every_default() {
        assert_eq!(
            read(REQUIRED),
            Ok(Settings {
                sdkappid: 1_400_000_000,
                identifier: "administrator".to_owned(),
                target: Target::Region(Region::Singapore),
                secret_key_env: "TIM_SECRET_KEY".to_owned(),
                attributes: names(&["sex", "city"]),
                users_dir: PathBuf::from("/repo/users"),
                state: StateLocation::Dir(PathBuf::from("/repo/state")),
                root: PathBuf::from("/repo"),
                prune: false,
                max_deletes: 100,
                rate_limit: 100,
                batch_size: 100,
            })
        );
    }

    #[test]
    fn every_setting_written_out() {
        let text = "\
sdkappid: 1400000001
identifier: admin
endpoint: http://127.0.0.1:8080/
secret_key_env: MY_KEY
attributes:
  - sex
  - city
users_dir: people
state_dir: /var/lib/attrsync
prune: true
max_deletes: 0
rate_limit: 1
batch_size: 1
";
        assert_eq!(
            read(text),
            Ok(Settings {
                sdkappid: 1_400_000_001,
                identifier: "admin".to_owned(),
                target: Target::Endpoint("http://127.0.0.1:8080".to_owned()),
                secret_key_env: "MY_KEY".to_owned(),
                attributes: names(&["sex", "city"]),
                users_dir: PathBuf::from("/repo/people"),
                state: StateLocation::Dir(PathBuf::from("/var/lib/attrsync")),
                root: PathBuf::from("/repo"),
                prune: true,
                max_deletes: 0,
                rate_limit: 1,
                batch_size: 1,
            })
        );
    }

    #[test]
    fn endpoint_embedded_is_the_in_process_emulator() {
        let text = REQUIRED.replace("region: singapore", "endpoint: embedded");
        assert_eq!(read(&text).unwrap().target, Target::Embedded);
    }

    #[test]
    fn an_unknown_setting_suggests_the_closest_one() {
        let text = format!("{REQUIRED}identifer: admin\ncolour: red\n");
        let problems = problems(&text);
        assert_eq!(
            located(&problems),
            [
                "5:1 unknown setting `identifer` in attrsync.yaml",
                "6:1 unknown setting `colour` in attrsync.yaml"
            ]
        );
        assert_eq!(
            problems[0].hint.as_deref(),
            Some("did you mean `identifier`?")
        );
        assert_eq!(
            problems[1].hint.as_deref(),
            Some("the settings are: sdkappid, identifier, region, endpoint, secret_key_env, attributes, users_dir, state, state_dir, prune, max_deletes, rate_limit, batch_size")
        );
    }

    #[test]
    fn state_is_a_directory_or_a_postgres_url_and_state_dir_its_older_name() {
        let url = "postgres://attrsync:pw@db.internal/attrsync?sslmode=verify-full";
        let settings = read(&format!("{REQUIRED}state: {url}\n")).unwrap();
        assert_eq!(
            settings.state,
            StateLocation::Postgres(crate::model::PostgresUrl::new(url).unwrap())
        );
        assert_eq!(settings.local_dir(), PathBuf::from("/repo/state"));
        let settings = read(&format!("{REQUIRED}state_dir: snap\n")).unwrap();
        assert_eq!(
            settings.state,
            StateLocation::Dir(PathBuf::from("/repo/snap"))
        );
        let problems = problems(&format!("{REQUIRED}state: a\nstate_dir: b\n"));
        assert_eq!(
            problems[0].message,
            "set either `state` or `state_dir`, not both"
        );
    }

    #[test]
    fn each_missing_required_setting_is_named() {
        assert_eq!(
            located(&problems("{}\n")),
            [
                "1:1 `sdkappid` is required in attrsync.yaml",
                "1:1 `identifier` is required in attrsync.yaml",
                "1:1 `attributes` is required in attrsync.yaml",
                "1:1 `region` is required in attrsync.yaml",
            ]
        );
        let problems = problems("");
        assert_eq!(problems[0].message, "attrsync.yaml is empty");
        assert_eq!(
            problems.len(),
            5,
            "the empty file, then the four required settings"
        );
    }

    #[test]
    fn an_unknown_region_lists_the_regions() {
        let problem = single(&problems(&REQUIRED.replace("singapore", "mars"))).clone();
        assert_eq!(
            (problem.pos, problem.message.as_str()),
            (at(3, 9), "unknown region `mars`")
        );
        assert_eq!(
            problem.hint.as_deref(),
            Some("use one of: china, singapore, seoul, tokyo, frankfurt, silicon-valley, jakarta")
        );
    }

    #[test]
    fn region_and_endpoint_together_are_refused() {
        let problem = single(&problems(&format!(
            "{REQUIRED}endpoint: http://127.0.0.1:8080\n"
        )))
        .clone();
        assert_eq!(
            (problem.pos, problem.message.as_str()),
            (at(5, 11), "set either `region` or `endpoint`, not both")
        );
    }

    /// Regression: an unknown region next to an endpoint hid the "not both" problem until the
    /// region was fixed, so the config took two runs to correct.
    #[test]
    fn an_unknown_region_next_to_an_endpoint_still_reports_both_problems() {
        let text = format!(
            "{}endpoint: http://127.0.0.1:8080\n",
            REQUIRED.replace("singapore", "mars")
        );
        assert_eq!(
            located(&problems(&text)),
            [
                "3:9 unknown region `mars`",
                "5:11 set either `region` or `endpoint`, not both"
            ]
        );
    }

    #[test]
    fn plain_http_to_another_machine_is_refused() {
        let text = REQUIRED.replace("region: singapore", "endpoint: http://api.example.com");
        let problems = problems(&text);
        assert_eq!(
            located(&problems),
            ["3:11 endpoint `http://api.example.com` would send the app's admin UserSig over plain HTTP to another machine"]
        );
        let text = REQUIRED.replace("region: singapore", "endpoint: http://127.0.0.1:8080");
        assert!(read(&text).is_ok());
        let text = REQUIRED.replace("region: singapore", "endpoint: https://proxy.example.com");
        assert!(read(&text).is_ok());
    }

    #[test]
    fn an_endpoint_must_be_a_url() {
        let text = REQUIRED.replace("region: singapore", "endpoint: localhost:8080");
        assert_eq!(
            located(&problems(&text)),
            ["3:11 endpoint `localhost:8080` is not a URL"]
        );
    }

    #[test]
    fn batch_size_and_rate_limit_are_1_to_100() {
        for key in ["batch_size", "rate_limit"] {
            for bad in [0, 101] {
                let problem = single(&problems(&format!("{REQUIRED}{key}: {bad}\n"))).clone();
                assert_eq!(problem.pos, at(5, key.len() as u32 + 3));
                assert_eq!(
                    problem.message,
                    format!("`{key}` is {bad}, it must be between 1 and 100")
                );
            }
            for good in [1, 100] {
                assert!(
                    read(&format!("{REQUIRED}{key}: {good}\n")).is_ok(),
                    "{key}: {good}"
                );
            }
        }
    }

    #[test]
    fn numbers_must_be_plain_whole_numbers() {
        for value in ["\"50\"", "1.5", "-1", "many"] {
            let problem = single(&problems(&format!("{REQUIRED}batch_size: {value}\n"))).clone();
            assert!(
                problem
                    .message
                    .starts_with("`batch_size` must be a whole number, found"),
                "{value}: {}",
                problem.message
            );
        }
    }

    #[test]
    fn prune_must_be_a_plain_boolean() {
        for value in ["yes", "\"true\"", "1"] {
            let problem = single(&problems(&format!("{REQUIRED}prune: {value}\n"))).clone();
            assert!(
                problem.message.starts_with("`prune` must be true or false"),
                "{value}: {}",
                problem.message
            );
        }
    }

    #[test]
    fn at_most_ten_attributes() {
        let ten: Vec<String> = (0..10).map(|i| format!("a{i}")).collect();
        let text =
            |list: &[String]| REQUIRED.replace("[sex, city]", &format!("[{}]", list.join(", ")));
        assert_eq!(read(&text(&ten)).unwrap().attributes.len(), 10);
        let eleven: Vec<String> = (0..11).map(|i| format!("a{i}")).collect();
        let problem = single(&problems(&text(&eleven))).clone();
        // Reported at the eleventh name: `attributes: [` is 13 characters, each `aN, ` is 4.
        assert_eq!(problem.pos, at(4, 14 + 10 * 4));
        assert_eq!(
            problem.message,
            "`attributes` lists 11 names, an app has at most 10"
        );
    }

    #[test]
    fn attribute_names_are_unique_strings_of_at_most_50_bytes() {
        let long = "x".repeat(51);
        let text = REQUIRED.replace(
            "[sex, city]",
            &format!("[sex, city, sex, NO, {long}, {}]", "y".repeat(50)),
        );
        assert_eq!(
            located(&problems(&text)),
            [
                "4:25 attribute `sex` is listed twice",
                "4:30 attribute name `NO` is read as a boolean by YAML tools",
                format!(
                    "4:34 attribute name `{long}`: an attribute name must be 1 to 50 bytes long"
                )
                .as_str(),
            ]
        );
    }

    #[test]
    fn attributes_must_be_a_list() {
        let problem = single(&problems(&REQUIRED.replace("[sex, city]", "sex"))).clone();
        assert_eq!(
            (problem.pos, problem.message.as_str()),
            (at(4, 13), "`attributes` must be a list, found a string")
        );
    }

    #[test]
    fn a_setting_twice_is_a_duplicate_key() {
        let problem = single(&problems(&format!("{REQUIRED}region: tokyo\n"))).clone();
        assert_eq!(
            (problem.pos, problem.message.as_str()),
            (at(5, 1), "duplicate key `region` in attrsync.yaml")
        );
    }

    /// Regression: a required setting that was written but invalid was also reported as
    /// missing ("`attributes` is required"), which sent people looking for a typo in its name.
    #[test]
    fn an_invalid_required_setting_is_not_also_reported_missing() {
        let text = "sdkappid: lots\nidentifier: \"\"\nregion: singapore\nattributes: sex\n";
        assert_eq!(
            located(&problems(text)),
            [
                "1:11 `sdkappid` must be a whole number, found `lots`",
                "2:13 `identifier` is empty",
                "4:13 `attributes` must be a list, found a string",
            ]
        );
    }

    #[test]
    fn the_attribute_list_survives_other_broken_settings() {
        // So the user files can still be checked against it in the same run.
        let parsed = settings::parse(&format!("{REQUIRED}batch_size: 0\n"), Path::new("/repo"));
        assert!(parsed.settings.is_err());
        assert_eq!(parsed.attributes, Some(names(&["sex", "city"])));
    }
}

mod resolution {
    use super::*;

    #[test]
    fn every_yaml_1_1_boolean_spelling_is_refused_as_a_value() {
        let spellings = [
            "y", "Y", "yes", "Yes", "YES", "n", "N", "no", "No", "NO", "true", "True", "TRUE",
            "false",
        ];
        let more = ["False", "FALSE", "on", "On", "ON", "off", "Off", "OFF"];
        for word in spellings.into_iter().chain(more) {
            assert_eq!(Resolved::of_plain(word), Resolved::Bool, "{word}");
            let file = user_file(&format!("users:\n  Ann: {{city: {word}}}\n"));
            assert_eq!(file.problems.len(), 1, "{word} must be refused");
        }
    }

    #[test]
    fn words_that_merely_look_like_values_are_strings() {
        for word in [
            "Norway", "nope", "yess", "onion", "1.2.3", "v1", "e10", "0x", "1e", "-", "12:ab",
            "NULLs",
        ] {
            assert_eq!(Resolved::of_plain(word), Resolved::Str, "{word}");
        }
    }

    #[test]
    fn numbers_in_every_yaml_spelling() {
        for word in [
            "1.", ".5", "-1.5e-3", "0b101", "1_000", "12:30:00", ".NaN", "-.inf", "00", "-0", "+0",
        ] {
            assert_eq!(Resolved::of_plain(word), Resolved::Number, "{word}");
        }
        assert_eq!(Resolved::of_plain("-12"), Resolved::CanonicalInt);
    }

    #[test]
    fn descriptions_read_as_phrases() {
        assert_eq!(Resolved::Bool.describe(), "a boolean");
        assert_eq!(Resolved::Null.describe(), "null");
        assert_eq!(Resolved::CanonicalInt.describe(), "a number");
        assert_eq!(Resolved::Number.describe(), "a number");
        assert_eq!(Resolved::Str.describe(), "a string");
    }
}

mod reporting {
    use super::*;

    fn diagnostic(file: &str, pos: Option<Pos>, message: &str, hint: Option<&str>) -> Diagnostic {
        Diagnostic {
            file: PathBuf::from(file),
            pos,
            message: message.to_owned(),
            hint: hint.map(str::to_owned),
        }
    }

    #[test]
    fn a_diagnostic_reads_file_line_column_then_help() {
        let d = diagnostic(
            "users/a.yaml",
            Some(at(3, 9)),
            "bad value",
            Some("quote it"),
        );
        assert_eq!(d.location(), "users/a.yaml:3:9");
        assert_eq!(
            d.to_string(),
            "users/a.yaml:3:9: bad value\n  help: quote it"
        );
        let whole = diagnostic("users", None, "the users directory does not exist", None);
        assert_eq!(
            whole.to_string(),
            "users: the users directory does not exist"
        );
    }

    #[test]
    fn the_closing_line_counts_problems_and_files() {
        let one = Diagnostics(vec![diagnostic("a.yaml", Some(at(1, 1)), "x", None)]);
        assert!(one.to_string().ends_with("the config is invalid: 1 problem in 1 file; fix them and run again (nothing was planned or sent)"));
        let three = Diagnostics(vec![
            diagnostic("a.yaml", Some(at(1, 1)), "x", None),
            diagnostic("a.yaml", Some(at(2, 1)), "y", None),
            diagnostic("b.yaml", None, "z", None),
        ]);
        assert_eq!(
            three.to_string(),
            "a.yaml:1:1: x\na.yaml:2:1: y\nb.yaml: z\nthe config is invalid: 3 problems in 2 files; fix them and run again (nothing was planned or sent)"
        );
    }

    #[test]
    fn invalid_utf8_is_located_in_characters_not_bytes() {
        // `  中文: ` is 6 characters (10 bytes) before the bad byte.
        let bytes = b"users:\n  \xe4\xb8\xad\xe6\x96\x87: \xff\n".to_vec();
        match to_text(bytes) {
            Err(ReadError::NotUtf8 { line, column }) => assert_eq!((line, column), (2, 7)),
            _ => panic!("expected NotUtf8"),
        }
        assert!(matches!(
            to_text(b"\xfe".to_vec()),
            Err(ReadError::NotUtf8 { line: 1, column: 1 })
        ));
    }

    #[test]
    fn suggestions_are_only_made_for_likely_typos() {
        let keys = ["sdkappid", "identifier", "region", "batch_size"];
        assert_eq!(
            closest("identifer", keys.iter().copied()),
            Some("identifier")
        );
        assert_eq!(closest("regoin", keys.iter().copied()), Some("region"));
        assert_eq!(
            closest("batchsize", keys.iter().copied()),
            Some("batch_size")
        );
        assert_eq!(closest("colour", keys.iter().copied()), None);
        assert_eq!(
            closest("ab", ["x", "y"].into_iter()),
            None,
            "never suggest a word that is all edits"
        );
    }
}

mod never_panics {
    //! Whatever the text, reading it ends with users or problems: no panic, no hang.
    use super::*;
    use proptest::prelude::*;

    /// Fragments that steer random text towards the parser's corners.
    fn yamlish() -> impl Strategy<Value = String> {
        let token = prop_oneof![
            Just("users:".to_owned()),
            Just("defaults:".to_owned()),
            Just("\n  ".to_owned()),
            Just("\n".to_owned()),
            Just(": ".to_owned()),
            Just("{".to_owned()),
            Just("}".to_owned()),
            Just("[".to_owned()),
            Just("]".to_owned()),
            Just(", ".to_owned()),
            Just("&a ".to_owned()),
            Just("*a".to_owned()),
            Just("!!str ".to_owned()),
            Just("\"".to_owned()),
            Just("'".to_owned()),
            Just("- ".to_owned()),
            Just("---\n".to_owned()),
            Just("? ".to_owned()),
            Just("|\n".to_owned()),
            Just("\t".to_owned()),
            Just("NO".to_owned()),
            Just("sex".to_owned()),
            "[a-z0-9]{1,6}",
            "\\PC{1,3}",
        ];
        prop::collection::vec(token, 0..60).prop_map(|parts| parts.concat())
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 2000, ..ProptestConfig::default() })]

        #[test]
        fn user_files(text in yamlish()) {
            let file = user_file(&text);
            for problem in &file.problems {
                prop_assert!(problem.pos.line >= 1 && problem.pos.column >= 1, "{problem:?}");
            }
        }

        #[test]
        fn settings_files(text in yamlish()) {
            let _ = settings::parse(&text, Path::new("/repo"));
        }
    }
}

mod merging_files {
    use super::*;
    use crate::config::merge_files;

    /// The users of one file, at the lines given: `(id, line)`.
    fn run(users: &[(&str, u32)]) -> Vec<users::DeclaredUser> {
        let mut declared: Vec<users::DeclaredUser> = users
            .iter()
            .map(|&(id, line)| users::DeclaredUser {
                id: crate::model::UserId::new(id).unwrap(),
                attrs: crate::model::Attrs::parse(&[("city", id)]).unwrap(),
                pos: Pos { line, column: 3 },
            })
            .collect();
        declared.sort_by(|a, b| a.id.cmp(&b.id));
        declared
    }

    #[test]
    fn interleaved_files_merge_into_id_order_with_each_users_own_attributes() {
        let runs = vec![
            run(&[("a", 1), ("d", 2), ("g", 3)]),
            run(&[]),
            run(&[("b", 1), ("c", 2), ("h", 3)]),
            run(&[("e", 1), ("f", 2)]),
        ];
        let merged = merge_files(runs, true, |_, (user, _)| {
            panic!("{} is not declared twice", user.id)
        });
        let ids: Vec<&str> = merged.users.iter().map(|(id, _)| id.as_str()).collect();
        assert_eq!(ids, ["a", "b", "c", "d", "e", "f", "g", "h"]);
        for (id, attrs) in &merged.users {
            assert_eq!(attrs.get("city").unwrap().as_str(), id.as_str());
        }
        // Each user's file: a from 0, b and c from 2, d from 0, e and f from 3, g 0, h 2.
        assert_eq!(merged.origins, [0, 2, 2, 0, 3, 3, 0, 2]);
    }

    #[test]
    fn a_user_declared_three_times_is_reported_against_the_declaration_before_it() {
        let runs = vec![
            run(&[("a", 1), ("x", 5)]),
            run(&[("x", 7), ("y", 8)]),
            run(&[("x", 9)]),
        ];
        let mut twice = Vec::new();
        let merged = merge_files(runs, true, |(first, first_file), (second, second_file)| {
            twice.push((
                first_file,
                first.line,
                second_file,
                second.pos.line,
                second.id.to_string(),
            ));
        });
        assert_eq!(
            twice,
            [(0, 5, 1, 7, "x".to_owned()), (1, 7, 2, 9, "x".to_owned())]
        );
        let ids: Vec<&str> = merged.users.iter().map(|(id, _)| id.as_str()).collect();
        assert_eq!(ids, ["a", "x", "y"]);
        assert_eq!(merged.origins, [0, 0, 1], "the first declaration is kept");
    }

    #[test]
    fn a_user_repeated_inside_one_file_is_reported_too() {
        let mut twice = Vec::new();
        merge_files(
            vec![run(&[("a", 1), ("a", 4)]), run(&[("a", 2)])],
            false,
            |(first, first_file), (second, second_file)| {
                twice.push((first_file, first.line, second_file, second.pos.line));
            },
        );
        // File order first, then the order within a file: the stable order a sort would give.
        assert_eq!(twice, [(0, 1, 0, 4), (0, 4, 1, 2)]);
    }
}
