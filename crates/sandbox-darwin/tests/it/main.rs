//! Tests of the macOS backend that run on every host: the generated profiles (golden files,
//! well-formedness, path injection, empty allow-lists) and the runner against a stand-in
//! `sandbox-exec`.

mod golden;
mod profile;
#[cfg(unix)]
mod runner;

use sandbox_core::{Policy, PolicySpec};

pub fn policy(spec: PolicySpec) -> Policy {
    Policy::new(&spec).expect("valid policy")
}

/// Why a profile is not well-formed.
#[derive(Debug, PartialEq, Eq)]
pub enum Malformed {
    UnclosedString,
    UnbalancedClose { offset: usize },
    UnclosedParen { depth: usize },
    BadTopLevel { offset: usize },
}

/// Checks SBPL syntax as far as safety needs: every string literal is closed (backslash
/// escapes honoured), `;` comments run to the end of the line, parentheses balance, and every
/// top-level form is `(version ...)`, `(deny ...)` or `(allow ...)`.
pub fn check_well_formed(text: &str) -> Result<(), Malformed> {
    let bytes = text.as_bytes();
    let mut depth = 0usize;
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b';' => {
                while i < bytes.len() && bytes[i] != b'\n' {
                    i += 1;
                }
            }
            b'"' => {
                i += 1;
                loop {
                    match bytes.get(i) {
                        None => return Err(Malformed::UnclosedString),
                        Some(b'\\') => i += 2,
                        Some(b'"') => break,
                        Some(_) => i += 1,
                    }
                }
            }
            b'(' => {
                if depth == 0 {
                    let rest = &text[i..];
                    if !["(version ", "(deny ", "(allow "]
                        .iter()
                        .any(|p| rest.starts_with(p))
                    {
                        return Err(Malformed::BadTopLevel { offset: i });
                    }
                }
                depth += 1;
            }
            b')' => {
                if depth == 0 {
                    return Err(Malformed::UnbalancedClose { offset: i });
                }
                depth -= 1;
            }
            c if depth == 0 && !c.is_ascii_whitespace() => {
                return Err(Malformed::BadTopLevel { offset: i });
            }
            _ => {}
        }
        i += 1;
    }
    if depth != 0 {
        return Err(Malformed::UnclosedParen { depth });
    }
    Ok(())
}

/// The names in `(param "NAME")` forms of a profile text, in order.
pub fn param_refs(text: &str) -> Vec<String> {
    text.match_indices("(param \"")
        .map(|(i, m)| {
            let rest = &text[i + m.len()..];
            rest[..rest.find('"').expect("closed param name")].to_owned()
        })
        .collect()
}
