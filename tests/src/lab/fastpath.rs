//! The fast path in the lab: where each node's l3lb pins its maps, and what the walk-through and
//! the tests read back from them (`l3lb inspect`, `bpftool map dump pinned …`), from the nodes'
//! nftables (no DNAT rule) and from a pod's route cache (the path MTU it learned).
use std::{
    fs,
    net::{IpAddr, SocketAddr},
    path::{Path, PathBuf},
    process::Command,
};

use super::{Lab, LabError, SERVICE_PORT, node::Node};

/// Every lab's pins live under `/sys/fs/bpf/<lab>/`, one directory per node.
const BPFFS: &str = "/sys/fs/bpf";

/// The directory holding all of lab `name`'s pins, or `None` for a name that could escape
/// bpffs (the lab's names never do; `down` takes a name from the command line).
pub(super) fn lab_pins(name: &str) -> Option<PathBuf> {
    let safe = !name.is_empty()
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
        && !name.starts_with('-');
    safe.then(|| Path::new(BPFFS).join(name))
}

/// Removes lab `name`'s pins (what an l3lb killed, or run with `--retain-on-exit`, left);
/// returns the directory when there was one.
pub(super) fn remove_pins(name: &str) -> Option<PathBuf> {
    let dir = lab_pins(name)?;
    fs::remove_dir_all(&dir).ok().map(|()| dir)
}

impl Node {
    /// Where this node's l3lb pins its maps and links, in lab `lab`.
    pub(super) fn pin_root(&self, lab: &str) -> PathBuf {
        lab_pins(lab)
            .expect("lab names are checked when the lab goes up")
            .join(&self.name)
    }
}

impl Lab {
    /// Whether the nodes run the fast path (rather than nftables DNAT).
    pub fn fast_path(&self) -> bool {
        self.options.fast_path
    }

    /// Where node `node`'s l3lb pins its maps (with the fast path).
    pub fn pin_root(&self, node: usize) -> PathBuf {
        self.nodes[node].pin_root(self.name())
    }

    /// `l3lb inspect --pin-root …` of node `node`: its services, backends, shares and counters,
    /// as the kernel holds them.
    pub fn inspect(&self, node: usize) -> Result<String, LabError> {
        self.l3lb_inspect(node, false)
    }

    /// [`Lab::inspect`] as JSON.
    pub fn inspect_json(&self, node: usize) -> Result<serde_json::Value, LabError> {
        let text = self.l3lb_inspect(node, true)?;
        serde_json::from_str(&text)
            .map_err(|err| LabError::Failed(format!("l3lb inspect --json: {err}: {text}")))
    }

    fn l3lb_inspect(&self, node: usize, json: bool) -> Result<String, LabError> {
        let mut command = Command::new(&self.options.l3lb);
        command.arg("inspect");
        if json {
            command.arg("--json");
        }
        command.arg("--pin-root").arg(self.pin_root(node));
        output(&mut command)
    }

    /// `bpftool map dump pinned <pin root>/<map>` of node `node`: the map's entries with their
    /// BTF field names.
    pub fn map_dump(&self, node: usize, map: &str) -> Result<String, LabError> {
        output(
            Command::new("bpftool")
                .args(["map", "dump", "pinned"])
                .arg(self.pin_root(node).join(map)),
        )
    }

    /// The packets node `node`'s fast path steered to `ip` (port 80, TCP) so far.
    pub fn steered_packets(&self, node: usize, ip: IpAddr) -> Result<u64, LabError> {
        let report = self.inspect_json(node)?;
        // `inspect` names each entry by its address, port and protocol.
        let entry = format!("{}/tcp", SocketAddr::new(ip, SERVICE_PORT));
        Ok(report["services"]
            .as_array()
            .into_iter()
            .flatten()
            .filter(|row| row["service"].as_str() == Some(entry.as_str()))
            .filter_map(|row| row["packets"].as_u64())
            .sum())
    }

    /// The packets node `node`'s fast path counted under `reason` (a label of `l3lb inspect`:
    /// `reply_redirected`, `reply_to_stack`, …) so far.
    pub fn reason_packets(&self, node: usize, reason: &str) -> Result<u64, LabError> {
        let report = self.inspect_json(node)?;
        report["reasons"][reason]["packets"]
            .as_u64()
            .ok_or_else(|| {
                LabError::Failed(format!(
                    "l3lb inspect of {} counts no reason {reason}: {report}",
                    self.nodes[node].name
                ))
            })
    }

    /// The nftables rules of node `node` that DNAT (none with the fast path).
    pub fn dnat_rules(&self, node: usize) -> Vec<String> {
        let mut ruleset = self.nodes[node].ns.command("nft");
        ruleset.args(["list", "ruleset"]);
        let text = output(&mut ruleset).unwrap_or_default();
        text.lines()
            .filter(|line| line.contains("dnat"))
            .map(|line| line.trim().to_owned())
            .collect()
    }

    /// The path MTU towards `to` that pod `pod`'s route cache holds (`ip route get`), if any.
    pub fn pod_path_mtu(&self, pod: &str, to: IpAddr) -> Option<u32> {
        let pod = self.pods.get(pod)?;
        pod.ns.learned_mtu(to)
    }
}

/// Stdout of a command that must succeed.
fn output(command: &mut Command) -> Result<String, LabError> {
    let out = command
        .output()
        .map_err(|err| LabError::Failed(format!("starting {command:?}: {err}")))?;
    if !out.status.success() {
        return Err(LabError::Failed(format!(
            "{command:?}: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        )));
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pins_stay_inside_bpffs() {
        assert_eq!(
            lab_pins("l3lb-lab"),
            Some(PathBuf::from("/sys/fs/bpf/l3lb-lab"))
        );
        for hostile in ["", "..", "a/../..", "-rf", "a b"] {
            assert_eq!(lab_pins(hostile), None, "{hostile:?}");
        }
    }
}
