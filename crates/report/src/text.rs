//! Text shapes the human faces share: wrapped paragraphs and descriptor ranges.

/// Words of `text` in lines of at most `width` characters; a blank line between paragraphs.
pub fn wrap(text: &str, width: usize) -> Vec<String> {
    let mut lines = Vec::new();
    for para in text.split("\n\n") {
        let mut line = String::new();
        for w in para.split_whitespace() {
            if !line.is_empty() && line.chars().count() + 1 + w.chars().count() > width {
                lines.push(std::mem::take(&mut line));
            }
            if !line.is_empty() {
                line.push(' ');
            }
            line.push_str(w);
        }
        if !line.is_empty() {
            lines.push(line);
        }
        lines.push(String::new());
    }
    lines.pop();
    lines
}

/// Text escaped for XML and HTML, attributes and content alike; control characters XML cannot
/// carry are dropped. Every SVG, HTML and JUnit face writes through this.
pub fn esc(t: &str) -> String {
    let mut s = String::with_capacity(t.len());
    for c in t.chars() {
        match c {
            '&' => s.push_str("&amp;"),
            '<' => s.push_str("&lt;"),
            '>' => s.push_str("&gt;"),
            '"' => s.push_str("&quot;"),
            '\'' => s.push_str("&apos;"),
            c if (c as u32) < 0x20 && !matches!(c, '\n' | '\t' | '\r') => {}
            c => s.push(c),
        }
    }
    s
}

/// `5–104` or `5, 7, 9–12`; long lists are cut.
pub fn ranges(fds: &[i32]) -> String {
    let mut v = fds.to_vec();
    v.sort_unstable();
    v.dedup();
    let mut parts: Vec<String> = Vec::new();
    let mut i = 0;
    while i < v.len() {
        let mut j = i;
        while j + 1 < v.len() && v[j + 1] == v[j] + 1 {
            j += 1;
        }
        parts.push(if i == j { v[i].to_string() } else { format!("{}–{}", v[i], v[j]) });
        i = j + 1;
    }
    if parts.len() > 6 {
        let n = parts.len();
        parts.truncate(5);
        parts.push(format!("… ({n} runs)"));
    }
    parts.join(", ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fd_ranges_read_like_a_person_writes_them() {
        assert_eq!(ranges(&[5, 6, 7, 8]), "5–8");
        assert_eq!(ranges(&[9, 5, 7, 10, 11]), "5, 7, 9–11");
        assert_eq!(ranges(&[1, 3, 5, 7, 9, 11, 13]), "1, 3, 5, 7, 9, … (7 runs)");
    }

    #[test]
    fn wraps_at_words() {
        assert_eq!(wrap("aa bb cc", 5), vec!["aa bb", "cc"]);
        assert_eq!(wrap("a\n\nb", 10), vec!["a", "", "b"]);
    }
}
