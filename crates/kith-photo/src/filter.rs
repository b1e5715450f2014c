//! Colour filters as 4×5 matrices, in the layout of SVG `feColorMatrix type="matrix"`.
//!
//! A matrix is 20 numbers, row-major: rows R, G, B, A; columns R, G, B, A and an offset.
//! Channels are non-premultiplied values on a 0..1 scale and the offset is in the same units,
//! so `R' = m[0]·R + m[1]·G + m[2]·B + m[3]·A + m[4]`, clamped to 0..1.
//! The web app previews a photo with `<feColorMatrix type="matrix" values="…">` holding exactly
//! these numbers, with `color-interpolation-filters="sRGB"` on the filter: browsers default to
//! `linearRGB`, which would make the preview differ from what the node sends.

use image::{DynamicImage, RgbImage, RgbaImage};
use serde::Serialize;

use crate::PhotoError;

/// A 4×5 colour matrix (`feColorMatrix` layout, row-major).
pub type Matrix = [f32; 20];

/// The matrix that changes nothing.
pub const IDENTITY: Matrix = [
    1.0, 0.0, 0.0, 0.0, 0.0, //
    0.0, 1.0, 0.0, 0.0, 0.0, //
    0.0, 0.0, 1.0, 0.0, 0.0, //
    0.0, 0.0, 0.0, 1.0, 0.0,
];

/// A named filter the user can pick; served as JSON so the web preview uses the node's numbers.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct Preset {
    /// Stable name, the value of the send path's `filter` option.
    pub name: &'static str,
    /// Short label for the UI.
    pub label: &'static str,
    /// The matrix, `feColorMatrix type="matrix"` layout.
    pub matrix: Matrix,
}

/// Brightness, contrast and saturation on top of a preset, with the meaning of the CSS filter
/// functions of the same names (1.0 changes nothing), so a slider can drive either.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct Adjust {
    /// Multiplies R, G and B (CSS `brightness()`); 0..=4, 1 = unchanged.
    pub brightness: f32,
    /// Slope around mid-grey, `v·c + 0.5·(1 − c)` (CSS `contrast()`); 0..=4, 1 = unchanged.
    pub contrast: f32,
    /// Saturation as `feColorMatrix type="saturate"` (CSS `saturate()`); 0..=4, 1 = unchanged.
    pub saturation: f32,
}

impl Default for Adjust {
    /// No change: every factor 1.0.
    fn default() -> Self {
        Self {
            brightness: 1.0,
            contrast: 1.0,
            saturation: 1.0,
        }
    }
}

/// Largest factor an [`Adjust`] field accepts; beyond it every pixel is clipped anyway.
pub const ADJUST_MAX: f32 = 4.0;

impl Adjust {
    /// The adjustment as one matrix: saturation first, then contrast, then brightness.
    pub fn matrix(&self) -> Result<Matrix, PhotoError> {
        for (field, value) in [
            ("brightness", self.brightness),
            ("contrast", self.contrast),
            ("saturation", self.saturation),
        ] {
            if !(0.0..=ADJUST_MAX).contains(&value) {
                return Err(PhotoError::InvalidAdjust { field, value });
            }
        }
        Ok(compose(
            &brightness(self.brightness),
            &compose(&contrast(self.contrast), &saturate(self.saturation)),
        ))
    }
}

/// `outer ∘ inner`: the one matrix that applies `inner`, then `outer` (without clamping between,
/// which is what a single `feColorMatrix` does).
pub const fn compose(outer: &Matrix, inner: &Matrix) -> Matrix {
    let mut out = [0.0; 20];
    let mut row = 0;
    while row < 4 {
        let mut col = 0;
        while col < 5 {
            let mut sum = 0.0;
            let mut k = 0;
            while k < 4 {
                sum += outer[row * 5 + k] * inner[k * 5 + col];
                k += 1;
            }
            if col == 4 {
                sum += outer[row * 5 + 4];
            }
            out[row * 5 + col] = sum;
            col += 1;
        }
        row += 1;
    }
    out
}

/// `feColorMatrix type="saturate"` with value `s` (Filter Effects 1, §9.6).
pub const fn saturate(s: f32) -> Matrix {
    [
        0.213 + 0.787 * s,
        0.715 - 0.715 * s,
        0.072 - 0.072 * s,
        0.0,
        0.0,
        0.213 - 0.213 * s,
        0.715 + 0.285 * s,
        0.072 - 0.072 * s,
        0.0,
        0.0,
        0.213 - 0.213 * s,
        0.715 - 0.715 * s,
        0.072 + 0.928 * s,
        0.0,
        0.0,
        0.0,
        0.0,
        0.0,
        1.0,
        0.0,
    ]
}

/// CSS `contrast(c)`: slope `c` about mid-grey.
pub const fn contrast(c: f32) -> Matrix {
    let offset = 0.5 * (1.0 - c);
    scale_offset([c, c, c], [offset, offset, offset])
}

/// CSS `brightness(b)`: R, G and B multiplied by `b`.
pub const fn brightness(b: f32) -> Matrix {
    scale_offset([b, b, b], [0.0, 0.0, 0.0])
}

/// Per-channel gain and offset, alpha untouched.
const fn scale_offset(gain: [f32; 3], offset: [f32; 3]) -> Matrix {
    [
        gain[0], 0.0, 0.0, 0.0, offset[0], //
        0.0, gain[1], 0.0, 0.0, offset[1], //
        0.0, 0.0, gain[2], 0.0, offset[2], //
        0.0, 0.0, 0.0, 1.0, 0.0,
    ]
}

/// CSS `sepia(1)` (Filter Effects 1, `sepia()` equivalent matrix).
const SEPIA: Matrix = [
    0.393, 0.769, 0.189, 0.0, 0.0, //
    0.349, 0.686, 0.168, 0.0, 0.0, //
    0.272, 0.534, 0.131, 0.0, 0.0, //
    0.0, 0.0, 0.0, 1.0, 0.0,
];

const PRESETS: &[Preset] = &[
    Preset {
        name: "mono",
        label: "Mono",
        matrix: saturate(0.0),
    },
    Preset {
        name: "sepia",
        label: "Sepia",
        matrix: SEPIA,
    },
    Preset {
        name: "vivid",
        label: "Vivid",
        matrix: compose(&contrast(1.1), &saturate(1.5)),
    },
    Preset {
        name: "warm",
        label: "Warm",
        matrix: scale_offset([1.08, 1.0, 0.86], [0.03, 0.01, 0.0]),
    },
    Preset {
        name: "cool",
        label: "Cool",
        matrix: scale_offset([0.88, 1.0, 1.08], [0.0, 0.01, 0.03]),
    },
    Preset {
        name: "fade",
        label: "Fade",
        // Lower contrast with lifted blacks, and a little less colour.
        matrix: compose(
            &scale_offset([0.8, 0.8, 0.8], [0.12, 0.12, 0.12]),
            &saturate(0.7),
        ),
    },
    Preset {
        name: "noir",
        label: "Noir",
        matrix: compose(&contrast(1.5), &saturate(0.0)),
    },
    Preset {
        name: "chrome",
        label: "Chrome",
        // Punchier colour and contrast, shadows nudged toward blue.
        matrix: compose(
            &scale_offset([1.0, 1.0, 1.0], [0.0, 0.0, 0.03]),
            &compose(&contrast(1.15), &saturate(1.25)),
        ),
    },
];

/// Every preset, in the order the UI shows them.
pub fn presets() -> &'static [Preset] {
    PRESETS
}

/// The one matrix for `filter` (a preset name, or none) followed by `adjust`, as both the node
/// and the web preview apply it.
pub fn matrix_for(filter: Option<&str>, adjust: Adjust) -> Result<Matrix, PhotoError> {
    let base = match filter {
        None => IDENTITY,
        Some(name) => match PRESETS.iter().find(|p| p.name == name) {
            Some(preset) => preset.matrix,
            None => {
                return Err(PhotoError::UnknownFilter {
                    name: name.to_owned(),
                    valid: PRESETS
                        .iter()
                        .map(|p| p.name)
                        .collect::<Vec<_>>()
                        .join(", "),
                });
            }
        },
    };
    let adjust = adjust.matrix()?;
    if adjust == IDENTITY {
        // Keeps the preset's numbers bit-exact (no float round trip through a product).
        return Ok(base);
    }
    Ok(compose(&adjust, &base))
}

/// Applies `m` to one non-premultiplied RGBA pixel of 0..255 values, as `feColorMatrix` does.
pub fn apply_pixel(m: &Matrix, px: [u8; 4]) -> [u8; 4] {
    let v = px.map(|c| f32::from(c) / 255.0);
    let mut out = [0u8; 4];
    for (row, slot) in out.iter_mut().enumerate() {
        let r = &m[row * 5..row * 5 + 5];
        let x = r[0] * v[0] + r[1] * v[1] + r[2] * v[2] + r[3] * v[3] + r[4];
        *slot = to_byte(x);
    }
    out
}

/// 0..1 (clamped; NaN becomes 0) to the nearest 0..255 byte.
fn to_byte(x: f32) -> u8 {
    // `as` saturates and maps NaN to 0, so no value can overflow here.
    (x.clamp(0.0, 1.0) * 255.0).round() as u8
}

/// Applies `m` to every pixel. 8-bit RGB stays RGB (alpha taken as 1, the alpha row ignored);
/// anything with alpha becomes RGBA8, anything else RGB8.
pub(crate) fn apply(image: DynamicImage, m: &Matrix) -> DynamicImage {
    if *m == IDENTITY {
        return image;
    }
    if image.color().has_alpha() {
        let mut buf: RgbaImage = image.into_rgba8();
        for px in buf.pixels_mut() {
            px.0 = apply_pixel(m, px.0);
        }
        DynamicImage::ImageRgba8(buf)
    } else {
        let mut buf: RgbImage = image.into_rgb8();
        for px in buf.pixels_mut() {
            let [r, g, b, _] = apply_pixel(m, [px.0[0], px.0[1], px.0[2], 255]);
            px.0 = [r, g, b];
        }
        DynamicImage::ImageRgb8(buf)
    }
}
