//! Error classes of a REST call, so that the caller can decide what to retry and what a
//! failure proves about the server (`docs/api.md`, "Error codes").

use std::fmt;

/// The `v4/timpush/*` endpoints attrsync calls.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Endpoint {
    /// `v4/timpush/set_attr`: set (merge) user attributes.
    SetAttr,
    /// `v4/timpush/get_attr`: read user attributes.
    GetAttr,
    /// `v4/timpush/remove_attr`: delete named user attributes.
    RemoveAttr,
    /// `v4/timpush/get_attr_name`: read the app's attribute names.
    GetAttrName,
    /// `v4/timpush/set_attr_name`: register the app's attribute names.
    SetAttrName,
}

impl Endpoint {
    /// Every endpoint, in a stable order.
    pub const ALL: [Endpoint; 5] = [
        Endpoint::SetAttr,
        Endpoint::GetAttr,
        Endpoint::RemoveAttr,
        Endpoint::GetAttrName,
        Endpoint::SetAttrName,
    ];

    /// The command name, as in the URL (`set_attr`).
    pub fn name(self) -> &'static str {
        match self {
            Endpoint::SetAttr => "set_attr",
            Endpoint::GetAttr => "get_attr",
            Endpoint::RemoveAttr => "remove_attr",
            Endpoint::GetAttrName => "get_attr_name",
            Endpoint::SetAttrName => "set_attr_name",
        }
    }

    /// The URL path below the base URL (`v4/timpush/set_attr`).
    pub fn path(self) -> String {
        format!("v4/timpush/{}", self.name())
    }

    /// The endpoint whose command name is `name`.
    pub fn from_name(name: &str) -> Option<Self> {
        Self::ALL
            .into_iter()
            .find(|endpoint| endpoint.name() == name)
    }
}

impl serde::Serialize for Endpoint {
    /// As its command name (`set_attr`), which is also how reports and metrics label it.
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(self.name())
    }
}

impl fmt::Display for Endpoint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// The most users one call may carry (every timpush user API).
pub const MAX_USERS_PER_CALL: usize = crate::model::MAX_BATCH_SIZE;

/// Why a call failed, classified for the caller's retry policy and for what the failure says
/// about the server's state.
///
/// Messages start lower-case, say what failed and what to do, and never contain the URL, the
/// secret key or a UserSig (text from the server is scrubbed of both before it lands here).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ApiError {
    /// The call may succeed if repeated with the same payload: transport errors, timeouts,
    /// HTTP 5xx and 408, and the server's "busy / timeout" codes (60008, 60013, 60014, 91000).
    #[error("{endpoint} failed with a transient error ({reason}); retry with backoff")]
    Transient {
        /// The endpoint called.
        endpoint: Endpoint,
        /// The server's error code, if the failure came with one.
        code: Option<i64>,
        /// What happened, e.g. `request timed out after 30s` or `HTTP 502 Bad Gateway`.
        reason: String,
        /// Whether the server may have applied the call anyway (false only when the request
        /// provably never reached it, e.g. the connection was refused).
        maybe_applied: bool,
    },
    /// The server refused the call for its rate limit (60007, 60011, 60018, 60019, HTTP 429).
    #[error("{endpoint} was rate-limited by the server ({}); back off and retry, or lower rate_limit", rate_limit_said(*code, info))]
    RateLimited {
        /// The server's error code (none for HTTP 429).
        code: Option<i64>,
        /// The endpoint called.
        endpoint: Endpoint,
        /// The server's `ErrorInfo`, or the HTTP status.
        info: String,
    },
    /// The UserSig expired (70001): re-sign (`Client::renew_usersig`) and retry once.
    #[error("{endpoint} was refused because the UserSig expired (error 70001); sign a new UserSig and retry once, and check the system clock if it happens again")]
    UserSigExpired {
        /// The endpoint called.
        endpoint: Endpoint,
    },
    /// Retrying cannot help, and no other call will do better: configuration, permission or
    /// request errors. The run stops.
    #[error(
        "{endpoint} failed with error {code} ({meaning}{}): {check}",
        server_said(info)
    )]
    Fatal {
        /// The endpoint called.
        endpoint: Endpoint,
        /// The server's error code.
        code: i64,
        /// What the code means, from the documentation.
        meaning: &'static str,
        /// What to check or change.
        check: &'static str,
        /// The server's `ErrorInfo`, for support tickets.
        info: String,
    },
    /// The server refused the call with a code the documentation does not list: the call
    /// failed and is not retried, but other calls may still succeed.
    #[error("{endpoint} was refused with undocumented error code {code}{}; look the code up in the Tencent Cloud IM error code list", server_said(info))]
    Refused {
        /// The endpoint called.
        endpoint: Endpoint,
        /// The server's error code.
        code: i64,
        /// The server's `ErrorInfo`.
        info: String,
    },
    /// The call was not sent because it carries more users than the server accepts.
    #[error("{endpoint} was not sent: the batch has {users} users, the server accepts at most {MAX_USERS_PER_CALL}; this is a bug in attrsync's batching, please report it")]
    BatchTooLarge {
        /// The endpoint that would have been called.
        endpoint: Endpoint,
        /// The number of users in the batch.
        users: usize,
    },
    /// The answer was not a Tencent Cloud IM response (not the documented JSON, a redirect,
    /// an unexpected status, a body too large).
    #[error("{endpoint}: the endpoint did not answer like Tencent Cloud IM: {reason}; check that the endpoint or region points to the IM REST API")]
    UnexpectedResponse {
        /// The endpoint called.
        endpoint: Endpoint,
        /// What was wrong with the answer (status, content type, the first bytes of the body).
        reason: String,
        /// Whether whatever answered may have passed the call on to the server.
        maybe_applied: bool,
    },
}

impl ApiError {
    /// Whether repeating the same call (after a backoff) may succeed.
    ///
    /// [`ApiError::UserSigExpired`] is not retryable as is: renew the UserSig first.
    pub fn is_retryable(&self) -> bool {
        matches!(
            self,
            ApiError::Transient { .. } | ApiError::RateLimited { .. }
        )
    }

    /// Whether the run must stop: no other call can succeed either.
    pub fn stops_run(&self) -> bool {
        matches!(
            self,
            ApiError::Fatal { .. } | ApiError::BatchTooLarge { .. }
        )
    }

    /// Whether the server asked us to slow down (back off longer than for a transient error).
    pub fn is_rate_limited(&self) -> bool {
        matches!(self, ApiError::RateLimited { .. })
    }

    /// Whether a fresh UserSig may fix the call (70001).
    pub fn needs_new_usersig(&self) -> bool {
        matches!(self, ApiError::UserSigExpired { .. })
    }

    /// Whether the server may have applied the call although it failed: no answer, a cut-off
    /// answer, a 5xx, the server's own "internal error, retry", or an answer that is not the
    /// server's. `false` means the failure proves nothing was applied (the server refused the
    /// call, or the request never left this machine).
    pub fn may_have_applied(&self) -> bool {
        match self {
            ApiError::Transient { maybe_applied, .. }
            | ApiError::UnexpectedResponse { maybe_applied, .. } => *maybe_applied,
            ApiError::RateLimited { .. }
            | ApiError::UserSigExpired { .. }
            | ApiError::Fatal { .. }
            | ApiError::Refused { .. }
            | ApiError::BatchTooLarge { .. } => false,
        }
    }

    /// The server's error code, when the failure came with one.
    pub fn code(&self) -> Option<i64> {
        match self {
            ApiError::Transient { code, .. } | ApiError::RateLimited { code, .. } => *code,
            ApiError::Fatal { code, .. } | ApiError::Refused { code, .. } => Some(*code),
            ApiError::UserSigExpired { .. } => Some(70001),
            ApiError::BatchTooLarge { .. } | ApiError::UnexpectedResponse { .. } => None,
        }
    }

    /// The endpoint whose call failed.
    pub fn endpoint(&self) -> Endpoint {
        match self {
            ApiError::Transient { endpoint, .. }
            | ApiError::RateLimited { endpoint, .. }
            | ApiError::UserSigExpired { endpoint }
            | ApiError::Fatal { endpoint, .. }
            | ApiError::Refused { endpoint, .. }
            | ApiError::BatchTooLarge { endpoint, .. }
            | ApiError::UnexpectedResponse { endpoint, .. } => *endpoint,
        }
    }

    /// Classifies a non-zero `ErrorCode` from a response body (`docs/api.md`, "Error codes").
    ///
    /// `info` must already be scrubbed of secrets.
    pub fn from_code(endpoint: Endpoint, code: i64, info: String) -> Self {
        match code {
            60007 | 60011 | 60018 | 60019 => ApiError::RateLimited {
                endpoint,
                code: Some(code),
                info,
            },
            70001 => ApiError::UserSigExpired { endpoint },
            60008 | 60013 | 60014 | 91000 => ApiError::Transient {
                endpoint,
                code: Some(code),
                reason: format!("server error {code}: {}", describe(code).meaning),
                // "Internal error, please retry": nothing says the write did not happen.
                maybe_applied: true,
            },
            _ => match documented(code) {
                Some(CodeInfo { meaning, check }) => ApiError::Fatal {
                    endpoint,
                    code,
                    meaning,
                    check,
                    info,
                },
                None => ApiError::Refused {
                    endpoint,
                    code,
                    info,
                },
            },
        }
    }
}

fn rate_limit_said(code: Option<i64>, info: &str) -> String {
    match code {
        Some(code) if info.is_empty() => format!("error {code}"),
        Some(code) => format!("error {code}: {info}"),
        None => info.to_owned(),
    }
}

/// The server's `ErrorInfo` as a message suffix, when it says anything.
fn server_said(info: &str) -> String {
    if info.is_empty() {
        String::new()
    } else {
        format!("; the server said: {info}")
    }
}

/// What an error code means and what to check (`docs/api.md`, "Error codes").
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CodeInfo {
    /// What the code means.
    pub meaning: &'static str,
    /// What to check or do about it.
    pub check: &'static str,
}

/// Looks up an error code (public 60000–79999 or timpush-private 90000–91999).
pub fn describe(code: i64) -> CodeInfo {
    documented(code).unwrap_or(CodeInfo {
        meaning: "undocumented error code",
        check: "look the code up in the Tencent Cloud IM error code list",
    })
}

/// The documentation's entry for `code`, if it has one.
fn documented(code: i64) -> Option<CodeInfo> {
    let (meaning, check) = match code {
        60002 => ("the request URL could not be parsed", "this is a bug in attrsync's request building, please report it"),
        60003 => ("the request body is not valid JSON", "this is a bug in attrsync's request building, please report it"),
        60004 | 60005 => ("account or signature error in the request", "check identifier and the secret key; the identifier must be an App admin"),
        60006 => ("the SDKAppID is not valid", "check sdkappid in attrsync.yaml"),
        60007 => ("the REST API call rate exceeded the limit", "lower rate_limit"),
        60008 => ("the service timed out or the HTTP request was malformed", "retry; report it if it persists"),
        60009 => ("the requested resource does not exist", "check that the endpoint is the IM REST API root"),
        60010 => ("the request needs App admin rights", "set identifier to an App admin account (see the IM console)"),
        60011 => ("the SDKAppID's request rate exceeded the limit", "lower rate_limit or stop other tools calling the API"),
        60012 => ("the request carries no SDKAppID", "check sdkappid in attrsync.yaml"),
        60013 => ("the server could not parse its own response", "retry; report it if it persists"),
        60014 => ("the account exchange timed out", "retry; report it if it persists"),
        60015 => ("an account in the body is not a string", "this is a bug in attrsync's request building, please report it"),
        60016 => ("the SDKAppID is disabled", "check the application's status in the IM console"),
        60017 => ("the request is disabled", "check the application's status in the IM console"),
        60018 | 60019 => ("requests are too frequent", "back off and lower rate_limit"),
        60020 => ("the Pro plan has expired", "renew the plan in the IM console; it takes effect 5 minutes later"),
        60021 => ("the caller's IP address is not allowed", "add this machine's IP to the allow-list in the IM console"),
        70001 => ("the UserSig has expired", "sign a new UserSig and check the system clock"),
        70003 => ("the UserSig could not be parsed (truncated?)", "check that nothing between attrsync and the server rewrites the URL"),
        70009 => ("UserSig verification failed", "check that the secret key belongs to this SDKAppID"),
        70013 => ("the identifier does not match the UserSig's", "check identifier in attrsync.yaml"),
        70014 => ("the SDKAppID does not match the UserSig's", "check that sdkappid in attrsync.yaml is the app's SDKAppID"),
        70016 => ("no key exists for this SDKAppID in this data center", "check that the region (or endpoint) matches the app's data center"),
        70020 => ("the SDKAppID does not exist in this data center", "check sdkappid and that the region (or endpoint) matches the app's data center"),
        70050 => ("UserSig verification failed too often and is now throttled", "fix the secret key, then wait at least one minute before retrying"),
        70051 => ("the account is blacklisted", "use another App admin account"),
        70107 => ("the account has not been imported into IM", "import the account into IM, or remove it from the YAML"),
        90001 => ("the request body failed JSON parsing", "this is a bug in attrsync's request building, please report it"),
        90009 => ("the request needs App admin rights", "set identifier to an App admin account (see the IM console)"),
        90018 => ("the request carries too many accounts", "send at most 100 users per call (batch_size)"),
        90033 => ("an attribute is invalid", "check that every attribute name is registered on the app (attrsync attributes push) and every value is at most 50 bytes"),
        90035 => ("an attribute can only apply to one account type", "check the attribute's account type (UserID or RegistrationID) in the IM console"),
        91000 => ("internal service error", "retry; report it if it persists"),
        _ => return None,
    };
    Some(CodeInfo { meaning, check })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_fall_into_the_documented_classes() {
        let class = |code| ApiError::from_code(Endpoint::SetAttr, code, String::new());
        for code in [60007, 60011, 60018, 60019] {
            assert!(class(code).is_rate_limited(), "{code}");
            assert!(class(code).is_retryable(), "{code}");
        }
        for code in [60008, 60013, 60014, 91000] {
            assert!(matches!(class(code), ApiError::Transient { code: Some(c), .. } if c == code));
        }
        assert!(class(70001).needs_new_usersig());
        assert!(!class(70001).is_retryable());
        for code in [
            60002, 60003, 60004, 60005, 60006, 60009, 60010, 60012, 60015, 60016, 60017, 60020,
            60021, 70003, 70009, 70013, 70014, 70016, 70020, 70050, 70051, 90001, 90009, 90018,
            90033,
        ] {
            assert!(matches!(class(code), ApiError::Fatal { .. }), "{code}");
            assert!(!class(code).is_retryable(), "{code}");
            assert!(class(code).stops_run(), "{code}");
            assert!(!class(code).may_have_applied(), "{code}");
        }
        // An undocumented code (negative ones included) fails the call, not the run.
        for code in [12345, -1] {
            assert!(matches!(class(code), ApiError::Refused { .. }), "{code}");
            assert!(
                !class(code).stops_run() && !class(code).is_retryable(),
                "{code}"
            );
        }
        // "Internal error, please retry" may have applied the write; a rate limit did not.
        assert!(class(91000).may_have_applied());
        assert!(!class(60007).may_have_applied());
    }

    #[test]
    fn fatal_messages_say_what_to_check() {
        let err = ApiError::from_code(Endpoint::SetAttr, 70009, String::new());
        assert_eq!(
            err.to_string(),
            "set_attr failed with error 70009 (UserSig verification failed): check that the secret key belongs to this SDKAppID"
        );
        let err = ApiError::from_code(
            Endpoint::SetAttr,
            90033,
            "\"mood\" is not registered".into(),
        );
        assert_eq!(
            err.to_string(),
            "set_attr failed with error 90033 (an attribute is invalid; the server said: \"mood\" is not registered): check that every attribute name is registered on the app (attrsync attributes push) and every value is at most 50 bytes"
        );
    }

    #[test]
    fn endpoint_names_round_trip() {
        for endpoint in Endpoint::ALL {
            assert_eq!(Endpoint::from_name(endpoint.name()), Some(endpoint));
        }
        assert_eq!(Endpoint::SetAttr.path(), "v4/timpush/set_attr");
    }
}
