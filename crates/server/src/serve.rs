//! The accept loop: HTTP/1.1 with keep-alive (and HTTP/2 over TLS), bounded connections,
//! header size and count limits (431), a header-read timeout that also closes idle keep-alive
//! connections of either protocol, requests run in place on their connection's task, and
//! graceful shutdown.

use std::convert::Infallible;
use std::future::Future;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use std::net::{IpAddr, SocketAddr};

use std::task::Poll;

use hyper::body::Incoming;
use hyper::server::conn::{http1, http2};
use hyper::service::Service;
use hyper::{Request, Response};
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::graceful::{GracefulShutdown, Watcher};
pub use ipnet::IpNet;
use tokio::net::{TcpListener, TcpSocket, TcpStream};
use tokio::sync::{watch, OwnedSemaphorePermit, Semaphore};

use crate::relay::Relay;
use crate::respond::Body;
use crate::tls::Tls;
pub use cal_relay_config::{ServerConfig, MIN_HEADER_BYTES};

/// Parse CIDRs (`10.0.0.0/8`, `::1/128`) or plain addresses (`127.0.0.1`, a /32 or /128).
pub fn parse_nets(items: &[String]) -> Result<Vec<IpNet>, String> {
    items
        .iter()
        .map(|s| {
            s.parse::<IpNet>()
                .or_else(|_| s.parse::<IpAddr>().map(IpNet::from))
                .map_err(|_| format!("{s:?} is not a CIDR such as 10.0.0.0/8"))
        })
        .collect()
}

/// Bind `listen` with the configured backlog.
pub fn bind(config: &ServerConfig) -> std::io::Result<TcpListener> {
    let addr: SocketAddr = config
        .listen
        .parse()
        .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidInput, e))?;
    let socket = if addr.is_ipv4() {
        TcpSocket::new_v4()?
    } else {
        TcpSocket::new_v6()?
    };
    socket.set_reuseaddr(true)?;
    socket.bind(addr)?;
    socket.listen(config.listen_backlog)
}

/// Serve `relay` on `listener` until `shutdown` resolves, then stop accepting, let in-flight
/// requests finish within `shutdown_timeout_ms`, and flush the sinks.
pub async fn serve(
    listener: TcpListener,
    relay: Arc<Relay>,
    config: &ServerConfig,
    tls: Option<Arc<Tls>>,
    shutdown: impl Future<Output = ()>,
) {
    // Tells HTTP/2 connections, which close themselves (see `serve_h2`), that shutdown began.
    let (stopping, stop) = watch::channel(false);
    let connections = Connections::new(relay.clone(), config, tls, stop);
    let slots = Arc::new(Semaphore::new(config.max_connections.max(1)));
    tokio::pin!(shutdown);
    while let Some((stream, peer, permit)) = accept(&listener, &slots, &mut shutdown).await {
        connections.spawn(stream, peer, permit);
    }
    drop(listener);
    tracing::info!("shutting down: draining in-flight requests");
    stopping.send_replace(true);
    let drain = config.shutdown_timeout_ms;
    if tokio::time::timeout(drain, connections.graceful.shutdown())
        .await
        .is_err()
    {
        tracing::warn!(
            timeout_ms = drain.as_millis() as u64,
            "in-flight requests did not finish in time"
        );
    }
    relay.shutdown_outputs().await;
    tracing::info!("stopped");
}

/// The next connection and its slot, or `None` once shutdown began. At the connection limit
/// this waits before accepting: new connections wait in the kernel's backlog (bounded by
/// `listen_backlog`) instead of each costing a task and buffers here.
async fn accept<S: Future<Output = ()>>(
    listener: &TcpListener,
    slots: &Arc<Semaphore>,
    shutdown: &mut std::pin::Pin<&mut S>,
) -> Option<(TcpStream, SocketAddr, OwnedSemaphorePermit)> {
    let permit = tokio::select! {
        p = slots.clone().acquire_owned() => p.ok()?,
        () = shutdown.as_mut() => return None,
    };
    loop {
        tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((stream, peer)) => return Some((stream, peer, permit)),
                Err(e) => {
                    // Out of file descriptors and the like: back off instead of spinning.
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            },
            () = shutdown.as_mut() => return None,
        }
    }
}

/// What every connection is served with: the relay, the protocol settings, and shutdown.
struct Connections {
    relay: Arc<Relay>,
    tls: Option<Arc<Tls>>,
    h1: http1::Builder,
    h2: http2::Builder<TokioExecutor>,
    header_timeout: Duration,
    graceful: GracefulShutdown,
    stop: watch::Receiver<bool>,
}

impl Connections {
    fn new(
        relay: Arc<Relay>,
        config: &ServerConfig,
        tls: Option<Arc<Tls>>,
        stop: watch::Receiver<bool>,
    ) -> Connections {
        let header_timeout = config.header_read_timeout_ms;
        let mut h1 = http1::Builder::new();
        h1.timer(TokioTimer::new())
            .header_read_timeout(header_timeout)
            .keep_alive(true)
            // A client that sends its whole request and closes (or half-closes) still has it
            // handled: without this, hyper drops the connection, and the body with it, as soon
            // as it reads the EOF.
            .half_close(true)
            .max_buf_size(config.max_header_bytes.max(MIN_HEADER_BYTES))
            // Answers are a few hundred bytes: one flat buffer and one write beat writev
            // (about 5% more deliveries/s in A/B runs under the bench load).
            .writev(false);
        // hyper keeps 100 header slots on the stack; another count costs a heap allocation.
        if config.max_headers != 100 {
            h1.max_headers(config.max_headers.max(1));
        }
        let mut h2 = http2::Builder::new(TokioExecutor::new());
        h2.timer(TokioTimer::new())
            .max_concurrent_streams(u32::try_from(config.max_in_flight).unwrap_or(u32::MAX))
            .max_header_list_size(u32::try_from(config.max_header_bytes).unwrap_or(u32::MAX))
            // A peer gone without a word is found by pings, as a request runs.
            .keep_alive_interval(Some(H2_PING_INTERVAL))
            .keep_alive_timeout(header_timeout);
        Connections {
            relay,
            tls,
            h1,
            h2,
            header_timeout,
            graceful: GracefulShutdown::new(),
            stop,
        }
    }

    /// Serve one connection in a task of its own, which holds `permit` until it ends.
    fn spawn(&self, stream: TcpStream, peer: SocketAddr, permit: OwnedSemaphorePermit) {
        let _ = stream.set_nodelay(true);
        let open = self.relay.metrics().connections.clone();
        let watcher = self.graceful.watcher();
        let Some(tls) = self.tls.clone() else {
            let handler = Handler::new(&self.relay, peer, None);
            let conn = watcher.watch(self.h1.serve_connection(TokioIo::new(stream), handler));
            tokio::spawn(async move {
                open.inc();
                if let Err(e) = conn.await {
                    tracing::debug!(%peer, error = %e, "connection ended with an error");
                }
                open.dec();
                drop(permit);
            });
            return;
        };
        // Requests running and when the last ended: an HTTP/2 connection is idle when none is.
        let activity = Arc::new(Activity::new());
        let handler = Handler::new(&self.relay, peer, Some(activity.clone()));
        let secure = Secure {
            tls,
            h1: self.h1.clone(),
            h2: self.h2.clone(),
            header_timeout: self.header_timeout,
            stop: self.stop.clone(),
        };
        tokio::spawn(async move {
            open.inc();
            secure
                .serve(stream, peer, handler, &activity, watcher)
                .await;
            open.dec();
            drop(permit);
        });
    }
}

/// One TLS connection's settings: HTTP/2 when the client chose it by ALPN, HTTP/1.1 otherwise.
struct Secure {
    tls: Arc<Tls>,
    h1: http1::Builder,
    h2: http2::Builder<TokioExecutor>,
    header_timeout: Duration,
    stop: watch::Receiver<bool>,
}

impl Secure {
    async fn serve(
        self,
        stream: TcpStream,
        peer: SocketAddr,
        handler: Handler,
        activity: &Activity,
        watcher: Watcher,
    ) {
        // The handshake gets the same time as a request head.
        let handshake = self.tls.acceptor().accept(stream);
        let stream = match tokio::time::timeout(self.header_timeout, handshake).await {
            Ok(Ok(stream)) => stream,
            Ok(Err(e)) => return tracing::debug!(%peer, error = %e, "TLS handshake failed"),
            Err(_) => return tracing::debug!(%peer, "TLS handshake timed out"),
        };
        let h2_chosen = stream.get_ref().1.alpn_protocol() == Some(b"h2");
        let io = TokioIo::new(stream);
        let result = if h2_chosen {
            // The watcher only holds shutdown until this connection ends.
            let _held = watcher;
            let conn = self.h2.serve_connection(io, handler);
            serve_h2(conn, activity, self.header_timeout, self.stop).await
        } else {
            watcher.watch(self.h1.serve_connection(io, handler)).await
        };
        if let Err(e) = result {
            tracing::debug!(%peer, error = %e, "connection ended with an error");
        }
    }
}

/// The service each connection runs: its requests go to the relay with the client's address.
#[derive(Clone)]
struct Handler {
    relay: Arc<Relay>,
    peer: SocketAddr,
    activity: Option<Arc<Activity>>,
}

impl Handler {
    fn new(relay: &Arc<Relay>, peer: SocketAddr, activity: Option<Arc<Activity>>) -> Handler {
        Handler {
            relay: relay.clone(),
            peer,
            activity,
        }
    }
}

impl Service<Request<Incoming>> for Handler {
    type Response = Response<Body>;
    type Error = Infallible;
    type Future = RunToEnd<Result<Response<Body>, Infallible>>;

    fn call(&self, req: Request<Incoming>) -> Self::Future {
        let relay = self.relay.clone();
        let peer = self.peer;
        let busy = self.activity.as_ref().map(|a| a.begin());
        // Once its body is read, a delivery is handled to the end (spooled or published,
        // remembered, counted) even if the client goes away and hyper drops this future:
        // what is left of it then runs in a task of its own.
        RunToEnd::new(async move {
            let response = relay.handle(req, peer).await;
            drop(busy);
            Ok(response)
        })
    }
}

/// How often an HTTP/2 connection is pinged while open.
const H2_PING_INTERVAL: Duration = Duration::from_secs(20);

/// Requests running on one connection, and since when none has been.
struct Activity {
    running: AtomicUsize,
    /// Milliseconds since `epoch` when the last request ended (or the connection opened).
    idle_since_ms: AtomicU64,
    epoch: Instant,
}

/// One running request of an [`Activity`]; its end marks the time.
struct Busy(Arc<Activity>);

impl Activity {
    fn new() -> Activity {
        Activity {
            running: AtomicUsize::new(0),
            idle_since_ms: AtomicU64::new(0),
            epoch: Instant::now(),
        }
    }

    fn begin(self: &Arc<Self>) -> Busy {
        self.running.fetch_add(1, Ordering::AcqRel);
        Busy(self.clone())
    }

    /// How long no request has run (zero while one does).
    fn idle_for(&self) -> Duration {
        if self.running.load(Ordering::Acquire) > 0 {
            return Duration::ZERO;
        }
        let since = Duration::from_millis(self.idle_since_ms.load(Ordering::Acquire));
        self.epoch.elapsed().saturating_sub(since)
    }
}

impl Drop for Busy {
    fn drop(&mut self) {
        let now = self.0.epoch.elapsed().as_millis() as u64;
        self.0.idle_since_ms.store(now, Ordering::Release);
        self.0.running.fetch_sub(1, Ordering::AcqRel);
    }
}

/// Drive an HTTP/2 connection as HTTP/1's keep-alive is driven: closed (GOAWAY) once no
/// request has run on it for `idle` (the header-read timeout), or when shutdown begins; a peer
/// that does not finish the close within `idle` more (one that stopped reading) is dropped, so
/// neither `max_connections` idle connections nor one silent peer can hold the relay.
async fn serve_h2<C>(
    conn: C,
    activity: &Activity,
    idle: Duration,
    mut stop: watch::Receiver<bool>,
) -> Result<(), hyper::Error>
where
    C: Future<Output = Result<(), hyper::Error>> + H2Close,
{
    let mut conn = std::pin::pin!(conn);
    let mut tick = tokio::time::interval((idle / 4).max(Duration::from_millis(50)));
    let mut closing: Option<tokio::time::Instant> = None;
    loop {
        tokio::select! {
            result = conn.as_mut() => return result,
            _ = stop.wait_for(|s| *s), if closing.is_none() => {
                conn.as_mut().close();
                closing = Some(tokio::time::Instant::now() + idle);
            }
            _ = tick.tick() => match closing {
                None if activity.idle_for() >= idle => {
                    conn.as_mut().close();
                    closing = Some(tokio::time::Instant::now() + idle);
                }
                Some(deadline) if tokio::time::Instant::now() >= deadline => return Ok(()),
                _ => {}
            },
        }
    }
}

/// The graceful close of an HTTP/2 server connection (a trait so `serve_h2` names no
/// connection type's generics).
trait H2Close {
    fn close(self: std::pin::Pin<&mut Self>);
}

impl<I, S, E, B> H2Close for http2::Connection<I, S, E>
where
    S: hyper::service::HttpService<hyper::body::Incoming, ResBody = B>,
    S::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
    I: hyper::rt::Read + hyper::rt::Write + Unpin,
    B: hyper::body::Body + 'static,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
    E: hyper::rt::bounds::Http2ServerConnExec<S::Future, B>,
{
    fn close(self: std::pin::Pin<&mut Self>) {
        self.graceful_shutdown();
    }
}

/// A future that, dropped before it completed, is finished in a task of its own instead of
/// being cancelled. Polled in place otherwise: no task per request.
struct RunToEnd<O: Send + 'static>(Option<std::pin::Pin<Box<dyn Future<Output = O> + Send>>>);

impl<O: Send + 'static> RunToEnd<O> {
    fn new(future: impl Future<Output = O> + Send + 'static) -> Self {
        RunToEnd(Some(Box::pin(future)))
    }
}

impl<O: Send + 'static> Future for RunToEnd<O> {
    type Output = O;

    fn poll(mut self: std::pin::Pin<&mut Self>, cx: &mut std::task::Context<'_>) -> Poll<O> {
        let Some(future) = self.0.as_mut() else {
            return Poll::Pending;
        };
        let output = std::task::ready!(future.as_mut().poll(cx));
        self.0 = None;
        Poll::Ready(output)
    }
}

impl<O: Send + 'static> Drop for RunToEnd<O> {
    fn drop(&mut self) {
        if let Some(future) = self.0.take() {
            if let Ok(runtime) = tokio::runtime::Handle::try_current() {
                runtime.spawn(future);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::RunToEnd;
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::sync::Arc;
    use std::time::Duration;

    #[tokio::test]
    async fn a_dropped_request_future_still_runs_to_its_end() {
        let finished = Arc::new(AtomicBool::new(false));
        let flag = finished.clone();
        let future = RunToEnd::new(async move {
            tokio::time::sleep(Duration::from_millis(50)).await;
            flag.store(true, Ordering::SeqCst);
        });
        // Polled once (as hyper does), then dropped (the client went away).
        let _ = tokio::time::timeout(Duration::from_millis(1), future).await;
        tokio::time::sleep(Duration::from_millis(200)).await;
        assert!(finished.load(Ordering::SeqCst));
    }

    #[tokio::test]
    async fn a_finished_one_is_not_run_again() {
        let runs = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let count = runs.clone();
        // Counts every poll (an async block would panic, unseen, if polled again).
        RunToEnd::new(std::future::poll_fn(move |_| {
            count.fetch_add(1, Ordering::SeqCst);
            std::task::Poll::Ready(())
        }))
        .await;
        tokio::time::sleep(Duration::from_millis(20)).await;
        assert_eq!(runs.load(Ordering::SeqCst), 1);
    }
}
