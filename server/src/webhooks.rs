//! Webhook delivery (primary only): one task per webhook follows the event
//! outbox from the webhook's cursor and POSTs each matching event, in order,
//! signed the Standard Webhooks way. Delivery is at least once: the cursor
//! moves only after the receiver answered 2xx (or the retry window of
//! `--webhook-retry-for` ran out, which writes a `webhook.failed` event), so
//! a crash or failover repeats at most the event in flight — with the same
//! `webhook-id`. A slow or dead receiver holds up only its own webhook: each
//! has one request in flight, bounded by `--webhook-timeout`, and never
//! touches the scheduler's path.

use crate::loops::{self, Loop, Loops};
use crate::metrics::Metrics;
use crate::secrets::ClusterSecrets;
use crate::store::audit::{self, Action, Actor};
use crate::store::events::{self, Filter};
use crate::store::jobs;
use crate::store::webhooks::{self, Attempt, Stored};
use crate::store::{Store, StoreError};
use hmac::{Hmac, Mac};
use rand::Rng;
use sha2::Sha256;
use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};
use sundial_proto::event::{Event, EventType, TypePattern};
use sundial_proto::time::now_ms;
use sundial_proto::webhook::{self as wire, Delivery, DeliveryOutcome, Format};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

/// How often the set of webhooks is re-read (new and deleted ones).
const RESCAN: Duration = Duration::from_secs(1);
/// Events read (and sent, in order) per step of a webhook.
const PAGE: usize = 256;
/// Longest a step sends before it writes down what it delivered.
const FLUSH_EVERY: Duration = Duration::from_millis(250);
/// First retry delay; each further one doubles, up to [`RETRY_CAP_MS`].
const RETRY_BASE_MS: i64 = 1_000;
const RETRY_CAP_MS: i64 = 600_000;

/// Settings of the deliverer.
#[derive(Debug, Clone, Copy)]
pub struct Settings {
    /// Longest wait for a receiver's answer.
    pub timeout: Duration,
    /// How long an event is retried before it is given up.
    pub retry_for_ms: i64,
    /// Refuse loopback, private and link-local receivers (SSRF guard).
    pub deny_private: bool,
}

/// Why a receiver URL is refused.
#[derive(Debug, thiserror::Error)]
pub enum BadUrl {
    #[error("not a URL: {0}")]
    Parse(String),
    #[error("only http and https receivers are allowed")]
    Scheme,
    #[error("the URL has no host")]
    NoHost,
    #[error("cannot resolve {0}: {1}")]
    Resolve(String, String),
    #[error("{0} resolves to {1}, a loopback, private or link-local address (refused by --webhook-deny-private)")]
    Private(String, IpAddr),
}

pub struct Deliverer {
    store: Arc<Store>,
    secrets: ClusterSecrets,
    metrics: Arc<Metrics>,
    loops: Arc<Loops>,
    http: reqwest::Client,
    settings: Settings,
}

/// The secret a webhook's signatures use, derived from a cluster secret and
/// the webhook's salt (so the database holds none).
pub fn derive_secret(cluster_secret: &[u8], id: &str, salt: &[u8]) -> [u8; 32] {
    let mut m = <Hmac<Sha256> as Mac>::new_from_slice(cluster_secret)
        .unwrap_or_else(|_| unreachable!("HMAC takes keys of any length"));
    m.update(b"sundial-webhook-secret/v1\n");
    m.update(id.as_bytes());
    m.update(b"\n");
    m.update(salt);
    m.finalize().into_bytes().into()
}

/// The IPv4 address in the low 32 bits of an IPv4-compatible
/// (`::a.b.c.d`) or NAT64 well-known-prefix (`64:ff9b::/96`) address.
fn embedded_v4(v6: std::net::Ipv6Addr) -> Option<std::net::Ipv4Addr> {
    let s = v6.segments();
    let compatible = s[..6] == [0; 6];
    let nat64 = s[..6] == [0x64, 0xff9b, 0, 0, 0, 0];
    (compatible || nat64).then(|| {
        let o = v6.octets();
        std::net::Ipv4Addr::new(o[12], o[13], o[14], o[15])
    })
}

fn is_private(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => {
            v4.is_loopback()
                || v4.is_private()
                || v4.is_link_local()
                || v4.is_unspecified()
                || v4.is_broadcast()
                || v4.is_multicast()
                || v4.octets()[0] == 100 && (v4.octets()[1] & 0xc0) == 64 // 100.64/10 (CGNAT)
        }
        IpAddr::V6(v6) => {
            v6.is_loopback()
                || v6.is_unspecified()
                || v6.is_multicast()
                || (v6.segments()[0] & 0xfe00) == 0xfc00 // unique local
                || (v6.segments()[0] & 0xffc0) == 0xfe80 // link local
                || v6.to_ipv4_mapped().is_some_and(|v4| is_private(IpAddr::V4(v4)))
                // IPv4-compatible (::a.b.c.d) and NAT64 (64:ff9b::a.b.c.d):
                // an IPv4 address behind an IPv6 one.
                || embedded_v4(v6).is_some_and(|v4| is_private(IpAddr::V4(v4)))
        }
    }
}

/// Checks a receiver URL; with `deny_private`, resolves it and refuses
/// loopback, private and link-local addresses.
pub async fn check_url(raw: &str, deny_private: bool) -> Result<reqwest::Url, BadUrl> {
    let url = reqwest::Url::parse(raw).map_err(|e| BadUrl::Parse(e.to_string()))?;
    if !matches!(url.scheme(), "http" | "https") {
        return Err(BadUrl::Scheme);
    }
    let host = url.host_str().ok_or(BadUrl::NoHost)?.to_string();
    if deny_private {
        let port = url.port_or_known_default().unwrap_or(443);
        let bare = host.trim_start_matches('[').trim_end_matches(']');
        let addrs: Vec<IpAddr> = tokio::net::lookup_host((bare, port))
            .await
            .map_err(|e| BadUrl::Resolve(host.clone(), e.to_string()))?
            .map(|a| a.ip())
            .collect();
        if let Some(ip) = addrs.into_iter().find(|ip| is_private(*ip)) {
            return Err(BadUrl::Private(host, ip));
        }
    }
    Ok(url)
}

/// The delay before attempt `n + 1` after `n` failed: doubling from 1 s to
/// 10 min, with equal jitter.
fn retry_delay_ms(failed_attempts: u32) -> i64 {
    let ceiling = RETRY_BASE_MS
        .saturating_mul(1i64 << failed_attempts.saturating_sub(1).min(20))
        .min(RETRY_CAP_MS);
    let half = ceiling / 2;
    half + rand::rng().random_range(0..=half.max(1))
}

/// Text for Slack as data, not markup: `&`, `<` and `>` escaped as Slack
/// asks, so an error saying `<!channel>` pings no one and `<url|label>`
/// is no link.
fn slack_escape(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}

/// The body of a delivery.
fn body(format: Format, e: &Event) -> Vec<u8> {
    match format {
        Format::Json => serde_json::to_vec(e).unwrap_or_default(),
        Format::Slack => {
            let mut text = format!("Sundial: {}", e.kind);
            if let Some(j) = &e.job_id {
                text.push_str(&format!(" job={}", slack_escape(j)));
            }
            if let Some(r) = e.run_id {
                text.push_str(&format!(" run={r}"));
            }
            if let Some(n) = &e.node {
                text.push_str(&format!(" node={}", slack_escape(n)));
            }
            if let Some(err) = e.data.get("error").and_then(|v| v.as_str()) {
                text.push_str(&format!(": {}", slack_escape(err)));
            }
            serde_json::to_vec(&serde_json::json!({ "text": text })).unwrap_or_default()
        }
    }
}

/// What one POST came to.
struct Sent {
    status: Option<u16>,
    latency_ms: i64,
    error: Option<String>,
}

impl Deliverer {
    pub fn new(
        store: Arc<Store>,
        secrets: ClusterSecrets,
        metrics: Arc<Metrics>,
        loops: Arc<Loops>,
        settings: Settings,
    ) -> anyhow::Result<Deliverer> {
        let http = reqwest::Client::builder()
            .timeout(settings.timeout)
            .connect_timeout(settings.timeout.min(Duration::from_secs(5)))
            // A redirect could lead anywhere (SSRF): a 3xx is a failed delivery.
            .redirect(reqwest::redirect::Policy::none())
            .user_agent(concat!("sundial-webhooks/", env!("CARGO_PKG_VERSION")))
            .build()?;
        Ok(Deliverer {
            store,
            secrets,
            metrics,
            loops,
            http,
            settings,
        })
    }

    pub fn settings(&self) -> Settings {
        self.settings
    }

    /// `whsec_…` of a webhook (shown once, at creation).
    pub fn secret_of(&self, id: &str, salt: &[u8]) -> String {
        wire::format_secret(&derive_secret(self.secrets.current(), id, salt))
    }

    /// Signs and POSTs one message; never fails (the outcome says how it went).
    async fn send(&self, hook: &Stored, message_id: &str, body: Vec<u8>) -> Sent {
        let started = Instant::now();
        let fail = |error: String| Sent {
            status: None,
            latency_ms: started.elapsed().as_millis() as i64,
            error: Some(error),
        };
        let url = match check_url(&hook.webhook.spec.url, self.settings.deny_private).await {
            Ok(u) => u,
            Err(e) => return fail(e.to_string()),
        };
        let ts = now_ms() / 1000;
        // One signature per active cluster secret: receivers keep verifying
        // while the cluster secret is rotated.
        let signatures: Vec<String> = self
            .secrets
            .all()
            .iter()
            .map(|s| {
                let key = derive_secret(s, &hook.webhook.id, &hook.salt);
                wire::signature(&key, message_id, ts, &body)
            })
            .collect();
        let sent = self
            .http
            .post(url)
            .header("content-type", "application/json")
            .header("webhook-id", message_id)
            .header("webhook-timestamp", ts.to_string())
            .header("webhook-signature", signatures.join(" "))
            .body(body)
            .send()
            .await;
        match sent {
            Ok(resp) => {
                let status = resp.status();
                Sent {
                    status: Some(status.as_u16()),
                    latency_ms: started.elapsed().as_millis() as i64,
                    error: (!status.is_success()).then(|| format!("receiver answered {status}")),
                }
            }
            Err(e) => fail(sundial_proto::cause::chain(&e)),
        }
    }

    /// `POST /v1/webhooks/{id}/test`: sends a `webhook.test` message now and
    /// records the attempt (it does not move the cursor).
    /// The attempt is recorded with `actor`'s audit row (`webhook.test`).
    pub async fn send_test(&self, hook: &Stored, actor: Actor) -> Result<Delivery, StoreError> {
        let message_id = format!("test_{:016x}", rand::rng().random::<u64>());
        let body = serde_json::to_vec(&serde_json::json!({
            "type": "webhook.test",
            "at": sundial_proto::time::format_ms(now_ms()),
            "webhook": hook.webhook.id,
            "data": {"message": "a test delivery from Sundial"},
        }))
        .unwrap_or_default();
        let at = now_ms();
        let sent = self.send(hook, &message_id, body).await;
        let outcome = match sent.error {
            None => DeliveryOutcome::Delivered,
            Some(_) => DeliveryOutcome::Failed,
        };
        let attempt = Attempt {
            webhook_id: hook.webhook.id.clone(),
            message_id,
            event_id: None,
            attempt: 1,
            at,
            status: sent.status,
            latency_ms: sent.latency_ms,
            error: sent.error,
            outcome,
            next_attempt_at: None,
        };
        self.store
            .write(move |c| {
                let delivery = webhooks::record(c, &attempt)?;
                let state = audit::webhook_state(c, &attempt.webhook_id)?;
                let change = audit::Change {
                    action: Action::WebhookTest,
                    target: Some(&attempt.webhook_id),
                    before: state.clone(),
                    after: state,
                    detail: serde_json::json!({
                        "message_id": attempt.message_id,
                        "status": attempt.status,
                        "outcome": delivery.outcome,
                    }),
                };
                audit::record(c, now_ms(), &actor, &change)?;
                Ok(delivery)
            })
            .await
    }

    /// The term's loop: one delivery task per webhook, started and stopped
    /// as webhooks come and go; ends with the term.
    pub async fn run(self: Arc<Self>, term: CancellationToken) {
        let mut tasks: HashMap<String, (CancellationToken, JoinHandle<()>)> = HashMap::new();
        let mut backoff = loops::retry_backoff();
        loop {
            self.loops.begin(Loop::Webhooks);
            let wait = match self.store.read(webhooks::list).await {
                Ok(hooks) => {
                    self.loops.ok(Loop::Webhooks);
                    backoff.reset();
                    tasks.retain(|id, (stop, handle)| {
                        let keep =
                            hooks.iter().any(|h| &h.webhook.id == id) && !handle.is_finished();
                        if !keep {
                            stop.cancel();
                        }
                        keep
                    });
                    for h in hooks {
                        if let std::collections::hash_map::Entry::Vacant(slot) =
                            tasks.entry(h.webhook.id)
                        {
                            let stop = term.child_token();
                            let handle =
                                tokio::spawn(self.clone().follow(slot.key().clone(), stop.clone()));
                            slot.insert((stop, handle));
                        }
                    }
                    self.metrics.webhooks.set(tasks.len() as i64);
                    RESCAN
                }
                Err(e) => {
                    let d = backoff.next_delay();
                    self.loops.failed(Loop::Webhooks, &e, d);
                    d
                }
            };
            tokio::select! {
                _ = term.cancelled() => break,
                _ = tokio::time::sleep(wait) => {}
            }
        }
        for (_, (stop, handle)) in tasks {
            stop.cancel();
            let _ = handle.await;
        }
    }

    /// Delivers one webhook's events in order until `stop` (webhook deleted
    /// or term over).
    async fn follow(self: Arc<Self>, id: String, stop: CancellationToken) {
        let mut commits = self.store.commits();
        let mut backoff = loops::retry_backoff();
        while !stop.is_cancelled() {
            let wait = match self.step(&id).await {
                Ok(Step::Again) => {
                    backoff.reset();
                    continue;
                }
                Ok(Step::Gone) => return,
                Ok(Step::Idle) => {
                    backoff.reset();
                    RESCAN
                }
                Ok(Step::Until(at)) => {
                    backoff.reset();
                    Duration::from_millis((at - now_ms()).max(0) as u64)
                }
                Err(e) => {
                    let d = backoff.next_delay();
                    tracing::warn!(webhook = %id, error = %e, "webhook delivery step failed; retrying");
                    d
                }
            };
            tokio::select! {
                _ = stop.cancelled() => return,
                _ = commits.changed() => {}
                _ = tokio::time::sleep(wait) => {}
            }
        }
    }

    /// One step of a webhook: deliver (or retry) its next event, or say
    /// how long to wait.
    async fn step(&self, id: &str) -> Result<Step, StoreError> {
        let key = id.to_string();
        let Some(hook) = self.store.read(move |c| webhooks::get(c, &key)).await? else {
            return Ok(Step::Gone);
        };
        let spec = &hook.webhook.spec;
        let types = spec
            .events
            .iter()
            .map(|t| t.parse::<TypePattern>())
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| StoreError::Corrupt(format!("webhook {id}: {e}")))?;
        let filter = Filter {
            types,
            job: None,
            job_ids: spec.jobs.ids.clone(),
        };
        let cursor = hook.webhook.cursor;
        let now = now_ms();
        if let Some(at) = hook.webhook.next_attempt_at.filter(|at| *at > now) {
            return Ok(Step::Until(at));
        }
        let page = self
            .store
            .read(move |c| events::list(c, cursor, &filter, PAGE))
            .await?;
        if page.items.is_empty() {
            if page.cursor > cursor {
                // Nothing for this webhook among what was scanned: move past it.
                let (key, to) = (id.to_string(), page.cursor);
                self.store
                    .write(move |c| webhooks::skip_to(c, &key, to))
                    .await?;
                return Ok(if page.more { Step::Again } else { Step::Idle });
            }
            return Ok(Step::Idle);
        }
        // Send the page's events one after another, in order; what happened
        // is written in one transaction at the end (or when sending stops at
        // a failure), so a busy webhook costs one write per page, not per
        // event. A crash before that write repeats the page: at least once,
        // with the same webhook-ids.
        let mut done: Vec<Attempt> = Vec::new();
        let mut skipped_to = None;
        let mut next = Step::Again;
        let started = std::time::Instant::now();
        for event in page.items {
            if about_itself(id, &event) || !self.selected(&spec.jobs.labels, &event).await? {
                skipped_to = Some(event.id);
                continue;
            }
            // Only the event at the head carries earlier attempts.
            let first_in_page = done.is_empty() && skipped_to.is_none();
            let attempt = if first_in_page {
                hook.webhook.attempts + 1
            } else {
                1
            };
            let message_id = event.id.to_string();
            let sent = self
                .send(&hook, &message_id, body(spec.format, &event))
                .await;
            let at = now_ms();
            // The retry window counts from the event's time, not from its
            // first attempt: after an outage longer than the window each
            // older event is tried once more and given up, rather than
            // holding the webhook for a whole window each.
            let (outcome, next_attempt_at) = match &sent.error {
                None => (DeliveryOutcome::Delivered, None),
                Some(_) if at - event.at >= self.settings.retry_for_ms => {
                    (DeliveryOutcome::Failed, None)
                }
                Some(_) => (
                    DeliveryOutcome::Retrying,
                    Some(at + retry_delay_ms(attempt)),
                ),
            };
            self.metrics
                .webhook_deliveries
                .with_label_values(&[outcome.as_str()])
                .inc();
            match outcome {
                DeliveryOutcome::Delivered => {
                    let lag = (at - event.at).max(0) as f64 / 1000.0;
                    self.metrics.webhook_lag_seconds.observe(lag);
                }
                DeliveryOutcome::Failed => {
                    tracing::error!(webhook = %id, event = event.id, attempts = attempt, error = ?sent.error, "webhook delivery given up")
                }
                DeliveryOutcome::Retrying => {
                    tracing::warn!(webhook = %id, event = event.id, attempt, error = ?sent.error, "webhook delivery failed; will retry")
                }
            }
            done.push(Attempt {
                webhook_id: id.to_string(),
                message_id,
                event_id: Some(event.id),
                attempt,
                at,
                status: sent.status,
                latency_ms: sent.latency_ms,
                error: sent.error,
                outcome,
                next_attempt_at,
            });
            if let Some(t) = next_attempt_at {
                next = Step::Until(t);
                break;
            }
            if started.elapsed() >= FLUSH_EVERY {
                break;
            }
        }
        let key = id.to_string();
        self.store
            .write(move |c| {
                if let Some(to) = skipped_to {
                    webhooks::skip_to(c, &key, to)?;
                }
                for a in &done {
                    webhooks::record(c, a)?;
                }
                Ok(())
            })
            .await?;
        Ok(next)
    }

    /// Whether the event is for this webhook under its label selector (the
    /// job as it is now; a deleted job carries no labels).
    async fn selected(
        &self,
        labels: &std::collections::BTreeMap<String, String>,
        event: &Event,
    ) -> Result<bool, StoreError> {
        if labels.is_empty() {
            return Ok(true);
        }
        let Some(job) = event.job_id.clone() else {
            return Ok(false);
        };
        let labels = labels.clone();
        self.store
            .read(move |c| jobs::has_labels(c, &job, &labels))
            .await
    }
}

/// A `webhook.failed` about this webhook itself: not sent to it, or a dead
/// receiver subscribed to `*` would queue one more event about itself with
/// every event it gives up.
fn about_itself(id: &str, event: &Event) -> bool {
    event.kind == EventType::WebhookFailed && event.data["webhook"].as_str() == Some(id)
}

/// What a webhook's task does next.
enum Step {
    /// Something was delivered or skipped: look again at once.
    Again,
    /// Caught up: wait for new events.
    Idle,
    /// Retry at this instant.
    Until(i64),
    /// The webhook was deleted.
    Gone,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn private_addresses_are_recognised() {
        for ip in [
            "127.0.0.1",
            "10.1.2.3",
            "172.16.0.1",
            "192.168.1.1",
            "169.254.169.254",
            "100.64.0.1",
            "0.0.0.0",
            "::1",
            "fd00::1",
            "fe80::1",
            "::ffff:127.0.0.1",
            "::127.0.0.1",
            "64:ff9b::7f00:1",
            "64:ff9b::10.0.0.1",
        ] {
            assert!(is_private(ip.parse().unwrap()), "{ip}");
        }
        for ip in ["8.8.8.8", "1.1.1.1", "2606:4700::1111", "64:ff9b::808:808"] {
            assert!(!is_private(ip.parse().unwrap()), "{ip}");
        }
    }

    #[tokio::test]
    async fn urls_are_checked() {
        assert!(matches!(
            check_url("ftp://x/", false).await,
            Err(BadUrl::Scheme)
        ));
        assert!(matches!(
            check_url("not a url", false).await,
            Err(BadUrl::Parse(_))
        ));
        assert!(check_url("http://127.0.0.1:9/hook", false).await.is_ok());
        assert!(matches!(
            check_url("http://127.0.0.1:9/hook", true).await,
            Err(BadUrl::Private(..))
        ));
        assert!(matches!(
            check_url("http://[::1]:9/hook", true).await,
            Err(BadUrl::Private(..))
        ));
    }

    #[test]
    fn slack_text_carries_data_not_markup() {
        let e = Event {
            id: 1,
            at: 0,
            kind: EventType::RunFailed,
            job_id: Some("j<1>".into()),
            run_id: Some(6),
            node: Some("n&1".into()),
            data: serde_json::json!({"error": "<!channel> <https://evil.example|login> &lt;"}),
        };
        let body: serde_json::Value = serde_json::from_slice(&body(Format::Slack, &e)).unwrap();
        assert_eq!(
            body["text"],
            "Sundial: run.failed job=j&lt;1&gt; run=6 node=n&amp;1: \
             &lt;!channel&gt; &lt;https://evil.example|login&gt; &amp;lt;"
        );
    }

    #[test]
    fn retries_back_off_with_jitter_up_to_the_cap() {
        for n in 1..40 {
            let ceiling = (RETRY_BASE_MS << (n - 1).min(20)).min(RETRY_CAP_MS);
            let d = retry_delay_ms(n);
            assert!(d >= ceiling / 2 && d <= ceiling + 1, "{n}: {d}");
        }
    }

    #[test]
    fn a_webhook_is_not_sent_its_own_failures() {
        let event = |kind, data| Event {
            id: 1,
            at: 0,
            kind,
            job_id: None,
            run_id: None,
            node: None,
            data,
        };
        let own = event(
            EventType::WebhookFailed,
            serde_json::json!({"webhook": "wh_a"}),
        );
        assert!(about_itself("wh_a", &own));
        assert!(!about_itself("wh_b", &own));
        let other = event(
            EventType::JobCreated,
            serde_json::json!({"webhook": "wh_a"}),
        );
        assert!(!about_itself("wh_a", &other));
    }

    #[test]
    fn secrets_differ_per_webhook_and_salt() {
        let a = derive_secret(b"cluster-secret-0123456789", "wh_a", b"salt1");
        assert_ne!(
            a,
            derive_secret(b"cluster-secret-0123456789", "wh_b", b"salt1")
        );
        assert_ne!(
            a,
            derive_secret(b"cluster-secret-0123456789", "wh_a", b"salt2")
        );
        assert_ne!(
            a,
            derive_secret(b"another-cluster-secret-xx", "wh_a", b"salt1")
        );
    }
}
