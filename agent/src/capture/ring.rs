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

/// How full the ring buffer is, read from the consumer and producer positions the kernel
/// keeps in the ring's first two pages (mapped read-only here, beside aya's own mapping).
pub struct RingFill {
    consumer: *const u64,
    producer: *const u64,
    page: usize,
    capacity: u64,
}

impl RingFill {
    /// `capacity`: the ring's data size in bytes.
    pub fn new(ring_fd: std::os::fd::RawFd, capacity: u64) -> std::io::Result<RingFill> {
        // SAFETY: sysconf only reads a system constant.
        let page = unsafe { libc::sysconf(libc::_SC_PAGESIZE) } as usize;
        let map = |offset: usize| -> std::io::Result<*const u64> {
            // SAFETY: a new read-only shared mapping of one page of the ring's fd (the
            // kernel allows read-only mappings of any of its pages); unmapped on drop.
            let p = unsafe {
                libc::mmap(
                    std::ptr::null_mut(),
                    page,
                    libc::PROT_READ,
                    libc::MAP_SHARED,
                    ring_fd,
                    offset as libc::off_t,
                )
            };
            if p == libc::MAP_FAILED {
                return Err(std::io::Error::last_os_error());
            }
            Ok(p as *const u64)
        };
        let consumer = map(0)?;
        let producer = match map(page) {
            Ok(p) => p,
            Err(e) => {
                // SAFETY: the mapping made just above, not used after this.
                unsafe { libc::munmap(consumer as *mut libc::c_void, page) };
                return Err(e);
            }
        };
        Ok(RingFill {
            consumer,
            producer,
            page,
            capacity: capacity.max(1),
        })
    }

    /// The share of the ring holding events not read yet, 0 to 1.
    pub fn fraction(&self) -> f64 {
        // SAFETY: both pointers are into live mappings; the kernel and the reader update
        // the positions with single aligned 8-byte stores, so a volatile read sees a whole
        // value (at worst a slightly old one, which is fine for a fill level).
        let (consumer, producer) = unsafe {
            (
                std::ptr::read_volatile(self.consumer),
                std::ptr::read_volatile(self.producer),
            )
        };
        producer.saturating_sub(consumer) as f64 / self.capacity as f64
    }
}

impl Drop for RingFill {
    fn drop(&mut self) {
        // SAFETY: the two mappings made in `new`, not used after this.
        unsafe {
            libc::munmap(self.consumer as *mut libc::c_void, self.page);
            libc::munmap(self.producer as *mut libc::c_void, self.page);
        }
    }
}

/// Whether capture is overloaded: the ring is more than `ENTER` full. It stays so until the
/// ring is back under `LEAVE`, so that it does not flip at every check.
#[derive(Debug, Default)]
pub struct Overload {
    on: bool,
}

impl Overload {
    const ENTER: f64 = 0.5;
    const LEAVE: f64 = 0.25;

    /// Updates the state from the ring's fill; returns the new state when it changed.
    pub fn update(&mut self, fill: f64) -> Option<bool> {
        let on = if self.on {
            fill > Self::LEAVE
        } else {
            fill > Self::ENTER
        };
        (on != self.on).then(|| {
            self.on = on;
            on
        })
    }

    pub fn is_on(&self) -> bool {
        self.on
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn overload_starts_past_half_and_ends_under_a_quarter() {
        let mut o = Overload::default();
        assert_eq!(o.update(0.4), None);
        assert_eq!(o.update(0.51), Some(true));
        assert_eq!(o.update(0.3), None);
        assert!(o.is_on());
        assert_eq!(o.update(0.2), Some(false));
        assert_eq!(o.update(0.45), None);
        assert!(!o.is_on());
    }
}
