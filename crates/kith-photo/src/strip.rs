//! "Send original": the file's own bytes, not re-encoded, with every metadata block removed.
//!
//! Each format keeps an allow-list of structural blocks (pixels, tables, the ICC profile) and
//! drops everything else, so metadata kinds nobody thought of are dropped too. When the source
//! said the photo is rotated, a minimal EXIF block holding only the orientation tag is written
//! back (see [`orientation_exif`]) so viewers still show it the right way up.

use img_parts::{
    Bytes, ImageEXIF as _,
    jpeg::{Jpeg, JpegSegment},
    png::Png,
    webp::WebP,
};

use crate::{PhotoError, PhotoKind};

/// JPEG markers (ITU T.81 table B.1).
mod marker {
    pub(super) const APP0: u8 = 0xE0;
    pub(super) const APP2: u8 = 0xE2;
    pub(super) const APP14: u8 = 0xEE;
    pub(super) const APP15: u8 = 0xEF;
    pub(super) const COM: u8 = 0xFE;
    pub(super) const EOI: u8 = 0xD9;
    pub(super) const RST0: u8 = 0xD0;
    pub(super) const RST7: u8 = 0xD7;
}

/// The minimal big-endian TIFF ("EXIF") holding only the orientation tag, 26 bytes:
///
/// | offset | bytes | value |
/// | --- | --- | --- |
/// | 0 | 2 | `MM`: big-endian byte order |
/// | 2 | 2 | `0x002A`: TIFF magic |
/// | 4 | 4 | `8`: offset of IFD0 |
/// | 8 | 2 | `1`: IFD0 has one entry |
/// | 10 | 2 | `0x0112`: tag Orientation |
/// | 12 | 2 | `3`: type SHORT |
/// | 14 | 4 | `1`: one value |
/// | 18 | 2 | the orientation, 1..=8 |
/// | 20 | 2 | `0`: padding of the 4-byte value field |
/// | 22 | 4 | `0`: no next IFD |
///
/// A JPEG carries it in APP1 after `Exif\0\0`; PNG `eXIf` and WebP `EXIF` carry it bare.
pub fn orientation_exif(orientation: u8) -> [u8; 26] {
    let mut tiff = [0u8; 26];
    tiff[0..2].copy_from_slice(b"MM");
    tiff[2..4].copy_from_slice(&0x002A_u16.to_be_bytes());
    tiff[4..8].copy_from_slice(&8_u32.to_be_bytes());
    tiff[8..10].copy_from_slice(&1_u16.to_be_bytes());
    tiff[10..12].copy_from_slice(&0x0112_u16.to_be_bytes());
    tiff[12..14].copy_from_slice(&3_u16.to_be_bytes());
    tiff[14..18].copy_from_slice(&1_u32.to_be_bytes());
    tiff[18..20].copy_from_slice(&u16::from(orientation).to_be_bytes());
    tiff
}

/// `input` with its metadata removed; `orientation` (EXIF value) is written back when not 1.
pub(crate) fn strip(input: &[u8], kind: PhotoKind, orientation: u8) -> Result<Vec<u8>, PhotoError> {
    let exif = (orientation != 1).then(|| Bytes::copy_from_slice(&orientation_exif(orientation)));
    let container = |source| PhotoError::Container { kind, source };
    let bytes = Bytes::copy_from_slice(input);
    match kind {
        PhotoKind::Jpeg => {
            let mut jpeg = Jpeg::from_bytes(bytes).map_err(container)?;
            jpeg.segments_mut()
                .retain(|s| keep_jpeg(s.marker(), s.contents()));
            // The last segment (the first scan) holds everything after its header: the scans,
            // EOI, and whatever trails it, such as the second image of an MPF file (with its own
            // EXIF). Keep only the primary image, minus any APPn/COM between progressive scans.
            let scan_last = jpeg.segments().last().is_some_and(JpegSegment::has_entropy);
            if let Some(last) = jpeg.segments_mut().pop_if(|_| scan_last) {
                let tail = primary_scans(&entropy_bytes(&last));
                jpeg.segments_mut().push(JpegSegment::new_with_entropy(
                    last.marker(),
                    last.contents().clone(),
                    Bytes::from(tail),
                ));
            }
            jpeg.set_exif(exif);
            Ok(jpeg.encoder().bytes().to_vec())
        }
        PhotoKind::Png => {
            let mut png = Png::from_bytes(bytes).map_err(container)?;
            png.chunks_mut().retain(|c| keep_png(c.kind()));
            png.set_exif(exif);
            Ok(png.encoder().bytes().to_vec())
        }
        PhotoKind::WebP => {
            let mut webp = WebP::from_bytes(bytes).map_err(container)?;
            webp.chunks_mut().retain(|c| keep_webp(c.id()));
            // Also rewrites the VP8X flags to match the chunks left.
            webp.set_exif(exif);
            Ok(webp.encoder().bytes().to_vec())
        }
        PhotoKind::Gif => Err(PhotoError::OriginalUnsupported { kind }),
    }
}

/// JPEG segments that describe pixels: frame, tables, scans, the ICC profile, the Adobe colour
/// transform, and a JFIF header without an embedded thumbnail.
fn keep_jpeg(m: u8, contents: &[u8]) -> bool {
    match m {
        marker::APP0 => contents.starts_with(b"JFIF\0") && contents.len() == 14,
        marker::APP2 => contents.starts_with(b"ICC_PROFILE\0"),
        marker::APP14 => contents.starts_with(b"Adobe"),
        marker::APP0..=marker::APP15 | marker::COM => false,
        _ => true,
    }
}

/// PNG chunks that affect display; text, time, EXIF and unknown private chunks are dropped.
fn keep_png(kind: [u8; 4]) -> bool {
    matches!(
        &kind,
        b"IHDR"
            | b"PLTE"
            | b"IDAT"
            | b"IEND"
            | b"tRNS"
            | b"gAMA"
            | b"cHRM"
            | b"sRGB"
            | b"iCCP"
            | b"cICP"
            | b"mDCV"
            | b"cLLI"
            | b"sBIT"
            | b"bKGD"
            | b"pHYs"
            | b"acTL"
            | b"fcTL"
            | b"fdAT"
    )
}

/// WebP chunks that affect display; `EXIF`, `XMP ` and unknown chunks are dropped.
fn keep_webp(id: [u8; 4]) -> bool {
    matches!(
        &id,
        b"VP8 " | b"VP8L" | b"VP8X" | b"ALPH" | b"ANIM" | b"ANMF" | b"ICCP"
    )
}

/// The bytes after the first scan header up to and including EOI, with APPn and COM segments
/// between progressive scans removed and anything after EOI dropped.
///
/// Entropy-coded data never holds a bare 0xFF: it is followed by 0x00 (stuffing), a restart
/// marker, or another 0xFF (fill). Any other marker starts a segment with a length, or is EOI.
fn primary_scans(data: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(data.len());
    let mut i = 0;
    while i < data.len() {
        let byte = data[i];
        if byte != 0xFF || i + 1 >= data.len() {
            out.push(byte);
            i += 1;
            continue;
        }
        let next = data[i + 1];
        match next {
            0x00 | 0xFF | marker::RST0..=marker::RST7 => {
                out.push(byte);
                i += 1;
            }
            marker::EOI => {
                out.extend_from_slice(&[0xFF, marker::EOI]);
                return out;
            }
            m => {
                let len = data
                    .get(i + 2..i + 4)
                    .map_or(0, |l| usize::from(u16::from_be_bytes([l[0], l[1]])));
                let end = (i + 2 + len).min(data.len());
                if !(matches!(m, marker::APP0..=marker::APP15 | marker::COM)) {
                    out.extend_from_slice(&data[i..end]);
                }
                i = end.max(i + 2);
            }
        }
    }
    // Truncated file without EOI: keep what there was, as the source did.
    out
}

/// The entropy bytes of a scan segment (everything after its header), empty for others.
///
/// img-parts exposes them only through encoding: marker (2) + length (2) + contents + entropy.
fn entropy_bytes(segment: &JpegSegment) -> Bytes {
    let encoded = segment.clone().encoder().bytes();
    let header = 4 + segment.contents().len();
    if encoded.len() > header {
        encoded.slice(header..)
    } else {
        Bytes::new()
    }
}
