//! What a request is to the emulator: its route and api-version, its body as read (bounded), its
//! record, and the service's response shapes.

use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use bytes::{Bytes, BytesMut};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::header::{HeaderMap, HeaderName, HeaderValue};
use hyper::{Response, StatusCode};

use super::faults::Fault;
use super::state::{RequestRecord, Shared, Stored};

/// The service's cap on the request body as sent (`Content-Length`), in bytes.
pub const MAX_CONTENT_LENGTH: usize = 1_048_576;

/// API versions the emulator accepts.
pub const API_VERSIONS: [&str; 2] = ["2023-01-01", "2021-11-01-preview"];

/// A body answered 413 is still read (and discarded) up to this many bytes, so the client gets
/// the answer instead of a reset; beyond it the connection is closed after the answer.
pub(super) const DRAIN_LIMIT: u64 = 8 * 1024 * 1024;

pub(super) type Body = Full<Bytes>;

/// Records the request when it ends; a request dropped mid-way (client gone, hyper cancelled
/// the service future) is recorded as a dropped connection.
pub(super) struct Recorder {
    shared: Arc<Shared>,
    record: Option<RequestRecord>,
}

impl Recorder {
    pub(super) fn rec(&mut self) -> &mut RequestRecord {
        self.record.as_mut().expect("record taken only on finish")
    }

    pub(super) fn finish(&mut self, status: Option<u16>, error_code: Option<&str>, stored: Option<Stored<'_>>) {
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

    pub(super) fn error(&mut self, status: u16, code: &str, message: &str) -> Response<Body> {
        self.finish(Some(status), Some(code), None);
        error_response(status, code, message)
    }

    /// [`error`](Self::error), boxed for a [`Checked`] result.
    pub(super) fn refuse(&mut self, status: u16, code: &str, message: &str) -> Box<Response<Body>> {
        Box::new(self.error(status, code, message))
    }
}

impl Drop for Recorder {
    fn drop(&mut self) {
        self.finish(None, None, None);
    }
}

pub(super) fn header(headers: &HeaderMap, name: &str) -> Option<String> {
    headers
        .get(name)
        .map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned())
}

pub(super) fn error_response(status: u16, code: &str, message: &str) -> Response<Body> {
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

pub(super) fn no_content() -> Response<Body> {
    let mut resp = Response::new(Full::new(Bytes::new()));
    *resp.status_mut() = StatusCode::NO_CONTENT;
    resp
}

/// Percent-decodes a path segment or query component; `None` on a bad escape or non-UTF-8.
pub(super) fn percent_decode(s: &str) -> Option<String> {
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

pub(super) enum Route {
    Upload {
        rule_id: String,
        stream: String,
    },
    /// The Logs Query API: `/v1/workspaces/{id}/query`.
    Query,
    /// A table or data collection rule (the management routes).
    Management(Resource),
    NotFound,
    BadEncoding,
}

pub(super) fn route(path: &str) -> Route {
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
        (Some("v1"), Some(workspaces), Some(id), Some(query), None)
            if workspaces.eq_ignore_ascii_case("workspaces")
                && query.eq_ignore_ascii_case("query")
                && !id.is_empty() =>
        {
            Route::Query
        }
        _ => resource(path).map_or(Route::NotFound, Route::Management),
    }
}

/// A management resource path.
#[derive(Debug)]
pub(crate) enum Resource {
    /// A workspace table: `workspace` is the workspace's resource id, lower-cased.
    Table { workspace: String, name: String },
    /// A data collection rule: `id` is its resource id, lower-cased.
    Rule { id: String, name: String },
}

/// The resource a path names, if it is one of the two.
pub(super) fn resource(path: &str) -> Option<Resource> {
    let parts: Vec<String> = path
        .trim_start_matches('/')
        .split('/')
        .map(percent_decode)
        .collect::<Option<_>>()?;
    let is = |i: usize, name: &str| parts.get(i).is_some_and(|p| p.eq_ignore_ascii_case(name));
    let base = is(0, "subscriptions") && is(2, "resourceGroups") && is(4, "providers");
    if !base || parts.iter().any(String::is_empty) {
        return None;
    }
    let id = |n: usize| format!("/{}", parts[..n].join("/")).to_ascii_lowercase();
    match parts.len() {
        10 if is(5, "Microsoft.OperationalInsights") && is(6, "workspaces") && is(8, "tables") => {
            Some(Resource::Table {
                workspace: id(8),
                name: parts[9].clone(),
            })
        }
        8 if is(5, "Microsoft.Insights") && is(6, "dataCollectionRules") => Some(Resource::Rule {
            id: id(8),
            name: parts[7].clone(),
        }),
        _ => None,
    }
}

pub(super) fn api_version(query: Option<&str>) -> Option<String> {
    query?.split('&').find_map(|pair| {
        let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
        (percent_decode(k).as_deref() == Some("api-version")).then(|| percent_decode(v))?
    })
}

pub(super) enum BodyRead {
    Complete(Bytes),
    /// Longer than the cap (read and discarded up to `DRAIN_LIMIT`).
    TooLarge,
}

/// Reads the body, keeping at most `limit` bytes; counts every byte read into `wire`.
pub(super) async fn read_body(
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

/// The service's 413 message; `what` is `""` for the body as sent, `"uncompressed "` for it
/// gunzipped.
pub(super) fn content_length_message(what: &str, n: u64) -> String {
    format!(
        "Maximum allowed content length: {MAX_CONTENT_LENGTH} bytes (1 MB). Provided {what}content length: {n} bytes."
    )
}

impl Recorder {
    /// Starts the record of a request that just arrived.
    pub(super) fn start(
        shared: &Arc<Shared>,
        parts: &hyper::http::request::Parts,
        route: Option<&Route>,
        api_version: Option<String>,
        fault: Option<Fault>,
    ) -> Recorder {
        let headers = &parts.headers;
        let (rule_id, stream) = match route {
            Some(Route::Upload { rule_id, stream }) => (Some(rule_id.clone()), Some(stream.clone())),
            _ => (None, None),
        };
        Recorder {
            shared: shared.clone(),
            record: Some(RequestRecord {
                seq: 0,
                received_at: SystemTime::now(),
                started: Instant::now(),
                duration: Duration::ZERO,
                method: parts.method.to_string(),
                path: parts.uri.path().to_owned(),
                rule_id,
                stream,
                api_version,
                http_version: format!("{:?}", parts.version),
                status: None,
                error_code: None,
                fault,
                content_length: content_length(headers),
                wire_bytes: 0,
                uncompressed_bytes: None,
                content_type: header(headers, "content-type"),
                content_encoding: header(headers, "content-encoding"),
                user_agent: header(headers, "user-agent"),
                client_request_id: header(headers, "x-ms-client-request-id"),
                authorized: false,
                rows: 0,
            }),
        }
    }
}

pub(super) fn content_length(headers: &HeaderMap) -> Option<u64> {
    headers
        .get(hyper::header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<u64>().ok())
}

/// Whether the request carries `Bearer <expected>` (always, when auth is off), or with
/// `any_token` a non-empty bearer token.
pub(super) fn bearer_matches(
    headers: &HeaderMap,
    expected: Option<&azure_core::credentials::Secret>,
    any_token: bool,
) -> bool {
    let Some(expected) = expected else { return true };
    headers
        .get(hyper::header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().split_once(' '))
        .is_some_and(|(scheme, t)| {
            let t = t.trim();
            scheme.eq_ignore_ascii_case("bearer") && (t == expected.secret() || (any_token && !t.is_empty()))
        })
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
    fn resource_paths() {
        let table =
            "/subscriptions/s1/resourceGroups/RG/providers/Microsoft.OperationalInsights/workspaces/ws/tables/App_CL";
        match resource(table) {
            Some(Resource::Table { workspace, name }) => {
                assert_eq!(
                    workspace,
                    "/subscriptions/s1/resourcegroups/rg/providers/microsoft.operationalinsights/workspaces/ws"
                );
                assert_eq!(name, "App_CL");
            }
            other => panic!("not a table: {other:?}"),
        }
        let rule = "/subscriptions/s1/resourceGroups/rg/providers/Microsoft.Insights/dataCollectionRules/my-dcr";
        assert!(matches!(resource(rule), Some(Resource::Rule { name, .. }) if name == "my-dcr"));
        assert!(resource("/subscriptions/s1/resourceGroups/rg/providers/Microsoft.Insights/other/x").is_none());
        assert!(resource("/dataCollectionRules/dcr-1/streams/Custom-A_CL").is_none());
    }
}
