//! Ed25519 keys: a fleet manager's signing keys, the public keys a root lists, and key ids.
//!
//! Key files are one line of text, so they can be read, copied and checked by eye:
//! `weir-fleet-public-key-v1 <64 hex digits>` and `weir-fleet-secret-key-v1 <64 hex digits>`
//! (the 32-byte seed). A key's id is the sha256 of its 32 public bytes.
//!
//! **Invariant:** a public key that is not a valid curve point, or is weak (small order), is
//! refused where it is read, so no root can list one.

use std::fmt;

use ed25519_dalek::{Signer, VerifyingKey};
use minicbor::{Decode, Decoder, Encode, Encoder};
use rand::TryRngCore;
use sha2::{Digest, Sha256};

const PUBLIC_PREFIX: &str = "weir-fleet-public-key-v1 ";
const SECRET_PREFIX: &str = "weir-fleet-secret-key-v1 ";

/// Why a key could not be read.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum KeyError {
    /// The text is not a key of the expected kind.
    #[error("not a {expected}: expected `{prefix}` followed by 64 hex digits")]
    Malformed { expected: &'static str, prefix: &'static str },
    /// The bytes are not a usable ed25519 public key.
    #[error("not a usable ed25519 public key (not on the curve, or of small order)")]
    Unusable,
    /// The operating system gave no random numbers for a new key.
    #[error("no random numbers from the operating system: {0}")]
    NoRandomness(String),
}

/// The id of a public key: the sha256 of its 32 bytes.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct KeyId(pub [u8; 32]);

impl fmt::Display for KeyId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&hex::encode(self.0))
    }
}

impl fmt::Debug for KeyId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "KeyId({})", &hex::encode(self.0)[..16])
    }
}

impl<C> Encode<C> for KeyId {
    fn encode<W: minicbor::encode::Write>(
        &self,
        e: &mut Encoder<W>,
        _: &mut C,
    ) -> Result<(), minicbor::encode::Error<W::Error>> {
        e.bytes(&self.0)?;
        Ok(())
    }
}

impl<'b, C> Decode<'b, C> for KeyId {
    fn decode(d: &mut Decoder<'b>, _: &mut C) -> Result<Self, minicbor::decode::Error> {
        let bytes = d.bytes()?;
        bytes.try_into().map(KeyId).map_err(|_| minicbor::decode::Error::message("a key id is 32 bytes"))
    }
}

/// An ed25519 public key that is usable for verification.
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct PublicKey(VerifyingKey);

impl PublicKey {
    /// The key from its 32 bytes; refuses points off the curve and weak keys.
    pub fn from_bytes(bytes: &[u8; 32]) -> Result<Self, KeyError> {
        let key = VerifyingKey::from_bytes(bytes).map_err(|_| KeyError::Unusable)?;
        if key.is_weak() {
            return Err(KeyError::Unusable);
        }
        Ok(PublicKey(key))
    }

    /// Its 32 bytes.
    pub fn to_bytes(&self) -> [u8; 32] {
        self.0.to_bytes()
    }

    /// Its id.
    pub fn id(&self) -> KeyId {
        KeyId(Sha256::digest(self.0.as_bytes()).into())
    }

    /// Whether `signature` is this key's over `message`, by the strict rules (no malleable or
    /// small-order signatures).
    pub fn verifies(&self, message: &[u8], signature: &[u8; 64]) -> bool {
        self.0.verify_strict(message, &ed25519_dalek::Signature::from_bytes(signature)).is_ok()
    }

    /// The key file's line.
    pub fn to_text(&self) -> String {
        format!("{PUBLIC_PREFIX}{}\n", hex::encode(self.to_bytes()))
    }

    /// Reads a public key file's text.
    pub fn from_text(text: &str) -> Result<Self, KeyError> {
        let malformed = KeyError::Malformed { expected: "public key", prefix: PUBLIC_PREFIX.trim_end() };
        let bytes = parse_line(text, PUBLIC_PREFIX).ok_or(malformed)?;
        PublicKey::from_bytes(&bytes)
    }
}

impl fmt::Debug for PublicKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "PublicKey({:?})", self.id())
    }
}

impl<C> Encode<C> for PublicKey {
    fn encode<W: minicbor::encode::Write>(
        &self,
        e: &mut Encoder<W>,
        _: &mut C,
    ) -> Result<(), minicbor::encode::Error<W::Error>> {
        e.bytes(self.0.as_bytes())?;
        Ok(())
    }
}

impl<'b, C> Decode<'b, C> for PublicKey {
    fn decode(d: &mut Decoder<'b>, _: &mut C) -> Result<Self, minicbor::decode::Error> {
        let bytes: [u8; 32] =
            d.bytes()?.try_into().map_err(|_| minicbor::decode::Error::message("a public key is 32 bytes"))?;
        PublicKey::from_bytes(&bytes).map_err(|_| minicbor::decode::Error::message("an unusable public key"))
    }
}

/// A signing key. Its `Debug` never shows the secret.
pub struct SigningKey(ed25519_dalek::SigningKey);

impl SigningKey {
    /// A new key from the operating system's random numbers.
    pub fn generate() -> Result<Self, KeyError> {
        let mut seed = [0u8; 32];
        rand::rngs::OsRng.try_fill_bytes(&mut seed).map_err(|error| KeyError::NoRandomness(error.to_string()))?;
        Ok(SigningKey(ed25519_dalek::SigningKey::from_bytes(&seed)))
    }

    /// Its public half.
    pub fn public(&self) -> PublicKey {
        PublicKey(self.0.verifying_key())
    }

    /// Its signature over `message`.
    pub fn sign(&self, message: &[u8]) -> [u8; 64] {
        self.0.sign(message).to_bytes()
    }

    /// The secret key file's line (keep it offline, readable only by its owner).
    pub fn to_text(&self) -> String {
        format!("{SECRET_PREFIX}{}\n", hex::encode(self.0.to_bytes()))
    }

    /// Reads a secret key file's text.
    pub fn from_text(text: &str) -> Result<Self, KeyError> {
        let malformed = KeyError::Malformed { expected: "secret key", prefix: SECRET_PREFIX.trim_end() };
        let seed = parse_line(text, SECRET_PREFIX).ok_or(malformed)?;
        Ok(SigningKey(ed25519_dalek::SigningKey::from_bytes(&seed)))
    }
}

impl fmt::Debug for SigningKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "SigningKey(public {:?})", self.public().id())
    }
}

/// The 32 bytes after `prefix` on the text's only line.
fn parse_line(text: &str, prefix: &str) -> Option<[u8; 32]> {
    let hex_digits = text.trim().strip_prefix(prefix)?;
    let bytes = hex::decode(hex_digits.trim()).ok()?;
    bytes.try_into().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn key_files_round_trip_and_the_secret_never_shows_in_debug() {
        let key = SigningKey::generate().expect("the OS gives random numbers");
        let again = SigningKey::from_text(&key.to_text()).expect("a written key reads back");
        assert_eq!(again.public(), key.public());
        assert_eq!(PublicKey::from_text(&key.public().to_text()), Ok(key.public()));
        let secret_hex = key.to_text().trim().rsplit(' ').next().map(str::to_owned).unwrap_or_default();
        assert!(!format!("{key:?}").contains(&secret_hex));
    }

    #[test]
    fn a_public_key_file_is_not_taken_for_a_secret_one() {
        let key = SigningKey::generate().expect("the OS gives random numbers");
        assert!(matches!(SigningKey::from_text(&key.public().to_text()), Err(KeyError::Malformed { .. })));
        assert!(matches!(PublicKey::from_text(&key.to_text()), Err(KeyError::Malformed { .. })));
        assert!(matches!(PublicKey::from_text("weir-fleet-public-key-v1 abcd"), Err(KeyError::Malformed { .. })));
    }

    #[test]
    fn small_order_public_keys_are_refused() {
        // The identity point: every signature "verifies" against it without strict checks.
        let mut identity = [0u8; 32];
        identity[0] = 1;
        assert_eq!(PublicKey::from_bytes(&identity), Err(KeyError::Unusable));
    }

    #[test]
    fn a_signature_verifies_only_for_its_message_and_key() {
        let key = SigningKey::generate().expect("the OS gives random numbers");
        let other = SigningKey::generate().expect("the OS gives random numbers");
        let signature = key.sign(b"revision 7");
        assert!(key.public().verifies(b"revision 7", &signature));
        assert!(!key.public().verifies(b"revision 8", &signature));
        assert!(!other.public().verifies(b"revision 7", &signature));
    }
}
