//! The rules kube-proxy would program for the benchmark's Services, in its two modes, written
//! the way kube-proxy writes them (chain layout, matches, comments, order), to be loaded with
//! `iptables-restore` and `nft -f`:
//!
//! - iptables mode: `KUBE-SERVICES` in the nat table with one rule per cluster IP and per
//!   load-balancer IP (a linear list, first match wins), `KUBE-SVC-*` (cluster policy),
//!   `KUBE-SVL-*` (local policy), `KUBE-EXT-*` (external traffic), `KUBE-SEP-*` (one per
//!   endpoint: `-m statistic --mode random --probability` picks, DNAT), `KUBE-MARK-MASQ` and
//!   `KUBE-POSTROUTING`, plus the filter-table chains (`KUBE-FORWARD` and the conntrack-gated
//!   jumps).
//! - nftables mode: `table ip kube-proxy` with the `service-ips` verdict map
//!   (address . protocol . port → chain), per-service chains picking an endpoint chain with
//!   `numgen random mod N vmap`, endpoint chains doing `dnat`, and the masquerade and check
//!   chains.
//!
//! Services are `type: LoadBalancer` with `externalTrafficPolicy: Local` (l3lb's semantics: the
//! client address is kept and only local endpoints serve) and
//! `allocateLoadBalancerNodePorts: false` (no NodePorts, as is usual on bare metal with many
//! LoadBalancer Services). Chain names use a hash of the service port like kube-proxy's (not
//! the same hash function; names only need to be unique).
use std::{fmt::Write as _, net::Ipv4Addr};

/// The pod network (kube-proxy's `--cluster-cidr`, the local-traffic detector).
pub const CLUSTER_CIDR: &str = "10.244.0.0/16";
/// The Service cluster IP range.
pub const SERVICE_CIDR: &str = "10.96.0.0/12";
/// Where every Service's endpoints run: the node's two pods.
pub const PODS: [Ipv4Addr; 2] = [Ipv4Addr::new(10, 244, 1, 2), Ipv4Addr::new(10, 244, 1, 3)];
pub const TARGET_PORT: u16 = 8080;
pub const SERVICE_PORT: u16 = 80;

/// One benchmark Service: a load-balancer IP (10.100.0.0/16), a cluster IP (10.96.0.0/12)
/// and its ports.
#[derive(Clone, Debug)]
pub struct BenchService {
    pub name: String,
    pub lb_ip: Ipv4Addr,
    pub cluster_ip: Ipv4Addr,
    /// `"tcp"` / `"udp"`, all on [`SERVICE_PORT`] → [`TARGET_PORT`].
    pub protocols: Vec<&'static str>,
}

/// `n` Services; the measured one (TCP and UDP) sits in the middle of the list, the others
/// have one port each, alternately UDP and TCP.
pub fn services(n: u32) -> (Vec<BenchService>, usize) {
    let measured = (n / 2) as usize;
    let services = (0..n)
        .map(|i| BenchService {
            name: format!("svc-{i:05}"),
            lb_ip: lb_ip(i),
            cluster_ip: Ipv4Addr::from(u32::from(Ipv4Addr::new(10, 96, 0, 10)) + i),
            protocols: if i as usize == measured {
                vec!["tcp", "udp"]
            } else if i.is_multiple_of(2) {
                vec!["udp"]
            } else {
                vec!["tcp"]
            },
        })
        .collect();
    (services, measured)
}

pub fn lb_ip(i: u32) -> Ipv4Addr {
    Ipv4Addr::from(u32::from(Ipv4Addr::new(10, 100, 0, 1)) + i)
}

/// 16 characters of base32 over a 64-bit FNV-1a hash, as kube-proxy's chain-name suffixes
/// (which are base32 of a SHA-256).
fn hash16(text: &str) -> String {
    const ALPHABET: &[u8; 32] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZ234567";
    let fnv = |seed: u64| {
        text.bytes().fold(seed, |hash, byte| {
            (hash ^ u64::from(byte)).wrapping_mul(0x0000_0100_0000_01b3)
        })
    };
    let (a, b) = (fnv(0xcbf2_9ce4_8422_2325), fnv(0x8422_2325_cbf2_9ce4));
    (0..16)
        .map(|i| {
            let word = if i < 12 {
                a >> (i * 5)
            } else {
                b >> ((i - 12) * 5)
            };
            ALPHABET[(word & 31) as usize] as char
        })
        .collect()
}

/// `iptables-restore` input for `services`, as kube-proxy's iptables proxier writes it.
pub fn iptables_restore(services: &[BenchService]) -> String {
    let mut chains = String::new();
    let mut rules = String::new();
    let mut services_rules = String::new();
    for svc in services {
        for proto in &svc.protocols {
            let port_name = format!("default/{}:{proto}", svc.name);
            let base = hash16(&format!("{port_name}{proto}"));
            let (svc_chain, svl_chain, ext_chain) = (
                format!("KUBE-SVC-{base}"),
                format!("KUBE-SVL-{base}"),
                format!("KUBE-EXT-{base}"),
            );
            let seps: Vec<String> = PODS
                .iter()
                .map(|pod| {
                    format!(
                        "KUBE-SEP-{}",
                        hash16(&format!("{port_name}{proto}{pod}:{TARGET_PORT}"))
                    )
                })
                .collect();
            for chain in [&svc_chain, &svl_chain, &ext_chain]
                .into_iter()
                .chain(&seps)
            {
                let _ = writeln!(chains, ":{chain} - [0:0]");
            }
            let (cip, lbip, port) = (svc.cluster_ip, svc.lb_ip, SERVICE_PORT);
            let _ = writeln!(
                services_rules,
                "-A KUBE-SERVICES -m comment --comment \"{port_name} cluster IP\" -m {proto} -p {proto} -d {cip}/32 --dport {port} -j {svc_chain}"
            );
            let _ = writeln!(
                services_rules,
                "-A KUBE-SERVICES -m comment --comment \"{port_name} loadbalancer IP\" -m {proto} -p {proto} -d {lbip}/32 --dport {port} -j {ext_chain}"
            );
            let _ = writeln!(
                rules,
                "-A {svc_chain} -m comment --comment \"{port_name} cluster IP\" -m {proto} -p {proto} -d {cip}/32 --dport {port} ! -s {CLUSTER_CIDR} -j KUBE-MARK-MASQ"
            );
            for chain in [&svc_chain, &svl_chain] {
                let n = seps.len();
                for (i, (sep, pod)) in seps.iter().zip(PODS).enumerate() {
                    let statistic = if i + 1 < n {
                        format!(
                            " -m statistic --mode random --probability {:.11}",
                            1.0 / (n - i) as f64
                        )
                    } else {
                        String::new()
                    };
                    let _ = writeln!(
                        rules,
                        "-A {chain} -m comment --comment \"{port_name} -> {pod}:{TARGET_PORT}\"{statistic} -j {sep}"
                    );
                }
            }
            let _ = writeln!(
                rules,
                "-A {ext_chain} -m comment --comment \"pod traffic for {port_name} external destinations\" -s {CLUSTER_CIDR} -j {svc_chain}"
            );
            let _ = writeln!(
                rules,
                "-A {ext_chain} -m comment --comment \"masquerade LOCAL traffic for {port_name} external destinations\" -m addrtype --src-type LOCAL -j KUBE-MARK-MASQ"
            );
            let _ = writeln!(
                rules,
                "-A {ext_chain} -m comment --comment \"route LOCAL traffic for {port_name} external destinations\" -m addrtype --src-type LOCAL -j {svc_chain}"
            );
            let _ = writeln!(rules, "-A {ext_chain} -j {svl_chain}");
            for (sep, pod) in seps.iter().zip(PODS) {
                let _ = writeln!(
                    rules,
                    "-A {sep} -m comment --comment \"{port_name}\" -s {pod}/32 -j KUBE-MARK-MASQ"
                );
                let _ = writeln!(
                    rules,
                    "-A {sep} -m comment --comment \"{port_name}\" -m {proto} -p {proto} -j DNAT --to-destination {pod}:{TARGET_PORT}"
                );
            }
        }
    }

    let mut out = String::new();
    out.push_str(
        "*filter\n\
         :KUBE-NODEPORTS - [0:0]\n\
         :KUBE-SERVICES - [0:0]\n\
         :KUBE-EXTERNAL-SERVICES - [0:0]\n\
         :KUBE-FORWARD - [0:0]\n\
         :KUBE-PROXY-FIREWALL - [0:0]\n\
         -A INPUT -m conntrack --ctstate NEW -m comment --comment \"kubernetes load balancer firewall\" -j KUBE-PROXY-FIREWALL\n\
         -A INPUT -m comment --comment \"kubernetes health check service ports\" -j KUBE-NODEPORTS\n\
         -A INPUT -m conntrack --ctstate NEW -m comment --comment \"kubernetes externally-visible service portals\" -j KUBE-EXTERNAL-SERVICES\n\
         -A FORWARD -m conntrack --ctstate NEW -m comment --comment \"kubernetes load balancer firewall\" -j KUBE-PROXY-FIREWALL\n\
         -A FORWARD -m comment --comment \"kubernetes forwarding rules\" -j KUBE-FORWARD\n\
         -A FORWARD -m conntrack --ctstate NEW -m comment --comment \"kubernetes service portals\" -j KUBE-SERVICES\n\
         -A FORWARD -m conntrack --ctstate NEW -m comment --comment \"kubernetes externally-visible service portals\" -j KUBE-EXTERNAL-SERVICES\n\
         -A OUTPUT -m conntrack --ctstate NEW -m comment --comment \"kubernetes load balancer firewall\" -j KUBE-PROXY-FIREWALL\n\
         -A OUTPUT -m conntrack --ctstate NEW -m comment --comment \"kubernetes service portals\" -j KUBE-SERVICES\n\
         -A KUBE-FORWARD -m conntrack --ctstate INVALID -j DROP\n\
         -A KUBE-FORWARD -m comment --comment \"kubernetes forwarding rules\" -m mark --mark 0x4000/0x4000 -j ACCEPT\n\
         -A KUBE-FORWARD -m comment --comment \"kubernetes forwarding conntrack rule\" -m conntrack --ctstate RELATED,ESTABLISHED -j ACCEPT\n\
         COMMIT\n\
         *nat\n\
         :KUBE-SERVICES - [0:0]\n\
         :KUBE-NODEPORTS - [0:0]\n\
         :KUBE-POSTROUTING - [0:0]\n\
         :KUBE-MARK-MASQ - [0:0]\n",
    );
    out.push_str(&chains);
    out.push_str(
        "-A PREROUTING -m comment --comment \"kubernetes service portals\" -j KUBE-SERVICES\n\
         -A OUTPUT -m comment --comment \"kubernetes service portals\" -j KUBE-SERVICES\n\
         -A POSTROUTING -m comment --comment \"kubernetes postrouting rules\" -j KUBE-POSTROUTING\n\
         -A KUBE-POSTROUTING -m mark ! --mark 0x4000/0x4000 -j RETURN\n\
         -A KUBE-POSTROUTING -j MARK --xor-mark 0x4000\n\
         -A KUBE-POSTROUTING -m comment --comment \"kubernetes service traffic requiring SNAT\" -j MASQUERADE --random-fully\n\
         -A KUBE-MARK-MASQ -j MARK --or-mark 0x4000\n",
    );
    out.push_str(&services_rules);
    out.push_str(
        "-A KUBE-SERVICES -m comment --comment \"kubernetes service nodeports; NOTE: this must be the last rule in this chain\" -m addrtype --dst-type LOCAL -j KUBE-NODEPORTS\n",
    );
    out.push_str(&rules);
    out.push_str("COMMIT\n");
    out
}

/// `nft -f` input for `services`, as kube-proxy's nftables proxier writes it (flat `add`
/// commands, as knftables sends them).
pub fn nft_script(services: &[BenchService]) -> String {
    let mut out = String::from(
        "add table ip kube-proxy { comment \"rules for kube-proxy\" ; }\n\
         add chain ip kube-proxy filter-prerouting { type filter hook prerouting priority -110 ; }\n\
         add chain ip kube-proxy filter-input { type filter hook input priority -110 ; }\n\
         add chain ip kube-proxy filter-forward { type filter hook forward priority -110 ; }\n\
         add chain ip kube-proxy filter-output { type filter hook output priority -110 ; }\n\
         add chain ip kube-proxy filter-output-post-dnat { type filter hook output priority -90 ; }\n\
         add chain ip kube-proxy nat-prerouting { type nat hook prerouting priority -100 ; }\n\
         add chain ip kube-proxy nat-output { type nat hook output priority -100 ; }\n\
         add chain ip kube-proxy nat-postrouting { type nat hook postrouting priority 100 ; }\n\
         add chain ip kube-proxy nodeport-endpoints-check\n\
         add chain ip kube-proxy service-endpoints-check\n\
         add chain ip kube-proxy firewall-check\n\
         add chain ip kube-proxy services\n\
         add chain ip kube-proxy masquerading\n\
         add chain ip kube-proxy cluster-ips-check\n\
         add chain ip kube-proxy mark-for-masquerade\n\
         add set ip kube-proxy cluster-ips { type ipv4_addr ; comment \"Active ClusterIPs\" ; }\n\
         add set ip kube-proxy nodeport-ips { type ipv4_addr ; comment \"IPs that accept NodePort traffic\" ; }\n\
         add map ip kube-proxy no-endpoint-services { type ipv4_addr . inet_proto . inet_service : verdict ; comment \"vmap to drop or reject packets to services with no endpoints\" ; }\n\
         add map ip kube-proxy no-endpoint-nodeports { type inet_proto . inet_service : verdict ; comment \"vmap to drop or reject packets to service nodeports with no endpoints\" ; }\n\
         add map ip kube-proxy firewall-ips { type ipv4_addr . inet_proto . inet_service : verdict ; comment \"destinations that are subject to LoadBalancerSourceRanges\" ; }\n\
         add map ip kube-proxy service-ips { type ipv4_addr . inet_proto . inet_service : verdict ; comment \"ClusterIP, ExternalIP and LoadBalancer IP traffic\" ; }\n\
         add map ip kube-proxy service-nodeports { type inet_proto . inet_service : verdict ; comment \"NodePort traffic\" ; }\n",
    );
    let mut chains = String::new();
    let mut rules = String::new();
    let mut elements = String::new();
    for svc in services {
        for proto in &svc.protocols {
            let base = format!(
                "{}-default/{}/{proto}/p{SERVICE_PORT}",
                &hash16(&format!("default/{}:{proto}{proto}", svc.name))[..8],
                svc.name
            );
            let (service, local, external) = (
                format!("service-{base}"),
                format!("local-{base}"),
                format!("external-{base}"),
            );
            let endpoints: Vec<String> = PODS
                .iter()
                .map(|pod| {
                    let endpoint = format!("{pod}:{TARGET_PORT}");
                    format!(
                        "endpoint-{}-default/{}/{proto}/p{SERVICE_PORT}__{pod}/{TARGET_PORT}",
                        &hash16(&format!("default/{}:{proto}{proto}{endpoint}", svc.name))[..8],
                        svc.name
                    )
                })
                .collect();
            for chain in [&service, &local, &external].into_iter().chain(&endpoints) {
                let _ = writeln!(chains, "add chain ip kube-proxy {chain}");
            }
            let vmap: Vec<String> = endpoints
                .iter()
                .enumerate()
                .map(|(i, chain)| format!("{i} : goto {chain}"))
                .collect();
            let vmap = format!(
                "numgen random mod {} vmap {{ {} }}",
                endpoints.len(),
                vmap.join(" , ")
            );
            let (cip, lbip, port) = (svc.cluster_ip, svc.lb_ip, SERVICE_PORT);
            let _ = writeln!(
                rules,
                "add rule ip kube-proxy {service} ip daddr {cip} {proto} dport {port} ip saddr != {CLUSTER_CIDR} jump mark-for-masquerade"
            );
            let _ = writeln!(rules, "add rule ip kube-proxy {service} {vmap}");
            let _ = writeln!(rules, "add rule ip kube-proxy {local} {vmap}");
            let _ = writeln!(
                rules,
                "add rule ip kube-proxy {external} ip saddr {CLUSTER_CIDR} goto {service} comment \"short-circuit pod traffic\""
            );
            let _ = writeln!(
                rules,
                "add rule ip kube-proxy {external} fib saddr type local jump mark-for-masquerade comment \"masquerade local traffic\""
            );
            let _ = writeln!(
                rules,
                "add rule ip kube-proxy {external} fib saddr type local goto {service} comment \"short-circuit local traffic\""
            );
            let _ = writeln!(rules, "add rule ip kube-proxy {external} goto {local}");
            for (chain, pod) in endpoints.iter().zip(PODS) {
                let _ = writeln!(
                    rules,
                    "add rule ip kube-proxy {chain} ip saddr {pod} jump mark-for-masquerade"
                );
                let _ = writeln!(
                    rules,
                    "add rule ip kube-proxy {chain} meta l4proto {proto} dnat to {pod}:{TARGET_PORT}"
                );
            }
            let _ = writeln!(
                elements,
                "add element ip kube-proxy service-ips {{ {cip} . {proto} . {port} : goto {service} }}"
            );
            let _ = writeln!(
                elements,
                "add element ip kube-proxy service-ips {{ {lbip} . {proto} . {port} : goto {external} }}"
            );
        }
        let _ = writeln!(
            elements,
            "add element ip kube-proxy cluster-ips {{ {} }}",
            svc.cluster_ip
        );
    }
    out.push_str(&chains);
    out.push_str(&format!(
        "add rule ip kube-proxy filter-prerouting ct state new jump firewall-check\n\
         add rule ip kube-proxy filter-input ct state new jump nodeport-endpoints-check\n\
         add rule ip kube-proxy filter-input ct state new jump service-endpoints-check\n\
         add rule ip kube-proxy filter-forward ct state new jump service-endpoints-check\n\
         add rule ip kube-proxy filter-forward ct state new jump cluster-ips-check\n\
         add rule ip kube-proxy filter-output ct state new jump service-endpoints-check\n\
         add rule ip kube-proxy filter-output ct state new jump firewall-check\n\
         add rule ip kube-proxy filter-output-post-dnat ct state new jump cluster-ips-check\n\
         add rule ip kube-proxy nat-prerouting jump services\n\
         add rule ip kube-proxy nat-output jump services\n\
         add rule ip kube-proxy nat-postrouting jump masquerading\n\
         add rule ip kube-proxy nodeport-endpoints-check ip daddr @nodeport-ips meta l4proto . th dport vmap @no-endpoint-nodeports\n\
         add rule ip kube-proxy service-endpoints-check ip daddr . meta l4proto . th dport vmap @no-endpoint-services\n\
         add rule ip kube-proxy firewall-check ip daddr . meta l4proto . th dport vmap @firewall-ips\n\
         add rule ip kube-proxy services ip daddr . meta l4proto . th dport vmap @service-ips\n\
         add rule ip kube-proxy services ip daddr @nodeport-ips meta l4proto . th dport vmap @service-nodeports\n\
         add rule ip kube-proxy masquerading meta mark & 0x4000 == 0 return\n\
         add rule ip kube-proxy masquerading meta mark set meta mark ^ 0x4000\n\
         add rule ip kube-proxy masquerading masquerade fully-random\n\
         add rule ip kube-proxy cluster-ips-check ip daddr @cluster-ips reject comment \"Reject traffic to invalid ports of ClusterIPs\"\n\
         add rule ip kube-proxy cluster-ips-check ip daddr {SERVICE_CIDR} drop comment \"Drop traffic to unallocated ClusterIPs\"\n\
         add rule ip kube-proxy mark-for-masquerade meta mark set meta mark | 0x4000\n"
    ));
    out.push_str(&rules);
    out.push_str(&elements);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rulesets_cover_every_service_port() {
        let (services, measured) = services(10);
        assert_eq!(measured, 5);
        assert_eq!(services[measured].protocols, ["tcp", "udp"]);
        let ipt = iptables_restore(&services);
        // Two KUBE-SERVICES rules (cluster IP, LB IP) per service port, plus the nodeports rule.
        assert_eq!(ipt.matches("-A KUBE-SERVICES ").count(), 2 * 11 + 1);
        assert_eq!(ipt.matches("-j DNAT").count(), 2 * 11);
        assert_eq!(ipt.matches("COMMIT").count(), 2);
        let nft = nft_script(&services);
        assert_eq!(nft.matches("dnat to").count(), 2 * 11);
        assert_eq!(
            nft.matches("add element ip kube-proxy service-ips").count(),
            2 * 11
        );
        assert_ne!(hash16("a"), hash16("b"));
    }
}
