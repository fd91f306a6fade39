//! Live resource use of a box: one sample of CPU, memory, disk, network and processes.

use serde::{Deserialize, Serialize};

/// The stable names of [`BoxMetrics`]'s fields that may have no value, as
/// [`BoxMetrics::unavailable`] lists them.
pub const METRIC_FIELDS: [&str; 11] = [
    "cpu_percent",
    "cpu_count",
    "memory_used_bytes",
    "memory_limit_bytes",
    "disk_used_bytes",
    "disk_limit_bytes",
    "disk_read_bytes",
    "disk_write_bytes",
    "net_rx_bytes",
    "net_tx_bytes",
    "processes",
];

/// One sample of what a box uses, as [`CodeBox::metrics`](crate::CodeBox::metrics) measures
/// it. A field the box cannot measure is `None` and named in [`unavailable`](Self::unavailable)
/// (a box without a network namespace of its own cannot tell its traffic from the host's,
/// for one). Byte and CPU counters are cumulative over the box's life where the backend
/// can keep them so; a kernel restart may start a process-based count afresh.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct BoxMetrics {
    /// When the sample was taken, in milliseconds since the Unix epoch.
    pub timestamp_ms: u64,
    /// CPU use since the box's previous sample (or over a short window for the first), in
    /// percent of one CPU: a busy loop in one thread is about 100, and the most is
    /// 100 × [`cpu_count`](Self::cpu_count).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cpu_percent: Option<f64>,
    /// How many CPUs the box may use: its CPU quota rounded up, else the machine's.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cpu_count: Option<u32>,
    /// Memory the box's processes use now, in bytes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub memory_used_bytes: Option<u64>,
    /// The most memory the box may use, in bytes: its limit, else the machine's memory.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub memory_limit_bytes: Option<u64>,
    /// Bytes used in the box's working directory.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub disk_used_bytes: Option<u64>,
    /// The size limit of the box's working directory, in bytes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub disk_limit_bytes: Option<u64>,
    /// Bytes the box's processes read from storage.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub disk_read_bytes: Option<u64>,
    /// Bytes the box's processes wrote to storage.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub disk_write_bytes: Option<u64>,
    /// Bytes the box's network interfaces received (loopback included).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub net_rx_bytes: Option<u64>,
    /// Bytes the box's network interfaces sent (loopback included).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub net_tx_bytes: Option<u64>,
    /// Processes (on Linux cgroups: tasks, threads included) the box has now.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub processes: Option<u64>,
    /// The fields above that have no value, by their names in [`METRIC_FIELDS`].
    #[serde(default)]
    pub unavailable: Vec<String>,
    /// The box has stopped: this is its last sample, and no newer one will come.
    #[serde(default)]
    pub final_sample: bool,
}

impl BoxMetrics {
    /// A sample taken at `timestamp_ms` with nothing measured yet.
    pub fn new(timestamp_ms: u64) -> Self {
        Self {
            timestamp_ms,
            cpu_percent: None,
            cpu_count: None,
            memory_used_bytes: None,
            memory_limit_bytes: None,
            disk_used_bytes: None,
            disk_limit_bytes: None,
            disk_read_bytes: None,
            disk_write_bytes: None,
            net_rx_bytes: None,
            net_tx_bytes: None,
            processes: None,
            unavailable: Vec::new(),
            final_sample: false,
        }
    }

    /// The current time in milliseconds since the Unix epoch, as samples stamp it.
    pub fn now_ms() -> u64 {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
            .unwrap_or(0)
    }

    /// Set [`unavailable`](Self::unavailable) to the names of the fields that are `None`, in
    /// the order of [`METRIC_FIELDS`].
    pub fn mark_unavailable(&mut self) {
        let missing = [
            self.cpu_percent.is_none(),
            self.cpu_count.is_none(),
            self.memory_used_bytes.is_none(),
            self.memory_limit_bytes.is_none(),
            self.disk_used_bytes.is_none(),
            self.disk_limit_bytes.is_none(),
            self.disk_read_bytes.is_none(),
            self.disk_write_bytes.is_none(),
            self.net_rx_bytes.is_none(),
            self.net_tx_bytes.is_none(),
            self.processes.is_none(),
        ];
        self.unavailable =
            METRIC_FIELDS.iter().zip(missing).filter(|(_, m)| *m).map(|(name, _)| (*name).to_owned()).collect();
    }

    /// The same sample marked as the box's last.
    pub fn into_final(mut self) -> Self {
        self.final_sample = true;
        self
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn missing_fields_are_named_and_absent_from_json() {
        let mut m = BoxMetrics::new(7);
        m.memory_used_bytes = Some(10);
        m.cpu_percent = Some(12.5);
        m.mark_unavailable();
        assert_eq!(m.unavailable.len(), METRIC_FIELDS.len() - 2);
        assert!(!m.unavailable.iter().any(|n| n == "memory_used_bytes" || n == "cpu_percent"));
        assert!(m.unavailable.iter().all(|n| METRIC_FIELDS.contains(&n.as_str())));
        let json = serde_json::to_value(&m).unwrap();
        assert_eq!(json["memory_used_bytes"], 10);
        assert!(json.get("net_rx_bytes").is_none());
        assert_eq!(json["final_sample"], false);
        let back: BoxMetrics = serde_json::from_value(json).unwrap();
        assert_eq!(back, m);
        assert!(back.into_final().final_sample);
    }
}
