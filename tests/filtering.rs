//! What the kernel side must not ship: file and pipe I/O, and sonde's own traffic.
use std::process::{Command, Stdio};

use sonde_tests::*;

/// Events sonde has received, read through a scrape (the scrape's own client-side events
/// are measured and subtracted by the caller).
fn received(sonde: &Sonde) -> f64 {
    sonde.metrics().sum("sonde_events_received_total", &[])
}

/// Events a workload made sonde receive, net of what the scrapes themselves cost.
fn events_during(sonde: &Sonde, workload: &str) -> (f64, f64) {
    // Baseline: what two back-to-back scrapes cost by themselves.
    let a = received(sonde);
    std::thread::sleep(std::time::Duration::from_millis(300));
    let b = received(sonde);
    let status = Command::new("sh")
        .args(["-c", workload])
        .stdout(Stdio::null())
        .status()
        .unwrap();
    assert!(status.success(), "{workload}");
    std::thread::sleep(std::time::Duration::from_millis(300));
    let c = received(sonde);
    (c - b, b - a)
}

#[test]
fn file_and_pipe_workloads_ship_no_events() {
    let sonde = Sonde::start();
    let f = tempdir("files").join("copy.bin");
    let f = f.display();
    // Over a million read/write syscalls on files, /dev/zero, /dev/null and pipes.
    let plain = format!(
        "dd if=/dev/zero of={f} bs=4k count=20000 status=none && \
         dd if={f} of={f}.2 bs=1k status=none && \
         dd if=/dev/zero of=/dev/null bs=1 count=300000 status=none && \
         head -c 50000000 /dev/zero | cat | wc -c"
    );
    let (during, per_scrape) = events_during(&sonde, &plain);
    assert!(
        during <= per_scrape + 2.0,
        "file/pipe workload shipped {during} events (a scrape alone ships {per_scrape})"
    );

    // A pipe and a file full of request lines look like HTTP to the kernel's first glance;
    // each such fd ships at most PROBATION_EVENTS (64) events before userspace rules it
    // out, out of the thousands of writes `yes` makes.
    let http_looking = format!("yes 'GET / HTTP/1.1' | head -n 200000 > {f}.3");
    let (during, per_scrape) = events_during(&sonde, &http_looking);
    assert!(
        during <= per_scrape + 3.0 * 64.0 + 2.0,
        "HTTP-looking pipe shipped {during} events"
    );
    // Events refused on probation for fds that turned out not to be sockets are not drops.
    let dropped = sonde.metrics().sum("sonde_events_dropped_total", &[]);
    assert_eq!(dropped, 0.0);
}

#[test]
fn sonde_never_observes_itself() {
    let sonde = Sonde::start();
    for _ in 0..5 {
        let _ = sonde.metrics();
    }
    let me = std::process::id();
    // Our scrapes are seen from our side (we are an ordinary client)...
    let client = sonde.wait_spans(5, |s| {
        kind(s) == "CLIENT" && s["process.pid"] == me && path_starts(s, "/metrics")
    });
    assert!(client.len() >= 5, "{client:?}");
    assert_eq!(
        attr(&client[0], "http.response.status_code").as_deref(),
        Some("200")
    );
    // ...and never from sonde's.
    let own = sonde.spans(|s| s["process.pid"] == sonde.pid);
    assert!(own.is_empty(), "sonde traced itself: {own:?}");
}
