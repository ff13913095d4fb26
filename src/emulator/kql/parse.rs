//! The KQL subset the emulator answers, parsed by hand: a table, then `|` operators.
//!
//! ```text
//! query     := table ( '|' operator )*
//! operator  := where expr | project col (, col)* | extend name = expr (, ...)*
//!            | (order | sort) by key (, key)* | (take | limit) n | top n by key
//!            | count | summarize [name =] count() [by name (, name)*]
//! key       := expr [asc | desc]
//! col       := name [= expr]
//! expr      := or;  or := and (or and)*;  and := unary (and unary)*
//! unary     := not ( expr ) | compare
//! compare   := sum [ (== | != | < | <= | > | >= | =~ | !=~) sum
//!                  | [!](contains | has | startswith) sum | [!]in ( expr, ... )
//!                  | [!]between ( sum .. sum ) ]
//! sum       := atom ((+ | -) atom)*
//! atom      := literal | name (. name)* | func ( args ) | ( expr )
//! ```
//!
//! Anything else is an error that names what is not supported, answered as the service's 400
//! `BadArgumentError`.

/// A parsed query.
#[derive(Debug, PartialEq)]
pub(crate) struct Query {
    pub(crate) table: String,
    pub(crate) operators: Vec<Operator>,
}

#[derive(Debug, PartialEq)]
pub(crate) enum Operator {
    Where(Expr),
    Project(Vec<(String, Expr)>),
    Extend(Vec<(String, Expr)>),
    OrderBy(Vec<(Expr, bool)>),
    Take(u64),
    Top(u64, Expr, bool),
    Count,
    SummarizeCount { name: String, by: Vec<String> },
}

#[derive(Clone, Debug, PartialEq)]
pub(crate) enum Expr {
    Str(String),
    Long(i64),
    Real(f64),
    Bool(bool),
    Null,
    /// Nanoseconds since the Unix epoch.
    DateTime(i128),
    /// Nanoseconds.
    TimeSpan(i128),
    /// A column, or a path into a dynamic column (`Properties.seq`).
    Column(Vec<String>),
    Call(String, Vec<Expr>),
    Not(Box<Expr>),
    And(Box<Expr>, Box<Expr>),
    Or(Box<Expr>, Box<Expr>),
    Compare(Box<Expr>, CompareOp, Box<Expr>),
    Text(Box<Expr>, TextOp, bool, Box<Expr>),
    In(Box<Expr>, Vec<Expr>, bool),
    Between(Box<Expr>, Box<Expr>, Box<Expr>, bool),
    Add(Box<Expr>, Box<Expr>),
    Sub(Box<Expr>, Box<Expr>),
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum CompareOp {
    Eq,
    Ne,
    Lt,
    Le,
    Gt,
    Ge,
    EqNoCase,
    NeNoCase,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum TextOp {
    Contains,
    Has,
    StartsWith,
}

/// Why a query was refused: the message the 400 carries.
#[derive(Debug, PartialEq, Eq)]
pub(crate) struct KqlError(pub(crate) String);

type Parsed<T> = Result<T, KqlError>;

#[derive(Clone, Debug, PartialEq)]
enum Token {
    Name(String),
    Str(String),
    Number(String),
    /// A number with a timespan unit: `5m`, `1h`, `30s`, `2d`, `100ms`.
    TimeSpan(i128),
    /// Raw text inside `datetime( ... )`.
    DateTimeText(String),
    Sym(&'static str),
}

const SYMBOLS: [&str; 17] = [
    "!=~", "==", "!=", "<=", ">=", "=~", "..", "|", ",", "(", ")", "<", ">", "=", "+", "-", ".",
];

fn lex(text: &str) -> Parsed<Vec<Token>> {
    let chars: Vec<char> = text.chars().collect();
    let mut tokens = Vec::new();
    let mut i = 0;
    while i < chars.len() {
        let c = chars[i];
        if c.is_whitespace() {
            i += 1;
            continue;
        }
        if c == '/' && chars.get(i + 1) == Some(&'/') {
            while i < chars.len() && chars[i] != '\n' {
                i += 1;
            }
            continue;
        }
        if c == '"' || c == '\'' {
            let mut s = String::new();
            i += 1;
            loop {
                match chars.get(i) {
                    None => return Err(KqlError("a string literal is not closed".into())),
                    Some(&q) if q == c => break,
                    Some('\\') => {
                        let escaped = chars.get(i + 1).copied().unwrap_or('\\');
                        s.push(match escaped {
                            'n' => '\n',
                            't' => '\t',
                            other => other,
                        });
                        i += 2;
                        continue;
                    }
                    Some(&other) => s.push(other),
                }
                i += 1;
            }
            tokens.push(Token::Str(s));
            i += 1;
            continue;
        }
        if c.is_ascii_digit() {
            let start = i;
            while i < chars.len() && (chars[i].is_ascii_digit() || chars[i] == '.') {
                // `1..5`: the dots belong to `between`.
                if chars[i] == '.' && chars.get(i + 1) == Some(&'.') {
                    break;
                }
                i += 1;
            }
            let number: String = chars[start..i].iter().collect();
            let unit_start = i;
            while i < chars.len() && chars[i].is_ascii_alphabetic() {
                i += 1;
            }
            let unit: String = chars[unit_start..i].iter().collect();
            if unit.is_empty() {
                tokens.push(Token::Number(number));
            } else {
                let nanos_per = match unit.as_str() {
                    "d" => 86_400_000_000_000i128,
                    "h" => 3_600_000_000_000,
                    "m" => 60_000_000_000,
                    "s" => 1_000_000_000,
                    "ms" => 1_000_000,
                    _ => {
                        return Err(KqlError(format!(
                            "unsupported timespan unit '{unit}' in '{number}{unit}'"
                        )));
                    }
                };
                let value: f64 = number
                    .parse()
                    .map_err(|_| KqlError(format!("'{number}{unit}' is not a timespan")))?;
                tokens.push(Token::TimeSpan((value * nanos_per as f64) as i128));
            }
            continue;
        }
        let negated_word = c == '!' && chars.get(i + 1).is_some_and(|c| c.is_alphabetic());
        if c.is_alphabetic() || c == '_' || negated_word {
            let start = i;
            if negated_word {
                i += 1;
            }
            while i < chars.len() && (chars[i].is_alphanumeric() || chars[i] == '_') {
                i += 1;
            }
            let name: String = chars[start..i].iter().collect();
            // `datetime(2026-12-04T10:00:00Z)`: the literal is not quoted.
            if name == "datetime" {
                let mut j = i;
                while j < chars.len() && chars[j].is_whitespace() {
                    j += 1;
                }
                if chars.get(j) == Some(&'(') {
                    let close = chars[j..]
                        .iter()
                        .position(|&c| c == ')')
                        .ok_or_else(|| KqlError("datetime( is not closed".into()))?;
                    let inner: String = chars[j + 1..j + close].iter().collect();
                    let inner = inner.trim().trim_matches(|c| c == '"' || c == '\'').to_owned();
                    tokens.push(Token::DateTimeText(inner));
                    i = j + close + 1;
                    continue;
                }
            }
            tokens.push(Token::Name(name));
            continue;
        }
        let rest: String = chars[i..chars.len().min(i + 3)].iter().collect();
        match SYMBOLS.iter().find(|s| rest.starts_with(**s)) {
            Some(s) => {
                tokens.push(Token::Sym(s));
                i += s.len();
            }
            None => return Err(KqlError(format!("unexpected character '{c}'"))),
        }
    }
    Ok(tokens)
}

/// Parses `text` into a [`Query`].
pub(crate) fn parse(text: &str) -> Parsed<Query> {
    let mut p = Parser {
        tokens: lex(text)?,
        at: 0,
    };
    let table = match p.next() {
        Some(Token::Name(name)) => name,
        other => {
            return Err(KqlError(format!(
                "a query starts with a table name, not {}",
                show(&other)
            )));
        }
    };
    let mut operators = Vec::new();
    while p.eat_sym("|") {
        operators.push(p.operator()?);
    }
    if let Some(token) = p.peek() {
        return Err(KqlError(format!(
            "unexpected {} after the query",
            show(&Some(token.clone()))
        )));
    }
    Ok(Query { table, operators })
}

fn show(token: &Option<Token>) -> String {
    match token {
        None => "the end of the query".into(),
        Some(Token::Name(n)) => format!("'{n}'"),
        Some(Token::Str(s)) => format!("the string \"{s}\""),
        Some(Token::Number(n)) => format!("'{n}'"),
        Some(Token::TimeSpan(_)) => "a timespan".into(),
        Some(Token::DateTimeText(t)) => format!("datetime({t})"),
        Some(Token::Sym(s)) => format!("'{s}'"),
    }
}

/// Parses a `datetime(...)` literal's text: a full RFC 3339 time, or a date, or a time without
/// a zone (UTC).
pub(crate) fn datetime_nanos(text: &str) -> Option<i128> {
    let mut text = text.trim().replace(' ', "T");
    if !text.contains('T') {
        text.push_str("T00:00:00");
    }
    let after_date = |from: usize| text.get(from..).unwrap_or("");
    let has_zone = text.ends_with('Z') || after_date(10).contains('+') || after_date(11).contains('-');
    if !has_zone {
        text.push('Z');
    }
    azure_core::time::parse_rfc3339(&text)
        .ok()
        .map(|t| t.unix_timestamp_nanos())
}

struct Parser {
    tokens: Vec<Token>,
    at: usize,
}

impl Parser {
    fn peek(&self) -> Option<&Token> {
        self.tokens.get(self.at)
    }

    fn next(&mut self) -> Option<Token> {
        let token = self.tokens.get(self.at).cloned();
        self.at += 1;
        token
    }

    fn eat_sym(&mut self, sym: &str) -> bool {
        if matches!(self.peek(), Some(Token::Sym(s)) if *s == sym) {
            self.at += 1;
            return true;
        }
        false
    }

    fn eat_name(&mut self, name: &str) -> bool {
        if matches!(self.peek(), Some(Token::Name(n)) if n == name) {
            self.at += 1;
            return true;
        }
        false
    }

    fn expect_sym(&mut self, sym: &str) -> Parsed<()> {
        if self.eat_sym(sym) {
            return Ok(());
        }
        Err(KqlError(format!(
            "expected '{sym}', found {}",
            show(&self.peek().cloned())
        )))
    }

    fn name(&mut self) -> Parsed<String> {
        match self.next() {
            Some(Token::Name(n)) => Ok(n),
            other => Err(KqlError(format!("expected a name, found {}", show(&other)))),
        }
    }

    fn count(&mut self) -> Parsed<u64> {
        match self.next() {
            Some(Token::Number(n)) => n.parse().map_err(|_| KqlError(format!("'{n}' is not a row count"))),
            other => Err(KqlError(format!("expected a row count, found {}", show(&other)))),
        }
    }

    fn operator(&mut self) -> Parsed<Operator> {
        let name = self.name()?;
        match name.as_str() {
            "where" | "filter" => Ok(Operator::Where(self.expr()?)),
            "project" => Ok(Operator::Project(self.columns(false)?)),
            "extend" => Ok(Operator::Extend(self.columns(true)?)),
            "order" | "sort" => {
                if !self.eat_name("by") {
                    return Err(KqlError(format!("expected 'by' after '{name}'")));
                }
                let mut keys = vec![self.key()?];
                while self.eat_sym(",") {
                    keys.push(self.key()?);
                }
                Ok(Operator::OrderBy(keys))
            }
            "take" | "limit" => Ok(Operator::Take(self.count()?)),
            "top" => {
                let n = self.count()?;
                if !self.eat_name("by") {
                    return Err(KqlError("expected 'by' after 'top N'".into()));
                }
                let (key, descending) = self.key()?;
                Ok(Operator::Top(n, key, descending))
            }
            "count" => Ok(Operator::Count),
            "summarize" => self.summarize(),
            other => Err(KqlError(format!(
                "the operator '{other}' is not supported by the emulator (supported: where, project, extend, order by, \
                 sort by, take, limit, top, count, summarize count() by)"
            ))),
        }
    }

    fn summarize(&mut self) -> Parsed<Operator> {
        let mut name = "count_".to_owned();
        if matches!(
            (self.tokens.get(self.at), self.tokens.get(self.at + 1)),
            (Some(Token::Name(_)), Some(Token::Sym("=")))
        ) {
            name = self.name()?;
            self.expect_sym("=")?;
        }
        let function = self.name()?;
        if function != "count" {
            return Err(KqlError(format!(
                "the aggregation '{function}' is not supported by the emulator (only count())"
            )));
        }
        self.expect_sym("(")?;
        self.expect_sym(")")?;
        let mut by = Vec::new();
        if self.eat_name("by") {
            by.push(self.name()?);
            while self.eat_sym(",") {
                by.push(self.name()?);
            }
        }
        Ok(Operator::SummarizeCount { name, by })
    }

    /// `name [= expr]` items; `extend` requires the `= expr`.
    fn columns(&mut self, assign: bool) -> Parsed<Vec<(String, Expr)>> {
        let mut columns = Vec::new();
        loop {
            let name = self.name()?;
            let value = if self.eat_sym("=") {
                self.expr()?
            } else if assign {
                return Err(KqlError(format!("expected '=' after '{name}' in extend")));
            } else {
                Expr::Column(vec![name.clone()])
            };
            columns.push((name, value));
            if !self.eat_sym(",") {
                return Ok(columns);
            }
        }
    }

    /// `expr [asc | desc]`; descending by default, as in KQL.
    fn key(&mut self) -> Parsed<(Expr, bool)> {
        let key = self.sum()?;
        let descending = if self.eat_name("asc") {
            false
        } else {
            self.eat_name("desc");
            true
        };
        Ok((key, descending))
    }

    fn expr(&mut self) -> Parsed<Expr> {
        let mut left = self.and()?;
        while self.eat_name("or") {
            left = Expr::Or(Box::new(left), Box::new(self.and()?));
        }
        Ok(left)
    }

    fn and(&mut self) -> Parsed<Expr> {
        let mut left = self.unary()?;
        while self.eat_name("and") {
            left = Expr::And(Box::new(left), Box::new(self.unary()?));
        }
        Ok(left)
    }

    fn unary(&mut self) -> Parsed<Expr> {
        if matches!((self.tokens.get(self.at), self.tokens.get(self.at + 1)), (Some(Token::Name(n)), Some(Token::Sym("("))) if n == "not")
        {
            self.at += 2;
            let inner = self.expr()?;
            self.expect_sym(")")?;
            return Ok(Expr::Not(Box::new(inner)));
        }
        self.compare()
    }

    fn compare(&mut self) -> Parsed<Expr> {
        let left = self.sum()?;
        let op = match self.peek() {
            Some(Token::Sym("==")) => Some(CompareOp::Eq),
            Some(Token::Sym("!=")) => Some(CompareOp::Ne),
            Some(Token::Sym("<")) => Some(CompareOp::Lt),
            Some(Token::Sym("<=")) => Some(CompareOp::Le),
            Some(Token::Sym(">")) => Some(CompareOp::Gt),
            Some(Token::Sym(">=")) => Some(CompareOp::Ge),
            Some(Token::Sym("=~")) => Some(CompareOp::EqNoCase),
            Some(Token::Sym("!=~")) => Some(CompareOp::NeNoCase),
            _ => None,
        };
        if let Some(op) = op {
            self.at += 1;
            return Ok(Expr::Compare(Box::new(left), op, Box::new(self.sum()?)));
        }
        // `!contains`, `!in`, ...: a '!' is lexed as part of '!=' only, so look for the name form.
        let negated = matches!(self.peek(), Some(Token::Name(n)) if n.starts_with('!'));
        let word = match self.peek() {
            Some(Token::Name(n)) => n.clone(),
            _ => return Ok(left),
        };
        let word = word.trim_start_matches('!');
        let text_op = match word {
            "contains" => Some(TextOp::Contains),
            "has" => Some(TextOp::Has),
            "startswith" => Some(TextOp::StartsWith),
            _ => None,
        };
        if let Some(op) = text_op {
            self.at += 1;
            return Ok(Expr::Text(Box::new(left), op, negated, Box::new(self.sum()?)));
        }
        match word {
            "in" => {
                self.at += 1;
                self.expect_sym("(")?;
                let mut items = vec![self.sum()?];
                while self.eat_sym(",") {
                    items.push(self.sum()?);
                }
                self.expect_sym(")")?;
                Ok(Expr::In(Box::new(left), items, negated))
            }
            "between" => {
                self.at += 1;
                self.expect_sym("(")?;
                let low = self.sum()?;
                self.expect_sym("..")?;
                let high = self.sum()?;
                self.expect_sym(")")?;
                Ok(Expr::Between(Box::new(left), Box::new(low), Box::new(high), negated))
            }
            "and" | "or" | "asc" | "desc" | "by" => Ok(left),
            other => Err(KqlError(format!(
                "the operator '{other}' is not supported by the emulator in an expression (supported: == != < <= > >= =~ \
                 !=~ contains has startswith in between, and not/and/or)"
            ))),
        }
    }

    fn sum(&mut self) -> Parsed<Expr> {
        let mut left = self.atom()?;
        loop {
            if self.eat_sym("+") {
                left = Expr::Add(Box::new(left), Box::new(self.atom()?));
            } else if self.eat_sym("-") {
                left = Expr::Sub(Box::new(left), Box::new(self.atom()?));
            } else {
                return Ok(left);
            }
        }
    }

    fn atom(&mut self) -> Parsed<Expr> {
        match self.next() {
            Some(Token::Str(s)) => Ok(Expr::Str(s)),
            Some(Token::Number(n)) if n.contains('.') => n
                .parse()
                .map(Expr::Real)
                .map_err(|_| KqlError(format!("'{n}' is not a number"))),
            Some(Token::Number(n)) => n
                .parse()
                .map(Expr::Long)
                .map_err(|_| KqlError(format!("'{n}' is not a number"))),
            Some(Token::TimeSpan(t)) => Ok(Expr::TimeSpan(t)),
            Some(Token::DateTimeText(text)) => datetime_nanos(&text)
                .map(Expr::DateTime)
                .ok_or_else(|| KqlError(format!("'{text}' is not a datetime"))),
            Some(Token::Sym("-")) => match self.atom()? {
                Expr::Long(n) => Ok(Expr::Long(-n)),
                Expr::Real(n) => Ok(Expr::Real(-n)),
                Expr::TimeSpan(n) => Ok(Expr::TimeSpan(-n)),
                _ => Err(KqlError("'-' before something that is not a number".into())),
            },
            Some(Token::Sym("(")) => {
                let inner = self.expr()?;
                self.expect_sym(")")?;
                Ok(inner)
            }
            Some(Token::Name(name)) => match name.as_str() {
                "true" => Ok(Expr::Bool(true)),
                "false" => Ok(Expr::Bool(false)),
                "null" => Ok(Expr::Null),
                _ if self.eat_sym("(") => {
                    let mut args = Vec::new();
                    if !self.eat_sym(")") {
                        args.push(self.expr()?);
                        while self.eat_sym(",") {
                            args.push(self.expr()?);
                        }
                        self.expect_sym(")")?;
                    }
                    match (name.as_str(), args.len()) {
                        ("ago", 1) | ("now", 0) | ("ingestion_time", 0) => Ok(Expr::Call(name, args)),
                        ("ago" | "now" | "ingestion_time", n) => {
                            Err(KqlError(format!("{name}() does not take {n} argument(s)")))
                        }
                        _ => Err(KqlError(format!(
                            "the function '{name}()' is not supported by the emulator (supported: ago(), now(), \
                             datetime(), ingestion_time())"
                        ))),
                    }
                }
                _ => {
                    let mut path = vec![name];
                    while self.eat_sym(".") {
                        path.push(self.name()?);
                    }
                    Ok(Expr::Column(path))
                }
            },
            other => Err(KqlError(format!("expected a value, found {}", show(&other)))),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_query_with_each_operator_parses() {
        let q = parse(
            "Logs_CL | where TimeGenerated > ago(1h) and Level in ('WARN', \"ERROR\") or not(Message contains 'x') \
             | where ingestion_time() between (datetime(2026-12-04) .. now()) | extend n = Properties.seq \
             | project n, Level | order by n asc | take 5 | top 3 by n | summarize c = count() by Level | count",
        )
        .unwrap();
        assert_eq!(q.table, "Logs_CL");
        assert_eq!(q.operators.len(), 9);
        assert_eq!(
            q.operators[7],
            Operator::SummarizeCount {
                name: "c".into(),
                by: vec!["Level".into()]
            }
        );
        assert_eq!(q.operators[5], Operator::Take(5));
    }

    #[test]
    fn unsupported_operators_and_functions_are_named() {
        let e = parse("T | join (U) on x").unwrap_err();
        assert!(e.0.contains("'join' is not supported"), "{}", e.0);
        let e = parse("T | where strlen(Message) > 3").unwrap_err();
        assert!(e.0.contains("'strlen()' is not supported"), "{}", e.0);
        let e = parse("T | summarize avg(x)").unwrap_err();
        assert!(e.0.contains("'avg' is not supported"), "{}", e.0);
        let e = parse("T | where x matches regex 'a'").unwrap_err();
        assert!(e.0.contains("'matches' is not supported"), "{}", e.0);
    }

    #[test]
    fn datetimes_and_timespans() {
        assert_eq!(datetime_nanos("1970-01-01"), Some(0));
        assert_eq!(datetime_nanos("1970-01-01T00:00:01Z"), Some(1_000_000_000));
        assert_eq!(datetime_nanos("1970-01-01 00:01"), None, "seconds are required");
        let q = parse("T | where x > ago(90m)").unwrap();
        let Operator::Where(Expr::Compare(_, _, right)) = &q.operators[0] else {
            panic!("{q:?}")
        };
        assert_eq!(
            **right,
            Expr::Call("ago".into(), vec![Expr::TimeSpan(90 * 60_000_000_000)])
        );
    }
}
