//! Addresses of sockets the kernel side saw no connect/accept for, resolved through /proc.
use std::collections::HashMap;
use std::net::SocketAddr;

use procfs::process::{FDTarget, Process};

use crate::capture::event::normalize_ip;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Tuple {
    pub local: SocketAddr,
    pub peer: SocketAddr,
}

/// What a process's fd turned out to be when sonde looked in /proc.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FdKind {
    /// A TCP socket, with its addresses.
    Tcp(Tuple),
    /// Something else: a file, a pipe, a Unix or UDP socket. Not ours.
    NotTcp,
    /// The process, the fd or the socket is gone already (a short connection can end
    /// before sonde looks): nothing is known either way.
    Gone,
}

impl FdKind {
    pub fn tuple(self) -> Option<Tuple> {
        match self {
            FdKind::Tcp(t) => Some(t),
            _ => None,
        }
    }
}

/// What `pid`'s `fd` is: a TCP socket (with its local and peer address), something else, or
/// gone.
pub fn resolve_fd(pid: u32, fd: i32) -> FdKind {
    let Ok(proc) = Process::new(pid as i32) else {
        return FdKind::Gone;
    };
    let inode = match proc.fd_from_fd(fd) {
        Ok(info) => match info.target {
            FDTarget::Socket(inode) => inode,
            _ => return FdKind::NotTcp,
        },
        Err(_) => return FdKind::Gone,
    };
    // An exiting process loses its network namespace (and with it these tables) around
    // the time its fds close: unreadable tables say nothing either way.
    let (Ok(tcp), Ok(tcp6)) = (proc.tcp(), proc.tcp6()) else {
        return FdKind::Gone;
    };
    if let Some(e) = tcp.into_iter().chain(tcp6).find(|e| e.inode == inode) {
        return FdKind::Tcp(Tuple {
            local: SocketAddr::new(normalize_ip(e.local_address.ip()), e.local_address.port()),
            peer: SocketAddr::new(normalize_ip(e.remote_address.ip()), e.remote_address.port()),
        });
    }
    let unix = proc.unix().unwrap_or_default();
    let udp = proc.udp().unwrap_or_default();
    let udp6 = proc.udp6().unwrap_or_default();
    if unix.iter().any(|e| e.inode == inode) || udp.iter().chain(&udp6).any(|e| e.inode == inode) {
        FdKind::NotTcp
    } else {
        // A TCP socket that has just been closed leaves the tables before its fd does.
        FdKind::Gone
    }
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
        let addr = resolve_fd(pid, listen_fd).tuple().map(|t| t.local);
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
    use crate::identity::process::listening_ports;
    use std::os::fd::AsRawFd;

    #[test]
    fn resolves_own_tcp_sockets_and_rejects_files() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let client = std::net::TcpStream::connect(addr).unwrap();
        let pid = std::process::id();
        let t = resolve_fd(pid, client.as_raw_fd())
            .tuple()
            .expect("client socket");
        assert_eq!(t.peer, addr);
        assert_eq!(t.local, client.local_addr().unwrap());
        assert!(listening_ports(pid).contains(&addr.port()));
        assert!(!listening_ports(pid).contains(&client.local_addr().unwrap().port()));
        let mut cache = ListenerCache::default();
        assert_eq!(cache.local_addr(pid, listener.as_raw_fd()), Some(addr));
        let file = std::fs::File::open("/proc/self/status").unwrap();
        assert_eq!(resolve_fd(pid, file.as_raw_fd()), FdKind::NotTcp);
        let unix = std::os::unix::net::UnixDatagram::unbound().unwrap();
        assert_eq!(resolve_fd(pid, unix.as_raw_fd()), FdKind::NotTcp);
        // (Not a closed fd of this process: a parallel test may reopen that number.)
        assert_eq!(resolve_fd(pid, i32::MAX), FdKind::Gone);
        assert_eq!(resolve_fd(u32::MAX / 2, 3), FdKind::Gone);
    }
}
