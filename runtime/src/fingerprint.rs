//! Type fingerprints: what a serde message says about the Rust type it was sent as.
//!
//! A `send` puts a 32-bit hash of its type's name in the frame header; a `recv` of another
//! type refuses the message (`Error::TypeMismatch` naming both types) instead of decoding
//! bytes that happen to fit (a `-1i32` as a `u32`). Names are first put in a canonical form
//! so that types serde encodes alike still match: references are dropped, `str` is `String`,
//! a slice `[T]` is `Vec<T>` (an array `[T; N]` is not: postcard writes no length for it).
//! The hash of the name is cheap (a few dozen bytes of FNV-1a per call).
//!
//! The receiver can name the sender's type when this process has met that type itself (sent
//! or received one), or when it is a common standard type (numbers, `bool`, `char`,
//! `String`, and `Vec`s and `Option`s of them): names are kept in a small table.

use std::any::type_name;
use std::collections::HashMap;
use std::sync::{OnceLock, RwLock};

/// The fingerprint of `T`'s canonical name (never 0: 0 means "not checked").
pub(crate) fn of<T: ?Sized>() -> u32 {
    let name = type_name::<T>();
    // Canonicalising allocates: do it once per type and thread (measured: 0.2 us a message
    // without this cache), keyed by where the name lives.
    // A program uses few message types: a short list, most recent first, beats a map.
    thread_local! {
        static SEEN: std::cell::RefCell<Vec<(usize, usize, u32)>> = const {
            std::cell::RefCell::new(Vec::new())
        };
    }
    let key = (name.as_ptr() as usize, name.len());
    let hit = SEEN.with(|m| {
        let mut m = m.borrow_mut();
        let i = m.iter().position(|&(p, l, _)| (p, l) == key)?;
        let e = m[i];
        m[..=i].rotate_right(1);
        Some(e.2)
    });
    if let Some(fp) = hit {
        return fp;
    }
    let fp = hash(&canonical(name));
    remember(fp, name);
    SEEN.with(|m| m.borrow_mut().insert(0, (key.0, key.1, fp)));
    fp
}

/// The name of the type with fingerprint `fp`, if this process has met it.
pub(crate) fn name_of(fp: u32) -> Option<&'static str> {
    table()
        .read()
        .unwrap_or_else(|p| p.into_inner())
        .get(&fp)
        .copied()
}

/// How a mismatch names what the sender sent: its type's name when this process knows it,
/// else its fingerprint.
pub(crate) fn sent_as(fp: u32) -> String {
    match name_of(fp) {
        Some(name) => format!("it was sent as {name}"),
        None => format!("it was sent as another type (type fingerprint {fp:#010x})"),
    }
}

fn table() -> &'static RwLock<HashMap<u32, &'static str>> {
    static NAMES: OnceLock<RwLock<HashMap<u32, &'static str>>> = OnceLock::new();
    NAMES.get_or_init(|| RwLock::new(common()))
}

/// The names of common standard types, so that mistakes with them are named both ways.
fn common() -> HashMap<u32, &'static str> {
    let mut m = HashMap::new();
    fn add<T: ?Sized>(m: &mut HashMap<u32, &'static str>) {
        let name = type_name::<T>();
        m.insert(hash(&canonical(name)), name);
    }
    macro_rules! all {
        ($($t:ty),*) => {$(
            add::<$t>(&mut m);
            add::<Vec<$t>>(&mut m);
            add::<Option<$t>>(&mut m);
        )*};
    }
    all!(
        bool,
        char,
        u8,
        u16,
        u32,
        u64,
        u128,
        usize,
        i8,
        i16,
        i32,
        i64,
        i128,
        isize,
        f32,
        f64,
        String,
        ()
    );
    m
}

fn remember(fp: u32, name: &'static str) {
    if name_of(fp).is_none() {
        table()
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .insert(fp, name);
    }
}

fn hash(s: &str) -> u32 {
    let mut h: u32 = 0x811c_9dc5;
    for b in s.bytes() {
        h ^= u32::from(b);
        h = h.wrapping_mul(0x0100_0193);
    }
    h | 1
}

/// The canonical form of a type name (see the module documentation).
pub(crate) fn canonical(name: &str) -> String {
    let chars: Vec<char> = name.chars().collect();
    let mut out = String::with_capacity(name.len());
    canon(&chars, &mut out);
    out
}

fn canon(s: &[char], out: &mut String) {
    let mut i = 0;
    while i < s.len() {
        let c = s[i];
        if c == '&' {
            i += 1;
            // `&mut T` and `&'a T`: drop the qualifiers too.
            if s[i..].starts_with(&['m', 'u', 't', ' ']) {
                i += 4;
            }
            if s.get(i) == Some(&'\'') {
                while i < s.len() && s[i] != ' ' {
                    i += 1;
                }
                i += 1;
            }
            continue;
        }
        if c == '[' {
            let end = closing(s, i);
            let inner = &s[i + 1..end];
            match top_level(inner, ';') {
                Some(semi) => {
                    out.push('[');
                    canon(&inner[..semi], out);
                    out.extend(&inner[semi..]);
                    out.push(']');
                }
                None => {
                    out.push_str("Vec<");
                    canon(inner, out);
                    out.push('>');
                }
            }
            i = end + 1;
            continue;
        }
        if c.is_alphanumeric() || c == '_' || c == ':' {
            let start = i;
            while i < s.len() && (s[i].is_alphanumeric() || s[i] == '_' || s[i] == ':') {
                i += 1;
            }
            let word: String = s[start..i].iter().collect();
            out.push_str(match word.as_str() {
                "str" | "alloc::string::String" => "String",
                "alloc::vec::Vec" => "Vec",
                w => w,
            });
            continue;
        }
        out.push(c);
        i += 1;
    }
}

/// Index of the bracket closing the one at `open`.
fn closing(s: &[char], open: usize) -> usize {
    let mut depth = 0;
    for (j, &c) in s.iter().enumerate().skip(open) {
        match c {
            '[' | '<' | '(' => depth += 1,
            ']' | '>' | ')' => {
                depth -= 1;
                if depth == 0 {
                    return j;
                }
            }
            _ => {}
        }
    }
    s.len() - 1
}

/// Index of `sep` outside any brackets in `s`.
fn top_level(s: &[char], sep: char) -> Option<usize> {
    let mut depth = 0i32;
    for (j, &c) in s.iter().enumerate() {
        match c {
            '[' | '<' | '(' => depth += 1,
            ']' | '>' | ')' => depth -= 1,
            c if c == sep && depth == 0 => return Some(j),
            _ => {}
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn types_serde_encodes_alike_share_a_fingerprint() {
        assert_eq!(of::<str>(), of::<String>());
        assert_eq!(of::<&str>(), of::<String>());
        assert_eq!(of::<[u32]>(), of::<Vec<u32>>());
        assert_eq!(of::<(&str, &[u8])>(), of::<(String, Vec<u8>)>());
        assert_eq!(of::<Vec<&[String]>>(), of::<Vec<Vec<String>>>());
        assert_eq!(canonical("&'static str"), "String");
        assert_eq!(canonical("&mut [u8]"), "Vec<u8>");
    }

    #[test]
    fn types_that_differ_have_different_fingerprints() {
        assert_ne!(of::<i32>(), of::<u32>());
        assert_ne!(of::<[u8; 4]>(), of::<Vec<u8>>());
        assert_ne!(of::<(u8, u8)>(), of::<[u8; 2]>());
        assert_ne!(of::<Option<u64>>(), of::<u64>());
        assert_eq!(canonical("[alloc::string::String; 3]"), "[String; 3]");
        assert_ne!(of::<u64>(), 0);
    }

    #[test]
    fn names_met_are_remembered() {
        let fp = of::<std::collections::BTreeMap<u8, String>>();
        assert_eq!(
            name_of(fp),
            Some("alloc::collections::btree::map::BTreeMap<u8, alloc::string::String>")
        );
    }
}
