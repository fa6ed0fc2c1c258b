//! [`FakeServer`]: the server's semantics in memory.

use std::collections::BTreeMap;

use super::SimServer;
use crate::protocol::{
    self, ChangeResult, Cursor, Document, ErrorBody, ErrorCode, PullRequest, PullResponse,
    PushRequest, PushResponse,
};
use crate::sexpr::Raw;

/// An in-memory model of the atomsync server's semantics, for engine tests
/// and simulations.
///
/// A change is accepted iff its base version is the key's current version (0
/// for a key never written; tombstones keep their version); the new version is
/// the old + 1 and the change gets the next global change number. Pulls return
/// the documents of a group changed after the cursor, in change order, pages
/// ending as the real server's do. A `(client id, mutation)` answered before
/// for the same change is answered the same way again without being applied;
/// for another change it is [`ErrorCode::MutationReused`]. Answers below a
/// push's low-water mark are forgotten. A cursor of another epoch, beyond the
/// last change, or older than a purged tombstone gets
/// [`ErrorCode::CursorReset`]. Purged tombstones leave their key absent; a
/// key written again then gets a version above every purged one, and takes
/// any base at or below it.
///
/// A database put back to a [`FakeServer::checkpoint`] gets a new epoch, as
/// the real server's high-water mark gives it.
#[derive(Debug, Clone)]
pub struct FakeServer {
    epoch: String,
    generation: u64,
    data: Data,
    /// The copy taken aside, with the epoch it had.
    checkpoint: Option<(String, Data)>,
    reepoch_on_restart: bool,
    restarts: u64,
}

/// What the database file holds.
#[derive(Debug, Clone, Default)]
struct Data {
    seq: u64,
    groups: BTreeMap<String, Group>,
    mutations: BTreeMap<(String, u64), Answered>,
    purged_seq: u64,
    purged_version: u64,
}

#[derive(Debug, Clone, Default)]
struct Group {
    docs: BTreeMap<String, Doc>,
    by_seq: BTreeMap<u64, String>,
}

#[derive(Debug, Clone)]
struct Doc {
    value: Option<Raw>,
    version: u64,
    seq: u64,
}

#[derive(Debug, Clone)]
struct Answered {
    group: String,
    key: String,
    base_version: u64,
    value: Option<Raw>,
    version: Option<u64>,
}

impl Default for FakeServer {
    fn default() -> Self {
        FakeServer::new()
    }
}

fn bad_request(message: impl Into<String>) -> ErrorBody {
    ErrorBody {
        error: ErrorCode::BadRequest,
        message: message.into(),
    }
}

impl FakeServer {
    /// An empty server with epoch `fake-1`.
    pub fn new() -> Self {
        FakeServer {
            epoch: "fake-1".to_owned(),
            generation: 1,
            data: Data::default(),
            checkpoint: None,
            reepoch_on_restart: false,
            restarts: 0,
        }
    }

    /// Makes every [`SimServer::restart`] also [`FakeServer::renumber`] the
    /// database, so clients see cursor resets with all data kept.
    pub fn reepoch_on_restart(mut self, yes: bool) -> Self {
        self.reepoch_on_restart = yes;
        self
    }

    /// How many times the server restarted.
    pub fn restarts(&self) -> u64 {
        self.restarts
    }

    /// The cursor after the last accepted change.
    pub fn cursor(&self) -> Cursor {
        Cursor {
            epoch: self.epoch.clone(),
            seq: self.data.seq,
            floor: self.data.purged_seq,
        }
    }

    /// How many decided mutations the server remembers.
    pub fn mutations_len(&self) -> usize {
        self.data.mutations.len()
    }

    /// Copies the database aside (a backup).
    pub fn checkpoint(&mut self) {
        self.checkpoint = Some((self.epoch.clone(), self.data.clone()));
    }

    /// Puts the last [`FakeServer::checkpoint`] back (a restored backup, or
    /// lost last commits; without a checkpoint, an empty database), with a
    /// new epoch if that lost any change (or the copy was of another epoch).
    /// Returns whether it did.
    pub fn restore_checkpoint(&mut self) -> bool {
        let (epoch, back) = self.checkpoint.clone().unwrap_or_default();
        let lost = epoch != self.epoch || back.seq < self.data.seq;
        self.data = back;
        if lost {
            self.next_epoch();
        }
        lost
    }

    /// Deletes every tombstone now (as if the horizon had passed for all).
    pub fn purge_tombstones(&mut self) -> usize {
        let data = &mut self.data;
        let mut purged = 0;
        for g in data.groups.values_mut() {
            let gone: Vec<String> = g
                .docs
                .iter()
                .filter(|(_, doc)| doc.value.is_none())
                .map(|(key, _)| key.clone())
                .collect();
            for key in gone {
                let doc = g.docs.remove(&key).expect("listed above");
                g.by_seq.remove(&doc.seq);
                data.purged_seq = data.purged_seq.max(doc.seq);
                data.purged_version = data.purged_version.max(doc.version);
                purged += 1;
            }
        }
        // A purge takes a change number, as the real store's does.
        if purged > 0 {
            data.seq += 1;
        }
        purged
    }

    fn next_epoch(&mut self) {
        self.generation += 1;
        self.epoch = format!("fake-{}", self.generation);
    }

    /// Moves the data to a new epoch with fresh change numbers (as a database
    /// rebuilt from a dump would): documents, versions and answered mutations
    /// are kept, every cursor handed out before is reset.
    pub fn renumber(&mut self) {
        self.next_epoch();
        let data = &mut self.data;
        let mut all: Vec<(u64, String, String)> = data
            .groups
            .iter()
            .flat_map(|(group, g)| {
                g.docs
                    .iter()
                    .map(move |(key, doc)| (doc.seq, group.clone(), key.clone()))
            })
            .collect();
        all.sort();
        for g in data.groups.values_mut() {
            g.by_seq.clear();
        }
        data.seq = 0;
        data.purged_seq = 0;
        for (_, group, key) in all {
            data.seq += 1;
            let g = data.groups.get_mut(&group).expect("group listed above");
            g.docs.get_mut(&key).expect("key listed above").seq = data.seq;
            g.by_seq.insert(data.seq, key);
        }
    }

    /// Replaces the database by an empty one with a new epoch (a wiped server).
    pub fn wipe(&mut self) {
        self.next_epoch();
        self.data = Data::default();
    }

    /// Writes a document directly, bypassing the protocol (for setting up
    /// tests): the version is the current one + 1.
    pub fn put(&mut self, group: &str, key: &str, value: Option<Raw>) -> u64 {
        let version = self.document(group, key).map_or(0, |d| d.version) + 1;
        self.write(group, key, value, version);
        version
    }

    fn write(&mut self, group: &str, key: &str, value: Option<Raw>, version: u64) {
        let data = &mut self.data;
        data.seq += 1;
        let g = data.groups.entry(group.to_owned()).or_default();
        if let Some(old) = g.docs.get(key) {
            g.by_seq.remove(&old.seq);
        }
        g.by_seq.insert(data.seq, key.to_owned());
        g.docs.insert(
            key.to_owned(),
            Doc {
                value,
                version,
                seq: data.seq,
            },
        );
    }

    /// The server's document `key` of `group` (tombstones included).
    pub fn document(&self, group: &str, key: &str) -> Option<Document> {
        let doc = self.data.groups.get(group)?.docs.get(key)?;
        Some(Document {
            key: key.to_owned(),
            version: doc.version,
            value: doc.value.clone(),
        })
    }

    /// `key` as a conflict shows it: its document, or after a purge a
    /// tombstone at the purge version.
    fn current(&self, group: &str, key: &str) -> Option<Document> {
        self.document(group, key).or_else(|| {
            (self.data.purged_version > 0).then(|| Document {
                key: key.to_owned(),
                version: self.data.purged_version,
                value: None,
            })
        })
    }

    /// All documents of `group` in key order (tombstones included).
    pub fn documents(&self, group: &str) -> Vec<Document> {
        self.data.groups.get(group).map_or_else(Vec::new, |g| {
            g.docs
                .iter()
                .map(|(key, doc)| Document {
                    key: key.clone(),
                    version: doc.version,
                    value: doc.value.clone(),
                })
                .collect()
        })
    }
}

impl SimServer for FakeServer {
    fn pull(&mut self, request: &PullRequest) -> Result<PullResponse, ErrorBody> {
        protocol::validate_group(&request.group).map_err(bad_request)?;
        let limit = match request.limit {
            None => protocol::DEFAULT_PULL_LIMIT,
            Some(0) => return Err(bad_request("limit must be at least 1")),
            Some(n) => n.min(protocol::MAX_PULL_LIMIT),
        } as usize;
        let since = match &request.since {
            None => 0,
            Some(cursor)
                if cursor.epoch != self.epoch
                    || cursor.seq > self.data.seq
                    || (cursor.seq < self.data.purged_seq
                        && cursor.floor < self.data.purged_seq) =>
            {
                return Err(ErrorBody {
                    error: ErrorCode::CursorReset,
                    message: "the cursor belongs to another database".to_owned(),
                });
            }
            Some(cursor) => cursor.seq,
        };
        let mut documents = Vec::new();
        let mut more = false;
        let mut last_seq = since;
        if let Some(g) = self.data.groups.get(&request.group) {
            for (&seq, key) in g.by_seq.range(since + 1..) {
                if documents.len() == limit {
                    more = true;
                    break;
                }
                let doc = &g.docs[key];
                documents.push(Document {
                    key: key.clone(),
                    version: doc.version,
                    value: doc.value.clone(),
                });
                last_seq = seq;
            }
        }
        Ok(PullResponse {
            documents,
            cursor: Cursor {
                epoch: self.epoch.clone(),
                seq: if more { last_seq } else { self.data.seq },
                floor: self.data.purged_seq,
            },
            more,
        })
    }

    fn push(&mut self, request: &PushRequest) -> Result<PushResponse, ErrorBody> {
        protocol::validate_group(&request.group).map_err(bad_request)?;
        let id = &request.client_id;
        if id.is_empty() || id.len() > protocol::MAX_CLIENT_ID_LEN {
            return Err(bad_request("invalid client id"));
        }
        if request.changes.len() > protocol::MAX_PUSH_CHANGES {
            return Err(bad_request("too many changes"));
        }
        if request.epoch.as_ref().is_some_and(|e| *e != self.epoch) {
            return Err(ErrorBody {
                error: ErrorCode::CursorReset,
                message: "the changes are based on another database".to_owned(),
            });
        }
        for change in &request.changes {
            protocol::validate_key(&change.key).map_err(bad_request)?;
            let answered = self.data.mutations.get(&(id.clone(), change.mutation));
            if answered.is_some_and(|a| {
                a.group != request.group
                    || a.key != change.key
                    || a.base_version != change.base_version
                    || a.value != change.value
            }) {
                return Err(ErrorBody {
                    error: ErrorCode::MutationReused,
                    message: format!(
                        "mutation {} of client `{id}` was already decided for another change",
                        change.mutation
                    ),
                });
            }
        }
        let mut results = Vec::with_capacity(request.changes.len());
        for change in &request.changes {
            let mutation = change.mutation;
            let key = change.key.clone();
            if let Some(answered) = self.data.mutations.get(&(id.clone(), mutation)) {
                results.push(match answered.version {
                    Some(version) => ChangeResult::Accepted {
                        mutation,
                        key,
                        version,
                    },
                    None => ChangeResult::Conflict {
                        mutation,
                        current: self.current(&request.group, &key),
                        key,
                    },
                });
                continue;
            }
            let base = change.base_version;
            let floor = self.data.purged_version;
            let stored = self.document(&request.group, &key);
            let new_version = match &stored {
                Some(doc) => (base == doc.version).then(|| doc.version + 1),
                // Never written, or its tombstone purged.
                None => (base == 0 || base == floor).then(|| floor + 1),
            };
            // An absent key after a purge conflicts as a tombstone at the
            // purge version.
            let current = stored.or_else(|| {
                (floor > 0).then(|| Document {
                    key: key.clone(),
                    version: floor,
                    value: None,
                })
            });
            if let Some(version) = new_version {
                self.write(&request.group, &key, change.value.clone(), version);
            }
            self.data.mutations.insert(
                (id.clone(), mutation),
                Answered {
                    group: request.group.clone(),
                    key: key.clone(),
                    base_version: base,
                    value: change.value.clone(),
                    version: new_version,
                },
            );
            results.push(if let Some(version) = new_version {
                ChangeResult::Accepted {
                    mutation,
                    key,
                    version,
                }
            } else {
                ChangeResult::Conflict {
                    mutation,
                    key,
                    current,
                }
            });
        }
        if let Some(low) = request.low_water {
            self.data
                .mutations
                .retain(|(client, mutation), _| client != id || *mutation >= low);
        }
        Ok(PushResponse {
            results,
            cursor: self.cursor(),
        })
    }

    fn restart(&mut self) {
        self.restarts += 1;
        if self.reepoch_on_restart {
            self.renumber();
        }
    }

    fn checkpoint(&mut self) {
        FakeServer::checkpoint(self);
    }

    fn restore_checkpoint(&mut self) {
        self.restarts += 1;
        FakeServer::restore_checkpoint(self);
    }

    fn purge_tombstones(&mut self) {
        FakeServer::purge_tombstones(self);
    }
}
