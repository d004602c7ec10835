//! The signed envelope, signing, and verification against a root.
//!
//! A [`Signed`] carries one document's canonical bytes (`body`), its kind and its signatures.
//! What a key signs is `weir-fleet/1`, a zero byte, the kind's name, a zero byte, then the body:
//! a signature over a target can never count for a desired document or a root.
//!
//! Verification against a trusted root ([`Signed::verify`]) checks, in this order, before a
//! single byte of the body is decoded: the kind, the number of signatures (no more than the
//! root has keys: a flood of copies costs nothing), then each signature by a key the role lists
//! (`verify_strict`, each key verified and counted once, stopping at the threshold). Only then
//! is the body decoded, and refused unless it re-encodes to the same bytes. The envelope's size
//! is checked where its bytes are read ([`Signed::from_bytes`]).
//!
//! A root is the one document decoded before its signatures are checked: the first root is
//! installed by the operator and verified by its own keys ([`TrustedRoot::install`]), and a
//! newer root is checked against the current root's keys first, then against its own
//! ([`TrustedRoot::update`]). Only a [`TrustedRoot`] verifies other documents, so no root that
//! skipped those checks can.

use std::collections::BTreeSet;

use minicbor::{Decode, Encode};

use crate::MAX_DOCUMENT_BYTES;
use crate::document::{Desired, Kind, RoleKeys, Root, Target};
use crate::keys::{KeyId, SigningKey};
use crate::refusal::Refusal;

/// A document that can be signed: its kind, and which role of a root signs it.
pub trait Document: Encode<()> + for<'b> Decode<'b, ()> {
    /// Its kind.
    const KIND: Kind;
    /// The role that signs it.
    fn role(root: &Root) -> &RoleKeys;
}

impl Document for Root {
    const KIND: Kind = Kind::Root;
    fn role(root: &Root) -> &RoleKeys {
        &root.root
    }
}

impl Document for Target {
    const KIND: Kind = Kind::Target;
    fn role(root: &Root) -> &RoleKeys {
        &root.targets
    }
}

impl Document for Desired {
    const KIND: Kind = Kind::Desired;
    fn role(root: &Root) -> &RoleKeys {
        &root.desired
    }
}

/// One signature: the key's id and its ed25519 signature.
#[derive(Clone, Debug, PartialEq, Eq, Encode, Decode)]
#[cbor(map)]
pub struct Signature {
    /// The signing key's id.
    #[n(0)]
    pub key: KeyId,
    /// The signature over the signed message.
    #[n(1)]
    #[cbor(with = "minicbor::bytes")]
    pub signature: [u8; 64],
}

/// A document's canonical bytes with its kind and signatures.
#[derive(Clone, Debug, PartialEq, Eq, Encode, Decode)]
#[cbor(map)]
pub struct Signed {
    /// What the body is.
    #[n(0)]
    pub kind: Kind,
    /// The document, canonical CBOR.
    #[n(1)]
    #[cbor(with = "minicbor::bytes")]
    pub body: Vec<u8>,
    /// Its signatures, in the order they were added.
    #[n(2)]
    pub signatures: Vec<Signature>,
}

impl Signed {
    /// `document` in its canonical form, signed by each of `keys`.
    pub fn sign<D: Document>(document: &D, keys: &[&SigningKey]) -> Signed {
        let body = canonical(document);
        let mut signed = Signed { kind: D::KIND, body, signatures: Vec::new() };
        for key in keys {
            signed.add_signature(key);
        }
        signed
    }

    /// Adds `key`'s signature (replacing an earlier one by the same key): how several holders
    /// of a threshold role sign one after the other, each on their own machine.
    pub fn add_signature(&mut self, key: &SigningKey) {
        let id = key.public().id();
        self.signatures.retain(|s| s.key != id);
        let signature = key.sign(&signed_message(self.kind, &self.body));
        self.signatures.push(Signature { key: id, signature });
    }

    /// The envelope's bytes (what is stored and sent).
    pub fn to_bytes(&self) -> Vec<u8> {
        minicbor::to_vec(self).unwrap_or_default()
    }

    /// Reads an envelope, refusing more than [`MAX_DOCUMENT_BYTES`].
    pub fn from_bytes(bytes: &[u8]) -> Result<Signed, Refusal> {
        if bytes.len() > MAX_DOCUMENT_BYTES {
            return Err(Refusal::TooLarge { bytes: bytes.len(), limit: MAX_DOCUMENT_BYTES });
        }
        minicbor::decode(bytes)
            .map_err(|error| Refusal::Malformed { what: "signed envelope", detail: error.to_string() })
    }

    /// The document, once its signatures satisfy `D`'s role in the trusted `root` and its body
    /// is canonical. Nothing of the body is decoded before the signatures are checked.
    pub fn verify<D: Document>(&self, root: &TrustedRoot) -> Result<D, Refusal> {
        self.verify_under(root.root())
    }

    fn verify_under<D: Document>(&self, root: &Root) -> Result<D, Refusal> {
        if self.kind != D::KIND {
            return Err(Refusal::WrongKind { expected: D::KIND, found: self.kind });
        }
        self.check_signatures(root, D::role(root), D::KIND)?;
        decode_canonical(&self.body, D::KIND)
    }

    /// Counts the distinct keys of `role` with a valid signature; refuses fewer than its
    /// threshold.
    fn check_signatures(&self, root: &Root, role: &RoleKeys, kind: Kind) -> Result<(), Refusal> {
        if self.signatures.len() > root.keys.len() {
            return Err(Refusal::TooManySignatures { kind, signatures: self.signatures.len(), keys: root.keys.len() });
        }
        let threshold = role.threshold.max(1);
        let message = signed_message(self.kind, &self.body);
        let (mut seen, mut valid) = (BTreeSet::new(), BTreeSet::new());
        let (mut unknown, mut invalid) = (0, 0);
        for signature in &self.signatures {
            if valid.len() as u64 >= u64::from(threshold) {
                break;
            }
            // Each key is verified once: a copy of a signature costs nothing and counts nothing.
            if !seen.insert(signature.key) {
                continue;
            }
            let key = role.keys.contains(&signature.key).then(|| root.keys.get(&signature.key)).flatten();
            match key {
                None => unknown += 1,
                Some(key) if key.verifies(&message, &signature.signature) => {
                    valid.insert(signature.key);
                }
                Some(_) => invalid += 1,
            }
        }
        if (valid.len() as u64) < u64::from(threshold) {
            return Err(Refusal::TooFewSignatures { kind, valid: valid.len(), threshold, unknown, invalid });
        }
        Ok(())
    }
}

/// The root a gateway trusts now; the only way to a newer one is [`TrustedRoot::update`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TrustedRoot(Root);

impl TrustedRoot {
    /// A root the operator installed: it must be well formed and signed by its own root role's
    /// threshold (its authenticity is the operator's to establish, as with any first key).
    pub fn install(signed: &Signed) -> Result<TrustedRoot, Refusal> {
        let root = self_signed_root(signed)?;
        Ok(TrustedRoot(root))
    }

    /// The root the trusted one becomes: refused unless its version is the next one (as in TUF:
    /// a gateway walks every root in between, so no rotation is skipped and no version can be
    /// pushed out of reach), and it is signed by the current root role's threshold and by its
    /// own.
    pub fn update(&self, signed: &Signed) -> Result<TrustedRoot, Refusal> {
        signed.verify_under::<Root>(&self.0)?;
        let next = self_signed_root(signed)?;
        if Some(next.version) != self.0.version.checked_add(1) {
            return Err(Refusal::RootNotNext { version: next.version, current: self.0.version });
        }
        Ok(TrustedRoot(next))
    }

    /// The root's document.
    pub fn root(&self) -> &Root {
        &self.0
    }
}

/// A root signed by its own root role, with every role well formed.
fn self_signed_root(signed: &Signed) -> Result<Root, Refusal> {
    if signed.kind != Kind::Root {
        return Err(Refusal::WrongKind { expected: Kind::Root, found: signed.kind });
    }
    // Its own keys are not trusted yet: decode, check the roles, then check its signatures
    // with them. The body is still refused unless canonical.
    let root: Root = decode_canonical(&signed.body, Kind::Root)?;
    for (name, role) in [("root", &root.root), ("targets", &root.targets), ("desired", &root.desired)] {
        let listed = role.keys.iter().all(|id| root.keys.contains_key(id));
        let reachable = role.threshold >= 1 && role.threshold as usize <= role.keys.len();
        if !listed || !reachable {
            return Err(Refusal::BadRole { role: name, threshold: role.threshold, keys: role.keys.len() });
        }
    }
    if root.keys.iter().any(|(id, key)| key.id() != *id) {
        return Err(Refusal::Malformed { what: "root", detail: "a key listed under another key's id".into() });
    }
    signed.check_signatures(&root, &root.root, Kind::Root)?;
    Ok(root)
}

/// The canonical bytes of `document`.
pub fn canonical<D: Encode<()>>(document: &D) -> Vec<u8> {
    minicbor::to_vec(document).unwrap_or_default()
}

/// What a key signs for a document of `kind` with `body`.
fn signed_message(kind: Kind, body: &[u8]) -> Vec<u8> {
    let mut message = Vec::with_capacity(body.len() + 24);
    message.extend_from_slice(b"weir-fleet/1\0");
    message.extend_from_slice(kind.name().as_bytes());
    message.push(0);
    message.extend_from_slice(body);
    message
}

/// Decodes `body`, refusing it unless it is exactly the canonical encoding of what it decodes to.
fn decode_canonical<D: Encode<()> + for<'b> Decode<'b, ()>>(body: &[u8], kind: Kind) -> Result<D, Refusal> {
    let document: D =
        minicbor::decode(body).map_err(|error| Refusal::Malformed { what: kind.name(), detail: error.to_string() })?;
    if canonical(&document) != body {
        return Err(Refusal::NotCanonical { kind });
    }
    Ok(document)
}

#[cfg(test)]
#[path = "envelope/tests.rs"]
mod tests;
