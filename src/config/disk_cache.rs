//! The parse cache on disk: for each user file, keyed by the SHA-256 of its content, what
//! parsing it gave (users and problems) in a compact binary form, so that a one-shot command
//! re-parses only the files that changed since the last run.
//!
//! The cache lives in `.attrsync-cache/` beside `attrsync.yaml` (with a `.gitignore` of its
//! own, as ruff and mypy do). Everything that changes what a file means is in its header: the
//! loader (attrsync's version and commit) and the `attributes` list. A header that differs, an
//! entry whose CRC-32 fails, or one that does not decode into valid ids and values is ignored
//! and the file parsed again: the cache is never trusted over the files.

use std::collections::HashMap;
use std::ops::Range;
use std::path::{Path, PathBuf};

use super::users::{DeclaredUser, ParsedFile};
use super::yaml::{Pos, Problem};
use crate::model::{AttrName, Attrs, Interner, UserId};

/// The directory beside `attrsync.yaml`.
pub const CACHE_DIR: &str = ".attrsync-cache";

/// The cache file in [`CACHE_DIR`].
const CACHE_FILE: &str = "parsed-user-files";

/// The first bytes of a cache file.
const MAGIC: &[u8] = b"attrsync parse cache\n";

/// This layout's version.
const FORMAT: u32 = 2;

/// Who wrote the cache: a build whose loader could differ parses everything again.
const LOADER: &str = env!("ATTRSYNC_VERSION");

/// Where the cache of the config repository at `root` is.
pub fn cache_path(root: &Path) -> PathBuf {
    root.join(CACHE_DIR).join(CACHE_FILE)
}

/// A cache file read into memory, with its entries indexed (and not yet decoded: each is
/// decoded by the thread that needs it).
#[derive(Default)]
pub struct DiskCache {
    bytes: Vec<u8>,
    /// Key → the entry's body (CRC-32 first).
    index: HashMap<[u8; 32], Range<usize>>,
}

impl DiskCache {
    /// Reads the cache at `path` for `attributes`; empty when it is missing, foreign, written
    /// by another build or for other attributes, or cut short.
    pub fn read(path: &Path, attributes: &[AttrName]) -> Self {
        let Ok(bytes) = crate::files::read_regular(path, super::MAX_FILE_BYTES * 4) else {
            return Self::default();
        };
        match index(&bytes, attributes) {
            Some(index) => Self { bytes, index },
            None => {
                tracing::debug!(path = %path.display(), "ignoring a parse cache written for other settings or another build");
                Self::default()
            }
        }
    }

    /// How many entries the cache holds.
    pub fn len(&self) -> usize {
        self.index.len()
    }

    /// The entry for `key`, CRC-checked, still encoded.
    pub fn raw(&self, key: &[u8; 32]) -> Option<&[u8]> {
        let entry = &self.bytes[self.index.get(key)?.clone()];
        let (crc, body) = entry.split_at(4);
        (crc32fast::hash(body).to_le_bytes() == crc).then_some(entry)
    }

    /// The parsed file for `key`, if the cache holds a sound entry for it. Its values and
    /// sets are shared through `shared` (one per thread, across the files it decodes).
    pub fn get(
        &self,
        key: &[u8; 32],
        attributes: &[AttrName],
        shared: &mut Interner,
    ) -> Option<ParsedFile> {
        decode(&self.raw(key)?[4..], attributes, shared)
    }
}

/// Reads the header and indexes the entries; `None` for anything but a sound cache of this
/// build for `attributes`.
fn index(bytes: &[u8], attributes: &[AttrName]) -> Option<HashMap<[u8; 32], Range<usize>>> {
    let mut r = Reader { bytes, at: 0 };
    if r.take(MAGIC.len())? != MAGIC || r.u32()? != FORMAT {
        return None;
    }
    let loader = r.string()?;
    let names = r.string()?;
    if loader != LOADER || names != names_line(attributes) {
        return None;
    }
    let count = r.u32()? as usize;
    let mut index = HashMap::with_capacity(count.min(1 << 20));
    for _ in 0..count {
        let key: [u8; 32] = r.take(32)?.try_into().ok()?;
        let len = r.u32()? as usize;
        let start = r.at;
        r.take(len)?;
        index.insert(key, start..start + len);
    }
    (r.at == bytes.len()).then_some(index)
}

/// The attributes as the header records them.
fn names_line(attributes: &[AttrName]) -> String {
    attributes
        .iter()
        .map(AttrName::as_str)
        .collect::<Vec<_>>()
        .join("\n")
}

/// The cache file for `attributes` with `entries` (key and encoded entry, CRC first).
pub fn serialize(attributes: &[AttrName], entries: &[([u8; 32], &[u8])]) -> Vec<u8> {
    let size: usize = entries.iter().map(|(_, e)| 36 + e.len()).sum();
    let mut out = Vec::with_capacity(64 + size);
    out.extend_from_slice(MAGIC);
    out.extend_from_slice(&FORMAT.to_le_bytes());
    put_string(&mut out, LOADER);
    put_string(&mut out, &names_line(attributes));
    out.extend_from_slice(&(entries.len() as u32).to_le_bytes());
    for (key, entry) in entries {
        out.extend_from_slice(key);
        out.extend_from_slice(&(entry.len() as u32).to_le_bytes());
        out.extend_from_slice(entry);
    }
    out
}

/// Writes a [`serialize`]d cache through a private temporary file renamed into place.
/// Creates [`CACHE_DIR`] with a `.gitignore` that keeps it out of the repository.
pub fn store(root: &Path, bytes: &[u8]) -> std::io::Result<()> {
    let dir = root.join(CACHE_DIR);
    if !dir.is_dir() {
        crate::files::create_private_dir(&dir)?;
        crate::files::write_private(
            &dir.join(".gitignore"),
            b"# attrsync's parse cache: safe to delete.\n*\n",
        )?;
    }
    crate::files::write_private(&dir.join(CACHE_FILE), bytes)
}

/// `file` as a cache entry (CRC-32, then the body), or `None` when it holds something the
/// layout cannot say (an attribute outside `attributes`, a field too long): it is then simply
/// parsed again next time.
///
/// A file's users repeat a few attribute sets (a tier and a city out of a handful), so the
/// body lists each distinct set once, and each user names its set by number: decoding then
/// costs one allocation per user (its id), not one per value.
pub fn encode(file: &ParsedFile, attributes: &[AttrName]) -> Option<Vec<u8>> {
    let mut sets: Vec<&Attrs> = Vec::new();
    let mut set_of: HashMap<&Attrs, u32> = HashMap::new();
    let mut numbers = Vec::with_capacity(file.users.len());
    for user in &file.users {
        let number = *set_of.entry(&user.attrs).or_insert_with(|| {
            sets.push(&user.attrs);
            sets.len() as u32 - 1
        });
        numbers.push(number);
    }
    let mut body = Vec::with_capacity(16 + sets.len() * 32 + file.users.len() * 24);
    body.extend_from_slice(&u32::try_from(sets.len()).ok()?.to_le_bytes());
    for set in &sets {
        body.push(u8::try_from(set.len()).ok()?);
        for (name, value) in set.iter() {
            let slot = attributes.iter().position(|a| a == name)?;
            body.push(u8::try_from(slot).ok()?);
            let value = value.as_str().as_bytes();
            body.push(u8::try_from(value.len()).ok()?);
            body.extend_from_slice(value);
        }
    }
    body.extend_from_slice(&u32::try_from(file.users.len()).ok()?.to_le_bytes());
    for (user, number) in file.users.iter().zip(numbers) {
        let id = user.id.as_str().as_bytes();
        body.extend_from_slice(&u16::try_from(id.len()).ok()?.to_le_bytes());
        body.extend_from_slice(id);
        put_pos(&mut body, user.pos);
        body.extend_from_slice(&number.to_le_bytes());
    }
    body.extend_from_slice(&u32::try_from(file.problems.len()).ok()?.to_le_bytes());
    for problem in &file.problems {
        put_pos(&mut body, problem.pos);
        put_string(&mut body, &problem.message);
        match &problem.hint {
            Some(hint) => {
                body.push(1);
                put_string(&mut body, hint);
            }
            None => body.push(0),
        }
    }
    let mut entry = Vec::with_capacity(4 + body.len());
    entry.extend_from_slice(&crc32fast::hash(&body).to_le_bytes());
    entry.extend_from_slice(&body);
    Some(entry)
}

/// An entry's body back into a parsed file, every id and value validated again.
fn decode(body: &[u8], attributes: &[AttrName], shared: &mut Interner) -> Option<ParsedFile> {
    let mut r = Reader { bytes: body, at: 0 };
    let count = r.u32()? as usize;
    let mut sets = Vec::with_capacity(count.min(body.len()));
    for _ in 0..count {
        let len = r.u8()?;
        let mut pairs = Vec::with_capacity(len as usize);
        for _ in 0..len {
            let name = attributes.get(r.u8()? as usize)?.clone();
            let len = r.u8()? as usize;
            let value = shared.value(std::str::from_utf8(r.take(len)?).ok()?).ok()?;
            pairs.push((name, value));
        }
        let attrs = shared.attrs(pairs);
        // A set is written sorted, each name once: anything else was not written by encode.
        if attrs.len() != len as usize {
            return None;
        }
        sets.push(attrs);
    }
    let users = r.u32()? as usize;
    let mut file = ParsedFile {
        users: Vec::with_capacity(users.min(body.len() / 8)),
        problems: Vec::new(),
    };
    for _ in 0..users {
        let len = r.u16()? as usize;
        let id = UserId::new(std::str::from_utf8(r.take(len)?).ok()?).ok()?;
        let pos = r.pos()?;
        let attrs = sets.get(r.u32()? as usize)?.clone();
        file.users.push(DeclaredUser { id, attrs, pos });
    }
    let problems = r.u32()? as usize;
    for _ in 0..problems {
        let pos = r.pos()?;
        let message = r.string()?.to_owned();
        let hint = match r.u8()? {
            0 => None,
            1 => Some(r.string()?.to_owned()),
            _ => return None,
        };
        file.problems.push(Problem { pos, message, hint });
    }
    (r.at == body.len()).then_some(file)
}

fn put_string(out: &mut Vec<u8>, text: &str) {
    out.extend_from_slice(&(text.len() as u32).to_le_bytes());
    out.extend_from_slice(text.as_bytes());
}

fn put_pos(out: &mut Vec<u8>, pos: Pos) {
    out.extend_from_slice(&pos.line.to_le_bytes());
    out.extend_from_slice(&pos.column.to_le_bytes());
}

/// Reads the layout; every method answers `None` past the end.
struct Reader<'a> {
    bytes: &'a [u8],
    at: usize,
}

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Option<&'a [u8]> {
        let end = self.at.checked_add(n)?;
        let slice = self.bytes.get(self.at..end)?;
        self.at = end;
        Some(slice)
    }

    fn u8(&mut self) -> Option<u8> {
        Some(self.take(1)?[0])
    }

    fn u16(&mut self) -> Option<u16> {
        Some(u16::from_le_bytes(self.take(2)?.try_into().ok()?))
    }

    fn u32(&mut self) -> Option<u32> {
        Some(u32::from_le_bytes(self.take(4)?.try_into().ok()?))
    }

    fn string(&mut self) -> Option<&'a str> {
        let len = self.u32()? as usize;
        std::str::from_utf8(self.take(len)?).ok()
    }

    fn pos(&mut self) -> Option<Pos> {
        Some(Pos {
            line: self.u32()?,
            column: self.u32()?,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn names(list: &[&str]) -> Vec<AttrName> {
        list.iter().map(|n| AttrName::new(n).unwrap()).collect()
    }

    fn parsed(text: &str, attributes: &[AttrName]) -> ParsedFile {
        super::super::users::parse(text, Some(attributes))
    }

    #[test]
    fn an_entry_decodes_to_exactly_what_parsing_gave_problems_included() {
        let attributes = names(&["sex", "city", "tier"]);
        for text in [
            "defaults: {tier: free}\nusers:\n  Mary: {sex: female, city: NewYork}\n  小明: {city: \"北京\"}\n",
            "users:\n  bob: {sex: NO}\n  ann: {colour: red}\n  ann: {city: Rome}\n",
            "users: {}\n",
        ] {
            let file = parsed(text, &attributes);
            let entry = encode(&file, &attributes).expect("encodable");
            assert_eq!(decode(&entry[4..], &attributes, &mut Interner::default()).as_ref(), Some(&file), "{text}");
        }
    }

    #[test]
    fn a_foreign_or_damaged_cache_is_ignored() {
        let dir = tempfile::tempdir().unwrap();
        let attributes = names(&["sex", "city"]);
        let file = parsed("users:\n  Mary: {sex: female}\n", &attributes);
        let entry = encode(&file, &attributes).unwrap();
        let key = [7u8; 32];
        store(dir.path(), &serialize(&attributes, &[(key, &entry)])).unwrap();
        let path = cache_path(dir.path());
        assert_eq!(
            DiskCache::read(&path, &attributes).get(&key, &attributes, &mut Interner::default()),
            Some(file)
        );
        // Other attributes: another meaning.
        assert_eq!(DiskCache::read(&path, &names(&["sex"])).len(), 0);
        // A flipped byte in the entry: its CRC fails, the entry is a miss.
        let mut bytes = std::fs::read(&path).unwrap();
        let last = bytes.len() - 2;
        bytes[last] ^= 0x20;
        std::fs::write(&path, &bytes).unwrap();
        let cache = DiskCache::read(&path, &attributes);
        assert_eq!(cache.len(), 1);
        assert_eq!(cache.get(&key, &attributes, &mut Interner::default()), None);
        // Cut short, or not a cache at all.
        std::fs::write(&path, &bytes[..bytes.len() - 3]).unwrap();
        assert_eq!(DiskCache::read(&path, &attributes).len(), 0);
        std::fs::write(&path, b"users:\n").unwrap();
        assert_eq!(DiskCache::read(&path, &attributes).len(), 0);
        // And the directory keeps itself out of git.
        assert_eq!(
            std::fs::read_to_string(dir.path().join(CACHE_DIR).join(".gitignore")).unwrap(),
            "# attrsync's parse cache: safe to delete.\n*\n"
        );
    }

    #[test]
    fn a_valid_looking_entry_with_an_invalid_value_is_a_miss() {
        let attributes = names(&["city"]);
        let file = parsed("users:\n  Mary: {city: Oslo}\n", &attributes);
        let mut entry = encode(&file, &attributes).unwrap();
        // Turn "Oslo" into "Os\nl": a control character no parse would accept.
        let at = entry.windows(4).position(|w| w == b"Oslo").unwrap();
        entry[at + 2] = b'\n';
        let body = entry[4..].to_vec();
        assert_eq!(decode(&body, &attributes, &mut Interner::default()), None);
    }
}
