//! Names the target controls, made safe to show: thread names, function names from perf maps,
//! DWARF and Python code objects, file paths from /proc/PID/maps.
//!
//! Two steps, both here so that every output uses the same rules:
//! - [`name`] / [`name_bytes`] at the point a name enters the agent: invalid UTF-8 becomes
//!   U+FFFD, control characters (newlines and ESC included), DEL, C1 controls and the Unicode
//!   bidirectional overrides become visible `\xNN` / `\u{NNNN}` escapes, and the length is
//!   bounded. After this no name can end a line of a folded file, start a terminal escape
//!   sequence, or reorder the text around it.
//! - one escaper per markup sink, applied where that sink writes a name: [`markdown_text`] and
//!   [`markdown_code`] (summary.md, the GitHub step summary), [`xml`] (SVG, junit.xml, HTML),
//!   [`terminal`] (the live line and the final summary on the user's terminal). JSON, pprof and
//!   trace.json need nothing more: serde_json and prost encode any string validly.

use std::fmt::Write as _;

/// Longest name kept, in characters: real symbols (C++ templates, Rust generics) stay below
/// this; a perf map line or a code object claiming more is cut, with `…` at the end.
pub const MAX_NAME_CHARS: usize = 4096;

/// A name read from the target, made safe for every output (see the module docs).
pub fn name(text: &str) -> String {
    if text.len() <= MAX_NAME_CHARS && !text.chars().any(needs_escape) {
        return text.to_string();
    }
    let mut out = String::with_capacity(text.len().min(MAX_NAME_CHARS + 16));
    for (count, c) in text.chars().enumerate() {
        if count >= MAX_NAME_CHARS {
            out.push('…');
            break;
        }
        push_escaped(&mut out, c);
    }
    out
}

/// [`name`] of bytes that may not be UTF-8 (thread names, paths): invalid sequences become
/// U+FFFD.
pub fn name_bytes(bytes: &[u8]) -> String {
    name(&String::from_utf8_lossy(bytes))
}

/// Characters that must not reach any output as they are.
fn needs_escape(c: char) -> bool {
    c.is_control() || is_bidi_control(c)
}

/// Unicode bidirectional formatting characters: they reorder the text that follows them on
/// screen ("Trojan Source", CVE-2021-42574).
fn is_bidi_control(c: char) -> bool {
    matches!(c, '\u{202A}'..='\u{202E}' | '\u{2066}'..='\u{2069}' | '\u{200E}' | '\u{200F}' | '\u{061C}')
}

fn push_escaped(out: &mut String, c: char) {
    if !needs_escape(c) {
        out.push(c);
    } else if (c as u32) < 0x100 {
        let _ = write!(out, "\\x{:02x}", c as u32);
    } else {
        let _ = write!(out, "\\u{{{:04x}}}", c as u32);
    }
}

/// Text for a line printed on the user's terminal: any control character left (a name from
/// an older recording, say) is escaped, so no escape sequence reaches the terminal.
pub fn terminal(text: &str) -> String {
    if !text.chars().any(needs_escape) {
        return text.to_string();
    }
    let mut out = String::with_capacity(text.len() + 8);
    for c in text.chars() {
        push_escaped(&mut out, c);
    }
    out
}

/// [`terminal`] for text made of several lines: each line is cleaned, the newlines are kept.
pub fn terminal_lines(text: &str) -> String {
    text.split('\n')
        .map(terminal)
        .collect::<Vec<_>>()
        .join("\n")
}

/// Text for markdown outside code spans (GitHub-flavoured, in a table cell or a paragraph):
/// HTML is written as entities (GitHub renders raw HTML in markdown), what makes code spans,
/// links and images is backslash-escaped, and `|` cannot end a table cell. Names go through
/// this rather than into code spans, where nothing can be escaped.
pub fn markdown_text(text: &str) -> String {
    let text = terminal(text);
    let mut out = String::with_capacity(text.len() + 8);
    for c in text.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '|' => out.push_str("&#124;"),
            // Code spans, links and images (`[text](url)`, `![..]`) need these. Emphasis
            // (`*`, `_`) is left alone: harmless, and escaping it would litter every
            // snake_case name in the raw file.
            '`' => out.push_str("&#96;"),
            '\\' | '[' | ']' => {
                out.push('\\');
                out.push(c);
            }
            _ => out.push(c),
        }
    }
    out
}

/// Text inside a markdown code span (`` `...` ``): nothing is rendered there except the
/// span's own delimiter and, in a table, `|` (GFM splits cells before parsing spans; `\|` is
/// its escape even inside a span).
pub fn markdown_code(text: &str) -> String {
    terminal(text).replace('`', "'").replace('|', "\\|")
}

/// Text for XML and HTML element content (also safe in a quoted attribute): the five special
/// characters as entities; characters XML 1.0 forbids (most C0 controls) replaced by U+FFFD.
/// A raw CR becomes a reference because parsers turn it into LF even in content.
pub fn xml(text: &str) -> String {
    xml_with(text, false)
}

/// Text for a quoted XML attribute value: as [`xml`], and line breaks and tabs as character
/// references, so attribute-value normalization keeps them instead of turning them to spaces.
pub fn xml_attribute(text: &str) -> String {
    xml_with(text, true)
}

fn xml_with(text: &str, attribute: bool) -> String {
    let mut out = String::with_capacity(text.len() + 8);
    for c in text.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&apos;"),
            '\r' => out.push_str("&#13;"),
            '\n' if attribute => out.push_str("&#10;"),
            '\t' if attribute => out.push_str("&#9;"),
            c if is_xml_char(c) => out.push(c),
            _ => out.push('\u{FFFD}'),
        }
    }
    out
}

/// XML 1.0 `Char` production.
pub fn is_xml_char(c: char) -> bool {
    matches!(c, '\t' | '\n' | '\r' | '\u{20}'..='\u{D7FF}' | '\u{E000}'..='\u{FFFD}' | '\u{10000}'..)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const HOSTILE: &str = "a<b>&c|d`e\nf\x1b[31mred\x07\u{202E}gnp.exe\r\x7f\u{9b}";

    #[test]
    fn names_lose_control_characters_but_keep_the_rest_readable() {
        let clean = name(HOSTILE);
        assert_eq!(
            clean,
            "a<b>&c|d`e\\x0af\\x1b[31mred\\x07\\u{202e}gnp.exe\\x0d\\x7f\\x9b"
        );
        assert!(!clean.chars().any(char::is_control));
        assert_eq!(name("handle_request"), "handle_request");
        assert_eq!(name_bytes(b"w\xff\xfeorker"), "w\u{FFFD}\u{FFFD}orker");
    }

    #[test]
    fn long_names_are_cut() {
        let long = "x".repeat(MAX_NAME_CHARS * 3);
        let cut = name(&long);
        assert_eq!(cut.chars().count(), MAX_NAME_CHARS + 1);
        assert!(cut.ends_with('…'));
    }

    #[test]
    fn markdown_renders_no_html_and_keeps_table_cells() {
        let md = markdown_text(&name(HOSTILE));
        assert!(!md.contains('<') && !md.contains('>') && !md.contains('|'));
        assert!(!md.contains('\n') && !md.contains('\x1b'));
        assert_eq!(
            markdown_text("<img src=x onerror=alert(1)>"),
            "&lt;img src=x onerror=alert(1)&gt;"
        );
        assert_eq!(markdown_code("a`b|c<d>"), "a'b\\|c<d>");
    }

    #[test]
    fn xml_escapes_markup_and_replaces_forbidden_characters() {
        assert_eq!(
            xml("<a href=\"x\">&'</a>"),
            "&lt;a href=&quot;x&quot;&gt;&amp;&apos;&lt;/a&gt;"
        );
        assert_eq!(xml("a\x1bb\x00c"), "a\u{FFFD}b\u{FFFD}c");
        assert_eq!(xml("a\nb\tc\rd<"), "a\nb\tc&#13;d&lt;");
        assert_eq!(xml_attribute("a\nb\tc\rd"), "a&#10;b&#9;c&#13;d");
    }

    #[test]
    fn terminal_lines_keep_our_newlines_only() {
        assert_eq!(
            terminal_lines("stall x\x1b]0;pwned\x07\n    at f"),
            "stall x\\x1b]0;pwned\\x07\n    at f"
        );
    }

    proptest! {
        #![proptest_config(crate::fuzz_config())]
        #[test]
        fn fuzz_any_name_is_safe_everywhere(bytes in proptest::collection::vec(any::<u8>(), 0..600)) {
            let clean = name_bytes(&bytes);
            prop_assert!(!clean.chars().any(|c| c.is_control() || is_bidi_control(c)));
            prop_assert!(clean.chars().count() <= MAX_NAME_CHARS + 1);
            let md = markdown_text(&clean);
            prop_assert!(!md.contains(['<', '>', '|', '\n', '`']));
            let x = xml(&clean);
            prop_assert!(!x.contains(['<', '>', '"']));
            prop_assert!(x.chars().all(is_xml_char));
            prop_assert_eq!(terminal(&clean), clean.clone());
        }
    }
}
