//! A short soak (`l3lb_tests::soak`, `cargo xtask soak` for a long one): the lab with the fast
//! path under a seeded random schedule of readiness flips, terminations, scale-ups, Service
//! creates and deletes, l3lb SIGKILLs, bgpd restarts and source outages. The router's routes
//! must match the ready pods in every 10 ms sample (beyond a 3 s propagation allowance and a
//! restarting bgpd's own node), and no connection may fail, break or land astray in calm.
//!
//! The seed is printed; `L3LB_SOAK_SEED` runs a given one again.
use std::time::Duration;

use l3lb_tests::{
    lab::{Lab, LabOptions},
    soak::{self, SoakOptions},
};

#[test]
fn the_router_follows_the_ready_pods_through_changes_and_faults() {
    if !l3lb_tests::privileged("soak::the_router_follows_the_ready_pods_through_changes_and_faults")
    {
        return;
    }
    for name in Lab::down_abandoned("l3lb-soak-") {
        eprintln!("removed the abandoned lab {name}");
    }
    let seed = std::env::var("L3LB_SOAK_SEED")
        .ok()
        .and_then(|seed| seed.parse().ok())
        .unwrap_or_else(|| u64::from(std::process::id()));
    eprintln!("soak seed {seed} (L3LB_SOAK_SEED={seed} runs this schedule again)");
    let name = format!("l3lb-soak-{}", std::process::id());
    let report = soak::run(SoakOptions {
        lab: LabOptions::new(&name),
        duration: Duration::from_secs(60),
        seed,
        // The 500 ms aim is not met yet (docs/reliability.md: changes reach the router in
        // 158 ms at the median but 1.6 s at p99). The allowance runs from each IP's own last
        // change, so anything that moves a route in calm (an outage, a restart, a stuck route)
        // still fails here at once.
        allowance: Duration::from_secs(3),
        progress: false,
    })
    .unwrap_or_else(|err| panic!("the soak could not run: {err}"));
    eprintln!("{report}");
    assert!(Lab::leftovers(&name).is_empty(), "the soak's lab is gone");
    assert!(report.changes.values().sum::<usize>() >= 20, "{report}");
    assert!(report.tally.samples >= 1000, "{report}");
    assert_eq!(report.tally.violations, 0, "{report}");
    assert_eq!(report.short.failed_in_calm, 0, "{report}");
    assert_eq!(report.short.misrouted_in_calm, 0, "{report}");
    assert!(report.short.ok >= 100, "{report}");
    assert!(report.long.broken_in_calm.is_empty(), "{report}");
}
