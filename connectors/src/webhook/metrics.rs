//! Delivery metrics of one webhook destination.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;

/// Counters shared by a [`super::WebhookSink`] and its delivery thread.
///
/// Counters only grow; the queue gauges go up and down. Everything is
/// counted by messages (one per change) unless it says batches or bytes, and
/// covers this run of the sink (a reopened sink starts at zero, except the
/// queue gauges, which start at what the earlier run left queued).
#[derive(Debug, Default)]
pub struct WebhookMetrics {
    pub(crate) delivered_messages: AtomicU64,
    pub(crate) delivered_batches: AtomicU64,
    pub(crate) retries: AtomicU64,
    pub(crate) discarded_messages: AtomicU64,
    pub(crate) discarded_batches: AtomicU64,
    pub(crate) dead_lettered_messages: AtomicU64,
    pub(crate) dead_lettered_batches: AtomicU64,
    pub(crate) skipped_messages: AtomicU64,
    pub(crate) queued_messages: AtomicU64,
    pub(crate) memory_bytes: AtomicU64,
    pub(crate) spilled_bytes: AtomicU64,
    pub(crate) last_error: Mutex<Option<String>>,
}

/// A point-in-time copy of [`WebhookMetrics`].
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct WebhookStats {
    /// Messages the destination acknowledged (2xx).
    pub delivered_messages: u64,
    /// Batches the destination acknowledged.
    pub delivered_batches: u64,
    /// Requests repeated after a transient failure.
    pub retries: u64,
    /// Messages of batches rejected permanently (4xx other than 408/429,
    /// 501, 505, 3xx), recorded in the discard file.
    pub discarded_messages: u64,
    /// Batches rejected permanently.
    pub discarded_batches: u64,
    /// Messages of batches still failing at the retry horizon, written to
    /// the dead-letter file.
    pub dead_lettered_messages: u64,
    /// Batches written to the dead-letter file.
    pub dead_lettered_batches: u64,
    /// Changes not enqueued because an earlier run had committed their time.
    pub skipped_messages: u64,
    /// Messages enqueued and not yet delivered, discarded or dead-lettered
    /// (including the batch in flight and messages not yet committed).
    pub queued_messages: u64,
    /// Bytes of queued messages held in memory (not counting the batch in
    /// flight, which is at most `max_batch_bytes`).
    pub memory_bytes: u64,
    /// Bytes of queued messages held only on disk: the delivery thread reads
    /// them back from the queue's segment files.
    pub spilled_bytes: u64,
    /// The last failure (transient or permanent), if any.
    pub last_error: Option<String>,
}

impl WebhookMetrics {
    /// Reads every counter (each one atomically, not all together).
    pub fn snapshot(&self) -> WebhookStats {
        let get = |c: &AtomicU64| c.load(Ordering::Relaxed);
        WebhookStats {
            delivered_messages: get(&self.delivered_messages),
            delivered_batches: get(&self.delivered_batches),
            retries: get(&self.retries),
            discarded_messages: get(&self.discarded_messages),
            discarded_batches: get(&self.discarded_batches),
            dead_lettered_messages: get(&self.dead_lettered_messages),
            dead_lettered_batches: get(&self.dead_lettered_batches),
            skipped_messages: get(&self.skipped_messages),
            queued_messages: get(&self.queued_messages),
            memory_bytes: get(&self.memory_bytes),
            spilled_bytes: get(&self.spilled_bytes),
            last_error: self.last_error().clone(),
        }
    }

    pub(crate) fn set_last_error(&self, error: String) {
        *self.last_error() = Some(error);
    }

    fn last_error(&self) -> std::sync::MutexGuard<'_, Option<String>> {
        self.last_error.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// Adds `n` to a counter.
pub(crate) fn add(counter: &AtomicU64, n: u64) {
    counter.fetch_add(n, Ordering::Relaxed);
}

/// Subtracts `n` from a gauge (stopping at zero).
pub(crate) fn sub(counter: &AtomicU64, n: u64) {
    let _ = counter.fetch_update(Ordering::Relaxed, Ordering::Relaxed, |v| {
        Some(v.saturating_sub(n))
    });
}
