//! [`Docs`]: the map a [`SyncedAtom`](crate::SyncedAtom) holds.

use std::collections::{BTreeMap, BTreeSet};
use std::ops::Deref;

/// The documents of a group, key → value, in key order.
///
/// It reads like a `BTreeMap<String, T>` (it derefs to one). Writes go through
/// its own methods, which note the keys they touch, so that only those
/// documents are persisted and synced: a write costs the same with ten
/// documents or ten thousand.
///
/// Replacing the whole map through the signal (`atom.set(docs)`, or
/// `*guard = docs`) replaces every document: keys absent from the new map
/// are deleted.
#[derive(Debug)]
pub struct Docs<T> {
    map: BTreeMap<String, T>,
    touched: BTreeSet<String>,
    /// This is the atom's own map (not one built or cloned to replace it).
    held: bool,
}

impl<T> Default for Docs<T> {
    fn default() -> Self {
        Docs {
            map: BTreeMap::new(),
            touched: BTreeSet::new(),
            held: false,
        }
    }
}

impl<T: Clone> Clone for Docs<T> {
    fn clone(&self) -> Self {
        Docs {
            map: self.map.clone(),
            touched: self.touched.clone(),
            held: false,
        }
    }
}

/// Two maps are equal when their documents are.
impl<T: PartialEq> PartialEq for Docs<T> {
    fn eq(&self, other: &Self) -> bool {
        self.map == other.map
    }
}

impl<T> Deref for Docs<T> {
    type Target = BTreeMap<String, T>;

    fn deref(&self) -> &Self::Target {
        &self.map
    }
}

impl<T> Docs<T> {
    /// Inserts or replaces a document; returns the previous value.
    pub fn insert(&mut self, key: impl Into<String>, value: T) -> Option<T> {
        let key = key.into();
        self.touched.insert(key.clone());
        self.map.insert(key, value)
    }

    /// Removes a document; returns its value.
    pub fn remove(&mut self, key: &str) -> Option<T> {
        let old = self.map.remove(key);
        if old.is_some() {
            self.touched.insert(key.to_owned());
        }
        old
    }

    /// A document to change in place (the key counts as written).
    pub fn get_mut(&mut self, key: &str) -> Option<&mut T> {
        let value = self.map.get_mut(key)?;
        self.touched.insert(key.to_owned());
        Some(value)
    }

    /// Keeps only the documents for which `keep` returns `true`.
    pub fn retain(&mut self, mut keep: impl FnMut(&str, &mut T) -> bool) {
        let touched = &mut self.touched;
        self.map.retain(|k, v| {
            let kept = keep(k, v);
            // A kept document may have been changed through `&mut T`.
            touched.insert(k.clone());
            kept
        });
    }

    /// Removes every document.
    pub fn clear(&mut self) {
        self.touched
            .extend(std::mem::take(&mut self.map).into_keys());
    }

    /// Replaces all documents by `map`.
    pub fn replace_all(&mut self, map: BTreeMap<String, T>) {
        self.touched.extend(self.map.keys().cloned());
        self.touched.extend(map.keys().cloned());
        self.map = map;
    }

    /// Sets a document without noting it as a local write (server updates).
    pub(crate) fn set_quietly(&mut self, key: &str, value: Option<T>) {
        match value {
            Some(v) => {
                self.map.insert(key.to_owned(), v);
            }
            None => {
                self.map.remove(key);
            }
        }
    }

    /// The keys written since the last call, and whether this map replaced
    /// the atom's own since (then every key the atom had counts as
    /// written too). It is the atom's own map from now on.
    pub(crate) fn take_touched(&mut self) -> (BTreeSet<String>, bool) {
        let replaced = !std::mem::replace(&mut self.held, true);
        (std::mem::take(&mut self.touched), replaced)
    }

    /// Marks this map as the atom's own.
    pub(crate) fn hold(mut self) -> Self {
        self.held = true;
        self
    }
}
