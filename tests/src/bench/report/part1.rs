//! Section 1 of `benchmarks.md`: the programs' per-packet cost through `BPF_PROG_TEST_RUN`.
use std::fmt::Write as _;

use super::{met, ratio};
use crate::bench::{
    dataplane::{Mode, Part2},
    stats::{Summary, fmt_num},
    testrun::{self, Part1},
};

pub(super) fn part1_md(md: &mut String, p: &Part1, part2: Option<&Part2>) {
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
    let _ = writeln!(
        md,
        "What bounds the two part-1 targets, measured on 2026-12-06 by taking one piece out of the \
         program at a time and rerunning this part: the per-reason counter costs 1–3 ns; the two \
         `bpf_l4_csum_replace` calls about 17 ns (an skb's TCP/UDP checksum can be \
         CHECKSUM_PARTIAL or covered by a CHECKSUM_COMPLETE `skb->csum`, which a hand-written \
         update would corrupt, so they stay; everything else is written directly); the checks that \
         keep malformed service packets out of the flow table 6–10 ns; the flow table's LRU lookup \
         the most of the rest. The pass-through's 19–21 ns over the one-lookup lane are the parse \
         itself (Ethernet, IP and TCP/UDP headers, each access bounds-checked for the verifier, \
         and the 20-byte key): a program that recognises services by their address and port \
         cannot skip it, so ≤ 1.25× of a lane that parses nothing is out of reach. For comparison, \
         the XDP program's established path took 162–189 ns on 2026-11-29 with four map lookups per \
         packet; this one makes three (the reply entry is looked at every 32 packets of a flow).\n"
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
