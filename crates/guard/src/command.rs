//! `check_command`: flag dangerous shell commands.
//!
//! The command is tokenized like a POSIX shell would (quotes, backslashes, `$'...'`, `$IFS`,
//! command and process substitutions, operators), split into pipelines and simple commands, and
//! each simple command is unwrapped (`sudo`, `env`, `nohup`, `sh -c`, `eval`, `find -exec`, ...)
//! before rules look at its name and arguments. Data flow through pipes, redirections and
//! substitutions is tracked with coarse roles (downloader, decoder, shell reading stdin, secret
//! reader, network sender) so that `curl | sh`, `base64 -d | bash` and `cat ~/.ssh/id_rsa | nc`
//! are caught however they are spelled. The check is advisory: the sandbox is the enforcement.

use base64::Engine as _;

use crate::finding::{Category, Finding};
use crate::path::sensitive_name;

/// How deep `sh -c`, `eval`, substitutions and decoded payloads may nest before analysis stops.
const MAX_DEPTH: usize = 8;

/// The result of [`check_command`] and [`check_argv`].
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct CommandVerdict {
    /// True when at least one finding was reported.
    pub dangerous: bool,
    /// What was found, with byte ranges into the command line.
    pub findings: Vec<Finding>,
}

/// Checks a shell command line.
pub fn check_command(command: &str) -> CommandVerdict {
    let mut analyzer = Analyzer::default();
    let toks = lex(
        command,
        Origin {
            base: 0,
            fixed: None,
        },
        0,
    );
    analyzer.script(&toks, 0);
    analyzer.verdict()
}

/// Checks a command given as an argument vector, executed without a shell. Finding offsets are
/// byte ranges into the arguments joined by single spaces.
pub fn check_argv<S: AsRef<str>>(argv: &[S]) -> CommandVerdict {
    let mut words = Vec::with_capacity(argv.len());
    let mut offset = 0;
    for arg in argv {
        let text = arg.as_ref();
        words.push(Word {
            text: text.to_owned(),
            start: offset,
            end: offset + text.len(),
            subs: Vec::new(),
            quoted: true,
        });
        offset += text.len() + 1;
    }
    let mut analyzer = Analyzer::default();
    if !words.is_empty() {
        let simple = Simple {
            words,
            redirs: Vec::new(),
        };
        analyzer.pipeline(&[simple], 0);
    }
    analyzer.verdict()
}

// ---------------------------------------------------------------------------------------------
// Lexing.

/// Where the lexed text sits in the original command line. Text that was itself produced by
/// unquoting (an `sh -c` argument, a decoded payload) has no byte-exact position, so all its
/// tokens report the span of the word it came from.
#[derive(Clone, Copy)]
struct Origin {
    base: usize,
    fixed: Option<(usize, usize)>,
}

impl Origin {
    fn span(self, start: usize, end: usize) -> (usize, usize) {
        self.fixed.unwrap_or((self.base + start, self.base + end))
    }

    fn inner(self, offset: usize) -> Self {
        Self {
            base: self.base + offset,
            fixed: self.fixed,
        }
    }
}

#[derive(Debug, Clone)]
struct Word {
    text: String,
    start: usize,
    end: usize,
    /// Command and process substitutions inside this word, already lexed.
    subs: Vec<Vec<Tok>>,
    /// Whether any part was quoted or escaped (a quoted `{` is not a group).
    quoted: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Op {
    /// `;`, `;;` or a newline.
    Seq,
    And,
    Or,
    Background,
    Pipe,
    LParen,
    RParen,
    RedirOut,
    RedirIn,
    HereString,
    HereDoc,
    Dup,
}

#[derive(Debug, Clone)]
enum Tok {
    Word(Word),
    Op(Op),
}

struct Lexer<'a> {
    src: &'a str,
    chars: Vec<(usize, char)>,
    origin: Origin,
    depth: usize,
    toks: Vec<Tok>,
    cur: Option<Word>,
}

impl Lexer<'_> {
    fn byte(&self, i: usize) -> usize {
        self.chars.get(i).map_or(self.src.len(), |&(b, _)| b)
    }

    fn peek(&self, i: usize) -> Option<char> {
        self.chars.get(i).map(|&(_, c)| c)
    }

    fn word(&mut self, at: usize) -> &mut Word {
        let byte = self.byte(at);
        let (start, end) = self.origin.span(byte, byte);
        self.cur.get_or_insert_with(|| Word {
            text: String::new(),
            start,
            end,
            subs: Vec::new(),
            quoted: false,
        })
    }

    fn push(&mut self, at: usize, s: &str) {
        let end = self.origin.span(self.byte(at), self.byte(at + 1)).1;
        let word = self.word(at);
        word.text.push_str(s);
        word.end = end;
    }

    /// Extends the current word to cover characters up to (excluding) `upto`.
    fn cover(&mut self, upto: usize) {
        let end = self.origin.span(0, self.byte(upto)).1;
        if let Some(word) = &mut self.cur {
            word.end = end.max(word.end);
        }
    }

    fn flush(&mut self) {
        if let Some(word) = self.cur.take() {
            self.toks.push(Tok::Word(word));
        }
    }

    fn op(&mut self, op: Op) {
        self.flush();
        self.toks.push(Tok::Op(op));
    }

    /// Returns the index of the parenthesis matching the one before `i`, or the end of the input
    /// when it is unterminated.
    fn matching_paren(&self, mut i: usize) -> usize {
        let mut depth = 1;
        while let Some(c) = self.peek(i) {
            match c {
                '\\' => i += 1,
                '\'' => {
                    i += 1;
                    while self.peek(i).is_some_and(|c| c != '\'') {
                        i += 1;
                    }
                }
                '"' => {
                    i += 1;
                    while let Some(c) = self.peek(i) {
                        if c == '\\' {
                            i += 1;
                        } else if c == '"' {
                            break;
                        }
                        i += 1;
                    }
                }
                '(' => depth += 1,
                ')' => {
                    depth -= 1;
                    if depth == 0 {
                        return i;
                    }
                }
                _ => {}
            }
            i += 1;
        }
        self.chars.len()
    }

    /// Lexes `chars[from..to]` as a nested script and attaches it to the current word.
    fn substitution(&mut self, at: usize, from: usize, to: usize, placeholder: &str) {
        let (a, b) = (self.byte(from.min(to)), self.byte(to));
        let inner = lex(&self.src[a..b], self.origin.inner(a), self.depth + 1);
        self.push(at, placeholder);
        let word = self.word(at);
        word.subs.push(inner);
        self.cover(to + 1);
    }

    /// Handles `$` at index `i`; returns the index after the construct.
    fn dollar(&mut self, i: usize, in_quotes: bool) -> usize {
        match self.peek(i + 1) {
            Some('(') => {
                let close = self.matching_paren(i + 2);
                self.substitution(i, i + 2, close, "$(...)");
                close + 1
            }
            Some('{') => {
                let mut j = i + 2;
                while self.peek(j).is_some_and(|c| c != '}') {
                    j += 1;
                }
                let (a, b) = (self.byte(i + 2), self.byte(j));
                let name = self.src[a..b].to_owned();
                self.param(i, &name, &format!("${{{name}}}"), in_quotes);
                self.cover(j + 1);
                j + 1
            }
            Some('\'') if !in_quotes => self.ansi_c(i + 2),
            Some('"') if !in_quotes => i + 1,
            Some(c) if c == '@' || c == '*' || c.is_ascii_digit() && c != '0' => {
                // Positional parameters are empty in `sh -c`; `r$@m` is just `rm`.
                self.word(i);
                self.cover(i + 2);
                i + 2
            }
            Some(c) if c.is_ascii_alphabetic() || c == '_' => {
                let mut j = i + 1;
                while self
                    .peek(j)
                    .is_some_and(|c| c.is_ascii_alphanumeric() || c == '_')
                {
                    j += 1;
                }
                let (a, b) = (self.byte(i + 1), self.byte(j));
                let name = self.src[a..b].to_owned();
                self.param(i, &name, &format!("${name}"), in_quotes);
                self.cover(j);
                j
            }
            _ => {
                self.push(i, "$");
                i + 1
            }
        }
    }

    /// A parameter expansion: `$IFS` splits words (the classic space-free obfuscation), anything
    /// else is kept literally so rules can recognize `$HOME`.
    fn param(&mut self, at: usize, name: &str, literal: &str, in_quotes: bool) {
        if name.starts_with("IFS") {
            if in_quotes {
                self.push(at, " ");
            } else {
                self.flush();
            }
        } else {
            self.push(at, literal);
        }
    }

    /// `$'...'` with C escapes; returns the index after the closing quote.
    fn ansi_c(&mut self, mut i: usize) -> usize {
        let start = i;
        let mut out = String::new();
        while let Some(c) = self.peek(i) {
            match c {
                '\'' => break,
                '\\' => {
                    i += 1;
                    let Some(e) = self.peek(i) else { break };
                    let radix_digits = |lexer: &Self, from: usize, radix: u32, max: usize| {
                        let mut n = 0;
                        while n < max && lexer.peek(from + n).is_some_and(|c| c.is_digit(radix)) {
                            n += 1;
                        }
                        let digits: String =
                            (from..from + n).filter_map(|k| lexer.peek(k)).collect();
                        (u32::from_str_radix(&digits, radix).ok(), n)
                    };
                    let simple = match e {
                        'n' => Some('\n'),
                        't' => Some('\t'),
                        'r' => Some('\r'),
                        'a' => Some('\x07'),
                        'b' => Some('\x08'),
                        'e' | 'E' => Some('\x1b'),
                        'f' => Some('\x0c'),
                        'v' => Some('\x0b'),
                        _ => None,
                    };
                    if let Some(c) = simple {
                        out.push(c);
                    } else if matches!(e, 'x' | 'u' | 'U') {
                        let max = match e {
                            'x' => 2,
                            'u' => 4,
                            _ => 8,
                        };
                        let (value, n) = radix_digits(self, i + 1, 16, max);
                        out.extend(value.and_then(char::from_u32));
                        i += n;
                    } else if e.is_digit(8) {
                        let (value, n) = radix_digits(self, i, 8, 3);
                        out.extend(value.and_then(char::from_u32));
                        i += n - 1;
                    } else {
                        out.push(e);
                    }
                }
                c => out.push(c),
            }
            i += 1;
        }
        self.push(start, &out);
        if let Some(w) = &mut self.cur {
            w.quoted = true;
        }
        self.cover(i + 1);
        i + 1
    }

    fn run(mut self) -> Vec<Tok> {
        let mut i = 0;
        while let Some(c) = self.peek(i) {
            match c {
                ' ' | '\t' | '\r' => {
                    self.flush();
                    i += 1;
                }
                '\n' => {
                    self.op(Op::Seq);
                    i += 1;
                }
                '#' if self.cur.is_none() => {
                    while self.peek(i).is_some_and(|c| c != '\n') {
                        i += 1;
                    }
                }
                '\\' => {
                    match self.peek(i + 1) {
                        Some('\n') => {}
                        Some(n) => {
                            self.push(i, &n.to_string());
                            self.cover(i + 2);
                            if let Some(w) = &mut self.cur {
                                w.quoted = true;
                            }
                        }
                        None => {}
                    }
                    i += 2;
                }
                '\'' => {
                    self.word(i).quoted = true;
                    let mut j = i + 1;
                    while self.peek(j).is_some_and(|c| c != '\'') {
                        j += 1;
                    }
                    let (a, b) = (self.byte(i + 1), self.byte(j));
                    let text = self.src[a..b].to_owned();
                    self.push(i, &text);
                    self.cover(j + 1);
                    i = j + 1;
                }
                '"' => {
                    self.word(i).quoted = true;
                    i += 1;
                    while let Some(c) = self.peek(i) {
                        match c {
                            '"' => break,
                            '\\' if self.peek(i + 1).is_some_and(|n| "$`\"\\\n".contains(n)) => {
                                let n = self.peek(i + 1).unwrap_or('\\');
                                if n != '\n' {
                                    self.push(i, &n.to_string());
                                }
                                i += 2;
                            }
                            '$' => i = self.dollar(i, true),
                            '`' => i = self.backtick(i),
                            c => {
                                self.push(i, &c.to_string());
                                i += 1;
                            }
                        }
                    }
                    self.cover(i + 1);
                    i += 1;
                }
                '$' => i = self.dollar(i, false),
                '`' => i = self.backtick(i),
                ';' => {
                    self.op(Op::Seq);
                    i += if self.peek(i + 1) == Some(';') { 2 } else { 1 };
                }
                '&' => match self.peek(i + 1) {
                    Some('&') => {
                        self.op(Op::And);
                        i += 2;
                    }
                    Some('>') => {
                        self.op(Op::RedirOut);
                        i += if self.peek(i + 2) == Some('>') { 3 } else { 2 };
                    }
                    _ => {
                        self.op(Op::Background);
                        i += 1;
                    }
                },
                '|' => match self.peek(i + 1) {
                    Some('|') => {
                        self.op(Op::Or);
                        i += 2;
                    }
                    Some('&') => {
                        self.op(Op::Pipe);
                        i += 2;
                    }
                    _ => {
                        self.op(Op::Pipe);
                        i += 1;
                    }
                },
                '(' => {
                    self.op(Op::LParen);
                    i += 1;
                }
                ')' => {
                    self.op(Op::RParen);
                    i += 1;
                }
                '<' | '>' if self.peek(i + 1) == Some('(') => {
                    // Process substitution: the word becomes a /dev/fd path fed by the script.
                    let close = self.matching_paren(i + 2);
                    self.substitution(i, i + 2, close, "/dev/fd/63");
                    i = close + 1;
                }
                '<' | '>' => {
                    // A file descriptor number glued to the operator (`2>`) is not an argument.
                    if self.cur.as_ref().is_some_and(|w| {
                        !w.quoted
                            && !w.text.is_empty()
                            && w.text.bytes().all(|b| b.is_ascii_digit())
                    }) {
                        self.cur = None;
                    }
                    let next = self.peek(i + 1);
                    let next2 = self.peek(i + 2);
                    let (op, len) = match (c, next, next2) {
                        ('<', Some('<'), Some('<')) => (Op::HereString, 3),
                        ('<', Some('<'), Some('-')) => (Op::HereDoc, 3),
                        ('<', Some('<'), _) => (Op::HereDoc, 2),
                        (_, Some('&'), _) => (Op::Dup, 2),
                        ('<', Some('>'), _) => (Op::RedirIn, 2),
                        ('<', _, _) => (Op::RedirIn, 1),
                        ('>', Some('>' | '|'), _) => (Op::RedirOut, 2),
                        _ => (Op::RedirOut, 1),
                    };
                    self.op(op);
                    i += len;
                }
                c => {
                    self.push(i, &c.to_string());
                    i += 1;
                }
            }
        }
        self.flush();
        self.toks
    }

    fn backtick(&mut self, i: usize) -> usize {
        let mut j = i + 1;
        while let Some(c) = self.peek(j) {
            if c == '\\' {
                j += 1;
            } else if c == '`' {
                break;
            }
            j += 1;
        }
        self.substitution(i, i + 1, j, "$(...)");
        j + 1
    }
}

fn lex(src: &str, origin: Origin, depth: usize) -> Vec<Tok> {
    if depth > MAX_DEPTH {
        return Vec::new();
    }
    Lexer {
        src,
        chars: src.char_indices().collect(),
        origin,
        depth,
        toks: Vec::new(),
        cur: None,
    }
    .run()
}

// ---------------------------------------------------------------------------------------------
// Parsing into pipelines of simple commands.

#[derive(Debug, Clone)]
struct Simple {
    words: Vec<Word>,
    redirs: Vec<(Op, Word)>,
}

impl Simple {
    fn span(&self) -> (usize, usize) {
        let all = self.words.iter().chain(self.redirs.iter().map(|(_, w)| w));
        let start = all.clone().map(|w| w.start).min().unwrap_or(0);
        let end = all.map(|w| w.end).max().unwrap_or(0);
        (start, end)
    }
}

/// Reserved words that start or end compound commands; they are not command names.
const RESERVED: &[&str] = &[
    "{", "}", "!", "if", "then", "else", "elif", "fi", "do", "done", "while", "until", "in", "esac",
];

/// Splits tokens into pipelines. Parentheses and braces end a simple command but not the
/// pipeline, so `(curl x) | sh` is still one pipeline.
fn pipelines(toks: &[Tok]) -> Vec<Vec<Simple>> {
    let mut out = Vec::new();
    let mut pipeline: Vec<Simple> = Vec::new();
    let mut cur = Simple {
        words: Vec::new(),
        redirs: Vec::new(),
    };
    let mut skip_words = false;
    let end_simple = |cur: &mut Simple, pipeline: &mut Vec<Simple>, skip: &mut bool| {
        let done = std::mem::replace(
            cur,
            Simple {
                words: Vec::new(),
                redirs: Vec::new(),
            },
        );
        if !done.words.is_empty() || !done.redirs.is_empty() {
            pipeline.push(done);
        }
        *skip = false;
    };
    let mut iter = toks.iter().peekable();
    while let Some(tok) = iter.next() {
        match tok {
            Tok::Word(w) => {
                if cur.words.is_empty() && !w.quoted && RESERVED.contains(&w.text.as_str()) {
                    continue;
                }
                if cur.words.is_empty()
                    && !w.quoted
                    && matches!(w.text.as_str(), "for" | "case" | "select")
                {
                    // The loop variable and word list are not a command.
                    skip_words = true;
                }
                if !skip_words {
                    cur.words.push(w.clone());
                }
            }
            Tok::Op(op @ (Op::RedirOut | Op::RedirIn | Op::HereString | Op::HereDoc | Op::Dup)) => {
                if let Some(Tok::Word(target)) = iter.peek() {
                    cur.redirs.push((*op, target.clone()));
                    iter.next();
                }
            }
            Tok::Op(Op::Pipe | Op::LParen | Op::RParen) => {
                end_simple(&mut cur, &mut pipeline, &mut skip_words);
            }
            Tok::Op(Op::Seq | Op::And | Op::Or | Op::Background) => {
                end_simple(&mut cur, &mut pipeline, &mut skip_words);
                if !pipeline.is_empty() {
                    out.push(std::mem::take(&mut pipeline));
                }
            }
        }
    }
    end_simple(&mut cur, &mut pipeline, &mut skip_words);
    if !pipeline.is_empty() {
        out.push(pipeline);
    }
    out
}

/// Finds `name() { ... name | name & ... }` and `function name { ... }` definitions whose body
/// calls the function itself in a pipe or in the background.
fn fork_bombs(toks: &[Tok]) -> Vec<(usize, usize)> {
    let word = |i: usize| match toks.get(i) {
        Some(Tok::Word(w)) => Some(w),
        _ => None,
    };
    let mut found = Vec::new();
    for i in 0..toks.len() {
        let (name, body_from) = match (word(i), toks.get(i + 1), toks.get(i + 2)) {
            (Some(w), Some(Tok::Op(Op::LParen)), Some(Tok::Op(Op::RParen))) => (w, i + 3),
            (Some(f), _, _) if f.text == "function" && !f.quoted => match word(i + 1) {
                Some(w) => (w, i + 2),
                None => continue,
            },
            _ => continue,
        };
        let mut depth = 0;
        let mut calls = 0;
        let mut spawns = false;
        let mut end = name.end;
        for tok in &toks[body_from..] {
            match tok {
                Tok::Word(w) if !w.quoted && w.text == "{" => depth += 1,
                Tok::Word(w) if !w.quoted && w.text == "}" => {
                    depth -= 1;
                    end = w.end;
                    if depth <= 0 {
                        break;
                    }
                }
                Tok::Word(w) if w.text == name.text => {
                    calls += 1;
                    end = w.end;
                }
                Tok::Op(Op::Pipe | Op::Background) => spawns = true,
                Tok::Op(Op::LParen | Op::RParen) => {}
                _ => {}
            }
        }
        if calls >= 1 && spawns {
            found.push((name.start, end));
        }
    }
    found
}

// ---------------------------------------------------------------------------------------------
// Analysis.

/// What a command does with data, as far as the rules care.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
struct Roles(u16);

impl Roles {
    const DOWNLOADER: Self = Self(1);
    /// A shell or interpreter that executes what it reads on standard input.
    const STDIN_SHELL: Self = Self(1 << 1);
    /// Executes its arguments (`sh -c`, `eval`, `source`, a shell given a script file).
    const EXECUTOR: Self = Self(1 << 2);
    const DECODER: Self = Self(1 << 3);
    const NETWORK: Self = Self(1 << 4);
    const SECRET: Self = Self(1 << 5);
    const ENV: Self = Self(1 << 6);
    const HISTORY: Self = Self(1 << 7);
    const SENSITIVE: Self = Self(Self::SECRET.0 | Self::ENV.0 | Self::HISTORY.0);

    fn has(self, other: Self) -> bool {
        self.0 & other.0 != 0
    }

    fn add(&mut self, other: Self) {
        self.0 |= other.0;
    }
}

const SHELLS: &[&str] = &[
    "sh", "bash", "dash", "zsh", "ksh", "mksh", "ash", "fish", "rbash", "csh", "tcsh", "busybox",
];
const INTERPRETERS: &[&str] = &[
    "python", "python2", "python3", "perl", "ruby", "node", "nodejs", "php", "lua", "deno", "bun",
];
const DOWNLOADERS: &[&str] = &[
    "curl",
    "wget",
    "fetch",
    "http",
    "https",
    "aria2c",
    "lwp-download",
    "lynx",
];
const NETWORK_SENDERS: &[&str] = &[
    "curl", "wget", "nc", "ncat", "netcat", "socat", "telnet", "ssh", "scp", "sftp", "ftp",
    "rsync", "mail", "mailx", "sendmail", "http", "https",
];
const READERS: &[&str] = &[
    "cat", "tac", "less", "more", "head", "tail", "nl", "od", "xxd", "hexdump", "strings",
    "base64", "base32", "gzip", "bzip2", "xz", "zip", "tar", "cp", "scp", "rsync", "curl", "wget",
    "nc", "ncat", "netcat", "socat", "sed", "awk", "gawk", "grep", "egrep", "fgrep", "rg",
    "openssl", "sort", "uniq", "cut", "paste", "bat", "jq", "uuencode", "mail", "mailx",
    "sendmail", "dd", "tee", "vi", "vim", "nano", "python", "python3", "perl", "ruby", "node",
    "sftp", "ftp", "http", "https", "zcat",
];
const FORMATTERS: &[&str] = &[
    "mke2fs",
    "mkswap",
    "wipefs",
    "mkdosfs",
    "mkntfs",
    "mkexfatfs",
    "newfs",
];
const PARTITIONERS: &[&str] = &["fdisk", "sfdisk", "cfdisk", "gdisk", "sgdisk", "parted"];
const HISTORY_FILES: &[&str] = &[
    ".bash_history",
    ".zsh_history",
    ".history",
    ".sh_history",
    ".python_history",
    ".mysql_history",
    ".psql_history",
    ".node_repl_history",
    "fish_history",
];
const SYSTEM_DIRS: &[&str] = &[
    "bin",
    "boot",
    "dev",
    "etc",
    "home",
    "lib",
    "lib32",
    "lib64",
    "opt",
    "proc",
    "root",
    "sbin",
    "srv",
    "sys",
    "usr",
    "var",
    "Users",
    "System",
    "Library",
    "Applications",
    "private",
];
/// Device files that are safe to write to.
const HARMLESS_DEVICES: &[&str] = &[
    "null", "zero", "stdout", "stderr", "stdin", "tty", "random", "urandom", "full",
];

#[derive(Default)]
struct Analyzer {
    findings: Vec<Finding>,
}

impl Analyzer {
    fn verdict(mut self) -> CommandVerdict {
        self.findings.sort_by_key(|f| (f.start, f.end, f.category));
        self.findings
            .dedup_by(|a, b| a.category == b.category && a.start == b.start && a.end == b.end);
        CommandVerdict {
            dangerous: !self.findings.is_empty(),
            findings: self.findings,
        }
    }

    fn report(&mut self, category: Category, reason: &str, (start, end): (usize, usize)) {
        self.findings
            .push(Finding::new(category, reason, start, end));
    }

    /// Analyzes a lexed script and returns the union of the roles of its commands.
    fn script(&mut self, toks: &[Tok], depth: usize) -> Roles {
        if depth > MAX_DEPTH {
            return Roles::default();
        }
        for span in fork_bombs(toks) {
            self.report(
                Category::ForkBomb,
                "function that recursively spawns itself (fork bomb)",
                span,
            );
        }
        let mut roles = Roles::default();
        for pipeline in pipelines(toks) {
            roles.add(self.pipeline(&pipeline, depth));
        }
        roles
    }

    /// Re-lexes text that was produced by unquoting or decoding, reporting at `span`.
    fn nested(&mut self, src: &str, span: (usize, usize), depth: usize) -> Roles {
        let toks = lex(
            src,
            Origin {
                base: 0,
                fixed: Some(span),
            },
            depth + 1,
        );
        self.script(&toks, depth + 1)
    }

    fn pipeline(&mut self, cmds: &[Simple], depth: usize) -> Roles {
        let mut per_cmd = Vec::with_capacity(cmds.len());
        for cmd in cmds {
            per_cmd.push(self.simple(cmd, depth));
        }
        let span = (
            cmds.first().map_or(0, |c| c.span().0),
            cmds.last().map_or(0, |c| c.span().1),
        );
        let mut upstream = Roles::default();
        let mut all = Roles::default();
        for (cmd, info) in cmds.iter().zip(&per_cmd) {
            let mut up = upstream;
            up.add(info.input);
            if info.roles.has(Roles::STDIN_SHELL) || info.roles.has(Roles::EXECUTOR) {
                let fed = if info.roles.has(Roles::STDIN_SHELL) {
                    up
                } else {
                    info.input
                };
                if fed.has(Roles::DOWNLOADER) {
                    self.report(
                        Category::RemoteCodeExecution,
                        "downloaded content is executed by a shell",
                        span,
                    );
                }
                if fed.has(Roles::DECODER) {
                    self.report(
                        Category::ObfuscatedExecution,
                        "decoded content is executed by a shell",
                        span,
                    );
                }
            }
            if info.roles.has(Roles::NETWORK)
                && (up.has(Roles::SENSITIVE) || info.roles.has(Roles::SECRET))
            {
                self.report(Category::Exfiltration, exfil_reason(up | info.roles), span);
            }
            if info.output.has(Roles::NETWORK) && (up | info.roles).has(Roles::SENSITIVE) {
                self.report(Category::Exfiltration, exfil_reason(up | info.roles), span);
            }
            if info.roles.has(Roles::SECRET) {
                self.report(
                    Category::CredentialAccess,
                    "reads a file that commonly holds credentials or keys",
                    cmd.span(),
                );
            }
            if info.roles.has(Roles::HISTORY) {
                self.report(Category::HistoryAccess, "reads shell history", cmd.span());
            }
            upstream.add(info.roles);
            all.add(info.roles);
            all.add(info.input);
        }
        self.decode_literals(cmds, &per_cmd, depth);
        all
    }

    /// `echo <base64> | base64 -d | sh`: decode the literal and check what it would run.
    fn decode_literals(&mut self, cmds: &[Simple], per_cmd: &[CmdInfo], depth: usize) {
        if !per_cmd.iter().any(|i| i.base64_decoder) {
            return;
        }
        for cmd in cmds {
            let here = cmd
                .redirs
                .iter()
                .filter(|(op, _)| *op == Op::HereString)
                .map(|(_, w)| w);
            let echoed = match cmd.words.first().map(|w| command_name(&w.text)) {
                Some(name) if name == "echo" || name == "printf" => &cmd.words[1..],
                _ => &[][..],
            };
            for word in echoed.iter().chain(here) {
                if let Some(decoded) = decode_base64(&word.text) {
                    self.nested(&decoded, (word.start, word.end), depth);
                }
            }
        }
    }

    /// Analyzes one simple command: its substitutions, its own rules, and its roles.
    fn simple(&mut self, cmd: &Simple, depth: usize) -> CmdInfo {
        let mut info = CmdInfo::default();
        // Substitutions in arguments feed data into the command.
        for word in &cmd.words {
            for sub in &word.subs {
                info.input.add(self.script(sub, depth + 1));
            }
        }
        for (op, target) in &cmd.redirs {
            let mut sub_roles = Roles::default();
            for sub in &target.subs {
                sub_roles.add(self.script(sub, depth + 1));
            }
            match op {
                Op::RedirOut => {
                    info.output.add(sub_roles);
                    if target.text.starts_with("/dev/tcp/") || target.text.starts_with("/dev/udp/")
                    {
                        info.output.add(Roles::NETWORK);
                    } else if is_block_device(&target.text) {
                        self.report(
                            Category::DiskOverwrite,
                            "redirects output to a device",
                            cmd.span(),
                        );
                    }
                }
                Op::RedirIn | Op::HereString | Op::HereDoc => {
                    info.input.add(sub_roles);
                    if *op == Op::RedirIn {
                        info.input.add(path_roles(&target.text));
                    }
                }
                _ => {}
            }
        }

        let mut words: &[Word] = &cmd.words;
        // Leading assignments (`FOO=bar cmd`) are not the command.
        while words.first().is_some_and(|w| is_assignment(&w.text)) {
            words = &words[1..];
        }
        self.command(words, cmd.span(), depth, &mut info);
        info
    }

    /// Applies the rules to a command given as words, unwrapping wrappers such as `sudo`.
    fn command(
        &mut self,
        mut words: &[Word],
        span: (usize, usize),
        depth: usize,
        info: &mut CmdInfo,
    ) {
        let mut hops = 0;
        loop {
            hops += 1;
            let Some(first) = words.first() else { return };
            if hops > MAX_DEPTH {
                return;
            }
            // `$(echo cm0gLXJmIC8= | base64 -d)` as the command itself runs decoded text.
            if !first.subs.is_empty() {
                info.roles.add(Roles::EXECUTOR);
            }
            let name = command_name(&first.text);
            let args = &words[1..];
            match name.as_str() {
                "sudo" | "doas" => {
                    words = skip_options(
                        args,
                        &["-u", "-g", "-C", "-h", "-p", "-D", "-r", "-t", "-U"],
                    )
                }
                "nohup" | "builtin" | "setsid" | "unbuffer" | "torsocks" | "proxychains"
                | "proxychains4" => {
                    words = args;
                }
                "exec" => words = skip_options(args, &["-a"]),
                "command" => {
                    if args
                        .first()
                        .is_some_and(|a| a.text == "-v" || a.text == "-V")
                    {
                        return;
                    }
                    words = skip_options(args, &[]);
                }
                "time" => words = skip_options(args, &["-f", "-o"]),
                "nice" => words = skip_options(args, &["-n"]),
                "ionice" => words = skip_options(args, &["-c", "-n", "-p"]),
                "stdbuf" => words = skip_options(args, &["-i", "-o", "-e"]),
                "chroot" => {
                    words = skip_options(args, &["--userspec", "--groups"])
                        .get(1..)
                        .unwrap_or_default()
                }
                "timeout" => {
                    let rest = skip_options(args, &["-s", "-k", "--signal", "--kill-after"]);
                    words = rest.get(1..).unwrap_or_default();
                }
                "watch" => words = skip_options(args, &["-n", "-d", "--interval"]),
                "xargs" => {
                    words = skip_options(
                        args,
                        &["-I", "-n", "-P", "-d", "-a", "-L", "-s", "-E", "-i"],
                    )
                }
                "env" => {
                    let mut rest = skip_options(args, &["-u", "-C", "--unset", "--chdir"]);
                    if let Some(split) = args
                        .iter()
                        .position(|a| a.text == "-S" || a.text == "--split-string")
                    {
                        if let Some(script) = args.get(split + 1) {
                            info.roles.add(self.nested(
                                &script.text,
                                (script.start, script.end),
                                depth,
                            ));
                        }
                        return;
                    }
                    while rest.first().is_some_and(|w| is_assignment(&w.text)) {
                        rest = &rest[1..];
                    }
                    if rest.is_empty() {
                        info.roles.add(Roles::ENV);
                        return;
                    }
                    words = rest;
                }
                "eval" => {
                    info.roles.add(Roles::EXECUTOR);
                    let text: Vec<&str> = args.iter().map(|w| w.text.as_str()).collect();
                    info.roles.add(self.nested(&text.join(" "), span, depth));
                    return;
                }
                "source" | "." => {
                    info.roles.add(Roles::EXECUTOR);
                    return;
                }
                "find" => {
                    self.find(args, span, depth, info);
                    return;
                }
                _ => {
                    self.leaf(&name, args, span, depth, info);
                    return;
                }
            }
        }
    }

    fn find(&mut self, args: &[Word], span: (usize, usize), depth: usize, info: &mut CmdInfo) {
        let roots: Vec<&Word> = args
            .iter()
            .take_while(|a| !a.text.starts_with('-') && a.text != "(" && a.text != "!")
            .collect();
        if args.iter().any(|a| a.text == "-delete") && roots.iter().any(|r| is_critical(&r.text)) {
            self.report(
                Category::DestructiveDelete,
                "find deletes files under a system or home directory",
                span,
            );
        }
        let mut i = 0;
        while i < args.len() {
            if matches!(
                args[i].text.as_str(),
                "-exec" | "-execdir" | "-ok" | "-okdir"
            ) {
                let end = args[i + 1..]
                    .iter()
                    .position(|a| a.text == ";" || a.text == "+")
                    .map_or(args.len(), |p| i + 1 + p);
                let inner: Vec<Word> = args[i + 1..end]
                    .iter()
                    .map(|w| {
                        let mut w = w.clone();
                        if w.text == "{}" {
                            // Stand in the search roots for the found files.
                            w.text = roots
                                .first()
                                .map_or_else(|| ".".to_owned(), |r| r.text.clone());
                        }
                        w
                    })
                    .collect();
                let mut sub = CmdInfo::default();
                self.command(&inner, span, depth + 1, &mut sub);
                info.roles.add(sub.roles);
                i = end;
            }
            i += 1;
        }
    }

    /// Rules for a command that is not a wrapper.
    fn leaf(
        &mut self,
        name: &str,
        args: &[Word],
        span: (usize, usize),
        depth: usize,
        info: &mut CmdInfo,
    ) {
        let texts: Vec<&str> = args.iter().map(|a| a.text.as_str()).collect();
        if SHELLS.contains(&name) || INTERPRETERS.contains(&name) {
            self.shell(name, args, span, depth, info);
        }
        if DOWNLOADERS.contains(&name) {
            info.roles.add(Roles::DOWNLOADER);
        }
        if NETWORK_SENDERS.contains(&name) {
            info.roles.add(Roles::NETWORK);
        }
        if READERS.contains(&name) {
            let skip_identity = matches!(name, "scp" | "sftp" | "rsync" | "ssh");
            let mut prev = "";
            for text in &texts {
                if !(skip_identity && prev == "-i") {
                    info.roles.add(path_roles(text));
                }
                prev = text;
            }
        }
        match name {
            "rm" => self.rm(&texts, span),
            "shred" | "srm" if texts.iter().any(|t| is_block_device(t)) => {
                self.report(Category::DiskOverwrite, "shreds a device", span);
            }
            "dd" if texts
                .iter()
                .any(|t| t.strip_prefix("of=").is_some_and(is_block_device)) =>
            {
                self.report(Category::DiskOverwrite, "dd writes to a device", span);
            }
            "chmod" => self.chmod(&texts, span),
            "chown" | "chgrp" if recursive_flag(&texts) && texts.iter().any(|t| is_critical(t)) => {
                self.report(
                    Category::PermissionWeakening,
                    "recursive ownership change on a system directory",
                    span,
                );
            }
            "history" | "fc" => info.roles.add(Roles::HISTORY),
            "printenv" => info.roles.add(Roles::ENV),
            "set" | "export" | "declare" | "typeset"
                if texts.is_empty() || texts.iter().all(|t| matches!(*t, "-p" | "-x" | "-px")) =>
            {
                info.roles.add(Roles::ENV);
            }
            "base64" | "base32" | "basenc"
                if texts
                    .iter()
                    .any(|t| matches!(*t, "-d" | "--decode" | "-D") || short_flag(t, 'd')) =>
            {
                info.roles.add(Roles::DECODER);
                info.base64_decoder = true;
            }
            "xxd" if texts.iter().any(|t| short_flag(t, 'r')) => info.roles.add(Roles::DECODER),
            "openssl"
                if texts
                    .iter()
                    .any(|t| *t == "-d" || *t == "base64" && texts.contains(&"-d")) =>
            {
                info.roles.add(Roles::DECODER);
            }
            "uudecode" | "rev" | "gunzip" | "zcat" => info.roles.add(Roles::DECODER),
            "printf" if texts.iter().any(|t| t.contains("\\x") || t.contains("\\0")) => {
                info.roles.add(Roles::DECODER)
            }
            "tr" if texts.iter().any(|t| t.contains("N-Z") || t.contains("n-z")) => {
                info.roles.add(Roles::DECODER)
            }
            "diskutil"
                if texts
                    .iter()
                    .any(|t| t.starts_with("erase") || t.starts_with("zero")) =>
            {
                self.report(Category::DiskFormat, "erases a disk", span);
            }
            _ => {}
        }
        if name.starts_with("mkfs") || FORMATTERS.contains(&name) {
            self.report(
                Category::DiskFormat,
                "creates a file system or wipes signatures",
                span,
            );
        }
        if PARTITIONERS.contains(&name) && texts.iter().any(|t| t.starts_with("/dev/")) {
            self.report(Category::DiskFormat, "edits a disk's partition table", span);
        }
    }

    fn shell(
        &mut self,
        name: &str,
        args: &[Word],
        span: (usize, usize),
        depth: usize,
        info: &mut CmdInfo,
    ) {
        if name == "busybox" {
            if let Some((first, rest)) = args.split_first() {
                let inner = command_name(&first.text);
                self.leaf(&inner, rest, span, depth, info);
            }
            return;
        }
        let is_shell = SHELLS.contains(&name);
        let code_flag = |t: &str| {
            if is_shell {
                t == "-c" || (t.starts_with('-') && !t.starts_with("--") && t.contains('c'))
            } else {
                matches!(t, "-c" | "-e" | "-E" | "-r" | "--eval" | "-p" | "--print")
            }
        };
        if let Some(pos) = args.iter().position(|a| code_flag(&a.text)) {
            info.roles.add(Roles::EXECUTOR);
            if let Some(code) = args.get(pos + 1) {
                if is_shell {
                    info.roles
                        .add(self.nested(&code.text, (code.start, code.end), depth));
                } else {
                    let lower = code.text.to_lowercase();
                    if lower.contains("fork")
                        && (lower.contains("while")
                            || lower.contains("for ")
                            || lower.contains("loop"))
                    {
                        self.report(Category::ForkBomb, "interpreter code forks in a loop", span);
                    }
                }
            }
            return;
        }
        let script = args
            .iter()
            .find(|a| !a.text.starts_with('-') || a.text == "-");
        match script {
            None => info.roles.add(Roles::STDIN_SHELL),
            Some(s) if s.text == "-" || s.text == "/dev/stdin" => {
                info.roles.add(Roles::STDIN_SHELL)
            }
            Some(s) if !s.subs.is_empty() => info.roles.add(Roles::EXECUTOR),
            Some(_) if args.iter().any(|a| a.text == "-s") => info.roles.add(Roles::STDIN_SHELL),
            Some(_) => {}
        }
    }

    fn rm(&mut self, args: &[&str], span: (usize, usize)) {
        let mut recursive = false;
        let mut no_preserve = false;
        let mut targets = Vec::new();
        let mut options_done = false;
        for arg in args {
            if options_done || !arg.starts_with('-') || *arg == "-" {
                targets.push(*arg);
            } else if *arg == "--" {
                options_done = true;
            } else if let Some(long) = arg.strip_prefix("--") {
                recursive |= long == "recursive";
                no_preserve |= long == "no-preserve-root";
            } else {
                recursive |= arg.contains('r') || arg.contains('R');
            }
        }
        if no_preserve {
            self.report(
                Category::DestructiveDelete,
                "rm with --no-preserve-root",
                span,
            );
        } else if recursive && targets.iter().any(|t| is_critical(t)) {
            self.report(
                Category::DestructiveDelete,
                "recursive delete of the root, a system directory or the home directory",
                span,
            );
        }
    }

    fn chmod(&mut self, args: &[&str], span: (usize, usize)) {
        let rest: Vec<&str> = args
            .iter()
            .copied()
            .filter(|a| !a.starts_with('-') || is_symbolic_mode(a))
            .collect();
        let Some((mode, targets)) = rest.split_first() else {
            return;
        };
        let world_writable = if mode.bytes().all(|b| b.is_ascii_digit()) {
            mode.bytes().last().is_some_and(|b| (b - b'0') & 2 != 0)
        } else {
            mode.split(',').any(|clause| {
                let (who, perms) = clause.split_at(clause.find(['+', '=']).unwrap_or(clause.len()));
                (who.is_empty() || who.contains('a') || who.contains('o')) && perms.contains('w')
            })
        };
        if world_writable && targets.iter().any(|t| is_system_path(t)) {
            self.report(
                Category::PermissionWeakening,
                "makes a system path world-writable",
                span,
            );
        }
    }
}

fn exfil_reason(roles: Roles) -> &'static str {
    if roles.has(Roles::SECRET) {
        "credentials or keys are sent over the network"
    } else if roles.has(Roles::HISTORY) {
        "shell history is sent over the network"
    } else {
        "the environment is sent over the network"
    }
}

impl std::ops::BitOr for Roles {
    type Output = Self;

    fn bitor(self, other: Self) -> Self {
        Self(self.0 | other.0)
    }
}

#[derive(Debug, Default)]
struct CmdInfo {
    /// What the command itself does.
    roles: Roles,
    /// Roles of what feeds it besides the pipe: argument substitutions and input redirections.
    input: Roles,
    /// Roles of what its output redirections feed.
    output: Roles,
    base64_decoder: bool,
}

fn command_name(text: &str) -> String {
    let base = text.rsplit('/').next().unwrap_or(text);
    base.to_lowercase()
}

fn is_assignment(text: &str) -> bool {
    let Some((name, _)) = text.split_once('=') else {
        return false;
    };
    !name.is_empty()
        && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
        && !name.starts_with(|c: char| c.is_ascii_digit())
}

/// Skips options (and the values of those listed in `with_value`) and a `--`.
fn skip_options<'w>(mut words: &'w [Word], with_value: &[&str]) -> &'w [Word] {
    while let Some(first) = words.first() {
        let t = first.text.as_str();
        if t == "--" {
            return &words[1..];
        }
        if !t.starts_with('-') || t == "-" {
            break;
        }
        let takes_value = with_value.contains(&t);
        words = &words[if takes_value { 2 } else { 1 }.min(words.len())..];
    }
    words
}

fn short_flag(text: &str, flag: char) -> bool {
    text.starts_with('-') && !text.starts_with("--") && text.contains(flag)
}

fn recursive_flag(args: &[&str]) -> bool {
    args.iter()
        .any(|a| *a == "--recursive" || short_flag(a, 'R') || short_flag(a, 'r'))
}

fn is_symbolic_mode(text: &str) -> bool {
    text.len() > 1 && text[1..].chars().all(|c| "rwxXst".contains(c)) && text.starts_with('-')
}

/// Lexically normalizes a path argument, mapping `~`, `$HOME` and `${HOME}` to `~`.
fn normalize_target(text: &str) -> String {
    let mut t = text.to_owned();
    for home in ["${HOME}", "$HOME"] {
        if let Some(rest) = t.strip_prefix(home) {
            t = format!("~{rest}");
        }
    }
    let (prefix, rest) = if let Some(rest) = t.strip_prefix('~') {
        ("~", rest)
    } else if t.starts_with('/') {
        ("/", t.as_str())
    } else {
        ("", t.as_str())
    };
    let mut parts: Vec<&str> = Vec::new();
    for part in rest.split('/') {
        match part {
            "" | "." => {}
            ".." if !prefix.is_empty() => {
                parts.pop();
            }
            p => parts.push(p),
        }
    }
    match prefix {
        "~" if parts.is_empty() => "~".to_owned(),
        "~" => format!("~/{}", parts.join("/")),
        "/" => format!("/{}", parts.join("/")),
        _ => parts.join("/"),
    }
}

/// The root, the home directory, a top-level system directory, or a glob of all their entries.
fn is_critical(text: &str) -> bool {
    let t = normalize_target(text);
    let t = match t.strip_suffix("/*").or_else(|| t.strip_suffix("/.*")) {
        // `/*` normalizes to `/` and then loses its slash with the glob.
        Some("") => "/",
        Some(parent) => parent,
        None => &t,
    };
    if t == "/" || t == "~" {
        return true;
    }
    match t.strip_prefix('/') {
        Some(top) if !top.contains('/') => SYSTEM_DIRS.contains(&top),
        Some(top) => matches!(
            top,
            "usr/bin" | "usr/lib" | "usr/local" | "usr/sbin" | "var/lib" | "var/log"
        ),
        None => false,
    }
}

/// A critical path or anything under a system directory (other than the home tree).
fn is_system_path(text: &str) -> bool {
    if is_critical(text) {
        return true;
    }
    let t = normalize_target(text);
    t.strip_prefix('/')
        .and_then(|p| p.split('/').next())
        .is_some_and(|top| top != "home" && top != "Users" && SYSTEM_DIRS.contains(&top))
}

fn is_block_device(text: &str) -> bool {
    let Some(dev) = text.strip_prefix("/dev/") else {
        return false;
    };
    let harmless = HARMLESS_DEVICES.contains(&dev)
        || ["fd/", "pts/", "shm/", "mqueue/", "tcp/", "udp/", "tty"]
            .iter()
            .any(|p| dev.starts_with(p));
    !dev.is_empty() && !harmless
}

/// Roles implied by a path-like argument: credential files, history files, the environment.
fn path_roles(text: &str) -> Roles {
    // Arguments like `if=PATH`, `@PATH` (curl) and `name=@PATH` carry a path after a marker.
    let path = text.rsplit(['=', '@']).next().unwrap_or(text);
    let mut roles = Roles::default();
    let lower = path.to_lowercase();
    for part in lower.split('/') {
        if HISTORY_FILES.contains(&part) {
            roles.add(Roles::HISTORY);
        } else if sensitive_name(part).is_some() {
            roles.add(Roles::SECRET);
        }
    }
    if matches!(
        lower.as_str(),
        "/etc/shadow" | "/etc/gshadow" | "/etc/sudoers"
    ) {
        roles.add(Roles::SECRET);
    }
    if lower.starts_with("/proc/") && lower.ends_with("/environ") {
        roles.add(Roles::ENV);
    }
    roles
}

/// Decodes a plausible base64 literal into text.
fn decode_base64(text: &str) -> Option<String> {
    let t = text.trim();
    if t.len() < 8
        || !t
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"+/=-_".contains(&b))
    {
        return None;
    }
    let engines = [
        base64::engine::general_purpose::STANDARD,
        base64::engine::general_purpose::STANDARD_NO_PAD,
        base64::engine::general_purpose::URL_SAFE,
        base64::engine::general_purpose::URL_SAFE_NO_PAD,
    ];
    engines
        .iter()
        .find_map(|e| e.decode(t).ok())
        .and_then(|bytes| String::from_utf8(bytes).ok())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn words(src: &str) -> Vec<String> {
        lex(
            src,
            Origin {
                base: 0,
                fixed: None,
            },
            0,
        )
        .into_iter()
        .filter_map(|t| match t {
            Tok::Word(w) => Some(w.text),
            Tok::Op(_) => None,
        })
        .collect()
    }

    #[test]
    fn lexer_removes_quoting() {
        assert_eq!(words(r#"r'm' "-r"f \/"#), ["rm", "-rf", "/"]);
        assert_eq!(words("rm${IFS}-rf${IFS}/"), ["rm", "-rf", "/"]);
        assert_eq!(words(r"$'\x72\x6d' -rf /"), ["rm", "-rf", "/"]);
        assert_eq!(words("r$@m -rf /"), ["rm", "-rf", "/"]);
    }

    #[test]
    fn word_offsets_point_into_the_source() {
        let toks = lex(
            "ls  'a b'",
            Origin {
                base: 0,
                fixed: None,
            },
            0,
        );
        let Tok::Word(w) = &toks[1] else {
            panic!("expected a word")
        };
        assert_eq!((w.start, w.end), (4, 9));
    }

    #[test]
    fn targets_normalize() {
        assert_eq!(normalize_target("/tmp/../"), "/");
        assert_eq!(normalize_target("$HOME/"), "~");
        assert!(is_critical("//"));
        assert!(is_critical("/etc/"));
        assert!(!is_critical("./build"));
        assert!(!is_critical("."));
        assert!(is_critical("/*"));
        assert!(is_critical("~/*"));
        assert!(!is_critical("/tmp/build"));
    }
}
