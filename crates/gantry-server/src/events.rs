//! Cluster events to their followers: the state records them (they are
//! replicated, see `gantry_state::EventRecord`); here they are passed on
//! live as each batch is applied, and read back from the state for
//! `--since`.

use gantry_api::Event;
use gantry_store::{EventRecord, State};
use tokio::sync::broadcast;

pub(crate) struct Events {
    tx: broadcast::Sender<Event>,
}

impl Events {
    pub(crate) fn new() -> Self {
        Self {
            tx: broadcast::channel(1024).0,
        }
    }

    pub(crate) fn publish(&self, evs: Vec<EventRecord>) {
        for e in evs {
            let _ = self.tx.send(view(e));
        }
    }

    pub(crate) fn subscribe(&self) -> broadcast::Receiver<Event> {
        self.tx.subscribe()
    }
}

/// The kept events at or after `since_ms`.
pub(crate) fn since(s: &State, since_ms: u64) -> Vec<Event> {
    s.events
        .iter()
        .filter(|e| e.time_ms >= since_ms)
        .cloned()
        .map(view)
        .collect()
}

/// An event as the API shows it.
fn view(e: EventRecord) -> Event {
    let time = chrono::DateTime::from_timestamp_millis(e.time_ms as i64)
        .unwrap_or_default()
        .to_rfc3339_opts(chrono::SecondsFormat::Micros, true);
    Event {
        time,
        kind: e.kind,
        action: e.action,
        id: e.id,
        attributes: e.attributes,
    }
}
