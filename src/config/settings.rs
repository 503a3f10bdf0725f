//! `attrsync.yaml`: the settings of a config repository.

use std::path::{Path, PathBuf};

pub use crate::model::Target;
use crate::model::{AttrName, Region, MAX_ATTRIBUTES, MAX_BATCH_SIZE, MAX_RATE_LIMIT};

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
    /// Where the snapshot is (resolved against the config directory).
    pub state_dir: PathBuf,
    /// Delete attributes of users removed from the config.
    pub prune: bool,
    /// Most users a plan may delete without `--allow-mass-delete`.
    pub max_deletes: usize,
    /// API calls per second, 1..=100.
    pub rate_limit: u32,
    /// Users per API call, 1..=100.
    pub batch_size: usize,
}

/// Every key `attrsync.yaml` may have, for messages and suggestions.
const KEYS: [&str; 12] = [
    "sdkappid",
    "identifier",
    "region",
    "endpoint",
    "secret_key_env",
    "attributes",
    "users_dir",
    "state_dir",
    "prune",
    "max_deletes",
    "rate_limit",
    "batch_size",
];

#[derive(Default)]
struct Raw {
    sdkappid: Option<u64>,
    identifier: Option<String>,
    region: Option<(Region, Pos)>,
    endpoint: Option<(String, Pos)>,
    secret_key_env: Option<String>,
    attributes: Option<Vec<AttrName>>,
    users_dir: Option<String>,
    state_dir: Option<String>,
    prune: Option<bool>,
    max_deletes: Option<usize>,
    rate_limit: Option<u32>,
    batch_size: Option<usize>,
    /// `region` or `endpoint` was written, even if invalid: don't also call it missing.
    target_seen: bool,
    /// Every key written, valid or not: an invalid required setting is not also "required".
    written: Vec<String>,
}

/// What reading `attrsync.yaml` gave: the settings if valid, and the attribute list on its own
/// so that user files can still be checked when some other setting is wrong.
pub(super) struct Parsed {
    pub settings: Result<Settings, Vec<Problem>>,
    pub attributes: Option<Vec<AttrName>>,
}

/// Reads `attrsync.yaml` from `text`; `root` is the directory it lives in.
pub(super) fn parse(text: &str, root: &Path) -> Parsed {
    let mut raw = Raw::default();
    let settings = parse_into(text, root, &mut raw);
    Parsed {
        settings,
        attributes: raw.attributes,
    }
}

fn parse_into(text: &str, root: &Path, raw: &mut Raw) -> Result<Settings, Vec<Problem>> {
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
            raw.written.push(key.text.to_string());
            read_setting(r, key, raw)
        })?;
        reader.end()
    })();
    let mut problems = std::mem::take(&mut reader.problems);
    if read.is_err() {
        return Err(problems);
    }
    let missing = |key: &str, hint: &str| {
        Problem::new(
            Pos { line: 1, column: 1 },
            format!("`{key}` is required in attrsync.yaml"),
        )
        .hint(hint.to_owned())
    };
    let absent = |key: &str| !raw.written.iter().any(|k| k == key);
    if raw.sdkappid.is_none() && absent("sdkappid") {
        problems.push(missing(
            "sdkappid",
            "set it to your app's SDKAppID, e.g. `sdkappid: 1400000000`",
        ));
    }
    if raw.identifier.is_none() && absent("identifier") {
        problems.push(missing(
            "identifier",
            "set it to an App admin account, e.g. `identifier: administrator`",
        ));
    }
    if raw.attributes.is_none() && absent("attributes") {
        problems.push(missing(
            "attributes",
            "list the app's attribute names, e.g. `attributes: [sex, city]`",
        ));
    }
    let both = |pos| {
        Problem::new(pos, "set either `region` or `endpoint`, not both")
            .hint("`endpoint` replaces `region`: remove one of them")
    };
    let target = match (raw.region, raw.endpoint.clone()) {
        (Some(_), Some((_, pos))) => {
            problems.push(both(pos));
            None
        }
        // An invalid region is still a region written next to the endpoint.
        (None, Some((_, pos))) if !absent("region") => {
            problems.push(both(pos));
            None
        }
        (Some((region, _)), None) => Some(Target::Region(region)),
        (None, Some((endpoint, _))) if endpoint == "embedded" => Some(Target::Embedded),
        (None, Some((endpoint, _))) => {
            Some(Target::Endpoint(endpoint.trim_end_matches('/').to_owned()))
        }
        (None, None) if raw.target_seen => None,
        (None, None) => {
            problems.push(missing("region", "set `region` (china, singapore, seoul, tokyo, frankfurt, silicon-valley, jakarta) or `endpoint`"));
            None
        }
    };
    if !problems.is_empty() {
        return Err(problems);
    }
    Ok(Settings {
        sdkappid: raw.sdkappid.expect("checked"),
        identifier: raw.identifier.clone().expect("checked"),
        target: target.expect("checked"),
        secret_key_env: raw
            .secret_key_env
            .clone()
            .unwrap_or_else(|| crate::model::DEFAULT_SECRET_KEY_ENV.to_owned()),
        attributes: raw.attributes.clone().expect("checked"),
        users_dir: root.join(raw.users_dir.as_deref().unwrap_or(DEFAULT_USERS_DIR)),
        state_dir: root.join(raw.state_dir.as_deref().unwrap_or(DEFAULT_STATE_DIR)),
        prune: raw.prune.unwrap_or(false),
        max_deletes: raw.max_deletes.unwrap_or(100),
        rate_limit: raw.rate_limit.unwrap_or(MAX_RATE_LIMIT),
        batch_size: raw.batch_size.unwrap_or(MAX_BATCH_SIZE),
    })
}

fn read_setting<'a>(
    r: &mut Reader<'a>,
    key: Scalar<'a>,
    raw: &mut Raw,
) -> Result<(), super::yaml::Fatal> {
    match &*key.text {
        "sdkappid" => raw.sdkappid = number(r, "sdkappid", 1, u64::from(u32::MAX) * 4)?,
        "identifier" => raw.identifier = text(r, "identifier")?.map(|(s, _)| s),
        "region" => {
            raw.target_seen = true;
            if let Some((name, pos)) = text(r, "region")? {
                match Region::from_name(&name) {
                    Some(region) => raw.region = Some((region, pos)),
                    None => {
                        let names: Vec<&str> = Region::ALL.iter().map(|(_, n, _)| *n).collect();
                        r.problems.push(
                            Problem::new(pos, format!("unknown region `{name}`"))
                                .hint(format!("use one of: {}", names.join(", "))),
                        );
                    }
                }
            }
        }
        "endpoint" => {
            raw.target_seen = true;
            if let Some((url, pos)) = text(r, "endpoint")? {
                if url == "embedded" || url.starts_with("http://") || url.starts_with("https://") {
                    raw.endpoint = Some((url, pos));
                } else {
                    r.problems.push(Problem::new(pos, format!("endpoint `{url}` is not a URL")).hint("write a base URL like http://127.0.0.1:8080, or `embedded` for the built-in emulator"));
                }
            }
        }
        "secret_key_env" => raw.secret_key_env = text(r, "secret_key_env")?.map(|(s, _)| s),
        "attributes" => raw.attributes = attributes(r)?,
        "users_dir" => raw.users_dir = text(r, "users_dir")?.map(|(s, _)| s),
        "state_dir" => raw.state_dir = text(r, "state_dir")?.map(|(s, _)| s),
        "prune" => raw.prune = boolean(r, "prune")?,
        "max_deletes" => {
            raw.max_deletes = number(r, "max_deletes", 0, u64::MAX)?
                .map(|n| usize::try_from(n).unwrap_or(usize::MAX))
        }
        "rate_limit" => {
            raw.rate_limit =
                number(r, "rate_limit", 1, u64::from(MAX_RATE_LIMIT))?.map(|n| n as u32)
        }
        "batch_size" => {
            raw.batch_size = number(r, "batch_size", 1, MAX_BATCH_SIZE as u64)?.map(|n| n as usize)
        }
        other => {
            let mut problem = Problem::new(
                key.pos,
                format!("unknown setting `{other}` in attrsync.yaml"),
            );
            problem = match super::closest(other, KEYS.iter().copied()) {
                Some(near) => problem.hint(format!("did you mean `{near}`?")),
                None => problem.hint(format!("the settings are: {}", KEYS.join(", "))),
            };
            r.problems.push(problem);
            r.skip_value()?;
        }
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
