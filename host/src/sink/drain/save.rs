//! Committing the drain's outcomes: confirmed records to delete, refused ones to dead-letter,
//! the broker's position and the publish counters, grouped into one commit of up to
//! [`DELETE_GROUP`] records or after [`DELETE_LINGER`] — at once for refusals and for records
//! found stored by reconciling. A save that fails is put back in front of what gathered since
//! and tried again after [`IDLE_LOOK`]; nothing is lost, the records stay in the outbox.

use std::time::{Duration, Instant};

use super::{Action, Awaiting, Drain, IDLE_LOOK};

/// Confirmed records deleted per commit at most.
const DELETE_GROUP: usize = 256;
/// Longest wait before confirmed records are deleted.
const DELETE_LINGER: Duration = Duration::from_millis(50);

/// One commit of the drain's outcomes.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub(in crate::sink) struct Save {
    /// Records the broker confirmed or was found to hold: deleted from the outbox.
    pub(in crate::sink) confirmed: Vec<u64>,
    /// Records the broker refused for good, with its reason: moved to the dead letters.
    pub(in crate::sink) dead: Vec<(u64, String)>,
    /// The broker's position of the last confirmed record, if it moved.
    pub(in crate::sink) position: Option<u64>,
    /// Publishes handed to the broker since the last save (first sends and resends).
    pub(in crate::sink) published: u64,
}

impl Save {
    pub(super) fn is_empty(&self) -> bool {
        self.confirmed.is_empty() && self.dead.is_empty() && self.position.is_none() && self.published == 0
    }

    /// Every seq this save removes from the outbox.
    fn settled(&self) -> impl Iterator<Item = u64> + '_ {
        self.confirmed.iter().copied().chain(self.dead.iter().map(|(seq, _)| *seq))
    }

    /// Adds what was gathered after this save was taken.
    fn absorb(&mut self, later: Self) {
        self.confirmed.extend(later.confirmed);
        self.dead.extend(later.dead);
        self.position = self.position.max(later.position);
        self.published += later.published;
    }
}

impl Drain {
    /// The answer to a [`Save`]: the records it removed may be forgotten (they are no longer in
    /// the outbox to be read again); on failure it is kept to be tried again.
    pub(super) fn saved(&mut self, now: Instant, result: Result<(), String>) {
        match result {
            Ok(()) => {
                let saved = self.saving.take().unwrap_or_default();
                for seq in saved.settled() {
                    self.settled.remove(&seq);
                }
                self.save_blocked_until = None;
            }
            // Everything stays to be committed with the next save.
            Err(e) => {
                tracing::error!(stage = "sink", pipeline = %self.settings.stream, error = %e, "cannot delete confirmed records yet");
                self.restore_unsaved(now);
                self.save_blocked_until = Some(now + IDLE_LOOK);
            }
        }
    }

    /// Puts a save that was not committed back in front of what gathered since.
    pub(super) fn restore_unsaved(&mut self, now: Instant) {
        let Some(mut save) = self.saving.take() else { return };
        save.absorb(std::mem::take(&mut self.unsaved));
        self.unsaved = save;
        self.unsaved_since.get_or_insert(now);
    }

    /// When the unsaved outcomes are due to be saved, if there are any.
    pub(super) fn save_at(&self) -> Option<Instant> {
        let since = self.unsaved_since?;
        let due = if self.save_now || !self.unsaved.dead.is_empty() || self.unsaved.confirmed.len() >= DELETE_GROUP {
            since
        } else {
            since + DELETE_LINGER
        };
        Some(self.save_blocked_until.map_or(due, |blocked| due.max(blocked)))
    }

    pub(super) fn save_due(&self, now: Instant) -> bool {
        self.save_at().is_some_and(|at| at <= now)
    }

    pub(super) fn save_allowed(&self, now: Instant) -> bool {
        self.save_blocked_until.is_none_or(|blocked| blocked <= now)
    }

    /// Takes everything gathered into one save, kept until its answer.
    pub(super) fn save(&mut self) -> Action {
        let save = std::mem::take(&mut self.unsaved);
        self.unsaved_since = None;
        self.save_now = false;
        self.saving = Some(save.clone());
        self.awaiting = Some(Awaiting::Saved);
        Action::Save(save)
    }
}
