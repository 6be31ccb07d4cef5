//! The daemon's HTTP clients: the server client joins with a token, then
//! signs every agent request with the node key (`Sundial-HMAC`), over HTTPS
//! when the server URL is `https://` (verified against `--ca-file` alone when
//! given); `http` jobs use their own client, which trusts the built-in roots
//! and that CA.

use anyhow::{bail, Context, Result};
use rand::RngCore;
use reqwest::{Client as Http, StatusCode};
use serde::de::DeserializeOwned;
use serde::Serialize;
use std::path::Path;
use std::time::Duration;
use sundial_proto::agent::{
    CompleteBatch, CompleteBatchResponse, CompleteRequest, CompleteResponse, Credential,
    HeartbeatRequest, HeartbeatResponse, JoinRequest, OutputRequest, OutputResponse, PollRequest,
    PollResponse, RegisterRequest,
};
use sundial_proto::sign::{self, AuthHeader, NodeKey};
use sundial_proto::time::now_ms;

/// An error talking to the server, classified for retry decisions.
#[derive(Debug, thiserror::Error)]
pub enum CallError {
    /// Network failure or 5xx: try again later.
    #[error("server unreachable: {0}")]
    Unavailable(String),
    /// 401: the credential is not (or no longer) accepted.
    #[error("unauthorized: {0}")]
    Unauthorized(String),
    /// Another 4xx: the request itself is wrong; retrying will not help.
    #[error("rejected ({status}): {body}")]
    Rejected { status: u16, body: String },
}

impl CallError {
    /// A 401 whose reason is `revoked_node` (the message ends with it, see
    /// docs/signing.md): not a passing failure, this node's attempts are
    /// no longer its own.
    pub fn is_revoked(&self) -> bool {
        let CallError::Unauthorized(body) = self else {
            return false;
        };
        serde_json::from_str::<sundial_proto::ErrorBody>(body)
            .is_ok_and(|b| b.error.message.ends_with(": revoked_node"))
    }
}

#[derive(Clone)]
pub struct Client {
    http: Http,
    base: String,
    node_id: String,
    key: NodeKey,
}

/// Builds the client `http` jobs run with: the built-in (webpki) roots plus
/// the `--ca-file` CA. A private CA for the server must not cut jobs off
/// from public HTTPS endpoints, and its own pool keeps job targets apart
/// from the server's connections.
pub fn job_http_client(ca_file: Option<&Path>) -> Result<Http> {
    let provider = std::sync::Arc::new(rustls::crypto::ring::default_provider());
    let mut tls = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .context("TLS protocol versions")?
        .with_root_certificates(job_roots(ca_file)?)
        .with_no_client_auth();
    // As reqwest offers them by default.
    tls.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(Http::builder()
        .use_preconfigured_tls(tls)
        .connect_timeout(Duration::from_secs(5))
        .build()?)
}

/// The roots `http` jobs trust: the built-in ones, and the CA file's
/// certificates when given.
fn job_roots(ca_file: Option<&Path>) -> Result<rustls::RootCertStore> {
    use rustls::pki_types::{pem::PemObject, CertificateDer};
    let mut roots = rustls::RootCertStore {
        roots: webpki_roots::TLS_SERVER_ROOTS.to_vec(),
    };
    if let Some(ca) = ca_file {
        let pem = std::fs::read(ca).with_context(|| format!("reading CA file {}", ca.display()))?;
        let mut added = 0;
        for cert in CertificateDer::pem_slice_iter(&pem) {
            let cert =
                cert.with_context(|| format!("{} is not a PEM certificate", ca.display()))?;
            roots
                .add(cert)
                .with_context(|| format!("{}: not a usable CA certificate", ca.display()))?;
            added += 1;
        }
        if added == 0 {
            bail!("{} holds no PEM certificate", ca.display());
        }
    }
    Ok(roots)
}

/// Builds the client that talks to the server.
pub fn http_client(ca_file: Option<&Path>) -> Result<Http> {
    let mut b = Http::builder()
        .use_rustls_tls()
        .connect_timeout(Duration::from_secs(5))
        // Below the server's idle keep-alive bound (`--header-read-timeout`,
        // 30 s by default), so a pooled connection is never reused just as
        // the server closes it.
        .pool_idle_timeout(Duration::from_secs(20));
    if let Some(ca) = ca_file {
        let pem = std::fs::read(ca).with_context(|| format!("reading CA file {}", ca.display()))?;
        let cert = reqwest::Certificate::from_pem(&pem)
            .with_context(|| format!("{} is not a PEM certificate", ca.display()))?;
        b = b.tls_built_in_root_certs(false).add_root_certificate(cert);
    }
    Ok(b.build()?)
}

fn classify(e: reqwest::Error) -> CallError {
    CallError::Unavailable(e.to_string())
}

async fn decode<T: DeserializeOwned>(resp: reqwest::Response) -> Result<T, CallError> {
    let status = resp.status();
    let text = resp.text().await.map_err(classify)?;
    if status.is_success() {
        return serde_json::from_str(&text).map_err(|e| CallError::Rejected {
            status: status.as_u16(),
            body: format!("undecodable response: {e}: {text}"),
        });
    }
    Err(match status {
        StatusCode::UNAUTHORIZED => CallError::Unauthorized(text),
        s if s.is_server_error() || s == StatusCode::TOO_MANY_REQUESTS => {
            CallError::Unavailable(format!("{s}: {text}"))
        }
        s => CallError::Rejected {
            status: s.as_u16(),
            body: text,
        },
    })
}

/// Joins the cluster with a join token and returns the node credential.
pub async fn join(
    http: &Http,
    base: &str,
    token: &str,
    node_id: &str,
) -> Result<Credential, CallError> {
    let resp = http
        .post(format!("{}/v1/agent/join", base.trim_end_matches('/')))
        .header("authorization", format!("Sundial-Join {token}"))
        .json(&JoinRequest {
            node_id: node_id.to_string(),
        })
        .timeout(Duration::from_secs(30))
        .send()
        .await
        .map_err(classify)?;
    decode(resp).await
}

impl Client {
    pub fn new(http: Http, base: &str, cred: &Credential) -> Result<Client> {
        let Some(key) = NodeKey::from_hex(&cred.key) else {
            bail!("the stored credential's key is not 32 bytes of hex");
        };
        Ok(Client {
            http,
            base: base.trim_end_matches('/').to_string(),
            node_id: cred.node_id.clone(),
            key,
        })
    }

    pub fn node_id(&self) -> &str {
        &self.node_id
    }

    async fn call<B: Serialize, T: DeserializeOwned>(
        &self,
        path: &str,
        body: &B,
        timeout: Duration,
    ) -> Result<T, CallError> {
        let bytes = serde_json::to_vec(body).map_err(|e| CallError::Rejected {
            status: 0,
            body: e.to_string(),
        })?;
        let mut nonce = [0u8; 16];
        rand::rng().fill_bytes(&mut nonce);
        let nonce = hex::encode(nonce);
        let ts = now_ms() / 1000;
        let header = AuthHeader {
            node: self.node_id.clone(),
            ts,
            sig: sign::sign(&self.key, "POST", path, ts, &nonce, &bytes),
            nonce,
        };
        let resp = self
            .http
            .post(format!("{}{}", self.base, path))
            .header("authorization", header.render())
            .header("content-type", "application/json")
            .body(bytes)
            .timeout(timeout)
            .send()
            .await
            .map_err(classify)?;
        decode(resp).await
    }

    pub async fn register(&self, req: &RegisterRequest) -> Result<serde_json::Value, CallError> {
        self.call("/v1/agent/register", req, Duration::from_secs(30))
            .await
    }

    /// Long-polls for up to `max` runs; `ack` is the receipt of the last
    /// response this process read (see `docs/api.md`).
    pub async fn poll(
        &self,
        max: u32,
        wait: Duration,
        ack: Option<u64>,
    ) -> Result<PollResponse, CallError> {
        let req = PollRequest {
            max,
            wait_ms: wait.as_millis() as u64,
            ack,
        };
        self.call("/v1/agent/poll", &req, wait + Duration::from_secs(15))
            .await
    }

    pub async fn heartbeat(
        &self,
        run_id: i64,
        attempt: u32,
    ) -> Result<HeartbeatResponse, CallError> {
        self.call(
            &format!("/v1/agent/runs/{run_id}/heartbeat"),
            &HeartbeatRequest { attempt },
            Duration::from_secs(10),
        )
        .await
    }

    pub async fn output(
        &self,
        run_id: i64,
        req: &OutputRequest,
    ) -> Result<OutputResponse, CallError> {
        self.call(
            &format!("/v1/agent/runs/{run_id}/output"),
            req,
            Duration::from_secs(10),
        )
        .await
    }

    pub async fn complete(
        &self,
        run_id: i64,
        req: &CompleteRequest,
    ) -> Result<CompleteResponse, CallError> {
        self.call(
            &format!("/v1/agent/runs/{run_id}/complete"),
            req,
            Duration::from_secs(30),
        )
        .await
    }

    /// Delivers several results in one call.
    pub async fn complete_many(
        &self,
        batch: &CompleteBatch,
    ) -> Result<CompleteBatchResponse, CallError> {
        self.call("/v1/agent/complete", batch, Duration::from_secs(30))
            .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ca_pem() -> String {
        let key = rcgen::KeyPair::generate().unwrap();
        let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        params.self_signed(&key).unwrap().pem()
    }

    #[test]
    fn jobs_trust_the_built_in_roots_and_the_ca_file() {
        let builtin = webpki_roots::TLS_SERVER_ROOTS.len();
        assert!(builtin > 100, "{builtin}");
        assert_eq!(job_roots(None).unwrap().len(), builtin);
        let dir = tempfile::tempdir().unwrap();
        let ca = dir.path().join("ca.pem");
        std::fs::write(&ca, ca_pem()).unwrap();
        // The private CA is added to the built-in roots, not put in their place.
        assert_eq!(job_roots(Some(&ca)).unwrap().len(), builtin + 1);
        job_http_client(Some(&ca)).unwrap();
        job_http_client(None).unwrap();
    }

    #[test]
    fn a_ca_file_without_a_certificate_is_an_error_naming_it() {
        let dir = tempfile::tempdir().unwrap();
        let bad = dir.path().join("ca.pem");
        std::fs::write(&bad, "not a certificate\n").unwrap();
        let e = format!("{:#}", job_roots(Some(&bad)).unwrap_err());
        assert!(
            e.contains("ca.pem") && e.contains("no PEM certificate"),
            "{e}"
        );
        let missing = dir.path().join("missing.pem");
        let e = format!("{:#}", job_roots(Some(&missing)).unwrap_err());
        assert!(e.contains("reading CA file"), "{e}");
    }
}
