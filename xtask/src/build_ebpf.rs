use std::path::PathBuf;

use anyhow::{Context as _, Result};

use crate::{bootstrap, cmd};

#[derive(clap::Args)]
pub struct Options {
    /// Build the daemon that embeds the object in release mode.
    #[arg(long)]
    release: bool,
}

/// Builds the daemon, whose build script compiles the eBPF object, and copies the object to
/// `target/bpf/l3lb.bpf.o` so it can be inspected (`bpftool btf dump file …`).
pub fn run(options: &Options) -> Result<()> {
    bootstrap::ebpf_toolchain()?;
    let mut build = cmd::cargo();
    build.args(["build", "--package", "l3lb"]);
    if options.release {
        build.arg("--release");
    }
    cmd::run(&mut build)?;

    let profile = if options.release { "release" } else { "debug" };
    let target = cmd::workspace_root().join("target");
    let daemon = target.join(profile).join("l3lb");
    let object = target.join("bpf").join("l3lb.bpf.o");
    std::fs::create_dir_all(object.parent().context("object path has a parent")?)?;
    cmd::run(
        std::process::Command::new(&daemon)
            .arg("dump-object")
            .arg(&object),
    )?;
    println!("{}", PathBuf::from(&object).display());
    Ok(())
}
