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
    testrun::{self, Part1},
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

/// The per-round ratio of `mode` to `baseline` at `n` services, for the figure `pick` takes.
fn paired_at(
    p: &Part2,
    mode: Mode,
    baseline: Mode,
    n: u32,
    pick: impl Fn(&super::dataplane::Row) -> Option<&Summary>,
) -> Option<(f64, f64, f64)> {
    let (a, b) = (pick(row(p, mode, n)?)?, pick(row(p, baseline, n)?)?);
    Some((a.median, b.median, paired(a, b).median))
}

/// The targets of the brief, evaluated on what was measured: the programs against the floor
/// plus one lookup (part 1), l3lb against kube-proxy's iptables rules and direct routing at
/// 1 000 services (part 2), the controller at the largest scale (part 3).
pub fn targets(part1: Option<&Part1>, part2: Option<&Part2>, part3: Option<&Part3>) -> Vec<Target> {
    let mut targets = Vec::new();
    if let Some(p) = part1 {
        for r in &p.rows {
            targets.push(Target {
                name: format!(
                    "{} service packet (established flow), {}",
                    p.kind,
                    services(r.services)
                ),
                value: format!("{:.1} ns", r.service_ns.median),
                baseline: format!("{:.1} ns (floor + one lookup)", r.one_lookup_ns.median),
                ratio: ratio(r.service_to_lookup.median),
                target: format!("≤ {}×", testrun::SERVICE_TARGET),
                met: Some(r.service_to_lookup.median <= testrun::SERVICE_TARGET),
            });
            targets.push(Target {
                name: format!(
                    "{} pass-through (not a service), {}",
                    p.kind,
                    services(r.services)
                ),
                value: format!("{:.1} ns", r.pass_through_ns.median),
                baseline: format!("{:.1} ns (floor + one lookup)", r.one_lookup_ns.median),
                ratio: ratio(r.pass_through_to_lookup.median),
                target: format!("≤ {}×", testrun::PASS_THROUGH_TARGET),
                met: Some(r.pass_through_to_lookup.median <= testrun::PASS_THROUGH_TARGET),
            });
        }
    }
    if let Some(p) = part2 {
        let n = 1_000;
        let mut goal = |name: &str,
                        unit: &str,
                        baseline: Mode,
                        found: Option<(f64, f64, f64)>,
                        at_most: bool,
                        target: f64,
                        digits: usize| {
            let (value, base, r) = found.unwrap_or((f64::NAN, f64::NAN, f64::NAN));
            targets.push(Target {
                name: format!(
                    "{name}, l3lb vs {}, {}",
                    baseline.short_label(),
                    services(n)
                ),
                value: format!("{} {unit}", fmt_num(value, digits)),
                baseline: format!(
                    "{} {unit} ({})",
                    fmt_num(base, digits),
                    baseline.short_label()
                ),
                ratio: ratio(r),
                target: format!("{} {target}×", if at_most { "≤" } else { "≥" }),
                met: r
                    .is_finite()
                    .then_some(if at_most { r <= target } else { r >= target }),
            });
        };
        goal(
            "node cost of a steered UDP packet",
            "ns",
            Mode::Iptables,
            paired_at(p, Mode::L3lb, Mode::Iptables, n, |r| {
                r.node.as_ref().map(|c| &c.ns)
            }),
            true,
            0.3,
            0,
        );
        for (baseline, target) in [(Mode::Iptables, 1.4), (Mode::Direct, 1.2)] {
            goal(
                "UDP packets/s delivered",
                "pps",
                baseline,
                paired_at(p, Mode::L3lb, baseline, n, |r| Some(&r.udp_pps)),
                false,
                target,
                0,
            );
        }
        goal(
            "request/response transactions/s",
            "/s",
            Mode::Iptables,
            paired_at(p, Mode::L3lb, Mode::Iptables, n, |r| r.rr_tps.as_ref()),
            false,
            1.5,
            0,
        );
        goal(
            "new TCP connections/s",
            "/s",
            Mode::Iptables,
            paired_at(p, Mode::L3lb, Mode::Iptables, n, |r| Some(&r.tcp_cps)),
            false,
            3.0,
            0,
        );
        type Pick = fn(&super::dataplane::Row) -> &Summary;
        let udp: Pick = |r| &r.udp_pps;
        let tcp: Pick = |r| &r.tcp_cps;
        for (what, summary) in [("UDP packets/s", udp), ("new TCP connections/s", tcp)] {
            let pick = |r: &super::dataplane::Row| summary(r).median;
            let counts: Vec<u32> = p
                .rows
                .iter()
                .filter(|r| r.mode == Mode::L3lb && r.error.is_none())
                .map(|r| r.services)
                .collect();
            if let (Some(&lo), Some(&hi)) = (counts.iter().min(), counts.iter().max()) {
                let (a, b) = (
                    row(p, Mode::L3lb, lo).map_or(f64::NAN, pick),
                    row(p, Mode::L3lb, hi).map_or(f64::NAN, pick),
                );
                let change = b / a - 1.0;
                targets.push(Target {
                    name: format!(
                        "{what}, l3lb flatness, {} → {} services",
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
    let k = &p.kind;
    let _ = writeln!(
        md,
        "## 1. Per-packet cost of the programs (`BPF_PROG_TEST_RUN`)\n"
    );
    let _ = writeln!(
        md,
        "The ingress program measured is `{}` ({k}), the one the fast path runs on a veth uplink. \
         The kernel's own time per repetition, {} repetitions per lane and round in test runs of \
         {} (each starting from the original frame: the redirecting programs decrement the TTL, \
         which a longer run would exhaust), in a network namespace of the benchmark's own where the \
         client sits behind an `uplink` with a known neighbour; {} rounds. Each round \
         runs, next to the programs, the floor (an empty {k} program, `r0 = verdict; exit`) and the \
         floor plus one lookup (a miss) in `L3LB_SERVICES` (the same empty program with a single \
         `bpf_map_lookup_elem` on the services map), and the ratios are taken per round. The targets \
         are judged against the second: every program that recognises services pays that lookup. \
         60-byte UDP/IPv4 frames. The services sit in the maps as the daemon writes them \
         (`l3lb::fastpath::loader` and `tables::Tables`, Maglev tables of {} entries).\n",
        p.program,
        fmt_num(f64::from(p.repeat), 0),
        p.batch,
        p.rounds,
        p.table_size
    );
    let _ = writeln!(
        md,
        "- **service (established flow)**: the measured service's only backend is its own address and \
         port, so the packet the kernel hands to the next repetition is again a service packet; every \
         repetition does the whole forwarding path (service lookup, flow lookup, backend check, \
         reply-entry check, destination rewrite with both checksums; on TC also the TTL and \
         `bpf_redirect_peer()` to the pod's interface, which a test run records but does not carry \
         out), on a flow that is established after the first repetition.\n\
         - **new flow**: one packet per test run (`repeat = 1`), each from a source address and port not \
         seen before (flow miss, Maglev pick, two LRU inserts), against single runs of the floor. The \
         timer's own overhead is in both, so the difference is what counts.\n\
         - **pass-through**: a UDP packet to an address that is no service (parse, one hash miss, a counter).\n\
         - **TC reply**: `{}` on the pod's reply (reply lookup, source rewrite through the checksum \
         helpers; for `l3lb_tc_pod` also the TTL, a FIB lookup of the client and the redirect out of \
         the uplink), against an empty TC program.\n\
         - A test run repeats one packet, so the maps' entries for it stay in the CPU caches: this is the \
         cost with warm caches. How many services are loaded matters for the cold-cache case (hash \
         buckets, Maglev rows), which this cannot show.\n",
        p.reply_program
    );
    let _ = writeln!(
        md,
        "| services | path | ns/packet | vs floor | vs floor + one lookup | target | met? |\n\
         | --- | --- | --- | --- | --- | --- | --- |"
    );
    let range = |s: &Summary| format!("{} [{:.2}–{:.2}]", ratio(s.median), s.min, s.max);
    for r in &p.rows {
        let n = fmt_num(r.services.into(), 0);
        let _ = writeln!(
            md,
            "| {n} | floor (empty {k} program) | {} | — | — | — | — |",
            r.floor_ns.show(1),
        );
        let _ = writeln!(
            md,
            "| {n} | floor + one `L3LB_SERVICES` lookup (miss) | {} | {} | — | — | — |",
            r.one_lookup_ns.show(1),
            range(&r.one_lookup_ratio),
        );
        let _ = writeln!(
            md,
            "| {n} | {k} pass-through | {} | {} | {} | ≤ {}× | {} |",
            r.pass_through_ns.show(1),
            range(&r.pass_through_ratio),
            range(&r.pass_through_to_lookup),
            testrun::PASS_THROUGH_TARGET,
            met(Some(
                r.pass_through_to_lookup.median <= testrun::PASS_THROUGH_TARGET
            ))
        );
        let _ = writeln!(
            md,
            "| {n} | {k} service (established) | {} | {} | {} | ≤ {}× | {} |",
            r.service_ns.show(1),
            range(&r.service_ratio),
            range(&r.service_to_lookup),
            testrun::SERVICE_TARGET,
            met(Some(r.service_to_lookup.median <= testrun::SERVICE_TARGET))
        );
        let _ = writeln!(
            md,
            "| {n} | {k} new flow (single runs, {} packets) | {:.0} (+{:.0} over the single-run floor of {:.0}) | {} | — | — | — |",
            fmt_num(r.new_flow_samples as f64, 0),
            r.new_flow_ns,
            r.new_flow_ns - r.single_floor_ns,
            r.single_floor_ns,
            ratio(r.new_flow_ns / r.single_floor_ns)
        );
        let _ = writeln!(
            md,
            "| {n} | TC reply translation (floor {:.1}) | {} | {} | — | — | — |",
            r.tc_floor_ns.median,
            r.tc_reply_ns.show(1),
            range(&r.tc_reply_ratio),
        );
    }
    let _ = writeln!(
        md,
        "\nWhere the time of one packet goes (medians, ns): each step is the difference to the one \
         before it.\n\n\
         | services | floor | + one lookup | pass-through: + parse, counter | established service: + flow, backend, reply entry, rewrite (TC: + TTL, redirect) | new flow: + Maglev pick, LRU inserts | TC reply: over its floor |\n\
         | --- | --- | --- | --- | --- | --- | --- |"
    );
    for r in &p.rows {
        let _ = writeln!(
            md,
            "| {} | {:.0} | {:+.0} | {:+.0} | {:+.0} | {:+.0} | {:+.0} |",
            fmt_num(r.services.into(), 0),
            r.floor_ns.median,
            r.one_lookup_ns.median - r.floor_ns.median,
            r.pass_through_ns.median - r.one_lookup_ns.median,
            r.service_ns.median - r.pass_through_ns.median,
            (r.new_flow_ns - r.single_floor_ns) - (r.service_ns.median - r.floor_ns.median),
            r.tc_reply_ns.median - r.tc_floor_ns.median,
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
        "\nWriting the services into the maps (one `bpf()` call per Maglev entry) took {}. The \
         new-flow step is the single run's cost above the single-run floor minus the established \
         path's above the repeated floor; single runs carry the timer's overhead, so it is the \
         roughest figure of the table.\n",
        installs.join(", then ")
    );
    if let Some(direct) = part2.and_then(|p2| {
        p2.rows
            .iter()
            .filter(|r| r.mode == Mode::Direct && r.error.is_none())
            .map(|r| r.udp_pps.median)
            .reduce(f64::max)
    }) && let Some(first) = p.rows.first()
    {
        let path_ns = 1e9 / direct;
        let _ = writeln!(
            md,
            "For scale against a whole packet: in part 2, one UDP packet from the client's packet socket to \
             the pod's took about {} ns with no service at all; the established service path's \
             {:.0} ns are {:.0} % of that.",
            fmt_num(path_ns, 0),
            first.service_ns.median,
            first.service_ns.median / path_ns * 100.0
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
    let extended: Vec<String> = p.extended_services.iter().map(|&n| services(n)).collect();
    let extended = extended.join(", ");
    let _ = writeln!(md, "## 2. The data path end to end (network namespaces)\n");
    let _ = writeln!(
        md,
        "`client ── node ── 2 pods`, all veth pairs, the pods on the node. A fresh topology per mode \
         and service count. The Services are `LoadBalancer`, `externalTrafficPolicy: Local`, two \
         endpoints each (the two pods); the measured one sits in the middle of kube-proxy's list. \
         Each round measures every mode once, in a rotating order; ratios are taken per round. The \
         modes:\n\n\
         - *{}* and *{}*: no service at all, the client sends to a pod's own address and the node \
         only routes, once more with an empty XDP program on the uplink: the floor of the path, and \
         what any XDP program costs on veth.\n\
         - *{}* and *{}*: kube-proxy's rules for the Services, loaded with `iptables-restore` or \
         `nft -f` as kube-proxy writes them.\n\
         - *{}*: `l3lb run --xdp --xdp-iface uplink` with the daemon's default attach mode (`auto`: \
         native XDP only where the NIC has it, on veth the TC programs), file source, no netfilter \
         rule in the node.\n\
         - *{}*: the same daemon on a node that still has kube-proxy's iptables rules: whether the \
         fast path keeps its packets out of netfilter. The *conntrack* column counts the node's \
         conntrack entries for the client's UDP flows after the UDP lane (`conntrack -L`): a packet \
         that passes the node's netfilter hooks leaves one entry per flow.\n\n\
         The lanes:\n\n\
         - **UDP**: one sender thread writes ready-made 60-byte frames of {} flows (source ports) to \
         the client's `eth0` with an `AF_PACKET` socket (qdisc bypassed, `sendmmsg` in batches of 64), \
         {:.1} s per round, {} rounds; *delivered* = packets counted on the pods' `eth0`, per second of \
         sending (one reader in the pods drains the sockets, spinning while measuring). Everything up \
         to the pod's socket runs on the sending CPU in softirq, so the rate is the inverse of the \
         path's per-packet cost, the sender's own included. After their first packet these flows are \
         established: kube-proxy's rules no longer run, conntrack's per-packet work does.\n\
         - **node cost** ({extended}): the same sender with a drop program (`TC_ACT_SHOT`) at TC \
         ingress of each pod's `eth0`, so the pods' IP and UDP stack is out of the figure, against \
         the same drop program at TC ingress of the node's uplink (in the *direct* topology): \
         `1/rate(mode) − 1/rate(uplink drop)` per round, from the sender's rate, is what the node \
         does with the packet between its uplink and the pod's `eth0`. The pods' `eth0` counters \
         check that the packets reached the drop program, and the pods' sockets that none got past it.\n\
         - **TCP**: one client thread keeps {} non-blocking connects in flight and resets each \
         connection as soon as it is established (`SO_LINGER` 0, no TIME_WAIT), {:.1} s per round: \
         completed handshakes per second. Each connection is a new flow, so kube-proxy's rules run for \
         every one (iptables walks `KUBE-SERVICES` rule by rule, nftables does one verdict-map \
         lookup), and so do l3lb's new-flow path and its reply translation.\n\
         - **request/response** ({extended}): netperf's `TCP_RR`: one established TCP connection \
         (`TCP_NODELAY`), a 1-byte request, the pod echoes 1 byte, as many round trips as fit in \
         {:.1} s per round. Both directions of an established flow, and the wake-ups of both ends: \
         the latency of the path rather than its throughput. The client and the pod's echo thread \
         run on the same CPU, so a transaction costs the path both ways and two context switches, \
         not the wake-up latencies of an idle or a busy other CPU.\n\n\
         The node-cost and request/response lanes run at {extended} only: at every service count they \
         would take the full run past twenty minutes.\n",
        Mode::Direct.label(),
        Mode::DirectXdp.label(),
        Mode::Iptables.label(),
        Mode::Nftables.label(),
        Mode::L3lb.label(),
        Mode::L3lbIptables.label(),
        p.udp_flows,
        p.udp_seconds,
        p.rounds,
        p.tcp_in_flight,
        p.tcp_seconds,
        p.rr_seconds,
    );
    let _ = writeln!(
        md,
        "![UDP packets per second delivered to the pods](benchmarks-pps.svg)\n"
    );
    let _ = writeln!(
        md,
        "| services | mode | UDP delivered pps | ns/packet over direct | conntrack entries (UDP flows) | TCP conn/s | µs/conn over direct | vs iptables (pps / conn/s) | setup |\n\
         | --- | --- | --- | --- | --- | --- | --- | --- | --- |"
    );
    for r in &p.rows {
        let n = fmt_num(r.services.into(), 0);
        if let Some(error) = &r.error {
            let _ = writeln!(
                md,
                "| {n} | {} | failed: {} | | | | | | |",
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
        let vs = match (r.mode.is_direct(), row(p, Mode::Iptables, r.services)) {
            (false, Some(b)) => format!(
                "{} / {}",
                ratio(paired(&r.udp_pps, &b.udp_pps).median),
                ratio(paired(&r.tcp_cps, &b.tcp_cps).median)
            ),
            _ => "—".into(),
        };
        let setup = if r.mode.is_direct() {
            "—".into()
        } else {
            format!("{:.1} s", r.setup_seconds)
        };
        let conntrack = r
            .conntrack_udp_entries
            .map_or("n/a".into(), |e| e.to_string());
        let _ = writeln!(
            md,
            "| {n} | {} | {} | {over_pkt} | {conntrack} | {} | {over_conn} | {vs} | {setup} |",
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
         the cost the mode adds, the pods' own work included. *Setup*: from an empty node to \
         forwarding: `iptables-restore` or `nft -f` of the whole ruleset, or l3lb's start until every \
         service is in the fast path's maps (file parsing, addresses on `lo`, Maglev tables; where \
         kube-proxy's rules are loaded too, l3lb's start alone). {}{}\n",
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

    // The node-cost and request/response lanes.
    for &n in &p.extended_services {
        let uplink = p.uplink_drop.iter().find(|u| u.services == n);
        let _ = writeln!(
            md,
            "At {}, the node's own cost and request/response{}:\n",
            services(n),
            match uplink {
                Some(u) => format!(
                    " (the reference, the drop program at the uplink: {} pps sent, {:.0} ns per \
                     packet, {:.1} % of the packets counted on the uplink)",
                    u.sent_pps.show(0),
                    1e9 / u.sent_pps.median,
                    u.reached * 100.0
                ),
                None => " (the uplink-drop reference failed: no node cost)".into(),
            }
        );
        let _ = writeln!(
            md,
            "| mode | sent pps into the drop at the pods | node ns/packet (over the uplink drop) | node cost vs iptables | reached the drop | request/response /s | vs iptables | µs per transaction over direct |\n\
             | --- | --- | --- | --- | --- | --- | --- | --- |"
        );
        for mode in Mode::ALL {
            let Some(r) = row(p, mode, n) else { continue };
            let ipt = row(p, Mode::Iptables, n);
            let direct = row(p, Mode::Direct, n);
            let (sent, node_ns, node_vs, reached) = match &r.node {
                Some(c) => (
                    c.sent_pps.show(0),
                    if c.ns.rounds.is_empty() {
                        "n/a".into()
                    } else {
                        format!("{:.0} [{:.0}–{:.0}]", c.ns.median, c.ns.min, c.ns.max)
                    },
                    match ipt.and_then(|i| i.node.as_ref()) {
                        Some(i) if !mode.is_direct() && !c.ns.rounds.is_empty() => {
                            ratio(paired(&c.ns, &i.ns).median)
                        }
                        _ => "—".into(),
                    },
                    format!("{:.1} %", c.reached * 100.0),
                ),
                None => ("n/a".into(), "n/a".into(), "—".into(), "—".into()),
            };
            let (rr, rr_vs, rr_over) = match &r.rr_tps {
                Some(t) => (
                    t.show(0),
                    match ipt.and_then(|i| i.rr_tps.as_ref()) {
                        Some(i) if !mode.is_direct() => ratio(paired(t, i).median),
                        _ => "—".into(),
                    },
                    match direct.and_then(|d| d.rr_tps.as_ref()) {
                        Some(d) if mode != Mode::Direct => {
                            format!("{:+.1}", 1e6 / t.median - 1e6 / d.median)
                        }
                        _ => "—".into(),
                    },
                ),
                None => ("n/a".into(), "—".into(), "—".into()),
            };
            let _ = writeln!(
                md,
                "| {} | {sent} | {node_ns} | {node_vs} | {reached} | {rr} | {rr_vs} | {rr_over} |",
                mode.label()
            );
        }
        md.push('\n');
    }

    let _ = writeln!(
        md,
        "What these numbers mean, and do not:\n\n\
         - On veth, XDP runs on packets that already are socket buffers, which the kernel first copies \
         into an XDP buffer (the *empty XDP* rows show what that alone costs), and after `XDP_PASS` \
         the node still routes the packet like any other. That is why the daemon's `auto` mode runs \
         the TC programs on veth uplinks: at TC ingress the packet is rewritten and, where the fast \
         path redirects it into the pod's namespace (`bpf_redirect_peer()`), it skips the node's \
         routing and netfilter altogether. What l3lb saves here is netfilter (no conntrack entry, no \
         NAT, no rule walk) and, with the redirect, the node's forwarding.\n\
         - Where kube-proxy's rules stay loaded next to l3lb, a packet the fast path hands to the \
         node's stack still passes conntrack (the *conntrack* column shows it); a redirected one does not.\n\
         - Client, node and pods share the machine's CPUs, and the sender's own cost (a packet socket \
         write, two veth hops, the pod's receive) is in every packet: the UDP ratios understate the \
         difference in the node's own cost; the *over direct* columns and the node-cost lane \
         isolate it.\n"
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
    if let (Some(d), Some(i), Some(f), Some(x)) = (
        at(Mode::Direct, n),
        at(Mode::Iptables, n),
        at(Mode::Nftables, n),
        at(Mode::L3lb, n),
    ) {
        let _ = writeln!(
            md,
            "In numbers, at {}: per UDP packet, over direct routing (the pods' work included), \
             kube-proxy costs {:+.0} ns (iptables) and {:+.0} ns (nftables), l3lb {:+.0} ns. Per new \
             TCP connection, kube-proxy adds {:+.1} µs (iptables) and {:+.1} µs (nftables), l3lb \
             {:+.1} µs. (A negative figure is a path cheaper than the node's own routing, which a \
             packet redirected into the pod skips.)",
            services(n),
            ns(i, d),
            ns(f, d),
            ns(x, d),
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
                at(Mode::L3lb, hi),
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
    // The modes with services, solid; the two references (no service at all), dashed.
    let colors = [
        (Mode::Iptables, "#d62728", ""),
        (Mode::Nftables, "#ff7f0e", ""),
        (Mode::L3lb, "#1f77b4", ""),
        (Mode::L3lbIptables, "#2ca02c", ""),
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
            mode.short_label()
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::bench::dataplane::{NodeCost, Row};

    fn lane(mode: Mode, udp: [f64; 2], node_ns: [f64; 2], rr: [f64; 2], tcp: [f64; 2]) -> Row {
        Row {
            mode,
            services: 1_000,
            setup_seconds: 0.0,
            udp_pps: Summary::of(udp.to_vec()),
            udp_sent_pps: Summary::of(udp.to_vec()),
            udp_read_pps: Summary::of(udp.to_vec()),
            conntrack_udp_entries: Some(0),
            tcp_cps: Summary::of(tcp.to_vec()),
            tcp_failed: 0,
            node: Some(NodeCost {
                sent_pps: Summary::of(vec![1.0, 1.0]),
                ns: Summary::of(node_ns.to_vec()),
                reached: 1.0,
            }),
            rr_tps: Some(Summary::of(rr.to_vec())),
            error: None,
        }
    }

    #[test]
    fn part2_goals_are_per_round_ratios_at_1000_services() {
        let part = Part2 {
            rows: vec![
                lane(
                    Mode::Direct,
                    [100.0, 250.0],
                    [50.0, 50.0],
                    [10.0, 10.0],
                    [10.0, 10.0],
                ),
                lane(
                    Mode::Iptables,
                    [100.0, 100.0],
                    [1000.0, 2000.0],
                    [10.0, 20.0],
                    [10.0, 10.0],
                ),
                // Node cost 0.2× and 0.5× of iptables' in the two rounds; UDP 1.5× iptables
                // both rounds and 1.5×, 0.6× direct; request/response 2× and 1×; TCP 3×.
                lane(
                    Mode::L3lb,
                    [150.0, 150.0],
                    [200.0, 1000.0],
                    [20.0, 20.0],
                    [30.0, 30.0],
                ),
            ],
            ..Part2::default()
        };
        let targets = targets(None, Some(&part), None);
        let find = |prefix: &str, baseline: Mode| {
            targets
                .iter()
                .find(|t| t.name.starts_with(prefix) && t.name.contains(baseline.short_label()))
                .unwrap_or_else(|| panic!("no target {prefix} vs {}", baseline.short_label()))
        };
        let node = find("node cost", Mode::Iptables);
        assert_eq!((node.ratio.as_str(), node.met), ("0.35×", Some(false)));
        let udp = find("UDP packets/s delivered", Mode::Iptables);
        assert_eq!((udp.ratio.as_str(), udp.met), ("1.50×", Some(true)));
        let udp = find("UDP packets/s delivered", Mode::Direct);
        assert_eq!((udp.ratio.as_str(), udp.met), ("1.05×", Some(false)));
        let rr = find("request/response", Mode::Iptables);
        assert_eq!((rr.ratio.as_str(), rr.met), ("1.50×", Some(true)));
        let tcp = find("new TCP connections/s", Mode::Iptables);
        assert_eq!((tcp.ratio.as_str(), tcp.met), ("3.00×", Some(true)));
    }

    #[test]
    fn a_missing_lane_leaves_its_goal_unjudged() {
        let mut l3lb = lane(Mode::L3lb, [1.0; 2], [1.0; 2], [1.0; 2], [1.0; 2]);
        l3lb.rr_tps = None;
        let part = Part2 {
            rows: vec![
                lane(Mode::Iptables, [1.0; 2], [1.0; 2], [1.0; 2], [1.0; 2]),
                l3lb,
            ],
            ..Part2::default()
        };
        let targets = targets(None, Some(&part), None);
        let rr = targets
            .iter()
            .find(|t| t.name.starts_with("request/response"))
            .expect("the request/response goal is listed");
        assert_eq!(rr.met, None);
        let markdown = {
            let mut md = String::new();
            part2_md(&mut md, &part);
            md
        };
        assert!(markdown.contains("| l3lb |"), "{markdown}");
    }
}
