//! Bad input from outside the process: configuration that stops consensus with one line, and a
//! gateway that speaks another protocol version, which is refused while consensus keeps serving.

use std::process::{Command, Stdio};
use std::time::Duration;

use schema::member_capnp::client_registrar;

use crate::support::*;

fn consensus(args: &[&str], env: &[(&str, &str)]) -> std::process::Output {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_consensus"));
    cmd.args(args).env_clear().env("PATH", "/usr/bin:/bin");
    for (k, v) in env {
        cmd.env(k, v);
    }
    cmd.output().unwrap()
}

/// consensus alone as a one-member cluster on `data`, its log to `stderr`. It binds only its Unix
/// sockets, so no port is used.
fn solo_consensus(
    data: &std::path::Path,
    stderr: Stdio,
    env: &[(&str, &str)],
) -> std::process::Child {
    Command::new(env!("CARGO_BIN_EXE_consensus"))
        .envs(env.iter().copied())
        .args([
            "--name=solo",
            &format!("--data-dir={}", data.display()),
            "--initial-advertise-peer-urls=http://127.0.0.1:2380",
            "--initial-cluster=solo=http://127.0.0.1:2380",
        ])
        .env("RUST_LOG", "info")
        .stdout(Stdio::null())
        .stderr(stderr)
        .spawn()
        .unwrap()
}

fn one_line_error(out: &std::process::Output) -> String {
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    let err = String::from_utf8_lossy(&out.stderr).trim().to_string();
    assert_eq!(err.lines().count(), 1, "not one line: {err}");
    err
}

#[test]
fn configuration_errors_stop_consensus_with_one_line() {
    let tmp = tempfile::tempdir().unwrap();
    let conf = tmp.path().join("etcd.conf");
    std::fs::write(
        &conf,
        "#[Member]\nETCD_NAME=\"etcd01\"\nthis is not a setting\n",
    )
    .unwrap();
    let err = one_line_error(&consensus(&["--env-file", conf.to_str().unwrap()], &[]));
    assert!(
        err.contains("etcd.conf:3") && err.contains("this is not a setting"),
        "{err}"
    );

    let err = one_line_error(&consensus(
        &[
            "--name=etcd04",
            "--initial-cluster=etcd01=http://127.0.0.1:2380",
        ],
        &[],
    ));
    assert!(
        err.contains("etcd04") && err.contains("etcd01=http://127.0.0.1:2380"),
        "{err}"
    );

    let err = one_line_error(&consensus(
        &[
            "--name=etcd01",
            "--initial-advertise-peer-urls=http://127.0.0.9:2380",
            "--initial-cluster=etcd01=http://127.0.0.1:2380",
        ],
        &[],
    ));
    assert!(
        err.contains("http://127.0.0.9:2380") && err.contains("http://127.0.0.1:2380"),
        "{err}"
    );

    // Environment variables are read too, and a bad value names the field and the value.
    let err = one_line_error(&consensus(&[], &[("ETCD_HEARTBEAT_INTERVAL", "soon")]));
    assert!(
        err.contains("heartbeat-interval") && err.contains("soon"),
        "{err}"
    );
}

#[test]
fn gateway_with_another_protocol_version_is_refused() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("m");
    let mut child = solo_consensus(&data, Stdio::null(), &[]);
    let socket = schema::client_socket(&data);
    eventually(Duration::from_secs(10), "client.sock", || {
        socket.exists().then_some(())
    });

    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let local = tokio::task::LocalSet::new();
    let (refused, member_id) = local.block_on(&rt, async {
        let (registrar, _done) = schema::dial::<client_registrar::Client>(&socket)
            .await
            .unwrap();
        let mut req = registrar.register_request();
        req.get().set_version(schema::PROTOCOL_VERSION + 98);
        let refused = match req.send().promise.await {
            Ok(_) => String::new(),
            Err(e) => e.to_string(),
        };
        // The same consensus still serves a gateway that speaks its version.
        let (registrar, _done) = schema::dial::<client_registrar::Client>(&socket)
            .await
            .unwrap();
        let mut req = registrar.register_request();
        req.get().set_version(schema::PROTOCOL_VERSION);
        let reply = req.send().promise.await.unwrap();
        let id = reply.get().unwrap().get_identity().unwrap().get_member_id();
        // Since protocol 3 writes go on write.sock; the plane says so instead of writing.
        let plane = reply.get().unwrap().get_plane().unwrap();
        let mut put = plane.put_request();
        put.get().init_request().set_key(b"k");
        let answer = put.send().promise.await.unwrap();
        let status = answer.get().unwrap().get_error().unwrap();
        assert_eq!(status.get_code(), schema::code::UNIMPLEMENTED);
        assert!(
            status
                .get_message()
                .unwrap()
                .to_str()
                .unwrap()
                .contains("write.sock"),
            "{:?}",
            status.get_message()
        );
        (refused, id)
    });
    let _ = nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(child.id() as i32),
        nix::sys::signal::Signal::SIGTERM,
    );
    let _ = child.wait();
    assert!(
        refused.contains(&format!(
            "protocol version {} is not supported",
            schema::PROTOCOL_VERSION + 98
        )),
        "refusal: {refused:?}"
    );
    assert_eq!(
        member_id,
        consensus::ids::member_id(&["http://127.0.0.1:2380".into()], "etcd-cluster")
    );
}

/// A data dir still locked by another consensus (a killed one that the kernel has not finished
/// with yet) makes a new one wait for the lock instead of failing at once; once the lock is free
/// it starts normally.
#[test]
fn a_locked_data_dir_is_waited_for() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("m");
    std::fs::create_dir_all(&data).unwrap();
    let lock_file = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(data.join("consensus.lock"))
        .unwrap();
    let held = nix::fcntl::Flock::lock(lock_file, nix::fcntl::FlockArg::LockExclusiveNonblock)
        .map_err(|(_, e)| e)
        .unwrap();
    let log = tmp.path().join("consensus.log");
    let mut child = solo_consensus(&data, std::fs::File::create(&log).unwrap().into(), &[]);
    let logged = |what: &str| std::fs::read_to_string(&log).is_ok_and(|t| t.contains(what));
    eventually(
        Duration::from_secs(10),
        "consensus to wait for the lock",
        || logged("waiting up to").then_some(()),
    );
    std::thread::sleep(Duration::from_millis(300));
    assert!(
        !schema::client_socket(&data).exists(),
        "consensus started while the data dir was locked"
    );
    assert!(
        child.try_wait().unwrap().is_none(),
        "consensus gave up at once"
    );
    drop(held);
    eventually(
        Duration::from_secs(10),
        "consensus to start once the lock is free",
        || logged("consensus is ready").then_some(()),
    );
    let _ = nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(child.id() as i32),
        nix::sys::signal::Signal::SIGTERM,
    );
    let status = child.wait().unwrap();
    assert!(status.success(), "{status:?}");
}

/// A panic on one of consensus's threads stops the whole process (fail-stop), so that its
/// supervisor restarts it, instead of leaving it up without a raft thread, holding the data dir.
#[test]
fn a_panic_on_the_raft_thread_stops_consensus() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("m");
    let log = tmp.path().join("consensus.log");
    let mut child = solo_consensus(
        &data,
        std::fs::File::create(&log).unwrap().into(),
        &[(schema::failpoint::RAFT_THREAD_PANIC, "1")],
    );
    let exited = eventually(Duration::from_secs(10), "consensus to stop", || {
        child.try_wait().unwrap()
    });
    assert!(!exited.success(), "{exited:?}");
    let text = std::fs::read_to_string(&log).unwrap();
    assert!(text.contains("panicked"), "{text}");
}
