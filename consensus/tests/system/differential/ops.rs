//! The operations of the sequence, and how each is sent through etcd-client.

use std::fmt;

use etcd_client::{
    Compare, CompareOp, DeleteOptions, GetOptions, PutOptions, SortOrder, SortTarget, Txn, TxnOp,
};

/// Bytes shown readably in an operation or an answer.
#[derive(Clone, PartialEq, Eq, Default)]
pub struct B(pub Vec<u8>);

impl fmt::Debug for B {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.0.len() > 64 {
            return write!(f, "<{} bytes>", self.0.len());
        }
        let s: String = self
            .0
            .iter()
            .flat_map(|b| std::ascii::escape_default(*b))
            .map(char::from)
            .collect();
        write!(f, "\"{s}\"")
    }
}

impl From<&str> for B {
    fn from(s: &str) -> B {
        B(s.as_bytes().to_vec())
    }
}

#[derive(Clone, Debug)]
pub enum End {
    Single,
    Prefix,
    FromKey,
    Plain(B),
    All,
}

#[derive(Clone, Debug)]
pub struct RangeSpec {
    pub key: B,
    pub end: End,
    pub limit: i64,
    pub revision: i64,
    /// (target, order) as etcd's numbers; None leaves both unset.
    pub sort: Option<(i32, i32)>,
    pub serializable: bool,
    pub keys_only: bool,
    pub count_only: bool,
    pub min_mod: i64,
    pub max_mod: i64,
    pub min_create: i64,
    pub max_create: i64,
}

#[derive(Clone, Debug)]
pub struct PutSpec {
    pub key: B,
    pub value: B,
    pub lease: i64,
    pub prev_kv: bool,
    pub ignore_value: bool,
    pub ignore_lease: bool,
}

#[derive(Clone, Debug)]
pub struct DeleteSpec {
    pub key: B,
    pub end: End,
    pub prev_kv: bool,
}

#[derive(Clone, Debug)]
pub enum Target {
    Version(i64),
    Create(i64),
    Mod(i64),
    Value(B),
    Lease(i64),
}

#[derive(Clone, Debug)]
pub struct CompareSpec {
    pub key: B,
    pub end: End,
    pub target: Target,
    pub result: i32,
}

#[derive(Clone, Debug)]
pub struct RawCompare {
    pub key: B,
    pub range_end: B,
    pub result: i32,
    pub target: i32,
    /// The `target_union` member set (4 version .. 8 lease), with its number (an index into
    /// `VALUES` for a value).
    pub union: Option<(u32, i64)>,
}

#[derive(Clone, Debug)]
pub enum OpSpec {
    Get(RangeSpec),
    Put(PutSpec),
    Delete(DeleteSpec),
    Txn(TxnSpec),
}

#[derive(Clone, Debug, Default)]
pub struct TxnSpec {
    pub compares: Vec<CompareSpec>,
    pub success: Vec<OpSpec>,
    pub failure: Vec<OpSpec>,
}

#[derive(Clone, Debug)]
pub enum Op {
    Get(RangeSpec),
    /// A Range sent as raw gRPC, for sort orders and targets etcd-client cannot name.
    RawRange(RangeSpec),
    Put(PutSpec),
    Delete(DeleteSpec),
    Txn(TxnSpec),
    Compact {
        revision: i64,
        physical: bool,
    },
    /// A Txn sent as raw gRPC: compares with any result and target numbers and any union
    /// member, branches empty or holding one operation-less RequestOp.
    RawTxn {
        compares: Vec<RawCompare>,
        empty_op: bool,
    },
    /// A put of `len` value bytes, for the request size limit.
    BigPut {
        key: B,
        len: usize,
    },
}

impl Op {
    /// Whether the answer may come from a member's own state without consulting the others (in
    /// the cluster run, such reads first wait until that member caught up).
    pub fn serializable(&self) -> bool {
        match self {
            Op::Get(r) | Op::RawRange(r) => r.serializable,
            _ => false,
        }
    }
}

pub fn get_options(r: &RangeSpec) -> GetOptions {
    let mut o = GetOptions::new()
        .with_limit(r.limit)
        .with_revision(r.revision)
        .with_min_mod_revision(r.min_mod)
        .with_max_mod_revision(r.max_mod)
        .with_min_create_revision(r.min_create)
        .with_max_create_revision(r.max_create);
    o = match &r.end {
        End::Single => o,
        End::Prefix => o.with_prefix(),
        End::FromKey => o.with_from_key(),
        End::Plain(e) => o.with_range(e.0.clone()),
        End::All => o.with_all_keys(),
    };
    if let Some((target, order)) = r.sort {
        let target = match target {
            0 => SortTarget::Key,
            1 => SortTarget::Version,
            2 => SortTarget::Create,
            3 => SortTarget::Mod,
            _ => SortTarget::Value,
        };
        let order = match order {
            0 => SortOrder::None,
            1 => SortOrder::Ascend,
            _ => SortOrder::Descend,
        };
        o = o.with_sort(target, order);
    }
    if r.serializable {
        o = o.with_serializable();
    }
    if r.keys_only {
        o = o.with_keys_only();
    }
    if r.count_only {
        o = o.with_count_only();
    }
    o
}

pub fn put_options(p: &PutSpec) -> PutOptions {
    let mut o = PutOptions::new().with_lease(p.lease);
    if p.prev_kv {
        o = o.with_prev_key();
    }
    if p.ignore_value {
        o = o.with_ignore_value();
    }
    if p.ignore_lease {
        o = o.with_ignore_lease();
    }
    o
}

pub fn delete_options(d: &DeleteSpec) -> DeleteOptions {
    let mut o = DeleteOptions::new();
    o = match &d.end {
        End::Single => o,
        End::Prefix => o.with_prefix(),
        End::FromKey => o.with_from_key(),
        End::Plain(e) => o.with_range(e.0.clone()),
        End::All => o.with_all_keys(),
    };
    if d.prev_kv {
        o = o.with_prev_key();
    }
    o
}

pub fn compare(c: &CompareSpec) -> Compare {
    let op = match c.result {
        0 => CompareOp::Equal,
        1 => CompareOp::Greater,
        2 => CompareOp::Less,
        _ => CompareOp::NotEqual,
    };
    let key = c.key.0.clone();
    let cmp = match &c.target {
        Target::Version(v) => Compare::version(key, op, *v),
        Target::Create(v) => Compare::create_revision(key, op, *v),
        Target::Mod(v) => Compare::mod_revision(key, op, *v),
        Target::Value(v) => Compare::value(key, op, v.0.clone()),
        Target::Lease(v) => Compare::lease(key, op, *v),
    };
    match &c.end {
        End::Single => cmp,
        End::Prefix => cmp.with_prefix(),
        End::FromKey | End::All => cmp.with_range(vec![0]),
        End::Plain(e) => cmp.with_range(e.0.clone()),
    }
}

pub fn txn(t: &TxnSpec) -> Txn {
    let ops = |list: &[OpSpec]| -> Vec<TxnOp> {
        list.iter()
            .map(|op| match op {
                OpSpec::Get(r) => TxnOp::get(r.key.0.clone(), Some(get_options(r))),
                OpSpec::Put(p) => {
                    TxnOp::put(p.key.0.clone(), p.value.0.clone(), Some(put_options(p)))
                }
                OpSpec::Delete(d) => TxnOp::delete(d.key.0.clone(), Some(delete_options(d))),
                OpSpec::Txn(n) => TxnOp::txn(txn(n)),
            })
            .collect()
    };
    Txn::new()
        .when(t.compares.iter().map(compare).collect::<Vec<_>>())
        .and_then(ops(&t.success))
        .or_else(ops(&t.failure))
}
