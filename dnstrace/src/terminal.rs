//! Text from the wire or from other processes (query names, thread names,
//! files' contents) on its way to a terminal: any process on the node can
//! choose it, so a character that a terminal would act on, or that would
//! reorder what is shown, is written as a visible escape instead.

use std::borrow::Cow;

/// `text` with every control character (C0, DEL, C1) and every Unicode
/// character that changes the direction or the lines of what follows
/// written as an escape: `\x1b`, `\u{202e}`. Backslashes stay as they are,
/// so names keep the escapes hickory gives them (`\032`).
pub fn escape(text: &str) -> Cow<'_, str> {
    if !text.chars().any(needs_escape) {
        return Cow::Borrowed(text);
    }
    let mut escaped = String::with_capacity(text.len() + 8);
    for c in text.chars() {
        match c {
            c if !needs_escape(c) => escaped.push(c),
            c if u32::from(c) < 0x80 => escaped.push_str(&format!("\\x{:02x}", u32::from(c))),
            c => escaped.push_str(&format!("\\u{{{:x}}}", u32::from(c))),
        }
    }
    Cow::Owned(escaped)
}

/// One line on standard error: `dnstrace: ` and `line`, escaped.
pub fn eprint_line(line: &str) {
    eprintln!("dnstrace: {}", escape(line));
}

fn needs_escape(c: char) -> bool {
    c.is_control()
        || matches!(
            c,
            // Arabic letter mark, LRM and RLM, the line and paragraph
            // separators, the embeddings and overrides, and the isolates.
            '\u{061c}' | '\u{200e}' | '\u{200f}' | '\u{2028}'..='\u{202e}' | '\u{2066}'..='\u{2069}'
        )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plain_text_is_not_copied() {
        assert!(matches!(
            escape("getent postgres.svc. ü 名前"),
            Cow::Borrowed(_)
        ));
    }

    #[test]
    fn controls_and_direction_changes_are_shown_as_escapes() {
        assert_eq!(escape("evil\x1b]0;x\x07"), "evil\\x1b]0;x\\x07");
        assert_eq!(escape("a\nb\rc\td\x7f"), "a\\x0ab\\x0dc\\x09d\\x7f");
        assert_eq!(escape("\u{9b}31m"), "\\u{9b}31m");
        assert_eq!(escape("abc\u{202e}fdp.exe"), "abc\\u{202e}fdp.exe");
        assert_eq!(
            escape("\u{2066}\u{2067}\u{2068}\u{2069}\u{200e}\u{200f}\u{202a}"),
            "\\u{2066}\\u{2067}\\u{2068}\\u{2069}\\u{200e}\\u{200f}\\u{202a}"
        );
        assert_eq!(escape("a\\032b"), "a\\032b", "backslashes stay");
    }
}
