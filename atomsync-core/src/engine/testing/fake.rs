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
/// is answered the same way again without being applied. A cursor of another
/// epoch, or beyond the last change, gets [`ErrorCode::CursorReset`].
#[derive(Debug, Clone)]
pub struct FakeServer {
    epoch: String,
    generation: u64,
    seq: u64,
    groups: BTreeMap<String, Group>,
    mutations: BTreeMap<(String, u64), Answered>,
    reepoch_on_restart: bool,
    restarts: u64,
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
            seq: 0,
            groups: BTreeMap::new(),
            mutations: BTreeMap::new(),
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
            seq: self.seq,
        }
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
        let mut all: Vec<(u64, String, String)> = self
            .groups
            .iter()
            .flat_map(|(group, g)| {
                g.docs
                    .iter()
                    .map(move |(key, doc)| (doc.seq, group.clone(), key.clone()))
            })
            .collect();
        all.sort();
        for g in self.groups.values_mut() {
            g.by_seq.clear();
        }
        self.seq = 0;
        for (_, group, key) in all {
            self.seq += 1;
            let g = self.groups.get_mut(&group).expect("group listed above");
            g.docs.get_mut(&key).expect("key listed above").seq = self.seq;
            g.by_seq.insert(self.seq, key);
        }
    }

    /// Replaces the database by an empty one with a new epoch (a wiped server).
    pub fn wipe(&mut self) {
        self.next_epoch();
        self.seq = 0;
        self.groups.clear();
        self.mutations.clear();
    }

    /// Writes a document directly, bypassing the protocol (for setting up
    /// tests): the version is the current one + 1.
    pub fn put(&mut self, group: &str, key: &str, value: Option<Raw>) -> u64 {
        let version = self.document(group, key).map_or(0, |d| d.version) + 1;
        self.write(group, key, value, version);
        version
    }

    fn write(&mut self, group: &str, key: &str, value: Option<Raw>, version: u64) {
        self.seq += 1;
        let g = self.groups.entry(group.to_owned()).or_default();
        if let Some(old) = g.docs.get(key) {
            g.by_seq.remove(&old.seq);
        }
        g.by_seq.insert(self.seq, key.to_owned());
        g.docs.insert(
            key.to_owned(),
            Doc {
                value,
                version,
                seq: self.seq,
            },
        );
    }

    /// The server's document `key` of `group` (tombstones included).
    pub fn document(&self, group: &str, key: &str) -> Option<Document> {
        let doc = self.groups.get(group)?.docs.get(key)?;
        Some(Document {
            key: key.to_owned(),
            version: doc.version,
            value: doc.value.clone(),
        })
    }

    /// All documents of `group` in key order (tombstones included).
    pub fn documents(&self, group: &str) -> Vec<Document> {
        self.groups.get(group).map_or_else(Vec::new, |g| {
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
            Some(cursor) if cursor.epoch != self.epoch || cursor.seq > self.seq => {
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
        if let Some(g) = self.groups.get(&request.group) {
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
                seq: if more { last_seq } else { self.seq },
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
        for change in &request.changes {
            protocol::validate_key(&change.key).map_err(bad_request)?;
            let answered = self.mutations.get(&(id.clone(), change.mutation));
            if answered.is_some_and(|a| a.group != request.group || a.key != change.key) {
                return Err(bad_request(format!(
                    "mutation {} of client `{id}` was already used for another document",
                    change.mutation
                )));
            }
        }
        let mut results = Vec::with_capacity(request.changes.len());
        for change in &request.changes {
            let mutation = change.mutation;
            let key = change.key.clone();
            if let Some(answered) = self.mutations.get(&(id.clone(), mutation)) {
                results.push(match answered.version {
                    Some(version) => ChangeResult::Accepted {
                        mutation,
                        key,
                        version,
                    },
                    None => ChangeResult::Conflict {
                        mutation,
                        current: self.document(&request.group, &key),
                        key,
                    },
                });
                continue;
            }
            let current = self.document(&request.group, &key);
            let version = current.as_ref().map_or(0, |d| d.version);
            let accepted = change.base_version == version;
            if accepted {
                self.write(&request.group, &key, change.value.clone(), version + 1);
            }
            self.mutations.insert(
                (id.clone(), mutation),
                Answered {
                    group: request.group.clone(),
                    key: key.clone(),
                    version: accepted.then_some(version + 1),
                },
            );
            results.push(if accepted {
                ChangeResult::Accepted {
                    mutation,
                    key,
                    version: version + 1,
                }
            } else {
                ChangeResult::Conflict {
                    mutation,
                    key,
                    current,
                }
            });
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
}
