//! The audience and computed-trait query language: lexer, parser, checks.
//!
//! ```text
//! audience   := or
//! or         := and ("or" and)*
//! and        := unary ("and" unary)*
//! unary      := "not" unary | "(" or ")" | "audience" "(" STRING ")" | condition
//! condition  := value ( CMP literal | "contains" STRING | "in" list | "exists" )
//! value      := aggregate | "trait." path | "computed." NAME
//! aggregate  := AGG "(" [path "from"] events ["where" filter] ["within" DURATION | "ever"] ")"
//! AGG        := count | sum | avg | min | max | first | last | most_frequent | unique | unique_count
//! events     := ("track" | "page" | "screen" | "identify" | "group" | "alias") [STRING] | "any"
//! filter     := like `or`, over event paths: properties.x, context.x, traits.x, event, name
//! CMP        := "=" | "!=" | "<" | "<=" | ">" | ">="
//! literal    := STRING | NUMBER | true | false | null ;  list := "[" literal ("," literal)* "]"
//! ```
//!
//! A computed trait's definition is a single `aggregate`; an audience is a
//! boolean expression. Errors carry the byte position (and line/column) and
//! say what was expected.
//!
//! Example: `count(track "Product Viewed" where properties.category = "shoes"
//! within 30d) >= 3 and trait.plan = "pro" and not audience("churned")`.

use std::fmt;

use crate::event::EventType;
use crate::spec::DurationMs;

/// A parse or type error, located in the query text.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct QueryError {
    /// Byte offset in the query.
    pub pos: usize,
    /// 1-based line.
    pub line: usize,
    /// 1-based column (in characters).
    pub column: usize,
    /// What was wrong and what was expected.
    pub message: String,
}

impl fmt::Display for QueryError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "line {}, column {}: {}",
            self.line, self.column, self.message
        )
    }
}

impl std::error::Error for QueryError {}

/// A literal value.
#[derive(Clone, Debug, PartialEq, PartialOrd)]
pub enum Literal {
    /// A string.
    Str(String),
    /// A number.
    Num(f64),
    /// A boolean.
    Bool(bool),
    /// JSON null.
    Null,
}

impl fmt::Display for Literal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Literal::Str(s) => write!(f, "{s:?}"),
            Literal::Num(n) => write!(f, "{n}"),
            Literal::Bool(b) => write!(f, "{b}"),
            Literal::Null => f.write_str("null"),
        }
    }
}

/// Comparison operators.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CmpOp {
    /// `=`
    Eq,
    /// `!=`
    Ne,
    /// `<`
    Lt,
    /// `<=`
    Le,
    /// `>`
    Gt,
    /// `>=`
    Ge,
}

impl CmpOp {
    fn as_str(self) -> &'static str {
        match self {
            CmpOp::Eq => "=",
            CmpOp::Ne => "!=",
            CmpOp::Lt => "<",
            CmpOp::Le => "<=",
            CmpOp::Gt => ">",
            CmpOp::Ge => ">=",
        }
    }
}

/// A test applied to a value.
#[derive(Clone, Debug, PartialEq)]
pub enum Test {
    /// `op literal`
    Cmp(CmpOp, Literal),
    /// `contains "s"` (substring of a string, or element of a list).
    Contains(String),
    /// `in [a, b]`
    In(Vec<Literal>),
    /// `exists` (present and not null).
    Exists,
}

/// Where an event-level path points.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum EventPath {
    /// `properties.a.b`
    Properties(Vec<String>),
    /// `context.a.b`
    Context(Vec<String>),
    /// `traits.a.b`
    Traits(Vec<String>),
    /// `event` (track name)
    Event,
    /// `name` (page/screen name)
    Name,
}

/// A boolean condition over one event (the `where` clause).
#[derive(Clone, Debug, PartialEq)]
pub enum Filter {
    /// All must hold.
    And(Vec<Filter>),
    /// One must hold.
    Or(Vec<Filter>),
    /// Negation.
    Not(Box<Filter>),
    /// A test of an event path.
    Test(EventPath, Test),
}

/// Which events an aggregate looks at.
#[derive(Clone, Debug, PartialEq)]
pub struct EventSelector {
    /// The call type; `None` for `any`.
    pub kind: Option<EventType>,
    /// The track event name or page/screen name.
    pub name: Option<String>,
    /// The `where` clause.
    pub filter: Option<Filter>,
    /// `within` window; `None` = ever.
    pub window: Option<DurationMs>,
}

/// Aggregate functions.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AggFunc {
    /// Number of matching events.
    Count,
    /// Sum of a numeric property.
    Sum,
    /// Average of a numeric property.
    Avg,
    /// Minimum of a numeric property.
    Min,
    /// Maximum of a numeric property.
    Max,
    /// Value at the earliest matching event.
    First,
    /// Value at the latest matching event.
    Last,
    /// Most frequent value (ties: alphabetical).
    MostFrequent,
    /// Sorted list of distinct values.
    Unique,
    /// Number of distinct values.
    UniqueCount,
}

impl AggFunc {
    fn from_name(s: &str) -> Option<AggFunc> {
        Some(match s {
            "count" => AggFunc::Count,
            "sum" => AggFunc::Sum,
            "avg" => AggFunc::Avg,
            "min" => AggFunc::Min,
            "max" => AggFunc::Max,
            "first" => AggFunc::First,
            "last" => AggFunc::Last,
            "most_frequent" => AggFunc::MostFrequent,
            "unique" => AggFunc::Unique,
            "unique_count" => AggFunc::UniqueCount,
            _ => return None,
        })
    }
    /// The function's name in the language.
    pub fn as_str(self) -> &'static str {
        match self {
            AggFunc::Count => "count",
            AggFunc::Sum => "sum",
            AggFunc::Avg => "avg",
            AggFunc::Min => "min",
            AggFunc::Max => "max",
            AggFunc::First => "first",
            AggFunc::Last => "last",
            AggFunc::MostFrequent => "most_frequent",
            AggFunc::Unique => "unique",
            AggFunc::UniqueCount => "unique_count",
        }
    }
    /// Whether the result is a number.
    pub fn is_numeric(self) -> bool {
        matches!(
            self,
            AggFunc::Count
                | AggFunc::Sum
                | AggFunc::Avg
                | AggFunc::Min
                | AggFunc::Max
                | AggFunc::UniqueCount
        )
    }
}

/// An aggregate over a profile's events.
#[derive(Clone, Debug, PartialEq)]
pub struct Aggregate {
    /// The function.
    pub func: AggFunc,
    /// The aggregated path (`None` only for `count`).
    pub field: Option<EventPath>,
    /// Which events.
    pub events: EventSelector,
}

/// Something with a value per profile.
#[derive(Clone, Debug, PartialEq)]
pub enum ValueRef {
    /// An aggregate of events.
    Agg(Aggregate),
    /// `trait.a.b`: a profile trait.
    Trait(Vec<String>),
    /// `computed.name`: another computed trait.
    Computed(String),
}

/// A boolean condition over a profile (an audience definition).
#[derive(Clone, Debug, PartialEq)]
pub enum Condition {
    /// All must hold.
    And(Vec<Condition>),
    /// One must hold.
    Or(Vec<Condition>),
    /// Negation.
    Not(Box<Condition>),
    /// A test of a value.
    Test(ValueRef, Test),
    /// Membership of another audience.
    Audience(String),
}

impl Condition {
    /// Names of audiences this condition refers to.
    pub fn audiences(&self, out: &mut Vec<String>) {
        match self {
            Condition::And(v) | Condition::Or(v) => v.iter().for_each(|c| c.audiences(out)),
            Condition::Not(c) => c.audiences(out),
            Condition::Audience(a) => out.push(a.clone()),
            Condition::Test(..) => {}
        }
    }
    /// Names of computed traits this condition refers to.
    pub fn computed(&self, out: &mut Vec<String>) {
        match self {
            Condition::And(v) | Condition::Or(v) => v.iter().for_each(|c| c.computed(out)),
            Condition::Not(c) => c.computed(out),
            Condition::Test(ValueRef::Computed(n), _) => out.push(n.clone()),
            _ => {}
        }
    }
}

// ---------------------------------------------------------------------------
// Lexer

#[derive(Clone, Debug, PartialEq)]
enum Tok {
    Ident(String),
    Str(String),
    Num(f64),
    Dur(DurationMs),
    Sym(&'static str),
    End,
}

impl fmt::Display for Tok {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Tok::Ident(s) => write!(f, "`{s}`"),
            Tok::Str(s) => write!(f, "string {s:?}"),
            Tok::Num(n) => write!(f, "number {n}"),
            Tok::Dur(d) => write!(f, "duration {}ms", d.0),
            Tok::Sym(s) => write!(f, "`{s}`"),
            Tok::End => f.write_str("end of query"),
        }
    }
}

fn error_at(src: &str, pos: usize, message: String) -> QueryError {
    let before = &src[..pos.min(src.len())];
    let line = before.matches('\n').count() + 1;
    let column = before.rsplit('\n').next().map_or(0, |l| l.chars().count()) + 1;
    QueryError {
        pos,
        line,
        column,
        message,
    }
}

fn lex(src: &str) -> Result<Vec<(Tok, usize)>, QueryError> {
    let bytes = src.as_bytes();
    let mut out = Vec::new();
    let mut i = 0;
    while i < bytes.len() {
        let c = bytes[i];
        if c.is_ascii_whitespace() {
            i += 1;
            continue;
        }
        let start = i;
        if c == b'"' {
            // A JSON string literal.
            let mut j = i + 1;
            let mut escaped = false;
            while j < bytes.len() {
                if escaped {
                    escaped = false;
                } else if bytes[j] == b'\\' {
                    escaped = true;
                } else if bytes[j] == b'"' {
                    break;
                }
                j += 1;
            }
            if j >= bytes.len() {
                return Err(error_at(
                    src,
                    start,
                    "unterminated string: expected a closing `\"`".into(),
                ));
            }
            let s: String = serde_json::from_str(&src[i..=j])
                .map_err(|e| error_at(src, start, format!("invalid string literal: {e}")))?;
            out.push((Tok::Str(s), start));
            i = j + 1;
        } else if c.is_ascii_digit()
            || (c == b'-' && bytes.get(i + 1).is_some_and(u8::is_ascii_digit))
        {
            let mut j = i + 1;
            while j < bytes.len() && (bytes[j].is_ascii_digit() || bytes[j] == b'.') {
                j += 1;
            }
            let num = &src[i..j];
            let mut k = j;
            while k < bytes.len() && bytes[k].is_ascii_alphabetic() {
                k += 1;
            }
            if k > j {
                let d = DurationMs::parse(&src[i..k]).map_err(|e| error_at(src, start, e))?;
                out.push((Tok::Dur(d), start));
                i = k;
            } else {
                let n: f64 = num
                    .parse()
                    .map_err(|_| error_at(src, start, format!("invalid number {num:?}")))?;
                out.push((Tok::Num(n), start));
                i = j;
            }
        } else if c.is_ascii_alphabetic() || c == b'_' {
            let mut j = i + 1;
            while j < bytes.len()
                && (bytes[j].is_ascii_alphanumeric() || bytes[j] == b'_' || bytes[j] == b'.')
            {
                j += 1;
            }
            out.push((Tok::Ident(src[i..j].to_string()), start));
            i = j;
        } else {
            let two = src.get(i..i + 2);
            let sym: &'static str = match (two, c) {
                (Some("!="), _) => "!=",
                (Some("<="), _) => "<=",
                (Some(">="), _) => ">=",
                (Some("=="), _) => "=",
                (_, b'=') => "=",
                (_, b'<') => "<",
                (_, b'>') => ">",
                (_, b'(') => "(",
                (_, b')') => ")",
                (_, b'[') => "[",
                (_, b']') => "]",
                (_, b',') => ",",
                _ => {
                    let ch = src[i..].chars().next().unwrap_or('?');
                    return Err(error_at(src, start, format!("unexpected character {ch:?}")));
                }
            };
            i += sym.len() + usize::from(two == Some("=="));
            out.push((Tok::Sym(sym), start));
        }
    }
    out.push((Tok::End, src.len()));
    Ok(out)
}

// ---------------------------------------------------------------------------
// Parser

struct Parser<'a> {
    src: &'a str,
    toks: Vec<(Tok, usize)>,
    i: usize,
}

type PResult<T> = Result<T, QueryError>;

impl<'a> Parser<'a> {
    fn new(src: &'a str) -> PResult<Self> {
        Ok(Parser {
            src,
            toks: lex(src)?,
            i: 0,
        })
    }
    fn peek(&self) -> &Tok {
        &self.toks[self.i].0
    }
    fn pos(&self) -> usize {
        self.toks[self.i].1
    }
    fn bump(&mut self) -> Tok {
        let t = self.toks[self.i].0.clone();
        if self.i + 1 < self.toks.len() {
            self.i += 1;
        }
        t
    }
    fn err<T>(&self, expected: &str) -> PResult<T> {
        Err(error_at(
            self.src,
            self.pos(),
            format!("expected {expected}, found {}", self.peek()),
        ))
    }
    fn is_kw(&self, kw: &str) -> bool {
        matches!(self.peek(), Tok::Ident(s) if s == kw)
    }
    fn eat_kw(&mut self, kw: &str) -> bool {
        if self.is_kw(kw) {
            self.bump();
            true
        } else {
            false
        }
    }
    fn eat_sym(&mut self, sym: &str) -> bool {
        if matches!(self.peek(), Tok::Sym(s) if *s == sym) {
            self.bump();
            true
        } else {
            false
        }
    }
    fn expect_sym(&mut self, sym: &str) -> PResult<()> {
        if self.eat_sym(sym) {
            Ok(())
        } else {
            self.err(&format!("`{sym}`"))
        }
    }
    fn expect_end(&mut self) -> PResult<()> {
        if *self.peek() == Tok::End {
            Ok(())
        } else {
            self.err("`and`, `or` or the end of the query")
        }
    }

    fn condition(&mut self) -> PResult<Condition> {
        let mut parts = vec![self.and()?];
        while self.eat_kw("or") {
            parts.push(self.and()?);
        }
        Ok(if parts.len() == 1 {
            parts.pop().expect("one part")
        } else {
            Condition::Or(parts)
        })
    }
    fn and(&mut self) -> PResult<Condition> {
        let mut parts = vec![self.unary()?];
        while self.eat_kw("and") {
            parts.push(self.unary()?);
        }
        Ok(if parts.len() == 1 {
            parts.pop().expect("one part")
        } else {
            Condition::And(parts)
        })
    }
    fn unary(&mut self) -> PResult<Condition> {
        if self.eat_kw("not") {
            return Ok(Condition::Not(Box::new(self.unary()?)));
        }
        if self.eat_sym("(") {
            let c = self.condition()?;
            self.expect_sym(")")?;
            return Ok(c);
        }
        if self.eat_kw("audience") {
            self.expect_sym("(")?;
            let name = match self.bump() {
                Tok::Str(s) => s,
                _ => {
                    self.i -= 1;
                    return self.err("an audience name in quotes");
                }
            };
            self.expect_sym(")")?;
            return Ok(Condition::Audience(name));
        }
        let at = self.pos();
        let value = self.value()?;
        let test = self.test()?;
        check_test(self.src, at, &value, &test)?;
        Ok(Condition::Test(value, test))
    }
    fn value(&mut self) -> PResult<ValueRef> {
        let at = self.pos();
        match self.peek().clone() {
            Tok::Ident(s) => {
                if let Some(path) = s.strip_prefix("trait.") {
                    self.bump();
                    return Ok(ValueRef::Trait(split_path(self.src, at, path)?));
                }
                if let Some(name) = s.strip_prefix("computed.") {
                    self.bump();
                    if name.is_empty() || name.contains('.') {
                        return Err(error_at(self.src, at, "expected `computed.<name>`".into()));
                    }
                    return Ok(ValueRef::Computed(name.to_string()));
                }
                if AggFunc::from_name(&s).is_some() {
                    return Ok(ValueRef::Agg(self.aggregate()?));
                }
                self.err("`count(...)` or another aggregate, `trait.<path>`, `computed.<name>`, `audience(...)`, `not` or `(`")
            }
            _ => self.err("`count(...)` or another aggregate, `trait.<path>`, `computed.<name>`, `audience(...)`, `not` or `(`"),
        }
    }
    fn aggregate(&mut self) -> PResult<Aggregate> {
        let at = self.pos();
        let Tok::Ident(name) = self.bump() else {
            unreachable!("checked by caller")
        };
        let func = AggFunc::from_name(&name).expect("checked by caller");
        self.expect_sym("(")?;
        // An optional `<path> from`.
        let mut field = None;
        let followed_by_from = matches!(&self.toks[(self.i + 1).min(self.toks.len() - 1)].0, Tok::Ident(f) if f == "from");
        if let Tok::Ident(s) = self.peek().clone() {
            if !is_event_kind(&s) && followed_by_from {
                let p = self.pos();
                self.bump();
                field = Some(event_path(self.src, p, &s)?);
                if !self.eat_kw("from") {
                    return self.err("`from` after the aggregated path");
                }
            }
        }
        let events = self.selector()?;
        self.expect_sym(")")?;
        match (func, &field) {
            (AggFunc::Count, Some(_)) => {
                return Err(error_at(
                    self.src,
                    at,
                    "count(...) takes no path: write `count(track \"X\" ...)`".into(),
                ))
            }
            (f, None) if f != AggFunc::Count => {
                return Err(error_at(
                    self.src,
                    at,
                    format!(
                        "{}(...) needs a path: write `{}(properties.<name> from track \"X\" ...)`",
                        f.as_str(),
                        f.as_str()
                    ),
                ))
            }
            _ => {}
        }
        Ok(Aggregate {
            func,
            field,
            events,
        })
    }
    fn selector(&mut self) -> PResult<EventSelector> {
        let kind = match self.peek().clone() {
            Tok::Ident(s) if s == "any" => {
                self.bump();
                None
            }
            Tok::Ident(s) if is_event_kind(&s) => {
                self.bump();
                EventType::from_wire(&s)
            }
            _ => return self.err(
                "an event type (`track`, `page`, `screen`, `identify`, `group`, `alias` or `any`)",
            ),
        };
        let name = match self.peek().clone() {
            Tok::Str(s) => {
                self.bump();
                Some(s)
            }
            _ => None,
        };
        let filter = if self.eat_kw("where") {
            Some(self.filter_or()?)
        } else {
            None
        };
        let window = if self.eat_kw("within") {
            match self.bump() {
                Tok::Dur(d) if d.0 > 0 => Some(d),
                _ => {
                    self.i -= 1;
                    return self.err("a duration like `30d`, `24h` or `15m` after `within`");
                }
            }
        } else {
            self.eat_kw("ever");
            None
        };
        Ok(EventSelector {
            kind,
            name,
            filter,
            window,
        })
    }
    fn filter_or(&mut self) -> PResult<Filter> {
        let mut parts = vec![self.filter_and()?];
        while self.eat_kw("or") {
            parts.push(self.filter_and()?);
        }
        Ok(if parts.len() == 1 {
            parts.pop().expect("one part")
        } else {
            Filter::Or(parts)
        })
    }
    fn filter_and(&mut self) -> PResult<Filter> {
        let mut parts = vec![self.filter_unary()?];
        while self.eat_kw("and") {
            parts.push(self.filter_unary()?);
        }
        Ok(if parts.len() == 1 {
            parts.pop().expect("one part")
        } else {
            Filter::And(parts)
        })
    }
    fn filter_unary(&mut self) -> PResult<Filter> {
        if self.eat_kw("not") {
            return Ok(Filter::Not(Box::new(self.filter_unary()?)));
        }
        if self.eat_sym("(") {
            let f = self.filter_or()?;
            self.expect_sym(")")?;
            return Ok(f);
        }
        let at = self.pos();
        let path = match self.bump() {
            Tok::Ident(s) => event_path(self.src, at, &s)?,
            _ => {
                self.i -= 1;
                return self.err("an event path (`properties.<name>`, `context.<name>`, `traits.<name>`, `event` or `name`)");
            }
        };
        let test = self.test()?;
        Ok(Filter::Test(path, test))
    }
    fn test(&mut self) -> PResult<Test> {
        if self.eat_kw("exists") {
            return Ok(Test::Exists);
        }
        if self.eat_kw("contains") {
            return match self.bump() {
                Tok::Str(s) => Ok(Test::Contains(s)),
                _ => {
                    self.i -= 1;
                    self.err("a string after `contains`")
                }
            };
        }
        if self.eat_kw("in") {
            self.expect_sym("[")?;
            let mut items = vec![self.literal()?];
            while self.eat_sym(",") {
                items.push(self.literal()?);
            }
            self.expect_sym("]")?;
            return Ok(Test::In(items));
        }
        let op =
            match self.peek() {
                Tok::Sym("=") => CmpOp::Eq,
                Tok::Sym("!=") => CmpOp::Ne,
                Tok::Sym("<") => CmpOp::Lt,
                Tok::Sym("<=") => CmpOp::Le,
                Tok::Sym(">") => CmpOp::Gt,
                Tok::Sym(">=") => CmpOp::Ge,
                _ => return self.err(
                    "a comparison (`=`, `!=`, `<`, `<=`, `>`, `>=`), `contains`, `in` or `exists`",
                ),
            };
        self.bump();
        Ok(Test::Cmp(op, self.literal()?))
    }
    fn literal(&mut self) -> PResult<Literal> {
        let lit = match self.peek().clone() {
            Tok::Str(s) => Literal::Str(s),
            Tok::Num(n) => Literal::Num(n),
            Tok::Ident(s) if s == "true" => Literal::Bool(true),
            Tok::Ident(s) if s == "false" => Literal::Bool(false),
            Tok::Ident(s) if s == "null" => Literal::Null,
            _ => return self.err("a literal (a string in quotes, a number, true, false or null)"),
        };
        self.bump();
        Ok(lit)
    }
}

fn is_event_kind(s: &str) -> bool {
    EventType::from_wire(s).is_some() || s == "any"
}

fn split_path(src: &str, at: usize, path: &str) -> PResult<Vec<String>> {
    let parts: Vec<String> = path.split('.').map(str::to_string).collect();
    if parts.iter().any(String::is_empty) {
        return Err(error_at(
            src,
            at,
            format!("invalid path {path:?}: expected names separated by `.`"),
        ));
    }
    Ok(parts)
}

fn event_path(src: &str, at: usize, s: &str) -> PResult<EventPath> {
    if s == "event" {
        return Ok(EventPath::Event);
    }
    if s == "name" {
        return Ok(EventPath::Name);
    }
    for (prefix, make) in [
        (
            "properties.",
            EventPath::Properties as fn(Vec<String>) -> EventPath,
        ),
        ("context.", EventPath::Context),
        ("traits.", EventPath::Traits),
    ] {
        if let Some(rest) = s.strip_prefix(prefix) {
            return Ok(make(split_path(src, at, rest)?));
        }
    }
    Err(error_at(
        src,
        at,
        format!("expected an event path (`properties.<name>`, `context.<name>`, `traits.<name>`, `event` or `name`), found `{s}`"),
    ))
}

fn check_test(src: &str, at: usize, value: &ValueRef, test: &Test) -> PResult<()> {
    if let ValueRef::Agg(a) = value {
        let numeric = a.func.is_numeric();
        let bad = match test {
            Test::Cmp(_, Literal::Num(_)) => {
                !numeric
                    && a.func != AggFunc::First
                    && a.func != AggFunc::Last
                    && a.func != AggFunc::MostFrequent
            }
            Test::Cmp(CmpOp::Eq | CmpOp::Ne, _) => numeric,
            Test::Cmp(..) => numeric,
            Test::Contains(_) => numeric,
            Test::In(items) => numeric && items.iter().any(|l| !matches!(l, Literal::Num(_))),
            Test::Exists => false,
        };
        if bad {
            let what = if numeric { "a number" } else { "a value" };
            return Err(error_at(
                src,
                at,
                format!(
                    "{}(...) is {what}; it cannot be compared with {}",
                    a.func.as_str(),
                    describe(test)
                ),
            ));
        }
    }
    Ok(())
}

fn describe(test: &Test) -> String {
    match test {
        Test::Cmp(op, l) => format!("`{} {l}`", op.as_str()),
        Test::Contains(s) => format!("`contains {s:?}`"),
        Test::In(_) => "a list of non-numbers".into(),
        Test::Exists => "`exists`".into(),
    }
}

/// Parses an audience definition.
pub fn parse_audience(src: &str) -> Result<Condition, QueryError> {
    let mut p = Parser::new(src)?;
    if *p.peek() == Tok::End {
        return p.err("a condition");
    }
    let c = p.condition()?;
    p.expect_end()?;
    Ok(c)
}

/// Parses a computed-trait definition (one aggregate).
pub fn parse_computed_trait(src: &str) -> Result<Aggregate, QueryError> {
    let mut p = Parser::new(src)?;
    match p.peek().clone() {
        Tok::Ident(s) if AggFunc::from_name(&s).is_some() => {
            let a = p.aggregate()?;
            if *p.peek() != Tok::End {
                return p.err("the end of the definition (a computed trait is one aggregate)");
            }
            Ok(a)
        }
        _ => p.err("an aggregate: count, sum, avg, min, max, first, last, most_frequent, unique or unique_count"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_the_issue_example() {
        let c = parse_audience(
            r#"count(track "Product Viewed" where properties.category = "shoes" within 30d) >= 3 and trait.plan = "pro" and not audience("churned")"#,
        )
        .unwrap();
        let Condition::And(parts) = c else {
            panic!("{c:?}")
        };
        assert_eq!(parts.len(), 3);
        match &parts[0] {
            Condition::Test(ValueRef::Agg(a), Test::Cmp(CmpOp::Ge, Literal::Num(n))) => {
                assert_eq!(a.func, AggFunc::Count);
                assert_eq!(a.events.kind, Some(EventType::Track));
                assert_eq!(a.events.name.as_deref(), Some("Product Viewed"));
                assert_eq!(a.events.window, Some(DurationMs(30 * 86_400_000)));
                assert_eq!(
                    a.events.filter,
                    Some(Filter::Test(
                        EventPath::Properties(vec!["category".into()]),
                        Test::Cmp(CmpOp::Eq, Literal::Str("shoes".into()))
                    ))
                );
                assert_eq!(*n, 3.0);
            }
            other => panic!("{other:?}"),
        }
        assert_eq!(
            parts[1],
            Condition::Test(
                ValueRef::Trait(vec!["plan".into()]),
                Test::Cmp(CmpOp::Eq, Literal::Str("pro".into()))
            )
        );
        assert_eq!(
            parts[2],
            Condition::Not(Box::new(Condition::Audience("churned".into())))
        );
    }

    #[test]
    fn every_construct() {
        for q in [
            r#"trait.email exists"#,
            r#"trait.age >= 18 or (trait.country in ["DE", "FR"] and trait.name contains "x")"#,
            r#"sum(properties.revenue from track "Order Completed" within 90d) > 100.5"#,
            r#"avg(properties.price from any where properties.currency != "EUR" ever) < 20"#,
            r#"unique_count(properties.sku from track "Product Viewed" within 7d) >= 5"#,
            r#"most_frequent(properties.category from track "Product Viewed") = "shoes""#,
            r#"last(name from page within 1h) = "Pricing""#,
            r#"computed.ltv > 1000 and not (count(screen) = 0)"#,
            r#"count(page where context.page.path contains "/blog" and not properties.search exists within 24h) > 2"#,
            r#"first(traits.plan from identify) in ["pro", "enterprise"]"#,
        ] {
            parse_audience(q).unwrap_or_else(|e| panic!("{q}: {e}"));
        }
        let t = parse_computed_trait(
            r#"unique(properties.category from track "Product Viewed" within 30d)"#,
        )
        .unwrap();
        assert_eq!(t.func, AggFunc::Unique);
    }

    #[test]
    fn errors_point_at_the_position_and_say_what_was_expected() {
        let e = parse_audience(r#"count(track "X") >= "three""#).unwrap_err();
        assert_eq!(e.pos, 0);
        assert!(e.message.contains("count(...) is a number"), "{e}");
        let e = parse_audience(r#"trait.plan = "pro" and"#).unwrap_err();
        assert_eq!(e.pos, 22);
        assert!(
            e.message.contains("expected") && e.message.contains("end of query"),
            "{e}"
        );
        let e = parse_audience(r#"count(track "X" within 30 days) > 1"#).unwrap_err();
        assert!(e.message.contains("duration"), "{e}");
        let e = parse_audience(r#"count(track "X") > 1 trait.a = 1"#).unwrap_err();
        assert_eq!(e.column, 22);
        let e = parse_audience("count(track \"X\")\n  >> 1").unwrap_err();
        assert_eq!((e.line, e.column), (2, 4));
        let e = parse_audience(r#"sum(track "Order Completed") > 1"#).unwrap_err();
        assert!(e.message.contains("needs a path"), "{e}");
        let e = parse_audience(r#"count(properties.x from track) > 1"#).unwrap_err();
        assert!(e.message.contains("takes no path"), "{e}");
        let e = parse_audience(r#"count(click "X") > 1"#).unwrap_err();
        assert!(e.message.contains("event type"), "{e}");
        let e = parse_audience(r#"trait.plan = "pro"#).unwrap_err();
        assert!(e.message.contains("unterminated"), "{e}");
        let e = parse_audience("").unwrap_err();
        assert!(e.message.contains("expected a condition"), "{e}");
        let e = parse_computed_trait(r#"trait.plan = "x""#).unwrap_err();
        assert!(e.message.contains("an aggregate"), "{e}");
        let e = parse_audience(r#"count(track where foo.bar = 1) > 1"#).unwrap_err();
        assert!(e.message.contains("event path"), "{e}");
    }
}
