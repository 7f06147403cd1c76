//! File names a caller (a model) asks for with `filename`: what is kept of one, so that it
//! can never leave the store, hide, take a name Windows reserves, or overwrite anything.
//!
//! Only the stem is the caller's: the extension is always the image's real format, and
//! [`super::Store::save`] adds `-2`, `-3`, ... when the name is taken.

use imagegen_providers::ImageFormat;

/// The longest stem kept, in bytes (the stem is ASCII, so this is also characters).
pub const MAX_STEM_BYTES: usize = 100;

/// How much of a requested name is looked at: far more than any stem kept, so that a
/// trailing extension of a long name is still recognised, yet bounded for a hostile one.
const MAX_SCANNED_CHARS: usize = 1024;

/// How much of the requested name a note or a sidecar repeats.
const MAX_ECHOED_CHARS: usize = 200;

/// Names Windows reserves for devices, with or without an extension.
const RESERVED: [&str; 4] = ["CON", "PRN", "AUX", "NUL"];

/// Whether `stem` (up to its first dot) is a device name Windows reserves: CON, PRN, AUX, NUL,
/// COM0–9 or LPT0–9, in any case.
fn is_reserved(stem: &str) -> bool {
    let head = stem.split('.').next().unwrap_or(stem).to_ascii_uppercase();
    if RESERVED.contains(&head.as_str()) {
        return true;
    }
    matches!(head.as_bytes(), [b'C', b'O', b'M', d] | [b'L', b'P', b'T', d] if d.is_ascii_digit())
}

/// Whether `ext` (no dot) is an image extension (or `json`, the sidecar's): one a caller may
/// write that the store replaces with the real one.
fn is_known_extension(ext: &str) -> bool {
    let ext = ext.to_ascii_lowercase();
    ext == "json"
        || ext == "jpg"
        || ImageFormat::ALL
            .into_iter()
            .any(|f| f.extension() == ext || f.as_str() == ext)
}

/// The stem kept of `requested`, or `None` when nothing usable is left (the server then
/// chooses the name).
///
/// ASCII letters, digits, `_`, `-` and single dots are kept; anything else (separators,
/// control characters, spaces, `#`, non-ASCII) becomes `-`, and runs of `-` or `.` become
/// one. A trailing image extension (or several: `cat.png.jpg`) is dropped, leading dots and
/// dashes and trailing dots, dashes and spaces are trimmed, the stem is cut to
/// [`MAX_STEM_BYTES`], and a reserved Windows name gets a leading `_`.
pub fn sanitize_stem(requested: &str) -> Option<String> {
    let mut out = String::new();
    for c in requested.chars().take(MAX_SCANNED_CHARS) {
        let mapped = match c {
            'a'..='z' | 'A'..='Z' | '0'..='9' | '_' | '.' => c,
            _ => '-',
        };
        // No `..` (a path's parent), no runs of dashes from a run of odd characters.
        if (mapped == '.' || mapped == '-') && out.ends_with(mapped) {
            continue;
        }
        out.push(mapped);
    }
    let mut stem = out.as_str();
    while let Some((head, ext)) = stem.rsplit_once('.') {
        if !is_known_extension(ext) {
            break;
        }
        stem = head;
    }
    let trim = |s: &str| -> String {
        s.trim_start_matches(['.', '-'])
            .trim_end_matches(['.', '-', ' '])
            .to_string()
    };
    let mut stem = trim(stem);
    if stem.len() > MAX_STEM_BYTES {
        // ASCII only by now: every byte index is a character boundary.
        stem.truncate(MAX_STEM_BYTES);
        stem = trim(&stem);
    }
    if stem.is_empty() {
        return None;
    }
    if is_reserved(&stem) {
        stem.insert(0, '_');
    }
    // The store's own check has the last word: a name it would refuse is never made.
    super::is_valid_name(&format!("{stem}.png")).then_some(stem)
}

/// The name made from `stem` on the `attempt`th try (0: the stem itself, then `-2`, `-3`, ...).
pub fn candidate(stem: &str, attempt: u32, extension: &str) -> String {
    match attempt {
        0 => format!("{stem}.{extension}"),
        n => format!("{stem}-{}.{extension}", n + 1),
    }
}

/// `requested` as a note or a sidecar repeats it: at most [`MAX_ECHOED_CHARS`] characters,
/// control characters escaped.
pub fn echoed(requested: &str) -> String {
    let mut out = String::new();
    for (i, c) in requested.chars().enumerate() {
        if i == MAX_ECHOED_CHARS {
            out.push('…');
            break;
        }
        if c.is_control() {
            out.extend(c.escape_default());
        } else {
            out.push(c);
        }
    }
    out
}

/// What a result says when image `saved` is not named exactly as `requested`; `None` when it is.
pub fn rename_note(requested: &str, saved: &str) -> Option<String> {
    if requested == saved {
        return None;
    }
    let Some(stem) = sanitize_stem(requested) else {
        return Some(format!(
            "the file name `{}` has nothing a file name may hold; the server named the image `{saved}`",
            echoed(requested)
        ));
    };
    let extension = saved.rsplit_once('.').map_or("", |(_, e)| e);
    let mut why = Vec::new();
    let asked_stem = match requested.rsplit_once('.') {
        Some((head, ext)) if is_known_extension(ext) => {
            if !ext.eq_ignore_ascii_case(extension) {
                why.push(format!(
                    "the extension is the image's format (`.{extension}`)"
                ));
            }
            head
        }
        _ => {
            why.push(format!(
                "the extension is the image's format (`.{extension}`)"
            ));
            requested
        }
    };
    if asked_stem != stem {
        why.push("characters a file name may not hold were replaced or trimmed".to_string());
    }
    if saved != candidate(&stem, 0, extension) {
        why.push(format!(
            "`{stem}.{extension}` was taken, so a number was added"
        ));
    }
    Some(format!(
        "asked for the file name `{}`; saved as `{saved}`: {}",
        echoed(requested),
        why.join("; ")
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn kept(requested: &str) -> Option<String> {
        sanitize_stem(requested)
    }

    #[test]
    fn plain_names_are_kept_and_the_extension_is_dropped() {
        assert_eq!(kept("cat").as_deref(), Some("cat"));
        assert_eq!(kept("cat.png").as_deref(), Some("cat"));
        assert_eq!(kept("Cat_Photo-2.JPG").as_deref(), Some("Cat_Photo-2"));
        assert_eq!(kept("cat.png.jpg").as_deref(), Some("cat"));
        assert_eq!(kept("v1.2").as_deref(), Some("v1.2"));
        assert_eq!(kept("notes.json").as_deref(), Some("notes"));
    }

    #[test]
    fn traversal_and_separators_never_survive() {
        for hostile in [
            "../../etc/passwd",
            "a/b",
            "C:\\x",
            "..\\..\\windows\\system32",
            "/abs/path.png",
            "a/../../b",
        ] {
            let stem = kept(hostile).expect(hostile);
            assert!(!stem.contains(['/', '\\', ':']), "{hostile} -> {stem}");
            assert!(!stem.contains(".."), "{hostile} -> {stem}");
            assert!(!stem.starts_with(['.', '-']), "{hostile} -> {stem}");
        }
        assert_eq!(kept("../../etc/passwd").as_deref(), Some("etc-passwd"));
        assert_eq!(kept("a/b").as_deref(), Some("a-b"));
        assert_eq!(kept("C:\\x").as_deref(), Some("C-x"));
    }

    #[test]
    fn reserved_windows_names_are_prefixed_whatever_their_case_or_extension() {
        assert_eq!(kept("CON.png").as_deref(), Some("_CON"));
        assert_eq!(kept("nul").as_deref(), Some("_nul"));
        assert_eq!(kept("Aux.tar").as_deref(), Some("_Aux.tar"));
        assert_eq!(kept("com1").as_deref(), Some("_com1"));
        assert_eq!(kept("LPT9.jpeg").as_deref(), Some("_LPT9"));
        assert_eq!(kept("console").as_deref(), Some("console"));
        assert_eq!(kept("com10").as_deref(), Some("com10"));
    }

    #[test]
    fn control_characters_emoji_and_odd_characters_become_dashes() {
        assert_eq!(kept("a\u{0}b\nc").as_deref(), Some("a-b-c"));
        assert_eq!(kept("🐱 cat 🐶").as_deref(), Some("cat"));
        assert_eq!(kept("my cat #1?.png").as_deref(), Some("my-cat-1"));
        assert_eq!(kept("café").as_deref(), Some("caf"));
    }

    #[test]
    fn names_with_nothing_usable_fall_back_to_the_servers() {
        for nothing in [
            "", ".", "..", "...", ". . .", "🐱", "\u{0}", "/", ".png", "-.-",
        ] {
            assert_eq!(kept(nothing), None, "{nothing:?}");
        }
    }

    #[test]
    fn long_names_are_cut_to_the_bound() {
        let huge = "x".repeat(10_000);
        assert_eq!(kept(&huge).unwrap().len(), MAX_STEM_BYTES);
        let emoji = "🐱a".repeat(5_000);
        let stem = kept(&emoji).unwrap();
        assert!(stem.len() <= MAX_STEM_BYTES, "{}", stem.len());
        // Cut right before a dot: no trailing dot is left.
        let dotted = format!("{}.b", "a".repeat(MAX_STEM_BYTES - 1));
        assert_eq!(kept(&dotted).unwrap(), "a".repeat(MAX_STEM_BYTES - 1));
        assert!(echoed(&huge).chars().count() <= MAX_ECHOED_CHARS + 1);
    }

    #[test]
    fn every_kept_stem_makes_a_name_the_store_accepts() {
        for requested in ["../../etc/passwd", "CON.png", "a\u{0}", "x.y.z", "_", "9"] {
            let stem = kept(requested).unwrap();
            for attempt in [0, 1, 999] {
                let name = candidate(&stem, attempt, "png");
                assert!(super::super::is_valid_name(&name), "{name}");
            }
        }
        assert_eq!(candidate("cat", 0, "png"), "cat.png");
        assert_eq!(candidate("cat", 1, "png"), "cat-2.png");
    }

    #[test]
    fn the_note_says_why_the_name_differs() {
        assert_eq!(rename_note("cat.png", "cat.png"), None);
        let note = rename_note("cat.jpg", "cat.png").unwrap();
        assert!(note.contains("`.png`"), "{note}");
        let note = rename_note("cat.png", "cat-2.png").unwrap();
        assert!(note.contains("taken"), "{note}");
        let note = rename_note("../x.png", "x.png").unwrap();
        assert!(note.contains("replaced"), "{note}");
        let note = rename_note("🐱", "20261201-000000-image-12345678.png").unwrap();
        assert!(note.contains("the server named"), "{note}");
        let note = rename_note("a\u{0}b", "a-b.png").unwrap();
        assert!(!note.contains('\u{0}'), "{note}");
    }
}
