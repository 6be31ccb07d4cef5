//! The HTTP accept loop, plain and TLS, with the connection-level overload
//! limits of [`crate::overload`]:
//!
//! - at most `max_connections` connections are open; a connection beyond it
//!   is answered `503 overloaded` (plain HTTP) or closed (TLS) at once;
//! - a client must send its request head within `header_read_timeout`
//!   (hyper's HTTP/1 header timer), and the first bytes of a connection
//!   within the same time (which the protocol sniffing before hyper's timer
//!   does not bound); an idle keep-alive connection is closed after it too.
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
/// the length of the HTTP/2 preface, which hyper reads before any timer of
/// its own runs.
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

/// Applies the limits to a hyper connection builder (HTTP/1 and HTTP/2).
fn configure(builder: &mut Builder<TokioExecutor>, limits: &Limits) {
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(limits.header_read_timeout);
    builder
        .http2()
        .timer(TokioTimer::new())
        .keep_alive_interval(limits.header_read_timeout)
        .keep_alive_timeout(limits.header_read_timeout)
        .max_concurrent_streams(256);
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
    let mut builder = Builder::new(TokioExecutor::new());
    configure(&mut builder, &limits);
    let builder = Arc::new(builder);
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
        let io = TokioIo::new(Guarded::new(stream, slot, limits.header_read_timeout));
        let router = router.clone();
        let service = hyper::service::service_fn(move |mut req: hyper::Request<_>| {
            req.extensions_mut().insert(ConnectInfo(peer));
            router.clone().oneshot(req)
        });
        let conn = builder.serve_connection(io, service).into_owned();
        let conn = graceful.watch(conn);
        let metrics = metrics.clone();
        tokio::spawn(async move { note_end(&metrics, conn.await) });
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
