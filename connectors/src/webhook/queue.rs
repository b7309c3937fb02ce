//! The state a sink shares with its delivery thread.
//!
//! ```text
//!   write ──► log (disk, every message) ─────────────┐
//!     └─────► memory: the newest messages, ≤ budget  ├─► delivery: [delivered, committed_end)
//!   commit ─► committed_end ─────────────────────────┘        └─► resolve: delivered = batch end
//! ```
//!
//! Invariants (all sequence numbers):
//! * `delivered <= committed_end <=` the writer's next sequence number:
//!   only committed (durable) messages are delivered;
//! * memory holds one contiguous run `[memory_front, memory_front + len)`,
//!   every message of it at or after the delivery position: the delivery
//!   thread reads messages before `memory_front` from disk and takes the
//!   rest from memory;
//! * a segment is deleted only when the next segment starts at or before
//!   `delivered`, so the newest segment is never deleted.

use std::collections::{BTreeSet, VecDeque};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};

use tokio::sync::Notify;

use super::log::Seq;
use super::metrics::WebhookMetrics;

/// What a sink and its delivery thread share.
#[derive(Debug)]
pub(crate) struct Shared {
    pub(crate) state: Mutex<QueueState>,
    /// Signalled whenever `delivered` advances (the final commit waits on it).
    pub(crate) resolved: Condvar,
    /// Wakes the delivery thread: new committed messages, draining, shutdown.
    pub(crate) wake: Notify,
    /// Interrupts the delivery thread's request or backoff: shutdown.
    pub(crate) stop: Notify,
    pub(crate) metrics: Arc<WebhookMetrics>,
}

impl Shared {
    pub(crate) fn new(state: QueueState, metrics: Arc<WebhookMetrics>) -> Self {
        Shared {
            state: Mutex::new(state),
            resolved: Condvar::new(),
            wake: Notify::new(),
            stop: Notify::new(),
            metrics,
        }
    }

    /// Locks the state (a panic elsewhere does not poison delivery).
    pub(crate) fn lock(&self) -> MutexGuard<'_, QueueState> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// The queue's positions and its in-memory part.
#[derive(Debug)]
pub(crate) struct QueueState {
    memory: VecDeque<Vec<u8>>,
    memory_front: Seq,
    memory_bytes: usize,
    max_memory_bytes: usize,
    /// Messages before this are durable and may be delivered.
    pub(crate) committed_end: Seq,
    /// Messages before this are resolved (delivered, discarded or dead-lettered).
    pub(crate) delivered: Seq,
    /// First sequence numbers of the segments on disk.
    pub(crate) segments: BTreeSet<Seq>,
    /// The output is complete: send what is committed without lingering.
    pub(crate) draining: bool,
    /// The sink is closing.
    pub(crate) shutdown: bool,
}

impl QueueState {
    pub(crate) fn new(
        delivered: Seq,
        committed_end: Seq,
        segments: BTreeSet<Seq>,
        max_memory_bytes: usize,
    ) -> Self {
        QueueState {
            memory: VecDeque::new(),
            memory_front: committed_end,
            memory_bytes: 0,
            max_memory_bytes,
            committed_end,
            delivered,
            segments,
            draining: false,
            shutdown: false,
        }
    }

    /// Keeps message `seq` in memory if it fits the budget and extends the
    /// run held there; otherwise hands it back (it is read from disk later).
    pub(crate) fn offer(&mut self, seq: Seq, message: Vec<u8>) -> Result<(), Vec<u8>> {
        let fits = self.memory_bytes + message.len() <= self.max_memory_bytes;
        if self.memory.is_empty() && fits {
            self.memory_front = seq;
        } else if !fits || self.memory_front + self.memory.len() as u64 != seq {
            return Err(message);
        }
        self.memory_bytes += message.len();
        self.memory.push_back(message);
        Ok(())
    }

    /// Where the in-memory run starts, if there is one.
    pub(crate) fn memory_front(&self) -> Option<Seq> {
        (!self.memory.is_empty()).then_some(self.memory_front)
    }

    /// Takes messages from the front of the in-memory run while their
    /// sequence number is below `end` and they fit `budget` bytes (the
    /// first one always fits when `take_first`).
    pub(crate) fn take_memory(
        &mut self,
        end: Seq,
        mut budget: usize,
        take_first: bool,
    ) -> Vec<Vec<u8>> {
        let mut taken = Vec::new();
        while self.memory_front < end {
            let Some(next) = self.memory.front() else {
                break;
            };
            if next.len() > budget && !(take_first && taken.is_empty()) {
                break;
            }
            budget = budget.saturating_sub(next.len());
            let message = self.memory.pop_front().expect("front exists");
            self.memory_bytes -= message.len();
            self.memory_front += 1;
            taken.push(message);
        }
        taken
    }

    /// Bytes held in memory.
    pub(crate) fn memory_bytes(&self) -> usize {
        self.memory_bytes
    }

    /// The first sequence number of the segment holding `seq`.
    pub(crate) fn segment_of(&self, seq: Seq) -> Option<Seq> {
        self.segments.range(..=seq).next_back().copied()
    }

    /// The segments whose every message is before `upto` (the newest
    /// segment never is): deletable once `upto` is the delivery position.
    pub(crate) fn segments_before(&self, upto: Seq) -> Vec<Seq> {
        let firsts: Vec<Seq> = self.segments.iter().copied().collect();
        firsts
            .windows(2)
            .take_while(|w| w[1] <= upto)
            .map(|w| w[0])
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn memory_holds_one_contiguous_run_within_budget() {
        let mut q = QueueState::new(0, 0, BTreeSet::from([0]), 10);
        assert!(q.offer(0, vec![0; 4]).is_ok());
        assert!(q.offer(1, vec![1; 4]).is_ok());
        assert!(q.offer(2, vec![2; 4]).is_err(), "over budget");
        assert!(q.offer(3, vec![3; 2]).is_err(), "fits, but 2 is missing");
        assert_eq!(q.memory_front(), Some(0));
        let taken = q.take_memory(1, 100, true);
        assert_eq!(taken, vec![vec![0; 4]]);
        assert_eq!(q.memory_front(), Some(1));
        assert_eq!(q.take_memory(5, 3, false), Vec::<Vec<u8>>::new());
        assert_eq!(q.take_memory(5, 3, true), vec![vec![1; 4]]);
        assert_eq!(q.memory_front(), None);
        // Empty again: a new run starts anywhere.
        assert!(q.offer(7, vec![7; 9]).is_ok());
        assert_eq!(q.memory_front(), Some(7));
        assert_eq!(q.memory_bytes(), 9);
    }

    #[test]
    fn segments_are_deletable_once_resolved() {
        let q = QueueState::new(0, 0, BTreeSet::from([0, 10, 20]), 0);
        assert_eq!(q.segment_of(15), Some(10));
        assert_eq!(q.segment_of(25), Some(20));
        assert_eq!(q.segments_before(9), Vec::<Seq>::new());
        assert_eq!(q.segments_before(10), vec![0]);
        assert_eq!(q.segments_before(15), vec![0]);
        assert_eq!(q.segments_before(40), vec![0, 10]);
    }
}
