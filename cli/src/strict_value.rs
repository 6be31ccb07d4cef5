//! A JSON value read from YAML that refuses a key given twice in one
//! mapping. `serde_json::Value` keeps the last of them silently, while YAML
//! requires unique keys (and the API refuses a duplicate JSON field, which
//! it never sees once the CLI has merged them).

use serde::de::{self, Deserializer, MapAccess, SeqAccess, Visitor};
use serde::Deserialize;
use serde_json::{Map, Number, Value};
use std::fmt;

/// A [`Value`] built without ever overwriting a mapping key.
pub struct StrictValue(pub Value);

impl<'de> Deserialize<'de> for StrictValue {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_any(StrictVisitor).map(StrictValue)
    }
}

struct StrictVisitor;

impl<'de> Visitor<'de> for StrictVisitor {
    type Value = Value;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("any YAML value")
    }

    fn visit_bool<E>(self, v: bool) -> Result<Value, E> {
        Ok(Value::Bool(v))
    }
    fn visit_i64<E>(self, v: i64) -> Result<Value, E> {
        Ok(Value::Number(v.into()))
    }
    fn visit_u64<E>(self, v: u64) -> Result<Value, E> {
        Ok(Value::Number(v.into()))
    }
    fn visit_f64<E>(self, v: f64) -> Result<Value, E> {
        Ok(Number::from_f64(v).map_or(Value::Null, Value::Number))
    }
    fn visit_str<E>(self, v: &str) -> Result<Value, E> {
        Ok(Value::String(v.to_owned()))
    }
    fn visit_string<E>(self, v: String) -> Result<Value, E> {
        Ok(Value::String(v))
    }
    fn visit_unit<E>(self) -> Result<Value, E> {
        Ok(Value::Null)
    }
    fn visit_none<E>(self) -> Result<Value, E> {
        Ok(Value::Null)
    }
    fn visit_some<D: Deserializer<'de>>(self, d: D) -> Result<Value, D::Error> {
        StrictValue::deserialize(d).map(|v| v.0)
    }
    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Value, A::Error> {
        let mut out = Vec::new();
        while let Some(StrictValue(v)) = seq.next_element()? {
            out.push(v);
        }
        Ok(Value::Array(out))
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Value, A::Error> {
        let mut out = Map::new();
        while let Some(key) = map.next_key::<String>()? {
            let StrictValue(v) = map.next_value()?;
            if out.contains_key(&key) {
                return Err(de::Error::custom(format!(
                    "key {key:?} appears twice in one mapping"
                )));
            }
            out.insert(key, v);
        }
        Ok(Value::Object(out))
    }
}

#[cfg(test)]
mod tests {
    use super::StrictValue;
    use serde::Deserialize;

    fn read(text: &str) -> Result<serde_json::Value, String> {
        let de = serde_yaml_ng::Deserializer::from_str(text);
        StrictValue::deserialize(de)
            .map(|v| v.0)
            .map_err(|e| e.to_string())
    }

    #[test]
    fn a_key_given_twice_is_an_error_at_any_depth() {
        let v = read("id: a\nn: 1\nx: [1, {b: true}]\nf: 1.5\nz: ~\n").unwrap();
        assert_eq!(
            v,
            serde_json::json!({"id": "a", "n": 1, "x": [1, {"b": true}], "f": 1.5, "z": null})
        );
        let e = read("id: a\nschedule: x\nschedule: y\n").unwrap_err();
        assert!(e.contains("\"schedule\" appears twice"), "{e}");
        let e = read("executor: {type: exec, type: shell}\n").unwrap_err();
        assert!(e.contains("\"type\" appears twice"), "{e}");
    }
}
