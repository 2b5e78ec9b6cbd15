//! Where settings come from, before they are interpreted: [`SETTINGS`] (the etcd flags we read and
//! their `ETCD_*` names), the command line ([`parse_flags`]), the `etcd.conf` text of
//! `--env-file` ([`parse_env_file`]), and [`Raw`], the three merged.

use std::collections::HashMap;
use std::path::PathBuf;

use super::url::Url;
use super::{ConfigError, invalid};

/// Whether a setting is a bool (a flag alone means true) or takes a value.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Kind {
    Value,
    Bool,
}

/// The etcd settings we read: the flag name (the env key is `ETCD_` + upper case, `-` -> `_`).
const SETTINGS: &[(&str, Kind)] = &[
    ("name", Kind::Value),
    ("data-dir", Kind::Value),
    ("listen-peer-urls", Kind::Value),
    ("listen-client-urls", Kind::Value),
    ("initial-advertise-peer-urls", Kind::Value),
    ("advertise-client-urls", Kind::Value),
    ("initial-cluster", Kind::Value),
    ("initial-cluster-token", Kind::Value),
    ("initial-cluster-state", Kind::Value),
    ("cert-file", Kind::Value),
    ("key-file", Kind::Value),
    ("trusted-ca-file", Kind::Value),
    ("client-cert-auth", Kind::Bool),
    ("peer-cert-file", Kind::Value),
    ("peer-key-file", Kind::Value),
    ("peer-trusted-ca-file", Kind::Value),
    ("peer-client-cert-auth", Kind::Bool),
    ("peer-cert-allowed-cn", Kind::Value),
    ("peer-cert-allowed-hostname", Kind::Value),
    ("heartbeat-interval", Kind::Value),
    ("election-timeout", Kind::Value),
    ("max-request-bytes", Kind::Value),
    ("max-txn-ops", Kind::Value),
    ("snapshot-count", Kind::Value),
    ("snapshot-catchup-entries", Kind::Value),
    ("experimental-snapshot-catchup-entries", Kind::Value),
    ("quota-backend-bytes", Kind::Value),
    ("auto-compaction-mode", Kind::Value),
    ("auto-compaction-retention", Kind::Value),
    ("log-level", Kind::Value),
];

/// Our own flags, with no `ETCD_*` counterpart.
const ENV_FILE: &str = "env-file";
const PRINT_DATA_DIR: &str = "print-data-dir";

fn setting(flag: &str) -> Option<(&'static str, Kind)> {
    SETTINGS.iter().copied().find(|(name, _)| *name == flag)
}

/// The setting an `ETCD_*` key names, if we read it.
pub(super) fn setting_for_env_key(key: &str) -> Option<&'static str> {
    let rest = key.strip_prefix("ETCD_")?;
    if rest.bytes().any(|b| b.is_ascii_lowercase()) {
        return None;
    }
    let flag = rest.to_ascii_lowercase().replace('_', "-");
    setting(&flag).map(|(name, _)| name)
}

/// The command line, parsed but not interpreted.
#[derive(Default)]
pub(super) struct Flags {
    /// Settings in the order given; a later one wins.
    pub(super) settings: Vec<(&'static str, String)>,
    pub(super) env_file: Option<String>,
    pub(super) print_data_dir: bool,
}

fn parse_bool(flag: &'static str, value: &str) -> Result<bool, ConfigError> {
    match value {
        "true" => Ok(true),
        "false" => Ok(false),
        _ => Err(invalid(flag, value, "must be true or false")),
    }
}

pub(super) fn parse_flags(args: &[String]) -> Result<Flags, ConfigError> {
    let mut flags = Flags::default();
    let mut i = 0;
    while i < args.len() {
        let arg = &args[i];
        i += 1;
        if arg == "--" {
            if let Some(extra) = args.get(i) {
                return Err(ConfigError::UnexpectedArgument(extra.clone()));
            }
            break;
        }
        // Like Go's flag package (and so etcd), one dash works as well as two.
        let body = match arg.strip_prefix("--").or_else(|| arg.strip_prefix('-')) {
            Some(body) if !body.is_empty() && !body.starts_with('-') => body,
            _ => return Err(ConfigError::UnexpectedArgument(arg.clone())),
        };
        let (name, inline) = match body.split_once('=') {
            Some((name, value)) => (name, Some(value)),
            None => (body, None),
        };
        let kind = if name == "config-file" {
            return Err(ConfigError::ConfigFileUnsupported(
                "--config-file".to_string(),
            ));
        } else if name == ENV_FILE {
            Kind::Value
        } else if name == PRINT_DATA_DIR {
            Kind::Bool
        } else if let Some((_, kind)) = setting(name) {
            kind
        } else {
            return Err(ConfigError::UnknownFlag(format!("--{name}")));
        };
        let value = match (kind, inline) {
            (_, Some(value)) => value.to_string(),
            (Kind::Bool, None) => match args.get(i).map(String::as_str) {
                // `--client-cert-auth true` as well as `--client-cert-auth` and `=true`.
                Some(next @ ("true" | "false")) => {
                    i += 1;
                    next.to_string()
                }
                _ => "true".to_string(),
            },
            (Kind::Value, None) => match args.get(i) {
                Some(next) if !(next.starts_with('-') && next.len() > 1) => {
                    i += 1;
                    next.clone()
                }
                _ => return Err(ConfigError::MissingValue(name.to_string())),
            },
        };
        if name == ENV_FILE {
            flags.env_file = Some(value);
        } else if name == PRINT_DATA_DIR {
            flags.print_data_dir = parse_bool(PRINT_DATA_DIR, &value)?;
        } else if let Some((name, kind)) = setting(name) {
            if kind == Kind::Bool {
                parse_bool(name, &value)?;
            }
            flags.settings.push((name, value));
        }
    }
    Ok(flags)
}

/// The text of the file that `--env-file` in `args` names, if it names one: what
/// [`Config::load`](super::Config::load) needs and does not read itself.
pub(super) fn read_env_file_named(args: &[String]) -> Result<Option<String>, ConfigError> {
    let Some(path) = parse_flags(args)?.env_file else {
        return Ok(None);
    };
    std::fs::read_to_string(&path)
        .map(Some)
        .map_err(|e| ConfigError::ReadEnvFile {
            path,
            reason: e.to_string(),
        })
}

/// One `KEY=value` line of an env file.
pub(super) struct FileEntry {
    pub(super) key: String,
    pub(super) value: String,
    pub(super) line: usize,
}

/// Parses the `etcd.conf` format: `KEY="value"`, `KEY='value'` or `KEY=value` lines, blank lines,
/// and `#` comments (whole lines, `#[Member]` markers included, or after a value).
pub(super) fn parse_env_file(file: &str, text: &str) -> Result<Vec<FileEntry>, ConfigError> {
    let text = text.strip_prefix('\u{feff}').unwrap_or(text);
    let mut entries = Vec::new();
    for (index, raw) in text.lines().enumerate() {
        let line = raw.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        match parse_assignment(line) {
            Some((key, value)) => entries.push(FileEntry {
                key: key.to_string(),
                value,
                line: index + 1,
            }),
            None => {
                return Err(ConfigError::MalformedLine {
                    file: file.to_string(),
                    line: index + 1,
                    text: line.to_string(),
                });
            }
        }
    }
    Ok(entries)
}

fn parse_assignment(line: &str) -> Option<(&str, String)> {
    let key_len = line
        .bytes()
        .take_while(|b| b.is_ascii_alphanumeric() || *b == b'_')
        .count();
    let key = &line[..key_len];
    if key.is_empty() || key.starts_with(|c: char| c.is_ascii_digit()) {
        return None;
    }
    let rest = line[key_len..].trim_start().strip_prefix('=')?.trim_start();
    let (value, tail) = if let Some(quoted) = rest.strip_prefix('"') {
        // Double quotes: `\"` and `\\` are escapes; any other backslash stays as it is.
        let mut value = String::new();
        let mut chars = quoted.char_indices();
        let mut end = None;
        while let Some((pos, c)) = chars.next() {
            match c {
                '"' => {
                    end = Some(pos + 1);
                    break;
                }
                '\\' => match chars.next() {
                    Some((_, e @ ('"' | '\\'))) => value.push(e),
                    Some((_, other)) => {
                        value.push('\\');
                        value.push(other);
                    }
                    None => return None,
                },
                c => value.push(c),
            }
        }
        (value, &quoted[end?..])
    } else if let Some(quoted) = rest.strip_prefix('\'') {
        let (value, tail) = quoted.split_once('\'')?;
        (value.to_string(), tail)
    } else {
        let end = rest.find(char::is_whitespace).unwrap_or(rest.len());
        let (value, tail) = rest.split_at(end);
        if value.contains(['"', '\'']) {
            return None;
        }
        (value.to_string(), tail)
    };
    let tail = tail.trim();
    if tail.is_empty() || tail.starts_with('#') {
        Some((key, value))
    } else {
        None
    }
}

/// The merged raw settings (file < env < flags).
pub(super) struct Raw {
    pub(super) values: HashMap<&'static str, String>,
}

impl Raw {
    pub(super) fn get(&self, flag: &str) -> Option<&str> {
        self.values.get(flag).map(String::as_str)
    }

    pub(super) fn u64_or(&self, flag: &'static str, default: u64) -> Result<u64, ConfigError> {
        match self.get(flag) {
            None => Ok(default),
            Some(v) => v
                .trim()
                .parse()
                .map_err(|_| invalid(flag, v, "must be a non-negative integer")),
        }
    }

    pub(super) fn bool_or(&self, flag: &'static str, default: bool) -> Result<bool, ConfigError> {
        match self.get(flag) {
            None => Ok(default),
            Some(v) => parse_bool(flag, v.trim()),
        }
    }

    pub(super) fn path(&self, flag: &'static str) -> Option<PathBuf> {
        self.get(flag)
            .map(str::trim)
            .filter(|v| !v.is_empty())
            .map(PathBuf::from)
    }

    /// A comma-separated list, as etcd 3.5 reads `--peer-cert-allowed-cn` (3.4 took one value):
    /// items trimmed, empty ones dropped; empty when not set.
    pub(super) fn list(&self, flag: &'static str) -> Vec<String> {
        self.get(flag)
            .unwrap_or_default()
            .split(',')
            .map(str::trim)
            .filter(|s| !s.is_empty())
            .map(str::to_string)
            .collect()
    }

    pub(super) fn urls_or(
        &self,
        flag: &'static str,
        default: &str,
    ) -> Result<Vec<Url>, ConfigError> {
        let value = self.get(flag).unwrap_or(default);
        let items: Vec<&str> = value
            .split(',')
            .map(str::trim)
            .filter(|s| !s.is_empty())
            .collect();
        if items.is_empty() {
            return Err(invalid(flag, value, "no URL given"));
        }
        let several = items.len() > 1;
        items
            .into_iter()
            .map(|item| {
                Url::parse(item).map_err(|e| {
                    let reason = if several {
                        format!("{item:?}: {e}")
                    } else {
                        e.to_string()
                    };
                    invalid(flag, value, reason)
                })
            })
            .collect()
    }
}
