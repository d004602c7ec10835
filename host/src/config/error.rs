//! Configuration errors that point at the file, line, column and field, with the offending line
//! quoted — the way compilers report errors, because operators fix configs the same way.
//!
//! Every problem is made one way, by [`ConfigFile::problem`]: whether the parser, a table's
//! validator or a check after validation (`locations.rs`) finds it, it carries file, line,
//! column, field and a message saying what is allowed; and every refusal is made by
//! [`ConfigFile::refusal`], its problems in file order.
//!
//! Nothing secret is printed: credentials written into a URL (`mqtt://user:password@host`) are
//! hidden in the message and in the quoted line ([`redact_credentials`]).

use std::borrow::Cow;
use std::fmt;
use std::ops::Range;
use std::path::PathBuf;
use std::sync::Arc;

/// Characters of the offending line quoted from the problem's column on; the rest is cut.
const EXCERPT_AFTER_COLUMN: usize = 100;

/// One thing wrong with a configuration file.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Problem {
    /// Dotted path of the field (`pipelines.boiler.source.mqtt.qos`); empty for syntax errors.
    pub field: String,
    /// 1-based line, or 0 when the position is unknown.
    pub line: usize,
    /// 1-based column (in characters).
    pub column: usize,
    /// What is wrong and what is allowed.
    pub message: String,
    /// The quoted line and the width of the underline.
    excerpt: Option<(String, usize)>,
}

/// A configuration's text and the name it was read under: what every [`Problem`] points into.
#[derive(Clone, Debug)]
pub(crate) struct ConfigFile {
    /// The file name as given by the user (or `<built-in default>`).
    name: String,
    text: Arc<str>,
}

impl ConfigFile {
    /// `text`, read from the file called `name`.
    pub(crate) fn new(name: &str, text: &str) -> Self {
        Self { name: name.to_owned(), text: Arc::from(text) }
    }

    /// The text.
    pub(crate) fn text(&self) -> &str {
        &self.text
    }

    /// A problem with `field` (its dotted path) at the byte span `span` of the text, or without a
    /// position (`None`); `message` says what is wrong and what is allowed.
    pub(crate) fn problem(
        &self,
        span: Option<Range<usize>>,
        field: impl Into<String>,
        message: impl Into<String>,
    ) -> Problem {
        Problem::at(&self.text, span, field, message)
    }

    /// The 1-based line the byte `offset` of the text is on.
    pub(crate) fn line_of(&self, offset: usize) -> usize {
        self.text[..offset.min(self.text.len())].matches('\n').count() + 1
    }

    /// The refusal of this file for `problems`, in file order.
    pub(crate) fn refusal(&self, mut problems: Vec<Problem>) -> ConfigError {
        problems.sort_by_key(|p| (p.line, p.column));
        ConfigError::Invalid { file: self.name.clone(), problems }
    }
}

impl Problem {
    /// A problem located by a byte span of `text` (None when the span is unknown or empty).
    fn at(text: &str, span: Option<Range<usize>>, field: impl Into<String>, message: impl Into<String>) -> Self {
        let message = redact_credentials(&message.into()).into_owned();
        let mut problem = Self { field: field.into(), line: 0, column: 0, message, excerpt: None };
        // A zero-width span (an error at a position, like an unclosed bracket) still has a place.
        if let Some(span) = span.filter(|s| s.start <= s.end && s.start < text.len().max(1)) {
            let span = span.start.min(text.len())..span.end.min(text.len());
            let line_start = text[..span.start].rfind('\n').map_or(0, |i| i + 1);
            let line_end = text[span.start..].find('\n').map_or(text.len(), |i| span.start + i);
            problem.line = text[..span.start].matches('\n').count() + 1;
            // Redacted piece by piece, so that column and underline still fit the quoted line.
            let before = redact_credentials(&text[line_start..span.start]);
            let marked = redact_credentials(&text[span.start..span.end.min(line_end)]);
            let after = redact_credentials(&text[span.end.min(line_end)..line_end]);
            let pieces = format!("{before}{marked}{after}");
            let whole = redact_credentials(&text[line_start..line_end]);
            let (line, column, width) = if pieces == whole {
                (pieces, before.chars().count() + 1, marked.chars().count().max(1))
            } else {
                // The span cuts through a URL's credentials, so no piece showed them whole
                // enough to be recognised: quote the line redacted as one, pointing at the URL.
                let column = whole.find("://").map_or(0, |i| whole[..i + 3].chars().count()) + 1;
                (whole.into_owned(), column, 1)
            };
            problem.column = column;
            let line = line.trim_end_matches('\r');
            // A very long line (a 64 KiB value, say) is quoted up to a little past the problem.
            let shown = problem.column - 1 + EXCERPT_AFTER_COLUMN;
            problem.excerpt = Some(match line.char_indices().nth(shown) {
                Some((cut, _)) => (format!("{}…", &line[..cut]), width.min(EXCERPT_AFTER_COLUMN)),
                None => (line.to_owned(), width),
            });
        }
        problem
    }
}

/// `text` with the credentials of every `scheme://user:password@host` in it hidden: the password
/// (or the whole user part when it has no `:`, as a token would) becomes `***`. Applied to
/// everything a refusal prints, since the quoted line may hold a broker URL.
pub fn redact_credentials(text: &str) -> Cow<'_, str> {
    if !text.contains("://") {
        return Cow::Borrowed(text);
    }
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(start) = rest.find("://") {
        let (before, after) = rest.split_at(start + 3);
        out.push_str(before);
        let end = after.find(|c: char| c.is_whitespace() || c == '"' || c == '\'').unwrap_or(after.len());
        let (token, tail) = after.split_at(end);
        match token.rsplit_once('@') {
            Some((userinfo, host)) => match userinfo.split_once(':') {
                Some((user, _)) => out.push_str(&format!("{user}:***@{host}")),
                None => out.push_str(&format!("***@{host}")),
            },
            None => out.push_str(token),
        }
        rest = tail;
    }
    out.push_str(rest);
    Cow::Owned(out)
}

/// Why a configuration was refused.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read.
    #[error("cannot read config file {path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// The file was read but is not a valid configuration.
    #[error("{}", render(file, problems))]
    Invalid {
        /// The file name as given by the user (or `<built-in default>`).
        file: String,
        /// Everything found wrong, in file order.
        problems: Vec<Problem>,
    },
}

impl ConfigError {
    /// The problems found, empty for a read error.
    pub fn problems(&self) -> &[Problem] {
        match self {
            Self::Read { .. } => &[],
            Self::Invalid { problems, .. } => problems,
        }
    }
}

fn render(file: &str, problems: &[Problem]) -> String {
    let mut out = String::new();
    for (i, problem) in problems.iter().enumerate() {
        if i > 0 {
            out.push('\n');
        }
        write_problem(&mut out, file, problem).expect("writing to a String cannot fail");
    }
    out
}

fn write_problem(out: &mut String, file: &str, problem: &Problem) -> fmt::Result {
    use fmt::Write;
    let location =
        if problem.line > 0 { format!("{file}:{}:{}", problem.line, problem.column) } else { file.to_owned() };
    if problem.field.is_empty() {
        writeln!(out, "error: {location}: {}", problem.message)?;
    } else {
        writeln!(out, "error: {location}: field `{}`: {}", problem.field, problem.message)?;
    }
    if let Some((line_text, width)) = &problem.excerpt {
        let number = problem.line.to_string();
        let gutter = " ".repeat(number.len());
        writeln!(out, "{gutter} |")?;
        writeln!(out, "{number} | {line_text}")?;
        writeln!(out, "{gutter} | {}{}", " ".repeat(problem.column - 1), "^".repeat(*width))?;
    }
    Ok(())
}
