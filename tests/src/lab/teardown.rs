//! Leaving a lab running and finding it again: the state file under [`STATE_DIR`] (what
//! `down` needs when the process that built the lab is gone), [`Lab::keep`], [`Lab::down`],
//! [`Lab::down_abandoned`], [`Lab::leftovers`], and the teardown when a [`Lab`] drops.
use std::{
    collections::BTreeSet,
    fs,
    path::{Path, PathBuf},
    process::Command,
    time::Duration,
};

use super::{
    Lab, SERVICE_PREFIXES, fastpath, frr,
    process::{alive, signal},
};
use crate::netns::NetNs;

/// Where a lab's state file lives (`<name>.state`), so that `down` finds a kept lab.
pub const STATE_DIR: &str = "/run/l3lb-lab";

/// What a lab's state file records.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub(super) struct State {
    /// The process that built the lab.
    pub owner: u32,
    pub kept: bool,
    pub dir: Option<PathBuf>,
    pub namespaces: Vec<String>,
    pub frr: Vec<i32>,
}

impl State {
    pub fn file(name: &str) -> PathBuf {
        Path::new(STATE_DIR).join(format!("{name}.state"))
    }

    fn render(&self, name: &str) -> String {
        let mut text = format!(
            "# l3lb lab {name}: `cargo xtask lab down` (or `l3lb-lab down --name {name}`) \
             removes it\n"
        );
        text += &format!("owner {}\n", self.owner);
        text += &format!("kept {}\n", self.kept);
        if let Some(dir) = &self.dir {
            text += &format!("dir {}\n", dir.display());
        }
        for namespace in &self.namespaces {
            text += &format!("netns {namespace}\n");
        }
        for pid in &self.frr {
            text += &format!("frr {pid}\n");
        }
        text
    }

    /// Lenient: a missing or damaged file reads as what it still says.
    fn parse(text: &str) -> State {
        let mut state = State::default();
        for line in text.lines() {
            let Some((key, value)) = line.split_once(' ') else {
                continue;
            };
            match key {
                "owner" => state.owner = value.trim().parse().unwrap_or(0),
                "kept" => state.kept = value == "true",
                "dir" => state.dir = Some(PathBuf::from(value)),
                "netns" => state.namespaces.push(value.to_owned()),
                "frr" => state.frr.extend(value.trim().parse::<i32>().ok()),
                _ => {}
            }
        }
        state
    }

    pub fn save(&self, name: &str) {
        fs::create_dir_all(STATE_DIR).expect("creating the lab state directory");
        fs::write(State::file(name), self.render(name)).expect("writing the lab state file");
    }

    fn load(name: &str) -> State {
        State::parse(&fs::read_to_string(State::file(name)).unwrap_or_default())
    }
}

impl Lab {
    /// Leaves the lab running after this process exits, and says how to get into it.
    pub fn keep(mut self) -> String {
        self.kept = true;
        self.dir.disable_cleanup(true);
        self.router.set_keep(true);
        self.client.set_keep(true);
        for node in &mut self.nodes {
            node.ns.set_keep(true);
        }
        for pod in self.pods.iter_mut() {
            pod.ns.set_keep(true);
        }
        self.save_state();
        let router = self.router.name();
        let router_dir = self.frr_dir(None);
        let node_dir = self.frr_dir(Some(0));
        let node = self.nodes[0].ns.name();
        format!(
            "The lab {name} stays up. Look around:\n\
             \x20 nsenter --net=/run/netns/{router} vtysh --vty_socket {router_dir}   # the router's FRR\n\
             \x20 nsenter --net=/run/netns/{node} vtysh --vty_socket {node_dir}   # {node_a}'s FRR\n\
             \x20 ip -n {router} route show root {v4}\n\
             \x20 ip -n {node} addr show dev lo\n\
             \x20 nsenter --net=/run/netns/{name}-client curl http://10.0.100.7/\n\
             \x20 manifests (every l3lb reads them; edit or add files): {manifests}\n\
             \x20 logs: {dir}/<router|node-x>/{{zebra,bgpd}}.log, {dir}/node-x/l3lb.log\n\
             Tear it down with `cargo xtask lab down`.",
            name = self.name(),
            router_dir = router_dir.display(),
            node_dir = node_dir.display(),
            node_a = self.nodes[0].name,
            v4 = SERVICE_PREFIXES[0],
            manifests = self.manifests.dir().display(),
            dir = self.dir().display(),
        )
    }

    /// Tears down a lab left running (by [`Lab::keep`], or by a process that died): every
    /// process in its namespaces, the namespaces, FRR's crash-log directories, the fast path's
    /// pins, its temp dir and state file. Returns what it removed.
    pub fn down(name: &str) -> Vec<String> {
        let state = State::load(name);
        let mut namespaces: BTreeSet<String> = state.namespaces.iter().cloned().collect();
        namespaces.extend(namespaces_of(name));
        let namespaces: Vec<String> = namespaces.into_iter().collect();

        let mut removed = Vec::new();
        let stopped = stop_namespaces(&namespaces);
        if !stopped.is_empty() {
            removed.push(format!("{} processes", stopped.len()));
        }
        // They are not our children: init reaps them. Give it a moment, so that right after
        // `down` no zombie of the lab shows in `ps` (nothing depends on it).
        crate::wait_until(Duration::from_secs(3), || {
            stopped
                .iter()
                .all(|pid| !Path::new(&format!("/proc/{pid}")).exists())
        });
        frr::remove_tmp(&state.frr);
        for namespace in &namespaces {
            drop(NetNs::existing(namespace));
            removed.push(format!("namespace {namespace}"));
        }
        if let Some(pins) = fastpath::remove_pins(name) {
            removed.push(pins.display().to_string());
        }
        if let Some(dir) = &state.dir {
            // Only ever a directory the lab made itself.
            if dir.to_string_lossy().starts_with(&format!("/tmp/{name}-"))
                && fs::remove_dir_all(dir).is_ok()
            {
                removed.push(dir.display().to_string());
            }
        }
        let state_file = State::file(name);
        if fs::remove_file(&state_file).is_ok() {
            removed.push(state_file.display().to_string());
        }
        let _ = fs::remove_dir(STATE_DIR); // only when no other lab's state is in it
        removed
    }

    /// Tears down labs whose names start with `prefix` and whose process died without cleaning
    /// up (killed with SIGKILL, say), judged by their state files; kept labs stay. Returns the
    /// names of the labs removed.
    pub fn down_abandoned(prefix: &str) -> Vec<String> {
        let Ok(entries) = fs::read_dir(STATE_DIR) else {
            return Vec::new();
        };
        let mut removed = Vec::new();
        for entry in entries.flatten() {
            let file = entry.file_name().to_string_lossy().into_owned();
            let Some(name) = file.strip_suffix(".state") else {
                continue;
            };
            if !name.starts_with(prefix) {
                continue;
            }
            let state = State::load(name);
            let owner_alive = state.owner > 0 && alive(state.owner as i32);
            if !owner_alive && !state.kept {
                Lab::down(name);
                removed.push(name.to_owned());
            }
        }
        removed
    }

    /// What a lab named `name` left behind: namespaces, its state file and pins.
    pub fn leftovers(name: &str) -> Vec<String> {
        let mut left = namespaces_of(name);
        let state_file = State::file(name);
        if state_file.exists() {
            left.push(state_file.display().to_string());
        }
        if let Some(pins) = fastpath::lab_pins(name).filter(|pins| pins.exists()) {
            left.push(pins.display().to_string());
        }
        left
    }

    pub(super) fn save_state(&self) {
        State {
            owner: std::process::id(),
            kept: self.kept,
            dir: Some(self.dir().to_owned()),
            namespaces: self.namespace_names(),
            frr: self.frr.iter().map(|child| child.id() as i32).collect(),
        }
        .save(self.name());
    }

    fn namespace_names(&self) -> Vec<String> {
        let mut names: Vec<String> = self
            .pods
            .iter()
            .map(|pod| pod.ns.name().to_owned())
            .collect();
        names.extend(self.nodes.iter().map(|node| node.ns.name().to_owned()));
        names.push(self.client.name().to_owned());
        names.push(self.router.name().to_owned());
        names
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        if self.kept {
            return;
        }
        stop_namespaces(&self.namespace_names());
        // Reap our children (all dead or zombies by now; kill any that somehow are not).
        let children = self
            .frr
            .iter_mut()
            .chain(self.nodes.iter_mut().filter_map(|node| node.l3lb_child()))
            .chain(self.pods.iter_mut().map(|pod| &mut pod.server));
        for child in children {
            if let Ok(None) = child.try_wait() {
                let _ = child.kill();
            }
            let _ = child.wait();
        }
        let frr_pids: Vec<i32> = self.frr.iter().map(|child| child.id() as i32).collect();
        frr::remove_tmp(&frr_pids);
        // The l3lbs remove their pins on SIGTERM, but not with `--retain-on-exit` or when killed.
        fastpath::remove_pins(self.name());
        let _ = fs::remove_file(State::file(self.name()));
        let _ = fs::remove_dir(STATE_DIR); // only when no other lab's state is in it
        // The namespaces (fields) are deleted next, then the temp dir.
    }
}

/// Namespaces that belong to the lab `name` by their names.
pub(super) fn namespaces_of(name: &str) -> Vec<String> {
    let Ok(out) = Command::new("ip").args(["netns", "list"]).output() else {
        return Vec::new();
    };
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|line| line.split_whitespace().next())
        .filter(|ns| {
            ns.strip_prefix(name)
                .and_then(|rest| rest.strip_prefix('-'))
                .is_some_and(|rest| {
                    matches!(rest, "router" | "client")
                        || rest.starts_with("node-")
                        || rest.starts_with("pod-")
                })
        })
        .map(str::to_owned)
        .collect()
}

/// SIGTERM to everything running in the namespaces, SIGKILL to what is left after 5 s; returns
/// the processes there were.
fn stop_namespaces(namespaces: &[String]) -> Vec<i32> {
    let pids: Vec<i32> = namespaces
        .iter()
        .flat_map(|ns| {
            Command::new("ip")
                .args(["netns", "pids", ns])
                .output()
                .map(|out| String::from_utf8_lossy(&out.stdout).into_owned())
                .unwrap_or_default()
                .split_whitespace()
                .filter_map(|pid| pid.parse().ok())
                .collect::<Vec<i32>>()
        })
        .collect();
    for &pid in &pids {
        signal(pid, libc::SIGTERM);
    }
    let all_gone = || pids.iter().all(|&pid| !alive(pid));
    if !crate::wait_until(Duration::from_secs(5), all_gone) {
        for &pid in &pids {
            if alive(pid) {
                signal(pid, libc::SIGKILL);
            }
        }
        crate::wait_until(Duration::from_secs(2), all_gone);
    }
    pids
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_state_file_reads_back() {
        let state = State {
            owner: 4242,
            kept: true,
            dir: Some(PathBuf::from("/tmp/lab-x-abc123")),
            namespaces: vec!["lab-x-router".to_owned(), "lab-x-node-a".to_owned()],
            frr: vec![17, 18],
        };
        let text = state.render("lab-x");
        assert!(text.starts_with("# l3lb lab lab-x:"), "{text}");
        assert_eq!(State::parse(&text), state);
        assert_eq!(
            State::parse(""),
            State::default(),
            "a missing file is empty"
        );
    }
}
