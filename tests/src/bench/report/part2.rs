//! Section 2 of `benchmarks.md`: the data path end to end, its tables and what they mean.
use std::fmt::Write as _;

use super::{paired, ratio, row, services};
use crate::bench::{
    dataplane::{Mode, Part2, Row},
    stats::fmt_num,
};

pub(super) fn part2_md(md: &mut String, p: &Part2) {
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
    let ns = |a: &Row, b: &Row| 1e9 / a.udp_pps.median - 1e9 / b.udp_pps.median;
    let us = |a: &Row, b: &Row| 1e6 / a.tcp_cps.median - 1e6 / b.tcp_cps.median;
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
        bounds_md(md, n, d, i, x);
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

/// What this topology allows at best, from the run's own references, for the goals that are
/// ratios against kube-proxy or direct routing: a node that costs nothing does no better than
/// the direct reference minus the node's own routing.
fn bounds_md(md: &mut String, n: u32, d: &Row, i: &Row, x: &Row) {
    let mut lines = Vec::new();
    if let (Some(dn), Some(xn)) = (&d.node, &x.node) {
        let t_direct = 1e9 / d.udp_pps.median;
        // The path without the node: the sender, the veths and the pod's own stack.
        let t_base = t_direct - dn.ns.median;
        lines.push(format!(
            "- *UDP vs direct*: a packet to a pod takes {t_direct:.0} ns by direct routing, of which the \
             node's routing is {:.0} ns (node-cost lane); the rest, {t_base:.0} ns, is the sender, the veth \
             hops and the pod's own IP/UDP stack, which no node can shorten. A node that cost nothing \
             would reach {:.2}× direct; l3lb's node cost of {:.0} ns gives {:.2}×, and 1.2× would need \
             a node cost below {:.0} ns, less than the TC program's own test-run time (part 1).",
            dn.ns.median,
            t_direct / t_base,
            xn.ns.median,
            t_direct / (t_base + xn.ns.median),
            (t_direct / 1.2 - t_base).max(0.0),
        ));
    }
    if let (Some(drr), Some(irr), Some(xrr)) = (&d.rr_tps, &i.rr_tps, &x.rr_tps) {
        lines.push(format!(
            "- *request/response*: a transaction is mostly the two TCP stacks and the wake-ups of \
             both ends; direct routing, with no service at all, does {:.2}× iptables, so 1.5× is out of \
             reach on this topology; l3lb does {:.2}×, {:.0} % of what a free node could.",
            drr.median / irr.median,
            xrr.median / irr.median,
            100.0 * xrr.median / drr.median,
        ));
    }
    lines.push(format!(
        "- *new TCP connections*: at {}, direct routing does {:.2}× iptables, the most any node \
         could; l3lb does {:.2}× (and, at more Services, iptables' rule walk grows while l3lb stays \
         flat).",
        services(n),
        d.tcp_cps.median / i.tcp_cps.median,
        x.tcp_cps.median / i.tcp_cps.median,
    ));
    let _ = writeln!(
        md,
        "\nWhat bounds the ratio goals this run misses, from its own references:\n\n{}",
        lines.join("\n")
    );
}
