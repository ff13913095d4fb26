//! The Logs Query API route: `POST /v1/workspaces/{id}/query` with a JSON body
//! `{"query", "timespan"}`, or `GET` with `?query=&timespan=`, over the rows the emulator
//! accepted (see [`kql`](super::kql) for the KQL subset).
//!
//! What it copies from the service: table `X_CL` holds the rows sent to stream `Custom-X_CL`
//! (or to a stream named `X_CL`); `timespan` (an ISO 8601 duration back from now, `start/end`, or
//! `start/duration`) filters on `TimeGenerated`; `Prefer: wait=N` (default 180 s, at most 600)
//! answers 504 `GatewayTimeout` when the query took longer (an injected latency counts);
//! `include-statistics=true` adds `statistics`; a result over the row or size limit is cut and
//! answered 200 with `"error": {"code": "PartialError", ...}`; an unsupported or invalid query is
//! a 400 `BadArgumentError` whose inner error names the problem. Every row gets the time it was
//! accepted as its `ingestion_time()`, and is seen by queries only after the visibility delay.

use std::time::{Duration, SystemTime};

use bytes::Bytes;
use http_body_util::Full;
use hyper::Response;
use hyper::header::{CONTENT_TYPE, HeaderValue};
use serde_json::{Value, json};

use super::checks::check_token;
use super::kql;
use super::request::{Body, BodyRead, Recorder, header, percent_decode};
use super::state::Shared;

/// The service's limit on the rows of a query result.
pub const DEFAULT_QUERY_MAX_ROWS: usize = 500_000;
/// The service's limit on the size of a query result, in bytes.
pub const DEFAULT_QUERY_MAX_BYTES: usize = 64_000_000;

/// Answers one query request (its fault, if any, has been applied).
pub(super) fn answer(
    shared: &Shared,
    parts: &hyper::http::request::Parts,
    body: BodyRead,
    authorized: bool,
    rec: &mut Recorder,
) -> Response<Body> {
    run(shared, parts, body, authorized, rec).unwrap_or_else(|refused| *refused)
}

type Answer = Result<Response<Body>, Box<Response<Body>>>;

fn bad_argument(rec: &mut Recorder, inner_code: &str, message: &str) -> Box<Response<Body>> {
    let body = json!({
        "error": {
            "code": "BadArgumentError",
            "message": "The request had some invalid properties",
            "innererror": { "code": inner_code, "message": message },
        }
    });
    rec.finish(Some(400), Some("BadArgumentError"), None);
    Box::new(json_response(400, &body, Some("BadArgumentError")))
}

pub(super) fn json_response(status: u16, body: &Value, error_code: Option<&str>) -> Response<Body> {
    let mut resp = Response::new(Full::new(Bytes::from(body.to_string())));
    *resp.status_mut() = hyper::StatusCode::from_u16(status).unwrap_or(hyper::StatusCode::INTERNAL_SERVER_ERROR);
    resp.headers_mut().insert(
        CONTENT_TYPE,
        HeaderValue::from_static("application/json; charset=utf-8"),
    );
    if let Some(code) = error_code.and_then(|c| HeaderValue::from_str(c).ok()) {
        resp.headers_mut().insert("x-ms-error-code", code);
    }
    resp
}

fn run(
    shared: &Shared,
    parts: &hyper::http::request::Parts,
    body: BodyRead,
    authorized: bool,
    rec: &mut Recorder,
) -> Answer {
    let method = &parts.method;
    if method != hyper::Method::POST && method != hyper::Method::GET {
        return Err(rec.refuse(
            405,
            "MethodNotAllowed",
            &format!("Method {method} is not allowed; use POST or GET."),
        ));
    }
    check_token(authorized, &parts.headers, rec)?;
    let (text, timespan) = if method == hyper::Method::GET {
        let param = |name: &str| {
            parts.uri.query().unwrap_or("").split('&').find_map(|pair| {
                let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
                (k == name).then(|| percent_decode(&v.replace('+', " ")))?
            })
        };
        (param("query"), param("timespan"))
    } else {
        let bytes = match body {
            BodyRead::Complete(bytes) => bytes,
            BodyRead::TooLarge => return Err(bad_argument(rec, "InvalidBody", "The request body is too large.")),
        };
        let parsed: Value = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
        let field = |name: &str| parsed.get(name).and_then(Value::as_str).map(str::to_owned);
        (field("query"), field("timespan"))
    };
    let Some(text) = text.filter(|t| !t.trim().is_empty()) else {
        return Err(bad_argument(
            rec,
            "MissingQuery",
            "The request has no query ('query' in the body or URL).",
        ));
    };

    let prefer = header(&parts.headers, "prefer").unwrap_or_default();
    let wait = prefer
        .split(',')
        .find_map(|p| p.trim().strip_prefix("wait=")?.trim().parse::<u64>().ok())
        .unwrap_or(180)
        .min(600);
    let statistics = prefer.split(',').any(|p| p.trim() == "include-statistics=true");
    if rec.rec().started.elapsed() > Duration::from_secs(wait) {
        let message = format!("The query did not finish within the server timeout of {wait} s (Prefer: wait={wait}).");
        rec.finish(Some(504), Some("GatewayTimeout"), None);
        let body = json!({ "error": { "code": "GatewayTimeout", "message": message } });
        return Err(Box::new(json_response(504, &body, Some("GatewayTimeout"))));
    }

    let query = kql::parse(&text).map_err(|e| bad_argument(rec, "SyntaxError", &e.0))?;
    let declared_stream = |name: &str| shared.declarations().stream_columns(name).map(|c| (name.to_owned(), c));
    let custom = format!("Custom-{}", query.table);
    let stream = [custom.as_str(), query.table.as_str()]
        .into_iter()
        .find(|s| shared.has_stream(s))
        .map(str::to_owned);
    let declared = declared_stream(&custom).or_else(|| declared_stream(&query.table));
    let Some(stream) = stream.or_else(|| declared.as_ref().map(|(s, _)| s.clone())) else {
        let message = format!(
            "'{}' could not be resolved to a table: no rows were sent to stream '{custom}' (or '{}') and it is not declared",
            query.table, query.table
        );
        return Err(bad_argument(rec, "SemanticError", &message));
    };

    let now = SystemTime::now();
    let now_nanos = now
        .duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as i128);
    let mut rows = shared.query_rows(&stream, now);
    if let Some(timespan) = timespan {
        let Some((start, end)) = parse_timespan(&timespan, now_nanos) else {
            return Err(bad_argument(
                rec,
                "InvalidTimespan",
                &format!("'{timespan}' is not an ISO 8601 timespan (PT1H, start/end or start/duration)."),
            ));
        };
        rows.retain(|row| {
            let at = row
                .values
                .get("TimeGenerated")
                .and_then(Value::as_str)
                .and_then(kql::datetime_nanos);
            at.is_some_and(|t| start <= t && t < end)
        });
    }
    let columns = declared.as_ref().map(|(_, c)| c.as_slice());
    let mut table = kql::run(&query, rows, columns, now_nanos).map_err(|e| bad_argument(rec, "SemanticError", &e.0))?;

    let partial = limit(&mut table, shared.config.query_max_rows, shared.config.query_max_bytes);
    let mut body = json!({
        "tables": [{
            "name": "PrimaryResult",
            "columns": table.columns.iter().map(|(n, t)| json!({"name": n, "type": t})).collect::<Vec<_>>(),
            "rows": table.rows,
        }]
    });
    if let Some(message) = partial {
        body["error"] = json!({
            "code": "PartialError",
            "message": "There were some errors when processing your query.",
            "details": [{ "code": "EngineError", "message": message, "innererror": { "code": "E_QUERY_RESULT_SET_TOO_LARGE" } }],
        });
    }
    if statistics {
        body["statistics"] = json!({ "query": { "executionTime": 0.0, "resourceUsage": {}, "datasetStatistics": [{ "tableRowCount": table.rows.len() }] } });
    }
    rec.finish(Some(200), None, None);
    Ok(json_response(200, &body, None))
}

/// Cuts `table` to the row and byte limits; the partial error's message if it cut.
fn limit(table: &mut kql::ResultTable, max_rows: usize, max_bytes: usize) -> Option<String> {
    if table.rows.len() > max_rows {
        table.rows.truncate(max_rows);
        return Some(format!(
            "Query result set has exceeded the internal record count limit {max_rows} (E_QUERY_RESULT_SET_TOO_LARGE)."
        ));
    }
    let mut bytes = 0usize;
    for (i, row) in table.rows.iter().enumerate() {
        bytes += row.iter().map(|v| v.to_string().len() + 1).sum::<usize>();
        if bytes > max_bytes {
            table.rows.truncate(i);
            return Some(format!(
                "Query result set has exceeded the internal data size limit {max_bytes} bytes, so not all records were \
                 returned (E_QUERY_RESULT_SET_TOO_LARGE)."
            ));
        }
    }
    None
}

/// `[start, end)` in nanoseconds from an ISO 8601 timespan: a duration back from `now`,
/// `start/end`, or `start/duration`.
fn parse_timespan(text: &str, now: i128) -> Option<(i128, i128)> {
    match text.split_once('/') {
        None => Some((now - iso_duration(text)?, now)),
        Some((start, end)) => {
            let start = kql::datetime_nanos(start)?;
            let end = match kql::datetime_nanos(end) {
                Some(end) => end,
                None => start + iso_duration(end)?,
            };
            Some((start, end))
        }
    }
}

/// Nanoseconds in an ISO 8601 duration such as `P1D`, `PT1H30M`, `PT0.5S`.
fn iso_duration(text: &str) -> Option<i128> {
    let rest = text.trim().strip_prefix('P')?;
    let (days, time) = rest.split_once('T').unwrap_or((rest, ""));
    let mut total = 0f64;
    let mut number = String::new();
    for (part, units) in [
        (days, [('W', 604_800.0), ('D', 86_400.0), ('\0', 0.0)]),
        (time, [('H', 3_600.0), ('M', 60.0), ('S', 1.0)]),
    ] {
        for c in part.chars() {
            if c.is_ascii_digit() || c == '.' {
                number.push(c);
                continue;
            }
            let seconds = units.iter().find(|(u, _)| *u == c && c != '\0')?.1;
            total += number.parse::<f64>().ok()? * seconds;
            number.clear();
        }
        if !number.is_empty() {
            return None;
        }
    }
    Some((total * 1e9) as i128)
}

#[cfg(test)]
mod tests {
    use super::*;

    const SEC: i128 = 1_000_000_000;

    #[test]
    fn timespans() {
        assert_eq!(iso_duration("PT1H"), Some(3_600 * SEC));
        assert_eq!(iso_duration("P1DT0.5S"), Some(86_400 * SEC + SEC / 2));
        assert_eq!(iso_duration("1H"), None);
        assert_eq!(iso_duration("PT1X"), None);
        assert_eq!(parse_timespan("PT10S", 100 * SEC), Some((90 * SEC, 100 * SEC)));
        assert_eq!(
            parse_timespan("1970-01-01T00:00:10Z/1970-01-01T00:00:20Z", 0),
            Some((10 * SEC, 20 * SEC))
        );
        assert_eq!(
            parse_timespan("1970-01-01T00:00:10Z/PT5S", 0),
            Some((10 * SEC, 15 * SEC))
        );
    }
}
