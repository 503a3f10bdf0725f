//! The REST client: one HTTP attempt per method call, signed, rate-limited and classified.

use reqwest::Url;
use serde::Serialize;
use std::collections::BTreeMap;
use std::fmt;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use super::error::{ApiError, Endpoint, MAX_USERS_PER_CALL};
use super::limiter::{RateLimiter, MAX_RATE};
use super::secret::{scrub, SecretKey, UserSig};
use super::usersig;
use super::wire::{
    decode_response, BatchOutcome, GetAttrOutcome, GetAttrRequest, RemoveAttrRequest, Response,
    SetAttrNameRequest, SetAttrRequest, UserAttrNames, UserAttrs,
};

/// Lifetime of the admin UserSig the client signs (the docs recommend at least 24 h).
pub const USERSIG_LIFETIME: Duration = Duration::from_secs(24 * 60 * 60);

/// How long before expiry the cached UserSig is replaced, so no call goes out with a UserSig
/// that expires in flight.
pub const USERSIG_RENEW_BEFORE: Duration = Duration::from_secs(5 * 60);

/// Default time allowed to establish a connection.
pub const DEFAULT_CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// Default time allowed for a whole call (connect, send, answer).
pub const DEFAULT_REQUEST_TIMEOUT: Duration = Duration::from_secs(30);

/// Idle keep-alive connections are kept this long for reuse: shorter than the idle timeouts
/// of common servers and load balancers (60 s and more), so a write is not sent on a
/// connection the other end is closing; such a write fails with no answer, and its users would
/// be in doubt for nothing.
const POOL_IDLE_TIMEOUT: Duration = Duration::from_secs(30);

/// The largest answer read. Real ones are a few kilobytes (100 users × 10 attributes); a larger
/// body is not the server's, and reading it whole could exhaust memory.
pub const MAX_RESPONSE_BYTES: usize = 4 * 1024 * 1024;

/// How much of an unexpected body an error message quotes.
const QUOTED_BODY_BYTES: usize = 120;

/// One registered attribute name and the account type it applies to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AttrSlot {
    /// The attribute's name.
    pub name: String,
    /// 0: the IM UserID; 1: the push RegistrationID. Fixed once set (`docs/api.md`).
    pub account_type: u8,
}

/// Everything a [`Client`] needs to talk to one application.
#[derive(Debug, Clone)]
pub struct ClientConfig {
    /// Root of the REST API, e.g. `https://adminapisgp.im.qcloud.com` or `http://127.0.0.1:8080`.
    pub base_url: String,
    /// The application's SDKAppID.
    pub sdkappid: u64,
    /// An App admin account; every call is made as this identifier.
    pub identifier: String,
    /// The application's secret key (signs the UserSig).
    pub secret_key: SecretKey,
    /// Calls per second, `1..=100`, shared by all calls of the client.
    pub rate_limit: u32,
    /// Time allowed to establish a connection.
    pub connect_timeout: Duration,
    /// Time allowed for a whole call.
    pub request_timeout: Duration,
}

impl ClientConfig {
    /// A config with the documented rate limit (100/s) and the default timeouts (5 s / 30 s).
    pub fn new(
        base_url: impl Into<String>,
        sdkappid: u64,
        identifier: impl Into<String>,
        secret_key: SecretKey,
    ) -> Self {
        Self {
            base_url: base_url.into(),
            sdkappid,
            identifier: identifier.into(),
            secret_key,
            rate_limit: MAX_RATE,
            connect_timeout: DEFAULT_CONNECT_TIMEOUT,
            request_timeout: DEFAULT_REQUEST_TIMEOUT,
        }
    }
}

/// Why a [`Client`] could not be built from its config.
#[derive(Debug, thiserror::Error)]
pub enum ClientBuildError {
    /// `base_url` is not an http(s) URL.
    #[error("the API base URL {base_url:?} is not valid ({reason}); use e.g. https://adminapisgp.im.qcloud.com or http://127.0.0.1:8080")]
    InvalidBaseUrl {
        /// The URL as configured.
        base_url: String,
        /// What is wrong with it.
        reason: String,
    },
    /// `rate_limit` is outside `1..=100`.
    #[error("rate_limit {0} is out of range; use 1 to 100 calls per second")]
    InvalidRateLimit(u32),
    /// The secret key is empty.
    #[error("the secret key is empty; set the environment variable named by secret_key_env")]
    EmptySecretKey,
    /// The HTTP stack could not be initialised (e.g. no TLS roots).
    #[error("could not set up the HTTP client: {0}")]
    Http(String),
}

/// The Tencent Cloud IM client for the `v4/timpush/*` attribute APIs.
///
/// Cheap to clone: clones share one connection pool, one UserSig cache and one rate limiter.
/// Every method makes exactly one HTTP attempt after waiting for the limiter; retry policy
/// belongs to the caller, guided by [`ApiError::is_retryable`].
#[derive(Clone)]
pub struct Client {
    inner: Arc<Inner>,
}

struct Inner {
    http: reqwest::Client,
    base_url: Url,
    sdkappid: u64,
    identifier: String,
    secret_key: SecretKey,
    request_timeout: Duration,
    limiter: RateLimiter,
    usersig: Mutex<Option<CachedUserSig>>,
}

struct CachedUserSig {
    usersig: UserSig,
    /// Unix seconds.
    expires_at: u64,
}

impl fmt::Debug for Client {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Client")
            .field("base_url", &self.inner.base_url.as_str())
            .field("sdkappid", &self.inner.sdkappid)
            .field("identifier", &self.inner.identifier)
            .field("rate_limit", &self.inner.limiter.rate())
            .finish_non_exhaustive()
    }
}

impl Client {
    /// Builds a client; fails on a bad base URL, rate limit or empty key.
    pub fn new(config: ClientConfig) -> Result<Self, ClientBuildError> {
        let base_url = parse_base_url(&config.base_url)?;
        if !(1..=MAX_RATE).contains(&config.rate_limit) {
            return Err(ClientBuildError::InvalidRateLimit(config.rate_limit));
        }
        if config.secret_key.is_empty() {
            return Err(ClientBuildError::EmptySecretKey);
        }
        let http = reqwest::Client::builder()
            .user_agent(concat!("attrsync/", env!("CARGO_PKG_VERSION")))
            .connect_timeout(config.connect_timeout)
            .timeout(config.request_timeout)
            .pool_idle_timeout(POOL_IDLE_TIMEOUT)
            .tcp_keepalive(Duration::from_secs(60))
            // A redirect would carry the admin UserSig in its query string to wherever it
            // points, and turn the POST into a GET whose answer means nothing.
            .redirect(reqwest::redirect::Policy::none())
            .build()
            .map_err(|err| ClientBuildError::Http(err.without_url().to_string()))?;
        Ok(Self {
            inner: Arc::new(Inner {
                http,
                base_url,
                sdkappid: config.sdkappid,
                identifier: config.identifier,
                secret_key: config.secret_key,
                request_timeout: config.request_timeout,
                limiter: RateLimiter::new(config.rate_limit),
                usersig: Mutex::new(None),
            }),
        })
    }

    /// Sets (merges) the given attributes of up to 100 users.
    ///
    /// `Ok` with a non-empty [`BatchOutcome::errors`] is a partial success: every user not listed
    /// was accepted. An empty slice returns `Ok` without a call.
    pub async fn set_attr(&self, users: &[UserAttrs]) -> Result<BatchOutcome, ApiError> {
        let endpoint = Endpoint::SetAttr;
        if users.is_empty() {
            return Ok(BatchOutcome::default());
        }
        check_batch(endpoint, users.len())?;
        let request = SetAttrRequest {
            users: users.to_vec(),
        };
        let response = self.call(endpoint, &request, users.len()).await?;
        Ok(BatchOutcome {
            errors: response.error_list.unwrap_or_default(),
        })
    }

    /// Deletes the named attributes of up to 100 users; partial success as for `set_attr`.
    pub async fn remove_attr(&self, users: &[UserAttrNames]) -> Result<BatchOutcome, ApiError> {
        let endpoint = Endpoint::RemoveAttr;
        if users.is_empty() {
            return Ok(BatchOutcome::default());
        }
        check_batch(endpoint, users.len())?;
        let request = RemoveAttrRequest {
            users: users.to_vec(),
        };
        let response = self.call(endpoint, &request, users.len()).await?;
        Ok(BatchOutcome {
            errors: response.error_list.unwrap_or_default(),
        })
    }

    /// Reads the attributes of up to 100 users (a user without attributes maps to `{}`).
    pub async fn get_attr(&self, accounts: &[String]) -> Result<GetAttrOutcome, ApiError> {
        let endpoint = Endpoint::GetAttr;
        if accounts.is_empty() {
            return Ok(GetAttrOutcome::default());
        }
        check_batch(endpoint, accounts.len())?;
        let request = GetAttrRequest {
            accounts: accounts.to_vec(),
        };
        let response = self.call(endpoint, &request, accounts.len()).await?;
        Ok(get_attr_outcome(accounts, response))
    }

    /// Reads the app's attribute names: slot (0..=9) → name and account type (0 when the
    /// answer has no `AttrTypes`, the documented default).
    pub async fn get_attr_name(&self) -> Result<BTreeMap<u8, AttrSlot>, ApiError> {
        let endpoint = Endpoint::GetAttrName;
        // The body must never be empty: the docs ask for `{}` when there is nothing to say.
        let response = self.call(endpoint, &serde_json::Map::new(), 0).await?;
        let types = response.attr_types.unwrap_or_default();
        response
            .attr_names
            .unwrap_or_default()
            .into_iter()
            .map(|(key, name)| match key.parse::<u8>() {
                Ok(slot) => Ok((
                    slot,
                    AttrSlot {
                        name,
                        account_type: types.get(&key).copied().unwrap_or(0),
                    },
                )),
                Err(_) => Err(ApiError::UnexpectedResponse {
                    endpoint,
                    reason: format!("attribute slot {key:?} is not a number"),
                    maybe_applied: false,
                }),
            })
            .collect()
    }

    /// Registers attribute names: slot (0..=9) → name and account type. Every slot is sent
    /// with its `AttrTypes` entry: an omitted type defaults to 0 and cannot be changed once
    /// set, so re-sending a registered slot without its type could try to change it.
    pub async fn set_attr_name(&self, slots: &BTreeMap<u8, AttrSlot>) -> Result<(), ApiError> {
        let request = SetAttrNameRequest {
            names: slots
                .iter()
                .map(|(slot, attr)| (slot.to_string(), attr.name.clone()))
                .collect(),
            types: Some(
                slots
                    .iter()
                    .map(|(slot, attr)| (slot.to_string(), attr.account_type))
                    .collect(),
            ),
        };
        self.call(Endpoint::SetAttrName, &request, 0).await?;
        Ok(())
    }

    /// Replaces the cached UserSig with a freshly signed one (after a 70001 answer).
    pub fn renew_usersig(&self) {
        let mut cache = self.lock_usersig();
        *cache = Some(self.sign_now());
    }

    /// Calls per second this client allows itself.
    pub fn rate_limit(&self) -> u32 {
        self.inner.limiter.rate()
    }

    /// One attempt: wait for the limiter, sign, send, classify.
    async fn call(
        &self,
        endpoint: Endpoint,
        body: &impl Serialize,
        users: usize,
    ) -> Result<Response, ApiError> {
        self.inner.limiter.acquire().await;
        let usersig = self.current_usersig();
        // A fresh random per attempt: the server documents it as identifying the request.
        let random = fastrand::u32(..);
        let mut url = self
            .inner
            .base_url
            .join(&endpoint.path())
            .expect("a fixed relative path joins any http(s) base URL");
        url.query_pairs_mut()
            .append_pair("sdkappid", &self.inner.sdkappid.to_string())
            .append_pair("identifier", &self.inner.identifier)
            .append_pair("usersig", usersig.expose())
            .append_pair("random", &random.to_string())
            .append_pair("contenttype", "json");

        let started = tokio::time::Instant::now();
        tracing::debug!(%endpoint, random, users, "calling the IM REST API");
        let result = self.send(endpoint, url, body, &usersig).await;
        let elapsed_ms = started.elapsed().as_millis() as u64;
        match &result {
            Ok(_) => tracing::debug!(%endpoint, random, elapsed_ms, "call succeeded"),
            Err(error) => {
                tracing::debug!(%endpoint, random, elapsed_ms, code = error.code(), %error, "call failed")
            }
        }
        result
    }

    async fn send(
        &self,
        endpoint: Endpoint,
        url: Url,
        body: &impl Serialize,
        usersig: &UserSig,
    ) -> Result<Response, ApiError> {
        let mut answer = self
            .inner
            .http
            .post(url)
            .json(body)
            .send()
            .await
            .map_err(|err| self.transport_error(endpoint, err, usersig))?;
        let status = answer.status();
        let content_type = answer
            .headers()
            .get(reqwest::header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("none")
            .to_owned();
        let unexpected = |reason: String, maybe_applied: bool| ApiError::UnexpectedResponse {
            endpoint,
            reason: self.scrub(&reason, usersig),
            maybe_applied,
        };
        if status.is_redirection() {
            let location = answer
                .headers()
                .get(reqwest::header::LOCATION)
                .map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned())
                .unwrap_or_else(|| "nowhere".to_owned());
            return Err(unexpected(
                format!(
                    "HTTP {status}, redirecting to {location}; attrsync never follows redirects                      (they would carry the admin UserSig elsewhere): set endpoint to the API's own URL"
                ),
                true,
            ));
        }
        if answer
            .content_length()
            .is_some_and(|len| len > MAX_RESPONSE_BYTES as u64)
        {
            return Err(unexpected(
                format!("HTTP {status} with a body over {MAX_RESPONSE_BYTES} bytes"),
                true,
            ));
        }
        let mut bytes = Vec::new();
        while let Some(chunk) = answer
            .chunk()
            .await
            .map_err(|err| self.transport_error(endpoint, err, usersig))?
        {
            if bytes.len() + chunk.len() > MAX_RESPONSE_BYTES {
                return Err(unexpected(
                    format!("HTTP {status} with a body over {MAX_RESPONSE_BYTES} bytes"),
                    true,
                ));
            }
            bytes.extend_from_slice(&chunk);
        }
        read_answer(endpoint, status, &content_type, &bytes, &|text| {
            self.scrub(text, usersig)
        })
    }

    /// A transport failure, classified: a connection that was never made proves the call
    /// was not applied; anything later (a timeout, a cut-off answer) does not.
    fn transport_error(
        &self,
        endpoint: Endpoint,
        err: reqwest::Error,
        usersig: &UserSig,
    ) -> ApiError {
        let maybe_applied = !err.is_connect();
        ApiError::Transient {
            endpoint,
            code: None,
            reason: self.describe_transport_error(err, usersig),
            maybe_applied,
        }
    }

    /// A transport error as text without the URL (it carries the UserSig) and without secrets.
    fn describe_transport_error(&self, err: reqwest::Error, usersig: &UserSig) -> String {
        let summary = if err.is_timeout() {
            format!(
                "no answer within {}",
                humantime::format_duration(self.inner.request_timeout)
            )
        } else if err.is_connect() {
            "could not connect".to_owned()
        } else if err.is_body() || err.is_decode() {
            "the answer was cut off".to_owned()
        } else {
            "the request failed".to_owned()
        };
        let err = err.without_url();
        let mut chain = Vec::new();
        let mut source: Option<&dyn std::error::Error> = std::error::Error::source(&err);
        while let Some(cause) = source {
            chain.push(cause.to_string());
            source = cause.source();
        }
        let text = if chain.is_empty() {
            format!("{summary}: {err}")
        } else {
            format!("{summary}: {}", chain.join(": "))
        };
        self.scrub(&text, usersig)
    }

    fn scrub(&self, text: &str, usersig: &UserSig) -> String {
        scrub(text, &[usersig.expose(), self.inner.secret_key.expose()])
    }

    /// The cached UserSig, re-signed when less than [`USERSIG_RENEW_BEFORE`] remains.
    fn current_usersig(&self) -> UserSig {
        let mut cache = self.lock_usersig();
        let now = crate::clock::unix_seconds();
        match cache.as_ref() {
            Some(cached) if now + USERSIG_RENEW_BEFORE.as_secs() < cached.expires_at => {
                cached.usersig.clone()
            }
            _ => {
                let fresh = self.sign_now();
                let usersig = fresh.usersig.clone();
                *cache = Some(fresh);
                usersig
            }
        }
    }

    fn sign_now(&self) -> CachedUserSig {
        let now = crate::clock::unix_seconds();
        let lifetime = USERSIG_LIFETIME.as_secs();
        CachedUserSig {
            usersig: UserSig::new(usersig::sign(
                self.inner.sdkappid,
                &self.inner.identifier,
                &self.inner.secret_key,
                now,
                lifetime,
            )),
            expires_at: now + lifetime,
        }
    }

    fn lock_usersig(&self) -> std::sync::MutexGuard<'_, Option<CachedUserSig>> {
        // The cache is replaced whole, never half-written.
        crate::sync::lock(&self.inner.usersig)
    }
}

/// Reads one answer of `endpoint` that arrived whole (redirects and oversized bodies are the
/// transport's to refuse): a 5xx or 408 is transient, a 429 rate-limited, any other non-200 or
/// a body that is not the API's envelope is unexpected, and a documented failure becomes its
/// [`ApiError`] class. `scrub` removes secrets from any text of the answer that is kept.
pub(crate) fn read_answer(
    endpoint: Endpoint,
    status: reqwest::StatusCode,
    content_type: &str,
    bytes: &[u8],
    scrub: &dyn Fn(&str) -> String,
) -> Result<Response, ApiError> {
    let unexpected = |reason: String, maybe_applied: bool| ApiError::UnexpectedResponse {
        endpoint,
        reason: scrub(&reason),
        maybe_applied,
    };
    let quote = || quote_body(bytes);
    // 501 and 505 say that whatever answered does not speak this API at all (a static file
    // server answers a POST with 501): retrying cannot help.
    let not_this_api = [
        reqwest::StatusCode::NOT_IMPLEMENTED,
        reqwest::StatusCode::HTTP_VERSION_NOT_SUPPORTED,
    ]
    .contains(&status);
    if (status.is_server_error() && !not_this_api) || status == reqwest::StatusCode::REQUEST_TIMEOUT
    {
        return Err(ApiError::Transient {
            endpoint,
            code: None,
            reason: format!("HTTP {status}"),
            maybe_applied: true,
        });
    }
    if status == reqwest::StatusCode::TOO_MANY_REQUESTS {
        return Err(ApiError::RateLimited {
            endpoint,
            code: None,
            info: format!("HTTP {status}"),
        });
    }
    if status != reqwest::StatusCode::OK {
        // A 4xx is an answer from something that did not pass the call on.
        return Err(unexpected(
            format!(
                "HTTP {status}, content type {content_type}, body starts: {}",
                quote()
            ),
            !status.is_client_error(),
        ));
    }
    let mut response = decode_response(bytes).map_err(|why| {
        unexpected(
            format!(
                "{}: HTTP {status}, content type {content_type}, body starts: {}",
                why.0,
                quote()
            ),
            true,
        )
    })?;
    if response.is_ok() {
        for error in response.error_list.iter_mut().flatten() {
            error.info = scrub(&error.info);
        }
        return Ok(response);
    }
    if response.error_code == 0 {
        return Err(unexpected(
            format!("ActionStatus {:?} with ErrorCode 0", response.action_status),
            true,
        ));
    }
    Err(ApiError::from_code(
        endpoint,
        response.error_code,
        scrub(&response.error_info),
    ))
}

/// What a `get_attr` answer says of each user asked about: its attributes, or an error. A user
/// answered twice, or not mentioned at all, is an error, never a user without attributes; an
/// error wins over attributes answered for the same user.
pub(crate) fn get_attr_outcome(accounts: &[String], response: Response) -> GetAttrOutcome {
    let mut errors = response.error_list.unwrap_or_default();
    let mut attrs: BTreeMap<String, BTreeMap<String, String>> = BTreeMap::new();
    for user in response.user_attrs.unwrap_or_default() {
        match attrs.entry(user.account) {
            std::collections::btree_map::Entry::Vacant(slot) => {
                slot.insert(user.attrs);
            }
            std::collections::btree_map::Entry::Occupied(slot) => {
                errors.push(super::UserError {
                    account: slot.key().clone(),
                    code: None,
                    info: "the server answered this user twice".to_owned(),
                });
            }
        }
    }
    for account in accounts {
        if !attrs.contains_key(account) && !errors.iter().any(|e| &e.account == account) {
            errors.push(super::UserError {
                account: account.clone(),
                code: None,
                info: "the server's answer did not mention this user".to_owned(),
            });
        }
    }
    attrs.retain(|account, _| !errors.iter().any(|e| &e.account == account));
    GetAttrOutcome { attrs, errors }
}

/// The first bytes of a body, printable, for an error message.
fn quote_body(bytes: &[u8]) -> String {
    if bytes.is_empty() {
        return "(empty)".to_owned();
    }
    let text = String::from_utf8_lossy(&bytes[..bytes.len().min(QUOTED_BODY_BYTES)]);
    let text: String = text
        .chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .collect();
    if bytes.len() > QUOTED_BODY_BYTES {
        format!("`{}…`", text.trim_end())
    } else {
        format!("`{}`", text.trim_end())
    }
}

fn check_batch(endpoint: Endpoint, users: usize) -> Result<(), ApiError> {
    if users > MAX_USERS_PER_CALL {
        return Err(ApiError::BatchTooLarge { endpoint, users });
    }
    Ok(())
}

fn parse_base_url(base_url: &str) -> Result<Url, ClientBuildError> {
    let invalid = |reason: &str| ClientBuildError::InvalidBaseUrl {
        base_url: base_url.to_owned(),
        reason: reason.to_owned(),
    };
    let mut url = Url::parse(base_url).map_err(|err| invalid(&err.to_string()))?;
    if !matches!(url.scheme(), "http" | "https") {
        return Err(invalid("the scheme must be http or https"));
    }
    if url.query().is_some() || url.fragment().is_some() {
        return Err(invalid("it must not have a query or fragment"));
    }
    // Every call carries the admin UserSig in its query string.
    if !crate::model::endpoint_is_safe(url.as_str()) {
        return Err(invalid(
            "plain http:// would send the admin UserSig in clear to another machine; use https:// (http:// is only for loopback)",
        ));
    }
    // `join` replaces the last path segment unless the path ends in a slash.
    if !url.path().ends_with('/') {
        let path = format!("{}/", url.path());
        url.set_path(&path);
    }
    Ok(url)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn base_urls_get_a_trailing_slash_so_paths_append() {
        let url = parse_base_url("http://127.0.0.1:8080/prefix").unwrap();
        assert_eq!(
            url.join("v4/timpush/set_attr").unwrap().as_str(),
            "http://127.0.0.1:8080/prefix/v4/timpush/set_attr"
        );
        let url = parse_base_url("https://adminapisgp.im.qcloud.com").unwrap();
        assert_eq!(
            url.join("v4/timpush/get_attr").unwrap().as_str(),
            "https://adminapisgp.im.qcloud.com/v4/timpush/get_attr"
        );
        assert!(parse_base_url("ftp://example.com").is_err());
        assert!(parse_base_url("adminapisgp.im.qcloud.com").is_err());
    }

    #[test]
    fn the_usersig_is_cached_and_renewed_on_demand() {
        let config = ClientConfig::new(
            "http://127.0.0.1:1",
            1_400_000_000,
            "admin",
            SecretKey::new("k"),
        );
        let client = Client::new(config).unwrap();
        let first = client.current_usersig();
        assert_eq!(client.current_usersig(), first);
        let expires_at = client.lock_usersig().as_ref().unwrap().expires_at;
        assert!(expires_at >= crate::clock::unix_seconds() + USERSIG_LIFETIME.as_secs() - 1);
        // A cache close to expiry is replaced on the next call.
        client.lock_usersig().as_mut().unwrap().expires_at = crate::clock::unix_seconds() + 60;
        client.current_usersig();
        assert!(
            client.lock_usersig().as_ref().unwrap().expires_at
                > crate::clock::unix_seconds() + 3600
        );
        client.renew_usersig();
        assert!(usersig::verify(
            client.current_usersig().expose(),
            1_400_000_000,
            "admin",
            &SecretKey::new("k"),
            crate::clock::unix_seconds()
        )
        .is_ok());
    }

    #[test]
    fn config_and_client_debug_output_hides_the_key() {
        let config = ClientConfig::new(
            "http://127.0.0.1:1",
            1,
            "admin",
            SecretKey::new("topsecret"),
        );
        let client = Client::new(config.clone()).unwrap();
        for text in [format!("{config:?}"), format!("{client:?}")] {
            assert!(!text.contains("topsecret"), "{text}");
        }
    }
}
