//! The fleet's place on the central NATS server: its JetStream buckets, the key of every
//! document, and each read, watch and write the gateway agent and `weir fleet` make.
//!
//! | bucket | kind | key | value |
//! |--------|------|-----|-------|
//! | `weir-fleet` | key-value | `root.<version>` | a signed root (the successor of the one before) |
//! | | | `target.<function>.<counter>.<sha256 hex>` | a signed target |
//! | | | `desired.gateway.<id>`, `desired.group.<name>` | a signed desired document |
//! | | | `rollout.<id>` | a rollout's state (`weir fleet rollout`) |
//! | `weir-fleet-status` | key-value | `<gateway id>` | the gateway's status, JSON, rewritten every heartbeat |
//! | `weir-artifacts` | object store | `<sha256 hex>` | a function's component, by the sha256 its target signs |
//!
//! Nothing read here is trusted because of where it was read: documents are verified under the
//! gateway's trusted root, and an artifact is streamed through the check of its signed length and
//! digest ([`ArtifactCheck`]) — the object store's own digest is the uploader's claim.
//!
//! **Boundary:** the fleet's only module that imports the NATS client; the agent and the CLI go
//! through it.

use async_nats::jetstream::{self, kv, object_store};
use futures::{Stream, StreamExt};
use tokio::io::{AsyncReadExt, AsyncWrite, AsyncWriteExt};
use weir_fleet::{ArtifactCheck, Refusal, Scope};

/// The key-value bucket of the fleet's documents.
pub const DOCUMENTS_BUCKET: &str = "weir-fleet";
/// The key-value bucket the gateways' heartbeats are written to.
pub const STATUS_BUCKET: &str = "weir-fleet-status";
/// The object store of function components.
pub const ARTIFACTS_BUCKET: &str = "weir-artifacts";
/// Revisions kept of each document, for a fleet manager reading back what was sent.
const DOCUMENT_HISTORY: i64 = 16;
/// The largest document the bucket takes (a signed document is refused above 1 MiB anyway).
const MAX_DOCUMENT_BYTES: i32 = 1 << 20;
/// Chunks an artifact is read in.
const ARTIFACT_CHUNK: usize = 64 * 1024;

/// The key of a root document.
pub fn root_key(version: u64) -> String {
    format!("root.{version}")
}

/// The key of a target: one version of one function, by its security counter and the sha256 of
/// its component (the same component signed again with a higher counter — how a fleet goes back
/// to an earlier release above its floors — is another target).
pub fn target_key(function: &str, counter: u64, sha256: &[u8; 32]) -> String {
    format!("target.{function}.{counter}.{}", hex::encode(sha256))
}

/// The key of the desired document for `scope`.
pub fn desired_key(scope: &Scope) -> String {
    match scope {
        Scope::Gateway(id) => format!("desired.gateway.{id}"),
        Scope::Group(name) => format!("desired.group.{name}"),
    }
}

/// The key of a rollout's state.
pub fn rollout_key(id: &str) -> String {
    format!("rollout.{id}")
}

/// The name an artifact is stored under.
pub fn artifact_name(sha256: &[u8; 32]) -> String {
    hex::encode(sha256)
}

/// A failure to talk to the fleet's buckets.
#[derive(Debug, thiserror::Error)]
pub enum CentralError {
    /// The buckets do not exist: nothing was ever published to this server.
    #[error(
        "the fleet's bucket {bucket} does not exist on the server (nothing was published with `weir fleet publish`): {detail}"
    )]
    Missing { bucket: &'static str, detail: String },
    /// The server or the connection failed.
    #[error("{doing}: {detail}")]
    Transport { doing: String, detail: String },
    /// Another writer changed the value first.
    #[error("{key} was changed by someone else meanwhile (revision {expected} expected)")]
    Conflict { key: String, expected: u64 },
}

fn transport(doing: impl Into<String>) -> impl FnOnce(&dyn std::fmt::Display) -> CentralError {
    let doing = doing.into();
    move |e| CentralError::Transport { doing, detail: e.to_string() }
}

/// Why an artifact could not be fetched.
#[derive(Debug, thiserror::Error)]
pub enum FetchError {
    /// Its bytes are not the signed ones.
    #[error(transparent)]
    Refused(#[from] Refusal),
    /// The server, the connection or the file failed; trying again may work.
    #[error("{0}")]
    Transport(String),
}

/// The keys of `store` (the bucket `bucket`) under `prefix` (empty, or ending in `.`), sorted,
/// each once.
///
/// Read from the stream's subjects (one request, paged) rather than the client's key listing,
/// which runs a consumer over the bucket and on nats-server 2.9 was seen to repeat keys, miss
/// them and wait forever while gateways wrote.
async fn list_keys(store: &kv::Store, bucket: &str, prefix: &str) -> Result<Vec<String>, CentralError> {
    let base = format!("$KV.{bucket}.");
    let filter = format!("{base}{prefix}>");
    let mut subjects =
        store.stream.info_with_subjects(&filter).await.map_err(|e| transport(format!("cannot list {bucket}"))(&e))?;
    let mut keys = std::collections::BTreeSet::new();
    while let Some(subject) = subjects.next().await {
        let (subject, _) = subject.map_err(|e| transport(format!("cannot list {bucket}"))(&e))?;
        if let Some(key) = subject.strip_prefix(&base) {
            keys.insert(key.to_owned());
        }
    }
    Ok(keys.into_iter().collect())
}

/// Opens the key-value bucket `bucket`, creating it first if it does not exist.
///
/// The bucket's stream is created here as the key-value convention lays it out (`KV_<bucket>`
/// over `$KV.<bucket>.>`, one subject per key, `history` values kept per key, rollups allowed,
/// deletes through markers, direct gets) rather than by the client's own bucket creation,
/// which first asks for account details nats-server 2.9 does not give.
async fn key_value_bucket(
    js: &jetstream::Context,
    bucket: &str,
    description: &str,
    history: i64,
) -> Result<kv::Store, CentralError> {
    if let Ok(store) = js.get_key_value(bucket).await {
        return Ok(store);
    }
    let created = js
        .create_stream(jetstream::stream::Config {
            name: format!("KV_{bucket}"),
            description: Some(description.to_owned()),
            subjects: vec![format!("$KV.{bucket}.>")],
            max_messages_per_subject: history,
            max_message_size: MAX_DOCUMENT_BYTES,
            allow_rollup: true,
            deny_delete: true,
            allow_direct: true,
            discard: jetstream::stream::DiscardPolicy::New,
            num_replicas: 1,
            ..Default::default()
        })
        .await;
    if let Err(e) = created {
        // Another `weir fleet` may have created it meanwhile.
        if js.get_key_value(bucket).await.is_err() {
            return Err(transport(format!("cannot create the bucket {bucket}"))(&e));
        }
    }
    js.get_key_value(bucket).await.map_err(|e| transport(format!("cannot open the bucket {bucket}"))(&e))
}

/// One value of a watched key, as it changes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Watched {
    /// Its value now.
    Value(Vec<u8>),
    /// It was deleted or purged.
    Gone,
}

/// The fleet's buckets on one server.
#[derive(Clone)]
pub struct Central {
    documents: kv::Store,
    status: kv::Store,
    artifacts: object_store::ObjectStore,
}

impl std::fmt::Debug for Central {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Central").finish_non_exhaustive()
    }
}

impl Central {
    /// Opens the buckets, which must exist (a gateway reads; it does not create them).
    pub async fn open(client: async_nats::Client) -> Result<Self, CentralError> {
        let js = jetstream::new(client);
        let missing = |bucket| move |e: &dyn std::fmt::Display| CentralError::Missing { bucket, detail: e.to_string() };
        let documents = js.get_key_value(DOCUMENTS_BUCKET).await.map_err(|e| missing(DOCUMENTS_BUCKET)(&e))?;
        let status = js.get_key_value(STATUS_BUCKET).await.map_err(|e| missing(STATUS_BUCKET)(&e))?;
        let artifacts = js.get_object_store(ARTIFACTS_BUCKET).await.map_err(|e| missing(ARTIFACTS_BUCKET)(&e))?;
        Ok(Central { documents, status, artifacts })
    }

    /// Opens the buckets, creating those that do not exist yet (the fleet manager's side).
    pub async fn open_or_create(client: async_nats::Client) -> Result<Self, CentralError> {
        let js = jetstream::new(client);
        let documents = key_value_bucket(
            &js,
            DOCUMENTS_BUCKET,
            "weir fleet: signed roots, targets, desired documents; rollouts",
            DOCUMENT_HISTORY,
        )
        .await?;
        let status =
            key_value_bucket(&js, STATUS_BUCKET, "weir fleet: each gateway's status, rewritten every heartbeat", 1)
                .await?;
        let artifacts = match js.get_object_store(ARTIFACTS_BUCKET).await {
            Ok(store) => store,
            Err(_) => js
                .create_object_store(object_store::Config {
                    bucket: ARTIFACTS_BUCKET.into(),
                    description: Some("weir fleet: function components by sha256".into()),
                    ..Default::default()
                })
                .await
                .map_err(|e| transport(format!("cannot create the object store {ARTIFACTS_BUCKET}"))(&e))?,
        };
        Ok(Central { documents, status, artifacts })
    }

    /// A document's current value and its revision in the bucket, if it has one.
    pub async fn document(&self, key: &str) -> Result<Option<(Vec<u8>, u64)>, CentralError> {
        let entry = self.documents.entry(key).await.map_err(|e| transport(format!("cannot read {key}"))(&e))?;
        Ok(entry.filter(|e| e.operation == kv::Operation::Put).map(|e| (e.value.to_vec(), e.revision)))
    }

    /// Writes a document.
    pub async fn put_document(&self, key: &str, bytes: Vec<u8>) -> Result<u64, CentralError> {
        self.documents.put(key, bytes.into()).await.map_err(|e| transport(format!("cannot write {key}"))(&e))
    }

    /// Writes a document only if its bucket revision is still `expected` (0: only if it has
    /// none), so two writers never overwrite each other unseen.
    pub async fn replace_document(&self, key: &str, bytes: Vec<u8>, expected: u64) -> Result<u64, CentralError> {
        let written = if expected == 0 {
            self.documents
                .create(key, bytes.into())
                .await
                .map_err(|e| (e.kind() == kv::CreateErrorKind::AlreadyExists, e.to_string()))
        } else {
            self.documents
                .update(key, bytes.into(), expected)
                .await
                .map_err(|e| (e.kind() == kv::UpdateErrorKind::WrongLastRevision, e.to_string()))
        };
        written.map_err(|(conflict, detail)| {
            if conflict {
                CentralError::Conflict { key: key.to_owned(), expected }
            } else {
                CentralError::Transport { doing: format!("cannot write {key}"), detail }
            }
        })
    }

    /// Every key of the documents bucket under `prefix` (empty, or ending in `.`).
    pub async fn document_keys(&self, prefix: &str) -> Result<Vec<String>, CentralError> {
        list_keys(&self.documents, DOCUMENTS_BUCKET, prefix).await
    }

    /// The key's value now and then each change: the current value is delivered first (a watch
    /// alone would only see changes).
    pub async fn watch_document(
        &self,
        key: &str,
    ) -> Result<impl Stream<Item = Result<Watched, CentralError>> + Send + Unpin + use<>, CentralError> {
        let watch =
            self.documents.watch_with_history(key).await.map_err(|e| transport(format!("cannot watch {key}"))(&e))?;
        let key = key.to_owned();
        Ok(watch.map(move |entry| match entry {
            Ok(entry) if entry.operation == kv::Operation::Put => Ok(Watched::Value(entry.value.to_vec())),
            Ok(_) => Ok(Watched::Gone),
            Err(e) => Err(CentralError::Transport { doing: format!("watching {key}"), detail: e.to_string() }),
        }))
    }

    /// Stores a component under its sha256, unless it is there already.
    pub async fn put_artifact(&self, sha256: &[u8; 32], bytes: &[u8]) -> Result<(), CentralError> {
        let name = artifact_name(sha256);
        if let Ok(info) = self.artifacts.info(&name).await
            && info.size == bytes.len()
            && !info.deleted
        {
            return Ok(());
        }
        let mut reader = bytes;
        self.artifacts
            .put(name.as_str(), &mut reader)
            .await
            .map_err(|e| transport(format!("cannot store the artifact {name}"))(&e))?;
        Ok(())
    }

    /// Streams the artifact `check` is for into `out`, checking each chunk against the signed
    /// length before it is written and the digest at the end. What `out` holds is usable only
    /// when this returns `Ok`.
    pub async fn fetch_artifact(
        &self,
        sha256: &[u8; 32],
        mut check: ArtifactCheck,
        out: &mut (impl AsyncWrite + Unpin),
    ) -> Result<(), FetchError> {
        let name = artifact_name(sha256);
        let mut object = self
            .artifacts
            .get(&name)
            .await
            .map_err(|e| FetchError::Transport(format!("cannot fetch the artifact {name}: {e}")))?;
        let mut chunk = vec![0u8; ARTIFACT_CHUNK];
        loop {
            let read = match object.read(&mut chunk).await {
                Ok(read) => read,
                // The client's own digest check failed on the last chunk: the bytes are not even
                // the uploader's, so they are not the signed ones either.
                Err(e) if e.kind() == std::io::ErrorKind::InvalidData => return Err(check.damaged().into()),
                Err(e) => return Err(FetchError::Transport(format!("cannot fetch the artifact {name}: {e}"))),
            };
            if read == 0 {
                break;
            }
            check.update(&chunk[..read])?;
            out.write_all(&chunk[..read])
                .await
                .map_err(|e| FetchError::Transport(format!("cannot write the artifact {name}: {e}")))?;
        }
        check.finish()?;
        out.flush().await.map_err(|e| FetchError::Transport(format!("cannot write the artifact {name}: {e}")))?;
        Ok(())
    }

    /// Writes a gateway's status.
    pub async fn put_status(&self, gateway: &str, json: Vec<u8>) -> Result<(), CentralError> {
        self.status
            .put(gateway, json.into())
            .await
            .map_err(|e| transport(format!("cannot write the status of {gateway}"))(&e))?;
        Ok(())
    }

    /// Every gateway's last status, by gateway id.
    pub async fn statuses(&self) -> Result<Vec<(String, Vec<u8>)>, CentralError> {
        let mut statuses = Vec::new();
        for name in list_keys(&self.status, STATUS_BUCKET, "").await? {
            if let Some(value) = self
                .status
                .get(name.as_str())
                .await
                .map_err(|e| transport(format!("cannot read the status of {name}"))(&e))?
            {
                statuses.push((name, value.to_vec()));
            }
        }
        Ok(statuses)
    }
}

/// How `weir fleet` reaches the server.
#[derive(Clone, Debug)]
pub struct ServerAddress {
    /// `nats://host:port` or `tls://host:port`.
    pub url: String,
    /// A NATS credentials file (user JWT and nkey seed), if the server wants one.
    pub credentials: Option<std::path::PathBuf>,
}

impl Central {
    /// Connects `weir fleet` to the server and opens the buckets, creating any that are
    /// missing.
    pub async fn connect(server: &ServerAddress) -> Result<Self, CentralError> {
        let mut options = async_nats::ConnectOptions::new().name("weir fleet");
        if let Some(path) = &server.credentials {
            options = options
                .credentials_file(path)
                .await
                .map_err(|e| transport(format!("cannot use the credentials {}", path.display()))(&e))?;
        }
        let client = options
            .connect(server.url.as_str())
            .await
            .map_err(|e| transport(format!("cannot connect to {}", server.url))(&e))?;
        Self::open_or_create(client).await
    }
}
