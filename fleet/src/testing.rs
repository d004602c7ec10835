//! A fleet of test keys and documents for the unit tests: a root with two root keys (threshold
//! 2), two target keys (threshold 1) and one desired key, and documents signed with them.

use std::collections::{BTreeMap, BTreeSet};

use sha2::{Digest, Sha256};

use crate::document::{Desired, FunctionTarget, HealthGates, RoleKeys, Root, Scope, Target, World};
use crate::envelope::{Signed, TrustedRoot};
use crate::keys::SigningKey;

pub struct TestFleet {
    pub root_keys: [SigningKey; 2],
    pub target_keys: [SigningKey; 2],
    pub desired_key: SigningKey,
    pub root: Root,
}

fn key() -> SigningKey {
    SigningKey::generate().expect("the OS gives random numbers")
}

pub fn role(keys: &[&SigningKey], threshold: u32) -> RoleKeys {
    RoleKeys { keys: keys.iter().map(|k| k.public().id()).collect::<BTreeSet<_>>(), threshold }
}

/// Seconds since the epoch the tests take as "now".
pub const NOW: u64 = 1_800_000_000;

impl TestFleet {
    pub fn new() -> Self {
        let root_keys = [key(), key()];
        let target_keys = [key(), key()];
        let desired_key = key();
        let all = root_keys.iter().chain(&target_keys).chain([&desired_key]);
        let root = Root {
            version: 1,
            expires: NOW + 365 * 86_400,
            keys: all.map(|k| (k.public().id(), k.public())).collect::<BTreeMap<_, _>>(),
            root: role(&[&root_keys[0], &root_keys[1]], 2),
            targets: role(&[&target_keys[0], &target_keys[1]], 1),
            desired: role(&[&desired_key], 1),
        };
        TestFleet { root_keys, target_keys, desired_key, root }
    }

    /// The fleet's root as a gateway holds it: installed, signed by both root keys.
    pub fn trusted(&self) -> TrustedRoot {
        TrustedRoot::install(&Signed::sign(&self.root, &[&self.root_keys[0], &self.root_keys[1]]))
            .expect("the test root is well formed and signed")
    }

    pub fn target(&self, function: &str, version: &str, bytes: &[u8], counter: u64) -> Target {
        Target {
            function: function.into(),
            version: version.into(),
            sha256: Sha256::digest(bytes).into(),
            length: bytes.len() as u64,
            world: World::Operator,
            counter,
            min_weir: "0.1.0".into(),
        }
    }

    pub fn desired(&self, scope: Scope, revision: u64, targets: &[&Target]) -> Desired {
        Desired {
            scope,
            revision,
            expires: NOW + 7 * 86_400,
            functions: targets
                .iter()
                .map(|t| (t.function.clone(), t.entry()))
                .collect::<BTreeMap<String, FunctionTarget>>(),
            floors: BTreeMap::new(),
            health: HealthGates::default(),
            rollout: None,
        }
    }
}
