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
//! [`Config::load`] is pure: it takes the arguments, the environment and the env file's text as
//! parameters, and returns what it ignored in [`Config::warnings`] instead of logging it (it runs
//! before logging is set up). [`Config::from_process`] feeds it the real ones, reading the file.
//!
//! The parts: `sources` (the settings we read, the command line, the env file), `values` (how
//! one setting reads), `url` (member URLs); this module merges them into a [`Config`] and checks
//! the rules between settings.

mod sources;
#[cfg(test)]
mod tests;
mod url;
mod values;

use std::collections::{HashMap, HashSet};
use std::path::PathBuf;

use sources::{Raw, parse_env_file, parse_flags, setting_for_env_key};
use url::join_urls;
pub use url::{Host, Scheme, Url, UrlError};
pub use values::{ClusterState, CompactionMode, CompactionRetention};
use values::{parse_initial_cluster, parse_retention, render_initial_cluster};

/// etcd's upper bound on `--election-timeout`, in milliseconds.
const MAX_ELECTION_TIMEOUT_MS: u64 = 50_000;

/// etcd 3.6's `--snapshot-count` default.
pub const DEFAULT_SNAPSHOT_COUNT: u64 = 10_000;
/// etcd 3.6's `--snapshot-catchup-entries` default.
pub const DEFAULT_SNAPSHOT_CATCHUP_ENTRIES: u64 = 5_000;

/// `--snapshot-catchup-entries`, or its deprecated `--experimental-` name; both at once is an
/// error, as in etcd 3.6.
fn snapshot_catchup_entries(raw: &Raw) -> Result<u64, ConfigError> {
    const NEW: &str = "snapshot-catchup-entries";
    const OLD: &str = "experimental-snapshot-catchup-entries";
    let n = match (raw.get(NEW), raw.get(OLD)) {
        (Some(new), Some(old)) => {
            return Err(ConfigError::Inconsistent(format!(
                "cannot set --{OLD} {old:?} and --{NEW} {new:?} at the same time, please use \
                 --{NEW} only"
            )));
        }
        (_, Some(_)) => raw.u64_or(OLD, DEFAULT_SNAPSHOT_CATCHUP_ENTRIES)?,
        _ => raw.u64_or(NEW, DEFAULT_SNAPSHOT_CATCHUP_ENTRIES)?,
    };
    Ok(if n == 0 {
        DEFAULT_SNAPSHOT_CATCHUP_ENTRIES
    } else {
        n
    })
}

/// The log levels etcd accepts for `--log-level`.
const LOG_LEVELS: &[&str] = &["debug", "info", "warn", "error", "dpanic", "panic", "fatal"];

/// What `--config-file` and `ETCD_CONFIG_FILE` get instead of a YAML parser.
const CONFIG_FILE_HINT: &str =
    "(YAML) is not supported; use --env-file with etcd.conf KEY=\"value\" lines";

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

/// Whether `name` can match a certificate: an IP address (IPv6 bracketed or not) or a DNS name
/// of letters, digits, `-` and `_` labels (a trailing dot allowed), as Go's `VerifyHostname` takes.
fn is_hostname_or_ip(name: &str) -> bool {
    let bare = name
        .strip_prefix('[')
        .and_then(|n| n.strip_suffix(']'))
        .unwrap_or(name);
    if bare.parse::<std::net::IpAddr>().is_ok() {
        return true;
    }
    let name = name.strip_suffix('.').unwrap_or(name);
    name.len() <= 253
        && name.split('.').all(|label| {
            (1..=63).contains(&label.len())
                && label
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        })
}

fn invalid(flag: &'static str, value: &str, reason: impl Into<String>) -> ConfigError {
    ConfigError::InvalidValue {
        flag,
        env: env_name(flag),
        value: value.to_string(),
        reason: reason.into(),
    }
}

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
    /// `--peer-cert-allowed-cn`: a peer's certificate must have one of these subject CNs
    /// (etcd 3.5's comma-separated list; etcd 3.4 took a single value). Empty: no restriction.
    pub peer_cert_allowed_cn: Vec<String>,
    /// `--peer-cert-allowed-hostname`: a peer's certificate must be valid for one of these
    /// hostnames or IP addresses (its SANs). At most one of this and `peer_cert_allowed_cn`.
    pub peer_cert_allowed_hostname: Vec<String>,
    /// `--heartbeat-interval`, in milliseconds (`100`).
    pub heartbeat_interval: u64,
    /// `--election-timeout`, in milliseconds (`1000`).
    pub election_timeout: u64,
    /// `--max-request-bytes` (`1572864`).
    pub max_request_bytes: u64,
    /// `--max-txn-ops` (`128`).
    pub max_txn_ops: u64,
    /// `--snapshot-count` (`10000`, etcd 3.6's; 0 means the default, as in etcd): the raft log
    /// is compacted once more entries than this were applied since the last compaction.
    pub snapshot_count: u64,
    /// `--snapshot-catchup-entries`, or etcd 3.6's deprecated
    /// `--experimental-snapshot-catchup-entries` (`5000`; 0 means the default, as in etcd):
    /// applied entries a compaction keeps for followers that lag.
    pub snapshot_catchup_entries: u64,
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
    /// What was ignored (unknown `ETCD_*` keys, non-`ETCD_` keys in the env file), for the caller
    /// to log once logging is set up (loading logs nothing).
    pub warnings: Vec<String>,
}

impl Config {
    /// Reads the configuration from the process's command line (without the program name), its
    /// environment and the file `--env-file` names. See [`Config::load`].
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
        let env_file = sources::read_env_file_named(&args)?;
        Config::load(&args, &env, env_file.as_deref())
    }

    /// Builds and validates the configuration from `args` (the command line WITHOUT the program
    /// name, e.g. `std::env::args().skip(1)`), `env` (the process's environment; only `ETCD_*`
    /// variables are read) and `env_file`, the text of the file `--env-file` names, read by the
    /// caller (needed with `--env-file`, ignored without it). Precedence: `--env-file` < `ETCD_*`
    /// variables < flags.
    pub fn load(
        args: &[String],
        env: &[(String, String)],
        env_file: Option<&str>,
    ) -> Result<Config, ConfigError> {
        let flags = parse_flags(args)?;
        let mut warnings = Vec::new();
        let mut values: HashMap<&'static str, String> = HashMap::new();

        // 1. The env file.
        if let Some(path) = &flags.env_file {
            let text = env_file.ok_or_else(|| ConfigError::ReadEnvFile {
                path: path.clone(),
                reason: "its text was not given to Config::load".to_string(),
            })?;
            for entry in parse_env_file(path, text)? {
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

        let raw = Raw { values };
        let mut config = Config::from_raw(&raw)?;
        config.print_data_dir = flags.print_data_dir;
        config.env_file = flags.env_file.map(PathBuf::from);
        config.warnings = warnings;
        config.validate(&raw)?;
        config.warn_about_peer_security();
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
            peer_cert_allowed_cn: raw.list("peer-cert-allowed-cn"),
            peer_cert_allowed_hostname: raw.list("peer-cert-allowed-hostname"),
            heartbeat_interval: raw.u64_or("heartbeat-interval", 100)?,
            election_timeout: raw.u64_or("election-timeout", 1000)?,
            max_request_bytes: raw.u64_or("max-request-bytes", 1_572_864)?,
            max_txn_ops: raw.u64_or("max-txn-ops", 128)?,
            snapshot_count: match raw.u64_or("snapshot-count", DEFAULT_SNAPSHOT_COUNT)? {
                0 => DEFAULT_SNAPSHOT_COUNT,
                n => n,
            },
            snapshot_catchup_entries: snapshot_catchup_entries(raw)?,
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

        // etcd refuses both restrictions at once when it builds its peer TLS config, that is,
        // with a peer certificate; without one it never reads them (a warning here).
        if peer_tls
            && !self.peer_cert_allowed_cn.is_empty()
            && !self.peer_cert_allowed_hostname.is_empty()
        {
            return Err(ConfigError::Inconsistent(format!(
                "--peer-cert-allowed-cn {:?} and --peer-cert-allowed-hostname {:?} cannot both be \
                 set (etcd: mutually exclusive)",
                self.peer_cert_allowed_cn.join(","),
                self.peer_cert_allowed_hostname.join(",")
            )));
        }
        for name in &self.peer_cert_allowed_hostname {
            if !is_hostname_or_ip(name) {
                return Err(invalid(
                    "peer-cert-allowed-hostname",
                    &self.peer_cert_allowed_hostname.join(","),
                    format!("{name:?} is neither a hostname nor an IP address"),
                ));
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

    /// Warnings (in [`Config::warnings`]) for peer security settings that have no effect.
    fn warn_about_peer_security(&mut self) {
        let peer_tls = self.peer_cert_file.is_some() && self.peer_key_file.is_some();
        if peer_tls {
            return;
        }
        for (flag, values) in [
            ("peer-cert-allowed-cn", &self.peer_cert_allowed_cn),
            (
                "peer-cert-allowed-hostname",
                &self.peer_cert_allowed_hostname,
            ),
        ] {
            if !values.is_empty() {
                self.warnings.push(format!(
                    "--{flag} {:?} ({}) has no effect without --peer-cert-file and \
                     --peer-key-file: peers present no certificate to check (etcd ignores it too)",
                    values.join(","),
                    env_name(flag)
                ));
            }
        }
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
