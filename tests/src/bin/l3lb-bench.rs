//! `l3lb-bench [--quick] [--out DIR] [--only 1,2,3]`: the benchmark behind `cargo xtask bench`
//! (see `l3lb_tests::bench`). Needs root and `target/<profile>/l3lb` next to it; writes
//! `benchmarks.md`, `benchmarks.json` and `benchmarks-pps.svg` to DIR (default `docs/`).
//! Everything it creates (namespaces, processes, bpffs pins) is removed at the end, on failure
//! and on Ctrl-C.
use std::{
    path::{Path, PathBuf},
    process::ExitCode,
    time::Instant,
};

use clap::Parser;
use l3lb_tests::{
    bench::{self, Options, controller, dataplane, report, sys, testrun},
    daemon, progress,
};

/// The benchmark behind `cargo xtask bench`: the fast path against the floor and kube-proxy, the
/// controller at scale.
#[derive(Parser)]
#[command(name = "l3lb-bench")]
struct Cli {
    /// The reduced set: fewer rounds, shorter measurements, smaller scales (under two minutes).
    #[arg(long)]
    quick: bool,
    /// Where the report goes.
    #[arg(long, value_name = "DIR", default_value = "docs")]
    out: PathBuf,
    /// Only these parts (1: BPF_PROG_TEST_RUN, 2: the data plane, 3: the controller).
    #[arg(long, value_name = "1,2,3", value_delimiter = ',',
          value_parser = clap::value_parser!(u8).range(1..=3))]
    only: Option<Vec<u8>>,
    /// Write kube-proxy's rule files for N services to DIR and exit: to look at them, or to time
    /// `iptables-restore` and `nft -f` by hand.
    #[arg(long, num_args = 2, value_names = ["N", "DIR"])]
    emit_rules: Option<Vec<String>>,
}

/// `--emit-rules N DIR`.
fn emit_rules(n: &str, dir: &Path) -> Result<(), String> {
    let n: u32 = n
        .parse()
        .map_err(|_| format!("--emit-rules: {n:?} is not a number of services"))?;
    let (services, _) = bench::kubeproxy::services(n);
    let write = |name: &str, text: String| {
        std::fs::create_dir_all(dir)
            .and_then(|()| std::fs::write(dir.join(name), text))
            .map_err(|e| format!("writing {}: {e}", dir.join(name).display()))
    };
    write(
        "iptables.rules",
        bench::kubeproxy::iptables_restore(&services),
    )?;
    write("kube-proxy.nft", bench::kubeproxy::nft_script(&services))
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    if let Some([n, dir]) = cli.emit_rules.as_deref() {
        return match emit_rules(n, Path::new(dir)) {
            Ok(()) => ExitCode::SUCCESS,
            Err(err) => {
                eprintln!("l3lb-bench: {err}");
                ExitCode::from(2)
            }
        };
    }
    let part = |n| cli.only.as_ref().is_none_or(|only| only.contains(&n));
    let options = Options {
        quick: cli.quick,
        out: cli.out.clone(),
        part1: part(1),
        part2: part(2),
        part3: part(3),
    };
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        eprintln!(
            "l3lb-bench: needs root (network namespaces, eBPF); run `cargo xtask bench` as root"
        );
        return ExitCode::from(2);
    }
    if let Err(err) = daemon::built_binary("l3lb", "-p l3lb") {
        eprintln!("l3lb-bench: {err}");
        return ExitCode::from(2);
    }
    bench::install_signal_handlers();
    let started = Instant::now();
    let machine = sys::machine();
    progress!(
        "{} × {}, kernel {}, commit {}{}",
        machine.cpus,
        machine.model,
        machine.kernel,
        machine.commit,
        if options.quick { " (quick)" } else { "" }
    );

    let mut errors = Vec::new();
    let mut record = |part: &str, err: anyhow::Error| {
        progress!("{part} failed: {err:#}");
        errors.push(format!("{part}: {err:#}"));
    };
    let part1 = options
        .part1
        .then(|| {
            testrun::run_part(&options)
                .map_err(|e| record("part 1", e))
                .ok()
        })
        .flatten();
    let part2 = (options.part2 && !bench::interrupted())
        .then(|| {
            dataplane::run_part(&options)
                .map_err(|e| record("part 2", e))
                .ok()
        })
        .flatten();
    let part3 = (options.part3 && !bench::interrupted())
        .then(|| {
            controller::run_part(&options)
                .map_err(|e| record("part 3", e))
                .ok()
        })
        .flatten();
    if bench::interrupted() {
        progress!("interrupted: cleaned up, no report written");
        return ExitCode::from(130);
    }

    let report = report::Report {
        targets: report::targets(part1.as_ref(), part2.as_ref(), part3.as_ref()),
        machine,
        quick: options.quick,
        duration_seconds: started.elapsed().as_secs_f64(),
        part1,
        part2,
        part3,
        errors,
    };
    if let Err(err) = report::write(&report, &options.out) {
        eprintln!(
            "l3lb-bench: writing the report to {}: {err:#}",
            options.out.display()
        );
        return ExitCode::FAILURE;
    }
    progress!(
        "done in {:.0} s; report in {}",
        report.duration_seconds,
        options.out.join("benchmarks.md").display()
    );
    for target in &report.targets {
        progress!(
            "  {}: {} (target {}) {}",
            target.name,
            target.value,
            target.target,
            match target.met {
                Some(true) => "met",
                Some(false) => "NOT met",
                None => "n/a",
            }
        );
    }
    if report.errors.is_empty() {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}
