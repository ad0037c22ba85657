//! The embedded eBPF object, its loader, and the counters it keeps.
use aya::{Ebpf, EbpfError, EbpfLoader, maps::PerCpuArray};
use l3lb_common::{PacketCounter, Reason, map_names};

/// The object built by `build.rs`, aligned so aya can parse it in place.
pub static OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/l3lb"));

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("loading the embedded eBPF object: {0}")]
    Load(#[from] EbpfError),
    #[error("the eBPF object has no map {0}")]
    MissingMap(&'static str),
    #[error("map {name}: {source}")]
    Map {
        name: &'static str,
        #[source]
        source: aya::maps::MapError,
    },
}

/// A loader for [`OBJECT`] with `L3LB_MAGLEV` sized to `maglev_entries` (the object only carries
/// a placeholder size): all services' tables, each twice (the active half and the one being
/// rebuilt). Further settings, such as map pin paths, can be added before
/// `.load(OBJECT)`.
///
/// # Panics
/// When `maglev_entries` is 0, which the kernel would refuse with a less helpful error.
pub fn loader(maglev_entries: u32) -> EbpfLoader<'static> {
    assert!(maglev_entries > 0, "L3LB_MAGLEV needs at least one entry");
    let mut loader = EbpfLoader::new();
    // aya applies the override to BTF map definitions too (aya-obj `Map::set_max_entries`).
    loader.map_max_entries(map_names::MAGLEV, maglev_entries);
    loader
}

/// Loads the embedded object with a Maglev region of `maglev_entries` entries. Programs are
/// verified only once they are loaded by name.
pub fn load(maglev_entries: u32) -> Result<Ebpf, Error> {
    Ok(loader(maglev_entries).load(OBJECT)?)
}

/// Per-reason packet counters summed over all CPUs, indexed like [`Reason::ALL`].
pub fn reason_counters(ebpf: &Ebpf) -> Result<[PacketCounter; Reason::COUNT as usize], Error> {
    let name = map_names::REASONS;
    let map = ebpf.map(name).ok_or(Error::MissingMap(name))?;
    let array = PerCpuArray::<_, PacketCounter>::try_from(map)
        .map_err(|source| Error::Map { name, source })?;
    let mut totals = [PacketCounter::default(); Reason::COUNT as usize];
    for bucket in Reason::ALL {
        let per_cpu = array
            .get(&(bucket as u32), 0)
            .map_err(|source| Error::Map { name, source })?;
        totals[bucket as usize] = sum_per_cpu(&per_cpu);
    }
    Ok(totals)
}

/// One counter's per-CPU values added up: what `l3lb inspect`, `/metrics` and the tests show.
pub fn sum_per_cpu(values: &aya::maps::PerCpuValues<PacketCounter>) -> PacketCounter {
    values
        .iter()
        .fold(PacketCounter::default(), |total, counter| PacketCounter {
            packets: total.packets + counter.packets,
            bytes: total.bytes + counter.bytes,
        })
}

/// Packets and bytes forwarded for the service with this `ServiceEntry::id`, summed over CPUs.
pub fn service_counter(ebpf: &Ebpf, id: u32) -> Result<PacketCounter, Error> {
    let name = map_names::SERVICE_STATS;
    let map = ebpf.map(name).ok_or(Error::MissingMap(name))?;
    let array = PerCpuArray::<_, PacketCounter>::try_from(map)
        .map_err(|source| Error::Map { name, source })?;
    let per_cpu = array
        .get(&id, 0)
        .map_err(|source| Error::Map { name, source })?;
    Ok(sum_per_cpu(&per_cpu))
}
