//! The HTTP server: its thread and runtime, the accept loop and the hyper service.

use std::fmt;
use std::io::{Read, Write};
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::mpsc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant, SystemTime};

use bytes::{Bytes, BytesMut};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::header::{HeaderMap, HeaderName, HeaderValue};
use hyper::service::service_fn;
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use serde_json::value::RawValue;
use tokio::sync::watch;

use super::EmulatorError;
use super::faults::{Fault, status_error_code};
use super::schema::{Lookup, process_row};
use super::state::{Chunk, RequestRecord, Shared, Stored};

/// The service's cap on the request body as sent (`Content-Length`), in bytes.
pub const MAX_CONTENT_LENGTH: usize = 1_048_576;
/// API versions the emulator accepts.
pub const API_VERSIONS: [&str; 2] = ["2023-01-01", "2021-11-01-preview"];

/// A body answered 413 is still read (and discarded) up to this many bytes, so the client gets
/// the answer instead of a reset; beyond it the connection is closed after the answer.
const DRAIN_LIMIT: u64 = 8 * 1024 * 1024;
/// Longest a request body may take to arrive.
const BODY_READ_TIMEOUT: Duration = Duration::from_secs(30);
/// How long shutdown waits for open connections to finish gracefully.
const GRACEFUL_WAIT: Duration = Duration::from_millis(500);
/// How long the handle waits for the server thread to exit.
const JOIN_WAIT: Duration = Duration::from_secs(5);

type Body = Full<Bytes>;

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

/// Binds `addr`, starts the server thread and returns the bound address.
pub(crate) fn spawn(shared: Arc<Shared>, addr: SocketAddr) -> Result<(SocketAddr, ServerHandle), EmulatorError> {
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
                    rt.block_on(accept_loop(listener, shared, shutdown_rx));
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

async fn accept_loop(listener: tokio::net::TcpListener, shared: Arc<Shared>, mut shutdown: watch::Receiver<bool>) {
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
                    conns.spawn(serve_connection(
                        stream,
                        builder.clone(),
                        shared.clone(),
                        shutdown.clone(),
                    ));
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

async fn serve_connection(
    stream: tokio::net::TcpStream,
    builder: Arc<auto::Builder<TokioExecutor>>,
    shared: Arc<Shared>,
    mut shutdown: watch::Receiver<bool>,
) {
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

/// Records the request when it ends; a request dropped mid-way (client gone, hyper cancelled
/// the service future) is recorded as a dropped connection.
struct Recorder {
    shared: Arc<Shared>,
    record: Option<RequestRecord>,
}

impl Recorder {
    fn rec(&mut self) -> &mut RequestRecord {
        self.record.as_mut().expect("record taken only on finish")
    }

    fn finish(&mut self, status: Option<u16>, error_code: Option<&str>, stored: Option<Stored<'_>>) {
        if let Some(mut record) = self.record.take() {
            record.status = status;
            record.error_code = error_code.map(str::to_owned);
            record.duration = record.started.elapsed();
            if let Some((_, rows, _)) = &stored {
                record.rows = *rows;
            }
            self.shared.finish(record, stored);
        }
    }

    fn error(&mut self, status: u16, code: &str, message: &str) -> Response<Body> {
        self.finish(Some(status), Some(code), None);
        error_response(status, code, message)
    }
}

impl Drop for Recorder {
    fn drop(&mut self) {
        self.finish(None, None, None);
    }
}

fn header(headers: &HeaderMap, name: &str) -> Option<String> {
    headers
        .get(name)
        .map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned())
}

fn error_response(status: u16, code: &str, message: &str) -> Response<Body> {
    let body = serde_json::json!({ "error": { "code": code, "message": message } }).to_string();
    let mut resp = Response::new(Full::new(Bytes::from(body)));
    *resp.status_mut() = StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    let h = resp.headers_mut();
    h.insert(
        hyper::header::CONTENT_TYPE,
        HeaderValue::from_static("application/json; charset=utf-8"),
    );
    if let Ok(v) = HeaderValue::from_str(code) {
        h.insert(HeaderName::from_static("x-ms-error-code"), v);
    }
    resp
}

fn no_content() -> Response<Body> {
    let mut resp = Response::new(Full::new(Bytes::new()));
    *resp.status_mut() = StatusCode::NO_CONTENT;
    resp
}

/// Percent-decodes a path segment or query component; `None` on a bad escape or non-UTF-8.
fn percent_decode(s: &str) -> Option<String> {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%' {
            let hex = |c: u8| (c as char).to_digit(16);
            let hi = hex(*b.get(i + 1)?)?;
            let lo = hex(*b.get(i + 2)?)?;
            out.push((hi * 16 + lo) as u8);
            i += 3;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    String::from_utf8(out).ok()
}

enum Route {
    Upload { rule_id: String, stream: String },
    NotFound,
    BadEncoding,
}

fn route(path: &str) -> Route {
    let mut parts = path.trim_start_matches('/').split('/');
    match (parts.next(), parts.next(), parts.next(), parts.next(), parts.next()) {
        (Some(dcr), Some(rule), Some(streams), Some(stream), None)
            if dcr.eq_ignore_ascii_case("dataCollectionRules")
                && streams.eq_ignore_ascii_case("streams")
                && !rule.is_empty()
                && !stream.is_empty() =>
        {
            match (percent_decode(rule), percent_decode(stream)) {
                (Some(rule_id), Some(stream)) => Route::Upload { rule_id, stream },
                _ => Route::BadEncoding,
            }
        }
        _ => Route::NotFound,
    }
}

fn api_version(query: Option<&str>) -> Option<String> {
    query?.split('&').find_map(|pair| {
        let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
        (percent_decode(k).as_deref() == Some("api-version")).then(|| percent_decode(v))?
    })
}

enum BodyRead {
    Complete(Bytes),
    /// Longer than the cap (read and discarded up to `DRAIN_LIMIT`).
    TooLarge,
}

/// Reads the body, keeping at most `limit` bytes; counts every byte read into `wire`.
async fn read_body(
    body: &mut Incoming,
    limit: usize,
    size_hint: Option<u64>,
    wire: &mut u64,
) -> Result<BodyRead, hyper::Error> {
    let capacity = match size_hint {
        Some(n) if n > limit as u64 => 0, // answered 413 anyway: keep nothing
        Some(n) => n as usize,
        None => 8192,
    };
    let mut buf = BytesMut::with_capacity(capacity);
    let mut over = false;
    while let Some(frame) = body.frame().await {
        let Ok(data) = frame?.into_data() else {
            continue; // trailers
        };
        *wire += data.len() as u64;
        if !over {
            if buf.len() + data.len() > limit {
                over = true;
                buf = BytesMut::new();
            } else {
                buf.extend_from_slice(&data);
            }
        }
        if over && *wire > DRAIN_LIMIT {
            return Ok(BodyRead::TooLarge);
        }
    }
    Ok(if over {
        BodyRead::TooLarge
    } else {
        BodyRead::Complete(buf.freeze())
    })
}

fn content_length_message(n: u64) -> String {
    format!("Maximum allowed content length: {MAX_CONTENT_LENGTH} bytes (1 MB). Provided content length: {n} bytes.")
}

async fn handle(
    req: Request<Incoming>,
    shared: Arc<Shared>,
    mut shutdown: watch::Receiver<bool>,
) -> Result<Response<Body>, Dropped> {
    let started = Instant::now();
    let received_at = SystemTime::now();
    let (fault, token) = shared.enter();
    let (parts, mut body) = req.into_parts();
    let headers = &parts.headers;
    let content_length = headers
        .get(hyper::header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<u64>().ok());
    let path = parts.uri.path().to_owned();
    let route = route(&path);
    let api_version = api_version(parts.uri.query());
    let mut rec = Recorder {
        shared: shared.clone(),
        record: Some(RequestRecord {
            seq: 0,
            received_at,
            started,
            duration: Duration::ZERO,
            method: parts.method.to_string(),
            path: path.clone(),
            rule_id: None,
            stream: None,
            api_version: api_version.clone(),
            http_version: format!("{:?}", parts.version),
            status: None,
            error_code: None,
            fault: fault.clone(),
            content_length,
            wire_bytes: 0,
            uncompressed_bytes: None,
            content_type: header(headers, "content-type"),
            content_encoding: header(headers, "content-encoding"),
            user_agent: header(headers, "user-agent"),
            client_request_id: header(headers, "x-ms-client-request-id"),
            authorized: false,
            rows: 0,
        }),
    };
    if let Route::Upload { rule_id, stream } = &route {
        rec.rec().rule_id = Some(rule_id.clone());
        rec.rec().stream = Some(stream.clone());
    }
    let authorized = match &token {
        None => true,
        Some(expected) => headers
            .get(hyper::header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.trim().split_once(' '))
            .is_some_and(|(scheme, t)| scheme.eq_ignore_ascii_case("bearer") && t.trim() == expected.secret()),
    };
    rec.rec().authorized = authorized;

    // Read the body first (bounded), so that every answer reaches a client still sending.
    let too_large_header = content_length.is_some_and(|n| n > MAX_CONTENT_LENGTH as u64);
    let mut wire = 0u64;
    let body_read = if too_large_header && content_length.unwrap_or(0) > DRAIN_LIMIT {
        Ok(Ok(BodyRead::TooLarge))
    } else {
        let read = read_body(&mut body, MAX_CONTENT_LENGTH, content_length, &mut wire);
        tokio::select! {
            r = read => Ok(r),
            _ = tokio::time::sleep(BODY_READ_TIMEOUT) => Err(()),
            _ = stopped(&mut shutdown) => Err(()),
        }
    };
    rec.rec().wire_bytes = wire;
    let body = match body_read {
        Ok(Ok(b)) => b,
        // Body cut off, client gone, too slow, or shutting down: no answer.
        Ok(Err(_)) | Err(()) => {
            rec.finish(None, None, None);
            return Err(Dropped);
        }
    };

    match fault {
        Some(Fault::Throttle { retry_after_secs }) => {
            let mut resp = rec.error(
                429,
                "TooManyRequests",
                &format!("Rate limit exceeded (injected). Retry after {retry_after_secs} seconds."),
            );
            resp.headers_mut()
                .insert(hyper::header::RETRY_AFTER, HeaderValue::from(retry_after_secs));
            return Ok(resp);
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
            return Ok(resp);
        }
        Some(Fault::Status(status)) => {
            let status = if (200..=999).contains(&status) { status } else { 500 };
            return Ok(rec.error(
                status,
                status_error_code(status),
                &format!("Injected fault: status {status}."),
            ));
        }
        Some(Fault::DropConnection) => {
            rec.finish(None, None, None);
            return Err(Dropped);
        }
        Some(Fault::Latency(delay)) => {
            tokio::select! {
                _ = tokio::time::sleep(delay) => {}
                _ = stopped(&mut shutdown) => {
                    rec.finish(None, None, None);
                    return Err(Dropped);
                }
            }
        }
        Some(Fault::Hang(hold)) => {
            tokio::select! {
                _ = tokio::time::sleep(hold) => {}
                _ = stopped(&mut shutdown) => {}
            }
            rec.finish(None, None, None);
            return Err(Dropped);
        }
        None => {}
    }

    let (rule_id, stream) = match route {
        Route::Upload { rule_id, stream } => (rule_id, stream),
        Route::NotFound => {
            return Ok(rec.error(
                404,
                "NotFound",
                &format!(
                    "No route for '{path}'. Uploads go to POST /dataCollectionRules/{{ruleId}}/streams/{{stream}}?api-version=2023-01-01."
                ),
            ));
        }
        Route::BadEncoding => {
            return Ok(rec.error(
                400,
                "InvalidRequestUri",
                "The rule id or stream name is not valid percent-encoded UTF-8.",
            ));
        }
    };
    if parts.method != hyper::Method::POST {
        let mut resp = rec.error(
            405,
            "MethodNotAllowed",
            &format!("Method {} is not allowed; use POST.", parts.method),
        );
        resp.headers_mut()
            .insert(hyper::header::ALLOW, HeaderValue::from_static("POST"));
        return Ok(resp);
    }
    match api_version.as_deref() {
        None => {
            return Ok(rec.error(
                400,
                "MissingApiVersionParameter",
                "The api-version query parameter (?api-version=) is required for all requests.",
            ));
        }
        Some(v) if !API_VERSIONS.contains(&v) => {
            return Ok(rec.error(
                400,
                "InvalidApiVersionParameter",
                &format!(
                    "The api-version '{v}' is invalid. The supported versions are '{}'.",
                    API_VERSIONS.join(",")
                ),
            ));
        }
        Some(_) => {}
    }
    if !authorized {
        let message = if headers.contains_key(hyper::header::AUTHORIZATION) {
            "The access token is invalid or expired."
        } else {
            "The Authorization header is missing; expected 'Bearer <token>'."
        };
        let mut resp = rec.error(401, "InvalidAuthenticationToken", message);
        resp.headers_mut()
            .insert(hyper::header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
        return Ok(resp);
    }
    let schema = match shared.config.declarations.lookup(&rule_id, &stream) {
        Lookup::Open => None,
        Lookup::Found(s) => Some(s),
        Lookup::UnknownRule => {
            return Ok(rec.error(
                404,
                "NotFound",
                &format!("Data collection rule with immutable Id '{rule_id}' not found."),
            ));
        }
        Lookup::UnknownStream => {
            return Ok(rec.error(
                404,
                "NotFound",
                &format!("Stream '{stream}' is not declared in data collection rule '{rule_id}'."),
            ));
        }
    };
    let wire_body = match body {
        BodyRead::Complete(b) => b,
        BodyRead::TooLarge => {
            let n = content_length.unwrap_or(wire);
            return Ok(rec.error(413, "ContentLengthLimitExceeded", &content_length_message(n)));
        }
    };

    // Decode.
    let encoding = rec.rec().content_encoding.clone();
    let cap = shared.config.max_decompressed_bytes;
    let decoded: Vec<u8> = match encoding.as_deref().map(str::trim) {
        None | Some("") => wire_body.to_vec(),
        Some(e) if e.eq_ignore_ascii_case("identity") => wire_body.to_vec(),
        Some(e) if e.eq_ignore_ascii_case("gzip") || e.eq_ignore_ascii_case("x-gzip") => {
            match gunzip(&wire_body, cap) {
                Ok(v) => v,
                Err(GunzipError::TooLarge) => {
                    return Ok(rec.error(
                        413,
                        "PayloadSizeLimitExceeded",
                        &format!("The decompressed request body exceeds the emulator's limit of {cap} bytes."),
                    ));
                }
                Err(GunzipError::Invalid(e)) => {
                    return Ok(rec.error(
                        400,
                        "InvalidContentEncoding",
                        &format!("The request body is not valid gzip: {e}."),
                    ));
                }
            }
        }
        Some(e) => {
            return Ok(rec.error(
                400,
                "UnsupportedContentEncoding",
                &format!("Content-Encoding '{e}' is not supported; use gzip or none."),
            ));
        }
    };
    drop(wire_body);
    rec.rec().uncompressed_bytes = Some(decoded.len() as u64);
    if shared.config.strict_size && decoded.len() > MAX_CONTENT_LENGTH {
        return Ok(rec.error(
            413,
            "ContentLengthLimitExceeded",
            &format!(
                "Maximum allowed content length: {MAX_CONTENT_LENGTH} bytes (1 MB). Provided uncompressed content length: {} bytes.",
                decoded.len()
            ),
        ));
    }
    let text = match String::from_utf8(decoded) {
        Ok(t) => t,
        Err(e) => {
            return Ok(rec.error(
                400,
                "InvalidJson",
                &format!("The request body is not valid UTF-8: {}.", e.utf8_error()),
            ));
        }
    };
    match ingest(&shared, text, &stream, schema) {
        Ok((rows, chunk)) => {
            rec.finish(Some(204), None, Some((&stream, rows, chunk)));
            Ok(no_content())
        }
        Err((status, code, message)) => Ok(rec.error(status, code, &message)),
    }
}

enum GunzipError {
    TooLarge,
    Invalid(std::io::Error),
}

fn gunzip(data: &[u8], cap: usize) -> Result<Vec<u8>, GunzipError> {
    let guess = data.len().saturating_mul(8).min(cap).min(64 << 20) + 64;
    let mut out = Vec::with_capacity(guess);
    let mut decoder = flate2::read::MultiGzDecoder::new(data).take(cap as u64 + 1);
    decoder.read_to_end(&mut out).map_err(GunzipError::Invalid)?;
    if out.len() > cap {
        return Err(GunzipError::TooLarge);
    }
    Ok(out)
}

/// Bytes each row of a request costs besides its text while the request is decoded (its place in
/// the body), counted against the decoding cap.
const ROW_COST: usize = std::mem::size_of::<(usize, usize)>();

/// Hands each element of a JSON array to a callback as it is parsed, without collecting them.
struct EachRow<'f, F>(&'f mut F);

impl<'de, F: FnMut(&'de RawValue) -> Result<(), ()>> serde::de::Visitor<'de> for EachRow<'_, F> {
    type Value = ();

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a JSON array of objects")
    }

    fn visit_seq<A: serde::de::SeqAccess<'de>>(self, mut seq: A) -> Result<(), A::Error> {
        while let Some(raw) = seq.next_element::<&'de RawValue>()? {
            (self.0)(raw).map_err(|()| <A::Error as serde::de::Error>::custom("row refused"))?;
        }
        Ok(())
    }
}

/// Parses and checks the rows one by one as they are read, persists them, and returns the row
/// count and (when rows are retained) the text to store. The decoded text, 16 bytes per row and
/// rows that a lenient schema rewrote count against `max_decompressed_bytes`: past it, 413.
/// Synchronous: no other request runs on this thread meanwhile, so at most one decoded body is
/// being processed at a time.
fn ingest(
    shared: &Shared,
    text: String,
    stream: &str,
    schema: Option<&super::schema::StreamSchema>,
) -> Result<(usize, Option<Chunk>), (u16, &'static str, String)> {
    let json = text.strip_prefix('\u{feff}').unwrap_or(&text);
    let first = json.trim_start().as_bytes().first().copied();
    if first != Some(b'[') {
        let (code, message) = if first.is_none() {
            (
                "InvalidJson",
                "The request body is empty; expected a JSON array of objects.",
            )
        } else {
            ("InvalidPayload", "The request body must be a JSON array of objects.")
        };
        return Err((400, code, message.to_owned()));
    }
    let keep = shared.config.retain_rows || shared.config.persist_dir.is_some();
    let cap = shared.config.max_decompressed_bytes;
    let base = text.as_ptr() as usize;
    let mut spans: Vec<(usize, usize)> = Vec::new();
    let mut changes: Vec<String> = Vec::new();
    let mut rows = 0usize;
    // What the rows cost besides the body's text, counted against the cap as they are read, so
    // that a small body of many tiny rows (`[{},{},...]`) cannot take memory the cap does not see.
    let mut held = text.len();
    let mut failure = None;
    let read = {
        let mut on_row = |raw: &RawValue| {
            held += ROW_COST;
            let result = match process_row(raw, rows, schema, shared.config.strict_schema) {
                _ if held > cap => Err((
                    413,
                    "PayloadSizeLimitExceeded",
                    format!(
                        "The decoded request body ({} bytes with more than {rows} rows at {ROW_COST} bytes each to \
                         hold) exceeds the emulator's limit of {cap} bytes.",
                        text.len()
                    ),
                )),
                Ok(None) => {
                    if keep {
                        spans.push((raw.get().as_ptr() as usize - base, raw.get().len()));
                    }
                    Ok(())
                }
                Ok(Some(changed)) => {
                    held += changed.len();
                    if keep {
                        spans.push((usize::MAX, changes.len()));
                        changes.push(changed);
                    }
                    Ok(())
                }
                Err(e) => Err((400, e.code, e.message)),
            };
            rows += 1;
            result.map_err(|e| failure = Some(e))
        };
        let mut de = serde_json::Deserializer::from_str(json);
        serde::Deserializer::deserialize_seq(&mut de, EachRow(&mut on_row)).and_then(|()| de.end())
    };
    if let Some(failure) = failure {
        return Err(failure);
    }
    read.map_err(|e| (400, "InvalidJson", format!("The request body is not valid JSON: {e}.")))?;
    if !keep {
        return Ok((rows, None));
    }
    let (text, spans) = if changes.is_empty() {
        (text, spans)
    } else {
        let mut out = String::with_capacity(text.len());
        let mut new_spans = Vec::with_capacity(spans.len());
        for (start, len) in spans {
            let row = if start == usize::MAX {
                changes[len].as_str()
            } else {
                &text[start..start + len]
            };
            new_spans.push((out.len(), row.len()));
            out.push_str(row);
            out.push('\n');
        }
        (out, new_spans)
    };
    if let Some(dir) = &shared.config.persist_dir {
        persist(shared, dir, stream, &text, &spans).map_err(|e| {
            (
                500,
                "PersistFailed",
                format!("Could not append the rows to the persist directory: {e}."),
            )
        })?;
    }
    Ok((rows, shared.config.retain_rows.then_some((text, spans))))
}

/// File name used for a stream's JSON lines: characters other than `[A-Za-z0-9_.-]` become `_`.
pub(crate) fn persist_file_name(stream: &str) -> String {
    let mut name: String = stream
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.') {
                c
            } else {
                '_'
            }
        })
        .collect();
    if name.starts_with('.') {
        name.insert(0, '_');
    }
    name.push_str(".jsonl");
    name
}

fn persist(
    shared: &Shared,
    dir: &std::path::Path,
    stream: &str,
    text: &str,
    spans: &[(usize, usize)],
) -> std::io::Result<()> {
    if spans.is_empty() {
        return Ok(());
    }
    let mut lines = String::with_capacity(text.len() + spans.len());
    for &(start, len) in spans {
        let row = &text[start..start + len];
        if row.contains(['\n', '\r']) {
            let value: serde_json::Value = serde_json::from_str(row).map_err(std::io::Error::other)?;
            lines.push_str(&value.to_string());
        } else {
            lines.push_str(row);
        }
        lines.push('\n');
    }
    let mut files = shared
        .persist_files
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    let file = match files.entry(stream.to_owned()) {
        std::collections::hash_map::Entry::Occupied(e) => e.into_mut(),
        std::collections::hash_map::Entry::Vacant(e) => e.insert(
            std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(dir.join(persist_file_name(stream)))?,
        ),
    };
    file.write_all(lines.as_bytes())?;
    file.flush()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn routes_and_queries() {
        match route("/dataCollectionRules/dcr-1/streams/Custom-A%20B_CL") {
            Route::Upload { rule_id, stream } => {
                assert_eq!(rule_id, "dcr-1");
                assert_eq!(stream, "Custom-A B_CL");
            }
            _ => panic!("should route"),
        }
        assert!(matches!(
            route("/dataCollectionRules/x/streams/%FF"),
            Route::BadEncoding
        ));
        assert!(matches!(route("/dataCollectionRules/x/streams/%4"), Route::BadEncoding));
        assert!(matches!(route("/dataCollectionRules/x/streams/"), Route::NotFound));
        assert!(matches!(route("/dataCollectionRules/x/streams/y/z"), Route::NotFound));
        assert!(matches!(route("/"), Route::NotFound));
        assert_eq!(
            api_version(Some("a=b&api-version=2023-01-01")).as_deref(),
            Some("2023-01-01")
        );
        assert_eq!(api_version(Some("api%2Dversion=x")).as_deref(), Some("x"));
        assert_eq!(api_version(Some("apiversion=x")), None);
        assert_eq!(api_version(None), None);
    }

    #[test]
    fn file_names() {
        assert_eq!(persist_file_name("Custom-App_CL"), "Custom-App_CL.jsonl");
        assert_eq!(persist_file_name("../x/y"), "_.._x_y.jsonl");
    }

    #[test]
    fn gzip_limits() {
        let mut enc = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        enc.write_all(&vec![b' '; 10_000]).unwrap();
        let gz = enc.finish().unwrap();
        assert_eq!(gunzip(&gz, 10_000).ok().map(|v| v.len()), Some(10_000));
        assert!(matches!(gunzip(&gz, 9_999), Err(GunzipError::TooLarge)));
        assert!(matches!(
            gunzip(&gz[..gz.len() / 2], 10_000),
            Err(GunzipError::Invalid(_))
        ));
        assert!(matches!(gunzip(b"not gzip", 10_000), Err(GunzipError::Invalid(_))));
    }
}
