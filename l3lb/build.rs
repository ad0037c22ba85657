//! Builds the eBPF object that the daemon embeds, with the nightly pinned in
//! `l3lb-ebpf/rust-toolchain.toml` and bpf-linker. When either is missing the build stops with
//! the command that installs them, instead of a path error from deep inside cargo.
use std::{path::Path, process::Command};

fn main() {
    let manifest_dir = std::env::var("CARGO_MANIFEST_DIR").expect("cargo sets CARGO_MANIFEST_DIR");
    let workspace = Path::new(&manifest_dir)
        .parent()
        .expect("l3lb sits inside the workspace");
    let ebpf_dir = workspace.join("l3lb-ebpf");
    let common_dir = workspace.join("l3lb-common");
    let toolchain_file = ebpf_dir.join("rust-toolchain.toml");
    println!("cargo:rerun-if-changed={}", common_dir.display());
    println!("cargo:rerun-if-changed={}", toolchain_file.display());

    let toolchain = pinned_toolchain(&toolchain_file);
    if let Err(missing) = toolchain_present(&toolchain) {
        panic!(
            "\n\nl3lb embeds its eBPF programs and cannot build them: {missing}.\n\
             Run `cargo xtask build-ebpf` once; it installs the pinned nightly ({toolchain}, with \
             rust-src) and bpf-linker, then builds.\n\n"
        );
    }

    let package = aya_build::Package {
        name: "l3lb-ebpf",
        root_dir: ebpf_dir.to_str().expect("workspace path is UTF-8"),
        ..Default::default()
    };
    if let Err(err) = aya_build::build_ebpf([package], aya_build::Toolchain::Custom(&toolchain)) {
        panic!("building the eBPF object (l3lb-ebpf) failed: {err:#}");
    }
}

include!("../l3lb-ebpf/toolchain.rs");

/// The nightly the eBPF crate's rust-toolchain.toml pins.
fn pinned_toolchain(file: &Path) -> String {
    let text = std::fs::read_to_string(file)
        .unwrap_or_else(|err| panic!("reading {}: {err}", file.display()));
    toolchain_channel(&text)
        .unwrap_or_else(|| panic!("{} has no `channel = \"…\"` line", file.display()))
}

fn toolchain_present(toolchain: &str) -> Result<(), String> {
    let rustc = Command::new("rustup")
        .args(["run", toolchain, "rustc", "--print", "sysroot"])
        .env("RUSTUP_AUTO_INSTALL", "0")
        .output()
        .map_err(|err| format!("rustup is not runnable ({err})"))?;
    if !rustc.status.success() {
        return Err(format!("the toolchain {toolchain} is not installed"));
    }
    let sysroot = String::from_utf8_lossy(&rustc.stdout).trim().to_owned();
    if !Path::new(&sysroot)
        .join("lib/rustlib/src/rust/library/core")
        .is_dir()
    {
        return Err(format!("{toolchain} lacks the rust-src component"));
    }
    match Command::new("bpf-linker").arg("--version").output() {
        Ok(out) if out.status.success() => Ok(()),
        _ => Err("bpf-linker is not on PATH".to_owned()),
    }
}
