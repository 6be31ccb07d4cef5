//! The result table every scenario prints: a header, rows of metric, value
//! and target, a verdict, and the percentile entries of a summary line.

/// One row: metric, value, target (with its verdict).
pub(crate) fn row(name: &str, value: String, target: &str) {
    println!("| {name:<48} | {value:>22} | {target:<18} |");
}

/// A scenario's title and the table's head.
pub(crate) fn header(title: &str) {
    println!("\n## {title}\n");
    println!("| {:<48} | {:>22} | {:<18} |", "metric", "value", "target");
    println!("|{:-<50}|{:->24}|{:-<20}|", "", "", "");
}

/// `MET` or `MISSED`.
pub(crate) fn verdict(ok: bool) -> &'static str {
    if ok {
        "MET"
    } else {
        "MISSED"
    }
}

/// Removes terminal colour escapes (`ESC [ ... m`) from a log line.
pub(crate) fn strip_ansi(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut chars = s.chars();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' {
            for c in chars.by_ref() {
                if c.is_ascii_alphabetic() {
                    break;
                }
            }
        } else {
            out.push(c);
        }
    }
    out
}

/// The percentile and maximum entries (`p50=12`, …, `max=40`) of a
/// [`sundial_bench::summary`] line, as `(name, value)`.
pub(crate) fn percentiles(line: &str) -> impl Iterator<Item = (&str, &str)> {
    line.split(' ')
        .filter(|p| p.starts_with('p') || p.starts_with("max"))
        .filter_map(|p| p.split_once('='))
}
