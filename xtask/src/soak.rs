//! `cargo xtask soak`: the lab under a seeded random schedule of changes and faults, with the
//! router's routes checked against the ready pods every 10 ms (the `l3lb-soak` binary of the
//! test crate, `tests/src/soak/`); this prepares the machine, builds, and runs it.
use std::process::Command;

use anyhow::{Context as _, Result, bail};

use crate::{bootstrap, cmd};

#[derive(clap::Args)]
pub struct Options {
    /// How long the schedule runs.
    #[arg(long, default_value_t = 5.0)]
    minutes: f64,
    /// The schedule's seed (default: from the clock; the report prints it).
    #[arg(long)]
    seed: Option<u64>,
    /// How long a change may take to show at the router, in ms.
    #[arg(long, default_value_t = 500)]
    allowance_ms: u64,
    /// Do not print each change as it is made.
    #[arg(long)]
    quiet: bool,
    /// Build and run optimised binaries (l3lb as operators run it); the default is the debug
    /// build CI tests.
    #[arg(long)]
    release: bool,
}

pub fn run(options: &Options) -> Result<()> {
    bootstrap::require_root_linux("cargo xtask soak")?;
    bootstrap::ebpf_toolchain()?;
    bootstrap::debian_packages(bootstrap::LAB_PACKAGES)?;
    let mut build = cmd::cargo();
    build.args(["build", "-p", "l3lb", "-p", "l3lb-tests", "--bins"]);
    if options.release {
        build.arg("--release");
    }
    cmd::run(&mut build)?;
    let profile = if options.release { "release" } else { "debug" };
    let mut soak = Command::new(cmd::target_dir().join(profile).join("l3lb-soak"));
    soak.current_dir(cmd::workspace_root())
        .args(["--minutes", &options.minutes.to_string()])
        .args(["--allowance-ms", &options.allowance_ms.to_string()]);
    if let Some(seed) = options.seed {
        soak.args(["--seed", &seed.to_string()]);
    }
    if options.quiet {
        soak.arg("--quiet");
    }
    let status = soak
        .status()
        .with_context(|| format!("starting {soak:?}"))?;
    match status.code() {
        Some(0) => Ok(()),
        Some(code) => std::process::exit(code),
        None => bail!("the soak died: {status}"),
    }
}
