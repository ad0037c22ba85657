//! IP pools: which address a LoadBalancer Service without a hand-picked IP gets.
//!
//! [`allocate`] is a pure function of the pools and the Services (including what each Service
//! was given before), so the leader, a new leader after a failover and every node reading the
//! same files all arrive at the same answer. Stability rules, in the order they are applied:
//!
//! 1. An earlier allocation (the `l3lb.io/allocated-ips` annotation) is kept as long as it lies
//!    inside some pool — any pool, even a disabled one or one whose selector no longer matches —
//!    and the Service still wants that address family. Editing or adding pools never re-IPs a
//!    Service; removing the last pool that covers an address releases it.
//! 2. Hand-picked IPs (`l3lb.io/loadBalancerIPs`, `spec.loadBalancerIP`) are reserved; one that
//!    an earlier allocation already holds is a conflict reported on the requester, never a steal.
//! 3. New allocations take the lowest free address of the first matching pool (by priority,
//!    then name), Services in `namespace/name` order.
//!
//! Every step iterates in a fixed order, so the input order never matters.
use std::{
    cmp::Ordering,
    collections::{BTreeMap, BTreeSet},
    fmt,
    net::{IpAddr, Ipv4Addr, Ipv6Addr},
    str::FromStr,
};

use ipnet::IpNet;
use kube::core::{Selector, SelectorExt as _};

use crate::cluster::model::ServiceKey;

/// Pseudo-label carrying a Service's namespace, for pool selectors.
pub const NAMESPACE_PSEUDO_LABEL: &str = "io.kubernetes.service.namespace";
/// Pseudo-label carrying a Service's name, for pool selectors.
pub const NAME_PSEUDO_LABEL: &str = "io.kubernetes.service.name";

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Family {
    V4,
    V6,
}

impl Family {
    pub fn of(ip: &IpAddr) -> Family {
        match ip {
            IpAddr::V4(_) => Family::V4,
            IpAddr::V6(_) => Family::V6,
        }
    }

    pub fn other(self) -> Family {
        match self {
            Family::V4 => Family::V6,
            Family::V6 => Family::V4,
        }
    }

    /// The name Kubernetes uses in `spec.ipFamilies`.
    pub fn as_kube(self) -> &'static str {
        match self {
            Family::V4 => "IPv4",
            Family::V6 => "IPv6",
        }
    }

    pub fn from_kube(name: &str) -> Option<Family> {
        match name {
            "IPv4" => Some(Family::V4),
            "IPv6" => Some(Family::V6),
            _ => None,
        }
    }
}

impl fmt::Display for Family {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_kube())
    }
}

/// An inclusive address range of one family.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct Block {
    first: IpAddr,
    last: IpAddr,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BlockError {
    #[error("block {0:?} is neither a CIDR nor a first-last range")]
    Malformed(String),
    #[error("block {0:?} mixes IPv4 and IPv6")]
    MixedFamilies(String),
    #[error("block {0:?} ends before it starts")]
    Reversed(String),
}

impl FromStr for Block {
    type Err = BlockError;

    fn from_str(raw: &str) -> Result<Block, BlockError> {
        let text = raw.trim();
        let malformed = || BlockError::Malformed(raw.to_owned());
        if let Some((first, last)) = text.split_once('-') {
            let first: IpAddr = first.trim().parse().map_err(|_| malformed())?;
            let last: IpAddr = last.trim().parse().map_err(|_| malformed())?;
            if Family::of(&first) != Family::of(&last) {
                return Err(BlockError::MixedFamilies(raw.to_owned()));
            }
            if last < first {
                return Err(BlockError::Reversed(raw.to_owned()));
            }
            return Ok(Block { first, last });
        }
        let net: IpNet = text.parse().map_err(|_| malformed())?;
        Ok(Block {
            first: net.network(),
            last: net.broadcast(),
        })
    }
}

impl fmt::Display for Block {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}-{}", self.first, self.last)
    }
}

fn to_u128(ip: &IpAddr) -> u128 {
    match ip {
        IpAddr::V4(v4) => u128::from(u32::from(*v4)),
        IpAddr::V6(v6) => u128::from(*v6),
    }
}

fn from_u128(family: Family, value: u128) -> IpAddr {
    match family {
        // Callers stay inside a v4 block, so the value fits.
        Family::V4 => IpAddr::V4(Ipv4Addr::from(value as u32)),
        Family::V6 => IpAddr::V6(Ipv6Addr::from(value)),
    }
}

/// `.0` and `.255`, which some old clients and middleboxes mishandle (MetalLB's `avoidBuggyIPs`).
fn is_buggy(ip: &IpAddr) -> bool {
    matches!(ip, IpAddr::V4(v4) if matches!(v4.octets()[3], 0 | 255))
}

impl Block {
    pub fn family(&self) -> Family {
        Family::of(&self.first)
    }

    pub fn contains(&self, ip: &IpAddr) -> bool {
        Family::of(ip) == self.family() && self.first <= *ip && *ip <= self.last
    }

    pub fn overlaps(&self, other: &Block) -> bool {
        self.family() == other.family() && self.first <= other.last && other.first <= self.last
    }

    /// How many addresses the block offers.
    fn size(&self, avoid_buggy: bool) -> u128 {
        let (first, last) = (to_u128(&self.first), to_u128(&self.last));
        let all = (last - first).saturating_add(1);
        if !avoid_buggy || self.family() == Family::V6 {
            return all;
        }
        // Values ≡ 0 or 255 (mod 256) in [first, last].
        let upto = |n: u128, residue: u128| {
            if n < residue {
                0
            } else {
                (n - residue) / 256 + 1
            }
        };
        let count = |residue| {
            upto(last, residue)
                - if first == 0 {
                    0
                } else {
                    upto(first - 1, residue)
                }
        };
        all - count(0) - count(255)
    }

    /// The lowest address of the block that is not in `taken` (and not buggy when asked to).
    fn first_free(
        &self,
        taken: &BTreeMap<IpAddr, Vec<Holder>>,
        avoid_buggy: bool,
    ) -> Option<IpAddr> {
        let family = self.family();
        let last = to_u128(&self.last);
        let mut candidate = to_u128(&self.first);
        // Every step skips an address that is taken or buggy; taken addresses are at most one
        // per Service and buggy ones at most two in 256, so this ends quickly.
        loop {
            let ip = from_u128(family, candidate);
            if !(taken.contains_key(&ip) || avoid_buggy && is_buggy(&ip)) {
                return Some(ip);
            }
            if candidate >= last {
                return None;
            }
            candidate += 1;
        }
    }
}

/// One pool, parsed.
#[derive(Clone, Debug, Default)]
pub struct Pool {
    pub name: String,
    pub blocks: Vec<Block>,
    /// `None` selects every Service.
    pub selector: Option<Selector>,
    /// Empty means every namespace.
    pub namespaces: Vec<String>,
    /// Lower first.
    pub priority: i32,
    /// `false`: only Services that name this pool in `l3lb.io/ip-pool` get addresses from it.
    pub auto_assign: bool,
    pub avoid_buggy_ips: bool,
    /// No new allocations; existing ones stay.
    pub disabled: bool,
}

impl Pool {
    pub fn contains(&self, ip: &IpAddr) -> bool {
        self.blocks.iter().any(|block| block.contains(ip))
    }

    pub fn has_family(&self, family: Family) -> bool {
        self.blocks.iter().any(|block| block.family() == family)
    }

    /// Does the pool's `namespaces` and `serviceSelector` admit this Service?
    pub fn admits(&self, service: &ServiceRequest) -> bool {
        if !self.namespaces.is_empty()
            && !self.namespaces.iter().any(|n| *n == *service.key.namespace)
        {
            return false;
        }
        let Some(selector) = &self.selector else {
            return true;
        };
        let mut labels = service.labels.clone();
        labels.insert(
            NAMESPACE_PSEUDO_LABEL.into(),
            service.key.namespace.to_string(),
        );
        labels.insert(NAME_PSEUDO_LABEL.into(), service.key.name.to_string());
        selector.matches(&labels)
    }

    fn first_free(&self, family: Family, taken: &BTreeMap<IpAddr, Vec<Holder>>) -> Option<IpAddr> {
        let mut blocks: Vec<&Block> = self
            .blocks
            .iter()
            .filter(|b| b.family() == family)
            .collect();
        blocks.sort();
        blocks
            .into_iter()
            .find_map(|block| block.first_free(taken, self.avoid_buggy_ips))
    }

    fn order(&self, other: &Pool) -> Ordering {
        (self.priority, &self.name).cmp(&(other.priority, &other.name))
    }
}

/// `spec.ipFamilyPolicy`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum StackPolicy {
    #[default]
    SingleStack,
    PreferDualStack,
    RequireDualStack,
}

impl StackPolicy {
    pub fn from_kube(name: Option<&str>) -> StackPolicy {
        match name {
            Some("PreferDualStack") => StackPolicy::PreferDualStack,
            Some("RequireDualStack") => StackPolicy::RequireDualStack,
            _ => StackPolicy::SingleStack,
        }
    }
}

/// What the allocator needs of one Service.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ServiceRequest {
    pub key: ServiceKey,
    pub labels: BTreeMap<String, String>,
    /// `l3lb.io/ip-pool`.
    pub pool: Option<String>,
    /// `l3lb.io/sharing-key`.
    pub sharing_key: Option<String>,
    /// `(protocol, port)` pairs, for the sharing rule.
    pub ports: BTreeSet<(String, u16)>,
    pub stack: StackPolicy,
    /// `spec.ipFamilies`, in order; empty means IPv4 first.
    pub families: Vec<Family>,
    /// Hand-picked IPs (annotation or `spec.loadBalancerIP`): not allocated, only reserved.
    pub requested: Vec<IpAddr>,
    /// What the allocator gave this Service before (`l3lb.io/allocated-ips`).
    pub previous: Vec<IpAddr>,
}

impl ServiceRequest {
    /// The families to allocate, in preference order.
    fn wanted_families(&self) -> Vec<Family> {
        let primary = self.families.first().copied().unwrap_or(Family::V4);
        match self.stack {
            StackPolicy::SingleStack => vec![primary],
            StackPolicy::PreferDualStack | StackPolicy::RequireDualStack => {
                vec![primary, primary.other()]
            }
        }
    }
}

/// Why a Service got no (or not every) address.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Failure {
    NoPoolMatches,
    PoolNotFound(String),
    PoolDisabled(String),
    /// Every pool that offers the family is full.
    PoolExhausted {
        family: Family,
        pools: Vec<String>,
    },
    /// No eligible pool has a block of this family.
    FamilyUnavailable(Family),
    /// A hand-picked IP another Service holds (without a matching sharing key, or with
    /// overlapping ports).
    RequestedTaken {
        ip: IpAddr,
        by: ServiceKey,
    },
}

impl fmt::Display for Failure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Failure::NoPoolMatches => f.write_str("no pool matches the Service"),
            Failure::PoolNotFound(pool) => write!(f, "pool {pool} does not exist"),
            Failure::PoolDisabled(pool) => write!(f, "pool {pool} is disabled"),
            Failure::PoolExhausted { family, pools } => {
                write!(f, "pool {} exhausted ({family})", pools.join(", "))
            }
            Failure::FamilyUnavailable(family) => {
                write!(f, "no matching pool offers {family} addresses")
            }
            Failure::RequestedTaken { ip, by } => write!(f, "requested IP {ip} taken by {by}"),
        }
    }
}

impl Failure {
    /// For the condition's `reason` field (UpperCamelCase).
    pub fn reason(&self) -> &'static str {
        match self {
            Failure::NoPoolMatches => "NoPoolMatches",
            Failure::PoolNotFound(_) => "PoolNotFound",
            Failure::PoolDisabled(_) => "PoolDisabled",
            Failure::PoolExhausted { .. } => "PoolExhausted",
            Failure::FamilyUnavailable(_) => "FamilyUnavailable",
            Failure::RequestedTaken { .. } => "RequestedIPTaken",
        }
    }
}

/// The allocator's verdict on one Service.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Verdict {
    /// The addresses the Service has: allocated ones, or its hand-picked ones.
    pub ips: BTreeSet<IpAddr>,
    /// The Service picked its IPs by hand: the allocator only reserved them, and writes nothing.
    pub explicit: bool,
    /// What went wrong, if anything; a PreferDualStack Service that got one family only has no
    /// failure.
    pub failure: Option<Failure>,
}

/// Per-family address counts of one pool.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct FamilyUsage {
    pub total: u128,
    pub used: u128,
}

impl FamilyUsage {
    pub fn available(&self) -> u128 {
        self.total.saturating_sub(self.used)
    }
}

#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct PoolUsage {
    pub families: BTreeMap<Family, FamilyUsage>,
    /// Other pools whose blocks overlap this one's.
    pub overlaps: BTreeSet<String>,
}

#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Allocations {
    pub services: BTreeMap<ServiceKey, Verdict>,
    pub pools: BTreeMap<String, PoolUsage>,
}

/// Who holds an address, for the sharing rule.
#[derive(Clone, Debug)]
struct Holder {
    service: ServiceKey,
    sharing_key: Option<String>,
    ports: BTreeSet<(String, u16)>,
}

impl Holder {
    fn of(service: &ServiceRequest) -> Holder {
        Holder {
            service: service.key.clone(),
            sharing_key: service.sharing_key.clone(),
            ports: service.ports.clone(),
        }
    }
}

/// May `service` use an address that `holders` already have? Only with the same sharing key and
/// no port (and protocol) in common with any of them.
fn may_share(service: &ServiceRequest, holders: &[Holder]) -> Result<(), ServiceKey> {
    for holder in holders {
        if holder.service == service.key {
            continue;
        }
        let same_key = service.sharing_key.is_some() && holder.sharing_key == service.sharing_key;
        if !same_key || !holder.ports.is_disjoint(&service.ports) {
            return Err(holder.service.clone());
        }
    }
    Ok(())
}

/// Computes every Service's addresses from the pools. See the module comment for the rules.
pub fn allocate(pools: &[Pool], services: &[ServiceRequest]) -> Allocations {
    let mut pools: Vec<&Pool> = pools.iter().collect();
    pools.sort_by(|a, b| a.order(b));
    let mut services: Vec<&ServiceRequest> = services.iter().collect();
    services.sort_by(|a, b| a.key.cmp(&b.key));

    let mut taken: BTreeMap<IpAddr, Vec<Holder>> = BTreeMap::new();
    let mut verdicts: BTreeMap<ServiceKey, Verdict> = BTreeMap::new();

    // 1. Earlier allocations stay where some pool still covers them.
    for service in services.iter().filter(|s| s.requested.is_empty()) {
        let wanted = service.wanted_families();
        let mut kept = BTreeSet::new();
        let mut previous = service.previous.clone();
        previous.sort();
        previous.dedup();
        for ip in previous {
            let family = Family::of(&ip);
            let fresh_family = !kept.iter().any(|k| Family::of(k) == family);
            let covered = pools.iter().any(|pool| pool.contains(&ip));
            let holders = taken.get(&ip).map(Vec::as_slice).unwrap_or_default();
            if wanted.contains(&family)
                && fresh_family
                && covered
                && may_share(service, holders).is_ok()
            {
                taken.entry(ip).or_default().push(Holder::of(service));
                kept.insert(ip);
            }
        }
        verdicts.insert(
            service.key.clone(),
            Verdict {
                ips: kept,
                ..Verdict::default()
            },
        );
    }

    // 2. Hand-picked IPs are reserved; a clash is the requester's problem.
    for service in services.iter().filter(|s| !s.requested.is_empty()) {
        let mut verdict = Verdict {
            explicit: true,
            ..Verdict::default()
        };
        let mut requested = service.requested.clone();
        requested.sort();
        requested.dedup();
        for ip in requested {
            let holders = taken.get(&ip).map(Vec::as_slice).unwrap_or_default();
            match may_share(service, holders) {
                Ok(()) => {
                    taken.entry(ip).or_default().push(Holder::of(service));
                    verdict.ips.insert(ip);
                }
                Err(by) => {
                    verdict
                        .failure
                        .get_or_insert(Failure::RequestedTaken { ip, by });
                }
            }
        }
        verdicts.insert(service.key.clone(), verdict);
    }

    // 3. New allocations for what is still missing.
    for service in services.iter().filter(|s| s.requested.is_empty()) {
        let mut verdict = verdicts.remove(&service.key).unwrap_or_default();
        allocate_missing(&pools, service, &mut taken, &mut verdict);
        verdicts.insert(service.key.clone(), verdict);
    }

    Allocations {
        services: verdicts,
        pools: usage(&pools, &taken),
    }
}

fn allocate_missing(
    pools: &[&Pool],
    service: &ServiceRequest,
    taken: &mut BTreeMap<IpAddr, Vec<Holder>>,
    verdict: &mut Verdict,
) {
    let missing: Vec<Family> = service
        .wanted_families()
        .into_iter()
        .filter(|family| !verdict.ips.iter().any(|ip| Family::of(ip) == *family))
        .collect();
    if missing.is_empty() {
        return;
    }
    let candidates: Vec<&Pool> = match &service.pool {
        Some(name) => match pools.iter().find(|pool| &pool.name == name) {
            None => {
                verdict.failure = Some(Failure::PoolNotFound(name.clone()));
                return;
            }
            Some(pool) if pool.disabled => {
                verdict.failure = Some(Failure::PoolDisabled(name.clone()));
                return;
            }
            Some(pool) => vec![*pool],
        },
        None => pools
            .iter()
            .filter(|pool| !pool.disabled && pool.auto_assign && pool.admits(service))
            .copied()
            .collect(),
    };
    if candidates.is_empty() {
        verdict.failure = Some(Failure::NoPoolMatches);
        return;
    }

    let mut got = Vec::new();
    let mut failures = Vec::new();
    for family in &missing {
        match pick(&candidates, service, *family, taken) {
            Ok(ip) => {
                taken.entry(ip).or_default().push(Holder::of(service));
                got.push(ip);
            }
            Err(failure) => failures.push(failure),
        }
    }
    let have_any = !verdict.ips.is_empty() || !got.is_empty();
    let failure = failures.into_iter().next();
    let fail = match service.stack {
        StackPolicy::SingleStack | StackPolicy::RequireDualStack => failure.is_some(),
        StackPolicy::PreferDualStack => !have_any,
    };
    if fail && service.stack == StackPolicy::RequireDualStack {
        // Both or nothing: give back what this round took (earlier allocations stay, rule 1).
        for ip in got.drain(..) {
            release(taken, &ip, &service.key);
        }
    }
    verdict.ips.extend(got);
    if fail {
        verdict.failure = failure;
    }
}

/// One address of `family` for `service`: a sharer's, when the sharing key allows, else the
/// lowest free one of the first candidate pool that has one.
fn pick(
    candidates: &[&Pool],
    service: &ServiceRequest,
    family: Family,
    taken: &BTreeMap<IpAddr, Vec<Holder>>,
) -> Result<IpAddr, Failure> {
    if service.sharing_key.is_some() {
        let shared = taken.iter().find(|(ip, holders)| {
            Family::of(ip) == family
                && holders.iter().any(|h| h.sharing_key == service.sharing_key)
                && candidates.iter().any(|pool| pool.contains(ip))
                && may_share(service, holders).is_ok()
        });
        if let Some((ip, _)) = shared {
            return Ok(*ip);
        }
    }
    let offering: Vec<&Pool> = candidates
        .iter()
        .filter(|pool| pool.has_family(family))
        .copied()
        .collect();
    if offering.is_empty() {
        return Err(Failure::FamilyUnavailable(family));
    }
    offering
        .iter()
        .find_map(|pool| pool.first_free(family, taken))
        .ok_or_else(|| Failure::PoolExhausted {
            family,
            pools: offering.iter().map(|pool| pool.name.clone()).collect(),
        })
}

fn release(taken: &mut BTreeMap<IpAddr, Vec<Holder>>, ip: &IpAddr, service: &ServiceKey) {
    if let Some(holders) = taken.get_mut(ip) {
        holders.retain(|h| &h.service != service);
        if holders.is_empty() {
            taken.remove(ip);
        }
    }
}

fn usage(pools: &[&Pool], taken: &BTreeMap<IpAddr, Vec<Holder>>) -> BTreeMap<String, PoolUsage> {
    let mut all = BTreeMap::new();
    for pool in pools {
        let mut usage = PoolUsage::default();
        for block in &pool.blocks {
            usage.families.entry(block.family()).or_default().total +=
                block.size(pool.avoid_buggy_ips);
        }
        for ip in taken.keys().filter(|ip| pool.contains(ip)) {
            usage.families.entry(Family::of(ip)).or_default().used += 1;
        }
        for other in pools.iter().filter(|other| other.name != pool.name) {
            let overlap = pool
                .blocks
                .iter()
                .any(|a| other.blocks.iter().any(|b| a.overlaps(b)));
            if overlap {
                usage.overlaps.insert(other.name.clone());
            }
        }
        all.insert(pool.name.clone(), usage);
    }
    all
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    fn ips(list: &[&str]) -> BTreeSet<IpAddr> {
        list.iter().map(|s| ip(s)).collect()
    }

    fn pool(name: &str, blocks: &[&str]) -> Pool {
        Pool {
            name: name.into(),
            blocks: blocks.iter().map(|b| b.parse().unwrap()).collect(),
            auto_assign: true,
            ..Pool::default()
        }
    }

    fn svc(name: &str) -> ServiceRequest {
        ServiceRequest {
            key: ServiceKey::new("default", name),
            ports: BTreeSet::from([("TCP".to_owned(), 80)]),
            ..ServiceRequest::default()
        }
    }

    fn got(result: &Allocations, name: &str) -> BTreeSet<IpAddr> {
        result.services[&ServiceKey::new("default", name)]
            .ips
            .clone()
    }

    fn failure(result: &Allocations, name: &str) -> Option<Failure> {
        result.services[&ServiceKey::new("default", name)]
            .failure
            .clone()
    }

    /// Feeds the result back as each Service's memory, as the annotation does.
    fn remember(services: &mut [ServiceRequest], result: &Allocations) {
        for service in services {
            if let Some(verdict) = result.services.get(&service.key)
                && !verdict.explicit
            {
                service.previous = verdict.ips.iter().copied().collect();
            }
        }
    }

    #[test]
    fn blocks_parse_cidrs_and_ranges_of_both_families() {
        let block: Block = "10.0.100.32/28".parse().unwrap();
        assert_eq!(block.to_string(), "10.0.100.32-10.0.100.47");
        assert_eq!(block.size(false), 16);
        let range: Block = " 10.0.100.60 - 10.0.100.63 ".parse().unwrap();
        assert_eq!(range.size(false), 4);
        let v6: Block = "2001:db8:100::/120".parse().unwrap();
        assert_eq!(v6.family(), Family::V6);
        assert_eq!(v6.size(true), 256, "avoidBuggyIPs is IPv4 only");
        let single: Block = "10.0.0.5/32".parse().unwrap();
        assert_eq!(single.size(false), 1);
        assert_eq!(
            "10.0.0.1-2001:db8::1".parse::<Block>(),
            Err(BlockError::MixedFamilies("10.0.0.1-2001:db8::1".into()))
        );
        assert!(matches!(
            "10.0.0.9-10.0.0.1".parse::<Block>(),
            Err(BlockError::Reversed(_))
        ));
        assert!(matches!(
            "10.0.0/24".parse::<Block>(),
            Err(BlockError::Malformed(_))
        ));
        // A whole /0 still counts without overflow.
        assert_eq!("::/0".parse::<Block>().unwrap().size(false), u128::MAX);
    }

    #[test]
    fn buggy_ips_are_skipped_and_not_counted() {
        let block: Block = "10.0.0.0/23".parse().unwrap();
        assert_eq!(block.size(true), 512 - 4);
        let range: Block = "10.0.0.255-10.0.1.0".parse().unwrap();
        assert_eq!(range.size(true), 0);
        assert_eq!("0.0.0.0-0.0.0.10".parse::<Block>().unwrap().size(true), 10);

        let mut avoid = pool("p", &["10.0.0.255-10.0.1.2"]);
        avoid.avoid_buggy_ips = true;
        let result = allocate(&[avoid], &[svc("a")]);
        assert_eq!(got(&result, "a"), ips(&["10.0.1.1"]));
        assert_eq!(result.pools["p"].families[&Family::V4].total, 2);
    }

    #[test]
    fn lowest_free_address_of_the_first_pool_by_priority_then_name() {
        let mut low = pool("z-low", &["10.0.2.0/30"]);
        low.priority = -1;
        let pools = [
            pool("b", &["10.0.1.0/30"]),
            pool("a", &["10.0.0.0/30"]),
            low,
        ];
        let result = allocate(&pools, &[svc("one"), svc("two")]);
        assert_eq!(got(&result, "one"), ips(&["10.0.2.0"]));
        assert_eq!(got(&result, "two"), ips(&["10.0.2.1"]));

        // Once the preferred pool is full the next one by name takes over.
        let services: Vec<ServiceRequest> = (0..6).map(|i| svc(&format!("s{i}"))).collect();
        let result = allocate(&pools, &services);
        assert_eq!(got(&result, "s4"), ips(&["10.0.0.0"]), "a before b");
        assert_eq!(got(&result, "s5"), ips(&["10.0.0.1"]));
    }

    #[test]
    fn selectors_namespaces_and_pseudo_labels_pick_the_pool() {
        let mut team = pool("team", &["10.0.1.0/24"]);
        team.selector = Some(
            Selector::try_from(
                k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector {
                    match_labels: Some(BTreeMap::from([("team".into(), "blue".into())])),
                    ..Default::default()
                },
            )
            .unwrap(),
        );
        team.priority = 0;
        let mut by_name = pool("by-name", &["10.0.2.0/24"]);
        by_name.selector = Some(
            Selector::try_from(
                k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector {
                    match_labels: Some(BTreeMap::from([
                        (NAMESPACE_PSEUDO_LABEL.into(), "default".into()),
                        (NAME_PSEUDO_LABEL.into(), "special".into()),
                    ])),
                    ..Default::default()
                },
            )
            .unwrap(),
        );
        by_name.priority = 1;
        let mut prod_only = pool("prod", &["10.0.3.0/24"]);
        prod_only.namespaces = vec!["prod".into()];
        prod_only.priority = 2;
        let fallback = {
            let mut p = pool("fallback", &["10.0.9.0/24"]);
            p.priority = 10;
            p
        };

        let mut blue = svc("blue");
        blue.labels.insert("team".into(), "blue".into());
        let mut in_prod = svc("x");
        in_prod.key.namespace = "prod".into();
        let result = allocate(
            &[team, by_name, prod_only, fallback],
            &[blue, svc("special"), in_prod.clone(), svc("plain")],
        );
        assert_eq!(got(&result, "blue"), ips(&["10.0.1.0"]));
        assert_eq!(got(&result, "special"), ips(&["10.0.2.0"]));
        assert_eq!(result.services[&in_prod.key].ips, ips(&["10.0.3.0"]));
        assert_eq!(got(&result, "plain"), ips(&["10.0.9.0"]));
    }

    #[test]
    fn auto_assign_false_and_explicit_pool_requests() {
        let mut manual = pool("manual", &["10.0.1.0/24"]);
        manual.auto_assign = false;
        manual.priority = -5;
        let pools = [manual, pool("auto", &["10.0.2.0/24"])];
        let mut asks = svc("asks");
        asks.pool = Some("manual".into());
        let mut missing = svc("missing");
        missing.pool = Some("nope".into());
        let result = allocate(&pools, &[svc("plain"), asks, missing]);
        assert_eq!(
            got(&result, "plain"),
            ips(&["10.0.2.0"]),
            "manual pools never auto-assign"
        );
        assert_eq!(got(&result, "asks"), ips(&["10.0.1.0"]));
        assert_eq!(
            failure(&result, "missing"),
            Some(Failure::PoolNotFound("nope".into()))
        );
        assert!(got(&result, "missing").is_empty());

        let only_manual = [pools[0].clone()];
        let result = allocate(&only_manual, &[svc("plain")]);
        assert_eq!(failure(&result, "plain"), Some(Failure::NoPoolMatches));
    }

    #[test]
    fn exhaustion_names_the_pools_and_shows_in_usage() {
        let pools = [pool("small", &["10.0.0.1-10.0.0.2"])];
        let result = allocate(&pools, &[svc("a"), svc("b"), svc("c")]);
        assert_eq!(got(&result, "a"), ips(&["10.0.0.1"]));
        assert_eq!(got(&result, "b"), ips(&["10.0.0.2"]));
        assert_eq!(
            failure(&result, "c"),
            Some(Failure::PoolExhausted {
                family: Family::V4,
                pools: vec!["small".into()]
            })
        );
        assert_eq!(
            failure(&result, "c").unwrap().to_string(),
            "pool small exhausted (IPv4)"
        );
        let usage = result.pools["small"].families[&Family::V4];
        assert_eq!((usage.total, usage.used, usage.available()), (2, 2, 0));
    }

    #[test]
    fn disabled_pools_keep_existing_allocations_but_give_no_new_ones() {
        let mut pools = [pool("p", &["10.0.0.0/30"])];
        let mut services = vec![svc("a")];
        let first = allocate(&pools, &services);
        remember(&mut services, &first);
        pools[0].disabled = true;
        services.push(svc("b"));
        let result = allocate(&pools, &services);
        assert_eq!(got(&result, "a"), ips(&["10.0.0.0"]));
        assert_eq!(failure(&result, "b"), Some(Failure::NoPoolMatches));
        let mut named = svc("c");
        named.pool = Some("p".into());
        services.push(named);
        let result = allocate(&pools, &services);
        assert_eq!(
            failure(&result, "c"),
            Some(Failure::PoolDisabled("p".into()))
        );
    }

    #[test]
    fn same_inputs_in_another_order_give_the_same_result() {
        let mut v6 = pool("v6", &["2001:db8::/126"]);
        v6.priority = 1;
        let pools = vec![pool("a", &["10.0.0.0/29"]), v6, pool("b", &["10.0.1.0/30"])];
        let mut services: Vec<ServiceRequest> = (0..10).map(|i| svc(&format!("s{i}"))).collect();
        services[3].stack = StackPolicy::PreferDualStack;
        services[5].sharing_key = Some("k".into());
        services[6].sharing_key = Some("k".into());
        services[6].ports = BTreeSet::from([("UDP".to_owned(), 53)]);
        services[7].requested = vec![ip("10.0.0.2")];
        let expected = allocate(&pools, &services);
        let mut reversed_pools = pools.clone();
        reversed_pools.reverse();
        let mut reversed_services = services.clone();
        reversed_services.reverse();
        assert_eq!(allocate(&reversed_pools, &reversed_services), expected);
        reversed_services.rotate_left(4);
        assert_eq!(allocate(&pools, &reversed_services), expected);
    }

    #[test]
    fn adding_a_pool_or_a_service_never_moves_an_existing_allocation() {
        let mut pools = vec![pool("b", &["10.0.1.0/28"])];
        let mut services: Vec<ServiceRequest> = ["m", "t", "z"].iter().map(|n| svc(n)).collect();
        let first = allocate(&pools, &services);
        remember(&mut services, &first);

        // A preferred pool appears and a Service sorting before all others arrives.
        let mut better = pool("a", &["10.0.0.0/28"]);
        better.priority = -10;
        pools.push(better);
        services.push(svc("a-first"));
        let second = allocate(&pools, &services);
        for name in ["m", "t", "z"] {
            assert_eq!(
                got(&second, name),
                got(&first, name),
                "{name} kept its address"
            );
        }
        assert_eq!(got(&second, "a-first"), ips(&["10.0.0.0"]));

        // Editing the pool (shrinking it, lowering its priority) keeps what it still covers.
        remember(&mut services, &second);
        pools[0].blocks = vec!["10.0.1.0/30".parse().unwrap()];
        pools[0].priority = 50;
        let third = allocate(&pools, &services);
        assert_eq!(third.services, second.services);
    }

    #[test]
    fn an_allocation_outside_every_pool_is_released_and_replaced() {
        let mut services = vec![svc("a")];
        services[0].previous = vec![ip("192.0.2.7")];
        let result = allocate(&[pool("p", &["10.0.0.0/30"])], &services);
        assert_eq!(got(&result, "a"), ips(&["10.0.0.0"]));
    }

    #[test]
    fn a_deleted_service_frees_its_address_for_the_next() {
        let pools = [pool("p", &["10.0.0.0/31"])];
        let mut services = vec![svc("a"), svc("b")];
        let first = allocate(&pools, &services);
        remember(&mut services, &first);
        services.remove(0);
        services.push(svc("c"));
        let result = allocate(&pools, &services);
        assert_eq!(got(&result, "b"), ips(&["10.0.0.1"]));
        assert_eq!(
            got(&result, "c"),
            ips(&["10.0.0.0"]),
            "a's address went to c"
        );
    }

    #[test]
    fn sharing_key_shares_one_ip_when_ports_do_not_overlap() {
        let pools = [pool("p", &["10.0.0.0/29"])];
        let mut dns_tcp = svc("dns-tcp");
        dns_tcp.sharing_key = Some("dns".into());
        dns_tcp.ports = BTreeSet::from([("TCP".to_owned(), 53)]);
        let mut dns_udp = svc("dns-udp");
        dns_udp.sharing_key = Some("dns".into());
        dns_udp.ports = BTreeSet::from([("UDP".to_owned(), 53)]);
        let mut clash = svc("dns-zz");
        clash.sharing_key = Some("dns".into());
        clash.ports = BTreeSet::from([("UDP".to_owned(), 53)]);
        let mut other_key = svc("other");
        other_key.sharing_key = Some("web".into());
        other_key.ports = BTreeSet::from([("TCP".to_owned(), 443)]);
        let result = allocate(&pools, &[dns_tcp, dns_udp, clash, other_key, svc("plain")]);
        assert_eq!(got(&result, "dns-tcp"), ips(&["10.0.0.0"]));
        assert_eq!(
            got(&result, "dns-udp"),
            ips(&["10.0.0.0"]),
            "same key, other protocol"
        );
        assert_eq!(
            got(&result, "dns-zz"),
            ips(&["10.0.0.1"]),
            "overlapping port: own IP"
        );
        assert_eq!(
            got(&result, "other"),
            ips(&["10.0.0.2"]),
            "another key: own IP"
        );
        assert_eq!(got(&result, "plain"), ips(&["10.0.0.3"]));
        assert_eq!(
            result.pools["p"].families[&Family::V4].used,
            4,
            "a shared IP counts once"
        );
    }

    #[test]
    fn a_requested_ip_held_by_another_service_is_a_conflict_not_a_steal() {
        let pools = [pool("p", &["10.0.0.0/30"])];
        let mut services = vec![svc("holder")];
        let first = allocate(&pools, &services);
        remember(&mut services, &first);
        let mut wants = svc("a-wants");
        wants.requested = vec![ip("10.0.0.0"), ip("10.0.0.3")];
        services.push(wants);
        let result = allocate(&pools, &services);
        assert_eq!(got(&result, "holder"), ips(&["10.0.0.0"]));
        assert_eq!(
            failure(&result, "a-wants"),
            Some(Failure::RequestedTaken {
                ip: ip("10.0.0.0"),
                by: ServiceKey::new("default", "holder")
            })
        );
        assert_eq!(
            got(&result, "a-wants"),
            ips(&["10.0.0.3"]),
            "the free one is reserved"
        );
        assert!(result.services[&ServiceKey::new("default", "a-wants")].explicit);

        // A reserved hand-picked IP is skipped by new allocations.
        services.push(svc("new"));
        let result = allocate(&pools, &services);
        assert_eq!(got(&result, "new"), ips(&["10.0.0.1"]));

        // Two hand-picked requests of one IP: the later Service (by name) carries the conflict.
        let mut one = svc("one");
        one.requested = vec![ip("10.0.0.2")];
        let mut two = svc("two");
        two.requested = vec![ip("10.0.0.2")];
        let result = allocate(&pools, &[two, one]);
        assert_eq!(failure(&result, "one"), None);
        assert!(matches!(
            failure(&result, "two"),
            Some(Failure::RequestedTaken { .. })
        ));
    }

    #[test]
    fn dual_stack_policies() {
        let v4 = pool("v4", &["10.0.0.0/30"]);
        let mut dual = pool("dual", &["10.0.1.0/30", "2001:db8::/126"]);
        dual.selector = Some(
            Selector::try_from(
                k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector {
                    match_labels: Some(BTreeMap::from([("stack".into(), "dual".into())])),
                    ..Default::default()
                },
            )
            .unwrap(),
        );
        let pools = [v4.clone(), dual];

        let mut single_v6 = svc("single-v6");
        single_v6.families = vec![Family::V6];
        single_v6.labels.insert("stack".into(), "dual".into());
        let mut prefer = svc("prefer");
        prefer.stack = StackPolicy::PreferDualStack;
        prefer.labels.insert("stack".into(), "dual".into());
        let mut prefer_v6_first = svc("prefer6");
        prefer_v6_first.stack = StackPolicy::PreferDualStack;
        prefer_v6_first.families = vec![Family::V6, Family::V4];
        let mut require = svc("require");
        require.stack = StackPolicy::RequireDualStack;
        let result = allocate(
            &pools,
            &[svc("single"), single_v6, prefer, prefer_v6_first, require],
        );
        // Services go by name: prefer6 takes 10.0.0.0, require takes and gives back 10.0.0.1.
        assert_eq!(got(&result, "single"), ips(&["10.0.0.1"]));
        assert_eq!(got(&result, "single-v6"), ips(&["2001:db8::1"]));
        assert_eq!(got(&result, "prefer"), ips(&["10.0.1.0", "2001:db8::"]));
        // Only the IPv4 pool matches: one family, and that is fine for PreferDualStack.
        assert_eq!(got(&result, "prefer6"), ips(&["10.0.0.0"]));
        assert_eq!(failure(&result, "prefer6"), None);
        // RequireDualStack: both or nothing, with the reason.
        assert!(got(&result, "require").is_empty());
        assert_eq!(
            failure(&result, "require"),
            Some(Failure::FamilyUnavailable(Family::V6))
        );
        assert_eq!(
            result.pools["v4"].families[&Family::V4].used,
            2,
            "require gave its IPv4 back"
        );
    }

    #[test]
    fn a_service_turning_single_stack_keeps_its_primary_family_only() {
        let pools = [pool("dual", &["10.0.1.0/30", "2001:db8::/126"])];
        let mut services = vec![svc("s")];
        services[0].stack = StackPolicy::RequireDualStack;
        let first = allocate(&pools, &services);
        assert_eq!(got(&first, "s"), ips(&["10.0.1.0", "2001:db8::"]));
        remember(&mut services, &first);
        services[0].stack = StackPolicy::SingleStack;
        assert_eq!(got(&allocate(&pools, &services), "s"), ips(&["10.0.1.0"]));
        services[0].stack = StackPolicy::PreferDualStack;
        assert_eq!(
            got(&allocate(&pools, &services), "s"),
            ips(&["10.0.1.0", "2001:db8::"]),
            "the remembered IPv6 address comes back unchanged"
        );
    }

    #[test]
    fn overlapping_pools_are_reported_and_never_double_allocate() {
        let pools = [
            pool("a", &["10.0.0.0/30"]),
            pool("b", &["10.0.0.2-10.0.0.5"]),
            pool("c", &["2001:db8::/64"]),
        ];
        let services: Vec<ServiceRequest> = (0..6).map(|i| svc(&format!("s{i}"))).collect();
        let result = allocate(&pools, &services);
        assert_eq!(result.pools["a"].overlaps, BTreeSet::from(["b".to_owned()]));
        assert_eq!(result.pools["b"].overlaps, BTreeSet::from(["a".to_owned()]));
        assert!(result.pools["c"].overlaps.is_empty());
        let all: Vec<IpAddr> = result
            .services
            .values()
            .flat_map(|v| v.ips.iter().copied())
            .collect();
        let unique: BTreeSet<IpAddr> = all.iter().copied().collect();
        assert_eq!(all.len(), unique.len());
        assert_eq!(
            unique,
            ips(&[
                "10.0.0.0", "10.0.0.1", "10.0.0.2", "10.0.0.3", "10.0.0.4", "10.0.0.5"
            ])
        );
    }

    #[test]
    fn duplicate_memories_resolve_by_name_without_a_steal() {
        // Two Services remember the same address (say, a copied annotation): the first by name
        // keeps it, the other gets a new one.
        let pools = [pool("p", &["10.0.0.0/30"])];
        let mut a = svc("a");
        a.previous = vec![ip("10.0.0.2")];
        let mut b = svc("b");
        b.previous = vec![ip("10.0.0.2")];
        let result = allocate(&pools, &[b, a]);
        assert_eq!(got(&result, "a"), ips(&["10.0.0.2"]));
        assert_eq!(got(&result, "b"), ips(&["10.0.0.0"]));
    }
}
