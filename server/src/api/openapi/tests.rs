//! The document covers the API: every route of the router and every route
//! `docs/api.md` names is an operation of the spec (and the other way
//! round), and every refusal an operation lists has the JSON error shape.

use super::*;
use std::collections::BTreeSet;

/// `(METHOD, /path)`.
type Route = (String, String);

const METHODS: [&str; 5] = ["get", "put", "post", "delete", "patch"];

/// Every `.route("/path", get(..).post(..))` of `router()` in `api/mod.rs`,
/// read from the source (axum cannot list a router's routes). The console
/// is merged from `ui::router()` in its own module and is not part of the API.
fn router_routes() -> BTreeSet<Route> {
    let src = include_str!("../mod.rs");
    let body = src
        .split("pub fn router(")
        .nth(1)
        .expect("api/mod.rs has router()");
    let mut out = BTreeSet::new();
    let mut rest = body;
    while let Some(at) = rest.find(".route(") {
        rest = &rest[at + ".route(".len()..];
        // The call's text up to its closing parenthesis.
        let mut depth = 1;
        let mut end = 0;
        for (i, c) in rest.char_indices() {
            match c {
                '(' => depth += 1,
                ')' => depth -= 1,
                _ => {}
            }
            if depth == 0 {
                end = i;
                break;
            }
        }
        let call = &rest[..end];
        let path = call
            .split('"')
            .nth(1)
            .expect("a .route call starts with its path literal");
        let methods = &call[call.find(',').expect("a method router after the path")..];
        let mut found = false;
        for m in METHODS {
            // `get(`, `.post(`, `axum::routing::delete(`, but not `jobs::get)`.
            let needle = format!("{m}(");
            let mut hay = methods;
            while let Some(i) = hay.find(&needle) {
                let before = hay[..i].chars().last();
                if !before.is_some_and(|c| c.is_alphanumeric() || c == '_') {
                    out.insert((m.to_uppercase(), path.to_string()));
                    found = true;
                }
                hay = &hay[i + needle.len()..];
            }
        }
        assert!(found, "no method found in .route({call})");
    }
    assert!(out.len() > 30, "parsed too few routes: {out:?}");
    out
}

/// Every `METHOD /path` that `docs/api.md` names (query strings dropped).
fn documented_routes() -> BTreeSet<Route> {
    let doc = include_str!("../../../../docs/api.md");
    let mut out = BTreeSet::new();
    for m in METHODS {
        let needle = format!("{} /", m.to_uppercase());
        let mut hay = doc;
        while let Some(i) = hay.find(&needle) {
            let before = hay[..i].chars().last();
            let path: String = hay[i + needle.len() - 1..]
                .chars()
                .take_while(|c| c.is_ascii_alphanumeric() || "/{}_.:-".contains(*c))
                .collect();
            if !before.is_some_and(|c| c.is_ascii_alphanumeric()) {
                out.insert((
                    m.to_uppercase(),
                    path.trim_end_matches(['.', ':']).to_string(),
                ));
            }
            hay = &hay[i + needle.len()..];
        }
    }
    assert!(
        out.len() > 30,
        "found too few routes in docs/api.md: {out:?}"
    );
    out
}

/// The spec's operations as `(METHOD, /path)`.
fn spec_routes(doc: &utoipa::openapi::OpenApi) -> BTreeSet<Route> {
    let mut out = BTreeSet::new();
    for (path, item) in &doc.paths.paths {
        let ops = [
            ("GET", &item.get),
            ("PUT", &item.put),
            ("POST", &item.post),
            ("DELETE", &item.delete),
            ("PATCH", &item.patch),
        ];
        for (m, op) in ops {
            if op.is_some() {
                out.insert((m.to_string(), path.clone()));
            }
        }
    }
    out
}

fn show(routes: &BTreeSet<Route>) -> String {
    routes
        .iter()
        .map(|(m, p)| format!("{m} {p}"))
        .collect::<Vec<_>>()
        .join(", ")
}

#[test]
fn every_route_has_an_operation_and_every_operation_a_route() {
    let spec = spec_routes(&ApiDoc::openapi());
    let routes = router_routes();
    let missing: BTreeSet<_> = routes.difference(&spec).cloned().collect();
    assert!(
        missing.is_empty(),
        "routes of api::router() without an OpenAPI operation (add #[utoipa::path] and list it in ApiDoc): {}",
        show(&missing)
    );
    let extra: BTreeSet<_> = spec.difference(&routes).cloned().collect();
    assert!(
        extra.is_empty(),
        "OpenAPI operations without a route: {}",
        show(&extra)
    );
}

#[test]
fn every_route_in_the_api_docs_is_in_the_spec() {
    let spec = spec_routes(&ApiDoc::openapi());
    let documented = documented_routes();
    let missing: BTreeSet<_> = documented.difference(&spec).cloned().collect();
    assert!(
        missing.is_empty(),
        "docs/api.md names routes the OpenAPI document lacks: {}",
        show(&missing)
    );
}

#[test]
fn the_route_parsers_see_what_they_should() {
    let routes = router_routes();
    for r in [
        ("GET", "/v1/jobs/{id}"),
        ("PUT", "/v1/jobs/{id}"),
        ("DELETE", "/v1/jobs/{id}"),
        ("POST", "/v1/jobs:apply"),
        ("DELETE", "/v1/api-keys/{id}"),
        ("GET", "/v1/openapi.json"),
    ] {
        assert!(
            routes.contains(&(r.0.to_string(), r.1.to_string())),
            "{r:?} not parsed from api/mod.rs: {}",
            show(&routes)
        );
    }
    assert!(!routes.iter().any(|(_, p)| p.starts_with("/ui")));
    let documented = documented_routes();
    for r in [
        ("GET", "/v1/runs"),
        ("GET", "/v1/runs/{id}/output"),
        ("POST", "/v1/agent/join"),
        ("GET", "/healthz"),
        ("GET", "/v1/openapi.json"),
    ] {
        assert!(
            documented.contains(&(r.0.to_string(), r.1.to_string())),
            "{r:?} not found in docs/api.md: {}",
            show(&documented)
        );
    }
}

/// Every listed refusal (4xx/5xx) is the JSON error shape, except the
/// probes' own 503 bodies; every operation lists the shared ones.
#[test]
fn refusals_have_the_error_shape() {
    let doc: serde_json::Value = serde_json::from_str(document_json()).unwrap();
    assert_eq!(doc["openapi"], "3.1.0");
    let own_503 = ["/readyz", "/v1/ha/primary"];
    let mut checked = 0;
    for (path, item) in doc["paths"].as_object().unwrap() {
        for (method, op) in item.as_object().unwrap() {
            let responses = op["responses"].as_object().unwrap();
            assert!(
                responses.contains_key("500"),
                "{method} {path} lists no 500"
            );
            if op.get("security").is_some() {
                assert!(
                    responses.contains_key("401"),
                    "{method} {path} lists no 401"
                );
            }
            for (status, response) in responses {
                if status.as_str() < "400" || (status == "503" && own_503.contains(&path.as_str()))
                {
                    continue;
                }
                let schema = &response["content"]["application/json"]["schema"]["$ref"];
                assert_eq!(
                    schema, "#/components/schemas/ErrorBody",
                    "{method} {path} {status}: {response}"
                );
                checked += 1;
            }
        }
    }
    assert!(checked > 100, "only {checked} refusals checked");
    for name in ["admin_key", "agent_hmac", "join_token"] {
        assert!(
            doc["components"]["securitySchemes"].get(name).is_some(),
            "no security scheme {name}"
        );
    }
}

/// A stored job's schema has the spec's fields (flattened) without refusing
/// the stored job's own.
#[test]
fn job_schema_has_the_flattened_spec() {
    let doc: serde_json::Value = serde_json::from_str(document_json()).unwrap();
    let job = &doc["components"]["schemas"]["Job"];
    for field in ["id", "schedule", "executor", "next_fire_at", "counters"] {
        assert!(
            job["properties"].get(field).is_some(),
            "Job lacks {field}: {job}"
        );
    }
    assert_ne!(job["additionalProperties"], false);
    let spec = &doc["components"]["schemas"]["JobSpec"];
    assert_eq!(spec["additionalProperties"], false, "{spec}");
}

/// Unsigned integers carry their range, not utoipa's `u-int32` formats.
#[test]
fn unsigned_integers_have_their_range() {
    let doc = document_json();
    assert!(!doc.contains("u-int"), "an unknown integer format is left");
    let doc: serde_json::Value = serde_json::from_str(doc).unwrap();
    let max_uses = &doc["components"]["schemas"]["NewToken"]["properties"]["max_uses"];
    assert_eq!(max_uses["minimum"], 1, "{max_uses}");
    assert_eq!(max_uses["maximum"], 4_294_967_295u64, "{max_uses}");
    let generation = &doc["components"]["schemas"]["NodeView"]["properties"]["generation"];
    assert_eq!(generation["minimum"], 0, "{generation}");
}

/// The server's own bounds are the document's: a value the document
/// allows is one the server takes (Schemathesis's "schema-valid request
/// rejected" finds none of these).
#[test]
fn fields_carry_the_bounds_the_server_checks() {
    let doc: serde_json::Value = serde_json::from_str(document_json()).unwrap();
    let schemas = &doc["components"]["schemas"];
    let bounds = |schema: &str, field: &str| {
        let p = &schemas[schema]["properties"][field];
        (p["minimum"].as_u64(), p["maximum"].as_u64())
    };
    assert_eq!(bounds("Misfire", "max_catch_up"), (Some(1), Some(10_000)));
    assert_eq!(bounds("Retries", "max"), (Some(0), Some(100)));
    assert_eq!(bounds("History", "keep").0, Some(1));
    let put = &doc["paths"]["/v1/jobs/{id}"]["put"]["parameters"][0]["schema"];
    let pattern = put["pattern"].as_str().unwrap_or_default();
    assert_eq!(pattern, r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$", "{put}");
}
