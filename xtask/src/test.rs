use std::process::Command;

use anyhow::Result;

use crate::{bootstrap, cmd};

#[derive(clap::Args)]
pub struct Options {
    /// Only this test name filter (passed to the test binaries).
    filter: Option<String>,
}

/// The whole suite, in the order that fails fastest: formatting, lints, unit tests, then the
/// privileged tests against the real kernel. Privileged tests are told they must run
/// (`L3LB_REQUIRE_PRIVILEGED`), so one that cannot fails instead of skipping green.
pub fn run(options: &Options) -> Result<()> {
    bootstrap::require_root_linux("cargo xtask test")?;
    bootstrap::ebpf_toolchain()?;
    bootstrap::debian_packages(bootstrap::TEST_PACKAGES)?;
    bootstrap::python_packages(bootstrap::TEST_PYTHON_PACKAGES)?;

    step("format", cmd::cargo().args(["fmt", "--all", "--check"]))?;
    step(
        "clippy",
        cmd::cargo().args(["clippy", "--all-targets", "--", "-D", "warnings"]),
    )?;
    let toolchain = bootstrap::pinned_toolchain()?;
    step(
        "clippy (eBPF)",
        Command::new("rustup")
            .current_dir(cmd::workspace_root())
            .env_remove("RUSTC")
            .env_remove("RUSTC_WORKSPACE_WRAPPER")
            .env_remove("CARGO")
            .args([
                "run",
                &toolchain,
                "cargo",
                "clippy",
                "--package",
                "l3lb-ebpf",
                "--target",
                "bpfel-unknown-none",
                "-Z",
                "build-std=core",
                "--target-dir",
                "target/bpf-clippy",
                "--",
                "-D",
                "warnings",
            ]),
    )?;

    let filter: Vec<&str> = options.filter.as_deref().into_iter().collect();
    step(
        "unit tests",
        cmd::cargo()
            .args(["test", "--lib", "--bins", "--"])
            .args(&filter),
    )?;
    // The end-to-end tests run the daemon binary (target/debug/l3lb), which `cargo test` does
    // not build for another package's tests.
    step("build l3lb", cmd::cargo().args(["build", "-p", "l3lb"]))?;
    step(
        "integration tests (privileged)",
        // Every suite runs even when one fails, so a run shows all that is broken.
        cmd::cargo()
            .args(["test", "--no-fail-fast", "--test", "*", "--"])
            .args(&filter)
            .env("L3LB_REQUIRE_PRIVILEGED", "1"),
    )?;
    Ok(())
}

fn step(name: &str, command: &mut Command) -> Result<()> {
    eprintln!("==> {name}");
    cmd::run(command)
}
