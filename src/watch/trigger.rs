//! What wakes the daemon: file events from the config directory, filtered to the files that
//! make the desired state and coalesced by a debounce.
//!
//! The watcher watches directories, never files, so editors' rename-saves keep being seen: the
//! config root non-recursively (for `attrsync.yaml` and the users directory coming and going)
//! and the users directory recursively. It does not watch the rest of the root, so the
//! snapshot's own writes under `state/` and a `.git` directory cost no inotify watches and
//! cause no events. A directory that is deleted and recreated is armed again by
//! [`ConfigWatcher::arm`], which the daemon calls before every reconcile.

use std::fmt;
use std::path::{Component, Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use notify::event::{AccessKind, AccessMode, CreateKind, MetadataKind, ModifyKind, RemoveKind};
use notify::{Event, EventKind, RecursiveMode, Watcher};
use tokio::sync::mpsc::{unbounded_channel, UnboundedReceiver, UnboundedSender};
use tokio::time::Instant;

use crate::config::SETTINGS_FILE;

/// A burst of file events is cut off after this many debounce periods, so that a steady
/// stream of writes still reconciles.
pub const DEBOUNCE_MAX_FACTOR: u32 = 10;

/// How often the config directory is scanned when inotify is unavailable (its limits are
/// exhausted): cheap for a config repository, and quick enough for people editing it.
pub const POLL_INTERVAL: Duration = Duration::from_secs(2);

/// Why the daemon reconciles.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Trigger {
    /// The daemon started.
    Startup,
    /// Files of the config repository changed.
    Files,
    /// The periodic full resync (`--interval`).
    Interval,
    /// The previous reconcile failed and its backoff ran out.
    Retry,
    /// SIGHUP.
    Hangup,
    /// `POST /reconcile`.
    Http,
    /// The drift scan found users changed behind attrsync's back and marked them in doubt.
    Drift,
}

impl Trigger {
    /// The name used in logs.
    pub fn name(self) -> &'static str {
        match self {
            Trigger::Startup => "startup",
            Trigger::Files => "files",
            Trigger::Interval => "interval",
            Trigger::Retry => "retry",
            Trigger::Hangup => "sighup",
            Trigger::Http => "http",
            Trigger::Drift => "drift",
        }
    }
}

impl fmt::Display for Trigger {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// Coalesces a burst of events into one trigger: it fires once `quiet` has passed without an
/// event, or [`DEBOUNCE_MAX_FACTOR`] × `quiet` after the burst's first event, whichever is
/// sooner.
#[derive(Clone, Debug)]
pub struct Debounce {
    quiet: Duration,
    max_delay: Duration,
    /// The first and the latest event of the current burst.
    burst: Option<(Instant, Instant)>,
}

impl Debounce {
    /// A debounce with the given quiet period.
    pub fn new(quiet: Duration) -> Self {
        Self {
            quiet,
            max_delay: quiet * DEBOUNCE_MAX_FACTOR,
            burst: None,
        }
    }

    /// Notes an event at `now`: starts a burst, or extends the current one.
    pub fn event(&mut self, now: Instant) {
        let first = self.burst.map_or(now, |(first, _)| first);
        self.burst = Some((first, now));
    }

    /// When the current burst should fire; `None` when there is none.
    pub fn deadline(&self) -> Option<Instant> {
        self.burst
            .map(|(first, last)| (last + self.quiet).min(first + self.max_delay))
    }

    /// Forgets the current burst (it fired, or a reconcile for another reason covers it).
    pub fn clear(&mut self) {
        self.burst = None;
    }
}

/// The paths that make the desired state, as absolute, lexically normalised paths.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Scope {
    /// The config directory.
    pub root: PathBuf,
    /// The users directory (usually `root/users`).
    pub users_dir: PathBuf,
    /// The snapshot's directory (usually `root/state`): never a trigger.
    pub state_dir: PathBuf,
}

impl Scope {
    /// A scope; the paths are normalised.
    pub fn new(root: &Path, users_dir: &Path, state_dir: &Path) -> Self {
        Self {
            root: normalize(root),
            users_dir: normalize(users_dir),
            state_dir: normalize(state_dir),
        }
    }

    /// Whether `event` may change the desired state (and so should trigger a reconcile).
    ///
    /// Queue overflows (rescans) always do. Reads never do (the daemon's own reads of every
    /// file would otherwise trigger the next reconcile), nor do metadata-only changes.
    pub fn wants(&self, event: &Event) -> bool {
        if event.need_rescan() {
            return true;
        }
        let kind_matters = match event.kind {
            EventKind::Access(AccessKind::Close(AccessMode::Write)) => true,
            // The polling watcher reports an edit in a later second as a new write time, not as
            // a data change: that one counts.
            EventKind::Modify(ModifyKind::Metadata(MetadataKind::WriteTime)) => true,
            EventKind::Access(_) | EventKind::Modify(ModifyKind::Metadata(_)) => false,
            _ => true,
        };
        kind_matters
            && event
                .paths
                .iter()
                .any(|path| self.wants_path(path, &event.kind))
    }

    fn wants_path(&self, path: &Path, kind: &EventKind) -> bool {
        let path = normalize(path);
        if path.starts_with(&self.state_dir) {
            return false;
        }
        if path == self.root || path == self.root.join(SETTINGS_FILE) {
            return true;
        }
        // Kubernetes mounts a ConfigMap as symlinks into `..data`, swapped atomically.
        if path == self.root.join("..data") {
            return true;
        }
        let structural = matches!(
            kind,
            EventKind::Create(_) | EventKind::Remove(_) | EventKind::Modify(ModifyKind::Name(_))
        ) || matches!(kind, EventKind::Any | EventKind::Other);
        // The users directory itself, or a directory on the way to it, came or went.
        if self.users_dir.starts_with(&path) {
            return structural;
        }
        let Ok(inside) = path.strip_prefix(&self.users_dir) else {
            return false;
        };
        if inside
            .components()
            .any(|c| ignored_name(c.as_os_str().to_str().unwrap_or("")))
        {
            return false;
        }
        if matches!(
            path.extension().and_then(|e| e.to_str()),
            Some("yaml" | "yml")
        ) {
            return true;
        }
        // A folder under the users directory came or went (or was renamed): it may hold user
        // files. A rename does not say whether it was a folder, so a name without an extension
        // counts too.
        let folder = matches!(
            kind,
            EventKind::Create(CreateKind::Folder) | EventKind::Remove(RemoveKind::Folder)
        );
        structural && (folder || path.extension().is_none())
    }
}

/// Editors' temporary and backup files, and hidden entries (which the loader skips too).
fn ignored_name(name: &str) -> bool {
    name.starts_with('.')
        || name.ends_with('~')
        || name == "4913"
        || name.ends_with(".swp")
        || name.ends_with(".swx")
        || name.ends_with(".swo")
}

/// Resolves `.` and `..` without touching the file system (event paths are built from the
/// watched paths, so both sides must be spelled the same way).
pub fn normalize(path: &Path) -> PathBuf {
    let mut out = PathBuf::new();
    for component in path.components() {
        match component {
            Component::CurDir => {}
            Component::ParentDir => {
                if !out.pop() {
                    out.push("..");
                }
            }
            other => out.push(other.as_os_str()),
        }
    }
    out
}

/// What the watcher tells the daemon.
#[derive(Debug)]
pub enum FsSignal {
    /// Something that may change the desired state happened.
    Changed,
    /// The config directory itself was removed or moved away: it must be watched again
    /// once it is back.
    RootGone,
    /// The OS ran out of inotify watches or instances.
    Limit(String),
    /// Any other watcher error (the events may be incomplete).
    Failed(String),
}

/// How the directory is watched.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mode {
    /// inotify (or the platform's native API).
    Native,
    /// A scan every [`POLL_INTERVAL`], when native events are unavailable.
    Poll,
}

/// One watched directory and the identity it had when it was armed.
#[derive(Debug)]
struct Armed {
    path: PathBuf,
    identity: (u64, u64),
}

/// The config directory's watcher: a `notify` watcher whose callback filters events through
/// the current [`Scope`] and sends what matters to the daemon's channel.
pub struct ConfigWatcher {
    watcher: Box<dyn Watcher + Send>,
    mode: Mode,
    scope: Arc<Mutex<Scope>>,
    tx: UnboundedSender<FsSignal>,
    armed: Vec<Armed>,
}

impl fmt::Debug for ConfigWatcher {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ConfigWatcher")
            .field("mode", &self.mode)
            .field("armed", &self.armed)
            .finish_non_exhaustive()
    }
}

impl ConfigWatcher {
    /// Starts a native watcher for `scope` (nothing is watched until [`ConfigWatcher::arm`]);
    /// falls back to polling, loudly, when inotify instances are exhausted.
    pub fn start(scope: Scope) -> (Self, UnboundedReceiver<FsSignal>) {
        let (tx, rx) = unbounded_channel();
        let scope = Arc::new(Mutex::new(scope));
        let (watcher, mode) = match notify::RecommendedWatcher::new(
            handler(Arc::clone(&scope), tx.clone()),
            notify::Config::default(),
        ) {
            Ok(watcher) => (Box::new(watcher) as Box<dyn Watcher + Send>, Mode::Native),
            Err(error) => {
                tracing::error!("{}", limit_message("cannot start the file watcher", &error));
                (poll_watcher(&scope, &tx), Mode::Poll)
            }
        };
        (
            Self {
                watcher,
                mode,
                scope,
                tx,
                armed: Vec::new(),
            },
            rx,
        )
    }

    /// How the directory is watched now.
    pub fn mode(&self) -> Mode {
        self.mode
    }

    /// Replaces the scope (after a reload that moved `users_dir` or `state_dir`).
    pub fn set_scope(&mut self, scope: Scope) {
        let mut current = crate::sync::lock(&self.scope);
        if *current != scope {
            *current = scope;
        }
    }

    /// Whether the config directory exists (after [`FsSignal::RootGone`], the daemon waits for
    /// it to come back).
    pub fn root_exists(&self) -> bool {
        identity(&crate::sync::lock(&self.scope).root).is_some()
    }

    /// Makes sure the root and the users directory are watched as they are now: watches a
    /// directory that appeared, and watches again one that was replaced (deleted and
    /// recreated, or swapped by a rename). Cheap: two `stat`s when nothing changed.
    pub fn arm(&mut self) {
        let scope = crate::sync::lock(&self.scope).clone();
        let targets: Vec<(PathBuf, RecursiveMode)> = if scope.users_dir == scope.root {
            vec![(scope.root.clone(), RecursiveMode::Recursive)]
        } else {
            vec![
                (scope.root.clone(), RecursiveMode::NonRecursive),
                (scope.users_dir.clone(), RecursiveMode::Recursive),
            ]
        };
        // Forget directories that are no longer targets (the scope moved).
        let stale: Vec<PathBuf> = self
            .armed
            .iter()
            .filter(|a| !targets.iter().any(|(path, _)| *path == a.path))
            .map(|a| a.path.clone())
            .collect();
        for path in stale {
            self.disarm(&path);
        }
        for (path, recursive) in targets {
            let now = identity(&path);
            let current = self
                .armed
                .iter()
                .find(|a| a.path == path)
                .map(|a| a.identity);
            if now.is_some() && now == current {
                continue;
            }
            if current.is_some() {
                self.disarm(&path);
            }
            let Some(identity) = now else { continue };
            match self.watcher.watch(&path, recursive) {
                Ok(()) => {
                    tracing::debug!(path = %path.display(), ?recursive, mode = ?self.mode, "watching");
                    self.armed.push(Armed { path, identity });
                }
                Err(error) if is_limit(&error) && self.mode == Mode::Native => {
                    tracing::error!(
                        "{}",
                        limit_message(&format!("cannot watch {}", path.display()), &error)
                    );
                    self.fall_back_to_polling();
                    return self.arm();
                }
                Err(error) => {
                    tracing::warn!(path = %path.display(), %error, "cannot watch the directory; the periodic resync still covers it");
                }
            }
        }
    }

    fn disarm(&mut self, path: &Path) {
        // The watch may be gone already (notify drops it when the directory is deleted).
        let _ = self.watcher.unwatch(path);
        self.armed.retain(|a| a.path != path);
    }

    /// Replaces the native watcher with a poller (inotify's limits are exhausted); the caller
    /// has logged why.
    pub fn fall_back_to_polling(&mut self) {
        if self.mode == Mode::Poll {
            return;
        }
        tracing::warn!(
            interval = ?POLL_INTERVAL,
            "falling back to polling the config directory every {}s instead of inotify events",
            POLL_INTERVAL.as_secs()
        );
        self.watcher = poll_watcher(&self.scope, &self.tx);
        self.mode = Mode::Poll;
        self.armed.clear();
    }

    /// A watcher that only polls, for tests of the fallback.
    #[cfg(test)]
    fn start_polling(scope: Scope) -> (Self, UnboundedReceiver<FsSignal>) {
        let (tx, rx) = unbounded_channel();
        let scope = Arc::new(Mutex::new(scope));
        let watcher = poll_watcher(&scope, &tx);
        (
            Self {
                watcher,
                mode: Mode::Poll,
                scope,
                tx,
                armed: Vec::new(),
            },
            rx,
        )
    }
}

fn poll_watcher(
    scope: &Arc<Mutex<Scope>>,
    tx: &UnboundedSender<FsSignal>,
) -> Box<dyn Watcher + Send> {
    // The poller compares modification times in whole seconds, so two saves within a second
    // would look like one: compare contents too (a few MB per scan for a large repository).
    let config = notify::Config::default()
        .with_poll_interval(POLL_INTERVAL)
        .with_compare_contents(true);
    match notify::PollWatcher::new(handler(Arc::clone(scope), tx.clone()), config) {
        Ok(watcher) => Box::new(watcher),
        Err(error) => {
            // PollWatcher::new only spawns a thread; without it, only the resync is left.
            tracing::error!(%error, "cannot start the polling watcher; only the periodic resync will notice changes");
            Box::new(notify::NullWatcher)
        }
    }
}

/// The callback, run on notify's thread: filter, then hand over without blocking.
fn handler(scope: Arc<Mutex<Scope>>, tx: UnboundedSender<FsSignal>) -> impl notify::EventHandler {
    move |result: notify::Result<Event>| {
        let signal = match result {
            Ok(event) => {
                let scope = crate::sync::lock(&scope);
                let root_gone = matches!(
                    event.kind,
                    EventKind::Remove(_) | EventKind::Modify(ModifyKind::Name(_))
                ) && event.paths.iter().any(|p| normalize(p) == scope.root);
                if root_gone {
                    FsSignal::RootGone
                } else if scope.wants(&event) {
                    FsSignal::Changed
                } else {
                    return;
                }
            }
            Err(error) if is_limit(&error) => {
                FsSignal::Limit(limit_message("cannot watch a new directory", &error))
            }
            Err(error) => FsSignal::Failed(error.to_string()),
        };
        // The daemon is shutting down when the receiver is gone.
        let _ = tx.send(signal);
    }
}

/// Whether `error` means the OS ran out of inotify watches (ENOSPC) or instances (EMFILE).
pub fn is_limit(error: &notify::Error) -> bool {
    match &error.kind {
        notify::ErrorKind::MaxFilesWatch => true,
        notify::ErrorKind::Io(io) => matches!(io.raw_os_error(), Some(28 | 24)),
        _ => false,
    }
}

/// Says what failed and which sysctl to raise, with the current value when it can be read.
pub fn limit_message(doing: &str, error: &notify::Error) -> String {
    let instances =
        matches!(&error.kind, notify::ErrorKind::Io(io) if io.raw_os_error() == Some(24));
    let knob = if instances {
        "max_user_instances"
    } else {
        "max_user_watches"
    };
    let current = std::fs::read_to_string(format!("/proc/sys/fs/inotify/{knob}"))
        .map(|v| format!(" (now {})", v.trim()))
        .unwrap_or_default();
    let suggested = if instances { 1024 } else { 524_288 };
    format!(
        "{doing}: {error}: the inotify limit fs.inotify.{knob}{current} is exhausted; raise it with \
         `sysctl fs.inotify.{knob}={suggested}` (persist it in /etc/sysctl.d/) and restart attrsync. \
         Until then attrsync polls the config directory every {}s, and the periodic resync still runs",
        POLL_INTERVAL.as_secs()
    )
}

/// `(device, inode)` of the directory at `path`, or `None` when there is none.
fn identity(path: &Path) -> Option<(u64, u64)> {
    use std::os::unix::fs::MetadataExt;
    let meta = std::fs::metadata(path).ok()?;
    meta.is_dir().then(|| (meta.dev(), meta.ino()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use notify::event::{DataChange, RenameMode};

    fn scope() -> Scope {
        Scope::new(
            Path::new("/repo"),
            Path::new("/repo/./users"),
            Path::new("/repo/state"),
        )
    }

    fn event(kind: EventKind, path: &str) -> Event {
        Event::new(kind).add_path(PathBuf::from(path))
    }

    const WRITE: EventKind = EventKind::Modify(ModifyKind::Data(DataChange::Any));
    const RENAMED: EventKind = EventKind::Modify(ModifyKind::Name(RenameMode::To));

    #[test]
    fn user_files_and_settings_trigger() {
        let s = scope();
        assert!(s.wants(&event(WRITE, "/repo/attrsync.yaml")));
        assert!(s.wants(&event(WRITE, "/repo/users/team/a.yaml")));
        assert!(s.wants(&event(RENAMED, "/repo/users/b.yml")));
        assert!(s.wants(&event(
            EventKind::Remove(RemoveKind::File),
            "/repo/users/b.yml"
        )));
        assert!(s.wants(&event(
            EventKind::Access(AccessKind::Close(AccessMode::Write)),
            "/repo/users/a.yaml"
        )));
    }

    #[test]
    fn the_snapshot_and_editor_files_do_not_trigger() {
        let s = scope();
        // sled writes under the state directory on every commit.
        assert!(!s.wants(&event(WRITE, "/repo/state/db")));
        assert!(!s.wants(&event(EventKind::Create(CreateKind::Folder), "/repo/state")));
        for temp in [
            "/repo/users/.a.yaml.swp",
            "/repo/users/a.yaml~",
            "/repo/users/4913",
            "/repo/users/.#a.yaml",
            "/repo/users/.git/x.yaml",
        ] {
            assert!(
                !s.wants(&event(EventKind::Create(CreateKind::File), temp)),
                "{temp}"
            );
        }
        assert!(!s.wants(&event(WRITE, "/repo/users/notes.txt")));
        assert!(!s.wants(&event(WRITE, "/repo/README.md")));
    }

    #[test]
    fn reads_and_metadata_do_not_trigger() {
        let s = scope();
        // The daemon reads every file on each reconcile: its own reads must not trigger.
        assert!(!s.wants(&event(
            EventKind::Access(AccessKind::Open(AccessMode::Any)),
            "/repo/users/a.yaml"
        )));
        assert!(!s.wants(&event(
            EventKind::Access(AccessKind::Close(AccessMode::Read)),
            "/repo/users/a.yaml"
        )));
        assert!(!s.wants(&event(
            EventKind::Modify(ModifyKind::Metadata(notify::event::MetadataKind::Any)),
            "/repo/users/a.yaml"
        )));
    }

    #[test]
    fn a_new_write_time_from_the_polling_watcher_triggers() {
        // Regression: the poller reports an edit in a later second as Metadata(WriteTime); it
        // was dropped as "metadata only", so polling missed every edit after the first second.
        assert!(scope().wants(&event(
            EventKind::Modify(ModifyKind::Metadata(MetadataKind::WriteTime)),
            "/repo/users/a.yaml"
        )));
    }

    #[test]
    fn folders_coming_and_going_trigger() {
        let s = scope();
        assert!(s.wants(&event(EventKind::Create(CreateKind::Folder), "/repo/users")));
        assert!(s.wants(&event(
            EventKind::Remove(RemoveKind::Folder),
            "/repo/users/team"
        )));
        assert!(s.wants(&event(RENAMED, "/repo/users/team")));
        assert!(!s.wants(&event(EventKind::Create(CreateKind::Folder), "/repo/docs")));
    }

    #[test]
    fn a_queue_overflow_triggers() {
        let s = scope();
        assert!(s.wants(&Event::new(EventKind::Other).set_flag(notify::event::Flag::Rescan)));
    }

    #[test]
    fn debounce_waits_for_quiet_but_not_forever() {
        let quiet = Duration::from_millis(300);
        let t0 = Instant::now();
        let mut debounce = Debounce::new(quiet);
        assert_eq!(debounce.deadline(), None);
        debounce.event(t0);
        assert_eq!(debounce.deadline(), Some(t0 + quiet));
        // 50 files written 2 ms apart: one deadline, 300 ms after the last.
        for i in 1..50 {
            debounce.event(t0 + Duration::from_millis(2 * i));
        }
        assert_eq!(
            debounce.deadline(),
            Some(t0 + Duration::from_millis(98) + quiet)
        );
        // A steady stream: capped at DEBOUNCE_MAX_FACTOR quiet periods after the first event.
        for i in 0..100 {
            debounce.event(t0 + Duration::from_millis(100 * i));
        }
        assert_eq!(debounce.deadline(), Some(t0 + quiet * DEBOUNCE_MAX_FACTOR));
        debounce.clear();
        assert_eq!(debounce.deadline(), None);
    }

    #[test]
    fn normalize_is_lexical() {
        assert_eq!(normalize(Path::new("/a/./b/../c")), PathBuf::from("/a/c"));
        assert_eq!(
            normalize(Path::new("/a/b/../../common/users")),
            PathBuf::from("/common/users")
        );
    }

    #[test]
    fn limit_errors_name_the_sysctl() {
        let watches = notify::Error::new(notify::ErrorKind::MaxFilesWatch);
        assert!(is_limit(&watches));
        let message = limit_message("cannot watch /repo/users", &watches);
        assert!(message.contains("fs.inotify.max_user_watches"), "{message}");
        assert!(message.contains("sysctl"), "{message}");
        let instances = notify::Error::io(std::io::Error::from_raw_os_error(24));
        assert!(is_limit(&instances));
        assert!(limit_message("cannot start", &instances).contains("fs.inotify.max_user_instances"));
        assert!(!is_limit(&notify::Error::path_not_found()));
    }

    #[tokio::test]
    async fn polling_sees_rename_saves_within_the_same_second() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        std::fs::create_dir(root.join("users")).unwrap();
        std::fs::write(root.join("users/a.yaml"), "users: {}\n").unwrap();
        let (mut watcher, mut rx) = ConfigWatcher::start_polling(Scope::new(
            root,
            &root.join("users"),
            &root.join("state"),
        ));
        watcher.arm();
        for content in ["users: {a: {}}\n", "users: {b: {}}\n"] {
            std::fs::write(root.join("users/.a.yaml.tmp"), content).unwrap();
            std::fs::rename(root.join("users/.a.yaml.tmp"), root.join("users/a.yaml")).unwrap();
            let signal = tokio::time::timeout(POLL_INTERVAL * 3, rx.recv()).await;
            assert!(matches!(signal, Ok(Some(FsSignal::Changed))), "{signal:?}");
            while rx.try_recv().is_ok() {}
        }
    }
}
