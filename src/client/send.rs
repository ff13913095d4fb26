//! Sending one batch: compressed (and split) to fit, then one body with retries, token refresh
//! after a 401, `Retry-After`, and errors read to at most 64 KiB.

use super::*;

/// The result of sending one body, retries included.
#[derive(Debug)]
pub(crate) struct SendOutcome {
    pub(crate) attempts: u32,
    pub(crate) wire_bytes: u64,
    /// Accepted, or why not.
    pub(crate) result: Result<(), FailureReason>,
}

impl SendOutcome {
    /// Nothing sent yet: no attempt, and accepted until an attempt says otherwise.
    pub(crate) fn new() -> Self {
        SendOutcome {
            attempts: 0,
            wire_bytes: 0,
            result: Ok(()),
        }
    }

    /// A body that was never sent, for `reason`.
    pub(crate) fn not_sent(reason: FailureReason) -> Self {
        SendOutcome {
            result: Err(reason),
            ..SendOutcome::new()
        }
    }
}

impl LogsIngestionClient {
    /// Compresses `batch` (split if its gzip is over the limit) and sends each part.
    pub(crate) async fn send_batch(&self, url: &Url, batch: Batch) -> Vec<(Batch, SendOutcome)> {
        let fitted = compress_fitting(batch, self.inner.gzip_level, MAX_BODY_BYTES);
        let mut done = Vec::with_capacity(fitted.bodies.len() + fitted.too_large.len());
        for (batch, size) in fitted.too_large {
            let reason = FailureReason::RowTooLarge {
                size,
                limit: MAX_BODY_BYTES,
                what: "gzipped",
            };
            done.push((batch, SendOutcome::not_sent(reason)));
        }
        for Compressed { batch, body } in fitted.bodies {
            let sent = self.send(url, body, ContentEncoding::Gzip).await;
            done.push((batch, sent));
        }
        done
    }

    /// Sends one body, retrying per the policy.
    pub(crate) async fn send(&self, url: &Url, body: Vec<u8>, encoding: ContentEncoding) -> SendOutcome {
        let inner = &*self.inner;
        let request = Request {
            url,
            body: bytes::Bytes::from(body),
            encoding,
            id: uuid::Uuid::new_v4().to_string(),
        };
        let started = Instant::now();
        let mut outcome = SendOutcome::new();
        let mut refreshed = false;
        let mut token: Option<Arc<CachedToken>> = None;
        // Attempts against the retry budget: HTTP requests and failed token fetches.
        let mut tries = 0u32;

        loop {
            let remaining = inner.retry.deadline.saturating_sub(started.elapsed());
            if remaining.is_zero() {
                outcome.result = Err(FailureReason::RetriesExhausted {
                    attempts: outcome.attempts,
                    last_error: "the retry deadline passed".into(),
                });
                return outcome;
            }
            tries += 1;
            let tried = self.attempt(&request, &mut token, !refreshed, remaining, &mut outcome);
            let failed = match tried.await {
                Attempt::Done => return outcome,
                Attempt::Rejected(reason) => {
                    outcome.result = Err(reason);
                    return outcome;
                }
                Attempt::Unauthorized(rejected) => {
                    // One fresh token, and the retry with it does not wait or count. A failed
                    // fetch counts as a try, and the next 401 may ask for a fresh token again.
                    let remaining = inner.retry.deadline.saturating_sub(started.elapsed());
                    match inner.tokens.within(remaining, inner.tokens.replace(&rejected)).await {
                        Ok(fresh) => {
                            refreshed = true;
                            tries -= 1;
                            token = Some(fresh);
                            continue;
                        }
                        Err(reason) => Failed::Token(reason),
                    }
                }
                Attempt::Failed(failed) => failed,
            };
            let wait = match &failed {
                Failed::Http { wait, .. } => *wait,
                Failed::Token(_) => None,
            };
            let delay = inner.retry.wait_before(tries, wait);
            let remaining = inner.retry.deadline.saturating_sub(started.elapsed());
            if tries >= inner.retry.max_attempts || delay >= remaining {
                let note = (tries < inner.retry.max_attempts)
                    .then(|| format!("; the next retry, due in {delay:?}, would pass the retry deadline"));
                outcome.result = Err(match failed {
                    Failed::Token(reason) => reason,
                    Failed::Http { error, .. } => FailureReason::RetriesExhausted {
                        attempts: outcome.attempts,
                        last_error: format!("{error}{}", note.unwrap_or_default()),
                    },
                });
                return outcome;
            }
            tokio::time::sleep(delay).await;
        }
    }

    /// One try: get a token (within `remaining`) and send the request once. A 401 comes back as
    /// `Unauthorized` while `may_refresh`, as `Rejected` after.
    async fn attempt(
        &self,
        request: &Request<'_>,
        token: &mut Option<Arc<CachedToken>>,
        may_refresh: bool,
        remaining: Duration,
        outcome: &mut SendOutcome,
    ) -> Attempt {
        let inner = &*self.inner;
        let current = match token {
            Some(t) => t.clone(),
            // A credential that never answers must not outlive the retry deadline.
            None => match inner.tokens.within(remaining, inner.tokens.get()).await {
                Ok(t) => t,
                Err(reason) => return Attempt::Failed(Failed::Token(reason)),
            },
        };
        *token = Some(current.clone());
        outcome.attempts += 1;
        inner.counters.requests.fetch_add(1, Ordering::Relaxed);
        if outcome.attempts > 1 {
            inner.counters.retries.fetch_add(1, Ordering::Relaxed);
        }
        let body_len = request.body.len() as u64;
        outcome.wire_bytes += body_len;
        inner.counters.wire_bytes.fetch_add(body_len, Ordering::Relaxed);

        let timeout = inner.request_timeout.min(remaining);
        let mut http = json_post(&inner.http, request.url, timeout, &inner.user_agent, &current)
            .header("x-ms-client-request-id", &request.id)
            .body(request.body.clone());
        if request.encoding == ContentEncoding::Gzip {
            http = http.header(CONTENT_ENCODING, "gzip");
        }
        let response = match http.send().await {
            Ok(response) => response,
            Err(e) => {
                let error = unanswered(&e, timeout);
                return Attempt::Failed(Failed::Http { error, wait: None });
            }
        };
        let status = response.status().as_u16();
        match classify(status) {
            StatusClass::Success => Attempt::Done,
            StatusClass::Unauthorized if may_refresh => Attempt::Unauthorized(current),
            StatusClass::Unauthorized | StatusClass::Permanent => Attempt::Rejected(rejection(status, response).await),
            StatusClass::Retryable => {
                let wait = retry_after(response.headers());
                let (code, message) = error_body(response).await;
                let mut error = format!("HTTP {status}");
                if let Some(code) = code {
                    error.push_str(&format!(" ({code})"));
                }
                if !message.is_empty() {
                    error.push_str(&format!(": {message}"));
                }
                Attempt::Failed(Failed::Http { error, wait })
            }
        }
    }
}

/// Why `row` alone cannot be sent: as a one-row array (brackets included) it is over `limit`,
/// the uncompressed batch cap.
pub(crate) fn row_too_large(row: &[u8], limit: usize) -> FailureReason {
    FailureReason::RowTooLarge {
        size: row.len() + 2,
        limit,
        what: "uncompressed JSON",
    }
}

/// One body to send, the same for every attempt: the request id lets the service's logs tie
/// the retries together.
struct Request<'a> {
    url: &'a Url,
    /// `Bytes` clones without copying, once per attempt.
    body: bytes::Bytes,
    encoding: ContentEncoding,
    id: String,
}

/// What one try came to.
enum Attempt {
    Done,
    Rejected(FailureReason),
    /// A 401 with this token.
    Unauthorized(Arc<CachedToken>),
    Failed(Failed),
}

/// A failure worth retrying.
enum Failed {
    Token(FailureReason),
    Http { error: String, wait: Option<Duration> },
}

/// A JSON `POST` to `url` with the crate's headers and the bearer token, within `timeout`.
pub(crate) fn json_post(
    http: &reqwest::Client,
    url: &Url,
    timeout: Duration,
    user_agent: &HeaderValue,
    token: &CachedToken,
) -> reqwest::RequestBuilder {
    http.post(url.clone())
        .timeout(timeout)
        .header(USER_AGENT, user_agent.clone())
        .header(CONTENT_TYPE, "application/json")
        .header("accept", "application/json")
        .header(reqwest::header::AUTHORIZATION, token.authorization.clone())
}

/// What a request that got no answer came to: a timeout or a connection error, with its causes.
pub(crate) fn unanswered(e: &reqwest::Error, timeout: Duration) -> String {
    if e.is_timeout() {
        format!("request timed out after {timeout:?}")
    } else {
        format!("connection error: {}", error_chain(e))
    }
}

/// The failure for a status that is not retried, with what to check.
async fn rejection(status: u16, response: reqwest::Response) -> FailureReason {
    let (code, message) = error_body(response).await;
    let hint = match status {
        401 => {
            "the token was refused, and so was the one the credential gave when asked again: check that the audience \
             matches the endpoint's cloud (public monitor.azure.com, US Government .us, China .cn) and that the \
             credential is for the right tenant; azure_identity credentials answer from their own cache until 5 minutes \
             before expiry, so wrap yours in RenewingCredential (credential_from_env does) to get a new token after a 401"
        }
        403 => {
            "the identity lacks permission: grant it the 'Monitoring Metrics Publisher' role on the data collection rule \
             (role assignments can take up to 30 minutes to apply)"
        }
        404 => {
            "check the endpoint (a DCE or the DCR's logs ingestion endpoint), the DCR immutable id (dcr-...) and the \
             stream name (Custom-..., as declared in the DCR)"
        }
        413 => "the body was over the service's size limit",
        400 => "the service could not read the body: check that rows match the stream declaration",
        _ => "this status is not retried",
    };
    FailureReason::Rejected {
        status,
        code,
        message,
        hint,
    }
}

/// `(code, message)` from the service's `{"error":{"code","message"}}` body and `x-ms-error-code`.
pub(crate) async fn error_body(response: reqwest::Response) -> (Option<String>, String) {
    let header_code = response
        .headers()
        .get("x-ms-error-code")
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    let text = String::from_utf8_lossy(&read_at_most(response, MAX_ERROR_BODY).await).into_owned();
    #[derive(serde::Deserialize)]
    struct Body {
        error: ErrorDetail,
    }
    #[derive(serde::Deserialize)]
    struct ErrorDetail {
        code: Option<String>,
        message: Option<String>,
    }
    match serde_json::from_str::<Body>(&text) {
        Ok(body) => (body.error.code.or(header_code), body.error.message.unwrap_or_default()),
        Err(_) => (header_code, text.trim().chars().take(512).collect()),
    }
}

/// How much of an error body is read: the service's are a few hundred bytes.
const MAX_ERROR_BODY: usize = 64 * 1024;

/// The first `limit` bytes of `response`'s body, read as it streams in (within 5 s). The rest is
/// never read: dropping the response closes the connection, so a broken or hostile endpoint that
/// answers with a huge body costs at most `limit` bytes per upload.
pub(crate) async fn read_at_most(mut response: reqwest::Response, limit: usize) -> Vec<u8> {
    let mut body = Vec::new();
    let read = async {
        while body.len() < limit {
            match response.chunk().await {
                Ok(Some(chunk)) => body.extend_from_slice(&chunk[..chunk.len().min(limit - body.len())]),
                Ok(None) | Err(_) => break,
            }
        }
    };
    let _ = tokio::time::timeout(Duration::from_secs(5), read).await;
    body
}

pub(crate) fn error_chain(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        text.push_str(": ");
        text.push_str(&s.to_string());
        source = s.source();
    }
    text
}
