//! The KQL subset the emulator's query route answers (see [`parse`] for the grammar): parsed by
//! hand, then run over a stream's stored rows.
//!
//! Not `kqlparser`: that crate (0.0.4, one maintainer, undocumented, on nom 7) parses far more
//! than this subset, so every query would still need a walk of its AST to refuse what the
//! emulator cannot run; and its errors do not name the operator a user must change. The subset
//! is small enough that a parser of its own gives exact messages for what is not supported.

mod eval;
mod parse;

pub(crate) use eval::{ResultTable, Row, run};
pub(crate) use parse::{datetime_nanos, parse};
