//! `scan_text`: find prompt-injection attempts in tool output.
//!
//! Text is matched in two normalized forms that keep a map back to byte offsets of the original:
//! a folded form (compatibility decomposition as in NFKC/NFKD, accents dropped, lowercase,
//! common Cyrillic and Greek homoglyphs mapped to Latin, invisible characters removed) and a
//! squashed form (the folded form with digits and symbols read as letters, as in `sh0w`, and
//! everything but letters and digits removed, which defeats `i g n o r e` and `ignore_previous-instructions`
//! spellings). Base64 runs and Unicode tag
//! characters are decoded and scanned again.

use std::collections::BTreeMap;
use std::sync::LazyLock;

use base64::Engine as _;
use regex::Regex;
use unicode_normalization::char::{decompose_compatible, is_combining_mark};

use crate::finding::{Category, Finding};

/// How many times decoded content (base64, tag characters) is scanned again inside itself.
const MAX_DEPTH: usize = 2;

/// Base64 runs shorter than this rarely hold a sentence, and longer ones are usually binary.
const BASE64_MIN: usize = 16;
const BASE64_MAX: usize = 64 * 1024;

/// The most findings a [`ScanReport`] lists. A few megabytes of repeated phrases hold hundreds
/// of thousands of findings, an answer several times larger than the text itself; the first
/// thousand by position show what was found and where, and the redacted text still covers every
/// finding.
pub const MAX_FINDINGS: usize = 1000;

/// The result of [`scan_text`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ScanReport {
    /// True when at least one finding was reported.
    pub suspicious: bool,
    /// What was found, sorted by position, with byte ranges into the original text: the first
    /// [`MAX_FINDINGS`] of them.
    pub findings: Vec<Finding>,
    /// True when there were more than [`MAX_FINDINGS`] findings and the rest were left out.
    pub findings_truncated: bool,
    /// The text with every finding, listed or not, replaced by `[REDACTED:<category>]` and
    /// hidden characters removed.
    pub redacted: String,
}

/// Scans `text` for prompt injection.
pub fn scan_text(text: &str) -> ScanReport {
    let mut findings = scan(text, 0);
    let redacted = redact(text, &findings);
    let findings_truncated = findings.len() > MAX_FINDINGS;
    findings.truncate(MAX_FINDINGS);
    ScanReport {
        suspicious: !findings.is_empty(),
        findings,
        findings_truncated,
        redacted,
    }
}

/// Separator between words in the folded form; removed in the squashed form.
const SEP: &str = "_";

/// Rules as (category, reason, pattern); `_` stands for a word separator.
const RULES: &[(Category, &str, &str)] = &[
    (
        Category::InstructionOverride,
        "asks to ignore previous instructions",
        "(?:ignore|disregard|forget|override|bypass|discard|abandon|neglect)_(?:(?:all|any|every|of|the|these|those|my|our|other|given|current|existing|safety)_){0,3}(?:all|your|previous|prior|above|earlier|preceding|former|foregoing|original|initial|system)_(?:(?:all|any|of|the|your|previous|prior|above|earlier|preceding|former|original|initial|system|safety)_){0,3}(?:instructions?|prompts?|directions?|directives?|rules|guidelines|messages|context|commands|orders|constraints|guardrails|policies|programming|training)",
    ),
    (
        Category::InstructionOverride,
        "asks not to follow previous instructions",
        "(?:do_not|don_?t|never|stop)_(?:follow|following|obey|obeying|adhere_to|listen_to)_(?:(?:any|of|the)_){0,2}(?:your|previous|prior|original|initial|system|above)_(?:(?:previous|prior|original|initial|system)_)?(?:instructions|rules|guidelines|prompt)",
    ),
    (
        Category::InstructionOverride,
        "announces new instructions",
        "(?:your_)?(?:new|updated|real|actual|true)_(?:system_)?instructions_(?:are|is|follow)",
    ),
    (
        Category::InstructionOverride,
        "addresses instructions to the model",
        "(?:instructions?|message|note|attention)_(?:for|to)_(?:the_|any_)?(?:ai|assistant|model|llm|agent|chatbot|language_model)s?",
    ),
    (
        Category::InstructionOverride,
        "redefines the model's behavior from now on",
        "from_now_on_you_(?:will|must|shall|are_to)_(?:ignore|disregard|obey|only|act|respond|answer|comply)",
    ),
    (
        Category::RolePlay,
        "assigns an unrestricted persona",
        "you_are_now_(?:(?:a|an|the|in|my|called|named|known_as)_){0,2}(?:dan|stan|dude|aim|evil|unrestricted|unfiltered|uncensored|jailbroken|jailbreak|developer_mode|god_mode|unchained|rogue|amoral|immoral|no_longer_bound)",
    ),
    (
        Category::RolePlay,
        "asks to enter an unrestricted mode",
        "(?:enable|enter|activate|switch_to|turn_on)_(?:the_)?(?:god|dan|jailbreak|jailbroken|unrestricted|unfiltered|uncensored)_mode",
    ),
    (
        Category::RolePlay,
        "invokes the do anything now jailbreak",
        "do_anything_now",
    ),
    (
        Category::RolePlay,
        "asks to act without restrictions",
        "(?:act|behave|respond|answer)_as_(?:if_you_(?:are|were)_)?(?:an?_)?(?:unrestricted|unfiltered|uncensored|jailbroken|evil|amoral)",
    ),
    (
        Category::RolePlay,
        "asks to pretend to have no restrictions",
        "(?:pretend|imagine)_(?:that_)?(?:you_)?(?:are|have|to_be)_(?:an?_)?(?:no_(?:restrictions|rules|limits|filters|guidelines)|unrestricted|unfiltered|uncensored|jailbroken|evil)",
    ),
    (
        Category::RolePlay,
        "claims the model has no restrictions",
        "you_(?:now_)?(?:have|are_under|are_bound_by)_no_(?:(?:ethical|moral|content|safety)_)?(?:restrictions|limitations|limits|filters|guidelines|rules)",
    ),
    (
        Category::SystemPromptRequest,
        "asks for the system prompt",
        "(?:print|reveal|show|display|output|repeat|tell|give|leak|dump|write|echo|recite|disclose|share|send|paste|return|list)_(?:(?:me|us|out|back)_)?(?:(?:your|the|all|of|entire|full|complete|exact|original|hidden|initial|secret|verbatim|above|whole)_){0,4}(?:system|initial|hidden|original|secret|developer|pre)_?(?:prompts?|instructions|messages?)",
    ),
    (
        Category::SystemPromptRequest,
        "asks what the model's instructions are",
        "what_(?:is|are|was|were)_your_(?:(?:system|initial|original|hidden|secret|exact)_)?(?:prompt|instructions)",
    ),
    (
        Category::SystemPromptRequest,
        "asks to repeat the text above",
        "(?:repeat|print|output|recite)_(?:(?:all|the|everything|every|words?|text|lines)_){1,3}(?:above|before_this)",
    ),
];

/// Chat-template control tokens, matched in the folded form only (they are punctuation).
const TOKENS: &str = r"<\|[a-z_]{2,30}\|>|\[/?inst\]|<</?sys>>|</s>|</?(?:start|end)_of_turn>";

struct Compiled {
    folded: Vec<(Category, &'static str, Regex)>,
    squashed: Vec<(Category, &'static str, Regex)>,
    tokens: Regex,
    base64: Regex,
}

static COMPILED: LazyLock<Compiled> = LazyLock::new(|| {
    let build = |f: &dyn Fn(&str) -> String| {
        RULES
            .iter()
            .map(|(category, reason, pattern)| {
                let regex = Regex::new(&f(pattern))
                    .unwrap_or_else(|e| panic!("rule {reason:?} is invalid: {e}"));
                (*category, *reason, regex)
            })
            .collect()
    };
    Compiled {
        folded: build(&|p| format!(r"\b(?:{})\b", p.replace(SEP, r"[^\p{L}\p{N}]+"))),
        squashed: build(&|p| p.replace(SEP, "")),
        tokens: Regex::new(TOKENS).unwrap_or_else(|e| panic!("token pattern is invalid: {e}")),
        base64: Regex::new(r"[A-Za-z0-9+/_-]{16,}={0,2}")
            .unwrap_or_else(|e| panic!("base64 pattern is invalid: {e}")),
    }
});

/// Normalized text with, for each of its bytes, the byte range of the original character.
struct Normalized {
    text: String,
    map: Vec<(usize, usize)>,
}

impl Normalized {
    fn original(&self, start: usize, end: usize) -> (usize, usize) {
        (self.map[start].0, self.map[end - 1].1)
    }
}

fn normalize(text: &str, squash: bool) -> Normalized {
    let mut out = Normalized {
        text: String::with_capacity(text.len()),
        map: Vec::with_capacity(text.len()),
    };
    for (i, c) in text.char_indices() {
        if hidden_kind(c).is_some() {
            continue;
        }
        let range = (i, i + c.len_utf8());
        decompose_compatible(c, |d| {
            if is_combining_mark(d) {
                return;
            }
            for l in d.to_lowercase() {
                let l = homoglyph(l);
                let l = if squash { leet(l) } else { l };
                if squash && !l.is_alphanumeric() {
                    continue;
                }
                out.text.push(l);
                out.map.extend(std::iter::repeat_n(range, l.len_utf8()));
            }
        });
    }
    out
}

/// Maps lowercase letters that look like Latin letters to those letters.
fn homoglyph(c: char) -> char {
    match c {
        'а' | 'α' | 'ɑ' => 'a',
        'в' | 'β' => 'b',
        'с' | 'ϲ' => 'c',
        'ԁ' => 'd',
        'е' | 'ё' | 'ε' => 'e',
        'ɡ' => 'g',
        'һ' | 'н' => 'h',
        'і' | 'ї' | 'ι' | 'ı' => 'i',
        'ј' => 'j',
        'к' | 'κ' => 'k',
        'м' => 'm',
        'η' | 'ո' => 'n',
        'о' | 'ο' | 'օ' => 'o',
        'р' | 'ρ' => 'p',
        'ԛ' => 'q',
        'ѕ' => 's',
        'т' | 'τ' => 't',
        'υ' | 'ս' => 'u',
        'ν' => 'v',
        'ԝ' | 'ω' => 'w',
        'х' | 'χ' => 'x',
        'у' | 'γ' => 'y',
        c => c,
    }
}

/// Maps digits and symbols used as letters ("sh0w", "pr0mpt", "$ystem"). Only the squashed
/// form uses it: there the rules match long phrases, so numbers in ordinary text do not combine
/// into a match.
fn leet(c: char) -> char {
    match c {
        '0' => 'o',
        '1' | '!' | '|' => 'i',
        '3' => 'e',
        '4' | '@' => 'a',
        '5' | '$' => 's',
        '7' | '+' => 't',
        c => c,
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Hidden {
    ZeroWidth,
    Joiner,
    Bidi,
    Tag,
}

fn hidden_kind(c: char) -> Option<Hidden> {
    Some(match c {
        '\u{200B}'
        | '\u{2060}'..='\u{2064}'
        | '\u{FEFF}'
        | '\u{00AD}'
        | '\u{180E}'
        | '\u{034F}'
        | '\u{115F}'
        | '\u{1160}'
        | '\u{3164}'
        | '\u{FFA0}' => Hidden::ZeroWidth,
        '\u{200C}' | '\u{200D}' => Hidden::Joiner,
        '\u{202A}'..='\u{202E}'
        | '\u{2066}'..='\u{2069}'
        | '\u{200E}'
        | '\u{200F}'
        | '\u{061C}' => Hidden::Bidi,
        '\u{E0000}'..='\u{E007F}' => Hidden::Tag,
        _ => return None,
    })
}

/// Finds runs of hidden characters, leaving out the legitimate uses: a byte-order mark at the
/// start, joiners inside emoji or non-Latin scripts, and tag sequences that spell a subdivision
/// flag after U+1F3F4.
fn hidden_runs(text: &str) -> Vec<(Hidden, usize, usize)> {
    let chars: Vec<(usize, char)> = text.char_indices().collect();
    let mut runs: Vec<(Hidden, usize, usize)> = Vec::new();
    let mut i = 0;
    while i < chars.len() {
        let (at, c) = chars[i];
        let Some(kind) = hidden_kind(c) else {
            i += 1;
            continue;
        };
        let mut j = i;
        while j < chars.len() && hidden_kind(chars[j].1) == Some(kind) {
            j += 1;
        }
        let end = chars.get(j).map_or(text.len(), |&(b, _)| b);
        let before = i.checked_sub(1).map(|k| chars[k].1);
        let after = chars.get(j).map(|&(_, c)| c);
        let legitimate = match kind {
            Hidden::ZeroWidth => at == 0 && c == '\u{FEFF}' && j == 1,
            Hidden::Joiner => {
                !before.is_some_and(|c| c.is_ascii_alphanumeric())
                    && !after.is_some_and(|c| c.is_ascii_alphanumeric())
            }
            Hidden::Tag => {
                before == Some('\u{1F3F4}') && chars[j - 1].1 == '\u{E007F}' && j - i <= 8
            }
            Hidden::Bidi => false,
        };
        if !legitimate {
            runs.push((kind, at, end));
        }
        i = j;
    }
    runs
}

fn scan(text: &str, depth: usize) -> Vec<Finding> {
    let compiled = &*COMPILED;
    let mut findings = Vec::new();

    for (kind, start, end) in hidden_runs(text) {
        let reason = match kind {
            Hidden::ZeroWidth | Hidden::Joiner => "zero-width characters",
            Hidden::Bidi => "bidirectional control characters",
            Hidden::Tag => "unicode tag characters",
        };
        findings.push(Finding::new(Category::HiddenUnicode, reason, start, end));
        if kind == Hidden::Tag && depth < MAX_DEPTH {
            // Tag characters mirror ASCII and are invisible: "ASCII smuggling".
            let decoded: String = text[start..end]
                .chars()
                .filter_map(|c| char::from_u32(u32::from(c) - 0xE0000))
                .filter(|c| c.is_ascii_graphic() || *c == ' ')
                .collect();
            for inner in dedupe_categories(scan(&decoded, depth + 1)) {
                findings.push(Finding::new(
                    inner,
                    "hidden in unicode tag characters",
                    start,
                    end,
                ));
            }
        }
    }

    let folded = normalize(text, false);
    for m in compiled.tokens.find_iter(&folded.text) {
        let (start, end) = folded.original(m.start(), m.end());
        findings.push(Finding::new(
            Category::SpecialToken,
            "chat template control token",
            start,
            end,
        ));
    }
    let mut covered = Covered::default();
    for (category, reason, regex) in &compiled.folded {
        for m in regex.find_iter(&folded.text) {
            let (start, end) = folded.original(m.start(), m.end());
            covered.insert(*category, start, end);
            findings.push(Finding::new(*category, *reason, start, end));
        }
    }
    // A squashed match is reported only where no match of its category, folded or squashed,
    // already overlaps it: the squashed form mostly finds the same phrases again.
    let squashed = normalize(text, true);
    for (category, reason, regex) in &compiled.squashed {
        for m in regex.find_iter(&squashed.text) {
            let (start, end) = squashed.original(m.start(), m.end());
            if !covered.overlaps(*category, start, end) {
                covered.insert(*category, start, end);
                findings.push(Finding::new(*category, *reason, start, end));
            }
        }
    }

    if depth < MAX_DEPTH {
        for m in compiled.base64.find_iter(text) {
            if m.len() < BASE64_MIN || m.len() > BASE64_MAX {
                continue;
            }
            let Some(decoded) = decode_base64(m.as_str()) else {
                continue;
            };
            let inner = dedupe_categories(scan(&decoded, depth + 1));
            if !inner.is_empty() {
                let names: Vec<&str> = inner.iter().map(|c| c.as_str()).collect();
                let reason = format!("base64-encoded text contains {}", names.join(", "));
                findings.push(Finding::new(
                    Category::EncodedInstruction,
                    reason,
                    m.start(),
                    m.end(),
                ));
            }
        }
    }

    findings.sort_by_key(|f| (f.start, f.end, f.category));
    findings.dedup_by(|a, b| a.category == b.category && a.start == b.start && a.end == b.end);
    findings
}

/// The byte ranges of the original text matched so far, per category, merged into disjoint
/// ranges. Disjoint ranges sorted by start are sorted by end too, so whether a new range
/// overlaps any of them is one lookup of the last range starting before it ends: the scan stays
/// n log n in the number of matches where comparing each match with all earlier ones was
/// quadratic, and took seconds for a few megabytes of repeated phrases.
#[derive(Default)]
struct Covered(BTreeMap<(Category, usize), usize>);

impl Covered {
    /// The last range of `category` that starts before `end`, as (start, end).
    fn last_before(&self, category: Category, end: usize) -> Option<(usize, usize)> {
        self.0
            .range((category, 0)..(category, end))
            .next_back()
            .map(|(&(_, s), &e)| (s, e))
    }

    /// Whether `start..end` overlaps a range of `category`.
    fn overlaps(&self, category: Category, start: usize, end: usize) -> bool {
        self.last_before(category, end)
            .is_some_and(|(_, e)| e > start)
    }

    /// Adds `start..end` to `category`, merging the ranges it overlaps.
    fn insert(&mut self, category: Category, mut start: usize, mut end: usize) {
        while let Some((s, e)) = self.last_before(category, end).filter(|&(_, e)| e > start) {
            self.0.remove(&(category, s));
            start = start.min(s);
            end = end.max(e);
        }
        self.0.insert((category, start), end);
    }
}

fn dedupe_categories(findings: Vec<Finding>) -> Vec<Category> {
    let mut categories: Vec<Category> = findings.into_iter().map(|f| f.category).collect();
    categories.sort();
    categories.dedup();
    categories
}

/// Decodes base64 (standard or URL-safe, padded or not) that yields mostly printable text.
fn decode_base64(run: &str) -> Option<String> {
    let engines = [
        base64::engine::general_purpose::STANDARD,
        base64::engine::general_purpose::STANDARD_NO_PAD,
        base64::engine::general_purpose::URL_SAFE,
        base64::engine::general_purpose::URL_SAFE_NO_PAD,
    ];
    let bytes = engines.iter().find_map(|e| e.decode(run).ok())?;
    let text = String::from_utf8(bytes).ok()?;
    let total = text.chars().count();
    let printable = text
        .chars()
        .filter(|c| !c.is_control() || c.is_whitespace())
        .count();
    (total > 0 && printable * 10 >= total * 9).then_some(text)
}

/// Replaces findings with markers and drops hidden characters. Overlapping findings are merged
/// and marked with the category of the first.
fn redact(text: &str, findings: &[Finding]) -> String {
    let mut spans: Vec<(usize, usize, Option<Category>)> = findings
        .iter()
        .map(|f| {
            let marker = (f.category != Category::HiddenUnicode).then_some(f.category);
            (f.start, f.end, marker)
        })
        .collect();
    spans.sort_by_key(|s| (s.0, std::cmp::Reverse(s.1)));
    let mut out = String::with_capacity(text.len());
    let mut pos = 0;
    let mut i = 0;
    while i < spans.len() {
        let (start, mut end, mut marker) = spans[i];
        i += 1;
        while i < spans.len() && spans[i].0 < end {
            end = end.max(spans[i].1);
            marker = marker.or(spans[i].2);
            i += 1;
        }
        if start < pos {
            continue;
        }
        out.push_str(&text[pos..start]);
        if let Some(category) = marker {
            out.push_str("[REDACTED:");
            out.push_str(category.as_str());
            out.push(']');
        }
        pos = end;
    }
    out.push_str(&text[pos..]);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn normalization_maps_back_to_original_bytes() {
        let text = "Ｉgn\u{200B}ore";
        let n = normalize(text, false);
        assert_eq!(n.text, "ignore");
        assert_eq!(n.original(0, n.text.len()), (0, text.len()));
    }

    #[test]
    fn homoglyphs_fold_to_latin() {
        assert_eq!(normalize("іgnоrе", false).text, "ignore");
    }
}
