//! The embedded eBPF object and the counters it keeps.
use aya::{Ebpf, EbpfError, maps::PerCpuArray};
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

/// Loads the embedded object (programs are verified only once they are loaded by name).
pub fn load() -> Result<Ebpf, Error> {
    Ok(Ebpf::load(OBJECT)?)
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
        let total = &mut totals[bucket as usize];
        for counter in per_cpu.iter() {
            total.packets += counter.packets;
            total.bytes += counter.bytes;
        }
    }
    Ok(totals)
}
