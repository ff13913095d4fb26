//! Which span is current on this thread, kept by the layer itself.
//!
//! The registry keeps the same stack, but reading it (`Registry::current_span`, which
//! `Context::event_span` calls for every event) borrows a `RefCell` held in the `thread_local`
//! crate's per-thread entries, and the entries of two threads sit side by side in one cache
//! line: every event wrote a line that the other thread's events also write. Measured here, that
//! lookup took 40 ns on one thread and 69-88 ns per thread on two; from this stack it takes
//! 19 ns on either. The semantics are the registry's: re-entering a span that is already on the
//! stack does not make it current again, and exiting removes the newest entry of that span.
//!
//! The stack is a real thread local shared by every installed layer, so each entry names its
//! layer ([`next_layer_id`]): span ids are only unique within one subscriber.
//!
//! Each entry also caches its event scope, encoded (the `Spans` column's spans, root first), so
//! that events in it read no span from the registry at all: reading one takes a reference on
//! its slot and a read lock on its extensions, both atomic writes, which two threads with a
//! common ancestor span (a server's, a task's) would otherwise both make on every event. The
//! cache holds each span's [`Version`], which `on_record` and `on_close` advance, so a recorded
//! field shows in the next event on every thread. With the trace columns, it also caches the
//! span's OpenTelemetry ids, encoded; they never change, and go with the scope.

use std::cell::{Cell, RefCell};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use tracing::span::Id;

/// Advanced whenever a span's encoded fields change (and when it closes).
pub(crate) type Version = Arc<AtomicU64>;

/// An entry's encoded scope: `[` and the encoded spans, comma-separated, without the closing
/// bracket. Valid while every span's version is what it was when encoded.
#[derive(Default)]
pub(crate) struct Scope {
    pub(crate) encoded: Vec<u8>,
    pub(crate) versions: Vec<(Version, u64)>,
    pub(crate) valid: bool,
    /// The last version is the span's own: if the span closes and its id is reused, the scope
    /// goes stale, so it may be kept after an exit for the span's next enter.
    pub(crate) leaf_versioned: bool,
    /// The trace columns of the entry's span (feature `opentelemetry`), encoded with a leading
    /// comma (`,"TraceId":..,"SpanId":..`); empty when the span has no OpenTelemetry context.
    #[cfg(feature = "opentelemetry")]
    pub(crate) ids: Vec<u8>,
}

impl Scope {
    /// Whether the encoding still holds: one atomic read per span, no write.
    pub(crate) fn is_fresh(&self) -> bool {
        self.valid
            && self
                .versions
                .iter()
                .all(|(version, seen)| version.load(Ordering::Acquire) == *seen)
    }

    pub(crate) fn clear(&mut self) {
        self.encoded.clear();
        self.versions.clear();
        self.valid = false;
        self.leaf_versioned = false;
        #[cfg(feature = "opentelemetry")]
        self.ids.clear();
    }
}

struct Entered {
    layer: u64,
    span: u64,
    /// The span was already on the stack for this layer when entered again.
    duplicate: bool,
    scope: Scope,
}

/// Scopes kept for reuse, so that entering and exiting spans does not allocate once warm.
const SPARE_SCOPES: usize = 16;
const MAX_SPARE_BYTES: usize = 4096;
/// Encoded scopes of recently exited spans, kept for their next enter: an async task's span is
/// entered and exited at every poll, and its events would otherwise read the registry at the
/// first event of each poll.
const RECENT_SCOPES: usize = 8;

#[derive(Default)]
struct Stack {
    entered: Vec<Entered>,
    spare: Vec<Scope>,
    /// `(layer, span, scope)`, oldest first.
    recent: Vec<(u64, u64, Scope)>,
}

impl Stack {
    /// A scope for a new entry: the span's own from its last exit, else a spare one.
    fn scope_for(&mut self, layer: u64, span: u64) -> Scope {
        match self.recent.iter().rposition(|(l, s, _)| *l == layer && *s == span) {
            Some(at) => self.recent.remove(at).2,
            None => self.spare.pop().unwrap_or_default(),
        }
    }

    /// Takes back the scope of an exited entry.
    fn keep(&mut self, layer: u64, span: u64, mut scope: Scope) {
        // Kept only when small: a scope that once held huge fields does not stay that big.
        if scope.encoded.capacity() > MAX_SPARE_BYTES {
            return;
        }
        if scope.valid && scope.leaf_versioned {
            if self.recent.len() == RECENT_SCOPES {
                let (_, _, oldest) = self.recent.remove(0);
                self.spare_scope(oldest);
            }
            self.recent.push((layer, span, scope));
        } else {
            scope.clear();
            self.spare_scope(scope);
        }
    }

    fn spare_scope(&mut self, mut scope: Scope) {
        if self.spare.len() < SPARE_SCOPES {
            scope.clear();
            self.spare.push(scope);
        }
    }
}

struct Local {
    stack: RefCell<Stack>,
    /// An enter or exit came while the stack was borrowed (a span entered from code that runs
    /// inside [`with_current`], such as another extension's `Drop`), so the stack may disagree
    /// with the registry: from then on this thread asks the registry.
    lost: Cell<bool>,
}

thread_local! {
    static LOCAL: Local = const {
        Local {
            stack: RefCell::new(Stack { entered: Vec::new(), spare: Vec::new(), recent: Vec::new() }),
            lost: Cell::new(false),
        }
    };
}

/// A fresh id for an installed layer.
pub(crate) fn next_layer_id() -> u64 {
    static NEXT: AtomicU64 = AtomicU64::new(1);
    NEXT.fetch_add(1, Ordering::Relaxed)
}

/// Changes this thread's stack; when it is borrowed (see [`Local::lost`]), marks it lost.
fn change(f: impl FnOnce(&mut Stack)) {
    let _ = LOCAL.try_with(|local| match local.stack.try_borrow_mut() {
        Ok(mut stack) => f(&mut stack),
        Err(_) => local.lost.set(true),
    });
}

/// `span` was entered on this thread.
pub(crate) fn enter(layer: u64, span: &Id) {
    let span = span.into_u64();
    change(|stack| {
        let duplicate = stack.entered.iter().any(|e| e.layer == layer && e.span == span);
        let scope = if duplicate {
            stack.spare.pop().unwrap_or_default()
        } else {
            stack.scope_for(layer, span)
        };
        stack.entered.push(Entered {
            layer,
            span,
            duplicate,
            scope,
        });
    });
}

/// `span` was exited on this thread.
pub(crate) fn exit(layer: u64, span: &Id) {
    let span = span.into_u64();
    change(|stack| {
        if let Some(at) = stack.entered.iter().rposition(|e| e.layer == layer && e.span == span) {
            let scope = stack.entered.remove(at).scope;
            stack.keep(layer, span, scope);
        }
    });
}

/// What [`with_current`] found on this thread's stack.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Current<R> {
    /// The current span of the layer: what `f` returned for it.
    Span(R),
    /// The layer has no current span on this thread.
    None,
    /// The stack cannot be read (the thread's locals are being torn down, a re-entrant call, or
    /// an enter or exit was lost): ask the registry.
    Unknown,
}

/// Calls `f` with the current span of `layer` on this thread and its cached scope. `f` must not
/// emit events.
pub(crate) fn with_current<R>(layer: u64, f: impl FnOnce(Id, &mut Scope) -> R) -> Current<R> {
    let found = LOCAL.try_with(|local| {
        if local.lost.get() {
            return Current::Unknown;
        }
        let Ok(mut stack) = local.stack.try_borrow_mut() else {
            return Current::Unknown;
        };
        let current = stack
            .entered
            .iter_mut()
            .rev()
            .find(|e| e.layer == layer && !e.duplicate);
        match current {
            Some(e) => Current::Span(f(Id::from_u64(e.span), &mut e.scope)),
            None => Current::None,
        }
    });
    found.unwrap_or(Current::Unknown)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id(n: u64) -> Id {
        Id::from_u64(n)
    }

    fn now(layer: u64) -> Option<u64> {
        match with_current(layer, |id, _| id.into_u64()) {
            Current::Span(id) => Some(id),
            Current::None => None,
            Current::Unknown => panic!("the stack is readable"),
        }
    }

    #[test]
    fn follows_the_registry_semantics() {
        let (a, b) = (next_layer_id(), next_layer_id());
        assert_eq!(now(a), None);
        enter(a, &id(1));
        enter(a, &id(2));
        assert_eq!(now(a), Some(2));
        // Another layer's spans (another subscriber's ids) are not this layer's.
        enter(b, &id(7));
        assert_eq!((now(a), now(b)), (Some(2), Some(7)));
        // Re-entering span 1 inside 2 leaves 2 current, as the registry does.
        enter(a, &id(1));
        assert_eq!(now(a), Some(2));
        exit(a, &id(1));
        assert_eq!(now(a), Some(2));
        // Exits out of order remove that span's newest entry.
        exit(a, &id(1));
        assert_eq!(now(a), Some(2));
        exit(a, &id(2));
        assert_eq!(now(a), None);
        exit(b, &id(7));
        assert_eq!(now(b), None);
        // Exiting what was never entered changes nothing.
        exit(a, &id(3));
        assert_eq!(now(a), None);
    }

    #[test]
    fn an_enter_that_comes_while_the_stack_is_read_sends_the_thread_to_the_registry() {
        std::thread::spawn(|| {
            let layer = next_layer_id();
            enter(layer, &id(1));
            // As if an extension's `Drop` entered a span while an event reads its scope.
            with_current(layer, |_, _| enter(layer, &id(2)));
            assert_eq!(
                with_current(layer, |id, _| id),
                Current::Unknown,
                "the stack is no longer trusted"
            );
        })
        .join()
        .unwrap();
    }

    #[test]
    fn a_scope_is_fresh_until_a_span_version_moves_and_is_reused_empty() {
        let layer = next_layer_id();
        enter(layer, &id(1));
        let version: Version = Arc::default();
        with_current(layer, |_, scope| {
            assert!(!scope.is_fresh(), "nothing encoded yet");
            scope.encoded.extend_from_slice(b"[{}");
            scope.versions.push((version.clone(), 0));
            scope.valid = true;
        });
        assert_eq!(with_current(layer, |_, scope| scope.is_fresh()), Current::Span(true));
        version.fetch_add(1, Ordering::Release);
        assert_eq!(with_current(layer, |_, scope| scope.is_fresh()), Current::Span(false));
        exit(layer, &id(1));
        // The next entry reuses the scope, cleared.
        enter(layer, &id(2));
        with_current(layer, |_, scope| {
            assert!(!scope.valid && scope.encoded.is_empty() && scope.versions.is_empty());
            assert!(scope.encoded.capacity() >= 3, "the buffer is reused");
        });
        exit(layer, &id(2));
    }

    #[test]
    fn a_span_entered_again_gets_back_its_scope_while_fresh() {
        let layer = next_layer_id();
        let version: Version = Arc::default();
        let encode = |n: u64| {
            let current = with_current(layer, |_, scope| {
                if !scope.is_fresh() {
                    scope.clear();
                    scope.encoded.extend_from_slice(format!("[{n}").as_bytes());
                    scope.versions.push((version.clone(), version.load(Ordering::Acquire)));
                    scope.valid = true;
                    scope.leaf_versioned = true;
                }
                scope.encoded.clone()
            });
            match current {
                Current::Span(encoded) => encoded,
                other => panic!("no current span: {:?}", matches!(other, Current::None)),
            }
        };
        // A task's span, entered at each poll.
        enter(layer, &id(1));
        assert_eq!(encode(1), b"[1");
        exit(layer, &id(1));
        enter(layer, &id(1));
        assert_eq!(encode(2), b"[1", "kept from the last poll");
        exit(layer, &id(1));
        // A field recorded between polls (or the span closed and its id reused).
        version.fetch_add(1, Ordering::Release);
        enter(layer, &id(1));
        assert_eq!(encode(3), b"[3", "encoded again");
        exit(layer, &id(1));
        // Another span with another id does not get it.
        enter(layer, &id(9));
        assert_eq!(with_current(layer, |_, scope| scope.valid), Current::Span(false));
        exit(layer, &id(9));
        // Only a few are kept.
        for n in 100..100 + RECENT_SCOPES as u64 + 1 {
            enter(layer, &id(n));
            encode(n);
            exit(layer, &id(n));
        }
        LOCAL.with(|l| assert_eq!(l.stack.borrow().recent.len(), RECENT_SCOPES));
    }
}
