//! What the router should show, over time, and the check of every sample against it: each
//! service IP's expected nexthops with the moment they last changed, and the windows in which a
//! node is excused (its bgpd restarting: the router drops its routes by design).
//!
//! A sample that differs from the expected routes is within the propagation allowance when the
//! IP changed less than the allowance ago, excused when every node it differs by is excused at
//! that moment, and a violation otherwise.
use std::{
    collections::{BTreeMap, BTreeSet},
    net::IpAddr,
    time::{Duration, Instant},
};

pub type Routes = BTreeMap<IpAddr, BTreeSet<usize>>;

/// Samples of one IP closer than this belong to one stretch of violation.
const SAMPLE_GAP: Duration = Duration::from_millis(200);

/// A stretch of samples in which one IP broke the invariant.
#[derive(Clone, Debug)]
pub struct Violation {
    pub ip: IpAddr,
    pub want: BTreeSet<usize>,
    pub got: BTreeSet<usize>,
    /// How long after the IP's expected routes last changed it began.
    pub since_change: Duration,
    /// When it began and when its last sample was, from the soak's start.
    pub at: Duration,
    pub until: Duration,
    pub samples: usize,
}

/// How the samples went.
#[derive(Clone, Debug, Default)]
pub struct Tally {
    pub samples: usize,
    /// Samples where some IP differed but had changed within the allowance.
    pub in_allowance: usize,
    /// Samples where some IP differed only by nodes excused at the time.
    pub excused: usize,
    /// Samples in which some IP broke the invariant.
    pub violations: usize,
    /// The stretches they form (the first 50).
    pub examples: Vec<Violation>,
    /// For each change the router showed, the time from the change to the first sample that
    /// matched it.
    pub propagation: Vec<Duration>,
}

#[derive(Debug)]
pub struct Timeline {
    started: Instant,
    allowance: Duration,
    expected: Routes,
    changed: BTreeMap<IpAddr, Instant>,
    /// Changes not seen at the router yet: when each was made.
    pending: BTreeMap<IpAddr, Instant>,
    /// (node, from, until); `None`: still excused.
    excused: Vec<(usize, Instant, Option<Instant>)>,
    /// Every change the schedule made, in order: when, and what (for the report on failures
    /// in calm).
    log: Vec<(Instant, String)>,
    pub tally: Tally,
}

impl Timeline {
    /// The routes the router shows at `started`, which it has just converged to (so they count
    /// as changed then).
    pub fn new(started: Instant, allowance: Duration, expected: Routes) -> Timeline {
        Timeline {
            started,
            allowance,
            changed: expected.keys().map(|&ip| (ip, started)).collect(),
            expected,
            pending: BTreeMap::new(),
            excused: Vec::new(),
            log: Vec::new(),
            tally: Tally::default(),
        }
    }

    /// Seconds from the soak's start to `at`.
    pub fn since_start(&self, at: Instant) -> f64 {
        at.saturating_duration_since(self.started).as_secs_f64()
    }

    /// Records that the schedule made a change (any kind, faults included) at `at`.
    pub fn log(&mut self, at: Instant, what: String) {
        self.log.push((at, what));
    }

    /// The last change made before `at`, and how long before: what a failure in calm most
    /// likely follows.
    pub fn last_change_before(&self, at: Instant) -> Option<String> {
        let (when, what) = self.log.iter().rev().find(|(when, _)| *when <= at)?;
        Some(format!(
            "{:.2} s after {what}",
            at.saturating_duration_since(*when).as_secs_f64()
        ))
    }

    pub fn expected(&self) -> &Routes {
        &self.expected
    }

    /// When `ip`'s expected routes last changed, if ever.
    pub fn changed(&self, ip: IpAddr) -> Option<Instant> {
        self.changed.get(&ip).copied()
    }

    /// The expected routes from `at` on.
    pub fn update(&mut self, expected: Routes, at: Instant) {
        let ips: BTreeSet<IpAddr> = self
            .expected
            .keys()
            .chain(expected.keys())
            .copied()
            .collect();
        for ip in ips {
            if self.expected.get(&ip) != expected.get(&ip) {
                self.changed.insert(ip, at);
                self.pending.insert(ip, at);
            }
        }
        self.expected = expected;
    }

    /// Node `node` is excused from `from` until [`Timeline::end_excuse`].
    pub fn excuse(&mut self, node: usize, from: Instant) {
        self.excused.push((node, from, None));
    }

    /// Ends node `node`'s open excuse at `until` (plus the allowance, for its routes to return).
    pub fn end_excuse(&mut self, node: usize, until: Instant) {
        let until = until + self.allowance;
        for excuse in &mut self.excused {
            if excuse.0 == node && excuse.2.is_none() {
                excuse.2 = Some(until);
            }
        }
    }

    /// Whether any node is excused at `at`, or an IP changed within the allowance of `from`..`to`
    /// (for judging a client connection made in that time).
    pub fn turbulent(&self, ip: IpAddr, from: Instant, to: Instant) -> bool {
        let changed = self
            .changed(ip)
            .is_some_and(|at| at + self.allowance >= from && at <= to);
        let excused = self
            .excused
            .iter()
            .any(|&(_, start, end)| start <= to && end.is_none_or(|end| end >= from));
        changed || excused
    }

    /// Whether node `node` was excused at some time in `from`..`to`.
    pub fn excused_during(&self, node: usize, from: Instant, to: Instant) -> bool {
        self.excused.iter().any(|&(excused, start, end)| {
            excused == node && start <= to && end.is_none_or(|end| end >= from)
        })
    }

    fn excused_at(&self, at: Instant) -> BTreeSet<usize> {
        self.excused
            .iter()
            .filter(|&&(_, from, until)| from <= at && until.is_none_or(|until| at <= until))
            .map(|&(node, _, _)| node)
            .collect()
    }

    /// Checks the router's routes as read at `at`.
    pub fn check(&mut self, sample: &Routes, at: Instant) {
        self.tally.samples += 1;
        let ips: BTreeSet<IpAddr> = self.expected.keys().chain(sample.keys()).copied().collect();
        let empty = BTreeSet::new();
        let excused = self.excused_at(at);
        let (mut in_allowance, mut was_excused, mut violated) = (false, false, false);
        for ip in ips {
            let want = self.expected.get(&ip).unwrap_or(&empty);
            let got = sample.get(&ip).unwrap_or(&empty);
            if want == got {
                if let Some(made) = self.pending.remove(&ip) {
                    self.tally
                        .propagation
                        .push(at.saturating_duration_since(made));
                }
                continue;
            }
            let since_change = self
                .changed(ip)
                .map_or(Duration::MAX, |made| at.saturating_duration_since(made));
            if since_change <= self.allowance {
                in_allowance = true;
                continue;
            }
            if want
                .symmetric_difference(got)
                .all(|node| excused.contains(node))
            {
                was_excused = true;
                continue;
            }
            violated = true;
            let now = at.saturating_duration_since(self.started);
            // The same IP still wrong since the last sample: the same stretch.
            let stretches = self.tally.examples.len();
            let ongoing = self.tally.examples.iter_mut().rev().find(|v| {
                v.ip == ip && now.saturating_sub(v.until) <= SAMPLE_GAP && &v.want == want
            });
            match ongoing {
                Some(stretch) => {
                    stretch.until = now;
                    stretch.samples += 1;
                    stretch.got = got.clone();
                }
                None if stretches < 50 => self.tally.examples.push(Violation {
                    ip,
                    want: want.clone(),
                    got: got.clone(),
                    since_change,
                    at: now,
                    until: now,
                    samples: 1,
                }),
                None => {}
            }
        }
        self.tally.violations += usize::from(violated);
        self.tally.in_allowance += usize::from(in_allowance);
        self.tally.excused += usize::from(was_excused);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn routes(entries: &[(&str, &[usize])]) -> Routes {
        entries
            .iter()
            .map(|(ip, nodes)| (ip.parse().unwrap(), nodes.iter().copied().collect()))
            .collect()
    }

    #[test]
    fn differences_count_only_beyond_the_allowance_and_outside_excuses() {
        let t0 = Instant::now();
        let ms = Duration::from_millis;
        let mut timeline = Timeline::new(t0, ms(500), routes(&[("10.0.100.20", &[0, 1])]));
        timeline.check(&routes(&[("10.0.100.20", &[0, 1])]), t0);
        assert_eq!(timeline.tally.violations, 0);

        // A change: the old routes are fine for the allowance, then they are a violation.
        timeline.update(routes(&[("10.0.100.20", &[0])]), t0 + ms(1000));
        timeline.check(&routes(&[("10.0.100.20", &[0, 1])]), t0 + ms(1400));
        assert_eq!(
            (timeline.tally.in_allowance, timeline.tally.violations),
            (1, 0)
        );
        timeline.check(&routes(&[("10.0.100.20", &[0, 1])]), t0 + ms(1600));
        assert_eq!(timeline.tally.violations, 1);
        assert_eq!(timeline.tally.examples[0].since_change, ms(600));
        timeline.check(&routes(&[("10.0.100.20", &[0])]), t0 + ms(1700));
        assert_eq!(timeline.tally.propagation, vec![ms(700)]);

        // A route nobody expects is a violation too; an excused node's absence is not.
        timeline.check(
            &routes(&[("10.0.100.20", &[0]), ("10.0.100.99", &[2])]),
            t0 + ms(1800),
        );
        assert_eq!(timeline.tally.violations, 2);
        timeline.excuse(0, t0 + ms(2000));
        timeline.check(&routes(&[]), t0 + ms(2100));
        assert_eq!((timeline.tally.excused, timeline.tally.violations), (1, 2));
        timeline.end_excuse(0, t0 + ms(3000));
        timeline.check(&routes(&[]), t0 + ms(3400));
        assert_eq!(
            timeline.tally.violations, 2,
            "within the allowance after the excuse"
        );
        timeline.check(&routes(&[]), t0 + ms(3600));
        assert_eq!(timeline.tally.violations, 3);
        assert_eq!(timeline.tally.samples, 8);
    }

    #[test]
    fn connections_during_changes_or_excuses_are_turbulent() {
        let t0 = Instant::now();
        let ms = Duration::from_millis;
        let ip: IpAddr = "10.0.100.20".parse().unwrap();
        let mut timeline = Timeline::new(t0, ms(500), routes(&[]));
        assert!(!timeline.turbulent(ip, t0, t0 + ms(10)));
        timeline.update(routes(&[("10.0.100.20", &[1])]), t0 + ms(100));
        assert!(timeline.turbulent(ip, t0 + ms(550), t0 + ms(560)));
        assert!(!timeline.turbulent(ip, t0 + ms(700), t0 + ms(710)));
        timeline.excuse(2, t0 + ms(800));
        assert!(timeline.turbulent(ip, t0 + ms(900), t0 + ms(910)));
    }

    #[test]
    fn names_the_last_change_before_a_moment() {
        let t0 = Instant::now();
        let ms = Duration::from_millis;
        let mut timeline = Timeline::new(t0, ms(500), routes(&[]));
        assert_eq!(timeline.last_change_before(t0 + ms(10)), None);
        timeline.log(t0 + ms(100), "readiness flip: soak-0".into());
        timeline.log(t0 + ms(300), "bgpd restart: node-a".into());
        assert_eq!(
            timeline.last_change_before(t0 + ms(250)).as_deref(),
            Some("0.15 s after readiness flip: soak-0")
        );
        assert_eq!(
            timeline.last_change_before(t0 + ms(1300)).as_deref(),
            Some("1.00 s after bgpd restart: node-a")
        );
    }
}
