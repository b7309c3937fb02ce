//! The Segment-compatible collection API's connector side: request parsing,
//! the durable collect log and its source, and the Kafka producer.
//!
//! ```text
//!  POST /v1/track … /v1/batch            (HTTP in the engine: auth, routing)
//!        │ decode_body (gzip, 500 KB) ─► parse_request (JSON, 2,500, 32 KB,
//!        │                                messageId/receivedAt/batch context)
//!        ├── topic set ──► TopicWriter ── acks=all ──► topic ──► KafkaPart (reclocked)
//!        │                     200 once every event is acknowledged
//!        └── no topic ───► LogWriter ── group commit ──► <state_dir>/collect/<source>/events.jsonl
//!                              200 once the block is fdatasync'd      │
//!                                                  CollectPart ◄──────┘ reads synced lines,
//!                                                  binds line numbers to times (bindings, fsync'd)
//! ```
//!
//! * [`envelope`]: what is refused at the door (400s) and how a message
//!   becomes a stored event;
//! * [`log`]: the append-only log with group commit and its reader;
//! * [`source`]: [`CollectPart`], the log's [`SourcePart`](crate::source::SourcePart),
//!   with durable line → time bindings (exactly once across restarts);
//! * [`topic`]: [`TopicWriter`], the producer for sources with a topic.
//!
//! Events are validated by the job's source with the same code as file and
//! Kafka sources; rejected ones go to the job's `errors` output.

pub mod envelope;
pub mod log;
pub mod source;
pub mod topic;

pub use envelope::{
    decode_body, parse_request, Call, Collected, CollectedEvent, Refusal, MAX_BATCH_EVENTS,
    MAX_EVENT_BYTES, MAX_REQUEST_BYTES,
};
pub use log::{LogReader, LogWriter};
pub use source::{CollectPart, CollectSourceConfig};
pub use topic::TopicWriter;
