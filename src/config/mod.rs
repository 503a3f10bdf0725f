//! Reading a config repository — `attrsync.yaml` and every user file — into validated
//! [`Settings`] and a [`Desired`] state, with every problem reported as `file:line:column`.

mod disk_cache;
pub mod schema;
mod settings;
mod simple;
mod users;
pub mod yaml;

pub use settings::{
    Kind, Need, Setting, Settings, Target, DEFAULT_STATE_DIR, DEFAULT_USERS_DIR, SETTINGS,
    SETTINGS_FILE,
};
pub use users::{DeclaredUser, ParsedFile};

use std::collections::{HashMap, HashSet};
use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use sha2::{Digest, Sha256};

use crate::model::{AttrName, Attrs, Desired, Interner, UserId, UserMap};
use yaml::{Pos, Problem};

/// One problem in one file.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Diagnostic {
    /// The file, as the user would type it (relative to the config directory when inside it).
    pub file: PathBuf,
    /// Where in the file; `None` for problems with the file as a whole.
    pub pos: Option<Pos>,
    /// What is wrong.
    pub message: String,
    /// How to fix it.
    pub hint: Option<String>,
}

impl Diagnostic {
    fn at(file: &Path, problem: Problem) -> Self {
        Self {
            file: file.to_owned(),
            pos: Some(problem.pos),
            message: problem.message,
            hint: problem.hint,
        }
    }

    fn whole(file: &Path, message: impl Into<String>, hint: Option<String>) -> Self {
        Self {
            file: file.to_owned(),
            pos: None,
            message: message.into(),
            hint,
        }
    }

    /// `file:line:column`, or just `file`.
    pub fn location(&self) -> String {
        match self.pos {
            Some(pos) => format!("{}:{}:{}", self.file.display(), pos.line, pos.column),
            None => self.file.display().to_string(),
        }
    }
}

impl fmt::Display for Diagnostic {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.location(), self.message)?;
        if let Some(hint) = &self.hint {
            write!(f, "\n  help: {hint}")?;
        }
        Ok(())
    }
}

/// Every problem found in a config repository, in file order.
#[derive(Clone, Debug, Default, PartialEq, Eq, thiserror::Error)]
pub struct Diagnostics(pub Vec<Diagnostic>);

impl fmt::Display for Diagnostics {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for d in &self.0 {
            writeln!(f, "{d}")?;
        }
        let files: HashSet<&Path> = self.0.iter().map(|d| d.file.as_path()).collect();
        write!(
            f,
            "the config is invalid: {} problem{} in {} file{}; fix them and run again (nothing was planned or sent)",
            self.0.len(),
            crate::text::s(self.0.len()),
            files.len(),
            crate::text::s(files.len()),
        )
    }
}

/// A loaded, validated config repository.
#[derive(Clone, Debug)]
pub struct Config {
    /// The directory holding `attrsync.yaml`.
    pub root: PathBuf,
    /// The settings.
    pub settings: Settings,
    /// The desired state declared by the user files.
    pub desired: Desired,
    /// How many user files were read.
    pub files: usize,
}

impl Config {
    /// What is valid but most likely a mistake: a users directory without user files, or whose
    /// files declare nobody (a mistyped `users_dir`, a checkout of the wrong branch). Each is
    /// one sentence that says what to check.
    pub fn warnings(&self) -> Vec<String> {
        let users_dir = display_path(&self.root, &self.settings.users_dir);
        if self.files == 0 {
            vec![format!(
                "{} has no user files (*.yaml, *.yml): the config declares no users; add files there, \
                 or check `users_dir` in attrsync.yaml",
                users_dir.display()
            )]
        } else if self.desired.is_empty() {
            vec![format!(
                "the {} under {} declare no users; check that they are the files you meant",
                crate::text::plural(self.files, "user file"),
                users_dir.display()
            )]
        } else {
            Vec::new()
        }
    }
}

/// Remembers parsed user files by content, so a reload re-parses only files that changed.
///
/// The daemon keeps one across reconciles; a one-shot command can pass a fresh one.
#[derive(Default)]
pub struct ParseCache {
    /// Keep parsed files for the next load (the daemon); a one-shot command does not, so the
    /// parsed users can be moved into the desired state instead of copied.
    retain: bool,
    /// Read and write the parse cache on disk (`.attrsync-cache/` beside `attrsync.yaml`).
    persist: bool,
    attributes: Vec<AttrName>,
    files: HashMap<[u8; 32], Arc<ParsedFile>>,
    /// Files parsed (not found in the cache) by the last load.
    pub last_parsed: usize,
}

impl ParseCache {
    /// A cache that reads and writes the parse cache on disk, for a one-shot command: files
    /// whose content it holds are not parsed again.
    pub fn persistent() -> Self {
        Self {
            persist: true,
            ..Self::default()
        }
    }

    /// A cache that keeps parsed files across loads.
    pub fn retaining() -> Self {
        Self {
            retain: true,
            ..Self::default()
        }
    }

    fn get(&self, key: &[u8; 32]) -> Option<Arc<ParsedFile>> {
        self.files.get(key).cloned()
    }
}

/// Reads only `dir/attrsync.yaml` (with `state_override` applied, as [`load`] does): the
/// settings when they are valid, `None` otherwise ([`load`] then says why). Cheap, so that a
/// command can start on the snapshot while the user files load.
pub fn load_settings(dir: &Path, state_override: Option<&str>) -> Option<Settings> {
    let text = read_text(&dir.join(SETTINGS_FILE)).ok()?;
    let mut settings = settings::parse(&text, dir).settings.ok()?;
    if let Some(state) = state_override {
        settings.state = crate::model::StateLocation::parse(state, Path::new(""));
    }
    Some(settings)
}

/// Loads `dir/attrsync.yaml` and the user files it points at.
///
/// `state_override` replaces the `state` setting (`--state`, or `ATTRSYNC_STATE`): a directory
/// (relative to the working directory) or a PostgreSQL URL. All problems are collected;
/// nothing is returned unless the whole repository is valid.
pub fn load(
    dir: &Path,
    state_override: Option<&str>,
    cache: &mut ParseCache,
) -> Result<Config, Diagnostics> {
    let settings_path = dir.join(SETTINGS_FILE);
    let shown_settings = display_path(dir, &settings_path);
    let mut diagnostics = Vec::new();
    let mut attributes = None;
    let settings = match read_text(&settings_path) {
        Ok(text) => {
            let parsed = settings::parse(&text, dir);
            attributes = parsed.attributes;
            match parsed.settings {
                Ok(settings) => Some(settings),
                Err(problems) => {
                    diagnostics.extend(
                        problems
                            .into_iter()
                            .map(|p| Diagnostic::at(&shown_settings, p)),
                    );
                    None
                }
            }
        }
        Err(ReadError::Missing) => {
            return Err(Diagnostics(vec![Diagnostic::whole(
                &shown_settings,
                format!(
                    "not found in {}: this directory is not a config repository",
                    dir.canonicalize()
                        .unwrap_or_else(|_| dir.to_owned())
                        .display()
                ),
                Some("run attrsync inside a config repository, or point --dir at one".to_owned()),
            )]));
        }
        Err(err) => {
            diagnostics.push(err.into_diagnostic(&shown_settings));
            None
        }
    };
    let users_dir = settings
        .as_ref()
        .map_or_else(|| dir.join(DEFAULT_USERS_DIR), |s| s.users_dir.clone());

    let mut files = Vec::new();
    if users_dir.is_dir() {
        collect_files(
            &users_dir,
            &mut files,
            &mut HashSet::new(),
            &mut diagnostics,
            dir,
        );
        files.sort();
    } else if settings.is_some() {
        diagnostics.push(Diagnostic::whole(
            &display_path(dir, &users_dir),
            "the users directory does not exist",
            Some("create it, or set `users_dir` in attrsync.yaml".to_owned()),
        ));
    }

    if cache.attributes != attributes.clone().unwrap_or_default() {
        cache.files.clear();
        cache.attributes = attributes.clone().unwrap_or_default();
    }
    let started = std::time::Instant::now();
    // The disk cache needs the attributes: without valid settings every file is parsed.
    let disk = match (&attributes, cache.persist) {
        (Some(names), true) => Some(disk_cache::DiskCache::read(
            &disk_cache::cache_path(dir),
            names,
        )),
        _ => None,
    };
    let parsed = parse_files(&files, attributes.as_deref(), cache, disk.as_ref());
    if let (Some(names), Some(disk)) = (&attributes, &disk) {
        save_disk_cache(dir, names, disk, &files, &parsed, cache.last_parsed);
    }
    // The cache file's bytes are decoded: free them before the users are merged.
    drop(disk);
    tracing::debug!(files = files.len(), parsed = cache.last_parsed, elapsed = ?started.elapsed(), "parsed the user files");
    let mut runs: Vec<Run> = Vec::with_capacity(files.len());
    for (path, result) in files.iter().zip(parsed) {
        let shown = display_path(dir, path);
        match result.map(|parsed| parsed.file) {
            Ok(file) => {
                diagnostics.extend(
                    file.problems
                        .iter()
                        .cloned()
                        .map(|p| Diagnostic::at(&shown, p)),
                );
                runs.push(match Arc::try_unwrap(file) {
                    Ok(owned) => Run::from(owned.users),
                    Err(shared) => Run::Shared {
                        file: shared,
                        at: 0,
                    },
                });
            }
            Err(diagnostic) => {
                diagnostics.push(diagnostic.into_diagnostic(&shown));
                runs.push(Run::from(Vec::new()));
            }
        }
    }
    let entries = merge_files(runs, |(first, first_file), (second, second_file)| {
        let first_path = display_path(dir, &files[first_file]);
        let second_path = display_path(dir, &files[second_file]);
        diagnostics.push(Diagnostic::at(
            &second_path,
            Problem::new(
                second.pos,
                format!("user `{}` is declared twice", second.id),
            )
            .hint(format!(
                "it is also declared at {}:{}:{}; keep one declaration",
                first_path.display(),
                first.line,
                first.column
            )),
        ));
    });
    tracing::debug!(users = entries.len(), elapsed = ?started.elapsed(), "merged the user files");
    if !diagnostics.is_empty() {
        diagnostics.sort_by(|a, b| (&a.file, a.pos).cmp(&(&b.file, b.pos)));
        return Err(Diagnostics(diagnostics));
    }
    let settings = settings.expect("no diagnostics means the settings parsed");
    let desired = UserMap::from_sorted(entries).expect("sorted and checked for duplicates above");
    let mut settings = settings;
    if let Some(state) = state_override {
        settings.state = crate::model::StateLocation::parse(state, Path::new(""));
    }
    Ok(Config {
        root: dir.to_owned(),
        settings,
        desired,
        files: files.len(),
    })
}

/// One file's users for [`merge_files`], sorted by id.
enum Run {
    /// Users this load owns, moved into the desired state.
    Owned(std::vec::IntoIter<DeclaredUser>),
    /// A parse the daemon's cache keeps for the next load: its users are copied one at a
    /// time into the desired state, with no copy of the whole file first.
    Shared {
        /// The parse.
        file: Arc<ParsedFile>,
        /// The next user's index.
        at: usize,
    },
}

impl From<Vec<DeclaredUser>> for Run {
    fn from(users: Vec<DeclaredUser>) -> Self {
        Run::Owned(users.into_iter())
    }
}

impl Run {
    fn len(&self) -> usize {
        match self {
            Run::Owned(users) => users.len(),
            Run::Shared { file, at } => file.users.len() - at,
        }
    }

    fn next(&mut self) -> Option<DeclaredUser> {
        match self {
            Run::Owned(users) => users.next(),
            Run::Shared { file, at } => {
                let user = file.users.get(*at)?.clone();
                *at += 1;
                Some(user)
            }
        }
    }
}

/// Merges each file's users (sorted by id, `runs[i]` from file `i`) into the desired
/// state's entries, sorted by id. A user declared twice is kept once and reported to
/// `declared_twice` with where it was declared before (position, file) and the repeat;
/// a third declaration is reported against the second, and so on.
///
/// A k-way merge rather than a concatenation and a sort: the result is built at its final
/// size, never beside a second copy of every user with its position.
fn merge_files(
    runs: Vec<impl Into<Run>>,
    mut declared_twice: impl FnMut((Pos, usize), (&DeclaredUser, usize)),
) -> Vec<(UserId, Attrs)> {
    /// A file's next user; the heap's smallest is the next user in id order, the earlier
    /// file first among equal ids.
    struct Head {
        user: DeclaredUser,
        file: usize,
    }
    impl PartialEq for Head {
        fn eq(&self, other: &Self) -> bool {
            self.cmp(other) == std::cmp::Ordering::Equal
        }
    }
    impl Eq for Head {}
    impl PartialOrd for Head {
        fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
            Some(self.cmp(other))
        }
    }
    impl Ord for Head {
        fn cmp(&self, other: &Self) -> std::cmp::Ordering {
            (&other.user.id, other.file).cmp(&(&self.user.id, self.file))
        }
    }

    let mut runs: Vec<Run> = runs.into_iter().map(Into::into).collect();
    let total = runs.iter().map(Run::len).sum();
    let mut entries: Vec<(UserId, Attrs)> = Vec::with_capacity(total);
    let mut heap: std::collections::BinaryHeap<Head> = runs
        .iter_mut()
        .enumerate()
        .filter_map(|(file, run)| {
            Some(Head {
                user: run.next()?,
                file,
            })
        })
        .collect();
    // Where the last user taken was declared, to name it when the next one repeats it.
    let mut last: Option<(Pos, usize)> = None;
    while let Some(mut top) = heap.peek_mut() {
        let file = top.file;
        // Replacing the head in place costs one sift; a file whose ids come in a block (the
        // usual layout) is then read off in a row.
        let user = match runs[file].next() {
            Some(next) => std::mem::replace(&mut top.user, next),
            None => {
                // Free the file's users now, not after the merge: when files hold blocks of
                // ids, the merge's memory stays near one copy of the users.
                runs[file] = Run::from(Vec::new());
                std::collections::binary_heap::PeekMut::pop(top).user
            }
        };
        match (last, entries.last()) {
            (Some(first), Some((id, _))) if *id == user.id => {
                declared_twice(first, (&user, file));
            }
            _ => entries.push((user.id, user.attrs)),
        }
        last = Some((user.pos, file));
    }
    entries
}

/// The most attrsync reads of one config file: far above any real one (a million users in
/// 100 files is 54 MB), and a bound on what a hostile one can cost.
pub const MAX_FILE_BYTES: u64 = 64 * 1024 * 1024;

enum ReadError {
    Missing,
    Io(std::io::Error),
    NotRegular(&'static str),
    TooLarge(u64),
    NotUtf8 { line: u32, column: u32 },
}

impl ReadError {
    fn into_diagnostic(self, shown: &Path) -> Diagnostic {
        match self {
            ReadError::Missing => Diagnostic::whole(
                shown,
                "the file disappeared while reading",
                Some("run again".to_owned()),
            ),
            ReadError::Io(err) => Diagnostic::whole(
                shown,
                format!("cannot read the file: {err}"),
                Some("check its permissions".to_owned()),
            ),
            ReadError::NotRegular(kind) => Diagnostic::whole(
                shown,
                format!("the path is {kind}, not a regular file"),
                Some(
                    "config files must be regular files (symlinks to regular files are fine)"
                        .to_owned(),
                ),
            ),
            ReadError::TooLarge(limit) => Diagnostic::whole(
                shown,
                format!("the file is larger than {} MiB", limit / (1024 * 1024)),
                Some("split it into several files".to_owned()),
            ),
            ReadError::NotUtf8 { line, column } => Diagnostic::at(
                shown,
                Problem::new(Pos { line, column }, "the file is not valid UTF-8")
                    .hint("save it as UTF-8"),
            ),
        }
    }
}

fn read_bytes(path: &Path) -> Result<Vec<u8>, ReadError> {
    use crate::files::{read_regular, ReadFileError};
    read_regular(path, MAX_FILE_BYTES).map_err(|err| match err {
        ReadFileError::NotFound => ReadError::Missing,
        ReadFileError::NotRegular(kind) => ReadError::NotRegular(kind),
        ReadFileError::TooLarge { limit } => ReadError::TooLarge(limit),
        ReadFileError::Io(err) => ReadError::Io(err),
    })
}

fn read_text(path: &Path) -> Result<String, ReadError> {
    to_text(read_bytes(path)?)
}

fn to_text(bytes: Vec<u8>) -> Result<String, ReadError> {
    String::from_utf8(bytes).map_err(|err| {
        let valid = &err.as_bytes()[..err.utf8_error().valid_up_to()];
        let line_start = valid.iter().rposition(|&b| b == b'\n').map_or(0, |i| i + 1);
        let line = valid.iter().filter(|&&b| b == b'\n').count() + 1;
        let column = String::from_utf8_lossy(&valid[line_start..])
            .chars()
            .count()
            + 1;
        ReadError::NotUtf8 {
            line: line as u32,
            column: column as u32,
        }
    })
}

/// Finds `*.yaml` and `*.yml` below `dir`, skipping hidden entries (editor swap and lock files)
/// and directories already visited (a symlink loop ends here).
fn collect_files(
    dir: &Path,
    out: &mut Vec<PathBuf>,
    visited: &mut HashSet<(u64, u64)>,
    diagnostics: &mut Vec<Diagnostic>,
    root: &Path,
) {
    use std::os::unix::fs::MetadataExt;
    let Ok(meta) = std::fs::metadata(dir) else {
        return;
    };
    if !visited.insert((meta.dev(), meta.ino())) {
        return;
    }
    let entries = match std::fs::read_dir(dir) {
        Ok(entries) => entries,
        Err(err) => {
            diagnostics.push(Diagnostic::whole(
                &display_path(root, dir),
                format!("cannot list the directory: {err}"),
                None,
            ));
            return;
        }
    };
    for entry in entries.flatten() {
        let path = entry.path();
        let name = entry.file_name();
        if name.to_string_lossy().starts_with('.') {
            continue;
        }
        // Follows symlinks; a dangling link is neither a file nor a directory and is skipped.
        let Ok(meta) = std::fs::metadata(&path) else {
            continue;
        };
        let yaml = matches!(
            path.extension().and_then(|e| e.to_str()),
            Some("yaml" | "yml")
        );
        if meta.is_dir() {
            collect_files(&path, out, visited, diagnostics, root);
        } else if yaml && meta.is_file() {
            out.push(path);
        } else if yaml {
            // A FIFO would block the reader, a device never end: say so instead of skipping.
            let error = ReadError::NotRegular(crate::files::kind(&meta));
            diagnostics.push(error.into_diagnostic(&display_path(root, &path)));
        }
    }
}

/// Parses files on every core, reusing cached results for unchanged content.
fn parse_files(
    files: &[PathBuf],
    attributes: Option<&[AttrName]>,
    cache: &mut ParseCache,
    disk: Option<&disk_cache::DiskCache>,
) -> Vec<Result<Parsed, ReadError>> {
    type Slot = Mutex<Option<Result<(Parsed, bool), ReadError>>>;
    let workers = std::thread::available_parallelism()
        .map_or(1, |n| n.get())
        .min(files.len().max(1));
    let next = AtomicUsize::new(0);
    let slots: Vec<Slot> = files.iter().map(|_| Mutex::new(None)).collect();
    let cached = &*cache;
    std::thread::scope(|scope| {
        for _ in 0..workers {
            // One interner per thread, across its files: 10,000 small files share their
            // values and attribute sets instead of each building its own.
            scope.spawn(|| {
                let mut shared = Interner::default();
                loop {
                    let i = next.fetch_add(1, Ordering::Relaxed);
                    let Some(path) = files.get(i) else { break };
                    let outcome = read_bytes(path).and_then(|bytes| {
                        let key: [u8; 32] = Sha256::digest(&bytes).into();
                        if let Some(file) = cached.get(&key) {
                            return Ok((Parsed { file, key }, false));
                        }
                        let on_disk = disk
                            .zip(attributes)
                            .and_then(|(d, a)| d.get(&key, a, &mut shared));
                        if let Some(file) = on_disk {
                            return Ok((
                                Parsed {
                                    file: Arc::new(file),
                                    key,
                                },
                                false,
                            ));
                        }
                        let text = to_text(bytes)?;
                        let file = Arc::new(users::parse_sharing(&text, attributes, &mut shared));
                        Ok((Parsed { file, key }, true))
                    });
                    *crate::sync::lock(&slots[i]) = Some(outcome);
                }
            });
        }
    });
    // The cache keeps exactly what the current files hold, so it never outgrows the repository.
    let mut current = HashMap::with_capacity(files.len());
    cache.last_parsed = 0;
    let results = slots
        .into_iter()
        .map(|slot| {
            let outcome = slot
                .into_inner()
                .expect("no worker panics")
                .expect("every file was visited");
            outcome.map(|(parsed, fresh)| {
                cache.last_parsed += usize::from(fresh);
                current.insert(parsed.key, Arc::clone(&parsed.file));
                parsed
            })
        })
        .collect();
    if cache.retain {
        cache.files = current;
    }
    results
}

/// A user file's parse, and the SHA-256 of its content that keys it in the caches.
struct Parsed {
    file: Arc<ParsedFile>,
    key: [u8; 32],
}

/// Writes the disk cache again when it no longer holds exactly the current files: some were
/// parsed afresh, or some it held are gone. Entries it had are copied as they are; a failure to
/// write (a read-only checkout) only costs the next run its speed.
fn save_disk_cache(
    root: &Path,
    attributes: &[AttrName],
    disk: &disk_cache::DiskCache,
    files: &[PathBuf],
    parsed: &[Result<Parsed, ReadError>],
    fresh: usize,
) {
    let mut keys: Vec<[u8; 32]> = parsed.iter().flatten().map(|p| p.key).collect();
    keys.sort_unstable();
    keys.dedup();
    if fresh == 0 && keys.len() == disk.len() {
        return;
    }
    let started = std::time::Instant::now();
    let mut encoded: HashMap<[u8; 32], Vec<u8>> = HashMap::new();
    for parsed in parsed.iter().flatten() {
        if disk.raw(&parsed.key).is_none() && !encoded.contains_key(&parsed.key) {
            if let Some(entry) = disk_cache::encode(&parsed.file, attributes) {
                encoded.insert(parsed.key, entry);
            }
        }
    }
    let entries: Vec<([u8; 32], &[u8])> = keys
        .iter()
        .filter_map(|key| {
            let entry = disk
                .raw(key)
                .or_else(|| encoded.get(key).map(Vec::as_slice))?;
            Some((*key, entry))
        })
        .collect();
    let written = disk_cache::store(root, &disk_cache::serialize(attributes, &entries));
    match written {
        Ok(()) => {
            tracing::debug!(files = files.len(), entries = entries.len(), elapsed = ?started.elapsed(), "wrote the parse cache")
        }
        Err(error) => {
            tracing::debug!(%error, "cannot write the parse cache; the next run parses again")
        }
    }
}

/// `path` relative to `root` when it is inside it, as users write paths in their repo.
fn display_path(root: &Path, path: &Path) -> PathBuf {
    path.strip_prefix(root)
        .map_or_else(|_| path.to_owned(), Path::to_owned)
}

/// The candidate closest to `word` by edit distance, when it is close enough to be a typo.
pub(crate) fn closest<'a>(
    word: &str,
    candidates: impl Iterator<Item = &'a str>,
) -> Option<&'a str> {
    candidates
        .map(|c| (strsim::levenshtein(word, c), c))
        .filter(|(d, c)| *d <= 2.max(c.len() / 4) && *d < c.len())
        .min_by_key(|(d, _)| *d)
        .map(|(_, c)| c)
}

#[cfg(test)]
mod tests;
