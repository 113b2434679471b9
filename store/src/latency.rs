//! Storage latency profiles: the first-byte latency and per-request bandwidth of a cloud object
//! store, applied to every request of a local one so that benchmarks on one machine behave like
//! the service. Sources for the numbers are in `docs/benchmarks.md`.

use std::time::Duration;

/// Delay added to each storage request.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Latency {
    /// Time to first byte of every request.
    pub first_byte: Duration,
    /// Bytes per second one request moves (0: unlimited).
    pub bytes_per_sec: f64,
}

/// Per-request throughput measured for S3 by the AnyBlob paper (VLDB 2023): median about
/// 55-60 MiB/s, 25-95 MiB/s overall.
const S3_PER_REQUEST: f64 = 55.0 * 1024.0 * 1024.0;

impl Latency {
    /// No delay: the store as it is.
    pub const NONE: Latency = Latency { first_byte: Duration::ZERO, bytes_per_sec: 0.0 };

    /// S3 Standard: AWS documents 100-200 ms to first byte; 150 ms is used.
    pub const S3_STANDARD: Latency = Latency { first_byte: Duration::from_millis(150), bytes_per_sec: S3_PER_REQUEST };

    /// S3 Express One Zone: AWS documents single-digit milliseconds; 5 ms is used.
    pub const S3_EXPRESS: Latency = Latency { first_byte: Duration::from_millis(5), bytes_per_sec: S3_PER_REQUEST };

    /// The profile called `name` (`none`, `s3-standard`, `s3-express`).
    pub fn profile(name: &str) -> Option<Latency> {
        match name {
            "none" => Some(Latency::NONE),
            "s3-standard" => Some(Latency::S3_STANDARD),
            "s3-express" => Some(Latency::S3_EXPRESS),
            _ => None,
        }
    }

    /// How long a request moving `bytes` takes beyond the store's own time.
    pub fn delay(&self, bytes: u64) -> Duration {
        let transfer = if self.bytes_per_sec > 0.0 { bytes as f64 / self.bytes_per_sec } else { 0.0 };
        self.first_byte + Duration::from_secs_f64(transfer)
    }

    pub(crate) async fn wait(&self, bytes: u64) {
        let delay = self.delay(bytes);
        if !delay.is_zero() {
            tokio::time::sleep(delay).await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn profiles_add_first_byte_latency_and_transfer_time() {
        assert_eq!(Latency::profile("none").map(|l| l.delay(1 << 30)), Some(Duration::ZERO));
        let standard = Latency::profile("s3-standard").expect("profile");
        assert_eq!(standard.delay(0), Duration::from_millis(150));
        let mib55 = standard.delay(55 << 20) - Duration::from_millis(150);
        assert!((mib55.as_secs_f64() - 1.0).abs() < 1e-6, "{mib55:?}");
        assert_eq!(Latency::profile("s3-glacier"), None);
    }
}
