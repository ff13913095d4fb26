//! The atomics of the queue's page protocol: std's normally, loom's when the crate is built with
//! `--cfg tal_loom`, so that `cargo test --lib loom_` model-checks every interleaving (and every
//! memory ordering) of a producer and the worker on a page, as sharded-slab does with its `sync`
//! shim. Only the page (`pipeline/queue/page.rs`) goes through it: the rest of the queue has no
//! `unsafe` that depends on an ordering.

#[cfg(tal_loom)]
pub(crate) use loom::sync::atomic::{AtomicUsize, Ordering};
#[cfg(not(tal_loom))]
pub(crate) use std::sync::atomic::{AtomicUsize, Ordering};
