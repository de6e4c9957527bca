//! Waiting for the ring buffer without waking per event.
use std::os::fd::AsRawFd;

/// Sleeps until the kernel wakes the ring buffer's readers or a timeout passes.
///
/// Edge-triggered: an event already in the ring does not end the wait, only a new wakeup
/// does (the kernel side wakes us once per 256 KiB shipped per CPU, and for connections on
/// probation). Between wakeups events gather for up to the timeout and are then drained
/// in one batch, which costs far less per event than draining each as it lands.
pub struct RingWaiter {
    epoll: std::os::fd::OwnedFd,
}

impl RingWaiter {
    pub fn new(ring_fd: std::os::fd::RawFd) -> std::io::Result<RingWaiter> {
        use std::os::fd::FromRawFd;
        // SAFETY: plain syscalls; the fd returned is owned here and closed on drop.
        let epoll = unsafe { libc::epoll_create1(libc::EPOLL_CLOEXEC) };
        if epoll < 0 {
            return Err(std::io::Error::last_os_error());
        }
        let epoll = unsafe { std::os::fd::OwnedFd::from_raw_fd(epoll) };
        let mut interest = libc::epoll_event {
            events: (libc::EPOLLIN | libc::EPOLLET) as u32,
            u64: 0,
        };
        // SAFETY: both fds are open; `interest` is a valid epoll_event.
        if unsafe {
            libc::epoll_ctl(
                epoll.as_raw_fd(),
                libc::EPOLL_CTL_ADD,
                ring_fd,
                &mut interest,
            )
        } < 0
        {
            return Err(std::io::Error::last_os_error());
        }
        Ok(RingWaiter { epoll })
    }

    pub fn wait(&self, timeout_ms: i32) {
        let mut ready = libc::epoll_event { events: 0, u64: 0 };
        // SAFETY: room for one event, as passed.
        unsafe { libc::epoll_wait(self.epoll.as_raw_fd(), &mut ready, 1, timeout_ms) };
    }
}
