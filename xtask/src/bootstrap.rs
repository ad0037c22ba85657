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
    // The end-to-end tests run the lab (see LAB_PACKAGES).
    ("frr", "bgpd"),
    ("nftables", "nft"),
    ("curl", "curl"),
    // tests/tests/deploy_manifests.rs verifies deploy/systemd/l3lb.service with it.
    ("systemd", "systemd-analyze"),
    // tests/tests/fastpath_e2e.rs loads kube-proxy-style rules and reads the node's conntrack
    // table, which steered flows must never reach.
    ("iptables", "iptables-restore"),
    ("conntrack", "conntrack"),
];

/// What `cargo xtask lab` runs: FRR (bgpd and zebra, in /usr/lib/frr) on the router and the nodes,
/// nftables for the nodes' DNAT to their pods (`--no-xdp`; with the fast path, to show there is
/// none), bpftool to show a pinned map, curl as the client.
pub const LAB_PACKAGES: &[(&str, &str)] = &[
    ("iproute2", "ip"),
    ("frr", "bgpd"),
    ("nftables", "nft"),
    ("bpftool", "bpftool"),
    ("iputils-ping", "ping"),
    ("curl", "curl"),
];

/// What `cargo xtask bench` runs: `ip` and `tc` for the namespaces and the drop program,
/// kube-proxy's two rule sets (`iptables-restore`, `nft`) as the baselines, `conntrack` to count
/// the node's conntrack entries, bpftool to look at the fast path's maps.
pub const BENCH_PACKAGES: &[(&str, &str)] = &[
    ("iproute2", "ip"),
    ("iptables", "iptables-restore"),
    ("nftables", "nft"),
    ("conntrack", "conntrack"),
    ("bpftool", "bpftool"),
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

include!("../../l3lb-ebpf/toolchain.rs");

/// The nightly named in `l3lb-ebpf/rust-toolchain.toml`.
pub fn pinned_toolchain() -> Result<String> {
    let file = workspace_root().join("l3lb-ebpf/rust-toolchain.toml");
    let text =
        std::fs::read_to_string(&file).with_context(|| format!("reading {}", file.display()))?;
    toolchain_channel(&text)
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

/// PyPI packages the tests use, with the command each installs. kubernetes-validate checks the
/// Kubernetes manifests against the official JSON schemas offline (it ships them);
/// tests/tests/deploy_manifests.rs validates against the newest Kubernetes this version knows.
pub const TEST_PYTHON_PACKAGES: &[(&str, &str)] =
    &[("kubernetes-validate==1.37.0", "kubernetes-validate")];

/// Installs with python3's pip the PyPI packages whose commands are missing (or, for a pinned
/// `name==version`, whose `--version` does not say that version). Debian's own python3 refuses
/// `pip install` outside a virtual environment ("externally-managed-environment", PEP 668); there
/// the install is retried with `--break-system-packages`, which puts them in /usr/local.
pub fn python_packages(packages: &[(&str, &str)]) -> Result<()> {
    let missing: Vec<&str> = packages
        .iter()
        .filter(|(requirement, command)| !python_command_present(requirement, command))
        .map(|(requirement, _)| *requirement)
        .collect();
    if missing.is_empty() {
        return Ok(());
    }
    if output(Command::new("python3").args(["-m", "pip", "--version"])).is_none() {
        debian_packages(&[("python3", "python3"), ("python3-pip", "pip3")])?;
    }
    eprintln!("bootstrap: installing PyPI packages {}", missing.join(" "));
    let pip = || {
        let mut command = Command::new("python3");
        command
            .args([
                "-m",
                "pip",
                "install",
                "--quiet",
                "--disable-pip-version-check",
                "--no-warn-script-location",
            ])
            .args(&missing)
            .env("PIP_ROOT_USER_ACTION", "ignore");
        command
    };
    let first = pip().output().context("starting python3 -m pip install")?;
    if !first.status.success() {
        let stderr = String::from_utf8_lossy(&first.stderr);
        if !stderr.contains("externally-managed-environment") {
            bail!(
                "python3 -m pip install {} failed:\n{stderr}",
                missing.join(" ")
            );
        }
        run(pip().arg("--break-system-packages"))?;
    }
    for (requirement, command) in packages {
        if !python_command_present(requirement, command) {
            bail!(
                "pip installed {requirement}, but its command {command} is neither on PATH nor in \
                 python3's scripts directories"
            );
        }
    }
    Ok(())
}

fn python_command_present(requirement: &str, command: &str) -> bool {
    let Some(path) = python_command(command) else {
        return false;
    };
    match requirement.split_once("==") {
        Some((_, version)) => output(Command::new(path).arg("--version"))
            .is_some_and(|reported| reported.split_whitespace().any(|word| word == version)),
        None => true,
    }
}

/// Where a pip-installed command is: on PATH, in python3's scripts directories (pyenv and
/// virtual environments put it there), in ~/.local/bin (`pip install --user`) or /usr/local/bin.
fn python_command(command: &str) -> Option<std::path::PathBuf> {
    let find = |dirs: Vec<std::path::PathBuf>| {
        dirs.into_iter()
            .map(|dir| dir.join(command))
            .find(|path| path.is_file())
    };
    let path = std::env::var_os("PATH")
        .map(|path| std::env::split_paths(&path).collect())
        .unwrap_or_default();
    find(path).or_else(|| {
        let mut dirs: Vec<std::path::PathBuf> = output(Command::new("python3").args([
            "-c",
            "import sysconfig; print(sysconfig.get_path('scripts')); \
             print(sysconfig.get_path('scripts', 'posix_user'))",
        ]))
        .map(|scripts| scripts.lines().map(std::path::PathBuf::from).collect())
        .unwrap_or_default();
        if let Some(home) = std::env::var_os("HOME") {
            dirs.push(std::path::Path::new(&home).join(".local/bin"));
        }
        dirs.push("/usr/local/bin".into());
        find(dirs)
    })
}
