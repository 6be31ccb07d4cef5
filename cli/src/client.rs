//! The HTTP client: one blocking reqwest client with the bearer key and an
//! optional CA file, JSON in and out, and server errors turned into
//! [`CliError`]s (code, message, field) with the right exit code.

use crate::config::Connection;
use crate::error::{CliError, CliResult};
use anyhow::Context as _;
use reqwest::blocking::{Client as Http, RequestBuilder};
use reqwest::Method;
use serde::de::DeserializeOwned;
use serde::Serialize;
use std::time::Duration;
use sundial_proto::{ErrorBody, ErrorDetail};

/// Talks to one Sundial server.
pub struct Client {
    http: Http,
    base: String,
    key: Option<String>,
    /// The context that supplied defaults, named when no key was found.
    context: Option<String>,
}

impl Client {
    /// Builds a client for a resolved connection. `timeout` bounds each request.
    pub fn new(conn: &Connection, timeout: Duration) -> CliResult<Client> {
        let mut builder = Http::builder()
            .connect_timeout(Duration::from_secs(5))
            .timeout(timeout)
            .user_agent(concat!("sundial-cli/", env!("CARGO_PKG_VERSION")));
        if let Some(ca) = &conn.ca_file {
            let pem = std::fs::read(ca)
                .map_err(|e| CliError::usage(format!("reading CA file {}: {e}", ca.display())))?;
            let cert = reqwest::Certificate::from_pem(&pem)
                .map_err(|e| CliError::usage(format!("CA file {}: {e}", ca.display())))?;
            builder = builder.add_root_certificate(cert);
        }
        let http = builder.build().context("building the HTTP client")?;
        Ok(Client {
            http,
            base: conn.server.clone(),
            key: conn.key.clone(),
            context: conn.context.clone(),
        })
    }

    pub fn base(&self) -> &str {
        &self.base
    }

    fn request(&self, method: Method, path: &str) -> RequestBuilder {
        let req = self.http.request(method, format!("{}{}", self.base, path));
        match &self.key {
            Some(k) => req.bearer_auth(k),
            None => req,
        }
    }

    fn execute(&self, req: RequestBuilder) -> CliResult<reqwest::blocking::Response> {
        let resp = req.send().map_err(|e| self.transport(e))?;
        let status = resp.status();
        if status.is_success() {
            return Ok(resp);
        }
        let text = resp.text().unwrap_or_default();
        let mut detail = match serde_json::from_str::<ErrorBody>(&text) {
            Ok(body) => body.error,
            Err(_) => ErrorDetail {
                code: format!("http_{}", status.as_u16()),
                message: if text.trim().is_empty() {
                    status.to_string()
                } else {
                    text.trim().chars().take(500).collect()
                },
                field: None,
                index: None,
            },
        };
        if status == reqwest::StatusCode::UNAUTHORIZED && self.key.is_none() {
            detail.message.push_str(&self.no_key_hint());
        }
        // 502-504 (no primary right now, proxy errors) exit 5 like a refused connection.
        Err(CliError::Api {
            status: status.as_u16(),
            detail,
        })
    }

    /// Where a key could have come from, for a server that asked for one.
    fn no_key_hint(&self) -> String {
        let fix = match &self.context {
            Some(name) => format!(
                "; context {name:?} names no key file (`sundial config set-context {name} --key FILE`)"
            ),
            None => ", or use a context with one (`sundial config set-context NAME --url URL \
                     --key FILE --use`)"
                .to_owned(),
        };
        format!(
            "; no API key was sent: pass --key-file FILE or set SUNDIAL_KEY_FILE or SUNDIAL_KEY{fix}"
        )
    }

    fn transport(&self, e: reqwest::Error) -> CliError {
        if e.is_connect() || e.is_timeout() || e.is_request() {
            CliError::Unreachable {
                url: self.base.clone(),
                message: sundial_proto::cause::chain(&e),
            }
        } else {
            CliError::Other(anyhow::Error::new(e).context("reading the response"))
        }
    }

    /// Sends a request with an optional JSON body and decodes a JSON answer.
    pub fn call<T: DeserializeOwned>(
        &self,
        method: Method,
        path: &str,
        body: Option<&impl Serialize>,
    ) -> CliResult<T> {
        let mut req = self.request(method, path);
        if let Some(b) = body {
            req = req.json(b);
        }
        let resp = self.execute(req)?;
        resp.json::<T>()
            .with_context(|| format!("decoding the answer of {path}"))
            .map_err(CliError::from)
    }

    /// GET and decode.
    pub fn get<T: DeserializeOwned>(&self, path: &str) -> CliResult<T> {
        self.call(Method::GET, path, None::<&()>)
    }

    /// POST a ready-made JSON body (bulk apply serializes once).
    pub fn post_raw<T: DeserializeOwned>(&self, path: &str, json: Vec<u8>) -> CliResult<T> {
        let req = self
            .request(Method::POST, path)
            .header(reqwest::header::CONTENT_TYPE, "application/json")
            .body(json);
        let resp = self.execute(req)?;
        resp.json::<T>()
            .with_context(|| format!("decoding the answer of {path}"))
            .map_err(CliError::from)
    }

    /// A request whose answer has no body we need (DELETE → 204).
    pub fn send_empty(&self, method: Method, path: &str) -> CliResult<()> {
        self.execute(self.request(method, path)).map(|_| ())
    }
}

/// Percent-encodes one path segment or query value.
pub fn enc(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~') {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn keyless(context: Option<&str>) -> Client {
        let conn = Connection {
            server: "http://127.0.0.1:1".into(),
            key: None,
            ca_file: None,
            context: context.map(str::to_owned),
        };
        Client::new(&conn, Duration::from_secs(1)).expect("a client")
    }

    #[test]
    fn a_401_without_a_key_says_where_one_could_come_from() {
        let plain = keyless(None).no_key_hint();
        assert_eq!(
            plain,
            "; no API key was sent: pass --key-file FILE or set SUNDIAL_KEY_FILE or SUNDIAL_KEY, \
             or use a context with one (`sundial config set-context NAME --url URL --key FILE --use`)"
        );
        let prod = keyless(Some("prod")).no_key_hint();
        assert!(
            prod.ends_with(
                "; context \"prod\" names no key file (`sundial config set-context prod --key FILE`)"
            ),
            "{prod}"
        );
    }
}
