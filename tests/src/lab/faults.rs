//! Faults the soak (`crate::soak`) inflicts on a running lab: an l3lb killed without a chance
//! to clean up, a node's bgpd restarted, and the manifest directory gone for a while (the file
//! source's outage).
use std::{fs, path::PathBuf, time::Duration};

use super::{
    Lab, LabError,
    frr::{self, Role},
    process::{alive, signal},
};

impl Lab {
    /// SIGKILL to node `node`'s l3lb, reaped: its addresses, pins and programs stay as they
    /// were, as after a crash or an OOM kill.
    pub fn kill_l3lb(&mut self, node: usize) -> Result<(), LabError> {
        self.nodes[node].kill_l3lb()
    }

    /// The process id of node `node`'s l3lb, while it runs.
    pub fn l3lb_pid(&mut self, node: usize) -> Option<u32> {
        self.nodes[node].l3lb_pid()
    }

    /// Stops node `node`'s bgpd (SIGTERM: it says goodbye to the router, which withdraws the
    /// node's routes), starts it again, and waits until the router has every session back.
    pub fn restart_bgpd(&mut self, node: usize) -> Result<(), LabError> {
        // The router's zebra and bgpd come first, then each node's pair.
        let at = 2 + 2 * node + 1;
        let old = &mut self.frr[at];
        let pid = old.id() as i32;
        signal(pid, libc::SIGTERM);
        let gone = crate::wait_until(Duration::from_secs(5), || !alive(pid));
        if !gone {
            let _ = old.kill();
        }
        let _ = old.wait();
        frr::remove_tmp(&[pid]);
        let dir = self.nodes[node].dir.clone();
        let new = frr::start_daemon(
            &self.nodes[node].ns,
            &dir,
            Role::Node(node),
            "bgpd",
            self.options.cancel,
        )?;
        self.frr[at] = new;
        self.save_state();
        self.wait_fabric()
    }

    /// Moves the manifest directory away, as an outage of the source: the l3lbs must keep what
    /// they announce.
    pub fn hide_manifests(&self) {
        fs::rename(
            self.manifests.dir(),
            hidden(self.manifests.dir().to_owned()),
        )
        .expect("moving the manifest directory away");
    }

    /// Brings the manifest directory back.
    pub fn restore_manifests(&self) {
        fs::rename(
            hidden(self.manifests.dir().to_owned()),
            self.manifests.dir(),
        )
        .expect("bringing the manifest directory back");
    }
}

fn hidden(dir: PathBuf) -> PathBuf {
    let mut name = dir.into_os_string();
    name.push(".away");
    PathBuf::from(name)
}
