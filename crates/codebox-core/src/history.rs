//! What a box remembers of the executions it ran: one record each, and statistics over them.

use std::collections::{BTreeMap, VecDeque};
use std::time::{Duration, SystemTime};

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::event::Outcome;

/// How many characters of an execution's code its record keeps.
pub const CODE_HEAD_CHARS: usize = 200;

/// One execution a box ran, as its history keeps it (never the output itself).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct ExecutionRecord {
    /// The kernel's execution counter, when it has one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub count: Option<u64>,
    /// The code context it ran in; `None` for the box's own kernel (or a shell command).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub context: Option<String>,
    /// When it started, as Unix seconds on the wire.
    #[serde(with = "unix_seconds")]
    pub started_at: SystemTime,
    /// Wall time from start to end, as milliseconds on the wire.
    #[serde(rename = "duration_ms", with = "millis")]
    pub duration: Duration,
    /// How it finished.
    pub outcome: Outcome,
    /// The exception's type name, when it raised one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error_name: Option<String>,
    /// The bytes of output it produced (streams, results, displays and errors).
    pub output_bytes: u64,
    /// The code's first [`CODE_HEAD_CHARS`] characters.
    pub code_head: String,
    /// The hex SHA-256 of the whole code, so that equal code is recognised however long it is.
    pub code_hash: String,
}

impl ExecutionRecord {
    /// The record of `code`, started at `started_at`, that ran for `duration` and ended with
    /// `outcome`. Its head and hash are taken from `code`.
    pub fn new(code: &str, started_at: SystemTime, duration: Duration, outcome: Outcome) -> Self {
        Self {
            count: None,
            context: None,
            started_at,
            duration,
            outcome,
            error_name: None,
            output_bytes: 0,
            code_head: code.chars().take(CODE_HEAD_CHARS).collect(),
            code_hash: code_hash(code),
        }
    }

    /// Set the execution counter.
    pub fn with_count(mut self, count: Option<u64>) -> Self {
        self.count = count;
        self
    }

    /// Set the code context.
    pub fn with_context(mut self, context: Option<String>) -> Self {
        self.context = context;
        self
    }

    /// Set the exception's name.
    pub fn with_error_name(mut self, error_name: Option<String>) -> Self {
        self.error_name = error_name;
        self
    }

    /// Set the output size.
    pub fn with_output_bytes(mut self, output_bytes: u64) -> Self {
        self.output_bytes = output_bytes;
        self
    }
}

/// The hex SHA-256 of `code`.
pub fn code_hash(code: &str) -> String {
    Sha256::digest(code.as_bytes()).iter().map(|b| format!("{b:02x}")).collect()
}

/// Statistics over the executions a box's history holds.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[non_exhaustive]
pub struct ExecutionStats {
    /// How many executions the history holds.
    pub total: u64,
    /// How many ended each way, by outcome (`ok`, `error`, ...); outcomes none ended with are absent.
    pub by_outcome: BTreeMap<Outcome, u64>,
    /// The mean duration, as milliseconds on the wire; zero without executions.
    #[serde(rename = "mean_ms", with = "millis")]
    pub mean: Duration,
    /// The median duration (nearest rank).
    #[serde(rename = "p50_ms", with = "millis")]
    pub p50: Duration,
    /// The 95th percentile duration (nearest rank).
    #[serde(rename = "p95_ms", with = "millis")]
    pub p95: Duration,
}

impl ExecutionStats {
    /// The statistics of `records`.
    pub fn of<'a>(records: impl IntoIterator<Item = &'a ExecutionRecord>) -> Self {
        let mut by_outcome = BTreeMap::new();
        let mut durations = Vec::new();
        for record in records {
            *by_outcome.entry(record.outcome).or_insert(0) += 1;
            durations.push(record.duration);
        }
        durations.sort_unstable();
        let total = durations.len() as u64;
        let mean = match u32::try_from(durations.len()) {
            Ok(0) => Duration::ZERO,
            Ok(n) => durations.iter().sum::<Duration>() / n,
            // More records than any ring keeps: the mean of the sum in f64 is close enough.
            Err(_) => Duration::from_secs_f64(durations.iter().map(Duration::as_secs_f64).sum::<f64>() / total as f64),
        };
        Self { total, by_outcome, mean, p50: nearest_rank(&durations, 50), p95: nearest_rank(&durations, 95) }
    }
}

/// The `percent`th percentile of sorted `durations` by nearest rank; zero when empty.
fn nearest_rank(durations: &[Duration], percent: usize) -> Duration {
    if durations.is_empty() {
        return Duration::ZERO;
    }
    let rank = (percent * durations.len()).div_ceil(100).max(1);
    durations[rank - 1]
}

/// A bounded history: the newest `capacity` records, the oldest dropped first. Pushing is
/// constant time and does no I/O, so a backend can record on its execution path.
#[derive(Debug, Clone)]
pub struct HistoryRing {
    records: VecDeque<ExecutionRecord>,
    capacity: usize,
}

impl HistoryRing {
    /// An empty ring keeping at most `capacity` records (at least one).
    pub fn new(capacity: usize) -> Self {
        let capacity = capacity.max(1);
        Self { records: VecDeque::with_capacity(capacity.min(1024)), capacity }
    }

    /// Add the newest record, dropping the oldest when full.
    pub fn push(&mut self, record: ExecutionRecord) {
        if self.records.len() == self.capacity {
            self.records.pop_front();
        }
        self.records.push_back(record);
    }

    /// The newest `limit` records, newest first.
    pub fn newest(&self, limit: usize) -> Vec<ExecutionRecord> {
        self.records.iter().rev().take(limit).cloned().collect()
    }

    /// Statistics over every record held.
    pub fn stats(&self) -> ExecutionStats {
        ExecutionStats::of(&self.records)
    }

    /// How many records it holds.
    pub fn len(&self) -> usize {
        self.records.len()
    }

    /// Whether it holds none.
    pub fn is_empty(&self) -> bool {
        self.records.is_empty()
    }
}

mod unix_seconds {
    //! A time as fractional Unix seconds.
    use std::time::{Duration, SystemTime, UNIX_EPOCH};

    use serde::{Deserialize, Deserializer, Serializer};

    pub(super) fn serialize<S: Serializer>(t: &SystemTime, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_f64(t.duration_since(UNIX_EPOCH).map_or(0.0, |d| d.as_secs_f64()))
    }

    pub(super) fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<SystemTime, D::Error> {
        let secs = f64::deserialize(d)?;
        Duration::try_from_secs_f64(secs)
            .ok()
            .and_then(|d| UNIX_EPOCH.checked_add(d))
            .ok_or_else(|| serde::de::Error::custom(format!("not a time in Unix seconds: {secs}")))
    }
}

mod millis {
    //! A duration as fractional milliseconds.
    use std::time::Duration;

    use serde::{Deserialize, Deserializer, Serializer};

    pub(super) fn serialize<S: Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_f64(d.as_secs_f64() * 1e3)
    }

    pub(super) fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
        let ms = f64::deserialize(d)?;
        Duration::try_from_secs_f64(ms / 1e3)
            .map_err(|_| serde::de::Error::custom(format!("not a duration in milliseconds: {ms}")))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(ms: u64, outcome: Outcome) -> ExecutionRecord {
        ExecutionRecord::new("x = 1", SystemTime::UNIX_EPOCH, Duration::from_millis(ms), outcome)
    }

    #[test]
    fn head_is_the_first_200_characters_and_hash_is_of_the_whole_code() {
        let code = "é".repeat(300);
        let r = ExecutionRecord::new(&code, SystemTime::now(), Duration::ZERO, Outcome::Ok);
        assert_eq!(r.code_head.chars().count(), CODE_HEAD_CHARS);
        assert_eq!(r.code_hash.len(), 64);
        assert_ne!(r.code_hash, code_hash(&"é".repeat(200)));
        assert_eq!(code_hash(""), "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855");
    }

    #[test]
    fn ring_keeps_the_newest_and_answers_newest_first() {
        let mut ring = HistoryRing::new(3);
        for ms in 1..=5 {
            ring.push(record(ms, Outcome::Ok));
        }
        assert_eq!(ring.len(), 3);
        let ms: Vec<_> = ring.newest(10).iter().map(|r| r.duration.as_millis()).collect();
        assert_eq!(ms, [5, 4, 3]);
        assert_eq!(ring.newest(1).len(), 1);
        assert!(ring.newest(0).is_empty());
    }

    #[test]
    fn stats_count_outcomes_and_take_percentiles_by_nearest_rank() {
        let mut records: Vec<_> = (1..=100).map(|ms| record(ms, Outcome::Ok)).collect();
        records[0].outcome = Outcome::Error;
        let stats = ExecutionStats::of(&records);
        assert_eq!(stats.total, 100);
        assert_eq!(stats.by_outcome[&Outcome::Ok], 99);
        assert_eq!(stats.by_outcome[&Outcome::Error], 1);
        assert_eq!(stats.p50, Duration::from_millis(50));
        assert_eq!(stats.p95, Duration::from_millis(95));
        assert_eq!(stats.mean, Duration::from_micros(50_500));
        assert_eq!(ExecutionStats::of(&[]), ExecutionStats::default());
    }

    #[test]
    fn records_and_stats_round_trip_through_json() {
        let r = record(12, Outcome::Error).with_count(Some(3)).with_error_name(Some("ValueError".into()));
        let json = serde_json::to_value(&r).unwrap();
        assert_eq!(json["duration_ms"], 12.0);
        assert_eq!(json["outcome"], "error");
        assert_eq!(serde_json::from_value::<ExecutionRecord>(json).unwrap(), r);
        let stats = ExecutionStats::of([&r]);
        let json = serde_json::to_value(&stats).unwrap();
        assert_eq!(json["by_outcome"]["error"], 1);
        assert_eq!(serde_json::from_value::<ExecutionStats>(json).unwrap(), stats);
        assert!(serde_json::from_str::<ExecutionRecord>(r#"{"started_at":-1}"#).is_err());
    }
}
