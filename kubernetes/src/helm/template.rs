//! A renderer for the subset of Go templates (with Helm's functions) that the shipped chart
//! uses, so `telepresence helm` needs no `helm` binary: text and `{{ }}` actions with `-` trim
//! markers and comments; `if`/`else if`/`else`, `range` (lists and maps, with `$i, $v :=`),
//! `with`, `define`/`include`/`template`, variables (`$x := …`, `$`); pipelines with `|`;
//! and the functions `default quote squote toYaml toJson nindent indent b64enc printf eq ne
//! not and or empty required fail hasKey kindIs trunc trimSuffix trimPrefix lower upper join list dict
//! int toString len sha256sum contains`. Values are JSON values (from the YAML values).
//! Anything outside the subset is a parse error naming the template and the construct.

use serde_json::{Map, Value};
use std::collections::HashMap;

#[derive(Debug, thiserror::Error)]
#[error("template {template}: {message}")]
pub struct TemplateError {
    pub template: String,
    pub message: String,
}

fn err<T>(template: &str, message: impl Into<String>) -> Result<T, TemplateError> {
    Err(TemplateError {
        template: template.into(),
        message: message.into(),
    })
}

#[derive(Debug, Clone)]
enum Node {
    Text(String),
    Action(Pipe),
    If(Vec<(Pipe, Vec<Node>)>, Vec<Node>),
    Range(Pipe, Vec<Node>, Vec<Node>),
    With(Pipe, Vec<Node>, Vec<Node>),
    Template(String, Option<Pipe>),
}

#[derive(Debug, Clone)]
struct Pipe {
    /// `$a := …` or `$i, $v := …` (range).
    decl: Vec<String>,
    cmds: Vec<Vec<Arg>>,
}

#[derive(Debug, Clone)]
enum Arg {
    /// `.a.b` (empty path = `.`).
    Field(Vec<String>),
    /// `$x.a.b` (`$` alone: name "").
    Var(String, Vec<String>),
    Str(String),
    Num(Value),
    Bool(bool),
    Nil,
    Func(String),
    Sub(Pipe, Vec<String>),
}

// ---------------------------------------------------------------------------------------------
// Lexing: text and actions, with trim markers applied.

enum Piece {
    Text(String),
    Action(String),
}

fn split(name: &str, src: &str) -> Result<Vec<Piece>, TemplateError> {
    let mut out = Vec::new();
    let mut rest = src;
    let mut trim_next = false;
    while let Some(start) = rest.find("{{") {
        let mut text = &rest[..start];
        if trim_next {
            text = text.trim_start();
        }
        let after = &rest[start + 2..];
        let trim_left = after.starts_with('-') && after[1..].starts_with(char::is_whitespace);
        if trim_left {
            text = text.trim_end();
        }
        if !text.is_empty() {
            out.push(Piece::Text(text.to_string()));
        }
        let body_start = if trim_left { 1 } else { 0 };
        let Some(end) = find_close(&after[body_start..]) else {
            return err(name, "unclosed action {{");
        };
        let mut body = &after[body_start..body_start + end];
        trim_next = false;
        if body.ends_with('-') && body[..body.len() - 1].ends_with(char::is_whitespace) {
            body = &body[..body.len() - 1];
            trim_next = true;
        }
        let body = body.trim();
        if !(body.starts_with("/*") && body.ends_with("*/")) {
            out.push(Piece::Action(body.to_string()));
        }
        rest = &after[body_start + end + 2..];
    }
    let text = if trim_next { rest.trim_start() } else { rest };
    if !text.is_empty() {
        out.push(Piece::Text(text.to_string()));
    }
    Ok(out)
}

/// Position of the `}}` closing an action, skipping string literals.
fn find_close(s: &str) -> Option<usize> {
    let b = s.as_bytes();
    let mut i = 0;
    while i < b.len() {
        match b[i] {
            b'"' => {
                i += 1;
                while i < b.len() && b[i] != b'"' {
                    if b[i] == b'\\' {
                        i += 1;
                    }
                    i += 1;
                }
            }
            b'`' => {
                i += 1;
                while i < b.len() && b[i] != b'`' {
                    i += 1;
                }
            }
            b'}' if b.get(i + 1) == Some(&b'}') => return Some(i),
            _ => {}
        }
        i += 1;
    }
    None
}

#[derive(Debug, Clone, PartialEq)]
enum Tok {
    Ident(String),
    Field(Vec<String>),
    Var(String, Vec<String>),
    Str(String),
    Num(Value),
    LParen,
    /// `)` followed by a field chain, e.g. `(index …).a`.
    RParen(Vec<String>),
    Pipe,
    Declare,
    Comma,
}

fn chain(s: &str) -> Vec<String> {
    s.split('.')
        .filter(|p| !p.is_empty())
        .map(str::to_string)
        .collect()
}

/// A cursor over the characters of one action, for [`tokens`].
struct Lexer {
    c: Vec<char>,
    i: usize,
}

impl Lexer {
    fn peek(&self, ahead: usize) -> Option<char> {
        self.c.get(self.i + ahead).copied()
    }

    /// Consumes the characters matching `keep`.
    fn take_while(&mut self, keep: impl Fn(char) -> bool) -> String {
        let start = self.i;
        while self.i < self.c.len() && keep(self.c[self.i]) {
            self.i += 1;
        }
        self.c[start..self.i].iter().collect()
    }

    /// A `"…"` string (the opening quote consumed) with `\n`, `\t` and `\x` escapes.
    fn quoted(&mut self) -> String {
        let mut v = String::new();
        while self.i < self.c.len() && self.c[self.i] != '"' {
            if self.c[self.i] == '\\' && self.i + 1 < self.c.len() {
                self.i += 1;
                v.push(match self.c[self.i] {
                    'n' => '\n',
                    't' => '\t',
                    other => other,
                });
            } else {
                v.push(self.c[self.i]);
            }
            self.i += 1;
        }
        self.i += 1;
        v
    }

    /// A `` `…` `` raw string (the opening backquote consumed).
    fn raw(&mut self) -> String {
        let v = self.take_while(|ch| ch != '`');
        self.i += 1;
        v
    }

    /// A number, possibly negative or decimal.
    fn number(&mut self, name: &str) -> Result<Value, TemplateError> {
        let start = self.i;
        self.i += 1;
        self.take_while(|ch| ch.is_ascii_digit() || ch == '.');
        let t: String = self.c[start..self.i].iter().collect();
        if let Ok(n) = t.parse::<i64>() {
            Ok(Value::from(n))
        } else if let Ok(f) = t.parse::<f64>() {
            Ok(Value::from(f))
        } else {
            err(name, format!("bad number {t:?}"))
        }
    }
}

fn word_char(ch: char) -> bool {
    ch.is_alphanumeric() || ch == '_' || ch == '.'
}

fn ident_char(ch: char) -> bool {
    ch.is_alphanumeric() || ch == '_'
}

fn tokens(name: &str, s: &str) -> Result<Vec<Tok>, TemplateError> {
    let mut l = Lexer {
        c: s.chars().collect(),
        i: 0,
    };
    let mut out = Vec::new();
    while let Some(ch) = l.peek(0) {
        if ch.is_whitespace() {
            l.i += 1;
            continue;
        }
        if ch == ':' && l.peek(1) == Some('=') {
            out.push(Tok::Declare);
            l.i += 2;
            continue;
        }
        if ch.is_ascii_digit() || (ch == '-' && l.peek(1).is_some_and(|d| d.is_ascii_digit())) {
            out.push(Tok::Num(l.number(name)?));
            continue;
        }
        if ch.is_alphabetic() || ch == '_' {
            out.push(Tok::Ident(l.take_while(ident_char)));
            continue;
        }
        l.i += 1;
        out.push(match ch {
            '"' => Tok::Str(l.quoted()),
            '`' => Tok::Str(l.raw()),
            '(' => Tok::LParen,
            ')' => Tok::RParen(chain(&l.take_while(word_char))),
            '|' => Tok::Pipe,
            ',' => Tok::Comma,
            '.' => Tok::Field(chain(&format!(".{}", l.take_while(word_char)))),
            '$' => {
                let var = l.take_while(ident_char);
                Tok::Var(var, chain(&l.take_while(word_char)))
            }
            _ => {
                return err(
                    name,
                    format!("unexpected character {ch:?} in {{{{ {s} }}}}"),
                )
            }
        });
    }
    Ok(out)
}

// ---------------------------------------------------------------------------------------------
// Parsing.

fn parse_pipe(name: &str, toks: &[Tok]) -> Result<Pipe, TemplateError> {
    let mut toks = toks;
    let mut decl = Vec::new();
    if let Some(pos) = toks.iter().position(|t| *t == Tok::Declare) {
        for t in &toks[..pos] {
            match t {
                Tok::Var(v, c) if c.is_empty() => decl.push(v.clone()),
                Tok::Comma => {}
                other => return err(name, format!("cannot declare {other:?}")),
            }
        }
        toks = &toks[pos + 1..];
    }
    let mut cmds = Vec::new();
    let mut cur = Vec::new();
    let mut i = 0;
    while i < toks.len() {
        match &toks[i] {
            Tok::Pipe => {
                cmds.push(std::mem::take(&mut cur));
            }
            Tok::LParen => {
                let mut depth = 1;
                let mut j = i + 1;
                while j < toks.len() {
                    match toks[j] {
                        Tok::LParen => depth += 1,
                        Tok::RParen(_) => {
                            depth -= 1;
                            if depth == 0 {
                                break;
                            }
                        }
                        _ => {}
                    }
                    j += 1;
                }
                let Some(Tok::RParen(after)) = toks.get(j) else {
                    return err(name, "unbalanced parentheses");
                };
                cur.push(Arg::Sub(parse_pipe(name, &toks[i + 1..j])?, after.clone()));
                i = j;
            }
            Tok::RParen(_) => return err(name, "unbalanced parentheses"),
            Tok::Field(c) => cur.push(Arg::Field(c.clone())),
            Tok::Var(v, c) => cur.push(Arg::Var(v.clone(), c.clone())),
            Tok::Str(s) => cur.push(Arg::Str(s.clone())),
            Tok::Num(n) => cur.push(Arg::Num(n.clone())),
            Tok::Ident(id) => cur.push(match id.as_str() {
                "true" => Arg::Bool(true),
                "false" => Arg::Bool(false),
                "nil" => Arg::Nil,
                _ => Arg::Func(id.clone()),
            }),
            Tok::Declare | Tok::Comma => return err(name, "unexpected := or ,"),
        }
        i += 1;
    }
    cmds.push(cur);
    if cmds.iter().any(Vec::is_empty) {
        return err(name, "empty command in pipeline");
    }
    Ok(Pipe { decl, cmds })
}

struct Parser<'a> {
    name: &'a str,
    pieces: Vec<Piece>,
    pos: usize,
    defines: HashMap<String, Vec<Node>>,
}

/// How a list of nodes ended.
enum Ending {
    Eof,
    End,
    Else(Option<Vec<Tok>>),
}

impl Parser<'_> {
    fn list(&mut self) -> Result<(Vec<Node>, Ending), TemplateError> {
        let mut nodes = Vec::new();
        while self.pos < self.pieces.len() {
            let piece = std::mem::replace(&mut self.pieces[self.pos], Piece::Text(String::new()));
            self.pos += 1;
            let action = match piece {
                Piece::Text(t) => {
                    nodes.push(Node::Text(t));
                    continue;
                }
                Piece::Action(a) => a,
            };
            let toks = tokens(self.name, &action)?;
            let keyword = match toks.first() {
                Some(Tok::Ident(k)) => k.as_str(),
                _ => "",
            };
            match keyword {
                "end" => return Ok((nodes, Ending::End)),
                "else" => return Ok((nodes, self.else_ending(&action, &toks[1..])?)),
                "if" => nodes.push(self.if_node(&toks[1..])?),
                "range" | "with" => nodes.push(self.range_or_with(keyword, &toks[1..])?),
                "define" => self.define(&toks)?,
                "template" => nodes.push(self.template_node(&toks)?),
                "block" | "break" | "continue" => {
                    return err(self.name, format!("{keyword} is not supported"))
                }
                _ => nodes.push(Node::Action(parse_pipe(self.name, &toks)?)),
            }
        }
        Ok((nodes, Ending::Eof))
    }

    /// `{{ else }}` or `{{ else if … }}` (`rest`: the tokens after `else`).
    fn else_ending(&self, action: &str, rest: &[Tok]) -> Result<Ending, TemplateError> {
        Ok(Ending::Else(match rest.first() {
            Some(Tok::Ident(k)) if k == "if" => Some(rest[1..].to_vec()),
            None => None,
            _ => return err(self.name, format!("unsupported {{{{ {action} }}}}")),
        }))
    }

    /// `{{ if … }}` with its `else if` branches, `else` and `end` (`cond`: the tokens after
    /// `if`).
    fn if_node(&mut self, cond: &[Tok]) -> Result<Node, TemplateError> {
        let mut branches = vec![];
        let mut cond = parse_pipe(self.name, cond)?;
        let else_ = loop {
            let (body, end) = self.list()?;
            branches.push((cond, body));
            match end {
                Ending::End => break Vec::new(),
                Ending::Else(Some(t)) => cond = parse_pipe(self.name, &t)?,
                Ending::Else(None) => {
                    let (body, end) = self.list()?;
                    if !matches!(end, Ending::End) {
                        return err(self.name, "if/else without end");
                    }
                    break body;
                }
                Ending::Eof => return err(self.name, "if without end"),
            }
        };
        Ok(Node::If(branches, else_))
    }

    /// `{{ range … }}` or `{{ with … }}`, with an optional `else`.
    fn range_or_with(&mut self, keyword: &str, pipe: &[Tok]) -> Result<Node, TemplateError> {
        let pipe = parse_pipe(self.name, pipe)?;
        let (body, end) = self.list()?;
        let else_ = match end {
            Ending::End => Vec::new(),
            Ending::Else(None) => {
                let (b, e) = self.list()?;
                if !matches!(e, Ending::End) {
                    return err(self.name, format!("{keyword} without end"));
                }
                b
            }
            _ => return err(self.name, format!("{keyword} without end")),
        };
        Ok(if keyword == "range" {
            Node::Range(pipe, body, else_)
        } else {
            Node::With(pipe, body, else_)
        })
    }

    /// `{{ define "name" }}…{{ end }}`: recorded in `defines`, renders nothing here.
    fn define(&mut self, toks: &[Tok]) -> Result<(), TemplateError> {
        let Some(Tok::Str(n)) = toks.get(1) else {
            return err(self.name, "define needs a name");
        };
        let (body, end) = self.list()?;
        if !matches!(end, Ending::End) {
            return err(self.name, format!("define {n:?} without end"));
        }
        self.defines.insert(n.clone(), body);
        Ok(())
    }

    /// `{{ template "name" [pipeline] }}`.
    fn template_node(&self, toks: &[Tok]) -> Result<Node, TemplateError> {
        let Some(Tok::Str(n)) = toks.get(1) else {
            return err(self.name, "template needs a name");
        };
        let arg = if toks.len() > 2 {
            Some(parse_pipe(self.name, &toks[2..])?)
        } else {
            None
        };
        Ok(Node::Template(n.clone(), arg))
    }
}

// ---------------------------------------------------------------------------------------------
// Evaluation.

/// A set of parsed templates (files) sharing their `define`s.
#[derive(Default)]
pub struct Templates {
    files: Vec<(String, Vec<Node>)>,
    defines: HashMap<String, Vec<Node>>,
}

struct Scope {
    root: Value,
    vars: Vec<(String, Value)>,
}

impl Templates {
    pub fn new() -> Self {
        Self::default()
    }

    /// Parses one file; its `define`s become available to all files.
    pub fn add(&mut self, name: &str, src: &str) -> Result<(), TemplateError> {
        let mut p = Parser {
            name,
            pieces: split(name, src)?,
            pos: 0,
            defines: HashMap::new(),
        };
        let (nodes, end) = p.list()?;
        if !matches!(end, Ending::Eof) {
            return err(name, "unexpected {{ end }} or {{ else }}");
        }
        self.defines.extend(p.defines);
        self.files.push((name.to_string(), nodes));
        Ok(())
    }

    pub fn names(&self) -> Vec<String> {
        self.files.iter().map(|(n, _)| n.clone()).collect()
    }

    /// Renders one file with `data` as `.` and `$`.
    pub fn render(&self, name: &str, data: &Value) -> Result<String, TemplateError> {
        let Some((_, nodes)) = self.files.iter().find(|(n, _)| n == name) else {
            return err(name, "no such template");
        };
        let mut out = String::new();
        let mut scope = Scope {
            root: data.clone(),
            vars: Vec::new(),
        };
        self.exec(name, nodes, data, &mut scope, &mut out)?;
        Ok(out)
    }

    fn exec(
        &self,
        t: &str,
        nodes: &[Node],
        dot: &Value,
        scope: &mut Scope,
        out: &mut String,
    ) -> Result<(), TemplateError> {
        let mark = scope.vars.len();
        for n in nodes {
            match n {
                Node::Text(s) => out.push_str(s),
                Node::Action(p) => {
                    let v = self.pipe(t, p, dot, scope)?;
                    if p.decl.is_empty() {
                        out.push_str(&print(&v));
                    }
                }
                Node::If(branches, else_) => {
                    let mut done = false;
                    for (cond, body) in branches {
                        if truthy(&self.pipe(t, cond, dot, scope)?) {
                            self.exec(t, body, dot, scope, out)?;
                            done = true;
                            break;
                        }
                    }
                    if !done {
                        self.exec(t, else_, dot, scope, out)?;
                    }
                }
                Node::With(p, body, else_) => {
                    let v = self.pipe(t, p, dot, scope)?;
                    if truthy(&v) {
                        self.exec(t, body, &v, scope, out)?;
                    } else {
                        self.exec(t, else_, dot, scope, out)?;
                    }
                }
                Node::Range(p, body, else_) => {
                    self.exec_range(t, (p, body, else_), dot, scope, out)?;
                }
                Node::Template(name, arg) => {
                    let data = match arg {
                        Some(p) => self.pipe(t, p, dot, scope)?,
                        None => Value::Null,
                    };
                    out.push_str(&self.include(t, name, &data, scope)?);
                }
            }
        }
        scope.vars.truncate(mark);
        Ok(())
    }

    /// `{{ range [$k, $v :=] … }}`: `body` once per item of the pipeline's list or map (in key
    /// order), or `else_` when there is none.
    fn exec_range(
        &self,
        t: &str,
        (p, body, else_): (&Pipe, &[Node], &[Node]),
        dot: &Value,
        scope: &mut Scope,
        out: &mut String,
    ) -> Result<(), TemplateError> {
        let bare = Pipe {
            decl: Vec::new(),
            cmds: p.cmds.clone(),
        };
        let v = self.pipe(t, &bare, dot, scope)?;
        let items: Vec<(Value, Value)> = match &v {
            Value::Array(a) => a
                .iter()
                .enumerate()
                .map(|(i, x)| (Value::from(i), x.clone()))
                .collect(),
            // Go ranges over maps in sorted key order; serde_json's map is sorted.
            Value::Object(m) => m
                .iter()
                .map(|(k, x)| (Value::from(k.clone()), x.clone()))
                .collect(),
            Value::Null => Vec::new(),
            other => return err(t, format!("cannot range over {other}")),
        };
        if items.is_empty() {
            self.exec(t, else_, dot, scope, out)?;
        }
        for (k, x) in items {
            let m = scope.vars.len();
            match p.decl.as_slice() {
                [v] => scope.vars.push((v.clone(), x.clone())),
                [kv, v] => {
                    scope.vars.push((kv.clone(), k));
                    scope.vars.push((v.clone(), x.clone()));
                }
                _ => {}
            }
            self.exec(t, body, &x, scope, out)?;
            scope.vars.truncate(m);
        }
        Ok(())
    }

    fn include(
        &self,
        t: &str,
        name: &str,
        data: &Value,
        scope: &Scope,
    ) -> Result<String, TemplateError> {
        let Some(body) = self.defines.get(name) else {
            return err(t, format!("no template named {name:?} is defined"));
        };
        let mut inner = Scope {
            root: scope.root.clone(),
            vars: Vec::new(),
        };
        let mut out = String::new();
        self.exec(t, body, data, &mut inner, &mut out)?;
        Ok(out)
    }

    fn pipe(
        &self,
        t: &str,
        p: &Pipe,
        dot: &Value,
        scope: &mut Scope,
    ) -> Result<Value, TemplateError> {
        let mut prev: Option<Value> = None;
        for cmd in &p.cmds {
            prev = Some(self.command(t, cmd, dot, scope, prev)?);
        }
        let v = prev.unwrap_or(Value::Null);
        if let Some(name) = p.decl.first() {
            if p.decl.len() == 1 {
                scope.vars.push((name.clone(), v.clone()));
            }
        }
        Ok(v)
    }

    fn arg(
        &self,
        t: &str,
        a: &Arg,
        dot: &Value,
        scope: &mut Scope,
    ) -> Result<Value, TemplateError> {
        Ok(match a {
            Arg::Field(c) => walk(dot, c),
            Arg::Var(name, c) => {
                let base = if name.is_empty() {
                    scope.root.clone()
                } else {
                    match scope.vars.iter().rev().find(|(n, _)| n == name) {
                        Some((_, v)) => v.clone(),
                        None => return err(t, format!("undefined variable ${name}")),
                    }
                };
                walk(&base, c)
            }
            Arg::Str(s) => Value::String(s.clone()),
            Arg::Num(n) => n.clone(),
            Arg::Bool(b) => Value::Bool(*b),
            Arg::Nil => Value::Null,
            Arg::Sub(p, c) => walk(&self.pipe(t, p, dot, scope)?, c),
            Arg::Func(f) => self.call(t, f, Vec::new(), scope)?,
        })
    }

    fn command(
        &self,
        t: &str,
        cmd: &[Arg],
        dot: &Value,
        scope: &mut Scope,
        piped: Option<Value>,
    ) -> Result<Value, TemplateError> {
        match &cmd[0] {
            Arg::Func(f) => {
                let mut args = Vec::new();
                // `and`/`or` short-circuit on their explicit arguments.
                for a in &cmd[1..] {
                    args.push(self.arg(t, a, dot, scope)?);
                }
                if let Some(p) = piped {
                    args.push(p);
                }
                self.call(t, f, args, scope)
            }
            single if cmd.len() == 1 && piped.is_none() => self.arg(t, single, dot, scope),
            _ => err(
                t,
                "a pipeline stage that is not a function takes no arguments",
            ),
        }
    }

    /// Calls template function `f`: `include` here (it renders another template), the others
    /// through the families of [`Call`].
    fn call(&self, t: &str, f: &str, a: Vec<Value>, scope: &Scope) -> Result<Value, TemplateError> {
        let c = Call { t, f, a };
        if f == "include" {
            c.need(2)?;
            return Ok(Value::String(self.include(t, &c.s(0), &c.a[1], scope)?));
        }
        for family in [Call::logic, Call::format, Call::strings, Call::collections] {
            if let Some(v) = family(&c)? {
                return Ok(v);
            }
        }
        err(t, format!("function {f:?} is not supported"))
    }
}

/// One call of a template function: the template (for errors), the function's name and its
/// arguments (a piped value last). Each family answers `None` for a function it does not have.
struct Call<'a> {
    t: &'a str,
    f: &'a str,
    a: Vec<Value>,
}

type Answer = Result<Option<Value>, TemplateError>;

impl Call<'_> {
    /// Fails unless at least `n` arguments are given.
    fn need(&self, n: usize) -> Result<(), TemplateError> {
        if self.a.len() < n {
            err(
                self.t,
                format!("{} needs {n} argument(s), got {}", self.f, self.a.len()),
            )
        } else {
            Ok(())
        }
    }

    /// Argument `i` printed.
    fn s(&self, i: usize) -> String {
        print(&self.a[i])
    }

    /// Truth and comparison: default, eq, ne, not, and, or, empty, required, fail.
    fn logic(&self) -> Answer {
        let a = &self.a;
        Ok(Some(match self.f {
            "default" => {
                self.need(1)?;
                match a.get(1) {
                    Some(v) if truthy(v) => v.clone(),
                    _ => a[0].clone(),
                }
            }
            "eq" => {
                self.need(2)?;
                Value::Bool(a[1..].iter().any(|x| loose_eq(&a[0], x)))
            }
            "ne" => {
                self.need(2)?;
                Value::Bool(!loose_eq(&a[0], &a[1]))
            }
            "not" | "empty" => {
                self.need(1)?;
                Value::Bool(!truthy(&a[0]))
            }
            "and" => a
                .iter()
                .find(|v| !truthy(v))
                .or(a.last())
                .cloned()
                .unwrap_or(Value::Bool(true)),
            "or" => a
                .iter()
                .find(|v| truthy(v))
                .or(a.last())
                .cloned()
                .unwrap_or(Value::Bool(false)),
            "required" => {
                self.need(2)?;
                if a[1].is_null() || a[1] == Value::String(String::new()) {
                    return err(self.t, self.s(0));
                }
                a[1].clone()
            }
            "fail" => {
                self.need(1)?;
                return err(self.t, self.s(0));
            }
            _ => return Ok(None),
        }))
    }

    /// Rendering values as text: quote, squote, toYaml, toJson, indent, nindent, b64enc,
    /// sha256sum, printf, toString.
    fn format(&self) -> Answer {
        let a = &self.a;
        let joined = |each: fn(String) -> String| {
            Value::String(
                a.iter()
                    .map(|v| each(print(v)))
                    .collect::<Vec<_>>()
                    .join(" "),
            )
        };
        Ok(Some(match self.f {
            "quote" => joined(|p| format!("{p:?}")),
            "squote" => joined(|p| format!("'{p}'")),
            "toYaml" => {
                self.need(1)?;
                if a[0].is_null() {
                    Value::String("null".into())
                } else {
                    let y = yaml_serde::to_string(&a[0]).map_err(|e| TemplateError {
                        template: self.t.into(),
                        message: e.to_string(),
                    })?;
                    Value::String(y.trim_end_matches('\n').to_string())
                }
            }
            "toJson" => {
                self.need(1)?;
                Value::String(a[0].to_string())
            }
            "indent" | "nindent" => {
                self.need(2)?;
                let pad = " ".repeat(to_int(&a[0]).max(0) as usize);
                let body = self
                    .s(1)
                    .split('\n')
                    .map(|l| format!("{pad}{l}"))
                    .collect::<Vec<_>>()
                    .join("\n");
                Value::String(if self.f == "nindent" {
                    format!("\n{body}")
                } else {
                    body
                })
            }
            "b64enc" => {
                self.need(1)?;
                use base64::Engine as _;
                Value::String(base64::engine::general_purpose::STANDARD.encode(self.s(0)))
            }
            "sha256sum" => {
                self.need(1)?;
                use sha2::Digest as _;
                Value::String(hex::encode(sha2::Sha256::digest(self.s(0).as_bytes())))
            }
            "printf" => {
                self.need(1)?;
                Value::String(printf(&self.s(0), &a[1..]))
            }
            "toString" => {
                self.need(1)?;
                Value::String(self.s(0))
            }
            _ => return Ok(None),
        }))
    }

    /// String functions (the string operated on comes last, as piped): trunc, trimSuffix,
    /// trimPrefix, contains, lower, upper.
    fn strings(&self) -> Answer {
        let n = match self.f {
            "trunc" | "trimSuffix" | "trimPrefix" | "contains" => 2,
            "lower" | "upper" => 1,
            _ => return Ok(None),
        };
        self.need(n)?;
        Ok(Some(match self.f {
            "trunc" => {
                let n = to_int(&self.a[0]).max(0) as usize;
                Value::String(self.s(1).chars().take(n).collect())
            }
            "trimSuffix" => {
                let v = self.s(1);
                Value::String(v.strip_suffix(self.s(0).as_str()).unwrap_or(&v).to_string())
            }
            "trimPrefix" => {
                let v = self.s(1);
                Value::String(v.strip_prefix(self.s(0).as_str()).unwrap_or(&v).to_string())
            }
            "contains" => Value::Bool(self.s(1).contains(&self.s(0))),
            "lower" => Value::String(self.s(0).to_lowercase()),
            _ => Value::String(self.s(0).to_uppercase()),
        }))
    }

    /// Numbers, lists and dicts: int, len, hasKey, join, list, dict.
    fn collections(&self) -> Answer {
        let a = &self.a;
        Ok(Some(match self.f {
            "int" => {
                self.need(1)?;
                Value::from(to_int(&a[0]))
            }
            "len" => {
                self.need(1)?;
                Value::from(match &a[0] {
                    Value::Array(x) => x.len(),
                    Value::Object(m) => m.len(),
                    Value::String(x) => x.len(),
                    _ => 0,
                })
            }
            "kindIs" => {
                self.need(2)?;
                let kind = match &a[1] {
                    Value::String(_) => "string",
                    Value::Object(_) => "map",
                    Value::Array(_) => "slice",
                    Value::Bool(_) => "bool",
                    Value::Number(n) if n.is_f64() => "float64",
                    Value::Number(_) => "int64",
                    Value::Null => "invalid",
                };
                Value::Bool(self.s(0) == kind)
            }
            "hasKey" => {
                self.need(2)?;
                Value::Bool(a[0].as_object().is_some_and(|m| m.contains_key(&self.s(1))))
            }
            "join" => {
                self.need(2)?;
                let items = a[1].as_array().cloned().unwrap_or_default();
                Value::String(items.iter().map(print).collect::<Vec<_>>().join(&self.s(0)))
            }
            "list" => Value::Array(a.clone()),
            "dict" => {
                let mut m = Map::new();
                for pair in a.chunks(2) {
                    m.insert(print(&pair[0]), pair.get(1).cloned().unwrap_or(Value::Null));
                }
                Value::Object(m)
            }
            _ => return Ok(None),
        }))
    }
}

/// A value as a template integer (numbers truncated, numeric strings parsed, else 0).
fn to_int(v: &Value) -> i64 {
    match v {
        Value::Number(n) => n.as_i64().unwrap_or(n.as_f64().unwrap_or(0.0) as i64),
        Value::String(s) => s.parse().unwrap_or(0),
        Value::Bool(b) => i64::from(*b),
        _ => 0,
    }
}

fn walk(v: &Value, chain: &[String]) -> Value {
    let mut cur = v;
    for k in chain {
        match cur.get(k) {
            Some(x) => cur = x,
            None => return Value::Null,
        }
    }
    cur.clone()
}

/// Go's notion of truth: false, 0, nil, and empty strings/lists/maps are false.
pub fn truthy(v: &Value) -> bool {
    match v {
        Value::Null => false,
        Value::Bool(b) => *b,
        Value::Number(n) => n.as_f64().is_some_and(|f| f != 0.0),
        Value::String(s) => !s.is_empty(),
        Value::Array(a) => !a.is_empty(),
        Value::Object(m) => !m.is_empty(),
    }
}

fn loose_eq(a: &Value, b: &Value) -> bool {
    match (a, b) {
        (Value::Number(x), Value::Number(y)) => x.as_f64() == y.as_f64(),
        _ => a == b,
    }
}

/// How a value prints in template output (nil prints nothing, as Helm does).
pub fn print(v: &Value) -> String {
    match v {
        Value::Null => String::new(),
        Value::String(s) => s.clone(),
        Value::Bool(b) => b.to_string(),
        Value::Number(n) => match (n.as_i64(), n.as_f64()) {
            (Some(i), _) => i.to_string(),
            (None, Some(f)) if f.fract() == 0.0 && f.abs() < 1e15 => format!("{}", f as i64),
            _ => n.to_string(),
        },
        other => other.to_string(),
    }
}

fn printf(fmt: &str, args: &[Value]) -> String {
    let mut out = String::new();
    let mut it = args.iter();
    let mut chars = fmt.chars().peekable();
    while let Some(c) = chars.next() {
        if c != '%' {
            out.push(c);
            continue;
        }
        match chars.next() {
            Some('%') => out.push('%'),
            Some('q') => out.push_str(&format!("{:?}", it.next().map(print).unwrap_or_default())),
            Some(_) => out.push_str(&it.next().map(print).unwrap_or_default()),
            None => out.push('%'),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn render(src: &str, data: Value) -> String {
        let mut t = Templates::new();
        t.add("t", src).unwrap();
        t.render("t", &data).unwrap()
    }

    #[test]
    fn actions_trim_and_pipelines() {
        let d = json!({"Values": {"name": "tm", "n": 3, "on": true, "list": ["a", "b"], "m": {"y": 2, "x": 1}, "empty": ""}});
        assert_eq!(
            render("a: {{ .Values.name | quote }}", d.clone()),
            "a: \"tm\""
        );
        assert_eq!(render("x\n  {{- .Values.n }}\n", d.clone()), "x3\n");
        assert_eq!(
            render("{{ .Values.missing | default \"d\" }}", d.clone()),
            "d"
        );
        assert_eq!(render("{{ .Values.empty | default 7 }}", d.clone()), "7");
        assert_eq!(
            render("{{ if .Values.on }}yes{{ else }}no{{ end }}", d.clone()),
            "yes"
        );
        assert_eq!(
            render(
                "{{ if not .Values.on }}1{{ else if eq .Values.n 3 }}2{{ else }}3{{ end }}",
                d.clone()
            ),
            "2"
        );
        assert_eq!(
            render(
                "{{ range $i, $v := .Values.list }}{{ $i }}={{ $v }};{{ end }}",
                d.clone()
            ),
            "0=a;1=b;"
        );
        assert_eq!(
            render(
                "{{ range $k, $v := .Values.m }}{{ $k }}{{ $v }}{{ end }}",
                d.clone()
            ),
            "x1y2"
        );
        assert_eq!(
            render(
                "{{ with .Values.m }}{{ .x }}{{ $.Values.name }}{{ end }}",
                d.clone()
            ),
            "1tm"
        );
        assert_eq!(
            render("m:{{ toYaml .Values.m | nindent 2 }}", d.clone()),
            "m:\n  x: 1\n  y: 2"
        );
        assert_eq!(
            render(
                "{{/* note */}}{{ printf \"%s-%d\" .Values.name .Values.n | upper }}",
                d.clone()
            ),
            "TM-3"
        );
        assert_eq!(
            render(
                "{{ $x := .Values.name }}{{ $x }}{{ (.Values.m).y }}",
                d.clone()
            ),
            "tm2"
        );
        assert_eq!(
            render(
                "{{ define \"n\" }}<{{ .Values.name }}>{{ end }}{{ include \"n\" . | quote }}",
                d
            ),
            "\"<tm>\""
        );
    }

    #[test]
    fn errors_name_the_template() {
        let mut t = Templates::new();
        let e = t.add("a.yaml", "{{ if .x }}").unwrap_err().to_string();
        assert!(e.contains("a.yaml") && e.contains("without end"), "{e}");
        t.add("b.yaml", "{{ required \"set image.tag\" .Values.tag }}")
            .unwrap();
        let e = t.render("b.yaml", &json!({"Values": {}})).unwrap_err();
        assert!(e.to_string().contains("set image.tag"));
        assert!(Templates::new().add("c", "{{ frob 1 }}").is_ok());
        let mut t = Templates::new();
        t.add("c", "{{ frob 1 }}").unwrap();
        assert!(t
            .render("c", &json!({}))
            .unwrap_err()
            .to_string()
            .contains("frob"));
    }
}
