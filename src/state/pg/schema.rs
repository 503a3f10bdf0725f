//! The `attrsync` schema in PostgreSQL: created and migrated automatically, under a lock, one
//! numbered step at a time, recorded in `attrsync.schema_version`.
//!
//! Many apps live side by side: an app is a row of `attrsync.apps`, keyed by its SDKAppID and
//! its server (the snapshot's target), and every other table is keyed by the app's id.

use tokio_postgres::Client;

/// The advisory-lock namespace (the first of the two-int keys) of every attrsync lock:
/// `(NAMESPACE, app id)` is an app's writer lock, `(NAMESPACE, 0)` guards migrations. The
/// two-int key space does not overlap the one-bigint space other tools use.
pub(super) const NAMESPACE: i32 = 0x6174_7472; // "attr"

/// The migrations, in order; version N is `MIGRATIONS[N - 1]`.
const MIGRATIONS: &[&str] = &[
    // 1: apps, users, in-doubt records, lock records.
    r#"
    CREATE TABLE attrsync.apps (
        id           bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
        sdkappid     bigint NOT NULL,
        target       text   NOT NULL,
        serial       bigint NOT NULL DEFAULT 0,
        fence        bigint NOT NULL DEFAULT 0,
        drift_cursor text,
        migrated_to  text,
        created_at   timestamptz NOT NULL DEFAULT now(),
        UNIQUE (sdkappid, target)
    );
    CREATE TABLE attrsync.users (
        app_id     bigint NOT NULL REFERENCES attrsync.apps (id) ON DELETE CASCADE,
        user_id    text COLLATE "C" NOT NULL,
        attrs      jsonb  NOT NULL,
        applied_at bigint NOT NULL,
        PRIMARY KEY (app_id, user_id)
    );
    CREATE TABLE attrsync.in_doubt (
        app_id  bigint NOT NULL REFERENCES attrsync.apps (id) ON DELETE CASCADE,
        user_id text COLLATE "C" NOT NULL,
        maybe   jsonb  NOT NULL,
        since   bigint NOT NULL,
        reason  text   NOT NULL,
        PRIMARY KEY (app_id, user_id)
    );
    CREATE TABLE attrsync.locks (
        app_id      bigint PRIMARY KEY REFERENCES attrsync.apps (id) ON DELETE CASCADE,
        lock_id     text    NOT NULL,
        epoch       bigint  NOT NULL,
        holder      jsonb   NOT NULL,
        backend_pid integer NOT NULL,
        created_at  timestamptz NOT NULL DEFAULT now()
    );
    CREATE SEQUENCE attrsync.epochs;
    "#,
];

/// The schema version this build writes.
pub(super) const VERSION: i32 = MIGRATIONS.len() as i32;

/// Why the schema cannot be used.
#[derive(Debug)]
pub(super) enum SchemaError {
    /// A newer attrsync migrated the schema past what this one knows.
    TooNew(i32),
    /// The database failed.
    Db(tokio_postgres::Error),
}

impl From<tokio_postgres::Error> for SchemaError {
    fn from(error: tokio_postgres::Error) -> Self {
        SchemaError::Db(error)
    }
}

/// Brings the schema to [`VERSION`], creating it if needed. Concurrent callers serialise on a
/// transaction-level advisory lock, so each step runs once.
pub(super) async fn migrate(client: &mut Client) -> Result<(), SchemaError> {
    if current_version(client).await? == Some(VERSION) {
        return Ok(());
    }
    let tx = client.transaction().await?;
    tx.execute("SELECT pg_advisory_xact_lock($1, 0)", &[&NAMESPACE])
        .await?;
    tx.batch_execute(
        "CREATE SCHEMA IF NOT EXISTS attrsync;
         CREATE TABLE IF NOT EXISTS attrsync.schema_version (
             version    integer PRIMARY KEY,
             applied_at timestamptz NOT NULL DEFAULT now()
         );",
    )
    .await?;
    let found: i32 = tx
        .query_one(
            "SELECT coalesce(max(version), 0) FROM attrsync.schema_version",
            &[],
        )
        .await?
        .get(0);
    if found > VERSION {
        return Err(SchemaError::TooNew(found));
    }
    for (index, step) in MIGRATIONS.iter().enumerate().skip(found as usize) {
        let version = index as i32 + 1;
        tx.batch_execute(step).await?;
        tx.execute(
            "INSERT INTO attrsync.schema_version (version) VALUES ($1)",
            &[&version],
        )
        .await?;
        tracing::info!(version, "migrated the attrsync schema");
    }
    tx.commit().await?;
    Ok(())
}

/// The schema's version, or `None` before it exists.
async fn current_version(client: &Client) -> Result<Option<i32>, SchemaError> {
    let exists: bool = client
        .query_one(
            "SELECT to_regclass('attrsync.schema_version') IS NOT NULL",
            &[],
        )
        .await?
        .get(0);
    if !exists {
        return Ok(None);
    }
    let version: i32 = client
        .query_one(
            "SELECT coalesce(max(version), 0) FROM attrsync.schema_version",
            &[],
        )
        .await?
        .get(0);
    if version > VERSION {
        return Err(SchemaError::TooNew(version));
    }
    Ok(Some(version))
}
