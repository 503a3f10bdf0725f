//! The JSON shapes of the `v4/timpush/*` attribute APIs, shared by the client and the emulator.
//!
//! Field names follow the documentation (`To_Account`, `Attrs`, `ErrorList`). The client
//! decodes responses with [`decode_response`]: strict about what success means (`ActionStatus`
//! and `ErrorCode` must both be there), lenient about field types where the meaning is clear
//! (a numeric string, a `null` text), and unknown fields are ignored since the server may add
//! fields (`docs/api.md`).

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
    /// The server's code, e.g. 70107 (account not imported) or 90035; `None` when the entry
    /// had none the client could read.
    #[serde(rename = "ErrorCode", default, skip_serializing_if = "Option::is_none")]
    pub code: Option<i64>,
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
    /// Users the server could not read, e.g. 70107 (account not imported), and users whose
    /// answer could not be understood. None of them has known attributes.
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
    pub error_code: i64,
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
    pub fn fail(code: i64, info: impl Into<String>) -> Self {
        Self {
            action_status: ACTION_FAIL.to_owned(),
            error_code: code,
            error_info: info.into(),
            ..Self::default()
        }
    }

    /// Whether the call as a whole succeeded (it may still carry an `ErrorList`): both
    /// `ActionStatus: "OK"` and `ErrorCode: 0`.
    pub fn is_ok(&self) -> bool {
        self.error_code == 0 && self.action_status == ACTION_OK
    }
}

/// Why a body is not a Tencent Cloud IM response.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NotAnImResponse(pub String);

/// Decodes a response body: strict about the envelope, lenient about field types.
///
/// `ActionStatus` (a string) and `ErrorCode` (an integer, or a string holding one) must both
/// be present, else the body is not the server's. `ErrorInfo` may be missing, `null` or any
/// value. An `ErrorList` entry without a readable `ErrorCode` still names its user (the code
/// is then `None`); one that names no user makes the body unusable, since nobody would know
/// which user failed. A `get_attr` user whose attributes are not all strings is moved to the
/// errors, so it is never read as having fewer attributes than it has.
pub fn decode_response(body: &[u8]) -> Result<Response, NotAnImResponse> {
    use serde_json::Value;
    let not = |why: &str| NotAnImResponse(why.to_owned());
    let value: Value = serde_json::from_slice(body)
        .map_err(|e| NotAnImResponse(format!("the body is not JSON ({e})")))?;
    let Value::Object(object) = value else {
        return Err(not("the body is not a JSON object"));
    };
    let action_status = match object.get("ActionStatus") {
        Some(Value::String(status)) => status.clone(),
        _ => return Err(not("it has no ActionStatus")),
    };
    let error_code = object
        .get("ErrorCode")
        .and_then(integer)
        .ok_or_else(|| not("it has no integer ErrorCode"))?;
    let mut response = Response {
        action_status,
        error_code,
        error_info: object.get("ErrorInfo").map(text).unwrap_or_default(),
        ..Response::default()
    };
    let mut errors = Vec::new();
    if let Some(list) = object.get("ErrorList").filter(|v| !v.is_null()) {
        let Value::Array(entries) = list else {
            return Err(not("its ErrorList is not a list"));
        };
        for entry in entries {
            let account = entry
                .get("To_Account")
                .filter(|v| v.is_string() || v.is_number())
                .map(text)
                .ok_or_else(|| not("an ErrorList entry names no user (To_Account)"))?;
            errors.push(UserError {
                account,
                code: entry.get("ErrorCode").and_then(integer),
                info: entry.get("ErrorInfo").map(text).unwrap_or_default(),
            });
        }
    }
    if let Some(users) = object.get("UserAttrs").filter(|v| !v.is_null()) {
        let Value::Array(entries) = users else {
            return Err(not("its UserAttrs is not a list"));
        };
        let mut read = Vec::with_capacity(entries.len());
        for entry in entries {
            let account = entry
                .get("To_Account")
                .filter(|v| v.is_string() || v.is_number())
                .map(text)
                .ok_or_else(|| not("a UserAttrs entry names no user (To_Account)"))?;
            let attrs = match entry.get("Attrs") {
                None | Some(Value::Null) => Some(BTreeMap::new()),
                Some(Value::Object(attrs)) => attrs
                    .iter()
                    .map(|(name, value)| value.as_str().map(|v| (name.clone(), v.to_owned())))
                    .collect::<Option<BTreeMap<_, _>>>(),
                Some(_) => None,
            };
            match attrs {
                Some(attrs) => read.push(UserAttrs { account, attrs }),
                None => errors.push(UserError {
                    account,
                    code: None,
                    info: "the server answered attributes that are not all strings".to_owned(),
                }),
            }
        }
        response.user_attrs = Some(read);
    }
    if !errors.is_empty() {
        response.error_list = Some(errors);
    }
    if let Some(Value::Object(names)) = object.get("AttrNames") {
        response.attr_names = Some(
            names
                .iter()
                .map(|(slot, name)| (slot.clone(), text(name)))
                .collect(),
        );
    }
    if let Some(Value::Object(types)) = object.get("AttrTypes") {
        let types = types
            .iter()
            .map(|(slot, kind)| {
                integer(kind)
                    .and_then(|k| u8::try_from(k).ok())
                    .map(|k| (slot.clone(), k))
            })
            .collect::<Option<BTreeMap<_, _>>>()
            .ok_or_else(|| not("an AttrTypes entry is not 0 or 1"))?;
        response.attr_types = Some(types);
    }
    Ok(response)
}

/// An integer, or a string holding one (`0`, `"0"`, `-1`).
fn integer(value: &serde_json::Value) -> Option<i64> {
    match value {
        serde_json::Value::Number(n) => n.as_i64(),
        serde_json::Value::String(s) => s.trim().parse().ok(),
        _ => None,
    }
}

/// A text field: strings as they are, `null` as empty, anything else as its JSON.
fn text(value: &serde_json::Value) -> String {
    match value {
        serde_json::Value::String(s) => s.clone(),
        serde_json::Value::Null => String::new(),
        other => other.to_string(),
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
        let response = decode_response(body.as_bytes()).unwrap();
        assert!(response.is_ok());
        let users = response.user_attrs.unwrap();
        assert_eq!(users[0].attrs["city"], "ShenZhen");
        assert!(users[1].attrs.is_empty());
        assert_eq!(
            response.error_list.unwrap(),
            vec![UserError {
                account: "Mary".into(),
                code: Some(70107),
                info: String::new()
            }]
        );
    }

    #[test]
    fn success_needs_both_action_status_and_error_code() {
        for body in [
            r#"{}"#,
            r#"{"ActionStatus":"OK"}"#,
            r#"{"ErrorCode":0}"#,
            "[]",
            "<html>",
        ] {
            assert!(decode_response(body.as_bytes()).is_err(), "{body}");
        }
        let fail_without_code =
            decode_response(br#"{"ActionStatus":"FAIL","ErrorCode":0}"#).unwrap();
        assert!(!fail_without_code.is_ok());
    }

    #[test]
    fn odd_field_types_are_read_where_the_meaning_is_clear() {
        let response = decode_response(
            br#"{"ActionStatus":"OK","ErrorCode":"0","ErrorInfo":null,
                "ErrorList":[{"To_Account":"a"},{"To_Account":"b","ErrorCode":"70107","ErrorInfo":7}]}"#,
        )
        .unwrap();
        assert!(response.is_ok());
        assert_eq!(response.error_info, "");
        let errors = response.error_list.unwrap();
        assert_eq!((errors[0].code, errors[1].code), (None, Some(70107)));
        assert_eq!(errors[1].info, "7");
        let negative =
            decode_response(br#"{"ActionStatus":"FAIL","ErrorCode":-1,"ErrorInfo":"?"}"#).unwrap();
        assert_eq!(negative.error_code, -1);
        // An entry that names nobody cannot be attributed: the body is unusable.
        assert!(decode_response(
            br#"{"ActionStatus":"OK","ErrorCode":0,"ErrorList":[{"ErrorCode":1}]}"#
        )
        .is_err());
        // get_attr values that are not strings make that user an error, not an empty user.
        let read = decode_response(
            br#"{"ActionStatus":"OK","ErrorCode":0,"UserAttrs":[{"To_Account":"a","Attrs":{"x":1}},{"To_Account":"b","Attrs":null}]}"#,
        )
        .unwrap();
        assert_eq!(read.user_attrs.unwrap().len(), 1);
        assert_eq!(read.error_list.unwrap()[0].account, "a");
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
