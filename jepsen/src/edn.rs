//! Reading Jepsen/Knossos EDN histories of a single CAS register.
//!
//! This is a small, strict reader for the subset those histories use, not a
//! general EDN library. A history is a sequence of maps (optionally inside one
//! top-level vector), usually one per line:
//!
//! ```text
//! {:process 0, :type :invoke, :f :cas, :value [1 2]}
//! {:process 0, :type :fail, :f :cas, :value [1 2]}
//! {:process :nemesis, :type :info, :f :start, :value "partition"}
//! ```
//!
//! Values may be `nil`, `true`/`false`, integers, keywords, strings and
//! vectors of values; commas are whitespace and `;` starts a comment. Map keys
//! are `:process` (an integer, or `:nemesis`), `:type` (`:invoke`, `:ok`,
//! `:fail`, `:info`), `:f`, `:value`, and optionally `:key`, `:time` (in
//! nanoseconds; all events or none), `:error` and `:index` (ignored). Anything
//! else is refused with its line and column.
//!
//! Semantics carried over (see [`EdnOptions`]): the register starts as nil;
//! keywords become strings with their colon (`:timed-out` → `":timed-out"`);
//! without `:time` the real-time order is the order of the lines
//! ([`Clock::EventOrder`]); a `:fail` CAS is, by default, a CAS that ran and
//! whose comparison did not hold ([`CAS_MISMATCH_ERROR`]), as in Jepsen's etcd
//! client and Porcupine's reading of those histories.

use serde_json::{Number, Value};

use crate::error::{Error, Result};
use crate::history::{CAS_MISMATCH_ERROR, Clock, Event, EventType, History};

/// How EDN histories are interpreted.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct EdnOptions {
    /// `true` (default): a `:fail` CAS without `:error` ran and found a value
    /// other than the expected one (Jepsen's etcd client; Porcupine). `false`:
    /// it did not happen at all (Knossos drops `:fail` operations).
    pub fail_cas_is_mismatch: bool,
}

impl Default for EdnOptions {
    fn default() -> Self {
        EdnOptions { fail_cas_is_mismatch: true }
    }
}

/// Nesting deeper than this is refused (histories nest at most two levels).
const MAX_NESTING_DEPTH: usize = 16;

/// An EDN value of the subset we read.
/// A map's entries: keyword (without the colon), value, position of the key.
type Entries = Vec<(String, Edn, Position)>;

#[derive(Clone, Debug, PartialEq)]
enum Edn {
    Nil,
    Bool(bool),
    Int(i64),
    Keyword(String),
    Str(String),
    Vector(Vec<Edn>),
    /// Keys are keywords (without the colon), in file order, with the position
    /// of each key for error messages.
    Map(Entries),
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Position {
    line: usize,
    column: usize,
}

struct Parser<'a> {
    text: &'a [u8],
    offset: usize,
    line: usize,
    column: usize,
}

impl<'a> Parser<'a> {
    fn new(text: &'a str) -> Self {
        Parser { text: text.as_bytes(), offset: 0, line: 1, column: 1 }
    }

    fn position(&self) -> Position {
        Position { line: self.line, column: self.column }
    }

    fn error_at(position: Position, message: impl Into<String>) -> Error {
        Error::Edn { line: position.line, column: position.column, message: message.into() }
    }

    fn error(&self, message: impl Into<String>) -> Error {
        Self::error_at(self.position(), message)
    }

    fn peek(&self) -> Option<u8> {
        self.text.get(self.offset).copied()
    }

    fn bump(&mut self) -> Option<u8> {
        let byte = self.peek()?;
        self.offset += 1;
        if byte == b'\n' {
            self.line += 1;
            self.column = 1;
        } else if byte & 0xC0 != 0x80 {
            // Count characters, not UTF-8 continuation bytes.
            self.column += 1;
        }
        Some(byte)
    }

    fn skip_whitespace(&mut self) {
        while let Some(byte) = self.peek() {
            match byte {
                b' ' | b'\t' | b'\r' | b'\n' | b',' => {
                    self.bump();
                }
                b';' => {
                    while let Some(byte) = self.bump() {
                        if byte == b'\n' {
                            break;
                        }
                    }
                }
                _ => break,
            }
        }
    }

    fn at_end(&mut self) -> bool {
        self.skip_whitespace();
        self.peek().is_none()
    }

    fn is_delimiter(byte: u8) -> bool {
        matches!(byte, b' ' | b'\t' | b'\r' | b'\n' | b',' | b';' | b'{' | b'}' | b'[' | b']' | b'(' | b')' | b'"')
    }

    /// A run of non-delimiter bytes (a symbol, number or keyword body).
    fn token(&mut self) -> String {
        let start = self.offset;
        while let Some(byte) = self.peek() {
            if Self::is_delimiter(byte) {
                break;
            }
            self.bump();
        }
        String::from_utf8_lossy(&self.text[start..self.offset]).into_owned()
    }

    fn value(&mut self, depth: usize) -> Result<Edn> {
        self.skip_whitespace();
        if depth > MAX_NESTING_DEPTH {
            return Err(self.error(format!("nested deeper than {MAX_NESTING_DEPTH} levels")));
        }
        let start = self.position();
        let Some(byte) = self.peek() else {
            return Err(self.error("unexpected end of input, expected a value"));
        };
        match byte {
            b'{' => {
                self.bump();
                let mut entries: Entries = Vec::new();
                loop {
                    self.skip_whitespace();
                    let key_position = self.position();
                    match self.peek() {
                        None => return Err(Self::error_at(start, "map is never closed (missing `}`)")),
                        Some(b'}') => {
                            self.bump();
                            return Ok(Edn::Map(entries));
                        }
                        Some(_) => {}
                    }
                    let key = match self.value(depth + 1)? {
                        Edn::Keyword(k) => k,
                        other => {
                            return Err(Self::error_at(
                                key_position,
                                format!("map keys must be keywords, got {}", describe(&other)),
                            ));
                        }
                    };
                    if entries.iter().any(|(k, _, _)| *k == key) {
                        return Err(Self::error_at(key_position, format!("duplicate key :{key}")));
                    }
                    self.skip_whitespace();
                    if matches!(self.peek(), Some(b'}') | None) {
                        return Err(self.error(format!("key :{key} has no value")));
                    }
                    let value = self.value(depth + 1)?;
                    entries.push((key, value, key_position));
                }
            }
            b'[' => {
                self.bump();
                let mut items = Vec::new();
                loop {
                    self.skip_whitespace();
                    match self.peek() {
                        None => return Err(Self::error_at(start, "vector is never closed (missing `]`)")),
                        Some(b']') => {
                            self.bump();
                            return Ok(Edn::Vector(items));
                        }
                        Some(_) => items.push(self.value(depth + 1)?),
                    }
                }
            }
            b'"' => {
                self.bump();
                let mut bytes = Vec::new();
                loop {
                    match self.bump() {
                        None => return Err(Self::error_at(start, "string is never closed (missing `\"`)")),
                        Some(b'"') => break,
                        Some(b'\\') => {
                            let escaped = match self.bump() {
                                Some(b'"') => b'"',
                                Some(b'\\') => b'\\',
                                Some(b'n') => b'\n',
                                Some(b't') => b'\t',
                                Some(b'r') => b'\r',
                                other => {
                                    let shown = other.map(|b| (b as char).to_string()).unwrap_or_default();
                                    return Err(self.error(format!("unsupported string escape `\\{shown}`")));
                                }
                            };
                            bytes.push(escaped);
                        }
                        Some(byte) => bytes.push(byte),
                    }
                }
                String::from_utf8(bytes).map(Edn::Str).map_err(|_| Self::error_at(start, "string is not UTF-8"))
            }
            b':' => {
                self.bump();
                let name = self.token();
                if name.is_empty() {
                    return Err(Self::error_at(start, "empty keyword"));
                }
                Ok(Edn::Keyword(name))
            }
            b'}' | b']' | b')' => Err(self.error(format!("unexpected `{}`", byte as char))),
            b'(' | b'#' => {
                Err(self.error(format!("`{}` (lists, sets, tags) is outside the supported EDN subset", byte as char)))
            }
            _ => {
                let token = self.token();
                match token.as_str() {
                    "nil" => Ok(Edn::Nil),
                    "true" => Ok(Edn::Bool(true)),
                    "false" => Ok(Edn::Bool(false)),
                    _ => token.parse::<i64>().map(Edn::Int).map_err(|_| {
                        Self::error_at(
                            start,
                            format!(
                                "`{token}` is not a value this reader supports \
                                 (nil, true, false, integers, keywords, strings, vectors)"
                            ),
                        )
                    }),
                }
            }
        }
    }
}

fn describe(value: &Edn) -> String {
    match value {
        Edn::Nil => "nil".into(),
        Edn::Bool(b) => b.to_string(),
        Edn::Int(i) => format!("the integer {i}"),
        Edn::Keyword(k) => format!(":{k}"),
        Edn::Str(s) => format!("the string {s:?}"),
        Edn::Vector(_) => "a vector".into(),
        Edn::Map(_) => "a map".into(),
    }
}

fn to_json(value: &Edn) -> Value {
    match value {
        Edn::Nil => Value::Null,
        Edn::Bool(b) => Value::Bool(*b),
        Edn::Int(i) => Value::Number(Number::from(*i)),
        Edn::Keyword(k) => Value::String(format!(":{k}")),
        Edn::Str(s) => Value::String(s.clone()),
        Edn::Vector(items) => Value::Array(items.iter().map(to_json).collect()),
        Edn::Map(entries) => Value::Object(entries.iter().map(|(k, v, _)| (format!(":{k}"), to_json(v))).collect()),
    }
}

fn text_of(value: &Edn) -> String {
    match value {
        Edn::Keyword(k) => k.clone(),
        Edn::Str(s) => s.clone(),
        other => crate::history::value_text(&to_json(other)),
    }
}

/// One event map, before times are assigned.
struct RawEvent {
    event: Event,
    time: Option<u64>,
    line: usize,
}

fn event_from_map(entries: Entries, start: Position, options: EdnOptions) -> Result<RawEvent> {
    let mut process: Option<Option<u64>> = None;
    let mut kind: Option<EventType> = None;
    let mut f: Option<String> = None;
    let mut value = Value::Null;
    let mut key = String::new();
    let mut time = None;
    let mut error = None;
    for (name, edn, at) in entries {
        let bad = |what: &str| Parser::error_at(at, format!(":{name} must be {what}, got {}", describe(&edn)));
        match name.as_str() {
            "process" => {
                process = Some(match &edn {
                    Edn::Int(p) if *p >= 0 => Some(*p as u64),
                    Edn::Keyword(k) if k == "nemesis" => None,
                    _ => return Err(bad("a non-negative integer or :nemesis")),
                })
            }
            "type" => {
                kind = Some(match &edn {
                    Edn::Keyword(k) if k == "invoke" => EventType::Invoke,
                    Edn::Keyword(k) if k == "ok" => EventType::Ok,
                    Edn::Keyword(k) if k == "fail" => EventType::Fail,
                    Edn::Keyword(k) if k == "info" => EventType::Info,
                    _ => return Err(bad("one of :invoke, :ok, :fail, :info")),
                })
            }
            "f" => {
                f = Some(match &edn {
                    Edn::Keyword(k) => k.clone(),
                    _ => return Err(bad("a keyword")),
                })
            }
            "value" => value = to_json(&edn),
            "key" => {
                key = match &edn {
                    Edn::Keyword(_) | Edn::Str(_) | Edn::Int(_) => text_of(&edn),
                    _ => return Err(bad("a keyword, string or integer")),
                }
            }
            "time" => {
                time = Some(match &edn {
                    Edn::Int(t) if *t >= 0 => *t as u64,
                    _ => return Err(bad("a non-negative integer (nanoseconds)")),
                })
            }
            "error" => error = Some(text_of(&edn)),
            "index" => {}
            other => {
                return Err(Parser::error_at(
                    at,
                    format!(
                        "unsupported key :{other} (expected :process, :type, :f, :value, :key, :time, :error, :index)"
                    ),
                ));
            }
        }
    }
    let missing = |what: &str| Parser::error_at(start, format!("event has no {what}"));
    let process = process.ok_or_else(|| missing(":process"))?;
    let kind = kind.ok_or_else(|| missing(":type"))?;
    let f = f.ok_or_else(|| missing(":f"))?;
    let kind = if process.is_none() { EventType::Nemesis } else { kind };
    if options.fail_cas_is_mismatch && kind == EventType::Fail && f == "cas" && error.is_none() {
        error = Some(CAS_MISMATCH_ERROR.to_string());
    }
    let mut event = Event::new(process, kind, &f, &key, value, 0);
    event.error = error;
    Ok(RawEvent { event, time, line: start.line })
}

/// Parses and validates an EDN history.
pub fn read_edn(text: &str, options: EdnOptions) -> Result<History> {
    let mut parser = Parser::new(text);
    let mut maps: Vec<(Entries, Position)> = Vec::new();
    // One top-level vector of maps, or a sequence of maps.
    parser.skip_whitespace();
    let wrapped = parser.peek() == Some(b'[');
    if wrapped {
        let at = parser.position();
        match parser.value(0)? {
            Edn::Vector(items) => {
                for item in items {
                    match item {
                        // Positions of vector items are not kept; the vector's is close enough.
                        Edn::Map(entries) => maps.push((entries, at)),
                        other => {
                            return Err(Parser::error_at(at, format!("expected event maps, got {}", describe(&other))));
                        }
                    }
                }
            }
            _ => unreachable!("peeked `[`"),
        }
        if !parser.at_end() {
            return Err(parser.error("unexpected input after the top-level vector"));
        }
    } else {
        while !parser.at_end() {
            let at = parser.position();
            match parser.value(0)? {
                Edn::Map(entries) => maps.push((entries, at)),
                other => {
                    return Err(Parser::error_at(
                        at,
                        format!("expected an event map `{{...}}`, got {}", describe(&other)),
                    ));
                }
            }
        }
    }
    let mut raw = Vec::with_capacity(maps.len());
    for (entries, at) in maps {
        raw.push(event_from_map(entries, at, options)?);
    }
    let timed = raw.iter().filter(|r| r.time.is_some()).count();
    let clock = if timed == 0 {
        Clock::EventOrder
    } else if timed == raw.len() {
        Clock::Nanoseconds
    } else {
        let first = raw.iter().find(|r| r.time.is_none()).expect("some event lacks :time");
        return Err(Error::Edn {
            line: first.line,
            column: 1,
            message: "event has no :time but others do (give every event a :time, or none)".into(),
        });
    };
    let mut events = Vec::with_capacity(raw.len());
    let mut lines = Vec::with_capacity(raw.len());
    for (position, mut r) in raw.into_iter().enumerate() {
        r.event.time = r.time.unwrap_or(position as u64);
        events.push(r.event);
        lines.push(r.line);
    }
    History::new(events, lines, clock)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::history::Outcome;
    use serde_json::json;

    #[test]
    fn reads_the_cas_register_subset() {
        let text = "{:process 0, :type :invoke, :f :cas, :value [1 2]}\n\
                    {:process 1, :type :invoke, :f :read, :value nil}\n\
                    {:process 0, :type :fail, :f :cas, :value [1 2]}\n\
                    {:process 1, :type :ok, :f :read, :value 3} ; a comment\n\
                    {:process :nemesis, :type :info, :f :start, :value \"cut \\\"n1\\\"\"}\n\
                    {:process 2, :type :invoke, :f :write, :value 4, :index 7}\n\
                    {:process 2, :type :info, :f :write, :value 4, :error :timeout}\n";
        let history = read_edn(text, EdnOptions::default()).unwrap();
        assert_eq!(history.clock, Clock::EventOrder);
        assert_eq!(history.events.len(), 7);
        assert_eq!(history.events[0].value, json!([1, 2]));
        assert_eq!(history.events[2].error.as_deref(), Some(CAS_MISMATCH_ERROR));
        assert_eq!(history.events[3].value, json!(3));
        assert_eq!(history.events[4].kind, EventType::Nemesis);
        assert_eq!(history.nemesis_windows[0].description, "cut \"n1\"");
        assert_eq!(history.events[6].error.as_deref(), Some("timeout"));
        assert_eq!(history.events[5].time, 5);
        assert_eq!(history.operations.len(), 3);
        assert_eq!(history.operations[2].outcome, Outcome::Info);
        let knossos = read_edn(text, EdnOptions { fail_cas_is_mismatch: false }).unwrap();
        assert_eq!(knossos.events[2].error, None);
    }

    #[test]
    fn reads_a_top_level_vector_with_times_and_keys() {
        let text = "[{:process 0 :type :invoke :f :write :value 1 :time 100 :key :a}\n \
                    {:process 0 :type :ok :f :write :value 1 :time 250 :key :a}]";
        let history = read_edn(text, EdnOptions::default()).unwrap();
        assert_eq!(history.clock, Clock::Nanoseconds);
        assert_eq!(history.events[1].time, 250);
        assert_eq!(history.events[1].key, "a");
    }

    fn error_of(text: &str) -> String {
        read_edn(text, EdnOptions::default()).unwrap_err().to_string()
    }

    #[test]
    fn errors_name_line_and_column() {
        assert_eq!(
            error_of("{:process 0, :type :invoke, :f :read, :value nil}\n{:process 0, :type :okk, :f :read}"),
            "line 2, column 14: :type must be one of :invoke, :ok, :fail, :info, got :okk"
        );
        assert_eq!(
            error_of("{:process 0, :type :invoke, :f :read, :value 1.5}"),
            "line 1, column 46: `1.5` is not a value this reader supports (nil, true, false, integers, keywords, strings, vectors)"
        );
        assert_eq!(error_of("\n\n  {:process 0, :type :invoke"), "line 3, column 3: map is never closed (missing `}`)");
        assert_eq!(error_of("{:process 0, :f :read}"), "line 1, column 1: event has no :type");
        assert_eq!(
            error_of("{:process 0, :type :invoke, :f :read, :colour 3}"),
            "line 1, column 39: unsupported key :colour (expected :process, :type, :f, :value, :key, :time, :error, :index)"
        );
        assert_eq!(error_of("{:process 0, :process 1}"), "line 1, column 14: duplicate key :process");
        assert!(error_of("#{1 2}").contains("outside the supported EDN subset"));
        assert!(error_of("{\"process\" 0}").contains("map keys must be keywords"));
    }

    #[test]
    fn well_formedness_errors_keep_the_line() {
        let text =
            "{:process 0, :type :invoke, :f :read, :value nil}\n{:process 0, :type :invoke, :f :read, :value nil}";
        assert_eq!(
            error_of(text),
            "line 2: malformed history: process 0 invokes while its invoke on line 1 is still pending"
        );
    }
}
