use anyhow::Result;
use clap::{Parser, Subcommand};
use l3lb::config::{LogFormat, RunConfig};

/// Announce Kubernetes service IPs from the nodes that run their pods.
#[derive(Parser)]
#[command(version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Keep this node's service IPs on the interface until SIGTERM.
    Run(Box<RunConfig>),
    /// What the running daemon on this node announces and why.
    Status {
        /// The daemon's `--metrics-addr`.
        #[arg(long, env = "L3LB_METRICS_ADDR", default_value = l3lb::config::DEFAULT_METRICS_ADDR)]
        addr: std::net::SocketAddr,
        /// Print the raw JSON report.
        #[arg(long)]
        json: bool,
    },
    /// What the XDP fast path holds: services, backends, table fill and counters, read from the
    /// pinned maps.
    Inspect {
        /// bpffs directory of the pinned maps (the daemon's --pin-root).
        #[arg(long, env = "L3LB_PIN_ROOT", default_value = l3lb::fastpath::DEFAULT_PIN_ROOT)]
        pin_root: std::path::PathBuf,
        /// Print JSON instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Print the FRR route-map that turns `--weights endpoints` metrics into BGP link-bandwidth
    /// (deploy/frr/weights.conf; see deploy/frr/README.md for where it goes).
    FrrConfig,
    /// Write the embedded eBPF object to a file (for `bpftool btf dump file …`).
    DumpObject {
        /// Where to write it.
        path: std::path::PathBuf,
    },
}

fn main() -> Result<()> {
    match Cli::parse().command {
        Command::Run(config) => {
            init_logging(config.log_format);
            // One thread: l3lb's work is a chain of small steps (a watch event, the desired
            // state, a netlink request, its echo), and handing each between worker threads cost
            // more than the steps (bench part 3: CPU per change on this node 354 → 209 µs).
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()?;
            runtime.block_on(l3lb::daemon::run(*config))
        }
        Command::Status { addr, json } => {
            let body = l3lb::status_client::fetch_report(addr)?;
            if json {
                print!("{body}");
            } else {
                let report: l3lb::status::NodeReport =
                    serde_json::from_str(&body).map_err(|err| {
                        anyhow::anyhow!("the daemon at {addr} sent an unreadable report: {err}")
                    })?;
                print!("{}", l3lb::status_client::render(&report));
            }
            Ok(())
        }
        Command::Inspect { pin_root, json } => {
            let report = l3lb::fastpath::inspect::read(&pin_root).map_err(|err| {
                anyhow::anyhow!(
                    "{err} (is l3lb running with --xdp, with --pin-root {}?)",
                    pin_root.display()
                )
            })?;
            if json {
                println!("{}", serde_json::to_string_pretty(&report)?);
            } else {
                print!("{}", l3lb::fastpath::inspect::render(&report));
            }
            Ok(())
        }
        Command::FrrConfig => {
            print!("{}", l3lb::weights::frr_route_map());
            Ok(())
        }
        Command::DumpObject { path } => std::fs::write(&path, l3lb::ebpf::OBJECT)
            .map_err(|err| anyhow::anyhow!("writing {}: {err}", path.display())),
    }
}

fn init_logging(format: LogFormat) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    // Logs go to stderr (journald and kubectl logs take either); colours only on a terminal.
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()));
    match format {
        LogFormat::Text => builder.init(),
        LogFormat::Json => builder.json().init(),
    }
}
