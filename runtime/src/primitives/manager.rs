//! `Manager`: a `Dict`, `List` or `Namespace` hosted by one rank, whose operations are
//! atomic on the host (`multiprocessing.Manager().dict()` and friends). `update` applies a
//! function to one entry atomically (read, compute on the caller, write back if nobody
//! changed it meanwhile; otherwise retry).

use std::marker::PhantomData;

use serde::de::DeserializeOwned;
use serde::Serialize;

use super::{decode_as, Ctx, Handle, Object, Reply, Waiter};
use crate::comm::{encode, Comm};
use crate::error::{Error, Result};

const GET: u8 = 1;
const SET: u8 = 2;
const DEL: u8 = 3;
const LEN: u8 = 4;
const ITEMS: u8 = 5;
const SET_IF: u8 = 6;
const APPEND: u8 = 7;
const POP: u8 = 8;
const CLEAR: u8 = 9;

type Bytes = Vec<u8>;
/// Marks a dictionary's key and value types without owning any.
type KeyValue<K, V> = fn(K, V) -> (K, V);

/// Entries in insertion order, each with a version bumped on every write.
#[derive(Default)]
struct MapObj {
    entries: Vec<(Bytes, Bytes, u64)>,
    next_version: u64,
}

impl MapObj {
    fn find(&self, k: &[u8]) -> Option<usize> {
        self.entries.iter().position(|(ek, _, _)| ek == k)
    }
    fn write(&mut self, k: Bytes, v: Bytes) -> u64 {
        self.next_version += 1;
        let ver = self.next_version;
        match self.find(&k) {
            Some(i) => self.entries[i] = (k, v, ver),
            None => self.entries.push((k, v, ver)),
        }
        ver
    }
}

impl Object for MapObj {
    fn handle(&mut self, ctx: &mut Ctx<'_>, from: Waiter, op: u8, data: &[u8]) {
        let bad =
            |ctx: &mut Ctx<'_>| ctx.reply(from, Reply::Usage("malformed manager request".into()));
        match op {
            GET => {
                let Ok(k) = postcard::from_bytes::<Bytes>(data) else {
                    return bad(ctx);
                };
                let r: Option<(Bytes, u64)> = self
                    .find(&k)
                    .map(|i| (self.entries[i].1.clone(), self.entries[i].2));
                ctx.reply(from, Reply::ok(&r));
            }
            SET => {
                let Ok((k, v)) = postcard::from_bytes::<(Bytes, Bytes)>(data) else {
                    return bad(ctx);
                };
                self.write(k, v);
                ctx.reply(from, Reply::ok(&()));
            }
            SET_IF => {
                let Ok((k, v, expect)) = postcard::from_bytes::<(Bytes, Bytes, Option<u64>)>(data)
                else {
                    return bad(ctx);
                };
                let now = self.find(&k).map(|i| self.entries[i].2);
                if now == expect {
                    self.write(k, v);
                    ctx.reply(from, Reply::ok(&true));
                } else {
                    ctx.reply(from, Reply::ok(&false));
                }
            }
            DEL => {
                let Ok(k) = postcard::from_bytes::<Bytes>(data) else {
                    return bad(ctx);
                };
                let old = self.find(&k).map(|i| self.entries.remove(i).1);
                ctx.reply(from, Reply::ok(&old));
            }
            LEN => ctx.reply(from, Reply::ok(&(self.entries.len() as u64))),
            ITEMS => {
                let items: Vec<(&Bytes, &Bytes)> =
                    self.entries.iter().map(|(k, v, _)| (k, v)).collect();
                ctx.reply(from, Reply::ok(&items));
            }
            CLEAR => {
                self.entries.clear();
                ctx.reply(from, Reply::ok(&()));
            }
            _ => ctx.reply(from, Reply::Usage(format!("unknown dict operation {op}"))),
        }
    }
    fn cancel(&mut self, _from: Waiter) -> bool {
        false
    }
}

/// A list: items with versions.
#[derive(Default)]
struct ListObj {
    items: Vec<(Bytes, u64)>,
    next_version: u64,
}

impl Object for ListObj {
    fn handle(&mut self, ctx: &mut Ctx<'_>, from: Waiter, op: u8, data: &[u8]) {
        let bad =
            |ctx: &mut Ctx<'_>| ctx.reply(from, Reply::Usage("malformed list request".into()));
        let out_of_range = |i: u64, n: usize| {
            Reply::Usage(format!("list index {i} out of range for a list of {n}"))
        };
        match op {
            APPEND => {
                let Ok(v) = postcard::from_bytes::<Bytes>(data) else {
                    return bad(ctx);
                };
                self.next_version += 1;
                self.items.push((v, self.next_version));
                ctx.reply(from, Reply::ok(&((self.items.len() - 1) as u64)));
            }
            GET => {
                let Ok(i) = postcard::from_bytes::<u64>(data) else {
                    return bad(ctx);
                };
                match self.items.get(i as usize) {
                    Some((v, ver)) => ctx.reply(from, Reply::ok(&(v, ver))),
                    None => ctx.reply(from, out_of_range(i, self.items.len())),
                }
            }
            SET | SET_IF => {
                let Ok((i, v, expect)) = postcard::from_bytes::<(u64, Bytes, Option<u64>)>(data)
                else {
                    return bad(ctx);
                };
                let n = self.items.len();
                let Some(slot) = self.items.get_mut(i as usize) else {
                    return ctx.reply(from, out_of_range(i, n));
                };
                if op == SET_IF && Some(slot.1) != expect {
                    return ctx.reply(from, Reply::ok(&false));
                }
                self.next_version += 1;
                *slot = (v, self.next_version);
                ctx.reply(from, Reply::ok(&true));
            }
            POP => {
                let Ok(i) = postcard::from_bytes::<Option<u64>>(data) else {
                    return bad(ctx);
                };
                let n = self.items.len();
                let idx = i.map_or(n.checked_sub(1), |i| {
                    ((i as usize) < n).then_some(i as usize)
                });
                match idx {
                    Some(idx) => ctx.reply(from, Reply::Ok(self.items.remove(idx).0)),
                    None => ctx.reply(from, out_of_range(i.unwrap_or(0), n)),
                }
            }
            LEN => ctx.reply(from, Reply::ok(&(self.items.len() as u64))),
            ITEMS => {
                let items: Vec<&Bytes> = self.items.iter().map(|(v, _)| v).collect();
                ctx.reply(from, Reply::ok(&items));
            }
            CLEAR => {
                self.items.clear();
                ctx.reply(from, Reply::ok(&()));
            }
            _ => ctx.reply(from, Reply::Usage(format!("unknown list operation {op}"))),
        }
    }
    fn cancel(&mut self, _from: Waiter) -> bool {
        false
    }
}

/// Hosts shared containers on one rank (`multiprocessing.Manager`).
///
/// ```
/// let world = ranks::init()?;
/// let m = ranks::Manager::new(&world, 0)?;
/// let scores = m.dict::<String, u32>()?;   // every rank creates it, in the same order
/// let log = m.list::<String>()?;
/// let ns = m.namespace()?;
/// scores.update(&"total".to_string(), |v| v.unwrap_or(0) + 10)?;
/// log.append(&format!("rank {} was here", world.rank()))?;
/// ns.set("phase", &"done")?;
/// world.barrier()?;
/// assert_eq!(scores.get(&"total".to_string())?, Some(10 * world.size() as u32));
/// assert_eq!(log.len()?, world.size());
/// assert_eq!(ns.get::<String>("phase")?.as_deref(), Some("done"));
/// # Ok::<(), ranks::Error>(())
/// ```
#[derive(Clone)]
pub struct Manager {
    comm: Comm,
    owner: usize,
}

impl Manager {
    /// A manager whose containers live on rank `owner` of `comm`.
    pub fn new(comm: &Comm, owner: usize) -> Result<Manager> {
        if owner >= comm.size() {
            return Err(Error::InvalidRank {
                rank: owner as i64,
                size: comm.size(),
            });
        }
        Ok(Manager {
            comm: comm.clone(),
            owner,
        })
    }

    /// A new shared dictionary (collective over the manager's communicator).
    pub fn dict<K: Serialize + DeserializeOwned, V: Serialize + DeserializeOwned>(
        &self,
    ) -> Result<Dict<K, V>> {
        let h = Handle::create(&self.comm, self.owner, "Manager.dict", || {
            Box::<MapObj>::default()
        })?;
        Ok(Dict { h, _t: PhantomData })
    }

    /// A new shared list (collective).
    pub fn list<T: Serialize + DeserializeOwned>(&self) -> Result<List<T>> {
        self.list_from(&[])
    }

    /// A new shared list holding `items` (collective; the owner's `items` count, like
    /// `manager.list([0, 0, 0])`).
    pub fn list_from<T: Serialize + DeserializeOwned>(&self, items: &[T]) -> Result<List<T>> {
        let init: Vec<Bytes> = items.iter().map(encode).collect::<Result<_>>()?;
        let h = Handle::create(&self.comm, self.owner, "Manager.list", move || {
            let mut l = ListObj::default();
            for v in init {
                l.next_version += 1;
                l.items.push((v, l.next_version));
            }
            Box::new(l)
        })?;
        Ok(List { h, _t: PhantomData })
    }

    /// A new namespace of named values of any serde type (collective).
    pub fn namespace(&self) -> Result<Namespace> {
        let h = Handle::create(&self.comm, self.owner, "Manager.namespace", || {
            Box::<MapObj>::default()
        })?;
        Ok(Namespace { h })
    }
}

/// A dictionary hosted by a [`Manager`]; every operation is atomic on the host.
///
/// ```
/// let world = ranks::init()?;
/// let d = ranks::Manager::new(&world, 0)?.dict::<u32, String>()?;
/// d.set(&(world.rank() as u32), &"ready".to_string())?;
/// world.barrier()?;
/// assert_eq!(d.len()?, world.size());
/// assert_eq!(d.remove(&0)?, Some("ready".to_string()));
/// # Ok::<(), ranks::Error>(())
/// ```
pub struct Dict<K, V> {
    h: Handle,
    _t: PhantomData<KeyValue<K, V>>,
}

impl<K, V> Clone for Dict<K, V> {
    fn clone(&self) -> Self {
        Dict {
            h: self.h.clone(),
            _t: PhantomData,
        }
    }
}

fn versioned_get<V: DeserializeOwned>(h: &Handle, key: Bytes) -> Result<Option<(V, u64)>> {
    let r: Option<(Bytes, u64)> = h.call_typed(GET, &key, None, "dict")?;
    r.map(|(b, ver)| Ok((decode_as(&b, h.owner)?, ver)))
        .transpose()
}

impl<K: Serialize + DeserializeOwned, V: Serialize + DeserializeOwned> Dict<K, V> {
    /// The value for `key`, if any.
    pub fn get(&self, key: &K) -> Result<Option<V>> {
        Ok(versioned_get(&self.h, encode(key)?)?.map(|(v, _)| v))
    }
    /// Set `key` to `value`.
    pub fn set(&self, key: &K, value: &V) -> Result<()> {
        self.h
            .call_typed(SET, &(encode(key)?, encode(value)?), None, "dict")
    }
    /// Remove `key`, returning its value.
    pub fn remove(&self, key: &K) -> Result<Option<V>> {
        let old: Option<Bytes> = self.h.call_typed(DEL, &encode(key)?, None, "dict")?;
        old.map(|b| decode_as(&b, self.h.owner)).transpose()
    }
    /// Number of entries.
    pub fn len(&self) -> Result<usize> {
        let n: u64 = self.h.call_typed(LEN, &(), None, "dict")?;
        Ok(n as usize)
    }
    /// Whether the dictionary is empty.
    pub fn is_empty(&self) -> Result<bool> {
        Ok(self.len()? == 0)
    }
    /// All entries, in insertion order.
    pub fn items(&self) -> Result<Vec<(K, V)>> {
        let items: Vec<(Bytes, Bytes)> = self.h.call_typed(ITEMS, &(), None, "dict")?;
        items
            .into_iter()
            .map(|(k, v)| Ok((decode_as(&k, self.h.owner)?, decode_as(&v, self.h.owner)?)))
            .collect()
    }
    /// Atomically replace the value of `key` by `f(current value)`; returns the new value.
    pub fn update(&self, key: &K, mut f: impl FnMut(Option<V>) -> V) -> Result<V> {
        let k = encode(key)?;
        loop {
            let cur = versioned_get::<V>(&self.h, k.clone())?;
            let ver = cur.as_ref().map(|(_, v)| *v);
            let new = f(cur.map(|(v, _)| v));
            let ok: bool =
                self.h
                    .call_typed(SET_IF, &(k.clone(), encode(&new)?, ver), None, "dict")?;
            if ok {
                return Ok(new);
            }
        }
    }
    /// Remove every entry.
    pub fn clear(&self) -> Result<()> {
        self.h.call_typed(CLEAR, &(), None, "dict")
    }
}

/// A list hosted by a [`Manager`]; every operation is atomic on the host.
///
/// ```
/// let world = ranks::init()?;
/// let l = ranks::Manager::new(&world, 0)?.list_from(&[1, 2, 3])?;
/// l.update(0, |x| x * 100)?;
/// assert_eq!(l.get(0)?, 100);
/// if world.rank() == 0 {
///     assert_eq!(l.pop(None)?, 3);
/// }
/// world.barrier()?;
/// assert_eq!(l.snapshot()?, [100, 2]);
/// # Ok::<(), ranks::Error>(())
/// ```
pub struct List<T> {
    h: Handle,
    _t: PhantomData<fn(T) -> T>,
}

impl<T> Clone for List<T> {
    fn clone(&self) -> Self {
        List {
            h: self.h.clone(),
            _t: PhantomData,
        }
    }
}

impl<T: Serialize + DeserializeOwned> List<T> {
    /// Append an item; returns its index.
    pub fn append(&self, item: &T) -> Result<usize> {
        let i: u64 = self.h.call_typed(APPEND, &encode(item)?, None, "list")?;
        Ok(i as usize)
    }
    /// The item at `index`.
    pub fn get(&self, index: usize) -> Result<T> {
        let (b, _): (Bytes, u64) = self.h.call_typed(GET, &(index as u64), None, "list")?;
        decode_as(&b, self.h.owner)
    }
    /// Replace the item at `index`.
    pub fn set(&self, index: usize, item: &T) -> Result<()> {
        let _: bool = self.h.call_typed(
            SET,
            &(index as u64, encode(item)?, None::<u64>),
            None,
            "list",
        )?;
        Ok(())
    }
    /// Atomically replace the item at `index` by `f(item)`; returns the new item.
    pub fn update(&self, index: usize, mut f: impl FnMut(T) -> T) -> Result<T> {
        loop {
            let (b, ver): (Bytes, u64) = self.h.call_typed(GET, &(index as u64), None, "list")?;
            let new = f(decode_as(&b, self.h.owner)?);
            let ok: bool = self.h.call_typed(
                SET_IF,
                &(index as u64, encode(&new)?, Some(ver)),
                None,
                "list",
            )?;
            if ok {
                return Ok(new);
            }
        }
    }
    /// Remove and return the item at `index` (the last one for `None`).
    pub fn pop(&self, index: Option<usize>) -> Result<T> {
        let b = self
            .h
            .call(POP, encode(&index.map(|i| i as u64))?, None)?
            .into_result("list")?;
        decode_as(&b, self.h.owner)
    }
    /// Number of items.
    pub fn len(&self) -> Result<usize> {
        let n: u64 = self.h.call_typed(LEN, &(), None, "list")?;
        Ok(n as usize)
    }
    /// Whether the list is empty.
    pub fn is_empty(&self) -> Result<bool> {
        Ok(self.len()? == 0)
    }
    /// A copy of the whole list.
    pub fn snapshot(&self) -> Result<Vec<T>> {
        let items: Vec<Bytes> = self.h.call_typed(ITEMS, &(), None, "list")?;
        items.iter().map(|b| decode_as(b, self.h.owner)).collect()
    }
    /// Remove every item.
    pub fn clear(&self) -> Result<()> {
        self.h.call_typed(CLEAR, &(), None, "list")
    }
}

/// Named values of any serde type, hosted by a [`Manager`] (`Manager().Namespace()`).
///
/// ```
/// let world = ranks::init()?;
/// let ns = ranks::Manager::new(&world, 0)?.namespace()?;
/// if world.rank() == 0 {
///     ns.set("threshold", &0.5f64)?;
/// }
/// world.barrier()?;
/// assert_eq!(ns.get::<f64>("threshold")?, Some(0.5));
/// assert_eq!(ns.get::<f64>("missing")?, None);
/// # Ok::<(), ranks::Error>(())
/// ```
#[derive(Clone)]
pub struct Namespace {
    h: Handle,
}

impl Namespace {
    /// The value named `name`, if set.
    pub fn get<T: DeserializeOwned>(&self, name: &str) -> Result<Option<T>> {
        Ok(versioned_get(&self.h, encode(name)?)?.map(|(v, _)| v))
    }
    /// Set the value named `name`.
    pub fn set<T: Serialize>(&self, name: &str, value: &T) -> Result<()> {
        self.h
            .call_typed(SET, &(encode(name)?, encode(value)?), None, "namespace")
    }
    /// Atomically replace `name`'s value by `f(current)`; returns the new value.
    pub fn update<T: Serialize + DeserializeOwned>(
        &self,
        name: &str,
        mut f: impl FnMut(Option<T>) -> T,
    ) -> Result<T> {
        let k = encode(name)?;
        loop {
            let cur = versioned_get::<T>(&self.h, k.clone())?;
            let ver = cur.as_ref().map(|(_, v)| *v);
            let new = f(cur.map(|(v, _)| v));
            let ok: bool =
                self.h
                    .call_typed(SET_IF, &(k.clone(), encode(&new)?, ver), None, "namespace")?;
            if ok {
                return Ok(new);
            }
        }
    }
}
