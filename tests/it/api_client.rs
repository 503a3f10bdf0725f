//! The client against the emulator over real HTTP on 127.0.0.1: every endpoint round-trips and
//! every error class is produced by the emulator and classified by the client.

use attrsync::api::{
    ApiError, AttrSlot, Client, ClientConfig, Endpoint, SecretKey, UserAttrNames, UserAttrs,
    UserError,
};
use attrsync::emulator::{
    Clock, Emulator, EmulatorConfig, FailMode, RunningEmulator, DEMO_SECRET_KEY,
};
use std::collections::BTreeMap;
use std::time::Duration;

const SDKAPPID: u64 = 1_400_000_000;

async fn emulator(config: EmulatorConfig) -> RunningEmulator {
    Emulator::start(config, "127.0.0.1:0")
        .await
        .expect("emulator starts")
}

fn with_attributes(names: &[&str]) -> EmulatorConfig {
    EmulatorConfig {
        attributes: names.iter().map(|name| name.to_string()).collect(),
        ..EmulatorConfig::default()
    }
}

fn config_for(emulator: &RunningEmulator) -> ClientConfig {
    ClientConfig::new(
        emulator.base_url(),
        SDKAPPID,
        "administrator",
        SecretKey::new(DEMO_SECRET_KEY),
    )
}

fn client_for(emulator: &RunningEmulator) -> Client {
    Client::new(config_for(emulator)).expect("client builds")
}

fn user(account: &str, attrs: &[(&str, &str)]) -> UserAttrs {
    UserAttrs {
        account: account.to_owned(),
        attrs: attrs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect(),
    }
}

fn attrs(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

#[tokio::test]
async fn attribute_names_round_trip() {
    let emulator = emulator(EmulatorConfig::default()).await;
    let client = client_for(&emulator);
    assert!(client.get_attr_name().await.unwrap().is_empty());
    let slot = |name: &str, account_type| AttrSlot {
        name: name.to_owned(),
        account_type,
    };
    let names = BTreeMap::from([(0, slot("sex", 0)), (1, slot("city", 1))]);
    client.set_attr_name(&names).await.unwrap();
    assert_eq!(client.get_attr_name().await.unwrap(), names);
    // A partial update changes only the given slot.
    client
        .set_attr_name(&BTreeMap::from([(2, slot("tier", 0))]))
        .await
        .unwrap();
    assert_eq!(client.get_attr_name().await.unwrap().len(), 3);
    // The account type of a registered name cannot change, as the docs say.
    let err = client
        .set_attr_name(&BTreeMap::from([(1, slot("city", 0))]))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Some(90033), "{err}");
    assert_eq!(client.get_attr_name().await.unwrap()[&1], slot("city", 1));
}

#[tokio::test]
async fn set_attr_merges_and_get_attr_reads_it_back() {
    let emulator = emulator(with_attributes(&["sex", "city", "tier"])).await;
    let client = client_for(&emulator);
    let outcome = client
        .set_attr(&[user("Mary", &[("sex", "female"), ("city", "NewYork")])])
        .await
        .unwrap();
    assert!(outcome.is_complete());
    client
        .set_attr(&[user("Mary", &[("city", "Boston")])])
        .await
        .unwrap();

    let read = client
        .get_attr(&["Mary".to_owned(), "xiaoming".to_owned()])
        .await
        .unwrap();
    assert_eq!(
        read.attrs["Mary"],
        attrs(&[("sex", "female"), ("city", "Boston")])
    );
    // A user without attributes comes back with `{}`.
    assert_eq!(read.attrs["xiaoming"], BTreeMap::new());
    assert!(read.errors.is_empty());

    let state = emulator.state();
    assert_eq!(
        state.users["Mary"],
        attrs(&[("sex", "female"), ("city", "Boston")])
    );
    let set_calls: Vec<_> = state
        .log
        .iter()
        .filter(|call| call.endpoint == "set_attr")
        .collect();
    assert_eq!(set_calls.len(), 2);
    assert!(set_calls
        .iter()
        .all(|call| call.accounts == 1 && call.code == Some(0)));
}

#[tokio::test]
async fn remove_attr_deletes_only_the_named_attributes() {
    let emulator = emulator(with_attributes(&["sex", "city"])).await;
    let client = client_for(&emulator);
    client
        .set_attr(&[user("Mary", &[("sex", "female"), ("city", "NewYork")])])
        .await
        .unwrap();
    let outcome = client
        .remove_attr(&[UserAttrNames {
            account: "Mary".into(),
            names: vec!["city".into()],
        }])
        .await
        .unwrap();
    assert!(outcome.is_complete());
    let read = client.get_attr(&["Mary".to_owned()]).await.unwrap();
    assert_eq!(read.attrs["Mary"], attrs(&[("sex", "female")]));
}

#[tokio::test]
async fn unknown_users_are_a_partial_success_with_70107() {
    let emulator = emulator(EmulatorConfig {
        unknown_users: vec!["ghost".into()],
        ..with_attributes(&["sex"])
    })
    .await;
    let client = client_for(&emulator);
    let outcome = client
        .set_attr(&[
            user("Mary", &[("sex", "female")]),
            user("ghost", &[("sex", "male")]),
        ])
        .await
        .unwrap();
    assert_eq!(outcome.errors.len(), 1);
    assert_eq!(outcome.errors[0].account, "ghost");
    assert_eq!(outcome.errors[0].code, Some(70107));
    assert!(outcome.refused("ghost") && !outcome.refused("Mary"));
    assert!(emulator.state().users.contains_key("Mary"));
    assert!(!emulator.state().users.contains_key("ghost"));

    let read = client
        .get_attr(&["ghost".to_owned(), "Mary".to_owned()])
        .await
        .unwrap();
    assert_eq!(
        read.errors.iter().map(|e| e.code).collect::<Vec<_>>(),
        vec![Some(70107)]
    );
    assert!(!read.attrs.contains_key("ghost"));

    let removed = client
        .remove_attr(&[UserAttrNames {
            account: "ghost".into(),
            names: vec!["sex".into()],
        }])
        .await
        .unwrap();
    assert!(matches!(
        removed.errors.as_slice(),
        [UserError {
            code: Some(70107),
            ..
        }]
    ));
    assert_eq!(emulator.state().calls["set_attr"].partial, 1);
}

#[tokio::test]
async fn internal_errors_are_transient() {
    let emulator = emulator(EmulatorConfig {
        fail_rate: 1.0,
        fail_mode: FailMode::InternalError,
        ..with_attributes(&["sex"])
    })
    .await;
    let err = client_for(&emulator)
        .set_attr(&[user("Mary", &[("sex", "female")])])
        .await
        .unwrap_err();
    assert!(
        matches!(
            err,
            ApiError::Transient {
                code: Some(91000),
                ..
            }
        ),
        "{err:?}"
    );
    assert!(err.is_retryable());
    assert!(emulator.state().users.is_empty(), "a 91000 applies nothing");
}

#[tokio::test]
async fn bad_gateway_is_transient() {
    let emulator = emulator(EmulatorConfig {
        fail_rate: 1.0,
        fail_mode: FailMode::BadGateway,
        ..with_attributes(&["sex"])
    })
    .await;
    let err = client_for(&emulator).get_attr_name().await.unwrap_err();
    assert!(
        matches!(err, ApiError::Transient { code: None, ref reason, .. } if reason.contains("502")),
        "{err:?}"
    );
    assert_eq!(emulator.state().log[0].fault.as_deref(), Some("502"));
}

#[tokio::test]
async fn a_dropped_connection_is_transient_and_the_call_was_applied() {
    let emulator = emulator(EmulatorConfig {
        fail_rate: 1.0,
        fail_mode: FailMode::Drop,
        ..with_attributes(&["sex"])
    })
    .await;
    let err = client_for(&emulator)
        .set_attr(&[user("Mary", &[("sex", "female")])])
        .await
        .unwrap_err();
    assert!(
        matches!(err, ApiError::Transient { code: None, .. }),
        "{err:?}"
    );
    // The ambiguous case: the server applied the change, the client never heard back.
    assert_eq!(emulator.state().users["Mary"], attrs(&[("sex", "female")]));
    assert_eq!(emulator.state().calls["set_attr"].injected, 1);
}

#[tokio::test]
async fn a_slow_answer_times_out_as_transient() {
    let emulator = emulator(EmulatorConfig {
        latency: Duration::from_secs(2),
        ..EmulatorConfig::default()
    })
    .await;
    let client = Client::new(ClientConfig {
        request_timeout: Duration::from_millis(200),
        ..config_for(&emulator)
    })
    .unwrap();
    let err = client.get_attr_name().await.unwrap_err();
    assert!(
        matches!(err, ApiError::Transient { ref reason, .. } if reason.contains("no answer within 200ms")),
        "{err}"
    );
}

#[tokio::test]
async fn a_refused_connection_is_transient() {
    let emulator = emulator(EmulatorConfig::default()).await;
    let config = config_for(&emulator);
    emulator.shutdown().await;
    let err = Client::new(config)
        .unwrap()
        .get_attr_name()
        .await
        .unwrap_err();
    assert!(
        matches!(err, ApiError::Transient { ref reason, .. } if reason.starts_with("could not connect")),
        "{err}"
    );
}

#[tokio::test]
async fn the_servers_rate_limit_is_classified_as_rate_limited() {
    let emulator = emulator(EmulatorConfig {
        rate_limit: 2,
        ..EmulatorConfig::default()
    })
    .await;
    let client = client_for(&emulator);
    let mut results = Vec::new();
    for _ in 0..4 {
        results.push(client.get_attr_name().await);
    }
    assert!(results[..2].iter().all(Result::is_ok));
    for err in results[2..]
        .iter()
        .map(|result| result.as_ref().unwrap_err())
    {
        assert!(
            matches!(
                err,
                ApiError::RateLimited {
                    code: Some(60007),
                    ..
                }
            ),
            "{err:?}"
        );
        assert!(err.is_retryable() && err.is_rate_limited());
    }
    assert_eq!(emulator.state().calls["get_attr_name"].throttled, 2);
}

#[tokio::test]
async fn an_expired_usersig_asks_for_a_new_one() {
    // The emulator's clock runs two days ahead, so a fresh 24 h UserSig is already expired.
    let emulator = emulator(EmulatorConfig {
        clock: Clock::Offset(2 * 86_400),
        ..EmulatorConfig::default()
    })
    .await;
    let client = client_for(&emulator);
    let err = client.get_attr_name().await.unwrap_err();
    assert_eq!(
        err,
        ApiError::UserSigExpired {
            endpoint: Endpoint::GetAttrName
        }
    );
    assert!(err.needs_new_usersig() && !err.is_retryable());
    client.renew_usersig();
    assert!(client
        .get_attr_name()
        .await
        .unwrap_err()
        .needs_new_usersig());
}

#[tokio::test]
async fn the_wrong_key_is_fatal_70009() {
    let emulator = emulator(EmulatorConfig::default()).await;
    let client = Client::new(ClientConfig {
        secret_key: SecretKey::new("0".repeat(64)),
        ..config_for(&emulator)
    })
    .unwrap();
    let err = client.get_attr_name().await.unwrap_err();
    assert!(
        matches!(err, ApiError::Fatal { code: 70009, .. }),
        "{err:?}"
    );
    assert!(
        err.to_string()
            .contains("check that the secret key belongs to this SDKAppID"),
        "{err}"
    );
}

#[tokio::test]
async fn the_wrong_sdkappid_is_fatal_70014() {
    let emulator = emulator(EmulatorConfig::default()).await;
    let client = Client::new(ClientConfig {
        sdkappid: 1_400_000_001,
        ..config_for(&emulator)
    })
    .unwrap();
    let err = client.get_attr_name().await.unwrap_err();
    assert!(
        matches!(err, ApiError::Fatal { code: 70014, .. }),
        "{err:?}"
    );
}

#[tokio::test]
async fn unregistered_names_and_long_values_are_fatal_90033() {
    let emulator = emulator(with_attributes(&["sex"])).await;
    let client = client_for(&emulator);
    let unregistered = client
        .set_attr(&[user("Mary", &[("mood", "happy")])])
        .await
        .unwrap_err();
    assert!(
        matches!(unregistered, ApiError::Fatal { code: 90033, .. }),
        "{unregistered:?}"
    );
    let long = "x".repeat(51);
    let too_long = client
        .set_attr(&[user("Mary", &[("sex", &long)])])
        .await
        .unwrap_err();
    assert!(
        matches!(too_long, ApiError::Fatal { code: 90033, .. }),
        "{too_long:?}"
    );
    let fifty = "x".repeat(50);
    client
        .set_attr(&[user("Mary", &[("sex", &fifty)])])
        .await
        .unwrap();
    let remove = client
        .remove_attr(&[UserAttrNames {
            account: "Mary".into(),
            names: vec!["mood".into()],
        }])
        .await
        .unwrap_err();
    assert!(
        matches!(remove, ApiError::Fatal { code: 90033, .. }),
        "{remove:?}"
    );
}

#[tokio::test]
async fn batches_over_100_users_are_refused_without_a_call() {
    let emulator = emulator(with_attributes(&["sex"])).await;
    let client = client_for(&emulator);
    let users: Vec<UserAttrs> = (0..101)
        .map(|i| user(&format!("u{i}"), &[("sex", "x")]))
        .collect();
    let err = client.set_attr(&users).await.unwrap_err();
    assert_eq!(
        err,
        ApiError::BatchTooLarge {
            endpoint: Endpoint::SetAttr,
            users: 101
        }
    );
    assert!(!err.is_retryable());
    let accounts: Vec<String> = (0..101).map(|i| format!("u{i}")).collect();
    assert!(matches!(
        client.get_attr(&accounts).await,
        Err(ApiError::BatchTooLarge { .. })
    ));
    assert!(emulator.state().log.is_empty());
    // Exactly 100 is fine.
    assert!(client.set_attr(&users[..100]).await.unwrap().is_complete());
}

#[tokio::test]
async fn empty_batches_are_not_sent() {
    let emulator = emulator(EmulatorConfig::default()).await;
    let client = client_for(&emulator);
    assert!(client.set_attr(&[]).await.unwrap().is_complete());
    assert!(client.remove_attr(&[]).await.unwrap().is_complete());
    assert!(client.get_attr(&[]).await.unwrap().attrs.is_empty());
    assert!(emulator.state().log.is_empty());
}

#[tokio::test]
async fn client_configs_out_of_range_are_refused() {
    let config = ClientConfig::new("http://127.0.0.1:1", SDKAPPID, "admin", SecretKey::new("k"));
    for rate_limit in [0, 101] {
        let err = Client::new(ClientConfig {
            rate_limit,
            ..config.clone()
        })
        .unwrap_err();
        assert!(err.to_string().contains("use 1 to 100"), "{err}");
    }
    assert!(Client::new(ClientConfig {
        secret_key: SecretKey::new(""),
        ..config.clone()
    })
    .is_err());
    assert!(Client::new(ClientConfig {
        base_url: "console.tim.qq.com".into(),
        ..config
    })
    .is_err());
}

mod strict_answers {
    //! Answers the emulator never gives, from a purpose-built server: each is classified, and
    //! says whether the server may have applied the call.

    use super::*;

    use crate::common::Canned;

    fn client_to(canned: &Canned) -> Client {
        Client::new(ClientConfig::new(
            canned.url(),
            SDKAPPID,
            "administrator",
            SecretKey::new(DEMO_SECRET_KEY),
        ))
        .unwrap()
    }

    async fn set_attr_answered(response: Vec<u8>) -> Result<attrsync::api::BatchOutcome, ApiError> {
        let canned = Canned::start(move |_| response.clone());
        client_to(&canned)
            .set_attr(&[user("Mary", &[("sex", "female")])])
            .await
    }

    #[tokio::test]
    async fn a_body_without_the_envelope_is_not_success() {
        let err = set_attr_answered(Canned::json("{}")).await.unwrap_err();
        assert!(matches!(err, ApiError::UnexpectedResponse { .. }), "{err}");
        assert!(err.may_have_applied() && !err.is_retryable());
        assert_eq!(
            err.to_string(),
            "set_attr: the endpoint did not answer like Tencent Cloud IM: it has no ActionStatus: HTTP 200 OK, \
             content type application/json, body starts: `{}`; check that the endpoint or region points to the IM REST API"
        );
        let html = Canned::response(
            "200 OK",
            &[("Content-Type", "text/html")],
            b"<html>Sign in to the Wi-Fi</html>",
        );
        let err = set_attr_answered(html).await.unwrap_err();
        assert!(
            err.to_string().contains(
                "content type text/html, body starts: `<html>Sign in to the Wi-Fi</html>`"
            ),
            "{err}"
        );
    }

    #[tokio::test]
    async fn a_redirect_names_its_location_and_is_not_followed() {
        let canned = Canned::start(|_| {
            Canned::response(
                "302 Found",
                &[("Location", "http://portal.invalid/landing")],
                b"",
            )
        });
        let err = client_to(&canned)
            .set_attr(&[user("Mary", &[("sex", "female")])])
            .await
            .unwrap_err();
        assert!(
            err.to_string()
                .contains("redirecting to http://portal.invalid/landing"),
            "{err}"
        );
        assert_eq!(
            canned.seen().len(),
            1,
            "one request, no second one to the redirect"
        );
    }

    #[tokio::test]
    async fn http_429_is_a_rate_limit_and_408_is_transient() {
        let err = set_attr_answered(Canned::response("429 Too Many Requests", &[], b""))
            .await
            .unwrap_err();
        assert!(
            matches!(err, ApiError::RateLimited { code: None, .. }),
            "{err}"
        );
        assert!(
            err.to_string().contains("(HTTP 429 Too Many Requests)"),
            "{err}"
        );
        assert!(!err.may_have_applied());
        let err = set_attr_answered(Canned::response("408 Request Timeout", &[], b""))
            .await
            .unwrap_err();
        assert!(
            matches!(err, ApiError::Transient { .. }) && err.is_retryable(),
            "{err}"
        );
        assert!(err.may_have_applied());
    }

    #[tokio::test]
    async fn a_body_over_the_bound_is_not_read_whole() {
        let big = vec![b' '; attrsync::api::MAX_RESPONSE_BYTES + 1];
        let err = set_attr_answered(Canned::response("200 OK", &[], &big))
            .await
            .unwrap_err();
        assert!(
            err.to_string().contains("with a body over 4194304 bytes"),
            "{err}"
        );
    }

    #[tokio::test]
    async fn odd_field_types_are_tolerated_where_the_meaning_is_clear() {
        // A string ErrorCode, a null ErrorInfo, an ErrorList entry without a code.
        let outcome = set_attr_answered(Canned::json(
            r#"{"ActionStatus":"OK","ErrorCode":"0","ErrorInfo":null,"ErrorList":[{"To_Account":"Mary"}]}"#,
        ))
        .await
        .unwrap();
        assert_eq!(outcome.errors[0].account, "Mary");
        assert_eq!(outcome.errors[0].code, None);
        // A negative code: the call failed, with a code the docs do not list; the run goes on.
        let err = set_attr_answered(Canned::json(
            r#"{"ActionStatus":"FAIL","ErrorCode":-1,"ErrorInfo":null}"#,
        ))
        .await
        .unwrap_err();
        assert!(matches!(err, ApiError::Refused { code: -1, .. }), "{err}");
        assert!(!err.stops_run() && !err.may_have_applied());
    }

    #[tokio::test]
    async fn an_unknown_endpoint_that_echoes_the_request_leaks_no_usersig() {
        // A server that echoes the request line (with the UserSig in its query) in its body.
        let canned = Canned::start(|request| {
            Canned::response(
                "404 Not Found",
                &[("Content-Type", "text/plain")],
                request.target.as_bytes(),
            )
        });
        let err = client_to(&canned)
            .set_attr(&[user("Mary", &[("sex", "female")])])
            .await
            .unwrap_err();
        let text = err.to_string();
        let target = &canned.seen()[0].target;
        let usersig = target
            .split('&')
            .find_map(|pair| pair.strip_prefix("usersig="))
            .unwrap();
        assert!(!text.contains(usersig), "{text}");
        assert!(text.contains("HTTP 404 Not Found"), "{text}");
        assert!(!err.may_have_applied(), "a 4xx did not pass the call on");
    }

    #[tokio::test]
    async fn get_attr_never_reads_an_unanswered_user_as_having_none() {
        let canned = Canned::start(|_| {
            Canned::json(
                r#"{"ActionStatus":"OK","ErrorCode":0,"UserAttrs":[{"To_Account":"a","Attrs":{"sex":"f"}}]}"#,
            )
        });
        let read = client_to(&canned)
            .get_attr(&["a".to_owned(), "b".to_owned()])
            .await
            .unwrap();
        assert_eq!(read.attrs.len(), 1);
        assert_eq!(read.errors[0].account, "b");
    }
}
