//! What a soak run measured, as text for a terminal and for `docs/reliability.md`.
use std::{collections::BTreeMap, fmt, time::Duration};

use super::{
    SoakOptions,
    clients::{Long, Short},
    timeline::Tally,
};

#[derive(Clone, Debug)]
pub struct Report {
    pub seed: u64,
    pub nodes: usize,
    pub planned: Duration,
    pub allowance: Duration,
    pub elapsed: Duration,
    /// Changes made, by kind.
    pub changes: BTreeMap<&'static str, usize>,
    pub tally: Tally,
    /// For each bgpd restart, the time from its stop until the router had the node's routes back.
    pub bgpd_back: Vec<Duration>,
    pub short: Short,
    pub long: Long,
    /// Each node's l3lb resident memory (KiB), sampled between changes.
    pub rss: BTreeMap<usize, Vec<u64>>,
    /// What the l3lbs logged around the first violations.
    pub diagnostics: Vec<String>,
}

impl Report {
    pub fn new(options: &SoakOptions, nodes: usize) -> Report {
        Report {
            seed: options.seed,
            nodes,
            planned: options.duration,
            allowance: options.allowance,
            elapsed: Duration::ZERO,
            changes: BTreeMap::new(),
            tally: Tally::default(),
            bgpd_back: Vec::new(),
            short: Short::default(),
            long: Long::default(),
            rss: BTreeMap::new(),
            diagnostics: Vec::new(),
        }
    }

    /// The soak's verdict: no sample broke the invariant beyond the allowance, and no connection
    /// failed, broke or went astray in calm.
    pub fn passed(&self) -> bool {
        self.tally.violations == 0
            && self.short.failed_in_calm == 0
            && self.short.misrouted_in_calm == 0
            && self.long.broken_in_calm.is_empty()
    }
}

/// The 50th and 99th percentiles and the maximum, in ms.
fn percentiles(values: &[Duration]) -> String {
    if values.is_empty() {
        return "none".to_owned();
    }
    let mut sorted = values.to_vec();
    sorted.sort();
    let at = |q: f64| sorted[((sorted.len() - 1) as f64 * q).round() as usize];
    format!(
        "p50 {} ms, p99 {} ms, max {} ms ({} values)",
        at(0.5).as_millis(),
        at(0.99).as_millis(),
        sorted[sorted.len() - 1].as_millis(),
        sorted.len()
    )
}

impl fmt::Display for Report {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let changes: usize = self.changes.values().sum();
        writeln!(
            f,
            "soak: seed {}, {} nodes, {:.0} s planned, {:.0} s run, allowance {} ms",
            self.seed,
            self.nodes,
            self.planned.as_secs_f64(),
            self.elapsed.as_secs_f64(),
            self.allowance.as_millis()
        )?;
        writeln!(f, "changes applied: {changes}")?;
        for (kind, count) in &self.changes {
            writeln!(f, "  {count:>5}  {kind}")?;
        }
        let tally = &self.tally;
        writeln!(
            f,
            "router samples: {} (every ~10 ms); {} with a change still within the allowance, \
             {} with a restarting bgpd's node excused",
            tally.samples, tally.in_allowance, tally.excused
        )?;
        writeln!(
            f,
            "samples with a violation beyond the allowance: {}",
            tally.violations
        )?;
        for violation in &tally.examples {
            writeln!(
                f,
                "  {:.2}–{:.2} s ({} samples): {} routed via {:?}, expected {:?} (began {} ms \
                 after its last change)",
                violation.at.as_secs_f64(),
                violation.until.as_secs_f64(),
                violation.samples,
                violation.ip,
                violation.got,
                violation.want,
                violation.since_change.as_millis().min(u128::from(u32::MAX))
            )?;
        }
        writeln!(
            f,
            "change → route at the router: {}",
            percentiles(&tally.propagation)
        )?;
        writeln!(
            f,
            "bgpd restart → the node's routes back at the router: {}",
            percentiles(&self.bgpd_back)
        )?;
        let short = &self.short;
        writeln!(
            f,
            "short connections: {} answered, {} failed while routes changed, {} failed in calm, \
             {} answered by a node the router should not have chosen (in calm)",
            short.ok, short.failed_in_turbulence, short.failed_in_calm, short.misrouted_in_calm
        )?;
        for example in &short.calm_examples {
            writeln!(f, "  {example}")?;
        }
        let long = &self.long;
        let broken: usize = long.broken.values().map(Vec::len).sum();
        writeln!(
            f,
            "long-lived connections: {} opened, {} open at the end, {broken} broken while the \
             routes changed, {} broken in calm",
            long.opened,
            long.survived,
            long.broken_in_calm.len()
        )?;
        for (why, ages) in &long.broken {
            writeln!(
                f,
                "  {:>5}  {why} (ages: {})",
                ages.len(),
                percentiles(ages)
            )?;
        }
        for example in &long.broken_in_calm {
            writeln!(f, "  {example}")?;
        }
        for (node, series) in &self.rss {
            let (first, last) = (series.first().copied(), series.last().copied());
            let max = series.iter().max().copied();
            if let (Some(first), Some(last), Some(max)) = (first, last, max) {
                writeln!(
                    f,
                    "l3lb RSS on {}: first {:.1} MiB, max {:.1} MiB, last {:.1} MiB ({} samples)",
                    crate::lab::node_name(*node),
                    first as f64 / 1024.0,
                    max as f64 / 1024.0,
                    last as f64 / 1024.0,
                    series.len()
                )?;
            }
        }
        for line in &self.diagnostics {
            writeln!(f, "{line}")?;
        }
        write!(
            f,
            "verdict: {}",
            if self.passed() { "PASS" } else { "FAIL" }
        )
    }
}
