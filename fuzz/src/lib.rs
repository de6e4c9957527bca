//! Shared by the fuzz targets (`fuzz_targets/`): how an input is read as pieces of one
//! stream, or as a connection's events in both directions.
//!
//! Single-stream layout: `[mode] [n] [len; n % 8] payload`. The payload is fed whole and cut
//! into pieces of the given lengths (the last piece takes the rest), so every target can
//! compare a whole feed with a split one. Connection layout: records (see [`records`]).

/// Reads control bytes from the front of an input; a missing byte reads as 0.
pub struct Input<'a> {
    data: &'a [u8],
}

impl<'a> Input<'a> {
    pub fn new(data: &'a [u8]) -> Self {
        Input { data }
    }

    pub fn byte(&mut self) -> u8 {
        match self.data.split_first() {
            Some((&b, rest)) => {
                self.data = rest;
                b
            }
            None => 0,
        }
    }

    /// Up to `n` bytes.
    pub fn take(&mut self, n: usize) -> &'a [u8] {
        let (head, rest) = self.data.split_at(n.min(self.data.len()));
        self.data = rest;
        head
    }

    /// Piece lengths: a count byte (mod 8), then one byte per length.
    pub fn cuts(&mut self) -> Vec<usize> {
        let n = self.byte() % 8;
        (0..n).map(|_| self.byte() as usize).collect()
    }

    pub fn rest(&mut self) -> &'a [u8] {
        self.take(self.data.len())
    }
}

/// `payload` cut into pieces of `lens` bytes (as far as it goes), the rest in a last piece.
pub fn pieces<'a>(payload: &'a [u8], lens: &[usize]) -> Vec<&'a [u8]> {
    let mut out = Vec::with_capacity(lens.len() + 1);
    let mut rest = payload;
    for &n in lens {
        let (head, tail) = rest.split_at(n.min(rest.len()));
        out.push(head);
        rest = tail;
    }
    out.push(rest);
    out
}

/// One event of a connection, as the connection table hands it to a session.
#[derive(Debug)]
pub enum Record<'a> {
    Data {
        from_client: bool,
        payload: &'a [u8],
        /// Bytes that moved after `payload` but were not copied.
        gap: u64,
    },
    /// The connection closed, seen from a client (`true`) or a server.
    Closed { client: bool },
    /// A read or write failed (`ECONNRESET`), seen from a client.
    Failed,
    /// Bytes were lost between events: the session starts over.
    Restart,
}

/// A connection's events: each record is a control byte, then for data a length byte and
/// that many bytes. Control `0xF0..=0xFF` is an event without bytes (`& 3`: 0 closed as
/// client, 1 closed as server, 2 failed, 3 restart). Otherwise bit 0 is the direction
/// (1: from the client), bit 1 says a gap of `1 << ((control >> 2) % 32)` bytes follows.
pub fn records(data: &[u8]) -> Vec<Record<'_>> {
    let mut input = Input::new(data);
    let mut out = Vec::new();
    while !input.data.is_empty() {
        let ctl = input.byte();
        if ctl >= 0xF0 {
            out.push(match ctl & 3 {
                0 => Record::Closed { client: true },
                1 => Record::Closed { client: false },
                2 => Record::Failed,
                _ => Record::Restart,
            });
            continue;
        }
        let len = input.byte() as usize;
        // A syscall moves less than 4 GiB: `EventHeader::total_len` is a u32.
        let gap = if ctl & 2 != 0 {
            1u64 << ((ctl >> 2) % 32)
        } else {
            0
        };
        out.push(Record::Data {
            from_client: ctl & 1 != 0,
            payload: input.take(len),
            gap,
        });
    }
    out
}

/// Whether `needle` occurs in `haystack` (the empty slice occurs everywhere).
pub fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    needle.is_empty() || haystack.windows(needle.len()).any(|w| w == needle)
}
