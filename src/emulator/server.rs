//! The HTTP server: its thread and runtime, the accept loop and the hyper service.

use std::fmt;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::mpsc;
use std::thread::JoinHandle;
use std::time::Duration;

use hyper::body::Incoming;
use hyper::header::{HeaderName, HeaderValue};
use hyper::service::service_fn;
use hyper::{Request, Response};
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use tokio::sync::watch;
use tokio_rustls::TlsAcceptor;

use super::EmulatorError;
use super::checks::{check_api_version, check_destination, check_method, check_route, check_size, check_token, decode};
use super::entra::entra_route;
use super::faults::{Fault, status_error_code};
use super::ingest::ingest;
use super::management::check_access;
use super::request::{
    Body, BodyRead, DRAIN_LIMIT, MAX_CONTENT_LENGTH, Recorder, Route, api_version, bearer_matches, no_content,
    read_body, route,
};
use super::state::Shared;

/// Longest a request body may take to arrive.
const BODY_READ_TIMEOUT: Duration = Duration::from_secs(30);
/// How long shutdown waits for open connections to finish gracefully.
const GRACEFUL_WAIT: Duration = Duration::from_millis(500);
/// How long the handle waits for the server thread to exit.
const JOIN_WAIT: Duration = Duration::from_secs(5);

/// The error a service returns to make hyper close the connection without answering.
#[derive(Debug)]
struct Dropped;

impl fmt::Display for Dropped {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("connection dropped by the emulator")
    }
}

impl std::error::Error for Dropped {}

/// The running server: how to stop it and wait for it.
pub(crate) struct ServerHandle {
    shutdown: watch::Sender<bool>,
    done: mpsc::Receiver<()>,
    thread: Option<JoinHandle<()>>,
}

impl ServerHandle {
    /// Stops accepting, cuts injected latency short, closes connections and joins the thread,
    /// waiting at most a few seconds. Never panics.
    pub(crate) fn stop(&mut self) {
        let Some(thread) = self.thread.take() else {
            return;
        };
        self.shutdown.send_replace(true);
        match self.done.recv_timeout(JOIN_WAIT) {
            // The thread sent `done` (or exited and dropped the sender): joining is immediate.
            Ok(()) | Err(mpsc::RecvTimeoutError::Disconnected) => {
                let _ = thread.join();
            }
            // Still busy after the bound: leave it detached rather than block the caller.
            Err(mpsc::RecvTimeoutError::Timeout) => {}
        }
    }
}

/// Longest a client may take to finish the TLS handshake.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// Binds `addr`, starts the server thread and returns the bound address. With `tls`, every
/// connection is served over TLS (HTTP/1.1 or HTTP/2, as ALPN or the preface says).
pub(crate) fn spawn(
    shared: Arc<Shared>,
    addr: SocketAddr,
    tls: Option<TlsAcceptor>,
) -> Result<(SocketAddr, ServerHandle), EmulatorError> {
    let listener = std::net::TcpListener::bind(addr).map_err(EmulatorError::Bind)?;
    listener.set_nonblocking(true).map_err(EmulatorError::Bind)?;
    let local = listener.local_addr().map_err(EmulatorError::Bind)?;
    let (shutdown_tx, shutdown_rx) = watch::channel(false);
    let (ready_tx, ready_rx) = mpsc::channel::<Result<(), std::io::Error>>();
    let (done_tx, done_rx) = mpsc::channel::<()>();
    let thread = std::thread::Builder::new()
        .name(format!("logs-emulator-{}", local.port()))
        .spawn(move || {
            let rt = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
                Ok(rt) => rt,
                Err(e) => {
                    let _ = ready_tx.send(Err(e));
                    return;
                }
            };
            let listener = {
                let _guard = rt.enter();
                tokio::net::TcpListener::from_std(listener)
            };
            match listener {
                Ok(listener) => {
                    let _ = ready_tx.send(Ok(()));
                    rt.block_on(accept_loop(listener, tls, shared, shutdown_rx));
                }
                Err(e) => {
                    let _ = ready_tx.send(Err(e));
                }
            }
            // Cancels whatever is left (connections that ignored the graceful close).
            rt.shutdown_timeout(Duration::from_millis(100));
            let _ = done_tx.send(());
        })
        .map_err(EmulatorError::Thread)?;
    match ready_rx.recv() {
        Ok(Ok(())) => Ok((
            local,
            ServerHandle {
                shutdown: shutdown_tx,
                done: done_rx,
                thread: Some(thread),
            },
        )),
        Ok(Err(e)) => {
            let _ = thread.join();
            Err(EmulatorError::Runtime(e))
        }
        Err(_) => {
            let _ = thread.join();
            Err(EmulatorError::Runtime(std::io::Error::other(
                "emulator thread exited during start",
            )))
        }
    }
}

/// Resolves once shutdown is requested (or the handle is gone).
async fn stopped(rx: &mut watch::Receiver<bool>) {
    let _ = rx.wait_for(|stop| *stop).await;
}

async fn accept_loop(
    listener: tokio::net::TcpListener,
    tls: Option<TlsAcceptor>,
    shared: Arc<Shared>,
    mut shutdown: watch::Receiver<bool>,
) {
    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(Duration::from_secs(30))
        .keep_alive(true);
    builder.http2().timer(TokioTimer::new());
    let builder = Arc::new(builder);
    let mut conns = tokio::task::JoinSet::new();
    loop {
        tokio::select! {
            _ = stopped(&mut shutdown) => break,
            accepted = listener.accept() => match accepted {
                Ok((stream, _peer)) => {
                    let _ = stream.set_nodelay(true);
                    let (builder, shared, shutdown) = (builder.clone(), shared.clone(), shutdown.clone());
                    match tls.clone() {
                        None => conns.spawn(serve_connection(stream, builder, shared, shutdown)),
                        Some(acceptor) => conns.spawn(async move {
                            let handshake = tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(stream));
                            // A client that does not trust the certificate gives up here.
                            if let Ok(Ok(stream)) = handshake.await {
                                serve_connection(stream, builder, shared, shutdown).await;
                            }
                        }),
                    };
                }
                // Out of file descriptors and the like: back off briefly instead of spinning.
                Err(_) => tokio::time::sleep(Duration::from_millis(10)).await,
            },
            Some(_) = conns.join_next(), if !conns.is_empty() => {}
        }
    }
    drop(listener);
    let _ = tokio::time::timeout(GRACEFUL_WAIT + Duration::from_millis(100), async {
        while conns.join_next().await.is_some() {}
    })
    .await;
    conns.abort_all();
}

async fn serve_connection<S>(
    stream: S,
    builder: Arc<auto::Builder<TokioExecutor>>,
    shared: Arc<Shared>,
    mut shutdown: watch::Receiver<bool>,
) where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let svc_shutdown = shutdown.clone();
    let service = service_fn(move |req| handle(req, shared.clone(), svc_shutdown.clone()));
    let conn = builder.serve_connection(TokioIo::new(stream), service);
    tokio::pin!(conn);
    tokio::select! {
        _ = conn.as_mut() => {}
        _ = stopped(&mut shutdown) => {
            conn.as_mut().graceful_shutdown();
            let _ = tokio::time::timeout(GRACEFUL_WAIT, conn).await;
        }
    }
}

/// Answers one request. The checks run in the order the module docs list: the body is read
/// (bounded), an injected fault applies, then route, method, api-version, token, rule/stream,
/// size, encoding, JSON shape, rows.
async fn handle(
    req: Request<Incoming>,
    shared: Arc<Shared>,
    mut shutdown: watch::Receiver<bool>,
) -> Result<Response<Body>, Dropped> {
    if req.uri().path() == "/health" {
        return Ok(health(&shared));
    }
    let entra = shared.config.entra.then(|| entra_route(req.uri().path())).flatten();
    let (fault, token) = shared.enter(entra.is_none());
    let (parts, mut body) = req.into_parts();
    if let Some(entra) = entra {
        let mut rec = Recorder::start(&shared, &parts, None, None, None);
        rec.rec().authorized = true;
        let body = read_request_body(&mut body, &mut rec, &mut shutdown).await?;
        return Ok(super::entra::answer(&shared, &parts, entra, body, &mut rec));
    }
    let route = route(parts.uri.path());
    let api_version = api_version(parts.uri.query());
    let mut rec = Recorder::start(&shared, &parts, Some(&route), api_version.clone(), fault.clone());
    let authorized = bearer_matches(&parts.headers, token.as_ref(), shared.config.any_token);
    rec.rec().authorized = authorized;

    let body = read_request_body(&mut body, &mut rec, &mut shutdown).await?;
    if let Some(answer) = apply_fault(fault, &mut rec, &mut shutdown).await? {
        return Ok(answer);
    }
    let route = match route {
        Route::Query => return Ok(super::query::answer(&shared, &parts, body, authorized, &mut rec)),
        Route::Management(resource) => {
            return Ok(super::management::answer(
                &shared, &parts, resource, body, authorized, &mut rec,
            ));
        }
        route => route,
    };
    let answered = async {
        let (rule_id, stream) = check_route(route, parts.uri.path(), &mut rec)?;
        check_method(&parts.method, &mut rec)?;
        check_api_version(api_version.as_deref(), &mut rec)?;
        check_token(authorized, &parts.headers, &mut rec)?;
        check_access(&shared, &rule_id, &mut rec)?;
        let schema = check_destination(&shared, &rule_id, &stream, &mut rec)?;
        let wire_body = check_size(body, &mut rec)?;
        let text = decode(&shared, wire_body, &mut rec)?;
        match ingest(&shared, text, &stream, schema.as_deref()) {
            Ok((rows, chunk)) => {
                rec.finish(Some(204), None, Some((&stream, rows, chunk)));
                Ok(no_content())
            }
            Err((status, code, message)) => Err(rec.refuse(status, code, &message)),
        }
    };
    Ok(answered.await.unwrap_or_else(|error| *error))
}

/// `GET /health` (any method): 200 `{"status":"ok",..}`. Not recorded, no fault, no token.
fn health(shared: &Shared) -> Response<Body> {
    let body = serde_json::json!({
        "status": "ok",
        "service": "azure-logs-emulator",
        "version": env!("CARGO_PKG_VERSION"),
        "endpoint": shared.endpoint.get(),
    });
    super::query::json_response(200, &body, None)
}

/// Reads the body first (bounded), so that every answer reaches a client still sending. A body
/// cut off, a client gone or too slow, or a shutdown: no answer.
async fn read_request_body(
    body: &mut Incoming,
    rec: &mut Recorder,
    shutdown: &mut watch::Receiver<bool>,
) -> Result<BodyRead, Dropped> {
    let content_length = rec.rec().content_length;
    let too_large_header = content_length.is_some_and(|n| n > MAX_CONTENT_LENGTH as u64);
    let mut wire = 0u64;
    let body_read = if too_large_header && content_length.unwrap_or(0) > DRAIN_LIMIT {
        Ok(Ok(BodyRead::TooLarge))
    } else {
        let read = read_body(body, MAX_CONTENT_LENGTH, content_length, &mut wire);
        tokio::select! {
            r = read => Ok(r),
            _ = tokio::time::sleep(BODY_READ_TIMEOUT) => Err(()),
            _ = stopped(shutdown) => Err(()),
        }
    };
    rec.rec().wire_bytes = wire;
    match body_read {
        Ok(Ok(b)) => Ok(b),
        Ok(Err(_)) | Err(()) => {
            rec.finish(None, None, None);
            Err(Dropped)
        }
    }
}

/// The injected fault's answer, if it answers instead of the service; latency waits first.
async fn apply_fault(
    fault: Option<Fault>,
    rec: &mut Recorder,
    shutdown: &mut watch::Receiver<bool>,
) -> Result<Option<Response<Body>>, Dropped> {
    let answer = match fault {
        None => return Ok(None),
        Some(Fault::Throttle { retry_after_secs }) => {
            let mut resp = rec.error(
                429,
                "TooManyRequests",
                &format!("Rate limit exceeded (injected). Retry after {retry_after_secs} seconds."),
            );
            resp.headers_mut()
                .insert(hyper::header::RETRY_AFTER, HeaderValue::from(retry_after_secs));
            resp
        }
        Some(Fault::ThrottleMs { retry_after_ms }) => {
            let mut resp = rec.error(
                429,
                "TooManyRequests",
                &format!("Rate limit exceeded (injected). Retry after {retry_after_ms} ms."),
            );
            resp.headers_mut().insert(
                HeaderName::from_static("retry-after-ms"),
                HeaderValue::from(retry_after_ms),
            );
            resp
        }
        Some(Fault::Status(status)) => {
            let status = if (200..=999).contains(&status) { status } else { 500 };
            rec.error(
                status,
                status_error_code(status),
                &format!("Injected fault: status {status}."),
            )
        }
        Some(Fault::DropConnection) => {
            rec.finish(None, None, None);
            return Err(Dropped);
        }
        Some(Fault::Latency(delay)) => {
            tokio::select! {
                _ = tokio::time::sleep(delay) => return Ok(None),
                _ = stopped(shutdown) => {
                    rec.finish(None, None, None);
                    return Err(Dropped);
                }
            }
        }
        Some(Fault::Hang(hold)) => {
            tokio::select! {
                _ = tokio::time::sleep(hold) => {}
                _ = stopped(shutdown) => {}
            }
            rec.finish(None, None, None);
            return Err(Dropped);
        }
    };
    Ok(Some(answer))
}
