//! The one rule for the server URL the CLI (`--server`, contexts) and the
//! daemon (`--server`) take: absolute, `http://` or `https://`, with a host.
//! A typo caught here is a usage error at start, not a connection error
//! retried later.

/// Checks `s`; the error says what is wrong and shows a good one.
pub fn check(s: &str) -> Result<(), String> {
    let url = url::Url::parse(s)
        .map_err(|e| format!("{s:?} is not a URL ({e}); give one such as http://sundial:8080"))?;
    if !matches!(url.scheme(), "http" | "https") || url.host_str().is_none() {
        return Err(format!(
            "{s:?} must be an http:// or https:// URL with a host, such as http://sundial:8080"
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::check;

    #[test]
    fn only_absolute_http_urls_with_a_host() {
        assert!(check("http://127.0.0.1:8080").is_ok());
        assert!(check("https://sundial.example/").is_ok());
        assert!(check("127.0.0.1:8080")
            .unwrap_err()
            .contains("is not a URL"));
        for bad in ["not a url", "ftp://127.0.0.1:8080", "http://"] {
            let e = check(bad).unwrap_err();
            assert!(e.contains("http"), "{bad}: {e}");
        }
    }
}
