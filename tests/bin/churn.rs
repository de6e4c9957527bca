//! Process churn for `tests/load.rs`: RATE new processes a second for SECONDS, each making
//! one HTTP request, as a host running short-lived jobs does.
//!
//! The parent forks without exec (on two cores exec'ing curl a thousand times a second is
//! out of reach); each child is a new process (a new pid) that opens a socket, sends one
//! GET, reads the response head and exits, with raw system calls only (nothing allocates
//! after fork). Prints one line: `started N ok M seconds S`.
//!
//! usage: churn PORT RATE SECONDS PATH
use std::time::{Duration, Instant};

/// What the child does; its exit status is 0 when the response was a 204.
fn child(addr: &libc::sockaddr_in, request: &[u8]) -> ! {
    // SAFETY: plain system calls on buffers owned by this frame; the process ends here.
    unsafe {
        let fd = libc::socket(libc::AF_INET, libc::SOCK_STREAM, 0);
        let len = std::mem::size_of::<libc::sockaddr_in>() as libc::socklen_t;
        let mut code = 1;
        if fd >= 0 && libc::connect(fd, (addr as *const libc::sockaddr_in).cast(), len) == 0 {
            let sent = libc::write(fd, request.as_ptr().cast(), request.len());
            if sent == request.len() as isize {
                let mut buf = [0u8; 512];
                let mut have = 0usize;
                loop {
                    let n = libc::read(fd, buf[have..].as_mut_ptr().cast(), buf.len() - have);
                    if n <= 0 {
                        break;
                    }
                    have += n as usize;
                    if buf[..have].windows(4).any(|w| w == b"\r\n\r\n") || have == buf.len() {
                        break;
                    }
                }
                if buf[..have].starts_with(b"HTTP/1.1 204") {
                    code = 0;
                }
            }
        }
        libc::close(fd);
        libc::_exit(code)
    }
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let [_, port, rate, seconds, path] = &args[..] else {
        panic!("usage: churn PORT RATE SECONDS PATH");
    };
    let port: u16 = port.parse().unwrap();
    let rate: u64 = rate.parse().unwrap();
    let seconds: u64 = seconds.parse().unwrap();
    let request = format!("GET {path} HTTP/1.1\r\nHost: churn\r\nConnection: close\r\n\r\n");
    let addr = libc::sockaddr_in {
        sin_family: libc::AF_INET as libc::sa_family_t,
        sin_port: port.to_be(),
        sin_addr: libc::in_addr {
            s_addr: u32::from_be_bytes([127, 0, 0, 1]).to_be(),
        },
        sin_zero: [0; 8],
    };
    let total = rate * seconds;
    let (mut started, mut ok) = (0u64, 0u64);
    let reap = |flags: i32, ok: &mut u64| loop {
        let mut status = 0;
        // SAFETY: waitpid writes the status it is given.
        let pid = unsafe { libc::waitpid(-1, &mut status, flags) };
        if pid <= 0 {
            return;
        }
        if libc::WIFEXITED(status) && libc::WEXITSTATUS(status) == 0 {
            *ok += 1;
        }
    };
    let start = Instant::now();
    while started < total {
        let due = Duration::from_micros(started * 1_000_000 / rate);
        if let Some(wait) = due.checked_sub(start.elapsed()) {
            std::thread::sleep(wait);
        }
        // SAFETY: this program has one thread; the child only makes system calls.
        match unsafe { libc::fork() } {
            0 => child(&addr, request.as_bytes()),
            -1 => panic!("fork: {}", std::io::Error::last_os_error()),
            _ => started += 1,
        }
        reap(libc::WNOHANG, &mut ok);
    }
    reap(0, &mut ok);
    println!(
        "started {started} ok {ok} seconds {:.1}",
        start.elapsed().as_secs_f64()
    );
}
