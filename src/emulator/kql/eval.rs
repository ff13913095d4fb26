//! Runs a parsed query over a stream's rows, as the service's query engine would for this
//! subset: typed values (datetimes compare as times, `Properties.seq` reaches into dynamic
//! columns), KQL's case-insensitive `contains`/`has`/`startswith`, and result columns typed the
//! way the Logs Query API names them.

use std::cmp::Ordering;

use serde_json::Value;

use super::parse::{CompareOp, Expr, KqlError, Operator, Query, TextOp, datetime_nanos};

/// A value during evaluation.
#[derive(Clone, Debug, PartialEq)]
pub(crate) enum Val {
    Null,
    Bool(bool),
    Long(i64),
    Real(f64),
    Str(String),
    /// Nanoseconds since the Unix epoch.
    DateTime(i128),
    /// Nanoseconds.
    TimeSpan(i128),
    Dynamic(Value),
}

/// A row as stored, with the time the emulator accepted it.
pub(crate) struct Row {
    pub(crate) values: serde_json::Map<String, Value>,
    /// Nanoseconds since the Unix epoch.
    pub(crate) ingested: i128,
}

/// A query's result: column names and types (the API's names), and rows of JSON values.
#[derive(Debug)]
pub(crate) struct ResultTable {
    pub(crate) columns: Vec<(String, &'static str)>,
    pub(crate) rows: Vec<Vec<Value>>,
}

struct Table {
    columns: Vec<String>,
    rows: Vec<(Vec<Val>, i128)>,
}

/// Runs `query` over `rows` at time `now` (nanoseconds). `declared` gives the stream's column
/// names and types, when the stream is declared; otherwise columns come in first-seen order and
/// types from the values.
pub(crate) fn run(
    query: &Query,
    rows: Vec<Row>,
    declared: Option<&[(String, String)]>,
    now: i128,
) -> Result<ResultTable, KqlError> {
    let mut table = load(rows, declared);
    for operator in &query.operators {
        table = apply(operator, table, now)?;
    }
    Ok(finish(table))
}

fn load(rows: Vec<Row>, declared: Option<&[(String, String)]>) -> Table {
    let mut columns: Vec<String> = declared
        .map(|d| d.iter().map(|(n, _)| n.clone()).collect())
        .unwrap_or_default();
    if declared.is_none() {
        for row in &rows {
            for key in row.values.keys() {
                if !columns.contains(key) {
                    columns.push(key.clone());
                }
            }
        }
    }
    let type_of = |name: &str| {
        declared
            .and_then(|d| d.iter().find(|(n, _)| n == name))
            .map(|(_, t)| t.to_ascii_lowercase())
    };
    let types: Vec<Option<String>> = columns.iter().map(|c| type_of(c)).collect();
    let rows = rows
        .into_iter()
        .map(|mut row| {
            let values = columns
                .iter()
                .zip(&types)
                .map(|(name, ty)| match row.values.remove(name) {
                    None | Some(Value::Null) => Val::Null,
                    Some(value) => typed(name, value, ty.as_deref()),
                })
                .collect();
            (values, row.ingested)
        })
        .collect();
    Table { columns, rows }
}

/// A stored JSON value as the column's type reads it.
fn typed(name: &str, value: Value, ty: Option<&str>) -> Val {
    match (ty, value) {
        (Some("datetime"), Value::String(s)) => datetime_nanos(&s).map_or(Val::Str(s), Val::DateTime),
        (None, Value::String(s)) if name == "TimeGenerated" => datetime_nanos(&s).map_or(Val::Str(s), Val::DateTime),
        (Some("dynamic"), value) => Val::Dynamic(value),
        (_, value) => from_json(value),
    }
}

fn from_json(value: Value) -> Val {
    match value {
        Value::Null => Val::Null,
        Value::Bool(b) => Val::Bool(b),
        Value::Number(n) => n
            .as_i64()
            .map_or_else(|| Val::Real(n.as_f64().unwrap_or(f64::NAN)), Val::Long),
        Value::String(s) => Val::Str(s),
        other => Val::Dynamic(other),
    }
}

fn apply(operator: &Operator, mut table: Table, now: i128) -> Result<Table, KqlError> {
    Ok(match operator {
        Operator::Where(predicate) => {
            let mut kept = Vec::with_capacity(table.rows.len());
            for row in std::mem::take(&mut table.rows) {
                if eval(predicate, &table.columns, &row, now)? == Val::Bool(true) {
                    kept.push(row);
                }
            }
            table.rows = kept;
            table
        }
        Operator::Project(items) => {
            let mut rows = Vec::with_capacity(table.rows.len());
            for row in &table.rows {
                let values = items
                    .iter()
                    .map(|(_, e)| eval(e, &table.columns, row, now))
                    .collect::<Result<_, _>>()?;
                rows.push((values, row.1));
            }
            Table {
                columns: items.iter().map(|(n, _)| n.clone()).collect(),
                rows,
            }
        }
        Operator::Extend(items) => {
            for (name, expr) in items {
                let values = table
                    .rows
                    .iter()
                    .map(|row| eval(expr, &table.columns, row, now))
                    .collect::<Result<Vec<_>, _>>()?;
                let index = match table.columns.iter().position(|c| c == name) {
                    Some(i) => i,
                    None => {
                        table.columns.push(name.clone());
                        table.rows.iter_mut().for_each(|r| r.0.push(Val::Null));
                        table.columns.len() - 1
                    }
                };
                for (row, value) in table.rows.iter_mut().zip(values) {
                    row.0[index] = value;
                }
            }
            table
        }
        Operator::OrderBy(keys) => sort(table, keys, now)?,
        Operator::Take(n) => {
            table.rows.truncate(*n as usize);
            table
        }
        Operator::Top(n, key, descending) => {
            let mut table = sort(table, &[(key.clone(), *descending)], now)?;
            table.rows.truncate(*n as usize);
            table
        }
        Operator::Count => Table {
            columns: vec!["Count".into()],
            rows: vec![(vec![Val::Long(table.rows.len() as i64)], 0)],
        },
        Operator::SummarizeCount { name, by } => {
            let indices = by
                .iter()
                .map(|b| column_index(&table.columns, b))
                .collect::<Result<Vec<_>, _>>()?;
            let mut groups: Vec<(Vec<Val>, i64)> = Vec::new();
            for (values, _) in &table.rows {
                let key: Vec<Val> = indices.iter().map(|&i| values[i].clone()).collect();
                match groups.iter_mut().find(|(k, _)| *k == key) {
                    Some((_, n)) => *n += 1,
                    None => groups.push((key, 1)),
                }
            }
            if by.is_empty() && groups.is_empty() {
                groups.push((Vec::new(), 0));
            }
            let mut columns = by.clone();
            columns.push(name.clone());
            Table {
                columns,
                rows: groups
                    .into_iter()
                    .map(|(mut key, n)| {
                        key.push(Val::Long(n));
                        (key, 0)
                    })
                    .collect(),
            }
        }
    })
}

fn sort(mut table: Table, keys: &[(Expr, bool)], now: i128) -> Result<Table, KqlError> {
    let mut keyed = Vec::with_capacity(table.rows.len());
    for row in std::mem::take(&mut table.rows) {
        let values = keys
            .iter()
            .map(|(k, _)| eval(k, &table.columns, &row, now))
            .collect::<Result<Vec<_>, _>>()?;
        keyed.push((values, row));
    }
    keyed.sort_by(|(a, _), (b, _)| {
        for ((x, y), (_, descending)) in a.iter().zip(b).zip(keys) {
            // Nulls first ascending, last descending, as in KQL.
            let order = match (x, y) {
                (Val::Null, Val::Null) => Ordering::Equal,
                (Val::Null, _) => Ordering::Less,
                (_, Val::Null) => Ordering::Greater,
                _ => compare(x, y).unwrap_or(Ordering::Equal),
            };
            let order = if *descending { order.reverse() } else { order };
            if order != Ordering::Equal {
                return order;
            }
        }
        Ordering::Equal
    });
    table.rows = keyed.into_iter().map(|(_, row)| row).collect();
    Ok(table)
}

fn column_index(columns: &[String], name: &str) -> Result<usize, KqlError> {
    columns.iter().position(|c| c == name).ok_or_else(|| {
        KqlError(format!(
            "'{name}' is not a column of the table at this point of the query"
        ))
    })
}

fn eval(expr: &Expr, columns: &[String], row: &(Vec<Val>, i128), now: i128) -> Result<Val, KqlError> {
    let value = |e: &Expr| eval(e, columns, row, now);
    Ok(match expr {
        Expr::Str(s) => Val::Str(s.clone()),
        Expr::Long(n) => Val::Long(*n),
        Expr::Real(n) => Val::Real(*n),
        Expr::Bool(b) => Val::Bool(*b),
        Expr::Null => Val::Null,
        Expr::DateTime(t) => Val::DateTime(*t),
        Expr::TimeSpan(t) => Val::TimeSpan(*t),
        Expr::Column(path) => {
            let mut current = row.0[column_index(columns, &path[0])?].clone();
            for key in &path[1..] {
                current = match current {
                    Val::Dynamic(Value::Object(mut map)) => map.remove(key).map_or(Val::Null, from_json),
                    _ => Val::Null,
                };
            }
            current
        }
        Expr::Call(name, args) => match name.as_str() {
            "now" => Val::DateTime(now),
            "ingestion_time" => Val::DateTime(row.1),
            "ago" => match value(&args[0])? {
                Val::TimeSpan(t) => Val::DateTime(now - t),
                other => return Err(KqlError(format!("ago() takes a timespan, not {other:?}"))),
            },
            other => return Err(KqlError(format!("the function '{other}()' is not supported"))),
        },
        Expr::Not(inner) => Val::Bool(!truthy(&value(inner)?)),
        Expr::And(a, b) => Val::Bool(truthy(&value(a)?) && truthy(&value(b)?)),
        Expr::Or(a, b) => Val::Bool(truthy(&value(a)?) || truthy(&value(b)?)),
        Expr::Compare(a, op, b) => {
            let (a, b) = (value(a)?, value(b)?);
            let result = match op {
                CompareOp::EqNoCase | CompareOp::NeNoCase => {
                    let equal = text(&a).to_lowercase() == text(&b).to_lowercase();
                    equal == (*op == CompareOp::EqNoCase)
                }
                _ => match compare(&a, &b) {
                    None => *op == CompareOp::Ne && a != b,
                    Some(order) => match op {
                        CompareOp::Eq => order == Ordering::Equal,
                        CompareOp::Ne => order != Ordering::Equal,
                        CompareOp::Lt => order == Ordering::Less,
                        CompareOp::Le => order != Ordering::Greater,
                        CompareOp::Gt => order == Ordering::Greater,
                        CompareOp::Ge => order != Ordering::Less,
                        CompareOp::EqNoCase | CompareOp::NeNoCase => unreachable!("handled above"),
                    },
                },
            };
            Val::Bool(result)
        }
        Expr::Text(a, op, negated, b) => {
            let (hay, needle) = (text(&value(a)?).to_lowercase(), text(&value(b)?).to_lowercase());
            let found = match op {
                TextOp::Contains => hay.contains(&needle),
                TextOp::StartsWith => hay.starts_with(&needle),
                TextOp::Has if needle.chars().all(char::is_alphanumeric) => {
                    hay.split(|c: char| !c.is_alphanumeric()).any(|term| term == needle)
                }
                TextOp::Has => hay.contains(&needle),
            };
            Val::Bool(found != *negated)
        }
        Expr::In(a, items, negated) => {
            let a = value(a)?;
            let mut found = false;
            for item in items {
                found |= compare(&a, &value(item)?) == Some(Ordering::Equal);
            }
            Val::Bool(found != *negated)
        }
        Expr::Between(a, low, high, negated) => {
            let (a, low, high) = (value(a)?, value(low)?, value(high)?);
            let inside = compare(&a, &low).is_some_and(|o| o != Ordering::Less)
                && compare(&a, &high).is_some_and(|o| o != Ordering::Greater);
            Val::Bool(inside != *negated)
        }
        Expr::Add(a, b) => arithmetic(value(a)?, value(b)?, 1)?,
        Expr::Sub(a, b) => arithmetic(value(a)?, value(b)?, -1)?,
    })
}

fn truthy(v: &Val) -> bool {
    matches!(v, Val::Bool(true))
}

fn arithmetic(a: Val, b: Val, sign: i128) -> Result<Val, KqlError> {
    Ok(match (a, b) {
        (Val::DateTime(t), Val::TimeSpan(d)) => Val::DateTime(t + sign * d),
        (Val::DateTime(t), Val::DateTime(u)) if sign < 0 => Val::TimeSpan(t - u),
        (Val::TimeSpan(t), Val::TimeSpan(d)) => Val::TimeSpan(t + sign * d),
        (Val::Long(x), Val::Long(y)) => Val::Long(x + sign as i64 * y),
        (Val::Long(x), Val::Real(y)) => Val::Real(x as f64 + sign as f64 * y),
        (Val::Real(x), Val::Long(y)) => Val::Real(x + sign as f64 * y as f64),
        (Val::Real(x), Val::Real(y)) => Val::Real(x + sign as f64 * y),
        (Val::Null, _) | (_, Val::Null) => Val::Null,
        (a, b) => return Err(KqlError(format!("cannot add or subtract {a:?} and {b:?}"))),
    })
}

/// How two values order, if they are comparable (a string compares with a datetime by parsing
/// it, as the service converts string literals).
fn compare(a: &Val, b: &Val) -> Option<Ordering> {
    match (a, b) {
        (Val::Long(x), Val::Long(y)) => Some(x.cmp(y)),
        (Val::Long(x), Val::Real(y)) => (*x as f64).partial_cmp(y),
        (Val::Real(x), Val::Long(y)) => x.partial_cmp(&(*y as f64)),
        (Val::Real(x), Val::Real(y)) => x.partial_cmp(y),
        (Val::Str(x), Val::Str(y)) => Some(x.cmp(y)),
        (Val::Bool(x), Val::Bool(y)) => Some(x.cmp(y)),
        (Val::DateTime(x), Val::DateTime(y)) | (Val::TimeSpan(x), Val::TimeSpan(y)) => Some(x.cmp(y)),
        (Val::DateTime(x), Val::Str(s)) => datetime_nanos(s).map(|y| x.cmp(&y)),
        (Val::Str(s), Val::DateTime(y)) => datetime_nanos(s).map(|x| x.cmp(y)),
        (Val::Dynamic(x), Val::Dynamic(y)) => (x == y).then_some(Ordering::Equal),
        _ => None,
    }
}

/// A value as text, for the string operators.
fn text(v: &Val) -> String {
    match output(v) {
        Value::String(s) => s,
        Value::Null => String::new(),
        other => other.to_string(),
    }
}

/// A value as the API returns it: datetimes as ISO 8601 text, dynamic values as JSON text.
fn output(v: &Val) -> Value {
    match v {
        Val::Null => Value::Null,
        Val::Bool(b) => Value::Bool(*b),
        Val::Long(n) => Value::from(*n),
        Val::Real(n) => serde_json::Number::from_f64(*n).map_or(Value::Null, Value::Number),
        Val::Str(s) => Value::String(s.clone()),
        // As the service writes them: UTC, seven decimals (so text order is time order).
        Val::DateTime(t) => {
            let (secs, nanos) = (t.div_euclid(1_000_000_000), t.rem_euclid(1_000_000_000));
            match azure_core::time::OffsetDateTime::from_unix_timestamp(secs as i64) {
                Ok(time) => {
                    let whole = azure_core::time::to_rfc3339(&time);
                    Value::String(format!("{}.{:07}Z", whole.trim_end_matches('Z'), nanos / 100))
                }
                Err(_) => Value::Null,
            }
        }
        Val::TimeSpan(t) => {
            let (sign, t) = if *t < 0 { ("-", -t) } else { ("", *t) };
            let secs = t / 1_000_000_000;
            let frac = t % 1_000_000_000 / 100;
            Value::String(format!(
                "{sign}{:02}:{:02}:{:02}.{frac:07}",
                secs / 3600,
                secs / 60 % 60,
                secs % 60
            ))
        }
        Val::Dynamic(value) => Value::String(value.to_string()),
    }
}

fn type_name(v: &Val) -> Option<&'static str> {
    Some(match v {
        Val::Null => return None,
        Val::Bool(_) => "bool",
        Val::Long(_) => "long",
        Val::Real(_) => "real",
        Val::Str(_) => "string",
        Val::DateTime(_) => "datetime",
        Val::TimeSpan(_) => "timespan",
        Val::Dynamic(_) => "dynamic",
    })
}

fn finish(table: Table) -> ResultTable {
    let columns = table
        .columns
        .iter()
        .enumerate()
        .map(|(i, name)| {
            let ty = table.rows.iter().find_map(|(values, _)| type_name(&values[i]));
            (name.clone(), ty.unwrap_or("string"))
        })
        .collect();
    let rows = table
        .rows
        .iter()
        .map(|(values, _)| values.iter().map(output).collect())
        .collect();
    ResultTable { columns, rows }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::super::parse::parse;
    use super::*;

    const SEC: i128 = 1_000_000_000;

    fn rows() -> Vec<Row> {
        (0..6)
            .map(|i| Row {
                values: json!({
                    "TimeGenerated": format!("1970-01-01T00:00:{:02}Z", i * 10),
                    "Level": if i % 2 == 0 { "INFO" } else { "WARN" },
                    "Message": format!("request {i} handled in the api"),
                    "Properties": {"seq": i, "user": format!("u{}", i % 3)},
                })
                .as_object()
                .unwrap()
                .clone(),
                ingested: (100 + i) as i128 * SEC,
            })
            .collect()
    }

    fn query(text: &str) -> ResultTable {
        run(&parse(text).unwrap(), rows(), None, 200 * SEC).unwrap()
    }

    fn column(table: &ResultTable, name: &str) -> Vec<Value> {
        let i = table.columns.iter().position(|(n, _)| n == name).unwrap();
        table.rows.iter().map(|r| r[i].clone()).collect()
    }

    #[test]
    fn filters_on_datetimes_dynamic_paths_text_and_ingestion_time() {
        let t = query("T | where TimeGenerated >= datetime(1970-01-01T00:00:20Z) and Properties.seq < 5");
        assert_eq!(column(&t, "Properties").len(), 3);
        let t = query("T | where Message has 'API' and Level in ('WARN') | project s = Properties.seq");
        assert_eq!(column(&t, "s"), [json!(1), json!(3), json!(5)]);
        assert_eq!(t.columns, [("s".to_owned(), "long")]);
        let t = query("T | where ingestion_time() between (datetime(1970-01-01T00:01:42Z) .. ago(97s))");
        assert_eq!(t.rows.len(), 2, "ingested at 102 s and 103 s");
        let t = query("T | where not(Message contains 'request 1') and Message !startswith 'x'");
        assert_eq!(t.rows.len(), 5);
    }

    #[test]
    fn shapes_sorts_and_counts() {
        let t = query("T | extend seq = Properties.seq | order by seq desc | take 2 | project seq, TimeGenerated");
        assert_eq!(column(&t, "seq"), [json!(5), json!(4)]);
        assert_eq!(t.columns[1], ("TimeGenerated".to_owned(), "datetime"));
        assert_eq!(column(&t, "TimeGenerated")[0], json!("1970-01-01T00:00:50.0000000Z"));
        let t = query("T | top 1 by TimeGenerated asc | project Properties");
        assert_eq!(t.columns[0].1, "dynamic");
        assert_eq!(column(&t, "Properties"), [json!("{\"seq\":0,\"user\":\"u0\"}")]);
        assert_eq!(column(&query("T | count"), "Count"), [json!(6)]);
        let t = query("T | summarize n = count() by Level");
        assert_eq!(column(&t, "Level"), [json!("INFO"), json!("WARN")]);
        assert_eq!(column(&t, "n"), [json!(3), json!(3)]);
        assert_eq!(
            column(&query("T | where Level == 'x' | summarize count()"), "count_"),
            [json!(0)]
        );
    }

    #[test]
    fn an_unknown_column_is_an_error_that_names_it() {
        let e = run(&parse("T | where Nope == 1").unwrap(), rows(), None, 0).unwrap_err();
        assert!(e.0.contains("'Nope' is not a column"), "{}", e.0);
    }
}
