//! [`serve`]: the HTTP server loop with limits on connections (time to send
//! the headers, idle time, how many at once) and a graceful shutdown.

use std::future::{Future, IntoFuture};
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use axum::Router;
use axum::body::Body;
use axum::extract::ConnectInfo;
use http::Request;
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use hyper_util::server::graceful::GracefulShutdown;
use hyper_util::service::TowerToHyperService;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Semaphore;
use tokio::time::Instant;
use tower::ServiceExt;

/// Limits of the connections [`serve`] accepts.
///
/// They bound what a client that connects and then stalls can hold: without
/// them each stalled connection keeps a file descriptor and memory for ever,
/// and a few hundred of them exhaust a common limit of 1024 descriptors.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct ServeOptions {
    /// How long a client may take to send a request's headers (HTTP/1): on a
    /// new connection from its start, on a kept-alive one from the end of the
    /// previous answer (10 s by default); then the connection is closed.
    pub header_timeout: Duration,
    /// How long a connection may go without a byte read or written (60 s by
    /// default); then it is closed. Idle keep-alive connections, stalled
    /// bodies and clients that stop reading their answer are all cut this
    /// way. Event streams send a heartbeat (every 15 s by default,
    /// [`RouterOptions::heartbeat`](crate::RouterOptions::heartbeat)), so
    /// they stay open.
    pub idle_timeout: Duration,
    /// How many connections are served at once (512 by default). When all
    /// are taken, the server stops accepting until one closes: new clients
    /// wait in the operating system's listen queue instead of exhausting the
    /// process's file descriptors. Keep it well under `ulimit -n`.
    pub max_connections: usize,
}

impl Default for ServeOptions {
    fn default() -> Self {
        ServeOptions {
            header_timeout: Duration::from_secs(10),
            idle_timeout: Duration::from_secs(60),
            max_connections: 512,
        }
    }
}

impl ServeOptions {
    /// Sets [`ServeOptions::header_timeout`].
    pub fn header_timeout(mut self, timeout: Duration) -> Self {
        self.header_timeout = timeout;
        self
    }

    /// Sets [`ServeOptions::idle_timeout`].
    pub fn idle_timeout(mut self, timeout: Duration) -> Self {
        self.idle_timeout = timeout;
        self
    }

    /// Sets [`ServeOptions::max_connections`].
    pub fn max_connections(mut self, connections: usize) -> Self {
        self.max_connections = connections;
        self
    }
}

/// Serves `app` on `listener` (HTTP/1.1 and HTTP/2) with the limits of
/// `options`, like `axum::serve` (which has none of them). Await the
/// returned [`Serve`]; it runs until [`Serve::with_graceful_shutdown`]'s
/// signal, or for ever. Requests carry their peer's address as
/// `ConnectInfo<SocketAddr>`.
///
/// When the shutdown signal fires, the `/events` streams of every
/// [`router`](crate::router) inside `app` end by themselves, so the server
/// stops at once even with browsers listening: no extra call is needed.
/// (With `axum::serve` instead, call [`SyncService::shutdown`](crate::SyncService::shutdown)
/// in the signal.)
///
/// ```no_run
/// use atomsync_server::{ServeOptions, Store, SyncService};
///
/// # async fn run() -> Result<(), Box<dyn std::error::Error>> {
/// let service = SyncService::new(Store::open("atomsync.db", Default::default())?);
/// let app: axum::Router = atomsync_server::router(service.clone());
/// let listener = tokio::net::TcpListener::bind("127.0.0.1:8090").await?;
/// atomsync_server::serve(listener, app, ServeOptions::default())
///     .with_graceful_shutdown(async {
///         let _ = tokio::signal::ctrl_c().await;
///     })
///     .await?;
/// # Ok(())
/// # }
/// ```
pub fn serve(listener: TcpListener, app: Router, options: ServeOptions) -> Serve {
    Serve {
        listener,
        app,
        options,
        signal: Box::pin(std::future::pending()),
    }
}

/// A server made by [`serve`]; await it to run it.
#[must_use = "a server does nothing until awaited"]
pub struct Serve {
    listener: TcpListener,
    app: Router,
    options: ServeOptions,
    signal: Pin<Box<dyn Future<Output = ()> + Send>>,
}

impl std::fmt::Debug for Serve {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Serve")
            .field("listener", &self.listener)
            .field("options", &self.options)
            .finish_non_exhaustive()
    }
}

impl Serve {
    /// Stops accepting when `signal` completes, ends the routes' `/events`
    /// streams, lets every connection finish the requests it has begun (an
    /// idle connection is closed at once), and returns when all are closed.
    pub fn with_graceful_shutdown<F>(mut self, signal: F) -> Self
    where
        F: Future<Output = ()> + Send + 'static,
    {
        self.signal = Box::pin(signal);
        self
    }
}

impl IntoFuture for Serve {
    type Output = io::Result<()>;
    type IntoFuture = Pin<Box<dyn Future<Output = io::Result<()>> + Send>>;

    fn into_future(self) -> Self::IntoFuture {
        Box::pin(run(self))
    }
}

async fn run(serve: Serve) -> io::Result<()> {
    let Serve {
        listener,
        app,
        options,
        mut signal,
    } = serve;
    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(options.header_timeout);
    builder.http2().timer(TokioTimer::new());
    let slots = Arc::new(Semaphore::new(
        options.max_connections.clamp(1, Semaphore::MAX_PERMITS),
    ));
    let graceful = GracefulShutdown::new();
    // Told to every request, so that the `/events` streams end on shutdown.
    let (stop, stopping) = tokio::sync::watch::channel(false);
    let mut warned_full: Option<Instant> = None;
    loop {
        let slot = match Arc::clone(&slots).try_acquire_owned() {
            Ok(slot) => slot,
            Err(_) => {
                if warned_full.is_none_or(|t| t.elapsed() > Duration::from_secs(60)) {
                    tracing::warn!(
                        max = options.max_connections,
                        "connection limit reached: new connections wait"
                    );
                    warned_full = Some(Instant::now());
                }
                tokio::select! {
                    slot = Arc::clone(&slots).acquire_owned() => {
                        slot.map_err(|_| io::Error::other("connection slots closed"))?
                    }
                    () = &mut signal => break,
                }
            }
        };
        let (stream, remote) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(e) => {
                    accept_error(e).await;
                    continue;
                }
            },
            () = &mut signal => break,
        };
        let _ = stream.set_nodelay(true);
        let watcher = graceful.watcher();
        let builder = builder.clone();
        let app = app.clone();
        let stopping = stopping.clone();
        let idle_timeout = options.idle_timeout;
        let header_timeout = options.header_timeout;
        tokio::spawn(async move {
            let activity = Arc::new(Activity::new());
            let io = TokioIo::new(IdleIo {
                inner: stream,
                activity: Arc::clone(&activity),
            });
            let service =
                TowerToHyperService::new(app.map_request(with_peer(remote, stopping.clone())));
            let connection = watcher.watch(builder.serve_connection_with_upgrades(io, service));
            tokio::select! {
                result = connection => {
                    if let Err(e) = result {
                        tracing::trace!(%remote, error = %e, "connection failed");
                    }
                }
                () = activity.idle_for(idle_timeout) => {
                    tracing::debug!(%remote, "idle connection closed");
                }
                // hyper's header timeout starts once the connection's HTTP
                // version is known, that is after its first bytes: a client
                // that sends nothing is cut here.
                () = activity.silent_for(header_timeout) => {
                    tracing::debug!(%remote, "silent connection closed");
                }
            }
            drop(slot);
        });
    }
    drop(listener);
    stop.send_replace(true);
    tracing::debug!("waiting for open connections to finish");
    graceful.shutdown().await;
    Ok(())
}

/// The server's shutdown, as a request extension: the `/events` route ends
/// its stream when it fires (or when the server is gone).
#[derive(Clone)]
pub(crate) struct Stopping(tokio::sync::watch::Receiver<bool>);

impl Stopping {
    /// Completes once the server shuts down.
    pub(crate) async fn wait(mut self) {
        let _stopped_or_gone = self.0.wait_for(|stop| *stop).await;
    }
}

fn with_peer(
    remote: SocketAddr,
    stopping: tokio::sync::watch::Receiver<bool>,
) -> impl Fn(Request<Incoming>) -> Request<Body> + Clone {
    move |mut request: Request<Incoming>| {
        request.extensions_mut().insert(ConnectInfo(remote));
        request.extensions_mut().insert(Stopping(stopping.clone()));
        request.map(Body::new)
    }
}

async fn accept_error(e: io::Error) {
    if matches!(
        e.kind(),
        io::ErrorKind::ConnectionRefused
            | io::ErrorKind::ConnectionAborted
            | io::ErrorKind::ConnectionReset
    ) {
        return;
    }
    // Most likely out of file descriptors (EMFILE): wait for some to close
    // rather than spin.
    tracing::error!(error = %e, "accept failed");
    tokio::time::sleep(Duration::from_secs(1)).await;
}

/// When a connection last moved a byte, and whether it ever received one.
struct Activity {
    start: Instant,
    /// Milliseconds from `start`.
    last: AtomicU64,
    received: AtomicBool,
}

impl Activity {
    fn new() -> Self {
        Activity {
            start: Instant::now(),
            last: AtomicU64::new(0),
            received: AtomicBool::new(false),
        }
    }

    fn touch(&self) {
        self.last
            .store(self.start.elapsed().as_millis() as u64, Ordering::Relaxed);
    }

    fn received(&self) {
        self.received.store(true, Ordering::Relaxed);
        self.touch();
    }

    /// Completes if no byte was received within `timeout` of the start;
    /// never, once one was.
    async fn silent_for(&self, timeout: Duration) {
        tokio::time::sleep_until(self.start + timeout).await;
        if self.received.load(Ordering::Relaxed) {
            std::future::pending::<()>().await;
        }
    }

    /// Completes once no byte moved for `timeout`.
    async fn idle_for(&self, timeout: Duration) {
        loop {
            let last = self.start + Duration::from_millis(self.last.load(Ordering::Relaxed));
            let deadline = last + timeout;
            if Instant::now() >= deadline {
                return;
            }
            tokio::time::sleep_until(deadline).await;
        }
    }
}

/// A stream that records every read and write that moved bytes.
struct IdleIo {
    inner: TcpStream,
    activity: Arc<Activity>,
}

impl AsyncRead for IdleIo {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        let poll = Pin::new(&mut self.inner).poll_read(cx, buf);
        if matches!(poll, Poll::Ready(Ok(()))) && buf.filled().len() > before {
            self.activity.received();
        }
        poll
    }
}

impl AsyncWrite for IdleIo {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let poll = Pin::new(&mut self.inner).poll_write(cx, buf);
        if matches!(poll, Poll::Ready(Ok(n)) if n > 0) {
            self.activity.touch();
        }
        poll
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let poll = Pin::new(&mut self.inner).poll_write_vectored(cx, bufs);
        if matches!(poll, Poll::Ready(Ok(n)) if n > 0) {
            self.activity.touch();
        }
        poll
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}
