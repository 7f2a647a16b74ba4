//! Cron schedules (a volume's backups): five fields (minute hour day
//! month weekday) as crontab has them, or six with seconds first, in UTC.

use std::str::FromStr;

/// A checked schedule.
#[derive(Debug, Clone)]
pub struct Schedule(croner::Cron);

impl FromStr for Schedule {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        let fields = s.split_whitespace().count();
        if !(5..=6).contains(&fields) {
            return Err(format!(
                "schedule {s:?}: five fields (minute hour day month weekday) or six (seconds first)"
            ));
        }
        croner::parser::CronParser::builder()
            .year(croner::parser::Year::Disallowed)
            .build()
            .parse(s)
            .map(Schedule)
            .map_err(|e| format!("schedule {s:?}: {e}"))
    }
}

impl Schedule {
    /// The first time after `after_ms` (milliseconds since the epoch) it
    /// names, in the same unit; none when it names none.
    pub fn next_after(&self, after_ms: u64) -> Option<u64> {
        // In whole seconds: a schedule names whole seconds.
        let t = chrono::DateTime::from_timestamp(i64::try_from(after_ms / 1000).ok()?, 0)?;
        let next = self.0.find_next_occurrence(&t, false).ok()?;
        u64::try_from(next.timestamp_millis()).ok()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const DAY: u64 = 86_400_000;

    #[test]
    fn five_and_six_fields() {
        // 2026-12-04T00:00:00Z.
        let midnight = 1_796_342_400_000;
        let nightly: Schedule = "0 3 * * *".parse().unwrap();
        assert_eq!(nightly.next_after(midnight), Some(midnight + 3 * 3_600_000));
        assert_eq!(
            nightly.next_after(midnight + 3 * 3_600_000),
            Some(midnight + DAY + 3 * 3_600_000)
        );
        let often: Schedule = "*/5 * * * * *".parse().unwrap();
        assert_eq!(often.next_after(midnight + 1), Some(midnight + 5_000));
        assert_eq!(often.next_after(midnight + 5_000), Some(midnight + 10_000));
    }

    #[test]
    fn bad_schedules_say_why() {
        for bad in [
            "",
            "* * * *",
            "0 3 * * * * 2027",
            "61 * * * *",
            "0 3 * * funday",
            "nightly",
        ] {
            let e = bad.parse::<Schedule>().unwrap_err();
            assert!(e.starts_with("schedule "), "{bad}: {e}");
        }
    }
}
