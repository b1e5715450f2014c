//! The `/kith/blob/1.0.0` frames: a hand-written binary layout, small enough not to need prost.
//!
//! Request (client → server), any number per stream, one at a time:
//! `varint len ‖ body[len]`, `len ≤ max_request_frame` (4 KiB by default), with body
//! `kind u8 = 1 (get ranges) ‖ hash [32] ‖ has_size u8 (0|1) ‖ [size varint] ‖ n varint ‖
//! n × (gap varint, len varint)`.
//! Ranges are in bao chunks of 1 KiB; each starts `gap` chunks after the previous one's end (the
//! first after chunk 0), `len ≥ 1`, and a gap of 0 is allowed only for the first range.
//!
//! Response (server → client): `status u8`; if `Ok`, then `size u64 LE` and the bao encoding of
//! exactly the requested ranges (hash pairs and chunk groups in pre order, as bao-tree's
//! `encode_ranges_validated` writes them). Any other status ends the response.
//!
//! Hold request (a sender offering a blob to a relay that keeps it for an offline user; added
//! after 1.0.0 shipped, so an older server answers it `BadRequest` and keeps the stream):
//! body `kind u8 = 2 ‖ hash [32] ‖ size varint ‖ tag_len varint ‖ tag[tag_len ≤ 128]`, where the
//! tag says for whom (the service's business: a recipient's peer id). The server answers
//! `status u8`; if not `Ok`, then `reason_len varint ‖ reason` (UTF-8, ≤ 512 bytes) and the
//! request is over. If `Ok`: `n varint ‖ n × (gap varint, len varint)`, the chunk ranges it still
//! lacks (n = 0: it already holds all of it); the client then sends the bao encoding of exactly
//! those ranges, and the server ends with `status u8 ‖ complete u8` (and, if not `Ok`, a reason
//! as above) once everything is verified and durable.

use bao_tree::{ChunkNum, ChunkRanges};

/// The protocol name to register with libp2p-stream.
pub const PROTOCOL_NAME: &str = "/kith/blob/1.0.0";
const KIND_GET: u8 = 1;
const KIND_HOLD: u8 = 2;
/// Longest tag a hold request may carry.
pub(crate) const MAX_TAG: usize = 128;
/// Longest refusal reason sent back.
pub(crate) const MAX_REASON: usize = 512;
/// Most ranges one request may carry (a request is at most 4 KiB anyway).
pub(crate) const MAX_RANGES: usize = 512;

/// A server's answer to a request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum Status {
    /// The ranges follow.
    Ok = 0,
    /// The server has no blob with this hash (and size).
    UnknownBlob = 1,
    /// A range goes past the end of the blob.
    OutOfRange = 2,
    /// The server is serving too many transfers; try later or elsewhere.
    Busy = 3,
    /// The server has the blob but has not verified all requested ranges yet.
    NotHeld = 4,
    /// The request did not decode.
    BadRequest = 5,
    /// The request frame was larger than the server accepts.
    TooLarge = 6,
    /// Hold requests only: the quota for this tag (recipient) is full; try later or elsewhere.
    Full = 7,
    /// Hold requests only: this server does not hold blobs for that tag (not a relay, or the
    /// recipient is not its user).
    NotAccepted = 8,
}

impl Status {
    pub(crate) fn from_byte(b: u8) -> Option<Self> {
        Some(match b {
            0 => Self::Ok,
            1 => Self::UnknownBlob,
            2 => Self::OutOfRange,
            3 => Self::Busy,
            4 => Self::NotHeld,
            5 => Self::BadRequest,
            6 => Self::TooLarge,
            7 => Self::Full,
            8 => Self::NotAccepted,
            _ => return None,
        })
    }
}

/// One "send me these ranges" request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Request {
    pub(crate) hash: [u8; 32],
    pub(crate) size: Option<u64>,
    /// Chunk ranges, sorted, disjoint and non-adjacent.
    pub(crate) ranges: ChunkRanges,
}

/// One "keep this blob" request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct HoldRequest {
    pub(crate) hash: [u8; 32],
    pub(crate) size: u64,
    pub(crate) tag: Vec<u8>,
}

/// A request of either kind.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Frame {
    Get(Request),
    Hold(HoldRequest),
}

/// Why a request body did not decode.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub(crate) enum DecodeError {
    #[error("request ends early")]
    Short,
    #[error("unknown request kind {0}")]
    Kind(u8),
    #[error("bad varint")]
    Varint,
    #[error("bad has_size flag {0}")]
    Flag(u8),
    #[error("{0} ranges, more than {MAX_RANGES}")]
    TooManyRanges(u64),
    #[error("empty, overlapping or overflowing range")]
    BadRange,
    #[error("no ranges")]
    NoRanges,
    #[error("{0} trailing bytes")]
    Trailing(usize),
    #[error("tag of {0} bytes, more than {MAX_TAG}")]
    TagTooLong(u64),
}

pub(crate) fn put_varint(out: &mut Vec<u8>, mut v: u64) {
    while v >= 0x80 {
        out.push((v as u8 & 0x7f) | 0x80);
        v >>= 7;
    }
    out.push(v as u8);
}

struct Cursor<'a>(&'a [u8]);

impl Cursor<'_> {
    fn byte(&mut self) -> Result<u8, DecodeError> {
        let (&b, rest) = self.0.split_first().ok_or(DecodeError::Short)?;
        self.0 = rest;
        Ok(b)
    }

    fn varint(&mut self) -> Result<u64, DecodeError> {
        let mut v = 0u64;
        for i in 0..10 {
            let b = self.byte()?;
            let bits = u64::from(b & 0x7f);
            if i == 9 && b > 1 {
                return Err(DecodeError::Varint);
            }
            v |= bits << (7 * i);
            if b & 0x80 == 0 {
                return Ok(v);
            }
        }
        Err(DecodeError::Varint)
    }
}

/// Appends `n ‖ n × (gap, len)` for `ranges`.
pub(crate) fn put_ranges(out: &mut Vec<u8>, ranges: &ChunkRanges) {
    let bounds = ranges.boundaries();
    put_varint(out, (bounds.len() / 2) as u64);
    let mut prev_end = 0u64;
    for pair in bounds.chunks_exact(2) {
        put_varint(out, pair[0].0 - prev_end);
        put_varint(out, pair[1].0 - pair[0].0);
        prev_end = pair[1].0;
    }
}

fn frame(body: Vec<u8>) -> Vec<u8> {
    let mut frame = Vec::with_capacity(body.len() + 3);
    put_varint(&mut frame, body.len() as u64);
    frame.extend_from_slice(&body);
    frame
}

impl Cursor<'_> {
    /// Reads `n ‖ n × (gap, len)`; `allow_empty` for a hold answer's "nothing wanted".
    fn ranges(&mut self, allow_empty: bool) -> Result<ChunkRanges, DecodeError> {
        let n = self.varint()?;
        if n > MAX_RANGES as u64 {
            return Err(DecodeError::TooManyRanges(n));
        }
        if n == 0 && !allow_empty {
            return Err(DecodeError::NoRanges);
        }
        let mut ranges = ChunkRanges::empty();
        let mut prev_end = 0u64;
        for i in 0..n {
            let gap = self.varint()?;
            let len = self.varint()?;
            if len == 0 || (i > 0 && gap == 0) {
                return Err(DecodeError::BadRange);
            }
            let start = prev_end.checked_add(gap).ok_or(DecodeError::BadRange)?;
            let end = start.checked_add(len).ok_or(DecodeError::BadRange)?;
            ranges |= ChunkRanges::from(ChunkNum(start)..ChunkNum(end));
            prev_end = end;
        }
        Ok(ranges)
    }

    fn hash(&mut self) -> Result<[u8; 32], DecodeError> {
        let mut hash = [0u8; 32];
        for b in &mut hash {
            *b = self.byte()?;
        }
        Ok(hash)
    }

    fn end(&self) -> Result<(), DecodeError> {
        if self.0.is_empty() {
            Ok(())
        } else {
            Err(DecodeError::Trailing(self.0.len()))
        }
    }
}

/// Decodes a hold answer's wanted ranges (`n ‖ n × (gap, len)`, nothing after).
pub(crate) fn decode_ranges(body: &[u8]) -> Result<ChunkRanges, DecodeError> {
    let mut c = Cursor(body);
    let ranges = c.ranges(true)?;
    c.end()?;
    Ok(ranges)
}

impl Frame {
    /// Decodes a request body of any kind.
    pub(crate) fn decode(body: &[u8]) -> Result<Self, DecodeError> {
        match body.first() {
            Some(&KIND_HOLD) => HoldRequest::decode(body).map(Frame::Hold),
            _ => Request::decode(body).map(Frame::Get),
        }
    }
}

impl HoldRequest {
    pub(crate) fn encode(&self) -> Vec<u8> {
        let mut body = vec![KIND_HOLD];
        body.extend_from_slice(&self.hash);
        put_varint(&mut body, self.size);
        put_varint(&mut body, self.tag.len() as u64);
        body.extend_from_slice(&self.tag);
        frame(body)
    }

    pub(crate) fn decode(body: &[u8]) -> Result<Self, DecodeError> {
        let mut c = Cursor(body);
        let kind = c.byte()?;
        if kind != KIND_HOLD {
            return Err(DecodeError::Kind(kind));
        }
        let hash = c.hash()?;
        let size = c.varint()?;
        let tag_len = c.varint()?;
        if tag_len > MAX_TAG as u64 {
            return Err(DecodeError::TagTooLong(tag_len));
        }
        let mut tag = Vec::with_capacity(tag_len as usize);
        for _ in 0..tag_len {
            tag.push(c.byte()?);
        }
        c.end()?;
        Ok(Self { hash, size, tag })
    }
}

impl Request {
    pub(crate) fn encode(&self) -> Vec<u8> {
        let mut body = vec![KIND_GET];
        body.extend_from_slice(&self.hash);
        match self.size {
            Some(size) => {
                body.push(1);
                put_varint(&mut body, size);
            }
            None => body.push(0),
        }
        put_ranges(&mut body, &self.ranges);
        frame(body)
    }

    pub(crate) fn decode(body: &[u8]) -> Result<Self, DecodeError> {
        let mut c = Cursor(body);
        let kind = c.byte()?;
        if kind != KIND_GET {
            return Err(DecodeError::Kind(kind));
        }
        let hash = c.hash()?;
        let size = match c.byte()? {
            0 => None,
            1 => Some(c.varint()?),
            f => return Err(DecodeError::Flag(f)),
        };
        let ranges = c.ranges(false)?;
        c.end()?;
        Ok(Self { hash, size, ranges })
    }
}
