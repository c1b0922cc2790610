//! A small YAML writer for generated manifests (deploy/crd.yaml): block style, keys in the
//! order serde gave them, every string double-quoted with JSON escapes (a JSON string is a
//! valid YAML double-quoted scalar), so no value can be misread as a number, bool or null.

use serde_json::Value;

/// Append `value` as a YAML document to `out`.
pub fn emit(value: &Value, out: &mut String) {
    block(value, 0, out);
}

fn scalar(v: &Value) -> String {
    match v {
        Value::String(s) => serde_json::to_string(s).expect("a string serialises"),
        Value::Array(a) if a.is_empty() => "[]".to_owned(),
        Value::Object(o) if o.is_empty() => "{}".to_owned(),
        other => other.to_string(),
    }
}

/// A key stays plain when it cannot be read as anything but a string.
fn key(k: &str) -> String {
    let plain = k.starts_with(|c: char| c.is_ascii_alphabetic())
        && k.chars()
            .all(|c| c.is_ascii_alphanumeric() || "-_./".contains(c))
        && !matches!(
            k.to_ascii_lowercase().as_str(),
            "y" | "n" | "yes" | "no" | "on" | "off" | "true" | "false" | "null"
        );
    if plain {
        k.to_owned()
    } else {
        scalar(&Value::String(k.to_owned()))
    }
}

fn is_block(v: &Value) -> bool {
    match v {
        Value::Array(a) => !a.is_empty(),
        Value::Object(o) => !o.is_empty(),
        _ => false,
    }
}

fn block(v: &Value, indent: usize, out: &mut String) {
    let pad = " ".repeat(indent);
    match v {
        Value::Object(o) if !o.is_empty() => {
            for (k, val) in o {
                let key = key(k);
                if is_block(val) {
                    out.push_str(&format!("{pad}{key}:\n"));
                    let child = if val.is_array() { indent } else { indent + 2 };
                    block(val, child, out);
                } else {
                    out.push_str(&format!("{pad}{key}: {}\n", scalar(val)));
                }
            }
        }
        Value::Array(a) if !a.is_empty() => {
            for item in a {
                if is_block(item) {
                    // The first line of the item goes after "- ", the rest indented under it.
                    let mut inner = String::new();
                    block(item, indent + 2, &mut inner);
                    let rest = inner
                        .strip_prefix(&" ".repeat(indent + 2))
                        .unwrap_or(&inner);
                    out.push_str(&format!("{pad}- {rest}"));
                } else {
                    out.push_str(&format!("{pad}- {}\n", scalar(item)));
                }
            }
        }
        other => out.push_str(&format!("{pad}{}\n", scalar(other))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn nested_maps_and_lists() {
        let mut out = String::new();
        emit(
            &json!({"a": {"b": [1, {"c": "x", "d": [true]}], "e": {}}, "f": "1"}),
            &mut out,
        );
        assert_eq!(
            out,
            "a:\n  b:\n  - 1\n  - c: \"x\"\n    d:\n    - true\n  e: {}\nf: \"1\"\n"
        );
    }
}
