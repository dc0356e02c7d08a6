//! The connection loop under [`crate::start`]: HTTP/1.1 on hyper with the limits of
//! [`HttpLimits`], in place of `axum::serve` (which exposes none of them).
//!
//! - **Header-read timeout.** hyper closes a connection that has not sent a complete
//!   request head within `header_read_timeout` of opening, or of finishing its previous
//!   request: a slowloris connection and an idle keep-alive connection alike.
//! - **Connection cap.** At most `max_connections` connections are served. When a new
//!   one arrives at the cap, the oldest connection that has not yet sent a complete
//!   request is closed to make room (those are the cheap ones for an attacker to open
//!   and the ones no client is waiting on); when every connection is busy with a
//!   request, the new one is closed at once. When the process runs out of file
//!   descriptors (`accept` fails), the same eviction frees one.
//! - **Body deadline.** A request body must arrive in full within `body_read_timeout`
//!   of its head; the extractors answer 408 otherwise ([`crate::extract::ApiJson`]).
//! - **Write timeout.** A write to the client that makes no progress for
//!   `write_timeout` (a client that stops reading its responses) closes the
//!   connection, WebSocket included.
//! - **Upgrades.** A Link's WebSocket leaves the HTTP connection it was upgraded from,
//!   and with it the cap: Link sessions are authenticated before the upgrade and are
//!   long-lived, so they must not be evicted nor take integrators' places.
//! - **Graceful shutdown.** On the shutdown signal the loop stops accepting, closes
//!   the connections that have not sent a request head, lets every other connection
//!   finish its request in flight, and returns when all have closed.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::pin::{Pin, pin};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;
use std::{fmt, io};

use axum::Router as AxumRouter;
use axum::body::{Body, Bytes};
use axum::extract::ConnectInfo;
use axum::http::Request;
use http_body::{Frame, SizeHint};
use hyper::body::Incoming;
use hyper_util::rt::{TokioIo, TokioTimer};
use parking_lot::Mutex;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{Notify, watch};
use tokio::time::{Instant, Sleep};
use tower::ServiceExt as _;

use crate::app::HttpLimits;
use crate::extract::BodyTimedOut;

/// The open connections, and those among them that may be evicted.
#[derive(Debug)]
struct Slots {
    max: usize,
    state: Mutex<SlotState>,
}

#[derive(Debug, Default)]
struct SlotState {
    /// Connections being served (evicted ones count until their task ends).
    open: usize,
    next_id: u64,
    /// Connections that have not yet sent a complete request head, oldest first.
    waiting: BTreeMap<u64, Arc<Notify>>,
}

/// One connection's place; dropping it frees the place.
#[derive(Debug)]
struct Slot {
    slots: Arc<Slots>,
    id: u64,
    /// Fires when the connection is evicted.
    evict: Arc<Notify>,
    /// Set on the connection's first complete request head.
    served: AtomicBool,
}

impl Slots {
    fn new(max: usize) -> Arc<Self> {
        Arc::new(Self {
            max: max.max(1),
            state: Mutex::new(SlotState::default()),
        })
    }

    /// A place for a new connection: a free one, or one freed by evicting the oldest
    /// connection still waiting for its request head; `None` when all are busy.
    fn admit(self: &Arc<Self>) -> Option<Slot> {
        let mut state = self.state.lock();
        if state.open >= self.max {
            let (_, oldest) = state.waiting.pop_first()?;
            // notify_one stores the wake-up if the task is not waiting yet.
            oldest.notify_one();
        }
        state.open += 1;
        let id = state.next_id;
        state.next_id += 1;
        let evict = Arc::new(Notify::new());
        state.waiting.insert(id, Arc::clone(&evict));
        Some(Slot {
            slots: Arc::clone(self),
            id,
            evict,
            served: AtomicBool::new(false),
        })
    }

    /// Evicts every connection waiting for its request head (at shutdown).
    fn evict_all_waiting(&self) {
        for (_, waiting) in std::mem::take(&mut self.state.lock().waiting) {
            waiting.notify_one();
        }
    }

    /// Evicts the oldest connection waiting for its request head, if any.
    fn evict_oldest(&self) -> bool {
        match self.state.lock().waiting.pop_first() {
            Some((_, oldest)) => {
                oldest.notify_one();
                true
            }
            None => false,
        }
    }
}

impl Slot {
    /// The connection sent a complete request head: it is no longer evictable.
    fn served(&self) {
        if !self.served.swap(true, Ordering::Relaxed) {
            self.slots.state.lock().waiting.remove(&self.id);
        }
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        let mut state = self.slots.state.lock();
        state.open = state.open.saturating_sub(1);
        state.waiting.remove(&self.id);
    }
}

/// Whether an `accept` error concerns only the connection being accepted.
fn is_connection_error(e: &std::io::Error) -> bool {
    matches!(
        e.kind(),
        std::io::ErrorKind::ConnectionRefused
            | std::io::ErrorKind::ConnectionAborted
            | std::io::ErrorKind::ConnectionReset
    )
}

/// Serves `router` on `listener` under `limits` until `shutdown` completes, then
/// waits for the open connections to finish their requests.
pub(crate) async fn serve(
    listener: TcpListener,
    router: AxumRouter,
    limits: HttpLimits,
    shutdown: impl Future<Output = ()>,
) {
    let slots = Slots::new(limits.max_connections);
    // Dropped to tell connections to shut down gracefully.
    let (stop_tx, stop_rx) = watch::channel(());
    // Each connection holds a receiver; `closed()` resolves when all are gone.
    let (done_tx, done_rx) = watch::channel(());
    let mut shutdown = pin!(shutdown);
    loop {
        let (stream, remote) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(pair) => pair,
                Err(e) if is_connection_error(&e) => continue,
                Err(e) => {
                    // Out of file descriptors, most likely: free one (its task closes
                    // it at once), then retry. Logged at debug only when an eviction
                    // answered it, so that an attack cannot flood the log.
                    if slots.evict_oldest() {
                        tracing::debug!(error = %e, "accept failed: evicted a connection without a request head");
                        tokio::time::sleep(Duration::from_millis(1)).await;
                    } else {
                        tracing::warn!(error = %e, "accept failed");
                        tokio::time::sleep(Duration::from_millis(100)).await;
                    }
                    continue;
                }
            },
            () = &mut shutdown => break,
        };
        if let Err(e) = socket_options(&stream) {
            tracing::debug!(%remote, error = %e, "cannot set the socket's options");
        }
        let Some(slot) = slots.admit() else {
            tracing::debug!(%remote, "connection cap reached, every connection busy: closed");
            drop(stream);
            continue;
        };
        let conn = connection(
            stream,
            remote,
            router.clone(),
            limits,
            slot,
            stop_rx.clone(),
        );
        let done = done_rx.clone();
        tokio::spawn(async move {
            conn.await;
            drop(done);
        });
    }
    drop(listener);
    // Connections without a request head have nothing to finish: close them now
    // rather than at their header timeout; the others finish their request.
    slots.evict_all_waiting();
    drop(stop_tx);
    drop(stop_rx);
    drop(done_rx);
    done_tx.closed().await;
}

/// Serves one connection until it closes, is evicted, or shuts down gracefully.
async fn connection(
    stream: TcpStream,
    remote: SocketAddr,
    router: AxumRouter,
    limits: HttpLimits,
    slot: Slot,
    mut stop: watch::Receiver<()>,
) {
    let slot = Arc::new(slot);
    let evict = Arc::clone(&slot.evict);
    let service_slot = Arc::clone(&slot);
    let body_timeout = limits.body_read_timeout;
    let service = hyper::service::service_fn(move |mut request: Request<Incoming>| {
        service_slot.served();
        request.extensions_mut().insert(ConnectInfo(remote));
        let request = request.map(|body| deadline_body(body, body_timeout));
        router.clone().oneshot(request)
    });
    let mut builder = hyper::server::conn::http1::Builder::new();
    builder
        .timer(TokioTimer::new())
        .header_read_timeout(limits.header_read_timeout)
        .keep_alive(true);
    let mut conn = pin!(
        builder
            .serve_connection(
                TokioIo::new(WriteTimeoutIo::new(stream, limits.write_timeout)),
                service
            )
            .with_upgrades()
    );
    let mut stopping = false;
    loop {
        tokio::select! {
            served = conn.as_mut() => {
                if let Err(e) = served {
                    tracing::debug!(%remote, error = %e, "connection ended");
                }
                break;
            }
            () = evict.notified() => {
                tracing::debug!(%remote, "connection closed before its request head (cap reached, or shutdown)");
                break;
            }
            _ = stop.changed(), if !stopping => {
                stopping = true;
                conn.as_mut().graceful_shutdown();
            }
        }
    }
    drop(slot);
}

/// The request body, which fails with [`BodyTimedOut`] unless it ends within
/// `timeout` (empty bodies are passed as they are).
fn deadline_body(body: Incoming, timeout: Duration) -> Body {
    use http_body::Body as _;
    if body.is_end_stream() {
        Body::new(body)
    } else {
        Body::new(DeadlineBody {
            inner: body,
            deadline: Instant::now() + timeout,
            sleep: None,
        })
    }
}

/// A body with a deadline for its last byte.
struct DeadlineBody {
    inner: Incoming,
    deadline: Instant,
    /// Armed the first time the body has to wait.
    sleep: Option<Pin<Box<Sleep>>>,
}

impl http_body::Body for DeadlineBody {
    type Data = Bytes;
    type Error = axum::BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        let this = &mut *self;
        if let Poll::Ready(frame) = Pin::new(&mut this.inner).poll_frame(cx) {
            return Poll::Ready(frame.map(|f| f.map_err(Into::into)));
        }
        let deadline = this.deadline;
        let sleep = this
            .sleep
            .get_or_insert_with(|| Box::pin(tokio::time::sleep_until(deadline)));
        match sleep.as_mut().poll(cx) {
            Poll::Ready(()) => Poll::Ready(Some(Err(Box::new(BodyTimedOut)))),
            Poll::Pending => Poll::Pending,
        }
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

impl fmt::Debug for DeadlineBody {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("DeadlineBody")
            .field("deadline", &self.deadline)
            .finish_non_exhaustive()
    }
}

/// A stream whose writes fail with `TimedOut` once they have made no progress for
/// `timeout`: a peer that stops reading cannot hold the connection.
struct WriteTimeoutIo<T> {
    inner: T,
    timeout: Duration,
    /// Armed when a write first has to wait; cleared by any progress.
    stalled: Option<Pin<Box<Sleep>>>,
}

impl<T> WriteTimeoutIo<T> {
    fn new(inner: T, timeout: Duration) -> Self {
        Self {
            inner,
            timeout,
            stalled: None,
        }
    }

    /// Passes a write's outcome through, failing it when it has waited too long.
    fn check<R>(&mut self, cx: &mut Context<'_>, poll: Poll<io::Result<R>>) -> Poll<io::Result<R>> {
        if poll.is_ready() {
            self.stalled = None;
            return poll;
        }
        let timeout = self.timeout;
        let stalled = self
            .stalled
            .get_or_insert_with(|| Box::pin(tokio::time::sleep(timeout)));
        match stalled.as_mut().poll(cx) {
            Poll::Ready(()) => Poll::Ready(Err(io::Error::new(
                io::ErrorKind::TimedOut,
                "the peer stopped reading",
            ))),
            Poll::Pending => Poll::Pending,
        }
    }
}

impl<T: AsyncRead + Unpin> AsyncRead for WriteTimeoutIo<T> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for WriteTimeoutIo<T> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let poll = Pin::new(&mut self.inner).poll_write(cx, buf);
        self.check(cx, poll)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let poll = Pin::new(&mut self.inner).poll_write_vectored(cx, bufs);
        self.check(cx, poll)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let poll = Pin::new(&mut self.inner).poll_flush(cx);
        self.check(cx, poll)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let poll = Pin::new(&mut self.inner).poll_shutdown(cx);
        self.check(cx, poll)
    }
}

impl<T> fmt::Debug for WriteTimeoutIo<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("WriteTimeoutIo")
            .field("timeout", &self.timeout)
            .field("stalled", &self.stalled.is_some())
            .finish_non_exhaustive()
    }
}

/// An accepted connection's socket options.
///
/// - TCP keepalive and a user timeout ([`crate::heartbeat::keep_alive`]): a peer that
///   vanishes (a Link's power cut) is dropped by the kernel, whatever the heartbeat
///   interval it was asked for.
/// - `TCP_NODELAY`: the Cloud already writes what belongs together at once (a
///   response in one write, a Link's jobs combined by its outbox), so Nagle's
///   algorithm could only hold a write back while an earlier one is unacknowledged,
///   until the peer's delayed ACK (40 ms on Linux).
fn socket_options(stream: &tokio::net::TcpStream) -> io::Result<()> {
    crate::heartbeat::keep_alive(stream)?;
    stream.set_nodelay(true)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn accepted_sockets_send_at_once_and_are_kept_alive() {
        use crate::heartbeat::{KEEPALIVE_IDLE, KEEPALIVE_INTERVAL, KEEPALIVE_RETRIES};
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let _client = tokio::net::TcpStream::connect(addr).await.unwrap();
        let (accepted, _) = listener.accept().await.unwrap();
        assert!(
            !accepted.nodelay().unwrap(),
            "the default, which this changes"
        );
        socket_options(&accepted).unwrap();
        assert!(accepted.nodelay().unwrap());
        let socket = socket2::SockRef::from(&accepted);
        assert!(socket.keepalive().unwrap());
        assert_eq!(socket.tcp_keepalive_time().unwrap(), KEEPALIVE_IDLE);
        assert_eq!(socket.tcp_keepalive_interval().unwrap(), KEEPALIVE_INTERVAL);
        assert_eq!(socket.tcp_keepalive_retries().unwrap(), KEEPALIVE_RETRIES);
        let timeout = socket.tcp_user_timeout().unwrap();
        assert_eq!(timeout, Some(crate::heartbeat::USER_TIMEOUT));
    }

    #[test]
    fn at_the_cap_the_oldest_waiting_connection_is_evicted() {
        let slots = Slots::new(2);
        let a = slots.admit().expect("first");
        let b = slots.admit().expect("second");
        a.served();
        // At the cap: b is the oldest still waiting, so it makes room.
        let c = slots.admit().expect("third evicts b");
        assert_eq!(slots.state.lock().open, 3, "b counts until its task ends");
        drop(b);
        assert_eq!(slots.state.lock().open, 2);
        c.served();
        // Everyone busy: a new connection is refused.
        assert!(slots.admit().is_none());
        drop(a);
        assert!(slots.admit().is_some());
    }

    #[test]
    fn a_slot_is_freed_when_dropped() {
        let slots = Slots::new(1);
        let a = slots.admit().expect("first");
        drop(a);
        let state = slots.state.lock();
        assert_eq!(state.open, 0);
        assert!(state.waiting.is_empty());
    }
}
