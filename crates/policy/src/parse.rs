//! YAML text → a small node tree that remembers where every key and value stood.
//! Bounded on hostile input: nesting depth, alias expansion and document count are capped.

use crate::model::Span;
use std::collections::HashMap;
use std::rc::Rc;
use yaml_rust2::parser::{Event, Parser};
use yaml_rust2::scanner::{Marker, TScalarStyle};

/// Deepest nesting of lists / mappings accepted; the schema itself needs 4.
pub const MAX_DEPTH: usize = 64;
/// Extra nodes that aliases may add in total. Aliases are shared, never copied, but every
/// consumer walks the expanded tree, so the expanded size is what must stay bounded.
pub const MAX_ALIAS_NODES: u64 = 1_000_000;

#[derive(Debug)]
pub(crate) struct Node {
    pub span: Span,
    pub kind: Kind,
    /// Number of nodes in the expanded subtree (saturating).
    weight: u64,
    /// Nesting height of the expanded subtree (a scalar is 0).
    height: usize,
}

#[derive(Debug)]
pub(crate) enum Kind {
    /// `~`, `null`, or a missing value (`key:` with nothing after it).
    Null,
    Scalar {
        text: String,
        /// Plain (unquoted): only plain scalars can be booleans or null.
        plain: bool,
    },
    Seq(Vec<Rc<Node>>),
    Map(Vec<Entry>),
}

#[derive(Debug)]
pub(crate) struct Entry {
    pub key: String,
    pub key_span: Span,
    pub value: Rc<Node>,
}

impl Node {
    /// Short description for "expected X, got Y" messages.
    pub fn describe(&self) -> String {
        match &self.kind {
            Kind::Null => "an empty value".to_string(),
            Kind::Seq(_) => "a list".to_string(),
            Kind::Map(_) => "a mapping".to_string(),
            Kind::Scalar { text, .. } => {
                // Messages quote what was written, but never a whole hostile megabyte.
                const MAX: usize = 64;
                if text.is_empty() {
                    "an empty string".to_string()
                } else if text.chars().count() > MAX {
                    let cut: String = text.chars().take(MAX).collect();
                    format!("{cut}…")
                } else {
                    text.clone()
                }
            }
        }
    }
}

/// A YAML-level failure: the text is not YAML, or it exceeds a bound.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct ParseError {
    pub span: Span,
    pub path: String,
    pub message: String,
}

pub(crate) fn span_of(m: &Marker) -> Span {
    // yaml-rust2 lines are 1-based but columns are 0-based.
    Span {
        line: u32::try_from(m.line()).unwrap_or(u32::MAX),
        col: u32::try_from(m.col().saturating_add(1)).unwrap_or(u32::MAX),
    }
}

enum Frame {
    Seq {
        span: Span,
        anchor: usize,
        items: Vec<Rc<Node>>,
    },
    Map {
        span: Span,
        anchor: usize,
        entries: Vec<Entry>,
        pending_key: Option<(String, Span)>,
    },
}

struct Builder<'h> {
    stack: Vec<Frame>,
    anchors: HashMap<usize, Rc<Node>>,
    alias_nodes: u64,
    root: Option<Rc<Node>>,
    on_rule: OnRule<'h>,
    streamed: bool,
    /// What stands in the tree for a rule `on_rule` has taken.
    taken: Rc<Node>,
}

/// Takes each item of the top-level `rules` list as soon as it is complete (with its index).
type OnRule<'h> = &'h mut dyn FnMut(usize, &Node);

/// Parses one YAML document. `Ok(None)` for an empty stream (no document at all).
///
/// Each item of the top-level `rules` list goes to `on_rule` as soon as it is complete, and
/// a null takes its place: a policy of many rules never holds all their nodes at once. Also
/// returns whether any rule was handed over. A `rules` list with an anchor is kept whole, as
/// an alias may use it elsewhere.
pub(crate) fn parse_yaml(
    text: &str,
    on_rule: OnRule<'_>,
) -> Result<(Option<Rc<Node>>, bool), ParseError> {
    let mut parser = Parser::new_from_str(text);
    let mut b = Builder {
        stack: Vec::new(),
        anchors: HashMap::new(),
        alias_nodes: 0,
        root: None,
        on_rule,
        streamed: false,
        taken: Rc::new(Node {
            span: Span { line: 1, col: 1 },
            kind: Kind::Null,
            weight: 1,
            height: 0,
        }),
    };
    let mut documents = 0usize;
    loop {
        let (event, mark) = parser.next_token().map_err(|e| ParseError {
            span: span_of(e.marker()),
            path: String::new(),
            message: format!("invalid YAML: {}", e.info()),
        })?;
        let span = span_of(&mark);
        match event {
            Event::StreamEnd => break,
            Event::Nothing | Event::StreamStart | Event::DocumentEnd => {}
            Event::DocumentStart => {
                documents += 1;
                if documents > 1 {
                    return Err(b.error(span, "only one YAML document is allowed".into()));
                }
            }
            Event::Scalar(text, style, anchor, tag) => {
                if let Some(tag) = tag {
                    return Err(b.error(span, unsupported_tag(&tag.handle, &tag.suffix)));
                }
                let plain = style == TScalarStyle::Plain;
                let null = plain && matches!(text.as_str(), "" | "~" | "null" | "Null" | "NULL");
                // A mapping key needs no node of its own (unless an alias may refer to it).
                if anchor == 0 {
                    if let Some(Frame::Map {
                        pending_key: pending @ None,
                        ..
                    }) = b.stack.last_mut()
                    {
                        *pending = Some((if null { String::new() } else { text }, span));
                        continue;
                    }
                }
                let kind = if null {
                    Kind::Null
                } else {
                    Kind::Scalar { text, plain }
                };
                let node = Rc::new(Node {
                    span,
                    kind,
                    weight: 1,
                    height: 0,
                });
                b.finish(node, anchor)?;
            }
            Event::Alias(id) => {
                let Some(target) = b.anchors.get(&id).cloned() else {
                    return Err(b.error(span, "alias to an unknown anchor".into()));
                };
                b.alias_nodes = b.alias_nodes.saturating_add(target.weight);
                if b.alias_nodes > MAX_ALIAS_NODES {
                    return Err(b.error(
                        span,
                        format!("alias expansion exceeds {MAX_ALIAS_NODES} nodes"),
                    ));
                }
                if b.stack.len() + target.height > MAX_DEPTH {
                    return Err(b.error(
                        span,
                        format!("nesting deeper than {MAX_DEPTH} levels (through an alias)"),
                    ));
                }
                b.finish(target, 0)?;
            }
            Event::SequenceStart(anchor, tag) => {
                b.open(span, tag.as_ref(), |span| Frame::Seq {
                    span,
                    anchor,
                    items: Vec::new(),
                })?;
            }
            Event::MappingStart(anchor, tag) => {
                b.open(span, tag.as_ref(), |span| Frame::Map {
                    span,
                    anchor,
                    entries: Vec::new(),
                    pending_key: None,
                })?;
            }
            Event::SequenceEnd | Event::MappingEnd => {
                let Some(frame) = b.stack.pop() else {
                    return Err(b.error(span, "invalid YAML: unbalanced collection end".into()));
                };
                let (node, anchor) = close(frame);
                b.finish(node, anchor)?;
            }
        }
    }
    Ok((b.root, b.streamed))
}

fn earlier(a: Span, b: Span) -> Span {
    if (a.line, a.col) <= (b.line, b.col) {
        a
    } else {
        b
    }
}

fn unsupported_tag(handle: &str, suffix: &str) -> String {
    // The parser resolves `!!` to the standard prefix; show it the way it was written.
    let handle = if handle == "tag:yaml.org,2002:" {
        "!!"
    } else {
        handle
    };
    format!("YAML tags ({handle}{suffix}) are not supported; write the plain value")
}

/// Turns a finished collection into a node, computing its expanded size and height.
fn close(frame: Frame) -> (Rc<Node>, usize) {
    match frame {
        Frame::Seq {
            span,
            anchor,
            items,
        } => {
            let weight = items
                .iter()
                .fold(1u64, |acc, n| acc.saturating_add(n.weight));
            let height = 1 + items.iter().map(|n| n.height).max().unwrap_or(0);
            let node = Node {
                span,
                kind: Kind::Seq(items),
                weight,
                height,
            };
            (Rc::new(node), anchor)
        }
        Frame::Map {
            span,
            anchor,
            entries,
            ..
        } => {
            let weight = entries.iter().fold(1u64, |acc, e| {
                acc.saturating_add(e.value.weight).saturating_add(1)
            });
            let height = 1 + entries.iter().map(|e| e.value.height).max().unwrap_or(0);
            // A block mapping's start marker lands after its first key; the first key is
            // where a reader looks for it (`- id: ...`).
            let span = entries.first().map_or(span, |e| earlier(e.key_span, span));
            let node = Node {
                span,
                kind: Kind::Map(entries),
                weight,
                height,
            };
            (Rc::new(node), anchor)
        }
    }
}

impl Builder<'_> {
    fn open(
        &mut self,
        span: Span,
        tag: Option<&yaml_rust2::parser::Tag>,
        frame: impl FnOnce(Span) -> Frame,
    ) -> Result<(), ParseError> {
        if let Some(tag) = tag {
            return Err(self.error(span, unsupported_tag(&tag.handle, &tag.suffix)));
        }
        if self.stack.len() >= MAX_DEPTH {
            return Err(self.error(span, format!("nesting deeper than {MAX_DEPTH} levels")));
        }
        self.stack.push(frame(span));
        Ok(())
    }

    /// Attaches a completed node to its parent (or makes it the root).
    fn finish(&mut self, mut node: Rc<Node>, anchor: usize) -> Result<(), ParseError> {
        if anchor != 0 {
            self.anchors.insert(anchor, Rc::clone(&node));
        }
        if self.is_rule_item() {
            if let Some(Frame::Seq { items, .. }) = self.stack.last_mut() {
                (self.on_rule)(items.len(), &node);
                items.push(Rc::clone(&self.taken));
                self.streamed = true;
                return Ok(());
            }
        }
        match self.stack.last_mut() {
            None => self.root = Some(node),
            Some(Frame::Seq { items, .. }) => items.push(node),
            Some(Frame::Map {
                entries,
                pending_key,
                ..
            }) => match pending_key.take() {
                None => {
                    let key = match &node.kind {
                        Kind::Scalar { text, .. } => text.clone(),
                        Kind::Null => String::new(),
                        Kind::Seq(_) | Kind::Map(_) => {
                            let span = node.span;
                            return Err(
                                self.error(span, "mapping keys must be plain strings".into())
                            );
                        }
                    };
                    *pending_key = Some((key, node.span));
                }
                Some((key, key_span)) => {
                    // A missing value is reported by the parser at the next token, often on the
                    // next line; point at the key instead.
                    if matches!(node.kind, Kind::Null) && Rc::strong_count(&node) == 1 {
                        if let Some(n) = Rc::get_mut(&mut node) {
                            if key_span.line != n.span.line || n.span.col < key_span.col {
                                n.span = key_span;
                            }
                        }
                    }
                    entries.push(Entry {
                        key,
                        key_span,
                        value: node,
                    });
                }
            },
        }
        Ok(())
    }

    /// Whether the node being finished is an item of the top-level `rules` list (one
    /// without an anchor).
    fn is_rule_item(&self) -> bool {
        matches!(
            self.stack.as_slice(),
            [Frame::Map { pending_key: Some((key, _)), .. }, Frame::Seq { anchor: 0, .. }]
                if key == "rules"
        )
    }

    /// An error at `span`, with the key path of the collection being built.
    fn error(&self, span: Span, message: String) -> ParseError {
        let mut path = String::new();
        for frame in &self.stack {
            match frame {
                Frame::Seq { items, .. } => path.push_str(&format!("[{}]", items.len())),
                Frame::Map { pending_key, .. } => {
                    if let Some((k, _)) = pending_key {
                        if !path.is_empty() {
                            path.push('.');
                        }
                        path.push_str(k);
                    }
                }
            }
        }
        ParseError {
            span,
            path,
            message,
        }
    }
}
