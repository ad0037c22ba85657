//! `l3lb-fuzz [--frames N] [--seed S] [--lru-entries N]`: the fuzzer behind `cargo xtask fuzz`
//! (see `l3lb_tests::fuzz`). Needs root; runs in a network namespace of its own, removed at the
//! end. Prints the report; exits non-zero on any oracle violation, with the seed and frames to
//! reproduce it.
use std::process::ExitCode;

use anyhow::{Result, bail};
use clap::Parser;
use l3lb_tests::fuzz::{self, Options};

/// Random and mutated frames through the fast path's XDP and TC programs (BPF_PROG_TEST_RUN),
/// each outcome checked by an independent oracle.
#[derive(Parser)]
#[command(name = "l3lb-fuzz")]
struct Cli {
    /// How many frames (each runs through all four programs).
    #[arg(long, default_value_t = 1_000_000)]
    frames: u64,
    /// The PRNG seed; a random one when not given (the report prints it).
    #[arg(long)]
    seed: Option<u64>,
    /// Entries of each LRU map (flows, replies, affinity, fragments): small, so they evict.
    #[arg(long, default_value_t = 2048)]
    lru_entries: u32,
}

fn run(cli: &Cli) -> Result<()> {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        bail!("l3lb-fuzz loads eBPF programs and creates a network namespace: run it as root");
    }
    let mut options = Options::new(cli.frames, cli.seed.unwrap_or_else(fuzz::random_seed));
    options.lru_entries = cli.lru_entries;
    options.progress = true;
    eprintln!(
        "fuzzing {} frames with seed {} (reproduce with --seed {})",
        options.frames, options.seed, options.seed
    );
    let report = fuzz::run(options).into_result()?;
    println!("{report}");
    Ok(())
}

fn main() -> ExitCode {
    match run(&Cli::parse()) {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("l3lb-fuzz: {err:#}");
            ExitCode::FAILURE
        }
    }
}
