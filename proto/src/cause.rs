//! An error as one line with its causes: HTTP clients (reqwest, hyper) put
//! the useful part ("connection refused", "operation timed out", "dns error")
//! in the source chain, and their own `Display` leaves it out.

/// `e` and each of its sources, joined with `": "`; a source whose text the
/// line already ends with is left out.
pub fn chain(e: &dyn std::error::Error) -> String {
    let mut line = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        let text = s.to_string();
        if !line.ends_with(&text) {
            line.push_str(": ");
            line.push_str(&text);
        }
        source = s.source();
    }
    line
}

#[cfg(test)]
mod tests {
    use super::chain;

    #[derive(Debug, thiserror::Error)]
    #[error("error sending request")]
    struct Outer(#[source] std::io::Error);

    #[test]
    fn sources_are_appended() {
        let e = Outer(std::io::Error::new(
            std::io::ErrorKind::ConnectionRefused,
            "connection refused",
        ));
        assert_eq!(chain(&e), "error sending request: connection refused");
        let io = std::io::Error::other("alone");
        assert_eq!(chain(&io), "alone");
    }
}
