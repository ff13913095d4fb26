//! The destinations rows can go to, by id, with per-stream counts. Id 0 is the main log stream.
//! Looked up when a route or a table is created and when the worker meets a new id; never on the
//! hot path.

use std::sync::Mutex;

/// A destination: rule and stream.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Destination {
    pub(crate) rule_id: String,
    pub(crate) stream: String,
}

/// Counts of one destination.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct StreamStats {
    /// The data collection rule.
    pub rule_id: String,
    /// The stream.
    pub stream: String,
    /// Rows the service accepted.
    pub sent: u64,
    /// Rows reported failed.
    pub failed: u64,
}

#[derive(Debug)]
pub(crate) struct Destinations {
    entries: Mutex<Vec<StreamStats>>,
}

impl Destinations {
    pub(crate) fn new(main: Destination) -> Self {
        let streams = Destinations {
            entries: Mutex::new(Vec::new()),
        };
        streams.id_for(&main);
        streams
    }

    /// The id of `target`, adding it if new.
    pub(crate) fn id_for(&self, target: &Destination) -> u32 {
        let mut entries = self.entries.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(i) = entries
            .iter()
            .position(|e| e.rule_id == target.rule_id && e.stream == target.stream)
        {
            return i as u32;
        }
        entries.push(StreamStats {
            rule_id: target.rule_id.clone(),
            stream: target.stream.clone(),
            sent: 0,
            failed: 0,
        });
        (entries.len() - 1) as u32
    }

    pub(crate) fn get(&self, id: u32) -> Option<Destination> {
        let entries = self.entries.lock().unwrap_or_else(|e| e.into_inner());
        entries.get(id as usize).map(|e| Destination {
            rule_id: e.rule_id.clone(),
            stream: e.stream.clone(),
        })
    }

    pub(crate) fn count(&self, id: u32, sent: u64, failed: u64) {
        let mut entries = self.entries.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(e) = entries.get_mut(id as usize) {
            e.sent += sent;
            e.failed += failed;
        }
    }

    pub(crate) fn snapshot(&self) -> Vec<StreamStats> {
        self.entries.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }
}
