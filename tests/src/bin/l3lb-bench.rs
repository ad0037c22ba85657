//! `l3lb-bench [--quick] [--out DIR] [--only 1,2,3]`: the benchmark behind `cargo xtask bench`
//! (see `l3lb_tests::bench`). Needs root and `target/<profile>/l3lb` next to it; writes
//! `benchmarks.md`, `benchmarks.json` and `benchmarks-pps.svg` to DIR (default `docs/`).
//! Everything it creates (namespaces, processes, bpffs pins) is removed at the end, on failure
//! and on Ctrl-C.
use std::{path::PathBuf, process::ExitCode, time::Instant};

use l3lb_tests::{
    bench::{self, Options, controller, dataplane, report, sys, testrun},
    progress,
};

fn parse_args() -> Result<Options, String> {
    let mut options = Options {
        quick: false,
        out: PathBuf::from("docs"),
        part1: true,
        part2: true,
        part3: true,
    };
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "--quick" => options.quick = true,
            "--out" => options.out = args.next().ok_or("--out needs a directory")?.into(),
            "--only" => {
                let parts = args.next().ok_or("--only needs a list such as 1,3")?;
                options.part1 = parts.split(',').any(|p| p == "1");
                options.part2 = parts.split(',').any(|p| p == "2");
                options.part3 = parts.split(',').any(|p| p == "3");
            }
            "--emit-rules" => {
                // Writes kube-proxy's rule files for N services to DIR and exits: to look at
                // them, or to time `iptables-restore` and `nft -f` by hand.
                let n: u32 = args
                    .next()
                    .and_then(|n| n.parse().ok())
                    .ok_or("--emit-rules needs a number of services and a directory")?;
                let dir = PathBuf::from(args.next().ok_or("--emit-rules needs a directory")?);
                let (services, _) = l3lb_tests::bench::kubeproxy::services(n);
                let write = |name: &str, text: String| {
                    std::fs::create_dir_all(&dir)
                        .and_then(|()| std::fs::write(dir.join(name), text))
                        .map_err(|e| format!("writing {}: {e}", dir.join(name).display()))
                };
                write(
                    "iptables.rules",
                    l3lb_tests::bench::kubeproxy::iptables_restore(&services),
                )?;
                write(
                    "kube-proxy.nft",
                    l3lb_tests::bench::kubeproxy::nft_script(&services),
                )?;
                std::process::exit(0);
            }
            "-h" | "--help" => {
                println!(
                    "l3lb-bench [--quick] [--out DIR] [--only 1,2,3]\n\
                     l3lb-bench --emit-rules N DIR   write kube-proxy's rules for N services"
                );
                std::process::exit(0);
            }
            other => return Err(format!("unexpected argument {other:?}")),
        }
    }
    Ok(options)
}

fn main() -> ExitCode {
    let options = match parse_args() {
        Ok(options) => options,
        Err(err) => {
            eprintln!("l3lb-bench: {err}");
            return ExitCode::from(2);
        }
    };
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        eprintln!(
            "l3lb-bench: needs root (network namespaces, eBPF); run `cargo xtask bench` as root"
        );
        return ExitCode::from(2);
    }
    if let Err(err) = bench::l3lb_binary() {
        eprintln!("l3lb-bench: {err:#}");
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
