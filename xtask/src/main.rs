//! `cargo xtask`: the commands the README names. Each first makes sure the machine has what it
//! needs (see `bootstrap`), so they work on a fresh Debian machine as root.
mod bench;
mod bootstrap;
mod build_ebpf;
mod cmd;
mod fuzz;
mod lab;
mod soak;
mod test;

use anyhow::Result;
use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(about = "l3lb development tasks")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Install the pinned eBPF toolchain when missing and build the eBPF object.
    BuildEbpf(build_ebpf::Options),
    /// Format check, clippy, unit tests, then the privileged integration tests (root).
    Test(test::Options),
    /// Run a BGP anycast fabric in network namespaces and walk a service through its life
    /// (root); `lab --keep` leaves it up, `lab down` removes a kept one.
    Lab(lab::Options),
    /// Run the lab under a seeded random schedule of changes and faults and check the router's
    /// routes against the ready pods every 10 ms (root); `--minutes N`, `--seed S`.
    Soak(soak::Options),
    /// Measure the fast path (vs an empty program, kube-proxy iptables and nftables) and the
    /// controller (vs the fake API server) and write docs/benchmarks.md (root); `--quick` for
    /// the reduced set.
    Bench(bench::Options),
    /// Fuzz the fast path's XDP and TC programs with random and mutated frames through
    /// BPF_PROG_TEST_RUN against an independent oracle (root); `--frames N`, `--seed S`.
    Fuzz(fuzz::Options),
}

fn main() -> Result<()> {
    match Cli::parse().command {
        Command::BuildEbpf(options) => build_ebpf::run(&options),
        Command::Test(options) => test::run(&options),
        Command::Lab(options) => lab::run(&options),
        Command::Bench(options) => bench::run(&options),
        Command::Soak(options) => soak::run(&options),
        Command::Fuzz(options) => fuzz::run(&options),
    }
}
