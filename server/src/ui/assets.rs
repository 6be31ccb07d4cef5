//! Static console assets, embedded in the binary with `include_bytes!` and
//! served under `/ui/assets/{name}` with a long cache lifetime. Pages link
//! them with `?v=<crate version>`, so a new release is fetched afresh.
//! The vendored htmx is described in `assets/README.md`.

use axum::extract::Path;
use axum::http::header::{CACHE_CONTROL, CONTENT_TYPE, ETAG};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};

/// Version suffix of asset links (cache busting across releases).
pub const VERSION: &str = env!("CARGO_PKG_VERSION");

struct Asset {
    name: &'static str,
    content_type: &'static str,
    body: &'static [u8],
}

const ASSETS: &[Asset] = &[
    Asset {
        name: "htmx.min.js",
        content_type: "text/javascript; charset=utf-8",
        body: include_bytes!("assets/htmx.min.js"),
    },
    Asset {
        name: "console.js",
        content_type: "text/javascript; charset=utf-8",
        body: include_bytes!("assets/console.js"),
    },
    Asset {
        name: "console.css",
        content_type: "text/css; charset=utf-8",
        body: include_bytes!("assets/console.css"),
    },
];

/// A weak validator: the crate version and the body's length.
fn etag(a: &Asset) -> String {
    format!("\"{VERSION}-{}\"", a.body.len())
}

pub async fn serve(Path(name): Path<String>, headers: HeaderMap) -> Response {
    let Some(asset) = ASSETS.iter().find(|a| a.name == name) else {
        return (StatusCode::NOT_FOUND, "no such asset").into_response();
    };
    let tag = etag(asset);
    let cache = [
        (CACHE_CONTROL, "public, max-age=86400".to_string()),
        (ETAG, tag.clone()),
    ];
    if headers
        .get("if-none-match")
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v == tag)
    {
        return (StatusCode::NOT_MODIFIED, cache).into_response();
    }
    (
        [(CONTENT_TYPE, asset.content_type.to_string())],
        cache,
        asset.body,
    )
        .into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn assets_are_embedded() {
        for a in ASSETS {
            assert!(!a.body.is_empty(), "{} is empty", a.name);
        }
        let htmx = std::str::from_utf8(ASSETS[0].body).unwrap();
        assert!(htmx.contains("htmx"), "htmx.min.js is not htmx");
    }
}
