//! `cargo xtask lab`: a BGP anycast fabric in network namespaces on this machine (a router and
//! three nodes running FRR, BGP unnumbered unless `--numbered`, one l3lb per node with its fast
//! path and `--weights endpoints`, pods and a client), walked through a service's life while
//! showing routes with their weights, logs, client connections, the fast path's maps and
//! counters, and convergence times. The lab itself is the `l3lb-lab` binary of the test crate
//! (`tests/src/lab/`); this only prepares the machine, builds, and runs it.
use std::process::Command;

use anyhow::{Context as _, Result, bail};

use crate::{bootstrap, cmd};

#[derive(clap::Args)]
pub struct Options {
    /// Leave the lab running at the end (and print how to get into it).
    #[arg(long)]
    keep: bool,
    /// The nodes DNAT to their pods with nftables (kube-proxy's way) instead of running l3lb's
    /// fast path (`l3lb run --xdp`).
    #[arg(long)]
    no_xdp: bool,
    /// Numbered BGP sessions (a /30 and a /64 per router–node link, deploy/frr/node.conf and
    /// router.conf) instead of BGP unnumbered, the default (IPv6 link-local addresses only, IPv4
    /// routes with IPv6 next hops; deploy/frr/node-unnumbered.conf and router-unnumbered.conf).
    #[arg(long)]
    numbered: bool,
    #[command(subcommand)]
    action: Option<Action>,
}

#[derive(clap::Subcommand)]
enum Action {
    /// Tear down a lab left running by `--keep` (or by a lab that was killed).
    Down,
}

pub fn run(options: &Options) -> Result<()> {
    bootstrap::require_root_linux("cargo xtask lab")?;
    bootstrap::ebpf_toolchain()?;
    bootstrap::debian_packages(bootstrap::LAB_PACKAGES)?;

    // The daemon, and the lab with its pods' server.
    cmd::run(cmd::cargo().args(["build", "-p", "l3lb", "-p", "l3lb-tests", "--bins"]))?;
    // Run the built lab directly rather than through `cargo run`: cargo stays the lab's parent
    // and dies of Ctrl-C at once, while the lab is still tearing itself down.
    let mut lab = Command::new(cmd::target_dir().join("debug/l3lb-lab"));
    lab.current_dir(cmd::workspace_root());
    match options.action {
        Some(Action::Down) => {
            lab.arg("down");
        }
        None => {
            if options.keep {
                lab.arg("--keep");
            }
            if options.no_xdp {
                lab.arg("--no-xdp");
            }
            if options.numbered {
                lab.arg("--numbered");
            }
        }
    }
    // Ctrl-C reaches the whole foreground process group: the lab catches it and tears itself
    // down, which takes a moment. Wait for that instead of dying first and returning the prompt
    // while it still prints. (A handler, not SIG_IGN: handlers reset on exec, so the lab starts
    // with the default disposition and installs its own.)
    extern "C" fn wait_for_the_lab(_: libc::c_int) {}
    // SAFETY: the handler does nothing, which is async-signal-safe.
    unsafe {
        libc::signal(
            libc::SIGINT,
            wait_for_the_lab as *const () as libc::sighandler_t,
        );
    }
    let status = lab.status().with_context(|| format!("starting {lab:?}"))?;
    match status.code() {
        Some(0) => Ok(()),
        // The lab has said what went wrong (or that it was interrupted: 130); pass its code on.
        Some(code) => std::process::exit(code),
        None => bail!("the lab died: {status}"),
    }
}
