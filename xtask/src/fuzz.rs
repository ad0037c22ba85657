//! `cargo xtask fuzz [--frames N] [--seed S]`: the fuzzer for the fast path's kernel programs.
//! Prepares the machine, then runs the `l3lb-fuzz` binary of the test crate
//! (`tests/src/fuzz/`), which sends random and mutated frames through the XDP and TC programs
//! with BPF_PROG_TEST_RUN and checks each outcome against an independent oracle. The report goes
//! to stdout; the exit status is non-zero on any violation. `docs/reliability.md` holds a
//! 10 000 000-frame run.
use anyhow::{Result, bail};

use crate::{bootstrap, cmd};

#[derive(clap::Args)]
pub struct Options {
    /// How many frames (each runs through all four programs).
    #[arg(long, default_value_t = 1_000_000)]
    frames: u64,
    /// The PRNG seed, to replay a run; random when not given (the report prints it).
    #[arg(long)]
    seed: Option<u64>,
}

pub fn run(options: &Options) -> Result<()> {
    bootstrap::require_root_linux("cargo xtask fuzz")?;
    bootstrap::ebpf_toolchain()?;
    bootstrap::debian_packages(bootstrap::TEST_PACKAGES)?;

    // The dev profile: the test crate is built that way for `cargo xtask test` already, and
    // the run is bound by the kernel's test runs rather than by the oracle.
    let mut fuzz = cmd::cargo();
    fuzz.args([
        "run",
        "--quiet",
        "-p",
        "l3lb-tests",
        "--bin",
        "l3lb-fuzz",
        "--",
    ]);
    fuzz.args(["--frames", &options.frames.to_string()]);
    if let Some(seed) = options.seed {
        fuzz.args(["--seed", &seed.to_string()]);
    }
    let status = fuzz.status()?;
    match status.code() {
        Some(0) => Ok(()),
        Some(code) => std::process::exit(code),
        None => bail!("the fuzzer died: {status}"),
    }
}
