//! The rounds: every mode set up in a topology of its own, measured once per round in a
//! rotating order, and the rounds gathered into the rows of the report.
use std::{net::SocketAddrV4, path::Path, sync::atomic::Ordering, time::Duration};

use anyhow::{Context as _, Result, bail};

use super::{
    IN_FLIGHT, Mode, NodeCost, Part2, Row, TC_ACT_SHOT, UDP_FLOWS, UplinkDrop,
    install::{Installed, install},
    node_cost::udp_into_drop,
    rr::tcp_rr,
    tcp::tcp_connects,
    topology::{Topology, pods_rx, topology},
    udp::{conntrack_udp_entries, udp_blast},
};
use crate::{
    bench::{
        Options, PinDir, check_interrupted,
        kubeproxy::{self, PODS, SERVICE_PORT, TARGET_PORT},
        stats::Summary,
        sys,
    },
    progress,
};

/// A set-up mode: its topology, what it installed, and the rounds measured so far.
struct Lane {
    mode: Mode,
    installed: Option<Installed>,
    topo: Topology,
    setup_seconds: f64,
    udp: Vec<f64>,
    udp_sent: Vec<f64>,
    udp_read: Vec<f64>,
    conntrack: Option<u64>,
    tcp: Vec<f64>,
    tcp_failed: u64,
    node_sent: Vec<f64>,
    node_reached: f64,
    /// The Direct lane also measures the node-cost lane's reference, the drop at the uplink.
    uplink_sent: Vec<f64>,
    uplink_reached: f64,
    rr: Vec<f64>,
    error: Option<String>,
}

/// How long each lane measures, per round.
struct Times {
    udp: Duration,
    tcp: Duration,
    rr: Duration,
}

pub fn run_part(options: &Options) -> Result<Part2> {
    let (counts, rounds, seconds): (&[u32], usize, f64) = if options.quick {
        (&[10, 1_000], 3, 0.6)
    } else {
        (&[10, 1_000, 10_000], 6, 1.5)
    };
    // The node-cost and request/response lanes run where the targets are judged, at 1 000
    // services: at every count they would take the full run past twenty minutes.
    let extended: &[u32] = &[1_000];
    let times = Times {
        udp: Duration::from_secs_f64(seconds),
        tcp: Duration::from_secs_f64(seconds),
        rr: Duration::from_secs_f64(seconds),
    };
    let mut part = Part2 {
        rounds,
        udp_seconds: seconds,
        tcp_seconds: seconds,
        rr_seconds: seconds,
        udp_flows: UDP_FLOWS,
        tcp_in_flight: IN_FLIGHT,
        extended_services: extended.to_vec(),
        uplink_drop: Vec::new(),
        rows: Vec::new(),
    };
    // The node-cost lane's drop program, pinned for `tc filter … bpf pinned`.
    let drop_pins = PinDir::new("drop");
    std::fs::create_dir_all(&drop_pins.0)?;
    let drop_program = sys::load_floor(sys::BPF_PROG_TYPE_SCHED_CLS, TC_ACT_SHOT)
        .context("loading the TC drop program")?;
    let drop_pinned = drop_pins.0.join("drop_tc");
    sys::pin(std::os::fd::AsFd::as_fd(&drop_program), &drop_pinned)
        .context("pinning the TC drop program")?;
    for &n in counts {
        check_interrupted()?;
        let (services, measured) = kubeproxy::services(n);
        let service = SocketAddrV4::new(services[measured].lb_ip, SERVICE_PORT);
        let direct = SocketAddrV4::new(PODS[0], TARGET_PORT);
        let target_of = |mode: Mode| if mode.is_direct() { direct } else { service };
        let mut lanes = Vec::new();
        for mode in Mode::ALL {
            check_interrupted()?;
            progress!("part 2: {n} services, setting up {}", mode.label());
            let topo = topology(mode.tag())?;
            let mut lane = Lane {
                mode,
                installed: None,
                topo,
                setup_seconds: f64::NAN,
                udp: Vec::new(),
                udp_sent: Vec::new(),
                udp_read: Vec::new(),
                conntrack: None,
                tcp: Vec::new(),
                tcp_failed: 0,
                node_sent: Vec::new(),
                node_reached: 1.0,
                uplink_sent: Vec::new(),
                uplink_reached: 1.0,
                rr: Vec::new(),
                error: None,
            };
            match install(mode, &lane.topo, &services).and_then(|(installed, seconds)| {
                lane.installed = Some(installed);
                lane.setup_seconds = seconds;
                verify(&lane.topo, target_of(mode))
            }) {
                Ok(()) => progress!(
                    "part 2: {} ready in {:.1} s",
                    mode.label(),
                    lane.setup_seconds
                ),
                Err(err) => {
                    check_interrupted()?;
                    progress!("part 2: {} failed: {err:#}", mode.label());
                    lane.error = Some(format!("{err:#}"));
                }
            }
            lanes.push(lane);
        }
        let extended = extended.contains(&n);
        for round in 0..rounds {
            // A rotating order, so no mode always runs right after another.
            let lanes_len = lanes.len();
            lanes.rotate_left(round % lanes_len.max(1));
            for lane in lanes.iter_mut().filter(|l| l.error.is_none()) {
                let target = target_of(lane.mode);
                if let Err(err) = measure_round(lane, target, &times, extended, &drop_pinned) {
                    check_interrupted()?;
                    progress!("part 2: {} failed: {err:#}", lane.mode.label());
                    lane.error = Some(format!("round {}: {err:#}", round + 1));
                }
            }
            lanes.rotate_right(round % lanes_len.max(1));
            let line: Vec<String> = lanes
                .iter()
                .filter(|l| l.error.is_none())
                .map(|l| {
                    let last = |v: &[f64]| v.last().copied().unwrap_or(f64::NAN);
                    let mut text = format!(
                        "{} {:.0} pps / {:.0} conn/s",
                        l.mode.label(),
                        last(&l.udp),
                        last(&l.tcp),
                    );
                    if extended {
                        text += &format!(
                            " / {:.0} pps into the drop / {:.0} RR/s",
                            last(&l.node_sent),
                            last(&l.rr)
                        );
                    }
                    if let Some(entries) = l.conntrack.filter(|_| !l.mode.is_direct()) {
                        text += &format!(" / {entries} conntrack entries");
                    }
                    text
                })
                .collect();
            progress!(
                "part 2: {n} services, round {}/{rounds}: {}",
                round + 1,
                line.join(", ")
            );
        }
        let uplink = lanes
            .iter()
            .find(|l| l.mode == Mode::Direct && l.error.is_none() && !l.uplink_sent.is_empty())
            .map(|l| (l.uplink_sent.clone(), l.uplink_reached));
        if let Some((sent, reached)) = &uplink {
            part.uplink_drop.push(UplinkDrop {
                services: n,
                sent_pps: Summary::of(sent.clone()),
                reached: *reached,
            });
        }
        for mut lane in lanes {
            let node = (extended && !lane.node_sent.is_empty()).then(|| NodeCost {
                ns: Summary::of(match &uplink {
                    Some((reference, _)) => lane
                        .node_sent
                        .iter()
                        .zip(reference)
                        .map(|(mode, reference)| 1e9 / mode - 1e9 / reference)
                        .collect(),
                    None => Vec::new(),
                }),
                sent_pps: Summary::of(std::mem::take(&mut lane.node_sent)),
                reached: lane.node_reached,
            });
            part.rows.push(Row {
                mode: lane.mode,
                services: n,
                setup_seconds: lane.setup_seconds,
                udp_pps: Summary::of(std::mem::take(&mut lane.udp)),
                udp_sent_pps: Summary::of(std::mem::take(&mut lane.udp_sent)),
                udp_read_pps: Summary::of(std::mem::take(&mut lane.udp_read)),
                conntrack_udp_entries: lane.conntrack,
                tcp_cps: Summary::of(std::mem::take(&mut lane.tcp)),
                tcp_failed: lane.tcp_failed,
                node,
                rr_tps: (extended && !lane.rr.is_empty())
                    .then(|| Summary::of(std::mem::take(&mut lane.rr))),
                error: lane.error.take(),
            });
            // Daemon stopped (pins removed), then the pods' threads, then the namespaces.
            drop(lane.installed.take());
            drop(lane);
        }
    }
    drop(drop_program);
    drop(drop_pins);
    Ok(part)
}

/// One round of one mode: every lane once, each followed by a pause for the queues to drain.
fn measure_round(
    lane: &mut Lane,
    target: SocketAddrV4,
    times: &Times,
    extended: bool,
    drop_pinned: &Path,
) -> Result<()> {
    check_interrupted()?;
    let topo = &lane.topo;
    let servers = &topo.servers;
    servers.spin.store(true, Ordering::Relaxed);
    crate::bench::sleep(Duration::from_millis(100))?;
    let before = pods_rx(topo)?;
    let read_before = servers.received.load(Ordering::Relaxed);
    let udp = udp_blast(topo, target, times.udp, 50_000_000);
    crate::bench::sleep(Duration::from_millis(200))?;
    servers.spin.store(false, Ordering::Relaxed);
    let udp = udp?;
    let delivered = pods_rx(topo)? - before;
    let read = servers.received.load(Ordering::Relaxed) - read_before;
    let seconds = udp.elapsed.as_secs_f64();
    lane.udp.push(delivered as f64 / seconds);
    lane.udp_sent.push(udp.sent as f64 / seconds);
    lane.udp_read.push(read as f64 / seconds);
    if let Some(entries) = conntrack_udp_entries(&topo.node) {
        lane.conntrack = Some(lane.conntrack.unwrap_or(0).max(entries));
    }

    if extended {
        check_interrupted()?;
        if lane.mode == Mode::Direct {
            let (sent, reached) = udp_into_drop(topo, target, times.udp, drop_pinned, true)
                .context("UDP into the drop program at the uplink")?;
            lane.uplink_sent.push(sent);
            lane.uplink_reached = lane.uplink_reached.min(reached);
            crate::bench::sleep(Duration::from_millis(100))?;
        }
        let (sent, reached) = udp_into_drop(topo, target, times.udp, drop_pinned, false)
            .context("UDP into the drop program at the pods' eth0")?;
        if reached < 0.99 {
            progress!(
                "part 2: {}: only {:.1} % of the packets into the drop program were counted on the pods' eth0",
                lane.mode.label(),
                reached * 100.0
            );
        }
        lane.node_sent.push(sent);
        lane.node_reached = lane.node_reached.min(reached);
        crate::bench::sleep(Duration::from_millis(100))?;
    }

    check_interrupted()?;
    let (ok, failed, elapsed) = tcp_connects(&topo.client, target, times.tcp, 500_000)?;
    lane.tcp.push(ok as f64 / elapsed.as_secs_f64());
    lane.tcp_failed += failed;
    crate::bench::sleep(Duration::from_millis(200))?;

    if extended {
        check_interrupted()?;
        let (transactions, elapsed) =
            tcp_rr(&topo.client, target, times.rr).context("request/response")?;
        lane.rr.push(transactions as f64 / elapsed.as_secs_f64());
        crate::bench::sleep(Duration::from_millis(100))?;
    }
    Ok(())
}

/// One TCP connection, one request/response exchange and a burst of UDP reach the pods through
/// the measured service.
fn verify(topo: &Topology, target: SocketAddrV4) -> Result<()> {
    let (ok, failed, _) = tcp_connects(&topo.client, target, Duration::from_millis(300), 10)?;
    if ok == 0 {
        bail!("no TCP connection to {target} got through ({failed} failed)");
    }
    let (transactions, _) = tcp_rr(&topo.client, target, Duration::from_millis(50))
        .context("request/response through the service")?;
    if transactions == 0 {
        bail!("no request/response transaction with {target} completed");
    }
    let before = pods_rx(topo)?;
    let sent = udp_blast(topo, target, Duration::from_millis(100), 1_000)?.sent;
    std::thread::sleep(Duration::from_millis(100));
    let delivered = pods_rx(topo)? - before;
    if delivered * 2 < sent {
        bail!("only {delivered} of {sent} UDP datagrams to {target} reached the pods");
    }
    Ok(())
}
