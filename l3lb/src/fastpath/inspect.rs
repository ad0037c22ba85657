//! Reading the pinned fast-path maps back: `l3lb inspect`, and the per-service and per-reason
//! counters on `/metrics`. Works from any process (it opens the pins read-only), so it shows
//! what the kernel really holds, not what the daemon believes.
use std::{
    collections::{BTreeMap, BTreeSet},
    fmt::Write as _,
    path::Path,
};

use aya::maps::{Array, HashMap as BpfHashMap, Map, MapData, PerCpuArray};
use l3lb_common::{
    BACKEND_TERMINATING, Backend, PacketCounter, Reason, ServiceEntry, ServiceKey, map_names,
};
use prometheus_client::{
    collector::Collector,
    encoding::{DescriptorEncoder, EncodeLabelSet, EncodeMetric as _},
    metrics::{MetricType, counter::ConstCounter},
};

use super::{
    plan::Delivery,
    tables::{delivery_of, vip_of},
};

#[derive(Debug, thiserror::Error)]
#[error("reading pinned map {path}: {source}")]
pub struct Error {
    path: String,
    #[source]
    source: aya::maps::MapError,
}

#[derive(Clone, Debug, Default, serde::Serialize)]
pub struct Report {
    pub services: Vec<ServiceRow>,
    pub reasons: BTreeMap<String, Counter>,
    /// Interface indexes of the pods' host-side interfaces that carry the reply program
    /// (its pinned links).
    pub reply_program_on: Vec<u32>,
}

#[derive(Clone, Debug, serde::Serialize)]
pub struct ServiceRow {
    pub service: String,
    pub id: u32,
    pub table_size: u32,
    /// Distinct backends in the active table (those taking new flows).
    pub table_backends: usize,
    pub backends: Vec<BackendRow>,
    pub packets: u64,
    pub bytes: u64,
}

#[derive(Clone, Debug, serde::Serialize)]
pub struct BackendRow {
    pub address: String,
    /// Share of the table (new flows), in percent.
    pub share: f64,
    /// Takes no new flows (terminating, or not ready), keeps its own.
    pub terminating: bool,
    /// How packets reach it: `peer:IFINDEX` (into the pod's namespace), `neigh:IFINDEX` (out of
    /// that host interface) or `stack` (the kernel's routing).
    pub delivery: String,
}

#[derive(Clone, Copy, Debug, Default, serde::Serialize)]
pub struct Counter {
    pub packets: u64,
    pub bytes: u64,
}

fn open<T: TryFrom<Map, Error = aya::maps::MapError>>(
    pin_root: &Path,
    name: &str,
) -> Result<T, Error> {
    let path = pin_root.join(name);
    let error = |source| Error {
        path: path.display().to_string(),
        source,
    };
    let data = MapData::from_pin(&path).map_err(error)?;
    let map = Map::from_map_data(data).map_err(error)?;
    T::try_from(map).map_err(error)
}

fn sum(values: &aya::maps::PerCpuValues<PacketCounter>) -> Counter {
    let total = crate::ebpf::sum_per_cpu(values);
    Counter {
        packets: total.packets,
        bytes: total.bytes,
    }
}

/// Everything the pinned maps under `pin_root` say.
pub fn read(pin_root: &Path) -> Result<Report, Error> {
    let services: BpfHashMap<MapData, ServiceKey, ServiceEntry> =
        open(pin_root, map_names::SERVICES)?;
    let backends: Array<MapData, Backend> = open(pin_root, map_names::BACKENDS)?;
    let maglev: Array<MapData, u32> = open(pin_root, map_names::MAGLEV)?;
    let stats: PerCpuArray<MapData, PacketCounter> = open(pin_root, map_names::SERVICE_STATS)?;
    let reasons: PerCpuArray<MapData, PacketCounter> = open(pin_root, map_names::REASONS)?;
    let map_error = |name: &str| {
        let path = pin_root.join(name).display().to_string();
        move |source| Error {
            path: path.clone(),
            source,
        }
    };

    let mut rows = Vec::new();
    for item in services.iter() {
        let (key, entry) = item.map_err(map_error(map_names::SERVICES))?;
        let Some(vip) = vip_of(&key) else { continue };
        let mut shares: BTreeMap<u32, u32> = BTreeMap::new();
        for i in 0..entry.table_size {
            let id = maglev
                .get(&(entry.table_base + i), 0)
                .map_err(map_error(map_names::MAGLEV))?;
            *shares.entry(id).or_default() += 1;
        }
        let mut rows_for_backends = Vec::new();
        for (id, count) in &shares {
            let backend = backends
                .get(id, 0)
                .map_err(map_error(map_names::BACKENDS))?;
            rows_for_backends.push(backend_row(
                &backend,
                f64::from(*count) * 100.0 / f64::from(entry.table_size.max(1)),
            ));
        }
        let counter = stats.get(&entry.id, 0).map(|v| sum(&v)).unwrap_or_default();
        rows.push(ServiceRow {
            service: vip.to_string(),
            id: entry.id,
            table_size: entry.table_size,
            table_backends: shares.len(),
            backends: rows_for_backends,
            packets: counter.packets,
            bytes: counter.bytes,
        });
    }
    // Terminating backends are in no table; list them with the services they still drain for
    // is not recorded in the maps, so show them once, globally.
    let in_tables: BTreeSet<String> = rows
        .iter()
        .flat_map(|row| row.backends.iter().map(|b| b.address.clone()))
        .collect();
    let draining: Vec<BackendRow> = backends
        .iter()
        .filter_map(Result::ok)
        .filter(|b| b.in_use != 0 && b.flags & BACKEND_TERMINATING != 0)
        .map(|b| backend_row(&b, 0.0))
        .filter(|row| !in_tables.contains(&row.address))
        .collect();
    if !draining.is_empty() {
        rows.push(ServiceRow {
            service: "(draining)".into(),
            id: u32::MAX,
            table_size: 0,
            table_backends: 0,
            backends: draining,
            packets: 0,
            bytes: 0,
        });
    }
    rows.sort_by(|a, b| a.service.cmp(&b.service));

    let mut by_reason = BTreeMap::new();
    for reason in Reason::ALL {
        let counter = reasons
            .get(&(reason as u32), 0)
            .map(|v| sum(&v))
            .unwrap_or_default();
        by_reason.insert(reason.label().to_owned(), counter);
    }
    let mut reply_program_on: Vec<u32> = std::fs::read_dir(pin_root.join("links").join("pods"))
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|entry| entry.file_name().to_str()?.parse().ok())
        .collect();
    reply_program_on.sort_unstable();
    Ok(Report {
        services: rows,
        reasons: by_reason,
        reply_program_on,
    })
}

fn backend_row(backend: &Backend, share: f64) -> BackendRow {
    let address = backend
        .socket_addr()
        .map_or_else(|| "?".into(), |addr| addr.to_string());
    let delivery = match delivery_of(backend) {
        Delivery::Peer { ifindex } => format!("peer:{ifindex}"),
        Delivery::Neigh { ifindex } => format!("neigh:{ifindex}"),
        Delivery::Stack => "stack".to_owned(),
    };
    BackendRow {
        address,
        share,
        terminating: backend.flags & BACKEND_TERMINATING != 0,
        delivery,
    }
}

/// The report as a table for a terminal.
pub fn render(report: &Report) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "{:<34} {:>5} {:>7} {:>12} {:>14}  BACKENDS (share of new flows)",
        "SERVICE", "ID", "TABLE", "PACKETS", "BYTES"
    );
    for row in &report.services {
        let backends: Vec<String> = row
            .backends
            .iter()
            .map(|b| {
                if b.terminating {
                    format!("{} (draining: no new flows)", b.address)
                } else {
                    format!("{} {:.1}% via {}", b.address, b.share, b.delivery)
                }
            })
            .collect();
        let id = if row.id == u32::MAX {
            "-".to_owned()
        } else {
            row.id.to_string()
        };
        let _ = writeln!(
            out,
            "{:<34} {:>5} {:>7} {:>12} {:>14}  {}",
            row.service,
            id,
            row.table_size,
            row.packets,
            row.bytes,
            if backends.is_empty() {
                "none (passed to the kernel)".into()
            } else {
                backends.join(", ")
            }
        );
    }
    if !report.reply_program_on.is_empty() {
        let interfaces: Vec<String> = report
            .reply_program_on
            .iter()
            .map(ToString::to_string)
            .collect();
        let _ = writeln!(
            out,
            "\nreply program on pod interfaces (ifindex): {}",
            interfaces.join(", ")
        );
    }
    let _ = writeln!(out, "\n{:<22} {:>12} {:>14}", "REASON", "PACKETS", "BYTES");
    for (reason, counter) in &report.reasons {
        let _ = writeln!(
            out,
            "{reason:<22} {:>12} {:>14}",
            counter.packets, counter.bytes
        );
    }
    out
}

/// `/metrics` counters read from the pinned maps at scrape time.
#[derive(Debug)]
pub struct FastPathCollector {
    pub pin_root: std::path::PathBuf,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ServiceLabels {
    service: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ReasonLabels {
    reason: String,
}

impl Collector for FastPathCollector {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        // No fast path (yet): no samples, rather than an error on every scrape.
        let Ok(report) = read(&self.pin_root) else {
            return Ok(());
        };
        let families: [(&str, &str, bool); 2] = [
            (
                "xdp_service_packets",
                "Packets steered by the fast path, per service address",
                true,
            ),
            (
                "xdp_service_bytes",
                "Bytes steered by the fast path, per service address",
                false,
            ),
        ];
        for (name, help, packets) in families {
            let mut family = encoder.encode_descriptor(name, help, None, MetricType::Counter)?;
            for row in report.services.iter().filter(|r| r.id != u32::MAX) {
                let labels = ServiceLabels {
                    service: row.service.clone(),
                };
                let value = if packets { row.packets } else { row.bytes };
                ConstCounter::new(value).encode(family.encode_family(&labels)?)?;
            }
        }
        let mut family = encoder.encode_descriptor(
            "xdp_packets",
            "Packets seen by the fast path, by what it did with them",
            None,
            MetricType::Counter,
        )?;
        for (reason, counter) in &report.reasons {
            let labels = ReasonLabels {
                reason: reason.clone(),
            };
            ConstCounter::new(counter.packets).encode(family.encode_family(&labels)?)?;
        }
        Ok(())
    }
}
