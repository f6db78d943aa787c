//! The words of a message as search sees them, for both stores (issue 18's
//! `SearchMessages`; the design and its measurements are in
//! docs/research/search/). Text is NFKC-normalized and lowercased. A run of
//! letters and digits outside Chinese, Japanese and Korean scripts is a
//! word. A run of CJK characters, which are written without spaces, becomes
//! its overlapping pairs of characters plus its last character alone, so a
//! query of one or two characters (东京, 猫, 서울) finds the words inside
//! longer runs, which neither PostgreSQL's parsers nor trigram indexes do.

use unicode_normalization::UnicodeNormalization;

/// Longest word kept, in characters (longer words are cut to it).
pub const MAX_WORD_CHARS: usize = 64;

/// Whether `c` is written without spaces between words: Han, kana, Hangul.
pub fn is_cjk(c: char) -> bool {
    matches!(c as u32,
        0x1100..=0x11FF     // Hangul Jamo
        | 0x3005..=0x3007   // 々 〆 〇
        | 0x3040..=0x30FF   // Hiragana, Katakana
        | 0x3130..=0x318F   // Hangul compatibility Jamo
        | 0x31F0..=0x31FF   // Katakana phonetic extensions
        | 0x3400..=0x4DBF   // CJK extension A
        | 0x4E00..=0x9FFF   // CJK unified ideographs
        | 0xA960..=0xA97F   // Hangul Jamo extended-A
        | 0xAC00..=0xD7AF   // Hangul syllables
        | 0xD7B0..=0xD7FF   // Hangul Jamo extended-B
        | 0xF900..=0xFAFF   // CJK compatibility ideographs
        | 0x20000..=0x3FFFF // CJK extensions B and on
    )
}

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Class {
    Word,
    Cjk,
    Gap,
}

/// A normalized character and the bytes of the original it came from.
struct Normal {
    c: char,
    class: Class,
    start: usize,
    end: usize,
}

fn normalize(text: &str) -> Vec<Normal> {
    let mut out = Vec::with_capacity(text.len());
    let mut push = |c: char, start: usize, end: usize| {
        let class = if is_cjk(c) {
            Class::Cjk
        } else if c.is_alphanumeric() {
            Class::Word
        } else {
            Class::Gap
        };
        out.push(Normal {
            c,
            class,
            start,
            end,
        });
    };
    for (start, original) in text.char_indices() {
        let end = start + original.len_utf8();
        if original.is_ascii() {
            // ASCII is its own NFKC form: skip the decomposition (most of
            // the cost of indexing English text).
            push(original.to_ascii_lowercase(), start, end);
            continue;
        }
        for n in std::iter::once(original).nfkc() {
            for c in n.to_lowercase() {
                push(c, start, end);
            }
        }
    }
    out
}

/// The runs of word or CJK characters.
fn runs(chars: &[Normal]) -> impl Iterator<Item = (Class, &[Normal])> {
    chars
        .chunk_by(|a, b| a.class == b.class)
        .filter(|run| run[0].class != Class::Gap)
        .map(|run| (run[0].class, run))
}

/// A word of a message: its text, its position (from 1: adjacent words
/// have adjacent positions) and the bytes of the message it comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Token {
    /// The normalized text.
    pub text: String,
    /// Its position.
    pub pos: u32,
    /// Where it starts in the original text (bytes).
    pub start: usize,
    /// Where it ends in the original text (bytes).
    pub end: usize,
}

/// The words of `text`, in order.
pub fn tokens(text: &str) -> Vec<Token> {
    let chars = normalize(text);
    let mut out = Vec::new();
    let mut pos = 0u32;
    let mut push = |text: String, start: usize, end: usize| {
        pos += 1;
        out.push(Token {
            text,
            pos,
            start,
            end,
        });
    };
    for (class, run) in runs(&chars) {
        let last = &run[run.len() - 1];
        match class {
            Class::Word => push(
                run.iter().take(MAX_WORD_CHARS).map(|n| n.c).collect(),
                run[0].start,
                last.end,
            ),
            _ => {
                for pair in run.windows(2) {
                    push(
                        [pair[0].c, pair[1].c].iter().collect(),
                        pair[0].start,
                        pair[1].end,
                    );
                }
                push(last.c.to_string(), last.start, last.end);
            }
        }
    }
    out
}

/// One part of a query; a message matches when it has every part.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Term {
    /// A whole word.
    Word(String),
    /// A CJK run of two or more characters: its pairs, adjacent, in order.
    Phrase(Vec<String>),
    /// One CJK character: any word that starts with it.
    Prefix(String),
}

/// The parts of `query`, each once, in order.
pub fn terms(query: &str) -> Vec<Term> {
    let chars = normalize(query);
    let mut out = Vec::new();
    for (class, run) in runs(&chars) {
        let term = match class {
            Class::Word => Term::Word(run.iter().take(MAX_WORD_CHARS).map(|n| n.c).collect()),
            _ if run.len() == 1 => Term::Prefix(run[0].c.to_string()),
            _ => Term::Phrase(
                run.windows(2)
                    .map(|w| [w[0].c, w[1].c].iter().collect())
                    .collect(),
            ),
        };
        if !out.contains(&term) {
            out.push(term);
        }
    }
    out
}

/// Whether `text` matches every part of `terms` (and `terms` is not empty):
/// what an index built from [`tokens`] answers, written plainly.
pub fn matches(text: &str, terms: &[Term]) -> bool {
    !terms.is_empty() && {
        let toks = tokens(text);
        terms.iter().all(|t| !hits(&toks, t).is_empty())
    }
}

/// The runs of `toks` that match `term`, as (first, last) token indexes.
fn hits(toks: &[Token], term: &Term) -> Vec<(usize, usize)> {
    match term {
        Term::Word(w) => (0..toks.len())
            .filter(|&i| toks[i].text == *w)
            .map(|i| (i, i))
            .collect(),
        Term::Prefix(c) => (0..toks.len())
            .filter(|&i| toks[i].text.starts_with(c.as_str()))
            .map(|i| (i, i))
            .collect(),
        Term::Phrase(pairs) => (0..toks.len().saturating_sub(pairs.len() - 1))
            .filter(|&i| {
                toks[i..i + pairs.len()]
                    .iter()
                    .zip(pairs)
                    .all(|(t, p)| t.text == *p)
                    && toks[i..i + pairs.len()]
                        .windows(2)
                        .all(|w| w[1].pos == w[0].pos + 1)
            })
            .map(|i| (i, i + pairs.len() - 1))
            .collect(),
    }
}

/// A short part of a message around its first match, and where the
/// matches are in it.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Snippet {
    /// The text, with "…" where text was left out.
    pub text: String,
    /// The matches, as [start, end) offsets in characters of `text`, in
    /// order.
    pub marks: Vec<(u32, u32)>,
}

impl Snippet {
    /// `text` with each match wrapped in `open` and `close` (for people
    /// reading it).
    pub fn marked(&self, open: &str, close: &str) -> String {
        let mut out = String::with_capacity(self.text.len());
        for (i, ch) in self.text.chars().enumerate() {
            let i = i as u32;
            if self.marks.iter().any(|m| m.0 == i) {
                out.push_str(open);
            }
            out.push(ch);
            if self.marks.iter().any(|m| m.1 == i + 1) {
                out.push_str(close);
            }
        }
        out
    }
}

/// The byte ranges of `text` that match `terms`, merged and in order.
fn matched_spans(text: &str, toks: &[Token], terms: &[Term]) -> Vec<(usize, usize)> {
    let mut spans: Vec<(usize, usize)> = Vec::new();
    for term in terms {
        for (first, last) in hits(toks, term) {
            let start = toks[first].start;
            let end = match term {
                // Only the character asked for.
                Term::Prefix(_) => start + text[start..].chars().next().map_or(0, char::len_utf8),
                _ => toks[last].end,
            };
            spans.push((start, end));
        }
    }
    spans.sort_unstable();
    let mut merged: Vec<(usize, usize)> = Vec::new();
    for (s, e) in spans {
        match merged.last_mut() {
            Some(last) if s <= last.1 => last.1 = last.1.max(e),
            _ => merged.push((s, e)),
        }
    }
    merged
}

/// At most `max_chars` characters of `text` around its first match of
/// `terms` (starting up to a third of the window before it), with "…"
/// where text was left out, and where the matches are in it.
pub fn snippet(text: &str, terms: &[Term], max_chars: usize) -> Snippet {
    let toks = tokens(text);
    let merged = matched_spans(text, &toks, terms);
    let first = merged.first().map_or(0, |m| m.0);
    let before: Vec<usize> = text[..first].char_indices().map(|(i, _)| i).collect();
    let from = before
        .len()
        .checked_sub(max_chars / 3)
        .map_or(0, |skip| before[skip]);
    let mut out = Snippet::default();
    if from > 0 {
        out.text.push('…');
    }
    let mut n = out.text.chars().count() as u32;
    let mut open: Option<u32> = None;
    for (taken, (i, ch)) in text[from..].char_indices().enumerate() {
        let at = from + i;
        if taken == max_chars {
            out.text.push('…');
            break;
        }
        if merged.iter().any(|m| m.0 == at) {
            open = Some(n);
        }
        out.text.push(ch);
        n += 1;
        if merged.iter().any(|m| m.1 == at + ch.len_utf8()) {
            if let Some(start) = open.take() {
                out.marks.push((start, n));
            }
        }
    }
    if let Some(start) = open {
        // A match cut off by the end of the window.
        out.marks.push((start, n));
    }
    out
}

/// How much of `text` matches `terms`, in (0, 1] when it matches: the
/// share of its words (as [`tokens`] counts them) inside a match.
pub fn rank(text: &str, terms: &[Term]) -> f32 {
    let toks = tokens(text);
    if toks.is_empty() {
        return 0.0;
    }
    let mut hit = vec![false; toks.len()];
    for term in terms {
        for (first, last) in hits(&toks, term) {
            hit[first..=last].iter_mut().for_each(|h| *h = true);
        }
    }
    hit.iter().filter(|h| **h).count() as f32 / toks.len() as f32
}

#[cfg(test)]
mod tests {
    use super::*;

    fn texts(text: &str) -> Vec<String> {
        tokens(text).into_iter().map(|t| t.text).collect()
    }

    #[test]
    fn words_are_normalized_and_cjk_runs_become_pairs() {
        assert_eq!(
            texts("Hello, WORLD! ｆｕｌｌ width"),
            ["hello", "world", "full", "width"]
        );
        assert_eq!(texts("我们去东京"), ["我们", "们去", "去东", "东京", "京"]);
        assert_eq!(texts("서울에서"), ["서울", "울에", "에서", "서"]);
        assert_eq!(
            texts("meet at 東京駅 at 3pm"),
            ["meet", "at", "東京", "京駅", "駅", "at", "3pm"]
        );
        let t = tokens("ok 東京");
        assert_eq!((t[1].start, t[1].end), (3, 9), "bytes of the original");
        assert_eq!(t.iter().map(|t| t.pos).collect::<Vec<_>>(), [1, 2, 3]);
    }

    /// The ASCII fast path gives what NFKC and lowercasing give.
    #[test]
    fn ascii_is_normalized_like_everything_else() {
        for b in 0u8..128 {
            let c = b as char;
            let slow: String = std::iter::once(c)
                .nfkc()
                .flat_map(char::to_lowercase)
                .collect();
            let fast = normalize(&c.to_string());
            assert_eq!(fast.len(), 1);
            assert_eq!(fast[0].c.to_string(), slow, "{b}");
            assert_eq!(fast[0].class == Class::Word, c.is_alphanumeric(), "{b}");
        }
    }

    #[test]
    fn real_sentences_are_found_in_each_language() {
        let cases = [
            (
                "The quarterly report is due on Friday.",
                "report friday",
                true,
            ),
            ("The quarterly report is due on Friday.", "reports", false),
            ("我们明天在东京开会，别忘了带资料。", "东京", true),
            ("我们明天在东京开会，别忘了带资料。", "开会", true),
            ("我们明天在东京开会，别忘了带资料。", "京都", false),
            ("明日の会議は東京駅の近くで行います。", "東京駅", true),
            ("明日の会議は東京駅の近くで行います。", "会議", true),
            ("明日の会議は東京駅の近くで行います。", "大阪", false),
            ("내일 서울에서 회의가 있습니다.", "서울", true),
            ("내일 서울에서 회의가 있습니다.", "회의", true),
            ("내일 서울에서 회의가 있습니다.", "부산", false),
            ("猫が好きです", "猫", true),
            ("子猫が好き", "猫", true),
            ("Lunch at 1? 好的", "lunch 好", true),
        ];
        for (text, query, found) in cases {
            assert_eq!(matches(text, &terms(query)), found, "{query:?} in {text:?}");
        }
        assert!(
            !matches("anything", &terms("  ,. ")),
            "an empty query finds nothing"
        );
    }

    #[test]
    fn snippets_mark_what_matched() {
        let q = terms("東京");
        let s = snippet("明日は東京で会議", &q, 40);
        assert_eq!(s.text, "明日は東京で会議");
        assert_eq!(s.marks, [(3, 5)], "characters, not bytes");
        assert_eq!(s.marked("[", "]"), "明日は[東京]で会議");
        let q = terms("report");
        let long = format!("{} the report {}", "word ".repeat(30), "more ".repeat(30));
        let s = snippet(&long, &q, 30);
        assert!(s.text.starts_with('…') && s.text.ends_with('…'), "{s:?}");
        assert!(s.marked("<b>", "</b>").contains("<b>report</b>"), "{s:?}");
        assert_eq!(s.text.chars().filter(|c| *c != '…').count(), 30);
        let (a, b) = s.marks[0];
        let marked: String = s
            .text
            .chars()
            .skip(a as usize)
            .take((b - a) as usize)
            .collect();
        assert_eq!(marked, "report");
        let q = terms("猫 lunch");
        assert_eq!(
            snippet("Lunch with 子猫 and LUNCH", &q, 40).marked("[", "]"),
            "[Lunch] with 子[猫] and [LUNCH]",
            "a one-character query marks only that character"
        );
    }

    #[test]
    fn rank_is_the_share_of_words_that_match() {
        let q = terms("report");
        assert_eq!(rank("report", &q), 1.0);
        assert_eq!(rank("the report is late", &q), 0.25);
        assert_eq!(rank("nothing here", &q), 0.0);
        assert_eq!(rank("", &q), 0.0);
        let q = terms("東京");
        // A shorter message that holds the words ranks higher.
        assert!(rank("東京", &q) > rank("明日は東京で会議", &q));
    }
}
