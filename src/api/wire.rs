//! The JSON shapes of the `v4/timpush/*` attribute APIs, shared by the client and the emulator.
//!
//! Field names follow the documentation (`To_Account`, `Attrs`, `ErrorList`). Responses are
//! decoded leniently: unknown fields are ignored (the server may add fields, REFERENCE.md §1.1)
//! and optional ones default.

use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// `ActionStatus` of a successful call.
pub const ACTION_OK: &str = "OK";
/// `ActionStatus` of a failed call.
pub const ACTION_FAIL: &str = "FAIL";

/// One user's attributes to set: `{"To_Account": "Mary", "Attrs": {"sex": "female"}}`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct UserAttrs {
    /// The user id (UserID or push RegistrationID).
    #[serde(rename = "To_Account")]
    pub account: String,
    /// Attribute name → value.
    #[serde(rename = "Attrs", default)]
    pub attrs: BTreeMap<String, String>,
}

/// One user's attribute names to delete: `{"To_Account": "Mary", "Attrs": ["sex"]}`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct UserAttrNames {
    /// The user id.
    #[serde(rename = "To_Account")]
    pub account: String,
    /// Names of the attributes to delete.
    #[serde(rename = "Attrs", default)]
    pub names: Vec<String>,
}

/// One entry of a response's `ErrorList`: the call succeeded, but not for this user.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct UserError {
    /// The user the server refused.
    #[serde(rename = "To_Account")]
    pub account: String,
    /// The server's code, e.g. 70107 (account not imported) or 90035.
    #[serde(rename = "ErrorCode")]
    pub code: u32,
    /// The server's text; may be empty.
    #[serde(rename = "ErrorInfo", default)]
    pub info: String,
}

/// What `set_attr` / `remove_attr` accepted: everything except the users in `errors`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct BatchOutcome {
    /// Users the server refused (a partial success when not empty).
    pub errors: Vec<UserError>,
}

impl BatchOutcome {
    /// Whether every user of the batch was accepted.
    pub fn is_complete(&self) -> bool {
        self.errors.is_empty()
    }

    /// Whether the server refused `account`.
    pub fn refused(&self, account: &str) -> bool {
        self.errors.iter().any(|error| error.account == account)
    }
}

/// What `get_attr` returned.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct GetAttrOutcome {
    /// Account → its attributes (empty for a user without any), keyed by `To_Account` because
    /// the server does not keep the request's order.
    pub attrs: BTreeMap<String, BTreeMap<String, String>>,
    /// Users the server could not read, e.g. 70107 (account not imported).
    pub errors: Vec<UserError>,
}

/// Body of `set_attr`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SetAttrRequest {
    /// The users and their attributes.
    #[serde(rename = "UserAttrs")]
    pub users: Vec<UserAttrs>,
}

/// Body of `remove_attr`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RemoveAttrRequest {
    /// The users and the names to delete.
    #[serde(rename = "UserAttrs")]
    pub users: Vec<UserAttrNames>,
}

/// Body of `get_attr`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct GetAttrRequest {
    /// The users to read.
    #[serde(rename = "To_Account")]
    pub accounts: Vec<String>,
}

/// Body of `set_attr_name`: slot (`"0"`..`"9"`) → name, and optionally slot → account type.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SetAttrNameRequest {
    /// Slot → attribute name.
    #[serde(rename = "AttrNames")]
    pub names: BTreeMap<String, String>,
    /// Slot → account type (0 = UserID, 1 = RegistrationID); omitted by attrsync.
    #[serde(rename = "AttrTypes", default, skip_serializing_if = "Option::is_none")]
    pub types: Option<BTreeMap<String, u8>>,
}

/// The envelope every response carries, plus every optional field of the five APIs.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Response {
    /// `"OK"` or `"FAIL"`.
    #[serde(rename = "ActionStatus", default)]
    pub action_status: String,
    /// 0 on success.
    #[serde(rename = "ErrorCode", default)]
    pub error_code: u32,
    /// Human-readable error text; may be empty.
    #[serde(rename = "ErrorInfo", default)]
    pub error_info: String,
    /// Per-user failures of a partly successful call.
    #[serde(rename = "ErrorList", default, skip_serializing_if = "Option::is_none")]
    pub error_list: Option<Vec<UserError>>,
    /// `get_attr`: the users read.
    #[serde(rename = "UserAttrs", default, skip_serializing_if = "Option::is_none")]
    pub user_attrs: Option<Vec<UserAttrs>>,
    /// `get_attr_name`: slot → name.
    #[serde(rename = "AttrNames", default, skip_serializing_if = "Option::is_none")]
    pub attr_names: Option<BTreeMap<String, String>>,
    /// `get_attr_name`: slot → account type.
    #[serde(rename = "AttrTypes", default, skip_serializing_if = "Option::is_none")]
    pub attr_types: Option<BTreeMap<String, u8>>,
}

impl Response {
    /// A successful response with nothing else in it.
    pub fn ok() -> Self {
        Self {
            action_status: ACTION_OK.to_owned(),
            ..Self::default()
        }
    }

    /// A failed response.
    pub fn fail(code: u32, info: impl Into<String>) -> Self {
        Self {
            action_status: ACTION_FAIL.to_owned(),
            error_code: code,
            error_info: info.into(),
            ..Self::default()
        }
    }

    /// Whether the call as a whole succeeded (it may still carry an `ErrorList`).
    pub fn is_ok(&self) -> bool {
        self.error_code == 0 && self.action_status != ACTION_FAIL
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn documented_get_attr_response_parses_and_tolerates_new_fields() {
        let body = r#"{"ActionStatus":"OK","ErrorInfo":"","ErrorCode":0,"RequestId":"abc",
            "UserAttrs":[{"To_Account":"xiaoming","Attrs":{"sex":"male","city":"ShenZhen"}},
                         {"To_Account":"xiaohua","Attrs":{}}],
            "ErrorList":[{"ErrorCode":70107,"To_Account":"Mary"}]}"#;
        let response: Response = serde_json::from_str(body).unwrap();
        assert!(response.is_ok());
        let users = response.user_attrs.unwrap();
        assert_eq!(users[0].attrs["city"], "ShenZhen");
        assert!(users[1].attrs.is_empty());
        assert_eq!(
            response.error_list.unwrap(),
            vec![UserError {
                account: "Mary".into(),
                code: 70107,
                info: String::new()
            }]
        );
    }

    #[test]
    fn requests_serialise_in_the_documented_shape() {
        let request = SetAttrRequest {
            users: vec![UserAttrs {
                account: "Mary".into(),
                attrs: BTreeMap::from([("sex".to_owned(), "female".to_owned())]),
            }],
        };
        assert_eq!(
            serde_json::to_string(&request).unwrap(),
            r#"{"UserAttrs":[{"To_Account":"Mary","Attrs":{"sex":"female"}}]}"#
        );
        let request = RemoveAttrRequest {
            users: vec![UserAttrNames {
                account: "Mary".into(),
                names: vec!["sex".into()],
            }],
        };
        assert_eq!(
            serde_json::to_string(&request).unwrap(),
            r#"{"UserAttrs":[{"To_Account":"Mary","Attrs":["sex"]}]}"#
        );
    }
}
