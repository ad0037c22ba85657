use anyhow::Result;
use clap::{Parser, Subcommand};

/// Announce Kubernetes service IPs from the nodes that run their pods.
#[derive(Parser)]
#[command(version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Write the embedded eBPF object to a file (for `bpftool btf dump file …`).
    DumpObject {
        /// Where to write it.
        path: std::path::PathBuf,
    },
}

fn main() -> Result<()> {
    match Cli::parse().command {
        Command::DumpObject { path } => {
            std::fs::write(&path, l3lb::ebpf::OBJECT)
                .map_err(|err| anyhow::anyhow!("writing {}: {err}", path.display()))?;
        }
    }
    Ok(())
}
