//! The one frame format of kith's request-response protocols (`/kith/dm`, `/kith/mailbox`,
//! `/kith/sync`): an unsigned-varint length, then that many bytes.
//!
//! Written by hand rather than with `unsigned-varint`'s `aio` reader or an `asynchronous-codec`
//! framed stream: request-response hands the codec one stream per frame, so a framed stream buys
//! nothing; the reader must refuse an oversized length before it allocates and report every
//! refusal the same way (the `kith_dm_frames_rejected_total` metric counts them); and these forty
//! lines are tested here. Tests, the testkit's raw peer and kith-bench's baselines use these same
//! functions, so there is one implementation of the framing in the workspace.

use std::io;

use futures::{AsyncRead, AsyncReadExt as _, AsyncWrite, AsyncWriteExt as _};

/// Reads one frame of at most `max` bytes. A longer announced length, a length prefix longer than
/// ten bytes or a stream that ends early is an error, raised before the body is buffered.
pub async fn read_frame<T: AsyncRead + Unpin + Send>(
    io: &mut T,
    max: usize,
) -> io::Result<Vec<u8>> {
    let mut len: u64 = 0;
    let mut shift = 0;
    loop {
        let mut byte = [0u8; 1];
        io.read_exact(&mut byte).await?;
        len |= u64::from(byte[0] & 0x7f) << shift;
        if byte[0] & 0x80 == 0 {
            break;
        }
        shift += 7;
        if shift > 63 {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                "frame length varint too long",
            ));
        }
    }
    let len = usize::try_from(len).unwrap_or(usize::MAX);
    if len > max {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            format!("frame of {len} bytes exceeds the {max}-byte limit"),
        ));
    }
    let mut buf = vec![0u8; len];
    io.read_exact(&mut buf).await?;
    Ok(buf)
}

/// Writes one frame and closes the stream (one frame per stream, as request-response wants);
/// a body over `max` bytes is refused without writing anything.
pub async fn write_frame<T: AsyncWrite + Unpin + Send>(
    io: &mut T,
    bytes: &[u8],
    max: usize,
) -> io::Result<()> {
    if bytes.len() > max {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!(
                "frame of {} bytes exceeds the {max}-byte limit",
                bytes.len()
            ),
        ));
    }
    let prefix = varint_prefix(bytes.len());
    io.write_all(&prefix).await?;
    io.write_all(bytes).await?;
    io.close().await
}

/// Encodes a frame the way the codec writes it (for tests that speak the protocol by hand).
pub fn encode_frame(bytes: &[u8]) -> Vec<u8> {
    let mut out = varint_prefix(bytes.len());
    out.extend_from_slice(bytes);
    out
}

/// The unsigned-varint length prefix of a frame.
fn varint_prefix(len: usize) -> Vec<u8> {
    let mut out = Vec::with_capacity(10);
    write_varint(len as u64, &mut out);
    out
}

/// Appends `n` as an unsigned varint (7 bits a byte, low first): a frame's length prefix, or a
/// hostile one (a length over the cap, a prefix that never ends) for tests that write frames by
/// hand.
pub fn write_varint(mut n: u64, out: &mut Vec<u8>) {
    loop {
        let mut byte = (n & 0x7f) as u8;
        n >>= 7;
        if n != 0 {
            byte |= 0x80;
        }
        out.push(byte);
        if n == 0 {
            return;
        }
    }
}

#[cfg(test)]
mod tests {
    use futures::io::Cursor;

    use super::*;

    #[tokio::test]
    async fn frames_round_trip_and_caps_hold() {
        let mut buf = Cursor::new(Vec::new());
        write_frame(&mut buf, b"hello", 16).await.unwrap();
        assert_eq!(buf.get_ref(), &encode_frame(b"hello"));
        let mut read = Cursor::new(buf.into_inner());
        assert_eq!(read_frame(&mut read, 16).await.unwrap(), b"hello");

        // Oversized on write and on read.
        let mut sink = Cursor::new(Vec::new());
        assert!(write_frame(&mut sink, &[0u8; 17], 16).await.is_err());
        let mut big = Cursor::new(encode_frame(&[0u8; 300]));
        let err = read_frame(&mut big, 256).await.unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::InvalidData);

        // Truncated body and endless varint.
        let mut short = Cursor::new(vec![10, 1, 2]);
        assert!(read_frame(&mut short, 256).await.is_err());
        let mut endless = Cursor::new(vec![0xff; 20]);
        assert!(read_frame(&mut endless, 256).await.is_err());
    }

    #[test]
    fn length_prefix_is_a_varint() {
        let frame = encode_frame(&[7u8; 300]);
        assert_eq!(&frame[..2], &[0xac, 0x02]);
        assert_eq!(frame.len(), 302);
    }
}
