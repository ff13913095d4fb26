//! Which stream an event goes to: the main stream unless a route sends it elsewhere.

use tracing::Event;

/// Routes chosen on the builder. Stream id 0 is the main log stream.
#[derive(Debug, Default)]
pub(crate) struct Routes {
    /// `(target prefix, stream id)`; the longest matching prefix wins.
    pub(crate) targets: Vec<(String, u32)>,
}

impl Routes {
    /// The stream id for an event with `target`.
    pub(crate) fn stream_for(&self, target: &str, _event: &Event<'_>) -> u32 {
        self.targets
            .iter()
            .filter(|(prefix, _)| target_matches(target, prefix))
            .max_by_key(|(prefix, _)| prefix.len())
            .map_or(0, |(_, id)| *id)
    }
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
