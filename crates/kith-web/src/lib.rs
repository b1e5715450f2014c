//! kith-web: the web app's static files, embedded in the `kith` binary.
//!
//! The app is plain ES modules with a vendored Preact + htm (see `assets/vendor/`), so there is no
//! build step: what is in `assets/` is what the browser gets. Release builds embed the folder
//! (`rust-embed`), so `kith run` serves the app with nothing installed beside the binary; debug
//! builds read the files from disk on every request, so an edit shows on reload.
//!
//! kith-api serves these files; this crate only knows what the files are and how to name their
//! types, so nothing here touches the network.

use std::borrow::Cow;

#[derive(rust_embed::Embed)]
#[folder = "assets/"]
struct Assets;

/// One static file of the web app, ready to be sent.
#[derive(Debug, Clone)]
pub struct WebAsset {
    /// The file's bytes.
    pub bytes: Cow<'static, [u8]>,
    /// Its `Content-Type`, chosen from the extension (never sniffed by the browser).
    pub content_type: &'static str,
    /// A strong validator (the hex SHA-256 of the bytes), so reloads can answer 304.
    pub etag: String,
}

/// The app's entry page.
pub fn index() -> Option<WebAsset> {
    asset("index.html")
}

/// A file under `assets/` by its relative path (`views/chats.js`), or `None` when there is no
/// such file. Paths with `..` or a leading `/` never match.
pub fn asset(path: &str) -> Option<WebAsset> {
    if path.is_empty() || path.starts_with('/') || path.split('/').any(|part| part == "..") {
        return None;
    }
    let file = Assets::get(path)?;
    Some(WebAsset {
        etag: hex(&file.metadata.sha256_hash()),
        content_type: content_type(path),
        bytes: file.data,
    })
}

/// Every file's relative path, for checks (size budget, references) in tests and tools.
pub fn paths() -> Vec<String> {
    Assets::iter().map(|p| p.into_owned()).collect()
}

/// The `Content-Type` for a file name; unknown types are served as bytes, never as HTML.
pub fn content_type(path: &str) -> &'static str {
    let ext = path.rsplit_once('.').map_or("", |(_, ext)| ext);
    match ext {
        "html" => "text/html; charset=utf-8",
        "js" | "mjs" => "text/javascript; charset=utf-8",
        "css" => "text/css; charset=utf-8",
        "json" => "application/json",
        "webmanifest" => "application/manifest+json",
        "svg" => "image/svg+xml",
        "png" => "image/png",
        "ico" => "image/x-icon",
        "webp" => "image/webp",
        "woff2" => "font/woff2",
        "mp3" => "audio/mpeg",
        "ogg" => "audio/ogg",
        "wav" => "audio/wav",
        "txt" => "text/plain; charset=utf-8",
        _ => "application/octet-stream",
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
    use std::io::Write as _;

    use super::*;

    #[test]
    fn paths_that_climb_out_never_match() {
        assert!(asset("../Cargo.toml").is_none());
        assert!(asset("/etc/passwd").is_none());
        assert!(asset("views/../../Cargo.toml").is_none());
        assert!(asset("").is_none());
    }

    #[test]
    fn types_come_from_the_extension() {
        assert_eq!(content_type("app.js"), "text/javascript; charset=utf-8");
        assert_eq!(content_type("index.html"), "text/html; charset=utf-8");
        assert_eq!(content_type("x.unknown"), "application/octet-stream");
        assert_eq!(content_type("noext"), "application/octet-stream");
    }

    #[test]
    fn the_entry_page_loads_only_local_modules_and_no_inline_script() {
        let index = index().expect("assets/index.html exists");
        let text = String::from_utf8(index.bytes.into_owned()).unwrap();
        assert!(
            text.contains("type=\"module\""),
            "index.html loads the app as a module"
        );
        // The CSP forbids inline scripts: every <script> must have a src.
        for tag in text.split("<script").skip(1) {
            let head = tag.split('>').next().unwrap_or("");
            assert!(
                head.contains("src="),
                "inline <script> in index.html: {head}"
            );
        }
        assert!(
            !text.contains("http://") && !text.contains("https://"),
            "no external URLs"
        );
    }

    #[test]
    fn every_local_import_names_a_file_that_exists() {
        let all = paths();
        for path in all.iter().filter(|p| p.ends_with(".js")) {
            let source = String::from_utf8(asset(path).unwrap().bytes.into_owned()).unwrap();
            let dir = path.rsplit_once('/').map_or("", |(d, _)| d);
            for spec in import_specifiers(&source) {
                let target = resolve(dir, &spec);
                assert!(
                    all.contains(&target),
                    "{path} imports {spec}, but there is no assets/{target}"
                );
            }
        }
    }

    #[test]
    fn the_whole_app_fits_its_size_budget() {
        // The budget: the whole app at most 150 KB gzipped.
        let mut total = 0usize;
        for path in paths() {
            let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
            gz.write_all(&asset(&path).unwrap().bytes).unwrap();
            total += gz.finish().unwrap().len();
        }
        assert!(
            total <= 150 * 1024,
            "web app is {total} bytes gzipped (budget 150 KB)"
        );
    }

    /// `from './x.js'` and `import './x.js'` specifiers that are relative or absolute paths.
    fn import_specifiers(source: &str) -> Vec<String> {
        let mut out = Vec::new();
        for line in source.lines() {
            let line = line.trim_start();
            if !(line.starts_with("import ")
                || line.starts_with("export ")
                || line.starts_with("} from"))
            {
                continue;
            }
            let Some(idx) = line
                .rfind(" from ")
                .map(|i| i + 6)
                .or_else(|| line.strip_prefix("import ").map(|_| 7))
            else {
                continue;
            };
            let rest = line[idx..].trim_start();
            let Some(quote) = rest.chars().next().filter(|c| *c == '\'' || *c == '"') else {
                continue;
            };
            if let Some(end) = rest[1..].find(quote) {
                let spec = &rest[1..1 + end];
                if spec.starts_with('.') || spec.starts_with('/') {
                    out.push(spec.to_owned());
                }
            }
        }
        out
    }

    fn resolve(dir: &str, spec: &str) -> String {
        let mut parts: Vec<&str> = if let Some(abs) = spec.strip_prefix("/assets/") {
            return abs.to_owned();
        } else if dir.is_empty() {
            Vec::new()
        } else {
            dir.split('/').collect()
        };
        for part in spec.split('/') {
            match part {
                "." | "" => {}
                ".." => {
                    parts.pop();
                }
                p => parts.push(p),
            }
        }
        parts.join("/")
    }
}
