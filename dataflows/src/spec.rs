//! The job spec: a TOML file describing one Weft job.
//!
//! Parsing is two steps: serde (with `deny_unknown_fields`, so a misspelt key
//! is an error that names it and lists the expected keys, with line and
//! column), then [`JobSpec::validate`], which checks what types cannot
//! (unique names, references between sections, regexes, limits) and names the
//! offending key in dotted form (`sinks[1].output`).
//!
//! Every key is documented in `docs/job-spec.md`; keep the two in step.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Deserializer, Serialize};

/// A job spec could not be used.
#[derive(Debug, thiserror::Error)]
pub enum SpecError {
    /// The file could not be read.
    #[error("cannot read job spec {path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// The TOML is malformed or does not fit the schema (the message names the key).
    #[error("{0}")]
    Toml(String),
    /// A value is well-formed but not acceptable.
    #[error("{}", .0.iter().map(|e| e.to_string()).collect::<Vec<_>>().join("\n"))]
    Invalid(Vec<Invalid>),
}

/// One semantic problem, located by a dotted key path.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Invalid {
    /// The dotted key, e.g. `sinks[0].output`.
    pub key: String,
    /// What is wrong and what is expected.
    pub message: String,
}

impl fmt::Display for Invalid {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.key, self.message)
    }
}

/// A span of time written like `30d`, `24h`, `15m`, `90s` or `500ms`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct DurationMs(pub u64);

impl DurationMs {
    /// Parses `<integer><unit>` with unit one of `ms`, `s`, `m`, `h`, `d`, `w`.
    pub fn parse(s: &str) -> Result<DurationMs, String> {
        let s = s.trim();
        let split = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
        let (num, unit) = s.split_at(split);
        let n: u64 = num.parse().map_err(|_| {
            format!("expected a duration like \"24h\", \"30d\" or \"15m\", got {s:?}")
        })?;
        let mult = match unit.trim() {
            "ms" => 1,
            "s" => 1_000,
            "m" => 60_000,
            "h" => 3_600_000,
            "d" => 86_400_000,
            "w" => 7 * 86_400_000,
            _ => return Err(format!("expected a duration like \"24h\", \"30d\" or \"15m\" (units ms, s, m, h, d, w), got {s:?}")),
        };
        n.checked_mul(mult)
            .map(DurationMs)
            .ok_or_else(|| format!("duration {s:?} is too large"))
    }
}

impl Serialize for DurationMs {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&format!("{}ms", self.0))
    }
}

impl<'de> Deserialize<'de> for DurationMs {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        DurationMs::parse(&s).map_err(serde::de::Error::custom)
    }
}

/// A whole job.
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct JobSpec {
    /// Job-wide settings.
    pub job: JobSection,
    /// Where events come from.
    #[serde(default)]
    pub sources: Vec<SourceSpec>,
    /// Deduplication of retried events.
    #[serde(default)]
    pub dedupe: DedupeSpec,
    /// Identity-resolution rules.
    #[serde(default)]
    pub identity: IdentitySpec,
    /// Computed traits.
    #[serde(default)]
    pub traits: Vec<TraitSpec>,
    /// Audiences.
    #[serde(default)]
    pub audiences: Vec<AudienceSpec>,
    /// Where privacy regulations come from.
    #[serde(default)]
    pub regulations: Option<RegulationsSpec>,
    /// Where changes go.
    #[serde(default)]
    pub sinks: Vec<SinkSpec>,
}

/// `[job]`.
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct JobSection {
    /// The job's name: letters, digits, `-`, `_`.
    pub name: String,
    /// Directory for durable job state (source bindings, dedupe state); relative
    /// paths are resolved against the spec file's directory.
    #[serde(default)]
    pub state_dir: Option<PathBuf>,
}

/// `[[sources]]`: one input.
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq)]
#[serde(tag = "type", rename_all = "snake_case", deny_unknown_fields)]
pub enum SourceSpec {
    /// Newline-delimited JSON files, plain or gzip; bounded.
    File {
        /// Unique source name.
        name: String,
        /// One file path (relative to the spec file's directory).
        path: PathBuf,
        /// `auto` (by `.gz` suffix), `none` or `gzip`.
        #[serde(default)]
        compression: Compression,
        /// Bytes of (decompressed) input bound to one logical time.
        #[serde(default = "default_chunk_bytes")]
        chunk_bytes: u64,
    },
    /// Kafka topics; unbounded unless `bounded = true`.
    Kafka {
        /// Unique source name.
        name: String,
        /// `host:port[,...]`; defaults to the `KAFKA_BROKERS` environment variable.
        #[serde(default)]
        brokers: Option<String>,
        /// Topics to read (every partition of each).
        topics: Vec<String>,
        /// Granularity of the ingestion-time clock.
        #[serde(default = "default_tick")]
        tick: DurationMs,
        /// Stop at the end offsets found at start (replays, tests).
        #[serde(default)]
        bounded: bool,
        /// librdkafka options passed through unchanged.
        #[serde(default)]
        options: BTreeMap<String, String>,
    },
    /// Events posted to the Segment-compatible collection API (`/v1/track`,
    /// `/v1/batch`, ...) with one of `write_keys`; unbounded. Accepted events
    /// go to `topic` when one is set (and are read back like a Kafka source),
    /// else to a durable log in the job's state directory. See
    /// `docs/collection-api.md`.
    Http {
        /// Unique source name.
        name: String,
        /// The write keys that route requests to this source (HTTP Basic
        /// user name, or `writeKey` in the body).
        write_keys: Vec<String>,
        /// Kafka topic the API produces accepted events to; without one they
        /// go to `<state_dir>/collect/<name>/`.
        #[serde(default)]
        topic: Option<String>,
        /// `host:port[,...]` (with `topic` only); defaults to the
        /// `KAFKA_BROKERS` environment variable.
        #[serde(default)]
        brokers: Option<String>,
        /// Partitions of `topic` when Weft creates it.
        #[serde(default = "default_partitions")]
        partitions: u32,
        /// Granularity of the ingestion-time clock.
        #[serde(default = "default_tick")]
        tick: DurationMs,
        /// librdkafka options for the producer and the consumer (with `topic` only).
        #[serde(default)]
        options: BTreeMap<String, String>,
    },
}

fn default_tick() -> DurationMs {
    DurationMs(100)
}

impl SourceSpec {
    /// The source's name.
    pub fn name(&self) -> &str {
        match self {
            SourceSpec::File { name, .. }
            | SourceSpec::Kafka { name, .. }
            | SourceSpec::Http { name, .. } => name,
        }
    }

    /// Whether the source ends by itself (files, bounded Kafka reads).
    pub fn bounded(&self) -> bool {
        match self {
            SourceSpec::File { .. } => true,
            SourceSpec::Kafka { bounded, .. } => *bounded,
            SourceSpec::Http { .. } => false,
        }
    }
}

fn default_chunk_bytes() -> u64 {
    4 << 20
}

/// Compression of a file source.
#[derive(Clone, Copy, Debug, Default, Deserialize, Serialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum Compression {
    /// gzip when the path ends with `.gz`.
    #[default]
    Auto,
    /// Plain text.
    None,
    /// gzip.
    Gzip,
}

/// `[dedupe]`.
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct DedupeSpec {
    /// Whether duplicates are dropped.
    #[serde(default = "yes")]
    pub enabled: bool,
    /// How long a key is remembered (event time); at most 30 days.
    #[serde(default = "default_dedupe_window")]
    pub window: DurationMs,
    /// The field that identifies a retried event.
    #[serde(default = "default_dedupe_key")]
    pub key: String,
    /// Per-worker memory for remembered keys, in MiB, above which the oldest
    /// buckets spill to files under the job's state directory; unset: no spilling.
    #[serde(default)]
    pub max_memory_mb: Option<u64>,
    /// What happens to an event older than the window behind the newest one
    /// seen: `"pass"` (kept: at-least-once) or `"drop"` (at-most-once).
    #[serde(default)]
    pub late: LatePolicySpec,
}

/// `dedupe.late`.
#[derive(Clone, Copy, Debug, Default, Deserialize, Serialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum LatePolicySpec {
    /// Late events pass unchecked.
    #[default]
    Pass,
    /// Late events are dropped.
    Drop,
}

impl Default for DedupeSpec {
    fn default() -> Self {
        DedupeSpec {
            enabled: true,
            window: default_dedupe_window(),
            key: default_dedupe_key(),
            max_memory_mb: None,
            late: LatePolicySpec::Pass,
        }
    }
}

fn yes() -> bool {
    true
}
fn default_dedupe_window() -> DurationMs {
    DurationMs(24 * 3_600_000)
}
fn default_dedupe_key() -> String {
    "messageId".to_string()
}

/// The identifier kinds Weft extracts without configuration.
pub const BUILTIN_ID_KINDS: [&str; 5] =
    ["user_id", "anonymous_id", "email", "device_id", "group_id"];

/// `[identity]`.
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct IdentitySpec {
    /// Identifier values never used for stitching (regular expressions, matched against the whole value).
    #[serde(default = "default_blocked")]
    pub blocked_values: Vec<String>,
    /// Per-kind limit on how many identifiers of that kind one profile may hold.
    #[serde(default = "default_limits")]
    pub limits: BTreeMap<String, u32>,
    /// Kinds in priority order (earlier wins when a limit forces a choice).
    #[serde(default = "default_priority")]
    pub priority: Vec<String>,
    /// Extra identifier kinds read from a path in the event.
    #[serde(default)]
    pub custom_kinds: Vec<CustomKind>,
}

impl Default for IdentitySpec {
    fn default() -> Self {
        IdentitySpec {
            blocked_values: default_blocked(),
            limits: default_limits(),
            priority: default_priority(),
            custom_kinds: Vec::new(),
        }
    }
}

fn default_blocked() -> Vec<String> {
    ["", "null", "undefined", "anonymous", "0", "-1", "^[0-]*$"]
        .iter()
        .map(|s| s.to_string())
        .collect()
}
fn default_limits() -> BTreeMap<String, u32> {
    [
        ("user_id", 1),
        ("anonymous_id", 5),
        ("email", 5),
        ("device_id", 5),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v))
    .collect()
}
fn default_priority() -> Vec<String> {
    ["user_id", "email", "device_id", "anonymous_id"]
        .iter()
        .map(|s| s.to_string())
        .collect()
}

/// `[[identity.custom_kinds]]`: an identifier kind read from the event.
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct CustomKind {
    /// The kind's name (e.g. `crm_id`).
    pub name: String,
    /// Dotted path in the event, e.g. `traits.crm_id` or `properties.account.id`;
    /// or `external_id:<type>` for `context.externalIds` entries of that type.
    pub path: String,
}

/// `[[traits]]`: a computed trait.
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct TraitSpec {
    /// Unique name.
    pub name: String,
    /// The definition, in the query language (`docs/audiences.md`).
    pub query: String,
}

/// `[[audiences]]`: an audience.
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct AudienceSpec {
    /// Unique name.
    pub name: String,
    /// The membership condition, in the query language (`docs/audiences.md`).
    pub query: String,
    /// The trait key destinations receive (`{<key>: true|false}`); defaults to the name.
    #[serde(default)]
    pub key: Option<String>,
}

/// `[regulations]`: where regulation commands are read from.
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct RegulationsSpec {
    /// The regulation log: a JSONL file of regulations
    /// (`{"type": "delete", "identifier": "email:x@y.z", "at"?: time, "id"?: id}`),
    /// read at start and tailed while a live job runs; it need not exist yet.
    pub path: PathBuf,
    /// Where the audit log goes (JSONL: when each regulation was applied and
    /// when each sink committed its effects); default
    /// `<state_dir>/regulations-audit.jsonl`.
    #[serde(default)]
    pub audit: Option<PathBuf>,
}

/// `[[sinks]]`: one output.
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq)]
#[serde(tag = "type", rename_all = "snake_case", deny_unknown_fields)]
pub enum SinkSpec {
    /// A JSONL file of `{"time", "diff", "data"}` changes.
    File {
        /// Unique sink name.
        name: String,
        /// Which of the job's outputs it writes.
        output: OutputName,
        /// The file (relative to the spec file's directory); parent directories are created.
        path: PathBuf,
        /// How records are written.
        #[serde(default)]
        format: SinkFormat,
    },
    /// The same lines on standard output.
    Stdout {
        /// Unique sink name.
        name: String,
        /// Which of the job's outputs it writes.
        output: OutputName,
    },
    /// A Kafka topic, written transactionally with a progress record (exactly
    /// once across restarts). The `errors` output is written as dead letters:
    /// original bytes as the value, the reason in headers.
    Kafka {
        /// Unique sink name.
        name: String,
        /// Which of the job's outputs it writes.
        output: OutputName,
        /// `host:port[,...]`; defaults to the `KAFKA_BROKERS` environment variable.
        #[serde(default)]
        brokers: Option<String>,
        /// The topic (created if missing).
        topic: String,
        /// Partitions when the topic is created.
        #[serde(default = "default_partitions")]
        partitions: u32,
        /// librdkafka options passed through unchanged.
        #[serde(default)]
        options: BTreeMap<String, String>,
    },
    /// An HTTP endpoint: changes POSTed as JSON batches, retried, queued on
    /// disk under `<state_dir>/webhook/<name>` (at least once; see
    /// `weft_connectors::webhook`).
    Webhook(WebhookSinkSpec),
    /// PostgreSQL tables like Segment's, one transaction per commit with the
    /// sink's progress (exactly once; see `weft_connectors::warehouse`).
    Postgres(PostgresSinkSpec),
    /// A Parquet data lake under one root directory (see `weft_connectors::lake`).
    Lake(LakeSinkSpec),
}

fn default_partitions() -> u32 {
    1
}

/// `[[sinks]]` with `type = "webhook"`. Defaults are the webhook sink's.
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct WebhookSinkSpec {
    /// Unique sink name: letters, digits, `-`, `_`, `.` (it names the sink's
    /// state directory and is part of every `messageId`).
    pub name: String,
    /// Which of the job's outputs it writes.
    pub output: OutputName,
    /// The `http://` or `https://` URL batches are POSTed to.
    pub url: String,
    /// Extra request headers, e.g. `Authorization`.
    #[serde(default)]
    pub headers: BTreeMap<String, String>,
    /// Most messages in one request.
    #[serde(default = "default_webhook_batch_size")]
    pub batch_size: usize,
    /// Most bytes of messages in one request (a larger single message goes alone).
    #[serde(default = "default_webhook_batch_bytes")]
    pub max_batch_bytes: usize,
    /// How long a batch that is not full waits for more messages.
    #[serde(default = "default_webhook_linger")]
    pub linger: DurationMs,
    /// Timeout of one request, connecting to reading the response.
    #[serde(default = "default_webhook_timeout")]
    pub timeout: DurationMs,
    /// How long a batch is retried, from its first attempt, before it is dead-lettered.
    #[serde(default = "default_webhook_horizon")]
    pub retry_horizon: DurationMs,
    /// Ceiling of the first retry's random wait; doubles per attempt.
    #[serde(default = "default_webhook_initial_backoff")]
    pub initial_backoff: DurationMs,
    /// Largest ceiling of a retry's random wait.
    #[serde(default = "default_webhook_max_backoff")]
    pub max_backoff: DurationMs,
    /// MiB of queued messages kept in memory; the rest is read back from disk.
    #[serde(default = "default_webhook_memory_mb")]
    pub max_memory_mb: u64,
    /// MiB at which a queue segment file is closed and a new one started.
    #[serde(default = "default_webhook_segment_mb")]
    pub segment_mb: u64,
    /// How long the end of a bounded job waits for the queue to drain.
    #[serde(default = "default_webhook_drain_timeout")]
    pub drain_timeout: DurationMs,
}

fn default_webhook_batch_size() -> usize {
    100
}
fn default_webhook_batch_bytes() -> usize {
    512 << 10
}
fn default_webhook_linger() -> DurationMs {
    DurationMs(200)
}
fn default_webhook_timeout() -> DurationMs {
    DurationMs(10_000)
}
fn default_webhook_horizon() -> DurationMs {
    DurationMs(4 * 3_600_000)
}
fn default_webhook_initial_backoff() -> DurationMs {
    DurationMs(500)
}
fn default_webhook_max_backoff() -> DurationMs {
    DurationMs(300_000)
}
fn default_webhook_memory_mb() -> u64 {
    64
}
fn default_webhook_segment_mb() -> u64 {
    16
}
fn default_webhook_drain_timeout() -> DurationMs {
    DurationMs(30_000)
}

/// `[[sinks]]` with `type = "postgres"`.
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct PostgresSinkSpec {
    /// Unique sink name (its key in the schema's `weft_progress` table).
    pub name: String,
    /// Which of the job's outputs it writes: one of [`PostgresSinkSpec::OUTPUTS`].
    pub output: OutputName,
    /// `postgres://user:password@host:port/database`; defaults to the
    /// `WEFT_PG_URL` environment variable.
    #[serde(default)]
    pub url: Option<String>,
    /// The schema the tables live in (created if missing).
    #[serde(default = "default_pg_schema")]
    pub schema: String,
    /// How long a statement may wait for a lock before the commit fails.
    #[serde(default = "default_pg_lock_timeout")]
    pub lock_timeout: DurationMs,
    /// MiB of staged changes past which they are applied early, inside the
    /// transaction the next commit closes.
    #[serde(default = "default_pg_buffered_mb")]
    pub max_buffered_mb: u64,
}

impl PostgresSinkSpec {
    /// The outputs the warehouse has tables for.
    pub const OUTPUTS: [OutputName; 4] = [
        OutputName::Events,
        OutputName::ProfileTraits,
        OutputName::Audiences,
        OutputName::ComputedTraits,
    ];
}

fn default_pg_schema() -> String {
    "weft".to_string()
}
fn default_pg_lock_timeout() -> DurationMs {
    DurationMs(30_000)
}
fn default_pg_buffered_mb() -> u64 {
    64
}

/// `[[sinks]]` with `type = "lake"`.
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct LakeSinkSpec {
    /// Unique sink name.
    pub name: String,
    /// Which of the job's outputs it writes: any but `errors` and `counts`.
    pub output: OutputName,
    /// The lake's root directory (relative to the spec file's directory),
    /// created if missing; one sink per root.
    pub root: PathBuf,
    /// A file is sealed once it reaches this many MiB.
    #[serde(default = "default_lake_file_mb")]
    pub target_file_mb: u64,
    /// Rows per Parquet row group, at most.
    #[serde(default = "default_lake_row_group_rows")]
    pub max_row_group_rows: usize,
    /// Partitions with an open file, at most.
    #[serde(default = "default_lake_open_partitions")]
    pub max_open_partitions: usize,
    /// MiB of encoded data open files hold in memory, at most (roughly).
    #[serde(default = "default_lake_buffered_mb")]
    pub max_buffered_mb: u64,
}

fn default_lake_file_mb() -> u64 {
    128
}
fn default_lake_row_group_rows() -> usize {
    128 * 1024
}
fn default_lake_open_partitions() -> usize {
    64
}
fn default_lake_buffered_mb() -> u64 {
    256
}

impl SinkSpec {
    /// The sink's name.
    pub fn name(&self) -> &str {
        match self {
            SinkSpec::File { name, .. }
            | SinkSpec::Stdout { name, .. }
            | SinkSpec::Kafka { name, .. } => name,
            SinkSpec::Webhook(w) => &w.name,
            SinkSpec::Postgres(p) => &p.name,
            SinkSpec::Lake(l) => &l.name,
        }
    }
    /// The output it writes.
    pub fn output(&self) -> OutputName {
        match self {
            SinkSpec::File { output, .. }
            | SinkSpec::Stdout { output, .. }
            | SinkSpec::Kafka { output, .. } => *output,
            SinkSpec::Webhook(w) => w.output,
            SinkSpec::Postgres(p) => p.output,
            SinkSpec::Lake(l) => l.output,
        }
    }
}

/// How a file sink writes its records.
#[derive(Clone, Copy, Debug, Default, Deserialize, Serialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum SinkFormat {
    /// One change per line: `{"time", "diff", "data"}`.
    #[default]
    Changes,
    /// Audience changes as Segment `identify` calls: `traits: {<audience key>: true|false}`.
    SegmentIdentify,
    /// Audience changes as Segment `track` calls: `Audience Entered` / `Audience Exited`.
    SegmentTrack,
}

/// The outputs a job produces, which sinks can subscribe to.
#[derive(Clone, Copy, Debug, Deserialize, Serialize, PartialEq, Eq, PartialOrd, Ord, Hash)]
#[serde(rename_all = "snake_case")]
pub enum OutputName {
    /// Validated events.
    Events,
    /// Rejected records with their reasons (the dead-letter stream).
    Errors,
    /// Counts per call type, per track event name, per rejection reason and of dropped duplicates.
    Counts,
    /// Identifier → profile (one record per identifier).
    Identities,
    /// `profile_merged` / `profile_split` records.
    ProfileChanges,
    /// Profile traits from identify calls (last write wins per key).
    ProfileTraits,
    /// Audience memberships (+1 entered, −1 exited).
    Audiences,
    /// Computed-trait values.
    ComputedTraits,
}

impl OutputName {
    /// The name used in the spec.
    pub fn as_str(self) -> &'static str {
        match self {
            OutputName::Events => "events",
            OutputName::Errors => "errors",
            OutputName::Counts => "counts",
            OutputName::Identities => "identities",
            OutputName::ProfileChanges => "profile_changes",
            OutputName::ProfileTraits => "profile_traits",
            OutputName::Audiences => "audiences",
            OutputName::ComputedTraits => "computed_traits",
        }
    }
}

/// The longest dedupe window.
pub const MAX_DEDUPE_WINDOW: DurationMs = DurationMs(30 * 86_400_000);

impl JobSpec {
    /// Parses TOML text (no semantic validation; see [`JobSpec::validate`]).
    pub fn from_toml(text: &str) -> Result<JobSpec, SpecError> {
        toml::from_str(text).map_err(|e| SpecError::Toml(e.to_string().trim_end().to_string()))
    }

    /// Reads, parses and validates a spec file, and resolves relative paths
    /// against the file's directory.
    pub fn load(path: &Path) -> Result<JobSpec, SpecError> {
        let text = std::fs::read_to_string(path).map_err(|source| SpecError::Io {
            path: path.to_path_buf(),
            source,
        })?;
        let mut spec = JobSpec::from_toml(&text).map_err(|e| match e {
            SpecError::Toml(m) => SpecError::Toml(format!("{}: {m}", path.display())),
            other => other,
        })?;
        spec.validate()?;
        let base = path.parent().unwrap_or(Path::new("."));
        spec.resolve_paths(base);
        Ok(spec)
    }

    /// Makes every relative path absolute against `base`.
    pub fn resolve_paths(&mut self, base: &Path) {
        let fix = |p: &mut PathBuf| {
            if p.is_relative() {
                *p = base.join(&*p);
            }
        };
        for s in &mut self.sources {
            match s {
                SourceSpec::File { path, .. } => fix(path),
                SourceSpec::Kafka { brokers, .. } => {
                    if brokers.is_none() {
                        *brokers = std::env::var("KAFKA_BROKERS").ok();
                    }
                }
                SourceSpec::Http { brokers, topic, .. } => {
                    if topic.is_some() && brokers.is_none() {
                        *brokers = std::env::var("KAFKA_BROKERS").ok();
                    }
                }
            }
        }
        if self.job.state_dir.is_none() {
            self.job.state_dir = Some(PathBuf::from(format!(".weft-state/{}", self.job.name)));
        }
        if let Some(d) = self.job.state_dir.as_mut() {
            fix(d)
        }
        if let Some(r) = self.regulations.as_mut() {
            fix(&mut r.path);
            if let Some(a) = r.audit.as_mut() {
                fix(a)
            }
        }
        for s in &mut self.sinks {
            match s {
                SinkSpec::File { path, .. } => fix(path),
                SinkSpec::Kafka { brokers, .. } => {
                    if brokers.is_none() {
                        *brokers = std::env::var("KAFKA_BROKERS").ok();
                    }
                }
                SinkSpec::Postgres(p) => {
                    if p.url.is_none() {
                        p.url = std::env::var("WEFT_PG_URL").ok();
                    }
                }
                SinkSpec::Lake(l) => fix(&mut l.root),
                SinkSpec::Stdout { .. } | SinkSpec::Webhook(_) => {}
            }
        }
    }

    /// Checks what the types cannot; returns every problem found.
    pub fn validate(&self) -> Result<(), SpecError> {
        let mut errs = Vec::new();
        let mut bad = |key: String, message: String| errs.push(Invalid { key, message });

        if self.job.name.is_empty()
            || !self
                .job
                .name
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
        {
            bad(
                "job.name".into(),
                format!(
                    "expected a non-empty name of letters, digits, '-' and '_', got {:?}",
                    self.job.name
                ),
            );
        }
        if self.sources.is_empty() {
            bad(
                "sources".into(),
                "a job needs at least one [[sources]] entry".into(),
            );
        }
        let mut names = BTreeSet::new();
        let mut write_keys = BTreeSet::new();
        for (i, s) in self.sources.iter().enumerate() {
            if !names.insert(s.name().to_string()) {
                bad(
                    format!("sources[{i}].name"),
                    format!("duplicate source name {:?}", s.name()),
                );
            }
            match s {
                SourceSpec::File {
                    chunk_bytes, path, ..
                } => {
                    if *chunk_bytes < 4096 {
                        bad(
                            format!("sources[{i}].chunk_bytes"),
                            format!("expected at least 4096 bytes, got {chunk_bytes}"),
                        );
                    }
                    if path.as_os_str().is_empty() {
                        bad(format!("sources[{i}].path"), "expected a file path".into());
                    }
                }
                SourceSpec::Kafka { topics, tick, .. } => {
                    if topics.is_empty() || topics.iter().any(|t| t.trim().is_empty()) {
                        bad(
                            format!("sources[{i}].topics"),
                            "expected a non-empty list of topic names".into(),
                        );
                    }
                    if tick.0 == 0 || tick.0 > 60_000 {
                        bad(
                            format!("sources[{i}].tick"),
                            format!("expected a tick between 1ms and 60s, got {}ms", tick.0),
                        );
                    }
                }
                SourceSpec::Http { .. } => validate_http_source(i, s, &mut write_keys, &mut bad),
            }
        }
        if self.dedupe.window > MAX_DEDUPE_WINDOW || self.dedupe.window.0 == 0 {
            bad(
                "dedupe.window".into(),
                format!(
                    "expected a window between 1ms and 30d, got {}ms",
                    self.dedupe.window.0
                ),
            );
        }
        if self.dedupe.key != "messageId" {
            bad(
                "dedupe.key".into(),
                format!("only \"messageId\" is supported, got {:?}", self.dedupe.key),
            );
        }
        for (i, v) in self.identity.blocked_values.iter().enumerate() {
            if let Err(e) = regex::Regex::new(&format!("^(?:{v})$")) {
                bad(
                    format!("identity.blocked_values[{i}]"),
                    format!("not a valid regular expression: {e}"),
                );
            }
        }
        let mut kinds: BTreeSet<String> = BUILTIN_ID_KINDS.iter().map(|s| s.to_string()).collect();
        for (i, k) in self.identity.custom_kinds.iter().enumerate() {
            if !kinds.insert(k.name.clone()) {
                bad(
                    format!("identity.custom_kinds[{i}].name"),
                    format!("kind {:?} is already defined", k.name),
                );
            }
            let ok_path = k
                .path
                .strip_prefix("external_id:")
                .map(|t| !t.is_empty())
                .unwrap_or_else(|| {
                    ["traits.", "properties.", "context."]
                        .iter()
                        .any(|p| k.path.len() > p.len() && k.path.starts_with(p))
                });
            if !ok_path {
                bad(
                    format!("identity.custom_kinds[{i}].path"),
                    format!("expected \"traits.<path>\", \"properties.<path>\", \"context.<path>\" or \"external_id:<type>\", got {:?}", k.path),
                );
            }
        }
        for (kind, limit) in &self.identity.limits {
            if !kinds.contains(kind) {
                bad(
                    format!("identity.limits.{kind}"),
                    format!("unknown identifier kind; expected one of {}", join(&kinds)),
                );
            } else if *limit == 0 {
                bad(
                    format!("identity.limits.{kind}"),
                    "expected a limit of at least 1".into(),
                );
            }
        }
        let mut seen = BTreeSet::new();
        for (i, kind) in self.identity.priority.iter().enumerate() {
            if !kinds.contains(kind) {
                bad(
                    format!("identity.priority[{i}]"),
                    format!(
                        "unknown identifier kind {kind:?}; expected one of {}",
                        join(&kinds)
                    ),
                );
            } else if !seen.insert(kind) {
                bad(
                    format!("identity.priority[{i}]"),
                    format!("kind {kind:?} is listed twice"),
                );
            }
        }
        let mut defined = BTreeSet::new();
        for (i, t) in self.traits.iter().enumerate() {
            check_named(
                &mut bad,
                &mut defined,
                &format!("traits[{i}]"),
                &t.name,
                &t.query,
            );
            if !t.query.trim().is_empty() {
                if let Err(e) = crate::query::parse_computed_trait(&t.query) {
                    bad(format!("traits[{i}].query"), e.to_string());
                }
            }
        }
        let trait_names: BTreeSet<&str> = self.traits.iter().map(|t| t.name.as_str()).collect();
        let audience_names: BTreeSet<&str> =
            self.audiences.iter().map(|a| a.name.as_str()).collect();
        for (i, a) in self.audiences.iter().enumerate() {
            check_named(
                &mut bad,
                &mut defined,
                &format!("audiences[{i}]"),
                &a.name,
                &a.query,
            );
            if a.query.trim().is_empty() {
                continue;
            }
            match crate::query::parse_audience(&a.query) {
                Err(e) => bad(format!("audiences[{i}].query"), e.to_string()),
                Ok(cond) => {
                    let (mut auds, mut comps) = (Vec::new(), Vec::new());
                    cond.audiences(&mut auds);
                    cond.computed(&mut comps);
                    let earlier: BTreeSet<&str> = self.audiences[..i]
                        .iter()
                        .map(|a| a.name.as_str())
                        .collect();
                    for r in auds.iter() {
                        if !audience_names.contains(r.as_str()) {
                            bad(
                                format!("audiences[{i}].query"),
                                format!("refers to audience {r:?}, which is not defined"),
                            );
                        } else if !earlier.contains(r.as_str()) {
                            bad(
                                format!("audiences[{i}].query"),
                                format!("refers to audience {r:?}, which must be defined before this one (no cycles)"),
                            );
                        }
                    }
                    for r in comps.iter().filter(|r| !trait_names.contains(r.as_str())) {
                        bad(
                            format!("audiences[{i}].query"),
                            format!("refers to computed trait {r:?}, which is not defined"),
                        );
                    }
                }
            }
        }
        let mut sink_names = BTreeSet::new();
        let mut lake_roots: BTreeMap<&Path, &str> = BTreeMap::new();
        for (i, s) in self.sinks.iter().enumerate() {
            if !sink_names.insert(s.name().to_string()) {
                bad(
                    format!("sinks[{i}].name"),
                    format!("duplicate sink name {:?}", s.name()),
                );
            }
            if let SinkSpec::File { format, output, .. } = s {
                if *format != SinkFormat::Changes && *output != OutputName::Audiences {
                    bad(
                        format!("sinks[{i}].format"),
                        "the Segment formats apply to the `audiences` output only".into(),
                    );
                }
            }
            if let SinkSpec::Kafka {
                topic, partitions, ..
            } = s
            {
                if topic.trim().is_empty() {
                    bad(format!("sinks[{i}].topic"), "expected a topic name".into());
                }
                if *partitions == 0 {
                    bad(
                        format!("sinks[{i}].partitions"),
                        "expected at least 1 partition".into(),
                    );
                }
            }
            let key = format!("sinks[{i}]");
            match s {
                SinkSpec::Webhook(w) => check_webhook(&mut bad, &key, w),
                SinkSpec::Postgres(p) => check_postgres(&mut bad, &key, p),
                SinkSpec::Lake(l) => {
                    check_lake(&mut bad, &key, l);
                    if let Some(other) = lake_roots.insert(&l.root, l.name.as_str()) {
                        bad(
                            format!("{key}.root"),
                            format!(
                                "{} is already the root of lake sink {other:?}; give each lake sink its own root",
                                l.root.display()
                            ),
                        );
                    }
                }
                SinkSpec::File { .. } | SinkSpec::Stdout { .. } | SinkSpec::Kafka { .. } => {}
            }
        }
        if errs.is_empty() {
            Ok(())
        } else {
            Err(SpecError::Invalid(errs))
        }
    }
}

fn check_named(
    bad: &mut impl FnMut(String, String),
    defined: &mut BTreeSet<String>,
    key: &str,
    name: &str,
    query: &str,
) {
    if name.is_empty()
        || !name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
    {
        bad(
            format!("{key}.name"),
            format!("expected a name of letters, digits, '-' and '_', got {name:?}"),
        );
    } else if !defined.insert(name.to_string()) {
        bad(
            format!("{key}.name"),
            format!("{name:?} is already defined as a trait or audience"),
        );
    }
    if query.trim().is_empty() {
        bad(format!("{key}.query"), "expected a non-empty query".into());
    }
}

/// Header names the webhook sink sets itself.
const WEBHOOK_RESERVED_HEADERS: [&str; 6] = [
    "content-type",
    "content-length",
    "content-encoding",
    "transfer-encoding",
    "host",
    "idempotency-key",
];

fn check_webhook(bad: &mut impl FnMut(String, String), key: &str, w: &WebhookSinkSpec) {
    let WebhookSinkSpec {
        name,
        output: _,
        url,
        headers,
        batch_size,
        max_batch_bytes,
        linger: _,
        timeout,
        retry_horizon: _,
        initial_backoff,
        max_backoff,
        max_memory_mb: _,
        segment_mb,
        drain_timeout: _,
    } = w;
    let name_ok = |c: char| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.');
    if name.is_empty() || name.starts_with('.') || !name.chars().all(name_ok) {
        bad(
            format!("{key}.name"),
            format!("a webhook sink's name names its state directory: expected letters, digits, '-', '_' and '.' (not first), got {name:?}"),
        );
    }
    let host = url
        .strip_prefix("http://")
        .or_else(|| url.strip_prefix("https://"));
    if host.is_none_or(|h| h.is_empty() || h.starts_with('/')) {
        bad(
            format!("{key}.url"),
            format!("expected an http:// or https:// URL, got {url:?}"),
        );
    }
    for h in headers.keys() {
        if WEBHOOK_RESERVED_HEADERS.contains(&h.to_ascii_lowercase().as_str()) {
            bad(
                format!("{key}.headers.{h}"),
                "this header is set by the sink; remove it".into(),
            );
        } else if h.is_empty() || !h.bytes().all(|b| b.is_ascii_graphic() && b != b':') {
            bad(
                format!("{key}.headers.{h}"),
                "not a valid HTTP header name".into(),
            );
        }
    }
    if *batch_size == 0 {
        bad(format!("{key}.batch_size"), "expected at least 1".into());
    }
    if *max_batch_bytes == 0 {
        bad(
            format!("{key}.max_batch_bytes"),
            "expected at least 1".into(),
        );
    }
    if timeout.0 == 0 {
        bad(
            format!("{key}.timeout"),
            "expected a positive duration".into(),
        );
    }
    if initial_backoff.0 == 0 {
        bad(
            format!("{key}.initial_backoff"),
            "expected a positive duration".into(),
        );
    }
    if max_backoff < initial_backoff {
        bad(
            format!("{key}.max_backoff"),
            format!(
                "expected at least initial_backoff ({}ms), got {}ms",
                initial_backoff.0, max_backoff.0
            ),
        );
    }
    if *segment_mb == 0 {
        bad(format!("{key}.segment_mb"), "expected at least 1".into());
    }
}

fn check_postgres(bad: &mut impl FnMut(String, String), key: &str, p: &PostgresSinkSpec) {
    let PostgresSinkSpec {
        name: _,
        output,
        url,
        schema,
        lock_timeout,
        max_buffered_mb,
    } = p;
    if !PostgresSinkSpec::OUTPUTS.contains(output) {
        bad(
            format!("{key}.output"),
            format!(
                "the postgres sink has tables for the outputs {} only, not {:?}",
                PostgresSinkSpec::OUTPUTS.map(|o| o.as_str()).join(", "),
                output.as_str()
            ),
        );
    }
    if url.as_deref().is_some_and(|u| u.trim().is_empty()) {
        bad(
            format!("{key}.url"),
            "expected a connection string like postgres://user:password@host:5432/db".into(),
        );
    }
    if schema.is_empty() || schema.len() > 63 || schema.contains('\0') {
        bad(
            format!("{key}.schema"),
            format!("expected a PostgreSQL name of 1 to 63 bytes, got {schema:?}"),
        );
    }
    if lock_timeout.0 == 0 {
        bad(
            format!("{key}.lock_timeout"),
            "expected a positive duration".into(),
        );
    }
    if *max_buffered_mb == 0 {
        bad(
            format!("{key}.max_buffered_mb"),
            "expected at least 1".into(),
        );
    }
}

fn check_lake(bad: &mut impl FnMut(String, String), key: &str, l: &LakeSinkSpec) {
    let LakeSinkSpec {
        name: _,
        output,
        root,
        target_file_mb,
        max_row_group_rows,
        max_open_partitions,
        max_buffered_mb,
    } = l;
    if matches!(output, OutputName::Errors | OutputName::Counts) {
        bad(
            format!("{key}.output"),
            format!(
                "the lake sink writes events and the profile outputs, not {:?}",
                output.as_str()
            ),
        );
    }
    if root.as_os_str().is_empty() {
        bad(format!("{key}.root"), "expected a directory".into());
    }
    for (field, value) in [
        ("target_file_mb", *target_file_mb as usize),
        ("max_row_group_rows", *max_row_group_rows),
        ("max_open_partitions", *max_open_partitions),
        ("max_buffered_mb", *max_buffered_mb as usize),
    ] {
        if value == 0 {
            bad(format!("{key}.{field}"), "expected at least 1".into());
        }
    }
}

/// Checks `sources[i]`, an HTTP source; `seen` holds the write keys of the
/// sources before it (a key routes to one source).
fn validate_http_source(
    i: usize,
    source: &SourceSpec,
    seen: &mut BTreeSet<String>,
    bad: &mut impl FnMut(String, String),
) {
    let SourceSpec::Http {
        name: _,
        write_keys,
        topic,
        brokers,
        partitions,
        tick,
        options,
    } = source
    else {
        return;
    };
    if write_keys.is_empty() {
        bad(
            format!("sources[{i}].write_keys"),
            "expected at least one write key".into(),
        );
    }
    for (k, key) in write_keys.iter().enumerate() {
        if key.is_empty()
            || key
                .chars()
                .any(|c| c == ':' || c.is_whitespace() || c.is_control())
        {
            bad(
                format!("sources[{i}].write_keys[{k}]"),
                format!("expected a non-empty key without ':', spaces or control characters, got {key:?}"),
            );
        } else if !seen.insert(key.clone()) {
            bad(
                format!("sources[{i}].write_keys[{k}]"),
                format!("write key {key:?} is listed twice; a key routes to one source"),
            );
        }
    }
    match topic {
        Some(t) if t.trim().is_empty() => bad(
            format!("sources[{i}].topic"),
            "expected a topic name".into(),
        ),
        Some(_) => {}
        None => {
            if brokers.is_some() || !options.is_empty() {
                bad(
                    format!("sources[{i}].brokers"),
                    "`brokers` and `options` apply only with `topic`; set a topic or remove them"
                        .into(),
                );
            }
        }
    }
    if *partitions == 0 {
        bad(
            format!("sources[{i}].partitions"),
            "expected at least 1 partition".into(),
        );
    }
    if tick.0 == 0 || tick.0 > 60_000 {
        bad(
            format!("sources[{i}].tick"),
            format!("expected a tick between 1ms and 60s, got {}ms", tick.0),
        );
    }
}

fn join(set: &BTreeSet<String>) -> String {
    set.iter()
        .map(|s| s.as_str())
        .collect::<Vec<_>>()
        .join(", ")
}

#[cfg(test)]
mod tests {
    use super::*;

    const MINIMAL: &str = r#"
[job]
name = "t"
[[sources]]
type = "file"
name = "events"
path = "events.jsonl"
[[sinks]]
type = "stdout"
name = "counts"
output = "counts"
"#;

    fn err_of(text: &str) -> String {
        match JobSpec::from_toml(text).and_then(|s| s.validate().map(|_| s)) {
            Ok(_) => panic!("expected an error for:\n{text}"),
            Err(e) => e.to_string(),
        }
    }

    #[test]
    fn minimal_spec_has_segment_like_defaults() {
        let s = JobSpec::from_toml(MINIMAL).unwrap();
        s.validate().unwrap();
        assert_eq!(s.dedupe.window, DurationMs(86_400_000));
        assert_eq!(s.identity.limits["user_id"], 1);
        assert_eq!(s.identity.limits["email"], 5);
        assert!(s.identity.blocked_values.contains(&"anonymous".to_string()));
        assert_eq!(s.sinks[0].output(), OutputName::Counts);
    }

    #[test]
    fn unknown_keys_are_named() {
        let e = err_of(&MINIMAL.replace("path = \"events.jsonl\"", "pth = \"events.jsonl\""));
        assert!(e.contains("pth"), "{e}");
        assert!(e.contains("line"), "{e}");
        let e = err_of(&format!("{MINIMAL}\n[dedupe]\nwindw = \"1h\"\n"));
        assert!(e.contains("windw") && e.contains("window"), "{e}");
    }

    #[test]
    fn wrong_values_say_what_is_expected() {
        let e = err_of(&format!("{MINIMAL}\n[dedupe]\nwindow = \"soon\"\n"));
        assert!(e.contains("expected a duration"), "{e}");
        let e = err_of(&format!("{MINIMAL}\n[dedupe]\nwindow = \"31d\"\n"));
        assert!(e.contains("dedupe.window"), "{e}");
        let e = err_of(&MINIMAL.replace("output = \"counts\"", "output = \"profiles\""));
        assert!(e.contains("profiles") && e.contains("counts"), "{e}");
        let e = err_of(&MINIMAL.replace("type = \"file\"", "type = \"ftp\""));
        assert!(e.contains("ftp"), "{e}");
        let e = err_of(&format!(
            "{MINIMAL}\n[identity]\nblocked_values = [\"(\"]\nlimits = {{ shoe_size = 2 }}\n"
        ));
        assert!(e.contains("identity.blocked_values[0]"), "{e}");
        assert!(e.contains("identity.limits.shoe_size"), "{e}");
        let e = err_of(&format!("{MINIMAL}\n[[audiences]]\nname = \"a\"\nquery = \"x\"\n[[audiences]]\nname = \"a\"\nquery = \"\"\n"));
        assert!(
            e.contains("audiences[1].name") && e.contains("audiences[1].query"),
            "{e}"
        );
        assert!(
            e.contains("audiences[0].query: line 1, column 1: expected"),
            "{e}"
        );
        let e = err_of(&format!("{MINIMAL}\n[[audiences]]\nname = \"a\"\nquery = 'audience(\"b\") or computed.ltv > 1'\n"));
        assert!(
            e.contains("audience \"b\"") && e.contains("computed trait \"ltv\""),
            "{e}"
        );
        let e = err_of("[job]\nname = \"bad name\"\n");
        assert!(e.contains("job.name") && e.contains("sources"), "{e}");
        let e = err_of("[job]\nname = 5\n");
        assert!(e.contains("name"), "{e}");
    }

    #[test]
    fn http_sources_parse_validate_and_round_trip() {
        let http = |extra: &str| {
            format!("[job]\nname = \"t\"\n[[sources]]\ntype = \"http\"\nname = \"api\"\n{extra}\n")
        };
        let s = JobSpec::from_toml(&http("write_keys = [\"k1\", \"k2\"]")).unwrap();
        s.validate().unwrap();
        assert!(!s.sources[0].bounded());
        match &s.sources[0] {
            SourceSpec::Http {
                write_keys,
                topic,
                tick,
                partitions,
                ..
            } => {
                assert_eq!(write_keys, &["k1", "k2"]);
                assert_eq!(topic, &None);
                assert_eq!(*tick, DurationMs(100));
                assert_eq!(*partitions, 1);
            }
            other => panic!("not an http source: {other:?}"),
        }
        assert_eq!(
            JobSpec::from_toml(&toml::to_string(&s).unwrap()).unwrap(),
            s
        );
        let t = JobSpec::from_toml(&http(
            "write_keys = [\"k\"]\ntopic = \"in\"\nbrokers = \"127.0.0.1:9092\"\npartitions = 3",
        ))
        .unwrap();
        t.validate().unwrap();
        assert_eq!(
            JobSpec::from_toml(&toml::to_string(&t).unwrap()).unwrap(),
            t
        );

        let e = err_of(&http("write_keys = []"));
        assert!(
            e.contains("sources[0].write_keys: expected at least one"),
            "{e}"
        );
        let e = err_of(&http("write_keys = [\"a:b\", \"\"]"));
        assert!(
            e.contains("sources[0].write_keys[0]") && e.contains("sources[0].write_keys[1]"),
            "{e}"
        );
        let e = err_of(&http("write_keys = [\"k\"]\nbrokers = \"h:1\""));
        assert!(
            e.contains("sources[0].brokers") && e.contains("only with `topic`"),
            "{e}"
        );
        let e = err_of(&http(
            "write_keys = [\"k\"]\ntopic = \" \"\npartitions = 0\ntick = \"0ms\"",
        ));
        assert!(
            e.contains("sources[0].topic")
                && e.contains("sources[0].partitions")
                && e.contains("sources[0].tick"),
            "{e}"
        );
        let e = err_of(&format!(
            "{}[[sources]]\ntype = \"http\"\nname = \"other\"\nwrite_keys = [\"k\"]\n",
            http("write_keys = [\"k\"]")
        ));
        assert!(
            e.contains("sources[1].write_keys[0]") && e.contains("listed twice"),
            "{e}"
        );
        let e = err_of(&http("write_keys = [\"k\"]\nwritekey = \"k\""));
        assert!(e.contains("writekey"), "{e}");
    }

    #[test]
    fn specs_round_trip_through_toml() {
        let mut s = JobSpec::from_toml(&format!("{MINIMAL}\n[dedupe]\nwindow = \"2d\"\n")).unwrap();
        s.resolve_paths(Path::new("/x"));
        let again = JobSpec::from_toml(&toml::to_string(&s).unwrap()).unwrap();
        assert_eq!(s, again);
    }

    #[test]
    fn durations() {
        assert_eq!(DurationMs::parse("30d"), Ok(DurationMs(30 * 86_400_000)));
        assert_eq!(DurationMs::parse("15m"), Ok(DurationMs(900_000)));
        assert_eq!(DurationMs::parse("500ms"), Ok(DurationMs(500)));
        assert!(DurationMs::parse("d").is_err());
        assert!(DurationMs::parse("5y").is_err());
    }

    const DESTINATIONS: &str = r#"
[[sinks]]
type = "webhook"
name = "hook"
output = "events"
url = "https://example.com/in"
headers = { Authorization = "Bearer x" }
[[sinks]]
type = "postgres"
name = "pg"
output = "audiences"
url = "postgres://u@127.0.0.1:5432/db"
[[sinks]]
type = "lake"
name = "lake"
output = "events"
root = "lake/events"
target_file_mb = 16
"#;

    #[test]
    fn destination_sinks_have_the_sinks_defaults() {
        let mut s = JobSpec::from_toml(&format!("{MINIMAL}{DESTINATIONS}")).unwrap();
        s.validate().unwrap();
        s.resolve_paths(Path::new("/jobs"));
        let names: Vec<_> = s.sinks.iter().map(|k| (k.name(), k.output())).collect();
        assert_eq!(
            names,
            [
                ("counts", OutputName::Counts),
                ("hook", OutputName::Events),
                ("pg", OutputName::Audiences),
                ("lake", OutputName::Events)
            ]
        );
        match &s.sinks[1] {
            SinkSpec::Webhook(w) => {
                assert_eq!(w.headers["Authorization"], "Bearer x");
                assert_eq!(w.batch_size, 100);
                assert_eq!(w.linger, DurationMs(200));
                assert_eq!(w.timeout, DurationMs(10_000));
                assert_eq!(w.retry_horizon, DurationMs(4 * 3_600_000));
            }
            other => panic!("{other:?}"),
        }
        match &s.sinks[2] {
            SinkSpec::Postgres(p) => {
                assert_eq!(p.schema, "weft");
                assert_eq!(p.url.as_deref(), Some("postgres://u@127.0.0.1:5432/db"));
            }
            other => panic!("{other:?}"),
        }
        match &s.sinks[3] {
            SinkSpec::Lake(l) => {
                assert_eq!(l.root, Path::new("/jobs/lake/events"));
                assert_eq!(l.target_file_mb, 16);
            }
            other => panic!("{other:?}"),
        }
        let again = JobSpec::from_toml(&toml::to_string(&s).unwrap()).unwrap();
        assert_eq!(s, again);
    }

    #[test]
    fn destination_sinks_name_what_is_wrong() {
        let e = err_of(&format!(
            "{MINIMAL}{}",
            DESTINATIONS.replace(
                "headers = { Authorization = \"Bearer x\" }",
                "batchsize = 5"
            )
        ));
        assert!(e.contains("batchsize") && e.contains("batch_size"), "{e}");
        let e = err_of(&format!(
            "{MINIMAL}{}",
            DESTINATIONS
                .replace("output = \"audiences\"", "output = \"errors\"")
                .replace("https://example.com/in", "ftp://example.com")
                .replace("Authorization", "Idempotency-Key")
                .replace("output = \"events\"\nroot", "output = \"counts\"\nroot")
                .replace("target_file_mb = 16", "target_file_mb = 0")
        ));
        for key in [
            "sinks[2].output: the postgres sink has tables for the outputs events, profile_traits, audiences, computed_traits only",
            "sinks[1].url: expected an http:// or https:// URL",
            "sinks[1].headers.Idempotency-Key: this header is set by the sink",
            "sinks[3].output",
            "sinks[3].target_file_mb",
        ] {
            assert!(e.contains(key), "{key} in {e}");
        }
        let e = err_of(&format!(
            "{MINIMAL}{DESTINATIONS}[[sinks]]\ntype = \"lake\"\nname = \"lake2\"\noutput = \"audiences\"\nroot = \"lake/events\"\n"
        ));
        assert!(e.contains("sinks[4].root") && e.contains("\"lake\""), "{e}");
        let e = err_of(&format!(
            "{MINIMAL}{}",
            DESTINATIONS.replace("name = \"hook\"", "name = \"../hook\"")
        ));
        assert!(e.contains("sinks[1].name"), "{e}");
    }

    #[test]
    fn relative_paths_resolve_against_the_spec_directory() {
        let mut s = JobSpec::from_toml(MINIMAL).unwrap();
        s.resolve_paths(Path::new("/jobs"));
        match &s.sources[0] {
            SourceSpec::File { path, .. } => assert_eq!(path, Path::new("/jobs/events.jsonl")),
            other => panic!("{other:?}"),
        }
    }
}
