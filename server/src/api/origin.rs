//! Where an admin request came from, for the audit log: the peer address of
//! the connection — or, when a replica forwarded the request to this primary,
//! the original client's address, which the replica vouches for with
//! `X-Sundial-Forwarded-For: addr=<ip>;ts=<unix s>;sig=<hex>`. The signature
//! is HMAC-SHA256 under the cluster secret (which only servers hold) over the
//! address, the timestamp, the method and a digest of the request's
//! credentials (`Authorization` and `Cookie`), so a client cannot claim an
//! address: an unsigned, stale (±300 s) or badly signed header is ignored and
//! the peer address is recorded. `X-Forwarded-For` from proxies is never
//! trusted (a client could set it); behind HAProxy the source is the proxy.

use super::AppState;
use crate::secrets::ClusterSecrets;
use crate::store::audit::Actor;
use axum::extract::{ConnectInfo, FromRequestParts};
use axum::http::header::{AUTHORIZATION, COOKIE};
use axum::http::request::Parts;
use axum::http::{HeaderMap, Method};
use hmac::{Hmac, Mac};
use sha2::{Digest, Sha256};
use std::convert::Infallible;
use std::net::{IpAddr, SocketAddr};

/// The header a forwarding replica adds (and strips from what it forwards).
pub const FORWARDED_FOR: &str = "x-sundial-forwarded-for";

/// Largest accepted difference between the signer's clock and ours.
const SKEW_S: i64 = 300;

/// The source of a request and, when forwarded, the replica in between.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Origin {
    pub source: Option<String>,
    pub via: Option<String>,
}

impl Origin {
    /// The audit actor of a request made with key `key_id`.
    pub fn actor(self, key_id: String, key_name: Option<String>) -> Actor {
        Actor {
            key_id,
            key_name,
            source: self.source,
            via: self.via,
        }
    }
}

/// SHA-256 of the credentials a request carries (its bearer key or console
/// cookie), binding a forwarded-for claim to the caller's own request.
fn credentials(headers: &HeaderMap) -> [u8; 32] {
    let mut h = Sha256::new();
    for name in [AUTHORIZATION, COOKIE] {
        for v in headers.get_all(name) {
            h.update(v.as_bytes());
            h.update([0u8]);
        }
        h.update([1u8]);
    }
    h.finalize().into()
}

fn mac(secret: &[u8], addr: &str, ts: i64, method: &Method, creds: &[u8; 32]) -> Hmac<Sha256> {
    // Any key length is valid for HMAC.
    let mut m = <Hmac<Sha256> as Mac>::new_from_slice(secret)
        .unwrap_or_else(|_| unreachable!("HMAC accepts keys of any length"));
    m.update(b"sundial-forwarded-for/v1\n");
    m.update(addr.as_bytes());
    m.update(b"\n");
    m.update(ts.to_string().as_bytes());
    m.update(b"\n");
    m.update(method.as_str().as_bytes());
    m.update(b"\n");
    m.update(creds);
    m
}

/// The header value a replica adds when it forwards a request from `client`.
pub fn vouch(
    secrets: &ClusterSecrets,
    client: IpAddr,
    method: &Method,
    headers: &HeaderMap,
    now_s: i64,
) -> String {
    let addr = client.to_string();
    let sig = mac(
        secrets.current(),
        &addr,
        now_s,
        method,
        &credentials(headers),
    )
    .finalize()
    .into_bytes();
    format!("addr={addr};ts={now_s};sig={}", hex::encode(sig))
}

/// The vouched-for client address, when the header is present and verifies.
fn verify(
    secrets: &ClusterSecrets,
    value: &str,
    method: &Method,
    headers: &HeaderMap,
    now_s: i64,
) -> Result<IpAddr, &'static str> {
    let (mut addr, mut ts, mut sig) = (None, None, None);
    for part in value.split(';') {
        match part.trim().split_once('=') {
            Some(("addr", v)) => addr = Some(v),
            Some(("ts", v)) => ts = Some(v),
            Some(("sig", v)) => sig = Some(v),
            _ => return Err("malformed"),
        }
    }
    let (Some(addr), Some(ts), Some(sig)) = (addr, ts, sig) else {
        return Err("incomplete");
    };
    let ip: IpAddr = addr.parse().map_err(|_| "bad address")?;
    let ts: i64 = ts.parse().map_err(|_| "bad timestamp")?;
    if (now_s - ts).abs() > SKEW_S {
        return Err("stale");
    }
    let sig = hex::decode(sig).map_err(|_| "bad signature")?;
    let creds = credentials(headers);
    let ok = secrets
        .all()
        .iter()
        .any(|s| mac(s, addr, ts, method, &creds).verify_slice(&sig).is_ok());
    if ok {
        Ok(ip)
    } else {
        Err("bad signature")
    }
}

/// The origin of a request on this server.
pub fn of(parts: &Parts, secrets: &ClusterSecrets) -> Origin {
    let peer = parts
        .extensions
        .get::<ConnectInfo<SocketAddr>>()
        .map(|c| c.0.ip());
    let Some(claim) = parts.headers.get(FORWARDED_FOR) else {
        return Origin {
            source: peer.map(|p| p.to_string()),
            via: None,
        };
    };
    let now_s = sundial_proto::time::now_ms() / 1000;
    let checked = claim
        .to_str()
        .map_err(|_| "not text")
        .and_then(|v| verify(secrets, v, &parts.method, &parts.headers, now_s));
    match checked {
        Ok(client) => Origin {
            source: Some(client.to_string()),
            via: peer.map(|p| p.to_string()),
        },
        Err(why) => {
            tracing::warn!(
                peer = %peer.map(|p| p.to_string()).unwrap_or_else(|| "-".into()),
                reason = why,
                "ignored an unverified {FORWARDED_FOR} header; auditing the peer address"
            );
            Origin {
                source: peer.map(|p| p.to_string()),
                via: None,
            }
        }
    }
}

impl FromRequestParts<AppState> for Origin {
    type Rejection = Infallible;

    async fn from_request_parts(parts: &mut Parts, app: &AppState) -> Result<Self, Infallible> {
        Ok(of(parts, &app.secrets))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::http::HeaderValue;

    fn secrets() -> ClusterSecrets {
        ClusterSecrets::parse("0123456789abcdef-test").unwrap()
    }

    fn parts(headers: &[(&str, &str)]) -> Parts {
        let mut req = axum::http::Request::builder()
            .method(Method::PUT)
            .uri("/v1/jobs/x");
        for (k, v) in headers {
            req = req.header(*k, *v);
        }
        let (mut parts, ()) = req.body(()).unwrap().into_parts();
        parts
            .extensions
            .insert(ConnectInfo(SocketAddr::from(([10, 0, 0, 2], 4000))));
        parts
    }

    #[test]
    fn a_vouched_address_needs_the_cluster_secret_the_method_and_the_key() {
        let s = secrets();
        let client: IpAddr = "192.0.2.7".parse().unwrap();
        let mut h = HeaderMap::new();
        h.insert(AUTHORIZATION, HeaderValue::from_static("Bearer sdk_a"));
        let now = sundial_proto::time::now_ms() / 1000;
        let value = vouch(&s, client, &Method::PUT, &h, now);

        let ok = of(
            &parts(&[("authorization", "Bearer sdk_a"), (FORWARDED_FOR, &value)]),
            &s,
        );
        assert_eq!(ok.source.as_deref(), Some("192.0.2.7"));
        assert_eq!(ok.via.as_deref(), Some("10.0.0.2"));

        // Another key, another secret, a stale stamp or a forged address: the peer.
        let peer_only = Origin {
            source: Some("10.0.0.2".into()),
            via: None,
        };
        assert_eq!(
            of(
                &parts(&[("authorization", "Bearer sdk_b"), (FORWARDED_FOR, &value)]),
                &s
            ),
            peer_only
        );
        let other = ClusterSecrets::parse("another-secret-0123456789").unwrap();
        assert_eq!(
            of(
                &parts(&[("authorization", "Bearer sdk_a"), (FORWARDED_FOR, &value)]),
                &other
            ),
            peer_only
        );
        let stale = vouch(&s, client, &Method::PUT, &h, now - 1000);
        assert_eq!(
            of(
                &parts(&[("authorization", "Bearer sdk_a"), (FORWARDED_FOR, &stale)]),
                &s
            ),
            peer_only
        );
        let forged = value.replace("192.0.2.7", "192.0.2.8");
        assert_eq!(
            of(
                &parts(&[("authorization", "Bearer sdk_a"), (FORWARDED_FOR, &forged)]),
                &s
            ),
            peer_only
        );
        assert_eq!(of(&parts(&[(FORWARDED_FOR, "garbage")]), &s), peer_only);
        // No header: the peer.
        assert_eq!(of(&parts(&[]), &s), peer_only);
    }
}
