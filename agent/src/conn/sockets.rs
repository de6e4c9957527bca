//! Addresses the kernel side does not give: those of sockets it saw no connect/accept for
//! (resolved through /proc), and the local address of a client socket (through a pidfd).
use std::collections::HashMap;
use std::net::SocketAddr;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};

use procfs::process::{FDTarget, Process};
use rustc_hash::FxHashMap;

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

/// pidfds of the processes whose client sockets sonde names (`local_addr`): a socket's
/// local address then costs a few syscalls, where finding it in /proc costs a walk of the
/// process's socket tables.
#[derive(Default)]
pub struct PidFds {
    by_pid: FxHashMap<u32, OwnedFd>,
}

/// pidfds kept at most; past this the cache starts over (each holds one fd of sonde's).
const MAX_PIDFDS: usize = 512;

impl PidFds {
    /// The local and peer address of `pid`'s socket `fd`, when that fd still holds a
    /// connected IPv4/IPv6 socket.
    pub fn tuple(&mut self, pid: u32, fd: i32) -> Option<Tuple> {
        let socket = self.copy_fd(pid, fd)?;
        Some(Tuple {
            local: socket_name(&socket, libc::getsockname)?,
            peer: socket_name(&socket, libc::getpeername)?,
        })
    }

    /// The local address of `pid`'s socket `fd`, when that fd still holds a TCP socket
    /// whose peer is `peer` (when `peer` is known: by the time sonde looks, the process may
    /// have closed the connection and opened another one on the same fd).
    pub fn local_addr(
        &mut self,
        pid: u32,
        fd: i32,
        peer: Option<SocketAddr>,
    ) -> Option<SocketAddr> {
        let t = self.tuple(pid, fd)?;
        (peer.is_none() || peer == Some(t.peer)).then_some(t.local)
    }

    /// The peer address of `pid`'s socket `fd`, when its local address is `local` (when
    /// known; see `local_addr`).
    pub fn peer_addr(
        &mut self,
        pid: u32,
        fd: i32,
        local: Option<SocketAddr>,
    ) -> Option<SocketAddr> {
        let t = self.tuple(pid, fd)?;
        (local.is_none() || local == Some(t.local)).then_some(t.peer)
    }

    /// A copy of `pid`'s `fd` in this process (`pidfd_getfd`, Linux 5.6).
    fn copy_fd(&mut self, pid: u32, fd: i32) -> Option<OwnedFd> {
        if self.by_pid.len() >= MAX_PIDFDS && !self.by_pid.contains_key(&pid) {
            self.by_pid.clear();
        }
        let pidfd = match self.by_pid.entry(pid) {
            std::collections::hash_map::Entry::Occupied(o) => o.into_mut(),
            std::collections::hash_map::Entry::Vacant(v) => {
                // SAFETY: pidfd_open takes a pid and flags and returns a new fd or -1.
                let raw = unsafe { libc::syscall(libc::SYS_pidfd_open, pid as libc::pid_t, 0) };
                if raw < 0 {
                    return None;
                }
                // SAFETY: the syscall returned a new fd that nothing else owns.
                v.insert(unsafe { OwnedFd::from_raw_fd(raw as i32) })
            }
        };
        // SAFETY: pidfd_getfd takes a pidfd, a target fd and flags, and returns a new fd of
        // this process (a duplicate of the target's) or -1.
        let raw = unsafe { libc::syscall(libc::SYS_pidfd_getfd, pidfd.as_raw_fd(), fd, 0) };
        if raw < 0 {
            if std::io::Error::last_os_error().raw_os_error() == Some(libc::ESRCH) {
                // The process exited (its pid may come back as another's).
                self.by_pid.remove(&pid);
            }
            return None;
        }
        // SAFETY: as above, a new fd that nothing else owns.
        Some(unsafe { OwnedFd::from_raw_fd(raw as i32) })
    }

    pub fn forget(&mut self, pid: u32) {
        self.by_pid.remove(&pid);
    }
}

type NameFn =
    unsafe extern "C" fn(libc::c_int, *mut libc::sockaddr, *mut libc::socklen_t) -> libc::c_int;

/// `getsockname` or `getpeername` of an IPv4/IPv6 socket.
fn socket_name(socket: &OwnedFd, name: NameFn) -> Option<SocketAddr> {
    // SAFETY: sockaddr_storage is plain data, valid when zeroed.
    let mut storage: libc::sockaddr_storage = unsafe { std::mem::zeroed() };
    let mut len = std::mem::size_of::<libc::sockaddr_storage>() as libc::socklen_t;
    // SAFETY: the call writes at most `len` bytes into the storage we own.
    let rc = unsafe {
        name(
            socket.as_raw_fd(),
            &mut storage as *mut _ as *mut libc::sockaddr,
            &mut len,
        )
    };
    if rc != 0 {
        return None;
    }
    match storage.ss_family as i32 {
        libc::AF_INET => {
            // SAFETY: the family says the storage holds a sockaddr_in.
            let a = unsafe { &*(&storage as *const _ as *const libc::sockaddr_in) };
            let ip = std::net::Ipv4Addr::from(u32::from_be(a.sin_addr.s_addr));
            Some(SocketAddr::new(ip.into(), u16::from_be(a.sin_port)))
        }
        libc::AF_INET6 => {
            // SAFETY: the family says the storage holds a sockaddr_in6.
            let a = unsafe { &*(&storage as *const _ as *const libc::sockaddr_in6) };
            let ip = normalize_ip(std::net::Ipv6Addr::from(a.sin6_addr.s6_addr).into());
            Some(SocketAddr::new(ip, u16::from_be(a.sin6_port)))
        }
        _ => None,
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

    #[test]
    fn a_client_sockets_local_address_comes_through_a_pidfd() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let client = std::net::TcpStream::connect(addr).unwrap();
        let pid = std::process::id();
        let mut pidfds = PidFds::default();
        let fd = client.as_raw_fd();
        let local = client.local_addr().unwrap();
        assert_eq!(pidfds.local_addr(pid, fd, Some(addr)), Some(local));
        assert_eq!(pidfds.local_addr(pid, fd, None), Some(local));
        let (accepted, _) = listener.accept().unwrap();
        let afd = accepted.as_raw_fd();
        assert_eq!(pidfds.peer_addr(pid, afd, Some(addr)), Some(local));
        assert_eq!(pidfds.peer_addr(pid, afd, Some(local)), None);
        // Another peer: the fd holds another connection now.
        let elsewhere: SocketAddr = "127.0.0.1:1".parse().unwrap();
        assert_eq!(pidfds.local_addr(pid, fd, Some(elsewhere)), None);
        let file = std::fs::File::open("/proc/self/status").unwrap();
        assert_eq!(pidfds.local_addr(pid, file.as_raw_fd(), None), None);
    }
}
