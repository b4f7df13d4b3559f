//! The frame codec: how one lane's messages become bytes on its stream, and back.
//! Pure code, no IO (STYLE.md 1): the QUIC driver reads headers and payloads from the
//! stream and hands them to a [`Reassembler`]; tests feed arbitrary bytes to a
//! [`FrameDecoder`].
//!
//! A lane's stream starts with the lane id (`u16` little endian, [`LANE_PREAMBLE_LEN`]
//! bytes), then carries frames. A frame is a fixed [`HEADER_LEN`]-byte header followed by
//! its payload:
//!
//! ```text
//! seq: u64 LE    lane-local frame number, 0, 1, 2, ... (every chunk has its own)
//! len: u32 LE    payload bytes in this frame, at most the frame cap
//! flags: u8      bit 0 = MORE: the message continues in the next frame
//! ```
//!
//! A message larger than the frame cap (default [`DEFAULT_MAX_FRAME`]) travels as several
//! frames, all but the last flagged MORE. The decoder rejects a sequence gap, an
//! oversized frame, unknown flags, an empty continued frame, and a message above the
//! message cap, each as [`TransportError::Malformed`] naming what is wrong, before it
//! allocates for the payload (STYLE.md 7).

use crate::{Lane, Result, TransportError};
use bytes::Bytes;

/// Bytes of a frame header.
pub const HEADER_LEN: usize = 13;
/// Bytes of the lane id that opens each lane stream.
pub const LANE_PREAMBLE_LEN: usize = 2;
/// Default cap on one frame's payload: 16 MiB.
pub const DEFAULT_MAX_FRAME: u32 = 16 << 20;
/// Default cap on one reassembled message: 4 GiB.
pub const DEFAULT_MAX_MESSAGE: u64 = 4 << 30;

const FLAG_MORE: u8 = 1;

/// Size limits of the codec. Both parties must use the same frame cap (or the receiver a
/// larger one).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FrameLimits {
    /// Largest payload of one frame; larger messages are chunked.
    pub max_frame: u32,
    /// Largest reassembled message the receiver accepts.
    pub max_message: u64,
}

impl Default for FrameLimits {
    fn default() -> Self {
        FrameLimits { max_frame: DEFAULT_MAX_FRAME, max_message: DEFAULT_MAX_MESSAGE }
    }
}

/// A decoded frame header.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FrameHeader {
    /// Lane-local frame number.
    pub seq: u64,
    /// Payload length.
    pub len: u32,
    /// Whether the message continues in the next frame.
    pub more: bool,
    flags: u8,
}

impl FrameHeader {
    fn new(seq: u64, len: u32, more: bool) -> Self {
        FrameHeader { seq, len, more, flags: if more { FLAG_MORE } else { 0 } }
    }

    /// The wire form.
    pub fn encode(&self) -> [u8; HEADER_LEN] {
        let mut out = [0u8; HEADER_LEN];
        out[..8].copy_from_slice(&self.seq.to_le_bytes());
        out[8..12].copy_from_slice(&self.len.to_le_bytes());
        out[12] = self.flags;
        out
    }

    /// Parses a header; validity against the stream state is the [`Reassembler`]'s job.
    pub fn decode(bytes: &[u8; HEADER_LEN]) -> FrameHeader {
        let mut seq = [0u8; 8];
        seq.copy_from_slice(&bytes[..8]);
        let mut len = [0u8; 4];
        len.copy_from_slice(&bytes[8..12]);
        let flags = bytes[12];
        FrameHeader {
            seq: u64::from_le_bytes(seq),
            len: u32::from_le_bytes(len),
            more: flags & FLAG_MORE != 0,
            flags,
        }
    }
}

/// One message cut into frames: `chunks` alternates header and payload slices (the
/// payload slices share the message's buffer, no copy), ready for a vectored write.
#[derive(Debug)]
pub struct EncodedMessage {
    /// Header, payload, header, payload, ... (an empty message has one header only).
    pub chunks: Vec<Bytes>,
    /// Header bytes in `chunks`.
    pub framing_len: usize,
}

/// The sending half of a lane: numbers frames and chunks messages.
#[derive(Debug)]
pub struct FrameEncoder {
    next_seq: u64,
    max_frame: u32,
}

impl FrameEncoder {
    /// A fresh lane. `max_frame` of 0 is treated as 1.
    pub fn new(max_frame: u32) -> Self {
        FrameEncoder { next_seq: 0, max_frame: max_frame.max(1) }
    }

    /// Frames one message.
    pub fn encode(&mut self, payload: Bytes) -> EncodedMessage {
        let max = self.max_frame as usize;
        let n_frames = payload.len().div_ceil(max).max(1);
        let mut chunks = Vec::with_capacity(2 * n_frames);
        let mut offset = 0;
        for i in 0..n_frames {
            let end = (offset + max).min(payload.len());
            let more = i + 1 < n_frames;
            // `end - offset <= max_frame`, which is a u32.
            let header = FrameHeader::new(self.next_seq, (end - offset) as u32, more);
            self.next_seq += 1;
            chunks.push(Bytes::copy_from_slice(&header.encode()));
            if end > offset {
                chunks.push(payload.slice(offset..end));
            }
            offset = end;
        }
        EncodedMessage { chunks, framing_len: n_frames * HEADER_LEN }
    }

    /// Frames one message into a single contiguous buffer (tests, small messages).
    pub fn encode_to_vec(&mut self, payload: &[u8]) -> Vec<u8> {
        let msg = self.encode(Bytes::copy_from_slice(payload));
        let mut out = Vec::with_capacity(payload.len() + msg.framing_len);
        for c in &msg.chunks {
            out.extend_from_slice(c);
        }
        out
    }
}

/// The receiving half of a lane: validates each header against the lane state and
/// collects payloads into whole messages. The IO driver appends the payload chunks it
/// reads, so payload bytes are copied once, from the receive buffer into the message.
#[derive(Debug)]
pub struct Reassembler {
    lane: Lane,
    limits: FrameLimits,
    expected_seq: u64,
    partial: Vec<u8>,
    frame_remaining: usize,
    in_message: bool,
    pending_more: bool,
}

impl Reassembler {
    /// A fresh lane.
    pub fn new(lane: Lane, limits: FrameLimits) -> Self {
        Reassembler {
            lane,
            limits,
            expected_seq: 0,
            partial: Vec::new(),
            frame_remaining: 0,
            in_message: false,
            pending_more: false,
        }
    }

    fn malformed(&self, problem: String) -> TransportError {
        TransportError::Malformed { lane: self.lane, problem }
    }

    /// Checks `header` against the lane state without consuming it.
    pub fn check(&self, header: &FrameHeader) -> Result<()> {
        if header.seq != self.expected_seq {
            return Err(self.malformed(format!(
                "frame sequence gap: expected frame {}, got frame {}",
                self.expected_seq, header.seq
            )));
        }
        if header.flags & !FLAG_MORE != 0 {
            return Err(
                self.malformed(format!("frame {} has unknown flags {:#04x}", header.seq, header.flags))
            );
        }
        if header.len > self.limits.max_frame {
            return Err(self.malformed(format!(
                "frame {} carries {} bytes, above the frame cap of {} bytes",
                header.seq, header.len, self.limits.max_frame
            )));
        }
        if header.more && header.len == 0 {
            return Err(self.malformed(format!("frame {} is an empty continued chunk", header.seq)));
        }
        let total = self.partial.len() as u64 + u64::from(header.len);
        if total > self.limits.max_message {
            return Err(self.malformed(format!(
                "message reaches {} bytes at frame {}, above the message cap of {} bytes",
                total, header.seq, self.limits.max_message
            )));
        }
        Ok(())
    }

    /// Checks `header` and starts its frame; feed its payload to
    /// [`Reassembler::extend`], then call [`Reassembler::finish_frame`].
    pub fn begin_frame(&mut self, header: &FrameHeader) -> Result<()> {
        self.check(header)?;
        self.expected_seq += 1;
        self.in_message = true;
        self.pending_more = header.more;
        self.frame_remaining = header.len as usize;
        self.partial.reserve(self.frame_remaining);
        Ok(())
    }

    /// Payload bytes of the current message received so far.
    pub fn partial_len(&self) -> usize {
        self.partial.len()
    }

    /// Payload bytes the current frame still expects.
    pub fn frame_remaining(&self) -> usize {
        self.frame_remaining
    }

    /// Appends payload of the current frame; returns how many bytes of `bytes` it took
    /// (never more than [`Reassembler::frame_remaining`]).
    pub fn extend(&mut self, bytes: &[u8]) -> usize {
        let n = bytes.len().min(self.frame_remaining);
        self.partial.extend_from_slice(&bytes[..n]);
        self.frame_remaining -= n;
        n
    }

    /// Completes the current frame once its payload is in; returns the message if it
    /// was the last chunk. `None` while payload is missing.
    pub fn finish_frame(&mut self) -> Option<Vec<u8>> {
        if self.pending_more || self.frame_remaining > 0 {
            return None;
        }
        self.in_message = false;
        Some(std::mem::take(&mut self.partial))
    }

    /// Whether a message is partly received (a stream ending now is truncated).
    pub fn mid_message(&self) -> bool {
        self.in_message && (self.pending_more || self.frame_remaining > 0)
    }
}

/// A push decoder over a byte stream of frames (no lane preamble): feed bytes as they
/// come, take whole messages out. Never panics on arbitrary input.
#[derive(Debug)]
pub struct FrameDecoder {
    reassembler: Reassembler,
    buf: Vec<u8>,
    pos: usize,
    current: Option<FrameHeader>,
}

impl FrameDecoder {
    /// A decoder for one lane.
    pub fn new(lane: Lane, limits: FrameLimits) -> Self {
        FrameDecoder { reassembler: Reassembler::new(lane, limits), buf: Vec::new(), pos: 0, current: None }
    }

    /// Appends received bytes.
    pub fn push(&mut self, data: &[u8]) {
        if self.pos > 0 && self.pos == self.buf.len() {
            self.buf.clear();
            self.pos = 0;
        }
        self.buf.extend_from_slice(data);
    }

    /// The next whole message, `None` if more bytes are needed.
    pub fn next_message(&mut self) -> Result<Option<Vec<u8>>> {
        loop {
            let header = match self.current {
                Some(h) => h,
                None => {
                    let Some(raw) = self.buf.get(self.pos..self.pos + HEADER_LEN) else {
                        return Ok(None);
                    };
                    let mut hdr = [0u8; HEADER_LEN];
                    hdr.copy_from_slice(raw);
                    let h = FrameHeader::decode(&hdr);
                    self.pos += HEADER_LEN;
                    self.current = Some(h);
                    h
                }
            };
            let len = header.len as usize;
            if self.buf.len() - self.pos < len {
                // Validate before waiting for (and buffering) a huge payload.
                self.reassembler.check(&header)?;
                return Ok(None);
            }
            self.reassembler.begin_frame(&header)?;
            self.reassembler.extend(&self.buf[self.pos..self.pos + len]);
            self.pos += len;
            self.current = None;
            if let Some(msg) = self.reassembler.finish_frame() {
                return Ok(Some(msg));
            }
        }
    }

    /// Whether the bytes so far end exactly at a message boundary.
    pub fn at_message_boundary(&self) -> bool {
        self.current.is_none() && self.pos == self.buf.len() && !self.reassembler.mid_message()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn limits(max_frame: u32) -> FrameLimits {
        FrameLimits { max_frame, max_message: 1 << 24 }
    }

    #[test]
    fn empty_and_exact_multiple_messages() {
        let mut enc = FrameEncoder::new(4);
        let mut dec = FrameDecoder::new(Lane::Ot, limits(4));
        for payload in [vec![], vec![1, 2, 3, 4], vec![5; 8], vec![7; 9]] {
            let bytes = enc.encode_to_vec(&payload);
            assert_eq!(bytes.len(), payload.len() + HEADER_LEN * payload.len().div_ceil(4).max(1));
            dec.push(&bytes);
            assert_eq!(dec.next_message().unwrap(), Some(payload));
            assert!(dec.at_message_boundary());
        }
    }

    #[test]
    fn gaps_and_caps_are_named() {
        let mut enc = FrameEncoder::new(16);
        let _ = enc.encode_to_vec(b"skipped");
        let mut dec = FrameDecoder::new(Lane::Openings, limits(16));
        dec.push(&enc.encode_to_vec(b"x"));
        let err = dec.next_message().unwrap_err().to_string();
        assert!(err.contains("expected frame 0, got frame 1"), "{err}");

        let mut dec = FrameDecoder::new(Lane::Openings, limits(16));
        dec.push(&FrameHeader::new(0, 17, false).encode());
        let err = dec.next_message().unwrap_err().to_string();
        assert!(err.contains("above the frame cap of 16"), "{err}");

        let mut dec = FrameDecoder::new(Lane::Openings, FrameLimits { max_frame: 16, max_message: 20 });
        dec.push(&FrameEncoder::new(16).encode_to_vec(&[0; 21]));
        let err = dec.next_message().unwrap_err().to_string();
        assert!(err.contains("above the message cap of 20"), "{err}");

        let mut dec = FrameDecoder::new(Lane::Openings, limits(16));
        let mut hdr = FrameHeader::new(0, 0, false).encode();
        hdr[12] = 0x80;
        dec.push(&hdr);
        assert!(dec.next_message().unwrap_err().to_string().contains("unknown flags"));

        let mut dec = FrameDecoder::new(Lane::Openings, limits(16));
        dec.push(&FrameHeader::new(0, 0, true).encode());
        assert!(dec.next_message().unwrap_err().to_string().contains("empty continued chunk"));
    }

    proptest! {
        #[test]
        fn round_trip(sizes in proptest::collection::vec(0usize..200, 1..8), max_frame in 1u32..64, split in 1usize..50) {
            let mut enc = FrameEncoder::new(max_frame);
            let payloads: Vec<Vec<u8>> = sizes.iter().enumerate()
                .map(|(i, &n)| (0..n).map(|j| (i * 31 + j) as u8).collect()).collect();
            let mut wire = Vec::new();
            for p in &payloads {
                wire.extend(enc.encode_to_vec(p));
            }
            let mut dec = FrameDecoder::new(Lane::Masked(3), limits(max_frame));
            let mut got = Vec::new();
            for piece in wire.chunks(split) {
                dec.push(piece);
                while let Some(m) = dec.next_message().unwrap() {
                    got.push(m);
                }
            }
            prop_assert_eq!(got, payloads);
            prop_assert!(dec.at_message_boundary());
        }

        #[test]
        fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..300), max_frame in 0u32..64) {
            let mut dec = FrameDecoder::new(Lane::Control, limits(max_frame));
            dec.push(&bytes);
            for _ in 0..64 {
                match dec.next_message() {
                    Ok(Some(_)) => continue,
                    Ok(None) | Err(_) => break,
                }
            }
        }
    }
}
