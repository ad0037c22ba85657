//! What the fast path's end-to-end tests share: namespaces whose IPv6 addresses are usable at
//! once, the client's link to the router, a manifest directory and a pin root per test (removed
//! when it ends), the daemon started in a node with the fast path on its `uplink`, and its
//! counters read back through `l3lb inspect`.
use std::{
    path::{Path, PathBuf},
    process::Command,
    time::Duration,
};

use crate::{
    daemon::{L3lb, l3lb_binary},
    netns::{self, NetNs, sh},
};

/// How long the daemon may take to load the fast path.
const READY: Duration = Duration::from_secs(15);

/// `sysctl -w` of each `key=value` in `ns`.
pub fn sysctl(ns: &NetNs, settings: &[&str]) {
    for setting in settings {
        sh(ns.command("sysctl").args(["-qw", setting]));
    }
}

/// A namespace whose interfaces' IPv6 addresses (link-local ones included) are usable at once:
/// without duplicate address detection, a fresh link-local stays tentative for a second or two,
/// and neighbour discovery over it waits.
pub fn namespace(tag: &str) -> NetNs {
    let ns = NetNs::new(tag);
    sysctl(
        &ns,
        &[
            "net.ipv6.conf.all.accept_dad=0",
            "net.ipv6.conf.default.accept_dad=0",
        ],
    );
    ns
}

/// The client's end of the e2e topologies: `client` (`eth0`: 10.1.0.2/24, fd01::2/64) linked to
/// `router` (`to-client`: 10.1.0.1/24, fd01::1/64), with its default routes via the router.
pub fn client_behind(router: &NetNs, client: &NetNs) {
    netns::veth_pair(
        client,
        "eth0",
        "10.1.0.2/24",
        router,
        "to-client",
        "10.1.0.1/24",
    );
    client.ip(&["addr", "add", "fd01::2/64", "dev", "eth0", "nodad"]);
    router.ip(&["addr", "add", "fd01::1/64", "dev", "to-client", "nodad"]);
    client.ip(&["route", "add", "default", "via", "10.1.0.1"]);
    client.ip(&["-6", "route", "add", "default", "via", "fd01::1"]);
}

/// A manifest directory and a pin root of the test's own, removed when it ends.
pub struct Scratch {
    pub dir: tempfile::TempDir,
    pub pin_root: PathBuf,
}

impl Scratch {
    pub fn new(tag: &str) -> Scratch {
        Scratch {
            dir: tempfile::Builder::new()
                .prefix(&format!("l3lb-{tag}-"))
                .tempdir()
                .expect("a scratch directory"),
            pin_root: PathBuf::from(format!("/sys/fs/bpf/l3lb-{tag}-{}", std::process::id())),
        }
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        // Links first (they hold the programs), then maps; a failed test must not leave pins.
        let _ = Command::new("rm").arg("-rf").arg(&self.pin_root).status();
    }
}

/// Writes `{name}.yaml` in `dir` atomically (the file source never reads half a file).
pub fn write_manifest(dir: &Path, name: &str, yaml: String) {
    let tmp = dir.join(format!(".{name}.yaml.tmp"));
    std::fs::write(&tmp, yaml).expect("writing a manifest");
    std::fs::rename(&tmp, dir.join(format!("{name}.yaml"))).expect("renaming a manifest");
}

/// `l3lb run` as node-a in `node` with the fast path on `uplink`, the manifests of `scratch`
/// and the `extra` flags, logging to `log` in the scratch directory; returns once the fast path
/// is ready.
pub fn start(node: &NetNs, scratch: &Scratch, extra: &[&str], log: &str) -> L3lb {
    let mut command = node.command(l3lb_binary().to_str().expect("a UTF-8 path"));
    command.args([
        "run",
        "--node-name",
        "node-a",
        "--prefix",
        "10.0.100.0/24,2001:db8:100::/64",
        "--source",
    ]);
    command.arg(format!("file:{}", scratch.dir.path().display()));
    command
        .args(["--xdp", "--xdp-iface", "uplink", "--pin-root"])
        .arg(&scratch.pin_root)
        .args(extra);
    let daemon = L3lb::spawn(command, scratch.dir.path().join(log));
    daemon.wait_for_log("fast path ready", READY);
    daemon
}

/// `l3lb inspect --json` of the scratch's pinned maps.
pub fn inspect(scratch: &Scratch) -> serde_json::Value {
    let out = Command::new(l3lb_binary())
        .args(["inspect", "--json", "--pin-root"])
        .arg(&scratch.pin_root)
        .output()
        .expect("l3lb inspect runs");
    assert!(
        out.status.success(),
        "l3lb inspect: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).expect("inspect --json is JSON")
}

/// The reason counters of [`inspect`].
pub fn reasons(scratch: &Scratch) -> serde_json::Value {
    inspect(scratch)["reasons"].clone()
}

/// The packets counted under `reason`.
pub fn packets(reasons: &serde_json::Value, reason: &str) -> u64 {
    reasons[reason]["packets"].as_u64().unwrap_or(0)
}
