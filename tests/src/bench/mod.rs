//! `l3lb-bench` (`cargo xtask bench`): what the fast path and the controller cost, each measured
//! against a baseline taken in the same run, so the ratios hold on a noisy shared machine even
//! where the absolute numbers drift.
//!
//! 1. [`testrun`]: per-packet cost of the fast path's ingress program (TC on veth, else XDP)
//!    and its TC egress program through `BPF_PROG_TEST_RUN`, against an empty program (the
//!    floor) and the floor plus one services-map lookup, with 1, 1 000 and 10 000 services in
//!    the maps.
//! 2. [`dataplane`]: UDP packets/s, the node's own cost per packet, new TCP connections/s and
//!    request/response transactions/s through a node in network namespaces (client → node →
//!    pods), in the same run: direct routing, kube-proxy's iptables rules, kube-proxy's nftables
//!    rules ([`kubeproxy`] writes both as kube-proxy does), `l3lb run --xdp`, and l3lb next to
//!    kube-proxy's iptables rules.
//! 3. [`controller`]: `l3lb run --source kube` against the fake API server with up to 50 000
//!    Services: time to converge, API change → address on `lo` latency ([`netlink`] watches), CPU
//!    per change on another node, peak and resident memory.
//!
//! [`report`] writes the Markdown report, the JSON and the SVG plot. Everything runs in network
//! namespaces and bpffs directories of its own, removed on success, failure and Ctrl-C.
pub mod controller;
pub mod dataplane;
pub mod kubeproxy;
pub mod netlink;
pub mod report;
pub mod stats;
pub mod sys;
pub mod testrun;

use std::path::PathBuf;

pub use crate::interrupt::{install_signal_handlers, interrupted};

/// `Err` once the run was interrupted: `?` after it unwinds to the guards.
pub fn check_interrupted() -> anyhow::Result<()> {
    if interrupted() {
        anyhow::bail!("interrupted");
    }
    Ok(())
}

/// Sleeps `duration` in short steps, returning early (with `Err`) when interrupted.
pub fn sleep(duration: std::time::Duration) -> anyhow::Result<()> {
    let until = std::time::Instant::now() + duration;
    loop {
        check_interrupted()?;
        let now = std::time::Instant::now();
        if now >= until {
            return Ok(());
        }
        std::thread::sleep((until - now).min(std::time::Duration::from_millis(50)));
    }
}

/// Progress on stderr, prefixed so it stands out from cargo's output.
#[macro_export]
macro_rules! progress {
    ($($arg:tt)*) => {
        eprintln!("bench: {}", format_args!($($arg)*))
    };
}

/// Which parts to run and how much of each.
#[derive(Clone, Debug)]
pub struct Options {
    /// The reduced set: fewer rounds, shorter measurements, smaller scales (about three minutes).
    pub quick: bool,
    pub out: PathBuf,
    pub part1: bool,
    pub part2: bool,
    pub part3: bool,
}

/// A bpffs directory for one run's pins, removed (links first, then maps) when dropped.
pub struct PinDir(pub PathBuf);

impl PinDir {
    pub fn new(tag: &str) -> PinDir {
        PinDir(PathBuf::from(format!(
            "/sys/fs/bpf/l3lb-bench-{}-{tag}",
            std::process::id()
        )))
    }
}

impl Drop for PinDir {
    fn drop(&mut self) {
        if self.0.exists() {
            l3lb::fastpath::loader::remove(&self.0);
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }
}
