//! How single settings read: the enumerated ones ([`ClusterState`], [`CompactionMode`]), Go
//! durations and [`CompactionRetention`], and `--initial-cluster`'s `name=URL` list.

use std::time::Duration;

use super::url::Url;
use super::{ConfigError, invalid};

/// `--initial-cluster-state`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ClusterState {
    New,
    Existing,
}

impl ClusterState {
    pub fn as_str(self) -> &'static str {
        match self {
            ClusterState::New => "new",
            ClusterState::Existing => "existing",
        }
    }
}

/// `--auto-compaction-mode`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CompactionMode {
    Periodic,
    Revision,
}

impl CompactionMode {
    pub fn as_str(self) -> &'static str {
        match self {
            CompactionMode::Periodic => "periodic",
            CompactionMode::Revision => "revision",
        }
    }
}

/// `--auto-compaction-retention` read according to `--auto-compaction-mode`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CompactionRetention {
    /// Keep this much history (a bare number in the setting means hours, as in etcd).
    Periodic(Duration),
    /// Keep this many revisions.
    Revision(u64),
}

/// Reads a Go duration (`1h30m`, `90s`, `1.5h`, `500ms`); units ns, us (µs), ms, s, m, h.
fn parse_go_duration(text: &str) -> Option<Duration> {
    if text == "0" {
        return Some(Duration::ZERO);
    }
    let mut rest = text;
    let mut seconds = 0f64;
    if rest.is_empty() {
        return None;
    }
    while !rest.is_empty() {
        let number_len = rest
            .bytes()
            .take_while(|b| b.is_ascii_digit() || *b == b'.')
            .count();
        let number: f64 = rest[..number_len].parse().ok()?;
        rest = &rest[number_len..];
        let unit_len = rest
            .char_indices()
            .find(|(_, c)| c.is_ascii_digit() || *c == '.')
            .map_or(rest.len(), |(pos, _)| pos);
        let scale = match &rest[..unit_len] {
            "ns" => 1e-9,
            "us" | "µs" | "μs" => 1e-6,
            "ms" => 1e-3,
            "s" => 1.0,
            "m" => 60.0,
            "h" => 3600.0,
            _ => return None,
        };
        rest = &rest[unit_len..];
        seconds += number * scale;
    }
    Duration::try_from_secs_f64(seconds).ok()
}

pub(super) fn parse_retention(mode: CompactionMode, value: &str) -> Option<CompactionRetention> {
    match mode {
        CompactionMode::Revision => value.parse().ok().map(CompactionRetention::Revision),
        CompactionMode::Periodic => match value.parse::<u64>() {
            Ok(hours) => hours
                .checked_mul(3600)
                .map(|secs| CompactionRetention::Periodic(Duration::from_secs(secs))),
            Err(_) => parse_go_duration(value).map(CompactionRetention::Periodic),
        },
    }
}

pub(super) fn parse_initial_cluster(value: &str) -> Result<Vec<(String, Vec<Url>)>, ConfigError> {
    const FLAG: &str = "initial-cluster";
    let mut members: Vec<(String, Vec<Url>)> = Vec::new();
    for entry in value.split(',').map(str::trim).filter(|s| !s.is_empty()) {
        let Some((name, url)) = entry.split_once('=') else {
            return Err(invalid(
                FLAG,
                value,
                format!("entry {entry:?} is not of the form name=URL"),
            ));
        };
        let name = name.trim();
        if name.is_empty() {
            return Err(invalid(
                FLAG,
                value,
                format!("entry {entry:?} has no member name"),
            ));
        }
        let url = Url::parse(url).map_err(|e| invalid(FLAG, value, format!("{entry:?}: {e}")))?;
        match members.iter_mut().find(|(n, _)| n == name) {
            Some((_, urls)) => urls.push(url),
            None => members.push((name.to_string(), vec![url])),
        }
    }
    if members.is_empty() {
        return Err(invalid(FLAG, value, "no member given"));
    }
    Ok(members)
}

pub(super) fn render_initial_cluster(members: &[(String, Vec<Url>)]) -> String {
    let mut out = Vec::new();
    for (name, urls) in members {
        for url in urls {
            out.push(format!("{name}={url}"));
        }
    }
    out.join(",")
}
