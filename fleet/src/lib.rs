//! weir's fleet metadata: what a fleet manager signs and what a gateway accepts.
//!
//! Shaped like TUF, kept small. Three kinds of document, each carried in a [`Signed`] envelope:
//!
//! - a [`Root`]: the trusted keys, and for each role (`root`, `targets`, `desired`) which of them
//!   may sign and how many must ([`RoleKeys`]). A gateway is given its first root by its operator;
//!   a newer root is accepted only when the current root's threshold *and* its own sign it.
//! - a [`Target`]: one version of one function — the sha256 and length of its component, its WIT
//!   world, its security counter and the oldest weir that runs it. Signed by the `targets` role.
//! - a [`Desired`] document: for one gateway or one group, a revision that only goes up, an
//!   expiry, the complete set of fleet functions with their versions and hashes, floors to raise,
//!   and the health gates a candidate must pass. Signed by the `desired` role.
//!
//! Every rule a gateway applies before it fetches, compiles or runs anything is here, as pure
//! functions over decoded documents and what the gateway knows ([`accept`]), so the rules are
//! tested without a broker and the `weir fleet` command applies the same ones before it
//! publishes. A refusal is a [`Refusal`], whose text is what a fleet manager reads in status.
//!
//! **Invariants:** only a [`TrustedRoot`] (installed by the operator, or its checked successor)
//! verifies documents; signatures are checked (`verify_strict`) before a document's body is
//! decoded — but for a root being installed or rotated to, which is decoded to learn its own
//! keys (see `envelope`); a body is accepted only in its canonical encoding (the one [`Signed::sign`] writes), so no two
//! byte strings carry the same document; the signed message names the document's kind, so a
//! signature over one kind never counts for another. No I/O and no clock: time comes in as a
//! [`Clock`].

pub mod accept;
pub mod artifact;
pub mod document;
pub mod envelope;
pub mod keys;
mod refusal;
#[cfg(test)]
mod testing;

pub use accept::{Clock, Floors, GatewayIdentity, Verdict, check_desired, check_target};
pub use artifact::ArtifactCheck;
pub use document::{Desired, FunctionTarget, HealthGates, Kind, RoleKeys, RolloutTag, Root, Scope, Target, World};
pub use envelope::{Document, Signed, TrustedRoot};
pub use keys::{KeyError, KeyId, PublicKey, SigningKey};
pub use refusal::Refusal;

/// The most bytes a signed document may have: a desired document of a few hundred functions
/// fits many times over; anything larger is refused before it is decoded.
pub const MAX_DOCUMENT_BYTES: usize = 1 << 20;
