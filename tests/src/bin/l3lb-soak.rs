//! `cargo xtask soak`: the lab under a seeded random schedule of changes and faults, with the
//! router-side invariant checked every 10 ms (see `l3lb_tests::soak`). Prints the report and
//! exits 1 when the invariant broke or a short connection failed in calm.
//!
//! ```text
//! l3lb-soak [--minutes M] [--seed S] [--nodes N] [--allowance-ms MS] [--quiet]
//! ```
use std::{process::ExitCode, time::Duration};

use clap::Parser;
use l3lb_tests::{
    interrupt::{INTERRUPTED, install_signal_handlers},
    lab::{Lab, LabError, LabOptions},
    soak::{self, SoakOptions},
};

#[derive(Parser)]
#[command(name = "l3lb-soak")]
struct Args {
    /// How long the schedule runs.
    #[arg(long, default_value_t = 5.0)]
    minutes: f64,
    /// The schedule's seed (default: from the clock; printed, to run the same schedule again).
    #[arg(long)]
    seed: Option<u64>,
    #[arg(long, default_value_t = 3, value_parser = clap::value_parser!(u8).range(2..=26))]
    nodes: u8,
    /// How long a change may take to show at the router.
    #[arg(long, default_value_t = 500)]
    allowance_ms: u64,
    /// Do not print each change.
    #[arg(long)]
    quiet: bool,
    /// The lab's name.
    #[arg(long, default_value = "l3lb-soak")]
    name: String,
}

fn main() -> ExitCode {
    let args = Args::parse();
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        eprintln!("l3lb-soak: needs root (network namespaces); run `cargo xtask soak` as root");
        return ExitCode::FAILURE;
    }
    install_signal_handlers();
    for name in Lab::down_abandoned(&args.name) {
        eprintln!("removed the abandoned lab {name}");
    }
    let seed = args.seed.unwrap_or_else(|| {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(1, |since| since.as_secs())
    });
    let mut lab = LabOptions::new(&args.name);
    lab.nodes = usize::from(args.nodes);
    lab.cancel = Some(&INTERRUPTED);
    let options = SoakOptions {
        lab,
        duration: Duration::from_secs_f64(args.minutes * 60.0),
        seed,
        allowance: Duration::from_millis(args.allowance_ms),
        progress: !args.quiet,
    };
    println!(
        "== soak: {} nodes for {} min, seed {seed} (`--seed {seed}` runs this schedule again)",
        args.nodes, args.minutes
    );
    let code = match soak::run(options) {
        Ok(report) => {
            println!("\n{report}");
            if report.passed() {
                ExitCode::SUCCESS
            } else {
                ExitCode::FAILURE
            }
        }
        Err(LabError::Interrupted) => {
            eprintln!("\ninterrupted: the lab is torn down");
            ExitCode::from(130)
        }
        Err(err) => {
            eprintln!("\nl3lb-soak failed: {err}");
            ExitCode::FAILURE
        }
    };
    let left = Lab::leftovers(&args.name);
    if !left.is_empty() {
        eprintln!("left behind: {}", left.join(", "));
        return ExitCode::FAILURE;
    }
    code
}
