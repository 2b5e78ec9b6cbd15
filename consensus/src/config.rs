//! The member's configuration, read once by consensus.
//!
//! Three sources, each overriding the one before it (etcd's names and defaults throughout):
//!
//! 1. an environment file given with `--env-file <path>`, in the `etcd.conf` format of the seed
//!    (`ETCD_NAME="etcd01"` lines, `#` comments, blank lines);
//! 2. `ETCD_*` environment variables (the same names as the file's keys);
//! 3. etcd-style command-line flags (`--name etcd01`, `--name=etcd01`).
//!
//! As in etcd, an empty value in the file or the environment counts as not set. etcd's YAML
//! `--config-file` is not supported.
//!
//! [`Config::load`] is pure (it takes the arguments and the environment as parameters);
//! [`Config::from_process`] feeds it the real ones.

use std::collections::{HashMap, HashSet};
use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::path::PathBuf;
use std::str::FromStr;
use std::time::Duration;

/// etcd's upper bound on `--election-timeout`, in milliseconds.
const MAX_ELECTION_TIMEOUT_MS: u64 = 50_000;

/// The log levels etcd accepts for `--log-level`.
const LOG_LEVELS: &[&str] = &["debug", "info", "warn", "error", "dpanic", "panic", "fatal"];

/// What `--config-file` and `ETCD_CONFIG_FILE` get instead of a YAML parser.
const CONFIG_FILE_HINT: &str =
    "(YAML) is not supported; use --env-file with etcd.conf KEY=\"value\" lines";

// ---------------------------------------------------------------------------------------------
// Errors
// ---------------------------------------------------------------------------------------------

/// A configuration error. Every variant displays as one line naming the field and its value.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ConfigError {
    /// A value that does not parse or is out of range.
    #[error("invalid value {value:?} for --{flag} ({env}): {reason}")]
    InvalidValue {
        flag: &'static str,
        env: String,
        value: String,
        reason: String,
    },
    /// A line of the env file that is neither blank, a comment nor `KEY=value`.
    #[error("{file}:{line}: expected KEY=\"value\", got {text:?}")]
    MalformedLine {
        file: String,
        line: usize,
        text: String,
    },
    /// The env file could not be read.
    #[error("cannot read --env-file {path:?}: {reason}")]
    ReadEnvFile { path: String, reason: String },
    /// A flag that is neither etcd's (among those supported) nor ours.
    #[error("unknown flag {0}")]
    UnknownFlag(String),
    /// A flag that takes a value was given none.
    #[error("flag --{0} needs a value")]
    MissingValue(String),
    /// A command-line argument that is not a flag.
    #[error("unexpected argument {0:?} (every option is a --flag)")]
    UnexpectedArgument(String),
    /// `--config-file` or `ETCD_CONFIG_FILE`: etcd's YAML configuration file.
    #[error("{0} {CONFIG_FILE_HINT}")]
    ConfigFileUnsupported(String),
    /// A command-line argument or `ETCD_*` variable of the process that is not UTF-8.
    #[error("{what} is not valid UTF-8: {value:?}")]
    NotUtf8 { what: String, value: String },
    /// A rule between several fields is broken (the message names them and their values).
    #[error("{0}")]
    Inconsistent(String),
}

fn env_name(flag: &str) -> String {
    format!("ETCD_{}", flag.to_ascii_uppercase().replace('-', "_"))
}

fn invalid(flag: &'static str, value: &str, reason: impl Into<String>) -> ConfigError {
    ConfigError::InvalidValue {
        flag,
        env: env_name(flag),
        value: value.to_string(),
        reason: reason.into(),
    }
}

// ---------------------------------------------------------------------------------------------
// URLs
// ---------------------------------------------------------------------------------------------

/// The scheme of a member URL.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Scheme {
    Http,
    Https,
}

impl Scheme {
    pub fn as_str(self) -> &'static str {
        match self {
            Scheme::Http => "http",
            Scheme::Https => "https",
        }
    }
}

/// The host of a member URL.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Host {
    Ipv4(Ipv4Addr),
    /// Written `[...]` in the URL.
    Ipv6(Ipv6Addr),
    /// A DNS name, `localhost` included, as written.
    Name(String),
}

impl Host {
    pub fn ip(&self) -> Option<IpAddr> {
        match self {
            Host::Ipv4(ip) => Some(IpAddr::V4(*ip)),
            Host::Ipv6(ip) => Some(IpAddr::V6(*ip)),
            Host::Name(_) => None,
        }
    }
}

/// Why a URL does not parse.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct UrlError(String);

/// A member URL: `http` or `https`, a host (IPv4, `[IPv6]` or a DNS name) and a port, nothing else.
///
/// `Display` gives back the text it was parsed from (trimmed, with the scheme in lowercase), which
/// is what member IDs hash. Ordering and equality are those of the text.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Url {
    text: String,
    scheme: Scheme,
    host: Host,
    /// The host as written, brackets included for IPv6.
    host_text: String,
    port: u16,
}

impl Url {
    pub fn parse(input: &str) -> Result<Url, UrlError> {
        let input = input.trim();
        let err = |reason: &str| Err(UrlError(reason.to_string()));
        let Some((scheme_text, rest)) = input.split_once("://") else {
            return err("URL scheme must be http or https");
        };
        let scheme = match scheme_text.to_ascii_lowercase().as_str() {
            "http" => Scheme::Http,
            "https" => Scheme::Https,
            _ => return err("URL scheme must be http or https"),
        };
        if rest.contains('/') {
            return err("URL must not contain a path");
        }
        if rest.contains('?') || rest.contains('#') {
            return err("URL must not contain a query or a fragment");
        }
        if rest.contains('@') {
            return err("URL must not contain a user name or password");
        }
        let (host_text, port_text) = if rest.starts_with('[') {
            let Some(end) = rest.find(']') else {
                return err("URL has an IPv6 address without its closing ']'");
            };
            let (host, after) = rest.split_at(end + 1);
            let Some(port) = after.strip_prefix(':') else {
                return err("URL must have the form scheme://host:port");
            };
            (host, port)
        } else {
            let Some((host, port)) = rest.rsplit_once(':') else {
                return err("URL must have the form scheme://host:port");
            };
            if host.contains(':') {
                return err("URL has an IPv6 address that is not in brackets");
            }
            (host, port)
        };
        if port_text.is_empty() || !port_text.bytes().all(|b| b.is_ascii_digit()) {
            return err("URL port must be a number from 1 to 65535");
        }
        let port = match port_text.parse::<u16>() {
            Ok(p) if p > 0 => p,
            _ => return err("URL port must be a number from 1 to 65535"),
        };
        let host = if let Some(inner) = host_text
            .strip_prefix('[')
            .and_then(|h| h.strip_suffix(']'))
        {
            match inner.parse::<Ipv6Addr>() {
                Ok(ip) => Host::Ipv6(ip),
                Err(_) => return err("URL has an invalid IPv6 address"),
            }
        } else if host_text.is_empty() {
            return err("URL has no host");
        } else if host_text.bytes().all(|b| b.is_ascii_digit() || b == b'.') {
            match host_text.parse::<Ipv4Addr>() {
                Ok(ip) => Host::Ipv4(ip),
                Err(_) => return err("URL has an invalid IPv4 address"),
            }
        } else if is_dns_name(host_text) {
            Host::Name(host_text.to_string())
        } else {
            return err("URL has an invalid host name");
        };
        Ok(Url {
            text: format!("{}://{}", scheme.as_str(), rest),
            scheme,
            host,
            host_text: host_text.to_string(),
            port,
        })
    }

    /// The URL's text, as given.
    pub fn as_str(&self) -> &str {
        &self.text
    }

    pub fn scheme(&self) -> Scheme {
        self.scheme
    }

    pub fn is_https(&self) -> bool {
        self.scheme == Scheme::Https
    }

    pub fn host(&self) -> &Host {
        &self.host
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// `host:port`, IPv6 in brackets, for `bind`/`connect`/`ToSocketAddrs` (names still need
    /// resolving): `10.0.52.13:2380`, `[::1]:2379`, `localhost:2379`.
    pub fn socket_host_port(&self) -> String {
        format!("{}:{}", self.host_text, self.port)
    }

    /// The socket address when the host is an IP address (no DNS lookup).
    pub fn socket_addr(&self) -> Option<SocketAddr> {
        self.host.ip().map(|ip| SocketAddr::new(ip, self.port))
    }
}

impl fmt::Display for Url {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.text)
    }
}

impl FromStr for Url {
    type Err = UrlError;
    fn from_str(s: &str) -> Result<Url, UrlError> {
        Url::parse(s)
    }
}

impl PartialOrd for Url {
    fn partial_cmp(&self, other: &Url) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}

impl Ord for Url {
    fn cmp(&self, other: &Url) -> std::cmp::Ordering {
        self.text.cmp(&other.text)
    }
}

fn is_dns_name(s: &str) -> bool {
    s.len() <= 253
        && s.split('.').all(|label| {
            !label.is_empty()
                && label.len() <= 63
                && label
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        })
}

fn join_urls(urls: &[Url]) -> String {
    urls.iter().map(Url::as_str).collect::<Vec<_>>().join(",")
}

// ---------------------------------------------------------------------------------------------
// Enumerated settings
// ---------------------------------------------------------------------------------------------

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

// ---------------------------------------------------------------------------------------------
// Config
// ---------------------------------------------------------------------------------------------

/// A member's configuration, validated.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Config {
    /// `--name` (`default`).
    pub name: String,
    /// `--data-dir` (`<name>.etcd`).
    pub data_dir: PathBuf,
    /// `--listen-peer-urls` (`http://localhost:2380`).
    pub listen_peer_urls: Vec<Url>,
    /// `--listen-client-urls` (`http://localhost:2379`).
    pub listen_client_urls: Vec<Url>,
    /// `--initial-advertise-peer-urls` (`http://localhost:2380`).
    pub initial_advertise_peer_urls: Vec<Url>,
    /// `--advertise-client-urls` (`http://localhost:2379`).
    pub advertise_client_urls: Vec<Url>,
    /// `--initial-cluster` (`<name>=<each initial advertise peer URL>`): the members, each with its
    /// peer URLs, in order of first appearance. etcd's text lists a member once per URL
    /// (`a=http://x:2380,a=http://y:2380`); those entries are gathered here under one name, its
    /// URLs in the order given.
    pub initial_cluster: Vec<(String, Vec<Url>)>,
    /// `--initial-cluster-token` (`etcd-cluster`).
    pub initial_cluster_token: String,
    /// `--initial-cluster-state` (`new`).
    pub initial_cluster_state: ClusterState,
    /// `--cert-file`: the client-facing server certificate.
    pub cert_file: Option<PathBuf>,
    /// `--key-file`.
    pub key_file: Option<PathBuf>,
    /// `--trusted-ca-file`: the CA that client certificates must chain to.
    pub trusted_ca_file: Option<PathBuf>,
    /// `--client-cert-auth` (`false`).
    pub client_cert_auth: bool,
    /// `--peer-cert-file`.
    pub peer_cert_file: Option<PathBuf>,
    /// `--peer-key-file`.
    pub peer_key_file: Option<PathBuf>,
    /// `--peer-trusted-ca-file`.
    pub peer_trusted_ca_file: Option<PathBuf>,
    /// `--peer-client-cert-auth` (`false`).
    pub peer_client_cert_auth: bool,
    /// `--heartbeat-interval`, in milliseconds (`100`).
    pub heartbeat_interval: u64,
    /// `--election-timeout`, in milliseconds (`1000`).
    pub election_timeout: u64,
    /// `--max-request-bytes` (`1572864`).
    pub max_request_bytes: u64,
    /// `--max-txn-ops` (`128`).
    pub max_txn_ops: u64,
    /// `--snapshot-count` (`100000`).
    pub snapshot_count: u64,
    /// `--quota-backend-bytes` (`0`: the default quota).
    pub quota_backend_bytes: u64,
    /// `--auto-compaction-mode` (`periodic`).
    pub auto_compaction_mode: CompactionMode,
    /// `--auto-compaction-retention` (`0`: off), as given; see [`Config::compaction_retention`].
    pub auto_compaction_retention: String,
    /// `--log-level` (`info`): one of debug, info, warn, error, dpanic, panic, fatal.
    pub log_level: String,
    /// `--print-data-dir` (ours): the caller prints `data_dir` and exits.
    pub print_data_dir: bool,
    /// `--env-file` (ours): the env file read, if any.
    pub env_file: Option<PathBuf>,
    /// What was ignored (unknown `ETCD_*` keys, non-`ETCD_` keys in the env file). Each is also
    /// logged with `tracing::warn!` while loading; they are kept here for a caller that sets up
    /// logging only after loading the configuration.
    pub warnings: Vec<String>,
}

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
    ("heartbeat-interval", Kind::Value),
    ("election-timeout", Kind::Value),
    ("max-request-bytes", Kind::Value),
    ("max-txn-ops", Kind::Value),
    ("snapshot-count", Kind::Value),
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
fn setting_for_env_key(key: &str) -> Option<&'static str> {
    let rest = key.strip_prefix("ETCD_")?;
    if rest.bytes().any(|b| b.is_ascii_lowercase()) {
        return None;
    }
    let flag = rest.to_ascii_lowercase().replace('_', "-");
    setting(&flag).map(|(name, _)| name)
}

/// The command line, parsed but not interpreted.
#[derive(Default)]
struct Flags {
    /// Settings in the order given; a later one wins.
    settings: Vec<(&'static str, String)>,
    env_file: Option<String>,
    print_data_dir: bool,
}

fn parse_bool(flag: &'static str, value: &str) -> Result<bool, ConfigError> {
    match value {
        "true" => Ok(true),
        "false" => Ok(false),
        _ => Err(invalid(flag, value, "must be true or false")),
    }
}

fn parse_flags(args: &[String]) -> Result<Flags, ConfigError> {
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

/// One `KEY=value` line of an env file.
struct FileEntry {
    key: String,
    value: String,
    line: usize,
}

/// Parses the `etcd.conf` format: `KEY="value"`, `KEY='value'` or `KEY=value` lines, blank lines,
/// and `#` comments (whole lines, `#[Member]` markers included, or after a value).
fn parse_env_file(file: &str, text: &str) -> Result<Vec<FileEntry>, ConfigError> {
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

fn parse_retention(mode: CompactionMode, value: &str) -> Option<CompactionRetention> {
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

/// The merged raw settings (file < env < flags).
struct Raw {
    values: HashMap<&'static str, String>,
}

impl Raw {
    fn get(&self, flag: &str) -> Option<&str> {
        self.values.get(flag).map(String::as_str)
    }

    fn u64_or(&self, flag: &'static str, default: u64) -> Result<u64, ConfigError> {
        match self.get(flag) {
            None => Ok(default),
            Some(v) => v
                .trim()
                .parse()
                .map_err(|_| invalid(flag, v, "must be a non-negative integer")),
        }
    }

    fn bool_or(&self, flag: &'static str, default: bool) -> Result<bool, ConfigError> {
        match self.get(flag) {
            None => Ok(default),
            Some(v) => parse_bool(flag, v.trim()),
        }
    }

    fn path(&self, flag: &'static str) -> Option<PathBuf> {
        self.get(flag)
            .map(str::trim)
            .filter(|v| !v.is_empty())
            .map(PathBuf::from)
    }

    fn urls_or(&self, flag: &'static str, default: &str) -> Result<Vec<Url>, ConfigError> {
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

fn parse_initial_cluster(value: &str) -> Result<Vec<(String, Vec<Url>)>, ConfigError> {
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

fn render_initial_cluster(members: &[(String, Vec<Url>)]) -> String {
    let mut out = Vec::new();
    for (name, urls) in members {
        for url in urls {
            out.push(format!("{name}={url}"));
        }
    }
    out.join(",")
}

impl Config {
    /// Reads the configuration from the process's command line (without the program name) and
    /// environment. See [`Config::load`].
    pub fn from_process() -> Result<Config, ConfigError> {
        let mut args = Vec::new();
        for (n, arg) in std::env::args_os().skip(1).enumerate() {
            let arg = arg.into_string().map_err(|bad| ConfigError::NotUtf8 {
                what: format!("argument {}", n + 1),
                value: bad.to_string_lossy().into_owned(),
            })?;
            args.push(arg);
        }
        let mut env = Vec::new();
        for (key, value) in std::env::vars_os() {
            let Ok(key) = key.into_string() else {
                continue;
            };
            match value.into_string() {
                Ok(value) => env.push((key, value)),
                Err(bad) if key.starts_with("ETCD_") => {
                    return Err(ConfigError::NotUtf8 {
                        what: key,
                        value: bad.to_string_lossy().into_owned(),
                    });
                }
                Err(_) => {}
            }
        }
        Config::load(&args, &env)
    }

    /// Builds and validates the configuration from `args` (the command line WITHOUT the program
    /// name, e.g. `std::env::args().skip(1)`) and `env` (the process's environment; only `ETCD_*`
    /// variables are read). Precedence: `--env-file` < `ETCD_*` variables < flags.
    pub fn load(args: &[String], env: &[(String, String)]) -> Result<Config, ConfigError> {
        let flags = parse_flags(args)?;
        let mut warnings = Vec::new();
        let mut values: HashMap<&'static str, String> = HashMap::new();

        // 1. The env file.
        if let Some(path) = &flags.env_file {
            let text = std::fs::read_to_string(path).map_err(|e| ConfigError::ReadEnvFile {
                path: path.clone(),
                reason: e.to_string(),
            })?;
            for entry in parse_env_file(path, &text)? {
                let place = format!("{path}:{}", entry.line);
                if let Some(flag) = setting_for_env_key(&entry.key) {
                    if !entry.value.is_empty() {
                        values.insert(flag, entry.value);
                    }
                } else if entry.key == "ETCD_CONFIG_FILE" {
                    return Err(ConfigError::ConfigFileUnsupported(format!(
                        "{place}: ETCD_CONFIG_FILE"
                    )));
                } else if entry.key.starts_with("ETCD_") {
                    warnings.push(format!(
                        "{place}: ignoring {}, which this implementation does not support",
                        entry.key
                    ));
                } else {
                    warnings.push(format!(
                        "{place}: ignoring {}, which is not an ETCD_* setting",
                        entry.key
                    ));
                }
            }
        }

        // 2. The environment. Sorted so that warnings come out in a stable order.
        let mut env_vars: Vec<&(String, String)> = env
            .iter()
            .filter(|(key, _)| key.starts_with("ETCD_"))
            .collect();
        env_vars.sort();
        for (key, value) in env_vars {
            if let Some(flag) = setting_for_env_key(key) {
                if !value.is_empty() {
                    values.insert(flag, value.clone());
                }
            } else if key == "ETCD_CONFIG_FILE" {
                if !value.is_empty() {
                    return Err(ConfigError::ConfigFileUnsupported(
                        "ETCD_CONFIG_FILE".to_string(),
                    ));
                }
            } else {
                warnings.push(format!(
                    "ignoring environment variable {key}, which this implementation does not support"
                ));
            }
        }

        // 3. The flags.
        for (flag, value) in &flags.settings {
            values.insert(*flag, value.clone());
        }

        for warning in &warnings {
            tracing::warn!("{warning}");
        }

        let raw = Raw { values };
        let mut config = Config::from_raw(&raw)?;
        config.print_data_dir = flags.print_data_dir;
        config.env_file = flags.env_file.map(PathBuf::from);
        config.warnings = warnings;
        config.validate(&raw)?;
        Ok(config)
    }

    /// Parses every setting, applying etcd's defaults.
    fn from_raw(raw: &Raw) -> Result<Config, ConfigError> {
        let name = match raw.get("name") {
            None => "default".to_string(),
            Some(v) if v.trim().is_empty() => {
                return Err(invalid("name", v, "the member name must not be empty"));
            }
            Some(v) => v.trim().to_string(),
        };
        let data_dir = raw
            .path("data-dir")
            .unwrap_or_else(|| PathBuf::from(format!("{name}.etcd")));
        let listen_peer_urls = raw.urls_or("listen-peer-urls", "http://localhost:2380")?;
        let listen_client_urls = raw.urls_or("listen-client-urls", "http://localhost:2379")?;
        let initial_advertise_peer_urls =
            raw.urls_or("initial-advertise-peer-urls", "http://localhost:2380")?;
        let advertise_client_urls =
            raw.urls_or("advertise-client-urls", "http://localhost:2379")?;
        let initial_cluster = match raw.get("initial-cluster") {
            Some(v) => parse_initial_cluster(v)?,
            None => vec![(name.clone(), initial_advertise_peer_urls.clone())],
        };
        let initial_cluster_token = match raw.get("initial-cluster-token") {
            None => "etcd-cluster".to_string(),
            Some(v) if v.trim().is_empty() => {
                return Err(invalid("initial-cluster-token", v, "must not be empty"));
            }
            Some(v) => v.trim().to_string(),
        };
        let initial_cluster_state = match raw.get("initial-cluster-state").map(str::trim) {
            None | Some("new") => ClusterState::New,
            Some("existing") => ClusterState::Existing,
            Some(v) => {
                return Err(invalid(
                    "initial-cluster-state",
                    v,
                    "must be \"new\" or \"existing\"",
                ));
            }
        };
        let auto_compaction_mode = match raw.get("auto-compaction-mode").map(str::trim) {
            None | Some("periodic") => CompactionMode::Periodic,
            Some("revision") => CompactionMode::Revision,
            Some(v) => {
                return Err(invalid(
                    "auto-compaction-mode",
                    v,
                    "must be \"periodic\" or \"revision\"",
                ));
            }
        };
        let auto_compaction_retention = raw
            .get("auto-compaction-retention")
            .map_or("0", str::trim)
            .to_string();
        if parse_retention(auto_compaction_mode, &auto_compaction_retention).is_none() {
            let reason = match auto_compaction_mode {
                CompactionMode::Periodic => {
                    "must be a number of hours or a duration such as \"1h30m\" with --auto-compaction-mode periodic"
                }
                CompactionMode::Revision => {
                    "must be a number of revisions with --auto-compaction-mode revision"
                }
            };
            return Err(invalid(
                "auto-compaction-retention",
                &auto_compaction_retention,
                reason,
            ));
        }
        let log_level = raw.get("log-level").map_or("info", str::trim).to_string();
        if !LOG_LEVELS.contains(&log_level.as_str()) {
            return Err(invalid(
                "log-level",
                &log_level,
                format!("must be one of {}", LOG_LEVELS.join(", ")),
            ));
        }
        Ok(Config {
            name,
            data_dir,
            listen_peer_urls,
            listen_client_urls,
            initial_advertise_peer_urls,
            advertise_client_urls,
            initial_cluster,
            initial_cluster_token,
            initial_cluster_state,
            cert_file: raw.path("cert-file"),
            key_file: raw.path("key-file"),
            trusted_ca_file: raw.path("trusted-ca-file"),
            client_cert_auth: raw.bool_or("client-cert-auth", false)?,
            peer_cert_file: raw.path("peer-cert-file"),
            peer_key_file: raw.path("peer-key-file"),
            peer_trusted_ca_file: raw.path("peer-trusted-ca-file"),
            peer_client_cert_auth: raw.bool_or("peer-client-cert-auth", false)?,
            heartbeat_interval: raw.u64_or("heartbeat-interval", 100)?,
            election_timeout: raw.u64_or("election-timeout", 1000)?,
            max_request_bytes: raw.u64_or("max-request-bytes", 1_572_864)?,
            max_txn_ops: raw.u64_or("max-txn-ops", 128)?,
            snapshot_count: raw.u64_or("snapshot-count", 100_000)?,
            quota_backend_bytes: raw.u64_or("quota-backend-bytes", 0)?,
            auto_compaction_mode,
            auto_compaction_retention,
            log_level,
            print_data_dir: false,
            env_file: None,
            warnings: Vec::new(),
        })
    }

    /// The rules between settings.
    fn validate(&self, raw: &Raw) -> Result<(), ConfigError> {
        // Timing (etcd's rules).
        if self.heartbeat_interval == 0 {
            return Err(invalid("heartbeat-interval", "0", "must be > 0"));
        }
        if self.election_timeout == 0 {
            return Err(invalid("election-timeout", "0", "must be > 0"));
        }
        if self.election_timeout < self.heartbeat_interval.saturating_mul(5) {
            return Err(ConfigError::Inconsistent(format!(
                "--election-timeout {}ms must be at least 5 times --heartbeat-interval {}ms",
                self.election_timeout, self.heartbeat_interval
            )));
        }
        if self.election_timeout > MAX_ELECTION_TIMEOUT_MS {
            return Err(invalid(
                "election-timeout",
                &self.election_timeout.to_string(),
                format!("must be at most {MAX_ELECTION_TIMEOUT_MS} ms"),
            ));
        }

        // Listen URLs bind, so their host must be an IP address (or localhost), as in etcd.
        for (flag, urls) in [
            ("listen-peer-urls", &self.listen_peer_urls),
            ("listen-client-urls", &self.listen_client_urls),
        ] {
            for url in urls {
                if let Host::Name(name) = url.host()
                    && name != "localhost"
                {
                    let reason = format!(
                        "{:?}: a listen URL needs an IP address (or localhost) to bind",
                        url.as_str()
                    );
                    return Err(invalid(flag, &join_urls(urls), reason));
                }
            }
        }

        // etcd: listen client URLs set explicitly need explicit advertise client URLs.
        if raw.get("listen-client-urls").is_some() && raw.get("advertise-client-urls").is_none() {
            return Err(ConfigError::Inconsistent(format!(
                "--advertise-client-urls (ETCD_ADVERTISE_CLIENT_URLS) is required when --listen-client-urls {:?} is set",
                join_urls(&self.listen_client_urls)
            )));
        }

        // TLS files.
        for (cert_flag, cert, key_flag, key) in [
            ("cert-file", &self.cert_file, "key-file", &self.key_file),
            (
                "peer-cert-file",
                &self.peer_cert_file,
                "peer-key-file",
                &self.peer_key_file,
            ),
        ] {
            match (cert, key) {
                (Some(c), None) => {
                    return Err(ConfigError::Inconsistent(format!(
                        "--{cert_flag} {:?} is set but --{key_flag} is not",
                        c.display().to_string()
                    )));
                }
                (None, Some(k)) => {
                    return Err(ConfigError::Inconsistent(format!(
                        "--{key_flag} {:?} is set but --{cert_flag} is not",
                        k.display().to_string()
                    )));
                }
                _ => {}
            }
        }
        let client_tls = self.cert_file.is_some() && self.key_file.is_some();
        let peer_tls = self.peer_cert_file.is_some() && self.peer_key_file.is_some();
        for (flag, urls, has_tls, needs) in [
            (
                "listen-client-urls",
                &self.listen_client_urls,
                client_tls,
                "--cert-file and --key-file",
            ),
            (
                "advertise-client-urls",
                &self.advertise_client_urls,
                client_tls,
                "--cert-file and --key-file",
            ),
            (
                "listen-peer-urls",
                &self.listen_peer_urls,
                peer_tls,
                "--peer-cert-file and --peer-key-file",
            ),
            (
                "initial-advertise-peer-urls",
                &self.initial_advertise_peer_urls,
                peer_tls,
                "--peer-cert-file and --peer-key-file",
            ),
        ] {
            if !has_tls && urls.iter().any(Url::is_https) {
                return Err(ConfigError::Inconsistent(format!(
                    "--{flag} {:?} has an https URL, which needs {needs}",
                    join_urls(urls)
                )));
            }
        }

        // The member and its entry in the initial cluster.
        let cluster_text = match raw.get("initial-cluster") {
            Some(v) => v.trim().to_string(),
            None => render_initial_cluster(&self.initial_cluster),
        };
        let Some((_, own)) = self.initial_cluster.iter().find(|(n, _)| *n == self.name) else {
            return Err(ConfigError::Inconsistent(format!(
                "member {:?} is not in --initial-cluster {cluster_text:?}",
                self.name
            )));
        };
        let mut advertised: Vec<&str> = self
            .initial_advertise_peer_urls
            .iter()
            .map(Url::as_str)
            .collect();
        advertised.sort_unstable();
        advertised.dedup();
        let mut listed: Vec<&str> = own.iter().map(Url::as_str).collect();
        listed.sort_unstable();
        listed.dedup();
        if advertised != listed {
            return Err(ConfigError::Inconsistent(format!(
                "--initial-advertise-peer-urls {:?} does not match the entry of {:?} in --initial-cluster {:?}",
                advertised.join(","),
                self.name,
                listed.join(",")
            )));
        }

        // Two entries with one URL would be one member twice (and the same member ID).
        let mut seen = HashSet::new();
        for (_, urls) in &self.initial_cluster {
            for url in urls {
                if !seen.insert(url.as_str()) {
                    return Err(ConfigError::Inconsistent(format!(
                        "--initial-cluster {cluster_text:?} lists the peer URL {:?} more than once",
                        url.as_str()
                    )));
                }
            }
        }
        Ok(())
    }

    /// The members of the initial cluster with their peer URLs as text (what member IDs hash),
    /// grouped by name in order of first appearance.
    pub fn member_peer_urls(&self) -> Vec<(String, Vec<String>)> {
        self.initial_cluster
            .iter()
            .map(|(name, urls)| (name.clone(), urls.iter().map(Url::to_string).collect()))
            .collect()
    }

    /// The initial cluster in etcd's text form, `name=url,name=url`.
    pub fn initial_cluster_string(&self) -> String {
        render_initial_cluster(&self.initial_cluster)
    }

    /// `auto_compaction_retention` read according to `auto_compaction_mode`; `None` when
    /// auto-compaction is off (a retention of zero).
    pub fn compaction_retention(&self) -> Option<CompactionRetention> {
        match parse_retention(self.auto_compaction_mode, &self.auto_compaction_retention)? {
            CompactionRetention::Periodic(d) if d.is_zero() => None,
            CompactionRetention::Revision(0) => None,
            retention => Some(retention),
        }
    }

    /// `--election-timeout` as a number of heartbeat ticks (the raft election tick).
    pub fn election_ticks(&self) -> u64 {
        self.election_timeout / self.heartbeat_interval.max(1)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    /// The seed's etcd.conf, verbatim.
    const SEED: &str = r#"#[Member]
ETCD_NAME="etcd01"
ETCD_DATA_DIR="/var/lib/etcd/default.etcd"
ETCD_LISTEN_PEER_URLS="https://10.0.52.13:2380"
ETCD_LISTEN_CLIENT_URLS="https://10.0.52.13:2379,http://127.0.0.1:2379"

#[Clustering]
ETCD_INITIAL_ADVERTISE_PEER_URLS="https://10.0.52.13:2380"
ETCD_ADVERTISE_CLIENT_URLS="https://10.0.52.13:2379"
ETCD_INITIAL_CLUSTER="etcd01=https://10.0.52.13:2380,etcd02=https://10.0.52.14:2380,etcd03=https://10.0.52.6:2380"
ETCD_INITIAL_CLUSTER_TOKEN="etcd-cluster"
ETCD_INITIAL_CLUSTER_STATE="new"

#[Security]
ETCD_CERT_FILE="/opt/etcd/ssl/server.pem"
ETCD_KEY_FILE="/opt/etcd/ssl/server-key.pem"
ETCD_TRUSTED_CA_FILE="/opt/etcd/ssl/ca.pem"
ETCD_CLIENT_CERT_AUTH="true"
ETCD_PEER_CERT_FILE="/opt/etcd/ssl/server.pem"
ETCD_PEER_KEY_FILE="/opt/etcd/ssl/server-key.pem"
ETCD_PEER_TRUSTED_CA_FILE="/opt/etcd/ssl/ca.pem"
ETCD_PEER_CLIENT_CERT_AUTH="true"
"#;

    fn env_file(text: &str) -> tempfile::NamedTempFile {
        let mut file = tempfile::Builder::new()
            .prefix("etcd-")
            .suffix(".conf")
            .tempfile()
            .expect("temp file");
        file.write_all(text.as_bytes()).expect("write temp file");
        file
    }

    fn path_of(file: &tempfile::NamedTempFile) -> String {
        file.path().display().to_string()
    }

    fn args(list: &[&str]) -> Vec<String> {
        list.iter().map(|s| s.to_string()).collect()
    }

    fn env(list: &[(&str, &str)]) -> Vec<(String, String)> {
        list.iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    fn url(s: &str) -> Url {
        Url::parse(s).expect("test URL")
    }

    fn urls(list: &[&str]) -> Vec<Url> {
        list.iter().map(|s| url(s)).collect()
    }

    fn load_err(a: &[&str], e: &[(&str, &str)]) -> String {
        match Config::load(&args(a), &env(e)) {
            Ok(c) => panic!("expected an error, got {c:?}"),
            Err(err) => {
                let text = err.to_string();
                assert!(!text.contains('\n'), "multi-line error: {text}");
                text
            }
        }
    }

    /// Flags for a plain-http single member named `n1` on 127.0.0.1, to which a test adds its own.
    fn local(extra: &[&str]) -> Vec<String> {
        let mut a = args(&[
            "--name",
            "n1",
            "--listen-peer-urls",
            "http://127.0.0.1:2380",
            "--initial-advertise-peer-urls",
            "http://127.0.0.1:2380",
            "--listen-client-urls",
            "http://127.0.0.1:2379",
            "--advertise-client-urls",
            "http://127.0.0.1:2379",
            "--initial-cluster",
            "n1=http://127.0.0.1:2380",
        ]);
        a.extend(args(extra));
        a
    }

    fn local_err(extra: &[&str]) -> String {
        match Config::load(&local(extra), &[]) {
            Ok(c) => panic!("expected an error, got {c:?}"),
            Err(err) => err.to_string(),
        }
    }

    #[test]
    fn seed_file() {
        let file = env_file(SEED);
        let path = path_of(&file);
        let c = Config::load(&args(&["--env-file", &path]), &[]).expect("seed config");
        let expected = Config {
            name: "etcd01".into(),
            data_dir: "/var/lib/etcd/default.etcd".into(),
            listen_peer_urls: urls(&["https://10.0.52.13:2380"]),
            listen_client_urls: urls(&["https://10.0.52.13:2379", "http://127.0.0.1:2379"]),
            initial_advertise_peer_urls: urls(&["https://10.0.52.13:2380"]),
            advertise_client_urls: urls(&["https://10.0.52.13:2379"]),
            initial_cluster: vec![
                ("etcd01".into(), urls(&["https://10.0.52.13:2380"])),
                ("etcd02".into(), urls(&["https://10.0.52.14:2380"])),
                ("etcd03".into(), urls(&["https://10.0.52.6:2380"])),
            ],
            initial_cluster_token: "etcd-cluster".into(),
            initial_cluster_state: ClusterState::New,
            cert_file: Some("/opt/etcd/ssl/server.pem".into()),
            key_file: Some("/opt/etcd/ssl/server-key.pem".into()),
            trusted_ca_file: Some("/opt/etcd/ssl/ca.pem".into()),
            client_cert_auth: true,
            peer_cert_file: Some("/opt/etcd/ssl/server.pem".into()),
            peer_key_file: Some("/opt/etcd/ssl/server-key.pem".into()),
            peer_trusted_ca_file: Some("/opt/etcd/ssl/ca.pem".into()),
            peer_client_cert_auth: true,
            heartbeat_interval: 100,
            election_timeout: 1000,
            max_request_bytes: 1_572_864,
            max_txn_ops: 128,
            snapshot_count: 100_000,
            quota_backend_bytes: 0,
            auto_compaction_mode: CompactionMode::Periodic,
            auto_compaction_retention: "0".into(),
            log_level: "info".into(),
            print_data_dir: false,
            env_file: Some(PathBuf::from(&path)),
            warnings: vec![],
        };
        assert_eq!(c, expected);
        assert_eq!(
            c.member_peer_urls(),
            vec![
                (
                    "etcd01".to_string(),
                    vec!["https://10.0.52.13:2380".to_string()]
                ),
                (
                    "etcd02".to_string(),
                    vec!["https://10.0.52.14:2380".to_string()]
                ),
                (
                    "etcd03".to_string(),
                    vec!["https://10.0.52.6:2380".to_string()]
                ),
            ]
        );
        assert_eq!(
            c.initial_cluster_string(),
            "etcd01=https://10.0.52.13:2380,etcd02=https://10.0.52.14:2380,etcd03=https://10.0.52.6:2380"
        );
        assert_eq!(c.compaction_retention(), None);
        assert_eq!(c.election_ticks(), 10);
        // The IDs of the seed's members come from these texts (see ids.rs for the vectors).
        let ids: Vec<u64> = c
            .member_peer_urls()
            .iter()
            .map(|(_, u)| crate::ids::member_id(u, &c.initial_cluster_token))
            .collect();
        assert_eq!(
            ids,
            [
                0x3016_3347_7b73_98ac,
                0x5829_9fb3_c309_cf17,
                0xd138_2f38_b078_ff01
            ]
        );
        // `--env-file=path` works as well.
        let c2 = Config::load(&args(&[&format!("--env-file={path}")]), &[]).expect("seed");
        assert_eq!(c2, c);
    }

    #[test]
    fn defaults() {
        let c = Config::load(&[], &[]).expect("defaults");
        assert_eq!(c.name, "default");
        assert_eq!(c.data_dir, PathBuf::from("default.etcd"));
        assert_eq!(c.listen_peer_urls, urls(&["http://localhost:2380"]));
        assert_eq!(c.listen_client_urls, urls(&["http://localhost:2379"]));
        assert_eq!(
            c.initial_advertise_peer_urls,
            urls(&["http://localhost:2380"])
        );
        assert_eq!(c.advertise_client_urls, urls(&["http://localhost:2379"]));
        assert_eq!(
            c.initial_cluster,
            vec![("default".to_string(), urls(&["http://localhost:2380"]))]
        );
        assert_eq!(c.initial_cluster_string(), "default=http://localhost:2380");
        assert_eq!(c.initial_cluster_token, "etcd-cluster");
        assert_eq!(c.initial_cluster_state, ClusterState::New);
        assert_eq!(c.cert_file, None);
        assert_eq!(c.key_file, None);
        assert_eq!(c.trusted_ca_file, None);
        assert!(!c.client_cert_auth);
        assert_eq!(c.peer_cert_file, None);
        assert!(!c.peer_client_cert_auth);
        assert_eq!(c.heartbeat_interval, 100);
        assert_eq!(c.election_timeout, 1000);
        assert_eq!(c.max_request_bytes, 1_572_864);
        assert_eq!(c.max_txn_ops, 128);
        assert_eq!(c.snapshot_count, 100_000);
        assert_eq!(c.quota_backend_bytes, 0);
        assert_eq!(c.auto_compaction_mode, CompactionMode::Periodic);
        assert_eq!(c.auto_compaction_retention, "0");
        assert_eq!(c.log_level, "info");
        assert!(!c.print_data_dir);
        assert_eq!(c.env_file, None);
        assert!(c.warnings.is_empty());
    }

    #[test]
    fn name_alone_sets_data_dir_and_initial_cluster() {
        let c = Config::load(&args(&["--name", "abc"]), &[]).expect("config");
        assert_eq!(c.data_dir, PathBuf::from("abc.etcd"));
        assert_eq!(c.initial_cluster_string(), "abc=http://localhost:2380");
        let c = Config::load(
            &args(&[
                "--name=abc",
                "--initial-advertise-peer-urls",
                "http://127.0.0.1:2380, http://127.0.0.2:2380",
            ]),
            &[],
        )
        .expect("config");
        assert_eq!(
            c.initial_cluster_string(),
            "abc=http://127.0.0.1:2380,abc=http://127.0.0.2:2380"
        );
    }

    #[test]
    fn precedence_file_env_flag() {
        let file = env_file(
            "ETCD_NAME=\"from-file\"\nETCD_SNAPSHOT_COUNT=\"1\"\nETCD_MAX_TXN_OPS=\"2\"\nETCD_LOG_LEVEL=\"debug\"\n",
        );
        let path = path_of(&file);
        let c = Config::load(
            &args(&[
                "--env-file",
                &path,
                "--name",
                "from-flag",
                "--max-txn-ops=30",
                "--initial-cluster",
                "from-flag=http://localhost:2380",
            ]),
            &env(&[
                ("ETCD_NAME", "from-env"),
                ("ETCD_SNAPSHOT_COUNT", "20"),
                ("ETCD_MAX_TXN_OPS", "20"),
                ("PATH", "/usr/bin"),
            ]),
        )
        .expect("config");
        assert_eq!(c.name, "from-flag"); // flag > env > file
        assert_eq!(c.max_txn_ops, 30); // flag > env > file
        assert_eq!(c.snapshot_count, 20); // env > file
        assert_eq!(c.log_level, "debug"); // file only
        assert_eq!(c.data_dir, PathBuf::from("from-flag.etcd"));

        // Env over file for the name; file's initial cluster lists it.
        let file = env_file(
            "ETCD_NAME=\"from-file\"\nETCD_INITIAL_CLUSTER=\"from-env=http://localhost:2380\"\n",
        );
        let c = Config::load(
            &args(&["--env-file", &path_of(&file)]),
            &env(&[("ETCD_NAME", "from-env")]),
        )
        .expect("config");
        assert_eq!(c.name, "from-env");

        // An empty variable does not override (as in etcd).
        let file = env_file("ETCD_NAME=\"n\"\nETCD_INITIAL_CLUSTER=\"n=http://localhost:2380\"\n");
        let c = Config::load(
            &args(&["--env-file", &path_of(&file)]),
            &env(&[("ETCD_NAME", "")]),
        )
        .expect("config");
        assert_eq!(c.name, "n");

        // A later flag wins over an earlier one.
        let c = Config::load(&args(&["--snapshot-count", "5", "--snapshot-count=6"]), &[])
            .expect("config");
        assert_eq!(c.snapshot_count, 6);
    }

    #[test]
    fn bool_flags() {
        let c = Config::load(
            &args(&["--client-cert-auth", "--peer-client-cert-auth"]),
            &[],
        )
        .expect("config");
        assert!(c.client_cert_auth && c.peer_client_cert_auth);
        let c = Config::load(
            &args(&[
                "--client-cert-auth=false",
                "--peer-client-cert-auth",
                "false",
            ]),
            &env(&[
                ("ETCD_CLIENT_CERT_AUTH", "true"),
                ("ETCD_PEER_CLIENT_CERT_AUTH", "true"),
            ]),
        )
        .expect("config");
        assert!(!c.client_cert_auth && !c.peer_client_cert_auth);
        let c = Config::load(&args(&["--print-data-dir", "--name", "x"]), &[]).expect("config");
        assert!(c.print_data_dir);
        assert_eq!(c.data_dir, PathBuf::from("x.etcd"));
        // One dash, as Go's flag package allows.
        let c = Config::load(&args(&["-name", "y"]), &[]).expect("config");
        assert_eq!(c.name, "y");
    }

    #[test]
    fn quotes_comments_and_spacing() {
        let file = env_file(
            "\u{feff}# a comment\n\
             \n\
             #[Member]\n\
             \x20  ETCD_NAME='single'   \n\
             ETCD_DATA_DIR=/tmp/plain # trailing comment\n\
             ETCD_INITIAL_CLUSTER_TOKEN=\"with \\\"quote\\\" # not a comment\"  # a comment\r\n\
             ETCD_INITIAL_CLUSTER = \"single=http://localhost:2380\"\n\
             ETCD_LISTEN_CLIENT_URLS=\" http://127.0.0.1:2379 , http://127.0.0.2:2379 \"\n\
             ETCD_ADVERTISE_CLIENT_URLS=\"http://127.0.0.1:2379\"\n\
             ETCD_QUOTA_BACKEND_BYTES=\n\
             ETCD_ENABLE_V2=\"false\"\n\
             GOMAXPROCS=4\n",
        );
        let path = path_of(&file);
        let c = Config::load(&args(&["--env-file", &path]), &[]).expect("config");
        assert_eq!(c.name, "single");
        assert_eq!(c.data_dir, PathBuf::from("/tmp/plain"));
        assert_eq!(c.initial_cluster_token, "with \"quote\" # not a comment");
        assert_eq!(
            c.listen_client_urls,
            urls(&["http://127.0.0.1:2379", "http://127.0.0.2:2379"])
        );
        assert_eq!(c.quota_backend_bytes, 0);
        assert_eq!(c.warnings.len(), 2, "{:?}", c.warnings);
        assert!(c.warnings[0].contains("ETCD_ENABLE_V2"));
        assert!(c.warnings[0].contains(&format!("{path}:11")));
        assert!(c.warnings[1].contains("GOMAXPROCS"));

        let c = Config::load(&[], &env(&[("ETCD_UNHEARD_OF", "1")])).expect("config");
        assert_eq!(c.warnings.len(), 1);
        assert!(c.warnings[0].contains("ETCD_UNHEARD_OF"));
    }

    #[test]
    fn malformed_lines() {
        for (text, line, got) in [
            ("ETCD_NAME=\"a\"\n\n# c\n\n\n\nfoo bar\n", 7, "foo bar"),
            ("ETCD_NAME=\"unterminated\n", 1, "ETCD_NAME=\"unterminated"),
            ("ETCD_NAME='x' trailing\n", 1, "ETCD_NAME='x' trailing"),
            ("ETCD_NAME=two words\n", 1, "ETCD_NAME=two words"),
            ("1ETCD=x\n", 1, "1ETCD=x"),
            ("=x\n", 1, "=x"),
        ] {
            let file = env_file(text);
            let path = path_of(&file);
            let err = load_err(&["--env-file", &path], &[]);
            assert_eq!(
                err,
                format!("{path}:{line}: expected KEY=\"value\", got {got:?}")
            );
        }
        let file = env_file("#[Member]\nfoo bar\n");
        let path = path_of(&file);
        assert_eq!(
            load_err(&["--env-file", &path], &[]),
            format!("{path}:2: expected KEY=\"value\", got \"foo bar\"")
        );
    }

    #[test]
    fn file_and_flag_errors() {
        let err = load_err(&["--env-file", "/nonexistent/etcd.conf"], &[]);
        assert!(
            err.starts_with("cannot read --env-file \"/nonexistent/etcd.conf\": "),
            "{err}"
        );
        assert_eq!(load_err(&["--bogus", "1"], &[]), "unknown flag --bogus");
        assert_eq!(
            load_err(&["--enable-v2=true"], &[]),
            "unknown flag --enable-v2"
        );
        assert_eq!(load_err(&["--name"], &[]), "flag --name needs a value");
        assert_eq!(
            load_err(&["--name", "--data-dir", "x"], &[]),
            "flag --name needs a value"
        );
        assert_eq!(
            load_err(&["stray"], &[]),
            "unexpected argument \"stray\" (every option is a --flag)"
        );
        assert_eq!(
            load_err(&["--config-file", "etcd.yml"], &[]),
            "--config-file (YAML) is not supported; use --env-file with etcd.conf KEY=\"value\" lines"
        );
        assert_eq!(
            load_err(&["--config-file=etcd.yml"], &[]),
            "--config-file (YAML) is not supported; use --env-file with etcd.conf KEY=\"value\" lines"
        );
        assert!(load_err(&[], &[("ETCD_CONFIG_FILE", "x.yml")]).starts_with("ETCD_CONFIG_FILE"));
    }

    #[test]
    fn invalid_values_name_field_and_value() {
        assert_eq!(
            load_err(&["--listen-client-urls", "htp://x"], &[]),
            "invalid value \"htp://x\" for --listen-client-urls (ETCD_LISTEN_CLIENT_URLS): URL scheme must be http or https"
        );
        assert_eq!(
            load_err(&[], &[("ETCD_LISTEN_CLIENT_URLS", "htp://x")]),
            "invalid value \"htp://x\" for --listen-client-urls (ETCD_LISTEN_CLIENT_URLS): URL scheme must be http or https"
        );
        let err = load_err(
            &[
                "--listen-peer-urls",
                "http://127.0.0.1:2380, http://127.0.0.1",
            ],
            &[],
        );
        assert!(
            err.starts_with("invalid value \"http://127.0.0.1:2380, http://127.0.0.1\" for --listen-peer-urls (ETCD_LISTEN_PEER_URLS): \"http://127.0.0.1\": "),
            "{err}"
        );
        for (flag, value, reason_part) in [
            ("initial-advertise-peer-urls", "http://h:2380/path", "path"),
            ("advertise-client-urls", "http://h:0", "port"),
            ("advertise-client-urls", "http://h:99999", "port"),
            ("advertise-client-urls", "http://::1:2379", "brackets"),
            ("advertise-client-urls", "http://[::g]:2379", "IPv6"),
            ("advertise-client-urls", "http://1.2.3.400:2379", "IPv4"),
            ("advertise-client-urls", "http://a b:2379", "host"),
            ("advertise-client-urls", "", "no URL"),
            ("initial-cluster", "n1", "name=URL"),
            ("initial-cluster", "n1=http://x", "host:port"),
            (
                "initial-cluster",
                "=http://127.0.0.1:2380",
                "no member name",
            ),
            ("client-cert-auth", "yes", "true or false"),
            ("heartbeat-interval", "10ms", "integer"),
            ("election-timeout", "-1", "integer"),
            ("max-request-bytes", "1.5MiB", "integer"),
            ("max-txn-ops", "many", "integer"),
            ("snapshot-count", "1e5", "integer"),
            ("quota-backend-bytes", "8G", "integer"),
            ("initial-cluster-state", "old", "existing"),
            ("auto-compaction-mode", "daily", "revision"),
            ("auto-compaction-retention", "1d", "duration"),
            ("log-level", "verbose", "debug, info"),
            ("name", "", "empty"),
            ("initial-cluster-token", " ", "empty"),
        ] {
            let env_key = env_name(flag);
            let expected_start = format!("invalid value {value:?} for --{flag} ({env_key}): ");
            let err = load_err(&[&format!("--{flag}={value}")], &[]);
            assert!(
                err.starts_with(&expected_start) && err.contains(reason_part),
                "--{flag}={value}: {err}"
            );
        }
        let err = load_err(
            &[
                "--auto-compaction-mode",
                "revision",
                "--auto-compaction-retention",
                "1h",
            ],
            &[],
        );
        assert!(
            err.starts_with("invalid value \"1h\" for --auto-compaction-retention"),
            "{err}"
        );
    }

    #[test]
    fn timing_rules() {
        let err = local_err(&["--heartbeat-interval", "100", "--election-timeout", "400"]);
        assert_eq!(
            err,
            "--election-timeout 400ms must be at least 5 times --heartbeat-interval 100ms"
        );
        let err = local_err(&["--heartbeat-interval", "0"]);
        assert!(
            err.contains("--heartbeat-interval") && err.contains("\"0\""),
            "{err}"
        );
        let err = local_err(&["--election-timeout", "60000"]);
        assert!(
            err.contains("--election-timeout") && err.contains("\"60000\""),
            "{err}"
        );
        let c = Config::load(
            &local(&["--heartbeat-interval", "50", "--election-timeout", "250"]),
            &[],
        )
        .expect("config");
        assert_eq!(c.election_ticks(), 5);
    }

    #[test]
    fn tls_rules() {
        let err = local_err(&["--listen-client-urls", "https://127.0.0.1:2379"]);
        assert_eq!(
            err,
            "--listen-client-urls \"https://127.0.0.1:2379\" has an https URL, which needs --cert-file and --key-file"
        );
        let err = local_err(&[
            "--advertise-client-urls",
            "https://127.0.0.1:2379",
            "--cert-file",
            "c.pem",
            "--key-file",
            "",
        ]);
        assert_eq!(err, "--cert-file \"c.pem\" is set but --key-file is not");
        let err = local_err(&["--advertise-client-urls", "https://127.0.0.1:2379"]);
        assert!(
            err.starts_with("--advertise-client-urls \"https://127.0.0.1:2379\" has an https URL"),
            "{err}"
        );
        let err = local_err(&["--listen-peer-urls", "https://127.0.0.1:2380"]);
        assert_eq!(
            err,
            "--listen-peer-urls \"https://127.0.0.1:2380\" has an https URL, which needs --peer-cert-file and --peer-key-file"
        );
        let err = local_err(&["--peer-key-file", "k.pem"]);
        assert_eq!(
            err,
            "--peer-key-file \"k.pem\" is set but --peer-cert-file is not"
        );
        // Peer TLS does not satisfy client TLS.
        let err = local_err(&[
            "--listen-client-urls",
            "https://127.0.0.1:2379",
            "--peer-cert-file",
            "c.pem",
            "--peer-key-file",
            "k.pem",
        ]);
        assert!(err.contains("--cert-file and --key-file"), "{err}");
        let c = Config::load(
            &local(&[
                "--listen-client-urls",
                "https://127.0.0.1:2379,http://127.0.0.1:22379",
                "--cert-file",
                "c.pem",
                "--key-file",
                "k.pem",
            ]),
            &[],
        )
        .expect("config");
        assert_eq!(c.cert_file, Some(PathBuf::from("c.pem")));
    }

    #[test]
    fn listen_rules() {
        let err = local_err(&["--listen-client-urls", "http://example.com:2379"]);
        assert!(
            err.starts_with("invalid value \"http://example.com:2379\" for --listen-client-urls"),
            "{err}"
        );
        let err = load_err(&["--listen-client-urls", "http://127.0.0.1:2379"], &[]);
        assert_eq!(
            err,
            "--advertise-client-urls (ETCD_ADVERTISE_CLIENT_URLS) is required when --listen-client-urls \"http://127.0.0.1:2379\" is set"
        );
        let c = Config::load(
            &local(&["--listen-client-urls", "http://0.0.0.0:2379"]),
            &[],
        )
        .expect("config");
        assert_eq!(c.listen_client_urls[0].socket_host_port(), "0.0.0.0:2379");
    }

    #[test]
    fn member_must_be_in_initial_cluster() {
        let file = env_file(SEED);
        let path = path_of(&file);
        let err = load_err(&["--env-file", &path, "--name", "etcd04"], &[]);
        assert_eq!(
            err,
            "member \"etcd04\" is not in --initial-cluster \"etcd01=https://10.0.52.13:2380,etcd02=https://10.0.52.14:2380,etcd03=https://10.0.52.6:2380\""
        );
        let err = load_err(
            &["--env-file", &path],
            &[(
                "ETCD_INITIAL_ADVERTISE_PEER_URLS",
                "https://10.0.52.99:2380",
            )],
        );
        assert_eq!(
            err,
            "--initial-advertise-peer-urls \"https://10.0.52.99:2380\" does not match the entry of \"etcd01\" in --initial-cluster \"https://10.0.52.13:2380\""
        );
        // Only the name: the default initial cluster is the default member's.
        let err = load_err(
            &[
                "--initial-cluster",
                "default=http://localhost:2380",
                "--name",
                "x",
            ],
            &[],
        );
        assert_eq!(
            err,
            "member \"x\" is not in --initial-cluster \"default=http://localhost:2380\""
        );
    }

    #[test]
    fn several_peer_urls_per_member() {
        let c = Config::load(
            &args(&[
                "--name",
                "a",
                "--initial-advertise-peer-urls",
                "http://127.0.0.2:2380,http://127.0.0.1:2380",
                "--initial-cluster",
                "a=http://127.0.0.1:2380, b=http://127.0.0.3:2380 ,a=http://127.0.0.2:2380,",
            ]),
            &[],
        )
        .expect("config");
        assert_eq!(
            c.member_peer_urls(),
            vec![
                (
                    "a".to_string(),
                    vec![
                        "http://127.0.0.1:2380".to_string(),
                        "http://127.0.0.2:2380".to_string()
                    ]
                ),
                ("b".to_string(), vec!["http://127.0.0.3:2380".to_string()]),
            ]
        );
        // Missing one of the member's URLs.
        let err = load_err(
            &[
                "--name",
                "a",
                "--initial-advertise-peer-urls",
                "http://127.0.0.2:2380",
                "--initial-cluster",
                "a=http://127.0.0.1:2380,a=http://127.0.0.2:2380",
            ],
            &[],
        );
        assert_eq!(
            err,
            "--initial-advertise-peer-urls \"http://127.0.0.2:2380\" does not match the entry of \"a\" in --initial-cluster \"http://127.0.0.1:2380,http://127.0.0.2:2380\""
        );
        // One URL for two members.
        let err = load_err(
            &[
                "--initial-cluster",
                "default=http://localhost:2380,b=http://localhost:2380",
            ],
            &[],
        );
        assert_eq!(
            err,
            "--initial-cluster \"default=http://localhost:2380,b=http://localhost:2380\" lists the peer URL \"http://localhost:2380\" more than once"
        );
    }

    #[test]
    fn url_parsing() {
        let u = url("https://10.0.52.13:2380");
        assert_eq!(u.to_string(), "https://10.0.52.13:2380");
        assert!(u.is_https());
        assert_eq!(u.host(), &Host::Ipv4(Ipv4Addr::new(10, 0, 52, 13)));
        assert_eq!(u.port(), 2380);
        assert_eq!(u.socket_host_port(), "10.0.52.13:2380");
        assert_eq!(
            u.socket_addr(),
            Some("10.0.52.13:2380".parse().expect("addr"))
        );

        let u = url(" http://[::1]:2379 ");
        assert_eq!(u.to_string(), "http://[::1]:2379");
        assert_eq!(u.scheme(), Scheme::Http);
        assert_eq!(u.host(), &Host::Ipv6(Ipv6Addr::LOCALHOST));
        assert_eq!(u.socket_host_port(), "[::1]:2379");
        assert_eq!(u.socket_addr(), Some("[::1]:2379".parse().expect("addr")));

        let u = url("http://etcd-1.example.com:2380");
        assert_eq!(u.host(), &Host::Name("etcd-1.example.com".into()));
        assert_eq!(u.socket_host_port(), "etcd-1.example.com:2380");
        assert_eq!(u.socket_addr(), None);
        assert_eq!(
            url("HTTP://localhost:2380").to_string(),
            "http://localhost:2380"
        );

        for bad in [
            "localhost:2380",
            "ftp://localhost:2380",
            "unix://x:1",
            "http://localhost",
            "http://localhost:",
            "http://:2380",
            "http://localhost:2380/",
            "http://localhost:2380?x",
            "http://u@localhost:2380",
            "http://[::1:2380",
            "http://[::1]2380",
            "http://10.0.0.01:2380",
            "http://a..b:2380",
            "http://localhost:+80",
        ] {
            assert!(Url::parse(bad).is_err(), "{bad} parsed");
        }
    }

    #[test]
    fn compaction_retention() {
        let c = Config::load(&args(&["--auto-compaction-retention", "1"]), &[]).expect("config");
        assert_eq!(
            c.compaction_retention(),
            Some(CompactionRetention::Periodic(Duration::from_secs(3600)))
        );
        let c =
            Config::load(&args(&["--auto-compaction-retention", "1h30m"]), &[]).expect("config");
        assert_eq!(
            c.compaction_retention(),
            Some(CompactionRetention::Periodic(Duration::from_secs(5400)))
        );
        let c = Config::load(&args(&["--auto-compaction-retention=90s"]), &[]).expect("config");
        assert_eq!(
            c.compaction_retention(),
            Some(CompactionRetention::Periodic(Duration::from_secs(90)))
        );
        let c = Config::load(
            &args(&[
                "--auto-compaction-mode=revision",
                "--auto-compaction-retention=1000",
            ]),
            &[],
        )
        .expect("config");
        assert_eq!(c.auto_compaction_mode, CompactionMode::Revision);
        assert_eq!(
            c.compaction_retention(),
            Some(CompactionRetention::Revision(1000))
        );
    }
}
