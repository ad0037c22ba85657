//! `cargo xtask bench`: the benchmarks behind `docs/benchmarks.md`. Prepares the machine, builds
//! the daemon in release mode, then runs the `l3lb-bench` binary of the test crate
//! (`tests/src/bench/`), which measures the fast path against an empty program, direct routing
//! and kube-proxy's iptables and nftables rules (UDP packets/s, the node's cost per packet, new
//! TCP connections/s, request/response), and the controller against the fake API server, and
//! writes `docs/benchmarks.{md,json}` and `docs/benchmarks-pps.svg`.
use anyhow::{Result, bail};

use crate::{bootstrap, cmd};

#[derive(clap::Args)]
pub struct Options {
    /// The reduced set (fewer rounds, shorter measurements, smaller scales): about three minutes.
    #[arg(long)]
    quick: bool,
}

pub fn run(options: &Options) -> Result<()> {
    bootstrap::require_root_linux("cargo xtask bench")?;
    bootstrap::ebpf_toolchain()?;
    bootstrap::debian_packages(bootstrap::BENCH_PACKAGES)?;

    cmd::run(cmd::cargo().args(["build", "--release", "-p", "l3lb"]))?;
    let mut bench = cmd::cargo();
    bench.args([
        "run",
        "--release",
        "--quiet",
        "-p",
        "l3lb-tests",
        "--bin",
        "l3lb-bench",
        "--",
    ]);
    if options.quick {
        bench.arg("--quick");
    }
    bench.arg("--out").arg(cmd::workspace_root().join("docs"));

    // Ctrl-C reaches the whole foreground process group: the benchmark stops and removes its
    // namespaces, daemons and pins, which takes a moment. Wait for it rather than returning the
    // prompt while it still cleans up. (A handler, not SIG_IGN: handlers reset on exec.)
    extern "C" fn wait_for_the_bench(_: libc::c_int) {}
    // SAFETY: the handler does nothing, which is async-signal-safe.
    unsafe {
        libc::signal(
            libc::SIGINT,
            wait_for_the_bench as *const () as libc::sighandler_t,
        );
    }
    let status = bench.status()?;
    match status.code() {
        Some(0) => Ok(()),
        Some(code) => std::process::exit(code),
        None => bail!("the benchmark died: {status}"),
    }
}
