//! Section 3 of `benchmarks.md`: the controller against the fake API server at scale.
use std::fmt::Write as _;

use super::met;
use crate::bench::{
    controller::{Part3, Scale},
    stats::fmt_num,
};

pub(super) fn part3_md(md: &mut String, part: &Part3) {
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
