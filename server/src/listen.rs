//! The HTTP accept loop, plain and TLS, with the connection-level overload
//! limits of [`crate::overload`]:
//!
//! - at most `max_connections` connections are open; a connection beyond it
//!   is answered `503 overloaded` (plain HTTP) or closed (TLS) at once;
//! - a client must send its request head within `header_read_timeout`
//!   (hyper's HTTP/1 header timer), and the first bytes of a connection
//!   within the same time (the HTTP/1-or-h2c sniffing comes before hyper's
//!   timer runs); an idle keep-alive connection is closed after it too.
//!
//! A stalled connection costs a socket and a sleeping timer, no task wakeups.
//! Graceful shutdown: stop accepting, let requests finish (long-lived
//! streams end on `App.shutdown`), give up on connections after [`GRACE`].

use crate::metrics::Metrics;
use crate::overload::Limits;
use axum::extract::ConnectInfo;
use axum::Router;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto::Builder;
use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio::time::Sleep;
use tokio_util::sync::CancellationToken;
use tower::ServiceExt;

/// How long shutdown waits for open connections before dropping them.
pub const GRACE: Duration = Duration::from_secs(30);

/// Bytes a connection must deliver before the sniffing deadline is lifted:
/// the length of the HTTP/2 preface, which decides the protocol (here by
/// peeking, over TLS inside hyper-util's auto builder) before any timer of
/// hyper's own runs.
const SNIFF_BYTES: usize = 24;

/// What a refused connection gets (plain HTTP only), written without waiting.
const REFUSED: &[u8] = b"HTTP/1.1 503 Service Unavailable\r\n\
content-type: application/json\r\nretry-after: 1\r\nconnection: close\r\ncontent-length: 85\r\n\r\n\
{\"error\":{\"code\":\"overloaded\",\"message\":\"too many open connections; retry shortly\"}}\n";

/// One open connection's share of `max_connections`; counted in the gauge.
struct Slot {
    _permit: OwnedSemaphorePermit,
    metrics: Arc<Metrics>,
}

impl Slot {
    fn take(sem: &Arc<Semaphore>, metrics: &Arc<Metrics>) -> Option<Slot> {
        let permit = sem.clone().try_acquire_owned().ok();
        let Some(permit) = permit else {
            metrics.overload.connections_refused.inc();
            return None;
        };
        metrics.overload.connections_open.inc();
        Some(Slot {
            _permit: permit,
            metrics: metrics.clone(),
        })
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        self.metrics.overload.connections_open.dec();
    }
}

/// A connection's stream holding its [`Slot`], with a deadline for its first
/// [`SNIFF_BYTES`] bytes.
pub(crate) struct Guarded<S> {
    inner: S,
    slot: Slot,
    read: usize,
    deadline: Option<Pin<Box<Sleep>>>,
}

impl<S> Guarded<S> {
    fn new(inner: S, slot: Slot, first_bytes_within: Duration) -> Self {
        Guarded {
            inner,
            slot,
            read: 0,
            deadline: Some(Box::pin(tokio::time::sleep(first_bytes_within))),
        }
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for Guarded<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        let this = &mut *self;
        match Pin::new(&mut this.inner).poll_read(cx, buf) {
            Poll::Ready(r) => {
                this.read += buf.filled().len() - before;
                if this.read >= SNIFF_BYTES {
                    this.deadline = None;
                }
                Poll::Ready(r)
            }
            Poll::Pending => {
                let expired = this
                    .deadline
                    .as_mut()
                    .is_some_and(|d| d.as_mut().poll(cx).is_ready());
                if !expired {
                    return Poll::Pending;
                }
                this.deadline = None;
                this.slot
                    .metrics
                    .overload
                    .timeouts
                    .with_label_values(&["header"])
                    .inc();
                Poll::Ready(Err(io::Error::new(
                    io::ErrorKind::TimedOut,
                    "client sent too little within the header read timeout",
                )))
            }
        }
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Guarded<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }
}

/// The HTTP/1 limits, for hyper's builder and hyper-util's auto builder
/// alike (they have the same setters but no common trait).
macro_rules! http1_limits {
    ($builder:expr, $limits:expr) => {
        $builder
            .timer(TokioTimer::new())
            .header_read_timeout($limits.header_read_timeout)
    };
}

/// The HTTP/2 limits (see [`http1_limits`]).
macro_rules! http2_limits {
    ($builder:expr, $limits:expr) => {
        $builder
            .timer(TokioTimer::new())
            .keep_alive_interval($limits.header_read_timeout)
            .keep_alive_timeout($limits.header_read_timeout)
            .max_concurrent_streams(256)
    };
}

/// Applies the limits to the auto builder the TLS listener uses.
fn configure(builder: &mut Builder<TokioExecutor>, limits: &Limits) {
    http1_limits!(builder.http1(), limits);
    http2_limits!(builder.http2(), limits);
}

/// The HTTP/2 connection preface a prior-knowledge (h2c) client opens with.
const H2_PREFACE: &[u8; SNIFF_BYTES] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

/// The protocol a plain connection speaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Protocol {
    Http1,
    Http2,
}

/// What the first bytes say: `None` while they are a strict prefix of the
/// HTTP/2 preface (more are needed to tell).
fn protocol_of(first: &[u8]) -> Option<Protocol> {
    let n = first.len().min(SNIFF_BYTES);
    if first[..n] != H2_PREFACE[..n] {
        Some(Protocol::Http1)
    } else if n == SNIFF_BYTES {
        Some(Protocol::Http2)
    } else if n == 0 {
        // End of stream before a byte: let HTTP/1 see the EOF.
        Some(Protocol::Http1)
    } else {
        None
    }
}

/// Tells HTTP/1 from h2c by peeking, without consuming a byte. hyper-util's
/// auto builder reads the first bytes itself and hands them back through a
/// rewind buffer, which makes hyper grow every connection's read buffer from
/// 8 to 16 KiB; with 10,000 idle daemons that is 80 MB.
async fn sniff(stream: &TcpStream) -> io::Result<Protocol> {
    let mut first = [0u8; SNIFF_BYTES];
    loop {
        let n = stream.peek(&mut first).await?;
        if let Some(p) = protocol_of(&first[..n]) {
            return Ok(p);
        }
        // A preface cut short: peek returns at once while bytes wait, so pause.
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

/// Counts a connection that ended on hyper's header timer.
fn note_end(metrics: &Metrics, result: Result<(), Box<dyn std::error::Error + Send + Sync>>) {
    let Err(e) = result else { return };
    let timed_out = e
        .downcast_ref::<hyper::Error>()
        .is_some_and(hyper::Error::is_timeout);
    if timed_out {
        metrics
            .overload
            .timeouts
            .with_label_values(&["header"])
            .inc();
    }
    tracing::debug!(error = %e, "connection ended with an error");
}

/// Serves plain HTTP on `listener` until `stop` is cancelled.
pub(crate) async fn serve_plain(
    listener: TcpListener,
    router: Router,
    limits: Limits,
    metrics: Arc<Metrics>,
    stop: CancellationToken,
) -> io::Result<()> {
    let mut http1 = hyper::server::conn::http1::Builder::new();
    http1_limits!(http1, limits);
    let mut http2 = hyper::server::conn::http2::Builder::new(TokioExecutor::new());
    http2_limits!(http2, limits);
    let builders = Arc::new((http1, http2));
    let slots = Arc::new(Semaphore::new(limits.max_connections));
    let graceful = hyper_util::server::graceful::GracefulShutdown::new();
    loop {
        let (stream, peer) = tokio::select! {
            r = listener.accept() => match r {
                Ok(c) => c,
                Err(e) => {
                    // Out of descriptors and the like: back off instead of spinning.
                    tracing::warn!(error = %e, "accepting a connection");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            _ = stop.cancelled() => break,
        };
        let Some(slot) = Slot::take(&slots, &metrics) else {
            // Best effort, never waits: the socket buffer of a new connection has room.
            let _ = stream.try_write(REFUSED);
            continue;
        };
        let _ = stream.set_nodelay(true);
        let router = router.clone();
        let service = hyper::service::service_fn(move |mut req: hyper::Request<_>| {
            req.extensions_mut().insert(ConnectInfo(peer));
            router.clone().oneshot(req)
        });
        let (builders, watcher, metrics) = (builders.clone(), graceful.watcher(), metrics.clone());
        let (within, stop) = (limits.header_read_timeout, stop.clone());
        tokio::spawn(async move {
            let started = tokio::time::Instant::now();
            let sniffed = tokio::select! {
                r = tokio::time::timeout(within, sniff(&stream)) => r,
                // Shutting down: a connection that has not spoken is dropped.
                _ = stop.cancelled() => return,
            };
            let protocol = match sniffed {
                Ok(Ok(p)) => p,
                Ok(Err(e)) => {
                    return tracing::debug!(error = %e, "connection ended before a request")
                }
                Err(_) => {
                    metrics
                        .overload
                        .timeouts
                        .with_label_values(&["header"])
                        .inc();
                    return;
                }
            };
            // The first bytes' deadline counts from the accept, sniffing included.
            let left = within.saturating_sub(started.elapsed());
            let io = TokioIo::new(Guarded::new(stream, slot, left));
            let result = match protocol {
                Protocol::Http1 => {
                    let conn = builders.0.serve_connection(io, service);
                    watcher.watch(conn).await.map_err(Into::into)
                }
                Protocol::Http2 => {
                    let conn = builders.1.serve_connection(io, service);
                    watcher.watch(conn).await.map_err(Into::into)
                }
            };
            note_end(&metrics, result)
        });
    }
    drop(listener);
    if tokio::time::timeout(GRACE, graceful.shutdown())
        .await
        .is_err()
    {
        tracing::warn!("connections still open after the shutdown grace period; dropping them");
    }
    Ok(())
}

/// Wraps axum_server's TLS acceptor: takes a connection slot before the
/// handshake and guards the decrypted stream.
#[derive(Clone)]
struct CappedTls {
    inner: axum_server::tls_rustls::RustlsAcceptor,
    slots: Arc<Semaphore>,
    metrics: Arc<Metrics>,
    limits: Limits,
}

impl<S: Send + 'static> axum_server::accept::Accept<TcpStream, S> for CappedTls {
    type Stream = Guarded<TlsStream>;
    type Service = S;
    type Future = Pin<Box<dyn std::future::Future<Output = io::Result<(Self::Stream, S)>> + Send>>;

    fn accept(&self, stream: TcpStream, service: S) -> Self::Future {
        let slot = Slot::take(&self.slots, &self.metrics);
        let inner = self.inner.clone();
        let within = self.limits.header_read_timeout;
        Box::pin(async move {
            let Some(slot) = slot else {
                return Err(io::Error::other("max_connections reached"));
            };
            let (tls, service) = inner.accept(stream, service).await?;
            Ok((Guarded::new(tls, slot, within), service))
        })
    }
}

/// The TLS stream type axum_server's acceptor produces.
type TlsStream =
    <axum_server::tls_rustls::RustlsAcceptor as axum_server::accept::Accept<TcpStream, ()>>::Stream;

/// Serves HTTPS on `listener` until `stop` is cancelled.
pub(crate) async fn serve_tls(
    listener: TcpListener,
    config: axum_server::tls_rustls::RustlsConfig,
    router: Router,
    limits: Limits,
    metrics: Arc<Metrics>,
    stop: CancellationToken,
) -> io::Result<()> {
    let handle = axum_server::Handle::new();
    let h = handle.clone();
    tokio::spawn(async move {
        stop.cancelled().await;
        h.graceful_shutdown(Some(GRACE));
    });
    let acceptor = CappedTls {
        inner: axum_server::tls_rustls::RustlsAcceptor::new(config)
            .handshake_timeout(limits.header_read_timeout),
        slots: Arc::new(Semaphore::new(limits.max_connections)),
        metrics,
        limits,
    };
    let mut server = axum_server::from_tcp(listener.into_std()?).acceptor(acceptor);
    configure(server.http_builder(), &limits);
    server
        .handle(handle)
        .serve(router.into_make_service_with_connect_info::<SocketAddr>())
        .await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_first_bytes_tell_http1_from_h2c() {
        assert_eq!(protocol_of(b"GET / HTTP/1.1\r\n"), Some(Protocol::Http1));
        // "POST" shares its first letter with the preface's "PRI".
        assert_eq!(protocol_of(b"P"), None);
        assert_eq!(protocol_of(b"POST /v1/agent/poll"), Some(Protocol::Http1));
        assert_eq!(protocol_of(b"PRI * HTTP/2"), None);
        assert_eq!(protocol_of(H2_PREFACE), Some(Protocol::Http2));
        assert_eq!(protocol_of(b""), Some(Protocol::Http1));
    }

    #[test]
    fn refusal_is_a_well_formed_response() {
        let text = std::str::from_utf8(REFUSED).unwrap();
        let (head, body) = text.split_once("\r\n\r\n").unwrap();
        assert!(head.starts_with("HTTP/1.1 503 "));
        let length: usize = head
            .lines()
            .find_map(|l| l.strip_prefix("content-length: "))
            .unwrap()
            .parse()
            .unwrap();
        assert_eq!(length, body.len());
        let v: serde_json::Value = serde_json::from_str(body).unwrap();
        assert_eq!(v["error"]["code"], "overloaded");
    }
}
