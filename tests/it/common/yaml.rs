//! YAML files of the repository as JSON, for tests that check their structure (workflows) or
//! validate them against a JSON Schema (the examples).

use saphyr_parser::{Event, Parser, ScalarStyle};
use serde_json::{Map, Value};

/// A YAML document as JSON. Plain scalars are typed as YAML 1.2's core schema types them
/// (`true`/`false`, integers, `null`/`~`/empty); quoted ones are strings. Panics on a syntax
/// error, an alias, a duplicate key or a second document.
pub fn yaml(text: &str) -> Value {
    let mut stack: Vec<(Value, Option<String>)> = Vec::new();
    let mut root = None;
    for event in Parser::new_from_str(text) {
        let (event, span) = event.unwrap_or_else(|e| panic!("not YAML: {e}"));
        let value = match event {
            Event::MappingStart(..) => {
                stack.push((Value::Object(Map::new()), None));
                continue;
            }
            Event::SequenceStart(..) => {
                stack.push((Value::Array(Vec::new()), None));
                continue;
            }
            Event::MappingEnd | Event::SequenceEnd => stack.pop().unwrap().0,
            Event::Scalar(text, ScalarStyle::Plain, ..) => typed(&text),
            Event::Scalar(text, ..) => Value::String(text.into_owned()),
            Event::Alias(_) => panic!("an alias at {span:?}"),
            Event::DocumentStart(_) if root.is_some() => panic!("a second document"),
            _ => continue,
        };
        match stack.last_mut() {
            None => root = Some(value),
            Some((Value::Array(items), _)) => items.push(value),
            Some((Value::Object(map), key)) => match key.take() {
                None => *key = Some(key_text(value)),
                Some(k) => {
                    assert!(map.insert(k.clone(), value).is_none(), "duplicate key {k}");
                }
            },
            Some(_) => unreachable!("only containers are stacked"),
        }
    }
    root.unwrap_or(Value::Null)
}

/// A plain scalar as YAML 1.2's core schema reads it.
fn typed(text: &str) -> Value {
    match text {
        "true" | "True" | "TRUE" => Value::Bool(true),
        "false" | "False" | "FALSE" => Value::Bool(false),
        "" | "~" | "null" | "Null" | "NULL" => Value::Null,
        _ => text
            .parse::<i64>()
            .map_or_else(|_| Value::String(text.to_owned()), Value::from),
    }
}

/// A mapping key as text (a key YAML types as a number is still a key).
fn key_text(value: Value) -> String {
    match value {
        Value::String(text) => text,
        Value::Null => String::new(),
        other => other.to_string(),
    }
}
