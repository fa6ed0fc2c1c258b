//! Writes made by another writer that shares an engine: the follower tabs of
//! a browser, whose leader tab owns the group's engine.
//!
//! A follower shows the documents the leader announced and edits them
//! there. By the time its write reaches the leader, the document may have
//! changed (a pull, the leader's own write, another follower's). The write
//! therefore carries a [`Seen`]: a fingerprint of the value its author saw.
//! [`Engine::write_based`] applies it only if the document still shows that
//! value; otherwise the two edits collided, and the collision is a reported
//! [`Conflict`] ([`ConflictCause::Concurrent`]) resolved by the engine's
//! policy, never a silent overwrite.

use serde::{Deserialize, Serialize};

use super::{Conflict, ConflictCause, ConflictPolicy, Effects, Engine, EngineError, Resolution};
use crate::sexpr::Raw;

/// A fingerprint of a document's visible value (`None`: absent or
/// deleted), what a forwarded write was based on.
///
/// It is a 64-bit FNV-1a hash of the value's S-expression text: equal values
/// have equal fingerprints; different values collide with negligible
/// probability (this guards against stale edits between tabs of one
/// browser, not against an adversary).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Seen(pub u64);

impl Seen {
    /// The fingerprint of `value`.
    pub fn of(value: Option<&Raw>) -> Seen {
        match value {
            // Distinct from every text's hash in practice; 0 is not FNV's
            // hash of any short text.
            None => Seen(0),
            Some(raw) => Seen(super::fnv1a(raw.as_str().as_bytes()) | 1),
        }
    }
}

impl Engine {
    /// The fingerprint of `key`'s visible value, for a writer that edits it
    /// elsewhere (see [`Engine::write_based`]).
    pub fn seen(&self, key: &str) -> Seen {
        Seen::of(self.get(key))
    }

    /// Applies a write made elsewhere on the value fingerprinted by `seen`
    /// (`value` `None`: a delete).
    ///
    /// - If `key` still shows that value, this is [`Engine::set`] (or
    ///   [`Engine::delete`]).
    /// - If `key` already shows `value`, nothing happens: the write is
    ///   already applied (a forwarded write delivered twice is harmless).
    /// - Otherwise the document changed since the write's author saw it: a
    ///   [`Conflict`] with [`ConflictCause::Concurrent`] is reported (`local`:
    ///   the forwarded value, `server`: the value shown now) and resolved by
    ///   the policy: [`ConflictPolicy::ServerWins`] keeps the value shown now,
    ///   [`ConflictPolicy::ClientWins`] writes the forwarded value, a merge
    ///   writes its result.
    ///
    /// # Errors
    ///
    /// As [`Engine::set`]: an invalid key, or a value too large to push.
    pub fn write_based(
        &mut self,
        key: impl Into<String>,
        value: Option<Raw>,
        seen: Seen,
    ) -> Result<Effects, EngineError> {
        let key = key.into();
        let current = self.get(&key).cloned();
        if Seen::of(current.as_ref()) == seen {
            return self.write(key, value);
        }
        if current == value {
            return Ok(Effects::default());
        }
        let (resolution, rewrite) = match &self.options.policy {
            ConflictPolicy::ServerWins => (Resolution::ServerWins, None),
            ConflictPolicy::ClientWins => (Resolution::ClientWins, Some(value.clone())),
            ConflictPolicy::Merge(merge) => {
                let merged = merge(&key, value.as_ref(), current.as_ref());
                let rewrite = (merged != current).then(|| merged.clone());
                (Resolution::Merged(merged), rewrite)
            }
        };
        // Validated (key, size) before anything is reported.
        let mut effects = match rewrite {
            Some(rewrite) => self.write(key.clone(), rewrite)?,
            None => {
                crate::protocol::validate_key(&key).map_err(EngineError::InvalidKey)?;
                Effects::default()
            }
        };
        let server_version = self.confirmed(&key).map_or(0, |doc| doc.version);
        self.report(Conflict {
            id: 0,
            key,
            local: value,
            server: current,
            server_version,
            resolution,
            cause: ConflictCause::Concurrent,
        });
        effects.merge(self.finish());
        Ok(effects)
    }
}
