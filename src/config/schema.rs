//! JSON Schemas for `attrsync.yaml` and the user files, generated from [`SETTINGS`] and the
//! model's limits, so that an editor (yaml-language-server) checks and completes as one types.
//! `attrsync schema` prints them; `schema/` in the repository holds the same text, which a test
//! keeps equal to the generated one.

use serde_json::{json, Map, Value};

use super::settings::{Kind, Need, SETTINGS};
use crate::model::{
    Region, MAX_ATTRIBUTES, MAX_ATTR_NAME_BYTES, MAX_USER_ID_BYTES, MAX_VALUE_BYTES,
};

/// The JSON Schema dialect both schemas use.
const DIALECT: &str = "https://json-schema.org/draft/2020-12/schema";

/// The schema of `attrsync.yaml`.
pub fn settings_schema() -> Value {
    let mut properties = Map::new();
    let mut required = Vec::new();
    for setting in SETTINGS {
        let mut property = match setting.kind {
            Kind::Text | Kind::Endpoint => json!({"type": "string", "minLength": 1}),
            Kind::Whole { min, max } => json!({"type": "integer", "minimum": min, "maximum": max}),
            Kind::Flag => json!({"type": "boolean"}),
            Kind::Names => json!({
                "type": "array",
                "items": attribute_name(),
                "minItems": 1,
                "maxItems": MAX_ATTRIBUTES,
                "uniqueItems": true,
            }),
            Kind::Region => json!({
                "enum": Region::ALL.iter().map(|(_, name, _)| *name).collect::<Vec<_>>(),
            }),
        };
        let object = property.as_object_mut().expect("a schema object");
        object.insert("description".into(), json!(setting.doc.replace('`', "")));
        match setting.need {
            Need::Required(_) => required.push(setting.name),
            Need::Default(default) => {
                object.insert("default".into(), yaml_scalar(default));
            }
            Need::OneOf(_) | Need::Alias(_) => {}
        }
        properties.insert(setting.name.into(), property);
    }
    json!({
        "$schema": DIALECT,
        "title": "attrsync.yaml",
        "description": "The settings of an attrsync config repository.",
        "type": "object",
        "properties": properties,
        "required": required,
        "additionalProperties": false,
        // Exactly one of region and endpoint; state and its older name state_dir not both.
        "oneOf": [{"required": ["region"]}, {"required": ["endpoint"]}],
        "not": {"required": ["state", "state_dir"]},
    })
}

/// The schema of a user file under `users_dir`.
pub fn users_schema() -> Value {
    let attributes = json!({
        "type": "object",
        "propertyNames": attribute_name(),
        "additionalProperties": {
            "type": "string",
            "minLength": 1,
            // Bytes in attrsync, characters in JSON Schema: the same for ASCII values.
            "maxLength": MAX_VALUE_BYTES,
            "description": format!("an attribute value: 1 to {MAX_VALUE_BYTES} bytes, no control characters; quote values YAML would read as something else (NO, 007, 1e3)"),
        },
    });
    json!({
        "$schema": DIALECT,
        "title": "attrsync user file",
        "description": "Users and their push attributes; `defaults` apply to every user of the file, a user's own value wins.",
        "type": "object",
        "properties": {
            "defaults": attributes.clone(),
            "users": {
                "type": "object",
                "propertyNames": {"type": "string", "minLength": 1, "maxLength": MAX_USER_ID_BYTES},
                "additionalProperties": attributes,
            },
        },
        "required": ["users"],
        "additionalProperties": false,
    })
}

/// An attribute name: 1 to 50 bytes.
fn attribute_name() -> Value {
    json!({"type": "string", "minLength": 1, "maxLength": MAX_ATTR_NAME_BYTES})
}

/// A default as YAML would read it: a number, a boolean, or text.
fn yaml_scalar(text: &str) -> Value {
    match text {
        "true" => json!(true),
        "false" => json!(false),
        _ => text
            .parse::<u64>()
            .map_or_else(|_| json!(text), |n| json!(n)),
    }
}

/// A schema as the committed files hold it: pretty JSON and a final newline.
pub fn render(schema: &Value) -> String {
    let mut text = serde_json::to_string_pretty(schema).expect("a schema serialises");
    text.push('\n');
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_committed_schemas_are_the_generated_ones() {
        let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("schema");
        for (file, schema) in [
            ("attrsync.schema.json", settings_schema()),
            ("users.schema.json", users_schema()),
        ] {
            let committed = std::fs::read_to_string(root.join(file)).unwrap_or_default();
            assert!(
                committed == render(&schema),
                "schema/{file} is out of date: run `cargo run -- schema config > schema/attrsync.schema.json` \
                 and `cargo run -- schema users > schema/users.schema.json`"
            );
        }
    }

    #[test]
    fn every_setting_is_described_and_the_required_ones_are_required() {
        let schema = settings_schema();
        for setting in SETTINGS {
            assert!(
                schema["properties"][setting.name]["description"].is_string(),
                "{}",
                setting.name
            );
        }
        assert_eq!(
            schema["required"],
            json!(["sdkappid", "identifier", "attributes"])
        );
        assert_eq!(schema["properties"]["rate_limit"]["default"], json!(100));
        assert_eq!(schema["properties"]["prune"]["default"], json!(false));
    }
}
