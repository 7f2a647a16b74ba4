//! Printing: tables on a terminal (comfy-table), JSON for scripts, and the
//! human forms of sizes and times Docker users know.

use std::io::IsTerminal;

use chrono::{DateTime, Utc};
use comfy_table::{presets, Table};

/// `--format` values.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, clap::ValueEnum)]
pub(crate) enum Format {
    /// A table.
    #[default]
    Table,
    /// One JSON document.
    Json,
}

/// Prints rows under a header, borderless like Docker's.
pub(crate) fn table(header: &[&str], rows: Vec<Vec<String>>) {
    let mut t = Table::new();
    t.load_preset(presets::NOTHING);
    t.set_header(header.iter().map(|h| h.to_string()));
    if !std::io::stdout().is_terminal() {
        t.force_no_tty();
    }
    for r in rows {
        t.add_row(r.iter().map(|c| printable(c)));
    }
    for line in t.to_string().lines() {
        println!("{}", line.trim_end());
    }
}

/// A cell as a terminal may be shown it: control characters (escape
/// sequences, newlines, carriage returns) written as escapes, so that no
/// name or message can move the cursor, recolour or forge lines.
pub(crate) fn printable(s: &str) -> std::borrow::Cow<'_, str> {
    if !s.chars().any(char::is_control) {
        return s.into();
    }
    s.chars()
        .map(|c| {
            if c.is_control() {
                c.escape_default().to_string()
            } else {
                c.to_string()
            }
        })
        .collect::<String>()
        .into()
}

/// Prints a value as pretty JSON.
pub(crate) fn json<T: serde::Serialize>(v: &T) -> anyhow::Result<()> {
    println!("{}", serde_json::to_string_pretty(v)?);
    Ok(())
}

/// `5.2MB`, as Docker prints sizes (decimal units).
pub(crate) fn size(b: u64) -> String {
    let b = b as f64;
    for (unit, div) in [("GB", 1e9), ("MB", 1e6), ("kB", 1e3)] {
        if b >= div {
            return format!("{:.3}{unit}", b / div).replace(".000", "");
        }
    }
    format!("{b}B")
}

/// `3 minutes`, `About an hour`, as Docker's `HumanDuration`.
pub(crate) fn ago(t: DateTime<Utc>) -> String {
    let s = (Utc::now() - t).num_seconds().max(0);
    match s {
        0 => "Less than a second".into(),
        1..=59 => format!("{s} seconds"),
        60..=119 => "About a minute".into(),
        120..=3599 => format!("{} minutes", s / 60),
        3600..=7199 => "About an hour".into(),
        7200..=172_799 => format!("{} hours", s / 3600),
        _ => format!("{} days", s / 86_400),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_read_like_docker() {
        assert_eq!(size(512), "512B");
        assert_eq!(size(1_500), "1.500kB");
        assert_eq!(size(5_000_000), "5MB");
    }

    #[test]
    fn cells_carry_no_control_characters() {
        assert_eq!(printable("web"), "web");
        let shown = printable("a\u{1b}[2Jb\nc\rd\u{7}");
        assert!(!shown.chars().any(char::is_control), "{shown}");
        assert_eq!(shown, "a\\u{1b}[2Jb\\nc\\rd\\u{7}");
    }
}
