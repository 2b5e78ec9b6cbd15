//! How a member's processes stay tied to their supervisor (`scripts/start-node.sh`), so that a
//! killed supervisor never leaves one behind holding the member's ports or data dir.

/// Makes a panic on any thread end the whole process (fail-stop), after the usual report: a
/// process with a dead thread would otherwise stay up, holding its sockets and data dir while it
/// no longer does its work, and its supervisor would never restart it. Called first thing in
/// each binary's `main`; independent of the build profile's `panic` setting.
pub fn fail_stop_on_panic() {
    let report = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        report(info);
        eprintln!("a thread panicked: stopping the process so that it is restarted");
        std::process::abort();
    }));
}

/// The supervisor's PID, which start-node.sh gives each process it starts.
pub const SUPERVISOR_PID_ENV: &str = "ETCDRS_SUPERVISOR_PID";

/// Asks the kernel for SIGTERM when the parent dies, even by SIGKILL. That request only covers a
/// parent alive when it is made: a supervisor killed between starting this process and now sends
/// nothing. So when `ETCDRS_SUPERVISOR_PID` names the supervisor and it is no longer the parent,
/// this returns why the process must not start.
pub fn stop_with_supervisor() -> Result<(), String> {
    let _ = nix::sys::prctl::set_pdeathsig(nix::sys::signal::Signal::SIGTERM);
    let Ok(value) = std::env::var(SUPERVISOR_PID_ENV) else {
        return Ok(());
    };
    let Ok(pid) = value.trim().parse::<i32>() else {
        return Err(format!(
            "{SUPERVISOR_PID_ENV}={value:?} is not a process ID"
        ));
    };
    let parent = nix::unistd::getppid().as_raw();
    if parent != pid {
        return Err(format!(
            "its supervisor (pid {pid}) is gone (the parent is now pid {parent}); not starting"
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::process::Command;

    /// The check runs in a child process (this test binary again), with the variable set.
    #[test]
    fn a_process_whose_supervisor_is_gone_does_not_start() {
        if let Ok(expect) = std::env::var("SUPERVISOR_TEST_EXPECT") {
            let result = stop_with_supervisor();
            assert_eq!(result.is_ok(), expect == "ok", "{result:?}");
            return;
        }
        let me = std::env::current_exe().unwrap();
        let run = |supervisor: String, expect: &str| {
            let status = Command::new(&me)
                .args([
                    "--exact",
                    "supervisor::tests::a_process_whose_supervisor_is_gone_does_not_start",
                ])
                .env(SUPERVISOR_PID_ENV, supervisor)
                .env("SUPERVISOR_TEST_EXPECT", expect)
                .stdout(std::process::Stdio::null())
                .stderr(std::process::Stdio::null())
                .status()
                .unwrap();
            assert!(status.success(), "supervisor check expected {expect}");
        };
        // This process is the child's parent: the supervisor is there.
        run(std::process::id().to_string(), "ok");
        // A PID that is not the parent: the supervisor is gone.
        run("1".into(), "refused");
        run("soon".into(), "refused");
    }
}
