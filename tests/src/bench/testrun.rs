//! Part 1: what one packet costs the XDP and TC programs, through `BPF_PROG_TEST_RUN`.
//!
//! Every figure is the kernel's own mean time per repetition of a test run with a large
//! `repeat`, over several rounds, next to the same measurement of an empty program (the floor)
//! taken in the same round, so the ratio holds however busy the machine is.
//!
//! The kernel reuses one buffer for all repetitions, so a packet the program rewrites comes
//! back rewritten. To measure the service path on every repetition, the measured service's
//! only backend is the service address and port itself: the program looks the service up,
//! finds the flow, checks the backend, rewrites the destination and both checksums (to the
//! same values), and the next repetition does it all again. After the first repetition that is
//! the established-flow path. The new-flow path (Maglev pick, two LRU inserts) is measured
//! with single runs of packets from ever new source ports, against single runs of the floor.
use std::{
    net::{IpAddr, Ipv4Addr},
    os::fd::{AsFd as _, BorrowedFd},
    time::Instant,
};

use anyhow::{Context as _, Result, bail};
use aya::programs::{SchedClassifier, Xdp};
use l3lb::fastpath::{
    loader::{self, AttachMode, LoadConfig},
    maglev,
    plan::{Delivery, Target, Vip},
};
use l3lb_common::{PROTO_TCP, PROTO_UDP, Reason, program_names};
use serde::Serialize;

use super::{Options, PinDir, check_interrupted, stats::Summary, sys};
use crate::{frames, progress};

const XDP_PASS: u32 = 2;
const TC_ACT_OK: i32 = 0;
const CLIENT: Ipv4Addr = Ipv4Addr::new(192, 0, 2, 10);
/// The measured service, its own backend (see the module documentation).
const SERVICE: Ipv4Addr = Ipv4Addr::new(10, 0, 100, 7);
/// Not a service: the pass-through packet's destination.
const OTHER: Ipv4Addr = Ipv4Addr::new(10, 0, 200, 9);
const PORT: u16 = 80;
const CLIENT_PORT: u16 = 40000;
/// 18 bytes of payload: a 60-byte frame, the Ethernet minimum.
const PAYLOAD: [u8; 18] = [0x5a; 18];

#[derive(Clone, Debug, Default, Serialize)]
pub struct Row {
    /// Services in the maps (the measured one included).
    pub services: u32,
    /// Seconds to write this step's services into the maps (`Tables::set`, Maglev tables of
    /// `table_size` entries each).
    pub install_seconds: f64,
    /// Nanoseconds per packet.
    pub xdp_floor_ns: Summary,
    /// The floor plus one lookup (a miss) in `L3LB_SERVICES`: the price of any lookup, for scale.
    pub xdp_one_lookup_ns: Summary,
    pub xdp_pass_through_ns: Summary,
    pub xdp_service_ns: Summary,
    /// Per-round ratios to the floor of the same round.
    pub pass_through_ratio: Summary,
    pub one_lookup_ratio: Summary,
    pub service_ratio: Summary,
    /// Single runs (repeat = 1), medians over many packets: the floor and a new flow each time.
    pub single_floor_ns: f64,
    pub new_flow_ns: f64,
    pub new_flow_samples: usize,
    pub tc_floor_ns: Summary,
    pub tc_reply_ns: Summary,
    pub tc_reply_ratio: Summary,
}

#[derive(Clone, Debug, Default, Serialize)]
pub struct Part1 {
    pub repeat: u32,
    pub rounds: usize,
    pub table_size: u32,
    pub rows: Vec<Row>,
}

fn vip(ip: Ipv4Addr, proto: u8) -> Vip {
    Vip {
        ip: IpAddr::V4(ip),
        port: PORT,
        proto,
    }
}

/// The `i`-th filler service (10.200.0.0/16, alternately UDP and TCP) and its two pods.
fn filler(i: u32) -> (Vip, [Target; 2]) {
    let ip = Ipv4Addr::from(u32::from(Ipv4Addr::new(10, 200, 0, 1)) + i);
    let proto = if i.is_multiple_of(2) {
        PROTO_UDP
    } else {
        PROTO_TCP
    };
    let pod = |k: u32| Target {
        ip: IpAddr::V4(Ipv4Addr::from(
            u32::from(Ipv4Addr::new(10, 244, 0, 2)) + 2 * i + k,
        )),
        port: 8080,
        terminating: false,
        delivery: Delivery::Stack,
    };
    (vip(ip, proto), [pod(0), pod(1)])
}

fn udp(src: Ipv4Addr, dst: Ipv4Addr, sport: u16, dport: u16) -> Vec<u8> {
    frames::ipv4(PROTO_UDP, src, dst, sport, dport, &PAYLOAD)
}

struct Programs<'a> {
    xdp: BorrowedFd<'a>,
    tc: BorrowedFd<'a>,
    xdp_floor: BorrowedFd<'a>,
    xdp_lookup: BorrowedFd<'a>,
    tc_floor: BorrowedFd<'a>,
}

/// Mean nanoseconds per repetition of `repeat` runs, checking the verdict.
fn run(prog: BorrowedFd<'_>, frame: &[u8], repeat: u32, verdict: u32) -> Result<f64> {
    let (retval, duration) = sys::test_run(prog, frame, repeat).context("BPF_PROG_TEST_RUN")?;
    if retval != verdict {
        bail!("verdict {retval}, expected {verdict}");
    }
    Ok(duration.as_nanos() as f64)
}

fn reasons(ebpf: &aya::Ebpf) -> Result<[u64; Reason::COUNT as usize]> {
    let counters = l3lb::ebpf::reason_counters(ebpf)?;
    Ok(counters.map(|c| c.packets))
}

pub fn run_part(options: &Options) -> Result<Part1> {
    let (repeat, rounds, singles) = if options.quick {
        (300_000, 5, 3_000)
    } else {
        (2_000_000, 9, 20_000)
    };
    let steps: [u32; 3] = [1, 1_000, 10_000];
    let table_size = maglev::DEFAULT_TABLE_SIZE;
    let pins = PinDir::new("testrun");
    let mut loaded = loader::load(&LoadConfig {
        pin_root: pins.0.clone(),
        interfaces: Vec::new(),
        mode: AttachMode::Auto,
        table_size,
        max_services: steps[steps.len() - 1] + 16,
    })
    .context("loading the fast path (no interface attached)")?;
    let xdp_floor = sys::load_floor(sys::BPF_PROG_TYPE_XDP, XDP_PASS as i32)
        .context("loading the floor XDP program")?;
    let tc_floor = sys::load_floor(sys::BPF_PROG_TYPE_SCHED_CLS, TC_ACT_OK)
        .context("loading the floor TC program")?;
    let services_map = aya::maps::MapData::from_pin(pins.0.join(l3lb_common::map_names::SERVICES))
        .context("opening the pinned services map")?;
    let xdp_lookup = sys::load_one_lookup(services_map.fd().as_fd(), XDP_PASS as i32)
        .context("loading the one-lookup XDP program")?;

    // The measured service steers to itself: every repetition takes the full service path.
    let own = Target {
        ip: IpAddr::V4(SERVICE),
        port: PORT,
        terminating: false,
        delivery: Delivery::Stack,
    };
    loaded.tables.set(vip(SERVICE, PROTO_UDP), &[own], None)?;

    let service_frame = udp(CLIENT, SERVICE, CLIENT_PORT, PORT);
    let pass_frame = udp(CLIENT, OTHER, CLIENT_PORT, PORT);
    let reply_frame = udp(SERVICE, CLIENT, PORT, CLIENT_PORT);

    let mut part = Part1 {
        repeat,
        rounds,
        table_size,
        rows: Vec::new(),
    };
    let mut installed = 1u32;
    let mut new_flow_port: u32 = 0;
    for &services in &steps {
        check_interrupted()?;
        let started = Instant::now();
        while installed < services {
            let (vip, targets) = filler(installed - 1);
            loaded.tables.set(vip, &targets, None)?;
            installed += 1;
            if installed.is_multiple_of(1000) {
                check_interrupted()?;
            }
        }
        let install_seconds = started.elapsed().as_secs_f64();
        progress!(
            "part 1: {services} services in the maps (installed in {install_seconds:.1} s); measuring"
        );

        let ebpf = &loaded.ebpf;
        let xdp: &Xdp = ebpf
            .program(program_names::XDP_INGRESS)
            .context("no XDP program")?
            .try_into()?;
        let tc: &SchedClassifier = ebpf
            .program(program_names::TC_EGRESS)
            .context("no TC program")?
            .try_into()?;
        let programs = Programs {
            xdp: xdp.fd()?.as_fd(),
            tc: tc.fd()?.as_fd(),
            xdp_floor: xdp_floor.as_fd(),
            xdp_lookup: xdp_lookup.as_fd(),
            tc_floor: tc_floor.as_fd(),
        };
        let row = measure(
            ebpf,
            &programs,
            services,
            repeat,
            rounds,
            singles,
            &mut new_flow_port,
            [&service_frame, &pass_frame, &reply_frame],
        )?;
        part.rows.push(Row {
            install_seconds,
            ..row
        });
    }
    drop(loaded);
    drop(pins);
    Ok(part)
}

#[allow(clippy::too_many_arguments)]
fn measure(
    ebpf: &aya::Ebpf,
    p: &Programs<'_>,
    services: u32,
    repeat: u32,
    rounds: usize,
    singles: usize,
    new_flow_port: &mut u32,
    [service_frame, pass_frame, reply_frame]: [&Vec<u8>; 3],
) -> Result<Row> {
    // Warm up, and check that each frame takes the path it is meant to.
    let before = reasons(ebpf)?;
    run(p.xdp, service_frame, 1000, XDP_PASS)?;
    run(p.xdp, pass_frame, 1000, XDP_PASS)?;
    run(p.tc, reply_frame, 1000, 3)?;
    let after = reasons(ebpf)?;
    let delta = |r: Reason| after[r as usize] - before[r as usize];
    if delta(Reason::Forwarded) != 1000
        || delta(Reason::NotService) != 1000
        || delta(Reason::ReplyTranslated) != 1000
    {
        bail!(
            "the frames did not take their paths (forwarded {}, not_service {}, reply_translated {} of 1000 each)",
            delta(Reason::Forwarded),
            delta(Reason::NotService),
            delta(Reason::ReplyTranslated)
        );
    }

    let (mut floor, mut lookup, mut pass, mut service, mut tc_floor, mut tc_reply) = (
        Vec::new(),
        Vec::new(),
        Vec::new(),
        Vec::new(),
        Vec::new(),
        Vec::new(),
    );
    for _ in 0..rounds {
        check_interrupted()?;
        floor.push(run(p.xdp_floor, service_frame, repeat, XDP_PASS)?);
        lookup.push(run(p.xdp_lookup, service_frame, repeat, XDP_PASS)?);
        pass.push(run(p.xdp, pass_frame, repeat, XDP_PASS)?);
        service.push(run(p.xdp, service_frame, repeat, XDP_PASS)?);
        tc_floor.push(run(p.tc_floor, reply_frame, repeat, TC_ACT_OK as u32)?);
        tc_reply.push(run(p.tc, reply_frame, repeat, 3)?);
    }
    let ratio = |a: &[f64], b: &[f64]| Summary::of(a.iter().zip(b).map(|(a, b)| a / b).collect());

    // New flows: one packet per run, each from a source port (and address) not seen before,
    // alternating with single runs of the floor.
    let (mut single_floor, mut new_flow) = (Vec::new(), Vec::new());
    for i in 0..singles {
        if i.is_multiple_of(1000) {
            check_interrupted()?;
        }
        let n = *new_flow_port;
        *new_flow_port += 1;
        let src = Ipv4Addr::from(u32::from(Ipv4Addr::new(198, 18, 0, 0)) + (n >> 14));
        let frame = udp(src, SERVICE, 1024 + (n & 0x3fff) as u16, PORT);
        single_floor.push(run(p.xdp_floor, &frame, 1, XDP_PASS)?);
        new_flow.push(run(p.xdp, &frame, 1, XDP_PASS)?);
    }
    Ok(Row {
        services,
        install_seconds: 0.0,
        pass_through_ratio: ratio(&pass, &floor),
        one_lookup_ratio: ratio(&lookup, &floor),
        xdp_one_lookup_ns: Summary::of(lookup),
        service_ratio: ratio(&service, &floor),
        tc_reply_ratio: ratio(&tc_reply, &tc_floor),
        xdp_floor_ns: Summary::of(floor),
        xdp_pass_through_ns: Summary::of(pass),
        xdp_service_ns: Summary::of(service),
        single_floor_ns: Summary::of(single_floor).median,
        new_flow_ns: Summary::of(new_flow).median,
        new_flow_samples: singles,
        tc_floor_ns: Summary::of(tc_floor),
        tc_reply_ns: Summary::of(tc_reply),
    })
}
