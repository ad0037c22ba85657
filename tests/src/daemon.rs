//! A running `l3lb` under test: started with its log captured to a file, searched by polling,
//! and killed on drop so a failing test leaves no daemon behind.
use std::{
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    time::Duration,
};

use crate::wait_until;

/// `target/<profile>/l3lb`, found from the running test (`target/<profile>/deps/…`) or tool
/// (`target/<profile>/…`).
pub fn l3lb_binary() -> PathBuf {
    built_binary("l3lb", "-p l3lb").unwrap_or_else(|err| panic!("{err}"))
}

/// `target/<profile>/lab-pod`, the lab pods' HTTP server.
pub fn pod_binary() -> PathBuf {
    built_binary("lab-pod", "-p l3lb-tests --bins").unwrap_or_else(|err| panic!("{err}"))
}

/// `target/<profile>/NAME`, or an error that says how to build it (`cargo build PACKAGE`, with
/// `--release` when the caller is a release build).
pub fn built_binary(name: &str, package: &str) -> Result<PathBuf, String> {
    let exe = std::env::current_exe()
        .map_err(|err| format!("finding the path of the running executable: {err}"))?;
    exe.ancestors()
        .skip(1)
        .take(2)
        .map(|dir| dir.join(name))
        .find(|candidate| candidate.is_file())
        .ok_or_else(|| {
            let release = exe.ancestors().any(|dir| dir.ends_with("release"));
            format!(
                "{name} is not built next to {}: run `cargo build{} {package}`",
                exe.display(),
                if release { " --release" } else { "" }
            )
        })
}

pub struct L3lb {
    child: Option<Child>,
    log: PathBuf,
}

impl L3lb {
    /// Starts `command` (an `l3lb …` command line, possibly behind `nsenter`) with stdout and
    /// stderr appended to `log`.
    pub fn spawn(mut command: Command, log: PathBuf) -> L3lb {
        let file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log)
            .unwrap_or_else(|err| panic!("opening {}: {err}", log.display()));
        let child = command
            .env(
                "RUST_LOG",
                std::env::var("RUST_LOG").unwrap_or_else(|_| "info".into()),
            )
            .env_remove("RUST_BACKTRACE")
            .stdin(Stdio::null())
            .stdout(file.try_clone().expect("dup log fd"))
            .stderr(file)
            .spawn()
            .unwrap_or_else(|err| panic!("starting {command:?}: {err}"));
        L3lb {
            child: Some(child),
            log,
        }
    }

    pub fn pid(&self) -> u32 {
        self.child.as_ref().map(Child::id).unwrap_or_default()
    }

    /// Everything it logged so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Waits until the log contains `needle`; panics with the log when it does not in time.
    pub fn wait_for_log(&self, needle: &str, deadline: Duration) {
        let found = wait_until(deadline, || self.log().contains(needle));
        assert!(
            found,
            "l3lb never logged {needle:?}; its log:\n{}",
            self.log()
        );
    }

    /// How often the log contains `needle`.
    pub fn log_count(&self, needle: &str) -> usize {
        self.log().matches(needle).count()
    }

    /// `GET path` on the daemon's HTTP endpoint at `addr` (from the caller's network namespace):
    /// the status code and body, or `None` when nothing answers.
    pub fn get(addr: &str, path: &str) -> Option<(u16, String)> {
        l3lb::status_client::get(addr.parse().ok()?, path).ok()
    }

    /// The daemon on `node` with the kube source against the API server in `kubeconfig`, the
    /// test prefixes (10.0.100.0/24, 2001:db8:100::/64) on `interface`, a 2 s lease in
    /// `l3lb-system` and its HTTP endpoint on `metrics`.
    pub fn kube(
        node: &str,
        interface: &str,
        kubeconfig: &Path,
        metrics: &str,
        log: PathBuf,
    ) -> L3lb {
        let mut command = Command::new(l3lb_binary());
        command.args(["run", "--metrics-addr", metrics, "--node-name", node]);
        command.args(["--prefix", "10.0.100.0/24,2001:db8:100::/64"]);
        command.args(["--interface", interface, "--source", "kube", "--kubeconfig"]);
        command.arg(kubeconfig);
        command.args(["--lease-namespace", "l3lb-system", "--lease-duration", "2s"]);
        L3lb::spawn(command, log)
    }

    /// The value of one sample (name with labels, as exposed) on `/metrics` at `addr`.
    pub fn metric(addr: &str, sample: &str) -> Option<f64> {
        let (_, body) = L3lb::get(addr, "/metrics")?;
        body.lines().find_map(|line| {
            line.strip_prefix(sample)?
                .strip_prefix(' ')?
                .trim()
                .parse()
                .ok()
        })
    }

    /// SIGTERM, then waits for a clean exit; returns whether it exited successfully.
    pub fn terminate(&mut self) -> bool {
        let Some(mut child) = self.child.take() else {
            return false;
        };
        // SAFETY: plain kill(2) on our own child's pid.
        unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
        let exited = wait_until(Duration::from_secs(10), || {
            matches!(child.try_wait(), Ok(Some(_)))
        });
        if !exited {
            let _ = child.kill();
        }
        child.wait().map(|status| status.success()).unwrap_or(false)
    }

    /// SIGKILL: a crash, leaving whatever it had announced behind.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

impl Drop for L3lb {
    fn drop(&mut self) {
        self.kill();
    }
}
