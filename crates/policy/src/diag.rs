//! Errors and warnings about a policy file: where (file:line:col and key path) and what.
//! Both share one type so the CLI prints them the same way.

use std::fmt;

/// One finding in a policy file. `line`/`col` are 1-based; `path` is the key path such as
/// `rules[3].destination_port` (list indices are 0-based), empty for the whole file.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Diagnostic {
    pub file: String,
    pub line: u32,
    pub col: u32,
    pub path: String,
    pub message: String,
}

impl fmt::Display for Diagnostic {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.path.is_empty() {
            write!(
                f,
                "{}:{}:{}: {}",
                self.file, self.line, self.col, self.message
            )
        } else {
            write!(
                f,
                "{}:{}:{}: {}: {}",
                self.file, self.line, self.col, self.path, self.message
            )
        }
    }
}

/// Everything wrong with a policy file, in file order. Never empty when returned as an error.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{}", lines(.0))]
pub struct PolicyErrors(pub Vec<Diagnostic>);

fn lines(diags: &[Diagnostic]) -> String {
    let mut out = String::new();
    for (i, d) in diags.iter().enumerate() {
        if i > 0 {
            out.push('\n');
        }
        out.push_str(&d.to_string());
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn display_formats() {
        let d = Diagnostic {
            file: "rules.yaml".into(),
            line: 14,
            col: 23,
            path: "rules[3].destination_port".into(),
            message: "expected a port 1-65535, got 70000".into(),
        };
        assert_eq!(
            d.to_string(),
            "rules.yaml:14:23: rules[3].destination_port: expected a port 1-65535, got 70000"
        );
        let e = PolicyErrors(vec![
            d.clone(),
            Diagnostic {
                path: String::new(),
                message: "x".into(),
                ..d
            },
        ]);
        assert_eq!(
            e.to_string(),
            "rules.yaml:14:23: rules[3].destination_port: expected a port 1-65535, got 70000\nrules.yaml:14:23: x"
        );
    }
}
