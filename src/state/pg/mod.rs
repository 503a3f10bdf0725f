//! The PostgreSQL snapshot: one database for every machine that runs attrsync for an app.
//!
//! - Reads (`plan`) take no lock: [`PgStore::load`] reads one consistent view in a
//!   `REPEATABLE READ` transaction.
//! - Writers (`apply`, `import`, `state import`, the daemon) hold the app's session-level
//!   advisory lock on a dedicated connection, never a pooled one, and make every write through
//!   that connection. Each write is also fenced: it only commits while `apps.fence` is the epoch
//!   this writer took with the lock, so a writer whose lock was taken over cannot commit.
//! - The lock session heartbeats every second. A writer that has had no answer for
//!   [`LEASE`] stops: [`SnapshotStore::check`] fails, and the executor sends nothing more. The
//!   server ends a silent lock session after 10 s (`idle_session_timeout`, TCP keepalives), so
//!   the old writer has stopped before anyone else can take the lock.
//! - Commits arriving together are written in one transaction (group commit), each still
//!   atomic and with its own serial, so commits keep up with the API's 100 calls per second.
//!
//! - `session`: the URL, password, TLS and keepalive settings.
//! - `schema`: the `attrsync` schema and its migrations.

mod schema;
mod session;

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures_util::future::BoxFuture;
use futures_util::{pin_mut, TryStreamExt as _};
use tokio::sync::{mpsc, oneshot};
use tokio::time::Instant;
use tokio_postgres::types::Json;
use tokio_postgres::Client;

pub use session::BadUrl;
use session::{Role, Target as Session};

use super::snapshot_store::{PagedUser, SnapshotStore};
use super::store::{Binding, Commit, Holder, StateError};
use crate::model::{
    AttrName, AttrValue, Attrs, DoubtNote, InDoubt, PostgresUrl, Snapshot, SnapshotEntry, UserId,
    UserMap,
};

/// How often the lock session proves it is alive.
const HEARTBEAT_EVERY: Duration = Duration::from_secs(1);
/// How long one heartbeat may take.
const HEARTBEAT_TIMEOUT: Duration = Duration::from_secs(3);
/// A writer that has had no answer from its lock session for this long stops writing and
/// calling the API. Shorter than the server's [`SESSION_IDLE_LIMIT`], so it has stopped before
/// anyone else can take the lock.
pub const LEASE: Duration = Duration::from_secs(5);
/// The server ends a lock session silent for this long (a hung or cut-off writer).
const SESSION_IDLE_LIMIT: &str = "10s";
/// Commits written in one transaction at most.
const GROUP_COMMIT_MAX: usize = 64;
/// Rows per statement when a whole snapshot is written.
const ROWS_PER_STATEMENT: usize = 10_000;

/// How a command uses the snapshot.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Access {
    /// Reads only; no lock (`plan`, `state show`, …).
    Read,
    /// Writes: holds the app's lock, waiting for it up to `lock_timeout` (zero: fail at once).
    Write {
        /// How long to wait for another writer to finish.
        lock_timeout: Duration,
    },
}

/// A snapshot in PostgreSQL; see the module documentation.
pub struct PgStore {
    shown: String,
    /// The app's row, `None` when it does not exist yet (read access to a new app).
    app_id: Option<i64>,
    reader: tokio::sync::Mutex<Client>,
    writer: Option<Writer>,
    /// See [`SnapshotStore::previous_target`], read when the store was opened.
    previous_target: Option<String>,
}

impl std::fmt::Debug for PgStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PgStore")
            .field("location", &self.shown)
            .field("app_id", &self.app_id)
            .field("writer", &self.writer.is_some())
            .finish()
    }
}

/// The write side: the lock session's task, and what it knows about the lock.
struct Writer {
    requests: mpsc::Sender<Request>,
    lease: Arc<Lease>,
    lock_id: String,
}

/// Whether the lock is still ours, as far as this process can tell.
#[derive(Debug)]
struct Lease {
    last_answer: Mutex<Instant>,
    lost: AtomicBool,
    reason: Mutex<String>,
}

impl Lease {
    fn renew(&self) {
        *crate::sync::lock(&self.last_answer) = Instant::now();
    }

    fn lose(&self, reason: String) {
        if !self.lost.swap(true, Ordering::SeqCst) {
            tracing::error!(%reason, "lost the snapshot's lock");
            *crate::sync::lock(&self.reason) = reason;
        }
    }

    fn check(&self, location: &str) -> Result<(), StateError> {
        let silent = crate::sync::lock(&self.last_answer).elapsed();
        if silent > LEASE {
            self.lose(format!(
                "the database has not answered for {}s",
                silent.as_secs()
            ));
        }
        if self.lost.load(Ordering::SeqCst) {
            return Err(StateError::LockLost {
                location: location.to_owned(),
                reason: crate::sync::lock(&self.reason).clone(),
            });
        }
        Ok(())
    }
}

/// What the lock session's task is asked to do.
enum Request {
    Commit(Commit, oneshot::Sender<Result<u64, StateError>>),
    Replace(Snapshot, oneshot::Sender<Result<u64, StateError>>),
    Migrated(String, oneshot::Sender<Result<(), StateError>>),
    Cursor(Option<String>, oneshot::Sender<Result<(), StateError>>),
}

/// The app a store is about, as text for messages.
fn describe_app(binding: Binding<'_>) -> String {
    format!("app {} ({})", binding.sdkappid, binding.target)
}

impl PgStore {
    /// Connects to `url`, migrates the schema if needed, and opens the snapshot of `binding`:
    /// for reading, or for writing under the app's lock (see [`Access`]).
    pub async fn open(
        url: &PostgresUrl,
        binding: Binding<'_>,
        holder: &Holder,
        access: Access,
    ) -> Result<Self, StateError> {
        let (session, reader) = connect_reader(url).await?;
        let shown = session.shown().to_owned();
        let db = |doing| db_error(doing, &shown);
        let target = binding.target.key();
        let sdkappid = binding.sdkappid as i64;
        let (app_id, writer) = match access {
            Access::Read => {
                let row = reader
                    .query_opt(
                        "SELECT id, migrated_to FROM attrsync.apps WHERE sdkappid = $1 AND target = $2",
                        &[&sdkappid, &target],
                    )
                    .await
                    .map_err(db("read"))?;
                if let Some(to) = row.as_ref().and_then(|r| r.get::<_, Option<String>>(1)) {
                    return Err(StateError::Migrated {
                        location: shown,
                        to,
                    });
                }
                (row.map(|r| r.get::<_, i64>(0)), None)
            }
            Access::Write { lock_timeout } => {
                reader
                    .execute(
                        "INSERT INTO attrsync.apps (sdkappid, target) VALUES ($1, $2) ON CONFLICT DO NOTHING",
                        &[&sdkappid, &target],
                    )
                    .await
                    .map_err(db("create the app in"))?;
                let row = reader
                    .query_one(
                        "SELECT id, migrated_to FROM attrsync.apps WHERE sdkappid = $1 AND target = $2",
                        &[&sdkappid, &target],
                    )
                    .await
                    .map_err(db("read"))?;
                let app_id: i64 = row.get(0);
                if let Some(to) = row.get::<_, Option<String>>(1) {
                    return Err(StateError::Migrated {
                        location: shown,
                        to,
                    });
                }
                let lock_session = session
                    .connect(Role::Writer)
                    .await
                    .map_err(db("connect to"))?;
                let writer = lock(
                    lock_session,
                    &reader,
                    app_id,
                    holder,
                    lock_timeout,
                    &shown,
                    &describe_app(binding),
                )
                .await?;
                (Some(app_id), Some(writer))
            }
        };
        // The app's snapshot that recorded something under the newest lock: its server is
        // where the last write went (epochs only grow, across every app of the database).
        let last_written: Option<String> = reader
            .query_opt(
                "SELECT target FROM attrsync.apps WHERE sdkappid = $1 AND serial > 0 \
                 AND migrated_to IS NULL ORDER BY fence DESC, id DESC LIMIT 1",
                &[&sdkappid],
            )
            .await
            .map_err(db("read"))?
            .map(|row| row.get(0));
        Ok(Self {
            shown,
            app_id,
            reader: tokio::sync::Mutex::new(reader),
            writer,
            previous_target: last_written.filter(|last| *last != target),
        })
    }

    /// Ends the session holding the lock `lock_id` on any app of the database at `url`, and
    /// fences its writer out; returns the app and the holder it had.
    pub async fn force_unlock(url: &PostgresUrl, lock_id: &str) -> Result<String, StateError> {
        let (session, mut client) = connect_reader(url).await?;
        let shown = session.shown().to_owned();
        let db = |doing| db_error(doing, &shown);
        let tx = client.transaction().await.map_err(db("unlock"))?;
        let row = tx
            .query_opt(
                "SELECT l.app_id, l.backend_pid, l.holder::text, a.sdkappid, a.target
                   FROM attrsync.locks l JOIN attrsync.apps a ON a.id = l.app_id
                  WHERE l.lock_id = $1 FOR UPDATE",
                &[&lock_id],
            )
            .await
            .map_err(db("unlock"))?;
        let Some(row) = row else {
            return Err(StateError::NoSuchLock {
                location: shown,
                lock_id: lock_id.to_owned(),
            });
        };
        let (app_id, backend_pid): (i64, i32) = (row.get(0), row.get(1));
        let holder: Holder = serde_json::from_str(row.get::<_, &str>(2)).unwrap_or_default();
        let app = format!("app {} ({})", row.get::<_, i64>(3), row.get::<_, &str>(4));
        // Fence first: even a session that survived cannot commit after this.
        tx.execute(
            "UPDATE attrsync.apps SET fence = nextval('attrsync.epochs') WHERE id = $1",
            &[&app_id],
        )
        .await
        .map_err(db("unlock"))?;
        tx.execute(
            "SELECT pg_terminate_backend(pid) FROM pg_locks
              WHERE locktype = 'advisory' AND classid = ($1::bigint)::oid AND objid = ($2::bigint)::oid
                AND objsubid = 2 AND granted AND pid = $3",
            &[&i64::from(schema::NAMESPACE), &app_id, &backend_pid],
        )
        .await
        .map_err(db("unlock"))?;
        tx.execute("DELETE FROM attrsync.locks WHERE app_id = $1", &[&app_id])
            .await
            .map_err(db("unlock"))?;
        tx.commit().await.map_err(db("unlock"))?;
        Ok(format!("{app}{}", holder.describe()))
    }

    fn db(&self, doing: &'static str) -> impl Fn(tokio_postgres::Error) -> StateError {
        db_error(doing, &self.shown)
    }

    fn unreadable(&self, what: String) -> StateError {
        StateError::Unreadable {
            location: self.shown.clone(),
            what,
        }
    }

    /// Sends a request to the lock session's task and waits for its answer.
    async fn ask<T>(
        &self,
        request: impl FnOnce(oneshot::Sender<Result<T, StateError>>) -> Request,
    ) -> Result<T, StateError> {
        let Some(writer) = &self.writer else {
            return Err(StateError::ReadOnly {
                location: self.shown.clone(),
            });
        };
        writer.lease.check(&self.shown)?;
        let (reply, answer) = oneshot::channel();
        let lost = || StateError::LockLost {
            location: self.shown.clone(),
            reason: crate::sync::lock(&writer.lease.reason).clone(),
        };
        writer
            .requests
            .send(request(reply))
            .await
            .map_err(|_| lost())?;
        answer.await.map_err(|_| lost())?
    }

    /// The lock ID this writer holds (`state unlock` takes it).
    pub fn lock_id(&self) -> Option<&str> {
        self.writer.as_ref().map(|w| w.lock_id.as_str())
    }

    async fn read_serial(&self) -> Result<u64, StateError> {
        let Some(app_id) = self.app_id else {
            return Ok(0);
        };
        let reader = self.reader.lock().await;
        let row = reader
            .query_one("SELECT serial FROM attrsync.apps WHERE id = $1", &[&app_id])
            .await
            .map_err(self.db("read"))?;
        Ok(row.get::<_, i64>(0) as u64)
    }

    async fn read_all(&self) -> Result<Snapshot, StateError> {
        let Some(app_id) = self.app_id else {
            return Ok(Snapshot::default());
        };
        let mut reader = self.reader.lock().await;
        let tx = reader
            .build_transaction()
            .isolation_level(tokio_postgres::IsolationLevel::RepeatableRead)
            .read_only(true)
            .start()
            .await
            .map_err(self.db("read"))?;
        let serial: i64 = tx
            .query_one("SELECT serial FROM attrsync.apps WHERE id = $1", &[&app_id])
            .await
            .map_err(self.db("read"))?
            .get(0);
        // The attributes as text: jsonb prints a set one canonical way, so a set seen before
        // is shared without parsing it again (a million users hold a few hundred sets).
        let rows = tx
            .query_raw(
                "SELECT user_id, attrs::text, applied_at FROM attrsync.users WHERE app_id = $1 ORDER BY user_id",
                [&app_id],
            )
            .await
            .map_err(self.db("read"))?;
        pin_mut!(rows);
        let mut names = Names::default();
        let mut sets: HashMap<String, Attrs> = HashMap::new();
        let mut users = Vec::new();
        while let Some(row) = rows.try_next().await.map_err(self.db("read"))? {
            let user = self.user_id(row.get(0))?;
            let text: &str = row.get(1);
            let attrs = match sets.get(text) {
                Some(attrs) => attrs.clone(),
                None => {
                    let map: BTreeMap<&str, &str> = serde_json::from_str(text).map_err(|e| {
                        self.unreadable(format!("the attributes of user {user}: {e}"))
                    })?;
                    let attrs = self.attrs(&user, map, &mut names)?;
                    sets.insert(text.to_owned(), attrs.clone());
                    attrs
                }
            };
            let applied_at = row.get::<_, i64>(2) as u64;
            users.push((user, SnapshotEntry { attrs, applied_at }));
        }
        let rows = tx
            .query_raw(
                "SELECT user_id, maybe, since, reason FROM attrsync.in_doubt WHERE app_id = $1 ORDER BY user_id",
                [&app_id],
            )
            .await
            .map_err(self.db("read"))?;
        pin_mut!(rows);
        let mut in_doubt = Vec::new();
        while let Some(row) = rows.try_next().await.map_err(self.db("read"))? {
            let user = self.user_id(row.get(0))?;
            let doubt = self.in_doubt(&user, &row, 1, &mut names)?;
            in_doubt.push((user, doubt));
        }
        tx.commit().await.map_err(self.db("read"))?;
        let order = |_| self.unreadable("user ids out of order".to_owned());
        Ok(Snapshot {
            users: UserMap::from_sorted(users).ok_or(()).map_err(order)?,
            in_doubt: UserMap::from_sorted(in_doubt).ok_or(()).map_err(order)?,
            serial: serial as u64,
        })
    }

    fn user_id(&self, text: &str) -> Result<UserId, StateError> {
        UserId::new(text).map_err(|e| self.unreadable(format!("user id {text:?}: {e}")))
    }

    fn attrs(
        &self,
        user: &UserId,
        map: BTreeMap<&str, &str>,
        names: &mut Names,
    ) -> Result<Attrs, StateError> {
        let mut pairs = Vec::with_capacity(map.len());
        for (name, value) in map {
            let name = names.get(name).map_err(|e| {
                self.unreadable(format!("attribute name {name:?} of user {user}: {e}"))
            })?;
            let value = names
                .value(value)
                .map_err(|e| self.unreadable(format!("the value of {name} of user {user}: {e}")))?;
            pairs.push((name, value));
        }
        Ok(names.shared.attrs(pairs))
    }

    /// The row `sql` (parameters: app id, user id) finds for `user`, if any.
    async fn user_row(
        &self,
        sql: &str,
        user: &str,
    ) -> Result<Option<(UserId, tokio_postgres::Row)>, StateError> {
        let Some(app_id) = self.app_id else {
            return Ok(None);
        };
        let reader = self.reader.lock().await;
        let row = reader
            .query_opt(sql, &[&app_id, &user])
            .await
            .map_err(self.db("read"))?;
        match row {
            Some(row) => Ok(Some((self.user_id(user)?, row))),
            None => Ok(None),
        }
    }

    /// A user's entry from `row`'s columns `first` (attrs) and `first + 1` (applied_at).
    fn entry(
        &self,
        user: &UserId,
        row: &tokio_postgres::Row,
        first: usize,
        names: &mut Names,
    ) -> Result<SnapshotEntry, StateError> {
        let Json(attrs): Json<BTreeMap<&str, &str>> = row.get(first);
        Ok(SnapshotEntry {
            attrs: self.attrs(user, attrs, names)?,
            applied_at: row.get::<_, i64>(first + 1) as u64,
        })
    }

    fn in_doubt(
        &self,
        user: &UserId,
        row: &tokio_postgres::Row,
        first: usize,
        names: &mut Names,
    ) -> Result<InDoubt, StateError> {
        let Json(maybe): Json<BTreeMap<&str, &str>> = row.get(first);
        Ok(InDoubt {
            maybe: self.attrs(user, maybe, names)?,
            note: DoubtNote {
                since: row.get::<_, i64>(first + 1) as u64,
                reason: row.get(first + 2),
            },
        })
    }
}

/// A failure of the database at `location` while doing `doing` ("read", "lock", …).
fn db_error(doing: &'static str, location: &str) -> impl Fn(tokio_postgres::Error) -> StateError {
    let location = location.to_owned();
    move |source| StateError::Postgres {
        doing,
        location: location.clone(),
        source,
    }
}

/// Connects a reading session to `url`, with the schema brought up to date.
async fn connect_reader(url: &PostgresUrl) -> Result<(Session, Client), StateError> {
    let session = Session::parse(url)?;
    let shown = session.shown().to_owned();
    let mut reader = session
        .connect(Role::Reader)
        .await
        .map_err(db_error("connect to", &shown))?;
    schema::migrate(&mut reader).await.map_err(|e| match e {
        schema::SchemaError::TooNew(found) => StateError::SchemaTooNew {
            location: shown.clone(),
            found,
            known: schema::VERSION,
        },
        schema::SchemaError::Db(source) => db_error("create the schema of", &shown)(source),
    })?;
    Ok((session, reader))
}

/// Attribute names and values read so far: a snapshot repeats the same few names, and usually
/// the same few values, a million times.
#[derive(Default)]
struct Names {
    names: Vec<AttrName>,
    shared: crate::model::Interner,
}

impl Names {
    fn get(&mut self, name: &str) -> Result<AttrName, crate::model::InvalidValue> {
        if let Some(known) = self.names.iter().find(|n| n.as_str() == name) {
            return Ok(known.clone());
        }
        let name = AttrName::new(name)?;
        self.names.push(name.clone());
        Ok(name)
    }

    fn value(&mut self, value: &str) -> Result<AttrValue, crate::model::InvalidValue> {
        self.shared.value(value)
    }
}

/// Takes the app's lock on `session` (waiting up to `timeout` for another writer), records who
/// holds it, fences out earlier writers, and starts the session's task.
async fn lock(
    session: Client,
    reader: &Client,
    app_id: i64,
    holder: &Holder,
    timeout: Duration,
    shown: &str,
    app: &str,
) -> Result<Writer, StateError> {
    let db = |doing| db_error(doing, shown);
    // A hung or cut-off writer's session is ended by the server, which frees its lock. Each
    // setting on its own: an older server may not know one of them.
    for setting in [
        format!("SET idle_session_timeout = '{SESSION_IDLE_LIMIT}'"),
        format!("SET idle_in_transaction_session_timeout = '{SESSION_IDLE_LIMIT}'"),
        "SET tcp_keepalives_idle = 3".to_owned(),
        "SET tcp_keepalives_interval = 1".to_owned(),
        "SET tcp_keepalives_count = 3".to_owned(),
    ] {
        if let Err(error) = session.batch_execute(&setting).await {
            tracing::debug!(%error, setting, "the lock session setting was refused");
        }
    }
    let deadline = Instant::now() + timeout;
    let mut delay = Duration::from_millis(250);
    loop {
        let locked: bool = session
            .query_one(
                "SELECT pg_try_advisory_lock($1, ($2::bigint)::int)",
                &[&schema::NAMESPACE, &app_id],
            )
            .await
            .map_err(db("lock"))?
            .get(0);
        if locked {
            break;
        }
        let now = Instant::now();
        if now >= deadline {
            let row = reader
                .query_opt(
                    "SELECT lock_id, holder::text FROM attrsync.locks WHERE app_id = $1",
                    &[&app_id],
                )
                .await
                .map_err(db("read the lock of"))?;
            let (lock_id, holder) = match row {
                Some(row) => (
                    row.get::<_, String>(0),
                    serde_json::from_str::<Holder>(row.get::<_, &str>(1))
                        .map(|h| h.describe())
                        .unwrap_or_default(),
                ),
                None => ("(unknown)".to_owned(), String::new()),
            };
            return Err(StateError::LockHeld {
                location: shown.to_owned(),
                app: app.to_owned(),
                holder,
                lock_id,
            });
        }
        tokio::time::sleep(delay.min(deadline - now)).await;
        delay = (delay * 2).min(Duration::from_secs(4));
    }
    let lock_id = format!("{:016x}", fastrand::u64(..));
    let holder_json = serde_json::to_string(holder).unwrap_or_else(|_| "{}".to_owned());
    let epoch: i64 = session
        .query_one(
            "WITH e AS (SELECT nextval('attrsync.epochs') AS epoch),
                  fenced AS (UPDATE attrsync.apps SET fence = (SELECT epoch FROM e) WHERE id = $1),
                  recorded AS (
                      INSERT INTO attrsync.locks (app_id, lock_id, epoch, holder, backend_pid)
                      VALUES ($1, $2, (SELECT epoch FROM e), $3::text::jsonb, pg_backend_pid())
                      ON CONFLICT (app_id) DO UPDATE
                         SET lock_id = excluded.lock_id, epoch = excluded.epoch,
                             holder = excluded.holder, backend_pid = excluded.backend_pid,
                             created_at = now())
             SELECT epoch FROM e",
            &[&app_id, &lock_id, &holder_json],
        )
        .await
        .map_err(db("lock"))?
        .get(0);
    tracing::debug!(app_id, epoch, lock_id, "took the snapshot's lock");
    let lease = Arc::new(Lease {
        last_answer: Mutex::new(Instant::now()),
        lost: AtomicBool::new(false),
        reason: Mutex::new(String::new()),
    });
    let (requests, inbox) = mpsc::channel(GROUP_COMMIT_MAX * 2);
    let statements = Statements::prepare(&session).await.map_err(db("lock"))?;
    tokio::spawn(run_writer(
        WriterTask {
            session,
            statements,
            app_id,
            epoch,
            lease: Arc::clone(&lease),
            shown: shown.to_owned(),
        },
        inbox,
    ));
    Ok(Writer {
        requests,
        lease,
        lock_id,
    })
}

/// The statements a commit runs, prepared once on the lock session.
struct Statements {
    bump: tokio_postgres::Statement,
    upsert_users: tokio_postgres::Statement,
    delete_users: tokio_postgres::Statement,
    delete_doubt: tokio_postgres::Statement,
    upsert_doubt: tokio_postgres::Statement,
}

impl Statements {
    async fn prepare(session: &Client) -> Result<Self, tokio_postgres::Error> {
        Ok(Self {
            bump: session
                .prepare(
                    "UPDATE attrsync.apps SET serial = serial + $3 WHERE id = $1 AND fence = $2 RETURNING serial",
                )
                .await?,
            upsert_users: session
                .prepare(
                    "INSERT INTO attrsync.users (app_id, user_id, attrs, applied_at)
                     SELECT $1, u, a, $4 FROM unnest($2::text[], $3::jsonb[]) AS t (u, a)
                     ON CONFLICT (app_id, user_id)
                     DO UPDATE SET attrs = excluded.attrs, applied_at = excluded.applied_at",
                )
                .await?,
            delete_users: session
                .prepare("DELETE FROM attrsync.users WHERE app_id = $1 AND user_id = ANY($2)")
                .await?,
            delete_doubt: session
                .prepare("DELETE FROM attrsync.in_doubt WHERE app_id = $1 AND user_id = ANY($2)")
                .await?,
            upsert_doubt: session
                .prepare(
                    "INSERT INTO attrsync.in_doubt (app_id, user_id, maybe, since, reason)
                     SELECT $1, u, m, s, r
                       FROM unnest($2::text[], $3::jsonb[], $4::int8[], $5::text[]) AS t (u, m, s, r)
                     ON CONFLICT (app_id, user_id)
                     DO UPDATE SET maybe = excluded.maybe, since = excluded.since, reason = excluded.reason",
                )
                .await?,
        })
    }
}

/// The lock session and what its task needs.
struct WriterTask {
    session: Client,
    statements: Statements,
    app_id: i64,
    epoch: i64,
    lease: Arc<Lease>,
    shown: String,
}

/// Serves write requests on the lock session and heartbeats between them, until the store is
/// dropped (the session then closes, which releases the lock) or the lock is lost.
async fn run_writer(mut task: WriterTask, mut inbox: mpsc::Receiver<Request>) {
    let mut heartbeat = tokio::time::interval(HEARTBEAT_EVERY);
    heartbeat.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            request = inbox.recv() => {
                let Some(request) = request else { break };
                task.serve(request, &mut inbox).await;
            }
            _ = heartbeat.tick() => task.heartbeat().await,
        }
    }
    // Release at once rather than when the connection closes.
    let _ = task
        .session
        .execute(
            "DELETE FROM attrsync.locks WHERE app_id = $1 AND epoch = $2",
            &[&task.app_id, &task.epoch],
        )
        .await;
    let _ = task
        .session
        .execute(
            "SELECT pg_advisory_unlock($1, ($2::bigint)::int)",
            &[&schema::NAMESPACE, &task.app_id],
        )
        .await;
}

impl WriterTask {
    fn lost(&self) -> StateError {
        StateError::LockLost {
            location: self.shown.clone(),
            reason: crate::sync::lock(&self.lease.reason).clone(),
        }
    }

    async fn heartbeat(&mut self) {
        if self.lease.lost.load(Ordering::SeqCst) {
            return;
        }
        match tokio::time::timeout(HEARTBEAT_TIMEOUT, self.session.simple_query("SELECT 1")).await {
            Ok(Ok(_)) => self.lease.renew(),
            Ok(Err(error)) => self.lease.lose(format!("the lock session failed: {error}")),
            Err(_) => self.lease.lose(format!(
                "the database did not answer a heartbeat within {}s",
                HEARTBEAT_TIMEOUT.as_secs()
            )),
        }
    }

    async fn serve(&mut self, first: Request, inbox: &mut mpsc::Receiver<Request>) {
        match first {
            Request::Commit(commit, reply) => {
                let mut group = vec![(commit, reply)];
                let mut later = None;
                while group.len() < GROUP_COMMIT_MAX {
                    match inbox.try_recv() {
                        Ok(Request::Commit(commit, reply)) => group.push((commit, reply)),
                        Ok(other) => {
                            later = Some(other);
                            break;
                        }
                        Err(_) => break,
                    }
                }
                let commits: Vec<&Commit> = group.iter().map(|(c, _)| c).collect();
                let result = self.guarded(|task| Box::pin(task.commit(commits))).await;
                match result {
                    Ok(last) => {
                        let first = last + 1 - group.len() as u64;
                        for (i, (_, reply)) in group.into_iter().enumerate() {
                            let _ = reply.send(Ok(first + i as u64));
                        }
                    }
                    Err(error) => {
                        let text = error.to_string();
                        for (_, reply) in group {
                            let _ = reply.send(Err(self.same_error(&error, &text)));
                        }
                    }
                }
                if let Some(request) = later {
                    Box::pin(self.serve(request, inbox)).await;
                }
            }
            Request::Replace(snapshot, reply) => {
                let result = self.guarded(|task| Box::pin(task.replace(&snapshot))).await;
                let _ = reply.send(result);
            }
            Request::Migrated(to, reply) => {
                let result = self.guarded(|task| Box::pin(task.mark_migrated(&to))).await;
                let _ = reply.send(result);
            }
            Request::Cursor(cursor, reply) => {
                let result = self
                    .guarded(|task| Box::pin(task.save_cursor(cursor.as_deref())))
                    .await;
                let _ = reply.send(result);
            }
        }
    }

    /// The same error for every commit of a failed group.
    fn same_error(&self, error: &StateError, text: &str) -> StateError {
        match error {
            StateError::LockLost { location, reason } => StateError::LockLost {
                location: location.clone(),
                reason: reason.clone(),
            },
            _ => StateError::LockLost {
                location: self.shown.clone(),
                reason: text.to_owned(),
            },
        }
    }

    /// Runs `work` unless the lock is lost; a database failure loses it (the session may be
    /// gone, and with it the lock), and success renews the lease.
    async fn guarded<'a, T>(
        &'a mut self,
        work: impl FnOnce(&'a mut Self) -> BoxFuture<'a, Result<T, WriteError>>,
    ) -> Result<T, StateError> {
        if self.lease.lost.load(Ordering::SeqCst) {
            return Err(self.lost());
        }
        let lease = Arc::clone(&self.lease);
        let shown = self.shown.clone();
        match work(self).await {
            Ok(value) => {
                lease.renew();
                Ok(value)
            }
            Err(WriteError::Fenced) => {
                lease.lose("another writer took the lock (state unlock)".to_owned());
                Err(StateError::LockLost {
                    location: shown,
                    reason: crate::sync::lock(&lease.reason).clone(),
                })
            }
            Err(WriteError::Db(source)) => {
                let error = StateError::Postgres {
                    doing: "commit to",
                    location: shown,
                    source,
                };
                lease.lose(format!("a write failed: {error}"));
                Err(error)
            }
        }
    }

    /// Writes `commits` in one transaction; returns the serial of the last.
    async fn commit(&mut self, commits: Vec<&Commit>) -> Result<u64, WriteError> {
        let tx = self.session.transaction().await?;
        let s = &self.statements;
        let rows = tx
            .query(
                &s.bump,
                &[&self.app_id, &self.epoch, &(commits.len() as i64)],
            )
            .await?;
        let Some(row) = rows.first() else {
            return Err(WriteError::Fenced);
        };
        let serial = row.get::<_, i64>(0) as u64;
        for commit in commits {
            // The same user twice in one commit: the later write wins.
            let mut record: BTreeMap<&str, Option<&Attrs>> = BTreeMap::new();
            for (user, attrs) in &commit.record {
                record.insert(user.as_str(), attrs.as_ref().filter(|a| !a.is_empty()));
            }
            let (kept, forgotten): (Vec<_>, Vec<_>) =
                record.iter().partition(|(_, attrs)| attrs.is_some());
            if !kept.is_empty() {
                let ids: Vec<&str> = kept.iter().map(|(u, _)| **u).collect();
                let values: Vec<Json<BTreeMap<&str, &str>>> = kept
                    .iter()
                    .filter_map(|(_, a)| a.map(|a| Json(json_map(a))))
                    .collect();
                let at = commit.applied_at as i64;
                tx.execute(&s.upsert_users, &[&self.app_id, &ids, &values, &at])
                    .await?;
            }
            if !forgotten.is_empty() {
                let ids: Vec<&str> = forgotten.iter().map(|(u, _)| **u).collect();
                tx.execute(&s.delete_users, &[&self.app_id, &ids]).await?;
            }
            let cleared: Vec<&str> = record
                .keys()
                .copied()
                .chain(commit.clear.iter().map(UserId::as_str))
                .collect();
            if !cleared.is_empty() {
                tx.execute(&s.delete_doubt, &[&self.app_id, &cleared])
                    .await?;
            }
            let mut doubt: BTreeMap<&str, &InDoubt> = BTreeMap::new();
            for (user, d) in &commit.doubt {
                doubt.insert(user.as_str(), d);
            }
            if !doubt.is_empty() {
                let ids: Vec<&str> = doubt.keys().copied().collect();
                let maybe: Vec<Json<BTreeMap<&str, &str>>> =
                    doubt.values().map(|d| Json(json_map(&d.maybe))).collect();
                let since: Vec<i64> = doubt.values().map(|d| d.note.since as i64).collect();
                let reason: Vec<&str> = doubt.values().map(|d| d.note.reason.as_str()).collect();
                tx.execute(
                    &s.upsert_doubt,
                    &[&self.app_id, &ids, &maybe, &since, &reason],
                )
                .await?;
            }
        }
        tx.commit().await?;
        Ok(serial)
    }

    async fn replace(&mut self, snapshot: &Snapshot) -> Result<u64, WriteError> {
        let tx = self.session.transaction().await?;
        let rows = tx
            .query(
                "UPDATE attrsync.apps SET serial = greatest(serial + 1, $3), drift_cursor = NULL
                  WHERE id = $1 AND fence = $2 RETURNING serial",
                &[&self.app_id, &self.epoch, &(snapshot.serial as i64)],
            )
            .await?;
        let Some(row) = rows.first() else {
            return Err(WriteError::Fenced);
        };
        let serial = row.get::<_, i64>(0) as u64;
        tx.execute(
            "DELETE FROM attrsync.users WHERE app_id = $1",
            &[&self.app_id],
        )
        .await?;
        tx.execute(
            "DELETE FROM attrsync.in_doubt WHERE app_id = $1",
            &[&self.app_id],
        )
        .await?;
        let kept: Vec<(&UserId, &SnapshotEntry)> = snapshot
            .users
            .iter()
            .filter(|(_, e)| !e.attrs.is_empty())
            .collect();
        for piece in kept.chunks(ROWS_PER_STATEMENT) {
            let ids: Vec<&str> = piece.iter().map(|(u, _)| u.as_str()).collect();
            let values: Vec<Json<BTreeMap<&str, &str>>> = piece
                .iter()
                .map(|(_, e)| Json(json_map(&e.attrs)))
                .collect();
            let at: Vec<i64> = piece.iter().map(|(_, e)| e.applied_at as i64).collect();
            tx.execute(
                "INSERT INTO attrsync.users (app_id, user_id, attrs, applied_at)
                 SELECT $1, u, a, t FROM unnest($2::text[], $3::jsonb[], $4::int8[]) AS x (u, a, t)",
                &[&self.app_id, &ids, &values, &at],
            )
            .await?;
        }
        let doubts: Vec<(&UserId, &InDoubt)> = snapshot.in_doubt.iter().collect();
        for piece in doubts.chunks(ROWS_PER_STATEMENT) {
            let ids: Vec<&str> = piece.iter().map(|(u, _)| u.as_str()).collect();
            let maybe: Vec<Json<BTreeMap<&str, &str>>> = piece
                .iter()
                .map(|(_, d)| Json(json_map(&d.maybe)))
                .collect();
            let since: Vec<i64> = piece.iter().map(|(_, d)| d.note.since as i64).collect();
            let reason: Vec<&str> = piece.iter().map(|(_, d)| d.note.reason.as_str()).collect();
            tx.execute(
                &self.statements.upsert_doubt,
                &[&self.app_id, &ids, &maybe, &since, &reason],
            )
            .await?;
        }
        tx.commit().await?;
        Ok(serial)
    }

    async fn mark_migrated(&mut self, to: &str) -> Result<(), WriteError> {
        let updated = self
            .session
            .execute(
                "UPDATE attrsync.apps SET migrated_to = $3 WHERE id = $1 AND fence = $2",
                &[&self.app_id, &self.epoch, &to],
            )
            .await?;
        if updated == 0 {
            return Err(WriteError::Fenced);
        }
        Ok(())
    }

    async fn save_cursor(&mut self, cursor: Option<&str>) -> Result<(), WriteError> {
        let updated = self
            .session
            .execute(
                "UPDATE attrsync.apps SET drift_cursor = $3 WHERE id = $1 AND fence = $2",
                &[&self.app_id, &self.epoch, &cursor],
            )
            .await?;
        if updated == 0 {
            return Err(WriteError::Fenced);
        }
        Ok(())
    }
}

/// Why a write on the lock session failed.
enum WriteError {
    /// `apps.fence` moved on: another writer holds the lock now.
    Fenced,
    /// The database failed.
    Db(tokio_postgres::Error),
}

impl From<tokio_postgres::Error> for WriteError {
    fn from(error: tokio_postgres::Error) -> Self {
        WriteError::Db(error)
    }
}

/// Attributes as the JSON object stored in a `jsonb` column.
fn json_map(attrs: &Attrs) -> BTreeMap<&str, &str> {
    attrs
        .iter()
        .map(|(n, v)| (n.as_str(), v.as_str()))
        .collect()
}

impl SnapshotStore for PgStore {
    fn location(&self) -> String {
        self.shown.clone()
    }

    fn serial(&self) -> BoxFuture<'_, Result<u64, StateError>> {
        Box::pin(self.read_serial())
    }

    fn load(&self) -> BoxFuture<'_, Result<Snapshot, StateError>> {
        Box::pin(self.read_all())
    }

    fn get<'a>(
        &'a self,
        user: &'a str,
    ) -> BoxFuture<'a, Result<Option<SnapshotEntry>, StateError>> {
        Box::pin(async move {
            let sql =
                "SELECT attrs, applied_at FROM attrsync.users WHERE app_id = $1 AND user_id = $2";
            match self.user_row(sql, user).await? {
                Some((id, row)) => Ok(Some(self.entry(&id, &row, 0, &mut Names::default())?)),
                None => Ok(None),
            }
        })
    }

    fn doubt<'a>(&'a self, user: &'a str) -> BoxFuture<'a, Result<Option<InDoubt>, StateError>> {
        Box::pin(async move {
            let sql = "SELECT maybe, since, reason FROM attrsync.in_doubt WHERE app_id = $1 AND user_id = $2";
            match self.user_row(sql, user).await? {
                Some((id, row)) => Ok(Some(self.in_doubt(&id, &row, 0, &mut Names::default())?)),
                None => Ok(None),
            }
        })
    }

    fn users_after<'a>(
        &'a self,
        after: Option<&'a str>,
        limit: usize,
    ) -> BoxFuture<'a, Result<Vec<PagedUser>, StateError>> {
        Box::pin(async move {
            let Some(app_id) = self.app_id else {
                return Ok(Vec::new());
            };
            let reader = self.reader.lock().await;
            let rows = reader
                .query(
                    "SELECT u.user_id, u.attrs, u.applied_at, d.user_id IS NOT NULL
                       FROM attrsync.users u
                       LEFT JOIN attrsync.in_doubt d ON d.app_id = u.app_id AND d.user_id = u.user_id
                      WHERE u.app_id = $1 AND ($2::text IS NULL OR u.user_id > $2)
                      ORDER BY u.user_id LIMIT $3",
                    &[&app_id, &after, &(limit as i64)],
                )
                .await
                .map_err(self.db("read"))?;
            let mut names = Names::default();
            rows.iter()
                .map(|row| {
                    let user = self.user_id(row.get(0))?;
                    let entry = self.entry(&user, row, 1, &mut names)?;
                    Ok(PagedUser {
                        user,
                        entry,
                        in_doubt: row.get(3),
                    })
                })
                .collect()
        })
    }

    fn drift_cursor(&self) -> BoxFuture<'_, Result<Option<String>, StateError>> {
        Box::pin(async move {
            let Some(app_id) = self.app_id else {
                return Ok(None);
            };
            let reader = self.reader.lock().await;
            let row = reader
                .query_one(
                    "SELECT drift_cursor FROM attrsync.apps WHERE id = $1",
                    &[&app_id],
                )
                .await
                .map_err(self.db("read"))?;
            Ok(row.get(0))
        })
    }

    fn save_drift_cursor<'a>(
        &'a self,
        cursor: Option<&'a str>,
    ) -> BoxFuture<'a, Result<(), StateError>> {
        let cursor = cursor.map(str::to_owned);
        Box::pin(self.ask(move |reply| Request::Cursor(cursor, reply)))
    }

    fn commit(&self, commit: Commit) -> BoxFuture<'_, Result<u64, StateError>> {
        Box::pin(self.ask(move |reply| Request::Commit(commit, reply)))
    }

    fn replace_all(&self, snapshot: Snapshot) -> BoxFuture<'_, Result<u64, StateError>> {
        Box::pin(self.ask(move |reply| Request::Replace(snapshot, reply)))
    }

    fn mark_migrated<'a>(&'a self, to: &'a str) -> BoxFuture<'a, Result<(), StateError>> {
        let to = to.to_owned();
        Box::pin(self.ask(move |reply| Request::Migrated(to, reply)))
    }

    fn check(&self) -> BoxFuture<'_, Result<(), StateError>> {
        let result = match &self.writer {
            Some(writer) => writer.lease.check(&self.shown),
            None => Ok(()),
        };
        Box::pin(std::future::ready(result))
    }

    fn other_target(&self) -> Option<String> {
        // Each server has its own app row: a snapshot never records another server.
        None
    }

    fn previous_target(&self) -> Option<String> {
        self.previous_target.clone()
    }
}
