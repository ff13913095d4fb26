//! The checks an upload passes, one function each, in the order the service makes them: route,
//! method, api-version, token, rule and stream, size, encoding. Each answers early with the
//! service's error (recorded) or hands on what the next one needs.

use bytes::Bytes;
use hyper::Response;
use hyper::header::{HeaderMap, HeaderValue};

use super::ingest::{GunzipError, gunzip};
use super::request::{API_VERSIONS, Body, BodyRead, MAX_CONTENT_LENGTH, Recorder, Route, content_length_message};
use super::schema::Lookup;
use super::state::Shared;

/// What the handler answers early with: an error response (already recorded).
pub(super) type Checked<T> = Result<T, Box<Response<Body>>>;

/// The rule and stream of an upload path.
pub(super) fn check_route(route: Route, path: &str, rec: &mut Recorder) -> Checked<(String, String)> {
    match route {
        Route::Upload { rule_id, stream } => Ok((rule_id, stream)),
        Route::Query | Route::Management(_) | Route::NotFound => Err(rec.refuse(
            404,
            "NotFound",
            &format!(
                "No route for '{path}'. Uploads go to POST /dataCollectionRules/{{ruleId}}/streams/{{stream}}?api-version=2023-01-01, \
                 queries to POST /v1/workspaces/{{workspaceId}}/query."
            ),
        )),
        Route::BadEncoding => Err(rec.refuse(
            400,
            "InvalidRequestUri",
            "The rule id or stream name is not valid percent-encoded UTF-8.",
        )),
    }
}

pub(super) fn check_method(method: &hyper::Method, rec: &mut Recorder) -> Checked<()> {
    if method == hyper::Method::POST {
        return Ok(());
    }
    let mut resp = rec.error(
        405,
        "MethodNotAllowed",
        &format!("Method {method} is not allowed; use POST."),
    );
    resp.headers_mut()
        .insert(hyper::header::ALLOW, HeaderValue::from_static("POST"));
    Err(Box::new(resp))
}

pub(super) fn check_api_version(version: Option<&str>, rec: &mut Recorder) -> Checked<()> {
    match version {
        None => Err(rec.refuse(
            400,
            "MissingApiVersionParameter",
            "The api-version query parameter (?api-version=) is required for all requests.",
        )),
        Some(v) if !API_VERSIONS.contains(&v) => Err(rec.refuse(
            400,
            "InvalidApiVersionParameter",
            &format!(
                "The api-version '{v}' is invalid. The supported versions are '{}'.",
                API_VERSIONS.join(",")
            ),
        )),
        Some(_) => Ok(()),
    }
}

pub(super) fn check_token(authorized: bool, headers: &HeaderMap, rec: &mut Recorder) -> Checked<()> {
    if authorized {
        return Ok(());
    }
    let message = if headers.contains_key(hyper::header::AUTHORIZATION) {
        "The access token is invalid or expired."
    } else {
        "The Authorization header is missing; expected 'Bearer <token>'."
    };
    let mut resp = rec.error(401, "InvalidAuthenticationToken", message);
    resp.headers_mut()
        .insert(hyper::header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
    Err(Box::new(resp))
}

/// The stream's declared schema, if streams are declared; 404 for an unknown rule or stream.
pub(super) fn check_destination(
    shared: &Shared,
    rule_id: &str,
    stream: &str,
    rec: &mut Recorder,
) -> Checked<Option<std::sync::Arc<super::schema::StreamSchema>>> {
    let found = shared.declarations().lookup(rule_id, stream);
    match found {
        Lookup::Open => Ok(None),
        Lookup::Found(s) => Ok(Some(s)),
        Lookup::UnknownRule => Err(rec.refuse(
            404,
            "NotFound",
            &format!("Data collection rule with immutable Id '{rule_id}' not found."),
        )),
        Lookup::UnknownStream => Err(rec.refuse(
            404,
            "NotFound",
            &format!("Stream '{stream}' is not declared in data collection rule '{rule_id}'."),
        )),
    }
}

/// The body as sent, or the service's 413 when it was over 1,048,576 bytes.
pub(super) fn check_size(body: BodyRead, rec: &mut Recorder) -> Checked<Bytes> {
    match body {
        BodyRead::Complete(b) => Ok(b),
        BodyRead::TooLarge => {
            let n = rec.rec().content_length.unwrap_or(rec.rec().wire_bytes);
            Err(rec.refuse(413, "ContentLengthLimitExceeded", &content_length_message("", n)))
        }
    }
}

/// The body as text: gunzipped (capped), within the strict size if set, and UTF-8.
pub(super) fn decode(shared: &Shared, wire_body: Bytes, rec: &mut Recorder) -> Checked<String> {
    let encoding = rec.rec().content_encoding.clone();
    let cap = shared.config.max_decompressed_bytes;
    let decoded: Vec<u8> = match encoding.as_deref().map(str::trim) {
        None | Some("") => wire_body.to_vec(),
        Some(e) if e.eq_ignore_ascii_case("identity") => wire_body.to_vec(),
        Some(e) if e.eq_ignore_ascii_case("gzip") || e.eq_ignore_ascii_case("x-gzip") => {
            match gunzip(&wire_body, cap) {
                Ok(v) => v,
                Err(GunzipError::TooLarge) => {
                    return Err(rec.refuse(
                        413,
                        "PayloadSizeLimitExceeded",
                        &format!("The decompressed request body exceeds the emulator's limit of {cap} bytes."),
                    ));
                }
                Err(GunzipError::Invalid(e)) => {
                    return Err(rec.refuse(
                        400,
                        "InvalidContentEncoding",
                        &format!("The request body is not valid gzip: {e}."),
                    ));
                }
            }
        }
        Some(e) => {
            return Err(rec.refuse(
                400,
                "UnsupportedContentEncoding",
                &format!("Content-Encoding '{e}' is not supported; use gzip or none."),
            ));
        }
    };
    drop(wire_body);
    rec.rec().uncompressed_bytes = Some(decoded.len() as u64);
    if shared.config.strict_size && decoded.len() > MAX_CONTENT_LENGTH {
        return Err(rec.refuse(
            413,
            "ContentLengthLimitExceeded",
            &content_length_message("uncompressed ", decoded.len() as u64),
        ));
    }
    String::from_utf8(decoded).map_err(|e| {
        rec.refuse(
            400,
            "InvalidJson",
            &format!("The request body is not valid UTF-8: {}.", e.utf8_error()),
        )
    })
}
