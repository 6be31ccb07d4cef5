//! Agent request signing (HMAC-SHA256) and node key derivation.
//!
//! A daemon signs every request with its node key:
//!
//! ```text
//! Authorization: Sundial-HMAC node=<id>,ts=<unix seconds>,nonce=<hex>,sig=<hex>
//! sig = hex(HMAC-SHA256(node_key, METHOD "\n" PATH_AND_QUERY "\n" TS "\n" NONCE "\n" hex(SHA-256(body))))
//! ```
//!
//! The server never stores node keys: it derives them from the cluster secret,
//! `node_key = HMAC-SHA256(cluster_secret, "sundial-node-key/v1" "\n" NODE_ID "\n" GENERATION)`,
//! so revoking a node is bumping its generation. Test vectors are in
//! `docs/signing.md` and pinned by the tests below.

use hmac::{Hmac, Mac};
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

type HmacSha256 = Hmac<Sha256>;

/// The authorization scheme name.
pub const SCHEME: &str = "Sundial-HMAC";
/// Largest accepted clock difference between daemon and server, in seconds.
pub const MAX_SKEW_SECS: i64 = 300;

/// A node's 32-byte signing key.
#[derive(Clone, PartialEq, Eq)]
pub struct NodeKey(pub [u8; 32]);

impl std::fmt::Debug for NodeKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("NodeKey(…)")
    }
}

impl NodeKey {
    pub fn to_hex(&self) -> String {
        hex::encode(self.0)
    }

    pub fn from_hex(s: &str) -> Option<NodeKey> {
        let bytes = hex::decode(s.trim()).ok()?;
        Some(NodeKey(bytes.try_into().ok()?))
    }
}

fn mac(key: &[u8]) -> HmacSha256 {
    // HMAC accepts keys of any length; this cannot fail.
    match HmacSha256::new_from_slice(key) {
        Ok(m) => m,
        Err(_) => unreachable!("HMAC takes any key length"),
    }
}

/// Derives a node's key from the cluster secret, its id and its generation.
pub fn derive_node_key(cluster_secret: &[u8], node_id: &str, generation: u64) -> NodeKey {
    let mut m = mac(cluster_secret);
    m.update(b"sundial-node-key/v1\n");
    m.update(node_id.as_bytes());
    m.update(b"\n");
    m.update(generation.to_string().as_bytes());
    NodeKey(m.finalize().into_bytes().into())
}

/// The string that is signed.
pub fn canonical(method: &str, path_and_query: &str, ts: i64, nonce: &str, body: &[u8]) -> String {
    format!(
        "{}\n{}\n{}\n{}\n{}",
        method.to_ascii_uppercase(),
        path_and_query,
        ts,
        nonce,
        hex::encode(Sha256::digest(body))
    )
}

/// Signs a request; returns the lowercase hex signature.
pub fn sign(
    key: &NodeKey,
    method: &str,
    path_and_query: &str,
    ts: i64,
    nonce: &str,
    body: &[u8],
) -> String {
    let mut m = mac(&key.0);
    m.update(canonical(method, path_and_query, ts, nonce, body).as_bytes());
    hex::encode(m.finalize().into_bytes())
}

/// Checks a signature in constant time.
pub fn verify(
    key: &NodeKey,
    method: &str,
    path_and_query: &str,
    ts: i64,
    nonce: &str,
    body: &[u8],
    sig_hex: &str,
) -> bool {
    let Ok(given) = hex::decode(sig_hex) else {
        return false;
    };
    let mut m = mac(&key.0);
    m.update(canonical(method, path_and_query, ts, nonce, body).as_bytes());
    let expected = m.finalize().into_bytes();
    given.len() == expected.len() && bool::from(expected.as_slice().ct_eq(&given))
}

/// The parsed fields of an `Authorization: Sundial-HMAC …` header.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AuthHeader {
    pub node: String,
    pub ts: i64,
    pub nonce: String,
    pub sig: String,
}

impl AuthHeader {
    /// Renders the header value.
    pub fn render(&self) -> String {
        format!(
            "{SCHEME} node={},ts={},nonce={},sig={}",
            self.node, self.ts, self.nonce, self.sig
        )
    }

    /// Parses a header value; `None` when it is not a well-formed Sundial-HMAC header.
    pub fn parse(value: &str) -> Option<AuthHeader> {
        let rest = value.strip_prefix(SCHEME)?.strip_prefix(' ')?;
        let (mut node, mut ts, mut nonce, mut sig) = (None, None, None, None);
        // Each parameter once: a header naming two nodes (or carrying two
        // signatures) is not well formed, whichever one would verify.
        fn once<T>(slot: &mut Option<T>, v: T) -> Option<()> {
            slot.replace(v).is_none().then_some(())
        }
        for part in rest.split(',') {
            let (k, v) = part.trim().split_once('=')?;
            match k {
                "node" => once(&mut node, v.to_string())?,
                "ts" => once(&mut ts, v.parse().ok()?)?,
                "nonce" => once(&mut nonce, v.to_string())?,
                "sig" => once(&mut sig, v.to_string())?,
                _ => return None,
            }
        }
        let h = AuthHeader {
            node: node?,
            ts: ts?,
            nonce: nonce?,
            sig: sig?,
        };
        let ok = !h.node.is_empty()
            && h.nonce.len() >= 16
            && h.nonce.len() <= 64
            && h.nonce.bytes().all(|b| b.is_ascii_hexdigit())
            && h.sig.len() == 64
            && h.sig.bytes().all(|b| b.is_ascii_hexdigit());
        ok.then_some(h)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const SECRET: &[u8] = b"cluster-secret-for-test-vectors";

    /// The published test vectors (docs/signing.md), computed independently
    /// with Python's `hmac` module.
    #[test]
    fn test_vectors() {
        let key = derive_node_key(SECRET, "node-1", 1);
        assert_eq!(
            key.to_hex(),
            "fce810daa6674dab28da89128ddb13490345e1b0705556e44bacc4e219f26327"
        );
        let body = br#"{"labels":{"role":"worker"}}"#;
        let nonce = "00112233445566778899aabbccddeeff";
        let sig = sign(
            &key,
            "POST",
            "/v1/agent/register",
            1_790_000_000,
            nonce,
            body,
        );
        assert_eq!(
            sig,
            "8bf0c091411c0bbb8957609f667af3ce5fce94bf6994cc745119006eea1449fb"
        );
        assert!(
            canonical("POST", "/v1/agent/register", 1_790_000_000, nonce, body)
                .ends_with("e9f3e8dab141e31aa9e2d7a98e5ae17736b0b4aa05f4e0262294e96bdbbe7edc")
        );
        let sig = sign(
            &key,
            "GET",
            "/v1/agent/poll?wait=30",
            1_790_000_000,
            "ffeeddccbbaa99887766554433221100",
            b"",
        );
        assert_eq!(
            sig,
            "d30cf0acae2554f5de4576e632812b0925f6e62e057ea4c2e8aefe9201c2a4d8"
        );
    }

    #[test]
    fn generation_changes_the_key() {
        assert_ne!(
            derive_node_key(SECRET, "n", 1),
            derive_node_key(SECRET, "n", 2)
        );
        assert_ne!(
            derive_node_key(SECRET, "n", 1),
            derive_node_key(b"other", "n", 1)
        );
    }

    #[test]
    fn header_round_trips_and_rejects_garbage() {
        let h = AuthHeader {
            node: "n1".into(),
            ts: 1_790_000_000,
            nonce: "00112233445566778899aabbccddeeff".into(),
            sig: "a".repeat(64),
        };
        assert_eq!(AuthHeader::parse(&h.render()), Some(h));
        for bad in [
            "",
            "Bearer x",
            "Sundial-HMAC node=n1,ts=x,nonce=00112233445566778899aabbccddeeff,sig=aa",
            "Sundial-HMAC node=n1,ts=1,nonce=short,sig=aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa",
            "Sundial-HMAC node=n1,ts=1,nonce=00112233445566778899aabbccddeeff,sig=aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa,x=1",
            // A parameter twice, and a signature that is not hex.
            "Sundial-HMAC node=n2,node=n1,ts=1,nonce=00112233445566778899aabbccddeeff,sig=aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa",
            "Sundial-HMAC node=n1,ts=1,ts=2,nonce=00112233445566778899aabbccddeeff,sig=aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa",
            "Sundial-HMAC node=n1,ts=1,nonce=00112233445566778899aabbccddeeff,sig=00,sig=aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa",
            "Sundial-HMAC node=n1,ts=1,nonce=00112233445566778899aabbccddeeff,sig=zzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzz",
        ] {
            assert_eq!(AuthHeader::parse(bad), None, "{bad}");
        }
    }

    proptest! {
        /// No header value makes the parser panic; whatever parses renders
        /// back to a value that parses to the same fields.
        #[test]
        fn header_parse_never_panics(
            value in prop_oneof![
                ".{0,120}",
                "Sundial-HMAC ((node|ts|nonce|sig|x)=[-0-9a-zA-Z=,. ]{0,70},?){0,5}",
            ],
        ) {
            if let Some(h) = AuthHeader::parse(&value) {
                prop_assert_eq!(AuthHeader::parse(&h.render()), Some(h));
            }
        }

        /// parse ∘ render is the identity on well-formed headers.
        #[test]
        fn header_render_parse_round_trips(
            node in "[A-Za-z0-9][A-Za-z0-9._-]{0,63}",
            ts in any::<i64>(),
            nonce in "[0-9a-fA-F]{16,64}",
            sig in "[0-9a-f]{64}",
        ) {
            let h = AuthHeader { node, ts, nonce, sig };
            prop_assert_eq!(AuthHeader::parse(&h.render()), Some(h));
        }

        #[test]
        fn sign_verify_and_tamper(
            method in "(GET|POST|PUT)",
            path in "/v1/[a-z/]{0,20}(\\?[a-z]=[0-9]{1,3})?",
            ts in 0i64..4_000_000_000,
            body in proptest::collection::vec(any::<u8>(), 0..256),
            flip in 0usize..64,
        ) {
            let key = derive_node_key(SECRET, "node", 3);
            let nonce = "0123456789abcdef0123456789abcdef";
            let sig = sign(&key, &method, &path, ts, nonce, &body);
            prop_assert!(verify(&key, &method, &path, ts, nonce, &body, &sig));
            prop_assert!(!verify(&key, &method, &path, ts + 1, nonce, &body, &sig));
            let longer = format!("{}x", path);
            prop_assert!(!verify(&key, &method, &longer, ts, nonce, &body, &sig));
            let mut other = body.clone();
            other.push(0);
            prop_assert!(!verify(&key, &method, &path, ts, nonce, &other, &sig));
            let other_key = derive_node_key(SECRET, "node", 4);
            prop_assert!(!verify(&other_key, &method, &path, ts, nonce, &body, &sig));
            let mut tampered = sig.into_bytes();
            tampered[flip] = if tampered[flip] == b'0' { b'1' } else { b'0' };
            let tampered = String::from_utf8(tampered).unwrap();
            prop_assert!(!verify(&key, &method, &path, ts, nonce, &body, &tampered));
        }
    }
}
