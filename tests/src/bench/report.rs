//! The outputs: `benchmarks.md` (tables and what the numbers mean), `benchmarks.json` (the
//! same figures, every round included) and `benchmarks-pps.svg` (packets per second against
//! the number of services, one line per mode, log x axis).
use std::{fmt::Write as _, path::Path};

use anyhow::Result;
use serde::Serialize;

use super::{
    controller::{Part3, Scale},
    dataplane::{Mode, Part2},
    stats::Summary,
    stats::fmt_num,
    sys::Machine,
    testrun::Part1,
};

#[derive(Clone, Debug, Serialize)]
pub struct Target {
    pub name: String,
    pub value: String,
    pub baseline: String,
    pub ratio: String,
    pub target: String,
    /// `None` when it could not be measured.
    pub met: Option<bool>,
}

#[derive(Clone, Debug, Serialize)]
pub struct Report {
    pub machine: Machine,
    pub quick: bool,
    pub duration_seconds: f64,
    pub targets: Vec<Target>,
    pub part1: Option<Part1>,
    pub part2: Option<Part2>,
    pub part3: Option<Part3>,
    pub errors: Vec<String>,
}

/// `1 service`, `1 000 services`.
fn services(n: u32) -> String {
    format!(
        "{} service{}",
        fmt_num(n.into(), 0),
        if n == 1 { "" } else { "s" }
    )
}

fn met(value: Option<bool>) -> &'static str {
    match value {
        Some(true) => "yes",
        Some(false) => "**no**",
        None => "n/a",
    }
}

fn ratio(value: f64) -> String {
    if value.is_finite() {
        format!("{value:.2}×")
    } else {
        "n/a".into()
    }
}

fn row(part: &Part2, mode: Mode, services: u32) -> Option<&super::dataplane::Row> {
    part.rows
        .iter()
        .find(|r| r.mode == mode && r.services == services && r.error.is_none())
}

/// The targets of the brief, evaluated on what was measured.
pub fn targets(part1: Option<&Part1>, part2: Option<&Part2>, part3: Option<&Part3>) -> Vec<Target> {
    let mut targets = Vec::new();
    if let Some(p) = part1 {
        for r in &p.rows {
            targets.push(Target {
                name: format!(
                    "XDP service packet (established flow), {}",
                    services(r.services)
                ),
                value: format!("{:.1} ns", r.xdp_service_ns.median),
                baseline: format!("{:.1} ns (floor)", r.xdp_floor_ns.median),
                ratio: ratio(r.service_ratio.median),
                target: "≤ 2× floor".into(),
                met: Some(r.service_ratio.median <= 2.0),
            });
            targets.push(Target {
                name: format!("XDP pass-through (not a service), {}", services(r.services)),
                value: format!("{:.1} ns", r.xdp_pass_through_ns.median),
                baseline: format!("{:.1} ns (floor)", r.xdp_floor_ns.median),
                ratio: ratio(r.pass_through_ratio.median),
                target: "≤ 1.2× floor".into(),
                met: Some(r.pass_through_ratio.median <= 1.2),
            });
        }
    }
    if let Some(p) = part2 {
        type Pick = fn(&super::dataplane::Row) -> &Summary;
        let udp: Pick = |r| &r.udp_pps;
        let tcp: Pick = |r| &r.tcp_cps;
        for (what, summary) in [("UDP packets/s", udp), ("new TCP connections/s", tcp)] {
            let pick = |r: &super::dataplane::Row| summary(r).median;
            let (xdp, ipt) = (row(p, Mode::L3lbXdp, 1_000), row(p, Mode::Iptables, 1_000));
            let (x, i) = (xdp.map_or(f64::NAN, pick), ipt.map_or(f64::NAN, pick));
            // The median of per-round ratios (neighbours in time), not the ratio of medians.
            let r = match (xdp, ipt) {
                (Some(a), Some(b)) => paired(summary(a), summary(b)).median,
                _ => f64::NAN,
            };
            targets.push(Target {
                name: format!("{what}, l3lb XDP vs kube-proxy iptables, 1 000 services"),
                value: format!("{} (XDP)", fmt_num(x, 0)),
                baseline: format!("{} (iptables)", fmt_num(i, 0)),
                ratio: ratio(r),
                target: "≥ 2×".into(),
                met: r.is_finite().then_some(r >= 2.0),
            });
            let counts: Vec<u32> = p
                .rows
                .iter()
                .filter(|r| r.mode == Mode::L3lbXdp && r.error.is_none())
                .map(|r| r.services)
                .collect();
            if let (Some(&lo), Some(&hi)) = (counts.iter().min(), counts.iter().max()) {
                let (a, b) = (
                    row(p, Mode::L3lbXdp, lo).map_or(f64::NAN, pick),
                    row(p, Mode::L3lbXdp, hi).map_or(f64::NAN, pick),
                );
                let change = b / a - 1.0;
                targets.push(Target {
                    name: format!(
                        "{what}, l3lb XDP flatness, {} → {} services",
                        fmt_num(lo.into(), 0),
                        fmt_num(hi.into(), 0)
                    ),
                    value: format!("{} at {}", fmt_num(b, 0), fmt_num(hi.into(), 0)),
                    baseline: format!("{} at {}", fmt_num(a, 0), fmt_num(lo.into(), 0)),
                    ratio: format!("{:+.1} %", change * 100.0),
                    target: "within ±10 %".into(),
                    met: change.is_finite().then_some(change.abs() <= 0.10),
                });
            }
        }
    }
    if let Some(p) = part3.and_then(|p| p.scales.last()) {
        targets.push(Target {
            name: "API change → address on lo, p99".into(),
            value: format!(
                "{:.2} ms (p50 {:.2} ms)",
                p.latency_ms.p99, p.latency_ms.p50
            ),
            baseline: "—".into(),
            ratio: "—".into(),
            target: "< 20 ms".into(),
            met: Some(p.latency_ms.p99 < 20.0 && p.missed == 0),
        });
        let rss_mb = p.rss_after_sync_mib * 1.048_576;
        targets.push(Target {
            name: format!(
                "resident memory after sync, {} Services",
                fmt_num(p.services as f64, 0)
            ),
            value: format!("{rss_mb:.1} MB"),
            baseline: "—".into(),
            ratio: "—".into(),
            target: "< 40 MB".into(),
            met: Some(rss_mb < 40.0),
        });
        targets.push(Target {
            name: "CPU on this node per change on another node".into(),
            value: format!("{:.1} µs", p.cpu_per_remote_change_us),
            baseline: format!("{:.2} ms/s idle (subtracted)", p.idle_cpu_ms_per_s),
            ratio: "—".into(),
            target: "< 50 µs".into(),
            met: Some(p.cpu_per_remote_change_us < 50.0 && p.unexpected_events == 0),
        });
    }
    targets
}

pub fn write(report: &Report, out: &Path) -> Result<()> {
    std::fs::create_dir_all(out)?;
    std::fs::write(
        out.join("benchmarks.json"),
        serde_json::to_string_pretty(report)? + "\n",
    )?;
    if let Some(part2) = &report.part2 {
        std::fs::write(out.join("benchmarks-pps.svg"), svg_pps(part2))?;
    }
    std::fs::write(out.join("benchmarks.md"), markdown(report))?;
    Ok(())
}

fn markdown(r: &Report) -> String {
    let m = &r.machine;
    let mut md = String::new();
    let command = if r.quick {
        "cargo xtask bench --quick"
    } else {
        "cargo xtask bench"
    };
    let _ = writeln!(md, "# l3lb benchmarks\n");
    let _ = writeln!(
        md,
        "Generated by `{command}` on {} in {:.0} s{}. Every figure is measured next to its baseline in \
         the same run: on a shared machine the absolute numbers drift from run to run, the ratios hold. \
         Medians over the rounds, with [min–max] across rounds.\n",
        m.date,
        r.duration_seconds,
        if r.quick {
            " (the reduced set: fewer rounds, shorter measurements, no 10 000-service data path)"
        } else {
            ""
        }
    );
    let _ = writeln!(md, "| machine | |\n| --- | --- |");
    let _ = writeln!(md, "| CPU | {} × {} |", m.cpus, m.model);
    let _ = writeln!(md, "| memory | {:.1} GiB |", m.memory_gib);
    let _ = writeln!(md, "| kernel | {} |", m.kernel);
    let _ = writeln!(md, "| commit | `{}` |", m.commit);
    let _ = writeln!(md, "| iptables | {} |", m.iptables);
    let _ = writeln!(md, "| nftables | {} |\n", m.nft);
    if !r.errors.is_empty() {
        let _ = writeln!(md, "**Parts that failed:**\n");
        for error in &r.errors {
            let _ = writeln!(md, "- {}", error.replace('\n', " "));
        }
        md.push('\n');
    }

    let _ = writeln!(md, "## Targets\n");
    let _ = writeln!(
        md,
        "| what | value | baseline | ratio | target | met? |\n| --- | --- | --- | --- | --- | --- |"
    );
    for t in &r.targets {
        let _ = writeln!(
            md,
            "| {} | {} | {} | {} | {} | {} |",
            t.name,
            t.value,
            t.baseline,
            t.ratio,
            t.target,
            met(t.met)
        );
    }
    md.push('\n');

    if let Some(p) = &r.part1 {
        part1_md(&mut md, p, r.part2.as_ref());
    }
    if let Some(p) = &r.part2 {
        part2_md(&mut md, p);
    }
    if let Some(p) = &r.part3 {
        part3_md(&mut md, p);
    }
    md
}

fn part1_md(md: &mut String, p: &Part1, part2: Option<&Part2>) {
    let _ = writeln!(
        md,
        "## 1. Per-packet cost of the programs (`BPF_PROG_TEST_RUN`)\n"
    );
    let _ = writeln!(
        md,
        "The kernel's own time per repetition of test runs with `repeat = {}`, {} rounds; each round \
         runs the floor (an empty program of the same type, `r0 = verdict; exit`) next to the programs, \
         and the ratio is taken per round. 60-byte UDP/IPv4 frames. The services sit in the maps as the \
         daemon writes them (`l3lb::fastpath::loader` and `tables::Tables`, Maglev tables of {} entries).\n",
        p.repeat, p.rounds, p.table_size
    );
    let _ = writeln!(
        md,
        "- **service (established flow)**: the measured service's only backend is its own address and \
         port, so the packet the kernel hands to the next repetition is again a service packet; every \
         repetition does the whole forwarding path (service lookup, flow lookup, backend check, \
         reply-entry check, destination rewrite with both checksums), on a flow that is established \
         after the first repetition.\n\
         - **new flow**: one packet per test run (`repeat = 1`), each from a source address and port not \
         seen before (flow miss, Maglev pick, two LRU inserts), against single runs of the floor. The \
         timer's own overhead is in both, so the difference is what counts.\n\
         - **pass-through**: a UDP packet to an address that is no service (parse, one hash miss, a counter).\n\
         - **TC reply**: the egress program on the pod's reply (reply lookup, source rewrite through the \
         checksum helpers), against an empty TC program.\n\
         - A test run repeats one packet, so the maps' entries for it stay in the CPU caches: this is the \
         cost with warm caches. How many services are loaded matters for the cold-cache case (hash \
         buckets, Maglev rows), which this cannot show.\n"
    );
    let _ = writeln!(
        md,
        "| services | path | ns/packet | floor ns | ratio | target | met? |\n| --- | --- | --- | --- | --- | --- | --- |"
    );
    for r in &p.rows {
        let n = fmt_num(r.services.into(), 0);
        let _ = writeln!(
            md,
            "| {n} | XDP service (established) | {} | {:.1} | {} [{:.2}–{:.2}] | ≤ 2× | {} |",
            r.xdp_service_ns.show(1),
            r.xdp_floor_ns.median,
            ratio(r.service_ratio.median),
            r.service_ratio.min,
            r.service_ratio.max,
            met(Some(r.service_ratio.median <= 2.0))
        );
        let _ = writeln!(
            md,
            "| {n} | XDP pass-through | {} | {:.1} | {} [{:.2}–{:.2}] | ≤ 1.2× | {} |",
            r.xdp_pass_through_ns.show(1),
            r.xdp_floor_ns.median,
            ratio(r.pass_through_ratio.median),
            r.pass_through_ratio.min,
            r.pass_through_ratio.max,
            met(Some(r.pass_through_ratio.median <= 1.2))
        );
        let _ = writeln!(
            md,
            "| {n} | *for scale: the floor + one `L3LB_SERVICES` lookup (miss)* | {} | {:.1} | {} [{:.2}–{:.2}] | — | — |",
            r.xdp_one_lookup_ns.show(1),
            r.xdp_floor_ns.median,
            ratio(r.one_lookup_ratio.median),
            r.one_lookup_ratio.min,
            r.one_lookup_ratio.max
        );
        let _ = writeln!(
            md,
            "| {n} | XDP new flow (single runs, {} packets) | {:.0} (+{:.0} over the floor) | {:.0} | {} | — | — |",
            fmt_num(r.new_flow_samples as f64, 0),
            r.new_flow_ns,
            r.new_flow_ns - r.single_floor_ns,
            r.single_floor_ns,
            ratio(r.new_flow_ns / r.single_floor_ns)
        );
        let _ = writeln!(
            md,
            "| {n} | TC reply translation | {} | {:.1} | {} [{:.2}–{:.2}] | — | — |",
            r.tc_reply_ns.show(1),
            r.tc_floor_ns.median,
            ratio(r.tc_reply_ratio.median),
            r.tc_reply_ratio.min,
            r.tc_reply_ratio.max
        );
    }
    let installs: Vec<String> = p
        .rows
        .iter()
        .filter(|r| r.services > 1)
        .map(|r| {
            format!(
                "{:.1} s up to {}",
                r.install_seconds,
                fmt_num(r.services.into(), 0)
            )
        })
        .collect();
    let _ = writeln!(
        md,
        "\nWriting the services into the maps (one `bpf()` call per Maglev entry) took {}.\n",
        installs.join(", then ")
    );
    let Some(first) = p.rows.first() else { return };
    let floor = first.xdp_floor_ns.median;
    let lookup = first.xdp_one_lookup_ns.median - floor;
    let _ = writeln!(
        md,
        "Reading the targets: the floor is an empty program, {floor:.0} ns. A single hash lookup in \
         the services map already adds {lookup:.0} ns ({}), so no program that recognises services \
         with a hash lookup can stay within 1.2× of this floor. The pass-through does that lookup, \
         parses Ethernet, IP and UDP and bumps a per-CPU counter; the established service path does \
         three hash lookups (service, flow, reply entry), an array lookup (backend), the rewrite and \
         two counters. The targets are missed by a wide margin; they could only be met against a floor \
         that includes a driver's per-packet work, which a test run does not have.\n",
        ratio(first.one_lookup_ratio.median),
    );
    if let Some(direct) = part2.and_then(|p2| {
        p2.rows
            .iter()
            .filter(|r| r.mode == Mode::Direct && r.error.is_none())
            .map(|r| r.udp_pps.median)
            .reduce(f64::max)
    }) {
        let path_ns = 1e9 / direct;
        let _ = writeln!(
            md,
            "For scale against a whole packet: in part 2, one UDP packet from the client's packet socket to \
             the pod's took about {} ns with no service at all; the established service path's \
             {:.0} ns are {:.0} % of that.",
            fmt_num(path_ns, 0),
            first.xdp_service_ns.median,
            first.xdp_service_ns.median / path_ns * 100.0
        );
    }
    md.push('\n');
}

/// Per-round ratios of two modes measured in the same rounds (neighbours in time), so a slow
/// moment of the machine cancels out.
pub fn paired(a: &Summary, b: &Summary) -> Summary {
    Summary::of(a.rounds.iter().zip(&b.rounds).map(|(a, b)| a / b).collect())
}

fn part2_md(md: &mut String, p: &Part2) {
    let _ = writeln!(md, "## 2. The data path end to end (network namespaces)\n");
    let _ = writeln!(
        md,
        "`client ── node ── 2 pods`, all veth pairs, the pods on the node. A fresh topology per mode \
         and service count. The node has kube-proxy's iptables rules (`iptables-restore`), or \
         kube-proxy's nftables rules (`nft -f`), or runs `l3lb run --xdp` (native XDP on the uplink, \
         file source, no netfilter rule at all). The Services are `LoadBalancer`, \
         `externalTrafficPolicy: Local`, two endpoints each (the two pods); the measured one sits in \
         the middle of kube-proxy's list. Two references take no service at all: the client sends to \
         a pod's own address and the node only routes (*direct*), once more with an empty XDP program \
         on the uplink (*empty XDP*): the floor of the path, and what any XDP program costs on veth. \
         Each round measures every mode once, in a rotating order; ratios are taken per round.\n\n\
         - **UDP**: one sender thread writes ready-made 60-byte frames of {} flows (source ports) to \
         the client's `eth0` with an `AF_PACKET` socket (qdisc bypassed, `sendmmsg` in batches of 64), \
         {:.1} s per round, {} rounds; *delivered* = packets counted on the pods' `eth0`, per second of \
         sending (one reader in the pods drains the sockets, spinning while measuring). Everything up \
         to the pod's socket runs on the sending CPU in softirq, so the rate is the inverse of the \
         path's per-packet cost, the sender's own included. After their first packet these flows are \
         established: kube-proxy's rules no longer run, conntrack's per-packet work does.\n\
         - **TCP**: one client thread keeps {} non-blocking connects in flight and resets each \
         connection as soon as it is established (`SO_LINGER` 0, no TIME_WAIT), {:.1} s per round: \
         completed handshakes per second. Each connection is a new flow, so kube-proxy's rules run for \
         every one (iptables walks `KUBE-SERVICES` rule by rule, nftables does one verdict-map \
         lookup), and so do l3lb's new-flow path and its reply translation.\n",
        p.udp_flows, p.udp_seconds, p.rounds, p.tcp_in_flight, p.tcp_seconds
    );
    let _ = writeln!(
        md,
        "![UDP packets per second delivered to the pods](benchmarks-pps.svg)\n"
    );
    let _ = writeln!(
        md,
        "| services | mode | UDP delivered pps | ns/packet over direct | TCP conn/s | µs/conn over direct | vs iptables (pps / conn/s) | setup |\n\
         | --- | --- | --- | --- | --- | --- | --- | --- |"
    );
    for r in &p.rows {
        let n = fmt_num(r.services.into(), 0);
        if let Some(error) = &r.error {
            let _ = writeln!(
                md,
                "| {n} | {} | failed: {} | | | | | |",
                r.mode.label(),
                error.replace('\n', " ")
            );
            continue;
        }
        let direct = row(p, Mode::Direct, r.services);
        let (over_pkt, over_conn) = match direct {
            Some(d) if r.mode != Mode::Direct => (
                format!("{:+.0}", 1e9 / r.udp_pps.median - 1e9 / d.udp_pps.median),
                format!("{:+.1}", 1e6 / r.tcp_cps.median - 1e6 / d.tcp_cps.median),
            ),
            _ => ("—".into(), "—".into()),
        };
        let vs = match (r.mode, row(p, Mode::Iptables, r.services)) {
            (Mode::Iptables | Mode::Nftables | Mode::L3lbXdp, Some(b)) => format!(
                "{} / {}",
                ratio(paired(&r.udp_pps, &b.udp_pps).median),
                ratio(paired(&r.tcp_cps, &b.tcp_cps).median)
            ),
            _ => "—".into(),
        };
        let setup = if matches!(r.mode, Mode::Direct | Mode::DirectXdp) {
            "—".into()
        } else {
            format!("{:.1} s", r.setup_seconds)
        };
        let _ = writeln!(
            md,
            "| {n} | {} | {} | {over_pkt} | {} | {over_conn} | {vs} | {setup} |",
            r.mode.label(),
            r.udp_pps.show(0),
            r.tcp_cps.show(0),
        );
    }
    let failed: u64 = p.rows.iter().map(|r| r.tcp_failed).sum();
    let sent_ok = p
        .rows
        .iter()
        .filter(|r| r.error.is_none())
        .all(|r| r.udp_pps.median >= 0.99 * r.udp_sent_pps.median);
    let _ = writeln!(
        md,
        "\n*vs iptables*: the median of per-round ratios. *Over direct*: per-packet (per-connection) \
         time above the direct reference, from the medians (`1/rate − 1/rate_direct`), the part of \
         the cost the mode adds. *Setup*: from an empty node to forwarding: `iptables-restore` or \
         `nft -f` of the whole ruleset, or l3lb's start until every service is in the fast path's maps \
         (file parsing, addresses on `lo`, Maglev tables). {}{}\n\n\
         What these numbers mean, and do not:\n\n\
         - On veth, XDP runs on packets that already are socket buffers, which the kernel first copies \
         into an XDP buffer (the *empty XDP* rows show what that alone costs), and after the rewrite \
         (`XDP_PASS`) it still routes the packet and forwards it to the pod's veth like any other. What l3lb saves here is netfilter: no conntrack entry, no NAT, no rule walk, none of \
         which its node loads when nothing else needs them. On a physical NIC, XDP also runs before \
         any socket buffer exists and could redirect straight to the pod's veth; neither shows on veth.\n\
         - Where kube-proxy still runs next to l3lb, its rules and conntrack stay in the path of every \
         packet the node forwards, l3lb's included: the l3lb rows are a node without kube-proxy.\n\
         - Client, node and pods share the machine's CPUs, and the sender's own cost (a packet socket \
         write, two veth hops, the pod's receive) is in every packet: the ratios understate the \
         difference in the node's own cost; the *over direct* columns isolate it.\n",
        if sent_ok {
            "Every datagram sent was delivered (the sender, not a queue, sets the rate). "
        } else {
            "Some datagrams were lost on the way (the delivered rate is below the sent rate; see the JSON). "
        },
        if failed == 0 {
            "No TCP connection attempt failed.".to_owned()
        } else {
            format!("{failed} TCP connection attempts failed (1 s timeout).")
        }
    );
    // What the rows say, in numbers: per-packet and per-connection costs above the references.
    let counts: Vec<u32> = {
        let mut c: Vec<u32> = p.rows.iter().map(|r| r.services).collect();
        c.sort_unstable();
        c.dedup();
        c
    };
    let at = |mode: Mode, n: u32| row(p, mode, n);
    let ns = |a: &super::dataplane::Row, b: &super::dataplane::Row| {
        1e9 / a.udp_pps.median - 1e9 / b.udp_pps.median
    };
    let us = |a: &super::dataplane::Row, b: &super::dataplane::Row| {
        1e6 / a.tcp_cps.median - 1e6 / b.tcp_cps.median
    };
    let n = if counts.contains(&1_000) {
        1_000
    } else {
        counts.last().copied().unwrap_or(0)
    };
    if let (Some(d), Some(e), Some(i), Some(f), Some(x)) = (
        at(Mode::Direct, n),
        at(Mode::DirectXdp, n),
        at(Mode::Iptables, n),
        at(Mode::Nftables, n),
        at(Mode::L3lbXdp, n),
    ) {
        let _ = writeln!(
            md,
            "\nIn numbers, at {}: per UDP packet, any XDP program on the uplink costs {:+.0} ns over \
             direct routing, and l3lb's program with its rewrite {:+.0} ns on top of that; kube-proxy \
             costs {:+.0} ns (iptables) and {:+.0} ns (nftables) over direct routing, for conntrack \
             and NAT.{} Per new TCP connection, kube-proxy adds {:+.1} µs (iptables) and {:+.1} µs \
             (nftables), l3lb {:+.1} µs.",
            services(n),
            ns(e, d),
            ns(x, e),
            ns(i, d),
            ns(f, d),
            if ns(x, e) < 0.5 * ns(i, d) && ns(e, d) > ns(x, e) {
                " So l3lb's own work is a fraction of kube-proxy's, but on veth the copy into an XDP \
                 buffer costs more than that work and eats most of the difference: the UDP rates end \
                 up close."
            } else {
                ""
            },
            us(i, d),
            us(f, d),
            us(x, d),
        );
        let hi = counts.last().copied().unwrap_or(n);
        if hi != n
            && let (Some(dh), Some(ih), Some(fh), Some(xh)) = (
                at(Mode::Direct, hi),
                at(Mode::Iptables, hi),
                at(Mode::Nftables, hi),
                at(Mode::L3lbXdp, hi),
            )
        {
            let _ = writeln!(
                md,
                "At {}, iptables' per-connection cost grows to {:+.1} µs (the measured service sits \
                 in the middle of `KUBE-SERVICES`, so each new connection walks half its {} rules), \
                 while nftables adds {:+.1} µs and l3lb {:+.1} µs.",
                services(hi),
                us(ih, dh),
                fmt_num(f64::from(hi) * 2.0 + 3.0, 0),
                us(fh, dh),
                us(xh, dh),
            );
        }
        md.push('\n');
    }
}

fn part3_md(md: &mut String, part: &Part3) {
    let Some(p) = part.scales.last() else { return };
    let _ = writeln!(md, "## 3. The controller at scale (fake API server)\n");
    let sizes: Vec<String> = part
        .scales
        .iter()
        .map(|s| {
            format!(
                "{} Services with {} endpoints over {} nodes",
                fmt_num(s.services as f64, 0),
                fmt_num(s.endpoints as f64, 0),
                s.nodes
            )
        })
        .collect();
    let _ = writeln!(
        md,
        "`l3lb run --source kube` (the real kube-rs client, `--write-status false`) against the test \
         suite's fake API server, in a network namespace of its own, twice: {}. In both, this node \
         hosts {} endpoints of as many LoadBalancer Services, so {} addresses belong on its `lo`: the \
         node's own share stays, the cluster grows tenfold. Address events are read from a netlink \
         socket subscribed to `RTMGRP_IPV4_IFADDR` and stamped on arrival. The fake server runs in the \
         benchmark's process: its serving time is part of the convergence time and the latency, its \
         CPU is not counted as l3lb's.\n\n\
         - **latency**: an endpoint on this node turns unready (the address must go) or ready again \
         (it must come back), {} changes one after the other with 5 ms between them; from the write \
         to the API to the netlink event.\n\
         - **changes on other nodes**: {} endpoints elsewhere flip readiness, one every {:.0} ms, then \
         as many back to back; nothing may change on `lo`. CPU time of the l3lb process over each \
         batch (all threads, `/proc/PID/task/*/schedstat`), minus its idle rate measured just \
         before, per change.\n",
        sizes.join(", then "),
        p.local_services,
        p.local_services,
        fmt_num(p.local_changes as f64, 0),
        fmt_num(p.remote_changes as f64, 0),
        p.remote_pacing_ms
    );
    let mut header = String::from("| what |");
    let mut rule = String::from("| --- |");
    for s in &part.scales {
        let _ = write!(header, " {} Services |", fmt_num(s.services as f64, 0));
        rule.push_str(" --- |");
    }
    let _ = writeln!(md, "{header} target | met? |\n{rule} --- | --- |");
    let line = |md: &mut String,
                what: &str,
                value: &dyn Fn(&Scale) -> String,
                target: &str,
                ok: Option<bool>| {
        let values: Vec<String> = part.scales.iter().map(value).collect();
        let _ = writeln!(
            md,
            "| {what} | {} | {target} | {} |",
            values.join(" | "),
            if target.is_empty() { "" } else { met(ok) }
        );
    };
    let rss_mb = |s: &Scale| s.rss_after_sync_mib * 1.048_576;
    line(
        md,
        "start → converged (`lo` holds exactly the expected addresses)",
        &|s| format!("{:.2} s", s.converge_seconds),
        "",
        None,
    );
    line(
        md,
        "API change → address, all changes",
        &|s| {
            format!(
                "p50 {:.2} ms, p99 {:.2} ms, max {:.1} ms",
                s.latency_ms.p50, s.latency_ms.p99, s.latency_ms.max
            )
        },
        "p99 < 20 ms",
        Some(p.latency_ms.p99 < 20.0 && p.missed == 0),
    );
    line(
        md,
        "… address appears (endpoint ready)",
        &|s| {
            format!(
                "p50 {:.2} ms, p99 {:.2} ms",
                s.announce_ms.p50, s.announce_ms.p99
            )
        },
        "",
        None,
    );
    line(
        md,
        "… address disappears (endpoint unready)",
        &|s| {
            format!(
                "p50 {:.2} ms, p99 {:.2} ms",
                s.withdraw_ms.p50, s.withdraw_ms.p99
            )
        },
        "",
        None,
    );
    line(
        md,
        "changes whose address event never came (5 s)",
        &|s| s.missed.to_string(),
        "0",
        Some(p.missed == 0),
    );
    line(
        md,
        "CPU per change on another node (paced)",
        &|s| {
            format!(
                "{:.1} µs ({:.0} µs from `utime + stime`)",
                s.cpu_per_remote_change_us, s.cpu_per_remote_change_ticks_us
            )
        },
        "< 50 µs",
        Some(p.cpu_per_remote_change_us < 50.0),
    );
    line(
        md,
        "… the same changes back to back",
        &|s| format!("{:.1} µs", s.cpu_per_remote_change_burst_us),
        "",
        None,
    );
    line(
        md,
        "address events during those changes",
        &|s| s.unexpected_events.to_string(),
        "0",
        Some(p.unexpected_events == 0),
    );
    line(
        md,
        "CPU per change on this node",
        &|s| format!("{:.0} µs", s.cpu_per_local_change_us),
        "",
        None,
    );
    line(
        md,
        "idle CPU (watch bookmarks, timers)",
        &|s| format!("{:.2} ms per s", s.idle_cpu_ms_per_s),
        "",
        None,
    );
    line(
        md,
        "resident memory (VmRSS) after sync",
        &|s| format!("{:.1} MB", rss_mb(s)),
        "< 40 MB",
        Some(rss_mb(p) < 40.0),
    );
    line(
        md,
        "resident memory after all changes",
        &|s| format!("{:.1} MB", s.rss_after_changes_mib * 1.048_576),
        "",
        None,
    );
    md.push_str("\nThe targets are judged on the largest cluster. `utime + stime` counts 10 ms ticks: a coarse cross-check of the scheduler's figure.\n\n");
}

/// Packets per second delivered against the number of services (log x), one line per mode,
/// min–max bars.
pub fn svg_pps(p: &Part2) -> String {
    let (width, height) = (820.0, 440.0);
    let (left, right, top, bottom) = (90.0, 250.0, 50.0, 60.0);
    let plot_w = width - left - right;
    let plot_h = height - top - bottom;
    let counts: Vec<u32> = {
        let mut c: Vec<u32> = p.rows.iter().map(|r| r.services).collect();
        c.sort_unstable();
        c.dedup();
        c
    };
    let (x_lo, x_hi) = (
        (counts.first().copied().unwrap_or(10) as f64)
            .log10()
            .floor(),
        (counts.last().copied().unwrap_or(10_000) as f64)
            .log10()
            .ceil()
            .max(1.0),
    );
    let x_hi = if x_hi <= x_lo { x_lo + 1.0 } else { x_hi };
    // A margin of a fifth of a decade on each side, so no point sits on the frame.
    let (x_min, x_max) = (x_lo - 0.2, x_hi + 0.2);
    let y_max_data = p
        .rows
        .iter()
        .filter(|r| r.error.is_none())
        .map(|r| r.udp_pps.max)
        .fold(0.0f64, f64::max)
        .max(1.0);
    let step = nice_step(y_max_data / 5.0);
    let y_max = (y_max_data / step).ceil() * step;
    let x = |n: f64| left + (n.log10() - x_min) / (x_max - x_min) * plot_w;
    let y = |v: f64| top + plot_h - v / y_max * plot_h;

    let mut svg = String::new();
    let _ = writeln!(
        svg,
        "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"{width}\" height=\"{height}\" viewBox=\"0 0 {width} {height}\" \
         font-family=\"Helvetica, Arial, sans-serif\" font-size=\"12\">"
    );
    let _ = writeln!(svg, "<rect width=\"100%\" height=\"100%\" fill=\"white\"/>");
    let _ = writeln!(
        svg,
        "<text x=\"{}\" y=\"24\" font-size=\"15\" text-anchor=\"middle\">UDP packets/s delivered to the pods vs number of services</text>",
        left + plot_w / 2.0
    );
    // Grid and y ticks.
    let mut v = 0.0;
    while v <= y_max + step / 2.0 {
        let yy = y(v);
        let _ = writeln!(
            svg,
            "<line x1=\"{left}\" y1=\"{yy:.1}\" x2=\"{:.1}\" y2=\"{yy:.1}\" stroke=\"#e0e0e0\"/>\
             <text x=\"{:.1}\" y=\"{:.1}\" text-anchor=\"end\">{}</text>",
            left + plot_w,
            left - 8.0,
            yy + 4.0,
            fmt_si(v)
        );
        v += step;
    }
    // x ticks: every decade.
    let mut decade = x_lo;
    while decade <= x_hi + 1e-9 {
        let n = 10f64.powf(decade);
        let xx = x(n);
        let _ = writeln!(
            svg,
            "<line x1=\"{xx:.1}\" y1=\"{top}\" x2=\"{xx:.1}\" y2=\"{:.1}\" stroke=\"#e0e0e0\"/>\
             <text x=\"{xx:.1}\" y=\"{:.1}\" text-anchor=\"middle\">{}</text>",
            top + plot_h,
            top + plot_h + 18.0,
            fmt_num(n, 0).replace('\u{202f}', " ")
        );
        decade += 1.0;
    }
    let _ = writeln!(
        svg,
        "<rect x=\"{left}\" y=\"{top}\" width=\"{plot_w}\" height=\"{plot_h}\" fill=\"none\" stroke=\"#333\"/>"
    );
    let _ = writeln!(
        svg,
        "<text x=\"{:.1}\" y=\"{:.1}\" text-anchor=\"middle\">services (log scale)</text>",
        left + plot_w / 2.0,
        height - 18.0
    );
    let _ = writeln!(
        svg,
        "<text transform=\"translate(22 {:.1}) rotate(-90)\" text-anchor=\"middle\">packets per second (median, min–max bars)</text>",
        top + plot_h / 2.0
    );
    // The three modes, solid; the two references (no service at all), dashed.
    let colors = [
        (Mode::Iptables, "#d62728", ""),
        (Mode::Nftables, "#ff7f0e", ""),
        (Mode::L3lbXdp, "#1f77b4", ""),
        (Mode::Direct, "#7f7f7f", " stroke-dasharray=\"6 4\""),
        (Mode::DirectXdp, "#9467bd", " stroke-dasharray=\"2 3\""),
    ];
    for (i, (mode, color, dash)) in colors.iter().enumerate() {
        let rows: Vec<_> = p
            .rows
            .iter()
            .filter(|r| r.mode == *mode && r.error.is_none())
            .collect();
        let points: Vec<String> = rows
            .iter()
            .map(|r| format!("{:.1},{:.1}", x(r.services.into()), y(r.udp_pps.median)))
            .collect();
        if !points.is_empty() {
            let _ = writeln!(
                svg,
                "<polyline points=\"{}\" fill=\"none\" stroke=\"{color}\" stroke-width=\"2\"{dash}/>",
                points.join(" ")
            );
        }
        for r in &rows {
            let xx = x(r.services.into());
            let _ = writeln!(
                svg,
                "<line x1=\"{xx:.1}\" y1=\"{:.1}\" x2=\"{xx:.1}\" y2=\"{:.1}\" stroke=\"{color}\"/>\
                 <circle cx=\"{xx:.1}\" cy=\"{:.1}\" r=\"4\" fill=\"{color}\"/>",
                y(r.udp_pps.min),
                y(r.udp_pps.max),
                y(r.udp_pps.median)
            );
        }
        let ly = top + 20.0 + i as f64 * 22.0;
        let lx = left + plot_w + 16.0;
        let _ = writeln!(
            svg,
            "<line x1=\"{lx:.1}\" y1=\"{ly:.1}\" x2=\"{:.1}\" y2=\"{ly:.1}\" stroke=\"{color}\" stroke-width=\"2\"{dash}/>\
             <circle cx=\"{:.1}\" cy=\"{ly:.1}\" r=\"4\" fill=\"{color}\"/>\
             <text x=\"{:.1}\" y=\"{:.1}\">{}</text>",
            lx + 24.0,
            lx + 12.0,
            lx + 32.0,
            ly + 4.0,
            mode.label()
        );
    }
    svg.push_str("</svg>\n");
    svg
}

fn nice_step(raw: f64) -> f64 {
    let magnitude = 10f64.powf(raw.max(1e-9).log10().floor());
    let fraction = raw / magnitude;
    let nice = if fraction <= 1.0 {
        1.0
    } else if fraction <= 2.0 {
        2.0
    } else if fraction <= 5.0 {
        5.0
    } else {
        10.0
    };
    nice * magnitude
}

fn fmt_si(v: f64) -> String {
    if v >= 1e6 {
        format!("{}M", trim(v / 1e6))
    } else if v >= 1e3 {
        format!("{}k", trim(v / 1e3))
    } else {
        trim(v)
    }
}

fn trim(v: f64) -> String {
    let s = format!("{v:.2}");
    s.trim_end_matches('0').trim_end_matches('.').to_owned()
}
