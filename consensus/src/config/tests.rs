//! The configuration's tests: sources, precedence, every rule, and URL parsing.

use super::*;
use std::io::Write;
use std::net::{Ipv4Addr, Ipv6Addr};
use std::time::Duration;

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

/// What [`Config::from_process`] does with its arguments and environment: reads the env file
/// they name, then loads.
fn load(args: &[String], env: &[(String, String)]) -> Result<Config, ConfigError> {
    let text = sources::read_env_file_named(args)?;
    Config::load(args, env, text.as_deref())
}

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
    match load(&args(a), &env(e)) {
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
    match load(&local(extra), &[]) {
        Ok(c) => panic!("expected an error, got {c:?}"),
        Err(err) => err.to_string(),
    }
}

#[test]
fn seed_file() {
    let file = env_file(SEED);
    let path = path_of(&file);
    let c = load(&args(&["--env-file", &path]), &[]).expect("seed config");
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
        peer_cert_allowed_cn: vec![],
        peer_cert_allowed_hostname: vec![],
        heartbeat_interval: 100,
        election_timeout: 1000,
        max_request_bytes: 1_572_864,
        max_txn_ops: 128,
        snapshot_count: 10_000,
        snapshot_catchup_entries: 5_000,
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
    let c2 = load(&args(&[&format!("--env-file={path}")]), &[]).expect("seed");
    assert_eq!(c2, c);
}

#[test]
fn defaults() {
    let c = load(&[], &[]).expect("defaults");
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
    assert_eq!(c.snapshot_count, 10_000);
    assert_eq!(c.snapshot_catchup_entries, 5_000);
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
    let c = load(&args(&["--name", "abc"]), &[]).expect("config");
    assert_eq!(c.data_dir, PathBuf::from("abc.etcd"));
    assert_eq!(c.initial_cluster_string(), "abc=http://localhost:2380");
    let c = load(
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
    let c = load(
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
    let c = load(
        &args(&["--env-file", &path_of(&file)]),
        &env(&[("ETCD_NAME", "from-env")]),
    )
    .expect("config");
    assert_eq!(c.name, "from-env");

    // An empty variable does not override (as in etcd).
    let file = env_file("ETCD_NAME=\"n\"\nETCD_INITIAL_CLUSTER=\"n=http://localhost:2380\"\n");
    let c = load(
        &args(&["--env-file", &path_of(&file)]),
        &env(&[("ETCD_NAME", "")]),
    )
    .expect("config");
    assert_eq!(c.name, "n");

    // A later flag wins over an earlier one.
    let c = load(&args(&["--snapshot-count", "5", "--snapshot-count=6"]), &[]).expect("config");
    assert_eq!(c.snapshot_count, 6);
}

#[test]
fn log_compaction_knobs_as_in_etcd_3_6() {
    // Flags, either name of the catch-up setting, and 0 meaning the default (as etcd does).
    let c = load(
        &args(&["--snapshot-count", "1000", "--snapshot-catchup-entries=500"]),
        &[],
    )
    .expect("config");
    assert_eq!((c.snapshot_count, c.snapshot_catchup_entries), (1000, 500));
    let c = load(
        &args(&["--experimental-snapshot-catchup-entries", "7"]),
        &[],
    )
    .expect("config");
    assert_eq!(c.snapshot_catchup_entries, 7);
    let c = load(
        &args(&["--snapshot-count=0", "--snapshot-catchup-entries=0"]),
        &[],
    )
    .expect("config");
    assert_eq!(
        (c.snapshot_count, c.snapshot_catchup_entries),
        (10_000, 5_000)
    );
    // The environment, as every other setting.
    let c = load(
        &[],
        &env(&[
            ("ETCD_SNAPSHOT_COUNT", "300"),
            ("ETCD_SNAPSHOT_CATCHUP_ENTRIES", "30"),
        ]),
    )
    .expect("config");
    assert_eq!((c.snapshot_count, c.snapshot_catchup_entries), (300, 30));
    let c = load(
        &[],
        &env(&[("ETCD_EXPERIMENTAL_SNAPSHOT_CATCHUP_ENTRIES", "40")]),
    )
    .expect("config");
    assert_eq!(c.snapshot_catchup_entries, 40);
    // Both names at once: etcd 3.6's refusal, naming both.
    let err = load_err(
        &[
            "--snapshot-catchup-entries=1",
            "--experimental-snapshot-catchup-entries=2",
        ],
        &[],
    );
    assert_eq!(
        err,
        "cannot set --experimental-snapshot-catchup-entries \"2\" and \
         --snapshot-catchup-entries \"1\" at the same time, please use \
         --snapshot-catchup-entries only"
    );
}

#[test]
fn bool_flags() {
    let c = load(
        &args(&["--client-cert-auth", "--peer-client-cert-auth"]),
        &[],
    )
    .expect("config");
    assert!(c.client_cert_auth && c.peer_client_cert_auth);
    let c = load(
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
    let c = load(&args(&["--print-data-dir", "--name", "x"]), &[]).expect("config");
    assert!(c.print_data_dir);
    assert_eq!(c.data_dir, PathBuf::from("x.etcd"));
    // One dash, as Go's flag package allows.
    let c = load(&args(&["-name", "y"]), &[]).expect("config");
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
    let c = load(&args(&["--env-file", &path]), &[]).expect("config");
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

    let c = load(&[], &env(&[("ETCD_UNHEARD_OF", "1")])).expect("config");
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
        ("snapshot-count", "-1", "integer"),
        ("snapshot-catchup-entries", "5k", "integer"),
        ("experimental-snapshot-catchup-entries", "lots", "integer"),
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
    let c = load(
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
    let c = load(
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

/// `--peer-cert-allowed-cn` and `--peer-cert-allowed-hostname` from every source, as etcd 3.5's
/// comma-separated lists, and etcd's rule that they exclude each other.
#[test]
fn peer_cert_allowed_cn_and_hostname() {
    let peer_tls = [
        "--peer-cert-file",
        "c.pem",
        "--peer-key-file",
        "k.pem",
        "--peer-trusted-ca-file",
        "ca.pem",
    ];
    let with_tls = |extra: &[&str]| {
        let mut all = peer_tls.to_vec();
        all.extend_from_slice(extra);
        local(&all)
    };
    // Flags, lists trimmed.
    let c = load(
        &with_tls(&["--peer-cert-allowed-cn", "etcd-peer, other ,"]),
        &[],
    )
    .unwrap();
    assert_eq!(c.peer_cert_allowed_cn, vec!["etcd-peer", "other"]);
    assert!(c.peer_cert_allowed_hostname.is_empty());
    assert!(c.warnings.is_empty(), "{:?}", c.warnings);
    let c = load(
        &with_tls(&["--peer-cert-allowed-hostname=peer1.example.com"]),
        &[],
    )
    .unwrap();
    assert_eq!(c.peer_cert_allowed_hostname, vec!["peer1.example.com"]);
    // The environment, and the env file under it.
    let c = load(
        &with_tls(&[]),
        &env(&[("ETCD_PEER_CERT_ALLOWED_HOSTNAME", "10.0.0.1,[::1],n2.")]),
    )
    .unwrap();
    assert_eq!(
        c.peer_cert_allowed_hostname,
        vec!["10.0.0.1", "[::1]", "n2."]
    );
    let file = env_file("ETCD_PEER_CERT_ALLOWED_CN=\"from-file\"\n");
    let mut a = with_tls(&[]);
    a.extend(args(&["--env-file", &path_of(&file)]));
    let c = load(&a, &[]).unwrap();
    assert_eq!(c.peer_cert_allowed_cn, vec!["from-file"]);
    let c = load(&a, &env(&[("ETCD_PEER_CERT_ALLOWED_CN", "from-env")])).unwrap();
    assert_eq!(c.peer_cert_allowed_cn, vec!["from-env"]);

    // Both at once: etcd stops ("mutually exclusive"), naming both values.
    let err = match load(
        &with_tls(&[
            "--peer-cert-allowed-cn",
            "a",
            "--peer-cert-allowed-hostname",
            "b",
        ]),
        &[],
    ) {
        Err(e) => e.to_string(),
        Ok(c) => panic!("expected an error, got {c:?}"),
    };
    assert_eq!(
        err,
        "--peer-cert-allowed-cn \"a\" and --peer-cert-allowed-hostname \"b\" cannot both be set \
         (etcd: mutually exclusive)"
    );
    // A hostname no certificate can carry.
    let err = match load(&with_tls(&["--peer-cert-allowed-hostname", "a b"]), &[]) {
        Err(e) => e.to_string(),
        Ok(c) => panic!("expected an error, got {c:?}"),
    };
    assert!(
        err.starts_with("invalid value \"a b\" for --peer-cert-allowed-hostname (ETCD_PEER_CERT_ALLOWED_HOSTNAME)"),
        "{err}"
    );

    // Without peer TLS etcd never reads them: a warning each, and no error for both.
    let c = load(
        &local(&[
            "--peer-cert-allowed-cn",
            "a",
            "--peer-cert-allowed-hostname",
            "b",
        ]),
        &[],
    )
    .unwrap();
    assert_eq!(c.warnings.len(), 2, "{:?}", c.warnings);
    assert!(
        c.warnings[0]
            .starts_with("--peer-cert-allowed-cn \"a\" (ETCD_PEER_CERT_ALLOWED_CN) has no effect")
    );
    assert!(c.warnings[1].contains("--peer-cert-allowed-hostname \"b\""));
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
    let c = load(
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
    let c = load(
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
    let c = load(&args(&["--auto-compaction-retention", "1"]), &[]).expect("config");
    assert_eq!(
        c.compaction_retention(),
        Some(CompactionRetention::Periodic(Duration::from_secs(3600)))
    );
    let c = load(&args(&["--auto-compaction-retention", "1h30m"]), &[]).expect("config");
    assert_eq!(
        c.compaction_retention(),
        Some(CompactionRetention::Periodic(Duration::from_secs(5400)))
    );
    let c = load(&args(&["--auto-compaction-retention=90s"]), &[]).expect("config");
    assert_eq!(
        c.compaction_retention(),
        Some(CompactionRetention::Periodic(Duration::from_secs(90)))
    );
    let c = load(
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
