//! Checking an artifact while it streams in, against its signed length and sha256.
//!
//! The object store's own digest is the uploader's claim, unsigned and checked only at the end;
//! this check is the signed one. A chunk that would take the artifact past its signed length is
//! refused at once, so a gateway never stores more than the target signs for; the digest is
//! compared when the stream ends. Only an artifact that passed [`ArtifactCheck::finish`] may be
//! compiled.

use sha2::{Digest, Sha256};

use crate::document::{FunctionTarget, Target};
use crate::refusal::Refusal;

/// The running check of one artifact.
#[derive(Debug, Clone)]
pub struct ArtifactCheck {
    function: String,
    length: u64,
    sha256: [u8; 32],
    seen: u64,
    hasher: Sha256,
}

impl ArtifactCheck {
    /// A check of the artifact `target` signs for.
    pub fn new(target: &Target) -> Self {
        Self::of_entry(&target.function, &target.entry())
    }

    /// A check of the artifact a desired document's `entry` for `function` names (the same
    /// length and sha256 its target signs, or the pair was refused).
    pub fn of_entry(function: &str, entry: &FunctionTarget) -> Self {
        ArtifactCheck {
            function: function.to_owned(),
            length: entry.length,
            sha256: entry.sha256,
            seen: 0,
            hasher: Sha256::new(),
        }
    }

    /// Takes the next chunk; refuses it if the artifact would grow past its signed length.
    pub fn update(&mut self, chunk: &[u8]) -> Result<(), Refusal> {
        let seen = self.seen.saturating_add(chunk.len() as u64);
        if seen > self.length {
            return Err(Refusal::ArtifactTooLong { function: self.function.clone(), length: self.length });
        }
        self.seen = seen;
        self.hasher.update(chunk);
        Ok(())
    }

    /// The transport found the bytes damaged before they all arrived: refused as not the signed
    /// ones.
    pub fn damaged(self) -> Refusal {
        Refusal::ArtifactDigest { function: self.function }
    }

    /// The stream ended: refuses an artifact shorter than signed or with another digest.
    pub fn finish(self) -> Result<(), Refusal> {
        if self.seen != self.length {
            return Err(Refusal::ArtifactTooShort { function: self.function, got: self.seen, length: self.length });
        }
        let digest: [u8; 32] = self.hasher.finalize().into();
        if digest != self.sha256 {
            return Err(Refusal::ArtifactDigest { function: self.function });
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::document::World;

    fn target_for(bytes: &[u8]) -> Target {
        Target {
            function: "unit-convert".into(),
            version: "1.1.0".into(),
            sha256: Sha256::digest(bytes).into(),
            length: bytes.len() as u64,
            world: World::Operator,
            counter: 2,
            min_weir: "0.1.0".into(),
        }
    }

    #[test]
    fn the_signed_artifact_passes_in_any_chunking() {
        let bytes: Vec<u8> = (0..10_000u32).map(|i| (i % 251) as u8).collect();
        for chunk in [1, 7, 4096, 10_000] {
            let mut check = ArtifactCheck::new(&target_for(&bytes));
            for piece in bytes.chunks(chunk) {
                check.update(piece).expect("within the signed length");
            }
            check.finish().expect("the signed bytes");
        }
    }

    #[test]
    fn a_flipped_bit_is_refused_at_the_end() {
        let bytes = vec![7u8; 1000];
        let mut flipped = bytes.clone();
        flipped[500] ^= 0x10;
        let mut check = ArtifactCheck::new(&target_for(&bytes));
        check.update(&flipped).expect("the length is right");
        assert_eq!(check.finish().map_err(|r| r.code()), Err("artifact-digest"));
    }

    #[test]
    fn bytes_past_the_signed_length_are_refused_before_they_are_kept() {
        let bytes = vec![7u8; 1000];
        let mut check = ArtifactCheck::new(&target_for(&bytes));
        check.update(&bytes[..999]).expect("within the signed length");
        assert_eq!(check.update(&[7, 7]).map_err(|r| r.code()), Err("artifact-too-long"));
    }

    #[test]
    fn a_short_artifact_is_refused() {
        let bytes = vec![7u8; 1000];
        let mut check = ArtifactCheck::new(&target_for(&bytes));
        check.update(&bytes[..10]).expect("within the signed length");
        assert_eq!(check.finish().map_err(|r| r.code()), Err("artifact-too-short"));
    }
}
