//! Addresses of sockets the kernel side saw no connect/accept for, resolved through /proc.
use std::collections::HashMap;
use std::net::SocketAddr;

use procfs::process::{FDTarget, Process};

use crate::capture::normalize_ip;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Tuple {
    pub local: SocketAddr,
    pub peer: SocketAddr,
}

/// Local and peer address of `pid`'s `fd` if it is a TCP socket; None if it is not one (or is
/// gone).
pub fn resolve_fd(pid: u32, fd: i32) -> Option<Tuple> {
    let proc = Process::new(pid as i32).ok()?;
    let inode = match proc.fd_from_fd(fd).ok()?.target {
        FDTarget::Socket(inode) => inode,
        _ => return None,
    };
    let tables = [
        proc.tcp().unwrap_or_default(),
        proc.tcp6().unwrap_or_default(),
    ];
    tables
        .into_iter()
        .flatten()
        .find(|e| e.inode == inode)
        .map(|e| Tuple {
            local: SocketAddr::new(normalize_ip(e.local_address.ip()), e.local_address.port()),
            peer: SocketAddr::new(normalize_ip(e.remote_address.ip()), e.remote_address.port()),
        })
}

/// Local addresses of listening sockets, cached by (pid, fd): listeners live long, so one
/// /proc walk serves every connection they accept.
#[derive(Default)]
pub struct ListenerCache {
    by_fd: HashMap<(u32, i32), Option<SocketAddr>>,
}

impl ListenerCache {
    pub fn local_addr(&mut self, pid: u32, listen_fd: i32) -> Option<SocketAddr> {
        if let Some(a) = self.by_fd.get(&(pid, listen_fd)) {
            return *a;
        }
        let addr = resolve_fd(pid, listen_fd).map(|t| t.local);
        if self.by_fd.len() > 10_000 {
            self.by_fd.clear();
        }
        self.by_fd.insert((pid, listen_fd), addr);
        addr
    }

    pub fn forget_pid(&mut self, pid: u32) {
        self.by_fd.retain(|(p, _), _| *p != pid);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::fd::AsRawFd;

    #[test]
    fn resolves_own_tcp_sockets_and_rejects_files() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let client = std::net::TcpStream::connect(addr).unwrap();
        let pid = std::process::id();
        let t = resolve_fd(pid, client.as_raw_fd()).expect("client socket");
        assert_eq!(t.peer, addr);
        assert_eq!(t.local, client.local_addr().unwrap());
        let mut cache = ListenerCache::default();
        assert_eq!(cache.local_addr(pid, listener.as_raw_fd()), Some(addr));
        let file = std::fs::File::open("/proc/self/status").unwrap();
        assert_eq!(resolve_fd(pid, file.as_raw_fd()), None);
    }
}
