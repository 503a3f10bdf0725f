//! A fast reader for the plain shape nearly every user file has, so that a cold load does
//! not pay the YAML parser's price for it.
//!
//! It reads one shape only, line by line: `defaults:` and `users:` at the left margin, each
//! user's attributes in a one-line flow mapping (`alice: {sex: female, city: Paris}`) or as
//! lines indented under the id, every id, name and value a plain token of letters, digits and
//! `_ . @ / -`, whole-line comments and blank lines. Anything else (quotes, inline comments,
//! tabs, `\r`, control characters, non-ASCII text, anchors, another indentation) and anything
//! the YAML reader would report a problem for (an unknown attribute, a duplicate key, `NO` or
//! `1.0` unquoted, a value too long) makes it give up, and the file goes to the YAML reader.
//! So for every file it reads, the result is what the YAML reader gives: the tests compare the
//! two on generated and mutated files.

use crate::model::{AttrName, AttrValue, Interner, UserId};

use super::users::Users;
use super::yaml::{Pos, Resolved};

/// The defaults and users of `text`, or `None` when the file is not in the plain shape or
/// has a problem (the YAML reader then reads it and reports what is wrong).
///
/// Values are interned in `shared` (the loading thread's interner).
pub(super) fn read(
    text: &str,
    attributes: &[AttrName],
    shared: &mut Interner,
) -> Option<(Vec<(AttrName, AttrValue)>, Users)> {
    // Printable ASCII and `\n` only: columns are counted in characters, which are then
    // bytes, and YAML's other line break (`\r`), tabs and control characters are left to
    // the YAML reader, even in comments.
    if !text
        .bytes()
        .all(|b| b == b'\n' || (b' '..=b'~').contains(&b))
    {
        return None;
    }
    let mut reader = Simple {
        attributes,
        values: shared,
        defaults: None,
        users: None,
    };
    let mut lines = text
        .split('\n')
        .enumerate()
        .map(|(index, line)| (u32::try_from(index + 1).unwrap_or(u32::MAX), line))
        .filter(|(_, line)| !skipped(line))
        .peekable();
    while let Some((_, line)) = lines.next() {
        let bytes = line.as_bytes();
        let key_end = token_end(bytes, 0)?;
        let rest = bytes.get(key_end..)?.strip_prefix(b":")?;
        let inline = trim_end(rest);
        match &bytes[..key_end] {
            b"defaults" if reader.defaults.is_none() => {
                let mut defaults = Vec::new();
                if inline.is_empty() {
                    reader.block(&mut lines, 0, &mut defaults)?;
                } else {
                    reader.flow(spaces_then(inline)?, &mut defaults)?;
                }
                reader.defaults = Some(defaults);
            }
            b"users" if reader.users.is_none() && inline.is_empty() => {
                reader.users = Some(reader.users_block(&mut lines)?);
            }
            _ => return None,
        }
    }
    // An empty file, or one without `users:`, is left to the YAML reader's rules.
    let users = reader.users?;
    Some((reader.defaults.unwrap_or_default(), users))
}

/// Whether a line is blank or a whole-line comment.
fn skipped(line: &str) -> bool {
    let trimmed = line.trim_start_matches(' ');
    trimmed.is_empty() || trimmed.starts_with('#')
}

/// The file's lines still to read, numbered from 1, blank and comment lines left out.
type Lines<I> = std::iter::Peekable<I>;

struct Simple<'a> {
    attributes: &'a [AttrName],
    values: &'a mut Interner,
    defaults: Option<Vec<(AttrName, AttrValue)>>,
    users: Option<Users>,
}

impl Simple<'_> {
    /// The entries of `users:`: ids at one indentation, each with a flow mapping on its line
    /// or a block of attributes under it.
    fn users_block<'t>(
        &mut self,
        lines: &mut Lines<impl Iterator<Item = (u32, &'t str)>>,
    ) -> Option<Users> {
        let mut users = Users::default();
        let mut indent = None;
        while let Some(&(number, line)) = lines.peek() {
            let bytes = line.as_bytes();
            let own = indentation(bytes);
            if own == 0 {
                break;
            }
            lines.next();
            // Every id at the indentation of the first.
            if *indent.get_or_insert(own) != own {
                return None;
            }
            let id_end = token_end(bytes, own)?;
            let id = user_id(&line[own..id_end])?;
            let rest = bytes.get(id_end..)?.strip_prefix(b":")?;
            let inline = trim_end(rest);
            let first = users.pairs.len();
            if inline.is_empty() {
                self.block(lines, own, &mut users.pairs)?;
            } else {
                self.flow(spaces_then(inline)?, &mut users.pairs)?;
            }
            let count = u32::try_from(users.pairs.len() - first).ok()?;
            let column = u32::try_from(own + 1).ok()?;
            users.declared.push((
                id,
                count,
                Pos {
                    line: number,
                    column,
                },
            ));
        }
        (!users.declared.is_empty()).then_some(users)
    }

    /// `name: value` lines indented deeper than `parent`, all at one indentation; at least
    /// one (an empty block is null, which the YAML reader reports).
    fn block<'t>(
        &mut self,
        lines: &mut Lines<impl Iterator<Item = (u32, &'t str)>>,
        parent: usize,
        into: &mut Vec<(AttrName, AttrValue)>,
    ) -> Option<()> {
        let first = into.len();
        let mut indent = None;
        while let Some(&(_, line)) = lines.peek() {
            let bytes = line.as_bytes();
            let own = indentation(bytes);
            if own <= parent {
                break;
            }
            lines.next();
            if *indent.get_or_insert(own) != own {
                return None;
            }
            let name_end = token_end(bytes, own)?;
            let rest = bytes.get(name_end..)?.strip_prefix(b":")?;
            let value = spaces_then(trim_end(rest))?;
            if token_end(value, 0)? != value.len() {
                return None;
            }
            push_new(into, first, self.pair(&line[own..name_end], value)?)?;
        }
        (into.len() > first).then_some(())
    }

    /// `{name: value, ...}` (nothing after it but spaces).
    fn flow(&mut self, text: &[u8], into: &mut Vec<(AttrName, AttrValue)>) -> Option<()> {
        let first = into.len();
        let mut at = 0;
        let inner = text.strip_prefix(b"{")?.strip_suffix(b"}")?;
        if skip_spaces(inner, 0) == inner.len() {
            return Some(());
        }
        loop {
            at = skip_spaces(inner, at);
            let name_end = token_end(inner, at)?;
            let name = &inner[at..name_end];
            at = name_end;
            if inner.get(at) != Some(&b':') || inner.get(at + 1) != Some(&b' ') {
                return None;
            }
            at = skip_spaces(inner, at + 1);
            let value_end = token_end(inner, at)?;
            let value = &inner[at..value_end];
            push_new(
                into,
                first,
                self.pair(std::str::from_utf8(name).ok()?, value)?,
            )?;
            at = skip_spaces(inner, value_end);
            match inner.get(at) {
                None => break,
                Some(b',') => at += 1,
                Some(_) => return None,
            }
        }
        Some(())
    }

    /// A configured attribute and a value that is a string as YAML reads it.
    fn pair(&mut self, name: &str, value: &[u8]) -> Option<(AttrName, AttrValue)> {
        // Names are a few bytes: compared inline rather than through a `memcmp` call each.
        let name = self
            .attributes
            .iter()
            .find(|a| a.as_str().bytes().eq(name.bytes()))?
            .clone();
        let value = std::str::from_utf8(value).ok()?;
        if Resolved::of_plain(value) != Resolved::Str {
            return None;
        }
        Some((name, self.values.value(value).ok()?))
    }
}

/// A user id the YAML reader takes without a problem.
fn user_id(text: &str) -> Option<UserId> {
    match Resolved::of_plain(text) {
        Resolved::Str | Resolved::CanonicalInt => UserId::new(text).ok(),
        _ => None,
    }
}

/// Adds `pair` to the mapping that starts at `into[first]`; `None` when its name is there
/// already (a duplicate key). Checked at each pair, so a mapping is never longer than the
/// `attributes` list when this looks through it: a hostile line of 100,000 pairs costs
/// linear time.
fn push_new(
    into: &mut Vec<(AttrName, AttrValue)>,
    first: usize,
    pair: (AttrName, AttrValue),
) -> Option<()> {
    if into[first..].iter().any(|(seen, _)| *seen == pair.0) {
        return None;
    }
    into.push(pair);
    Some(())
}

/// How many spaces a line starts with.
fn indentation(line: &[u8]) -> usize {
    line.iter().take_while(|&&b| b == b' ').count()
}

fn skip_spaces(text: &[u8], mut at: usize) -> usize {
    while text.get(at) == Some(&b' ') {
        at += 1;
    }
    at
}

/// `text` without trailing spaces.
fn trim_end(text: &[u8]) -> &[u8] {
    let end = text.iter().rposition(|&b| b != b' ').map_or(0, |i| i + 1);
    &text[..end]
}

/// What follows one or more spaces at the start of `text`.
fn spaces_then(text: &[u8]) -> Option<&[u8]> {
    let at = skip_spaces(text, 0);
    (at > 0 && at < text.len()).then(|| &text[at..])
}

/// The end of the plain token starting at `at`: a letter, digit or `_`, then letters,
/// digits and `_ . @ / -`. `None` when there is none.
fn token_end(text: &[u8], at: usize) -> Option<usize> {
    let first = *text.get(at)?;
    if !(first.is_ascii_alphanumeric() || first == b'_') {
        return None;
    }
    let len = text[at..]
        .iter()
        .take_while(|&&b| {
            b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b'@' | b'/' | b'-')
        })
        .count();
    Some(at + len)
}

#[cfg(test)]
mod tests;
