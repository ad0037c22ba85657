//! A fuzzer for the fast path's kernel programs (`cargo xtask fuzz`, and 100 000 frames in
//! `tests/tests/fuzz_programs.rs`): generated frames (`generate`), mutated (`mutate`), run
//! through all four programs with BPF_PROG_TEST_RUN, each outcome judged by an oracle that
//! knows only the installed services and the RFCs (`oracle`, `parse`). The maps are filled by
//! the daemon's own `Tables`, with the LRU maps shrunk so that the many new flows make them
//! evict. It runs in a namespace of its own whose FIB the pod program's lookups see
//! (`programs::FibNode`).
//!
//! A run is reproducible from its seed: frames come from a seeded PRNG and the backends the
//! programs picked (Maglev, a pure function of the flow), and a violation names its frame's
//! number, the frame and the program's output in hex.
pub mod generate;
pub mod mutate;
pub mod oracle;
pub mod parse;
pub mod report;
pub mod world;

use std::time::Instant;

use generate::{Generator, Kind};
use mutate::Mutation;
use oracle::{Oracle, Outcome, Program};
pub use report::{Report, Violation};
use world::World;

use crate::programs::{Fastpath, FibNode};

/// Maglev tables of this many entries (prime), for up to [`MAX_SERVICES`] services.
const TABLE_SIZE: u32 = 251;
const MAX_SERVICES: u32 = 8;

#[derive(Clone, Copy, Debug)]
pub struct Options {
    pub frames: u64,
    pub seed: u64,
    /// Entries of each LRU map (flows, replies, affinity, fragments).
    pub lru_entries: u32,
    /// Print a line every million frames.
    pub progress: bool,
}

impl Options {
    pub fn new(frames: u64, seed: u64) -> Options {
        Options {
            frames,
            seed,
            lru_entries: 2048,
            progress: false,
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("{} oracle violations in {} frames; the report:\n{}", .0.violations, .0.frames, .0)]
    Violations(Box<Report>),
}

impl Report {
    /// The report, or an error carrying it when the oracle found anything.
    pub fn into_result(self) -> Result<Report, Error> {
        if self.violations == 0 {
            Ok(self)
        } else {
            Err(Error::Violations(Box::new(self)))
        }
    }
}

/// A random seed, for runs that do not name one (printed in the report).
pub fn random_seed() -> u64 {
    fastrand::u64(..)
}

/// Runs `options.frames` frames through the four programs in a namespace of its own (removed
/// when the run ends) and reports. Needs root.
pub fn run(options: Options) -> Report {
    let node = FibNode::new("fuzz");
    let macs = (node.gateway_mac, node.uplink_mac);
    node.ns.run_inside(move || fuzz(options, macs))
}

fn fuzz(options: Options, (gateway_mac, uplink_mac): ([u8; 6], [u8; 6])) -> Report {
    let world = World::new();
    let mut lb = Fastpath::load_with_lru(TABLE_SIZE, MAX_SERVICES, Some(options.lru_entries));
    for service in &world.services {
        lb.tables
            .set(service.vip, &service.targets, service.affinity)
            .unwrap_or_else(|err| panic!("installing {}: {err}", service.vip));
    }
    let mut generator = Generator::new(options.seed, world.clone());
    let mut oracle = Oracle::new(world, gateway_mac, uplink_mac);
    let mut report = Report {
        seed: options.seed,
        lru_entries: options.lru_entries,
        ..Report::default()
    };
    let start = Instant::now();
    let mut sweep = Sweep::default();
    for index in 0..options.frames {
        let (frame, kind, flow, mutation) = match sweep.next() {
            Some((frame, kind)) => (frame, kind, None, Mutation::TruncateSweep),
            None => {
                let generate::Generated { bytes, kind, flow } = generator.frame();
                sweep.maybe_start(generator.rng(), &bytes, kind);
                let mut frame = bytes;
                let mutation = mutate::mutate(generator.rng(), &mut frame);
                (frame, kind, flow, mutation)
            }
        };
        *report.kinds.entry(kind).or_default() += 1;
        *report.mutations.entry(mutation).or_default() += 1;
        let malformed = oracle.malformed_flow(&frame);
        let state_before = malformed.map(|key| lb.flow(&key));
        if malformed.is_some() {
            report.state_checks += 1;
        }
        // XDP's output when it steered the frame: TC ingress, next, must pick the same backend.
        let mut xdp_steered: Option<Vec<u8>> = None;
        for program in Program::ALL {
            let violation = |what: String, verdict: Option<u32>, output: Vec<u8>| Violation {
                index,
                program,
                kind,
                mutation,
                what,
                input: frame.clone(),
                verdict,
                output,
            };
            let outcome = match lb.try_run(program.name(), &frame) {
                Err(_) if refused(program, &frame) => Ok(Outcome::Refused),
                Err(err) => Err(violation(
                    format!("the test run failed: {err}"),
                    None,
                    vec![],
                )),
                Ok((verdict, out)) => {
                    *report.verdicts.entry((program, verdict)).or_default() += 1;
                    match oracle.check(program, &frame, verdict, &out) {
                        Ok(Outcome::Steered)
                            if program == Program::TcIngress
                                && xdp_steered
                                    .as_ref()
                                    .is_some_and(|xdp| !same_destination(xdp, &out)) =>
                        {
                            let what = "TC ingress steered the frame elsewhere than XDP did \
                                        (they share the flow table)";
                            Err(violation(what.to_owned(), Some(verdict), out))
                        }
                        Ok(outcome) => {
                            if program == Program::Xdp && outcome == Outcome::Steered {
                                xdp_steered = Some(out.clone());
                            }
                            learn(
                                &mut generator,
                                (kind, flow),
                                mutation,
                                program,
                                outcome,
                                &out,
                            );
                            Ok(outcome)
                        }
                        Err(what) => Err(violation(what, Some(verdict), out)),
                    }
                }
            };
            match outcome {
                Ok(outcome) => *report.outcomes.entry((program, outcome)).or_default() += 1,
                Err(violation) => report.violate(violation),
            }
            if let (Some(key), Some(before)) = (malformed, state_before)
                && matches!(program, Program::Xdp | Program::TcIngress)
                && lb.flow(&key) != before
            {
                let what = "a malformed packet to a service changed its flow entry".to_owned();
                report.violate(violation(what, None, vec![]));
            }
        }
        if options.progress && (index + 1) % 1_000_000 == 0 {
            eprintln!(
                "{} frames, {:.0} s, {} violations",
                index + 1,
                start.elapsed().as_secs_f64(),
                report.violations
            );
        }
    }
    report.frames = options.frames;
    report.elapsed = start.elapsed();
    report
}

/// Whether two steered frames go to the same address and port.
fn same_destination(a: &[u8], b: &[u8]) -> bool {
    let to = |frame: &[u8]| parse::ip(frame).map(|ip| (ip.dst, parse::be16(frame, ip.l4 + 2)));
    to(a) == to(b)
}

/// Truncations of one frame at every offset, one frame each, from the empty frame to the
/// whole one: started now and then on a generated frame (before its mutation), so every
/// header's every boundary is crossed, not only those a random cut happens to hit.
#[derive(Default)]
struct Sweep {
    base: Vec<u8>,
    kind: Option<Kind>,
    next: usize,
}

impl Sweep {
    /// About one generated frame in 1600, of at most 200 bytes.
    fn maybe_start(&mut self, rng: &mut fastrand::Rng, frame: &[u8], kind: Kind) {
        if self.kind.is_none() && frame.len() <= 200 && rng.u16(..) < 40 {
            self.base = frame.to_vec();
            self.kind = Some(kind);
            self.next = 0;
        }
    }

    fn next(&mut self) -> Option<(Vec<u8>, Kind)> {
        let kind = self.kind?;
        let frame = self.base[..self.next].to_vec();
        self.next += 1;
        if self.next >= self.base.len() {
            self.kind = None;
        }
        Some((frame, kind))
    }
}

/// Frames BPF_PROG_TEST_RUN refuses to run: shorter than an Ethernet header, or (for the TC
/// programs, whose socket buffer it builds) an IPv4/IPv6 EtherType with less than the fixed
/// IP header after it, or more than fits one page with the buffer's head- and tailroom. The
/// receive path never hands such a runt to the programs either.
fn refused(program: Program, frame: &[u8]) -> bool {
    use crate::frames::{ETH_LEN, IPV4_LEN, IPV6_LEN};
    if frame.len() < ETH_LEN || (program != Program::Xdp && frame.len() > 3500) {
        return true;
    }
    let ip_min = match parse::be16(frame, 12) {
        0x0800 => IPV4_LEN,
        0x86dd => IPV6_LEN,
        _ => 0,
    };
    program != Program::Xdp && frame.len() < ETH_LEN + ip_min
}

/// Tells the generator which backend an unmutated service packet was steered to, so the
/// flow's replies and ICMP errors come from it.
fn learn(
    generator: &mut Generator,
    (kind, flow): (Kind, Option<usize>),
    mutation: Mutation,
    program: Program,
    outcome: Outcome,
    out: &[u8],
) {
    let is_request = matches!(kind, Kind::ServiceNewFlow | Kind::ServiceKnownFlow);
    if program != Program::Xdp
        || outcome != Outcome::Steered
        || mutation != Mutation::None
        || !is_request
    {
        return;
    }
    if let (Some(flow), Some(ip)) = (flow, parse::ip(out)) {
        generator.learn(flow, (ip.dst, parse::be16(out, ip.l4 + 2)));
    }
}
