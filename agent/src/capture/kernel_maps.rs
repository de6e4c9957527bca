//! The kernel's maps that userspace reads or writes besides the ring: the per-CPU drop
//! counters, and the connection table, which learns what userspace found out about a
//! connection.
use aya::maps::{HashMap as BpfHashMap, MapData, PerCpuArray};
use sonde_ebpf::{conn_flags, drop_reason, proto, ConnInfo, ConnKey};

/// Reads the kernel's per-CPU drop counters, summed: (reason label, count).
pub fn read_drops(map: &PerCpuArray<MapData, u64>) -> Vec<(&'static str, u64)> {
    (0..drop_reason::COUNT)
        .map(|i| {
            let total = map.get(&i, 0).map(|v| v.iter().sum()).unwrap_or(0);
            (drop_reason::NAMES[i as usize], total)
        })
        .collect()
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
