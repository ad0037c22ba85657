//! Makes sure the machine has what the build, the tests and the lab need, installing it when
//! missing and doing nothing (quickly) when present. Run on a fresh Debian machine as root.
use std::process::Command;

use anyhow::{Context as _, Result, bail};

use crate::cmd::{self, output, run, workspace_root};

/// bpf-linker release that links with the pinned nightly's LLVM.
const BPF_LINKER_VERSION: &str = "0.10.0";

/// Debian packages the privileged tests and the lab use, with the command each provides, so
/// presence is checked without asking dpkg for every one.
pub const TEST_PACKAGES: &[(&str, &str)] = &[
    ("iproute2", "ip"),
    ("bpftool", "bpftool"),
    ("iputils-ping", "ping"),
];

/// Fails unless we run as root on Linux: the tests and the lab create network namespaces and
/// load eBPF programs.
pub fn require_root_linux(what: &str) -> Result<()> {
    if !cfg!(target_os = "linux") {
        bail!(
            "{what} needs Linux (network namespaces, eBPF); this is {}",
            std::env::consts::OS
        );
    }
    // SAFETY: geteuid has no preconditions and cannot fail.
    if unsafe { libc::geteuid() } != 0 {
        bail!(
            "{what} needs root (it creates network namespaces and loads eBPF programs); run it with sudo"
        );
    }
    Ok(())
}

/// The nightly named in `l3lb-ebpf/rust-toolchain.toml`.
pub fn pinned_toolchain() -> Result<String> {
    let file = workspace_root().join("l3lb-ebpf/rust-toolchain.toml");
    let text =
        std::fs::read_to_string(&file).with_context(|| format!("reading {}", file.display()))?;
    text.lines()
        .find_map(|line| {
            let value = line
                .trim()
                .strip_prefix("channel")?
                .trim()
                .strip_prefix('=')?;
            Some(value.trim().trim_matches('"').to_owned())
        })
        .with_context(|| format!("{} has no `channel = \"…\"` line", file.display()))
}

/// The pinned nightly with rust-src (to build `core`) and clippy (to lint the eBPF crate), and
/// bpf-linker at the version that matches its LLVM.
pub fn ebpf_toolchain() -> Result<()> {
    let toolchain = pinned_toolchain()?;
    let has_clippy = output(
        Command::new("rustup")
            .args(["run", &toolchain, "cargo-clippy", "--version"])
            .env("RUSTUP_AUTO_INSTALL", "0"),
    )
    .is_some();
    let complete = has_clippy
        && output(
            Command::new("rustup")
                .args(["run", &toolchain, "rustc", "--print", "sysroot"])
                .env("RUSTUP_AUTO_INSTALL", "0"),
        )
        .is_some_and(|sysroot| {
            std::path::Path::new(sysroot.trim())
                .join("lib/rustlib/src/rust/library/core")
                .is_dir()
        });
    if !complete {
        eprintln!("bootstrap: installing {toolchain} with rust-src and clippy");
        run(Command::new("rustup").args([
            "toolchain",
            "install",
            &toolchain,
            "--profile",
            "minimal",
            "--component",
            "rust-src",
            "--component",
            "clippy",
        ]))?;
    }

    let linker = output(Command::new("bpf-linker").arg("--version")).unwrap_or_default();
    if !linker.contains(BPF_LINKER_VERSION) {
        eprintln!("bootstrap: installing bpf-linker {BPF_LINKER_VERSION} (takes a few minutes)");
        run(cmd::cargo().args([
            "install",
            &format!("bpf-linker@{BPF_LINKER_VERSION}"),
            "--locked",
            "--force",
        ]))?;
    }
    Ok(())
}

/// Installs the Debian packages whose commands are missing.
pub fn debian_packages(packages: &[(&str, &str)]) -> Result<()> {
    let missing: Vec<&str> = packages
        .iter()
        .filter(|(_, command)| !command_exists(command))
        .map(|(package, _)| *package)
        .collect();
    if missing.is_empty() {
        return Ok(());
    }
    eprintln!(
        "bootstrap: installing Debian packages {}",
        missing.join(" ")
    );
    run(Command::new("apt-get").args(["update", "-q"]))?;
    run(Command::new("apt-get")
        .args(["install", "-y", "-q", "--no-install-recommends"])
        .args(&missing)
        .env("DEBIAN_FRONTEND", "noninteractive"))
}

fn command_exists(command: &str) -> bool {
    ["/usr/sbin", "/usr/bin", "/sbin", "/bin", "/usr/lib/frr"]
        .iter()
        .any(|dir| std::path::Path::new(dir).join(command).exists())
}
