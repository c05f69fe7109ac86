//! Frames: `len: u32 LE | crc32c: u32 LE | body[len]`, the CRC covering `body`. The only code
//! that lays out or checks a frame, whether it is read from memory ([`read_frame`]) or a file
//! (the scan reads a header, asks [`body_len`], then checks the whole with [`read_frame`]).

use super::PUT_SEQ_OFFSET;

/// Bytes of a frame's header.
pub const FRAME_HEADER: usize = 8;
/// Largest frame body accepted when reading (a guard against reading garbage lengths).
pub const MAX_FRAME: usize = 64 * 1024 * 1024;

/// Set the `seq` of an encoded PUT frame and fix its checksum.
pub fn set_put_seq(frame: &mut [u8], seq: u64) {
    if let Some(slot) = frame.get_mut(PUT_SEQ_OFFSET..PUT_SEQ_OFFSET + 8) {
        slot.copy_from_slice(&seq.to_le_bytes());
        let crc = crc32fast::hash(&frame[FRAME_HEADER..]);
        frame[4..8].copy_from_slice(&crc.to_le_bytes());
    }
}

/// Wrap `body` in a frame.
pub fn frame(body: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(FRAME_HEADER + body.len());
    out.extend_from_slice(&(body.len() as u32).to_le_bytes());
    out.extend_from_slice(&crc32fast::hash(body).to_le_bytes());
    out.extend_from_slice(body);
    out
}

/// The body length a frame header gives, when it is in range (1 to [`MAX_FRAME`]): the one
/// check of a length, for a frame read from memory or from a file.
pub fn body_len(header: &[u8; FRAME_HEADER]) -> Option<usize> {
    let len = u32::from_le_bytes([header[0], header[1], header[2], header[3]]) as usize;
    (1..=MAX_FRAME).contains(&len).then_some(len)
}

/// The next frame of `buf`: its body and total length, or why not.
pub fn read_frame(buf: &[u8]) -> Result<(&[u8], usize), FrameError> {
    let Some(header) = buf.first_chunk::<FRAME_HEADER>() else {
        return Err(FrameError::Short);
    };
    let len = body_len(header).ok_or(FrameError::Corrupt)?;
    let crc = u32::from_le_bytes([buf[4], buf[5], buf[6], buf[7]]);
    let Some(body) = buf.get(FRAME_HEADER..FRAME_HEADER + len) else {
        return Err(FrameError::Short);
    };
    if crc32fast::hash(body) != crc {
        return Err(FrameError::Corrupt);
    }
    Ok((body, FRAME_HEADER + len))
}

/// Why a frame could not be read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FrameError {
    /// The buffer ends inside the frame (a torn write).
    Short,
    /// Length out of range or checksum mismatch.
    Corrupt,
}
