//! The emulator called in-process, without HTTP: an [`AttrApi`] whose calls go through the
//! same rate limit, fault injection, UserSig check and endpoints as the HTTP server, and whose
//! answers are read by the client's own classification. For tests on paused tokio time, where
//! real sockets and timeouts would race the paused clock.

use std::sync::{Arc, Mutex};

use futures_util::future::BoxFuture;
use reqwest::{StatusCode, Url};
use serde::Serialize;

use super::service::{exchange, Exchange, Shared, API_PREFIX, BAD_GATEWAY_BODY};
use super::{Faults, StateReport};
use crate::api::secret::scrub;
use crate::api::wire::{GetAttrRequest, RemoveAttrRequest, Response, SetAttrRequest};
use crate::api::{
    get_attr_outcome, read_answer, usersig, ApiError, AttrApi, BatchOutcome, Endpoint,
    GetAttrOutcome, RateLimiter, UserAttrNames, UserAttrs, UserSig, USERSIG_LIFETIME,
};

/// An [`AttrApi`] on an emulator in this process; see [`super::Emulator::in_process`].
#[derive(Debug)]
pub struct InProcess {
    shared: Arc<Shared>,
    identifier: String,
    limiter: RateLimiter,
    usersig: Mutex<UserSig>,
}

impl InProcess {
    pub(super) fn new(shared: Arc<Shared>, identifier: &str, rate_limit: u32) -> Self {
        let usersig = Mutex::new(sign(&shared, identifier));
        Self {
            shared,
            identifier: identifier.to_owned(),
            limiter: RateLimiter::new(rate_limit),
            usersig,
        }
    }

    /// The emulator's state document, as `GET /_emulator/state` gives it.
    pub fn state(&self) -> StateReport {
        self.shared.report()
    }

    /// Changes fault injection from now on.
    pub fn set_faults(&self, faults: Faults) {
        self.shared.set_faults(faults);
    }

    /// One attempt, as [`crate::api::Client`] makes it: wait for the limiter, sign, send,
    /// classify the answer.
    async fn call(&self, endpoint: Endpoint, body: &impl Serialize) -> Result<Response, ApiError> {
        self.limiter.acquire().await;
        let usersig = crate::sync::lock(&self.usersig).clone();
        let key = &self.shared.settings.secret_key;
        let scrub = |text: &str| scrub(text, &[usersig.expose(), key.expose()]);
        let mut url = Url::parse("http://in-process/").expect("a fixed URL parses");
        url.set_path(&format!("{API_PREFIX}{}", endpoint.name()));
        url.query_pairs_mut()
            .append_pair("sdkappid", &self.shared.settings.sdkappid.to_string())
            .append_pair("identifier", &self.identifier)
            .append_pair("usersig", usersig.expose())
            .append_pair("random", &fastrand::u32(..).to_string())
            .append_pair("contenttype", "json");
        let uri: hyper::Uri = url
            .as_str()
            .parse()
            .expect("a URL built by `Url` is a valid URI");
        let body = serde_json::to_vec(body).map_err(|err| ApiError::UnexpectedResponse {
            endpoint,
            reason: format!("the request could not be encoded: {err}"),
            maybe_applied: false,
        })?;
        let arrived = tokio::time::Instant::now();
        match exchange(&self.shared, endpoint, arrived, &uri, Ok(&body)).await {
            Exchange::Answer(answer) => {
                let bytes = serde_json::to_vec(&answer).unwrap_or_default();
                read_answer(endpoint, StatusCode::OK, "application/json", &bytes, &scrub)
            }
            Exchange::BadGateway => read_answer(
                endpoint,
                StatusCode::BAD_GATEWAY,
                "text/html",
                BAD_GATEWAY_BODY.as_bytes(),
                &scrub,
            ),
            Exchange::Dropped => Err(ApiError::Transient {
                endpoint,
                code: None,
                reason: "the answer was cut off: the connection closed".to_owned(),
                maybe_applied: true,
            }),
        }
    }
}

fn sign(shared: &Shared, identifier: &str) -> UserSig {
    UserSig::new(usersig::sign(
        shared.settings.sdkappid,
        identifier,
        &shared.settings.secret_key,
        crate::clock::unix_seconds(),
        USERSIG_LIFETIME.as_secs(),
    ))
}

impl InProcess {
    /// One `set_attr` or `remove_attr` call: users listed in the answer's `ErrorList` were
    /// refused, the others accepted.
    async fn batch(
        &self,
        endpoint: Endpoint,
        request: &impl Serialize,
    ) -> Result<BatchOutcome, ApiError> {
        let response = self.call(endpoint, request).await?;
        Ok(BatchOutcome {
            errors: response.error_list.unwrap_or_default(),
        })
    }
}

impl AttrApi for InProcess {
    fn set_attr<'a>(
        &'a self,
        users: &'a [UserAttrs],
    ) -> BoxFuture<'a, Result<BatchOutcome, ApiError>> {
        let request = SetAttrRequest {
            users: users.to_vec(),
        };
        Box::pin(async move { self.batch(Endpoint::SetAttr, &request).await })
    }

    fn remove_attr<'a>(
        &'a self,
        users: &'a [UserAttrNames],
    ) -> BoxFuture<'a, Result<BatchOutcome, ApiError>> {
        let request = RemoveAttrRequest {
            users: users.to_vec(),
        };
        Box::pin(async move { self.batch(Endpoint::RemoveAttr, &request).await })
    }

    fn get_attr<'a>(
        &'a self,
        accounts: &'a [String],
    ) -> BoxFuture<'a, Result<GetAttrOutcome, ApiError>> {
        Box::pin(async move {
            let request = GetAttrRequest {
                accounts: accounts.to_vec(),
            };
            let response = self.call(Endpoint::GetAttr, &request).await?;
            Ok(get_attr_outcome(accounts, response))
        })
    }

    fn renew_usersig(&self) {
        *crate::sync::lock(&self.usersig) = sign(&self.shared, &self.identifier);
    }
}
