//! Reading a config repository — `attrsync.yaml` and every user file — into validated
//! [`Settings`] and a [`Desired`] state, with every problem reported as `file:line:column`.

mod disk_cache;
mod retained;
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

use crate::model::{AttrName, Desired, Interner, UserMap};
use retained::Entries;
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
    /// The desired state declared by the user files (shared with the daemon's
    /// [`ParseCache`], which patches it at the next load).
    pub desired: Arc<Desired>,
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

/// What one load keeps for the next, so that it reads and parses only what changed.
///
/// A one-shot command passes [`ParseCache::persistent`] (or a default one); the daemon keeps
/// one [`ParseCache::retaining`] across reconciles.
#[derive(Default)]
pub struct ParseCache {
    /// Keep the last valid load for the next (the daemon): files whose metadata or content
    /// is unchanged are then not parsed, and the desired state is patched, not rebuilt.
    retain: bool,
    /// Read and write the parse cache on disk (`.attrsync-cache/` beside `attrsync.yaml`).
    persist: bool,
    /// The last valid load, with `retain`.
    retained: Option<retained::Retained>,
    /// The next load reads every file, whatever its metadata says.
    check_every_file: bool,
    /// Files read (not vouched for by their metadata) by the last load.
    pub last_read: usize,
    /// Files parsed (not found in a cache) by the last load.
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

    /// A cache that keeps the last valid load for the next one.
    pub fn retaining() -> Self {
        Self {
            retain: true,
            ..Self::default()
        }
    }

    /// Makes the next load read and hash every file, even those whose metadata is unchanged:
    /// for a periodic pass, in case a file changed without its metadata showing it (a clock
    /// set back, a filesystem with coarse timestamps).
    pub fn check_every_file(&mut self) {
        self.check_every_file = true;
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
    load_at(dir, state_override, cache, retained::now_nanos())
}

/// [`load`], started at `now` (nanoseconds since the epoch): the clock that decides which
/// files have settled.
fn load_at(
    dir: &Path,
    state_override: Option<&str>,
    cache: &mut ParseCache,
    now: i128,
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
            diagnostics.push(err.to_diagnostic(&shown_settings));
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
        files.sort_by(|a, b| a.path.cmp(&b.path));
    } else if settings.is_some() {
        diagnostics.push(Diagnostic::whole(
            &display_path(dir, &users_dir),
            "the users directory does not exist",
            Some("create it, or set `users_dir` in attrsync.yaml".to_owned()),
        ));
    }

    // A retained load is patched only when it was validated against the same attributes.
    let retained = cache.retained.take();
    let base = retained
        .as_ref()
        .filter(|base| cache.retain && attributes.as_ref() == Some(&base.attributes));
    let check_every_file = std::mem::take(&mut cache.check_every_file);
    let started = std::time::Instant::now();
    // The disk cache needs the attributes: without valid settings every file is parsed.
    let disk = match (&attributes, cache.persist) {
        (Some(names), true) => Some(disk_cache::DiskCache::read(
            &disk_cache::cache_path(dir),
            names,
        )),
        _ => None,
    };
    let todo = what_to_read(&files, base, check_every_file);
    let reader = Reader {
        attributes: attributes.as_deref(),
        disk: disk.as_ref(),
        load_started: now,
    };
    let mut loads = reader.read(&files, &todo);
    cache.last_read = todo
        .iter()
        .filter(|t| matches!(t, Todo::Read { .. }))
        .count();
    let patched = base.and_then(|base| patch_retained(base, &loads));
    if patched.is_none()
        && loads
            .iter()
            .any(|load| matches!(load, FileLoad::Same { .. }))
    {
        // A user is declared twice: read every file, so that the error names both
        // declarations (the retained state keeps no positions).
        let every_file: Vec<Todo> = files.iter().map(|_| Todo::Read { known: None }).collect();
        loads = reader.read(&files, &every_file);
        cache.last_read = files.len();
    }
    cache.last_parsed = loads
        .iter()
        .filter(|load| matches!(load, FileLoad::Parsed(parsed) if parsed.fresh))
        .count();
    if let (Some(names), Some(disk)) = (&attributes, &disk) {
        save_disk_cache(dir, names, disk, &loads, cache.last_parsed);
    }
    // The cache file's bytes are decoded: free them before the users are merged.
    drop(disk);
    tracing::debug!(files = files.len(), read = cache.last_read, parsed = cache.last_parsed, elapsed = ?started.elapsed(), "read the user files");

    for (file, load) in files.iter().zip(&loads) {
        let shown = display_path(dir, &file.path);
        match load {
            FileLoad::Parsed(parsed) => diagnostics.extend(
                parsed
                    .file
                    .problems
                    .iter()
                    .cloned()
                    .map(|p| Diagnostic::at(&shown, p)),
            ),
            FileLoad::Failed(error) => diagnostics.push(error.to_diagnostic(&shown)),
            FileLoad::Same { .. } => {}
        }
    }
    let seen: Vec<Option<retained::Seen>> = loads.iter().map(FileLoad::seen).collect();
    let entries = match patched {
        Some(entries) => entries,
        None => {
            let runs = loads
                .into_iter()
                .map(|load| match load {
                    FileLoad::Parsed(parsed) => parsed.file.users,
                    FileLoad::Failed(_) => Vec::new(),
                    FileLoad::Same { .. } => unreachable!("unchanged files were read again"),
                })
                .collect();
            merge_files(
                runs,
                cache.retain,
                |(first, first_file), (second, second_file)| {
                    let first_path = display_path(dir, &files[first_file].path);
                    let second_path = display_path(dir, &files[second_file].path);
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
                },
            )
        }
    };
    tracing::debug!(users = entries.users.len(), elapsed = ?started.elapsed(), "merged the user files");
    if !diagnostics.is_empty() {
        diagnostics.sort_by(|a, b| (&a.file, a.pos).cmp(&(&b.file, b.pos)));
        // The last valid load stays the base for the next: only the files changed since
        // are read again once this one is fixed. A check of every file asked for is done
        // by the next load instead.
        cache.retained = retained;
        cache.check_every_file |= check_every_file;
        return Err(Diagnostics(diagnostics));
    }
    let mut settings = settings.expect("no diagnostics means the settings parsed");
    let desired = Arc::new(
        UserMap::from_sorted(entries.users).expect("sorted and checked for duplicates above"),
    );
    if cache.retain {
        cache.retained = Some(retained::Retained {
            attributes: attributes.unwrap_or_default(),
            files: files
                .iter()
                .zip(seen)
                .map(|(file, seen)| retained::KnownFile {
                    path: file.path.clone(),
                    seen: seen.expect("no diagnostics means every file was read"),
                })
                .collect(),
            desired: Arc::clone(&desired),
            origins: entries.origins,
        });
    }
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

/// A user file found under the users directory.
struct UserFile {
    path: PathBuf,
    /// Its metadata when the directory was listed.
    stamp: retained::Stamp,
}

/// What a load does with one file.
enum Todo {
    /// Nothing: its metadata vouches that it is the file the retained load read.
    Keep { known: usize, seen: retained::Seen },
    /// Read it; if its content is that of `known` (a retained file's index and key), it is
    /// not parsed.
    Read { known: Option<(usize, [u8; 32])> },
}

/// What to do with each of `files`, given the last valid load (`base`): a file it read whose
/// settled stamp is unchanged is kept, unless `check_every_file`; every other is read.
fn what_to_read(
    files: &[UserFile],
    base: Option<&retained::Retained>,
    check_every_file: bool,
) -> Vec<Todo> {
    files
        .iter()
        .map(|file| {
            let Some((base, known)) = base.and_then(|base| Some((base, base.file(&file.path)?)))
            else {
                return Todo::Read { known: None };
            };
            let seen = base.files[known].seen;
            if seen.settled && seen.stamp == file.stamp && !check_every_file {
                Todo::Keep { known, seen }
            } else {
                Todo::Read {
                    known: Some((known, seen.key)),
                }
            }
        })
        .collect()
}

/// What a load found in one file.
enum FileLoad {
    /// The content the retained load read, as file `known` of that load.
    Same { known: usize, seen: retained::Seen },
    /// New content, parsed (or found in the disk cache).
    Parsed(Parsed),
    /// It could not be read.
    Failed(ReadError),
}

impl FileLoad {
    fn seen(&self) -> Option<retained::Seen> {
        match self {
            FileLoad::Same { seen, .. } => Some(*seen),
            FileLoad::Parsed(parsed) => Some(parsed.seen),
            FileLoad::Failed(_) => None,
        }
    }
}

/// A user file's parse, and how the file looked when read.
struct Parsed {
    file: ParsedFile,
    seen: retained::Seen,
    /// Parsed now, not found in the disk cache.
    fresh: bool,
}

/// The retained desired state patched with the files of `loads` that changed, or `None`
/// when a full merge is needed (see [`retained::patch`]).
fn patch_retained(retained: &retained::Retained, loads: &[FileLoad]) -> Option<Entries> {
    let mut renumbered = vec![None; retained.files.len()];
    let mut changed = Vec::new();
    for (index, load) in loads.iter().enumerate() {
        let index = u32::try_from(index).ok()?;
        match load {
            FileLoad::Same { known, .. } => renumbered[*known] = Some(index),
            FileLoad::Parsed(parsed) => changed.push((index, parsed.file.users.as_slice())),
            FileLoad::Failed(_) => {}
        }
    }
    retained::patch(retained, &renumbered, &changed)
}

/// Merges each file's users (sorted by id, `runs[i]` from file `i`) into the desired
/// state's entries, sorted by id, with each one's file when `track_origins`. A user declared
/// twice is kept once and reported to `declared_twice` with where it was declared before
/// (position, file) and the repeat; a third declaration is reported against the second, and
/// so on.
///
/// A k-way merge rather than a concatenation and a sort: the result is built at its final
/// size, never beside a second copy of every user with its position.
fn merge_files(
    runs: Vec<Vec<DeclaredUser>>,
    track_origins: bool,
    mut declared_twice: impl FnMut((Pos, usize), (&DeclaredUser, usize)),
) -> Entries {
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

    let total = runs.iter().map(Vec::len).sum();
    let mut runs: Vec<std::vec::IntoIter<DeclaredUser>> =
        runs.into_iter().map(Vec::into_iter).collect();
    let mut entries = Entries::with_capacity(total, track_origins);
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
                runs[file] = Vec::new().into_iter();
                std::collections::binary_heap::PeekMut::pop(top).user
            }
        };
        match (last, entries.users.last()) {
            (Some(first), Some((id, _))) if *id == user.id => {
                declared_twice(first, (&user, file));
            }
            _ => entries.push(user.id, user.attrs, file as u32),
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
    fn to_diagnostic(&self, shown: &Path) -> Diagnostic {
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
                Problem::new(
                    Pos {
                        line: *line,
                        column: *column,
                    },
                    "the file is not valid UTF-8",
                )
                .hint("save it as UTF-8"),
            ),
        }
    }
}

fn read_bytes(path: &Path) -> Result<Vec<u8>, ReadError> {
    read_with_metadata(path).map(|(bytes, _)| bytes)
}

/// The bytes of `path`, and its metadata taken before they were read.
fn read_with_metadata(path: &Path) -> Result<(Vec<u8>, std::fs::Metadata), ReadError> {
    use crate::files::{read_regular_with_metadata, ReadFileError};
    read_regular_with_metadata(path, MAX_FILE_BYTES).map_err(|err| match err {
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
    out: &mut Vec<UserFile>,
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
            out.push(UserFile {
                path,
                stamp: retained::Stamp::of(&meta),
            });
        } else if yaml {
            // A FIFO would block the reader, a device never end: say so instead of skipping.
            let error = ReadError::NotRegular(crate::files::kind(&meta));
            diagnostics.push(error.to_diagnostic(&display_path(root, &path)));
        }
    }
}

/// Reads user files, on every core.
struct Reader<'a> {
    /// The `attributes` list, when the settings are valid.
    attributes: Option<&'a [AttrName]>,
    /// The parse cache on disk, for a one-shot command.
    disk: Option<&'a disk_cache::DiskCache>,
    /// When the load started (see [`retained::Stamp::settled`]).
    load_started: i128,
}

impl Reader<'_> {
    /// Does `todo[i]` for each of `files`: the files to read are read, hashed and parsed
    /// unless their content is the one named (or found in the disk cache).
    fn read(&self, files: &[UserFile], todo: &[Todo]) -> Vec<FileLoad> {
        type Slot = Mutex<Option<FileLoad>>;
        let reads: Vec<usize> = (0..files.len())
            .filter(|&i| matches!(todo[i], Todo::Read { .. }))
            .collect();
        let workers = std::thread::available_parallelism()
            .map_or(1, |n| n.get())
            .min(reads.len());
        let next = AtomicUsize::new(0);
        let slots: Vec<Slot> = files.iter().map(|_| Mutex::new(None)).collect();
        std::thread::scope(|scope| {
            for _ in 0..workers {
                // One interner per thread, across its files: 10,000 small files share their
                // values and attribute sets instead of each building its own.
                scope.spawn(|| {
                    let mut shared = Interner::default();
                    while let Some(&i) = reads.get(next.fetch_add(1, Ordering::Relaxed)) {
                        let Todo::Read { known } = todo[i] else {
                            unreachable!("only files to read are listed")
                        };
                        let load = self
                            .read_one(&files[i].path, known, &mut shared)
                            .unwrap_or_else(FileLoad::Failed);
                        *crate::sync::lock(&slots[i]) = Some(load);
                    }
                });
            }
        });
        slots
            .into_iter()
            .zip(todo)
            .map(|(slot, todo)| match todo {
                Todo::Keep { known, seen } => FileLoad::Same {
                    known: *known,
                    seen: *seen,
                },
                Todo::Read { .. } => slot
                    .into_inner()
                    .expect("no worker panics")
                    .expect("every file to read was read"),
            })
            .collect()
    }

    /// Reads one file: [`FileLoad::Same`] when its content is that of `known`.
    fn read_one(
        &self,
        path: &Path,
        known: Option<(usize, [u8; 32])>,
        shared: &mut Interner,
    ) -> Result<FileLoad, ReadError> {
        let (bytes, meta) = read_with_metadata(path)?;
        let stamp = retained::Stamp::of(&meta);
        let seen = retained::Seen {
            key: Sha256::digest(&bytes).into(),
            stamp,
            settled: stamp.settled(self.load_started),
        };
        if let Some((known, _)) = known.filter(|(_, key)| *key == seen.key) {
            return Ok(FileLoad::Same { known, seen });
        }
        let on_disk = self
            .disk
            .zip(self.attributes)
            .and_then(|(disk, names)| disk.get(&seen.key, names, shared));
        if let Some(file) = on_disk {
            return Ok(FileLoad::Parsed(Parsed {
                file,
                seen,
                fresh: false,
            }));
        }
        let text = to_text(bytes)?;
        let file = users::parse_sharing(&text, self.attributes, shared);
        Ok(FileLoad::Parsed(Parsed {
            file,
            seen,
            fresh: true,
        }))
    }
}

/// Writes the disk cache again when it no longer holds exactly the current files: some were
/// parsed afresh, or some it held are gone. Entries it had are copied as they are; a failure to
/// write (a read-only checkout) only costs the next run its speed.
fn save_disk_cache(
    root: &Path,
    attributes: &[AttrName],
    disk: &disk_cache::DiskCache,
    loads: &[FileLoad],
    fresh: usize,
) {
    let parsed = || {
        loads.iter().filter_map(|load| match load {
            FileLoad::Parsed(parsed) => Some(parsed),
            _ => None,
        })
    };
    let mut keys: Vec<[u8; 32]> = parsed().map(|p| p.seen.key).collect();
    keys.sort_unstable();
    keys.dedup();
    if fresh == 0 && keys.len() == disk.len() {
        return;
    }
    let started = std::time::Instant::now();
    let mut encoded: HashMap<[u8; 32], Vec<u8>> = HashMap::new();
    for parsed in parsed() {
        let key = parsed.seen.key;
        if disk.raw(&key).is_none() && !encoded.contains_key(&key) {
            if let Some(entry) = disk_cache::encode(&parsed.file, attributes) {
                encoded.insert(key, entry);
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
            tracing::debug!(files = loads.len(), entries = entries.len(), elapsed = ?started.elapsed(), "wrote the parse cache")
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

#[cfg(test)]
mod reload_tests;
