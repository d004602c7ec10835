//! Why a gateway refuses a document or an artifact: one variant per rule, whose text is what a
//! fleet manager reads in status, and a short stable [`Refusal::code`] for machines.

use crate::document::{Kind, Scope};

/// Why a document or an artifact is refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Refusal {
    /// The envelope is larger than any document may be.
    #[error("{bytes} bytes is more than a signed document may have ({limit})")]
    TooLarge { bytes: usize, limit: usize },
    /// The bytes do not decode as what they should be.
    #[error("the {what} does not decode: {detail}")]
    Malformed { what: &'static str, detail: String },
    /// The body decodes but is not in its canonical encoding.
    #[error("the {kind} document is not in its canonical encoding")]
    NotCanonical { kind: Kind },
    /// A document of another kind where one kind was expected.
    #[error("a {found} document where a {expected} document belongs")]
    WrongKind { expected: Kind, found: Kind },
    /// Too few of the role's keys signed.
    #[error(
        "the {kind} document has {valid} valid signature(s) of its role's keys, {threshold} needed \
         ({unknown} by keys the role does not list, {invalid} that do not verify)"
    )]
    TooFewSignatures { kind: Kind, valid: usize, threshold: u32, unknown: usize, invalid: usize },
    /// More signatures than the root has keys: refused before any is verified.
    #[error("the {kind} document carries {signatures} signatures, more than the root's {keys} keys")]
    TooManySignatures { kind: Kind, signatures: usize, keys: usize },
    /// A root's role can never be satisfied, or names a key it does not list.
    #[error("the root's {role} role is unusable: threshold {threshold} with {keys} key(s), each listed in the root")]
    BadRole { role: &'static str, threshold: u32, keys: usize },
    /// A root that is not the trusted root's successor.
    #[error("root version {version} does not follow the trusted root's version {current}")]
    RootNotNext { version: u64, current: u64 },
    /// A desired document for another gateway or a group this gateway is not in.
    #[error("the document is for {scope}, not for this gateway or its groups")]
    NotForThisGateway { scope: Scope },
    /// An older revision than the one already accepted (a replay).
    #[error("revision {revision} for {scope} is older than the accepted revision {current}")]
    RevisionWentBack { scope: Scope, revision: u64, current: u64 },
    /// Another document under a revision already accepted.
    #[error("revision {revision} for {scope} was already accepted with other contents")]
    RevisionReused { scope: Scope, revision: u64 },
    /// The document's expiry has passed by the synced clock.
    #[error("revision {revision} expired at {expires} (now {now}, seconds since the epoch)")]
    Expired { revision: u64, expires: u64, now: u64 },
    /// The clock is not synced, so a newer revision's expiry cannot be checked: it waits.
    #[error("revision {revision} waits for the clock to be synced before its expiry can be checked")]
    ClockNotSynced { revision: u64 },
    /// The root itself has expired by the synced clock.
    #[error("the trusted root (version {version}) expired at {expires}; a newer root is needed")]
    RootExpired { version: u64, expires: u64 },
    /// A desired document whose settings cannot hold (a floor above its own version, a
    /// tolerance that is not a finite non-negative number, a share above a million ppm).
    #[error("the desired document is not well formed: {problem}")]
    IllFormed { problem: String },
    /// A function version below the gateway's anti-rollback floor.
    #[error("{function} {version} has security counter {counter}, below this gateway's floor {floor}")]
    BelowFloor { function: String, version: String, counter: u64, floor: u64 },
    /// A target that does not match the desired document's entry for it (e.g. taken from
    /// another document).
    #[error("the target for {function} does not match the desired document's entry: {field} differs")]
    TargetMismatch { function: String, field: &'static str },
    /// A target for a newer weir.
    #[error("{function} {version} needs weir {needs} or newer; this is weir {running}")]
    NeedsNewerWeir { function: String, version: String, needs: String, running: String },
    /// The artifact has more bytes than its target signs for.
    #[error("the artifact for {function} is longer than its signed {length} bytes")]
    ArtifactTooLong { function: String, length: u64 },
    /// The artifact ended before its signed length.
    #[error("the artifact for {function} has {got} bytes, its target signs for {length}")]
    ArtifactTooShort { function: String, got: u64, length: u64 },
    /// The artifact's sha256 is not the signed one.
    #[error("the artifact for {function} does not have its target's sha256")]
    ArtifactDigest { function: String },
}

impl Refusal {
    /// A short, stable name for the rule that refused (for status and tests).
    pub fn code(&self) -> &'static str {
        match self {
            Refusal::TooLarge { .. } => "too-large",
            Refusal::Malformed { .. } => "malformed",
            Refusal::NotCanonical { .. } => "not-canonical",
            Refusal::WrongKind { .. } => "wrong-kind",
            Refusal::TooFewSignatures { .. } => "signatures",
            Refusal::BadRole { .. } => "bad-role",
            Refusal::RootNotNext { .. } => "root-not-next",
            Refusal::TooManySignatures { .. } => "too-many-signatures",
            Refusal::NotForThisGateway { .. } => "not-for-this-gateway",
            Refusal::RevisionWentBack { .. } => "revision-went-back",
            Refusal::RevisionReused { .. } => "revision-reused",
            Refusal::Expired { .. } => "expired",
            Refusal::ClockNotSynced { .. } => "clock-not-synced",
            Refusal::RootExpired { .. } => "root-expired",
            Refusal::BelowFloor { .. } => "below-floor",
            Refusal::IllFormed { .. } => "ill-formed",
            Refusal::TargetMismatch { .. } => "target-mismatch",
            Refusal::NeedsNewerWeir { .. } => "needs-newer-weir",
            Refusal::ArtifactTooLong { .. } => "artifact-too-long",
            Refusal::ArtifactTooShort { .. } => "artifact-too-short",
            Refusal::ArtifactDigest { .. } => "artifact-digest",
        }
    }

    /// Whether the refusal may go away by itself (the clock gets synced) rather than needing a
    /// new document.
    pub fn is_pending(&self) -> bool {
        matches!(self, Refusal::ClockNotSynced { .. })
    }
}
