//! Frames on the wire: a fixed 40-byte header followed by a payload.
//!
//! This module is pure: it holds no sockets and no threads. Transports move bytes; the
//! [`FrameDecoder`] turns a byte stream from one peer into frames, validating every header
//! before it allocates anything for the payload.
//!
//! Header layout (little endian):
//!
//! | offset | size | field                                             |
//! |--------|------|---------------------------------------------------|
//! | 0      | 2    | magic `RK`                                        |
//! | 2      | 1    | version                                           |
//! | 3      | 1    | kind ([`Kind`])                                   |
//! | 4      | 4    | context id (communicator and traffic class)       |
//! | 8      | 4    | source rank within the communicator               |
//! | 12     | 4    | tag                                               |
//! | 16     | 8    | payload length in bytes                           |
//! | 24     | 8    | aux: rendezvous token or 0                        |
//! | 32     | 1    | encoding ([`Encoding`])                           |
//! | 33     | 3    | reserved, zero                                    |
//! | 36     | 4    | type code of a raw slice's element, 0 otherwise   |

use crate::error::{Error, Result};

/// Bytes in a frame header.
pub const HEADER_LEN: usize = 40;
const MAGIC: [u8; 2] = *b"RK";
/// Wire version; a peer speaking another version is refused.
pub const VERSION: u8 = 2;
/// Payload of a rendezvous request: remote address and length.
pub const RTS_PAYLOAD_LEN: u64 = 16;
/// Payload of a clear-to-send: offset and length of the part, receiver's address for it.
pub const CTS_PAYLOAD_LEN: u64 = 24;

/// What a frame carries.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum Kind {
    /// A whole message (eager).
    Data = 1,
    /// Ready-to-send: a large message the receiver pulls from the sender's memory.
    Rts = 2,
    /// The receiver finished pulling the message named by `aux`.
    Fin = 3,
    /// The receiver could not pull; the sender must stream the message (`RtsData`).
    Nack = 4,
    /// The bytes of a rendezvous message that could not be pulled.
    RtsData = 5,
    /// Clear-to-send: the receiver of rendezvous `aux` pulls the first part itself and
    /// offers the sender to write a later part straight into its buffer (offset, length,
    /// address there), if the sender gets to it first (see `Transport::push`).
    Cts = 6,
}

impl Kind {
    fn from_u8(v: u8) -> Option<Kind> {
        Some(match v {
            1 => Kind::Data,
            2 => Kind::Rts,
            3 => Kind::Fin,
            4 => Kind::Nack,
            5 => Kind::RtsData,
            6 => Kind::Cts,
            _ => return None,
        })
    }
}

/// How a message's payload is encoded.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum Encoding {
    /// postcard-encoded serde value.
    Serde = 0,
    /// The raw bytes of a slice of plain numbers; `typecode` names the element type.
    Raw = 1,
}

/// A decoded frame header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Header {
    pub kind: Kind,
    pub ctx: u32,
    pub src: u32,
    pub tag: i32,
    pub len: u64,
    pub aux: u64,
    pub enc: Encoding,
    pub typecode: u32,
}

impl Header {
    /// A header for a message payload.
    pub fn data(ctx: u32, src: u32, tag: i32, len: u64, enc: Encoding, typecode: u32) -> Self {
        Header {
            kind: Kind::Data,
            ctx,
            src,
            tag,
            len,
            aux: 0,
            enc,
            typecode,
        }
    }

    /// A control frame (`Fin`, `Nack`, `Cts`) about rendezvous `token`.
    pub fn control(kind: Kind, token: u64) -> Self {
        Header {
            kind,
            ctx: 0,
            src: 0,
            tag: 0,
            len: 0,
            aux: token,
            enc: Encoding::Raw,
            typecode: 0,
        }
    }

    pub fn encode(&self) -> [u8; HEADER_LEN] {
        let mut b = [0u8; HEADER_LEN];
        for (i, w) in self.words().into_iter().enumerate() {
            b[8 * i..8 * i + 8].copy_from_slice(&w.to_le_bytes());
        }
        b
    }

    /// The encoded header as five little-endian words: bytes 0..2 the magic, 2 the
    /// version, 3 the kind, 4..8 the context; 8..12 the source, 12..16 the tag; 16..24 the
    /// length; 24..32 aux; 32 the encoding, 33..36 zero, 36..40 the type code. (A
    /// transport that writes a small frame in place stores these words whole.)
    #[inline]
    pub fn words(&self) -> [u64; 5] {
        [
            word0(self.kind, self.ctx),
            word1(self.src, self.tag),
            self.len,
            self.aux,
            word4(self.enc, self.typecode),
        ]
    }

    /// Parse and validate a header; `peer` only names the sender in errors.
    pub fn decode(b: &[u8; HEADER_LEN], peer: usize) -> Result<Header> {
        let bad = |detail: String| Error::Malformed { rank: peer, detail };
        if b[0..2] != MAGIC {
            return Err(bad(format!(
                "bad magic {:02x}{:02x} (not a ranks frame)",
                b[0], b[1]
            )));
        }
        if b[2] != VERSION {
            return Err(bad(format!(
                "wire version {} but this build speaks {VERSION}",
                b[2]
            )));
        }
        let kind =
            Kind::from_u8(b[3]).ok_or_else(|| bad(format!("unknown frame kind {}", b[3])))?;
        let enc = match b[32] {
            0 => Encoding::Serde,
            1 => Encoding::Raw,
            e => return Err(bad(format!("unknown encoding {e}"))),
        };
        if b[33..36] != [0, 0, 0] {
            return Err(bad("reserved header bytes are not zero".into()));
        }
        let u32_at = |i: usize| u32::from_le_bytes(b[i..i + 4].try_into().unwrap());
        let u64_at = |i: usize| u64::from_le_bytes(b[i..i + 8].try_into().unwrap());
        let h = Header {
            kind,
            ctx: u32_at(4),
            src: u32_at(8),
            tag: u32_at(12) as i32,
            len: u64_at(16),
            aux: u64_at(24),
            enc,
            typecode: u32_at(36),
        };
        let fixed_len = match kind {
            Kind::Rts => Some(RTS_PAYLOAD_LEN),
            Kind::Cts => Some(CTS_PAYLOAD_LEN),
            Kind::Fin | Kind::Nack => Some(0),
            Kind::Data | Kind::RtsData => None,
        };
        if let Some(want) = fixed_len {
            if h.len != want {
                return Err(bad(format!(
                    "{kind:?} frame with a {}-byte payload (must be {want})",
                    h.len
                )));
            }
        }
        if h.tag < 0 && matches!(kind, Kind::Data | Kind::Rts) {
            return Err(bad(format!("negative tag {}", h.tag)));
        }
        Ok(h)
    }
}

/// A header's first word: magic, version, kind and context.
#[inline]
fn word0(kind: Kind, ctx: u32) -> u64 {
    u64::from(u16::from_le_bytes(MAGIC))
        | u64::from(VERSION) << 16
        | (kind as u64) << 24
        | u64::from(ctx) << 32
}

/// A header's second word: source and tag.
#[inline]
fn word1(src: u32, tag: i32) -> u64 {
    u64::from(src) | u64::from(tag as u32) << 32
}

/// A header's fifth word: encoding and type code.
#[inline]
fn word4(enc: Encoding, typecode: u32) -> u64 {
    enc as u64 | u64::from(typecode) << 32
}

/// The header of a raw data frame whose every field but the length is known in advance (a
/// receive for one source, one tag and one element type): recognised by comparing four
/// words, where `Header::decode` checks field by field. What it accepts, `decode` accepts as
/// the same header; anything else (another tag, a malformed header) is left to `decode`.
#[derive(Debug, Clone, Copy)]
pub struct DataTemplate {
    /// Bytes 0..8 (magic, version, kind, context), 8..16 (source, tag), 24..32 (aux) and
    /// 32..40 (encoding, reserved, type code), as little-endian words.
    words: [u64; 4],
}

impl DataTemplate {
    /// The template of raw data frames of context `ctx` from `src` with `tag` (not
    /// negative: a negative tag is malformed) and element type code `typecode`.
    pub fn new(ctx: u32, src: u32, tag: i32, typecode: u32) -> Option<DataTemplate> {
        if tag < 0 {
            return None;
        }
        // As `Header::words` lays them out.
        Some(DataTemplate {
            words: [
                word0(Kind::Data, ctx),
                word1(src, tag),
                0,
                word4(Encoding::Raw, typecode),
            ],
        })
    }

    /// The header in `b` if it is this template's with some length.
    #[inline]
    pub fn header(&self, b: &[u8; HEADER_LEN]) -> Option<Header> {
        let w = |i: usize| u64::from_le_bytes(b[i..i + 8].try_into().expect("8 bytes"));
        if [w(0), w(8), w(24), w(32)] != self.words {
            return None;
        }
        Some(self.with_len(w(16)))
    }

    /// The header's fixed words, as [`DataTemplate::header`] compares them: bytes 0..8,
    /// 8..16, 24..32 and 32..40 (bytes 16..24 hold the length).
    #[inline]
    pub fn words(&self) -> &[u64; 4] {
        &self.words
    }

    /// This template's header with payload length `len`.
    #[inline]
    pub fn with_len(&self, len: u64) -> Header {
        let [w0, w1, _, w4] = self.words;
        Header::data(
            (w0 >> 32) as u32,
            w1 as u32,
            (w1 >> 32) as i32,
            len,
            Encoding::Raw,
            (w4 >> 32) as u32,
        )
    }
}

/// What the decoder produced.
#[derive(Debug, PartialEq, Eq)]
pub enum Decoded {
    /// A complete frame and its payload.
    Frame(Header, Vec<u8>),
    /// A frame whose payload exceeds the limit; its bytes are being skipped.
    TooLarge(Header),
}

enum State {
    Header {
        buf: [u8; HEADER_LEN],
        have: usize,
    },
    Body {
        header: Header,
        buf: Vec<u8>,
        have: usize,
    },
    Skip {
        left: u64,
    },
    /// A receive reads this frame's payload straight into its own buffer, a part at a time
    /// as it arrives; `have` bytes of it are there. `owner` names that receive.
    Landing {
        header: Header,
        have: usize,
        owner: usize,
    },
}

/// Turns one peer's byte stream into frames.
pub struct FrameDecoder {
    peer: usize,
    max: u64,
    state: State,
}

impl FrameDecoder {
    /// A decoder for frames from `peer`, refusing payloads above `max` bytes.
    pub fn new(peer: usize, max: u64) -> Self {
        FrameDecoder {
            peer,
            max,
            state: State::Header {
                buf: [0; HEADER_LEN],
                have: 0,
            },
        }
    }

    /// True when part of a frame has been read but not all of it.
    pub fn mid_frame(&self) -> bool {
        match &self.state {
            State::Header { have, .. } => *have > 0,
            State::Body { .. } | State::Skip { .. } | State::Landing { .. } => true,
        }
    }

    /// The frame a receive lands a part at a time: its header, the payload bytes it has,
    /// and the receive's name.
    pub fn landing(&self) -> Option<(Header, usize, usize)> {
        match &self.state {
            State::Landing {
                header,
                have,
                owner,
            } => Some((*header, *have, *owner)),
            _ => None,
        }
    }

    /// Receive `owner` has read the header of the next frame and `have` bytes of its
    /// payload (less than all) into its own buffer, and reads the rest as it comes: until
    /// it is done or gives up, `pump` reads nothing. Only between frames.
    pub fn start_landing(&mut self, header: Header, have: usize, owner: usize) {
        debug_assert!(!self.mid_frame(), "a landing starts between frames");
        self.state = State::Landing {
            header,
            have,
            owner,
        };
    }

    /// The landing receive read `n` more bytes of the payload; true once it has all of it
    /// (the decoder is then between frames again).
    pub fn landed_more(&mut self, n: usize) -> bool {
        let State::Landing { header, have, .. } = &mut self.state else {
            return false;
        };
        *have += n;
        if (*have as u64) < header.len {
            return false;
        }
        self.reset();
        true
    }

    /// The landing receive gives up with `got` (the payload bytes it has): the frame is
    /// finished as any other, in a buffer of its own, and goes where frames go.
    pub fn give_up_landing(&mut self, got: &[u8]) {
        let State::Landing { header, .. } = self.state else {
            return;
        };
        let mut buf = vec![0u8; header.len as usize];
        buf[..got.len()].copy_from_slice(got);
        self.state = State::Body {
            header,
            buf,
            have: got.len(),
        };
    }

    /// Reads with `read` (which returns 0 when nothing more is available now) until one frame
    /// is complete or the input runs dry.
    pub fn pump(
        &mut self,
        mut read: impl FnMut(&mut [u8]) -> Result<usize>,
    ) -> Result<Option<Decoded>> {
        loop {
            match &mut self.state {
                State::Header { buf, have } => {
                    let n = read(&mut buf[*have..])?;
                    if n == 0 {
                        return Ok(None);
                    }
                    *have += n;
                    if *have < HEADER_LEN {
                        continue;
                    }
                    let header = Header::decode(buf, self.peer)?;
                    if header.len > self.max && header.kind != Kind::Data {
                        return Err(Error::Malformed {
                            rank: self.peer,
                            detail: format!(
                                "{:?} frame of {} bytes, above the limit of {}",
                                header.kind, header.len, self.max
                            ),
                        });
                    }
                    if header.len > self.max {
                        self.state = State::Skip { left: header.len };
                        if header.len == 0 {
                            self.reset();
                        }
                        return Ok(Some(Decoded::TooLarge(header)));
                    }
                    if header.len == 0 {
                        self.reset();
                        return Ok(Some(Decoded::Frame(header, Vec::new())));
                    }
                    let len = usize::try_from(header.len).map_err(|_| Error::Malformed {
                        rank: self.peer,
                        detail: format!("payload of {} bytes does not fit in memory", header.len),
                    })?;
                    let mut buf = Vec::new();
                    buf.try_reserve_exact(len).map_err(|_| Error::Malformed {
                        rank: self.peer,
                        detail: format!("cannot allocate {len} bytes for a frame"),
                    })?;
                    buf.resize(len, 0);
                    self.state = State::Body {
                        header,
                        buf,
                        have: 0,
                    };
                }
                State::Body { buf, have, .. } => {
                    let n = read(&mut buf[*have..])?;
                    if n == 0 {
                        return Ok(None);
                    }
                    *have += n;
                    if *have == buf.len() {
                        let State::Body { header, buf, .. } =
                            std::mem::replace(&mut self.state, State::Skip { left: 0 })
                        else {
                            unreachable!()
                        };
                        self.reset();
                        return Ok(Some(Decoded::Frame(header, buf)));
                    }
                }
                // Its owner reads this frame (and gives it back before it leaves).
                State::Landing { .. } => return Ok(None),
                State::Skip { left } => {
                    let mut scratch = [0u8; 4096];
                    let want = (*left).min(scratch.len() as u64) as usize;
                    let n = read(&mut scratch[..want])?;
                    if n == 0 {
                        return Ok(None);
                    }
                    *left -= n as u64;
                    if *left == 0 {
                        self.reset();
                    }
                }
            }
        }
    }

    fn reset(&mut self) {
        self.state = State::Header {
            buf: [0; HEADER_LEN],
            have: 0,
        };
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        /// A template accepts exactly its own frames, whatever their length, and what it
        /// accepts `decode` reads as the same header: any other byte anywhere but the
        /// length makes it refuse.
        #[test]
        fn a_data_template_accepts_what_decode_accepts_as_its_frame(
            ctx in any::<u32>(), src in any::<u32>(), tag in 0..=i32::MAX, code in any::<u32>(),
            len in any::<u64>(), flip in 0..HEADER_LEN, bit in 0..8u32,
        ) {
            let t = DataTemplate::new(ctx, src, tag, code).expect("a tag that is not negative");
            let h = Header::data(ctx, src, tag, len, Encoding::Raw, code);
            let mut b = h.encode();
            prop_assert_eq!(t.header(&b), Some(h));
            prop_assert_eq!(Header::decode(&b, 0).ok(), Some(h));
            b[flip] ^= 1 << bit;
            match t.header(&b) {
                // Only the length may differ: then decode agrees.
                Some(g) => {
                    prop_assert!((16..24).contains(&flip));
                    prop_assert_eq!(Header::decode(&b, 0).ok(), Some(g));
                }
                None => prop_assert!(!(16..24).contains(&flip)),
            }
        }
    }

    #[test]
    fn a_data_template_is_not_made_for_a_negative_tag_nor_takes_other_kinds() {
        assert!(DataTemplate::new(1, 2, -1, 3).is_none());
        let t = DataTemplate::new(0, 0, 0, 0).unwrap();
        assert!(t.header(&Header::control(Kind::Fin, 0).encode()).is_none());
        let serde = Header::data(0, 0, 0, 8, Encoding::Serde, 0).encode();
        assert!(t.header(&serde).is_none());
    }

    /// Feeds `bytes` to a decoder `step` bytes at a time and collects what comes out.
    fn decode_all(bytes: &[u8], step: usize, max: u64) -> Result<Vec<Decoded>> {
        let mut d = FrameDecoder::new(3, max);
        let mut pos = 0;
        let mut out = Vec::new();
        loop {
            let got = d.pump(|buf| {
                let n = buf.len().min(step).min(bytes.len() - pos);
                buf[..n].copy_from_slice(&bytes[pos..pos + n]);
                pos += n;
                Ok(n)
            })?;
            match got {
                Some(f) => out.push(f),
                None => break,
            }
        }
        assert!(!d.mid_frame() || pos == bytes.len());
        Ok(out)
    }

    fn frame(tag: i32, payload: &[u8]) -> Vec<u8> {
        let h = Header::data(7, 1, tag, payload.len() as u64, Encoding::Serde, 0);
        let mut v = h.encode().to_vec();
        v.extend_from_slice(payload);
        v
    }

    #[test]
    fn header_round_trips() {
        let h = Header {
            kind: Kind::Rts,
            ctx: 0xdead_beef,
            src: 12,
            tag: i32::MAX,
            len: RTS_PAYLOAD_LEN,
            aux: u64::MAX - 1,
            enc: Encoding::Raw,
            typecode: 0x1234_5678,
        };
        assert_eq!(Header::decode(&h.encode(), 0).unwrap(), h);
    }

    /// The bytes of a header, field by field as the wire defines them (the encoding is made
    /// of words; this pins where each field's bytes go).
    #[test]
    fn a_header_lays_out_its_fields_byte_by_byte() {
        let h = Header::data(
            0x0403_0201,
            0x1111_2222,
            0x3344_5566,
            0x0807_0605_0403_0201,
            Encoding::Raw,
            0xa1b2_c3d4,
        );
        let b = h.encode();
        assert_eq!(b[0..2], MAGIC);
        assert_eq!((b[2], b[3]), (VERSION, Kind::Data as u8));
        assert_eq!(b[4..8], 0x0403_0201u32.to_le_bytes());
        assert_eq!(b[8..12], 0x1111_2222u32.to_le_bytes());
        assert_eq!(b[12..16], 0x3344_5566i32.to_le_bytes());
        assert_eq!(b[16..24], 0x0807_0605_0403_0201u64.to_le_bytes());
        assert_eq!(b[24..32], [0; 8]);
        assert_eq!(b[32..36], [Encoding::Raw as u8, 0, 0, 0]);
        assert_eq!(b[36..40], 0xa1b2_c3d4u32.to_le_bytes());
        let words: Vec<u8> = h.words().iter().flat_map(|w| w.to_le_bytes()).collect();
        assert_eq!(words, b);
    }

    #[test]
    fn frames_split_anywhere_decode_the_same() {
        let mut stream = frame(1, b"hello");
        stream.extend(frame(2, b""));
        stream.extend(frame(3, &[9u8; 1000]));
        for step in [1, 3, 39, 40, 41, 4096] {
            let got = decode_all(&stream, step, 1 << 20).unwrap();
            assert_eq!(got.len(), 3, "step {step}");
            let tags: Vec<i32> = got
                .iter()
                .map(|d| match d {
                    Decoded::Frame(h, _) => h.tag,
                    Decoded::TooLarge(h) => -h.tag,
                })
                .collect();
            assert_eq!(tags, vec![1, 2, 3]);
            assert_eq!(
                got[0],
                Decoded::Frame(
                    Header::data(7, 1, 1, 5, Encoding::Serde, 0),
                    b"hello".to_vec()
                )
            );
        }
    }

    /// A frame a receive lands in parts is the receive's: `pump` reads nothing of it. Given
    /// back half-way, the decoder finishes it with the bytes the receive had, and the
    /// frames behind it follow as ever.
    #[test]
    fn a_frame_landing_in_parts_is_left_alone_and_given_back_whole() {
        let payload: Vec<u8> = (0..200u8).collect();
        let mut stream = frame(5, &payload);
        stream.extend(frame(6, b"next"));
        let h = Header::decode(stream[..HEADER_LEN].try_into().unwrap(), 7).unwrap();
        let mut d = FrameDecoder::new(7, 1 << 20);
        // The receive read the header and 50 bytes into its buffer.
        d.start_landing(h, 50, 0xbeef);
        assert!(d.mid_frame());
        assert_eq!(d.landing(), Some((h, 50, 0xbeef)));
        let got = d.pump(|_| panic!("read a stream a receive is landing from"));
        assert!(matches!(got, Ok(None)));
        assert!(!d.landed_more(100), "150 of 200");
        assert_eq!(d.landing(), Some((h, 150, 0xbeef)));
        // It gives up with its 150 bytes; the decoder reads the other 50 and the next frame.
        d.give_up_landing(&payload[..150]);
        assert_eq!(d.landing(), None);
        let mut pos = HEADER_LEN + 150;
        let mut frames = Vec::new();
        while let Some(f) = d
            .pump(|buf| {
                let n = buf.len().min(stream.len() - pos);
                buf[..n].copy_from_slice(&stream[pos..pos + n]);
                pos += n;
                Ok(n)
            })
            .unwrap()
        {
            frames.push(f);
        }
        assert_eq!(
            frames,
            [
                Decoded::Frame(h, payload.clone()),
                Decoded::Frame(
                    Header::data(7, 1, 6, 4, Encoding::Serde, 0),
                    b"next".to_vec()
                )
            ]
        );
        // Landed to the end instead: the decoder is between frames again.
        let mut d = FrameDecoder::new(7, 1 << 20);
        d.start_landing(h, 0, 1);
        assert!(!d.landed_more(199));
        assert!(d.landed_more(1));
        assert!(!d.mid_frame() && d.landing().is_none());
    }

    #[test]
    fn oversized_payload_is_reported_and_skipped() {
        let mut stream = frame(1, &[1u8; 100]);
        stream.extend(frame(2, b"ok"));
        let got = decode_all(&stream, 7, 10).unwrap();
        assert!(matches!(got[0], Decoded::TooLarge(h) if h.tag == 1 && h.len == 100));
        assert!(matches!(&got[1], Decoded::Frame(h, p) if h.tag == 2 && p == b"ok"));
    }

    #[test]
    fn garbage_is_malformed_not_a_panic() {
        let err = decode_all(&[0xffu8; 64], 64, 1 << 20).unwrap_err();
        assert!(matches!(err, Error::Malformed { rank: 3, .. }), "{err}");
        let mut bad_kind = frame(1, b"x");
        bad_kind[3] = 99;
        assert!(matches!(
            decode_all(&bad_kind, 5, 100),
            Err(Error::Malformed { .. })
        ));
        let mut bad_rts = Header::control(Kind::Rts, 1).encode();
        bad_rts[16] = 200;
        assert!(matches!(
            decode_all(&bad_rts, 40, 1 << 40),
            Err(Error::Malformed { .. })
        ));
        // A clear-to-send carries exactly its three words.
        let mut cts = Header::control(Kind::Cts, 9);
        cts.len = CTS_PAYLOAD_LEN;
        let h = Header::decode(&cts.encode(), 0).expect("a whole Cts header");
        assert_eq!((h.kind, h.aux, h.len), (Kind::Cts, 9, 24));
        cts.len = 16;
        let err = Header::decode(&cts.encode(), 2).unwrap_err();
        assert!(
            err.to_string().contains("Cts frame with a 16-byte payload"),
            "{err}"
        );
    }

    #[test]
    fn truncated_stream_is_mid_frame() {
        let stream = frame(1, b"hello world");
        let mut d = FrameDecoder::new(0, 100);
        let mut fed = false;
        let r = d
            .pump(|buf| {
                if fed {
                    return Ok(0);
                }
                fed = true;
                let n = 45.min(buf.len());
                buf[..n].copy_from_slice(&stream[..n]);
                Ok(n)
            })
            .unwrap();
        assert!(r.is_none());
        assert!(d.mid_frame());
    }

    #[test]
    fn random_bytes_never_panic() {
        // A small xorshift generator: deterministic, no dependency.
        let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
        for _ in 0..2000 {
            let mut bytes = Vec::new();
            let n = (x % 200) as usize;
            for _ in 0..n {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                bytes.push(x as u8);
            }
            if bytes.len() >= 3 && x.is_multiple_of(2) {
                bytes[0] = b'R';
                bytes[1] = b'K';
                bytes[2] = VERSION;
            }
            let _ = decode_all(&bytes, 1 + (x % 50) as usize, 1 << 16);
        }
    }
}
