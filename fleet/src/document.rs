//! The three documents and their canonical CBOR form.
//!
//! Each is a CBOR map with small integer keys, written by minicbor's derive in key order, with
//! definite lengths and the shortest integer heads; maps inside are `BTreeMap`s, written in their
//! keys' order. That one encoding is the canonical one: a signed body that decodes but does not
//! re-encode to the same bytes is refused (see `envelope`). A key never changes meaning: a new
//! meaning gets a new key.
//!
//! Times are whole seconds since the Unix epoch (UTC). A version is a label for people; what
//! orders versions of one function for anti-rollback is its security `counter`.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;

use minicbor::{Decode, Encode};

use crate::keys::{KeyId, PublicKey};

/// The kind of a signed document; part of the signed message.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Encode, Decode)]
#[cbor(index_only)]
pub enum Kind {
    /// A [`Root`].
    #[n(0)]
    Root,
    /// A [`Target`].
    #[n(1)]
    Target,
    /// A [`Desired`] document.
    #[n(2)]
    Desired,
}

impl Kind {
    /// Its name in the signed message and in messages.
    pub fn name(self) -> &'static str {
        match self {
            Kind::Root => "root",
            Kind::Target => "target",
            Kind::Desired => "desired",
        }
    }
}

impl fmt::Display for Kind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// Which keys may sign for a role, and how many of them must.
#[derive(Clone, Debug, PartialEq, Eq, Encode, Decode)]
#[cbor(map)]
pub struct RoleKeys {
    /// The ids of the keys that may sign (each listed in the root's `keys`).
    #[n(0)]
    pub keys: BTreeSet<KeyId>,
    /// How many distinct keys of them must sign: at least 1, at most as many as are listed.
    #[n(1)]
    pub threshold: u32,
}

/// The trusted keys and the roles they sign for.
#[derive(Clone, Debug, PartialEq, Eq, Encode, Decode)]
#[cbor(map)]
pub struct Root {
    /// Goes up by at least one with every new root.
    #[n(0)]
    pub version: u64,
    /// After this a synced gateway accepts no document under this root but a newer root.
    #[n(1)]
    pub expires: u64,
    /// Every key the roles name, by id.
    #[n(2)]
    pub keys: BTreeMap<KeyId, PublicKey>,
    /// Who signs new roots.
    #[n(3)]
    pub root: RoleKeys,
    /// Who signs targets (function versions).
    #[n(4)]
    pub targets: RoleKeys,
    /// Who signs desired documents.
    #[n(5)]
    pub desired: RoleKeys,
}

/// The WIT world a function's component implements.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Encode, Decode)]
#[cbor(index_only)]
pub enum World {
    /// `operator`: batches in, batches out.
    #[n(0)]
    Operator,
    /// `decoder`: messages in, readings out.
    #[n(1)]
    Decoder,
    /// `accumulator`: a custom window aggregate.
    #[n(2)]
    Accumulator,
}

impl World {
    /// The world's name in the WIT package.
    pub fn name(self) -> &'static str {
        match self {
            World::Operator => "operator",
            World::Decoder => "decoder",
            World::Accumulator => "accumulator",
        }
    }
}

/// One version of one function.
#[derive(Clone, Debug, PartialEq, Eq, Encode, Decode)]
#[cbor(map)]
pub struct Target {
    /// The function's name, as gateways' configurations declare it (`[functions.<name>]`).
    #[n(0)]
    pub function: String,
    /// The version's label.
    #[n(1)]
    pub version: String,
    /// The sha256 of the component's bytes.
    #[n(2)]
    #[cbor(with = "minicbor::bytes")]
    pub sha256: [u8; 32],
    /// The component's length in bytes.
    #[n(3)]
    pub length: u64,
    /// The world it implements.
    #[n(4)]
    pub world: World,
    /// The security counter: a gateway never installs a version whose counter is below its floor.
    #[n(5)]
    pub counter: u64,
    /// The oldest weir that runs it (semver).
    #[n(6)]
    pub min_weir: String,
}

impl Target {
    /// What a desired document says of this target.
    pub fn entry(&self) -> FunctionTarget {
        FunctionTarget {
            version: self.version.clone(),
            sha256: self.sha256,
            length: self.length,
            world: self.world,
            counter: self.counter,
        }
    }
}

/// Who a desired document is for.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Encode, Decode)]
pub enum Scope {
    /// One gateway, by its `[gateway] id`.
    #[n(0)]
    Gateway(#[n(0)] String),
    /// Every gateway that lists this group in `[fleet] groups`.
    #[n(1)]
    Group(#[n(0)] String),
}

impl fmt::Display for Scope {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Scope::Gateway(id) => write!(f, "gateway {id}"),
            Scope::Group(name) => write!(f, "group {name}"),
        }
    }
}

/// A desired document's entry for one function: which target it runs. Equal field by field to
/// the target's own ([`Target::entry`]), or the gateway refuses the pair.
#[derive(Clone, Debug, PartialEq, Eq, Encode, Decode)]
#[cbor(map)]
pub struct FunctionTarget {
    /// The target's version label.
    #[n(0)]
    pub version: String,
    /// The component's sha256.
    #[n(1)]
    #[cbor(with = "minicbor::bytes")]
    pub sha256: [u8; 32],
    /// The component's length in bytes.
    #[n(2)]
    pub length: u64,
    /// The world it implements.
    #[n(3)]
    pub world: World,
    /// Its security counter.
    #[n(4)]
    pub counter: u64,
}

/// What a candidate version must show before it replaces the running one, and what an active
/// version must keep showing during its probation.
#[derive(Clone, Debug, PartialEq, Encode, Decode, serde::Serialize, serde::Deserialize)]
#[cbor(map)]
pub struct HealthGates {
    /// Batches the candidate runs in shadow, beside the running version, before promotion.
    #[n(0)]
    pub shadow_batches: u32,
    /// The most of those batches, in parts per million, whose call may fault.
    #[n(1)]
    pub max_faulted_ppm: u32,
    /// The longest one call may take, in microseconds.
    #[n(2)]
    pub max_call_micros: u64,
    /// The most outputs, in parts per million, that may differ from the running version's.
    #[n(3)]
    pub max_divergent_ppm: u32,
    /// How far apart two output values may be and still count as equal (absolute).
    #[n(4)]
    pub tolerance: f64,
    /// Batches after promotion during which a failed gate rolls back to the last committed
    /// version; after them the version is committed and the floor raised.
    #[n(5)]
    pub probation_batches: u32,
}

impl Default for HealthGates {
    fn default() -> Self {
        HealthGates {
            shadow_batches: 20,
            max_faulted_ppm: 0,
            max_call_micros: 1_000_000,
            max_divergent_ppm: 0,
            tolerance: 1e-9,
            probation_batches: 20,
        }
    }
}

/// The rollout and wave a desired document was written for, for status.
#[derive(Clone, Debug, PartialEq, Eq, Encode, Decode)]
#[cbor(map)]
pub struct RolloutTag {
    /// The rollout's id.
    #[n(0)]
    pub id: String,
    /// Its wave, from 0 (the canary).
    #[n(1)]
    pub wave: u32,
}

/// What one gateway, or every gateway of one group, should run.
#[derive(Clone, Debug, PartialEq, Encode, Decode)]
#[cbor(map)]
pub struct Desired {
    /// Who it is for.
    #[n(0)]
    pub scope: Scope,
    /// Goes up with every document for this scope; a gateway never goes back.
    #[n(1)]
    pub revision: u64,
    /// After this a gateway whose clock is synced refuses it.
    #[n(2)]
    pub expires: u64,
    /// The complete set of functions the fleet runs on the gateway, by name; a configured
    /// function not in it runs its configured component.
    #[n(3)]
    pub functions: BTreeMap<String, FunctionTarget>,
    /// Floors to raise once this document is committed: no version of the function with a
    /// lower counter is ever accepted again.
    #[n(4)]
    pub floors: BTreeMap<String, u64>,
    /// The gates candidates pass.
    #[n(5)]
    pub health: HealthGates,
    /// The rollout that wrote it, if one did.
    #[n(6)]
    pub rollout: Option<RolloutTag>,
}
