//! The parsers under fire (issue 11): arbitrary text and mutated real scenario files never make
//! the scenario parser or the expectation parser panic, and every refusal has a position: a
//! line and column inside the file, an offset inside the expectation. The CLI turns a refusal
//! into exit 2 naming `FILE:LINE:COL` (tests/input.rs holds that end).
//!
//! Each property runs `CWLAB_FUZZ_CASES` inputs (default 2,000: a few seconds in CI); run it
//! longer by hand with, for instance, `CWLAB_FUZZ_CASES=200000 cargo test -p cwlab-model --release
//! --test parsers`. docs/PERFORMANCE.md keeps the counts tried.

use std::path::Path;

use cwlab_model::{Expectation, Scenario};
use proptest::prelude::*;

fn cases() -> u32 {
    std::env::var("CWLAB_FUZZ_CASES").ok().and_then(|v| v.parse().ok()).unwrap_or(2_000)
}

fn config() -> ProptestConfig {
    ProptestConfig { cases: cases(), failure_persistence: None, ..ProptestConfig::default() }
}

/// The real scenario files, the seeds of the mutations.
fn seeds() -> Vec<String> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../scenarios");
    let mut v: Vec<String> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| std::fs::read_to_string(e.unwrap().path()).unwrap())
        .collect();
    v.sort();
    v
}

/// Parses `text` as a scenario file: it either is one, or the error is placed inside the text.
fn holds_for_scenario(text: &str) -> Result<(), TestCaseError> {
    let file = Path::new("fuzz.toml");
    if let Err(e) = Scenario::parse(file, text) {
        let (line, col) = e.position.ok_or_else(|| {
            TestCaseError::fail(format!("no position for `{}` in {text:?}", e.message))
        })?;
        let lines = text.split('\n').count().max(1);
        prop_assert!(line >= 1 && line <= lines, "line {line} of {lines}: {e}");
        prop_assert!(col >= 1, "column {col}: {e}");
        prop_assert!(e.to_string().starts_with(&format!("fuzz.toml:{line}:{col}: ")), "{e}");
        prop_assert!(!e.message.is_empty());
    }
    Ok(())
}

/// One edit of a real file: a byte range cut, text put in, a line repeated or a word swapped.
#[derive(Debug, Clone)]
enum Edit {
    Cut(usize, usize),
    Insert(usize, String),
    RepeatLine(usize),
    Swap(usize, &'static str),
}

const WORDS: [&str; 14] =
    ["=", "\"", "[", "]", "{", "}", "==", "->", "clients", "0", "-1", "1e9", "CLOSE-WAIT", "\n"];

fn edit() -> impl Strategy<Value = Edit> {
    prop_oneof![
        (any::<usize>(), 0usize..40).prop_map(|(at, n)| Edit::Cut(at, n)),
        (any::<usize>(), ".{0,12}").prop_map(|(at, s)| Edit::Insert(at, s)),
        any::<usize>().prop_map(Edit::RepeatLine),
        (any::<usize>(), prop::sample::select(WORDS.to_vec()))
            .prop_map(|(at, w)| Edit::Swap(at, w)),
    ]
}

fn apply(text: &str, e: &Edit) -> String {
    let chars: Vec<char> = text.chars().collect();
    let at = |i: usize| if chars.is_empty() { 0 } else { i % (chars.len() + 1) };
    let s = |a: usize, b: usize| chars[a..b].iter().collect::<String>();
    match e {
        Edit::Cut(i, n) => {
            let a = at(*i);
            let b = (a + n).min(chars.len());
            s(0, a) + &s(b, chars.len())
        }
        Edit::Insert(i, t) => s(0, at(*i)) + t + &s(at(*i), chars.len()),
        Edit::RepeatLine(i) => {
            let lines: Vec<&str> = text.split('\n').collect();
            let k = i % lines.len();
            let mut v = lines.clone();
            v.insert(k, lines[k]);
            v.join("\n")
        }
        Edit::Swap(i, w) => {
            // The word at a position becomes `w`.
            let a = at(*i);
            let b = (a..chars.len()).find(|&j| chars[j].is_whitespace()).unwrap_or(chars.len());
            s(0, a) + w + &s(b, chars.len())
        }
    }
}

proptest! {
    #![proptest_config(config())]

    #[test]
    fn arbitrary_text_is_a_scenario_or_a_placed_error(text in any::<String>()) {
        holds_for_scenario(&text)?;
    }

    #[test]
    fn arbitrary_bytes_read_as_text_are_a_scenario_or_a_placed_error(
        bytes in prop::collection::vec(any::<u8>(), 0..400)
    ) {
        holds_for_scenario(&String::from_utf8_lossy(&bytes))?;
    }

    #[test]
    fn mutated_real_scenarios_are_a_scenario_or_a_placed_error(
        seed in any::<prop::sample::Index>(),
        edits in prop::collection::vec(edit(), 1..6)
    ) {
        let seeds = seeds();
        let mut text = seeds[seed.index(seeds.len())].clone();
        for e in &edits {
            text = apply(&text, e);
        }
        holds_for_scenario(&text)?;
    }

    #[test]
    fn arbitrary_expectations_parse_or_point_inside(text in ".{0,80}") {
        if let Err(e) = Expectation::parse(&text) {
            prop_assert!(e.offset <= text.len(), "offset {} of {}: {}", e.offset, text.len(), e.message);
            prop_assert!(text.is_char_boundary(e.offset), "{e:?}");
            prop_assert!(!e.message.is_empty());
        }
    }

    #[test]
    fn expectations_made_of_the_language_s_words_parse_or_point_inside(
        words in prop::collection::vec(prop::sample::select(vec![
            "server", "client", "CLOSE-WAIT", "FIN-WAIT-2", "held", "by", "acceptor", "fds",
            "grew", "growth", "==", "<=", "!=", "clients", "100", "within", "for", "1s", "path",
            "->", "transitions", "FIN", "hung", "accepted", "accept", "errors", "helper", "ESTAB",
        ]), 0..9)
    ) {
        let text = words.join(" ");
        if let Err(e) = Expectation::parse(&text) {
            prop_assert!(e.offset <= text.len(), "{e:?} in {text:?}");
        }
    }
}

#[test]
fn issue_11_a_control_character_in_a_comment_is_named_and_placed() {
    let e = Scenario::parse(Path::new("s.toml"), "# story\n#\0").unwrap_err();
    assert_eq!(
        e.to_string(),
        "s.toml:2:2: invalid character '\\0': control characters are not allowed here"
    );
}

#[test]
fn issue_11_a_hold_longer_than_the_default_timeout_is_placed_at_the_hold() {
    let text = std::fs::read_to_string(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../../scenarios/leak.toml"),
    )
    .unwrap();
    assert!(!text.contains("timeout"), "leak.toml takes the default timeout");
    let text = text.replace("hold = \"1500ms\"", "hold = \"90s\"");
    let line = text.lines().position(|l| l.starts_with("hold")).unwrap() + 1;
    let e = Scenario::parse(Path::new("s.toml"), &text).unwrap_err();
    assert_eq!(
        e.to_string(),
        format!("s.toml:{line}:8: timeout 60s leaves no time beyond the hold (90s)")
    );
}
