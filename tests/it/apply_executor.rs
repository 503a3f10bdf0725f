//! The executor through the library, in-process on paused tokio time: the emulator behind the
//! server-API trait (its rate limit, faults and UserSig checks, without sockets) and a real
//! sled snapshot behind the store trait. Covers the policies the CLI tests cannot provoke:
//! 90033 bisection, partial success, expired UserSigs, fatal errors, and the retry loop with
//! its real backoff, which paused time makes instant and exact.

use std::time::Duration;

use attrsync::api::{ApiError, AttrApi, Client, ClientConfig, Endpoint, SecretKey, UserAttrs};
use attrsync::apply::{self, ApplyOptions, CallStats, GaveUp, RetryPolicy, StopSignal};
use attrsync::emulator::{
    Clock, Emulator, EmulatorConfig, FailMode, Faults, InProcess, DEMO_SECRET_KEY,
};
use attrsync::model::{Attrs, Desired, Snapshot, Target, UserId, UserMap};
use attrsync::plan::{self, PlanOptions};
use attrsync::state::{Binding, Holder, SledDb, SledStore};

fn desired(users: &[(String, Vec<(&str, &str)>)]) -> Desired {
    UserMap::from_unsorted(
        users
            .iter()
            .map(|(user, pairs)| (UserId::new(user).unwrap(), Attrs::parse(pairs).unwrap()))
            .collect(),
    )
    .unwrap()
}

/// The emulator in-process, called as `administrator` at up to 100 calls per second.
fn emulator(config: EmulatorConfig) -> InProcess {
    Emulator::new(config)
        .unwrap()
        .in_process("administrator", 100)
}

const EMBEDDED: Target = Target::Embedded;

fn open_store(dir: &std::path::Path) -> SledStore {
    let binding = Binding {
        sdkappid: 1_400_000_000,
        target: &EMBEDDED,
    };
    SledStore::from(SledDb::open(dir, binding, &Holder::default()).unwrap())
}

fn options() -> ApplyOptions {
    ApplyOptions {
        batch_size: 100,
        in_flight: 4,
        retry: apply::RetryPolicy::default(),
    }
}

#[tokio::test(start_paused = true)]
async fn invalid_attribute_batches_are_split_to_isolate_the_offending_users() {
    // The app knows sex and city only: users with a tier are refused with 90033.
    let server = emulator(EmulatorConfig {
        attributes: vec!["sex".into(), "city".into()],
        ..EmulatorConfig::default()
    });
    let users: Vec<(String, Vec<(&str, &str)>)> = (0..64)
        .map(|i| {
            let mut attrs = vec![("sex", "female"), ("city", "Rome")];
            if i == 5 || i == 41 {
                attrs.push(("tier", "gold"));
            }
            (format!("u{i:02}"), attrs)
        })
        .collect();
    let desired = desired(&users);
    let dir = tempfile::tempdir().unwrap();
    let store = open_store(dir.path());
    let snapshot = Snapshot::default();
    let plan = plan::plan(
        &desired,
        &snapshot,
        PlanOptions {
            sdkappid: 1_400_000_000,
            prune: false,
            ..PlanOptions::default()
        },
    );

    let report = apply::execute(
        &plan,
        &snapshot,
        &server,
        &store,
        options(),
        &StopSignal::new(),
        &|_| {},
    )
    .await;

    let failed: Vec<(&str, Option<i64>)> = report
        .failed
        .iter()
        .map(|f| (f.user.as_str(), f.code))
        .collect();
    assert_eq!(failed, [("u05", Some(90033)), ("u41", Some(90033))]);
    assert_eq!(report.created, 62);
    assert!(
        report.error.is_none(),
        "90033 is not fatal for the run: {:?}",
        report.error
    );
    // Bisection costs about 1 + 2·k·log2(n) calls for k invalid users among n: 25 here, far
    // fewer than one call per user.
    assert!(report.calls <= 1 + 2 * 2 * 6, "{} calls", report.calls);
    let recorded = store.db().load().unwrap();
    assert_eq!(recorded.users.len(), 62);
    assert!(recorded.users.get("u05").is_none());
    assert_eq!(server.state().users.len(), 62);
}

#[tokio::test(start_paused = true)]
async fn an_expired_usersig_is_renewed_once_then_the_run_stops() {
    // The server's clock is two days ahead: every UserSig attrsync makes looks expired.
    let server = emulator(EmulatorConfig {
        attributes: vec!["sex".into()],
        clock: Clock::Offset(2 * 86_400),
        ..EmulatorConfig::default()
    });
    let users: Vec<(String, Vec<(&str, &str)>)> = (0..250)
        .map(|i| (format!("u{i:03}"), vec![("sex", "male")]))
        .collect();
    let desired = desired(&users);
    let dir = tempfile::tempdir().unwrap();
    let store = open_store(dir.path());
    let snapshot = Snapshot::default();
    let plan = plan::plan(&desired, &snapshot, PlanOptions::default());

    let report = apply::execute(
        &plan,
        &snapshot,
        &server,
        &store,
        ApplyOptions {
            in_flight: 1,
            ..options()
        },
        &StopSignal::new(),
        &|_| {},
    )
    .await;

    assert_eq!(report.calls, 2, "one call, one re-signed retry, then stop");
    assert_eq!(report.retries, 1);
    assert!(
        report
            .error
            .as_deref()
            .unwrap_or_default()
            .contains("70001"),
        "{:?}",
        report.error
    );
    assert_eq!(report.failed.len(), 100, "the batch that failed");
    assert_eq!(
        report.skipped, 150,
        "the batches never dispatched after the fatal error"
    );
    assert!(store.db().load().unwrap().users.is_empty());
}

#[tokio::test(start_paused = true)]
async fn a_stop_before_the_start_sends_nothing() {
    let server = emulator(EmulatorConfig {
        attributes: vec!["sex".into()],
        ..EmulatorConfig::default()
    });
    let users: Vec<(String, Vec<(&str, &str)>)> = (0..10)
        .map(|i| (format!("u{i}"), vec![("sex", "male")]))
        .collect();
    let desired = desired(&users);
    let dir = tempfile::tempdir().unwrap();
    let store = open_store(dir.path());
    let plan = plan::plan(&desired, &Snapshot::default(), PlanOptions::default());
    let stop = StopSignal::new();
    stop.stop();
    let report = apply::execute(
        &plan,
        &Snapshot::default(),
        &server,
        &store,
        options(),
        &stop,
        &|_| {},
    )
    .await;
    assert_eq!((report.calls, report.skipped, report.applied()), (0, 10, 0));
    assert!(report.interrupted);
    assert_eq!(server.state().calls["set_attr"].total, 0);
}

/// Retries in milliseconds, not seconds: the policy is what these tests exercise.
fn quick_retries() -> ApplyOptions {
    ApplyOptions {
        retry: apply::RetryPolicy {
            max_attempts: 3,
            base: std::time::Duration::from_millis(1),
            cap: std::time::Duration::from_millis(4),
        },
        ..options()
    }
}

fn mary(city: &str) -> Desired {
    desired(&[("Mary".to_owned(), vec![("sex", "female"), ("city", city)])])
}

/// Applies `desired` over what `store` holds; returns the report.
async fn apply_to(
    server: &InProcess,
    store: &SledStore,
    desired: &Desired,
    options: ApplyOptions,
) -> apply::Report {
    let snapshot = store.db().load().unwrap();
    let plan = plan::plan(
        desired,
        &snapshot,
        PlanOptions {
            sdkappid: 1_400_000_000,
            prune: false,
            ..PlanOptions::default()
        },
    );
    apply::execute(
        &plan,
        &snapshot,
        server,
        store,
        options,
        &StopSignal::new(),
        &|_| {},
    )
    .await
}

#[tokio::test(start_paused = true)]
async fn writes_with_no_definitive_answer_stay_in_doubt() {
    // Dropped connections (applied, no answer) and 91000 (the server's "internal error,
    // retry") both leave the outcome unknown once the retries run out.
    for mode in [FailMode::Drop, FailMode::InternalError] {
        let server = emulator(EmulatorConfig {
            attributes: vec!["sex".into(), "city".into()],
            ..EmulatorConfig::default()
        });
        let dir = tempfile::tempdir().unwrap();
        let store = open_store(dir.path());
        assert!(apply_to(&server, &store, &mary("Paris"), quick_retries())
            .await
            .succeeded());
        server.set_faults(Faults {
            rate: 1.0,
            mode,
            endpoints: vec![Endpoint::SetAttr],
        });
        let report = apply_to(&server, &store, &mary("Rome"), quick_retries()).await;
        assert_eq!(report.failed.len(), 1, "{mode:?}: {report:?}");
        assert!(report.failed[0].in_doubt, "{mode:?}");
        let snapshot = store.db().load().unwrap();
        assert_eq!(
            snapshot
                .users
                .get("Mary")
                .unwrap()
                .attrs
                .get("city")
                .unwrap()
                .as_str(),
            "Paris",
            "the snapshot keeps what was confirmed"
        );
        let doubt = snapshot.in_doubt.get("Mary").expect("Mary is in doubt");
        assert_eq!(doubt.maybe.get("city").unwrap().as_str(), "Rome");

        // The next run re-sends her full desired state, even after a revert to Paris.
        server.set_faults(Faults::default());
        let report = apply_to(&server, &store, &mary("Paris"), quick_retries()).await;
        assert!(report.succeeded(), "{report:?}");
        assert_eq!(report.updated, 1);
        assert_eq!(server.state().users["Mary"]["city"], "Paris");
        assert!(store.db().load().unwrap().in_doubt.is_empty());
    }
}

#[tokio::test(start_paused = true)]
async fn answers_that_prove_nothing_was_applied_clear_the_doubt() {
    // 70107 in an ErrorList: the server says it did nothing for that user.
    let server = emulator(EmulatorConfig {
        attributes: vec!["sex".into(), "city".into()],
        unknown_users: vec!["ghost".into()],
        ..EmulatorConfig::default()
    });
    let dir = tempfile::tempdir().unwrap();
    let store = open_store(dir.path());
    let ghost = desired(&[("ghost".to_owned(), vec![("sex", "male")])]);
    let report = apply_to(&server, &store, &ghost, quick_retries()).await;
    assert_eq!(report.failed.len(), 1);
    assert!(!report.failed[0].in_doubt);
    assert!(store.db().load().unwrap().in_doubt.is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_connection_never_made_clears_the_doubt() {
    // Nothing listening: the request never left this machine. A real HTTP client on real time,
    // since this is about the transport.
    let dir = tempfile::tempdir().unwrap();
    let store = open_store(dir.path());
    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}", closed.local_addr().unwrap());
    drop(closed);
    let nowhere = Client::new(ClientConfig::new(
        url,
        1_400_000_000,
        "administrator",
        SecretKey::new(DEMO_SECRET_KEY),
    ))
    .unwrap();
    let snapshot = store.db().load().unwrap();
    let plan = plan::plan(&mary("Oslo"), &snapshot, PlanOptions::default());
    let report = apply::execute(
        &plan,
        &snapshot,
        &nowhere,
        &store,
        quick_retries(),
        &StopSignal::new(),
        &|_| {},
    )
    .await;
    assert_eq!(report.failed.len(), 1, "{report:?}");
    assert!(!report.failed[0].in_doubt, "{report:?}");
    assert!(store.db().load().unwrap().in_doubt.is_empty());
}

#[tokio::test(start_paused = true)]
async fn a_refusal_does_not_clear_doubt_left_by_an_earlier_run() {
    let server = emulator(EmulatorConfig {
        attributes: vec!["sex".into(), "city".into()],
        ..EmulatorConfig::default()
    });
    let dir = tempfile::tempdir().unwrap();
    let store = open_store(dir.path());
    assert!(apply_to(&server, &store, &mary("Paris"), quick_retries())
        .await
        .succeeded());
    // Run 1: the write to Rome is applied but its answer lost.
    server.set_faults(Faults {
        rate: 1.0,
        mode: FailMode::Drop,
        endpoints: vec![Endpoint::SetAttr],
    });
    apply_to(&server, &store, &mary("Rome"), quick_retries()).await;
    assert_eq!(server.state().users["Mary"]["city"], "Rome");
    // Run 2: the re-send is refused for good (every UserSig looks expired to this server).
    let refusing = emulator(EmulatorConfig {
        attributes: vec!["sex".into(), "city".into()],
        clock: Clock::Offset(2 * 86_400),
        ..EmulatorConfig::default()
    });
    let report = apply_to(&refusing, &store, &mary("Paris"), quick_retries()).await;
    assert!(report.error.is_some(), "{report:?}");
    assert!(report.failed[0].in_doubt, "{report:?}");
    // The refusal proves the re-send did nothing; the first server may still hold Rome.
    let doubt = store.db().load().unwrap().in_doubt;
    let maybe = &doubt.get("Mary").expect("still in doubt").maybe;
    assert_eq!(maybe.get("city").unwrap().as_str(), "Paris");
}

#[tokio::test(start_paused = true)]
async fn a_partial_success_records_the_accepted_users_and_clears_the_refused() {
    // 70107 for two users of one batch: the other 98 are accepted in the same call.
    let server = emulator(EmulatorConfig {
        attributes: vec!["sex".into()],
        unknown_users: vec!["u013".into(), "u077".into()],
        ..EmulatorConfig::default()
    });
    let users: Vec<(String, Vec<(&str, &str)>)> = (0..100)
        .map(|i| (format!("u{i:03}"), vec![("sex", "male")]))
        .collect();
    let dir = tempfile::tempdir().unwrap();
    let store = open_store(dir.path());
    let report = apply_to(&server, &store, &desired(&users), options()).await;
    assert_eq!(report.calls, 1, "one call for the batch: {report:?}");
    assert_eq!(report.created, 98);
    let failed: Vec<(&str, Option<i64>, bool)> = report
        .failed
        .iter()
        .map(|f| (f.user.as_str(), f.code, f.in_doubt))
        .collect();
    assert_eq!(
        failed,
        [("u013", Some(70107), false), ("u077", Some(70107), false)]
    );
    let snapshot = store.db().load().unwrap();
    assert_eq!(snapshot.users.len(), 98);
    assert!(snapshot.users.get("u013").is_none());
    assert!(
        snapshot.in_doubt.is_empty(),
        "an ErrorList entry proves nothing was applied"
    );
}

/// `with_retries` around one `set_attr` of Mary, counted in `stats`.
async fn set_mary(
    server: &InProcess,
    policy: &RetryPolicy,
    stop: &StopSignal,
    stats: &CallStats,
) -> Result<(), apply::CallFailure> {
    let users = [UserAttrs {
        account: "Mary".into(),
        attrs: [("sex".to_owned(), "female".to_owned())].into(),
    }];
    apply::with_retries(server, policy, stop, stats, || {
        apply::counted(stats, Endpoint::SetAttr, server.set_attr(&users))
    })
    .await
    .map(|_| ())
}

#[tokio::test(start_paused = true)]
async fn the_retry_loop_backs_off_within_the_policy_then_gives_up() {
    let server = emulator(EmulatorConfig {
        attributes: vec!["sex".into()],
        fail_rate: 1.0,
        fail_mode: FailMode::BadGateway,
        ..EmulatorConfig::default()
    });
    let policy = RetryPolicy::default();
    let stats = CallStats::default();
    let started = tokio::time::Instant::now();
    let failure = set_mary(&server, &policy, &StopSignal::new(), &stats)
        .await
        .unwrap_err();
    let waited = started.elapsed();
    assert!(
        matches!(
            failure.gave_up,
            GaveUp::Exhausted(ApiError::Transient { .. }, 8)
        ),
        "{failure:?}"
    );
    assert!(failure.maybe_applied, "a 502 may hide an applied call");
    assert_eq!(stats.calls.into_inner(), 8);
    assert_eq!(stats.retries.into_inner(), 7);
    // Seven backoffs, each at most min(cap, base × 2^(n-1)): 0.25+0.5+1+2+4+8+16 s.
    let ceiling: Duration = (1..8).map(|n| policy.backoff_ceiling(n)).sum();
    assert_eq!(ceiling, Duration::from_millis(31_750));
    assert!(waited <= ceiling, "waited {waited:?}");
    assert_eq!(server.state().calls["set_attr"].injected, 8);
}

#[tokio::test(start_paused = true)]
async fn a_stop_interrupts_a_backoff_and_nothing_more_is_sent() {
    let server = emulator(EmulatorConfig {
        attributes: vec!["sex".into()],
        fail_rate: 1.0,
        fail_mode: FailMode::InternalError,
        ..EmulatorConfig::default()
    });
    // A policy whose first backoff is long: the stop arrives during it.
    let policy = RetryPolicy {
        max_attempts: 8,
        base: Duration::from_secs(3600),
        cap: Duration::from_secs(3600),
    };
    let stop = StopSignal::new();
    let stats = CallStats::default();
    let stopper = {
        let stop = stop.clone();
        tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(1)).await;
            stop.stop();
        })
    };
    let failure = set_mary(&server, &policy, &stop, &stats).await.unwrap_err();
    stopper.await.unwrap();
    // A backoff drawn below 1 ms would retry before the stop; either way it ends interrupted.
    assert!(
        matches!(failure.gave_up, GaveUp::Interrupted),
        "{failure:?}"
    );
    let calls = stats.calls.into_inner();
    assert!((1..=2).contains(&calls), "{calls} calls");
    assert_eq!(server.state().calls["set_attr"].total, calls as u64);
}

#[tokio::test(start_paused = true)]
async fn rate_limit_answers_are_retried_until_the_window_admits_the_call() {
    // The server admits one call per second; the client would send 100.
    let server = emulator(EmulatorConfig {
        attributes: vec!["sex".into()],
        rate_limit: 1,
        ..EmulatorConfig::default()
    });
    let stats = CallStats::default();
    let stop = StopSignal::new();
    let policy = RetryPolicy::default();
    set_mary(&server, &policy, &stop, &stats).await.unwrap();
    let started = tokio::time::Instant::now();
    set_mary(&server, &policy, &stop, &stats).await.unwrap();
    assert!(
        started.elapsed() >= Duration::from_secs(1),
        "the window held the second call back"
    );
    assert!(stats.throttled.load(std::sync::atomic::Ordering::Relaxed) >= 1);
    let counts = &server.state().calls["set_attr"];
    assert_eq!(counts.ok, 2);
    assert_eq!(counts.throttled, stats.throttled.into_inner() as u64);
}
