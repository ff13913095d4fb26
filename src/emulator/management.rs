//! The management calls that set a destination up, as far as uploads depend on them, on the
//! same listener as uploads (Azure Resource Manager paths, without the `management.azure.com`
//! host):
//!
//! - `PUT /subscriptions/{s}/resourceGroups/{rg}/providers/Microsoft.OperationalInsights/workspaces/{ws}/tables/{Name}_CL`
//!   with `{"properties":{"schema":{"name","columns":[{"name","type"}]}}}`: the name must end in
//!   `_CL`, types are the table types (`string int long real boolean dateTime dynamic guid`), and
//!   `TimeGenerated` of type `dateTime` is required. 400 `InvalidParameter` otherwise.
//! - `PUT /subscriptions/{s}/resourceGroups/{rg}/providers/Microsoft.Insights/dataCollectionRules/{name}`
//!   with a rule body: stream names start with `Custom-`, every data flow's streams are declared
//!   and its destinations named, its `outputStream` `Custom-{Name}_CL` is a table created in the
//!   destination workspace, and with `transformKql: "source"` every stream column is a table
//!   column of a matching type. 400 `InvalidPayload` naming the problem otherwise. The answer
//!   carries `properties.immutableId` (kept when the same rule is put again) and, for
//!   `kind: Direct`, `properties.endpoints.logsIngestion` (this server); the rule's streams are
//!   then declared, so uploads are checked against them.
//! - `GET` of either returns what was put.
//!
//! Access: a rule [denied](super::Emulator::deny_rule), or created less than the
//! [role propagation delay](super::EmulatorBuilder::role_propagation) ago, answers uploads with
//! the service's 403 `OperationFailed` ("... IsRbacPresent: False ...").

use std::collections::HashMap;
use std::time::Instant;

use hyper::Response;
use serde_json::{Value, json};

use super::checks::{Checked, check_token};
use super::query::json_response;
use super::request::{Body, BodyRead, Recorder, Resource};
use super::schema::{Column, ColumnType};
use super::state::{Rule, Shared, Table};

/// A rule's declared streams.
type Streams = Vec<(String, Vec<Column>)>;

/// The service's 403 for a rule whose token holder has no role on it.
fn forbidden(rec: &mut Recorder, immutable_id: &str, rule_arm_id: &str) -> Box<Response<Body>> {
    rec.refuse(
        403,
        "OperationFailed",
        &format!(
            "The authentication token provided does not have access to ingest data for the data collection rule \
             with immutable Id '{immutable_id}' PipelineAccessResult: AccessGranted: False, IsRbacPresent: False, \
             IsDcrDceBindingValid: , DcrArmId: {rule_arm_id}, Message: Required authorization action was not found \
             for tenantId 00000000-0000-0000-0000-000000000000 objectId 00000000-0000-0000-0000-000000000000 on \
             resourceId {rule_arm_id} ConfigurationId: {immutable_id}.."
        ),
    )
}

/// Refuses an upload to a denied rule, or to one whose role assignment is still propagating.
pub(super) fn check_access(shared: &Shared, rule_id: &str, rec: &mut Recorder) -> Checked<()> {
    let resources = shared.resources();
    let propagating = |created: Instant| created.elapsed() < shared.config.role_propagation;
    let arm_id = resources.rule_id_of(rule_id).map(str::to_owned);
    let refused = resources.denied.contains(rule_id)
        || arm_id
            .as_ref()
            .is_some_and(|id| propagating(resources.rules[id].created));
    drop(resources);
    if !refused {
        return Ok(());
    }
    let arm_id = arm_id.unwrap_or_else(|| {
        format!(
            "/subscriptions/00000000-0000-0000-0000-000000000000/resourceGroups/unknown/providers/\
             Microsoft.Insights/dataCollectionRules/{rule_id}"
        )
    });
    Err(forbidden(rec, rule_id, &arm_id))
}

/// Answers one management request (its fault, if any, has been applied).
pub(super) fn answer(
    shared: &Shared,
    parts: &hyper::http::request::Parts,
    resource: Resource,
    body: BodyRead,
    authorized: bool,
    rec: &mut Recorder,
) -> Response<Body> {
    run(shared, parts, resource, body, authorized, rec).unwrap_or_else(|refused| *refused)
}

fn run(
    shared: &Shared,
    parts: &hyper::http::request::Parts,
    resource: Resource,
    body: BodyRead,
    authorized: bool,
    rec: &mut Recorder,
) -> Checked<Response<Body>> {
    check_token(authorized, &parts.headers, rec)?;
    let method = &parts.method;
    if method == hyper::Method::GET {
        let found = match &resource {
            Resource::Table { workspace, name } => shared
                .resources()
                .tables
                .get(&(workspace.clone(), name.to_ascii_lowercase()))
                .map(|table| table.body.clone()),
            Resource::Rule { id, .. } => shared.resources().rules.get(id).map(|r| r.body.clone()),
        };
        return match found {
            Some(body) => Ok(ok(rec, &body)),
            None => Err(rec.refuse(
                404,
                "ResourceNotFound",
                &format!("The resource '{}' was not found.", parts.uri.path()),
            )),
        };
    }
    if method != hyper::Method::PUT {
        return Err(rec.refuse(
            405,
            "MethodNotAllowed",
            &format!("Method {method} is not allowed; use PUT or GET."),
        ));
    }
    let body: Value = match body {
        BodyRead::Complete(bytes) => serde_json::from_slice(&bytes).map_err(|e| {
            rec.refuse(
                400,
                "InvalidRequestContent",
                &format!("The request body is not valid JSON: {e}."),
            )
        })?,
        BodyRead::TooLarge => return Err(rec.refuse(413, "RequestEntityTooLarge", "The request body is too large.")),
    };
    match resource {
        Resource::Table { workspace, name } => put_table(shared, parts.uri.path(), workspace, name, body, rec),
        Resource::Rule { id, name } => put_rule(shared, parts.uri.path(), id, name, body, rec),
    }
}

fn ok(rec: &mut Recorder, body: &Value) -> Response<Body> {
    rec.finish(Some(200), None, None);
    json_response(200, body, None)
}

/// The table types of the Tables API.
const TABLE_TYPES: [&str; 8] = [
    "string", "int", "long", "real", "boolean", "datetime", "dynamic", "guid",
];

fn put_table(
    shared: &Shared,
    path: &str,
    workspace: String,
    name: String,
    body: Value,
    rec: &mut Recorder,
) -> Checked<Response<Body>> {
    let mut invalid = |message: String| rec.refuse(400, "InvalidParameter", &message);
    if !name.ends_with("_CL") {
        return Err(invalid(format!(
            "Custom table name '{name}' is invalid: it must end with '_CL'."
        )));
    }
    let schema = &body["properties"]["schema"];
    if let Some(given) = schema.get("name").and_then(Value::as_str)
        && given != name
    {
        return Err(invalid(format!(
            "The schema name '{given}' does not match the table name '{name}' in the path."
        )));
    }
    let Some(entries) = schema.get("columns").and_then(Value::as_array) else {
        return Err(invalid("properties.schema.columns is required.".to_owned()));
    };
    let mut columns = Vec::with_capacity(entries.len());
    for entry in entries {
        let column = entry.get("name").and_then(Value::as_str).unwrap_or_default();
        let kind = entry.get("type").and_then(Value::as_str).unwrap_or_default();
        if !TABLE_TYPES.contains(&kind.to_ascii_lowercase().as_str()) {
            return Err(invalid(format!(
                "Column '{column}' has type '{kind}'; table column types are {}.",
                TABLE_TYPES.join(", ")
            )));
        }
        if !valid_column_name(column) {
            return Err(invalid(format!(
                "Column name '{column}' is invalid: use letters, digits and '_', starting with a letter."
            )));
        }
        if columns
            .iter()
            .any(|(c, _): &(String, String)| c.eq_ignore_ascii_case(column))
        {
            return Err(invalid(format!("Column '{column}' appears twice.")));
        }
        columns.push((column.to_owned(), kind.to_ascii_lowercase()));
    }
    if !columns.iter().any(|(c, k)| c == "TimeGenerated" && k == "datetime") {
        return Err(invalid(
            "The table needs a 'TimeGenerated' column of type 'dateTime'.".to_owned(),
        ));
    }
    let mut stored = body.clone();
    stored["id"] = json!(path);
    stored["name"] = json!(name);
    stored["properties"]["provisioningState"] = json!("Succeeded");
    shared.resources().tables.insert(
        (workspace, name.to_ascii_lowercase()),
        Table {
            body: stored.clone(),
            columns,
        },
    );
    Ok(ok(rec, &stored))
}

fn valid_column_name(name: &str) -> bool {
    let mut chars = name.chars();
    chars.next().is_some_and(|c| c.is_ascii_alphabetic()) && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
}

/// Whether a stream column of type `stream` may land in a table column of type `table`.
fn compatible(stream: ColumnType, table: &str) -> bool {
    match stream {
        ColumnType::String => table == "string" || table == "guid",
        other => other.as_str() == table,
    }
}

fn put_rule(
    shared: &Shared,
    path: &str,
    id: String,
    name: String,
    body: Value,
    rec: &mut Recorder,
) -> Checked<Response<Body>> {
    let streams = match rule_streams(shared, &body) {
        Ok(streams) => streams,
        Err((detail, message)) => {
            return Err(rec.refuse(400, "InvalidPayload", &format!("{detail}: {message}")));
        }
    };
    let mut resources = shared.resources();
    let immutable_id = match resources.rules.get(&id) {
        Some(rule) => rule.immutable_id.clone(),
        None => {
            let mut rng = fastrand::Rng::new();
            let hex: String = std::iter::repeat_with(|| std::char::from_digit(rng.u32(0..16), 16).unwrap_or('0'))
                .take(32)
                .collect();
            format!("dcr-{hex}")
        }
    };
    let mut stored = body.clone();
    stored["id"] = json!(path);
    stored["name"] = json!(name);
    stored["properties"]["immutableId"] = json!(immutable_id);
    stored["properties"]["provisioningState"] = json!("Succeeded");
    if body["kind"].as_str().is_some_and(|k| k.eq_ignore_ascii_case("Direct")) {
        let endpoint = shared.endpoint.get().cloned().unwrap_or_default();
        stored["properties"]["endpoints"] = json!({ "logsIngestion": endpoint });
    }
    resources.rules.insert(
        id,
        Rule {
            immutable_id: immutable_id.clone(),
            created: Instant::now(),
            body: stored.clone(),
        },
    );
    drop(resources);
    shared.declarations_mut().replace_rule(&immutable_id, streams);
    Ok(ok(rec, &stored))
}

/// The rule's declared streams, once its data flows check out; else `(detail code, message)`.
fn rule_streams(shared: &Shared, body: &Value) -> Result<Streams, (&'static str, String)> {
    let properties = &body["properties"];
    if !properties["streamDeclarations"].is_object() {
        return Err(("InvalidStream", "properties.streamDeclarations is required".into()));
    }
    let streams =
        Column::from_stream_declarations(&properties["streamDeclarations"]).map_err(|e| ("InvalidStream", e))?;
    let workspaces: HashMap<&str, String> = properties["destinations"]["logAnalytics"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|d| {
            let name = d["name"].as_str()?;
            let workspace = d["workspaceResourceId"]
                .as_str()?
                .trim_end_matches('/')
                .to_ascii_lowercase();
            Some((name, workspace))
        })
        .collect();
    if workspaces.is_empty() {
        return Err((
            "InvalidDestination",
            "properties.destinations.logAnalytics needs a {\"workspaceResourceId\", \"name\"} entry".into(),
        ));
    }
    let Some(flows) = properties["dataFlows"].as_array().filter(|f| !f.is_empty()) else {
        return Err(("InvalidDataFlow", "properties.dataFlows needs at least one flow".into()));
    };
    let resources = shared.resources();
    for flow in flows {
        let output = flow["outputStream"].as_str().unwrap_or_default();
        let Some(table) = output.strip_prefix("Custom-").filter(|t| t.ends_with("_CL")) else {
            return Err((
                "InvalidOutputTable",
                format!("outputStream '{output}' must be 'Custom-<Name>_CL', a custom table"),
            ));
        };
        let source = flow["transformKql"].as_str().is_none_or(|t| t.trim() == "source");
        for destination in flow["destinations"].as_array().into_iter().flatten() {
            let destination = destination.as_str().unwrap_or_default();
            let Some(workspace) = workspaces.get(destination) else {
                return Err((
                    "InvalidDestination",
                    format!("data flow destination '{destination}' is not in destinations.logAnalytics"),
                ));
            };
            let Some(Table {
                columns: table_columns, ..
            }) = resources.tables.get(&(workspace.clone(), table.to_ascii_lowercase()))
            else {
                return Err((
                    "InvalidOutputTable",
                    format!("table '{table}' does not exist in workspace {workspace}; create it first"),
                ));
            };
            for stream in flow["streams"].as_array().into_iter().flatten() {
                let stream = stream.as_str().unwrap_or_default();
                let Some((_, columns)) = streams.iter().find(|(s, _)| s == stream) else {
                    return Err((
                        "InvalidStream",
                        format!("data flow stream '{stream}' is not in streamDeclarations"),
                    ));
                };
                if !source {
                    continue;
                }
                for column in columns {
                    match table_columns.iter().find(|(c, _)| *c == column.name) {
                        Some((_, kind)) if compatible(column.kind, kind) => {}
                        Some((_, kind)) => {
                            return Err((
                                "InvalidTransformOutput",
                                format!(
                                    "column '{}' is {} in stream '{stream}' but {kind} in table '{table}'",
                                    column.name, column.kind
                                ),
                            ));
                        }
                        None => {
                            return Err((
                                "InvalidTransformOutput",
                                format!(
                                    "column '{}' of stream '{stream}' is not a column of table '{table}'",
                                    column.name
                                ),
                            ));
                        }
                    }
                }
            }
        }
    }
    Ok(streams)
}
