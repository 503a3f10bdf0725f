//! The emulator's request handling: query and UserSig checks, the five endpoints, the rate
//! limit and fault injection.

use axum::body::Body;
use axum::extract::Query;
use hyper::body::Incoming;
use hyper::{Method, Request, Response, StatusCode};
use serde::de::DeserializeOwned;
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::{Arc, Mutex, MutexGuard};

use super::stats::{Outcome, Record, StateReport, Stats};
use super::store::{AttrSlot, Data, DataChange, EmulatorStore};
use super::{Clock, FailMode, Faults, SetAttrMode};
use crate::api::usersig::{self, VerifyError};
use crate::api::wire::{
    GetAttrRequest, RemoveAttrRequest, Response as ApiResponse, SetAttrNameRequest, SetAttrRequest,
    UserAttrs, UserError,
};
use crate::api::{Endpoint, SecretKey, MAX_USERS_PER_CALL};

/// Longest attribute value (and attribute name) the server accepts, in bytes.
pub const MAX_VALUE_BYTES: usize = crate::model::MAX_VALUE_BYTES;

/// Most attribute slots an app has (`"0"`..`"9"`).
pub const MAX_ATTR_SLOTS: u8 = crate::model::MAX_ATTRIBUTES as u8;

/// Largest request body read; real ones stay far below (100 users × 10 attributes).
const MAX_BODY_BYTES: usize = 1024 * 1024;

/// The path prefix of the emulated APIs.
pub const API_PREFIX: &str = "/v4/timpush/";

/// The path of the test-only state document.
pub const STATE_PATH: &str = "/_emulator/state";

/// The settings fixed for the emulator's lifetime.
#[derive(Debug)]
pub struct ServerSettings {
    pub sdkappid: u64,
    pub secret_key: SecretKey,
    pub unknown_users: BTreeSet<String>,
    pub rate_limit: u32,
    pub latency: std::time::Duration,
    pub set_attr: SetAttrMode,
    pub clock: Clock,
}

/// Everything the connections share.
#[derive(Debug)]
pub struct Shared {
    pub settings: ServerSettings,
    pub store: EmulatorStore,
    pub mutable: Mutex<Mutable>,
}

/// The emulator's state besides the data: the fault RNG and the statistics.
#[derive(Debug)]
pub struct Mutable {
    pub rng: fastrand::Rng,
    pub stats: Stats,
    pub faults: Faults,
}

/// Returned instead of a response when fault injection drops the connection.
#[derive(Debug, thiserror::Error)]
#[error("connection dropped by fault injection")]
pub struct ConnectionDropped;

/// The fault chosen for one call.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Fault {
    InternalError,
    BadGateway,
    Drop,
}

impl Fault {
    fn name(self) -> &'static str {
        match self {
            Fault::InternalError => "91000",
            Fault::BadGateway => "502",
            Fault::Drop => "drop",
        }
    }
}

/// The answer of one API call before it is sent.
struct Answer {
    body: ApiResponse,
    accounts: usize,
}

impl Answer {
    fn fail(code: i64, info: impl Into<String>) -> Self {
        Self {
            body: ApiResponse::fail(code, info),
            accounts: 0,
        }
    }
}

/// A call refused as a whole: an error code and its text, nothing applied.
#[derive(Debug)]
struct Rejection {
    code: i64,
    info: String,
}

impl Rejection {
    fn new(code: i64, info: impl Into<String>) -> Self {
        Self {
            code,
            info: info.into(),
        }
    }
}

impl From<Rejection> for Answer {
    fn from(rejection: Rejection) -> Self {
        Answer::fail(rejection.code, rejection.info)
    }
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, Mutable> {
        // Counters and the RNG stay usable after a panic elsewhere; they are never half-updated.
        crate::sync::lock(&self.mutable)
    }

    /// Replaces the fault-injection settings.
    pub fn set_faults(&self, faults: Faults) {
        self.lock().faults = faults;
    }

    /// The state document of `GET /_emulator/state`.
    pub fn report(&self) -> StateReport {
        let (calls, log) = self.lock().stats.report();
        let data = self.store.lock();
        StateReport {
            sdkappid: self.settings.sdkappid,
            users: data.users.clone(),
            attr_names: data
                .attr_names
                .iter()
                .map(|(slot, registration)| (slot.to_string(), registration.name.clone()))
                .collect(),
            calls,
            log,
        }
    }
}

/// Handles one HTTP request.
pub async fn handle(
    shared: Arc<Shared>,
    request: Request<Incoming>,
) -> Result<Response<Body>, ConnectionDropped> {
    let arrived = tokio::time::Instant::now();
    let path = request.uri().path().to_owned();
    if path == STATE_PATH && request.method() == Method::GET {
        return Ok(json_response(StatusCode::OK, &shared.report()));
    }
    let Some(endpoint) = path.strip_prefix(API_PREFIX).and_then(Endpoint::from_name) else {
        // The server's "wrong resource" code, in the usual 200 envelope.
        let body = ApiResponse::fail(60009, format!("no such REST API: {path}"));
        return Ok(json_response(StatusCode::OK, &body));
    };
    if request.method() != Method::POST {
        let body = ApiResponse::fail(60002, "the REST API only accepts POST");
        return Ok(json_response(StatusCode::OK, &body));
    }
    let uri = request.uri().clone();
    let body = axum::body::to_bytes(Body::new(request.into_body()), MAX_BODY_BYTES).await;
    let body = body.as_deref().map_err(|_| UnreadableBody);
    match exchange(&shared, endpoint, arrived, &uri, body).await {
        Exchange::Answer(answer) => Ok(json_response(StatusCode::OK, &answer)),
        Exchange::BadGateway => {
            let mut response = Response::new(Body::from(BAD_GATEWAY_BODY));
            *response.status_mut() = StatusCode::BAD_GATEWAY;
            Ok(response)
        }
        Exchange::Dropped => Err(ConnectionDropped),
    }
}

/// The HTML body of an injected 502, as a proxy in front of the server would send it.
pub const BAD_GATEWAY_BODY: &str = "<html><body>502 Bad Gateway</body></html>";

/// The request body could not be read whole.
#[derive(Debug, Clone, Copy)]
pub struct UnreadableBody;

/// How one API call ended, before any transport carries it back.
#[derive(Debug)]
pub enum Exchange {
    /// The API's JSON envelope, sent with HTTP 200.
    Answer(ApiResponse),
    /// An injected fault: HTTP 502 with [`BAD_GATEWAY_BODY`].
    BadGateway,
    /// An injected fault: the connection is closed with no answer (after the call ran).
    Dropped,
}

/// Runs one call of `endpoint` that arrived at `arrived` with the query of `uri`: the rate
/// limit, fault injection, authentication, the endpoint itself, the latency and the statistics.
/// Shared by the HTTP server and the in-process API, so both behave alike.
pub async fn exchange(
    shared: &Shared,
    endpoint: Endpoint,
    arrived: tokio::time::Instant,
    uri: &hyper::Uri,
    body: Result<&[u8], UnreadableBody>,
) -> Exchange {
    let (admitted, fault) = {
        let mut mutable = shared.lock();
        let admitted = mutable
            .stats
            .admit(endpoint, arrived, shared.settings.rate_limit);
        // Only admitted calls draw from the RNG, so a seeded run repeats as long as the same
        // calls are admitted in the same order.
        let Mutable { rng, faults, .. } = &mut *mutable;
        let fault = admitted
            .then(|| choose_fault(rng, faults, endpoint))
            .flatten();
        (admitted, fault)
    };

    let (answer, outcome, fault) = if !admitted {
        let answer = Answer::fail(
            60007,
            "REST API call rate exceeded the limit, please lower the request rate",
        );
        (answer, Outcome::Throttled, None)
    } else if fault == Some(Fault::BadGateway) {
        tokio::time::sleep(shared.settings.latency).await;
        record(shared, endpoint, arrived, Outcome::Injected, 0, None, fault);
        tracing::debug!(%endpoint, "fault injection: answering HTTP 502");
        return Exchange::BadGateway;
    } else if fault == Some(Fault::InternalError) {
        let answer = Answer::fail(91000, "internal service error, please try again");
        (answer, Outcome::Injected, fault)
    } else {
        let answer = match body {
            Ok(body) => serve(shared, endpoint, uri, body).await,
            Err(UnreadableBody) => Answer::fail(90001, "the request body could not be read"),
        };
        let outcome = if fault.is_some() {
            Outcome::Injected
        } else if answer.body.is_ok() {
            Outcome::Ok {
                user_errors: answer.body.error_list.as_ref().map_or(0, Vec::len),
            }
        } else {
            Outcome::Failed
        };
        (answer, outcome, fault)
    };

    tokio::time::sleep(shared.settings.latency).await;
    let code = answer.body.error_code;
    record(
        shared,
        endpoint,
        arrived,
        outcome,
        answer.accounts,
        Some(code),
        fault,
    );
    tracing::debug!(%endpoint, accounts = answer.accounts, code, fault = fault.map(Fault::name), "emulated call");
    if fault == Some(Fault::Drop) {
        return Exchange::Dropped;
    }
    Exchange::Answer(answer.body)
}

fn record(
    shared: &Shared,
    endpoint: Endpoint,
    arrived: tokio::time::Instant,
    outcome: Outcome,
    accounts: usize,
    code: Option<i64>,
    fault: Option<Fault>,
) {
    let record = Record {
        outcome,
        accounts,
        code,
        fault: fault.map(Fault::name),
    };
    shared.lock().stats.record(endpoint, arrived, record);
}

fn choose_fault(rng: &mut fastrand::Rng, faults: &Faults, endpoint: Endpoint) -> Option<Fault> {
    if faults.rate <= 0.0
        || !(faults.endpoints.is_empty() || faults.endpoints.contains(&endpoint))
        || rng.f64() >= faults.rate
    {
        return None;
    }
    Some(match faults.mode {
        FailMode::InternalError => Fault::InternalError,
        FailMode::BadGateway => Fault::BadGateway,
        FailMode::Drop => Fault::Drop,
        FailMode::Mixed => match rng.u8(0..3) {
            0 => Fault::InternalError,
            1 => Fault::BadGateway,
            _ => Fault::Drop,
        },
    })
}

/// Authenticates and executes one API call.
async fn serve(shared: &Shared, endpoint: Endpoint, uri: &hyper::Uri, body: &[u8]) -> Answer {
    if let Err(rejection) = authenticate(&shared.settings, uri) {
        return rejection.into();
    }
    let result = match endpoint {
        Endpoint::SetAttr => set_attr(shared, body),
        Endpoint::RemoveAttr => remove_attr(shared, body),
        Endpoint::GetAttr => get_attr(shared, body),
        Endpoint::GetAttrName => get_attr_name(shared, body),
        Endpoint::SetAttrName => set_attr_name(shared, body),
    };
    let answer = result.unwrap_or_else(Answer::from);
    if answer.body.is_ok()
        && matches!(
            endpoint,
            Endpoint::SetAttr | Endpoint::RemoveAttr | Endpoint::SetAttrName
        )
    {
        if let Err(err) = shared.store.flush().await {
            tracing::error!(%err, "the emulator could not persist a change");
            return Answer::fail(91000, "internal service error, please try again");
        }
    }
    answer
}

/// Checks the query string and the UserSig, answering with the server's codes.
fn authenticate(settings: &ServerSettings, uri: &hyper::Uri) -> Result<(), Rejection> {
    let Ok(Query(params)) = Query::<HashMap<String, String>>::try_from_uri(uri) else {
        return Err(Rejection::new(
            60002,
            "HTTP parse error: the query string is malformed",
        ));
    };
    let param = |name: &str| {
        params
            .get(name)
            .filter(|value| !value.is_empty())
            .ok_or_else(|| {
                Rejection::new(
                    60002,
                    format!("HTTP parse error: missing query parameter {name}"),
                )
            })
    };
    let sdkappid = param("sdkappid")?;
    let identifier = param("identifier")?;
    let usersig = param("usersig")?;
    let random = param("random")?;
    let contenttype = param("contenttype")?;
    let Ok(sdkappid) = sdkappid.parse::<u64>() else {
        return Err(Rejection::new(
            60002,
            "HTTP parse error: sdkappid is not a number",
        ));
    };
    if random.parse::<u32>().is_err() {
        return Err(Rejection::new(
            60002,
            "HTTP parse error: random is not a 32-bit unsigned integer",
        ));
    }
    if contenttype != "json" {
        return Err(Rejection::new(
            60002,
            "HTTP parse error: contenttype must be json",
        ));
    }
    if sdkappid != settings.sdkappid {
        return Err(Rejection::new(
            70014,
            "the SDKAppID in the request does not match the one the UserSig was generated with",
        ));
    }
    let now = settings.clock.now_unix();
    usersig::verify(
        usersig,
        settings.sdkappid,
        identifier,
        &settings.secret_key,
        now,
    )
    .map_err(|err| match err {
        VerifyError::Undecodable { .. } => {
            Rejection::new(70003, "UserSig parse failed; it may have been truncated")
        }
        VerifyError::SdkAppIdMismatch { .. } => Rejection::new(
            70014,
            "the SDKAppID in the request does not match the one the UserSig was generated with",
        ),
        VerifyError::IdentifierMismatch { .. } => Rejection::new(
            70013,
            "the UserID in the request does not match the one the UserSig was generated with",
        ),
        VerifyError::Expired { .. } => {
            Rejection::new(70001, "UserSig expired, please generate a new one")
        }
        VerifyError::BadSignature => Rejection::new(
            70009,
            "UserSig verification failed; was it generated with another SDKAppID's key?",
        ),
    })
}

fn parse<T: DeserializeOwned>(body: &[u8]) -> Result<T, Rejection> {
    serde_json::from_slice(body).map_err(|err| {
        Rejection::new(
            90001,
            format!("JSON parse failed, check the request body: {err}"),
        )
    })
}

fn check_account_count(accounts: usize) -> Result<(), Rejection> {
    if accounts > MAX_USERS_PER_CALL {
        return Err(Rejection::new(
            90018,
            format!(
                "the request carries {accounts} accounts, at most {MAX_USERS_PER_CALL} are allowed"
            ),
        ));
    }
    Ok(())
}

fn check_registered(data: &Data, name: &str) -> Result<(), Rejection> {
    if !data.is_registered(name) {
        return Err(Rejection::new(
            90033,
            format!("attribute is invalid: {name:?} is not a registered attribute name"),
        ));
    }
    Ok(())
}

fn persist(shared: &Shared, data: &mut Data, change: DataChange) -> Result<(), Rejection> {
    shared.store.apply(data, change).map_err(|err| {
        tracing::error!(%err, "the emulator could not store a change");
        Rejection::new(91000, "internal service error, please try again")
    })
}

/// Users in `unknown_users` are reported in `ErrorList` and left alone.
fn unknown_user(account: &str) -> UserError {
    UserError {
        account: account.to_owned(),
        code: Some(70107),
        info: "the account has not been imported".to_owned(),
    }
}

fn with_user_errors(mut body: ApiResponse, errors: Vec<UserError>) -> ApiResponse {
    if !errors.is_empty() {
        body.error_list = Some(errors);
    }
    body
}

fn set_attr(shared: &Shared, body: &[u8]) -> Result<Answer, Rejection> {
    let request: SetAttrRequest = parse(body)?;
    let accounts = request.users.len();
    check_account_count(accounts)?;
    let mut data = shared.store.lock();
    for user in &request.users {
        for (name, value) in &user.attrs {
            check_registered(&data, name)?;
            if value.len() > MAX_VALUE_BYTES {
                return Err(Rejection::new(
                    90033,
                    format!("attribute is invalid: the value of {name:?} is {} bytes, at most {MAX_VALUE_BYTES} are allowed", value.len()),
                ));
            }
        }
    }
    let mut errors = Vec::new();
    let mut change = DataChange::default();
    for UserAttrs { account, attrs } in request.users {
        if shared.settings.unknown_users.contains(&account) {
            errors.push(unknown_user(&account));
            continue;
        }
        // The documentation does not say whether set_attr merges or replaces; the emulator
        // does either (`--set-attr`), and attrsync is tested under both.
        let current = change
            .users
            .entry(account.clone())
            .or_insert_with(|| data.users.get(&account).cloned().unwrap_or_default());
        if shared.settings.set_attr == SetAttrMode::Replace {
            current.clear();
        }
        current.extend(attrs);
    }
    persist(shared, &mut data, change)?;
    Ok(Answer {
        body: with_user_errors(ApiResponse::ok(), errors),
        accounts,
    })
}

fn remove_attr(shared: &Shared, body: &[u8]) -> Result<Answer, Rejection> {
    let request: RemoveAttrRequest = parse(body)?;
    let accounts = request.users.len();
    check_account_count(accounts)?;
    let mut data = shared.store.lock();
    for user in &request.users {
        for name in &user.names {
            check_registered(&data, name)?;
        }
    }
    let mut errors = Vec::new();
    let mut change = DataChange::default();
    for user in request.users {
        if shared.settings.unknown_users.contains(&user.account) {
            errors.push(unknown_user(&user.account));
            continue;
        }
        let remaining = change
            .users
            .entry(user.account.clone())
            .or_insert_with(|| data.users.get(&user.account).cloned().unwrap_or_default());
        for name in &user.names {
            remaining.remove(name);
        }
    }
    persist(shared, &mut data, change)?;
    Ok(Answer {
        body: with_user_errors(ApiResponse::ok(), errors),
        accounts,
    })
}

fn get_attr(shared: &Shared, body: &[u8]) -> Result<Answer, Rejection> {
    let request: GetAttrRequest = parse(body)?;
    let accounts = request.accounts.len();
    check_account_count(accounts)?;
    let data = shared.store.lock();
    let mut users = Vec::new();
    let mut errors = Vec::new();
    for account in request.accounts {
        if shared.settings.unknown_users.contains(&account) {
            errors.push(unknown_user(&account));
        } else {
            let attrs = data.users.get(&account).cloned().unwrap_or_default();
            users.push(UserAttrs { account, attrs });
        }
    }
    let mut body = with_user_errors(ApiResponse::ok(), errors);
    body.user_attrs = Some(users);
    Ok(Answer { body, accounts })
}

fn get_attr_name(shared: &Shared, body: &[u8]) -> Result<Answer, Rejection> {
    // The body must be a JSON object, even if empty (`{}`).
    let _: serde_json::Map<String, serde_json::Value> = parse(body)?;
    let data = shared.store.lock();
    let mut response = ApiResponse::ok();
    response.attr_names = Some(
        data.attr_names
            .iter()
            .map(|(slot, registration)| (slot.to_string(), registration.name.clone()))
            .collect(),
    );
    response.attr_types = Some(
        data.attr_names
            .iter()
            .map(|(slot, registration)| (slot.to_string(), registration.account_type))
            .collect(),
    );
    Ok(Answer {
        body: response,
        accounts: 0,
    })
}

fn set_attr_name(shared: &Shared, body: &[u8]) -> Result<Answer, Rejection> {
    let request: SetAttrNameRequest = parse(body)?;
    let invalid = |reason: String| Rejection::new(90033, format!("attribute is invalid: {reason}"));
    let types = request.types.unwrap_or_default();
    if let Some(slot) = types.keys().find(|slot| !request.names.contains_key(*slot)) {
        return Err(invalid(format!(
            "AttrTypes names slot {slot:?}, which is not in AttrNames"
        )));
    }
    let mut data = shared.store.lock();
    let mut change = DataChange::default();
    for (key, name) in &request.names {
        let slot = key
            .parse::<u8>()
            .ok()
            .filter(|slot| *slot < MAX_ATTR_SLOTS)
            .ok_or_else(|| invalid(format!("slot {key:?} is not \"0\" to \"9\"")))?;
        if name.is_empty() || name.len() > MAX_VALUE_BYTES {
            return Err(invalid(format!(
                "the name in slot {slot} must be 1 to {MAX_VALUE_BYTES} bytes"
            )));
        }
        // An omitted type is 0 (the documented default), and a slot's type cannot change once
        // set: re-sending a RegistrationID slot without its AttrTypes is refused.
        let account_type = match types.get(key) {
            Some(&account_type @ (0 | 1)) => account_type,
            Some(other) => return Err(invalid(format!("account type {other} is not 0 or 1"))),
            None => 0,
        };
        if let Some(old) = data.attr_names.get(&slot) {
            if old.name == *name && old.account_type != account_type {
                return Err(invalid(format!(
                    "the account type of attribute {name:?} (slot {slot}) is {} and cannot be changed to {account_type}",
                    old.account_type
                )));
            }
        }
        change.attr_names.insert(
            slot,
            AttrSlot {
                name: name.clone(),
                account_type,
            },
        );
    }
    // Partial updates merge by slot (undocumented: `docs/api.md`); a name may own one slot.
    let mut after: BTreeMap<u8, &str> = data
        .attr_names
        .iter()
        .map(|(slot, registration)| (*slot, registration.name.as_str()))
        .collect();
    after.extend(
        change
            .attr_names
            .iter()
            .map(|(slot, r)| (*slot, r.name.as_str())),
    );
    let mut seen = BTreeSet::new();
    if let Some(duplicate) = after.values().find(|name| !seen.insert(**name)) {
        return Err(invalid(format!(
            "{duplicate:?} would be registered in two slots"
        )));
    }
    persist(shared, &mut data, change)?;
    Ok(Answer {
        body: ApiResponse::ok(),
        accounts: 0,
    })
}

fn json_response(status: StatusCode, body: &impl serde::Serialize) -> Response<Body> {
    let bytes = serde_json::to_vec(body).expect("emulator answers always serialise");
    let mut response = Response::new(Body::from(bytes));
    *response.status_mut() = status;
    response.headers_mut().insert(
        hyper::header::CONTENT_TYPE,
        hyper::header::HeaderValue::from_static("application/json"),
    );
    response
}
