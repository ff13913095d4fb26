//! What Azure needs before the first row: a custom table, a data collection rule (DCR) whose
//! stream declaration matches the rows, and the Monitoring Metrics Publisher role on the rule.
//! [`Provisioning`] writes the two request bodies and the `az` commands from the row shape.
//!
//! ```
//! use tracing_azure_logs::AzureLogs;
//! use tracing_azure_logs::provision::AzureTarget;
//!
//! let builder = AzureLogs::builder().stream("Custom-MyService_CL");
//! let plan = builder.provisioning()?;
//! assert_eq!(plan.table(), "MyService_CL");
//! let table = plan.table_body(); // PUT .../workspaces/{ws}/tables/MyService_CL
//! let rule = plan.rule_body("westeurope", "/subscriptions/s/resourceGroups/rg/providers/Microsoft.OperationalInsights/workspaces/ws");
//! assert_eq!(rule["kind"], "Direct");
//! let script = plan.az_commands(&AzureTarget::new("my-subscription-id", "my-rg", "my-workspace", "westeurope"));
//! assert!(script.contains("Monitoring Metrics Publisher"));
//! # Ok::<(), tracing_azure_logs::provision::ProvisionError>(())
//! ```
//!
//! Pitfalls: the role assignment takes up to 30 minutes to apply, and uploads get 403 meanwhile;
//! a table's column can be added later but not retyped; every stream column must be a table
//! column of the same type for the rule's `transformKql: "source"`.

use std::fmt::Write as _;

use serde::Serialize;
use serde_json::{Value, json};

use crate::row::Columns;

/// The role that lets an identity upload through a rule: Monitoring Metrics Publisher.
pub const PUBLISHER_ROLE_ID: &str = "3913510d-42f4-4e42-8a64-420c390055eb";
/// The Tables API version the commands use.
pub const TABLES_API_VERSION: &str = "2022-10-01";
/// The data collection rules API version the commands use.
pub const RULES_API_VERSION: &str = "2023-03-11";

/// Column names the service reserves in custom tables.
const RESERVED: [&str; 7] = [
    "id",
    "_ResourceId",
    "_SubscriptionId",
    "TenantId",
    "Type",
    "UniqueId",
    "Title",
];

/// A column type of a custom table. The stream declaration spells them the same, except that
/// it has no `guid` (a guid column is declared `string` in the stream).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum ColumnKind {
    /// `string`
    String,
    /// `int` (32-bit)
    Int,
    /// `long` (64-bit)
    Long,
    /// `real`
    Real,
    /// `boolean`
    Boolean,
    /// `dateTime` (RFC 3339 text in the rows)
    DateTime,
    /// `dynamic` (any JSON: objects, arrays)
    Dynamic,
    /// `guid` (text in the rows)
    Guid,
}

impl ColumnKind {
    /// The Tables API spelling (`dateTime`, `string`, ...).
    pub fn table_type(self) -> &'static str {
        match self {
            ColumnKind::String => "string",
            ColumnKind::Int => "int",
            ColumnKind::Long => "long",
            ColumnKind::Real => "real",
            ColumnKind::Boolean => "boolean",
            ColumnKind::DateTime => "dateTime",
            ColumnKind::Dynamic => "dynamic",
            ColumnKind::Guid => "guid",
        }
    }

    /// The stream declaration spelling (`datetime`, `string`, ...; `guid` is `string`).
    pub fn stream_type(self) -> &'static str {
        match self {
            ColumnKind::DateTime => "datetime",
            ColumnKind::Guid => "string",
            other => other.table_type(),
        }
    }

    /// Parses either spelling, case-insensitively; `None` if unknown.
    pub fn parse(name: &str) -> Option<ColumnKind> {
        Some(match name.to_ascii_lowercase().as_str() {
            "string" => ColumnKind::String,
            "int" => ColumnKind::Int,
            "long" => ColumnKind::Long,
            "real" => ColumnKind::Real,
            "boolean" | "bool" => ColumnKind::Boolean,
            "datetime" => ColumnKind::DateTime,
            "dynamic" => ColumnKind::Dynamic,
            "guid" => ColumnKind::Guid,
            _ => return None,
        })
    }

    /// The kind a JSON value suggests: text that parses as a time is `DateTime`, a 36-character
    /// 8-4-4-4-12 hex text is `Guid`; `None` for `null` (no type can be told).
    fn of_value(value: &Value) -> Option<ColumnKind> {
        Some(match value {
            Value::Null => return None,
            Value::Bool(_) => ColumnKind::Boolean,
            Value::Number(n) if n.is_f64() => ColumnKind::Real,
            Value::Number(_) => ColumnKind::Long,
            Value::String(s) if looks_like_time(s) => ColumnKind::DateTime,
            Value::String(s) if looks_like_guid(s) => ColumnKind::Guid,
            Value::String(_) => ColumnKind::String,
            Value::Array(_) | Value::Object(_) => ColumnKind::Dynamic,
        })
    }
}

impl std::fmt::Display for ColumnKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.table_type())
    }
}

fn looks_like_time(s: &str) -> bool {
    let b = s.as_bytes();
    b.len() >= 20
        && b[..4].iter().all(u8::is_ascii_digit)
        && b[4] == b'-'
        && b[7] == b'-'
        && (b[10] == b'T' || b[10] == b't')
        && b[13] == b':'
        && (s.ends_with('Z') || s.ends_with('z') || s[19..].contains(['+', '-']))
}

fn looks_like_guid(s: &str) -> bool {
    s.len() == 36
        && s.char_indices().all(|(i, c)| match i {
            8 | 13 | 18 | 23 => c == '-',
            _ => c.is_ascii_hexdigit(),
        })
}

/// Why a provisioning plan could not be made. Nothing was sent anywhere: fix the shape or the
/// names and try again.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ProvisionError {
    /// The stream is not a custom stream name.
    #[error("stream {0:?} is not a custom stream: name it Custom-<Name>_CL (for example Custom-MyService_CL)")]
    Stream(String),
    /// A table or column name the service would refuse.
    #[error("{what} name {name:?} is invalid: {reason}")]
    Name {
        /// `"table"` or `"column"`.
        what: &'static str,
        /// The name.
        name: String,
        /// What is wrong with it.
        reason: &'static str,
    },
    /// Two columns with the same name (the service compares them case-insensitively).
    #[error("column {0:?} appears twice (names are compared case-insensitively)")]
    Duplicate(String),
    /// A sample row's value gives no type.
    #[error(
        "the sample's field {field:?} is {found}: give a sample with a value there, or list the columns explicitly with Provisioning::with_columns"
    )]
    Untyped {
        /// The field.
        field: String,
        /// What it was (`null`).
        found: &'static str,
    },
    /// The sample does not serialize to a JSON object.
    #[error("the sample row is not a JSON object ({0}); rows must be objects")]
    NotAnObject(String),
}

/// A table, a rule and the role: what a stream needs in Azure, for one row shape.
#[derive(Clone, Debug, PartialEq)]
pub struct Provisioning {
    stream: String,
    table: String,
    /// The rows' columns, in row order.
    columns: Vec<(String, ColumnKind)>,
}

impl Provisioning {
    /// The plan for rows with these columns, sent to `stream` (`Custom-<Name>_CL`; the table is
    /// `<Name>_CL`). Checks every name the way the service does.
    pub fn with_columns<N: Into<String>>(
        stream: &str,
        columns: impl IntoIterator<Item = (N, ColumnKind)>,
    ) -> Result<Provisioning, ProvisionError> {
        let name = stream
            .strip_prefix("Custom-")
            .filter(|n| !n.is_empty())
            .ok_or_else(|| ProvisionError::Stream(stream.to_owned()))?;
        let table = if name.ends_with("_CL") {
            name.to_owned()
        } else {
            format!("{name}_CL")
        };
        check_name("table", &table, 63)?;
        let columns: Vec<(String, ColumnKind)> = columns.into_iter().map(|(n, k)| (n.into(), k)).collect();
        for (i, (column, _)) in columns.iter().enumerate() {
            check_name("column", column, 45)?;
            if RESERVED.contains(&column.as_str()) {
                return Err(ProvisionError::Name {
                    what: "column",
                    name: column.clone(),
                    reason: "the service reserves it (id, _ResourceId, _SubscriptionId, TenantId, Type, UniqueId, Title); \
                             rename the column, e.g. #[serde(rename = \"OrderId\")]",
                });
            }
            if columns[..i].iter().any(|(c, _)| c.eq_ignore_ascii_case(column)) {
                return Err(ProvisionError::Duplicate(column.clone()));
            }
        }
        Ok(Provisioning {
            stream: stream.to_owned(),
            table,
            columns,
        })
    }

    /// The plan for the layer's rows (or the log bridge's), as [`Columns`] shape them.
    pub fn for_columns(stream: &str, columns: &Columns) -> Result<Provisioning, ProvisionError> {
        let kinds = columns.typed().map(|(name, kind)| {
            let kind = ColumnKind::parse(kind).expect("Columns uses the stream type names");
            (name.to_owned(), kind)
        });
        Provisioning::with_columns(stream, kinds)
    }

    /// The plan for rows like `sample` (a [`Table`](crate::table::Table)'s rows): each top-level
    /// field becomes a column, typed from its value (text that parses as an RFC 3339 time is
    /// `dateTime`, a GUID-shaped text `guid`, integers `long`, other numbers `real`, objects and
    /// arrays `dynamic`). `TimeGenerated` is added when the sample has none, as `Table::send`
    /// does. Pitfall: a `null` (a `None`) gives no type: use a sample with every field set, or
    /// [`with_columns`](Self::with_columns).
    pub fn from_sample<T: Serialize>(stream: &str, sample: &T) -> Result<Provisioning, ProvisionError> {
        let text = serde_json::to_string(sample).map_err(|e| ProvisionError::NotAnObject(e.to_string()))?;
        let Ok(Fields(fields)) = serde_json::from_str::<Fields>(&text) else {
            return Err(ProvisionError::NotAnObject(format!("it serializes to {text:.80}")));
        };
        let mut columns = Vec::with_capacity(fields.len() + 1);
        if !fields.iter().any(|(name, _)| name == "TimeGenerated") {
            columns.push(("TimeGenerated".to_owned(), ColumnKind::DateTime));
        }
        for (field, value) in &fields {
            let kind = ColumnKind::of_value(value).ok_or_else(|| ProvisionError::Untyped {
                field: field.clone(),
                found: "null",
            })?;
            columns.push((field.clone(), kind));
        }
        Provisioning::with_columns(stream, columns)
    }

    /// The stream name (`Custom-<Name>_CL`).
    pub fn stream(&self) -> &str {
        &self.stream
    }

    /// The table name (`<Name>_CL`).
    pub fn table(&self) -> &str {
        &self.table
    }

    /// The rows' columns, in row order.
    pub fn columns(&self) -> &[(String, ColumnKind)] {
        &self.columns
    }

    /// Whether the rows carry `TimeGenerated` as a time. When they do not, the rule's transform
    /// sets it to the time of ingestion.
    fn rows_have_time(&self) -> bool {
        self.columns
            .iter()
            .any(|(n, k)| n == "TimeGenerated" && *k == ColumnKind::DateTime)
    }

    /// The body of `PUT .../workspaces/{ws}/tables/<Name>_CL?api-version=2022-10-01`: the rows'
    /// columns, with `TimeGenerated` first when the rows leave it out (every table has it).
    pub fn table_body(&self) -> Value {
        let mut columns: Vec<Value> = Vec::with_capacity(self.columns.len() + 1);
        if !self.rows_have_time() {
            columns.push(json!({"name": "TimeGenerated", "type": "dateTime"}));
        }
        columns.extend(
            self.columns
                .iter()
                .map(|(name, kind)| json!({"name": name, "type": kind.table_type()})),
        );
        json!({ "properties": { "schema": { "name": self.table, "columns": columns } } })
    }

    /// The stream declaration, `{"columns":[{"name","type"}...]}`.
    pub fn stream_declaration(&self) -> Value {
        let columns: Vec<Value> = self
            .columns
            .iter()
            .map(|(name, kind)| json!({"name": name, "type": kind.stream_type()}))
            .collect();
        json!({ "columns": columns })
    }

    /// The body of `PUT .../dataCollectionRules/{name}?api-version=2023-03-11`: a `kind: Direct`
    /// rule (it gets its own logs ingestion endpoint, no DCE needed) in `location` (the
    /// workspace's region), declaring the stream and sending it unchanged to the table in the
    /// workspace `workspace_resource_id` (`/subscriptions/.../workspaces/{ws}`).
    pub fn rule_body(&self, location: &str, workspace_resource_id: &str) -> Value {
        let transform = if self.rows_have_time() {
            "source"
        } else {
            "source | extend TimeGenerated = now()"
        };
        json!({
            "location": location,
            "kind": "Direct",
            "properties": {
                "streamDeclarations": { &self.stream: self.stream_declaration() },
                "destinations": {
                    "logAnalytics": [{ "workspaceResourceId": workspace_resource_id, "name": "workspace" }]
                },
                "dataFlows": [{
                    "streams": [&self.stream],
                    "destinations": ["workspace"],
                    "transformKql": transform,
                    "outputStream": format!("Custom-{}", self.table),
                }]
            }
        })
    }

    /// A shell script of `az` commands that creates the table and the rule from `table.json`
    /// and `rule.json` (the two bodies, written beside it), grants the role, and prints the
    /// settings the crate reads. Needs the Azure CLI, logged in (`az login`) with rights to
    /// create tables, rules and role assignments.
    pub fn az_commands(&self, target: &AzureTarget) -> String {
        let AzureTarget {
            subscription,
            resource_group,
            workspace,
            rule_name,
            assignee,
            ..
        } = target;
        let rule_name = rule_name
            .clone()
            .unwrap_or_else(|| format!("dcr-{}", self.table.to_ascii_lowercase().replace('_', "-")));
        let group = format!("/subscriptions/{subscription}/resourceGroups/{resource_group}");
        let workspace_id = target.workspace_resource_id();
        let rule_id = format!("{group}/providers/Microsoft.Insights/dataCollectionRules/{rule_name}");
        let (assignee, principal_type) = match assignee {
            Some(id) => (id.clone(), "ServicePrincipal"),
            None => ("$(az ad signed-in-user show --query id -o tsv)".to_owned(), "User"),
        };
        let mut s = String::new();
        let _ = writeln!(
            s,
            "# Creates table {} in workspace {workspace}, data collection rule {rule_name},",
            self.table
        );
        let _ = writeln!(
            s,
            "# and grants the uploading identity 'Monitoring Metrics Publisher' on the rule."
        );
        let _ = writeln!(
            s,
            "# The role takes up to 30 minutes to apply: uploads get 403 until then."
        );
        let _ = writeln!(s, "set -euo pipefail");
        let _ = writeln!(
            s,
            "ASSIGNEE=\"{assignee}\"   # object id of the identity that uploads ({principal_type})"
        );
        let _ = writeln!(s);
        let _ = writeln!(s, "# 1. The table (body: table.json)");
        let _ = writeln!(
            s,
            "az rest --method put --url \"https://management.azure.com{workspace_id}/tables/{}?api-version={TABLES_API_VERSION}\" --body @table.json",
            self.table
        );
        let _ = writeln!(s);
        let _ = writeln!(s, "# 2. The data collection rule, kind Direct (body: rule.json)");
        let _ = writeln!(
            s,
            "az rest --method put --url \"https://management.azure.com{rule_id}?api-version={RULES_API_VERSION}\" --body @rule.json"
        );
        let _ = writeln!(s);
        let _ = writeln!(s, "# 3. The role on the rule: Monitoring Metrics Publisher");
        let _ = writeln!(
            s,
            "az role assignment create --assignee-object-id \"$ASSIGNEE\" --assignee-principal-type {principal_type} \\\n  --role {PUBLISHER_ROLE_ID} --scope \"{rule_id}\""
        );
        let _ = writeln!(
            s,
            "# (a managed identity or an app registration is a ServicePrincipal; a person, a User)"
        );
        let _ = writeln!(s);
        let _ = writeln!(s, "# 4. The settings tracing-azure-logs reads");
        let _ = writeln!(
            s,
            "az rest --method get --url \"https://management.azure.com{rule_id}?api-version={RULES_API_VERSION}\" \\\n  --query \"{{AZURE_DCE_ENDPOINT: properties.endpoints.logsIngestion, AZURE_DCR_RULE_ID: properties.immutableId}}\" -o yaml"
        );
        let _ = writeln!(s, "echo \"AZURE_DCR_STREAM_NAME: {}\"", self.stream);
        s
    }
}

/// An object's fields in the order they were written (a `serde_json::Map` sorts them).
struct Fields(Vec<(String, Value)>);

impl<'de> serde::Deserialize<'de> for Fields {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct Visitor;
        impl<'de> serde::de::Visitor<'de> for Visitor {
            type Value = Fields;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("a JSON object")
            }
            fn visit_map<A: serde::de::MapAccess<'de>>(self, mut map: A) -> Result<Fields, A::Error> {
                let mut fields = Vec::new();
                while let Some(entry) = map.next_entry::<String, Value>()? {
                    fields.push(entry);
                }
                Ok(Fields(fields))
            }
        }
        deserializer.deserialize_map(Visitor)
    }
}

/// Fails on a name the service refuses: letters, digits and `_`, starting with a letter, at
/// most `max` characters.
fn check_name(what: &'static str, name: &str, max: usize) -> Result<(), ProvisionError> {
    let reason = if !name.chars().next().is_some_and(|c| c.is_ascii_alphabetic()) {
        "it must start with a letter"
    } else if !name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') {
        "use only letters, digits and '_'"
    } else if name.len() > max {
        if what == "table" {
            "it is over 63 characters"
        } else {
            "it is over 45 characters"
        }
    } else {
        return Ok(());
    };
    Err(ProvisionError::Name {
        what,
        name: name.to_owned(),
        reason,
    })
}

/// Where in Azure the table and rule go, for [`Provisioning::az_commands`].
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct AzureTarget {
    /// Subscription id.
    pub subscription: String,
    /// Resource group of the workspace (the rule goes there too).
    pub resource_group: String,
    /// Log Analytics workspace name.
    pub workspace: String,
    /// Region of the workspace (the rule's `location`).
    pub location: String,
    /// Name of the rule; default `dcr-<table>`.
    pub rule_name: Option<String>,
    /// Object id of the identity that uploads; default the signed-in `az` user.
    pub assignee: Option<String>,
}

impl AzureTarget {
    /// A target in this subscription, resource group, workspace and region.
    pub fn new(
        subscription: impl Into<String>,
        resource_group: impl Into<String>,
        workspace: impl Into<String>,
        location: impl Into<String>,
    ) -> AzureTarget {
        AzureTarget {
            subscription: subscription.into(),
            resource_group: resource_group.into(),
            workspace: workspace.into(),
            location: location.into(),
            rule_name: None,
            assignee: None,
        }
    }

    /// Names the rule.
    pub fn rule_name(mut self, name: impl Into<String>) -> Self {
        self.rule_name = Some(name.into());
        self
    }

    /// The identity (object id) to grant the role to.
    pub fn assignee(mut self, object_id: impl Into<String>) -> Self {
        self.assignee = Some(object_id.into());
        self
    }

    /// `/subscriptions/{s}/resourceGroups/{rg}/providers/Microsoft.OperationalInsights/workspaces/{ws}`.
    pub fn workspace_resource_id(&self) -> String {
        format!(
            "/subscriptions/{}/resourceGroups/{}/providers/Microsoft.OperationalInsights/workspaces/{}",
            self.subscription, self.resource_group, self.workspace
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_checked_like_the_service() {
        let bad = Provisioning::with_columns("MyService_CL", [("TimeGenerated", ColumnKind::DateTime)]);
        assert_eq!(bad, Err(ProvisionError::Stream("MyService_CL".into())));
        let reserved = Provisioning::with_columns("Custom-A_CL", [("Type", ColumnKind::String)]);
        assert!(matches!(reserved, Err(ProvisionError::Name { name, .. }) if name == "Type"));
        let id = Provisioning::with_columns("Custom-A_CL", [("id", ColumnKind::Long)]);
        assert!(matches!(id, Err(ProvisionError::Name { reason, .. }) if reason.contains("rename")));
        let twice = Provisioning::with_columns("Custom-A_CL", [("a", ColumnKind::Int), ("A", ColumnKind::Long)]);
        assert_eq!(twice, Err(ProvisionError::Duplicate("A".into())));
        let dash = Provisioning::with_columns("Custom-A_CL", [("my-col", ColumnKind::Int)]);
        assert!(matches!(dash, Err(ProvisionError::Name { .. })));
        let plan = Provisioning::with_columns("Custom-Orders", [("Id", ColumnKind::Long)]).unwrap();
        assert_eq!(plan.table(), "Orders_CL");
    }

    #[test]
    fn sample_types_and_time() {
        #[derive(Serialize)]
        struct Order {
            order_id: u64,
            total: f64,
            paid: bool,
            at: &'static str,
            key: &'static str,
            tags: Vec<&'static str>,
            note: Option<&'static str>,
        }
        let sample = Order {
            order_id: 1,
            total: 2.5,
            paid: true,
            at: "2026-12-04T10:00:00.123Z",
            key: "0f8fad5b-d9cb-469f-a165-70867728950e",
            tags: vec!["a"],
            note: Some("x"),
        };
        let plan = Provisioning::from_sample("Custom-Orders_CL", &sample).unwrap();
        let kinds: Vec<(&str, ColumnKind)> = plan.columns().iter().map(|(n, k)| (n.as_str(), *k)).collect();
        assert_eq!(
            kinds,
            [
                ("TimeGenerated", ColumnKind::DateTime),
                ("order_id", ColumnKind::Long),
                ("total", ColumnKind::Real),
                ("paid", ColumnKind::Boolean),
                ("at", ColumnKind::DateTime),
                ("key", ColumnKind::Guid),
                ("tags", ColumnKind::Dynamic),
                ("note", ColumnKind::String),
            ]
        );
        assert_eq!(plan.stream_declaration()["columns"][5]["type"], "string");
        assert_eq!(plan.table_body()["properties"]["schema"]["columns"][5]["type"], "guid");
        let none = Order { note: None, ..sample };
        assert_eq!(
            Provisioning::from_sample("Custom-Orders_CL", &none),
            Err(ProvisionError::Untyped {
                field: "note".into(),
                found: "null"
            })
        );
    }
}
