//! The one rule for a label (a job's, a node's, a target's or a
//! selector's): the server checks it on every input, the daemon on its
//! `--labels` before it registers.

/// Longest label key.
pub const MAX_KEY_LEN: usize = 128;
/// Longest label value, in bytes.
pub const MAX_VALUE_LEN: usize = 256;
/// Most labels one job or node may carry.
pub const MAX_LABELS: usize = 64;

/// Checks one label key and value; the message says what is wrong.
pub fn check(key: &str, value: &str) -> Result<(), String> {
    let key_ok = !key.is_empty()
        && key.len() <= MAX_KEY_LEN
        && key.as_bytes()[0].is_ascii_alphanumeric()
        && key
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-' | b'/'));
    if !key_ok {
        return Err(format!(
            "label key {key:?} must be 1-{MAX_KEY_LEN} characters of letters, digits, '.', '_', '-' or '/', starting with a letter or digit"
        ));
    }
    if value.len() > MAX_VALUE_LEN || value.chars().any(char::is_control) {
        return Err(format!(
            "label value {value:?} must be at most {MAX_VALUE_LEN} bytes without control characters"
        ));
    }
    Ok(())
}

/// Checks a whole set: at most [`MAX_LABELS`], each pair by [`check`]. The
/// error names the key.
pub fn check_all(
    labels: &std::collections::BTreeMap<String, String>,
) -> Result<(), (String, String)> {
    if labels.len() > MAX_LABELS {
        return Err((String::new(), format!("at most {MAX_LABELS} labels")));
    }
    for (k, v) in labels {
        check(k, v).map_err(|m| (k.clone(), m))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_and_values() {
        for ok in [("role", "worker"), ("k8s.io/zone", ""), ("a_b-c.d", "x y")] {
            assert!(check(ok.0, ok.1).is_ok(), "{ok:?}");
        }
        for bad in [
            ("", "v"),
            ("-a", "v"),
            ("a b", "v"),
            ("a\n", "v"),
            ("a", "b\u{7}"),
        ] {
            assert!(check(bad.0, bad.1).is_err(), "{bad:?}");
        }
        assert!(check(&"k".repeat(129), "").is_err());
        assert!(check("k", &"v".repeat(257)).is_err());
        let many: std::collections::BTreeMap<String, String> =
            (0..65).map(|i| (format!("k{i}"), String::new())).collect();
        assert!(check_all(&many).is_err());
    }
}
