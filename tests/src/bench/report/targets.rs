//! The brief's targets, each judged on what was measured next to its baseline in the same run.
use super::{Row, Target, paired, ratio, row, services};
use crate::bench::{
    controller::Part3,
    dataplane::{Mode, Part2},
    stats::{Summary, fmt_num},
    testrun::{self, Part1},
};

/// The per-round ratio of `mode` to `baseline` at `n` services, for the figure `pick` takes.
fn paired_at(
    p: &Part2,
    mode: Mode,
    baseline: Mode,
    n: u32,
    pick: impl Fn(&Row) -> Option<&Summary>,
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
        type Pick = fn(&Row) -> &Summary;
        let udp: Pick = |r| &r.udp_pps;
        let tcp: Pick = |r| &r.tcp_cps;
        for (what, summary) in [("UDP packets/s", udp), ("new TCP connections/s", tcp)] {
            let pick = |r: &Row| summary(r).median;
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
    if let Some(part) = part3 {
        let idle = super::part3::goal_scale(part)
            .map(|p| format!("{:.2} ms/s idle (subtracted)", p.idle_cpu_ms_per_s));
        for (name, value, target, met) in super::part3::goals(part) {
            let baseline = if name.starts_with("CPU per change on another") {
                idle.clone().unwrap_or_else(|| "—".into())
            } else {
                "—".into()
            };
            targets.push(Target {
                name,
                value,
                baseline,
                ratio: "—".into(),
                target: target.into(),
                met,
            });
        }
    }
    targets
}

#[cfg(test)]
mod tests {
    use super::super::part2::part2_md;
    use super::*;
    use crate::bench::dataplane::NodeCost;

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
