use image::{ImageDecoder as _, Rgb, RgbImage, Rgba, RgbaImage};
use img_parts::{
    Bytes, ImageEXIF as _, ImageICC as _,
    jpeg::{Jpeg, JpegSegment},
    png::{Png, PngChunk},
};
use proptest::prelude::*;

use super::*;

const RED: [u8; 3] = [230, 20, 20];
const BLUE: [u8; 3] = [20, 20, 230];
const MAKE: &[u8] = b"KithCam\0";
/// GPSLatitude 51/1 30/1 1234/100, little-endian rationals.
const LATITUDE: [u8; 24] = [
    51, 0, 0, 0, 1, 0, 0, 0, 30, 0, 0, 0, 1, 0, 0, 0, 0xD2, 0x04, 0, 0, 100, 0, 0, 0,
];
const XMP: &[u8] = b"http://ns.adobe.com/xap/1.0/\0<x:xmpmeta>secret place</x:xmpmeta>";
const COMMENT: &[u8] = b"taken at home";

/// A 40×20 blue image with a red 8×8 block in its top-left corner, as JPEG.
fn corner_jpeg() -> Vec<u8> {
    let img = RgbImage::from_fn(
        40,
        20,
        |x, y| {
            if x < 8 && y < 8 { Rgb(RED) } else { Rgb(BLUE) }
        },
    );
    let mut out = Vec::new();
    JpegEncoder::new_with_quality(&mut out, 95)
        .write_image(img.as_raw(), 40, 20, image::ExtendedColorType::Rgb8)
        .unwrap();
    out
}

/// A little-endian TIFF: IFD0 {Make "KithCam", Orientation, GPSInfo → GPS IFD {LatitudeRef "N",
/// Latitude 51° 30' 12.34"}}.
fn gps_exif(orientation: u16) -> Vec<u8> {
    let mut t = Vec::new();
    t.extend_from_slice(b"II");
    t.extend_from_slice(&42u16.to_le_bytes());
    t.extend_from_slice(&8u32.to_le_bytes());
    // IFD0 at 8: 3 entries, ends at 8 + 2 + 36 + 4 = 50.
    let entry = |t: &mut Vec<u8>, tag: u16, ty: u16, count: u32, value: [u8; 4]| {
        t.extend_from_slice(&tag.to_le_bytes());
        t.extend_from_slice(&ty.to_le_bytes());
        t.extend_from_slice(&count.to_le_bytes());
        t.extend_from_slice(&value);
    };
    t.extend_from_slice(&3u16.to_le_bytes());
    entry(&mut t, 0x010F, 2, 8, 50u32.to_le_bytes());
    let o = orientation.to_le_bytes();
    entry(&mut t, 0x0112, 3, 1, [o[0], o[1], 0, 0]);
    entry(&mut t, 0x8825, 4, 1, 58u32.to_le_bytes());
    t.extend_from_slice(&0u32.to_le_bytes());
    assert_eq!(t.len(), 50);
    t.extend_from_slice(MAKE);
    // GPS IFD at 58: 2 entries, ends at 88.
    t.extend_from_slice(&2u16.to_le_bytes());
    entry(&mut t, 0x0001, 2, 2, *b"N\0\0\0");
    entry(&mut t, 0x0002, 5, 3, 88u32.to_le_bytes());
    t.extend_from_slice(&0u32.to_le_bytes());
    assert_eq!(t.len(), 88);
    t.extend_from_slice(&LATITUDE);
    t
}

/// The corner JPEG with a GPS EXIF (orientation 6), an XMP packet and a comment injected.
fn leaky_jpeg() -> Vec<u8> {
    let mut jpeg = Jpeg::from_bytes(Bytes::from(corner_jpeg())).unwrap();
    jpeg.set_exif(Some(Bytes::from(gps_exif(6))));
    jpeg.segments_mut().insert(
        1,
        JpegSegment::new_with_contents(0xE1, Bytes::from_static(XMP)),
    );
    jpeg.segments_mut().insert(
        2,
        JpegSegment::new_with_contents(0xFE, Bytes::from_static(COMMENT)),
    );
    jpeg.encoder().bytes().to_vec()
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    haystack.windows(needle.len()).any(|w| w == needle)
}

#[track_caller]
fn assert_no_leak(bytes: &[u8]) {
    for needle in [
        &b"Exif"[..],
        b"http://ns.adobe.com/xap",
        MAKE,
        &LATITUDE,
        COMMENT,
        b"secret",
    ] {
        assert!(
            !contains(bytes, needle),
            "output holds {:?}",
            String::from_utf8_lossy(needle)
        );
    }
}

fn close(a: [u8; 3], b: [u8; 3], tolerance: u8) -> bool {
    a.iter().zip(b).all(|(x, y)| x.abs_diff(y) <= tolerance)
}

fn scan_data(jpeg: &[u8]) -> Bytes {
    let jpeg = Jpeg::from_bytes(Bytes::copy_from_slice(jpeg)).unwrap();
    let sos = jpeg.segments().last().unwrap().clone();
    assert_eq!(sos.marker(), 0xDA);
    let header = 4 + sos.contents().len();
    sos.encoder().bytes().slice(header..)
}

#[test]
fn the_test_input_really_leaks() {
    let input = leaky_jpeg();
    assert_eq!(sniff(&input), Some(PhotoKind::Jpeg));
    assert!(contains(&input, MAKE) && contains(&input, &LATITUDE));
    assert!(contains(&input, b"http://ns.adobe.com/xap") && contains(&input, COMMENT));
    let mut decoder = image::codecs::jpeg::JpegDecoder::new(Cursor::new(&input)).unwrap();
    assert_eq!(decoder.orientation().unwrap(), Orientation::Rotate90);
}

#[test]
fn process_rotates_and_strips_everything() {
    let out = process(&leaky_jpeg(), &PhotoOptions::default()).unwrap();
    assert_eq!(out.mime, "image/jpeg");
    assert_eq!(
        (out.width, out.height),
        (20, 40),
        "orientation 6 swaps the sides"
    );
    assert_no_leak(&out.bytes);
    let jpeg = Jpeg::from_bytes(Bytes::from(out.bytes.clone())).unwrap();
    assert!(jpeg.exif().is_none());
    for segment in jpeg.segments() {
        let m = segment.marker();
        assert!(
            m == 0xE0 || !(0xE1..=0xEF).contains(&m) && m != 0xFE,
            "unexpected segment {m:#x}"
        );
    }
    // Orientation 6 = rotate 90° clockwise: the stored top-left corner is shown top-right.
    let img = image::load_from_memory(&out.bytes).unwrap().to_rgb8();
    assert_eq!(img.dimensions(), (20, 40));
    assert!(
        close(img.get_pixel(17, 2).0, RED, 40),
        "{:?}",
        img.get_pixel(17, 2)
    );
    assert!(
        close(img.get_pixel(2, 2).0, BLUE, 40),
        "{:?}",
        img.get_pixel(2, 2)
    );
    assert!(close(img.get_pixel(17, 37).0, BLUE, 40));
    assert_no_leak(&out.thumbnail);
    assert!(!out.placeholder.is_empty() && out.placeholder.len() < 64);
}

#[test]
fn original_keeps_the_scan_and_only_the_orientation() {
    let input = leaky_jpeg();
    let out = original(&input, PhotoKind::Jpeg).unwrap();
    assert_eq!(out.mime, "image/jpeg");
    assert_eq!((out.width, out.height), (20, 40));
    assert_eq!(scan_data(&out.bytes), scan_data(&input), "not re-encoded");
    for needle in [MAKE, &LATITUDE[..], b"http://ns.adobe.com/xap", COMMENT] {
        assert!(!contains(&out.bytes, needle));
    }
    let jpeg = Jpeg::from_bytes(Bytes::from(out.bytes.clone())).unwrap();
    assert_eq!(
        jpeg.exif().unwrap().as_ref(),
        &orientation_exif(6)[..],
        "nothing but the orientation"
    );
    assert_eq!(jpeg.segments_by_marker(0xE1).count(), 1);
    assert_eq!(jpeg.segments_by_marker(0xFE).count(), 0);
    let mut decoder = image::codecs::jpeg::JpegDecoder::new(Cursor::new(&out.bytes)).unwrap();
    assert_eq!(decoder.orientation().unwrap(), Orientation::Rotate90);
    assert!(out.bytes.len() < input.len());
}

#[test]
fn original_keeps_the_icc_profile_and_drops_trailers() {
    let mut jpeg = Jpeg::from_bytes(Bytes::from(leaky_jpeg())).unwrap();
    let profile = Bytes::from_static(b"not really an ICC profile, but kept byte for byte");
    jpeg.set_icc_profile(Some(profile.clone()));
    let mut input = jpeg.encoder().bytes().to_vec();
    // A second image after EOI, as MPF files carry, with its own EXIF.
    input.extend_from_slice(&[0xFF, 0xD8, 0xFF, 0xE1, 0x00, 0x0A]);
    input.extend_from_slice(b"Exif\0\0");
    input.extend_from_slice(MAKE);
    let out = original(&input, PhotoKind::Jpeg).unwrap();
    let jpeg = Jpeg::from_bytes(Bytes::from(out.bytes.clone())).unwrap();
    assert_eq!(jpeg.icc_profile(), Some(profile));
    assert!(!contains(&out.bytes, MAKE));
    assert!(out.bytes.ends_with(&[0xFF, 0xD9]));
}

#[test]
fn original_without_rotation_has_no_exif_at_all() {
    let mut jpeg = Jpeg::from_bytes(Bytes::from(corner_jpeg())).unwrap();
    jpeg.set_exif(Some(Bytes::from(gps_exif(1))));
    let input = jpeg.encoder().bytes().to_vec();
    let out = original(&input, PhotoKind::Jpeg).unwrap();
    assert_no_leak(&out.bytes);
    assert_eq!((out.width, out.height), (40, 20));
}

#[test]
fn original_png_drops_text_and_exif_chunks() {
    let img = RgbaImage::from_pixel(6, 4, Rgba([1, 2, 3, 255]));
    let mut encoded = Vec::new();
    PngEncoder::new(&mut encoded)
        .write_image(img.as_raw(), 6, 4, image::ExtendedColorType::Rgba8)
        .unwrap();
    let mut png = Png::from_bytes(Bytes::from(encoded)).unwrap();
    png.set_exif(Some(Bytes::from(gps_exif(6))));
    for kind in [*b"tEXt", *b"iTXt", *b"zTXt", *b"tIME"] {
        png.chunks_mut().insert(
            1,
            PngChunk::new(kind, Bytes::from_static(b"Comment\0taken at home")),
        );
    }
    let input = png.encoder().bytes().to_vec();
    let out = original(&input, PhotoKind::Png).unwrap();
    assert_eq!((out.width, out.height), (4, 6));
    assert!(!contains(&out.bytes, COMMENT) && !contains(&out.bytes, MAKE));
    let png = Png::from_bytes(Bytes::from(out.bytes)).unwrap();
    assert_eq!(png.exif().unwrap().as_ref(), &orientation_exif(6)[..]);
    let kinds: Vec<[u8; 4]> = png.chunks().iter().map(PngChunk::kind).collect();
    assert!(
        kinds
            .iter()
            .all(|k| [*b"IHDR", *b"IDAT", *b"IEND", *b"eXIf"].contains(k))
    );
}

#[test]
fn original_refuses_gif() {
    let err = original(b"GIF89a....", PhotoKind::Gif).unwrap_err();
    assert!(matches!(err, PhotoError::OriginalUnsupported { .. }));
    assert!(err.to_string().contains("without --original"));
}

#[test]
fn sepia_on_a_solid_colour_matches_the_matrix_by_hand() {
    let (r, g, b) = (200.0_f32, 100.0, 50.0);
    // An opaque RGBA PNG: alpha keeps the output lossless PNG, so values are exact.
    let img = RgbaImage::from_pixel(16, 16, Rgba([200, 100, 50, 255]));
    let mut input = Vec::new();
    PngEncoder::new(&mut input)
        .write_image(img.as_raw(), 16, 16, image::ExtendedColorType::Rgba8)
        .unwrap();
    let out = process(&input, &PhotoOptions::default().with_filter("sepia")).unwrap();
    assert_eq!(out.mime, "image/png");
    let px = image::load_from_memory(&out.bytes)
        .unwrap()
        .to_rgba8()
        .get_pixel(5, 5)
        .0;
    let by_hand = |cr: f32, cg: f32, cb: f32| {
        let v = (cr * r + cg * g + cb * b) / 255.0;
        (v.clamp(0.0, 1.0) * 255.0).round() as u8
    };
    // 0.393·200 + 0.769·100 + 0.189·50 = 164.95 → 165; 0.349·200 + 0.686·100 + 0.168·50 = 146.8
    // → 147; 0.272·200 + 0.534·100 + 0.131·50 = 114.35 → 114.
    let expected = [
        by_hand(0.393, 0.769, 0.189),
        by_hand(0.349, 0.686, 0.168),
        by_hand(0.272, 0.534, 0.131),
        255,
    ];
    assert_eq!(expected, [165, 147, 114, 255]);
    for (got, want) in px.iter().zip(expected) {
        assert!(got.abs_diff(want) <= 1, "{px:?} vs {expected:?}");
    }
}

#[test]
fn every_preset_resolves_and_serialises() {
    let names: Vec<&str> = presets().iter().map(|p| p.name).collect();
    assert_eq!(
        names,
        [
            "mono", "sepia", "vivid", "warm", "cool", "fade", "noir", "chrome"
        ]
    );
    for preset in presets() {
        assert_eq!(
            matrix_for(Some(preset.name), Adjust::default()).unwrap(),
            preset.matrix,
            "identity adjust leaves {} unchanged",
            preset.name
        );
        assert_eq!(compose(&IDENTITY, &preset.matrix), preset.matrix);
        assert_eq!(compose(&preset.matrix, &IDENTITY), preset.matrix);
        assert!(preset.matrix.iter().all(|v| v.is_finite()));
        assert!(!preset.label.is_empty());
    }
    let json = serde_json::to_value(presets()).unwrap();
    assert_eq!(json[1]["name"], "sepia");
    assert_eq!(json[1]["matrix"].as_array().unwrap().len(), 20);
}

#[test]
fn unknown_filter_names_the_valid_ones() {
    let err = matrix_for(Some("lomo"), Adjust::default()).unwrap_err();
    let text = err.to_string();
    assert!(text.contains("lomo"));
    for preset in presets() {
        assert!(text.contains(preset.name), "{text}");
    }
    let err = process(&leaky_jpeg(), &PhotoOptions::default().with_filter("lomo")).unwrap_err();
    assert!(matches!(err, PhotoError::UnknownFilter { .. }));
}

#[test]
fn adjust_composes_into_one_matrix() {
    assert_eq!(matrix_for(None, Adjust::default()).unwrap(), IDENTITY);
    let adjust = Adjust {
        brightness: 1.2,
        contrast: 0.9,
        saturation: 0.5,
    };
    let m = matrix_for(Some("warm"), adjust).unwrap();
    // One matrix equals applying the two in turn (inside 0..1, where nothing clips).
    let px = [120, 80, 60, 255];
    let warm = presets().iter().find(|p| p.name == "warm").unwrap().matrix;
    let f = |m: &Matrix, v: [f32; 4]| -> [f32; 4] {
        std::array::from_fn(|r| (0..4).map(|c| m[r * 5 + c] * v[c]).sum::<f32>() + m[r * 5 + 4])
    };
    let v = px.map(|c| f32::from(c) / 255.0);
    let two_steps = f(&adjust.matrix().unwrap(), f(&warm, v));
    let one = apply_pixel(&m, px);
    for (a, b) in one.iter().zip(two_steps) {
        assert!((f32::from(*a) - b * 255.0).abs() <= 0.51);
    }
    let bad = Adjust {
        contrast: f32::NAN,
        ..Adjust::default()
    };
    assert!(matches!(
        matrix_for(None, bad),
        Err(PhotoError::InvalidAdjust {
            field: "contrast",
            ..
        })
    ));
}

proptest! {
    #[test]
    fn any_matrix_on_any_pixel_stays_in_range(
        m in prop::array::uniform20(prop_oneof![
            -10.0f32..10.0,
            Just(f32::NAN),
            Just(f32::INFINITY),
            Just(f32::NEG_INFINITY),
        ]),
        px in prop::array::uniform4(any::<u8>()),
    ) {
        let out = apply_pixel(&m, px);
        // u8 cannot leave 0..=255; what this checks is that NaN and infinities do not panic
        // and that finite inputs map monotonically into range.
        prop_assert_eq!(out.len(), 4);
        let img = DynamicImage::ImageRgba8(RgbaImage::from_pixel(2, 2, Rgba(px)));
        let filtered = filter::apply(img, &m).to_rgba8();
        prop_assert_eq!(filtered.get_pixel(1, 1).0, out);
    }

    #[test]
    fn any_adjust_in_range_gives_a_finite_matrix(
        b in 0.0f32..=ADJUST_MAX, c in 0.0f32..=ADJUST_MAX, s in 0.0f32..=ADJUST_MAX,
    ) {
        let adjust = Adjust { brightness: b, contrast: c, saturation: s };
        for preset in presets() {
            let m = matrix_for(Some(preset.name), adjust).unwrap();
            prop_assert!(m.iter().all(|v| v.is_finite()));
        }
    }
}

#[test]
fn garbage_is_not_an_image() {
    assert!(sniff(b"hello, world").is_none());
    assert!(matches!(
        process(b"hello, world", &PhotoOptions::default()),
        Err(PhotoError::NotAnImage)
    ));
    let mut broken = vec![0xFF, 0xD8, 0xFF, 0xE0];
    broken.extend_from_slice(&[0x55; 64]);
    let err = process(&broken, &PhotoOptions::default()).unwrap_err();
    assert!(
        matches!(
            err,
            PhotoError::Decode {
                kind: PhotoKind::Jpeg,
                ..
            }
        ),
        "{err:?}"
    );
    assert!(original(&broken, PhotoKind::Jpeg).is_err());
}

#[test]
fn a_png_declaring_huge_dimensions_is_refused() {
    let img = RgbaImage::from_pixel(1, 1, Rgba([0, 0, 0, 255]));
    let mut encoded = Vec::new();
    PngEncoder::new(&mut encoded)
        .write_image(img.as_raw(), 1, 1, image::ExtendedColorType::Rgba8)
        .unwrap();
    let mut png = Png::from_bytes(Bytes::from(encoded)).unwrap();
    let ihdr = png.chunk_by_type(*b"IHDR").unwrap().contents().to_vec();
    let mut huge = ihdr.clone();
    huge[0..4].copy_from_slice(&100_000u32.to_be_bytes());
    huge[4..8].copy_from_slice(&100_000u32.to_be_bytes());
    png.chunks_mut()[0] = PngChunk::new(*b"IHDR", Bytes::from(huge));
    let bomb = png.encoder().bytes().to_vec();
    let err = process(&bomb, &PhotoOptions::default()).unwrap_err();
    assert!(
        matches!(
            err,
            PhotoError::TooLarge {
                width: 100_000,
                height: 100_000,
                ..
            }
        ),
        "{err:?}"
    );
    assert!(err.to_string().contains("megapixel"));
    // A lower limit applies to honest images too.
    let err = process(&leaky_jpeg(), &PhotoOptions::default().with_max_pixels(100)).unwrap_err();
    assert!(matches!(err, PhotoError::TooLarge { .. }));
}

#[test]
fn thumbnail_fits_320_and_keeps_the_aspect() {
    let img = RgbImage::from_fn(1000, 500, |x, y| Rgb([(x % 256) as u8, (y % 256) as u8, 7]));
    let mut input = Vec::new();
    JpegEncoder::new_with_quality(&mut input, 80)
        .write_image(img.as_raw(), 1000, 500, image::ExtendedColorType::Rgb8)
        .unwrap();
    let out = process(&input, &PhotoOptions::default()).unwrap();
    assert_eq!((out.width, out.height), (1000, 500));
    assert_eq!(out.thumbnail_mime, "image/jpeg");
    let thumb = image::load_from_memory(&out.thumbnail).unwrap();
    assert_eq!((thumb.width(), thumb.height()), (320, 160));
    let tall = original(&leaky_jpeg(), PhotoKind::Jpeg).unwrap();
    let thumb = image::load_from_memory(&tall.thumbnail).unwrap();
    assert_eq!((thumb.width(), thumb.height()), (20, 40), "never enlarged");
    let (w, h, _) = thumbhash::thumb_hash_to_rgba(&out.placeholder).unwrap();
    assert!(w > h, "placeholder keeps the landscape aspect: {w}×{h}");
}

#[test]
fn gif_becomes_png_and_alpha_stays() {
    let img = RgbaImage::from_pixel(5, 3, Rgba([10, 200, 30, 128]));
    let mut gif = Vec::new();
    image::codecs::gif::GifEncoder::new(&mut gif)
        .encode(img.as_raw(), 5, 3, image::ExtendedColorType::Rgba8)
        .unwrap();
    assert_eq!(sniff(&gif), Some(PhotoKind::Gif));
    let out = process(&gif, &PhotoOptions::default()).unwrap();
    assert_eq!(out.mime, "image/png");
    assert_eq!((out.width, out.height), (5, 3));
}
