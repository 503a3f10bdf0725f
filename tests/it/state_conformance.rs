//! One conformance suite for every snapshot backend: each scenario runs against sled in a
//! temporary directory and against PostgreSQL in a fresh database, through the
//! `SnapshotStore` trait that everything else uses.

use std::sync::Arc;
use std::time::Duration;

use attrsync::model::{
    Attrs, DoubtNote, InDoubt, PostgresUrl, Snapshot, StateLocation, Target, UserId, UserMap,
};
use attrsync::state::{
    self, Access, Binding, Commit, Holder, OnOtherTarget, PgStore, SnapshotStore, StateError,
};

use crate::pg_support;

/// Where a scenario's snapshots live.
enum Backend {
    Sled(tempfile::TempDir),
    Postgres(String),
}

impl Backend {
    fn location(&self) -> StateLocation {
        match self {
            Backend::Sled(dir) => StateLocation::Dir(dir.path().join("state")),
            Backend::Postgres(url) => StateLocation::Postgres(PostgresUrl::new(url).unwrap()),
        }
    }

    async fn open_as(
        &self,
        target: &Target,
        command: &str,
        access: Access,
    ) -> Result<Arc<dyn SnapshotStore>, StateError> {
        let binding = Binding {
            sdkappid: 1_400_000_000,
            target,
        };
        state::open(
            &self.location(),
            binding,
            &Holder::this_process(command),
            OnOtherTarget::Refuse,
            access,
        )
        .await
    }

    async fn writer(&self) -> Arc<dyn SnapshotStore> {
        self.open_as(&Target::Embedded, "apply", write(Duration::ZERO))
            .await
            .unwrap()
    }
}

fn write(lock_timeout: Duration) -> Access {
    Access::Write { lock_timeout }
}

fn id(user: &str) -> UserId {
    UserId::new(user).unwrap()
}

fn attrs(city: &str) -> Attrs {
    Attrs::parse(&[("city", city)]).unwrap()
}

fn doubt(city: &str) -> InDoubt {
    InDoubt {
        maybe: attrs(city),
        note: DoubtNote {
            since: 7,
            reason: "a write was sent".into(),
        },
    }
}

fn record(users: &[(&str, Option<&str>)], at: u64) -> Commit {
    Commit {
        record: users
            .iter()
            .map(|(u, city)| (id(u), city.map(attrs)))
            .collect(),
        applied_at: at,
        ..Commit::default()
    }
}

/// Runs `$scenario` (an async fn taking a `Backend`) on sled and on PostgreSQL.
macro_rules! on_every_backend {
    ($($scenario:ident),* $(,)?) => {$(
        mod $scenario {
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn sled() {
                super::$scenario(super::Backend::Sled(tempfile::tempdir().unwrap())).await;
            }

            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn postgres() {
                let cluster = $crate::require_postgres!();
                super::$scenario(super::Backend::Postgres(cluster.database())).await;
            }
        }
    )*};
}

on_every_backend!(
    a_new_snapshot_is_empty_at_serial_0,
    commits_record_forget_mark_and_clear_each_moving_the_serial_by_one,
    pages_stream_the_users_in_order_with_their_doubt,
    the_drift_cursor_is_kept_without_moving_the_serial,
    replace_all_swaps_the_whole_content_at_once,
    an_export_imports_into_either_backend_unchanged,
    a_snapshot_never_mixes_two_servers,
    a_second_writer_is_refused_at_once_or_waits_for_the_first,
);

async fn a_new_snapshot_is_empty_at_serial_0(backend: Backend) {
    let store = backend.writer().await;
    assert_eq!(store.serial().await.unwrap(), 0);
    let snapshot = store.load().await.unwrap();
    assert!(snapshot.users.is_empty() && snapshot.in_doubt.is_empty());
    assert_eq!(snapshot.serial, 0);
    assert!(store.get("Mary").await.unwrap().is_none());
    store.check().await.unwrap();
}

async fn commits_record_forget_mark_and_clear_each_moving_the_serial_by_one(backend: Backend) {
    let store = backend.writer().await;
    assert_eq!(
        store
            .commit(record(&[("Mary", Some("Rome")), ("Bob", Some("Oslo"))], 10))
            .await
            .unwrap(),
        1
    );
    // Mark Ann (new) and Mary in doubt: their entries stay as they are.
    let mark = Commit {
        doubt: vec![(id("Ann"), doubt("Lima")), (id("Mary"), doubt("Paris"))],
        applied_at: 11,
        ..Commit::default()
    };
    assert_eq!(store.commit(mark).await.unwrap(), 2);
    let snapshot = store.load().await.unwrap();
    assert_eq!(snapshot.serial, 2);
    let users: Vec<&str> = snapshot.users.iter().map(|(u, _)| u.as_str()).collect();
    assert_eq!(users, ["Bob", "Mary"]);
    let doubted: Vec<&str> = snapshot.in_doubt.iter().map(|(u, _)| u.as_str()).collect();
    assert_eq!(doubted, ["Ann", "Mary"]);
    assert_eq!(
        store.doubt("Mary").await.unwrap(),
        Some(doubt("Paris")),
        "a user's doubt reads back whole"
    );
    // Settle: Mary recorded (leaves doubt), Ann cleared, Bob forgotten; the same user twice
    // in one commit: the later write wins.
    let settle = Commit {
        record: vec![
            (id("Mary"), Some(attrs("Nice"))),
            (id("Mary"), Some(attrs("Paris"))),
            (id("Bob"), None),
        ],
        clear: vec![id("Ann")],
        applied_at: 12,
        ..Commit::default()
    };
    assert_eq!(store.commit(settle).await.unwrap(), 3);
    let snapshot = store.load().await.unwrap();
    assert_eq!(snapshot.users.len(), 1);
    let mary = store.get("Mary").await.unwrap().unwrap();
    assert_eq!((mary.attrs, mary.applied_at), (attrs("Paris"), 12));
    assert!(snapshot.in_doubt.is_empty());
    // Recording no attributes forgets a user too.
    store
        .commit(Commit {
            record: vec![(id("Mary"), Some(Attrs::default()))],
            applied_at: 13,
            ..Commit::default()
        })
        .await
        .unwrap();
    assert!(store.load().await.unwrap().users.is_empty());
    assert_eq!(store.serial().await.unwrap(), 4);
}

async fn pages_stream_the_users_in_order_with_their_doubt(backend: Backend) {
    let store = backend.writer().await;
    let users: Vec<String> = (0..250).map(|i| format!("u{i:03}")).collect();
    let mut commit = Commit {
        record: users.iter().map(|u| (id(u), Some(attrs("Rome")))).collect(),
        applied_at: 1,
        ..Commit::default()
    };
    commit.doubt = vec![(id("u150"), doubt("Oslo"))];
    store.commit(commit).await.unwrap();
    let mut seen = Vec::new();
    let mut after: Option<String> = None;
    loop {
        let page = store.users_after(after.as_deref(), 100).await.unwrap();
        let Some(last) = page.last() else { break };
        after = Some(last.user.as_str().to_owned());
        seen.extend(page);
    }
    assert_eq!(seen.len(), 250);
    assert!(seen.windows(2).all(|w| w[0].user < w[1].user));
    let doubted: Vec<&str> = seen
        .iter()
        .filter(|p| p.in_doubt)
        .map(|p| p.user.as_str())
        .collect();
    assert_eq!(doubted, ["u150"]);
    assert_eq!(seen[7].entry.attrs, attrs("Rome"));
}

async fn the_drift_cursor_is_kept_without_moving_the_serial(backend: Backend) {
    let store = backend.writer().await;
    store.commit(record(&[("a", Some("x"))], 1)).await.unwrap();
    assert_eq!(store.drift_cursor().await.unwrap(), None);
    store.save_drift_cursor(Some("u099")).await.unwrap();
    assert_eq!(store.drift_cursor().await.unwrap().as_deref(), Some("u099"));
    assert_eq!(store.serial().await.unwrap(), 1);
    store.save_drift_cursor(None).await.unwrap();
    assert_eq!(store.drift_cursor().await.unwrap(), None);
}

async fn replace_all_swaps_the_whole_content_at_once(backend: Backend) {
    let store = backend.writer().await;
    store
        .commit(record(&[("old", Some("x")), ("kept", Some("y"))], 1))
        .await
        .unwrap();
    store.save_drift_cursor(Some("kept")).await.unwrap();
    let users = UserMap::from_unsorted(vec![
        (id("kept"), attrs("z")),
        (id("new"), attrs("w")),
        (id("none"), Attrs::default()),
    ])
    .unwrap();
    let in_doubt = UserMap::from_unsorted(vec![(id("maybe"), doubt("v"))]).unwrap();
    let replacement = Snapshot::recorded(&users, in_doubt, 5);
    assert_eq!(store.replace_all(replacement).await.unwrap(), 2);
    let snapshot = store.load().await.unwrap();
    let names: Vec<&str> = snapshot.users.iter().map(|(u, _)| u.as_str()).collect();
    assert_eq!(
        names,
        ["kept", "new"],
        "users without attributes are not kept"
    );
    assert_eq!(snapshot.users.get("kept").unwrap().attrs, attrs("z"));
    assert_eq!(snapshot.in_doubt.get("maybe"), Some(&doubt("v")));
    assert_eq!(
        store.drift_cursor().await.unwrap(),
        None,
        "a new content restarts the scan"
    );
}

async fn an_export_imports_into_either_backend_unchanged(backend: Backend) {
    let store = backend.writer().await;
    store
        .commit(Commit {
            record: vec![
                (id("Mary"), Some(attrs("Rome"))),
                (id("Bob"), Some(attrs("Oslo"))),
            ],
            doubt: vec![(id("Ann"), doubt("Lima"))],
            applied_at: 3,
            ..Commit::default()
        })
        .await
        .unwrap();
    let before = store.load().await.unwrap();
    let mut text = Vec::new();
    state::export(&before, &mut text).unwrap();
    let imported = state::parse_import(
        std::str::from_utf8(&text).unwrap(),
        &[attrsync::model::AttrName::new("city").unwrap()],
    )
    .unwrap();
    // Into a fresh snapshot of the other kind, and back into this one.
    let other = match &backend {
        Backend::Sled(_) => pg_support::cluster().map(|c| Backend::Postgres(c.database())),
        Backend::Postgres(_) => Some(Backend::Sled(tempfile::tempdir().unwrap())),
    };
    let mut targets = vec![Arc::clone(&store)];
    if let Some(other) = &other {
        targets.push(other.writer().await);
    }
    for target in targets {
        target
            .replace_all(Snapshot::recorded(
                &imported.users,
                imported.in_doubt.clone(),
                3,
            ))
            .await
            .unwrap();
        let after = target.load().await.unwrap();
        assert_eq!(after.users, before.users);
        assert_eq!(after.in_doubt, before.in_doubt);
    }
}

async fn a_snapshot_never_mixes_two_servers(backend: Backend) {
    let store = backend.writer().await;
    store
        .commit(record(&[("Mary", Some("Rome"))], 1))
        .await
        .unwrap();
    drop(store);
    let other = Target::Endpoint("http://127.0.0.1:9".into());
    match &backend {
        // A directory holds one server's snapshot: another is refused.
        Backend::Sled(_) => {
            let error = backend
                .open_as(&other, "apply", write(Duration::ZERO))
                .await
                .unwrap_err();
            assert!(matches!(error, StateError::OtherTarget { .. }), "{error}");
        }
        // A database holds each server's snapshot apart: the other one starts empty.
        Backend::Postgres(_) => {
            let store = backend
                .open_as(&other, "apply", write(Duration::ZERO))
                .await
                .unwrap();
            assert!(store.load().await.unwrap().users.is_empty());
            drop(store);
            let store = backend.writer().await;
            assert_eq!(store.load().await.unwrap().users.len(), 1);
        }
    }
}

async fn a_second_writer_is_refused_at_once_or_waits_for_the_first(backend: Backend) {
    let first = backend.writer().await;
    first
        .commit(record(&[("Mary", Some("Rome"))], 1))
        .await
        .unwrap();
    let error = backend
        .open_as(&Target::Embedded, "import", write(Duration::ZERO))
        .await
        .unwrap_err();
    let text = error.to_string();
    assert!(
        text.contains(&format!("pid {}", std::process::id())) && text.contains("attrsync apply"),
        "the holder is named: {text}"
    );
    // With a timeout, the second writer waits while the first holds the snapshot, and gets
    // it once the first lets go.
    let waiting = backend.open_as(&Target::Embedded, "import", write(Duration::from_secs(20)));
    tokio::pin!(waiting);
    assert!(
        tokio::time::timeout(Duration::from_millis(300), &mut waiting)
            .await
            .is_err(),
        "the second writer does not get the snapshot while the first holds it"
    );
    drop(first);
    let second = waiting.await.unwrap();
    assert_eq!(second.load().await.unwrap().users.len(), 1);
    second
        .commit(record(&[("Bob", Some("Oslo"))], 2))
        .await
        .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_plan_reads_while_a_writer_holds_the_lock() {
    let cluster = crate::require_postgres!();
    let backend = Backend::Postgres(cluster.database());
    let writer = backend.writer().await;
    writer
        .commit(record(&[("Mary", Some("Rome"))], 1))
        .await
        .unwrap();
    let reader = backend
        .open_as(&Target::Embedded, "plan", Access::Read)
        .await
        .unwrap();
    let snapshot = reader.load().await.unwrap();
    assert_eq!((snapshot.users.len(), snapshot.serial), (1, 1));
    writer
        .commit(record(&[("Bob", Some("Oslo"))], 2))
        .await
        .unwrap();
    assert_eq!(
        reader.serial().await.unwrap(),
        2,
        "the serial moves across processes"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_a_force_unlocked_writer_can_no_longer_commit() {
    let cluster = crate::require_postgres!();
    let backend = Backend::Postgres(cluster.database());
    let Backend::Postgres(url) = &backend else {
        unreachable!()
    };
    let binding = Binding {
        sdkappid: 1_400_000_000,
        target: &Target::Embedded,
    };
    let url = PostgresUrl::new(url).unwrap();
    let writer = PgStore::open(
        &url,
        binding,
        &Holder::this_process("apply"),
        write(Duration::ZERO),
    )
    .await
    .unwrap();
    writer
        .commit(record(&[("Mary", Some("Rome"))], 1))
        .await
        .unwrap();
    let lock_id = writer.lock_id().unwrap().to_owned();
    let holder = PgStore::force_unlock(&url, &lock_id).await.unwrap();
    assert!(holder.contains("attrsync apply"), "{holder}");
    let error = writer
        .commit(record(&[("Bob", Some("Oslo"))], 2))
        .await
        .unwrap_err();
    assert!(
        matches!(error, StateError::LockLost { .. }),
        "the old writer is fenced out: {error}"
    );
    assert!(writer.check().await.is_err(), "and stops sending");
    // Another writer gets the lock, and Bob was never recorded.
    let next = backend.writer().await;
    let snapshot = next.load().await.unwrap();
    assert!(snapshot.users.get("Bob").is_none());
    let unknown = PgStore::force_unlock(&url, "0123456789abcdef")
        .await
        .unwrap_err();
    assert!(
        matches!(unknown, StateError::NoSuchLock { .. }),
        "{unknown}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_tls_is_used_as_sslmode_says() {
    let Some(cluster) = pg_support::private_cluster_with_tls() else {
        return;
    };
    let plain = cluster.database();
    let binding = Binding {
        sdkappid: 1_400_000_000,
        target: &Target::Embedded,
    };
    let required = PostgresUrl::new(&plain.replace("sslmode=disable", "sslmode=require")).unwrap();
    let store = PgStore::open(
        &required,
        binding,
        &Holder::this_process("apply"),
        write(Duration::ZERO),
    )
    .await
    .unwrap();
    store
        .commit(record(&[("Mary", Some("Rome"))], 1))
        .await
        .unwrap();
    let encrypted: i64 = cluster
        .execute(
            &plain,
            "SELECT count(*) FROM pg_stat_ssl s JOIN pg_stat_activity a USING (pid)
              WHERE s.ssl AND a.datname = current_database()",
        )
        .await[0]
        .get(0);
    assert!(
        encrypted >= 2,
        "the reading and the lock sessions use TLS: {encrypted}"
    );
    // verify-full checks the certificate: a self-signed one is refused.
    let verified =
        PostgresUrl::new(&plain.replace("sslmode=disable", "sslmode=verify-full")).unwrap();
    let error = PgStore::open(
        &verified,
        binding,
        &Holder::this_process("plan"),
        Access::Read,
    )
    .await
    .unwrap_err()
    .to_string();
    assert!(
        error.contains("TLS") || error.contains("certificate"),
        "{error}"
    );
}
