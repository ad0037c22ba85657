//! `cargo xtask lab`: builds a BGP anycast fabric in network namespaces (a router, three nodes
//! running FRR and l3lb with its fast path and `--weights endpoints`, pods, a client; BGP
//! unnumbered unless `--numbered`), then walks one service through its life while showing what
//! the router learns and how fast: 3 replicas (ECMP over 3 nodes), a second pod on node-a (the
//! router weights node-a 2:1), one node drained, scaled to 1, deleted. On the first step it
//! shows the fast path at work (`fast_path`). Then a Service that names no IP gets one from an
//! `L3lbIPPool`. Everything is torn down at the end, on failure and on Ctrl-C.
//!
//! ```text
//! l3lb-lab [--keep] [--no-xdp] [--numbered] [--name NAME] [--nodes N]   run the demo
//! l3lb-lab down [--name NAME]                                           tear down a kept lab
//! ```
mod fast_path;

use std::{
    collections::{BTreeMap, BTreeSet},
    net::IpAddr,
    process::ExitCode,
    sync::atomic::Ordering,
    time::{Duration, Instant},
};

use clap::{CommandFactory as _, Parser, Subcommand};
use l3lb_tests::{
    interrupt::{INTERRUPTED, install_signal_handlers},
    lab::{self, Endpoint, Lab, LabError, LabOptions, Service},
};

/// How long a change may take to show at the router before the demo calls it a failure.
const CONVERGENCE_DEADLINE: Duration = Duration::from_secs(20);
/// Connections per step from the client, each from its own source port.
const CONNECTIONS: usize = 9;

const SERVICE: &str = "web";
const SERVICE_V4: &str = "10.0.100.7";
const SERVICE_V6: &str = "2001:db8:100::7";
/// The pool step: a Service without an IP, the pool it draws from, and what every node computes.
const POOLED_SERVICE: &str = "auto";
const POOL_BLOCK: &str = "10.0.100.200/30";
const POOLED_V4: &str = "10.0.100.200";

/// The anycast demo: a BGP fabric in network namespaces, one service walked through its life.
#[derive(Parser)]
#[command(name = "l3lb-lab", disable_help_subcommand = true)]
struct Args {
    /// Leave the lab up at the end.
    #[arg(long)]
    keep: bool,
    /// Nodes DNAT to their pods with nftables (kube-proxy's way) instead of l3lb's fast path.
    #[arg(long)]
    no_xdp: bool,
    /// Numbered BGP sessions (a /30 and a /64 per link, deploy/frr/{node,router}.conf) instead
    /// of BGP unnumbered over IPv6 link-local addresses (deploy/frr/*-unnumbered.conf).
    #[arg(long)]
    numbered: bool,
    /// The lab's name (its namespaces, processes and temp dir carry it).
    #[arg(long, global = true, default_value = lab::DEFAULT_NAME)]
    name: String,
    /// How many nodes.
    #[arg(long, default_value_t = 3, value_parser = clap::value_parser!(u8).range(2..=26))]
    nodes: u8,
    #[command(subcommand)]
    action: Option<Action>,
}

#[derive(Subcommand)]
enum Action {
    /// Tear down a lab left up by --keep.
    #[command(long_flag = "down")]
    Down,
}

fn main() -> ExitCode {
    let args = Args::parse();
    if args.keep && args.action.is_some() {
        Args::command()
            .error(
                clap::error::ErrorKind::ArgumentConflict,
                "`down` and `--keep` do not go together",
            )
            .exit();
    }
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        eprintln!("l3lb-lab: needs root (network namespaces); run `cargo xtask lab` as root");
        return ExitCode::FAILURE;
    }
    if let Some(Action::Down) = args.action {
        return down(&args.name);
    }
    install_signal_handlers();
    // A command killed by the same Ctrl-C may make a step panic; the teardown that follows is
    // the point then, not the panic's message.
    let default_hook = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        if !INTERRUPTED.load(Ordering::SeqCst) {
            default_hook(info);
        }
    }));
    // The lab lives inside `demo`: whatever happens there (an error, a panic, Ctrl-C), it is
    // dropped, and so torn down, before we get here.
    let outcome = std::panic::catch_unwind(|| demo(&args));
    let code = match outcome {
        Ok(Ok(())) => ExitCode::SUCCESS,
        Ok(Err(LabError::Interrupted)) => {
            eprintln!("\ninterrupted: the lab is torn down");
            ExitCode::from(130)
        }
        Ok(Err(err)) => {
            eprintln!("\nl3lb-lab failed: {err}");
            ExitCode::FAILURE
        }
        Err(_) if INTERRUPTED.load(Ordering::SeqCst) => {
            eprintln!("\ninterrupted: the lab is torn down");
            ExitCode::from(130)
        }
        Err(_) => {
            eprintln!("\nl3lb-lab failed (panic above); the lab is torn down");
            ExitCode::FAILURE
        }
    };
    if !args.keep || code != ExitCode::SUCCESS {
        let left = Lab::leftovers(&args.name);
        if left.is_empty() {
            println!("left behind: nothing (namespaces, processes, temp dir and state all gone)");
        } else {
            eprintln!(
                "left behind: {} (remove with `cargo xtask lab down`)",
                left.join(", ")
            );
            return ExitCode::FAILURE;
        }
    }
    code
}

fn down(name: &str) -> ExitCode {
    let removed = Lab::down(name);
    if removed.is_empty() {
        println!("no lab named {name} is up");
    }
    for what in &removed {
        println!("removed {what}");
    }
    let left = Lab::leftovers(name);
    if left.is_empty() {
        ExitCode::SUCCESS
    } else {
        eprintln!("could not remove: {}", left.join(", "));
        ExitCode::FAILURE
    }
}

/// One change to the service and what the router should do about it.
struct Step {
    title: String,
    /// The new Service, or `None` to delete it.
    service: Option<Service>,
    /// The nodes the router should route the service IPs to afterwards, each with its ready
    /// pods: the next hops' weights are in their ratio (`--weights endpoints`).
    pods: Vec<(usize, u32)>,
}

fn demo(args: &Args) -> Result<(), LabError> {
    let v4: IpAddr = SERVICE_V4.parse().expect("an IPv4 address");
    let v6: IpAddr = SERVICE_V6.parse().expect("an IPv6 address");
    let nodes = usize::from(args.nodes);
    let all: Vec<usize> = (0..nodes).collect();
    let pod = |node: usize| format!("{SERVICE}-{}", &lab::node_name(node)[5..]);
    let second = format!("{}2", pod(0));
    let service = |endpoints: Vec<Endpoint>| Service {
        endpoints,
        ..Service::new(SERVICE, &[SERVICE_V4, SERVICE_V6])
    };
    let last = nodes - 1;
    let one_each: Vec<Endpoint> = all.iter().map(|&n| Endpoint::ready(&pod(n), n)).collect();
    let with_second = |mut endpoints: Vec<Endpoint>| {
        endpoints.insert(1, Endpoint::ready(&second, 0));
        endpoints
    };
    // node-a has two pods from step 2 on, every other node one.
    let weighted = |hosts: std::ops::Range<usize>| -> Vec<(usize, u32)> {
        hosts.map(|n| (n, if n == 0 { 2 } else { 1 })).collect()
    };
    let steps = [
        Step {
            title: format!("{SERVICE}: {nodes} replicas, one per node"),
            service: Some(service(one_each.clone())),
            pods: all.iter().map(|&n| (n, 1)).collect(),
        },
        Step {
            title: format!(
                "scale {SERVICE} to {}: a second pod on {}, which the router now weights twice \
                 as much as each other node",
                nodes + 1,
                lab::node_name(0)
            ),
            service: Some(service(with_second(one_each.clone()))),
            pods: weighted(0..nodes),
        },
        Step {
            title: format!(
                "drain {}: its pod terminates (ready: false, serving: true, terminating: true)",
                lab::node_name(last)
            ),
            service: Some(service(with_second(
                all.iter()
                    .map(|&n| {
                        if n == last {
                            Endpoint::terminating(&pod(n), n)
                        } else {
                            Endpoint::ready(&pod(n), n)
                        }
                    })
                    .collect(),
            ))),
            pods: weighted(0..last),
        },
        Step {
            title: format!("scale {SERVICE} to 1 replica (on {})", lab::node_name(0)),
            service: Some(service(vec![Endpoint::ready(&pod(0), 0)])),
            pods: vec![(0, 1)],
        },
        Step {
            title: format!("delete the Service {SERVICE}"),
            service: None,
            pods: vec![],
        },
    ];

    println!("== building lab {} ({nodes} nodes)", args.name);
    let mut options = LabOptions::new(&args.name);
    options.nodes = nodes;
    options.cancel = Some(&INTERRUPTED);
    options.progress = true;
    options.fast_path = !args.no_xdp;
    options.numbered = args.numbered;
    options.weights = true;
    let mut lab = Lab::up(options)?;
    println!(
        "  up in {} ms, all BGP sessions established\n",
        lab.age().as_millis()
    );
    println!("== topology\n{}", lab.topology());
    if lab.fast_path() {
        println!(
            "  pods answer `GET /` with their name; each node's fast path (l3lb --xdp) takes \
             {SERVICE_V4}:80 and [{SERVICE_V6}]:80 from its uplink straight into its own ready \
             pods (externalTrafficPolicy: Local), keeping the client's address\n"
        );
    } else {
        println!(
            "  pods answer `GET /` with their name; each node DNATs {SERVICE_V4}:80 and \
             [{SERVICE_V6}]:80 to its own ready pods with nftables (kube-proxy, \
             externalTrafficPolicy: Local)\n"
        );
    }
    for node in 0..nodes {
        lab.new_log_lines(node); // startup lines are not news
    }

    let mut previous = String::new();
    let mut timings = Vec::new();
    for (number, step) in steps.iter().enumerate() {
        println!("== step {}: {}", number + 1, step.title);
        let file = lab.manifest_dir().join(format!("{SERVICE}.yaml"));
        let changed_at = match &step.service {
            Some(service) => {
                let (at, text) = lab.apply(service);
                if previous.is_empty() {
                    println!("  wrote {}:", file.display());
                    print_indented(&text, "    ");
                } else {
                    println!("  changed {}:", file.display());
                    for line in diff(&previous, &text) {
                        println!("    {line}");
                    }
                }
                previous = text;
                at
            }
            None => {
                let at = lab.delete_service(SERVICE);
                println!("  removed {}", file.display());
                previous.clear();
                at
            }
        };
        let want: &[(usize, u32)] = &step.pods;
        let took = lab.wait_weights(&[(v4, want), (v6, want)], changed_at, CONVERGENCE_DEADLINE)?;
        let set: BTreeSet<usize> = want.iter().map(|&(node, _)| node).collect();
        let what = match want.len() {
            0 => "no route".to_owned(),
            1 => format!("via {} (1 nexthop)", lab::nodes_label(&set)),
            n => format!(
                "via {} ({n} nexthops, weighted by ready pods {})",
                lab::nodes_label(&set),
                lab::counts_label(want)
            ),
        };
        println!(
            "  router: {what} after {} ms for {SERVICE_V4}, {} ms for {SERVICE_V6} \
             (manifest change → kernel route at the router)",
            took[0].as_millis(),
            took[1].as_millis()
        );
        if want.len() > 1 {
            for ip in [v4, v6] {
                let hops = lab.router_hops(ip).unwrap_or_default();
                println!("  router: {ip}: {}", lab::hops_label(&hops));
            }
        }
        timings.push((step.title.clone(), what, took[0], took[1]));

        println!("  l3lb logs:");
        for node in 0..nodes {
            for line in lab.new_log_lines(node) {
                println!("    {} │ {}", lab::node_name(node), line);
            }
        }
        println!("  the router's BGP table:");
        print_indented(&bgp_routes(&lab.router_bgp_table()), "    ");
        println!("  the router's kernel routes:");
        print_indented(&lab.router_kernel_routes(), "    ");
        client_checks(&mut lab, v4, v6, &set)?;
        if number == 0 && lab.fast_path() {
            fast_path::tour(&mut lab, SERVICE, v4, v6)?;
        }
        println!();
    }

    println!("== change → route at the router");
    for (title, what, took_v4, took_v6) in &timings {
        println!(
            "  {:>5} ms (IPv4) {:>5} ms (IPv6)  {title}: {what}",
            took_v4.as_millis(),
            took_v6.as_millis()
        );
    }

    pool_step(&mut lab, nodes)?;

    if args.keep {
        println!("\n== leaving the lab up, with {SERVICE} back on every node");
        let (at, _) = lab.apply(steps[0].service.as_ref().expect("step 1 has a service"));
        let pods = &steps[0].pods;
        lab.wait_weights(&[(v4, pods), (v6, pods)], at, CONVERGENCE_DEADLINE)?;
        println!("{}", lab.keep());
    } else {
        println!("\n== tearing down");
    }
    Ok(())
}

/// A Service that names no IP: every node computes the same address from the `L3lbIPPool` in the
/// manifest directory, and the router routes it to the nodes with a ready pod.
fn pool_step(lab: &mut Lab, nodes: usize) -> Result<(), LabError> {
    let ip: IpAddr = POOLED_V4.parse().expect("an IPv4 address");
    let hosts: Vec<usize> = vec![0, nodes - 1];
    println!("== a Service without an IP: {POOLED_SERVICE} gets one from an L3lbIPPool");
    let pool = lab::pool_manifest("lab", &[POOL_BLOCK]);
    lab.write_manifest("pool", &pool);
    println!(
        "  wrote {}:",
        lab.manifest_dir().join("pool.yaml").display()
    );
    print_indented(&pool, "    ");
    let service = Service {
        endpoints: hosts
            .iter()
            .map(|&n| Endpoint::ready(&format!("{POOLED_SERVICE}-{}", &lab::node_name(n)[5..]), n))
            .collect(),
        ..Service::pooled(POOLED_SERVICE, &[POOLED_V4])
    };
    let (at, text) = lab.apply(&service);
    println!(
        "  wrote {} (no loadBalancerIPs):",
        lab.manifest_dir()
            .join(format!("{POOLED_SERVICE}.yaml"))
            .display()
    );
    print_indented(&text, "    ");
    let took = lab.wait_routes(&[(ip, &hosts)], at, CONVERGENCE_DEADLINE)?;
    let set: BTreeSet<usize> = hosts.iter().copied().collect();
    println!(
        "  router: {ip} via {} after {} ms (every node allocated the pool's first address on its own)",
        lab::nodes_label(&set),
        took[0].as_millis()
    );
    println!("  l3lb logs:");
    for node in 0..nodes {
        for line in lab.new_log_lines(node) {
            println!("    {} │ {}", lab::node_name(node), line);
        }
    }
    let host_names: BTreeSet<String> = hosts.iter().map(|&n| lab::node_name(n)).collect();
    for _ in 0..3 {
        let reply = lab.client_get(ip).map_err(LabError::Failed)?;
        println!("  client: http://{ip}/ → {} on {}", reply.pod, reply.node);
        if !host_names.contains(&reply.node) {
            return Err(LabError::Failed(format!(
                "a connection to {ip} landed on {}, which hosts no ready pod",
                reply.node
            )));
        }
    }
    let at = lab.delete_service(POOLED_SERVICE);
    lab.wait_routes(&[(ip, &[])], at, CONVERGENCE_DEADLINE)?;
    println!("  deleted {POOLED_SERVICE}: the route is gone\n");
    Ok(())
}

/// Connections from the client: each from a new source port, so the router's L4 hash spreads
/// them; every one must land on a node that hosts a ready pod. Without a route, they must fail.
fn client_checks(
    lab: &mut Lab,
    v4: IpAddr,
    v6: IpAddr,
    hosts: &BTreeSet<usize>,
) -> Result<(), LabError> {
    let host_names: BTreeSet<String> = hosts.iter().map(|&n| lab::node_name(n)).collect();
    if hosts.is_empty() {
        match lab.client_get(v4) {
            Ok(reply) => {
                return Err(LabError::Failed(format!(
                    "{v4} answered ({} on {}) without a route",
                    reply.pod, reply.node
                )));
            }
            Err(err) => println!("  client: curl http://{v4}/ fails, as it should: {err}"),
        }
        return Ok(());
    }
    println!("  client: {CONNECTIONS} connections to http://{v4}/ and 3 to http://[{v6}]/:");
    let mut per_node: BTreeMap<String, usize> = BTreeMap::new();
    let targets = std::iter::repeat_n(v4, CONNECTIONS).chain(std::iter::repeat_n(v6, 3));
    for ip in targets {
        if INTERRUPTED.load(Ordering::SeqCst) {
            return Err(LabError::Interrupted);
        }
        let started = Instant::now();
        let reply = lab.client_get(ip).map_err(LabError::Failed)?;
        println!(
            "    port {} → {:<7} on {} (the pod saw {}) in {} ms",
            reply.local_port,
            reply.pod,
            reply.node,
            reply.peer,
            started.elapsed().as_millis()
        );
        if !host_names.contains(&reply.node) {
            return Err(LabError::Failed(format!(
                "a connection to {ip} landed on {}, which hosts no ready pod",
                reply.node
            )));
        }
        *per_node.entry(reply.node).or_default() += 1;
    }
    let spread: Vec<String> = per_node
        .iter()
        .map(|(node, count)| format!("{node}: {count}"))
        .collect();
    println!("    spread: {}", spread.join(", "));
    Ok(())
}

/// The route lines of `show bgp` output, without the legend each table starts with.
fn bgp_routes(table: &str) -> String {
    let mut out = String::new();
    let mut in_routes = false;
    for line in table.lines() {
        if line.trim_start().starts_with("Network") {
            in_routes = true;
        } else if line.starts_with("BGP table version") {
            in_routes = false;
        }
        if (in_routes || line.starts_with("No BGP prefixes")) && !line.trim().is_empty() {
            out += line;
            out.push('\n');
        }
    }
    out
}

fn print_indented(text: &str, indent: &str) {
    for line in text.lines() {
        println!("{indent}{line}");
    }
}

/// A line diff (longest common subsequence): `- old` and `+ new` lines, unchanged ones left out.
fn diff(old: &str, new: &str) -> Vec<String> {
    let a: Vec<&str> = old.lines().collect();
    let b: Vec<&str> = new.lines().collect();
    // lcs[i][j]: length of the LCS of a[i..] and b[j..]
    let mut lcs = vec![vec![0usize; b.len() + 1]; a.len() + 1];
    for i in (0..a.len()).rev() {
        for j in (0..b.len()).rev() {
            lcs[i][j] = if a[i] == b[j] {
                lcs[i + 1][j + 1] + 1
            } else {
                lcs[i + 1][j].max(lcs[i][j + 1])
            };
        }
    }
    let (mut i, mut j) = (0, 0);
    let mut out = Vec::new();
    while i < a.len() || j < b.len() {
        if i < a.len() && j < b.len() && a[i] == b[j] {
            i += 1;
            j += 1;
        } else if i < a.len() && (j == b.len() || lcs[i + 1][j] >= lcs[i][j + 1]) {
            out.push(format!("- {}", a[i]));
            i += 1;
        } else {
            out.push(format!("+ {}", b[j]));
            j += 1;
        }
    }
    out
}
