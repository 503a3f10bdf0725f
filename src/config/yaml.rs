//! A schema-directed reader over YAML parser events that keeps every position.
//!
//! attrsync reads its files from the event stream rather than through serde: it needs the
//! line and column of every key and value, the style of every scalar (an unquoted `NO` is a
//! mistake, a quoted one is not), duplicate keys as errors, and bounded work on hostile input.
//! The reader never recurses, never expands aliases, and skips bad subtrees with a depth
//! counter, so 20,000 nested brackets or an alias bomb cost time linear in the input.

use std::borrow::Cow;

use saphyr_parser::{Event, Parser, ScalarStyle, Span, StrInput};

/// A position in a file: 1-based line and column (in characters).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord)]
pub struct Pos {
    /// 1-based line.
    pub line: u32,
    /// 1-based column, counted in characters.
    pub column: u32,
}

impl Pos {
    fn of(span: &Span) -> Pos {
        Pos {
            line: u32::try_from(span.start.line()).unwrap_or(u32::MAX),
            column: u32::try_from(span.start.col() + 1).unwrap_or(u32::MAX),
        }
    }
}

/// A problem found while reading, before it is tied to a file.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Problem {
    /// Where it is.
    pub pos: Pos,
    /// What is wrong.
    pub message: String,
    /// How to fix it, when there is something useful to say.
    pub hint: Option<String>,
}

impl Problem {
    /// A problem at `pos`.
    pub fn new(pos: Pos, message: impl Into<String>) -> Self {
        Self {
            pos,
            message: message.into(),
            hint: None,
        }
    }

    /// The same problem with a hint.
    pub fn hint(mut self, hint: impl Into<String>) -> Self {
        self.hint = Some(hint.into());
        self
    }
}

/// A scalar with its position and whether it was quoted (or a block scalar).
#[derive(Debug)]
pub struct Scalar<'a> {
    /// The scalar's text after YAML unescaping.
    pub text: Cow<'a, str>,
    /// Where it starts.
    pub pos: Pos,
    /// Written without quotes, so YAML resolves it by its text (`NO` → bool in YAML 1.1).
    pub plain: bool,
}

/// What an unquoted scalar would be read as by a YAML 1.1 or 1.2 core-schema loader.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Resolved {
    /// A string: safe as it is.
    Str,
    /// `null`, `~` or nothing.
    Null,
    /// `true`, `yes`, `NO`, `on`, … (YAML 1.1 booleans included: the Norway problem).
    Bool,
    /// A decimal integer written the way it prints (`10001`), so every tool agrees on its text.
    CanonicalInt,
    /// Any other number (`1.0`, `0123`, `0x1F`, `1e3`, `.inf`, `1_000`, `1:30`).
    Number,
}

impl Resolved {
    /// What kind of value YAML makes of the unquoted text `s`.
    pub fn of_plain(s: &str) -> Resolved {
        // `matches!` rather than a list's `contains`: it runs for every unquoted id and value,
        // and compiles to a switch on the length and a few word compares.
        if matches!(s, "" | "~" | "null" | "Null" | "NULL") {
            return Resolved::Null;
        }
        if matches!(
            s,
            "y" | "Y"
                | "yes"
                | "Yes"
                | "YES"
                | "n"
                | "N"
                | "no"
                | "No"
                | "NO"
                | "true"
                | "True"
                | "TRUE"
                | "false"
                | "False"
                | "FALSE"
                | "on"
                | "On"
                | "ON"
                | "off"
                | "Off"
                | "OFF"
        ) {
            return Resolved::Bool;
        }
        let digits = s.strip_prefix(['-', '+']).unwrap_or(s);
        if !digits.is_empty() && digits.bytes().all(|b| b.is_ascii_digit()) {
            let canonical =
                !s.starts_with('+') && (digits == "0" || !digits.starts_with('0')) && s != "-0";
            return if canonical {
                Resolved::CanonicalInt
            } else {
                Resolved::Number
            };
        }
        if looks_numeric(digits) {
            return Resolved::Number;
        }
        Resolved::Str
    }

    /// A phrase for messages: "a boolean", "null", "a number".
    pub fn describe(self) -> &'static str {
        match self {
            Resolved::Str => "a string",
            Resolved::Null => "null",
            Resolved::Bool => "a boolean",
            Resolved::CanonicalInt | Resolved::Number => "a number",
        }
    }
}

/// Floats, hex, octal, underscores and sexagesimal numbers of YAML 1.1 and 1.2.
///
/// Runs for every unquoted value and id, so it allocates nothing and turns most strings away
/// at the first test (a number has a digit).
fn looks_numeric(s: &str) -> bool {
    if s.eq_ignore_ascii_case(".inf") || s.eq_ignore_ascii_case(".nan") {
        return true;
    }
    let bytes = s.as_bytes();
    if !bytes.iter().any(u8::is_ascii_digit) {
        return false;
    }
    if let [b'0', radix, rest @ ..] = bytes {
        let digit: fn(&u8) -> bool = match radix.to_ascii_lowercase() {
            b'x' => u8::is_ascii_hexdigit,
            b'o' | b'b' => u8::is_ascii_digit,
            _ => |_| false,
        };
        if matches!(radix.to_ascii_lowercase(), b'x' | b'o' | b'b') {
            return !rest.is_empty() && rest.iter().all(|b| digit(b) || *b == b'_');
        }
    }
    // Sexagesimal (YAML 1.1): 1:30, 190:20:30.
    if bytes.contains(&b':') {
        return bytes.split(|&b| b == b':').all(|part| {
            !part.is_empty()
                && part
                    .iter()
                    .all(|&b| b.is_ascii_digit() || b == b'_' || b == b'.')
        });
    }
    // [digits][.digits][e[+-]digits] with optional underscores.
    let (mantissa, exponent) = match bytes.iter().position(|&b| b == b'e' || b == b'E') {
        Some(at) => {
            let e = &bytes[at + 1..];
            (
                &bytes[..at],
                Some(e.strip_prefix(b"+").or(e.strip_prefix(b"-")).unwrap_or(e)),
            )
        }
        None => (bytes, None),
    };
    let mantissa_ok = !mantissa.is_empty()
        && mantissa.iter().filter(|&&b| b == b'.').count() <= 1
        && mantissa
            .iter()
            .all(|&b| b.is_ascii_digit() || b == b'.' || b == b'_')
        && mantissa.iter().any(u8::is_ascii_digit);
    let exponent_ok = exponent.is_none_or(|e| !e.is_empty() && e.iter().all(u8::is_ascii_digit));
    mantissa_ok && exponent_ok
}

/// The kind of node the reader met, for messages.
fn describe(event: &Event<'_>) -> &'static str {
    match event {
        Event::Scalar(..) => "a string",
        Event::SequenceStart(..) => "a list",
        Event::MappingStart(..) => "a mapping",
        Event::Alias(..) => "an alias",
        _ => "the end of the document",
    }
}

/// Reads one YAML document from text, collecting problems as it goes.
pub struct Reader<'a> {
    events: Parser<'a, StrInput<'a>>,
    /// The text, for the one question events do not answer (see [`Reader::block_at_eof`]).
    source: &'a str,
    /// The text's length in characters, counted when first needed.
    source_chars: Option<usize>,
    peeked: Option<(Event<'a>, Span)>,
    last_pos: Pos,
    /// Emptied key lists of finished mappings, for the next ones: a million user mappings
    /// then cost no allocation each.
    seen_pool: Vec<SeenKeys<'a>>,
    /// Problems found so far; reading goes on after most of them.
    pub problems: Vec<Problem>,
}

/// A YAML syntax error: the rest of the file cannot be read.
#[derive(Debug)]
pub struct Fatal;

type Step<T> = Result<T, Fatal>;

impl<'a> Reader<'a> {
    /// A reader over `text`.
    pub fn new(text: &'a str) -> Self {
        Self {
            events: Parser::new_from_str(text),
            source: text,
            source_chars: None,
            peeked: None,
            last_pos: Pos { line: 1, column: 1 },
            seen_pool: Vec::new(),
            problems: Vec::new(),
        }
    }

    fn next(&mut self) -> Step<(Event<'a>, Span)> {
        if let Some(peeked) = self.peeked.take() {
            return Ok(peeked);
        }
        match self.events.next() {
            Some(Ok((event, span))) => {
                self.last_pos = Pos::of(&span);
                Ok((event, span))
            }
            Some(Err(err)) => {
                let pos = Pos {
                    line: u32::try_from(err.marker().line()).unwrap_or(u32::MAX),
                    column: u32::try_from(err.marker().col() + 1).unwrap_or(u32::MAX),
                };
                self.problems.push(
                    Problem::new(pos, format!("YAML syntax error: {}", err.info()))
                        .hint("check indentation, unclosed quotes and brackets around this place"),
                );
                Err(Fatal)
            }
            None => {
                self.problems.push(Problem::new(
                    self.last_pos,
                    "unexpected end of the YAML stream",
                ));
                Err(Fatal)
            }
        }
    }

    fn peek(&mut self) -> Step<&Event<'a>> {
        if self.peeked.is_none() {
            let next = self.next()?;
            self.peeked = Some(next);
        }
        Ok(&self.peeked.as_ref().expect("just filled").0)
    }

    /// Starts the stream and its first document. Returns `false` for an empty file.
    pub fn begin(&mut self) -> Step<bool> {
        loop {
            match self.peek()? {
                Event::StreamStart | Event::Nothing => {
                    self.next()?;
                }
                Event::DocumentStart(_) => {
                    self.next()?;
                    return Ok(true);
                }
                Event::StreamEnd => return Ok(false),
                _ => return Ok(true),
            }
        }
    }

    /// Ends the document and checks nothing else follows it.
    pub fn end(&mut self) -> Step<()> {
        loop {
            let (event, span) = self.next()?;
            match event {
                Event::DocumentEnd | Event::Nothing => {}
                Event::StreamEnd => return Ok(()),
                Event::DocumentStart(_) => {
                    self.problems.push(
                        Problem::new(Pos::of(&span), "a second YAML document in the same file")
                            .hint("put one document in each file: remove the `---` or move the rest to its own file"),
                    );
                    // Skip the rest so its syntax errors are still found, but read nothing.
                    loop {
                        let (event, _) = self.next()?;
                        if matches!(event, Event::StreamEnd) {
                            return Ok(());
                        }
                    }
                }
                _ => return Ok(()),
            }
        }
    }

    /// Skips the node whose first event was already consumed.
    fn skip_rest(&mut self, first: &Event<'a>) -> Step<()> {
        let mut depth: usize = match first {
            Event::SequenceStart(..) | Event::MappingStart(..) => 1,
            _ => 0,
        };
        while depth > 0 {
            match self.next()?.0 {
                Event::SequenceStart(..) | Event::MappingStart(..) => depth += 1,
                Event::SequenceEnd | Event::MappingEnd => depth -= 1,
                _ => {}
            }
        }
        Ok(())
    }

    /// Reads a mapping, calling `on_entry` with each key; `on_entry` must consume the value.
    ///
    /// `what` names the mapping in messages ("the user file", "user `Mary`"). Keys must be
    /// scalars and appear once; a problem is recorded and the entry skipped otherwise.
    /// Returns `false` (after recording a problem and skipping the node) when the node is not
    /// a mapping.
    pub fn mapping<'r>(
        &'r mut self,
        what: &dyn Fn() -> String,
        track_duplicates: bool,
        mut on_entry: impl FnMut(&mut Self, &Scalar<'a>) -> Step<()>,
    ) -> Step<bool> {
        let (event, span) = self.next()?;
        if !matches!(event, Event::MappingStart(..)) {
            if let Some(problem) = self.not_a_mapping(what, &event, &span) {
                self.problems.push(problem);
            }
            self.skip_rest(&event)?;
            return Ok(false);
        }
        let mut seen = self.seen_pool.pop().unwrap_or_default();
        loop {
            let (event, span) = self.next()?;
            match event {
                Event::MappingEnd => {
                    seen.clear();
                    self.seen_pool.push(seen);
                    return Ok(true);
                }
                Event::Scalar(text, style, _, tag) => {
                    let key = Scalar {
                        text,
                        pos: Pos::of(&span),
                        plain: style == ScalarStyle::Plain && tag.is_none(),
                    };
                    if track_duplicates {
                        if let Some(first) = seen.first(&key.text) {
                            self.problems.push(
                                Problem::new(
                                    key.pos,
                                    format!("duplicate key `{}` in {}", key.text, what()),
                                )
                                .hint(format!(
                                    "it is first set at line {}; keep one of the two",
                                    first.line
                                )),
                            );
                            let (value, _) = self.next()?;
                            self.skip_rest(&value)?;
                            continue;
                        }
                    }
                    on_entry(self, &key)?;
                    if track_duplicates {
                        seen.insert(key.text, key.pos);
                    }
                }
                other => {
                    let pos = Pos::of(&span);
                    self.problems.push(Problem::new(
                        pos,
                        format!(
                            "a key in {} must be a plain string, found {}",
                            what(),
                            describe(&other)
                        ),
                    ));
                    self.skip_rest(&other)?;
                    let (value, _) = self.next()?;
                    self.skip_rest(&value)?;
                }
            }
        }
    }

    fn not_a_mapping(
        &self,
        what: &dyn Fn() -> String,
        event: &Event<'a>,
        span: &Span,
    ) -> Option<Problem> {
        let pos = Pos::of(span);
        Some(match event {
            Event::Alias(_) => alias_problem(pos),
            Event::Scalar(text, ScalarStyle::Plain, _, None)
                if Resolved::of_plain(text) == Resolved::Null =>
            {
                Problem::new(pos, format!("{} is empty, expected a mapping", what()))
                    .hint("write `{}` for an empty mapping")
            }
            other => Problem::new(
                pos,
                format!("{} must be a mapping, found {}", what(), describe(other)),
            ),
        })
    }

    /// Whether a block scalar spanning `span` ends the text on a line without a line break.
    ///
    /// saphyr-parser then adds a line break that is not in the text (`tier: |` then `gold` at
    /// the end of a file reads as `"gold\n"`); the YAML spec keeps only line breaks that exist,
    /// as other YAML readers do, so the loader takes it off again.
    fn block_at_eof(&mut self, style: ScalarStyle, span: &Span) -> bool {
        if !matches!(style, ScalarStyle::Literal | ScalarStyle::Folded)
            || self.source.ends_with('\n')
            || self.source.ends_with('\r')
        {
            return false;
        }
        let source = self.source;
        let chars = *self
            .source_chars
            .get_or_insert_with(|| source.chars().count());
        span.end.index() >= chars
    }

    /// Reads a scalar value. Records a problem and returns `None` for anything else.
    pub fn scalar(&mut self, what: &dyn Fn() -> String) -> Step<Option<Scalar<'a>>> {
        let (event, span) = self.next()?;
        match event {
            Event::Scalar(mut text, style, _, tag) => {
                if text.ends_with('\n') && self.block_at_eof(style, &span) {
                    let len = text.len() - 1;
                    text.to_mut().truncate(len);
                }
                let pos = Pos::of(&span);
                match tag {
                    None => Ok(Some(Scalar {
                        text,
                        pos,
                        plain: style == ScalarStyle::Plain,
                    })),
                    // `!!str NO` is an explicit string: as good as quotes.
                    Some(tag) if tag.is_yaml_core_schema() && tag.suffix == "str" => {
                        Ok(Some(Scalar {
                            text,
                            pos,
                            plain: false,
                        }))
                    }
                    Some(tag) => {
                        // The parser expands `!!int` to its full handle; name it as written.
                        let tag = if tag.is_yaml_core_schema() {
                            format!("!!{}", tag.suffix)
                        } else {
                            tag.to_string()
                        };
                        self.problems.push(
                            Problem::new(
                                pos,
                                format!(
                                    "{} has the tag `{tag}`, which attrsync does not use",
                                    what()
                                ),
                            )
                            .hint("remove the tag and quote the value"),
                        );
                        Ok(None)
                    }
                }
            }
            Event::Alias(_) => {
                self.problems.push(alias_problem(Pos::of(&span)));
                Ok(None)
            }
            other => {
                self.problems.push(Problem::new(
                    Pos::of(&span),
                    format!(
                        "{} must be a single value, found {}",
                        what(),
                        describe(&other)
                    ),
                ));
                self.skip_rest(&other)?;
                Ok(None)
            }
        }
    }

    /// Reads a list of scalars. Records a problem and returns `None` for anything else.
    pub fn scalar_list(&mut self, what: &dyn Fn() -> String) -> Step<Option<Vec<Scalar<'a>>>> {
        let (event, span) = self.next()?;
        if !matches!(event, Event::SequenceStart(..)) {
            self.problems.push(
                Problem::new(
                    Pos::of(&span),
                    format!("{} must be a list, found {}", what(), describe(&event)),
                )
                .hint("write it as [a, b] or as lines starting with `- `"),
            );
            self.skip_rest(&event)?;
            return Ok(None);
        }
        let mut items = Vec::new();
        loop {
            if matches!(self.peek()?, Event::SequenceEnd) {
                self.next()?;
                return Ok(Some(items));
            }
            if let Some(item) = self.scalar(what)? {
                items.push(item);
            }
        }
    }

    /// Skips one value (after an unknown key).
    pub fn skip_value(&mut self) -> Step<()> {
        let (event, _) = self.next()?;
        self.skip_rest(&event)
    }
}

/// The keys a mapping has had so far, to find duplicates.
///
/// A user's mapping has a handful of keys and there are a million of them, so they are
/// compared in a short list that keeps the keys the reader already made (no copy, no hash
/// map). A hostile file with 100,000 keys in one mapping moves to a hash map past
/// [`SeenKeys::FEW`], so it still costs linear time.
#[derive(Default)]
struct SeenKeys<'a> {
    few: Vec<(Cow<'a, str>, Pos)>,
    many: Option<std::collections::HashMap<Cow<'a, str>, Pos>>,
}

impl<'a> SeenKeys<'a> {
    /// Past this many keys the list becomes a hash map.
    const FEW: usize = 16;

    /// Where `text` was first seen, if it was.
    fn first(&self, text: &str) -> Option<Pos> {
        match &self.many {
            Some(many) => many.get(text).copied(),
            None => self
                .few
                .iter()
                .find(|(seen, _)| seen == text)
                .map(|(_, pos)| *pos),
        }
    }

    fn clear(&mut self) {
        self.few.clear();
        self.many = None;
    }

    fn insert(&mut self, text: Cow<'a, str>, pos: Pos) {
        if self.many.is_none() && self.few.len() == Self::FEW {
            self.many = Some(self.few.drain(..).collect());
        }
        match &mut self.many {
            Some(many) => {
                many.insert(text, pos);
            }
            None => self.few.push((text, pos)),
        }
    }
}

fn alias_problem(pos: Pos) -> Problem {
    Problem::new(pos, "YAML aliases (`*name`) are not supported")
        .hint("write the values out, or put shared attributes under `defaults:`")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn resolves_plain_scalars_like_yaml_tools() {
        for s in ["NO", "no", "yes", "Y", "on", "OFF", "true", "False"] {
            assert_eq!(Resolved::of_plain(s), Resolved::Bool, "{s}");
        }
        for s in ["", "~", "null", "NULL"] {
            assert_eq!(Resolved::of_plain(s), Resolved::Null, "{s}");
        }
        for s in [
            "1.0",
            "0123",
            "0x1F",
            "1e3",
            ".inf",
            "-.5",
            "1_000",
            "1:30",
            "+1",
            "0o17",
            "6.02E23",
            "0X1f",
            "0B101",
            "1E5",
            ".NaN",
            "0e5",
            "1.5e-3",
            "190:20:30",
        ] {
            assert_eq!(Resolved::of_plain(s), Resolved::Number, "{s}");
        }
        for s in ["0", "10001", "-5"] {
            assert_eq!(Resolved::of_plain(s), Resolved::CanonicalInt, "{s}");
        }
        for s in [
            "NewYork",
            "female",
            "v1.2.3",
            "1.2.3",
            "e5",
            "x1",
            "Norway",
            "12ab",
            "a:b",
            ".",
            "0x",
            "0b",
            "0xg1",
            "1e",
            "1e5e5",
            "1::2",
            "user00000001",
            "1.2.3e4",
        ] {
            assert_eq!(Resolved::of_plain(s), Resolved::Str, "{s}");
        }
    }
}
