//! `attrsync.yaml`: the settings of a config repository.

use std::path::{Path, PathBuf};

pub use crate::model::Target;
use crate::model::{
    AttrName, Region, StateLocation, MAX_ATTRIBUTES, MAX_BATCH_SIZE, MAX_RATE_LIMIT,
};

use super::yaml::{Pos, Problem, Reader, Resolved, Scalar};

/// The name of the settings file at the root of a config repository.
pub const SETTINGS_FILE: &str = "attrsync.yaml";
/// Where the user files are unless `users_dir` says otherwise, relative to the config.
pub const DEFAULT_USERS_DIR: &str = "users";
/// Where the snapshot is unless `state_dir` (or `--state`) says otherwise.
pub const DEFAULT_STATE_DIR: &str = "state";

/// The validated settings of a config repository.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Settings {
    /// The app's SDKAppID.
    pub sdkappid: u64,
    /// The App admin account that signs requests.
    pub identifier: String,
    /// Where the API lives.
    pub target: Target,
    /// The environment variable that holds the app's secret key.
    pub secret_key_env: String,
    /// The attribute names the app uses; anything else in a user file is an error.
    pub attributes: Vec<AttrName>,
    /// Where the user files are (resolved against the config directory).
    pub users_dir: PathBuf,
    /// Where the snapshot is: a directory (resolved against the config directory) or a
    /// PostgreSQL URL.
    pub state: StateLocation,
    /// The config directory, for files kept beside the config (the embedded emulator's data
    /// when the snapshot is not in a directory).
    pub root: PathBuf,
    /// Delete attributes of users removed from the config.
    pub prune: bool,
    /// Most users a plan may delete without `--allow-mass-delete`.
    pub max_deletes: usize,
    /// API calls per second, 1..=100.
    pub rate_limit: u32,
    /// Users per API call, 1..=100.
    pub batch_size: usize,
}

impl Settings {
    /// A directory for files kept on this machine (the embedded emulator's data): the state
    /// directory, or `state` beside `attrsync.yaml` when the snapshot is in PostgreSQL.
    pub fn local_dir(&self) -> PathBuf {
        match &self.state {
            StateLocation::Dir(dir) => dir.clone(),
            StateLocation::Postgres(_) => self.root.join(DEFAULT_STATE_DIR),
        }
    }
}

/// Whether a setting must be written, and what it is when it is not.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Need {
    /// It must be written; the hint says how.
    Required(&'static str),
    /// Exactly one setting of `group` must be written.
    OneOf(&'static str),
    /// Optional; the default as it would be written in YAML.
    Default(&'static str),
    /// Another name of the setting named here; the two may not both be written.
    Alias(&'static str),
}

/// The type of a setting's value, which decides how it is read and checked.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    /// A non-empty string.
    Text,
    /// A whole number in `min..=max`.
    Whole {
        /// The smallest value allowed.
        min: u64,
        /// The largest value allowed.
        max: u64,
    },
    /// `true` or `false`.
    Flag,
    /// A list of attribute names.
    Names,
    /// One of the region names.
    Region,
    /// An http(s) base URL, or `embedded`.
    Endpoint,
}

/// A value read for a setting, checked against its [`Kind`].
#[derive(Clone, Debug)]
enum Value {
    Text(String),
    Whole(u64),
    Flag(bool),
    Names(Vec<AttrName>),
    Region(Region),
    /// The URL, and where it was written.
    Endpoint(String, Pos),
}

/// One setting of `attrsync.yaml`: its name, type, default and documentation, and where its
/// value goes. [`SETTINGS`] is the one place a setting is defined: parsing, the unknown-key
/// suggestions and the messages come from it, and a test checks README's table and
/// `examples/attrsync.full.yaml` against it.
pub struct Setting {
    /// The key in `attrsync.yaml`.
    pub name: &'static str,
    /// The type of its value.
    pub kind: Kind,
    /// Whether it is required, and its default.
    pub need: Need,
    /// What it means (README's table).
    pub doc: &'static str,
    /// Stores a value of `kind` (the `root` is the config directory, for paths).
    store: fn(&mut Settings, Value, &Path),
}

/// The region/endpoint group: where the API lives.
const TARGET_GROUP: &str = "region or endpoint";

/// Every setting of `attrsync.yaml`, in the order README and the full example list them.
pub const SETTINGS: &[Setting] = &[
    Setting {
        name: "sdkappid",
        kind: Kind::Whole {
            min: 1,
            max: u32::MAX as u64 * 4,
        },
        need: Need::Required("set it to your app's SDKAppID, e.g. `sdkappid: 1400000000`"),
        doc: "the app's SDKAppID",
        store: |s, v, _| s.sdkappid = v.whole(),
    },
    Setting {
        name: "identifier",
        kind: Kind::Text,
        need: Need::Required("set it to an App admin account, e.g. `identifier: administrator`"),
        doc: "an App admin account; requests are signed as it",
        store: |s, v, _| s.identifier = v.text(),
    },
    Setting {
        name: "region",
        kind: Kind::Region,
        need: Need::OneOf(TARGET_GROUP),
        doc: "`china`, `singapore`, `seoul`, `tokyo`, `frankfurt`, `silicon-valley`, `jakarta`",
        store: |s, v, _| {
            if let Value::Region(region) = v {
                s.target = Target::Region(region);
            }
        },
    },
    Setting {
        name: "endpoint",
        kind: Kind::Endpoint,
        need: Need::OneOf(TARGET_GROUP),
        doc: "any base URL (`http://127.0.0.1:8080`: an emulator or proxy), or `embedded`",
        store: |s, v, _| {
            s.target = match v.text().as_str() {
                "embedded" => Target::Embedded,
                url => Target::Endpoint(url.trim_end_matches('/').to_owned()),
            }
        },
    },
    Setting {
        name: "secret_key_env",
        kind: Kind::Text,
        need: Need::Default(crate::model::DEFAULT_SECRET_KEY_ENV),
        doc: "the environment variable holding the secret key",
        store: |s, v, _| s.secret_key_env = v.text(),
    },
    Setting {
        name: "attributes",
        kind: Kind::Names,
        need: Need::Required("list the app's attribute names, e.g. `attributes: [sex, city]`"),
        doc: "the app's attribute names, at most 10, each at most 50 bytes",
        store: |s, v, _| {
            if let Value::Names(names) = v {
                s.attributes = names;
            }
        },
    },
    Setting {
        name: "users_dir",
        kind: Kind::Text,
        need: Need::Default(DEFAULT_USERS_DIR),
        doc: "where the user files are, relative to `attrsync.yaml`",
        store: |s, v, root| s.users_dir = root.join(v.text()),
    },
    Setting {
        name: "state",
        kind: Kind::Text,
        need: Need::Default(DEFAULT_STATE_DIR),
        doc: "where the snapshot is: a directory relative to `attrsync.yaml` (sled), or a `postgres://` URL; `ATTRSYNC_STATE` and `--state` override it",
        store: |s, v, root| s.state = StateLocation::parse(&v.text(), root),
    },
    Setting {
        name: "state_dir",
        kind: Kind::Text,
        need: Need::Alias("state"),
        doc: "the older name of `state`",
        store: |s, v, root| s.state = StateLocation::parse(&v.text(), root),
    },
    Setting {
        name: "prune",
        kind: Kind::Flag,
        need: Need::Default("false"),
        doc: "delete the attributes of users removed from the config",
        store: |s, v, _| s.prune = v.flag(),
    },
    Setting {
        name: "max_deletes",
        kind: Kind::Whole {
            min: 0,
            max: u64::MAX,
        },
        need: Need::Default("100"),
        doc: "refuse plans deleting more users, unless `--allow-mass-delete`",
        store: |s, v, _| s.max_deletes = usize::try_from(v.whole()).unwrap_or(usize::MAX),
    },
    Setting {
        name: "rate_limit",
        kind: Kind::Whole {
            min: 1,
            max: MAX_RATE_LIMIT as u64,
        },
        need: Need::Default("100"),
        doc: "API calls per second, 1..=100",
        store: |s, v, _| s.rate_limit = u32::try_from(v.whole()).unwrap_or(MAX_RATE_LIMIT),
    },
    Setting {
        name: "batch_size",
        kind: Kind::Whole {
            min: 1,
            max: MAX_BATCH_SIZE as u64,
        },
        need: Need::Default("100"),
        doc: "users per call, 1..=100",
        store: |s, v, _| s.batch_size = usize::try_from(v.whole()).unwrap_or(MAX_BATCH_SIZE),
    },
];

impl Value {
    fn text(self) -> String {
        match self {
            Value::Text(text) | Value::Endpoint(text, _) => text,
            other => unreachable!("the table pairs text settings with text values: {other:?}"),
        }
    }

    fn whole(self) -> u64 {
        match self {
            Value::Whole(n) => n,
            other => unreachable!("the table pairs number settings with numbers: {other:?}"),
        }
    }

    fn flag(self) -> bool {
        match self {
            Value::Flag(b) => b,
            other => unreachable!("the table pairs flags with booleans: {other:?}"),
        }
    }
}

impl Kind {
    /// Reads a written value, reporting what is wrong with it; `None` when it is invalid.
    fn read(self, r: &mut Reader<'_>, key: &str) -> Result<Option<Value>, super::yaml::Fatal> {
        Ok(match self {
            Kind::Text => text(r, key)?.map(|(s, _)| Value::Text(s)),
            Kind::Whole { min, max } => number(r, key, min, max)?.map(Value::Whole),
            Kind::Flag => boolean(r, key)?.map(Value::Flag),
            Kind::Names => attributes(r)?.map(Value::Names),
            Kind::Region => {
                let Some((name, pos)) = text(r, key)? else {
                    return Ok(None);
                };
                match Region::from_name(&name) {
                    Some(region) => Some(Value::Region(region)),
                    None => {
                        let names: Vec<&str> = Region::ALL.iter().map(|(_, n, _)| *n).collect();
                        r.problems.push(
                            Problem::new(pos, format!("unknown region `{name}`"))
                                .hint(format!("use one of: {}", names.join(", "))),
                        );
                        None
                    }
                }
            }
            Kind::Endpoint => {
                let Some((url, pos)) = text(r, key)? else {
                    return Ok(None);
                };
                if url.starts_with("http://") && !crate::model::endpoint_is_safe(&url) {
                    r.problems.push(
                        Problem::new(pos, format!("endpoint `{url}` would send the app's admin UserSig over plain HTTP to another machine"))
                            .hint("use https://; plain http:// is only for this machine (127.0.0.1, ::1, localhost), such as `attrsync emulator`"),
                    );
                    None
                } else if url == "embedded"
                    || url.starts_with("http://")
                    || url.starts_with("https://")
                {
                    Some(Value::Endpoint(url, pos))
                } else {
                    r.problems.push(Problem::new(pos, format!("endpoint `{url}` is not a URL")).hint("write a base URL like http://127.0.0.1:8080, or `embedded` for the built-in emulator"));
                    None
                }
            }
        })
    }

    /// A default as written in [`Need::Default`], as a value (checked by a test to read the
    /// same through YAML).
    fn default_value(self, text: &str) -> Value {
        match self {
            Kind::Whole { .. } => Value::Whole(text.parse().unwrap_or_default()),
            Kind::Flag => Value::Flag(text == "true"),
            Kind::Endpoint => Value::Endpoint(text.to_owned(), Pos { line: 1, column: 1 }),
            Kind::Text | Kind::Names | Kind::Region => Value::Text(text.to_owned()),
        }
    }
}

/// The setting named `name`.
fn setting(name: &str) -> Option<&'static Setting> {
    SETTINGS.iter().find(|s| s.name == name)
}

impl Settings {
    /// Settings with every field unset; [`build`] sets each from [`SETTINGS`] before they
    /// are returned (required ones were checked written, others get their default).
    fn unset() -> Self {
        Settings {
            sdkappid: 0,
            identifier: String::new(),
            target: Target::Embedded,
            secret_key_env: String::new(),
            attributes: Vec::new(),
            users_dir: PathBuf::new(),
            state: StateLocation::Dir(PathBuf::new()),
            root: PathBuf::new(),
            prune: false,
            max_deletes: 0,
            rate_limit: 0,
            batch_size: 0,
        }
    }
}

/// What reading `attrsync.yaml` gave: the settings if valid, and the attribute list on its own
/// so that user files can still be checked when some other setting is wrong.
pub(super) struct Parsed {
    pub settings: Result<Settings, Vec<Problem>>,
    pub attributes: Option<Vec<AttrName>>,
}

/// What was written: each setting's value (when valid), and every key written (valid or not,
/// so that an invalid required setting is not also called missing).
#[derive(Default)]
struct Written {
    values: Vec<(&'static Setting, Value)>,
    keys: Vec<String>,
}

impl Written {
    fn has_key(&self, name: &str) -> bool {
        self.keys.iter().any(|k| k == name)
    }
}

/// Reads `attrsync.yaml` from `text`; `root` is the directory it lives in.
pub(super) fn parse(text: &str, root: &Path) -> Parsed {
    let mut written = Written::default();
    let settings = parse_into(text, root, &mut written);
    let attributes = written.values.iter().find_map(|(_, value)| match value {
        Value::Names(names) => Some(names.clone()),
        _ => None,
    });
    Parsed {
        settings,
        attributes,
    }
}

fn parse_into(text: &str, root: &Path, written: &mut Written) -> Result<Settings, Vec<Problem>> {
    let mut reader = Reader::new(text);
    let read = (|| {
        if !reader.begin()? {
            reader.problems.push(
                Problem::new(Pos { line: 1, column: 1 }, "attrsync.yaml is empty")
                    .hint("set at least sdkappid, identifier, region (or endpoint) and attributes"),
            );
            return Ok(());
        }
        reader.mapping(&|| "attrsync.yaml".to_owned(), true, |r, key| {
            written.keys.push(key.text.to_string());
            read_setting(r, key, written)
        })?;
        reader.end()
    })();
    let mut problems = std::mem::take(&mut reader.problems);
    if read.is_err() {
        return Err(problems);
    }
    check_presence(written, &mut problems);
    if !problems.is_empty() {
        return Err(problems);
    }
    let mut settings = Settings::unset();
    settings.root = root.to_owned();
    for (setting, value) in &written.values {
        (setting.store)(&mut settings, value.clone(), root);
    }
    for setting in SETTINGS {
        if let Need::Default(default) = setting.need {
            let aliased = SETTINGS
                .iter()
                .any(|a| a.need == Need::Alias(setting.name) && written.has_key(a.name));
            if !written.has_key(setting.name) && !aliased {
                (setting.store)(&mut settings, setting.kind.default_value(default), root);
            }
        }
    }
    Ok(settings)
}

/// Reports required settings that are missing, and a group with no setting or two.
fn check_presence(written: &Written, problems: &mut Vec<Problem>) {
    let start = Pos { line: 1, column: 1 };
    for setting in SETTINGS {
        if let Need::Required(hint) = setting.need {
            if !written.has_key(setting.name) {
                problems.push(
                    Problem::new(
                        start,
                        format!("`{}` is required in attrsync.yaml", setting.name),
                    )
                    .hint(hint.to_owned()),
                );
            }
        }
    }
    let group: Vec<&Setting> = SETTINGS
        .iter()
        .filter(|s| s.need == Need::OneOf(TARGET_GROUP))
        .collect();
    let written_of_group: Vec<&str> = group
        .iter()
        .map(|s| s.name)
        .filter(|name| written.has_key(name))
        .collect();
    for alias in SETTINGS {
        if let Need::Alias(name) = alias.need {
            if written.has_key(alias.name) && written.has_key(name) {
                problems.push(
                    Problem::new(
                        start,
                        format!("set either `{name}` or `{}`, not both", alias.name),
                    )
                    .hint(format!(
                        "`{}` is the older name of `{name}`: remove it",
                        alias.name
                    )),
                );
            }
        }
    }
    for setting in SETTINGS
        .iter()
        .filter(|s| !matches!(s.need, Need::Default(_) | Need::Alias(_)))
    {
        let valid = written.values.iter().any(|(s, _)| s.name == setting.name);
        if written.has_key(setting.name) && !valid && problems.is_empty() {
            // Every reader reports why it found no value; this only guards that promise.
            problems.push(Problem::new(
                start,
                format!("`{}` has no valid value", setting.name),
            ));
        }
    }
    if written_of_group.is_empty() {
        problems.push(
            Problem::new(start, "`region` is required in attrsync.yaml")
                .hint("set `region` (china, singapore, seoul, tokyo, frankfurt, silicon-valley, jakarta) or `endpoint`"),
        );
    }
    // Both written: said once, at the endpoint (an invalid endpoint was reported already).
    let endpoint = written.values.iter().find_map(|(_, value)| match value {
        Value::Endpoint(_, pos) => Some(*pos),
        _ => None,
    });
    if let (Some(pos), true) = (endpoint, written_of_group.len() > 1) {
        problems.push(
            Problem::new(pos, "set either `region` or `endpoint`, not both")
                .hint("`endpoint` replaces `region`: remove one of them"),
        );
    }
}

fn read_setting<'a>(
    r: &mut Reader<'a>,
    key: &Scalar<'a>,
    written: &mut Written,
) -> Result<(), super::yaml::Fatal> {
    let Some(setting) = setting(&key.text) else {
        let mut problem = Problem::new(
            key.pos,
            format!("unknown setting `{}` in attrsync.yaml", key.text),
        );
        let names = || SETTINGS.iter().map(|s| s.name);
        problem = match super::closest(&key.text, names()) {
            Some(near) => problem.hint(format!("did you mean `{near}`?")),
            None => problem.hint(format!(
                "the settings are: {}",
                names().collect::<Vec<_>>().join(", ")
            )),
        };
        r.problems.push(problem);
        return r.skip_value();
    };
    if let Some(value) = setting.kind.read(r, setting.name)? {
        written.values.push((setting, value));
    }
    Ok(())
}

fn text(r: &mut Reader<'_>, key: &str) -> Result<Option<(String, Pos)>, super::yaml::Fatal> {
    let Some(s) = r.scalar(&|| format!("`{key}`"))? else {
        return Ok(None);
    };
    if s.plain && Resolved::of_plain(&s.text) == Resolved::Null || s.text.is_empty() {
        r.problems
            .push(Problem::new(s.pos, format!("`{key}` is empty")));
        return Ok(None);
    }
    Ok(Some((s.text.into_owned(), s.pos)))
}

fn number(
    r: &mut Reader<'_>,
    key: &str,
    min: u64,
    max: u64,
) -> Result<Option<u64>, super::yaml::Fatal> {
    let Some(s) = r.scalar(&|| format!("`{key}`"))? else {
        return Ok(None);
    };
    match s.text.parse::<u64>() {
        Ok(n) if s.plain && (min..=max).contains(&n) => Ok(Some(n)),
        Ok(_) if s.plain => {
            r.problems.push(Problem::new(
                s.pos,
                format!("`{key}` is {}, it must be between {min} and {max}", s.text),
            ));
            Ok(None)
        }
        _ => {
            r.problems.push(
                Problem::new(
                    s.pos,
                    format!("`{key}` must be a whole number, found `{}`", s.text),
                )
                .hint("write digits only, without quotes"),
            );
            Ok(None)
        }
    }
}

fn boolean(r: &mut Reader<'_>, key: &str) -> Result<Option<bool>, super::yaml::Fatal> {
    let Some(s) = r.scalar(&|| format!("`{key}`"))? else {
        return Ok(None);
    };
    match (&*s.text, s.plain) {
        ("true", true) => Ok(Some(true)),
        ("false", true) => Ok(Some(false)),
        _ => {
            r.problems.push(
                Problem::new(
                    s.pos,
                    format!("`{key}` must be true or false, found `{}`", s.text),
                )
                .hint("write true or false, without quotes"),
            );
            Ok(None)
        }
    }
}

fn attributes(r: &mut Reader<'_>) -> Result<Option<Vec<AttrName>>, super::yaml::Fatal> {
    let Some(items) = r.scalar_list(&|| "`attributes`".to_owned())? else {
        return Ok(None);
    };
    let mut names: Vec<AttrName> = Vec::with_capacity(items.len());
    let mut ok = true;
    for item in &items {
        if item.plain && Resolved::of_plain(&item.text) != Resolved::Str {
            r.problems.push(
                Problem::new(
                    item.pos,
                    format!(
                        "attribute name `{}` is read as {} by YAML tools",
                        item.text,
                        Resolved::of_plain(&item.text).describe()
                    ),
                )
                .hint(format!("quote it: \"{}\"", item.text)),
            );
            ok = false;
            continue;
        }
        match AttrName::new(&item.text) {
            Ok(name) if names.contains(&name) => {
                r.problems.push(
                    Problem::new(item.pos, format!("attribute `{name}` is listed twice"))
                        .hint("list each name once"),
                );
                ok = false;
            }
            Ok(name) => names.push(name),
            Err(e) => {
                r.problems.push(Problem::new(
                    item.pos,
                    format!("attribute name `{}`: {e}", item.text),
                ));
                ok = false;
            }
        }
    }
    if items.len() > MAX_ATTRIBUTES {
        let pos = items[MAX_ATTRIBUTES].pos;
        r.problems.push(
            Problem::new(
                pos,
                format!(
                    "`attributes` lists {} names, an app has at most {MAX_ATTRIBUTES}",
                    items.len()
                ),
            )
            .hint("remove the names the app does not use"),
        );
        ok = false;
    }
    Ok(ok.then_some(names))
}

#[cfg(test)]
mod tests {
    use super::*;

    const MINIMAL: &str = "sdkappid: 1400000000\nidentifier: administrator\nregion: singapore\nattributes: [sex, city, tier]\n";

    fn settings(text: &str) -> Settings {
        match parse(text, Path::new("/repo")).settings {
            Ok(settings) => settings,
            Err(problems) => panic!("{text}: {problems:?}"),
        }
    }

    #[test]
    fn every_default_reads_the_same_through_yaml() {
        let defaults = settings(MINIMAL);
        for setting in SETTINGS {
            if let Need::Default(default) = setting.need {
                let written = settings(&format!("{MINIMAL}{}: {default}\n", setting.name));
                assert_eq!(written, defaults, "{}", setting.name);
            }
        }
    }

    #[test]
    fn the_full_example_shows_every_setting_with_its_default() {
        let text = include_str!("../../examples/attrsync.full.yaml");
        for setting in SETTINGS {
            let key = format!("{}: ", setting.name);
            assert!(
                text.lines()
                    .any(|l| l.starts_with(&key) || l.starts_with(&format!("# {key}"))),
                "{} is missing from examples/attrsync.full.yaml",
                setting.name
            );
            if let Need::Default(default) = setting.need {
                let line = format!("{key}{default}");
                assert!(
                    text.lines().any(|l| l == line),
                    "examples/attrsync.full.yaml should show `{line}`"
                );
            }
        }
        assert_eq!(settings(text), settings(MINIMAL));
    }

    #[test]
    fn the_readme_table_is_the_settings_table() {
        let readme = include_str!("../../README.md");
        let rows: Vec<Vec<String>> = readme
            .lines()
            .skip_while(|l| !l.starts_with("| setting | required | default | meaning |"))
            .skip(2)
            .take_while(|l| l.starts_with('|'))
            .map(|l| {
                // No cell of this table holds a `|`.
                l.trim()
                    .trim_matches('|')
                    .split('|')
                    .map(|cell| cell.trim().to_owned())
                    .collect()
            })
            .collect();
        let expected: Vec<Vec<String>> = SETTINGS
            .iter()
            .map(|s| {
                let (required, default) = match s.need {
                    Need::Required(_) => ("yes", String::new()),
                    Need::OneOf(_) => ("one of the two", String::new()),
                    Need::Default(default) => ("no", format!("`{default}`")),
                    Need::Alias(_) => ("no", String::new()),
                };
                vec![
                    format!("`{}`", s.name),
                    required.to_owned(),
                    default,
                    s.doc.to_owned(),
                ]
            })
            .collect();
        assert_eq!(rows, expected, "README.md's settings table");
    }
}
