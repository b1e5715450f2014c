//! kith-photo: what happens to a photo before it leaves the device. Bytes in, bytes out; no I/O.
//!
//! Photos leak: a phone's JPEG carries GPS coordinates, the camera's serial number, the time
//! and often an XMP packet with editing history. So the default path never copies a metadata
//! block, it decodes and re-encodes the pixels:
//!
//! 1. [`sniff`] tells a photo (JPEG, PNG, WebP, GIF) from any other file by its magic bytes.
//! 2. [`process`] decodes under a pixel limit (a 100 kB file can declare 100 000² pixels),
//!    applies the EXIF orientation to the pixels, applies the filter, and re-encodes with no
//!    EXIF, XMP or comment (only the ICC profile is carried over, so wide-gamut colours stay
//!    right). It also makes a ~320 px JPEG thumbnail and a ThumbHash placeholder for the message.
//! 3. [`original`] ("send original") keeps the file's own bytes, not re-encoded, but removes
//!    every metadata block except the ICC profile and writes back a 26-byte EXIF holding only
//!    the orientation, so the photo still displays the right way up.
//!
//! Filters ([`presets`], [`matrix_for`]) are 4×5 colour matrices in the layout of SVG
//! `feColorMatrix`, applied as that primitive defines them (non-premultiplied 0..1 values,
//! clamped, in sRGB), so the web app's preview with the same numbers shows what is sent. The web
//! must set `color-interpolation-filters="sRGB"`: browsers default to `linearRGB`.

mod filter;
mod strip;

#[cfg(test)]
mod tests;

use std::io::Cursor;

use image::{
    DynamicImage, ImageDecoder, ImageEncoder as _, ImageFormat, ImageReader, Limits,
    codecs::{jpeg::JpegEncoder, png::PngEncoder},
    metadata::Orientation,
};

pub use crate::{
    filter::{
        ADJUST_MAX, Adjust, IDENTITY, Matrix, Preset, apply_pixel, brightness, compose, contrast,
        matrix_for, presets, saturate,
    },
    strip::orientation_exif,
};

/// The image formats kith treats as photos; anything else is sent as a plain file.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum PhotoKind {
    /// JPEG (`FF D8 FF`).
    Jpeg,
    /// PNG (`89 P N G \r \n 1A \n`).
    Png,
    /// WebP (`RIFF` …. `WEBP`).
    WebP,
    /// GIF (`GIF87a` / `GIF89a`).
    Gif,
}

impl PhotoKind {
    /// The MIME type of a file of this kind.
    pub fn mime(self) -> &'static str {
        match self {
            Self::Jpeg => "image/jpeg",
            Self::Png => "image/png",
            Self::WebP => "image/webp",
            Self::Gif => "image/gif",
        }
    }

    fn format(self) -> ImageFormat {
        match self {
            Self::Jpeg => ImageFormat::Jpeg,
            Self::Png => ImageFormat::Png,
            Self::WebP => ImageFormat::WebP,
            Self::Gif => ImageFormat::Gif,
        }
    }
}

impl std::fmt::Display for PhotoKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Self::Jpeg => "JPEG",
            Self::Png => "PNG",
            Self::WebP => "WebP",
            Self::Gif => "GIF",
        })
    }
}

/// The kind of photo `bytes` is, by its magic bytes; `None` means "send it as a file".
pub fn sniff(bytes: &[u8]) -> Option<PhotoKind> {
    if bytes.starts_with(&[0xFF, 0xD8, 0xFF]) {
        Some(PhotoKind::Jpeg)
    } else if bytes.starts_with(b"\x89PNG\r\n\x1a\n") {
        Some(PhotoKind::Png)
    } else if bytes.len() >= 12 && bytes.starts_with(b"RIFF") && &bytes[8..12] == b"WEBP" {
        Some(PhotoKind::WebP)
    } else if bytes.starts_with(b"GIF87a") || bytes.starts_with(b"GIF89a") {
        Some(PhotoKind::Gif)
    } else {
        None
    }
}

/// Why a photo could not be processed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum PhotoError {
    /// The bytes are not a photo format kith knows.
    #[error("not a JPEG, PNG, WebP or GIF image; send it as a file instead")]
    NotAnImage,
    /// The image declares more pixels than allowed (a decompression bomb, or simply too big).
    #[error(
        "the image is {width}×{height} ({} megapixels), more than the {} megapixel limit; scale it down first",
        u64::from(*width) * u64::from(*height) / 1_000_000,
        max_pixels / 1_000_000
    )]
    TooLarge {
        /// Declared width.
        width: u32,
        /// Declared height.
        height: u32,
        /// The limit in pixels.
        max_pixels: u64,
    },
    /// The decoder needed more memory than the limits allow.
    #[error("decoding the {kind} image needs more memory than allowed: {source}")]
    Limit {
        /// The format being decoded.
        kind: PhotoKind,
        /// The decoder's report.
        source: image::ImageError,
    },
    /// The file looks like a photo but cannot be decoded (damaged, truncated, unsupported).
    #[error("the {kind} image is damaged or unsupported: {source}; send it as a file instead")]
    Decode {
        /// The format sniffed from the magic bytes.
        kind: PhotoKind,
        /// The decoder's report.
        source: image::ImageError,
    },
    /// Encoding the output failed (a bug or an unsupported pixel format).
    #[error("cannot encode the {what}: {source}")]
    Encode {
        /// Which output: "photo" or "thumbnail".
        what: &'static str,
        /// The encoder's report.
        source: image::ImageError,
    },
    /// The container could not be parsed for lossless stripping.
    #[error(
        "cannot read the {kind} file's structure to strip its metadata: {source}; send it without --original"
    )]
    Container {
        /// The format sniffed from the magic bytes.
        kind: PhotoKind,
        /// img-parts' report.
        source: img_parts::Error,
    },
    /// "Send original" is not available for this format.
    #[error("sending the original is not supported for {kind}; send it without --original")]
    OriginalUnsupported {
        /// The format.
        kind: PhotoKind,
    },
    /// The filter name is not a preset.
    #[error("unknown filter {name:?}; valid filters: {valid}")]
    UnknownFilter {
        /// The name asked for.
        name: String,
        /// Every preset name, comma-separated.
        valid: String,
    },
    /// A brightness, contrast or saturation factor is out of range.
    #[error("{field} must be between 0 and {ADJUST_MAX} (1 = unchanged), got {value}")]
    InvalidAdjust {
        /// Which factor.
        field: &'static str,
        /// The value given.
        value: f32,
    },
}

/// Default pixel limit: 100 megapixels (a 108 MP phone sensor is the largest common source).
pub const DEFAULT_MAX_PIXELS: u64 = 100_000_000;
/// Default JPEG quality of the re-encoded photo.
pub const DEFAULT_JPEG_QUALITY: u8 = 85;
/// Default long side of the thumbnail, pixels.
pub const DEFAULT_THUMBNAIL_SIZE: u32 = 320;
/// JPEG quality of thumbnails: they are previews, and travel inside the message.
const THUMBNAIL_QUALITY: u8 = 70;
/// ThumbHash accepts at most 100×100 input.
const PLACEHOLDER_SIZE: u32 = 100;

/// How [`process`] treats a photo.
#[derive(Debug, Clone, PartialEq)]
pub struct PhotoOptions {
    /// Preset name (see [`presets`]); default none.
    pub filter: Option<String>,
    /// Brightness, contrast, saturation on top of the preset; default unchanged.
    pub adjust: Adjust,
    /// Largest width × height decoded; default [`DEFAULT_MAX_PIXELS`].
    pub max_pixels: u64,
    /// Quality of JPEG output, 1..=100; default [`DEFAULT_JPEG_QUALITY`].
    pub jpeg_quality: u8,
    /// Long side of the thumbnail; default [`DEFAULT_THUMBNAIL_SIZE`].
    pub thumbnail_size: u32,
}

impl Default for PhotoOptions {
    fn default() -> Self {
        Self {
            filter: None,
            adjust: Adjust::default(),
            max_pixels: DEFAULT_MAX_PIXELS,
            jpeg_quality: DEFAULT_JPEG_QUALITY,
            thumbnail_size: DEFAULT_THUMBNAIL_SIZE,
        }
    }
}

impl PhotoOptions {
    /// With the preset `name`.
    pub fn with_filter(mut self, name: impl Into<String>) -> Self {
        self.filter = Some(name.into());
        self
    }

    /// With brightness/contrast/saturation `adjust`.
    pub fn with_adjust(mut self, adjust: Adjust) -> Self {
        self.adjust = adjust;
        self
    }

    /// With a pixel limit of `max_pixels`.
    pub fn with_max_pixels(mut self, max_pixels: u64) -> Self {
        self.max_pixels = max_pixels;
        self
    }
}

/// A photo ready to be encrypted and sent, with what the chat message carries about it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Processed {
    /// The photo file.
    pub bytes: Vec<u8>,
    /// Its MIME type.
    pub mime: &'static str,
    /// Displayed width (after orientation).
    pub width: u32,
    /// Displayed height (after orientation).
    pub height: u32,
    /// A JPEG of at most [`PhotoOptions::thumbnail_size`] on the long side.
    pub thumbnail: Vec<u8>,
    /// The thumbnail's MIME type.
    pub thumbnail_mime: &'static str,
    /// ThumbHash bytes (about 25) that a receiver renders as a blurred placeholder.
    pub placeholder: Vec<u8>,
}

/// A decoded, oriented photo with what the encoders need to know about its source.
struct Decoded {
    image: DynamicImage,
    orientation: Orientation,
    icc: Option<Vec<u8>>,
}

/// Decodes `input` of `kind` under `max_pixels`, and turns it the right way up.
fn decode(input: &[u8], kind: PhotoKind, max_pixels: u64) -> Result<Decoded, PhotoError> {
    let decode_err = |source: image::ImageError| match source {
        image::ImageError::Limits(_) => PhotoError::Limit { kind, source },
        source => PhotoError::Decode { kind, source },
    };
    let mut reader = ImageReader::with_format(Cursor::new(input), kind.format());
    let mut limits = Limits::default();
    // Room for the largest allowed image at 16 bits per channel with alpha.
    limits.max_alloc = Some(max_pixels.saturating_mul(8).max(64 * 1024 * 1024));
    reader.limits(limits);
    let mut decoder = reader.into_decoder().map_err(decode_err)?;
    let (width, height) = decoder.dimensions();
    if u64::from(width) * u64::from(height) > max_pixels {
        return Err(PhotoError::TooLarge {
            width,
            height,
            max_pixels,
        });
    }
    // A broken EXIF block must not stop the photo: show it as stored.
    let orientation = decoder.orientation().unwrap_or(Orientation::NoTransforms);
    let icc = decoder.icc_profile().ok().flatten();
    let mut image = DynamicImage::from_decoder(decoder).map_err(decode_err)?;
    image.apply_orientation(orientation);
    Ok(Decoded {
        image,
        orientation,
        icc,
    })
}

/// The default send path: decode, orient, filter, re-encode without metadata, thumbnail.
///
/// Output format: PNG when the image has an alpha channel, and for GIF (only the first frame
/// of an animation is kept, re-encoded as PNG); JPEG at [`PhotoOptions::jpeg_quality`] otherwise.
pub fn process(input: &[u8], options: &PhotoOptions) -> Result<Processed, PhotoError> {
    let kind = sniff(input).ok_or(PhotoError::NotAnImage)?;
    // Resolve the filter before the expensive decode, so a typo fails fast.
    let matrix = matrix_for(options.filter.as_deref(), options.adjust)?;
    let decoded = decode(input, kind, options.max_pixels)?;
    let image = filter::apply(decoded.image, &matrix);
    let as_png = kind == PhotoKind::Gif || image.color().has_alpha();
    let (bytes, mime) = if as_png {
        (encode_png(&image, decoded.icc)?, "image/png")
    } else {
        (
            encode_jpeg(&image, options.jpeg_quality, decoded.icc, "photo")?,
            "image/jpeg",
        )
    };
    let (thumbnail, placeholder) = previews(&image, options.thumbnail_size)?;
    Ok(Processed {
        bytes,
        mime,
        width: image.width(),
        height: image.height(),
        thumbnail,
        thumbnail_mime: "image/jpeg",
        placeholder,
    })
}

/// "Send original": `input`'s own bytes, not re-encoded, with every metadata block removed but
/// the ICC profile and the orientation (see [`orientation_exif`]). JPEG, PNG and WebP only.
///
/// The photo is still decoded (under [`DEFAULT_MAX_PIXELS`]) for its displayed size, thumbnail
/// and placeholder.
pub fn original(input: &[u8], kind: PhotoKind) -> Result<Processed, PhotoError> {
    if kind == PhotoKind::Gif {
        return Err(PhotoError::OriginalUnsupported { kind });
    }
    let decoded = decode(input, kind, DEFAULT_MAX_PIXELS)?;
    let bytes = strip::strip(input, kind, decoded.orientation.to_exif())?;
    let (thumbnail, placeholder) = previews(&decoded.image, DEFAULT_THUMBNAIL_SIZE)?;
    Ok(Processed {
        bytes,
        mime: kind.mime(),
        width: decoded.image.width(),
        height: decoded.image.height(),
        thumbnail,
        thumbnail_mime: "image/jpeg",
        placeholder,
    })
}

/// The thumbnail (JPEG, long side ≤ `size`, never enlarged) and the ThumbHash placeholder.
fn previews(image: &DynamicImage, size: u32) -> Result<(Vec<u8>, Vec<u8>), PhotoError> {
    let thumb = fit(image, size.max(1));
    let thumbnail = encode_jpeg(&flatten(&thumb), THUMBNAIL_QUALITY, None, "thumbnail")?;
    let small = thumb
        .thumbnail(PLACEHOLDER_SIZE, PLACEHOLDER_SIZE)
        .into_rgba8();
    let placeholder = thumbhash::rgba_to_thumb_hash(
        small.width() as usize,
        small.height() as usize,
        small.as_raw(),
    );
    Ok((thumbnail, placeholder))
}

/// `image` scaled to fit `size`×`size`, aspect kept; never enlarged (`thumbnail` would).
fn fit(image: &DynamicImage, size: u32) -> DynamicImage {
    if image.width().max(image.height()) <= size {
        image.clone()
    } else {
        image.thumbnail(size, size)
    }
}

/// RGB8 for JPEG: transparent pixels become white rather than whatever colour they hid.
fn flatten(image: &DynamicImage) -> DynamicImage {
    if !image.color().has_alpha() {
        return DynamicImage::ImageRgb8(image.to_rgb8());
    }
    let rgba = image.to_rgba8();
    let rgb = image::RgbImage::from_fn(rgba.width(), rgba.height(), |x, y| {
        let [r, g, b, a] = rgba.get_pixel(x, y).0;
        let over = |c: u8| {
            let (c, a) = (u16::from(c), u16::from(a));
            // c·a + 255·(255 − a), over 255, rounded; always ≤ 255.
            ((c * a + 255 * (255 - a) + 127) / 255) as u8
        };
        image::Rgb([over(r), over(g), over(b)])
    });
    DynamicImage::ImageRgb8(rgb)
}

fn encode_jpeg(
    image: &DynamicImage,
    quality: u8,
    icc: Option<Vec<u8>>,
    what: &'static str,
) -> Result<Vec<u8>, PhotoError> {
    let rgb = flatten(image);
    let mut out = Vec::new();
    let mut encoder = JpegEncoder::new_with_quality(&mut out, quality.clamp(1, 100));
    if let Some(icc) = icc {
        // An encoder that cannot carry a profile still writes correct (if duller) pixels.
        let _ = encoder.set_icc_profile(icc);
    }
    encoder
        .write_image(
            rgb.as_bytes(),
            rgb.width(),
            rgb.height(),
            rgb.color().into(),
        )
        .map_err(|source| PhotoError::Encode { what, source })?;
    Ok(out)
}

fn encode_png(image: &DynamicImage, icc: Option<Vec<u8>>) -> Result<Vec<u8>, PhotoError> {
    // 8 bits per channel: the filter works on 8-bit values and photos gain nothing from 16.
    let image = if image.color().has_alpha() {
        DynamicImage::ImageRgba8(image.to_rgba8())
    } else {
        DynamicImage::ImageRgb8(image.to_rgb8())
    };
    let mut out = Vec::new();
    let mut encoder = PngEncoder::new(&mut out);
    if let Some(icc) = icc {
        let _ = encoder.set_icc_profile(icc);
    }
    encoder
        .write_image(
            image.as_bytes(),
            image.width(),
            image.height(),
            image.color().into(),
        )
        .map_err(|source| PhotoError::Encode {
            what: "photo",
            source,
        })?;
    Ok(out)
}
