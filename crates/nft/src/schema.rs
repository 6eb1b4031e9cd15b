//! Typed structs for the part of libnftables' JSON schema (libnftables-json(5)) ward emits.
//! Serialising these is the only way ward produces a ruleset: no string templating.
//!
//! Written here rather than taken from the `nftables` crate because that crate's set and map
//! objects cannot carry the set-level `stmt` (`counter`) that per-element counters need.

use serde::Serialize;

/// `{"nftables": [ command, ... ]}`: one batch, committed by the kernel as one transaction.
#[derive(Clone, Debug, Default, Serialize)]
pub struct Batch {
    pub nftables: Vec<Command>,
}

#[derive(Clone, Debug, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Command {
    Add(Object),
    Delete(Object),
    Flush(Object),
}

#[derive(Clone, Debug, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Object {
    Table(Table),
    Chain(Chain),
    Rule(Rule),
    Set(Set),
    Map(Set),
    Element(Element),
}

#[derive(Clone, Debug, Serialize)]
pub struct Table {
    pub family: &'static str,
    pub name: String,
}

#[derive(Clone, Debug, Serialize)]
pub struct Chain {
    pub family: &'static str,
    pub table: String,
    pub name: String,
    #[serde(flatten, skip_serializing_if = "Option::is_none")]
    pub base: Option<BaseChain>,
}

/// The hook of a base chain; regular chains (jump targets) have none.
#[derive(Clone, Debug, Serialize)]
pub struct BaseChain {
    #[serde(rename = "type")]
    pub kind: &'static str,
    pub hook: &'static str,
    pub prio: i32,
    pub policy: &'static str,
}

#[derive(Clone, Debug, Serialize)]
pub struct Rule {
    pub family: &'static str,
    pub table: String,
    pub chain: String,
    pub expr: Vec<Stmt>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub comment: Option<String>,
}

/// A named set, or a map when `map` is set.
#[derive(Clone, Debug, Serialize, Hash)]
pub struct Set {
    pub family: &'static str,
    pub table: String,
    pub name: String,
    #[serde(rename = "type")]
    pub key_type: KeyType,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub map: Option<&'static str>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub flags: Vec<&'static str>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub elem: Vec<Expr>,
    /// Statements every element carries; `[counter]` gives each element its own counter.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub stmt: Vec<Stmt>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub comment: Option<String>,
}

#[derive(Clone, Debug, Serialize, Hash)]
#[serde(untagged)]
pub enum KeyType {
    Single(&'static str),
    Concat(Vec<&'static str>),
}

/// Elements added to (or deleted from) an existing set.
#[derive(Clone, Debug, Serialize)]
pub struct Element {
    pub family: &'static str,
    pub table: String,
    pub name: String,
    pub elem: Vec<Expr>,
}

/// `null` in JSON: the payload of argument-less statements such as `{"accept": null}`.
#[derive(Clone, Copy, Debug, Serialize, Hash)]
pub struct Null;

impl Null {
    fn none() -> Option<Null> {
        None
    }
}

#[derive(Clone, Debug, Serialize, Hash)]
#[serde(untagged)]
pub enum Expr {
    Str(String),
    Num(u64),
    /// A map element: `[key, value]`.
    Pair(Box<(Expr, Expr)>),
    /// Flags tested together, `ct state established,related`: a bitmask, not a set.
    List(Vec<Expr>),
    Named(Named),
    Verdict(Verdict),
}

#[derive(Clone, Debug, Serialize, Hash)]
#[serde(rename_all = "lowercase")]
pub enum Named {
    Payload {
        protocol: &'static str,
        field: &'static str,
    },
    Meta {
        key: &'static str,
    },
    Ct {
        key: &'static str,
    },
    Prefix {
        addr: String,
        len: u8,
    },
    Range([Box<Expr>; 2]),
    Set(Vec<Expr>),
    Concat(Vec<Expr>),
    Elem {
        val: Box<Expr>,
        #[serde(skip_serializing_if = "Option::is_none")]
        comment: Option<String>,
    },
}

#[derive(Clone, Debug, Serialize, Hash)]
#[serde(rename_all = "lowercase")]
pub enum Verdict {
    Accept(Option<Null>),
    Drop(Option<Null>),
    Return(Option<Null>),
    Jump { target: String },
}

impl Verdict {
    pub fn accept() -> Verdict {
        Verdict::Accept(Null::none())
    }
    pub fn drop() -> Verdict {
        Verdict::Drop(Null::none())
    }
    pub fn jump(target: impl Into<String>) -> Verdict {
        Verdict::Jump {
            target: target.into(),
        }
    }
}

#[derive(Clone, Debug, Serialize, Hash)]
#[serde(rename_all = "lowercase")]
pub enum Stmt {
    Match {
        op: &'static str,
        left: Expr,
        right: Expr,
    },
    Counter(Option<Null>),
    Vmap {
        key: Expr,
        data: Expr,
    },
    Limit {
        rate: u32,
        per: &'static str,
        burst: u32,
    },
    Log {
        prefix: String,
        group: u16,
    },
    Masquerade(Option<Null>),
    Snat(Nat),
    Dnat(Nat),
    /// To the primary address of the interface the packet came in on (only `port` is set).
    Redirect(Nat),
    #[serde(untagged)]
    Verdict(Verdict),
}

#[derive(Clone, Debug, Serialize, Hash)]
pub struct Nat {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub addr: Option<Expr>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub family: Option<&'static str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub port: Option<Expr>,
}

// Small constructors keep the compiler readable.

pub fn s(v: impl Into<String>) -> Expr {
    Expr::Str(v.into())
}

pub fn num(v: u64) -> Expr {
    Expr::Num(v)
}

pub fn payload(protocol: &'static str, field: &'static str) -> Expr {
    Expr::Named(Named::Payload { protocol, field })
}

pub fn meta(key: &'static str) -> Expr {
    Expr::Named(Named::Meta { key })
}

pub fn ct(key: &'static str) -> Expr {
    Expr::Named(Named::Ct { key })
}

pub fn range(lo: u64, hi: u64) -> Expr {
    Expr::Named(Named::Range([Box::new(num(lo)), Box::new(num(hi))]))
}

pub fn set(items: Vec<Expr>) -> Expr {
    Expr::Named(Named::Set(items))
}

pub fn matches(left: Expr, right: Expr) -> Stmt {
    Stmt::Match {
        op: "==",
        left,
        right,
    }
}

pub fn not_matches(left: Expr, right: Expr) -> Stmt {
    Stmt::Match {
        op: "!=",
        left,
        right,
    }
}

pub fn counter() -> Stmt {
    Stmt::Counter(Null::none())
}

pub fn verdict(v: Verdict) -> Stmt {
    Stmt::Verdict(v)
}
