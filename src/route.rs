//! Which stream an event goes to: the main stream unless a route sends it elsewhere.

use tracing::Event;
use tracing::field::{Field, Visit};

/// Routes chosen on the builder. Stream id 0 is the main log stream.
#[derive(Debug, Default)]
pub(crate) struct Routes {
    /// `(target prefix, stream id)`; the longest matching prefix wins.
    pub(crate) targets: Vec<(String, u32)>,
    /// A field whose string value names the stream, among the declared ones.
    pub(crate) field: Option<FieldRoute>,
}

#[derive(Debug)]
pub(crate) struct FieldRoute {
    pub(crate) name: String,
    /// `(stream name, stream id)`.
    pub(crate) streams: Vec<(String, u32)>,
}

impl Routes {
    /// The stream id for an event with `target`: a declared stream named by the routing field
    /// first, then the longest matching target prefix, else the main stream.
    pub(crate) fn stream_for(&self, target: &str, event: &Event<'_>) -> u32 {
        // Only callsites that have the field pay for a pass over the event's fields.
        if let Some(route) = &self.field
            && event.metadata().fields().field(&route.name).is_some()
        {
            let mut finder = FieldFinder { route, found: None };
            event.record(&mut finder);
            if let Some(id) = finder.found {
                return id;
            }
        }
        self.stream_for_target(target)
    }

    /// The stream id for a target: the longest matching prefix, else the main stream.
    pub(crate) fn stream_for_target(&self, target: &str) -> u32 {
        longest_prefix(&self.targets, target).map_or(0, |id| *id)
    }
}

struct FieldFinder<'a> {
    route: &'a FieldRoute,
    found: Option<u32>,
}

impl Visit for FieldFinder<'_> {
    fn record_str(&mut self, field: &Field, value: &str) {
        if field.name() == self.route.name {
            self.found = self.route.streams.iter().find(|(s, _)| s == value).map(|(_, id)| *id);
        }
    }

    fn record_debug(&mut self, _: &Field, _: &dyn std::fmt::Debug) {}
}

/// The value of the longest prefix in `entries` that `target` is at or below.
pub(crate) fn longest_prefix<'a, T>(entries: &'a [(String, T)], target: &str) -> Option<&'a T> {
    entries
        .iter()
        .filter(|(prefix, _)| target_matches(target, prefix))
        .max_by_key(|(prefix, _)| prefix.len())
        .map(|(_, value)| value)
}

/// `app::audit` matches prefix `app::audit` and `app`, not `app::aud`.
fn target_matches(target: &str, prefix: &str) -> bool {
    target == prefix || (target.starts_with(prefix) && target[prefix.len()..].starts_with("::"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prefixes_match_whole_path_segments() {
        assert!(target_matches("app::audit", "app::audit"));
        assert!(target_matches("app::audit::x", "app::audit"));
        assert!(target_matches("app::audit", "app"));
        assert!(!target_matches("app::auditing", "app::audit"));
        assert!(!target_matches("application", "app"));
    }
}
