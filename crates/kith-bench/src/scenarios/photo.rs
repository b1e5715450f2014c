//! `photo.process`: what sending a phone photo costs the node, beside the `image` crate alone.
//!
//! The input is a generated 12-megapixel JPEG (4000×3000, a gradient plus noise so it does not
//! compress to nothing) carrying an EXIF block with orientation 6 and GPS tags, as a phone's.
//! kith runs `kith_photo::process` with the `vivid` filter: decode under the pixel limit, orient,
//! filter, re-encode without metadata, 320 px thumbnail and ThumbHash. The baseline is
//! `image::load_from_memory` then a JPEG encode at the same quality: the floor any re-encoding
//! path pays. Iterations alternate kith and baseline so both see the same machine state.

use std::time::Instant;

use anyhow::Context as _;
use image::{ImageEncoder as _, RgbImage, codecs::jpeg::JpegEncoder};
use img_parts::{Bytes, ImageEXIF as _, jpeg::Jpeg};
use indicatif::ProgressBar;

use crate::report::{Figures, Scenario, percentile, round_to};

/// Size of the scenario.
#[derive(Debug, Clone)]
pub(crate) struct Params {
    /// Photo width.
    pub(crate) width: u32,
    /// Photo height.
    pub(crate) height: u32,
    /// Timed runs of each side.
    pub(crate) iterations: usize,
}

impl Params {
    /// Full-run or `--quick` defaults: the same 12 MP photo, fewer runs.
    pub(crate) fn new(quick: bool) -> Self {
        Self {
            width: 4000,
            height: 3000,
            iterations: if quick { 3 } else { 20 },
        }
    }
}

/// A little-endian TIFF with Orientation = 6 and a GPS IFD holding a latitude.
fn phone_exif() -> Vec<u8> {
    let mut t = Vec::with_capacity(96);
    let entry = |t: &mut Vec<u8>, tag: u16, ty: u16, count: u32, value: [u8; 4]| {
        t.extend_from_slice(&tag.to_le_bytes());
        t.extend_from_slice(&ty.to_le_bytes());
        t.extend_from_slice(&count.to_le_bytes());
        t.extend_from_slice(&value);
    };
    t.extend_from_slice(b"II");
    t.extend_from_slice(&42u16.to_le_bytes());
    t.extend_from_slice(&8u32.to_le_bytes());
    // IFD0 at 8: two entries, ends at 38; the GPS IFD at 38: one entry, ends at 56.
    t.extend_from_slice(&2u16.to_le_bytes());
    entry(&mut t, 0x0112, 3, 1, [6, 0, 0, 0]);
    entry(&mut t, 0x8825, 4, 1, 38u32.to_le_bytes());
    t.extend_from_slice(&0u32.to_le_bytes());
    t.extend_from_slice(&1u16.to_le_bytes());
    entry(&mut t, 0x0002, 5, 3, 56u32.to_le_bytes());
    t.extend_from_slice(&0u32.to_le_bytes());
    for (num, den) in [(51u32, 1u32), (30, 1), (1234, 100)] {
        t.extend_from_slice(&num.to_le_bytes());
        t.extend_from_slice(&den.to_le_bytes());
    }
    t
}

/// The generated photo: gradient plus xorshift noise, JPEG quality 90, phone-like EXIF.
fn photo(params: &Params) -> anyhow::Result<Vec<u8>> {
    let mut state = 0x9E37_79B9_7F4A_7C15_u64;
    let (w, h) = (params.width, params.height);
    let img = RgbImage::from_fn(w, h, |x, y| {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        let noise = (state & 0x3F) as u32;
        let r = (x * 200 / w.max(1)) + noise / 2;
        let g = (y * 200 / h.max(1)) + (noise >> 1);
        let b = ((x + y) % 160) + noise;
        image::Rgb([r.min(255) as u8, g.min(255) as u8, b.min(255) as u8])
    });
    let mut jpeg = Vec::new();
    JpegEncoder::new_with_quality(&mut jpeg, 90)
        .write_image(img.as_raw(), w, h, image::ExtendedColorType::Rgb8)
        .context("encoding the generated photo")?;
    let mut parts =
        Jpeg::from_bytes(Bytes::from(jpeg)).context("re-reading the generated photo")?;
    parts.set_exif(Some(Bytes::from(phone_exif())));
    Ok(parts.encoder().bytes().to_vec())
}

/// Milliseconds since `t`.
fn ms(t: Instant) -> f64 {
    t.elapsed().as_secs_f64() * 1000.0
}

/// p50 and p99 in milliseconds (one decimal) of microsecond `samples`.
fn figures(samples: &[u64]) -> Option<Figures> {
    let mut sorted = samples.to_vec();
    sorted.sort_unstable();
    let p = |q| percentile(&sorted, q).map(|us| round_to(us as f64 / 1000.0, 1));
    Some(
        Figures::default()
            .with("p50", p(50.0)?)
            .with("p99", p(99.0)?),
    )
}

struct Measured {
    kith: Vec<u64>,
    baseline: Vec<u64>,
    input_bytes: usize,
    output_bytes: usize,
    baseline_bytes: usize,
}

fn measure(params: &Params, bar: &ProgressBar) -> anyhow::Result<Measured> {
    let input = photo(params)?;
    let options = kith_photo::PhotoOptions::default().with_filter("vivid");
    let micros = |t: Instant| u64::try_from(t.elapsed().as_micros()).unwrap_or(u64::MAX);
    let mut m = Measured {
        kith: Vec::with_capacity(params.iterations),
        baseline: Vec::with_capacity(params.iterations),
        input_bytes: input.len(),
        output_bytes: 0,
        baseline_bytes: 0,
    };
    for _ in 0..params.iterations {
        let t = Instant::now();
        let out = kith_photo::process(&input, &options).context("kith_photo::process")?;
        m.kith.push(micros(t));
        anyhow::ensure!(
            (out.width, out.height) == (params.height, params.width),
            "orientation 6 was not applied"
        );
        m.output_bytes = out.bytes.len();

        let t = Instant::now();
        let decoded = image::load_from_memory(&input).context("image decode")?;
        let rgb = decoded.to_rgb8();
        let mut encoded = Vec::new();
        JpegEncoder::new_with_quality(&mut encoded, kith_photo::DEFAULT_JPEG_QUALITY)
            .write_image(
                rgb.as_raw(),
                rgb.width(),
                rgb.height(),
                image::ExtendedColorType::Rgb8,
            )
            .context("image encode")?;
        m.baseline.push(micros(t));
        m.baseline_bytes = encoded.len();
        bar.tick();
    }
    Ok(m)
}

/// Runs `photo.process`.
pub(crate) fn run(params: &Params, bar: &ProgressBar) -> Scenario {
    let started = Instant::now();
    let measured = measure(params, bar);
    let mb = |b: usize| b as f64 / 1_048_576.0;
    let mut notes = format!(
        "{}x{} generated JPEG (noise, EXIF orientation 6 + GPS), {} runs each, alternating; kith: kith_photo::process with the vivid filter (decode under a 100 MP limit, orient, filter, re-encode JPEG q{} without metadata, 320 px thumbnail, ThumbHash); baseline: image decode + JPEG encode at the same quality",
        params.width,
        params.height,
        params.iterations,
        kith_photo::DEFAULT_JPEG_QUALITY,
    );
    match &measured {
        Ok(m) => notes.push_str(&format!(
            "; input {:.1} MB, kith output {:.1} MB, baseline output {:.1} MB; {:.0} ms in all",
            mb(m.input_bytes),
            mb(m.output_bytes),
            mb(m.baseline_bytes),
            ms(started)
        )),
        Err(e) => notes.push_str(&format!("; failed: {e:#}")),
    }
    let m = measured.ok();
    Scenario::measured(
        "photo.process",
        "ms",
        m.as_ref().and_then(|m| figures(&m.kith)),
        m.as_ref().and_then(|m| figures(&m.baseline)),
        notes,
    )
}
