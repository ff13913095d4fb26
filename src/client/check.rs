//! The health check: a token, the endpoint, then an upload of `[]` per stream, each step
//! classified with a hint (see `health`). One request per step, no retries, each bounded by
//! the client's request timeout.

use super::health::{
    CheckStep, Finding, HealthReport, Step, Verdict, cloud_scope_of, connection_problem, credential_hint,
    upload_problem,
};
use super::send::{error_body, error_chain};
use super::*;

impl LogsIngestionClient {
    /// Checks that rows sent to `stream` of rule `rule_id` would be accepted, before the first
    /// one: the credential gives a token, the endpoint answers, and the service accepts an upload
    /// of `[]` (which stores nothing). Each step gets a verdict and, when it is not a pass, a hint
    /// that says what to fix; `Display` prints the report on one screen.
    ///
    /// Never fails: problems are in the report. Each step is one request (a 401 is tried once
    /// more with a fresh token), bounded by the request timeout.
    pub async fn check(&self, rule_id: &str, stream: &str) -> HealthReport {
        self.check_streams(&[(rule_id.to_owned(), stream.to_owned())]).await
    }

    /// [`check`](Self::check) for code without an async runtime (also safe inside one: it runs
    /// on the crate's background runtime and blocks the calling thread until done).
    pub fn check_blocking(&self, rule_id: &str, stream: &str) -> HealthReport {
        let (client, streams) = (self.clone(), vec![(rule_id.to_owned(), stream.to_owned())]);
        blocking::run_blocking(async move { client.check_streams(&streams).await })
    }

    /// The check for several streams: the credential and endpoint once, an upload per stream.
    pub(crate) async fn check_streams(&self, streams: &[(String, String)]) -> HealthReport {
        let mut steps = Vec::with_capacity(2 + streams.len());
        let token = self.check_credential(&mut steps).await;
        let reachable = self.check_endpoint(&mut steps).await;
        for (rule_id, stream) in streams {
            let step = Step::Upload {
                rule_id: rule_id.clone(),
                stream: stream.clone(),
            };
            steps.push(match (&token, reachable) {
                (None, _) => CheckStep::skipped(step, "no token"),
                (_, false) => CheckStep::skipped(step, "the endpoint is unreachable"),
                (Some(token), true) => self.check_upload(step, token.clone(), rule_id, stream).await,
            });
        }
        HealthReport {
            endpoint: self.endpoint().to_owned(),
            steps,
        }
    }

    /// A token within the request timeout; also warns when the audience is for another cloud
    /// than the endpoint's host.
    async fn check_credential(&self, steps: &mut Vec<CheckStep>) -> Option<Arc<CachedToken>> {
        let inner = &*self.inner;
        let scope = inner.tokens.scope();
        let started = Instant::now();
        let token = match inner.tokens.within(inner.request_timeout, inner.tokens.get()).await {
            Ok(token) => token,
            Err(reason) => {
                let message = match &reason {
                    FailureReason::Authentication { message, .. } => message.clone(),
                    other => other.to_string(),
                };
                steps.push(CheckStep::problem(
                    Step::Credential,
                    Verdict::Fail,
                    Finding::Credential,
                    format!("no token for {scope}: {message}"),
                    credential_hint(&message, scope),
                ));
                return None;
            }
        };
        let detail = format!("token for {scope} in {} ms", started.elapsed().as_millis());
        let expected = inner.endpoint.host_str().and_then(cloud_scope_of);
        steps.push(match expected {
            Some(expected) if expected != scope => CheckStep::problem(
                Step::Credential,
                Verdict::Warn,
                Finding::AudienceMismatch,
                detail,
                format!(
                    "the endpoint is in the cloud whose audience is {expected}, but tokens are asked for {scope}: \
                     the service will answer 401; set the builder's audience to match"
                ),
            ),
            _ => CheckStep::pass(Step::Credential, detail),
        });
        Some(token)
    }

    /// An unauthenticated `GET` of the endpoint: any HTTP answer means DNS, TCP, TLS and the
    /// proxy work.
    async fn check_endpoint(&self, steps: &mut Vec<CheckStep>) -> bool {
        let inner = &*self.inner;
        let started = Instant::now();
        let answer = inner
            .http
            .get(inner.endpoint.clone())
            .timeout(inner.request_timeout)
            .header(USER_AGENT, inner.user_agent.clone())
            .send()
            .await;
        match answer {
            Ok(response) => {
                let detail = format!(
                    "answered (HTTP {} to a GET without a token) in {} ms",
                    response.status().as_u16(),
                    started.elapsed().as_millis()
                );
                steps.push(CheckStep::pass(Step::Endpoint, detail));
                true
            }
            Err(e) => {
                let error = error_chain(&e);
                let (finding, hint) = connection_problem(&error, e.is_timeout(), self.endpoint());
                steps.push(CheckStep::problem(Step::Endpoint, Verdict::Fail, finding, error, hint));
                false
            }
        }
    }

    /// `POST []` to the stream with the token; a 401 once more with a fresh token.
    async fn check_upload(&self, step: Step, mut token: Arc<CachedToken>, rule_id: &str, stream: &str) -> CheckStep {
        let inner = &*self.inner;
        let url = self.stream_url(rule_id, stream);
        let mut refreshed = false;
        loop {
            let started = Instant::now();
            let sent = json_post(&inner.http, &url, inner.request_timeout, &inner.user_agent, &token)
                .body("[]")
                .send()
                .await;
            let response = match sent {
                Ok(response) => response,
                Err(e) => {
                    let error = unanswered(&e, inner.request_timeout);
                    let (finding, hint) = connection_problem(&error, e.is_timeout(), self.endpoint());
                    return CheckStep::problem(step, Verdict::Fail, finding, error, hint);
                }
            };
            let status = response.status().as_u16();
            if classify(status) == StatusClass::Success {
                let detail = format!(
                    "HTTP {status}: an empty upload was accepted in {} ms",
                    started.elapsed().as_millis()
                );
                return CheckStep::pass(step, detail);
            }
            if status == 401 && !refreshed {
                refreshed = true;
                match inner
                    .tokens
                    .within(inner.request_timeout, inner.tokens.replace(&token))
                    .await
                {
                    Ok(fresh) => {
                        token = fresh;
                        continue;
                    }
                    Err(reason) => {
                        let message = reason.to_string();
                        let hint = credential_hint(&message, inner.tokens.scope());
                        return CheckStep::problem(step, Verdict::Fail, Finding::Credential, message, hint);
                    }
                }
            }
            let (code, message) = error_body(response).await;
            let mut detail = format!("HTTP {status}");
            if let Some(code) = &code {
                detail.push_str(&format!(" ({code})"));
            }
            if !message.is_empty() {
                detail.push_str(": ");
                detail.push_str(&message);
            }
            let (verdict, finding, hint) = upload_problem(status, &message, rule_id, stream);
            return CheckStep::problem(step, verdict, finding, detail, hint);
        }
    }
}
