//! Part 1: what one packet costs the fast path's programs, through `BPF_PROG_TEST_RUN`.
//!
//! The ingress program measured is the one the fast path runs on a veth uplink: the TC ingress
//! program where the eBPF object has one ([`TC_INGRESS`]), else the XDP program ([`Ingress`]
//! picks). Its targets are judged against the floor plus one services-map lookup.
//!
//! Every figure is the kernel's own mean time per repetition over many test runs of [`BATCH`]
//! repetitions, over several rounds, next to the same measurement of an empty program (the
//! floor) taken in the same round, so the ratio holds however busy the machine is. It all runs
//! in a network namespace of its own, whose routes the reply program's FIB lookup sees.
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
use aya::programs::SchedClassifier;
use l3lb::fastpath::{
    loader::{self, AttachMode, LoadConfig},
    maglev,
    plan::{Delivery, Target, Vip},
};
use l3lb_common::{PROTO_TCP, PROTO_UDP, Reason, program_names};
use serde::Serialize;

use super::{Options, PinDir, check_interrupted, stats::Summary, sys};
use crate::{frames, netns::NetNs, progress};

const XDP_PASS: u32 = 2;
const TC_ACT_OK: i32 = 0;
/// The fast path's TC ingress program on veth uplinks (DNAT and `bpf_redirect_peer()` into the
/// pod), measured instead of the XDP program once the object carries it.
pub const TC_INGRESS: &str = program_names::TC_INGRESS;
/// The ratio targets, against the floor plus one `L3LB_SERVICES` lookup of the same type.
pub const SERVICE_TARGET: f64 = 2.5;
pub const PASS_THROUGH_TARGET: f64 = 1.25;
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
    /// Nanoseconds per packet: the empty program of the ingress program's type.
    pub floor_ns: Summary,
    /// The floor plus one lookup (a miss) in `L3LB_SERVICES`: the baseline of the targets.
    pub one_lookup_ns: Summary,
    pub pass_through_ns: Summary,
    pub service_ns: Summary,
    /// Per-round ratios to the floor of the same round.
    pub pass_through_ratio: Summary,
    pub one_lookup_ratio: Summary,
    pub service_ratio: Summary,
    /// Per-round ratios to the one-lookup lane of the same round (the targets).
    pub pass_through_to_lookup: Summary,
    pub service_to_lookup: Summary,
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
    /// The ingress program measured, and its kind (`TC` or `XDP`).
    pub program: String,
    pub kind: String,
    /// The program measured on the replies.
    pub reply_program: String,
    /// Repetitions per lane and round, in test runs of `batch`.
    pub repeat: u32,
    pub batch: u32,
    pub rounds: usize,
    pub table_size: u32,
    pub rows: Vec<Row>,
}

/// The fast path's TC program at ingress of a pod's host-side veth, which translates the pod's
/// replies and redirects them out of the uplink; measured instead of the uplink's TC egress
/// program once the object carries it.
pub const TC_POD: &str = program_names::TC_POD;

/// The program that translates replies back to the service address: [`TC_POD`] where the
/// object has it, else the uplink's TC egress program.
pub fn reply_program(ebpf: &aya::Ebpf) -> &'static str {
    if ebpf.program(TC_POD).is_some() {
        TC_POD
    } else {
        program_names::TC_EGRESS
    }
}

/// The ingress program part 1 measures, with what its floor and one-lookup lane must match.
#[derive(Clone, Copy, Debug)]
pub struct Ingress {
    pub name: &'static str,
    /// `TC` or `XDP`.
    pub kind: &'static str,
    pub prog_type: u32,
    /// The verdict of the floor, the lookup lane and a packet that is no service.
    pub pass: u32,
}

impl Ingress {
    pub const TC: Ingress = Ingress {
        name: TC_INGRESS,
        kind: "TC",
        prog_type: sys::BPF_PROG_TYPE_SCHED_CLS,
        pass: TC_ACT_OK as u32,
    };
    pub const XDP: Ingress = Ingress {
        name: program_names::XDP_INGRESS,
        kind: "XDP",
        prog_type: sys::BPF_PROG_TYPE_XDP,
        pass: XDP_PASS,
    };

    /// The TC ingress program where the object has one (the fast path on veth), else XDP.
    pub fn of(ebpf: &aya::Ebpf) -> Ingress {
        if ebpf.program(TC_INGRESS).is_some() {
            Ingress::TC
        } else {
            Ingress::XDP
        }
    }
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
    ingress: Ingress,
    /// The measured ingress program, its floor and its one-lookup lane.
    program: BorrowedFd<'a>,
    floor: BorrowedFd<'a>,
    lookup: BorrowedFd<'a>,
    /// The program on the replies, and its floor.
    reply_name: &'static str,
    tc: BorrowedFd<'a>,
    tc_floor: BorrowedFd<'a>,
}

/// Repetitions per test run. The redirecting programs decrement the TTL (64 in the frames), and a
/// test run hands the rewritten packet to the next repetition: past 63 repetitions the packet
/// would leave the redirect path for the kernel's (`TTL` exhausted). Every lane runs in test
/// runs of this size, each starting from the original frame, so the timer's per-run overhead
/// (a few ns over 50 repetitions) is the same in all of them.
const BATCH: u32 = 50;

/// Mean nanoseconds per repetition over exactly `repeat` repetitions, in test runs of at most
/// [`BATCH`], checking every run's verdict.
fn run(prog: BorrowedFd<'_>, frame: &[u8], repeat: u32, verdict: u32) -> Result<f64> {
    let (mut left, mut total_ns) = (repeat, 0.0);
    while left > 0 {
        let batch = left.min(BATCH);
        let (retval, duration) = sys::test_run(prog, frame, batch).context("BPF_PROG_TEST_RUN")?;
        if retval != verdict {
            bail!("verdict {retval}, expected {verdict}");
        }
        total_ns += duration.as_nanos() as f64 * f64::from(batch);
        left -= batch;
    }
    Ok(total_ns / f64::from(repeat.max(1)))
}

/// The interface index of the namespace's uplink (the calling thread's namespace).
fn uplink_index() -> Result<u32> {
    // SAFETY: a NUL-terminated interface name.
    match unsafe { libc::if_nametoindex(c"uplink".as_ptr()) } {
        0 => bail!("no uplink: {}", std::io::Error::last_os_error()),
        index => Ok(index),
    }
}

fn reasons(ebpf: &aya::Ebpf) -> Result<[u64; Reason::COUNT as usize]> {
    let counters = l3lb::ebpf::reason_counters(ebpf)?;
    Ok(counters.map(|c| c.packets))
}

/// The address of the test-run namespace's uplink, and the client's MAC behind it.
const UPLINK: &str = "192.0.2.1/24";
const CLIENT_MAC: &str = "02:00:00:00:00:0a";

/// Runs part 1 in a network namespace of its own, where the client (the replies' destination)
/// sits behind an uplink with a known neighbour: the reply program's FIB lookup then
/// succeeds as on a node, and nothing depends on the host's routes.
pub fn run_part(options: &Options) -> Result<Part1> {
    let ns = NetNs::new("b1");
    // A veth pair with both ends here (no dummy driver needed): only its addresses and
    // neighbour entry matter, nothing is sent.
    ns.ip(&[
        "link", "add", "uplink", "type", "veth", "peer", "name", "client",
    ]);
    ns.ip(&["addr", "add", UPLINK, "dev", "uplink"]);
    ns.ip(&["link", "set", "client", "up"]);
    ns.ip(&["link", "set", "uplink", "up"]);
    ns.ip(&[
        "neigh",
        "add",
        &CLIENT.to_string(),
        "lladdr",
        CLIENT_MAC,
        "dev",
        "uplink",
        "nud",
        "permanent",
    ]);
    crate::netns::sh(ns.command("sysctl").args(["-qw", "net.ipv4.ip_forward=1"]));
    let options = options.clone();
    let part = sys::in_netns(ns.name(), move || run_in_netns(&options))?;
    drop(ns);
    part
}

fn run_in_netns(options: &Options) -> Result<Part1> {
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
    let ingress = Ingress::of(&loaded.ebpf);
    let floor = sys::load_floor(ingress.prog_type, ingress.pass as i32)
        .with_context(|| format!("loading the floor {} program", ingress.kind))?;
    let tc_floor = sys::load_floor(sys::BPF_PROG_TYPE_SCHED_CLS, TC_ACT_OK)
        .context("loading the floor TC program")?;
    let services_map = aya::maps::MapData::from_pin(pins.0.join(l3lb_common::map_names::SERVICES))
        .context("opening the pinned services map")?;
    let lookup = sys::load_one_lookup(
        ingress.prog_type,
        services_map.fd().as_fd(),
        ingress.pass as i32,
    )
    .with_context(|| format!("loading the one-lookup {} program", ingress.kind))?;
    progress!("part 1: measuring {} ({})", ingress.name, ingress.kind);

    // The measured service steers to itself: every repetition takes the full service path. On
    // TC that ends in the redirect into the pod (`bpf_redirect_peer`, which a test run only
    // records), to the uplink's index here: a test run never sends the packet.
    let own = Target {
        ip: IpAddr::V4(SERVICE),
        port: PORT,
        terminating: false,
        delivery: if ingress.kind == Ingress::TC.kind {
            Delivery::Peer {
                ifindex: uplink_index()?,
            }
        } else {
            Delivery::Stack
        },
    };
    loaded.tables.set(vip(SERVICE, PROTO_UDP), &[own], None)?;

    let service_frame = udp(CLIENT, SERVICE, CLIENT_PORT, PORT);
    let pass_frame = udp(CLIENT, OTHER, CLIENT_PORT, PORT);
    let reply_frame = udp(SERVICE, CLIENT, PORT, CLIENT_PORT);

    let mut part = Part1 {
        program: ingress.name.into(),
        kind: ingress.kind.into(),
        reply_program: reply_program(&loaded.ebpf).into(),
        repeat,
        batch: BATCH,
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
        let program = ebpf
            .program(ingress.name)
            .with_context(|| format!("no program {} in the object", ingress.name))?;
        let tc: &SchedClassifier = ebpf
            .program(reply_program(ebpf))
            .context("no TC reply program")?
            .try_into()?;
        let programs = Programs {
            ingress,
            program: program.fd()?.as_fd(),
            floor: floor.as_fd(),
            lookup: lookup.as_fd(),
            reply_name: reply_program(ebpf),
            tc: tc.fd()?.as_fd(),
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
    let pass = p.ingress.pass;
    // Warm up, and check that each frame takes the path it is meant to. A service packet's
    // verdict depends on the program (XDP_PASS after the rewrite, or TC_ACT_REDIRECT when it
    // redirects to the pod): taken from the first run, then required of every other.
    let before = reasons(ebpf)?;
    let (service_verdict, _) =
        sys::test_run(p.program, service_frame, 1).context("BPF_PROG_TEST_RUN")?;
    run(p.program, service_frame, 999, service_verdict)?;
    run(p.program, pass_frame, 1000, pass)?;
    let (reply_verdict, _) = sys::test_run(p.tc, reply_frame, 1).context("BPF_PROG_TEST_RUN")?;
    run(p.tc, reply_frame, 999, reply_verdict)?;
    let after = reasons(ebpf)?;
    let delta = |r: Reason| after[r as usize] - before[r as usize];
    // The ways the packets must have gone: on TC the service packet into the pod and the reply
    // straight out of the uplink, on XDP both through the kernel's routing.
    let (service_reason, reply_reason) = if p.ingress.kind == Ingress::TC.kind {
        (Reason::RedirectPeer, Reason::ReplyRedirected)
    } else {
        (Reason::Forwarded, Reason::ReplyTranslated)
    };
    if delta(service_reason) != 1000
        || delta(Reason::NotService) != 1000
        || delta(reply_reason) != 1000
    {
        let counted: Vec<String> = (0..Reason::COUNT as usize)
            .filter(|&i| after[i] != before[i])
            .map(|i| format!("reason {i}: {}", after[i] - before[i]))
            .collect();
        bail!(
            "the frames did not take their paths through {} and {} ({service_reason:?}, \
             NotService and {reply_reason:?} 1000 each expected; counted {})",
            p.ingress.name,
            p.reply_name,
            counted.join(", ")
        );
    }

    let (mut floor, mut lookup, mut pass_through, mut service, mut tc_floor, mut tc_reply) = (
        Vec::new(),
        Vec::new(),
        Vec::new(),
        Vec::new(),
        Vec::new(),
        Vec::new(),
    );
    for _ in 0..rounds {
        check_interrupted()?;
        floor.push(run(p.floor, service_frame, repeat, pass)?);
        lookup.push(run(p.lookup, service_frame, repeat, pass)?);
        pass_through.push(run(p.program, pass_frame, repeat, pass)?);
        service.push(run(p.program, service_frame, repeat, service_verdict)?);
        tc_floor.push(run(p.tc_floor, reply_frame, repeat, TC_ACT_OK as u32)?);
        tc_reply.push(run(p.tc, reply_frame, repeat, reply_verdict)?);
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
        single_floor.push(run(p.floor, &frame, 1, pass)?);
        new_flow.push(run(p.program, &frame, 1, service_verdict)?);
    }
    Ok(Row {
        services,
        install_seconds: 0.0,
        pass_through_ratio: ratio(&pass_through, &floor),
        one_lookup_ratio: ratio(&lookup, &floor),
        service_ratio: ratio(&service, &floor),
        pass_through_to_lookup: ratio(&pass_through, &lookup),
        service_to_lookup: ratio(&service, &lookup),
        tc_reply_ratio: ratio(&tc_reply, &tc_floor),
        one_lookup_ns: Summary::of(lookup),
        floor_ns: Summary::of(floor),
        pass_through_ns: Summary::of(pass_through),
        service_ns: Summary::of(service),
        single_floor_ns: Summary::of(single_floor).median,
        new_flow_ns: Summary::of(new_flow).median,
        new_flow_samples: singles,
        tc_floor_ns: Summary::of(tc_floor),
        tc_reply_ns: Summary::of(tc_reply),
    })
}
