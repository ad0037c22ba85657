//! A node: its namespace, its directory (FRR files, the l3lb log) and its l3lb daemon.
use std::{
    fs::{self, OpenOptions},
    io::{Read as _, Seek as _, SeekFrom, Write as _},
    net::IpAddr,
    path::{Path, PathBuf},
    process::{Child, ExitStatus},
    sync::atomic::AtomicBool,
    time::{Duration, Instant},
};

use super::{
    LabError, SERVICE_PREFIXES,
    process::{describe, poll, signal, spawn_logged, tail},
    topology::node_name,
};
use crate::netns::NetNs;

pub(super) struct Node {
    pub name: String,
    pub ns: NetNs,
    /// FRR files and the l3lb log.
    pub dir: PathBuf,
    l3lb: Option<Child>,
    log: PathBuf,
    /// How far `new_log_lines` has read.
    log_offset: u64,
}

/// How every node runs l3lb.
pub(super) struct L3lbCommand<'a> {
    pub binary: &'a Path,
    pub extra_args: &'a [String],
    pub manifests: &'a Path,
    /// With the fast path: where the node's l3lb pins its maps and links.
    pub pin_root: Option<&'a Path>,
    /// `--weights endpoints` (the node's FRR has weights.conf).
    pub weights: bool,
    pub cancel: Option<&'static AtomicBool>,
}

/// What l3lb logs once its fast path is attached and its maps are pinned.
const FAST_PATH_READY: &str = "fast path ready";

impl Node {
    /// Node `index` of lab `lab`: namespace `<lab>-node-x` and directory `<lab_dir>/node-x`.
    pub fn new(lab: &str, index: usize, lab_dir: &Path) -> Node {
        let name = node_name(index);
        let ns = NetNs::named(&format!("{lab}-{name}"));
        let dir = lab_dir.join(&name);
        fs::create_dir(&dir).expect("creating the node's directory");
        Node {
            log: dir.join("l3lb.log"),
            name,
            ns,
            dir,
            l3lb: None,
            log_offset: 0,
        }
    }

    /// Starts l3lb (again), logging to the node's log file, and waits until it has started (and,
    /// with the fast path, until that is attached: until then service traffic would reach the
    /// node's own stack).
    pub fn start_l3lb(&mut self, how: &L3lbCommand<'_>) -> Result<(), LabError> {
        assert!(self.l3lb.is_none(), "l3lb already runs on {}", self.name);
        let prefixes = SERVICE_PREFIXES.join(",");
        let source = format!("file:{}", how.manifests.display());
        let mut log = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)
            .expect("opening the l3lb log");
        let mut command = self.ns.command(&how.binary.to_string_lossy());
        command
            .args(["run", "--node-name", &self.name, "--prefix", &prefixes])
            .args(["--interface", "lo", "--source", &source]);
        if how.weights {
            command.args(["--weights", "endpoints"]);
        }
        if let Some(pin_root) = how.pin_root {
            command
                .args(["--xdp", "--xdp-iface", "uplink", "--pin-root"])
                .arg(pin_root);
        }
        command.args(how.extra_args).env("NO_COLOR", "1");
        writeln!(log, "==> lab: {}", describe(&command)).expect("writing the l3lb log");
        let started_at = log.metadata().map(|meta| meta.len()).unwrap_or(0);
        self.l3lb = Some(spawn_logged(&mut command, &log));
        let name = self.name.clone();
        poll(how.cancel, Duration::from_secs(10), || {
            let child = self.l3lb.as_mut().expect("just started");
            if let Some(status) = child.try_wait().expect("waiting for l3lb") {
                self.l3lb = None;
                return Some(Err(LabError::Failed(format!(
                    "l3lb on {name} exited at once ({status}):\n{}",
                    tail(&self.log, 30)
                ))));
            }
            let since_start = since(&self.log, started_at);
            let started = match how.pin_root {
                Some(_) => since_start.contains(FAST_PATH_READY),
                None => !since_start.is_empty(),
            };
            started.then_some(Ok(()))
        })
        .map_err(|err| match err {
            LabError::Timeout(_) => LabError::Timeout(format!(
                "l3lb on {name} did not log {:?} within 10 s:\n{}",
                if how.pin_root.is_some() {
                    FAST_PATH_READY
                } else {
                    "anything"
                },
                tail(&self.log, 30)
            )),
            other => other,
        })?
    }

    /// Stops l3lb with SIGTERM and waits for it to exit.
    pub fn stop_l3lb(&mut self) -> Result<ExitStatus, LabError> {
        let Some(mut child) = self.l3lb.take() else {
            return Err(LabError::Failed(format!(
                "l3lb on {} is not running",
                self.name
            )));
        };
        signal(child.id() as i32, libc::SIGTERM);
        let give_up = Instant::now() + Duration::from_secs(10);
        loop {
            if let Some(status) = child.try_wait().expect("waiting for l3lb") {
                return Ok(status);
            }
            if Instant::now() >= give_up {
                let _ = child.kill();
                let _ = child.wait();
                return Err(LabError::Timeout(format!(
                    "l3lb on {} did not exit within 10 s of SIGTERM (killed)",
                    self.name
                )));
            }
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    /// SIGKILL to l3lb, reaped.
    pub fn kill_l3lb(&mut self) -> Result<(), LabError> {
        let Some(mut child) = self.l3lb.take() else {
            return Err(LabError::Failed(format!(
                "l3lb on {} is not running",
                self.name
            )));
        };
        let _ = child.kill();
        child
            .wait()
            .map(drop)
            .map_err(|err| LabError::Failed(format!("reaping l3lb on {}: {err}", self.name)))
    }

    pub fn l3lb_pid(&mut self) -> Option<u32> {
        self.l3lb_running()
            .then(|| self.l3lb.as_ref().map(|child| child.id()))
            .flatten()
    }

    pub fn l3lb_running(&mut self) -> bool {
        self.l3lb
            .as_mut()
            .is_some_and(|child| child.try_wait().ok().flatten().is_none())
    }

    /// The l3lb process, for reaping at teardown.
    pub fn l3lb_child(&mut self) -> Option<&mut Child> {
        self.l3lb.as_mut()
    }

    /// The whole l3lb log.
    pub fn log(&self) -> String {
        fs::read_to_string(&self.log).unwrap_or_default()
    }

    pub fn log_tail(&self, lines: usize) -> String {
        tail(&self.log, lines)
    }

    /// The lines l3lb logged since the last call.
    pub fn new_log_lines(&mut self) -> Vec<String> {
        let text = since(&self.log, self.log_offset);
        // Only whole lines; a line being written is read next time.
        let complete = text.rfind('\n').map_or(0, |end| end + 1);
        self.log_offset += complete as u64;
        text[..complete].lines().map(str::to_owned).collect()
    }

    /// The addresses on `lo` besides loopback ones: the service IPs l3lb holds there.
    pub fn addresses(&self) -> Vec<IpAddr> {
        let json = self.ns.ip(&["-j", "addr", "show", "dev", "lo"]);
        let mut addresses = Vec::new();
        if let Ok(serde_json::Value::Array(links)) = serde_json::from_str(&json) {
            for link in links {
                for info in link["addr_info"].as_array().into_iter().flatten() {
                    if let Some(Ok(ip)) = info["local"].as_str().map(str::parse::<IpAddr>)
                        && !ip.is_loopback()
                    {
                        addresses.push(ip);
                    }
                }
            }
        }
        addresses
    }
}

/// What `log` holds from byte `offset` on.
fn since(log: &Path, offset: u64) -> String {
    let Ok(mut file) = fs::File::open(log) else {
        return String::new();
    };
    let mut text = String::new();
    if file.seek(SeekFrom::Start(offset)).is_err() || file.read_to_string(&mut text).is_err() {
        return String::new();
    }
    text
}
