//! When scheduled backups run: the policy's cron expression in the host's local time,
//! shifted by a per-host jitter that is deterministic (the same host gets the same
//! offset on the coordinator and on its agent, so both agree on a slot even when the
//! agent computes it alone while the coordinator is unreachable).

use chrono::{DateTime, FixedOffset, TimeZone};
use sha2::{Digest, Sha256};

#[derive(Debug, thiserror::Error)]
#[error("schedule {expression:?}: {reason}")]
pub struct ScheduleError {
    pub expression: String,
    pub reason: String,
}

/// The host's jitter in seconds, in `0..jitter_secs`: a hash of the host id and the
/// policy name, so that a fleet on one schedule spreads over the jitter window.
pub fn jitter_offset(host_id: &str, policy: &str, jitter_secs: u64) -> u64 {
    if jitter_secs == 0 {
        return 0;
    }
    let digest = Sha256::new()
        .chain_update(host_id.as_bytes())
        .chain_update([0u8])
        .chain_update(policy.as_bytes())
        .finalize();
    let n = u64::from_be_bytes(digest[..8].try_into().expect("8 bytes"));
    n % jitter_secs
}

/// A parsed schedule for one host.
#[derive(Debug, Clone)]
pub struct HostSchedule {
    cron: croner::Cron,
    expression: String,
    jitter: i64,
    offset: FixedOffset,
}

impl HostSchedule {
    /// `expression` is a 5-field cron expression evaluated in the host's local time,
    /// given as its UTC offset in seconds.
    pub fn new(
        expression: &str,
        host_id: &str,
        policy: &str,
        jitter_secs: u64,
        utc_offset_secs: i32,
    ) -> Result<HostSchedule, ScheduleError> {
        let cron = croner::parser::CronParser::new()
            .parse(expression)
            .map_err(|e| ScheduleError {
                expression: expression.to_string(),
                reason: e.to_string(),
            })?;
        let offset = FixedOffset::east_opt(utc_offset_secs).ok_or_else(|| ScheduleError {
            expression: expression.to_string(),
            reason: format!("UTC offset {utc_offset_secs}s out of range"),
        })?;
        Ok(HostSchedule {
            cron,
            expression: expression.to_string(),
            jitter: jitter_offset(host_id, policy, jitter_secs) as i64,
            offset,
        })
    }

    pub fn expression(&self) -> &str {
        &self.expression
    }

    /// The first slot strictly after `after` (unix seconds): the cron time plus the
    /// host's jitter. `None` when the expression never matches again.
    pub fn next_after(&self, after: i64) -> Option<i64> {
        // A slot is cron time + jitter, so look for cron times after `after - jitter`.
        let from = self.offset.timestamp_opt(after - self.jitter, 0).single()?;
        let next: DateTime<FixedOffset> = self.cron.find_next_occurrence(&from, false).ok()?;
        Some(next.timestamp() + self.jitter)
    }

    /// The latest slot at or before `at`, if any within the last year.
    pub fn last_at_or_before(&self, at: i64) -> Option<i64> {
        let from = self.offset.timestamp_opt(at - self.jitter, 0).single()?;
        let prev: DateTime<FixedOffset> = self.cron.find_previous_occurrence(&from, true).ok()?;
        let slot = prev.timestamp() + self.jitter;
        (at - slot < 366 * 86400).then_some(slot)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn jitter_is_deterministic_bounded_and_spread() {
        assert_eq!(jitter_offset("web-01", "web", 0), 0);
        let a = jitter_offset("web-01", "web", 1800);
        assert_eq!(a, jitter_offset("web-01", "web", 1800));
        assert!(a < 1800);
        let distinct: std::collections::BTreeSet<u64> = (0..100)
            .map(|i| jitter_offset(&format!("host-{i}"), "web", 1800))
            .collect();
        assert!(distinct.len() > 90, "{}", distinct.len());
    }

    #[test]
    fn slots_follow_cron_in_host_local_time_plus_jitter() {
        // 00:05 daily at UTC+2, no jitter: 2026-11-22T22:05:00Z.
        let s = HostSchedule::new("5 0 * * *", "h", "p", 0, 7200).unwrap();
        let t = 1_763_848_800; // 2025-11-22T22:00:00Z
        let next = s.next_after(t).unwrap();
        assert_eq!(next, t + 300);
        assert_eq!(s.next_after(next).unwrap(), next + 86400);
        assert_eq!(s.last_at_or_before(next + 10).unwrap(), next);
        // With jitter the slot moves by the host's offset, and stays consistent.
        let j = HostSchedule::new("5 0 * * *", "h", "p", 3600, 7200).unwrap();
        let off = jitter_offset("h", "p", 3600) as i64;
        assert_eq!(j.next_after(t).unwrap(), t + 300 + off);
        assert_eq!(j.next_after(t + 300 + off).unwrap(), t + 300 + off + 86400);
        assert_eq!(j.last_at_or_before(t + 300 + off).unwrap(), t + 300 + off);
    }

    #[test]
    fn bad_expressions_are_named() {
        let e = HostSchedule::new("61 * * * *", "h", "p", 0, 0).unwrap_err();
        assert!(e.to_string().contains("61 * * * *"), "{e}");
    }
}
