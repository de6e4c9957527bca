//! Decoding ring-buffer events: a fixed header, then the payload bytes copied.
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

use sonde_ebpf::{
    conn_flags, direction, event_kind, ConnInfo, EventHeader, TraceIds, EVENT_HEADER_LEN,
};
use thiserror::Error;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum EventKind {
    Data,
    Close,
    Error,
    /// A process's first TCP connect() (`event_kind::PROCESS_SEEN`): no payload, no
    /// connection.
    ProcessSeen,
    /// The kernel gave the thread's next server request a new trace (`TraceIds` payload).
    TraceStarted,
    /// The kernel added a `traceparent` to the thread's next client request (`TraceIds`
    /// payload).
    TraceInjected,
}

impl TryFrom<u32> for EventKind {
    type Error = DecodeError;
    fn try_from(v: u32) -> Result<Self, DecodeError> {
        match v {
            event_kind::DATA => Ok(EventKind::Data),
            event_kind::CLOSE => Ok(EventKind::Close),
            event_kind::ERROR => Ok(EventKind::Error),
            event_kind::PROCESS_SEEN => Ok(EventKind::ProcessSeen),
            event_kind::TRACE_STARTED => Ok(EventKind::TraceStarted),
            event_kind::TRACE_INJECTED => Ok(EventKind::TraceInjected),
            other => Err(DecodeError::UnknownKind(other)),
        }
    }
}

#[derive(Debug, Error, PartialEq, Eq)]
pub enum DecodeError {
    #[error("event shorter than its header ({0} bytes)")]
    Short(usize),
    #[error("unknown event kind {0}")]
    UnknownKind(u32),
    #[error("payload length {captured} does not match the {available} bytes present")]
    BadLength { captured: usize, available: usize },
}

impl DecodeError {
    pub fn as_str(&self) -> &'static str {
        match self {
            DecodeError::Short(_) => "short_event",
            DecodeError::UnknownKind(_) => "unknown_kind",
            DecodeError::BadLength { .. } => "bad_length",
        }
    }
}

/// One decoded kernel event, borrowing its payload from the ring buffer.
#[derive(Debug)]
pub struct Event<'a> {
    pub kind: EventKind,
    pub header: EventHeader,
    /// The syscall's first bytes.
    pub payload: &'a [u8],
    /// Its last bytes, when it moved more than the head holds (HTTP; see
    /// `EventHeader::tail_len`): they follow `gap()` bytes that were not copied.
    pub tail: &'a [u8],
}

impl<'a> Event<'a> {
    pub fn decode(bytes: &'a [u8]) -> Result<Event<'a>, DecodeError> {
        if bytes.len() < EVENT_HEADER_LEN {
            return Err(DecodeError::Short(bytes.len()));
        }
        // SAFETY: EventHeader is repr(C) plain data valid for any bit pattern, and the slice
        // holds at least size_of::<EventHeader>() bytes; read_unaligned copes with alignment.
        let header: EventHeader =
            unsafe { std::ptr::read_unaligned(bytes.as_ptr() as *const EventHeader) };
        let kind = EventKind::try_from(header.kind)?;
        let available = bytes.len() - EVENT_HEADER_LEN;
        let captured = header.captured_len as usize;
        if captured > available {
            return Err(DecodeError::BadLength {
                captured,
                available,
            });
        }
        let tail = header.tail_len as usize;
        if tail > captured {
            return Err(DecodeError::BadLength {
                captured,
                available,
            });
        }
        let copied = &bytes[EVENT_HEADER_LEN..EVENT_HEADER_LEN + captured];
        let (payload, tail) = copied.split_at(captured - tail);
        Ok(Event {
            kind,
            header,
            payload,
            tail,
        })
    }

    pub fn is_ingress(&self) -> bool {
        self.header.direction == direction::INGRESS
    }

    /// Bytes the syscall moved that were not copied (between the head and the tail).
    pub fn gap(&self) -> u64 {
        let copied = (self.payload.len() + self.tail.len()) as u64;
        (self.header.total_len as u64).saturating_sub(copied)
    }

    /// The ids of a `TraceStarted` or `TraceInjected` event (None when the payload is short).
    pub fn trace_ids(&self) -> Option<TraceIds> {
        let bytes = self.payload.get(..std::mem::size_of::<TraceIds>())?;
        // SAFETY: TraceIds is repr(C) plain data valid for any bit pattern, and `bytes` holds
        // size_of::<TraceIds>() bytes; read_unaligned copes with alignment.
        Some(unsafe { std::ptr::read_unaligned(bytes.as_ptr() as *const TraceIds) })
    }

    pub fn comm(&self) -> String {
        let c = &self.header.comm;
        let end = c.iter().position(|b| *b == 0).unwrap_or(c.len());
        String::from_utf8_lossy(&c[..end]).into_owned()
    }
}

/// The peer address the kernel saw at connect/accept, if any.
pub fn peer_addr(conn: &ConnInfo) -> Option<SocketAddr> {
    let ip = match conn.family {
        2 => IpAddr::V4(Ipv4Addr::new(
            conn.peer_addr[0],
            conn.peer_addr[1],
            conn.peer_addr[2],
            conn.peer_addr[3],
        )),
        10 => normalize_ip(IpAddr::V6(Ipv6Addr::from(conn.peer_addr))),
        _ => return None,
    };
    Some(SocketAddr::new(ip, conn.peer_port))
}

/// IPv4-mapped IPv6 addresses (::ffff:a.b.c.d) are reported as the IPv4 address.
pub fn normalize_ip(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => v6
            .to_ipv4_mapped()
            .map(IpAddr::V4)
            .unwrap_or(IpAddr::V6(v6)),
        v4 => v4,
    }
}

pub fn needs_resolve(conn: &ConnInfo) -> bool {
    conn.flags & conn_flags::RESOLVE != 0
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bytes_of(h: &EventHeader, payload: &[u8]) -> Vec<u8> {
        // SAFETY: EventHeader is repr(C) plain data without padding.
        let raw = unsafe {
            std::slice::from_raw_parts(h as *const EventHeader as *const u8, EVENT_HEADER_LEN)
        };
        let mut v = raw.to_vec();
        v.extend_from_slice(payload);
        v
    }

    #[test]
    fn decodes_header_and_payload() {
        let h = EventHeader {
            kind: event_kind::DATA,
            total_len: 10,
            captured_len: 3,
            ..Default::default()
        };
        let b = bytes_of(&h, b"abc");
        let e = Event::decode(&b).unwrap();
        assert_eq!(e.kind, EventKind::Data);
        assert_eq!(e.payload, b"abc");
        assert_eq!(e.gap(), 7);
        assert!(e.tail.is_empty());
    }

    #[test]
    fn a_trace_event_carries_the_kernels_ids() {
        let h = EventHeader {
            kind: event_kind::TRACE_INJECTED,
            tgid: 5,
            tid: 6,
            fd: -1,
            captured_len: std::mem::size_of::<TraceIds>() as u32,
            ..Default::default()
        };
        let ids = TraceIds {
            trace_hi: 1,
            trace_lo: 2,
            span_id: 3,
            flags: sonde_ebpf::trace_flags::CHILD,
            local_port: 4,
        };
        // SAFETY: TraceIds is repr(C) plain data without padding.
        let raw = unsafe {
            std::slice::from_raw_parts(
                &ids as *const TraceIds as *const u8,
                std::mem::size_of::<TraceIds>(),
            )
        };
        let b = bytes_of(&h, raw);
        let e = Event::decode(&b).unwrap();
        assert_eq!(e.kind, EventKind::TraceInjected);
        assert_eq!(e.trace_ids(), Some(ids));
        let short = bytes_of(
            &EventHeader {
                captured_len: 8,
                ..h
            },
            &raw[..8],
        );
        assert_eq!(Event::decode(&short).unwrap().trace_ids(), None);
    }

    #[test]
    fn a_process_announcement_has_its_command_name_and_no_payload() {
        let mut h = EventHeader {
            kind: event_kind::PROCESS_SEEN,
            tgid: 42,
            fd: -1,
            ..Default::default()
        };
        h.comm[..4].copy_from_slice(b"curl");
        let b = bytes_of(&h, b"");
        let e = Event::decode(&b).unwrap();
        assert_eq!(e.kind, EventKind::ProcessSeen);
        assert_eq!(
            (e.header.tgid, e.comm(), e.payload.len()),
            (42, "curl".into(), 0)
        );
    }

    #[test]
    fn a_tail_follows_the_gap() {
        let h = EventHeader {
            kind: event_kind::DATA,
            total_len: 10,
            captured_len: 5,
            tail_len: 2,
            ..Default::default()
        };
        let b = bytes_of(&h, b"abcij");
        let e = Event::decode(&b).unwrap();
        assert_eq!((e.payload, e.tail, e.gap()), (&b"abc"[..], &b"ij"[..], 5));
        let bad = EventHeader { tail_len: 6, ..h };
        assert!(Event::decode(&bytes_of(&bad, b"abcij")).is_err());
    }

    #[test]
    fn rejects_bad_events() {
        assert_eq!(
            Event::decode(&[0u8; 10]).unwrap_err(),
            DecodeError::Short(10)
        );
        let h = EventHeader {
            kind: 99,
            ..Default::default()
        };
        assert_eq!(
            Event::decode(&bytes_of(&h, b"")).unwrap_err(),
            DecodeError::UnknownKind(99)
        );
        let h = EventHeader {
            kind: event_kind::DATA,
            captured_len: 50,
            ..Default::default()
        };
        assert!(matches!(
            Event::decode(&bytes_of(&h, b"x")).unwrap_err(),
            DecodeError::BadLength { .. }
        ));
    }

    #[test]
    fn v4_mapped_peer_is_ipv4() {
        let mut c = ConnInfo {
            family: 10,
            peer_port: 80,
            ..Default::default()
        };
        c.peer_addr[10] = 0xff;
        c.peer_addr[11] = 0xff;
        c.peer_addr[12..].copy_from_slice(&[127, 0, 0, 1]);
        assert_eq!(peer_addr(&c), Some("127.0.0.1:80".parse().unwrap()));
        c.peer_addr = Ipv6Addr::LOCALHOST.octets();
        assert_eq!(peer_addr(&c), Some("[::1]:80".parse().unwrap()));
    }
}
