//! The kernel's maps that userspace reads or writes besides the ring: the per-CPU counters
//! (drops, and the trace headers the `sk_msg` program added or not), and the connection
//! table, which learns what userspace found out about a connection.
use aya::maps::{HashMap as BpfHashMap, MapData, PerCpuArray};
use sonde_ebpf::{conn_flags, drop_reason, injection, proto, ConnInfo, ConnKey};

/// One per-CPU counter array of the kernel, read as increments.
pub struct KernelCounter {
    map: PerCpuArray<MapData, u64>,
    names: &'static [&'static str],
    seen: Vec<u64>,
}

impl KernelCounter {
    /// The drop counters (`drop_reason`).
    pub fn drops(map: PerCpuArray<MapData, u64>) -> KernelCounter {
        KernelCounter::new(map, &drop_reason::NAMES)
    }

    /// What the `sk_msg` program did with HTTP requests (`injection`).
    pub fn injections(map: PerCpuArray<MapData, u64>) -> KernelCounter {
        KernelCounter::new(map, &injection::NAMES)
    }

    fn new(map: PerCpuArray<MapData, u64>, names: &'static [&'static str]) -> KernelCounter {
        KernelCounter {
            map,
            names,
            seen: vec![0; names.len()],
        }
    }

    /// (label, count) for every counter that grew since the last call, summed over CPUs.
    pub fn take_new(&mut self) -> Vec<(&'static str, u64)> {
        let mut grew = Vec::new();
        for (i, name) in self.names.iter().enumerate() {
            let total: u64 = self
                .map
                .get(&(i as u32), 0)
                .map(|v| v.iter().sum())
                .unwrap_or(0);
            if total > self.seen[i] {
                grew.push((*name, total - self.seen[i]));
                self.seen[i] = total;
            }
        }
        grew
    }
}

/// What userspace found out about a connection the kernel ships.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ConnVerdict {
    /// Not ours (not a TCP socket, filtered out, upgraded or encrypted): ship no more.
    Ignore,
    /// A connection on probation is a TCP socket: ship all of it.
    Confirm,
    /// Ship it again as this protocol (a connection ignored as encrypted whose TLS plaintext
    /// now comes through the uprobes: an `Ignore` sent before must not stop it).
    Track(u8),
    /// Not readable any more (it switched to TLS, or a CONNECT tunnel opened): ship no
    /// more, unless the kernel has meanwhile found it to be TLS that the uprobes read.
    IgnoreUnlessTls,
}

/// A verdict for the kernel's entry `key`, if it still holds connection `conn_id`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct KernelUpdate {
    pub key: ConnKey,
    pub conn_id: u64,
    pub verdict: ConnVerdict,
}

/// Applies `update` to the kernel's connection table. The entry may be gone already
/// (closed), or the fd may hold another connection by now: then there is nothing to do.
pub fn apply(conns: &mut BpfHashMap<MapData, ConnKey, ConnInfo>, update: KernelUpdate) {
    let Ok(mut info) = conns.get(&update.key, 0) else {
        return;
    };
    if info.conn_id != update.conn_id {
        return;
    }
    match update.verdict {
        ConnVerdict::Ignore => info.proto = proto::NONE,
        ConnVerdict::Confirm => info.flags &= !conn_flags::PROBATION,
        ConnVerdict::Track(p) => info.proto = p,
        ConnVerdict::IgnoreUnlessTls if info.flags & conn_flags::TLS != 0 => return,
        ConnVerdict::IgnoreUnlessTls => info.proto = proto::NONE,
    }
    let _ = conns.insert(update.key, info, 0);
}
