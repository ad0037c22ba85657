//! `cargo xtask soak`: the lab (fast path on every node, `--retain-on-exit`) under a seeded
//! random schedule of pod readiness flips, terminations, scale-ups, Service creates and
//! deletes, l3lb SIGKILLs and restarts, bgpd restarts and source outages, while a client keeps
//! opening short connections and holds a few long-lived ones, and a sampler reads the router's
//! routes every 10 ms.
//!
//! The invariant, checked on every sample (`timeline`): each nexthop of a service route is a
//! node that should announce it (a ready pod of the Service, or a serving one when none is
//! ready anywhere) and each such node is a nexthop, except within the propagation allowance
//! after a change, and for a node whose bgpd restarts (from its stop until the router has its
//! routes back, at most 15 s, plus the allowance). An l3lb killed and restarted and a source outage get no
//! excuse: nothing may change at the router.
//!
//! The parts: `world` (the model, the schedule, the oracle), `timeline` (the check),
//! `clients`, `report`.
mod clients;
mod report;
mod timeline;
mod world;

use std::{
    collections::BTreeMap,
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, Ordering},
    },
    time::{Duration, Instant},
};

pub use self::report::Report;
use self::{
    timeline::Timeline,
    world::{Change, World},
};
use crate::lab::{Lab, LabError, LabOptions};

#[derive(Clone, Debug)]
pub struct SoakOptions {
    pub lab: LabOptions,
    pub duration: Duration,
    pub seed: u64,
    /// How long a change may take to show at the router.
    pub allowance: Duration,
    /// Print each change as it is made.
    pub progress: bool,
}

/// How long a router sample waits for the next.
const SAMPLE_EVERY: Duration = Duration::from_millis(10);
/// How the schedule paces its changes.
const GAP: std::ops::Range<u64> = 200..1200;
/// How long a killed l3lb stays down, and a source outage lasts.
const DOWN: std::ops::Range<u64> = 300..2000;
/// How long a node's routes may take to return after its bgpd restarted.
const ROUTES_BACK: Duration = Duration::from_secs(15);
/// How long the lab may take to show the first Services.
const CONVERGE: Duration = Duration::from_secs(20);

/// Runs the soak on a lab of its own; the lab is torn down when it returns.
pub fn run(mut options: SoakOptions) -> Result<Report, LabError> {
    options.lab.fast_path = true;
    options.lab.l3lb_args.push("--retain-on-exit".to_owned());
    let mut lab = Lab::up(options.lab.clone())?;
    let nodes = lab.nodes();
    let mut rng = fastrand::Rng::with_seed(options.seed);
    let mut world = World::new(nodes);
    for endpoints in [2, 3] {
        let change = world.create_with(&mut rng, endpoints);
        apply(&mut lab, &mut world, &change);
    }
    let expected = world.expected();
    let wanted: Vec<(std::net::IpAddr, Vec<usize>)> = expected
        .iter()
        .map(|(ip, nodes)| (*ip, nodes.iter().copied().collect()))
        .collect();
    let wanted: Vec<(std::net::IpAddr, &[usize])> =
        wanted.iter().map(|(ip, n)| (*ip, n.as_slice())).collect();
    lab.wait_routes(&wanted, Instant::now(), CONVERGE)?;

    let started = Instant::now();
    let wall_start = jiff::Timestamp::now();
    let timeline = Arc::new(Mutex::new(Timeline::new(
        started,
        options.allowance,
        expected,
    )));
    let stop = Arc::new(AtomicBool::new(false));
    let sampler = {
        let (view, timeline, stop) = (lab.router_view(), timeline.clone(), stop.clone());
        std::thread::spawn(move || {
            while !stop.load(Ordering::SeqCst) {
                let routes = view.routes();
                let at = Instant::now();
                timeline.lock().expect("the timeline").check(&routes, at);
                std::thread::sleep(SAMPLE_EVERY);
            }
        })
    };
    let (short, long) = clients::run(
        lab.client_ns().name().to_owned(),
        timeline.clone(),
        options.seed,
        stop.clone(),
    );

    let mut report = Report::new(&options, nodes);
    let outcome = schedule(
        &mut lab,
        &mut world,
        &mut rng,
        &timeline,
        &options,
        &mut report,
    );
    stop.store(true, Ordering::SeqCst);
    let _ = sampler.join();
    report.short = short.join().unwrap_or_default();
    report.long = long.join().unwrap_or_default();
    report.elapsed = started.elapsed();
    report.tally = timeline.lock().expect("the timeline").tally.clone();
    report.diagnostics = diagnose(&lab, &report, wall_start);
    outcome?;
    Ok(report)
}

/// For the first violations: what the l3lbs logged around their start, and the router's BGP
/// summary now.
fn diagnose(lab: &Lab, report: &Report, wall_start: jiff::Timestamp) -> Vec<String> {
    let mut out = Vec::new();
    let window = jiff::SignedDuration::from_millis(1500);
    for violation in report.tally.examples.iter().take(3) {
        let Ok(began) = wall_start
            .checked_add(jiff::SignedDuration::try_from(violation.at).unwrap_or_default())
        else {
            continue;
        };
        out.push(format!(
            "l3lb logs within 1.5 s of the violation at {:.2} s ({began}):",
            violation.at.as_secs_f64()
        ));
        for node in 0..lab.nodes() {
            for line in lab.l3lb_log(node).lines() {
                let stamp = line.split_whitespace().next().unwrap_or("");
                let Ok(at) = stamp.parse::<jiff::Timestamp>() else {
                    continue;
                };
                if (at.duration_since(began)).abs() <= window {
                    out.push(format!("  {} │ {line}", crate::lab::node_name(node)));
                }
            }
        }
    }
    if !out.is_empty() {
        out.push("the router's BGP sessions at the end:".to_owned());
        out.extend(
            lab.vtysh(None, "show bgp summary")
                .lines()
                .map(|l| format!("  {l}")),
        );
    }
    out
}

/// The schedule until the duration is up; what it did goes into `report`.
fn schedule(
    lab: &mut Lab,
    world: &mut World,
    rng: &mut fastrand::Rng,
    timeline: &Mutex<Timeline>,
    options: &SoakOptions,
    report: &mut Report,
) -> Result<(), LabError> {
    let started = Instant::now();
    let mut pids: BTreeMap<usize, u32> = BTreeMap::new();
    while started.elapsed() < options.duration {
        if options
            .lab
            .cancel
            .is_some_and(|flag| flag.load(Ordering::SeqCst))
        {
            return Err(LabError::Interrupted);
        }
        sample_rss(lab, report, &mut pids);
        std::thread::sleep(Duration::from_millis(rng.u64(GAP)));
        let change = world.draw(rng);
        let kind = change.kind(world);
        *report.changes.entry(kind).or_default() += 1;
        timeline
            .lock()
            .expect("the timeline")
            .log(Instant::now(), format!("{kind}: {}", describe(&change)));
        if options.progress {
            println!(
                "  {:>7.1} s  {kind}: {}",
                started.elapsed().as_secs_f64(),
                describe(&change)
            );
        }
        match &change {
            Change::Apply(_) | Change::Delete(_) => {
                let at = apply(lab, world, &change);
                timeline
                    .lock()
                    .expect("the timeline")
                    .update(world.expected(), at);
            }
            Change::KillL3lb(node) => {
                lab.kill_l3lb(*node)?;
                std::thread::sleep(Duration::from_millis(rng.u64(DOWN)));
                lab.start_l3lb(*node)?;
            }
            Change::RestartBgpd(node) => {
                let from = Instant::now();
                timeline.lock().expect("the timeline").excuse(*node, from);
                let restarted = lab.restart_bgpd(*node);
                // The node is excused until the router has its routes again (BGP's own timers
                // decide when after the session is up), at most ROUTES_BACK.
                let view = lab.router_view();
                crate::wait_until(ROUTES_BACK, || {
                    let want = timeline.lock().expect("the timeline").expected().clone();
                    view.routes() == want
                });
                let back = Instant::now();
                timeline
                    .lock()
                    .expect("the timeline")
                    .end_excuse(*node, back);
                restarted?;
                report.bgpd_back.push(back - from);
            }
            Change::SourceOutage => {
                lab.hide_manifests();
                std::thread::sleep(Duration::from_millis(rng.u64(DOWN)));
                lab.restore_manifests();
            }
        }
    }
    sample_rss(lab, report, &mut pids);
    Ok(())
}

/// Writes or removes a Service's manifest; returns when.
fn apply(lab: &mut Lab, world: &mut World, change: &Change) -> Instant {
    let at = match change {
        Change::Apply(service) => lab.apply(service).0,
        Change::Delete(name) => lab.delete_service(name),
        _ => Instant::now(),
    };
    world.apply(change);
    at
}

fn describe(change: &Change) -> String {
    match change {
        Change::Apply(service) => {
            let endpoints: Vec<String> = service
                .endpoints
                .iter()
                .map(|e| {
                    let state = if e.ready {
                        "ready"
                    } else if e.terminating {
                        "terminating"
                    } else {
                        "not ready"
                    };
                    format!("{}@{} {state}", e.pod, crate::lab::node_name(e.node))
                })
                .collect();
            format!("{} [{}]", service.name, endpoints.join(", "))
        }
        Change::Delete(name) => name.clone(),
        Change::KillL3lb(node) | Change::RestartBgpd(node) => crate::lab::node_name(*node),
        Change::SourceOutage => "manifest directory moved away".to_owned(),
    }
}

/// Each node's l3lb resident memory now (one series per node, across its restarts).
fn sample_rss(lab: &mut Lab, report: &mut Report, pids: &mut BTreeMap<usize, u32>) {
    for node in 0..lab.nodes() {
        let Some(pid) = lab.l3lb_pid(node) else {
            continue;
        };
        pids.insert(node, pid);
        if let Some(kib) = rss_kib(pid) {
            report.rss.entry(node).or_default().push(kib);
        }
    }
}

fn rss_kib(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status
        .lines()
        .find_map(|line| line.strip_prefix("VmRSS:"))?
        .trim()
        .trim_end_matches("kB")
        .trim()
        .parse()
        .ok()
}
