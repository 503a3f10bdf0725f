//! A user file: `defaults:` and `users:`, read into users with their positions.

use crate::model::{AttrName, AttrValue, Attrs, Interner, UserId};

use super::yaml::{Fatal, Pos, Problem, Reader, Resolved, Scalar};

/// One user as declared in a file.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DeclaredUser {
    /// The user id.
    pub id: UserId,
    /// Its attributes, file defaults merged in.
    pub attrs: Attrs,
    /// Where the id is written.
    pub pos: Pos,
}

/// What one user file declares, sorted by user id, and the problems found in it.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ParsedFile {
    /// The users, sorted by id (ids may repeat when the file has duplicate keys).
    pub users: Vec<DeclaredUser>,
    /// Problems, in file order.
    pub problems: Vec<Problem>,
}

/// [`parse_sharing`] with an interner of its own.
#[cfg(test)]
pub fn parse(text: &str, attributes: Option<&[AttrName]>) -> ParsedFile {
    parse_sharing(text, attributes, &mut Interner::default())
}

/// Reads a user file. `attributes` is the configured list, or `None` when `attrsync.yaml`
/// itself is broken (names are then not checked). Values and attribute sets are shared with
/// other files through `shared`.
///
/// A file in the plain shape nearly every user file has is read by [`super::simple`]; any
/// other file, and any file with a problem, goes through the YAML parser. Both give the same
/// result for the files the first one reads.
pub fn parse_sharing(
    text: &str,
    attributes: Option<&[AttrName]>,
    shared: &mut Interner,
) -> ParsedFile {
    if let Some(names) = attributes {
        if let Some((defaults, users)) = super::simple::read(text, names, shared) {
            return finish(defaults, users, Vec::new(), shared);
        }
    }
    let (defaults, users, problems) = read_yaml(text, attributes, shared);
    finish(defaults, users, problems, shared)
}

/// The defaults, users and problems of `text` through the YAML parser.
fn read_yaml(
    text: &str,
    attributes: Option<&[AttrName]>,
    shared: &mut Interner,
) -> (Vec<(AttrName, AttrValue)>, Users, Vec<Problem>) {
    let mut reader = Reader::new(text);
    let mut defaults: Vec<(AttrName, AttrValue)> = Vec::new();
    let mut users = Users::default();
    let _ = read_file(&mut reader, attributes, &mut defaults, &mut users);
    // Equal values share one allocation: a file repeats the same few cities and tiers.
    users.pairs = users
        .pairs
        .into_iter()
        .map(|(name, value)| (name, shared.share(value)))
        .collect();
    (defaults, users, reader.problems)
}

/// [`parse_sharing`] through the YAML parser, whatever the file's shape.
#[cfg(test)]
pub(super) fn parse_yaml(text: &str, attributes: Option<&[AttrName]>) -> ParsedFile {
    let mut shared = Interner::default();
    let (defaults, users, problems) = read_yaml(text, attributes, &mut shared);
    finish(defaults, users, problems, &mut shared)
}

/// The file's users with the defaults merged in, sorted by id; equal attribute sets share
/// one allocation through `values` (whose values the pairs already share).
fn finish(
    defaults: Vec<(AttrName, AttrValue)>,
    users: Users,
    problems: Vec<Problem>,
    values: &mut Interner,
) -> ParsedFile {
    // One buffer serves every user.
    let mut scratch: Vec<(AttrName, AttrValue)> = Vec::new();
    let Users { declared, pairs } = users;
    let mut pairs = pairs.into_iter();
    let mut users: Vec<DeclaredUser> = declared
        .into_iter()
        .map(|(id, count, pos)| {
            // Defaults first, so the user's own value wins.
            scratch.clear();
            scratch.extend(defaults.iter().cloned());
            scratch.extend(pairs.by_ref().take(count as usize));
            DeclaredUser {
                id,
                attrs: values.attrs_of(&mut scratch),
                pos,
            }
        })
        .collect();
    users.sort_by(|a, b| a.id.cmp(&b.id));
    ParsedFile { users, problems }
}

/// The users of a file as read: each with how many of `pairs` (in order) are its own.
#[derive(Default)]
pub(super) struct Users {
    /// Each user: its id, how many pairs are its own, where the id is written.
    pub declared: Vec<(UserId, u32, Pos)>,
    /// The users' own pairs, in file order.
    pub pairs: Vec<(AttrName, AttrValue)>,
}

fn read_file<'a>(
    r: &mut Reader<'a>,
    attributes: Option<&[AttrName]>,
    defaults: &mut Vec<(AttrName, AttrValue)>,
    users: &mut Users,
) -> Result<(), Fatal> {
    if !r.begin()? {
        return Ok(());
    }
    r.mapping(&|| "the user file".to_owned(), true, |r, key| {
        match &*key.text {
            "defaults" => {
                r.mapping(&|| "`defaults`".to_owned(), true, |r, name| {
                    if let Some(pair) = attribute(r, name, attributes, &|| "defaults".to_owned())? {
                        defaults.push(pair);
                    }
                    Ok(())
                })?;
            }
            "users" => {
                // Duplicate user ids are found after sorting (they may also span files).
                r.mapping(&|| "`users`".to_owned(), false, |r, id| user(r, id, attributes, users))?;
            }
            other => {
                let problem = Problem::new(key.pos, format!("unknown key `{other}` in a user file"));
                r.problems.push(match super::closest(other, ["defaults", "users"].into_iter()) {
                    Some(near) => problem.hint(format!("did you mean `{near}`? a user file has only `defaults:` and `users:`")),
                    None => problem.hint("a user file has only `defaults:` and `users:`; declare users under `users:`"),
                });
                r.skip_value()?;
            }
        }
        Ok(())
    })?;
    r.end()?;
    Ok(())
}

fn user<'a>(
    r: &mut Reader<'a>,
    key: &Scalar<'a>,
    attributes: Option<&[AttrName]>,
    users: &mut Users,
) -> Result<(), Fatal> {
    let id = match user_id(key) {
        Ok(id) => Some(id),
        Err(problem) => {
            r.problems.push(problem);
            None
        }
    };
    let label = || format!("user `{}`", key.text);
    let first = users.pairs.len();
    r.mapping(&label, true, |r, name| {
        if let Some(pair) = attribute(r, name, attributes, &label)? {
            users.pairs.push(pair);
        }
        Ok(())
    })?;
    match id {
        Some(id) => {
            let count = u32::try_from(users.pairs.len() - first).unwrap_or(u32::MAX);
            users.declared.push((id, count, key.pos));
        }
        None => users.pairs.truncate(first),
    }
    Ok(())
}

fn user_id(key: &Scalar<'_>) -> Result<UserId, Problem> {
    if key.plain {
        let resolved = Resolved::of_plain(&key.text);
        if !matches!(resolved, Resolved::Str | Resolved::CanonicalInt) {
            return Err(Problem::new(
                key.pos,
                format!(
                    "user id `{}` is read as {} by YAML tools",
                    key.text,
                    resolved.describe()
                ),
            )
            .hint(format!("quote it: \"{}\"", key.text)));
        }
    }
    UserId::new(&key.text)
        .map_err(|e| Problem::new(key.pos, format!("invalid user id {:?}: {e}", &*key.text)))
}

fn attribute<'a>(
    r: &mut Reader<'a>,
    name: &Scalar<'a>,
    attributes: Option<&[AttrName]>,
    owner: &dyn Fn() -> String,
) -> Result<Option<(AttrName, AttrValue)>, Fatal> {
    let known = match attributes {
        Some(list) => match list.iter().find(|a| a.as_str() == name.text) {
            Some(found) => Some(found.clone()),
            None => {
                let mut problem = Problem::new(
                    name.pos,
                    format!("unknown attribute `{}` in {}", name.text, owner()),
                );
                let listed: Vec<&str> = list.iter().map(AttrName::as_str).collect();
                problem = match super::closest(&name.text, listed.iter().copied()) {
                    Some(near) => problem.hint(format!(
                        "did you mean `{near}`? attrsync.yaml lists: {}",
                        listed.join(", ")
                    )),
                    None => problem.hint(format!(
                        "attrsync.yaml lists: {}; add it to `attributes` if the app has it",
                        listed.join(", ")
                    )),
                };
                r.problems.push(problem);
                None
            }
        },
        None => AttrName::new(&name.text).ok(),
    };
    let what = || format!("`{}` of {}", name.text, owner());
    let Some(value) = r.scalar(&what)? else {
        return Ok(None);
    };
    if value.plain {
        let resolved = Resolved::of_plain(&value.text);
        if resolved != Resolved::Str {
            r.problems.push(
                Problem::new(
                    value.pos,
                    format!(
                        "{} is `{}`, which YAML reads as {}, not a string",
                        what(),
                        value.text,
                        resolved.describe()
                    ),
                )
                .hint(format!("quote it: {}: \"{}\"", name.text, value.text)),
            );
            return Ok(None);
        }
    }
    match AttrValue::new(&value.text) {
        Ok(v) => Ok(known.map(|k| (k, v))),
        Err(e) => {
            let mut problem = Problem::new(value.pos, format!("{}: {e}", what()));
            if value.text.ends_with('\n') {
                problem = problem.hint(
                    "a block scalar (`|` or `>`) keeps its final line break: write `|-` or `>-`, \
                     or put the value on the key's line",
                );
            }
            r.problems.push(problem);
            Ok(None)
        }
    }
}
